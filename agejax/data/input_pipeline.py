"""tf.data input pipeline: a built TFDS split -> per-process batches -> jax.Arrays.

Each process reads its own contiguous part of the split (``tfds.even_splits``)
and yields local batches of ``batch_size / process_count`` examples:
``image`` float32 [b, S, S, 3] normalised for ``model.preprocessing``, ``age``
float32 (``data.label``), ``age_std`` float32 (``data.label_std`` or zeros),
and, in evaluation, ``mask`` (bool: False on padding rows) and ``index``
(int32: the example's position in the split's stored order, -1 on padding),
which joins a prediction to the example's other features.
:func:`device_batches` turns them into global arrays sharded over a mesh.

Determinism and exact restart. Nothing here uses stateful randomness:
- each epoch's shuffle is seeded by (seed, process, epoch);
- each epoch's augmentation by (seed, process, epoch): one table of uniforms,
  row k for the epoch's k-th example (``agejax.data.stages.epoch_draws``);
- balanced sampling repeats examples by counts drawn from (seed, process,
  epoch).
So the stream of a process is a pure function of the seed, and
``start_step=k`` locates batch k arithmetically: whole epochs are skipped
without reading them, and the rest of the current epoch is skipped on the
shuffled, still-encoded records, before any JPEG is decoded. The shuffle buffer
is tf.data's (seeded; the global TF seed, which agejax never sets, also enters
it); ``deterministic = True`` keeps the parallel map in order.

TFDS reads prepared datasets from ``data.data_dir``: a local folder or any
URL ``tf.io.gfile`` reads (``gs://``, ``s3://``, ...). Its public-bucket
lookups are switched off, namespaced (community / hub) names are refused, and
nothing here builds or downloads a dataset.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from agejax.data import augment
from agejax.data import stages
from agejax.data import catalog
from agejax.data import damaged_shards
from agejax.data import device_prefetch
from agejax.data import eval_input
from agejax.data import exclusions
from agejax.errors import ConfigError


_NO_END = 2**62  # "forever" in epochs; tf.data ranges need a bound


def _split_key(data_cfg: ml_collections.ConfigDict, split: str) -> str:
  if split == data_cfg.train_split:
    return "data.train_split"
  if split == data_cfg.eval_split:
    return "data.eval_split"
  return "data.dataset"


def _stored_count(data_cfg: ml_collections.ConfigDict, split: Any, key_split: str) -> int:
  """Examples ``split`` holds as built (``data.exclude`` not applied)."""
  builder = catalog.prepared_builder(data_cfg.dataset, data_cfg.data_dir)
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise ConfigError(
        _split_key(data_cfg, key_split),
        f"{key_split!r} is not a split of {data_cfg.dataset} "
        f"(it has {sorted(builder.info.splits)}): {e}") from e


def _count(data_cfg: ml_collections.ConfigDict, split: Any, key_split: str) -> int:
  """Examples a run reads of ``split``: the stored ones less ``data.exclude``'s."""
  stored = _stored_count(data_cfg, split, key_split)
  left_out = exclusions.excluded(data_cfg, split)
  return stored - int(left_out.sum()) if left_out is not None else stored


def num_examples(data_cfg: ml_collections.ConfigDict, split: str) -> int:
  """Examples in ``split`` (any TFDS split string) from the built metadata."""
  return _count(data_cfg, split, split)


def _local_batch(batch_size: int, process_count: int) -> int:
  # Commands check the batch against the devices first (device_mesh.check_batch).
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
        f"batch size {batch_size} must be a positive multiple of the {process_count} "
        "processes (each reads batch_size / process_count examples)")
  return batch_size // process_count


def _records(builder: tfds.core.DatasetBuilder, split: Any,
             data_cfg: ml_collections.ConfigDict, limit: int = 0) -> tf.data.Dataset:
  """The part in stored order: encoded ``image``, float32 ``age``, ``age_std``, and
  ``position`` (int64, the record's place in the part as stored).

  ``data.exclude``'s examples are left out. ``limit`` > 0: the first
  ``limit`` records left only. TFDS then must not cache the part in memory:
  a cache read partly is discarded (and TF warns).
  """
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()},
                          read_config=tfds.ReadConfig(try_autocache=not limit))
  ds = ds.enumerate()
  left_out = exclusions.excluded(data_cfg, split)
  if left_out is not None:
    keep = tf.constant(~left_out)
    ds = ds.filter(lambda position, _: tf.gather(keep, position))
  if limit:
    ds = ds.take(limit)
  label, label_std = data_cfg.label, data_cfg.label_std

  def select(position, example):
    std = (tf.cast(example[label_std], tf.float32) if label_std
           else tf.zeros([], tf.float32))
    return {"image": example["image"], "position": position,
            "age": tf.cast(example[label], tf.float32), "age_std": std}

  return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)


