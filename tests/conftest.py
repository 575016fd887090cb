"""Shared test set-up: CPU only, and the repository's configs importable."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests build the same tiny networks many times, in this process and in
# subprocesses: a persistent compilation cache compiles each once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/agejax-test-jax-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
