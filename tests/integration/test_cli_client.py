"""The CLI's API commands against the API served by uvicorn on a loopback port (its serving
client on the sandbox, a real SQLite store): submit, list, get (and --watch), events and the
commands, their JSON output, exit codes, and one-line errors."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
import yaml
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from rich.console import Console
from typer.testing import CliRunner

from rollout import client_cli
from rollout.alerts.targets import TargetPolicy
from rollout.api import create_api
from rollout.api.server import server_config
from rollout.cli import app
from rollout.engine.runner import new_rollout
from rollout.plan import resolve_policy, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.retry import RetryPolicy
from rollout.settings import ApiSettings
from rollout.store.base import Store
from rollout.store.model import NewEvent

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "ads"
OPERATOR = "cli-operator-token"
VIEWER = "cli-viewer-token"

PLAN = f"""\
name: ads-v4
endpoint: {ENDPOINT}
candidate: {{entity_name: main.ml.ads_model, entity_version: "4", workload_size: Small}}
strategy: canary
steps:
  - {{weight: 5, bake: 10m}}
  - {{weight: 25, bake: 10m}}
policy: default
"""

VERDICT = {
    "outcome": "inconclusive",
    "reason": "fewer than 200 requests on the candidate",
    "checks": [
        {"check": "error_rate vs baseline", "metric": "error_rate", "outcome": "pass",
         "candidate_value": 0.00213, "baseline_value": 0.00187, "candidate_n": 4321.0,
         "baseline_n": 81234.0, "limit": "at most 2x the baseline"},
        {"check": "latency_p99_ms vs baseline", "metric": "latency_p99_ms",
         "outcome": "inconclusive", "candidate_value": 131.5, "baseline_value": 120.25,
         "candidate_n": 4321.0, "baseline_n": 81234.0, "limit": "ratio at most 1.25"},
    ],
}


class ApiServer:
    """The API under uvicorn in a thread with its own event loop (as the daemon serves it)."""

    def __init__(
        self,
        sandbox: SandboxServer,
        store: Store,
        tokens: str | None = None,
        alert_targets: TargetPolicy | None = None,
        settings: ApiSettings | None = None,
    ) -> None:
        """``settings``: served as the daemon serves them (``server_config``), tokens
        included; otherwise ``tokens`` on a plain uvicorn."""
        self.settings = settings
        self.sandbox = sandbox
        self.store = store
        self.tokens = tokens
        self.alert_targets = alert_targets
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    async def _serve(self) -> None:
        # The serving client's connections belong to this loop: build it here.
        async with ServingClient(
            self.sandbox.url,
            PatAuth(self.sandbox.token),
            clock=self.sandbox.clock,
            retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=5),
        ) as client:
            api = create_api(
                store=self.store,
                client=client,
                clock=self.sandbox.clock,
                library=PolicyLibrary(),
                registry=CollectorRegistry(),
                settings=self.settings or ApiSettings(
                    tokens=SecretStr(self.tokens) if self.tokens else None
                ),
                alert_targets=self.alert_targets,
            )
            if self.settings is not None:
                config = server_config(api, self.settings)
            else:
                config = uvicorn.Config(
                    api, log_level="warning", access_log=False, lifespan="off"
                )
            self._server = uvicorn.Server(config)
            self._ready.set()
            await self._server.serve(sockets=[self._sock])

    def __enter__(self) -> ApiServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        deadline = time.monotonic() + 10
        while self._server is None or not self._server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> Iterator[None]:
    # structlog's default writes to whatever sys.stdout is when a line is logged; the API's
    # thread would write into the output CliRunner captures from the command under test.
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    yield
    structlog.configure(**saved)


@pytest.fixture
def endpoint(sandbox_admin: httpx.Client) -> str:
    response = sandbox_admin.post(
        "/endpoints",
        json={
            "name": ENDPOINT,
            "served_entities": [{"name": "ads-3", "entity_name": "main.ml.ads_model",
                                 "entity_version": "3", "workload_size": "Small"}],
            "qps": 10,
        },
    )
    assert response.status_code == 201, response.text
    return ENDPOINT


@pytest.fixture
def server(sandbox: SandboxServer, store: Store, endpoint: str) -> Iterator[ApiServer]:
    with ApiServer(sandbox, store) as running:
        yield running


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner(env=env).invoke(app, list(args))


def submitted(server: ApiServer, plan_file: Path) -> str:
    result = cli("submit", str(plan_file), "--server", server.url)
    assert result.exit_code == 0, result.output
    return str(result.stdout.strip())


def move(store: Store, rollout_id: str, phase: str, **state: Any) -> None:
    record = store.get(rollout_id)
    store.commit(
        rollout_id,
        record.version,
        phase=phase,
        state={**record.state, "phase": phase, **state},
        due_at=None,
        updated_at=record.updated_at + 1,
        events=[NewEvent("phase", record.phase, phase, f"moved to {phase} by the test", {},
                         record.updated_at + 1)],
        alerts=[],
        consumed_commands=[],
    )


def assert_one_line_error(result: Any, *words: str) -> None:
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], lines[0]


# ---- submit ----------------------------------------------------------------------------------


def test_submit_prints_the_id_and_json_on_request(
    server: ApiServer, store: Store, plan_file: Path, tmp_path: Path
) -> None:
    rollout_id = submitted(server, plan_file)
    assert store.get(rollout_id).phase == "pending"
    move(store, rollout_id, "aborted")

    as_json = tmp_path / "plan.json"
    as_json.write_text(json.dumps({
        "endpoint": ENDPOINT, "strategy": "ab", "duration": "1h", "split": 20,
        "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "5"},
    }))
    result = cli("submit", str(as_json), "--server", server.url, "--output", "json")
    assert result.exit_code == 0, result.output
    rollout = json.loads(result.stdout)
    assert (rollout["strategy"], rollout["steps"], rollout["phase"]) == ("ab", [20], "pending")
    assert store.get(rollout["id"]).plan["split"] == 20


def test_submit_warns_of_low_traffic_on_stderr(
    server: ApiServer, store: Store, sandbox: SandboxServer, sandbox_admin: httpx.Client,
    plan_file: Path,
) -> None:
    response = sandbox_admin.put(f"/endpoints/{ENDPOINT}/load", json={"qps": 0.4})
    assert response.status_code == 200, response.text
    sandbox.clock.advance(60)  # type: ignore[attr-defined]  # a FakeClock
    result = cli("submit", str(plan_file), "--server", server.url)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1, "stdout holds the id alone"
    warning = result.stderr.strip().splitlines()[0]
    assert warning.startswith(f"warning: low traffic: {ENDPOINT} served "), warning
    assert "below min_requests 50: expect the rollout to pause for a person" in warning
    move(store, result.stdout.strip(), "aborted")
    as_json = cli("submit", str(plan_file), "--server", server.url, "-o", "json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["warnings"][0] == warning.removeprefix("warning: ")


def test_an_invalid_plan_lists_each_field(server: ApiServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoint: 'bad name!'\nstrategy: canary\ncandidate: {entity_name: m}\n"
                   "steps: [{weight: 0, bake: 1m}]\n")
    result = cli("submit", str(bad), "--server", server.url)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: the plan is invalid (3 problems):"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "candidate.entity_version", "endpoint", "steps[0].weight"
    ]


def test_submit_errors_are_one_line(server: ApiServer, plan_file: Path, tmp_path: Path) -> None:
    assert_one_line_error(cli("submit", str(tmp_path / "missing.yaml"), "--server", server.url),
                          "cannot read", "missing.yaml")
    first = submitted(server, plan_file)
    busy = cli("submit", str(plan_file), "--server", server.url)
    assert_one_line_error(busy, "held by rollout " + first, "[rollout_active]")
    assert busy.exit_code == 1
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(PLAN.replace(f"endpoint: {ENDPOINT}", "endpoint: nowhere"))
    assert_one_line_error(cli("submit", str(elsewhere), "--server", server.url),
                          "does not exist", "[endpoint_not_found]")


# ---- reading ---------------------------------------------------------------------------------


def test_list_get_and_events(server: ApiServer, store: Store, plan_file: Path) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "progressing", step=1, candidate_weight=25, baseline="ads-3",
         last_verdict=VERDICT)

    listed = cli("list", "--server", server.url)
    assert listed.exit_code == 0, listed.output
    assert rollout_id in listed.stdout
    assert "progressing" in listed.stdout
    as_json = json.loads(cli("list", "--server", server.url, "-o", "json").stdout)
    assert [r["id"] for r in as_json["rollouts"]] == [rollout_id]
    none = cli("list", "--server", server.url, "--phase", "succeeded", "-o", "json")
    assert json.loads(none.stdout) == {"rollouts": []}
    other = cli("list", "--server", server.url, "--endpoint", "other", "--phase", "progressing")
    assert other.exit_code == 0
    assert rollout_id not in other.stdout
    bad_phase = cli("list", "--server", server.url, "--phase", "finished")
    assert_one_line_error(bad_phase, "phase")

    shown = cli("get", rollout_id, "--server", server.url)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    for expected in ("progressing", "ads_model-4", "ads-3", "step 2 of 2, then 100 %",
                     "5% → 25% → 100%", "candidate now at 25 %", "error_rate vs baseline",
                     "0.213 %", "0.187 %", "4,321", "81,234", "132 ms", "inconclusive",
                     "fewer than 200 requests"):
        assert expected in text, (expected, text)
    as_json = json.loads(cli("get", rollout_id, "--server", server.url, "-o", "json").stdout)
    assert as_json["last_verdict"]["checks"][1]["baseline_value"] == 120.25

    logged = cli("events", rollout_id, "--server", server.url)
    assert logged.exit_code == 0, logged.output
    assert "submitted" in logged.stdout
    assert "pending → progressing" in logged.stdout
    events = json.loads(cli("events", rollout_id, "--server", server.url, "-o", "json",
                            "--after", "1").stdout)["events"]
    assert [(e["seq"], e["to_phase"]) for e in events] == [(2, "progressing")]

    assert_one_line_error(cli("get", "nope", "--server", server.url), "no rollout has the id")
    assert_one_line_error(cli("events", "nope", "--server", server.url), "'nope'")


AB_REPORT = {
    "objective": "latency_p99_ms", "direction": "lower", "winner": "candidate",
    "summary": "latency_p99_ms: candidate 110 vs baseline 130, ratio 95% CI [0.8, 0.95]; "
               "candidate wins",
    "metrics": [
        {"metric": "latency_p99_ms", "candidate": 110.0, "baseline": 130.0, "ratio": 0.846,
         "ci95": [0.8, 0.95], "candidate_n": 5000.0, "baseline_n": 5000.0},
        {"metric": "error_rate", "candidate": 0.002, "baseline": 0.003, "difference": -0.001,
         "ci95": [-0.0025, 0.0004], "candidate_n": 5000.0, "baseline_n": 5000.0},
    ],
    "guard_problems": [],
}


def test_get_says_what_happens_next_with_units(
    server: ApiServer, store: Store, plan_file: Path
) -> None:
    rollout_id = submitted(server, plan_file)
    now = server.sandbox.clock.now()
    move(store, rollout_id, "progressing", step=0, candidate_weight=5, baseline="ads-3",
         step_started_at=now - 240, split_applied_at=now - 240, last_verdict=VERDICT)
    shown = cli("get", rollout_id, "--server", server.url)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    for expected in ("next step 1 of 2, candidate at 5 %: bake 6m left; then step 2 of 2: 25 %",
                     "step 1 of 2, then 25 %", "0.213 %", "132 ms"):
        assert expected in text, (expected, text)
    as_json = json.loads(cli("get", rollout_id, "--server", server.url, "-o", "json").stdout)
    assert as_json["next"]["bake_left"] == 360.0
    assert as_json["next"]["step"] == 1


def test_get_shows_an_ab_rollout_as_ab(
    server: ApiServer, store: Store, tmp_path: Path
) -> None:
    plan = tmp_path / "ab.yaml"
    plan.write_text(PLAN.replace("strategy: canary", "strategy: ab\nsplit: 50\nduration: 30m")
                    .split("steps:")[0] + "policy: default\n")
    rollout_id = submitted(server, plan)
    move(store, rollout_id, "progressing", step=0, candidate_weight=50, baseline="ads-3",
         step_started_at=server.sandbox.clock.now() - 600, last_verdict=VERDICT)
    before = " ".join(cli("get", rollout_id, "--server", server.url).stdout.split())
    for expected in ("A/B duration 20m left", "A/B report: written when the duration is over",
                     "p99 latency is clearly lower"):
        assert expected in before, (expected, before)
    move(store, rollout_id, "promoting", report=AB_REPORT)
    shown = cli("get", rollout_id, "--server", server.url)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    for expected in ("A/B report: objective p99 latency (lower is better); winner: candidate",
                     "p99 latency (objective)", "110 ms", "130 ms", "0.846x [0.8x, 0.95x]",
                     "5xx rate", "0.2 %", "0.3 %", "-0.1 points [-0.25, +0.04]",
                     "guard checks, last verdict",
                     "guards: none failed", "A/B split at 50 %"):
        assert expected in text, (expected, text)


def test_steps_an_operator_skipped_are_shown_as_skipped(
    server: ApiServer, store: Store, plan_file: Path
) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "succeeded", step=1, candidate_weight=100, baseline="ads-3",
         skipped_steps=[1])

    shown = cli("get", rollout_id, "--server", server.url)
    assert shown.exit_code == 0, shown.output
    assert "5% → 25% (skipped) → 100%" in shown.stdout, shown.stdout
    assert "step 2 (25%) skipped by an operator, not judged" in shown.stdout
    assert "passed" not in shown.stdout
    as_json = json.loads(cli("get", rollout_id, "--server", server.url, "-o", "json").stdout)
    assert as_json["skipped_steps"] == [1]
    watched = cli("get", rollout_id, "--watch", "--server", server.url)
    assert watched.exit_code == 0, watched.output
    assert "step 2 (25%) skipped by an operator" in watched.stdout


# ---- commands --------------------------------------------------------------------------------


def test_commands_are_queued(server: ApiServer, store: Store, plan_file: Path) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "progressing", step=0, candidate_weight=5)
    paused = cli("pause", rollout_id[:6], "--reason", "checking a dashboard", "--server",
                 server.url)
    assert paused.exit_code == 0, paused.output
    assert f"pause: accepted for rollout {rollout_id} (progressing)" in paused.stdout
    promoted = cli("promote", rollout_id, "--full", "--server", server.url)
    assert promoted.exit_code == 0, promoted.output
    assert "promote to 100 %: accepted" in promoted.stdout
    assert "promote_full" not in promoted.stdout
    as_json = cli("promote", f"{ENDPOINT}/ads-v4", "--server", server.url, "-o", "json")
    assert json.loads(as_json.stdout)["command"]["kind"] == "promote"
    assert cli("abort", rollout_id, "--reason", "wrong model", "--server", server.url
               ).exit_code == 0
    pending = store.pending_commands(rollout_id)
    assert [(c.kind, c.payload) for c in pending] == [
        ("pause", {"reason": "checking a dashboard"}),
        ("promote_full", {}),
        ("promote", {}),
        ("abort", {"reason": "wrong model"}),
    ]
    move(store, rollout_id, "aborted")
    assert_one_line_error(cli("pause", rollout_id, "--server", server.url),
                          "has finished (aborted)")


def test_a_command_the_phase_does_not_take_is_refused_plainly(
    server: ApiServer, store: Store, plan_file: Path
) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "progressing", step=0, candidate_weight=5)
    refused = cli("resume", rollout_id, "--server", server.url)
    assert refused.exit_code == 1
    assert_one_line_error(refused, f"rollout {rollout_id} is progressing: resume does not apply",
                          "it takes pause, promote, abort")
    assert "[" not in refused.stderr  # no internal code
    assert cli("pause", rollout_id, "--server", server.url).exit_code == 0
    twice = cli("pause", rollout_id, "--server", server.url)
    assert_one_line_error(twice, "already has this command queued")
    assert [c.kind for c in store.pending_commands(rollout_id)] == ["pause"]


def _stored(store: Store, rollout_id: str, phase: str) -> None:
    plan = validate_plan(yaml.safe_load(PLAN))
    record, event = new_rollout(plan, resolve_policy(plan, PolicyLibrary()), 1.0e9, rollout_id)
    store.create(record, event, [])
    move(store, rollout_id, phase)


def test_rollouts_are_named_by_prefix_or_endpoint_and_name_in_the_cli(
    server: ApiServer, store: Store
) -> None:
    _stored(store, "cafe10000001", "rolled_back")
    _stored(store, "cafe20000002", "progressing")
    by_name = cli("get", f"{ENDPOINT}/ads-v4", "--server", server.url, "-o", "json")
    assert by_name.exit_code == 0, by_name.output
    assert json.loads(by_name.stdout)["id"] == "cafe20000002"  # the active one of the two
    events = cli("events", "cafe10000001", "--server", server.url, "-o", "json")
    assert events.exit_code == 0, events.output
    assert json.loads(events.stdout)["events"]
    by_prefix = cli("get", "cafe1", "--server", server.url, "-o", "json")
    assert json.loads(by_prefix.stdout)["id"] == "cafe10000001"
    assert_one_line_error(cli("pause", "cafe", "--server", server.url), "'cafe' names 2 rollouts",
                          "cafe10000001 (ads, rolled_back)", "cafe20000002 (ads, progressing)")
    assert store.pending_commands("cafe20000002") == []
    move(store, "cafe20000002", "succeeded")
    assert_one_line_error(cli("get", f"{ENDPOINT}/ads-v4", "--server", server.url),
                          "names 2 rollouts", "cafe10000001", "cafe20000002")
    assert_one_line_error(cli("get", f"{ENDPOINT}/nope", "--server", server.url),
                          "no rollout named 'nope'")


def test_tokens_from_the_flag_or_the_environment(
    sandbox: SandboxServer, store: Store, endpoint: str, plan_file: Path
) -> None:
    with ApiServer(sandbox, store, tokens=f"{OPERATOR}:operator,{VIEWER}:viewer") as secured:
        assert_one_line_error(cli("list", "--server", secured.url), "--token or ROLLOUT_TOKEN",
                              "[unauthenticated]")
        viewer_submit = cli("submit", str(plan_file), "--server", secured.url, "--token", VIEWER)
        assert_one_line_error(viewer_submit, "operator role required", "[forbidden]")
        env = {"ROLLOUT_SERVER": secured.url, "ROLLOUT_TOKEN": OPERATOR}
        created = cli("submit", str(plan_file), env=env)
        assert created.exit_code == 0, created.output
        listed = cli("list", "--token", VIEWER, env={"ROLLOUT_SERVER": secured.url})
        assert created.stdout.strip() in listed.stdout
        assert OPERATOR not in viewer_submit.output + listed.output


# ---- watching --------------------------------------------------------------------------------


class CountingStore:
    """The store, counting reads of one rollout: tells the test when the watcher has looked."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.gets = 0

    def get(self, rollout_id: str) -> Any:
        self.gets += 1
        return self._inner.get(rollout_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def wait_for_gets(self, count: int) -> None:
        deadline = time.monotonic() + 20
        while self.gets < count:
            assert time.monotonic() < deadline, "the watcher stopped looking"
            time.sleep(0.005)


@pytest.mark.parametrize(
    ("ending", "code"), [("succeeded", 0), ("rolled_back", 3), ("failed", 4), ("aborted", 5)]
)
def test_watch_exits_with_the_outcome(
    sandbox: SandboxServer, store: Store, endpoint: str, plan_file: Path, *, ending: str,
    code: int
) -> None:
    counting = CountingStore(store)
    with ApiServer(sandbox, counting) as server:  # type: ignore[arg-type]
        rollout_id = submitted(server, plan_file)

        def drive() -> None:
            # Each change waits until the watcher has looked at the previous state.
            counting.wait_for_gets(1)
            move(store, rollout_id, "progressing", step=0, candidate_weight=5,
                 last_verdict=VERDICT)
            counting.wait_for_gets(counting.gets + 1)
            move(store, rollout_id, ending, ending_reason=f"the test ended it as {ending}")

        driver = threading.Thread(target=drive)
        driver.start()
        try:
            result = cli("get", rollout_id, "--watch", "--interval", "0.02", "--server",
                         server.url)
        finally:
            driver.join()
    assert result.exit_code == code, result.output
    lines = result.stdout.strip().splitlines()
    phases = [line.split(" | ")[1] for line in lines]
    assert phases == ["pending", "progressing", ending], lines
    assert "verdict inconclusive" in lines[1]
    assert f"ending: the test ended it as {ending}" in lines[2]


def test_watch_as_json_lines(server: ApiServer, store: Store, plan_file: Path) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "rolled_back")
    result = cli("get", rollout_id, "-w", "-o", "json", "--server", server.url)
    assert result.exit_code == 3
    documents = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [d["phase"] for d in documents] == ["rolled_back"]


