"""The status page says what happens next, shows the stage actually live and an A/B as A/B.

Headless Chromium against the API under uvicorn on loopback, over a real SQLite store holding
rollouts in chosen states, on the sandbox's fake clock (so every countdown is exact): a canary
mid-bake, a blue/green warming up at 0 % (no stage live yet, the 100 % stage only next), and
an A/B whose report is written. The test reads the DOM and compares it with the API's ``next``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from rollout.engine.model import RolloutState
from rollout.engine.runner import new_rollout
from rollout.plan import resolve_policy, validate_plan
from rollout.sandbox.server import SandboxServer
from rollout.store.base import Store
from tests.e2e.test_status_page import browser, require_chromium, wait_for
from tests.integration.test_cli_client import AB_REPORT, ApiServer, _logs_to_stderr

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

__all__ = ["_logs_to_stderr", "browser"]  # fixtures used by name

CANDIDATE = {"name": "ads-4", "entity_name": "main.ml.ads_model", "entity_version": "4"}
CANARY = {"endpoint": "canary-ep", "candidate": CANDIDATE, "strategy": "canary",
          "steps": [{"weight": 5, "bake": "10m"}, {"weight": 25, "bake": "10m"}]}
BLUE_GREEN = {"endpoint": "bg-ep", "candidate": CANDIDATE, "strategy": "blue_green",
              "bake": "10m", "warmup": "5m"}
AB = {"endpoint": "ab-ep", "candidate": CANDIDATE, "strategy": "ab", "split": 50,
      "duration": "30m"}


VERDICT = {
    "outcome": "inconclusive", "may_advance": False, "look": 3,
    "summary": "not decided yet, 0 of 1 checks passed; waiting on candidate 5xx rate 0.5 % vs "
               "baseline 0.4 % (limit 2x baseline) -> hold for more data",
    "reason": "inconclusive: error_rate vs baseline: not enough evidence yet",
    "checks": [{"check": "error_rate vs baseline: max_ratio 2", "metric": "error_rate",
                "outcome": "inconclusive", "candidate_value": 0.005, "baseline_value": 0.004,
                "candidate_n": 1000.0, "baseline_n": 9000.0,
                "detail": {"e_values": "e-values: fail e^0.10 (needs e^7.60), pass e^1.00 "
                                       "(needs e^3.00)"}}],
}


def stored(store: Store, plan_data: dict[str, Any], phase: str, now: float,
           **fields: Any) -> str:
    plan = validate_plan(plan_data)
    record, event = new_rollout(plan, resolve_policy(plan), now - 600)
    state = RolloutState.model_validate(
        {**record.state, "baseline": "ads-3", **fields, "phase": phase})
    record = dataclasses.replace(record, phase=phase, state=state.model_dump(mode="json"))
    return store.create(record, event, []).id


@pytest.fixture
def api(sandbox: SandboxServer, store: Store) -> Iterator[ApiServer]:
    with ApiServer(sandbox, store) as server:
        yield server


def test_the_page_says_what_happens_next_and_shows_ab_as_ab(
    api: ApiServer, store: Store, sandbox: SandboxServer, browser: WebDriver
) -> None:
    require_chromium()
    now = sandbox.clock.now()
    canary = stored(store, CANARY, "progressing", now, candidate_weight=5,
                    step_started_at=now - 240, split_applied_at=now - 240, last_verdict=VERDICT)
    blue_green = stored(store, BLUE_GREEN, "preparing", now, candidate_weight=0,
                        split_applied_at=now - 60, preflight_passed=True)
    ab = stored(store, AB, "promoting", now, candidate_weight=50, step_started_at=now - 1800,
                report=AB_REPORT)

    browser.get(f"{api.url}/")

    def card_text(rollout_id: str, selector: str) -> str | None:
        found = browser.find_elements(By.CSS_SELECTOR, f"#rollout-{rollout_id} {selector}")
        return found[0].text if found and found[0].text else None

    for rollout_id in (canary, blue_green):
        api_next = httpx.get(f"{api.url}/api/v1/rollouts/{rollout_id}", timeout=10).json()["next"]
        shown = wait_for(browser, lambda rid=rollout_id: card_text(rid, "p.next"),
                         f"the next line of {rollout_id}")
        assert shown == f"Next: {api_next['summary']}"

    # The canary: step 1 of 2 is live and highlighted, with its bake countdown.
    assert "step 1 of 2, candidate at 5 %: bake 6m left" in (card_text(canary, "p.next") or "")
    live = browser.find_elements(By.CSS_SELECTOR, f"#rollout-{canary} ol.steps li[aria-current]")
    assert [li.get_attribute("data-weight") for li in live] == ["5"]
    split = card_text(canary, ".split") or ""
    assert "step 1 of 2, then 25 %" in split

    # The verdict leads with its sentence; the statistics wait behind the details toggle.
    assert card_text(canary, "p.verdict-summary") == VERDICT["summary"]
    toggle = browser.find_element(By.CSS_SELECTOR, f"#rollout-{canary} details.why")
    assert toggle.get_attribute("open") is None
    assert "e^" not in (card_text(canary, "section.verdict") or "")
    toggle.find_element(By.TAG_NAME, "summary").click()
    evidence = wait_for(browser, lambda: card_text(canary, "ul.evidence"), "the e-values")
    assert "e-values: fail e^0.10 (needs e^7.60)" in evidence

    # Blue/green warming up at 0 %: the 100 % stage is next, not live; the countdown is shown.
    assert "warm-up at 0 %: 4m left" in (card_text(blue_green, "p.next") or "")
    assert browser.find_elements(
        By.CSS_SELECTOR, f"#rollout-{blue_green} ol.steps li[aria-current]") == []
    upcoming = browser.find_element(By.CSS_SELECTOR, f"#rollout-{blue_green} ol.steps li")
    assert upcoming.get_attribute("data-weight") == "100"
    assert "next" in (upcoming.get_attribute("class") or "")
    assert "candidate 0 %" in (card_text(blue_green, ".split") or "")

    # The A/B card: objective, winner, both arms and the intervals.
    report = wait_for(browser, lambda: card_text(ab, "section.report"), "the A/B report")
    assert "A/B report: winner candidate" in report
    assert "Objective: latency p99 (ms), lower is better" in report
    rows = {
        row.get_attribute("data-metric"): row.text
        for row in browser.find_elements(By.CSS_SELECTOR,
                                         f"#rollout-{ab} section.report tbody tr")
    }
    assert set(rows) == {"latency_p99_ms", "error_rate"}
    assert "objective" in rows["latency_p99_ms"]
    assert "0.846x [0.8x, 0.95x]" in rows["latency_p99_ms"]
    assert "\u22120.1 points [\u22120.25, +0.04]" in rows["error_rate"]
    assert "Guards: none failed" in report
    # A canary has no A/B section.
    assert card_text(canary, "section.report") is None
