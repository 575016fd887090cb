"""The report's figures: one PNG per question, every curve of every run on it.

With one run the legends name the split (train, train-eval, validation); with
several, each run has one colour and the splits keep their line style, so
runs overlay on the same axes.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
from matplotlib import pyplot as plt  # noqa: E402

from agejax.analysis import run_records  # noqa: E402
from agejax.models import paths  # noqa: E402
from agejax.workdir import run_config  # noqa: E402

_STYLES = {run_records.TRAIN: ":", run_records.TRAIN_EVAL: "--", run_records.VALIDATION: "-"}
_SPLIT_NAMES = {run_records.TRAIN: "train (augmented)", run_records.TRAIN_EVAL: "train-eval",
                run_records.VALIDATION: "validation"}


def _title(runs: Sequence[run_records.Run], what: str) -> str:
  if len(runs) == 1:
    return f"{what} - {run_config.title(runs[0].config, runs[0].workdir)}"
  return f"{what} - " + " vs ".join(r.name for r in runs)


def _finish(fig, ax, runs: Sequence[run_records.Run], out: str, log: bool = False) -> str:
  ax.set_xlabel("step")
  if log:
    ax.set_yscale("log")
  spe = runs[0].steps_per_epoch
  epochs = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
  epochs.set_xlabel("epoch")
  ax.grid(True, alpha=0.3, which="both")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)
  return out


def _label(runs, run, text: str) -> str:
  return text if len(runs) == 1 else f"{run.name}: {text}"


def _splits_figure(runs, metric: str, out: str) -> str:
  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  for i, run in enumerate(runs):
    for split in (run_records.TRAIN, run_records.TRAIN_EVAL, run_records.VALIDATION):
      s = run.series(split, metric)
      if len(s):
        # One run: a colour per split. Several: a colour per run, a line style per split.
        ax.plot(s.steps, s.values, _STYLES[split], color=f"C{i}" if len(runs) > 1 else None,
                marker="o" if split != run_records.TRAIN else None, markersize=3,
                label=_label(runs, run, _SPLIT_NAMES[split]))
  ax.set_ylabel(metric)
  ax.set_title(_title(runs, metric), fontsize=8)
  return _finish(fig, ax, runs, out)


def _per_name_figure(runs, prefix: str, ylabel: str, out: str,
                     rename: Callable[[str], str] = lambda n: n) -> str | None:
  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  drawn = False
  for i, run in enumerate(runs):
    names = sorted(run.names(run_records.TRAIN, prefix),
                   key=lambda n: paths.network_order(n[len(prefix):]))
    for j, name in enumerate(names):
      s = run.series(run_records.TRAIN, name)
      keep = s.values > 0
      if keep.any():
        drawn = True
        ax.plot(s.steps[keep], s.values[keep], ("-", "--", ":", "-.")[i % 4],
                color=f"C{j % 10}", label=_label(runs, run, rename(name[len(prefix):])))
  if not drawn:
    plt.close(fig)
    return None
  ax.set_ylabel(ylabel)
  ax.set_title(_title(runs, ylabel), fontsize=8)
  return _finish(fig, ax, runs, out, log=True)


def _small_figure(runs, out: str, ylabel: str, what: str,
                  draw: Callable[[object, int, run_records.Run], bool]) -> str | None:
  """A short figure of one quantity per run; None when no run has it."""
  fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
  drawn = [draw(ax, i, run) for i, run in enumerate(runs)]
  if not any(drawn):
    plt.close(fig)
    return None
  ax.set_ylabel(ylabel)
  ax.set_ylim(bottom=0)
  ax.set_title(_title(runs, what), fontsize=8)
  return _finish(fig, ax, runs, out)


def _wait_figure(runs, out: str) -> str | None:
  def draw(ax, i, run):
    s = run.series(run_records.TRAIN, "data_wait_fraction")
    if len(s):
      ax.plot(s.steps, 100 * s.values, color=f"C{i}", label=_label(runs, run, "data wait"))
    return bool(len(s))

  return _small_figure(runs, out, "data wait (% of step time)", "data wait", draw)


def _spread_figure(runs, out: str) -> str | None:
  def draw(ax, i, run):
    pred = run.series(run_records.VALIDATION, "pred_std")
    true = run.series(run_records.VALIDATION, "true_std")
    if len(pred):
      ax.plot(pred.steps, pred.values, "-o", markersize=3, color=f"C{i}",
              label=_label(runs, run, "prediction std"))
      ax.plot(true.steps, true.values, ":", color=f"C{i}", label=_label(runs, run, "label std"))
    return bool(len(pred))

  return _small_figure(runs, out, "years", "validation prediction spread", draw)


def write_all(runs: Sequence[run_records.Run], out_dir: str) -> dict[str, str]:
  """Every figure that has data, as ``{name: png path}`` in reading order."""
  os.makedirs(out_dir, exist_ok=True)
  path = lambda name: os.path.join(out_dir, f"{name}.png")  # noqa: E731
  metric = runs[0].metric
  made = {
      metric: _splits_figure(runs, metric, path(metric)),
      "loss": _splits_figure(runs, "loss", path("loss")) if metric != "loss" else None,
      "lr": _per_name_figure(runs, run_records.LR, "learning rate", path("lr")),
      "update_ratio": _per_name_figure(runs, run_records.BLOCK_UPDATE_RATIO,
                                       "update / parameter norm", path("update_ratio")),
      "grad_norm": _per_name_figure(runs, run_records.BLOCK_GRAD_NORM, "gradient norm",
                                    path("grad_norm")),
      "prediction_spread": _spread_figure(runs, path("prediction_spread")),
      "data_wait": _wait_figure(runs, path("data_wait")),
  }
  return {k: v for k, v in made.items() if v}
