r"""Ages of the faces in photos: the library behind ``python -m agejax.predict``.

  python -m agejax.predict --model EXPORTED_DIR PATH [PATH ...]
  python -m agejax.predict --workdir RUN_DIR [--checkpoint best] PATH [PATH ...]

PATHs are image files or folders (searched recursively for image
extensions). Each photo is searched for faces (``agejax.serving.face_detect``); each
face is cropped exactly as the training crops were (``face_crop.crop_face``
with the model's margin and stored size) and its age and spread predicted.
One line per face (box, age, spread, and the calibrated interval when the
model has one, :mod:`agejax.evaluation.intervals`)::

  photos/a.jpg, 182 64 265 171, 34.2, 5.1, 28.1-40.3 (90%)

``--json`` prints one JSON object per file instead (``file``, ``width``,
``height``, ``faces``: ``box``, ``score``, ``age``, ``spread``, and with an
interval ``interval`` [low, high] and ``coverage``; ``error``).
``--annotate DIR`` writes a PNG copy of each photo with boxes and ages drawn.
``--no_detect`` treats each image as one face crop already. A photo without a
face prints ``no face found``; an unreadable file prints ``unreadable`` with
the reason, and the rest go on. The exit code is 0 unless no file could be
read at all (1).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from agejax.data import face_crop
from agejax.serving import face_detect
from agejax.serving import inference

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_MAX_PENDING_FILES = 64  # results held back waiting for a batch to fill


def expand_paths(paths: Sequence[str]) -> list[tuple[str, str]]:
  """``(file, name)`` for every file named or found under a named folder.

  ``name`` is the path relative to the folder it was found in (the base name
  for files given directly): where ``--annotate`` writes the copy. Files given
  directly are kept whatever their extension, or existence, so that each is
  reported; folders contribute only files with an image extension, sorted.
  """
  found = []
  for path in paths:
    if not os.path.isdir(path):
      found.append((path, os.path.basename(path)))
      continue
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in sorted(files):
        if name.lower().endswith(IMAGE_EXTENSIONS):
          file = os.path.join(root, name)
          found.append((file, os.path.relpath(file, path)))
  return found


def read_photo(path: str) -> np.ndarray:
  """uint8 RGB pixels of an image file, upright as its EXIF orientation says.

  Raises:
    face_crop.UndecodableImage: missing, unreadable or not an image.
  """
  try:
    with Image.open(path) as img:
      # Phone photos are often stored sideways with an EXIF rotation; the
      # detector looks for upright faces.
      return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
  except Exception as e:  # PIL and the OS raise many types for bad files
    raise face_crop.UndecodableImage(str(e) or type(e).__name__) from e


def _faces(image: np.ndarray, predictor: inference.Predictor, detect: bool,
           options: face_detect.DetectorOptions | None) -> tuple[list[dict], list]:
  """The face records of one photo (ages to come) and their training-rule crops."""
  if not detect:
    height, width = image.shape[:2]
    return ([{"box": [0, 0, width, height], "score": None}],
            [face_crop.crop_face(image, None, size=predictor.stored_size)])
  faces, crops = [], []
  for x1, y1, x2, y2, score in face_detect.detect(image, options):
    crops.append(face_crop.crop_face(image, (x1, y1, x2, y2), margin=predictor.margin,
                                     size=predictor.stored_size))
    faces.append({"box": [round(x1), round(y1), round(x2), round(y2)],
                  "score": round(score, 4)})
  return faces, crops


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ValueError, OSError):  # Pillow without FreeType
    return ImageFont.load_default()


def annotate(image: np.ndarray, faces: list[dict]) -> Image.Image:
  """A copy of ``image`` with each face's box and ``age (low-high)`` or ``age ± spread`` drawn."""
  out = Image.fromarray(image)
  draw = ImageDraw.Draw(out)
  side = min(out.size)
  width = max(2, side // 200)  # visible on a thumbnail and on a 24 MP photo
  font = _font(max(12, side // 25))
  for face in faces:
    x1, y1, x2, y2 = face["box"]
    draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=(255, 40, 40), width=width)
    label = (f"{face['age']:.1f} ({face['interval'][0]:.0f}-{face['interval'][1]:.0f})"
             if "interval" in face else f"{face['age']:.1f} ± {face['spread']:.1f}")
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    label_w, label_h = right - left + 2 * width, bottom - top + 2 * width
    # Above the box when it fits, inside its top edge otherwise.
    ty = y1 - label_h if y1 >= label_h else y1
    draw.rectangle([x1, ty, x1 + label_w, ty + label_h], fill=(255, 40, 40))
    draw.text((x1 + width - left, ty + width - top), label, fill=(255, 255, 255), font=font)
  return out


def _annotation_path(annotate_dir: str, name: str, used: set[str]) -> str:
  stem = os.path.splitext(name)[0] or "image"
  path, count = os.path.join(annotate_dir, stem + ".png"), 1
  while path in used:  # same relative name under two PATH arguments
    count += 1
    path = os.path.join(annotate_dir, f"{stem}-{count}.png")
  used.add(path)
  return path


def iter_predictions(predictor: inference.Predictor, paths: Sequence[str], *,
                     detect: bool = True, annotate_dir: str | None = None,
                     options: face_detect.DetectorOptions | None = None
                     ) -> Iterator[dict[str, Any]]:
  """One result per file (see :func:`predict_paths`), in order, as they finish.

  Faces of consecutive files are predicted together in full batches; a file's
  result is yielded once all of its faces have an age. Only the small face
  crops wait for a batch, never the photos: ``--annotate`` reads a photo
  again to draw on it.
  """
  pending: list[tuple[dict, list]] = []

  def flush():
    ages, spreads = predictor([c for _, crops in pending for c in crops])
    predictor.write_ages([face for record, _ in pending for face in record["faces"]],
                         ages, spreads)
    for record, _ in pending:
      if record.get("annotated"):
        os.makedirs(os.path.dirname(record["annotated"]), exist_ok=True)
        annotate(read_photo(record["file"]), record["faces"]).save(record["annotated"])
    done = [record for record, _ in pending]
    pending.clear()
    return done

  used_names: set[str] = set()
  for file, name in expand_paths(paths):
    record: dict[str, Any] = {"file": file, "faces": [], "error": None}
    crops = []
    try:
      image = read_photo(file)
    except face_crop.UndecodableImage as e:
      record["error"] = f"unreadable: {e}"
    else:
      record["height"], record["width"] = image.shape[:2]
      record["faces"], crops = _faces(image, predictor, detect, options)
      if annotate_dir is not None:
        record["annotated"] = _annotation_path(annotate_dir, name, used_names)
    pending.append((record, crops))
    # A full batch of faces, or a long run of faceless files to report.
    if (sum(len(c) for _, c in pending) >= predictor.batch_size or
        len(pending) >= _MAX_PENDING_FILES):
      yield from flush()
  yield from flush()


def predict_paths(predictor: inference.Predictor, paths: Sequence[str],
                  detect: bool = True, annotate_dir: str | None = None,
                  options: face_detect.DetectorOptions | None = None
                  ) -> list[dict[str, Any]]:
  """Faces, ages and spreads of image files and folders.

  Args:
    predictor: from :func:`agejax.inference.load`.
    paths: image files and folders (searched recursively).
    detect: False: every image is one face crop already.
    annotate_dir: write a PNG copy with boxes and ages per readable file.
    options: face detection parameters.

  Returns:
    Per file: ``file``; ``error`` (None, or ``unreadable: <reason>``);
    ``width``, ``height``; ``faces``, largest first, each with ``box``
    [x1, y1, x2, y2] (pixel edges, x2/y2 exclusive), ``score`` (None without
    detection), ``age``, ``spread``; ``annotated`` (the PNG's path).
  """
  return list(iter_predictions(predictor, paths, detect=detect,
                               annotate_dir=annotate_dir, options=options))


def format_lines(record: dict[str, Any]) -> list[str]:
  """The plain-text lines of one file's result."""
  if record["error"]:
    return [f"{record['file']}, {record['error']}"]
  if not record["faces"]:
    return [f"{record['file']}, no face found"]
  return [f"{record['file']}, {' '.join(str(v) for v in face['box'])}, "
          f"{face['age']:.1f}, {face['spread']:.1f}" + _interval_text(face)
          for face in record["faces"]]


def _interval_text(face: dict[str, Any]) -> str:
  """``, 28.1-40.3 (90%)`` for a model with a calibrated interval, else nothing."""
  if "interval" not in face:
    return ""
  low, high = face["interval"]
  return f", {low:.1f}-{high:.1f} ({100 * face['coverage']:g}%)"
