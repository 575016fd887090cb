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

* its heartbeat (or, for an empty or unreadable lock, the file's time) is
  older than :data:`STALE_AFTER_S`: on the same host too, where a live PID
  may be another program that reused the dead run's number.

Otherwise the lock is honoured; deleting the file is the manual override.

Taking over is atomic: the check, the removal and the new lock happen under
an exclusive ``flock`` on ``DIR/run.lock.guard``, so of two processes that
find one stale lock at once exactly one takes it. ``flock`` is local to a
host on most shared filesystems, but Linux's NFS client maps it to NFS byte-
range locks (NFSv4, or v3 with lockd), which the server arbitrates across
hosts; where the filesystem has no locks, the takeover runs without the
guard, as before.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from agejax.errors import RunFailed, WorkdirInUse

LOCK_FILE = "run.lock"
GUARD_FILE = "run.lock.guard"
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


def _owner(path: str) -> str:
  try:
    import pwd  # pylint: disable=import-outside-toplevel
    return pwd.getpwuid(os.stat(path).st_uid).pw_name
  except (KeyError, OSError, ImportError):
    return "another user"


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
    same_host = holder.get("host") == self._record["host"]
    if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
      return True
    if holder.get("job") and holder.get("job") == self._record["job"]:
      return True
    heartbeat = holder.get("heartbeat", holder.get("since"))
    return isinstance(heartbeat, (int, float)) and time.time() - heartbeat > STALE_AFTER_S

  def _old_file(self) -> bool:
    """An empty or unreadable lock whose file has not changed for STALE_AFTER_S."""
    try:
      return time.time() - os.stat(self.path).st_mtime > STALE_AFTER_S
    except FileNotFoundError:
      return True

  def _read(self) -> dict[str, Any] | None:
    try:
      with open(self.path, encoding="utf-8") as f:
        holder = json.load(f)
      return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # half written or garbled: a holder we cannot name

  def _write(self, flags: int) -> None:
    fd = os.open(self.path, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump({**self._record, "heartbeat": time.time()}, f)

  @contextlib.contextmanager
  def _guard(self):
    """An exclusive flock on the guard file for the takeover (none where unsupported)."""
    try:
      fd = os.open(os.path.join(self._workdir, GUARD_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
      yield
      return
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX)
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
          raise
      yield
    finally:
      os.close(fd)  # closing releases the flock

  def _create(self) -> bool:
    """Creates the lock; False when one exists. A failed write leaves no lock behind."""
    try:
      self._write(os.O_WRONLY | os.O_CREAT | os.O_EXCL)
      return True
    except FileExistsError:
      return False
    except OSError as e:  # created, then the disk was full: an empty lock would block reruns
      with contextlib.suppress(OSError):
        os.remove(self.path)
      raise RunFailed(f"cannot write the run lock {self.path}: {e.strerror or e}") from None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock; raises WorkdirInUse when another live run holds it."""
    if not self._enabled:
      return self
    os.makedirs(self._workdir, exist_ok=True)
    if self._create():
      self._held = True
      return self
    with self._guard():  # the takeover: decided and done by one process at a time
      holder = self._read()
      if holder and not self._stale(holder):
        raise WorkdirInUse(self._workdir, _holder_text(holder), self.path)
      if holder == {} and not self._old_file():
        raise WorkdirInUse(self._workdir, "an unreadable lock", self.path)
      try:
        os.remove(self.path)  # provably stale: its run is gone
      except FileNotFoundError:
        pass
      except PermissionError:
        owner = _owner(self.path)
        raise WorkdirInUse(self._workdir, f"a stale lock owned by {owner} that this user cannot "
                           "remove", self.path) from None
      if not self._create():
        raise WorkdirInUse(self._workdir, "a run that started while this one took over",
                           self.path)
    self._held = True
    return self

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
