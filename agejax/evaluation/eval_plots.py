"""The figures of an evaluation, written as PNG files next to its JSON.

Each function draws one figure from the predictions or from the metrics of
:mod:`agejax.evaluation.age_metrics`, saves it and returns the path. :func:`png_pixels`
reads a written figure back as the uint8 array TensorBoard takes, so the
image in TensorBoard is the file, pixel for pixel.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
from matplotlib import pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# Figure names: <stem>_<name>.png. Also the TensorBoard image tags.
FIGURES = ("pred_vs_true", "mae_by_age", "cs", "error_hist")
# Above this many examples single points hide each other: hexbin densities.
SCATTER_MAX_POINTS = 2000
_SIZE, _DPI = (6, 4.5), 100


def _save(fig: plt.Figure, out_path: str) -> str:
  fig.tight_layout()
  fig.savefig(out_path)
  plt.close(fig)
  return out_path


def plot_pred_vs_true(pred: Sequence[float], true: Sequence[float], out_path: str,
                      title: str = "") -> str:
  """Predicted against true age, with the identity line."""
  pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
  fig, ax = plt.subplots(figsize=(5.5, 5), dpi=_DPI)
  low = float(min(pred.min(), true.min()))
  high = float(max(pred.max(), true.max()))
  margin = max(1.0, 0.03 * (high - low))
  low, high = low - margin, high + margin
  if pred.size > SCATTER_MAX_POINTS:
    hexes = ax.hexbin(true, pred, gridsize=50, mincnt=1, bins="log", cmap="viridis",
                      extent=(low, high, low, high))
    fig.colorbar(hexes, ax=ax, label="examples")
  else:
    ax.scatter(true, pred, s=10, alpha=0.6, edgecolors="none")
  ax.plot([low, high], [low, high], color="black", linewidth=1, label="pred = true")
  ax.set_xlim(low, high)
  ax.set_ylim(low, high)
  ax.set_aspect("equal")
  ax.set_xlabel("true age")
  ax.set_ylabel("predicted age")
  ax.set_title(title or "predicted vs true age", fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(loc="upper left", fontsize=8)
  return _save(fig, out_path)


def plot_mae_by_age(mae_by_decade: Mapping[str, float], n_by_decade: Mapping[str, int],
                    out_path: str, title: str = "") -> str:
  """MAE per decade of the true age; each bar is labelled with its example count."""
  names = list(mae_by_decade)
  fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
  bars = ax.bar(names, [mae_by_decade[k] for k in names], color="tab:blue")
  ax.bar_label(bars, labels=[f"n={n_by_decade.get(k, 0)}" for k in names], fontsize=8)
  ax.set_xlabel("true age")
  ax.set_ylabel("MAE (years)")
  ax.set_title(title or "MAE by age", fontsize=10)
  ax.margins(y=0.12)  # room for the labels above the tallest bar
  ax.grid(True, axis="y", alpha=0.3)
  return _save(fig, out_path)


def plot_cs_curve(cs: Sequence[float], out_path: str, title: str = "") -> str:
  """CS@k, the fraction of examples within k years, against k."""
  years = np.arange(len(cs))
  fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
  ax.plot(years, cs, marker="o")
  if len(cs) > 5:
    ax.annotate(f"CS@5 = {cs[5]:.3f}", (5, cs[5]), textcoords="offset points",
                xytext=(8, -14), fontsize=9)
  ax.set_xticks(years)
  ax.set_ylim(0.0, 1.02)
  ax.set_xlabel("error tolerance k (years)")
  ax.set_ylabel("fraction with |error| <= k")
  ax.set_title(title or "cumulative score", fontsize=10)
  ax.grid(True, alpha=0.3)
  return _save(fig, out_path)


def plot_error_hist(pred: Sequence[float], true: Sequence[float], out_path: str,
                    title: str = "") -> str:
  """Histogram of ``pred - true`` with zero and the mean error marked."""
  errors = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
  fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
  ax.hist(errors, bins=min(60, max(10, errors.size // 10)), color="tab:gray")
  ax.axvline(0.0, color="black", linewidth=1)
  mean = float(errors.mean())
  ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean error {mean:+.2f}")
  ax.set_xlabel("predicted - true age (years)")
  ax.set_ylabel("examples")
  ax.set_title(title or "error distribution", fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(True, alpha=0.3)
  return _save(fig, out_path)


def _error_bars(values: Sequence[float], intervals: Sequence[Sequence[float]]) -> np.ndarray:
  values = np.asarray(values, np.float64)
  bounds = np.asarray(intervals, np.float64).reshape(-1, 2)
  return np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values]))


def plot_card_bands(card: Mapping[str, Any], out_path: str, title: str = "") -> str:
  """MAE and bias per age band with their 95% intervals (the age card's first table)."""
  bands = card["bands"]
  names = [b["band"] for b in bands]
  x = np.arange(len(names))
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), dpi=_DPI, sharex=True)
  bars = top.bar(x, [b["mae"] for b in bands], color="tab:blue",
                 yerr=_error_bars([b["mae"] for b in bands], [b["mae_ci"] for b in bands]),
                 capsize=3)
  top.bar_label(bars, labels=[f"n={b['n']}" for b in bands], fontsize=7, padding=6)
  top.set_ylabel("MAE (years)")
  top.margins(y=0.15)
  bottom.axhline(0.0, color="black", linewidth=1)
  bottom.errorbar(x, [b["bias"] for b in bands], capsize=3, marker="o", linestyle="none",
                  yerr=_error_bars([b["bias"] for b in bands], [b["bias_ci"] for b in bands]),
                  color="tab:red")
  bottom.set_ylabel("bias: predicted - true")
  bottom.set_xticks(x, names)
  bottom.set_xlabel("true age band")
  for ax in (top, bottom):
    ax.grid(True, axis="y", alpha=0.3)
  top.set_title(title or "MAE and bias by age band (95% bootstrap intervals)", fontsize=10)
  return _save(fig, out_path)


