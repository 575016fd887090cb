"""A bundle's network written for other runtimes: SavedModel, TFLite, ONNX.

All three are traced from one function, ``graph.serving_function``: uint8
face crops in, ``age``, ``spread`` (and ``probabilities`` for softmax heads)
out, with the resize, centre crop and normalisation inside.

* **SavedModel**: ``jax2tf.convert`` (native serialization: the StableHLO
  of the JAX function inside an ``XlaCallModule`` op, so TF runs exactly the
  ops JAX lowered) wrapped in a ``tf.Module`` whose weights are
  ``tf.Variable``s, with one ``serving_default`` signature over
  ``uint8 [N, H, W, 3]`` (``N`` fixed by ``batch`` or polymorphic, ``H`` and
  ``W`` polymorphic). orbax-export's ``JaxModule`` wraps the same
  ``jax2tf.convert``; written out here it is one signature and a dozen
  lines, and it keeps orbax-export's version pins off the checkpointer.
* **TFLite**: TF's converter on that SavedModel (it legalises the StableHLO
  to TFLite builtins); ``quantize="dynamic"`` stores int8 weights
  (dynamic-range quantisation).
* **ONNX**: tf2onnx on a TFLite float model of a graph traced at the stored
  crop size (``[N, stored, stored, 3]``): tf2onnx cannot yet express the
  dynamic-size resize's weight matrices, and jax2onnx 0.17 mislays NHWC
  layouts across the residual additions. Clients give it crops at the stored
  size; ``agejax.predict`` does.

``export(meta, params, batch_stats, output, fmt)`` writes the model and ``model.json``
(the bundle's, plus ``export``: format, file, input, outputs, quantisation,
opset) and returns that ``model.json``; ``verify`` runs the written model in
its runtime against the JAX function.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agejax import json_files
from agejax.models import cpu_lowering
from agejax.serving import graph
from agejax.serving import runtimes

FORMATS = ("bundle", "saved_model", "tflite", "onnx")
QUANTIZATIONS = ("none", "dynamic")
ONNX_OPSET = 17
# Float formats must give the JAX ages to this many years (absolute).
TOLERANCE = 1e-4


def _require(what: str, module: str) -> Any:
  import importlib  # pylint: disable=import-outside-toplevel
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise runtimes.MissingExtra(what, e) from e


def _tf_module(meta: dict[str, Any], params: Any, batch_stats: Any, batch: int | None,
               size: int | None) -> Any:
  """A ``tf.Module`` with the serving signature (``size``: fixed H = W, or any)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  jax2tf = _require("a SavedModel export", "jax.experimental.jax2tf")

  serve = graph.serving_function(meta)
  n = "b" if batch is None else str(batch)
  hw = "h, w" if size is None else f"{size}, {size}"
  with cpu_lowering.portable():
    converted = jax2tf.convert(serve, polymorphic_shapes=[None, None, f"({n}, {hw}, 3)"],
                               with_gradient=False, native_serialization_platforms=("cpu",))
  module = tf.Module()
  to_variables = lambda tree: tf.nest.map_structure(
      lambda v: tf.Variable(np.asarray(v), trainable=False), tree)
  module.params = to_variables(params)
  module.batch_stats = to_variables(batch_stats)
  spec = tf.TensorSpec([batch, size, size, 3], tf.uint8, name=runtimes.INPUT)

  @tf.function(input_signature=[spec], autograph=False)
  def serving_default(images):
    # jax2tf traces here, inside portable(): the plain convolutions.
    with cpu_lowering.portable():
      return converted(module.params, module.batch_stats, images)

  module.serving_default = serving_default
  return module


def _save_tf(module: Any, directory: str) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.saved_model.save(module, directory,
                      signatures={runtimes.SIGNATURE: module.serving_default})


def _tflite_bytes(saved_model_dir: str, quantize: str) -> bytes:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize == "dynamic":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


def _onnx_bytes(tflite_file: str) -> bytes:
  tf2onnx = _require("an ONNX export", "tf2onnx")
  model, _ = tf2onnx.convert.from_tflite(tflite_file, opset=ONNX_OPSET)
  # tf2onnx keeps TFLite's tensor names (``serving_default_images:0``,
  # ``StatefulPartitionedCall:1``); give them the signature's names, as
  # the other formats have them.
  interpreter = runtimes.tflite_interpreter(tflite_file)
  signature = interpreter._get_full_signature_list()[runtimes.SIGNATURE]  # pylint: disable=protected-access
  tensor_names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
  rename = {tensor_names[i]: name for part in ("inputs", "outputs")
            for name, i in signature[part].items()}
  for value in (*model.graph.input, *model.graph.output):
    value.name = rename.get(value.name, value.name)
  for node in model.graph.node:
    node.input[:] = [rename.get(n, n) for n in node.input]
    node.output[:] = [rename.get(n, n) for n in node.output]
  return model.SerializeToString()


