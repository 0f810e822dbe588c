"""Authentication to a Databricks workspace: the Auth interface, and the built-in PAT and M2M.

Where this sits in a rollout: the serving client asks its ``Auth`` for the headers of every
request the runner makes (config PUTs, polls, export-metrics scrapes, smoke invocations) and
merges them into the request; after a 401 it calls ``invalidate`` and tries once more.

Two implementations of ``Auth`` resolve credentials:

- ``rollout.serving.sdk_auth.SdkAuth``: databricks-sdk's unified authentication (every sign-in
  method and profile rule Databricks tools share). The default when databricks-sdk is
  installed (``rollout[databricks]``).
- this module's ``PatAuth`` and ``OAuthM2MAuth``: no extra dependency, and every wait on the
  injected clock, so the sandbox and tests on a fake clock use them. ``resolve_credentials``
  turns the ``DatabricksSettings`` read at startup (environment, then a ``~/.databrickscfg``
  profile) into ``Credentials``; ``auth_from_credentials`` builds the Auth.

OAuth M2M tokens are fetched from ``{host}/oidc/v1/token`` with the client credentials in HTTP
Basic, cached, and refreshed when less than a margin of their lifetime remains (measured on
the injected clock); concurrent requests share one refresh.

Secrets (tokens, client secrets, access tokens) are held as ``SecretStr`` and never appear in a
repr, a str, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import configparser
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import httpx
import structlog
from pydantic import SecretStr

from rollout.serving.errors import (
    ConfigurationError,
    MalformedResponse,
    ServingTransportError,
    Unauthenticated,
    error_from_response,
    parse_error_body,
)

if TYPE_CHECKING:
    from rollout.clock import Clock
    from rollout.settings import DatabricksSettings

log = structlog.get_logger("rollout.serving.auth")

AuthType = Literal["pat", "oauth-m2m"]

DEFAULT_CONFIG_FILE = "~/.databrickscfg"


class Auth(Protocol):
    """What the client needs from an authentication method."""

    async def headers(self, http: httpx.AsyncClient) -> Mapping[str, str]:
        """The headers that authenticate the next request (``Authorization`` and any other).

        Some sign-in methods need more than one header (an Azure service principal adds its
        management token, Google ones their access token); all of them go on every request.
        """
        ...

    def invalidate(self) -> bool:
        """Forget cached credentials after a 401; True if a fresh attempt may succeed."""
        ...

    async def is_oauth(self, http: httpx.AsyncClient) -> bool:
        """Whether the requests carry an OAuth access token (route-optimized endpoints need one).

        May resolve the credentials first; raises as ``headers`` does when that fails.
        """
        ...


class PatAuth:
    """A personal access token, sent as ``Bearer``."""

    def __init__(self, token: SecretStr | str) -> None:
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        if not self._token.get_secret_value():
            raise ConfigurationError("the personal access token is empty")

    def __repr__(self) -> str:
        return "PatAuth(token=SecretStr('**********'))"

    async def authorization(self, http: httpx.AsyncClient) -> str:  # noqa: ARG002 - protocol
        return f"Bearer {self._token.get_secret_value()}"

    async def headers(self, http: httpx.AsyncClient) -> Mapping[str, str]:
        return {"Authorization": await self.authorization(http)}

    def invalidate(self) -> bool:
        # A PAT cannot be refreshed: a 401 is final.
        return False

    async def is_oauth(self, http: httpx.AsyncClient) -> bool:  # noqa: ARG002 - protocol
        return False


@dataclass(frozen=True)
class _Token:
    header: SecretStr
    expires_at: float
    lifetime: float


class OAuthM2MAuth:
    """OAuth client-credentials flow against the workspace's token endpoint.

    The token is refreshed when less than ``min(refresh_margin, refresh_fraction * lifetime)``
    seconds of it remain: a 1-hour token is renewed a minute early, a 10-second test token one
    second early, so short lifetimes are not refreshed on every call.
    """

    def __init__(
        self,
        host: str,
        client_id: str,
        client_secret: SecretStr | str,
        *,
        clock: Clock,
        scope: str = "all-apis",
        token_url: str | None = None,
        refresh_margin: float = 60.0,
        refresh_fraction: float = 0.1,
        default_lifetime: float = 3600.0,
    ) -> None:
        if not client_id:
            raise ConfigurationError("the OAuth client id is empty")
        self._secret = (
            client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        )
        if not self._secret.get_secret_value():
            raise ConfigurationError("the OAuth client secret is empty")
        self.client_id = client_id
        self.token_url = token_url or f"{normalize_host(host)}/oidc/v1/token"
        self.scope = scope
        self.refresh_margin = refresh_margin
        self.refresh_fraction = refresh_fraction
        self.default_lifetime = default_lifetime
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return (
            f"OAuthM2MAuth(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            "client_secret=SecretStr('**********'))"
        )

    def _fresh(self, token: _Token) -> bool:
        margin = min(self.refresh_margin, self.refresh_fraction * token.lifetime)
        return self._clock.monotonic() < token.expires_at - margin

    async def authorization(self, http: httpx.AsyncClient) -> str:
        token = self._token
        if token is None or not self._fresh(token):
            async with self._lock:
                # Whoever waited on the lock finds the token the first caller fetched.
                token = self._token
                if token is None or not self._fresh(token):
                    token = await self._fetch(http)
                    self._token = token
        return token.header.get_secret_value()

    async def headers(self, http: httpx.AsyncClient) -> Mapping[str, str]:
        return {"Authorization": await self.authorization(http)}

    def invalidate(self) -> bool:
        self._token = None
        return True

    async def is_oauth(self, http: httpx.AsyncClient) -> bool:  # noqa: ARG002 - protocol
        return True

    async def _fetch(self, http: httpx.AsyncClient) -> _Token:
        started = self._clock.monotonic()
        try:
            response = await http.post(
                self.token_url,
                data={"grant_type": "client_credentials", "scope": self.scope},
                auth=httpx.BasicAuth(self.client_id, self._secret.get_secret_value()),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise ServingTransportError(
                f"OAuth token request to {self.token_url} failed: {type(exc).__name__}",
                call="oauth_token",
            ) from exc
        if response.status_code in (400, 401, 403):
            code, message = parse_error_body(response.content)
            raise Unauthenticated(
                f"OAuth token request for client {self.client_id!r} was refused"
                + (f": {message}" if message else ""),
                status=response.status_code,
                error_code=code,
                call="oauth_token",
            )
        if response.status_code >= 300:
            raise error_from_response(
                response.status_code,
                response.content,
                headers=response.headers,
                reason=response.reason_phrase,
                call="oauth_token",
                now=self._clock.now(),
            )
        token = _parse_token(response.content, started=started)
        self.tokens_fetched += 1
        log.info(
            "serving.oauth_token",
            client_id=self.client_id,
            expires_in=round(token.lifetime, 1),
        )
        return token


def _parse_token(body: bytes, *, started: float) -> _Token:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise MalformedResponse("the OAuth token response is not JSON", call="oauth_token") from exc
    if not isinstance(payload, dict):
        raise MalformedResponse("the OAuth token response is not an object", call="oauth_token")
    access = payload.get("access_token")
    if not isinstance(access, str) or not access:
        raise MalformedResponse("the OAuth token response has no access_token", call="oauth_token")
    token_type = payload.get("token_type") or "Bearer"
    if not isinstance(token_type, str):
        raise MalformedResponse("the OAuth token_type is not a string", call="oauth_token")
    expires_in = payload.get("expires_in", 3600)
    if isinstance(expires_in, str):
        try:
            expires_in = float(expires_in)
        except ValueError:
            expires_in = None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise MalformedResponse("the OAuth expires_in is not a positive number", call="oauth_token")
    lifetime = float(expires_in)
    # Measured from when the request was sent, so time spent in flight is never counted as valid.
    return _Token(
        header=SecretStr(f"{token_type} {access}"), expires_at=started + lifetime, lifetime=lifetime
    )


# --- credentials ------------------------------------------------------------------------------


def normalize_host(host: str) -> str:
    """``adb-1.2.azuredatabricks.net/`` -> ``https://adb-1.2.azuredatabricks.net``."""
    host = host.strip().rstrip("/")
    if not host:
        raise ConfigurationError("the workspace host is empty")
    if "://" not in host:
        host = f"https://{host}"
    return host


