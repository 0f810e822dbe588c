"""decide() with the plan's hooks: gates waited at, answers taken, notifications named.

Table-driven over (plan, state, observation, time), no mocks: each row says what the one
decision must come to (phase, effect, pause reason, gate state, notifications).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from rollout.engine.decide import decide
from rollout.engine.model import (
    CallGate,
    Command,
    GateOutcome,
    GateState,
    Observation,
    Phase,
    PutConfig,
    RolloutState,
)
from rollout.plan import AnyPlan
from tests.unit.test_engine_decide import (
    BASE,
    CAND,
    T0,
    TIMING,
    key,
    live,
    plan_of,
    policy,
    progressing,
    snapshot,
    state,
    target,
    windows,
)

GATE = {"url": "https://gates.example.com/check", "timeout": 5, "retries": 1,
        "interval": "1m", "limit": "10m"}
NOTE = {"url": "https://hooks.example.com/rollouts"}
HOOKS = {"pre_rollout": GATE, "confirm_promotion": GATE, "post_rollout": NOTE,
         "on_rollback": NOTE}
PASSED = {"outcome": "pass", "may_advance": True, "reason": "pass"}


def gated(**hooks: Any) -> AnyPlan:
    return plan_of(hooks=hooks or HOOKS)


def at_pre(**fields: Any) -> RolloutState:
    """Pending, a pre_rollout call decided (call 1 in flight)."""
    values: dict[str, Any] = {"gate": GateState(name="pre_rollout", started_at=T0, calls=1)}
    values.update(fields)
    return state(Phase.PENDING, **values)


def at_confirm(**gate: Any) -> RolloutState:
    """The last step baked and passed; confirm_promotion call 1 in flight."""
    values: dict[str, Any] = {"name": "confirm_promotion", "started_at": T0 + 600, "calls": 1,
                              "promote_reason": "all steps passed; candidate to 100 %"}
    values.update(gate)
    return progressing(step=1, weight=50, last_verdict=PASSED, gate=GateState(**values))


def answer(gate: str, kind: str, reason: str = "", call: int = 1,
           status: int | None = 200) -> GateOutcome:
    return GateOutcome(gate, call, kind, reason or kind, status)  # type: ignore[arg-type]


@dataclass
class Case:
    name: str
    plan: AnyPlan
    state: RolloutState
    obs: Observation
    now: float
    phase: Phase
    effect: str | None = None  # "gate:<name>:<call>" or "put:<purpose>"
    pause: str | None = None  # a text the pause reason must contain
    passed: tuple[str, ...] = ()
    gate: dict[str, Any] | None = None  # fields the remaining gate state must have
    hooks: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


PENDING_OBS = Observation(endpoint=snapshot({BASE: 100}))

CASES = [
    # ---- pre_rollout ------------------------------------------------------------------------
    Case("pre_rollout is called before anything changes", gated(), state(), PENDING_OBS, T0,
         Phase.PENDING, effect="gate:pre_rollout:1", gate={"calls": 1, "next_call_at": None},
         events=("gate_waiting",)),
    Case("pre_rollout yes: the candidate is deployed at 0 % in the same turn", gated(),
         at_pre(), Observation(endpoint=snapshot({BASE: 100}),
                               gate=answer("pre_rollout", "proceed")), T0 + 1,
         Phase.PREPARING, effect="put:deploy", passed=("pre_rollout",),
         events=("gate_answered", "started")),
    Case("pre_rollout no: paused with its reason, nothing sent", gated(), at_pre(),
         Observation(endpoint=snapshot({BASE: 100}),
                     gate=answer("pre_rollout", "refused", "change freeze until Monday")),
         T0 + 1, Phase.PAUSED, pause="pre_rollout hook: change freeze until Monday",
         gate={"held": True, "last_answer": "refused"}, events=("gate_answered", "gate_refused")),
    Case("pre_rollout timed out after its retries: paused, saying so", gated(), at_pre(),
         Observation(endpoint=snapshot({BASE: 100}), gate=answer(
             "pre_rollout", "timeout", "pre_rollout hook timed out: no answer within 5 s, "
             "2 attempts", status=None)),
         T0 + 12, Phase.PAUSED, pause="timed out", gate={"held": True},
         events=("gate_answered", "gate_unanswered")),
    Case("pre_rollout wait: asked again after its interval", gated(), at_pre(),
         Observation(endpoint=snapshot({BASE: 100}),
                     gate=answer("pre_rollout", "wait", "approval pending")),
         T0 + 1, Phase.PENDING, gate={"next_call_at": T0 + 61, "last_answer": "wait"},
         extra={"next_check_in": 60.0}),
    Case("waiting between calls: no call before the interval is up", gated(),
         at_pre(gate=GateState(name="pre_rollout", started_at=T0, calls=1,
                               next_call_at=T0 + 61)),
         PENDING_OBS, T0 + 30, Phase.PENDING, gate={"calls": 1},
         extra={"next_check_in": 31.0}),
    Case("the interval is up: call 2", gated(),
         at_pre(gate=GateState(name="pre_rollout", started_at=T0, calls=1,
                               next_call_at=T0 + 61)),
         PENDING_OBS, T0 + 61, Phase.PENDING, effect="gate:pre_rollout:2", gate={"calls": 2}),
    Case("a call in flight when the controller stopped is made again (no answer seen)",
         gated(), at_pre(), PENDING_OBS, T0 + 90, Phase.PENDING, effect="gate:pre_rollout:2"),
    Case("an answer to an older call is not taken for the current one", gated(),
         at_pre(gate=GateState(name="pre_rollout", started_at=T0, calls=2)),
         Observation(endpoint=snapshot({BASE: 100}), gate=answer("pre_rollout", "proceed")),
         T0 + 90, Phase.PENDING, effect="gate:pre_rollout:3"),
    Case("a gate already passed is never called again", gated(),
         state(gates_passed=["pre_rollout"]), PENDING_OBS, T0, Phase.PREPARING,
         effect="put:deploy", passed=("pre_rollout",)),
    Case("limit reached while it says wait: paused (on_limit: pause)", gated(),
         at_pre(gate=GateState(name="pre_rollout", started_at=T0, calls=10)),
         Observation(endpoint=snapshot({BASE: 100}),
                     gate=answer("pre_rollout", "wait", "approval pending", call=10)),
         T0 + 600, Phase.PAUSED, pause="gave no yes within its limit of 10m",
         gate={"held": True}, events=("gate_answered", "gate_limit")),
    Case("limit reached, on_limit: rollback ends the rollout without touching the endpoint",
         gated(pre_rollout={**GATE, "on_limit": "rollback"}, post_rollout=NOTE,
               on_rollback=NOTE),
         at_pre(gate=GateState(name="pre_rollout", started_at=T0, calls=3,
                               next_call_at=T0 + 660)),
         PENDING_OBS, T0 + 601, Phase.ROLLED_BACK, hooks=("post_rollout",)),
    Case("paused on pre_rollout, resume: asked again, its limit counting afresh", gated(),
         state(Phase.PAUSED, baseline=None, baseline_entity=None, paused_from=Phase.PENDING,
               pause_reason="pre_rollout hook: no",
               gate=GateState(name="pre_rollout", started_at=T0, calls=1, held=True)),
         Observation(endpoint=snapshot({BASE: 100}), commands=(Command(1, "resume"),)),
         T0 + 300, Phase.PENDING, gate={"calls": 0, "held": False, "started_at": T0 + 300}),
    Case("paused on pre_rollout, promote: started on the operator's word", gated(),
         state(Phase.PAUSED, baseline=None, baseline_entity=None, paused_from=Phase.PENDING,
               pause_reason="pre_rollout hook: no",
               gate=GateState(name="pre_rollout", started_at=T0, calls=1, held=True)),
         Observation(endpoint=snapshot({BASE: 100}), commands=(Command(1, "promote"),)),
         T0 + 300, Phase.PENDING, passed=("pre_rollout",), events=("gate_overridden", "resumed")),
    Case("abort while waiting at pre_rollout: aborted, post_rollout told", gated(), at_pre(),
         Observation(endpoint=snapshot({BASE: 100}), commands=(Command(1, "abort"),)),
         T0 + 5, Phase.ABORTED, hooks=("post_rollout",)),
    # ---- confirm_promotion ------------------------------------------------------------------
    Case("the last step passed: confirm_promotion is asked, no promotion yet", gated(),
         progressing(step=1, weight=50, last_verdict=PASSED), Observation(endpoint=live(50)),
         T0 + 601, Phase.PROGRESSING, effect="gate:confirm_promotion:1",
         gate={"promote_reason": "all steps passed; candidate to 100 %"}),
    Case("confirm_promotion yes: promoted", gated(), at_confirm(),
         Observation(endpoint=live(50), gate=answer("confirm_promotion", "proceed")),
         T0 + 602, Phase.PROMOTING, effect="put:promote", passed=("confirm_promotion",)),
    Case("confirm_promotion no: paused with its reason, still at 50 %", gated(), at_confirm(),
         Observation(endpoint=live(50), gate=answer(
             "confirm_promotion", "refused", "release manager said no", status=403)),
         T0 + 602, Phase.PAUSED, pause="confirm_promotion hook: release manager said no",
         gate={"held": True, "last_status": 403}),
    Case("waiting at confirm_promotion, the candidate regresses: rolled back, gate dropped",
         gated(), at_confirm(next_call_at=T0 + 660),
         Observation(endpoint=live(50), windows=windows(T0, 6, cand=(600, 60),
                                                         base=(5400, 5))),
         T0 + 630, Phase.ROLLING_BACK, effect="put:restore", extra={"gate_none": True}),
    Case("waiting at confirm_promotion, an operator promotes: promoted", gated(),
         at_confirm(next_call_at=T0 + 660),
         Observation(endpoint=live(50), commands=(Command(3, "promote"),)),
         T0 + 630, Phase.PROMOTING, effect="put:promote", extra={"gate_none": True}),
    Case("paused on confirm_promotion, resume: asked again at once, no split re-sent",
         gated(),
         progressing(step=1, weight=50, last_verdict=PASSED).model_copy(update={
             "phase": Phase.PAUSED, "paused_from": Phase.PROGRESSING, "pause_reason": "no",
             "gate": GateState(name="confirm_promotion", started_at=T0, calls=2, held=True,
                               promote_reason="all steps passed")}),
         Observation(endpoint=live(50), commands=(Command(4, "resume"),)),
         T0 + 900, Phase.PROGRESSING, gate={"calls": 0, "held": False}),
    Case("waiting at confirm_promotion, someone changes the split: paused, gate dropped",
         gated(), at_confirm(next_call_at=T0 + 660).model_copy(update={"live_key": key(
             {BASE: 50, CAND: 50})}),
         Observation(endpoint=live(30)), T0 + 630, Phase.PAUSED, pause="drift",
         extra={"gate_none": True}),
    Case("no confirm_promotion hook: promoted as before", gated(pre_rollout=GATE),
         progressing(step=1, weight=50, last_verdict=PASSED), Observation(endpoint=live(50)),
         T0 + 601, Phase.PROMOTING, effect="put:promote"),
    # ---- notifications ----------------------------------------------------------------------
    Case("rollback applied: on_rollback and post_rollout", gated(),
         state(Phase.ROLLING_BACK, ending=Phase.ROLLED_BACK, ending_reason="analysis failed",
               ending_cause="analysis",
               target=target("remove_candidate", {BASE: 100}, [{BASE: 100, CAND: 0}])),
         Observation(endpoint=snapshot({BASE: 100})), T0 + 60, Phase.ROLLED_BACK,
         hooks=("on_rollback", "post_rollout")),
    Case("promoted: post_rollout only", gated(),
         state(Phase.PROMOTING, candidate_weight=50,
               target=target("promote", {CAND: 100}, [{BASE: 50, CAND: 50}])),
         Observation(endpoint=snapshot({CAND: 100})), T0 + 60, Phase.SUCCEEDED,
         hooks=("post_rollout",)),
    Case("no notification hooks: none named", plan_of(),
         state(Phase.PROMOTING, candidate_weight=50,
               target=target("promote", {CAND: 100}, [{BASE: 50, CAND: 50}])),
         Observation(endpoint=snapshot({CAND: 100})), T0 + 60, Phase.SUCCEEDED),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gates(case: Case) -> None:
    decision = decide(case.plan, case.state, case.obs, case.now, policy=policy(),
                      timing=TIMING)
    after = decision.state
    assert after.phase is case.phase, [(e.kind, e.reason) for e in decision.events]
    effect = decision.effect
    if case.effect is None:
        assert effect is None, effect
    elif case.effect.startswith("gate:"):
        _, name, call = case.effect.split(":")
        assert isinstance(effect, CallGate), effect
        assert (effect.gate, effect.call) == (name, int(call))
        assert effect.details["gate"] == name
    else:
        assert isinstance(effect, PutConfig), effect
        assert effect.target.purpose == case.effect.removeprefix("put:")
    if case.pause is not None:
        assert after.pause_reason is not None
        assert case.pause in after.pause_reason
    assert tuple(after.gates_passed) == case.passed
    if case.gate is not None:
        assert after.gate is not None
        for name, value in case.gate.items():
            assert getattr(after.gate, name) == value, name
    if case.extra.get("gate_none"):
        assert after.gate is None
    if "next_check_in" in case.extra:
        assert decision.next_check_in == case.extra["next_check_in"]
    assert tuple(h.hook for h in decision.hooks) == case.hooks
    kinds = [e.kind for e in decision.events]
    for kind in case.events:
        assert kind in kinds, kinds


def test_a_gate_no_moves_no_traffic_whatever_the_commands() -> None:
    """Paused on pre_rollout's no, a pause or a second no never leads to a config PUT."""
    plan = gated()
    paused = decide(plan, at_pre(), Observation(
        endpoint=snapshot({BASE: 100}), gate=answer("pre_rollout", "refused", "no")),
        T0 + 1, policy=policy(), timing=TIMING)
    again = decide(plan, paused.state, Observation(endpoint=snapshot({BASE: 100})), T0 + 120,
                   policy=policy(), timing=TIMING)
    assert again.state.phase is Phase.PAUSED
    assert again.effect is None
    assert again.state.baseline is None, "nothing resolved, nothing changed"


def test_the_notification_details_carry_the_outcome_and_the_reason() -> None:
    decision = decide(
        gated(),
        state(Phase.ROLLING_BACK, ending=Phase.ROLLED_BACK, ending_reason="analysis failed",
              ending_cause="analysis",
              target=target("remove_candidate", {BASE: 100}, [{BASE: 100, CAND: 0}])),
        Observation(endpoint=snapshot({BASE: 100})), T0 + 60, policy=policy(), timing=TIMING,
    )
    details = {h.hook: h.details for h in decision.hooks}
    assert details["on_rollback"]["outcome"] == "rolled_back"
    assert details["on_rollback"]["cause"] == "analysis"
    assert "analysis failed" in details["post_rollout"]["reason"]
    assert key({BASE: 100}) == decision.state.live_key
