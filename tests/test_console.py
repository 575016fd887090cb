"""What a run shows a person (stdout, log.txt) and TensorBoard (one chart per metric, three splits)."""

import json
import os
import re
import subprocess
import sys

from tensorboard.backend.event_processing import event_accumulator

from agejax import main
from agejax import terminal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tiny_data_dir, workdir, capfd, *overrides):
  code = main.main(["agejax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
                        f"--config.data.data_dir={tiny_data_dir}",
                        "--config.train.num_epochs=1", *overrides])
  out, err = capfd.readouterr()
  return code, out, err


def test_the_console_is_a_start_block_a_line_per_interval_and_an_end_block(
    tiny_data_dir, tmp_path):
  # A fresh process, as a user starts it: nothing imported TF before the CLI did.
  workdir = str(tmp_path / "run")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run(
      [sys.executable, "-m", "agejax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
       f"--config.data.data_dir={tiny_data_dir}", "--config.train.num_epochs=1"],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""  # no TF/CUDA/orbax chatter without --verbosity
  out = result.stdout
  lines = out.splitlines()
  assert lines[0] == "agejax training"
  rows = dict(re.match(r"  (\S[\w -]*?)  +(.*)", l).groups() for l in lines[1:lines.index("")]
              if re.match(r"  \S", l))
  assert rows["weights"] == "random init"
  assert rows["batch"] == "16 global"
  assert rows["length"] == "1 epochs = 16 steps of 16 per epoch"
  assert rows["optimizer"] == "momentum (momentum 0.9), peak lr 0.05"
  assert rows["workdir"] == workdir
  intervals = [l for l in lines if l.startswith("epoch ")]
  assert len(intervals) == 4  # log_every_steps=4 over 16 steps
  assert re.fullmatch(r"epoch 1/1  step 16/16 \(100%\)  \S+, ETA 0s  loss \d+\.\d{3}  "
                      r"mae \d+\.\d\d  lr \S+  [\d,]+ img/s  wait \d+\.\d%", intervals[-1])
  evals = [l for l in lines if l.startswith("eval ")]
  assert len(evals) == 1 and evals[0].startswith("eval  step 16  train-eval | validation  mae ")
  assert evals[0].count("*") == 1  # the first evaluation is a new best
  end = lines.index("agejax training done")
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert lines[end + 1] == "  stopped          completed at step 16 (1.00 epochs)"
  assert f"  best mae         {summary['best']:.3f} at step 16" in lines
  assert f"  best checkpoint  {os.path.join(workdir, 'checkpoints', '16')}" in lines
  assert f"  diagnose  python -m agejax.report --workdir={workdir}" in lines
  # The log file holds every console line, and the libraries' INFO records.
  log = open(os.path.join(workdir, "log.txt")).read()
  assert all(l in log for l in intervals + evals)


def test_train_train_eval_and_validation_share_tags_in_three_event_directories(
    tiny_data_dir, tmp_path, capfd):
  workdir = str(tmp_path / "run")
  code, _, err = _run(tiny_data_dir, workdir, capfd, "--config.train.eval_every_steps=8")
  assert code == 0, err
  tags = {}
  for split in ("train", "train_eval", "validation"):
    acc = event_accumulator.EventAccumulator(os.path.join(workdir, split))
    acc.Reload()
    tags[split] = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
    steps = [e.step for e in (acc.Tensors("mae") if "mae" in acc.Tags()["tensors"]
                              else acc.Scalars("mae"))]
    assert steps == ([4, 8, 12, 16] if split == "train" else [8, 16])
  common = tags["train"] & tags["train_eval"] & tags["validation"]
  assert {"mae", "loss", "cs5"} <= common
  assert {"pred_std", "true_std"} <= tags["validation"] & tags["train_eval"]
  assert {f"block_update_ratio/{b}" for b in ("stem", "stage1", "stage2", "stage3", "stage4",
                                              "head")} <= tags["train"]
  # metrics.jsonl keeps its shape: one object per split and step.
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert sorted({(r["split"], r["step"]) for r in records if r["split"] != "train"}) == [
      ("train_eval", 8), ("train_eval", 16), ("validation", 8), ("validation", 16)]
  train_eval = [r for r in records if r["split"] == "train_eval"]
  assert all(r["count"] == 64 for r in train_eval)  # train.train_eval_examples of the tiny config


def test_durations_read_as_people_write_them():
  assert [terminal.duration(s) for s in (0, 42.4, 185, 3600 * 2 + 7 * 60 + 9)] == [
      "0s", "42s", "3m05s", "2h07m"]
  assert terminal.block("t", [("a", "1"), ("long key", "x\ny")]) == (
      "t\n  a         1\n  long key  x\n            y")
