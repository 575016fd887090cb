"""What the training input runs per image and per batch: random draws, then one
compiled pixel stage.

The per-pixel work after the random draws (the warp, colour jitter and the
network's normalisation) is one XLA-compiled function (``jit_compile``), so
TensorFlow does not make a pass over the image per operation: on a 2-core CPU
this took rotation from 0.31 to about 0.7 of a minimal crop-and-flip
pipeline's speed (``python -m agejax.benchmark input``). The random draws stay
plain TF stateless ops (:mod:`agejax.data.augment`): XLA would draw other
numbers from the same keys. Evaluation images are normalised by the same
compiled stage, so a training image without augmentation equals its
evaluation image.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import ml_collections
import tensorflow as tf

from agejax.data.augment import (affine_transform, center_crop, center_window, jitter_batch,
                                 jitter_factors, normalize, sample_crop, warp_batch)


@functools.lru_cache(maxsize=None)
def _jit(stage: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
  """``stage`` as one XLA computation (compiled once per input shape)."""
  return tf.function(stage, jit_compile=True)


@functools.lru_cache(maxsize=None)
def _normalize_stage(preprocessing: str) -> Callable[..., tf.Tensor]:
  return lambda image: normalize(image, preprocessing)


def eval_image(image: tf.Tensor, image_size: int, resize_side: int,
               preprocessing: str) -> tf.Tensor:
  """The evaluation input: :func:`center_crop`, normalised by the same compiled
  stage as training images (so a train image without augmentation equals it)."""
  return _jit(_normalize_stage(preprocessing))(center_crop(image, image_size, resize_side))


@functools.lru_cache(maxsize=None)
def _pixel_stage(warped: bool, image_size: int, flip: bool, jitter: bool,
                 preprocessing: str | None) -> Callable[..., tf.Tensor]:
  """The per-pixel work of a batch of :func:`draws` or :func:`jpeg_draws`, as one function."""
  def stage(images, transforms, flips, factors):
    if warped:  # the flip is inside the transform
      out = warp_batch(images, transforms, image_size)
    else:
      out = images
      if flip:
        out = tf.where(flips[:, None, None, None], tf.reverse(out, axis=[2]), out)
    if jitter:
      out = jitter_batch(out, factors)
    return normalize(out, preprocessing) if preprocessing else out
  return stage


def _factors(key: tf.Tensor, strength: float) -> tf.Tensor:
  return jitter_factors(key, strength) if strength > 0 else tf.ones([3], tf.float32)


def draws(image: tf.Tensor, key: tf.Tensor, augment: ml_collections.ConfigDict,
          image_size: int, resize_side: int) -> dict[str, tf.Tensor]:
  """One training image's random draws and the pixels they apply to.

  ``{"pixels": the decoded image, "transform": [8], "flip": bool, "factors": [3]}``;
  :func:`finish` turns a batch of them into network inputs.
  """
  crop_key, flip_key, angle_key, color_key = tf.unstack(
      tf.random.experimental.stateless_split(key, num=4))
  shape = tf.shape(image)
  if augment.random_resized_crop:
    window = sample_crop(crop_key, shape[0], shape[1],
                         (augment.crop_scale_min, augment.crop_scale_max),
                         (augment.crop_ratio_min, augment.crop_ratio_max))
  else:
    window = center_window(shape[0], shape[1], image_size, resize_side)
  flip = tf.constant(False)
  if augment.flip:
    flip = tf.random.stateless_uniform([], flip_key) < 0.5
  angle = tf.zeros([], tf.float32)
  if augment.rotation_degrees > 0:
    limit = math.radians(augment.rotation_degrees)
    angle = tf.random.stateless_uniform([], angle_key, -limit, limit)
  return {"pixels": image, "transform": affine_transform(*window, flip, angle, image_size),
          "flip": flip, "factors": _factors(color_key, augment.color_jitter)}


def jpeg_draws(encoded: tf.Tensor, key: tf.Tensor, augment: ml_collections.ConfigDict,
               image_size: int) -> dict[str, tf.Tensor]:
  """:func:`draws` without rotation, straight from JPEG bytes.

  The JPEG decoder skips everything outside the crop window, which is most of
  the work of an input pipeline. The key is split as in :func:`draws`, so
  the window and the flip are the same draws; the window is rounded out to
  whole pixels and resized here (``pixels`` is then [S, S, 3] float32).
  """
  crop_key, flip_key, _, color_key = tf.unstack(
      tf.random.experimental.stateless_split(key, num=4))
  shape = tf.image.extract_jpeg_shape(encoded)
  cx, cy, crop_w, crop_h = sample_crop(
      crop_key, shape[0], shape[1], (augment.crop_scale_min, augment.crop_scale_max),
      (augment.crop_ratio_min, augment.crop_ratio_max))
  left = tf.clip_by_value(tf.cast(tf.floor(cx - crop_w / 2), tf.int32), 0, shape[1] - 1)
  top = tf.clip_by_value(tf.cast(tf.floor(cy - crop_h / 2), tf.int32), 0, shape[0] - 1)
  width = tf.clip_by_value(tf.cast(tf.math.ceil(crop_w), tf.int32), 1, shape[1] - left)
  height = tf.clip_by_value(tf.cast(tf.math.ceil(crop_h), tf.int32), 1, shape[0] - top)
  window = tf.image.decode_and_crop_jpeg(encoded, tf.stack([top, left, height, width]),
                                         channels=3)
  pixels = tf.image.resize(window, [image_size, image_size], method="bilinear")
  return {"pixels": pixels, "transform": tf.zeros([8], tf.float32),
          "flip": tf.random.stateless_uniform([], flip_key) < 0.5,
          "factors": _factors(color_key, augment.color_jitter)}


def finish(batch: dict[str, tf.Tensor], augment: ml_collections.ConfigDict, image_size: int,
           preprocessing: str | None, warped: bool) -> tf.Tensor:
  """Network inputs [B, S, S, 3] from a batch of :func:`draws` (``warped``) or
  :func:`jpeg_draws`: one XLA computation for the warp, flip, jitter and
  normalisation of the whole batch. In [0, 255] when ``preprocessing`` is None.
  """
  stage = _pixel_stage(warped, image_size, bool(augment.flip), augment.color_jitter > 0,
                       preprocessing)
  # XLA compiles once per input shape: stored images of one size (every
  # agejax builder) compile once; images of many sizes run the same ops
  # uncompiled.
  if batch["pixels"].shape[1:].is_fully_defined():
    stage = _jit(stage)
  return stage(batch["pixels"], batch["transform"], batch["flip"], batch["factors"])


def finish_one(draws_of_one: dict[str, tf.Tensor], augment: ml_collections.ConfigDict,
               image_size: int, preprocessing: str | None, warped: bool) -> tf.Tensor:
  """:func:`finish` of one image's draws: [S, S, 3]."""
  batch = {k: v[None] for k, v in draws_of_one.items()}
  return finish(batch, augment, image_size, preprocessing, warped)[0]


