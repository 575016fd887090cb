"""Caffe nets written in the real formats: a binary NetParameter and a prototxt.

A VGG-16 with an age head (DEX's ``age.prototxt`` layout: conv1_1..conv5_3,
pool1..pool5, fc6, relu6, drop6, fc7, relu7, drop7, ``fc8-101``, ``prob``)
at a reduced width and input size, random weights, as the current
``layer`` (LayerParameter, field 100, blob shapes as ``shape``) or the
legacy ``layers`` (V1LayerParameter, field 2, num/channels/height/width)
messages; the prototxt in the matching text syntax.
"""

from __future__ import annotations

import numpy as np

STAGES = (2, 2, 3, 3, 3)
V1_TYPES = {"Convolution": 4, "ReLU": 18, "Pooling": 17, "InnerProduct": 14, "Dropout": 6,
            "Softmax": 20}
V1_NAMES = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "Pooling": "POOLING",
            "InnerProduct": "INNER_PRODUCT", "Dropout": "DROPOUT", "Softmax": "SOFTMAX"}


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes | int | str) -> bytes:
  if isinstance(payload, int):
    return _varint(number << 3) + _varint(payload)
  if isinstance(payload, str):
    payload = payload.encode()
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(values: np.ndarray, legacy: bool) -> bytes:
  shape = values.shape
  if legacy:
    dims = (1,) * (4 - len(shape)) + shape
    head = b"".join(_field(f, d) for f, d in zip((1, 2, 3, 4), dims))
  else:
    head = _field(7, _field(1, b"".join(_varint(d) for d in shape)))
  return head + _field(5, values.astype("<f4").tobytes())


def layers(width: int) -> tuple[list[dict], int]:
  """The convolution stages: name, type, bottom, top, params (text), weight shapes
  (Caffe's); and pool5's channels."""
  out, cin, bottom = [], 3, "data"
  for s, convs in enumerate(STAGES, start=1):
    cout = min(64 * 2 ** (s - 1), 512) * width // 64
    for c in range(1, convs + 1):
      name = f"conv{s}_{c}"
      out.append(dict(name=name, type="Convolution", bottom=bottom, top=name,
                      params="convolution_param { num_output: %d pad: 1 kernel_size: 3 }" % cout,
                      shapes=((cout, cin, 3, 3), (cout,))))
      out.append(dict(name=f"relu{s}_{c}", type="ReLU", bottom=name, top=name))
      cin, bottom = cout, name
    out.append(dict(name=f"pool{s}", type="Pooling", bottom=bottom, top=f"pool{s}",
                    params="pooling_param { pool: MAX kernel_size: 2 stride: 2 }"))
    bottom = f"pool{s}"
  return out, cin


def net(width: int, image_size: int, ages: int = 101) -> list[dict]:
  """Every layer of the net, the convolutions then fc6, fc7, the head and prob."""
  convs, channels = layers(width)
  units, side = 64 * width, image_size // 32

  def inner(name, bottom, outputs, inputs, then=()):
    return [dict(name=name, type="InnerProduct", bottom=bottom, top=name,
                 params="inner_product_param { num_output: %d }" % outputs,
                 shapes=((outputs, inputs), (outputs,))), *then]

  def relu_drop(k, top):
    return (dict(name=f"relu{k}", type="ReLU", bottom=top, top=top),
            dict(name=f"drop{k}", type="Dropout", bottom=top, top=top,
                 params="dropout_param { dropout_ratio: 0.5 }"))

  fcs = (inner("fc6", "pool5", units, channels * side * side, relu_drop(6, "fc6"))
         + inner("fc7", "fc6", units, units, relu_drop(7, "fc7"))
         + inner("fc8-101", "fc7", ages, units)
         + [dict(name="prob", type="Softmax", bottom="fc8-101", top="prob")])
  return convs + fcs


def random_weights(layer_list: list[dict], seed: int = 0) -> dict[str, list[np.ndarray]]:
  """He-scaled random weights (so activations neither vanish nor explode), small biases;
  the head's scaled down so the softmax over ages is not one-hot (the expected age
  then differs between images)."""
  rng = np.random.default_rng(seed)
  out = {}
  for layer in layer_list:
    if "shapes" in layer:
      weight, bias = layer["shapes"]
      fan_in = int(np.prod(weight[1:]))
      gain = 0.01 if layer["name"] == layer_list[-2]["name"] else 1.0
      out[layer["name"]] = [rng.normal(0, gain * np.sqrt(2.0 / fan_in), weight).astype(np.float32),
                            rng.normal(0, 0.01, bias).astype(np.float32)]
  return out


def prototxt(layer_list: list[dict], image_size: int, legacy: bool, input_layer: bool = False
             ) -> str:
  """The net's text: ``input:``/``input_dim:`` (or an ``Input`` layer), then the layers."""
  lines = ['name: "VGG_ILSVRC_16_layers"']
  if input_layer:
    lines.append('layer { name: "data" type: "Input" top: "data" input_param { shape { '
                 f'dim: 1 dim: 3 dim: {image_size} dim: {image_size} }} }} }}')
  else:
    lines += ['input: "data"', "input_dim: 1", "input_dim: 3",
              f"input_dim: {image_size}", f"input_dim: {image_size}"]
  for layer in layer_list:
    kind = V1_NAMES[layer["type"]] if legacy else f'"{layer["type"]}"'
    lines.append(f'{"layers" if legacy else "layer"} {{\n  name: "{layer["name"]}"\n'
                 f'  type: {kind}\n  bottom: "{layer["bottom"]}"\n  top: "{layer["top"]}"\n'
                 f'  {layer.get("params", "")}\n}}')
  return "\n".join(lines) + "\n"


def caffemodel(layer_list: list[dict], weights: dict[str, list[np.ndarray]], legacy: bool
               ) -> bytes:
  """The binary NetParameter: the net's name and each layer with its blobs."""
  out = [_field(1, "VGG_ILSVRC_16_layers")]
  for layer in layer_list:
    blobs = [_blob(w, legacy) for w in weights.get(layer["name"], [])]
    if legacy:
      body = (_field(2, layer["bottom"]) + _field(3, layer["top"]) + _field(4, layer["name"])
              + _field(5, V1_TYPES[layer["type"]]) + b"".join(_field(6, b) for b in blobs))
      out.append(_field(2, body))
    else:
      body = (_field(1, layer["name"]) + _field(2, layer["type"]) + _field(3, layer["bottom"])
              + _field(4, layer["top"]) + b"".join(_field(7, b) for b in blobs))
      out.append(_field(100, body))
  return b"".join(out)


def write(directory, width: int = 4, image_size: int = 64, legacy: bool = False,
          seed: int = 0, input_layer: bool = False) -> tuple[str, str]:
  """Writes ``age.prototxt`` and ``dex.caffemodel`` under ``directory``; their paths."""
  import os
  layer_list = net(width, image_size)
  proto = os.path.join(str(directory), "age.prototxt")
  model = os.path.join(str(directory), "dex.caffemodel")
  with open(proto, "w") as f:
    f.write(prototxt(layer_list, image_size, legacy, input_layer))
  with open(model, "wb") as f:
    f.write(caffemodel(layer_list, random_weights(layer_list, seed), legacy))
  return proto, model
