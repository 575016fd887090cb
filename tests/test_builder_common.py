"""The builders' shared identity split: fractions, stability, name normalisation."""

import collections
import hashlib

import pytest

from data_builders import common


def test_identity_split_fractions_over_ten_thousand_names():
  counts = collections.Counter(common.split_of(f"person {i}") for i in range(10_000))
  for split, fraction in zip(common.SPLITS, common.DEFAULT_FRACTIONS):
    assert counts[split] / 10_000 == pytest.approx(fraction, abs=0.01), split


def test_the_split_is_the_closed_form_of_the_name_hash():
  for name in ("jose ferrer", "brad pitt", "person 17"):
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    expected = "train" if u < 0.90 else "validation" if u < 0.95 else "test"
    assert common.split_of(name) == expected


def test_spellings_of_one_person_share_a_key():
  assert common.normalize_name("  Brad   Pitt ") == common.normalize_name("brad pitt")
  assert common.normalize_name("José Ferrer") == "jose ferrer"


def test_fractions_must_sum_to_one():
  with pytest.raises(ValueError, match="must sum to 1"):
    common.split_of("x", (0.5, 0.2, 0.2))
