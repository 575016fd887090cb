"""Checkpoints: exact round trips, retention, refusal of NaN states, survival
of a kill -9 mid-write and restoring onto a multi-device mesh."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agejax.workdir import checkpointing
from agejax.workdir.checkpointing import Checkpointer
from agejax.errors import TrainingDiverged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  rng: jax.Array


def make_state(seed: int = 0, scale: float = 1.0) -> State:
  """A small state whose floats include values that printing would round."""
  w = jax.random.normal(jax.random.key(seed), (3, 4), jnp.float32) * scale
  special = jnp.array([1 / 3, -0.0, 1e-45, 3.4e38], jnp.float32)
  return State(
      step=jnp.int32(seed),
      params={"w": w, "special": special,
              "half": (w * 7).astype(jnp.bfloat16)},
      rng=jax.random.key_data(jax.random.key(seed + 100)))


def assert_bit_identical(got, want) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


def step_dirs(directory: str) -> list[str]:
  """Entries of `directory` that belong to steps, complete or not."""
  return sorted(n for n in os.listdir(directory) if n[0].isdigit())


def run_python(code: str, *args: str, devices: int | None = None):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH",
                                                              "")]))
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                        env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=120)


@pytest.fixture
def ckpt_dir(tmp_path) -> str:
  return str(tmp_path / "checkpoints")


def test_round_trip_is_bit_identical_with_extra(ckpt_dir):
  state = make_state(1)
  extra = {"input": {"epoch": 2, "position": 1234},
           "config": {"optim": {"lr": 0.001, "name": "adamw"}}}
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(7, state, extra=extra)
  # A new instance reads from disk, as a restarted job would.
  with Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.latest_step() == 7
    restored, restored_extra = ckpt.restore(7, checkpointing.abstract_like(
        state))
  assert isinstance(restored, State)
  assert_bit_identical(restored, state)
  assert restored_extra == extra
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding == state.step.sharding


def test_typed_key_arrays_round_trip(ckpt_dir):
  state = {"key": jax.random.key(42), "w": jnp.ones((2,))}
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(1, state, extra={})
    restored, _ = ckpt.restore(1, checkpointing.abstract_like(state))
  assert restored["key"].dtype == state["key"].dtype
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(state["key"]))
  np.testing.assert_array_equal(jax.random.uniform(restored["key"], (5,)),
                                jax.random.uniform(state["key"], (5,)))


def test_abstract_like_keeps_shape_dtype_and_sharding():
  state = make_state()
  abstract = checkpointing.abstract_like(state)
  for a, leaf in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert isinstance(a, jax.ShapeDtypeStruct)
    assert (a.shape, a.dtype, a.sharding) == (leaf.shape, leaf.dtype,
                                              leaf.sharding)


def test_keeps_latest_and_best(ckpt_dir):
  state = make_state()
  with Checkpointer(ckpt_dir, keep_last=2, keep_best=1) as ckpt:
    for step, mae in zip([10, 20, 30, 40, 50], [5, 3, 4, 6, 7]):
      ckpt.save(step, state, extra={}, metrics={"mae": mae, "loss": 1.0})
    ckpt.wait()
    assert ckpt.all_steps() == [20, 40, 50]
    assert ckpt.best_step() == 20
  assert step_dirs(ckpt_dir) == ["20", "40", "50"]
  # The metrics are on disk, so a restarted job ranks the same way.
  with Checkpointer(ckpt_dir, keep_last=2, keep_best=1) as ckpt:
    assert ckpt.best_step() == 20
    ckpt.save(60, state, extra={}, metrics={"mae": 2})
  assert step_dirs(ckpt_dir) == ["50", "60"]


def test_best_mode_max(ckpt_dir):
  state = make_state()
  with Checkpointer(ckpt_dir, keep_last=1, keep_best=1, best_metric="acc",
                    best_mode="max") as ckpt:
    for step, acc in zip([1, 2, 3], [0.5, 0.9, 0.7]):
      ckpt.save(step, state, extra={}, metrics={"acc": acc})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    assert ckpt.best_step() == 2


def test_checkpoints_without_metrics_count_only_as_latest(ckpt_dir):
  state = make_state()
  with Checkpointer(ckpt_dir, keep_last=2, keep_best=1) as ckpt:
    ckpt.save(10, state, extra={}, metrics={"mae": 5.0})
    for step in (20, 30, 40):
      ckpt.save(step, state, extra={})
    ckpt.wait()
    assert ckpt.all_steps() == [10, 30, 40]
    assert ckpt.best_step() == 10


def test_no_metrics_means_no_best_step(ckpt_dir):
  with Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.best_step() is None and ckpt.latest_step() is None
    ckpt.save(1, make_state(), extra={})
    ckpt.wait()
    assert ckpt.best_step() is None and ckpt.latest_step() == 1


def test_latest_step_after_async_save_and_wait(ckpt_dir):
  big = {"w": jnp.ones((4096, 4096))}
  with Checkpointer(ckpt_dir, async_save=True) as ckpt:
    ckpt.save(1, big, extra={"n": 1})
    ckpt.save(3, big, extra={"n": 3})
    # Whatever the write's progress, the step reported is committed: its
    # directory has its final name (orbax renames it last).
    latest = ckpt.latest_step()
    assert latest in (1, 3) and str(latest) in step_dirs(ckpt_dir)
    ckpt.wait()
    assert ckpt.latest_step() == 3
    assert ckpt.all_steps() == [1, 3]
  with Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.latest_step() == 3


def test_async_save_is_safe_against_donating_the_state(ckpt_dir):
  # The trainer donates the state to the next step right after save returns.
  state = {"w": jnp.arange(1 << 20, dtype=jnp.float32)}
  want = np.asarray(state["w"]).copy()
  step_fn = jax.jit(lambda s: {"w": s["w"] * 0 - 1}, donate_argnums=0)
  with Checkpointer(ckpt_dir, async_save=True) as ckpt:
    ckpt.save(1, state, extra={})
    state = step_fn(state)
    ckpt.wait()
    restored, _ = ckpt.restore(1, checkpointing.abstract_like(state))
  np.testing.assert_array_equal(restored["w"], want)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_is_refused_and_nothing_written(ckpt_dir, bad):
  good = make_state()
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(1, good, extra={})
    ckpt.wait()
    before = sorted(os.listdir(ckpt_dir))
    half = good.params["half"].at[1, 2].set(bad)
    broken = good.replace(params={**good.params, "half": half})
    with pytest.raises(TrainingDiverged,
                       match=r"^training diverged at step 2 \(non-finite train state\); last good checkpoint: 1 in "
                       ) as info:
      ckpt.save(2, broken, extra={})
    assert (info.value.step, info.value.last_good_step) == (2, 1)
    ckpt.wait()
    assert sorted(os.listdir(ckpt_dir)) == before
    assert ckpt.all_steps() == [1]


def test_non_finite_state_without_earlier_checkpoint(ckpt_dir):
  with Checkpointer(ckpt_dir) as ckpt:
    with pytest.raises(TrainingDiverged,
                       match=r"at step 5 .*last good checkpoint: None\.") as info:
      ckpt.save(5, {"w": jnp.array([1.0, np.nan])}, extra={})
    assert info.value.last_good_step is None
    assert step_dirs(ckpt_dir) == []


def test_invalid_saves_are_rejected(ckpt_dir):
  state = make_state()
  with Checkpointer(ckpt_dir) as ckpt:
    with pytest.raises(ValueError, match="'mae'"):
      ckpt.save(1, state, extra={}, metrics={"loss": 1.0})
    with pytest.raises(ValueError, match="'mae'"):
      ckpt.save(1, state, extra={}, metrics={"mae": float("nan")})
    with pytest.raises(TypeError, match="JSON"):
      ckpt.save(1, state, extra={"bad": object()})
    assert step_dirs(ckpt_dir) == []
    ckpt.save(2, state, extra={})
    with pytest.raises(ValueError, match="not after"):
      ckpt.save(2, state, extra={})
    with pytest.raises(ValueError, match="not after"):
      ckpt.save(1, state, extra={})
    ckpt.wait()
    assert ckpt.all_steps() == [2]


KILL_DURING_ASYNC_SAVE = """
import os, signal, sys, time
import jax.numpy as jnp
from agejax.workdir.checkpointing import Checkpointer

