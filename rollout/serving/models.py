"""Typed views of the serving-endpoints API payloads, and the config the controller asks for.

Where this sits in a rollout: the runner builds a ``ConfigSpec`` (the full ``served_entities``
plus the traffic split of the next step), the client PUTs ``ConfigSpec.put_body()``, and every
GET comes back as an ``Endpoint`` whose ``state`` tells whether the update settled and whose
``config`` is read back with ``traffic_split`` to verify the split really is the one asked for.

Reading is tolerant wherever the SDK's dataclasses make a field optional (the endpoint's
``name`` aside: it says which endpoint answered), and strict only about values that are present
but wrong (a route percentage that is not a number is a ``ValidationError``, which the client
turns into ``MalformedResponse``):

- unknown enum values are kept as they are (a new state name must not crash a rollout);
- ``state`` or either of its fields may be absent: a missing ``config_update`` reads as
  ``IN_PROGRESS`` when a ``pending_config`` is shown and ``NOT_UPDATING`` otherwise, and a
  missing ``ready`` is "not reported" (``None``), which holds nothing back;
- a route without ``traffic_percentage`` takes 0 % (the backend's JSON leaves zero numbers out);
- legacy ``served_models`` items are read as served entities (``ServedModel.to_entity``:
  model_name -> entity_name, model_version -> entity_version), so a rollout on an endpoint
  described the old way PUTs complete ``served_entities``;
- served entities keep every field, known or not (``extra="allow"``): what the controller does
  not mean to change is sent back as it came.

Writing follows the zero-downtime rules of ``databricks-api.md``: a PUT always carries every
served entity and names each route by the entity's explicit ``name``; ``None`` fields are left
out, but ``False`` is sent (``scale_to_zero_enabled=false`` must reach the server). Output-only
fields (``state``, ``creator``, ``creation_timestamp``, ``foundation_model``) are never sent.
Fields the backend does not echo on GET (``burst_scaling_enabled``, ``*_plaintext`` secrets)
cannot be carried through from a GET: the plan states them (``entity_settings``), or the
backend's default applies (README, "Fields a GET does not show").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator


class _TolerantEnum(StrEnum):
    """A str enum that keeps values it does not know instead of failing validation."""

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if isinstance(value, str):
            # A pseudo-member: compares equal to its string, is not one of the known members.
            member = str.__new__(cls, value)
            member._name_ = value
            member._value_ = value
            return member
        return None


class Ready(_TolerantEnum):
    READY = "READY"
    NOT_READY = "NOT_READY"


class ConfigUpdate(_TolerantEnum):
    NOT_UPDATING = "NOT_UPDATING"
    IN_PROGRESS = "IN_PROGRESS"
    UPDATE_FAILED = "UPDATE_FAILED"
    UPDATE_CANCELED = "UPDATE_CANCELED"


class DeploymentState(_TolerantEnum):
    DEPLOYMENT_CREATING = "DEPLOYMENT_CREATING"
    DEPLOYMENT_READY = "DEPLOYMENT_READY"
    DEPLOYMENT_FAILED = "DEPLOYMENT_FAILED"
    DEPLOYMENT_ABORTED = "DEPLOYMENT_ABORTED"
    DEPLOYMENT_RECOVERING = "DEPLOYMENT_RECOVERING"


class _Model(BaseModel):
    # Unknown fields are ignored; numbers given where a string is expected (entity_version: 4)
    # are read as strings, since the platform is not consistent about it.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, populate_by_name=True)


class EndpointState(_Model):
    """``state``: read ``ready`` and ``config_update`` together, never one alone."""

    # None: the response did not say (see ``Endpoint._infer_update``).
    ready: Ready | None = None
    # Docs examples call it ``update_state``; the API says ``config_update``.
    config_update: ConfigUpdate | None = Field(
        default=None, validation_alias=AliasChoices("config_update", "update_state")
    )


class ServedEntityState(_Model):
    deployment: DeploymentState | None = None
    deployment_state_message: str | None = None


# Fields of ServedEntityOutput that are not ServedEntityInput fields: never sent back.
OUTPUT_ONLY_ENTITY_FIELDS = frozenset({"state", "creator", "creation_timestamp",
                                       "foundation_model"})


class ServedEntity(_Model):
    """A served entity: the input fields (what a PUT sends) plus the output-only ones.

    Fields this model does not name are kept (``model_extra``) and sent back by ``to_input``:
    a field the platform adds later must survive a rollout's PUTs.
    """

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, populate_by_name=True)

    name: str | None = None
    entity_name: str | None = None
    entity_version: str | None = None
    external_model: dict[str, Any] | None = None
    workload_size: str | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: bool | None = None
    min_provisioned_concurrency: int | None = None
    max_provisioned_concurrency: int | None = None
    min_provisioned_throughput: int | None = None
    max_provisioned_throughput: int | None = None
    provisioned_model_units: int | None = None
    burst_scaling_enabled: bool | None = None
    environment_vars: dict[str, str] | None = None
    instance_profile_arn: str | None = None
    # Output only: never sent back.
    state: ServedEntityState | None = None
    creator: str | None = None
    creation_timestamp: int | None = None
    foundation_model: dict[str, Any] | None = None

    def derived_name(self) -> str:
        """The name Databricks gives an entity sent without one.

        ``<last part of entity_name>-<entity_version>``; for an external model its name with
        ``.`` and ``:`` replaced by ``-``.
        """
        if self.name:
            return self.name
        if self.external_model and isinstance(self.external_model.get("name"), str):
            return str(self.external_model["name"]).replace(".", "-").replace(":", "-")
        if self.entity_name and self.entity_version:
            return f"{self.entity_name.rsplit('.', 1)[-1]}-{self.entity_version}"
        raise ValueError("a served entity needs a name, or entity_name and entity_version")

    @property
    def identity(self) -> tuple[str, str | None, str | None]:
        """What makes two entities the same deployment: name, entity_name, entity_version."""
        return (self.derived_name(), self.entity_name, self.entity_version)

    def to_input(self) -> dict[str, Any]:
        """The ServedEntityInput JSON: every field but the output-only ones, explicit name,
        no None values (unknown fields included)."""
        body = self.model_dump(exclude=set(OUTPUT_ONLY_ENTITY_FIELDS), exclude_none=True)
        body["name"] = self.derived_name()
        return body


# Legacy served_models field -> its served_entities name; other fields keep their name.
_MODEL_TO_ENTITY = {"model_name": "entity_name", "model_version": "entity_version"}


class ServedModel(_Model):
    """A legacy ``served_models`` item (model_name/model_version instead of entity_*)."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, populate_by_name=True)

    name: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    workload_size: str | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: bool | None = None
    state: ServedEntityState | None = None
    creator: str | None = None
    creation_timestamp: int | None = None

    @property
    def identity(self) -> tuple[str, str | None, str | None]:
        name = self.name or (f"{(self.model_name or '').rsplit('.', 1)[-1]}-{self.model_version}")
        return (name, self.model_name, self.model_version)

    def to_entity(self) -> ServedEntity:
        """The same deployment as a served entity: model_name -> entity_name, model_version ->
        entity_version, the explicit name kept, every other field (known or not) as it is."""
        data = self.model_dump(exclude_none=True)
        converted = {_MODEL_TO_ENTITY.get(key, key): value for key, value in data.items()}
        converted["name"] = self.identity[0]
        return ServedEntity.model_validate(converted)


