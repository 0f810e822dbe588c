"""The words every layer uses for a rollout's life: its phases and the commands people queue.

Defined once, here, below everything else: the store keeps phases and commands by these
names, the engine's ``Phase`` enum spells them, the API's documents type them, and none of
those layers has to import another to agree on them. Pure constants, no imports of the
project.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

PENDING: Final = "pending"
PREPARING: Final = "preparing"
PROGRESSING: Final = "progressing"
PAUSED: Final = "paused"
PROMOTING: Final = "promoting"
SUCCEEDED: Final = "succeeded"
ROLLING_BACK: Final = "rolling_back"
ROLLED_BACK: Final = "rolled_back"
ABORTED: Final = "aborted"
FAILED: Final = "failed"

PhaseName = Literal[
    "pending",
    "preparing",
    "progressing",
    "paused",
    "promoting",
    "succeeded",
    "rolling_back",
    "rolled_back",
    "aborted",
    "failed",
]
"""A phase's name, as a type (the API's documents use it); the constants above spell it."""

PHASES: Final[frozenset[str]] = frozenset(get_args(PhaseName))
"""Every phase a rollout can be in (see DESIGN.md, "States")."""

TERMINAL: Final[frozenset[str]] = frozenset({SUCCEEDED, ROLLED_BACK, ABORTED, FAILED})
"""Phases a rollout never leaves; a rollout in one of them no longer holds its endpoint."""

ACTIVE: Final[frozenset[str]] = PHASES - TERMINAL
"""Non-terminal phases: at most one rollout per endpoint may be in one of these."""

CommandKind = Literal["pause", "resume", "promote", "promote_full", "abort"]
"""A manual input a person can queue for a rollout (the one list; the engine reads it too)."""

COMMAND_KINDS: Final[frozenset[str]] = frozenset(get_args(CommandKind))
"""Manual inputs a person can queue for a rollout."""

GateAnswer = Literal["proceed", "refused", "wait", "timeout", "unreachable"]
"""What one call of a rollout's gate hook came to: yes; no (a non-2xx answer, or ``proceed:
false``); not yet (``wait: true``); no answer within its timeout, retries included; no answer
at all (the connection failed, or the URL points where hooks may not go). The hook caller
(``rollout.alerts.hooks``) answers in these words and the engine decides on them."""
