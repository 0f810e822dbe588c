"""The CLI's side of the HTTP API: requests, error messages and what people see.

Where this sits: users submit plans and steer rollouts through the controller's HTTP API; the
engine acts on the stored rollouts and queued commands. ``rollout submit/get/wait/list/events/
pause/resume/promote/abort`` (``rollout.cli`` maps their flags) call the functions at the end
of this module, which talk to the API with ``ApiClient`` and render with rich: a table or a
live view for people, JSON for scripts. Every failure (the API cannot be reached, it refused
the request, the plan is invalid) becomes a ``CliError``: one clear line on stderr (plus the
invalid fields of a plan) and a non-zero exit code, never a traceback.

Exit codes: 0 success (and, for ``get --watch``, ``succeeded``); 1 the request failed; 2 the
command line or the plan file could not be used; with ``get --watch`` and ``wait``:
3 ``rolled_back``, 4 ``failed``, 5 ``aborted``, 6 ``paused`` (waiting for a person to resume,
promote or abort it), 7 ``--timeout`` passed first, 8 (``wait`` only) the rollout succeeded
without passing through the phase waited for.

A watch rides out a controller restart or a network blip: an unreachable API, a timeout or a
5xx answer is retried with a growing delay (up to ``_MAX_BACKOFF``) until ``--timeout``, with
no fixed count; any other answer (404, 401, 403) ends it at once with 1::

    poll ──ok──> terminal? ─yes─> 0 / 3 / 4 / 5
      │           paused?  ─yes─> 6
      │           otherwise: sleep --interval, poll again
      └─failed─> retryable (connect, timeout, 5xx)? ─no─> 1
                   └─yes─> --timeout passed? ─yes─> 7
                             └─no─> sleep interval x 2^(n-1) (at most 30 s), poll again
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from rollout import __version__
from rollout.analysis.wording import metric_name, metric_value

DEFAULT_SERVER = "http://127.0.0.1:8080"
TERMINAL_EXIT_CODES: dict[str, int] = {
    "succeeded": 0,
    "rolled_back": 3,
    "failed": 4,
    "aborted": 5,
}
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PAUSED = 6
EXIT_TIMEOUT = 7
EXIT_NOT_REACHED = 8
PAUSED = "paused"
# The longest wait between two polls while the API cannot be reached (a restart takes
# seconds; a minute-long outage is still noticed within half a minute of its end).
_MAX_BACKOFF = 30.0
PAGE = 500  # rollouts asked for per list request; ``rollout list`` follows next_cursor


class Output(StrEnum):
    table = "table"
    json = "json"


class CliError(Exception):
    """What went wrong, in one line, with the fields of an invalid plan and an exit code."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int = EXIT_ERROR,
        details: Sequence[str] = (),
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.details = list(details)
        self.retryable = retryable


