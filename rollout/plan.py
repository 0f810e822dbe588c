"""Rollout plans: the user's file, validated before anything touches an endpoint.

First stop in the path of a rollout: ``load_plan`` turns YAML or JSON into a ``Plan`` (or a
``PlanError`` listing every problem with the field it concerns), the API stores it, and the
engine reads nothing but this validated form. Pure: no I/O besides reading the text given.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from rollout.analysis.ab import OBJECTIVES
from rollout.analysis.spec import Policy
from rollout.metrics.model import EXPORTED_LATENCY_BOUNDS_MS, Histogram
from rollout.policies import PolicyLibrary, PolicyNotFoundError, policy_errors
from rollout.units import format_duration, parse_duration
from rollout.vocabulary import TERMINAL

# A plan is a few kilobytes; these bound what one can cost the store, the workspace (the
# candidate's fields go into a PUT) and every reader, whatever YAML aliases make of the text.
MAX_PLAN_BYTES = 256 * 1024
"""Largest plan accepted, counted as its compact JSON (the stored form), aliases expanded."""
MAX_STRING_CHARS = 16 * 1024
"""Longest string (or key) anywhere in a plan."""

DATABRICKS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
ENTITY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Unity Catalog aliases: letters, digits and underscores, not starting with a digit (a
# number would read as a version: models:/m@7 is ambiguous), at most 255 characters.
ALIAS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
UC_MODEL_NAME = re.compile(r"^[^.\s]+\.[^.\s]+\.[^.\s]+$")

STORED: Final = "stored"
"""Validation context key: the plan is one the controller stored (aliases resolved), not a
user's; it may carry the fields the controller fills at submission."""

# The JSON schema (the API's OpenAPI document) says what the validator accepts, not the float
# it produces: plans are written with durations like "10m".
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "examples": ["90s", "10m", "1h30m"]},
            ],
            "description": "Seconds, or text like '90s', '10m', '1h30m'.",
        },
        mode="validation",
    ),
]



Severity = Literal["info", "warn", "error"]
"""How loud an alert is; a channel takes alerts from its own ``severity`` up."""

SEVERITY_ORDER: Final[Mapping[str, int]] = {"info": 0, "warn": 1, "error": 2}
"""Severities from the quietest, for ``channel.severity <= alert.severity`` comparisons."""

class FieldProblemError(ValueError):
    """A validation error found above the field level that still belongs to one field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)

    def parts(self) -> tuple[int | str, ...]:
        """``field`` as location parts (``steps[1].weight`` -> ``("steps", 1, "weight")``)."""
        return _split_path(self.field)


class FieldProblemsError(ValueError):
    """Several problems one validator found at once (``(field, message)`` pairs), so a plan
    with two badly ordered steps hears about both in one answer."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


def _databricks_name(value: str, what: str) -> str:
    if not DATABRICKS_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid {what} name: use 1 to 63 letters, digits, '-' or '_'"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _is_stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, Mapping) and bool(info.context.get(STORED))


def _alias_name(value: str | None) -> str | None:
    if value is not None and not ALIAS_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid alias: use letters, digits and '_', not starting "
            "with a digit"
        )
    return value


