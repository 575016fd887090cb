"""The serving function every exported format is traced from.

``serving_function(meta)`` returns a pure JAX function
``serve(params, batch_stats, images) -> {"age", "spread"[, "probabilities"]}``
that takes uint8 RGB face crops ``[N, H, W, 3]`` of any size and holds the
whole evaluation input inside:

1. crops not at the stored size are resized to it, whole image to a square
   (``face_crop.crop``'s rule for a crop without a box), with an
   antialiased bilinear (triangle) filter, and rounded to uint8 values as
   the dataset stored them. The weights come from
   ``jax.image.scale_and_translate`` with the scale computed from the input
   shape, so one graph serves every size (symbolic ``H`` and ``W``); at the
   stored size the step is an exact identity, and a graph traced for that
   size leaves it out;
2. the evaluation pipeline's shorter-side resize and centre crop;
3. ``augment.normalize`` with the model's preprocessing;
4. ``forward.predict``: network, head read-out and flip TTA.

PIL's bilinear resize (what ``agejax.predict`` uses for crops of another
size) rounds in fixed point, so a crop *not* at the stored size gets ages
within a few hundredths of a year of the bundle's, not bit-equal; crops at
the stored size (every crop ``agejax.predict`` makes) take the same path.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from agejax import models
from agejax.data import augment
from agejax.models import forward

# Heads whose outputs are logits over the age classes: they also export the
# class probabilities.
SOFTMAX_HEADS = ("dex", "dldl", "mean_variance")


def _to_stored(images: jax.Array, stored: int) -> jax.Array:
  """float32 [N, stored, stored, 3] with uint8 values."""
  x = images.astype(jnp.float32)
  n, height, width, channels = images.shape
  if isinstance(height, int) and isinstance(width, int) and (height, width) == (stored, stored):
    return x
  scale = jnp.stack([stored / jnp.asarray(height, jnp.float32),
                     stored / jnp.asarray(width, jnp.float32)])
  x = jax.image.scale_and_translate(x, (n, stored, stored, channels), (1, 2), scale,
                                    jnp.zeros([2], jnp.float32), "linear", antialias=True)
  return jnp.clip(jnp.round(x), 0, 255)


def center_crop(x: jax.Array, image_size: int, stored: int) -> jax.Array:
  """``augment.center_crop`` of square stored images [N, stored, stored, 3] (float32).

  tf.image.resize(bilinear, antialias=True) is a triangle-kernel
  scale-and-translate with half-pixel centres; jax.image.resize is the same
  algorithm. A square image stays square, so both sides go to ``side``.
  """
  side = augment.eval_resize_side(image_size, stored)
  if side != stored:
    x = jax.image.resize(x, (x.shape[0], side, side, x.shape[3]), "linear", antialias=True)
  offset = (side - image_size) // 2
  return x[:, offset:offset + image_size, offset:offset + image_size, :]


def serving_function(meta: dict[str, Any]) -> Callable[..., dict[str, jax.Array]]:
  """``serve(params, batch_stats, images)`` of a bundle's ``model.json``."""
  image_size = int(meta["image_size"])
  stored = int(meta["crop"]["stored_size"])
  preprocessing = str(meta["preprocessing"])
  flip_tta = bool(meta.get("flip_tta", False))
  softmax = meta["head"] in SOFTMAX_HEADS
  augment.normalize(jnp.zeros([3], jnp.uint8), preprocessing)  # a bad name fails here
  model_cfg = ml_collections.ConfigDict(meta["model"])
  graphdef = models.split_state(nnx.eval_shape(
      lambda: models.build_model(model_cfg, image_size, nnx.Rngs(0))))[0]

  def serve(params: Any, batch_stats: Any, images: jax.Array) -> dict[str, jax.Array]:
    x = center_crop(_to_stored(images, stored), image_size, stored)
    x = augment.normalize(x, preprocessing)
    model = models.merge_state(graphdef, params, batch_stats)
    age, spread, outputs = forward.predict(model, x, flip_tta=flip_tta)
    out = {"age": age, "spread": spread}
    if softmax:
      out["probabilities"] = jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)
    return out

  return serve
