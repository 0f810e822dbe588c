"""Windows across scrapes: deduplicate per-window gauges, turn true counters into deltas, sum.

Where this sits in a rollout: at every tick the runner scrapes export-metrics and parses it
(``rollout.metrics.parse``); one ``WindowTracker`` per rollout is fed each ``Scrape`` and keeps
every window exactly once; the engine asks it for ``totals(since_ms)``, one ``ArmTotals`` per
served entity over the windows that began after the current split took effect, and the judges in
``rollout.analysis`` compare the candidate's totals with the baseline's. The tracker is persisted
with the rollout (``to_state``/``from_state``, a ``TrackerState``) so a restarted controller does
not count a window twice, nor lose a counter's baseline.

Decisions:

* Per-window gauges (Databricks' kind) are keyed by ``(entity, start_ms)``. A window seen again
  with the same values is not new. A window seen again with *different* values is a revision:
  the later scrape wins for every field it reports (the exporter may still be filling its last
  window as late data lands), and fields the later scrape lacks keep their earlier values. A
  revision is not returned by ``observe`` as new; it replaces the stored window and is listed
  in ``last_revised``. So the engine must sum with ``totals()`` (or
  ``sum_windows(tracker.windows(), ...)``), never by accumulating what ``observe`` returned.
* Samples without timestamps describe "the last closed window" with no name for it. Such a
  window is stamped with the latest time it can have started: two window lengths before the
  scrape (the window in progress began at most one length ago, and the closed one before it),
  so a window that may have begun before a split change is never judged as the new split's
  (without a window length, the scrape time). An identical snapshot for the same entity seen again
  within ``window_ms`` of its first sighting is the same window and is skipped: two scrapes
  within one window length may both see one window, two further apart cannot. Two genuinely
  different windows with identical numbers inside that interval are counted once; that is the
  price of having no timestamps (and it costs nothing when the numbers are zero).
* True cumulative counters (``Scrape.kind == "counter"``) are differenced per series (one
  replica's counter, one histogram bucket), as Prometheus' ``increase()`` does, and the deltas
  are summed per entity: summing first would read a replica going away as a reset. A series'
  first sighting is its baseline and yields nothing; an entity's first scrape yields no window.
  A value that goes down, or a changed ``_created`` time, is a reset: the new value is the count
  since the reset. A histogram series resets as one (any of its buckets going down). The delta
  between two scrapes is a window starting at the earlier one's time, so a window straddling a
  split change starts before it and is not judged.
* Windows older than ``retention_ms`` before the newest one are forgotten, and windows arriving
  that late are ignored (counted in ``too_old``): they can no longer be deduplicated, and
  counting one twice is worse than not counting it.
* Endpoint totals (no entity label) are kept under entity ``None``; ``has_entity_labels`` says
  whether the last scrape named entities, so a judge can say it judged totals only. Per-arm
  numbers are never invented from totals and the traffic split.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from rollout.metrics.model import (
    GAUGE_FIELDS,
    HISTOGRAM_FIELDS,
    WINDOW_FIELDS,
    ArmTotals,
    EntityWindow,
    Histogram,
)
from rollout.metrics.parse import (
    REQUEST_FIELDS,
    CumulativeSample,
    Kind,
    MetricsError,
    Scrape,
)

STATE_VERSION = 1

# A cumulative value dipping by less than this is exporter rounding, not a reset.
_ROUNDING = 1e-6

_SeriesKey = tuple[str | None, str, str, tuple[tuple[str, str], ...]]
_GroupKey = tuple[str, tuple[tuple[str, str], ...]]


class MetricsStateError(MetricsError):
    """A persisted tracker state cannot be read (wrong version or shape)."""


class UntimedSnapshot(BaseModel):
    """An entity's last window without a start time, and when it was first seen."""

    model_config = ConfigDict(frozen=True)

    entity: str | None
    first_seen_ms: int
    window: dict[str, Any]  # ``EntityWindow.to_dict()``