class Route(_Model):
    """One traffic route. The server echoes both name fields; either may be the only one.

    A route without ``traffic_percentage`` takes 0 %: proto3 JSON leaves zero numbers out.
    """

    traffic_percentage: int = Field(default=0, ge=0, le=100)
    served_model_name: str | None = None
    served_entity_name: str | None = None

    @model_validator(mode="after")
    def _names_a_target(self) -> Route:
        if not (self.served_entity_name or self.served_model_name):
            raise ValueError("a route needs served_entity_name or served_model_name")
        return self

    @property
    def target(self) -> str:
        """The served entity this route sends traffic to, whichever field names it."""
        # The validator guarantees one is set.
        return self.served_entity_name or self.served_model_name or ""


class TrafficConfig(_Model):
    routes: list[Route] = Field(default_factory=list)


class EndpointConfig(_Model):
    """``config`` of a detailed endpoint (EndpointCoreConfigOutput)."""

    config_version: int | None = None
    served_entities: list[ServedEntity] = Field(default_factory=list)
    served_models: list[ServedModel] = Field(default_factory=list)
    traffic_config: TrafficConfig | None = None
    # Legacy inference tables; sent back as they are (``auto_capture_input``).
    auto_capture_config: dict[str, Any] | None = None

    def auto_capture_input(self) -> dict[str, Any] | None:
        """``auto_capture_config`` as a PUT carries it: without the output-only ``state``."""
        if self.auto_capture_config is None:
            return None
        return {k: v for k, v in self.auto_capture_config.items() if k != "state"}

    def entity_identities(self) -> frozenset[tuple[str, str | None, str | None]]:
        """(name, entity_name, entity_version) of every served entity and legacy model."""
        return frozenset(
            [e.identity for e in self.served_entities] + [m.identity for m in self.served_models]
        )

    def entity_names(self) -> list[str]:
        return [i[0] for i in self.entity_identities()]

    def entities(self) -> list[ServedEntity]:
        """Every served entity, legacy ``served_models`` converted (``ServedModel.to_entity``)."""
        return [*self.served_entities, *(m.to_entity() for m in self.served_models)]


