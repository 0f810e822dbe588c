"""Request bodies to values: a plan in JSON or YAML, a command's small JSON object, a cursor.

Where this sits: users submit plans and steer rollouts through the HTTP API, and the plan is
stored as JSON for the engine to act on. A body from the network may be anything, so before
``rollout.plan`` validates a plan this module makes sure it is a plain JSON-like document the
store can keep: no NaN or infinity, no NUL character, no YAML date or binary, string keys
only, and a bounded size once YAML aliases are expanded (a few hundred bytes of anchors can
otherwise stand for gigabytes, or for a cycle). Every problem is a ``PlanError`` naming where
it is, so the API answers 422 with details, never 500. A list's ``cursor`` travels as an
opaque token; ``encode_cursor`` and ``decode_cursor`` are its two ends.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from rollout.plan import PlanError, PlanIssue, parse_document
from rollout.store.model import SummaryCursor

JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "text/yaml", "application/x-yaml", "text/x-yaml"})

# A plan is a few hundred values; generous bounds still stop alias bombs and cycles early.
MAX_NODES = 200_000
MAX_DEPTH = 64
MAX_ISSUES = 20


def media_type(header: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` (empty when absent)."""
    return (header or "").split(";", 1)[0].strip().lower()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def decode(body: bytes) -> str:
    """UTF-8 text (a byte-order mark is allowed), or ``PlanError``."""
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _document_error(f"the body is not UTF-8 text (byte {exc.start})") from None


def parse_plan_body(body: bytes, kind: str) -> object:
    """The parsed plan document of a JSON or YAML body; ``PlanError`` says what is wrong."""
    text = decode(body)
    if not text.strip():
        raise _document_error("the request body is empty; expected a plan")
    try:
        if kind in JSON_TYPES:
            data: object = json.loads(text, parse_constant=_reject_constant)
        else:
            data = parse_document(text, content_type="application/yaml")
    except PlanError:
        raise
    except json.JSONDecodeError as exc:
        raise _document_error(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _document_error("the document is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        # Integers longer than Python converts, NaN, impossible YAML timestamps...
        raise _document_error(f"unreadable document: {exc}") from None
    check_document(data)
    return data


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A command's JSON object body (empty body: ``{}``); ``PlanError`` otherwise."""
    text = decode(body)
    if not text.strip():
        return {}
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _document_error(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise _document_error(f"unreadable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _document_error(f"expected a JSON object, got {_kind(data)}")
    check_document(data)
    return data


def check_document(data: object) -> None:
    """Refuse what JSON cannot carry or what is too large once YAML aliases are expanded."""
    issues: list[PlanIssue] = []
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    nodes = 0
    while stack and len(issues) < MAX_ISSUES:
        value, path, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise _document_error(
                f"the document has more than {MAX_NODES} values (after expanding YAML "
                "aliases), or refers to itself"
            )
        if depth > MAX_DEPTH:
            raise _document_error(
                f"the document is nested more than {MAX_DEPTH} levels deep, or refers to itself"
            )
        if isinstance(value, dict):
            stack.extend(_members(value, path, depth, issues))
        elif isinstance(value, list):
            stack.extend(
                (item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)
            )
        else:
            problem = _scalar_problem(value)
            if problem is not None:
                issues.append(PlanIssue(field=path or "(plan)", message=problem))
    if issues:
        raise PlanError(sorted(issues, key=lambda issue: issue.field))


def _members(
    mapping: dict[Any, Any], path: str, depth: int, issues: list[PlanIssue]
) -> list[tuple[object, str, int]]:
    members = []
    for key, item in mapping.items():
        if not isinstance(key, str):
            message = f"key {key!r} is not a string (quote it in YAML)"
            issues.append(PlanIssue(field=path or "(plan)", message=message))
        elif "\x00" in key:
            issues.append(
                PlanIssue(field=path or "(plan)", message="a key contains a NUL character")
            )
        elif not _encodable(key):
            # YAML's "\ud800" escapes give lone surrogates: no JSON (nor store) can hold them.
            issues.append(
                PlanIssue(field=path or "(plan)", message="a key is not valid Unicode")
            )
        else:
            members.append((item, f"{path}.{key}" if path else key, depth + 1))
    return members


def _scalar_problem(value: object) -> str | None:
    if isinstance(value, bool | int) or value is None:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "not a finite number"
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character"
        return None if _encodable(value) else "not valid Unicode (a lone surrogate)"
    return f"a YAML {type(value).__name__} is not a JSON value (quote it)"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _document_error(message: str) -> PlanError:
    return PlanError([PlanIssue(field="(document)", message=message)])


MAX_CURSOR_CHARS = 400


def encode_cursor(cursor: SummaryCursor) -> str:
    """The opaque token of a list position (URL-safe base64 of ``[created_at, id]``)."""
    text = json.dumps([cursor[0], cursor[1]], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(token: str) -> SummaryCursor:
    """A list position from its token; ``ValueError`` for anything ``encode_cursor`` never made."""
    if len(token) > MAX_CURSOR_CHARS:
        raise ValueError("the cursor is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("the cursor is not one this API gave out") from exc
    if (
        not isinstance(value, list)
        or len(value) != 2
        or isinstance(value[0], bool)
        or not isinstance(value[0], int | float)
        or not math.isfinite(value[0])
        or not isinstance(value[1], str)
    ):
        raise ValueError("the cursor is not one this API gave out")
    return (float(value[0]), value[1])