class CandidateEntity(_Strict):
    """The candidate, shaped exactly like a Databricks ``served_entities[]`` item.

    The version is given outright (``entity_version``) or as a Unity Catalog alias of the
    registered model (``alias``), exactly one of the two. The controller resolves an alias at
    submission and stores the plan with both: ``entity_version`` is then the version the
    alias named, and ``alias`` says where it came from (only a stored plan may carry both).
    """

    name: str | None = Field(
        default=None,
        description="Served entity name; default <last part of entity_name>-<entity_version>.",
    )
    entity_name: str = Field(description="Registered model, e.g. main.ml.ads_model.")
    entity_version: str | None = Field(
        default=None, description="Model version to serve (or give alias instead)."
    )
    alias: str | None = Field(
        default=None,
        description="Unity Catalog alias of entity_name (e.g. challenger) whose version to "
        "serve, resolved by the controller at submission; instead of entity_version.",
    )
    workload_size: str | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: bool = False
    min_provisioned_concurrency: int | None = Field(default=None, ge=0)
    max_provisioned_concurrency: int | None = Field(default=None, ge=0)
    environment_vars: dict[str, str] | None = None
    instance_profile_arn: str | None = None
    burst_scaling_enabled: bool | None = Field(
        default=None,
        description="Burst scaling; not shown by GET, so stated here or left to the default.",
    )

    @field_validator("entity_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # YAML reads `entity_version: 4` as an int; Databricks wants the string "4".
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("entity_name")
    @classmethod
    def _entity_name(cls, value: str) -> str:
        if not ENTITY_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid registered model name")
        return value

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str | None) -> str | None:
        return _alias_name(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _databricks_name(value, "served entity")

    @model_validator(mode="after")
    def _version_or_alias(self, info: ValidationInfo) -> CandidateEntity:
        if self.alias is None and self.entity_version is None:
            raise FieldProblemError(
                "entity_version", "give the model version to serve, or alias to resolve one"
            )
        if self.alias is not None:
            if self.entity_version is not None and not _is_stored(info):
                raise FieldProblemError(
                    "alias",
                    "give entity_version or alias, not both: the controller resolves the "
                    "alias to a version at submission",
                )
            if not UC_MODEL_NAME.match(self.entity_name):
                raise FieldProblemError(
                    "entity_name",
                    f"{self.entity_name!r} is not a Unity Catalog model "
                    "(catalog.schema.model): only those have aliases",
                )
        return self

    @model_validator(mode="after")
    def _sizing(self) -> CandidateEntity:
        has_concurrency = (
            self.min_provisioned_concurrency is not None
            or self.max_provisioned_concurrency is not None
        )
        if has_concurrency and self.workload_size is not None:
            raise FieldProblemError(
                "workload_size", "cannot be combined with min/max_provisioned_concurrency"
            )
        if (
            self.min_provisioned_concurrency is not None
            and self.max_provisioned_concurrency is not None
            and self.min_provisioned_concurrency > self.max_provisioned_concurrency
        ):
            raise FieldProblemError(
                "min_provisioned_concurrency", "exceeds max_provisioned_concurrency"
            )
        return self

    @property
    def resolved(self) -> bool:
        """The version is known: given, or resolved from the alias at submission."""
        return self.entity_version is not None

    @property
    def served_name(self) -> str:
        """The explicit name used in every ``traffic_config`` route for the candidate (before
        an alias is resolved and without an explicit name: ``<model>-<alias>``, a label)."""
        if self.name is not None:
            return self.name
        version = self.entity_version if self.entity_version is not None else self.alias
        derived = f"{self.entity_name.rsplit('.', 1)[-1]}-{version}"
        return re.sub(r"[^A-Za-z0-9_-]", "-", derived)[:63]

    def describe(self) -> str:
        """'main.ml.ads_model@challenger = version 7', 'main.ml.ads_model version 4', or
        'main.ml.ads_model@challenger (resolved at submission)'."""
        if self.alias is None:
            return f"{self.entity_name} version {self.entity_version}"
        if self.entity_version is None:
            return f"{self.entity_name}@{self.alias} (resolved at submission)"
        return f"{self.entity_name}@{self.alias} = version {self.entity_version}"

    def with_version(self, version: str) -> CandidateEntity:
        """This candidate with ``entity_version`` set (the alias, if any, kept as its source)."""
        return self.model_copy(update={"entity_version": version})

    def as_served_entity(self) -> dict[str, Any]:
        """The ``served_entities[]`` item to PUT, with the name always explicit."""
        if self.entity_version is None:
            raise ValueError(f"{self.describe()}: the alias was never resolved to a version")
        body = self.model_dump(exclude_none=True, exclude={"alias"})
        body["name"] = self.served_name
        return body


class OnSuccess(_Strict):
    """What the controller does once the rollout ends promoted."""

    set_alias: str | None = Field(
        default=None,
        description="Move this Unity Catalog alias of the candidate's model (e.g. champion) "
        "to the candidate's version, retried until the workspace takes it.",
    )
    previous_version: str | None = Field(
        default=None,
        description="Filled by the controller at submission: the version set_alias named "
        "then (none when it was not set). Not given in a plan.",
    )

    @field_validator("set_alias")
    @classmethod
    def _alias(cls, value: str | None) -> str | None:
        return _alias_name(value)

    @model_validator(mode="after")
    def _controller_fields(self, info: ValidationInfo) -> OnSuccess:
        if self.previous_version is not None and not _is_stored(info):
            raise FieldProblemError(
                "previous_version", "filled by the controller at submission; leave it out"
            )
        return self


class EntitySettings(_Strict):
    """Served-entity fields the endpoint's GET does not echo, so a rollout cannot copy them.

    Every PUT carries the full config; a field left out of it is reset to the backend's
    default. The rollout copies every field a GET shows; these it can only learn from the plan.
    """

    burst_scaling_enabled: bool | None = Field(
        default=None, description="Burst scaling as the entity has it now (default: on)."
    )

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CanaryStep(_Strict):
    weight: int = Field(gt=0, le=100, description="Candidate traffic percentage in this step.")
    bake: Duration = Field(description="How long the step runs before it may advance.")
    warmup: Duration | None = Field(
        default=None,
        description="Time after this step's split change whose metric windows are served but "
        "not scored (cold replicas); default: the policy's warmup_windows.",
    )


PAGERDUTY_EVENTS_URL: Final = "https://events.pagerduty.com/v2/enqueue"
"""PagerDuty's Events API v2, where a ``pagerduty`` channel sends unless its ``url`` says
otherwise (``https://events.eu.pagerduty.com/v2/enqueue`` for an EU account)."""

ROUTING_KEY: Final = re.compile(r"^[A-Za-z0-9]{32}$")
"""A PagerDuty integration key: 32 letters and digits."""

_CHANNEL_DEFAULT_SEVERITY: Final[Mapping[str, Severity]] = {"pagerduty": "warn"}
"""A channel's ``severity`` when its plan gives none: ``info`` but for a pager, where an
incident for every step of every rollout would teach people to ignore it."""


class AlertChannel(_Strict):
    type: Literal["webhook", "slack", "alertmanager", "teams", "pagerduty"]
    # None of url, secret, routing_key is ever shown (repr=False keeps them out of tracebacks
    # and logged reprs; the API shows them through rollout.redaction): a Slack or Teams URL's
    # path and query are its credential, a routing key lets anyone page the service.
    url: str = Field(
        pattern=r"^https?://",
        repr=False,
        description="Where to deliver (http or https); pagerduty: default "
        f"{PAGERDUTY_EVENTS_URL}. Never shown: reads give scheme and host only.",
    )
    severity: Severity = Field(
        default="info",
        description="Lowest severity delivered to this channel (default info; pagerduty: "
        "warn).",
    )
    secret: str | None = Field(
        default=None,
        repr=False,
        description="webhook only: HMAC-SHA256 key for the signature header. Never shown.",
    )
    routing_key: str | None = Field(
        default=None,
        repr=False,
        description="pagerduty only, required: the 32-character integration key of an Events "
        "API v2 integration. Never shown.",
    )

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        kind = data.get("type")
        filled = dict(data)
        if kind == "pagerduty" and filled.get("url") is None:
            filled["url"] = PAGERDUTY_EVENTS_URL
        if isinstance(kind, str) and kind in _CHANNEL_DEFAULT_SEVERITY:
            filled.setdefault("severity", _CHANNEL_DEFAULT_SEVERITY[kind])
        return filled

    @model_validator(mode="after")
    def _type_fields(self) -> AlertChannel:
        if self.type == "pagerduty":
            if self.secret is not None:
                raise FieldProblemError(
                    "secret", "a pagerduty channel has no secret; its key is routing_key"
                )
            if not self.routing_key:
                raise FieldProblemError(
                    "routing_key",
                    "a pagerduty channel needs routing_key: the 32-character integration key "
                    "of the service's Events API v2 integration",
                )
            if not ROUTING_KEY.match(self.routing_key):
                # The key itself is never echoed: the message may be logged or shown.
                odd = "" if self.routing_key.isalnum() else ", not all letters and digits"
                raise FieldProblemError(
                    "routing_key",
                    "a PagerDuty integration key is 32 letters and digits; this one has "
                    f"{len(self.routing_key)} characters{odd}",
                )
        elif self.routing_key is not None:
            raise FieldProblemError("routing_key", "only a pagerduty channel takes routing_key")
        return self

    def takes(self, severity: Severity, event: str) -> bool:
        """Whether an alert goes to this channel: at or above the channel's ``severity``;
        a pagerduty channel also takes every alert that ends a rollout, whatever its
        severity, because only such an alert resolves the incidents the rollout opened
        (sent then as the resolves alone: see ``rollout.alerts.pagerduty``)."""
        if SEVERITY_ORDER[severity] >= SEVERITY_ORDER[self.severity]:
            return True
        return self.type == "pagerduty" and event in TERMINAL


HookName = Literal["pre_rollout", "confirm_promotion", "post_rollout", "on_rollback"]
"""A webhook a plan may name (``hooks:``); the README's "Gates and hooks" has the contract."""

GateName = Literal["pre_rollout", "confirm_promotion"]
"""The hooks whose answer the rollout waits for."""

NotificationName = Literal["post_rollout", "on_rollback"]
"""The hooks that only tell: delivered at least once through the alert outbox."""

MAX_HOOK_TIMEOUT: Final = 60.0
"""Longest ``timeout`` of one hook request: a gate call holds its rollout's reconcile."""
MAX_HOOK_RETRIES: Final = 10


class HookCall(_Strict):
    """One webhook of a plan: where it is, how it is signed, how long one call may take."""

    # Never shown, like an alert channel's (rollout.redaction): its path may be a credential.
    url: str = Field(
        pattern=r"^https?://",
        repr=False,
        description="Where to POST (http or https); checked like an alert URL. Never shown: "
        "reads give scheme and host only.",
    )
    secret: str | None = Field(
        default=None,
        repr=False,
        description="HMAC-SHA256 key for X-Rollout-Signature, as for webhook alerts. Never "
        "shown.",
    )
    timeout: Duration = Field(
        default=10.0, le=MAX_HOOK_TIMEOUT, description="Seconds one request may take."
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=MAX_HOOK_RETRIES,
        description="Gates: further attempts of one call after a timeout, a connection failure, "
        "408, 429 or 5xx. Notifications: attempts at the outbox's short backoff before it "
        "retries at its longest (they are never dropped).",
    )


class GateHook(HookCall):
    """A hook the rollout waits for: it may answer yes, no, or not yet (``wait``)."""

    interval: Duration = Field(
        default=60.0, description="Seconds between calls while the gate answers 'wait'."
    )
    limit: Duration = Field(
        default=3600.0,
        description="How long the gate may keep the rollout waiting (answers 'wait', or does "
        "not answer) before on_limit applies.",
    )
    on_limit: Literal["pause", "rollback"] = Field(
        default="pause",
        description="At the limit: pause for a person, or roll back (pre_rollout: end without "
        "touching the endpoint).",
    )

    @model_validator(mode="after")
    def _interval(self) -> GateHook:
        if self.interval > self.limit:
            raise FieldProblemError("interval", "must not be longer than limit")
        return self


class Hooks(_Strict):
    """The plan's webhooks; each may be left out. An unknown name is refused."""

    pre_rollout: GateHook | None = Field(
        default=None, description="Must answer yes before the endpoint is touched."
    )
    confirm_promotion: GateHook | None = Field(
        default=None,
        description="Polled once the judge would promote, before the candidate goes to 100 %; "
        "the checks keep running (and may roll back) while it waits.",
    )
    post_rollout: HookCall | None = Field(
        default=None, description="Told once the rollout ends, with its outcome (every end)."
    )
    on_rollback: HookCall | None = Field(
        default=None, description="Told once a rollback is applied (baseline alone again)."
    )

    def gate(self, name: GateName) -> GateHook | None:
        return self.pre_rollout if name == "pre_rollout" else self.confirm_promotion

    def notification(self, name: NotificationName) -> HookCall | None:
        return self.post_rollout if name == "post_rollout" else self.on_rollback

    def named(self) -> list[tuple[str, HookCall]]:
        """``(name, hook)`` for every hook the plan sets."""
        return [
            (name, hook)
            for name in ("pre_rollout", "confirm_promotion", "post_rollout", "on_rollback")
            if (hook := getattr(self, name)) is not None
        ]


class _PlanBase(_Strict):
    name: str | None = Field(default=None, max_length=100, description="Optional label.")
    endpoint: str = Field(description="The Databricks serving endpoint.")
    candidate: CandidateEntity
    baseline: str | None = Field(
        default=None, description="Served entity now serving; default: the one taking 100 %."
    )
    policy: str | dict[str, Any] = Field(
        default="default", description="A built-in policy name or an inline policy mapping."
    )
    alerts: list[AlertChannel] = Field(default_factory=list)
    hooks: Hooks = Field(
        default_factory=Hooks,
        description="Webhooks: gates the rollout waits for, notifications it sends.",
    )
    entity_settings: dict[str, EntitySettings] = Field(
        default_factory=dict,
        description="Per served entity already on the endpoint (the baseline, others): "
        "settings its GET does not show, sent with it on every PUT of the rollout.",
    )
    on_success: OnSuccess | None = Field(
        default=None, description="What to do once the rollout ends promoted."
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _databricks_name(value, "endpoint")

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, value: str | None) -> str | None:
        return None if value is None else _databricks_name(value, "served entity")

    @field_validator("entity_settings")
    @classmethod
    def _settings_names(cls, value: dict[str, EntitySettings]) -> dict[str, EntitySettings]:
        for name in value:
            _databricks_name(name, "served entity")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> _PlanBase:
        if self.baseline is not None and self.baseline == self.candidate.served_name:
            raise FieldProblemError(
                "baseline", f"baseline and candidate are the same served entity ({self.baseline!r})"
            )
        if self.candidate.served_name in self.entity_settings:
            raise FieldProblemError(
                "entity_settings",
                f"{self.candidate.served_name!r} is the candidate: state its settings in "
                "candidate",
            )
        if (
            self.on_success is not None
            and self.on_success.set_alias is not None
            and not UC_MODEL_NAME.match(self.candidate.entity_name)
        ):
            raise FieldProblemError(
                "on_success.set_alias",
                f"{self.candidate.entity_name!r} is not a Unity Catalog model "
                "(catalog.schema.model): only those have aliases",
            )
        if (
            self.on_success is not None
            and self.on_success.set_alias is not None
            and self.on_success.set_alias == self.candidate.alias
        ):
            raise FieldProblemError(
                "on_success.set_alias",
                f"@{self.candidate.alias} already names the candidate; set another alias",
            )
        return self


class CanaryPlan(_PlanBase):
    """Move traffic to the candidate in increasing steps, judging each; 100 % is implied last."""

    strategy: Literal["canary"]
    steps: list[CanaryStep] | None = None
    step_weight: int | None = Field(default=None, gt=0, lt=100)
    max_weight: int | None = Field(default=None, gt=0, le=100)
    bake: Duration | None = Field(default=None, description="Bake per step (linear form).")
    warmup: Duration | None = Field(
        default=None, description="Warm-up per step (linear form); see steps[].warmup."
    )

    @field_validator("steps")
    @classmethod
    def _step_weights(cls, steps: list[CanaryStep] | None) -> list[CanaryStep] | None:
        # A field validator, not a model one: it runs even when other fields are invalid,
        # so the weights' problems are listed with everything else in one answer.
        if steps is None:
            return None
        if not steps:
            raise FieldProblemError("", "a canary needs at least one step")
        problems: list[tuple[str, str]] = []
        previous = 0
        for index, step in enumerate(steps):
            if step.weight == 100:
                problems.append((
                    f"[{index}].weight",
                    ("100 is the promotion, which follows the last step by itself; the "
                    "steps are the judged weights below 100 (to bake with all traffic on "
                    "the candidate and the baseline kept, use strategy: blue_green)"),
                ))
            elif step.weight <= previous:
                problems.append((
                    f"[{index}].weight",
                    (f"{step.weight} must be greater than the previous step's weight "
                    f"({previous}); weights strictly increase"),
                ))
            previous = max(previous, step.weight)
        if problems:
            raise FieldProblemsError(problems)
        return steps

    @model_validator(mode="after")
    def _steps(self) -> CanaryPlan:
        linear = (self.step_weight, self.max_weight, self.bake, self.warmup)
        if self.steps is not None:
            if any(value is not None for value in linear):
                raise FieldProblemError(
                    "steps",
                    "give either steps or the linear form (step_weight, max_weight, bake, "
                    "warmup), not both",
                )
            return self
        if self.step_weight is None or self.bake is None:
            raise FieldProblemError(
                "steps",
                "a canary needs steps, or step_weight with bake (and optionally max_weight)",
            )
        ceiling = self.max_weight if self.max_weight is not None else 100
        if self.step_weight > ceiling:
            raise FieldProblemError(
                "step_weight", f"{self.step_weight} is larger than max_weight ({ceiling})"
            )
        return self

    def canary_steps(self) -> list[CanaryStep]:
        """The steps to run, the linear form expanded; the implied 100 % is not included."""
        if self.steps is not None:
            return list(self.steps)  # validation keeps every step below 100
        if self.step_weight is None or self.bake is None:  # pragma: no cover - _steps checks
            raise FieldProblemError("steps", "a canary needs steps, or step_weight with bake")
        ceiling = min(self.max_weight if self.max_weight is not None else 100, 99)
        return [
            CanaryStep(weight=weight, bake=self.bake, warmup=self.warmup)
            for weight in range(self.step_weight, ceiling + 1, self.step_weight)
        ]


class ABPlan(_PlanBase):
    """Split traffic for a fixed time, then report and promote the winner if it clearly wins."""

    strategy: Literal["ab"]
    split: int = Field(default=50, gt=0, lt=100, description="Candidate percentage.")
    duration: Duration = Field(description="How long the split runs before the report.")
    objective: str = Field(
        default="latency_p99_ms", description="The metric the candidate must win on."
    )
    objective_direction: Literal["lower", "higher"] = Field(
        default="lower", description="Which way is better for the objective."
    )
    warmup: Duration | None = Field(
        default=None,
        description="Time after the split change whose metric windows are served but not "
        "scored (cold replicas); default: the policy's warmup_windows.",
    )

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: str) -> str:
        if value not in OBJECTIVES:
            raise ValueError(
                f"{value!r} is not a metric an A/B report can compare; use one of "
                f"{', '.join(OBJECTIVES)}"
            )
        return value


