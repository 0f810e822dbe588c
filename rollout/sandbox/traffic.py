"""Simulated traffic: what one served entity does in one metrics window, and its exposition.

The sandbox (the fake Databricks workspace behind the serving client) calls ``simulate_window``
for every closed window of every endpoint and renders the result with
``render_export_metrics``, the text that ``GET /api/2.0/serving-endpoints/{name}/metrics``
returns. The decision-quality benchmark reuses both directly, without HTTP, to produce
thousands of windows with known ground truth.

Pure: no I/O, no clock, no global random state. Randomness comes from the ``random.Random``
passed in, so a seed reproduces a run exactly.

The model, per window and endpoint:

- total requests ~ Poisson(qps * window_seconds), split across served entities by a multinomial
  over the traffic percentages (what a load balancer routing by weight does);
- per entity, 5xx ~ Binomial(requests, error_rate) and 4xx ~ Binomial(requests - 5xx,
  client_error_rate);
- latency ~ LogNormal(mu=ln(p50), sigma=ln(p99/p50)/z_0.99); the histogram's bucket counts are
  one multinomial draw over the lognormal's probability mass per bucket, so a window of 60 000
  requests costs a few dozen random numbers instead of 60 000 lognormal draws;
- a cold entity (its first ``cold_start_windows`` windows after it started or scaled up) has
  its latency multiplied by ``cold_start_latency_factor`` and ``cold_start_error_rate`` more 5xx;
- the latency's tail may be shaped apart from its body: with ``latency_p999_ms`` set, the
  quantile function is log-linear in the normal score z with one slope up to z_0.99 (through
  p50 and p99) and another beyond it (through p99 and p99.9), so median and tail move
  independently while the p99 stays exactly where the profile puts it.

What varies from window to window beyond the profile (per-replica hiccups, overdispersion,
incidents, diurnal load, cold start) arrives as ``Conditions`` per entity; where those come from
is ``rollout.sandbox.realism``. Without conditions a window is drawn exactly as before they
existed (same random numbers, same counts).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.metrics.model import EXPORTED_LATENCY_BOUNDS_MS, Histogram

# Upper bounds (ms) of the latency buckets: the ones Databricks exports, then +Inf.
BUCKET_BOUNDS_MS: tuple[float, ...] = (*EXPORTED_LATENCY_BOUNDS_MS, math.inf)

# z such that Phi(z) = 0.99: turns a (p50, p99) pair into the lognormal's sigma.
Z_99 = NormalDist().inv_cdf(0.99)
# ... and Phi(z) = 0.999: turns (p99, p99.9) into the tail's slope.
Z_999 = NormalDist().inv_cdf(0.999)

_STANDARD_NORMAL = NormalDist()


class TrafficProfile(BaseModel):
    """How one served entity behaves: error rates, latency distribution, cold start, replicas.

    Frozen so that a snapshot of the profiles live at some moment can be kept by reference.
    Every field added after the first five keeps its old behaviour at its default, so an old
    profile draws the same windows as before.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="P(5xx) per request.")
    client_error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="P(4xx) per request that did not fail 5xx."
    )
    latency_p50_ms: float = Field(default=40.0, gt=0.0, le=600_000.0)
    latency_p99_ms: float = Field(default=200.0, gt=0.0, le=600_000.0)
    cold_start_windows: int = Field(
        default=0, ge=0, le=1_000_000, description="Windows after the entity appears that are slow."
    )
    cold_start_latency_factor: float = Field(default=1.0, ge=1.0, le=10_000.0)
    queue_time_p50_ms: float = Field(default=1.0, gt=0.0, le=600_000.0)
    queue_time_p99_ms: float = Field(default=20.0, gt=0.0, le=600_000.0)
    latency_p999_ms: float | None = Field(
        default=None, gt=0.0, le=600_000.0,
        description="The 99.9th percentile: the tail's shape (None: the lognormal's own).",
    )
    cold_start_error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Extra P(5xx) while cold (requests timing out on replicas still loading).",
    )
    replicas: int = Field(
        default=1, ge=1, le=10_000,
        description="Replicas at 100 % of the traffic; at w % max(1, ceil(replicas * w / 100)).",
    )
    hiccup_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="P(a replica hiccups) per replica and window."
    )
    hiccup_error_rate: float = Field(
        default=0.3, ge=0.0, le=1.0, description="P(5xx) on a hiccuping replica while it lasts."
    )
    hiccup_fraction: float = Field(
        default=0.25, ge=0.0, le=1.0, description="Share of the window a hiccup lasts."
    )
    error_rate_cv: float = Field(
        default=0.0, ge=0.0, le=10.0,
        description="CV of a per-window gamma multiplier (mean 1) on this entity's 5xx rate.",
    )

    @model_validator(mode="after")
    def _p99_not_below_p50(self) -> TrafficProfile:
        if self.latency_p99_ms < self.latency_p50_ms:
            raise ValueError("latency_p99_ms must be >= latency_p50_ms")
        if self.queue_time_p99_ms < self.queue_time_p50_ms:
            raise ValueError("queue_time_p99_ms must be >= queue_time_p50_ms")
        if self.latency_p999_ms is not None and self.latency_p999_ms <= self.latency_p99_ms:
            raise ValueError("latency_p999_ms must be > latency_p99_ms")
        return self

    def latency_params(self, cold: bool = False) -> tuple[float, float]:
        """(mu, sigma) of the lognormal latency, in ln(ms); cold adds ln(factor) to mu."""
        mu = math.log(self.latency_p50_ms)
        if cold:
            mu += math.log(self.cold_start_latency_factor)
        return mu, math.log(self.latency_p99_ms / self.latency_p50_ms) / Z_99

    def latency_shape(self, factor: float = 1.0) -> tuple[float, float, float | None]:
        """(mu, sigma, tail) in ln(ms): the body's lognormal and the slope beyond z_0.99.

        ``tail`` is None when the profile has no ``latency_p999_ms`` (the lognormal's own
        tail). ``factor`` scales every quantile (a cold replica is uniformly slower).
        """
        mu, sigma = self.latency_params()
        mu += math.log(factor)
        if self.latency_p999_ms is None:
            return mu, sigma, None
        return mu, sigma, math.log(self.latency_p999_ms / self.latency_p99_ms) / (Z_999 - Z_99)

    def replicas_at(self, weight: float) -> int:
        """Replicas serving ``weight`` % of the traffic (autoscaling sizes them by share)."""
        return max(1, math.ceil(self.replicas * weight / 100.0 - 1e-9))

    def queue_params(self) -> tuple[float, float]:
        return (
            math.log(self.queue_time_p50_ms),
            math.log(self.queue_time_p99_ms / self.queue_time_p50_ms) / Z_99,
        )


