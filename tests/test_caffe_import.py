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


@pytest.fixture(scope="module")
def dex_bundle(tmp_path_factory):
  """A converted random-weight DEX-layout net, as a directory and as a bundle."""
  root = tmp_path_factory.mktemp("dex")
  proto, model = caffe_writer.write(root, width=4, image_size=IMAGE_SIZE)
  assert _convert(f"--input={model}", f"--prototxt={proto}", f"--output={root / 'converted'}",
                  f"--bundle={root / 'bundle'}") == 0
  return proto, model, str(root / "converted"), str(root / "bundle")


def _astronaut_face():
  from skimage import data
  return data.astronaut()[30:230, 130:300]  # her face and some margin, 200 x 170


def test_predict_runs_dex_from_its_bundle_and_matches_opencv(dex_bundle, tmp_path, capsys):
  import json

  from PIL import Image
  from agejax import predict
  from agejax.data import eval_input, face_crop
  from skimage import data

  proto, model, _, bundle_dir = dex_bundle
  meta = json.load(open(os.path.join(bundle_dir, "model.json")))
  assert (meta["preprocessing"], meta["head"], meta["image_size"]) == ("dex", "dex", IMAGE_SIZE)
  assert meta["crop"]["margin"] == 0.4 and meta["crop"]["stored_size"] == 73  # 256/224 of 64
  Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
  assert predict.main(["predict", f"--model={bundle_dir}", str(tmp_path / "astronaut.png"),
                       "--json"]) == 0
  record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert len(record["faces"]) == 1 and 0 <= record["faces"][0]["age"] <= 100
  # A crop given as is: the network sees it resized to the stored size, centre-cropped.
  Image.fromarray(_astronaut_face()).save(tmp_path / "face.png")
  assert predict.main(["predict", f"--model={bundle_dir}", str(tmp_path / "face.png"),
                       "--no_detect", "--json"]) == 0
  age = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["faces"][0]["age"]
  stored = face_crop.crop_face(_astronaut_face(), None, size=73)
  seen = np.asarray(eval_input.center_crop(stored[None].astype(np.float32), IMAGE_SIZE, 73))
  cv_age = _opencv(proto, model, np.round(seen).astype(np.uint8))[2][0]
  assert abs(age - cv_age) < 1e-3


def test_export_takes_the_bundle_and_onnx_verifies(dex_bundle, tmp_path, capsys):
  pytest.importorskip("onnxruntime")
  from agejax import export

  _, _, _, bundle_dir = dex_bundle
  out = tmp_path / "onnx"
  assert export.main(["export", f"--model={bundle_dir}", f"--output={out}", "--format=onnx"]) == 0
  printed = capsys.readouterr().out
  assert "verified on" in printed and os.path.exists(out / "model.onnx")
  assert export.main(["export", f"--model={bundle_dir}", f"--output={out}",
                      "--workdir=x"]) == 2


def test_a_run_from_converted_dex_keeps_its_head(dex_bundle, tiny_data_dir, tmp_path):
  from agejax.serving import bundle, inference
  from agejax.train import loop
  from configs import tiny

  _, _, converted, bundle_dir = dex_bundle
  cfg = tiny.get_config()
  cfg.data.data_dir = tiny_data_dir
  cfg.model.arch, cfg.model.head = "vgg16", "dex"
  cfg.data.image_size = IMAGE_SIZE
  cfg.init.pretrained = converted
  # The run's one step leaves the imported model as it was: everything frozen
  # but one bias at a learning rate of 1e-9 times the base (a run must train
  # something).
  cfg.optim.groups = ((r"^stage1/conv1/bias$", {"lr_mult": 1e-9}), (r".*", {"freeze": True}))
  cfg.train.num_train_steps = cfg.train.eval_every_steps = 1
  cfg.optim.schedule.warmup_steps = 0
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(cfg, workdir)
  crops = np.random.default_rng(3).integers(0, 256, (5, 73, 73, 3), np.uint8)
  run = inference.load(workdir)
  run_ages, _ = run(crops)
  # The imported weights, fed as the run feeds its network (its crop rule).
  _, params, batch_stats = bundle.read(bundle_dir)
  dex_ages, _ = inference.Predictor(run.meta, params, batch_stats)(crops)
  np.testing.assert_allclose(run_ages, dex_ages, atol=1e-5)
  assert np.ptp(dex_ages) > 0.1


def test_the_dex_fine_tuning_config_takes_the_converted_model_head_included(dex_bundle):
  from agejax import models
  from agejax.models import paths
  from agejax.train import initial_weights
  from configs import appa_real_finetune

  _, _, converted, _ = dex_bundle
  cfg = appa_real_finetune.get_config("dex")
  assert (cfg.model.arch, cfg.model.head, cfg.model.min_age, cfg.model.max_age) == (
      "vgg16", "dex", 0, 100)
  cfg.init.pretrained = converted
  cfg.data.image_size = IMAGE_SIZE  # the test net's input (DEX's: 224)
  imported = initial_weights.prepare_pretrained(cfg)
  assert (cfg.model.preprocessing, cfg.model.width) == ("dex", 4)
  _, params, _ = models.split_state(models.abstract_model(cfg.model, IMAGE_SIZE))
  shapes = {p: tuple(v.shape) for p, v in paths.flatten(params).items()}
  sources = initial_weights.sources(cfg.init, shapes, imported)
  assert set(sources.values()) == {initial_weights.PRETRAINED}  # the head too
  assert "dex head of ages 0-100, kept" in initial_weights.describe(cfg.init, imported)
  with pytest.raises(ValueError, match="unknown variant"):
    appa_real_finetune.get_config("vgg")