class CounterTime(BaseModel):
    """When an entity's counters were last scraped (epoch ms)."""

    model_config = ConfigDict(frozen=True)

    entity: str | None
    t_ms: int


class CounterPoint(BaseModel):
    """One cumulative series' last value: the baseline its next delta is taken from."""

    model_config = ConfigDict(frozen=True)

    entity: str | None
    field: str
    part: str
    series: list[tuple[str, str]]  # its labels, as (name, value) pairs
    value: float
    t_ms: int
    created: float | None


class TrackerState(BaseModel):
    """A tracker as persisted (``WindowTracker.to_state``), in the stored key order."""

    model_config = ConfigDict(frozen=True)

    version: int
    window_ms: int | None
    retention_ms: int
    kind: Kind | None
    has_entity_labels: bool | None
    revisions: int
    too_old: int
    latest_ms: int | None
    # The kept windows (``EntityWindow.to_dict()``); empty when they are stored apart.
    windows: list[dict[str, Any]]
    untimed: list[UntimedSnapshot]
    counter_times: list[CounterTime]
    series: list[CounterPoint]


@dataclasses.dataclass
class _CounterPoint:
    value: float
    t_ms: int
    created: float | None


def sum_windows(windows: Iterable[EntityWindow], since_ms: int) -> dict[str | None, ArmTotals]:
    """Sum, per entity, the windows that began at or after ``since_ms``.

    Windows without a start time are skipped: nothing says they began after the split.
    """
    totals: dict[str | None, ArmTotals] = {}
    for window in windows:
        if window.start_ms is None or window.start_ms < since_ms:
            continue
        arm = totals.get(window.entity)
        if arm is None:
            arm = totals[window.entity] = ArmTotals()
        arm.add(window)
    return totals


def window_length_ms(windows: Iterable[EntityWindow]) -> int | None:
    """The export's window length as the windows show it: the smallest gap between two
    consecutive starts of one entity (``None`` with fewer than two starts)."""
    starts: dict[str | None, list[int]] = {}
    for window in windows:
        if window.start_ms is not None:
            starts.setdefault(window.entity, []).append(window.start_ms)
    gaps = [
        b - a
        for entity_starts in starts.values()
        for a, b in itertools.pairwise(sorted(set(entity_starts)))
    ]
    return min(gaps) if gaps else None


def _merge_revision(old: EntityWindow, new: EntityWindow) -> EntityWindow:
    kept = {name: getattr(old, name) for name in new.missing if name not in old.missing}
    if not kept:
        return new
    return dataclasses.replace(new, missing=new.missing & old.missing, **kept)


