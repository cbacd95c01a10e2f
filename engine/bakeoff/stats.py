"""How far a measured share can be trusted: the Wilson score interval.

The bake-off grades a few dozen questions per mode and split; an accuracy of 12/16
is "somewhere between about 50 and 90 %". Every share the report prints carries
this interval so that a difference between two modes is not read into noise.
"""

from __future__ import annotations

import math

from engine.errors import InputError

#: The normal quantile of a two-sided 95 % interval.
Z_95 = 1.96


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``, as shares in [0, 1].

    Unlike the normal approximation (p ± z·sqrt(p(1-p)/n)) it stays inside [0, 1] and
    does not shrink to a point at 0/n or n/n, which the bake-off's small samples hit
    often (a mode that never answers after an update is 0/8, known to lie in 0–32 %).

    Args:
        successes: how many of the ``n`` trials succeeded (0 <= successes <= n).
        n: how many trials; 0 gives (0.0, 1.0): nothing is known.
        z: the normal quantile of the confidence level (1.96: 95 %).

    Raises:
        InputError: ``n`` is negative, ``successes`` is outside [0, n], or ``z`` is not positive.
    """
    if n < 0 or not 0 <= successes <= max(n, 0) or z <= 0:
        raise InputError(f"a Wilson interval needs 0 <= successes <= n and z > 0, got successes={successes}, "
                         f"n={n}, z={z}")
    if n == 0:
        return 0.0, 1.0
    low, high = _wilson(successes / n, n, z)
    # exact at the edges: rounding would otherwise leave 1e-17 above 0 / below 1
    return (0.0 if successes == 0 else low), (1.0 if successes == n else high)


def half_width(n: int, z: float = Z_95) -> float:
    """Half the width of the Wilson interval around 50 % at ``n`` > 0 trials (the widest it gets), as a share."""
    low, high = _wilson(0.5, n, z)
    return (high - low) / 2


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
