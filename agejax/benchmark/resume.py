"""A short training run on synthetic data with a checkpoint and a resume, timed.

What a new machine (a GPU box without TensorFlow, say) must get right before
a real run goes on it: the compiled step trains, orbax writes a checkpoint of
the sharded state, and a state restored from it continues bit for bit as if
nothing had happened. Two runs from the same first state: one straight
through ``steps`` steps, one that saves at ``steps // 2``, restores into a
fresh state and finishes. ``bit_identical`` compares every array of the two
final states; the timings are the step rate and the save and restore times.

The step, state and batches are the ``step`` benchmark's (no input pipeline,
so no TensorFlow); each step gets a different batch, derived on the device
from the step number.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import jax
import numpy as np

from agejax.benchmark import common
from agejax.benchmark import step_bench
from agejax.train import steps
from agejax.workdir import checkpointing

COLUMNS = ("steps_per_sec", "images_per_sec", "save_seconds", "restore_seconds",
           "bit_identical", "peak_mib")


@dataclasses.dataclass(frozen=True)
class ResumeSettings:
  # The network, batch and dtype (its timing fields are not used here).
  network: step_bench.StepSettings = dataclasses.field(
      default_factory=lambda: step_bench.StepSettings(image_size=224, batch_size=64))
  steps: int = 20  # the whole run; the checkpoint is taken halfway


def run(s: ResumeSettings, directory: str | None = None) -> list[dict[str, Any]]:
  """Both runs; one result. ``directory`` holds the checkpoint (a temporary one if None)."""
  if s.steps < 2:
    raise ValueError(f"resume needs at least 2 steps, got {s.steps}")
  built = step_bench.set_up(s.network)
  statics, fresh, template = built.statics, built.fresh_state, built.batch

  def batch_of(step_number, batch):
    # A different batch every step, on the device: the images shifted by a
    # per-step value, the ages permuted.
    key = jax.random.fold_in(jax.random.key(7), step_number)
    return {**batch, "image": batch["image"] + jax.random.normal(key, ()),
            "age": jax.random.permutation(key, batch["age"])}

  def train_from(state):
    return steps.train_step(statics, state, batch_of(state.step, template))

  train = jax.jit(train_from, donate_argnums=0)

  straight = fresh()
  jax.block_until_ready(train(fresh())[0])  # compiled once, outside the timing
  start = time.perf_counter()
  for _ in range(s.steps):
    straight, _ = train(straight)
  jax.block_until_ready(straight)
  seconds = time.perf_counter() - start

  halfway = s.steps // 2
  resumed = fresh()
  for _ in range(halfway):
    resumed, _ = train(resumed)
  with tempfile.TemporaryDirectory() as scratch:
    with checkpointing.Checkpointer(directory or scratch, async_save=False) as ckpt:
      start = time.perf_counter()
      ckpt.save(halfway, resumed, extra={"step": halfway})
      ckpt.wait()
      save_seconds = time.perf_counter() - start
      del resumed
      start = time.perf_counter()
      resumed, extra = ckpt.restore(halfway, checkpointing.abstract_like(fresh()))
      jax.block_until_ready(resumed)
      restore_seconds = time.perf_counter() - start
  for _ in range(s.steps - halfway):
    resumed, _ = train(resumed)
  a, b = jax.device_get(jax.tree.leaves(straight)), jax.device_get(jax.tree.leaves(resumed))
  identical = extra == {"step": halfway} and len(a) == len(b) and all(
      np.array_equal(x, y) for x, y in zip(a, b))
  peak = step_bench.allocator_peak()
  results = {
      "steps_per_sec": s.steps / seconds,
      "images_per_sec": s.steps * s.network.batch_size / seconds,
      "save_seconds": save_seconds,
      "restore_seconds": restore_seconds,
      "bit_identical": bool(identical),
      "arrays_compared": len(a),
      "peak_mib": peak / 2**20 if peak else None,
  }
  return [common.record("resume", dataclasses.asdict(s), results)]
