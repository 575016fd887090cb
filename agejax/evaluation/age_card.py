"""The age card: what a deployer asks of an age estimator beyond its MAE.

Computed from one evaluation's predictions (``pred``, ``true`` and, where
the head has one, ``spread``) and the dataset's per-example attributes
(:mod:`agejax.evaluation.attributes`), in plain numpy. The items follow
NIST's FATE Age Estimation and Verification (NIST IR 8525):

* ``bands``: MAE and mean error (bias, ``pred - true``: positive = too old)
  per band of the true age, default 0-12, 13-17, 18-24, 25-34, 35-44,
  45-54, 55-64, 65+. A band ``lo-hi`` holds the true ages with
  ``lo <= floor(age) <= hi``.
* ``mae_18_30``: FATE's headline, the mean over the cells (sex x single age
  18..30) of each cell's MAE; per single age when sex is unknown. ``cells``
  says how many cells had examples.
* ``challenge``: for each (protected age A, challenge age C), the false
  positive rate (share of people under A estimated ``>= C``: a minor let
  through) and the adults' pass rate (share of people ``>= C`` estimated
  ``>= C``); ``challenge_curve`` has both against C for each A.
* ``band_membership``: the child-online-safety band (default 13-16): true
  positive rate (people in the band estimated inside it) and the false
  positive rates of the bands just below and above (8-12, 17-22). An
  estimate ``e`` is inside ``lo-hi`` when ``lo <= e < hi + 1``.
* ``groups``: per attribute the dataset carries (gender, race, ...): MAE and
  bias per group, and the differential ``max MAE / min MAE``. Unknown values
  (``""``, ``unknown``) are left out.
* ``face_size``: MAE per face resolution bin (the source face box's shorter
  side, in pixels) where the dataset stores it.
* ``spread``: whether the head's spread means anything: the share of errors
  within 1 and 2 spreads (0.683 and 0.954 for a Gaussian of that std).

Every rate and mean comes with a 95% bootstrap interval (:class:`Bootstrap`):
resampling identities when the dataset has them (an identity's photos stay
together, as the people, not the photos, are the sample), else examples;
seeded, so the card is reproducible. Items the data cannot support are left
out and ``notes`` says why.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

Band = tuple[int, int | None]  # (lo, hi) whole years, inclusive; hi None: open
DEFAULT_BANDS: tuple[Band, ...] = ((0, 12), (13, 17), (18, 24), (25, 34), (35, 44), (45, 54),
                                   (55, 64), (65, None))
DEFAULT_CHALLENGES = ((18, 21), (18, 25), (18, 30))
MEMBERSHIP_BAND: Band = (13, 16)
MEMBERSHIP_NEIGHBOURS: tuple[Band, Band] = ((8, 12), (17, 22))
FACE_SIZE_EDGES = (0, 32, 64, 128, 256)  # pixels; the last bin is open
RESAMPLES = 1000
CURVE_SPAN = 20  # challenge_curve: C from A to A + this
UNKNOWN = ("", "unknown")
_FATE_AGES = (18, 30)
_LEVEL = 0.95


def band_label(band: Band) -> str:
  lo, hi = band
  return f"{lo}+" if hi is None else f"{lo}-{hi}"


def parse_bands(text: str) -> tuple[Band, ...]:
  """``"0-12,13-17,65+"`` -> ``((0, 12), (13, 17), (65, None))``; ValueError names a bad one."""
  bands = []
  for part in filter(None, (p.strip() for p in text.split(","))):
    try:
      if part.endswith("+"):
        bands.append((int(part[:-1]), None))
      else:
        lo, hi = part.split("-")
        bands.append((int(lo), int(hi)))
    except ValueError:
      raise ValueError(f"band {part!r} is not LO-HI or LO+ in whole years") from None
    if bands[-1][1] is not None and bands[-1][1] < bands[-1][0]:
      raise ValueError(f"band {part!r} ends before it starts")
  if not bands:
    raise ValueError(f"no bands in {text!r}")
  return tuple(bands)


def in_band(years: np.ndarray, band: Band) -> np.ndarray:
  """True ages (floored) inside ``band``."""
  lo, hi = band
  whole = np.floor(years)
  return (whole >= lo) & (True if hi is None else whole <= hi)


def estimate_in_band(estimates: np.ndarray, band: Band) -> np.ndarray:
  """Estimates inside ``band``: ``lo <= e < hi + 1``."""
  lo, hi = band
  return (estimates >= lo) & (True if hi is None else estimates < hi + 1)


@dataclasses.dataclass
class Bootstrap:
  """Percentile intervals from resampling units (identities or examples) with replacement.

  Every statistic here is a ratio of sums over examples (a mean over a
  subset, a rate), so one resample is a vector of unit counts ``w`` and the
  statistic ``(w @ S) / (w @ N)`` with ``S``, ``N`` the per-unit sums:
  1,000 resamples cost two matrix products.
  """
  units: np.ndarray  # int unit of each example, 0..U-1
  resamples: int = RESAMPLES
  seed: int = 0

  def __post_init__(self):
    count = int(self.units.max()) + 1 if self.units.size else 0
    rng = np.random.default_rng(self.seed)
    self.counts = rng.multinomial(count, np.full(count, 1.0 / count), size=self.resamples
                                  ).astype(np.float64) if count else np.zeros((0, 0))

  @classmethod
  def over(cls, identities: Sequence[Any] | None, n: int, resamples: int = RESAMPLES,
           seed: int = 0) -> "Bootstrap":
    """Units are ``identities`` (an empty one is a person of its own) or, if None, examples."""
    if identities is None:
      return cls(np.arange(n), resamples, seed)
    keys = [f"id:{v}" if str(v) not in UNKNOWN else f"example:{i}"
            for i, v in enumerate(identities)]
    _, units = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    return cls(units.reshape(-1), resamples, seed)

  def _sums(self, values: np.ndarray) -> np.ndarray:
    return np.bincount(self.units, weights=values, minlength=self.counts.shape[1])

  def samples(self, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """The statistic ``sum(numerator) / sum(denominator)`` in each resample (NaN if empty)."""
    top, bottom = self.counts @ self._sums(numerator), self.counts @ self._sums(denominator)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)

  def interval(self, samples: np.ndarray) -> list[float]:
    tail = 100 * (1 - _LEVEL) / 2
    finite = samples[np.isfinite(samples)]
    if not finite.size:
      return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(finite, [tail, 100 - tail])]

  def mean(self, values: np.ndarray, where: np.ndarray) -> tuple[float, list[float]]:
    """The mean of ``values`` over ``where``, and its interval."""
    where = where.astype(np.float64)
    value = float(np.sum(values * where) / np.sum(where))
    return value, self.interval(self.samples(values * where, where))


def _rate(boot: Bootstrap, hits: np.ndarray, where: np.ndarray, name: str) -> dict[str, Any]:
  value, ci = boot.mean(hits.astype(np.float64), where)
  return {name: value, f"{name}_ci": ci, "n": int(where.sum())}


def _bands(boot, pred, true, bands):
  errors = pred - true
  rows = []
  for band in bands:
    where = in_band(true, band)
    if not where.any():
      continue
    mae, mae_ci = boot.mean(np.abs(errors), where)
    bias, bias_ci = boot.mean(errors, where)
    rows.append({"band": band_label(band), "n": int(where.sum()), "mae": mae, "mae_ci": mae_ci,
                 "bias": bias, "bias_ci": bias_ci})
  return rows


def _mae_18_30(boot, pred, true, sex):
  """FATE's mean of per-(sex, age) MAEs over ages 18..30; None without such ages."""
  errors = np.abs(pred - true)
  ages = np.floor(true)
  known_sex = sex is not None and np.isin(sex, UNKNOWN, invert=True).any()
  cells = []
  for age in range(_FATE_AGES[0], _FATE_AGES[1] + 1):
    for s in (np.unique(sex[np.isin(sex, UNKNOWN, invert=True)]) if known_sex else [None]):
      where = (ages == age) & (True if s is None else sex == s)
      if where.any():
        cells.append(where.astype(np.float64))
  if not cells:
    return None
  value = float(np.mean([np.sum(errors * c) / np.sum(c) for c in cells]))
  per_cell = np.stack([boot.samples(errors * c, c) for c in cells], axis=1)
  with warnings.catch_warnings():  # a resample without any cell is NaN, left out
    warnings.simplefilter("ignore", RuntimeWarning)
    resampled = np.nanmean(per_cell, axis=1)
  return {"value": value, "ci": boot.interval(resampled), "cells": len(cells),
          "by": "sex x age" if known_sex else "age"}


