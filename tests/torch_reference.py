"""PyTorch-side references for the torch importer tests.

* :func:`save_like_torch` writes a state dict in ``torch.save``'s zip format
  without torch: the same entries, 64-byte aligned storages and the same
  protocol-2 pickle opcodes, memo included (a test checks that the pickle is
  byte for byte what torch writes, when torch is installed).
* :func:`torch_resnet` / :func:`torch_vgg16` build torchvision-structured
  networks of any width in torch (torchvision itself is not needed), for
  the numerical comparisons; they import torch when called.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# numpy dtype -> the torch storage class torch.save names for it.
STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
}


@dataclasses.dataclass
class View:
  """A tensor as torch keeps it: a strided window on a flat storage.

  Views whose ``storage`` is the same numpy object share one storage entry,
  as tensors sliced from one another do in a ``torch.save`` file.
  """
  storage: np.ndarray  # 1-D
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]
  parameter: bool = False  # an nn.Parameter (pickled via _rebuild_parameter)

  def numpy(self) -> np.ndarray:
    """What the view holds, as a compact array."""
    item = self.storage.itemsize
    return np.array(np.lib.stride_tricks.as_strided(
        self.storage[self.offset:], self.shape,
        [s * item for s in self.stride]))


def contiguous(array: np.ndarray) -> View:
  """A view of its own storage with C-order strides."""
  array = np.array(array, order="C")  # (ascontiguousarray makes 0-d 1-d)
  stride = tuple(s // array.itemsize for s in array.strides)
  return View(array.reshape(-1).copy(), 0, array.shape, stride)


@dataclasses.dataclass(frozen=True)
class _Global:
  module: str
  name: str


@dataclasses.dataclass(frozen=True)
class _Persistent:
  view: View


class _Pickle:
  """Emits protocol-2 opcodes the way ``pickle.Pickler`` does for torch.save.

  The memo is keyed by value for strings and globals, which is what the
  pickler's by-identity memo amounts to for torch's interned strings, cached
  storage keys and classes; tuples, dicts and reduce results are memoized
  once each.
  """

  def __init__(self):
    self.out = bytearray(b"\x80\x02")
    self.memo: dict[Any, int] = {}
    self.storage_keys: dict[int, str] = {}
    self.storages: list[tuple[str, np.ndarray]] = []

  def _put(self, key: Any = None) -> None:
    index = len(self.memo)
    self.memo[key if key is not None else ("anonymous", index)] = index
    self.out += (b"q" + bytes([index]) if index < 256
                 else b"r" + struct.pack("<I", index))

  def _get(self, key: Any) -> bool:
    if key not in self.memo:
      return False
    index = self.memo[key]
    self.out += (b"h" + bytes([index]) if index < 256
                 else b"j" + struct.pack("<I", index))
    return True

  def global_(self, module: str, name: str) -> None:
    if not self._get(("global", module, name)):
      self.out += f"c{module}\n{name}\n".encode()
      self._put(("global", module, name))

  def str_(self, text: str) -> None:
    if not self._get(("str", text)):
      data = text.encode()
      self.out += b"X" + struct.pack("<I", len(data)) + data
      self._put(("str", text))

  def int_(self, value: int) -> None:
    if 0 <= value < 256:
      self.out += b"K" + bytes([value])
    elif 0 <= value < 65536:
      self.out += b"M" + struct.pack("<H", value)
    elif -2**31 <= value < 2**31:
      self.out += b"J" + struct.pack("<i", value)
    else:
      data = value.to_bytes((value.bit_length() + 8) // 8, "little",
                            signed=True)
      self.out += b"\x8a" + bytes([len(data)]) + data

  def tuple_(self, items: tuple[Any, ...]) -> None:
    if not items:
      self.out += b")"
      return
    if len(items) > 3:
      self.out += b"("
    for item in items:
      self.value(item)
    self.out += (b"t" if len(items) > 3
                 else {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(items)])
    self._put()

  def reduce_(self, func: _Global, args: tuple[Any, ...]) -> None:
    self.global_(func.module, func.name)
    self.tuple_(args)
    self.out += b"R"
    self._put()

  def dict_items(self, items: dict[str, Any]) -> None:
    pairs = list(items.items())
    for start in range(0, len(pairs), 1000):  # the pickler's batches
      batch = pairs[start:start + 1000]
      if len(batch) > 1:
        self.out += b"("
      for key, value in batch:
        self.value(key)
        self.value(value)
      self.out += b"u" if len(batch) > 1 else b"s"

  def persistent(self, view: View) -> None:
    key_id = id(view.storage)
    if key_id not in self.storage_keys:
      self.storage_keys[key_id] = str(len(self.storage_keys))
      self.storages.append((self.storage_keys[key_id], view.storage))
    self.tuple_(("storage", _Global("torch", STORAGE_NAMES[view.storage.dtype]),
                 self.storage_keys[key_id], "cpu", int(view.storage.size)))
    self.out += b"Q"  # BINPERSID

  def tensor(self, view: View) -> None:
    args = (_Persistent(view), view.offset, tuple(view.shape),
            tuple(view.stride), False, collections.OrderedDict())
    if not view.parameter:
      self.reduce_(_Global("torch._utils", "_rebuild_tensor_v2"), args)
      return
    self.global_("torch._utils", "_rebuild_parameter")
    # (tensor, requires_grad, backward_hooks)
    self.reduce_(_Global("torch._utils", "_rebuild_tensor_v2"), args)
    self.out += b"\x88"
    self.value(collections.OrderedDict())
    self.out += b"\x87"
    self._put()
    self.out += b"R"
    self._put()

  def value(self, value: Any) -> None:
    if isinstance(value, bool):
      self.out += b"\x88" if value else b"\x89"
    elif isinstance(value, int):
      self.int_(value)
    elif isinstance(value, str):
      self.str_(value)
    elif isinstance(value, _Global):
      self.global_(value.module, value.name)
    elif isinstance(value, _Persistent):
      self.persistent(value.view)
    elif isinstance(value, tuple):
      self.tuple_(value)
    elif isinstance(value, np.ndarray):
      self.tensor(contiguous(value))
    elif isinstance(value, View):
      self.tensor(value)
    elif isinstance(value, collections.OrderedDict):
      self.reduce_(_Global("collections", "OrderedDict"), ())
      if value:
        self.dict_items(value)
    elif isinstance(value, bytes):  # opcodes spliced in verbatim
      self.out += value
    elif isinstance(value, dict):
      self.out += b"}"
      self._put()
      if value:
        self.dict_items(value)
    else:
      raise TypeError(f"cannot write {type(value).__name__}")


def state_dict_pickle(
    obj: dict[str, Any]) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
  """(data.pkl bytes, [(storage key, flat array)]) of ``torch.save(obj)``.

  Values: arrays / :class:`View` (tensors), ints, strings, raw opcodes
  (``bytes``, spliced in as they are) and dicts of them:
  a ``collections.OrderedDict`` is written as one (what ``state_dict()``
  returns, less its ``_metadata``), a plain dict as a dict (a training
  checkpoint ``{'state_dict': ..., 'epoch': 3}``).
  """
  p = _Pickle()
  p.value(obj)
  p.out += b"."
  return bytes(p.out), p.storages


def write_torch_zip(path: str, data_pkl: bytes,
                    storages: list[tuple[str, np.ndarray]],
                    archive_name: str | None = None) -> None:
  """The zip container of ``torch.save``: its entries, in its order, stored
  uncompressed with every entry's data 64-byte aligned (torch pads the local
  header's extra field with an ``FB`` record of ``Z`` bytes)."""
  if archive_name is None:  # torch.save names the folder after the file
    archive_name = os.path.splitext(os.path.basename(path))[0]
  entries = [("data.pkl", data_pkl), (".format_version", b"1"),
             (".storage_alignment", b"64"), ("byteorder", b"little")]
  entries += [(f"data/{key}", flat.tobytes()) for key, flat in storages]
  entries += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
  with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
    for name, data in entries:
      info = zipfile.ZipInfo(f"{archive_name}/{name}",
                             date_time=(1980, 1, 1, 0, 0, 0))
      header = 30 + len(info.filename.encode())
      pad = (-(f.tell() + header + 4)) % 64
      info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
      zf.writestr(info, data)


