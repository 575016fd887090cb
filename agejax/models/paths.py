"""Slash-separated parameter paths: the stable names configs address by regex.

A parameter tree here is a nested dict of arrays (the "pure dict" form of a Flax
NNX state), e.g. ``{"stem": {"conv": {"kernel": Array}}}`` whose single leaf has
the path ``stem/conv/kernel``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax


def key_name(key: Any) -> str:
  """Renders one pytree key (dict key, attribute or sequence index) as text."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path: tuple[Any, ...]) -> str:
  """Joins a jax key path into ``a/b/c``."""
  return "/".join(key_name(k) for k in path)


def flatten(tree: Any) -> dict[str, Any]:
  """Maps every leaf of ``tree`` to its slash-separated path, in tree order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_str(p): leaf for p, leaf in leaves}


def map_with_path(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  """Like ``jax.tree.map`` but ``fn`` also receives the leaf's path string."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of :func:`flatten` for nested dicts."""
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return out


def block_of(path: str) -> str:
  """The network block a parameter belongs to: its first path component.

  ResNet: ``stem``, ``stage1`` .. ``stage4``, ``head``; VGG: ``stage1`` ..
  ``stage5``, ``fc6``, ``fc7``, ``head``. Diagnostics are reported per block.
  """
  return path.split("/", 1)[0]


def batch_norm_layer(path: str) -> str | None:
  """The BatchNorm layer a parameter or statistic belongs to, or None.

  ``stage1/block1/bn1/scale`` -> ``stage1/block1/bn1``: agejax names its
  BatchNorm layers ``bn``, ``bn1``, ``bn2``, ...
  """
  layer, _, _ = path.rpartition("/")
  return layer if layer.rpartition("/")[2].startswith("bn") else None


def network_order(path: str) -> tuple:
  """Sort key of a path or block: input to output (stem, stages, fc layers, head).

  Numbers compare numerically (``stage10`` after ``stage9``).
  """
  top = block_of(path)
  rank = {"stem": 0, "head": 3}.get(top, 2 if top.startswith("fc") else 1)
  natural = tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path))
  return rank, natural
