"""Three ``rollout serve`` replicas on one PostgreSQL store, a slow network, and SIGKILLs.

The replicas reach ``rollout sandbox`` through a small TCP proxy run by the test. The proxy
holds chosen config PUTs: one per run for longer than the lease (a PUT held past its sender's
deadline is dropped, as a proxy drops a request whose client has gone), and others for less
than the PUT deadline, while the test SIGKILLs the replica that sent them: those land after
their sender died, and the rollout's next owner must wait them out and recognise them. The
network this models delays a request by at most the client's PUT deadline, or loses it.

Asserted: every rollout ends in the phase its traffic deserves; each endpoint's PUT log (the
sandbox's config-log) shows the rollout's intended configs each once, in order; no endpoint
serves a split its rollout did not intend; every alert is delivered once per id; a killed
owner's rollouts move to another replica within one lease TTL plus one look.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.postgres import fresh_schema

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
LEASE_TTL = 3.0
PUT_DEADLINE = 1.5
LOOK = 0.5
SCAN = 0.2
SHORT_HOLD = 1.0  # < PUT_DEADLINE: delivered, even after its sender died
LONG_HOLD = LEASE_TTL + 1.0  # > the lease: its sender gave up long before; dropped
POLICY = {
    "name": "replicas",
    "min_requests": 50,
    # The sandbox's replicas are never cold here: judge from the first window of a split.
    "warmup_windows": 0,
    "false_rollback_rate": "0.1%",
    "checks": [
        {"metric": "error_rate", "compare": "baseline", "max_ratio": 2, "max_increase": "1%"}
    ],
}
BASE, CAND = "model-1", "model-2"
ENDPOINTS = {"rep-good-1": 0.002, "rep-good-2": 0.002, "rep-bad-1": 0.3, "rep-bad-2": 0.3}


# --- the slow network ------------------------------------------------------------------------


@dataclass
class Held:
    endpoint: str
    split: dict[str, int]
    hold: float


@dataclass
class Proxy:
    """Forwards HTTP/1.1 to the sandbox; holds the config PUTs ``choose`` picks."""

    upstream: tuple[str, int]
    holds: dict[str, list[float]]
    """Per endpoint, the hold of its 2nd, 3rd... PUT (the 1st, deploying at 0 %, passes)."""
    port: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    held: queue.Queue[Held] = field(default_factory=queue.Queue)
    dropped: list[Held] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None

    def hold_for(self, endpoint: str) -> float:
        self.seen[endpoint] += 1
        plan = self.holds.get(endpoint, [])
        index = self.seen[endpoint] - 2
        return plan[index] if 0 <= index < len(plan) else 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1)) if (
                    re.search(rb"(?i)content-length:", head)
                ) else 0
                body = await reader.readexactly(length) if length else b""
                line = head.split(b"\r\n", 1)[0].decode()
                match = re.match(r"PUT /api/2\.0/serving-endpoints/([^/]+)/config ", line)
                if match:
                    hold = self.hold_for(match.group(1))
                    if hold:
                        split = {
                            r.get("served_entity_name") or r.get("served_model_name"):
                                r["traffic_percentage"]
                            for r in json.loads(body)["traffic_config"]["routes"]
                        }
                        item = Held(match.group(1), split, hold)
                        self.held.put(item)
                        await asyncio.sleep(hold)
                        if hold > PUT_DEADLINE:
                            self.dropped.append(item)
                            return  # its sender gave up: lost on the way
                up_writer.write(head + body)
                await up_writer.drain()
                response_head = await up_reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?i)content-length:\s*(\d+)", response_head)
                response_body = await up_reader.readexactly(int(found.group(1))) if found else b""
                try:
                    writer.write(response_head + response_body)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return  # the sender is gone (killed): the request still landed
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return
        finally:
            up_writer.close()
            writer.close()

    def run(self, started: threading.Event) -> None:
        async def main() -> None:
            server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.loop = asyncio.get_running_loop()
            started.set()
            async with server:
                await server.serve_forever()

        with _suppress_cancel():
            asyncio.run(main())

    def stop(self) -> None:
        if self.loop is not None:
            for task in asyncio.all_tasks(self.loop):
                self.loop.call_soon_threadsafe(task.cancel)


class _suppress_cancel:  # noqa: N801 -- a tiny context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is asyncio.CancelledError


# --- alerts ----------------------------------------------------------------------------------


@dataclass
class Receiver:
    url: str = ""
    deliveries: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            alert_id = self.headers.get("X-Rollout-Alert-Id", "")
            with state.lock:
                state.deliveries[alert_id] += 1
                state.bodies[alert_id] = json.loads(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


# --- replicas --------------------------------------------------------------------------------


class Replica:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rollout.cli", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log.open("a"),
            text=True,
        )
        self.url = ""

    def wait_listening(self) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"(http://127\.0\.0\.1:\d+)", self.process.stdout.readline())
            if match:
                self.url = match.group(1)
                return self.url
            if self.process.poll() is not None:
                break
        raise AssertionError(f"a replica did not start: {self.log.read_text()[-2000:]}")

    def owned(self) -> list[str]:
        if self.process.poll() is not None:
            return []
        try:
            return list(httpx.get(f"{self.url}/readyz", timeout=5).json().get("owned", []))
        except httpx.HTTPError:
            return []

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass(frozen=True)
class Lease:
    holder: str
    acquired_at: float
    expires_at: float


def lease_of(store_url: str, rollout_id: str) -> Lease:
    """The rollout's row of the ownership table, as the replicas wrote it."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT holder, acquired_at, expires_at FROM ownership WHERE rollout_id = %s",
            (rollout_id,),
        ).fetchone()
    assert row is not None, rollout_id
    return Lease(str(row[0]), float(row[1]), float(row[2]))


