"""How ``decide`` reads real traffic: paired minutes, warm-up with a 5xx ceiling, windows
revised after they were first seen, a step's own warm-up, and windows as units of evidence.

Table-driven on the fake clock (plain numbers for time): each case hands ``decide`` the
windows the runner's tracker would hold and checks what the arms sum to or what happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest

from rollout.analysis.evidence import log_mean_exp
from rollout.analysis.sequential import FAIL_WEIGHTS
from rollout.analysis.verdict import VerdictRecord
from rollout.engine.decide import Timing, _Turn, _verdict_news, decide
from rollout.engine.model import Decision, Observation, Phase, RolloutState
from rollout.metrics.model import EntityWindow, Histogram
from tests.unit.test_engine_decide import (
    BASE,
    CAND,
    T0,
    live,
    plan_of,
    policy,
    progressing,
)

TIMING = Timing(look_interval=60, update_poll=5, update_deadline=600, max_put_attempts=3)


def window(entity: str, minute: int, requests: float, errors: float = 0.0,
           latency_ms: float = 40.0) -> EntityWindow:
    hist = Histogram((50.0, 100.0, 250.0, float("inf")), (requests, 0.0, 0.0, 0.0))
    if latency_ms > 100.0:
        hist = Histogram((50.0, 100.0, 250.0, float("inf")), (0.0, 0.0, requests, 0.0))
    return EntityWindow(entity, int((T0 + 60 * minute) * 1000), requests=requests,
                        errors_5xx=errors, latency=hist)


def both(minute: int, cand: tuple[float, float] = (100.0, 0.0),
         base: tuple[float, float] = (900.0, 1.0),
         cand_latency_ms: float = 40.0) -> tuple[EntityWindow, EntityWindow]:
    return window(CAND, minute, *cand, latency_ms=cand_latency_ms), window(BASE, minute, *base)


def cold(minute: int, cand: tuple[float, float], base: tuple[float, float]
         ) -> tuple[EntityWindow, EntityWindow]:
    """A minute whose candidate latency is a cold start's (every request beyond the
    baseline's median bucket): the warm-up runs its length."""
    return both(minute, cand, base, cand_latency_ms=200.0)


def look(state: RolloutState, windows: tuple[EntityWindow, ...], now: float,
         **options: Any) -> Decision:
    return decide(options.pop("plan", plan_of()), state, Observation(endpoint=live(10),
                  windows=windows), now, policy=options.pop("policy", policy()),
                  timing=TIMING)


@dataclass(frozen=True)
class SumCase:
    name: str
    windows: tuple[EntityWindow, ...]
    candidate_requests: float
    baseline_requests: float
    served_requests: float
    unpaired: int = 0


# Default policy: three windows of warm-up after the split change at T0 (minutes 0, 1, 2).
SUM_CASES = [
    SumCase("warm-up windows are served, not scored",
            (*both(0), *both(1), *both(2)), 0.0, 0.0, 300.0),
    SumCase("after the warm-up both arms are summed",
            (*both(0), *both(1), *both(2), *both(3), *both(4)), 200.0, 1800.0, 500.0),
    SumCase("a minute the baseline has not delivered waits",
            (*both(3), window(CAND, 4, 100.0)), 100.0, 900.0, 200.0, unpaired=1),
    SumCase("a minute the candidate has not delivered waits",
            (*both(3), window(BASE, 4, 900.0)), 100.0, 900.0, 100.0, unpaired=1),
    SumCase("windows from before the split are never summed",
            (window(CAND, -1, 100.0), window(BASE, -1, 900.0), *both(3)),
            100.0, 900.0, 100.0),
]


