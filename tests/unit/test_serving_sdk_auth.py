"""SdkAuth on a fake clock with a stand-in SDK Config: off the event loop, cached until the
token's expiry, every header merged into requests, one re-resolution after a 401, and SDK
errors translated into one-line serving errors."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Any

import httpx
import pytest

from rollout.clock import FakeClock
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.errors import ConfigurationError, ServingTransportError
from rollout.serving.sdk_auth import SdkAuth, sign_in_error
from rollout.settings import DatabricksSettings, ServingSettings

pytest.importorskip("databricks.sdk")

from databricks.sdk.oauth import Token
from requests import ConnectionError as RequestsConnectionError

HOST = "https://adb-1.2.azuredatabricks.net"


class StandInConfig:
    """What SdkAuth uses of databricks-sdk's Config: authenticate, oauth_token, auth_type."""

    def __init__(self, owner: Factory, number: int) -> None:
        self.owner = owner
        self.number = number
        self.auth_type = owner.auth_type

    def authenticate(self) -> dict[str, str]:
        self.owner.threads.add(threading.get_ident())
        self.owner.authenticated += 1
        return {
            "Authorization": f"Bearer token-{self.number}",
            "X-Databricks-Azure-SP-Management-Token": f"mgmt-{self.number}",
        }

    def oauth_token(self) -> Token:
        if self.owner.lifetime is None:
            raise ValueError("OAuth tokens are not available for pat authentication.")
        # Naive local time, as the SDK writes expiries (datetime.now() + expires_in).
        expiry = datetime.fromtimestamp(  # noqa: DTZ006
            self.owner.clock.now() + self.owner.lifetime
        )
        return Token(access_token=f"token-{self.number}", token_type="Bearer", expiry=expiry)


class Factory:
    def __init__(self, clock: FakeClock, auth_type: str, lifetime: float | None) -> None:
        self.clock = clock
        self.auth_type = auth_type
        self.lifetime = lifetime
        self.built = 0
        self.authenticated = 0
        self.threads: set[int] = set()

    def __call__(self) -> Any:
        self.built += 1
        return StandInConfig(self, self.built)


def sdk_auth(factory: Factory, clock: FakeClock) -> SdkAuth:
    return SdkAuth(factory, clock=clock, host=HOST)


async def test_authenticate_runs_in_a_worker_thread_and_is_cached_until_expiry() -> None:
    clock = FakeClock()
    factory = Factory(clock, "azure-client-secret", lifetime=3600.0)
    auth = sdk_auth(factory, clock)
    async with httpx.AsyncClient() as http:
        first = await auth.headers(http)
        assert first["Authorization"] == "Bearer token-1"
        assert threading.get_ident() not in factory.threads
        clock.advance(3500)
        assert await auth.headers(http) == first
        assert factory.authenticated == 1
        # Within a minute of the expiry the SDK is asked again.
        clock.advance(50)
        await auth.headers(http)
        assert factory.authenticated == 2
        assert factory.built == 1, "the same Config: the SDK refreshes its own token"
        assert await auth.is_oauth(http)


async def test_concurrent_requests_share_one_sign_in() -> None:
    clock = FakeClock()
    factory = Factory(clock, "oauth-m2m", lifetime=3600.0)
    auth = sdk_auth(factory, clock)
    async with httpx.AsyncClient() as http:
        results = await asyncio.gather(*(auth.headers(http) for _ in range(20)))
    assert {r["Authorization"] for r in results} == {"Bearer token-1"}
    assert factory.built == 1
    assert factory.authenticated == 1


async def test_a_pat_is_kept_until_invalidated_and_is_not_oauth() -> None:
    clock = FakeClock()
    factory = Factory(clock, "pat", lifetime=None)
    auth = sdk_auth(factory, clock)
    async with httpx.AsyncClient() as http:
        await auth.headers(http)
        clock.advance(10 * 86400)
        await auth.headers(http)
        assert factory.authenticated == 1
        assert not await auth.is_oauth(http)
        assert auth.invalidate()
        assert (await auth.headers(http))["Authorization"] == "Bearer token-2"
    assert factory.built == 2


