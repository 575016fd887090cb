"""Search space for the DEX recipe (configs/imdb_wiki_resnet50.py).

  python -m agejax.tune --config=configs/imdb_wiki_resnet50.py --space=configs/spaces/dex.py \
      --study=dex --trials=30 --workdir_root=/runs/dex_search

Each key is a config key as on the command line; Optuna picks the values.
"""


def space(trial):
  optimizer = trial.suggest_categorical("optimizer", ["momentum", "nesterov", "adamw"])
  # Adam-family optimizers want learning rates about 100x smaller than SGD's.
  lr_range = (1e-5, 1e-3) if optimizer == "adamw" else (1e-3, 0.1)
  lr = trial.suggest_float(f"lr_{optimizer}", *lr_range, log=True)
  # The backbone trains at this fraction of the head's rate (fine-tuning).
  backbone_ratio = trial.suggest_float("backbone_lr_ratio", 0.01, 1.0, log=True)
  return {
      "optim.name": optimizer,
      "optim.lr": lr,
      "optim.weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
      "optim.schedule.name": trial.suggest_categorical(
          "schedule", ["warmup_cosine", "step", "sgdr"]),
      "train.batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
      "optim.groups": ((r"^(stem|stage[1-4])/", dict(lr_mult=backbone_ratio)),),
  }
