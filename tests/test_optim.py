"""The optimizer against closed forms: groups, freezing, weight decay,
clipping and accumulation, on a small tree shaped like the model's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agejax.config import defaults
from agejax.train import config_rules
from agejax.train import optim
from agejax.models import paths
from agejax.train import run_length
from agejax.errors import ConfigError

SPE, TOTAL = 10, 100
KERNELS = ("stem/conv/kernel", "stage1/block1/conv1/kernel",
           "stage1/block1/downsample/conv/kernel", "head/fc/kernel")
NO_DECAY = ("stem/bn/scale", "stem/bn/bias", "stage1/block1/bn1/scale",
            "stage1/block1/bn1/bias", "stage1/block1/downsample/bn/scale",
            "stage1/block1/downsample/bn/bias", "head/fc/bias")


SHAPES = {
    "stem/conv/kernel": (3, 3, 3, 4),
    "stem/bn/scale": (4,),
    "stem/bn/bias": (4,),
    "stage1/block1/conv1/kernel": (3, 3, 4, 4),
    "stage1/block1/bn1/scale": (4,),
    "stage1/block1/bn1/bias": (4,),
    "stage1/block1/downsample/conv/kernel": (1, 1, 4, 4),
    "stage1/block1/downsample/bn/scale": (4,),
    "stage1/block1/downsample/bn/bias": (4,),
    "head/fc/kernel": (4, 5),
    "head/fc/bias": (5,),
}


def _params(seed=0):
  """A tree shaped like a tiny ResNet's, values away from zero."""
  rng = np.random.default_rng(seed)
  return paths.unflatten({
      p: jnp.asarray(rng.normal(size=s) + 1.0, jnp.float32)
      for p, s in SHAPES.items()
  })


def _cfg(**overrides):
  cfg = defaults.default_config().optim
  cfg.schedule.name = "constant"
  cfg.schedule.warmup_steps = 0
  cfg.schedule.warmup_epochs = 0.0
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def _length(accum=1):
  """A run of TOTAL updates of SPE per epoch, one phase (batch 1)."""
  phase = run_length.Phase(0, 0, TOTAL * accum, 0.0, 1, 32, 1.0, 0)
  return run_length.RunLength(SPE * accum, SPE * accum, TOTAL * accum, accum, (phase,))


def _optimizer(cfg, params):
  rates = optim.learning_rates(cfg, _length(cfg.grad_accum_steps),
                               optim.assign_groups(cfg, params))
  return optim.build_optimizer(cfg, params, rates)


def _run(cfg, params, grads_seq):
  """Applies the optimizer to each gradient tree in turn (jitted)."""
  tx = _optimizer(cfg, params)
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  all_updates = []
  for grads in grads_seq:
    params, state, updates = step(params, state, grads)
    all_updates.append(updates)
  return params, state, all_updates


