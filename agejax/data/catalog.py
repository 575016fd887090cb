"""Finding agejax's TFDS datasets by name, and preparing the ones that need no files."""

from __future__ import annotations

import functools
import importlib

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.utils import gcs_utils

from agejax.errors import ConfigError

# Builders shipped in data_builders/; importing one registers it with TFDS.
BUILDERS = ("imdb_wiki", "appa_real", "utkface", "age_csv", "synthetic_faces")
# Datasets generated on the spot: the trainer prepares them when absent.
SELF_PREPARING = ("synthetic_faces",)


@functools.cache
def setup_tensorflow() -> None:
  """TF and TFDS as agejax uses them; entry points call it once before any data.

  * TF runs the input pipeline on the host CPU: a GPU belongs to JAX alone
    (this fails harmlessly when TF's devices were initialised already).
  * TFDS never looks datasets up on the network: it falls back to
    gs://tfds-data for dataset info when this flag is False, and pinning it
    means an upgrade that flips the default cannot make a load wait on it.
  """
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    pass
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access


def register_builders() -> None:
  """Registers agejax's builders with TFDS (after :func:`setup_tensorflow`)."""
  setup_tensorflow()
  for name in BUILDERS:
    importlib.import_module(f"data_builders.{name}")


def ensure_prepared(data_cfg: ml_collections.ConfigDict) -> None:
  """Builds a self-preparing dataset if absent; otherwise says how to build it."""
  register_builders()
  name = data_cfg.dataset.split("/")[0].split(":")[0]
  builder = tfds.builder(data_cfg.dataset, data_dir=data_cfg.data_dir or None)
  if builder.is_prepared():
    return
  if name in SELF_PREPARING:
    logging.info("preparing %s in %s (generated, nothing is downloaded)",
                 data_cfg.dataset, builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return
  raise ConfigError(
      "data.dataset",
      f"{data_cfg.dataset} is not built under {builder.data_dir}; build it with "
      f"`tfds build data_builders/{name} --manual_dir=<release files> "
      f"--data_dir={data_cfg.data_dir or '<data_dir>'}` (see data_builders/{name}/README.md)")