def _labels(records: tf.data.Dataset) -> np.ndarray:
  """The float32 ``age`` of every record, in order (the images stay encoded)."""
  batches = records.map(lambda r: r["age"]).batch(8192).as_numpy_iterator()
  return np.concatenate(list(batches) or [np.zeros([0], np.float32)])


def split_labels(data_cfg: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """Every label (``data.label``) of ``split``, all processes' parts, in stored order."""
  builder = catalog.prepared_builder(data_cfg.dataset, data_cfg.data_dir)
  catalog.check_features(builder, data_cfg)
  _count(data_cfg, split, split)  # a ConfigError naming the key for an unknown split
  return _labels(_records(builder, split, data_cfg))


def _rng_key(*parts: Any) -> tf.Tensor:
  """A stateless RNG key folded from integers (Python or tensors)."""
  return _fold(tf.constant([0, 0], tf.int64), *parts)


def _fold(key: tf.Tensor, *parts: Any) -> tf.Tensor:
  """``key`` with each of ``parts`` folded in, in order."""
  for part in parts:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(part, tf.int64))
  return key


# Streams are told apart by a leading constant so they never share a key.
_SHUFFLE, _REPEATS, _AUGMENT = 1, 2, 3


def _repeat_factors(ages: np.ndarray) -> np.ndarray:
  """Per-example expected copies per epoch so that every age bin is equally likely.

  Bins are whole years (floor of the label). The factors sum to the number
  of examples, so an epoch keeps its length on average.
  """
  bins = np.floor(ages).astype(np.int64)
  _, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
  return len(ages) / (len(counts) * counts[inverse].astype(np.float64))


def _epoch_repeats(factors: np.ndarray, seed: int, process_index: int,
                   epoch: tf.Tensor) -> tf.Tensor:
  """Copies of each example in ``epoch``: floor(f) + Bernoulli(frac(f)), int64."""
  whole = tf.constant(np.floor(factors).astype(np.int64))
  frac = tf.constant((factors - np.floor(factors)).astype(np.float32))
  u = tf.random.stateless_uniform([len(factors)],
                                  _rng_key(_REPEATS, seed, process_index, epoch))
  return whole + tf.cast(u < frac, tf.int64)


def _start(examples: int, epoch_length: Callable[[int], int]) -> tuple[int, int]:
  """(epoch, position in it) of the ``examples``-th example of the stream."""
  epoch = 0
  while True:
    length = epoch_length(epoch)
    if examples < length:
      return epoch, examples
    examples -= length
    epoch += 1


def _train_stream(records: tf.data.Dataset, data_cfg: ml_collections.ConfigDict,
                  *, n_local: int, seed: int, process_index: int,
                  start_example: int,
                  epoch_draws: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]
                  ) -> tf.data.Dataset:
  """Encoded records, shuffled per epoch, forever, from ``start_example`` on.

  Elements are (draws, record): ``epoch_draws(epoch, count)`` is the epoch's
  table of random draws, its k-th row going with the epoch's k-th example.
  """
  if data_cfg.balance_ages:
    factors = _repeat_factors(_labels(records))
    indexed = records.enumerate()

  def epoch_length(epoch: int) -> int:
    if data_cfg.balance_ages:
      return int(tf.reduce_sum(_epoch_repeats(factors, seed, process_index, epoch)))
    return n_local

  first_epoch, first_skip = _start(start_example, epoch_length)

  def one_epoch(epoch):
    if data_cfg.balance_ages:
      repeats = _epoch_repeats(factors, seed, process_index, epoch)
      ds = indexed.flat_map(lambda i, r: tf.data.Dataset.from_tensors(r).repeat(repeats[i]))
      count = tf.reduce_sum(repeats)
    else:
      ds, count = records, tf.constant(n_local, tf.int64)
    shuffle_seed = _rng_key(_SHUFFLE, seed, process_index, epoch)[0]
    ds = ds.shuffle(data_cfg.shuffle_buffer, seed=shuffle_seed,
                    reshuffle_each_iteration=False)
    ds = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(epoch_draws(epoch, count)),
                              ds))
    # Restart: drop what the interrupted run already consumed, still encoded.
    return ds.skip(tf.where(epoch == first_epoch, tf.constant(first_skip, tf.int64),
                            tf.constant(0, tf.int64)))

  return tf.data.Dataset.range(first_epoch, _NO_END).flat_map(one_epoch)


