"""An imported backbone as a network, and its pooled features: how an import is checked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from agejax import models
from agejax.config import defaults
from agejax.data import augment
from agejax.models import paths
from agejax.pretrained.types import Imported
from agejax.pretrained import apply_overrides


def model_config(imported: Imported) -> ml_collections.ConfigDict:
  """The ``model`` config the imported network is: its arch, overrides and head."""
  model_cfg = defaults.default_config().model
  model_cfg.arch = imported.arch
  apply_overrides(model_cfg, imported)
  model_cfg.update(imported.head)  # head, min_age, max_age of a file that brings its head
  return model_cfg


def backbone(imported: Imported, image_size: int) -> nnx.Module:
  """The imported network (inference mode) with the weights loaded; the head is the
  file's where it brings one, else zeros."""
  graphdef, params, batch_stats = models.split_state(
      models.abstract_model(model_config(imported), image_size))
  flat_params, flat_stats = paths.flatten(params), paths.flatten(batch_stats)
  for path, value in flat_params.items():
    if not path.startswith("head/") or imported.head:
      flat_params[path] = jnp.asarray(imported.params[path])
    else:
      flat_params[path] = jnp.zeros(value.shape, value.dtype)
  flat_stats = {p: jnp.asarray(imported.batch_stats[p]) for p in flat_stats}
  return models.merge_state(graphdef, paths.unflatten(flat_params), paths.unflatten(flat_stats))


def features(imported: Imported, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
  """Pooled features of raw uint8 RGB NHWC ``images`` with the source's preprocessing."""
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected uint8 images N x H x W x 3, got {images.dtype} {images.shape}")
  model = backbone(imported, images.shape[1])
  preprocessing = imported.model_overrides["preprocessing"]
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, batch):
    net = nnx.merge(graphdef, state)
    return net.features(augment.normalize(batch.astype(jnp.float32), preprocessing), train=False)

  out = [np.asarray(run(state, images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)
