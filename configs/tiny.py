"""A tiny ResNet-18 on 32 px synthetic faces: the configuration tests and CPU smoke runs use."""

from agejax.config.defaults import default_config


def get_config():
  config = default_config()
  config.model.arch = "resnet18"
  config.model.width = 8
  config.data.dataset = "synthetic_faces/tiny"
  config.data.image_size = 32
  config.data.num_train_examples = 256
  config.data.shuffle_buffer = 256
  config.train.batch_size = 16
  config.train.num_epochs = 2.0
  config.optim.name = "momentum"
  config.optim.lr = 0.05
  config.optim.weight_decay = 1e-4
  config.optim.schedule.name = "warmup_cosine"
  config.optim.schedule.warmup_steps = 4
  config.train.log_every_steps = 4
  config.train.train_eval_examples = 64  # a small train-eval pass keeps test runs fast
  return config