@pytest.mark.parametrize("case", SUM_CASES, ids=[c.name for c in SUM_CASES])
def test_arms_are_summed_over_paired_minutes_after_the_warm_up(case: SumCase) -> None:
    decision = look(progressing(), case.windows, T0 + 300)
    state = decision.state
    assert state.candidate.requests == case.candidate_requests
    assert state.control.requests == case.baseline_requests
    assert state.served.requests == case.served_requests
    assert state.last_verdict is not None
    assert state.last_verdict.unpaired_windows == case.unpaired
    assert state.last_verdict.warmup is not None
    assert state.last_verdict.warmup.seconds == 180.0


def test_a_late_partner_is_counted_when_it_arrives() -> None:
    early = look(progressing(), (*both(3), window(CAND, 4, 100.0)), T0 + 300)
    assert early.state.control.requests == 900.0
    later = look(early.state, (*both(3), *both(4)), T0 + 330)
    assert (later.state.candidate.requests, later.state.control.requests) == (200.0, 1800.0)
    assert early.state.last_verdict is not None
    assert later.state.last_verdict is not None
    assert later.state.last_verdict.at == T0 + 330, "the completed pair is judged"
    # The same outcome again is not logged; a change of outcome would be.
    same = later.state.last_verdict.outcome == early.state.last_verdict.outcome
    assert [e.kind for e in later.events] == ([] if same else ["verdict"])


def test_a_revised_window_counts_in_its_final_version() -> None:
    partial = (window(CAND, 3, 40.0), window(BASE, 3, 300.0))
    first = look(progressing(), partial, T0 + 240)
    assert first.state.candidate.requests == 40.0
    revised = look(first.state, both(3), T0 + 270)
    assert (revised.state.candidate.requests, revised.state.control.requests) == (100.0, 900.0)
    again = look(revised.state, both(3), T0 + 300)
    assert not again.events, "the same windows again are not news"


def test_a_step_warmup_overrides_the_policy() -> None:
    plan = plan_of(steps=[{"weight": 10, "bake": "10m", "warmup": "1m"},
                          {"weight": 50, "bake": "10m"}])
    decision = look(progressing(), (*both(0), *both(1)), T0 + 120, plan=plan)
    assert decision.state.candidate.requests == 100.0  # minute 1 only
    assert decision.state.last_verdict is not None
    assert decision.state.last_verdict.warmup is not None
    assert decision.state.last_verdict.warmup.seconds == 60.0


def test_the_warmup_follows_the_window_length_the_windows_show() -> None:
    # 10 s windows with the engine configured for 60 s: three windows are 30 s.
    short = tuple(
        EntityWindow(name, int((T0 + 10 * k) * 1000), requests=n)
        for k in range(6) for name, n in ((CAND, 10.0), (BASE, 90.0))
    )
    decision = look(progressing(), short, T0 + 60)
    assert decision.state.candidate.requests == 30.0  # windows at 30, 40, 50 s
    assert decision.state.last_verdict is not None
    assert decision.state.last_verdict.warmup is not None
    assert decision.state.last_verdict.warmup.seconds == 30.0


def test_a_gross_failure_during_the_warm_up_rolls_back_through_the_ceiling() -> None:
    # 60 % 5xx from the first minute, cold: nothing is scored yet, the ceiling still judges.
    broken = (*cold(0, (200.0, 120.0), (900.0, 1.0)), *cold(1, (200.0, 120.0), (900.0, 1.0)))
    decision = look(progressing(), broken, T0 + 120)
    assert decision.state.phase is Phase.ROLLING_BACK
    assert "error_rate ceiling 20%" in (decision.state.ending_reason or "")
    assert decision.state.candidate.requests == 0.0, "still in the warm-up"


def test_one_bad_warm_up_minute_is_not_a_gross_failure() -> None:
    one = (*both(0, cand=(200.0, 120.0)), *both(1))
    decision = look(progressing(), one, T0 + 120)
    assert decision.state.phase is Phase.PROGRESSING


