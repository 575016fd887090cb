"""One training run per workdir: ``DIR/run.lock``.

Two runs writing one workdir interleave their metrics and overwrite each
other's checkpoints and config, and the first run's model is gone without a
word. So process 0 of a run takes the lock before it touches anything, and a
second run refuses at start-up naming the holder.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local disks
and on NFS v3+, the shared filesystems clusters use), holding who took it:
host, PID, cluster job id and time. It is released on exit. A lock left by a
run that died (kill -9, a node lost) is taken over when it is provably stale:

* same host and its PID no longer runs;
* the same cluster job (``SLURM_JOB_ID`` ...) as ours: a requeued job
  resuming its own workdir on another node;
* its heartbeat (refreshed at every log step) is older than
  :data:`STALE_AFTER_S`: its holder stopped long ago, wherever it ran.

Otherwise the lock is honoured; deleting the file is the manual override.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from agejax.errors import WorkdirInUse

LOCK_FILE = "run.lock"
STALE_AFTER_S = 30 * 60  # no heartbeat for this long: the holder is gone
_JOB_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


def _job_id() -> str | None:
  return next((os.environ[v] for v in _JOB_VARIABLES if os.environ.get(v)), None)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def _holder_text(holder: dict[str, Any]) -> str:
  since = holder.get("since")
  when = (datetime.datetime.fromtimestamp(since).isoformat(timespec="seconds")
          if isinstance(since, (int, float)) else "an unknown time")
  job = f" (job {holder['job']})" if holder.get("job") else ""
  return f"PID {holder.get('pid')} on host {holder.get('host')}{job} since {when}"


class WorkdirLock:
  """The exclusive right to train in ``workdir``; a no-op where ``enabled`` is False."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._workdir = workdir
    self._enabled = enabled
    self._held = False
    self._record = {"host": socket.gethostname(), "pid": os.getpid(), "job": _job_id(),
                    "since": time.time()}

  def _stale(self, holder: dict[str, Any]) -> bool:
    if holder.get("host") == self._record["host"] and isinstance(holder.get("pid"), int):
      return not _alive(holder["pid"])
    if holder.get("job") and holder.get("job") == self._record["job"]:
      return True
    heartbeat = holder.get("heartbeat", holder.get("since"))
    return isinstance(heartbeat, (int, float)) and time.time() - heartbeat > STALE_AFTER_S

  def _read(self) -> dict[str, Any] | None:
    try:
      with open(self.path, encoding="utf-8") as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # half written or garbled: a holder we cannot name

  def _write(self, flags: int) -> None:
    fd = os.open(self.path, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump({**self._record, "heartbeat": time.time()}, f)

  def acquire(self) -> "WorkdirLock":
    """Takes the lock; raises WorkdirInUse when another live run holds it."""
    if not self._enabled:
      return self
    os.makedirs(self._workdir, exist_ok=True)
    for _ in range(3):  # a stale lock removed under us by another taker: try again
      try:
        self._write(os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        self._held = True
        return self
      except FileExistsError:
        holder = self._read()
        if holder is None:
          continue  # released between our two calls
        if holder and not self._stale(holder):
          raise WorkdirInUse(self._workdir, _holder_text(holder), self.path)
        if not holder:
          raise WorkdirInUse(self._workdir, "an unreadable lock", self.path)
        try:
          os.remove(self.path)  # provably stale: its run is gone
        except FileNotFoundError:
          pass
    raise WorkdirInUse(self._workdir, "runs racing for it", self.path)

  def heartbeat(self) -> None:
    """Refreshes the lock's time stamp (cheap; the trainer calls it at log steps)."""
    if self._held:
      try:
        self._write(os.O_WRONLY | os.O_TRUNC)
      except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
          raise  # a full disk shows at the next checkpoint, with its own error

  def release(self) -> None:
    if self._held:
      holder = self._read()
      if holder and holder.get("pid") == self._record["pid"] and \
          holder.get("host") == self._record["host"]:
        os.remove(self.path)
      self._held = False

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def lock_for_every_process(workdir: str) -> WorkdirLock:
  """Process 0 takes the workdir's lock; every process learns whether it got it."""
  lock = WorkdirLock(workdir, enabled=jax.process_index() == 0)
  refusal = None
  try:
    lock.acquire()
  except WorkdirInUse as e:
    refusal = e
  if jax.process_count() > 1:  # all processes stop together, none waits in a collective
    taken = multihost_utils.broadcast_one_to_all(np.int32(refusal is None))
    if not int(taken) and refusal is None:
      refusal = WorkdirInUse(workdir, "another run (process 0 holds the details)", lock.path)
  if refusal is not None:
    raise refusal
  return lock
