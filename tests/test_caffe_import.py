"""Caffe nets (DEX's format) read without Caffe, checked against OpenCV's Caffe reader."""

import os

import numpy as np
import pytest

import caffe_writer
from agejax import convert
from agejax.data import augment
from agejax.models import forward
from agejax.pretrained import caffe, features
from agejax.pretrained.types import WeightImportError

cv2 = pytest.importorskip("cv2")
IMAGE_SIZE = 64


def _opencv(proto, model, images):
  """OpenCV's fc7 (after ReLU and the inactive dropout), prob and expected age."""
  net = cv2.dnn.readNetFromCaffe(proto, model)
  bgr = images[..., ::-1].astype(np.float32) - np.asarray(augment.DEX_MEAN_BGR, np.float32)
  net.setInput(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))
  fc7, prob = net.forward(["drop7", "prob"])
  return fc7, prob, prob @ np.arange(prob.shape[1], dtype=np.float64)


def _agejax(imported, images):
  model = features.backbone(imported, images.shape[1])
  x = augment.normalize(images, imported.model_overrides["preprocessing"])
  age, _, logits = forward.predict(model, x, flip_tta=False)
  prob = np.asarray(jax_softmax(np.asarray(logits, np.float64)))
  return features.features(imported, images), prob, np.asarray(age, np.float64)


def jax_softmax(logits):
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("legacy,input_layer", [(False, False), (True, False), (False, True)],
                         ids=["layer", "v1-layers", "input-layer"])
def test_a_caffe_vgg16_matches_opencv(tmp_path, legacy, input_layer):
  proto, model = caffe_writer.write(tmp_path, width=4, image_size=IMAGE_SIZE, legacy=legacy,
                                    input_layer=input_layer)
  imported = caffe.read(model, proto)
  assert imported.arch == "vgg16" and imported.source == "caffe"
  assert imported.model_overrides == {"preprocessing": "dex", "width": 4}
  assert imported.head == {"head": "dex", "min_age": 0, "max_age": 100}
  assert (imported.image_size, imported.margin) == (IMAGE_SIZE, 0.4)
  images = np.random.default_rng(1).integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  fc7, prob, age = _agejax(imported, images)
  cv_fc7, cv_prob, cv_age = _opencv(proto, model, images)
  assert np.abs(fc7 - cv_fc7).max() / np.abs(cv_fc7).max() < 1e-4
  np.testing.assert_allclose(prob, cv_prob, atol=1e-5)
  np.testing.assert_allclose(age, cv_age, atol=1e-3)
  assert np.ptp(cv_age) > 0.5  # the random net tells the images apart: a real comparison


def test_the_layouts_are_caffes(tmp_path):
  """conv [out, in, kh, kw] -> [kh, kw, in, out]; fc6 rows from C, H, W to H, W, C order."""
  proto, model = caffe_writer.write(tmp_path, width=4, image_size=IMAGE_SIZE)
  blobs = caffe.read_blobs(model)
  imported = caffe.read(model, proto)
  conv = blobs["conv2_1"][0][1].reshape(8, 4, 3, 3)
  np.testing.assert_array_equal(imported.params["stage2/conv1/kernel"][1, 2, 3, 5], conv[5, 3, 1, 2])
  fc6 = blobs["fc6"][0][1].reshape(256, 32, 2, 2)  # [out, C, H, W]
  kernel = imported.params["fc6/kernel"].reshape(2, 2, 32, 256)  # [H, W, C, out]
  np.testing.assert_array_equal(kernel[1, 0, 7, 9], fc6[9, 7, 1, 0])
  np.testing.assert_array_equal(imported.params["head/fc/kernel"], blobs["fc8-101"][0][1]
                                .reshape(101, 256).T)


