"""A real Prometheus as a process on a free loopback port, for the checks on own metrics.

``running_prometheus(tmp, scrape_configs)`` writes a configuration with 1 s intervals, starts
the ``prometheus`` binary (installed by .ci/run) and yields its URL once every job has been
scraped; the process is stopped afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def running_prometheus(
    tmp: Path,
    scrape_configs: list[dict[str, Any]],
    *,
    self_labels: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[str]:
    """``self_labels``: also scrape Prometheus itself (job ``prometheus``) with these labels
    on its series, a ready-made metric to query."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (.ci/run installs it)"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if self_labels is not None:
        scrape_configs = [*scrape_configs, {
            "job_name": "prometheus",
            "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": self_labels}],
        }]
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": scrape_configs,
    }))
    log = tmp / "prometheus.log"
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp,
    )
    try:
        jobs = {job["job_name"] for job in scrape_configs}
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                body = httpx.get(f"{url}/api/v1/query", params={"query": "up == 1"},
                                 timeout=5).json()
                if {r["metric"]["job"] for r in body["data"]["result"]} >= jobs:
                    break
            assert time.monotonic() < deadline, "Prometheus did not scrape every job in time"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
