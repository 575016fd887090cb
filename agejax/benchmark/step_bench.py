"""Compiled train-step throughput on synthetic on-device data.

The step is agejax's own: a config from ``default_config`` with the
benchmark's overrides, ``train.setup.build_step_fns`` + ``create_train_state`` and
``jax.jit(steps.bind(statics, steps.train_step), donate_argnums=0)``, exactly as
the trainer compiles it. Data is generated once on the device, so only the
step is measured. FLOPs come from XLA's cost analysis of the compiled step;
model FLOP utilisation (MFU) divides the achieved FLOP/s by a matmul peak
measured in the same run, so a loaded or throttled machine lowers both.

Peak memory is XLA's own account of the compiled step (arguments + outputs +
temporaries - donated aliases), the same on every platform; where the device
reports its allocator's high-water mark (GPUs) that is recorded too.

``--freeze=REGEX`` compiles the step twice, full fine-tuning and with the
matching parameters frozen, and times the two alternately in one run so
their ratio is not moved by the machine's load.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections

from agejax.config import defaults
from agejax.train import run_length
from agejax.train import steps
from agejax import device_mesh
from agejax.train import step_state
from agejax.benchmark import common

COLUMNS = ("batch_size", "images_per_sec", "ms_per_step", "gflops_per_step", "gflops_per_sec",
           "matmul_gflops_per_sec", "mfu", "peak_mib", "speedup")


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the step benchmark runs; the defaults are its published settings."""
  arch: str = "resnet50"
  width: int = 64
  image_size: int = 112
  batch_size: int = 16
  dtype: str = "float32"
  steps: int = 5  # train steps per timed run
  repeats: int = 5
  warmup: int = 2  # untimed runs after compilation
  matmul_size: int = 2048
  freeze: str = ""  # optim.groups regex frozen in this variant ("" = full fine-tuning)


def make_config(s: StepSettings) -> ml_collections.ConfigDict:
  """``default_config`` with the benchmark's model and batch: momentum SGD."""
  cfg = defaults.default_config()
  cfg.model.arch = s.arch
  cfg.model.width = s.width
  cfg.model.dtype = s.dtype
  cfg.data.image_size = s.image_size
  cfg.train.batch_size = s.batch_size
  cfg.optim.name = "momentum"
  cfg.optim.schedule.name = "constant"
  if s.freeze:
    cfg.optim.groups = ((s.freeze, dict(freeze=True)),)
  return cfg


def _flops(compiled: Any) -> float:
  """FLOPs of one call from XLA's cost analysis (a dict, or a list of one)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0)) if analysis else 0.0


def matmul_peak(size: int, dtype: str, repeats: int) -> float:
  """Median FLOP/s of a ``size`` x ``size`` matmul: what this device can reach now."""
  x = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul).lower(x, x).compile()
  seconds = common.time_calls(lambda: matmul(x, x).block_until_ready(),
                              repeats=max(repeats, 3), warmup=1)
  return 2 * size**3 / statistics.median(seconds)


def synthetic_batch(s: StepSettings, sharding: NamedSharding) -> dict[str, jax.Array]:
  """A batch shaped like the input pipeline's, made on the device."""
  k1, k2 = jax.random.split(jax.random.key(1))
  batch = {
      "image": jax.random.normal(k1, (s.batch_size, s.image_size, s.image_size, 3)),
      "age": jax.random.uniform(k2, (s.batch_size,), maxval=100.0),
      "age_std": jnp.zeros((s.batch_size,)),
  }
  return jax.device_put(batch, sharding)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """agejax's compiled train step on its synthetic batch, ready to time."""
  k_steps: Callable[[], None]  # runs ``steps`` train steps and waits for them
  flops: float  # of one step, from XLA's cost analysis
  peak_bytes: int  # of one step, from XLA's memory analysis


def _peak_bytes(compiled: Any) -> int:
  """What one call holds at most: arguments + outputs + temporaries - donated."""
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)


def allocator_peak() -> int | None:
  """The device allocator's high-water mark, where the platform keeps one."""
  stats = jax.devices()[0].memory_stats()
  return stats.get("peak_bytes_in_use") if stats else None


@dataclasses.dataclass(frozen=True)
class StepSetUp:
  """What the step is built from: ``fresh_state()`` gives a new first state."""
  statics: steps.StepStatics
  fresh_state: Callable[[], steps.TrainState]
  batch: dict[str, jax.Array]  # the synthetic batch, sharded over the devices


