"""Age-estimation heads: the layer on top of the pooled features, its loss and
its read-out of an age.

Every head built by :func:`build_head` offers the same three methods, so the
training and evaluation code never branches on the head type:

* ``head(features float[N, F]) -> outputs float32[N, D]``
* ``head.loss(outputs, ages float[N]) -> float32[N]``, one loss per example.
  Ages may be non-integer (apparent age); they are clipped to
  ``[model.min_age, model.max_age]`` first.
* ``head.predict(outputs) -> (age float32[N], spread float32[N])``.

Heads (``model.head``), with ``K = max_age - min_age + 1`` integer ages
``a_j = min_age + j`` (j = 0..K-1):

``dex`` (Rothe et al. 2015)
  K logits, softmax ``p``. Loss: cross-entropy against the bin of the clipped
  age rounded to the nearest integer (halves to even, as ``numpy.round``).
  Age: ``m = sum_j p_j a_j``; spread: ``sqrt(sum_j p_j (a_j - m)^2)``.
``dldl`` (Gao et al. 2017)
  K logits. Target: ``q_j ∝ exp(-(a_j - y)^2 / (2 sigma^2))`` normalised over
  the K bins (y the clipped, unrounded age; sigma = ``model.dldl_sigma``).
  Loss: ``KL(q || p)``. Age and spread as dex.
``mean_variance`` (Pan et al. 2018)
  K logits. Loss: dex cross-entropy + ``lambda1 * (m - y)^2 / 2 +
  lambda2 * v`` with m, v the mean and variance of ``p`` over the ages and
  lambda1/2 = ``model.mean_variance_lambda1/2``. Age and spread as dex.
``regression``
  One output, the age itself. Loss: ``|o - y|`` (l1) or ``(o - y)^2 / 2``
  (l2, ``optax.l2_loss``) by ``model.regression_loss``. Age: the output
  clipped to the age range, like every other head's read-out. Spread: always
  0, a point estimate carries no distribution.
``coral`` (Cao et al. 2020)
  K-1 logits ``z_k = w.x + b_k`` (k = 1..K-1) sharing one weight vector.
  Targets ``t_k = 1[r > min_age + k - 1]`` with r the clipped age rounded as
  for dex. Loss: sum over k of the binary cross-entropies. Age:
  ``min_age + #{k: sigmoid(z_k) > 0.5}``. Spread: the std of the class
  distribution ``p_j = P(> j-1) - P(> j)`` (``P(> -1) = 1``,
  ``P(> K-1) = 0``, ``P(> k) = sigmoid(z_{k+1})``), each clipped at 0 and
  renormalised to sum 1 (the clipping only matters when the learned
  probabilities are not monotone).

Parameters (paths below the model's ``head`` attribute): ``head/fc/kernel``
``[F, D]`` and ``head/fc/bias`` ``[D]``; coral has ``head/fc/kernel`` ``[F, 1]``
without bias and ``head/thresholds`` ``[K-1]``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from agejax.config import config_check


HEADS = ("dex", "regression", "dldl", "mean_variance", "coral")
REGRESSION_LOSSES = ("l1", "l2")

RULES: dict[str, config_check.Rule] = {
    "model.head": config_check.one_of(HEADS),
    "model.regression_loss": config_check.one_of(REGRESSION_LOSSES),
    "model.dldl_sigma": config_check.POSITIVE,
    "model.mean_variance_lambda1": config_check.NON_NEGATIVE,
    "model.mean_variance_lambda2": config_check.NON_NEGATIVE,
}


def check(cfg: Any) -> None:
  """The rules of the head's keys."""
  config_check.check_rules(cfg, RULES)


# --- configuration ------------------------------------------------------------


# --- pure functions on outputs ------------------------------------------------


def _clip_ages(ages: jax.Array, min_age: int, max_age: int) -> jax.Array:
  return jnp.clip(jnp.asarray(ages, jnp.float32), min_age, max_age)


