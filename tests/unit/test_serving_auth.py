"""Auth: OAuth M2M token caching and refresh on a fake clock, profiles, secrets kept secret."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import structlog
from pydantic import SecretStr

from rollout.clock import FakeClock
from rollout.serving.auth import (
    Credentials,
    OAuthM2MAuth,
    PatAuth,
    auth_from_credentials,
    resolve_credentials,
)
from rollout.serving.client import ServingClient
from rollout.serving.errors import (
    ConfigurationError,
    MalformedResponse,
    ServingError,
    Unauthenticated,
    Unavailable,
)
from rollout.serving.retry import RetryPolicy
from rollout.settings import DatabricksSettings

HOST = "https://workspace.example.com"
CLIENT_SECRET = "client-secret-do-not-print-0xDEAD"
PAT = "dapi-personal-token-do-not-print-0xBEEF"


class TokenServer:
    """A token endpoint: checks the request and hands out numbered tokens."""

    def __init__(self, lifetime: float = 3600.0) -> None:
        self.lifetime = lifetime
        self.issued = 0
        self.requests: list[httpx.Request] = []
        self.fail_with: httpx.Response | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # Let concurrent callers pile up behind the refresh lock.
        for _ in range(3):
            await asyncio.sleep(0)
        if self.fail_with is not None:
            return self.fail_with
        assert request.url.path == "/oidc/v1/token"
        assert request.method == "POST"
        form = parse_qs(request.content.decode())
        assert form == {"grant_type": ["client_credentials"], "scope": ["all-apis"]}
        basic = base64.b64decode(request.headers["authorization"].removeprefix("Basic ")).decode()
        assert basic == f"sp-1:{CLIENT_SECRET}"
        self.issued += 1
        return httpx.Response(
            200,
            json={
                "access_token": f"access-{self.issued}",
                "token_type": "Bearer",
                "expires_in": self.lifetime,
            },
        )


def oauth(server: TokenServer, clock: FakeClock) -> tuple[OAuthM2MAuth, httpx.AsyncClient]:
    auth = OAuthM2MAuth(HOST, "sp-1", CLIENT_SECRET, clock=clock)
    return auth, httpx.AsyncClient(transport=httpx.MockTransport(server))


async def test_token_is_fetched_once_and_cached() -> None:
    server, clock = TokenServer(), FakeClock()
    auth, http = oauth(server, clock)
    for _ in range(20):
        assert await auth.authorization(http) == "Bearer access-1"
        clock.advance(60)
    assert server.issued == 1
    assert auth.tokens_fetched == 1


async def test_token_is_refreshed_before_the_margin() -> None:
    server, clock = TokenServer(lifetime=3600), FakeClock()
    auth, http = oauth(server, clock)
    assert await auth.authorization(http) == "Bearer access-1"
    # The margin for a 1-hour token is 60 s: 3539 s in it is still fresh, 3541 s is not.
    clock.advance(3539)
    assert await auth.authorization(http) == "Bearer access-1"
    clock.advance(2)
    assert await auth.authorization(http) == "Bearer access-2"
    assert server.issued == 2


async def test_short_tokens_use_a_proportional_margin() -> None:
    server, clock = TokenServer(lifetime=10), FakeClock()
    auth, http = oauth(server, clock)
    await auth.authorization(http)
    clock.advance(8.9)  # margin is 10 % of 10 s: refresh after 9 s, not at once
    assert await auth.authorization(http) == "Bearer access-1"
    clock.advance(0.2)
    assert await auth.authorization(http) == "Bearer access-2"


async def test_concurrent_callers_share_one_refresh() -> None:
    server, clock = TokenServer(), FakeClock()
    auth, http = oauth(server, clock)
    headers = await asyncio.gather(*(auth.authorization(http) for _ in range(25)))
    assert set(headers) == {"Bearer access-1"}
    assert server.issued == 1
    clock.advance(3600)
    headers = await asyncio.gather(*(auth.authorization(http) for _ in range(25)))
    assert set(headers) == {"Bearer access-2"}
    assert server.issued == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"error": "invalid_client", "error_description": "Client authentication failed"}),
        (400, {"error": "invalid_request", "error_description": "bad scope"}),
        (403, {"errorCode": "FORBIDDEN", "errorSummary": "not allowed"}),
    ],
)
async def test_token_errors_become_unauthenticated(status: int, body: dict[str, str]) -> None:
    server, clock = TokenServer(), FakeClock()
    server.fail_with = httpx.Response(status, json=body)
    auth, http = oauth(server, clock)
    with pytest.raises(Unauthenticated) as caught:
        await auth.authorization(http)
    assert caught.value.status == status
    assert caught.value.error_code in {"invalid_client", "invalid_request", "FORBIDDEN"}
    assert CLIENT_SECRET not in str(caught.value)
    assert CLIENT_SECRET not in repr(caught.value)


async def test_token_endpoint_outage_is_transient() -> None:
    server, clock = TokenServer(), FakeClock()
    server.fail_with = httpx.Response(503, text="upstream down", headers={"retry-after": "2"})
    auth, http = oauth(server, clock)
    with pytest.raises(Unavailable) as caught:
        await auth.authorization(http)
    assert caught.value.transient
    assert caught.value.retry_after == 2.0


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>login</html>"),
        httpx.Response(200, json=["access"]),
        httpx.Response(200, json={"token_type": "Bearer"}),
        httpx.Response(200, json={"access_token": "a", "expires_in": "soon"}),
        httpx.Response(200, json={"access_token": "a", "expires_in": -5}),
        httpx.Response(200, json={"access_token": "a", "token_type": 7}),
    ],
)
async def test_malformed_token_responses_are_typed(response: httpx.Response) -> None:
    server, clock = TokenServer(), FakeClock()
    server.fail_with = response
    auth, http = oauth(server, clock)
    with pytest.raises(MalformedResponse):
        await auth.authorization(http)


async def test_token_transport_failure_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    auth = OAuthM2MAuth(HOST, "sp-1", CLIENT_SECRET, clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(ServingError) as caught:
            await auth.authorization(http)
    assert caught.value.transient


async def test_client_refetches_a_revoked_token_once_after_401() -> None:
    issued = 0
    api_calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal issued
        if request.url.path == "/oidc/v1/token":
            issued += 1
            return httpx.Response(200, json={"access_token": f"t{issued}", "expires_in": 3600})
        api_calls.append(request.headers["authorization"])
        if request.headers["authorization"] == "Bearer t1":
            return httpx.Response(401, json={"error_code": "UNAUTHENTICATED", "message": "revoked"})
        return httpx.Response(200, json={"endpoints": []})

    clock = FakeClock()
    auth = OAuthM2MAuth(HOST, "sp-1", CLIENT_SECRET, clock=clock)
    async with ServingClient(
        HOST, auth, transport=httpx.MockTransport(handler), clock=clock, retry=RetryPolicy()
    ) as client:
        assert await client.list_endpoints() == []
    assert api_calls == ["Bearer t1", "Bearer t2"]


async def test_pat_401_is_final() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401, json={"error_code": "UNAUTHENTICATED", "message": "bad token"})

    async with ServingClient(
        HOST, PatAuth(PAT), transport=httpx.MockTransport(handler), clock=FakeClock()
    ) as client:
        with pytest.raises(Unauthenticated):
            await client.get_endpoint("x")
    assert calls == 1


# --- resolving credentials ---------------------------------------------------------------------


def settings(
    tmp_path: Path,
    text: str | None = None,
    *,
    host: str | None = None,
    token: SecretStr | None = None,
    client_id: str | None = None,
    client_secret: SecretStr | None = None,
    config_profile: str | None = None,
) -> DatabricksSettings:
    config = tmp_path / ".databrickscfg"
    if text is not None:
        config.write_text(text)
    # Every field given explicitly, so the environment of the machine running the tests (a real
    # DATABRICKS_HOST, say) cannot leak in: explicit values take precedence over variables.
    return DatabricksSettings(
        host=host,
        token=token,
        client_id=client_id,
        client_secret=client_secret,
        config_profile=config_profile,
        config_file=config,
        auth_type=None,
    )


PROFILES = """
[DEFAULT]
host = https://default.example.com
token = dapi-default

