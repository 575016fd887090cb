"""One path per job: divergence, plan == run, validation == evaluate, CLI style, import graph."""

import ast
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agejax import device_mesh
from agejax.errors import TrainingDiverged
from agejax.evaluation import evaluate_run
from agejax.models import paths
from agejax.train import loop
from agejax.train import planning
from agejax.train import step_state
from agejax.workdir import metric_io
from agejax.workdir import restore
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("main", "evaluate", "predict", "export", "convert", "tune", "lr_find", "protocol",
            "benchmark", "audit")


def _config(data_dir, **train_keys):
  cfg = tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.train.num_train_steps = 16
  cfg.train.eval_every_steps = 8
  cfg.train.checkpoint_every_steps = 4
  cfg.train.log_every_steps = 50  # no log step before the end: the loss is checked anyway
  for key, value in train_keys.items():
    cfg.train[key] = value
  return cfg


def _blow_up_after(cfg, updates: int):
  """The learning rate x1e38 from update ``updates`` on: the loss is non-finite one step later."""
  cfg.optim.schedule.name = "piecewise"
  spe = 256 // cfg.train.batch_size  # synthetic_faces/tiny's training split
  cfg.optim.schedule.boundaries_epochs = (updates / spe,)
  cfg.optim.schedule.scales = (1e38,)
  return cfg


@pytest.mark.parametrize("blow_up, diverged_at, last_good", [
    (6, 8, 4),  # non-finite loss first seen at step 8: an evaluation step
    (10, 12, 8),  # at step 12: a checkpoint-only step
])
def test_divergence_is_caught_before_evaluating_or_saving(tiny_data_dir, tmp_path, blow_up,
                                                          diverged_at, last_good):
  cfg = _blow_up_after(_config(tiny_data_dir), blow_up)
  with pytest.raises(TrainingDiverged) as info:
    loop.train_and_evaluate(cfg, str(tmp_path))
  assert info.value.step == diverged_at
  assert info.value.last_good_step == last_good
  with restore.checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps()[-1] == last_good
    for step in ckpt.all_steps():  # every checkpoint on disk is finite
      state = ckpt.restore_params(step)
      assert all(np.isfinite(v).all() for v in jax.tree.leaves(state["params"]))
  validation = [r["step"] for r in metric_io.read_metrics(str(tmp_path))
                if r["split"] == "validation"]
  assert diverged_at not in validation