ckpt = Checkpointer(sys.argv[1], async_save=True)
ckpt.save(1, {"w": jnp.arange(8.0)}, extra={"pos": 1})
ckpt.wait()
ckpt.save(2, {"w": jnp.ones((4096, 4096))}, extra={"pos": 2})
# Kill once the write is under way (its temporary folder exists), however
# slowly a loaded machine gets there.
deadline = time.time() + 60
while time.time() < deadline and not any(
    n.startswith("2.") for n in os.listdir(sys.argv[1])):
  time.sleep(0.001)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_during_async_save_keeps_previous_checkpoint(ckpt_dir):
  result = run_python(KILL_DURING_ASYNC_SAVE, ckpt_dir)
  assert result.returncode == -9, result.stderr
  left = step_dirs(ckpt_dir)
  assert "1" in left and "2" not in left
  assert any(n.startswith("2.") for n in left)  # The half-written step.

  target = {"w": jax.ShapeDtypeStruct((8,), jnp.float32,
                                      sharding=jnp.zeros(()).sharding)}
  with Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.latest_step() == 1
    assert ckpt.all_steps() == [1]
    restored, extra = ckpt.restore(1, target)
    np.testing.assert_array_equal(restored["w"], np.arange(8.0))
    assert extra == {"pos": 1}
    ckpt.save(2, {"w": jnp.full((8,), 2.0)}, extra={"pos": 2})
    ckpt.wait()
    assert ckpt.latest_step() == 2
    restored, extra = ckpt.restore(2, target)
    np.testing.assert_array_equal(restored["w"], np.full((8,), 2.0))
  assert step_dirs(ckpt_dir) == ["1", "2"]


RESTORE_ON_FOUR_DEVICES = """
import sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from agejax.workdir import checkpointing
sys.path.insert(0, sys.argv[2])
from test_checkpointing import make_state, assert_bit_identical

assert jax.device_count() == 4
mesh = Mesh(np.array(jax.devices()), ("data",))
replicated = NamedSharding(mesh, PartitionSpec())
want = make_state(3, scale=2.0)
abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    jax.eval_shape(lambda: want))
with checkpointing.Checkpointer(sys.argv[1]) as ckpt:
  state, extra = ckpt.restore(4, abstract)
  assert extra == {"from": "one device"}
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding == replicated and leaf.is_fully_replicated
    assert len(leaf.addressable_shards) == 4
  assert_bit_identical(state, want)
  # The trainer's case: a replicated state saved and restored on the mesh.
  ckpt.save(5, state, extra={"from": "four devices"})
  again, extra = ckpt.restore(5, checkpointing.abstract_like(state))
  assert extra == {"from": "four devices"}
  assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(again))
  assert_bit_identical(again, want)
print("restored on", jax.device_count(), "devices")
"""


def test_restore_into_replicated_four_device_mesh(ckpt_dir):
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(4, make_state(3, scale=2.0), extra={"from": "one device"})
  result = run_python(RESTORE_ON_FOUR_DEVICES, ckpt_dir,
                      os.path.dirname(os.path.abspath(__file__)), devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "restored on 4 devices"
