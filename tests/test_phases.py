"""Batch-size and image-size schedules: phases, their learning rates, streams and exact resume."""

import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from agejax.train import config_rules
from agejax.data import input_pipeline
from agejax.errors import ConfigError
from agejax.models import paths
from agejax.train import run_length
from agejax.train import loop
from agejax.train import step_state
from agejax.workdir import checkpointing
from configs import tiny

N = 256  # tiny's training examples: 16 steps per epoch at batch 16


def _config(**overrides):
  cfg = tiny.get_config()
  cfg.train.num_epochs = 1.5
  cfg.train.batch_size_schedule = ((0.5, 32),)
  cfg.data.image_size_schedule = ((1.0, 64),)
  cfg.optim.lr_scaling = "linear"
  for key, value in overrides.items():
    section, name = key.split(".")
    cfg[section][name] = value
  return cfg


def test_phases_split_the_run_where_either_schedule_changes():
  length = run_length.run_length(_config(), N)
  got = [(p.start_step, p.end_step, p.start_epoch, p.batch_size, p.image_size, p.lr_factor,
          p.start_example) for p in length.phases]
  # 0.5 epochs of 16 steps, then 0.5 and 0.5 epochs of 8 steps of 32.
  assert got == [(0, 8, 0.0, 16, 32, 1.0, 0), (8, 12, 0.5, 32, 32, 2.0, 128),
                 (12, 16, 1.0, 32, 64, 2.0, 256)]
  assert length.total_steps == 16 and length.total_epochs == 1.5
  assert [length.epoch_of_step(s) for s in (4, 8, 10, 16)] == [0.25, 0.5, 0.75, 1.5]
  assert length.examples_before(10) == 128 + 2 * 32
  sqrt = run_length.run_length(_config(**{"optim.lr_scaling": "sqrt"}), N)
  assert [p.lr_factor for p in sqrt.phases] == [1.0, 2**0.5, 2**0.5]
  # train.num_train_steps ends the run inside a phase.
  short = run_length.run_length(_config(**{"train.num_train_steps": 10}), N)
  assert [(p.start_step, p.end_step) for p in short.phases] == [(0, 8), (8, 10)]
  # Without schedules: one phase, the run of old.
  plain = run_length.run_length(tiny.get_config(), N)
  assert plain.total_steps == 32 and len(plain.phases) == 1


def test_the_learning_rate_is_scaled_per_phase():
  def schedule(scaling):
    cfg = _config(**{"optim.lr_scaling": scaling})
    return step_state.build_step_fns(cfg, run_length.run_length(cfg, N)).learning_rates.base

  scaled, unscaled = schedule("linear"), schedule("none")
  for update, factor in ((3, 1.0), (7, 1.0), (8, 2.0), (15, 2.0)):
    assert float(scaled(jnp.asarray(update))) == pytest.approx(
        factor * float(unscaled(jnp.asarray(update))), rel=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("train.batch_size_schedule", ((1, 32), (0.5, 16)), r"\[1\]: epochs must increase"),
    ("train.batch_size_schedule", ((1, 0),), r"integer >= 1"),
    ("train.batch_size_schedule", ((1, 512),), r"512 is larger than the 256 training"),
    ("data.image_size_schedule", ((1, 48),), r"multiple of 32"),
    ("data.image_size_schedule", (1,), r"\[0\]: expected an \(epoch, value\) pair"),
])
def test_bad_schedules_name_their_entry(key, value, message):
  cfg = tiny.get_config()
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(ConfigError, match=message):
    run_length.run_length(cfg, N)


def test_lr_scaling_and_vgg_resizing_are_checked():
  cfg = _config(**{"optim.lr_scaling": "square"})
  with pytest.raises(ConfigError, match="optim.lr_scaling"):
    config_rules.validate(cfg)
  cfg = _config(**{"model.arch": "vgg16"})
  with pytest.raises(ConfigError, match="data.image_size_schedule.*vgg16"):
    config_rules.validate(cfg)


def test_a_phase_reads_on_where_the_last_one_stopped(tiny_data_dir):
  cfg = _config()
  cfg.data.data_dir = tiny_data_dir
  kw = dict(train=True, seed=0, process_index=0, process_count=1)
  small = input_pipeline.create_split(cfg.data, cfg.model, "train", batch_size=16, **kw)
  small = list(small.take(10).as_numpy_iterator())
  big = input_pipeline.create_split(cfg.data, cfg.model, "train", batch_size=32,
                                    start_example=128, **kw)
  first = next(iter(big.as_numpy_iterator()))
  # Batch 32 from example 128 is the batch-16 stream's batches 8 and 9: the same
  # examples with the same augmentation.
  for name in ("image", "age"):
    np.testing.assert_array_equal(first[name], np.concatenate([small[8][name], small[9][name]]))


def _final_state(workdir):
  with checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    step = ckpt.latest_step()
    tree = ckpt.restore_params(step)
  return step, paths.flatten(tree)


def test_killed_inside_the_second_phase_and_resumed_is_bit_identical(tiny_data_dir, tmp_path):
  def config():
    cfg = _config()
    cfg.data.data_dir = tiny_data_dir
    cfg.train.eval_every_steps = 8
    cfg.train.checkpoint_every_steps = 4
    cfg.train.train_eval_examples = 0
    return cfg

  straight = str(tmp_path / "straight")
  summary = loop.train_and_evaluate(config(), straight)
  assert summary["step"] == 16

  resumed, seen = str(tmp_path / "resumed"), []

  def sigterm_at_10(step):  # step 10 is inside phase 2 (steps 9-12, batch 32)
    seen.append(step)
    if step == 10:
      os.kill(os.getpid(), signal.SIGTERM)

  first = loop.train_and_evaluate(config(), resumed, step_hook=sigterm_at_10)
  assert first["stopped"] == "preempted" and first["step"] == 10
  with checkpointing.Checkpointer(os.path.join(resumed, "checkpoints")) as ckpt:
    assert ckpt.latest_step() == 10
    _, extra = ckpt.restore(10, checkpointing.abstract_like(ckpt.restore_params(10)))
  assert extra["phase"] == 1  # recorded: the second phase
  second = loop.train_and_evaluate(config(), resumed, step_hook=seen.append)
  assert second["stopped"] == "completed" and seen == list(range(1, 17))

  step_a, state_a = _final_state(straight)
  step_b, state_b = _final_state(resumed)
  assert step_a == step_b == 16 and state_a.keys() == state_b.keys()
  for path in state_a:
    np.testing.assert_array_equal(state_a[path], state_b[path], err_msg=path)