def _challenges(boot, pred, true, challenges):
  rows = []
  for protected, challenge in challenges:
    minors, adults = true < protected, true >= challenge
    passed = pred >= challenge
    row = {"protected": protected, "challenge": challenge}
    if minors.any():
      fpr = _rate(boot, passed, minors, "fpr")
      row.update(fpr=fpr["fpr"], fpr_ci=fpr["fpr_ci"], n_minors=fpr["n"])
    if adults.any():
      ok = _rate(boot, passed, adults, "pass_rate")
      row.update(adult_pass_rate=ok["pass_rate"], adult_pass_rate_ci=ok["pass_rate_ci"],
                 n_adults=ok["n"])
    if len(row) > 2:
      rows.append(row)
  return rows


def _challenge_curve(pred, true, protected_ages):
  curve = {}
  for protected in sorted(set(protected_ages)):
    ages = list(range(protected, protected + CURVE_SPAN + 1))
    minors = true < protected
    curve[str(protected)] = {
        "challenge": ages,
        "fpr": [float(np.mean(pred[minors] >= c)) if minors.any() else None for c in ages],
        "adult_pass_rate": [float(np.mean(pred[true >= c] >= c)) if (true >= c).any() else None
                            for c in ages]}
  return curve


def _membership(boot, pred, true, band, neighbours):
  inside = estimate_in_band(pred, band)
  out = {"band": band_label(band)}
  where = in_band(true, band)
  if where.any():
    out.update(_rate(boot, inside, where, "tpr"))
  for side, other in zip(("below", "above"), neighbours):
    where = in_band(true, other)
    if where.any():
      out[side] = {"band": band_label(other), **_rate(boot, inside, where, "fpr")}
  return out if len(out) > 1 else None


