"""What a run shows, in words: each diagnosis with the numbers behind it and what to change.

Every rule reads the series the trainer logs (``metrics.jsonl``) and fires
on the thresholds of :class:`Thresholds` (``agejax.report --threshold
NAME=VALUE`` changes one). The "last part" of a run is the last
``window`` fraction of its evaluations (at least two). A healthy run gets
none.

=====================  ==========================================================
kind                   fires when
=====================  ==========================================================
``diverging``          a training loss is NaN/Inf (the run stopped), a logged loss
                       exceeds ``diverging_loss_factor`` x the lowest before it, or
                       a block's update/parameter norm ratio exceeds
                       ``diverging_update_ratio``
``overfitting``        over the last ``overfit_patience`` evaluations validation
                       gained less than ``overfit_min_gain`` while train-eval fell
                       by more than ``overfit_train_drop`` (relative); or the
                       validation - train-eval gap is at least
                       ``overfit_gap_fraction`` of the validation error and grew
                       by ``overfit_gap_growth`` of its size since its smallest
``plateau``            train-eval and validation both moved less than
                       ``plateau_change`` (relative) over the last part while the
                       LR is still above ``plateau_lr_fraction`` of its peak
``still_improving``    the last evaluation is the best, the last two evaluations
                       improved validation by more than ``improving_drop``
                       (relative) and at ``improving_rate`` x or more of the run's
                       average pace per evaluation (a converging run slows down)
``block_not_learning`` a trainable block's median update ratio (second half of
                       the run) is below ``not_learning_factor`` x the head's
``collapse_to_mean``   the last validation's prediction std is below
                       ``collapse_spread`` x the label std
``input_bound``        the median data wait exceeds ``input_bound_wait`` of the
                       step time
``lr_decayed_too_early`` the learning rate fell below ``decayed_lr_fraction`` of
                       its peak while validation was still improving by more
                       than ``decayed_gain_before`` (relative) per evaluation
                       over the last two evaluations before that step, and it
                       improved by less than ``decayed_gain_after`` (relative)
                       in the two or more evaluations after it
``extremes_biased``    at the last evaluation, the youngest or the oldest age band
                       with at least ``extremes_min_examples`` validation faces
                       is pulled toward the mean age: its mean error exceeds the
                       overall mean error by more than ``extremes_bias`` years
                       (youngest, estimated too old) or falls short of it by more
                       (oldest, too young)
=====================  ==========================================================

``extremes_biased`` measures each band's bias against the overall bias, so
a run that is simply too old everywhere is not pulled toward the mean; the
bands are the age card's (:mod:`agejax.evaluation.age_card`), which
validation logs as ``band_bias/<band>`` and ``band_n/<band>``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from agejax.analysis import run_records
from agejax.errors import UsageError
from agejax.evaluation import age_card

_BAND_BIAS, _BAND_N = "band_bias/", "band_n/"  # validation's per-band scalars
KINDS = ("diverging", "overfitting", "plateau", "still_improving", "lr_decayed_too_early",
         "block_not_learning", "collapse_to_mean", "extremes_biased", "input_bound")


@dataclasses.dataclass(frozen=True)
class Thresholds:
  window: float = 0.3
  diverging_loss_factor: float = 2.0
  diverging_update_ratio: float = 1.0
  overfit_patience: int = 3
  overfit_min_gain: float = 0.01
  overfit_train_drop: float = 0.05
  # Every fitted model ends with train-eval below validation: tiny healthy
  # runs (ResNet-18 width 8, 256 faces) end 20-30% apart, so a gap is called
  # overfitting only from 40% of the validation error on.
  overfit_gap_fraction: float = 0.4
  overfit_gap_growth: float = 0.5
  plateau_change: float = 0.01
  plateau_lr_fraction: float = 0.1
  improving_rate: float = 0.25
  improving_drop: float = 0.01
  not_learning_factor: float = 1e-3
  collapse_spread: float = 0.25
  input_bound_wait: float = 0.05
  decayed_lr_fraction: float = 0.01
  decayed_gain_before: float = 0.01
  decayed_gain_after: float = 0.01
  extremes_bias: float = 3.0
  extremes_min_examples: float = 5

  @classmethod
  def parse(cls, settings: list[str]) -> "Thresholds":
    """``["collapse_spread=0.3", ...]`` over the defaults; UsageError names a bad one."""
    known = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}
    for setting in settings:
      name, sep, text = setting.partition("=")
      if not sep or name not in known:
        raise UsageError(f"--threshold {setting!r}: expected NAME=VALUE with NAME one of "
                         f"{', '.join(known)}")
      try:
        values[name] = int(text) if known[name] in ("int", int) else float(text)
      except ValueError:
        raise UsageError(f"--threshold {setting!r}: {text!r} is not a number") from None
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class Diagnosis:
  run: str
  kind: str
  evidence: dict[str, Any]
  advice: str

  def record(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def line(self) -> str:
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in self.evidence.items())
    return f"{self.kind}: {shown}\n  -> {self.advice}"


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.3g}"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
  return str(value)


def _window(n: int, fraction: float) -> int:
  """Evaluations in the last part of a run of ``n`` (at least 2, fewer than n)."""
  return min(n - 1, max(2, math.ceil(fraction * n)))


def _relative_range(values: np.ndarray) -> float:
  return float((values.max() - values.min()) / max(abs(values.mean()), 1e-12))


def _diverging(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  loss = run.series(run_records.TRAIN, "loss")
  stopped = (run.summary or {}).get("stopped", "")
  bad = ~np.isfinite(loss.values)
  if bad.any() or stopped.startswith("diverged"):
    step = int(loss.steps[bad][0]) if bad.any() else (run.summary or {}).get("step")
    return {"non_finite_loss_at_step": step, "stopped": stopped or "running"}
  for i in range(1, len(loss)):
    lowest = float(loss.values[:i].min())
    if loss.values[i] > t.diverging_loss_factor * lowest:
      return {"step": int(loss.steps[i]), "loss": float(loss.values[i]), "lowest_before": lowest}
  for name in run.names(run_records.TRAIN, run_records.BLOCK_UPDATE_RATIO):
    ratio = run.series(run_records.TRAIN, name)
    finite = np.isfinite(ratio.values)
    if finite.any() and ratio.values[finite].max() > t.diverging_update_ratio:
      i = int(np.argmax(np.where(finite, ratio.values, -np.inf)))
      return {"block": name[len(run_records.BLOCK_UPDATE_RATIO):], "update_ratio":
              float(ratio.values[i]), "step": int(ratio.steps[i])}
  return None


def _overfitting(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  val = run.series(run_records.VALIDATION, run.metric)
  train = run.series(run_records.TRAIN_EVAL, run.metric)
  if len(val) < 3 or len(train) != len(val):
    return None
  v, tr = val.values, train.values
  gaps = v - tr
  smallest = int(np.argmin(gaps))
  # Stalled: validation gained almost nothing over the last evaluations while
  # the training side kept falling.
  p = min(t.overfit_patience, len(v) - 1)
  val_gain = float((v[-p - 1] - v[-p:].min()) / max(abs(v[-p - 1]), 1e-12))
  train_drop = float((tr[-p - 1] - tr[-1]) / max(abs(tr[-p - 1]), 1e-12))
  stalled = val_gain < t.overfit_min_gain and train_drop > t.overfit_train_drop
  # Widening: the gap is a large part of the validation error and has grown
  # most of its size since it was smallest.
  gap_now = float(gaps[-1])
  widening = (gap_now >= t.overfit_gap_fraction * abs(float(v[-1])) and
              gap_now - float(gaps[smallest]) >= t.overfit_gap_growth * gap_now)
  if not (stalled or widening):
    return None
  best = int(np.argmin(v))
  return {f"validation_{run.metric}": float(v[-1]), f"train_eval_{run.metric}": float(tr[-1]),
          "gap_now": gap_now, "gap_smallest": float(gaps[smallest]),
          "gap_smallest_step": int(val.steps[smallest]),
          "best_validation_step": int(val.steps[best]),
          f"validation_gain_last_{p}": val_gain, f"train_eval_drop_last_{p}": train_drop}


def _plateau(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  val = run.series(run_records.VALIDATION, run.metric)
  if len(val) < 4:
    return None
  k = _window(len(val), t.window)
  flat = {"validation": _relative_range(val.values[-k:])}
  train = run.series(run_records.TRAIN_EVAL, run.metric)
  if len(train) >= k:
    flat["train_eval"] = _relative_range(train.values[-k:])
  if max(flat.values()) >= t.plateau_change:
    return None
  peak, last = _lr_peak_and_last(run)
  if peak is None or last < t.plateau_lr_fraction * peak:
    return None  # a decayed LR settling is convergence, not a plateau
  return {"since_step": int(val.steps[-k]), "relative_change": flat, "lr_now": last,
          "lr_peak": peak}


def _top_lr_curve(run: run_records.Run) -> run_records.Series | None:
  """The logged learning rate of the group with the highest peak; None if none was logged."""
  curves = [run.series(run_records.TRAIN, n) for n in run.names(run_records.TRAIN, run_records.LR)]
  curves = [c for c in curves if len(c) and c.values.max() > 0]
  return max(curves, key=lambda c: c.values.max()) if curves else None


def _lr_peak_and_last(run: run_records.Run) -> tuple[float | None, float]:
  top = _top_lr_curve(run)
  if top is None:
    return None, 0.0
  return float(top.values.max()), float(top.values[-1])


def _still_improving(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  val = run.series(run_records.VALIDATION, run.metric)
  v = val.values
  if len(v) < 3 or int(np.argmin(v)) != len(v) - 1:
    return None
  end_pace = float(v[-3] - v[-1]) / 2
  average_pace = float(v[0] - v[-1]) / (len(v) - 1)
  gain = float(v[-3] - v[-1]) / max(abs(float(v[-3])), 1e-12)
  if gain <= t.improving_drop or end_pace < t.improving_rate * average_pace:
    return None
  peak, last = _lr_peak_and_last(run)
  return {"since_step": int(val.steps[-3]), f"validation_{run.metric}_from": float(v[-3]),
          "to": float(v[-1]), "pace_per_eval_at_end": end_pace,
          "average_pace_per_eval": average_pace,
          "lr_at_end_fraction_of_peak": (last / peak) if peak else None}


def _lr_decayed_too_early(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  lr = _top_lr_curve(run)
  val = run.series(run_records.VALIDATION, run.metric)
  if lr is None or len(val) < 5:
    return None
  peak_at = int(np.argmax(lr.values))
  low = np.nonzero(lr.values[peak_at:] < t.decayed_lr_fraction * lr.values[peak_at])[0]
  if not low.size:
    return None
  decayed_step = int(lr.steps[peak_at + low[0]])
  before, after = val.values[val.steps <= decayed_step], val.values[val.steps > decayed_step]
  if len(before) < 3 or len(after) < 2:
    return None
  pace_before = float(before[-3] - before[-1]) / 2 / max(abs(float(before[-3])), 1e-12)
  gain_after = float(before[-1] - after.min()) / max(abs(float(before[-1])), 1e-12)
  if pace_before <= t.decayed_gain_before or gain_after >= t.decayed_gain_after:
    return None
  return {"decayed_at_step": decayed_step, "lr_peak": float(lr.values[peak_at]),
          "lr_then": float(lr.values[peak_at + low[0]]),
          "gain_per_eval_before": pace_before, "gain_after": gain_after,
          f"validation_{run.metric}_at_decay": float(before[-1]),
          f"best_validation_{run.metric}_after": float(after.min())}


def _block_not_learning(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  names = run.names(run_records.TRAIN, run_records.BLOCK_UPDATE_RATIO)
  medians = {}
  for name in names:
    s = run.series(run_records.TRAIN, name)
    tail = s.values[len(s) // 2:]
    tail = tail[np.isfinite(tail)]
    if tail.size:
      medians[name[len(run_records.BLOCK_UPDATE_RATIO):]] = float(np.median(tail))
  head = medians.get("head")
  if not head:
    return None
  slow = {b: r for b, r in medians.items() if b != "head" and r < t.not_learning_factor * head}
  if not slow:
    return None
  mults = block_lr_mults(run)
  return {"blocks": slow, "head_update_ratio": head,
          "lr_mult": {b: mults.get(b) for b in slow}}


def block_lr_mults(run: run_records.Run) -> dict[str, Any]:
  """The ``lr_mult`` of each block's trainable parameters (one number, or [min, max])."""
  from agejax import models  # pylint: disable=import-outside-toplevel
  from agejax.models import paths  # pylint: disable=import-outside-toplevel
  from agejax.train import optim  # pylint: disable=import-outside-toplevel

  cfg = run.config
  shapes = models.param_shapes(cfg.model, cfg.data.image_size)
  tree = paths.unflatten({p: np.zeros((), np.float32) for p in shapes})
  per_block: dict[str, set[float]] = {}
  for path, a in optim.assign_groups(cfg.optim, tree).items():
    if not a.frozen:
      per_block.setdefault(paths.block_of(path), set()).add(a.lr_mult)
  return {b: (min(m) if len(m) == 1 else [min(m), max(m)]) for b, m in per_block.items()}


