"""Exported models are loaded as data: what a model file may contain before it runs.

A SavedModel is a TensorFlow program: its serving function may read and
write files, print, or call back into Python. Before running one, agejax
reads ``saved_model.pb`` (without executing it) and walks every op the
``serving_default`` signature can reach, through the graph and every
function it calls, and refuses the first op outside :data:`SERVING_OPS`
(pure tensor arithmetic, variable reads, calls, and the ``XlaCallModule``
agejax's own exports consist of), naming it and the file. ``--trust_model``
skips the check for a model the user built and trusts.

An ONNX model may keep its weights in external files: each must lie inside
the model's folder (links followed). TFLite flatbuffers hold builtin ops and
no file access; ``model.json`` is checked by
:func:`agejax.serving.runtimes.check_meta`.
"""

from __future__ import annotations

import os
from typing import Iterator

from agejax.errors import UsageError

# Ops a serving function may use: tensor arithmetic, shapes, variable reads, calls.
SERVING_OPS = frozenset("""
    Abs Add AddN AddV2 ArgMax ArgMin AvgPool BatchMatMul BatchMatMulV2 BatchMatMulV3 BiasAdd
    BroadcastArgs BroadcastTo Cast Ceil ClipByValue ConcatV2 Const Conv2D
    DepthwiseConv2dNative DisableCopyOnRead Einsum Equal Erf Exp ExpandDims Fill Floor
    FloorDiv FloorMod FusedBatchNorm FusedBatchNormV3 GatherV2 Greater GreaterEqual Identity
    IdentityN Less LessEqual Log Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr MatMul Max
    MaxPool Maximum Mean Min Minimum Mul Neg NoOp NotEqual OneHot Pack Pad PadV2
    PartitionedCall Placeholder Pow PreventGradient Prod Range Rank ReadVariableOp RealDiv
    Relu Relu6 Reshape ResizeBilinear ReverseV2 Round Rsqrt Select SelectV2 Shape
    Sigmoid Sign Size Slice Softmax Softplus Split SplitV Sqrt Square SquaredDifference
    Squeeze StatefulPartitionedCall StopGradient StridedSlice Sub Sum Tanh Tile Transpose
    Unpack VarHandleOp XlaCallModule ZerosLike
""".split())


def _functions_called(node) -> Iterator[str]:
  for attr in node.attr.values():
    if attr.HasField("func"):
      yield attr.func.name
    for func in attr.list.func:
      yield func.name


def serving_ops(path: str, signature: str = "serving_default") -> Iterator[tuple[str, str]]:
  """``(op, where)`` of every node the signature can reach in ``path``'s saved_model.pb."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel

  model = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    model.ParseFromString(f.read())
  for meta_graph in model.meta_graphs:
    if signature not in meta_graph.signature_def:
      continue
    graph = meta_graph.graph_def
    nodes = {n.name: n for n in graph.node}
    library = {f.signature.name: f for f in graph.library.function}
    outputs = meta_graph.signature_def[signature].outputs.values()
    todo = [t.name.split(":")[0] for t in outputs]
    seen, called = set(), []
    while todo:  # the graph's nodes the outputs depend on
      name = todo.pop()
      if name in seen or name not in nodes:
        continue
      seen.add(name)
      node = nodes[name]
      yield node.op, f"node {name}"
      todo += [i.lstrip("^").split(":")[0] for i in node.input]
      called += _functions_called(node)
    done = set()
    while called:  # the functions they call, and the functions those call
      name = called.pop()
      if name in done or name not in library:
        continue
      done.add(name)
      for node in library[name].node_def:
        yield node.op, f"function {name}"
        called += _functions_called(node)


def check_saved_model(path: str) -> None:
  """Raises UsageError naming the first op of the serving function outside SERVING_OPS."""
  for op, where in serving_ops(path):
    if op not in SERVING_OPS:
      raise UsageError(f"{path}: the SavedModel's serving function runs op {op} ({where}), "
                       "which a model needs no access to (files, printing, Python); refused. "
                       "--trust_model runs a SavedModel you built yourself")


def check_onnx(file: str) -> None:
  """Raises UsageError when an ONNX model keeps data in a file outside its folder."""
  try:
    import onnx  # pylint: disable=import-outside-toplevel
  except ImportError:  # onnxruntime alone: it resolves external data beside the model
    return
  model = onnx.load(file, load_external_data=False)
  folder = os.path.realpath(os.path.dirname(file))
  tensors = list(model.graph.initializer)
  for tensor in tensors:
    for entry in tensor.external_data:
      if entry.key == "location":
        target = os.path.realpath(os.path.join(folder, entry.value))
        if not target.startswith(folder + os.sep):
          raise UsageError(f"{file}: tensor {tensor.name} keeps its data in {entry.value}, "
                           "outside the model's folder; refused")