def test_a_cold_start_inside_the_warm_up_is_not_judged() -> None:
    # Three minutes at 3x latency and +0.5 points of 5xx, then healthy: never a rollback.
    cold = tuple(
        w for minute in range(3) for w in (
            window(CAND, minute, 1000.0, 6.0, latency_ms=200.0), window(BASE, minute, 9000.0, 9.0)
        )
    )
    state = progressing()
    windows: tuple[EntityWindow, ...] = cold
    for minute in range(3, 10):
        windows += both(minute, cand=(1000.0, 1.0), base=(9000.0, 9.0))
        state = look(state, windows, T0 + 60 * (minute + 1)).state
        assert state.phase is Phase.PROGRESSING


def test_each_window_is_one_unit_of_evidence_however_they_arrive() -> None:
    # The same six windows, one per look or all at once, give the same evidence.
    windows = tuple(w for minute in range(6) for w in both(minute, cand=(600.0, 12.0),
                                                          base=(5400.0, 54.0)))
    at_once = look(progressing(), windows, T0 + 360)
    one_by_one = progressing()
    for count in range(1, 7):
        one_by_one = look(one_by_one, windows[: 2 * count], T0 + 60 * count).state
    assert at_once.state.phase is one_by_one.phase is Phase.PROGRESSING
    fail_at_once = at_once.state.judge_state["checks"][0]["fail"]
    fail_one_by_one = one_by_one.judge_state["checks"][0]["fail"]
    assert fail_at_once == pytest.approx(fail_one_by_one)
    assert max(fail_at_once) > 1.0, "a 2x candidate: evidence accrued from the first window"


def test_no_single_window_rolls_back_however_bad_below_the_ceiling() -> None:
    bad = both(3, cand=(600.0, 60.0), base=(5400.0, 5.0))  # 10 % against 0.1 %
    first = look(progressing(), bad, T0 + 240)
    assert first.state.phase is Phase.PROGRESSING
    second = look(first.state, (*bad, *both(4, cand=(600.0, 60.0), base=(5400.0, 5.0))),
                  T0 + 300)
    assert second.state.phase is Phase.PROGRESSING
    third = look(second.state, (*bad, *both(4, cand=(600.0, 60.0), base=(5400.0, 5.0)),
                                *both(5, cand=(600.0, 60.0), base=(5400.0, 5.0))), T0 + 360)
    assert third.state.phase is Phase.ROLLING_BACK


def test_a_new_split_starts_its_sums_and_warm_up_afresh() -> None:
    done = look(progressing(), (*both(3), *both(4)), T0 + 300).state
    moved = done.model_copy(update={
        "split_applied_at": T0 + 600, "step_started_at": T0 + 600, "step": 1,
        "candidate_weight": 50, "judged_windows": 0, "last_verdict": None,
    })
    after = look(moved, (*both(10), *both(11)), T0 + 720)
    assert after.state.candidate.requests == 0.0  # minutes 10 and 11 are the new warm-up
    assert after.state.served.requests == 200.0


@pytest.mark.parametrize(
    ("name", "candidate_errors", "gains"),
    [
        # 5x the baseline's 1 %: broken, not cold; the warm-up's evidence counts.
        ("a gross regression", 150.0, True),
        # +0.5 points (timeouts on cold replicas) is within what the warm-up allows.
        ("a cold start", 45.0, False),
    ],
)
def test_the_warm_up_is_judged_for_gross_regressions_only(
    name: str, candidate_errors: float, gains: bool
) -> None:
    windows = tuple(w for minute in range(3) for w in cold(
        minute, (3000.0, candidate_errors), (57000.0, 570.0)))
    decision = look(progressing(weight=5), windows, T0 + 180)
    assert decision.state.candidate.requests == 0.0, "all three windows are the warm-up"
    fail = decision.state.judge_state["checks"][0]["fail"]
    assert (max(fail) > 1.0) is gains, (name, fail)
    assert decision.state.phase is Phase.PROGRESSING


def test_the_first_warm_up_window_counts_against_a_gross_regression() -> None:
    # The split's first window has no baseline before it: its own baseline sets the null.
    first = cold(0, (3000.0, 150.0), (57000.0, 570.0))
    decision = look(progressing(weight=5), first, T0 + 60)
    assert max(decision.state.judge_state["checks"][0]["fail"]) > 0.5