def plot_card_challenge(card: Mapping[str, Any], out_path: str, title: str = "") -> str:
  """Minors estimated at or over the challenge age, and adults passing, against that age."""
  fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
  for protected, curve in card["challenge_curve"].items():
    ages = curve["challenge"]
    fpr = [np.nan if v is None else v for v in curve["fpr"]]
    passed = [np.nan if v is None else v for v in curve["adult_pass_rate"]]
    ax.plot(ages, fpr, marker="o", markersize=3, label=f"under {protected} estimated >= C")
    ax.plot(ages, passed, linestyle="--", label="C and over estimated >= C")
  for c in card["challenge"]:
    if "fpr" in c:
      ax.annotate(f"{c['fpr']:.3f}", (c["challenge"], c["fpr"]), textcoords="offset points",
                  xytext=(4, 6), fontsize=8)
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("challenge age C")
  ax.set_ylabel("fraction")
  ax.set_title(title or "challenge-age decisions", fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(True, alpha=0.3)
  return _save(fig, out_path)


def plot_calibration(calibration: Mapping[str, Any], out_path: str, title: str = "") -> str:
  """Realised coverage of the calibrated intervals per age band, against the target."""
  bands = calibration["bands"]
  x = np.arange(len(bands))
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), dpi=_DPI, sharex=True)
  bars = top.bar(x, [b["coverage"] for b in bands], color="tab:green")
  top.bar_label(bars, labels=[f"n={b['n']}" for b in bands], fontsize=7)
  target = calibration["target"]
  top.axhline(target, color="black", linestyle="--", linewidth=1,
              label=f"target {target:.0%}; overall {calibration['coverage']:.1%}")
  top.set_ylim(0.0, 1.1)
  top.set_ylabel("coverage")
  top.legend(fontsize=8, loc="lower right")
  bottom.bar(x, [b["mean_width"] for b in bands], color="tab:gray")
  bottom.set_ylabel("mean width (years)")
  bottom.set_xticks(x, [b["band"] for b in bands])
  bottom.set_xlabel("true age band")
  for ax in (top, bottom):
    ax.grid(True, axis="y", alpha=0.3)
  top.set_title(title or "calibrated intervals by age band", fontsize=10)
  return _save(fig, out_path)


def plot_all(pred: Sequence[float], true: Sequence[float], metrics: Mapping[str, Any],
             stem: str, title: str = "") -> dict[str, str]:
  """Every figure of :data:`FIGURES` as ``<stem>_<name>.png``; name -> path.

  The age card's two need ``metrics["card"]``, the intervals' one
  ``metrics["calibration"]``; without them they are left out.
  """
  os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
  path = lambda name: f"{stem}_{name}.png"
  suffix = f"\n{title}" if title else ""  # a second line: long names fit
  return {
      "pred_vs_true": plot_pred_vs_true(pred, true, path("pred_vs_true"),
                                        "predicted vs true age" + suffix),
      "mae_by_age": plot_mae_by_age(metrics["mae_by_decade"], metrics["n_by_decade"],
                                    path("mae_by_age"), "MAE by age" + suffix),
      "cs": plot_cs_curve(metrics["cs"], path("cs"), "cumulative score" + suffix),
      "error_hist": plot_error_hist(pred, true, path("error_hist"),
                                    "error distribution" + suffix),
      **({"card_bands": plot_card_bands(
              metrics["card"], path("card_bands"),
              "MAE and bias by age band (95% intervals)" + suffix),
          "card_challenge": plot_card_challenge(
              metrics["card"], path("card_challenge"), "challenge-age decisions" + suffix)}
         if "card" in metrics else {}),
      **({"calibration": plot_calibration(
              metrics["calibration"], path("calibration"),
              f"{100 * metrics['calibration']['target']:g}% intervals: coverage by age band"
              + suffix)} if "calibration" in metrics else {}),
  }


def png_pixels(path: str) -> np.ndarray:
  """A PNG file as an [H, W, 3] uint8 array (what TensorBoard image summaries take)."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"), np.uint8)
