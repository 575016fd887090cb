"""Image operations of the input pipeline: normalisation, crops, augmentation.

Everything random here is stateless: each function takes a ``key`` (an int64
tensor of shape [2], see ``tf.random.experimental.stateless_split``) and gives
the same output for the same key, wherever and whenever it runs. That is what
lets ``agejax.data.pipeline`` restart a run bit for bit.

Geometry is done in one resampling: the random resized crop, the horizontal
flip and the rotation are composed into a single affine map from output pixels
to stored-image pixels, so an image is interpolated once, not three times.

The per-pixel work after the random draws (the warp, colour jitter and the
network's normalisation) is one XLA-compiled function (``jit_compile``), so
TensorFlow does not make a pass over the image per operation: on a 2-core CPU
this took rotation from 0.31 to about 0.6 of a minimal crop-and-flip
pipeline's speed (``python -m agejax.benchmark input``). The warp is written
as four gathers and a blend, the bilinear interpolation and REFLECT border of
TF's ``ImageProjectiveTransformV3`` (which XLA cannot compile), equal to it
to float rounding (about 1e-5 of a pixel value). The random draws stay plain
TF stateless ops: XLA would draw other numbers from the same keys.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from agejax.errors import ConfigError

PREPROCESSINGS = ("imagenet", "caffe")
# torchvision / timm: RGB scaled to [0, 1], then per channel (x - mean) / std.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Keras' preprocess_input(mode="caffe"): RGB -> BGR, minus the ImageNet mean in
# [0, 255] units, no scaling (the Caffe ResNets and DEX's VGG-16 expect this).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# Stored images of unknown size are resized so that the centre crop keeps this
# fraction of the shorter side (the usual 224-of-256 evaluation crop).
DEFAULT_EVAL_CROP_FRACTION = 0.875


def normalize(images: Any, preprocessing: str) -> Any:
  """uint8 or float RGB images in [0, 255] to the network's input.

  Works on ``tf.Tensor`` (inside the tf.data pipeline), on ``jax.Array``
  (also traced, inside jit) and on anything numpy accepts, channels last.

  Args:
    images: [..., 3] RGB values in [0, 255].
    preprocessing: ``model.preprocessing``: imagenet or caffe.

  Returns:
    float32 images of the same shape; BGR channel order for caffe.
  """
  if preprocessing not in PREPROCESSINGS:
    raise ConfigError(
        "model.preprocessing",
        f"unknown preprocessing {preprocessing!r}; use one of {PREPROCESSINGS}")
  if tf.is_tensor(images):
    return _normalize_tf(tf.cast(images, tf.float32), preprocessing)
  if isinstance(images, jax.Array):  # also inside jit (prediction, export)
    x = images.astype(jnp.float32)
  else:
    x = np.asarray(images, np.float32)
  if preprocessing == "caffe":
    x = x[..., ::-1]
  return _shift_and_scale(x, preprocessing, tiles=1)


def _shift_and_scale(x: Any, preprocessing: str, tiles: int) -> Any:
  """The per-channel arithmetic of :func:`normalize` on channels already in
  the network's order, its constants repeated ``tiles`` times along the
  last axis."""
  if preprocessing == "caffe":
    return x - np.tile(np.asarray(CAFFE_MEAN_BGR, np.float32), tiles)
  mean = np.tile(np.asarray(IMAGENET_MEAN_RGB, np.float32), tiles)
  std = np.tile(np.asarray(IMAGENET_STD_RGB, np.float32), tiles)
  return (x / np.float32(255.0) - mean) / std


def _normalize_tf(x: tf.Tensor, preprocessing: str) -> tf.Tensor:
  """:func:`normalize` in TensorFlow, the same operations value for value.

  TF's CPU kernels broadcast a length-3 channel vector over [..., W, 3] a
  few times slower than a length-3W row over [..., W * 3], so with a static
  width the image is viewed as rows and the constants are tiled W times.
  Each element still sees the same divide and subtract.
  """
  if preprocessing == "caffe":
    x = tf.reverse(x, axis=[-1])  # tf.reverse: a negative-stride slice is slow
  width = x.shape[-2] if x.shape.rank and x.shape.rank >= 2 else None
  if not width:
    return _shift_and_scale(x, preprocessing, tiles=1)
  shape = tf.shape(x)
  rows = tf.reshape(x, tf.concat([shape[:-2], [width * 3]], axis=0))
  return tf.reshape(_shift_and_scale(rows, preprocessing, tiles=width), shape)


def eval_resize_side(image_size: int, stored_side: int | None) -> int:
  """The shorter side the stored image is resized to before the centre crop.

  The stored side itself (no resampling) unless it is smaller than the crop:
  the centre crop then keeps the fraction ``image_size / stored_side`` of the
  face, which matches the average field of view of the train-time random
  resized crop (area 0.6..1 of the image, i.e. sides of 0.77..1).
  """
  if stored_side is None:
    return max(image_size, round(image_size / DEFAULT_EVAL_CROP_FRACTION))
  return max(image_size, int(stored_side))


def _shorter_side_resize(image: tf.Tensor, side: int) -> tf.Tensor:
  """float32 image whose shorter side is ``side`` (untouched if it already is)."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  image = tf.cast(image, tf.float32)
  short = tf.minimum(height, width)

  def resize():
    scale = tf.cast(side, tf.float32) / tf.cast(short, tf.float32)
    new_h = tf.maximum(side, tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32))
    new_w = tf.maximum(side, tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32))
    return tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear",
                           antialias=True)

  # Resampling at scale 1 could still blur by rounding; skip it outright.
  return tf.cond(tf.equal(short, side), lambda: image, resize)


