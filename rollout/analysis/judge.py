"""The judges' single entry point: ``judge(policy, look, state) -> (Verdict, state)``.

Where this sits: the engine's pure ``decide`` calls ``judge`` at every tick with one ``Look``
(the candidate's and the baseline's ``ArmTotals`` summed over the windows since the current
split took effect, which split that is, and whether advancing from it promotes the candidate)
and the state the previous call returned (``None`` at the start of a rollout). It acts on the
``Verdict`` (``fail``: roll back; at the end of a bake, ``may_advance``), writes
``verdict.to_dict()`` to the event log, and persists ``state.to_dict()`` with the rollout;
``state_from_dict`` restores it, so a restarted controller continues the same test.

Contract for the caller:

* Pass the same ``split`` id for every look at one split and a new id when the split changes
  (the totals restart then); the judge carries its evidence across splits.
* Call as often as you like: a look with nothing new changes no evidence.
* ``final`` is true when an advance from this split promotes the candidate (the last canary
  step, a blue/green bake); the sequential judge then only lets it advance on a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rollout.analysis.sequential import SequentialState, judge_sequential
from rollout.analysis.spec import Policy
from rollout.analysis.threshold import ThresholdState, judge_threshold
from rollout.analysis.verdict import Verdict
from rollout.metrics.model import ArmTotals

JudgeState = SequentialState | ThresholdState


@dataclass(frozen=True)
class Look:
    """What the engine shows the judge at one tick."""

    candidate: ArmTotals
    baseline: ArmTotals
    split: str = "0"
    final: bool = False
    # Everything the candidate served in the split, warm-up included (the 5xx ceiling's input;
    # ``None``: the candidate's scored sums).
    served: ArmTotals | None = None
    # Both arms' paired sums over the split's warm-up (candidate, baseline): judged only
    # for gross regressions of a rate (see ``rollout.analysis.sequential``).
    warmup: tuple[ArmTotals, ArmTotals] | None = None


def judge(
    policy: Policy, look: Look, state: JudgeState | None = None
) -> tuple[Verdict, JudgeState]:
    """Judge one look with the policy's judge; returns the verdict and the state to persist.

    A state of the other judge's kind (the policy was switched mid-rollout) is not reused:
    the new judge starts fresh and says so.
    """
    if policy.judge == "threshold":
        previous_t = state if isinstance(state, ThresholdState) else None
        verdict, new_t = judge_threshold(
            policy, look.candidate, look.baseline, previous_t, split=look.split, final=look.final
        )
        return _noted(verdict, state, previous_t), new_t
    previous_s = state if isinstance(state, SequentialState) else None
    verdict, new_s = judge_sequential(
        policy,
        look.candidate,
        look.baseline,
        previous_s,
        split=look.split,
        final=look.final,
        served=look.served,
        warmup=look.warmup,
    )
    return _noted(verdict, state, previous_s), new_s


def _noted(verdict: Verdict, given: JudgeState | None, used: JudgeState | None) -> Verdict:
    if given is None or used is not None:
        return verdict
    return replace(
        verdict,
        reason=f"{verdict.reason} [state of the {given.kind} judge ignored: started afresh]",
    )


def state_from_dict(data: dict[str, Any] | None) -> JudgeState | None:
    """Restore a persisted judge state (``None`` stays ``None``)."""
    if data is None:
        return None
    kind = data.get("kind")
    if kind == "sequential":
        return SequentialState.from_dict(data)
    if kind == "threshold":
        return ThresholdState.from_dict(data)
    raise ValueError(f"unknown judge state kind {kind!r}")
