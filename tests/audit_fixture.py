"""A face release with planted problems, in age_csv's format (labels.csv + JPEG photos).

Distinct faces (``synthetic_faces`` drawings, one identity each) in the
CSV's own train/validation/test splits, plus, each under a new identity:

* ``reencoded``: a training face re-encoded at JPEG quality 75, in validation;
* ``brighter``: a training face 8% brighter, re-encoded, in validation;
* ``mirrored``: a training face flipped left to right, in test;
* ``relabelled``: a byte-for-byte copy of a training face, in train, with
  its age 7 years off (a conflict: one picture, two ages);
* ``impossible``: a face labelled 150 (age_csv's builder drops it as
  ``bad_age``);
* ``noisy``: 5% of the distinct faces (none a planted copy's source) with
  their age replaced by a random one, uniform over 0-100 at least
  ``NOISE_MIN_YEARS`` from the true age (a real label error, not a
  near-miss).

Built with ``identity_folders=10`` (:data:`FOLDERS_CONFIG`) the same
release becomes ten identity folders, the layout ``agejax.protocol``'s
five splits take: out-of-fold predictions for every face.

``Planted`` records which keys (the CSV paths) each problem involves.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os

import numpy as np
from PIL import Image, ImageEnhance

from data_builders.synthetic_faces import faces

SPLITS = {"train": 300, "validation": 50, "test": 50}
PLANTED = {"reencoded": 8, "brighter": 4, "mirrored": 8, "relabelled": 5}
NOISY_SHARE = 0.05
NOISE_MIN_YEARS = 10
CONFIG = '{"name": "planted", "csv": "labels.csv", "image_size": 64}'
FOLDERS_CONFIG = ('{"name": "planted_folders", "csv": "labels.csv", "image_size": 64, '
                  '"identity_folders": 10}')


@dataclasses.dataclass
class Planted:
  leaks: set  # {(train key, copy key)}
  conflicts: set  # {(train key, copy key)}
  impossible: list  # keys
  noisy: dict  # key -> (true age, label written)
  rows: int


def _save(path: str, image: np.ndarray, quality: int = 95) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, "JPEG", quality=quality)


def _reencoded(image: np.ndarray, quality: int) -> np.ndarray:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "JPEG", quality=quality)
  return np.asarray(Image.open(buffer).convert("RGB"))


def write_release(root: str, seed: int = 0, size: int = 64, scale: int = 1) -> Planted:
  """The release under ``root``; ``scale`` multiplies the distinct faces (not the copies)."""
  rows, index = [], 0
  images = {}
  for split, count in SPLITS.items():
    for _ in range(count * scale):
      image, face = faces.example(seed, "validation", index, size)
      path = f"faces/{index:04d}.jpg"
      _save(os.path.join(root, path), image)
      images[path] = image
      rows.append((path, str(face.age), f"person {index}", split))
      index += 1
  train = [r for r in rows if r[3] == "train"]
  planted = Planted(set(), set(), [], {}, 0)
  source = iter(train)
  for kind, count in PLANTED.items():
    for k in range(count):
      original, age, _, _ = next(source)
      path = f"planted/{kind}_{k}.jpg"
      image = images[original]
      if kind == "reencoded":
        _save(os.path.join(root, path), _reencoded(image, 75), 95)
        rows.append((path, age, f"{kind} {k}", "validation"))
      elif kind == "brighter":
        _save(os.path.join(root, path),
              np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(1.08)))
        rows.append((path, age, f"{kind} {k}", "validation"))
      elif kind == "mirrored":
        _save(os.path.join(root, path), image[:, ::-1])
        rows.append((path, age, f"{kind} {k}", "test"))
      else:  # the same file's bytes, another age
        os.makedirs(os.path.join(root, "planted"), exist_ok=True)
        with open(os.path.join(root, original), "rb") as f, \
            open(os.path.join(root, path), "wb") as g:
          g.write(f.read())
        rows.append((path, str(int(age) + 7), f"{kind} {k}", "train"))
      (planted.conflicts if kind == "relabelled" else planted.leaks).add((original, path))
  _save(os.path.join(root, "planted/impossible.jpg"), images[train[-1][0]][::-1])
  rows.append(("planted/impossible.jpg", "150", "impossible", "train"))
  planted.impossible.append("planted/impossible.jpg")
  sources = {a for pair in planted.leaks | planted.conflicts for a in pair} | {train[-1][0]}
  distinct = [r for r in range(index) if rows[r][0] not in sources]  # the drawn faces
  rng = np.random.default_rng(seed)
  for r in rng.choice(distinct, round(NOISY_SHARE * len(distinct)), replace=False):
    path, age, identity, split = rows[r]
    wrong = [a for a in range(101) if abs(a - int(age)) >= NOISE_MIN_YEARS]
    label = int(rng.choice(wrong))
    rows[r] = (path, str(label), identity, split)
    planted.noisy[path] = (int(age), label)
  with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "age", "identity", "split"])
    writer.writerows(rows)
  planted.rows = len(rows)
  return planted
