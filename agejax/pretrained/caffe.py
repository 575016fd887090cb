"""Caffe nets (``.caffemodel`` + ``.prototxt``) in agejax's paths: DEX's released models.

DEX (Rothe, Timofte, Van Gool, ICCV 2015 workshops; IJCV 2018) released its
age networks as Caffe files: ``age.prototxt`` with ``dex_imdb_wiki.caffemodel``
(real age) or ``dex_chalearn_iccv2015.caffemodel`` (apparent age). Both are
VGG-16 (conv1_1..conv5_3, fc6, fc7) with ``fc8-101``, a softmax over ages
0..100 read out as its expected value: agejax's ``vgg16`` with a ``dex``
head. They take 224 px BGR images in 0..255 minus the mean of ILSVRC 2012's
mean image (``model.preprocessing=dex``) of faces cropped with a 40% margin.

Read without Caffe and without generated protobuf classes
(:mod:`agejax.pretrained.protobuf_wire`):

* the prototxt (protobuf text format) says the network: its input size
  (``input:`` with ``input_dim:`` or ``input_shape``, or an ``Input`` layer)
  and its layers, current (``layer { type: "Convolution" }``) or legacy V1
  (``layers { type: CONVOLUTION }``). Only what VGG-16 is made of is taken:
  13 convolutions 3x3 pad 1 stride 1 in stages of 2, 2, 3, 3, 3, each stage
  followed by a 2x2 stride 2 max pool, three inner products, ReLU after each
  convolution and the first two inner products, Dropout, Softmax; anything
  else stops the import naming the layer.
* the caffemodel (a binary ``NetParameter``) gives each layer's blobs by
  name, from ``layer`` (field 100, ``LayerParameter``) or legacy ``layers``
  (field 2, ``V1LayerParameter``) messages, with shapes as ``shape`` or as
  legacy num/channels/height/width.

Layouts: Caffe convolutions are [out, in, kh, kw] (agejax [kh, kw, in,
out]); inner products [out, in]; fc6's inputs are pool5 flattened in C, H,
W order at the prototxt's input size (agejax flattens H, W, C), so its rows
are permuted. The network's first convolution sees BGR as in Caffe.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
from typing import Any

import numpy as np

from agejax.models import vgg
from agejax.pretrained import protobuf_wire
from agejax.pretrained.types import Imported, WeightImportError

SOURCE = "caffe"
# What the released DEX nets need beyond the weights (model.* keys).
OVERRIDES = {"preprocessing": "dex"}
# The crop DEX's faces were made with: 40% of the face box added on each side.
DEX_MARGIN = 0.4
HEAD = "dex"  # fc8-101: a softmax over ages 0..100

# Legacy V1LayerParameter.LayerType numbers and names -> current type names.
_V1_TYPES = {
    4: "Convolution", 18: "ReLU", 17: "Pooling", 14: "InnerProduct", 6: "Dropout",
    20: "Softmax", 21: "SoftmaxWithLoss", 5: "Data", 12: "ImageData", 29: "MemoryData",
    15: "LRN", 3: "Concat", 8: "Flatten", 1: "Accuracy", 2: "BNLL", 19: "Sigmoid",
    23: "TanH", 25: "Eltwise", 33: "Slice", 39: "Deconvolution", 35: "AbsVal",
}
_V1_NAMES = {"CONVOLUTION": "Convolution", "RELU": "ReLU", "POOLING": "Pooling",
             "INNER_PRODUCT": "InnerProduct", "DROPOUT": "Dropout", "SOFTMAX": "Softmax",
             "SOFTMAX_LOSS": "SoftmaxWithLoss", "DATA": "Data", "LRN": "LRN",
             "CONCAT": "Concat", "FLATTEN": "Flatten", "SIGMOID": "Sigmoid",
             "TANH": "TanH", "ELTWISE": "Eltwise", "INPUT": "Input"}
_SUPPORTED = {"Convolution", "ReLU", "Pooling", "InnerProduct", "Dropout", "Softmax", "Input"}


# ---------------------------------------------------------------------------
# The prototxt: protobuf text format.

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}:<>\[\],;]|[^\s{}:<>\[\],;#"\']+')


def parse_text(text: str, where: str = "prototxt") -> dict[str, list[Any]]:
  """A text-format message as ``{field: [value, ...]}``; nested messages are dicts,
  strings lose their quotes, numbers stay strings (the reader converts)."""
  tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("#")]
  pos = 0

  def message(closing: str | None) -> dict[str, list[Any]]:
    nonlocal pos
    out: dict[str, list[Any]] = {}
    while pos < len(tokens):
      name = tokens[pos]
      if name in ("}", ">"):
        if closing is None:
          raise WeightImportError(f"{where}: unexpected {name!r}")
        pos += 1
        return out
      if name in (",", ";"):
        pos += 1
        continue
      pos += 1
      if pos < len(tokens) and tokens[pos] == ":":
        pos += 1
      if pos >= len(tokens):
        raise WeightImportError(f"{where}: {name!r} has no value")
      if tokens[pos] in ("{", "<"):
        close = "}" if tokens[pos] == "{" else ">"
        pos += 1
        out.setdefault(name, []).append(message(close))
      else:
        value = tokens[pos]
        pos += 1
        if value[:1] in "\"'":
          value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
        out.setdefault(name, []).append(value)
    if closing is not None:
      raise WeightImportError(f"{where}: a message is not closed (missing {closing!r})")
    return out

  return message(None)


def _one(msg: dict[str, list[Any]], field: str, default: Any = None) -> Any:
  values = msg.get(field)
  return values[-1] if values else default


@dataclasses.dataclass(frozen=True)
class Layer:
  name: str
  type: str
  bottom: tuple[str, ...]
  top: tuple[str, ...]
  params: dict[str, list[Any]]


def _layers_from_text(net: dict[str, list[Any]]) -> list[Layer]:
  out = []
  for key in ("layer", "layers"):
    for msg in net.get(key, []):
      kind = str(_one(msg, "type", ""))
      kind = _V1_NAMES.get(kind, kind) if key == "layers" else kind
      out.append(Layer(str(_one(msg, "name", "")), kind, tuple(msg.get("bottom", [])),
                       tuple(msg.get("top", [])), msg))
  return out


def _input_side(net: dict[str, list[Any]], layers: list[Layer], where: str) -> int:
  dims = [int(d) for d in net.get("input_dim", [])]
  if not dims and net.get("input_shape"):
    dims = [int(d) for d in net["input_shape"][0].get("dim", [])]
  if not dims:
    for layer in layers:
      if layer.type == "Input":
        shape = _one(_one(layer.params, "input_param", {}), "shape", {})
        dims = [int(d) for d in shape.get("dim", [])]
  if len(dims) != 4:
    raise WeightImportError(f"{where}: no input shape (input_dim x4, input_shape or an Input "
                            "layer with N, C, H, W)")
  _, channels, height, width = dims
  if channels != 3 or height != width or height % 32:
    raise WeightImportError(f"{where}: input {channels} x {height} x {width}: agejax's VGG-16 "
                            "takes 3 channels, square, a multiple of 32 px")
  return height


def _int(msg: dict[str, list[Any]], field: str, default: int) -> int:
  value = _one(msg, field)
  return default if value is None else int(value)


def _check_conv(layer: Layer, where: str) -> None:
  p = _one(layer.params, "convolution_param", {})
  kernel = _int(p, "kernel_size", _int(p, "kernel_h", 0))
  pad, stride, group = _int(p, "pad", _int(p, "pad_h", 0)), _int(p, "stride", 1), _int(p, "group", 1)
  if (kernel, pad, stride, group) != (3, 1, 1, 1) or p.get("dilation"):
    raise WeightImportError(f"{where}: layer {layer.name!r} is a {kernel}x{kernel} convolution "
                            f"pad {pad} stride {stride} group {group}; VGG-16's are 3x3 pad 1 "
                            "stride 1")


def _check_pool(layer: Layer, where: str) -> None:
  p = _one(layer.params, "pooling_param", {})
  pool = str(_one(p, "pool", "MAX"))
  kernel, stride = _int(p, "kernel_size", 0), _int(p, "stride", 1)
  if pool not in ("MAX", "0") or (kernel, stride) != (2, 2) or _int(p, "pad", 0):
    raise WeightImportError(f"{where}: layer {layer.name!r} is a {pool} pool {kernel}x{kernel} "
                            f"stride {stride}; VGG-16's are 2x2 stride 2 max pools")


@dataclasses.dataclass(frozen=True)
class Network:
  """A prototxt read as agejax's VGG-16: the names of its layers in order, its input."""
  image_size: int
  convs: tuple[str, ...]  # 13
  fcs: tuple[str, ...]  # fc6, fc7, the head
  width: int  # model.width: conv1_1's outputs (64 for the published net)
  ages: int  # the head's outputs


