"""What every command shows a person: lines on stdout, live progress bars, durations.

Results and summaries are plain lines on stdout (``| tee`` keeps them);
progress bars are tqdm on stderr and only when stderr is a terminal, so logs
and pipes never fill with carriage returns. Lines printed while a bar is live
go through ``tqdm.write`` and do not tear it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Iterator, Sequence, TypeVar

import tqdm

T = TypeVar("T")


def _terminal_stream():
  """The process's own stderr, even while ``sys.stderr`` is redirected to a log."""
  return sys.__stderr__ or sys.stderr


def interactive() -> bool:
  """True when a person watches stderr (a terminal), so a live bar helps."""
  return bool(getattr(_terminal_stream(), "isatty", lambda: False)())


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None,
             desc: str = "", unit: str = "it", initial: int = 0,
             enabled: bool = True) -> tqdm.tqdm:
  """A tqdm bar on stderr, drawn only on a terminal (``enabled`` and interactive)."""
  return tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
                   disable=not (enabled and interactive()), leave=False,
                   dynamic_ncols=True, file=_terminal_stream())


def echo(line: str = "") -> None:
  """One line on stdout that does not break a live progress bar."""
  tqdm.tqdm.write(line, file=sys.stdout)
  sys.stdout.flush()


def duration(seconds: float) -> str:
  """``42s``, ``3m05s``, ``2h07m``: wall times at the precision people read."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{seconds:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


def block(title: str, rows: Sequence[tuple[str, str]]) -> str:
  """A titled block of ``key  value`` rows, the keys aligned; multi-line values indented."""
  width = max((len(k) for k, _ in rows), default=0)
  lines = [title]
  for key, value in rows:
    first, *rest = str(value).split("\n") or [""]
    lines.append(f"  {key:<{width}}  {first}")
    lines.extend(f"  {'':<{width}}  {r}" for r in rest)
  return "\n".join(lines)


@contextlib.contextmanager
def native_stderr_discarded() -> Iterator[None]:
  """Sends file descriptor 2 to /dev/null: C++ code writes there, not to sys.stderr."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
