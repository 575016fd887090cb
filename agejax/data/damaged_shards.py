"""Which shard of a built dataset is damaged, when reading it fails.

tf.data reports a CRC mismatch or a truncated record without naming the
file; this reads each TFRecord file of the split to the end and names the
ones that fail, with the command that rebuilds the dataset.
"""

from __future__ import annotations

import os
import re
from typing import Any

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from agejax.data import catalog
from agejax.errors import DataCorrupt


def _split_files(builder: tfds.core.DatasetBuilder, split: Any) -> list[str]:
  name = re.match(r"[A-Za-z0-9_]+", str(getattr(split, "split", split)))
  files = tf.io.gfile.glob(os.path.join(builder.data_dir, "*.tfrecord*"))
  if name:
    of_split = [f for f in files if f"-{name.group(0)}.tfrecord" in os.path.basename(f)]
    files = of_split or files
  return sorted(files)


def unreadable_files(files: list[str]) -> dict[str, str]:
  """``{file: reason}`` of the TFRecord files that cannot be read to the end (CRC, truncation)."""
  bad = {}
  for path in files:
    try:
      for _ in tf.data.TFRecordDataset(path):
        pass
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
      found = re.search(r"(truncated|corrupted) record at \d+", e.message)
      bad[path] = found.group(0) if found else e.message.split("\n")[0]
  return bad


def read_error(data_cfg: ml_collections.ConfigDict, split: str,
               error: Exception) -> DataCorrupt | None:
  """The DataCorrupt naming the damaged file(s) behind a read failure; None if not one."""
  if not isinstance(error, (tf.errors.DataLossError, tf.errors.InvalidArgumentError)):
    return None
  builder = catalog.prepared_builder(data_cfg.dataset, data_cfg.data_dir)
  bad = unreadable_files(_split_files(builder, split))
  rebuild = (f"delete {builder.data_dir} and build it again (tfds build "
             f"data_builders/{catalog.base_name(data_cfg.dataset)} ...; see its README)")
  if bad:
    first, reason = next(iter(bad.items()))
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return DataCorrupt(f"{data_cfg.dataset} {split}: shard {first}{more} is corrupt ({reason}); "
                       f"{rebuild}")
  first_line = str(getattr(error, "message", error)).strip().split("\n")[0]
  return DataCorrupt(f"{data_cfg.dataset} {split} in {builder.data_dir} could not be read "
                     f"({first_line}); if its files were damaged, {rebuild}")
