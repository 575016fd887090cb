"""Figures people would rather look at than read, written as PNG files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
from matplotlib import pyplot as plt  # noqa: E402


def plot_lr_plan(plan, out_path: str) -> str:
  """Learning rate of every trainable group over the run (log scale)."""
  steps, base = plan.lr_curve
  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  for group, mult in plan.group_lr_mults.items():
    ax.plot(steps, base * mult, label=f"{group} (x{mult:g})")
  ax.set_xlabel("step")
  ax.set_ylabel("learning rate")
  if (base > 0).all():
    ax.set_yscale("log")
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
