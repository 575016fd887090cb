"""The age card's bootstrap against closed forms; bands parse; the card refuses mismatched data."""

import numpy as np
import pytest

from agejax.evaluation import age_card


def test_a_constant_error_has_a_zero_width_interval():
  true = np.arange(0.0, 100.0)
  card = age_card.age_card(true + 2.0, true, resamples=200)
  for band in card["bands"]:
    assert band["mae"] == band["bias"] == 2.0
    assert band["mae_ci"] == [2.0, 2.0] and band["bias_ci"] == [2.0, 2.0]


def test_identity_resampling_keeps_an_identitys_examples_together():
  # Person a: three photos with error 1; person b: one photo with error 5.
  errors = np.array([1.0, 1.0, 1.0, 5.0])
  where = np.ones(4)
  people = age_card.Bootstrap.over(["a", "a", "a", "b"], 4, resamples=2000)
  # Two people drawn with replacement: aa (MAE 1), ab (8/4 = 2) or bb (5).
  assert set(np.unique(people.samples(errors, where))) == {1.0, 2.0, 5.0}
  photos = age_card.Bootstrap.over(None, 4, resamples=2000)
  # Four photos drawn: k copies of the 5 give (5k + 4 - k) / 4 = 1 + k.
  assert set(np.unique(photos.samples(errors, where))) == {1.0, 2.0, 3.0, 4.0, 5.0}
  # An empty identity is a person of its own, not one shared "" person.
  assert age_card.Bootstrap.over(["", "", "a"], 3).counts.shape[1] == 3


def test_bootstrap_is_seeded_and_its_interval_brackets_the_mean():
  rng = np.random.default_rng(1)
  true = rng.uniform(0, 100, 400)
  pred = true + rng.normal(0, 5, 400)
  one, two = (age_card.age_card(pred, true, resamples=500, seed=3) for _ in range(2))
  assert one == two
  other = age_card.age_card(pred, true, resamples=500, seed=4)
  assert one["bands"][0]["mae_ci"] != other["bands"][0]["mae_ci"]
  for band in one["bands"]:
    assert band["mae_ci"][0] < band["mae"] < band["mae_ci"][1]


def test_unknown_sex_averages_single_ages_and_unknown_groups_are_left_out():
  true = np.array([18.0, 18.5, 19.0, 40.0])
  pred = np.array([20.0, 18.5, 22.0, 40.0])  # errors 2, 0 (age 18: MAE 1), 3 (age 19)
  card = age_card.age_card(pred, true, attributes={"gender": ["unknown"] * 4},
                           resamples=50)
  assert card["mae_18_30"] == {"value": 2.0, "ci": card["mae_18_30"]["ci"], "cells": 2,
                               "by": "age"}
  assert card["groups"] == {}
  assert "groups: gender has fewer than two known groups" in card["notes"]


def test_bands_parse_and_refuse_nonsense():
  assert age_card.parse_bands("0-12, 13-17,65+") == ((0, 12), (13, 17), (65, None))
  for bad in ("", "12-3", "a-b", "0-12,13"):
    with pytest.raises(ValueError):
      age_card.parse_bands(bad)
  with pytest.raises(ValueError, match="attribute 'race' has 2 values for 3 examples"):
    age_card.age_card([1, 2, 3], [1, 2, 3], attributes={"race": ["x", "y"]})
