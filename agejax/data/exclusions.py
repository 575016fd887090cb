"""``data.exclude``: examples every split a run reads leaves out, named by their keys.

The file is ``agejax.audit``'s ``exclude.txt`` or any list of example keys,
one per line, ``#`` starting a comment line. A key is the release file an
example came from: the first of :data:`KEY_FEATURES` the dataset has. Each
split's excluded examples are found once (its key column is read, images
stay encoded) and dropped from training, train-eval and validation alike;
an example's stored-order ``index`` stays its position in the built split,
so evaluations still join the dataset's attributes. A key the dataset does
not have is a config error naming the first few: a list written for
another dataset, or another build, must not silently exclude nothing.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from agejax.config import config_check
from agejax.data import catalog
from agejax.errors import ConfigError

KEY_FEATURES = ("file_name", "source_path", "key")
RULES = {"data.exclude": "'' or a file of example keys, one per line"}


def check(cfg: ml_collections.ConfigDict) -> None:
  path = cfg.data.get("exclude", "")
  config_check.require("data.exclude", not path or os.path.isfile(path),
                       "'' or an existing file of example keys", path)


def key_feature(features) -> str | None:
  """The dataset's key feature: the first of :data:`KEY_FEATURES` it has (None: none)."""
  return next((name for name in KEY_FEATURES if name in features), None)


def _required_key_feature(dataset: str, features) -> str:
  feature = key_feature(features)
  if feature is None:
    raise ConfigError("data.exclude", f"{dataset} has no key feature "
                      f"({' or '.join(KEY_FEATURES)}); rebuild it with this agejax")
  return feature


def parse_keys(text: str) -> list[str]:
  """The keys of an exclusion file's text: every line neither blank nor a ``#`` comment."""
  return [line.strip() for line in text.splitlines()
          if line.strip() and not line.lstrip().startswith("#")]


@functools.lru_cache(maxsize=8)
def read(path: str) -> frozenset[str]:
  """The keys of an exclusion file (:func:`parse_keys`)."""
  with open(path, encoding="utf-8") as f:
    return frozenset(parse_keys(f.read()))


@functools.lru_cache(maxsize=64)
def _split_keys(data_dir: str, dataset: str, split: Any) -> np.ndarray:
  """The key of every stored example of ``split``, read once per process (images stay encoded)."""
  builder = catalog.prepared_builder(dataset, data_dir)
  feature = _required_key_feature(dataset, builder.info.features)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  batches = ds.map(lambda e: e[feature]).batch(8192).as_numpy_iterator()
  return np.asarray([k.decode("utf-8") for batch in batches for k in batch], dtype=object)


def _hits(keys: np.ndarray, path: str) -> np.ndarray:
  return np.isin(keys, np.asarray(sorted(read(path)), dtype=object))


def excluded(data_cfg: ml_collections.ConfigDict, split: Any) -> np.ndarray | None:
  """bool per stored example of ``split`` (a TFDS split string or ``tfds.even_splits``
  part): left out; None: no list."""
  path = data_cfg.get("exclude", "")
  if not path:
    return None
  return _hits(_split_keys(data_cfg.data_dir, data_cfg.dataset, split), os.path.abspath(path))


def per_split(builder: tfds.core.DatasetBuilder, data_cfg: ml_collections.ConfigDict
              ) -> dict[str, int]:
  """Examples left out per split of the dataset; ConfigError for keys it does not have."""
  path = data_cfg.get("exclude", "")
  if not path:
    return {}
  feature = _required_key_feature(data_cfg.dataset, builder.info.features)
  wanted = read(os.path.abspath(path))
  found, counts = set(), {}
  for split in sorted(builder.info.splits):
    keys = _split_keys(data_cfg.data_dir, data_cfg.dataset, split)
    hit = _hits(keys, os.path.abspath(path))
    counts[split] = int(hit.sum())
    found.update(keys[hit].tolist())
  unknown = sorted(wanted - found)
  if unknown:
    shown = ", ".join(repr(k) for k in unknown[:3])
    raise ConfigError("data.exclude", f"{len(unknown)} key(s) of {path} are not in "
                      f"{data_cfg.dataset} ({feature}): {shown}"
                      + (", ..." if len(unknown) > 3 else ""))
  return counts