class SmokeTest(_Strict):
    requests: int = Field(default=10, ge=1, le=1000, description="Invocations sent.")
    body: dict[str, Any] = Field(
        default_factory=lambda: {"dataframe_records": [{}]},
        description="Invocation body sent to the candidate.",
    )
    max_failures: int = Field(default=0, ge=0, description="Failed invocations tolerated.")


class BlueGreenPlan(_PlanBase):
    """Deploy at 0 %, check, switch all traffic at once, bake with the baseline kept."""

    strategy: Literal["blue_green"]
    bake: Duration = Field(description="How long to watch after the switch.")
    warmup: Duration = Field(
        default=300.0,
        description="Time at 0 % before the switch: the candidate warms up, and the "
        "baseline's metrics over it are the control the bake is judged against.",
    )
    smoke: SmokeTest = Field(default_factory=SmokeTest)
    schema_check: bool = Field(
        default=True, description="Require the candidate's input schema to accept the baseline's."
    )

    @model_validator(mode="after")
    def _smoke(self) -> BlueGreenPlan:
        if self.smoke.max_failures >= self.smoke.requests:
            raise FieldProblemError("smoke.max_failures", "must be smaller than smoke.requests")
        return self


AnyPlan = CanaryPlan | ABPlan | BlueGreenPlan
Plan = Annotated[AnyPlan, Field(discriminator="strategy")]

