"""Building IMDB-WIKI with its TFDS builder, on a generated release.

The release comes from the test suite's generator (``tests/imdb_wiki_fixture``:
``.mat`` files in the release's layout and JPEG crops), imported by path since
``tests/`` is not a package. Writing the release is not timed; the build
(``download_and_prepare``: reading, cleaning, cropping, re-encoding at 256 px,
writing TFRecords) is, after TFDS and the builders are imported (a one-off
cost that a 523k-image build does not feel).

Reduced decoding (``reduced_decode``, on by default) changes pixels, so the
benchmark measures by how much: the PSNR of every stored crop against a
build with full decoding (by file name; ``None`` when identical, as on a
release whose photos are too small to be reduced), and of crops at 64 and
128 px of the scikit-image photos, where 1/2..1/8 decoding does happen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

from agejax.benchmark import common

COLUMNS = ("images_per_sec", "seconds", "kept", "psnr_release_db", "psnr_photos_min_db")
# tests/imdb_wiki_fixture.py writes at least this many hand-made rows per part.
_MIN_IMDB, _MIN_WIKI = 20, 5
_FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "imdb_wiki_fixture.py"


@dataclasses.dataclass(frozen=True)
class BuildSettings:
  images: int = 1000  # rows of the release (imdb + wiki)
  min_side: int = 300  # source crops are min_side..max_side pixels a side
  max_side: int = 500
  config: str = "clean"
  seed: int = 0


def _fixture() -> Any:
  """tests/imdb_wiki_fixture.py as a module (it is not importable as a package)."""
  if not _FIXTURE.exists():
    raise FileNotFoundError(f"{_FIXTURE} not found: the build benchmark needs the "
                            "repository's tests/ directory")
  if "imdb_wiki_fixture" in sys.modules:  # e.g. the tests imported it already
    return sys.modules["imdb_wiki_fixture"]
  spec = importlib.util.spec_from_file_location("imdb_wiki_fixture", _FIXTURE)
  module = importlib.util.module_from_spec(spec)
  # Its dataclasses look their module up in sys.modules while being defined.
  sys.modules["imdb_wiki_fixture"] = module
  spec.loader.exec_module(module)
  return module


def write_release(manual_dir: str, s: BuildSettings) -> int:
  """Writes a release of about ``s.images`` rows; returns the rows written."""
  n_wiki = max(_MIN_WIKI, s.images // 5)
  n_imdb = max(_MIN_IMDB, s.images - n_wiki)
  _fixture().write_release(manual_dir, n_imdb, n_wiki, s.seed,
                           image_sizes=(s.min_side, s.max_side))
  return n_imdb + n_wiki


def _tfds() -> Any:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from agejax.data import catalog  # pylint: disable=import-outside-toplevel
  catalog.register_builders()
  return tfds


def build(manual_dir: str, data_dir: str, config: str, reduced_decode: bool = True) -> Any:
  """Prepares ``imdb_wiki/<config>`` from ``manual_dir`` into ``data_dir``."""
  tfds = _tfds()
  if reduced_decode:
    builder = tfds.builder(f"imdb_wiki/{config}", data_dir=data_dir)
  else:
    from data_builders.imdb_wiki import imdb_wiki_dataset_builder as imdb_wiki  # pylint: disable=import-outside-toplevel
    named = next(c for c in imdb_wiki.Builder.BUILDER_CONFIGS if c.name == config)
    builder = tfds.builder("imdb_wiki", data_dir=data_dir, config=dataclasses.replace(
        named, name=f"{config}_full_decode", reduced_decode=False))
  # The builder prints its cleaning report; stdout may be carrying JSON lines.
  with contextlib.redirect_stdout(sys.stderr):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))
  return builder


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
  """Peak signal-to-noise ratio of two uint8 images in dB; None when identical."""
  mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
  return None if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _stored_crops(builder: Any) -> dict[str, np.ndarray]:
  """file_name -> decoded stored crop, over every split."""
  tfds = _tfds()
  crops = {}
  for split in builder.info.splits:
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      crops[example["file_name"].decode()] = example["image"]
  return crops


def release_psnr(reduced: Any, full: Any) -> float | None:
  """PSNR over all stored crops of two builds of one release (one MSE)."""
  a, b = _stored_crops(reduced), _stored_crops(full)
  if set(a) != set(b):
    raise RuntimeError("the two builds kept different examples")
  keys = sorted(a)
  return psnr(np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys]))


def photos_psnr(sizes: tuple[int, ...] = (64, 128)) -> float | None:
  """The lowest PSNR of reduced-decode crops of the scikit-image photos (quality 95)."""
  from skimage import data as photos  # pylint: disable=import-outside-toplevel
  from agejax.data import face_crop  # pylint: disable=import-outside-toplevel

  values = []
  for name in ("astronaut", "coffee", "chelsea", "rocket"):
    data = face_crop.encode_jpeg(getattr(photos, name)(), quality=95)
    for size in sizes:
      full = face_crop.crop(face_crop.decode(data), None, size=size)
      image, box, _ = face_crop.decode_for_crop(data, None, size=size)
      values.append(psnr(np.asarray(face_crop.crop(image, box, size=size)), np.asarray(full)))
  finite = [v for v in values if v is not None]
  return min(finite) if finite else None


def run(s: BuildSettings) -> list[dict[str, Any]]:
  """Times one build of a fresh release, then measures its PSNR; one result."""
  root = tempfile.mkdtemp(prefix="agejax_bench_build_")
  _tfds()  # imported before the clock starts
  try:
    manual_dir, data_dir = os.path.join(root, "manual"), os.path.join(root, "data")
    rows = write_release(manual_dir, s)
    start = time.perf_counter()
    builder = build(manual_dir, data_dir, s.config)
    seconds = time.perf_counter() - start
    kept = sum(split.num_examples for split in builder.info.splits.values())
    full = build(manual_dir, os.path.join(root, "full"), s.config, reduced_decode=False)
    psnr_release = release_psnr(builder, full)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  results = {"images_per_sec": rows / seconds, "seconds": seconds, "release_images": rows,
             "kept": kept, "workers": common.cpu_count(), "psnr_release_db": psnr_release,
             "psnr_photos_min_db": photos_psnr()}
  return [common.record("build", dataclasses.asdict(s), results)]
