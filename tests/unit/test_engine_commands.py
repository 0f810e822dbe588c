"""``COMMANDS_BY_PHASE`` is what ``decide`` does: a listed command changes the decision (or,
before the first step, waits queued for it), an unlisted one is recorded as ignored and changes
nothing else. The API refuses commands by this table."""

from __future__ import annotations

import pytest

from rollout.engine.decide import Timing, decide
from rollout.engine.model import (
    COMMANDS_BY_PHASE,
    Command,
    CommandKind,
    Decision,
    Observation,
    Phase,
    RolloutState,
)
from rollout.plan import validate_plan
from rollout.policies import PolicyLibrary
from tests.unit.test_engine_decide import CANARY, T0, live, progressing, state

KINDS: tuple[CommandKind, ...] = ("pause", "resume", "promote", "promote_full", "abort")
PLAN = validate_plan(CANARY)
POLICY = PolicyLibrary().get("default")
TIMING = Timing(look_interval=60, update_poll=5, update_deadline=600, max_put_attempts=3)

# A rollout in each phase with no config update in flight, and what the endpoint shows.
SITUATIONS: dict[Phase, tuple[RolloutState, Observation]] = {
    Phase.PENDING: (state(Phase.PENDING), Observation()),
    Phase.PREPARING: (state(Phase.PREPARING, split_applied_at=T0), Observation(endpoint=live(0))),
    Phase.PROGRESSING: (progressing(), Observation(endpoint=live(10))),
    Phase.PAUSED: (
        state(Phase.PAUSED, paused_from=Phase.PROGRESSING, candidate_weight=10),
        Observation(endpoint=live(10)),
    ),
    Phase.PROMOTING: (
        state(Phase.PROMOTING, candidate_weight=100),
        Observation(endpoint=live(100)),
    ),
    Phase.ROLLING_BACK: (
        state(Phase.ROLLING_BACK, ending=Phase.ROLLED_BACK, ending_reason="analysis failed"),
        Observation(endpoint=live(0)),
    ),
    Phase.SUCCEEDED: (state(Phase.SUCCEEDED), Observation()),
    Phase.ROLLED_BACK: (state(Phase.ROLLED_BACK), Observation()),
    Phase.ABORTED: (state(Phase.ABORTED), Observation()),
    Phase.FAILED: (state(Phase.FAILED), Observation()),
}


def _decide(rollout: RolloutState, observation: Observation) -> Decision:
    return decide(PLAN, rollout, observation, T0 + 60, policy=POLICY, timing=TIMING)


def test_every_phase_has_an_entry() -> None:
    assert set(COMMANDS_BY_PHASE) == set(Phase)
    assert set(SITUATIONS) == set(Phase)
    assert all(not COMMANDS_BY_PHASE[phase] for phase in Phase if phase.terminal)


@pytest.mark.parametrize("phase", list(Phase), ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_the_table_says_what_decide_does(phase: Phase, kind: CommandKind) -> None:
    rollout, observation = SITUATIONS[phase]
    without = _decide(rollout, observation)
    command = Command(1, kind, {})
    observed = Observation(**{**observation.__dict__, "commands": (command,)})
    with_command = _decide(rollout, observed)
    ignored = [e for e in with_command.events if e.kind == "command_ignored"]
    if kind in COMMANDS_BY_PHASE[phase]:
        assert not ignored
        if phase in (Phase.PENDING, Phase.PREPARING) and kind != "abort":
            # Waits, queued, for the first step (a canary has no warm-up to pause).
            assert with_command.consumed_commands == ()
            assert with_command.state == without.state
        else:
            assert with_command.consumed_commands == (1,)
            assert with_command.state != without.state
    else:
        assert with_command.state.model_dump(exclude={"alerts_raised"}) == without.state.model_dump(
            exclude={"alerts_raised"}
        )
        assert with_command.effect == without.effect
        if with_command.consumed_commands:
            assert ignored
            assert kind in ignored[0].reason


def test_a_pause_queued_before_the_first_step_applies_to_it() -> None:
    deployed = state(Phase.PREPARING, split_applied_at=T0)
    flight = Observation(endpoint=live(0), commands=(Command(4, "pause", {}),))
    assert _decide(deployed, flight).consumed_commands == ()
    running = _decide(progressing(), Observation(endpoint=live(10), commands=flight.commands))
    assert running.state.phase is Phase.PAUSED
    assert running.consumed_commands == (4,)


def test_a_blue_green_pause_during_the_warm_up_holds_the_candidate_at_0() -> None:
    fields = {**CANARY, "strategy": "blue_green", "bake": "10m", "warmup": "10m"}
    plan = validate_plan({k: v for k, v in fields.items() if k != "steps"})
    warming = state(Phase.PREPARING, split_applied_at=T0, preflight_passed=True)
    observed = Observation(endpoint=live(0), commands=(Command(5, "pause", {"reason": "look"}),))
    decision = decide(plan, warming, observed, T0 + 60, policy=POLICY, timing=TIMING)
    assert decision.state.phase is Phase.PAUSED
    assert decision.state.paused_from is Phase.PREPARING
    assert decision.state.pause_reason == "look"
    assert decision.effect is None
    assert decision.consumed_commands == (5,)
