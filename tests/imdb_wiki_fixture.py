"""A small IMDB-WIKI release in the real format, and what building it must give.

`write_release(root, n_imdb, n_wiki, seed, archive)` writes `imdb_crop/` and
`wiki_crop/` (or `imdb_crop.tar` and `wiki_crop.tar`) with `imdb.mat` /
`wiki.mat` saved by scipy.io.savemat in the release's layout (a 1x1 struct
whose fields are 1xN arrays and cells) and JPEGs written by PIL. The first
rows of each part are hand-made cases (grayscale and CMYK JPEGs, a corrupt
file, a 1x1 image, a missing file, no face, a low score, a second face, ages
out of range, bad birth dates, a person in both parts, ...); the rest are
ordinary people with one to three photos each. The returned `Outcome` says,
for the `clean` and `raw` configs, which rows are kept in which split and
which are dropped for which reason.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import pathlib
import tarfile

import numpy as np
from PIL import Image
import scipy.io

from data_builders import common

CONFIGS = ("clean", "raw")
_NAN = float("nan")
_INF = float("inf")
_SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tu", "vel", "dor", "an", "bri", "co", "ez")


@dataclasses.dataclass
class FixtureRow:
  """One row of a .mat file and what each config must do with it."""

  source: str
  file_name: str  # release path, e.g. imdb_crop/07/nm0000107_rm1_1980-6-30_2000.jpg
  case: str  # "person" for ordinary rows, else the hand-made case's name
  identity: str
  age: int | None  # None where no age can be computed
  gender: str
  fate: dict[str, str]  # config -> split kept in, or drop reason
  box: tuple[float, float, float, float]  # face_location, pixels of the photo


@dataclasses.dataclass
class Outcome:
  rows: list[FixtureRow]

  def kept(self, config: str) -> dict[str, int]:
    """Examples per split (every split listed, zeros included)."""
    counts = {split: 0 for split in common.SPLITS}
    for row in self.rows:
      if row.fate[config] in counts:
        counts[row.fate[config]] += 1
    return counts

  def dropped(self, config: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in self.rows:
      if row.fate[config] not in common.SPLITS:
        counts[row.fate[config]] = counts.get(row.fate[config], 0) + 1
    return dict(sorted(counts.items()))

  def report(self, config: str) -> dict:
    """The cleaning report JSON the build must write."""
    kept = {s: n for s, n in self.kept(config).items() if n}
    dropped = self.dropped(config)
    return dict(total=len(self.rows), kept=sum(kept.values()), dropped=sum(dropped.values()),
                kept_per_split=dict(sorted(kept.items())), dropped_per_reason=dropped)

  def row(self, case: str, source: str | None = None) -> FixtureRow:
    return next(r for r in self.rows if r.case == case and source in (None, r.source))


def _datenum(day: datetime.date) -> float:
  return float(day.toordinal() + 366)


@dataclasses.dataclass
class _Spec:
  """How to write one row."""

  case: str
  name: str
  dob: datetime.date | None
  dob_value: float | None = None  # overrides the datenum of dob (bad dates)
  age: int = 30
  gender: float = 1.0
  face_score: float = 3.0
  second_face_score: float = _NAN
  mode: str = "RGB"  # RGB | L | CMYK | corrupt | missing | 1x1
  box: tuple[float, float, float, float] | None = None
  # fate per config: a drop reason, or None for "kept"
  clean: str | None = None
  raw: str | None = None


def _hand_made(source: str) -> list[_Spec]:
  d = datetime.date
  shared = "José  Ferrer" if source == "imdb" else "jose ferrer"
  specs = [
      _Spec("shared_person", shared, d(1912, 1, 8), age=40),
      _Spec("grayscale", "Gray Tone", d(1950, 3, 3), mode="L", age=25),
      _Spec("cmyk", "Cyan Key", d(1960, 9, 9), mode="CMYK", age=33, gender=0.0),
  ]
  if source == "wiki":
    return specs + [
        _Spec("no_name", "", d(1970, 2, 2), age=22),
        _Spec("corrupt", "Wiki Broken", d(1970, 2, 2), mode="corrupt",
              clean="undecodable", raw="undecodable"),
    ]
  return specs + [
      _Spec("june_30", "June Born", d(1980, 6, 30), age=20),
      _Spec("july_1", "July Born", d(1980, 7, 1), age=19),
      _Spec("unknown_gender", "Pat Unsure", d(1975, 5, 5), gender=_NAN),
      _Spec("no_name", "", d(1971, 4, 4), age=31),
      _Spec("corrupt", "Bits Broken", d(1970, 1, 1), mode="corrupt",
            clean="undecodable", raw="undecodable"),
      _Spec("one_pixel", "Tiny Dot", d(1970, 1, 1), mode="1x1", box=(0, 0, 1, 1),
            clean="too_small"),
      _Spec("missing", "Gone Away", d(1970, 1, 1), mode="missing",
            clean="missing_file", raw="missing_file"),
      _Spec("no_face", "Blank Stare", d(1970, 1, 1), face_score=-_INF, box=(1, 1, 1, 1),
            clean="no_face", raw="no_face"),
      _Spec("low_score", "Blurry Shot", d(1970, 1, 1), face_score=0.5, clean="low_score"),
      _Spec("second_face", "Crowd Scene", d(1970, 1, 1), second_face_score=2.5,
            clean="second_face"),
      _Spec("too_old", "Very Old", d(1901, 1, 1), age=105,
            clean="age_out_of_range", raw="age_out_of_range"),
      _Spec("negative_age", "Not Born", d(1990, 1, 1), age=-2,
            clean="age_out_of_range", raw="age_out_of_range"),
      _Spec("dob_fraction", "Half Day", d(1970, 1, 1), dob_value=_datenum(d(1970, 1, 1)) + 0.5,
            clean="bad_dob", raw="bad_dob"),
      _Spec("dob_zero", "Zero Day", None, dob_value=0.0, clean="bad_dob", raw="bad_dob"),
      _Spec("dob_nan", "Nan Day", None, dob_value=_NAN, clean="bad_dob", raw="bad_dob"),
      _Spec("dob_huge", "Far Future", None, dob_value=1e9, clean="bad_dob", raw="bad_dob"),
      _Spec("bad_box", "Off Frame", d(1970, 1, 1), box=(500, 500, 600, 600),
            clean="bad_box", raw="bad_box"),
  ]


def _name_in_split(rng: np.random.Generator, split: str, taken: set[str]) -> str:
  """A new made-up name that `common.split_of` puts in `split`."""
  while True:
    first, last = ("".join(rng.choice(_SYLLABLES, size=k)).title()
                   for k in rng.integers(2, 4, size=2))
    name = f"{first} {last}"
    key = common.normalize_name(name)
    if key not in taken and common.split_of(key) == split:
      taken.add(key)
      return name


def _people(rng: np.random.Generator, n: int, taken: set[str]) -> list[_Spec]:
  """`n` ordinary rows: people with 1-3 photos, people cycling through the splits."""
  specs: list[_Spec] = []
  person = 0
  while len(specs) < n:
    name = _name_in_split(rng, common.SPLITS[person % 3], taken)
    person += 1
    gender = float(rng.integers(0, 2))
    dob = datetime.date(int(rng.integers(1900, 1995)), int(rng.integers(1, 13)),
                        int(rng.integers(1, 29)))
    for _ in range(min(int(rng.integers(1, 4)), n - len(specs))):
      specs.append(_Spec("person", name, dob, age=int(rng.integers(0, 101)), gender=gender))
  return specs


def _jpeg(rng: np.random.Generator, mode: str, height: int, width: int,
          box: tuple[float, ...]) -> bytes:
  """A smooth background with a brighter 'face' inside `box`."""
  yy, xx = np.mgrid[0:height, 0:width]
  base = rng.integers(0, 256, size=3)
  pixels = np.stack([(base[c] + 60 * np.sin((xx + c * 7) / 9.0) + yy // 3) % 256
                     for c in range(3)], axis=-1).astype(np.uint8)
  x1, y1, x2, y2 = (int(v) for v in box)
  pixels[y1:y2, x1:x2] = np.clip(pixels[y1:y2, x1:x2].astype(int) + 70, 0, 255)
  image = Image.fromarray(pixels)
  if mode != "RGB":
    image = image.convert(mode)
  out = io.BytesIO()
  image.save(out, format="JPEG", quality=90)
  return out.getvalue()


def _cell(values: list) -> np.ndarray:
  """A 1xN MATLAB cell array."""
  cell = np.empty((1, len(values)), dtype=object)
  for i, value in enumerate(values):
    cell[0, i] = value
  return cell


def write_release(root: str | pathlib.Path, n_imdb: int, n_wiki: int, seed: int,
                  archive: bool = False, *,
                  image_sizes: tuple[int, int] = (32, 64)) -> Outcome:
  """Writes the release under `root` and returns what a build must give.

  Args:
    root: the manual dir to write into (created if needed).
    n_imdb: rows in imdb.mat (at least the hand-made IMDB cases, 20).
    n_wiki: rows in wiki.mat (at least the hand-made Wikipedia cases, 5).
    seed: makes names, dates and pixels.
    archive: write imdb_crop.tar and wiki_crop.tar instead of the folders.
    image_sizes: smallest and largest side of the source photos, in pixels.
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  taken = {common.normalize_name(s.name) for src in ("imdb", "wiki") for s in _hand_made(src)}
  rows: list[FixtureRow] = []
  for source, n in (("imdb", n_imdb), ("wiki", n_wiki)):
    specs = _hand_made(source)
    if n < len(specs):
      raise ValueError(f"n_{source} must be at least {len(specs)} (the hand-made cases)")
    specs += _people(rng, n - len(specs), taken)
    files, mat = _write_part(rng, source, specs, image_sizes, rows)
    files[f"{source}_crop/{source}.mat"] = mat
    if archive:
      with tarfile.open(root / f"{source}_crop.tar", "w") as tar:
        for name, data in files.items():
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
    else:
      for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
  return Outcome(rows)


