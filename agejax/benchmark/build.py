"""Building IMDB-WIKI with its TFDS builder, on a generated release.

The release comes from the test suite's generator (``tests/imdb_wiki_fixture``:
``.mat`` files in the release's layout and JPEG crops), imported by path since
``tests/`` is not a package. Writing the release is not timed; the build
(``download_and_prepare``: reading, cleaning, cropping, re-encoding at 256 px,
writing TFRecords) is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

from agejax.benchmark import common

COLUMNS = ("images_per_sec", "seconds", "kept")
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


def build(manual_dir: str, data_dir: str, config: str) -> Any:
  """Prepares ``imdb_wiki/<config>`` from ``manual_dir`` into ``data_dir``."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from agejax.data import catalog as datasets  # pylint: disable=import-outside-toplevel
  datasets.register_builders()
  builder = tfds.builder(f"imdb_wiki/{config}", data_dir=data_dir)
  # The builder prints its cleaning report; stdout may be carrying JSON lines.
  with contextlib.redirect_stdout(sys.stderr):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))
  return builder


def run(s: BuildSettings) -> list[dict[str, Any]]:
  """Times one build of a fresh release; one result."""
  root = tempfile.mkdtemp(prefix="agejax_bench_build_")
  try:
    manual_dir, data_dir = os.path.join(root, "manual"), os.path.join(root, "data")
    rows = write_release(manual_dir, s)
    start = time.perf_counter()
    builder = build(manual_dir, data_dir, s.config)
    seconds = time.perf_counter() - start
    kept = sum(split.num_examples for split in builder.info.splits.values())
  finally:
    shutil.rmtree(root, ignore_errors=True)
  results = {"images_per_sec": rows / seconds, "seconds": seconds, "release_images": rows,
             "kept": kept, "workers": common.cpu_count()}
  return [common.record("build", dataclasses.asdict(s), results)]
