"""Scale: what one controller costs with 10, 100 and 1,000 active rollouts, fresh and aged.

Where this sits: not shipped (``bench/`` is outside the wheel). ``bench/decisions.py`` measures
how well the engine decides; this program measures what running it costs. It starts
``rollout sandbox`` and ``rollout serve`` as processes (``PYTHONPATH`` set to this checkout),
gives the controller N active rollouts on a store (SQLite, or PostgreSQL in a fresh schema),
and measures, per cell (backend x N x age x replicas):

- CPU ms per look: user + system time of the serve process(es) from ``/proc/<pid>/stat`` over
  the measurement, divided by the looks done, counted from the controller's own metrics (each
  look scrapes export-metrics once: ``rollout_serving_requests_total{call="export_metrics"}``);
- look lateness p50/p99/max: for every look, when its commit landed (the rollout's
  ``updated_at``) minus when it was due (the ``due_at`` the previous look set), read from the
  store's plain columns every second (seeded rollouts are due from the moment they are
  seeded, so a controller that cannot catch up shows the whole backlog); the controller's
  ``rollout_reconcile_lag_seconds`` is reported beside it (its largest value seen);
- ``/metrics``, the list (``GET /api/v1/rollouts?limit=1000``: one summary page of up to
  1,000) and the detail (``GET /api/v1/rollouts/{id}``) latency, p50/p99 of sequential
  requests, measured after the CPU window so that they do not count as look CPU;
- store bytes per rollout-hour: growth of the store (SQLite: pages in use, WAL included;
  PostgreSQL: tables, TOAST and indexes of the schema, dead row versions included until
  vacuum) over the CPU window, per rollout and hour; and the store's size per rollout at the
  start;
- RSS of each serve process at the end (the largest).

"Aged 6 h": each cell's rollouts are seeded in the store before ``rollout serve`` starts. One
rollout is driven for real, in process: the real ``Runner`` (serving client, WindowTracker,
``decide``, store commits) against an in-process sandbox on a fake clock that starts 6 hours
before now, a look every 30 s, for 6 simulated hours (about 20 s of CPU). Its row and its
event log are then copied N times (new ids, endpoints ``bench-0000``...; due times spread
over one look interval, as a controller's looks spread in steady state) and the sandbox
process gets N endpoints with the same served entities and split, so the controller resumes
them as its own. "Fresh" is the same with 5 simulated minutes of history (the first step
applied, its warm-up under way). The plan is a canary at 10 % with a 12 h bake and a healthy
candidate, so every rollout stays active through the measurement. Copying one driven rollout
is what makes 1,000 aged rollouts affordable; every copy holds exactly what the engine
writes after 6 hours (window tracker, judge state, verdicts, events, and the metric windows
it keeps: the last 30 minutes', in their own table), so the store's growth is measured on
rollouts whose windows already turn over (each look adds about as much as it drops).

Three replicas (PostgreSQL only) are three serve processes on one store; they share the
rollouts through per-rollout leases (README "Running replicas"), each driving its share.

Run: ``python -m bench.scale`` (the target configuration: N = 10, 100, 1,000; SQLite and
PostgreSQL; fresh and aged 6 h; one replica, and three on PostgreSQL; 60 s windows, 30 s
looks; a 60 s CPU window per cell after the first round of looks; over 70 minutes on 2 cores,
most of it in the aged cells of 1,000 rollouts: seeding them, and a controller that cannot
keep up with them); ``--quick`` is a smoke run (N = 10, 100; 10 s windows, 5 s looks, 30 minutes of
history for "aged", 15 s windows of measurement); ``--sizes``, ``--backends``, ``--ages``,
``--replicas``, ``--measure``, ``--requests`` narrow or lengthen it. PostgreSQL is
``ROLLOUT_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``); each
cell gets a fresh schema, dropped afterwards. Every process is started on loopback and
stopped at the end of its cell; every wait is bounded.
Output: a table on stdout, ``bench/results/scale.json``, ``scale.md`` and ``scale.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
POSTGRES_URL = os.environ.get(
    "ROLLOUT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TOKEN = "dapi-bench-token"  # noqa: S105 -- the local sandbox's own made-up token
BASELINE = "bench-model-3"
CANDIDATE = "bench-model-4"
HEALTHY = {"error_rate": 0.002, "latency_p50_ms": 40, "latency_p99_ms": 120}
QPS = 20.0  # simulated requests per second per endpoint: enough for verdicts, cheap to draw
START_TIMEOUT = 60.0
PROBE_SECONDS = 30.0  # the most one latency probe of a cell may take
TEMPLATE_REUSE = 1200.0  # seconds a driven template rollout is copied into later cells


# ---- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = (10, 100, 1000)
    backends: tuple[str, ...] = ("sqlite", "postgresql")
    ages: tuple[str, ...] = ("fresh", "aged")
    replicas: tuple[int, ...] = (1, 3)
    window_seconds: float = 60.0
    look_seconds: float = 30.0
    aged_hours: float = 6.0
    fresh_minutes: float = 5.0
    measure_seconds: float = 60.0
    requests: int = 20
    quick: bool = False


QUICK = Config(
    sizes=(10, 100),
    window_seconds=10.0,
    look_seconds=5.0,
    aged_hours=0.5,
    fresh_minutes=1.0,
    measure_seconds=15.0,
    requests=10,
    quick=True,
)


@dataclass(frozen=True)
class Cell:
    backend: str
    size: int
    age: str
    replicas: int

    @property
    def name(self) -> str:
        return f"{self.backend} N={self.size} {self.age} x{self.replicas}"


def cells(config: Config) -> list[Cell]:
    """The cells to run, cheapest first; three replicas only on PostgreSQL."""
    out = []
    for size in sorted(config.sizes):
        for backend in config.backends:
            for age in config.ages:
                for replicas in sorted(config.replicas):
                    if replicas > 1 and backend != "postgresql":
                        continue
                    out.append(Cell(backend, size, age, replicas))
    return out


# ---- pure parts: parsing and summarizing ----------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max of some values (None when there are none)."""
    return {
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else None,
        "count": float(len(values)),
    }


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group("name") != name:
            continue
        found = {m.group("key"): m.group("value") for m in _LABEL.finditer(match["labels"] or "")}
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group("value"))
    return total