class ApiClient:
    """Synchronous calls to the controller's API; every failure is a ``CliError``."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        # X-Rollout-Client: the API refuses a state-changing request that a page on another
        # origin could have sent; this header is one such a page cannot send.
        headers = {
            "User-Agent": f"rollout-cli/{__version__}",
            "Accept": "application/json",
            "X-Rollout-Client": "cli",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._http = httpx.Client(
                base_url=self.server, headers=headers, timeout=timeout, transport=transport
            )
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise CliError(f"invalid --server URL {server!r}: {exc}", exit_code=EXIT_USAGE) from exc

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- calls ------------------------------------------------------------------------------

    def submit(self, body: bytes, content_type: str) -> dict[str, Any]:
        return self._object(
            "POST", "/api/v1/rollouts", content=body, headers={"Content-Type": content_type}
        )

    def get(self, rollout_id: str) -> dict[str, Any]:
        return self._object("GET", f"/api/v1/rollouts/{_segment(rollout_id)}")

    def rollouts(
        self, endpoint: str | None = None, phases: Sequence[str] = (), limit: int = 100
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` rollout summaries, newest first, following the list's cursor."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(found) < limit:
            params: list[tuple[str, str | int]] = [("limit", min(limit - len(found), PAGE))]
            if endpoint:
                params.append(("endpoint", endpoint))
            params.extend(("phase", phase) for phase in phases)
            if cursor is not None:
                params.append(("cursor", cursor))
            answer = self._object("GET", "/api/v1/rollouts", params=params)
            found.extend(_list_of(answer, "rollouts"))
            following = answer.get("next_cursor")
            if not isinstance(following, str) or not following:
                break
            cursor = following
        return found[:limit]

    def events(self, rollout_id: str, after: int = 0) -> list[dict[str, Any]]:
        answer = self._object(
            "GET", f"/api/v1/rollouts/{_segment(rollout_id)}/events", params={"after": after}
        )
        return _list_of(answer, "events")

    def command(
        self, rollout_id: str, action: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._object(
            "POST", f"/api/v1/rollouts/{_segment(rollout_id)}/{action}", json=dict(body or {})
        )

    # ---- plumbing ---------------------------------------------------------------------------

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot reach the rollout API at {self.server}: {_reason(exc)} (is the daemon "
                "running? set --server or ROLLOUT_SERVER)",
                retryable=True,
            ) from exc
        except httpx.TimeoutException as exc:
            raise CliError(
                f"the rollout API at {self.server} did not answer in time", retryable=True
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise CliError(
                f"invalid --server URL {self.server!r}: {exc}", exit_code=EXIT_USAGE
            ) from exc
        except httpx.HTTPError as exc:
            raise CliError(
                f"request to {self.server} failed: {_reason(exc)}", retryable=True
            ) from exc
        if response.is_success:
            try:
                data = response.json()
            except ValueError as exc:
                raise CliError(
                    f"{self.server} answered HTTP {response.status_code} with a body that is "
                    "not JSON: is --server the rollout API?"
                ) from exc
            if not isinstance(data, dict):
                raise CliError(f"{self.server} answered with unexpected JSON: is it rollout?")
            return data
        raise _api_error(response, self.server)


def _segment(value: str) -> str:
    if not value.strip():
        raise CliError("a rollout id is needed", exit_code=EXIT_USAGE)
    # An id is one path segment: "a/b" must not reach another route.
    return quote(value, safe="")


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text


def _list_of(answer: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = answer.get(key)
    if not isinstance(items, list):
        raise CliError(f"the API's answer has no {key!r} list")
    return [item for item in items if isinstance(item, dict)]


# Refusals whose message is complete in itself: printed without their code.
_PLAIN_CODES = frozenset(
    {
        "command_not_allowed",
        "command_queued",
        "rollout_finished",
        "ambiguous_rollout",
        "rollout_not_found",
    }
)
# What a command does, in the words of the CLI (the API queues promote --full as promote_full).
COMMAND_WORDS: dict[str, str] = {
    "pause": "pause",
    "resume": "resume",
    "promote": "promote to the next step",
    "promote_full": "promote to 100 %",
    "abort": "abort",
}


def _api_error(response: httpx.Response, server: str) -> CliError:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    status = response.status_code
    if not isinstance(error, dict):
        snippet = " ".join(response.text.split())[:200]
        return CliError(
            f"{server} answered HTTP {status}" + (f": {snippet}" if snippet else ""),
            retryable=status >= 500,
        )
    code = str(error.get("code", f"http_{status}"))
    message = str(error.get("message", f"HTTP {status}"))
    details = [
        f"{d.get('field', '?')}: {d.get('message', '')}"
        for d in error.get("details") or []
        if isinstance(d, dict)
    ]
    if code == "invalid_plan" and details:
        # A plan's problems are listed one per line, each with its field.
        count = len(details)
        return CliError(
            f"the plan is invalid ({count} problem{'s' if count != 1 else ''}):",
            details=details,
        )
    if code == "unauthenticated":
        message += " (set --token or ROLLOUT_TOKEN)"
    if code in _PLAIN_CODES:
        # These messages say it all (the phase, what the rollout takes, the candidates).
        return CliError(message)
    # Other messages already summarise their details: one line.
    return CliError(f"{message} [{code}]", retryable=status >= 500)


# ---- rendering ------------------------------------------------------------------------------


def _time(value: object, layout: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
    """An ISO 8601 time from the API as the API gave it (UTC), for people."""
    if not isinstance(value, str):
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime(layout).strip()


def _number(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}"


def _count(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.0f}"
    return "-" if value is None else str(value)


def stages(rollout: Mapping[str, Any]) -> list[int]:
    """The candidate weights a rollout goes through, ending at 100 %.

    A summary (what ``rollout list`` reads) has only ``step_count``: its weights are unknown
    (0 stands in) but their number, which is all the progress column needs, is right.
    """
    if "steps" not in rollout and isinstance(rollout.get("step_count"), int):
        count = max(1, int(rollout["step_count"]))
        return [0] * count + ([100] if rollout.get("strategy") == "canary" else [])
    steps = [w for w in rollout.get("steps") or [] if isinstance(w, int)]
    if rollout.get("strategy") == "canary" and (not steps or steps[-1] != 100):
        steps.append(100)
    return steps or [100]


def skipped_steps(rollout: Mapping[str, Any]) -> list[int]:
    """Indexes of the steps an operator skipped (the judge never finished them)."""
    return sorted({s for s in rollout.get("skipped_steps") or [] if isinstance(s, int)})


def skipped_text(rollout: Mapping[str, Any]) -> str | None:
    """The skipped steps for people, numbered from 1 with their weights, or None."""
    skipped = skipped_steps(rollout)
    if not skipped:
        return None
    weights = stages(rollout)
    named = [f"{s + 1} ({weights[s]}%)" if s < len(weights) else str(s + 1) for s in skipped]
    word = "step" if len(named) == 1 else "steps"
    return f"{word} {', '.join(named)} skipped by an operator, not judged"


def _progress(rollout: Mapping[str, Any]) -> tuple[int, int]:
    """(stages done, stages in all) for the progress bar."""
    total = len(stages(rollout))
    phase = rollout.get("phase")
    step = rollout.get("step") if isinstance(rollout.get("step"), int) else 0
    if phase == "succeeded":
        return total, total
    if phase == "promoting":
        return total - 1, total
    if phase in ("pending", "preparing"):
        return 0, total
    return min(int(step or 0), total), total


def step_words(rollout: Mapping[str, Any]) -> str:
    """Where the rollout is, numbered from 1 as everywhere: 'step 2 of 3, then 100 %'."""
    weights = [w for w in rollout.get("steps") or [] if isinstance(w, int)] or [100]
    phase = rollout.get("phase")
    step = rollout.get("step") if isinstance(rollout.get("step"), int) else 0
    step = min(int(step or 0), len(weights) - 1)
    if rollout.get("strategy") == "ab":
        return f"A/B split at {weights[0]} %"
    if rollout.get("strategy") == "blue_green":
        return "blue/green"
    if phase == "succeeded":
        return f"all {len(weights)} steps done, at 100 %"
    if phase in ("pending", "preparing"):
        return f"before step 1 of {len(weights)} ({weights[0]} %)"
    after = f"{weights[step + 1]} %" if step + 1 < len(weights) else "100 %"
    return f"step {step + 1} of {len(weights)}, then {after}"


def next_summary(rollout: Mapping[str, Any]) -> str | None:
    following = rollout.get("next")
    if isinstance(following, dict) and following.get("summary"):
        return str(following["summary"])
    return None


def status_line(rollout: Mapping[str, Any]) -> str:
    """One line saying where a rollout is and what comes next (the non-interactive watch
    prints these)."""
    parts = [
        f"{rollout.get('id')}",
        f"{rollout.get('phase')}",
        step_words(rollout),
        f"candidate {rollout.get('candidate_weight', 0)} %",
    ]
    verdict = rollout.get("last_verdict")
    if isinstance(verdict, dict) and verdict.get("outcome"):
        said = verdict.get("summary")
        parts.append(f"verdict {verdict.get('outcome')}" + (f": {said}" if said else ""))
    skipped = skipped_text(rollout)
    if skipped:
        parts.append(skipped)
    parts.extend(
        f"{key.split('_')[0]}: {rollout[key]}"
        for key in ("pause_reason", "ending_reason")
        if rollout.get(key)
    )
    following = next_summary(rollout)
    if following and rollout.get("phase") not in TERMINAL_EXIT_CODES:
        parts.append(f"next: {following}")
    return " | ".join(parts)


def verdict_table(verdict: Mapping[str, Any], *, ab: bool = False) -> Table:
    # An A/B split's verdicts are its guards: they can stop it, the report picks the winner.
    what = "guard checks, last verdict" if ab else "last verdict"
    table = Table(title=f"{what}: {verdict.get('outcome', '?')}", title_justify="left")
    table.add_column("check")
    table.add_column("outcome")
    table.add_column("candidate", justify="right")
    table.add_column("n", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("n", justify="right")
    table.add_column("limit")
    for check in verdict.get("checks") or []:
        if not isinstance(check, dict):
            continue
        outcome = str(check.get("outcome", "?"))
        metric = str(check.get("metric") or "")
        style = {"pass": "green", "fail": "red"}.get(outcome, "yellow")
        table.add_row(
            str(check.get("check") or check.get("metric") or "?"),
            Text(outcome, style=style),
            metric_value(metric, check.get("candidate_value")),
            _count(check.get("candidate_n")),
            metric_value(metric, check.get("baseline_value")),
            _count(check.get("baseline_n")),
            str(check.get("limit") or ""),
        )
    return table


def rollout_view(rollout: Mapping[str, Any]) -> RenderableType:
    """A rollout for people: what, where it is, progress, and the last verdict's numbers."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    name = f" ({rollout['name']})" if rollout.get("name") else ""
    summary.add_row("rollout", f"{rollout.get('id')}{name}")
    summary.add_row("endpoint", str(rollout.get("endpoint")))
    summary.add_row(
        "strategy", f"{rollout.get('strategy')} with policy {rollout.get('policy')}"
    )
    summary.add_row(
        "candidate", f"{rollout.get('candidate')} vs baseline {rollout.get('baseline') or '-'}"
    )
    if rollout.get("candidate_source"):
        summary.add_row("from alias", f"candidate {rollout['candidate_source']}")
    phase = str(rollout.get("phase"))
    phase_style = {
        "succeeded": "bold green",
        "rolled_back": "bold red",
        "failed": "bold red",
        "aborted": "bold yellow",
        "paused": "yellow",
    }.get(phase, "bold cyan")
    summary.add_row("phase", Text(phase, style=phase_style))
    done, total = _progress(rollout)
    skipped = skipped_steps(rollout)
    weights = " → ".join(
        f"{w}% (skipped)" if i in skipped else f"{w}%" for i, w in enumerate(stages(rollout))
    )
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=total, completed=done, width=30),
        f"{step_words(rollout)} ({weights}); candidate now at "
        f"{rollout.get('candidate_weight')} %",
    )
    summary.add_row("progress", bar)
    following = next_summary(rollout)
    if following and phase not in TERMINAL_EXIT_CODES:
        summary.add_row("next", Text(following, style="cyan"))
    skipped_words = skipped_text(rollout)
    if skipped_words:
        summary.add_row("skipped", Text(skipped_words, style="yellow"))
    for key, label in (("pause_reason", "paused"), ("ending_reason", "ending")):
        if rollout.get(key):
            summary.add_row(label, str(rollout[key]))
    summary.add_row("started", _time(rollout.get("started_at")))
    summary.add_row("updated", _time(rollout.get("updated_at")))
    parts: list[RenderableType] = [summary]
    verdict = rollout.get("last_verdict")
    if isinstance(verdict, dict):
        if verdict.get("summary"):
            parts.append(Text(f"verdict: {verdict['summary']}"))
        parts.append(verdict_table(verdict, ab=rollout.get("strategy") == "ab"))
        if rollout.get("strategy") == "blue_green":
            parts.append(Text("baseline: the baseline's own windows over the warm-up at 0 % "
                              "(the control the bake is judged against)"))
        if verdict.get("reason"):
            parts.append(Text(f"judge: {verdict['reason']}"))
    report = rollout.get("report")
    if isinstance(report, dict):
        parts.append(ab_table(report))
    elif rollout.get("strategy") == "ab" and phase not in TERMINAL_EXIT_CODES:
        plan = _mapping(rollout.get("plan"))
        objective = str(plan.get("objective") or "latency_p99_ms")
        parts.append(Text(
            f"A/B report: written when the duration is over; the candidate wins if its "
            f"{metric_name(objective)} is clearly {plan.get('objective_direction') or 'lower'} "
            "(the whole 95 % interval on that side) and no guard check failed or leaned "
            "towards a regression"
        ))
    return Group(*parts)


