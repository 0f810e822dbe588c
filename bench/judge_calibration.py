"""Judge calibration: simulated rollouts at the judge level, and Wald's SPRT as the yardstick.

Where this sits: not shipped; it justifies the sequential judge's design and the built-in
policies' numbers (``rollout/analysis/sequential.py`` quotes its output). It drives the real
judges (``rollout.analysis.judge``) with simulated per-window counts: for each window and arm,
requests ~ Poisson(rate * 60 s) split binomially by the step's weight, 5xx ~ Binomial, latency
buckets ~ Multinomial over a log-normal (median 100 ms, sigma 0.5, p99 ~ 320 ms). A canary runs
5 % / 25 % / 50 % for 10 / 10 / 20 minutes of 60 s windows, advancing at the end of a bake when
the verdict's ``may_advance`` allows, rolling back on ``fail``, and stopping undecided at a 2 h
deadline. Reported per cell (baseline 5xx rate x traffic x candidate effect):

* rollback %, promote %, undecided % (``none``: rollback is a false rollback; any regression:
  promote is a missed regression);
* blast radius: 5xx served by the candidate until the rollout ended (rolled back, promoted, or
  the deadline);
* minutes to the end, and requests (both arms) to the judge's first pass or fail.

Then Wald's SPRT: the judge alone on a fixed split, looking every ~1 expected event (close to
continuous monitoring), against Wald's approximate expected sample size for the conditional
binomial test of ratio 1 against 2 (and against the true ratio: the oracle) at the same error
rates.

Run: ``python bench/judge_calibration.py`` (about 3 minutes on 2 cores at 300 rollouts per
cell; the numbers quoted in ``rollout/analysis/sequential.py`` come from ``--runs 500``;
``--quick`` is a smoke run). Needs numpy (the ``bench`` extra) besides the package.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import yaml

from rollout.analysis import Look, Outcome, Policy, judge, sequential
from rollout.analysis.judge import JudgeState
from rollout.metrics.model import ArmTotals, EntityWindow, Histogram

ROOT = Path(__file__).resolve().parent.parent
BOUNDS = (5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0,
          750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 10000.0, math.inf)
MEDIAN_MS, SIGMA = 100.0, 0.5
STEPS = ((0.05, 10), (0.25, 10), (0.50, 20))  # (candidate weight, bake in 60 s windows)
DEADLINE = 120  # windows
BASELINE_RATES = (0.001, 0.01, 0.05)
TRAFFIC = (1.0, 10.0, 100.0, 1000.0)  # requests per second, whole endpoint
EFFECTS: dict[str, tuple[float, float]] = {  # name: (5xx multiplier, latency multiplier)
    "none": (1.0, 1.0),
    "err x1.5": (1.5, 1.0),
    "err x2": (2.0, 1.0),
    "err x5": (5.0, 1.0),
    "p99 x1.3": (1.0, 1.3),
    "p99 x2": (1.0, 2.0),
}
CLIENT_ERROR_RATE = 0.005  # 4xx in both arms, so the default policy's 4xx check has work
SHIPPED_FAIL_MIXTURE = (sequential.FAIL_EXPONENTS, sequential.FAIL_WEIGHTS)


def load_policy(name: str) -> Policy:
    data = yaml.safe_load((ROOT / "policies" / f"{name}.yaml").read_text())
    return Policy.model_validate(data)


def bucket_probs(scale: float) -> np.ndarray:
    dist = NormalDist(math.log(MEDIAN_MS * scale), SIGMA)
    cdf = [1.0 if math.isinf(b) else dist.cdf(math.log(b)) for b in BOUNDS]
    return np.diff(np.concatenate([[0.0], cdf]))


# --------------------------------------------------------------------------- a naive judge


@dataclass
class NaiveState:
    """A Kayenta-like judge for contrast: a fixed-level z-test re-run on the growing window."""

    split: str = ""


def naive_judge(candidate: ArmTotals, baseline: ArmTotals) -> tuple[bool, bool]:
    """(fail, may_advance): one-sided two-proportion z-test at 1 % on 5xx, at every look."""
    n_c, n_b = candidate.requests, baseline.requests
    if n_c < 50 or n_b < 50:
        return False, False
    p_c, p_b = candidate.errors_5xx / n_c, baseline.errors_5xx / n_b
    pooled = (candidate.errors_5xx + baseline.errors_5xx) / (n_c + n_b)
    se = math.sqrt(max(pooled * (1 - pooled) * (1 / n_c + 1 / n_b), 1e-18))
    z = (p_c - p_b) / se
    return z > NormalDist().inv_cdf(0.99), True


# --------------------------------------------------------------------------- one rollout


@dataclass
class RunResult:
    end: str  # rollback | promote | undecided
    minutes: int
    blast: float
    decision_requests: float | None  # both arms' requests until the first pass/fail


def simulate(
    policy: Policy | None,
    *,
    base_rate: float,
    traffic: float,
    effect: tuple[float, float],
    rng: np.random.Generator,
    probs: dict[float, np.ndarray],
) -> RunResult:
    err_mult, lat_mult = effect
    step, in_step = 0, 0
    cand, base = ArmTotals(), ArmTotals()
    state: JudgeState | None = None
    blast = 0.0
    served = 0.0
    decision: float | None = None
    for minute in range(1, DEADLINE + 1):
        weight = STEPS[step][0]
        total = rng.poisson(traffic * 60.0)
        n_c = int(rng.binomial(total, weight))
        n_b = int(total - n_c)
        served += total
        for arm, n, rate, scale in ((cand, n_c, base_rate * err_mult, lat_mult),
                                    (base, n_b, base_rate, 1.0)):
            e5 = float(rng.binomial(n, min(rate, 1.0)))
            e4 = float(rng.binomial(n, CLIENT_ERROR_RATE))
            counts = rng.multinomial(n, probs[scale])
            hist = Histogram(BOUNDS, tuple(float(x) for x in counts))
            arm.add(EntityWindow(entity=None, start_ms=minute * 60_000, requests=float(n),
                                 errors_4xx=e4, errors_5xx=e5, latency=hist))
            if arm is cand:
                blast += e5
        final = step == len(STEPS) - 1
        if policy is None:  # the naive judge
            failed, may_advance = naive_judge(cand, base)
            decisive = failed
        else:
            verdict, state = judge(policy, Look(cand, base, split=str(step), final=final), state)
            failed = verdict.outcome is Outcome.FAIL
            may_advance = verdict.may_advance
            decisive = verdict.outcome is not Outcome.INCONCLUSIVE
        if decisive and decision is None:
            decision = served
        if failed:
            return RunResult("rollback", minute, blast, decision)
        in_step += 1
        if in_step >= STEPS[step][1] and may_advance:
            if final:
                return RunResult("promote", minute, blast, decision)
            step, in_step = step + 1, 0
            cand, base = ArmTotals(), ArmTotals()
    return RunResult("undecided", DEADLINE, blast, decision)


def run_cell(args: tuple[str, float, float, str, int, int]) -> dict[str, Any]:
    judge_name, base_rate, traffic, effect_name, runs, seed = args
    policy = None if judge_name == "naive" else load_policy(judge_name)
    rng = np.random.default_rng(seed)
    effect = EFFECTS[effect_name]
    probs = {s: bucket_probs(s) for s in {1.0, effect[1]}}
    results = [simulate(policy, base_rate=base_rate, traffic=traffic, effect=effect, rng=rng,
                        probs=probs) for _ in range(runs)]
    ends = [r.end for r in results]
    decided = [r.decision_requests for r in results if r.decision_requests is not None]
    return {
        "judge": judge_name,
        "base": base_rate,
        "traffic": traffic,
        "effect": effect_name,
        "runs": runs,
        "rollback": ends.count("rollback") / runs,
        "promote": ends.count("promote") / runs,
        "undecided": ends.count("undecided") / runs,
        "blast": float(np.mean([r.blast for r in results])),
        "minutes": float(np.mean([r.minutes for r in results])),
        "decision_requests": float(np.mean(decided)) if decided else math.nan,
        "decided": len(decided) / runs,
    }


# --------------------------------------------------------------------------- Wald's SPRT


def wald_asn_events(w: float, r_true: float, r_alt: float, alpha: float, beta: float) -> float:
    """Wald's approximate expected number of events for the conditional binomial SPRT.

    H0: ratio 1 (candidate's share of events pi0 = w), H1: ratio ``r_alt``; data at
    ``r_true``. Operating characteristic from Wald's h (E exp(h Z) = 1).
    """
    pi0 = w
    pi1 = r_alt * w / (r_alt * w + 1 - w)
    pit = r_true * w / (r_true * w + 1 - w)
    a, b = math.log(beta / (1 - alpha)), math.log((1 - beta) / alpha)
    z1, z0 = math.log(pi1 / pi0), math.log((1 - pi1) / (1 - pi0))
    drift = pit * z1 + (1 - pit) * z0
    if abs(r_true - 1.0) < 1e-12:
        p_accept_h1 = alpha
    elif abs(r_true - r_alt) < 1e-12:
        p_accept_h1 = 1 - beta
    else:
        # solve pit * e^(h z1) + (1 - pit) e^(h z0) = 1 for h != 0
        def g(h: float) -> float:
            return pit * math.exp(h * z1) + (1 - pit) * math.exp(h * z0) - 1

        lo, hi = (-20.0, -1e-6) if drift > 0 else (1e-6, 20.0)
        for _ in range(200):
            mid = (lo + hi) / 2
            if (g(lo) < 0) == (g(mid) < 0):
                lo = mid
            else:
                hi = mid
        h = (lo + hi) / 2
        p_accept_h1 = (1 - math.exp(h * a)) / (math.exp(h * b) - math.exp(h * a))
    return (p_accept_h1 * b + (1 - p_accept_h1) * a) / drift


def asn_case(args: tuple[float, float, float, str, int, int]) -> dict[str, Any]:
    """The judge alone on a fixed split, looking every ~1 expected event, until pass/fail.

    ``design`` "mixture" is the shipped fail side; "single" replaces it, in this worker process
    only, by one alternative at the tolerance (Wald's SPRT at 2x): the ablation that justifies
    the mixture.
    """
    w, base_rate, r_true, design, runs, seed = args
    # Workers are reused across tasks: set the design every time, never leave it patched.
    sequential.FAIL_EXPONENTS, sequential.FAIL_WEIGHTS = (
        ((1.0,), (1.0,)) if design == "single" else SHIPPED_FAIL_MIXTURE
    )
    policy = Policy.model_validate({
        "name": "asn", "min_requests": 0, "false_rollback_rate": 0.01,
        "missed_regression_rate": 0.05,
        "checks": [{"metric": "error_rate", "compare": "baseline", "max_ratio": 2}],
    })
    rng = np.random.default_rng(seed)
    per_request = base_rate * (w * r_true + 1 - w)
    look = max(1, round(1.0 / per_request))
    used, fails = [], 0
    for _ in range(runs):
        cand, base = ArmTotals(), ArmTotals()
        state: JudgeState | None = None
        requests = 0
        for i in range(200_000):
            n_c = int(rng.binomial(look, w))
            n_b = look - n_c
            requests += look
            cand.add(EntityWindow(None, i, requests=float(n_c),
                                  errors_5xx=float(rng.binomial(n_c, base_rate * r_true))))
            base.add(EntityWindow(None, i, requests=float(n_b),
                                  errors_5xx=float(rng.binomial(n_b, base_rate))))
            verdict, state = judge(policy, Look(cand, base), state)
            if verdict.outcome is not Outcome.INCONCLUSIVE:
                fails += verdict.outcome is Outcome.FAIL
                break
        used.append(requests)
    wald = wald_asn_events(w, r_true, 2.0, 0.01, 0.05) / per_request
    oracle = (wald if r_true in (1.0, 2.0)
              else wald_asn_events(w, r_true, r_true, 0.01, 0.05) / per_request)
    return {"w": w, "base": base_rate, "r": r_true, "design": design, "runs": runs,
            "mean": float(np.mean(used)), "fail": fails / runs, "wald": wald, "oracle": oracle}


# --------------------------------------------------------------------------- report


def pct(x: float) -> str:
    return f"{x * 100:5.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="rollouts per cell and judge")
    parser.add_argument("--asn-runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run (few rollouts)")
    parser.add_argument("--judges", default="default,flagger-compatible,naive")
    parser.add_argument("--skip-asn", action="store_true")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    asn_runs = 20 if args.quick else args.asn_runs
    judges = args.judges.split(",")
    started = time.monotonic()

    tasks = []
    seed = args.seed
    for judge_name in judges:
        for base_rate in BASELINE_RATES:
            for traffic in TRAFFIC:
                for effect_name in EFFECTS:
                    if judge_name == "naive" and effect_name.startswith("p99"):
                        continue  # the naive judge only looks at 5xx
                    seed += 1
                    tasks.append((judge_name, base_rate, traffic, effect_name, runs, seed))
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        cells = list(pool.map(run_cell, tasks))
        asn = [] if args.skip_asn else list(pool.map(asn_case, [
            (w, 0.01, r, design, asn_runs, args.seed + 7919 * i)
            for i, (design, w, r) in enumerate(
                (design, w, r) for design in ("mixture", "single") for w in (0.05, 0.5)
                for r in (1.0, 1.5, 2.0, 5.0, 10.0)
            )
        ]))

    print(f"# judge calibration: {runs} rollouts per cell, steps "
          f"{', '.join(f'{w:.0%}/{b}m' for w, b in STEPS)}, 60 s windows, deadline "
          f"{DEADLINE} min, seed {args.seed}\n")
    print("judge               base   req/s effect    rollback promote undecided  blast"
          "   minutes  requests-to-decision")
    for c in cells:
        print(f"{c['judge']:<19} {c['base'] * 100:4.1f}% {c['traffic']:7.0f} {c['effect']:<9} "
              f"{pct(c['rollback'])}  {pct(c['promote'])}  {pct(c['undecided'])} "
              f"{c['blast']:8.1f} {c['minutes']:7.1f}  {c['decision_requests']:12.0f}"
              f" ({pct(c['decided'])} decided)")

    def cells_of(judge_name: str, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [c for c in cells if c["judge"] == judge_name and pred(c)]

    print("\n# targets")
    for judge_name in judges:
        nulls = cells_of(judge_name, lambda c: c["effect"] == "none")
        worst = max(nulls, key=lambda c: c["rollback"])
        print(f"{judge_name:<19} false rollback: worst cell {pct(worst['rollback'])} "
              f"(base {worst['base']:.1%}, {worst['traffic']:g} req/s), mean "
              f"{pct(float(np.mean([c['rollback'] for c in nulls])))}")
        miss = cells_of(judge_name, lambda c: c["effect"] == "err x2" and c["traffic"] >= 10)
        if miss:
            worst_miss = max(miss, key=lambda c: c["promote"])
            print(f"{'':<19} missed err x2 at >= 10 req/s: worst cell "
                  f"{pct(worst_miss['promote'])} (base {worst_miss['base']:.1%}, "
                  f"{worst_miss['traffic']:g} req/s)")
    if "default" in judges and "flagger-compatible" in judges:
        seq = {(c["base"], c["traffic"], c["effect"]): c for c in cells_of(
            "default", lambda c: c["effect"].startswith("err"))}
        flg = {(c["base"], c["traffic"], c["effect"]): c for c in cells_of(
            "flagger-compatible", lambda c: c["effect"].startswith("err"))}
        total_seq = sum(c["blast"] for c in seq.values())
        total_flg = sum(c["blast"] for c in flg.values())
        print(f"blast radius over the 5xx regression cells: default {total_seq:.0f}, "
              f"flagger-compatible {total_flg:.0f} (ratio {total_seq / total_flg:.2f})")
        worse = [(k, seq[k]["blast"], flg[k]["blast"]) for k in seq
                 if seq[k]["blast"] > 0.5 * flg[k]["blast"]]
        for key, s, f in sorted(worse):
            print(f"  cell above half of flagger-compatible's: base {key[0]:.1%}, "
                  f"{key[1]:g} req/s, {key[2]}: {s:.1f} vs {f:.1f}")

    if asn:
        print("\n# samples to decision against Wald's SPRT (fixed split, error check only, "
              "alpha 1 %, beta 5 %, a look every ~1 expected event)")
        print("design   split  base   ratio  judge-mean  fail%   Wald(1 vs 2)  ratio   "
              "oracle-Wald  ratio")
        for a in asn:
            print(f"{a['design']:<8} {a['w']:4.0%}  {a['base'] * 100:4.1f}%  {a['r']:5.1f}  "
                  f"{a['mean']:10.0f}  "
                  f"{pct(a['fail'])}  {a['wald']:12.0f}  {a['mean'] / a['wald']:5.2f}  "
                  f"{a['oracle']:11.0f}  {a['mean'] / a['oracle']:5.2f}")
    print(f"\n(ran {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
