"""Image operations of the input pipeline: normalisation, crops, augmentation.

Nothing here draws random numbers: the random choices of one image are
:data:`NUM_UNIFORMS` uniforms in [0, 1) (see :data:`UNIFORM_COLUMNS`), and
every function turns its columns into a crop window, a flip, an angle or
colour factors, elementwise, so one call serves a single image or a whole
epoch's table (``agejax.data.stages``). Who draws the uniforms decides the
determinism: the pipeline draws them statelessly per epoch, which is what lets
``agejax.data.input_pipeline`` restart a run bit for bit.

Geometry is done in one resampling: the random resized crop, the horizontal
flip and the rotation are composed into a single affine map from output pixels
to stored-image pixels, so an image is interpolated once, not three times.

The warp is written as four gathers and a blend, the bilinear interpolation
and REFLECT border of TF's ``ImageProjectiveTransformV3``, equal to it to
float rounding (about 1e-5 of a pixel value), because XLA cannot compile that
op and :mod:`agejax.data.stages` runs the pixel work as one XLA computation.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from agejax.config import config_check

PREPROCESSINGS = ("imagenet", "caffe", "dex")
# Both feed BGR in [0, 255] minus a mean, as Caffe nets were trained.
_BGR = ("caffe", "dex")
RULES: dict[str, config_check.Rule] = {
    "model.preprocessing": config_check.one_of(PREPROCESSINGS)}


def check(cfg: Any) -> None:
  """The rule of the input normalisation's key."""
  config_check.check_rules(cfg, RULES)

# torchvision / timm: RGB scaled to [0, 1], then per channel (x - mean) / std.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Keras' preprocess_input(mode="caffe"): RGB -> BGR, minus the ImageNet mean in
# [0, 255] units, no scaling (the Caffe ResNets and DEX's VGG-16 expect this).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# DEX's Caffe nets: the mean of ILSVRC 2012's mean image (Caffe's
# ilsvrc_2012_mean.npy), per BGR channel.
DEX_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

# The columns of one image's uniforms: crop area, crop aspect (log), crop left
# and top, flip, rotation angle, then brightness, contrast and saturation.
UNIFORM_COLUMNS = ("area", "log_ratio", "left", "top", "flip", "angle",
                   "brightness", "contrast", "saturation")
NUM_UNIFORMS = len(UNIFORM_COLUMNS)
CROP, FLIP, ANGLE, JITTER = slice(0, 4), 4, 5, slice(6, 9)

def normalize(images: Any, preprocessing: str) -> Any:
  """uint8 or float RGB images in [0, 255] to the network's input.

  Works on ``tf.Tensor`` (inside the tf.data pipeline), on ``jax.Array``
  (also traced, inside jit) and on anything numpy accepts, channels last.

  Args:
    images: [..., 3] RGB values in [0, 255].
    preprocessing: ``model.preprocessing``: imagenet, caffe or dex.

  Returns:
    float32 images of the same shape; BGR channel order for caffe and dex.
  """
  if preprocessing not in PREPROCESSINGS:  # a caller's bug: configs passed check()
    raise ValueError(f"unknown preprocessing {preprocessing!r}; use one of {PREPROCESSINGS}")
  if tf.is_tensor(images):
    return _normalize_tf(tf.cast(images, tf.float32), preprocessing)
  if isinstance(images, jax.Array):  # also inside jit (prediction, export)
    x = images.astype(jnp.float32)
    if preprocessing in _BGR:  # lax.rev: indexing lowers to a gather TFLite rejects
      x = jax.lax.rev(x, (x.ndim - 1,))
  else:
    x = np.asarray(images, np.float32)
    if preprocessing in _BGR:
      x = x[..., ::-1]
  return _shift_and_scale(x, preprocessing, tiles=1)


def _shift_and_scale(x: Any, preprocessing: str, tiles: int) -> Any:
  """The per-channel arithmetic of :func:`normalize` on channels already in
  the network's order, its constants repeated ``tiles`` times along the
  last axis.

  ImageNet's ``(x / 255 - mean) / std`` is computed as ``(x - 255 mean) *
  (1 / (255 std))``: two passes over the image instead of three, and a
  multiply for a divide (within 2 float32 ulps of the textbook order). A
  subtract then a multiply cannot be contracted into a fused multiply-add, so
  TF, numpy and XLA round it alike and stay bit-identical.
  """
  if preprocessing in _BGR:
    mean = CAFFE_MEAN_BGR if preprocessing == "caffe" else DEX_MEAN_BGR
    return x - np.tile(np.asarray(mean, np.float32), tiles)
  mean = np.asarray(IMAGENET_MEAN_RGB, np.float64) * 255.0
  scale = 1.0 / (np.asarray(IMAGENET_STD_RGB, np.float64) * 255.0)
  return (x - np.tile(mean.astype(np.float32), tiles)) * np.tile(scale.astype(np.float32), tiles)


