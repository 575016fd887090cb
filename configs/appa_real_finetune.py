"""Fine-tune an IMDB-WIKI DEX model on APPA-REAL apparent ages (DEX's second stage).

Starts from the workdir of an `imdb_wiki_resnet50` run. APPA-REAL is small
(4,113 training images), so the backbone moves slowly, its BatchNorm keeps
the IMDB-WIKI statistics, and the schedule is short with step decay.
"""

from agejax.config.defaults import default_config


def get_config():
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
  return config
