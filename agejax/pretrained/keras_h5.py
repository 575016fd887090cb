"""Keras Applications HDF5 weights (ResNet50/101/152, VGG16) in agejax's paths.

Reads, with h5py alone (no Keras or TensorFlow), the legacy Keras HDF5 weights
layout of the files Keras Applications publishes, e.g.
``resnet50_weights_tf_dim_ordering_tf_kernels(_notop).h5`` and
``vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5``: the root attribute
``layer_names``, one group per layer whose attribute ``weight_names`` lists
its datasets (``conv1_conv/kernel:0``). ``model.save_weights('x.h5')`` of
tf-keras writes this layout; so does ``model.save('x.h5')`` of tf-keras or
Keras 3, under a ``model_weights`` group and with names without ``:0``
(both read here). Keras 3's own ``.weights.h5`` names its groups after layer
classes (``layers/conv2d_12/vars/0``), not layer names, and is refused.

Layer names. Today's ``keras.applications.resnet`` (tf-keras, Keras 3):
``conv1_conv``, ``conv1_bn``, ``conv{2-5}_block{B}_{0,1,2,3}_{conv,bn}``
(``_0_`` is the shortcut), classifier ``predictions``. keras-applications'
older ``resnet50.py`` (the files of the deep-learning-models releases):
``conv1``, ``bn_conv1``, ``res{2-5}{a-f}_branch{2a,2b,2c,1}`` and
``bn...``, classifier ``fc1000``; that network used BatchNormalization's
default epsilon 1e-3, hence :data:`LEGACY_RESNET_OVERRIDES` (its oldest
versions also max-pooled without padding, which agejax does not reproduce).
VGG16: ``block{1-5}_conv{C}``, ``fc1``, ``fc2``, ``predictions``. The
classifier is dropped.

Weights are taken by position within a layer, as Keras' own loader does
(Conv2D and Dense: kernel, bias; BatchNormalization: gamma, beta,
moving_mean, moving_variance), so Keras 1-era weight names load too; modern
names are checked against their position. Kernels are HWIO and (in, out) in
Keras as in agejax: nothing is transposed. VGG16's Flatten runs on NHWC, so
fc1's rows are in H, W, C order, agejax's order; fc1 has 7 * 7 * 512 inputs
(Keras' VGG16 with top takes 224 px only), which fits agejax's fc6 for
``data.image_size`` 224..255.

Padding. Keras' ResNet stem is ZeroPadding2D(3) + 7x7/2 'valid' conv and
ZeroPadding2D(1) + 3x3/2 max pool, agejax's symmetric pads 3 and 1; the pool
follows a ReLU, so Keras' zero padding never beats a real value and equals
agejax's -inf padding. The 3x3 convolutions are 'same' with stride 1, i.e.
symmetric pad 1; every stride-2 convolution is a 1x1 without padding.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import h5py
import numpy as np

from agejax.models import resnet
from agejax.models import vgg
from agejax.pretrained.types import Imported
from agejax.pretrained.types import WeightImportError

SOURCE = "keras-h5"

# keras.applications.resnet (ResNet50/101/152): ResNet v1 with the stride on
# the first 1x1 of a bottleneck, a bias on every convolution, BatchNorm
# epsilon 1.001e-5 (Caffe's 1e-5, nudged above cuDNN's lower bound) and
# Caffe preprocessing (BGR, ImageNet mean subtracted, no scaling).
RESNET_OVERRIDES = {"stride_in_1x1": True, "conv_bias": True,
                    "bn_epsilon": 1.001e-5, "preprocessing": "caffe"}
# keras-applications' older resnet50.py, the network that the files with
# Caffe-style names (res2a_branch2a) were published for, kept
# BatchNormalization's default epsilon, 1e-3.
LEGACY_RESNET_OVERRIDES = {**RESNET_OVERRIDES, "bn_epsilon": 1e-3}
VGG_OVERRIDES = {"preprocessing": "caffe"}

# Keras' weight order within a layer, and the agejax leaf of each position.
_KERAS_WEIGHTS = {
    "conv": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
}
_AGEJAX_LEAVES = {
    "conv": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "bn": ("scale", "bias", "mean", "var"),
}
_BATCH_STATS = frozenset({"mean", "var"})
_MODERN_NAMES = frozenset(n for names in _KERAS_WEIGHTS.values() for n in names)
_MAX_LISTED = 20  # names per line of an error before "... and N more"
# A layer's weights in Keras' order: (weight name, unread dataset).
_Weights = list[tuple[str, h5py.Dataset]]


@dataclasses.dataclass(frozen=True)
class _Layer:
  """What one Keras layer must hold and where it goes.

  Attributes:
    target: agejax path prefix (``stage1/block1/bn1``); None for the
      classifier, which is dropped without looking at its shapes.
    kind: ``conv``, ``bn`` or ``dense`` (the keys of ``_KERAS_WEIGHTS``).
    shapes: expected shape of each weight, in Keras' order.
    optional: may be absent (classifiers, VGG16's fc layers in _notop files).
  """
  target: str | None
  kind: str
  shapes: tuple[tuple[int, ...], ...] = ()
  optional: bool = False


@dataclasses.dataclass(frozen=True)
class _Candidate:
  """A network a file can be: its agejax arch, layer table and overrides."""
  label: str
  arch: str
  table: dict[str, _Layer]
  overrides: dict[str, Any]


def _conv_bn(table: dict[str, _Layer], names: tuple[str, str], target: str,
             kernel: int, cin: int, cout: int, conv_leaf: str = "conv",
             bn_leaf: str = "bn") -> None:
  """Adds a biased convolution and its BatchNorm to ``table``."""
  conv_name, bn_name = names
  table[conv_name] = _Layer(f"{target}{conv_leaf}", "conv",
                            ((kernel, kernel, cin, cout), (cout,)))
  table[bn_name] = _Layer(f"{target}{bn_leaf}", "bn", ((cout,),) * 4)


def _resnet_names(stage: int, block: int, unit: str,
                  legacy: bool) -> tuple[str, str]:
  """Keras names of a bottleneck's conv and BN; ``unit`` 0 is the shortcut."""
  if legacy:
    part = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}[unit]
    letter = "abcdefghijklmnopqrstuvwxyz"[block - 1]
    return (f"res{stage}{letter}_branch{part}",
            f"bn{stage}{letter}_branch{part}")
  return (f"conv{stage}_block{block}_{unit}_conv",
          f"conv{stage}_block{block}_{unit}_bn")


