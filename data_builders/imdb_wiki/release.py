"""Reading the public IMDB-WIKI release: archives or folders, and the .mat metadata.

The release is two parts, each either the original uncompressed tar or that
tar extracted into the manual directory:

  imdb_crop.tar  or  imdb_crop/   with imdb_crop/imdb.mat and imdb_crop/NN/*.jpg
  wiki_crop.tar  or  wiki_crop/   with wiki_crop/wiki.mat and wiki_crop/NN/*.jpg

Images are read straight out of the tar through an index of member offsets,
so nothing has to be extracted first, and any reader (a thread here, a Beam
worker elsewhere) can fetch one image by (path, offset, size) without sharing
an open archive.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
from typing import Iterator

from etils import epath
import numpy as np
import scipy.io

from data_builders import common

SOURCES = ("imdb", "wiki")


@dataclasses.dataclass(frozen=True)
class Location:
  """Where the bytes of one file are: a whole file, or a slice of a tar."""

  path: str
  offset: int = 0
  size: int = -1  # -1: the whole file

  def read(self) -> bytes:
    with epath.Path(self.path).open("rb") as f:
      if self.size < 0:
        return f.read()
      f.seek(self.offset)
      return f.read(self.size)


@dataclasses.dataclass(frozen=True)
class Row:
  """One entry of imdb.mat / wiki.mat, as stored (no cleaning yet)."""

  source: str  # imdb | wiki
  index: int  # position in the .mat arrays
  file_name: str  # path inside the release, e.g. imdb_crop/01/nm0000001_....jpg
  name: str  # "" when the .mat has no name
  dob: float  # MATLAB serial date number
  photo_taken: float  # year
  gender: float  # 0 female, 1 male, NaN unknown
  face_location: tuple[float, ...]  # x1, y1, x2, y2 (empty when absent)
  face_score: float  # -inf: no face found
  second_face_score: float  # NaN: no second face
  celeb_id: int  # IMDB only; -1 elsewhere


class Part:
  """One part of the release (imdb or wiki), as a tar or as a folder."""

  def __init__(self, source: str, root: epath.Path, tar: epath.Path | None):
    self.source = source
    self.prefix = f"{source}_crop"
    self._root = root  # the extracted `<source>_crop/` folder, or the manual dir
    self._tar = tar
    self._index: dict[str, tuple[int, int]] | None = None
    self._listed: dict[str, frozenset[str]] = {}

  @property
  def form(self) -> str:
    return "tar" if self._tar is not None else "folder"

  def _tar_index(self) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size), from one pass over the headers."""
    if self._index is None:
      index = {}
      try:
        with self._tar.open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
          for member in tar:
            if member.isfile():
              index[_clean_member_name(member.name)] = (member.offset_data, member.size)
      except (tarfile.TarError, EOFError, OSError) as e:
        raise common.ReleaseError(self._tar, f"not a readable tar archive ({e}); expected "
                                  f"the {self.prefix}.tar of the release: download it "
                                  "again") from e
      self._index = index
    return self._index

  def location(self, file_name: str) -> Location | None:
    """Where `file_name` (a release path) is, or None when it is missing."""
    if self._tar is not None:
      entry = self._tar_index().get(file_name)
      return None if entry is None else Location(str(self._tar), *entry)
    relative = file_name[len(self.prefix) + 1:]
    parent, _, base = relative.rpartition("/")
    if parent not in self._listed:
      # One listing per folder (about 100 of them) instead of a stat per image.
      folder = self._root / parent if parent else self._root
      self._listed[parent] = frozenset(
          p.name for p in folder.iterdir()) if folder.is_dir() else frozenset()
    if base not in self._listed[parent]:
      return None
    return Location(str(self._root / relative))

  def rows(self) -> list[Row]:
    mat_name = f"{self.prefix}/{self.source}.mat"
    location = self.location(mat_name)
    if location is None:
      raise FileNotFoundError(f"{mat_name} is missing from the {self.form} {self.describe()}")
    return read_mat(location.read(), self.source, where=f"{mat_name} in {self.describe()}")

  def describe(self) -> str:
    return str(self._tar if self._tar is not None else self._root)


