"""The demo: a small ResNet-18 age model on 64 px crops that runs on a laptop CPU.

It shows the whole recipe at a size that finishes in minutes: a DEX head
(softmax over ages 0..100, prediction = expectation), momentum SGD with a
warmup+cosine schedule, the head at the full learning rate and the stem at a
tenth of it, and weight decay kept off biases and BatchNorm.
"""

from agejax.config import default_config


def get_config():
  config = default_config()
  config.model.arch = "resnet18"
  config.model.width = 16
  config.model.head = "dex"
  config.data.image_size = 64
  config.data.num_train_examples = 2048
  config.train.batch_size = 32
  config.train.num_epochs = 3.0
  config.optim.name = "momentum"
  config.optim.lr = 0.05
  config.optim.weight_decay = 5e-4
  config.optim.schedule.name = "warmup_cosine"
  config.optim.schedule.warmup_epochs = 0.5
  config.optim.groups = (
      (r"^stem/", dict(lr_mult=0.1)),
  )
  return config