def train_image(image: tf.Tensor, key: tf.Tensor,
                augment: ml_collections.ConfigDict, image_size: int,
                resize_side: int, preprocessing: str | None = None) -> tf.Tensor:
  """One training image: decoded RGB [H, W, 3] -> float32 [S, S, 3].

  In [0, 255], or normalised for the network when ``preprocessing`` is
  given. :func:`draws` then :func:`finish` on a batch of one: the pipeline's
  own path. Every ``data.augment`` switch off gives exactly the evaluation crop.
  """
  return finish_one(draws(image, key, augment, image_size, resize_side), augment, image_size,
                    preprocessing, warped=True)


def crops_while_decoding(augment: ml_collections.ConfigDict) -> bool:
  """Random crop + flip without rotation: only the window need be decoded."""
  return bool(augment.random_resized_crop) and augment.rotation_degrees == 0


def train_image_from_jpeg(encoded: tf.Tensor, key: tf.Tensor,
                          augment: ml_collections.ConfigDict, image_size: int,
                          preprocessing: str | None = None) -> tf.Tensor:
  """:func:`train_image` without rotation, straight from JPEG bytes (:func:`jpeg_draws`)."""
  return finish_one(jpeg_draws(encoded, key, augment, image_size), augment, image_size,
                    preprocessing, warped=False)