_STRATEGY_FIELDS = {
    "canary": set(CanaryPlan.model_fields),
    "ab": set(ABPlan.model_fields),
    "blue_green": set(BlueGreenPlan.model_fields),
}


class _PlanDocument(BaseModel):
    plan: Plan


class PlanIssue(BaseModel):
    """One problem in a plan: where it is and what is wrong."""

    field: str
    message: str


class PlanError(ValueError):
    """A plan that cannot run; ``issues`` lists every problem found, each naming its field.

    The tree::

        PlanError                   a field's value is invalid (API 422, validate exit 1)
        └── PlanDocumentError       not a plan document: unreadable, or a non-scalar where a
            │                       scalar belongs (API 422, validate exit 2, one line)
            └── PlanTooLargeError   larger than MAX_PLAN_BYTES once YAML aliases are
                                    expanded (API 413, validate exit 2)
    """

    def __init__(self, issues: list[PlanIssue]) -> None:
        self.issues = issues
        super().__init__("invalid plan:\n" + "\n".join(f"  {i.field}: {i.message}" for i in issues))


class PlanDocumentError(PlanError):
    """The text is not a plan document: unreadable, or of the wrong shape somewhere."""


class PlanTooLargeError(PlanDocumentError):
    """The plan, with YAML aliases expanded, is larger than ``MAX_PLAN_BYTES``."""


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "(plan)"


