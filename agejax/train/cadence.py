"""When the training loop logs, evaluates, checkpoints and stops early.

Steps are 1-based counts of finished steps. The last step of a run is always
logged, evaluated and checkpointed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from agejax.config import config_check

RULES: dict[str, config_check.Rule] = {
    "train.log_every_steps": config_check.POSITIVE,
    "train.eval_every_steps": config_check.NON_NEGATIVE,
    "train.checkpoint_every_steps": config_check.NON_NEGATIVE,
    "train.early_stop_patience": config_check.NON_NEGATIVE,
    "train.train_eval_examples": config_check.NON_NEGATIVE,
}


def check(cfg: ml_collections.ConfigDict) -> None:
  """The rules of the loop's intervals."""
  config_check.check_rules(cfg, RULES)


@dataclasses.dataclass(frozen=True)
class Cadence:
  """The loop's intervals, resolved: 0 in the config means "every epoch" or "every evaluation"."""
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  patience: int  # evaluations without improvement before stopping; 0: never

  @classmethod
  def of(cls, cfg: ml_collections.ConfigDict, length: Any) -> "Cadence":
    eval_every = cfg.train.eval_every_steps or length.steps_per_epoch
    return cls(total_steps=length.total_steps, log_every=cfg.train.log_every_steps,
               eval_every=eval_every,
               checkpoint_every=cfg.train.checkpoint_every_steps or eval_every,
               patience=cfg.train.early_stop_patience)

  def _every(self, step: int, interval: int) -> bool:
    return step % interval == 0 or step == self.total_steps

  def logs(self, step: int) -> bool:
    return self._every(step, self.log_every)

  def evaluates(self, step: int) -> bool:
    return self._every(step, self.eval_every)

  def checkpoints(self, step: int) -> bool:
    return self._every(step, self.checkpoint_every)

  def out_of_patience(self, evals_since_best: int) -> bool:
    return bool(self.patience) and evals_since_best >= self.patience
