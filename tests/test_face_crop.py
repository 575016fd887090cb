"""Tests for agejax.data.face_crop: the box rule, and that the PIL path the
builders take and the array path prediction takes give the same pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
import pytest

from agejax.data import face_crop


def _image(height=60, width=80):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_widen_box_adds_the_margin_per_side_and_clips():
  # 20 x 10 box, 40% margin: 8 px left/right, 4 px top/bottom.
  assert face_crop.widen_box((30, 20, 50, 30), 0.4, 60, 80) == (22, 16, 58, 34)
  # Rounded outward, then clipped to the 80 x 60 image.
  assert face_crop.widen_box((2.5, 1.5, 70.5, 55.5), 0.1, 60, 80) == (0, 0, 78, 60)
  with pytest.raises(ValueError, match="outside"):
    face_crop.widen_box((100, 100, 120, 120), 0.4, 60, 80)


def test_array_and_pil_crops_are_the_same_pixels():
  image = _image()
  box = (30, 20, 50, 30)
  by_array = face_crop.crop_face(image, box, margin=0.4, size=32)
  by_pil = np.asarray(face_crop.crop(Image.fromarray(image), box, margin=0.4, size=32))
  np.testing.assert_array_equal(by_array, by_pil)
  # and both equal PIL's own crop-then-resize of the widened box
  want = Image.fromarray(image[16:34, 22:58]).resize((32, 32), Image.BILINEAR)
  np.testing.assert_array_equal(by_array, np.asarray(want))


def test_whole_image_at_its_own_size_is_unchanged():
  image = _image(40, 40)
  np.testing.assert_array_equal(face_crop.crop_face(image, None, size=40), image)


def test_decode_gives_rgb_for_grayscale_and_refuses_garbage():
  gray = Image.fromarray(_image()[..., 0])
  buffer = io.BytesIO()
  gray.save(buffer, format="PNG")
  decoded = face_crop.decode_rgb(buffer.getvalue())
  assert decoded.shape == (60, 80, 3)
  np.testing.assert_array_equal(decoded[..., 1], np.asarray(gray))
  with pytest.raises(face_crop.UndecodableImage):
    face_crop.decode(b"not an image")


def test_jpeg_round_trip_keeps_size_and_is_close():
  image = np.full((32, 32, 3), 120, np.uint8)
  decoded = face_crop.decode_rgb(face_crop.encode_jpeg(image))
  assert decoded.shape == image.shape
  assert np.abs(decoded.astype(int) - 120).max() <= 1