def save_like_torch(path: str, obj: dict[str, Any],
                    archive_name: str | None = None) -> None:
  """``torch.save(obj, path)`` without torch; see :func:`state_dict_pickle`."""
  data_pkl, storages = state_dict_pickle(obj)
  write_torch_zip(path, data_pkl, storages, archive_name)


# ---------------------------------------------------------------------------
# torchvision-structured networks in torch (any width).


def torch_resnet(arch: str, width: int = 64) -> Any:
  """torchvision's ResNet (v1.5) without its classifier, at ``width``.

  Submodule names are torchvision's, so ``state_dict()`` has its names.
  Calling the module returns the globally pooled features.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  blocks_per_stage, bottleneck = {
      "resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
      "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True),
      "resnet152": ((3, 8, 36, 3), True)}[arch]
  expansion = 4 if bottleneck else 1

  class Block(nn.Module):
    def __init__(self, inplanes, planes, stride):
      super().__init__()
      out = planes * expansion
      if bottleneck:
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
      else:
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or inplanes != out:
        self.downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, stride, bias=False),
            nn.BatchNorm2d(out))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      if bottleneck:
        y = self.bn3(self.conv3(torch.relu(y)))
      shortcut = x if self.downsample is None else self.downsample(x)
      return torch.relu(y + shortcut)

  class ResNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      inplanes = width
      for s, n in enumerate(blocks_per_stage, start=1):
        planes = width * 2**(s - 1)
        blocks = []
        for b in range(n):
          blocks.append(Block(inplanes, planes, 2 if s > 1 and b == 0 else 1))
          inplanes = planes * expansion
        setattr(self, f"layer{s}", nn.Sequential(*blocks))
      self.fc = nn.Linear(inplanes, 10)

    def forward(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      for s in range(1, 5):
        x = getattr(self, f"layer{s}")(x)
      return x.mean(dim=(2, 3))

  return ResNet()


def torch_vgg16(width: int = 64) -> Any:
  """torchvision's VGG-16 (``features``, ``avgpool``, ``classifier``).

  Calling the module returns fc7's output after its ReLU (what agejax calls
  the VGG features): ``classifier[:5]``.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class VGG(nn.Module):
    def __init__(self):
      super().__init__()
      layers, in_ch = [], 3
      for s, n in enumerate((2, 2, 3, 3, 3)):
        out = width * min(2**s, 8)
        for _ in range(n):
          layers += [nn.Conv2d(in_ch, out, 3, padding=1), nn.ReLU()]
          in_ch = out
        layers.append(nn.MaxPool2d(2, 2))
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d(7)
      units = width * 64
      self.classifier = nn.Sequential(
          nn.Linear(in_ch * 49, units), nn.ReLU(), nn.Dropout(),
          nn.Linear(units, units), nn.ReLU(), nn.Dropout(),
          nn.Linear(units, 10))

    def forward(self, x):
      x = torch.flatten(self.avgpool(self.features(x)), 1)
      return self.classifier[:5](x)

  return VGG()
