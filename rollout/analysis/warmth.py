"""Is the candidate still cold? One window's latency, read at bucket resolution.

Where this sits: ``rollout.engine.decide`` does not score the first windows after a split
change (the warm-up: replicas that just started or scaled up answer slowly and time out, and
that is gone a few minutes later). A fixed warm-up costs every rollout its length, a gross
regression included: with a 0.1 % baseline a candidate failing 5x more is no louder than a
cold start's timeouts, so nothing can tell the two apart by their errors. Their latency can:
a cold replica's requests wait for a model still loading, and the whole window is slow. So
the policy's warm-up ends at the first window whose latency shows nothing of the sort, and
that window is scored. Pure.

The test, on one paired window: the level is the baseline's median read at bucket
resolution (the smallest bucket bound at or above it, so the count beyond it is exact); the
candidate is warm when its share of requests beyond that level is at most the baseline's
share plus ``WARM_MARGIN`` plus three binomial standard errors. A cold start (latency x3, or
x1.5 in the mild form) moves most of the candidate's requests beyond the baseline's median
bucket: with Databricks' buckets, which are at most 2.5x apart, any slowdown of 2.5x or more
crosses at least one bound. A candidate whose latency differs for good (slower median, a
latency regression) never looks warm and keeps the whole warm-up: the test only shortens it.
Windows with fewer than ``WARM_MIN_REQUESTS`` in an arm say nothing either way.
"""

from __future__ import annotations

import math

from rollout.metrics.model import Histogram

WARM_MIN_REQUESTS = 200.0
WARM_MARGIN = 0.1


def median_bound(hist: Histogram) -> float | None:
    """The smallest finite bucket bound with at least half the observations at or below it."""
    total = hist.total
    if total <= 0.0:
        return None
    below = 0.0
    for bound, count in zip(hist.bounds, hist.counts, strict=True):
        below += count
        if below >= total / 2.0:
            return None if math.isinf(bound) else bound
    return None


def _above(hist: Histogram, bound: float) -> float | None:
    """Observations above a bound of ``hist`` (exact), or None if it is not one of its bounds."""
    if bound not in hist.bounds:
        return None
    return sum(c for b, c in zip(hist.bounds, hist.counts, strict=True) if b > bound)


def looks_warm(candidate: Histogram | None, baseline: Histogram | None) -> bool:
    """Whether one paired window's latency says the candidate is warm (see the module doc)."""
    if candidate is None or baseline is None:
        return False
    n_c, n_b = candidate.total, baseline.total
    if n_c < WARM_MIN_REQUESTS or n_b < WARM_MIN_REQUESTS:
        return False
    level = median_bound(baseline)
    if level is None:
        return False
    above_b, above_c = _above(baseline, level), _above(candidate, level)
    if above_b is None or above_c is None:
        return False
    share_b, share_c = above_b / n_b, above_c / n_c
    spread = math.sqrt(max(share_b, 0.05) * (1.0 - share_b) / n_c)
    return share_c <= share_b + WARM_MARGIN + 3.0 * spread
