"""``rollout demo``: the whole product on one machine in under two minutes.

Where this sits: beside ``rollout serve``, as a guided tour. It starts a sandbox workspace
(2 s metric windows), a webhook receiver standing in for a team's alert channel, and a real
controller (``rollout.daemon``) on free loopback ports; creates an endpoint whose baseline
serves simulated traffic; then submits two canaries through the HTTP API, exactly as a user
would: a healthy candidate, which is promoted, and a regressed one, which is rolled back by
the analysis and alerted. It prints the progress as it happens and ends with a summary; then
everything stops, and it says so. With ``keep`` (``rollout demo --keep``) the sandbox and the
controller stay up until Ctrl-C or SIGTERM: it prints the status page's URL and a "try it
yourself" block (a plan file written for the demo endpoint, and the commands to submit, watch
and pause it and to make it regress through the sandbox's admin API). Exit code 0 only if both
outcomes happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console

from rollout.clock import SystemClock
from rollout.daemon import build, run
from rollout.sandbox.server import SandboxServer
from rollout.settings import (
    AlertSettings,
    ApiSettings,
    DatabricksSettings,
    EngineSettings,
    LogSettings,
    ServingSettings,
    Settings,
    StoreSettings,
)
from rollout.store.model import TERMINAL
from rollout.telemetry import configure_logging

ENDPOINT = "demo-endpoint"
BASELINE = "demo-model-1"
HEALTHY = "demo-model-2"
REGRESSED = "demo-model-3"
TRY_IT = "demo-model-4"  # the candidate of the plan --keep leaves for people to submit
WINDOW_SECONDS = 2.0
# Short bakes for 2 s windows; the demo policy checks 5xx and p99 against the baseline.
DEMO_POLICY: dict[str, Any] = {
    "name": "demo",
    "min_requests": 50,
    # The demo must not roll back its healthy model: a tenth of the default budget, still
    # far more evidence than the regressed model gives within a step.
    "false_rollback_rate": "0.1%",
    "checks": [
        {"metric": "error_rate", "compare": "baseline", "max_ratio": 2, "max_increase": "1%"},
        {"metric": "latency_p99_ms", "compare": "baseline", "max_ratio": 1.5},
    ],
    "on_no_data": "hold",
    "deadline": "5m",
    "on_deadline": "rollback",
}
# The last words without --keep: no URL, since nothing will answer at it.
FAREWELL = (
    "The sandbox and the controller stop now. To keep them running, with the status page, and "
    "try the commands yourself: rollout demo --keep"
)


@dataclass
class AlertInbox:
    """A webhook receiver on loopback that keeps what it is sent."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.alerts)


@contextlib.contextmanager
def alert_receiver() -> Iterator[tuple[str, AlertInbox]]:
    inbox = AlertInbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                body = {}
            with inbox.lock:
                inbox.alerts.append(body)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002
            # The base class's signature; the demo prints alerts its own way.
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="demo-alerts", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", inbox
    finally:
        server.shutdown()
        server.server_close()


def _settings(sandbox: SandboxServer, store_path: Path, hook_url: str) -> Settings:
    return Settings(
        databricks=DatabricksSettings(host=sandbox.url, token=sandbox.token),
        # The built-in PAT sign-in: the sandbox's token, whatever DATABRICKS_* or profiles the
        # user has around (databricks-sdk would also read those).
        serving=ServingSettings(
            update_poll_interval=0.25,
            retry_initial_backoff=0.1,
            metrics_window=WINDOW_SECONDS,
            auth_resolver="builtin",
        ),
        # 6 s bakes are short for a statistical pass; give each step up to a minute before it
        # would stop and wait for a person (what a real rollout does when evidence is thin).
        engine=EngineSettings(
            look_interval=0.5,
            update_poll=0.25,
            scan_interval=0.2,
            update_deadline=60,
            step_deadline_factor=10,
        ),
        store=StoreSettings(url=f"sqlite:///{store_path}"),
        api=ApiSettings(host="127.0.0.1", port=0),
        alerts=AlertSettings(
            channels=json.dumps([{"type": "webhook", "url": hook_url, "severity": "warn"}]),
            # The demo's receiver listens on this machine's loopback, which alerts may reach
            # only when allowed explicitly.
            allowed_hosts="127.0.0.1",
            poll_interval=0.2,
            initial_backoff=0.2,
        ),
        log=LogSettings(level="warning", format="json"),
    )


