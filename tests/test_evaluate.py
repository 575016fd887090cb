"""agejax.evaluate on a checkpoint of the tiny config, against numpy and the network itself."""

import glob
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from agejax.evaluation import age_metrics
from agejax.evaluation import evaluate_run
from agejax.data import input_pipeline
from agejax.workdir import metric_io
from agejax.workdir import restore
from agejax.errors import ConfigError
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16
N_VALIDATION = 64  # synthetic_faces/tiny
# 64 examples in batches of 24: the last batch carries 8 padding rows.
BATCH = 24
FIGURES = ("pred_vs_true", "mae_by_age", "cs", "error_hist", "card_bands", "card_challenge")


@pytest.fixture(scope="module")
def data_dir(tiny_data_dir):
  return tiny_data_dir


@pytest.fixture(scope="module")
def workdir(varied_run):
  """conftest's varied run: faces get different ages, so flipping changes them."""
  return varied_run


@pytest.fixture(scope="module")
def plain(workdir):
  """The latest checkpoint on the run's validation split, no TTA."""
  return evaluate_run.evaluate_run(workdir, "latest", batch_size=BATCH)


def _stem(workdir, tag):
  return os.path.join(workdir, "eval", tag)


@pytest.fixture(scope="module")
def direct(workdir):
  """Validation ages from the network applied by hand, one batch, no mesh: {flip: ages}."""
  trained = restore.load_trained(workdir, "latest")
  cfg = trained.config
  batch = next(input_pipeline.create_split(
      cfg.data, cfg.model, "validation", train=False,
      batch_size=N_VALIDATION).as_numpy_iterator())
  model = trained.module()
  ages = jax.jit(lambda images: model.head.predict(model(images, train=False))[0])
  # NHWC: axis 2 is the width, so this is the mirror image.
  return {flip: np.asarray(ages(jnp.asarray(batch["image"][:, :, ::-1] if flip
                                            else batch["image"])))
          for flip in (False, True)}


