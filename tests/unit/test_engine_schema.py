"""Blue/green preflight: input-schema compatibility, table-driven."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rollout.engine.schema import entity_input_schema, input_compatible

BASE: dict[str, Any] = {
    "type": "object",
    "required": ["dataframe_records"],
    "properties": {
        "dataframe_records": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["age"],
                "properties": {
                    "age": {"type": "integer"},
                    "city": {"type": "string", "enum": ["paris", "oslo"]},
                },
            },
        }
    },
}


def changed(path: list[str], value: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    node = schema
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return schema


ITEM = ["properties", "dataframe_records", "items"]
CASES = [
    ("identical", BASE, True, ""),
    ("empty candidate schema accepts anything", {}, True, ""),
    ("new required field", changed([*ITEM, "required"], ["age", "income"]), False, "income"),
    ("a required field becomes optional", changed([*ITEM, "required"], []), True, ""),
    ("integer widened to number", changed([*ITEM, "properties", "age"], {"type": "number"}),
     True, ""),
    ("integer narrowed to string", changed([*ITEM, "properties", "age"], {"type": "string"}),
     False, "age"),
    ("enum value dropped", changed([*ITEM, "properties", "city", "enum"], ["paris"]), False,
     "oslo"),
    ("enum value added", changed([*ITEM, "properties", "city", "enum"], ["paris", "oslo", "rome"]),
     True, ""),
    ("closed object drops a field", changed([*ITEM, "additionalProperties"], False), False,
     "rejects"),
    ("top-level type changed", changed(["type"], "array"), False, "type"),
]


@pytest.mark.parametrize(("name", "candidate", "ok", "mention"), CASES, ids=[c[0] for c in CASES])
def test_input_compatible(name: str, candidate: dict[str, Any], ok: bool, mention: str) -> None:
    result, reason = input_compatible(BASE, candidate)
    assert result is ok, reason
    assert mention in reason


def test_entity_schema_is_read_from_the_served_model_path() -> None:
    document = {
        "paths": {
            "/served-models/a-1/invocations": {
                "post": {"requestBody": {"content": {"application/json": {"schema": BASE}}}}
            },
            "/invocations": {"post": {}},
        }
    }
    assert entity_input_schema(document, "a-1") == BASE
    assert entity_input_schema(document, "b-2") is None
    assert entity_input_schema({"paths": "garbage"}, "a-1") is None
    broken = {"paths": {"/served-models/a-1/invocations": {"post": {}}}}
    assert entity_input_schema(broken, "a-1") is None