DEFAULT_PROFILE = TrafficProfile()


def _zeros() -> list[int]:
    return [0] * len(BUCKET_BOUNDS_MS)


@dataclass
class WindowCounts:
    """Everything export-metrics reports about one served entity in one window.

    Bucket counts are per bucket (not cumulative), aligned with ``BUCKET_BOUNDS_MS``.
    """

    requests: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    latency_counts: list[int] = field(default_factory=_zeros)
    latency_sum_ms: float = 0.0
    queue_counts: list[int] = field(default_factory=_zeros)
    queue_sum_ms: float = 0.0

    def record(self, latency_ms: float, queue_ms: float, status: int) -> None:
        """Add one real request (an invocation that reached the sandbox)."""
        self.requests += 1
        if 500 <= status < 600:
            self.errors_5xx += 1
        elif 400 <= status < 500:
            self.errors_4xx += 1
        self.latency_counts[bucket_index(latency_ms)] += 1
        self.latency_sum_ms += latency_ms
        self.queue_counts[bucket_index(queue_ms)] += 1
        self.queue_sum_ms += queue_ms

    def merge(self, other: WindowCounts) -> None:
        """Add ``other`` into this window (in place)."""
        self.requests += other.requests
        self.errors_4xx += other.errors_4xx
        self.errors_5xx += other.errors_5xx
        self.latency_counts = [a + b for a, b in zip(self.latency_counts, other.latency_counts,
                                                      strict=True)]
        self.latency_sum_ms += other.latency_sum_ms
        self.queue_counts = [a + b for a, b in zip(self.queue_counts, other.queue_counts,
                                                    strict=True)]
        self.queue_sum_ms += other.queue_sum_ms

    def copy(self) -> WindowCounts:
        return WindowCounts(
            requests=self.requests,
            errors_4xx=self.errors_4xx,
            errors_5xx=self.errors_5xx,
            latency_counts=list(self.latency_counts),
            latency_sum_ms=self.latency_sum_ms,
            queue_counts=list(self.queue_counts),
            queue_sum_ms=self.queue_sum_ms,
        )

    def latency_histogram(self) -> Histogram:
        return Histogram(
            bounds=BUCKET_BOUNDS_MS,
            counts=tuple(float(c) for c in self.latency_counts),
            sum=self.latency_sum_ms,
        )

    def queue_histogram(self) -> Histogram:
        return Histogram(
            bounds=BUCKET_BOUNDS_MS,
            counts=tuple(float(c) for c in self.queue_counts),
            sum=self.queue_sum_ms,
        )


