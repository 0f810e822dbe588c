"""Alert channels through the API: where they may point, and how an operator replaces them.

Where this sits: users submit plans (with their alert channels) through the HTTP API and the
engine alerts through the dispatcher. Channels carry secrets (a webhook's HMAC key, a Slack URL
whose path is the credential): every read of a rollout shows them redacted
(``rollout.redaction``), so nobody can read them back, and ``PUT /rollouts/{id}/alerts`` is how
an operator rotates them: the new channels replace the plan's, checked like a submission's,
with an ``alerts_replaced`` event that names them redacted. Outbox rows already written keep
the channel they were written for.

Submissions and replacements both refuse a channel URL that resolves to an address alerts may
not go to (``rollout.alerts.targets``): 422 naming ``alerts[i].url``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, Request

from rollout.alerts.targets import TargetPolicy
from rollout.api.documents import JSON_TYPES, media_type, parse_json_object
from rollout.api.errors import ApiError, field_issues
from rollout.api.schemas import AlertsBody, Rollout
from rollout.plan import AlertChannel, Hooks, PlanError, validate_plan
from rollout.redaction import redacted_channel
from rollout.store.errors import StaleVersion
from rollout.store.model import NewEvent, RolloutRecord

if TYPE_CHECKING:
    from rollout.api.app import _Service

log = structlog.get_logger("rollout.api")

# A replacement races the engine's own commits (each bumps the version): a few tries suffice.
_REPLACE_ATTEMPTS = 5


async def target_issues(
    targets: TargetPolicy, channels: Sequence[AlertChannel], prefix: str = "alerts"
) -> list[dict[str, str]]:
    """One detail per channel whose URL is refused, naming ``alerts[i].url``."""
    return await _url_issues(
        targets, [(f"{prefix}[{index}].url", c.url) for index, c in enumerate(channels)]
    )


async def hook_issues(targets: TargetPolicy, hooks: Hooks) -> list[dict[str, str]]:
    """One detail per plan hook whose URL is refused, naming ``hooks.<name>.url``: hooks go
    only where alerts may go."""
    return await _url_issues(targets, [(f"hooks.{name}.url", h.url) for name, h in hooks.named()])


async def _url_issues(
    targets: TargetPolicy, urls: Sequence[tuple[str, str]]
) -> list[dict[str, str]]:
    issues = []
    for field, url in urls:
        refusal = await targets.refusal(url)
        if refusal is not None:
            issues.append({"field": field, "message": refusal})
    return issues


def refused_targets(issues: list[dict[str, str]]) -> ApiError:
    return ApiError(
        422,
        "invalid_plan",
        "alert targets refused: " + "; ".join(f"{d['field']}: {d['message']}" for d in issues),
        details=issues,
    )


def channel_routes(
    router: APIRouter,
    service: _Service,
    write_deps: list[Any],
    responses: dict[int | str, dict[str, Any]],
) -> None:
    @router.put(
        "/rollouts/{rollout_id}/alerts",
        response_model=Rollout,
        dependencies=write_deps,
        summary="Replace a rollout's alert channels (rotate a secret or a webhook URL)",
        responses=responses,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/AlertsBody"}}
                },
            }
        },
    )
    async def replace_alerts(request: Request, rollout_id: str) -> Rollout:
        channels = _alerts_body(request, await request.body())
        issues = await target_issues(service.alert_targets, channels)
        if issues:
            raise refused_targets(issues)
        record = await _replace(service, rollout_id, channels)
        log.info(
            "api.alerts_replaced",
            rollout=record.id,
            channels=[redacted_channel(c.model_dump(mode="json")) for c in channels],
        )
        service.poke(record.id)
        return service.view(record)


async def _replace(
    service: _Service, rollout_id: str, channels: Sequence[AlertChannel]
) -> RolloutRecord:
    dumped = [channel.model_dump(mode="json", exclude_none=True) for channel in channels]
    for _ in range(_REPLACE_ATTEMPTS):
        record = await service.load(rollout_id)
        if record.terminal:
            raise ApiError(
                409,
                "rollout_finished",
                f"rollout {record.id} has finished ({record.phase}); it sends no more alerts",
            )
        plan = {**record.plan, "alerts": dumped}
        try:
            validate_plan(plan, stored=True)  # the stored plan stays one the engine can read
        except PlanError as exc:
            raise ApiError(
                422, "invalid_request", f"the channels do not fit the plan: {exc}"
            ) from exc
        event = NewEvent(
            kind="alerts_replaced",
            from_phase=record.phase,
            to_phase=record.phase,
            reason=f"alert channels replaced ({len(channels)})",
            data={"channels": [redacted_channel(item) for item in dumped]},
            at=service.clock.now(),
        )
        try:
            return await service.in_thread(
                _replace_plan, service, record, plan, event
            )
        except StaleVersion:
            continue
    raise ApiError(503, "store_unavailable", "the rollout kept changing; try again")


def _replace_plan(
    service: _Service, record: RolloutRecord, plan: dict[str, Any], event: NewEvent
) -> RolloutRecord:
    return service.store.replace_plan(
        record.id, record.version, plan=plan, updated_at=event.at, event=event
    )


def _alerts_body(request: Request, body: bytes) -> list[AlertChannel]:
    kind = media_type(request.headers.get("content-type"))
    if kind not in JSON_TYPES:
        raise ApiError(
            415, "unsupported_media_type", f"the body is application/json, not {kind or 'untyped'}"
        )
    try:
        data = parse_json_object(body)
    except PlanError as exc:
        details = [{"field": issue.field, "message": issue.message} for issue in exc.issues]
        raise ApiError(422, "invalid_request", "invalid body", details=details) from exc
    try:
        return list(AlertsBody.model_validate(data).alerts)
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        details = field_issues(errors()) if callable(errors) else []
        raise ApiError(
            422,
            "invalid_request",
            "invalid body: " + "; ".join(f"{d['field']}: {d['message']}" for d in details),
            details=details,
        ) from exc