def test_watch_on_a_terminal_shows_a_live_view(
    server: ApiServer, store: Store, plan_file: Path
) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "progressing", step=1, candidate_weight=25, last_verdict=VERDICT)
    session = client_cli.Session(server.url, None, client_cli.Output.table)
    screen = io.StringIO()
    session.out = Console(file=screen, force_terminal=True, width=120, color_system=None)
    looks = []

    def sleep(_seconds: float) -> None:
        looks.append(store.get(rollout_id).phase)
        move(store, rollout_id, "failed", ending_reason="baseline could not be restored")

    assert client_cli.get(session, rollout_id, watch=True, interval=1.0, sleep=sleep) == 4
    assert looks == ["progressing"]
    text = screen.getvalue()
    for expected in ("progressing", "failed", "baseline could not be restored", "0.213 %",
                     "81,234", "step 2 of 2, then 100 %"):
        assert expected in text, expected


def test_watch_says_what_comes_next_during_a_warm_up(
    server: ApiServer, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A blue/green warm-up at 0 % changes no phase, step, split or verdict for minutes: the
    # watch still prints a line each minute of the countdown, each saying what comes next.
    plan = tmp_path / "bg.yaml"
    plan.write_text(PLAN.replace("strategy: canary", "strategy: blue_green\nbake: 10m\n"
                                 "warmup: 5m").split("steps:")[0] + "policy: default\n")
    rollout_id = submitted(server, plan)
    clock = server.sandbox.clock
    move(store, rollout_id, "preparing", baseline="ads-3", split_applied_at=clock.now(),
         preflight_passed=True)
    capsys.readouterr()
    session = client_cli.Session(server.url, None, client_cli.Output.table)
    sleeps = []

    def sleep(_seconds: float) -> None:
        sleeps.append(clock.now())
        clock.advance(20)
        if len(sleeps) == 12:
            move(store, rollout_id, "succeeded", candidate_weight=100)

    assert client_cli.get(session, rollout_id, watch=True, interval=20, sleep=sleep) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    left = [re.search(r"next: warm-up at 0 %: (\S+) left", line) for line in lines[:-1]]
    assert [m.group(1) if m else line for m, line in zip(left, lines, strict=False)] == [
        "5m", "4m40s", "3m40s", "2m40s", "1m40s"], lines
    assert "succeeded" in lines[-1]
    assert "next:" not in lines[-1]


class FakeTime:
    """The watch's injected clock: sleeping moves it on, nothing waits."""

    def __init__(self) -> None:
        self.at = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.at += seconds


def test_watch_retries_with_backoff_until_its_timeout(unused_tcp_port: int) -> None:
    session = client_cli.Session(f"http://127.0.0.1:{unused_tcp_port}", None,
                                 client_cli.Output.table)
    session.err = Console(file=io.StringIO(), width=200)
    clock = FakeTime()
    code = client_cli.get(session, "abc", watch=True, interval=0.5, timeout=120.0,
                          sleep=clock.sleep, now=clock.now)
    assert code == client_cli.EXIT_TIMEOUT == 7
    # Doubling from the interval, at most 30 s, the last sleep cut at the timeout.
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 28.5]
    assert clock.at == 1120.0
    text = session.err.file.getvalue()  # type: ignore[attr-defined]
    assert text.count("retrying") == 9
    assert "timed out: cannot reach the rollout API" in text


