"""Export and inference: a bundle predicts what the trained network evaluates."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from flax import nnx

from agejax import export
from agejax import predict
from agejax.serving import bundle
from agejax.serving import runtimes
from agejax.serving import exporters
from agejax.serving import inference
from agejax.data import input_pipeline
from agejax.workdir import metric_io
from agejax import models
from agejax.models import paths
from agejax.serving import photos
from agejax.workdir import restore
from configs import tiny

STEPS = 16


@pytest.fixture(scope="module")
def workdir(tiny_run):
  """conftest's 16-step tiny run (32 px stored, 32 px input)."""
  return tiny_run


@pytest.fixture(scope="module")
def bundle_dir(workdir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("export") / "model")
  assert export.main(["export", "--workdir", workdir, "--output", out, "--checkpoint", str(STEPS)]) == 0
  return out


@pytest.fixture(scope="module")
def validation(workdir):
  """The stored validation crops (uint8, stored order) and the pipeline's batches."""
  cfg = restore.load_trained(workdir, "latest").config
  builder = tfds.builder(cfg.data.dataset, data_dir=cfg.data.data_dir)
  examples = list(tfds.as_numpy(builder.as_dataset(split="validation", shuffle_files=False)))
  stored = np.stack([e["image"] for e in examples])
  ages = np.array([e["age"] for e in examples], np.float32)
  batches = list(input_pipeline.create_split(
      cfg.data, cfg.model, "validation", train=False,
      batch_size=cfg.train.batch_size).as_numpy_iterator())
  return stored, ages, batches


def test_model_json_describes_the_run(bundle_dir):
  with open(os.path.join(bundle_dir, runtimes.MODEL_FILE)) as f:
    meta = json.load(f)
  assert meta["format"] == "agejax-model" and meta["format_version"] == 1
  assert meta["source"]["step"] == STEPS and meta["source"]["dataset"] == "synthetic_faces/tiny"
  assert meta["model"]["arch"] == "resnet18" and meta["model"]["width"] == 8
  assert (meta["image_size"], meta["preprocessing"], meta["head"]) == (32, "imagenet", "dex")
  assert (meta["min_age"], meta["max_age"], meta["flip_tta"], meta["ema"]) == (0, 100, False, False)
  # synthetic_faces/tiny stores 32 px crops and has no margin of its own.
  assert meta["crop"]["stored_size"] == 32 and meta["crop"]["margin"] == 0.4
  assert "defaults for margin" in meta["crop"]["source"]
  assert meta["agejax_version"] == "0.1.0"
  assert os.path.isdir(os.path.join(bundle_dir, bundle.PARAMS_DIR))


def test_preprocessing_matches_the_tf_pipeline(bundle_dir, validation):
  stored, _, batches = validation
  pipeline = np.concatenate([b["image"][b["mask"]] for b in batches])
  ours = inference.load(bundle_dir).preprocess(stored)
  assert ours.shape == pipeline.shape == (64, 32, 32, 3)
  np.testing.assert_array_equal(ours, pipeline)  # stored 32 = input 32: no resampling


def test_bundle_predicts_what_the_trained_network_evaluates(workdir, bundle_dir, validation):
  stored, labels, batches = validation
  module = restore.load_trained(workdir, str(STEPS)).module()

  # Compiled, as evaluation and prediction are: op-by-op dispatch rounds
  # differently, by up to 1e-4 years on this network.
  @nnx.jit
  def evaluate(model, images):
    return model.head.predict(model(images, train=False))[0]

  reference = np.concatenate([np.asarray(evaluate(module, b["image"]))[b["mask"]]
                              for b in batches])
  ages, spreads = inference.load(bundle_dir)(stored)
  assert ages.dtype == spreads.dtype == np.float32 and ages.shape == (64,)
  assert np.std(reference) > 5  # the network tells the faces apart: no trivial match
  np.testing.assert_allclose(ages, reference, atol=1e-5, rtol=0)
  assert np.all((spreads >= 0) & (spreads <= 50))
  # The bundle's MAE is the one the run logged for that step.
  logged = [r["mae"] for r in metric_io.read_metrics(workdir)
            if r["split"] == "validation" and r["step"] == STEPS]
  assert np.mean(np.abs(ages - labels)) == pytest.approx(logged[-1], abs=1e-4)