def _normalize_tf(x: tf.Tensor, preprocessing: str) -> tf.Tensor:
  """:func:`normalize` in TensorFlow, the same operations value for value.

  TF's CPU kernels broadcast a length-3 channel vector over [..., W, 3] a
  few times slower than a length-3W row over [..., W * 3], so with a static
  width the image is viewed as rows and the constants are tiled W times.
  Each element still sees the same divide and subtract.
  """
  if preprocessing in _BGR:
    x = tf.reverse(x, axis=[-1])  # tf.reverse: a negative-stride slice is slow
  width = x.shape[-2] if x.shape.rank and x.shape.rank >= 2 else None
  if not width:
    return _shift_and_scale(x, preprocessing, tiles=1)
  shape = tf.shape(x)
  rows = tf.reshape(x, tf.concat([shape[:-2], [width * 3]], axis=0))
  return tf.reshape(_shift_and_scale(rows, preprocessing, tiles=width), shape)


def center_window(height: tf.Tensor, width: tf.Tensor, image_size: int,
                  resize_side: int) -> tuple[tf.Tensor, ...]:
  """The region of the stored image that ``eval_input.center_crop_tf`` keeps.

  Returns (centre x, centre y, width, height) in stored-image pixels. Used as
  the train crop when random resized crop is off: when the stored image needs
  no resize its edges are whole pixels, and train without augmentation equals
  evaluation exactly.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  # The same rounding and integer offsets as eval_input.center_crop_tf.
  factor = float(resize_side) / tf.minimum(h, w)
  new_h = tf.maximum(float(resize_side), tf.round(h * factor))
  new_w = tf.maximum(float(resize_side), tf.round(w * factor))
  sy, sx = h / new_h, w / new_w  # stored pixels per resized pixel
  top = tf.floor((new_h - image_size) / 2.0) * sy
  left = tf.floor((new_w - image_size) / 2.0) * sx
  crop_h, crop_w = image_size * sy, image_size * sx
  return left + crop_w / 2.0, top + crop_h / 2.0, crop_w, crop_h


def sample_crop(uniforms: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[tf.Tensor, ...]:
  """A random window: area fraction in ``scale``, aspect w/h log-uniform in ``ratio``.

  ``uniforms``: [..., 4] in [0, 1) (the ``CROP`` columns); ``height`` and
  ``width`` broadcast against its leading dimensions. One draw, no rejection
  loop: a window wider or taller than the image is clipped to it (its area
  and ratio then sit at the edge of their ranges).

  Returns:
    (centre x, centre y, width, height) in stored-image pixels, each [...].
  """
  u = tf.unstack(uniforms, num=4, axis=-1)
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  area = (scale[0] + (scale[1] - scale[0]) * u[0]) * h * w
  low, high = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(low + (high - low) * u[1])
  crop_w = tf.minimum(tf.sqrt(area * aspect), w)
  crop_h = tf.minimum(tf.sqrt(area / aspect), h)
  left = u[2] * (w - crop_w)
  top = u[3] * (h - crop_h)
  return left + crop_w / 2.0, top + crop_h / 2.0, crop_w, crop_h


def pixel_window(cx: tf.Tensor, cy: tf.Tensor, crop_w: tf.Tensor, crop_h: tf.Tensor,
                 height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """The whole-pixel window around a crop, rounded outward and clipped to the
  image: int32 [..., 4] as (top, left, height, width), the JPEG decoder's
  ``crop_window``."""
  zeros = tf.zeros(tf.shape(cx), tf.int32)  # the bounds, broadcast to the windows' shape
  height, width = tf.cast(height, tf.int32) + zeros, tf.cast(width, tf.int32) + zeros
  left = tf.clip_by_value(tf.cast(tf.floor(cx - crop_w / 2), tf.int32), 0, width - 1)
  top = tf.clip_by_value(tf.cast(tf.floor(cy - crop_h / 2), tf.int32), 0, height - 1)
  window_w = tf.clip_by_value(tf.cast(tf.math.ceil(crop_w), tf.int32), 1, width - left)
  window_h = tf.clip_by_value(tf.cast(tf.math.ceil(crop_h), tf.int32), 1, height - top)
  return tf.stack([top, left, window_h, window_w], axis=-1)


def affine_transform(cx: tf.Tensor, cy: tf.Tensor, crop_w: tf.Tensor,
                     crop_h: tf.Tensor, flip: tf.Tensor, angle: tf.Tensor,
                     image_size: int) -> tf.Tensor:
  """The 8 projective coefficients mapping output pixels to stored pixels.

  The output square (S x S) covers the window of size crop_w x crop_h centred
  at (cx, cy), mirrored if ``flip`` and rotated by ``angle`` radians about its
  centre. Pixel centres sit at +0.5 of an edge; ImageProjectiveTransformV3
  samples at integer indices, hence the -0.5 shifts.
  """
  cos, sin = tf.cos(angle), tf.sin(angle)
  sx = tf.where(flip, -1.0, 1.0) * crop_w / image_size  # elementwise: any leading shape
  sy = crop_h / image_size
  a0, a1 = cos * sx, -sin * sy
  b0, b1 = sin * sx, cos * sy
  half = 0.5 - image_size / 2.0  # output centre offset of output index 0
  a2 = cx - 0.5 + (a0 + a1) * half
  b2 = cy - 0.5 + (b0 + b1) * half
  zero = tf.zeros_like(a2)
  return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=-1)


def _reflect(coord: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """TF's REFLECT border (``d c b a | a b c d | d c b a``), then clamped to the image."""
  period = 2.0 * size
  below = tf.where(coord < period,
                   period * tf.cast(tf.cast(-coord / period, tf.int32), tf.float32) + coord, coord)
  below = tf.where(below < -size, below + period, -below - 1.0)
  above = coord - period * tf.cast(tf.cast(coord / period, tf.int32), tf.float32)
  above = tf.where(above >= size, period - above - 1.0, above)
  coord = tf.where(coord < 0.0, below, tf.where(coord > size - 1.0, above, coord))
  return tf.clip_by_value(coord, 0.0, size - 1.0)