def _split_path(path: str) -> tuple[int | str, ...]:
    tokens = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    return tuple(int(t[1:-1]) if t.startswith("[") else t for t in tokens)


def _strategy_misfit(data: Mapping[str, Any]) -> list[PlanIssue]:
    """Fields that belong to another strategy get a message saying which one."""
    strategy = data.get("strategy")
    if strategy not in _STRATEGY_FIELDS:
        return []
    issues = []
    own = _STRATEGY_FIELDS[strategy]
    for key in data:
        if key in own:
            continue
        owners = sorted(s for s, fields in _STRATEGY_FIELDS.items() if key in fields)
        if owners:
            issues.append(
                PlanIssue(
                    field=key,
                    message=f"not a field of a {strategy} plan (it belongs to "
                    f"{' / '.join(owners)})",
                )
            )
    return issues


def _check_selectors(data: Mapping[str, Any]) -> None:
    """``strategy`` and ``policy`` choose how the rest is read: of the wrong shape, nothing
    else can be said (and a list or mapping cannot be looked up as a strategy name)."""
    for key, what in (("strategy", "canary, ab or blue_green"), ("policy", None)):
        value = data.get(key)
        if isinstance(value, list) or (isinstance(value, Mapping) and what is not None):
            expected = f"one of {what}" if what else "a policy name or an inline policy mapping"
            raise PlanDocumentError(
                [PlanIssue(field=key, message=f"expected {expected}, got {_kind(value)}")]
            )


