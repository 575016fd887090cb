"""The face age benchmark's recipe (Paplham & Franc, CVPR 2024) as an agejax config.

  python -m agejax.protocol --config=configs/protocol_resnet50.py --benchmark=AgeDB \
      --cross=UTKFace,CLAP2016 --workdir_root=/runs/agedb_ce
  python -m agejax.protocol --config=configs/protocol_resnet50.py:dex --benchmark=AgeDB \
      --workdir_root=/runs/agedb_dex     # the DEX recipe, the row to compare with

| choice        | benchmark recipe (default)            | DEX recipe (``:dex``)                  |
|---------------|---------------------------------------|----------------------------------------|
| backbone      | ResNet-50, 256 px aligned crop        | same                                   |
| head / loss   | softmax over 0..100, cross-entropy    | same, read out as the expectation      |
| optimizer     | Adam, lr 1e-4 constant                | SGD momentum 0.9, lr 0.01 warm-up + cosine, per-stage multipliers, wd 5e-4 |
| batch, length | 100, 50 epochs                        | 128, 20 epochs                         |
| augmentation  | RandomResizedCrop scale 0.8-1, ratio 1, flip | agejax's default (scale 0.6-1, rotation, colour) |
| test          | centre crop                           | same                                   |

agejax's softmax head always reads out the expectation (DEX); the split
(``data.protocol_split``) is set per run by agejax.protocol. Batch 100 must
divide over the devices (1, 2, 4, 5, 10, 20 GPUs); set --config.train.batch_size
otherwise. Set ``init.pretrained`` to the ImageNet ResNet-50 you have.
"""

from agejax.config.defaults import default_config
from agejax.config.defaults import sibling

imdb_wiki_resnet50 = sibling(__file__, "imdb_wiki_resnet50")

RECIPES = ("benchmark", "dex")


def get_config(recipe: str = "benchmark"):
  if recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; use one of {RECIPES}")
  config = default_config()
  config.model.arch = "resnet50"
  config.model.head = "dex"
  config.model.min_age = 0
  config.model.max_age = 100
  config.init.pretrained = ""  # an ImageNet ResNet-50 file (torchvision/timm/Keras)

  config.data.dataset = "facebase/agedb"
  config.data.protocol_split = 0
  config.data.image_size = 256  # the stored aligned crop, whole
  # The plan lays out epochs before any data is read: AgeDB's 16,488 faces x
  # 6 of 10 folders. 0 reads the exact count from the built folders.
  config.data.num_train_examples = 9_900
  config.data.eval_flip_tta = False

  if recipe == "benchmark":
    config.train.batch_size = 100
    config.train.num_epochs = 50.0
    config.optim.name = "adam"
    config.optim.lr = 1e-4
    config.optim.weight_decay = 0.0
    config.optim.schedule.name = "constant"
    augment = config.data.augment
    augment.crop_scale_min, augment.crop_scale_max = 0.8, 1.0
    augment.crop_ratio_min = augment.crop_ratio_max = 1.0
    augment.flip = True
    augment.rotation_degrees = 0.0
    augment.color_jitter = 0.0
  else:  # configs/imdb_wiki_resnet50.py's optimisation, on the benchmark's data
    dex = imdb_wiki_resnet50.get_config()
    config.train.batch_size = dex.train.batch_size
    config.train.num_epochs = dex.train.num_epochs
    config.optim = dex.optim
  return config
