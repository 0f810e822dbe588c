"""The rollout's stored state as typed models: states already in a database load, and are
written back as they were read, key for key and number for number.

``tests/fixtures/stored_states.json`` holds states written by the code that kept the verdict and
the tracker as plain dicts (see the fixtures' README): a runner's states over a sandbox
rollout, two engine states with query checks, and states with counter and untimed trackers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rollout.analysis.verdict import CheckRecord, Outcome, VerdictRecord, Warmup
from rollout.engine.model import RolloutState
from rollout.metrics.windows import MetricsStateError, TrackerState, WindowTracker
from tests.unit.test_analysis_queries import SPEC, play, reading

STORED: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "stored_states.json").read_text(
        encoding="utf-8"
    )
)


def stored_text(value: object) -> str:
    """JSON as the store writes it (``rollout.store._sql``)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@pytest.mark.parametrize("name", sorted(STORED))
def test_a_stored_state_loads_and_is_written_back_as_it_was(name: str) -> None:
    data = STORED[name]
    state = RolloutState.model_validate(data)
    again = state.model_dump(mode="json")
    assert again == data
    assert stored_text(again) == stored_text(data), "same keys, same order, same numbers"
    assert RolloutState.model_validate_json(state.model_dump_json()) == state


@pytest.mark.parametrize("name", sorted(STORED))
def test_the_verdict_and_the_tracker_read_as_attributes(name: str) -> None:
    data = STORED[name]
    state = RolloutState.model_validate(data)
    verdict, stored_verdict = state.last_verdict, data["last_verdict"]
    if stored_verdict is None:
        assert verdict is None
    else:
        assert isinstance(verdict, VerdictRecord)
        assert verdict.outcome == Outcome(stored_verdict["outcome"])
        assert verdict.summary == stored_verdict["summary"]
        assert all(isinstance(c, CheckRecord) for c in verdict.checks)
        assert [c.check for c in verdict.checks] == [c["check"] for c in stored_verdict["checks"]]
        assert verdict.data() == stored_verdict
        if "warmup" in stored_verdict:
            assert isinstance(verdict.warmup, Warmup)
            assert verdict.warmup.scored_from == stored_verdict["warmup"]["scored_from"]
        else:
            assert verdict.warmup is None
    if data["tracker"] == {}:
        assert state.tracker == {}
        return
    assert isinstance(state.tracker, TrackerState)
    assert state.tracker.kind == data["tracker"]["kind"]
    tracker = WindowTracker.from_state(state.tracker)
    kept_inside = bool(data["tracker"]["windows"])
    assert tracker.to_state(windows=kept_inside) == state.tracker, "the tracker goes on as it was"


def test_the_engine_writes_what_the_dict_based_engine_wrote() -> None:
    """The same looks as when the fixture was written give the same state, to the byte."""
    down = reading(SPEC, None, None, outage="prometheus unreachable: ConnectError")
    outage = play([down] * 3)[0]
    failed = play([reading(SPEC, 3.0, 1.0)] * 2)[0]
    assert stored_text(outage.model_dump(mode="json")) == stored_text(STORED["queries_outage"])
    assert stored_text(failed.model_dump(mode="json")) == stored_text(STORED["queries_failed"])
    assert failed.last_verdict is not None
    assert failed.last_verdict.outcome is Outcome.FAIL


@pytest.mark.parametrize("dropped", [
    ("summary",), ("unpaired_windows", "summary"), ("warmup", "unpaired_windows", "summary"),
    ("at", "warmup", "unpaired_windows", "summary"),
])
def test_a_verdict_stored_before_the_engine_added_a_key_is_written_back_without_it(
    dropped: tuple[str, ...],
) -> None:
    stored = {k: v for k, v in STORED["baking"]["last_verdict"].items() if k not in dropped}
    verdict = VerdictRecord.model_validate({**stored, "extra_key": {"kept": True}})
    assert all(getattr(verdict, name) is None for name in dropped)
    assert verdict.data() == {**stored, "extra_key": {"kept": True}}
    assert list(verdict.data()) == [*stored, "extra_key"]


def test_a_verdict_written_by_hand_reads_with_defaults() -> None:
    verdict = VerdictRecord.model_validate(
        {"outcome": "fail", "reason": "error_rate +2.1%", "look": 4,
         "checks": [{"check": "error_rate vs baseline", "outcome": "fail"}]})
    assert (verdict.outcome, verdict.may_advance, verdict.look) == (Outcome.FAIL, False, 4)
    assert verdict.checks[0].outcome is Outcome.FAIL
    assert (verdict.warmup, verdict.summary, verdict.at) == (None, None, None)
    later = verdict.model_copy(update={"warmup": Warmup(seconds=60.0, scored_from=120.0)})
    assert later.data()["warmup"] == {
        "seconds": 60.0, "scored_from": 120.0, "in_warmup": False, "ended_early": False,
    }


def test_a_state_with_no_tracker_yet_keeps_its_empty_object() -> None:
    state = RolloutState(started_at=1.0)
    assert state.tracker == {}
    assert state.model_dump(mode="json")["tracker"] == {}
    assert json.loads(state.model_dump_json())["tracker"] == {}
    assert RolloutState.model_validate({"started_at": 1.0, "tracker": {}}).tracker == {}


@pytest.mark.parametrize("tracker", [
    {"version": 99},
    {**STORED["counter_tracker"]["tracker"], "kind": "histogram"},
], ids=["another-version", "unknown-kind"])
def test_a_tracker_this_version_cannot_read_is_kept_as_stored(tracker: dict[str, Any]) -> None:
    """The state still loads (the API shows the rollout) and writes the tracker back as it
    was; rebuilding the tracker says why it cannot be."""
    data = {**STORED["counter_tracker"], "tracker": tracker}
    state = RolloutState.model_validate(data)
    assert state.tracker == tracker
    assert stored_text(state.model_dump(mode="json")) == stored_text(data)
    with pytest.raises(MetricsStateError):
        WindowTracker.from_state(state.tracker)
