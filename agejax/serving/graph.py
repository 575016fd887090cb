"""The serving function: the one evaluation-time path from pixels to ages.

``serving_function(meta)`` returns a pure JAX function
``serve(params, batch_stats, images) -> {"age", "spread"[, "probabilities"]}``
that takes uint8 RGB face crops ``[N, H, W, 3]`` of any size and holds the
whole evaluation input inside:

1. ``eval_input.network_input``: the crop resized to the dataset's stored
   square (an exact identity at the stored size), the evaluation pipeline's
   centre crop, and ``augment.normalize`` with the model's preprocessing;
2. ``forward.predict``: network, head read-out and flip TTA.

Every export format is traced from it, ``inference.Predictor`` calls it, and
the evaluation of a built split runs its TensorFlow twin
(``eval_input.network_input_tf``), held equal to it by
``tests/test_eval_input.py``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from agejax import models
from agejax.data import augment
from agejax.data import eval_input
from agejax.models import forward

# Heads whose outputs are logits over the age classes: they also export the
# class probabilities.
SOFTMAX_HEADS = ("dex", "dldl", "mean_variance")

# What serving_function reads of model.json.
SERVING_KEYS = ("image_size", "crop", "preprocessing", "flip_tta", "head", "model")


def serving_key(meta: dict[str, Any]) -> str:
  """``meta`` as far as the serving function reads it (JSON): a cache key for its
  compilation, equal for a workdir, its bundle and each export of one network."""
  return json.dumps({k: meta.get(k) for k in SERVING_KEYS}, sort_keys=True)


def serving_function(meta: dict[str, Any]) -> Callable[..., dict[str, jax.Array]]:
  """``serve(params, batch_stats, images)`` of a bundle's ``model.json``."""
  image_size = int(meta["image_size"])
  stored = int(meta["crop"]["stored_size"])
  preprocessing = str(meta["preprocessing"])
  flip_tta = bool(meta.get("flip_tta", False))
  softmax = meta["head"] in SOFTMAX_HEADS
  augment.normalize(jnp.zeros([3], jnp.uint8), preprocessing)  # a bad name fails here
  graphdef = models.split_state(models.abstract_model(ml_collections.ConfigDict(meta["model"]),
                                                      image_size))[0]

  def serve(params: Any, batch_stats: Any, images: jax.Array) -> dict[str, jax.Array]:
    x = eval_input.network_input(images, image_size, stored, preprocessing)
    model = models.merge_state(graphdef, params, batch_stats)
    age, spread, outputs = forward.predict(model, x, flip_tta=flip_tta)
    out = {"age": age, "spread": spread}
    if softmax:
      out["probabilities"] = jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)
    return out

  return serve
