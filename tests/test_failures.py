"""Every failure is one line that names the culprit, and loses nothing complete.

Each case runs the real command (in this process through its ``main``, or as
a real process where the failure needs one) or a real build.
"""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import scipy.io
import tensorflow_datasets as tfds

from agejax.data import face_crop
from agejax.errors import WorkdirInUse
from agejax.workdir import checkpointing
from agejax.workdir import run_lock
from data_builders import age_csv  # noqa: F401  (registers the builders with TFDS)
from data_builders import common
from data_builders import imdb_wiki  # noqa: F401
from data_builders import utkface  # noqa: F401
from data_builders.imdb_wiki import release

import imdb_wiki_fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  """The environment of a fresh command line: TF's log level is the CLI's to set."""
  return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def _cli(*argv):
  """``python -m agejax.main ARGV`` as a user runs it: (exit code, stdout, stderr lines)."""
  result = subprocess.run([sys.executable, "-m", "agejax.main", *argv], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
  return result.returncode, result.stdout, result.stderr.strip().splitlines()


def _tiny(data_dir, workdir, *overrides):
  return ["--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", *overrides]


# --- two runs, one workdir -------------------------------------------------------


def test_a_second_run_on_a_busy_workdir_refuses_naming_the_holder(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  first = subprocess.Popen(
      [sys.executable, "-m", "agejax.main", *_tiny(tiny_data_dir, workdir,
                                                   "--config.train.num_epochs=4")],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lock_path = os.path.join(workdir, run_lock.LOCK_FILE)
  deadline = time.time() + 300
  while not os.path.exists(lock_path) and first.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert os.path.exists(lock_path), first.communicate()
  code, _, err = _cli(*_tiny(tiny_data_dir, workdir, "--config.optim.lr=0.5"))
  assert code == 2
  assert err == [f"agejax.main: {workdir} is in use by PID {first.pid} on host "
                 f"{socket.gethostname()} since {err[0].split(' since ')[1].split(';')[0]}; use "
                 f"another --workdir, wait for that run, or delete {lock_path} if it is gone"]
  out, stderr = first.communicate(timeout=600)
  assert first.returncode == 0, stderr
  # The first run's work is intact: its config (lr 0.05, not 0.5) and every record once.
  assert json.load(open(os.path.join(workdir, "config.json")))["optim"]["lr"] == 0.05
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = [(r["split"], r["step"]) for r in records]
  assert len(keys) == len(set(keys))
  assert not os.path.exists(lock_path)  # released on exit


def test_a_lock_left_by_a_dead_process_is_taken_over_and_a_live_one_is_not(tmp_path):
  lock_path = tmp_path / run_lock.LOCK_FILE
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                   "since": time.time(), "heartbeat": time.time()}))
  with run_lock.WorkdirLock(str(tmp_path)):
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
  assert not lock_path.exists()
  # A live process on this host (our parent), or a fresh lock of another host: refused.
  for holder in ({"host": socket.gethostname(), "pid": os.getppid()},
                 {"host": "elsewhere", "pid": 1, "heartbeat": time.time()}):
    lock_path.write_text(json.dumps({**holder, "since": time.time()}))
    with pytest.raises(WorkdirInUse, match=f"PID {holder['pid']} on host {holder['host']}"):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
  # Another host's lock whose heartbeat stopped long ago: its run is gone.
  old = time.time() - run_lock.STALE_AFTER_S - 60
  lock_path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": old,
                                   "heartbeat": old}))
  run_lock.WorkdirLock(str(tmp_path)).acquire().release()


# --- a full disk -------------------------------------------------------------------


def _small_tmpfs(path: str, size: str) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                        capture_output=True, check=False).returncode == 0


_INJECT_ENOSPC = """
import errno, sys
import orbax.checkpoint as ocp
original, calls = ocp.CheckpointManager.save, []
def save(self, step, *args, **kwargs):
  calls.append(step)
  if len(calls) == 3:  # the third checkpoint finds the disk full
    raise OSError(errno.ENOSPC, "No space left on device", "/checkpoints")
  return original(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
from agejax import main
sys.exit(main.main(["agejax.main", *sys.argv[1:]]))
"""


