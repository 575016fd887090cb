"""The demo: a small ResNet-18 age model trained on `synthetic_faces` on a CPU.

`synthetic_faces` is a generated stand-in (cartoon faces whose age drives
wrinkles, grey hair and proportions), prepared on first use, so this runs on a
fresh machine with nothing downloaded. The recipe is the real one at a small
size: a DEX head (softmax over ages 0..100, prediction = expectation),
momentum SGD with warmup+cosine and weight decay kept off biases and
BatchNorm. It trains from random weights, so every block gets the full
learning rate (per-block multipliers are for fine-tuning pretrained weights;
see configs/imdb_wiki_resnet50.py).
"""

from agejax.config.defaults import default_config


def get_config():
  config = default_config()
  config.model.arch = "resnet18"
  config.model.width = 16
  config.model.head = "dex"
  config.data.dataset = "synthetic_faces"
  config.data.image_size = 64
  config.data.num_train_examples = 4096  # synthetic_faces' train split
  config.data.augment.crop_scale_min = 0.8
  config.data.augment.rotation_degrees = 5.0
  config.train.batch_size = 64
  config.train.num_epochs = 8.0
  config.train.log_every_steps = 32  # 16 console lines over the run
  config.optim.name = "momentum"
  config.optim.lr = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule.name = "warmup_cosine"
  config.optim.schedule.warmup_epochs = 0.5
  return config