def age_bin(ages: jax.Array, min_age: int, max_age: int) -> jax.Array:
  """Index (0..K-1) of the integer age nearest to each clipped age."""
  return (jnp.round(_clip_ages(ages, min_age, max_age)) - min_age).astype(
      jnp.int32)


def distribution_moments(probs: jax.Array,
                         min_age: int) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of a distribution over the ages ``min_age + j``."""
  ages = min_age + jnp.arange(probs.shape[-1], dtype=jnp.float32)
  mean = jnp.sum(probs * ages, axis=-1)
  # Centred second moment rather than E[a^2] - m^2: no cancellation at 100^2.
  var = jnp.sum(probs * jnp.square(ages - mean[:, None]), axis=-1)
  return mean, var


def dldl_target(ages: jax.Array, min_age: int, max_age: int,
                sigma: float) -> jax.Array:
  """Log of the Gaussian label distribution over the K integer ages."""
  y = _clip_ages(ages, min_age, max_age)
  bins = min_age + jnp.arange(max_age - min_age + 1, dtype=jnp.float32)
  # log_softmax normalises in log space: no bin underflows to log(0) even
  # with a small sigma, so the KL below stays finite.
  return jax.nn.log_softmax(
      -jnp.square(bins - y[:, None]) / (2.0 * sigma**2), axis=-1)


def coral_class_probs(logits: jax.Array) -> jax.Array:
  """CORAL's K class probabilities from its K-1 logits (see module doc)."""
  n = logits.shape[0]
  above = jax.nn.sigmoid(logits)  # P(age > min_age + k - 1), k = 1..K-1
  above = jnp.concatenate(
      [jnp.ones((n, 1), above.dtype), above, jnp.zeros((n, 1), above.dtype)],
      axis=-1)
  probs = jnp.maximum(above[:, :-1] - above[:, 1:], 0.0)
  # Before clipping the differences telescope to 1, so the sum is >= 1.
  return probs / jnp.sum(probs, axis=-1, keepdims=True)


# --- modules ------------------------------------------------------------------


class _Head(nnx.Module):
  """The age range every head needs."""

  def __init__(self, model_cfg: Any):
    self.min_age = int(model_cfg.min_age)
    self.max_age = int(model_cfg.max_age)
    self.num_ages = self.max_age - self.min_age + 1


class DexHead(_Head):
  """Softmax over the K integer ages; expected value as the age."""

  def __init__(self, model_cfg: Any, in_features: int, rngs: nnx.Rngs):
    super().__init__(model_cfg)
    self.fc = nnx.Linear(in_features, self.num_ages, dtype=jnp.float32,
                         rngs=rngs)

  def __call__(self, features: jax.Array) -> jax.Array:
    # The backbone may compute in bfloat16; the softmax and the losses do not.
    return self.fc(features.astype(jnp.float32))

  def loss(self, outputs: jax.Array, ages: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(
        outputs.astype(jnp.float32), age_bin(ages, self.min_age, self.max_age))

  def predict(self, outputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean, var = distribution_moments(
        jax.nn.softmax(outputs.astype(jnp.float32), axis=-1), self.min_age)
    return mean, jnp.sqrt(var)


class DldlHead(DexHead):
  """Deep label distribution learning: KL to a Gaussian around the age."""

  def __init__(self, model_cfg: Any, in_features: int, rngs: nnx.Rngs):
    super().__init__(model_cfg, in_features, rngs)
    self.sigma = float(model_cfg.dldl_sigma)

  def loss(self, outputs: jax.Array, ages: jax.Array) -> jax.Array:
    log_target = dldl_target(ages, self.min_age, self.max_age, self.sigma)
    return optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1), log_target)


