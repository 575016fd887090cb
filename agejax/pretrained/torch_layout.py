"""torchvision / timm weights (``.pth``, ``.pt``, ``.safetensors``) -> agejax.

Layouts (PyTorch names -> agejax paths):

* ResNet-18/34/50/101/152, torchvision's and timm's ``resnet*`` (the same
  names; timm's default ``resnet50`` is the same "v1.5" network, stride on
  the 3x3): ``conv1`` / ``bn1`` -> ``stem/conv`` / ``stem/bn``;
  ``layer{s}.{b}.conv{k}`` / ``.bn{k}`` -> ``stage{s}/block{b+1}/conv{k}`` /
  ``bn{k}``; ``.downsample.0`` / ``.downsample.1`` -> ``downsample/conv`` /
  ``downsample/bn``. BatchNorm ``weight, bias`` -> ``scale, bias`` and
  ``running_mean, running_var`` -> batch statistics ``mean, var``
  (PyTorch's running variance is the biased one, as agejax's).
  ``num_batches_tracked`` and the classifier ``fc`` are dropped.
* torchvision's VGG-16: the 13 convolutions ``features.{0,2,5,...,28}`` ->
  ``stage{1-5}/conv{c}``; ``classifier.0`` -> ``fc6``, ``classifier.3`` ->
  ``fc7``; the classifier ``classifier.6`` is dropped.

Convolutions OIHW -> HWIO, linear weights (out, in) -> (in, out).

VGG's fc6 and the input size: torchvision applies ``AdaptiveAvgPool2d(7)``
to stage5's output and flattens it in C, H, W order; agejax flattens stage5's
``image_size // 32`` square map in H, W, C order, with no pool. For
``image_size`` 224 (up to 255) the map is 7x7, the pool is the identity and
fc6's input rows are only permuted. For other sizes the pool is still a fixed
linear map (each 7x7 cell averages a window of the smaller or larger map), so
it is folded into fc6: the agejax network at that size computes exactly what
torchvision's computes on the same image. Pass ``image_size`` to :func:`read`.

The architecture is recognised from the names and the number of blocks per
stage (``arch`` overrides it), the width from the first convolution (64 for
the published networks; ``model_overrides['width']``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import safetensors.numpy

from agejax.models import resnet
from agejax.models import vgg
from agejax.pretrained import torch_pickle
from agejax.pretrained.types import Imported
from agejax.pretrained.types import WeightImportError

_EXPANSION = 4  # bottleneck output channels / stage width
_VGG_POOLED = 7  # torchvision's AdaptiveAvgPool2d output side
_MAX_LISTED = 12  # names shown per category in an error message


class _Spec:
  """The expected tensors of one layout: torch name -> (path, kind, shape).

  ``kind`` is ``conv``, ``linear``, ``vector`` (parameters), ``stat`` (batch
  statistics) or ``fc6``; ``dropped`` names may be present and are ignored.
  """

  def __init__(self, arch: str):
    self.arch = arch
    self.entries: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    self.dropped = re.compile(r"$^")

  def conv(self, name: str, path: str, shape: tuple[int, ...]) -> None:
    self.entries[f"{name}.weight"] = (f"{path}/kernel", "conv", shape)

  def bias(self, name: str, path: str, n: int) -> None:
    self.entries[f"{name}.bias"] = (f"{path}/bias", "vector", (n,))

  def bn(self, name: str, path: str, n: int) -> None:
    self.entries[f"{name}.weight"] = (f"{path}/scale", "vector", (n,))
    self.bias(name, path, n)
    self.entries[f"{name}.running_mean"] = (f"{path}/mean", "stat", (n,))
    self.entries[f"{name}.running_var"] = (f"{path}/var", "stat", (n,))


def resnet_spec(arch: str, width: int = 64) -> _Spec:
  """torchvision's ResNet state-dict names for ``arch`` at ``width``."""
  blocks_per_stage, bottleneck = resnet.SPECS[arch]
  spec = _Spec(arch)
  spec.dropped = re.compile(r"^fc\.(weight|bias)$")
  spec.conv("conv1", "stem/conv", (width, 3, 7, 7))
  spec.bn("bn1", "stem/bn", width)
  in_ch = width
  for s, num_blocks in enumerate(blocks_per_stage, start=1):
    w = width * 2**(s - 1)
    out = w * _EXPANSION if bottleneck else w
    for b in range(num_blocks):
      name, path = f"layer{s}.{b}", f"stage{s}/block{b + 1}"
      if bottleneck:
        convs = [(w, in_ch, 1), (w, w, 3), (out, w, 1)]
      else:
        convs = [(w, in_ch, 3), (w, w, 3)]
      for k, (o, i, ks) in enumerate(convs, start=1):
        spec.conv(f"{name}.conv{k}", f"{path}/conv{k}", (o, i, ks, ks))
        spec.bn(f"{name}.bn{k}", f"{path}/bn{k}", o)
      stride = 2 if (s > 1 and b == 0) else 1
      if stride != 1 or in_ch != out:  # agejax's rule for a projection
        spec.conv(f"{name}.downsample.0", f"{path}/downsample/conv",
                  (out, in_ch, 1, 1))
        spec.bn(f"{name}.downsample.1", f"{path}/downsample/bn", out)
      in_ch = out
  return spec


