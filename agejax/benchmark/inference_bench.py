"""CPU inference: the same network and crops in JAX and in each export's runtime.

One randomly initialised network is written as a bundle, a SavedModel, a
TFLite float model, a TFLite dynamic-range model and an ONNX model; each is
timed on the same uint8 crops at the stored size: throughput at ``batch``
crops per call, and the median and 90th percentile of batch-1 latency.
``predict`` times ``agejax.predict``'s library on photos (detection, crop,
network) through the bundle, in photos per second. Runtimes use their
default thread counts (all the cores this process may use).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any

import numpy as np

from agejax.benchmark import common

COLUMNS = ("crops_per_sec", "latency_ms_p50", "latency_ms_p90", "max_abs_age_vs_jax",
           "photos_per_sec")
RUNTIMES = ("jax", "saved_model", "tflite", "tflite_dynamic", "onnx")


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  arch: str = "resnet50"
  image_size: int = 112
  batch: int = 32
  repeats: int = 5
  latency_calls: int = 30
  photos: int = 8


def _network(s: InferenceSettings, directory: str) -> tuple[dict[str, Any], Any, Any]:
  """A bundle of a random network; its model.json and weights."""
  # pylint: disable=import-outside-toplevel
  from flax import nnx

  from agejax import models
  from agejax.config.defaults import default_config
  from agejax.serving import bundle

  cfg = default_config()
  cfg.model.arch = s.arch
  cfg.data.image_size = s.image_size
  model = models.build_model(cfg.model, s.image_size, nnx.Rngs(0))
  _, params, batch_stats = models.split_state(model)
  meta = bundle.metadata(cfg, 0, crop={"margin": 0.4, "stored_size": s.image_size,
                                       "source": "benchmark"})
  bundle.write(os.path.join(directory, "bundle"), meta, params, batch_stats)
  return meta, params, batch_stats


def _latency(run, crop: np.ndarray, calls: int) -> tuple[float, float]:
  run(crop)
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    run(crop)
    times.append(1000 * (time.perf_counter() - start))
  return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def _photos(count: int, directory: str) -> list[str]:
  """Copies of scikit-image's astronaut portrait (one face each)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from skimage import data as skdata  # pylint: disable=import-outside-toplevel
  paths = []
  for i in range(count):
    path = os.path.join(directory, f"photo{i}.jpg")
    Image.fromarray(skdata.astronaut()).save(path, quality=95)
    paths.append(path)
  return paths


def run(s: InferenceSettings) -> list[dict[str, Any]]:
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp

  from agejax.serving import formats
  from agejax.serving import graph
  from agejax.serving import inference
  from agejax.serving import photos
  from agejax.serving import runtimes

  results = []
  with tempfile.TemporaryDirectory() as directory:
    meta, params, batch_stats = _network(s, directory)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (s.batch, s.image_size, s.image_size, 3), dtype=np.uint8)
    serve = jax.jit(graph.serving_function(meta))  # agejax's own CPU lowering
    # The graph the exports hold (plain lax ops): the ages' reference.
    reference = formats.jax_outputs(meta, params, batch_stats, crops)["age"]
    runners = {"jax": lambda x: {k: np.asarray(v)
                                 for k, v in serve(params, batch_stats, jnp.asarray(x)).items()}}
    for name in RUNTIMES[1:]:
      fmt, quantize = ("tflite", "dynamic") if name == "tflite_dynamic" else (name, "none")
      out = os.path.join(directory, name)
      formats.export(meta, params, batch_stats, out, fmt, quantize=quantize)
      runners[name] = runtimes.load(out)[1]
    for name, runner in runners.items():
      ages = np.asarray(runner(crops)["age"])
      seconds = common.time_calls(lambda: runner(crops), s.repeats)  # pylint: disable=cell-var-from-loop
      p50, p90 = _latency(runner, crops[:1], s.latency_calls)
      results.append(common.record("inference", {**dataclasses.asdict(s), "runtime": name}, {
          "variant": name,
          **common.summarize(seconds, s.batch, "crops"),
          "latency_ms_p50": p50, "latency_ms_p90": p90,
          "max_abs_age_vs_jax": float(np.abs(ages - reference).max())}))
    predictor = inference.load(os.path.join(directory, "bundle"))
    paths = _photos(s.photos, directory)
    photos.predict_paths(predictor, paths[:1])  # compiles
    seconds = common.time_calls(lambda: photos.predict_paths(predictor, paths), s.repeats,
                                warmup=0)
    results.append(common.record("inference", {**dataclasses.asdict(s), "runtime": "predict"},
                                 {"variant": "predict (bundle)",
                                  **common.summarize(seconds, s.photos, "photos")}))
  return results
