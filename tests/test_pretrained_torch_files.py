"""Files written by real torch 2.14 (tests/data/torch_*.pth), read without torch.

``torch_zip.pth`` and ``torch_legacy.pth`` hold the same state dict, saved
with and without ``_use_new_zipfile_serialization``: a Conv2d + BatchNorm2d
state dict (float32, int64 ``num_batches_tracked``, ``_metadata``) plus a
transposed view and an offset strided slice of one storage, bfloat16, float16
and a Parameter. ``torch_expected.npz`` holds what torch itself returned for
each entry (bfloat16 as its exact float32 values) and its dtype. They were
written by this script, kept here so that the bytes can be made again::

  torch.manual_seed(0)
  net = nn.Sequential(nn.Conv2d(3, 2, 3, bias=False), nn.BatchNorm2d(2))
  net[1].running_mean = [0.25, -0.5]; net[1].num_batches_tracked = 7
  state = net.state_dict(); base = torch.arange(12.).reshape(3, 4) / 8
  state["view.t"] = base.t(); state["view.slice"] = base[1:, ::2]
  state["bf16"] = (torch.randn(5) * 3).bfloat16(); state["half"] = torch.randn(2, 2).half()
  state["param"] = nn.Parameter(torch.randn(3))
  torch.save(state, "torch_zip.pth")
  torch.save(state, "torch_legacy.pth", _use_new_zipfile_serialization=False)
"""

import os
import pickle

import ml_dtypes
import numpy as np
import pytest

from agejax.pretrained import torch_pickle
from agejax.pretrained.types import WeightImportError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FILES = ("torch_zip.pth", "torch_legacy.pth")
DTYPES = {"float32": np.float32, "int64": np.int64, "bfloat16": ml_dtypes.bfloat16,
          "float16": np.float16}


@pytest.fixture(scope="module")
def expected():
  npz = np.load(os.path.join(DATA, "torch_expected.npz"))
  return {k: (npz[k], DTYPES[str(npz[k + ".dtype"])]) for k in npz.files
          if not k.endswith(".dtype")}


@pytest.mark.parametrize("name", FILES)
def test_real_torch_files_read_as_torch_returned_them(name, expected):
  loaded = torch_pickle.load_state_dict(os.path.join(DATA, name))
  assert list(loaded) == list(expected)  # the state dict's order too
  for key, (values, dtype) in expected.items():
    assert loaded[key].dtype == dtype, key
    np.testing.assert_array_equal(loaded[key].astype(values.dtype), values, err_msg=key)
    assert loaded[key].flags["C_CONTIGUOUS"], key  # views come back as compact copies


def test_legacy_and_zip_files_are_bit_identical():
  zipped, legacy = (torch_pickle.unpickle(os.path.join(DATA, n)) for n in FILES)
  assert list(zipped) == list(legacy)
  for key in zipped:
    assert zipped[key].dtype == legacy[key].dtype
    assert zipped[key].tobytes() == legacy[key].tobytes(), key
  # The state dict's _metadata (module versions) survives in both.
  assert legacy._metadata == zipped._metadata  # pylint: disable=protected-access
  assert "1" in legacy._metadata  # pylint: disable=protected-access


def _legacy_stream(obj_pickle: bytes, keys: list, storages: bytes = b"") -> bytes:
  """A legacy torch.save stream around a hand-written object pickle."""
  head = b"".join(pickle.dumps(x, protocol=2) for x in (
      0x1950a86a20f9469cfc6c, 1001,
      {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}))
  return head + obj_pickle + pickle.dumps(keys, protocol=2) + storages


def test_legacy_files_refuse_code_and_run_nothing(tmp_path):
  marker = tmp_path / "pwned"
  evil = f"cposix\nsystem\n(V touch {marker}\ntR.".encode()
  path = tmp_path / "evil.pth"
  path.write_bytes(_legacy_stream(evil, []))
  with pytest.raises(WeightImportError, match=r"refusing to unpickle global posix\.system"):
    torch_pickle.load_state_dict(str(path))
  assert not marker.exists()


def test_a_truncated_legacy_file_is_one_error(tmp_path):
  data = open(os.path.join(DATA, "torch_legacy.pth"), "rb").read()
  for cut in (20, len(data) // 2, len(data) - 5):
    path = tmp_path / f"cut{cut}.pth"
    path.write_bytes(data[:cut])
    with pytest.raises(WeightImportError, match=r"cut\d+\.pth: "):
      torch_pickle.load_state_dict(str(path))


def test_the_command_reads_legacy_files_as_it_reads_zip_files(capsys):
  """agejax.convert takes a legacy torch.save stream (it refused it as an unknown format)."""
  from agejax import convert
  from agejax import pretrained

  lines = []
  for name in FILES:
    path = os.path.join(DATA, name)
    assert pretrained.detect_format(path) == "torch"
    # These test files hold a small state dict, not a network: both are read,
    # and both are refused for the same reason, with their tensors named.
    assert convert.main(["convert", f"--input={path}", "--output=/nonexistent/x"]) == 2
    lines.append(capsys.readouterr().err.strip().splitlines()[-1].replace(name, "FILE"))
  assert lines[0] == lines[1]
  assert "looks like neither a torchvision/timm ResNet nor VGG-16 (names: 0.weight" in lines[0]