def test_a_full_disk_stops_at_the_failed_save_and_keeps_every_complete_checkpoint(
    tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  checkpoints = os.path.join(workdir, "checkpoints")
  # Two 1.3 MB checkpoints fit in 3 MB, the third does not.
  mounted = _small_tmpfs(checkpoints, "3m")
  argv = _tiny(tiny_data_dir, workdir, "--config.train.checkpoint_every_steps=4",
               "--config.train.keep_checkpoints=5")
  command = ([sys.executable, "-m", "agejax.main", *argv] if mounted else
             [sys.executable, "-c", _INJECT_ENOSPC, *argv])
  try:
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"agejax.main: saving checkpoint 12 in {checkpoints} failed: No space left on device"
        + ("" if mounted else " (/checkpoints)") + "; the last complete checkpoint is 8 (kept). "
        "Free space (or fix the mount), then run the same command again to resume from it"]
    with checkpointing.Checkpointer(checkpoints) as ckpt:
      assert ckpt.all_steps() == [4, 8]
      assert np.isfinite(ckpt.restore_params(8)["params"]["head"]["fc"]["kernel"]).all()
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["stopped"].startswith("checkpoint save failed: saving checkpoint 12")
    if mounted:
      subprocess.run(["mount", "-o", "remount,size=64m", checkpoints], check=True)
    code, out, err = _cli(*argv)
    assert code == 0, err
    assert out.startswith("agejax training (resumed at step 8)")
  finally:
    if mounted:
      subprocess.run(["umount", checkpoints], check=False)


# --- a corrupt shard ---------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_corrupt_shard_is_named_with_how_to_rebuild(tiny_data_dir, tmp_path, damage):
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(tiny_data_dir, data_dir)
  version_dir = os.path.join(data_dir, "synthetic_faces", "tiny", "1.1.0")
  shard, = [os.path.join(version_dir, f) for f in os.listdir(version_dir)
            if "-train.tfrecord" in f]
  data = bytearray(open(shard, "rb").read())
  if damage == "truncated":
    data = data[:len(data) // 2]
  else:
    data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2:
                                                                         len(data) // 2 + 64])
  open(shard, "wb").write(bytes(data))
  code, _, err = _cli(*_tiny(data_dir, str(tmp_path / "run")))
  assert code == 1
  assert len(err) == 1
  what = "truncated" if damage == "truncated" else "corrupted"
  assert err[0].startswith(f"agejax.main: synthetic_faces/tiny train: shard {shard} is corrupt "
                           f"({what} record at ")
  assert err[0].endswith(f"delete {version_dir} and build it again (tfds build "
                         "data_builders/synthetic_faces ...; see its README)")


# --- config entry errors -------------------------------------------------------------


def test_config_entry_errors_are_one_line_naming_the_file(tiny_data_dir, tmp_path):
  no_get = tmp_path / "no_get.py"
  no_get.write_text("x = 1\n")
  raises = tmp_path / "raises.py"
  raises.write_text("from configs import tiny\n\ndef get_config():\n"
                    "  config = tiny.get_config()\n  return config.model.depth * 2\n")
  cases = {
      str(tmp_path / "missing.py"): f"--config: {tmp_path / 'missing.py'}: no such file",
      str(no_get): f"--config: {no_get} defines no get_config() function",
      str(raises): f"--config: {raises}:5: AttributeError: ",
  }
  for path, line in cases.items():
    code, _, err = _cli(f"--config={path}", f"--workdir={tmp_path / 'w'}", "--dry_run")
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"agejax.main: config error: {line}"), err
  code, _, err = _cli(*_tiny(tiny_data_dir, str(tmp_path / "w"),
                             "--config.data.dataset=no_such_faces"))
  assert code == 2 and len(err) == 1
  assert err[0].startswith("agejax.main: config error: data.dataset: 'no_such_faces' is not "
                           "a built or known TFDS dataset")
  assert "agejax builds imdb_wiki, appa_real, utkface, age_csv, facebase, synthetic_faces" in err[0]


# --- broken release files ----------------------------------------------------------------


def _mat_bytes(struct_name="imdb", fields=None):
  fields = fields or {"full_path": np.array([["01/a.jpg"]], dtype=object)}
  out = io.BytesIO()
  scipy.io.savemat(out, {struct_name: fields})
  return out.getvalue()