class PendingConfig(EndpointConfig):
    """``pending_config``: the config an in-flight update is rolling out."""

    start_time: int | None = None


class Tag(_Model):
    key: str
    value: str | None = None


class Endpoint(_Model):
    """ServingEndpointDetailed: what GET, create, PUT config return."""

    name: str
    id: str | None = None
    state: EndpointState = Field(default_factory=EndpointState)
    config: EndpointConfig | None = None
    pending_config: PendingConfig | None = None
    tags: list[Tag] = Field(default_factory=list)
    permission_level: str | None = None
    creator: str | None = None
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None
    task: str | None = None
    description: str | None = None
    route_optimized: bool | None = None
    endpoint_url: str | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _state_may_be_null(cls, value: object) -> object:
        return {} if value is None else value

    @model_validator(mode="after")
    def _infer_update(self) -> Endpoint:
        # Without ``config_update`` the pending config is the only sign of an update in flight.
        if self.state.config_update is None:
            inferred = (
                ConfigUpdate.IN_PROGRESS
                if self.pending_config is not None
                else ConfigUpdate.NOT_UPDATING
            )
            self.state = self.state.model_copy(update={"config_update": inferred})
        return self

    @property
    def settled(self) -> bool:
        """No update in flight (it may have failed: look at ``state.config_update``)."""
        return self.state.config_update != ConfigUpdate.IN_PROGRESS

    @property
    def announced_version(self) -> int | None:
        """The config version this response promises: the pending one if an update is on."""
        if self.pending_config and self.pending_config.config_version is not None:
            return self.pending_config.config_version
        return self.config.config_version if self.config else None


class EndpointSummary(_Model):
    """An item of the list call (ServingEndpoint): the config is a summary only."""

    name: str
    id: str | None = None
    state: EndpointState | None = None
    config: EndpointConfig | None = None
    tags: list[Tag] = Field(default_factory=list)
    creator: str | None = None
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None
    task: str | None = None
    description: str | None = None


class InvocationResult(_Model):
    """An invocation's answer: the JSON body, who answered it, and the HTTP status."""

    body: Any
    served_model_name: str | None = None
    status: int


def _positive(split: Mapping[str, int]) -> dict[str, int]:
    return {name: pct for name, pct in split.items() if pct > 0}


def traffic_split(endpoint: Endpoint | EndpointConfig) -> dict[str, int]:
    """Served entity name -> percent of traffic, as the endpoint's live config routes it.

    With no ``traffic_config`` and exactly one entity, the platform sends it everything.
    Several routes to one entity add up.
    """
    config = endpoint.config if isinstance(endpoint, Endpoint) else endpoint
    if config is None:
        return {}
    if config.traffic_config is None or not config.traffic_config.routes:
        names = config.entity_names()
        return {names[0]: 100} if len(names) == 1 else {}
    split: dict[str, int] = {}
    for route in config.traffic_config.routes:
        split[route.target] = split.get(route.target, 0) + route.traffic_percentage
    return split


