"""The LR range test: smoothing, the suggestion rule, and a suggestion that trains."""

import math

import numpy as np
import pytest

from agejax.tools import lr_range_test
from agejax.workdir import metric_io
from agejax.train import loop
from configs import tiny


def test_smoothing_is_a_bias_corrected_ema():
  got = lr_range_test.smooth(np.array([2.0, 4.0, 4.0]), beta=0.5)
  # avg: 1.0, 2.5, 3.25; corrections 0.5, 0.75, 0.875
  np.testing.assert_allclose(got, [2.0, 2.5 / 0.75, 3.25 / 0.875])


def test_suggestion_is_the_steepest_descent_before_the_minimum():
  lrs = np.logspace(-5, 0, 51)
  # Flat, a steep fall centred at 1e-2, a minimum at 1e-1, then a blow-up.
  x = np.log10(lrs)
  loss = 5 - 2 * np.tanh(3 * (x + 2)) + np.where(x > -1, 20 * (x + 1) ** 2, 0)
  got = lr_range_test.suggest(lrs, loss)
  assert got == pytest.approx(1e-2, rel=0.13)  # the grid point nearest the inflexion


def test_a_lucky_first_batch_is_not_the_minimum():
  lrs = np.logspace(-5, 0, 51)
  x = np.log10(lrs)
  loss = 5 - 2 * np.tanh(3 * (x + 2)) + np.where(x > -1, 20 * (x + 1) ** 2, 0)
  loss[0] = 1.0  # below everything the sweep reaches later
  assert lr_range_test.suggest(lrs, loss) == pytest.approx(1e-2, rel=0.13)


def test_suggested_lr_trains_the_tiny_config(tmp_path, tiny_data_dir):
  cfg = tiny.get_config()
  cfg.data.data_dir = tiny_data_dir
  # 100 updates: over 60 the batch-16 loss barely moved before it blew up, and
  # the steepest descent of that noise suggested 2e-4.
  result = lr_range_test.range_test(cfg, num_steps=100, min_lr=1e-5, max_lr=50.0)
  lr = result["suggested_lr"]
  # A plausible rate for momentum SGD on this net (the exact value moves with
  # the augmentation's draws); what matters is that it trains, below.
  assert 1e-3 <= lr <= 3.0, lr
  assert len(result["lrs"]) <= 100 and result["lrs"][0] == pytest.approx(1e-5)
  png = lr_range_test.plot(result, str(tmp_path / "lr_find.png"))
  assert (tmp_path / "lr_find.png").stat().st_size > 5000 and png.endswith(".png")

  run = tiny.get_config()
  run.data.data_dir = cfg.data.data_dir
  run.optim.lr = lr
  run.train.num_train_steps = 32
  run.train.log_every_steps = 8
  loop.train_and_evaluate(run, str(tmp_path / "run"))
  losses = [r["loss"] for r in metric_io.read_metrics(str(tmp_path / "run"))
            if r["split"] == "train" and "loss" in r]
  assert all(math.isfinite(v) for v in losses)
  assert losses[-1] < losses[0]  # the suggested rate learns, it does not diverge
