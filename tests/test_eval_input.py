"""The evaluation-time input: the JAX definition and its TensorFlow twin, number by number."""

import numpy as np
import pytest
import tensorflow as tf

from agejax.data import eval_input


def _image(seed: int, side: int = 32) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize("preprocessing", ["imagenet", "caffe"])
@pytest.mark.parametrize("image_size", [24, 32, 48, 100])
def test_the_tf_twin_gives_the_network_input_of_the_definition(image_size, preprocessing):
  """Crop only (24, 32 of 32): bit for bit. Resize up, then crop (48, 100): one
  bilinear resampling in two libraries, float rounding apart."""
  images = np.stack([_image(image_size + k) for k in range(3)])
  ours = np.asarray(eval_input.network_input(images, image_size, 32, preprocessing))
  side = eval_input.eval_resize_side(image_size, 32)
  twin = np.stack([eval_input.network_input_tf(tf.constant(im), image_size, side,
                                               preprocessing).numpy() for im in images])
  assert ours.shape == twin.shape == (3, image_size, image_size, 3)
  if side == 32:
    np.testing.assert_array_equal(ours, twin)
  else:
    # Measured over 10 random images (AMD EPYC): caffe (pixel units) 3.1e-5 at
    # 48 and 1.4e-4 at 100; imagenet (divided by ~57) 7.2e-7 and 2.4e-6.
    bound = 3e-4 if preprocessing == "caffe" else 5e-6
    assert np.abs(ours - twin).max() < bound


def test_to_stored_is_the_identity_at_the_stored_size_and_a_triangle_resize_otherwise():
  image = _image(0, 32)
  np.testing.assert_array_equal(eval_input.to_stored(image[None], 32)[0], image)
  big = _image(1, 75)
  ours = np.asarray(eval_input.to_stored(big[None], 32))[0]
  # TF's antialiased bilinear resize is the same filter, written independently.
  reference = tf.image.resize(big[None].astype(np.float32), [32, 32], "bilinear",
                              antialias=True).numpy()[0]
  assert ours.dtype == np.float32 and np.array_equal(ours, np.round(ours))
  assert np.abs(ours - np.clip(np.round(reference), 0, 255)).max() <= 1


def test_eval_resize_side():
  assert eval_input.eval_resize_side(40, 48) == 48  # centre 40 of 48, no resize
  assert eval_input.eval_resize_side(40, 32) == 40  # smaller than the crop: upscale
  assert eval_input.eval_resize_side(224, 256) == 256
  assert eval_input.eval_resize_side(224, None) == 256  # 224 / 0.875
