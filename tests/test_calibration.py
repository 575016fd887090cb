"""Calibrated age intervals: split-conformal fitting, its coverage, export and predict."""

import json
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from agejax import evaluate
from agejax import export
from agejax import predict
from agejax.evaluation import conformal
from agejax.evaluation import intervals

STEPS = 16
N = 64  # synthetic_faces/tiny's validation and test splits
DATASET = "synthetic_faces/tiny"
MIN_AGE, MAX_AGE = 0, 100  # the tiny config's model.min_age / max_age


def test_the_quantile_is_the_ceil_n_plus_1_times_coverage_th_score():
  true = np.zeros(9)
  pred = np.arange(1.0, 10.0)  # absolute errors 1..9
  spread = np.full(9, 2.0)  # scores 0.5 .. 4.5
  interval = conformal.fit(pred, true, spread, 0.8)
  # ceil(10 * 0.8) = 8: the 8th smallest score, 8 / 2.
  assert interval["method"] == "normalized" and interval["quantile"] == 4.0
  assert interval["examples"] == 9 and interval["min_spread"] == intervals.MIN_SPREAD
  # A head without a spread: plain absolute residuals.
  plain = conformal.fit(pred, true, np.zeros(9), 0.8)
  assert plain["method"] == "absolute" and plain["quantile"] == 8.0
  # A spread under min_spread is raised to it: |error| 1 / 0.5 = 2.
  assert conformal.fit([1.0], [0.0], [0.01], 0.4)["quantile"] == 2.0
  with pytest.raises(ValueError, match="9 examples cannot calibrate a 0.95 interval: it "
                                       "needs at least 19"):
    conformal.fit(pred, true, spread, 0.95)


def test_bounds_follow_the_written_formula():
  interval = {"method": "normalized", "quantile": 1.5, "min_spread": 0.5}
  low, high = intervals.bounds([30.0, 2.0, 99.0], [4.0, 0.1, 2.0], interval, 0, 100)
  np.testing.assert_array_equal(low, [24.0, 1.25, 96.0])
  np.testing.assert_array_equal(high, [36.0, 2.75, 100.0])  # clipped at max_age
  low, high = intervals.bounds([30.0], [4.0], {"method": "absolute", "quantile": 3.0}, 0, 100)
  assert (low[0], high[0]) == (27.0, 33.0)
  assert "interval" not in json.dumps(intervals.FORMULAS)  # formulas name only JSON keys


@pytest.fixture(scope="module")
def run(varied_run, tmp_path_factory):
  """A copy of the varied run, calibrated on its validation split (evaluated on test too)."""
  directory = str(tmp_path_factory.mktemp("calibrated") / "run")
  shutil.copytree(varied_run, directory)
  assert evaluate.main(["evaluate", f"--workdir={directory}", f"--checkpoint={STEPS}",
                        f"--dataset={DATASET}:validation", f"--dataset={DATASET}:test",
                        "--calibrate_on=validation", "--resamples=50"]) == 0
  return directory


def _evaluation(run, split):
  stem = os.path.join(run, "eval", f"synthetic_faces_tiny_{split}_{STEPS}")
  with open(f"{stem}.json") as f:
    return json.load(f), np.load(f"{stem}_predictions.npz")


def test_calibration_is_numpy_on_the_predictions_files(run):
  record, rows = _evaluation(run, "validation")
  scores = np.abs(rows["true"] - rows["pred"]) / np.maximum(rows["spread"], 0.5)
  k = math.ceil((N + 1) * 0.9)  # 59
  quantile = np.quantile(scores, k / N, method="inverted_cdf")
  interval = record["calibration"]["interval"]
  assert interval["quantile"] == pytest.approx(quantile, rel=1e-12)
  assert (interval["step"], interval["fitted_on"], interval["tta"]) == (
      STEPS, f"{DATASET}:validation", "none")
  with open(os.path.join(run, intervals.CALIBRATION_FILE)) as f:
    assert json.load(f) == interval
  # In-sample, the share covered is k / n exactly when no two scores tie.
  assert len(np.unique(scores)) == N
  assert record["calibration"]["in_sample"] is True
  assert record["calibration"]["coverage"] == pytest.approx(k / N, abs=1e-12)

  test, rows = _evaluation(run, "test")
  half = quantile * np.maximum(rows["spread"], 0.5)
  low, high = np.clip(rows["pred"] - half, 0, 100), np.clip(rows["pred"] + half, 0, 100)
  covered = (rows["true"] >= low) & (rows["true"] <= high)
  calibration = test["calibration"]
  assert calibration["in_sample"] is False
  assert calibration["coverage"] == pytest.approx(covered.mean(), abs=1e-12)
  assert calibration["mean_width"] == pytest.approx(np.mean(high - low), rel=1e-9)
  band = (rows["true"] >= 25) & (rows["true"] < 35)
  assert {b["band"]: b["coverage"] for b in calibration["bands"]}["25-34"] == pytest.approx(
      covered[band].mean(), abs=1e-12)
  # 64 + 64 examples: the realised coverage of a 90% interval has a sampling
  # std near 5 points here (binomial on 64 test faces plus the calibration
  # quantile's own noise), so a 3-sigma bound of 15 points; the demo run's
  # 512 + 512 examples are in the README.
  assert abs(calibration["coverage"] - 0.9) <= 0.15
  assert os.path.exists(os.path.join(run, "eval", test["figures"]["calibration"]))


