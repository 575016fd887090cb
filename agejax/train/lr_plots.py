"""Figures people would rather look at than read, written as PNG files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
from matplotlib import pyplot as plt  # noqa: E402


def plot_lr_plan(plan, out_path: str, title: str = "", labels: dict[str, str] | None = None
                 ) -> str:
  """Learning rate of every trainable group over the run, on a log axis.

  Log, so a group at x0.01 is a curve two decades below the head's rather
  than a flat line on zero. Zero learning rates (the start of a warm-up from
  0, the end of a cosine to 0) cannot be drawn there and are left out.
  """
  steps, base = plan.lr_curve
  labels = labels or {}
  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  for group, mult in plan.group_lr_mults.items():
    lr = base * mult
    keep = lr > 0
    ax.plot(steps[keep], lr[keep], label=f"{labels.get(group, group)} (x{mult:g})")
  ax.set_xlabel("step")
  ax.set_ylabel("learning rate")
  ax.set_yscale("log")
  ax.set_title(title or "learning rate per group", fontsize=9)
  spe = plan.length.steps_per_epoch
  epochs = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
  epochs.set_xlabel("epoch")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
  return out_path


def plot_lr_find(lrs, losses, smoothed, suggested_lr: float, out_path: str) -> str:
  """Loss against the base learning rate of the range test, log-scaled LR."""
  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  ax.plot(lrs, losses, alpha=0.3, label="loss")
  ax.plot(lrs, smoothed, label="smoothed loss")
  ax.axvline(suggested_lr, color="C3", linestyle="--", label=f"suggested lr {suggested_lr:.3g}")
  ax.set_xscale("log")
  ax.set_xlabel("base learning rate")
  ax.set_ylabel("training loss")
  finite = [s for s in smoothed if s == s and abs(s) != float("inf")]
  if finite:  # the blow-up at the end would flatten the interesting part
    ax.set_ylim(min(finite) * 0.95, min(max(finite), 4 * min(finite)) * 1.05)
  ax.grid(True, alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
  return out_path
