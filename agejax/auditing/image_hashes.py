"""Perceptual hashes of face crops, and the exact-pixel digest.

Three 64-bit hashes, all from the grey image (ITU-R 601 luma), each
computed for a batch in numpy:

* ``phash``: the 8 x 8 lowest frequencies of the 2-D DCT of the image
  reduced to 32 x 32 (area average), each bit "above the median of the 63
  non-DC coefficients" (the DC term itself is bit 0, compared the same way).
  Robust to re-encoding, brightness and small shifts and rescales.
* ``dhash``: the image reduced to 9 x 8, each bit "brighter than its right
  neighbour".
* ``ahash``: the image reduced to 8 x 8, each bit "above the mean".

:func:`mirrored` hashes the horizontally flipped image, so a mirrored copy
is found as a near-duplicate of the flipped original. The hash the audit
uses is chosen by measurement (``python -m agejax.benchmark audit``; README
"Auditing a dataset"). :func:`pixel_digest` is the exact-duplicate key: the
SHA-1 of the decoded pixels and their shape.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import scipy.fft

HASH_BITS = 64
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def grey(images: np.ndarray) -> np.ndarray:
  """float32 [N, H, W] luma of uint8 RGB [N, H, W, 3]."""
  return np.asarray(images, np.float32) @ _LUMA


def area_resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """[N, H, W] -> [N, height, width] by averaging (exact for whole factors)."""
  n, h, w = images.shape
  rows = (np.arange(height + 1) * h) // height
  cols = (np.arange(width + 1) * w) // width
  # Cumulative sums give every box mean in O(1) whatever the factor.
  total = np.zeros((n, h + 1, w + 1), np.float64)
  total[:, 1:, 1:] = images.cumsum(1).cumsum(2)
  boxes = (total[:, rows[1:]][:, :, cols[1:]] - total[:, rows[:-1]][:, :, cols[1:]]
           - total[:, rows[1:]][:, :, cols[:-1]] + total[:, rows[:-1]][:, :, cols[:-1]])
  area = np.outer(rows[1:] - rows[:-1], cols[1:] - cols[:-1])
  return (boxes / area).astype(np.float32)


def pack(bits: np.ndarray) -> np.ndarray:
  """bool [N, 64] -> uint64 [N], bit 0 the most significant."""
  weights = np.left_shift(np.uint64(1), np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64))
  return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def phash(images: np.ndarray) -> np.ndarray:
  small = area_resize(grey(images), 32, 32)
  low = scipy.fft.dctn(small, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(small), 64)
  median = np.median(low[:, 1:], axis=1, keepdims=True)
  return pack(low > median)


def dhash(images: np.ndarray) -> np.ndarray:
  small = area_resize(grey(images), 8, 9)
  return pack((small[:, :, :-1] > small[:, :, 1:]).reshape(len(small), 64))


def ahash(images: np.ndarray) -> np.ndarray:
  small = area_resize(grey(images), 8, 8).reshape(len(images), 64)
  return pack(small > small.mean(axis=1, keepdims=True))


HASHES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "phash": phash, "dhash": dhash, "ahash": ahash}


def mirrored(hash_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
  """``hash_fn`` of the horizontally flipped images."""
  return hash_fn(np.asarray(images)[:, :, ::-1])


def pixel_digest(image: np.ndarray) -> str:
  """SHA-1 (hex) of a decoded image's shape and pixels: equal only for identical pixels."""
  image = np.ascontiguousarray(image)
  return hashlib.sha1(str(image.shape).encode() + image.tobytes()).hexdigest()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Bitwise distance of uint64 hashes, elementwise."""
  x = np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
  flat = np.ascontiguousarray(x.reshape(-1))
  return np.unpackbits(flat.view(np.uint8).reshape(-1, 8), axis=1).sum(
      axis=1, dtype=np.int64).reshape(x.shape)
