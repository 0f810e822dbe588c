"""Payload models: tolerant reading, strict where relied on, the exact PUT body."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rollout.serving.models import (
    ConfigSpec,
    ConfigUpdate,
    Endpoint,
    EndpointSummary,
    Ready,
    Route,
    ServedEntity,
    traffic_split,
)


def detailed(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "ads",
        "id": "abc123",
        "creator": "someone@example.com",
        "creation_timestamp": 1_700_000_000_000,
        "last_updated_timestamp": 1_700_000_100_000,
        "permission_level": "CAN_MANAGE",
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "config": {
            "config_version": 3,
            "served_entities": [
                {
                    "name": "ads-3",
                    "entity_name": "main.ml.ads",
                    "entity_version": "3",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": False,
                    "state": {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""},
                    "creator": "someone@example.com",
                    "creation_timestamp": 1_700_000_000_000,
                    "some_future_field": {"x": 1},
                },
                {
                    "name": "ads-4",
                    "entity_name": "main.ml.ads",
                    "entity_version": 4,
                    "workload_size": "Small",
                    "scale_to_zero_enabled": True,
                },
            ],
            "traffic_config": {
                "routes": [
                    {
                        "served_model_name": "ads-3",
                        "served_entity_name": "ads-3",
                        "traffic_percentage": 90,
                    },
                    {"served_model_name": "ads-4", "traffic_percentage": 10},
                ]
            },
        },
        "tags": [{"key": "team", "value": "ads"}, {"key": "flag"}],
        "brand_new_top_level_field": [1, 2, 3],
    }
    body.update(overrides)
    return body


def test_detailed_endpoint_is_read_ignoring_unknown_fields() -> None:
    endpoint = Endpoint.model_validate(detailed())
    assert endpoint.state.ready == Ready.READY
    assert endpoint.state.config_update == ConfigUpdate.NOT_UPDATING
    assert endpoint.config is not None
    assert endpoint.config.config_version == 3
    # An integer version is read as the string the rest of the code compares with.
    assert endpoint.config.served_entities[1].entity_version == "4"
    assert [t.key for t in endpoint.tags] == ["team", "flag"]
    assert traffic_split(endpoint) == {"ads-3": 90, "ads-4": 10}
    assert endpoint.settled


def test_unknown_state_values_are_kept_not_rejected() -> None:
    endpoint = Endpoint.model_validate(
        detailed(state={"ready": "WARMING_UP", "config_update": "SOMETHING_NEW"})
    )
    assert endpoint.state.ready == "WARMING_UP"
    assert endpoint.state.ready != Ready.READY
    assert endpoint.state.config_update == "SOMETHING_NEW"
    assert endpoint.state.config_update not in set(ConfigUpdate)


def test_docs_field_name_update_state_is_accepted() -> None:
    endpoint = Endpoint.model_validate(
        detailed(state={"ready": "NOT_READY", "update_state": "IN_PROGRESS"})
    )
    assert endpoint.state.config_update == ConfigUpdate.IN_PROGRESS
    assert not endpoint.settled


@pytest.mark.parametrize(
    "broken",
    [
        {"state": {"ready": 3, "config_update": "NOT_UPDATING"}},
        {"state": "READY"},
        {"name": None},
        {
            "config": {
                "config_version": "three",
                "served_entities": [],
            }
        },
        {"config": {"traffic_config": {"routes": [{"traffic_percentage": "half"}]}}},
        {"config": {"traffic_config": {"routes": [{"traffic_percentage": 50}]}}},
        {
            "config": {
                "traffic_config": {
                    "routes": [{"served_model_name": "a", "traffic_percentage": 101}]
                }
            }
        },
        {"config": {"served_entities": "ads-3"}},
        {"tags": [{"value": "no key"}]},
    ],
)
def test_fields_we_rely_on_are_strict(broken: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Endpoint.model_validate(detailed(**broken))


def test_route_target_reads_whichever_name_is_set() -> None:
    assert Route(served_model_name="a", traffic_percentage=5).target == "a"
    assert Route(served_entity_name="b", traffic_percentage=5).target == "b"
    both = Route(served_model_name="c", served_entity_name="c", traffic_percentage=5)
    assert both.target == "c"


def test_single_entity_without_traffic_config_gets_everything() -> None:
    body = detailed()
    body["config"]["served_entities"] = body["config"]["served_entities"][:1]
    del body["config"]["traffic_config"]
    assert traffic_split(Endpoint.model_validate(body)) == {"ads-3": 100}


def test_legacy_served_models_count_as_entities() -> None:
    body = detailed()
    body["config"] = {
        "config_version": 1,
        "served_models": [{"name": "m-1", "model_name": "m", "model_version": "1"}],
    }
    endpoint = Endpoint.model_validate(body)
    assert endpoint.config is not None
    assert endpoint.config.entity_identities() == {("m-1", "m", "1")}
    assert traffic_split(endpoint) == {"m-1": 100}


def test_routes_to_the_same_entity_add_up() -> None:
    body = detailed()
    body["config"]["traffic_config"]["routes"] = [
        {"served_model_name": "ads-3", "traffic_percentage": 60},
        {"served_entity_name": "ads-3", "traffic_percentage": 30},
        {"served_entity_name": "ads-4", "traffic_percentage": 10},
    ]
    assert traffic_split(Endpoint.model_validate(body)) == {"ads-3": 90, "ads-4": 10}


def test_list_summary_tolerates_a_missing_state() -> None:
    summary = EndpointSummary.model_validate({"name": "x", "config": {"served_entities": []}})
    assert summary.state is None


def entities() -> list[ServedEntity]:
    return [
        ServedEntity(
            name="ads-3",
            entity_name="main.ml.ads",
            entity_version="3",
            workload_size="Small",
            scale_to_zero_enabled=False,
        ),
        ServedEntity(
            entity_name="main.ml.ads",
            entity_version="4",
            workload_size="Small",
            scale_to_zero_enabled=True,
            environment_vars={"MODE": "canary"},
        ),
    ]


def test_put_body_is_flat_full_and_names_routes_explicitly() -> None:
    spec = ConfigSpec.build(entities(), {"ads-3": 95, "ads-4": 5})
    body = spec.put_body()
    assert set(body) == {"served_entities", "traffic_config"}
    first, second = body["served_entities"]
    # False is sent, None is not.
    assert first == {
        "name": "ads-3",
        "entity_name": "main.ml.ads",
        "entity_version": "3",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }
    # The derived name is written out, never left to the server.
    assert second["name"] == "ads-4"
    assert second["environment_vars"] == {"MODE": "canary"}
    assert body["traffic_config"] == {
        "routes": [
            {"served_model_name": "ads-3", "traffic_percentage": 95},
            {"served_model_name": "ads-4", "traffic_percentage": 5},
        ]
    }


def test_output_only_fields_never_go_back_in_a_put() -> None:
    endpoint = Endpoint.model_validate(detailed())
    spec = ConfigSpec.from_endpoint(endpoint)
    for entity in spec.put_body()["served_entities"]:
        assert not {"state", "creator", "creation_timestamp", "foundation_model"} & set(entity)
    assert spec.split == {"ads-3": 90, "ads-4": 10}
    assert endpoint.config is not None
    assert spec.matches(endpoint.config)


def test_external_model_name_is_derived_like_databricks() -> None:
    entity = ServedEntity(external_model={"name": "gpt-4o:2024.05", "provider": "openai"})
    assert entity.derived_name() == "gpt-4o-2024-05"
    with pytest.raises(ValueError, match="needs a name"):
        ServedEntity(workload_size="Small").derived_name()


@pytest.mark.parametrize(
    ("split", "problem"),
    [
        ({"ads-3": 90, "ads-4": 5}, "sum to 100"),
        ({"ads-3": 90, "ads-9": 10}, "unknown served entities"),
        ({}, "sum to 100"),
    ],
)
def test_config_spec_rejects_what_the_server_would(split: dict[str, int], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        ConfigSpec.build(entities(), split)


def test_config_spec_rejects_duplicate_names() -> None:
    twice = [*entities(), ServedEntity(name="ads-3", entity_name="x", entity_version="1")]
    with pytest.raises(ValidationError, match="unique"):
        ConfigSpec.build(twice, {"ads-3": 100})


def test_matches_ignores_zero_routes_but_not_versions() -> None:
    spec = ConfigSpec.build(entities(), {"ads-3": 100, "ads-4": 0})
    endpoint = Endpoint.model_validate(detailed())
    assert endpoint.config is not None
    assert not spec.matches(endpoint.config)
    body = detailed()
    body["config"]["traffic_config"]["routes"] = [
        {"served_entity_name": "ads-3", "traffic_percentage": 100}
    ]
    live = Endpoint.model_validate(body).config
    assert live is not None
    assert spec.matches(live)
    body["config"]["served_entities"][1]["entity_version"] = "5"
    changed = Endpoint.model_validate(body).config
    assert changed is not None
    assert not spec.matches(changed)


# ---- optional fields absent, legacy served_models, fields carried through ---------------------


@pytest.mark.parametrize(
    ("state", "pending", "update", "ready"),
    [
        (None, False, ConfigUpdate.NOT_UPDATING, None),
        ({}, False, ConfigUpdate.NOT_UPDATING, None),
        ({"ready": "READY"}, False, ConfigUpdate.NOT_UPDATING, Ready.READY),
        ({"ready": "NOT_READY"}, True, ConfigUpdate.IN_PROGRESS, Ready.NOT_READY),
        ({"config_update": "UPDATE_FAILED"}, True, ConfigUpdate.UPDATE_FAILED, None),
    ],
)
def test_absent_state_fields_are_inferred_not_fatal(
    state: dict[str, Any] | None, pending: bool, update: ConfigUpdate, ready: Ready | None
) -> None:
    body = detailed(state=state)
    if state is None:
        del body["state"]
    if pending:
        body["pending_config"] = {"config_version": 4, "served_entities": []}
    endpoint = Endpoint.model_validate(body)
    assert endpoint.state.config_update == update
    assert endpoint.state.ready == ready
    assert endpoint.settled is (update != ConfigUpdate.IN_PROGRESS)


def test_a_route_without_percentage_takes_zero() -> None:
    endpoint = Endpoint.model_validate(
        detailed(
            config={
                "served_entities": [
                    {"name": "a", "entity_name": "m.a", "entity_version": "1"},
                    {"name": "b", "entity_name": "m.b", "entity_version": "1"},
                ],
                "traffic_config": {
                    "routes": [
                        {"served_entity_name": "a", "traffic_percentage": 100},
                        {"served_entity_name": "b"},
                    ]
                },
            }
        )
    )
    assert traffic_split(endpoint) == {"a": 100, "b": 0}


def test_legacy_served_models_become_complete_served_entities() -> None:
    endpoint = Endpoint.model_validate(
        detailed(
            config={
                "config_version": 2,
                "served_models": [
                    {
                        "name": "ads-3",
                        "model_name": "ads",
                        "model_version": 3,
                        "workload_size": "Small",
                        "scale_to_zero_enabled": False,
                        "environment_vars": {"A": "1"},
                        "state": {"deployment": "DEPLOYMENT_READY"},
                        "creator": "someone@example.com",
                    }
                ],
                "traffic_config": {"routes": [{"served_model_name": "ads-3",
                                               "traffic_percentage": 100}]},
            }
        )
    )
    assert endpoint.config is not None
    body = ConfigSpec.from_endpoint(endpoint).put_body()
    assert body["served_entities"] == [
        {
            "name": "ads-3",
            "entity_name": "ads",
            "entity_version": "3",
            "workload_size": "Small",
            "scale_to_zero_enabled": False,
            "environment_vars": {"A": "1"},
        }
    ]
    # The converted config is the same deployment as the legacy one: no false drift.
    assert ConfigSpec.from_endpoint(endpoint).matches(endpoint.config)


def test_unknown_entity_fields_are_carried_into_the_put() -> None:
    endpoint = Endpoint.model_validate(detailed())
    body = ConfigSpec.from_endpoint(endpoint).put_body()
    first = next(e for e in body["served_entities"] if e["name"] == "ads-3")
    assert first["some_future_field"] == {"x": 1}
    assert not {"state", "creator", "creation_timestamp"} & set(first)


def test_auto_capture_config_goes_back_without_its_state() -> None:
    capture = {"catalog_name": "main", "schema_name": "ml", "table_name_prefix": "ads",
               "enabled": True, "state": {"payload_table": {"name": "ads_payload"}}}
    config = dict(detailed()["config"], auto_capture_config=capture)
    endpoint = Endpoint.model_validate(detailed(config=config))
    body = ConfigSpec.from_endpoint(endpoint).put_body()
    assert body["auto_capture_config"] == {k: v for k, v in capture.items() if k != "state"}
    assert "auto_capture_config" not in ConfigSpec.from_endpoint(
        Endpoint.model_validate(detailed())
    ).put_body()
