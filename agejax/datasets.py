"""Finding agejax's TFDS datasets by name, and preparing the ones that need no files."""

from __future__ import annotations

import importlib

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from agejax.errors import ConfigError

# Builders shipped in data_builders/; importing one registers it with TFDS.
BUILDERS = ("imdb_wiki", "appa_real", "utkface", "age_csv", "synthetic_faces")
# Datasets generated on the spot: the trainer prepares them when absent.
SELF_PREPARING = ("synthetic_faces",)


def register_builders() -> None:
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
