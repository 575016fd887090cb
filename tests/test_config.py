"""Configs survive the JSON a run saves next to its checkpoints."""

import glob
import importlib.util
import os

import pytest

from agejax.config import defaults

SHIPPED = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "*.py")))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_config_round_trips_through_json(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  restored = defaults.from_json(cfg.to_json_best_effort())
  assert restored == cfg
  assert restored.optim.groups == tuple(cfg.optim.groups)