def test_watch_without_a_timeout_keeps_retrying(unused_tcp_port: int) -> None:
    session = client_cli.Session(f"http://127.0.0.1:{unused_tcp_port}", None,
                                 client_cli.Output.table)
    session.err = Console(file=io.StringIO(), width=200)
    clock = FakeTime()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 40:  # far more than any fixed count would allow
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client_cli.get(session, "abc", watch=True, interval=1.0, sleep=sleep, now=clock.now)
    assert clock.sleeps[-1] == 30.0


def test_watch_stops_at_a_refusal_without_retrying(server: ApiServer) -> None:
    clock = FakeTime()
    session = client_cli.Session(server.url, None, client_cli.Output.table)
    session.err = Console(file=io.StringIO(), width=200)
    code = client_cli.get(session, "nosuchrollout", watch=True, sleep=clock.sleep,
                          now=clock.now)
    assert code == 1
    assert clock.sleeps == []


def test_watch_and_wait_exit_6_on_a_paused_rollout(
    server: ApiServer, store: Store, plan_file: Path
) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "paused", pause_reason="drift: endpoint now ads-3=100%")
    watched = cli("get", rollout_id, "--watch", "--server", server.url)
    assert watched.exit_code == 6, watched.output
    assert "waits for a person" in watched.stderr
    assert f"rollout resume {rollout_id}" in watched.stderr
    waited = cli("wait", rollout_id, "--for", "succeeded", "--server", server.url)
    assert waited.exit_code == 6, waited.output
    assert waited.stdout.strip() == f"{rollout_id} paused"
    assert cli("wait", rollout_id, "--for", "paused", "--server", server.url).exit_code == 0