@dataclass(frozen=True)
class Credentials:
    """A host and one way to authenticate to it; ``source`` says where they were found."""

    host: str
    auth_type: AuthType
    token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    source: str = "environment"

    def __repr__(self) -> str:
        # SecretStr already masks itself; spelled out so no future field leaks by accident.
        return (
            f"Credentials(host={self.host!r}, auth_type={self.auth_type!r}, "
            f"token={'**********' if self.token else None}, client_id={self.client_id!r}, "
            f"client_secret={'**********' if self.client_secret else None}, "
            f"source={self.source!r})"
        )

    __str__ = __repr__


def _secret(value: str | None) -> SecretStr | None:
    return SecretStr(value) if value else None


def _choose(
    *,
    host: str | None,
    token: SecretStr | None,
    client_id: str | None,
    client_secret: SecretStr | None,
    auth_type: str | None,
    source: str,
) -> Credentials:
    if not host:
        raise ConfigurationError(f"no workspace host in {source}")
    if auth_type not in (None, "", "pat", "oauth-m2m"):
        raise ConfigurationError(
            f"auth_type {auth_type!r} in {source} needs databricks-sdk "
            "(pip install 'rollout[databricks]'); without it only pat and oauth-m2m work"
        )
    if auth_type == "pat" or (not auth_type and token):
        if not token:
            raise ConfigurationError(f"auth_type pat needs a token, and {source} has none")
        return Credentials(host=normalize_host(host), auth_type="pat", token=token, source=source)
    if auth_type == "oauth-m2m" or (not auth_type and (client_id or client_secret)):
        if not (client_id and client_secret):
            raise ConfigurationError(
                f"OAuth M2M needs both client_id and client_secret, and {source} lacks "
                + ("client_secret" if client_id else "client_id")
            )
        return Credentials(
            host=normalize_host(host),
            auth_type="oauth-m2m",
            client_id=client_id,
            client_secret=client_secret,
            source=source,
        )
    raise ConfigurationError(
        f"no credentials in {source}: set a token (PAT) or client_id and client_secret"
    )


