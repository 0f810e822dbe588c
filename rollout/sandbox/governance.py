"""An endpoint's governance settings in the sandbox: AI gateway, rate limits, permissions.

The sandbox is the fake Databricks workspace behind the serving client, and also what the
databricks-sdk's ``serving_endpoints`` API is tested against. A rollout never changes these
settings, but an SDK user (or Terraform) does, through calls of their own beside
``PUT .../config``; this module validates those bodies and shapes the answers as the SDK's
dataclasses read them (``PutResponse``, ``PutAiGatewayResponse``, ``ServingEndpointPermissions``,
``GetServingEndpointPermissionLevelsResponse``). ``rollout.sandbox.workspace`` keeps one
``Governance`` per endpoint; ``rollout.sandbox.app`` routes the calls. Pure: no I/O, no clock.

What is simulated and what is only kept: the AI gateway and rate limits are stored and echoed
(on their own call and in the endpoint's GET), never enforced on invocations. The access
control list is stored and echoed; who may call what is still decided by the sandbox's tokens
(``/_sandbox/v1/tokens``), not by the list.

Errors (``ApiError``, 400 ``INVALID_PARAMETER_VALUE`` unless said otherwise)::

    ApiError
    ├── a body field of the wrong type or value (named in the message)
    ├── an access-control entry naming no principal, or two
    └── 404 RESOURCE_DOES_NOT_EXIST: no endpoint has that id (permissions are keyed by id)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from rollout.sandbox.models import PERMISSIONS, ApiError, describe_validation_error, invalid

PERMISSION_DESCRIPTIONS = {
    "CAN_MANAGE": "Can manage the endpoint: change its config, permissions, and delete it.",
    "CAN_QUERY": "Can query the endpoint and view its details.",
    "CAN_VIEW": "Can view the endpoint's details, logs and metrics.",
}
_PRINCIPALS = ("user_name", "group_name", "service_principal_name")
# Workspace admins manage every endpoint; the grant is inherited from the endpoints' root.
_ADMINS = {
    "group_name": "admins",
    "all_permissions": [
        {
            "permission_level": "CAN_MANAGE",
            "inherited": True,
            "inherited_from_object": ["/serving-endpoints/"],
        }
    ],
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RateLimitInput(_Body):
    """``RateLimit`` (legacy ``PUT .../rate-limits``)."""

    calls: StrictInt = Field(ge=0)
    renewal_period: Literal["minute"]
    key: Literal["user", "endpoint"] | None = None


class RateLimitsPut(_Body):
    rate_limits: list[RateLimitInput] = Field(default_factory=list)


class GatewayRateLimitInput(_Body):
    """``AiGatewayRateLimit``."""

    renewal_period: Literal["minute"]
    calls: StrictInt | None = Field(default=None, ge=0)
    tokens: StrictInt | None = Field(default=None, ge=0)
    key: Literal["user", "endpoint", "user_group", "service_principal"] | None = None
    principal: str | None = None


class AiGatewayPut(_Body):
    """``PUT .../ai-gateway``: a full replace of the five parts (absent ones are unset)."""

    fallback_config: dict[str, Any] | None = None
    guardrails: dict[str, Any] | None = None
    inference_table_config: dict[str, Any] | None = None
    rate_limits: list[GatewayRateLimitInput] | None = None
    usage_tracking_config: dict[str, Any] | None = None


class AccessControlInput(_Body):
    """``ServingEndpointAccessControlRequest``: one principal and its level."""

    user_name: str | None = None
    group_name: str | None = None
    service_principal_name: str | None = None
    permission_level: Literal["CAN_MANAGE", "CAN_QUERY", "CAN_VIEW"]


class PermissionsBody(_Body):
    access_control_list: list[AccessControlInput] = Field(default_factory=list)


class NotificationsPatch(_Body):
    email_notifications: dict[str, Any] | None = None


def parse(model: type[_Body], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(describe_validation_error(exc)) from exc


def _principal(entry: AccessControlInput, where: str) -> tuple[str, str]:
    named = [(k, getattr(entry, k)) for k in _PRINCIPALS if getattr(entry, k)]
    if len(named) != 1:
        raise invalid(
            f"'{where}' must name exactly one of user_name, group_name or "
            f"service_principal_name ({len(named)} given)."
        )
    return named[0]


@dataclass
class Governance:
    """What one endpoint keeps beside its config. ``acl`` maps (principal kind, name) to level."""

    ai_gateway: dict[str, Any] | None = None
    rate_limits: list[dict[str, Any]] = field(default_factory=list)
    email_notifications: dict[str, Any] | None = None
    budget_policy_id: str | None = None
    acl: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def at_creation(cls, creator: str, body: dict[str, Any]) -> Governance:
        """From a create body: the creator manages the endpoint; the optional parts as sent."""
        gov = cls(acl={("user_name", creator): "CAN_MANAGE"})
        if body.get("ai_gateway") is not None:
            gov.put_ai_gateway(_dict(body["ai_gateway"], "ai_gateway"))
        if body.get("rate_limits") is not None:
            gov.put_rate_limits({"rate_limits": body["rate_limits"]})
        if body.get("email_notifications") is not None:
            gov.email_notifications = _dict(body["email_notifications"], "email_notifications")
        policy = body.get("budget_policy_id")
        if policy is not None and not isinstance(policy, str):
            raise invalid("'budget_policy_id' must be a string.")
        gov.budget_policy_id = policy
        return gov

    def describe_into(self, out: dict[str, Any]) -> None:
        """Add what a GET of the endpoint shows of these settings to ``out``."""
        if self.ai_gateway is not None:
            out["ai_gateway"] = dict(self.ai_gateway)
        if self.email_notifications is not None:
            out["email_notifications"] = dict(self.email_notifications)
        if self.budget_policy_id is not None:
            out["budget_policy_id"] = self.budget_policy_id

    def put_rate_limits(self, data: dict[str, Any]) -> dict[str, Any]:
        body: RateLimitsPut = parse(RateLimitsPut, data)
        self.rate_limits = [r.model_dump(exclude_none=True) for r in body.rate_limits]
        return {"rate_limits": list(self.rate_limits)}

    def put_ai_gateway(self, data: dict[str, Any]) -> dict[str, Any]:
        body: AiGatewayPut = parse(AiGatewayPut, data)
        parts = body.model_dump(exclude_none=True)
        # A full replace: a part left out is unset, and nothing sent unsets the gateway.
        self.ai_gateway = parts or None
        return dict(parts)

    def patch_notifications(self, data: dict[str, Any]) -> dict[str, Any]:
        body: NotificationsPatch = parse(NotificationsPatch, data)
        self.email_notifications = body.email_notifications
        return {} if body.email_notifications is None else {
            "email_notifications": body.email_notifications
        }

    def set_permissions(self, data: dict[str, Any], creator: str) -> None:
        """PUT: the list replaces every direct grant (the admins' inherited one stays)."""
        body: PermissionsBody = parse(PermissionsBody, data)
        acl = self._grants(body)
        # Databricks keeps the endpoint manageable: an empty list leaves the creator's grant.
        self.acl = acl or {("user_name", creator): "CAN_MANAGE"}

    def update_permissions(self, data: dict[str, Any]) -> None:
        """PATCH: the listed principals get the listed levels; others keep theirs."""
        body: PermissionsBody = parse(PermissionsBody, data)
        self.acl.update(self._grants(body))

    @staticmethod
    def _grants(body: PermissionsBody) -> dict[tuple[str, str], str]:
        grants: dict[tuple[str, str], str] = {}
        for i, entry in enumerate(body.access_control_list):
            grants[_principal(entry, f"access_control_list[{i}]")] = entry.permission_level
        return grants

    def permissions(self, endpoint_id: str) -> dict[str, Any]:
        """``ServingEndpointPermissions``: direct grants sorted by principal, then the admins."""
        entries: list[dict[str, Any]] = []
        for (kind, name), level in sorted(self.acl.items()):
            entries.append({
                kind: name,
                **({"display_name": name} if kind == "user_name" else {}),
                "all_permissions": [{"permission_level": level, "inherited": False}],
            })
        entries.append(dict(_ADMINS))
        return {
            "object_id": f"/serving-endpoints/{endpoint_id}",
            "object_type": "serving-endpoint",
            "access_control_list": entries,
        }


def permission_levels() -> dict[str, Any]:
    """``GetServingEndpointPermissionLevelsResponse``, highest level first."""
    return {
        "permission_levels": [
            {"permission_level": level, "description": PERMISSION_DESCRIPTIONS[level]}
            for level in reversed(PERMISSIONS)
        ]
    }


def _dict(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"'{name}' must be an object.")
    return value


def not_found_id(endpoint_id: str) -> ApiError:
    return ApiError(404, "RESOURCE_DOES_NOT_EXIST",
                    f"Serving endpoint with id {endpoint_id} not found")


__all__ = ["Governance", "not_found_id", "permission_levels"]