async def test_headers_without_a_known_expiry_are_asked_for_again_after_a_while() -> None:
    clock = FakeClock()
    factory = Factory(clock, "metadata-service", lifetime=None)
    auth = sdk_auth(factory, clock)
    async with httpx.AsyncClient() as http:
        await auth.headers(http)
        clock.advance(auth.unknown_expiry_ttl - 1)
        await auth.headers(http)
        assert factory.authenticated == 1
        clock.advance(2)
        await auth.headers(http)
        assert factory.authenticated == 2
        assert not await auth.is_oauth(http)


async def test_every_header_goes_on_every_request_and_a_401_re_resolves_once() -> None:
    clock = FakeClock()
    factory = Factory(clock, "azure-client-secret", lifetime=3600.0)
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        if request.headers["authorization"] == "Bearer token-1" and len(seen) > 1:
            return httpx.Response(401, json={"error_code": "UNAUTHENTICATED", "message": "no"})
        return httpx.Response(200, json={"endpoints": []})

    async with ServingClient(
        HOST, sdk_auth(factory, clock), transport=httpx.MockTransport(handler), clock=clock
    ) as client:
        await client.list_endpoints()
        await client.list_endpoints()  # token-1 is refused now: one new sign-in, then 200
    assert [h["authorization"] for h in seen] == [
        "Bearer token-1",
        "Bearer token-1",
        "Bearer token-2",
    ]
    assert [h["x-databricks-azure-sp-management-token"] for h in seen] == [
        "mgmt-1",
        "mgmt-1",
        "mgmt-2",
    ]
    assert factory.built == 2


async def test_sign_in_failures_become_one_line_serving_errors() -> None:
    clock = FakeClock()

    def broken() -> Any:
        raise ValueError(
            "default auth: cannot configure default credentials, please check\nhttps://docs. "
            "Config: host=https://adb-9.azuredatabricks.net, auth_type=azure-cli"
        )

    auth = SdkAuth(broken, clock=clock, host="https://adb-9.azuredatabricks.net")
    async with httpx.AsyncClient() as http:
        with pytest.raises(ConfigurationError) as caught:
            await auth.headers(http)
    message = str(caught.value)
    assert "no credentials for https://adb-9.azuredatabricks.net" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("exc", "cls", "needles"),
    [
        (
            ValueError("resolve: /home/u/.databrickscfg has no prod profile configured. Config:"),
            ConfigurationError,
            ["profile [prod] not found in /home/u/.databrickscfg"],
        ),
        (
            ValueError("default auth: cannot configure default credentials, please check x"),
            ConfigurationError,
            ["no workspace host", "DATABRICKS_HOST"],
        ),
        (
            OSError("cannot get access token: Error: token expired\nrun databricks auth login"),
            ConfigurationError,
            ["with databricks-cli failed", "token expired"],
        ),
        (RequestsConnectionError("refused"), ServingTransportError, ["signing in", "refused"]),
    ],
)
def test_sdk_errors_are_named(exc: BaseException, cls: type, needles: list[str]) -> None:
    error = sign_in_error(exc, {"auth_type": "databricks-cli"}, host=None)
    assert type(error) is cls
    for needle in needles:
        assert needle in str(error)
    assert "\n" not in str(error)


def test_every_sdk_auth_type_is_a_valid_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for auth_type in ("databricks-cli", "azure-cli", "azure-client-secret", "github-oidc",
                      "metadata-service", "env-oidc"):
        monkeypatch.setenv("DATABRICKS_AUTH_TYPE", auth_type)
        assert DatabricksSettings().auth_type == auth_type


def test_without_databricks_sdk_auto_falls_back_to_the_builtin_sign_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("rollout.serving.client.sdk_available", lambda: False)
    databricks = DatabricksSettings(host=HOST, token="dapi-x")
    client = ServingClient.from_settings(
        databricks, ServingSettings(auth_resolver="auto"), clock=FakeClock()
    )
    assert isinstance(client.auth, PatAuth)
    with pytest.raises(ConfigurationError) as caught:
        ServingClient.from_settings(
            databricks, ServingSettings(auth_resolver="sdk"), clock=FakeClock()
        )
    assert "pip install 'rollout[databricks]'" in str(caught.value)
    # And the built-in resolution names the extra for a method only the SDK knows.
    with pytest.raises(ConfigurationError) as caught:
        ServingClient.from_settings(
            DatabricksSettings(host=HOST, auth_type="databricks-cli"),
            ServingSettings(auth_resolver="auto"),
            clock=FakeClock(),
        )
    assert "rollout[databricks]" in str(caught.value)