class MeanVarianceHead(DexHead):
  """Softmax cross-entropy plus mean and variance penalties."""

  def __init__(self, model_cfg: Any, in_features: int, rngs: nnx.Rngs):
    super().__init__(model_cfg, in_features, rngs)
    self.lambda1 = float(model_cfg.mean_variance_lambda1)
    self.lambda2 = float(model_cfg.mean_variance_lambda2)

  def loss(self, outputs: jax.Array, ages: jax.Array) -> jax.Array:
    outputs = outputs.astype(jnp.float32)
    mean, var = distribution_moments(jax.nn.softmax(outputs, axis=-1),
                                     self.min_age)
    y = _clip_ages(ages, self.min_age, self.max_age)
    return (super().loss(outputs, ages) +
            self.lambda1 * optax.l2_loss(mean, y) + self.lambda2 * var)


class RegressionHead(_Head):
  """One linear output read as the age; the spread is always 0."""

  def __init__(self, model_cfg: Any, in_features: int, rngs: nnx.Rngs):
    super().__init__(model_cfg)
    self.loss_name = str(model_cfg.regression_loss)
    # Start at the middle of the range: the first steps then fit the features
    # instead of spending their gradient on moving the bias by ~50 years.
    middle = 0.5 * (self.min_age + self.max_age)
    self.fc = nnx.Linear(in_features, 1, dtype=jnp.float32,
                         bias_init=nnx.initializers.constant(middle),
                         rngs=rngs)

  def __call__(self, features: jax.Array) -> jax.Array:
    return self.fc(features.astype(jnp.float32))

  def loss(self, outputs: jax.Array, ages: jax.Array) -> jax.Array:
    pred = outputs.astype(jnp.float32)[:, 0]
    y = _clip_ages(ages, self.min_age, self.max_age)
    if self.loss_name == "l1":
      return jnp.abs(pred - y)
    return optax.l2_loss(pred, y)

  def predict(self, outputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Age: the output clipped to the age range. Spread: 0 (point estimate)."""
    age = jnp.clip(outputs.astype(jnp.float32)[:, 0], self.min_age,
                   self.max_age)
    return age, jnp.zeros_like(age)


class CoralHead(_Head):
  """K-1 rank-consistent binary tasks sharing one weight vector."""

  def __init__(self, model_cfg: Any, in_features: int, rngs: nnx.Rngs):
    super().__init__(model_cfg)
    self.fc = nnx.Linear(in_features, 1, use_bias=False, dtype=jnp.float32,
                         rngs=rngs)
    # Decreasing thresholds crossing 0 mid-range: the untrained head predicts
    # about the middle age and its P(> k) already decrease with k.
    self.thresholds = nnx.Param(
        jnp.linspace(1.0, -1.0, self.num_ages - 1, dtype=jnp.float32))

  def __call__(self, features: jax.Array) -> jax.Array:
    return self.fc(features.astype(jnp.float32)) + self.thresholds[...]

  def loss(self, outputs: jax.Array, ages: jax.Array) -> jax.Array:
    rank = age_bin(ages, self.min_age, self.max_age)
    k = jnp.arange(1, self.num_ages, dtype=jnp.int32)
    # r > min_age + k - 1  <=>  bin index > k - 1  <=>  bin index >= k.
    targets = (rank[:, None] >= k).astype(jnp.float32)
    return jnp.sum(optax.sigmoid_binary_cross_entropy(
        outputs.astype(jnp.float32), targets), axis=-1)

  def predict(self, outputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    outputs = outputs.astype(jnp.float32)
    # sigmoid(z) > 0.5 exactly when z > 0; no rounding at large |z|.
    age = self.min_age + jnp.sum(outputs > 0, axis=-1).astype(jnp.float32)
    _, var = distribution_moments(coral_class_probs(outputs), self.min_age)
    return age, jnp.sqrt(var)


_BUILDERS = {
    "dex": DexHead,
    "regression": RegressionHead,
    "dldl": DldlHead,
    "mean_variance": MeanVarianceHead,
    "coral": CoralHead,
}


def build_head(model_cfg: Any, in_features: int,
               rngs: nnx.Rngs) -> nnx.Module:
  """Builds the head named by ``model_cfg.head`` on ``in_features`` inputs.

  :func:`check` has passed the keys a head reads.
  """
  return _BUILDERS[model_cfg.head](model_cfg, in_features, rngs)
