r"""Import ImageNet weights, and check an import by its features.

  # A Keras / torchvision / timm file -> a directory init.pretrained loads:
  python -m agejax.convert --input resnet50.safetensors --output /data/resnet50_tv

  # Pooled features of raw RGB uint8 images (N, 224, 224, 3), with the
  # source's own preprocessing, to compare against the source framework:
  python -m agejax.convert --input resnet50.h5 --features images.npy --features_out feats.npy
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from flax import nnx

from agejax import augment
from agejax import config as config_lib
from agejax import models
from agejax import paths
from agejax import pretrained

_INPUT = flags.DEFINE_string("input", None, "Weights file (.h5, .pth/.pt, .safetensors) or converted dir.")
_FORMAT = flags.DEFINE_enum("format", None, list(pretrained.FORMATS),
                            "Override the format detected from the file.")
_ARCH = flags.DEFINE_string("arch", None, "Expected architecture, e.g. resnet50 (detected otherwise).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the converted weights to.")
_FEATURES = flags.DEFINE_string("features", None, "Images .npy: uint8 RGB, N x 224 x 224 x 3.")
_FEATURES_OUT = flags.DEFINE_string("features_out", None, "Where to write the N x D features .npy.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per forward pass for --features.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 224, "Input size the converted VGG-16 fc6 is laid out for (ResNets ignore it).")


def backbone(imported: pretrained.Imported, image_size: int) -> nnx.Module:
  """The imported network (inference mode) with the weights loaded."""
  model_cfg = config_lib.default_config().model
  model_cfg.arch = imported.arch
  pretrained.apply_overrides(model_cfg, imported)
  abstract = nnx.eval_shape(lambda: models.build_model(model_cfg, image_size, nnx.Rngs(0)))
  graphdef, params, batch_stats = models.split_state(abstract)
  flat_params, flat_stats = paths.flatten(params), paths.flatten(batch_stats)
  for path in flat_params:
    if not path.startswith("head/"):
      flat_params[path] = jnp.asarray(imported.params[path])
  flat_params.update({p: jnp.zeros(v.shape, v.dtype)
                      for p, v in flat_params.items() if p.startswith("head/")})
  flat_stats = {p: jnp.asarray(imported.batch_stats[p]) for p in flat_stats}
  return models.merge_state(graphdef, paths.unflatten(flat_params), paths.unflatten(flat_stats))


def features(imported: pretrained.Imported, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
  """Pooled features of raw uint8 RGB NHWC ``images`` with the source's preprocessing."""
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected uint8 images N x H x W x 3, got {images.dtype} {images.shape}")
  model = backbone(imported, images.shape[1])
  preprocessing = imported.model_overrides["preprocessing"]
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, batch):
    net = nnx.merge(graphdef, state)
    return net.features(augment.normalize(batch.astype(jnp.float32), preprocessing), train=False)

  out = [np.asarray(run(state, images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _INPUT.value:
    raise app.UsageError("--input is required")
  if not (_OUTPUT.value or _FEATURES.value):
    raise app.UsageError("give --output DIR and/or --features IMAGES.npy --features_out OUT.npy")
  if bool(_FEATURES.value) != bool(_FEATURES_OUT.value):
    raise app.UsageError("--features and --features_out go together")
  try:
    image_size = np.load(_FEATURES.value, mmap_mode="r").shape[1] if _FEATURES.value \
        else _IMAGE_SIZE.value
    imported = (pretrained.read(_INPUT.value, _FORMAT.value, _ARCH.value, image_size)
                if _FORMAT.value or _ARCH.value else pretrained.load(_INPUT.value, image_size))
  except pretrained.WeightImportError as e:
    print(f"cannot import: {e}", file=sys.stderr)
    sys.exit(2)
  count = sum(v.size for v in imported.params.values())
  print(f"{imported.source} {imported.arch}: {len(imported.params)} tensors, {count:,} parameters; "
        f"needs {', '.join(f'model.{k}={v!r}' for k, v in imported.model_overrides.items())}")
  if _OUTPUT.value:
    out = pretrained.save_converted(imported, _OUTPUT.value)
    print(f"written to {out}: use --config.init.pretrained={out}")
  if _FEATURES.value:
    feats = features(imported, np.load(_FEATURES.value), _BATCH.value)
    np.save(_FEATURES_OUT.value, feats)
    print(f"features {feats.shape} written to {_FEATURES_OUT.value}")


if __name__ == "__main__":
  app.run(main)
