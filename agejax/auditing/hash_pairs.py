"""All pairs of 64-bit hashes within a Hamming distance, without comparing all n^2.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming
Space with Multi-Index Hashing", CVPR 2012): cut each hash into ``m``
chunks; two hashes within distance ``t`` differ by at most ``t // m`` bits
on at least one chunk (pigeonhole). So each chunk is a sort key: the base
hashes are sorted by it once, and every query looks up (``searchsorted``)
its chunk and each variant of it with up to ``t // m`` bits flipped; only
those candidates are compared bit for bit. Every pair within ``t`` is found
(no probabilistic misses, unlike LSH banding). The chunks are as wide as
``log2(n)`` bits, so a lookup meets about one unrelated hash: the work
grows as ``n`` times the probes, not as ``n^2`` (the fixed-width form,
``t + 1`` exact chunks, meets ``n / 2^(64 / (t + 1))`` per lookup and is
quadratic). Chosen over faiss's ``IndexBinaryHash`` (the same idea) to
avoid a dependency for one loop.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from agejax.auditing import image_hashes

_BLOCK = 1 << 22  # candidate pairs verified per step (memory stays bounded)


def _widths(count: int) -> list[int]:
  return [64 // count + (i < 64 % count) for i in range(count)]


def _chunks(hashes: np.ndarray, count: int) -> list[np.ndarray]:
  """``count`` chunks of each hash, as uint64 keys (the widths differ by at most 1 bit)."""
  out, shift = [], 64
  for width in _widths(count):
    shift -= width
    out.append((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1))
  return out


def _expand(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(query, position)`` for every position in each query's ``[start, stop)``."""
  counts = stops - starts
  query = np.repeat(np.arange(len(starts)), counts)
  offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  return query, np.repeat(starts, counts) + offsets


def chunk_count(n: int, max_distance: int) -> int:
  """Chunks of about ``log2(n)`` bits each, and never more than ``max_distance + 1``."""
  width = max(8, math.ceil(math.log2(max(n, 2))))
  return max(1, min(64 // width, max_distance + 1))


def _flips(width: int, radius: int) -> np.ndarray:
  """Every ``width``-bit mask with at most ``radius`` bits set, as uint64."""
  masks = [sum(1 << b for b in bits) for k in range(radius + 1)
           for bits in itertools.combinations(range(width), k)]
  return np.asarray(masks, np.uint64)


def pairs(queries: np.ndarray, base: np.ndarray | None = None, max_distance: int = 8
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(i, j, distance)`` of every ``queries[i]``, ``base[j]`` within ``max_distance``.

  Without ``base`` the queries are searched against themselves and each pair
  is returned once, ``i < j``. Sorted by ``(i, j)``.
  """
  queries = np.asarray(queries, np.uint64)
  self_search = base is None
  base = queries if self_search else np.asarray(base, np.uint64)
  count = chunk_count(len(base), max_distance)
  radius = max_distance // count
  found: list[np.ndarray] = []
  for (query_keys, base_keys), width in zip(
      zip(_chunks(queries, count), _chunks(base, count)), _widths(count)):
    order = np.argsort(base_keys, kind="stable")
    sorted_keys = base_keys[order]
    for flip in _flips(width, radius):
      probe = query_keys ^ flip
      starts = np.searchsorted(sorted_keys, probe, side="left")
      stops = np.searchsorted(sorted_keys, probe, side="right")
      found += _verified(queries, base, order, starts, stops, max_distance, self_search)
  if not found:
    return (np.zeros(0, np.int64),) * 3
  every = np.unique(np.concatenate(found).astype(np.int64), axis=0)
  return every[:, 0], every[:, 1], every[:, 2]


def _verified(queries: np.ndarray, base: np.ndarray, order: np.ndarray, starts: np.ndarray,
              stops: np.ndarray, max_distance: int, self_search: bool) -> list[np.ndarray]:
  """The candidates ``[start, stop)`` of each query within the distance, as (i, j, d) rows."""
  found = []
  counts = np.cumsum(stops - starts)
  first = 0
  while first < len(queries):  # blocks of queries whose candidates fit in _BLOCK pairs
    done = int(counts[first - 1]) if first else 0
    last = max(int(np.searchsorted(counts, done + _BLOCK, side="right")), first + 1)
    q, position = _expand(starts[first:last], stops[first:last])
    i, j = q + first, order[position]
    if self_search:
      i, j = i[i < j], j[i < j]
    distance = image_hashes.hamming(queries[i], base[j])
    close = distance <= max_distance
    found.append(np.stack([i[close], j[close], distance[close]], axis=1))
    first = last
  return found