def test_broken_imdb_wiki_files_are_one_line_naming_the_file(tmp_path):
  good = _mat_bytes()
  cases = {
      "truncated": (good[:len(good) // 3], "not a readable MATLAB .mat file"),
      "text file": (b"this is not a mat file\n" * 20, "not a readable MATLAB .mat file"),
      "wrong struct": (_mat_bytes("celebs"), "no struct named 'imdb' (found ['celebs'])"),
      "no full_path": (_mat_bytes(fields={"dob": np.zeros((1, 1))}),
                       "struct 'imdb' lacks field(s) ['full_path', 'photo_taken'"),
  }
  for name, (data, problem) in cases.items():
    with pytest.raises(common.ReleaseError) as caught:
      release.read_mat(data, "imdb", where=f"imdb_crop/imdb.mat in {tmp_path}")
    message = str(caught.value)
    assert message.startswith(f"imdb_crop/imdb.mat in {tmp_path}: {problem}"), (name, message)
    assert "\n" not in message
  not_struct = io.BytesIO()
  scipy.io.savemat(not_struct, {"imdb": np.arange(3.0)})
  with pytest.raises(common.ReleaseError, match="'imdb' is not a MATLAB struct"):
    release.read_mat(not_struct.getvalue(), "imdb")


def test_a_truncated_release_tar_stops_the_build_naming_the_tar(tmp_path):
  manual = tmp_path / "manual"
  imdb_wiki_fixture.write_release(manual, n_imdb=20, n_wiki=5, seed=0, archive=True)
  tar = manual / "imdb_crop.tar"
  data = tar.read_bytes()
  tar.write_bytes(data[:len(data) // 2 + 100])
  builder = tfds.builder("imdb_wiki/clean", data_dir=str(tmp_path / "data"))
  with pytest.raises(common.ReleaseError) as caught:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert str(caught.value).startswith(f"{tar}: not a readable tar archive")
  assert not builder.is_prepared()


# --- age_csv and UTKFace ---------------------------------------------------------------------


def _face_jpeg(path, size=48, value=128):
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path, format="JPEG")


def _build(name, manual, data_dir, config=None):
  builder = tfds.builder(name, data_dir=str(data_dir), **({"config": config} if config else {}))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


def test_age_csv_skips_folders_leaves_out_empty_splits_and_names_a_bad_encoding(tmp_path):
  manual = tmp_path / "manual"
  (manual / "faces" / "a_folder").mkdir(parents=True)
  rows = ["path,age,split"]
  for i in range(7):
    _face_jpeg(manual / "faces" / f"{i}.jpg")
    rows.append(f"faces/{i}.jpg,{20 + i},{'train' if i < 6 else 'validation'}")
  rows.append("faces/a_folder,30,train")  # a folder where an image should be
  # Nothing for test: that split is left out.
  (manual / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
  builder = _build("age_csv", manual, tmp_path / "data")
  assert set(builder.info.splits) == {"train", "validation"}
  assert builder.info.splits["train"].num_examples == 6
  report = json.load(open(os.path.join(builder.data_dir, "cleaning_report.json")))
  assert report["dropped_per_reason"] == {"not_a_file": 1}

  (manual / "labels.csv").write_bytes("path,age\nfaces/0.jpg,20\nfaces/\xe9t\xe9.jpg,30\n"
                                      .encode("latin-1"))
  with pytest.raises(common.ReleaseError) as caught:
    _build("age_csv", manual, tmp_path / "data2")
  assert str(caught.value).startswith(f"{manual / 'labels.csv'}: is not utf-8-sig text "
                                      "(byte 30: invalid continuation byte)")


def test_a_subfolder_in_utkface_is_skipped_and_counted(tmp_path):
  folder = tmp_path / "manual" / "UTKFace"
  (folder / "extra").mkdir(parents=True)
  for i in range(40):
    _face_jpeg(folder / f"{20 + i % 50}_{i % 2}_0_2017010{i:04d}.jpg.chip.jpg")
  builder = _build("utkface", tmp_path / "manual", tmp_path / "data")
  report = json.load(open(os.path.join(builder.data_dir, "cleaning_report.json")))
  assert report["dropped_per_reason"] == {"not_a_file": 1}
  assert sum(s.num_examples for s in builder.info.splits.values()) == 40


# --- a huge image ---------------------------------------------------------------------------


def test_a_huge_jpeg_is_decoded_only_as_large_as_its_crop_needs():
  out = io.BytesIO()
  Image.new("RGB", (8000, 6000), (90, 120, 150)).save(out, format="JPEG", quality=70)
  data = out.getvalue()
  image, box, original = face_crop.decode_for_crop(data, None, size=256)
  assert original == (8000, 6000) and box is None
  assert image.size == (1000, 750)  # 1/8 scale: the smallest side still >= 2 x 256
  # With a face box, the widened box (1,800 px) keeps at least 512 pixels a side: 1/2.
  image, box, _ = face_crop.decode_for_crop(data, (3000, 2000, 4000, 3000), 0.4, 256)
  assert image.size == (4000, 3000) and box == (1500.0, 1000.0, 2000.0, 1500.0)
  full, _, _ = face_crop.decode_for_crop(data, None, size=256, reduced=False)
  assert full.size == (8000, 6000)
  crop = face_crop.crop(image, box, 0.4, 256)
  assert crop.size == (256, 256)
  assert np.abs(np.asarray(crop, np.int16) - (90, 120, 150)).max() <= 3