def metric_series(text: str, name: str) -> int:
    """How many samples of ``name`` a scrape holds (one per labelled series)."""
    return sum(
        1
        for line in text.splitlines()
        if line and not line.startswith("#") and (m := _SAMPLE.match(line)) and m["name"] == name
    )


def cpu_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, from the text of ``/proc/<pid>/stat``."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line


def rss_bytes(status: str) -> int:
    """VmRSS from the text of ``/proc/<pid>/status``, in bytes (0 when absent)."""
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


Snapshot = dict[str, tuple[int, float, float | None]]
"""Rollout id -> (version, updated_at, due_at), as read from the store at one instant."""


def lateness(snapshots: Sequence[Snapshot]) -> list[float]:
    """Seconds each look committed after it was due, from successive store snapshots.

    A rollout whose version moved between two snapshots was looked at: its new ``updated_at``
    minus the ``due_at`` the earlier snapshot showed is that look's lateness (never below 0:
    a look poked early is not late). A rollout with no due time (on demand only) is skipped.
    """
    out: list[float] = []
    for before, after in pairwise(snapshots):
        for rollout_id, (version, updated_at, _due) in after.items():
            previous = before.get(rollout_id)
            if previous is None or previous[0] == version or previous[2] is None:
                continue
            out.append(max(0.0, updated_at - previous[2]))
    return out


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """A cell's report from its raw measurements (see ``measure_cell``)."""
    looks = raw["looks"]
    hours = raw["cpu_window_seconds"] / 3600.0
    size = raw["cell"]["size"]
    growth = raw["store_bytes_end"] - raw["store_bytes_start"]
    return {
        **raw["cell"],
        "looks": looks,
        "looks_per_second": looks / raw["cpu_window_seconds"] if raw["cpu_window_seconds"] else 0,
        "cpu_ms_per_look": raw["cpu_ms"] / looks if looks else None,
        "cpu_cores": raw["cpu_ms"] / 1000.0 / raw["cpu_window_seconds"],
        "lateness_s": spread(raw["lateness"]),
        "controller_lag_max_s": raw["controller_lag_max"],
        "metrics_ms": spread(raw["metrics_ms"]),
        "list_ms": spread(raw["list_ms"]),
        "detail_ms": spread(raw["detail_ms"]),
        "metrics_rollouts": raw["metrics_rollouts"],
        "list_rollouts": raw["list_rollouts"],
        "store_bytes_per_rollout": raw["store_bytes_start"] / size,
        "store_bytes_per_rollout_hour": growth / size / hours if hours else None,
        "state_bytes": raw["state_bytes"],
        "events_per_rollout": raw["events_per_rollout"],
        "rss_mb": raw["rss_max"] / 2**20,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table, with the run's settings above it."""
    settings = report["config"]
    lines = [
        "# Scale benchmark",
        "",
        (
            f"`python -m bench.scale{' --quick' if settings['quick'] else ''}`, "
            f"{settings['window_seconds']:g} s windows, {settings['look_seconds']:g} s looks, "
            f"aged = {settings['aged_hours']:g} h of history, {settings['measure_seconds']:g} s "
            f"CPU window per cell, {settings['requests']} requests per latency probe; "
            f"{report['machine']}. Started {report['started']}."
        ),
        "",
        (
            "| backend | N | age | replicas | CPU ms/look | looks/s | lateness p50/p99/max s "
            "| /metrics p50/p99 ms | list p50/p99 ms | detail p50/p99 ms | store KB/rollout "
            "| store KB/rollout-h | RSS MB |"
        ),
        "|---|---:|---|---:|---:|---:|---|---|---|---|---:|---:|---:|",
    ]
    for row in report["cells"]:
        late = row["lateness_s"]
        lines.append(
            f"| {row['backend']} | {row['size']} | {row['age']} | {row['replicas']} "
            f"| {_ms(row['cpu_ms_per_look'])} | {row['looks_per_second']:.1f} "
            f"| {_s(late['p50'])} / {_s(late['p99'])} / {_s(late['max'])} "
            f"| {_ms(row['metrics_ms']['p50'])} / {_ms(row['metrics_ms']['p99'])} "
            f"| {_ms(row['list_ms']['p50'])} / {_ms(row['list_ms']['p99'])} "
            f"| {_ms(row['detail_ms']['p50'])} / {_ms(row['detail_ms']['p99'])} "
            f"| {row['store_bytes_per_rollout'] / 1024:.0f} "
            f"| {_kb(row['store_bytes_per_rollout_hour'])} | {row['rss_mb']:.0f} |"
        )
    lines += ["", *report.get("notes", [])]
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.0f}"