@dataclass(frozen=True)
class EntityGauges:
    """The level gauges export-metrics reports per entity (averages over the window)."""

    cpu_percent: float
    mem_percent: float
    provisioned_concurrency: float
    # GPU workloads only (``workload_type`` GPU_*): DCGM utilisation and memory.
    gpu_percent: float | None = None
    gpu_mem_percent: float | None = None


def bucket_index(value_ms: float) -> int:
    """Index of the bucket ``value_ms`` falls into (upper bounds are inclusive, as ``le``)."""
    for i, bound in enumerate(BUCKET_BOUNDS_MS):
        if value_ms <= bound:
            return i
    return len(BUCKET_BOUNDS_MS) - 1


# --------------------------------------------------------------------------------------------
# Samplers. random.Random has no binomial before 3.12 and no Poisson at all; these are exact
# (not approximations) and cost O(1) expected time for large n, which is what makes a
# 1000 qps x 60 s window cheap.


def binomial(n: int, p: float, rng: random.Random) -> int:
    """One Binomial(n, p) draw.

    Small means use Devroye's geometric method (O(np)); large ones Hormann's BTRS transformed
    rejection with squeeze, the algorithm CPython 3.12's ``random.binomialvariate`` uses.
    """
    if n < 0:
        raise ValueError("n must be non-negative")
    if n == 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(n, 1.0 - p, rng)
    if n * p < 10.0:
        c = math.log1p(-p)
        x = y = 0
        while True:
            # 1 - random() is in (0, 1], so the log is finite; the gap to the next success
            # may still overflow to inf for a subnormal p, which simply means "no more".
            gap = math.log(1.0 - rng.random()) / c
            if gap >= n - y:
                return x
            y += math.floor(gap) + 1
            x += 1
    spq = math.sqrt(n * p * (1.0 - p))
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    vr = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    lpq = math.log(p / (1.0 - p))
    m = math.floor((n + 1) * p)
    h = math.lgamma(m + 1) + math.lgamma(n - m + 1)
    while True:
        u = rng.random() - 0.5
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + c)
        if k < 0 or k > n:
            continue
        v = rng.random()
        if us >= 0.07 and v <= vr:
            return k
        v *= alpha / (a / (us * us) + b)
        if v > 0.0 and math.log(v) <= h - math.lgamma(k + 1) - math.lgamma(n - k + 1) + (
            k - m
        ) * lpq:
            return k