def export(meta: dict[str, Any], params: Any, batch_stats: Any, output: str, fmt: str, *,
           quantize: str = "none", batch: int | None = None,
           overwrite: bool = False) -> dict[str, Any]:
  """Writes a bundle's model (its model.json and weights) to ``output`` as ``fmt``.

  Returns the written model.json.
  """
  if fmt not in FORMATS[1:]:
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
  if quantize not in QUANTIZATIONS:
    raise ValueError(f"unknown quantization {quantize!r}; use one of {QUANTIZATIONS}")
  if quantize != "none" and fmt != "tflite":
    raise ValueError("--quantize applies to --format=tflite only")
  if batch is not None and batch <= 0:
    raise ValueError(f"--batch must be positive or dynamic, got {batch}")
  _require(f"a {fmt} export", "tensorflow")
  output = os.path.abspath(output)
  meta_file = os.path.join(output, runtimes.MODEL_FILE)
  if os.path.exists(meta_file) and not overwrite:
    raise FileExistsError(f"{output} already holds an exported model (use --overwrite)")
  # Only what an export writes: never anything else in there.
  for entry in (runtimes.MODEL_FILE, *runtimes.FILES.values(), "variables", "assets",
                "fingerprint.pb"):
    path = os.path.join(output, entry)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  stored = int(meta["crop"]["stored_size"])
  size = stored if fmt == "onnx" else None
  outputs = ["age", "spread"] + (["probabilities"] if meta["head"] in graph.SOFTMAX_HEADS
                                 else [])
  module = _tf_module(meta, params, batch_stats, batch, size)
  with tempfile.TemporaryDirectory() as scratch:
    if fmt == "saved_model":
      _save_tf(module, output)
    else:
      _save_tf(module, os.path.join(scratch, "saved_model"))
      data = _tflite_bytes(os.path.join(scratch, "saved_model"), quantize)
      if fmt == "onnx":
        tflite_file = os.path.join(scratch, "model.tflite")
        with open(tflite_file, "wb") as f:
          f.write(data)
        data = _onnx_bytes(tflite_file)
      os.makedirs(output, exist_ok=True)
      with open(os.path.join(output, runtimes.FILES[fmt]), "wb") as f:
        f.write(data)
  meta = {**meta, "export": {
      "format": fmt, "file": runtimes.FILES[fmt], "quantize": quantize,
      "input": {"name": runtimes.INPUT, "dtype": "uint8",
                "shape": [batch or "N", size or "H", size or "W", 3],
                "meaning": "RGB face crops (whole image = face box widened by the crop "
                           "margin); resized to the stored size inside unless given at it"},
      "outputs": outputs, "signature": runtimes.SIGNATURE,
      **({"opset": ONNX_OPSET} if fmt == "onnx" else {})}}
  write_meta(output, meta)  # last: a directory with a model.json is complete
  return meta


def write_meta(output: str, meta: dict[str, Any]) -> None:
  """Writes ``output/model.json`` (:func:`agejax.json_files.write_json`: never half a file)."""
  json_files.write_json(os.path.join(output, runtimes.MODEL_FILE), meta, sort_keys=True)


