"""The controller's HTTP API: submit plans, read rollouts and their events, queue commands.

Where this sits: users submit plans and steer rollouts through this API (directly or with the
``rollout`` CLI); the engine acts on what it stores. ``POST /api/v1/rollouts`` validates a plan,
checks that its endpoint exists in the workspace and is free, and stores the rollout in
``pending`` (``rollout.engine.runner.new_rollout``); the commands (pause, resume, promote,
abort) are queued with ``store.add_command`` when the rollout's phase takes them
(``rollout.engine.model.COMMANDS_BY_PHASE``, the table the engine takes them by; otherwise 409
``command_not_allowed`` with the commands it takes) and applied by the engine at its next look.
A rollout is named in a path by its id, a unique prefix of it, or ``endpoint/name``
(``_Service.load``). ``PUT /rollouts/{id}/alerts`` replaces a rollout's alert channels
(``rollout.api.channels``), which every read shows redacted. Requests pass ``BrowserGuard``
(the Host check) and ``Guard`` (body limit, last-resort 500) first, and every state-changing
route refuses what a page on another origin could send (``rollout.api.middleware``).
``wake(rollout_id)`` tells the daemon's scheduler to look at once.
``GET /api/v1/rollouts/{id}/series`` gives a rollout's metric windows per arm and its split
changes (``rollout.api.series``) for the status page, which is served at ``/``
(``rollout.api.page``) and reads the API like any other client; ``GET /api/v1/session`` tells
it the caller's role, so that it offers commands to operators only. Beside the API:
``/healthz`` (the process answers), ``/readyz`` (the daemon's own checks, the store, and the
rollouts this replica owns) and
``/metrics`` (the controller's Prometheus registry), all three open so that monitoring needs
no token.

The API never acts on an endpoint itself and never blocks its event loop on the store: every
store call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal, TypeVar

import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.responses import JSONResponse

from rollout import __version__
from rollout.alerts.targets import TargetPolicy
from rollout.analysis.queries import promql_duration
from rollout.analysis.spec import Policy, QueryCheck
from rollout.api.auth import Role, TokenTable, allows, parse_tokens
from rollout.api.channels import channel_routes, hook_issues, refused_targets, target_issues
from rollout.api.documents import (
    JSON_TYPES,
    MAX_CURSOR_CHARS,
    YAML_TYPES,
    decode_cursor,
    encode_cursor,
    media_type,
    parse_json_object,
    parse_plan_body,
)
from rollout.api.errors import ApiError, field_issues, install_handlers, record_methods
from rollout.api.middleware import (
    LOOPBACK_NAMES,
    BrowserGuard,
    Guard,
    cross_site_refusal,
    host_name,
)
from rollout.api.page import page_routes
from rollout.api.schemas import (
    AlertsBody,
    CommandAccepted,
    EmptyBody,
    ErrorResponse,
    EventList,
    Health,
    PhaseName,
    PromoteBody,
    Readiness,
    ReasonBody,
    Rollout,
    RolloutPage,
    Session,
    SubmittedRollout,
    alias_move_view,
    command_view,
    event_view,
    rollout_view,
    summary_view,
)
from rollout.api.series import DEFAULT_WINDOWS, MAX_WINDOWS, RolloutSeries, series_view
from rollout.clock import Clock
from rollout.engine.aliases import RegistryUnavailable, UnknownAlias, resolve_aliases
from rollout.engine.decide import DEFAULT_TIMING, Timing
from rollout.engine.model import Phase, allowed_commands
from rollout.engine.runner import alias_move_of, new_rollout
from rollout.engine.traffic import DATABRICKS_WINDOW_SECONDS, low_traffic_warning, recent_traffic
from rollout.metrics.model import Histogram
from rollout.metrics.parse import MetricsError, Scrape, parse_export_metrics
from rollout.metrics.prometheus import NOT_CONFIGURED, Issue, OwnMetrics, SourceUnreachable
from rollout.plan import (
    AnyPlan,
    Plan,
    PlanError,
    PlanIssue,
    PlanTooLargeError,
    check_plan,
    plan_notes,
    resolution_notes,
)
from rollout.policies import PolicyLibrary
from rollout.serving.client import ServingClient
from rollout.serving.errors import (
    ConfigurationError,
    NotFound,
    PermissionDenied,
    ServingError,
    Unauthenticated,
)
from rollout.serving.models import Endpoint, traffic_split
from rollout.settings import ApiSettings
from rollout.store.base import Store
from rollout.store.errors import (
    ActiveRolloutExists,
    DuplicateRollout,
    RolloutNotFound,
    StaleVersion,
    StoreError,
)
from rollout.store.model import RolloutRecord
from rollout.telemetry import TextFamilies, expose

log = structlog.get_logger("rollout.api")

PREFIX = "/api/v1"
MAX_PAGE = 1000
"""The most rollouts one page of a list holds."""
T = TypeVar("T")
ReadyCheck = Callable[[], Awaitable[dict[str, str]]]
Owned = Callable[[], list[str]]
"""The rollouts this replica drives now, by id (shown by ``/readyz``)."""
Wake = Callable[[str], object]  # what it returns is ignored

# Ids are what ``new_rollout`` makes (hex); anything else cannot name a rollout.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_READY_TIMEOUT = 5.0
# Threads for the API's store reads and rendering, apart from the looks' (see _Service).
API_THREADS = 4
# Rollouts read, newest first, to resolve an id prefix or an endpoint/name.
_SCAN = 10_000
_CANDIDATES_SHOWN = 10
_COMMANDS = frozenset({"pause", "resume", "promote", "abort"})
# A submission waits at most this long (seconds) for the endpoint's metrics, which only
# feed a warning.
_TRAFFIC_TIMEOUT = 10.0
_NEEDED_PERMISSION = "CAN_MANAGE"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "No token, or an unknown one (only when tokens are configured).",
        403: "The token's role may not do this, or a browser sent it from another site.",
        421: "The Host header names a host this controller does not serve.",
        413: "The body is larger than the configured limit, or the plan is, once YAML "
        "aliases are expanded.",
        422: "The request is invalid; details name each field.",
        503: "The store (or, on submission, the workspace) cannot be reached now; retry.",
    }.items()
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    own = {
        400: "The request cannot be read.",
        404: "No such rollout, or no such endpoint in the workspace.",
        409: "The endpoint is held by an active rollout; the rollout's phase does not take "
        "this command (allowed_commands lists those it takes) or has it queued already; or "
        "the id prefix or endpoint/name fits several rollouts (candidates lists them).",
        415: "The body's content type is not accepted.",
        502: "The workspace answered with an error.",
    }
    out = dict(_ERRORS)
    for status in statuses:
        out[status] = {"model": ErrorResponse, "description": own.get(status, "")}
    return out


class RolloutApi(FastAPI):
    """FastAPI with the request-body schemas (plans, command bodies) in its OpenAPI document.

    Routes read their bodies themselves (a plan may be YAML), so FastAPI cannot see them; the
    schemas are added to the components here and referenced from each route's request body.
    """

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()
        # Declared even on an open API: clients learn how a token would be presented.
        schema.setdefault("components", {}).setdefault("securitySchemes", {}).setdefault(
            "HTTPBearer",
            {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from ROLLOUT_API_TOKENS; viewer reads, operator also "
                "acts. Not checked when the API runs without tokens (loopback only).",
            },
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "Plan" not in components:
            for name, body in request_schemas().items():
                if name in components and components[name] != body:
                    raise RuntimeError(f"two different OpenAPI schemas are named {name!r}")
                components[name] = body
        return schema


def request_schemas() -> dict[str, Any]:
    """JSON schemas of the request bodies, with references into ``#/components/schemas``."""
    template = "#/components/schemas/{model}"
    plan = TypeAdapter(Plan).json_schema(ref_template=template)
    schemas: dict[str, Any] = dict(plan.pop("$defs", {}))
    plan["description"] = (
        "A rollout plan (canary, ab or blue_green), as JSON or YAML. `policy` is a built-in "
        "policy name or an inline policy mapping."
    )
    schemas["Plan"] = plan
    for model in (ReasonBody, PromoteBody, EmptyBody, AlertsBody):
        body = model.model_json_schema(ref_template=template)
        for name, definition in body.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = body
    return schemas


