"""agejax.protocol on a tiny generated benchmark: two databases, five splits, one table."""

import json
import os
import statistics

import numpy as np
import pytest
import tensorflow_datasets as tfds

import facebase_fixture

from agejax import protocol
from agejax.errors import ConfigError
from agejax.evaluation import evaluate_run
from agejax.tools import protocol_runs
from agejax.train import loop
from agejax.workdir import run_config
from configs import tiny
from data_builders import facebase

PERSONS, IMAGES = 20, 3  # 6 images per folder: 12 test crops in every split


class TinyFacebase(facebase.Builder):
  """The facebase builder at 32 px (the tiny config's input), two databases."""

  # Its metadata (README, citations) is facebase's: a test module is no package.
  pkg_dir_path = facebase.Builder._get_pkg_dir_path()  # pylint: disable=protected-access

  BUILDER_CONFIGS = [facebase.FacebaseConfig(name=name, database_file=f"{file}_aligned.json",
                                             image_size=32)
                     for name, file in (("agedb", "AgeDB"), ("utkface", "UTKFace"))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp("manual"))
  for seed, database in enumerate(("AgeDB", "UTKFace")):
    facebase_fixture.write_release(manual, database, facebase_fixture.entries_for(
        database, persons=PERSONS, images_per_person=IMAGES, seed=seed))
  directory = str(tmp_path_factory.mktemp("tfds"))
  for config in ("agedb", "utkface"):
    TinyFacebase(config=config, data_dir=directory).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return directory


def flags(data_dir, root):
  return ["protocol", "--config=configs/tiny.py", "--benchmark=tiny_facebase/agedb",
          "--cross=tiny_facebase/utkface", f"--workdir_root={root}",
          f"--config.data.data_dir={data_dir}", "--config.train.num_train_steps=8",
          "--config.train.eval_every_steps=4", "--config.train.checkpoint_every_steps=4",
          "--config.train.batch_size=8"]


def test_five_splits_give_the_table_and_a_second_run_redoes_nothing(data_dir, tmp_path,
                                                                   monkeypatch, capsys):
  root = str(tmp_path)
  assert protocol.main(flags(data_dir, root)) == 0
  doc = json.load(open(os.path.join(root, "protocol.json")))
  bench, cross = "tiny_facebase/agedb", "tiny_facebase/utkface"
  assert [r["split"] for r in doc["splits"]] == [0, 1, 2, 3, 4]
  for row in doc["splits"]:
    k = row["split"]
    cfg = run_config.load(os.path.join(root, f"split_{k}"))
    train, val, test = (protocol_runs.folders.PROTOCOL_SPLITS[k])
    assert cfg.data.train_split == "+".join(f"folder{f}" for f in train)
    assert cfg.data.eval_split == "+".join(f"folder{f}" for f in val)
    for dataset in (bench, cross):
      got = row["datasets"][dataset]
      assert got["split"] == "+".join(f"folder{f}" for f in test)
      assert got["n"] == 2 * IMAGES * 2  # two folders of two people of IMAGES crops
      assert 0 <= got["mae"] < 101 and 0 <= got["cs5"] <= 1
  for dataset in (bench, cross):
    maes = [r["datasets"][dataset]["mae"] for r in doc["splits"]]
    assert doc["summary"][dataset]["mae"]["mean"] == pytest.approx(statistics.fmean(maes))
    assert doc["summary"][dataset]["mae"]["std"] == pytest.approx(float(np.std(maes, ddof=1)))
  table = open(os.path.join(root, "protocol.md")).read()
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert rows[0] == (f"| split | {bench} MAE | {bench} CS5 | {cross} MAE |")
  assert [r.split(" | ")[0] for r in rows[1:]] == ["| 0", "| 1", "| 2", "| 3", "| 4",
                                                  "| mean +- std"]
  mean = doc["summary"][bench]["mae"]
  assert f"{mean['mean']:.2f} +- {mean['std']:.2f}" in rows[-1]
  assert table in capsys.readouterr().out

  # Again: every split is finished and evaluated at its best checkpoint, so
  # neither training nor evaluation runs, and the table is the same.
  def refuse(*args, **kwargs):
    raise AssertionError("retrained or re-evaluated a finished split")

  def base_config():
    cfg = tiny.get_config()
    cfg.data.data_dir = data_dir
    cfg.train.num_train_steps, cfg.train.batch_size = 8, 8
    cfg.train.eval_every_steps = cfg.train.checkpoint_every_steps = 4
    return cfg

  monkeypatch.setattr(loop, "train_and_evaluate", refuse)
  monkeypatch.setattr(evaluate_run, "evaluate_run", refuse)
  said = []
  again = protocol_runs.run_protocol(base_config, bench, root, range(5), [cross], log=said.append)
  assert said[6] == f"split 3: trained ({root}/split_3), not retrained"
  assert again == doc == json.load(open(os.path.join(root, "protocol.json")))


def test_database_names_and_split_lists():
  assert protocol_runs.dataset_name("AgeDB") == "facebase/agedb"
  assert protocol_runs.dataset_name("FG-NET") == "facebase/fgnet"
  assert protocol_runs.dataset_name("AFAD") == "facebase/afad"
  assert protocol_runs.dataset_name("IMDB-CLEAN-FP-AGE") == "facebase/imdb_clean_fp_age"
  assert protocol_runs.dataset_name("utkface/default") == "utkface/default"
  with pytest.raises(ConfigError, match="--benchmark"):
    protocol_runs.dataset_name("LFW")
  assert protocol_runs.parse_splits("0-4") == [0, 1, 2, 3, 4]
  assert protocol_runs.parse_splits("3,1") == [1, 3]
  for bad in ("5", "a-b", "2-7"):
    with pytest.raises(ConfigError, match="--splits"):
      protocol_runs.parse_splits(bad)


def test_a_dataset_not_stored_as_folders_is_refused(tiny_data_dir, tmp_path):
  from configs import tiny
  cfg = tiny.get_config()
  cfg.data.data_dir = tiny_data_dir
  cfg.data.protocol_split = 0
  with pytest.raises(ConfigError, match="not stored as folders"):
    loop.train_and_evaluate(cfg, str(tmp_path))


def test_a_run_that_stopped_early_by_its_rule_is_finished_a_preempted_one_is_not():
  assert protocol_runs._ended({"stopped": "completed"})
  assert protocol_runs._ended({"stopped": "early stopping: no improvement in 3 evaluations"})
  for summary in ({"stopped": "preempted"}, {"stopped": "diverged: loss is nan"}, None):
    assert not protocol_runs._ended(summary)
