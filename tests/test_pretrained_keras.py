"""Tests for agejax.pretrained.keras_h5 against the real Keras networks.

tf-keras builds ResNet50 and VGG16 with random weights (random biases and
BatchNorm statistics too) and writes them with ``save_weights('x.h5')``, the
layout of the files Keras Applications publishes. read() maps them onto
agejax's networks, and the features of both frameworks must agree on the same
images, each preprocessed by its own code.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from flax import nnx
import h5py
import jax
import jax.numpy as jnp
import keras_reference
import numpy as np
import pytest

from agejax.data import augment
from agejax.config import defaults
from agejax import models
from agejax.models import paths
from agejax.pretrained import keras_h5
from agejax.pretrained.types import WeightImportError

tf_keras = keras_reference.tf_keras

SIZE = 224  # Keras' VGG16 with top takes 224 px only
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3),
                                           dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory, images):
  directory = str(tmp_path_factory.mktemp("keras"))
  return {"resnet50": keras_reference.resnet50_files(directory, images),
          "vgg16": keras_reference.vgg16_files(directory, images)}


def _agejax_features(imported, images):
  """agejax's features of ``images`` with ``imported`` loaded (head zeros)."""
  cfg = defaults.default_config().model
  cfg.arch, cfg.width = imported.arch, 64
  for key, value in imported.model_overrides.items():
    setattr(cfg, key, value)
  graphdef, params, stats = models.split_state(nnx.eval_shape(
      lambda: models.build_model(cfg, SIZE, nnx.Rngs(0))))
  want = {p: x.shape for p, x in paths.flatten(params).items()
          if not p.startswith("head/")}
  # Everything read has a place of the right shape, and the backbone is
  # complete (so only files with top come here: VGG16's _notop lacks fc6/7).
  assert {p: x.shape for p, x in imported.params.items()} == want
  assert ({p: x.shape for p, x in imported.batch_stats.items()}
          == {p: x.shape for p, x in paths.flatten(stats).items()})
  head = {p: np.zeros(x.shape, x.dtype)
          for p, x in paths.flatten(params).items() if p.startswith("head/")}

  @jax.jit
  def features(params, stats, x):
    return models.merge_state(graphdef, params, stats).features(x, train=False)

  x = augment.normalize(images, imported.model_overrides["preprocessing"])
  return np.asarray(features(paths.unflatten({**imported.params, **head}),
                             paths.unflatten(imported.batch_stats),
                             jnp.asarray(x)))


def _assert_close(got, ref):
  rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
  assert rel < REL_TOL, rel
  np.testing.assert_allclose(got, ref, rtol=1e-3,
                             atol=1e-4 * np.abs(ref).max())
  return rel


def test_caffe_preprocessing_is_keras(images):
  np.testing.assert_array_equal(augment.normalize(images, "caffe"),
                                keras_reference.caffe_input(images))


def test_resnet50_features_match_keras(files, images):
  ref = files["resnet50"]
  imported = keras_h5.read(ref["top"])
  assert (imported.arch, imported.source) == ("resnet50", "keras-h5")
  assert imported.model_overrides == {
      "stride_in_1x1": True, "conv_bias": True, "bn_epsilon": 1.001e-5,
      "preprocessing": "caffe"}
  assert len(imported.params) == 53 * 2 + 53 * 2  # conv k, b; bn scale, bias
  assert len(imported.batch_stats) == 53 * 2
  # Not a degenerate reference: features spread, few dead units.
  assert ref["features"].std() > 0.1 and (ref["features"] > 0).mean() > 0.5
  rel = _assert_close(_agejax_features(imported, images), ref["features"])
  print(f"resnet50 relative error {rel:.2e}")

  notop = keras_h5.read(ref["notop"])
  assert notop.model_overrides == imported.model_overrides
  assert notop.params.keys() == imported.params.keys()
  for p, x in imported.params.items():
    np.testing.assert_array_equal(notop.params[p], x)
  with h5py.File(ref["top"], "r") as f:
    np.testing.assert_array_equal(
        imported.batch_stats["stage2/block1/downsample/bn/var"],
        f["conv3_block1_0_bn/conv3_block1_0_bn/moving_variance:0"][()])


