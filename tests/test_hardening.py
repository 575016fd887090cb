"""Damaged run files and bad inputs, through the real commands: one line, the right exit code.

Each case runs ``python -m agejax.X`` as a user would, in a fresh process,
and checks the exit code, the line's first words and that stderr holds that
line and nothing else (warnings a command prints on success aside).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run([sys.executable, "-m", f"agejax.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
  return result.returncode, result.stdout, result.stderr.strip().splitlines()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
  """A copy of a finished tiny run, to damage."""
  copy = str(tmp_path / "run")
  shutil.copytree(tiny_run, copy)
  return copy


def test_report_reads_a_run_whose_last_metrics_line_is_half_written(run_copy):
  path = os.path.join(run_copy, "metrics.jsonl")
  lines = open(path).read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
  code, out, err = _run("report", f"--workdir={run_copy}")
  assert code == 0, err
  assert any(f"{path}: line {len(lines) + 1} is not a JSON record" in line for line in err)
  records = json.load(open(os.path.join(run_copy, "report", "report.json")))["runs"]
  assert records[0]["step"] == records[0]["final_step"] == 16 and "report:" in out


def test_report_reads_a_run_whose_summary_is_garbage(run_copy):
  with open(os.path.join(run_copy, "summary.json"), "w") as f:
    f.write("{not json")
  code, _, err = _run("report", f"--workdir={run_copy}")
  assert code == 0, err
  assert any("summary.json is not a readable summary" in line for line in err)


def test_a_garbage_config_is_blamed_on_the_file_not_a_flag(run_copy):
  config = os.path.join(run_copy, "config.json")
  with open(config, "w") as f:
    f.write("garbage")
  code, _, err = _run("evaluate", f"--workdir={run_copy}")
  assert code == 2
  assert err == [f"agejax.evaluate: {config} is not a readable agejax config (JSONDecodeError: "
                 "Expecting value: line 1 column 1 (char 0)); the run's config is damaged"]


def test_the_markdown_report_escapes_html_from_the_run(tiny_run, tmp_path):
  named = str(tmp_path / "<img src=x onerror=alert(1)>")
  shutil.copytree(tiny_run, named)
  code, _, err = _run("report", f"--workdir={named}")
  assert code == 0, err
  md = open(os.path.join(named, "report", "report.md")).read()
  assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md


def test_a_converted_directory_with_a_garbage_description_is_one_line(tmp_path):
  converted = tmp_path / "converted"
  converted.mkdir()
  (converted / "pretrained.json").write_text("{garbage")
  code, _, err = _run("convert", f"--input={converted}", f"--output={tmp_path / 'out'}")
  assert code == 2
  assert len(err) == 1 and err[0].startswith(
      f"agejax.convert: cannot import: {converted / 'pretrained.json'}: not a converted-weights "
      "description")


@pytest.mark.parametrize("module,args,first_words", [
    ("lr_find", ["--config=configs/tiny.py", "--workdir=WORK", "--steps=-5"],
     "agejax.lr_find: flag --steps=-5: -5 is not integer >= 2"),
    ("lr_find", ["--config=configs/tiny.py", "--workdir=WORK", "--min_lr=1", "--max_lr=0.1"],
     "agejax.lr_find: flags min_lr=1.0, max_lr=0.1: --max_lr must be above --min_lr"),
    ("benchmark", ["step", "--repeats=-1"],
     "agejax.benchmark: flag --repeats=-1: -1 is not a positive integer"),
    ("tune", ["--config=configs/tiny.py", "--workdir_root=WORK", "--study=s",
              "--storage=notaurl"],
     "agejax.tune: --storage: not a database URL (like sqlite:///study.db or"),
    ("tune", ["--config=configs/tiny.py", "--workdir_root=WORK", "--study=s",
              "--storage=sqlite:///WORK"],  # a folder, not a database file
     "agejax.tune: could not create or join study 's' in sqlite:///WORK: "),
], ids=["lr_find-steps", "lr_find-range", "benchmark-repeats", "tune-not-a-url",
        "tune-unreachable"])
def test_bad_flags_are_refused_before_any_work(module, args, first_words, tmp_path):
  work = str(tmp_path / "work")
  code, _, err = _run(module, *[a.replace("WORK", work) for a in args])
  assert len(err) == 1 and err[0].startswith(first_words.replace("WORK", work)), err
  assert code == (1 if module == "tune" and "sqlite" in args[-1] else 2)
  assert not os.path.exists(os.path.join(work, "trial_0"))  # no trial started


def test_database_urls_are_shown_without_their_password():
  from agejax.tools import optuna_search
  assert (optuna_search.shown_url("postgresql+psycopg2://u:secret@127.0.0.1:1/db")
          == "postgresql+psycopg2://u:***@127.0.0.1:1/db")
  assert optuna_search.shown_url("sqlite:///study.db") == "sqlite:///study.db"


@pytest.mark.parametrize("name", sorted(n[:-3] for n in os.listdir(os.path.join(REPO, "configs"))
                                        if n.endswith(".py") and n != "__init__.py"))
def test_shipped_configs_load_from_any_working_directory(name, tmp_path):
  """Loaded by path from another folder, as config_flags loads --config=/path/x.py."""
  script = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('c', {REPO + '/configs/' + name + '.py'!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(m.get_config().model.arch)\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip()


def _tf_saved_model(path, serve):
  """A SavedModel whose serving signature is ``serve`` (uint8 crops -> age, spread)."""
  import tensorflow as tf

  module = tf.Module()
  module.serve = tf.function(serve, input_signature=[
      tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="images")])
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def _model_json(path, **export):
  meta = {"format": "agejax-model", "format_version": 1, "image_size": 32,
          "preprocessing": "imagenet", "head": "dex", "min_age": 0, "max_age": 100,
          "crop": {"margin": 0.4, "stored_size": 32, "source": "test"},
          "export": {"format": "saved_model", "file": "saved_model.pb",
                     "input": {"shape": ["N", 32, 32, 3]}, **export}}
  with open(os.path.join(path, "model.json"), "w") as f:
    json.dump(meta, f)
  return meta


def test_a_saved_model_that_writes_a_file_is_refused_and_writes_nothing(tmp_path):
  import tensorflow as tf
  from PIL import Image

  model = str(tmp_path / "model")
  written = tmp_path / "outside.txt"

  def serve(images):
    tf.io.write_file(str(written), "pwned")
    size = tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)
    age = tf.fill(tf.shape(images)[:1], size)
    return {"age": age, "spread": age}

  _tf_saved_model(model, serve)
  _model_json(model)
  Image.new("RGB", (32, 32)).save(tmp_path / "face.png")
  code, _, err = _run("predict", f"--model={model}", str(tmp_path / "face.png"), "--no_detect")
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith(f"agejax.predict: {model}: the SavedModel's serving function runs op ")
  assert ("WriteFile" in err[0] or "ReadFile" in err[0]) and not written.exists()
  # The user's own model, trusted: it runs (and here does what it says).
  code, _, err = _run("predict", f"--model={model}", str(tmp_path / "face.png"), "--no_detect",
                      "--trust_model")
  assert code == 0, err
  assert written.exists()


@pytest.mark.parametrize("change,key", [
    (lambda m: m["export"].update(file="../other/model.tflite", format="tflite"), "export.file"),
    (lambda m: m["export"].update(file="/etc/passwd", format="tflite"), "export.file"),
    (lambda m: m.pop("crop"), "crop"),
    (lambda m: m.update(crop="x"), "crop"),
    (lambda m: m["crop"].update(stored_size=200000), "crop.stored_size"),
    (lambda m: m["export"].pop("file"), "export.file"),
], ids=["relative-outside", "absolute", "no-crop", "crop-string", "huge-crop", "no-file"])
def test_a_damaged_or_hostile_model_json_is_one_line_naming_the_key(tmp_path, change, key):
  from PIL import Image

  model = tmp_path / "model"
  model.mkdir()
  meta = _model_json(str(model))
  change(meta)
  (model / "model.json").write_text(json.dumps(meta))
  Image.new("RGB", (32, 32)).save(tmp_path / "face.png")
  code, _, err = _run("predict", f"--model={model}", str(tmp_path / "face.png"), "--no_detect")
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith(f"agejax.predict: {model / 'model.json'}: {key} must be "), err


def _stale_lock(workdir, **fields):
  from agejax.workdir import run_lock
  import socket
  import time
  os.makedirs(workdir, exist_ok=True)
  record = {"host": socket.gethostname(), "pid": 2 ** 22 + 17, "job": None,
            "since": time.time() - 7200, "heartbeat": time.time() - 7200, **fields}
  with open(os.path.join(workdir, run_lock.LOCK_FILE), "w") as f:
    json.dump(record, f)


def _race(workdir, barrier, results):
  from agejax.errors import WorkdirInUse
  from agejax.workdir import run_lock
  barrier.wait()
  try:
    run_lock.WorkdirLock(workdir).acquire()
    results.put(1)
  except WorkdirInUse:
    results.put(0)
  # Both stay alive until both have decided: a holder that exited would
  # rightly be a dead run whose lock the other takes over.
  barrier.wait()


def test_two_processes_on_one_stale_lock_exactly_one_takes_it(tmp_path):
  import multiprocessing
  context = multiprocessing.get_context("fork")
  rounds = 200
  for k in range(rounds):
    workdir = str(tmp_path / f"round{k}")
    _stale_lock(workdir)
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_race, args=(workdir, barrier, results)) for _ in range(2)]
    for w in workers:
      w.start()
    for w in workers:
      w.join(30)
    assert sorted([results.get(timeout=5), results.get(timeout=5)]) == [0, 1], k


def test_a_same_host_lock_of_a_live_unrelated_pid_with_an_old_heartbeat_is_taken_over(tmp_path):
  from agejax.workdir import run_lock
  workdir = str(tmp_path / "run")
  _stale_lock(workdir, pid=1)  # PID 1 lives; the dead run's number was reused
  lock = run_lock.WorkdirLock(workdir).acquire()
  assert json.load(open(lock.path))["pid"] == os.getpid()
  lock.release()
  # A fresh heartbeat from a live PID is honoured.
  _stale_lock(workdir, pid=1, heartbeat=__import__("time").time())
  with pytest.raises(Exception, match="is in use by PID 1"):
    run_lock.WorkdirLock(workdir).acquire()


def test_an_empty_lock_blocks_only_until_it_is_old(tmp_path):
  import time
  from agejax.errors import WorkdirInUse
  from agejax.workdir import run_lock
  workdir = tmp_path / "run"
  workdir.mkdir()
  empty = workdir / run_lock.LOCK_FILE
  empty.write_text("")
  with pytest.raises(WorkdirInUse, match="an unreadable lock"):
    run_lock.WorkdirLock(str(workdir)).acquire()
  old = time.time() - run_lock.STALE_AFTER_S - 60
  os.utime(empty, (old, old))
  run_lock.WorkdirLock(str(workdir)).acquire().release()
  assert not empty.exists()


def test_a_disk_full_at_start_is_one_line_and_leaves_no_lock(tiny_data_dir, tmp_path):
  from test_failures import _small_tmpfs
  workdir = str(tmp_path / "full")
  if not _small_tmpfs(workdir, "8k"):
    pytest.skip("mounting a small tmpfs needs root")
  try:
    code, _, err = _run("main", "--config=configs/tiny.py", f"--workdir={workdir}/run",
                        f"--config.data.data_dir={tiny_data_dir}")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("agejax.main: no space left on device") and \
        err[0].endswith("; free space (or fix the mount), then run the same command again "
                        "(complete checkpoints are kept)"), err
    assert not os.path.exists(os.path.join(workdir, "run", "run.lock"))
  finally:
    subprocess.run(["umount", workdir], check=False)


def test_an_export_prints_nothing_on_stderr(tiny_run, tmp_path):
  """Orbax's sharding warning and TFLite's deprecation notice stay off stderr."""
  pytest.importorskip("tensorflow")
  code, out, err = _run("export", f"--workdir={tiny_run}", f"--output={tmp_path / 'tfl'}",
                        "--format=tflite")
  assert code == 0 and err == [], err
  assert "verified on" in out


def test_a_command_runs_again_in_one_process_with_another_config_file(tmp_path):
  """Override flags of one --config file do not collide with the next run's."""
  from agejax import main
  for config in ("configs/tiny.py", os.path.join(REPO, "configs", "tiny.py")):
    assert main.main(["main", f"--config={config}", f"--workdir={tmp_path / 'w'}",
                      f"--config.data.data_dir={tmp_path / 'd'}", "--dry_run"]) == 0


def test_predict_from_a_bundle_prints_nothing_on_stderr(tiny_run, tmp_path):
  """Restoring a bundle (orbax: 'Sharding info not provided') leaves stderr empty."""
  from PIL import Image
  from skimage import data
  bundle_dir = str(tmp_path / "bundle")
  code, _, err = _run("export", f"--workdir={tiny_run}", f"--output={bundle_dir}")
  assert code == 0 and err == [], err
  Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
  code, out, err = _run("predict", f"--model={bundle_dir}", str(tmp_path / "astronaut.png"))
  assert code == 0 and err == [], err
  assert "1 face(s)" in out
