"""The train step differentiates only what trains; what is frozen stays bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from agejax import models
from agejax.models import paths
from agejax.train import length as length_lib
from agejax.train import setup
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
  statics = setup.build_step_fns(cfg, length_lib.run_length(cfg, 256))
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  first = setup.create_train_state(cfg, statics, NamedSharding(mesh, P()))
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
