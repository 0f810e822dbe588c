"""Signing in the way Databricks users do, through databricks-sdk, against the sandbox over HTTP.

Each sign-in method that can run offline drives real client calls: a PAT, OAuth M2M against
the sandbox's token endpoint, a ``databricks auth login`` profile through a stand-in
``databricks`` CLI on PATH, the metadata service through a stand-in HTTP server, a
``~/.databrickscfg`` profile, ``DATABRICKS_CONFIG_FILE``; a 401 re-resolves once. The sandbox's
request log shows which credential each request bore.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from rollout.clock import SystemClock
from rollout.daemon import _check_sign_in
from rollout.sandbox.server import SandboxServer
from rollout.serving.client import ServingClient
from rollout.serving.errors import ConfigurationError, Unauthenticated
from rollout.serving.sdk_auth import SdkAuth
from rollout.settings import DatabricksSettings, ServingSettings

pytest.importorskip("databricks.sdk")

ENTITY = {
    "name": "ads-1",
    "entity_name": "main.ml.ads_model",
    "entity_version": "1",
    "workload_size": "Small",
    "scale_to_zero_enabled": False,
}
# Variables through which databricks-sdk would find credentials of the machine running the tests.
_FOREIGN = ("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_", "ACTIONS_ID_TOKEN", "SYSTEM_")


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty HOME and no Databricks, Azure or Google variables: only what a test sets."""
    for variable in list(os.environ):
        if variable.startswith(_FOREIGN):
            monkeypatch.delenv(variable)
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    # No databricks or az CLI of this machine: only the stand-ins tests put on PATH.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    return path


def endpoint(admin: httpx.Client, name: str = "ads", *, route_optimized: bool = False) -> str:
    response = admin.post(
        "/endpoints",
        json={"name": name, "served_entities": [ENTITY], "route_optimized": route_optimized},
    )
    assert response.status_code == 201, response.text
    return name


def requests_log(admin: httpx.Client) -> list[dict[str, Any]]:
    response = admin.get("/requests")
    assert response.status_code == 200, response.text
    log: list[dict[str, Any]] = response.json()["requests"]
    return log


def api_credentials(admin: httpx.Client) -> list[str]:
    """The credential kind of every serving API request the sandbox logged."""
    return [r["credential"] for r in requests_log(admin) if r["path"].startswith("/api/2.0/")]


def stats(admin: httpx.Client) -> dict[str, Any]:
    data: dict[str, Any] = admin.get("/stats").json()
    return data


def sdk_client(databricks: DatabricksSettings | None = None) -> ServingClient:
    client = ServingClient.from_settings(
        databricks or DatabricksSettings(),
        ServingSettings(auth_resolver="sdk", request_timeout=10.0, retry_budget=5.0),
        clock=SystemClock(),
    )
    assert isinstance(client.auth, SdkAuth)
    return client


