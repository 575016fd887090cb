"""Pretrained networks from the files people have: Keras .h5, torchvision/timm .pth and
.safetensors, Caffe .caffemodel (DEX's age nets, head included).

Nothing is downloaded: every reader takes a local file. :func:`read` detects
the format from the file's first bytes, maps the tensors onto agejax's
parameter paths and returns an :class:`Imported` that also says which layer
variant, BatchNorm epsilon and input preprocessing the weights need
(``model_overrides``). :func:`apply_overrides` puts those into the model
config, so training, evaluation and prediction all feed the network what it
was trained on.

A converted directory (``python -m agejax.convert --output DIR``) holds the
same tensors as an orbax checkpoint (``DIR/state``) and ``DIR/pretrained.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from agejax import json_files
from agejax.models import paths
from agejax.pretrained.types import Imported, WeightImportError

FORMATS = ("keras-h5", "torch", "safetensors", "caffe")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
META_FILE = "pretrained.json"
STATE_ITEM = "state"

__all__ = ["Imported", "WeightImportError", "FORMATS", "detect_format", "read", "load",
           "save_converted", "apply_overrides"]


def detect_format(path: str) -> str:
  """``keras-h5``, ``torch`` (torch.save zip or legacy) or ``safetensors``, from the first bytes;
  ``caffe`` by the ``.caffemodel`` suffix (protobuf has no magic bytes)."""
  if path.endswith(".caffemodel"):
    return "caffe"
  from agejax.pretrained import torch_pickle  # pylint: disable=import-outside-toplevel

  with open(path, "rb") as f:
    head = f.read(len(torch_pickle.LEGACY_MAGIC))
  if head.startswith(_HDF5_MAGIC):
    return "keras-h5"
  if head[:4] == _ZIP_MAGIC or head.startswith(torch_pickle.LEGACY_MAGIC):
    return "torch"  # torch.save's zip format, or its legacy stream
  head = head[:8]
  if len(head) == 8 and int.from_bytes(head, "little") < os.path.getsize(path):
    # safetensors: an 8-byte little-endian header length, then a JSON header.
    with open(path, "rb") as f:
      f.seek(8)
      if f.read(1) == b"{":
        return "safetensors"
  raise WeightImportError(
      f"{path}: not a Keras HDF5, torch.save (zip or legacy) or safetensors file (first bytes "
      f"{head!r}); a Caffe model is a .caffemodel with its --prototxt")


def read(path: str, fmt: str | None = None, arch: str | None = None,
         image_size: int = 224, prototxt: str | None = None) -> Imported:
  """Imports a weights file (format detected unless ``fmt`` is given).

  ``image_size`` matters only for VGG-16 from torchvision, whose adaptive
  pool before fc6 is folded into fc6 for inputs other than 224-255 px.
  ``prototxt`` is a Caffe model's network description (required for one).
  """
  if not os.path.isfile(path):
    raise WeightImportError(f"{path}: no such file")
  fmt = fmt or detect_format(path)
  if fmt == "keras-h5":
    from agejax.pretrained import keras_h5
    imported = keras_h5.read(path)
  elif fmt in ("torch", "safetensors"):
    from agejax.pretrained import torch_layout
    imported = torch_layout.read(path, arch=arch, image_size=image_size)
  elif fmt == "caffe":
    from agejax.pretrained import caffe
    imported = caffe.read(path, prototxt or "")
  else:
    raise WeightImportError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
  if arch and imported.arch != arch:
    raise WeightImportError(f"{path} holds a {imported.arch}, not the requested {arch}")
  return imported


def save_converted(imported: Imported, out_dir: str) -> str:
  """Writes ``imported`` as an orbax checkpoint plus its metadata; returns ``out_dir``."""
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  tree = {"params": paths.unflatten(imported.params),
          "batch_stats": paths.unflatten(imported.batch_stats)}
  ocp.PyTreeCheckpointer().save(os.path.join(out_dir, STATE_ITEM), tree, force=True)
  meta = {"arch": imported.arch, "source": imported.source,
          "model_overrides": imported.model_overrides, "head": imported.head,
          "image_size": imported.image_size, "margin": imported.margin}
  json_files.write_json(os.path.join(out_dir, META_FILE), meta)
  return out_dir


def load(path: str, image_size: int = 224) -> Imported:
  """A weights file, or a directory written by :func:`save_converted`."""
  if os.path.isfile(path):
    if detect_format(path) == "caffe":
      raise WeightImportError(f"{path}: convert a Caffe model first (python -m agejax.convert "
                              "--input MODEL.caffemodel --prototxt NET.prototxt --output DIR) "
                              "and use DIR")
    return read(path, image_size=image_size)
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    raise WeightImportError(f"{path}: neither a weights file nor a converted directory "
                            f"(no {META_FILE})")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    arch, overrides, source = meta["arch"], meta["model_overrides"], meta["source"]
  except (ValueError, KeyError, TypeError) as e:
    raise WeightImportError(f"{meta_path}: not a converted-weights description ({e!r}); "
                            "convert the weights again") from None
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(os.path.abspath(path), STATE_ITEM))
  as_numpy = lambda t: {p: np.asarray(v) for p, v in paths.flatten(t or {}).items()}
  return Imported(arch=arch, params=as_numpy(tree["params"]),
                  batch_stats=as_numpy(tree.get("batch_stats")), model_overrides=overrides,
                  source=source, head=meta.get("head") or {},
                  image_size=int(meta.get("image_size") or 0), margin=meta.get("margin"))


def apply_overrides(model_cfg: ml_collections.ConfigDict, imported: Imported) -> dict[str, Any]:
  """Sets the model keys the weights need (variant, epsilon, preprocessing); returns what changed."""
  if model_cfg.arch != imported.arch:
    raise WeightImportError(f"model.arch: the pretrained weights are a {imported.arch}, "
                            f"the config asks for a {model_cfg.arch}")
  wanted = {"width": 64, **imported.model_overrides}  # published networks are width 64
  changed = {}
  for key, value in wanted.items():
    if model_cfg[key] != value:
      changed[key] = (model_cfg[key], value)
      model_cfg[key] = value
  if changed:
    logging.warning("pretrained %s weights need %s", imported.source,
                    ", ".join(f"model.{k}={new!r} (was {old!r})" for k, (old, new) in changed.items()))
  return changed