def _groups(boot, pred, true, values):
  errors = pred - true
  labels = values.astype(str)
  rows = {}
  for group in sorted(set(labels.tolist()) - set(UNKNOWN)):
    where = labels == group
    mae, mae_ci = boot.mean(np.abs(errors), where)
    rows[group] = {"n": int(where.sum()), "mae": mae, "mae_ci": mae_ci,
                   "bias": float(np.mean(errors[where]))}
  maes = [r["mae"] for r in rows.values()]
  if len(rows) < 2 or min(maes) <= 0:
    return None
  return {"groups": rows, "differential": max(maes) / min(maes)}


def _face_size(boot, pred, true, sizes):
  errors = np.abs(pred - true)
  rows = []
  edges = list(FACE_SIZE_EDGES) + [None]
  for lo, hi in zip(edges[:-1], edges[1:]):
    where = (sizes >= lo) & (True if hi is None else sizes < hi)
    if where.any():
      mae, ci = boot.mean(errors, where)
      rows.append({"pixels": f"{lo}+" if hi is None else f"{lo}-{hi - 1}",
                   "n": int(where.sum()), "mae": mae, "mae_ci": ci})
  return rows


def _spread(pred, true, spread):
  errors = np.abs(pred - true)
  return {"within_1": float(np.mean(errors <= spread)),
          "within_2": float(np.mean(errors <= 2 * spread)),
          "gaussian": [0.683, 0.954], "mean_spread": float(np.mean(spread))}