async def test_pat_from_the_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    name = endpoint(sandbox_admin)
    monkeypatch.setenv("DATABRICKS_HOST", sandbox.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", sandbox.token)
    async with sdk_client() as client:
        assert (await client.get_endpoint(name)).name == name
        assert [e.name for e in await client.list_endpoints()] == [name]
        assert not await client.signs_in_with_oauth()
        assert isinstance(client.auth, SdkAuth)
        assert client.auth.auth_type == "pat"
        # A PAT does not expire: signed in once for every call.
        assert client.auth.resolutions == 1
    assert api_credentials(sandbox_admin) == ["pat", "pat"]


async def test_oauth_m2m_against_the_sandbox_token_endpoint(
    home: Path, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    name = endpoint(sandbox_admin)
    databricks = DatabricksSettings(
        host=sandbox.url, client_id="sandbox-client", client_secret="sandbox-secret"
    )
    async with sdk_client(databricks) as client:
        for _ in range(5):
            await client.get_endpoint(name)
        assert await client.signs_in_with_oauth()
        assert isinstance(client.auth, SdkAuth)
        assert client.auth.auth_type == "oauth-m2m"
        # Cached until the token's expiry: one token and one sign-in for every call.
        assert client.auth.resolutions == 1
    assert stats(sandbox_admin)["oauth_tokens_issued"] == 1
    assert api_credentials(sandbox_admin) == ["oauth"] * 5
    token_requests = [r for r in requests_log(sandbox_admin) if r["path"] == "/oidc/v1/token"]
    assert [r["credential"] for r in token_requests] == ["basic"]


def stand_in_cli(directory: Path, sandbox: SandboxServer, argv_log: Path) -> Path:
    """A ``databricks`` executable answering ``version`` and ``auth token`` as the CLI does.

    ``auth token`` prints what the real command prints, ``{"access_token", "token_type",
    "expiry"}``; its token is an OAuth token from the sandbox's token endpoint, as the CLI's
    cached login would hold one.
    """
    script = directory / "databricks"
    script.write_text(
        f"""#!{sys.executable}
import base64, datetime, json, sys, urllib.request
with open({str(argv_log)!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:1] == ["version"]:
    print(json.dumps({{"Version": "0.300.0", "Major": 0, "Minor": 300, "Patch": 0}}))
    sys.exit(0)
if args[:2] != ["auth", "token"]:
    print("Error: unknown command", file=sys.stderr)
    sys.exit(1)
basic = base64.b64encode(b"sandbox-client:sandbox-secret").decode()
request = urllib.request.Request(
    {sandbox.url + "/oidc/v1/token"!r},
    data=b"grant_type=client_credentials&scope=all-apis",
    headers={{"Authorization": "Basic " + basic,
             "Content-Type": "application/x-www-form-urlencoded"}},
)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
body = json.load(opener.open(request, timeout=10))
expiry = datetime.datetime.now() + datetime.timedelta(seconds=body["expires_in"])
print(json.dumps({{"access_token": body["access_token"], "token_type": "Bearer",
                  "expiry": expiry.isoformat(timespec="microseconds")}}, indent=2))
""",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def cli_calls(argv_log: Path) -> list[list[str]]:
    return [json.loads(line) for line in argv_log.read_text().splitlines()]


@pytest.fixture
def cli_log(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sandbox: SandboxServer
) -> Path:
    """The stand-in ``databricks`` CLI on PATH; the file its argument lists are written to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_log = tmp_path / "argv.jsonl"
    stand_in_cli(bin_dir, sandbox, argv_log)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return argv_log


@pytest.mark.parametrize("auth_type_line", ["auth_type = databricks-cli\n", ""])
async def test_databricks_cli_profile(
    home: Path,
    cli_log: Path,
    sandbox: SandboxServer,
    sandbox_admin: httpx.Client,
    auth_type_line: str,
) -> None:
    """A profile `databricks auth login` wrote, with its auth_type or with only a host."""
    name = endpoint(sandbox_admin)
    argv_log = cli_log
    (home / ".databrickscfg").write_text(f"[dev]\nhost = {sandbox.url}\n{auth_type_line}")
    async with sdk_client(DatabricksSettings(config_profile="dev")) as client:
        assert client.host == sandbox.url
        for _ in range(3):
            await client.get_endpoint(name)
        assert await client.signs_in_with_oauth()
        assert isinstance(client.auth, SdkAuth)
        assert client.auth.auth_type == "databricks-cli"
    token_calls = [c for c in cli_calls(argv_log) if c[:2] == ["auth", "token"]]
    assert token_calls
    assert all(c == ["auth", "token", "--profile", "dev", "--force-refresh"] for c in token_calls)
    assert api_credentials(sandbox_admin) == ["oauth"] * 3


async def test_databricks_auth_type_from_the_environment(
    cli_log: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxServer,
    sandbox_admin: httpx.Client,
) -> None:
    """DATABRICKS_AUTH_TYPE=databricks-cli with DATABRICKS_HOST: the CLI asked by --host."""
    name = endpoint(sandbox_admin)
    argv_log = cli_log
    monkeypatch.setenv("DATABRICKS_HOST", sandbox.url)
    monkeypatch.setenv("DATABRICKS_AUTH_TYPE", "databricks-cli")
    settings = DatabricksSettings()
    assert settings.auth_type == "databricks-cli"
    async with sdk_client(settings) as client:
        await client.get_endpoint(name)
    token_calls = [c for c in cli_calls(argv_log) if c[:2] == ["auth", "token"]]
    assert token_calls[0][:4] == ["auth", "token", "--host", sandbox.url]


class MetadataService:
    """A stand-in of the Databricks metadata service: a token for the right headers only.

    databricks-sdk sends ``X-Databricks-Metadata-Version: 1`` and ``X-Databricks-Host: <host>``
    and expects ``{"access_token", "token_type", "expires_on"}`` (epoch seconds).
    """

    def __init__(self, host: str, token: str) -> None:
        self.host, self.token = host, token
        self.served = 0
        self.refused: list[dict[str, str]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                if (
                    headers.get("x-databricks-metadata-version") != "1"
                    or headers.get("x-databricks-host") != service.host
                ):
                    service.refused.append(headers)
                    self.send_response(400)
                    self.end_headers()
                    return
                service.served += 1
                body = json.dumps(
                    {
                        "access_token": service.token,
                        "token_type": "Bearer",
                        "expires_on": int(time.time()) + 3600,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metadata/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MetadataService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def metadata_service(
    sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> Iterator[MetadataService]:
    token = "metadata-issued-token"
    response = sandbox_admin.post("/tokens", json={"token": token, "permission": "CAN_MANAGE"})
    assert response.status_code == 201, response.text
    with MetadataService(sandbox.url, token) as service:
        yield service


async def test_metadata_service(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxServer,
    sandbox_admin: httpx.Client,
    metadata_service: MetadataService,
) -> None:
    name = endpoint(sandbox_admin)
    monkeypatch.setenv("DATABRICKS_METADATA_SERVICE_URL", metadata_service.url)
    async with sdk_client(DatabricksSettings(host=sandbox.url)) as client:
        await client.get_endpoint(name)
        await client.get_endpoint(name)
        assert isinstance(client.auth, SdkAuth)
        assert client.auth.auth_type == "metadata-service"
    assert metadata_service.served >= 1
    assert metadata_service.refused == []
    assert api_credentials(sandbox_admin) == ["pat", "pat"]  # a token added by hand, not OAuth


async def test_default_profile_of_the_config_file_in_home(
    home: Path, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    name = endpoint(sandbox_admin)
    (home / ".databrickscfg").write_text(
        f"[DEFAULT]\nhost = {sandbox.url}\ntoken = {sandbox.token}\n"
        "[other]\nhost = https://elsewhere.example.com\ntoken = dapi-other\n"
    )
    async with sdk_client() as client:
        assert client.host == sandbox.url
        await client.get_endpoint(name)
    assert api_credentials(sandbox_admin) == ["pat"]


async def test_databricks_config_file_and_profile_from_the_environment(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sandbox: SandboxServer,
    sandbox_admin: httpx.Client,
) -> None:
    name = endpoint(sandbox_admin)
    path = tmp_path / "elsewhere.cfg"
    path.write_text(
        "[DEFAULT]\nhost = https://wrong.example.com\ntoken = dapi-wrong\n"
        f"[sp]\nhost = {sandbox.url}\nclient_id = sandbox-client\n"
        "client_secret = sandbox-secret\n"
    )
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(path))
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "sp")
    async with sdk_client() as client:
        assert client.host == sandbox.url
        await client.get_endpoint(name)
        assert await client.signs_in_with_oauth()
    assert api_credentials(sandbox_admin) == ["oauth"]


async def test_a_401_re_resolves_once_and_picks_up_a_rotated_pat(
    home: Path, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    name = endpoint(sandbox_admin)
    for token in ("dapi-old", "dapi-new"):
        assert sandbox_admin.post("/tokens", json={"token": token}).status_code == 201
    profile = home / ".databrickscfg"
    profile.write_text(f"[DEFAULT]\nhost = {sandbox.url}\ntoken = dapi-old\n")
    async with sdk_client() as client:
        await client.get_endpoint(name)
        # The old token is revoked and the profile rewritten, as a rotation does.
        revoked = sandbox_admin.post("/tokens/revoke", json={"token": "dapi-old"})
        assert revoked.json() == {"revoked": 1}
        profile.write_text(f"[DEFAULT]\nhost = {sandbox.url}\ntoken = dapi-new\n")
        await client.get_endpoint(name)
        assert isinstance(client.auth, SdkAuth)
        assert client.auth.resolutions == 2
    assert stats(sandbox_admin)["auth_failures"] == 1
    assert api_credentials(sandbox_admin) == ["pat", "unknown", "pat"]


async def test_a_revoked_oauth_token_is_replaced_after_one_401(
    home: Path, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    name = endpoint(sandbox_admin)
    databricks = DatabricksSettings(
        host=sandbox.url, client_id="sandbox-client", client_secret="sandbox-secret"
    )
    async with sdk_client(databricks) as client:
        await client.get_endpoint(name)
        assert sandbox_admin.post("/tokens/revoke", json={"oauth": True}).json() == {"revoked": 1}
        await client.get_endpoint(name)
    assert stats(sandbox_admin)["oauth_tokens_issued"] == 2
    assert stats(sandbox_admin)["auth_failures"] == 1


async def test_a_401_is_retried_only_once(
    home: Path, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    name = endpoint(sandbox_admin)
    assert sandbox_admin.post("/tokens", json={"token": "dapi-doomed"}).status_code == 201
    (home / ".databrickscfg").write_text(f"[DEFAULT]\nhost = {sandbox.url}\ntoken = dapi-doomed\n")
    async with sdk_client() as client:
        await client.get_endpoint(name)
        sandbox_admin.post("/tokens/revoke", json={"token": "dapi-doomed"})
        with pytest.raises(Unauthenticated):
            await client.get_endpoint(name)
    assert stats(sandbox_admin)["auth_failures"] == 2


def test_no_host_is_named_at_startup(home: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        sdk_client()
    message = str(caught.value)
    assert "no workspace host" in message
    assert "DATABRICKS_HOST" in message
    assert "\n" not in message


def test_an_unknown_profile_is_named_at_startup(home: Path) -> None:
    (home / ".databrickscfg").write_text("[dev]\nhost = https://h.example.com\ntoken = t\n")
    with pytest.raises(ConfigurationError) as caught:
        sdk_client(DatabricksSettings(config_profile="prod"))
    message = str(caught.value)
    assert "profile [prod] not found" in message
    assert ".databrickscfg" in message
    assert "\n" not in message


async def test_no_credentials_are_named_at_the_first_call(
    home: Path, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    async with sdk_client(DatabricksSettings(host=sandbox.url)) as client:
        with pytest.raises(ConfigurationError) as caught:
            await client.list_endpoints()
    message = str(caught.value)
    assert f"no credentials for {sandbox.url}" in message
    assert "DATABRICKS_TOKEN" in message
    assert "databricks auth login" in message
    assert "\n" not in message
    assert api_credentials(sandbox_admin) == []


async def test_the_daemon_names_missing_credentials_at_startup(
    home: Path, sandbox: SandboxServer
) -> None:
    async with sdk_client(DatabricksSettings(host=sandbox.url)) as client:
        with structlog.testing.capture_logs() as logs:
            await _check_sign_in(client)
    (failure,) = [e for e in logs if e["event"] == "daemon.sign_in_failed"]
    assert f"no credentials for {sandbox.url}" in failure["error"]
