"""The benchmark harness at tiny settings: it runs and writes well-formed JSON lines.

No speed is asserted anywhere: the numbers depend on the machine and its
load. What is checked is the protocol: every result parses, carries the
machine description and its settings, and reports positive measurements.
"""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from agejax.benchmark import build_bench
from agejax.benchmark import common
from agejax.benchmark import e2e
from agejax.benchmark import peer
from agejax.benchmark import input_bench
from agejax.benchmark import step_bench
from agejax.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON_KEYS = ("name", "date", "platform", "device_kind", "device_count", "jax_version",
               "cpu_count", "load", "settings")
TINY_STEP = step_bench.StepSettings(arch="resnet18", width=8, image_size=32, batch_size=4,
                              steps=2, repeats=2, warmup=1, matmul_size=256)


def _round_trip(results, columns, tmp_path):
  """The results as written by common.Output and read back, line by line."""
  path = tmp_path / "bench.jsonl"
  out = common.Output(str(path))
  out.write(results, columns)
  out.close()
  return [json.loads(line) for line in path.read_text().splitlines()]


def _check(record, name, positive):
  for key in COMMON_KEYS:
    assert key in record, key
  assert record["name"] == name
  assert isinstance(record["settings"], dict) and record["settings"]
  assert len(record["load"]) == 3
  for key in positive:
    assert isinstance(record[key], (int, float)) and math.isfinite(record[key]), key
    assert record[key] > 0, key


def test_step(tmp_path):
  (record,) = _round_trip(step_bench.run(TINY_STEP), step_bench.COLUMNS, tmp_path)
  _check(record, "step", ("images_per_sec", "ms_per_step", "ms_per_step_min",
                          "ms_per_step_max", "flops_per_step", "gflops_per_sec",
                          "matmul_gflops_per_sec", "mfu"))
  assert record["settings"]["arch"] == "resnet18"
  assert record["ms_per_step_min"] <= record["ms_per_step"] <= record["ms_per_step_max"]
  assert len(record["seconds"]) == TINY_STEP.repeats
  assert record["peak_mib"] > 0


def test_step_frozen_variant_does_less_work(tmp_path):
  """Freezing the stem and stage 1 removes their backward pass: fewer FLOPs, less memory."""
  settings = dataclasses.replace(TINY_STEP, freeze="^(stem|stage1)/")
  full, frozen = _round_trip(step_bench.run_frozen(settings), step_bench.COLUMNS, tmp_path)
  _check(frozen, "step", ("images_per_sec", "speedup", "peak_mib"))
  assert (full["variant"], frozen["variant"]) == ("full", "frozen")
  assert full["settings"]["freeze"] == "" and frozen["settings"]["freeze"] == "^(stem|stage1)/"
  assert frozen["flops_per_step"] < full["flops_per_step"]
  assert frozen["peak_mib"] < full["peak_mib"]
  assert frozen["speedup"] == pytest.approx(frozen["images_per_sec"] / full["images_per_sec"])
  assert len(full["seconds"]) == len(frozen["seconds"]) == TINY_STEP.repeats


def test_time_alternating_takes_turns():
  calls = []
  seconds = common.time_alternating([lambda: calls.append("a"), lambda: calls.append("b")],
                                    repeats=2, warmup=1)
  assert calls == ["a", "b"] * 3
  assert [len(s) for s in seconds] == [2, 2]