def ab_table(report: Mapping[str, Any]) -> RenderableType:
    """The A/B report: objective and winner, each metric per arm with its 95 % interval."""
    objective = str(report.get("objective") or "?")
    direction = str(report.get("direction") or "lower")
    winner = str(report.get("winner") or "?")
    table = Table(
        title=f"A/B report: objective {metric_name(objective)} ({direction} is better); "
        f"winner: {winner}",
        title_justify="left",
    )
    for column in ("metric", "candidate", "baseline", "candidate vs baseline (95 % interval)"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in report.get("metrics") or []:
        if not isinstance(row, dict):
            continue
        metric = str(row.get("metric") or "?")
        table.add_row(
            metric_name(metric) + (" (objective)" if metric == objective else ""),
            metric_value(metric, row.get("candidate")),
            metric_value(metric, row.get("baseline")),
            ab_interval(row),
        )
    problems = [str(p) for p in report.get("guard_problems") or []]
    lines: list[RenderableType] = [table, Text(f"A/B: {report.get('summary', '')}")]
    if problems:
        lines.append(Text("guards: " + "; ".join(problems), style="yellow"))
    else:
        lines.append(Text("guards: none failed or leaned towards a regression", style="green"))
    return Group(*lines)


def ab_interval(row: Mapping[str, Any]) -> str:
    """A rate's difference in points, a latency's ratio, each with its 95 % interval."""
    interval = row.get("ci95")
    if not isinstance(interval, list) or len(interval) != 2:
        return "-"
    low, high = interval
    if not all(isinstance(x, int | float) for x in (low, high)):
        return "-"
    if "ratio" in row:
        ratio = row.get("ratio")
        shown = f"{ratio:.3g}x" if isinstance(ratio, int | float) else "-"
        return f"{shown} [{low:.3g}x, {high:.3g}x]"
    difference = row.get("difference")
    shown = f"{difference * 100:+.3g}" if isinstance(difference, int | float) else "-"
    return f"{shown} points [{low * 100:+.3g}, {high * 100:+.3g}]"


def rollouts_table(rollouts: Sequence[Mapping[str, Any]]) -> Table:
    table = Table()
    table.add_column("id", no_wrap=True)
    for column in ("endpoint", "strategy", "phase", "stage", "weight", "candidate", "created"):
        table.add_column(column, overflow="fold")
    for rollout in rollouts:
        done, total = _progress(rollout)
        table.add_row(
            str(rollout.get("id")),
            str(rollout.get("endpoint")),
            str(rollout.get("strategy")),
            str(rollout.get("phase")),
            f"{min(done + 1, total)} of {total}",
            f"{rollout.get('candidate_weight')}%",
            str(rollout.get("candidate")),
            _time(rollout.get("created_at"), "%Y-%m-%d %H:%M"),
        )
    return table


def events_table(events: Sequence[Mapping[str, Any]]) -> Table:
    table = Table()
    for column in ("seq", "at", "kind", "phase", "reason"):
        table.add_column(column, overflow="fold")
    for event in events:
        before, after = event.get("from_phase"), event.get("to_phase")
        phase = f"{before} → {after}" if before and after and before != after else after or ""
        table.add_row(
            str(event.get("seq")),
            _time(event.get("at")),
            str(event.get("kind")),
            str(phase),
            str(event.get("reason", "")),
        )
    return table


# ---- commands -------------------------------------------------------------------------------


class Session:
    """One command's connection and output: the API client, stdout and stderr consoles."""

    def __init__(self, server: str, token: str | None, output: Output) -> None:
        self.server = server
        self.token = token
        self.output = output
        self.out = Console(highlight=False)
        if not self.out.is_terminal:
            # Piped into a file or a pager: tables need not fit 80 columns.
            self.out.width = 160
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def client(self) -> ApiClient:
        return ApiClient(self.server, self.token)

    def print_json(self, data: object, *, compact: bool = False) -> None:
        text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2)
        self.line(text)

    def line(self, text: str) -> None:
        # Plain write: rich would wrap long lines, and scripts read these line by line.
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def fail(self, error: CliError) -> int:
        self.err.print(f"error: {error.message}", markup=False)
        for detail in error.details:
            self.err.print(f"  {detail}", markup=False)
        return error.exit_code

    def run(self, action: Callable[[ApiClient], int]) -> int:
        """Run ``action`` with a client; a ``CliError`` becomes its message and exit code."""
        try:
            with self.client() as client:
                return action(client)
        except CliError as error:
            return self.fail(error)


