"""What a GPU machine without TensorFlow runs: the model, the step, their benchmark, gpu_check.sh.

TensorFlow is made absent in the child processes by a ``sitecustomize`` on
their PYTHONPATH: the path finder no longer sees it, so ``import tensorflow``
fails and ``importlib.util.find_spec`` answers None, as on a machine without it.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCKER = '''
from importlib import machinery

_find_spec = machinery.PathFinder.find_spec


def _find_spec_without_tensorflow(cls, name, path=None, target=None):
  if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "tf_keras"):
    return None
  return _find_spec(name, path, target)


machinery.PathFinder.find_spec = classmethod(_find_spec_without_tensorflow)
'''


def _env(tmp_path):
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(_BLOCKER)
  return dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", JAX_PLATFORMS="cpu")


def test_the_model_step_and_checkpoints_import_without_tensorflow(tmp_path):
  code = ("import sys; import agejax.models, agejax.train.steps, agejax.train.step_state, "
          "agejax.workdir.checkpointing, agejax.benchmark.step_bench, agejax.benchmark.resume; "
          "import tensorflow")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
  # Everything imported; only the explicit ``import tensorflow`` at the end failed.
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "ModuleNotFoundError: No module named 'tensorflow'")


def test_gpu_check_self_test_runs_without_tensorflow(tmp_path):
  output = tmp_path / "gpu_check.jsonl"
  result = subprocess.run(
      ["bash", "launch/gpu_check.sh", "--platform", "cpu", "--output", str(output)],
      cwd=REPO, env=dict(_env(tmp_path), PYTHON=sys.executable), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert [l.split()[0] for l in lines[:3]] == ["step", "step", "resume"]
  assert lines[-1] == "gpu_check: ok (cpu)"
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert [(r["name"], r.get("batch_size")) for r in records] == [
      ("step", 8), ("step", 16), ("resume", None)]
  assert records[2]["bit_identical"] is True and records[2]["arrays_compared"] > 10
  assert all(r["platform"] == "cpu" for r in records)


def test_gpu_check_rejects_an_unknown_platform():
  result = subprocess.run(["bash", "launch/gpu_check.sh", "--platform", "tpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip() == "gpu_check.sh: --platform must be gpu or cpu, got tpu"
