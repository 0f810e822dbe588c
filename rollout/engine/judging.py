"""The engine's side of judging: hands the per-arm sums to ``rollout.analysis`` and back.

Where this sits: ``decide`` calls ``judge_look`` at every tick with new windows. Keeps the
persisted judge state as a plain dict and the verdict as its stored form
(``rollout.analysis.verdict.VerdictRecord``), so the rollout's state stays serialisable. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rollout.analysis.judge import Look as JudgeInput
from rollout.analysis.judge import judge, state_from_dict
from rollout.analysis.queries import QueryReading, combine, judge_queries
from rollout.analysis.spec import Policy
from rollout.analysis.verdict import VerdictRecord


@dataclass(frozen=True)
class Look:
    outcome: str  # pass | fail | inconclusive
    may_advance: bool
    reason: str
    verdict: VerdictRecord
    state: dict[str, Any]
    query_state: dict[str, Any]


def judge_look(
    policy: Policy,
    inputs: Sequence[JudgeInput],
    judge_state: dict[str, Any],
    *,
    note: str | None = None,
    readings: Sequence[QueryReading] = (),
    query_state: dict[str, Any] | None = None,
) -> Look:
    """Judge each input in turn (one per new window), the state carried from one to the next;
    the verdict is the last one's (a fail on the way stays: a fail is final).

    The policy's query checks are judged once per call, on ``readings`` (this look's
    numbers; empty when they were not run, which counts as no look), and folded into the
    verdict; ``query_state`` is what the last call returned as ``Look.query_state``.
    """
    state = state_from_dict(judge_state or None)
    verdict = None
    for one in inputs:
        verdict, state = judge(policy, one, state)
    if verdict is None or state is None:
        raise ValueError("judge_look needs at least one input")
    queries_state = dict(query_state or {})
    if policy.query_checks:
        split = inputs[-1].split
        results, queries_state = judge_queries(
            policy, readings, queries_state, split=split
        )
        verdict = combine(policy, verdict, results)
    reason = verdict.reason if note is None else f"{verdict.reason} ({note})"
    return Look(
        outcome=str(verdict.outcome),
        may_advance=verdict.may_advance,
        reason=reason,
        verdict=verdict.record(reason=reason),
        state=state.to_dict(),
        query_state=queries_state,
    )