def _write_part(rng, source, specs, image_sizes, rows):
  """(files by release path, .mat bytes) of one part; appends to `rows`."""
  fields = {k: [] for k in ("dob", "photo_taken", "full_path", "gender", "name",
                            "face_location", "face_score", "second_face_score", "celeb_id")}
  celeb_names: list[str] = []
  files: dict[str, bytes] = {}
  for i, spec in enumerate(specs):
    dob = spec.dob or datetime.date(1970, 1, 1)
    photo = dob.year + spec.age + (1 if dob.month >= 7 else 0)
    person_id = 1000 + i
    stem = f"{dob.year}-{dob.month}-{dob.day}_{photo}.jpg"
    if source == "imdb":
      path = f"{person_id % 100:02d}/nm{person_id:07d}_rm{1000 + 7 * i}_{stem}"
    else:
      path = f"{person_id % 100:02d}/{person_id}_{stem}"
    height, width = (int(v) for v in rng.integers(image_sizes[0], image_sizes[1] + 1, size=2))
    if spec.mode == "1x1":
      height = width = 1
    box = spec.box or (width * 0.25, height * 0.2, width * 0.75, height * 0.8)
    file_name = f"{source}_crop/{path}"
    if spec.mode == "corrupt":
      files[file_name] = b"\xff\xd8\xff\xe0 this is not a JPEG" + bytes(rng.integers(0, 256, 64))
    elif spec.mode != "missing":
      files[file_name] = _jpeg(rng, spec.mode if spec.mode != "1x1" else "RGB",
                               height, width, box)
    if spec.name and spec.name not in celeb_names:
      celeb_names.append(spec.name)
    celeb_id = celeb_names.index(spec.name) + 1 if spec.name else 900 + i
    fields["dob"].append(spec.dob_value if spec.dob_value is not None else _datenum(dob))
    fields["photo_taken"].append(float(photo))
    fields["full_path"].append(path)
    fields["gender"].append(spec.gender)
    fields["name"].append(spec.name)
    fields["face_location"].append(np.array([box], dtype=np.float64))
    fields["face_score"].append(spec.face_score)
    fields["second_face_score"].append(spec.second_face_score)
    fields["celeb_id"].append(float(celeb_id))

    if spec.name:
      identity = common.normalize_name(spec.name)
    elif source == "imdb":
      identity = f"imdb:celeb_id:{celeb_id}"
    else:
      identity = f"wiki:{person_id}"
    split = common.split_of(identity)
    gender = {0.0: "female", 1.0: "male"}.get(spec.gender, "unknown")
    rows.append(FixtureRow(
        source=source, file_name=file_name, case=spec.case, identity=identity,
        age=None if spec.dob is None or spec.dob_value is not None else spec.age,
        gender=gender, fate={"clean": spec.clean or split, "raw": spec.raw or split},
        box=tuple(float(v) for v in box)))

  struct = {}
  for key, values in fields.items():
    if key in ("full_path", "name", "face_location"):
      struct[key] = _cell(values)
    elif key != "celeb_id" or source == "imdb":
      struct[key] = np.array([values], dtype=np.float64)
  if source == "imdb":
    struct["celeb_names"] = _cell(celeb_names)
  out = io.BytesIO()
  scipy.io.savemat(out, {source: struct})
  return files, out.getvalue()
