"""Keras Applications networks with random weights, saved as the published
HDF5 weights files are, and their outputs: the reference for
tests/test_pretrained_keras.py.

Every bias and BatchNorm statistic is random (Keras initialises them to 0, 1),
so a bias, scale, mean or variance that lands in the wrong place, or a wrong
BatchNorm epsilon, changes the features.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tf_keras  # pylint: disable=g-import-not-at-top


def randomize(model: tf_keras.Model, seed: int) -> None:
  """Random biases and BatchNorm parameters/statistics; kernels as Keras drew.

  The statistics stay of the order of the activations (mean around 0, variance
  0.5..2) so that features neither vanish nor blow up through 50 layers.
  """
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    weights = layer.get_weights()
    if not weights:
      continue
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      c = weights[0].shape
      weights = [rng.uniform(0.5, 1.5, c), rng.normal(0.0, 0.2, c),
                 rng.normal(0.0, 0.2, c), rng.uniform(0.5, 2.0, c)]
    else:  # Conv2D / Dense: kernel, bias
      weights[1] = rng.normal(0.0, 0.1, weights[1].shape)
    layer.set_weights([np.asarray(w, np.float32) for w in weights])


def copy_weights(source: tf_keras.Model, target: tf_keras.Model) -> None:
  """Copies every layer's weights to the layer of the same name in target."""
  for layer in target.layers:
    if layer.weights:
      layer.set_weights(source.get_layer(layer.name).get_weights())


def caffe_input(images: np.ndarray) -> np.ndarray:
  """Keras' own ResNet50 / VGG16 preprocessing of uint8 RGB images."""
  return tf_keras.applications.resnet50.preprocess_input(
      images.astype(np.float32))


def resnet50_files(directory: str, images: np.ndarray,
                   seed: int = 0) -> dict[str, object]:
  """Saves a random tf-keras ResNet50 with and without top.

  Returns:
    ``top`` and ``notop`` file paths and ``features``: the notop model's
    ``pooling='avg'`` output on ``caffe_input(images)``.
  """
  tf_keras.utils.set_random_seed(seed)  # Keras draws the kernels
  top = tf_keras.applications.ResNet50(weights=None, include_top=True)
  randomize(top, seed)
  notop = tf_keras.applications.ResNet50(weights=None, include_top=False,
                                         pooling="avg",
                                         input_shape=images.shape[1:])
  copy_weights(top, notop)
  paths = {"top": os.path.join(directory, "resnet50_top.h5"),
           "notop": os.path.join(directory, "resnet50_notop.h5")}
  top.save_weights(paths["top"])
  notop.save_weights(paths["notop"])
  features = notop.predict(caffe_input(images), verbose=0)
  return {**paths, "features": features}


def vgg16_files(directory: str, images: np.ndarray,
                seed: int = 1) -> dict[str, object]:
  """Saves a random tf-keras VGG16 with (224 px) and without top.

  Returns:
    ``top`` and ``notop`` file paths and ``features``: fc2's output (after
    its ReLU) on ``caffe_input(images)``.
  """
  tf_keras.utils.set_random_seed(seed)  # Keras draws the kernels
  top = tf_keras.applications.VGG16(weights=None, include_top=True)
  randomize(top, seed)
  notop = tf_keras.applications.VGG16(weights=None, include_top=False)
  copy_weights(top, notop)
  paths = {"top": os.path.join(directory, "vgg16_top.h5"),
           "notop": os.path.join(directory, "vgg16_notop.h5")}
  top.save_weights(paths["top"])
  notop.save_weights(paths["notop"])
  fc2 = tf_keras.Model(top.input, top.get_layer("fc2").output)
  features = fc2.predict(caffe_input(images), verbose=0)
  return {**paths, "features": features}


def legacy_resnet50_file(directory: str, images: np.ndarray,
                         seed: int = 2) -> dict[str, object]:
  """A random ResNet50 of keras-applications' resnet50.py (res2a_branch2a).

  That is the network the deep-learning-models release files were published
  for: Caffe-style layer names, ``fc1000``, and BatchNormalization's default
  epsilon 1e-3.
  """
  from keras_applications import resnet50  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(seed)  # Keras draws the kernels
  model = resnet50.ResNet50(weights=None, include_top=False, pooling="avg",
                            input_shape=images.shape[1:],
                            backend=tf_keras.backend, layers=tf_keras.layers,
                            models=tf_keras.models, utils=tf_keras.utils)
  randomize(model, seed)
  path = os.path.join(directory, "resnet50_legacy_notop.h5")
  model.save_weights(path)
  features = model.predict(caffe_input(images), verbose=0)
  epsilons = {l.epsilon for l in model.layers
              if isinstance(l, tf_keras.layers.BatchNormalization)}
  return {"notop": path, "features": features, "epsilons": epsilons}