def _pydantic_issues(exc: ValidationError) -> tuple[list[PlanIssue], list[PlanIssue]]:
    """One ``PlanIssue`` per pydantic error, with the plan's own field paths; and, apart, the
    fields given a list or mapping where one value belongs."""
    issues: list[PlanIssue] = []
    shape: list[PlanIssue] = []
    for error in exc.errors():
        problem = error.get("ctx", {}).get("error")
        if isinstance(problem, FieldProblemsError):
            loc = tuple(error["loc"])[1:]  # drop the wrapper's "plan"
            if loc and loc[0] in _STRATEGY_FIELDS:
                loc = loc[1:]  # drop the discriminator tag pydantic inserts
            issues.extend(
                PlanIssue(field=_field_path((*loc, *_split_path(field))), message=text)
                for field, text in problem.problems
            )
            continue
        found = _issue_of(error)
        if found is None:
            continue
        issue, misshapen = found
        issues.append(issue)
        if misshapen:
            message = f"expected a single value, got {_kind(error['input'])}"
            shape.append(PlanIssue(field=issue.field, message=message))
    return issues, shape


class _CommonDocument(BaseModel):
    plan: _PlanBase


def _validation_issues(
    model: type[BaseModel], data: Mapping[str, Any], context: Mapping[str, Any]
) -> list[PlanIssue]:
    try:
        model.model_validate({"plan": dict(data)}, context=dict(context))
    except ValidationError as exc:
        issues, shape = _pydantic_issues(exc)
        if shape:
            raise PlanDocumentError(shape) from None
        return issues
    return []


def _plan_issues(data: Mapping[str, Any], context: Mapping[str, Any]) -> list[PlanIssue]:
    """Every problem of a plan mapping, in one pass: the strategy, fields of another
    strategy, then each field's own problems (the rest of the plan is still checked when
    the strategy is missing or a field belongs elsewhere). A list or mapping where one value
    belongs is not a plan at all: ``PlanDocumentError`` naming those fields."""
    issues: list[PlanIssue] = []
    strategy = data.get("strategy")
    if strategy not in _STRATEGY_FIELDS:
        got = "missing" if "strategy" not in data else f"{strategy!r} is not a strategy"
        issues.append(PlanIssue(field="strategy", message=f"{got}: use canary, ab or blue_green"))
        # Without a strategy only the fields every plan shares can be judged.
        common = {k: v for k, v in data.items() if k in _PlanBase.model_fields}
        issues.extend(_validation_issues(_CommonDocument, common, context))
        return issues
    misfits = _strategy_misfit(data)
    issues.extend(misfits)
    rest = {k: v for k, v in data.items() if k not in {m.field for m in misfits}}
    issues.extend(_validation_issues(_PlanDocument, rest, context))
    return issues


def validate_plan(data: object, *, stored: bool = False) -> AnyPlan:
    """Validate a parsed plan mapping; raise ``PlanError`` naming every bad field, or
    ``PlanDocumentError`` for what is not a plan (not a mapping, too large, a list or mapping
    where one value belongs). ``stored``: a plan as the controller stored it, which may carry
    the fields it fills at submission (a resolved alias beside its version)."""
    context = {STORED: stored}
    if not isinstance(data, Mapping):
        raise PlanDocumentError([PlanIssue(field="(plan)", message="a plan must be a mapping")])
    check_size(data)
    _check_selectors(data)
    issues = _plan_issues(data, context)
    if issues:
        raise PlanError(issues)
    return _PlanDocument.model_validate({"plan": dict(data)}, context=context).plan


def _policy_issues(ref: object, library: PolicyLibrary) -> list[PlanIssue]:
    if not isinstance(ref, str | Mapping):
        return []  # the plan's own validation already names the field
    try:
        library.resolve(ref)
    except PolicyNotFoundError as exc:
        return [PlanIssue(field="policy", message=str(exc))]
    except ValidationError as exc:
        return [PlanIssue(field=path, message=message) for path, message in policy_errors(exc)]
    return []