@pytest.mark.parametrize("framework", peer.FRAMEWORKS)
def test_peer_protocol(framework, tmp_path):
  if framework == "torch":
    # The bench extra, not the test one. Looked up, not imported: torch next
    # to TensorFlow and JAX in one process can crash it; the peer is a child.
    if importlib.util.find_spec("torchvision") is None:
      pytest.skip("torchvision is not installed (pip install -e '.[bench]')")
  settings = peer.PeerSettings(framework=framework, image_size=32, batch_size=2, steps=1,
                               repeats=2, warmup=1, timeout=120)
  # A stand-in for agejax's compiled step: timed alternately with the child.
  calls = []
  fake_k_steps = lambda: (calls.append(1), time.sleep(0.02))
  try:
    results = peer.run(settings, fake_k_steps)
  except subprocess.TimeoutExpired:
    pytest.skip(f"the {framework} child took over 120 s on this machine")
  assert len(calls) == settings.warmup + settings.repeats
  (record,) = _round_trip(results, peer.COLUMNS, tmp_path)
  _check(record, "peer", ("images_per_sec", "ms_per_step", "ratio", "agejax_images_per_sec"))
  assert len(record["seconds"]) == len(record["agejax_seconds"]) == settings.repeats
  # 2 images per 0.02 s run: at most 100 images/s (sleep only overshoots)
  assert 0 < record["agejax_images_per_sec"] <= 100.0
  assert record["ratio"] == pytest.approx(
      record["agejax_images_per_sec"] / record["images_per_sec"])
  assert record["variant"] == framework
  assert record["tf_version" if framework == "keras" else "torch_version"]


def test_peer_ratio_needs_the_same_settings():
  settings = peer.PeerSettings()
  other = {"arch": "resnet18", "width": 8, "image_size": 32, "batch_size": 4,
           "dtype": "float32"}
  assert not peer.comparable(other, settings)
  same = {"arch": "resnet50", "width": 64, "image_size": 112, "batch_size": 16,
          "dtype": "float32"}
  assert peer.comparable(same, settings)
  assert not peer.comparable(None, settings)
  with pytest.raises(UsageError, match="the keras peer has no 'resnet18'"):
    peer.run(peer.PeerSettings(arch="resnet18"))
  with pytest.raises(UsageError, match="the torch peer has no 'vgg16'"):
    peer.run(peer.PeerSettings(framework="torch", arch="vgg16"))


@pytest.mark.parametrize("framework, module", [("keras", "tf_keras"), ("torch", "torchvision")])
def test_a_missing_peer_names_what_to_install(framework, module, monkeypatch):
  real_find_spec = peer.importlib.util.find_spec
  monkeypatch.setattr(peer.importlib.util, "find_spec",
                      lambda name: None if name == module else real_find_spec(name))
  with pytest.raises(UsageError, match=rf"the {framework} baseline needs .*{module}.*\.\[bench\]"):
    peer.run(peer.PeerSettings(framework=framework))


def test_input(tmp_path):
  settings = input_bench.InputSettings(images=64, batch_size=8, batches=2, repeats=1, warmup=1)
  records = _round_trip(input_bench.run(settings), input_bench.COLUMNS, tmp_path)
  assert [r["variant"] for r in records] == ["minimal", "crop_flip", "rotation", "color_jitter"]
  for record in records:
    _check(record, "input", ("images_per_sec", "images_per_sec_per_core", "ms_per_batch"))
  assert records[0]["ratio"] is None
  assert all(r["ratio"] > 0 for r in records[1:])
  assert records[2]["settings"]["rotation_degrees"] > 0
  assert records[3]["settings"]["color_jitter"] > 0


def test_build(tmp_path):
  (record,) = _round_trip(build_bench.run(build_bench.BuildSettings(images=30)), build_bench.COLUMNS, tmp_path)
  _check(record, "build", ("images_per_sec", "seconds", "release_images", "kept"))
  assert record["kept"] < record["release_images"]  # the hand-made bad rows are dropped
  # 300-500 px photos are never decoded reduced for a 256 px crop: identical builds.
  assert record["psnr_release_db"] is None
  assert 40 <= record["psnr_photos_min_db"] < 60


def test_psnr_closed_form():
  a = np.zeros((4, 4), np.uint8)
  b = a.copy()
  assert build_bench.psnr(a, b) is None
  b[0, 0] = 16  # MSE 16**2 / 16 = 16
  assert build_bench.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 16))


