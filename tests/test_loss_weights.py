"""train.loss_weighting: the closed forms of each scheme, the step applies them, the plan says so."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from agejax.data import input_pipeline
from agejax.errors import ConfigError
from agejax.train import config_rules
from agejax.train import loss_weights
from agejax.train import run_length
from agejax.train import step_state
from agejax.train import steps
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Ages 0..4: three 0-year-olds, one 1.7, none at 2, four 3s (one 3.9), one 4.
LABELS = np.array([0, 0, 0.5, 1.7, 3, 3, 3, 3.9, 4], np.float32)
COUNTS = np.array([3, 1, 0, 4, 1], np.float64)


def _per_example(table, labels=LABELS):
  return np.asarray(table.of(jnp.asarray(labels)))


@pytest.mark.parametrize("scheme,raw", [
    ("inverse", lambda h: np.where(h > 0, 1 / np.maximum(h, 1), 0)),
    ("sqrt_inverse", lambda h: np.where(h > 0, 1 / np.sqrt(np.maximum(h, 1)), 0)),
])
def test_inverse_frequency_weights_are_the_closed_form_with_mean_one(scheme, raw):
  table = loss_weights.age_weights(LABELS, scheme, 2.0, 0, 4)
  expected = raw(COUNTS)
  expected = expected / (np.sum(COUNTS * expected) / COUNTS.sum())
  np.testing.assert_allclose(table.table, expected, rtol=1e-12)
  weights = _per_example(table)
  assert np.mean(weights, dtype=np.float64) == pytest.approx(1.0, abs=1e-6)
  # A 0-year-old weighs a third of the lone 1-year-old under inverse, 1/sqrt(3) under sqrt.
  ratio = 1 / 3 if scheme == "inverse" else 1 / np.sqrt(3)
  assert weights[0] / weights[3] == pytest.approx(ratio, rel=1e-6)


def test_lds_is_the_inverse_of_the_gaussian_smoothed_histogram():
  sigma = 1.5
  table = loss_weights.age_weights(LABELS, "lds", sigma, 0, 4)
  smoothed = np.array([sum(COUNTS[j] * np.exp(-(i - j) ** 2 / (2 * sigma ** 2))
                           for j in range(5)) for i in range(5)])
  expected = (1 / smoothed) / (np.sum(COUNTS / smoothed) / COUNTS.sum())
  np.testing.assert_allclose(table.table, expected, rtol=1e-12)
  # Age 2 has no example but a finite weight from its neighbours; the step never meets it.
  assert np.isfinite(table.table[2]) and table.present == (True, True, False, True, True)
  assert np.mean(_per_example(table), dtype=np.float64) == pytest.approx(1.0, abs=1e-6)


def test_labels_outside_the_head_range_take_the_edge_years_weight():
  table = loss_weights.age_weights(LABELS, "inverse", 2.0, 1, 3)  # 0s -> 1, 4 -> 3
  np.testing.assert_array_equal(loss_weights.year_bins(LABELS, 1, 3), [0, 0, 0, 0, 2, 2, 2, 2, 2])
  np.testing.assert_array_equal(_per_example(table, np.array([-5.0, 120.0])),
                                np.float32([table.table[0], table.table[2]]))


def test_none_is_no_table_and_a_bad_scheme_names_its_key():
  assert loss_weights.age_weights(LABELS, "none", 2.0, 0, 4) is None
  cfg = tiny.get_config()
  cfg.train.loss_weighting = "focal"
  with pytest.raises(ConfigError, match=r"^train\.loss_weighting: must be one of none, "):
    config_rules.validate(cfg)
  cfg = tiny.get_config()
  cfg.train.lds_sigma = 0.0
  with pytest.raises(ConfigError, match=r"^train\.lds_sigma: must be > 0"):
    config_rules.validate(cfg)


def test_the_step_weighs_each_examples_loss_by_its_age(tiny_data_dir):
  cfg = tiny.get_config()
  cfg.data.data_dir = tiny_data_dir
  cfg.train.loss_weighting = "lds"
  length = run_length.run_length(cfg, 256)
  weighted = step_state.build_step_fns(cfg, length)
  ages = input_pipeline.split_labels(cfg.data, cfg.data.train_split)
  assert weighted.age_weights == loss_weights.age_weights(
      ages, "lds", 2.0, cfg.model.min_age, cfg.model.max_age)
  cfg.train.loss_weighting = "none"
  plain = step_state.build_step_fns(cfg, length)
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  state = step_state.create_train_state(cfg, plain, NamedSharding(mesh, P()))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
           "age": jnp.asarray([1, 5, 20, 20, 20, 35, 70, 95], jnp.float32)}
  # Per-example losses from the unweighted step run one example at a time.
  per_example = np.array([
      float(jax.jit(steps.bind(plain, steps.train_step))(
          state, {"image": batch["image"], "age": batch["age"],
                  "mask": jnp.asarray(np.eye(8)[i], jnp.float32)})[1]["loss"])
      for i in range(8)])
  weights = np.asarray(weighted.age_weights.of(batch["age"]))
  loss = float(jax.jit(steps.bind(weighted, steps.train_step))(state, batch)[1]["loss"])
  assert loss == pytest.approx(float(np.mean(per_example * weights)), rel=1e-5)
  assert not np.allclose(weights, weights[0])  # the check above could tell weighting apart


def test_the_plan_states_the_weighting_and_its_range(tmp_path, tiny_data_dir):
  result = subprocess.run(
      [sys.executable, "-m", "agejax.main", "--config=configs/tiny.py",
       f"--workdir={tmp_path}", "--dry_run", f"--config.data.data_dir={tiny_data_dir}",
       "--config.train.loss_weighting=lds", "--config.train.lds_sigma=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr
  cfg = tiny.get_config()
  cfg.data.data_dir = tiny_data_dir
  ages = input_pipeline.split_labels(cfg.data, cfg.data.train_split)
  table = loss_weights.age_weights(ages, "lds", 3.0, cfg.model.min_age, cfg.model.max_age)
  line = next(l for l in result.stdout.splitlines() if "loss weights" in l)
  used = np.asarray(table.table)[np.asarray(table.present)]
  assert f"lds, sigma 3 years: per-example weights {used.min():.3g} " in line
  assert f".. {used.max():.3g} (age " in line