def vgg16_spec(width: int = 64) -> _Spec:
  """torchvision's VGG-16 state-dict names at ``width``."""
  spec = _Spec("vgg16")
  spec.dropped = re.compile(r"^classifier\.6\.(weight|bias)$")
  in_ch, index = 3, 0  # index: position in torchvision's `features`
  for s, num_convs in enumerate(vgg.CONVS_PER_STAGE, start=1):
    out = width * min(2**(s - 1), 8)
    for c in range(1, num_convs + 1):
      spec.conv(f"features.{index}", f"stage{s}/conv{c}", (out, in_ch, 3, 3))
      spec.bias(f"features.{index}", f"stage{s}/conv{c}", out)
      in_ch = out
      index += 2  # the conv and its ReLU
    index += 1  # the stage's max pool
  units = width * 64
  spec.entries["classifier.0.weight"] = (
      "fc6/kernel", "fc6", (units, in_ch * _VGG_POOLED**2))
  spec.bias("classifier.0", "fc6", units)
  spec.entries["classifier.3.weight"] = ("fc7/kernel", "linear", (units, units))
  spec.bias("classifier.3", "fc7", units)
  return spec


def _block_counts(names: list[str]) -> tuple[int, ...]:
  counts = [0, 0, 0, 0]
  for name in names:
    m = re.match(r"layer([1-4])\.(\d+)\.", name)
    if m:
      s, b = int(m[1]), int(m[2])
      counts[s - 1] = max(counts[s - 1], b + 1)
  return tuple(counts)


def detect(tensors: dict[str, np.ndarray]) -> tuple[str | None, str]:
  """``(arch or None, description)`` of what the names look like."""
  names = list(tensors)
  if any(n.startswith("features.") for n in names):
    if any(re.match(r"features\.\d+\.running_mean$", n) for n in names):
      return None, "a batch-norm VGG (vgg*_bn), which agejax does not have"
    if any(n.startswith("pre_logits.") for n in names):
      return None, ("timm's VGG (pre_logits.fc1 a 7x7 convolution), which "
                    "this reader does not map: use torchvision's VGG-16")
    num_convs = sum(1 for n in names
                    if re.match(r"features\.\d+\.weight$", n)
                    and tensors[n].ndim == 4)
    if num_convs == 13:
      return "vgg16", "vgg16 (torchvision layout)"
    depth = {8: "vgg11", 10: "vgg13", 16: "vgg19"}.get(num_convs)
    return None, (f"{depth or 'a VGG'} ({num_convs} convolutions); agejax has "
                  "VGG-16 only")
  if "conv1.0.weight" in tensors:
    return None, "a ResNet with a deep stem (timm resnet*d / resnet*c)"
  if any(n.startswith(("stem.", "stages.")) for n in names):
    return None, "timm's resnetv2 / another timm network (stem.*, stages.*)"
  if any(n.startswith("layer1.") for n in names) or "conv1.weight" in tensors:
    counts = _block_counts(names)
    bottleneck = any(re.search(r"\.conv3\.weight$", n) for n in names)
    for arch, spec in resnet.SPECS.items():
      if spec == (counts, bottleneck):
        return arch, f"{arch} (torchvision / timm layout)"
    kind = "bottleneck" if bottleneck else "basic"
    return None, (f"a ResNet with {list(counts)} {kind} blocks, which is none "
                  f"of {', '.join(resnet.SPECS)}")
  shown = ", ".join(names[:5])
  return None, ("neither a torchvision/timm ResNet nor VGG-16 (names: "
                f"{shown}, ...)")


