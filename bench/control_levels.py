"""The blue/green bake against a sampled control: do its error budgets hold?

Where this sits: not shipped; it measures ``rollout.analysis.control``. After a blue/green
switch the candidate is judged against levels set from the warm-up's control sample. Here the
control's true 5xx rate is 1 % and the warm-up saw N requests (N ~ how long the warm-up ran at
the endpoint's traffic). The bake then looks at up to 40 one-minute windows of 300 candidate
requests. Per warm-up size it reports, over seeded runs, with the policy's budgets at 10 %
(false rollback and missed regression, so a few hundred runs can see a breach):

* ``regression passed``: a candidate at 2 % (exactly the ``max_ratio: 2`` tolerance) promoted,
  with the levels the engine uses, and with a level read off the control's point estimate
  (what the engine did before the control's sampling error was carried);
* ``healthy rolled back`` / ``healthy passed``: a candidate at 1 %, rolled back (a false
  rollback), or passed within the 40 windows (the rest stay undecided: the price of a small
  warm-up).

Run: ``python bench/control_levels.py`` (about 20 s on 2 cores; ``--runs`` to change the
number of runs per warm-up size). Standard library and the package only.
"""

from __future__ import annotations

import argparse
import random

from rollout.analysis import Look, Outcome, Policy, judge
from rollout.analysis.control import against_control
from rollout.analysis.judge import JudgeState
from rollout.analysis.spec import CheckSpec
from rollout.metrics.model import ArmTotals, EntityWindow

CONTROL_RATE = 0.01
WINDOW_REQUESTS = 300
WINDOWS = 40
POLICY = Policy.model_validate({
    "name": "bake", "min_requests": 0, "false_rollback_rate": 0.10,
    "missed_regression_rate": 0.10,
    "checks": [{"metric": "error_rate", "compare": "baseline", "max_ratio": 2}],
})


def _binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def _totals(requests: int, errors: int) -> ArmTotals:
    totals = ArmTotals()
    totals.add(EntityWindow(None, 0, requests=float(requests), errors_5xx=float(errors)))
    return totals


def _bake(policy: Policy, control: ArmTotals, rng: random.Random, rate: float) -> Outcome:
    candidate = ArmTotals()
    state: JudgeState | None = None
    for minute in range(1, WINDOWS + 1):
        candidate.add(EntityWindow(None, minute * 60_000, requests=float(WINDOW_REQUESTS),
                                   errors_5xx=float(_binomial(rng, WINDOW_REQUESTS, rate))))
        verdict, state = judge(policy, Look(candidate, control), state)
        if verdict.outcome is not Outcome.INCONCLUSIVE:
            return verdict.outcome
    return Outcome.INCONCLUSIVE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    print(f"control 5xx {CONTROL_RATE:.0%}, budgets 10 %, {args.runs} runs per warm-up size\n")
    print("| warm-up requests | regression passed (engine) | regression passed (point "
          "estimate) | healthy rolled back | healthy passed |")
    print("|---|---|---|---|---|")
    for warm_up in (1_500, 6_000, 60_000):
        rng = random.Random(args.seed)
        counts = dict.fromkeys(("engine", "point", "false_rollback", "healthy_pass"), 0)
        for _ in range(args.runs):
            control = _totals(warm_up, _binomial(rng, warm_up, CONTROL_RATE))
            bounded = against_control(POLICY, control)
            counts["engine"] += _bake(bounded, control, rng, 2 * CONTROL_RATE) is Outcome.PASS
            point = CheckSpec.model_validate(
                {"metric": "error_rate", "max": 2 * control.errors_5xx / control.requests}
            )
            naive = POLICY.model_copy(update={"checks": (point,)})
            counts["point"] += _bake(naive, control, rng, 2 * CONTROL_RATE) is Outcome.PASS
            healthy = _bake(bounded, control, rng, CONTROL_RATE)
            counts["false_rollback"] += healthy is Outcome.FAIL
            counts["healthy_pass"] += healthy is Outcome.PASS
        share = {key: f"{100 * value / args.runs:.1f} %" for key, value in counts.items()}
        print(f"| {warm_up:,} | {share['engine']} | {share['point']} | "
              f"{share['false_rollback']} | {share['healthy_pass']} |")


if __name__ == "__main__":
    main()
