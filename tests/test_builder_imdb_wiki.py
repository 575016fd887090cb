"""The IMDB-WIKI builder on a generated release in the real format.

The release is written by tests/imdb_wiki_fixture.py (scipy.io.savemat, PIL,
tarfile); every expected number comes from the fixture's own bookkeeping and
the hand-made cases it plants.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import gcs_utils

from agejax.data import face_crop
from data_builders import common
import data_builders.imdb_wiki as imdb_wiki
from data_builders.imdb_wiki import cleaning
from data_builders.imdb_wiki import release
import imdb_wiki_fixture

N_IMDB, N_WIKI, SEED = 32, 14, 0
REPO = pathlib.Path(__file__).resolve().parents[1]
# What the fixture plants (see imdb_wiki_fixture._hand_made).
CLEAN_DROPS = {"age_out_of_range": 2, "bad_box": 1, "bad_dob": 4, "low_score": 1,
               "missing_file": 1, "no_face": 1, "second_face": 1, "too_small": 1,
               "undecodable": 2}
RAW_DROPS = {"age_out_of_range": 2, "bad_box": 1, "bad_dob": 4, "missing_file": 1,
             "no_face": 1, "undecodable": 2}


class _ReleaseTestCase(tfds.testing.DatasetBuilderTestCase):
  """TFDS's own checks on a release written for the class (SPLITS from the fixture)."""

  DATASET_CLASS = imdb_wiki.Builder
  ARCHIVE = False

  @classmethod
  def setUpClass(cls):
    # The release is generated, never committed: TFDS reads it as dummy data.
    cls.EXAMPLE_DIR = tempfile.mkdtemp(prefix="imdb_wiki_release_")
    outcome = imdb_wiki_fixture.write_release(
        cls.EXAMPLE_DIR, N_IMDB, N_WIKI, SEED, archive=cls.ARCHIVE)
    # The fixture's own bookkeeping agrees with the numbers written here.
    assert outcome.kept(cls.BUILDER_CONFIG_NAMES_TO_TEST[0]) == cls.SPLITS
    super().setUpClass()

  @classmethod
  def tearDownClass(cls):
    super().tearDownClass()
    shutil.rmtree(cls.EXAMPLE_DIR, ignore_errors=True)


class CleanFromFoldersTest(_ReleaseTestCase):
  """The extracted-folder form, `clean` config."""

  BUILDER_CONFIG_NAMES_TO_TEST = ["clean"]
  SPLITS = {"train": 18, "validation": 7, "test": 7}


class RawFromTarsTest(_ReleaseTestCase):
  """The original tar form, `raw` config."""

  BUILDER_CONFIG_NAMES_TO_TEST = ["raw"]
  SPLITS = {"train": 19, "validation": 8, "test": 8}
  ARCHIVE = True


del _ReleaseTestCase  # a base, not a test