def verification_crops(meta: dict[str, Any], seed: int = 0) -> list[np.ndarray]:
  """Generated uint8 crops: one at the stored size, and (any-size formats) two others."""
  stored = int(meta["crop"]["stored_size"])
  rng = np.random.default_rng(seed)
  sizes = [(stored, stored)]
  if meta.get("export", {}).get("format") != "onnx":
    sizes += [(stored + stored // 2 + 1, stored + 3), (max(8, stored // 2), stored)]
  # Smooth images (a blurred field plus a gradient), like faces, not noise.
  crops = []
  for h, w in sizes:
    coarse = rng.uniform(0, 255, (4, 4, 3))
    image = np.asarray(jax.image.resize(jnp.asarray(coarse), (h, w, 3), "linear"))
    crops.append(np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8))
  return crops


def jax_outputs(meta: dict[str, Any], params: Any, batch_stats: Any,
                images: np.ndarray) -> dict[str, np.ndarray]:
  """The serving function's outputs in JAX (jit), the reference of every format."""
  # Traced with the lax ops the exported graphs hold: the CPU rewrites
  # (cpu_lowering) round differently, and a trained network turns that into
  # ~1e-4 years.
  with cpu_lowering.portable():
    out = _compiled_serving(graph.serving_key(meta))(params, batch_stats,
                                                              jnp.asarray(images))
  return {k: np.asarray(v) for k, v in out.items()}


@functools.lru_cache(maxsize=8)
def _compiled_serving(meta_json: str) -> Any:
  # One jitted serving function per network (graph.serving_key: model.json
  # gaining its verification does not change it): verify and heldout_mae call
  # jax_outputs once per batch, and each new jax.jit would trace and compile
  # the network again. Only jax_outputs calls it, always inside portable(), so
  # it is not inference.compiled_serving, which compiles the default lowering.
  return jax.jit(graph.serving_function(json.loads(meta_json)))


def _ages(meta: dict[str, Any], run: runtimes.Runner, params: Any, batch_stats: Any,
          images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(JAX ages, runtime ages)`` of same-size crops ``images`` [n, H, W, 3]."""
  n = len(images)
  batch = meta["export"]["input"]["shape"][0]
  if not isinstance(batch, int):  # a dynamic batch: one call
    return jax_outputs(meta, params, batch_stats, images)["age"], np.asarray(run(images)["age"])
  # A fixed-batch model: whole batches, the last padded with zeros.
  padded = np.concatenate([images, np.zeros(((-n) % batch, *images.shape[1:]), np.uint8)])
  chunks = [padded[i:i + batch] for i in range(0, len(padded), batch)]
  want = np.concatenate([jax_outputs(meta, params, batch_stats, c)["age"] for c in chunks])
  got = np.concatenate([np.asarray(run(c)["age"]) for c in chunks])
  return want[:n], got[:n]


def verify(output: str, params: Any, batch_stats: Any,
           crops: list[np.ndarray] | None = None) -> dict[str, Any]:
  """Runs ``output`` in its runtime on ``crops`` (one batch per size) against JAX.

  ``params`` and ``batch_stats`` are the weights it was exported from.

  Returns ``{"max_abs_age", "mean_abs_age", "crops", "tolerance", "passed"}``;
  quantised models pass by definition (their difference is reported).
  """
  meta, run = runtimes.load(output)
  crops = crops if crops is not None else verification_crops(meta)
  by_size: dict[tuple[int, int], list[np.ndarray]] = {}
  for crop in crops:
    by_size.setdefault(crop.shape[:2], []).append(crop)
  diffs = []
  for same in by_size.values():
    want, got = _ages(meta, run, params, batch_stats, np.stack(same))
    diffs.append(np.abs(got - want))
  diff = np.concatenate(diffs)
  quantized = meta["export"]["quantize"] != "none"
  return {"max_abs_age": float(diff.max()), "mean_abs_age": float(diff.mean()),
          "crops": len(diff), "tolerance": None if quantized else TOLERANCE,
          "passed": quantized or bool(diff.max() <= TOLERANCE)}


# Examples of the held-out split a quantised export is measured on: enough
# for the MAE difference to settle to a few hundredths of a year, few
# enough to take seconds on a CPU.
HELDOUT_EXAMPLES = 512
_HELDOUT_BATCH = 32


def heldout_mae(output: str, params: Any, batch_stats: Any, data_cfg: Any, split: str,
                limit: int = HELDOUT_EXAMPLES) -> dict[str, Any]:
  """MAE of ``output`` in its runtime and of the JAX float model on ``split``'s crops.

  ``data_cfg`` is the training run's ``data`` section; the first ``limit``
  stored crops of ``split`` are given to both as the dataset stored them.
  Returns ``{"split", "examples", "mae_jax", "mae_exported",
  "mae_difference"}`` (exported minus JAX, years).
  """
  from agejax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  from agejax.evaluation import age_metrics  # pylint: disable=import-outside-toplevel

  meta, run = runtimes.load(output)
  pending: dict[tuple[int, ...], list[tuple[np.ndarray, float]]] = {}
  want, got, true = [], [], []

  def flush(shape):
    crops, ages = zip(*pending.pop(shape))
    w, g = _ages(meta, run, params, batch_stats, np.stack(crops))
    want.append(w)
    got.append(g)
    true.append(np.asarray(ages, np.float32))

  for crop, age in input_pipeline.stored_crops(data_cfg, split, limit):
    pending.setdefault(crop.shape, []).append((crop, age))
    if len(pending[crop.shape]) == _HELDOUT_BATCH:
      flush(crop.shape)
  for shape in list(pending):
    flush(shape)
  want, got, true = (np.concatenate(a) for a in (want, got, true))
  mae_jax, mae_exported = age_metrics.mae(want, true), age_metrics.mae(got, true)
  return {"split": split, "examples": int(len(true)), "mae_jax": mae_jax,
          "mae_exported": mae_exported, "mae_difference": mae_exported - mae_jax}