def read_plan(path: Path) -> tuple[bytes, str]:
    """The plan file's bytes and content type (``-`` reads standard input)."""
    if str(path) == "-":
        return sys.stdin.buffer.read(), "application/yaml"
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise CliError(
            f"cannot read {path}: {exc.strerror or exc}", exit_code=EXIT_USAGE
        ) from exc
    kind = "application/json" if path.suffix.lower() == ".json" else "application/yaml"
    return body, kind


def submit(session: Session, plan_file: Path) -> int:
    def action(client: ApiClient) -> int:
        body, kind = read_plan(plan_file)
        rollout = client.submit(body, kind)
        if session.output is Output.json:
            session.print_json(rollout)
        else:
            session.line(str(rollout.get("id")))
        # On stderr: a script reading the id from stdout still reads only the id.
        for warning in rollout.get("warnings") or []:
            session.err.print(f"warning: {warning}", markup=False)
        return 0

    return session.run(action)


def get(
    session: Session,
    rollout_id: str,
    *,
    watch: bool = False,
    interval: float = 2.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
) -> int:
    def action(client: ApiClient) -> int:
        if watch:
            return _watch(session, client, rollout_id, Poll(interval, timeout, sleep, now))
        rollout = client.get(rollout_id)
        if session.output is Output.json:
            session.print_json(rollout)
        else:
            session.out.print(rollout_view(rollout))
        return 0

    return session.run(action)


