"""The sources of a policy's checks on a team's own metrics: Prometheus and ``web`` JSON.

Where this sits: at the edge, beside the serving client. The runner asks ``OwnMetrics`` for
every query check of a judged split once per look (``readings``: each check rendered and run
once per arm) and hands the numbers to ``decide`` in its ``Observation``; the API asks it to
``validate`` a submitted plan's checks. Nothing in ``rollout.analysis`` imports this module:
the judge sees only the ``QueryReading`` values (``rollout.analysis.queries``).

Errors, translated once here; the first two are outages (never a failed check)::

    SourceError                   the source gave no number
    ├── SourceUnreachable         no answer: connection refused, timeout, 5xx (retry later)
    └── SourceRefused             an answer saying no: 4xx, Prometheus "status": "error"
        └── QueryInvalid          Prometheus ``errorType: bad_data``: the query does not
                                  parse or cannot run (fix the plan, never retried)

``SelectorError`` (``rollout.analysis.queries``) and a result that is not one number (several
series, a matrix) are answers without a usable number: the look has no data, with the
reason in its note.
"""

# ruff: noqa: N818
# The exception names read as what happened, as in rollout.serving.errors.

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from rollout.analysis.queries import (
    ArmReading,
    Names,
    QueryReading,
    SelectorError,
    arm_names,
    render,
    select,
)
from rollout.analysis.spec import Policy, QueryCheck
from rollout.settings import PrometheusSettings


class SourceError(Exception):
    """A query check's source gave no number."""


class SourceUnreachable(SourceError):
    """No answer (connection refused, timeout) or a 5xx: try again at the next look."""


class SourceRefused(SourceError):
    """The source answered with an error about the request."""


class QueryInvalid(SourceRefused):
    """Prometheus says the query is bad (``errorType: bad_data``): it never will run."""


class NotOneNumber(ValueError):
    """The answer holds no single number (several series, a range vector, ...)."""


NOT_CONFIGURED = (
    "no Prometheus is configured: set ROLLOUT_PROMETHEUS_URL (and ROLLOUT_PROMETHEUS_TOKEN or "
    "ROLLOUT_PROMETHEUS_USERNAME/PASSWORD) on the controller to use PromQL checks"
)


@dataclass(frozen=True)
class Issue:
    """A validation problem: the plan field (``policy.checks[2].query``) and what is wrong."""

    field: str
    message: str


