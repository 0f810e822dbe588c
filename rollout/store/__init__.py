"""Durable state of rollouts: one interface (``Store``), two backends, chosen by URL.

In the path of a rollout the store holds everything that must survive a restart: the rollout
(phase, plan, the engine's state, when it is next due), its append-only event log, the alert
outbox, queued manual commands and, for replicas, leases. The runner commits each decision
(new state + events + alerts + consumed commands) in one transaction guarded by a version
number. See ``rollout.store.base.Store`` for the contract and ``rollout.store.errors`` for the
exceptions.
"""

from rollout.store.base import Store
from rollout.store.errors import (
    ActiveRolloutExists,
    AlertNotFound,
    DuplicateRollout,
    RolloutNotFound,
    SchemaError,
    StaleVersion,
    StoreError,
    StoreUnavailable,
)
from rollout.store.factory import open_store
from rollout.store.model import (
    ABORTED,
    ACTIVE,
    COMMAND_KINDS,
    FAILED,
    PAUSED,
    PENDING,
    PHASES,
    PREPARING,
    PROGRESSING,
    PROMOTING,
    ROLLED_BACK,
    ROLLING_BACK,
    SUCCEEDED,
    TERMINAL,
    ArmSummary,
    Command,
    EventRecord,
    JsonObject,
    NewAlert,
    NewEvent,
    OutboxAlert,
    RolloutRecord,
    RolloutSummary,
    SummaryCursor,
)

__all__ = [
    "ABORTED",
    "ACTIVE",
    "COMMAND_KINDS",
    "FAILED",
    "PAUSED",
    "PENDING",
    "PHASES",
    "PREPARING",
    "PROGRESSING",
    "PROMOTING",
    "ROLLED_BACK",
    "ROLLING_BACK",
    "SUCCEEDED",
    "TERMINAL",
    "ActiveRolloutExists",
    "AlertNotFound",
    "ArmSummary",
    "Command",
    "DuplicateRollout",
    "EventRecord",
    "JsonObject",
    "NewAlert",
    "NewEvent",
    "OutboxAlert",
    "RolloutNotFound",
    "RolloutRecord",
    "RolloutSummary",
    "SchemaError",
    "StaleVersion",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SummaryCursor",
    "open_store",
]
