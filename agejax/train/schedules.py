"""Learning-rate schedules: ``optim.schedule.*`` turned into an optax schedule.

Every schedule is composed from optax schedules. A step here is one optimizer
update: with gradient accumulation (``optim.grad_accum_steps`` > 1) the
schedule advances once per accumulated update, so ``steps_per_epoch`` and
``total_steps`` must be counted in optimizer updates, not micro-batches.

Time conventions:
  * ``step`` and ``piecewise`` decay at absolute epochs counted from the first
    step (``decay_every_epochs=2`` drops the rate at epochs 2, 4, ...;
    ``boundaries_epochs=(30, 60)`` at epochs 30 and 60), as in the usual
    ImageNet recipes; a warm-up only replaces the start of that curve.
  * ``warmup_cosine`` and ``sgdr`` start their cosine after the warm-up and
    end it at ``total_steps``.
  * ``onecycle`` has its own warm-up phase (``pct_start``), so a separate
    warm-up is rejected rather than silently ignored.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import optax

from agejax.errors import ConfigError

SCHEDULES = ("constant", "step", "warmup_cosine", "sgdr", "onecycle",
             "piecewise")
_PREFIX = "optim.schedule."
# join_schedules evaluates every piece at every step, so a schedule with
# thousands of restarts would bloat the compiled training step.
_MAX_SGDR_CYCLES = 1000


def _config_key(name: str) -> str:
  return _PREFIX + name


def _number(cfg: Any, name: str) -> float:
  value = getattr(cfg, name)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(_config_key(name), f"expected a number, got {value!r}")
  if not math.isfinite(value):
    raise ConfigError(_config_key(name), f"must be finite, got {value!r}")
  return float(value)


def _count(cfg: Any, name: str) -> int:
  value = getattr(cfg, name)
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ConfigError(_config_key(name),
                      f"expected a non-negative integer, got {value!r}")
  return value


def _steps_or_epochs(cfg: Any, steps_name: str, epochs_name: str,
                     steps_per_epoch: int) -> tuple[int, str]:
  """Resolves a length given in steps (when > 0) or else in epochs.

  Returns:
    The length in steps and the key it came from, for error messages.
  """
  steps = _count(cfg, steps_name)
  if steps > 0:
    return steps, _config_key(steps_name)
  epochs = _number(cfg, epochs_name)
  if epochs < 0:
    raise ConfigError(_config_key(epochs_name), f"must be >= 0, got {epochs}")
  return int(round(epochs * steps_per_epoch)), _config_key(epochs_name)


def warmup_steps(cfg: Any, steps_per_epoch: int,
                  total_steps: int) -> tuple[int, str]:
  warmup, key = _steps_or_epochs(cfg, "warmup_steps", "warmup_epochs",
                                 steps_per_epoch)
  if warmup >= total_steps:
    raise ConfigError(
        key, f"warm-up of {warmup} steps leaves nothing of the "
        f"{total_steps} training steps")
  return warmup, key


def _step_decay(cfg: Any, base_lr: float,
                steps_per_epoch: int) -> optax.Schedule:
  factor = _number(cfg, "decay_factor")
  if factor <= 0:
    raise ConfigError(_config_key("decay_factor"), f"must be > 0, got {factor}")
  every, key = _steps_or_epochs(cfg, "decay_every_steps", "decay_every_epochs",
                                steps_per_epoch)
  if every <= 0:
    raise ConfigError(key, "the decay interval must be at least one step")
  return optax.exponential_decay(
      init_value=base_lr, transition_steps=every, decay_rate=factor,
      staircase=True)


def _piecewise(cfg: Any, base_lr: float,
               steps_per_epoch: int) -> optax.Schedule:
  boundaries = tuple(cfg.boundaries_epochs)
  scales = tuple(cfg.scales)
  if len(boundaries) != len(scales):
    raise ConfigError(
        _config_key("scales"), f"has {len(scales)} entries but "
        f"{_config_key('boundaries_epochs')} has {len(boundaries)}; one scale per "
        "boundary")
  steps = []
  for i, epoch in enumerate(boundaries):
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
      raise ConfigError(_config_key("boundaries_epochs"),
                        f"entry {i} is not a number: {epoch!r}")
    steps.append(int(round(epoch * steps_per_epoch)))
  # Checked on the step values: two epochs rounding to the same step would
  # otherwise collapse into one dict key and drop a scale.
  if any(s <= 0 for s in steps) or any(
      b <= a for a, b in zip(steps, steps[1:])):
    raise ConfigError(
        _config_key("boundaries_epochs"),
        f"must be positive and strictly increasing (in steps: {steps}, "
        f"{steps_per_epoch} steps per epoch), got {list(boundaries)}")
  for i, scale in enumerate(scales):
    if isinstance(scale, bool) or not isinstance(
        scale, (int, float)) or not scale >= 0:
      raise ConfigError(_config_key("scales"),
                        f"entry {i} must be a number >= 0, got {scale!r}")
  return optax.piecewise_constant_schedule(
      base_lr, {s: float(f) for s, f in zip(steps, scales)})


def _sgdr(cfg: Any, base_lr: float, steps_per_epoch: int,
          decay_steps: int) -> optax.Schedule:
  """Cosine cycles restarting at ``base_lr``, covering ``decay_steps``."""
  first, key = _steps_or_epochs(cfg, "cycle_steps", "cycle_epochs",
                                steps_per_epoch)
  if first <= 0:
    raise ConfigError(key, "the first cycle must be at least one step long")
  mult = _number(cfg, "cycle_mult")
  if mult < 1:
    raise ConfigError(_config_key("cycle_mult"),
                      f"must be >= 1 (cycles never shrink), got {mult}")
  end_factor = _number(cfg, "end_factor")
  lengths: list[int] = []
  while sum(lengths) < decay_steps:
    if len(lengths) == _MAX_SGDR_CYCLES:
      raise ConfigError(
          key, f"a first cycle of {first} steps needs more than "
          f"{_MAX_SGDR_CYCLES} cycles to cover {decay_steps} steps")
    # T_i = T_0 * mult^i (Loshchilov & Hutter), rounded without compounding.
    lengths.append(max(1, int(round(first * mult**len(lengths)))))
  cycles = [
      optax.cosine_decay_schedule(init_value=base_lr, decay_steps=n,
                                  alpha=end_factor) for n in lengths
  ]
  starts = [sum(lengths[:i]) for i in range(1, len(lengths))]
  return optax.join_schedules(cycles, starts)


def _onecycle(cfg: Any, base_lr: float, total_steps: int) -> optax.Schedule:
  pct_start = _number(cfg, "pct_start")
  peak_step = int(pct_start * total_steps)
  if not 0 < peak_step < total_steps:
    raise ConfigError(
        _config_key("pct_start"), f"{pct_start} puts the peak at step {peak_step} "
        f"of {total_steps}; it must fall strictly inside the run")
  div_factor = _number(cfg, "div_factor")
  final_div_factor = _number(cfg, "final_div_factor")
  for name, value in (("div_factor", div_factor),
                      ("final_div_factor", final_div_factor)):
    if value <= 0:
      raise ConfigError(_config_key(name), f"must be > 0, got {value}")
  return optax.cosine_onecycle_schedule(
      transition_steps=total_steps, peak_value=base_lr, pct_start=pct_start,
      div_factor=div_factor, final_div_factor=final_div_factor)


def _check_name(name: str) -> None:
  if name not in SCHEDULES:
    raise ConfigError(_config_key("name"),
                      f"unknown schedule {name!r}; known: {list(SCHEDULES)}")


def check(cfg: Any) -> None:
  """The schedule's name; its other keys need the run's length (:func:`build_schedule`)."""
  _check_name(cfg.optim.schedule.name)


def build_schedule(schedule_cfg: Any, base_lr: float, steps_per_epoch: int,
                   total_steps: int) -> optax.Schedule:
  """Builds the learning-rate schedule described by ``optim.schedule.*``.

  Args:
    schedule_cfg: the ``optim.schedule`` config.
    base_lr: the base (peak) learning rate, ``optim.lr``.
    steps_per_epoch: optimizer updates per epoch (>= 1).
    total_steps: optimizer updates in the whole run (>= 1).

  Returns:
    An optax schedule: step (int, may be traced) -> learning rate.

  Raises:
    ConfigError: naming the offending ``optim.*`` key.
    ValueError: ``steps_per_epoch`` or ``total_steps`` is not positive.
  """
  if steps_per_epoch < 1 or total_steps < 1:
    raise ValueError(
        f"steps_per_epoch ({steps_per_epoch}) and total_steps ({total_steps}) "
        "must be positive")
  base_lr = float(base_lr)  # optim.lr: agejax.train.optim checks it
  name = schedule_cfg.name
  _check_name(name)
  warmup, warmup_key = warmup_steps(schedule_cfg, steps_per_epoch,
                                     total_steps)
  init_factor = _number(schedule_cfg, "warmup_init_factor")
  end_factor = _number(schedule_cfg, "end_factor")
  for key, value in (("warmup_init_factor", init_factor),
                     ("end_factor", end_factor)):
    if value < 0:
      raise ConfigError(_config_key(key), f"must be >= 0, got {value}")

  if name == "onecycle":
    if warmup > 0:
      raise ConfigError(
          warmup_key, "onecycle warms up by itself (optim.schedule.pct_start "
          "and div_factor); set the warm-up to 0")
    return _onecycle(schedule_cfg, base_lr, total_steps)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=base_lr * init_factor, peak_value=base_lr,
        warmup_steps=warmup, decay_steps=total_steps,
        end_value=base_lr * end_factor)

  if name == "constant":
    main = optax.constant_schedule(base_lr)
  elif name == "step":
    main = _step_decay(schedule_cfg, base_lr, steps_per_epoch)
  elif name == "piecewise":
    main = _piecewise(schedule_cfg, base_lr, steps_per_epoch)
  else:  # sgdr
    main = _sgdr(schedule_cfg, base_lr, steps_per_epoch, total_steps - warmup)
  if warmup == 0:
    return main
  # join_schedules hands the second piece the steps since the boundary; the
  # decay epochs of step and piecewise stay absolute by shifting them back.
  offset = warmup if name in ("step", "piecewise") else 0
  ramp = optax.linear_schedule(init_value=base_lr * init_factor,
                               end_value=base_lr, transition_steps=warmup)
  return optax.join_schedules([ramp, lambda step: main(step + offset)],
                              [warmup])


def phase_scaled(schedule: optax.Schedule, length: Any) -> optax.Schedule:
  """``schedule`` times each phase's ``lr_factor`` (``optim.lr_scaling``).

  The phase of an update is the one its first micro-batch belongs to, so
  with gradient accumulation a phase starts scaling at its first update.
  Without a factor other than 1 the schedule is returned as it is.
  """
  factors = [p.lr_factor for p in length.phases]
  if all(f == 1.0 for f in factors):
    return schedule
  starts = jnp.asarray([p.start_step // length.grad_accum_steps for p in length.phases])
  table = jnp.asarray(factors, jnp.float32)

  def scaled(count):
    phase = jnp.searchsorted(starts, count, side="right") - 1
    return schedule(count) * table[phase]

  return scaled
