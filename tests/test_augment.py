"""Normalisation constants, crops and augmentations against numpy, number by number."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agejax.models import forward
import tensorflow as tf

from agejax.data import augment
from agejax.data import eval_input
from agejax.data import stages
from agejax.config import defaults
from agejax.errors import ConfigError


def _gradient(height: int, width: int) -> np.ndarray:
  """uint8 RGB: red grows along x, green along y, blue constant."""
  y, x = np.mgrid[0:height, 0:width]
  return np.stack([5 * x, 5 * y, np.full_like(x, 128)], -1).astype(np.uint8)


def _augment_cfg(**on):
  cfg = defaults.default_config().data.augment
  cfg.random_resized_crop = False
  cfg.flip = False
  cfg.rotation_degrees = 0.0
  cfg.color_jitter = 0.0
  for key, value in on.items():
    setattr(cfg, key, value)
  return cfg


def _key(i: int) -> tf.Tensor:
  return tf.constant([7, i], tf.int64)


def _uniforms(i: int, n: int) -> tf.Tensor:
  return tf.random.stateless_uniform([n], _key(i))


def _image_uniforms(key: tf.Tensor) -> tf.Tensor:
  """One image's uniforms [NUM_UNIFORMS] from a stateless key ([2] int64)."""
  return tf.random.stateless_uniform([augment.NUM_UNIFORMS], key)


def _train_image(image, key, augment_cfg, image_size, resize_side, preprocessing=None):
  """One training image through the pipeline's warp path (draws, then a batch of one)."""
  shape = tf.shape(image)
  drawn = stages.draws(_image_uniforms(key), shape[0], shape[1], augment_cfg, image_size,
                       resize_side)
  return stages.finish_one({"pixels": image, **drawn}, augment_cfg, image_size, preprocessing)


def _train_image_from_jpeg(encoded, key, augment_cfg, image_size, preprocessing=None):
  """The pipeline's JPEG path for the same key: the same window and flip as the warp path."""
  shape = tf.image.extract_jpeg_shape(encoded)
  drawn = stages.draws(_image_uniforms(key), shape[0], shape[1], augment_cfg, image_size,
                       image_size)
  return stages.jpeg_pixels(encoded, drawn, augment_cfg, image_size, preprocessing)


def test_constants_are_the_published_ones():
  assert augment.IMAGENET_MEAN_RGB == (0.485, 0.456, 0.406)
  assert augment.IMAGENET_STD_RGB == (0.229, 0.224, 0.225)
  assert augment.CAFFE_MEAN_BGR == (103.939, 116.779, 123.68)
  assert augment.DEX_MEAN_BGR == (104.00698793, 116.66876762, 122.67891434)
  assert augment.PREPROCESSINGS == ("imagenet", "caffe", "dex")


def test_caffe_pure_red_is_bgr_minus_mean():
  red = np.zeros([2, 3, 3], np.uint8)
  red[..., 0] = 255
  out = augment.normalize(red, "caffe")
  assert out.dtype == np.float32 and out.shape == (2, 3, 3)
  # BGR order: blue 0, green 0, red 255.
  expected = np.array([-103.939, -116.779, np.float32(255) - np.float32(123.68)],
                      np.float32)
  np.testing.assert_array_equal(out, np.broadcast_to(expected, (2, 3, 3)))
  np.testing.assert_allclose(out[0, 0], [-103.939, -116.779, 131.32], rtol=1e-6)


