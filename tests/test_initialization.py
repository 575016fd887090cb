"""Starting weights by parameter path: exact copies, head re-initialisation, clear errors."""

import numpy as np
import pytest

from agejax.train import initial_weights
from agejax.errors import ConfigError


def _model():
  return {"stem/conv/kernel": np.zeros((3, 3, 3, 8), np.float32),
          "stage1/block1/conv1/kernel": np.zeros((3, 3, 8, 8), np.float32),
          "head/fc/kernel": np.zeros((8, 101), np.float32),
          "head/fc/bias": np.zeros((101,), np.float32)}


def _merge(source, **kw):
  opts = dict(key="init.checkpoint", allow_missing=False, allow_unexpected=False)
  opts.update(kw)
  return initial_weights.merge_by_path(_model(), source, **opts)


def test_matching_paths_are_copied_exactly_and_a_resized_head_is_fresh():
  source = {"stem/conv/kernel": np.full((3, 3, 3, 8), 1.5, np.float64),
            "stage1/block1/conv1/kernel": np.arange(576, dtype=np.float32).reshape(3, 3, 8, 8),
            "head/fc/kernel": np.ones((8, 1000), np.float32),  # ImageNet classes
            "head/fc/bias": np.ones((1000,), np.float32)}
  merged, fresh = _merge(source)
  np.testing.assert_array_equal(merged["stage1/block1/conv1/kernel"],
                                source["stage1/block1/conv1/kernel"])
  assert merged["stem/conv/kernel"].dtype == np.float32
  assert (merged["stem/conv/kernel"] == 1.5).all()
  assert sorted(fresh) == ["head/fc/bias", "head/fc/kernel"]
  assert (merged["head/fc/kernel"] == 0).all()  # the model's own initialisation


def test_missing_unexpected_and_misshaped_are_listed_in_one_error():
  source = {"stem/conv/kernel": np.zeros((7, 7, 3, 8), np.float32),
            "fc1000/kernel": np.zeros((8, 1000), np.float32)}
  with pytest.raises(ConfigError) as e:
    _merge(source)
  message = str(e.value)
  assert message.startswith("init.checkpoint: cannot load into the model")
  assert "shape differs (1): stem/conv/kernel (7, 7, 3, 8) vs model (3, 3, 3, 8)" in message
  assert "missing in the source (1): stage1/block1/conv1/kernel" in message
  assert "not in the model (1): fc1000/kernel" in message


def test_allowances_turn_missing_and_unexpected_into_fresh_weights():
  source = {"stem/conv/kernel": np.ones((3, 3, 3, 8), np.float32),
            "extra/thing": np.zeros((2,), np.float32)}
  merged, fresh = _merge(source, allow_missing=True, allow_unexpected=True)
  assert (merged["stem/conv/kernel"] == 1).all()
  assert "stage1/block1/conv1/kernel" in fresh


def test_a_re_initialised_head_is_logged_by_path(caplog):
  from agejax.pretrained.types import Imported

  model = _model()
  source = {k: np.ones_like(v) for k, v in model.items() if not k.startswith("head/")}
  source["head/fc/kernel"] = np.ones((8, 1000), np.float32)  # an ImageNet classifier
  from agejax.config import defaults  # pylint: disable=import-outside-toplevel

  init_cfg = defaults.default_config().init
  init_cfg.pretrained = "r50.pth"
  imported = Imported(arch="resnet50", params=source, batch_stats={}, model_overrides={},
                      source="torchvision")
  with caplog.at_level("WARNING"):
    params, _ = initial_weights.load_initial_weights(init_cfg, model, {}, imported)
  assert (params["stem"]["conv"]["kernel"] == 1).all()
  assert (params["head"]["fc"]["kernel"] == 0).all()  # kept at its fresh initialisation
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warnings == ["initialised afresh (not in r50.pth or shaped differently): "
                      "head/fc/bias, head/fc/kernel"]


PARTIAL = r"^(stem|stage1|stage2)/"


def _pretrained_dir(tmp_path, cfg):
  """A converted pretrained backbone for ``cfg``'s model whose values differ from any init."""
  import jax  # pylint: disable=import-outside-toplevel
  from agejax import models  # pylint: disable=import-outside-toplevel
  from agejax import pretrained  # pylint: disable=import-outside-toplevel
  from agejax.models import paths  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  _, params, stats = models.split_state(
      models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(123)))
  rng = np.random.default_rng(5)
  shift = lambda tree: {p: np.asarray(v) + rng.uniform(1, 2, v.shape).astype(np.float32)
                        for p, v in paths.flatten(jax.device_get(tree)).items()
                        if not p.startswith("head/")}
  imported = pretrained.Imported(arch=cfg.model.arch, params=shift(params),
                                 batch_stats=shift(stats), model_overrides={}, source="test")
  return pretrained.save_converted(imported, str(tmp_path / "backbone")), imported


