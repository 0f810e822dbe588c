"""Sign-in through databricks-sdk's unified authentication (the ``rollout[databricks]`` extra).

Where this sits in a rollout: ``ServingClient.from_settings`` builds an ``SdkAuth`` when
databricks-sdk is installed, and the client merges the headers it yields into every request
the runner makes (config PUTs, polls, export-metrics scrapes, smoke invocations).

databricks-sdk's ``Config`` resolves everything Databricks' tools accept, by the same rules:
explicit settings, then ``DATABRICKS_*``/``ARM_*``/... variables, then a profile of
``DATABRICKS_CONFIG_FILE`` (default ``~/.databrickscfg``; ``DATABRICKS_CONFIG_PROFILE``, else
``[__settings__] default_profile``, else ``[DEFAULT]``), and ``DATABRICKS_AUTH_TYPE`` picks
one method instead of trying its chain (pat, basic, metadata-service, oauth-m2m, env/file
OIDC, github-oidc, azure-client-secret, azure-cli, databricks-cli, google, ...).
``Config().authenticate()`` returns a dict of headers, which may hold more than
``Authorization``.

The SDK is synchronous and does network I/O (host metadata, OIDC discovery, token requests,
running the ``databricks`` or ``az`` CLI), so:

- the host is found at startup without any network call (``resolve_host``: the SDK's own
  argument, environment and profile rules, with its network steps skipped);
- the full ``Config`` is built, and ``authenticate()`` called, in a worker thread
  (``asyncio.to_thread``), never on the event loop; one resolution at a time;
- the headers are cached until the SDK's token expiry (less a margin), measured on the
  injected clock; a PAT until invalidated; headers whose expiry the SDK does not expose
  (metadata service) for ``unknown_expiry_ttl`` seconds (the SDK caches the token itself);
- after a 401 the client calls ``invalidate``: the ``Config`` is dropped and built again on
  the next request, so a rotated PAT in the profile, a new ``databricks auth login`` or a
  revoked OAuth token is picked up, once per request.

Errors, translated once here (``raise ... from``) into the serving tree::

    ServingError
    ├── ConfigurationError   no host, no credentials, an unknown profile, the SDK refused the
    │                        configuration or its sign-in method failed (one line naming it)
    └── ServingTransportError  the sign-in could not reach the workspace or token service
                               (transient: the retry policy may try again)
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from rollout.serving.errors import ConfigurationError, ServingError, ServingTransportError

if TYPE_CHECKING:
    import httpx
    from databricks.sdk.config import Config

    from rollout.clock import Clock
    from rollout.settings import DatabricksSettings

log = structlog.get_logger("rollout.serving.sdk_auth")

INSTALL_HINT = "pip install 'rollout[databricks]'"

# Sign-in methods whose credential is not an OAuth access token.
_NOT_OAUTH = frozenset({"pat", "basic", "runtime"})
# Sign-in methods whose headers never change until the configuration does.
_STATIC = frozenset({"pat", "basic"})

_PROFILE_MISSING = re.compile(r"(\S+) has no (\S+) profile configured")
_DEBUG_HOST = re.compile(r"\bhost=([^,\s]+)")


def sdk_available() -> bool:
    """Whether databricks-sdk can be imported (the ``rollout[databricks]`` extra)."""
    try:
        return importlib.util.find_spec("databricks.sdk") is not None
    except (ImportError, ValueError):
        return False


def config_kwargs(settings: DatabricksSettings, *, timeout: float) -> dict[str, Any]:
    """The ``Config`` arguments for the settings that are set; the SDK reads the rest itself.

    ``timeout`` bounds each of the SDK's HTTP requests and its retrying of them, so that an
    unreachable workspace fails a sign-in in seconds rather than the SDK's default 5 minutes.
    """
    kwargs: dict[str, Any] = {
        "http_timeout_seconds": timeout,
        "retry_timeout_seconds": max(1, round(timeout)),
    }
    if settings.host:
        kwargs["host"] = settings.host
    if settings.token is not None:
        kwargs["token"] = settings.token.get_secret_value()
    if settings.client_id:
        kwargs["client_id"] = settings.client_id
    if settings.client_secret is not None:
        kwargs["client_secret"] = settings.client_secret.get_secret_value()
    if settings.config_profile:
        kwargs["profile"] = settings.config_profile
    if settings.config_file is not None:
        kwargs["config_file"] = str(settings.config_file)
    if settings.auth_type:
        kwargs["auth_type"] = settings.auth_type
    return kwargs


def _where(kwargs: Mapping[str, Any]) -> str:
    profile = kwargs.get("profile")
    path = kwargs.get("config_file") or "~/.databrickscfg"
    return f"profile [{profile}] of {path}" if profile else f"the environment or {path}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def sign_in_error(
    exc: BaseException, kwargs: Mapping[str, Any], *, host: str | None
) -> ServingError:
    """The serving error for a failure of the SDK to build a Config or authenticate."""
    # requests is a dependency of databricks-sdk, so it is importable whenever the SDK is.
    import requests  # noqa: PLC0415 - optional extra

    if isinstance(exc, ServingError):
        return exc
    message = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return ServingTransportError(
            f"signing in to {host or 'the workspace'} failed: {message}", call="sign_in"
        )
    missing = _PROFILE_MISSING.search(message)
    if missing:
        path, profile = missing.groups()
        return ConfigurationError(f"profile [{profile}] not found in {path}", call="sign_in")
    if "cannot configure default credentials" in message:
        found = _DEBUG_HOST.search(message)
        host = host or (found.group(1) if found else None)
        if not host:
            return ConfigurationError(
                f"no workspace host in {_where(kwargs)}: set DATABRICKS_HOST or a profile's host",
                call="sign_in",
            )
        return ConfigurationError(
            f"no credentials for {host} in {_where(kwargs)}: set DATABRICKS_TOKEN, or "
            "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET, or ARM_CLIENT_ID, "
            "ARM_CLIENT_SECRET and ARM_TENANT_ID, or run `databricks auth login --host "
            f"{host}` (auth_type databricks-cli)",
            call="sign_in",
        )
    method = kwargs.get("auth_type") or "the default sign-in chain"
    return ConfigurationError(
        f"signing in to {host or 'the workspace'} with {method} failed: {message}",
        call="sign_in",
    )


def resolve_host(settings: DatabricksSettings, *, timeout: float = 30.0) -> str:
    """The workspace host by the SDK's rules (arguments, environment, profile), offline.

    Raises ``ConfigurationError`` naming what is missing: the host, or the profile. Also
    raises when the SDK finds two sign-in methods configured and no auth_type choosing one.
    """
    from databricks.sdk.config import Config, ConfigAttribute  # noqa: PLC0415 - optional extra

    class _OfflineConfig(Config):
        # The two steps of Config.__init__ that go to the network (host metadata, then the
        # credential chain) are skipped: only the host is wanted here.

        @classmethod
        def attributes(cls) -> Iterable[ConfigAttribute]:
            # Config finds its attributes in its own class __dict__, not a subclass's.
            return Config.attributes()

        def _resolve_host_metadata(self) -> None:
            return None

        def init_auth(self) -> None:
            return None

    kwargs = config_kwargs(settings, timeout=timeout)
    try:
        config = _OfflineConfig(**kwargs)
    except Exception as exc:
        raise sign_in_error(exc, kwargs, host=settings.host) from exc
    host: str | None = config.host
    if not host:
        raise ConfigurationError(
            f"no workspace host in {_where(kwargs)}: set DATABRICKS_HOST or a profile's host",
            call="sign_in",
        )
    return host


@dataclass(frozen=True)
class _Signed:
    headers: Mapping[str, str]
    auth_type: str
    oauth: bool
    # Seconds of validity left when resolved (None: unknown), on the SDK's own expiry.
    remaining: float | None


class SdkAuth:
    """Headers from a databricks-sdk ``Config``, resolved in a worker thread and cached.

    ``factory`` builds the ``Config`` (blocking; called in a worker thread); ``host`` is the
    workspace the client talks to (for messages). Freshness is measured on ``clock``: the
    SDK's expiry is read against ``clock.now()`` once, then counted down on
    ``clock.monotonic()``.
    """

    def __init__(
        self,
        factory: Callable[[], Config],
        *,
        clock: Clock,
        host: str,
        kwargs: Mapping[str, Any] | None = None,
        refresh_margin: float = 60.0,
        refresh_fraction: float = 0.1,
        unknown_expiry_ttl: float = 60.0,
    ) -> None:
        self._factory = factory
        self._clock = clock
        self.host = host
        self._kwargs = dict(kwargs or {})
        self.refresh_margin = refresh_margin
        self.refresh_fraction = refresh_fraction
        self.unknown_expiry_ttl = unknown_expiry_ttl
        self._config: Config | None = None
        self._signed: _Signed | None = None
        self._fresh_until = 0.0
        self._generation = 0
        self._lock = asyncio.Lock()
        self.resolutions = 0
        self.auth_type: str | None = None

    @classmethod
    def from_settings(
        cls, settings: DatabricksSettings, *, clock: Clock, timeout: float = 30.0
    ) -> SdkAuth:
        """Find the host now (offline); sign in lazily, on the first request."""
        from databricks.sdk.config import Config  # noqa: PLC0415 - optional extra

        host = resolve_host(settings, timeout=timeout)
        kwargs = config_kwargs(settings, timeout=timeout)
        return cls(lambda: Config(**kwargs), clock=clock, host=host, kwargs=kwargs)

    def __repr__(self) -> str:
        return f"SdkAuth(host={self.host!r}, auth_type={self.auth_type!r})"

    def _fresh(self) -> bool:
        return self._signed is not None and self._clock.monotonic() < self._fresh_until

    async def headers(self, http: httpx.AsyncClient) -> Mapping[str, str]:  # noqa: ARG002
        if not self._fresh():
            async with self._lock:
                # Whoever waited on the lock finds what the first caller resolved.
                if not self._fresh():
                    await self._resolve()
        signed = self._signed
        if signed is None:  # pragma: no cover - _resolve sets it or raises
            raise ConfigurationError("sign-in produced no headers", call="sign_in")
        return signed.headers

    async def is_oauth(self, http: httpx.AsyncClient) -> bool:
        await self.headers(http)
        return self._signed is not None and self._signed.oauth

    def invalidate(self) -> bool:
        # Build the Config again on the next request: every method re-resolves from scratch.
        self._generation += 1
        self._config = None
        self._signed = None
        self._fresh_until = 0.0
        return True

    async def _resolve(self) -> None:
        generation = self._generation
        started = self._clock.monotonic()
        config, signed = await asyncio.to_thread(self._sign_in, self._config)
        self.resolutions += 1
        if generation != self._generation:
            # Invalidated while the thread ran: use these headers for this request only.
            self._signed = signed
            self._fresh_until = 0.0
            return
        self._config = config
        self._signed = signed
        self.auth_type = signed.auth_type
        if signed.remaining is None:
            ttl = float("inf") if signed.auth_type in _STATIC else self.unknown_expiry_ttl
        else:
            margin = min(self.refresh_margin, self.refresh_fraction * max(signed.remaining, 0.0))
            ttl = signed.remaining - margin
        self._fresh_until = started + ttl
        log.info(
            "serving.signed_in",
            host=self.host,
            auth_type=signed.auth_type,
            oauth=signed.oauth,
            expires_in=None if signed.remaining is None else round(signed.remaining, 1),
        )

    def _sign_in(self, config: Config | None) -> tuple[Config, _Signed]:
        """Build the Config when needed and authenticate (blocking: runs in a worker thread)."""
        try:
            if config is None:
                config = self._factory()
            headers = dict(config.authenticate())
            auth_type = str(config.auth_type or "")
            oauth, expiry = False, None
            if auth_type not in _NOT_OAUTH:
                try:
                    token = config.oauth_token()
                except ValueError:
                    pass  # not an OAuth method (metadata service, ...): no token to read
                else:
                    oauth, expiry = True, token.expiry
        except Exception as exc:
            raise sign_in_error(exc, self._kwargs, host=self.host) from exc
        remaining = None if expiry is None else _seconds_left(expiry, self._clock.now())
        return config, _Signed(headers, auth_type, oauth, remaining)


def _seconds_left(expiry: datetime, now: float) -> float:
    # A naive expiry is local time, as the SDK writes it (datetime.now() + expires_in).
    return expiry.timestamp() - now


__all__ = [
    "INSTALL_HINT",
    "SdkAuth",
    "config_kwargs",
    "resolve_host",
    "sdk_available",
    "sign_in_error",
]