def _predicted_faces(model_flags, photo, capsys):
  capsys.readouterr()
  assert predict.main(["predict", *model_flags, "--json", str(photo)]) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[0])["faces"]


def test_predict_prints_the_interval_from_a_bundle_a_saved_model_and_the_run(
    run, tmp_path, capsys):
  for name, fmt in (("bundle", "bundle"), ("sm", "saved_model")):
    assert export.main(["export", f"--workdir={run}", f"--output={tmp_path / name}",
                        f"--checkpoint={STEPS}", f"--format={fmt}"]) == 0
    with open(tmp_path / name / "model.json") as f:
      assert json.load(f)["interval"] == json.load(open(os.path.join(run, "calibration.json")))
  assert "90% interval: age -+ " in capsys.readouterr().out
  photo = tmp_path / "astronaut.jpg"
  Image.fromarray(skdata.astronaut()).save(photo, quality=95)
  faces = {name: _predicted_faces(flags, photo, capsys) for name, flags in (
      ("bundle", ["--model", str(tmp_path / "bundle")]),
      ("sm", ["--model", str(tmp_path / "sm")]),
      ("run", ["--workdir", run, f"--checkpoint={STEPS}"]))}
  assert len(faces["bundle"]) >= 1
  quantile = json.load(open(os.path.join(run, "calibration.json")))["quantile"]
  for face in faces["bundle"]:
    half = quantile * max(face["spread"], 0.5)
    np.testing.assert_allclose(face["interval"], [max(face["age"] - half, 0),
                                                  min(face["age"] + half, 100)], atol=1e-9)
    assert face["coverage"] == 0.9
  for other in ("sm", "run"):
    np.testing.assert_allclose([f["interval"] for f in faces[other]],
                               [f["interval"] for f in faces["bundle"]], rtol=0, atol=1e-4)
  # The plain-text line ends with the interval.
  assert predict.main(["predict", "--model", str(tmp_path / "bundle"), str(photo)]) == 0
  first = capsys.readouterr().out.splitlines()[0]
  low, high = faces["bundle"][0]["interval"]
  assert first.endswith(f", {low:.1f}-{high:.1f} (90%)")


def test_another_checkpoint_is_exported_without_the_interval_and_says_why(run, tmp_path,
                                                                          capsys):
  assert export.main(["export", f"--workdir={run}", f"--output={tmp_path / 'b8'}",
                      "--checkpoint=8"]) == 0
  assert "interval" not in json.load(open(tmp_path / "b8" / "model.json"))
  assert (f"no calibrated interval: {run}/calibration.json was fitted on step 16 with tta "
          f"none, the model is step 8 with tta none") in capsys.readouterr().out


@pytest.mark.parametrize("flags,line", [
    (["--coverage=1.5"], "--coverage: must lie in (0, 1), got 1.5"),
    (["--coverage=0.99"], "--calibrate_on: 64 examples cannot calibrate a 0.99 interval"),
])
def test_bad_calibration_flags_are_one_line_errors(varied_run, flags, line, capsys):
  assert evaluate.main(["evaluate", f"--workdir={varied_run}", "--calibrate_on=validation",
                        *flags]) == 2
  err = capsys.readouterr().err
  assert line in err and len(err.strip().splitlines()) == 1
