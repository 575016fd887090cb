"""The one place every configuration key is declared, with its default.

Config files under ``configs/`` start from :func:`default_config` and override
what they need; :func:`agejax.train.config_rules.validate` then rejects unknown keys,
wrong types and impossible values before anything is built or compiled.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Every key agejax understands, with its default value.

  One unit on purpose, longer than a function should be: it is the table of
  every key, read top to bottom like a paper's hyperparameter table, and
  ``config_check`` rejects any key not declared here.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- model -----------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  # resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | vgg16
  c.model.arch = "resnet50"
  # Channels of the first stage; 64 is the published network. Small values
  # make tiny test and demo models with the same structure and paths.
  c.model.width = 64
  # False: torchvision v1.5 (stride on the 3x3). True: Keras/Caffe v1
  # (stride on the first 1x1 of a bottleneck).
  c.model.stride_in_1x1 = False
  # Keras/Caffe ResNets carry a bias on every convolution.
  c.model.conv_bias = False
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
  c.model.bn_momentum = 0.9  # running = momentum * running + (1 - momentum) * batch
  c.model.bn_epsilon = 1e-5
  # Use the running statistics while training (fine-tuning with small batches).
  c.model.freeze_bn_stats = False
  c.model.dropout = 0.0  # before the head (VGG's fc6/fc7 use their own below)
  c.model.vgg_dropout = 0.5
  # Head: dex | regression | dldl | mean_variance | coral
  c.model.head = "dex"
  c.model.min_age = 0
  c.model.max_age = 100
  # What the network was pretrained on, and so what the input pipeline feeds:
  # imagenet: RGB in [0, 1], minus ImageNet mean, over its std (torchvision,
  # timm). caffe: BGR in [0, 255] minus the ImageNet mean (Keras, Caffe
  # ResNets). dex: the same minus ILSVRC 2012's mean image's (DEX's nets).
  c.model.preprocessing = "imagenet"
  c.model.regression_loss = "l1"  # l1 | l2 (head=regression)
  c.model.dldl_sigma = 2.0  # std (years) of the Gaussian label distribution
  c.model.mean_variance_lambda1 = 0.2  # weight of the mean loss
  c.model.mean_variance_lambda2 = 0.05  # weight of the variance loss

  # --- initialisation ------------------------------------------------------------
  c.init = ml_collections.ConfigDict()
  c.init.pretrained = ""  # ImageNet backbone weights (file or converted dir)
  c.init.checkpoint = ""  # an earlier agejax run's workdir (its latest checkpoint)
  # Parameters of the model the source lacks, or the source has and the model
  # lacks, are an error unless allowed (the head is always re-initialised when
  # its shape differs, and said so).
  c.init.allow_missing = False
  c.init.allow_unexpected = False
  # Load only part of the source: parameter (and running-statistic) paths
  # matching any ``include`` regex (all when empty) and no ``exclude`` regex;
  # everything else keeps its fresh initialisation.
  c.init.include = ()
  c.init.exclude = ()
  # load: the source's BatchNorm running statistics; reset: fresh ones
  # (mean 0, var 1) while the weights still load.
  c.init.batch_stats = "load"

  # --- data --------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "imdb_wiki/clean"  # TFDS name[/config]
  c.data.data_dir = ""  # TFDS data_dir; "" uses TFDS's default
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  # The face age benchmark's split 0-4 (agejax.data.folders): for a dataset
  # stored as folders (data_builders/facebase), sets train_split, eval_split
  # and test_split to that split's folders when the run starts; -1: off.
  c.data.protocol_split = -1
  # Held out from training and model choice; agejax.protocol reports it.
  c.data.test_split = "test"
  # Feature holding the training target (e.g. apparent_age on APPA-REAL) and,
  # optionally, its per-image std (for the ChaLearn epsilon-error).
  c.data.label = "age"
  c.data.label_std = ""
  c.data.image_size = 224  # network input (random/center crop of the stored image)
  # Progressive resizing: ((epoch, size), ...), the training input side from
  # that epoch on (data.image_size before the first; evaluation always uses
  # data.image_size).
  c.data.image_size_schedule = ()
  c.data.shuffle_buffer = 16_384
  c.data.prefetch = 2  # batches prepared ahead on the devices
  # Train-time augmentation, each switchable.
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.random_resized_crop = True
  c.data.augment.crop_scale_min = 0.6  # area fraction of the stored image
  c.data.augment.crop_scale_max = 1.0
  c.data.augment.crop_ratio_min = 0.8  # aspect ratio range of the crop
  c.data.augment.crop_ratio_max = 1.25
  c.data.augment.flip = True
  c.data.augment.rotation_degrees = 10.0  # uniform in +-this; 0: off
  c.data.augment.color_jitter = 0.2  # brightness/contrast/saturation strength; 0: off
  # Sample training images with equal probability per age (DEX equalised
  # the age distribution).
  c.data.balance_ages = False
  c.data.eval_flip_tta = False  # average predictions over the image and its mirror
  # A file of example keys every split the run reads leaves out (agejax.audit's
  # exclude.txt); '' for none.
  c.data.exclude = ""
  # 0: read from the built dataset's metadata. Set it to plan (--dry_run) a
  # config whose dataset is not built on this machine.
  c.data.num_train_examples = 0

  # --- training length -----------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128  # global batch, summed over all devices and hosts
  # ((epoch, global_batch), ...): the batch from that epoch on (train.batch_size
  # before the first entry). Each change starts a phase (see the plan).
  c.train.batch_size_schedule = ()
  c.train.num_epochs = 30.0
  c.train.num_train_steps = 0  # > 0 overrides num_epochs
  c.train.log_every_steps = 50  # train metrics (and the only host syncs)
  c.train.eval_every_steps = 0  # 0: after every epoch
  c.train.checkpoint_every_steps = 0  # 0: after every evaluation
  c.train.keep_checkpoints = 3  # the last K, plus the best ones below
  c.train.keep_best = 1
  c.train.best_metric = "mae"  # validation metric that picks the best checkpoint
  # At each evaluation, also evaluate this many training examples the way
  # validation is (no augmentation, eval mode): the honest train side of the
  # train/validation gap. 0: off.
  c.train.train_eval_examples = 1024
  c.train.early_stop_patience = 0  # stop after P evaluations without improvement; 0: off
  # Per-example loss weights by age against an imbalanced label histogram:
  # none | inverse | sqrt_inverse | lds (agejax.train.loss_weights).
  c.train.loss_weighting = "none"
  c.train.lds_sigma = 2.0  # lds: the Gaussian smoothing the histogram, in years
  c.train.profile = False  # capture a profiler trace of a few steps into the workdir

  # --- optimizer -----------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  # sgd | momentum | nesterov | adam | adamw | lamb | lars
  c.optim.name = "momentum"
  c.optim.lr = 0.1  # base (peak) learning rate; groups scale it by lr_mult
  # When train.batch_size_schedule changes the batch B: lr x (B / train.batch_size)
  # (linear), x sqrt of that (sqrt), or unchanged (none).
  c.optim.lr_scaling = "none"
  c.optim.momentum = 0.9
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.lars_trust_coefficient = 0.001
  c.optim.weight_decay = 0.0
  # decoupled: p -= lr * wd * p beside the optimizer's update (AdamW, SGDW).
  # l2: wd * p is added to the gradient before the optimizer sees it.
  c.optim.wd_mode = "decoupled"
  # Parameters whose path matches get no weight decay (biases and the
  # scale/bias of normalization layers by default). "" decays everything.
  c.optim.wd_exclude = r"(^|/)bias$|(^|/)(bn[^/]*|norm[^/]*)/scale$"
  # Ordered (regex, dict(lr_mult=, wd_mult=, freeze=)) pairs; first match wins;
  # unmatched parameters use lr_mult 1, wd_mult 1.
  c.optim.groups = ()
  c.optim.clip_grad_norm = 0.0  # 0: no clipping
  c.optim.grad_accum_steps = 1  # > 1: optax.MultiSteps
  c.optim.ema_decay = 0.0  # > 0: keep an EMA of the parameters for evaluation

  c.optim.schedule = ml_collections.ConfigDict()
  # constant | step | warmup_cosine | sgdr | onecycle | piecewise
  c.optim.schedule.name = "warmup_cosine"
  c.optim.schedule.warmup_steps = 0
  c.optim.schedule.warmup_epochs = 0.0  # used when warmup_steps == 0
  c.optim.schedule.warmup_init_factor = 0.0  # warmup starts at lr * this
  c.optim.schedule.end_factor = 0.0  # cosine ends at lr * this
  c.optim.schedule.decay_factor = 0.1  # step: multiply by this ...
  c.optim.schedule.decay_every_epochs = 2.0  # ... every this many epochs
  c.optim.schedule.decay_every_steps = 0  # > 0 overrides decay_every_epochs
  c.optim.schedule.cycle_epochs = 10.0  # sgdr: first cycle length
  c.optim.schedule.cycle_steps = 0  # > 0 overrides cycle_epochs
  c.optim.schedule.cycle_mult = 1.0  # sgdr: each cycle is this much longer
  c.optim.schedule.pct_start = 0.3  # onecycle: fraction of steps going up
  c.optim.schedule.div_factor = 25.0  # onecycle: start at lr / div_factor
  c.optim.schedule.final_div_factor = 1e4  # onecycle: end at start / this
  # piecewise: at each boundary (in epochs) multiply the lr by the scale.
  c.optim.schedule.boundaries_epochs = ()
  c.optim.schedule.scales = ()
  return c


def from_json(text: str) -> ml_collections.ConfigDict:
  """A config saved with ``to_json_best_effort``, on top of the defaults.

  JSON turns tuples into lists; the group, boundary and schedule sequences
  come back as tuples so the config compares equal to the one that was saved.
  """
  def as_tuple(value: Any) -> Any:
    return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value

  def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        flat.update(flatten(value, f"{prefix}{key}."))
      else:
        flat[f"{prefix}{key}"] = as_tuple(value)
    return flat

  cfg = default_config()
  cfg.update_from_flattened_dict(flatten(json.loads(text)))
  return cfg


def sibling(config_file: str, name: str) -> Any:
  """The config module ``name`` in the folder of ``config_file`` (a config's ``__file__``).

  Configs load each other by path, not as the ``configs`` package, so a
  config file works from any working directory and from a copy elsewhere.
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"agejax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