class WindowTracker:
    """Every window of one endpoint, each counted once, across scrapes and restarts."""

    def __init__(self, *, window_ms: int | None = 60_000, retention_ms: int = 86_400_000) -> None:
        if window_ms is not None and window_ms <= 0:
            raise ValueError("window_ms must be positive (or None)")
        if retention_ms <= 0:
            raise ValueError("retention_ms must be positive")
        self.window_ms = window_ms
        self.retention_ms = retention_ms
        self.kind: Kind | None = None
        self.has_entity_labels: bool | None = None
        self.revisions = 0
        self.too_old = 0
        self.last_revised: list[EntityWindow] = []
        self._windows: dict[tuple[str | None, int], EntityWindow] = {}
        self._latest_ms: int | None = None
        # entity -> (first sighting in ms, the snapshot without its start time)
        self._untimed: dict[str | None, tuple[int, EntityWindow]] = {}
        self._series: dict[_SeriesKey, _CounterPoint] = {}
        self._entity_t: dict[str | None, int] = {}

    # -- feeding ------------------------------------------------------------------------------

    def observe(self, scrape: Scrape, scraped_at_ms: int) -> list[EntityWindow]:
        """Take one scrape in; return the windows not seen before (revisions are not "new")."""
        self.last_revised = []
        if _has_request_data(scrape):
            if self.kind is not None and scrape.kind != self.kind:
                # The exporter changed; old counter baselines mean nothing for the new one.
                self._series.clear()
                self._entity_t.clear()
            self.kind = scrape.kind
        if scrape.windows:
            self.has_entity_labels = scrape.has_entity_labels
        if scrape.kind == "counter":
            candidates = self._counter_windows(scrape, scraped_at_ms)
        else:
            candidates = self._gauge_windows(scrape, scraped_at_ms)
        new = [window for start_ms, window in candidates if self._store(start_ms, window)]
        self._prune_to_retention()
        new.sort(key=_order)
        return new

    def _gauge_windows(self, scrape: Scrape, scraped_at_ms: int) -> list[tuple[int, EntityWindow]]:
        out: list[tuple[int, EntityWindow]] = []
        for window in scrape.windows:
            if window.start_ms is not None:
                out.append((window.start_ms, window))
                continue
            seen = self._untimed.get(window.entity)
            if (
                seen is not None
                and seen[1] == window
                and (self.window_ms is None or scraped_at_ms - seen[0] < self.window_ms)
            ):
                continue
            self._untimed[window.entity] = (scraped_at_ms, window)
            start_ms = scraped_at_ms - 2 * (self.window_ms or 0)
            out.append((start_ms, dataclasses.replace(window, start_ms=start_ms)))
        return out

    def _store(self, start_ms: int, window: EntityWindow) -> bool:
        """Keep ``window``; True when it is new (a revision or a repeat is not)."""
        if self._latest_ms is not None and start_ms < self._latest_ms - self.retention_ms:
            self.too_old += 1
            return False
        key = (window.entity, start_ms)
        old = self._windows.get(key)
        if old is None:
            self._windows[key] = window
            if self._latest_ms is None or start_ms > self._latest_ms:
                self._latest_ms = start_ms
            return True
        merged = _merge_revision(old, window)
        if merged != old:
            self._windows[key] = merged
            self.revisions += 1
            self.last_revised.append(merged)
        return False

    def _counter_windows(
        self, scrape: Scrape, scraped_at_ms: int
    ) -> list[tuple[int, EntityWindow]]:
        by_entity: dict[str | None, list[CumulativeSample]] = {}
        for sample in scrape.cumulative:
            by_entity.setdefault(sample.entity, []).append(sample)
        gauges = _latest_gauges(scrape)
        out: list[tuple[int, EntityWindow]] = []
        for entity, samples in by_entity.items():
            t_now = max(
                s.timestamp_ms if s.timestamp_ms is not None else scraped_at_ms for s in samples
            )
            t_prev = self._entity_t.get(entity)
            if t_prev is not None and t_now <= t_prev:
                continue  # the same counters again (or older ones): nothing happened since
            deltas = self._difference(samples, scraped_at_ms)
            self._entity_t[entity] = t_now
            if t_prev is None:
                continue  # a baseline
            out.append((t_prev, _delta_window(entity, t_prev, deltas, gauges.get(entity))))
        return out

    def _difference(
        self, samples: list[CumulativeSample], scraped_at_ms: int
    ) -> dict[_GroupKey, dict[str, float]]:
        """Per series group (field, replica): the part-wise increase since the last scrape."""
        groups: dict[_GroupKey, list[CumulativeSample]] = {}
        for sample in samples:
            groups.setdefault((sample.field, sample.series), []).append(sample)
        deltas: dict[_GroupKey, dict[str, float]] = {}
        for group_key, parts in groups.items():
            previous = [self._series.get(_series_key(s)) for s in parts]
            reset = any(
                p is not None
                and (
                    s.value < p.value - _ROUNDING * max(1.0, p.value)
                    or (s.created is not None and p.created is not None and s.created != p.created)
                )
                for s, p in zip(parts, previous, strict=True)
            )
            group_delta: dict[str, float] = {}
            for sample, point in zip(parts, previous, strict=True):
                if reset:
                    group_delta[sample.part] = sample.value
                elif point is not None:
                    group_delta[sample.part] = max(0.0, sample.value - point.value)
                t_ms = sample.timestamp_ms if sample.timestamp_ms is not None else scraped_at_ms
                self._series[_series_key(sample)] = _CounterPoint(
                    sample.value, t_ms, sample.created
                )
            if group_delta:
                deltas[group_key] = group_delta
        return deltas

    def _prune_to_retention(self) -> None:
        if self._latest_ms is not None:
            self.prune(self._latest_ms - self.retention_ms)

    def prune(self, before_ms: int) -> None:
        """Forget windows that began before ``before_ms`` and counters not seen since then."""
        for key in [k for k in self._windows if k[1] < before_ms]:
            del self._windows[key]
        for skey in [k for k, p in self._series.items() if p.t_ms < before_ms]:
            del self._series[skey]
        for entity in [e for e, t in self._entity_t.items() if t < before_ms]:
            del self._entity_t[entity]
        for entity in [e for e, (t, _) in self._untimed.items() if t < before_ms]:
            del self._untimed[entity]

    # -- reading ------------------------------------------------------------------------------

    def windows(self) -> list[EntityWindow]:
        """Every window kept, each once, in time order (revisions applied)."""
        return sorted(self._windows.values(), key=_order)

    def totals(self, since_ms: int) -> dict[str | None, ArmTotals]:
        """Per entity, the sum of the windows that began at or after ``since_ms``."""
        return sum_windows(self._windows.values(), since_ms)

    # -- persistence --------------------------------------------------------------------------

    def to_state(self, *, windows: bool = True) -> TrackerState:
        """A JSON-safe snapshot; ``from_state`` of it continues exactly where this one is.

        ``windows=False`` leaves the kept windows out (their list is empty): for a caller that
        stores them apart and hands them back to ``from_state``. The rest is small and does not
        grow with the number of windows (counter baselines, one untimed snapshot per entity).
        """
        # Built as its JSON and validated once: a model per counter series, constructed one
        # by one, costs several times more, at every look.
        return TrackerState.model_validate({
            "version": STATE_VERSION,
            "window_ms": self.window_ms,
            "retention_ms": self.retention_ms,
            "kind": self.kind,
            "has_entity_labels": self.has_entity_labels,
            "revisions": self.revisions,
            "too_old": self.too_old,
            "latest_ms": self._latest_ms,
            "windows": [w.to_dict() for w in self.windows()] if windows else [],
            "untimed": [
                {"entity": entity, "first_seen_ms": first, "window": window.to_dict()}
                for entity, (first, window) in self._untimed.items()
            ],
            "counter_times": [{"entity": e, "t_ms": t} for e, t in self._entity_t.items()],
            "series": [
                {
                    "entity": entity,
                    "field": fld,
                    "part": part,
                    "series": series,
                    "value": point.value,
                    "t_ms": point.t_ms,
                    "created": point.created,
                }
                for (entity, fld, part, series), point in self._series.items()
            ],
        })

    @classmethod
    def from_state(
        cls, state: TrackerState | Mapping[str, Any], windows: Iterable[EntityWindow] = ()
    ) -> WindowTracker:
        """Rebuild a tracker from ``to_state`` output (or its JSON) plus ``windows`` kept apart
        (each with its start time); ``MetricsStateError`` if unreadable."""
        if not isinstance(state, TrackerState):
            if state.get("version") != STATE_VERSION:
                raise MetricsStateError(
                    f"tracker state version {state.get('version')!r} is not {STATE_VERSION}"
                )
            try:
                state = TrackerState.model_validate(state)
            except ValidationError as exc:
                raise MetricsStateError(f"tracker state is malformed: {exc}") from exc
        if state.version != STATE_VERSION:
            raise MetricsStateError(
                f"tracker state version {state.version!r} is not {STATE_VERSION}"
            )
        try:
            tracker = cls(window_ms=state.window_ms, retention_ms=state.retention_ms)
            tracker.kind = state.kind
            tracker.has_entity_labels = state.has_entity_labels
            tracker.revisions = state.revisions
            tracker.too_old = state.too_old
            tracker._latest_ms = state.latest_ms
            kept = [EntityWindow.from_dict(data) for data in state.windows]
            for window in itertools.chain(kept, windows):
                if window.start_ms is None:
                    raise MetricsStateError("a kept window has no start time")
                tracker._windows[(window.entity, window.start_ms)] = window
            for item in state.untimed:
                tracker._untimed[item.entity] = (
                    item.first_seen_ms,
                    EntityWindow.from_dict(item.window),
                )
            for time in state.counter_times:
                tracker._entity_t[time.entity] = time.t_ms
            for point in state.series:
                tracker._series[(point.entity, point.field, point.part, tuple(point.series))] = (
                    _CounterPoint(point.value, point.t_ms, point.created)
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise MetricsStateError(f"tracker state is malformed: {exc!r}") from exc
        return tracker


def _order(window: EntityWindow) -> tuple[int, str, bool]:
    return (
        window.start_ms if window.start_ms is not None else -1,
        window.entity or "",
        window.entity is not None,
    )


def _series_key(sample: CumulativeSample) -> _SeriesKey:
    return (sample.entity, sample.field, sample.part, sample.series)


def _has_request_data(scrape: Scrape) -> bool:
    if scrape.cumulative:
        return True
    return any(
        name not in window.missing
        for window in scrape.windows
        for name in (*REQUEST_FIELDS, *HISTOGRAM_FIELDS)
    )


def _latest_gauges(scrape: Scrape) -> dict[str | None, EntityWindow]:
    latest: dict[str | None, EntityWindow] = {}
    for window in scrape.windows:
        seen = latest.get(window.entity)
        if seen is None or (window.start_ms or -1) >= (seen.start_ms or -1):
            latest[window.entity] = window
    return latest


def _delta_window(
    entity: str | None,
    start_ms: int,
    deltas: dict[_GroupKey, dict[str, float]],
    gauges: EntityWindow | None,
) -> EntityWindow:
    counts: dict[str, float] = {}
    histograms: dict[str, Histogram] = {}
    for (fld, _series), parts in deltas.items():
        if fld in REQUEST_FIELDS:
            if "value" in parts:
                counts[fld] = counts.get(fld, 0.0) + parts["value"]
            continue
        buckets = {float(p[3:]): v for p, v in parts.items() if p.startswith("le:")}
        if math.inf not in buckets:
            continue  # the +Inf bucket is the count; a group without its delta says nothing
        hist = Histogram.from_cumulative(buckets, parts.get("sum"))
        histograms[fld] = hist if fld not in histograms else histograms[fld].merge(hist)
    present = set(counts) | set(histograms)
    if gauges is not None:
        present |= {
            name
            for name in (*GAUGE_FIELDS, "provisioned_concurrency")
            if name not in gauges.missing
        }
    return EntityWindow(
        entity=entity,
        start_ms=start_ms,
        requests=counts.get("requests", 0.0),
        errors_4xx=counts.get("errors_4xx", 0.0),
        errors_5xx=counts.get("errors_5xx", 0.0),
        latency=histograms.get("latency"),
        queue_time=histograms.get("queue_time"),
        inference_latency=histograms.get("inference_latency"),
        cpu_percent=None if gauges is None else gauges.cpu_percent,
        mem_percent=None if gauges is None else gauges.mem_percent,
        gpu_percent=None if gauges is None else gauges.gpu_percent,
        gpu_mem_percent=None if gauges is None else gauges.gpu_mem_percent,
        provisioned_concurrency=None if gauges is None else gauges.provisioned_concurrency,
        missing=frozenset(name for name in WINDOW_FIELDS if name not in present),
    )
