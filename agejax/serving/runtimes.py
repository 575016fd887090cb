"""Exported models run in their own runtimes: no JAX, no Flax, no orbax.

``load(path)`` returns ``(model.json, run)`` for a directory written by
``agejax.export --format=saved_model|tflite|onnx``; ``run(images)`` takes
uint8 RGB crops ``[N, H, W, 3]`` (numpy) and returns ``{"age", "spread"[,
"probabilities"]}`` as numpy arrays. This is the code a client writes, and
what ``agejax.predict --model`` and ``agejax.benchmark inference`` call.

The runtimes are imported only when a format needs them: TensorFlow for
SavedModel, ``ai-edge-litert`` (or TensorFlow's own ``tf.lite``) for TFLite,
``onnxruntime`` for ONNX.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable

import numpy as np

from agejax import terminal
from agejax.errors import UsageError

MODEL_FILE = "model.json"
FILES = {"saved_model": "saved_model.pb", "tflite": "model.tflite", "onnx": "model.onnx"}
SIGNATURE = "serving_default"
INPUT = "images"
EXTRA = "export"

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


class MissingExtra(UsageError, ImportError):
  """A format's runtime or converter is not installed."""

  def __init__(self, what: str, error: ImportError):
    UsageError.__init__(self, f"{what} needs {error.name or 'a missing package'}: install agejax with "
                     f"the '{EXTRA}' extra (pip install 'agejax[{EXTRA}]')")


# Bounds of what a model can use: larger values are a damaged or hostile file
# (a stored size of 200000 px allocates 120 GB per crop).
MAX_SIDE = 2048
MAX_AGE = 200


def _require(ok: bool, file: str, key: str, what: str, value: Any) -> None:
  if not ok:
    raise UsageError(f"{file}: {key} must be {what}, got {json.dumps(value)[:80]}")


def _integer(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_meta(path: str, meta: Any) -> dict[str, Any]:
  """``meta`` if it is a model.json agejax can serve from ``path``; else one UsageError
  naming the key: types, ranges, and an ``export.file`` inside ``path`` (links followed)."""
  file = os.path.join(path, MODEL_FILE)
  _require(isinstance(meta, dict), file, "the file", "a JSON object", type(meta).__name__)
  crop = meta.get("crop")
  _require(isinstance(crop, dict), file, "crop", "an object with margin and stored_size", crop)
  margin, stored = crop.get("margin"), crop.get("stored_size")
  _require(isinstance(margin, (int, float)) and not isinstance(margin, bool)
           and 0 <= margin <= 2, file, "crop.margin", "a number in [0, 2]", margin)
  _require(_integer(stored) and 8 <= stored <= MAX_SIDE, file, "crop.stored_size",
           f"an integer in [8, {MAX_SIDE}]", stored)
  size = meta.get("image_size")
  _require(_integer(size) and 8 <= size <= MAX_SIDE, file, "image_size",
           f"an integer in [8, {MAX_SIDE}]", size)
  for key in ("preprocessing", "head"):
    _require(isinstance(meta.get(key), str), file, key, "a string", meta.get(key))
  low, high = meta.get("min_age"), meta.get("max_age")
  _require(_integer(low) and _integer(high) and 0 <= low < high <= MAX_AGE, file,
           "min_age/max_age", f"integers with 0 <= min_age < max_age <= {MAX_AGE}", [low, high])
  if EXTRA in meta:
    export = meta[EXTRA]
    _require(isinstance(export, dict) and export.get("format") in FILES, file, "export.format",
             f"one of {', '.join(FILES)}", export.get("format") if isinstance(export, dict)
             else export)
    name = export.get("file")
    _require(isinstance(name, str) and bool(name), file, "export.file",
             "the model file's name in this folder", name)
    folder = os.path.realpath(path)
    target = os.path.realpath(os.path.join(folder, name))
    _require(target.startswith(folder + os.sep), file, "export.file",
             "a file inside the model's folder", name)
  return meta


def read_meta(path: str) -> dict[str, Any]:
  """The checked ``model.json`` of the model in ``path`` (:func:`check_meta`)."""
  file = os.path.join(path, MODEL_FILE)
  try:
    with open(file, encoding="utf-8") as f:
      meta = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise UsageError(f"{file}: not a readable model description ({e})") from None
  return check_meta(path, meta)


def runtime_of(meta: dict[str, Any]) -> str:
  """``bundle``, ``saved_model``, ``tflite`` or ``onnx``."""
  return meta.get("export", {}).get("format", "bundle")


def _saved_model(path: str, trust: bool = False) -> Runner:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from agejax.serving import model_safety  # pylint: disable=import-outside-toplevel

  if not trust:
    model_safety.check_saved_model(path)

  signature = tf.saved_model.load(path).signatures[SIGNATURE]
  return lambda images: {k: v.numpy() for k, v in signature(**{INPUT: tf.constant(images)}).items()}


def tflite_interpreter(file: str, threads: int | None = None) -> Any:
  """ai-edge-litert's interpreter, or TensorFlow's where that is not installed."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  except ImportError:
    try:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise MissingExtra("running a TFLite model", e) from e
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  # The runtime's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate"
  # whatever TF's log level says; it is discarded where that level filters
  # INFO (1 and up: the commands set 3, and importing JAX sets 1 when unset).
  quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") >= "1"
  with (terminal.native_stderr_discarded() if quiet else contextlib.nullcontext()):
    interpreter = Interpreter(model_path=file, num_threads=threads)
    interpreter.allocate_tensors()
  return interpreter


def _tflite(file: str, threads: int | None = None) -> Runner:
  runner = tflite_interpreter(file, threads).get_signature_runner(SIGNATURE)
  return lambda images: {k: np.asarray(v) for k, v in runner(**{INPUT: images}).items()}


def _onnx(file: str, threads: int | None = None) -> Runner:
  try:
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingExtra("running an ONNX model", e) from e
  from agejax.serving import model_safety  # pylint: disable=import-outside-toplevel

  model_safety.check_onnx(file)
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  session = ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  return lambda images: dict(zip(names, session.run(names, {INPUT: images})))


def load(path: str, threads: int | None = None, trust: bool = False
         ) -> tuple[dict[str, Any], Runner]:
  """``(model.json, run)`` of an exported SavedModel, TFLite or ONNX directory.

  A SavedModel's serving ops are checked first unless ``trust``
  (:mod:`agejax.serving.model_safety`).

  Raises:
    ValueError: ``path`` is a bundle (``agejax.inference.load`` reads those)
      or names an unknown format.
  """
  meta = read_meta(path)
  kind = runtime_of(meta)
  if kind == "saved_model":
    return meta, _saved_model(path, trust)
  if kind == "tflite":
    return meta, _tflite(os.path.join(path, meta["export"]["file"]), threads)
  if kind == "onnx":
    return meta, _onnx(os.path.join(path, meta["export"]["file"]), threads)
  raise ValueError(f"{path} holds a {kind!r} model; runtimes reads "
                   f"{', '.join(FILES)}")