def check_plan(data: object, library: PolicyLibrary | None = None) -> tuple[AnyPlan, Policy]:
    """Validate a parsed plan and resolve its policy in one pass: ``PlanError`` lists the
    plan's problems and its policy's together (what ``rollout validate`` and the API's 422
    report); ``PlanDocumentError`` as ``validate_plan``."""
    library = library if library is not None else PolicyLibrary()
    try:
        plan = validate_plan(data)
    except PlanDocumentError:
        raise
    except PlanError as exc:
        if isinstance(data, Mapping):
            flagged = {i.field for i in exc.issues}
            exc.issues.extend(
                i for i in _policy_issues(data.get("policy", "default"), library)
                if i.field not in flagged
            )
            raise PlanError(exc.issues) from None
        raise
    return plan, resolve_policy(plan, library)


def _issue_of(error: ErrorDetails) -> tuple[PlanIssue, bool] | None:
    """A pydantic error as a plan issue, and whether it is a list or mapping where one value
    belongs; None for an error that only repeats another."""
    loc = tuple(error["loc"])[1:]  # drop the wrapper's "plan"
    if loc and loc[0] in _STRATEGY_FIELDS:
        loc = loc[1:]  # drop the discriminator tag pydantic inserts
    if loc[:1] == ("policy",) and len(loc) > 1 and isinstance(loc[1], str):
        # policy is a name or a mapping: pydantic reports against both, tagged.
        if _POLICY_NAME_TAG.match(loc[1]):
            return None  # a mapping was given; its own errors follow
        if loc[1].startswith("dict["):
            loc = (loc[0], *loc[2:])
    message = error["msg"]
    problem = error.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblemError):
        loc = (*loc, *problem.parts())
        message = str(problem)
    elif error["type"] == "extra_forbidden" and len(loc) == 2 and loc[0] == "hooks":
        message = f"not a hook: use {', '.join(Hooks.model_fields)}"
    elif error["type"] == "extra_forbidden":
        message = "unknown field"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    misshapen = (
        error["type"] in _SCALAR_ERRORS
        and isinstance(error.get("input"), dict | list)
        and not isinstance(problem, FieldProblemError)  # a whole model's own check
    )
    return PlanIssue(field=_field_path(loc), message=message), misshapen


_POLICY_NAME_TAG = re.compile(r"^(constrained-)?str$")