@dataclasses.dataclass(frozen=True)
class _SplitSource:
  """What both streams of :func:`create_split` read: this process's records and the image rules."""
  records: tf.data.Dataset
  counts: list[int]  # examples per process
  process_index: int
  local_batch: int
  image_size: int
  stored_shape: tuple[int | None, ...]
  resize_side: int
  decode: Callable[[tf.Tensor], tf.Tensor]
  preprocessing: str
  stored_as_jpeg: bool
  first_index: int = 0  # stored-order position of this process's first example


def _train_batches(src: _SplitSource, data_cfg: ml_collections.ConfigDict, seed: int,
                   first_example: int) -> tf.data.Dataset:
  """Augmented, shuffled batches forever, from this process's ``first_example`` on."""
  augment_cfg, size, preprocessing = data_cfg.augment, src.image_size, src.preprocessing
  augment_key = tf.constant(_rng_key(_AUGMENT, seed, src.process_index).numpy())
  stream = _train_stream(
      src.records, data_cfg, n_local=src.counts[src.process_index], seed=seed,
      process_index=src.process_index, start_example=first_example,
      epoch_draws=lambda epoch, count: stages.epoch_draws(
          _fold(augment_key, epoch), count, src.stored_shape, augment_cfg, size,
          src.resize_side))
  fast = src.stored_as_jpeg and stages.crops_while_decoding(augment_cfg)
  # The warp path's pixel work runs per batch (one XLA computation: 0.61 ->
  # 0.68-0.70 of the minimal pipeline with rotation), except for stored
  # images of many sizes, which cannot be batched before the warp.
  one_by_one = None in src.stored_shape[:2]

  def prepare(drawn, record):
    labels = {"age": record["age"], "age_std": record["age_std"]}
    if fast:
      drawn = stages.image_draws(drawn, lambda: tf.image.extract_jpeg_shape(record["image"]),
                                 augment_cfg, size, src.resize_side)
      return {"image": stages.jpeg_pixels(record["image"], drawn, augment_cfg, size,
                                          preprocessing), **labels}
    image = src.decode(record["image"])
    drawn = stages.image_draws(drawn, lambda: tf.shape(image), augment_cfg, size,
                               src.resize_side)
    drawn = {"pixels": image, "transform": drawn["transform"], "factors": drawn["factors"]}
    if one_by_one:
      return {"image": stages.finish_one(drawn, augment_cfg, size, preprocessing), **labels}
    return {**drawn, **labels}

  def finish_batch(batch):
    return {"image": stages.finish(batch, augment_cfg, size, preprocessing),
            "age": batch["age"], "age_std": batch["age_std"]}

  ds = stream.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(src.local_batch, drop_remainder=True)
  if not (fast or one_by_one):
    ds = ds.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE)
  return ds


def _eval_batches(src: _SplitSource) -> tf.data.Dataset:
  """Every example once in stored order (``eval_input``'s TF twin), padded to equal batches."""
  size = src.image_size

  def prepare(record):
    image = eval_input.network_input_tf(src.decode(record["image"]), size, src.resize_side,
                                        src.preprocessing)
    return {"image": image, "age": record["age"],
            "age_std": record["age_std"], "mask": tf.constant(True),
            "index": tf.cast(record["position"] + src.first_index, tf.int32)}

  ds = src.records.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  num_batches = -(-max(src.counts) // src.local_batch)
  padding = {"image": tf.zeros([size, size, 3], tf.float32),
             "age": tf.zeros([], tf.float32), "age_std": tf.zeros([], tf.float32),
             "mask": tf.constant(False), "index": tf.constant(-1, tf.int32)}
  pad_rows = num_batches * src.local_batch - src.counts[src.process_index]
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(pad_rows))
  return ds.batch(src.local_batch, drop_remainder=True)


