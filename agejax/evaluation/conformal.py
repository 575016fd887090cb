"""Split-conformal age intervals: fit on one split, measure on another.

Following Angelopoulos and Bates, "A Gentle Introduction to Conformal
Prediction and Distribution-Free Uncertainty Quantification" (2021),
sections 1 and 2.3. On the calibration split's ``n`` examples the score of
each is its error in units of the interval's scale
(:func:`agejax.evaluation.intervals.scale`: ``max(spread, min_spread)`` for a
head with a spread, "normalized"; 1 without one, "absolute"):

  ``s_i = |true_i - pred_i| / scale_i``

and ``quantile`` is the ``ceil((n + 1) * coverage)``-th smallest score. For
a new example exchangeable with the calibration ones,
``|true - pred| <= quantile * scale`` holds with probability at least
``coverage`` (and below ``coverage + 1 / (n + 1)`` without ties). On the
calibration split itself the share covered is exactly
``ceil((n + 1) * coverage) / n`` (without ties): what the tests check.

The interval's formula, its JSON and where a run keeps it live in
:mod:`agejax.evaluation.intervals`, which every runtime's client reads.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from agejax.evaluation import age_card
from agejax.evaluation import intervals

DEFAULT_COVERAGE = 0.9


def method_for(spread: Any | None) -> str:
  """``normalized`` where the head has a spread, ``absolute`` where it has none."""
  has_spread = spread is not None and np.any(np.asarray(spread) > 0)
  return "normalized" if has_spread else "absolute"


def fit(pred: Any, true: Any, spread: Any | None, coverage: float = DEFAULT_COVERAGE, *,
        fitted_on: str = "", step: int = 0) -> dict[str, Any]:
  """The interval (JSON-ready, :mod:`agejax.evaluation.intervals`' format) of one split.

  Raises:
    ValueError: ``coverage`` outside (0, 1), or too few examples for it
      (``ceil((n + 1) * coverage) > n``: the interval would be infinite).
  """
  if not 0.0 < coverage < 1.0:
    raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
  pred = np.asarray(pred, np.float64).reshape(-1)
  true = np.asarray(true, np.float64).reshape(-1)
  n = pred.size
  rank = math.ceil((n + 1) * coverage)
  if rank > n:
    raise ValueError(f"{n} examples cannot calibrate a {coverage:g} interval: it needs at "
                     f"least {math.ceil(coverage / (1 - coverage))}")
  method = method_for(spread)
  interval: dict[str, Any] = {"method": method, "coverage": float(coverage),
                              "formula": intervals.FORMULAS[method]}
  if method == "normalized":
    interval["min_spread"] = intervals.MIN_SPREAD
  scores = np.abs(true - pred) / intervals.scale(
      np.zeros(n) if spread is None else np.asarray(spread).reshape(-1), interval)
  interval.update(quantile=float(np.sort(scores)[rank - 1]), examples=int(n),
                  fitted_on=fitted_on, step=int(step))
  return interval


def assess(pred: Any, true: Any, spread: Any | None, interval: Mapping[str, Any], *,
           min_age: float, max_age: float,
           bands: Sequence[age_card.Band] = age_card.DEFAULT_BANDS,
           boot: age_card.Bootstrap | None = None) -> dict[str, Any]:
  """The realised coverage (overall with its bootstrap interval, per band) and widths."""
  pred = np.asarray(pred, np.float64).reshape(-1)
  true = np.asarray(true, np.float64).reshape(-1)
  spread = np.zeros_like(pred) if spread is None else np.asarray(spread).reshape(-1)
  low, high = intervals.bounds(pred, spread, interval, min_age, max_age)
  covered = ((true >= low) & (true <= high)).astype(np.float64)
  width = high - low
  boot = boot or age_card.Bootstrap.over(None, pred.size)
  coverage, coverage_ci = boot.mean(covered, np.ones_like(covered))
  rows = []
  for band in bands:
    where = age_card.in_band(true, band)
    if where.any():
      rows.append({"band": age_card.band_label(band), "n": int(where.sum()),
                   "coverage": float(covered[where].mean()),
                   "mean_width": float(width[where].mean())})
  return {"target": float(interval["coverage"]), "coverage": coverage,
          "coverage_ci": coverage_ci, "n": int(pred.size), "mean_width": float(width.mean()),
          "bands": rows}


def format_calibration(calibration: Mapping[str, Any]) -> str:
  """Two or three console lines: the interval, its coverage, the widest and worst bands."""
  interval = calibration["interval"]
  lo, hi = calibration["coverage_ci"]
  lines = [f"calibrated intervals: {intervals.describe(interval)}, fitted on "
           f"{interval['fitted_on']} ({interval['examples']} examples)",
           f"  coverage {calibration['coverage']:.3f} [{lo:.3f}, {hi:.3f}] of "
           f"{calibration['n']} (target {calibration['target']:.2f}), mean width "
           f"{calibration['mean_width']:.2f} years"]
  if calibration.get("in_sample"):
    lines[-1] += " (in-sample: the split it was fitted on)"
  if calibration["bands"]:
    lines.append("  by band: " + ", ".join(f"{b['band']} {b['coverage']:.2f}"
                                           for b in calibration["bands"]))
  return "\n".join(lines)