def _collapse(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  records = run.records.get(run_records.VALIDATION, [])
  last = next((r for r in reversed(records) if "pred_std" in r and "true_std" in r), None)
  if last is None:
    return None
  pred, true = float(last["pred_std"]), float(last["true_std"])
  if not (true > 0 and pred < t.collapse_spread * true):
    return None
  return {"step": int(last["step"]), "prediction_std": pred, "label_std": true,
          "prediction_mean": float(last.get("pred_mean", math.nan)),
          "label_mean": float(last.get("true_mean", math.nan))}


def _logged_bands(record: dict[str, Any], min_examples: float) -> list[tuple[str, float]]:
  """``(band, bias)`` of a validation record's bands with enough faces, youngest first."""
  found = []
  for key, bias in record.items():
    band = key[len(_BAND_BIAS):]
    if key.startswith(_BAND_BIAS) and float(record.get(_BAND_N + band, 0)) >= min_examples:
      found.append((age_card.parse_bands(band)[0], band, float(bias)))
  return [(band, bias) for _, band, bias in sorted(found)]


def _extremes_biased(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  records = run.records.get(run_records.VALIDATION, [])
  last = next((r for r in reversed(records) if "mean_error" in r), None)
  bands = _logged_bands(last, t.extremes_min_examples) if last else []
  if len(bands) < 2:  # runs logged before validation had bands, or one band only
    return None
  overall = float(last["mean_error"])
  (young, young_bias), (old, old_bias) = bands[0], bands[-1]
  pulled = {}
  if young_bias - overall > t.extremes_bias:
    pulled[young] = young_bias
  if overall - old_bias > t.extremes_bias:
    pulled[old] = old_bias
  if not pulled:
    return None
  return {"step": int(last["step"]), "band_bias": pulled, "overall_bias": overall,
          f"validation_{run.metric}": float(last.get(run.metric, math.nan))}


def _input_bound(run: run_records.Run, t: Thresholds) -> dict[str, Any] | None:
  wait = run.series(run_records.TRAIN, "data_wait_fraction")
  if not len(wait):
    return None
  median = float(np.median(wait.values))
  if median <= t.input_bound_wait:
    return None
  speed = run.series(run_records.TRAIN, "images_per_sec")
  return {"median_data_wait": median,
          "images_per_sec": float(np.median(speed.values)) if len(speed) else None}


def _advice(kind: str, run: run_records.Run, evidence: dict[str, Any]) -> str:
  cfg = run.config
  if kind == "diverging":
    return (f"lower optim.lr (now {cfg.optim.lr:g}; python -m agejax.lr_find finds the "
            "range), add warm-up (optim.schedule.warmup_epochs=1) or clip gradients "
            "(optim.clip_grad_norm=1.0)")
  if kind == "overfitting":
    return (f"the best checkpoint (step {evidence['best_validation_step']}) is what "
            "evaluate/export use; to generalise further: stronger augmentation "
            "(data.augment.*), more weight decay (optim.weight_decay="
            f"{max(cfg.optim.weight_decay * 5, 1e-4):g}), a lower backbone lr_mult in "
            "optim.groups, pretrained weights (init.pretrained) or more data; "
            "train.early_stop_patience=3 stops such a run early")
  if kind == "plateau":
    return ("the learning rate is still high and nothing moves: decay it (optim.schedule."
            "name=warmup_cosine or step) or lower optim.lr; if it was flat from the start, "
            "the LR may be too low (python -m agejax.lr_find)")
  if kind == "still_improving":
    frac = evidence.get("lr_at_end_fraction_of_peak")
    why = ("the schedule had decayed by the end: more epochs let the cosine run longer"
           if frac is not None and frac < 0.05 else "the run stopped early")
    return (f"{why}; train longer (train.num_epochs={cfg.train.num_epochs * 2:g}) "
            "or resume from the latest checkpoint with a longer schedule")
  if kind == "lr_decayed_too_early":
    schedule = cfg.optim.schedule
    return (f"the learning rate was cut to {_fmt(evidence['lr_then'])} at step "
            f"{evidence['decayed_at_step']} while validation still gained "
            f"{evidence['gain_per_eval_before']:.1%} per evaluation, and it has barely moved "
            f"since: decay later or less (optim.schedule.name={schedule.name}; "
            f"decay_every_epochs={schedule.decay_every_epochs:g}, "
            f"decay_factor={schedule.decay_factor:g}; warmup_cosine over the whole run "
            "decays gradually), or raise optim.lr")
  if kind == "block_not_learning":
    blocks = ", ".join(evidence["blocks"])
    return (f"{blocks} barely move: raise their lr_mult in optim.groups (e.g. 0.1 instead "
            f"of {_fmt(evidence['lr_mult'])}), or freeze them (freeze=True) if that is "
            "intended, which also saves their optimizer state")
  if kind == "collapse_to_mean":
    return ("the model predicts about the mean age for every face: check that the "
            "backbone learns (block update ratios), that init.pretrained loaded, and "
            "that optim.lr is not so high that the head sits at the prior; train longer")
  if kind == "extremes_biased":
    shown = ", ".join(f"{band} {bias:+.1f}" for band, bias in evidence["band_bias"].items())
    # Only the remedies the run does not use yet.
    weighting = cfg.train.get("loss_weighting", "none")
    remedies = ["weight them up (train.loss_weighting=lds, or sqrt_inverse)"
                if weighting == "none" else
                f"weight them up more (train.loss_weighting={weighting} now; inverse weights "
                "the rarest ages most)"]
    if not cfg.data.balance_ages:
      remedies.append("resample them (data.balance_ages=True)")
    if cfg.model.head != "dldl":
      remedies.append("use a label-distribution head (model.head=dldl)")
    return (f"the extreme ages are pulled toward the mean (mean error {shown} years against "
            f"{evidence['overall_bias']:+.1f} overall): " + ", ".join(remedies) +
            ", or add training faces at those ages; python -m agejax.evaluate prints the "
            "age card per band")
  if kind == "input_bound":
    return ("the input pipeline is the bottleneck: raise data.prefetch, use more CPU "
            "cores per GPU, cheaper augmentation (data.augment.rotation_degrees=0) or "
            "smaller stored images; python -m agejax.benchmark pipeline measures it")
  raise ValueError(kind)


RULES: dict[str, Callable[[run_records.Run, Thresholds], dict[str, Any] | None]] = {
    "diverging": _diverging,
    "overfitting": _overfitting,
    "plateau": _plateau,
    "still_improving": _still_improving,
    "lr_decayed_too_early": _lr_decayed_too_early,
    "block_not_learning": _block_not_learning,
    "collapse_to_mean": _collapse,
    "extremes_biased": _extremes_biased,
    "input_bound": _input_bound,
}


def diagnose(run: run_records.Run, thresholds: Thresholds = Thresholds()) -> list[Diagnosis]:
  """Every rule that fires on ``run``, in :data:`KINDS` order."""
  found = []
  for kind in KINDS:
    evidence = RULES[kind](run, thresholds)
    if evidence is not None:
      found.append(Diagnosis(run.name, kind, evidence, _advice(kind, run, evidence)))
  return found