def _body_doc(schema: str, *, media: tuple[str, ...], required: bool) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": required, "content": {m: {"schema": ref} for m in media}}}


def create_api(
    *,
    store: Store,
    client: ServingClient,
    clock: Clock,
    library: PolicyLibrary,
    registry: CollectorRegistry,
    settings: ApiSettings,
    rendered: Sequence[TextFamilies] = (),
    ready: ReadyCheck | None = None,
    wake: Wake | None = None,
    endpoint_check_timeout: float = 30.0,
    timing: Timing = DEFAULT_TIMING,
    metrics_window: float = DATABRICKS_WINDOW_SECONDS,
    alert_targets: TargetPolicy | None = None,
    owned: Owned | None = None,
    own_metrics: OwnMetrics | None = None,
) -> FastAPI:
    """The API application. Raises ``ValueError`` (naming the item) for a bad token spec.

    ``owned()`` lists the rollouts this replica drives; ``/readyz`` shows it. ``/metrics`` is
    ``registry`` followed by the ``rendered`` families (per-rollout gauges that write their own
    text: see ``rollout.telemetry.expose``).

    ``ready()`` returns the daemon's problems by component (empty: ready); ``wake(id)`` is
    called after a rollout is created or a command queued. ``endpoint_check_timeout`` bounds,
    in seconds, the check that a submitted plan's endpoint exists (retries included).
    ``timing`` (the engine's) and ``metrics_window`` (seconds per export-metrics window) let
    a submission say whether the endpoint's traffic can give the first step a verdict.
    ``alert_targets`` says where a plan's alert channels may point (default: public
    addresses only); a plan with a channel elsewhere is refused with 422.
    ``own_metrics`` runs a plan's checks on its own metrics at submission (None: no
    Prometheus, so a PromQL check is refused with 422).
    """
    tokens = parse_tokens(settings.tokens)
    app = RolloutApi(
        title="rollout",
        version=__version__,
        description="Progressive delivery for Databricks Model Serving: submit rollout "
        "plans, follow them, and pause, resume, promote or abort them.",
        # The API documents itself at /openapi.json; no HTML pages pulling scripts from CDNs.
        docs_url=None,
        redoc_url=None,
    )
    install_handlers(app)
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(BrowserGuard, allowed_hosts=served_hosts(settings, open_api=not tokens))
    service = _Service(
        store=store,
        client=client,
        clock=clock,
        library=library,
        registry=registry,
        rendered=rendered,
        ready=ready,
        wake=wake,
        endpoint_check_timeout=endpoint_check_timeout,
        timing=timing,
        metrics_window=metrics_window,
        alert_targets=alert_targets if alert_targets is not None else TargetPolicy(),
        owned=owned,
        own_metrics=own_metrics,
    )
    read_deps, write_deps = _auth_dependencies(tokens)
    write_deps = [*write_deps, Depends(_same_site)]
    router = APIRouter(prefix=PREFIX)
    _session_route(router, tokens)
    _rollout_routes(router, service, read_deps, write_deps)
    _command_routes(router, service, write_deps)
    channel_routes(router, service, write_deps, _responses(400, 404, 409, 415))
    _monitoring_routes(app, service)
    # The status page and its assets are open like /healthz: they hold no data; the page
    # reads the API with the viewer's own token.
    page_routes(app)
    record_methods(app, [*router.routes, *app.router.routes])
    app.include_router(router)
    return app


