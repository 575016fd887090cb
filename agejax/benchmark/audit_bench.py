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
* ``hash_choice``: for each hash and threshold, the share of transformed
  copies of ``choice_copies`` faces found (re-encoded at JPEG quality
  70-95, shifted 1-4 px, scaled 0.9-1.1, brightness +-10%, mirrored, the
  mirrored ones against the mirror hash) and the false pairs among
  ``choice_faces`` distinct faces (a self search plus a mirror search).
* ``signature_choice``: what confirms a candidate. For the audit's colour
  signature and a 16 x 16 luma one, at ``min_correlation``: the share of
  the same transformed copies confirmed against their original, and the
  false pairs confirmed among pHash candidates (within 8 bits) of
  ``choice_faces`` distinct faces.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image

from agejax.benchmark import common

COLUMNS = ("images_per_sec", "n", "seconds", "pairs", "planted_found", "hash", "max_distance",
           "signature", "recall", "false_pairs", "candidates")
TRANSFORMS = ("reencode", "shift", "scale", "brightness", "mirror")


@dataclasses.dataclass(frozen=True)
class AuditSettings:
  images: int = 2000
  image_size: int = 64
  batch: int = 256
  sizes: Sequence[int] = (10_000, 100_000, 1_000_000)
  max_distance: int = 4
  repeats: int = 3
  choice_faces: int = 1000
  choice_copies: int = 200
  choice_thresholds: Sequence[int] = (4, 8)
  min_correlation: float = 0.99


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


def _transformed(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
  from PIL import ImageEnhance  # pylint: disable=import-outside-toplevel
  side = image.shape[0]
  if kind == "reencode":
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=int(rng.integers(70, 96)))
    return np.asarray(Image.open(buffer).convert("RGB"))
  if kind == "shift":
    dx, dy = rng.integers(1, 5, 2) * rng.choice([-1, 1], 2)
    return np.roll(image, (int(dy), int(dx)), axis=(0, 1))
  if kind == "scale":
    width = int(round(side * rng.uniform(0.9, 1.1)))
    scaled = np.asarray(Image.fromarray(image).resize((width, width), Image.BILINEAR))
    canvas = np.zeros_like(image) + image.mean(axis=(0, 1)).astype(np.uint8)
    cut, at = max(0, (width - side) // 2), max(0, (side - width) // 2)
    part = scaled[cut:cut + side, cut:cut + side]
    canvas[at:at + part.shape[0], at:at + part.shape[1]] = part
    return canvas
  if kind == "brightness":
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(
        rng.uniform(0.9, 1.1)))
  return image[:, ::-1]


def _choice_images(s: AuditSettings) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """``choice_faces`` distinct faces, and each transformation of the first ``choice_copies``."""
  from data_builders.synthetic_faces import faces  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  originals = np.stack([faces.example(0, "validation", i, s.image_size)[0]
                        for i in range(s.choice_faces)])
  copies = {kind: np.stack([_transformed(x, kind, rng) for x in originals[:s.choice_copies]])
            for kind in TRANSFORMS}
  return originals, copies


def hash_choice(s: AuditSettings, originals: np.ndarray, copies: dict[str, np.ndarray]
                ) -> list[dict[str, Any]]:
  """Recall of transformed copies and false pairs among distinct faces, per hash and threshold."""
  # pylint: disable=import-outside-toplevel
  from agejax.auditing import hash_pairs
  from agejax.auditing import image_hashes
  rows = []
  for name, fn in image_hashes.HASHES.items():
    hashes, mirrors = fn(originals), image_hashes.mirrored(fn, originals)
    copy_hashes = {kind: fn(images) for kind, images in copies.items()}
    for t in s.choice_thresholds:
      recall = {kind: float(np.mean(image_hashes.hamming(
          h, (mirrors if kind == "mirror" else hashes)[:s.choice_copies]) <= t))
                for kind, h in copy_hashes.items()}
      i, _, _ = hash_pairs.pairs(hashes, max_distance=t)
      a, b, _ = hash_pairs.pairs(hashes, mirrors, max_distance=t)
      rows.append(common.record("audit_hash_choice", {
          "faces": s.choice_faces, "copies": s.choice_copies, "image_size": s.image_size}, {
          "hash": name, "max_distance": t, "recall": recall,
          "false_pairs": int(len(i) + np.sum(a != b))}))
  return rows


def _luma_signatures(images: np.ndarray) -> np.ndarray:
  """The alternative measured: 16 x 16 luma, mean removed, unit norm."""
  from agejax.auditing import image_hashes  # pylint: disable=import-outside-toplevel
  small = image_hashes.area_resize(image_hashes.grey(images), 16, 16).reshape(len(images), -1)
  small -= small.mean(axis=1, keepdims=True)
  return small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-12)


def signature_choice(s: AuditSettings, originals: np.ndarray, copies: dict[str, np.ndarray]
                     ) -> list[dict[str, Any]]:
  """Copies confirmed and false pairs confirmed, per signature (module doc)."""
  # pylint: disable=import-outside-toplevel
  from agejax.auditing import dataset_scan
  from agejax.auditing import hash_pairs
  from agejax.auditing import image_hashes
  hashes = image_hashes.phash(originals)
  i, j, _ = hash_pairs.pairs(hashes, max_distance=8)
  a, b, _ = hash_pairs.pairs(hashes, image_hashes.mirrored(image_hashes.phash, originals),
                             max_distance=8)
  a, b = a[a != b], b[a != b]
  mirrored = originals[:, :, ::-1]  # a mirror candidate is confirmed against the flipped image
  rows = []
  for name, fn in (("colour 8x8", dataset_scan.signatures), ("luma 16x16", _luma_signatures)):
    sig, sig_mirrored = fn(originals), fn(mirrored)
    correlation = lambda x, y: np.sum(x * y, axis=1)
    recall = {kind: float(np.mean(correlation(
        sig[:s.choice_copies], fn(images[:, :, ::-1] if kind == "mirror" else images))
        >= s.min_correlation)) for kind, images in copies.items()}
    false = (np.sum(correlation(sig[i], sig[j]) >= s.min_correlation)
             + np.sum(correlation(sig[a], sig_mirrored[b]) >= s.min_correlation))
    rows.append(common.record("audit_signature_choice", {
        "faces": s.choice_faces, "copies": s.choice_copies, "image_size": s.image_size,
        "min_correlation": s.min_correlation}, {
        "signature": name, "recall": recall, "false_pairs": int(false),
        "candidates": int(len(i) + len(a))}))
  return rows


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
  originals, copies = _choice_images(s)
  return results + hash_choice(s, originals, copies) + signature_choice(s, originals, copies)
