"""Tests for agejax.models.heads: losses, read-outs and parameters against numpy."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from agejax.config import defaults
from agejax.models import heads
from agejax.models import paths

MIN_AGE, MAX_AGE = 10, 60  # a range not starting at 0 catches offset slips
K = MAX_AGE - MIN_AGE + 1
AGES = np.arange(MIN_AGE, MAX_AGE + 1, dtype=np.float64)
F = 6


def _cfg(**overrides):
  # Not type-safe: the error tests also feed values of the wrong type.
  cfg = ml_collections.ConfigDict(defaults.default_config().model.to_dict(),
                                  type_safe=False)
  cfg.min_age, cfg.max_age = MIN_AGE, MAX_AGE
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def _head(name, **overrides):
  return heads.build_head(_cfg(head=name, **overrides), F, nnx.Rngs(0))


def _loss(head, outputs, ages):
  return np.asarray(jax.jit(head.loss)(jnp.asarray(outputs, jnp.float32),
                              jnp.asarray(ages, jnp.float32)))


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _peaked(index, n=K, height=30.0):
  """Logits that put almost all softmax mass on one bin."""
  z = np.zeros(n)
  z[index] = height
  return z


class _Model(nnx.Module):
  """Holds a head the way the models do, under the attribute ``head``."""

  def __init__(self, head):
    self.head = head


# --- dex ---------------------------------------------------------------------


def test_dex_loss_is_cross_entropy_of_rounded_clipped_age():
  head = _head("dex")
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, K)) * 3
  ages = np.array([10.0, 24.4, 24.6, 60.0, 3.0, 75.0])
  bins = np.array([0, 14, 15, 50, 0, 50])
  expected = -_log_softmax(logits)[np.arange(6), bins]
  np.testing.assert_allclose(_loss(head, logits, ages), expected, rtol=1e-5)


@pytest.mark.parametrize("age", [10.0, 23.0, 41.2, 60.0])
def test_dex_loss_argmin_over_peaked_logits_is_the_age(age):
  head = _head("dex")
  losses = _loss(head, np.stack([_peaked(j) for j in range(K)]),
                 np.full(K, age))
  assert MIN_AGE + int(np.argmin(losses)) == round(age)


def test_dex_predict_is_expectation_and_std():
  head = _head("dex")
  logits = np.full((2, K), -1e4)
  logits[0, [20 - MIN_AGE, 30 - MIN_AGE]] = 0.0  # half the mass on each
  logits[1, 33 - MIN_AGE] = 0.0
  age, spread = head.predict(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(np.asarray(age), [25.0, 33.0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(spread), [5.0, 0.0], atol=1e-5)


def test_dex_predict_matches_numpy_moments():
  head = _head("dex")
  logits = np.random.default_rng(1).normal(size=(3, K))
  p = np.exp(_log_softmax(logits))
  mean = p @ AGES
  std = np.sqrt((p * (AGES - mean[:, None]) ** 2).sum(-1))
  age, spread = head.predict(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(np.asarray(age), mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(spread), std, rtol=1e-4)


# --- dldl --------------------------------------------------------------------


def _numpy_dldl(logits, ages, sigma):
  y = np.clip(ages, MIN_AGE, MAX_AGE)
  q = np.exp(-(AGES[None] - y[:, None]) ** 2 / (2 * sigma**2))
  q /= q.sum(-1, keepdims=True)
  return (q * (np.log(q) - _log_softmax(logits))).sum(-1)


def test_dldl_loss_equals_numpy_kl():
  head = _head("dldl", dldl_sigma=3.0)
  logits = np.random.default_rng(2).normal(size=(4, K)) * 2
  ages = np.array([12.0, 30.5, 59.0, 80.0])
  np.testing.assert_allclose(_loss(head, logits, ages),
                             _numpy_dldl(logits, ages, 3.0), rtol=1e-5)


def test_dldl_loss_is_zero_at_the_target_and_minimal_at_the_age():
  sigma = 2.0
  head = _head("dldl", dldl_sigma=sigma)
  # Candidate outputs: log of a Gaussian centred on each integer age.
  candidates = -(AGES[None] - AGES[:, None]) ** 2 / (2 * sigma**2)
  losses = _loss(head, candidates, np.full(K, 37.0))
  assert MIN_AGE + int(np.argmin(losses)) == 37
  assert losses.min() == pytest.approx(0.0, abs=1e-5)


# --- mean-variance -----------------------------------------------------------


def test_mean_variance_loss_equals_numpy_formula():
  head = _head("mean_variance", mean_variance_lambda1=0.2,
               mean_variance_lambda2=0.05)
  logits = np.full((1, K), -1e4)
  logits[0, [20 - MIN_AGE, 30 - MIN_AGE]] = [np.log(3.0), 0.0]  # p = 3/4, 1/4
  # mean 22.5; variance 3/4*2.5^2 + 1/4*7.5^2 = 18.75; age 24.4 -> bin 24,
  # which carries no mass: CE = -log(exp(-1e4) / 4) = 1e4 + log 4.
  ce = 1e4 + np.log(4.0)
  expected = ce + 0.2 * 0.5 * (22.5 - 24.4) ** 2 + 0.05 * 18.75
  np.testing.assert_allclose(_loss(head, logits, [24.4]), [expected],
                             rtol=1e-6)
  # The same case without the CE dominating: mass on the age's own bin.
  logits = np.full((1, K), -1e4)
  logits[0, [24 - MIN_AGE, 30 - MIN_AGE]] = [np.log(3.0), 0.0]  # mean 25.5
  var = 0.75 * 1.5**2 + 0.25 * 4.5**2
  expected = -np.log(0.75) + 0.2 * 0.5 * (25.5 - 24.4) ** 2 + 0.05 * var
  np.testing.assert_allclose(_loss(head, logits, [24.4]), [expected],
                             rtol=1e-5)


@pytest.mark.parametrize("age", [10.0, 44.0, 60.0])
def test_mean_variance_loss_argmin_over_peaked_logits_is_the_age(age):
  head = _head("mean_variance")
  losses = _loss(head, np.stack([_peaked(j) for j in range(K)]),
                 np.full(K, age))
  assert MIN_AGE + int(np.argmin(losses)) == age


# --- regression --------------------------------------------------------------


def test_regression_l1_and_l2_values():
  preds = np.array([[0.0], [25.0], [33.5], [70.0]])
  ages = np.array([20.0, 25.0, 30.0, 100.0])  # 100 clips to 60
  d = preds[:, 0] - np.array([20.0, 25.0, 30.0, 60.0])
  np.testing.assert_allclose(_loss(_head("regression"), preds, ages),
                             np.abs(d), rtol=1e-6)
  np.testing.assert_allclose(
      _loss(_head("regression", regression_loss="l2"), preds, ages),
      0.5 * d**2, rtol=1e-6)


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_regression_loss_minimal_at_the_age_on_a_grid(loss):
  head = _head("regression", regression_loss=loss)
  grid = np.arange(MIN_AGE, MAX_AGE + 0.25, 0.25)
  losses = _loss(head, grid[:, None], np.full(len(grid), 31.75))
  assert grid[np.argmin(losses)] == 31.75
  assert losses.min() == 0.0


def test_regression_starts_mid_range_and_predicts_clipped_output():
  head = _head("regression")
  np.testing.assert_array_equal(np.asarray(head.fc.bias[...]), [35.0])
  np.testing.assert_array_equal(np.asarray(head(jnp.zeros((2, F)))),
                                [[35.0], [35.0]])
  age, spread = head.predict(jnp.array([[27.25], [-5.0], [99.0]]))
  np.testing.assert_array_equal(np.asarray(age), [27.25, 10.0, 60.0])
  np.testing.assert_array_equal(np.asarray(spread), [0.0, 0.0, 0.0])


# --- coral -------------------------------------------------------------------


def _numpy_coral_loss(logits, ages):
  rank = np.round(np.clip(ages, MIN_AGE, MAX_AGE))
  k = np.arange(1, K)
  t = (rank[:, None] > MIN_AGE + k - 1).astype(np.float64)
  log_p = -np.logaddexp(0.0, -logits)  # log sigmoid(z)
  log_not_p = -np.logaddexp(0.0, logits)  # log(1 - sigmoid(z))
  return -(t * log_p + (1 - t) * log_not_p).sum(-1)


def test_coral_loss_equals_numpy_bce_sum():
  head = _head("coral")
  logits = np.random.default_rng(3).normal(size=(5, K - 1)) * 4
  ages = np.array([10.0, 11.0, 29.6, 60.0, 0.0])
  np.testing.assert_allclose(_loss(head, logits, ages),
                             _numpy_coral_loss(logits, ages), rtol=1e-5)


@pytest.mark.parametrize("age", [10.0, 27.0, 60.0])
def test_coral_loss_argmin_over_rank_logits_is_the_age(age):
  head = _head("coral")
  k = np.arange(1, K)
  # Candidate c says "older than MIN_AGE + k - 1" exactly for k <= c.
  candidates = np.stack([np.where(k <= c, 8.0, -8.0) for c in range(K)])
  losses = _loss(head, candidates, np.full(K, age))
  assert MIN_AGE + int(np.argmin(losses)) == age


def test_coral_predict_counts_thresholds_and_spread_from_class_probs():
  head = _head("coral")
  logits = np.full((2, K - 1), -5.0)
  logits[0, :37] = 5.0  # P(> k) > 0.5 for the first 37 thresholds
  # Non-monotone second row: P(>10)=0.9, P(>11)=0.5 -> 0 is "not > 0.5",
  # P(>12)=0.7: the 0.7 - 0.5 < 0 class difference is clipped and the rest
  # renormalised.
  s = np.array([0.9, 0.5, 0.7])
  logits[1, :] = -1e4
  logits[1, :3] = np.log(s / (1 - s))
  age, spread = head.predict(jnp.asarray(logits, jnp.float32))
  assert float(age[0]) == MIN_AGE + 37
  assert float(age[1]) == MIN_AGE + 2  # 0.9 and 0.7 count, 0.5 does not
  for row in range(2):
    above = np.concatenate([[1.0], 0.5 * (1 + np.tanh(logits[row] / 2)), [0.0]])
    p = np.maximum(above[:-1] - above[1:], 0.0)
    p /= p.sum()
    mean = p @ AGES
    std = np.sqrt(p @ (AGES - mean) ** 2)
    assert float(spread[row]) == pytest.approx(std, rel=1e-4)
  # Row 1 by hand: p = (0.1, 0.4, 0, 0.7) / 1.2 on ages 10..13.
  p = np.array([0.1, 0.4, 0.0, 0.7]) / 1.2
  a = np.arange(10, 14)
  by_hand = np.sqrt(p @ (a - p @ a) ** 2)
  assert float(spread[1]) == pytest.approx(by_hand, rel=1e-4)


def test_coral_starts_with_decreasing_thresholds_around_the_middle():
  head = _head("coral")
  thresholds = np.asarray(head.thresholds[...])
  np.testing.assert_allclose(thresholds, np.linspace(1, -1, K - 1), atol=1e-6)
  age, _ = head.predict(head(jnp.zeros((1, F))))
  assert float(age[0]) == MIN_AGE + (K - 1) // 2


# --- all heads ---------------------------------------------------------------


_WIDTH = {"dex": K, "dldl": K, "mean_variance": K, "regression": 1,
          "coral": K - 1}


@pytest.mark.parametrize("name", heads.HEADS)
def test_losses_and_predictions_finite_for_extreme_outputs(name):
  head = _head(name)
  rng = np.random.default_rng(4)
  outputs = np.where(rng.random((4, _WIDTH[name])) < 0.5, -1e4, 1e4)
  outputs[0] = 1e4
  outputs[1] = -1e4
  ages = np.array([10.0, 60.0, 35.5, 100.0])
  assert np.isfinite(_loss(head, outputs, ages)).all()
  age, spread = head.predict(jnp.asarray(outputs, jnp.float32))
  assert np.isfinite(np.asarray(age)).all()
  assert np.isfinite(np.asarray(spread)).all()
  assert (np.asarray(age) >= MIN_AGE).all() and (np.asarray(age)
                                                  <= MAX_AGE).all()


@pytest.mark.parametrize("name", heads.HEADS)
def test_gradients_reach_every_head_parameter(name):
  model = _Model(_head(name))
  features = jnp.asarray(np.random.default_rng(5).normal(size=(3, F)),
                         jnp.float32)
  ages = jnp.array([15.0, 33.3, 58.0])

  def mean_loss(m):
    return jnp.mean(m.head.loss(m.head(features), ages))

  grads = paths.flatten(nnx.grad(mean_loss)(model).to_pure_dict())
  assert grads  # the head has parameters at all
  for path, g in grads.items():
    assert np.isfinite(np.asarray(g)).all(), path
    assert np.abs(np.asarray(g)).sum() > 0, path


@pytest.mark.parametrize("name,shapes", [
    ("dex", {"head/fc/kernel": (F, K), "head/fc/bias": (K,)}),
    ("dldl", {"head/fc/kernel": (F, K), "head/fc/bias": (K,)}),
    ("mean_variance", {"head/fc/kernel": (F, K), "head/fc/bias": (K,)}),
    ("regression", {"head/fc/kernel": (F, 1), "head/fc/bias": (1,)}),
    ("coral", {"head/fc/kernel": (F, 1), "head/thresholds": (K - 1,)}),
])
def test_parameter_paths_and_shapes(name, shapes):
  _, params, rest = nnx.split(_Model(_head(name)), nnx.Param, ...)
  flat = paths.flatten(params.to_pure_dict())
  assert {p: tuple(v.shape) for p, v in flat.items()} == shapes
  assert all(v.dtype == jnp.float32 for v in flat.values())
  assert not paths.flatten(rest.to_pure_dict())  # no other state


@pytest.mark.parametrize("name", heads.HEADS)
def test_outputs_are_float32_for_bfloat16_features(name):
  head = _head(name)
  outputs = head(jnp.ones((2, F), jnp.bfloat16))
  assert outputs.dtype == jnp.float32
  assert outputs.shape == (2, _WIDTH[name])
  assert head.loss(outputs, jnp.array([20.0, 30.0])).dtype == jnp.float32
  age, spread = head.predict(outputs)
  assert age.dtype == spread.dtype == jnp.float32
  assert age.shape == spread.shape == (2,)


def test_building_a_head_reads_only_its_own_keys():
  # A dex model does not read regression_loss or dldl_sigma (the config's
  # validation checks every key, once, before anything is built).
  head = _head("dex", regression_loss="huber", dldl_sigma=0.0)
  assert isinstance(head, heads.DexHead)


def test_losses_jit():
  head = _head("coral")
  outputs = head(jnp.ones((2, F)))
  ages = jnp.array([12.0, 50.0])
  np.testing.assert_allclose(np.asarray(jax.jit(head.loss)(outputs, ages)),
                             np.asarray(head.loss(outputs, ages)), rtol=1e-6)