def poisson(lam: float, rng: random.Random) -> int:
    """One Poisson(lam) draw: multiplication method below 10, Hormann's PTRS above."""
    if lam < 0 or not math.isfinite(lam):
        raise ValueError("lambda must be finite and non-negative")
    if lam == 0.0:
        return 0
    if lam < 10.0:
        limit = math.exp(-lam)
        k = 0
        prod = rng.random()
        while prod > limit:
            k += 1
            prod *= rng.random()
        return k
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if v > 0.0 and (
            math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)
            <= -lam + k * loglam - math.lgamma(k + 1)
        ):
            return k


def multinomial(n: int, probs: Sequence[float], rng: random.Random) -> list[int]:
    """One Multinomial(n, probs) draw as a chain of conditional binomials.

    ``probs`` need not sum exactly to 1: they are normalised, so rounding in a CDF difference
    never loses or invents requests. The counts always sum to ``n``.
    """
    if not probs:
        raise ValueError("multinomial needs at least one category")
    if any(p < 0 or not math.isfinite(p) for p in probs):
        raise ValueError("probabilities must be finite and non-negative")
    # Suffix sums avoid the cancellation of ``1 - running_total``.
    suffix = [0.0] * (len(probs) + 1)
    for i in range(len(probs) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + probs[i]
    if suffix[0] <= 0.0:
        raise ValueError("probabilities must not all be zero")
    out: list[int] = []
    remaining = n
    for i, p in enumerate(probs):
        if remaining == 0:
            out.append(0)
            continue
        if i == len(probs) - 1 or suffix[i + 1] <= 0.0:
            out.append(remaining)
            remaining = 0
            continue
        x = binomial(remaining, min(1.0, p / suffix[i]), rng)
        out.append(x)
        remaining -= x
    return out


# --------------------------------------------------------------------------------------------
# The lognormal over the buckets.


def _score(y: float, sigma: float, tail: float) -> float:
    """The normal score z of ln(x) - mu = y under a body of slope sigma and a tail beyond z_0.99.

    A zero sigma puts the body's 99 % on one point (p50 == p99); ``tail`` is positive.
    """
    knee = sigma * Z_99
    if y <= knee:
        if sigma > 0.0:
            return y / sigma
        return -math.inf if y < 0.0 else Z_99
    return Z_99 + (y - knee) / tail


@lru_cache(maxsize=4096)
def bucket_probabilities(
    mu: float, sigma: float, tail: float | None = None
) -> tuple[float, ...]:
    """P(bucket) for the latency shape over ``BUCKET_BOUNDS_MS`` (cached: few profiles).

    ``tail`` None is the LogNormal(mu, sigma); otherwise the quantile function's slope in z
    beyond z_0.99 (see the module docstring).
    """
    if tail is not None:
        cdfs = [
            1.0 if math.isinf(b) else _cdf(_score(math.log(b) - mu, sigma, tail))
            for b in BUCKET_BOUNDS_MS
        ]
        return (cdfs[0], *(max(0.0, hi - lo) for lo, hi in itertools.pairwise(cdfs)))
    if sigma <= 0.0:
        probs = [0.0] * len(BUCKET_BOUNDS_MS)
        probs[bucket_index(math.exp(mu))] = 1.0
        return tuple(probs)
    cdfs = [
        1.0 if math.isinf(b) else _STANDARD_NORMAL.cdf((math.log(b) - mu) / sigma)
        for b in BUCKET_BOUNDS_MS
    ]
    probs = [cdfs[0]] + [max(0.0, hi - lo) for lo, hi in itertools.pairwise(cdfs)]
    return tuple(probs)


def _partial(m: float, s: float, z_lo: float, z_hi: float) -> float:
    """E[exp(m + s Z); z_lo < Z <= z_hi] for a standard normal Z."""
    if z_hi <= z_lo:
        return 0.0
    return math.exp(m + s * s / 2.0) * (_cdf(z_hi - s) - _cdf(z_lo - s))


@lru_cache(maxsize=4096)
def bucket_means(mu: float, sigma: float, tail: float | None = None) -> tuple[float, ...]:
    """E[X | X in bucket] for the latency shape: turns bucket counts into a latency sum.

    Uses the lognormal's partial expectation (piecewise for a shaped tail); where a bucket's
    mass underflows, the midpoint stands in (such a bucket essentially never receives a count).
    """
    lowers = (0.0, *BUCKET_BOUNDS_MS[:-1])
    if tail is None and sigma <= 0.0:
        value = math.exp(mu)
        return tuple(value for _ in BUCKET_BOUNDS_MS)
    scale = math.exp(mu + sigma * sigma / 2.0)
    means: list[float] = []
    for lo, hi in zip(lowers, BUCKET_BOUNDS_MS, strict=True):
        if tail is None:
            z_lo = -math.inf if lo <= 0.0 else (math.log(lo) - mu) / sigma
            z_hi = math.inf if math.isinf(hi) else (math.log(hi) - mu) / sigma
            mass = _cdf(z_hi) - _cdf(z_lo)
            partial = scale * (_cdf(z_hi - sigma) - _cdf(z_lo - sigma))
        else:
            z_lo = -math.inf if lo <= 0.0 else _score(math.log(lo) - mu, sigma, tail)
            z_hi = math.inf if math.isinf(hi) else _score(math.log(hi) - mu, sigma, tail)
            mass = _cdf(z_hi) - _cdf(z_lo)
            # Body below z_0.99, tail above it: X = exp(m + s z) with its own (m, s) on each.
            partial = _partial(mu, sigma, z_lo, min(z_hi, Z_99)) + _partial(
                mu + (sigma - tail) * Z_99, tail, max(z_lo, Z_99), z_hi
            )
        fallback = lo * 2.0 if math.isinf(hi) else (lo + hi) / 2.0
        mean = partial / mass if mass > 1e-300 else fallback
        upper = math.inf if math.isinf(hi) else hi
        means.append(min(max(mean, lo), upper))
    return tuple(means)


def latency_quantile(profile: TrafficProfile, q: float, factor: float = 1.0) -> float:
    """The true q-quantile (ms) of the profile's latency shape (not the histogram's estimate)."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be within (0, 1)")
    mu, sigma, tail = profile.latency_shape(factor)
    z = _STANDARD_NORMAL.inv_cdf(q)
    if tail is None or z <= Z_99:
        return math.exp(mu + sigma * z)
    return math.exp(mu + sigma * Z_99 + tail * (z - Z_99))


def _cdf(z: float) -> float:
    if z == math.inf:
        return 1.0
    if z == -math.inf:
        return 0.0
    return _STANDARD_NORMAL.cdf(z)


@lru_cache(maxsize=4096)
def _chain(probs: tuple[float, ...]) -> tuple[float | None, ...]:
    """``multinomial``'s conditional probabilities for ``probs`` (None: the rest goes here).

    Computed once per latency shape: the same numbers ``multinomial`` derives on every call,
    so a window drawn through the chain is the window ``multinomial`` would draw.
    """
    suffix = [0.0] * (len(probs) + 1)
    for i in range(len(probs) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + probs[i]
    return tuple(
        None if i == len(probs) - 1 or suffix[i + 1] <= 0.0 else min(1.0, p / suffix[i])
        for i, p in enumerate(probs)
    )


def _histogram(
    n: int, mu: float, sigma: float, rng: random.Random, tail: float | None = None
) -> tuple[list[int], float]:
    if n == 0:
        return _zeros(), 0.0
    counts: list[int] = []
    remaining = n
    for conditional in _chain(bucket_probabilities(mu, sigma, tail)):
        if remaining == 0:
            counts.append(0)
        elif conditional is None:
            counts.append(remaining)
            remaining = 0
        else:
            x = binomial(remaining, conditional, rng)
            counts.append(x)
            remaining -= x
    means = bucket_means(mu, sigma, tail)
    return counts, math.fsum(c * m for c, m in zip(counts, means, strict=True) if c)


# --------------------------------------------------------------------------------------------
# One window.


@dataclass(frozen=True)
class Conditions:
    """What one window does to one served entity beyond its profile.

    ``rollout.sandbox.realism`` derives these from the endpoint's settings and the window
    index; the defaults change nothing.
    """

    # On the profile's 5xx rate: overdispersion, incidents, diurnal load (capped at 100 %).
    error_multiplier: float = 1.0
    # Share of the entity's requests served by a replica while it hiccups (at the profile's
    # ``hiccup_error_rate`` instead of its own rate).
    hiccup_share: float = 0.0
    # Cold (started or scaled up within ``cold_start_windows``): the profile's cold latency
    # factor and extra 5xx apply.
    cold: bool = False

    def error_rate(self, profile: TrafficProfile) -> float:
        """P(5xx) per request of this entity in this window."""
        rate = profile.error_rate * self.error_multiplier
        if self.cold:
            rate += profile.cold_start_error_rate
        rate = min(1.0, rate)
        if self.hiccup_share > 0.0:
            share = min(1.0, self.hiccup_share)
            rate = rate * (1.0 - share) + profile.hiccup_error_rate * share
        return rate

    def latency_factor(self, profile: TrafficProfile) -> float:
        return profile.cold_start_latency_factor if self.cold else 1.0


NO_CONDITIONS = Conditions()


def draw_counts(
    n: int, profile: TrafficProfile, conditions: Conditions, rng: random.Random
) -> WindowCounts:
    """The counts of ``n`` requests served by one entity in one window.

    Every request fails independently with the window's 5xx rate (a request that lands on a
    hiccuping replica with that replica's rate: given the hiccup share, the mixture is one
    binomial); latency and queue time are one multinomial draw each over the buckets.
    """
    counts = WindowCounts()
    if n <= 0:
        return counts
    counts.requests = n
    counts.errors_5xx = binomial(n, conditions.error_rate(profile), rng)
    counts.errors_4xx = binomial(n - counts.errors_5xx, profile.client_error_rate, rng)
    mu, sigma, tail = profile.latency_shape(conditions.latency_factor(profile))
    counts.latency_counts, counts.latency_sum_ms = _histogram(n, mu, sigma, rng, tail)
    counts.queue_counts, counts.queue_sum_ms = _histogram(n, *profile.queue_params(), rng)
    return counts


def is_cold(profile: TrafficProfile, age: int | None) -> bool:
    """Whether an entity that started (or scaled up) ``age`` windows ago is still cold."""
    return age is not None and 0 <= age < profile.cold_start_windows


def simulate_window(
    profiles: Mapping[str, TrafficProfile],
    split: Mapping[str, int],
    qps: float,
    window_seconds: float,
    rng: random.Random,
    *,
    window_index_since_start: Mapping[str, int] | None = None,
    conditions: Mapping[str, Conditions] | None = None,
) -> dict[str, WindowCounts]:
    """Simulate one window of traffic across the entities of ``split``.

    ``split`` maps served entity names to traffic percentages (the live ``traffic_config``);
    every entity in it gets an entry, zero-traffic ones with zero counts. An entity missing from
    ``profiles`` behaves like ``TrafficProfile()``. ``window_index_since_start[e]`` is how many
    windows ago entity ``e`` started or last scaled up (0 = this window); absent means long ago
    (warm). ``conditions[e]`` is what this window does to ``e`` beyond its profile.
    """
    if qps < 0 or not math.isfinite(qps):
        raise ValueError("qps must be finite and non-negative")
    if window_seconds < 0 or not math.isfinite(window_seconds):
        raise ValueError("window_seconds must be finite and non-negative")
    if any(w < 0 for w in split.values()):
        raise ValueError("traffic percentages must be non-negative")
    entities = list(split)
    result = {entity: WindowCounts() for entity in entities}
    weights = [float(split[e]) for e in entities]
    if not entities or sum(weights) <= 0:
        return result
    total = poisson(qps * window_seconds, rng)
    per_entity = multinomial(total, weights, rng)
    ages = window_index_since_start or {}
    given = conditions or {}
    for entity, n in zip(entities, per_entity, strict=True):
        if n == 0:
            continue
        profile = profiles.get(entity, DEFAULT_PROFILE)
        cond = given.get(entity, NO_CONDITIONS)
        if not cond.cold and is_cold(profile, ages.get(entity)):
            cond = dataclasses.replace(cond, cold=True)
        result[entity] = draw_counts(n, profile, cond, rng)
    return result


def sample_latency_ms(profile: TrafficProfile, rng: random.Random, cold: bool = False) -> float:
    """One request's latency (for a real invocation)."""
    mu, sigma, tail = profile.latency_shape(profile.cold_start_latency_factor if cold else 1.0)
    if tail is None:
        return rng.lognormvariate(mu, sigma) if sigma > 0 else math.exp(mu)
    z = rng.gauss(0.0, 1.0)
    y = sigma * z if z <= Z_99 else sigma * Z_99 + tail * (z - Z_99)
    return math.exp(mu + y)


