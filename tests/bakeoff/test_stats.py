"""The Wilson interval against published values."""

from __future__ import annotations

import pytest

from engine.bakeoff.stats import half_width, wilson_interval
from engine.errors import InputError


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics in
# Medicine 17:857-872, Table I, method 3 (score interval without continuity correction).
@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    (12, 16, 0.5050, 0.8982),  # the report's own example: 75.0% (12/16, 95% CI 50.5–89.8)
])
def test_matches_published_intervals(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=5e-5)


def test_the_edges_are_exact_and_nothing_is_known_of_no_trials():
    assert wilson_interval(0, 8)[0] == 0.0 and wilson_interval(8, 8)[1] == 1.0
    assert wilson_interval(0, 8)[1] > 0.25, "0/8 does not mean 'never'"
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_a_wider_confidence_gives_a_wider_interval_and_more_questions_a_narrower_one():
    low95, high95 = wilson_interval(12, 16)
    low99, high99 = wilson_interval(12, 16, z=2.576)
    assert low99 < low95 and high99 > high95
    assert half_width(16) == pytest.approx(0.22, abs=0.005) and half_width(64) < half_width(16) < half_width(3)


@pytest.mark.parametrize(("successes", "n", "z"), [(5, 4, 1.96), (-1, 4, 1.96), (0, -1, 1.96), (1, 4, 0.0)])
def test_impossible_counts_are_an_input_error(successes, n, z):
    with pytest.raises(InputError, match="0 <= successes <= n"):
        wilson_interval(successes, n, z)
