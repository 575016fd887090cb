"""The tf.data pipeline on a tiny TFDS dataset built here, plus device sharding.

The dataset has three splits of 48 x 48 JPEGs whose ``age_std`` holds a
unique example id, so every test can tell exactly which images it got:
train (300, ages spread evenly), validation (37, gradients) and skewed (300,
half of them aged 20) for balanced sampling.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from agejax.models import forward
import tensorflow as tf
import tensorflow_datasets as tfds

from agejax.data import augment
from agejax.data import catalog
from agejax.config import defaults
from agejax.data import input_pipeline
from agejax.errors import ConfigError

STORED = 48
SIZE = 40
SKEWED_AGES = {20: 150, 30: 80, 40: 40, 50: 20, 60: 10}


def _gradient(offset: int) -> np.ndarray:
  y, x = np.mgrid[0:STORED, 0:STORED]
  return np.stack([5 * x, 5 * y, np.full_like(x, offset)], -1).astype(np.uint8)


with tfds.core.registered.skip_registration():

  class PipelineFixtureFaces(tfds.core.GeneratorBasedBuilder):
    """Faces stand-ins in the layout of the agejax builders."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(STORED, STORED, 3),
                                           encoding_format="jpeg"),
              "age": tf.int32,
              "age_std": tf.float32,
          }))

    def _split_generators(self, dl_manager):
      del dl_manager
      skewed = np.repeat(list(SKEWED_AGES), list(SKEWED_AGES.values()))
      return {
          "train": self._generate_examples(np.arange(300) % 60 + 10, 0, False),
          "validation": self._generate_examples(np.arange(37) + 20, 1000, True),
          "skewed": self._generate_examples(skewed, 2000, False),
      }

    def _generate_examples(self, ages, first_id, gradients):
      rng = np.random.default_rng(first_id)
      for i, age in enumerate(ages):
        if gradients:
          image = _gradient(3 * i)
        else:  # smooth noise, so JPEG keeps it recognisable
          small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
          image = np.kron(small, np.ones((8, 8, 1), np.uint8))
        yield str(first_id + i), {"image": image, "age": int(age),
                                  "age_std": float(first_id + i)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tfds"))
  PipelineFixtureFaces(data_dir=root).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return root


def _cfg(data_dir, **data):
  cfg = defaults.default_config()
  cfg.data.dataset = "pipeline_fixture_faces"
  cfg.data.data_dir = data_dir
  cfg.data.image_size = SIZE
  cfg.data.label_std = "age_std"
  cfg.data.shuffle_buffer = 512
  for key, value in data.items():
    if key.startswith("augment_"):
      setattr(cfg.data.augment, key[len("augment_"):], value)
    else:
      setattr(cfg.data, key, value)
  return cfg


def _batches(cfg, split="train", *, train=True, batch_size=32, seed=0, count=None,
             process_index=0, process_count=1, start_step=0):
  ds = input_pipeline.create_split(
      cfg.data, cfg.model, split, train=train, batch_size=batch_size, seed=seed,
      process_index=process_index, process_count=process_count,
      start_step=start_step)
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(count)] if count else list(it)


def _stored_ids(data_dir, split):
  """Example ids in stored order (TFDS shuffles examples when it writes them)."""
  builder = tfds.builder("pipeline_fixture_faces", data_dir=data_dir)
  return np.array([int(e["age_std"]) for e in tfds.as_numpy(
      builder.as_dataset(split=split, shuffle_files=False))])


def _ids(batches, masked=False):
  ids = np.concatenate([b["age_std"][b["mask"]] if masked else b["age_std"]
                        for b in batches])
  return ids.astype(np.int64)


