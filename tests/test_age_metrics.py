"""Tests for agejax.evaluation.age_metrics on values small enough to work out by hand."""

import math

import numpy as np
import pytest

from agejax.evaluation import age_metrics

# Errors pred - true: -2, 0, +5.
PRED = [20.0, 30.0, 45.0]
TRUE = [22.0, 30.0, 40.0]


def test_mae_rmse_and_bias():
  assert age_metrics.mae(PRED, TRUE) == pytest.approx(7 / 3, abs=1e-15)
  assert age_metrics.rmse(PRED, TRUE) == pytest.approx(math.sqrt(29 / 3), abs=1e-15)
  assert age_metrics.mean_error(PRED, TRUE) == 1.0
  # The sign says who is older: swapping the roles flips it.
  assert age_metrics.mean_error(TRUE, PRED) == -1.0


def test_cs_curve_counts_errors_up_to_and_including_k():
  cs = age_metrics.cs_curve(PRED, TRUE)
  assert len(cs) == 11
  assert cs == [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3] + [1.0] * 6
  assert age_metrics.cs_curve([1.5], [1.0], max_years=1) == [0.0, 1.0]


def test_mae_by_decade_bins_by_true_age_and_omits_empty_decades():
  assert age_metrics.mae_by_decade(PRED, TRUE) == {"20-29": 2.0, "30-39": 0.0, "40-49": 5.0}
  # Apparent ages take the decade of their floor; 100 and beyond share "100+".
  true = [9.7, 10.0, 99.9, 100.0, 117.0, 3.0]
  pred = [10.7, 13.0, 99.9, 90.0, 120.0, 6.0]
  by_decade = age_metrics.mae_by_decade(pred, true)
  assert list(by_decade) == ["0-9", "10-19", "90-99", "100+"]
  assert by_decade == pytest.approx({"0-9": 2.0, "10-19": 3.0, "90-99": 0.0, "100+": 6.5},
                                    abs=1e-12)
  assert age_metrics.count_by_decade(true) == {"0-9": 2, "10-19": 1, "90-99": 1, "100+": 2}


def test_epsilon_error_is_the_chalearn_formula():
  # z = (pred - mu) / sigma = -1, 0, +1.
  error, used = age_metrics.epsilon_error(PRED, TRUE, [2.0, 4.0, 5.0])
  assert used == 3
  assert error == pytest.approx(2 * (1 - math.exp(-0.5)) / 3, abs=1e-15)
  # A zero std has no defined error: that example is left out.
  error, used = age_metrics.epsilon_error(PRED, TRUE, [2.0, 0.0, 5.0])
  assert (error, used) == (pytest.approx(1 - math.exp(-0.5), abs=1e-15), 2)
  assert age_metrics.epsilon_error(PRED, TRUE, [0.0, 0.0, 0.0]) is None
  # Far off in units of sigma -> close to 1; exact -> 0.
  assert age_metrics.epsilon_error([50.0], [20.0], [1.0])[0] == pytest.approx(1.0, abs=1e-15)
  assert age_metrics.epsilon_error([20.0], [20.0], [1.0]) == (0.0, 1)


def test_summarize_holds_every_metric():
  summary = age_metrics.summarize(np.float32(PRED), np.int32(TRUE))
  assert summary == {
      "n": 3,
      "mae": pytest.approx(7 / 3, abs=1e-15),
      "rmse": pytest.approx(math.sqrt(29 / 3), abs=1e-15),
      "mean_error": 1.0,
      "cs": [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3] + [1.0] * 6,
      "cs5": 1.0,
      "pred_mean": pytest.approx(95 / 3, abs=1e-13),
      "pred_std": pytest.approx(math.sqrt(950 / 9), abs=1e-13),
      "true_mean": pytest.approx(92 / 3, abs=1e-13),
      "true_std": pytest.approx(math.sqrt(488 / 9), abs=1e-13),
      "mae_by_decade": {"20-29": 2.0, "30-39": 0.0, "40-49": 5.0},
      "n_by_decade": {"20-29": 1, "30-39": 1, "40-49": 1},
  }
  with_std = age_metrics.summarize(PRED, TRUE, std=[2.0, 4.0, 5.0])
  assert with_std["epsilon_error"] == pytest.approx(2 * (1 - math.exp(-0.5)) / 3, abs=1e-15)
  assert with_std["epsilon_n"] == 3
  # A std column of zeros (no apparent-age std in the dataset) means no epsilon.
  assert "epsilon_error" not in age_metrics.summarize(PRED, TRUE, std=[0.0, 0.0, 0.0])


def test_mismatched_or_empty_inputs_are_refused():
  with pytest.raises(ValueError, match="2 predictions for 3 labels"):
    age_metrics.mae([1.0, 2.0], TRUE)
  with pytest.raises(ValueError, match="no examples"):
    age_metrics.summarize([], [])
  with pytest.raises(ValueError, match="2 stds for 3 labels"):
    age_metrics.epsilon_error(PRED, TRUE, [1.0, 1.0])
