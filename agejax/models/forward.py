"""The one inference forward pass: network, head read-out and optional flip TTA.

In-training validation, ``agejax.evaluate``, ``agejax.inference`` and export
all call :func:`predict` (the first two through the same compiled function,
``agejax.evaluation.predictions.make_forward``), so the number that picks the
best checkpoint is the number ``agejax.evaluate`` reports for it.

Flip test-time augmentation averages the read-out ages (and spreads) of an
image and its mirror image, not the head outputs: that works the same for
every head (coral's integer read-out included). In inference mode BatchNorm
uses its running statistics, so the two passes are independent.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax


def flip_images(batch: Any) -> Any:
  """Mirrors images left-right: a [..., H, W, C] array, or a batch dict.

  Plain indexing, so it works on numpy arrays, jax Arrays (sharding along the
  batch axis is kept) and inside ``jax.jit``. A dict gets a new ``image`` and
  keeps every other entry.
  """
  if isinstance(batch, Mapping):
    return {**batch, "image": flip_images(batch["image"])}
  return batch[..., ::-1, :]


def predict(model: Any, images: jax.Array, *, flip_tta: bool
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(age, spread, outputs)`` of ``images`` in inference mode.

  ``outputs`` are the head's raw outputs of the unflipped images (what the
  head's loss takes); ``age`` and ``spread`` are [N] and, with ``flip_tta``,
  the mean over the image and its mirror.
  """
  outputs = model(images, train=False)
  age, spread = model.head.predict(outputs)
  if flip_tta:
    age_m, spread_m = model.head.predict(model(flip_images(images), train=False))
    age, spread = (age + age_m) / 2, (spread + spread_m) / 2
  return age, spread, outputs