def age_card(pred: Any, true: Any, spread: Any | None = None,
             attributes: Mapping[str, Sequence[Any]] | None = None, *,
             bands: Sequence[Band] = DEFAULT_BANDS,
             challenges: Sequence[tuple[int, int]] = DEFAULT_CHALLENGES,
             membership: Band = MEMBERSHIP_BAND,
             neighbours: tuple[Band, Band] = MEMBERSHIP_NEIGHBOURS,
             resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
  """The card (module doc) of one evaluation, JSON-ready.

  ``attributes``: per-example values by feature name, in the order of
  ``pred``. ``identity`` makes the bootstrap resample people; ``gender``
  gives FATE's sex cells; ``face_size`` the resolution table; every other
  one (``race``, ...) and ``gender`` a group table.
  """
  pred = np.asarray(pred, np.float64).reshape(-1)
  true = np.asarray(true, np.float64).reshape(-1)
  attributes = {k: np.asarray(v) for k, v in (attributes or {}).items()}
  for name, values in attributes.items():
    if values.shape != pred.shape:
      raise ValueError(f"attribute {name!r} has {values.size} values for {pred.size} examples")
  identity = attributes.get("identity")
  boot = Bootstrap.over(identity, pred.size, resamples, seed)
  notes = []
  card: dict[str, Any] = {
      "bootstrap": {"resamples": resamples, "seed": seed, "level": _LEVEL,
                    "unit": "identity" if identity is not None else "example",
                    "units": int(boot.counts.shape[1])},
      "bands": _bands(boot, pred, true, bands)}
  fate = _mae_18_30(boot, pred, true, attributes.get("gender"))
  if fate:
    card["mae_18_30"] = fate
  else:
    notes.append("mae_18_30: no true ages 18-30")
  card["challenge"] = _challenges(boot, pred, true, challenges)
  card["challenge_curve"] = _challenge_curve(pred, true, [a for a, _ in challenges])
  member = _membership(boot, pred, true, membership, neighbours)
  if member:
    card["band_membership"] = member
  groups = {}
  for name, values in attributes.items():
    if name in ("identity", "face_size"):
      continue
    table = _groups(boot, pred, true, values)
    if table:
      groups[name] = table
    else:
      notes.append(f"groups: {name} has fewer than two known groups")
  card["groups"] = groups
  if "face_size" in attributes:
    card["face_size"] = _face_size(boot, pred, true, attributes["face_size"].astype(np.float64))
  else:
    notes.append("face_size: the dataset stores no face size (rebuild it with a builder "
                 "that records the source face box)")
  if spread is not None and np.any(np.asarray(spread) > 0):
    card["spread"] = _spread(pred, true, np.asarray(spread, np.float64).reshape(-1))
  else:
    notes.append("spread: the head has no spread")
  card["notes"] = notes
  return card


def format_card(card: Mapping[str, Any]) -> str:
  """The card in a few lines for the console, after the metrics table."""
  def ci(pair):
    return f"[{pair[0]:.2f}, {pair[1]:.2f}]"

  unit = card["bootstrap"]["unit"]
  lines = [f"age card (95% intervals, {card['bootstrap']['resamples']} resamples of "
           f"{card['bootstrap']['units']} {unit}s)"]
  lines.append("  band      n      MAE                   bias")
  for b in card["bands"]:
    lines.append(f"  {b['band']:<7} {b['n']:>5}  {b['mae']:6.2f} {ci(b['mae_ci']):<15} "
                 f"{b['bias']:+6.2f} {ci(b['bias_ci'])}")
  if "mae_18_30" in card:
    f = card["mae_18_30"]
    lines.append(f"  MAE 18-30 (FATE, mean over {f['cells']} {f['by']} cells): {f['value']:.2f} "
                 f"{ci(f['ci'])}")
  for c in card["challenge"]:
    parts = []
    if "fpr" in c:
      parts.append(f"under {c['protected']} estimated >= {c['challenge']}: {c['fpr']:.3f} "
                   f"{ci(c['fpr_ci'])} of {c['n_minors']}")
    if "adult_pass_rate" in c:
      parts.append(f"{c['challenge']}+ pass {c['adult_pass_rate']:.3f}")
    lines.append(f"  challenge {c['protected']}/{c['challenge']}: " + "; ".join(parts))
  m = card.get("band_membership")
  if m:
    parts = [f"TPR {m['tpr']:.3f}"] if "tpr" in m else []
    parts += [f"FPR {m[s]['band']} {m[s]['fpr']:.3f}" for s in ("below", "above") if s in m]
    lines.append(f"  band {m['band']}: " + ", ".join(parts))
  for name, table in card["groups"].items():
    shown = ", ".join(f"{g} {r['mae']:.2f}" for g, r in table["groups"].items())
    lines.append(f"  MAE by {name}: {shown} (differential {table['differential']:.2f}x)")
  if "spread" in card:
    s = card["spread"]
    lines.append(f"  spread: {s['within_1']:.2f} of errors within 1 spread, "
                 f"{s['within_2']:.2f} within 2 (a Gaussian: 0.68, 0.95)")
  lines += [f"  note: {n}" for n in card["notes"]]
  return "\n".join(lines)
