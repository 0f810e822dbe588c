"""The engine's side of judging: hands the per-arm sums to ``rollout.analysis`` and back.

Where this sits: ``decide`` calls ``judge_look`` at every tick with new windows. Keeps the
persisted judge state as a plain dict and the verdict as its JSON form, so the rollout's state
stays serialisable. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rollout.analysis.judge import Look as JudgeInput
from rollout.analysis.judge import judge, state_from_dict
from rollout.analysis.spec import Policy


@dataclass(frozen=True)
class Look:
    outcome: str  # pass | fail | inconclusive
    may_advance: bool
    reason: str
    verdict: dict[str, Any]
    state: dict[str, Any]


def judge_look(
    policy: Policy,
    inputs: Sequence[JudgeInput],
    judge_state: dict[str, Any],
    *,
    note: str | None = None,
) -> Look:
    """Judge each input in turn (one per new window), the state carried from one to the next;
    the verdict is the last one's (a fail on the way stays: a fail is final)."""
    state = state_from_dict(judge_state or None)
    verdict = None
    for one in inputs:
        verdict, state = judge(policy, one, state)
    if verdict is None or state is None:
        raise ValueError("judge_look needs at least one input")
    data = verdict.to_dict()
    reason = verdict.reason if note is None else f"{verdict.reason} ({note})"
    data["reason"] = reason
    return Look(
        outcome=str(verdict.outcome),
        may_advance=verdict.may_advance,
        reason=reason,
        verdict=data,
        state=state.to_dict(),
    )