def _state(cfg):
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from agejax.models import paths  # pylint: disable=import-outside-toplevel
  from agejax.train import run_length  # pylint: disable=import-outside-toplevel
  from agejax.train import step_state  # pylint: disable=import-outside-toplevel

  statics = step_state.build_step_fns(cfg, run_length.run_length(cfg, 256))
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  state = step_state.create_train_state(cfg, statics, NamedSharding(mesh, P()))
  return (paths.flatten(jax.device_get(state.params)),
          paths.flatten(jax.device_get(state.batch_stats)))


def test_loading_part_of_a_backbone_leaves_the_rest_at_the_seeds_fresh_values(tmp_path):
  from configs import tiny  # pylint: disable=import-outside-toplevel

  cfg = tiny.get_config()
  fresh_params, fresh_stats = _state(cfg)
  cfg.init.pretrained, imported = _pretrained_dir(tmp_path, cfg)
  cfg.init.include = (PARTIAL,)
  params, stats = _state(cfg)
  import re  # pylint: disable=import-outside-toplevel
  loaded = [p for p in params if re.search(PARTIAL, p)]
  assert loaded and len(loaded) < len(params)
  for path, value in params.items():
    expected = imported.params[path] if path in loaded else fresh_params[path]
    np.testing.assert_array_equal(value, expected, err_msg=path)
  for path, value in stats.items():
    expected = imported.batch_stats[path] if re.search(PARTIAL, path) else fresh_stats[path]
    np.testing.assert_array_equal(value, expected, err_msg=path)

  # Everything but stage 4, and the running statistics reset.
  cfg.init.include, cfg.init.exclude, cfg.init.batch_stats = (), ("^stage4/",), "reset"
  params, stats = _state(cfg)
  for path, value in params.items():
    source = fresh_params if path.startswith(("stage4/", "head/")) else imported.params
    np.testing.assert_array_equal(value, source[path], err_msg=path)
  for path, value in stats.items():
    np.testing.assert_array_equal(value, fresh_stats[path], err_msg=path)


def test_the_plan_shows_each_groups_source_and_batch_norm_mode(tmp_path):
  from agejax.train import planning  # pylint: disable=import-outside-toplevel
  from configs import tiny  # pylint: disable=import-outside-toplevel

  cfg = tiny.get_config()
  cfg.data.num_train_examples = 256
  cfg.init.pretrained, imported = _pretrained_dir(tmp_path, cfg)
  cfg.init.include = (PARTIAL,)
  cfg.optim.groups = ((r"^(stem|stage1)/", dict(freeze=True)),
                      (r"^stage2/", dict(lr_mult=0.1, bn="frozen")))
  plan = planning.make_plan(cfg, imported)
  groups = dict(planning.describe(cfg, plan.rows, plan.length, "w"))["groups"].splitlines()
  assert groups[0].startswith("stem+stage1 (^(stem|stage1)/): frozen, BN frozen, ")
  assert groups[0].endswith(" params, from pretrained")
  assert groups[1].startswith("stage2 (^stage2/): lr x0.1, BN frozen, ")
  assert groups[1].endswith(" params, from pretrained")
  assert groups[2].startswith("default: stage3, stage4, head: lr x1, BN train, ")
  assert groups[2].endswith(" params, from fresh")
  records = {r["path"]: r for r in planning.plan_records(plan)}
  assert records["stage2/block1/bn1/scale"]["batch_norm"] == "frozen"
  assert records["stage3/block1/bn1/scale"]["batch_norm"] == "train"
  assert records["stage1/block1/conv1/kernel"]["source"] == "pretrained"
  assert records["stage3/block1/conv1/kernel"]["source"] == "fresh"
  bn = dict(planning.describe(cfg, plan.rows, plan.length, "w"))["batchnorm"]
  assert bn == ("batch statistics, running ones updated (momentum 0.9), except frozen "
                "(running statistics, never updated): stem+stage1 (^(stem|stage1)/); "
                "stage2 (^stage2/)")
