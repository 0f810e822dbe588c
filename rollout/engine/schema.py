"""Blue/green preflight: does the candidate accept every request the baseline accepts?

Where this sits: before a blue/green switch the runner reads the endpoint's OpenAPI document
(``GET .../openapi``), takes the request-body schema of each served entity's invocation path,
and asks ``input_compatible(baseline, candidate)``. A switch to a candidate that rejects inputs
clients send today would be an outage, so the answer is conservative: anything the check
cannot prove compatible is reported with the path of the first difference. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def entity_input_schema(document: Mapping[str, Any], entity: str) -> Mapping[str, Any] | None:
    """The JSON request schema of ``/served-models/<entity>/invocations``, if documented."""
    paths = document.get("paths")
    if not isinstance(paths, Mapping):
        return None
    for path, item in paths.items():
        if not (isinstance(path, str) and path.endswith(f"/served-models/{entity}/invocations")):
            continue
        try:
            schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        except (KeyError, TypeError):
            return None
        return schema if isinstance(schema, Mapping) else None
    return None


def _types(schema: Mapping[str, Any]) -> set[str] | None:
    kind = schema.get("type")
    if kind is None:
        return None
    if isinstance(kind, str):
        return {kind, "number"} if kind == "integer" else {kind}
    return {str(k) for k in kind} | ({"number"} if "integer" in kind else set())


Result = tuple[bool, str]
_OK: Result = (True, "")


def _type_check(baseline: Mapping[str, Any], candidate: Mapping[str, Any], path: str) -> Result:
    base_types, cand_types = _types(baseline), _types(candidate)
    if cand_types is None:
        return _OK
    if base_types is None:
        return False, f"{path}: candidate restricts the type to {sorted(cand_types)}"
    narrowed = {t for t in base_types if t not in cand_types and t != "integer"}
    if "integer" in base_types and not cand_types & {"integer", "number"}:
        narrowed.add("integer")
    if narrowed:
        return False, f"{path}: candidate no longer accepts type {sorted(narrowed)}"
    return _OK


def _enum_check(baseline: Mapping[str, Any], candidate: Mapping[str, Any], path: str) -> Result:
    if "enum" not in candidate:
        return _OK
    allowed = list(candidate["enum"])
    base_enum = baseline.get("enum")
    if base_enum is None:
        return False, f"{path}: candidate restricts values to {allowed}"
    missing = [v for v in base_enum if v not in allowed]
    if missing:
        return False, f"{path}: candidate no longer accepts values {missing}"
    return _OK


def _object_check(baseline: Mapping[str, Any], candidate: Mapping[str, Any], path: str) -> Result:
    new_required = sorted(set(candidate.get("required", [])) - set(baseline.get("required", [])))
    if new_required:
        return False, f"{path}: candidate requires new fields {new_required}"
    base_props = baseline.get("properties", {}) or {}
    cand_props = candidate.get("properties", {}) or {}
    if candidate.get("additionalProperties") is False:
        dropped = sorted(set(base_props) - set(cand_props))
        if dropped or baseline.get("additionalProperties") is not False:
            what = f"fields {dropped}" if dropped else "fields it does not list"
            return False, f"{path}: candidate rejects {what}"
    for name, cand_schema in cand_props.items():
        base_schema = base_props.get(name)
        if isinstance(base_schema, Mapping) and isinstance(cand_schema, Mapping):
            result = input_compatible(base_schema, cand_schema, f"{path}.{name}")
            if not result[0]:
                return result
    return _OK


def _items_check(baseline: Mapping[str, Any], candidate: Mapping[str, Any], path: str) -> Result:
    base_items, cand_items = baseline.get("items"), candidate.get("items")
    if not isinstance(cand_items, Mapping):
        return _OK
    if not isinstance(base_items, Mapping):
        return False, f"{path}[]: candidate constrains array items"
    return input_compatible(base_items, cand_items, f"{path}[]")


def _combinator_check(
    baseline: Mapping[str, Any], candidate: Mapping[str, Any], path: str
) -> Result:
    for combinator in ("oneOf", "anyOf", "allOf"):
        if combinator in candidate and candidate.get(combinator) != baseline.get(combinator):
            return False, f"{path}: candidate's {combinator} differs from the baseline's"
    return _OK


def input_compatible(
    baseline: Mapping[str, Any], candidate: Mapping[str, Any], path: str = "$"
) -> Result:
    """(True, "") when every instance valid for ``baseline`` is valid for ``candidate``."""
    if baseline == candidate or not candidate:
        return _OK
    for check in (_type_check, _enum_check, _object_check, _items_check, _combinator_check):
        result = check(baseline, candidate, path)
        if not result[0]:
            return result
    return _OK