def served_hosts(settings: ApiSettings, *, open_api: bool) -> frozenset[str] | None:
    """The Host names the API answers to; None: any (see ``BrowserGuard``)."""
    names = {host_name(item) for item in settings.allowed_hosts.split(",") if item.strip()}
    if "*" in names:
        return None
    if not names and not open_api:
        return None  # tokens guard every route; a browser never sends one by itself
    if not names:
        names = {*LOOPBACK_NAMES, host_name(settings.host)}
    return frozenset(names)


def _baseline_latency(scrape: Scrape, baseline: str | None) -> Histogram | None:
    """The baseline's latency histogram in a scrape: the named entity, or the one that served
    the most requests (the entity a rollout takes as its baseline)."""
    windows = [w for w in scrape.windows if w.entity is not None and w.latency is not None]
    if baseline is not None:
        windows = [w for w in windows if w.entity == baseline]
    if not windows:
        return None
    return max(windows, key=lambda w: w.requests).latency


class _Service:
    """What the routes do, over the injected handles."""

    def __init__(
        self,
        *,
        store: Store,
        client: ServingClient,
        clock: Clock,
        library: PolicyLibrary,
        registry: CollectorRegistry,
        rendered: Sequence[TextFamilies],
        ready: ReadyCheck | None,
        wake: Wake | None,
        endpoint_check_timeout: float,
        timing: Timing,
        metrics_window: float,
        alert_targets: TargetPolicy,
        owned: Owned | None = None,
        own_metrics: OwnMetrics | None = None,
    ) -> None:
        self.store = store
        self.own_metrics = own_metrics
        self.alert_targets = alert_targets
        self.owned = owned
        self.client = client
        self.clock = clock
        self.library = library
        self.registry = registry
        self.rendered = rendered
        self.ready = ready
        self.wake = wake
        self.endpoint_check_timeout = endpoint_check_timeout
        self.timing = timing
        self.metrics_window = metrics_window
        # The API's own threads: a scrape or a list never queues behind the looks' store
        # calls in the loop's default pool (with 1,000 rollouts that queue is where a
        # /metrics request spent most of its time).
        self.threads = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="api")

    async def off_loop(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function`` in the API's threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.threads, functools.partial(function, *args)
        )

    async def in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run a store call off the event loop; map its errors to answers."""
        try:
            return await self.off_loop(function, *args)
        except RolloutNotFound as exc:
            raise ApiError(404, "rollout_not_found", str(exc)) from exc
        except (ActiveRolloutExists, DuplicateRollout, StaleVersion):
            raise
        except StoreError as exc:
            log.warning("api.store_error", error=str(exc))
            raise ApiError(
                503, "store_unavailable", f"the store cannot be used now: {exc}"
            ) from exc

    async def load(self, ref: str) -> RolloutRecord:
        """The rollout ``ref`` names: its id, a unique prefix of its id, or ``endpoint/name``.

        ``endpoint/name`` names the rollout whose plan has that name on that endpoint: the
        active one if there is one, else the only one. Several that fit are refused (409
        ``ambiguous_rollout``, with the candidates); none is 404.
        """
        if "/" in ref:
            endpoint, name = ref.split("/", 1)
            records = await self.in_thread(self.store.list, endpoint, None, _SCAN)
            found = [r for r in records if r.plan.get("name") == name]
            active = [r for r in found if not r.terminal]
            return _one(ref, active or found, f"no rollout named {name!r} on endpoint "
                        f"{endpoint!r}")
        _checked_id(ref)
        try:
            return await self.in_thread(self.store.get, ref)
        except ApiError as exc:
            if exc.code != "rollout_not_found":
                raise
        records = await self.in_thread(self.store.list, None, None, _SCAN)
        return _one(
            ref,
            [r for r in records if r.id.startswith(ref)],
            f"no rollout has the id {ref!r} or an id starting with it",
        )

    def view(self, record: RolloutRecord) -> Rollout:
        """The rollout's document, ``next`` computed on this service's clock and timing."""
        return rollout_view(record, self.clock.now(), self.timing)

    def poke(self, rollout_id: str) -> None:
        if self.wake is None:
            return
        try:
            self.wake(rollout_id)
        except Exception as exc:  # noqa: BLE001 -- whatever wake raises, the rollout is stored
            # The scheduler's next scan will find it anyway.
            log.warning("api.wake_failed", rollout=rollout_id, error=repr(exc))

    async def check_endpoint(self, name: str) -> Endpoint:
        """The endpoint exists and the controller may manage it, or an answer saying why not."""
        timeout = self.endpoint_check_timeout
        try:
            async with asyncio.timeout(timeout):
                endpoint = await self.client.get_endpoint(name)
        except TimeoutError as exc:
            raise ApiError(
                503,
                "workspace_unavailable",
                f"the workspace did not answer within {timeout:g} s while checking endpoint "
                f"{name!r}; try again later",
            ) from exc
        except NotFound as exc:
            raise ApiError(
                404, "endpoint_not_found", f"endpoint {name!r} does not exist in the workspace"
            ) from exc
        except PermissionDenied as exc:
            raise ApiError(
                403,
                "endpoint_permission",
                f"the controller may not read endpoint {name!r}: it needs {_NEEDED_PERMISSION}",
            ) from exc
        except (Unauthenticated, ConfigurationError) as exc:
            raise ApiError(
                502, "workspace_error", f"the workspace refused the controller's credentials: {exc}"
            ) from exc
        except ServingError as exc:
            if exc.retryable:
                raise ApiError(
                    503,
                    "workspace_unavailable",
                    f"the workspace cannot be reached now; try again later: {exc}",
                ) from exc
            raise ApiError(502, "workspace_error", f"the workspace answered: {exc}") from exc
        level = endpoint.permission_level
        if level is not None and level != _NEEDED_PERMISSION:
            raise ApiError(
                403,
                "endpoint_permission",
                f"the controller has {level} on endpoint {name!r}; a rollout needs "
                f"{_NEEDED_PERMISSION}",
            )
        return endpoint

    async def check_sign_in(self, plan: AnyPlan, endpoint: Endpoint) -> None:
        """A blue/green plan on a route-optimized endpoint needs OAuth for its smoke checks.

        Databricks answers a route-optimized endpoint's invocations only at its own URL and
        only with OAuth tokens: with a personal access token every smoke invocation would fail
        and the rollout would roll back, so the plan is refused now.
        """
        if plan.strategy != "blue_green" or not endpoint.route_optimized:
            return
        try:
            oauth = await self.client.signs_in_with_oauth()
        except ServingError as exc:
            raise ApiError(
                502, "workspace_error", f"the controller cannot sign in to the workspace: {exc}"
            ) from exc
        if not oauth:
            message = (
                f"endpoint {endpoint.name!r} is route-optimized: Databricks answers its "
                "invocations only with OAuth tokens, so the blue/green smoke checks cannot run "
                "while the controller signs in with a personal access token; sign it in as a "
                "service principal (DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET) or with "
                "a `databricks auth login` profile, or use strategy canary"
            )
            raise ApiError(
                422,
                "oauth_required",
                message,
                details=[{"field": "strategy", "message": message}],
            )

    async def check_own_metrics(self, plan: AnyPlan, policy: Policy, endpoint: Endpoint) -> None:
        """The policy's checks on its own metrics can run: every PromQL query parses and
        returns a series for the baseline, every web check answers a number for it
        (``OwnMetrics.validate``); 422 naming ``policy.checks[i].query`` (or ``.web``)
        otherwise, 503 when a source cannot be reached now."""
        if not policy.query_checks:
            return
        split = traffic_split(endpoint)
        baseline = plan.baseline or (max(split, key=lambda n: split[n]) if split else None)
        if self.own_metrics is None:
            issues = [
                Issue(f"policy.checks[{index}].query", NOT_CONFIGURED)
                for index, check in enumerate(policy.checks)
                if isinstance(check, QueryCheck) and check.query is not None
            ]
        else:
            try:
                async with asyncio.timeout(self.endpoint_check_timeout):
                    issues = await self.own_metrics.validate(
                        policy,
                        endpoint=plan.endpoint,
                        candidate=plan.candidate.served_name,
                        baseline=baseline,
                        window=promql_duration(self.timing.look_interval),
                    )
            except (SourceUnreachable, TimeoutError) as exc:
                raise ApiError(
                    503,
                    "metrics_source_unavailable",
                    "the source of a check on your own metrics cannot be asked now; try "
                    f"again later: {exc or 'no answer in time'}",
                ) from exc
        if issues:
            raise _invalid_plan(PlanError([PlanIssue(field=i.field, message=i.message)
                                           for i in issues]))

    async def resolve_aliases(self, plan: AnyPlan) -> AnyPlan:
        """The plan with its Unity Catalog aliases resolved (``rollout.engine.aliases``), or
        an answer saying why not: 422 for an unknown model or alias, 503/502 when the
        workspace could not say."""
        try:
            async with asyncio.timeout(self.endpoint_check_timeout):
                return await resolve_aliases(plan, self.client)
        except TimeoutError as exc:
            raise ApiError(
                503,
                "workspace_unavailable",
                f"the workspace did not answer within {self.endpoint_check_timeout:g} s while "
                "resolving the plan's aliases; try again later",
            ) from exc
        except UnknownAlias as exc:
            raise ApiError(
                422,
                "unknown_alias",
                f"{exc.field}: {exc.message}",
                details=[{"field": exc.field, "message": exc.message}],
            ) from exc
        except RegistryUnavailable as exc:
            if exc.retryable:
                raise ApiError(503, "workspace_unavailable", exc.message) from exc
            raise ApiError(502, "workspace_error", exc.message) from exc
        except PlanError as exc:
            raise _invalid_plan(exc) from exc

    async def traffic_warnings(self, plan: AnyPlan, policy: Policy) -> list[str]:
        """A warning when the endpoint's recent traffic cannot give the first step a verdict,
        or when its export names no served entity (the rollout would pause at its first look).

        Only advice: metrics that cannot be read (a new endpoint answers 404, a workspace
        may be slow) leave the submission as it would have been, without a warning.
        """
        try:
            async with asyncio.timeout(min(_TRAFFIC_TIMEOUT, self.endpoint_check_timeout)):
                text = await self.client.export_metrics(plan.endpoint)
            scrape = parse_export_metrics(text)
        except (TimeoutError, ServingError, MetricsError) as exc:
            log.info("api.traffic_unknown", endpoint=plan.endpoint, error=str(exc) or repr(exc))
            return []
        notes = resolution_notes(policy, _baseline_latency(scrape, plan.baseline))
        unattributable = scrape.unattributable()
        if unattributable is not None:
            notes.insert(0, f"{unattributable.describe()}; the rollout will pause at its first "
                         "look once the candidate serves beside the baseline")
        traffic = recent_traffic(scrape, window_seconds=self.metrics_window)
        if traffic is None:
            return notes
        warning = low_traffic_warning(plan.endpoint, plan, policy, self.timing, traffic)
        return notes if warning is None else [warning, *notes]

    async def submit(self, body: bytes, kind: str) -> tuple[RolloutRecord, list[str]]:
        try:
            plan, policy = check_plan(parse_plan_body(body, kind), self.library)
        except PlanError as exc:
            raise _invalid_plan(exc) from exc
        refused = [
            *await target_issues(self.alert_targets, plan.alerts),
            *await hook_issues(self.alert_targets, plan.hooks),
        ]
        if refused:
            raise refused_targets(refused)
        active = await self.in_thread(self.store.active_for_endpoint, plan.endpoint)
        if active is not None:
            raise _rollout_active(plan.endpoint, active.id)
        endpoint = await self.check_endpoint(plan.endpoint)
        plan = await self.resolve_aliases(plan)
        await self.check_sign_in(plan, endpoint)
        await self.check_own_metrics(plan, policy, endpoint)
        warnings = [
            *await self.traffic_warnings(plan, policy),
            *plan_notes(plan, policy, metrics_window=self.metrics_window, buckets=False),
        ]
        record, event = new_rollout(plan, policy, self.clock.now())
        create = functools.partial(
            self.store.create, record, event, [], alias_move=alias_move_of(plan)
        )
        try:
            stored = await self.in_thread(create)
        except ActiveRolloutExists as exc:
            # Another submission for the endpoint won the race since the check above.
            raise _rollout_active(plan.endpoint, exc.active_id) from exc
        except DuplicateRollout as exc:  # pragma: no cover - 48 random bits
            raise ApiError(503, "store_unavailable", "id collision; submit again") from exc
        except ValueError as exc:
            raise ApiError(
                422,
                "invalid_plan",
                f"the plan cannot be stored: {exc}",
                details=[{"field": "(plan)", "message": str(exc)}],
            ) from exc
        log.info(
            "api.rollout_submitted",
            rollout=stored.id,
            endpoint=stored.endpoint,
            strategy=plan.strategy,
            candidate=plan.candidate.served_name,
            policy=policy.name,
            warnings=warnings,
        )
        self.poke(stored.id)
        return stored, warnings

    async def queue(
        self, request: Request, rollout_id: str, model: type[BaseModel], kind: str
    ) -> CommandAccepted:
        data = _command_body(request, await request.body(), model)
        if isinstance(data, PromoteBody) and data.full:
            kind = "promote_full"
        payload: dict[str, Any] = {}
        if isinstance(data, ReasonBody) and data.reason is not None:
            payload["reason"] = data.reason
        record = await self.load(rollout_id)
        if record.terminal:
            raise ApiError(
                409,
                "rollout_finished",
                f"rollout {record.id} has finished ({record.phase}); it takes no commands",
                phase=record.phase,
                allowed_commands=[],
            )
        allowed = allowed_commands(Phase(record.phase))
        offered = _command_names(allowed)
        if kind not in allowed:
            word = _command_names((kind,))[0] + (" --full" if kind == "promote_full" else "")
            raise ApiError(
                409,
                "command_not_allowed",
                f"rollout {record.id} is {record.phase}: {word} does not apply; "
                + (f"it takes {', '.join(offered)}" if offered else "it takes no commands now"),
                phase=record.phase,
                allowed_commands=offered,
            )
        queued = await self.in_thread(self.store.pending_commands, record.id)
        twin = next((c for c in queued if c.kind == kind), None)
        if twin is not None:
            raise ApiError(
                409,
                "command_queued",
                f"rollout {record.id} already has this command queued (command {twin.id}); "
                "the engine applies it at its next look",
                phase=record.phase,
                allowed_commands=offered,
            )
        command = await self.in_thread(
            self.store.add_command, record.id, kind, payload, self.clock.now()
        )
        log.info("api.command_queued", rollout=record.id, kind=kind, command=command.id)
        self.poke(record.id)
        return CommandAccepted(command=command_view(command), rollout=self.view(record))

    async def readiness(self) -> Readiness:
        problems: dict[str, str] = {}
        if self.ready is not None:
            try:
                async with asyncio.timeout(_READY_TIMEOUT):
                    problems.update(await self.ready())
            except TimeoutError:
                problems["readiness"] = f"the readiness check took over {_READY_TIMEOUT:g} s"
            except Exception as exc:  # noqa: BLE001 -- a failing check means "not ready"
                problems["readiness"] = f"the readiness check failed: {exc}"
        try:
            await self.off_loop(self.store.ping)
        except StoreError as exc:
            problems["store"] = str(exc)
        return Readiness(
            status="not ready" if problems else "ready",
            problems=problems,
            owned=None if self.owned is None else self.owned(),
        )


def _rollout_routes(
    router: APIRouter, service: _Service, read_deps: list[Any], write_deps: list[Any]
) -> None:
    @router.post(
        "/rollouts",
        status_code=201,
        response_model=SubmittedRollout,
        dependencies=write_deps,
        summary="Submit a rollout plan",
        responses=_responses(400, 404, 409, 415, 502),
        openapi_extra=_body_doc(
            "Plan", media=tuple(sorted(JSON_TYPES | YAML_TYPES)), required=True
        ),
    )
    async def submit(request: Request, response: Response) -> SubmittedRollout:
        kind = media_type(request.headers.get("content-type"))
        if kind not in JSON_TYPES | YAML_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                "a plan is sent as application/json or application/yaml, not "
                f"{kind or 'a body without Content-Type'}",
            )
        stored, warnings = await service.submit(await request.body(), kind)
        response.headers["Location"] = f"{PREFIX}/rollouts/{stored.id}"
        return SubmittedRollout(**dict(service.view(stored)), warnings=warnings)

    @router.get(
        "/rollouts",
        response_model=RolloutPage,
        dependencies=read_deps,
        summary="List rollouts, newest first, a page at a time",
        description="Summaries by default (view=summary: read without the rollouts' history, "
        "cheap however long they ran); view=full gives whole rollout documents. When "
        "next_cursor is not null, pass it back as cursor (with the same filters) for the "
        "next page.",
        responses=_responses(),
    )
    async def list_rollouts(
        endpoint: Annotated[
            str | None, Query(max_length=200, description="Only this endpoint's rollouts.")
        ] = None,
        phase: Annotated[
            list[PhaseName] | None,
            Query(description="Only rollouts in these phases (repeat the parameter)."),
        ] = None,
        limit: Annotated[
            int, Query(ge=1, le=MAX_PAGE, description="At most this many on the page.")
        ] = 100,
        cursor: Annotated[
            str | None,
            Query(
                max_length=MAX_CURSOR_CHARS,
                description="next_cursor of the previous page (opaque); absent for the first.",
            ),
        ] = None,
        view: Annotated[
            Literal["summary", "full"],
            Query(description="summary (default): brief rollouts; full: whole documents."),
        ] = "summary",
    ) -> Response:
        after = None
        if cursor is not None:
            try:
                after = decode_cursor(cursor)
            except ValueError as exc:
                raise ApiError(
                    422,
                    "invalid_request",
                    str(exc),
                    details=[{"field": "cursor", "message": str(exc)}],
                ) from exc
        # One more than asked says whether a next page exists without a second query.
        summaries = await service.in_thread(
            service.store.list_summaries, phase, endpoint, limit + 1, after
        )
        more = len(summaries) > limit
        summaries = summaries[:limit]
        next_cursor = encode_cursor(summaries[-1].cursor) if more and summaries else None
        page: RolloutPage
        if view == "full":
            records = await service.in_thread(_records, service.store, [s.id for s in summaries])
            page = RolloutPage(
                rollouts=[service.view(r) for r in records], next_cursor=next_cursor
            )
        else:
            page = RolloutPage(
                rollouts=[summary_view(s) for s in summaries], next_cursor=next_cursor
            )
        # Built from typed models already: no second validation pass on the way out.
        return Response(page.model_dump_json(), media_type="application/json")

    @router.get(
        "/rollouts/{rollout_id:path}/events",
        response_model=EventList,
        dependencies=read_deps,
        summary="A rollout's event log",
        responses=_responses(404),
    )
    async def list_events(
        rollout_id: str,
        after: Annotated[
            int, Query(ge=0, le=2**53, description="Only events with a larger seq.")
        ] = 0,
    ) -> EventList:
        record = await service.load(rollout_id)
        events = await service.in_thread(service.store.events, record.id, after)
        return EventList(events=[event_view(e) for e in events])

    @router.get(
        "/rollouts/{rollout_id:path}/series",
        response_model=RolloutSeries,
        dependencies=read_deps,
        summary="A rollout's metric windows per arm and its split changes (for charts)",
        responses=_responses(404),
    )
    async def series(
        rollout_id: str,
        limit: Annotated[
            int,
            Query(ge=1, le=MAX_WINDOWS, description="At most this many windows, the newest."),
        ] = DEFAULT_WINDOWS,
    ) -> RolloutSeries:
        record = await service.load(rollout_id)
        events = await service.in_thread(service.store.events, record.id, 0)
        stored = await service.in_thread(service.store.windows, record.id, None)
        steps = await service.in_thread(service.store.step_summaries, record.id)
        # Windows with their histograms are read back from JSON: off the event loop.
        return await service.off_loop(
            functools.partial(
                series_view,
                record,
                events,
                limit=limit,
                windows=[w.data for w in stored],
                steps=[s.data for s in steps],
            )
        )

    # Last: an endpoint/name holds a slash, and "/events" or "/series" after it must
    # reach their own routes first.
    @router.get(
        "/rollouts/{rollout_id:path}",
        response_model=Rollout,
        dependencies=read_deps,
        summary="One rollout",
        responses=_responses(404),
    )
    async def get_rollout(rollout_id: str) -> Rollout:
        head, _, tail = rollout_id.rpartition("/")
        if head and tail in _COMMANDS:
            # A command's route read with GET, not a rollout named like a command.
            raise ApiError(
                405,
                "method_not_allowed",
                f"GET is not allowed on {PREFIX}/rollouts/{rollout_id}; allowed: POST",
                headers={"Allow": "POST"},
            )
        record = await service.load(rollout_id)
        view = service.view(record)
        if view.on_success is not None:
            move = await service.in_thread(service.store.alias_move, record.id)
            view = view.model_copy(update={"alias_move": alias_move_view(record, move)})
        return view


def _records(store: Store, ids: list[str]) -> list[RolloutRecord]:
    """The whole records of a page, in its order (one store call per rollout, one thread)."""
    return [store.get(rollout_id) for rollout_id in ids]


def _command_routes(router: APIRouter, service: _Service, write_deps: list[Any]) -> None:
    common: dict[str, Any] = {
        "status_code": 202,
        "response_model": CommandAccepted,
        "dependencies": write_deps,
        "responses": _responses(400, 404, 409, 415),
    }

    def body(schema: type[BaseModel]) -> dict[str, Any]:
        return _body_doc(schema.__name__, media=("application/json",), required=False)

    @router.post(
        "/rollouts/{rollout_id:path}/pause",
        summary="Hold the rollout at its current step",
        openapi_extra=body(ReasonBody),
        **common,
    )
    async def pause(request: Request, rollout_id: str) -> CommandAccepted:
        return await service.queue(request, rollout_id, ReasonBody, "pause")

    @router.post(
        "/rollouts/{rollout_id:path}/resume",
        summary="Resume a paused rollout (re-asserting its current step)",
        openapi_extra=body(EmptyBody),
        **common,
    )
    async def resume(request: Request, rollout_id: str) -> CommandAccepted:
        return await service.queue(request, rollout_id, EmptyBody, "resume")

    @router.post(
        "/rollouts/{rollout_id:path}/promote",
        summary="Skip to the next step, or with full=true straight to 100 %",
        openapi_extra=body(PromoteBody),
        **common,
    )
    async def promote(request: Request, rollout_id: str) -> CommandAccepted:
        return await service.queue(request, rollout_id, PromoteBody, "promote")

    @router.post(
        "/rollouts/{rollout_id:path}/abort",
        summary="Roll back to the baseline and end the rollout as aborted",
        openapi_extra=body(ReasonBody),
        **common,
    )
    async def abort(request: Request, rollout_id: str) -> CommandAccepted:
        return await service.queue(request, rollout_id, ReasonBody, "abort")


def _monitoring_routes(app: FastAPI, service: _Service) -> None:
    @app.get("/healthz", response_model=Health, summary="The process answers", tags=["monitoring"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        summary="Ready to work: the daemon's checks and the store",
        tags=["monitoring"],
        responses={503: {"model": Readiness, "description": "Not ready; problems say why."}},
    )
    async def readyz() -> Response:
        readiness = await service.readiness()
        status = 200 if readiness.status == "ready" else 503
        # "owned" only where there is ownership to show (a daemon, not a bare API).
        return JSONResponse(readiness.model_dump(exclude_none=True), status_code=status)

    @app.get(
        "/metrics",
        summary="The controller's metrics, Prometheus text format",
        tags=["monitoring"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        # Prometheus text by default, OpenMetrics when the scraper asks for it. Collectors
        # read the store at scrape time: keep that off the event loop.
        text, content_type = await service.off_loop(
            expose, service.registry, service.rendered, request.headers.get("accept", "")
        )
        return Response(text, headers={"Content-Type": content_type})


def _rollout_active(endpoint: str, active_id: str | None) -> ApiError:
    held = f" by rollout {active_id}" if active_id else ""
    return ApiError(
        409,
        "rollout_active",
        f"endpoint {endpoint!r} is held{held}: one active rollout per endpoint; "
        "wait for it to finish or abort it",
        active_rollout=active_id,
    )


# Module level: FastAPI resolves the dependency's annotations in this module's namespace.
_bearer = HTTPBearer(
    auto_error=False,
    description="A token from ROLLOUT_API_TOKENS; viewer reads, operator also acts.",
)


def _require(tokens: TokenTable, needed: Role) -> Callable[..., Awaitable[Role]]:
    """A dependency that lets through a token of at least ``needed`` and yields its role."""

    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Role:
        role = tokens.role_of(credentials.credentials) if credentials is not None else None
        if role is None:
            raise ApiError(
                401,
                "unauthenticated",
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not allows(role, needed):
            raise ApiError(403, "forbidden", f"{needed} role required")
        return role

    return check


def _auth_dependencies(tokens: TokenTable) -> tuple[list[Any], list[Any]]:
    """Route dependencies for reading and for acting; none at all for an open API."""
    if not tokens:
        return [], []
    return [Depends(_require(tokens, "viewer"))], [Depends(_require(tokens, "operator"))]


async def _same_site(request: Request) -> None:
    """Refuse a state-changing request a page on another origin could have sent."""
    problem = cross_site_refusal(request.method, request.headers)
    if problem is not None:
        raise problem


async def _open_api() -> None:
    """The caller of an open API: nobody in particular."""


def _session_route(router: APIRouter, tokens: TokenTable) -> None:
    """``GET /session``: the role of the caller's token, checked as every read checks it."""
    # An open API checks nothing and declares no security; anyone who reaches it (loopback
    # only, see check_bind) may act. The dependency is made here, so the parameter takes it as
    # its default: an annotation could not name it (FastAPI resolves annotations in the
    # module's namespace).
    caller = Depends(_require(tokens, "viewer") if tokens else _open_api)

    @router.get(
        "/session",
        response_model=Session,
        summary="The caller's role (what the presented token may do)",
        # It reads no store and takes no parameters: of the common errors, only these apply.
        responses={status: _ERRORS[status] for status in (401, 413)},
    )
    async def session(role: Role | None = caller) -> Session:
        if role is None:
            return Session(role="operator", auth=False)
        return Session(role=role, auth=True)