def center_crop(image: tf.Tensor, image_size: int, resize_side: int) -> tf.Tensor:
  """Resize the shorter side to ``resize_side``, then the central S x S (float32)."""
  image = _shorter_side_resize(image, resize_side)
  shape = tf.shape(image)
  top = (shape[0] - image_size) // 2
  left = (shape[1] - image_size) // 2
  crop = image[top:top + image_size, left:left + image_size, :]
  return tf.ensure_shape(crop, [image_size, image_size, 3])


def center_window(height: tf.Tensor, width: tf.Tensor, image_size: int,
                  resize_side: int) -> tuple[tf.Tensor, ...]:
  """The region of the stored image that :func:`center_crop` keeps.

  Returns (centre x, centre y, width, height) in stored-image pixels. Used as
  the train crop when random resized crop is off: when the stored image needs
  no resize its edges are whole pixels, and train without augmentation equals
  evaluation exactly.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  # The same rounding and integer offsets as _shorter_side_resize/center_crop.
  factor = float(resize_side) / tf.minimum(h, w)
  new_h = tf.maximum(float(resize_side), tf.round(h * factor))
  new_w = tf.maximum(float(resize_side), tf.round(w * factor))
  sy, sx = h / new_h, w / new_w  # stored pixels per resized pixel
  top = tf.floor((new_h - image_size) / 2.0) * sy
  left = tf.floor((new_w - image_size) / 2.0) * sx
  crop_h, crop_w = image_size * sy, image_size * sx
  return left + crop_w / 2.0, top + crop_h / 2.0, crop_w, crop_h


def sample_crop(key: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[tf.Tensor, ...]:
  """A random window: area fraction in ``scale``, aspect w/h log-uniform in ``ratio``.

  One draw, no rejection loop: a window wider or taller than the image is
  clipped to it (its area and ratio then sit at the edge of their ranges).

  Returns:
    (centre x, centre y, width, height) in stored-image pixels.
  """
  keys = tf.random.experimental.stateless_split(key, num=4)
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  area = tf.random.stateless_uniform([], keys[0], scale[0], scale[1]) * h * w
  log_ratio = tf.random.stateless_uniform([], keys[1], math.log(ratio[0]),
                                          math.log(ratio[1]))
  aspect = tf.exp(log_ratio)
  crop_w = tf.minimum(tf.sqrt(area * aspect), w)
  crop_h = tf.minimum(tf.sqrt(area / aspect), h)
  left = tf.random.stateless_uniform([], keys[2]) * (w - crop_w)
  top = tf.random.stateless_uniform([], keys[3]) * (h - crop_h)
  return left + crop_w / 2.0, top + crop_h / 2.0, crop_w, crop_h


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
  sx = tf.where(flip, -1.0, 1.0) * crop_w / image_size
  sy = crop_h / image_size
  a0, a1 = cos * sx, -sin * sy
  b0, b1 = sin * sx, cos * sy
  half = 0.5 - image_size / 2.0  # output centre offset of output index 0
  a2 = cx - 0.5 + (a0 + a1) * half
  b2 = cy - 0.5 + (b0 + b1) * half
  zero = tf.zeros([], tf.float32)
  return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero])


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


def jitter_factors(key: tf.Tensor, strength: float) -> tf.Tensor:
  """The brightness, contrast and saturation factors of :func:`color_jitter`: [3]."""
  keys = tf.random.experimental.stateless_split(key, num=3)
  lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
  return tf.stack([tf.random.stateless_uniform([], k, lo, hi) for k in tf.unstack(keys)])


def color_jitter(image: tf.Tensor, key: tf.Tensor, strength: float) -> tf.Tensor:
  """Brightness, contrast and saturation, each a factor in [1 - s, 1 + s].

  Fixed order, clipped to [0, 255] after each step as torchvision does.
  ``image`` is float32 RGB in [0, 255].
  """
  return apply_jitter(image, jitter_factors(key, strength))


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


def _jit(stage: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
  """``stage`` as one XLA computation (compiled once per input shape)."""
  return _JITTED.setdefault(stage, tf.function(stage, jit_compile=True))


_JITTED: dict[Callable[..., tf.Tensor], Callable[..., tf.Tensor]] = {}


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
  """The per-pixel work of a batch of :class:`Draws`, as one function."""
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


def train_image(image: tf.Tensor, key: tf.Tensor,
                augment: ml_collections.ConfigDict, image_size: int,
                resize_side: int, preprocessing: str | None = None) -> tf.Tensor:
  """One training image: decoded RGB [H, W, 3] -> float32 [S, S, 3].

  In [0, 255], or normalised for the network when ``preprocessing`` is
  given. :func:`draws` then :func:`finish` on a batch of one: the pipeline's
  own path. Every ``data.augment`` switch off gives exactly the evaluation crop.
  """
  one = {k: v[None] for k, v in draws(image, key, augment, image_size, resize_side).items()}
  return finish(one, augment, image_size, preprocessing, warped=True)[0]


def crops_while_decoding(augment: ml_collections.ConfigDict) -> bool:
  """Random crop + flip without rotation: only the window need be decoded."""
  return bool(augment.random_resized_crop) and augment.rotation_degrees == 0


def train_image_from_jpeg(encoded: tf.Tensor, key: tf.Tensor,
                          augment: ml_collections.ConfigDict, image_size: int,
                          preprocessing: str | None = None) -> tf.Tensor:
  """:func:`train_image` without rotation, straight from JPEG bytes (:func:`jpeg_draws`)."""
  one = {k: v[None] for k, v in jpeg_draws(encoded, key, augment, image_size).items()}
  return finish(one, augment, image_size, preprocessing, warped=False)[0]
