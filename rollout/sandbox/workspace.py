"""The sandbox workspace's state: endpoints, their update lifecycle, traffic, auth, faults.

The sandbox is the fake Databricks workspace behind the serving client; ``rollout.sandbox.app``
is its HTTP face and this module its memory. Everything here is derived LAZILY from the injected
``Clock``: no background task moves an update along or closes a metrics window. Every call first
settles whatever the clock says has finished (an update whose duration has elapsed), so a
``FakeClock`` jump of an hour is observed exactly as an hour of real time would have been.

Metrics windows are ``[k*W, (k+1)*W)`` of clock time. The traffic of a closed window is
simulated on demand from an rng seeded by ``(seed, endpoint, k)``, using the live-state segments
(split, load, profiles, realism settings, when each entity last scaled up) that overlapped the
window, plus the real invocations that arrived in it; ``rollout.sandbox.realism`` supplies what
varies by window (hiccups, overdispersion, incidents, the daily cycle) and how export-metrics
delivers it (late, missing, duplicated, revised windows; counters that reset). Windows are
independent of each other and of the order they are read in, so the result is the same as
simulating every window as it closes.

Thread safety: uvicorn runs handlers on its loop while tests poke the workspace from their own
thread; one re-entrant lock guards all state and no method blocks while holding it.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rollout.clock import Clock, FakeClock, SystemClock
from rollout.sandbox.governance import Governance, not_found_id, permission_levels
from rollout.sandbox.models import (
    NAME_PATTERN,
    PERMISSIONS,
    ApiError,
    ConfigSpec,
    EntityProfile,
    EntitySpec,
    Permission,
    invalid,
)
from rollout.sandbox.realism import (
    NO_REALISM,
    CounterExport,
    EndpointRealism,
    entity_conditions,
    partial_counts,
    substream,
    window_conditions,
    window_environment,
)
from rollout.sandbox.registry import ModelRegistry
from rollout.sandbox.traffic import (
    EntityGauges,
    ExportBlock,
    WindowCounts,
    estimate_gauges,
    is_cold,
    render_export_windows,
    sample_latency_ms,
    sample_queue_ms,
    simulate_window,
)

# How many API requests the request log keeps (GET /_sandbox/v1/requests).
REQUEST_LOG_SIZE = 2000
DEFAULT_TOKEN = "dapi-sandbox-token"  # noqa: S105 -- a fixed, documented fake credential
DEFAULT_CLIENT_ID = "sandbox-client"
DEFAULT_CLIENT_SECRET = "sandbox-secret"  # noqa: S105 -- a fixed, documented fake credential
CREATOR = "sandbox-user@example.com"
DEFAULT_PROFILE = EntityProfile()
_WINDOW_CACHE_SIZE = 64
_REAL_WINDOWS_KEPT = 10_000
# Counters not read for longer than this (in windows) start again rather than replay the gap.
_COUNTER_REPLAY_WINDOWS = 1440

UpdateKind = Literal["create", "update", "start"]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def not_found(name: str) -> ApiError:
    return ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Serving endpoint with name {name} not found")


@dataclass(frozen=True)
class ServingConfig:
    """A config with its version: what ``config`` (or ``pending_config``) describes."""

    version: int
    spec: ConfigSpec


@dataclass
class PendingUpdate:
    config: ServingConfig
    kind: UpdateKind
    start_time: float
    ends_at: float
    forced_failure: bool
    deployed: tuple[str, ...]  # entities this update builds (new or changed)


@dataclass(frozen=True)
class LiveSegment:
    """What was true from ``start`` until the next segment: the basis of simulated traffic."""

    start: float
    split: Mapping[str, int] | None  # None: nothing serving (no config yet, or stopped)
    qps: float
    profiles: Mapping[str, EntityProfile]
    appeared: Mapping[str, float]
    concurrency: Mapping[str, float]
    # When each entity last started or scaled up: its cold windows count from there.
    warmed: Mapping[str, float] = field(default_factory=dict)
    realism: EndpointRealism = NO_REALISM
    gpu: frozenset[str] = frozenset()  # entities on a GPU workload type


@dataclass
class Endpoint:
    name: str
    id: str
    created: float
    last_updated: float
    qps: float
    config: ServingConfig | None = None
    pending: PendingUpdate | None = None
    update_state: str = "NOT_UPDATING"
    stopped: bool = False
    description: str | None = None
    route_optimized: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, EntityProfile] = field(default_factory=dict)
    update_seconds: float | None = None
    fail_next: int = 0
    build_logs: dict[str, list[str]] = field(default_factory=dict)
    appeared: dict[str, float] = field(default_factory=dict)
    warmed: dict[str, float] = field(default_factory=dict)
    realism: EndpointRealism = NO_REALISM
    counters: CounterExport | None = None
    segments: list[LiveSegment] = field(default_factory=list)
    real: dict[int, dict[str, WindowCounts]] = field(default_factory=dict)
    window_cache: dict[int, dict[str, WindowCounts]] = field(default_factory=dict)
    invocations: dict[str, int] = field(default_factory=dict)
    governance: Governance = field(default_factory=Governance)
    # Every PUT config received, in arrival order, with what became of it (admin config-log).
    put_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def serving(self) -> bool:
        return self.config is not None and not self.stopped


@dataclass
class TokenInfo:
    permission: Permission
    expires_at: float | None
    oauth: bool = False


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    lifetime: float
    permission: Permission


@dataclass
class Fault:
    id: str
    status: int
    rate: float
    remaining: int | None
    retry_after: int | None
    delay: float
    pattern: re.Pattern[str]
    methods: frozenset[str] | None
    served: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "rate": self.rate,
            "remaining": self.remaining,
            "retry_after_seconds": self.retry_after,
            "delay_seconds": self.delay,
            "path_pattern": self.pattern.pattern,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "served": self.served,
        }


@dataclass(frozen=True)
class FaultHit:
    """A fault that fired for one request: how long to stall, what to answer (0 = pass on)."""

    status: int
    delay: float
    retry_after: int | None


FAULT_ERRORS: Mapping[int, tuple[str, str]] = {
    429: ("REQUEST_LIMIT_EXCEEDED", "Too many requests. Please wait and retry."),
    500: ("INTERNAL_ERROR", "An internal error occurred. Please retry."),
    503: ("TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable. Please retry."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please retry."),
}


@dataclass
class Stats:
    requests: int = 0
    invocations: int = 0
    config_updates: int = 0
    faults_served: int = 0
    oauth_tokens_issued: int = 0
    auth_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Invocation:
    """The outcome of one real invocation: who answered and with what status."""

    entity: str
    status: int
    latency_ms: float


class Workspace:
    """An in-memory Databricks workspace, driven by a ``Clock``.

    ``seed`` makes simulated traffic, routing of real invocations and fault draws repeatable;
    ``window_seconds`` is the export-metrics window; ``update_seconds`` how long a config update
    stays IN_PROGRESS unless an endpoint says otherwise.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        seed: int = 0,
        window_seconds: float = 60.0,
        update_seconds: float = 5.0,
        token: str = DEFAULT_TOKEN,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        oauth_token_lifetime: float = 3600.0,
    ) -> None:
        if not (window_seconds > 0 and math.isfinite(window_seconds)):
            raise ValueError("window_seconds must be a positive number")
        if not (update_seconds >= 0 and math.isfinite(update_seconds)):
            raise ValueError("update_seconds must be a non-negative number")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.seed = seed
        self.window_seconds = float(window_seconds)
        self.update_seconds = float(update_seconds)
        self.default_token = token
        self._defaults = (client_id, client_secret, oauth_token_lifetime)
        self._lock = threading.RLock()
        self._init_state()

    def _init_state(self) -> None:
        client_id, client_secret, lifetime = self._defaults
        self.endpoints: dict[str, Endpoint] = {}
        self.tokens: dict[str, TokenInfo] = {self.default_token: TokenInfo("CAN_MANAGE", None)}
        self.oauth_clients: dict[str, OAuthClient] = {
            client_id: OAuthClient(client_id, client_secret, lifetime, "CAN_MANAGE")
        }
        self.faults: list[Fault] = []
        self.registry = ModelRegistry()
        self.stats = Stats()
        # The last REQUEST_LOG_SIZE API requests (admin calls excluded), oldest first.
        self.request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._rng = random.Random(f"{self.seed}:invocations")
        self._fault_rng = random.Random(f"{self.seed}:faults")

    def reset(self, clock: Clock | None = None) -> None:
        """Forget everything but the constructor's settings.

        The clock keeps its time unless a new one is given (test fixtures reuse one server and
        hand each test a fresh ``FakeClock``).
        """
        with self._lock:
            if clock is not None:
                self.clock = clock
            self._init_state()

    # ---------------------------------------------------------------------------------------
    # Time.

    def now(self) -> float:
        return self.clock.now()

    def advance_clock(self, seconds: float) -> float:
        """Move a ``FakeClock`` forward; a real clock cannot be moved (409)."""
        with self._lock:
            if not isinstance(self.clock, FakeClock):
                raise ApiError(409, "INVALID_STATE",
                               "The sandbox runs on the system clock; only a fake clock can be "
                               "advanced.")
            self.clock.advance(seconds)
            return self.clock.now()

    def _window_index(self, t: float) -> int:
        return math.floor(t / self.window_seconds)

    # ---------------------------------------------------------------------------------------
    # Auth.

    def authenticate(self, token: str | None) -> Permission:
        """The permission of a bearer token; 401 when missing, unknown or expired."""
        with self._lock:
            if not token:
                self.stats.auth_failures += 1
                raise ApiError(401, "UNAUTHENTICATED",
                               "Credential was not sent or was of an unsupported type for this "
                               "API.")
            info = self.tokens.get(token)
            if info is None:
                self.stats.auth_failures += 1
                raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
            if info.expires_at is not None and self.now() >= info.expires_at:
                self.stats.auth_failures += 1
                raise ApiError(401, "UNAUTHENTICATED", "Access token has expired.")
            return info.permission

    @staticmethod
    def require(permission: Permission, needed: Permission, action: str) -> None:
        if PERMISSIONS.index(permission) < PERMISSIONS.index(needed):
            raise ApiError(403, "PERMISSION_DENIED",
                           f"Permission {needed} is required to {action}; the caller has "
                           f"{permission}.")

    def authenticate_oauth(self, token: str | None) -> Permission:
        """Like ``authenticate``, for a route-optimized URL: OAuth tokens issued here only."""
        permission = self.authenticate(token)
        with self._lock:
            info = self.tokens.get(token or "")
            if info is None or not info.oauth:
                self.stats.auth_failures += 1
                raise ApiError(401, "UNAUTHENTICATED",
                               "Personal access tokens are not supported for route-optimized "
                               "endpoints; authenticate with an OAuth token.")
        return permission

    def revoke_tokens(self, token: str | None = None, *, oauth: bool = False) -> int:
        """Revoke one token, or every OAuth token issued so far; returns how many."""
        with self._lock:
            doomed = [t for t, info in self.tokens.items()
                      if t == token or (oauth and info.oauth)]
            for t in doomed:
                del self.tokens[t]
            return len(doomed)

    def add_token(self, token: str, permission: Permission,
                  expires_in: float | None = None) -> None:
        with self._lock:
            expires_at = None if expires_in is None else self.now() + expires_in
            self.tokens[token] = TokenInfo(permission, expires_at)

    def add_oauth_client(self, client_id: str, client_secret: str, lifetime: float,
                         permission: Permission = "CAN_MANAGE") -> None:
        with self._lock:
            self.oauth_clients[client_id] = OAuthClient(client_id, client_secret, lifetime,
                                                        permission)

    def issue_oauth_token(self, client_id: str, client_secret: str) -> tuple[str, int]:
        """An access token for valid client credentials: (token, lifetime in seconds)."""
        with self._lock:
            client = self.oauth_clients.get(client_id)
            if client is None or not secrets.compare_digest(client.client_secret,
                                                            client_secret):
                raise ApiError(401, "invalid_client", "Client authentication failed.")
            token = "sbx-oauth-" + secrets.token_urlsafe(24)
            self.tokens[token] = TokenInfo(client.permission, self.now() + client.lifetime,
                                           oauth=True)
            self.stats.oauth_tokens_issued += 1
            return token, max(1, round(client.lifetime))

    # ---------------------------------------------------------------------------------------
    # Faults and stats.

    def count_request(self, method: str = "", path: str = "", host: str = "",
                      authorization: str | None = None) -> None:
        """Count one API request and log it: method, path, host and which credential it bore."""
        with self._lock:
            self.stats.requests += 1
            self.request_log.append({"method": method, "path": path, "host": host,
                                     "credential": self._credential_kind(authorization)})

    def _credential_kind(self, authorization: str | None) -> str:
        """none, basic, pat (a token added as a PAT), oauth (issued here), unknown."""
        scheme, _, value = (authorization or "").partition(" ")
        if not value.strip():
            return "none"
        if scheme.lower() == "basic":
            return "basic"
        info = self.tokens.get(value.strip())
        if info is None:
            return "unknown"
        return "oauth" if info.oauth else "pat"

    def requests_logged(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.request_log)

    def add_fault(self, *, status: int, rate: float, count: int | None,
                  retry_after: int | None, delay: float, path_pattern: str,
                  methods: list[str] | None) -> Fault:
        try:
            pattern = re.compile(path_pattern)
        except re.error as exc:
            raise invalid(f"Invalid path_pattern {path_pattern!r}: {exc}") from exc
        with self._lock:
            fault = Fault(
                id=uuid.uuid4().hex[:12],
                status=status,
                rate=rate,
                remaining=count,
                retry_after=retry_after,
                delay=delay,
                pattern=pattern,
                methods=None if methods is None else frozenset(m.upper() for m in methods),
            )
            self.faults.append(fault)
            return fault

    def list_faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self.faults]

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def remove_fault(self, fault_id: str) -> None:
        with self._lock:
            before = len(self.faults)
            self.faults = [f for f in self.faults if f.id != fault_id]
            if len(self.faults) == before:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Fault {fault_id} not found")

    def draw_fault(self, method: str, path: str) -> FaultHit | None:
        """The first matching fault that fires for this request, if any (and count it)."""
        with self._lock:
            for fault in self.faults:
                if fault.remaining == 0:
                    continue
                if fault.methods is not None and method.upper() not in fault.methods:
                    continue
                if not fault.pattern.search(path):
                    continue
                if fault.rate < 1.0 and self._fault_rng.random() >= fault.rate:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                fault.served += 1
                self.stats.faults_served += 1
                return FaultHit(fault.status, fault.delay, fault.retry_after)
            return None

    def stats_dict(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = self.stats.as_dict()
            out["endpoints"] = len(self.endpoints)
            out["now"] = self.now()
            return out

    # ---------------------------------------------------------------------------------------
    # Endpoint lifecycle.

    def _get(self, name: str) -> Endpoint:
        ep = self.endpoints.get(name)
        if ep is None:
            raise not_found(name)
        self._settle(ep)
        return ep

    def _duration(self, ep: Endpoint) -> float:
        return self.update_seconds if ep.update_seconds is None else ep.update_seconds

    def _profile(self, ep: Endpoint, entity: str) -> EntityProfile:
        return ep.profiles.get(entity, DEFAULT_PROFILE)

    def _record_segment(self, ep: Endpoint, t: float) -> None:
        spec = ep.config.spec if ep.config is not None else None
        segment = LiveSegment(
            start=t,
            split=spec.split if (spec is not None and not ep.stopped) else None,
            qps=ep.qps,
            profiles=dict(ep.profiles),
            appeared=dict(ep.appeared),
            concurrency={e.name: e.provisioned_concurrency for e in spec.entities}
            if spec is not None else {},
            warmed=dict(ep.warmed),
            realism=ep.realism,
            gpu=frozenset(
                e.name for e in spec.entities
                if str(e.fields.get("workload_type") or "").startswith("GPU")
            ) if spec is not None else frozenset(),
        )
        if ep.segments and ep.segments[-1].start >= t:
            ep.segments[-1] = segment
        else:
            ep.segments.append(segment)

    def _settle(self, ep: Endpoint) -> None:
        """Finish the pending update if the clock says its time has come."""
        pending = ep.pending
        if pending is None or self.now() < pending.ends_at:
            return
        t = pending.ends_at
        ep.pending = None
        ep.last_updated = t
        culprit = next(
            (e for e in pending.deployed if self._profile(ep, e).fail_build), None
        )
        if culprit is not None or pending.forced_failure:
            ep.update_state = "UPDATE_FAILED"
            blame = culprit or (pending.deployed[0] if pending.deployed
                                else pending.config.spec.entities[0].name)
            reason = (
                "the model's container image failed to build (the entity's sandbox profile "
                "sets fail_build)"
                if culprit is not None
                else "the deployment failed (an update failure injected through the sandbox "
                "admin API)"
            )
            ep.build_logs.setdefault(blame, []).extend([
                f"{_stamp(t)} ERROR Served entity {blame}: {reason}.",
                (
                    f"{_stamp(t)} ERROR Update to config version {pending.config.version} of "
                    f"endpoint {ep.name} failed; the previous config keeps serving."
                ),
            ])
            self._record_segment(ep, t)
            return
        previous = ep.config.spec if ep.config is not None else None
        ep.config = pending.config
        ep.update_state = "NOT_UPDATING"
        if pending.kind == "start":
            ep.stopped = False
        appeared: dict[str, float] = {}
        for spec in pending.config.spec.entities:
            old = previous.entity(spec.name) if previous is not None else None
            keep = old is not None and old.same_deployment(spec) and spec.name in ep.appeared
            appeared[spec.name] = ep.appeared[spec.name] if keep else t
        if pending.kind == "start":
            # A started endpoint comes back on fresh replicas: everything is cold again.
            appeared = {e.name: t for e in pending.config.spec.entities}
        ep.appeared = appeared
        ep.warmed = _scaled_up(ep.warmed, appeared, previous.split if previous else {},
                               pending.config.spec.split, t)
        for name in pending.deployed:
            ep.build_logs.setdefault(name, []).append(
                f"{_stamp(t)} INFO Served entity {name} is ready (config version "
                f"{pending.config.version})."
            )
        self._record_segment(ep, t)

    def _start_update(self, ep: Endpoint, spec: ConfigSpec, kind: UpdateKind) -> None:
        now = self.now()
        version = (ep.config.version if ep.config is not None else 0) + 1
        previous = ep.config.spec if ep.config is not None else None
        if kind == "start":
            deployed: tuple[str, ...] = ()
        else:
            deployed = tuple(
                e.name for e in spec.entities
                if previous is None
                or (old := previous.entity(e.name)) is None
                or not old.same_deployment(e)
            )
        forced = False
        if ep.fail_next > 0:
            ep.fail_next -= 1
            forced = True
        ep.pending = PendingUpdate(
            config=ServingConfig(version, spec),
            kind=kind,
            start_time=now,
            ends_at=now + self._duration(ep),
            forced_failure=forced,
            deployed=deployed,
        )
        ep.last_updated = now
        for name in deployed:
            ep.build_logs[name] = [
                f"{_stamp(now)} INFO Building container image for served entity {name}.",
                f"{_stamp(now)} INFO Installing the model's dependencies.",
            ]
        self.stats.config_updates += 1

    def create_endpoint(
        self,
        name: str,
        spec: ConfigSpec | None,
        *,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
        route_optimized: bool = False,
        ready: bool = False,
        profiles: Mapping[str, EntityProfile] | None = None,
        qps: float = 0.0,
        realism: EndpointRealism | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create an endpoint: through the update lifecycle, or ``ready`` at once (admin).

        ``extras`` is the rest of a public create body: AI gateway, rate limits, email
        notifications, budget policy (``Governance.at_creation``).
        """
        governance = Governance.at_creation(CREATOR, dict(extras or {}))
        if not NAME_PATTERN.match(name):
            raise invalid(f"Invalid endpoint name '{name}': use 1 to 63 letters, digits, '-' "
                          "or '_'.")
        with self._lock:
            if name in self.endpoints:
                raise ApiError(409, "RESOURCE_ALREADY_EXISTS",
                               f"Serving endpoint with name {name} already exists")
            now = self.now()
            ep = Endpoint(
                name=name,
                id=uuid.uuid4().hex,
                created=now,
                last_updated=now,
                qps=qps,
                description=description,
                route_optimized=route_optimized,
                tags=dict(tags or {}),
                profiles=dict(profiles or {}),
                realism=realism or NO_REALISM,
                governance=governance,
            )
            self.endpoints[name] = ep
            if spec is not None:
                if ready:
                    ep.config = ServingConfig(1, spec)
                    ep.appeared = {e.name: now for e in spec.entities}
                    ep.warmed = dict(ep.appeared)
                    for e in spec.entities:
                        ready_line = f"{_stamp(now)} INFO Served entity {e.name} is ready"
                        ep.build_logs[e.name] = [ready_line + " (config version 1)."]
                else:
                    self._start_update(ep, spec, "create")
            self._record_segment(ep, now)
            return self._describe(ep, "CAN_MANAGE")

    def delete_endpoint(self, name: str) -> None:
        with self._lock:
            self._get(name)
            del self.endpoints[name]

    def update_config(self, name: str, spec: ConfigSpec) -> dict[str, Any]:
        with self._lock:
            ep = self._get(name)
            entry: dict[str, Any] = {
                "at": self.now(),
                "entities": sorted(e.name for e in spec.entities),
                "split": spec.split,
            }
            ep.put_log.append(entry)
            if ep.pending is not None:
                entry["outcome"] = "conflict"
                raise ApiError(
                    409, "RESOURCE_CONFLICT",
                    f"Endpoint {name} is currently updating. Wait for the update to complete "
                    "before updating its config.",
                )
            if ep.stopped:
                entry["outcome"] = "stopped"
                raise ApiError(400, "INVALID_STATE",
                               f"Endpoint {name} is stopped. Start it before updating its "
                               "config.")
            self._start_update(ep, spec, "update")
            entry["outcome"] = "accepted"
            entry["config_version"] = ep.pending.config.version if ep.pending else None
            return self._describe(ep, "CAN_MANAGE")

    def config_log(self, name: str) -> list[dict[str, Any]]:
        """Every PUT config the endpoint received, oldest first (admin)."""
        with self._lock:
            return [dict(entry) for entry in self._get(name).put_log]

    def stop(self, name: str) -> dict[str, Any]:
        with self._lock:
            ep = self._get(name)
            if ep.pending is not None:
                raise ApiError(409, "RESOURCE_CONFLICT",
                               f"Endpoint {name} is currently updating. Wait for the update to "
                               "complete before stopping it.")
            if ep.config is None:
                raise ApiError(400, "INVALID_STATE",
                               f"Endpoint {name} has no config to stop.")
            if not ep.stopped:
                ep.stopped = True
                ep.last_updated = self.now()
                self._record_segment(ep, self.now())
            return self._describe(ep, "CAN_MANAGE")

    def start(self, name: str) -> dict[str, Any]:
        with self._lock:
            ep = self._get(name)
            if ep.pending is not None:
                raise ApiError(409, "RESOURCE_CONFLICT",
                               f"Endpoint {name} is currently updating. Wait for the update to "
                               "complete before starting it.")
            if not ep.stopped or ep.config is None:
                raise ApiError(400, "INVALID_STATE", f"Endpoint {name} is not stopped.")
            self._start_update(ep, ep.config.spec, "start")
            return self._describe(ep, "CAN_MANAGE")

    # ---------------------------------------------------------------------------------------
    # Governance: AI gateway, rate limits, notifications, permissions (kept, not enforced).

    def put_rate_limits(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._get(name).governance.put_rate_limits(body)

    def put_ai_gateway(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._get(name).governance.put_ai_gateway(body)

    def patch_notifications(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            answer = self._get(name).governance.patch_notifications(body)
            return {"name": name, **answer}

    def _by_id(self, endpoint_id: str) -> Endpoint:
        for ep in self.endpoints.values():
            if ep.id == endpoint_id:
                return ep
        raise not_found_id(endpoint_id)

    def get_permissions(self, endpoint_id: str) -> dict[str, Any]:
        with self._lock:
            return self._by_id(endpoint_id).governance.permissions(endpoint_id)

    def set_permissions(self, endpoint_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            governance = self._by_id(endpoint_id).governance
            governance.set_permissions(body, CREATOR)
            return governance.permissions(endpoint_id)

    def update_permissions(self, endpoint_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            governance = self._by_id(endpoint_id).governance
            governance.update_permissions(body)
            return governance.permissions(endpoint_id)

    def permission_levels(self, endpoint_id: str) -> dict[str, Any]:
        with self._lock:
            self._by_id(endpoint_id)
            return permission_levels()

    def patch_tags(
        self, name: str, add: Mapping[str, str], delete: list[str]
    ) -> list[dict[str, str]]:
        with self._lock:
            ep = self._get(name)
            for key in delete:
                ep.tags.pop(key, None)
            ep.tags.update(add)
            return _tags(ep.tags)

    # ---------------------------------------------------------------------------------------
    # Admin knobs.

    def set_profile(self, name: str, entity: str, profile: EntityProfile) -> None:
        if not NAME_PATTERN.match(entity):
            raise invalid(f"Invalid served entity name '{entity}'.")
        with self._lock:
            ep = self._get(name)
            ep.profiles[entity] = profile
            self._record_segment(ep, self.now())

    def get_profile(self, name: str, entity: str) -> EntityProfile:
        with self._lock:
            return self._profile(self._get(name), entity)

    def set_qps(self, name: str, qps: float) -> None:
        with self._lock:
            ep = self._get(name)
            if ep.qps == 0.0 < qps and ep.config is not None:
                # Load coming back from nothing: scale-to-zero entities start cold replicas.
                now = self.now()
                for spec in ep.config.spec.entities:
                    if spec.fields.get("scale_to_zero_enabled") is True:
                        ep.warmed[spec.name] = now
            ep.qps = qps
            self._record_segment(ep, self.now())

    def set_realism(self, name: str, realism: EndpointRealism) -> None:
        """Replace the endpoint's traffic beyond its profiles (from now on)."""
        with self._lock:
            ep = self._get(name)
            if realism.exposition != ep.realism.exposition:
                ep.counters = None
            ep.realism = realism
            self._record_segment(ep, self.now())

    def get_realism(self, name: str) -> EndpointRealism:
        with self._lock:
            return self._get(name).realism

    def set_updates(
        self, name: str, duration: float | None, fail_next: int | None
    ) -> dict[str, Any]:
        with self._lock:
            ep = self._get(name)
            if duration is not None:
                ep.update_seconds = duration
            if fail_next is not None:
                ep.fail_next = fail_next
            return {"duration_seconds": self._duration(ep), "fail_next": ep.fail_next}

    def admin_view(self, name: str) -> dict[str, Any]:
        with self._lock:
            ep = self._get(name)
            return {
                "name": ep.name,
                "qps": ep.qps,
                "update": {"duration_seconds": self._duration(ep), "fail_next": ep.fail_next},
                "profiles": {k: v.model_dump() for k, v in sorted(ep.profiles.items())},
                "realism": ep.realism.model_dump(),
                "invocations": dict(sorted(ep.invocations.items())),
                "stopped": ep.stopped,
                "window_seconds": self.window_seconds,
                "last_closed_window_start_ms": _ms(
                    (self._window_index(self.now()) - 1) * self.window_seconds
                ),
            }

    # ---------------------------------------------------------------------------------------
    # Reads.

    def get_endpoint(self, name: str, permission: Permission) -> dict[str, Any]:
        with self._lock:
            return self._describe(self._get(name), permission)

    def list_endpoints(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for name in sorted(self.endpoints):
                ep = self._get(name)
                item: dict[str, Any] = {
                    "name": ep.name,
                    "id": ep.id,
                    "creator": CREATOR,
                    "creation_timestamp": _ms(ep.created),
                    "last_updated_timestamp": _ms(ep.last_updated),
                    "state": self._state(ep),
                }
                if ep.config is not None:
                    item["config"] = _summary(ep.config.spec)
                if ep.tags:
                    item["tags"] = _tags(ep.tags)
                if ep.description:
                    item["description"] = ep.description
                out.append(item)
            return out

    def _state(self, ep: Endpoint) -> dict[str, str]:
        return {
            "ready": "READY" if ep.serving else "NOT_READY",
            "config_update": "IN_PROGRESS" if ep.pending is not None else ep.update_state,
        }

    def _describe(self, ep: Endpoint, permission: Permission) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": ep.name,
            "id": ep.id,
            "creator": CREATOR,
            "creation_timestamp": _ms(ep.created),
            "last_updated_timestamp": _ms(ep.last_updated),
            "state": self._state(ep),
            "permission_level": permission,
            "route_optimized": ep.route_optimized,
        }
        if ep.config is not None:
            out["config"] = self._config_json(ep, ep.config, pending=None)
        if ep.pending is not None:
            pending_json = self._config_json(ep, ep.pending.config, pending=ep.pending)
            pending_json["start_time"] = _ms(ep.pending.start_time)
            out["pending_config"] = pending_json
        if ep.tags:
            out["tags"] = _tags(ep.tags)
        if ep.description:
            out["description"] = ep.description
        ep.governance.describe_into(out)
        return _sparse(out) if ep.realism.sparse_json else out

    def _config_json(self, ep: Endpoint, config: ServingConfig,
                     pending: PendingUpdate | None) -> dict[str, Any]:
        spec = config.spec
        entities = []
        for e in spec.entities:
            creating = pending is not None and e.name in pending.deployed
            if creating:
                state = {"deployment": "DEPLOYMENT_CREATING",
                         "deployment_state_message": "Creating the served entity."}
            elif ep.stopped and pending is None:
                state = {"deployment": "DEPLOYMENT_ABORTED",
                         "deployment_state_message": "The endpoint is stopped."}
            else:
                state = {"deployment": "DEPLOYMENT_READY",
                         "deployment_state_message": "Served entity is ready."}
            created = ep.appeared.get(e.name, pending.start_time if pending else ep.created)
            entities.append({
                **_echo(e.fields),
                "state": state,
                "creator": CREATOR,
                "creation_timestamp": _ms(created),
            })
        out: dict[str, Any] = {
            "config_version": config.version,
            "traffic_config": {
                "routes": [
                    {"served_model_name": n, "served_entity_name": n, "traffic_percentage": p}
                    for n, p in spec.routes
                ]
            },
        }
        out["served_models" if spec.legacy_served_models else "served_entities"] = entities
        if spec.auto_capture_config is not None:
            out["auto_capture_config"] = spec.auto_capture_config
        return out

    def build_logs(self, name: str, entity: str) -> str:
        with self._lock:
            ep = self._get(name)
            if entity in ep.build_logs:
                return "\n".join(ep.build_logs[entity]) + "\n"
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST",
                           f"Served model {entity} not found in serving endpoint {name}")

    def server_logs(self, name: str, entity: str) -> str:
        with self._lock:
            ep = self._get(name)
            live = ep.config is not None and ep.config.spec.entity(entity) is not None
            if not live:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST",
                               f"Served model {entity} not found in serving endpoint {name}")
            since = ep.appeared.get(entity, ep.created)
            lines = [
                f"{_stamp(since)} INFO Starting model server for served entity {entity}.",
                f"{_stamp(since)} INFO Listening for scoring requests.",
                (
                    f"{_stamp(self.now())} INFO {ep.invocations.get(entity, 0)} "
                    "invocation(s) handled."
                ),
            ]
            if ep.stopped:
                lines.append(f"{_stamp(self.now())} INFO Endpoint stopped; replicas scaled to 0.")
            return "\n".join(lines) + "\n"

    def openapi(self, name: str, base_url: str) -> dict[str, Any]:
        with self._lock:
            ep = self._get(name)
            if ep.config is None:
                raise ApiError(400, "INVALID_STATE",
                               f"Endpoint {name} has no served entities yet.")
            schemas = {e.name: self._profile(ep, e.name).input_schema or _DEFAULT_INPUT_SCHEMA
                       for e in ep.config.spec.entities}
            version = ep.config.version
        distinct: list[dict[str, Any]] = []
        for schema in schemas.values():
            if schema not in distinct:
                distinct.append(schema)
        paths: dict[str, Any] = {
            "/invocations": _openapi_post(
                distinct[0] if len(distinct) == 1 else {"oneOf": distinct},
                f"Query endpoint {name}; traffic is routed by its traffic_config.",
            )
        }
        for entity, schema in schemas.items():
            paths[f"/served-models/{entity}/invocations"] = _openapi_post(
                schema, f"Query served entity {entity} directly."
            )
        return {
            "openapi": "3.1.0",
            "info": {"title": name, "version": str(version),
                     "description": f"Serving endpoint {name}, config version {version}."},
            "servers": [{"url": f"{base_url.rstrip('/')}/serving-endpoints/{name}"}],
            "paths": paths,
        }

    # ---------------------------------------------------------------------------------------
    # Traffic.

    def invoke(self, name: str, entity: str | None, *,
               route_optimized_url: bool = False) -> Invocation:
        """Route one real invocation, apply the entity's profile, record it in its window.

        A route-optimized endpoint answers only at its own URL (``route_optimized_url``), as
        the ones Databricks creates now do; an ordinary one only at the workspace.
        """
        with self._lock:
            ep = self._get(name)
            if ep.route_optimized and not route_optimized_url:
                raise ApiError(400, "BAD_REQUEST",
                               f"Endpoint {name} is route-optimized; query it at its "
                               "endpoint_url.")
            if route_optimized_url and not ep.route_optimized:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST",
                               f"Endpoint {name} is not route-optimized; query it through the "
                               "workspace URL.")
            self.stats.invocations += 1
            if ep.config is None:
                raise ApiError(400, "INVALID_STATE",
                               f"Endpoint {name} is not ready: it has no served entities yet.")
            if ep.stopped:
                raise ApiError(400, "BAD_REQUEST",
                               f"Endpoint {name} is stopped. Start it to query it.")
            spec = ep.config.spec
            if entity is None:
                targets = [n for n, p in spec.routes if p > 0]
                weights = [p for _, p in spec.routes if p > 0]
                entity = self._rng.choices(targets, weights=weights)[0]
            elif spec.entity(entity) is None:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST",
                               f"Served model {entity} not found in serving endpoint {name}")
            profile = self._profile(ep, entity)
            now = self.now()
            k = self._window_index(now)
            age = k - self._window_index(ep.warmed.get(entity, ep.created))
            # A real request meets the window the simulated ones meet: incidents, hiccups,
            # overdispersion and cold replicas alike.
            cond = entity_conditions(
                profile, self._key(ep), k, entity=entity, weight=float(spec.split.get(entity, 0)),
                environment=window_environment(ep.realism, self._key(ep), k,
                                               k * self.window_seconds),
                cold=is_cold(profile, age),
            )
            latency = sample_latency_ms(profile, self._rng, cold=cond.cold)
            queue = sample_queue_ms(profile, self._rng)
            u = self._rng.random()
            if u < cond.error_rate(profile):
                status = 500
            elif self._rng.random() < profile.client_error_rate:
                status = 400
            else:
                status = 200
            window = ep.real.setdefault(k, {})
            window.setdefault(entity, WindowCounts()).record(latency, queue, status)
            ep.invocations[entity] = ep.invocations.get(entity, 0) + 1
            if len(ep.real) > _REAL_WINDOWS_KEPT:
                del ep.real[min(ep.real)]
            return Invocation(entity, status, latency)

    def window(self, name: str, k: int | None = None) -> tuple[int, dict[str, WindowCounts]]:
        """The counts of closed window ``k`` (default: the last closed one) and its start (ms).

        Asking for a window that has not closed yet is refused (it is still filling).
        """
        with self._lock:
            ep = self._get(name)
            last_closed = self._window_index(self.now()) - 1
            if k is None:
                k = last_closed
            if k > last_closed:
                raise invalid(f"Window {k} has not closed yet (last closed: {last_closed}).")
            counts = self._window_counts(ep, k)
            return _ms(k * self.window_seconds), {e: c.copy() for e, c in counts.items()}

    def export_metrics(self, name: str) -> str:
        """Export-metrics text for the last closed window, as Databricks serves it.

        With delivery faults the text is what a faulty exporter shows: the last closed window
        without the entities whose window is late or missing (a revised one partial), beside
        the previous window of the entities whose window arrives late, twice, or revised.
        With the counter exposition, cumulative counters as of the last closed window. The
        entity label is ``served_entity_name`` unless the realism settings name another.
        """
        with self._lock:
            ep = self._get(name)
            text = self._export_text(ep)
            label = ep.realism.entity_label
            if label != "served_entity_name":
                text = text.replace('{served_entity_name="', "{" + label + '="')
            return text

    def _export_text(self, ep: Endpoint) -> str:
        """The export as ``served_entity_name`` labels it (the caller holds the lock)."""
        k = self._window_index(self.now()) - 1
        if ep.realism.exposition == "counter":
            return self._counter_text(ep, k)
        faults = ep.realism.delivery
        if not faults.any_window_fault:
            return render_export_windows(ep.name, [self._block(ep, k)])
        key = self._key(ep)
        previous = self._window_counts(ep, k - 1)
        plan_then = faults.plan(key, k - 1, sorted(previous))
        again = {e for e, fate in plan_then.items() if fate in ("late", "duplicate",
                                                                "revised")}
        current = self._window_counts(ep, k)
        plan_now = faults.plan(key, k, sorted(current))
        shown: dict[str, WindowCounts] = {}
        for entity, counts in current.items():
            fate = plan_now[entity]
            if fate == "revised":
                shown[entity] = partial_counts(counts, faults.partial_fraction,
                                               substream(key, k, "partial", entity))
            elif fate in ("on_time", "duplicate"):
                shown[entity] = counts
        blocks = [self._block(ep, k, shown)]
        if again:
            blocks.append(self._block(ep, k - 1, {e: previous[e] for e in again}))
        return render_export_windows(ep.name, blocks)

    def _key(self, ep: Endpoint) -> str:
        """The name of the endpoint's random streams: the same seed and name, the same world."""
        return f"{self.seed}:{ep.name}"

    def _block(self, ep: Endpoint, k: int, counts: Mapping[str, WindowCounts] | None = None
               ) -> ExportBlock:
        """One window of the exposition: ``counts`` (default: the whole window) and gauges."""
        whole = self._window_counts(ep, k)
        return (_ms(k * self.window_seconds), whole if counts is None else counts,
                self._gauges(ep, k, whole))

    def _counter_text(self, ep: Endpoint, k: int) -> str:
        """Cumulative counters as of window ``k``: the windows not yet counted are added."""
        if ep.counters is None or ep.counters.last_k is None or (
            k - ep.counters.last_k > _COUNTER_REPLAY_WINDOWS
        ):
            ep.counters = CounterExport()
            first = k
        else:
            first = ep.counters.last_k + 1
        rate = ep.realism.delivery.counter_reset_rate
        key = self._key(ep)
        for j in range(first, k + 1):
            counts = self._window_counts(ep, j)
            resets = {e: rate > 0.0 and substream(key, j, "reset", e).random() < rate
                      for e in counts}
            ep.counters.add(j, j * self.window_seconds, (j + 1) * self.window_seconds, counts,
                            resets)
        return ep.counters.render(ep.name, self._gauges(ep, k, self._window_counts(ep, k)))

    def _overlapping(self, ep: Endpoint, start: float, end: float
                     ) -> list[tuple[LiveSegment, float]]:
        """Segments live during ``[start, end)`` with how many seconds of it each covered."""
        out: list[tuple[LiveSegment, float]] = []
        for i, seg in enumerate(ep.segments):
            seg_end = ep.segments[i + 1].start if i + 1 < len(ep.segments) else math.inf
            overlap = min(end, seg_end) - max(start, seg.start)
            if overlap > 0:
                out.append((seg, overlap))
        return out

    def _window_counts(self, ep: Endpoint, k: int) -> dict[str, WindowCounts]:
        cached = ep.window_cache.get(k)
        if cached is not None:
            return cached
        start = k * self.window_seconds
        end = start + self.window_seconds
        rng = random.Random(f"{self.seed}:{ep.name}:{k}")
        result: dict[str, WindowCounts] = {}
        for seg, seconds in self._overlapping(ep, start, end):
            if seg.split is None:
                continue
            ages = {e: k - self._window_index(t) for e, t in seg.warmed.items()}
            factor, conditions = window_conditions(seg.realism, seg.profiles, seg.split,
                                                   key=self._key(ep), k=k, start_seconds=start)
            simulated = simulate_window(seg.profiles, seg.split, seg.qps * factor, seconds, rng,
                                        window_index_since_start=ages, conditions=conditions)
            for entity, counts in simulated.items():
                result.setdefault(entity, WindowCounts()).merge(counts)
        for entity, counts in ep.real.get(k, {}).items():
            result.setdefault(entity, WindowCounts()).merge(counts)
        ep.window_cache[k] = result
        if len(ep.window_cache) > _WINDOW_CACHE_SIZE:
            del ep.window_cache[min(ep.window_cache)]
        return result

    def _gauges(self, ep: Endpoint, k: int, counts: Mapping[str, WindowCounts]
                ) -> dict[str, EntityGauges]:
        start = k * self.window_seconds
        segments = self._overlapping(ep, start, start + self.window_seconds)
        concurrency: dict[str, float] = {}
        gpu: set[str] = set()
        for seg, _ in segments:
            concurrency.update(seg.concurrency)
            gpu |= seg.gpu
        return {
            e: estimate_gauges(c, self.window_seconds, concurrency.get(e, 4.0), gpu=e in gpu)
            for e, c in counts.items()
        }