def test_num_examples_without_network(data_dir, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  catalog.prepared_builder.cache_clear()
  cfg = _cfg(data_dir)
  assert input_pipeline.num_examples(cfg.data, "train") == 300
  assert input_pipeline.num_examples(cfg.data, "validation") == 37
  assert input_pipeline.num_examples(cfg.data, "skewed[:10%]") == 30
  assert input_pipeline.num_examples(cfg.data, "train+validation") == 337
  with pytest.raises(ConfigError, match=r"^data\.eval_split: 'test'"):
    cfg.data.eval_split = "test"
    input_pipeline.num_examples(cfg.data, "test")


def test_unusable_datasets_are_config_errors(data_dir, tmp_path):
  cfg = _cfg(data_dir)
  cfg.data.dataset = "kaggle:faces"
  with pytest.raises(ConfigError, match=r"^data\.dataset: .*network"):
    input_pipeline.num_examples(cfg.data, "train")
  cfg.data.dataset = "pipeline_fixture_faces:1.0.0"  # a version is fine
  assert input_pipeline.num_examples(cfg.data, "train") == 300
  cfg = _cfg(str(tmp_path))  # nothing built there
  with pytest.raises(ConfigError, match=r"^data\.dataset: "):
    input_pipeline.num_examples(cfg.data, "train")
  cfg = _cfg(data_dir, label="apparent_age")
  with pytest.raises(ConfigError, match=r"^data\.label: .*'apparent_age'"):
    _batches(cfg, count=1)
  with pytest.raises(ValueError, match=r"^batch size 30 .* 4 processes"):
    _batches(_cfg(data_dir), batch_size=30, process_count=4, count=1)


def test_train_batch_layout(data_dir):
  (batch,) = _batches(_cfg(data_dir), count=1, batch_size=16)
  assert sorted(batch) == ["age", "age_std", "image"]
  assert batch["image"].shape == (16, SIZE, SIZE, 3)
  assert batch["image"].dtype == np.float32
  assert batch["age"].dtype == np.float32 and batch["age"].shape == (16,)
  np.testing.assert_array_equal(batch["age"], _ids([batch]) % 60 + 10)
  (batch,) = _batches(_cfg(data_dir, label_std=""), count=1, batch_size=16)
  np.testing.assert_array_equal(batch["age_std"], np.zeros(16, np.float32))


def test_eval_crop_is_the_numpy_centre_crop_and_flip_exact(data_dir):
  cfg = _cfg(data_dir)
  cfg.model.preprocessing = "caffe"
  batches = _batches(cfg, "validation", train=False, batch_size=8)
  stored = {int(e["age_std"]): e["image"] for e in tfds.as_numpy(
      tfds.builder("pipeline_fixture_faces", data_dir=data_dir).as_dataset(
          split="validation"))}
  for batch in batches:
    for image, i, real in zip(batch["image"], _ids([batch]), batch["mask"]):
      if not real:
        continue
      crop = stored[i][4:44, 4:44]
      np.testing.assert_array_equal(image, augment.normalize(crop, "caffe"))
      # And that is where the gradient says it is: of the windows one pixel
      # around, the centre one fits best (JPEG noise is ~1 grey level, a
      # one-pixel shift moves red or green by 5).
      pixels = (image + np.asarray(augment.CAFFE_MEAN_BGR, np.float32))[..., ::-1]
      gradient = _gradient(3 * (i - 1000)).astype(np.float32)
      errors = {(t, l): np.abs(pixels - gradient[t:t + SIZE, l:l + SIZE]).mean()
                for t in (3, 4, 5) for l in (3, 4, 5)}
      assert min(errors, key=errors.get) == (4, 4), errors
    flipped = forward.flip_images(batch)
    for w in range(SIZE):
      np.testing.assert_array_equal(flipped["image"][:, :, w],
                                    batch["image"][:, :, SIZE - 1 - w])
    np.testing.assert_array_equal(flipped["age"], batch["age"])


def test_eval_padding_masks_and_process_parts(data_dir):
  cfg = _cfg(data_dir)
  (single,) = [_batches(cfg, "validation", train=False, batch_size=8)]
  assert len(single) == 5  # ceil(37 / 8)
  assert [int(b["mask"].sum()) for b in single] == [8, 8, 8, 8, 5]
  np.testing.assert_array_equal(np.sort(_ids(single, masked=True)),
                                np.arange(1000, 1037))  # each exactly once
  parts = [_batches(cfg, "validation", train=False, batch_size=8,
                    process_index=p, process_count=2) for p in range(2)]
  # 19 + 18 examples, local batch 4: both processes yield ceil(19 / 4) = 5.
  assert [len(p) for p in parts] == [5, 5]
  assert [[int(b["mask"].sum()) for b in p] for p in parts] == [
      [4, 4, 4, 4, 3], [4, 4, 4, 4, 2]]
  # In stored order, the first 19 to process 0, the other 18 to process 1.
  stored = _stored_ids(data_dir, "validation")
  np.testing.assert_array_equal(_ids(single, masked=True), stored)
  np.testing.assert_array_equal(_ids(parts[0], masked=True), stored[:19])
  np.testing.assert_array_equal(_ids(parts[1], masked=True), stored[19:])
  # index: the stored-order position, so other features join on it; -1 pads.
  for batches, first in ((single, 0), (parts[0], 0), (parts[1], 19)):
    index = np.concatenate([b["index"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(index, np.arange(first, first + len(index)))
  last = parts[1][-1]
  np.testing.assert_array_equal(last["index"][2:], [-1, -1])
  np.testing.assert_array_equal(last["mask"], [True, True, False, False])
  np.testing.assert_array_equal(last["image"][2:], 0.0)
  np.testing.assert_array_equal(last["age"][2:], 0.0)
  ds = input_pipeline.create_split(cfg.data, cfg.model, "validation", train=False,
                                   batch_size=8, seed=0, process_index=1,
                                   process_count=2)
  assert len(ds) == 5  # known up front, for progress and for checks


def test_train_process_parts_are_disjoint_and_cover(data_dir):
  cfg = _cfg(data_dir)
  # Global batch 20, local 10; each process's first epoch is 150 examples.
  ids = [_ids(_batches(cfg, batch_size=20, count=15, process_index=p,
                       process_count=2)) for p in range(2)]
  stored = _stored_ids(data_dir, "train")
  np.testing.assert_array_equal(np.sort(ids[0]), np.sort(stored[:150]))
  np.testing.assert_array_equal(np.sort(ids[1]), np.sort(stored[150:]))
  np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(300))
  assert not np.array_equal(ids[0], stored[:150])  # shuffled


def test_without_augmentation_train_equals_eval(data_dir):
  off = dict(augment_random_resized_crop=False, augment_rotation_degrees=0.0,
             augment_color_jitter=0.0)
  cfg = _cfg(data_dir, **off)
  evals = _batches(cfg, "train", train=False, batch_size=100)
  by_id = dict(zip(_ids(evals), np.concatenate([b["image"] for b in evals])))
  flips = 0
  for batch in _batches(cfg, count=3):
    for image, i in zip(batch["image"], _ids([batch])):
      if np.array_equal(image, by_id[i][:, ::-1]):
        flips += 1
      else:
        np.testing.assert_array_equal(image, by_id[i])
  assert 20 < flips < 76  # 96 coin flips
  (batch,) = _batches(_cfg(data_dir, augment_flip=False, **off), count=1)
  for image, i in zip(batch["image"], _ids([batch])):
    np.testing.assert_array_equal(image, by_id[i])


def test_same_seed_same_batches(data_dir):
  cfg = _cfg(data_dir)
  a, b = _batches(cfg, count=3), _batches(cfg, count=3)
  c = _batches(cfg, count=1, seed=1)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(a[0]["age_std"], c[0]["age_std"])


@pytest.mark.parametrize("balance", [False, True])
def test_restart_mid_second_epoch_is_bit_identical(data_dir, balance):
  cfg = _cfg(data_dir, balance_ages=balance)
  split = "skewed" if balance else "train"
  # 300 examples, batch 32: step 14 starts at example 448 = epoch 1, +148.
  full = _batches(cfg, split, count=18)
  resumed = _batches(cfg, split, count=4, start_step=14)
  for x, y in zip(full[14:], resumed):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(full[13]["image"], resumed[0]["image"])


def test_balanced_sampling_flattens_the_ages(data_dir):
  def histogram(balance):
    batches = _batches(_cfg(data_dir, balance_ages=balance), "skewed", count=47)
    ages = np.concatenate([b["age"] for b in batches])
    return np.array([np.mean(ages == a) for a in SKEWED_AGES])

  # 47 batches of 32 = 1504 draws, 5 epochs' worth.
  skew = np.array(list(SKEWED_AGES.values())) / 300
  np.testing.assert_allclose(histogram(False), skew, atol=0.005)
  # Rounding the repeat factors per epoch leaves ~1% of noise per bin.
  np.testing.assert_allclose(histogram(True), 0.2, atol=0.015)


_SHARDING_SCRIPT = textwrap.dedent("""
    import numpy as np
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from agejax.data import input_pipeline

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    host = [{"image": np.random.default_rng(i).normal(size=(8, 5, 5, 3)).astype(np.float32),
             "age": np.arange(8, dtype=np.float32) + i,
             "mask": np.arange(8) < 6} for i in range(5)]
    stacked = {k: np.stack([h[k] for h in host]) for k in host[0]}
    ds = input_pipeline.tf.data.Dataset.from_tensor_slices(stacked)
    for prefetch in (2, 0):
      got = list(input_pipeline.device_batches(ds, sharding, prefetch=prefetch))
      assert len(got) == 5
      for g, h in zip(got, host):
        for key in h:
          assert isinstance(g[key], jax.Array) and g[key].shape == h[key].shape
          assert g[key].dtype == h[key].dtype
          assert g[key].sharding.spec == PartitionSpec("data")
          assert len(g[key].addressable_shards) == 4
          for shard in g[key].addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), h[key][shard.index])
            assert shard.data.shape[0] == 2
          np.testing.assert_array_equal(np.asarray(g[key]), h[key])
    it = input_pipeline.device_batches(ds, sharding, prefetch=1)
    next(it)
    it.close()
    print("sharded ok")
""")


def test_device_batches_shard_over_four_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT], env=env,
                          cwd=repo, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert "sharded ok" in result.stdout


def test_remote_data_dirs_go_to_tfds_unchanged_and_offline(monkeypatch):
  # No bucket is reachable here: record what TFDS is asked for instead.
  import tensorflow_datasets as tfds

  from agejax.data import catalog

  calls = []
  monkeypatch.setattr(tfds, "builder", lambda name, **kw: calls.append((name, kw)) or "b")
  for url in ("gs://bucket/tfds", "s3://bucket/tfds"):
    assert catalog.builder("imdb_wiki/clean", url) == "b"
  assert calls == [("imdb_wiki/clean", {"data_dir": "gs://bucket/tfds", "try_gcs": False}),
                   ("imdb_wiki/clean", {"data_dir": "s3://bucket/tfds", "try_gcs": False})]