def key(put: dict[str, Any]) -> tuple[str, int]:
    """A PUT as (who is deployed, candidate weight): what a rollout means by a config."""
    entities = set(put["entities"])
    deployed = "both" if entities == {BASE, CAND} else CAND if CAND in entities else BASE
    return deployed, int(put["split"].get(CAND, 0))


@pytest.mark.slow
def test_replicas_share_rollouts_and_never_double_drive(
    sandbox_process: str, sandbox_token: str, receiver: Receiver, tmp_path: Path
) -> None:
    started_at = time.monotonic()
    admin = httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10)
    for name, error_rate in ENDPOINTS.items():
        response = admin.post(
            "/endpoints",
            json={
                "name": name,
                "served_entities": [
                    {"name": BASE, "entity_name": "main.ml.model", "entity_version": "1",
                     "workload_size": "Small", "scale_to_zero_enabled": False}
                ],
                "profiles": {BASE: {"error_rate": 0.002}, CAND: {"error_rate": error_rate}},
                "qps": 2000,
            },
        )
        assert response.status_code == 201, response.text
    host, port = re.match(r"http://([\d.]+):(\d+)", sandbox_process).groups()  # type: ignore[union-attr]
    # rep-good-1: its first step is held past the lease (dropped, sent again);
    # the others: one PUT each held briefly while its sender is killed.
    proxy = Proxy(
        (host, int(port)),
        holds={
            "rep-good-1": [LONG_HOLD],
            "rep-good-2": [0.0, SHORT_HOLD],
            "rep-bad-1": [SHORT_HOLD],
        },
    )
    ready = threading.Event()
    threading.Thread(target=proxy.run, args=(ready,), daemon=True).start()
    assert ready.wait(10)

    with fresh_schema("replicas") as store_url:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))
        }
        env.update({
            "PYTHONPATH": str(REPO),
            "DATABRICKS_HOST": f"http://127.0.0.1:{proxy.port}",
            "DATABRICKS_TOKEN": sandbox_token,
            "ROLLOUT_STORE_URL": store_url,
            # The alert receiver listens on loopback: opened on purpose.
            "ROLLOUT_ALERTS_ALLOWED_HOSTS": "127.0.0.1",
            "ROLLOUT_API_PORT": "0",
            "ROLLOUT_ENGINE_LOOK_INTERVAL": str(LOOK),
            "ROLLOUT_ENGINE_UPDATE_POLL": "0.25",
            "ROLLOUT_ENGINE_SCAN_INTERVAL": str(SCAN),
            "ROLLOUT_ENGINE_STEP_DEADLINE_FACTOR": "20",
            "ROLLOUT_ENGINE_LEASE_TTL": str(LEASE_TTL),
            "ROLLOUT_SERVING_PUT_DEADLINE": str(PUT_DEADLINE),
            "ROLLOUT_SERVING_REQUEST_TIMEOUT": "1.2",
            "ROLLOUT_SERVING_RETRY_BUDGET": "1",
            "ROLLOUT_SERVING_UPDATE_POLL_INTERVAL": "0.25",
            "ROLLOUT_ALERTS_CHANNELS": json.dumps([{"type": "webhook", "url": receiver.url}]),
            "ROLLOUT_ALERTS_POLL_INTERVAL": "0.2",
            "ROLLOUT_ALERTS_TIMEOUT": "2",
            "ROLLOUT_ALERTS_LEASE": "3",
            "ROLLOUT_LOG_FORMAT": "json",
        })
        replicas: list[Replica] = []
        try:
            replicas.extend(Replica(env, tmp_path / f"replica-{i}.log") for i in range(3))
            for replica in replicas:
                replica.wait_listening()
            ids: dict[str, str] = {}
            for index, endpoint in enumerate(ENDPOINTS):
                response = httpx.post(
                    f"{replicas[index % 3].url}/api/v1/rollouts",
                    json={
                        "endpoint": endpoint,
                        "candidate": {"name": CAND, "entity_name": "main.ml.model",
                                      "entity_version": "2", "workload_size": "Small"},
                        "strategy": "canary",
                        "steps": [{"weight": 20, "bake": "1s"}, {"weight": 50, "bake": "1s"}],
                        "policy": POLICY,
                    },
                    timeout=30,
                )
                assert response.status_code == 201, response.text
                ids[endpoint] = response.json()["id"]

            # Kill the sender of every short-held PUT while its PUT is on the wire, and
            # measure how long its rollouts take to show up on another replica.
            moves: list[float] = []
            kills = 0
            deadline = time.monotonic() + 50
            phases: dict[str, str] = {}
            while time.monotonic() < deadline:
                try:
                    held = proxy.held.get(timeout=0.2)
                except queue.Empty:
                    held = None
                if held is not None and held.hold < PUT_DEADLINE:
                    rollout = ids[held.endpoint]
                    owner = next((r for r in replicas if rollout in r.owned()), None)
                    if owner is not None:
                        owner.kill()
                        kills += 1
                        # Dead, it renews no more: the lease it left runs out at expires_at,
                        # at most one TTL after its last renewal, which came before the kill.
                        left = lease_of(store_url, rollout)
                        others = [r for r in replicas if r is not owner]
                        wait_until = time.monotonic() + 3 * LEASE_TTL
                        while time.monotonic() < wait_until:
                            if any(rollout in r.owned() for r in others):
                                taken = lease_of(store_url, rollout)
                                if taken.holder != left.holder:
                                    # In the replicas' own records: claimed how long after
                                    # the dead owner's lease ran out.
                                    moves.append(taken.acquired_at - left.expires_at)
                                break
                            time.sleep(0.05)
                        replicas.remove(owner)
                phases = {
                    e: httpx.get(f"{replicas[0].url}/api/v1/rollouts/{i}", timeout=10).json()[
                        "phase"
                    ]
                    for e, i in ids.items()
                }
                if all(p in ("succeeded", "rolled_back", "aborted", "failed")
                       for p in phases.values()):
                    break
            log.info("all rollouts ended after %.1f s: %s", time.monotonic() - started_at, phases)
            logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("replica-*.log"))
            expected = {e: "succeeded" if "good" in e else "rolled_back" for e in ENDPOINTS}
            assert phases == expected, logs

            # Each intended config reached its endpoint once, in order; nothing else did.
            for endpoint in ENDPOINTS:
                puts = admin.get(f"/endpoints/{endpoint}/config-log").json()["puts"]
                landed = [key(p) for p in puts if p["outcome"] == "accepted"]
                if "good" in endpoint:
                    assert landed == [("both", 0), ("both", 20), ("both", 50), (CAND, 100)], (
                        endpoint, puts)
                else:
                    steps = landed[1:-2]
                    assert landed[0] == ("both", 0), (endpoint, puts)
                    assert steps in ([("both", 20)], [("both", 20), ("both", 50)]), puts
                    assert landed[-2:] == [("both", 0), (BASE, 0)], (endpoint, puts)
                served = admin.get(f"/endpoints/{endpoint}").json()
                api = httpx.get(
                    f"{sandbox_process}/api/2.0/serving-endpoints/{endpoint}",
                    headers={"Authorization": f"Bearer {sandbox_token}"},
                    timeout=10,
                ).json()
                routes = {r["served_entity_name"]: r["traffic_percentage"]
                          for r in api["config"]["traffic_config"]["routes"]}
                want = {CAND: 100} if "good" in endpoint else {BASE: 100}
                assert {k: v for k, v in routes.items() if v} == want, (endpoint, served)
                assert api["state"]["config_update"] == "NOT_UPDATING"
            assert [h.endpoint for h in proxy.dropped] == ["rep-good-1"], "held past the lease"

            # Every alert once per id: the terminal ones of every rollout among them.
            wanted = {(ids[e], "succeeded" if "good" in e else "rolled_back") for e in ENDPOINTS}
            alert_deadline = time.monotonic() + 10
            while time.monotonic() < alert_deadline:
                with receiver.lock:
                    got = {(b["rollout"], b["event"]) for b in receiver.bodies.values()}
                if wanted <= got:
                    break
                time.sleep(0.2)
            assert wanted <= got, got
            with receiver.lock:
                assert all(n == 1 for n in receiver.deliveries.values()), receiver.deliveries

            # Ownership moved within one lease TTL plus one look of each kill: the lease ran
            # out within a TTL of the kill, and another replica claimed the rollout within a
            # look (and a scan) of that, as the ownership table records it.
            assert kills >= 2, "the short-held PUTs' senders were killed"
            assert len(moves) == kills, moves
            assert all(move <= LOOK + 2 * SCAN for move in moves), moves
            log.info("claims after the dead owner's lease ran out (s): %s",
                     [round(m, 2) for m in moves])
        finally:
            for replica in replicas:
                replica.close()
            proxy.stop()
            admin.close()
