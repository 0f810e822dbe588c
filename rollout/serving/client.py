"""The async client of the Databricks serving-endpoints API.

Where this sits in a rollout: the runner (``rollout.engine``) applies each decision through
this client. It PUTs the next config (``update_config`` with a ``ConfigSpec`` carrying every
served entity and the new split), waits for it to settle and verifies it
(``wait_until_applied``), scrapes ``export_metrics`` for the judges, fetches ``build_logs`` for
a rollback alert, and invokes the endpoint for blue/green smoke checks (``query``).

Every request carries the headers the ``Auth`` yields (``rollout.serving.auth``; through
databricks-sdk in ``rollout.serving.sdk_auth``); a 401 makes the Auth re-resolve once.

Invocations of a route-optimized endpoint (GET shows ``route_optimized: true`` and an
``endpoint_url``) go to that URL instead of the workspace, with the same headers, and only
when they carry an OAuth token: Databricks refuses personal access tokens there, so the
client raises ``ConfigurationError`` without sending. The client learns each endpoint's URL
from every endpoint it parses (GET, create, PUT), and GETs it once before the first invocation
of an endpoint it has not seen. The served-model path on that URL
(``.../serving-endpoints/<name>/served-models/<entity>/invocations``) mirrors the workspace's.

Every method is one logical call made of one or more HTTP attempts: each attempt goes through
the single ``RetryPolicy`` (only transient errors are resent), each failure is a typed
``ServingError`` (``rollout.serving.errors``), and each attempt is reported to the optional
``on_response(call, status, seconds)`` hook under a fixed ``call`` label (the method's name), so
the controller can count requests and latencies per call without parsing URLs. Status is None
for an attempt that got no HTTP answer.

Nothing here sleeps on its own: retries and polls sleep on the injected ``Clock``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import quote

import httpx
import structlog
import yaml
from pydantic import BaseModel, ValidationError

from rollout import __version__
from rollout.clock import Clock, SystemClock
from rollout.serving.auth import Auth, auth_from_credentials, normalize_host, resolve_credentials
from rollout.serving.errors import (
    ConfigMismatch,
    ConfigurationError,
    MalformedResponse,
    ServingError,
    ServingTransportError,
    Unauthenticated,
    UpdateFailed,
    UpdateTimeout,
    error_from_response,
)
from rollout.serving.models import (
    ConfigSpec,
    ConfigUpdate,
    Endpoint,
    EndpointSummary,
    InvocationResult,
    ModelAlias,
    ModelVersionInfo,
    Ready,
    RegisteredModelInfo,
    Tag,
    positive_split,
    traffic_split,
)
from rollout.serving.retry import RetryHook, RetryPolicy
from rollout.serving.sdk_auth import INSTALL_HINT, SdkAuth, sdk_available
from rollout.settings import DatabricksSettings, ServingSettings

log = structlog.get_logger("rollout.serving")

M = TypeVar("M", bound=BaseModel)

# (call label, HTTP status or None when no answer came, seconds the attempt took)
ResponseHook = Callable[[str, int | None, float], None]

API = "/api/2.0/serving-endpoints"
UC_MODELS = "/api/2.1/unity-catalog/models"

TagsArg = Mapping[str, str] | Iterable[Tag] | None


def _q(name: str) -> str:
    return quote(name, safe="")


def _tags(tags: TagsArg) -> list[dict[str, str]]:
    if tags is None:
        return []
    if isinstance(tags, Mapping):
        return [{"key": k, "value": v} for k, v in tags.items()]
    return [t.model_dump(exclude_none=True) for t in tags]


CONNECTION_LIMITS: Final = httpx.Limits(
    max_connections=32, max_keepalive_connections=8, keepalive_expiry=5.0
)
"""Connections to the workspace. Each request walks the pool's connections (and polls every
idle one's socket), so a pool grown to httpx's default 100 by a burst of looks cost about 2 ms
of CPU per look at 1,000 rollouts; 32 at once is more than the looks need (two short requests
each), and 8 are kept open between them."""


class ServingClient:
    """Typed, retried, observable calls to one workspace's serving endpoints."""

    def __init__(
        self,
        host: str,
        auth: Auth,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        poll_interval: float = 5.0,
        update_deadline: float = 45 * 60.0,
        put_deadline: float = 20.0,
        user_agent: str = f"rollout/{__version__}",
        on_response: ResponseHook | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self.host = normalize_host(host)
        self.auth = auth
        self.clock: Clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.update_deadline = update_deadline
        self.put_deadline = put_deadline
        self.on_response = on_response
        self.on_retry = on_retry
        try:
            self._http = httpx.AsyncClient(
                base_url=self.host,
                transport=transport,
                timeout=httpx.Timeout(timeout),
                headers={"User-Agent": user_agent},
                # A redirect here is a login page or a misconfigured host, never an answer.
                follow_redirects=False,
                limits=CONNECTION_LIMITS,
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise ConfigurationError(f"invalid workspace host {self.host!r}") from exc
        # Config version each of our PUTs announced, per endpoint: a GET that still shows an
        # older version with NOT_UPDATING has not caught up with our PUT yet.
        self._announced: dict[str, int] = {}
        # Per endpoint seen: the base of its route-optimized invocation URL (up to, not
        # including, "/invocations"), or None when it is queried through the workspace.
        self._routes: dict[str, str | None] = {}

    @classmethod
    def from_settings(
        cls,
        databricks: DatabricksSettings,
        serving: ServingSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        on_response: ResponseHook | None = None,
    ) -> ServingClient:
        """A client for the workspace and credentials the settings resolve to.

        ``serving.auth_resolver`` picks who resolves the sign-in: databricks-sdk (``sdk``,
        or ``auto`` when it is installed) or the built-in PAT/M2M resolution (``builtin``).
        The host is found now, without network calls; the SDK signs in on the first request.
        """
        clock = clock or SystemClock()
        resolver = serving.auth_resolver
        auth: Auth
        if resolver == "sdk" or (resolver == "auto" and sdk_available()):
            if not sdk_available():
                raise ConfigurationError(
                    f"ROLLOUT_SERVING_AUTH_RESOLVER=sdk needs databricks-sdk: {INSTALL_HINT}"
                )
            sdk = SdkAuth.from_settings(databricks, clock=clock, timeout=serving.request_timeout)
            host, auth = sdk.host, sdk
        else:
            credentials = resolve_credentials(databricks)
            host, auth = credentials.host, auth_from_credentials(credentials, clock=clock)
        return cls(
            host,
            auth,
            transport=transport,
            clock=clock,
            retry=RetryPolicy.from_settings(serving),
            timeout=serving.request_timeout,
            poll_interval=serving.update_poll_interval,
            put_deadline=serving.put_deadline,
            on_response=on_response,
        )

    def __repr__(self) -> str:
        return f"ServingClient(host={self.host!r}, auth={self.auth!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- one HTTP attempt ----------------------------------------------------------------------

    def _report(self, call: str, status: int | None, seconds: float) -> None:
        if self.on_response is None:
            return
        try:
            self.on_response(call, status, seconds)
        except Exception:  # a metrics hook must never break an API call
            log.warning("serving.on_response_failed", call=call, exc_info=True)

    async def _attempt(
        self,
        call: str,
        method: str,
        path: str,
        *,
        endpoint: str | None,
        body: Any = None,
        accept: str = "application/json",
    ) -> httpx.Response:
        reauthenticated = False
        while True:
            started = self.clock.monotonic()
            headers = {**await self.auth.headers(self._http), "Accept": accept}
            try:
                response = await self._http.request(method, path, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                self._report(call, None, self.clock.monotonic() - started)
                raise ServingTransportError(
                    f"{method} {path} timed out ({type(exc).__name__}, limit {self.timeout}s)",
                    endpoint=endpoint,
                    call=call,
                ) from exc
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                where = path if "://" in path else f"{self.host}{path}"
                raise ConfigurationError(
                    f"cannot send to {where}: {exc}", endpoint=endpoint, call=call
                ) from exc
            except httpx.HTTPError as exc:
                self._report(call, None, self.clock.monotonic() - started)
                raise ServingTransportError(
                    f"{method} {path} failed: {type(exc).__name__}: {exc}",
                    endpoint=endpoint,
                    call=call,
                ) from exc
            seconds = self.clock.monotonic() - started
            status = response.status_code
            self._report(call, status, seconds)
            log.debug(
                "serving.request",
                call=call,
                method=method,
                path=path,
                status=status,
                seconds=round(seconds, 4),
            )
            if 200 <= status < 300:
                return response
            error = error_from_response(
                status,
                response.content,
                headers=response.headers,
                reason=response.reason_phrase,
                endpoint=endpoint,
                call=call,
                now=self.clock.now(),
            )
            # An OAuth token may be revoked before it expires: fetch a new one, once.
            if (
                isinstance(error, Unauthenticated)
                and not reauthenticated
                and self.auth.invalidate()
            ):
                reauthenticated = True
                continue
            raise error

    async def _request(
        self,
        call: str,
        method: str,
        path: str,
        *,
        endpoint: str | None,
        body: Any = None,
        accept: str = "application/json",
    ) -> httpx.Response:
        async def attempt() -> httpx.Response:
            return await self._attempt(
                call, method, path, endpoint=endpoint, body=body, accept=accept
            )

        return await self.retry.run(attempt, clock=self.clock, call=call, on_retry=self.on_retry)

    # --- reading bodies -----------------------------------------------------------------------

    @staticmethod
    def _json(response: httpx.Response, call: str, endpoint: str | None) -> Any:
        if not response.content.strip():
            raise MalformedResponse(
                f"HTTP {response.status_code} with an empty body where JSON was expected",
                status=response.status_code,
                endpoint=endpoint,
                call=call,
            )
        try:
            return json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            snippet = response.content[:80].decode("utf-8", errors="replace")
            raise MalformedResponse(
                f"HTTP {response.status_code} body is not JSON ({exc}): {snippet!r}",
                status=response.status_code,
                endpoint=endpoint,
                call=call,
            ) from exc

    @staticmethod
    def _validate(model: type[M], data: Any, call: str, endpoint: str | None, status: int) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise MalformedResponse(
                f"response is not a valid {model.__name__}: {problems}",
                status=status,
                endpoint=endpoint,
                call=call,
            ) from exc

    def _object(self, response: httpx.Response, call: str, endpoint: str | None) -> dict[str, Any]:
        data = self._json(response, call, endpoint)
        if not isinstance(data, dict):
            raise MalformedResponse(
                f"expected a JSON object, got {type(data).__name__}",
                status=response.status_code,
                endpoint=endpoint,
                call=call,
            )
        return data

    def _endpoint(self, response: httpx.Response, call: str, name: str) -> Endpoint:
        data = self._json(response, call, name)
        endpoint = self._validate(Endpoint, data, call, name, response.status_code)
        self._routes[endpoint.name] = _route_base(endpoint)
        return endpoint

    def _text_field(self, response: httpx.Response, field: str, call: str, name: str) -> str:
        data = self._object(response, call, name)
        # Databricks leaves out empty fields, so a missing field is an empty text.
        value = data.get(field, "")
        if not isinstance(value, str):
            raise MalformedResponse(
                f"{field!r} is {type(value).__name__}, not a string",
                status=response.status_code,
                endpoint=name,
                call=call,
            )
        return value

    def _remember(self, endpoint: Endpoint) -> None:
        version = endpoint.announced_version
        if version is not None:
            self._announced[endpoint.name] = max(version, self._announced.get(endpoint.name, 0))

    # --- control plane ------------------------------------------------------------------------

    async def get_endpoint(self, name: str) -> Endpoint:
        response = await self._request("get_endpoint", "GET", f"{API}/{_q(name)}", endpoint=name)
        return self._endpoint(response, "get_endpoint", name)

    async def list_endpoints(self) -> list[EndpointSummary]:
        call = "list_endpoints"
        response = await self._request(call, "GET", API, endpoint=None)
        data = self._object(response, call, None)
        items = data.get("endpoints", [])
        if not isinstance(items, list):
            raise MalformedResponse(
                "'endpoints' is not a list", status=response.status_code, call=call
            )
        return [
            self._validate(EndpointSummary, item, call, None, response.status_code)
            for item in items
        ]

    async def create_endpoint(
        self,
        name: str,
        config: ConfigSpec,
        tags: TagsArg = None,
        *,
        description: str | None = None,
        route_optimized: bool | None = None,
    ) -> Endpoint:
        """Create an endpoint; it then goes through the same update lifecycle as a PUT.

        A create retried after a lost answer may find its own endpoint: ``AlreadyExists``.
        """
        call = "create_endpoint"
        body: dict[str, Any] = {"name": name, "config": config.put_body()}
        if tags:
            body["tags"] = _tags(tags)
        if description is not None:
            body["description"] = description
        if route_optimized is not None:
            body["route_optimized"] = route_optimized
        response = await self._request(call, "POST", API, endpoint=name, body=body)
        endpoint = self._endpoint(response, call, name)
        self._remember(endpoint)
        return endpoint

    async def delete_endpoint(self, name: str) -> None:
        # The answer is empty or {}; nothing in it is needed.
        await self._request("delete_endpoint", "DELETE", f"{API}/{_q(name)}", endpoint=name)
        self._announced.pop(name, None)
        self._routes.pop(name, None)

    async def update_config(self, name: str, spec: ConfigSpec) -> Endpoint:
        """PUT the full config (flat body). Returns at once; the update runs asynchronously.

        Raises ``UpdateInProgress`` when another update is in flight. The whole call, retries
        included, ends within ``put_deadline`` seconds (``ServingTransportError`` if not
        answered by then): the controller's lease on a rollout outlives every PUT it allows.
        """
        call = "update_config"
        try:
            async with asyncio.timeout(self.put_deadline):
                response = await self._request(
                    call, "PUT", f"{API}/{_q(name)}/config", endpoint=name, body=spec.put_body()
                )
        except TimeoutError as exc:
            raise ServingTransportError(
                f"PUT config not answered within {self.put_deadline:g}s",
                endpoint=name,
                call=call,
            ) from exc
        endpoint = self._endpoint(response, call, name)
        self._remember(endpoint)
        log.info(
            "serving.config_put",
            endpoint=name,
            split=spec.split,
            config_update=str(endpoint.state.config_update),
            announced_version=endpoint.announced_version,
        )
        return endpoint

    async def patch_tags(
        self, name: str, add: TagsArg = None, delete: Iterable[str] | None = None
    ) -> list[Tag]:
        call = "patch_tags"
        body: dict[str, Any] = {}
        if add:
            body["add_tags"] = _tags(add)
        if delete:
            body["delete_tags"] = list(delete)
        response = await self._request(
            call, "PATCH", f"{API}/{_q(name)}/tags", endpoint=name, body=body
        )
        data = self._object(response, call, name)
        items = data.get("tags", [])
        if not isinstance(items, list):
            raise MalformedResponse(
                "'tags' is not a list", status=response.status_code, endpoint=name, call=call
            )
        return [self._validate(Tag, item, call, name, response.status_code) for item in items]

    async def stop_endpoint(self, name: str) -> Endpoint | None:
        """``POST .../config:stop``. Returns the endpoint when the answer carries one."""
        return await self._stop_start("stop_endpoint", f"{API}/{_q(name)}/config:stop", name)

    async def start_endpoint(self, name: str) -> Endpoint | None:
        """``POST .../config:start``: starting creates a new config version (an update)."""
        return await self._stop_start("start_endpoint", f"{API}/{_q(name)}/config:start", name)

    async def _stop_start(self, call: str, path: str, name: str) -> Endpoint | None:
        response = await self._request(call, "POST", path, endpoint=name)
        # The answer's shape is not documented: an endpoint, or nothing.
        if not response.content.strip():
            return None
        data = self._object(response, call, name)
        if "name" not in data:
            return None
        endpoint = self._validate(Endpoint, data, call, name, response.status_code)
        self._remember(endpoint)
        return endpoint

    # --- observability ------------------------------------------------------------------------

    async def export_metrics(self, name: str) -> str:
        """The Prometheus/OpenMetrics text of the endpoint's last window.

        Asked for as ``text/plain``; a JSON ``{"contents": "..."}`` answer (as the REST
        reference shows it) is unwrapped.
        """
        call = "export_metrics"
        response = await self._request(
            call, "GET", f"{API}/{_q(name)}/metrics", endpoint=name, accept="text/plain"
        )
        content_type = response.headers.get("content-type", "")
        # Exposition text never starts with "{", so that is a JSON answer whatever its type.
        if "json" in content_type or response.content.lstrip()[:1] == b"{":
            return self._text_field(response, "contents", call, name)
        try:
            return response.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedResponse(
                "export-metrics text is not UTF-8",
                status=response.status_code,
                endpoint=name,
                call=call,
            ) from exc

    # --- Unity Catalog registered models: aliases ------------------------------------------
    # Same auth, retry policy and error tree as the serving calls; ``endpoint`` in an error
    # is None (they name a model, not an endpoint) and the message says which model.

    async def get_model_version_by_alias(self, full_name: str, alias: str) -> ModelVersionInfo:
        """The version ``full_name@alias`` names (``ModelVersionsAPI.get_by_alias``);
        ``NotFound`` when the model or the alias does not exist."""
        call = "get_model_version_by_alias"
        path = f"{UC_MODELS}/{_q(full_name)}/aliases/{_q(alias)}"
        response = await self._request(call, "GET", path, endpoint=None)
        data = self._json(response, call, None)
        return self._validate(ModelVersionInfo, data, call, None, response.status_code)

    async def get_registered_model(self, full_name: str) -> RegisteredModelInfo:
        """The registered model with its aliases (``RegisteredModelsAPI.get`` with
        ``include_aliases``); ``NotFound`` when it does not exist."""
        call = "get_registered_model"
        path = f"{UC_MODELS}/{_q(full_name)}?include_aliases=true"
        response = await self._request(call, "GET", path, endpoint=None)
        data = self._json(response, call, None)
        return self._validate(RegisteredModelInfo, data, call, None, response.status_code)

    async def set_alias(self, full_name: str, alias: str, version: str) -> ModelAlias:
        """Point ``full_name@alias`` at ``version`` (``RegisteredModelsAPI.set_alias``):
        idempotent, so a retry after a lost answer is harmless."""
        call = "set_alias"
        try:
            number = int(version)
        except ValueError as exc:
            raise ConfigurationError(
                f"version {version!r} of {full_name} is not a number", call=call
            ) from exc
        path = f"{UC_MODELS}/{_q(full_name)}/aliases/{_q(alias)}"
        body = {"full_name": full_name, "alias": alias, "version_num": number}
        response = await self._request(call, "PUT", path, endpoint=None, body=body)
        data = self._json(response, call, None)
        return self._validate(ModelAlias, data, call, None, response.status_code)

    async def delete_alias(self, full_name: str, alias: str) -> None:
        """Remove ``full_name@alias`` (``RegisteredModelsAPI.delete_alias``)."""
        call = "delete_alias"
        path = f"{UC_MODELS}/{_q(full_name)}/aliases/{_q(alias)}"
        await self._request(call, "DELETE", path, endpoint=None)

    async def build_logs(self, name: str, served_model: str) -> str:
        call = "build_logs"
        path = f"{API}/{_q(name)}/served-models/{_q(served_model)}/build-logs"
        response = await self._request(call, "GET", path, endpoint=name)
        return self._text_field(response, "logs", call, name)

    async def server_logs(self, name: str, served_model: str) -> str:
        call = "server_logs"
        path = f"{API}/{_q(name)}/served-models/{_q(served_model)}/logs"
        response = await self._request(call, "GET", path, endpoint=name)
        return self._text_field(response, "logs", call, name)

    async def openapi(self, name: str) -> dict[str, Any]:
        """The endpoint's OpenAPI document (JSON, or YAML text), as a mapping."""
        call = "openapi"
        response = await self._request(
            call,
            "GET",
            f"{API}/{_q(name)}/openapi",
            endpoint=name,
            accept="application/json, text/plain",
        )
        document: Any
        try:
            document = json.loads(response.content)
        except ValueError:
            try:
                document = yaml.safe_load(response.content)
            except yaml.YAMLError as exc:
                raise MalformedResponse(
                    "the OpenAPI document is neither JSON nor YAML",
                    status=response.status_code,
                    endpoint=name,
                    call=call,
                ) from exc
        if not isinstance(document, dict) or not ({"openapi", "swagger", "paths"} & set(document)):
            raise MalformedResponse(
                "the OpenAPI document is not an OpenAPI object",
                status=response.status_code,
                endpoint=name,
                call=call,
            )
        return document

    # --- data plane ---------------------------------------------------------------------------

    async def signs_in_with_oauth(self) -> bool:
        """Whether requests carry an OAuth token (what a route-optimized endpoint accepts)."""
        return await self.auth.is_oauth(self._http)

    async def query(self, name: str, body: Mapping[str, Any]) -> InvocationResult:
        """Invoke the endpoint; traffic is routed by its ``traffic_config``."""
        return await self._invoke("query", "/invocations", name, body)

    async def query_served_model(
        self, name: str, served_model: str, body: Mapping[str, Any]
    ) -> InvocationResult:
        """Invoke one served entity directly, whatever its traffic share (even 0 %)."""
        suffix = f"/served-models/{_q(served_model)}/invocations"
        return await self._invoke("query_served_model", suffix, name, body)

    async def invocation_base(self, name: str) -> str | None:
        """The route-optimized URL base of the endpoint, None when queried at the workspace."""
        if name not in self._routes:
            await self.get_endpoint(name)
        return self._routes.get(name)

    async def _invoke(
        self, call: str, suffix: str, name: str, body: Mapping[str, Any]
    ) -> InvocationResult:
        base = await self.invocation_base(name)
        if base is None:
            path = f"/serving-endpoints/{_q(name)}{suffix}"
        else:
            if not await self.signs_in_with_oauth():
                raise ConfigurationError(
                    f"endpoint {name!r} is route-optimized: Databricks answers its invocations "
                    f"({base}{suffix}) only with OAuth tokens, and the controller signs in with "
                    "a personal access token; sign in as a service principal (OAuth M2M) or "
                    "with `databricks auth login`",
                    endpoint=name,
                    call=call,
                )
            path = f"{base}{suffix}"
        response = await self._request(call, "POST", path, endpoint=name, body=dict(body))
        return InvocationResult(
            body=self._json(response, call, name),
            served_model_name=response.headers.get("served-model-name"),
            status=response.status_code,
        )

    # --- the update lifecycle -----------------------------------------------------------------

    async def wait_until_applied(
        self,
        name: str,
        expected: ConfigSpec,
        *,
        deadline_seconds: float | None = None,
        min_config_version: int | None = None,
        require_ready: bool = True,
    ) -> Endpoint:
        """Poll until the endpoint's update settles, then verify it serves ``expected``.

        ``state.ready`` and ``state.config_update`` are read together on every poll:

        - IN_PROGRESS: keep polling, ``poll_interval`` apart on the clock;
        - UPDATE_FAILED / UPDATE_CANCELED: ``UpdateFailed`` (the old config keeps serving);
        - NOT_UPDATING with a ``config_version`` below the one our PUT announced
          (``min_config_version``, else remembered from ``update_config``): the GET has not
          caught up with the PUT yet, keep polling;
        - NOT_UPDATING and NOT_READY (when ``require_ready``; an absent ``ready`` does not
          hold back): keep polling;
        - NOT_UPDATING: compare served entities (name, entity_name, entity_version) and the
          traffic split (zero routes ignored) with ``expected``: ``ConfigMismatch`` if they
          differ, else the endpoint is returned.

        Transient errors on a poll are ridden out until the deadline; past the deadline,
        ``UpdateTimeout``.
        """
        deadline_seconds = self.update_deadline if deadline_seconds is None else deadline_seconds
        deadline = self.clock.monotonic() + deadline_seconds
        announced = (
            min_config_version if min_config_version is not None else self._announced.get(name)
        )
        last: Endpoint | None = None
        last_error: ServingError | None = None
        polls = 0
        while True:
            polls += 1
            try:
                endpoint = await self.get_endpoint(name)
            except ServingError as error:
                if not error.transient:
                    raise
                last_error = error
                log.warning("serving.wait_poll_failed", endpoint=name, error=str(error))
            else:
                last = endpoint
                last_error = None
                reason = self._pending_reason(endpoint, expected, announced, require_ready)
                if reason is None:
                    log.info(
                        "serving.update_applied",
                        endpoint=name,
                        config_version=endpoint.config.config_version if endpoint.config else None,
                        split=traffic_split(endpoint),
                        polls=polls,
                    )
                    return endpoint
                log.debug("serving.update_pending", endpoint=name, reason=reason)
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                state = (
                    f"ready={last.state.ready}, config_update={last.state.config_update}"
                    if last
                    else f"no successful poll ({last_error})"
                )
                timeout = UpdateTimeout(
                    f"update not settled after {deadline_seconds:g}s ({state})",
                    endpoint_snapshot=last,
                    deadline_seconds=deadline_seconds,
                    endpoint=name,
                    call="wait_until_applied",
                )
                if last_error is not None:
                    raise timeout from last_error
                raise timeout
            await self.clock.sleep(min(self.poll_interval, remaining))

    def _pending_reason(
        self,
        endpoint: Endpoint,
        expected: ConfigSpec,
        announced: int | None,
        require_ready: bool,
    ) -> str | None:
        """Why the update is not settled yet (None when it is); raises when it ended badly."""
        state = endpoint.state
        if state.config_update in (ConfigUpdate.UPDATE_FAILED, ConfigUpdate.UPDATE_CANCELED):
            # The version that PUT announced will never serve: a later wait must not look for it.
            self._announced.pop(endpoint.name, None)
            raise UpdateFailed(
                f"config update ended {state.config_update} (ready={state.ready}); "
                "the previous config keeps serving",
                endpoint_snapshot=endpoint,
                endpoint=endpoint.name,
                call="wait_until_applied",
            )
        if state.config_update != ConfigUpdate.NOT_UPDATING:
            # IN_PROGRESS, or a state this client does not know: not settled.
            return f"config_update={state.config_update}"
        version = endpoint.config.config_version if endpoint.config else None
        if announced is not None and version is not None and version < announced:
            return f"config_version {version} < announced {announced}"
        # An absent ``ready`` is not reported, not NOT_READY: only the latter holds back.
        if require_ready and state.ready is not None and state.ready != Ready.READY:
            return f"ready={state.ready}"
        if endpoint.config is None:
            live_split: dict[str, int] = {}
            live_entities: frozenset[tuple[str, str | None, str | None]] = frozenset()
        else:
            live_split = traffic_split(endpoint)
            live_entities = endpoint.config.entity_identities()
        want_split = positive_split(expected.split)
        want_entities = expected.entity_identities()
        if positive_split(live_split) != want_split or live_entities != want_entities:
            raise ConfigMismatch(
                f"live config differs from the one asked for: split {positive_split(live_split)} "
                f"vs {want_split}, entities {sorted(live_entities, key=str)} vs "
                f"{sorted(want_entities, key=str)}",
                expected=want_split,
                actual=positive_split(live_split),
                expected_entities=want_entities,
                actual_entities=live_entities,
                endpoint_snapshot=endpoint,
                endpoint=endpoint.name,
                call="wait_until_applied",
            )
        return None


def _route_base(endpoint: Endpoint) -> str | None:
    """Where a route-optimized endpoint's invocations go, without the final "/invocations"."""
    if not endpoint.route_optimized or not endpoint.endpoint_url:
        return None
    url = endpoint.endpoint_url.strip().rstrip("/")
    if "://" not in url:
        url = f"https://{url}"
    if url.endswith("/invocations"):
        return url[: -len("/invocations")]
    # A bare host: the workspace's path layout under it.
    return f"{url}/serving-endpoints/{_q(endpoint.name)}"


__all__ = ["ResponseHook", "ServingClient"]
