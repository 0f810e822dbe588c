"""Settings: read from ROLLOUT_* and DATABRICKS_* variables, grouped, secrets masked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rollout.settings import Settings, lease_problem


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415

    for key in list(os.environ):
        if key.startswith(("ROLLOUT_", "DATABRICKS_")):
            monkeypatch.delenv(key)


def test_defaults_need_no_environment() -> None:
    settings = Settings()
    assert settings.store.url == "sqlite:///rollout.db"
    assert settings.serving.request_timeout == 30.0
    assert settings.engine.look_interval == 30.0
    assert settings.databricks.host is None


def test_groups_read_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_SERVING_REQUEST_TIMEOUT", "7.5")
    monkeypatch.setenv("ROLLOUT_ENGINE_LOOK_INTERVAL", "15")
    monkeypatch.setenv("ROLLOUT_STORE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("ROLLOUT_LOG_FORMAT", "json")
    settings = Settings()
    assert settings.serving.request_timeout == 7.5
    assert settings.engine.look_interval == 15.0
    assert settings.store.url.startswith("postgresql://")
    assert settings.log.format == "json"


def test_databricks_variables_and_masked_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", "https://adb-1.2.azuredatabricks.net")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-very-secret")
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", "sp-id")
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "sp-very-secret")
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "prod")
    settings = Settings()
    assert settings.databricks.host == "https://adb-1.2.azuredatabricks.net"
    assert settings.databricks.token is not None
    assert settings.databricks.token.get_secret_value() == "dapi-very-secret"
    assert settings.databricks.config_profile == "prod"
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "very-secret" not in shown


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ROLLOUT_SERVING_REQUEST_TIMEOUT", "-1"),
        ("ROLLOUT_ENGINE_MAX_PUT_ATTEMPTS", "0"),
        ("ROLLOUT_LOG_LEVEL", "loud"),
        ("DATABRICKS_AUTH_TYPE", "kerberos"),
    ],
)
def test_bad_values_are_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    field = variable.split("_", 2)[-1].lower() if variable.startswith("ROLLOUT") else "auth_type"
    assert field in str(caught.value)


def test_the_put_deadline_must_fit_in_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lease_problem(Settings()) is None, "the defaults keep replicas apart"
    monkeypatch.setenv("ROLLOUT_ENGINE_LEASE_TTL", "10")
    monkeypatch.setenv("ROLLOUT_SERVING_PUT_DEADLINE", "12.5")
    problem = lease_problem(Settings())
    assert problem is not None
    assert "ROLLOUT_SERVING_PUT_DEADLINE (12.5 s)" in problem
    assert "ROLLOUT_ENGINE_LEASE_TTL (10 s)" in problem
    monkeypatch.setenv("ROLLOUT_SERVING_PUT_DEADLINE", "9.9")
    assert lease_problem(Settings()) is None
