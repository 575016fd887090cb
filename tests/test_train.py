"""The training loop on the tiny config: exact resume, SIGTERM, NaN, best checkpoint, metrics."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from agejax import device_mesh
from agejax.errors import TrainingDiverged
from agejax.train import step_state
from agejax.workdir import checkpointing
from agejax.train import run_length
from agejax.workdir import metric_io
from agejax.models import paths
from agejax.train import loop
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 24  # 1.5 epochs of 16 steps: a resume at step 10 is mid-epoch


@pytest.fixture(scope="module")
def data_dir(tiny_data_dir):
  return tiny_data_dir


def _config(data_dir, **train_overrides):
  cfg = tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.train.num_train_steps = TOTAL
  cfg.train.eval_every_steps = 8
  cfg.train.checkpoint_every_steps = 4
  cfg.train.keep_checkpoints = 2
  for key, value in train_overrides.items():
    cfg.train[key] = value
  return cfg


def _final_params(workdir):
  """(latest step, flat train state) as stored on disk."""
  with checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    step = ckpt.latest_step()
    tree = ckpt.restore_params(step)
  return step, paths.flatten(tree)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  summary = loop.train_and_evaluate(_config(data_dir), workdir)
  return workdir, summary


def test_killed_and_resumed_run_is_bit_identical(data_dir, uninterrupted, tmp_path):
  workdir = str(tmp_path)
  seen = []

  def sigterm_at_10(step):
    seen.append(step)
    if step == 10:
      os.kill(os.getpid(), signal.SIGTERM)

  first = loop.train_and_evaluate(_config(data_dir), workdir, step_hook=sigterm_at_10)
  assert first["stopped"] == "preempted" and first["step"] == 10
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == 10  # SIGTERM saved the mid-epoch step
  ckpt.close()

  second = loop.train_and_evaluate(_config(data_dir), workdir, step_hook=seen.append)
  assert second["stopped"] == "completed" and second["step"] == TOTAL
  assert seen == list(range(1, TOTAL + 1))  # resumed at 11: no step twice, none skipped

  step_a, state_a = _final_params(uninterrupted[0])
  step_b, state_b = _final_params(workdir)
  assert step_a == step_b == TOTAL
  assert state_a.keys() == state_b.keys()
  for path in state_a:
    np.testing.assert_array_equal(state_a[path], state_b[path], err_msg=path)


def test_metrics_jsonl_holds_the_documented_names(uninterrupted):
  records = metric_io.read_metrics(uninterrupted[0])
  train_rec = [r for r in records if r["split"] == "train"]
  val_rec = [r for r in records if r["split"] == "validation"]
  assert [r["step"] for r in val_rec] == [8, 16, 24]
  expected_train = {"loss", "mae", "cs5", "grad_norm", "lr/default", "update_ratio/default",
                    "steps_per_sec", "images_per_sec", "data_wait_fraction"}
  assert expected_train <= set(train_rec[-1])
  assert {"loss", "mae", "cs5"} <= set(val_rec[-1])
  assert all(r["count"] == 64 for r in val_rec)  # every validation example, once
  assert 0 <= train_rec[-1]["data_wait_fraction"] <= 1
  # The logged learning rate is the schedule's (warmup 4 steps, cosine to 24).
  lr_at_4 = [r for r in train_rec if r["step"] == 4][0]["lr/default"]
  assert lr_at_4 == pytest.approx(np.mean([0.05 * s / 4 for s in range(4)]), rel=1e-5)


def test_best_checkpoint_is_the_lowest_validation_mae(uninterrupted):
  workdir, summary = uninterrupted
  val = {r["step"]: r["mae"] for r in metric_io.read_metrics(workdir)
         if r["split"] == "validation"}
  best = min(val, key=val.get)
  assert summary["best_step"] == best
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  # The last two plus the best are kept.
  assert set(ckpt.all_steps()) == {best, TOTAL - 4, TOTAL}
  ckpt.close()


def test_non_finite_loss_stops_without_checkpointing_it(data_dir, tmp_path):
  cfg = _config(data_dir)
  cfg.optim.lr = 1e12  # diverges within the first steps
  cfg.optim.schedule.warmup_steps = 0
  with pytest.raises(TrainingDiverged, match=r"at step 4 .*; last good checkpoint: None"):
    loop.train_and_evaluate(cfg, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints" / "4")


def test_early_stopping_counts_evaluations_without_improvement():
  progress = {"best": None, "evals_since_best": 0}
  history = []
  for mae in [9.0, 8.0, 8.5, 8.0, 7.0, 7.5]:
    progress = loop.update_progress(progress, mae)
    history.append((progress["best"], progress["evals_since_best"]))
  assert history == [(9.0, 0), (8.0, 0), (8.0, 1), (8.0, 2), (7.0, 0), (7.0, 1)]


def test_early_stopping_ends_the_run(data_dir, tmp_path):
  cfg = _config(data_dir, early_stop_patience=1, eval_every_steps=4)
  cfg.optim.lr = 1e-9  # nothing improves in a measurable way after the first evaluation
  summary = loop.train_and_evaluate(cfg, str(tmp_path))
  val = [r for r in metric_io.read_metrics(str(tmp_path)) if r["split"] == "validation"]
  # It stops at the first evaluation that does not beat the best one.
  maes = [r["mae"] for r in val]
  first_worse = next(i for i in range(1, len(maes)) if maes[i] >= min(maes[:i]))
  assert summary["stopped"].startswith("early stopping")
  assert summary["step"] == val[first_worse]["step"] < TOTAL


_FOUR_DEVICES = """
import json, os, sys
sys.path.insert(0, {repo!r})
import jax
assert jax.device_count() == 4, jax.devices()
from agejax.train import loop
from configs import tiny
cfg = tiny.get_config()
cfg.data.data_dir = {data_dir!r}
cfg.train.num_train_steps = 8
cfg.train.log_every_steps = 1
cfg.train.eval_every_steps = 8
# A small step keeps float reassociation (sums split over devices) from being
# amplified by training, so 8 steps stay comparable to 1e-4.
cfg.optim.lr = 0.005
loop.train_and_evaluate(cfg, {workdir!r})
"""


def test_four_devices_match_one_device(data_dir, tmp_path):
  """Same global batch over 4 devices: same losses (BatchNorm sees the global batch)."""
  losses = {}
  for devices in (1, 4):
    workdir = str(tmp_path / f"d{devices}")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if devices == 1:
      env["XLA_FLAGS"] = ""
    script = _FOUR_DEVICES.format(repo=REPO, data_dir=data_dir, workdir=workdir)
    if devices == 1:
      script = script.replace("assert jax.device_count() == 4", "assert jax.device_count() == 1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = metric_io.read_metrics(workdir)
    losses[devices] = [r["loss"] for r in records if r["split"] == "train"]
    losses[f"val{devices}"] = [r["mae"] for r in records if r["split"] == "validation"]
  assert len(losses[1]) == len(losses[4]) == 8
  # Step 1 is computed before any update: per-device BatchNorm statistics
  # (4 examples each instead of 16) would change it far beyond 1e-5.
  np.testing.assert_allclose(losses[4][0], losses[1][0], rtol=1e-5)
  np.testing.assert_allclose(losses[4], losses[1], rtol=2e-4)
  # Validation MAE after 8 updates: the 4-way gradient all-reduce sums in
  # another order, and some x86 CPUs carry that to 7e-4 relative (24.058 vs
  # 24.074 years on an AMD EPYC); per-device BatchNorm would be off by years.
  np.testing.assert_allclose(losses["val4"], losses["val1"], rtol=2e-3)


def test_init_checkpoint_loads_the_backbone_and_refreshes_a_resized_head(data_dir, uninterrupted):
  from jax.sharding import NamedSharding, PartitionSpec
  cfg = _config(data_dir)
  cfg.model.max_age = 80  # 81 classes instead of 101: the head cannot be loaded
  cfg.init.checkpoint = uninterrupted[0]
  statics = step_state.build_step_fns(cfg, run_length.run_length(cfg, 256))
  state = step_state.create_train_state(
      cfg, statics, NamedSharding(device_mesh.data_parallel_mesh(), PartitionSpec()))
  _, stored = _final_params(uninterrupted[0])
  loaded = paths.flatten(state.params)
  backbone = [p for p in loaded if not p.startswith("head/")]
  assert len(backbone) > 50
  for path in backbone:
    np.testing.assert_array_equal(loaded[path], stored[f"params/{path}"], err_msg=path)
  assert loaded["head/fc/kernel"].shape == (64, 81)
  stats = paths.flatten(state.batch_stats)
  np.testing.assert_array_equal(stats["stem/bn/mean"], stored["batch_stats/stem/bn/mean"])


def test_a_trained_model_comes_back_from_its_workdir(uninterrupted):
  from agejax.workdir import restore
  workdir, summary = uninterrupted
  best = restore.load_trained(workdir, "best")
  latest = restore.load_trained(workdir, "latest")
  assert (best.step, latest.step) == (summary["best_step"], TOTAL)
  assert best.config == _config(best.config.data.data_dir)
  _, stored = _final_params(workdir)
  flat = paths.flatten(latest.params)
  for path, value in flat.items():
    np.testing.assert_array_equal(value, stored[f"params/{path}"])
  with pytest.raises(ValueError, match="checkpoint '7': use best, latest or one of"):
    restore.load_trained(workdir, "7")
