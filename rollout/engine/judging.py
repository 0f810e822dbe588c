"""The engine's side of judging: hands the per-arm sums to ``rollout.analysis`` and back.

Where this sits: ``decide`` calls ``judge_look`` at every tick with new windows. Keeps the
persisted judge state as a plain dict and the verdict as its JSON form, so the rollout's state
stays serialisable. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rollout.analysis.judge import Look as JudgeInput
from rollout.analysis.judge import judge, state_from_dict
from rollout.analysis.spec import Policy
from rollout.metrics.model import ArmTotals


@dataclass(frozen=True)
class Look:
    outcome: str  # pass | fail | inconclusive
    may_advance: bool
    reason: str
    verdict: dict[str, Any]
    state: dict[str, Any]


def judge_look(
    policy: Policy,
    candidate: ArmTotals,
    baseline: ArmTotals,
    judge_state: dict[str, Any],
    *,
    split: str,
    final: bool,
    served: ArmTotals | None = None,
    warmup: tuple[ArmTotals, ArmTotals] | None = None,
    note: str | None = None,
) -> Look:
    previous = state_from_dict(judge_state or None)
    verdict, new_state = judge(
        policy,
        JudgeInput(
            candidate=candidate, baseline=baseline, split=split, final=final, served=served,
            warmup=warmup,
        ),
        previous,
    )
    data = verdict.to_dict()
    reason = verdict.reason if note is None else f"{verdict.reason} ({note})"
    data["reason"] = reason
    return Look(
        outcome=str(verdict.outcome),
        may_advance=verdict.may_advance,
        reason=reason,
        verdict=data,
        state=new_state.to_dict(),
    )