def test_workdir_and_bundle_give_the_same_ages(workdir, bundle_dir, validation):
  stored = validation[0][:20]
  from_bundle = inference.load(bundle_dir)(stored)
  from_workdir = inference.load(workdir, checkpoint="latest")(stored)
  np.testing.assert_array_equal(from_bundle[0], from_workdir[0])
  np.testing.assert_array_equal(from_bundle[1], from_workdir[1])


def test_batches_are_padded_and_crops_resized(bundle_dir, validation):
  stored = validation[0]
  predictor = inference.load(bundle_dir, batch_size=8)
  compiled = inference.compiled_serving(predictor.meta)._cache_size()
  all_ages, _ = predictor(stored[:20])  # 3 batches, the last one padded by 4
  few_ages, _ = predictor(list(stored[:3]))
  again, _ = inference.load(bundle_dir, batch_size=8)(stored[:3])
  np.testing.assert_allclose(few_ages, all_ages[:3], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(again, few_ages)
  # One batch shape, one compilation, shared by the second predictor.
  assert inference.compiled_serving(predictor.meta)._cache_size() == compiled + 1
  # A crop of another size is resized by the serving function's own first step
  # (TF's antialiased bilinear resize is the same filter: within one level).
  big = np.asarray(tf.image.resize(stored[:1], [96, 96], "nearest"))[0]
  prepared = predictor.prepare([big, stored[1]])
  assert prepared.dtype == np.uint8
  np.testing.assert_array_equal(prepared[0], inference.to_stored(big, 32))
  np.testing.assert_array_equal(prepared[1], stored[1])
  reference = tf.image.resize(big[None].astype(np.float32), [32, 32], "bilinear", antialias=True)
  assert np.abs(prepared[0].astype(float) - np.round(reference.numpy()[0])).max() <= 1
  assert predictor([])[0].shape == (0,)
  with pytest.raises(ValueError, match="uint8 RGB"):
    predictor([stored[0].astype(np.float32)])


def test_predict_cli_reads_the_bundle_and_the_workdir(workdir, bundle_dir, validation, tmp_path,
                                                      capsys):
  from PIL import Image
  path = str(tmp_path / "crop.png")
  Image.fromarray(validation[0][0]).save(path)
  expected = inference.load(bundle_dir)(validation[0][:1])[0][0]
  for source in (["--model", bundle_dir], ["--workdir", workdir, "--checkpoint", "latest"]):
    assert predict.main(["predict", *source, "--no_detect", "--json", path]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["faces"][0]["box"] == [0, 0, 32, 32]
    assert record["faces"][0]["age"] == pytest.approx(float(expected), abs=1e-5)


def test_export_keeps_an_existing_bundle_unless_told(workdir, bundle_dir, capsys):
  assert export.main(["export", "--workdir", workdir, "--output", bundle_dir]) == 2
  assert "already holds an exported model" in capsys.readouterr().err
  assert export.main(["export", "--workdir", workdir, "--output", bundle_dir, "--overwrite",
                      "--checkpoint", str(STEPS), "--margin", "0.25"]) == 0
  assert inference.load(bundle_dir).margin == 0.25
  assert export.main(["export", "--workdir", workdir, "--output", bundle_dir + "-x",
                      "--checkpoint", "7"]) == 2  # a usage error
  assert "use best, latest or one of [8, 16]" in capsys.readouterr().err


def test_a_network_without_batch_norm_round_trips(tmp_path):
  """VGG-16 has no BatchNorm statistics: the bundle stores none and reads {}."""
  cfg = tiny.get_config()
  cfg.model.arch = "vgg16"
  cfg.model.width = 4
  _, params, batch_stats = models.split_state(
      models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(3)))
  assert batch_stats == {}
  crop = {"margin": 0.3, "stored_size": 40, "source": "test"}
  bundle.write(str(tmp_path), bundle.metadata(cfg, 0, crop=crop), params, batch_stats)
  meta, read_params, read_stats = bundle.read(str(tmp_path))
  assert read_stats == {} and meta["model"]["arch"] == "vgg16"
  flat, read_flat = paths.flatten(params), paths.flatten(read_params)
  assert flat.keys() == read_flat.keys() and len(flat) == 32  # 13 convs + 3 fc, kernel and bias
  for path, value in flat.items():
    np.testing.assert_array_equal(read_flat[path], value, err_msg=path)
  predictor = inference.Predictor(meta, read_params, read_stats)
  assert (predictor.margin, predictor.stored_size, predictor.image_size) == (0.3, 40, 32)
