r"""Hyperparameter search with Optuna: every trial is a normal agejax run.

  python -m agejax.tune --config=configs/imdb_wiki_resnet50.py \
      --space=configs/spaces/dex.py --study=dex --trials=20 --workdir_root=/runs/dex_search \
      [--config.train.num_epochs=5] [--storage=postgresql+psycopg2://user@host/db] [--report]

The search space is a Python file with ``space(trial) -> {config key: value}``
(``trial.suggest_*`` calls; keys as on the command line, e.g.
``"optim.lr"``). Each trial trains in ``WORKDIR_ROOT/trial_<n>`` and reports
the validation metric at every evaluation, so Optuna's pruner stops hopeless
trials early; a trial whose loss diverges is pruned too. The storage is an
SQLite file in the workdir root unless ``--storage`` names another Optuna RDB
URL: many machines running this command on one PostgreSQL/MySQL study share
the work, each trial claimed by exactly one of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import time
from typing import Any, Callable

import ml_collections
import optuna
from absl import logging

from agejax import json_files
from agejax import terminal
from agejax.train import config_rules
from agejax.errors import ConfigError, RunFailed, TrainingDiverged, UsageError
from agejax.train import loop

REPORT_JSON = "report.json"
IMPORTANCE_PNG = "importance.png"


def load_python(path: str, attr: str) -> Callable[..., Any]:
  """``attr`` of the Python file at ``path`` (a config or a search space)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, attr):
    raise AttributeError(f"{path} defines no {attr}()")
  return getattr(module, attr)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """Sets dotted keys (``optim.schedule.name``) the way ``--config.k=v`` does."""
  for key, value in overrides.items():
    *parents, name = key.split(".")
    node = cfg
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ConfigError(key, "unknown config key in the search space")
    node[name] = value


def default_storage(workdir_root: str) -> str:
  return f"sqlite:///{os.path.abspath(os.path.join(workdir_root, 'study.db'))}"


def shown_url(storage: str) -> str:
  """The storage URL as agejax prints it: the password hidden (``***``).

  Raises:
    UsageError: ``storage`` is not a database URL.
  """
  import sqlalchemy.engine  # optuna's RDB storage is built on SQLAlchemy
  import sqlalchemy.exc

  try:
    return sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
  except (sqlalchemy.exc.ArgumentError, ValueError):
    raise UsageError("--storage: not a database URL (like sqlite:///study.db or "
                     "postgresql+psycopg2://user@host/db)") from None


