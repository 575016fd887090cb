"""Fine-tune an IMDB-WIKI DEX model on APPA-REAL apparent ages (DEX's second stage).

Starts from the workdir of an `imdb_wiki_resnet50` run. APPA-REAL is small
(4,113 training images), so the backbone moves slowly, its BatchNorm keeps
the IMDB-WIKI statistics, and the schedule is short with step decay.

``--config=configs/appa_real_finetune.py:dex`` starts instead from DEX's own
released IMDB-WIKI network, converted once:

  python -m agejax.convert --input dex_imdb_wiki.caffemodel --prototxt age.prototxt \
      --output /data/dex_imdb_wiki
  python -m agejax.main --config=configs/appa_real_finetune.py:dex \
      --config.init.pretrained=/data/dex_imdb_wiki --workdir=...

From the DEX papers (Rothe et al., ICCV-W 2015; IJCV 2018): VGG-16 at 224
px on faces cropped with a 40% margin, a softmax over ages 0..100 read out
as its expectation, the IMDB-WIKI network fine-tuned on the apparent-age
data, its head included (so the head keeps DEX's weights here). The input
normalisation (BGR minus ILSVRC 2012's mean image) follows the import. Not
published in the papers, so guesses: the optimiser and its learning rate,
batch, epochs and schedule (this config's ResNet recipe), and freezing the
first two stages.
"""

from agejax.config.defaults import default_config


def get_config(variant: str = ""):
  """The ResNet-50 recipe; ``variant="dex"``: from DEX's converted VGG-16."""
  config = default_config()
  config.model.arch = "resnet50"
  config.model.head = "dex"
  config.model.freeze_bn_stats = True
  config.init.checkpoint = ""  # workdir of the IMDB-WIKI run

  config.data.dataset = "appa_real"
  # Train on the apparent age (ChaLearn LAP's target); its std gives the
  # epsilon-error in evaluation.
  config.data.label = "apparent_age"
  config.data.label_std = "apparent_age_std"
  config.data.image_size = 224
  config.data.num_train_examples = 4113

  config.train.batch_size = 32
  config.train.num_epochs = 10.0

  config.optim.name = "momentum"
  config.optim.lr = 1e-3
  config.optim.weight_decay = 5e-4
  config.optim.schedule.name = "step"
  config.optim.schedule.decay_factor = 0.1
  config.optim.schedule.decay_every_epochs = 4.0
  config.optim.groups = (
      (r"^head/", dict(lr_mult=10.0)),
      (r"^(stem|stage1|stage2)/", dict(freeze=True)),
  )
  if variant == "dex":
    config.model.arch = "vgg16"
    config.model.min_age, config.model.max_age = 0, 100  # fc8-101's ages
    config.model.freeze_bn_stats = False  # VGG-16 has no BatchNorm
    config.init.pretrained = ""  # agejax.convert's directory of the DEX caffemodel
    # The head is DEX's trained one: it moves at the backbone's rate.
    config.optim.groups = ((r"^(stage1|stage2)/", dict(freeze=True)),)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of appa_real_finetune (use '' or 'dex')")
  return config
