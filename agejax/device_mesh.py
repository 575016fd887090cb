"""The device mesh every compiled step runs over."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh


def data_parallel_mesh() -> Mesh:
  """All devices of all processes on one data-parallel axis, ``data``."""
  return Mesh(np.asarray(jax.devices()), ("data",))
