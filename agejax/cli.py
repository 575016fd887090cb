"""How every ``python -m agejax.X`` command parses its flags and fails.

Each command module declares its flags on its own ``flags.FlagValues``
(:func:`new_flags`), so several commands can be imported, and their ``main``
called, in one process. :func:`run` then gives all of them the same
behaviour:

* ``--help`` (``-h``, ``--helpfull``) prints the module's docstring and its
  flags with their defaults to stdout and exits 0, before anything heavy
  (JAX, TensorFlow) is imported;
* a bad flag or config override is one line on stderr and exit code 2;
* an :class:`agejax.errors.AgejaxError` raised by the command is one line and
  its ``exit_code`` (2: usage/config, 1: the run failed);
* library start-up chatter (TensorFlow's C++ log, absl INFO) stays off unless
  ``--verbosity`` asks for it; with ``--verbosity>=1`` errors keep their
  traceback.

This module imports only absl and the standard library: it runs before the
command decides what else it needs.
"""

from __future__ import annotations

import errno
import importlib.util
import logging as pylogging
import os
import sys
import warnings
import traceback
from typing import Callable, Sequence

from absl import flags
from absl import logging

from agejax import errors
from agejax import terminal

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def new_flags() -> flags.FlagValues:
  """An empty flag set with the ``--verbosity`` every command has."""
  fv = flags.FlagValues()
  flags.DEFINE_integer(
      "verbosity", 0, "0: warnings and this command's output; 1: INFO logs of every "
      "library and tracebacks; 2: debug.", short_name="v", flag_values=fv)
  return fv


def import_tensorflow_quietly() -> None:
  """Imports TF with its C++ start-up lines discarded.

  TF logs "Could not find cuda drivers" and "All log messages before
  absl::InitializeLog()" through absl's C++ logging before it is
  initialised, which no environment variable turns off.
  """
  if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
    return  # a GPU machine without TF runs the commands that do not need it
  with terminal.native_stderr_discarded():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    # TF maps nearly all of a GPU's memory when it first creates its devices,
    # even for ops placed on the CPU (MTCNN's); JAX, which runs the models,
    # preallocates its own share. TF takes what it uses instead. (Commands
    # that read data hide the GPUs from TF altogether: catalog.setup_tensorflow.)
    try:
      for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # TF's devices exist already: too late, and harmless
      pass


def quiet_libraries(verbosity: int, uses_tensorflow: bool = True) -> None:
  """Silences native-library start-up logs; call before TF/JAX are imported."""
  if verbosity < 1:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ INFO/WARNING/ERROR
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # FFmpeg's lines under OpenCV ("moov atom not found", "overread 3"): the
    # video errors say what they meant in one line. Read once, when OpenCV
    # first opens a video in the process.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    # Libraries' Python warnings about their own internals (orbax's "Sharding
    # info not provided", TFLite's deprecation notice) are not the user's to
    # act on; agejax's own warnings go through absl logging and stay.
    for module in ("orbax", "tensorflow", "tf_keras", "keras", "jax", "flax", "optax",
                   "ai_edge_litert", "onnxruntime", "tensorflow_datasets"):
      warnings.filterwarnings("ignore", module=module + r"(\.|$)")
    if uses_tensorflow:
      import_tensorflow_quietly()
  # A log file on a full disk must not print "--- Logging error ---" tracebacks:
  # the command's own error says what happened.
  pylogging.raiseExceptions = verbosity >= 1
  if not flags.FLAGS.is_parsed():
    # The commands parse their own FlagValues; absl's global ones stay unparsed,
    # and absl then prefixes log lines with "Logging before flag parsing".
    flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()  # absl's log lines on stderr, as absl.app would set up
  logging.set_verbosity(logging.DEBUG if verbosity >= 2 else
                        logging.INFO if verbosity == 1 else logging.WARNING)
  pylogging.getLogger().setLevel(pylogging.DEBUG if verbosity >= 2 else
                                 pylogging.INFO if verbosity == 1 else pylogging.WARNING)


def help_text(doc: str, fv: flags.FlagValues) -> str:
  module_flags = fv.get_help(include_special_flags=False)
  return f"{(doc or '').strip()}\n\nflags:\n{module_flags}\n"


def _config_override_error(argv: Sequence[str]) -> errors.ConfigError | None:
  """The ConfigError of the first ``--config.<key>`` override agejax does not declare."""
  from agejax.config import config_check  # pylint: disable=import-outside-toplevel

  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      problem = config_check.unknown_key_error(key)
      if problem is not None:
        return problem
  return None


def _config_path(argv: Sequence[str]) -> str | None:
  """The file of ``--config=FILE[:ARGS]`` (or ``--config FILE``) on the command line."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    return value.split(":", 1)[0]
  return None


def _in_config_file(error: BaseException, path: str) -> str | None:
  """``FILE:LINE: Type: message`` of the innermost frame of ``path`` in ``error``'s chain."""
  target = os.path.realpath(path)
  for link in errors.exception_chain(error):
    frames = [f for f in traceback.extract_tb(link.__traceback__)
              if os.path.realpath(f.filename) == target]
    if frames:
      message = str(link).strip().splitlines()
      text = message[0] if message else ""
      return f"{path}:{frames[-1].lineno}: {type(link).__name__}: {text}"
  return None