def create_study(study: str, storage: str) -> optuna.Study:
  """The study, created or joined (several workers may call this at once).

  Minimised: every metric agejax ranks checkpoints by is lower-is-better.

  Raises:
    UsageError: ``storage`` is not a database URL, or its driver is missing.
    RunFailed: the database cannot be reached (its URL shown without password).
  """
  import sqlalchemy.exc  # optuna's RDB storage is built on SQLAlchemy

  shown = shown_url(storage)
  sqlite_file = storage[len("sqlite:///"):] if storage.startswith("sqlite:///") else None
  _require_driver(storage)
  engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite_file else {}
  for attempt in range(5):
    try:
      with _exclusive(sqlite_file + ".lock" if sqlite_file else None):
        return optuna.create_study(
            study_name=study, load_if_exists=True, direction="minimize",
            storage=optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
      # Workers starting together on a server database race to create the
      # schema or the study; the loser finds it there on the next attempt.
      last = str(getattr(e, "orig", e)).strip().splitlines()[0][:200]
      time.sleep(0.5 * (attempt + 1))
  raise RunFailed(f"could not create or join study {study!r} in {shown}: {last}")


# URL scheme -> (the Python driver SQLAlchemy loads for it, the extra installing it).
_DRIVERS = {
    "postgresql+psycopg2": ("psycopg2", "tune-postgres"),
    "postgresql": ("psycopg", "tune-postgres (then use postgresql+psycopg2://)"),
    "mysql+pymysql": ("pymysql", "tune-mysql"),
    "mysql": ("MySQLdb", "tune-mysql (then use mysql+pymysql://)"),
}


def _require_driver(storage: str) -> None:
  """A one-line error naming the extra when the storage URL's driver is missing."""
  scheme = storage.split("://", 1)[0]
  if scheme not in _DRIVERS:
    return
  module, extra = _DRIVERS[scheme]
  if importlib.util.find_spec(module) is None:
    raise UsageError(f"--storage={scheme}://...: the database driver {module} is not "
                     f"installed; pip install 'agejax[{extra.split()[0]}]'"
                     + (f" {extra.split(' ', 1)[1]}" if " " in extra else ""))


@contextlib.contextmanager
def _exclusive(lock_path: str | None):
  """Holds an exclusive file lock (SQLite has no safe concurrent schema creation)."""
  if lock_path is None:
    yield
    return
  with open(lock_path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def objective(base_config: Callable[[], ml_collections.ConfigDict], space: Callable,
              workdir_root: str) -> Callable[[optuna.Trial], float]:
  """One trial: overrides from the space, a full run, the best validation metric."""
  def run(trial: optuna.Trial) -> float:
    cfg = base_config()
    overrides = space(trial)
    trial.set_user_attr("overrides", {k: repr(v) for k, v in overrides.items()})
    try:
      apply_overrides(cfg, overrides)
      config_rules.validate(cfg)
    except ConfigError as e:
      trial.set_user_attr("error", f"config error: {e}")
      raise
    workdir = os.path.join(workdir_root, f"trial_{trial.number}")
    trial.set_user_attr("workdir", workdir)

    def report(step: int, metrics: dict[str, float]) -> None:
      trial.report(metrics[cfg.train.best_metric], step)
      if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step}")

    try:
      summary = loop.train_and_evaluate(cfg, workdir, eval_hook=report)
    except TrainingDiverged as e:
      trial.set_user_attr("error", str(e))
      raise optuna.TrialPruned(f"diverged: {e}") from e
    except ConfigError as e:  # found once the data or parameter paths are known
      trial.set_user_attr("error", f"config error: {e}")
      raise
    return float(summary["best"])
  return run


def report_rows(study: optuna.Study) -> list[dict[str, Any]]:
  """Every trial, best first: completed by value, then pruned, then failed."""
  order = {optuna.trial.TrialState.COMPLETE: 0, optuna.trial.TrialState.PRUNED: 1}
  rows = []
  for t in study.trials:
    if t.state == optuna.trial.TrialState.RUNNING:
      continue
    reported = list(t.intermediate_values.values())
    rows.append(dict(
        number=t.number, state=t.state.name.lower(), value=t.value,
        best_reported=min(reported) if reported else None,
        last_step=max(t.intermediate_values) if t.intermediate_values else None,
        overrides=t.user_attrs.get("overrides", {}), workdir=t.user_attrs.get("workdir"),
        error=t.user_attrs.get("error")))
  rows.sort(key=lambda r: (order.get(optuna.trial.TrialState[r["state"].upper()], 2),
                           r["value"] if r["value"] is not None else float("inf"), r["number"]))
  return rows


def format_report(rows: list[dict[str, Any]], metric: str) -> str:
  lines = [f"{'rank':>4}  {'trial':>5}  {'state':<8}  {metric:>10}  overrides"]
  for rank, r in enumerate(rows, start=1):
    value = r["value"] if r["value"] is not None else r["best_reported"]
    shown = f"{value:.4f}" if value is not None else "-"
    overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
    lines.append(f"{rank:>4}  {r['number']:>5}  {r['state']:<8}  {shown:>10}  {overrides}")
    if r.get("error"):
      lines.append(f"{'':>4}  {'':>5}  {'':<8}  {'':>10}  -> {r['error']}")
  return "\n".join(lines)


def write_report(study: optuna.Study, workdir_root: str, metric: str) -> str:
  """Prints and saves the ranked table; adds the importance plot when possible."""
  rows = report_rows(study)
  os.makedirs(workdir_root, exist_ok=True)
  json_files.write_json(os.path.join(workdir_root, REPORT_JSON), rows)
  text = format_report(rows, metric)
  print(text)
  complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
  varied = {k for t in complete for k in t.params}
  if len(complete) >= 2 and varied:
    from optuna.visualization import matplotlib as optuna_plots
    from matplotlib import pyplot as plt
    try:
      ax = optuna_plots.plot_param_importances(study)
      ax.figure.tight_layout()
      ax.figure.savefig(os.path.join(workdir_root, IMPORTANCE_PNG))
      plt.close(ax.figure)
    except (RuntimeError, ValueError) as e:  # e.g. every trial chose the same values
      logging.warning("no parameter-importance plot: %s", e)
  return text


def _trial_line(metric: str) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
  """An optuna callback: one console line per finished trial (value, or why it failed)."""
  def line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    del study
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in trial.params.items())
    if trial.state == optuna.trial.TrialState.COMPLETE:
      outcome = f"best {metric} {trial.value:.3f}"
    else:
      outcome = f"{trial.state.name.lower()}: {trial.user_attrs.get('error', 'see the log')}"
    terminal.echo(f"trial {trial.number}  {outcome}  ({params})")

  return line


def run_study(base_config: Callable[[], ml_collections.ConfigDict], study_name: str,
              workdir_root: str, *, space_file: str | None, trials: int,
              storage: str | None = None, report_only: bool = False) -> str:
  """Runs ``trials`` trials (unless ``report_only``), writes the report; returns its text.

  Raises:
    RunFailed: every trial this call ran failed (the first reason is named).
  """
  os.makedirs(workdir_root, exist_ok=True)
  metric = base_config().train.best_metric
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = create_study(study_name, storage or default_storage(workdir_root))
  if not report_only:
    if not space_file:
      raise UsageError("--space is required to run trials")
    space = load_python(space_file, "space")
    before = {t.number for t in study.trials}
    try:
      study.optimize(objective(base_config, space, workdir_root), n_trials=trials,
                     catch=(ConfigError,), callbacks=[_trial_line(metric)])
    except KeyboardInterrupt:
      logging.warning("interrupted: the study keeps what finished")
    mine = [t for t in study.trials if t.number not in before]
    failed = [t for t in mine if t.state == optuna.trial.TrialState.FAIL]
    if mine and len(failed) == len(mine):
      write_report(study, workdir_root, metric)
      first = failed[0].user_attrs.get("error", "see the log")
      raise RunFailed(f"all {len(mine)} trials failed; trial {failed[0].number}: {first}")
  return write_report(study, workdir_root, metric)
