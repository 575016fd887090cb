"""Two real processes on the CPU backend (loopback coordinator, gloo collectives).

They train the tiny config together on one workdir: both must end with the
same parameters, only process 0 writes summaries, and the checkpoint they
wrote resumes in a single-process run.
"""

import glob
import os
import re
import socket
import subprocess
import sys


from agejax.workdir import metric_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKSUM = re.compile(r"completed at step (\d+);.*parameter checksum ([0-9.e+-]+)")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir, data_dir, steps, *extra):
  return [sys.executable, "-m", "agejax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.train.num_train_steps={steps}",
          "--config.train.eval_every_steps=4", "--config.train.log_every_steps=2",
          "--verbosity=1", *extra]  # the INFO log carries the end line and the resume


def _env():
  # One CPU device per process: the mesh spans both processes.
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


def test_two_processes_train_together_and_resume_alone(tmp_path, tiny_data_dir):
  data_dir = tiny_data_dir
  workdir = str(tmp_path / "run")
  port = _free_port()
  procs = [
      subprocess.Popen(
          _command(workdir, data_dir, 8, f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}"),
          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=420)
      outputs.append(out)
  finally:
    for p in procs:
      p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
  ends = [CHECKSUM.search(out) for out in outputs]
  assert all(ends), [out[-2000:] for out in outputs]
  assert ends[0].group(1) == ends[1].group(1) == "8"
  assert ends[0].group(2) == ends[1].group(2)  # the replicas agree exactly

  # Only process 0 wrote summaries: one event file per split, each record once.
  for split in ("train", "train_eval", "validation"):
    assert len(glob.glob(os.path.join(workdir, split, "events.out.tfevents.*"))) == 1, split
  records = metric_io.read_metrics(workdir)
  keys = [(r["step"], r["split"]) for r in records if r["split"] != "progress"]
  assert len(keys) == len(set(keys))
  validation = [r for r in records if r["split"] == "validation"]
  assert [r["count"] for r in validation] == [64, 64]  # every example once across processes

  # The joint checkpoint resumes in a single process and runs to the end.
  single = subprocess.run(_command(workdir, data_dir, 12), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=420)
  assert single.returncode == 0, single.stderr[-4000:]
  assert "resumed from step 8" in single.stderr
  end = CHECKSUM.search(single.stderr)
  assert end and end.group(1) == "12"