def test_imagenet_known_pixel():
  pixel = np.array([[[255, 128, 0]]], np.uint8)
  out = augment.normalize(pixel, "imagenet")
  expected = [(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, -0.406 / 0.225]
  np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
  np.testing.assert_allclose(out[0, 0], [2.2489083, 0.2051822, -1.8044444], rtol=1e-6)


def test_dex_is_bgr_minus_the_ilsvrc_mean_image_mean_in_numpy_jax_and_tf():
  pixel = np.array([[[255, 128, 0]]], np.uint8)
  expected = np.float32([0, 128, 255]) - np.float32([104.00698793, 116.66876762, 122.67891434])
  for x in (pixel, jnp.asarray(pixel), tf.constant(pixel)):
    np.testing.assert_array_equal(np.asarray(augment.normalize(x, "dex"))[0, 0], expected)
  # Under jit too (prediction and export trace it).
  jitted = jax.jit(lambda x: augment.normalize(x, "dex"))(jnp.asarray(pixel))
  np.testing.assert_array_equal(np.asarray(jitted)[0, 0], expected)


@pytest.mark.parametrize("preprocessing", ["imagenet", "caffe", "dex"])
def test_tensorflow_and_numpy_agree_exactly(preprocessing):
  image = _gradient(6, 5)
  np.testing.assert_array_equal(
      augment.normalize(tf.constant(image), preprocessing).numpy(),
      augment.normalize(image, preprocessing))
  np.testing.assert_array_equal(
      np.asarray(augment.normalize(jnp.asarray(image), preprocessing)),
      augment.normalize(image, preprocessing))
  # Floats in [0, 255] give what their uint8 values give.
  np.testing.assert_array_equal(
      augment.normalize(image.astype(np.float32), preprocessing),
      augment.normalize(image, preprocessing))


def test_unknown_preprocessing_names_the_key():
  cfg = defaults.default_config()
  cfg.model.preprocessing = "torch"
  with pytest.raises(ConfigError, match=r"^model\.preprocessing: must be one of imagenet, "
                     r"caffe, dex, got 'torch'$"):
    augment.check(cfg)
  with pytest.raises(ValueError, match=r"unknown preprocessing 'torch'"):
    augment.normalize(np.zeros([1, 1, 3]), "torch")


def test_flip_images_array_dict_and_jit():
  images = np.arange(2 * 3 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 3)
  flipped = forward.flip_images(images)
  for w in range(4):
    np.testing.assert_array_equal(flipped[:, :, w], images[:, :, 3 - w])
  batch = {"image": images, "age": np.array([1.0, 2.0])}
  out = forward.flip_images(batch)
  np.testing.assert_array_equal(out["image"], flipped)
  assert out["age"] is batch["age"] and batch["image"] is images
  np.testing.assert_array_equal(
      np.asarray(jax.jit(forward.flip_images)(jnp.asarray(images))), flipped)


def test_center_crop_is_the_numpy_centre():
  image = _gradient(48, 48)
  out = eval_input.center_crop_tf(tf.constant(image), 40, 48).numpy()
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, image[4:44, 4:44])
  wide = _gradient(48, 61)  # offset (61 - 40) // 2 = 10
  np.testing.assert_array_equal(
      eval_input.center_crop_tf(tf.constant(wide), 40, 48).numpy(), wide[4:44, 10:50])
  # A smaller stored image is resized so its shorter side is the crop.
  small = eval_input.center_crop_tf(tf.constant(_gradient(20, 20)), 40, 40).numpy()
  assert small.shape == (40, 40, 3)


def test_train_without_augmentation_is_the_eval_crop():
  image = tf.constant(_gradient(48, 48))
  expected = eval_input.center_crop_tf(image, 40, 48).numpy()
  for i in range(3):
    out = _train_image(image, _key(i), _augment_cfg(), 40, 48).numpy()
    np.testing.assert_array_equal(out, expected)


def test_flip_is_exact_and_random():
  image = tf.constant(_gradient(48, 48))
  crop = eval_input.center_crop_tf(image, 40, 48).numpy()
  flips = []
  for i in range(16):
    out = _train_image(image, _key(i), _augment_cfg(flip=True), 40, 48).numpy()
    flipped = np.array_equal(out, crop[:, ::-1])
    assert flipped or np.array_equal(out, crop)
    flips.append(flipped)
  assert 0 < sum(flips) < 16


def test_rotation_by_a_right_angle_is_rot90():
  image = (np.arange(40 * 40 * 3, dtype=np.float32).reshape(40, 40, 3) % 251)
  transform = augment.affine_transform(
      tf.constant(20.0), tf.constant(20.0), tf.constant(40.0), tf.constant(40.0),
      tf.constant(False), tf.constant(math.pi / 2), 40)
  out = augment.warp(tf.constant(image), transform, 40).numpy()
  # float32 cos(pi/2) is -4e-8, not 0: sampling lands a hair off the pixels.
  np.testing.assert_allclose(out, np.rot90(image, 1), atol=1e-3)


