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

import json
import os
from typing import Any, Callable

import numpy as np

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


def read_meta(path: str) -> dict[str, Any]:
  with open(os.path.join(path, MODEL_FILE)) as f:
    return json.load(f)


def runtime_of(meta: dict[str, Any]) -> str:
  """``bundle``, ``saved_model``, ``tflite`` or ``onnx``."""
  return meta.get("export", {}).get("format", "bundle")


def _saved_model(path: str) -> Runner:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

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
  return Interpreter(model_path=file, num_threads=threads)


def _tflite(file: str, threads: int | None = None) -> Runner:
  runner = tflite_interpreter(file, threads).get_signature_runner(SIGNATURE)
  return lambda images: {k: np.asarray(v) for k, v in runner(**{INPUT: images}).items()}


def _onnx(file: str, threads: int | None = None) -> Runner:
  try:
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingExtra("running an ONNX model", e) from e
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  session = ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  return lambda images: dict(zip(names, session.run(names, {INPUT: images})))


def load(path: str, threads: int | None = None) -> tuple[dict[str, Any], Runner]:
  """``(model.json, run)`` of an exported SavedModel, TFLite or ONNX directory.

  Raises:
    ValueError: ``path`` is a bundle (``agejax.inference.load`` reads those)
      or names an unknown format.
  """
  meta = read_meta(path)
  kind = runtime_of(meta)
  if kind == "saved_model":
    return meta, _saved_model(path)
  if kind == "tflite":
    return meta, _tflite(os.path.join(path, meta["export"]["file"]), threads)
  if kind == "onnx":
    return meta, _onnx(os.path.join(path, meta["export"]["file"]), threads)
  raise ValueError(f"{path} holds a {kind!r} model; runtimes reads "
                   f"{', '.join(FILES)}")
