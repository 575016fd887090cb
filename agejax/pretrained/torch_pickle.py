"""Reads ``torch.save`` files into numpy without torch and without running code.

Both of torch's formats are read. The zip format (the default since PyTorch
1.6) is a zip archive with one top-level folder (the file's stem, or
``archive``) holding

* ``data.pkl``: a protocol-2 pickle of the saved object, in which each tensor
  is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
  and each storage a persistent id ``('storage', torch.FloatStorage, key,
  location, numel)``;
* ``data/<key>``: the raw bytes of storage ``key``;
* ``byteorder`` (``little`` / ``big``; absent in old files: little),
  ``version`` and a few bookkeeping entries.

The legacy format (before 1.6, and ``_use_new_zipfile_serialization=False``;
torchvision's 2017 ``vgg16-397923af.pth`` is one) is one stream of five
pickles and the raw storages:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version, 1001;
3. the system info: ``{"protocol_version", "little_endian", "type_sizes"}``;
4. the saved object, whose storages are persistent ids ``('storage',
   torch.FloatStorage, key, location, numel, view_metadata)``;
5. the list of storage keys;

then, for each key in that order, its element count as an 8-byte
little-endian integer followed by its raw bytes.

Unpickling is code execution: a pickle may call any importable function
(``os.system``, ``builtins.eval``, ...). :class:`_RestrictedUnpickler`
therefore resolves only the few globals a state dict needs, and resolves the
tensor-rebuilding ones to functions of this module that build numpy arrays;
torch itself is never imported. Any other global raises
:class:`~agejax.pretrained.types.WeightImportError` naming it, before anything
is called.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import math
import pickle
import sys
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from agejax.pretrained.types import WeightImportError

# torch's legacy typed-storage classes, which the pickle names as the storage
# type of each tensor, and the numpy dtype of their elements.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

# The first bytes of the pre-1.6 (non-zip) format: a pickled magic number.
# The first bytes of a legacy torch.save stream: protocol 2, then its magic number.
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

_RESAVE_HINT = (
    "re-save the weights alone with a recent PyTorch: "
    "torch.save(model.state_dict(), 'weights.pth') (the zip format, default "
    "since PyTorch 1.6), or as safetensors")


class _StorageType:
  """Stands for ``torch.<Name>Storage``: carries the element dtype only."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]


class _Storage:
  """One storage (``data/<key>`` in a zip) as a flat numpy array, read on first use."""

  def __init__(self, archive: _Archive, key: str, dtype: np.dtype, numel: int):
    self.archive, self.key, self.dtype, self.numel = archive, key, dtype, numel
    self._flat: np.ndarray | None = None

  def available(self) -> bool:
    """False while a legacy file's bytes, which follow its pickle, are unread."""
    return self.archive.has_bytes(self.key)

  def flat(self) -> np.ndarray:
    if self._flat is None:
      raw = self.archive.read_storage(self.key)
      if len(raw) != self.numel * self.dtype.itemsize:
        raise WeightImportError(
            f"{self.archive.path}: storage {self.key!r} holds {len(raw)} "
            f"bytes, expected {self.numel} x {self.dtype.itemsize}")
      flat = np.frombuffer(raw, self.dtype)
      if self.archive.byteorder != sys.byteorder and self.dtype.itemsize > 1:
        # Swapped as unsigned integers: bfloat16 has no big-endian dtype.
        flat = flat.view(f"u{self.dtype.itemsize}").byteswap().view(self.dtype)
      self._flat = flat
    return self._flat