def test_divergence_is_one_line_and_exit_code_1(tiny_data_dir, tmp_path):
  config = tmp_path / "diverging.py"
  config.write_text(
      "from configs import tiny\n"
      "def get_config():\n"
      "  c = tiny.get_config()\n"
      f"  c.data.data_dir = {tiny_data_dir!r}\n"
      "  c.train.num_train_steps, c.train.eval_every_steps = 16, 8\n"
      "  c.train.checkpoint_every_steps, c.train.log_every_steps = 4, 50\n"
      "  c.optim.schedule.name = 'piecewise'\n"
      "  c.optim.schedule.boundaries_epochs, c.optim.schedule.scales = (6 / 16,), (1e38,)\n"
      "  return c\n")
  result = subprocess.run(
      [sys.executable, "-m", "agejax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO))
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("agejax.main: training diverged at step 8 (non-finite training loss")
  assert "last good checkpoint: 4 in " in last
  assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["4"]


def test_the_planned_logged_and_applied_learning_rates_are_one(tiny_data_dir, tmp_path):
  """Groups, a sqrt-scaled batch-size phase, warm-up and accumulation: one function, three uses.

  Applied: the run's own optimizer under plain SGD on gradients of ones, so
  each parameter moves by exactly -lr at an update.
  """
  cfg = _config(tiny_data_dir, num_train_steps=24, log_every_steps=1, eval_every_steps=24,
                checkpoint_every_steps=24)
  cfg.optim.name, cfg.optim.weight_decay = "sgd", 0.0
  cfg.optim.grad_accum_steps = 2
  cfg.optim.lr_scaling = "sqrt"
  cfg.train.batch_size_schedule = ((0.5, 32),)  # 8 steps at 16, then 16 steps at 32
  cfg.optim.schedule.name = "warmup_cosine"
  cfg.optim.schedule.warmup_steps = 2  # updates
  cfg.optim.groups = ((r"^(stem|stage1)/", dict(lr_mult=0.1)),)
  plan = planning.make_plan(cfg.copy_and_resolve_references())
  assert [p.lr_factor for p in plan.length.phases] == [1.0, 2**0.5]
  loop.train_and_evaluate(cfg, str(tmp_path))
  logged = {r["step"]: r for r in metric_io.read_metrics(str(tmp_path)) if r["split"] == "train"}

  statics = step_state.build_step_fns(cfg, plan.length)
  first_path = {}
  for path, a in statics.assignments.items():
    first_path.setdefault(a.group, path)
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), planning.abstract_params(cfg))
  ones = jax.tree.map(jnp.ones_like, params)
  opt_state, update = statics.tx.init(params), jax.jit(statics.tx.update)
  applied = {}
  for step in range(1, plan.length.total_steps + 1):
    updates, opt_state = update(ones, opt_state, params)
    if step % 2 == 0:  # an update: the mean of two micro-batches of ones
      flat = paths.flatten(updates)
      moved = {g: np.unique(-np.asarray(flat[p])) for g, p in first_path.items()}
      assert all(m.size == 1 for m in moved.values())  # every element by the same lr
      applied[step] = {g: float(m[0]) for g, m in moved.items()}
  assert len(applied) == 12
  for step, lrs in applied.items():
    for group, lr in lrs.items():
      assert logged[step][f"lr/{group}"] == pytest.approx(lr, rel=1e-6), (step, group)
  checked = 0
  for step, lrs in plan.lr_milestones:
    for group, lr in lrs.items():
      if step:  # float32 rounding of the cosine, relative to the peak
        assert logged[step][f"lr/{group}"] == pytest.approx(
            lr, rel=1e-6, abs=1e-6 * cfg.optim.lr), (step, group)
        checked += 1
  assert checked >= 8
  # Closed form at step 10 (update 4, the first of the second phase): the
  # cosine of 12 updates after a 2-update warm-up, x sqrt(2), x the group's 0.1.
  cosine = 0.5 * (1 + np.cos(np.pi * (4 - 2) / (12 - 2))) * cfg.optim.lr
  assert applied[10]["default"] == pytest.approx(cosine * 2**0.5, rel=1e-6)
  assert applied[10][r"^(stem|stage1)/"] == pytest.approx(cosine * 2**0.5 * 0.1, rel=1e-6)
  assert dict(plan.lr_milestones)[5]["default"] == pytest.approx(cfg.optim.lr, rel=1e-6)


