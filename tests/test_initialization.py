"""Starting weights by parameter path: exact copies, head re-initialisation, clear errors."""

import numpy as np
import pytest

from agejax.train import initial_weights as initialization
from agejax.errors import ConfigError


def _model():
  return {"stem/conv/kernel": np.zeros((3, 3, 3, 8), np.float32),
          "stage1/block1/conv1/kernel": np.zeros((3, 3, 8, 8), np.float32),
          "head/fc/kernel": np.zeros((8, 101), np.float32),
          "head/fc/bias": np.zeros((101,), np.float32)}


def _merge(source, **kw):
  opts = dict(key="init.checkpoint", allow_missing=False, allow_unexpected=False)
  opts.update(kw)
  return initialization.merge_by_path(_model(), source, **opts)


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
  import ml_collections

  from agejax.pretrained.types import Imported

  model = _model()
  source = {k: np.ones_like(v) for k, v in model.items() if not k.startswith("head/")}
  source["head/fc/kernel"] = np.ones((8, 1000), np.float32)  # an ImageNet classifier
  init_cfg = ml_collections.ConfigDict(dict(checkpoint="", pretrained="r50.pth",
                                            allow_missing=False, allow_unexpected=False))
  imported = Imported(arch="resnet50", params=source, batch_stats={}, model_overrides={},
                      source="torchvision")
  with caplog.at_level("WARNING"):
    params, _ = initialization.load_initial_weights(init_cfg, model, {}, imported)
  assert (params["stem"]["conv"]["kernel"] == 1).all()
  assert (params["head"]["fc"]["kernel"] == 0).all()  # kept at its fresh initialisation
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warnings == ["initialised afresh (not in r50.pth or shaped differently): "
                      "head/fc/bias, head/fc/kernel"]