# ---- templates: one rollout driven for real, in process -------------------------------------


@dataclass
class Template:
    """A rollout's row, events and endpoint config after ``history`` seconds of real engine."""

    plan: dict[str, Any]
    state: dict[str, Any]
    phase: str
    created_at: float
    updated_at: float
    due_at: float | None
    events: list[Any]
    windows: list[Any]
    served_entities: list[dict[str, Any]]
    routes: list[dict[str, Any]]
    built_at: float = field(default_factory=time.time)


def bench_plan(endpoint: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "candidate": {
            "name": CANDIDATE,
            "entity_name": "main.ml.bench_model",
            "entity_version": "4",
            "workload_size": "Small",
            "scale_to_zero_enabled": False,
        },
        "strategy": "canary",
        "steps": [{"weight": 10, "bake": "12h"}],
    }


def build_template(history: float, config: Config) -> Template:
    """Drive one rollout through ``history`` seconds ending now (see the module docstring)."""
    return asyncio.run(_build_template(history, config))


async def _build_template(history: float, config: Config) -> Template:
    from rollout.clock import FakeClock  # noqa: PLC0415 -- the bench's parent stays light
    from rollout.engine.decide import Timing  # noqa: PLC0415
    from rollout.engine.runner import Runner  # noqa: PLC0415
    from rollout.plan import validate_plan  # noqa: PLC0415
    from rollout.policies import PolicyLibrary  # noqa: PLC0415
    from rollout.sandbox.server import SandboxServer  # noqa: PLC0415
    from rollout.serving.auth import PatAuth  # noqa: PLC0415
    from rollout.serving.client import ServingClient  # noqa: PLC0415
    from rollout.serving.retry import RetryPolicy  # noqa: PLC0415
    from rollout.store import open_store  # noqa: PLC0415

    window = config.window_seconds
    start = (time.time() - history) // window * window
    clock = FakeClock(start)
    with tempfile.TemporaryDirectory() as folder, SandboxServer(
        clock=clock, window_seconds=window, update_seconds=min(5.0, window / 4), token=TOKEN
    ) as sandbox:
        with httpx.Client(base_url=sandbox.admin_url, timeout=10) as admin:
            _create_endpoint(
                admin,
                "template",
                [_entity(BASELINE, "3")],
                [{"served_model_name": BASELINE, "traffic_percentage": 100}],
            )
        store = open_store(f"sqlite:///{folder}/template.db")
        store.migrate()
        # The default policy with a deadline past the bake: the rollout must stay active.
        policy = PolicyLibrary().get("default").model_copy(update={"deadline": 86400.0})
        timing = Timing(look_interval=config.look_seconds, update_poll=1, update_deadline=600)
        retry = RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=30)
        async with ServingClient(
            sandbox.url, PatAuth(TOKEN), clock=clock, retry=retry, poll_interval=1
        ) as client:
            runner = Runner(store, client, clock=clock, timing=timing)
            record = await runner.submit(validate_plan(bench_plan("template")), policy)
            while clock.now() - start < history:
                result = await runner.reconcile(record.id)
                if result.phase.terminal:
                    raise RuntimeError(f"the template rollout ended early: {result.phase}")
                due = store.get(record.id).due_at
                if due is None:
                    raise RuntimeError("the template rollout has no due time")
                clock.advance(max(0.0, min(due, start + history) - clock.now()))
            endpoint = await client.get_endpoint("template")
        final = store.get(record.id)
        events = store.events(record.id)
        windows = store.windows(record.id)
        store.close()
    if endpoint.config is None:
        raise RuntimeError("the template endpoint has no config")
    raw = endpoint.model_dump(mode="json", exclude_none=True)
    served = raw["config"]["served_entities"]
    routes = raw["config"].get("traffic_config", {}).get("routes", [])
    return Template(
        plan=final.plan,
        state=final.state,
        phase=final.phase,
        created_at=final.created_at,
        updated_at=final.updated_at,
        due_at=final.due_at,
        events=events,
        windows=windows,
        served_entities=[
            {k: v for k, v in entity.items() if k in _ENTITY_FIELDS} for entity in served
        ],
        routes=routes,
    )


