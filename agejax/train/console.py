"""What a training run tells the person watching it, on stdout and in ``DIR/log.txt``.

Three parts, in the style of Keras' ``fit`` and timm's ``train.py``:

* a start block: model, weights, data, batch, length, optimizer, groups,
  devices and where everything goes, plus a loud warning when the config
  fine-tunes from random weights;
* one line per log interval (epoch, step, elapsed and ETA, loss, MAE, LR,
  throughput, data wait) with a live progress bar between them on a
  terminal, and one line per evaluation pairing train-eval and validation,
  ``*`` marking a new best;
* an end block: why it stopped, wall time, best and final metrics, the
  files, and the next commands.

Only process 0 prints. The log file holds every line printed here; the
entry point adds the libraries' log records to the same file.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Mapping

import ml_collections

from agejax import terminal
from agejax.train import run_length

LOG_FILE = "log.txt"


def _lr(values: Mapping[str, float]) -> float | None:
  """The largest group learning rate of an interval (the head's, usually)."""
  rates = [v for k, v in values.items() if k.startswith("lr/")]
  return max(rates) if rates else None


class TrainingConsole:
  """The human side of one run; a no-op on processes other than 0."""

  def __init__(self, workdir: str, length: run_length.RunLength, first_step: int,
               enabled: bool):
    self._enabled = enabled
    self._length = length
    self._first_step = first_step
    self._started = time.perf_counter()
    self._log_path = os.path.join(workdir, LOG_FILE)
    self._bar = None

  def echo(self, text: str = "") -> None:
    if not self._enabled:
      return
    for line in text.split("\n"):
      terminal.echo(line)
    # Opened per call: a few hundred lines a run, and nothing is lost on a crash.
    with open(self._log_path, "a", encoding="utf-8") as log:
      log.write(text + "\n")

  def start(self, rows: list[tuple[str, str]], warning: str | None, resumed_from: int | None
            ) -> None:
    title = "agejax training" + (f" (resumed at step {resumed_from:,})" if resumed_from else "")
    self.echo(terminal.block(title, rows))
    if warning:
      self.echo(warning)
    self.echo()
    if self._enabled:
      self._bar = terminal.progress(total=self._length.total_steps, initial=self._first_step,
                                    unit="step", desc="train")
      self._started = time.perf_counter()

  def advance(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def _epoch(self, step: int) -> str:
    """``epoch 3/20``: the epoch ``step`` belongs to (its last step included)."""
    n = self._length
    # Rounded first: a phase's epoch arithmetic may land a hair above a whole epoch.
    return (f"epoch {math.ceil(round(n.epoch_of_step(step), 6))}/"
            f"{math.ceil(round(n.total_epochs, 6))}")

  def interval(self, step: int, values: Mapping[str, float]) -> None:
    """``epoch 3/20  step 1,234/10,000 (12%)  1m23s, ETA 9m50s  loss 3.210 ...``."""
    total = self._length.total_steps
    elapsed = time.perf_counter() - self._started
    # From this interval's speed: the first interval's compilation is not the pace.
    speed = values.get("steps_per_sec")
    eta = f", ETA {terminal.duration((total - step) / speed)}" if speed else ""
    parts = [self._epoch(step), f"step {step:,}/{total:,} ({100 * step / total:.0f}%)",
             f"{terminal.duration(elapsed)}{eta}",
             f"loss {values['loss']:.3f}", f"mae {values['mae']:.2f}"]
    lr = _lr(values)
    if lr is not None:
      parts.append(f"lr {lr:.3g}")
    if "images_per_sec" in values:
      parts.append(f"{values['images_per_sec']:,.0f} img/s")
      parts.append(f"wait {100 * values['data_wait_fraction']:.1f}%")
    self.echo("  ".join(parts))

  def evaluation(self, step: int, metric: str, validation: Mapping[str, float],
                 train_eval: Mapping[str, float] | None, best: bool) -> None:
    """``eval step 512  mae train-eval 3.10 | validation 4.12 *  loss ...  pred std ...``."""
    def pair(name: str, fmt: str) -> str:
      train = f"{train_eval[name]:{fmt}} | " if train_eval else ""
      return f"{name} {train}{validation[name]:{fmt}}"

    parts = [f"eval  step {step:,}", ("train-eval | validation" if train_eval else "validation"),
             pair(metric, ".3f") + (" *" if best else "")]
    if metric != "loss":
      parts.append(pair("loss", ".3f"))
    parts.append(f"pred std {validation['pred_std']:.1f} (labels {validation['true_std']:.1f})")
    self.echo("  ".join(parts))

  def end(self, summary: Mapping[str, Any], cfg: ml_collections.ConfigDict, workdir: str,
          best_checkpoint: str | None) -> None:
    self.close()
    metric = cfg.train.best_metric
    n = self._length
    step = summary["step"]
    rows = [("stopped", f"{summary['stopped']} at step {step:,} "
                        f"({n.epoch_of_step(step):.2f} epochs)"),
            ("wall time", terminal.duration(summary["wall_seconds"]))]
    if summary["best"] is not None:
      rows.append((f"best {metric}", f"{summary['best']:.3f} at step {summary['best_step']:,}"))
    final = summary["validation"].get(metric)
    if final is not None:
      rows.append((f"final {metric}", f"{final:.3f} at step {step:,}"))
    rows += [("workdir", workdir),
             ("best checkpoint", best_checkpoint or "none yet"),
             ("tensorboard", f"tensorboard --logdir {workdir}"),
             ("log", os.path.join(workdir, LOG_FILE))]
    self.echo()
    self.echo(terminal.block("agejax training done", rows))
    self.echo(terminal.block("next", [
        ("diagnose", f"python -m agejax.report --workdir={workdir}"),
        ("evaluate", f"python -m agejax.evaluate --workdir={workdir}"),
        ("export", f"python -m agejax.export --workdir={workdir} "
                   f"--output={os.path.join(workdir, 'export')}")]))

  def close(self) -> None:
    """Ends the progress bar (the lines stay)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
