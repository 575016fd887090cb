"""Every JSON file agejax writes goes through :func:`write_json`: whole or not at all.

The text goes to a temporary file beside the target, then ``os.replace``
renames it over the target (atomic on POSIX), so a crash, a full disk or a
reader racing the writer sees the old file or the new one, never half of
one (a half-written ``model.json`` or ``summary.json`` would otherwise be read
as a complete, garbled record).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import Any

from agejax.errors import RunFailed


def write_text(path: str, text: str) -> None:
  """Replaces ``path`` with ``text`` atomically; creates its folder if needed."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                   suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide results from a shared group
    os.replace(temporary, path)
  except BaseException as e:
    if os.path.exists(temporary):
      os.remove(temporary)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
      raise RunFailed(f"cannot write {path}: {e.strerror}; free space (or fix the mount), "
                      "then run the same command again") from None
    raise


def write_json(path: str, document: Any, *, indent: int | None = 1, sort_keys: bool = False,
               default: Any = None) -> None:
  """``json.dumps(document)`` plus a newline, written by :func:`write_text`."""
  write_text(path, json.dumps(document, indent=indent, sort_keys=sort_keys,
                              default=default) + "\n")
