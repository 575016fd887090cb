"""Age-estimation metrics on predicted and true ages, in plain numpy.

Every function takes 1-D arrays of predictions and labels (any float or int
dtype; computed in float64) and returns Python numbers, so the results go
straight into JSON. Errors are ``pred - true``: a positive mean error means
the model guesses too old.

* ``mae``, ``rmse``, ``mean_error`` (bias).
* ``cs_curve``: the cumulative score CS@k, the fraction of examples with
  ``|pred - true| <= k`` years, for k = 0..:data:`CS_MAX_YEARS`.
* ``mae_by_decade``: MAE of the examples whose TRUE age lies in each decade
  ``"0-9"``, ``"10-19"``, ..., ``"90-99"`` and ``"100+"`` (apparent ages such
  as 9.7 fall in the decade of their floor). Decades without examples are
  left out.
* ``pred_mean``, ``pred_std``, ``true_mean``, ``true_std``: the spread of
  the predictions next to the labels'. A model that predicts about the mean
  age for every face (a collapsed head) has ``pred_std`` far below
  ``true_std``, whatever its MAE.
* ``epsilon_error``: the ChaLearn LAP 2015/2016 apparent-age error,
  ``mean(1 - exp(-(pred - mu)^2 / (2 sigma^2)))`` with mu the mean and sigma
  the std of the human guesses. It is defined for sigma > 0 only, so examples
  with sigma <= 0 are left out and ``epsilon_n`` says how many were used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CS_MAX_YEARS = 10  # cs_curve reports CS@0 .. CS@10
OLDEST_DECADE = 100  # ages from here on share the last bin, "100+"


def _pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
  pred = np.asarray(pred, np.float64).reshape(-1)
  true = np.asarray(true, np.float64).reshape(-1)
  if pred.shape != true.shape:
    raise ValueError(f"{pred.size} predictions for {true.size} labels")
  if not pred.size:
    raise ValueError("no examples")
  return pred, true


def mae(pred: Any, true: Any) -> float:
  """Mean absolute error in years."""
  pred, true = _pair(pred, true)
  return float(np.mean(np.abs(pred - true)))


def rmse(pred: Any, true: Any) -> float:
  """Root mean squared error in years."""
  pred, true = _pair(pred, true)
  return float(np.sqrt(np.mean(np.square(pred - true))))


def mean_error(pred: Any, true: Any) -> float:
  """Mean of ``pred - true``: positive when the model overestimates ages."""
  pred, true = _pair(pred, true)
  return float(np.mean(pred - true))


def cs_curve(pred: Any, true: Any, max_years: int = CS_MAX_YEARS) -> list[float]:
  """``[CS@0, ..., CS@max_years]``: fractions within k years, k = 0..max_years."""
  pred, true = _pair(pred, true)
  errors = np.abs(pred - true)
  return [float(np.mean(errors <= k)) for k in range(max_years + 1)]


def decade_label(start: int) -> str:
  """``"30-39"`` for 30, and ``"100+"`` for the last, open bin."""
  return f"{OLDEST_DECADE}+" if start >= OLDEST_DECADE else f"{start}-{start + 9}"


def _decade_starts(true: np.ndarray) -> np.ndarray:
  # Negative ages cannot come from the builders; clipping keeps them in "0-9"
  # rather than inventing a "-10--1" bin.
  starts = np.floor(np.maximum(true, 0.0) / 10.0).astype(np.int64) * 10
  return np.minimum(starts, OLDEST_DECADE)


def mae_by_decade(pred: Any, true: Any) -> dict[str, float]:
  """MAE per decade of the true age, youngest first; empty decades omitted."""
  pred, true = _pair(pred, true)
  starts = _decade_starts(true)
  errors = np.abs(pred - true)
  return {decade_label(int(s)): float(np.mean(errors[starts == s]))
          for s in np.unique(starts)}


def count_by_decade(true: Any) -> dict[str, int]:
  """Examples per decade of the true age (the denominators of mae_by_decade)."""
  starts = _decade_starts(np.asarray(true, np.float64).reshape(-1))
  values, counts = np.unique(starts, return_counts=True)
  return {decade_label(int(s)): int(c) for s, c in zip(values, counts)}


def epsilon_error(pred: Any, mu: Any, sigma: Any) -> tuple[float, int] | None:
  """ChaLearn's epsilon-error over the examples with ``sigma > 0``.

  Returns:
    ``(error, examples used)``, or None when no example has a positive sigma
    (no apparent-age std, or a pipeline that filled it with zeros).
  """
  pred, mu = _pair(pred, mu)
  sigma = np.asarray(sigma, np.float64).reshape(-1)
  if sigma.shape != mu.shape:
    raise ValueError(f"{sigma.size} stds for {mu.size} labels")
  used = sigma > 0
  if not used.any():
    return None
  z = (pred[used] - mu[used]) / sigma[used]
  return float(np.mean(1.0 - np.exp(-0.5 * np.square(z)))), int(used.sum())


def summarize(pred: Any, true: Any, std: Any | None = None) -> dict[str, Any]:
  """Every metric above in one JSON-ready dict.

  Keys: ``n``, ``mae``, ``rmse``, ``mean_error``, ``cs`` (list, k = 0..10),
  ``cs5``, ``pred_mean``, ``pred_std``, ``true_mean``, ``true_std``,
  ``mae_by_decade``, ``n_by_decade`` and, when ``std`` has a
  positive entry, ``epsilon_error`` and ``epsilon_n``.
  """
  pred, true = _pair(pred, true)
  cs = cs_curve(pred, true)
  out = {
      "n": int(pred.size),
      "mae": mae(pred, true),
      "rmse": rmse(pred, true),
      "mean_error": mean_error(pred, true),
      "cs": cs,
      "cs5": cs[5],  # the number papers quote, next to MAE
      "pred_mean": float(np.mean(pred)),
      "pred_std": float(np.std(pred)),
      "true_mean": float(np.mean(true)),
      "true_std": float(np.std(true)),
      "mae_by_decade": mae_by_decade(pred, true),
      "n_by_decade": count_by_decade(true),
  }
  if std is not None:
    epsilon = epsilon_error(pred, true, std)
    if epsilon is not None:
      out["epsilon_error"], out["epsilon_n"] = epsilon
  return out