def create_split(data_cfg: ml_collections.ConfigDict,
                 model_cfg: ml_collections.ConfigDict, split: str, *,
                 train: bool, batch_size: int, seed: int = 0,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 start_step: int = 0, start_example: int | None = None,
                 max_examples: int = 0) -> tf.data.Dataset:
  """This process's batches of ``split``.

  Args:
    data_cfg: the ``data`` section of the config.
    model_cfg: the ``model`` section (``preprocessing``).
    split: TFDS split string, e.g. ``data_cfg.train_split``.
    train: augmented, shuffled, repeated forever, remainder dropped; else
      every example exactly once across processes, in stored order, with the
      last batch padded (``mask`` False) so every process yields as many
      batches.
    batch_size: global batch size (over all processes).
    seed: the run's seed (train only).
    process_index, process_count: default to JAX's.
    start_step: train only: begin at this batch of the uninterrupted stream.
    start_example: train only: begin after this many global examples of the
      uninterrupted stream instead (a phase of a batch-size schedule starts
      where the last one stopped).
    max_examples: eval only, > 0: about this many examples, the first
      ``ceil(max_examples / process_count)`` of every process's part (the
      same ones at every call: the train-eval subset).

  Returns:
    A tf.data.Dataset of dicts of local batches (see the module docstring).
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  local_batch = _local_batch(batch_size, process_count)
  builder = catalog.prepared_builder(data_cfg.dataset, data_cfg.data_dir)
  catalog.check_features(builder, data_cfg)
  parts = tfds.even_splits(split, n=process_count)
  counts = [_count(data_cfg, p, split) for p in parts]
  if min(counts) == 0:
    raise ConfigError(_split_key(data_cfg, split),
                      f"{split!r} has {sum(counts)} examples, fewer than the "
                      f"{process_count} processes")
  if max_examples and train:
    raise ValueError("max_examples applies to evaluation streams only")
  first_index = sum(_stored_count(data_cfg, p, split) for p in parts[:process_index])
  limit = -(-max_examples // process_count) if max_examples else 0
  if limit:
    counts = [min(c, limit) for c in counts]
  records = _records(builder, parts[process_index], data_cfg, limit)
  size = data_cfg.image_size
  stored = builder.info.features["image"].shape
  stored_side = min(stored[:2]) if None not in stored[:2] else None
  resize_side = eval_input.eval_resize_side(size, stored_side)
  decode = builder.info.features["image"].decode_example
  preprocessing = model_cfg.preprocessing
  augment.normalize(np.zeros([3], np.uint8), preprocessing)  # fail early

  source = _SplitSource(records=records, counts=counts, process_index=process_index,
                        local_batch=local_batch, image_size=size, stored_shape=tuple(stored),
                        resize_side=resize_side, decode=decode, preprocessing=preprocessing,
                        stored_as_jpeg=getattr(builder.info.features["image"],
                                               "encoding_format", None) == "jpeg",
                        first_index=first_index)
  if train:
    first = (start_step * local_batch if start_example is None
             else start_example // process_count)
    ds = _train_batches(source, data_cfg, seed, first)
  else:
    if start_step or start_example:
      raise ValueError("start_step and start_example apply to training streams only")
    ds = _eval_batches(source)

  options = tf.data.Options()
  options.deterministic = True
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def stored_crops(data_cfg: ml_collections.ConfigDict, split: str,
                 limit: int = 0) -> Iterator[tuple[np.ndarray, float]]:
  """``(uint8 crop [H, W, 3], age)`` of ``split`` as stored, in stored order.

  What an exported model is given: the builder's crops before any resize,
  crop or normalisation. ``limit`` > 0: the first ``limit`` only. One
  process reads all of it (for export-time checks, not for training).
  """
  builder = catalog.prepared_builder(data_cfg.dataset, data_cfg.data_dir)
  catalog.check_features(builder, data_cfg)
  _count(data_cfg, split, split)  # an unknown split names its config key
  decode = builder.info.features["image"].decode_example
  records = _records(builder, split, data_cfg, limit)
  for example in records.map(lambda r: (decode(r["image"]), r["age"])).as_numpy_iterator():
    yield example[0], float(example[1])


# Kept here so the pipeline's users have one module to import.
DeviceIterator = device_prefetch.DeviceIterator


def device_batches(dataset: tf.data.Dataset, sharding: Any, prefetch: int = 2,
                   data_cfg: ml_collections.ConfigDict | None = None,
                   split: str | None = None) -> DeviceIterator:
  """:func:`agejax.data.device_prefetch.device_batches`; with ``data_cfg`` and ``split``,
  a corrupt file of the built dataset raises DataCorrupt naming it."""
  on_error = None
  if data_cfg is not None and split is not None:
    on_error = functools.partial(damaged_shards.read_error, data_cfg, split)
  return device_prefetch.device_batches(dataset, sharding, prefetch, on_error=on_error)