def _one(ref: str, found: list[RolloutRecord], none: str) -> RolloutRecord:
    if not found:
        raise ApiError(404, "rollout_not_found", none)
    if len(found) > 1:
        shown = found[:_CANDIDATES_SHOWN]
        more = len(found) - len(shown)
        listed = ", ".join(f"{r.id} ({r.endpoint}, {r.phase})" for r in shown)
        raise ApiError(
            409,
            "ambiguous_rollout",
            f"{ref!r} names {len(found)} rollouts: {listed}"
            + (f" and {more} more" if more else "")
            + "; give more of the id",
            candidates=[r.id for r in found],
        )
    return found[0]


def _command_names(kinds: Iterable[str]) -> list[str]:
    """Commands as the API and CLI name them: ``promote_full`` is ``promote`` with full."""
    names: list[str] = []
    for kind in kinds:
        name = "promote" if kind == "promote_full" else kind
        if name not in names:
            names.append(name)
    return names


def _checked_id(rollout_id: str) -> str:
    if not _ID.fullmatch(rollout_id):
        raise ApiError(404, "rollout_not_found", f"no rollout has the id {rollout_id!r}")
    return rollout_id


def _invalid_plan(exc: PlanError) -> ApiError:
    details = [{"field": issue.field, "message": issue.message} for issue in exc.issues]
    if isinstance(exc, PlanTooLargeError):
        return ApiError(413, "plan_too_large", details[0]["message"], details=details)
    count = len(details)
    return ApiError(
        422,
        "invalid_plan",
        f"the plan is invalid ({count} problem{'s' if count != 1 else ''}): "
        + "; ".join(f"{d['field']}: {d['message']}" for d in details),
        details=details,
    )


def _command_body(request: Request, body: bytes, model: type[BaseModel]) -> BaseModel:
    if body.strip():
        kind = media_type(request.headers.get("content-type"))
        if kind not in JSON_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"a command body is application/json, not {kind or 'untyped'}",
            )
    try:
        data = parse_json_object(body)
    except PlanError as exc:
        details = [{"field": issue.field, "message": issue.message} for issue in exc.issues]
        raise ApiError(
            422,
            "invalid_request",
            "invalid command body: "
            + "; ".join(f"{d['field']}: {d['message']}" for d in details),
            details=details,
        ) from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = field_issues(exc.errors())
        raise ApiError(
            422,
            "invalid_request",
            "invalid command body: "
            + "; ".join(f"{d['field']}: {d['message']}" for d in details),
            details=details,
        ) from exc