class _Archive:
  """The zip of one ``torch.save`` file: its folder, byte order, storages."""

  def __init__(self, path: str, zf: zipfile.ZipFile):
    self.path, self.zf = path, zf
    pickles = [n for n in zf.namelist()
               if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise WeightImportError(
          f"{path}: a zip file but not one written by torch.save (expected one "
          f"<folder>/data.pkl, found {pickles or 'none'})")
    self.prefix = pickles[0][:-len("data.pkl")]
    byteorder = self._read_optional("byteorder", b"little").strip()
    if byteorder not in (b"little", b"big"):
      raise WeightImportError(f"{path}: unknown byteorder {byteorder!r}")
    self.byteorder = byteorder.decode()
    self.storages: dict[str, _Storage] = {}

  def _read_optional(self, name: str, default: bytes) -> bytes:
    try:
      return self.zf.read(self.prefix + name)
    except KeyError:
      return default

  def read_pickle(self) -> bytes:
    return self.zf.read(self.prefix + "data.pkl")

  def has_bytes(self, key: str) -> bool:
    del key  # every entry of a zip can be read at any time
    return True

  def read_storage(self, key: str) -> bytes:
    try:
      return self.zf.read(f"{self.prefix}data/{key}")
    except KeyError:
      raise WeightImportError(
          f"{self.path}: the pickle refers to storage {key!r}, which the "
          "archive does not contain") from None


class _LegacyArchive:
  """A legacy ``torch.save`` stream: its byte order, and storages once read."""

  _MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
  _PROTOCOL_VERSION = 1001

  def __init__(self, path: str, stream: io.BufferedIOBase):
    self.path, self.stream = path, stream
    self.storages: dict[str, _Storage] = {}
    self._raw: dict[str, bytes] = {}
    magic = self.load_pickle()
    version = self.load_pickle()
    if magic != self._MAGIC_NUMBER or version != self._PROTOCOL_VERSION:
      raise WeightImportError(f"{path}: a legacy torch file with magic {magic!r} and "
                              f"protocol {version!r}; expected {self._MAGIC_NUMBER:#x}, "
                              f"{self._PROTOCOL_VERSION}")
    info = self.load_pickle()
    if not isinstance(info, dict) or not isinstance(info.get("little_endian"), bool):
      raise WeightImportError(f"{path}: malformed legacy system info {info!r}")
    self.byteorder = "little" if info["little_endian"] else "big"

  def load_pickle(self) -> Any:
    """The next pickle of the stream, through the restricted unpickler."""
    return _RestrictedUnpickler(self.stream, self).load()

  def read_storages(self) -> None:
    """Reads the key list and the raw storages that follow the object."""
    keys = self.load_pickle()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise WeightImportError(f"{self.path}: malformed legacy storage key list")
    for key in keys:
      storage = self.storages.get(key)
      if storage is None:
        raise WeightImportError(f"{self.path}: storage {key!r} is listed but unused")
      head = self.stream.read(8)
      numel = int.from_bytes(head, "little") if len(head) == 8 else -1
      if numel != storage.numel:
        raise WeightImportError(f"{self.path}: storage {key!r} holds {numel} elements, "
                                f"the pickle says {storage.numel} (truncated file?)")
      self._raw[key] = self.stream.read(numel * storage.dtype.itemsize)

  def has_bytes(self, key: str) -> bool:
    return key in self._raw

  def read_storage(self, key: str) -> bytes:
    if key not in self._raw:
      raise WeightImportError(f"{self.path}: storage {key!r} was not written to the file")
    return self._raw[key]


def _check_ints(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, tuple) or not all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
    raise WeightImportError(f"malformed tensor {what}: {value!r}")
  return value


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any,
                       stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None,
                       metadata: Any = None) -> np.ndarray:
  """What ``torch._utils._rebuild_tensor_v2`` resolves to: a numpy copy.

  A tensor is a strided view of its storage (transposes and slices saved from
  a larger tensor keep their strides), so the array is ``as_strided`` on the
  flat storage, after checking that every element it reaches lies inside it:
  ``as_strided`` itself would read whatever memory follows.
  """
  del requires_grad, backward_hooks, metadata  # autograd state: irrelevant
  if not isinstance(storage, _Storage):
    raise WeightImportError(f"malformed tensor: storage {storage!r}")
  if not storage.available():
    return _PendingTensor((storage, storage_offset, size, stride))
  (offset,) = _check_ints((storage_offset,), "offset")
  size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
  if len(size) != len(stride):
    raise WeightImportError(f"malformed tensor: size {size}, stride {stride}")
  flat = storage.flat()
  if math.prod(size) == 0:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise WeightImportError(
        f"malformed tensor: size {size}, stride {stride}, offset {offset} "
        f"reach element {last} of a storage of {flat.size}")
  item = flat.itemsize
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=[s * item for s in stride],
      writeable=False)
  return np.array(view, order="C")  # a compact copy, not a view


class _PendingTensor:
  """A legacy file's tensor, built once the storage bytes after the pickle are read."""

  def __init__(self, args: tuple[Any, ...]):
    self.args = args