def test_vgg16_features_match_keras(files, images):
  ref = files["vgg16"]
  imported = keras_h5.read(ref["top"])
  assert (imported.arch, imported.model_overrides) == (
      "vgg16", {"preprocessing": "caffe"})
  assert imported.batch_stats == {}
  assert ref["features"].std() > 0.01 and (ref["features"] > 0).mean() > 0.2
  rel = _assert_close(_agejax_features(imported, images), ref["features"])
  print(f"vgg16 relative error {rel:.2e}")

  notop = keras_h5.read(ref["notop"])
  assert set(notop.params) == {p for p in imported.params
                               if not p.startswith(("fc6/", "fc7/"))}
  assert len(notop.params) == 26
  for p, x in notop.params.items():
    np.testing.assert_array_equal(x, imported.params[p])


def test_legacy_resnet50_names_and_epsilon(tmp_path, images):
  # keras-applications' resnet50.py: res2a_branch2a names, epsilon 1e-3.
  ref = keras_reference.legacy_resnet50_file(str(tmp_path), images)
  assert ref["epsilons"] == {1e-3}
  imported = keras_h5.read(ref["notop"])
  assert imported.arch == "resnet50"
  assert imported.model_overrides == {**keras_h5.RESNET_OVERRIDES,
                                      "bn_epsilon": 1e-3}
  rel = _assert_close(_agejax_features(imported, images), ref["features"])
  print(f"legacy resnet50 relative error {rel:.2e}")
  # The epsilon matters: today's Keras value misses by far more than REL_TOL.
  today = dataclasses.replace(imported,
                              model_overrides=keras_h5.RESNET_OVERRIDES)
  got = _agejax_features(today, images)
  wrong = np.linalg.norm(got - ref["features"]) / np.linalg.norm(
      ref["features"])
  assert wrong > 10 * REL_TOL, wrong


def test_keras3_legacy_h5_layout(tmp_path):
  # Keras 3 cannot save_weights() to a plain .h5, but model.save('x.h5')
  # writes the legacy layout under 'model_weights', names without ':0'.
  import keras  # pylint: disable=g-import-not-at-top
  model = keras.applications.VGG16(weights=None, include_top=False,
                                   input_shape=(32, 32, 3))
  path = str(tmp_path / "vgg16_keras3.h5")
  model.save(path)
  imported = keras_h5.read(path)
  assert imported.arch == "vgg16" and len(imported.params) == 26
  kernel, bias = model.get_layer("block4_conv2").get_weights()
  np.testing.assert_array_equal(imported.params["stage4/conv2/kernel"], kernel)
  np.testing.assert_array_equal(imported.params["stage4/conv2/bias"], bias)

  model.save_weights(str(tmp_path / "x.weights.h5"))  # Keras 3's own layout
  with pytest.raises(WeightImportError, match=r"Keras 3 '\.weights\.h5'"):
    keras_h5.read(str(tmp_path / "x.weights.h5"))


def _edited_copy(source, tmp_path, edit):
  """A copy of a Keras file changed by ``edit(h5py.File)``."""
  path = str(tmp_path / "edited.h5")
  shutil.copyfile(source, path)
  with h5py.File(path, "r+") as f:
    edit(f)
  return path


def _layer_names(f):
  return [n.decode() if isinstance(n, bytes) else n
          for n in f.attrs["layer_names"]]


def _set_layer_names(f, names):
  # As Keras writes them: an array of UTF-8 bytes.
  f.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])


def _drop_layer(f, name):
  del f[name]
  _set_layer_names(f, [n for n in _layer_names(f) if n != name])


def test_chunked_layer_names(files, tmp_path):
  # Keras splits attributes over 64 KB into layer_names0, layer_names1, ...
  def edit(f):
    names = _layer_names(f)
    del f.attrs["layer_names"]
    f.attrs["layer_names0"] = np.array([n.encode() for n in names[:100]])
    f.attrs["layer_names1"] = np.array([n.encode() for n in names[100:]])
  path = _edited_copy(files["resnet50"]["notop"], tmp_path, edit)
  imported = keras_h5.read(path)
  assert (len(imported.params), len(imported.batch_stats)) == (212, 106)


def test_classifier_is_dropped_whatever_its_classes(files, tmp_path):
  def edit(f):  # a 10-class fine-tuned head
    g = f["predictions/predictions"]
    del g["kernel:0"], g["bias:0"]
    g["kernel:0"] = np.ones((2048, 10), np.float32)
    g["bias:0"] = np.ones((10,), np.float32)
  imported = keras_h5.read(_edited_copy(files["resnet50"]["top"], tmp_path,
                                        edit))
  assert imported.arch == "resnet50" and len(imported.params) == 212
  assert not any("predictions" in p or "fc" in p for p in imported.params)


