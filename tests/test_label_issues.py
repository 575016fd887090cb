"""Label issues: scores in closed form, which model predicts which split, the warnings."""

import math
import os

import numpy as np
import pytest

from agejax.auditing import label_issues
from agejax.errors import UsageError


def test_the_score_is_the_distance_in_spreads_or_in_years():
  labels = np.array([30.0, 30.0, 30.0, 80.0])
  ages = np.array([40.0, 31.0, np.nan, 20.0])
  spreads = np.array([5.0, 0.1, np.nan, 20.0])
  score, method = label_issues.scores(labels, ages, spreads)
  assert method == "normalized"
  # 10 / 5; 1 / max(0.1, 0.5); no prediction; 60 / 20.
  np.testing.assert_allclose(score, [2.0, 2.0, np.nan, 3.0])
  score, method = label_issues.scores(labels, ages, np.zeros(4))
  assert method == "absolute"
  np.testing.assert_allclose(score, [10.0, 1.0, np.nan, 60.0])


class _Scan:
  def __init__(self, labels, ages, spreads):
    n = len(labels)
    self.labels, self.ages, self.spreads = (np.asarray(v, np.float64) for v in
                                            (labels, ages, spreads))
    self.keys = np.asarray([f"k{i}" for i in range(n)], dtype=object)
    self.splits = np.asarray(["train"] * n, dtype=object)


def test_the_ranking_lists_the_share_furthest_first_and_counts_those_over_the_threshold():
  rng = np.random.default_rng(0)
  n = 250
  ages = rng.uniform(0, 100, n)
  spreads = rng.uniform(2, 8, n)
  labels = ages + rng.normal(0, 1, n) * spreads
  labels[[7, 99, 200]] = ages[[7, 99, 200]] + np.array([-9.0, 7.0, 5.0]) * spreads[[7, 99, 200]]
  doc, score = label_issues.rank(_Scan(labels, ages, spreads), 0.01, 3.0, 15.0, "a model")
  assert len(doc["top"]) == math.ceil(0.01 * n) == 3
  assert [row["key"] for row in doc["top"]] == ["k7", "k99", "k200"]
  assert doc["top"][0]["score"] == pytest.approx(9.0, abs=1e-3)
  assert doc["over_threshold"] == int(np.sum(score > 3.0))
  assert (doc["method"], doc["unit"], doc["threshold"], doc["predicted"]) == (
      "normalized", "spreads", 3.0, n)
  doc, _ = label_issues.rank(_Scan(labels, ages, np.zeros(n)), 0.01, 3.0, 15.0, "a model")
  assert (doc["unit"], doc["threshold"]) == ("years", 15.0)


def _fake_run(directory, dataset, protocol_split):
  """A run's config.json as agejax.protocol leaves it (its folders resolved)."""
  from agejax.config import defaults
  from agejax.data import folders
  from agejax.workdir import run_config

  cfg = defaults.default_config()
  cfg.data.dataset = dataset
  splits = folders.split_strings(protocol_split, range(10))
  cfg.data.train_split, cfg.data.eval_split, cfg.data.test_split = (
      splits["train"], splits["validation"], splits["test"])
  os.makedirs(directory, exist_ok=True)
  run_config.save(cfg, directory)
  return directory


FOLDERS = [f"folder{k}" for k in range(10)]


def test_each_folder_is_predicted_by_a_protocol_run_that_never_trained_on_it(tmp_path):
  runs = [_fake_run(str(tmp_path / f"split_{k}"), "age_csv/x", k) for k in range(5)]
  models = label_issues.protocol_models(str(tmp_path), "age_csv/x:1.1.0", FOLDERS)
  # The benchmark's test folders: 8,9 | 0,1 | 2,3 | 3,4 | 4,5; 6 and 7 only
  # split 0 holds out (as validation).
  assert models.by_split == {
      "folder0": runs[1], "folder1": runs[1], "folder2": runs[2], "folder3": runs[2],
      "folder4": runs[3], "folder5": runs[4], "folder6": runs[0], "folder7": runs[0],
      "folder8": runs[0], "folder9": runs[0]}
  assert [n.split(":")[0] for n in models.notes] == ["folder6", "folder7"]
  assert "chose its checkpoint on it" in models.notes[0]


def test_protocol_runs_that_leave_a_folder_without_a_held_out_model_are_refused(tmp_path):
  for k in (1, 2):  # both train on folders 4-7
    _fake_run(str(tmp_path / f"split_{k}"), "age_csv/x", k)
  with pytest.raises(UsageError, match=r"every run there trained on folder4, folder5, "
                                       r"folder6, folder7 of age_csv/x"):
    label_issues.protocol_models(str(tmp_path), "age_csv/x", FOLDERS)
  with pytest.raises(UsageError, match=r"split_1 trained on age_csv/x, not age_csv/y"):
    label_issues.protocol_models(str(tmp_path), "age_csv/y", FOLDERS)
  with pytest.raises(UsageError, match=r"no run"):
    label_issues.protocol_models(str(tmp_path / "empty"), "age_csv/x", FOLDERS)


def test_one_model_warns_about_the_splits_it_trained_on(tmp_path):
  run = _fake_run(str(tmp_path / "run"), "age_csv/x", 0)
  models = label_issues.single_model(run, "--workdir", "age_csv/x", FOLDERS)
  assert set(models.by_split.values()) == {run}
  assert len(models.notes) == 1 and models.notes[0].startswith("warning: --workdir=")
  assert ("trained on age_csv/x's folder0, folder1, folder2, folder3, folder4, folder5:"
          in models.notes[0])
  other = label_issues.single_model(run, "--workdir", "age_csv/y", FOLDERS)
  assert other.notes == ()
  # An export whose run is not at hand: trained on the dataset, splits unknown.
  from agejax import json_files
  export = tmp_path / "export"
  export.mkdir()
  meta = {"format": "agejax-model", "image_size": 32, "preprocessing": "imagenet",
          "head": "dex", "min_age": 0, "max_age": 100,
          "crop": {"margin": 0.4, "stored_size": 32, "source": "test"}}
  json_files.write_json(str(export / "model.json"), {
      **meta, "source": {"workdir": str(tmp_path / "gone"), "dataset": "age_csv/x"}})
  models = label_issues.single_model(str(export), "--model", "age_csv/x", FOLDERS)
  assert "its run is not at hand" in models.notes[0]
  # An export whose run is at hand: its splits.
  json_files.write_json(str(export / "model.json"), {
      **meta, "source": {"workdir": run, "dataset": "age_csv/x"}})
  models = label_issues.single_model(str(export), "--model", "age_csv/x", ["folder8", "folder9"])
  assert models.notes == ()
