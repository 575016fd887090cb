"""Shared test set-up: CPU only, and the repository's configs importable."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests build the same tiny networks many times, in this process and in
# subprocesses: a persistent compilation cache compiles each once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/agejax-test-jax-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# What the commands set before OpenCV's first video (agejax.cli.quiet_libraries):
# the tests write videos with OpenCV before they run a command in this process.
# tests/test_video.py checks the command's stderr in a process of its own too.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding synthetic_faces/tiny, built once per test process."""
  from agejax.data import catalog
  from configs import tiny

  cfg = tiny.get_config()
  cfg.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  catalog.ensure_prepared(cfg.data)
  return cfg.data.data_dir


TINY_RUN_STEPS = 16


def _train_tiny(tmp_path_factory, data_dir: str, lr: float | None = None) -> str:
  """A 16-step tiny run (evaluations and checkpoints at steps 8 and 16); its workdir."""
  from agejax.train import loop
  from configs import tiny

  cfg = tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.train.num_train_steps = TINY_RUN_STEPS
  cfg.train.eval_every_steps = 8
  cfg.train.checkpoint_every_steps = 8
  if lr is not None:
    cfg.optim.lr = lr
  directory = str(tmp_path_factory.mktemp("run"))
  loop.train_and_evaluate(cfg, directory)
  return directory


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data_dir) -> str:
  """A 16-step tiny run on synthetic_faces/tiny (32 px stored, 32 px input), once per process."""
  return _train_tiny(tmp_path_factory, tiny_data_dir)


@pytest.fixture(scope="session")
def varied_run(tmp_path_factory, tiny_data_dir) -> str:
  """The same 16 steps at lr 0.005: its faces get different ages.

  The tiny config's lr saturates the softmax within 16 steps, and every face
  then gets the same age; what needs predictions that differ (flip TTA,
  calibrated intervals) uses this run.
  """
  return _train_tiny(tmp_path_factory, tiny_data_dir, lr=0.005)
