"""Optuna search over the tiny config: ranking, pruning, and two workers on one study."""

import json
import os
import subprocess
import sys

import optuna
import pytest

from agejax.workdir import metric_io
from agejax.tools import optuna_search
from agejax.errors import ConfigError
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = """
def space(trial):
  return {{"optim.lr": trial.suggest_categorical("lr", {lrs!r}),
           "data.data_dir": {data_dir!r},
           "train.num_train_steps": 8,
           "train.eval_every_steps": 4,
           "train.log_every_steps": 4}}
"""


@pytest.fixture(scope="module")
def data_dir(tiny_data_dir):
  return tiny_data_dir


def _space(tmp_path, data_dir, lrs):
  path = tmp_path / "space.py"
  path.write_text(SPACE.format(lrs=lrs, data_dir=data_dir))
  return str(path)


def test_three_trials_ranked_with_the_diverging_one_pruned(tmp_path, data_dir):
  root = str(tmp_path / "search")
  space = optuna_search.load_python(_space(tmp_path, data_dir, [0.05, 0.01, 1e12]), "space")
  study = optuna_search.create_study("t3", optuna_search.default_storage(str(tmp_path)))
  for lr in (0.05, 0.01, 1e12):  # the last one is forced bad: it diverges
    study.enqueue_trial({"lr": lr})
  study.optimize(optuna_search.objective(tiny.get_config, space, root), n_trials=3)
  text = optuna_search.write_report(study, root, "mae")

  states = {t.params["lr"]: t.state for t in study.trials}
  assert states[1e12] == optuna.trial.TrialState.PRUNED
  assert states[0.05] == states[0.01] == optuna.trial.TrialState.COMPLETE
  rows = json.load(open(os.path.join(root, optuna_search.REPORT_JSON)))
  assert [r["state"] for r in rows] == ["complete", "complete", "pruned"]
  assert rows[0]["value"] <= rows[1]["value"]
  # Each completed trial's value is the best validation MAE of its own run.
  for r in rows[:2]:
    val = [m["mae"] for m in metric_io.read_metrics(r["workdir"]) if m["split"] == "validation"]
    assert r["value"] == pytest.approx(min(val))
  assert rows[2]["overrides"]["optim.lr"] == "1000000000000.0"
  assert text.splitlines()[0].split() == ["rank", "trial", "state", "mae", "overrides"]
  assert os.path.getsize(os.path.join(root, optuna_search.IMPORTANCE_PNG)) > 1000


def test_unknown_key_in_a_space_is_named():
  cfg = tiny.get_config()
  with pytest.raises(ConfigError, match=r"^optim\.lrr: unknown config key in the search space"):
    optuna_search.apply_overrides(cfg, {"optim.lrr": 0.1})
  optuna_search.apply_overrides(cfg, {"optim.schedule.name": "step"})
  assert cfg.optim.schedule.name == "step"


def test_two_workers_share_one_study_without_running_a_trial_twice(tmp_path, data_dir):
  space = _space(tmp_path, data_dir, [0.05, 0.02, 0.01, 0.005])
  root = str(tmp_path / "shared")
  cmd = [sys.executable, "-m", "agejax.tune", "--config=configs/tiny.py", f"--space={space}",
         "--study=shared", "--trials=2", f"--workdir_root={root}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  workers = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
  outs = [w.communicate(timeout=600)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], [o[-3000:] for o in outs]
  study = optuna.load_study(study_name="shared", storage=optuna_search.default_storage(root))
  trials = study.trials
  assert len(trials) == 4
  assert sorted(t.number for t in trials) == [0, 1, 2, 3]
  workdirs = [t.user_attrs["workdir"] for t in trials]
  assert len(set(workdirs)) == 4
  for t in trials:  # each trial trained once: its evaluations appear once
    steps = [m["step"] for m in metric_io.read_metrics(t.user_attrs["workdir"])
             if m["split"] == "validation"]
    if t.state == optuna.trial.TrialState.COMPLETE:
      assert steps == [4, 8]
    else:  # pruned by the median rule at one of its evaluations; which one
      # depends on how the two workers' reports interleave
      assert t.state == optuna.trial.TrialState.PRUNED and steps in ([4], [4, 8])


def test_a_study_whose_trials_all_fail_raises_with_the_first_reason(tiny_data_dir, tmp_path):
  from agejax.errors import RunFailed

  space = tmp_path / "space.py"
  # Every trial asks for a warm-up longer than its run: a config error.
  space.write_text("def space(trial):\n"
                   "  return {'optim.schedule.warmup_steps': trial.suggest_int('w', 10**6, 10**7)}\n")

  def base():
    cfg = tiny.get_config()
    cfg.data.data_dir = tiny_data_dir
    cfg.train.num_train_steps = 4
    return cfg

  with pytest.raises(RunFailed, match=r"^all 2 trials failed; trial 0: config error: "
                     r"optim\.schedule\.warmup_steps"):
    optuna_search.run_study(base, "failing", str(tmp_path), space_file=str(space), trials=2)
  report = json.loads((tmp_path / optuna_search.REPORT_JSON).read_text())
  assert [r["state"] for r in report] == ["fail", "fail"]
  assert all(r["error"].startswith("config error: optim.schedule.warmup_steps") for r in report)


def test_a_missing_database_driver_names_the_extra(monkeypatch):
  import importlib.util
  from agejax.errors import UsageError

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "psycopg2" else real(name, *a))
  with pytest.raises(UsageError, match=r"driver psycopg2 is not installed; "
                     r"pip install 'agejax\[tune-postgres\]'$"):
    optuna_search.create_study("s", "postgresql+psycopg2://user@localhost/db")
