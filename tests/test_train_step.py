"""The train step differentiates only what trains; what is frozen stays bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from agejax import models
from agejax.models import paths
from agejax.train import run_length
from agejax.train import step_state
from agejax.train import steps
from configs import tiny

FROZEN = r"^(stem|stage1|stage2)/"


def _reference_step(statics, state, batch):
  """The step as it was: every parameter differentiated, frozen updates zeroed by optax."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    model = models.merge_state(statics.graphdef, params, state.batch_stats)
    outputs = model(batch["image"], train=True, dropout_rng=key)
    return jnp.mean(model.head.loss(outputs, batch["age"])), models.split_state(model)[2]

  (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = statics.tx.update(grads, state.opt_state, state.params)
  # Its gradient norm read every gradient, frozen ones included.
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state), optax.global_norm(grads)


def test_frozen_layers_are_constants_and_the_trainable_ones_match_full_differentiation():
  cfg = tiny.get_config()
  cfg.optim.groups = ((FROZEN, dict(freeze=True)),)
  statics = step_state.build_step_fns(cfg, run_length.run_length(cfg, 256))
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  first = step_state.create_train_state(cfg, statics, NamedSharding(mesh, P()))
  rng = np.random.default_rng(0)
  batches = [{"image": jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32),
              "age": jnp.asarray(rng.integers(0, 100, 16), jnp.float32)} for _ in range(3)]
  ours = jax.jit(steps.bind(statics, steps.train_step))
  reference = jax.jit(lambda s, b: _reference_step(statics, s, b))
  a = b = first
  for batch in batches:
    a, _ = ours(a, batch)
    b, _ = reference(b, batch)
  initial, after, expected = (paths.flatten(s.params) for s in (first, a, b))
  frozen = [p for p in initial if p.startswith(("stem/", "stage1/", "stage2/"))]
  assert frozen and len(frozen) < len(initial)
  for path in initial:
    if path in frozen:
      np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(initial[path]))
    else:
      np.testing.assert_allclose(np.asarray(after[path]), np.asarray(expected[path]),
                                 rtol=2e-5, atol=1e-6, err_msg=path)
      assert not np.array_equal(np.asarray(after[path]), np.asarray(initial[path])), path

  # The step holds no gradient of a frozen kernel: fewer convolutions in its
  # backward pass than the differentiate-everything step's.
  def convolutions(fn, state):
    return str(jax.jit(fn).lower(state, batches[0]).as_text()).count("stablehlo.convolution")

  assert convolutions(steps.bind(statics, steps.train_step), first) < convolutions(
      lambda s, x: _reference_step(statics, s, x), first)


def _tiny_state(groups):
  cfg = tiny.get_config()
  cfg.optim.groups = groups
  statics = step_state.build_step_fns(cfg, run_length.run_length(cfg, 256))
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  return cfg, statics, step_state.create_train_state(cfg, statics, NamedSharding(mesh, P()))


def test_a_frozen_groups_batch_norm_keeps_and_uses_its_running_statistics():
  # Stem and stage 1 train their weights at a tenth of the LR with ImageNet-style fixed BN.
  _, statics, state = _tiny_state(((r"^(stem|stage1)/", dict(lr_mult=0.1, bn="frozen")),))
  rng = np.random.default_rng(1)
  # Running statistics unlike any batch's, so using them is visible in the outputs.
  stats = {p: jnp.asarray(rng.uniform(0.5, 2.0, v.shape) if p.endswith("/var") else
                          rng.normal(size=v.shape), jnp.float32)
           for p, v in paths.flatten(state.batch_stats).items()}
  state = state.replace(batch_stats=paths.unflatten(stats))
  images = jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32)
  train = jax.jit(steps.bind(statics, steps.train_step))
  after = state
  for _ in range(3):
    after, _ = train(after, {"image": images, "age": jnp.full((16,), 30.0)})
  moved = paths.flatten(after.batch_stats)
  for path, value in stats.items():
    kept = path.startswith(("stem/", "stage1/"))
    assert np.array_equal(np.asarray(moved[path]), np.asarray(value)) == kept, path
  trained = paths.flatten(after.params)["stem/bn/scale"]
  assert not np.array_equal(np.asarray(trained), np.asarray(paths.flatten(state.params)["stem/bn/scale"]))

  # In training mode the frozen layers normalise with the running statistics
  # (exactly their evaluation output); a training layer with the batch's.
  model = models.merge_state(statics.graphdef, state.params, state.batch_stats)
  stem_train = model.stem(images, use_running_average=False)
  np.testing.assert_array_equal(np.asarray(stem_train),
                                np.asarray(model.stem(images, use_running_average=True)))
  x = jax.nn.relu(stem_train)
  stage2 = model.stage2.block1.bn1
  y = model.stage2.block1.conv1(x)
  assert not np.allclose(np.asarray(stage2(y, use_running_average=False)),
                         np.asarray(stage2(y, use_running_average=True)), atol=1e-3)


def test_frozen_groups_freeze_batch_norm_unless_asked_to_train_it():
  _, statics, state = _tiny_state(((r"^stem/", dict(freeze=True)),
                                   (r"^stage1/", dict(freeze=True, bn="train"))))
  images = jnp.asarray(np.random.default_rng(2).normal(size=(16, 32, 32, 3)), jnp.float32)
  after, _ = jax.jit(steps.bind(statics, steps.train_step))(
      state, {"image": images, "age": jnp.full((16,), 30.0)})
  before, moved = paths.flatten(state.batch_stats), paths.flatten(after.batch_stats)
  np.testing.assert_array_equal(np.asarray(moved["stem/bn/mean"]),
                                np.asarray(before["stem/bn/mean"]))
  assert not np.array_equal(np.asarray(moved["stage1/block1/bn1/mean"]),
                            np.asarray(before["stage1/block1/bn1/mean"]))