def _listing(title: str, items: list[str]) -> str:
  shown = items[:_MAX_LISTED]
  more = f", ... and {len(items) - len(shown)} more" if len(items) > len(
      shown) else ""
  return f"{title} ({len(items)}): {', '.join(shown)}{more}"


def _adaptive_pool_matrix(side: int) -> np.ndarray:
  """float32[7, side]: ``AdaptiveAvgPool2d(7)`` along one axis of a map.

  Cell ``i`` averages rows ``floor(i * side / 7)`` to ``ceil((i + 1) * side /
  7)`` (exclusive), PyTorch's rule.
  """
  pool = np.zeros((_VGG_POOLED, side), np.float32)
  for i in range(_VGG_POOLED):
    start = (i * side) // _VGG_POOLED
    end = -((-(i + 1) * side) // _VGG_POOLED)  # ceil
    pool[i, start:end] = 1.0 / (end - start)
  return pool


def _fc6_kernel(weight: np.ndarray, channels: int,
                image_size: int) -> np.ndarray:
  """torchvision's fc6 (out, C*7*7 in C,H,W order) as agejax's (s*s*C, out)."""
  units = weight.shape[0]
  w4 = np.asarray(weight, np.float32).reshape(units, channels, _VGG_POOLED,
                                              _VGG_POOLED)
  side = image_size // 32
  if side == _VGG_POOLED:  # the pool is the identity: only permute
    kernel = w4.transpose(2, 3, 1, 0)
  else:
    # kernel[h, w, c, u] = sum_ij w4[u, c, i, j] pool[i, h] pool[j, w], one
    # axis at a time (no (u, c, i, j, h, w) intermediate).
    pool = _adaptive_pool_matrix(side)
    folded = (w4 @ pool).transpose(0, 1, 3, 2) @ pool  # [u, c, w, h]
    kernel = folded.transpose(3, 2, 1, 0)
  return np.ascontiguousarray(kernel, np.float32).reshape(-1, units)


def _convert(kind: str, value: np.ndarray, channels: int,
             image_size: int) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if kind == "linear":
    return np.ascontiguousarray(value.T)
  if kind == "fc6":
    return _fc6_kernel(value, channels, image_size)
  return value


def from_state_dict(tensors: dict[str, np.ndarray], *, arch: str | None = None,
                    image_size: int = 224, source: str = "torchvision",
                    where: str = "state dict") -> Imported:
  """Maps a torchvision/timm state dict (numpy arrays) onto agejax paths.

  Args:
    tensors: ``{torch name: array}``.
    arch: ``resnet18`` ... ``resnet152`` or ``vgg16``; recognised from the
      names when None.
    image_size: the agejax network's input side (VGG's fc6 depends on it).
    source: recorded in the result.
    where: the file, for error messages.

  Raises:
    WeightImportError: unknown, missing or mis-shaped tensors (all listed).
  """
  guess, looks_like = detect(tensors)
  arch = arch or guess
  if arch is None:
    raise WeightImportError(f"{where}: looks like {looks_like}")
  if arch not in (*resnet.SPECS, "vgg16"):
    raise WeightImportError(
        f"{where}: unknown arch {arch!r}; expected one of "
        f"{', '.join((*resnet.SPECS, 'vgg16'))}")
  if arch == "vgg16" and image_size < 32:
    raise WeightImportError(f"{where}: VGG-16 needs image_size >= 32, got "
                            f"{image_size}")
  first = "features.0.weight" if arch == "vgg16" else "conv1.weight"
  width = tensors[first].shape[0] if (
      first in tensors and tensors[first].ndim == 4) else 64
  spec = vgg16_spec(width) if arch == "vgg16" else resnet_spec(arch, width)

  def ignored(name: str) -> bool:
    return bool(name.endswith(".num_batches_tracked")
                or spec.dropped.match(name))

  unknown = [n for n in tensors if n not in spec.entries and not ignored(n)]
  missing = [n for n in spec.entries if n not in tensors]
  wrong = [f"{n} {tuple(tensors[n].shape)} expected {shape}"
           for n, (_, _, shape) in spec.entries.items()
           if n in tensors and tuple(tensors[n].shape) != shape]
  if unknown or missing or wrong:
    parts = [_listing(t, items) for t, items in (
        ("missing", missing), ("unknown", unknown), ("wrong shape", wrong))
             if items]
    raise WeightImportError(
        f"{where}: cannot map onto agejax {arch} (width {width}); the file "
        f"looks like {looks_like}. " + "; ".join(parts))

  params, batch_stats = {}, {}
  channels = width * 8  # stage5 channels, VGG's fc6 input depth
  for name, (path, kind, _) in spec.entries.items():
    value = _convert(kind, tensors[name], channels, image_size)
    (batch_stats if kind == "stat" else params)[path] = value
  if arch == "vgg16":
    overrides: dict[str, Any] = {"preprocessing": "imagenet", "width": width}
  else:
    overrides = {"stride_in_1x1": False, "conv_bias": False,
                 "bn_epsilon": 1e-5, "preprocessing": "imagenet",
                 "width": width}
  return Imported(arch=arch, params=params, batch_stats=batch_stats,
                  model_overrides=overrides, source=source)


def load_tensors(path: str) -> tuple[dict[str, np.ndarray], str]:
  """``({name: array}, container)`` of a ``torch.save`` or safetensors file.

  The container (``pth`` or ``safetensors``) is recognised from the bytes: a
  zip is a ``torch.save`` file; a little-endian header length followed by
  ``{`` is safetensors.
  """
  with open(path, "rb") as f:
    head = f.read(9)
  if head[:4] == b"PK\x03\x04":
    return torch_pickle.load_state_dict(path), "pth"
  if len(head) == 9 and head[8:9] == b"{":
    try:
      return safetensors.numpy.load_file(path), "safetensors"
    except Exception as e:  # the library raises several types on bad files
      raise WeightImportError(f"{path}: cannot read safetensors: {e}") from e
  # Neither: the torch reader explains a legacy torch file or refuses.
  return torch_pickle.load_state_dict(path), "pth"


def read(path: str, *, arch: str | None = None,
         image_size: int = 224) -> Imported:
  """Reads torchvision / timm weights into agejax's paths.

  Args:
    path: a ``torch.save`` file (a state dict, or a checkpoint holding one
      under ``state_dict`` or ``model``) or a ``.safetensors`` file.
    arch: forces ``resnet18`` ... ``resnet152`` / ``vgg16``.
    image_size: ``data.image_size`` of the network to load into; only VGG-16
      depends on it (see the module docstring).

  Returns:
    float32 parameters and batch statistics; ``source`` is ``timm`` for
    safetensors (how timm publishes its weights), else ``torchvision``.

  Raises:
    WeightImportError: unreadable file, refused pickle, or tensors that do
      not match the architecture (listed, with what the file looks like).
  """
  tensors, container = load_tensors(path)
  source = "timm" if container == "safetensors" else "torchvision"
  return from_state_dict(tensors, arch=arch, image_size=image_size,
                         source=source, where=str(path))

