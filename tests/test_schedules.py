"""Every schedule against its closed form, and the config errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agejax.config import defaults
from agejax.train import schedules
from agejax.errors import ConfigError

LR = 0.4


def _cfg(**overrides):
  cfg = defaults.default_config().optim.schedule
  cfg.warmup_steps = 0
  cfg.warmup_epochs = 0.0
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def _values(schedule, steps):
  """Evaluates eagerly and under jit (the trainer calls it traced)."""
  eager = np.array([float(schedule(s)) for s in steps])
  jitted = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32))
  # float32 cosines may round differently once fused by XLA.
  np.testing.assert_allclose(np.asarray(jitted), eager, rtol=1e-5, atol=1e-7)
  return eager


def _cosine(start, end, t, period):
  return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t / period))


def test_constant():
  schedule = schedules.build_schedule(_cfg(name="constant"), LR, 10, 100)
  np.testing.assert_allclose(_values(schedule, [0, 50, 100, 500]), [LR] * 4,
                             rtol=1e-7)


def test_step_divides_by_ten_every_two_epochs():
  spe = 10
  schedule = schedules.build_schedule(_cfg(name="step"), LR, spe, 100)
  steps = [0, 19, 20, 39, 40, 59, 99]
  expected = [LR * 0.1**(s // (2 * spe)) for s in steps]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6)


def test_step_decay_every_steps_overrides_epochs():
  schedule = schedules.build_schedule(
      _cfg(name="step", decay_every_steps=7, decay_factor=0.5), LR, 10, 100)
  steps = [0, 6, 7, 13, 14, 21]
  np.testing.assert_allclose(_values(schedule, steps),
                             [LR * 0.5**(s // 7) for s in steps], rtol=1e-6)


def test_step_with_warmup_keeps_absolute_decay_epochs():
  spe = 10
  schedule = schedules.build_schedule(
      _cfg(name="step", warmup_steps=5, warmup_init_factor=0.0), LR, spe, 100)
  steps = [0, 2, 4, 5, 19, 20, 45]
  expected = [0.0, LR * 2 / 5, LR * 4 / 5, LR, LR, LR * 0.1, LR * 0.01]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6,
                             atol=1e-9)


def test_warmup_cosine():
  warmup, total, init, end = 10, 110, 0.1, 0.01
  schedule = schedules.build_schedule(
      _cfg(name="warmup_cosine", warmup_steps=warmup, warmup_init_factor=init,
           end_factor=end), LR, 10, total)
  steps = [0, 5, 10, 60, 110, 200]
  start = LR * init
  expected = [
      start,
      start + (LR - start) * 0.5,  # mid-warmup
      LR,  # end of warmup
      _cosine(LR, LR * end, 50, 100),  # cosine midpoint
      LR * end,  # end
      LR * end,  # held after the end
  ]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6)
  np.testing.assert_allclose(expected[3], (LR + LR * end) / 2, rtol=1e-12)


def test_warmup_epochs_converted_to_steps():
  # 1.5 epochs * 4 steps = 6 warmup steps.
  schedule = schedules.build_schedule(
      _cfg(name="constant", warmup_epochs=1.5), LR, 4, 40)
  np.testing.assert_allclose(_values(schedule, [0, 3, 6, 30]),
                             [0.0, LR / 2, LR, LR], rtol=1e-6, atol=1e-9)


def test_warmup_steps_override_epochs():
  schedule = schedules.build_schedule(
      _cfg(name="constant", warmup_steps=2, warmup_epochs=5.0), LR, 4, 40)
  np.testing.assert_allclose(_values(schedule, [1, 2]), [LR / 2, LR],
                             rtol=1e-6)


def test_sgdr_restarts_at_cycle_boundaries():
  end = 0.1
  schedule = schedules.build_schedule(
      _cfg(name="sgdr", cycle_steps=10, cycle_mult=2.0, end_factor=end), LR,
      10, 70)
  # Cycles of 10, 20 and 40 steps starting at 0, 10 and 30.
  low = LR * end
  steps = [0, 5, 9, 10, 20, 29, 30, 50, 70]
  expected = [
      LR,
      _cosine(LR, low, 5, 10),
      _cosine(LR, low, 9, 10),
      LR,  # restart
      _cosine(LR, low, 10, 20),
      _cosine(LR, low, 19, 20),
      LR,  # restart
      _cosine(LR, low, 20, 40),
      low,
  ]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6)


def test_sgdr_cycle_epochs_and_warmup():
  # 2 warmup steps, then cycles of 1 epoch = 8 steps.
  schedule = schedules.build_schedule(
      _cfg(name="sgdr", cycle_epochs=1.0, warmup_steps=2), LR, 8, 34)
  steps = [0, 1, 2, 6, 10, 14, 18]
  expected = [0.0, LR / 2, LR, _cosine(LR, 0, 4, 8), LR,
              _cosine(LR, 0, 4, 8), LR]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6,
                             atol=1e-7)


def test_onecycle_peaks_at_pct_start():
  total, pct, div, final_div = 100, 0.3, 25.0, 1e4
  schedule = schedules.build_schedule(
      _cfg(name="onecycle", pct_start=pct, div_factor=div,
           final_div_factor=final_div), LR, 10, total)
  start, final = LR / div, LR / div / final_div
  steps = [0, 15, 30, 65, 100]
  expected = [start, _cosine(start, LR, 15, 30), LR, (LR + final) / 2, final]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-5)
  values = jax.jit(jax.vmap(schedule))(jnp.arange(total + 1))
  assert int(np.argmax(values)) == int(pct * total)


def test_piecewise():
  schedule = schedules.build_schedule(
      _cfg(name="piecewise", boundaries_epochs=(3, 6.5), scales=(0.1, 0.5)),
      LR, 10, 100)
  steps = [0, 29, 30, 64, 65, 99]
  expected = [LR, LR, LR * 0.1, LR * 0.1, LR * 0.05, LR * 0.05]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-6)


@pytest.mark.parametrize("overrides, lr, key", [
    (dict(name="linear"), LR, "optim.schedule.name"),
    (dict(name="warmup_cosine", warmup_steps=100), LR,
     "optim.schedule.warmup_steps"),
    (dict(name="warmup_cosine", warmup_epochs=10.0), LR,
     "optim.schedule.warmup_epochs"),
    (dict(name="warmup_cosine", warmup_steps=-1), LR,
     "optim.schedule.warmup_steps"),
    (dict(name="piecewise", boundaries_epochs=(1, 2), scales=(0.1,)), LR,
     "optim.schedule.scales"),
    (dict(name="piecewise", boundaries_epochs=(2, 2), scales=(0.1, 0.1)), LR,
     "optim.schedule.boundaries_epochs"),
    (dict(name="piecewise", boundaries_epochs=(3, 1), scales=(0.1, 0.1)), LR,
     "optim.schedule.boundaries_epochs"),
    (dict(name="piecewise", boundaries_epochs=(1,), scales=(-0.1,)), LR,
     "optim.schedule.scales"),
    (dict(name="sgdr", cycle_epochs=0.0), LR, "optim.schedule.cycle_epochs"),
    (dict(name="sgdr", cycle_mult=0.5), LR, "optim.schedule.cycle_mult"),
    (dict(name="step", decay_every_epochs=0.0), LR,
     "optim.schedule.decay_every_epochs"),
    (dict(name="step", decay_factor=0.0), LR, "optim.schedule.decay_factor"),
    (dict(name="onecycle", pct_start=1.0), LR, "optim.schedule.pct_start"),
    (dict(name="onecycle", warmup_steps=5), LR,
     "optim.schedule.warmup_steps"),
    (dict(name="warmup_cosine", end_factor=-0.1), LR,
     "optim.schedule.end_factor"),
])
def test_errors_name_the_key(overrides, lr, key):
  with pytest.raises(ConfigError) as info:
    schedules.build_schedule(_cfg(**overrides), lr, 10, 100)
  assert info.value.key == key
  assert str(info.value).startswith(key + ":")


def test_sgdr_with_too_many_cycles_is_rejected():
  with pytest.raises(ConfigError, match="optim.schedule.cycle_steps"):
    schedules.build_schedule(_cfg(name="sgdr", cycle_steps=1), LR, 10, 5000)