def set_up(s: StepSettings) -> StepSetUp:
  """The trainer's own set-up of ``s``'s network and optimizer, on synthetic data."""
  cfg = make_config(s)
  # The schedule never ends inside the benchmark: a long nominal run.
  statics = step_state.build_step_fns(cfg, run_length.run_length(cfg, s.batch_size * 1000))
  mesh = device_mesh.data_parallel_mesh()
  return StepSetUp(
      statics=statics,
      fresh_state=lambda: step_state.create_train_state(cfg, statics, NamedSharding(mesh, P()),
                                                   load_weights=False),
      batch=synthetic_batch(s, NamedSharding(mesh, P("data"))))


def compile_step(s: StepSettings) -> CompiledStep:
  """Builds the state and batch and compiles the step once."""
  built = set_up(s)
  statics, state, batch = built.statics, built.fresh_state(), built.batch
  train_fn = jax.jit(steps.bind(statics, steps.train_step), donate_argnums=0)
  # Calling the compiled object reuses this compilation (no second compile).
  compiled = train_fn.lower(state, batch).compile()
  holder = {"state": state}

  def k_steps():
    current = holder["state"]
    for _ in range(s.steps):
      current, metrics = compiled(current, batch)
    jax.block_until_ready((current, metrics))
    holder["state"] = current

  return CompiledStep(k_steps=k_steps, flops=_flops(compiled),
                      peak_bytes=_peak_bytes(compiled))


def run(s: StepSettings, compiled: CompiledStep | None = None) -> list[dict[str, Any]]:
  """Times ``s.repeats`` runs of ``s.steps`` compiled train steps; one result."""
  compiled = compiled or compile_step(s)
  seconds = common.time_calls(compiled.k_steps, s.repeats, s.warmup)
  peak = matmul_peak(s.matmul_size, s.dtype, s.repeats)
  return [_record(s, compiled, seconds, peak)]


def run_frozen(full: StepSettings, compiled_full: CompiledStep | None = None
               ) -> list[dict[str, Any]]:
  """Full fine-tuning and ``full.freeze`` frozen, timed alternately: two results.

  The frozen result's ``speedup`` is its images/s over the full step's.
  """
  if not full.freeze:
    raise ValueError("run_frozen needs StepSettings.freeze")
  variants = [dataclasses.replace(full, freeze=""), full]
  compiled = [compiled_full or compile_step(variants[0]), compile_step(variants[1])]
  seconds = common.time_alternating([c.k_steps for c in compiled], full.repeats, full.warmup)
  peak = matmul_peak(full.matmul_size, full.dtype, full.repeats)
  results = [_record(v, c, t, peak) for v, c, t in zip(variants, compiled, seconds)]
  results[0]["variant"] = "full"
  results[1]["variant"] = "frozen"
  results[1]["speedup"] = results[1]["images_per_sec"] / results[0]["images_per_sec"]
  results[1]["peak_ratio"] = results[1]["peak_mib"] / results[0]["peak_mib"]
  return results


def _record(s: StepSettings, compiled: CompiledStep, seconds: list[float],
            peak: float) -> dict[str, Any]:
  """One result; ``peak`` is the matmul FLOP/s of this run (see ``matmul_peak``)."""
  flops = compiled.flops
  summary = common.summarize(seconds, s.batch_size * s.steps, "images")
  ms_per_step = summary["ms_per_call"] / s.steps
  flops_per_sec = flops / (ms_per_step / 1000)
  device_peak = allocator_peak()
  results = {
      "batch_size": s.batch_size,
      "images_per_sec": summary["images_per_sec"],
      "ms_per_step": ms_per_step,
      "ms_per_step_min": summary["ms_per_call_min"] / s.steps,
      "ms_per_step_max": summary["ms_per_call_max"] / s.steps,
      "flops_per_step": flops,
      "gflops_per_step": flops / 1e9,
      "gflops_per_sec": flops_per_sec / 1e9,
      "matmul_gflops_per_sec": peak / 1e9,
      "mfu": flops_per_sec / peak,
      "peak_mib": compiled.peak_bytes / 2**20,
      "allocator_peak_mib": device_peak / 2**20 if device_peak else None,
      "seconds": seconds,
  }
  return common.record("step", dataclasses.asdict(s), results)
