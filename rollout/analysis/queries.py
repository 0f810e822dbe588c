"""Checks on a team's own metrics: rendering their queries, reading the number, judging it.

Where this sits: a policy's ``QueryCheck`` (``rollout.analysis.spec``) names a PromQL query or
a ``web`` JSON source. At every look of a judged split the runner renders it for each arm
(``render``), runs it (``rollout.metrics.prometheus``: the I/O, outside this package) and
hands the numbers to ``decide`` as ``QueryReading`` values in its ``Observation``;
``rollout.engine.judging`` then calls ``judge_queries`` once per look and ``combine`` to fold
the results into the verdict of the policy's metric judge. Pure: no I/O.

Placeholders. ``{{ endpoint }}``, ``{{ candidate }}``, ``{{ baseline }}`` and ``{{ window }}``.
A query is written for the candidate: the candidate's value is the query with the
candidate's served entity name for ``{{ candidate }}``; the baseline's value is the same query
with the baseline's name in that place. ``{{ baseline }}`` always names the baseline (a query
comparing inside itself). ``{{ window }}`` is the look interval as a PromQL duration (``30s``,
``1m``). In a query, a name is written as a PromQL string literal, so that no entity name can
change the query's meaning: ``{served_entity={{ candidate }}}`` becomes
``{served_entity="ads-4"}``, and a placeholder already inside quotes
(``"{{ candidate }}"``) gets only the characters escaped (backslash, the quote, newlines). In
a web URL a name is percent-encoded.

The rule for one number per look (``judge_queries``). A look's number is no evidence the
sequential judge can weigh (it is whatever the query computes: a rate over a window, a
ratio, a score), so this rule is Flagger's, made safe for missing data:

* A look *fails* the check when the candidate's value is beyond the tolerance (above
  ``max``, below ``min``, or worse than the baseline's by more than ``max_ratio`` /
  ``max_increase``, in the ``direction`` that is worse), and *passes* it otherwise.
* The check **fails** after ``failure_threshold`` consecutive failing looks in a split (a
  single spike does not roll back), and **passes** after as many consecutive passing looks
  (one good sample does not promote). Anything in between is inconclusive, leaning towards a
  regression while the current run is of failing looks. A fail is final for the rollout.
* A look without a number (no series yet, NaN, the baseline arm missing for a comparison)
  makes the check inconclusive at that look, whatever it was before, and counts neither way:
  the runs continue across it (a check that had passed passes again at its next number).
* A source that cannot be asked (Prometheus unreachable, an error answer, a web endpoint
  down) is never a failure: the check is inconclusive with its own reason
  (``prometheus unreachable: ...``), counts neither way, and the engine raises one alert
  for the outage (``rollout.engine.decide``).
* The runs restart when the split changes: each step earns its own pass.

Every result carries both arms' values and the fully resolved queries.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from rollout.analysis.spec import PLACEHOLDER_PATTERN, Policy, QueryCheck
from rollout.analysis.verdict import CheckResult, Outcome, Verdict

# ---- rendering ----------------------------------------------------------------------------



@dataclass(frozen=True)
class Names:
    """What the placeholders stand for in one arm's rendering."""

    endpoint: str
    candidate: str
    baseline: str
    window: str


def promql_duration(seconds: float) -> str:
    """A PromQL duration for ``seconds``: ``1m``, ``30s``, ``1m30s``, ``1500ms``."""
    millis = max(1, round(seconds * 1000))
    if millis % 1000:
        return f"{millis}ms"
    total = millis // 1000
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts)


