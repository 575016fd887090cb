"""The same training step in tf-keras, timed in a child process.

The peer is what a Keras user would write first: ``tf_keras.applications``'
ResNet (``weights=None``, 101 classes), ``compile`` with SGD + momentum and
sparse categorical cross-entropy, and ``train_on_batch`` on tensors already
in memory (as the agejax step gets on-device data). ``compile``'s
``jit_compile`` is off by default in tf-keras, so that is the default here;
``jit_compile=True`` (XLA) is a setting. The Keras ResNet is v1 (stride on
the first 1x1, conv biases) while agejax's default is v1.5, so the FLOPs are
close but not equal.

The child (``python -m agejax.benchmark.peer SETTINGS_JSON``) imports only
TensorFlow, never JAX, so TF's thread pools do not share a process with
XLA's; it prints its timings as one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

from agejax.benchmark import common

COLUMNS = ("images_per_sec", "ms_per_step", "ratio")
KERAS_ARCHS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}


@dataclasses.dataclass(frozen=True)
class PeerSettings:
  """The peer's network and protocol (match the ``step`` benchmark's)."""
  arch: str = "resnet50"
  image_size: int = 112
  batch_size: int = 16
  dtype: str = "float32"  # bfloat16: Keras' mixed_bfloat16 policy
  jit_compile: bool = False
  steps: int = 5
  repeats: int = 5
  warmup: int = 2
  timeout: float = 1800.0  # seconds before the child is abandoned


def _child(s: PeerSettings) -> dict[str, Any]:
  """Builds and times the Keras model; runs in the child process."""
  # Imported here: the parent process must not load TensorFlow for this.
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel

  if os.environ.get("JAX_PLATFORMS") == "cpu":  # --platform cpu: keep TF off a GPU too
    tf.config.set_visible_devices([], "GPU")
  if s.dtype == "bfloat16":
    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  model = getattr(tf_keras.applications, KERAS_ARCHS[s.arch])(
      weights=None, input_shape=(s.image_size, s.image_size, 3), classes=101)
  model.compile(optimizer=tf_keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
                loss=tf_keras.losses.SparseCategoricalCrossentropy(),
                jit_compile=s.jit_compile)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.standard_normal(
      (s.batch_size, s.image_size, s.image_size, 3), dtype=np.float32))
  labels = tf.constant(rng.integers(0, 101, s.batch_size), tf.int32)

  def k_steps():
    # train_on_batch returns the loss as numpy: each call waits for its step.
    for _ in range(s.steps):
      model.train_on_batch(images, labels)

  seconds = common.time_calls(k_steps, s.repeats, s.warmup)
  return {"seconds": seconds, "tf_version": tf.__version__,
          "keras_version": tf_keras.__version__,
          "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
          "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def comparable(step_result: dict[str, Any] | None, s: PeerSettings) -> bool:
  """Whether a ``step`` result ran the same network, size, batch and dtype."""
  if not step_result:
    return False
  other = step_result["settings"]
  return (other["arch"], other.get("width", 64), other["image_size"], other["batch_size"],
          other["dtype"]) == (s.arch, 64, s.image_size, s.batch_size, s.dtype)


def run(s: PeerSettings, step_result: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """Times the peer in a child process; ``ratio`` = agejax images/s over the peer's.

  ``ratio`` is None unless ``step_result`` is a ``step`` result with the same
  settings (see :func:`comparable`).
  """
  if s.arch not in KERAS_ARCHS:
    raise ValueError(f"peer: tf_keras.applications has no {s.arch!r}; "
                     f"use one of {sorted(KERAS_ARCHS)}")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "agejax.benchmark.peer", json.dumps(dataclasses.asdict(s))],
      capture_output=True, text=True, timeout=s.timeout, env=env, check=False)
  if proc.returncode:
    raise RuntimeError(f"peer child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  child = json.loads(proc.stdout.strip().splitlines()[-1])
  summary = common.summarize(child["seconds"],
                             s.batch_size * s.steps, "images")
  results = {
      "images_per_sec": summary["images_per_sec"],
      "ms_per_step": summary["ms_per_call"] / s.steps,
      "ms_per_step_min": summary["ms_per_call_min"] / s.steps,
      "ms_per_step_max": summary["ms_per_call_max"] / s.steps,
      "ratio": None,
      "agejax_images_per_sec": None,
      **child,
  }
  if comparable(step_result, s):
    results["agejax_images_per_sec"] = step_result["images_per_sec"]
    results["ratio"] = step_result["images_per_sec"] / summary["images_per_sec"]
  return [common.record("peer", dataclasses.asdict(s), results)]


if __name__ == "__main__":
  print(json.dumps(_child(PeerSettings(**json.loads(sys.argv[1])))), flush=True)
