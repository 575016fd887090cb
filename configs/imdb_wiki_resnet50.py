"""DEX on ResNet-50: fine-tune ImageNet weights on cleaned IMDB-WIKI, 101 age classes.

| choice            | value                                                  |
|-------------------|--------------------------------------------------------|
| backbone          | ResNet-50 (torchvision v1.5), ImageNet weights          |
| head              | DEX: softmax over ages 0..100, prediction = expectation |
| optimizer         | SGD, momentum 0.9                                       |
| batch             | 128 (global)                                            |
| learning rate     | 0.01 peak, 1 epoch linear warmup, cosine to 0           |
| per-stage lr      | head and stage4 x1, stage3 x0.5, stage2 x0.1, stem and stage1 x0.01 |
| weight decay      | 5e-4 decoupled, not on biases or BatchNorm              |
| length            | 20 epochs                                               |
"""

from agejax.config.defaults import default_config


def get_config():
  config = default_config()
  config.model.arch = "resnet50"
  config.model.head = "dex"
  config.model.min_age = 0
  config.model.max_age = 100
  config.init.pretrained = ""  # a torchvision/timm/Keras ResNet-50 file you have

  config.data.dataset = "imdb_wiki/clean"
  config.data.image_size = 224
  # The plan needs the training-set size to lay out epochs. The clean split
  # holds about 200k images; 0 reads the exact count from the built dataset.
  config.data.num_train_examples = 200_000

  config.train.batch_size = 128
  config.train.num_epochs = 20.0

  config.optim.name = "momentum"
  config.optim.momentum = 0.9
  config.optim.lr = 0.01
  config.optim.weight_decay = 5e-4
  config.optim.wd_mode = "decoupled"
  config.optim.schedule.name = "warmup_cosine"
  config.optim.schedule.warmup_epochs = 1.0
  config.optim.groups = (
      (r"^stage3/", dict(lr_mult=0.5)),
      (r"^stage2/", dict(lr_mult=0.1)),
      (r"^(stem|stage1)/", dict(lr_mult=0.01)),
  )
  return config