def test_e2e(tmp_path):
  settings = e2e.E2ESettings(config=os.path.join(REPO, "configs", "tiny.py"), steps=8,
                             data_dir=str(tmp_path / "tfds"))
  (record,) = _round_trip(e2e.run(settings), e2e.COLUMNS, tmp_path)
  _check(record, "e2e", ("images_per_sec", "steps_per_sec", "seconds", "timed_steps"))
  assert 0 <= record["data_wait_fraction"] <= 1
  assert record["timed_steps"] == 7


def test_output_to_stdout_keeps_the_table_on_stderr(capsys):
  out = common.Output(None)
  out.write([{"name": "x", "images_per_sec": 2.5}], ("images_per_sec",))
  captured = capsys.readouterr()
  assert json.loads(captured.out) == {"name": "x", "images_per_sec": 2.5}
  assert "images_per_sec=2.5" in captured.err


def test_cli(tmp_path):
  output = tmp_path / "cli.jsonl"
  proc = subprocess.run(
      [sys.executable, "-m", "agejax.benchmark", "step", "--output", str(output),
       "--repeats", "1", "--steps", "1", "--warmup", "1", "--arch", "resnet18",
       "--width", "8", "--image_size", "32", "--batch_size", "4", "--matmul_size", "128",
       "--platform", "cpu"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (line,) = output.read_text().splitlines()
  _check(json.loads(line), "step", ("images_per_sec", "mfu"))
  assert "step" in proc.stdout  # the table row


def test_cli_rejects_unknown_names():
  proc = subprocess.run([sys.executable, "-m", "agejax.benchmark", "nonsense"], cwd=REPO,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert "unknown benchmark" in proc.stderr


def test_inference(tmp_path):
  """Every runtime timed on the same crops, each within reach of JAX's ages, and predict."""
  from agejax.benchmark import inference_bench
  settings = inference_bench.InferenceSettings(arch="resnet18", image_size=32, batch=4, repeats=1,
                                         latency_calls=2, photos=1)
  records = _round_trip(inference_bench.run(settings), inference_bench.COLUMNS, tmp_path)
  assert [r["variant"] for r in records] == [*inference_bench.RUNTIMES, "predict (bundle)"]
  for record in records[:-1]:
    _check(record, "inference", ("crops_per_sec", "latency_ms_p50", "latency_ms_p90"))
    assert record["latency_ms_p50"] <= record["latency_ms_p90"]
    # Float runtimes within 1e-4 years of the reference; int8 weights only reported.
    if record["variant"] != "tflite_dynamic":
      assert record["max_abs_age_vs_jax"] <= 1e-4
  assert records[-1]["photos_per_sec"] > 0


def test_audit(tmp_path):
  """Hashing speed, and the search finding every planted pair at each size."""
  from agejax.benchmark import audit_bench
  settings = audit_bench.AuditSettings(images=20, batch=8, sizes=(1000, 4000), repeats=1,
                                       choice_faces=30, choice_copies=10,
                                       choice_thresholds=(8,))
  records = _round_trip(audit_bench.run(settings), audit_bench.COLUMNS, tmp_path)
  _check(records[0], "audit_hash", ("images_per_sec",))
  assert [(r["n"], r["planted_found"]) for r in records[1:3]] == [(1000, "10/10"),
                                                                 (4000, "40/40")]
  for record in records[1:3]:
    _check(record, "audit_search", ("seconds",))
    assert record["pairs"] >= 10
  # One row per hash; a mirrored copy matches its original's mirror hash exactly.
  choice = records[3:6]
  assert [r["hash"] for r in choice] == ["phash", "dhash", "ahash"]
  assert all(r["recall"]["mirror"] == 1.0 and r["recall"]["brightness"] > 0.5
             for r in choice)
  # Both signatures confirm a mirrored copy against the flipped original
  # exactly; false pairs are counted among the candidates.
  signatures = records[6:]
  assert [r["signature"] for r in signatures] == ["colour 8x8", "luma 16x16"]
  assert all(r["recall"]["mirror"] == 1.0 and 0 <= r["false_pairs"] <= r["candidates"]
             for r in signatures)


def test_walking_heads_stay_whole_and_apart():
  """Four heads share two lanes without covering each other; their boxes are the pasted face's."""
  from agejax.benchmark import face_scenes
  from agejax.serving import tracks
  frames = list(face_scenes.walking(4, 120))
  _, (fx1, fy1, fx2, fy2) = face_scenes.head(160, False, 1.0)
  for _, boxes in frames:
    assert len(boxes) == 4
    assert all(tracks.iou(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(0 <= b[0] and b[2] <= 640 and 0 <= b[1] and b[3] <= 480 for b in boxes)
    for b in boxes:  # each box is the head's face box moved: same size
      assert (b[2] - b[0], b[3] - b[1]) == pytest.approx((fx2 - fx1, fy2 - fy1))
  # 3 px per frame: the first head of the top lane moves right by exactly that.
  assert frames[1][1][0][0] - frames[0][1][0][0] == pytest.approx(3)


def test_scene_match_counts_hits_and_false_boxes():
  from agejax.benchmark import face_scenes
  truth = [(0, 0, 10, 10), (100, 100, 120, 120)]
  found = [(1, 0, 11, 10, 0.9), (0, 0, 10, 10, 0.8), (300, 300, 310, 310, 0.7)]
  # One box per face: the second box on the first face counts as false.
  assert face_scenes.match(found, truth) == (1, 2)
  assert face_scenes.match([], truth) == (0, 0)


def test_predict_cli(tmp_path):
  """`benchmark predict` through its command: detector rows, photo and video rows per detector."""
  from flax import nnx

  from agejax import models
  from configs import tiny
  from agejax.serving import bundle
  cfg = tiny.get_config()
  _, params, batch_stats = models.split_state(
      models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(0)))
  model = bundle.write(str(tmp_path / "tiny"), bundle.metadata(
      cfg, 0, crop={"margin": 0.4, "stored_size": 32, "source": "test"}), params, batch_stats)
  output = tmp_path / "predict.jsonl"
  proc = subprocess.run(
      [sys.executable, "-m", "agejax.benchmark", "predict", "--output", str(output),
       "--repeats=1", f"--predict_model={model}", "--predict_detectors=blazeface_full",
       "--predict_scenes=5", "--predict_photos=2", "--predict_frames=6", "--platform=cpu"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert [r["variant"] for r in records] == [
      "detector blazeface_full", "photos tiny blazeface_full", "video tiny blazeface_full 1f",
      "video tiny blazeface_full 4f"]
  detector, photos, one, four = records
  # Scenes k = 0..4 hold k faces each: 10 in all; astronaut and camera hold one each.
  assert (detector["faces"], detector["photo_faces"]) == (10, 2)
  assert 0 <= detector["recall_small"] <= 1 and 0 <= detector["recall_large"] <= 1
  _check(detector, "predict", ("ms_per_frame",))
  _check(photos, "predict", ("photos_per_sec", "detect_ms", "network_ms"))
  # Every 80 px face of the walking videos is found on every frame.
  assert (one["faces_per_image"], four["faces_per_image"]) == (1.0, 4.0)
  for record in (one, four):
    _check(record, "predict", ("frames_per_sec", "decode_ms", "detect_ms", "crop_ms"))
  assert "predict: detector blazeface_full" in proc.stderr  # progress


@pytest.mark.parametrize("flag, message", [
    ("--predict_detectors=yolo", "unknown face detector 'yolo'"),
    ("--peer=deepface", "unknown peer 'deepface'"),
    ("--predict_model=/nonexistent", "/nonexistent is not a folder")])
def test_predict_cli_refuses_bad_settings_before_timing(flag, message):
  proc = subprocess.run([sys.executable, "-m", "agejax.benchmark", "predict", flag], cwd=REPO,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert "predict: detector" not in proc.stderr  # nothing was timed