def test_every_metric_matches_numpy_on_the_saved_predictions(workdir, plain, data_dir):
  assert list(plain) == ["synthetic_faces/tiny:validation"]
  record = plain["synthetic_faces/tiny:validation"]
  with open(_stem(workdir, "synthetic_faces_tiny_validation_16.json")) as f:
    saved = json.load(f)
  assert saved == record
  assert (saved["checkpoint_step"], saved["tta"], saved["label"], saved["label_std"]) == (
      STEPS, "none", "age", "")
  rows = np.load(_stem(workdir, "synthetic_faces_tiny_validation_16_predictions.npz"))
  assert sorted(rows.files) == ["index", "loss", "pred", "spread", "std", "true"]
  np.testing.assert_array_equal(rows["index"], np.arange(N_VALIDATION))
  pred, true = rows["pred"].astype(np.float64), rows["true"].astype(np.float64)

  # Every example once, in stored order, padding rows dropped.
  builder = tfds.builder("synthetic_faces/tiny", data_dir=data_dir)
  labels = [int(e["age"]) for e in builder.as_dataset(split="validation",
                                                      shuffle_files=False)]
  assert saved["n"] == pred.size == N_VALIDATION
  np.testing.assert_array_equal(true, labels)

  errors = pred - true
  assert saved["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-12)
  assert saved["rmse"] == pytest.approx(np.sqrt(np.square(errors).mean()), rel=1e-12)
  assert saved["mean_error"] == pytest.approx(errors.mean(), rel=1e-12)
  assert saved["cs"] == [np.mean(np.abs(errors) <= k) for k in range(11)]
  assert saved["cs5"] == saved["cs"][5]
  decades = np.minimum(true // 10 * 10, 100)
  assert saved["mae_by_decade"] == pytest.approx({
      (f"{d:.0f}-{d + 9:.0f}" if d < 100 else "100+"): np.abs(errors[decades == d]).mean()
      for d in np.unique(decades)}, rel=1e-12)
  assert sum(saved["n_by_decade"].values()) == N_VALIDATION
  assert "epsilon_error" not in saved  # synthetic faces have no apparent-age std

  # The trainer's own validation pass over the same checkpoint agrees.
  logged = [r for r in metric_io.read_metrics(workdir)
            if r["split"] == "validation" and r["step"] == STEPS][-1]
  assert saved["mae"] == pytest.approx(logged["mae"], rel=1e-5)
  assert saved["rmse"] == pytest.approx(logged["rmse"], rel=1e-5)
  assert logged["count"] == N_VALIDATION


def test_predictions_are_the_networks(workdir, plain, direct):
  del plain
  rows = np.load(_stem(workdir, "synthetic_faces_tiny_validation_16_predictions.npz"))
  np.testing.assert_allclose(rows["pred"], direct[False], atol=1e-4)
  assert np.ptp(rows["pred"]) > 0.5  # a model that tells faces apart, or TTA tests nothing


def test_figures_are_png_files_and_tensorboard_images(workdir, plain):
  del plain
  for name in FIGURES:
    path = _stem(workdir, f"synthetic_faces_tiny_validation_16_{name}.png")
    assert os.path.getsize(path) > 1024, path
    with Image.open(path) as image:
      assert image.format == "PNG"
      pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2, path  # not a blank canvas

  # One event directory per evaluated split, eval/<dataset_split>/, as training's.
  tag = "synthetic_faces_tiny_validation"
  tags = set()
  for events in glob.glob(os.path.join(workdir, "eval", tag, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(events):
      tags.update(v.tag for v in event.summary.value)
  assert set(FIGURES) <= tags
  assert {"mae", "rmse", "cs5", "n"} <= tags
  records = metric_io.read_metrics(os.path.join(workdir, "eval"))
  assert any(r["split"] == tag and r["step"] == STEPS and r["n"] == N_VALIDATION
             for r in records)


def test_flip_tta_averages_image_and_mirror_and_is_recorded(workdir, plain, direct):
  del plain
  # label_std="age" is not an apparent-age std; it only sends a std column
  # through the pipeline so the epsilon-error path runs end to end.
  record = evaluate_run.evaluate_run(workdir, "latest", tta=True, batch_size=BATCH,
                                 label_std="age")["synthetic_faces/tiny:validation"]
  assert record["tta"] == "flip" and record["label_std"] == "age"
  with open(_stem(workdir, "synthetic_faces_tiny_validation_flip_16.json")) as f:
    assert json.load(f) == record
  flipped = np.load(_stem(workdir, "synthetic_faces_tiny_validation_flip_16_predictions.npz"))
  plain_rows = np.load(_stem(workdir, "synthetic_faces_tiny_validation_16_predictions.npz"))
  assert np.abs(flipped["pred"] - plain_rows["pred"]).max() > 1e-3
  np.testing.assert_allclose(flipped["pred"], 0.5 * (direct[False] + direct[True]), atol=1e-4)

  pred, mu = flipped["pred"].astype(np.float64), flipped["true"].astype(np.float64)
  np.testing.assert_array_equal(flipped["std"], flipped["true"])
  used = mu > 0  # age 0 gives sigma 0: no defined error
  z = (pred[used] - mu[used]) / mu[used]
  assert record["epsilon_n"] == used.sum()
  assert record["epsilon_error"] == pytest.approx(np.mean(1 - np.exp(-z * z / 2)), rel=1e-12)
  assert record["mae"] == pytest.approx(age_metrics.mae(pred, mu), rel=1e-12)


def test_dataset_specs_and_file_tags():
  assert evaluate_run.parse_dataset("appa_real:test", "validation") == ("appa_real", "test")
  assert evaluate_run.parse_dataset("imdb_wiki/clean:test", "x") == ("imdb_wiki/clean", "test")
  assert evaluate_run.parse_dataset("imdb_wiki/clean:1.0.0:test", "x") == (
      "imdb_wiki/clean:1.0.0", "test")
  assert evaluate_run.parse_dataset("appa_real:test[:50%]", "x") == ("appa_real", "test[:50%]")
  assert evaluate_run.parse_dataset("appa_real", "validation") == ("appa_real", "validation")
  with pytest.raises(ConfigError, match="--dataset: ':test' is not NAME"):
    evaluate_run.parse_dataset(":test", "x")
  assert evaluate_run.file_tag("imdb_wiki/clean", "test[:50%]", True) == (
      "imdb_wiki_clean_test__50___flip")


def test_labels_follow_the_run_on_its_dataset_and_the_dataset_elsewhere():
  run = tiny.get_config().data
  run.dataset, run.label, run.label_std = "imdb_wiki/clean", "age", ""
  appa = ["image", "apparent_age", "apparent_age_std", "real_age", "age", "file_name"]
  resolve = evaluate_run.resolve_labels
  assert resolve(run, "appa_real", appa, "apparent_age") == ("apparent_age", "apparent_age_std")
  assert resolve(run, "appa_real", appa, "apparent_age", label="age") == ("age", "")
  assert resolve(run, "appa_real", appa, "apparent_age", label_std="") == ("apparent_age", "")
  assert resolve(run, "imdb_wiki/clean", ["image", "age"], "age") == ("age", "")
  run.dataset, run.label, run.label_std = "appa_real", "apparent_age", "apparent_age_std"
  assert resolve(run, "appa_real", appa, "apparent_age") == ("apparent_age", "apparent_age_std")
  assert resolve(run, "appa_real", appa, "apparent_age", label="real_age") == ("real_age", "")
  with pytest.raises(ConfigError, match="--label_std: appa_real has no feature 'sd'"):
    resolve(run, "appa_real", appa, "apparent_age", label_std="sd")


def test_unknown_checkpoint_or_split_is_a_one_line_error(workdir):
  with pytest.raises(ConfigError, match=r"--checkpoint: checkpoint '7': use best, latest"):
    evaluate_run.evaluate_run(workdir, "7")
  with pytest.raises(ConfigError, match=r"'nope' is not a split of synthetic_faces/tiny"):
    evaluate_run.evaluate_run(workdir, "latest", ["synthetic_faces/tiny:nope"])


def test_command_line(workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "agejax.evaluate", f"--workdir={workdir}", "--checkpoint=8",
       "--dataset=synthetic_faces/tiny:test", "--tta=flip", f"--batch_size={BATCH}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "synthetic_faces/tiny:test" in result.stdout and "MAE" in result.stdout
  with open(_stem(workdir, "synthetic_faces_tiny_test_flip_8.json")) as f:
    record = json.load(f)
  assert (record["checkpoint_step"], record["tta"], record["n"]) == (8, "flip", 64)
  assert math.isfinite(record["mae"])


def _genders(data_dir, split):
  builder = tfds.builder("synthetic_faces/tiny", data_dir=data_dir)
  names = builder.info.features["gender"].names
  return np.asarray([names[int(e["gender"])] for e in builder.as_dataset(
      split=split, shuffle_files=False)])


def _mean(values, where):
  return float(np.mean(values[where]))


def test_the_age_card_of_the_command_is_numpy_on_its_predictions(workdir, data_dir):
  """Every card item against a plain numpy computation on the saved predictions."""
  result = subprocess.run(
      [sys.executable, "-m", "agejax.evaluate", f"--workdir={workdir}", "--checkpoint=16",
       "--dataset=synthetic_faces/tiny:test", f"--batch_size={BATCH}",
       "--bands=0-12,13-17,18-44,45+", "--resamples=300"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(_stem(workdir, "synthetic_faces_tiny_test_16.json")) as f:
    card = json.load(f)["card"]
  rows = np.load(_stem(workdir, "synthetic_faces_tiny_test_16_predictions.npz"))
  pred, true = rows["pred"].astype(np.float64), rows["true"].astype(np.float64)
  spread = rows["spread"].astype(np.float64)
  gender = _genders(data_dir, "test")[rows["index"]]
  errors, years = pred - true, np.floor(true)
  assert card["bootstrap"] == {"resamples": 300, "seed": 0, "level": 0.95, "unit": "example",
                               "units": 64}

  bands = {"0-12": (years <= 12), "13-17": (years >= 13) & (years <= 17),
           "18-44": (years >= 18) & (years <= 44), "45+": years >= 45}
  shown = [b for b in bands if bands[b].any()]
  assert [b["band"] for b in card["bands"]] == shown
  for row in card["bands"]:
    where = bands[row["band"]]
    assert row["n"] == where.sum()
    assert row["mae"] == pytest.approx(_mean(np.abs(errors), where), rel=1e-12)
    assert row["bias"] == pytest.approx(_mean(errors, where), rel=1e-12)
    assert row["mae_ci"][0] <= row["mae"] <= row["mae_ci"][1]

  cells = [(years == a) & (gender == g) for a in range(18, 31) for g in ("female", "male")]
  cells = [c for c in cells if c.any()]
  assert card["mae_18_30"]["cells"] == len(cells) and card["mae_18_30"]["by"] == "sex x age"
  assert card["mae_18_30"]["value"] == pytest.approx(
      np.mean([_mean(np.abs(errors), c) for c in cells]), rel=1e-12)

  for row, (a, c) in zip(card["challenge"], ((18, 21), (18, 25), (18, 30))):
    assert (row["protected"], row["challenge"]) == (a, c)
    assert row["fpr"] == pytest.approx(np.mean(pred[true < a] >= c), rel=1e-12)
    assert row["n_minors"] == np.sum(true < a)
    assert row["adult_pass_rate"] == pytest.approx(np.mean(pred[true >= c] >= c), rel=1e-12)
  curve = card["challenge_curve"]["18"]
  assert curve["challenge"] == list(range(18, 39))
  assert curve["fpr"][7] == pytest.approx(np.mean(pred[true < 18] >= 25), rel=1e-12)

  inside = (pred >= 13) & (pred < 17)
  member = card["band_membership"]
  for where, got in (((years >= 13) & (years <= 16), member.get("tpr")),
                     ((years >= 8) & (years <= 12), member.get("below", {}).get("fpr")),
                     ((years >= 17) & (years <= 22), member.get("above", {}).get("fpr"))):
    if where.any():
      assert got == pytest.approx(np.mean(inside[where]), rel=1e-12)

  groups = card["groups"]["gender"]
  maes = {g: _mean(np.abs(errors), gender == g) for g in ("female", "male")}
  assert groups["groups"]["female"]["mae"] == pytest.approx(maes["female"], rel=1e-12)
  assert groups["groups"]["male"]["n"] == np.sum(gender == "male")
  assert groups["differential"] == pytest.approx(max(maes.values()) / min(maes.values()),
                                                 rel=1e-12)
  assert card["spread"]["within_1"] == pytest.approx(np.mean(np.abs(errors) <= spread), rel=1e-12)
  assert card["spread"]["within_2"] == pytest.approx(np.mean(np.abs(errors) <= 2 * spread),
                                                     rel=1e-12)
  assert any(n.startswith("face_size:") for n in card["notes"])
  # The console shows the card after the table.
  lines = result.stdout.splitlines()
  assert any(l.startswith("synthetic_faces/tiny:test: age card (95% intervals, 300 resamples")
             for l in lines)
  first = card["bands"][0]
  assert any(l.split()[:3] == [first["band"], str(first["n"]), f"{first['mae']:.2f}"]
             for l in lines)


def test_a_bad_band_is_a_one_line_error(workdir):
  result = subprocess.run(
      [sys.executable, "-m", "agejax.evaluate", f"--workdir={workdir}", "--bands=0-12,x"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "agejax.evaluate: config error: --bands: band 'x' is not LO-HI or LO+ in whole years")
