"""The controller's HTTP API (FastAPI): where users submit plans and steer rollouts.

Users submit plans and steer rollouts through this API, directly or with the ``rollout`` CLI,
and watch them on the status page it serves at ``/``; the engine acts on the stored rollouts and
queued commands. ``create_api`` builds the application from the daemon's handles (store,
serving client, clock, policy library, metrics registry, API settings); ``check_bind`` refuses
an open API on a non-loopback address.
"""

from rollout.api.app import create_api
from rollout.api.auth import Role, TokenTable, check_bind, is_loopback, parse_tokens

__all__ = ["Role", "TokenTable", "check_bind", "create_api", "is_loopback", "parse_tokens"]