def sample_queue_ms(profile: TrafficProfile, rng: random.Random) -> float:
    mu, sigma = profile.queue_params()
    return rng.lognormvariate(mu, sigma) if sigma > 0 else math.exp(mu)


# Provisioned concurrency per workload size (upper end of Databricks' ranges).
WORKLOAD_CONCURRENCY: Mapping[str, int] = {"Small": 4, "Medium": 16, "Large": 64}


def estimate_gauges(
    counts: WindowCounts, window_seconds: float, provisioned_concurrency: float,
    *, gpu: bool = False,
) -> EntityGauges:
    """Level gauges that follow the load: busy = mean in-flight requests (Little's law).

    CPU is the share of provisioned concurrency kept busy plus an idle floor; memory follows
    CPU loosely; on a GPU workload so do GPU usage and GPU memory (a loaded model holds its
    memory even when idle). Only the shape matters: they rise with load and latency.
    """
    if window_seconds <= 0 or provisioned_concurrency <= 0:
        busy_share = 0.0
    else:
        busy = counts.latency_sum_ms / 1000.0 / window_seconds
        busy_share = min(1.0, busy / provisioned_concurrency)
    cpu = 3.0 + 92.0 * busy_share
    mem = 25.0 + 0.4 * cpu
    gpu_percent = 5.0 + 90.0 * busy_share
    return EntityGauges(
        cpu_percent=round(cpu, 3),
        mem_percent=round(mem, 3),
        provisioned_concurrency=float(provisioned_concurrency),
        gpu_percent=round(gpu_percent, 3) if gpu else None,
        gpu_mem_percent=round(40.0 + 0.5 * gpu_percent, 3) if gpu else None,
    )