def test_rotation_stays_within_its_range():
  image = tf.constant(_gradient(48, 48))
  crop = eval_input.center_crop_tf(image, 40, 48).numpy()
  cfg = _augment_cfg(rotation_degrees=10.0)
  outs = [_train_image(image, _key(i), cfg, 40, 48).numpy() for i in range(4)]
  for out in outs:
    assert not np.array_equal(out, crop)
    # Rotating about the centre keeps the centre pixel (up to interpolation).
    np.testing.assert_allclose(out[19:21, 19:21], crop[19:21, 19:21], atol=6.0)
  # A 10 degree turn moves a corner by at most 28 * sin(10 deg) ~ 4.9 px,
  # i.e. 25 grey levels of the 5-per-pixel gradient.
  assert max(np.abs(o - crop)[2:-2, 2:-2, :2].max() for o in outs) <= 25.0


def test_sample_crop_area_ratio_and_bounds():
  areas, ratios = [], []
  for i in range(64):
    cx, cy, w, h = (float(v) for v in augment.sample_crop(
        _uniforms(i, 4), tf.constant(48), tf.constant(64), (0.3, 0.5), (0.8, 1.25)))
    assert 0 <= cx - w / 2 and cx + w / 2 <= 64 + 1e-4
    assert 0 <= cy - h / 2 and cy + h / 2 <= 48 + 1e-4
    areas.append(w * h / (48 * 64))
    ratios.append(w / h)
  assert 0.3 - 1e-5 <= min(areas) and max(areas) <= 0.5 + 1e-5
  assert 0.8 - 1e-5 <= min(ratios) and max(ratios) <= 1.25 + 1e-5
  assert max(areas) - min(areas) > 0.1  # it does vary


def test_fixed_scale_crop_is_a_quarter_upscaled():
  cfg = _augment_cfg(random_resized_crop=True, crop_scale_min=0.25,
                     crop_scale_max=0.25, crop_ratio_min=1.0, crop_ratio_max=1.0)
  image = tf.constant(_gradient(48, 48))
  out = _train_image(image, _key(3), cfg, 48, 48).numpy()
  # A 24 px window shown at 48 px: the red ramp (5 per stored pixel) now
  # rises 2.5 per output pixel, over a 24 px span.
  steps = np.diff(out[24, 1:-1, 0])
  np.testing.assert_allclose(steps, 2.5, atol=1e-3)


def test_color_jitter():
  image = tf.constant(_gradient(40, 40).astype(np.float32))
  np.testing.assert_array_equal(
      augment.color_jitter(image, _uniforms(0, 3), 0.0).numpy(), image.numpy())
  a = augment.color_jitter(image, _uniforms(1, 3), 0.4).numpy()
  b = augment.color_jitter(image, _uniforms(1, 3), 0.4).numpy()
  c = augment.color_jitter(image, _uniforms(2, 3), 0.4).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c) and not np.array_equal(a, image.numpy())
  assert a.min() >= 0.0 and a.max() <= 255.0


def test_train_image_is_a_function_of_its_key():
  cfg = defaults.default_config().data.augment  # everything on
  image = tf.constant(_gradient(48, 48))
  a = _train_image(image, _key(5), cfg, 40, 48).numpy()
  b = _train_image(image, _key(5), cfg, 40, 48).numpy()
  c = _train_image(image, _key(6), cfg, 40, 48).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.shape == (40, 40, 3) and a.dtype == np.float32


def test_jpeg_fast_path_decodes_only_the_window_and_flips_like_the_warp():
  """Full-image window at the stored size: the decoded JPEG itself, or its mirror."""
  encoded = tf.io.encode_jpeg(tf.constant(_gradient(48, 48)), quality=100)
  decoded = tf.io.decode_jpeg(encoded).numpy().astype(np.float32)
  cfg = _augment_cfg(random_resized_crop=True, flip=True, crop_scale_min=1.0,
                     crop_scale_max=1.0, crop_ratio_min=1.0, crop_ratio_max=1.0)
  assert stages.crops_while_decoding(cfg)
  assert not stages.crops_while_decoding(_augment_cfg(random_resized_crop=True,
                                                       rotation_degrees=5.0))
  flips = []
  for i in range(16):
    fast = _train_image_from_jpeg(encoded, _key(i), cfg, 48).numpy()
    slow = _train_image(tf.constant(decoded.astype(np.uint8)), _key(i), cfg, 48, 48).numpy()
    flipped = np.array_equal(fast, decoded[:, ::-1])
    assert flipped or np.array_equal(fast, decoded)
    # Same key, same draw: the warp path flips the same images.
    assert np.array_equal(slow, decoded[:, ::-1]) == flipped
    flips.append(flipped)
  assert 0 < sum(flips) < 16


