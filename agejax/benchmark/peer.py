"""The same training step in tf-keras or PyTorch, timed in a child process.

Each peer is what a user of that framework would write first, on tensors
already in memory (as the agejax step gets on-device data):

* ``keras``: ``tf_keras.applications``' ResNet (``weights=None``, 101
  classes), ``compile`` with SGD + momentum and sparse categorical
  cross-entropy, ``train_on_batch``. ``compile``'s ``jit_compile`` is off by
  default in tf-keras, so that is the default here; ``jit_compile=True``
  (XLA) is a setting. The Keras ResNet is v1 (stride on the first 1x1, conv
  biases) while agejax's default is v1.5, so the FLOPs are close but not equal.
* ``torch``: torchvision's ResNet (v1.5, agejax's default structure) in
  ``channels_last``, SGD + momentum, cross-entropy over 101 classes, eager
  mode, with as many intra-op threads as this process may use (XLA:CPU uses
  them all too); bfloat16 runs under ``torch.autocast``.

The child (``python -m agejax.benchmark.peer SETTINGS_JSON``) imports only
its framework, never JAX, so thread pools do not share a process with XLA's.
After building and warming up it prints one JSON line, then times one run of
``steps`` steps per line it reads on stdin and answers each with a JSON line.
The parent alternates: one agejax run, one peer run, and so on, so drift in
the machine's load moves both sides alike and cancels out of ``ratio``; while
one side runs the other waits.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, IO

from agejax.benchmark import common
from agejax.errors import UsageError

COLUMNS = ("images_per_sec", "ms_per_step", "ratio")
FRAMEWORKS = ("keras", "torch")
KERAS_ARCHS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}
TORCH_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# What each framework needs, and how to get it.
_REQUIREMENTS = {
    "keras": (("tf_keras",), "pip install -e '.[bench]' (tf-keras)"),
    "torch": (("torch", "torchvision"),
              "pip install -e '.[bench]' (torch, torchvision; CPU-only wheels: "
              "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu)"),
}


@dataclasses.dataclass(frozen=True)
class PeerSettings:
  """The peer's network and protocol (match the ``step`` benchmark's)."""
  framework: str = "keras"  # one of FRAMEWORKS
  arch: str = "resnet50"
  image_size: int = 112
  batch_size: int = 16
  dtype: str = "float32"  # bfloat16: Keras' mixed_bfloat16 policy
  jit_compile: bool = False
  steps: int = 5
  repeats: int = 5
  warmup: int = 2
  timeout: float = 1800.0  # seconds before the child is abandoned


def _keras_steps(s: PeerSettings) -> tuple[Callable[[], None], dict[str, Any]]:
  """The Keras model's ``k_steps`` and what the child reports about it."""
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

  return k_steps, {
      "tf_version": tf.__version__, "keras_version": tf_keras.__version__,
      "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
      "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def _torch_steps(s: PeerSettings) -> tuple[Callable[[], None], dict[str, Any]]:
  """The torchvision model's ``k_steps`` and what the child reports about it."""
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  on_gpu = os.environ.get("JAX_PLATFORMS") == "gpu" and torch.cuda.is_available()
  device = torch.device("cuda" if on_gpu else "cpu")
  if not on_gpu:
    torch.set_num_threads(common.cpu_count())
  torch.manual_seed(0)
  model = getattr(torchvision.models, s.arch)(num_classes=101)
  model = model.to(device=device, memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss()
  images = torch.randn(s.batch_size, 3, s.image_size, s.image_size, device=device
                       ).contiguous(memory_format=torch.channels_last)
  labels = torch.randint(0, 101, (s.batch_size,), device=device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=s.dtype == "bfloat16")

  def k_steps():
    for _ in range(s.steps):
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = loss_fn(model(images), labels)
      loss.backward()
      optimizer.step()
    loss.item()  # waits for the device

  return k_steps, {"torch_version": torch.__version__,
                   "torchvision_version": torchvision.__version__,
                   "torch_device": device.type,
                   "intra_op_threads": torch.get_num_threads()}


def _child(s: PeerSettings) -> None:
  """Builds the peer's model, then times it on request; runs in the child process."""
  k_steps, meta = {"keras": _keras_steps, "torch": _torch_steps}[s.framework](s)
  for _ in range(s.warmup):
    k_steps()
  _say(meta)
  for _ in sys.stdin:  # one timed run per line
    start = time.perf_counter()
    k_steps()
    _say({"seconds": time.perf_counter() - start})


def _say(message: dict[str, Any]) -> None:
  print(json.dumps(message), flush=True)


def comparable(step_settings: dict[str, Any] | None, s: PeerSettings) -> bool:
  """Whether ``step`` settings name the same network, size, batch and dtype."""
  if not step_settings:
    return False
  return (step_settings["arch"], step_settings.get("width", 64), step_settings["image_size"],
          step_settings["batch_size"], step_settings["dtype"]) == (
              s.arch, 64, s.image_size, s.batch_size, s.dtype)


class Child:
  """A peer's child process (``argv``), driven line by line, killed after ``timeout``.

  The child prints one JSON line when it is ready, then answers each ``run``
  line on its stdin with one JSON line holding ``seconds``.
  """

  def __init__(self, argv: list[str], timeout: float):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    self._stderr: IO[bytes] = tempfile.TemporaryFile()
    self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self._stderr, text=True, env=env)
    self._timeout = timeout
    self._watchdog = threading.Timer(timeout, self._proc.kill)
    self._watchdog.start()

  def read(self) -> dict[str, Any]:
    line = self._proc.stdout.readline()
    if not line:
      self._proc.wait()
      if not self._watchdog.is_alive():
        raise subprocess.TimeoutExpired(self._proc.args, self._timeout)
      self._stderr.seek(0)
      raise RuntimeError(f"peer child failed ({self._proc.returncode}):\n"
                         f"{self._stderr.read()[-4000:].decode(errors='replace')}")
    return json.loads(line)

  def run(self) -> dict[str, Any]:
    """One timed run: the child's answer (``seconds``, and what else it reports)."""
    self._proc.stdin.write("run\n")
    self._proc.stdin.flush()
    return self.read()

  def time_run(self) -> float:
    return self.run()["seconds"]

  def close(self) -> None:
    self._watchdog.cancel()
    if self._proc.poll() is None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self._proc.kill()
    self._stderr.close()


def _median_summary(seconds: list[float], s: PeerSettings) -> dict[str, float]:
  summary = common.summarize(seconds, s.batch_size * s.steps, "images")
  return {"images_per_sec": summary["images_per_sec"],
          "ms_per_step": summary["ms_per_call"] / s.steps,
          "ms_per_step_min": summary["ms_per_call_min"] / s.steps,
          "ms_per_step_max": summary["ms_per_call_max"] / s.steps}


def check_available(s: PeerSettings) -> None:
  """Raises, saying what to install or choose, when the peer cannot run ``s``."""
  if s.framework not in FRAMEWORKS:
    raise UsageError(f"peer: unknown framework {s.framework!r}; use one of {FRAMEWORKS}")
  archs = KERAS_ARCHS if s.framework == "keras" else TORCH_ARCHS
  if s.arch not in archs:
    raise UsageError(f"peer: the {s.framework} peer has no {s.arch!r}; "
                     f"use one of {sorted(archs)}")
  modules, install = _REQUIREMENTS[s.framework]
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  if missing:
    raise UsageError(f"peer: the {s.framework} baseline needs "
                              f"{', '.join(missing)}; {install}")


def run(s: PeerSettings, agejax_k_steps: Callable[[], Any] | None = None
        ) -> list[dict[str, Any]]:
  """Times the peer in a child process; ``ratio`` = agejax images/s over the peer's.

  Args:
    s: the peer's settings.
    agejax_k_steps: runs ``s.steps`` compiled agejax train steps of the same
      network, size, batch and dtype and waits for them (see
      ``step.compile_step``). Timed alternately with the peer; without it
      ``ratio`` is None.
  """
  check_available(s)
  child = Child([sys.executable, "-m", "agejax.benchmark.peer",
                 json.dumps(dataclasses.asdict(s))], s.timeout)
  try:
    meta = child.read()  # built and warmed up
    if agejax_k_steps is not None:
      for _ in range(s.warmup):
        agejax_k_steps()
    peer_seconds, agejax_seconds = [], []
    for _ in range(s.repeats):
      if agejax_k_steps is not None:
        start = time.perf_counter()
        agejax_k_steps()
        agejax_seconds.append(time.perf_counter() - start)
      peer_seconds.append(child.time_run())
  finally:
    child.close()
  results = {**_median_summary(peer_seconds, s), "seconds": peer_seconds,
             "ratio": None, "agejax_images_per_sec": None, "agejax_seconds": agejax_seconds,
             **meta}
  if agejax_seconds:
    agejax = s.batch_size * s.steps / statistics.median(agejax_seconds)
    results["agejax_images_per_sec"] = agejax
    results["ratio"] = agejax / results["images_per_sec"]
  return [{**common.record("peer", dataclasses.asdict(s), results), "variant": s.framework}]


if __name__ == "__main__":
  _child(PeerSettings(**json.loads(sys.argv[1])))
