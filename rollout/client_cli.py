"""The CLI's side of the HTTP API: requests, error messages and what people see.

Where this sits: users submit plans and steer rollouts through the controller's HTTP API; the
engine acts on the stored rollouts and queued commands. ``rollout submit/get/list/events/
pause/resume/promote/abort`` (``rollout.cli`` maps their flags) call the functions at the end
of this module, which talk to the API with ``ApiClient`` and render with rich: a table or a
live view for people, JSON for scripts. Every failure (the API cannot be reached, it refused
the request, the plan is invalid) becomes a ``CliError``: one clear line on stderr (plus the
invalid fields of a plan) and a non-zero exit code, never a traceback.

Exit codes: 0 success (and, for ``get --watch``, ``succeeded``); 1 the request failed; 2 the
command line or the plan file could not be used; with ``--watch``: 3 ``rolled_back``,
4 ``failed``, 5 ``aborted``.
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

DEFAULT_SERVER = "http://127.0.0.1:8080"
TERMINAL_EXIT_CODES: dict[str, int] = {
    "succeeded": 0,
    "rolled_back": 3,
    "failed": 4,
    "aborted": 5,
}
EXIT_ERROR = 1
EXIT_USAGE = 2
# Consecutive failed polls a watch sits through (a daemon restarting) before giving up.
_WATCH_RETRIES = 5
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
        headers = {"User-Agent": f"rollout-cli/{__version__}", "Accept": "application/json"}
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


def status_line(rollout: Mapping[str, Any]) -> str:
    """One line saying where a rollout is (the non-interactive watch prints these)."""
    done, total = _progress(rollout)
    parts = [
        f"{rollout.get('id')}",
        f"{rollout.get('phase')}",
        f"stage {min(done + 1, total)} of {total}",
        f"candidate {rollout.get('candidate_weight', 0)}%",
    ]
    verdict = rollout.get("last_verdict")
    if isinstance(verdict, dict) and verdict.get("outcome"):
        parts.append(f"verdict {verdict.get('outcome')}")
    skipped = skipped_text(rollout)
    if skipped:
        parts.append(skipped)
    parts.extend(
        f"{key.split('_')[0]}: {rollout[key]}"
        for key in ("pause_reason", "ending_reason")
        if rollout.get(key)
    )
    return " | ".join(parts)


def verdict_table(verdict: Mapping[str, Any]) -> Table:
    table = Table(title=f"last verdict: {verdict.get('outcome', '?')}", title_justify="left")
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
        style = {"pass": "green", "fail": "red"}.get(outcome, "yellow")
        table.add_row(
            str(check.get("check") or check.get("metric") or "?"),
            Text(outcome, style=style),
            _number(check.get("candidate_value")),
            _count(check.get("candidate_n")),
            _number(check.get("baseline_value")),
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
        f"stage {min(done + 1, total)} of {total} ({weights}); candidate now at "
        f"{rollout.get('candidate_weight')}%",
    )
    summary.add_row("progress", bar)
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
        parts.append(verdict_table(verdict))
        if verdict.get("reason"):
            parts.append(Text(f"why: {verdict['reason']}"))
    return Group(*parts)


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
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    def action(client: ApiClient) -> int:
        if watch:
            return _watch(session, client, rollout_id, interval, sleep)
        rollout = client.get(rollout_id)
        if session.output is Output.json:
            session.print_json(rollout)
        else:
            session.out.print(rollout_view(rollout))
        return 0

    return session.run(action)


def _watch(
    session: Session,
    client: ApiClient,
    rollout_id: str,
    interval: float,
    sleep: Callable[[float], None],
) -> int:
    """Poll until the rollout ends; its terminal phase decides the exit code."""
    interactive = session.output is Output.table and session.out.is_terminal
    failures = 0
    last_key: tuple[Any, ...] | None = None
    live = Live(console=session.out, auto_refresh=False) if interactive else None
    if live is not None:
        live.start()
    try:
        while True:
            try:
                rollout = client.get(rollout_id)
            except CliError as error:
                failures += 1
                if not error.retryable or failures > _WATCH_RETRIES:
                    raise
                session.err.print(f"warning: {error.message}; retrying", markup=False)
                sleep(interval)
                continue
            failures = 0
            if live is not None:
                live.update(rollout_view(rollout), refresh=True)
            else:
                key = _change_key(rollout)
                if key != last_key:
                    last_key = key
                    if session.output is Output.json:
                        session.print_json(rollout, compact=True)
                    else:
                        stamp = datetime.now().astimezone().strftime("%H:%M:%S")
                        session.line(f"{stamp} {status_line(rollout)}")
            phase = str(rollout.get("phase"))
            if phase in TERMINAL_EXIT_CODES:
                return TERMINAL_EXIT_CODES[phase]
            sleep(interval)
    finally:
        if live is not None:
            live.stop()


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _change_key(rollout: Mapping[str, Any]) -> tuple[Any, ...]:
    verdict = rollout.get("last_verdict")
    outcome = verdict.get("outcome") if isinstance(verdict, dict) else None
    return (
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
        session.out.print(
            f"{queued.get('kind', action_name)} queued for rollout {rollout.get('id', rollout_id)}"
            f" (command {queued.get('id', '?')}, now {rollout.get('phase', '?')}); "
            "the engine applies it at its next look",
            markup=False,
        )
        return 0

    return session.run(action)
