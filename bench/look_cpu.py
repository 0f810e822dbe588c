"""Look CPU: what one look of an aged rollout costs the controller, in process, per part.

Where this sits: not shipped (``bench/`` is outside the wheel). ``bench/scale.py`` measures a
whole ``rollout serve`` process with up to thousands of rollouts (minutes per cell); this is
its quick companion for working on the cost of one look. It wires a controller the way
``rollout serve`` does (``rollout.daemon.build``: serving client with the metrics and
workspace-watch hooks, store, ownership, runner with the decision observer) against an
in-process sandbox on a fake clock, submits K rollouts (a canary at 10 % with a 12 h bake
and a healthy candidate, as in ``bench/scale.py``), ages them ``--age`` simulated hours with
a look every 30 s (60 s metric windows), then measures ``--measure`` simulated hours more:

- CPU ms per look: user + system time of the controller's threads (the event loop, the
  store's worker threads, the store's pool) from ``/proc/self/task/<tid>/stat``, the sandbox
  server's thread left out, divided by the looks done;
- with ``--py-spy PATH``: a py-spy profile (``--gil``, raw folded stacks) of the measured
  looks only.

Each look is what the reconcile loop does for a due rollout: ``Owner.hold`` then
``Runner.reconcile``; the scheduler's scans are left out. The store is SQLite (a new file) or
PostgreSQL (``ROLLOUT_BENCH_POSTGRES_URL``, a fresh schema dropped afterwards).

Run: ``python -m bench.look_cpu --backend postgresql`` (K = 4, 6 h aged, 1 h measured:
about 480 looks, under a minute). The numbers are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.scale import BASELINE, TOKEN, _create_endpoint, _entity, bench_plan, store_url


def thread_cpu_ms(skip: set[int]) -> float:
    """CPU (user + system) of this process's threads, those in ``skip`` left out, in ms."""
    ticks = 0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) in skip:
            continue
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


def start_py_spy(path: Path) -> subprocess.Popen[bytes]:
    """py-spy recording this process (only threads holding the GIL), into ``path``."""
    spy = subprocess.Popen(  # noqa: S603 -- a profiler of this very process
        ["py-spy", "record", "--gil", "--nonblocking", "-r", "250", "-f", "raw",  # noqa: S607
         "-p", str(os.getpid()), "-o", str(path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # py-spy attaches
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
    spy.wait(timeout=60)


async def drive(controller: Any, ids: list[str], until: float) -> int:
    """Look at each rollout when it is due until ``until`` (clock time); the looks done.

    What the reconcile loop does for a due rollout (``Owner.hold``, ``Runner.reconcile``),
    and the heartbeat every third of the lease TTL; the clock jumps to the next due look.
    """
    runner, owner = controller.reconciler.runner, controller.ownership
    clock = controller.reconciler.clock
    looks = 0
    due = dict.fromkeys(ids, clock.now())
    next_heartbeat = clock.now()
    while (upcoming := min(due.values())) < until:
        # Time passes no faster than the heartbeat's period: the leases stay live.
        clock.advance(max(0.0, min(upcoming, next_heartbeat) - clock.now()))
        if clock.now() >= next_heartbeat:
            await owner.heartbeat()
            next_heartbeat = clock.now() + owner.renew_every
        for rollout_id, at in due.items():
            if at > clock.now():
                continue
            if await owner.hold(rollout_id) is None:
                raise RuntimeError(f"no lease on {rollout_id}")
            result = await runner.reconcile(rollout_id)
            if result.phase.terminal:
                raise RuntimeError(f"{rollout_id} ended early: {result.phase}")
            looks += 1
            # The due time the look committed, as the runner keeps it (no store read).
            record = runner._kept[rollout_id].record
            if record is None or record.due_at is None:
                raise RuntimeError(f"{rollout_id} has no due time")
            due[rollout_id] = record.due_at
    return looks


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from rollout.clock import FakeClock  # noqa: PLC0415
    from rollout.daemon import build  # noqa: PLC0415
    from rollout.plan import validate_plan  # noqa: PLC0415
    from rollout.policies import PolicyLibrary  # noqa: PLC0415
    from rollout.sandbox.server import SandboxServer  # noqa: PLC0415
    from rollout.settings import Settings  # noqa: PLC0415

    window, look = 60.0, 30.0
    start = (time.time() - args.age * 3600.0) // window * window
    clock = FakeClock(start)
    with tempfile.TemporaryDirectory() as folder, SandboxServer(
        clock=clock, window_seconds=window, update_seconds=5.0, token=TOKEN
    ) as sandbox, store_url(args.backend, Path(folder)) as url:
        with httpx.Client(base_url=sandbox.admin_url, timeout=10) as admin:
            for index in range(args.rollouts):
                _create_endpoint(
                    admin,
                    f"look-{index}",
                    [_entity(BASELINE, "3")],
                    [{"served_model_name": BASELINE, "traffic_percentage": 100}],
                )
        os.environ.update(
            {
                "DATABRICKS_HOST": sandbox.url,
                "DATABRICKS_TOKEN": TOKEN,
                "ROLLOUT_STORE_URL": url,
                "ROLLOUT_API_HOST": "127.0.0.1",
                "ROLLOUT_API_PORT": "0",
                "ROLLOUT_ENGINE_LOOK_INTERVAL": f"{look:g}",
                "ROLLOUT_SERVING_METRICS_WINDOW": f"{window:g}",
            }
        )
        controller = build(Settings(), clock=clock)
        controller.sock.close()  # the API is not part of a look
        policy = PolicyLibrary().get("default").model_copy(update={"deadline": 86400.0})
        try:
            ids = [
                (await controller.reconciler.runner.submit(
                    validate_plan(bench_plan(f"look-{i}")), policy
                )).id
                for i in range(args.rollouts)
            ]  # fmt: skip
            await drive(controller, ids, start + args.age * 3600.0)
            skip = {t.native_id for t in threading.enumerate() if t.name == "sandbox-server"}
            spy = start_py_spy(args.py_spy) if args.py_spy else None
            cpu_before = thread_cpu_ms({tid for tid in skip if tid is not None})
            wall_before = time.perf_counter()
            looks = await drive(controller, ids, clock.now() + args.measure * 3600.0)
            cpu = thread_cpu_ms({tid for tid in skip if tid is not None}) - cpu_before
            wall = time.perf_counter() - wall_before
            if spy is not None:
                stop_py_spy(spy)
        finally:
            await controller.client.aclose()
            await controller.alerts_http.aclose()
            controller.store.close()
    return {
        "backend": args.backend,
        "rollouts": args.rollouts,
        "looks": looks,
        "cpu_ms_per_look": cpu / looks if looks else None,
        "wall_ms_per_look": wall * 1000.0 / looks if looks else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--age", type=float, default=6.0, help="simulated hours before")
    parser.add_argument("--measure", type=float, default=1.0, help="simulated hours measured")
    parser.add_argument("--py-spy", type=Path, help="write a py-spy profile of the looks here")
    args = parser.parse_args(argv)
    from rollout.settings import LogSettings  # noqa: PLC0415
    from rollout.telemetry import configure_logging  # noqa: PLC0415

    configure_logging(LogSettings(level="warning", format="json"), stream=sys.stderr)
    report = asyncio.run(run(args))
    print(
        f"{report['backend']}: {report['looks']} looks of {report['rollouts']} rollouts, "
        f"CPU {report['cpu_ms_per_look']:.2f} ms/look, wall {report['wall_ms_per_look']:.2f} "
        f"ms/look",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