def _grads(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def _flat_np(tree):
  return {p: np.asarray(v) for p, v in paths.flatten(tree).items()}


def _state_leaves_by_param(state):
  """(param path, leaf) for every per-parameter state slot.

  State trees mirror the parameter tree below some prefix (e.g.
  ``.../TraceState/trace/head/fc/kernel``); MaskedNode is kept as a leaf.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  out = []
  for key_path, leaf in leaves:
    names = [paths.key_name(k) for k in key_path]
    for top in ("stem", "stage1", "head"):
      if top in names:
        out.append(("/".join(names[names.index(top):]), leaf))
  return out


# --- groups -------------------------------------------------------------------


def test_default_assignment_excludes_bias_and_norm_from_decay():
  params = _params()
  got = optim.assign_groups(_cfg(weight_decay=1e-4), params)
  assert list(got) == list(paths.flatten(params))  # tree order
  for path in KERNELS:
    assert got[path] == optim.Assignment("default", 1.0, 1.0, False)
  for path in NO_DECAY:
    assert got[path] == optim.Assignment("default", 1.0, 0.0, False)
  # No decay at all: every effective multiplier is 0.
  got = optim.assign_groups(_cfg(weight_decay=0.0), params)
  assert all(a.wd_mult == 0.0 for a in got.values())
  # An empty exclude decays everything.
  got = optim.assign_groups(_cfg(weight_decay=1e-4, wd_exclude=""), params)
  assert all(a.wd_mult == 1.0 for a in got.values())


def test_first_match_wins_and_missing_keys_default():
  cfg = _cfg(weight_decay=1e-4, groups=(
      (r"^head/fc/kernel$", dict(lr_mult=10.0, wd_mult=2.0)),
      (r"^head/", dict(lr_mult=5.0)),
      (r"^stem/", dict(freeze=True)),
  ))
  got = optim.assign_groups(cfg, _params())
  assert got["head/fc/kernel"] == optim.Assignment(r"^head/fc/kernel$", 10.0,
                                                   2.0, False)
  assert got["head/fc/bias"] == optim.Assignment(r"^head/", 5.0, 0.0, False)
  assert got["stem/conv/kernel"] == optim.Assignment(r"^stem/", 0.0, 0.0, True, "frozen")
  assert got["stage1/block1/conv1/kernel"] == optim.Assignment(
      "default", 1.0, 1.0, False)


@pytest.mark.parametrize("groups, key, fragments", [
    (((r"^stem/", {}), (r"(", {})), "optim.groups[1]", ["'('", "invalid"]),
    (((r"^backbone/", {}),), "optim.groups[0]",
     ["'^backbone/'", "matches no parameter", "stem/conv/kernel"]),
    (((r"^head/", {}), (r"^head/fc/", {})), "optim.groups[1]",
     ["'^head/fc/'", "earlier group"]),
    (((r"^head/", dict(lr=0.1)),), "optim.groups[0]",
     ["'^head/'", "unknown key", "lr"]),
    (((r"^head/", dict(lr_mult=-1.0)),), "optim.groups[0]",
     ["'^head/'", "lr_mult"]),
    (((r"^head/", dict(wd_mult=-0.5)),), "optim.groups[0]",
     ["'^head/'", "wd_mult"]),
    (((r"^head/", dict(freeze=1)),), "optim.groups[0]", ["freeze"]),
    (((r"", dict(freeze=True)),), "optim.groups", ["every parameter"]),
    (("^head/",), "optim.groups[0]", ["pair"]),
])
def test_group_errors_name_the_entry_and_pattern(groups, key, fragments):
  with pytest.raises(ConfigError) as info:
    optim.assign_groups(_cfg(groups=groups), _params())
  assert info.value.key == key
  for fragment in fragments:
    assert fragment in str(info.value)


@pytest.mark.parametrize("overrides, key", [
    (dict(name="rmsprop"), "optim.name"),
    (dict(lr=0.0), "optim.lr"),
    (dict(momentum=1.0), "optim.momentum"),
    (dict(momentum=-0.1), "optim.momentum"),
    (dict(wd_mode="l1"), "optim.wd_mode"),
    (dict(name="adamw", wd_mode="l2"), "optim.wd_mode"),
    (dict(weight_decay=-1e-4), "optim.weight_decay"),
    (dict(grad_accum_steps=0), "optim.grad_accum_steps"),
    (dict(ema_decay=1.0), "optim.ema_decay"),
    (dict(clip_grad_norm=-1.0), "optim.clip_grad_norm"),
    (dict(wd_exclude="(bias"), "optim.wd_exclude"),
    (dict(b2=1.0), "optim.b2"),
])
def test_optim_errors_name_the_key(overrides, key):
  cfg = defaults.default_config()
  for name, value in overrides.items():
    cfg.optim[name] = value
  with pytest.raises(ConfigError) as info:
    config_rules.validate(cfg)
  assert info.value.key == key


# --- freezing and learning-rate multipliers -----------------------------------


@pytest.mark.parametrize("name", ["momentum", "adam"])
@pytest.mark.parametrize("accum", [1, 2])
def test_frozen_group_is_bit_identical_and_stateless(name, accum):
  params = _params()
  cfg = _cfg(name=name, weight_decay=1e-2, clip_grad_norm=1.0,
             grad_accum_steps=accum, groups=((r"^stem/", dict(freeze=True)),))
  grads = [_grads(params, seed) for seed in range(4)]
  new, state, _ = _run(cfg, params, grads)
  before, after = _flat_np(params), _flat_np(new)
  for path in before:
    if path.startswith("stem/"):
      np.testing.assert_array_equal(after[path], before[path])
    else:
      assert np.all(after[path] != before[path]), path
  slots = _state_leaves_by_param(state)
  frozen = [leaf for path, leaf in slots if path.startswith("stem/")]
  trained = [leaf for path, leaf in slots if path.startswith("head/fc/kernel")]
  assert frozen and all(isinstance(x, optax.MaskedNode) for x in frozen)
  assert trained and any(isinstance(x, jax.Array) for x in trained)
  # Adam: mu and nu; momentum: the trace; accumulation: the gradient buffer.
  n_trained = sum(
      v.size for p, v in before.items() if not p.startswith("stem/"))
  n_slots = (2 if name == "adam" else 1) + (accum > 1)
  state_size = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
  assert state_size == n_slots * n_trained


def test_lr_mult_scales_the_sgd_step_exactly():
  params, lr = _params(), 0.3
  grads = _grads(params, 7)
  _, _, (plain,) = _run(_cfg(name="sgd", lr=lr), params, [grads])
  cfg = _cfg(name="sgd", lr=lr, groups=(
      (r"^head/", dict(lr_mult=0.25)),
      (r"^stage1/", dict(lr_mult=0.1)),
  ))
  _, _, (scaled,) = _run(cfg, params, [grads])
  plain, scaled, g = _flat_np(plain), _flat_np(scaled), _flat_np(grads)
  f32 = np.float32
  for path in plain:
    mult = {"head": 0.25, "stage1": 0.1}.get(path.split("/")[0], 1.0)
    np.testing.assert_array_equal(plain[path], -(f32(lr) * g[path]))
    np.testing.assert_array_equal(scaled[path], -(f32(lr * mult) * g[path]))
    if mult == 0.25:  # a power of two: exactly a quarter
      np.testing.assert_array_equal(scaled[path], 0.25 * plain[path])
    else:  # 0.1 is not representable: equal up to float32 rounding
      np.testing.assert_allclose(scaled[path], mult * plain[path], rtol=2e-7)


def test_learning_rates_per_group():
  cfg = _cfg(groups=((r"^head/", dict(lr_mult=0.5)),
                     (r"^stem/", dict(freeze=True))))
  cfg.schedule.name = "step"
  rates = optim.learning_rates(cfg, _length(), optim.assign_groups(cfg, _params()))
  # Groups in tree order (head, stage1, stem).
  assert list(rates.at(0)) == [r"^head/", "default", r"^stem/"]
  # Step 25 is in the second decay interval of 2 epochs x 10 steps.
  rates = jax.jit(rates.at)(25)
  np.testing.assert_allclose(
      [float(rates[k]) for k in (r"^head/", "default", r"^stem/")],
      [0.005, 0.01, 0.0], rtol=1e-6)


# --- weight decay -------------------------------------------------------------


def test_decoupled_decay_skips_bias_and_norm_and_shrinks_kernels():
  params, lr, wd = _params(), 0.1, 0.5
  cfg = _cfg(name="sgd", lr=lr, weight_decay=wd,
             groups=((r"^head/fc/kernel$", dict(wd_mult=2.0)),))
  zeros = jax.tree.map(jnp.zeros_like, params)
  new, _, _ = _run(cfg, params, [zeros])
  before, after = _flat_np(params), _flat_np(new)
  f32 = np.float32
  for path in NO_DECAY:
    np.testing.assert_array_equal(after[path], before[path])
  for path in KERNELS:
    mult = 2.0 if path == "head/fc/kernel" else 1.0
    p = before[path]
    expected = p - f32(lr) * (f32(wd * mult) * p)
    # XLA may fuse the multiply-add: allow one float32 rounding.
    np.testing.assert_allclose(after[path], expected, rtol=2.5e-7)
    assert not np.allclose(after[path], p)


def test_l2_and_decoupled_differ_as_their_closed_forms_for_momentum():
  params, lr, mu, wd = _params(), 0.1, 0.9, 0.05
  g1, g2 = _grads(params, 1), _grads(params, 2)
  results = {}
  for mode in ("decoupled", "l2"):
    cfg = _cfg(name="momentum", lr=lr, momentum=mu, weight_decay=wd,
               wd_mode=mode, wd_exclude="")
    new, _, _ = _run(cfg, params, [g1, g2])
    results[mode] = _flat_np(new)
  p0 = {k: v.astype(np.float64) for k, v in _flat_np(params).items()}
  a, b = _flat_np(g1), _flat_np(g2)
  for path, p in p0.items():
    # decoupled: m accumulates gradients only; p -= lr * (m + wd * p).
    m1 = a[path]
    p1 = p - lr * (m1 + wd * p)
    m2 = mu * m1 + b[path]
    p2 = p1 - lr * (m2 + wd * p1)
    np.testing.assert_allclose(results["decoupled"][path], p2, rtol=1e-5,
                               atol=1e-6)
    # l2: the decay joins the gradient, so it is carried by the momentum.
    m1 = a[path] + wd * p
    p1 = p - lr * m1
    m2 = mu * m1 + b[path] + wd * p1
    p2 = p1 - lr * m2
    np.testing.assert_allclose(results["l2"][path], p2, rtol=1e-5, atol=1e-6)
    # The gap after two steps is lr * mu * wd * p0 (to first order).
    gap = results["decoupled"][path] - results["l2"][path]
    np.testing.assert_allclose(gap, lr * mu * wd * p, rtol=0.05, atol=1e-6)


@pytest.mark.parametrize("name, reference", [
    ("nesterov", lambda lr, wd: optax.chain(
        optax.trace(0.9, nesterov=True), optax.add_decayed_weights(wd),
        optax.scale_by_learning_rate(lr))),
    ("adamw", lambda lr, wd: optax.adamw(lr, 0.9, 0.999, 1e-8,
                                         weight_decay=wd)),
    ("lamb", lambda lr, wd: optax.lamb(lr, 0.9, 0.999, 1e-8,
                                       weight_decay=wd)),
    ("lars", lambda lr, wd: optax.lars(lr, weight_decay=wd,
                                       trust_coefficient=0.001, eps=1e-8,
                                       momentum=0.9)),
])
def test_optimizers_match_their_optax_aliases(name, reference):
  params, lr, wd = _params(), 0.05, 0.01
  grads = [_grads(params, s) for s in range(3)]
  cfg = _cfg(name=name, lr=lr, weight_decay=wd, wd_exclude="")
  got, _, _ = _run(cfg, params, grads)
  tx = reference(lr, wd)
  state, expected = tx.init(params), params
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(g, state, expected)
    expected = optax.apply_updates(expected, updates)
  got, expected = _flat_np(got), _flat_np(expected)
  for path in got:
    np.testing.assert_allclose(got[path], expected[path], rtol=1e-6,
                               atol=1e-7)


# --- clipping and accumulation ------------------------------------------------


def test_clipping_caps_the_global_norm_of_trained_parameters():
  params = _params()
  grads = jax.tree.map(lambda g: 100.0 * g, _grads(params, 3))
  cfg = _cfg(name="sgd", lr=1.0, clip_grad_norm=2.0)
  _, _, (updates,) = _run(cfg, params, [grads])
  np.testing.assert_allclose(float(optax.tree.norm(updates)), 2.0, rtol=1e-6)
  # Same direction as the gradient.
  g, u = _flat_np(grads), _flat_np(updates)
  scale = 2.0 / float(optax.tree.norm(grads))
  for path in g:
    np.testing.assert_allclose(u[path], -scale * g[path], rtol=1e-5)

  # Frozen gradients do not count: the small trained part stays unclipped.
  grads = jax.tree.map(lambda g: 1e-3 * g, _grads(params, 4))
  grads["stem"] = jax.tree.map(lambda g: 1e6 * jnp.ones_like(g),
                               grads["stem"])
  cfg.groups = ((r"^stem/", dict(freeze=True)),)
  _, _, (updates,) = _run(cfg, params, [grads])
  u = _flat_np(updates)
  np.testing.assert_array_equal(u["head/fc/kernel"],
                                -np.asarray(grads["head"]["fc"]["kernel"]))


def test_multisteps_updates_every_k_steps_with_the_mean_gradient():
  params, lr = _params(), 0.5
  cfg = _cfg(name="sgd", lr=lr, grad_accum_steps=2)
  # The schedule counts optimizer updates: x0.1 from the second update on.
  cfg.schedule.name = "step"
  cfg.schedule.decay_every_steps = 1
  gs = [_grads(params, s) for s in range(4)]
  tx = _optimizer(cfg, params)
  state = tx.init(params)
  p = params
  moved = []
  for g in gs:
    updates, state = jax.jit(tx.update)(g, state, p)
    moved.append(all(np.any(u != 0) for u in jax.tree.leaves(updates)))
    p = optax.apply_updates(p, updates)
  assert moved == [False, True, False, True]
  p0, got = _flat_np(params), _flat_np(p)
  g = [_flat_np(x) for x in gs]
  for path in p0:
    expected = (p0[path] - lr * (g[0][path] + g[1][path]) / 2
                - lr * 0.1 * (g[2][path] + g[3][path]) / 2)
    np.testing.assert_allclose(got[path], expected, rtol=1e-5, atol=1e-6)


# --- EMA ----------------------------------------------------------------------


def test_ema_update():
  ema = {"w": jnp.zeros(3)}
  params = {"w": jnp.ones(3)}
  ema = optim.ema_update(ema, params, 0.9)
  np.testing.assert_allclose(ema["w"], [0.1] * 3, rtol=1e-6)
  ema = jax.jit(optim.ema_update)(ema, params, 0.9)
  np.testing.assert_allclose(ema["w"], [0.19] * 3, rtol=1e-6)


def test_bn_mode_follows_freeze_unless_given_and_is_checked():
  cfg = _cfg(groups=((r"^stem/", dict(freeze=True)), (r"^stage1/", dict(freeze=True, bn="train")),
                     (r"^head/", dict(lr_mult=0.1, bn="frozen"))))
  got = optim.assign_groups(cfg, _params())
  assert [got[p].batch_norm for p in ("stem/conv/kernel", "stage1/block1/conv1/kernel",
                                      "head/fc/kernel")] == ["frozen", "train", "frozen"]
  with pytest.raises(ConfigError, match=r"optim.groups\[0\].*bn must be one of \['train', "
                                        r"'frozen'\], got 'fixed'"):
    optim.assign_groups(_cfg(groups=((r"^stem/", dict(bn="fixed")),)), _params())