def test_validation_at_the_best_step_is_what_evaluate_reports(tiny_data_dir, tmp_path):
  cfg = _config(tiny_data_dir, eval_every_steps=4)
  cfg.optim.lr = 0.005
  cfg.data.eval_flip_tta = True
  summary = loop.train_and_evaluate(cfg, str(tmp_path))
  validation = {r["step"]: r["mae"] for r in metric_io.read_metrics(str(tmp_path))
                if r["split"] == "validation"}
  best = summary["best_step"]
  assert validation[best] == min(validation.values())
  result, = evaluate_run.evaluate_run(str(tmp_path), "best", tta=None, write_files=False).values()
  assert result["checkpoint_step"] == best and result["tta"] == "flip"
  assert result["mae"] == validation[best]  # the same number, bit for bit


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_without_library_chatter(command):
  result = subprocess.run([sys.executable, "-m", f"agejax.{command}", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "--" in result.stdout and "python -m agejax" in result.stdout
  assert "cuda" not in (result.stdout + result.stderr).lower()


@pytest.mark.parametrize("command", ["main", "tune", "lr_find", "protocol"])
def test_a_mistyped_override_is_one_config_line_and_exit_2(command, tmp_path):
  args = [f"--config={REPO}/configs/tiny.py", "--config.optim.lr_mults=1"]
  args += {"main": [f"--workdir={tmp_path}"], "lr_find": [f"--workdir={tmp_path}"],
           "tune": [f"--workdir_root={tmp_path}", "--study=s"],
           "protocol": [f"--workdir_root={tmp_path}", "--benchmark=AgeDB"]}[command]
  result = subprocess.run([sys.executable, "-m", f"agejax.{command}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"agejax.{command}: config error: optim.lr_mults: unknown config key "
      "(did you mean optim.lr, optim.groups, optim.lr_scaling?)"]


def _imports() -> dict[str, set[str]]:
  """agejax module -> the agejax modules it imports (any depth in the file)."""
  files = {".".join(p.with_suffix("").parts).removesuffix(".__init__"): p
           for p in pathlib.Path(REPO, "agejax").rglob("*.py")
           for p in [p.relative_to(REPO)]}
  graph = {m: set() for m in files}
  for module, path in files.items():
    for node in ast.walk(ast.parse((pathlib.Path(REPO) / path).read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        # ``from pkg import sub`` needs the submodule; ``from pkg import name``
        # needs pkg itself.
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files
                 else node.module for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      else:
        continue
      graph[module] |= {n for n in names if n in files and n != module}
  return graph


def test_the_package_has_no_import_cycle():
  _assert_acyclic(_imports())


def _package(module: str) -> str:
  """``agejax.train.loop`` -> ``agejax.train``; a top-level module is its own node."""
  return ".".join(module.split(".")[:2])


def test_no_two_packages_import_each_other_even_through_others():
  """config/ is imported by the owners of its rules, so it imports none of them."""
  graph: dict[str, set[str]] = {}
  for module, deps in _imports().items():
    graph.setdefault(_package(module), set()).update(
        _package(d) for d in deps if _package(d) != _package(module))
  _assert_acyclic(graph)
  assert graph["agejax.config"] <= {"agejax.errors"}


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
  state = {}

  def visit(node, stack):
    state[node] = "open"
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
      if dep not in state:
        visit(dep, stack + [dep])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])


def _config_keys_ruled(tree: ast.AST) -> set[str]:
  """Dotted keys a module raises ConfigError for, requires, or lists in its RULES."""
  keys = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
      name = getattr(node.func, "attr", getattr(node.func, "id", ""))
      if name in ("ConfigError", "require") and isinstance(node.args[0].value, str):
        keys.add(node.args[0].value)
    targets = getattr(node, "targets", [getattr(node, "target", None)])
    if (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict)
        and any(getattr(t, "id", "") == "RULES" for t in targets)):
      keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
  return keys


def test_each_config_key_has_its_rules_in_one_module():
  """``grep -rn '"optim.lr"' agejax`` finds the one module that decides what it may be."""
  owners: dict[str, set[str]] = {}
  for path in pathlib.Path(REPO, "agejax").rglob("*.py"):
    for key in _config_keys_ruled(ast.parse(path.read_text())):
      owners.setdefault(key, set()).add(str(path.relative_to(REPO)))
  assert {k: sorted(m) for k, m in owners.items() if len(m) > 1} == {}
  # The table is complete: the collector reaches every rule of the model,
  # optimizer, loop and data sections (a sample of keys, one per owner).
  assert {k: sorted(owners[k])[0] for k in ("model.arch", "model.head", "optim.lr",
                                             "train.best_metric", "train.log_every_steps",
                                             "train.batch_size", "init.batch_stats")} == {
      "model.arch": "agejax/models/__init__.py", "model.head": "agejax/models/heads.py",
      "optim.lr": "agejax/train/optim.py",
      "train.best_metric": "agejax/workdir/checkpointing.py",
      "train.log_every_steps": "agejax/train/cadence.py",
      "train.batch_size": "agejax/train/run_length.py",
      "init.batch_stats": "agejax/train/initial_weights.py"}


def test_no_function_is_longer_than_80_lines_without_saying_why():
  """A longer function either has two jobs or says, in its docstring, why it is one unit."""
  long = []
  for path in pathlib.Path(REPO, "agejax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > 80 and "one unit" not in (ast.get_docstring(node) or "").lower():
          long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
  assert long == []


def test_serving_and_evaluation_never_reach_the_training_loop():
  graph = _imports()
  for start in [m for m in graph if m.startswith(("agejax.serving", "agejax.evaluation"))]:
    seen, todo = set(), [start]
    while todo:
      for dep in graph[todo.pop()] - seen:
        seen.add(dep)
        todo.append(dep)
    assert not any(m.startswith("agejax.train") for m in seen), (start, sorted(seen))


def test_the_cli_defaults_match_the_library():
  from agejax import convert, predict, pretrained
  from agejax.serving import face_detect, inference

  options = face_detect.DetectorOptions()
  assert predict.FLAGS["max_side"].default == options.max_side
  assert predict.FLAGS["min_face_size"].default == options.min_face_size
  assert predict.FLAGS["min_score"].default == options.min_score
  assert (f"default: {face_detect.DEFAULT_DETECTOR} for photos, "
          f"{face_detect.DEFAULT_VIDEO_DETECTOR} for videos" in predict.FLAGS["detector"].help)
  assert predict.FLAGS["batch_size"].default == inference.DEFAULT_BATCH_SIZE
  assert convert.FORMATS == pretrained.FORMATS
  assert device_mesh.data_parallel_mesh().axis_names == ("data",)


@pytest.mark.parametrize("command, argv, line", [
    ("evaluate", [], "agejax.evaluate: --workdir is required"),
    ("export", ["--workdir=w"], "agejax.export: --output is required"),
    ("export", ["--workdir=w", "--output=o", "extra"], "agejax.export: unexpected arguments: extra"),
    ("main", ["--workdir=w", "--no_such_flag"],
     "agejax.main: Unknown command line flag 'no_such_flag'"),
])
def test_usage_errors_are_one_line_and_exit_2(command, argv, line, capsys):
  import importlib

  module = importlib.import_module(f"agejax.{command}")
  assert module.main([command, *argv]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [line]


def test_an_ema_run_is_validated_evaluated_and_exported_with_its_ema(tiny_data_dir, tmp_path):
  from agejax.serving import bundle
  from agejax.serving import exporters
  from agejax.models import paths

  cfg = _config(tiny_data_dir, num_train_steps=8, eval_every_steps=8, checkpoint_every_steps=8)
  cfg.optim.lr = 0.005
  cfg.optim.ema_decay = 0.5
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(cfg, workdir)
  with restore.checkpointer(workdir) as ckpt:
    stored = ckpt.restore_params(8)
  ema, raw = paths.flatten(stored["ema_params"]), paths.flatten(stored["params"])
  assert any(not np.array_equal(ema[k], raw[k]) for k in ema)  # the EMA lags the weights

  trained = restore.load_trained(workdir, "latest")
  for key, value in paths.flatten(trained.params).items():
    np.testing.assert_array_equal(np.asarray(value), ema[key], err_msg=key)
  validation, = [r["mae"] for r in metric_io.read_metrics(workdir) if r["split"] == "validation"]
  result, = evaluate_run.evaluate_run(workdir, "latest", write_files=False).values()
  assert result["mae"] == validation  # validation ran on the EMA, as evaluate does

  meta = exporters.export(workdir, str(tmp_path / "bundle"), "latest")
  assert meta["ema"] is True
  _, params, _ = bundle.read(str(tmp_path / "bundle"))
  for key, value in paths.flatten(params).items():
    np.testing.assert_array_equal(value, ema[key], err_msg=key)


def test_every_module_has_a_file_name_of_its_own():
  names = {}
  for path in pathlib.Path(REPO, "agejax").rglob("*.py"):
    if path.name not in ("__init__.py", "__main__.py"):
      names.setdefault(path.name, []).append(str(path.relative_to(REPO)))
  assert {n: p for n, p in names.items() if len(p) > 1} == {}


def test_no_module_of_agejax_is_imported_under_another_name():
  """``from agejax.train import run_length``, never ``... as length_lib``: names grep."""
  modules = set(_imports())
  renamed = []
  for path in [*pathlib.Path(REPO, "agejax").rglob("*.py"), *pathlib.Path(REPO, "tests").rglob("*.py"),
               *pathlib.Path(REPO, "configs").rglob("*.py")]:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        renamed += [f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{a.name} as {a.asname}"
                    for a in node.names
                    if a.asname and a.asname != a.name and f"{node.module}.{a.name}" in modules]
      elif isinstance(node, ast.Import):
        renamed += [f"{path.relative_to(REPO)}:{node.lineno} {a.name} as {a.asname}"
                    for a in node.names if a.asname and a.name in modules]
  assert renamed == []


def test_commands_leave_stderr_empty_at_default_verbosity(tiny_run, tmp_path):
  """evaluate, export, predict and report in fresh processes: results on stdout, nothing else."""
  import shutil

  from PIL import Image
  from skimage import data as skdata

  run = str(tmp_path / "run")
  shutil.copytree(tiny_run, run)  # evaluate and report write into the run
  photo = tmp_path / "coffee.png"
  Image.fromarray(skdata.coffee()).save(photo)
  bundle_dir = str(tmp_path / "bundle")
  commands = [["evaluate", f"--workdir={run}", "--checkpoint=latest"],
              ["export", f"--workdir={run}", f"--output={bundle_dir}", "--checkpoint=latest"],
              ["predict", f"--model={bundle_dir}", "--no_detect", str(photo)],
              ["report", f"--workdir={run}"]]
  for command in commands:
    result = subprocess.run([sys.executable, "-m", f"agejax.{command[0]}", *command[1:]],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, (command, result.stderr[-3000:])
    assert result.stdout.strip(), command
    assert result.stderr == "", (command, result.stderr[-3000:])