def read_prototxt(path: str) -> Network:
  """The network a prototxt describes, checked to be VGG-16 with a head (module doc)."""
  where = os.path.basename(path)
  try:
    with open(path, encoding="utf-8") as f:
      net = parse_text(f.read(), where)
  except (OSError, UnicodeDecodeError) as e:
    raise WeightImportError(f"{path}: cannot read the prototxt ({e})") from e
  layers = _layers_from_text(net)
  if not layers:
    raise WeightImportError(f"{where}: no layer or layers entries: not a Caffe net description")
  for layer in layers:
    if layer.type not in _SUPPORTED:
      raise WeightImportError(f"{where}: layer {layer.name!r} is a {layer.type}, which agejax's "
                              "VGG-16 with a DEX head cannot express")
  image_size = _input_side(net, layers, where)
  pattern = "".join({"Convolution": "c", "Pooling": "p", "InnerProduct": "f"}.get(l.type, "")
                    for l in layers)
  expected = "p".join("c" * n for n in vgg.CONVS_PER_STAGE) + "pfff"
  if pattern != expected:
    raise WeightImportError(f"{where}: the layers are not VGG-16's (convolutions c, pools p, "
                            f"inner products f: {pattern}, VGG-16 with a head is {expected})")
  relu_inputs = {b for l in layers if l.type == "ReLU" for b in l.bottom}
  computed = [l for l in layers if l.type in ("Convolution", "InnerProduct")]
  for layer in computed[:-1]:
    if not set(layer.top) & relu_inputs:
      raise WeightImportError(f"{where}: layer {layer.name!r} is not followed by a ReLU")
  for layer in layers:
    if layer.type == "Convolution":
      _check_conv(layer, where)
    elif layer.type == "Pooling":
      _check_pool(layer, where)
  outputs = [_int(_one(l.params, "convolution_param" if l.type == "Convolution"
                        else "inner_product_param", {}), "num_output", 0) for l in computed]
  width = outputs[0]
  expected_outputs = [min(64 * 2**(s - 1), 512) * width // 64
                      for s, n in enumerate(vgg.CONVS_PER_STAGE, start=1) for _ in range(n)]
  expected_outputs += [64 * width, 64 * width]
  for layer, got, want in zip(computed, outputs, expected_outputs):
    if got != want or width <= 0:
      raise WeightImportError(f"{where}: layer {layer.name!r} has {got} outputs; VGG-16 of "
                              f"conv1_1's width {width} has {want} there")
  return Network(image_size, tuple(l.name for l in computed[:13]),
                 tuple(l.name for l in computed[13:]), width, outputs[-1])


