"""Throughput of agejax's tf.data training pipeline from prepared TFRecords.

The records are a real build: an IMDB-WIKI release generated as in the
``build`` benchmark, prepared at the builder's 256 px, then read by
``input_pipeline.create_split(train=True)`` at 224 px. Variants: random crop
and flip only, then rotation alone and colour jitter alone on top of them.
A minimal tf.data pipeline over the same records (``decode_and_crop_jpeg``,
resize, flip, ``augment.normalize``, batch) runs in the same process for
scale: ``ratio`` is agejax's images/s over the minimal one's. Both normalise
with the same function; agejax's stream adds per-epoch shuffling, a seeded
table of draws per epoch and exact restart, and saves where it can (the
flip on the uint8 window before its resize).
Batches are taken as numpy arrays on the host, so device transfer is not part
of the number.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator

from agejax.benchmark import build_bench
from agejax.benchmark import common

COLUMNS = ("images_per_sec", "images_per_sec_per_core", "ratio")
# (variant, rotation degrees, colour jitter strength); crop and flip always on.
VARIANTS = (("crop_flip", 0.0, 0.0), ("rotation", 10.0, 0.0), ("color_jitter", 0.0, 0.2))


@dataclasses.dataclass(frozen=True)
class InputSettings:
  # Rows of the generated release; 1,686 of 5,000 land in train. An epoch is
  # then 52 batches, so a timed run (warmup + batches) crosses at most one
  # epoch boundary, where the shuffle buffer refills, as on real splits of
  # 100k+ images. With 512 rows (300 training images) a run crossed four, and
  # that refill, not the per-image work, set a third of the ratio.
  images: int = 5000
  image_size: int = 224
  batch_size: int = 32
  batches: int = 30  # batches per timed run
  repeats: int = 3
  warmup: int = 10  # untimed batches first: shuffle buffer, autotuning


def _minimal(builder: Any, s: InputSettings) -> Any:
  """The least a training pipeline does: random crop, resize, flip, normalise, batch."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from agejax.data import augment  # pylint: disable=import-outside-toplevel

  def prepare(example):
    data = example["image"]
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(data), tf.zeros([1, 0, 4]), area_range=(0.6, 1.0),
        aspect_ratio_range=(0.8, 1.25), use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(data, window, channels=3)
    image = tf.image.resize(image, [s.image_size, s.image_size])
    image = tf.image.random_flip_left_right(image)
    return {"image": augment.normalize(image, "imagenet"),
            "age": tf.cast(example["age"], tf.float32)}

  ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.repeat().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(s.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _agejax(data_dir: str, s: InputSettings, rotation: float, jitter: float) -> Any:
  from agejax.config import defaults  # pylint: disable=import-outside-toplevel
  from agejax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  cfg = defaults.default_config()
  cfg.data.dataset = "imdb_wiki/clean"
  cfg.data.data_dir = data_dir
  cfg.data.image_size = s.image_size
  cfg.data.augment.random_resized_crop = True
  cfg.data.augment.flip = True
  cfg.data.augment.rotation_degrees = rotation
  cfg.data.augment.color_jitter = jitter
  return input_pipeline.create_split(cfg.data, cfg.model, "train", train=True,
                                     batch_size=s.batch_size, seed=0)


def _timed_run(make_dataset: Callable[[], Any], s: InputSettings) -> float:
  """Seconds for ``s.batches`` batches of a fresh pipeline after ``s.warmup``.

  Each run builds its own pipeline and drops it after, so no idle pipeline
  keeps filling its buffers while another one is timed.
  """
  batches: Iterator[Any] = make_dataset().as_numpy_iterator()
  for _ in range(s.warmup):
    next(batches)
  start = time.perf_counter()
  for _ in range(s.batches):
    next(batches)
  return time.perf_counter() - start


def _alternating(makers: dict[str, Callable[[], Any]],
                 s: InputSettings) -> dict[str, dict[str, float]]:
  """Times the pipelines in turn, ``s.repeats`` rounds; medians per pipeline.

  Alternating rather than one pipeline after another: drift in the machine's
  load then moves every pipeline alike and cancels out of the ratios.
  """
  seconds: dict[str, list[float]] = {name: [] for name in makers}
  for _ in range(s.repeats):
    for name, make in makers.items():
      seconds[name].append(_timed_run(make, s))
  results = {}
  for name, times in seconds.items():
    summary = common.summarize(times, s.batch_size * s.batches, "images")
    results[name] = {
        "images_per_sec": summary["images_per_sec"],
        "images_per_sec_per_core": summary["images_per_sec"] / common.cpu_count(),
        "ms_per_batch": summary["ms_per_call"] / s.batches, "seconds": times}
  return results


def run(s: InputSettings) -> list[dict[str, Any]]:
  """Prepares the records, times the minimal pipeline and agejax's variants."""
  root = tempfile.mkdtemp(prefix="agejax_bench_input_")
  try:
    manual_dir, data_dir = os.path.join(root, "manual"), os.path.join(root, "data")
    build_bench.write_release(manual_dir, build_bench.BuildSettings(images=s.images))
    builder = build_bench.build(manual_dir, data_dir, "clean")
    train_examples = builder.info.splits["train"].num_examples
    if train_examples < s.batch_size:
      raise ValueError(f"input: {train_examples} training images from {s.images} release "
                       f"rows, fewer than a batch of {s.batch_size}; raise --input_images")
    settings = {**dataclasses.asdict(s), "train_examples": train_examples,
                "stored_size": 256}
    makers = {"minimal": functools.partial(_minimal, builder, s)}
    for variant, rotation, jitter in VARIANTS:
      makers[variant] = functools.partial(_agejax, data_dir, s, rotation, jitter)
    timed = _alternating(makers, s)
    minimal = timed["minimal"]["images_per_sec"]
    results = [common.record("input", {**settings, "variant": "minimal"},
                             {"variant": "minimal", **timed["minimal"], "ratio": None})]
    for variant, rotation, jitter in VARIANTS:
      results.append(common.record(
          "input", {**settings, "variant": variant, "rotation_degrees": rotation,
                    "color_jitter": jitter},
          {"variant": variant, **timed[variant],
           "ratio": timed[variant]["images_per_sec"] / minimal}))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return results