_ENTITY_FIELDS = frozenset(
    {"name", "entity_name", "entity_version", "workload_size", "scale_to_zero_enabled"}
)


def _entity(name: str, version: str) -> dict[str, Any]:
    return {
        "name": name,
        "entity_name": "main.ml.bench_model",
        "entity_version": version,
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }


def _create_endpoint(
    admin: httpx.Client, name: str, entities: list[dict[str, Any]], routes: list[dict[str, Any]]
) -> None:
    response = admin.post(
        "/endpoints",
        json={
            "name": name,
            "served_entities": entities,
            "traffic_config": {"routes": routes},
            "profiles": {BASELINE: HEALTHY, CANDIDATE: HEALTHY},
            "qps": QPS,
        },
    )
    if response.status_code != 201:
        raise RuntimeError(f"the sandbox refused endpoint {name}: {response.text[:300]}")


# ---- stores -------------------------------------------------------------------------------


@contextmanager
def store_url(backend: str, folder: Path) -> Iterator[str]:
    """A fresh, empty store: a new SQLite file, or a new PostgreSQL schema (dropped after)."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'rollout.db'}"
        return
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    schema = f"scale_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        separator = "&" if "?" in POSTGRES_URL else "?"
        try:
            yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


class StoreProbe:
    """Plain-column reads of the store (no JSON): look snapshots and the store's size."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None
        if backend == "sqlite":
            self.path = Path(url.removeprefix("sqlite:///"))
            self._sqlite = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        else:
            import psycopg  # noqa: PLC0415

            self._pg = psycopg.connect(url, autocommit=True)

    def _rows(self, query: str) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return self._sqlite.execute(query).fetchall()
        return list(self._pg.execute(query).fetchall())

    def snapshot(self) -> Snapshot:
        rows = self._rows("SELECT id, version, updated_at, due_at FROM rollouts")
        return {
            str(r[0]): (int(r[1]), float(r[2]), None if r[3] is None else float(r[3]))
            for r in rows
        }

    def size(self) -> int:
        if self._sqlite is not None:
            # Pages in use as this reader sees the database (WAL frames included, free pages
            # not): what the rows take, not how far the WAL file has grown since a checkpoint.
            used = int(self._rows("PRAGMA page_count")[0][0])
            used -= int(self._rows("PRAGMA freelist_count")[0][0])
            return used * int(self._rows("PRAGMA page_size")[0][0])
        rows = self._rows(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
        return int(rows[0][0])

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()


def seed(url: str, template: Template, size: int, look_seconds: float) -> None:
    """N copies of the template rollout (see the module docstring), committed as the engine
    commits: created, then one commit with the template's state and its later events."""
    from rollout.store import NewEvent, RolloutRecord, WindowChanges, open_store  # noqa: PLC0415

    store = open_store(url)
    store.migrate()
    events = [
        NewEvent(e.kind, e.from_phase, e.to_phase, e.reason, e.data, e.at) for e in template.events
    ]
    try:
        for index in range(size):
            endpoint = f"bench-{index:04d}"
            offset = index * look_seconds / size  # looks spread over one interval
            record = RolloutRecord(
                id=f"bench{index:04d}{uuid.uuid4().hex[:6]}",
                endpoint=endpoint,
                phase="pending",
                version=1,
                plan={**template.plan, "endpoint": endpoint},
                state={"started_at": template.state["started_at"]},
                created_at=template.created_at + index * 1e-3,
                updated_at=template.created_at,
                due_at=template.created_at,
            )
            created = store.create(record, events[0], [])
            store.commit(
                created.id,
                created.version,
                phase=template.phase,
                state=template.state,
                due_at=None if template.due_at is None else template.due_at + offset,
                updated_at=template.updated_at,
                events=events[1:],
                alerts=[],
                consumed_commands=[],
                # The windows go with the first copy; the others get them in one statement.
                windows=WindowChanges(upsert=template.windows if index == 0 else ()),
            )
    finally:
        store.close()
    if size > 1 and template.windows:
        _copy_windows(url)


def _copy_windows(url: str) -> None:
    """Every seeded rollout gets the first one's (``bench0000...``) metric windows, in one
    statement (1,000 copies of 30 minutes of windows through the store's API took a minute),
    in the order a running controller writes them."""
    query = (
        "INSERT INTO metric_windows (rollout_id, entity, start_ms, data) "
        "SELECT r.id, w.entity, w.start_ms, w.data FROM rollouts r "
        "CROSS JOIN metric_windows w "
        "WHERE w.rollout_id = (SELECT id FROM rollouts WHERE id LIKE 'bench0000%') "
        "AND r.id NOT LIKE 'bench0000%' "
        # Time-major, as a running controller writes them (a minute's windows of every
        # rollout together): pages then empty, and are reused, as their windows age out.
        "ORDER BY w.start_ms, r.id, w.entity"
    )
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30) as connection:
            connection.execute(query)
        return
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(query)


