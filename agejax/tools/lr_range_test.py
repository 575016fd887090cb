r"""The learning-rate range test: grow the LR exponentially, watch the loss.

The library behind ``python -m agejax.lr_find``.

Trains from the config's initial weights with the base learning rate growing
from ``--min_lr`` to ``--max_lr`` over ``--steps`` steps (every group keeps its
``lr_mult``, so the ratios of the plan hold), smooths the loss, stops once it
has blown up, writes ``DIR/lr_find.png`` and ``DIR/lr_find.json`` and prints
the suggested base LR: the one where the smoothed loss falls fastest, which
sits safely below the minimum of the curve.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from agejax import json_files
from agejax import terminal

from agejax.train import config_rules
from agejax.data import catalog
from agejax.train import initial_weights
from agejax.data import input_pipeline
from agejax.train import run_length
from agejax.train import steps
from agejax import device_mesh
from agejax.train import step_state
from agejax.errors import ConfigError

SMOOTHING = 0.9  # EMA factor of the loss, bias-corrected
BLOW_UP = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


def smooth(losses: np.ndarray, beta: float = SMOOTHING) -> np.ndarray:
  """Bias-corrected exponential moving average."""
  out, avg = [], 0.0
  for i, loss in enumerate(losses, start=1):
    avg = beta * avg + (1 - beta) * loss
    out.append(avg / (1 - beta**i))
  return np.asarray(out)


def suggest(lrs: np.ndarray, smoothed: np.ndarray, skip_start: int = 5) -> float:
  """The LR of the steepest descent of the smoothed loss over log(LR).

  The first ``skip_start`` points are left out of the search for the minimum
  too: the bias-corrected average starts at the first batch's loss alone, and
  one lucky batch there would otherwise be "the minimum" of the whole sweep.
  """
  skip = min(skip_start, len(smoothed) - 1)
  end = skip + int(np.argmin(smoothed[skip:])) + 1  # the slope after the minimum is irrelevant
  lo = min(skip_start, max(end - 3, 0))
  if end - lo < 3:
    return float(lrs[max(end - 1, 0)] / 10)  # too short a descent: a tenth of the minimum
  slopes = np.gradient(smoothed[lo:end], np.log(lrs[lo:end]))
  return float(lrs[lo + int(np.argmin(slopes))])


def range_test(cfg: ml_collections.ConfigDict, num_steps: int, min_lr: float,
               max_lr: float) -> dict[str, list[float] | float]:
  """Runs the sweep; returns lrs, losses, smoothed losses and the suggestion."""
  config_rules.validate(cfg)
  if not 0 < min_lr < max_lr:
    raise ConfigError("--min_lr", f"need 0 < min_lr < max_lr, got {min_lr}, {max_lr}")
  imported = initial_weights.prepare_pretrained(cfg)
  catalog.ensure_prepared(cfg.data)
  mesh = device_mesh.data_parallel_mesh()
  num_train = run_length.num_train_examples(cfg)
  length = run_length.run_length(cfg, num_train)
  # Updates count from 0; the sweep reaches max_lr at the last update.
  sweep = optax.exponential_decay(init_value=min_lr, transition_steps=max(num_steps - 1, 1),
                                  decay_rate=max_lr / min_lr)
  statics = step_state.build_step_fns(cfg, length, sweep=sweep)
  state = step_state.create_train_state(cfg, statics, NamedSharding(mesh, P()), imported=imported)
  step_fn = jax.jit(steps.bind(statics, steps.train_step), donate_argnums=0)
  batches = input_pipeline.device_batches(
      input_pipeline.create_split(cfg.data, cfg.model, cfg.data.train_split, train=True,
                                  batch_size=cfg.train.batch_size, seed=cfg.seed),
      NamedSharding(mesh, P("data")), cfg.data.prefetch, cfg.data, cfg.data.train_split)
  lrs, losses = [], []
  accum = cfg.optim.grad_accum_steps
  bar = terminal.progress(total=num_steps, desc="lr range test", unit="update",
                          enabled=jax.process_index() == 0)
  for step in range(num_steps * accum):
    state, metrics = step_fn(state, next(batches))
    if (step + 1) % accum:
      continue
    loss = float(metrics["loss"])  # the sweep needs every value: one sync per update
    lrs.append(float(sweep(step // accum)))
    losses.append(loss)
    bar.update()
    bar.set_postfix_str(f"lr {lrs[-1]:.2e} loss {loss:.3f}")
    smoothed = smooth(np.asarray(losses))
    if not math.isfinite(loss) or smoothed[-1] > BLOW_UP * smoothed.min():
      break
  bar.close()
  batches.close()
  lrs_a, smoothed = np.asarray(lrs), smooth(np.asarray(losses))
  finite = np.isfinite(smoothed)
  return dict(lrs=lrs, losses=losses, smoothed=smoothed.tolist(),
              suggested_lr=suggest(lrs_a[finite], smoothed[finite]))


def plot(result: dict, out_path: str) -> str:
  from agejax.train import lr_plots  # matplotlib only when a figure is drawn
  return lr_plots.plot_lr_find(result["lrs"], result["losses"], result["smoothed"],
                            result["suggested_lr"], out_path)


def run(cfg: ml_collections.ConfigDict, workdir: str, num_steps: int, min_lr: float,
        max_lr: float) -> tuple[dict, str]:
  """The range test written to ``workdir`` (lr_find.json, lr_find.png); (result, figure)."""
  result = range_test(cfg, num_steps, min_lr, max_lr)
  os.makedirs(workdir, exist_ok=True)
  json_files.write_json(os.path.join(workdir, "lr_find.json"), result, indent=None)
  return result, plot(result, os.path.join(workdir, "lr_find.png"))