def promql_string(value: str, quote: str = '"') -> str:
    """``value``'s characters escaped for a PromQL string in ``quote`` (without the quotes)."""
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def render(template: str, names: Names, *, kind: Literal["promql", "url"]) -> str:
    """``template`` with its placeholders filled in, safely for a PromQL query or a URL.

    ``ValueError`` for a placeholder not known, or a name inside a raw (backtick) PromQL
    string, where nothing can be escaped.
    """
    values = {
        "endpoint": names.endpoint,
        "candidate": names.candidate,
        "baseline": names.baseline,
        "window": names.window,
    }
    out: list[str] = []
    last = 0
    for match in PLACEHOLDER_PATTERN.finditer(template):
        name = match.group(1)
        if name not in values:
            raise ValueError(f"unknown placeholder {{{{ {name} }}}}")
        before = template[last : match.start()]
        out.append(before)
        value = values[name]
        if kind == "url":
            out.append(urllib.parse.quote(value, safe=""))
        elif name == "window":
            out.append(value)
        else:
            quote = _open_quote(template[: match.start()])
            if quote == "`":
                raise ValueError(
                    f"{{{{ {name} }}}} sits in a raw `...` string, where a name cannot be "
                    "escaped: write it without quotes"
                )
            out.append(
                promql_string(value, quote)
                if quote is not None
                else '"' + promql_string(value) + '"'
            )
        last = match.end()
    out.append(template[last:])
    return "".join(out)


def _open_quote(prefix: str) -> str | None:
    """The quote character of the PromQL string ``prefix`` ends inside, if any."""
    quote: str | None = None
    escaped = False
    for char in prefix:
        if quote is None:
            if char in "\"'`":
                quote = char
        elif escaped:
            escaped = False
        elif char == "\\" and quote != "`":
            escaped = True
        elif char == quote:
            quote = None
    return quote


def arm_names(
    *, endpoint: str, candidate: str, baseline: str, window: str
) -> tuple[Names, Names]:
    """The names for the candidate's rendering and for the baseline's (the baseline's name
    in the candidate's place)."""
    return (
        Names(endpoint, candidate, baseline, window),
        Names(endpoint, baseline, baseline, window),
    )


# ---- the JSON selector --------------------------------------------------------------------

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


class SelectorError(ValueError):
    """The document has nothing usable where the selector points."""


def select(document: object, selector: str) -> float | None:
    """The number ``selector`` picks from a parsed JSON ``document``.

    The subset understood: ``$`` (the document), then any sequence of ``.key`` (an object's
    member; letters, digits, ``_`` and ``-``) and ``[n]`` (a list's n-th item, from 0), e.g.
    ``$.data.value`` or ``$.items[0].score``. A number, or a string holding one (as
    Prometheus writes its values), is the answer; ``null`` or NaN is no data (``None``);
    anything else, or a path that is not there, is ``SelectorError``.
    """
    if not selector.startswith("$"):
        raise SelectorError(f"a selector starts with $: {selector!r}")
    rest = selector[1:]
    position = 0
    value: object = document
    where = "$"
    while position < len(rest):
        match = _STEP.match(rest, position)
        if match is None:
            raise SelectorError(f"cannot read the selector {selector!r} from {rest[position:]!r}")
        key, index = match.group(1), match.group(2)
        if key is not None:
            if not isinstance(value, Mapping) or key not in value:
                raise SelectorError(f"{where} has no member {key!r}")
            value = value[key]
            where += f".{key}"
        else:
            number = int(index)
            if not isinstance(value, list) or number >= len(value):
                raise SelectorError(f"{where} has no item [{number}]")
            value = value[number]
            where += f"[{number}]"
        position = match.end()
    return _number(value, where)


def _number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise SelectorError(f"{where} is a boolean, not a number")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise SelectorError(f"{where} is {value!r}, not a number") from None
    else:
        raise SelectorError(f"{where} is {type(value).__name__}, not a number")
    return None if math.isnan(result) else result


# ---- what the runner hands over -----------------------------------------------------------


@dataclass(frozen=True)
class ArmReading:
    """One arm's number at one look: ``query`` is what was asked (the resolved query, or
    the URL), ``value`` the number (``None``: no data), ``outage`` why the source could not
    be asked (``prometheus unreachable: ...``; never a failure)."""

    query: str
    value: float | None = None
    outage: str | None = None
    note: str = ""  # why there is no value, when the source answered

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "value": self.value, "outage": self.outage,
                "note": self.note}


