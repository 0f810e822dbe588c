"""Who may use the API: bearer tokens with a role, and where the API may listen without them.

Where this sits: users submit plans and steer rollouts through the HTTP API, and the engine
acts on what they stored. Reading rollouts needs the ``viewer`` role; anything that changes
what the engine will do (a new rollout, a pause, a promotion, an abort) needs ``operator``.
Tokens come from ``ApiSettings.tokens`` as ``'token:role,token:role'``. With no token
configured the API is open, which is only acceptable on a loopback address: ``check_bind``
refuses anything else, so an open controller is never reachable from the network.

Tokens are kept as SHA-256 digests and compared in constant time against every configured
token (a match stops nothing early), and no message here ever contains a token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from rollout.errors import ConfigurationProblem

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
_RANK: dict[Role, int] = {"viewer": 0, "operator": 1}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, repr=False)
class TokenTable:
    """The configured tokens (as digests) with their roles; empty means an open API."""

    entries: tuple[tuple[bytes, Role], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        roles = ", ".join(role for _, role in self.entries)
        return f"TokenTable({len(self.entries)} tokens: {roles or 'none'})"

    def role_of(self, presented: str) -> Role | None:
        """The role of a presented token, or None; the time taken does not depend on it."""
        candidate = _digest(presented)
        found: Role | None = None
        for digest, role in self.entries:
            # No early exit: every configured token is compared every time.
            if hmac.compare_digest(candidate, digest):
                found = role
        return found

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, Role]]) -> TokenTable:
        return cls(tuple((_digest(token), role) for token, role in pairs))


def allows(role: Role, needed: Role) -> bool:
    """Whether ``role`` may do what ``needed`` may (operators may also read)."""
    return _RANK[role] >= _RANK[needed]


def parse_tokens(spec: SecretStr | str | None) -> TokenTable:
    """Parse ``'token:role,token:role'``; ``ValueError`` names the bad item, never its token.

    Items are separated by commas, surrounding spaces are ignored, and the role is what follows
    the last colon (a token may contain colons). Empty items (a trailing comma) are skipped; a
    token given twice is refused, since it could only be a mistake.
    """
    text = spec.get_secret_value() if isinstance(spec, SecretStr) else (spec or "")
    pairs: list[tuple[str, Role]] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        if not item:
            continue
        token, colon, role = item.rpartition(":")
        token, role = token.strip(), role.strip()
        where = f"API tokens, item {number}"
        if not colon:
            raise ValueError(f"{where}: expected 'token:role' (role viewer or operator)")
        if not token:
            raise ValueError(f"{where}: the token before ':{role}' is empty")
        if role not in ROLES:
            # The role is not a secret; naming it shows what was mistyped.
            raise ValueError(f"{where}: role {role!r} is not one of viewer, operator")
        digest = _digest(token)
        if digest in seen:
            raise ValueError(f"{where}: repeats the token of item {seen[digest]}")
        seen[digest] = number
        pairs.append((token, "operator" if role == "operator" else "viewer"))
    return TokenTable.of(pairs)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback address (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: TokenTable | SecretStr | str | None) -> None:
    """Refuse to serve an open API (no tokens) on anything but a loopback address.

    Raises ``ConfigurationProblem`` saying what to change; ``ValueError`` for a bad token spec.
    """
    table = tokens if isinstance(tokens, TokenTable) else parse_tokens(tokens)
    if table or is_loopback(host):
        return
    raise ConfigurationProblem(
        f"the API would listen on {host!r} with no tokens, open to anyone who can reach it: "
        "set ROLLOUT_API_TOKENS ('token:operator,token:viewer') or listen on 127.0.0.1"
    )