def test_watch_and_wait_time_out_with_7(server: ApiServer, store: Store, plan_file: Path) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "progressing", step=0, candidate_weight=5)
    for args in (("get", rollout_id, "--watch"), ("wait", rollout_id, "--for", "succeeded")):
        result = cli(*args, "--timeout", "0.3s", "--interval", "0.05", "--server", server.url)
        assert result.exit_code == 7, result.output
        assert f"timed out: rollout {rollout_id} is still progressing" in result.stderr


@pytest.mark.parametrize(
    ("ending", "wanted", "code", "stdout"),
    [
        ("succeeded", "succeeded", 0, "succeeded"),
        ("rolled_back", "succeeded", 3, "rolled_back"),
        ("aborted", "rolled_back", 5, "aborted"),
        ("succeeded", "rolling_back", 8, "succeeded"),
        ("progressing", "progressing", 0, "progressing"),
    ],
)
def test_wait_for_a_phase(
    server: ApiServer, store: Store, plan_file: Path, *, ending: str, wanted: str, code: int,
    stdout: str
) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, ending)
    result = cli("wait", rollout_id[:7], "--for", wanted, "--server", server.url)
    assert result.exit_code == code, result.output
    assert result.stdout.strip() == f"{rollout_id} {stdout}"


def test_wait_names_every_phase_in_its_help() -> None:
    from rollout.store.model import PHASES  # noqa: PLC0415

    shown = " ".join(cli("wait", "--help").stdout.split())
    assert all(phase in shown for phase in PHASES), shown