def test_a_prototxt_with_a_layer_agejax_cannot_express_names_it(tmp_path):
  proto, model = caffe_writer.write(tmp_path, width=4, image_size=IMAGE_SIZE)
  text = open(proto).read().replace('name: "relu3_1"\n  type: "ReLU"',
                                    'name: "relu3_1"\n  type: "PReLU"')
  open(proto, "w").write(text)
  with pytest.raises(WeightImportError, match=r"layer 'relu3_1' is a PReLU, which agejax's "
                                              r"VGG-16 with a DEX head cannot express"):
    caffe.read(model, proto)
  text = text.replace('type: "PReLU"', 'type: "ReLU"').replace("kernel_size: 3 }",
                                                                "kernel_size: 5 }", 1)
  open(proto, "w").write(text)
  with pytest.raises(WeightImportError, match=r"layer 'conv1_1' is a 5x5 convolution pad 1"):
    caffe.read(model, proto)


def _convert(*args):
  return convert.main(["convert", *args])


def test_bad_caffe_files_are_one_line_and_exit_2(tmp_path, capsys):
  proto, model = caffe_writer.write(tmp_path, width=4, image_size=IMAGE_SIZE)
  data = open(model, "rb").read()
  cases = {}
  truncated = tmp_path / "truncated.caffemodel"
  truncated.write_bytes(data[:len(data) // 2])
  cases[str(truncated)] = r"truncated\.caffemodel: not a readable Caffe model \(.*truncated"
  text = tmp_path / "text.caffemodel"
  text.write_bytes(b"this is not a protobuf message at all\n" * 3)
  cases[str(text)] = r"text\.caffemodel: (not a readable Caffe model|no layer)"
  # The same net's weights at twice the width: fc7 has 512 x 512 where 256 x 256 is described.
  wide = tmp_path / "wide"
  wide.mkdir()
  _, wide_model = caffe_writer.write(wide, width=8, image_size=IMAGE_SIZE)
  cases[wide_model] = None
  for path, message in cases.items():
    assert _convert(f"--input={path}", f"--prototxt={proto}", f"--output={tmp_path / 'o'}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    if message:
      assert __import__("re").search(message, err), err
  assert "layer 'conv1_1' has a blob of shape [8, 3, 3, 3] (216 values) where the " \
         "prototxt needs [4, 3, 3, 3]" in _last_error(capsys, wide_model, proto, tmp_path)
  assert _convert(f"--input={model}", f"--output={tmp_path / 'o'}") == 2
  assert "needs its network description (--prototxt" in capsys.readouterr().err


def _last_error(capsys, model, proto, tmp_path):
  _convert(f"--input={model}", f"--prototxt={proto}", f"--output={tmp_path / 'o'}")
  return capsys.readouterr().err


def test_convert_writes_a_directory_init_pretrained_reads_with_its_head(tmp_path, capsys):
  from agejax import pretrained
  proto, model = caffe_writer.write(tmp_path, width=4, image_size=IMAGE_SIZE)
  out = tmp_path / "dex"
  assert _convert(f"--input={model}", f"--prototxt={proto}", f"--output={out}") == 0
  printed = capsys.readouterr().out
  assert "caffe vgg16: 32 tensors" in printed and "model.preprocessing='dex'" in printed
  loaded = pretrained.load(str(out))
  direct = caffe.read(model, proto)
  assert loaded.head == direct.head and loaded.image_size == IMAGE_SIZE and loaded.margin == 0.4
  for path, value in direct.params.items():
    np.testing.assert_array_equal(loaded.params[path], value)
  # --features works for a Caffe file as for the others: fc7 of the images.
  images = np.random.default_rng(2).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  np.save(tmp_path / "images.npy", images)
  assert _convert(f"--input={model}", f"--prototxt={proto}",
                  f"--features={tmp_path / 'images.npy'}",
                  f"--features_out={tmp_path / 'feats.npy'}") == 0
  cv_fc7 = _opencv(proto, model, images)[0]
  feats = np.load(tmp_path / "feats.npy")
  assert np.abs(feats - cv_fc7).max() / np.abs(cv_fc7).max() < 1e-4
  assert os.path.exists(out / "pretrained.json")