# ---------------------------------------------------------------------------
# The caffemodel: a binary NetParameter.

# (name, blobs) field numbers of LayerParameter (in NetParameter field 100)
# and of the legacy V1LayerParameter (field 2).
_LAYER_FIELDS = {100: (1, 7), 2: (4, 6)}
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE = 5, 7, 8


def _blob(data: memoryview) -> tuple[tuple[int, ...], np.ndarray]:
  """``(shape, float32 values)`` of a BlobProto."""
  msg = protobuf_wire.grouped(data)
  if _BLOB_SHAPE in msg:
    shape = tuple(protobuf_wire.varints(protobuf_wire.grouped(msg[_BLOB_SHAPE][-1][1]).get(1, [])))
  else:
    shape = tuple(int(msg[f][-1][1]) if f in msg else 1
                  for f in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH))
  values = (protobuf_wire.floats(msg[_BLOB_DATA]) if _BLOB_DATA in msg
            else protobuf_wire.doubles(msg.get(_BLOB_DOUBLE, [])).astype(np.float32))
  return shape, values


def read_blobs(path: str) -> dict[str, list[tuple[tuple[int, ...], np.ndarray]]]:
  """``{layer name: [(shape, values), ...]}`` of every layer with blobs in a caffemodel."""
  where = os.path.basename(path)
  with open(path, "rb") as f:
    if os.fstat(f.fileno()).st_size == 0:
      raise WeightImportError(f"{where}: empty file")
    buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
  out: dict[str, list[tuple[tuple[int, ...], np.ndarray]]] = {}
  layer_messages = 0
  try:
    for number, kind, value in protobuf_wire.fields(memoryview(buffer)):
      if number not in _LAYER_FIELDS or kind != protobuf_wire.BYTES:
        continue
      layer_messages += 1
      name_field, blobs_field = _LAYER_FIELDS[number]
      layer = protobuf_wire.grouped(value)
      name = protobuf_wire.text(layer[name_field][-1][1]) if name_field in layer else ""
      blobs = [_blob(v) for k, v in layer.get(blobs_field, []) if k == protobuf_wire.BYTES]
      if blobs:
        # np.array copies: the values must outlive the file's mapping.
        out[name] = [(shape, np.array(values, np.float32)) for shape, values in blobs]
  except protobuf_wire.WireError as e:
    raise WeightImportError(f"{where}: not a readable Caffe model ({e}; truncated or not a "
                            ".caffemodel)") from None
  if not layer_messages:
    raise WeightImportError(f"{where}: no layer or layers messages: not a Caffe model")
  return out