@dataclass(frozen=True)
class QueryReading:
    """Both arms' numbers for one check (its ``describe()`` text) at one look."""

    check: str
    source: Literal["prometheus", "web"]
    candidate: ArmReading
    baseline: ArmReading

    @property
    def outage(self) -> str | None:
        return self.candidate.outage or self.baseline.outage


# ---- judging ------------------------------------------------------------------------------


def judge_queries(
    policy: Policy,
    readings: Sequence[QueryReading],
    state: Mapping[str, Any],
    *,
    split: str,
) -> tuple[tuple[CheckResult, ...], dict[str, Any]]:
    """The results of the policy's query checks at one look, and the state to keep.

    ``state`` is what the previous call returned (``{}`` at first): per check, the split
    and its runs of failing and passing looks. A check with no reading this look keeps its
    runs and is inconclusive (the runner could not run it).
    """
    by_check = {reading.check: reading for reading in readings}
    results: list[CheckResult] = []
    new_state: dict[str, Any] = {}
    threshold = policy.failure_threshold
    for spec in policy.query_checks:
        key = spec.describe()
        kept = dict(state.get(key) or {})
        if kept.get("split") != split and not kept.get("failed"):
            kept = {"split": split, "fails": 0, "passes": 0, "looks": 0}
        reading = by_check.get(key)
        look = _look(spec, reading)
        if look.verdict is not None and not kept.get("failed"):
            kept["looks"] = int(kept.get("looks", 0)) + 1
            if look.verdict == "fail":
                kept["fails"], kept["passes"] = int(kept.get("fails", 0)) + 1, 0
            else:
                kept["fails"], kept["passes"] = 0, int(kept.get("passes", 0)) + 1
            if kept["fails"] >= threshold:
                kept["failed"] = True
                kept["fail_reason"] = look.reason
        new_state[key] = kept
        results.append(_result(spec, reading, look, kept, threshold))
    return tuple(results), new_state


@dataclass(frozen=True)
class _Look:
    verdict: Literal["pass", "fail"] | None  # None: no number to judge
    reason: str
    limit: float | None = None


def _look(spec: QueryCheck, reading: QueryReading | None) -> _Look:
    if reading is None:
        return _Look(None, "not run at this look")
    if reading.outage is not None:
        return _Look(None, reading.outage)
    value = reading.candidate.value
    if value is None:
        return _Look(None, f"no data for the candidate{_why(reading.candidate)}")
    if spec.compare == "baseline":
        base = reading.baseline.value
        if base is None:
            return _Look(None, f"no data for the baseline{_why(reading.baseline)}")
        limit = spec.tolerated(base)
        worse = value < limit if spec.higher_is_better else value > limit
        side = "below" if spec.higher_is_better else "above"
        within = "at or above" if spec.higher_is_better else "at or below"
        if worse:
            return _Look("fail", f"candidate {value:.6g} {side} {limit:.6g} (baseline "
                                 f"{base:.6g} with the tolerance)", limit)
        return _Look("pass", f"candidate {value:.6g} {within} {limit:.6g} (baseline "
                             f"{base:.6g} with the tolerance)", limit)
    if spec.max_level is not None:
        if value > spec.max_level:
            return _Look("fail", f"candidate {value:.6g} above max {spec.max_level:g}",
                         spec.max_level)
        return _Look("pass", f"candidate {value:.6g} within max {spec.max_level:g}",
                     spec.max_level)
    level = spec.min_level or 0.0
    if value < level:
        return _Look("fail", f"candidate {value:.6g} below min {level:g}", level)
    return _Look("pass", f"candidate {value:.6g} within min {level:g}", level)


def _why(arm: ArmReading) -> str:
    return f" ({arm.note})" if arm.note else ""


