"""The duplicate search's two costs: hashing face crops, and finding the close pairs.

* ``hash``: JPEG face crops of ``image_size`` px (``synthetic_faces``'
  drawings, encoded as the builders store them) decoded, hashed by
  :func:`agejax.auditing.image_hashes.phash` and by its mirror, and given
  their pixel digest, in batches: images/s.
* ``search``: :func:`agejax.auditing.hash_pairs.pairs` over ``n`` generated
  64-bit hashes (uniformly random, with 1% planted copies within the
  distance, so the answer is known) at ``max_distance``, for each ``n``:
  seconds, the pairs found and the planted ones recovered. An all-pairs
  comparison would grow as ``n^2`` (100x per 10x); the rows show how this
  grows.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image

from agejax.benchmark import common

COLUMNS = ("images_per_sec", "n", "seconds", "pairs", "planted_found")


@dataclasses.dataclass(frozen=True)
class AuditSettings:
  images: int = 2000
  image_size: int = 64
  batch: int = 256
  sizes: Sequence[int] = (10_000, 100_000, 1_000_000)
  max_distance: int = 4
  repeats: int = 3


def _jpegs(count: int, size: int) -> list[bytes]:
  from data_builders.synthetic_faces import faces  # pylint: disable=import-outside-toplevel
  out = []
  for index in range(count):
    image, _ = faces.example(0, "validation", index, size)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95)
    out.append(buffer.getvalue())
  return out


def _hash_all(jpegs: list[bytes], batch: int) -> None:
  from agejax.auditing import image_hashes  # pylint: disable=import-outside-toplevel
  for start in range(0, len(jpegs), batch):
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
                       for b in jpegs[start:start + batch]])
    image_hashes.phash(images)
    image_hashes.mirrored(image_hashes.phash, images)
    for image in images:
      image_hashes.pixel_digest(image)


def planted_hashes(n: int, max_distance: int, seed: int = 0) -> tuple[np.ndarray, set]:
  """``n`` random hashes whose last 1% are copies of the first ones, each within the distance."""
  rng = np.random.default_rng(seed)
  hashes = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
  planted = set()
  for k in range(n // 100):
    bits = rng.choice(64, int(rng.integers(0, max_distance + 1)), replace=False)
    flip = np.uint64(sum(1 << int(b) for b in bits))
    hashes[n - 1 - k] = hashes[k] ^ flip
    planted.add((k, n - 1 - k))
  return hashes, planted


def run(s: AuditSettings) -> list[dict[str, Any]]:
  from agejax.auditing import hash_pairs  # pylint: disable=import-outside-toplevel
  jpegs = _jpegs(s.images, s.image_size)
  seconds = common.time_calls(lambda: _hash_all(jpegs, s.batch), s.repeats)
  settings = dataclasses.asdict(s)
  results = [common.record("audit_hash", {**settings, "sizes": list(s.sizes)},
                           common.summarize(seconds, s.images, "images"))]
  for n in s.sizes:
    hashes, planted = planted_hashes(n, s.max_distance)
    start = time.perf_counter()
    i, j, _ = hash_pairs.pairs(hashes, max_distance=s.max_distance)
    elapsed = time.perf_counter() - start
    found = planted & set(zip(i.tolist(), j.tolist()))
    results.append(common.record("audit_search", {**settings, "sizes": list(s.sizes)}, {
        "n": n, "seconds": elapsed, "pairs": int(len(i)),
        "planted_found": f"{len(found)}/{len(planted)}"}))
  return results
