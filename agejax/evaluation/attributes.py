"""The per-example features an age card groups by, read in a split's stored order.

Predictions carry each example's stored-order ``index``
(:mod:`agejax.data.input_pipeline`); :func:`read` returns the dataset's
other features in that same order, so ``values[index]`` joins them whatever
the processes and batches were. Images are never decoded.

Read by default, where the dataset has them: ``identity`` (the bootstrap's
unit), ``gender`` (FATE's sex), ``race`` (UTKFace) and ``face_size`` (the
source face box's shorter side in pixels). ``--attribute=FEATURE`` adds any
other scalar, text or class feature. Class features come back as their
names, text as ``str``.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from agejax.data import catalog
from agejax.errors import ConfigError

DEFAULT = ("identity", "gender", "race", "face_size")


def available(data_cfg: ml_collections.ConfigDict, extra: Sequence[str] = ()) -> list[str]:
  """The default attributes the dataset has, then ``extra`` (ConfigError for a missing one)."""
  features = catalog.prepared_builder(data_cfg.dataset, data_cfg.data_dir).info.features
  for name in extra:
    if name not in features or name == "image":
      raise ConfigError("--attribute", f"{data_cfg.dataset} has no feature {name!r} "
                        f"(it has {sorted(k for k in features if k != 'image')})")
  return [n for n in DEFAULT if n in features] + [n for n in extra if n not in DEFAULT]


def read(data_cfg: ml_collections.ConfigDict, split: str,
         names: Sequence[str]) -> dict[str, np.ndarray]:
  """``{name: values}`` of every example of ``split`` in stored order."""
  if not names:
    return {}
  builder = catalog.prepared_builder(data_cfg.dataset, data_cfg.data_dir)
  features = builder.info.features
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.map(lambda e: {n: e[n] for n in names})
  columns: dict[str, list[np.ndarray]] = {n: [] for n in names}
  for batch in ds.batch(8192).as_numpy_iterator():
    for n in names:
      columns[n].append(batch[n])
  out = {}
  for n in names:
    values = np.concatenate(columns[n]) if columns[n] else np.zeros([0])
    feature = features[n]
    if isinstance(feature, tfds.features.ClassLabel):
      values = np.asarray(feature.names, dtype=object)[values]
    elif values.dtype == object:  # tf.string
      values = np.asarray([v.decode("utf-8") for v in values], dtype=object)
    out[n] = values
  return out


def joined(values: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
  """The attributes of the predicted examples, in the predictions' order."""
  return {n: v[np.asarray(index, np.int64)] for n, v in values.items()}