def _materialise(obj: Any) -> Any:
  """``obj`` with every :class:`_PendingTensor` built; dicts change in place
  (a state dict keeps its ``_metadata``)."""
  if isinstance(obj, _PendingTensor):
    return _rebuild_tensor_v2(*obj.args)
  if isinstance(obj, dict):
    for key, value in obj.items():
      obj[key] = _materialise(value)
    return obj
  if isinstance(obj, list):
    return [_materialise(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialise(v) for v in obj)
  if isinstance(obj, argparse.Namespace):
    return argparse.Namespace(**_materialise(vars(obj)))
  return obj


def _rebuild_parameter(data: Any, requires_grad: Any = False,
                       backward_hooks: Any = None,
                       state: Any = None) -> Any:
  """What ``torch._utils._rebuild_parameter[_with_state]`` resolves to."""
  del requires_grad, backward_hooks, state
  if not isinstance(data, (np.ndarray, _PendingTensor)):
    raise WeightImportError(f"malformed parameter: {data!r}")
  return data


# (module, name) -> what the restricted unpickler hands back for it.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    # timm's training checkpoints pickle their argparse arguments beside the
    # weights; a Namespace is a plain attribute holder with no methods that
    # run on unpickling.
    ("argparse", "Namespace"): argparse.Namespace,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only :data:`_ALLOWED` globals and the storage types."""

  def __init__(self, data: bytes | io.BufferedIOBase, archive: _Archive | _LegacyArchive):
    super().__init__(io.BytesIO(data) if isinstance(data, bytes) else data)
    self.archive = archive

  def find_class(self, module: str, name: str) -> Any:
    pickled_as = f"{module}.{name}"
    # Protocol-2 pickles use Python 2 names (``__builtin__``), which pickle
    # maps to Python 3's before importing: map them too, so that a refused
    # global is reported (and matched) under the name that would be called.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
      module = _compat_pickle.IMPORT_MAPPING[module]
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    hint = ""
    if module.startswith(("torchvision.", "timm.")) or name in (
        "ResNet", "VGG"):
      hint = (" (the file pickles a whole model object; save "
              "model.state_dict() instead)")
    if pickled_as != f"{module}.{name}":
      hint = f" (pickled as {pickled_as}){hint}"
    raise WeightImportError(
        f"{self.archive.path}: refusing to unpickle global {module}.{name}: "
        f"only tensors, OrderedDict and the storage types are allowed{hint}; "
        f"{_RESAVE_HINT}")

  def persistent_load(self, pid: Any) -> _Storage:
    # The zip format's ids have five entries; the legacy format's a sixth,
    # view_metadata, which torch >= 1.0 writes as None (no storage views).
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
            and isinstance(pid[4], int) and pid[5:] in ((), (None,))):
      raise WeightImportError(
          f"{self.archive.path}: unsupported persistent id {pid!r}")
    _, storage_type, key, _, numel = pid[:5]
    storages = self.archive.storages
    if key not in storages:
      storages[key] = _Storage(self.archive, key, storage_type.dtype, numel)
    elif storages[key].dtype != storage_type.dtype:
      raise WeightImportError(
          f"{self.archive.path}: storage {key!r} used with two dtypes")
    return storages[key]


def unpickle(path: str) -> Any:
  """The object ``torch.save`` wrote to ``path``, tensors as numpy arrays.

  Raises:
    WeightImportError: not a zip-format torch file, or its pickle names a
      global outside the allowed few (nothing from the pickle runs).
  """
  with open(path, "rb") as f:
    head = f.read(len(LEGACY_MAGIC))
  if not zipfile.is_zipfile(path):
    if head.startswith(LEGACY_MAGIC):
      return _unpickle_legacy(path)
    raise WeightImportError(f"{path}: not a torch.save file (neither a zip nor the "
                            "legacy format)")
  with zipfile.ZipFile(path) as zf:
    archive = _Archive(path, zf)
    unpickler = _RestrictedUnpickler(archive.read_pickle(), archive)
    try:
      return unpickler.load()
    except WeightImportError:
      raise
    except Exception as e:  # a corrupt pickle: any exception type is possible
      raise WeightImportError(f"{path}: cannot read the pickle: {e!r}") from e


def _unpickle_legacy(path: str) -> Any:
  """:func:`unpickle` of the legacy format (module docstring)."""
  with open(path, "rb") as f:
    try:
      archive = _LegacyArchive(path, f)
      obj = archive.load_pickle()
      archive.read_storages()
    except WeightImportError:
      raise
    except Exception as e:  # a corrupt pickle: any exception type is possible
      raise WeightImportError(f"{path}: cannot read the legacy torch file: {e!r}") from e
  # Tensors were built lazily from their storages: materialise them now that
  # the bytes are read, so nothing refers to the closed file.
  return _materialise(obj)


def find_state_dict(obj: Any, where: str) -> dict[str, np.ndarray]:
  """The tensors of a state dict, or of a training checkpoint holding one.

  Training scripts save ``{'state_dict': ...}`` (timm) or ``{'model': ...}``
  (torchvision's references) with epochs, optimizer state and arguments
  around it. Non-array entries (e.g. ``_extra_state``) are dropped, and a
  ``module.`` prefix on every name (``DataParallel``) is removed.
  """
  if not isinstance(obj, dict):
    raise WeightImportError(
        f"{where}: holds a {type(obj).__name__}, not a state dict")
  for key in ("state_dict", "model"):
    if isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  tensors = {k: v for k, v in obj.items()
             if isinstance(k, str) and isinstance(v, np.ndarray)}
  if not tensors:
    keys = sorted(map(str, obj))[:10]
    raise WeightImportError(f"{where}: no tensors found (top-level keys: "
                            f"{keys})")
  if all(k.startswith("module.") for k in tensors):
    tensors = {k[len("module."):]: v for k, v in tensors.items()}
  return tensors


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """``{name: array}`` of the state dict in the ``torch.save`` file ``path``.

  Arrays keep their dtype (float32, float16, ``ml_dtypes.bfloat16``, int64,
  ...) and are compact copies, whatever the strides they were saved with.

  Raises:
    WeightImportError: see :func:`unpickle` and :func:`find_state_dict`.
  """
  return find_state_dict(unpickle(path), path)