def _plan(version: str, name: str, *, label: str | None = None) -> dict[str, Any]:
    return {
        "name": label or f"demo {name}",
        "endpoint": ENDPOINT,
        "candidate": {
            "name": name,
            "entity_name": "main.demo.model",
            "entity_version": version,
            "workload_size": "Small",
            "scale_to_zero_enabled": False,
        },
        "strategy": "canary",
        # Each step's first three 2 s windows are its warm-up (served, not scored).
        "steps": [{"weight": 20, "bake": "12s"}, {"weight": 50, "bake": "12s"}],
        "policy": DEMO_POLICY,
    }


def _verdict_line(rollout: dict[str, Any]) -> str:
    verdict = rollout.get("last_verdict") or {}
    parts = []
    for check in verdict.get("checks", []):
        cand, base = check.get("candidate_value"), check.get("baseline_value")
        if cand is None or base is None:
            continue
        scale, unit = (100.0, "%") if check.get("metric") == "error_rate" else (1.0, "ms")
        parts.append(
            f"{check.get('metric')} {cand * scale:.3g}{unit} vs {base * scale:.3g}{unit} "
            f"({check.get('outcome')})"
        )
    return "; ".join(parts)


async def _watch(
    api: httpx.AsyncClient, rollout_id: str, console: Console, limit: float
) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    last = ""
    rollout: dict[str, Any] = {}
    while time.monotonic() < deadline:
        rollout = (await api.get(f"/api/v1/rollouts/{rollout_id}")).json()
        steps = rollout.get("steps") or []
        line = (
            f"  {rollout['phase']:<12} step {min(rollout['step'] + 1, len(steps))}/{len(steps)}"
            f"  candidate at {rollout['candidate_weight']:>3} %  {_verdict_line(rollout)}"
        )
        if line != last:
            console.print(line, highlight=False)
            last = line
        if rollout["phase"] in TERMINAL:
            return rollout
        await asyncio.sleep(0.5)
    return rollout


def _try_it(console: Console, controller_url: str, sandbox: SandboxServer, plan: Path) -> None:
    """What ``--keep`` prints: where to look, and commands to paste into another shell."""
    ref = f"{ENDPOINT}/try-it"
    profile = f"{sandbox.admin_url}/endpoints/{ENDPOINT}/profiles/{TRY_IT}"
    console.rule("still running: try it yourself")
    console.print(f"status page  {controller_url}/", highlight=False)
    console.print(f"API          {controller_url}/api/v1/rollouts", highlight=False)
    console.print(f"workspace    {sandbox.url} (sandbox, token {sandbox.token})", highlight=False)
    console.print(
        f"""
In another shell (a canary of {TRY_IT}, 20 % then 50 %, 12 s each: about 30 seconds):

  export ROLLOUT_SERVER={controller_url}
  rollout submit {plan}
  rollout get {ref} --watch        # exit 0 once promoted
  rollout pause {ref}              # while it progresses; then: rollout resume {ref}
  rollout events {ref}

Make {TRY_IT} answer 20 % of its requests with a 5xx before you submit, and it is rolled
back instead (rollout get --watch exits 3); the alert goes to the demo's webhook:

  curl -X PUT -H 'Content-Type: application/json' -d '{{"error_rate": 0.2}}' \\
    {profile}

After a rollback the plan can be submitted again; once it is promoted, {TRY_IT} serves
the endpoint alone. Press Ctrl-C here to stop everything.""",
        highlight=False,
        markup=False,
    )