@pytest.mark.parametrize("latency_ms", [40.0, 200.0], ids=["warm", "cold-looking"])
def test_a_5x_regression_at_1000_per_second_is_rolled_back_within_four_windows(
    latency_ms: float,
) -> None:
    # 5 % of 1000 req/s: 3000 requests a minute per window, 5 % 5xx against the baseline's 1 %.
    # Warm, the warm-up ends at the first window; cold-looking, it runs its three windows and
    # its gross-regression test carries the evidence.
    state = progressing(weight=5)
    windows: tuple[EntityWindow, ...] = ()
    phases = []
    for minute in range(4):
        windows += both(minute, cand=(3000.0, 150.0), base=(57000.0, 570.0),
                        cand_latency_ms=latency_ms)
        state = look(state, windows, T0 + 60 * (minute + 1)).state
        phases.append(state.phase)
    assert phases[:2] == [Phase.PROGRESSING] * 2, "no window decides alone, nor two"
    assert Phase.ROLLING_BACK in phases


def test_the_warm_up_judges_nothing_where_the_cold_allowance_dwarfs_the_tolerance() -> None:
    # A 0.1 % baseline: +1 point of cold timeouts is 11x, far beyond the 2x tolerance. A
    # candidate at 5x is inside that null; scoring it would only lower the fail side.
    windows = tuple(w for minute in range(3) for w in cold(
        minute, (3000.0, 15.0), (57000.0, 57.0)))
    decision = look(progressing(weight=5), windows, T0 + 180)
    assert decision.state.judge_state["checks"][0]["fail"] == [0.0, 0.0, 0.0, 0.0]


@dataclass(frozen=True)
class WarmCase:
    name: str
    latencies: tuple[float, ...]  # the candidate's latency per warm-up minute (ms)
    scored_from_minute: int  # the first minute scored
    plan_steps: tuple[dict[str, Any], ...] | None = None
    delivered: int = 3  # minutes the baseline has delivered


WARM_CASES = [
    WarmCase("warm from the first window: no warm-up", (40.0, 40.0, 40.0), 0),
    WarmCase("a cold first window, warm from the second", (200.0, 40.0, 40.0), 1),
    WarmCase("cold throughout: the policy's three windows", (200.0, 200.0, 200.0), 3),
    WarmCase("a minute waiting for the baseline's stops the search", (200.0, 40.0, 40.0), 3,
             delivered=1),
    WarmCase("a plan step's own warm-up runs its length", (40.0, 40.0, 40.0), 2,
             plan_steps=({"weight": 10, "bake": "10m", "warmup": "2m"},
                         {"weight": 50, "bake": "10m"})),
]


@pytest.mark.parametrize("case", WARM_CASES, ids=[c.name for c in WARM_CASES])
def test_the_policy_warm_up_ends_at_the_first_warm_window(case: WarmCase) -> None:
    windows: list[EntityWindow] = []
    for minute, latency in enumerate(case.latencies):
        windows.append(window(CAND, minute, 1000.0, 1.0, latency_ms=latency))
        if minute < case.delivered:
            windows.append(window(BASE, minute, 9000.0, 9.0))
    options: dict[str, Any] = {}
    if case.plan_steps is not None:
        options["plan"] = plan_of(steps=list(case.plan_steps))
    decision = look(progressing(), tuple(windows), T0 + 190, **options)
    verdict = decision.state.last_verdict
    assert verdict is not None
    assert verdict.warmup is not None
    assert verdict.warmup.seconds == 60.0 * case.scored_from_minute
    assert verdict.warmup.ended_early is (
        case.scored_from_minute < 3 and case.plan_steps is None)
    scored = [m for m in range(min(3, case.delivered)) if m >= case.scored_from_minute]
    assert decision.state.candidate.requests == 1000.0 * len(scored)
    if verdict.warmup.ended_early:
        assert "latency matched the baseline's" in verdict.reason
