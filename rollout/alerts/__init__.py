"""Alerts: notifiers for webhook, Slack, Alertmanager, Teams and PagerDuty, and the outbox.

Where this sits in the path of a rollout: a decision that alerts writes one outbox row per
alert and channel in the same transaction as its events; ``AlertDispatcher`` claims the rows,
sends each through the notifier of its channel (``WebhookNotifier``, ``SlackNotifier``,
``AlertmanagerNotifier``, ``TeamsNotifier``, ``PagerDutyNotifier``) and records the outcome.
Delivery is at least once and deduplicated by the row's id (PagerDuty: by its ``dedup_key``);
the engine never waits on a receiver. ``README.md`` beside this file documents each channel's
body, the webhook's schema and how to verify its signature.
"""

from rollout.alerts.alertmanager import AlertmanagerNotifier, alertmanager_alerts
from rollout.alerts.dispatcher import (
    DELIVERED,
    FAILED,
    RETRY,
    AlertDispatcher,
    OnDelivery,
    default_notifiers,
    parse_channels,
    retry_delay,
)
from rollout.alerts.errors import (
    AlertError,
    ChannelConfigError,
    DeliveryError,
    EventRefused,
    MalformedAlert,
    ReceiverRejected,
    ReceiverUnreachable,
    TargetRefused,
    TargetUnresolvable,
)
from rollout.alerts.notifier import Notifier, SendContext
from rollout.alerts.pagerduty import PagerDutyNotifier, pagerduty_events
from rollout.alerts.payload import AlertPayload
from rollout.alerts.slack import SlackNotifier, slack_message
from rollout.alerts.targets import TargetPolicy, guarded_client
from rollout.alerts.teams import TeamsNotifier, teams_message
from rollout.alerts.webhook import SCHEMA, WebhookNotifier, sign, webhook_body

__all__ = [
    "DELIVERED",
    "FAILED",
    "RETRY",
    "SCHEMA",
    "AlertDispatcher",
    "AlertError",
    "AlertPayload",
    "AlertmanagerNotifier",
    "ChannelConfigError",
    "DeliveryError",
    "EventRefused",
    "MalformedAlert",
    "Notifier",
    "OnDelivery",
    "PagerDutyNotifier",
    "ReceiverRejected",
    "ReceiverUnreachable",
    "SendContext",
    "SlackNotifier",
    "TargetPolicy",
    "TargetRefused",
    "TargetUnresolvable",
    "TeamsNotifier",
    "WebhookNotifier",
    "alertmanager_alerts",
    "default_notifiers",
    "guarded_client",
    "pagerduty_events",
    "parse_channels",
    "retry_delay",
    "sign",
    "slack_message",
    "teams_message",
    "webhook_body",
]
