"""One pass over every split of a built dataset: keys, labels and image fingerprints.

Each example is named by its stable key, the release file it came from:
the first of :data:`agejax.data.exclusions.KEY_FEATURES` the dataset has (``file_name`` for
imdb_wiki, appa_real, utkface and age_csv; facebase's ``source_path``;
synthetic_faces' ``key``, its split and generated index). Images are
decoded at their stored size, in batches, and fingerprinted three ways
(:mod:`agejax.auditing.image_hashes`): the pixel digest (exact copies),
the pHash of the image and of its mirror (candidates), and a signature,
the 8 x 8 colour image with each channel's mean removed and unit norm,
whose dot product (a correlation) confirms a candidate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
import tqdm

from agejax.auditing import image_hashes
from agejax.data import catalog
from agejax.data import exclusions
from agejax.errors import UsageError

SIGNATURE_SIDE = 8
SIGNATURE_SIZE = SIGNATURE_SIDE * SIGNATURE_SIDE * 3


@dataclasses.dataclass
class Scan:
  """Per example, in split order then stored order."""
  dataset: str
  key_feature: str
  label: str
  keys: np.ndarray  # str
  splits: np.ndarray  # str
  positions: np.ndarray  # int64, stored-order index within its split
  labels: np.ndarray  # float64
  identities: np.ndarray | None  # str, where the dataset has them
  digests: np.ndarray  # str
  hashes: np.ndarray  # uint64 pHash
  mirror_hashes: np.ndarray  # uint64 pHash of the flipped image
  signatures: np.ndarray  # float16 [N, SIGNATURE_SIZE]
  ages: np.ndarray  # float32 predicted age; NaN without a model
  spreads: np.ndarray  # float32 predicted spread; NaN without a model

  def __len__(self) -> int:
    return len(self.keys)


def key_feature(dataset: str, features: Sequence[str]) -> str:
  """The dataset's key feature (``data.exclude``'s); UsageError when it has none."""
  feature = exclusions.key_feature(features)
  if feature is None:
    raise UsageError(f"--dataset={dataset}: it has no key feature "
                     f"({' or '.join(exclusions.KEY_FEATURES)}) naming each example's source; "
                     "rebuild it with this agejax")
  return feature


def signatures(images: np.ndarray) -> np.ndarray:
  """float32 [N, 8 * 8 * 3]: the 8 x 8 colour image, each channel's mean removed, unit norm
  (0 for a flat image).

  Colour, not luma: two drawings of one layout (cartoon faces, passport
  photos) share their luma, not their colours. On 4,000 synthetic faces a
  16 x 16 luma signature at 0.99 confirmed 579 of 375,000 hash candidates
  that were different faces, this one 6, with the same recall of re-encoded,
  brightened and mirrored copies (README, "Auditing a dataset").
  """
  side = SIGNATURE_SIDE
  small = np.stack([image_hashes.area_resize(images[..., c].astype(np.float32), side, side)
                    for c in range(3)], axis=-1).reshape(len(images), side * side, 3)
  small -= small.mean(axis=1, keepdims=True)
  small = small.reshape(len(images), -1)
  norm = np.linalg.norm(small, axis=1, keepdims=True)
  return small / np.where(norm > 0, norm, 1.0)


def mirror_signatures(signature: np.ndarray) -> np.ndarray:
  """The signatures of the mirrored images (the 8 x 8 grid flipped left to right)."""
  side = SIGNATURE_SIDE
  return signature.reshape(-1, side, side, 3)[:, :, ::-1].reshape(-1, side * side * 3)


def _fingerprints(images: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
  return ([image_hashes.pixel_digest(x) for x in images], image_hashes.phash(images),
          image_hashes.mirrored(image_hashes.phash, images),
          signatures(images).astype(np.float16))


def scan(dataset: str, data_dir: str, batch: int = 256, show_progress: bool = True,
         predictor: Callable[[str], Any] | None = None) -> Scan:
  """Reads and fingerprints every split of ``dataset`` (built under ``data_dir``).

  ``predictor(split)``, where given, returns the model (``agejax.serving.inference``)
  whose ages and spreads each example of ``split`` gets, in the same pass.
  """
  builder = catalog.prepared_builder(dataset, data_dir)
  features = builder.info.features
  key = key_feature(dataset, list(features))
  supervised = builder.info.supervised_keys[1] if builder.info.supervised_keys else "age"
  label = supervised if isinstance(supervised, str) else "age"
  columns: dict[str, list] = {n: [] for n in ("keys", "splits", "positions", "labels",
                                              "identities", "digests", "hashes",
                                              "mirror_hashes", "signatures", "ages",
                                              "spreads")}
  has_identity = "identity" in features
  total = sum(s.num_examples for s in builder.info.splits.values())
  bar = tqdm.tqdm(total=total, desc=f"scanning {dataset}", unit="image",
                  disable=not show_progress)
  for split in sorted(builder.info.splits):
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda e: {"image": tf.io.decode_image(e["image"], channels=3,
                                                       expand_animations=False),
                           "key": e[key], "label": tf.cast(e[label], tf.float64),
                           "identity": e["identity"] if has_identity else tf.constant("")},
                num_parallel_calls=tf.data.AUTOTUNE)
    model = predictor(split) if predictor is not None else None
    position = 0
    for chunk in ds.batch(batch).prefetch(2).as_numpy_iterator():
      count = len(chunk["key"])
      digests, hashes, mirrors, sigs = _fingerprints(chunk["image"])
      columns["keys"] += [k.decode("utf-8") for k in chunk["key"]]
      columns["identities"] += [v.decode("utf-8") for v in chunk["identity"]]
      columns["splits"] += [split] * count
      columns["positions"].append(np.arange(position, position + count))
      columns["labels"].append(chunk["label"])
      columns["digests"] += digests
      columns["hashes"].append(hashes)
      columns["mirror_hashes"].append(mirrors)
      columns["signatures"].append(sigs)
      ages, spreads = (model(chunk["image"]) if model is not None
                       else (np.full(count, np.nan), np.full(count, np.nan)))
      columns["ages"].append(ages)
      columns["spreads"].append(spreads)
      position += count
      bar.update(count)
  bar.close()
  stack = lambda parts, dtype: (np.concatenate(parts).astype(dtype) if parts
                                else np.zeros(0, dtype))
  return Scan(
      dataset=dataset, key_feature=key, label=label,
      keys=np.asarray(columns["keys"], dtype=object),
      splits=np.asarray(columns["splits"], dtype=object),
      positions=stack(columns["positions"], np.int64),
      labels=stack(columns["labels"], np.float64),
      identities=np.asarray(columns["identities"], dtype=object) if has_identity else None,
      digests=np.asarray(columns["digests"], dtype=object),
      hashes=stack(columns["hashes"], np.uint64),
      mirror_hashes=stack(columns["mirror_hashes"], np.uint64),
      signatures=(np.concatenate(columns["signatures"]) if columns["signatures"]
                  else np.zeros((0, SIGNATURE_SIZE), np.float16)),
      ages=stack(columns["ages"], np.float32), spreads=stack(columns["spreads"], np.float32))


def read_images(dataset: str, data_dir: str, wanted: dict[str, set[int]]) -> dict[tuple, np.ndarray]:
  """``{(split, position): uint8 image}`` of the examples ``wanted`` names, per split."""
  builder = catalog.prepared_builder(dataset, data_dir)
  out = {}
  for split, positions in wanted.items():
    if not positions:
      continue
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.take(max(positions) + 1).enumerate().filter(
        lambda i, _: tf.reduce_any(tf.equal(i, tf.constant(sorted(positions), tf.int64))))
    for i, example in ds.as_numpy_iterator():
      out[(split, int(i))] = tf.io.decode_image(example["image"], channels=3,
                                                expand_animations=False).numpy()
  return out