def _resnet_table(arch: str, legacy: bool) -> dict[str, _Layer]:
  """Keras layer -> agejax target of a bottleneck ResNet (published widths)."""
  blocks_per_stage, _ = resnet.SPECS[arch]
  table: dict[str, _Layer] = {}
  stem = ("conv1", "bn_conv1") if legacy else ("conv1_conv", "conv1_bn")
  _conv_bn(table, stem, "stem/", 7, 3, 64)
  cin = 64
  for s, num_blocks in enumerate(blocks_per_stage, start=1):
    width = 64 * 2**(s - 1)
    for b in range(1, num_blocks + 1):
      # Keras numbers stages from 2 (conv2_x is agejax's stage1).
      units = [("1", "conv1", "bn1", 1, cin, width),
               ("2", "conv2", "bn2", 3, width, width),
               ("3", "conv3", "bn3", 1, width, 4 * width)]
      if b == 1:
        units.append(("0", "downsample/conv", "downsample/bn", 1, cin,
                      4 * width))
      for unit, conv_leaf, bn_leaf, kernel, i, o in units:
        _conv_bn(table, _resnet_names(s + 1, b, unit, legacy),
                 f"stage{s}/block{b}/", kernel, i, o, conv_leaf, bn_leaf)
      cin = 4 * width
  table["fc1000" if legacy else "predictions"] = _Layer(None, "dense",
                                                        optional=True)
  return table


def _vgg16_table() -> dict[str, _Layer]:
  """Keras VGG16 layer -> agejax target (published widths, 224 px top)."""
  table: dict[str, _Layer] = {}
  cin = 3
  for s, num_convs in enumerate(vgg.CONVS_PER_STAGE, start=1):
    cout = min(64 * 2**(s - 1), 512)
    for c in range(1, num_convs + 1):
      table[f"block{s}_conv{c}"] = _Layer(f"stage{s}/conv{c}", "conv",
                                          ((3, 3, cin, cout), (cout,)))
      cin = cout
  table["fc1"] = _Layer("fc6", "dense", ((7 * 7 * 512, 4096), (4096,)),
                        optional=True)
  table["fc2"] = _Layer("fc7", "dense", ((4096, 4096), (4096,)),
                        optional=True)
  table["predictions"] = _Layer(None, "dense", optional=True)
  return table