class OwnMetrics:
    """Runs query checks: PromQL against ``settings.url``, web checks against their URLs.

    ``transport`` is injected by tests (an ``httpx`` transport); the client is made once and
    closed with ``aclose``.
    """

    def __init__(
        self,
        settings: PrometheusSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/") if settings.url else None
        headers = {"Accept": "application/json"}
        auth: httpx.BasicAuth | None = None
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        elif settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            auth = httpx.BasicAuth(settings.username, password)
        self._prometheus = httpx.AsyncClient(
            headers=headers, auth=auth, timeout=settings.timeout, transport=transport
        )
        # Web checks carry their own headers: the Prometheus credentials never go there.
        self._web = httpx.AsyncClient(
            timeout=settings.timeout, transport=transport, follow_redirects=False
        )

    @property
    def configured(self) -> bool:
        return self.url is not None

    async def aclose(self) -> None:
        await self._prometheus.aclose()
        await self._web.aclose()

    # ---- one number ----------------------------------------------------------------------

    async def instant(self, query: str) -> float | None:
        """The value of an instant PromQL query: a scalar or a one-series vector; ``None``
        for an empty vector or NaN. ``SourceError`` as the tree says, ``NotOneNumber``."""
        if self.url is None:
            raise SourceRefused(NOT_CONFIGURED)
        try:
            response = await self._prometheus.post(
                f"{self.url}/api/v1/query", data={"query": query}
            )
        except httpx.HTTPError as exc:
            raise SourceUnreachable(
                f"prometheus unreachable: {type(exc).__name__}: {exc or 'no answer'}"
            ) from exc
        body = _json(response)
        if body is not None and body.get("status") == "error":
            message = f"{body.get('errorType', 'error')}: {body.get('error', '')}"
            if body.get("errorType") == "bad_data":
                raise QueryInvalid(f"prometheus refused the query: {message}")
            if response.status_code >= 500 or body.get("errorType") in ("timeout", "canceled"):
                raise SourceUnreachable(f"prometheus error: {message}")
            raise SourceRefused(f"prometheus error: {message}")
        if response.status_code >= 500:
            raise SourceUnreachable(f"prometheus unreachable: HTTP {response.status_code}")
        if response.status_code >= 400 or body is None:
            raise SourceRefused(f"prometheus error: HTTP {response.status_code}")
        return _one_number(body.get("data"))

    async def fetch(self, check: QueryCheck, url: str) -> float | None:
        """The number a web check's ``selector`` picks from ``GET url``."""
        if check.web is None:
            raise ValueError("not a web check")
        try:
            response = await self._web.get(url, headers=check.web.headers)
        except httpx.HTTPError as exc:
            raise SourceUnreachable(
                f"web source unreachable: {type(exc).__name__}: {exc or 'no answer'}"
            ) from exc
        if response.status_code >= 500:
            raise SourceUnreachable(f"web source unreachable: HTTP {response.status_code}")
        if response.status_code >= 300:
            raise SourceRefused(f"web source error: HTTP {response.status_code}")
        try:
            document = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceRefused(f"web source error: the answer is not JSON: {exc}") from exc
        return select(document, check.web.selector)

    # ---- per look ------------------------------------------------------------------------

    async def readings(
        self,
        policy: Policy,
        *,
        endpoint: str,
        candidate: str,
        baseline: str,
        window: str,
    ) -> tuple[QueryReading, ...]:
        """Every query check of ``policy`` run once per arm, concurrently."""
        names = arm_names(
            endpoint=endpoint, candidate=candidate, baseline=baseline, window=window
        )
        checks = policy.query_checks
        arms = await asyncio.gather(
            *(self._arm(check, arm) for check in checks for arm in names)
        )
        return tuple(
            QueryReading(
                check=check.describe(),
                source=check.source,
                candidate=arms[2 * index],
                baseline=arms[2 * index + 1],
            )
            for index, check in enumerate(checks)
        )

    async def _arm(self, check: QueryCheck, names: Names) -> ArmReading:
        kind: Literal["promql", "url"] = "promql" if check.query is not None else "url"
        try:
            asked = render(check.template, names, kind=kind)
        except ValueError as exc:
            return ArmReading(check.template, note=str(exc))
        try:
            value = await (self.instant(asked) if kind == "promql" else self.fetch(check, asked))
        except SourceError as exc:
            return ArmReading(asked, outage=str(exc))
        except (NotOneNumber, SelectorError) as exc:
            return ArmReading(asked, note=str(exc))
        return ArmReading(asked, value=value)

    # ---- at submission -------------------------------------------------------------------

    async def validate(
        self,
        policy: Policy,
        *,
        endpoint: str,
        candidate: str,
        baseline: str | None,
        window: str,
    ) -> list[Issue]:
        """What is wrong with ``policy``'s query checks, by plan field.

        Every PromQL query must parse (Prometheus is asked, for both arms' renderings) and,
        when the baseline is known, return a series for the baseline, which serves now; the
        candidate serves nothing before the rollout starts, so its rendering can only be
        checked to run. A web check must answer a number for the baseline. ``SourceUnreachable``
        when a source cannot be asked at all (the caller answers 503).
        """
        issues: list[Issue] = []
        names = arm_names(
            endpoint=endpoint,
            candidate=candidate,
            baseline=baseline or candidate,
            window=window,
        )
        for index, check in enumerate(policy.checks):
            if not isinstance(check, QueryCheck):
                continue
            if check.query is not None:
                issues.extend(await self._validate_query(check, index, names, baseline))
            else:
                issues.extend(await self._validate_web(check, index, names[1], baseline))
        return issues

    async def _validate_query(
        self, check: QueryCheck, index: int, names: Sequence[Names], baseline: str | None
    ) -> list[Issue]:
        where = f"policy.checks[{index}].query"
        if self.url is None:
            return [Issue(where, NOT_CONFIGURED)]
        value: float | None = None
        for arm, arm_name in zip(names, ("candidate", "baseline"), strict=True):
            try:
                asked = render(check.template, arm, kind="promql")
                got = await self.instant(asked)
            except ValueError as exc:
                return [Issue(where, str(exc))]
            except QueryInvalid as exc:
                return [Issue(where, f"{exc} (rendered for the {arm_name}: {asked})")]
            except SourceRefused as exc:
                return [Issue(where, f"{exc} (rendered for the {arm_name}: {asked})")]
            except NotOneNumber as exc:
                return [Issue(where, f"{exc} (rendered for the {arm_name}: {asked}); "
                                     "aggregate it to one series, e.g. with sum(...)")]
            if arm_name == "baseline":
                value = got
        if baseline is not None and value is None:
            asked = render(check.template, names[1], kind="promql")
            return [Issue(where, f"returns no series for the baseline {baseline!r} "
                                 f"({asked}): check the metric and label names")]
        return []

    async def _validate_web(
        self, check: QueryCheck, index: int, names: Names, baseline: str | None
    ) -> list[Issue]:
        if baseline is None:
            return []
        where = f"policy.checks[{index}].web"
        asked = render(check.template, names, kind="url")
        try:
            value = await self.fetch(check, asked)
        except SourceRefused as exc:
            return [Issue(f"{where}.url", f"{exc} ({asked})")]
        except SelectorError as exc:
            return [Issue(f"{where}.selector", f"{exc} (in the answer of {asked})")]
        if value is None:
            return [Issue(f"{where}.selector", f"picks no number for the baseline {baseline!r} "
                                               f"(in the answer of {asked})")]
        return []


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _one_number(data: object) -> float | None:
    """The number in a successful ``/api/v1/query`` answer's ``data``."""
    if not isinstance(data, dict):
        raise NotOneNumber("the answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return _sample(result[1])
    if kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise NotOneNumber(f"the query returns {len(result)} series, not one")
        value = result[0].get("value") if isinstance(result[0], dict) else None
        if isinstance(value, list) and len(value) == 2:
            return _sample(value[1])
    raise NotOneNumber(f"the query returns a {kind}, not one number")


def _sample(text: object) -> float | None:
    try:
        value = float(str(text))
    except ValueError:
        raise NotOneNumber(f"{text!r} is not a number") from None
    return None if math.isnan(value) else value