class ConfigSpec(_Model):
    """The config the controller asks for: every served entity, and the traffic split.

    Validated before anything is sent: entity names unique, every route names an entity of the
    spec, percentages sum to 100. Entities without a ``name`` get the derived one, so the
    request never relies on the server's naming.
    """

    served_entities: list[ServedEntity]
    traffic_config: TrafficConfig
    # Carried over from the live config, never changed by the controller.
    auto_capture_config: dict[str, Any] | None = None

    # Routes are sent under ``served_model_name``: every API version accepts it alongside
    # served_entities (docs examples use it), and the server echoes both names anyway.
    ROUTE_FIELD: ClassVar[str] = "served_model_name"

    @model_validator(mode="after")
    def _consistent(self) -> ConfigSpec:
        if not self.served_entities:
            raise ValueError("a config needs at least one served entity")
        names = [e.derived_name() for e in self.served_entities]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"served entity names must be unique: {duplicates}")
        unknown = sorted({r.target for r in self.traffic_config.routes} - set(names))
        if unknown:
            raise ValueError(f"routes name unknown served entities: {unknown}")
        total = sum(r.traffic_percentage for r in self.traffic_config.routes)
        if total != 100:
            raise ValueError(f"traffic percentages must sum to 100, not {total}")
        return self

    @classmethod
    def build(
        cls,
        entities: Iterable[ServedEntity],
        split: Mapping[str, int],
        auto_capture_config: Mapping[str, Any] | None = None,
    ) -> ConfigSpec:
        """A spec from entities and a ``{name: percent}`` split (zero routes are kept)."""
        return cls(
            auto_capture_config=None if auto_capture_config is None else dict(auto_capture_config),
            served_entities=list(entities),
            traffic_config=TrafficConfig(
                routes=[
                    Route(served_entity_name=name, traffic_percentage=pct)
                    for name, pct in split.items()
                ]
            ),
        )

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint) -> ConfigSpec:
        """The spec that reproduces an endpoint's live config (for a baseline or a restore)."""
        config = endpoint.config
        if config is None or not config.entities():
            raise ValueError(f"endpoint {endpoint.name!r} has no served entities to copy")
        return cls.build(config.entities(), traffic_split(endpoint), config.auto_capture_input())

    @property
    def split(self) -> dict[str, int]:
        """Name -> percent, as asked (routes to one entity add up)."""
        split: dict[str, int] = {}
        for route in self.traffic_config.routes:
            split[route.target] = split.get(route.target, 0) + route.traffic_percentage
        return split

    def entity_identities(self) -> frozenset[tuple[str, str | None, str | None]]:
        return frozenset(e.identity for e in self.served_entities)

    def put_body(self) -> dict[str, Any]:
        """The flat ``PUT .../config`` body: full served_entities, routes by explicit name,
        and the endpoint's ``auto_capture_config`` as it was (when it had one)."""
        body: dict[str, Any] = {
            "served_entities": [e.to_input() for e in self.served_entities],
            "traffic_config": {
                "routes": [
                    {self.ROUTE_FIELD: r.target, "traffic_percentage": r.traffic_percentage}
                    for r in self.traffic_config.routes
                ]
            },
        }
        if self.auto_capture_config is not None:
            body["auto_capture_config"] = dict(self.auto_capture_config)
        return body

    def matches(self, config: EndpointConfig) -> bool:
        """True when ``config`` serves these entities with this split (zero routes ignored)."""
        return config.entity_identities() == self.entity_identities() and _positive(
            traffic_split(config)
        ) == _positive(self.split)


def positive_split(split: Mapping[str, int]) -> dict[str, int]:
    """A split without its zero routes: 0 % and no route at all route the same traffic."""
    return _positive(split)


# ---- Unity Catalog registered models (aliases) --------------------------------------------


class ModelAlias(_Model):
    """One alias of a registered model: ``RegisteredModelAlias`` of the SDK's catalog service
    (``alias_name``, ``version_num``; ``version_number`` is read too)."""

    alias_name: str
    version_num: str | None = Field(
        default=None, validation_alias=AliasChoices("version_num", "version_number")
    )


class ModelVersionInfo(_Model):
    """A model version as ``GET .../aliases/{alias}`` answers it (the SDK's
    ``ModelVersionInfo``); only what the controller reads."""

    model_name: str | None = None
    catalog_name: str | None = None
    schema_name: str | None = None
    version: str
    status: str | None = None
    aliases: list[ModelAlias] = Field(default_factory=list)


class RegisteredModelInfo(_Model):
    """A registered model as ``GET /api/2.1/unity-catalog/models/{full_name}`` answers it,
    with its aliases when asked (``include_aliases=true``)."""

    full_name: str | None = None
    name: str | None = None
    aliases: list[ModelAlias] = Field(default_factory=list)

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` names, or None when the model has no such alias."""
        return next((a.version_num for a in self.aliases if a.alias_name == alias), None)