@functools.lru_cache(maxsize=None)
def _candidates() -> tuple[_Candidate, ...]:
  return (
      _Candidate("Keras ResNet50", "resnet50",
                 _resnet_table("resnet50", False), RESNET_OVERRIDES),
      _Candidate("Keras ResNet101", "resnet101",
                 _resnet_table("resnet101", False), RESNET_OVERRIDES),
      _Candidate("Keras ResNet152", "resnet152",
                 _resnet_table("resnet152", False), RESNET_OVERRIDES),
      _Candidate("Keras ResNet50 (keras-applications resnet50.py names)",
                 "resnet50", _resnet_table("resnet50", True),
                 LEGACY_RESNET_OVERRIDES),
      _Candidate("Keras VGG16", "vgg16", _vgg16_table(), VGG_OVERRIDES),
  )


def _attr_strings(group: h5py.Group, name: str) -> list[str]:
  """A list-of-strings attribute; Keras splits big ones into name0, name1..."""
  if name in group.attrs:
    chunks = [group.attrs[name]]
  else:
    chunks, i = [], 0
    while f"{name}{i}" in group.attrs:
      chunks.append(group.attrs[f"{name}{i}"])
      i += 1
  return [v.decode("utf8") if isinstance(v, bytes) else str(v)
          for chunk in chunks for v in np.asarray(chunk).ravel()]


def _has_attr(group: h5py.Group, name: str) -> bool:
  return name in group.attrs or f"{name}0" in group.attrs


def _weights_group(f: h5py.File, path: str) -> h5py.Group:
  """The group holding ``layer_names``: the root, or ``model_weights``."""
  if _has_attr(f, "layer_names"):
    return f
  if "model_weights" in f and _has_attr(f["model_weights"], "layer_names"):
    return f["model_weights"]
  if "layers" in f and "vars" in f:
    raise WeightImportError(
        f"{path}: a Keras 3 '.weights.h5' file, whose groups are named after "
        "layer classes (layers/conv2d_12/vars/0), not layer names; looks like "
        "no readable Keras layout. Save the model with model.save('x.h5') "
        "(Keras 3) or save_weights('x.h5') (tf-keras) for the legacy HDF5 "
        "layout that Keras Applications publishes")
  raise WeightImportError(
      f"{path}: an HDF5 file without Keras' 'layer_names' attribute (at the "
      "root or in 'model_weights'); looks like no Keras weights file")


def _layers_with_weights(group: h5py.Group, path: str) -> dict[str, _Weights]:
  """``{layer: [(weight name, dataset), ...]}`` of layers that have weights."""
  out = {}
  for layer in _attr_strings(group, "layer_names"):
    if layer not in group:
      raise WeightImportError(f"{path}: layer_names lists {layer!r} but the "
                              "file has no such group; looks like a damaged "
                              "Keras HDF5 file")
    names = _attr_strings(group[layer], "weight_names")
    if names:
      out[layer] = [(n, group[layer][n]) for n in names]
  return out


def _score(layers: set[str], candidate: _Candidate) -> float:
  """Shared names over the union, counting optional layers only if present."""
  table = candidate.table
  shared = len(layers & table.keys())
  required = {n for n, layer in table.items() if not layer.optional}
  return shared / max(len(layers | required), 1)


def _short_name(weight_name: str) -> str:
  """``conv1_bn/gamma:0`` -> ``gamma``."""
  return re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])


def _check(name: str, layer: _Layer, weights: _Weights) -> list[str]:
  """Problems of one layer's weights: count, order (by name) and shapes."""
  wanted = _KERAS_WEIGHTS[layer.kind]
  if len(weights) != len(wanted):
    found = ", ".join(_short_name(n) for n, _ in weights)
    return [f"{name}: {len(weights)} weights ({found}), expected "
            f"{len(wanted)} ({', '.join(wanted)})"]
  problems = []
  for i, ((weight_name, ds), want) in enumerate(zip(weights, wanted)):
    short = _short_name(weight_name)
    if short in _MODERN_NAMES and short != want:
      problems.append(f"{name}: weight {i} is {short}, expected {want}")
    elif layer.shapes and tuple(ds.shape) != layer.shapes[i]:
      problems.append(f"{name}/{want}: shape {tuple(ds.shape)}, expected "
                      f"{layer.shapes[i]}")
  return problems