_DEFAULT_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dataframe_records": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": True},
        }
    },
    "required": ["dataframe_records"],
}


def _openapi_post(schema: Mapping[str, Any], summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            },
            "responses": {
                "200": {
                    "description": "Predictions.",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"predictions": {"type": "array"}},
                    }}},
                }
            },
        }
    }


def _scaled_up(
    warmed: Mapping[str, float],
    appeared: Mapping[str, float],
    before: Mapping[str, int],
    after: Mapping[str, int],
    t: float,
) -> dict[str, float]:
    """When each entity of a new config last started or scaled up, the change at ``t`` included.

    Autoscaling sizes replicas by traffic share: an entity whose share rose gets new replicas,
    cold for their first windows; one whose share fell or stayed keeps warm ones. A (re)deployed
    entity is new throughout (``appeared`` at ``t``).
    """
    out: dict[str, float] = {}
    for entity, since in appeared.items():
        if since == t or after.get(entity, 0) > before.get(entity, 0):
            out[entity] = t
        else:
            out[entity] = warmed.get(entity, since)
    return out


def _stamp(t: float) -> str:
    # Log lines carry the workspace clock's time, not the machine's, so they agree with
    # timestamps elsewhere in the API under a fake clock.
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in sorted(tags.items())]


def _echo(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Entity fields as GET shows them: secrets (``*_plaintext``) are never echoed."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key.endswith("_plaintext") or key == "burst_scaling_enabled":
            continue
        out[key] = _echo(value) if isinstance(value, dict) else value
    return out


def _sparse(value: Any) -> Any:
    """``value`` as proto3 JSON shows it: default values left out (a route's 0 %, the zero
    state NOT_UPDATING, false)."""
    if isinstance(value, list):
        return [_sparse(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {
        key: _sparse(v)
        for key, v in value.items()
        if not (
            v is False
            or (key == "traffic_percentage" and v == 0)
            or (key == "config_update" and v == "NOT_UPDATING")
        )
    }


def _summary(spec: ConfigSpec) -> dict[str, Any]:
    keys = ("name", "model_name", "model_version") if spec.legacy_served_models else (
        "name", "entity_name", "entity_version", "external_model", "foundation_model")
    items = [{k: _echo(e.fields)[k] for k in keys if k in e.fields} for e in spec.entities]
    return {"served_models" if spec.legacy_served_models else "served_entities": items}


__all__ = ["DEFAULT_TOKEN", "EntitySpec", "Invocation", "Workspace"]
