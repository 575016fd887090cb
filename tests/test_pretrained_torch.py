"""Tests for agejax.pretrained.torch_pickle / torch_layout.

* The restricted unpickler refuses code-running pickles and runs nothing.
* ``torch.save`` files round-trip: written without torch in torch's exact
  layout (tests/torch_reference.py; byte for byte torch's pickle, checked
  when torch is installed) and, when torch is installed, by torch itself.
* Layouts: paths and shapes equal agejax's models; errors list everything.
* Numbers: agejax with the imported weights against keras-hub's ResNet
  loading the same timm-format safetensors, against torch networks of
  torchvision's structure, and VGG's fc6 against a numpy classifier.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import pickle
import struct
import subprocess
import zipfile

from flax import nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from agejax.data import augment
from agejax.config import defaults
from agejax import models
from agejax.models import paths
from agejax.pretrained import torch_layout
from agejax.pretrained import torch_pickle
from agejax.pretrained.types import WeightImportError
import torch_reference as ref

# ---------------------------------------------------------------------------
# Shared set-up.


def _random_state_dict(arch: str, width: int, seed: int = 0,
                       dtype=np.float32) -> dict[str, np.ndarray]:
  """A torchvision-named state dict with He-scaled kernels, random BN stats,
  a classifier and ``num_batches_tracked``, as ``state_dict()`` has them."""
  rng = np.random.default_rng(seed)
  spec = (torch_layout.vgg16_spec(width) if arch == "vgg16"
          else torch_layout.resnet_spec(arch, width))
  sd = {}
  for name, (_, kind, shape) in spec.entries.items():
    if kind in ("conv", "linear", "fc6"):
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif name.endswith("running_var"):
      value = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(".weight"):  # BN scale
      value = 1.0 + 0.2 * rng.normal(size=shape)
    else:
      value = 0.1 * rng.normal(size=shape)
    sd[name] = value.astype(dtype)
    if name.endswith("running_var"):
      sd[name[:-len("running_var")] + "num_batches_tracked"] = np.array(
          100, np.int64)
  if arch == "vgg16":
    sd["classifier.6.weight"] = rng.normal(size=(10, width * 64)).astype(dtype)
    sd["classifier.6.bias"] = np.zeros(10, dtype)
  else:
    features = width * 8 * (4 if models.resnet.SPECS[arch][1] else 1)
    sd["fc.weight"] = rng.normal(size=(10, features)).astype(dtype)
    sd["fc.bias"] = np.zeros(10, dtype)
  return sd


@functools.lru_cache(maxsize=None)
def _abstract(arch: str, image_size: int, overrides: tuple):
  cfg = defaults.default_config().model
  cfg.arch = arch
  for key, value in overrides:
    setattr(cfg, key, value)
  return models.split_state(nnx.eval_shape(
      lambda: models.build_model(cfg, image_size, nnx.Rngs(0))))


@functools.partial(jax.jit, static_argnames=("graphdef", "conv_only"),
                   compiler_options={"xla_backend_optimization_level": 0})
def _features(graphdef, params, stats, images, conv_only=False):
  model = models.merge_state(graphdef, params, stats)
  return model.conv_features(images) if conv_only else model.features(images)


def _agejax(imported, images: np.ndarray, conv_only: bool = False,
            **overrides) -> np.ndarray:
  """agejax's features of normalised NHWC ``images`` with imported weights
  (the head, not imported, gets zeros)."""
  merged = {**imported.model_overrides, **overrides}
  graphdef, params, stats = _abstract(imported.arch, images.shape[1],
                                      tuple(sorted(merged.items())))
  flat = {p: imported.params.get(p, np.zeros(x.shape, np.float32))
          for p, x in paths.flatten(params).items()}
  assert set(imported.params) <= set(flat)
  assert set(imported.batch_stats) == set(paths.flatten(stats))
  return np.asarray(_features(graphdef, paths.unflatten(flat),
                              paths.unflatten(imported.batch_stats),
                              jnp.asarray(images), conv_only=conv_only))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _images(n: int, size: int, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).uniform(
      0, 255, (n, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------------------
# (a) The restricted unpickler.


def _payloads(marker: str) -> dict[str, bytes]:
  """Pickles that create ``marker`` when unpickled by ``pickle.loads``."""
  cmd = f"touch {marker}"

  class Reduce:
    def __init__(self, func, *args):
      self.func, self.args = func, args

    def __reduce__(self):
      return self.func, self.args

  def dumps(obj):  # inside a state dict, as a tensor's place
    return pickle.dumps(collections.OrderedDict([("conv1.weight", obj)]),
                        protocol=2)

  py = f"open({marker!r}, 'w').close()"
  return {
      # By hand: GLOBAL 'os system', the command, TUPLE1, REDUCE.
      "os.system": (b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(cmd))
                    + cmd.encode() + b"\x85R."),
      # Protocol 0's INST opcode calls the class itself.
      "os.system (INST)": f"(S'{cmd}'\nios\nsystem\n.".encode(),
      "posix.system": dumps(Reduce(os.system, cmd)),
      "builtins.exec": dumps(Reduce(exec, py)),
      "builtins.eval": dumps(Reduce(eval, py)),
      "subprocess.Popen": dumps(Reduce(subprocess.Popen, ["touch", marker])),
  }


@pytest.mark.parametrize("name", list(_payloads("x")))
def test_refuses_code_running_pickles_and_runs_nothing(tmp_path, name):
  # Control: plain pickle does run this payload (in its own marker).
  control = tmp_path / "control"
  obj = pickle.loads(_payloads(str(control))[name])
  for value in obj.values() if isinstance(obj, dict) else ():
    if isinstance(value, subprocess.Popen):
      value.wait()
  assert control.exists()

  marker = tmp_path / "pwned"
  path = str(tmp_path / "evil.pth")
  ref.write_torch_zip(path, _payloads(str(marker))[name], [])
  with pytest.raises(WeightImportError) as e:
    torch_pickle.load_state_dict(path)
  refused = name.split(" ")[0]
  assert f"refusing to unpickle global {refused}" in str(e.value)
  with pytest.raises(WeightImportError):
    torch_layout.read(path)
  assert not marker.exists()


def test_refuses_payload_after_valid_tensors(tmp_path):
  marker = tmp_path / "pwned"
  cmd = f"touch {marker}".encode()
  evil = (b"cposix\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R")
  path = str(tmp_path / "evil.pth")
  ref.save_like_torch(path, collections.OrderedDict(
      [("a", np.ones((2, 3), np.float32)), ("b", evil)]))
  with pytest.raises(WeightImportError, match=r"posix\.system"):
    torch_pickle.load_state_dict(path)
  assert not marker.exists()


def test_refuses_pickled_model_objects_and_legacy_files(tmp_path):
  path = str(tmp_path / "model.pth")
  ref.write_torch_zip(path, b"\x80\x02ctorchvision.models.resnet\nResNet\n"
                      b")\x81.", [])
  with pytest.raises(WeightImportError,
                     match=r"torchvision\.models\.resnet\.ResNet.*whole model"):
    torch_pickle.load_state_dict(path)

  legacy = tmp_path / "legacy.pth"  # pre-1.6: pickled magic number first, then nothing
  legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")
  with pytest.raises(WeightImportError, match=r"legacy\.pth: cannot read the legacy torch file"):
    torch_layout.read(str(legacy))


def test_refuses_views_outside_their_storage(tmp_path):
  path = str(tmp_path / "bad.pth")
  storage = np.arange(6, dtype=np.float32)
  ref.save_like_torch(path, collections.OrderedDict(
      [("a", ref.View(storage, 2, (2, 3), (3, 1)))]))  # reaches element 7
  with pytest.raises(WeightImportError, match="reach element 7 of a storage "
                     "of 6"):
    torch_pickle.load_state_dict(path)


# ---------------------------------------------------------------------------
# (b) Round trips of the torch.save layout.


def _strided_views(seed: int = 0) -> tuple[dict, dict]:
  """(state dict of views for the writer, the arrays they hold)."""
  rng = np.random.default_rng(seed)
  base = ref.contiguous(rng.normal(size=(6, 5)).astype(np.float32))
  views = collections.OrderedDict([
      ("w", base),
      ("w_t", ref.View(base.storage, 0, (5, 6), (1, 5))),  # transpose
      ("w_slice", ref.View(base.storage, 7, (3, 2), (10, 2))),  # [1::2, 2::2]
      ("w_bcast", ref.View(base.storage, 3, (4, 6), (0, 5))),  # expand
      ("half", rng.normal(size=(3, 4)).astype(np.float16)),
      ("bf16", ref.View(rng.normal(size=8).astype(ml_dtypes.bfloat16),
                        1, (2, 3), (1, 2))),
      ("f64", rng.normal(size=(2,)).astype(np.float64)),
      ("bn.num_batches_tracked", np.array(12345678901, np.int64)),
      ("param", ref.View(rng.normal(size=4).astype(np.float32), 0, (4,), (1,),
                         parameter=True)),
      ("empty", np.zeros((0, 3), np.float32)),
  ])
  arrays = {k: (v.numpy() if isinstance(v, ref.View) else v)
            for k, v in views.items()}
  return views, arrays


def _assert_same(loaded: dict, arrays: dict) -> None:
  assert list(loaded) == list(arrays)
  for k, want in arrays.items():
    assert loaded[k].dtype == want.dtype, k
    assert loaded[k].shape == want.shape, k
    assert loaded[k].tobytes() == want.tobytes(), k  # bit for bit


@pytest.mark.parametrize("archive_name", [None, "archive"])
def test_hand_written_torch_zip_round_trip(tmp_path, archive_name):
  views, arrays = _strided_views()
  path = str(tmp_path / "weights.pth")
  ref.save_like_torch(path, views, archive_name=archive_name)
  loaded = torch_pickle.load_state_dict(path)
  _assert_same(loaded, arrays)
  # Strided views come back as compact copies, not views of one another.
  assert loaded["w_t"].flags.c_contiguous and loaded["w_t"].base is None
  np.testing.assert_array_equal(loaded["w_t"], arrays["w"].T)
  np.testing.assert_array_equal(loaded["w_slice"], arrays["w"][1::2, 2::2])


def test_training_checkpoints_and_data_parallel_names(tmp_path):
  sd = collections.OrderedDict(
      [("module.conv1.weight", np.full((2, 3), 1.5, np.float32)),
       ("module.bn1.bias", np.arange(3, dtype=np.float32))])
  for key in ("state_dict", "model"):
    path = str(tmp_path / f"{key}.pth")
    ref.save_like_torch(path, {"epoch": 7, "arch": "resnet18", key: sd,
                               "optimizer": {"lr": 1}})
    loaded = torch_pickle.load_state_dict(path)
    assert sorted(loaded) == ["bn1.bias", "conv1.weight"]
    np.testing.assert_array_equal(loaded["bn1.bias"], [0.0, 1.0, 2.0])


def test_torch_save_round_trip(tmp_path):
  torch = pytest.importorskip("torch")
  views, arrays = _strided_views()
  sd, bases = collections.OrderedDict(), {}
  for k, v in views.items():
    if not isinstance(v, ref.View):
      sd[k] = torch.from_numpy(v.copy())
      continue
    if id(v.storage) not in bases:  # views of one storage share it in torch
      if v.storage.dtype == ml_dtypes.bfloat16:
        bases[id(v.storage)] = torch.from_numpy(
            v.storage.view(np.int16).copy()).view(torch.bfloat16)
      else:
        bases[id(v.storage)] = torch.from_numpy(v.storage.copy())
    t = bases[id(v.storage)].as_strided(v.shape, v.stride, v.offset)
    sd[k] = torch.nn.Parameter(t) if v.parameter else t
  assert not sd["w_t"].is_contiguous()
  path = str(tmp_path / "weights.pth")
  torch.save(sd, path)
  _assert_same(torch_pickle.load_state_dict(path), arrays)

  # The torch-free writer produces torch's pickle, byte for byte.
  mine = str(tmp_path / "mine.pth")
  ref.save_like_torch(mine, views, archive_name="weights")
  with zipfile.ZipFile(path) as theirs, zipfile.ZipFile(mine) as ours:
    assert theirs.namelist() == ours.namelist()
    for name in theirs.namelist():
      if not name.endswith("serialization_id"):
        assert theirs.read(name) == ours.read(name), name


# ---------------------------------------------------------------------------
# Layouts and errors.


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("resnet50", 64),
                                       ("vgg16", 96)])
def test_paths_and_shapes_equal_agejax_models(arch, size):
  imported = torch_layout.from_state_dict(
      _random_state_dict(arch, 8), image_size=size)
  _, params, stats = _abstract(arch, size, (("width", 8),))
  want = {p: x.shape for p, x in paths.flatten(params).items()
          if not p.startswith("head/")}
  assert {p: v.shape for p, v in imported.params.items()} == want
  assert {p: v.shape for p, v in imported.batch_stats.items()} == {
      p: x.shape for p, x in paths.flatten(stats).items()}
  assert all(v.dtype == np.float32 for v in imported.params.values())


@pytest.mark.parametrize("arch", [*models.resnet.SPECS, "vgg16"])
def test_detects_architecture_and_converts(tmp_path, arch):
  sd = _random_state_dict(arch, 8)
  path = str(tmp_path / "w.pth")
  ref.save_like_torch(path, collections.OrderedDict(sd))
  imported = torch_layout.read(path)
  assert (imported.arch, imported.source) == (arch, "torchvision")
  if arch == "vgg16":
    assert imported.model_overrides == {"preprocessing": "imagenet",
                                        "width": 8}
    np.testing.assert_array_equal(imported.params["fc7/kernel"],
                                  sd["classifier.3.weight"].T)
    np.testing.assert_array_equal(imported.params["stage3/conv3/bias"],
                                  sd["features.14.bias"])
    return
  assert imported.model_overrides == {
      "stride_in_1x1": False, "conv_bias": False, "bn_epsilon": 1e-5,
      "preprocessing": "imagenet", "width": 8}
  w = sd["layer2.0.downsample.0.weight"]  # OIHW -> HWIO
  np.testing.assert_array_equal(
      imported.params["stage2/block1/downsample/conv/kernel"][0, 0],
      w[:, :, 0, 0].T)
  k = imported.params["stem/conv/kernel"]
  assert k[4, 1, 2, 5] == sd["conv1.weight"][5, 2, 4, 1]
  last = len([n for n in sd if n.startswith("layer4.")
              and n.endswith(".bn1.running_var")])
  np.testing.assert_array_equal(
      imported.batch_stats[f"stage4/block{last}/bn2/var"],
      sd[f"layer4.{last - 1}.bn2.running_var"])
  assert not any("fc" in p for p in imported.params)


def test_safetensors_half_precision_and_source(tmp_path):
  sd = _random_state_dict("resnet18", 8)
  half = {k: (v.astype(ml_dtypes.bfloat16) if k.startswith("layer") else
              v.astype(np.float16)) if v.dtype == np.float32 else v
          for k, v in sd.items()}
  path = str(tmp_path / "model.safetensors")
  safetensors.numpy.save_file(half, path)
  imported = torch_layout.read(path)
  assert imported.source == "timm"
  kernel = imported.params["stage1/block2/conv1/kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(
      kernel, half["layer1.1.conv1.weight"].astype(np.float32).transpose(
          2, 3, 1, 0))
  np.testing.assert_array_equal(imported.params["stem/bn/scale"],
                                half["bn1.weight"].astype(np.float32))


def test_one_error_lists_missing_unknown_and_misshaped_tensors():
  sd = _random_state_dict("resnet34", 8)
  del sd["layer3.5.bn2.running_mean"]
  sd["layer1.0.se.fc1.weight"] = np.zeros((4, 8, 1, 1), np.float32)
  sd["layer2.1.conv2.weight"] = np.zeros((16, 16, 1, 1), np.float32)
  with pytest.raises(WeightImportError) as e:
    torch_layout.from_state_dict(sd, where="w.pth")
  msg = str(e.value)
  assert "w.pth: cannot map onto agejax resnet34 (width 8)" in msg
  assert "looks like resnet34" in msg
  assert "missing (1): layer3.5.bn2.running_mean" in msg
  assert "unknown (1): layer1.0.se.fc1.weight" in msg
  assert ("wrong shape (1): layer2.1.conv2.weight (16, 16, 1, 1) expected "
          "(16, 16, 3, 3)") in msg


def test_forced_arch_and_unsupported_layouts():
  sd = _random_state_dict("resnet34", 8)
  with pytest.raises(WeightImportError) as e:
    torch_layout.from_state_dict(sd, arch="resnet18")
  msg = str(e.value)
  assert "agejax resnet18" in msg and "looks like resnet34" in msg
  assert "unknown (" in msg and "layer1.2.conv1.weight" in msg

  bn_vgg = {"features.0.weight": np.zeros((8, 3, 3, 3), np.float32),
            "features.1.running_mean": np.zeros(8, np.float32)}
  with pytest.raises(WeightImportError, match="batch-norm VGG"):
    torch_layout.from_state_dict(bn_vgg)
  timm_vgg = {"features.0.weight": np.zeros((8, 3, 3, 3), np.float32),
              "pre_logits.fc1.weight": np.zeros((4, 8, 7, 7), np.float32)}
  with pytest.raises(WeightImportError, match="timm's VGG"):
    torch_layout.from_state_dict(timm_vgg)
  deep_stem = {"conv1.0.weight": np.zeros((4, 3, 3, 3), np.float32)}
  with pytest.raises(WeightImportError, match="deep stem"):
    torch_layout.from_state_dict(deep_stem)
  sd = _random_state_dict("resnet50", 8)
  sd = {k: v for k, v in sd.items() if not k.startswith("layer3.5.")}
  with pytest.raises(WeightImportError,
                     match=r"\[3, 4, 5, 3\] bottleneck blocks, which is none"):
    torch_layout.from_state_dict(sd)
  with pytest.raises(WeightImportError, match="neither"):
    torch_layout.from_state_dict({"blocks.0.attn.qkv.weight": np.zeros(3)})


# ---------------------------------------------------------------------------
# (c) Numbers.


def _vgg_reference(conv_nhwc: np.ndarray, sd: dict) -> np.ndarray:
  """torchvision's VGG classifier[:5] in numpy, from stage5's output:
  AdaptiveAvgPool2d(7), flatten in C, H, W order, fc6, ReLU, fc7, ReLU."""
  x = conv_nhwc.transpose(0, 3, 1, 2).astype(np.float64)  # NCHW
  side = x.shape[2]
  pooled = np.zeros(x.shape[:2] + (7, 7))
  for i in range(7):
    h0, h1 = (i * side) // 7, -(-(i + 1) * side // 7)
    for j in range(7):
      w0, w1 = (j * side) // 7, -(-(j + 1) * side // 7)
      pooled[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
  flat = pooled.reshape(len(x), -1)
  y = np.maximum(flat @ sd["classifier.0.weight"].T + sd["classifier.0.bias"],
                 0)
  return np.maximum(y @ sd["classifier.3.weight"].T + sd["classifier.3.bias"],
                    0)


@pytest.mark.parametrize("size", [224, 96, 288])
def test_vgg16_fc6_matches_torchvision_classifier_in_numpy(size):
  """224: fc6 rows only permuted; 96 (3x3 map) and 288 (9x9): the adaptive
  pool folded into fc6."""
  sd = _random_state_dict("vgg16", 8, seed=3)
  imported = torch_layout.from_state_dict(sd, image_size=size)
  x = augment.normalize(_images(2, size), "imagenet")
  conv = _agejax(imported, x, conv_only=True)
  assert conv.shape == (2, size // 32, size // 32, 64)
  got = _agejax(imported, x)
  want = _vgg_reference(conv, sd)
  assert want.std() > 0.1  # not a degenerate all-zero comparison
  assert _rel(got, want) < 1e-5


def _timm_preset(directory, arch: str, size: int, seed: int) -> dict:
  """A timm Hugging Face folder: model.safetensors + config.json as timm
  writes them (the whole state dict: fc, num_batches_tracked)."""
  sd = _random_state_dict(arch, 64, seed=seed)
  os.makedirs(directory, exist_ok=True)
  safetensors.numpy.save_file(sd, os.path.join(directory, "model.safetensors"))
  features = 512 * (4 if models.resnet.SPECS[arch][1] else 1)
  cfg = {"architecture": arch, "num_classes": 10, "num_features": features,
         "pretrained_cfg": {
             "tag": "random", "custom_load": False,
             "input_size": [3, size, size], "fixed_input_size": False,
             "interpolation": "bicubic", "crop_pct": 0.95,
             "crop_mode": "center", "mean": [0.485, 0.456, 0.406],
             "std": [0.229, 0.224, 0.225], "num_classes": 10,
             "pool_size": [size // 32, size // 32], "first_conv": "conv1",
             "classifier": "fc"}}
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(cfg, f)
  return sd


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_resnet_matches_keras_hub_loading_timm_weights(tmp_path, arch):
  keras_hub = pytest.importorskip("keras_hub")
  size = 96
  directory = str(tmp_path / arch)
  _timm_preset(directory, arch, size, seed=len(arch))
  images = _images(3, size)

  converter = keras_hub.layers.ResNetImageConverter.from_preset(directory)
  x_keras = np.asarray(converter(images))
  x_agejax = augment.normalize(images, "imagenet")
  assert np.abs(x_keras - x_agejax).max() < 1e-5  # same preprocessing
  backbone = keras_hub.models.ResNetBackbone.from_preset(directory)
  want = np.asarray(backbone.predict(x_keras, verbose=0)).mean(axis=(1, 2))

  imported = torch_layout.read(os.path.join(directory, "model.safetensors"))
  assert (imported.arch, imported.source) == (arch, "timm")
  got = _agejax(imported, x_agejax)
  assert want.shape == got.shape
  assert np.std(want, axis=0).mean() > 1e-2 * np.abs(want).mean()
  assert _rel(got, want) < 1e-4
  if arch == "resnet50":  # the comparison sees the stride placement
    assert _rel(_agejax(imported, x_agejax, stride_in_1x1=True), want) > 1e-2


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_matches_torch(tmp_path, arch):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = ref.torch_resnet(arch, width=8).eval()
  sd = _random_state_dict(arch, 8, seed=5)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  path = str(tmp_path / "resnet.pth")
  torch.save(net.state_dict(), path)  # with its _metadata, as saved normally
  images = _images(2, 64)
  x = augment.normalize(images, "imagenet")
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got = _agejax(torch_layout.read(path), x)
  assert _rel(got, want) < 1e-4


@pytest.mark.parametrize("size", [224, 160])
def test_vgg16_matches_torch(tmp_path, size):
  torch = pytest.importorskip("torch")
  net = ref.torch_vgg16(width=8).eval()
  sd = _random_state_dict("vgg16", 8, seed=6)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  path = str(tmp_path / "vgg.pth")
  torch.save({"model": net.state_dict(), "epoch": 3}, path)
  x = augment.normalize(_images(2, size), "imagenet")
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got = _agejax(torch_layout.read(path, image_size=size), x)
  assert want.std() > 0.1
  assert _rel(got, want) < 1e-4