def resolve_credentials(settings: DatabricksSettings) -> Credentials:
    """Credentials from explicit settings first, then a ``~/.databrickscfg`` profile.

    A host with a token or a client id and secret in the settings (``DATABRICKS_*``) is used as
    it is. Otherwise the profile ``config_profile`` (or the file's
    ``[__settings__] default_profile``, or ``DEFAULT``) of ``config_file`` is read; settings
    that are given still override the profile's values, as Databricks' own tools do. A named
    profile is not merged with ``[DEFAULT]``.
    """
    if settings.auth_type not in (None, "pat", "oauth-m2m"):
        raise ConfigurationError(
            f"auth_type {settings.auth_type!r} needs databricks-sdk "
            "(pip install 'rollout[databricks]'); without it only pat and oauth-m2m work"
        )
    has_credentials = settings.token is not None or (
        settings.client_id is not None and settings.client_secret is not None
    )
    if settings.host and has_credentials and not settings.config_profile:
        return _choose(
            host=settings.host,
            token=settings.token,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            auth_type=settings.auth_type,
            source="environment",
        )
    path = Path(settings.config_file or DEFAULT_CONFIG_FILE).expanduser()
    profile, values = _read_profile(path, settings.config_profile)
    token = settings.token or _secret(values.get("token"))
    client_id = settings.client_id or values.get("client_id")
    client_secret = settings.client_secret or _secret(values.get("client_secret"))
    source = f"profile [{profile}] of {path}"
    if not (settings.host or values.get("host")):
        raise ConfigurationError(f"profile [{profile}] of {path} has no host")
    return _choose(
        host=settings.host or values.get("host"),
        token=token,
        client_id=client_id,
        client_secret=client_secret,
        auth_type=settings.auth_type or values.get("auth_type"),
        source=source,
    )


def _read_profile(path: Path, wanted: str | None) -> tuple[str, dict[str, str]]:
    # configparser would merge [DEFAULT] into every section; Databricks does not, so DEFAULT is
    # read as an ordinary section under a name no file uses.
    parser = configparser.ConfigParser(default_section="\x00none", interpolation=None)
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError as exc:
        profile = wanted or "DEFAULT"
        raise ConfigurationError(
            f"no credentials in the environment and no config file {path} "
            f"(wanted profile [{profile}])"
        ) from exc
    except (OSError, configparser.Error) as exc:
        raise ConfigurationError(f"cannot read config file {path}: {type(exc).__name__}") from exc
    profile = wanted or ""
    if not profile and parser.has_section("__settings__"):
        profile = parser.get("__settings__", "default_profile", fallback="")
    profile = profile.strip() or "DEFAULT"
    if not parser.has_section(profile):
        known = ", ".join(s for s in parser.sections() if s != "__settings__") or "none"
        raise ConfigurationError(
            f"profile [{profile}] not found in {path} (profiles there: {known})"
        )
    values = {key: value.strip() for key, value in parser.items(profile) if value.strip()}
    return profile, values


def auth_from_credentials(credentials: Credentials, *, clock: Clock) -> Auth:
    """The Auth object for resolved credentials."""
    if credentials.auth_type == "pat":
        if credentials.token is None:
            raise ConfigurationError("PAT credentials without a token")
        return PatAuth(credentials.token)
    if credentials.client_id is None or credentials.client_secret is None:
        raise ConfigurationError("OAuth M2M credentials without client id and secret")
    return OAuthM2MAuth(
        credentials.host, credentials.client_id, credentials.client_secret, clock=clock
    )


__all__ = [
    "Auth",
    "AuthType",
    "Credentials",
    "OAuthM2MAuth",
    "PatAuth",
    "auth_from_credentials",
    "normalize_host",
    "resolve_credentials",
]