def config_file_error(path: str, error: BaseException | None) -> errors.ConfigError | None:
  """The one-line error of a config file that is missing, lacks get_config() or raises."""
  if not os.path.isfile(path):
    return errors.ConfigError("--config", f"{path}: no such file")
  if error is None:
    return None
  if any(isinstance(link, AttributeError) and "get_config" in str(link)
         for link in errors.exception_chain(error)):
    return errors.ConfigError("--config", f"{path} defines no get_config() function")
  located = _in_config_file(error, path)
  return errors.ConfigError("--config", located) if located else None


def _loaded_config_error(fv: flags.FlagValues, path: str | None) -> errors.ConfigError | None:
  """ml_collections defers an IOError of loading the config to its first use: force it."""
  if path is None or "config" not in fv:
    return None
  try:
    fv["config"].value.keys()
  except Exception as e:  # pylint: disable=broad-except
    return config_file_error(path, e) or errors.ConfigError("--config", f"{path}: {e}")
  return None


_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException) -> errors.RunFailed | None:
  """The one-line error of a full disk or quota anywhere in ``error``'s chain (a log
  file, TensorBoard's writer, a JSON file); None for any other error."""
  for link in errors.exception_chain(error):
    text = str(link)
    if (isinstance(link, OSError) and link.errno in _FULL) or "No space left on device" in text:
      where = getattr(link, "filename", None) or next(
          (w for w in text.replace(";", " ").split() if w.startswith("/")), "")
      failed = errors.RunFailed(
          f"no space left on device{f' writing {where}' if where else ''}; free space (or fix "
          "the mount), then run the same command again (complete checkpoints are kept)")
      failed.__cause__ = error
      return failed
  return None


def report(prog: str, error: BaseException, verbosity: int) -> int:
  """Prints ``error`` as one line (with its traceback at ``verbosity >= 1``)."""
  if verbosity >= 1:
    traceback.print_exception(error)
  message = str(error).strip().splitlines()
  line = message[0] if message else type(error).__name__
  kind = "config error: " if isinstance(error, errors.ConfigError) else ""
  print(f"{prog}: {kind}{line}", file=sys.stderr, flush=True)
  return getattr(error, "exit_code", errors.EXIT_RUN_FAILED)


def run(main: Callable[[list[str]], int | None], fv: flags.FlagValues, doc: str,
        argv: Sequence[str] | None = None, *, prog: str | None = None,
        required: Sequence[str] = (), takes_args: bool = False,
        user_errors: tuple[type[BaseException], ...] = (),
        uses_tensorflow: bool = True) -> int:
  """Parses ``argv`` into ``fv``, runs ``main(positional args)``; returns the exit code.

  Args:
    main: the command; returns an exit code or None (0).
    fv: the command's flags (from :func:`new_flags`).
    doc: what ``--help`` prints above the flags (the module docstring).
    argv: the command line including the program name; default sys.argv.
    prog: the name in messages; default ``argv[0]``.
    required: flags that must be given (``--NAME is required`` otherwise).
    takes_args: the command takes positional arguments (else they are refused).
    user_errors: further exception types that mean bad input (a missing file),
      reported as one line with exit code 2.
    uses_tensorflow: the command reads data with TF: it is imported up front
      with its native start-up chatter discarded (unless ``--verbosity``).
  """
  argv = list(sys.argv if argv is None else argv)
  prog = prog or os.path.basename(argv[0])
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(help_text(doc, fv), end="")
    return errors.EXIT_OK
  saved_argv = sys.argv
  # ml_collections' config flags read their overrides from sys.argv.
  sys.argv = argv
  try:
    config_path = _config_path(argv) if "config" in fv else None
    if config_path is not None and not os.path.isfile(config_path):
      return report(prog, config_file_error(config_path, None), 0)
    try:
      positional = fv(argv)
      problem = _loaded_config_error(fv, config_path)
    except Exception as e:  # pylint: disable=broad-except
      problem = ((config_path and config_file_error(config_path, e)) or
                 _config_override_error(argv) or errors.UsageError(str(e)))
    if problem is not None:
      return report(prog, problem, 0)
    verbosity = fv["verbosity"].value
    quiet_libraries(verbosity, uses_tensorflow)
    try:
      args = positional[1:]
      if args and not takes_args:
        raise errors.UsageError(f"unexpected arguments: {' '.join(args)}")
      for name in required:
        if not fv[name].value:
          raise errors.UsageError(f"--{name} is required")
      code = main(args)
      return errors.EXIT_OK if code is None else int(code)
    except errors.AgejaxError as e:
      return report(prog, e, verbosity)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, *user_errors) as e:
      report(prog, e, verbosity)
      return errors.EXIT_USAGE
    except Exception as e:  # pylint: disable=broad-except
      full = disk_full(e)
      if full is None:
        raise
      if verbosity < 1:  # writer threads failing on the same disk as they stop: said already
        logging.set_verbosity(logging.FATAL)
      return report(prog, full, verbosity)
  finally:
    sys.argv = saved_argv
    fv.unparse_flags()  # the command can run again in this process
    # ml_collections defines a flag per --config.key override as it parses; a
    # later run in this process (another config file) would define it again.
    for name in [n for n in fv if n.startswith("config.")]:
      delattr(fv, name)