def _build(builder, manual_dir, **config) -> tuple[dict[str, list[dict]], dict, str]:
  """(examples per split, cleaning report JSON, printed text) of one build."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, **config))
  examples = {split: list(tfds.as_numpy(builder.as_dataset(split=split)))
              for split in builder.info.splits}
  report = json.loads((builder.data_path / imdb_wiki.REPORT_FILE).read_text())
  return examples, report, printed.getvalue()


@pytest.fixture(scope="module")
def tar_release(tmp_path_factory):
  root = tmp_path_factory.mktemp("tars")
  return str(root), imdb_wiki_fixture.write_release(root, N_IMDB, N_WIKI, SEED, archive=True)


class Build(NamedTuple):
  examples: dict[str, list[dict]]
  report: dict
  printed: str
  outcome: imdb_wiki_fixture.Outcome
  data_dir: str


@pytest.fixture(scope="module")
def clean_build(tar_release, tmp_path_factory) -> Build:
  """The `clean` config built by name from the tar form, without Beam."""
  manual_dir, outcome = tar_release
  data_dir = str(tmp_path_factory.mktemp("data"))
  builder = tfds.builder("imdb_wiki/clean", data_dir=data_dir)
  return Build(*_build(builder, manual_dir), outcome, data_dir)


def _by_file(examples: dict[str, list[dict]]) -> dict[str, tuple[str, dict]]:
  return {ex["file_name"].decode(): (split, ex) for split, exs in examples.items() for ex in exs}


def test_datenum_round_trip_and_known_values():
  # MATLAB: datenum(2000, 1, 1) == 730486 and datenum(1, 1, 1) == 367.
  assert cleaning.datenum_to_date(730486.0) == datetime.date(2000, 1, 1)
  assert cleaning.datenum_to_date(367.0) == datetime.date(1, 1, 1)
  for day in (datetime.date(1899, 5, 10), datetime.date(1980, 6, 30), datetime.date(2015, 12, 31)):
    assert cleaning.datenum_to_date(cleaning.date_to_datenum(day)) == day
  assert cleaning.date_to_datenum(datetime.date(1968, 1, 1)) == 718798.0
  for bad in (0.0, float("nan"), float("inf"), -5.0, 730486.5, 366.0, 1e9):
    assert cleaning.datenum_to_date(bad) is None, bad


def test_age_is_years_completed_on_july_first():
  age = cleaning.age_at_photo
  assert age(datetime.date(1980, 6, 30), 2000) == 20
  assert age(datetime.date(1980, 7, 1), 2000) == 19
  assert age(datetime.date(1980, 1, 1), 2000) == 20
  assert age(datetime.date(1980, 12, 31), 2000) == 19
  assert age(datetime.date(2000, 3, 1), 2000) == 0
  assert age(datetime.date(2000, 8, 1), 2000) == -1


def test_fixture_writes_the_release_struct_layout(tar_release):
  manual_dir, _ = tar_release
  part = next(p for p in release.find_parts(pathlib.Path(manual_dir)) if p.source == "imdb")
  assert part.form == "tar"
  mat = scipy.io.loadmat(io.BytesIO(part.location("imdb_crop/imdb.mat").read()))
  struct = mat["imdb"]
  assert struct.shape == (1, 1)
  assert set(struct.dtype.names) == {
      "dob", "photo_taken", "full_path", "gender", "name", "face_location", "face_score",
      "second_face_score", "celeb_names", "celeb_id"}
  assert struct[0, 0]["dob"].shape == (1, N_IMDB)
  assert struct[0, 0]["full_path"].shape == (1, N_IMDB)
  assert struct[0, 0]["face_location"][0, 0].shape == (1, 4)
  assert math.isinf(struct[0, 0]["face_score"][0, 10])  # the no_face case


def test_read_mat_with_one_row():
  out = io.BytesIO()

  def cell(value) -> np.ndarray:  # a 1x1 MATLAB cell
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = value
    return out

  scipy.io.savemat(out, {"wiki": {
      "dob": np.array([[723671.0]]), "photo_taken": np.array([[2009.0]]),
      "full_path": cell("17/10000217_1981-05-05_2009.jpg"), "gender": np.array([[np.nan]]),
      "name": cell(np.array([], dtype="<U1")), "face_location": cell(np.array([[1.0, 2, 30, 40]])),
      "face_score": np.array([[4.5]]), "second_face_score": np.array([[np.nan]])}})
  (row,) = release.read_mat(out.getvalue(), "wiki")
  assert row.file_name == "wiki_crop/17/10000217_1981-05-05_2009.jpg"
  assert row.name == "" and row.celeb_id == -1
  assert row.face_location == (1.0, 2.0, 30.0, 40.0)
  assert cleaning.datenum_to_date(row.dob) == datetime.date(1981, 5, 5)
  assert cleaning.identity_of(row) == "wiki:10000217"
  assert cleaning.gender_of(row.gender) == "unknown"


def test_report_counts_every_reason_once(clean_build):
  examples, report, printed, outcome, _ = clean_build
  assert report["dropped_per_reason"] == CLEAN_DROPS
  assert report["kept_per_split"] == {"test": 7, "train": 18, "validation": 7}
  assert report == outcome.report("clean")
  assert report["total"] == N_IMDB + N_WIKI
  assert {s: len(e) for s, e in examples.items()} == outcome.kept("clean")
  assert "dropped, undecodable: 2" in printed
  assert f"kept: {report['kept']}" in printed


def test_report_is_in_the_dataset_info(clean_build):
  reloaded = tfds.builder("imdb_wiki/clean", data_dir=clean_build.data_dir)
  assert reloaded.info.metadata["cleaning_report"] == clean_build.report


def test_examples_match_the_release(clean_build):
  examples, _, _, outcome, _ = clean_build
  by_file = _by_file(examples)
  expected = {r.file_name: r for r in outcome.rows if r.fate["clean"] in common.SPLITS}
  assert set(by_file) == set(expected)
  genders = ("female", "male", "unknown")
  for file_name, (split, ex) in by_file.items():
    row = expected[file_name]
    assert split == row.fate["clean"]
    assert ex["age"] == row.age
    assert genders[ex["gender"]] == row.gender
    assert ex["identity"].decode() == row.identity
    assert ("imdb", "wiki")[ex["source"]] == row.source
    # The photo's face box, not the reduced decode's: the shorter side, rounded.
    x1, y1, x2, y2 = row.box
    assert ex["face_size"] == round(min(x2 - x1, y2 - y1))
  assert by_file[outcome.row("june_30").file_name][1]["age"] == 20
  assert by_file[outcome.row("july_1").file_name][1]["age"] == 19
  assert by_file[outcome.row("unknown_gender").file_name][1]["gender"] == 2
  # Rows without a name fall back to the release's ids.
  assert by_file[outcome.row("no_name", "wiki").file_name][1]["identity"] == b"wiki:1003"
  assert by_file[outcome.row("no_name", "imdb").file_name][1]["identity"] == \
      b"imdb:celeb_id:906"


def test_splits_are_person_disjoint(clean_build):
  examples, _, _, outcome, _ = clean_build
  identities = {s: {ex["identity"] for ex in exs} for s, exs in examples.items()}
  assert not identities["train"] & identities["validation"]
  assert not identities["train"] & identities["test"]
  assert not identities["validation"] & identities["test"]
  # The same person, spelt "José  Ferrer" in IMDB and "jose ferrer" in Wikipedia.
  shared = {outcome.row("shared_person", src).file_name for src in ("imdb", "wiki")}
  by_file = _by_file(examples)
  assert {by_file[f][0] for f in shared} == {common.split_of("jose ferrer")}
  assert {by_file[f][1]["identity"] for f in shared} == {b"jose ferrer"}


def test_images_are_rgb_at_the_stored_size(clean_build):
  examples, _, _, outcome, _ = clean_build
  by_file = _by_file(examples)
  for _, ex in by_file.values():
    assert ex["image"].shape == (256, 256, 3) and ex["image"].dtype == np.uint8
  gray = by_file[outcome.row("grayscale").file_name][1]["image"].astype(int)
  assert np.abs(gray[..., 0] - gray[..., 1]).max() == 0
  assert np.abs(gray[..., 0] - gray[..., 2]).max() == 0
  cmyk = by_file[outcome.row("cmyk").file_name][1]["image"].astype(int)
  assert np.abs(cmyk[..., 0] - cmyk[..., 2]).max() > 10  # colour survived


def test_beam_build_equals_local_build(clean_build, tar_release, tmp_path):
  local_examples, local_report = clean_build.examples, clean_build.report
  builder = tfds.builder("imdb_wiki/clean", data_dir=str(tmp_path))
  options = beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])
  examples, report, printed = _build(builder, tar_release[0], beam_options=options)
  assert report == local_report
  assert "dropped, bad_dob: 4" in printed
  local, beamed = _by_file(local_examples), _by_file(examples)
  assert set(beamed) == set(local)
  for file_name, (split, ex) in beamed.items():
    local_split, local_ex = local[file_name]
    assert split == local_split
    for key in ("age", "gender", "identity", "source", "face_score"):
      assert ex[key] == local_ex[key], key
    np.testing.assert_array_equal(ex["image"], local_ex["image"])


def test_a_user_config_changes_size_margin_and_thresholds(tar_release, tmp_path):
  manual_dir, outcome = tar_release
  config = imdb_wiki.ImdbWikiConfig(name="tight48", image_size=48, margin=0.0,
                                    max_second_face_score=math.inf)
  builder = imdb_wiki.Builder(config=config, data_dir=str(tmp_path))
  examples, report, _ = _build(builder, manual_dir)
  assert report["dropped_per_reason"] == {
      k: v for k, v in CLEAN_DROPS.items() if k != "second_face"}
  assert report["kept"] == outcome.report("clean")["kept"] + 1
  # The stored image is agejax.data.face_crop's crop of the source (up to JPEG loss).
  row = outcome.row("second_face")
  part = next(p for p in release.find_parts(pathlib.Path(manual_dir)) if p.source == "imdb")
  box = next(r.face_location for r in part.rows() if r.file_name == row.file_name)
  source = face_crop.decode_rgb(part.location(row.file_name).read())
  expected = face_crop.crop_face(source, box, margin=0.0, size=48).astype(int)
  stored = _by_file(examples)[row.file_name][1]["image"]
  assert stored.shape == (48, 48, 3)
  assert np.abs(stored.astype(int) - expected).mean() < 2.0


def test_gcs_is_disabled():
  assert gcs_utils._is_gcs_disabled is True  # pylint: disable=protected-access
  assert gcs_utils.is_dataset_on_gcs("imdb_wiki/clean/1.1.0") is False
  assert gcs_utils.gcs_dataset_info_files("imdb_wiki/clean/1.1.0") is None


def test_configs():
  configs = {c.name: c for c in imdb_wiki.Builder.BUILDER_CONFIGS}
  assert imdb_wiki.Builder.DEFAULT_BUILDER_CONFIG_NAME == "clean"
  clean, raw = configs["clean"], configs["raw"]
  assert (clean.min_face_score, clean.max_second_face_score) == (1.0, -math.inf)
  assert (raw.min_face_score, raw.max_second_face_score) == (-math.inf, math.inf)
  for c in (clean, raw):
    assert (c.margin, c.image_size, c.split_fractions) == (0.4, 256, (0.9, 0.05, 0.05))
    assert (c.min_age, c.max_age) == (0, 100)


def test_missing_release_says_what_to_download(tmp_path):
  builder = tfds.builder("imdb_wiki/clean", data_dir=str(tmp_path / "data"))
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "imdb_meta.tar").write_bytes(b"")  # not the face crops
  with pytest.raises(FileNotFoundError, match="imdb_crop.tar"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))


def _without_network() -> list[str]:
  """A command prefix that cuts the network off, where the machine allows it."""
  if shutil.which("unshare") and subprocess.run(
      ["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0:
    return ["unshare", "-n"]  # a network namespace with nothing in it
  return []


def test_tfds_build_command_without_network(tmp_path):
  manual_dir = tmp_path / "manual"
  outcome = imdb_wiki_fixture.write_release(manual_dir, N_IMDB, N_WIKI, SEED)
  data_dir = tmp_path / "data"
  subprocess.run(
      _without_network() + [
          sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build",
          "data_builders/imdb_wiki", f"--manual_dir={manual_dir}", f"--data_dir={data_dir}",
          "--config=raw"],
      cwd=REPO, check=True, capture_output=True, timeout=300)
  report = json.loads((data_dir / "imdb_wiki/raw/1.1.0" / imdb_wiki.REPORT_FILE).read_text())
  assert report["dropped_per_reason"] == RAW_DROPS
  assert report == outcome.report("raw")