def _weights(blobs: dict[str, list], layer: str, shapes: tuple[tuple[int, ...], ...],
             where: str) -> list[np.ndarray]:
  """The layer's weight and bias, reshaped to Caffe's shapes, with a clear error otherwise."""
  if layer not in blobs:
    raise WeightImportError(f"{where}: layer {layer!r} has no weights in the caffemodel "
                            f"(it has weights for {', '.join(blobs) or 'no layer'})")
  found = blobs[layer]
  if len(found) != 2:
    raise WeightImportError(f"{where}: layer {layer!r} has {len(found)} blobs, not a weight "
                            "and a bias")
  out = []
  for (shape, values), want in zip(found, shapes):
    if values.size != int(np.prod(want)):
      raise WeightImportError(f"{where}: layer {layer!r} has a blob of shape {list(shape)} "
                              f"({values.size} values) where the prototxt needs {list(want)}")
    out.append(values.reshape(want))
  return out


def read(path: str, prototxt: str) -> Imported:
  """A Caffe VGG-16 with an age head (DEX's nets) in agejax paths, head included.

  The width follows the prototxt (``model.width`` = conv1_1's outputs), and
  every blob must have the size it describes; the head's ages (``fc8-101``:
  0..100) go to ``Imported.head``.
  """
  if not prototxt:
    raise WeightImportError(f"{path}: a Caffe model needs its network description "
                            "(--prototxt age.prototxt)")
  net = read_prototxt(prototxt)
  blobs = read_blobs(path)
  where = os.path.basename(path)
  width, ages = net.width, net.ages
  params: dict[str, np.ndarray] = {}
  cin, index = 3, 0
  for s, num_convs in enumerate(vgg.CONVS_PER_STAGE, start=1):
    cout = min(64 * 2**(s - 1), 512) * width // 64
    for c in range(1, num_convs + 1):
      kernel, bias = _weights(blobs, net.convs[index], ((cout, cin, 3, 3), (cout,)), where)
      params[f"stage{s}/conv{c}/kernel"] = np.ascontiguousarray(kernel.transpose(2, 3, 1, 0))
      params[f"stage{s}/conv{c}/bias"] = bias
      cin, index = cout, index + 1
  side = net.image_size // 32
  units = 64 * width
  fc6, fc7, head = net.fcs
  kernel, bias = _weights(blobs, fc6, ((units, cin * side * side), (units,)), where)
  # Caffe flattens pool5 as C, H, W; agejax as H, W, C.
  params["fc6/kernel"] = np.ascontiguousarray(
      kernel.reshape(units, cin, side, side).transpose(2, 3, 1, 0).reshape(-1, units))
  params["fc6/bias"] = bias
  kernel, bias = _weights(blobs, fc7, ((units, units), (units,)), where)
  params["fc7/kernel"], params["fc7/bias"] = np.ascontiguousarray(kernel.T), bias
  kernel, bias = _weights(blobs, head, ((ages, units), (ages,)), where)
  params["head/fc/kernel"], params["head/fc/bias"] = np.ascontiguousarray(kernel.T), bias
  return Imported(arch="vgg16", params=params, batch_stats={},
                  model_overrides={**OVERRIDES, "width": width}, source=SOURCE,
                  head={"head": HEAD, "min_age": 0, "max_age": ages - 1},
                  image_size=net.image_size, margin=DEX_MARGIN)

