"""The --dry_run plan: every shipped config plans, rows are right, bad groups fail by name."""

import glob
import json
import os
import subprocess
import sys

import pytest

from agejax.train import planning
from agejax.errors import ConfigError
from configs import imdb_wiki_resnet50
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def _load(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_shipped_config_plans(path, tmp_path, capsys):
  out = planning.dry_run(_load(path), str(tmp_path))
  rows = json.load(open(out))
  assert rows and all(
      set(r) == {"path", "shape", "group", "lr_mult", "wd_mult", "frozen", "batch_norm",
                 "source"} for r in rows)
  assert os.path.getsize(tmp_path / "plan_lr.png") > 1000
  assert "trainable parameters:" in capsys.readouterr().out


def test_dex_resnet50_plan_rows():
  plan = planning.make_plan(imdb_wiki_resnet50.get_config())
  rows = {r.path: r for r in plan.rows}
  assert len(rows) == 53 + 53 * 2 + 2  # conv kernels, BN scale+bias, head kernel+bias
  assert plan.trainable + plan.frozen == 23_508_032 + 2048 * 101 + 101
  assert rows["stem/conv/kernel"].lr_mult == 0.01
  assert rows["stage1/block3/conv3/kernel"].group == "^(stem|stage1)/"
  assert rows["stage2/block1/conv1/kernel"].lr_mult == 0.1
  assert rows["stage3/block6/conv2/kernel"].lr_mult == 0.5
  assert rows["stage4/block3/conv3/kernel"].group == "default"
  assert rows["head/fc/kernel"].lr_mult == 1.0
  assert rows["head/fc/kernel"].wd_mult == 1.0
  assert rows["head/fc/bias"].wd_mult == 0.0  # biases: no weight decay
  assert rows["stage3/block6/bn3/scale"].wd_mult == 0.0  # BatchNorm: none either
  assert rows["stage3/block6/bn3/bias"].wd_mult == 0.0
  # The run: 200k examples / 128 = 1562 steps per epoch, 20 epochs.
  assert plan.length.steps_per_epoch == 1562
  assert plan.length.total_steps == 31_240
  # Momentum keeps one float per trainable parameter.
  assert plan.optimizer_state_floats == plan.trainable
  # Peak learning rate of the head at the end of the one-epoch warmup.
  by_step = dict(plan.lr_milestones)
  # Step s logs the rate of its update s - 1: the warm-up's 1562 updates end
  # at step 1562, and step 1563 is the first at the peak.
  assert by_step[1563]["default"] == pytest.approx(0.01, rel=1e-6)
  assert by_step[1563]["^stage3/"] == pytest.approx(0.005, rel=1e-6)


def test_rows_follow_the_network_from_input_to_output():
  paths = [r.path for r in planning.make_plan(tiny.get_config()).rows]
  assert paths[0].startswith("stem/")
  assert paths[-1].startswith("head/")
  stages = [p.split("/")[0] for p in paths if p.startswith("stage")]
  assert stages == sorted(stages)


def test_frozen_group_is_reported_and_keeps_no_state():
  cfg = tiny.get_config()
  cfg.optim.groups = ((r"^(stem|stage1)/", dict(freeze=True)),)
  plan = planning.make_plan(cfg)
  frozen = {r.path for r in plan.rows if r.frozen}
  assert frozen and all(p.startswith(("stem/", "stage1/")) for p in frozen)
  assert plan.frozen == sum(r.size for r in plan.rows if r.path in frozen)
  assert plan.optimizer_state_floats == plan.trainable


def test_pattern_matching_nothing_fails_by_name():
  cfg = tiny.get_config()
  cfg.optim.groups = ((r"^stage9/", dict(lr_mult=0.1)),)
  with pytest.raises(ConfigError) as e:
    planning.make_plan(cfg)
  assert e.value.key == "optim.groups[0]"
  assert "^stage9/" in str(e.value)


def _cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "agejax.main", *args], cwd=REPO, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_reports_a_bad_group_in_one_line(tmp_path):
  result = _cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--dry_run",
                "--config.optim.groups=((r'^nothing/', dict(lr_mult=0.5)),)")
  assert result.returncode == 2, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("agejax.main: config error: optim.groups[0]:") and "^nothing/" in last
  assert not (tmp_path / "plan.json").exists()


def test_cli_rejects_an_unknown_override_key(tmp_path):
  result = _cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--dry_run",
                "--config.optim.lrr=0.1")
  assert result.returncode != 0
  assert "lrr" in result.stderr
  assert not (tmp_path / "plan.json").exists()


def test_cli_rejects_a_non_positive_lr(tmp_path):
  result = _cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--dry_run",
                "--config.optim.lr=0")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("agejax.main: config error: optim.lr:")


def test_training_set_size_comes_from_the_built_dataset(tmp_path):
  from agejax.data import catalog
  cfg = tiny.get_config()
  cfg.data.data_dir = str(tmp_path)
  cfg.data.num_train_examples = 0
  with pytest.raises(ConfigError, match=r"^data\.num_train_examples: is 0 and the size of "
                     r"synthetic_faces/tiny:train cannot be read"):
    planning.make_plan(cfg)
  catalog.ensure_prepared(cfg.data)
  assert planning.make_plan(cfg).length.num_train_examples == 256