async def _tour(
    console: Console,
    sandbox: SandboxServer,
    hook_url: str,
    inbox: AlertInbox,
    workdir: Path,
    *,
    keep: bool = False,
) -> bool:
    settings = _settings(sandbox, workdir / "demo.db", hook_url)
    controller = build(settings, clock=SystemClock())
    listening = asyncio.Event()
    task = asyncio.create_task(run(controller, on_listening=lambda _url: listening.set()))
    await asyncio.wait_for(listening.wait(), timeout=20)
    outcomes: dict[str, str] = {}
    try:
        async with httpx.AsyncClient(base_url=controller.url, timeout=10) as api:
            console.print(f"controller  {controller.url}  (API /api/v1, metrics /metrics)")
            for name, version, expect in (
                (HEALTHY, "2", "succeeded"),
                (REGRESSED, "3", "rolled_back"),
            ):
                console.rule(f"canary of {name} (expected: {expect.replace('_', ' ')})")
                response = await api.post("/api/v1/rollouts", json=_plan(version, name))
                if response.status_code != 201:
                    console.print(f"[red]submission refused: {response.text}")
                    return False
                rollout = await _watch(api, response.json()["id"], console, limit=100)
                outcomes[name] = rollout.get("phase", "unknown")
                colour = "green" if outcomes[name] == expect else "red"
                console.print(
                    f"[{colour}]{name}: {outcomes[name]}[/]  {rollout.get('ending_reason') or ''}",
                    highlight=False,
                )
            await asyncio.sleep(1.0)  # let the dispatcher deliver the rollback alert
            rollbacks = [a for a in inbox.received() if a.get("event") == "rolled_back"]
            console.rule("alerts")
            for alert in rollbacks:
                console.print(f"[yellow]ALERT[/] {alert.get('summary')}", highlight=False)
            if not rollbacks:
                console.print("[red]no rollback alert arrived at the webhook")
            console.rule("summary")
            ok = outcomes == {HEALTHY: "succeeded", REGRESSED: "rolled_back"} and bool(rollbacks)
            console.print("[green]demo passed[/]" if ok else "[red]demo failed[/]")
        if keep:
            plan = workdir / "try-canary.yaml"
            plan.write_text(yaml.safe_dump(_plan("4", TRY_IT, label="try-it"), sort_keys=False))
            _try_it(console, controller.url, sandbox, plan)
            # Until Ctrl-C or SIGTERM: the controller's own handlers end ``run``.
            await task
            console.print("\nstopped: the controller and the sandbox are gone", highlight=False)
        else:
            console.print(FAREWELL, highlight=False)
        return ok
    finally:
        controller.stopping.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=30)


def main(console: Console | None = None, *, keep: bool = False) -> int:
    console = console or Console()
    # The tour prints its own story; the controller's logs only speak up about problems.
    configure_logging(LogSettings(level="warning", format="console"))
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(
            SandboxServer(
                clock=SystemClock(), seed=42, window_seconds=WINDOW_SECONDS, update_seconds=1.0
            )
        )
        hook_url, inbox = stack.enter_context(alert_receiver())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rollout-demo-")))
        admin = stack.enter_context(httpx.Client(base_url=sandbox.admin_url, timeout=10))
        response = admin.post(
            "/endpoints",
            json={
                "name": ENDPOINT,
                "served_entities": [
                    {
                        "name": BASELINE,
                        "entity_name": "main.demo.model",
                        "entity_version": "1",
                        "workload_size": "Small",
                        "scale_to_zero_enabled": False,
                    }
                ],
                "profiles": {
                    BASELINE: {"error_rate": 0.002, "latency_p50_ms": 40, "latency_p99_ms": 150},
                    HEALTHY: {"error_rate": 0.002, "latency_p50_ms": 38, "latency_p99_ms": 140},
                    REGRESSED: {"error_rate": 0.12, "latency_p50_ms": 45, "latency_p99_ms": 400},
                    TRY_IT: {"error_rate": 0.002, "latency_p50_ms": 40, "latency_p99_ms": 150},
                },
                "qps": 600,
            },
        )
        if response.status_code != 201:
            console.print(f"[red]could not create the demo endpoint: {response.text}")
            return 1
        console.print(
            f"sandbox workspace {sandbox.url}: {ENDPOINT} serves {BASELINE} "
            "at 600 req/s (simulated)"
        )
        ok = asyncio.run(_tour(console, sandbox, hook_url, inbox, workdir, keep=keep))
    return 0 if ok else 1