def _nested_note(layer: str, weights: _Weights) -> str:
  """Explains a group whose weights belong to several layers (a sub-model)."""
  owners = list(dict.fromkeys(n.split("/")[-2] for n, _ in weights
                              if n.count("/") >= 1))
  if len(owners) < 2:
    return ""
  return (f" (a nested model of {len(owners)} layers: {', '.join(owners[:3])}"
          f", ...; save it on its own: model.get_layer({layer!r})"
          ".save_weights('backbone.h5'))")


def _family_hints(layers: set[str]) -> str:
  """Names of Keras networks agejax does not implement, when seen."""
  hints = []
  if any(re.search(r"_preact_bn$", n) or n == "post_bn" for n in layers):
    hints.append("its layer names match Keras' ResNetV2 (pre-activation), "
                 "which agejax does not implement")
  if any(re.fullmatch(r"block[345]_conv4", n) for n in layers):
    hints.append("its layer names match Keras' VGG19; agejax implements "
                 "VGG-16 only")
  return "".join(f"; {h}" for h in hints)


def _listing(title: str, items: list[str], sep: str = ", ") -> str:
  shown = sep.join(items[:_MAX_LISTED])
  more = (f"{sep}... and {len(items) - _MAX_LISTED} more"
          if len(items) > _MAX_LISTED else "")
  return f"  {title} ({len(items)}): {shown}{more}"


def read(path: str) -> Imported:
  """Reads a Keras Applications ResNet50/101/152 or VGG16 HDF5 weights file.

  Args:
    path: a ``.h5`` file in the legacy Keras layout (with or without top).

  Returns:
    The backbone in agejax paths (classifier dropped; VGG16's fc6/fc7 only
    when the file has fc1/fc2) with the ``model.*`` overrides the network
    needs: :data:`RESNET_OVERRIDES`, :data:`LEGACY_RESNET_OVERRIDES` for
    files with keras-applications' Caffe-style ResNet50 names, or
    :data:`VGG_OVERRIDES`.

  Raises:
    WeightImportError: not a Keras HDF5 weights file, or layers that are
      unknown, missing or mis-shaped for the network the file looks like;
      one error lists them all.
  """
  path = str(path)
  if not os.path.isfile(path):
    raise WeightImportError(f"{path}: no such file")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise WeightImportError(f"{path}: not a readable HDF5 file ({e}); looks "
                            "like no Keras weights file") from e
  with f:
    layers = _layers_with_weights(_weights_group(f, path), path)
    names = set(layers)
    best = max(_candidates(), key=lambda c: _score(names, c))
    if _score(names, best) == 0.0:
      listed = [n + _nested_note(n, w) for n, w in layers.items()]
      raise WeightImportError(
          f"{path}: looks like none of the Keras Applications networks agejax "
          f"implements ({', '.join(c.label for c in _candidates())})"
          f"{_family_hints(names)}\n{_listing('layers with weights', listed)}")
    table = best.table
    unknown = [n + _nested_note(n, w) for n, w in layers.items()
               if n not in table]
    missing = [f"{n} (-> {layer.target})" for n, layer in table.items()
               if not layer.optional and n not in layers]
    if best.arch == "vgg16" and ("fc1" in layers) != ("fc2" in layers):
      missing += [f"{n} (-> {table[n].target}; fc1 and fc2 come together)"
                  for n in ("fc1", "fc2") if n not in layers]
    # The classifier is dropped unread, whatever its classes.
    misshaped = [p for n, layer in table.items()
                 if n in layers and layer.target is not None
                 for p in _check(n, layer, layers[n])]
    if unknown or missing or misshaped:
      lines = [f"{path}: cannot import as agejax's {best.arch}; looks like "
               f"{best.label}{_family_hints(names)}"]
      if missing:
        lines.append(_listing("missing layers", missing))
      if unknown:
        lines.append(_listing("unknown layers", unknown))
      if misshaped:
        lines.append(_listing("mis-shaped", misshaped, sep="\n    "))
      raise WeightImportError("\n".join(lines))

    params: dict[str, np.ndarray] = {}
    batch_stats: dict[str, np.ndarray] = {}
    for name, layer in table.items():
      if layer.target is None or name not in layers:
        continue
      for (_, ds), leaf in zip(layers[name], _AGEJAX_LEAVES[layer.kind]):
        out = batch_stats if leaf in _BATCH_STATS else params
        out[f"{layer.target}/{leaf}"] = np.asarray(ds[()], dtype=np.float32)
  return Imported(arch=best.arch, params=params, batch_stats=batch_stats,
                  model_overrides=dict(best.overrides), source=SOURCE)
