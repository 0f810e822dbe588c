"""Reachability: when failed calls make an outage, and when an answer ends it. Pure."""

from __future__ import annotations

import pytest

from rollout.health import Reachability

T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    ("name", "calls", "transitions"),
    [
        ("answers only", [(200, 0), (404, 10), (429, 20)], [None, None, None]),
        ("failures shorter than the limit", [(503, 0), (None, 60), (200, 119)],
         [None, None, None]),
        ("an outage raises once", [(503, 0), (None, 60), (500, 120), (504, 500)],
         [None, None, "raise", None]),
        ("an answer resolves it", [(None, 0), (None, 130), (200, 140), (200, 150)],
         [None, "raise", "resolve", None]),
        ("an answer between failures restarts the count",
         [(503, 0), (200, 100), (503, 110), (503, 200), (503, 230)],
         [None, None, None, None, "raise"]),
        ("a second outage raises again", [(None, 0), (None, 120), (200, 121), (None, 200),
                                          (None, 320)],
         [None, "raise", "resolve", None, "raise"]),
        ("a 4xx is an answer", [(None, 0), (None, 130), (401, 131)], [None, "raise", "resolve"]),
    ],
)
def test_transitions(
    name: str, calls: list[tuple[int | None, float]], transitions: list[str | None]
) -> None:
    state = Reachability(outage_after=120)
    seen = [state.observe(status, T0 + at) for status, at in calls]
    assert seen == transitions, name


def test_the_state_says_what_failed_and_since_when() -> None:
    state = Reachability(outage_after=120)
    state.observe(503, T0)
    state.observe(None, T0 + 5)
    assert (state.down_since, state.failures) == (T0, 2)
    assert state.last_error == "no answer (connection error or timeout)"
    state.observe(502, T0 + 6)
    assert state.last_error == "HTTP 502"
    state.observe(200, T0 + 7)
    assert (state.down_since, state.failures, state.alerted) == (None, 0, False)