def warp_batch(images: tf.Tensor, transforms: tf.Tensor, image_size: int) -> tf.Tensor:
  """Bilinear resampling of ``images`` ([B, H, W, 3]) through ``transforms`` ([B, 8]).

  The border is mirrored (REFLECT): a rotated window reaches past the face
  crop's edge, and a mirrored border looks more like a face than black corners.
  """
  shape = tf.shape(images)
  height, width = shape[1], shape[2]
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  pixels = tf.reshape(tf.cast(images, tf.float32), [shape[0], -1, 3])
  steps = tf.range(image_size, dtype=tf.float32)
  t = transforms[:, :, None, None]  # [B, 8, 1, 1] against [S, S] grids
  cols, rows = steps[None, :], steps[:, None]
  x = _reflect(t[:, 0] * cols + t[:, 1] * rows + t[:, 2], w)
  y = _reflect(t[:, 3] * cols + t[:, 4] * rows + t[:, 5], h)
  x0, y0 = tf.floor(x), tf.floor(y)
  left, top = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
  # The far neighbour of the last row or column has weight 0: any index does.
  right, bottom = tf.minimum(left + 1, width - 1), tf.minimum(top + 1, height - 1)

  def at(row, col):
    return tf.gather(pixels, row * width + col, batch_dims=1)

  wx0, wx1 = (x0 + 1.0 - x)[..., None], (x - x0)[..., None]
  upper = wx0 * at(top, left) + wx1 * at(top, right)
  lower = wx0 * at(bottom, left) + wx1 * at(bottom, right)
  return (y0 + 1.0 - y)[..., None] * upper + (y - y0)[..., None] * lower


def warp(image: tf.Tensor, transform: tf.Tensor, image_size: int) -> tf.Tensor:
  """:func:`warp_batch` of one image ([H, W, 3]) and its transform ([8])."""
  out = warp_batch(image[None], transform[None], image_size)[0]
  return tf.ensure_shape(out, [image_size, image_size, 3])


def jitter_factors(uniforms: tf.Tensor, strength: float) -> tf.Tensor:
  """The brightness, contrast and saturation factors of :func:`color_jitter`,
  [..., 3], from the ``JITTER`` columns [..., 3]; all 1 at strength 0."""
  lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
  return lo + (hi - lo) * tf.cast(uniforms, tf.float32)


def color_jitter(image: tf.Tensor, uniforms: tf.Tensor, strength: float) -> tf.Tensor:
  """Brightness, contrast and saturation, each a factor in [1 - s, 1 + s].

  Fixed order, clipped to [0, 255] after each step as torchvision does.
  ``image`` is float32 RGB in [0, 255]; ``uniforms`` [3] in [0, 1).
  """
  return apply_jitter(image, jitter_factors(uniforms, strength))


def apply_jitter(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """:func:`color_jitter` with its factors drawn (``jitter_factors``)."""
  return jitter_batch(image[None], factor[None])[0]


def jitter_batch(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
  """:func:`apply_jitter` of [B, H, W, 3] images with [B, 3] factors, image by image."""
  f = factors[:, None, None, None, :]  # [B, 1, 1, 1, 3]
  images = tf.clip_by_value(images * f[..., 0], 0.0, 255.0)
  mean_gray = tf.reduce_mean(tf.image.rgb_to_grayscale(images), axis=[1, 2, 3], keepdims=True)
  images = tf.clip_by_value((images - mean_gray) * f[..., 1] + mean_gray, 0.0, 255.0)
  gray = tf.image.rgb_to_grayscale(images)
  return tf.clip_by_value((images - gray) * f[..., 2] + gray, 0.0, 255.0)
