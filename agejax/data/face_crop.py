"""One face-crop rule for building datasets and for prediction on new photos.

A face box is widened by a margin (a fraction of the box's width and height
on every side, 40% as DEX did), clipped to the image, and resized to a square.
Using the same function at build time and in ``agejax.predict`` is what makes
a model see at prediction time exactly what it saw in training.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Sequence

import numpy as np
from PIL import Image

DEFAULT_MARGIN = 0.4
DEFAULT_SIZE = 256


class UndecodableImage(ValueError):
  """The bytes are not an image PIL can read."""


def decode(data: bytes, min_size: tuple[int, int] | None = None) -> Image.Image:
  """Decodes JPEG/PNG/... bytes to an RGB PIL image (grayscale, CMYK, palette converted).

  ``min_size=(w, h)``: a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size
  (libjpeg's DCT scaling, PIL's ``draft``) as long as it stays at least that
  large: a 12000 px photo whose face becomes 256 px costs 1/64 of the memory.
  Images over twice PIL's ``MAX_IMAGE_PIXELS`` (about 179 MP) are refused as
  decompression bombs.
  """
  try:
    with warnings.catch_warnings():
      # Large but allowed images are decoded at reduced size below: not a bomb.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as img:
        if min_size is not None and img.format == "JPEG":
          img.draft("RGB", (max(1, int(min_size[0])), max(1, int(min_size[1]))))
        img.load()
        # convert() copies even when the mode already matches: skip it then.
        return img if img.mode == "RGB" else img.convert("RGB")
  except Exception as e:  # PIL raises many types for broken files
    raise UndecodableImage(str(e)) from e


def image_size(data: bytes) -> tuple[int, int]:
  """(width, height) from the header alone."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as img:
        return img.size
  except Exception as e:  # pylint: disable=broad-except
    raise UndecodableImage(str(e)) from e


def decode_for_crop(data: bytes, box: Sequence[float] | None, margin: float = DEFAULT_MARGIN,
                    size: int = DEFAULT_SIZE, reduced: bool = True
                    ) -> tuple[Image.Image, tuple[float, ...] | None, tuple[int, int]]:
  """Decodes only as many pixels as :func:`crop` to ``size`` needs (``reduced``).

  A JPEG is decoded at 1/2, 1/4 or 1/8 scale only while its widened box keeps
  at least ``2 * size`` pixels a side, so the crop's own resize still
  filters a larger image: against full decoding the stored crops stay above
  40 dB PSNR (measured by ``python -m agejax.benchmark build`` on the
  generated release and the scikit-image photos). With ``reduced=False`` it
  is a plain full decode (the exact pixels of :func:`decode`).

  Returns:
    the image (possibly reduced), ``box`` in its coordinates, and the
    original (width, height).
  """
  width, height = image_size(data)
  if box is None:
    region_w, region_h = width, height
  else:
    left, top, right, bottom = widen_box(box, margin, height, width)
    region_w, region_h = right - left, bottom - top
  # The smallest whole image whose widened box keeps 2 x ``size`` pixels a side.
  scale = min(1.0, 2 * max(size / max(region_w, 1), size / max(region_h, 1)))
  if not reduced:
    scale = 1.0
  image = decode(data, (math.ceil(width * scale), math.ceil(height * scale)))
  factor = image.size[0] / width
  if box is not None and factor != 1.0:
    box = tuple(float(v) * factor for v in box)
  return image, (None if box is None else tuple(box)), (width, height)


def decode_rgb(data: bytes) -> np.ndarray:
  """:func:`decode` as a uint8 [H, W, 3] array."""
  return np.asarray(decode(data))


def encode_jpeg(image: Image.Image | np.ndarray, quality: int = 95) -> bytes:
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  out = io.BytesIO()
  image.save(out, format="JPEG", quality=quality)
  return out.getvalue()


def widen_box(box: Sequence[float], margin: float, height: int,
              width: int) -> tuple[int, int, int, int]:
  """(x1, y1, x2, y2) widened by ``margin`` of its size per side, clipped.

  Coordinates are pixel edges: x2/y2 are exclusive. Boxes are rounded
  outward so no face pixel is lost.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  dx, dy = margin * (x2 - x1), margin * (y2 - y1)
  left = max(0, int(np.floor(x1 - dx)))
  top = max(0, int(np.floor(y1 - dy)))
  right = min(width, int(np.ceil(x2 + dx)))
  bottom = min(height, int(np.ceil(y2 + dy)))
  if right <= left or bottom <= top:
    raise ValueError(f"face box {tuple(box)} lies outside the {width}x{height} image")
  return left, top, right, bottom


def crop(image: Image.Image, box: Sequence[float] | None,
         margin: float = DEFAULT_MARGIN, size: int = DEFAULT_SIZE) -> Image.Image:
  """The widened face box of RGB ``image`` resized to ``size`` x ``size``.

  ``box=None`` uses the whole image (already cropped releases). Builders stay
  in PIL from decoding to encoding: no array copies between the steps that
  release the GIL, which is what lets their thread pools use every core.
  """
  width, height = image.size
  if box is None:
    left, top, right, bottom = 0, 0, width, height
  else:
    left, top, right, bottom = widen_box(box, margin, height, width)
  return image.crop((left, top, right, bottom)).resize((size, size), Image.BILINEAR)


def crop_face(image: np.ndarray, box: Sequence[float] | None,
              margin: float = DEFAULT_MARGIN, size: int = DEFAULT_SIZE) -> np.ndarray:
  """:func:`crop` for a uint8 [H, W, 3] array; the same pixels."""
  return np.asarray(crop(Image.fromarray(np.ascontiguousarray(image)), box, margin, size))


def warp_box(image: Image.Image, corners: Sequence[float], size: int = DEFAULT_SIZE) -> Image.Image:
  """The rotated box ``corners`` of ``image`` warped to an upright ``size`` square.

  ``corners`` are 8 numbers, the box's top-left, top-right, bottom-right and
  bottom-left ``(x, y)`` in image pixels (the face benchmark's
  ``aligned_bbox``): the top-left corner goes to the square's top-left, the
  top edge to its top edge. Output pixel centre ``(u + .5, v + .5)`` samples
  ``TL + (u + .5) / size * (TR - TL) + (v + .5) / size * (BL - TL)``
  bilinearly; what falls outside the image is black. The box is a
  parallelogram (an affine map); the bottom-right corner is implied.

  Raises:
    ValueError: not 8 finite numbers, or a box with no area.
  """
  box = np.asarray(corners, np.float64).reshape(-1)
  if box.size != 8 or not np.all(np.isfinite(box)):
    raise ValueError(f"a box is 8 finite numbers (four x, y corners), got {list(corners)}")
  top_left, top_right, _, bottom_left = box.reshape(4, 2)
  across, down = (top_right - top_left) / size, (bottom_left - top_left) / size
  if abs(across[0] * down[1] - across[1] * down[0]) < 1e-12:
    raise ValueError(f"the box {list(corners)} has no area")
  # PIL's AFFINE maps each output point (x, y) to the input point
  # (a x + b y + c, d x + e y + f), both in continuous pixel coordinates.
  coefficients = (across[0], down[0], top_left[0], across[1], down[1], top_left[1])
  return image.convert("RGB").transform((size, size), Image.Transform.AFFINE, coefficients,
                                        resample=Image.Resampling.BILINEAR)