def wait(
    session: Session,
    rollout_id: str,
    phase: str,
    *,
    interval: float = 2.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
) -> int:
    """Poll until the rollout is in ``phase``: 0; else the codes of ``get --watch`` (and 8).

    Prints nothing but the rollout's id and phase when it stops (JSON: the rollout).
    """

    def action(client: ApiClient) -> int:
        def look(rollout: dict[str, Any]) -> int | None:
            code = _wait_code(str(rollout.get("phase")), phase)
            if code is None:
                return None
            if session.output is Output.json:
                session.print_json(rollout, compact=True)
            else:
                session.line(f"{rollout.get('id')} {rollout.get('phase')}")
            if code == EXIT_PAUSED:
                session.err.print(_paused_words(rollout), markup=False)
            return code

        return _follow(session, client, rollout_id, Poll(interval, timeout, sleep, now), look)

    return session.run(action)


def _wait_code(current: str, wanted: str) -> int | None:
    """The exit code once the rollout is in ``current``, or None to keep waiting."""
    if current == wanted:
        return 0
    if current == "succeeded":
        return EXIT_NOT_REACHED
    if current in TERMINAL_EXIT_CODES:
        return TERMINAL_EXIT_CODES[current]
    if current == PAUSED:
        return EXIT_PAUSED
    return None