def test_wait_refuses_what_is_not_a_phase_or_a_duration() -> None:
    unknown = cli("wait", "abc", "--for", "done")
    assert unknown.exit_code == 2
    assert "'done' is not a phase" in unknown.stderr
    assert "rolled_back" in unknown.stderr
    bad = cli("wait", "abc", "--timeout", "soon")
    assert bad.exit_code == 2
    assert "--timeout" in bad.stderr


def test_uvicorn_serves_errors_in_the_common_shape(server: ApiServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"#" * 32_768  # 2 MiB in all, over the default 1 MiB limit

    with httpx.Client(base_url=server.url, timeout=10) as http:
        streamed = http.post("/api/v1/rollouts", content=chunks(),
                             headers={"Content-Type": "application/yaml"})
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "body_too_large"
        declared = http.post("/api/v1/rollouts", content=b"#" * 2_000_000,
                             headers={"Content-Type": "application/yaml"})
        assert declared.status_code == 413
        missing = http.get("/api/v1/nowhere")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
        # Still serving after refusing bodies half-read.
        assert http.get("/healthz").json() == {"status": "ok"}


# ---- exit codes as a process -----------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("ROLLOUT_SERVER", None)
    env.pop("ROLLOUT_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "rollout.cli", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT, check=False,
    )


def test_watch_exit_code_from_a_process(server: ApiServer, store: Store, plan_file: Path
                                        ) -> None:
    rollout_id = submitted(server, plan_file)
    move(store, rollout_id, "rolled_back", ending_reason="error rate 3x the baseline")
    done = run_cli("get", rollout_id, "--watch", "--server", server.url)
    assert done.returncode == 3, done.stderr
    assert "rolled_back" in done.stdout
    assert "error rate 3x the baseline" in done.stdout


def test_connection_refused_is_one_line(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    result = cli("list", "--server", url)
    assert_one_line_error(result, f"cannot reach the rollout API at {url}", "connection refused")
    assert result.exit_code == 1
    process = run_cli("get", "abc", "--server", url)
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines() == [
        (
            f"error: cannot reach the rollout API at {url}: connection refused (is the daemon "
            "running? set --server or ROLLOUT_SERVER)"
        )
    ]
    assert process.stdout == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("list", "--server", "ftp://example"), "invalid --server URL"),
        (("list", "--output", "yaml"), "--output is table or json"),
    ],
)
def test_bad_command_lines_exit_2(args: tuple[str, ...], words: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert_one_line_error(result, words)


def test_a_server_that_is_not_the_api(sandbox: SandboxServer) -> None:
    # The sandbox answers JSON errors of another shape: the message still says what happened.
    result = cli("list", "--server", sandbox.url)
    assert_one_line_error(result, "HTTP 404")


def test_list_follows_the_cursor_past_one_page(server: ApiServer, store: Store) -> None:
    plan = validate_plan(
        {
            "endpoint": "x",
            "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4"},
            "strategy": "canary",
            "steps": [{"weight": 5, "bake": "10m"}],
        }
    )
    policy = resolve_policy(plan)
    count = client_cli.PAGE + 30
    for index in range(count):
        record, event = new_rollout(
            plan.model_copy(update={"endpoint": f"e{index}"}), policy, 1_700_000_000.0 + index
        )
        store.create(record, event, [])
    listed = cli("list", "--server", server.url, "--limit", str(count + 10), "-o", "json")
    assert listed.exit_code == 0, listed.output
    endpoints = [r["endpoint"] for r in json.loads(listed.stdout)["rollouts"]]
    assert endpoints == [f"e{index}" for index in range(count - 1, -1, -1)]
    some = cli("list", "--server", server.url, "--limit", str(client_cli.PAGE + 3), "-o", "json")
    assert len(json.loads(some.stdout)["rollouts"]) == client_cli.PAGE + 3
    table = cli("list", "--server", server.url, "--limit", "3")
    assert table.exit_code == 0, table.output
    assert "1 of 2" in table.stdout  # a summary's step_count gives the stages
