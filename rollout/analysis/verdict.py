"""Verdicts: what a judge decided at one look, with every number behind it.

Where this sits: ``rollout.analysis.judge`` returns a ``Verdict`` at every tick; the engine acts
on ``outcome`` (``fail`` rolls back) and, at the end of a step's bake, on ``may_advance``; the
verdict's ``to_dict()`` goes into the rollout's event log and alerts, so a person can see why.
Pure data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


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
        return {f.name: _json_safe(getattr(self, f.name)) for f in fields(self)}


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
        result = {
            f.name: _json_safe(getattr(self, f.name)) for f in fields(self) if f.name != "checks"
        }
        result["checks"] = [check.to_dict() for check in self.checks]
        return result

    def check(self, description: str) -> CheckResult:
        """The result of the check whose ``describe()`` text is ``description``."""
        for result in self.checks:
            if result.check == description:
                return result
        raise KeyError(description)


def _json_safe(value: Any) -> Any:
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