def find_parts(manual_dir: epath.Path) -> list[Part]:
  """The parts present in `manual_dir`; an extracted folder wins over its tar."""
  parts = []
  for source in SOURCES:
    folder = manual_dir / f"{source}_crop"
    tar = manual_dir / f"{source}_crop.tar"
    if (folder / f"{source}.mat").exists():
      parts.append(Part(source, folder, None))
    elif tar.exists():
      parts.append(Part(source, manual_dir, tar))
  return parts


def _clean_member_name(name: str) -> str:
  return name[2:] if name.startswith("./") else name


def _as_str(cell) -> str:
  """A MATLAB char array (or empty cell) as a Python string."""
  values = np.asarray(cell).reshape(-1)
  if values.size == 0:
    return ""
  if values.dtype.kind in "US":
    return "".join(str(v) for v in values).strip()
  return _as_str(values[0])  # a cell holding a char array


def _as_floats(cell) -> tuple[float, ...]:
  return tuple(float(v) for v in np.asarray(cell, dtype=np.float64).reshape(-1))


def _as_id(cell) -> int:
  values = _as_floats(cell)
  return int(values[0]) if values and np.isfinite(values[0]) else -1


_FIELDS = ("full_path", "dob", "photo_taken", "gender", "face_location", "face_score",
           "second_face_score")


def _struct_fields(mat: dict, name: str, where: str) -> dict[str, np.ndarray]:
  """The fields of the 1x1 struct `name`, each flattened to its N entries."""
  found = sorted(k for k in mat if not k.startswith("__"))
  if name not in mat:
    raise common.ReleaseError(where, f"no struct named {name!r} (found {found}); expected "
                              f"the {name}.mat of the IMDB-WIKI release")
  values = np.asarray(mat[name]).reshape(-1)
  if not values.size or values.dtype.names is None:
    raise common.ReleaseError(where, f"{name!r} is not a MATLAB struct (a "
                              f"{values.dtype} array); expected the {name}.mat of the release")
  struct = values[0]
  missing = [f for f in _FIELDS if f not in values.dtype.names]
  if missing:
    raise common.ReleaseError(where, f"struct {name!r} lacks field(s) {missing}; expected "
                              f"{list(_FIELDS)} (found {list(values.dtype.names)})")
  return {field: np.asarray(struct[field]).reshape(-1) for field in values.dtype.names}


def read_mat(data: bytes, source: str, where: str | None = None) -> list[Row]:
  """Rows of imdb.mat / wiki.mat (MATLAB v5 struct of 1xN fields).

  Raises:
    ReleaseError: naming ``where`` (default ``<source>.mat``) when the bytes
      are not a readable .mat or lack the release's struct and fields.
  """
  where = where or f"{source}.mat"
  try:
    # Explicit indexing (no squeeze_me) keeps a one-image file the same shape
    # as a half-million-image one.
    mat = scipy.io.loadmat(io.BytesIO(data))
  except Exception as e:  # scipy raises ValueError, OSError, TypeError, MatReadError...
    raise common.ReleaseError(where, f"not a readable MATLAB .mat file ({type(e).__name__}: "
                              f"{e}); download the release's {source}.mat again") from e
  fields = _struct_fields(mat, source, where)
  n = fields["full_path"].size
  for field in ("dob", "photo_taken", "gender", "face_location", "face_score",
                "second_face_score"):
    if fields[field].size != n:
      raise common.ReleaseError(where, f"field {field} has {fields[field].size} entries, "
                                f"full_path has {n}")
  names = fields.get("name")
  celeb_ids = fields.get("celeb_id")
  if names is None or names.size != n:
    names = np.full(n, "", dtype=object)
  if celeb_ids is None or celeb_ids.size != n:
    celeb_ids = np.full(n, -1.0)
  rows = []
  for i in range(n):
    rows.append(Row(
        source=source,
        index=i,
        file_name=f"{source}_crop/{_as_str(fields['full_path'][i])}",
        name=_as_str(names[i]),
        dob=float(fields["dob"][i]),
        photo_taken=float(fields["photo_taken"][i]),
        gender=float(fields["gender"][i]),
        face_location=_as_floats(fields["face_location"][i]),
        face_score=float(fields["face_score"][i]),
        second_face_score=float(fields["second_face_score"][i]),
        celeb_id=_as_id(celeb_ids[i]),
    ))
  return rows


def iter_rows(parts: list[Part]) -> Iterator[tuple[Part, Row]]:
  for part in parts:
    for row in part.rows():
      yield part, row