def test_only_a_changed_verdict_is_logged() -> None:
    first = look(progressing(), both(3), T0 + 240)
    assert [e.kind for e in first.events] == ["verdict"], "the split's first verdict"
    assert first.state.last_verdict is not None
    outcome = first.state.last_verdict.outcome
    state, logged = first.state, 0
    for minute in range(4, 8):
        decision = look(state, tuple(w for m in range(3, minute + 1) for w in both(m)),
                        T0 + 60 * minute + 30)
        assert decision.state.last_verdict is not None
        assert decision.state.last_verdict.at == T0 + 60 * minute + 30
        assert state.last_verdict is not None
        changed = decision.state.last_verdict.outcome != state.last_verdict.outcome
        assert [e.kind for e in decision.events if e.kind == "verdict"] == (
            ["verdict"] if changed else []
        )
        logged += changed
        state = decision.state
    assert outcome == "inconclusive"
    assert logged == 0, "healthy minutes keep one outcome: nothing more in the log"


def _minutes(first: int, last: int) -> tuple[EntityWindow, ...]:
    # Varying numbers, an unpaired candidate minute and a warm-up at the start.
    out: list[EntityWindow] = []
    for minute in range(first, last + 1):
        cand = window(CAND, minute, 100.0 + minute, float(minute % 3 == 0), 40.0)
        if minute == 7:
            out.append(cand)  # the baseline never reports minute 7
            continue
        out.extend((cand, window(BASE, minute, 900.0 + 2 * minute, 1.0)))
    return tuple(out)


def test_folding_old_windows_changes_nothing_the_judge_sees() -> None:
    # Once per look: one run is handed every window of the split; the other only the windows
    # since its fold, and told to fold what is older than 5 minutes (a short dedup horizon).
    # The sums, the number of windows judged and the verdicts must be the same.
    plan = plan_of(steps=[{"weight": 10, "bake": "1h"}, {"weight": 50, "bake": "10m"}])
    whole = folded = progressing()
    folds = 0
    for minute in range(1, 30):
        now = T0 + 60 * minute + 30
        windows = _minutes(0, minute - 1)
        a = look(whole, windows, now, plan=plan)
        assert a.state.phase is Phase.PROGRESSING
        assert a.effect is None
        since = folded.folded.before_ms if folded.folded is not None else 0
        kept = tuple(w for w in windows if (w.start_ms or 0) >= since)
        b = decide(plan, folded, Observation(endpoint=live(10), windows=kept,
                   fold_before_ms=int((now - 300) * 1000)), now, policy=policy(), timing=TIMING)
        for name in ("candidate", "control", "served", "judged_windows"):
            assert getattr(a.state, name) == getattr(b.state, name), (minute, name)
        assert a.state.last_verdict is not None
        assert b.state.last_verdict is not None
        assert a.state.last_verdict.outcome == b.state.last_verdict.outcome, minute
        assert a.state.last_verdict.checks == b.state.last_verdict.checks, minute
        assert a.state.judge_state == b.state.judge_state, minute
        folds += b.state.folded != folded.folded
        whole, folded = a.state, b.state
        assert len(kept) <= 2 * 7, "only the last few minutes are handed in"
    assert folds >= 20, "the fold moved on at (almost) every look"
    assert folded.folded is not None
    assert folded.folded.candidate_windows >= 20


def test_a_fold_of_another_split_is_ignored() -> None:
    first = decide(plan_of(), progressing(), Observation(endpoint=live(10),
                   windows=_minutes(0, 9), fold_before_ms=int((T0 + 300) * 1000)),
                   T0 + 630, policy=policy(), timing=TIMING)
    assert first.state.folded is not None
    moved = first.state.model_copy(update={"split_applied_at": T0 + 60})
    again = look(moved, _minutes(1, 9), T0 + 630)
    # Summed from the windows handed in, from the new split on: nothing from the old fold.
    assert again.state.served.requests == sum(100.0 + m for m in range(1, 10))