def test_jpeg_fast_path_window_matches_the_sampled_crop():
  encoded = tf.io.encode_jpeg(tf.constant(_gradient(48, 48)), quality=100)
  cfg = _augment_cfg(random_resized_crop=True, crop_scale_min=0.25, crop_scale_max=0.25,
                     crop_ratio_min=1.0, crop_ratio_max=1.0)
  out = _train_image_from_jpeg(encoded, _key(3), cfg, 24).numpy()
  crop = _image_uniforms(_key(3))[augment.CROP]
  cx, cy, w, h = (float(v) for v in augment.sample_crop(crop, 48, 48, (0.25, 0.25), (1, 1)))
  assert (w, h) == (24.0, 24.0)
  # A 24 px window resized to 24 px: red = 5 * x and green = 5 * y of its
  # top-left pixel (JPEG at quality 100 keeps the gradient within a few levels).
  left, top = math.floor(cx - 12), math.floor(cy - 12)
  np.testing.assert_allclose(out[0, 0, :2], [5 * left, 5 * top], atol=4)
  np.testing.assert_allclose(out[-1, -1, :2], [5 * (left + 23), 5 * (top + 23)], atol=4)


def test_jpeg_fast_path_mirrors_before_resizing_like_after():
  """The window is flipped before its resize: the mirror of the unflipped image."""
  encoded = tf.io.encode_jpeg(tf.constant(_gradient(48, 48)), quality=95)
  crop = dict(random_resized_crop=True, crop_scale_min=0.3, crop_scale_max=0.6)
  mirrored = 0
  for i in range(8):
    plain = _train_image_from_jpeg(encoded, _key(i), _augment_cfg(**crop), 40).numpy()
    out = _train_image_from_jpeg(encoded, _key(i), _augment_cfg(flip=True, **crop),
                                       40).numpy()
    if np.array_equal(out, plain):
      continue
    # A window of 26-38 px upscaled to 40: the same weights mirrored, so only
    # float rounding of the sample positions differs.
    np.testing.assert_allclose(out, plain[:, ::-1], atol=2e-3)
    mirrored += 1
  assert 0 < mirrored < 8


@pytest.mark.parametrize("shape", [(48, 64), (300, 200)])
def test_an_epoch_table_is_the_per_image_draws_row_by_row(shape):
  """One vectorised pass over an epoch's uniforms gives each image's own draws."""
  cfg = defaults.default_config().data.augment  # everything on
  cfg.color_jitter = 0.3
  key = _key(11)
  table = stages.epoch_draws(key, 64, shape + (3,), cfg, 40, 48)
  rows = tf.random.stateless_uniform([64, augment.NUM_UNIFORMS], key)
  assert set(table) == {"window", "transform", "flip", "factors"}
  for k in range(64):
    one = stages.draws(rows[k], shape[0], shape[1], cfg, 40, 48)
    for name in ("window", "flip"):
      np.testing.assert_array_equal(table[name][k].numpy(), one[name].numpy(), err_msg=name)
    # TF's vectorised sin, cos and exp may round an ulp apart from their scalar loops.
    for name in ("transform", "factors"):
      np.testing.assert_allclose(table[name][k].numpy(), one[name].numpy(), rtol=1e-6,
                                 atol=1e-5, err_msg=name)
  # Unknown stored sizes: the uniforms themselves, for per-image draws.
  deferred = stages.epoch_draws(key, 64, (None, None, 3), cfg, 40, 48)
  np.testing.assert_array_equal(deferred["uniforms"].numpy(), rows.numpy())
  # The columns are what they say: flips are fair coins, angles within +-10 deg.
  flips = table["flip"].numpy()
  assert 16 < flips.sum() < 48
  np.testing.assert_array_equal(flips, rows[:, augment.FLIP].numpy() < 0.5)
  top, left, height, width = table["window"].numpy().T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + height <= shape[0]).all() and (left + width <= shape[1]).all()
  factors = table["factors"].numpy()
  assert factors.min() >= 0.7 and factors.max() <= 1.3
