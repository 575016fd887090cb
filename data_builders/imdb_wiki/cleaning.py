"""The cleaning rules of IMDB-WIKI: ages from MATLAB dates, drop reasons, face crops.

Rules come in two stages so that every image is counted exactly once:
`judge` looks at the metadata only (run once over the whole release before
any split is generated), and `process` looks at the pixels (run once per kept
row while its split is generated, in a thread pool or in a Beam worker).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import math
import os
import re
from typing import Callable, Iterable, Iterator, TypeVar

from agejax.data import face_crop
from data_builders import common
from . import release

# Drop reasons, in the order the rules are applied.
NO_FACE = "no_face"
LOW_SCORE = "low_score"
SECOND_FACE = "second_face"
BAD_DOB = "bad_dob"
AGE_OUT_OF_RANGE = "age_out_of_range"
MISSING_FILE = "missing_file"
UNDECODABLE = "undecodable"
TOO_SMALL = "too_small"
BAD_BOX = "bad_box"
REASONS = (NO_FACE, LOW_SCORE, SECOND_FACE, BAD_DOB, AGE_OUT_OF_RANGE,
           MISSING_FILE, UNDECODABLE, TOO_SMALL, BAD_BOX)

GENDERS = common.GENDERS

# MATLAB's datenum counts days from the year 0 (datenum(1, 1, 1) == 367);
# Python's ordinal counts from 0001-01-01 == 1.
_MATLAB_TO_ORDINAL = 366


@dataclasses.dataclass(frozen=True)
class Rules:
  """The thresholds of one builder config (plain values, cheap to pickle)."""

  min_face_score: float
  max_second_face_score: float
  min_age: int
  max_age: int
  min_image_side: int
  margin: float
  image_size: int
  reduced_decode: bool = True


@dataclasses.dataclass(frozen=True)
class Task:
  """A row that passed the metadata rules: everything needed to make its example."""

  key: str
  split: str
  location: release.Location
  file_name: str
  box: tuple[float, ...]
  age: int
  gender: str
  identity: str
  source: str
  face_score: float


def datenum_to_date(datenum: float) -> datetime.date | None:
  """The date of a whole MATLAB serial date number; None when it is not one."""
  if not math.isfinite(datenum) or datenum != math.floor(datenum):
    return None  # NaN, inf, or a fraction of a day: not a birth date
  ordinal = int(datenum) - _MATLAB_TO_ORDINAL
  if not 1 <= ordinal <= datetime.date.max.toordinal():
    return None
  return datetime.date.fromordinal(ordinal)


def date_to_datenum(day: datetime.date) -> float:
  return float(day.toordinal() + _MATLAB_TO_ORDINAL)


def age_at_photo(dob: datetime.date, photo_taken: int) -> int:
  """Years completed on July 1st of the photo's year.

  Only the year a photo was taken is known, so it is taken to be mid-year:
  people born before July have had their birthday that year.
  """
  return photo_taken - dob.year - (0 if dob.month < 7 else 1)


def identity_of(row: release.Row) -> str:
  """The person's key: the normalized name, else the release's own id.

  IMDB and Wikipedia share names, so the name (not the source id) is what
  keeps one person in one split across both parts.
  """
  name = common.normalize_name(row.name)
  if name:
    return name
  if row.source == "imdb" and row.celeb_id >= 0:
    return f"imdb:celeb_id:{row.celeb_id}"
  base = row.file_name.rpartition("/")[2]
  match = re.match(r"\d+", base)
  return f"{row.source}:{match.group(0) if match else base}"


def gender_of(value: float) -> str:
  if value == 0:
    return "female"
  if value == 1:
    return "male"
  return "unknown"


def judge(row: release.Row, rules: Rules) -> tuple[str | None, int | None]:
  """(drop reason or None, age) from the metadata alone."""
  if not math.isfinite(row.face_score):
    return NO_FACE, None
  if row.face_score < rules.min_face_score:
    return LOW_SCORE, None
  # NaN means no second face; a finite score is a second face found.
  if (math.isfinite(row.second_face_score)
      and row.second_face_score > rules.max_second_face_score):
    return SECOND_FACE, None
  dob = datenum_to_date(row.dob)
  if dob is None:
    return BAD_DOB, None
  if not math.isfinite(row.photo_taken):
    return AGE_OUT_OF_RANGE, None
  age = age_at_photo(dob, int(row.photo_taken))
  if not rules.min_age <= age <= rules.max_age:
    return AGE_OUT_OF_RANGE, age
  return None, age


def plan(parts: list[release.Part], rules: Rules, fractions: tuple[float, ...],
         report: common.CleaningReport) -> dict[str, list[Task]]:
  """Tasks per split for every row that passes the metadata rules.

  Drops found here go into `report`; kept rows are counted later, when their
  image has been read.
  """
  tasks: dict[str, list[Task]] = {split: [] for split in common.SPLITS}
  for part, row in release.iter_rows(parts):
    reason, age = judge(row, rules)
    location = None
    if reason is None:
      location = part.location(row.file_name)
      if location is None:
        reason = MISSING_FILE
    if reason is not None:
      report.drop(reason)
      continue
    identity = identity_of(row)
    split = common.split_of(identity, fractions)
    tasks[split].append(Task(
        key=f"{row.source}_{row.index:07d}",
        split=split,
        location=location,
        file_name=row.file_name,
        box=row.face_location,
        age=age,
        gender=gender_of(row.gender),
        identity=identity,
        source=row.source,
        face_score=row.face_score,
    ))
  return tasks


def process(task: Task, rules: Rules) -> tuple[str, dict] | str:
  """(key, example) for `task`, or the drop reason. Never raises on bad data."""
  try:
    data = task.location.read()
  except OSError:
    return MISSING_FILE
  box_ok = len(task.box) == 4 and all(math.isfinite(v) for v in task.box)
  try:
    if box_ok:
      # Only the pixels the crop needs: a huge photo decodes at 1/2..1/8 size.
      image, box, (width, height) = face_crop.decode_for_crop(
          data, task.box, margin=rules.margin, size=rules.image_size,
          reduced=rules.reduced_decode)
    else:
      image = face_crop.decode(data)
      box, (width, height) = task.box, image.size
  except face_crop.UndecodableImage:
    return UNDECODABLE
  except ValueError:  # the widened box does not meet the image
    return BAD_BOX
  if min(height, width) < rules.min_image_side:
    return TOO_SMALL
  if not box_ok:
    return BAD_BOX
  try:
    crop = face_crop.crop(image, box, margin=rules.margin, size=rules.image_size)
  except ValueError:  # the widened box does not meet the image
    return BAD_BOX
  return task.key, dict(
      image=face_crop.encode_jpeg(crop),
      age=task.age,
      gender=task.gender,
      identity=task.identity,
      source=task.source,
      file_name=task.file_name,
      face_score=task.face_score,
      face_size=common.face_size(task.box),  # the photo's own pixels, not the reduced decode's
  )


T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                window: int = 256) -> Iterator[R]:
  """`map(fn, items)` on a thread pool, in input order, `window` items in flight.

  PIL releases the GIL while it decodes, resizes and encodes, so threads use
  every core without copying images between processes.
  """
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
  pending: collections.deque[concurrent.futures.Future] = collections.deque()
  try:
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