[prod]
host = prod.example.com/
client_id = sp-prod
client_secret = prod-secret

[broken]
token = dapi-no-host

[m2m-incomplete]
host = https://x.example.com
auth_type = oauth-m2m
client_id = sp-only
"""


def test_explicit_settings_win_without_reading_any_file(tmp_path: Path) -> None:
    creds = resolve_credentials(
        settings(tmp_path, None, host="https://env.example.com", token=SecretStr("dapi-env"))
    )
    assert creds.host == "https://env.example.com"
    assert creds.auth_type == "pat"
    assert creds.token is not None
    assert creds.token.get_secret_value() == "dapi-env"
    assert creds.source == "environment"


def test_explicit_client_credentials_mean_oauth(tmp_path: Path) -> None:
    creds = resolve_credentials(
        settings(
            tmp_path,
            None,
            host="env.example.com",
            client_id="sp",
            client_secret=SecretStr("s"),
        )
    )
    assert (creds.host, creds.auth_type, creds.client_id) == (
        "https://env.example.com",
        "oauth-m2m",
        "sp",
    )


def test_default_profile(tmp_path: Path) -> None:
    creds = resolve_credentials(settings(tmp_path, PROFILES))
    assert creds.host == "https://default.example.com"
    assert creds.auth_type == "pat"
    assert "[DEFAULT]" in creds.source


def test_named_profile_is_not_merged_with_default(tmp_path: Path) -> None:
    creds = resolve_credentials(settings(tmp_path, PROFILES, config_profile="prod"))
    assert creds.host == "https://prod.example.com"
    assert creds.auth_type == "oauth-m2m"
    # DEFAULT has a token; a merge would have made this a PAT profile.
    assert creds.token is None
    assert creds.client_secret is not None
    assert creds.client_secret.get_secret_value() == "prod-secret"


def test_settings_section_names_the_default_profile(tmp_path: Path) -> None:
    text = PROFILES + "\n[__settings__]\ndefault_profile = prod\n"
    assert resolve_credentials(settings(tmp_path, text)).client_id == "sp-prod"


def test_environment_values_override_the_profile(tmp_path: Path) -> None:
    creds = resolve_credentials(
        settings(tmp_path, PROFILES, config_profile="prod", host="https://override.example.com")
    )
    assert creds.host == "https://override.example.com"
    assert creds.client_id == "sp-prod"


@pytest.mark.parametrize(
    ("text", "profile", "needles"),
    [
        (None, None, [".databrickscfg", "DEFAULT"]),
        (None, "prod", [".databrickscfg", "prod"]),
        (PROFILES, "staging", [".databrickscfg", "[staging]", "prod"]),
        (PROFILES, "broken", [".databrickscfg", "[broken]", "no host"]),
        (PROFILES, "m2m-incomplete", ["[m2m-incomplete]", "client_secret"]),
        ("[DEFAULT]\nhost = https://h\n", None, ["no credentials", "[DEFAULT]"]),
        ("not an ini file", None, ["cannot read", ".databrickscfg"]),
        ("[DEFAULT]\nhost = h\ntoken = t\nauth_type = azure-cli\n", None, ["azure-cli"]),
    ],
)
def test_configuration_errors_name_file_and_profile(
    tmp_path: Path, text: str | None, profile: str | None, needles: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_credentials(settings(tmp_path, text, config_profile=profile))
    for needle in needles:
        assert needle in str(caught.value)


def test_auth_from_credentials_picks_the_method() -> None:
    clock = FakeClock()
    pat = Credentials(host=HOST, auth_type="pat", token=SecretStr(PAT))
    m2m = Credentials(
        host=HOST, auth_type="oauth-m2m", client_id="sp", client_secret=SecretStr(CLIENT_SECRET)
    )
    assert isinstance(auth_from_credentials(pat, clock=clock), PatAuth)
    oauth_auth = auth_from_credentials(m2m, clock=clock)
    assert isinstance(oauth_auth, OAuthM2MAuth)
    assert oauth_auth.token_url == f"{HOST}/oidc/v1/token"


# --- secrets never leak --------------------------------------------------------------------------


async def test_secrets_absent_from_reprs_strings_errors_and_logs(tmp_path: Path) -> None:
    clock = FakeClock()
    text = f"[DEFAULT]\nhost = {HOST}\ntoken = {PAT}\n[sp]\nhost = {HOST}\nclient_id = sp-1\n"
    text += f"client_secret = {CLIENT_SECRET}\n"
    pat_creds = resolve_credentials(settings(tmp_path, text))
    m2m_creds = resolve_credentials(settings(tmp_path, text, config_profile="sp"))
    pat_auth = auth_from_credentials(pat_creds, clock=clock)
    m2m_auth = auth_from_credentials(m2m_creds, clock=clock)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oidc/v1/token":
            return httpx.Response(200, json={"access_token": "ACCESS-SECRET", "expires_in": 60})
        return httpx.Response(403, json={"error_code": "PERMISSION_DENIED", "message": "no"})

    shown: list[str] = []
    with structlog.testing.capture_logs() as logs:
        for auth in (pat_auth, m2m_auth):
            async with ServingClient(
                HOST, auth, transport=httpx.MockTransport(handler), clock=clock
            ) as client:
                shown += [repr(client), str(client)]
                with pytest.raises(ServingError) as caught:
                    await client.get_endpoint("ads")
                shown += [str(caught.value), repr(caught.value), str(caught.value.args)]
        failing = TokenServer()
        failing.fail_with = httpx.Response(401, json={"error": "invalid_client"})
        bad_auth = OAuthM2MAuth(HOST, "sp-1", CLIENT_SECRET, clock=clock)
        async with httpx.AsyncClient(transport=httpx.MockTransport(failing)) as http:
            with pytest.raises(Unauthenticated) as refused:
                await bad_auth.authorization(http)
        shown += [str(refused.value), repr(refused.value)]
    shown += [repr(pat_creds), str(pat_creds), repr(m2m_creds), str(m2m_creds)]
    shown += [repr(pat_auth), str(pat_auth), repr(m2m_auth), str(m2m_auth), repr(bad_auth)]
    shown += [repr(settings(tmp_path, text, token=SecretStr(PAT)))]
    shown += [json.dumps(entry, default=str) for entry in logs]
    assert logs, "the calls above log something"
    for text_shown in shown:
        for secret in (PAT, CLIENT_SECRET, "ACCESS-SECRET"):
            assert secret not in text_shown, text_shown
