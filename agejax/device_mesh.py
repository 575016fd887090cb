"""The device mesh every compiled step runs over."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from agejax.errors import ConfigError


def data_parallel_mesh() -> Mesh:
  """All devices of all processes on one data-parallel axis, ``data``."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def check_batch(key: str, batch_size: int, mesh: Mesh) -> None:
  """A global batch splits evenly over the mesh's devices (and so over its processes).

  ``key`` is the config key or flag that set ``batch_size``: a training phase's
  batch is checked when the devices are known, an evaluation batch likewise.
  """
  if batch_size % mesh.size:
    raise ConfigError(key, f"{batch_size} does not divide evenly over {mesh.size} devices")