# --------------------------------------------------------------------------------------------
# Exposition.

_GAUGE_HELP: tuple[tuple[str, str], ...] = (
    ("request_count_total", "Number of requests during the last minute."),
    ("request_4xx_count_total", "Number of 4xx errors during the last minute."),
    ("request_5xx_count_total", "Number of 5xx errors during the last minute."),
    ("cpu_usage_percentage", "Average CPU usage across replicas during the last minute."),
    ("mem_usage_percentage", "Average memory usage across replicas during the last minute."),
    (
        "provisioned_concurrent_requests_total",
        "Provisioned concurrency during the last minute.",
    ),
    ("gpu_usage_percentage", "Average GPU usage across replicas during the last minute."),
    (
        "gpu_memory_usage_percentage",
        "Average GPU memory usage across replicas during the last minute.",
    ),
)

_HISTOGRAM_HELP: tuple[tuple[str, str], ...] = (
    ("request_latency_ms", "Round-trip latency of requests in milliseconds."),
    ("model_queue_time_ms", "Time requests spent queued before the model, in milliseconds."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def render_export_metrics(
    endpoint_name: str,
    window_start_ms: int,
    counts_by_entity: Mapping[str, WindowCounts],
    gauges: Mapping[str, EntityGauges],
) -> str:
    """Prometheus text exposition of one window, as export-metrics returns it.

    Every sample carries ``served_entity_name`` and ``endpoint_name`` and is stamped with the
    window's start in epoch ms. The ``*_total`` series are gauges holding the window's count
    (not counters), as Databricks declares them. Entities are listed in name order.
    """
    return render_export_windows(endpoint_name, [(window_start_ms, counts_by_entity, gauges)])


ExportBlock = tuple[int, Mapping[str, WindowCounts], Mapping[str, EntityGauges]]


def render_export_windows(endpoint_name: str, blocks: Sequence[ExportBlock]) -> str:
    """The exposition of several windows at once: ``(window_start_ms, counts, gauges)`` each.

    What an exporter shows when a window arrives late (beside the last closed one) or is
    revised: each family lists its samples window by window, each stamped with its window's
    start, so a family's samples stay together as the text format requires.
    """
    ep = _escape(endpoint_name)
    lines: list[str] = []
    ordered = sorted(blocks, key=lambda b: b[0])

    def labels(entity: str) -> str:
        return f'served_entity_name="{_escape(entity)}",endpoint_name="{ep}"'

    def gauge_value(name: str, counts: WindowCounts, g: EntityGauges | None) -> float | None:
        values: dict[str, float | None] = {
            "request_count_total": float(counts.requests),
            "request_4xx_count_total": float(counts.errors_4xx),
            "request_5xx_count_total": float(counts.errors_5xx),
            "cpu_usage_percentage": None if g is None else g.cpu_percent,
            "mem_usage_percentage": None if g is None else g.mem_percent,
            "provisioned_concurrent_requests_total": (
                None if g is None else g.provisioned_concurrency
            ),
            "gpu_usage_percentage": None if g is None else g.gpu_percent,
            "gpu_memory_usage_percentage": None if g is None else g.gpu_mem_percent,
        }
        return values[name]

    for name, help_text in _GAUGE_HELP:
        samples = [
            (entity, gauge_value(name, counts[entity], gauges.get(entity)), str(int(start)))
            for start, counts, gauges in ordered
            for entity in sorted(counts)
        ]
        present = [(e, v, stamp) for e, v, stamp in samples if v is not None]
        if not present:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{{{labels(e)}}} {_number(v)} {stamp}" for e, v, stamp in present)

    for name, help_text in _HISTOGRAM_HELP:
        if not any(counts for _, counts, _ in ordered):
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} histogram")
        for start, counts_by_entity, _ in ordered:
            stamp = str(int(start))
            for entity in sorted(counts_by_entity):
                counts = counts_by_entity[entity]
                if name == "request_latency_ms":
                    buckets, total_sum = counts.latency_counts, counts.latency_sum_ms
                else:
                    buckets, total_sum = counts.queue_counts, counts.queue_sum_ms
                cumulative = 0
                for bound, count in zip(BUCKET_BOUNDS_MS, buckets, strict=True):
                    cumulative += count
                    lines.append(
                        f'{name}_bucket{{{labels(entity)},le="{_number(bound)}"}} '
                        f"{_number(cumulative)} {stamp}"
                    )
                lines.append(f"{name}_sum{{{labels(entity)}}} {_number(total_sum)} {stamp}")
                lines.append(f"{name}_count{{{labels(entity)}}} {_number(cumulative)} {stamp}")
    return "\n".join(lines) + "\n" if lines else ""
