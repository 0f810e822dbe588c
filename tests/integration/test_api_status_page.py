"""The status page's side of the API, in process (ASGI) over a real SQLite store: the series
route (windows per arm from the stored tracker, split changes from the event log, limits,
unknown ids, auth) and the page itself (served with the right types and headers, open without
a token, pointing at nothing but the controller, and sending commands through the API's routes
from real buttons only)."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from datetime import datetime
from importlib import resources
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate as validate_openapi
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from rollout.api import create_api
from rollout.api.page import ASSETS
from rollout.engine.runner import new_rollout, stored_window
from rollout.metrics.model import EntityWindow, Histogram
from rollout.metrics.parse import Scrape
from rollout.metrics.windows import WindowTracker
from rollout.plan import resolve_policy, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.retry import RetryPolicy
from rollout.settings import ApiSettings
from rollout.store.base import Store
from rollout.store.model import NewEvent, RolloutRecord, StepSummary, WindowChanges

VIEWER = "view-secret-token-2"
TOKENS = f"op-secret-token-1:operator,{VIEWER}:viewer"
CANDIDATE = "ads_model-4"  # the served name Databricks derives: <last part of the name>-<version>
BASELINE = "ads-3"
T0 = 1_800_000_000_000  # a window boundary, in epoch milliseconds
MINUTE = 60_000
# Per-bucket counts: 90 requests up to 100 ms, 8 in (100, 200], 2 in (200, 1000]. The 99th of
# 100 is the first of the last two: halfway through that bucket, 600 ms.
LATENCY = Histogram(bounds=(100.0, 200.0, 1000.0, math.inf), counts=(90.0, 8.0, 2.0, 0.0))
P99 = 600.0


@pytest.fixture
async def app(sandbox: SandboxServer, store: Store) -> AsyncIterator[Any]:
    clients: list[ServingClient] = []

    def build(tokens: str | None = None) -> FastAPI:
        client = ServingClient(
            sandbox.url,
            PatAuth(sandbox.token),
            clock=sandbox.clock,
            retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=5),
        )
        clients.append(client)
        return create_api(
            store=store,
            client=client,
            clock=sandbox.clock,
            library=PolicyLibrary(),
            registry=CollectorRegistry(),
            settings=ApiSettings(tokens=SecretStr(tokens) if tokens else None),
        )

    yield build
    for client in clients:
        await client.aclose()


def asgi(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://127.0.0.1", headers=headers
    )


def stored_rollout(store: Store, created_at: float = T0 / 1000 - 30) -> RolloutRecord:
    plan = validate_plan({
        "endpoint": "ads",
        "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4"},
        "strategy": "canary",
        "steps": [{"weight": 5, "bake": "10m"}, {"weight": 25, "bake": "10m"}],
    })
    record, event = new_rollout(plan, resolve_policy(plan), created_at)
    return store.create(record, event, [])


def window(entity: str | None, minute: int, requests: float, errors: float,
           *, latency: Histogram | None = LATENCY, missing: frozenset[str] = frozenset()
           ) -> EntityWindow:
    return EntityWindow(entity=entity, start_ms=T0 + minute * MINUTE, requests=requests,
                        errors_5xx=errors, latency=latency, missing=missing)


def tracker_state(windows: list[EntityWindow]) -> dict[str, Any]:
    tracker = WindowTracker()
    tracker.observe(Scrape(windows=windows, has_entity_labels=True), T0 + 10 * MINUTE)
    return tracker.to_state().model_dump(mode="json")


def progress(store: Store, record: RolloutRecord, *, state: dict[str, Any],
             events: list[NewEvent], phase: str = "progressing") -> RolloutRecord:
    return store.commit(
        record.id, record.version, phase=phase,
        state={**record.state, "phase": phase, **state},
        due_at=None, updated_at=record.updated_at + 300, events=events, alerts=[],
        consumed_commands=[],
    )


def event(kind: str, seconds: float, *, to: str = "progressing", frm: str = "progressing",
          data: dict[str, Any] | None = None, reason: str = "") -> NewEvent:
    return NewEvent(kind=kind, from_phase=frm, to_phase=to, reason=reason or kind,
                    data=data or {}, at=T0 / 1000 + seconds)


def iso_ms(value: str) -> int:
    return round(datetime.fromisoformat(value).timestamp() * 1000)


# ---- the series ------------------------------------------------------------------------------


async def test_series_gives_each_arm_per_window_and_the_split_changes(
    app: Any, store: Store
) -> None:
    record = stored_rollout(store)
    windows = [
        window(BASELINE, 0, 1000, 2),
        window(None, 0, 1000, 2),  # endpoint totals: no arm
        window(CANDIDATE, 1, 50, 1),
        window(BASELINE, 1, 950, 1),
        window("someone-elses-model", 1, 10, 10),
        window(CANDIDATE, 2, 0, 0, latency=None),  # served nothing
        window(BASELINE, 2, 800, 4, missing=frozenset({"latency"})),
        window(CANDIDATE, 3, 250, 5, missing=frozenset({"errors_5xx"})),
        window(BASELINE, 3, 750, 0),
    ]
    events = [
        event("candidate_deployed", 20, to="preparing", frm="preparing"),
        event("step_applied", 50, data={"step": 0, "weight": 5, "split": {}},
              reason="step 1/2: candidate at 5 %"),
        event("verdict", 130, data={"verdict": {"outcome": "pass"}}),
        event("step_applied", 170, data={"step": 1, "weight": 25, "split": {}}),
        event("rolling_back", 200, to="rolling_back", reason="analysis failed"),
        event("baseline_restored", 210, to="rolling_back", frm="rolling_back"),
        event("rolled_back", 220, to="rolled_back", frm="rolling_back"),
    ]
    record = progress(store, record, events=events, phase="rolled_back", state={
        "baseline": BASELINE, "step": 1, "candidate_weight": 0,
        "split_applied_at": T0 / 1000 + 170, "tracker": tracker_state(windows),
    })
    async with asgi(app()) as api:
        response = await api.get(f"/api/v1/rollouts/{record.id}/series")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["endpoint"], body["phase"]) == (record.id, "ads", "rolled_back")
    assert (body["candidate"], body["baseline"], body["candidate_weight"]) == (
        CANDIDATE, BASELINE, 0)
    assert iso_ms(body["split_applied_at"]) == T0 + 170_000
    assert body["omitted_windows"] == 0
    assert body["note"] is None

    got = body["windows"]
    assert [w["start_ms"] for w in got] == [T0 + m * MINUTE for m in range(4)]
    assert [iso_ms(w["start"]) for w in got] == [w["start_ms"] for w in got]
    assert got[0]["candidate"] is None
    assert got[0]["baseline"] == {"requests": 1000, "errors_5xx": 2, "error_rate": 0.002,
                                  "p99_ms": pytest.approx(P99)}
    assert got[1]["candidate"] == {"requests": 50, "errors_5xx": 1, "error_rate": 0.02,
                                   "p99_ms": pytest.approx(P99)}
    assert got[1]["baseline"]["error_rate"] == pytest.approx(1 / 950)
    # No requests: no rate (not 0 %); a missing histogram or error count: null, not zero.
    assert got[2]["candidate"] == {"requests": 0, "errors_5xx": 0, "error_rate": None,
                                   "p99_ms": None}
    assert got[2]["baseline"]["p99_ms"] is None
    assert got[2]["baseline"]["error_rate"] == pytest.approx(0.005)
    assert got[3]["candidate"]["errors_5xx"] is None
    assert got[3]["candidate"]["error_rate"] is None
    assert got[3]["baseline"]["error_rate"] == 0

    marks = body["steps"]
    assert [(m["kind"], m["step"], m["weight"]) for m in marks] == [
        ("step", 0, 5), ("step", 1, 25), ("rollback", None, None), ("baseline_restored", None, 0)
    ]
    assert [m["at_ms"] for m in marks] == [T0 + 50_000, T0 + 170_000, T0 + 200_000, T0 + 210_000]
    assert [iso_ms(m["at"]) for m in marks] == [m["at_ms"] for m in marks]
    assert marks[0]["reason"] == "step 1/2: candidate at 5 %"
    assert marks[2]["reason"] == "analysis failed"


async def test_series_reads_the_windows_the_runner_stored_apart(app: Any, store: Store) -> None:
    # The runner keeps windows in their own table and a tracker state without them.
    record = stored_rollout(store)
    windows = [window(CANDIDATE, 1, 50, 1), window(BASELINE, 1, 950, 1),
               window(CANDIDATE, 2, 60, 0)]
    tracker = WindowTracker()
    record = store.commit(
        record.id, record.version, phase="progressing",
        state={**record.state, "phase": "progressing", "baseline": BASELINE,
               "tracker": tracker.to_state(windows=False).model_dump(mode="json")},
        due_at=None, updated_at=record.updated_at + 300, events=[], alerts=[],
        consumed_commands=[],
        windows=WindowChanges(upsert=[stored_window(w) for w in windows]),
    )
    async with asgi(app()) as api:
        body = (await api.get(f"/api/v1/rollouts/{record.id}/series")).json()
    assert [w["start_ms"] for w in body["windows"]] == [T0 + MINUTE, T0 + 2 * MINUTE]
    assert body["windows"][0]["candidate"]["requests"] == 50
    assert body["windows"][0]["baseline"]["requests"] == 950
    assert body["windows"][1]["baseline"] is None
    assert body["note"] is None


async def test_a_finished_step_without_windows_is_one_point_of_its_sums(
    app: Any, store: Store
) -> None:
    record = stored_rollout(store)
    sums = {"windows": 10, "requests": 1000.0, "errors_5xx": 20.0, "latency": LATENCY.to_dict()}
    summary = StepSummary("0@1", T0 / 1000 + 50, {
        "step": 0, "candidate_weight": 5, "split_applied_at": T0 / 1000 + 50,
        "candidate": sums, "control": {**sums, "requests": 9000.0, "errors_5xx": 9.0},
    })
    record = store.commit(
        record.id, record.version, phase="rolled_back",
        state={**record.state, "phase": "rolled_back", "baseline": BASELINE},
        due_at=None, updated_at=record.updated_at + 300,
        events=[event("rolled_back", 220, to="rolled_back", frm="rolling_back")], alerts=[],
        consumed_commands=[], windows=WindowChanges(summaries=[summary]),
    )
    async with asgi(app()) as api:
        body = (await api.get(f"/api/v1/rollouts/{record.id}/series")).json()
    (point,) = body["windows"]
    assert point["start_ms"] == T0 + 50_000
    assert point["candidate"] == {"requests": 1000, "errors_5xx": 20, "error_rate": 0.02,
                                  "p99_ms": pytest.approx(P99)}
    assert point["baseline"]["error_rate"] == pytest.approx(0.001)


async def test_series_limit_keeps_the_newest_windows(app: Any, store: Store) -> None:
    record = stored_rollout(store)
    windows = [window(arm, minute, 100, 0) for minute in range(6) for arm in (CANDIDATE, BASELINE)]
    events = [event("step_applied", 10, data={"step": 0, "weight": 5}),
              event("promoting", 300, to="promoting"),
              event("succeeded", 320, to="succeeded", frm="promoting")]
    record = progress(store, record, events=events, phase="succeeded", state={
        "baseline": BASELINE, "candidate_weight": 100, "tracker": tracker_state(windows)})
    async with asgi(app()) as api:
        limited = (await api.get(f"/api/v1/rollouts/{record.id}/series?limit=2")).json()
        everything = (await api.get(f"/api/v1/rollouts/{record.id}/series?limit=1000")).json()
        for bad in ("0", "1001", "many"):
            response = await api.get(f"/api/v1/rollouts/{record.id}/series?limit={bad}")
            assert response.status_code == 422, bad
            assert response.json()["error"]["code"] == "invalid_request"
    assert [w["start_ms"] for w in limited["windows"]] == [T0 + 4 * MINUTE, T0 + 5 * MINUTE]
    assert limited["omitted_windows"] == 4
    assert len(everything["windows"]) == 6
    assert everything["omitted_windows"] == 0
    # The promotion to 100 % is a mark; deciding to promote is not (no traffic moved yet).
    assert [(m["kind"], m["weight"]) for m in limited["steps"]] == [("step", 5), ("promoted", 100)]


async def test_series_of_a_rollout_without_windows_yet(app: Any, store: Store) -> None:
    record = stored_rollout(store)
    async with asgi(app()) as api:
        response = await api.get(f"/api/v1/rollouts/{record.id}/series")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["phase"] == "pending"
    assert body["baseline"] is None
    assert body["split_applied_at"] is None
    assert (body["windows"], body["steps"], body["omitted_windows"], body["note"]) == (
        [], [], 0, None)


async def test_series_says_why_when_the_stored_windows_cannot_be_read(
    app: Any, store: Store
) -> None:
    record = stored_rollout(store)
    record = progress(store, record, events=[event("step_applied", 5, data={"weight": 5})],
                      state={"baseline": BASELINE, "tracker": {"version": 99}})
    async with asgi(app()) as api:
        body = (await api.get(f"/api/v1/rollouts/{record.id}/series")).json()
    assert body["windows"] == []
    assert "cannot be read" in body["note"]
    assert [(m["kind"], m["step"], m["weight"]) for m in body["steps"]] == [("step", None, 5)]


async def test_series_of_unknown_rollouts_is_404(app: Any) -> None:
    async with asgi(app()) as api:
        for rollout_id in ("abc123", "%00%27;drop", "a" * 500):
            response = await api.get(f"/api/v1/rollouts/{rollout_id}/series")
            assert response.status_code == 404, rollout_id
            assert response.json()["error"]["code"] == "rollout_not_found"


async def test_series_needs_a_token_like_every_read_but_the_page_does_not(
    app: Any, store: Store
) -> None:
    record = stored_rollout(store)
    api_app = app(TOKENS)
    async with asgi(api_app) as anonymous, asgi(api_app, VIEWER) as viewer, \
            asgi(api_app, "guessed") as stranger:
        for client in (anonymous, stranger):
            response = await client.get(f"/api/v1/rollouts/{record.id}/series")
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthenticated"
            assert response.headers["WWW-Authenticate"] == "Bearer"
        assert (await viewer.get(f"/api/v1/rollouts/{record.id}/series")).status_code == 200
        for path in ASSETS:
            assert (await anonymous.get(path)).status_code == 200, path


async def test_the_series_route_is_in_the_openapi_document(app: Any) -> None:
    async with asgi(app(TOKENS)) as api:
        document = (await api.get("/openapi.json")).json()
    validate_openapi(document)
    route = document["paths"]["/api/v1/rollouts/{rollout_id}/series"]["get"]
    schema = route["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/RolloutSeries"}
    assert {"401", "404", "422"} <= set(route["responses"])
    assert "security" in route
    assert [p["name"] for p in route["parameters"]] == ["rollout_id", "limit"]
    schemas = document["components"]["schemas"]
    assert set(schemas["RolloutSeries"]["properties"]) >= {
        "windows", "steps", "phase", "candidate", "baseline", "omitted_windows"}
    assert set(schemas["ArmWindow"]["properties"]) == {
        "requests", "errors_5xx", "error_rate", "p99_ms"}
    assert set(schemas["StepMark"]["properties"]) >= {"at", "at_ms", "kind", "step", "weight"}
    # The page is not part of the API.
    assert "/" not in document["paths"]
    assert not any(path.startswith("/static") for path in document["paths"])


# ---- the page --------------------------------------------------------------------------------


async def test_the_page_and_its_assets_are_served_with_their_types(app: Any) -> None:
    async with asgi(app()) as api:
        page = await api.get("/")
        css = await api.get("/static/status.css")
        script = await api.get("/static/status.js")
        again = await api.get("/", headers={"If-None-Match": page.headers["ETag"]})
        changed = await api.get("/", headers={"If-None-Match": '"something-else"'})
        post = await api.post("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.text.lstrip().lower().startswith("<!doctype html>")
    assert '<script src="/static/status.js" defer></script>' in page.text
    assert '<link rel="stylesheet" href="/static/status.css">' in page.text
    assert '<html lang="en">' in page.text
    for landmark in ("<header", "<main", "<footer", 'role="status"'):
        assert landmark in page.text, landmark
    assert css.status_code == 200
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert ".rollout" in css.text
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "/api/v1/rollouts" in script.text
    for response in (page, css, script):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-cache"
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "connect-src 'self'" in policy
        assert "script-src 'self';" in policy  # no inline script, no other host
    assert again.status_code == 304
    assert again.content == b""
    assert changed.status_code == 200
    assert changed.content == page.content
    assert post.status_code == 405
    assert post.headers["Allow"] == "GET"


def shipped_files() -> dict[str, str]:
    folder = resources.files("rollout.api").joinpath("static")
    return {item.name: item.read_text(encoding="utf-8") for item in folder.iterdir()
            if item.is_file()}


def test_every_shipped_file_is_served_and_nothing_else() -> None:
    assert sorted(shipped_files()) == sorted(name for name, _ in ASSETS.values())


def test_the_page_points_at_nothing_but_the_controller() -> None:
    files = shipped_files()
    for name, text in files.items():
        # No absolute URL at all, and no protocol-relative one either.
        assert not re.search(r"(?i)\b(?:https?|wss?|ftp):", text), name
        assert not re.search(r"""(?i)(?:src|href|action)\s*=\s*["']?//""", text), name
        assert not re.search(r"""["'`(]\s*//[A-Za-z0-9]""", text), name
    page = files["index.html"]
    for reference in re.findall(r"""(?i)\b(?:src|href)\s*=\s*["']([^"']*)["']""", page):
        assert reference.startswith(("/", "#", "data:")), reference
    css = files["status.css"]
    assert "@import" not in css
    assert all(url.startswith("data:") for url in re.findall(r"url\(\s*['\"]?([^)'\"]*)", css))
    script = files["status.js"]
    # Every request the script makes goes to a path on the controller that served it.
    requested = re.findall(r"""\bapi\(\s*["']([^"']*)""", script)
    assert requested, "the script reads the API through api()"
    assert all(path.startswith("/api/v1/") for path in requested), requested
    assert script.count("fetch(") == 1
    for forbidden in ("eval(", "new Function", "innerHTML", "document.write", "import("):
        assert forbidden not in script, forbidden


def test_the_script_offers_commands_through_the_api_and_buttons_only() -> None:
    files = shipped_files()
    script, page = files["status.js"], files["index.html"]
    # The role decides whether there are buttons; the commands are the API's command routes.
    assert 'api("/api/v1/session")' in script
    assert set(re.findall(r"""\bpath:\s*["']([a-z_]+)["']""", script)) == {
        "pause", "resume", "promote", "abort"}
    assert re.search(r"""el\(\s*"button",\s*\{\s*type:\s*"button",[^}]*"data-action":""",
                     script)
    assert 'method = "POST"' in script
    assert '"Content-Type"] = "application/json"' in script
    # A second click confirms, not a dialog; no handler is inline (the CSP would block it).
    assert not re.search(r"\b(?:confirm|alert|prompt)\(", script)
    assert not re.search(r"""(?i)\son[a-z]+\s*=""", page)
    assert not re.search(r"""setAttribute\(\s*["']on""", script)
