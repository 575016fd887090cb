"""A generated release in the face age benchmark's format: a database JSON and real JPEGs.

Entries are written as the benchmark writes them (``img_path``, ``id_num``,
``age``, ``gender`` M/F/U, ``database``, ``folder``, ``aligned_bbox`` as
four corners TL, TR, BR, BL, ``alignment_source``); every person's images
share one folder. The faces are smooth colour fields (JPEG keeps them within
a few levels), each box rotated by its own angle.
"""

import json
import math
import os

import numpy as np
from PIL import Image

IMAGE_SHAPE = (72, 88)  # height, width of the "original photos"
BOX_SIDE = 40.0


def box_corners(center, side, degrees):
  """TL, TR, BR, BL of a square of ``side`` at ``center`` rotated by ``degrees``, flat."""
  t = math.radians(degrees)
  rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
  half = side / 2
  corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
  return [float(round(v, 3)) for c in corners for v in np.asarray(center) + rot @ c]


def photo(seed):
  """A smooth RGB photo: a low-frequency field (JPEG keeps it nearly exact)."""
  rng = np.random.default_rng(seed)
  h, w = IMAGE_SHAPE
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
  channels = [127 + 60 * np.sin(2 * math.pi * (rng.uniform(1.5, 3.0) * x + rng.uniform(0, 1)))
              * np.cos(2 * math.pi * (rng.uniform(1.5, 3.0) * y + rng.uniform(0, 1)))
              for _ in range(3)]
  return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def entries_for(database, persons=20, images_per_person=2, folders=10, seed=0):
  """The JSON entries: person p in folder p % folders, ages by person and image."""
  rng = np.random.default_rng(seed)
  entries = []
  for p in range(persons):
    for i in range(images_per_person):
      n = len(entries)
      center = (IMAGE_SHAPE[1] / 2 + rng.uniform(-6, 6), IMAGE_SHAPE[0] / 2 + rng.uniform(-6, 6))
      if n % 7 == 6:  # a face at the photo's edge: part of its box is off the photo
        center = (10.0, center[1])
      entries.append({
          "img_path": f"{database}/{database}/{1000 * p + i}_person{p}_{20 + 3 * p + i}.jpg",
          "id_num": 1000 + p, "age": 20 + 3 * p + i, "gender": "MF"[p % 2],
          "database": database, "folder": p % folders,
          "aligned_bbox": box_corners(center, BOX_SIDE, rng.uniform(-30, 30) + 15 * (n % 3)),
          "alignment_source": "in the wild"})
  return entries


def write_release(root, database, entries, json_name=None):
  """Writes each entry's photo (JPEG, quality 95) and the JSON; returns the JSON path."""
  for n, entry in enumerate(entries):
    path = os.path.join(root, entry["img_path"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(photo(n)).save(
        path, format="JPEG", quality=95)
  json_path = os.path.join(root, json_name or f"{database}_aligned.json")
  with open(json_path, "w") as f:
    json.dump(entries, f, indent=4)
  return json_path


def reference_warp(pixels, corners, size):
  """An independent warp: bilinear samples of ``pixels`` at the box's output pixel centres.

  Returns ``(crop float [size, size, 3], inside bool [size, size], outside
  bool [size, size])``: ``inside`` where all four neighbours of the sample
  lie in the image, ``outside`` where none does (the crop is black there).
  """
  tl, tr, _, bl = np.asarray(corners, np.float64).reshape(4, 2)
  u = (np.arange(size) + 0.5) / size
  # point[v, u] = TL + u (TR - TL) + v (BL - TL), in continuous pixel coordinates.
  points = tl + u[None, :, None] * (tr - tl) + u[:, None, None] * (bl - tl)
  x, y = points[..., 0] - 0.5, points[..., 1] - 0.5  # pixel-index coordinates
  h, w = pixels.shape[:2]
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
  outside = (x0 + 1 < 0) | (y0 + 1 < 0) | (x0 >= w) | (y0 >= h)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  xs0, xs1 = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
  ys0, ys1 = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
  p = pixels.astype(np.float64)
  crop = ((1 - fy) * ((1 - fx) * p[ys0, xs0] + fx * p[ys0, xs1])
          + fy * ((1 - fx) * p[ys1, xs0] + fx * p[ys1, xs1]))
  return crop, inside, outside