# ---- processes ----------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    # The checkout under test, whatever an editable install elsewhere points at.
    inherited = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + inherited if inherited else "")
    return env


class Process:
    """A child process whose first matching output line gives its URL; stopped by its pid."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, pattern: str) -> None:
        self.log = log
        # The project's own commands, with arguments built here.
        self.process = subprocess.Popen(  # noqa: S603
            argv, env=env, stdout=subprocess.PIPE, stderr=log.open("ab"), text=True
        )
        self.url = self._wait_for(pattern)
        # Keep draining stdout so a chatty child never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_for(self, pattern: str) -> str:
        stdout = self.process.stdout
        if stdout is None:
            raise RuntimeError("no stdout to read the URL from")
        found: list[str] = []

        def read() -> None:
            for line in stdout:
                match = re.search(pattern, line)
                if match:
                    found.append(match.group(1))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not found:
            self.stop()
            raise RuntimeError(f"{self.log.stem} did not start: {self.log.read_text()[-1500:]}")
        return found[0]

    def _drain(self) -> None:
        for _ in self.process.stdout or ():
            pass

    def cpu_ms(self) -> float:
        ticks = cpu_ticks(Path(f"/proc/{self.pid}/stat").read_text())
        return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        return rss_bytes(Path(f"/proc/{self.pid}/status").read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_sandbox(config: Config, folder: Path) -> Process:
    return Process(
        [sys.executable, "-m", "rollout.cli", "sandbox", "--port", "0", "--window-seconds",
         f"{config.window_seconds:g}", "--update-seconds", "1", "--seed", "1", "--token", TOKEN],
        _env(), folder / "sandbox.log", r"listening on (http://127\.0\.0\.1:\d+)",
    )  # fmt: skip


def start_serve(config: Config, sandbox: str, store: str, log: Path) -> Process:
    env = _env()
    env.update(
        {
            "DATABRICKS_HOST": sandbox,
            "DATABRICKS_TOKEN": TOKEN,
            "ROLLOUT_STORE_URL": store,
            "ROLLOUT_API_HOST": "127.0.0.1",
            "ROLLOUT_API_PORT": "0",
            "ROLLOUT_ENGINE_LOOK_INTERVAL": f"{config.look_seconds:g}",
            "ROLLOUT_SERVING_METRICS_WINDOW": f"{config.window_seconds:g}",
            "ROLLOUT_LOG_LEVEL": "warning",
            "ROLLOUT_LOG_FORMAT": "json",
        }
    )
    return Process(
        [sys.executable, "-m", "rollout.cli", "serve"], env, log, r"(http://127\.0\.0\.1:\d+)"
    )


# ---- one cell -----------------------------------------------------------------------------


def timed_gets(client: httpx.Client, path: str, count: int) -> tuple[list[float], httpx.Response]:
    """Sequential GETs (at most ``count``, at most PROBE_SECONDS); their latencies in ms."""
    times: list[float] = []
    last: httpx.Response | None = None
    deadline = time.monotonic() + PROBE_SECONDS
    while len(times) < count and time.monotonic() < deadline:
        began = time.perf_counter()
        last = client.get(path)
        times.append((time.perf_counter() - began) * 1000.0)
        last.raise_for_status()
    if last is None:
        raise RuntimeError(f"no answer to GET {path} within {PROBE_SECONDS:g} s")
    return times, last


def measure_cell(cell: Cell, config: Config, template: Template) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rollout-scale-") as name:
        folder = Path(name)
        sandbox = start_sandbox(config, folder)
        servers: list[Process] = []
        try:
            with httpx.Client(base_url=sandbox.url + "/_sandbox/v1", timeout=30) as admin:
                for index in range(cell.size):
                    _create_endpoint(
                        admin, f"bench-{index:04d}", template.served_entities, template.routes
                    )
            with store_url(cell.backend, folder) as url:
                seed(url, template, cell.size, config.look_seconds)
                probe = StoreProbe(cell.backend, url)
                try:
                    servers.extend(
                        start_serve(config, sandbox.url, url, folder / f"serve{replica}.log")
                        for replica in range(cell.replicas)
                    )
                    return _measure(cell, config, template, servers, probe)
                finally:
                    for server in servers:
                        server.stop()
                    probe.close()
        finally:
            for server in servers:
                server.stop()
            sandbox.stop()


def _measure(
    cell: Cell, config: Config, template: Template, servers: list[Process], probe: StoreProbe
) -> dict[str, Any]:
    clients = [httpx.Client(base_url=s.url, timeout=120) for s in servers]
    try:
        # Settle: the first round of looks (every seeded rollout is due within one interval).
        settle_until = time.monotonic() + config.look_seconds + 5
        while time.monotonic() < settle_until:
            time.sleep(0.5)

        def looks() -> float:
            return sum(
                metric_sum(
                    c.get("/metrics").text,
                    "rollout_serving_requests_total",
                    call="export_metrics",
                )
                for c in clients
            )

        looks_before = looks()
        cpu_before = sum(s.cpu_ms() for s in servers)
        size_before = probe.size()
        began = time.monotonic()
        snapshots: list[Snapshot] = [probe.snapshot()]
        while time.monotonic() - began < config.measure_seconds:
            time.sleep(1.0)
            snapshots.append(probe.snapshot())
        elapsed = time.monotonic() - began
        cpu_after = sum(s.cpu_ms() for s in servers)
        size_after = probe.size()
        looks_done = looks() - looks_before
        texts = [c.get("/metrics").text for c in clients]
        lag_max = max(metric_sum(t, "rollout_reconcile_lag_seconds") for t in texts)

        first = clients[0]
        metrics_ms, metrics_answer = timed_gets(first, "/metrics", config.requests)
        list_ms, list_answer = timed_gets(first, "/api/v1/rollouts?limit=1000", config.requests)
        listed = list_answer.json()["rollouts"]
        detail_ms, _ = timed_gets(first, f"/api/v1/rollouts/{listed[0]['id']}", config.requests)
        rss = max(s.rss() for s in servers)
    finally:
        for client in clients:
            client.close()
    return {
        "cell": asdict(cell),
        "looks": looks_done,
        "cpu_ms": cpu_after - cpu_before,
        "cpu_window_seconds": elapsed,
        "lateness": lateness(snapshots),
        "controller_lag_max": lag_max,
        "metrics_ms": metrics_ms,
        "list_ms": list_ms,
        "detail_ms": detail_ms,
        "metrics_rollouts": metric_series(metrics_answer.text, "rollout_info"),
        "list_rollouts": len(listed),
        "store_bytes_start": size_before,
        "store_bytes_end": size_after,
        "state_bytes": len(json.dumps(template.state)),
        "events_per_rollout": len(template.events),
        "rss_max": rss,
    }


# ---- the run ------------------------------------------------------------------------------


def run(config: Config, out: Path) -> dict[str, Any]:
    from rollout.settings import LogSettings  # noqa: PLC0415
    from rollout.telemetry import configure_logging  # noqa: PLC0415

    configure_logging(LogSettings(level="warning", format="json"), stream=sys.stderr)
    report: dict[str, Any] = {
        "config": asdict(config),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}",
        "cells": [],
        "notes": [
            (
                "Three replicas: three serve processes on one PostgreSQL store, sharing the "
                "rollouts through per-rollout leases."
            ),
            (
                "Lateness: commit time of a look minus its due time, from the store's columns "
                "sampled every second. CPU: serve process(es) only, over the CPU window; the "
                "sandbox and this program run on the same cores."
            ),
        ],
    }
    templates: dict[str, Template] = {}
    for cell in cells(config):
        history = (
            config.aged_hours * 3600.0 if cell.age == "aged" else config.fresh_minutes * 60.0
        )
        cached = templates.get(cell.age)
        # Rebuilt after TEMPLATE_REUSE seconds: "aged 6 h" is 6 h to 6 h 20 min at seeding
        # (the tracker keeps 6 h of windows, so an older copy holds no more history).
        if cached is None or time.time() - cached.built_at > TEMPLATE_REUSE:
            began = time.monotonic()
            cached = templates[cell.age] = build_template(history, config)
            print(
                f"  template {cell.age}: {len(json.dumps(cached.state)) / 1024:.0f} KB state, "
                f"{len(cached.events)} events, built in {time.monotonic() - began:.0f} s",
                flush=True,
            )
        began = time.monotonic()
        raw = measure_cell(cell, config, cached)
        row = summarize(raw)
        report["cells"].append(row)
        print(
            f"{cell.name:32} cpu/look {_ms(row['cpu_ms_per_look'])} ms, "
            f"late p99 {_s(row['lateness_s']['p99'])} s, /metrics p50 "
            f"{_ms(row['metrics_ms']['p50'])} ms ({row['metrics_rollouts']} rollouts), list p50 "
            f"{_ms(row['list_ms']['p50'])} ms, detail p50 {_ms(row['detail_ms']['p50'])} ms, "
            f"rss {row['rss_mb']:.0f} MB ({time.monotonic() - began:.0f} s)",
            flush=True,
        )
        write(report, out)
    return report


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scale.md").write_text(markdown(report))
    plot(report, out / "scale.png")


def plot(report: dict[str, Any], path: Path) -> None:
    """CPU per look, /metrics and list latency against N, one line per backend/age/replicas."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        ("cpu_ms_per_look", "CPU ms per look", None),
        ("metrics_ms", "/metrics p50 ms", 250.0),
        ("list_ms", "list (summaries) p50 ms", 300.0),
    ]
    lines: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in report["cells"]:
        lines.setdefault((row["backend"], row["age"], row["replicas"]), []).append(row)
    for axis, (key, title, target) in zip(axes, panels, strict=True):
        for (backend, age, replicas), unordered in sorted(lines.items()):
            rows = sorted(unordered, key=lambda r: r["size"])
            values = [r[key] if key == "cpu_ms_per_look" else r[key]["p50"] for r in rows]
            axis.plot(
                [r["size"] for r in rows],
                [math.nan if v is None else v for v in values],
                marker="o",
                linestyle="-" if age == "aged" else "--",
                label=f"{backend} {age} x{replicas}",
            )
        if target is not None:
            axis.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("active rollouts")
        axis.set_title(title)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N=10,100, short")
    parser.add_argument("--sizes", help="comma-separated N, e.g. 10,100,1000")
    parser.add_argument("--backends", help="sqlite,postgresql")
    parser.add_argument("--ages", help="fresh,aged")
    parser.add_argument("--replicas", help="1,3")
    parser.add_argument("--measure", type=float, help="seconds of CPU window per cell")
    parser.add_argument("--requests", type=int, help="requests per latency probe")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = QUICK if args.quick else Config()
    if args.sizes:
        config = replace(config, sizes=tuple(int(s) for s in args.sizes.split(",")))
    if args.backends:
        config = replace(config, backends=tuple(args.backends.split(",")))
    if args.ages:
        config = replace(config, ages=tuple(args.ages.split(",")))
    if args.replicas:
        config = replace(config, replicas=tuple(int(r) for r in args.replicas.split(",")))
    if args.measure:
        config = replace(config, measure_seconds=args.measure)
    if args.requests:
        config = replace(config, requests=args.requests)
    report = run(config, args.out)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        sys.exit(main())
