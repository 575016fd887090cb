"""Cartoon faces whose drawing follows their age, for a dataset that needs no download.

Age shows in three ways, each over part of the range, as in real faces:
  * proportions (0-18 years): a child's head is smaller and rounder, the eyes
    sit lower and are larger;
  * grey hair (from about 20 years, white at about 90): hair and eyebrows fade
    from their own dark colour to a light grey;
  * wrinkles: forehead lines from 25 years (one more every 10 years, darker
    with age), laugh lines from 35, crow's feet from 40, eye bags from 50.
Everything else is nuisance a model has to see past: skin tone, hair and eye
colour, background and shirt colour, face position and size, gender
(long or short hair), brightness and sensor noise.

Faces are drawn with PIL at twice the stored size and reduced, so lines keep
their weight at small sizes. Geometry is in units of the image side.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

MAX_AGE = 100
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
# Rows and columns (fractions of the side) that every face's hair covers,
# whatever its size, position or gender: where hair colour can be read.
HAIR_PATCH_ROWS = (0.21, 0.27)
HAIR_PATCH_COLS = (0.45, 0.55)

_DARK_HAIR = np.array([[22, 18, 16], [45, 30, 20], [70, 45, 28], [85, 40, 25], [60, 50, 40]], float)
_IRIS = np.array([[90, 55, 30], [60, 100, 160], [70, 110, 60], [40, 30, 25]], float)
_LIGHT_SKIN = np.array([245, 210, 185], float)
_DARK_SKIN = np.array([95, 60, 40], float)


@dataclasses.dataclass(frozen=True)
class Face:
  """Everything that decides one picture."""
  age: int
  gender: str  # "female" or "male"
  skin: np.ndarray  # RGB floats
  hair: np.ndarray  # RGB of the hair before greying
  grey: float  # 0 (own colour) .. 1 (fully grey)
  grey_level: float  # brightness of fully grey hair
  iris: np.ndarray
  background: np.ndarray
  shirt: np.ndarray
  center: tuple[float, float]  # face centre (x, y)
  scale: float  # random head size factor, on top of the age's
  aspect: float  # face width / height
  hairline: float  # sine of the hairline's angle on the face ellipse
  gain: float  # brightness factor of the whole picture
  noise: float  # std of the pixel noise (0..255 scale)


def growth(age: float) -> float:
  """0 at birth .. 1 from 18 years: how far the face has grown up."""
  return float(np.clip(age / 18.0, 0.0, 1.0))


def sample_face(rng: np.random.Generator) -> Face:
  """A random face, age uniform in 0..MAX_AGE."""
  age = int(rng.integers(0, MAX_AGE + 1))
  # Greying starts at its own age for each person (+-4 years).
  grey = float(np.clip((age + rng.normal(0.0, 4.0) - 20.0) / 70.0, 0.0, 1.0))
  tone = rng.uniform()
  return Face(
      age=age,
      gender="female" if rng.uniform() < 0.5 else "male",
      skin=np.clip((1 - tone) * _LIGHT_SKIN + tone * _DARK_SKIN + rng.normal(0, 6, 3), 0, 255),
      hair=np.clip(_DARK_HAIR[rng.integers(len(_DARK_HAIR))] + rng.normal(0, 6, 3), 0, 255),
      grey=grey,
      grey_level=float(rng.uniform(195, 235)),
      iris=_IRIS[rng.integers(len(_IRIS))],
      background=rng.uniform(20, 235, 3),
      shirt=rng.uniform(20, 235, 3),
      center=(0.5 + float(rng.uniform(-0.03, 0.03)), 0.56 + float(rng.uniform(-0.02, 0.02))),
      scale=float(rng.uniform(0.96, 1.04)),
      aspect=float(rng.uniform(-0.03, 0.03)),
      hairline=float(rng.uniform(0.64, 0.72)),
      gain=float(rng.uniform(0.92, 1.08)),
      noise=float(rng.uniform(2.0, 6.0)),
  )


def _rgb(color: np.ndarray) -> tuple[int, int, int]:
  return tuple(int(round(c)) for c in np.clip(color, 0, 255))


def _box(x: float, y: float, rx: float, ry: float, side: float) -> list[float]:
  """PIL bounding box of the ellipse centred at (x, y), in pixels."""
  return [(x - rx) * side, (y - ry) * side, (x + rx) * side, (y + ry) * side]


def draw_face(face: Face, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
  """The face as uint8 RGB [size, size, 3]; ``rng`` draws its pixel noise."""
  side = 2 * size  # drawn at twice the size, then reduced
  img = Image.new("RGB", (side, side), _rgb(face.background))
  draw = ImageDraw.Draw(img)
  px = lambda points: [(x * side, y * side) for x, y in points]
  lw = max(1, round(side / 64))  # line width: one stored pixel at 32 px

  g = growth(face.age)
  cx, cy = face.center
  rh = 0.34 * face.scale * (0.90 + 0.10 * g)  # half height of the face
  rw = rh * (0.92 - 0.14 * g + face.aspect)  # rounder when young
  skin, shade = face.skin, face.skin * 0.88
  hair = (1 - face.grey) * face.hair + face.grey * face.grey_level
  eye_y = cy - rh + (0.56 - 0.12 * g) * 2 * rh  # eyes sit lower in a child
  nose_y = eye_y + (0.26 + 0.06 * g) * rh
  mouth_y = eye_y + (0.48 + 0.12 * g) * rh

  # Back to front: hair behind the head, neck and shirt, ears, face.
  if face.gender == "female":
    draw.rectangle(_box(cx, cy + 0.55 * rh, 1.15 * rw, 0.75 * rh, side), fill=_rgb(hair))
  # Short hair ends at the ears: the part of the hair ellipse above a chord.
  hair_box = _box(cx, cy - 0.10 * rh, 1.15 * rw, 1.25 * rh, side)
  if face.gender == "female":
    draw.ellipse(hair_box, fill=_rgb(hair))
  else:
    draw.chord(hair_box, 165, 15, fill=_rgb(hair))
  draw.rectangle(_box(cx, cy + 1.0 * rh, 0.42 * rw, 0.45 * rh, side), fill=_rgb(shade))
  draw.ellipse(_box(cx, cy + 1.75 * rh, 1.7 * rw, 0.6 * rh, side), fill=_rgb(face.shirt))
  for sx in (-1, 1):
    draw.ellipse(_box(cx + sx * rw, eye_y + 0.12 * rh, 0.13 * rw, 0.2 * rh, side), fill=_rgb(shade))
  face_box = _box(cx, cy, rw, rh, side)
  draw.ellipse(face_box, fill=_rgb(skin))
  # The hair cap above the hairline: a chord of the face ellipse.
  angle = float(np.degrees(np.arcsin(face.hairline)))
  draw.chord(face_box, 180 + angle, 360 - angle, fill=_rgb(hair))

  # Eyes, brows, nose, mouth.
  eye_r = rw * (0.20 - 0.06 * g)
  for sx in (-1, 1):
    ex = cx + sx * 0.42 * rw
    draw.ellipse(_box(ex, eye_y, eye_r, 0.75 * eye_r, side), fill=(245, 245, 240))
    draw.ellipse(_box(ex, eye_y, 0.55 * eye_r, 0.55 * eye_r, side), fill=_rgb(face.iris))
    draw.ellipse(_box(ex, eye_y, 0.25 * eye_r, 0.25 * eye_r, side), fill=(10, 10, 10))
    brow_y = eye_y - 1.3 * eye_r
    draw.line(px([(ex - sx * 0.6 * eye_r, brow_y + 0.1 * eye_r), (ex + sx * 1.1 * eye_r, brow_y)]),
              fill=_rgb(hair * 0.85), width=2 * lw)
  draw.line(px([(cx, nose_y - 0.12 * rh), (cx - 0.06 * rw, nose_y), (cx + 0.04 * rw, nose_y)]),
            fill=_rgb(skin * 0.7), width=lw)
  lips = np.array([185, 80, 90]) if face.gender == "female" else skin * 0.75 + [30, 0, 0]
  draw.line(px([(cx - 0.28 * rw, mouth_y), (cx, mouth_y + 0.04 * rh), (cx + 0.28 * rw, mouth_y)]),
            fill=_rgb(lips), width=2 * lw)

  # Wrinkles, each kind from its own age, darker the older the face.
  age = face.age
  dark = 0.15 + 0.45 * float(np.clip((age - 25) / 60.0, 0.0, 1.0))
  line = _rgb(skin * (1 - dark))
  top = cy - face.hairline * rh + 0.04 * rh
  bottom = eye_y - 1.3 * eye_r - 0.08 * rh
  count = min(5, (age - 25) // 10 + 1) if age >= 25 else 0
  for i in range(count):
    y = top + (i + 1) * (bottom - top) / (count + 1)
    bow = 0.02 * rh  # lines bend up in the middle
    draw.line(px([(cx - 0.5 * rw, y + bow), (cx, y - bow), (cx + 0.5 * rw, y + bow)]),
              fill=line, width=lw)
  for sx in (-1, 1):
    if age >= 35:  # laugh lines, nose wing to mouth corner
      draw.line(px([(cx + sx * 0.22 * rw, nose_y), (cx + sx * 0.38 * rw, mouth_y + 0.06 * rh)]),
                fill=line, width=lw)
    if age >= 40:  # crow's feet at the outer eye corner
      x0 = cx + sx * (0.42 * rw + 1.1 * eye_r)
      for dy in (-0.5, 0.0, 0.5)[: 2 + (age >= 60)]:
        draw.line(px([(x0, eye_y), (x0 + sx * 0.6 * eye_r, eye_y + dy * eye_r)]),
                  fill=line, width=lw)
    if age >= 50:  # bags under the eyes
      ex = cx + sx * 0.42 * rw
      draw.arc(_box(ex, eye_y + 0.7 * eye_r, 0.8 * eye_r, 0.4 * eye_r, side), 20, 160,
               fill=line, width=lw)

  image = np.asarray(img.reduce(2), np.float32) * face.gain
  if rng is not None:
    image += rng.normal(0.0, face.noise, image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def example(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, Face]:
  """The picture and face of one example, the same for the same arguments.

  Each example has its own random stream, so any example can be made alone
  and in any order.
  """
  rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
  face = sample_face(rng)
  return draw_face(face, size, rng), face


def key(split: str, index: int) -> str:
  """The stable key of a generated face: ``train/000017``."""
  return f"{split}/{index:06d}"


def kept(seed: int, index: int, age: int, keep_extremes: float, young_below: int,
         old_above: int) -> bool:
  """Whether training face ``index`` of age ``age`` stays in a thinned train split.

  Every face between the extremes stays; one at an extreme stays with
  probability ``keep_extremes``, by a draw of its own stream (not the
  picture's: thinning changes which faces there are, never how they look).
  """
  if young_below <= age <= old_above or keep_extremes >= 1.0:
    return True
  return bool(np.random.default_rng([seed, SPLIT_CODES["train"], index, 1]).uniform()
              < keep_extremes)


def hair_brightness(images: np.ndarray) -> np.ndarray:
  """Mean grey value of the hair patch of [N, S, S, 3] images: follows age."""
  side = images.shape[1]
  r0, r1 = (int(round(f * side)) for f in HAIR_PATCH_ROWS)
  c0, c1 = (int(round(f * side)) for f in HAIR_PATCH_COLS)
  return images[:, r0:r1, c0:c1].astype(np.float64).mean(axis=(1, 2, 3))