def _result(
    spec: QueryCheck,
    reading: QueryReading | None,
    look: _Look,
    kept: Mapping[str, Any],
    threshold: int,
) -> CheckResult:
    fails, passes = int(kept.get("fails", 0)), int(kept.get("passes", 0))
    runs = f"{fails} failing / {passes} passing look(s) in a row, {threshold} decide"
    if kept.get("failed"):
        outcome = Outcome.FAIL
        last = kept.get("fail_reason", look.reason)
        reason = f"{spec.describe()}: {threshold} failing looks in a row; last: {last}"
    elif passes >= threshold and (reading is None or look.verdict is not None):
        outcome, reason = Outcome.PASS, f"{spec.describe()}: {look.reason} ({runs})"
    else:
        outcome = Outcome.INCONCLUSIVE
        reason = f"{spec.describe()}: {look.reason} ({runs})"
    candidate = reading.candidate if reading is not None else None
    baseline = reading.baseline if reading is not None else None
    detail: dict[str, float | str | None] = {
        "source": spec.source,
        "query": None if candidate is None else candidate.query,
        "baseline_query": None if baseline is None else baseline.query,
        "outage": None if reading is None else reading.outage,
        "direction": spec.direction,
    }
    return CheckResult(
        check=spec.describe(),
        metric=spec.name or spec.source,
        outcome=outcome,
        reason=reason,
        candidate_value=None if candidate is None else candidate.value,
        baseline_value=None if baseline is None else baseline.value,
        limit=_limit_text(spec),
        statistic={"failing_looks": float(fails), "passing_looks": float(passes)},
        boundary={"failing_looks": float(threshold), "passing_looks": float(threshold)},
        detail=detail,
        missing=look.verdict is None and not kept.get("failed"),
        leans_bad=fails > 0 or bool(kept.get("failed")),
    )


def _limit_text(spec: QueryCheck) -> str:
    if spec.compare == "baseline":
        parts = []
        if spec.max_ratio is not None:
            parts.append(f"{'1/' if spec.higher_is_better else ''}{spec.max_ratio:g}x")
        if spec.max_increase is not None:
            parts.append(f"{'-' if spec.higher_is_better else '+'}{spec.max_increase:g}")
        return "baseline " + " or ".join(parts)
    if spec.max_level is not None:
        return f"<= {spec.max_level:g}"
    return f">= {spec.min_level or 0.0:g}"


def combine(policy: Policy, verdict: Verdict, results: Sequence[CheckResult]) -> Verdict:
    """The metric judge's ``verdict`` with the query checks' ``results`` folded in.

    Fail when either fails; pass when the metric judge passes and every query check passes
    (a check without data under ``on_missing: skip`` does not hold it back); otherwise
    inconclusive. An intermediate step may still advance on ``advance: lean`` when the
    metric judge lets it and no query check leans towards a regression or lacks data.
    """
    if not results:
        return verdict
    skipped = {
        spec.describe() for spec in policy.query_checks if spec.on_missing == "skip"
    }
    failing = [r for r in results if r.outcome is Outcome.FAIL]
    blocking = [
        r for r in results
        if r.outcome is not Outcome.PASS and not (r.missing and r.check in skipped)
    ]
    if verdict.outcome is Outcome.FAIL or failing:
        outcome = Outcome.FAIL
        reasons = [verdict.reason] if verdict.outcome is Outcome.FAIL else []
        reasons += [r.reason for r in failing]
        joined = "; ".join(reasons)
        reason = joined if verdict.outcome is Outcome.FAIL else f"fail: {joined}"
        may_advance = False
    elif verdict.outcome is Outcome.PASS and not blocking:
        outcome, may_advance = Outcome.PASS, True
        reason = f"{verdict.reason}; {len(results)} check(s) on own metrics passed"
    else:
        outcome = Outcome.INCONCLUSIVE
        parts = [] if verdict.outcome is Outcome.PASS else [verdict.reason.removeprefix(
            "inconclusive: ")]
        parts += [r.reason for r in blocking]
        reason = "inconclusive: " + "; ".join(parts)
        may_advance = (
            verdict.may_advance
            and not verdict.final
            and policy.advance == "lean"
            and not any(r.leans_bad or r.missing for r in blocking)
        )
    missing = (*verdict.missing, *(r.check for r in results if r.missing))
    return replace(
        verdict,
        outcome=outcome,
        may_advance=may_advance,
        reason=reason,
        checks=(*verdict.checks, *results),
        missing=missing,
    )
