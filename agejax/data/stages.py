"""What the training input runs per image and per batch: random draws, then the pixel work.

Draws. An image's random choices are :data:`augment.NUM_UNIFORMS` uniforms
(``augment.UNIFORM_COLUMNS``). The pipeline draws a whole epoch's in one
stateless op and turns them into crop windows, affine transforms, flips and
colour factors in one vectorised pass (:func:`epoch_draws`) when the stored
images share one size, as every agejax builder's do; for images of many sizes
the same :func:`draws` runs per image on its row. Per-image key folding and
drawing had been about 80 scalar TF ops per image, a third of a 2-core CPU's
per-image budget.

Pixels. Crop + flip without rotation decodes only the crop window from the
JPEG (:func:`jpeg_pixels`), mirrors the uint8 window when the flip is drawn
(bilinear resizing with half-pixel centres commutes with a mirror), resizes
it and normalises it with plain TF ops. The warp path (rotation, or decoded
images) runs the warp, colour jitter and normalisation of a batch as one
XLA-compiled function (``jit_compile``), so TensorFlow does not make a pass
over the image per operation. Evaluation images are normalised by an
XLA-compiled stage too (``agejax.data.eval_input``), so a training image
without augmentation equals its evaluation image bit for bit.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import ml_collections
import tensorflow as tf

from agejax.data.augment import (ANGLE, CROP, FLIP, JITTER, NUM_UNIFORMS, affine_transform,
                                 center_window, jitter_batch, jitter_factors,
                                 normalize, pixel_window, sample_crop, warp_batch)


@functools.lru_cache(maxsize=None)
def _jit(stage: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
  """``stage`` as one XLA computation (compiled once per input shape)."""
  return tf.function(stage, jit_compile=True)


def draws(u: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
          augment: ml_collections.ConfigDict, image_size: int,
          resize_side: int) -> dict[str, tf.Tensor]:
  """The random choices of images of ``height`` x ``width`` from their uniforms.

  Elementwise over the leading dimensions of ``u`` ([..., NUM_UNIFORMS]):
  one image's row, or an epoch's table. Returns ``window`` int32 [..., 4]
  (the whole-pixel crop window the JPEG decoder reads), ``transform``
  [..., 8] (crop, flip and rotation as one affine map, for the warp),
  ``flip`` bool [...] and ``factors`` [..., 3] (colour jitter; all 1 when off).
  """
  leading = tf.shape(u)[:-1]
  if augment.random_resized_crop:
    crop = sample_crop(u[..., CROP], height, width,
                       (augment.crop_scale_min, augment.crop_scale_max),
                       (augment.crop_ratio_min, augment.crop_ratio_max))
  else:
    crop = center_window(height, width, image_size, resize_side)
    crop = tuple(c + tf.zeros(leading, tf.float32) for c in crop)
  flip = u[..., FLIP] < 0.5 if augment.flip else tf.zeros(leading, tf.bool)
  angle = tf.zeros(leading, tf.float32)
  if augment.rotation_degrees > 0:
    limit = math.radians(augment.rotation_degrees)
    angle = -limit + 2.0 * limit * u[..., ANGLE]
  return {"window": pixel_window(*crop, height, width),
          "transform": affine_transform(*crop, flip, angle, image_size),
          "flip": flip, "factors": jitter_factors(u[..., JITTER], augment.color_jitter)}


def epoch_draws(key: tf.Tensor, count: tf.Tensor, stored_shape: tuple[int | None, ...],
                augment: ml_collections.ConfigDict, image_size: int,
                resize_side: int) -> dict[str, tf.Tensor]:
  """``count`` images' draws from one stateless op: :func:`draws` of the whole
  table when the stored images have one size, else ``{"uniforms": [count,
  NUM_UNIFORMS]}`` for :func:`image_draws` to finish per image."""
  u = tf.random.stateless_uniform(tf.stack([tf.cast(count, tf.int32), NUM_UNIFORMS]), key)
  height, width = stored_shape[:2]
  if height is None or width is None:
    return {"uniforms": u}
  return draws(u, height, width, augment, image_size, resize_side)


def image_draws(drawn: dict[str, tf.Tensor], shape_of: Callable[[], tf.Tensor],
                augment: ml_collections.ConfigDict, image_size: int,
                resize_side: int) -> dict[str, tf.Tensor]:
  """One image's row of :func:`epoch_draws`, as :func:`draws` gives it.

  ``shape_of()`` gives the image's [H, W, ...]; it is only called (traced)
  for rows still to be drawn, so a table already drawn costs no shape read.
  """
  if "uniforms" not in drawn:
    return drawn
  shape = shape_of()
  return draws(drawn["uniforms"], shape[0], shape[1], augment, image_size, resize_side)


@functools.lru_cache(maxsize=None)
def _pixel_stage(warped: bool, image_size: int, jitter: bool,
                 preprocessing: str | None) -> Callable[..., tf.Tensor]:
  """The per-pixel work of a batch, as one function: warp (crop, flip and
  rotation) when ``warped``, colour jitter, normalisation."""
  def stage(images, transforms, factors):
    out = warp_batch(images, transforms, image_size) if warped else images
    if jitter:
      out = jitter_batch(out, factors)
    return normalize(out, preprocessing) if preprocessing else out
  return stage


def finish(batch: dict[str, tf.Tensor], augment: ml_collections.ConfigDict, image_size: int,
           preprocessing: str | None, warped: bool = True) -> tf.Tensor:
  """Network inputs [B, S, S, 3] from a batch of stored ``pixels`` and their
  ``transform`` and ``factors`` (``warped``), or of already cropped [S, S]
  ``pixels`` and their ``factors``: one XLA computation for the warp, jitter
  and normalisation of the whole batch. In [0, 255] when ``preprocessing`` is
  None.
  """
  stage = _pixel_stage(warped, image_size, augment.color_jitter > 0, preprocessing)
  # XLA compiles once per input shape: stored images of one size (every
  # agejax builder) compile once; images of many sizes run the same ops
  # uncompiled.
  if batch["pixels"].shape[1:].is_fully_defined():
    stage = _jit(stage)
  return stage(batch["pixels"], batch["transform"], batch["factors"])


def finish_one(drawn: dict[str, tf.Tensor], augment: ml_collections.ConfigDict,
               image_size: int, preprocessing: str | None, warped: bool = True) -> tf.Tensor:
  """:func:`finish` of one image: [S, S, 3]."""
  batch = {k: drawn[k][None] for k in ("pixels", "transform", "factors")}
  return finish(batch, augment, image_size, preprocessing, warped)[0]


def jpeg_pixels(encoded: tf.Tensor, drawn: dict[str, tf.Tensor],
                augment: ml_collections.ConfigDict, image_size: int,
                preprocessing: str | None) -> tf.Tensor:
  """One training image straight from its JPEG bytes, without rotation: [S, S, 3].

  The decoder skips everything outside the crop window, which is most of the
  work of an input pipeline. The uint8 window is mirrored before its resize,
  and only when the flip is drawn; without colour jitter it is normalised
  with TF ops (one XLA launch per image cost more than it saved).
  """
  window = tf.image.decode_and_crop_jpeg(encoded, drawn["window"], channels=3)
  if augment.flip:
    window = tf.cond(drawn["flip"], lambda: tf.reverse(window, axis=[1]), lambda: window)
  pixels = tf.image.resize(window, [image_size, image_size], method="bilinear")
  if augment.color_jitter > 0:
    return finish_one({"pixels": pixels, "transform": drawn["transform"],
                       "factors": drawn["factors"]}, augment, image_size, preprocessing,
                      warped=False)
  return normalize(pixels, preprocessing) if preprocessing else pixels


def crops_while_decoding(augment: ml_collections.ConfigDict) -> bool:
  """Random crop + flip without rotation: only the window need be decoded."""
  return bool(augment.random_resized_crop) and augment.rotation_degrees == 0