class Poll:
    """How a watch paces itself: the interval, the optional timeout, and the injected
    ``sleep`` and monotonic ``now``."""

    def __init__(
        self,
        interval: float,
        timeout: float | None,
        sleep: Callable[[float], None],
        now: Callable[[], float],
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.sleep = sleep
        self.now = now

    def deadline(self) -> float | None:
        return None if self.timeout is None else self.now() + self.timeout

    def wait(self, deadline: float | None, seconds: float | None = None) -> bool:
        """Sleep ``seconds`` (the interval), cut short at the deadline; False once it passed."""
        pause = self.interval if seconds is None else seconds
        if deadline is not None:
            left = deadline - self.now()
            if left <= 0:
                return False
            pause = min(pause, left)
        self.sleep(pause)
        return True


def _retry(
    session: Session, error: CliError, failures: int, poll: Poll, deadline: float | None
) -> int | None:
    """After a failed poll: None to poll again (after a backoff), or the exit code."""
    if not error.retryable:
        raise error
    delay = min(poll.interval * 2 ** (failures - 1), max(_MAX_BACKOFF, poll.interval))
    if deadline is not None and poll.now() >= deadline:
        session.err.print(f"timed out: {error.message}", markup=False)
        return EXIT_TIMEOUT
    until = "" if deadline is None else " (until --timeout)"
    session.err.print(
        f"warning: {error.message}; retrying in {delay:.3g} s{until}", markup=False
    )
    poll.wait(deadline, delay)
    return None


def _paused_words(rollout: Mapping[str, Any]) -> str:
    why = rollout.get("pause_reason") or "paused"
    ref = rollout.get("id")
    return (
        f"rollout {ref} is paused ({why}) and waits for a person: "
        f"rollout resume {ref}, rollout promote {ref} or rollout abort {ref}"
    )


def _follow(
    session: Session,
    client: ApiClient,
    rollout_id: str,
    poll: Poll,
    look: Callable[[dict[str, Any]], int | None],
) -> int:
    """Poll the rollout, riding out failures, until ``look`` gives an exit code or the
    timeout passes (7)."""
    failures = 0
    deadline = poll.deadline()
    while True:
        try:
            rollout = client.get(rollout_id)
        except CliError as error:
            failures += 1
            code = _retry(session, error, failures, poll, deadline)
            if code is not None:
                return code
            continue
        if failures:
            session.err.print("the API answers again", markup=False)
            failures = 0
        code = look(rollout)
        if code is not None:
            return code
        if not poll.wait(deadline):
            session.err.print(
                f"timed out: rollout {rollout.get('id')} is still {rollout.get('phase')}",
                markup=False,
            )
            return EXIT_TIMEOUT


def _watch(session: Session, client: ApiClient, rollout_id: str, poll: Poll) -> int:
    """Poll until the rollout ends or waits for a person; the phase decides the exit code."""
    interactive = session.output is Output.table and session.out.is_terminal
    live = Live(console=session.out, auto_refresh=False) if interactive else None
    last_key: list[tuple[Any, ...]] = []

    def look(rollout: dict[str, Any]) -> int | None:
        if live is not None:
            live.update(rollout_view(rollout), refresh=True)
        elif not last_key or last_key[0] != _change_key(rollout):
            last_key[:] = [_change_key(rollout)]
            if session.output is Output.json:
                session.print_json(rollout, compact=True)
            else:
                stamp = datetime.now().astimezone().strftime("%H:%M:%S")
                session.line(f"{stamp} {status_line(rollout)}")
        phase = str(rollout.get("phase"))
        if phase in TERMINAL_EXIT_CODES:
            return TERMINAL_EXIT_CODES[phase]
        if phase == PAUSED:
            if live is not None:
                live.stop()
            session.err.print(_paused_words(rollout), markup=False)
            return EXIT_PAUSED
        return None

    if live is not None:
        live.start()
    try:
        return _follow(session, client, rollout_id, poll, look)
    finally:
        if live is not None:
            live.stop()


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _change_key(rollout: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes the watch print a line: a change of phase, step, split, verdict or stage,
    and each new minute of a countdown (bake, warm-up, A/B time), so a waiting rollout still
    says something at least once a look."""
    verdict = rollout.get("last_verdict")
    outcome = verdict.get("outcome") if isinstance(verdict, dict) else None
    following = _mapping(rollout.get("next"))
    left = next(
        (following[k] for k in ("warmup_left", "bake_left", "step_deadline_left")
         if isinstance(following.get(k), int | float) and following[k] > 0),
        None,
    )
    return (
        following.get("stage"),
        None if left is None else int(left // 60),
        rollout.get("phase"),
        rollout.get("step"),
        rollout.get("candidate_weight"),
        outcome,
        rollout.get("pause_reason"),
        rollout.get("ending_reason"),
    )


def list_rollouts(
    session: Session, *, endpoint: str | None, phases: Sequence[str], limit: int
) -> int:
    def action(client: ApiClient) -> int:
        rollouts = client.rollouts(endpoint, phases, limit)
        if session.output is Output.json:
            session.print_json({"rollouts": rollouts})
        elif not rollouts:
            session.err.print("no rollouts", markup=False)
        else:
            session.out.print(rollouts_table(rollouts))
        return 0

    return session.run(action)


def events(session: Session, rollout_id: str, *, after: int = 0) -> int:
    def action(client: ApiClient) -> int:
        found = client.events(rollout_id, after)
        if session.output is Output.json:
            session.print_json({"events": found})
        else:
            session.out.print(events_table(found))
        return 0

    return session.run(action)


def command(
    session: Session, rollout_id: str, action_name: str, body: Mapping[str, Any] | None = None
) -> int:
    def action(client: ApiClient) -> int:
        answer = client.command(rollout_id, action_name, body)
        if session.output is Output.json:
            session.print_json(answer)
            return 0
        queued = _mapping(answer.get("command"))
        rollout = _mapping(answer.get("rollout"))
        kind = str(queued.get("kind", action_name))
        session.out.print(
            f"{COMMAND_WORDS.get(kind, kind)}: accepted for rollout "
            f"{rollout.get('id', rollout_id)} ({rollout.get('phase', '?')}); the controller "
            "applies it at its next look (see rollout get or rollout events)",
            markup=False,
        )
        return 0

    return session.run(action)