# Errors of a field that takes one value (a string, a number, a flag, a word or a duration).
_SCALAR_ERRORS = frozenset(
    {
        "string_type",
        "int_type",
        "int_parsing",
        "float_type",
        "float_parsing",
        "bool_type",
        "bool_parsing",
        "literal_error",
        "enum",
        "value_error",
    }
)


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def check_size(data: object) -> None:
    """Refuse a document whose compact JSON would exceed ``MAX_PLAN_BYTES``, or holding a
    string or key longer than ``MAX_STRING_CHARS``, before anything copies it.

    YAML aliases make one node stand for many: the walk visits every occurrence, so the
    count is of the expanded document (the stored form), and it stops as soon as the budget
    is spent, so an alias bomb costs at most ``MAX_PLAN_BYTES`` of counting. A cycle is cut
    by the same budget (every visit costs at least one byte).
    """
    spent = 0
    stack: list[tuple[object, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            spent += 2 + max(len(value) - 1, 0)
            for key, item in value.items():
                name = str(key)
                where = f"{path}.{name}" if path else name
                if len(name) > MAX_STRING_CHARS:
                    raise PlanDocumentError(
                        [PlanIssue(field=path or "(plan)", message=_long("a key", len(name)))]
                    )
                spent += len(name.encode("utf-8", "replace")) + 3
                stack.append((item, where))
        elif isinstance(value, list):
            spent += 2 + max(len(value) - 1, 0)
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(value))
        elif isinstance(value, str):
            if len(value) > MAX_STRING_CHARS:
                raise PlanDocumentError(
                    [PlanIssue(field=path or "(plan)", message=_long("the string", len(value)))]
                )
            spent += len(value.encode("utf-8", "replace")) + 2
        else:
            spent += len(str(value))
        if spent > MAX_PLAN_BYTES:
            raise PlanTooLargeError(
                [
                    PlanIssue(
                        field="(document)",
                        message=f"the plan is larger than {MAX_PLAN_BYTES} bytes once YAML "
                        "aliases are expanded (or refers to itself)",
                    )
                ]
            )


def _long(what: str, length: int) -> str:
    return f"{what} is {length} characters long; the limit is {MAX_STRING_CHARS}"


def resolve_policy(plan: AnyPlan, library: PolicyLibrary | None = None) -> Policy:
    """The plan's policy (a built-in name or inline), or ``PlanError`` naming the bad field."""
    library = library if library is not None else PolicyLibrary()
    try:
        return library.resolve(plan.policy)
    except PolicyNotFoundError as exc:
        raise PlanError([PlanIssue(field="policy", message=str(exc))]) from None
    except ValidationError as exc:
        raise PlanError(
            [PlanIssue(field=path, message=message) for path, message in policy_errors(exc)]
        ) from None


def parse_document(
    text: str, *, content_type: str | None = None, source: str | None = None
) -> object:
    """Parse YAML or JSON text (JSON is YAML, but JSON errors read better from ``json``).
    ``source`` names the text in YAML errors (a file name; default "the plan")."""
    kind = (content_type or "").split(";")[0].strip().lower()
    try:
        if kind == "application/json" or (not kind and text.lstrip().startswith("{")):
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PlanDocumentError(
            [PlanIssue(field="(document)", message=f"invalid JSON at line {exc.lineno}: {exc.msg}")]
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        # PyYAML names the stream "<unicode string>"; say which document it is.
        for mark in (where, getattr(exc, "context_mark", None)):
            if mark is not None:
                mark.name = source or "the plan"
        raise PlanDocumentError(
            [PlanIssue(field="(document)", message=f"invalid YAML{line}: {exc}")]
        ) from None


def load_plan(
    text: str,
    *,
    content_type: str | None = None,
    library: PolicyLibrary | None = None,
    source: str | None = None,
) -> tuple[AnyPlan, Policy]:
    """Parse and validate a plan document and resolve its policy (every problem at once)."""
    return check_plan(parse_document(text, content_type=content_type, source=source), library)


def effective_ratio(ratio: float, quantile_ms: float,
                    bounds: tuple[float, ...] = EXPORTED_LATENCY_BOUNDS_MS) -> float | None:
    """The tolerance a latency check really applies when the baseline's quantile is
    ``quantile_ms``: the level is the first bucket bound at or beyond ``ratio`` x it."""
    target = ratio * quantile_ms
    level = next((b for b in bounds if b >= target), None)
    return None if level is None else level / quantile_ms


def plan_notes(
    plan: AnyPlan, policy: Policy, *, metrics_window: float = 60.0, buckets: bool = True
) -> list[str]:
    """What a valid plan will do that its author may not expect (shown by validate and
    submit; never a refusal). ``buckets``: include the general note on latency tolerances
    finer than the exported buckets (a submission says it with the endpoint's numbers)."""
    notes: list[str] = []
    for check in policy.metric_checks if buckets else ():
        if check.compare != "baseline" or check.info.kind != "quantile":
            continue
        ratio = check.max_ratio or 1.0
        # Serving latencies live below 10 s, where the bounds are a 1-2.5-5 ladder.
        ladder = [b for b in EXPORTED_LATENCY_BOUNDS_MS if b <= 10_000.0]
        widest = max(b / a for a, b in itertools.pairwise(ladder))
        if ratio < widest:
            example = effective_ratio(ratio, 120.0)
            notes.append(
                f"{check.describe()}: the tolerance is finer than the exported latency "
                f"buckets (adjacent bounds up to {widest:g}x apart below 10 s); the check counts "
                "requests above the first bucket bound beyond the tolerance, so the effective "
                f"tolerance is between {ratio:g}x and {ratio * widest:.3g}x depending on where "
                f"the baseline's quantile sits (a 120 ms baseline is judged at "
                f"{(example or 0) * 120:g} ms, {example or 0:.2g}x); every verdict shows the "
                "level used"
            )
    default_warmup = policy.warmup_windows * metrics_window
    if isinstance(plan, CanaryPlan):
        for index, step in enumerate(plan.canary_steps()):
            warmup = default_warmup if step.warmup is None else step.warmup
            if warmup >= step.bake:
                notes.append(
                    f"steps[{index}]: the warm-up ({format_duration(warmup)}) is not shorter "
                    f"than the bake ({format_duration(step.bake)}): nothing is scored before "
                    "the bake ends, so the step waits for its deadline"
                )
    return notes


def resolution_notes(policy: Policy, baseline_latency: Histogram | None) -> list[str]:
    """For a submission: the latency checks whose tolerance the endpoint's buckets cannot
    resolve at the baseline's current quantile, with the tolerance they will apply."""
    if baseline_latency is None or baseline_latency.total <= 0:
        return []
    bounds = tuple(b for b in baseline_latency.bounds if math.isfinite(b))
    notes = []
    for check in policy.metric_checks:
        if check.compare != "baseline" or check.info.kind != "quantile" or check.info.quantile \
                is None or check.info.source != "latency":
            continue
        value = baseline_latency.quantile(check.info.quantile)
        if value is None or value <= 0:
            continue
        target = check.tolerated(value)
        level = next((b for b in bounds if b >= target), None)
        if level is None:
            notes.append(f"{check.describe()}: the baseline's {check.metric} is about "
                         f"{value:.0f} ms, beyond the exported buckets: the check cannot "
                         "judge it")
        elif level / value > (target / value) * 1.2:
            notes.append(
                f"{check.describe()}: the baseline's {check.metric} is about {value:.0f} ms; "
                f"the exported buckets put the first bound beyond {target:.0f} ms at "
                f"{level:g} ms, so the check tells a regression beyond {level / value:.2g}x "
                f"the baseline, not {target / value:.3g}x"
            )
    return notes


def describe_steps(plan: CanaryPlan) -> str:
    """One line for logs and the CLI: '5% for 10m, 25% for 10m, then 100%'."""
    steps = ", ".join(f"{s.weight}% for {format_duration(s.bake)}" for s in plan.canary_steps())
    return f"{steps}, then 100%"


def judged_weights(plan: AnyPlan) -> list[int]:
    """The candidate weights the engine judges, in order (100 % is the promotion, not a
    judged step): the one list ``decide`` steps through and the API shows."""
    if isinstance(plan, CanaryPlan):
        return [step.weight for step in plan.canary_steps()] or [100]
    if isinstance(plan, ABPlan):
        return [plan.split]
    return [100]
