"""Request bodies the sandbox accepts, and the validation Databricks applies to a config.

The sandbox is the fake Databricks workspace behind the serving client; this module is its
input edge. Public bodies (``PUT .../config``, create) are validated the way the serving API
does and refused with 400 ``INVALID_PARAMETER_VALUE`` naming the problem; admin bodies
(``/_sandbox/v1``) are plain pydantic models. ``ApiError`` is the one exception every layer of
the sandbox raises; the app turns it into a Databricks error body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from rollout.sandbox.realism import EndpointRealism
from rollout.sandbox.traffic import WORKLOAD_CONCURRENCY, TrafficProfile

MAX_SERVED_ENTITIES = 15  # the real limit (databricks-sdk-py#1496); the SDK docstring says 10
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
PERMISSIONS: tuple[str, ...] = ("CAN_VIEW", "CAN_QUERY", "CAN_MANAGE")  # ascending
Permission = Literal["CAN_VIEW", "CAN_QUERY", "CAN_MANAGE"]


class ApiError(Exception):
    """A Databricks-shaped error: HTTP status, ``error_code`` and a message naming the problem."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


def invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line naming each bad field (at most three), e.g. ``Invalid 'qps': ...``."""
    parts: list[str] = []
    for err in exc.errors()[:3]:
        loc = _location(prefix, err.get("loc", ()))
        msg = str(err.get("msg", "invalid value"))
        parts.append(f"Invalid '{loc}': {msg}" if loc else msg)
    more = len(exc.errors()) - 3
    if more > 0:
        parts.append(f"and {more} more problem(s)")
    return "; ".join(parts)


def _location(prefix: str, loc: tuple[int | str, ...] | Any) -> str:
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


# --------------------------------------------------------------------------------------------
# Public: served entities and traffic.


class ServedEntityInput(BaseModel):
    """``ServedEntityInput``: the known fields are type-checked, unknown ones are echoed."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    name: str | None = None
    entity_name: str | None = None
    entity_version: str | StrictInt | None = None
    external_model: dict[str, Any] | None = None
    workload_size: str | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: StrictBool | None = None
    min_provisioned_concurrency: int | None = Field(default=None, ge=0, le=100_000)
    max_provisioned_concurrency: int | None = Field(default=None, ge=0, le=100_000)
    environment_vars: dict[str, str] | None = None