@pytest.mark.parametrize(
    ("logged", "logged_at", "verdict", "news"),
    [
        (None, None, {"outcome": "inconclusive", "may_advance": False}, True),  # first
        ("inconclusive/False", T0, {"outcome": "inconclusive", "may_advance": False}, False),
        # The verdict that lets the step go is always logged: the reason the rollout moved on.
        ("inconclusive/False", T0, {"outcome": "pass", "may_advance": True}, True),
        ("inconclusive/False", T0, {"outcome": "pass", "may_advance": False}, False),  # too soon
        ("inconclusive/False", T0 - 900, {"outcome": "pass", "may_advance": False}, True),
        ("pass/False", T0 - 60, {"outcome": "inconclusive", "may_advance": False}, False),
        ("pass/True", T0, {"outcome": "fail", "may_advance": False}, True),  # a fail, always
    ],
)
def test_a_changed_verdict_is_logged_at_most_once_per_interval(
    logged: str | None, logged_at: float | None, verdict: dict[str, Any], news: bool
) -> None:
    state = progressing().model_copy(
        update={"verdict_logged": logged, "verdict_logged_at": logged_at}
    )
    turn = _Turn(plan_of(), policy(), Observation(), T0, TIMING, state)
    assert _verdict_news(turn, VerdictRecord.model_validate(verdict)) is news


def test_a_late_baseline_window_is_a_unit_of_its_own() -> None:
    # The baseline's minute 1 arrives a look late, with minute 2: the judge still sees one
    # unit per minute (the late pair, then minute 2), so the evidence is what it is when
    # every window is on time. Merged, two minutes would get one minute's cap and dispersion.
    minutes = [both(minute, cand=(3000.0, 150.0), base=(57000.0, 570.0)) for minute in range(4)]
    on_time = progressing(weight=5)
    for count in range(1, 4):
        on_time = look(on_time, tuple(w for pair in minutes[:count] for w in pair),
                       T0 + 60 * count).state
    late = progressing(weight=5)
    late = look(late, minutes[0], T0 + 60).state
    late = look(late, (*minutes[0], minutes[1][0]), T0 + 120).state
    assert late.control.requests == 57000.0, "minute 1 waits for its baseline"
    late = look(late, tuple(w for pair in minutes[:3] for w in pair), T0 + 180).state
    assert (late.candidate.requests, late.control.requests) == (9000.0, 171000.0)
    assert late.judge_state["checks"][0]["fail"] == pytest.approx(
        on_time.judge_state["checks"][0]["fail"])
    assert late.phase is on_time.phase


def test_a_gross_regression_in_the_first_warm_up_is_judged_like_in_any_other() -> None:
    # 5x the baseline's 1 % on a cold-looking candidate, in the rollout's first warm-up: the
    # warm-up's alternatives lie beyond its null by powers of the tolerance, as they do in a
    # later split's warm-up, so the three warm-up windows bring the fail side to within a
    # tenth of its boundary and the first scored window rolls it back.
    state = progressing(weight=5)
    windows: tuple[EntityWindow, ...] = ()
    for minute in range(3):
        windows += cold(minute, (3000.0, 150.0), (57000.0, 570.0))
        state = look(state, windows, T0 + 60 * (minute + 1)).state
    assert state.phase is Phase.PROGRESSING
    assert state.candidate.requests == 0.0, "all three windows are the warm-up"
    boundary = math.log(1.0 / policy().alpha_per_check)
    fail = state.judge_state["checks"][0]["fail"]
    assert log_mean_exp(fail, FAIL_WEIGHTS) >= 0.9 * boundary, fail
    windows += cold(3, (3000.0, 150.0), (57000.0, 570.0))
    assert look(state, windows, T0 + 240).state.phase is Phase.ROLLING_BACK
