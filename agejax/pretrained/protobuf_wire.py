"""The protobuf wire format, read field by field: what a .caffemodel is made of.

A message is a sequence of ``(field number, wire type, value)``: varints
(type 0), 64-bit words (1), length-delimited bytes (2: strings, nested
messages, packed repeated numbers) and 32-bit words (5). Reading only the
fields a reader asks for, with no generated classes and no schema, keeps a
500 MB Caffe file from being decoded into Python objects it never needs:
blobs come back as views of the file's bytes.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
  """The bytes are not a well-formed protobuf message (truncated, or not protobuf at all)."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    if pos >= len(data):
      raise WireError("truncated varint")
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7
    if shift > 63:
      raise WireError("varint longer than 10 bytes")


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
  """``(field, wire type, value)`` of each field in order: an int for varints and
  fixed words, a memoryview of the bytes for length-delimited fields."""
  data = memoryview(data)
  pos = 0
  while pos < len(data):
    key, pos = _varint(data, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
      raise WireError("field number 0")
    if wire == VARINT:
      value, pos = _varint(data, pos)
    elif wire == BYTES:
      size, pos = _varint(data, pos)
      if pos + size > len(data):
        raise WireError(f"field {number} needs {size} bytes, {len(data) - pos} left")
      value, pos = data[pos:pos + size], pos + size
    elif wire in (FIXED64, FIXED32):
      width = 8 if wire == FIXED64 else 4
      if pos + width > len(data):
        raise WireError(f"truncated {width * 8}-bit field {number}")
      value, pos = int.from_bytes(data[pos:pos + width], "little"), pos + width
    else:
      raise WireError(f"wire type {wire} of field {number} (groups are not read)")
    yield number, wire, value


def text(value: int | memoryview) -> str:
  """A string field."""
  if not isinstance(value, memoryview):
    raise WireError("a string field holds a number")
  return bytes(value).decode("utf-8", errors="replace")


def _packed(values: list[tuple[int, int | memoryview]], dtype: str, fixed: int) -> np.ndarray:
  """A repeated fixed-width number field: packed runs (type 2) and single values alike."""
  width = np.dtype(dtype).itemsize
  parts = []
  for wire, value in values:
    if wire == BYTES:
      if len(value) % width:
        raise WireError(f"packed {dtype} values of {len(value)} bytes")
      parts.append(np.frombuffer(value, dtype))
    elif wire == fixed:
      parts.append(np.frombuffer(int(value).to_bytes(width, "little"), dtype))
    else:
      raise WireError(f"a {dtype} field of wire type {wire}")
  return np.concatenate(parts) if parts else np.zeros(0, dtype)


def floats(values: list[tuple[int, int | memoryview]]) -> np.ndarray:
  """A repeated float field from its occurrences ``(wire type, value)``, in order."""
  return _packed(values, "<f4", FIXED32)


def doubles(values: list[tuple[int, int | memoryview]]) -> np.ndarray:
  """A repeated double field (packed or not)."""
  return _packed(values, "<f8", FIXED64)


def varints(values: list[tuple[int, int | memoryview]]) -> list[int]:
  """A repeated integer field (packed or not)."""
  out: list[int] = []
  for wire, value in values:
    if wire == BYTES:
      pos = 0
      while pos < len(value):
        number, pos = _varint(value, pos)
        out.append(number)
    elif wire == VARINT:
      out.append(int(value))
    else:
      raise WireError(f"an integer field of wire type {wire}")
  return out


def grouped(data: bytes | memoryview) -> dict[int, list[tuple[int, int | memoryview]]]:
  """``{field: [(wire type, value), ...]}`` of one message, in order of appearance."""
  out: dict[int, list[tuple[int, int | memoryview]]] = {}
  for number, wire, value in fields(data):
    out.setdefault(number, []).append((wire, value))
  return out