class ServedModelInput(BaseModel):
    """Legacy ``served_models[]``: a registered model and version."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    name: str | None = None
    model_name: str
    model_version: str | StrictInt
    scale_to_zero_enabled: StrictBool
    workload_size: str | None = None
    workload_type: str | None = None


class RouteInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    traffic_percentage: StrictInt
    served_model_name: str | None = None
    served_entity_name: str | None = None


@dataclass(frozen=True)
class EntitySpec:
    """One served entity of a config: its name, the fields echoed on GET, its concurrency."""

    name: str
    fields: dict[str, Any]
    provisioned_concurrency: float

    def same_deployment(self, other: EntitySpec) -> bool:
        """Same model, version and size: moving traffic to it redeploys nothing."""
        return self.fields == other.fields


@dataclass(frozen=True)
class ConfigSpec:
    """A validated ``served_entities`` + ``traffic_config`` pair (no version yet)."""

    entities: tuple[EntitySpec, ...]
    routes: tuple[tuple[str, int], ...]
    legacy_served_models: bool = False
    auto_capture_config: dict[str, Any] | None = field(default=None)

    @property
    def split(self) -> dict[str, int]:
        return dict(self.routes)

    def entity(self, name: str) -> EntitySpec | None:
        return next((e for e in self.entities if e.name == name), None)


CONFIG_FIELDS = frozenset({"served_entities", "served_models", "traffic_config",
                           "auto_capture_config"})


def parse_config(body: Mapping[str, Any], where: str = "") -> ConfigSpec:
    """Validate a flat config body the way the serving API does; raise 400 naming the problem.

    ``where`` prefixes field names in messages (``config.`` for the create body).
    """
    unknown = sorted(set(body) - CONFIG_FIELDS)
    if unknown:
        hint = ""
        if "config" in unknown:
            hint = " (PUT .../config takes served_entities and traffic_config at the top level)"
        raise invalid(f"Unknown field '{where}{unknown[0]}' in the config{hint}.")
    raw_entities = body.get("served_entities")
    raw_models = body.get("served_models")
    if raw_entities is not None and not isinstance(raw_entities, list):
        raise invalid(f"'{where}served_entities' must be a list of served entities.")
    if raw_models is not None and not isinstance(raw_models, list):
        raise invalid(f"'{where}served_models' must be a list of served models.")
    if raw_entities and raw_models:
        raise invalid(f"Specify either '{where}served_entities' or '{where}served_models', "
                      "not both.")
    legacy = bool(raw_models)
    raw = raw_models if legacy else raw_entities
    key = f"{where}served_models" if legacy else f"{where}served_entities"
    if not raw:
        raise invalid(f"'{where}served_entities' must contain at least one served entity.")
    if len(raw) > MAX_SERVED_ENTITIES:
        raise invalid(
            f"'{key}' has {len(raw)} entries; an endpoint serves at most "
            f"{MAX_SERVED_ENTITIES} entities."
        )
    entities = [
        _parse_model(item, f"{key}[{i}]") if legacy else _parse_entity(item, f"{key}[{i}]")
        for i, item in enumerate(raw)
    ]
    seen: set[str] = set()
    for spec in entities:
        if spec.name in seen:
            raise invalid(f"Served entity name '{spec.name}' is used more than once in '{key}'.")
        seen.add(spec.name)
    auto_capture = body.get("auto_capture_config")
    if auto_capture is not None and not isinstance(auto_capture, dict):
        raise invalid(f"'{where}auto_capture_config' must be an object.")
    routes = _parse_traffic(body.get("traffic_config"), [e.name for e in entities], where)
    return ConfigSpec(
        entities=tuple(sorted(entities, key=lambda e: e.name)),
        routes=routes,
        legacy_served_models=legacy,
        auto_capture_config=auto_capture,
    )


def _check_name(name: str, where: str) -> None:
    if not NAME_PATTERN.match(name):
        raise invalid(
            f"Invalid served entity name '{name}' at '{where}': use 1 to 63 letters, digits, "
            "'-' or '_'."
        )


def _concurrency(fields: Mapping[str, Any], where: str) -> float:
    size = fields.get("workload_size")
    max_pc = fields.get("max_provisioned_concurrency")
    min_pc = fields.get("min_provisioned_concurrency")
    if size is not None and (max_pc is not None or min_pc is not None):
        raise invalid(f"'{where}': workload_size cannot be combined with provisioned concurrency.")
    if min_pc is not None and max_pc is not None and min_pc > max_pc:
        raise invalid(
            f"'{where}': min_provisioned_concurrency exceeds max_provisioned_concurrency."
        )
    if size is not None and size not in WORKLOAD_CONCURRENCY:
        raise invalid(
            f"Invalid workload_size '{size}' at '{where}': expected one of "
            f"{', '.join(WORKLOAD_CONCURRENCY)}."
        )
    if max_pc is not None:
        return float(max_pc)
    return float(WORKLOAD_CONCURRENCY[size or "Small"])


def _parse_entity(item: object, where: str) -> EntitySpec:
    if not isinstance(item, dict):
        raise invalid(f"'{where}' must be an object describing a served entity.")
    try:
        parsed = ServedEntityInput.model_validate(item)
    except ValidationError as exc:
        raise invalid(describe_validation_error(exc, where)) from exc
    if parsed.external_model is None and not parsed.entity_name:
        raise invalid(f"'{where}.entity_name' is required (or an external_model).")
    fields = {k: v for k, v in item.items() if v is not None and k != "name"}
    if isinstance(parsed.entity_version, int):
        fields["entity_version"] = str(parsed.entity_version)
    name = parsed.name
    if name is None:
        name = _default_name(parsed)
    _check_name(name, f"{where}.name")
    return EntitySpec(name=name, fields={"name": name, **fields},
                      provisioned_concurrency=_concurrency(fields, where))


def _default_name(parsed: ServedEntityInput) -> str:
    """``<entity_name last part>-<version>`` as Databricks derives it (dots are not allowed in
    served names, so a Unity Catalog three-part name contributes its last part)."""
    if parsed.external_model is not None:
        ext_name = parsed.external_model.get("name")
        if not isinstance(ext_name, str) or not ext_name:
            raise invalid("external_model.name is required to derive a served entity name.")
        return ext_name.replace(".", "-").replace(":", "-")
    base = (parsed.entity_name or "").split(".")[-1]
    version = parsed.entity_version
    return f"{base}-{version}" if version is not None else base


def _parse_model(item: object, where: str) -> EntitySpec:
    if not isinstance(item, dict):
        raise invalid(f"'{where}' must be an object describing a served model.")
    try:
        parsed = ServedModelInput.model_validate(item)
    except ValidationError as exc:
        raise invalid(describe_validation_error(exc, where)) from exc
    version = str(parsed.model_version)
    name = parsed.name or f"{parsed.model_name.split('.')[-1]}-{version}"
    _check_name(name, f"{where}.name")
    fields = {k: v for k, v in item.items() if v is not None and k != "name"}
    fields["model_version"] = version
    return EntitySpec(name=name, fields={"name": name, **fields},
                      provisioned_concurrency=_concurrency(fields, where))


def _parse_traffic(raw: object, names: list[str], where: str) -> tuple[tuple[str, int], ...]:
    key = f"{where}traffic_config"
    if raw is None:
        if len(names) == 1:
            # The backend routes everything to a lone entity and echoes that route on GET.
            return ((names[0], 100),)
        raise invalid(
            f"'{key}' is required when the config has more than one served entity "
            f"({len(names)} given)."
        )
    if not isinstance(raw, dict):
        raise invalid(f"'{key}' must be an object with a 'routes' list.")
    extra = sorted(set(raw) - {"routes"})
    if extra:
        raise invalid(f"Unknown field '{key}.{extra[0]}'.")
    routes_raw = raw.get("routes")
    if not isinstance(routes_raw, list) or not routes_raw:
        raise invalid(f"'{key}.routes' must be a non-empty list of routes.")
    routes: list[tuple[str, int]] = []
    for i, item in enumerate(routes_raw):
        target, percentage = _parse_route(item, f"{key}.routes[{i}]", names)
        if any(t == target for t, _ in routes):
            raise invalid(f"'{key}' has more than one route to '{target}'.")
        routes.append((target, percentage))
    total = sum(p for _, p in routes)
    if total != 100:
        raise invalid(f"Traffic percentages in '{key}.routes' must sum to 100, not {total}.")
    return tuple(routes)


def _parse_route(item: object, at: str, names: list[str]) -> tuple[str, int]:
    if not isinstance(item, dict):
        raise invalid(f"'{at}' must be an object.")
    try:
        route = RouteInput.model_validate(item)
    except ValidationError as exc:
        raise invalid(describe_validation_error(exc, at)) from exc
    if not 0 <= route.traffic_percentage <= 100:
        raise invalid(
            f"'{at}.traffic_percentage' is {route.traffic_percentage}; it must be an "
            "integer from 0 to 100."
        )
    entity, model = route.served_entity_name, route.served_model_name
    if entity and model and entity != model:
        raise invalid(f"'{at}' names two different targets: served_entity_name '{entity}' and "
                      f"served_model_name '{model}'.")
    target = entity or model
    if not target:
        raise invalid(f"'{at}' must name its target in served_entity_name "
                      "(or served_model_name).")
    if target not in names:
        raise invalid(
            f"'{at}' routes traffic to '{target}', which is not a served entity of this "
            f"config (served entities: {', '.join(sorted(names))})."
        )
    return target, route.traffic_percentage


# --------------------------------------------------------------------------------------------
# Admin bodies (/_sandbox/v1).


class EntityProfile(TrafficProfile):
    """A served entity's behaviour in the sandbox: traffic, OpenAPI input, build outcome."""

    input_schema: dict[str, Any] | None = Field(
        default=None, description="JSON schema of the request body (the OpenAPI document)."
    )
    fail_build: bool = Field(
        default=False, description="Any update that deploys this entity ends UPDATE_FAILED."
    )


class AdminEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    served_entities: list[Any]
    traffic_config: dict[str, Any] | None = None
    profiles: dict[str, EntityProfile] = Field(default_factory=dict)
    qps: float = Field(default=0.0, ge=0.0, le=1_000_000.0)
    tags: dict[str, str] = Field(default_factory=dict)
    realism: EndpointRealism = Field(default_factory=EndpointRealism)
    route_optimized: bool = False


class AdminLoad(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    qps: float = Field(ge=0.0, le=1_000_000.0)


class AdminUpdates(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    duration_seconds: float | None = Field(default=None, ge=0.0, le=86_400.0)
    fail_next: int | None = Field(default=None, ge=0, le=1_000_000)


class AdminFault(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    status: Literal[0, 429, 500, 503, 504] = 0
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    count: int | None = Field(default=None, ge=0, le=1_000_000_000)
    retry_after_seconds: int | None = Field(default=None, ge=0, le=86_400)
    delay_seconds: float = Field(default=0.0, ge=0.0, le=300.0)
    path_pattern: str = Field(default=".*", max_length=1000)
    methods: list[str] | None = None


class AdminToken(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    token: str = Field(min_length=1, max_length=1000)
    permission: Permission = "CAN_MANAGE"
    expires_in_seconds: float | None = Field(default=None, ge=0.0, le=10.0**9)


class AdminRevoke(BaseModel):
    """``POST /_sandbox/v1/tokens/revoke``: one token, or every OAuth token issued so far."""

    model_config = ConfigDict(extra="forbid", strict=True)

    token: str | None = Field(default=None, min_length=1, max_length=1000)
    oauth: bool = False


class AdminOAuthClient(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    client_id: str = Field(min_length=1, max_length=1000)
    client_secret: str = Field(min_length=1, max_length=1000)
    token_lifetime_seconds: float = Field(default=3600.0, gt=0.0, le=10.0**9)
    permission: Permission = "CAN_MANAGE"


class AdminClockAdvance(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seconds: float = Field(ge=0.0, le=10.0**9)


class TagInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    key: str = Field(min_length=1, max_length=255)
    value: str | None = Field(default=None, max_length=10_000)


class TagsPatch(BaseModel):
    """``PATCH .../tags``: keys to add (or overwrite) and keys to delete."""

    model_config = ConfigDict(extra="forbid", strict=True)

    add_tags: list[TagInput] = Field(default_factory=list)
    delete_tags: list[str] = Field(default_factory=list)


class EndpointCreate(BaseModel):
    """``POST /api/2.0/serving-endpoints``: the fields the sandbox honours; others are ignored
    (AI gateway, rate limits, ...), as an endpoint without them behaves the same here."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: str = Field(min_length=1)
    config: dict[str, Any] | None = None
    tags: list[TagInput] = Field(default_factory=list)
    description: str | None = None
    route_optimized: StrictBool = False
