"""Verdicts: what a judge decided at one look, with every number behind it.

Where this sits: ``rollout.analysis.judge`` returns a ``Verdict`` at every tick; the engine acts
on ``outcome`` (``fail`` rolls back) and, at the end of a step's bake, on ``may_advance``. The
rollout keeps the verdict as a ``VerdictRecord`` (its JSON form, typed, with what the engine
adds about the look: when, the warm-up, the unpaired windows, the sentence a person reads
first), and its ``model_dump(mode="json")`` goes into the event log and alerts, so a person can
see why. Pure data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Outcome(StrEnum):
    """``pass``: confident the candidate is within tolerance. ``fail``: confident it is not
    (roll back). ``inconclusive``: not enough evidence either way (hold)."""

    PASS = "pass"  # noqa: S105  # an outcome's name, not a password
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class CheckResult:
    """One check at one look.

    ``candidate_value``/``baseline_value`` are the metric over the current split (``None``
    when there is nothing to compute it from); ``candidate_n``/``baseline_n`` the samples behind
    them (requests, histogram observations, or gauge windows). ``limit`` states the tolerance in
    words. ``statistic`` and ``boundary`` are the test's numbers with the same keys: the
    sequential judge reports natural-log e-values (``fail`` is reached when
    ``statistic["fail"] >= boundary["fail"]``, likewise ``pass``); the threshold judge reports
    the interval's value against the threshold and its failure count. ``detail`` holds the
    test's other inputs (events per arm over the rollout, the alternative it guards against).
    """

    check: str
    metric: str
    outcome: Outcome
    reason: str
    candidate_value: float | None = None
    baseline_value: float | None = None
    candidate_n: float = 0.0
    baseline_n: float = 0.0
    limit: str = ""
    statistic: Mapping[str, float] = field(default_factory=dict)
    boundary: Mapping[str, float] = field(default_factory=dict)
    detail: Mapping[str, float | str | None] = field(default_factory=dict)
    missing: bool = False
    leans_bad: bool = False  # the evidence so far favours a regression (blocks "lean" advances)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, as ``Verdict.to_dict``."""
        return {name: _json_safe(getattr(self, name)) for name in _CHECK_FIELDS}


@dataclass(frozen=True)
class Verdict:
    """The judge's answer at one look.

    ``may_advance`` answers the engine's question at the end of a bake, "may the rollout move
    on?": never after a fail or below ``min_requests``; always on a pass; on ``inconclusive``
    only for an intermediate step under ``advance: lean`` when no check leans towards a
    regression (a step whose advance promotes the candidate needs a pass). ``missing`` names the
    data the judge lacked (for the engine's ``on_no_data``).
    """

    outcome: Outcome
    may_advance: bool
    reason: str
    judge: str
    policy: str
    split: str
    look: int
    final: bool
    candidate_requests: float
    baseline_requests: float
    checks: tuple[CheckResult, ...] = ()
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: enums as strings, non-finite numbers as ``"+Inf"``/``"-Inf"``/``None``.

        Field by field rather than ``dataclasses.asdict``, whose deep copies cost more than
        the judging itself at every look.
        """
        result = {name: _json_safe(getattr(self, name)) for name in _VERDICT_TOP_FIELDS}
        result["checks"] = [check.to_dict() for check in self.checks]
        return result

    def record(self, **changes: Any) -> VerdictRecord:
        """The verdict as the rollout keeps it, with ``changes`` to its fields (say, the reason
        with a note): one validation of ``to_dict``'s output, which costs less than building
        the typed records field by field."""
        return VerdictRecord.model_validate(self.to_dict() | changes)

    def check(self, description: str) -> CheckResult:
        """The result of the check whose ``describe()`` text is ``description``."""
        for result in self.checks:
            if result.check == description:
                return result
        raise KeyError(description)


# Read once: ``dataclasses.fields`` at every call costs more than the copying. A verdict goes
# to JSON at every look, its numbers one by one, so the common values are recognised first.
_CHECK_FIELDS = tuple(f.name for f in fields(CheckResult))
_VERDICT_TOP_FIELDS = tuple(f.name for f in fields(Verdict) if f.name != "checks")
_AS_IS = frozenset({str, int, bool, type(None)})


def _json_safe(value: Any) -> Any:
    kind = type(value)
    if kind in _AS_IS or (kind is float and math.isfinite(value)):
        return value
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# ---- the verdict as the rollout keeps it ----------------------------------------------------

# A verdict's number in JSON: finite, infinite spelled out (``_json_safe``), or null for NaN.
JsonNumber = float | Literal["+Inf", "-Inf"] | None


class CheckRecord(BaseModel):
    """``CheckResult`` as stored: its ``to_dict``, typed. Keys it does not know (written by
    another version) are kept; the defaults are for checks written by hand (tests, bench)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    check: str = ""
    metric: str = ""
    outcome: Outcome = Outcome.INCONCLUSIVE
    reason: str = ""
    candidate_value: JsonNumber = None
    baseline_value: JsonNumber = None
    candidate_n: JsonNumber = 0.0
    baseline_n: JsonNumber = 0.0
    limit: str = ""
    statistic: dict[str, JsonNumber] = Field(default_factory=dict)
    boundary: dict[str, JsonNumber] = Field(default_factory=dict)
    detail: dict[str, float | str | None] = Field(default_factory=dict)
    missing: bool = False
    leans_bad: bool = False


class Warmup(BaseModel):
    """The current split's warm-up as one look saw it (epoch seconds)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    seconds: float = 0.0  # from the split change to ``scored_from``
    scored_from: float | None = None  # windows that began from here on are scored
    in_warmup: bool = False  # the look came before ``scored_from``
    ended_early: bool = False  # a window showed a warm candidate before the full length


def _absent(value: object) -> bool:
    return value is None


class VerdictRecord(BaseModel):
    """A verdict as the rollout keeps it (``RolloutState.last_verdict``), in the stored key
    order: ``Verdict.to_dict``'s keys, then the ones the engine adds when it keeps it.

    The engine's keys are written only when set, as they always were: ``warmup`` is absent
    until the split's scoring start is known, and verdicts stored before a key was added lack
    it (a reader sees None). Keys it does not know (written by a later version) are kept.
    The defaults of the other fields are for verdicts written by hand (tests, bench): every
    version wrote all of them.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    outcome: Outcome = Outcome.INCONCLUSIVE
    may_advance: bool = False
    reason: str = ""
    judge: str = ""
    policy: str = ""
    split: str = ""
    look: int = 0
    final: bool = False
    candidate_requests: JsonNumber = 0.0
    baseline_requests: JsonNumber = 0.0
    missing: list[str] = Field(default_factory=list)
    checks: list[CheckRecord] = Field(default_factory=list)
    # Added by the engine (``rollout.engine.decide``): the look's time, the split's warm-up,
    # the windows still waiting for the other arm's, and the verdict in one sentence
    # (``rollout.analysis.wording``). ``exclude_if`` rather than a serializer of the whole
    # record: this is written at every look, and a Python hook per record doubles its cost.
    at: float | None = Field(default=None, exclude_if=_absent)
    warmup: Warmup | None = Field(default=None, exclude_if=_absent)
    unpaired_windows: int | None = Field(default=None, exclude_if=_absent)
    summary: str | None = Field(default=None, exclude_if=_absent)

    def data(self) -> dict[str, Any]:
        """The JSON form, as events, alerts and hooks carry it."""
        return self.model_dump(mode="json")

