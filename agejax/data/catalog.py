"""Finding agejax's TFDS datasets by name, and preparing the ones that need no files."""

from __future__ import annotations

import functools
import importlib

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core import naming
from tensorflow_datasets.core.utils import gcs_utils

from agejax import terminal
from agejax.errors import ConfigError

# Builders shipped in data_builders/; importing one registers it with TFDS.
BUILDERS = ("imdb_wiki", "appa_real", "utkface", "age_csv", "facebase", "synthetic_faces")
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
    # Listing GPUs makes a CUDA build of TF call cuInit, which logs an error
    # through C++ on a machine without a GPU: nothing the user can act on.
    with terminal.native_stderr_discarded():
      tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    pass
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access


def register_builders() -> None:
  """Registers agejax's builders with TFDS (after :func:`setup_tensorflow`)."""
  setup_tensorflow()
  for name in BUILDERS:
    importlib.import_module(f"data_builders.{name}")


def base_name(dataset: str) -> str:
  """``imdb_wiki/clean:1.0.0`` -> ``imdb_wiki``."""
  return dataset.split("/")[0].split(":")[0]


def _check_name(dataset: str) -> None:
  """A plain TFDS name (``name[/config][:version]``), nothing fetched from a hub."""
  if not dataset.strip():
    raise ConfigError("data.dataset", "is empty")
  try:
    parsed, _ = naming.parse_builder_name_kwargs(dataset)
  except ValueError as e:
    raise ConfigError("data.dataset", f"{dataset!r} is not a TFDS name: {e}") from e
  if parsed.namespace:
    raise ConfigError(
        "data.dataset",
        f"{dataset!r} names a community/hub dataset, which TFDS fetches over the "
        "network; build it locally and use its plain name")


def check(cfg: ml_collections.ConfigDict) -> None:
  """The rule of ``data.dataset`` that needs no files: a plain TFDS name."""
  _check_name(cfg.data.dataset)


def builder(dataset: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``dataset`` under ``data_dir`` (any path tf.io.gfile reads).

  Never looks anything up on the network (:func:`setup_tensorflow`).
  """
  _check_name(dataset)
  register_builders()
  try:
    return tfds.builder(dataset, data_dir=data_dir or None, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(
        "data.dataset", f"{dataset!r} is not a built or known TFDS dataset under "
        f"{data_dir or 'the TFDS default dir'} ({first}); agejax builds "
        f"{', '.join(BUILDERS)} (see data_builders/<name>/README.md)") from None


@functools.lru_cache(maxsize=16)
def prepared_builder(dataset: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """:func:`builder` of a dataset that is built; says how to build it otherwise."""
  found = builder(dataset, data_dir)
  if not found.is_prepared():
    raise not_built_error(dataset, found.data_dir, data_dir)
  return found


def not_built_error(dataset: str, builder_dir: str, data_dir: str) -> ConfigError:
  """The one "build it first" error, with the command that builds it."""
  name = base_name(dataset)
  parts = dataset.split(":")[0].split("/")
  config = f" --config={parts[1]}" if len(parts) > 1 else ""
  how = (f"`tfds build data_builders/{name}{config} --manual_dir=<release files> "
         f"--data_dir={data_dir or '<data_dir>'}` (see data_builders/{name}/README.md)"
         if name in BUILDERS else "`tfds build` with its builder on the import path")
  return ConfigError("data.dataset", f"{dataset} is not built under {builder_dir}; "
                     f"build it with {how}")


def ensure_prepared(data_cfg: ml_collections.ConfigDict) -> None:
  """Builds a self-preparing dataset if absent; otherwise says how to build it."""
  found = builder(data_cfg.dataset, data_cfg.data_dir)
  if found.is_prepared():
    return
  if base_name(data_cfg.dataset) in SELF_PREPARING:
    logging.info("preparing %s in %s (generated, nothing is downloaded)",
                 data_cfg.dataset, found.data_dir)
    found.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return
  raise not_built_error(data_cfg.dataset, found.data_dir, data_cfg.data_dir)


def check_features(builder: tfds.core.DatasetBuilder,
                   data_cfg: ml_collections.ConfigDict) -> None:
  """The built dataset has an image and the features ``data.label*`` name."""
  features = builder.info.features
  for key, name in (("data.label", data_cfg.label),
                    ("data.label_std", data_cfg.label_std)):
    if name and name not in features:
      raise ConfigError(key, f"{data_cfg.dataset} has no feature {name!r} "
                        f"(it has {sorted(features.keys())})")
  if "image" not in features:
    raise ConfigError("data.dataset", f"{data_cfg.dataset} has no image feature")
