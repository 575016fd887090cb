r"""Import pretrained weights, and check an import by its features.

  # A Keras / torchvision / timm file -> a directory init.pretrained loads:
  python -m agejax.convert --input resnet50.safetensors --output /data/resnet50_tv

  # DEX's released Caffe nets, head included; --bundle also writes a model
  # agejax.predict and agejax.export take:
  python -m agejax.convert --input dex_imdb_wiki.caffemodel --prototxt age.prototxt \
      --output /data/dex_imdb_wiki [--bundle /models/dex_imdb_wiki]

  # Pooled features of raw RGB uint8 images (N, 224, 224, 3), with the
  # source's own preprocessing, to compare against the source framework:
  python -m agejax.convert --input resnet50.h5 --features images.npy --features_out feats.npy
"""

from __future__ import annotations

import sys

from absl import flags

from agejax import cli
from agejax.errors import UsageError

FLAGS = cli.new_flags()
# The formats agejax.pretrained reads (a test checks they agree).
FORMATS = ("keras-h5", "torch", "safetensors", "caffe")

_INPUT = flags.DEFINE_string(
    "input", None, "Weights file (.h5, .pth/.pt, .safetensors, .caffemodel) or converted dir.",
    flag_values=FLAGS)
_FORMAT = flags.DEFINE_enum("format", None, list(FORMATS),
                            "Override the format detected from the file.", flag_values=FLAGS)
_ARCH = flags.DEFINE_string(
    "arch", None, "Expected architecture, e.g. resnet50 (detected otherwise).",
    flag_values=FLAGS)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Directory to write the converted weights to.", flag_values=FLAGS)
_PROTOTXT = flags.DEFINE_string(
    "prototxt", None, "A Caffe model's network description (deploy .prototxt).",
    flag_values=FLAGS)
_BUNDLE = flags.DEFINE_string(
    "bundle", None, "Also write an export bundle here (a network with its age head: "
    "agejax.predict --model and agejax.export --model take it).", flag_values=FLAGS)
_FEATURES = flags.DEFINE_string(
    "features", None, "Images .npy: uint8 RGB, N x 224 x 224 x 3.", flag_values=FLAGS)
_FEATURES_OUT = flags.DEFINE_string(
    "features_out", None, "Where to write the N x D features .npy.", flag_values=FLAGS)
_BATCH = flags.DEFINE_integer(
    "batch_size", 16, "Images per forward pass for --features.", flag_values=FLAGS)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 224, "Input size the converted VGG-16 fc6 is laid out for (ResNets ignore it).",
    flag_values=FLAGS)


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  if not (_OUTPUT.value or _FEATURES.value or _BUNDLE.value):
    raise UsageError("give --output DIR, --bundle DIR and/or --features IMAGES.npy "
                     "--features_out OUT.npy")
  if bool(_FEATURES.value) != bool(_FEATURES_OUT.value):
    raise UsageError("--features and --features_out go together")
  # pylint: disable=import-outside-toplevel
  import os

  import numpy as np

  from agejax import pretrained
  from agejax.pretrained import features

  try:
    image_size = np.load(_FEATURES.value, mmap_mode="r").shape[1] if _FEATURES.value \
        else _IMAGE_SIZE.value
    imported = (pretrained.read(_INPUT.value, _FORMAT.value, _ARCH.value, image_size,
                                prototxt=_PROTOTXT.value)
                if _FORMAT.value or _ARCH.value or os.path.isfile(_INPUT.value)
                else pretrained.load(_INPUT.value, image_size))
  except pretrained.WeightImportError as e:
    raise UsageError(f"cannot import: {e}") from e
  if _FEATURES.value and imported.image_size and image_size != imported.image_size:
    raise UsageError(f"--features: {imported.source} {imported.arch} takes "
                     f"{imported.image_size} px images, {_FEATURES.value} holds {image_size} px")
  count = sum(v.size for v in imported.params.values())
  print(f"{imported.source} {imported.arch}: {len(imported.params)} tensors, {count:,} parameters; "
        f"needs {', '.join(f'model.{k}={v!r}' for k, v in imported.model_overrides.items())}")
  if _OUTPUT.value:
    out = pretrained.save_converted(imported, _OUTPUT.value)
    print(f"written to {out}: use --config.init.pretrained={out}")
  if _BUNDLE.value:
    from agejax.serving import bundle  # pylint: disable=import-outside-toplevel
    try:
      out = bundle.from_imported(imported, _BUNDLE.value, _INPUT.value,
                                 imported.image_size or _IMAGE_SIZE.value)
    except (pretrained.WeightImportError, FileExistsError) as e:
      raise UsageError(f"--bundle: {e}") from e
    print(f"bundle written to {out}: python -m agejax.predict --model={out} PHOTO.jpg")
  if _FEATURES.value:
    feats = features.features(imported, np.load(_FEATURES.value), _BATCH.value)
    np.save(_FEATURES_OUT.value, feats)
    print(f"features {feats.shape} written to {_FEATURES_OUT.value}")


def main(argv: list[str] | None = None) -> int:
  # TF comes in with the input normalisation (agejax.data.augment): imported up front, quietly.
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.convert", required=("input",))


if __name__ == "__main__":
  sys.exit(main())