def test_missing_layers_are_named(files, tmp_path):
  def edit(f):
    _drop_layer(f, "conv3_block2_2_bn")
    _drop_layer(f, "conv2_block1_0_conv")
  path = _edited_copy(files["resnet50"]["notop"], tmp_path, edit)
  with pytest.raises(WeightImportError) as e:
    keras_h5.read(path)
  message = str(e.value)
  assert "looks like Keras ResNet50" in message
  assert ("missing layers (2): conv2_block1_0_conv (-> stage1/block1/"
          "downsample/conv), conv3_block2_2_bn (-> stage2/block2/bn2)"
          in message)
  assert "unknown" not in message and "mis-shaped" not in message


def test_wrong_shapes_and_unknown_layers_are_named(files, tmp_path):
  def edit(f):
    del f["conv1_conv/conv1_conv/kernel:0"]
    f["conv1_conv/conv1_conv"].create_dataset(
        "kernel:0", data=np.zeros((7, 7, 3, 32), np.float32))
    g = f["conv4_block1_1_bn"]
    g.attrs["weight_names"] = g.attrs["weight_names"][:3]  # no variance
    f.copy("conv5_block3_3_conv", "conv5_block4_1_conv")
    _set_layer_names(f, [*_layer_names(f), "conv5_block4_1_conv"])
  path = _edited_copy(files["resnet50"]["notop"], tmp_path, edit)
  with pytest.raises(WeightImportError) as e:
    keras_h5.read(path)
  message = str(e.value)
  assert "looks like Keras ResNet50" in message
  assert "unknown layers (1): conv5_block4_1_conv" in message
  assert "conv1_conv/kernel: shape (7, 7, 3, 32), expected (7, 7, 3, 64)" in (
      message)
  assert ("conv4_block1_1_bn: 3 weights (gamma, beta, moving_mean), "
          "expected 4") in message
  assert "missing" not in message


def test_vgg19_is_recognised_as_unsupported(tmp_path):
  model = tf_keras.applications.VGG19(weights=None, include_top=False,
                                      input_shape=(32, 32, 3))
  path = str(tmp_path / "vgg19_notop.h5")
  model.save_weights(path)
  with pytest.raises(WeightImportError) as e:
    keras_h5.read(path)
  message = str(e.value)
  assert "looks like Keras VGG16; its layer names match Keras' VGG19" in message
  assert ("unknown layers (3): block3_conv4, block4_conv4, block5_conv4"
          in message)


def test_unknown_files(tmp_path):
  small = tf_keras.Sequential([tf_keras.Input((4,)),
                               tf_keras.layers.Dense(2, name="age")])
  small.save_weights(str(tmp_path / "small.h5"))
  with pytest.raises(WeightImportError,
                     match=r"looks like none of .*Keras ResNet50.*Keras VGG16"
                     r"\)\n  layers with weights \(1\): age$"):
    keras_h5.read(str(tmp_path / "small.h5"))

  # An age model around a Keras backbone: the backbone is one nested group.
  base = tf_keras.applications.VGG16(weights=None, include_top=False,
                                     input_shape=(32, 32, 3))
  nested = tf_keras.Sequential([base, tf_keras.layers.Flatten(),
                                tf_keras.layers.Dense(1, name="age")])
  nested.save_weights(str(tmp_path / "nested.h5"))
  with pytest.raises(WeightImportError,
                     match=r"\(2\): vgg16 \(a nested model of 13 layers: "
                     r"block1_conv1, block1_conv2, block2_conv1, \.\.\.; save "
                     r"it on its own: model\.get_layer\('vgg16'\)"):
    keras_h5.read(str(tmp_path / "nested.h5"))

  (tmp_path / "notes.h5").write_text("not hdf5")
  with pytest.raises(WeightImportError, match="not a readable HDF5 file"):
    keras_h5.read(str(tmp_path / "notes.h5"))
  with h5py.File(tmp_path / "plain.h5", "w") as f:
    f["x"] = np.zeros(3)
  with pytest.raises(WeightImportError, match="without Keras' 'layer_names'"):
    keras_h5.read(str(tmp_path / "plain.h5"))
  assert not os.path.exists(tmp_path / "missing.h5")
  with pytest.raises(WeightImportError, match="missing.h5: no such file"):
    keras_h5.read(str(tmp_path / "missing.h5"))
