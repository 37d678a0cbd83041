"""Confidence intervals for success rates: Wilson's score interval, and Newcombe's interval for a paired difference.

Both are closed-form (no SciPy): a success rate measured on a few episodes per family needs an interval that stays
inside [0, 1] and is not degenerate at 0% or 100%, which the textbook normal ("Wald") interval is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


def z_for(confidence: float) -> float:
    """The two-sided standard normal quantile for ``confidence`` (0.95 -> 1.959964).

    Raises:
        ValueError: ``confidence`` is not strictly between 0 and 1.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion: ``(low, high)``, both in [0, 1].

    E. B. Wilson (1927), "Probable inference, the law of succession, and statistical inference", JASA 22:209-212;
    the form used (Agresti & Coull 1998, eq. 2) is, with p = successes / n and z the normal quantile::

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    The interval always contains p. With ``n == 0`` nothing is known: ``(0.0, 1.0)``.

    Raises:
        ValueError: ``successes`` is negative or above ``n``, or ``confidence`` is not in (0, 1).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = z_for(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at p = 0 or 1 one end is exactly 0 or 1; clamp rounding noise so the interval still contains p
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


@dataclass(frozen=True)
class PairedDifference:
    """The difference of two success rates measured on the same episodes (A's rate minus B's), with its interval.

    ``n``: pairs; ``both``, ``a_only``, ``b_only``, ``neither``: how many pairs each of A and B succeeded on;
    ``difference``, ``low``, ``high``: in [-1, 1] (rates, not percentage points).
    """

    n: int
    both: int
    a_only: int
    b_only: int
    neither: int
    difference: float
    low: float
    high: float

    @property
    def rate_a(self) -> float:
        return (self.both + self.a_only) / self.n if self.n else 0.0

    @property
    def rate_b(self) -> float:
        return (self.both + self.b_only) / self.n if self.n else 0.0


def paired_difference(pairs: list[tuple[bool, bool]], confidence: float = 0.95) -> PairedDifference:
    """A's success rate minus B's over ``pairs`` (``(a succeeded, b succeeded)`` on the same episode), with
    Newcombe's hybrid score interval for paired proportions.

    R. G. Newcombe (1998), "Improved confidence intervals for the difference between binomial proportions based on
    paired data", Statistics in Medicine 17:2635-2650, method 10 (the "square-and-add" interval of Fagerland,
    Lydersen & Laake, "Statistical Analysis of Contingency Tables", 2017, section 8.5). With a = both, b = A only,
    c = B only, d = neither, p1 = (a + b) / n and p2 = (a + c) / n, Wilson intervals (l1, u1) and (l2, u2) for p1
    and p2, and the correlation estimate phi = k / sqrt((a+b)(c+d)(a+c)(b+d)) where k = ad - bc - n/2 when
    ad - bc > n/2, 0 when 0 <= ad - bc <= n/2, else ad - bc (phi = 0 when a margin is empty)::

        low  = (p1 - p2) - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        high = (p1 - p2) + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)

    The interval lies in [-1, 1] and contains the observed difference. No pairs: difference 0, interval (-1, 1).

    Raises:
        ValueError: ``confidence`` is not in (0, 1).
    """
    n = len(pairs)
    a = sum(1 for x, y in pairs if x and y)
    b = sum(1 for x, y in pairs if x and not y)
    c = sum(1 for x, y in pairs if y and not x)
    d = n - a - b - c
    if n == 0:
        z_for(confidence)  # still refuse a bad confidence
        return PairedDifference(0, 0, 0, 0, 0, 0.0, -1.0, 1.0)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    product = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    k = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else float(cross))
    phi = k / math.sqrt(product) if product else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return PairedDifference(n, a, b, c, d, diff, max(-1.0, diff - delta), min(1.0, diff + epsilon))
