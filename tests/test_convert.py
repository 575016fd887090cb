"""`python -m agejax.convert`: a weights file to a converted directory, and the features check."""

import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import save_file

from agejax.pretrained import features
from agejax import pretrained
from test_pretrained_torch import _random_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, "-m", "agejax.convert", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_convert_writes_a_directory_and_features_that_agree(tmp_path):
  weights = str(tmp_path / "resnet18.safetensors")
  save_file(_random_state_dict("resnet18", width=8), weights)
  images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  np.save(tmp_path / "images.npy", images)

  out = _run(f"--input={weights}", f"--output={tmp_path / 'converted'}",
             f"--features={tmp_path / 'images.npy'}", f"--features_out={tmp_path / 'f.npy'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "timm resnet18: 60 tensors" in out.stdout  # 20 convs + 20 BN scale/bias
  assert "features (3, 64) written" in out.stdout  # width 8: 8 * 8 pooled channels

  from_file = np.load(tmp_path / "f.npy")
  converted = pretrained.load(str(tmp_path / "converted"))
  assert converted.model_overrides["preprocessing"] == "imagenet"
  np.testing.assert_array_equal(features.features(converted, images), from_file)


def test_convert_refuses_a_non_weights_file_in_one_line(tmp_path):
  bad = tmp_path / "notes.txt"
  bad.write_text("hello")
  out = _run(f"--input={bad}", f"--output={tmp_path / 'x'}")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("agejax.convert: cannot import: ")
  assert not (tmp_path / "x").exists()
