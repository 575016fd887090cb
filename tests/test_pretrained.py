"""Format detection, converted directories, model overrides and the features check."""

import zipfile

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from agejax.data import augment
from agejax.config import defaults
from agejax.pretrained import features
from agejax.train import initial_weights
from agejax import models
from agejax.models import paths
from agejax import pretrained
from agejax.pretrained import torch_pickle
from agejax.errors import ConfigError
from configs import tiny

KERAS_LIKE = {"stride_in_1x1": True, "conv_bias": True, "bn_epsilon": 1.001e-5,
              "preprocessing": "caffe"}


def test_format_is_detected_from_the_first_bytes(tmp_path):
  with h5py.File(tmp_path / "w.weights", "w") as f:
    f.create_dataset("x", data=np.zeros(3))
  with zipfile.ZipFile(tmp_path / "w.bin", "w") as z:
    z.writestr("archive/data.pkl", b"")
  save_file({"conv1.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "w.dat"))
  (tmp_path / "w.txt").write_bytes(b"not weights at all")
  assert pretrained.detect_format(str(tmp_path / "w.weights")) == "keras-h5"
  assert pretrained.detect_format(str(tmp_path / "w.bin")) == "torch"
  assert pretrained.detect_format(str(tmp_path / "w.dat")) == "safetensors"
  (tmp_path / "w.legacy").write_bytes(torch_pickle.LEGACY_MAGIC + b"rest of the stream")
  assert pretrained.detect_format(str(tmp_path / "w.legacy")) == "torch"
  (tmp_path / "net.caffemodel").write_bytes(b"")
  assert pretrained.detect_format(str(tmp_path / "net.caffemodel")) == "caffe"
  with pytest.raises(pretrained.WeightImportError,
                     match=r"not a Keras HDF5, torch.save \(zip or legacy\) or safetensors"):
    pretrained.detect_format(str(tmp_path / "w.txt"))


def _random_imported(arch="resnet18", overrides=None):
  """Weights of a freshly initialised agejax network with random BN statistics."""
  model_cfg = defaults.default_config().model
  model_cfg.arch = arch
  for k, v in (overrides or {}).items():
    model_cfg[k] = v
  model = jax.jit(lambda k: models.split_state(
      models.build_model(model_cfg, 64, nnx.Rngs(k)))[1:])(jax.random.key(3))
  params, stats = (paths.flatten(jax.device_get(t)) for t in model)
  rng = np.random.default_rng(0)
  stats = {p: (rng.uniform(0.5, 2.0, v.shape) if p.endswith("var") else rng.normal(0, 0.1, v.shape)
               ).astype(np.float32) for p, v in stats.items()}
  params = {p: np.asarray(v) for p, v in params.items() if not p.startswith("head/")}
  overrides = dict(overrides or {"stride_in_1x1": False, "conv_bias": False, "bn_epsilon": 1e-5,
                                 "preprocessing": "imagenet"})
  return pretrained.Imported(arch, params, stats, overrides, "test")


def test_converted_directory_round_trips_bit_identically(tmp_path):
  imported = _random_imported()
  out = pretrained.save_converted(imported, str(tmp_path / "conv"))
  loaded = pretrained.load(out)
  assert (loaded.arch, loaded.source, loaded.model_overrides) == (
      "resnet18", "test", imported.model_overrides)
  assert loaded.params.keys() == imported.params.keys()
  for p, v in imported.params.items():
    np.testing.assert_array_equal(loaded.params[p], v)
  for p, v in imported.batch_stats.items():
    np.testing.assert_array_equal(loaded.batch_stats[p], v)


def test_overrides_follow_the_weights_and_a_wrong_arch_is_refused():
  model_cfg = defaults.default_config().model
  imported = pretrained.Imported("resnet50", {}, {}, KERAS_LIKE, "keras-h5")
  changed = pretrained.apply_overrides(model_cfg, imported)
  assert changed == {"stride_in_1x1": (False, True), "conv_bias": (False, True),
                     "bn_epsilon": (1e-5, 1.001e-5), "preprocessing": ("imagenet", "caffe")}
  assert (model_cfg.stride_in_1x1, model_cfg.preprocessing) == (True, "caffe")
  model_cfg.arch = "vgg16"
  with pytest.raises(pretrained.WeightImportError, match="weights are a resnet50, the config asks for a vgg16"):
    pretrained.apply_overrides(model_cfg, imported)


def test_features_equal_the_network_that_made_the_weights():
  imported = _random_imported()
  images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  got = features.features(imported, images, batch_size=2)
  model = features.backbone(imported, 64)
  want = model.features(augment.normalize(jnp.asarray(images, jnp.float32), "imagenet"))
  assert got.shape == (3, 512)
  want = np.asarray(want)
  # float32 rounding: the compiled batches of 2 and the eager batch of 3 sum in
  # different orders, so near-zero features differ by a few ulps of the
  # largest one (2.9e-6 at a scale of 6.5 on an AMD EPYC): the absolute bound
  # is relative to that scale.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  # The running statistics were loaded, not the fresh ones (mean 0, var 1).
  stats = paths.flatten(models.split_state(model)[2])
  np.testing.assert_array_equal(stats["stem/bn/var"], imported.batch_stats["stem/bn/var"])


def test_init_pretrained_sets_the_model_keys_and_loads_by_path(tmp_path):
  imported = _random_imported("resnet18", {**KERAS_LIKE, "stride_in_1x1": False})
  out = pretrained.save_converted(imported, str(tmp_path / "conv"))
  cfg = tiny.get_config()
  cfg.model.width = 64
  cfg.init.pretrained = out
  got = initial_weights.prepare_pretrained(cfg)
  assert (cfg.model.conv_bias, cfg.model.preprocessing, cfg.model.bn_epsilon) == (True, "caffe", 1.001e-5)
  model_cfg = cfg.model
  fresh = jax.jit(lambda k: models.split_state(
      models.build_model(model_cfg, 32, nnx.Rngs(k)))[1:])(jax.random.key(0))
  params, stats = initial_weights.load_initial_weights(cfg.init, *fresh, imported=got)
  flat = paths.flatten(params)
  np.testing.assert_array_equal(flat["stage2/block1/conv1/kernel"],
                                imported.params["stage2/block1/conv1/kernel"])
  assert flat["head/fc/kernel"].shape == (512, 101)  # the head stays the fresh one


def test_init_pretrained_errors_name_the_key(tmp_path):
  cfg = tiny.get_config()
  cfg.init.pretrained = str(tmp_path / "missing.h5")
  with pytest.raises(ConfigError, match=r"^init\.pretrained: .*missing\.h5: neither a weights file"):
    initial_weights.prepare_pretrained(cfg)
