"""The shipped plans are valid and alert nobody who does not exist: a plan copied from
examples/ or deploy/demo/ must not fill a new user's log with delivery failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rollout.plan import validate_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("deploy/demo/*.yaml")])


def test_there_are_plans() -> None:
    assert len(PLANS) >= 5


@pytest.mark.parametrize("path", PLANS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_shipped_plan_is_valid_and_sends_no_alerts_of_its_own(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    plan = validate_plan(data)
    assert plan.endpoint
    # Alert channels come from ROLLOUT_ALERTS_CHANNELS, which the user sets to a receiver
    # they run; a plan's own channel is shown commented out.
    assert not data.get("alerts"), f"{path.name} alerts {data.get('alerts')}"
