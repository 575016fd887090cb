"""The evaluation-time input: a face crop as stored -> the network's input.

:func:`network_input` is the definition, in JAX: a crop of any size is
resized to the dataset's stored square (``to_stored``), the stored image's
shorter side is resized to :func:`eval_resize_side` only when it is below the
network's input, the central ``image_size`` square is kept, and
``augment.normalize`` applies the model's preprocessing. The serving function
(``agejax.serving.graph``), hence ``Predictor``, ``agejax.predict``, every
export format and their verification, call it.

tf.data cannot call JAX, so evaluation of a built split (``agejax.evaluate``
and in-training validation) runs :func:`network_input_tf`, the same steps in
TensorFlow on the decoded stored image. ``tests/test_eval_input.py`` holds the
two together: bit for bit where nothing is resampled, to float rounding of
one bilinear resize where the stored side is below the input.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import tensorflow as tf

from agejax.data import augment

# Stored images of unknown size are resized so that the centre crop keeps this
# fraction of the shorter side (the usual 224-of-256 evaluation crop).
DEFAULT_EVAL_CROP_FRACTION = 0.875


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


# --- The definition (JAX) -------------------------------------------------------------------

def to_stored(images: jax.Array, stored: int) -> jax.Array:
  """float32 [N, stored, stored, 3] with uint8 values, from uint8 crops [N, H, W, 3].

  The whole crop to a square (``face_crop.crop``'s rule for a crop without a
  box) with an antialiased bilinear (triangle) filter, rounded to uint8
  values as the dataset stored them. The scale comes from the input shape,
  so one traced graph serves every size (symbolic ``H`` and ``W``); at the
  stored size this is an exact identity, and a graph traced for that size
  leaves it out.
  """
  x = images.astype(jnp.float32)
  n, height, width, channels = images.shape
  if isinstance(height, int) and isinstance(width, int) and (height, width) == (stored, stored):
    return x
  scale = jnp.stack([stored / jnp.asarray(height, jnp.float32),
                     stored / jnp.asarray(width, jnp.float32)])
  x = jax.image.scale_and_translate(x, (n, stored, stored, channels), (1, 2), scale,
                                    jnp.zeros([2], jnp.float32), "linear", antialias=True)
  return jnp.clip(jnp.round(x), 0, 255)


def center_crop(x: jax.Array, image_size: int, stored: int) -> jax.Array:
  """The central ``image_size`` square of stored images [N, stored, stored, 3] (float32).

  tf.image.resize(bilinear, antialias=True) is a triangle-kernel
  scale-and-translate with half-pixel centres; jax.image.resize is the same
  algorithm. A square image stays square, so both sides go to ``side``.
  """
  side = eval_resize_side(image_size, stored)
  if side != stored:
    x = jax.image.resize(x, (x.shape[0], side, side, x.shape[3]), "linear", antialias=True)
  offset = (side - image_size) // 2
  # lax slices, not indexing: with a symbolic batch (jax2tf export) indexing
  # lowers to a gather the TFLite converter rejects.
  for axis in (1, 2):
    x = jax.lax.slice_in_dim(x, offset, offset + image_size, axis=axis)
  return x


def network_input(images: jax.Array, image_size: int, stored: int,
                  preprocessing: str) -> jax.Array:
  """float32 [N, image_size, image_size, 3]: what the network sees of uint8 crops [N, H, W, 3]."""
  return augment.normalize(center_crop(to_stored(images, stored), image_size, stored),
                           preprocessing)


# --- Its TensorFlow twin, for tf.data ---------------------------------------------------------

def _shorter_side_resize_tf(image: tf.Tensor, side: int) -> tf.Tensor:
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


def center_crop_tf(image: tf.Tensor, image_size: int, resize_side: int) -> tf.Tensor:
  """One decoded image [H, W, 3]: the shorter side to ``resize_side``, the central square."""
  image = _shorter_side_resize_tf(image, resize_side)
  shape = tf.shape(image)
  top = (shape[0] - image_size) // 2
  left = (shape[1] - image_size) // 2
  crop = image[top:top + image_size, left:left + image_size, :]
  return tf.ensure_shape(crop, [image_size, image_size, 3])


@functools.lru_cache(maxsize=None)
def _compiled_normalize(preprocessing: str) -> Callable[[tf.Tensor], tf.Tensor]:
  # XLA-compiled like the training images' pixel stage (and like JAX's), so
  # a training image without augmentation equals its evaluation image.
  return tf.function(lambda image: augment.normalize(image, preprocessing), jit_compile=True)


def network_input_tf(image: tf.Tensor, image_size: int, resize_side: int,
                     preprocessing: str) -> tf.Tensor:
  """:func:`network_input` of one decoded stored image [H, W, 3], in TensorFlow."""
  return _compiled_normalize(preprocessing)(center_crop_tf(image, image_size, resize_side))
