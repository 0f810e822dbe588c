"""Shared pieces of the end-to-end tests: the sandbox as its own process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

TOKEN = "dapi-e2e-token"


@pytest.fixture
def sandbox_token() -> str:
    """The CAN_MANAGE token of ``sandbox_process``."""
    return TOKEN


@pytest.fixture
def sandbox_process() -> Iterator[str]:
    """``rollout sandbox`` as a subprocess on the real clock (2 s windows); yields its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "sandbox", "--port", "0", "--window-seconds", "2",
         "--update-seconds", "1.5", "--seed", "7", "--token", TOKEN],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, "the sandbox did not start"
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
