"""Settings: every knob of the controller, read once from the environment and passed explicitly.

This module sits at the very start of every path: ``cli`` builds one ``Settings`` and hands its
groups to the pieces that need them (the serving client gets ``settings.databricks`` and
``settings.serving``, the store gets ``settings.store``, ...). Nothing reads the environment
anywhere else, and there is no module-level instance.

Variables: ``ROLLOUT_<GROUP>_<FIELD>`` for the controller's own settings (for example
``ROLLOUT_SERVING_REQUEST_TIMEOUT=10``), and the standard Databricks variables
(``DATABRICKS_HOST``, ``DATABRICKS_TOKEN``, ``DATABRICKS_CLIENT_ID``, ``DATABRICKS_CLIENT_SECRET``,
``DATABRICKS_CONFIG_PROFILE``, ``DATABRICKS_CONFIG_FILE``, ``DATABRICKS_AUTH_TYPE``).

One exception to "nothing else reads the environment": when sign-in goes through
databricks-sdk (``rollout.serving.sdk_auth``), the SDK's ``Config`` also reads the variables of
the sign-in methods it alone knows (``ARM_*``, ``DATABRICKS_METADATA_SERVICE_URL``,
``ACTIONS_ID_TOKEN_REQUEST_*``, ...), exactly as every Databricks tool does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Every auth_type databricks-sdk's unified authentication knows (its DefaultCredentials chain).
AuthTypeName = Literal[
    "pat",
    "basic",
    "metadata-service",
    "oauth-m2m",
    "env-oidc",
    "file-oidc",
    "github-oidc",
    "azure-client-secret",
    "github-oidc-azure",
    "azure-cli",
    "azure-devops-oidc",
    "external-browser",
    "databricks-cli",
    "runtime-oauth",
    "runtime",
    "google-credentials",
    "google-id",
    "model-serving",
]


class DatabricksSettings(BaseSettings):
    """Where the workspace is and how to authenticate; the names Databricks' own tools use.

    With databricks-sdk installed (``rollout[databricks]``) these are handed to its ``Config``,
    which resolves them by Databricks' unified-authentication rules (``rollout.serving.sdk_auth``).
    Without it, ``rollout.serving.auth.resolve_credentials`` resolves PAT and OAuth M2M only:
    explicit host with a token or a client id and secret; otherwise the profile named by
    ``config_profile`` (or ``DEFAULT``) in ``config_file``.
    """

    model_config = SettingsConfigDict(env_prefix="DATABRICKS_", extra="ignore")

    host: str | None = Field(
        default=None, description="Workspace URL, e.g. https://adb-123.4.azuredatabricks.net."
    )
    token: SecretStr | None = Field(default=None, description="Personal access token (PAT).")
    client_id: str | None = Field(default=None, description="OAuth M2M service principal id.")
    client_secret: SecretStr | None = Field(
        default=None, description="OAuth M2M service principal secret."
    )
    config_profile: str | None = Field(
        default=None, description="Profile name in the config file; DEFAULT when unset."
    )
    config_file: Path | None = Field(
        default=None,
        description="INI file of profiles (~ is expanded); ~/.databrickscfg when unset.",
    )
    auth_type: AuthTypeName | None = Field(
        default=None,
        description="Force one sign-in method instead of trying them in Databricks' order "
        "(pat, oauth-m2m, databricks-cli, azure-cli, azure-client-secret, metadata-service, "
        "github-oidc, env-oidc, ...; all but pat and oauth-m2m need databricks-sdk).",
    )


class ServingSettings(BaseSettings):
    """How the controller talks to the serving-endpoints API."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_SERVING_", extra="ignore")

    auth_resolver: Literal["auto", "sdk", "builtin"] = Field(
        default="auto",
        description="Who resolves the Databricks sign-in: sdk (databricks-sdk's unified "
        "authentication, every method and profile rule), builtin (PAT and OAuth M2M only, no "
        "extra dependency; what the sandbox demo uses), auto (sdk when installed).",
    )
    request_timeout: float = Field(
        default=30.0, gt=0, description="Seconds allowed for one HTTP request (connect + read)."
    )
    retry_budget: float = Field(
        default=120.0,
        gt=0,
        description="Seconds one logical call may spend retrying 429/503/timeouts in total.",
    )
    retry_initial_backoff: float = Field(
        default=0.5, gt=0, description="Seconds before the first retry; doubles each attempt."
    )
    retry_max_backoff: float = Field(
        default=20.0, gt=0, description="Upper bound, in seconds, of one backoff sleep."
    )
    update_poll_interval: float = Field(
        default=5.0, gt=0, description="Seconds between polls while an update is in progress."
    )
    put_deadline: float = Field(
        default=20.0,
        gt=0,
        description="Seconds one config PUT may live, retries included; after that it counts "
        "as not answered. Must be shorter than ROLLOUT_ENGINE_LEASE_TTL, so that a PUT ends "
        "while the lease that allowed it still holds.",
    )
    metrics_window: float = Field(
        default=60.0,
        gt=0,
        description="Seconds one export-metrics window covers (60 on Databricks): the unit "
        "of a policy's warmup_windows until the windows show their length, and what a "
        "submission reads the endpoint's requests per second over.",
    )


class EngineSettings(BaseSettings):
    """How often rollouts are looked at and how long the engine waits for things."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_ENGINE_", extra="ignore")

    look_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between looks at a judging rollout; keep it at most half the "
        "export-metrics window (60 s on Databricks) so that no window is missed.",
    )
    update_poll: float = Field(
        default=5.0, gt=0, description="Seconds between looks while a config update runs."
    )
    update_deadline: float = Field(
        default=45 * 60.0,
        gt=0,
        description="Seconds a config update may stay IN_PROGRESS before it counts as failed.",
    )
    max_put_attempts: int = Field(
        default=3, ge=1, description="PUTs of one config before the engine gives up on it."
    )
    policy_dirs: str = Field(
        default="",
        description="Directories of <name>.yaml policies besides the built-in ones, separated "
        "like PATH (':'); a later directory's policy replaces an earlier one of the same name.",
    )
    step_deadline_factor: float = Field(
        default=3.0,
        ge=1.0,
        description="A step with no conclusive verdict after bake x this applies on_no_data.",
    )
    scan_interval: float = Field(
        default=1.0, gt=0, description="Seconds between scans of the store for due rollouts."
    )
    failure_backoff: float = Field(
        default=30.0, gt=0, description="Seconds before retrying a rollout whose reconcile crashed."
    )
    lease_ttl: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a replica's hold on a rollout (and its heartbeat) lasts unless "
        "renewed; renewed every third of it. A dead replica's rollouts move within it.",
    )
    ownership_slack: int = Field(
        default=1,
        ge=0,
        description="Rollouts a replica may hold beyond its fair share "
        "(active rollouts / live replicas, rounded up).",
    )


class StoreSettings(BaseSettings):
    """Where rollouts and their event logs are kept."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_STORE_", extra="ignore")

    url: str = Field(
        default="sqlite:///rollout.db",
        description="sqlite:///<path> (embedded default) or postgresql://user@host:port/db.",
    )


class ApiSettings(BaseSettings):
    """The daemon's HTTP API (``rollout serve``)."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_API_", extra="ignore")

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; without tokens only a loopback address is allowed.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port (0 picks a free one).")
    tokens: SecretStr | None = Field(
        default=None,
        description="Bearer tokens with roles, comma-separated 'token:role' pairs where role is "
        "viewer (read) or operator (read and act), e.g. 'abc:operator,def:viewer'.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, gt=0, description="Largest request body accepted, in bytes."
    )
    allowed_hosts: str = Field(
        default="",
        description="Names (or addresses) the Host header of a request may carry, "
        "comma-separated; '*' accepts any. Empty: loopback names (localhost, 127.0.0.1, "
        "::1) and the listening address when no tokens are set (against DNS rebinding), "
        "any Host when tokens are set.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a request's headers (from the connection, "
        "or from its first byte on a kept-alive connection) before it is disconnected.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request body may stall (no byte received) before the client "
        "is disconnected.",
    )
    keep_alive_timeout: int = Field(
        default=5, ge=1, description="Seconds an idle kept-alive connection is held open."
    )
    max_connections: int = Field(
        default=256,
        ge=1,
        description="Concurrent connections (or requests in flight) served; beyond it new "
        "requests are answered 503 at once.",
    )


class AlertSettings(BaseSettings):
    """Rollback alerts: default channels and delivery."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_ALERTS_", extra="ignore")

    channels: str = Field(
        default="[]",
        description="Channels every rollout alerts besides its plan's own: a JSON list of "
        '{"type": "webhook"|"slack"|"alertmanager"|"teams"|"pagerduty", "url", "severity"?, '
        '"secret"?, "routing_key"?} (pagerduty: routing_key required, url optional).',
    )
    public_url: str = Field(
        default="",
        pattern=r"^(https?://\S+)?$",
        description="The status page as people reach it (e.g. https://rollout.internal): "
        "Teams cards link to it and PagerDuty incidents carry it as a link. Empty: no link.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Alert targets allowed although not public, comma-separated: names "
        "(trusted whatever they resolve to), addresses or networks, e.g. "
        "'alertmanager, 127.0.0.1, 10.2.0.0/16'; '*' allows every target. By default "
        "loopback, link-local, metadata and private addresses are refused.",
    )
    allow_private: bool = Field(
        default=False,
        description="Allow alert targets in private ranges (10/8, 172.16/12, 192.168/16, "
        "fc00::/7, 100.64/10); loopback, link-local and metadata stay refused.",
    )
    timeout: float = Field(default=10.0, gt=0, description="Seconds allowed for one delivery.")
    lease: float = Field(
        default=60.0, gt=0, description="Seconds an alert being delivered is hidden from others."
    )
    initial_backoff: float = Field(
        default=2.0, gt=0, description="Seconds before the first redelivery; doubles each time."
    )
    max_backoff: float = Field(
        default=600.0, gt=0, description="Upper bound, in seconds, between two deliveries."
    )
    poll_interval: float = Field(
        default=1.0, gt=0, description="Seconds between looks at the outbox."
    )
    workspace_outage_after: float = Field(
        default=120.0,
        gt=0,
        description="Seconds the Databricks workspace may fail every call (no answer, or "
        "5xx) before one alert says it is unreachable; resolved when it answers again.",
    )


class PrometheusSettings(BaseSettings):
    """The Prometheus-compatible server that policies' ``query`` checks are run against."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_PROMETHEUS_", extra="ignore")

    url: str | None = Field(
        default=None,
        description="Base URL of a Prometheus-compatible server (Prometheus, Thanos, Mimir, "
        "VictoriaMetrics), e.g. http://prometheus:9090; its /api/v1/query is asked. Unset: "
        "plans with a PromQL check are refused.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token sent with every query (or use basic auth)."
    )
    username: str | None = Field(default=None, description="Basic-auth user name.")
    password: SecretStr | None = Field(default=None, description="Basic-auth password.")
    timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds one query (or one web check's request) may take; beyond it the "
        "source counts as unreachable for that look.",
    )


class AliasWatchSetting(BaseModel):
    """One alias to watch: whenever ``alias`` moves to a version the endpoint does not serve
    yet, a rollout of that version starts from ``plan_template``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str = Field(description="The alias, as catalog.schema.model@alias.")
    endpoint: str = Field(description="The serving endpoint to roll it out on.")
    plan_template: Path = Field(
        description="A plan file (YAML or JSON) whose candidate names the model; the watch "
        "sets the candidate's alias and version."
    )


class AliasSettings(BaseSettings):
    """Rollouts from Unity Catalog aliases: what to watch, and moving aliases after success."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_ALIASES_", extra="ignore")

    watches: list[AliasWatchSetting] = Field(
        default_factory=list,
        description='Aliases to watch, a JSON list of {"alias": "main.ml.m@challenger", '
        '"endpoint", "plan_template"}; the controller polls each and starts a rollout when '
        "it moves.",
    )
    poll_interval: float = Field(
        default=60.0, gt=0, description="Seconds between two looks at each watched alias."
    )
    move_lease: float = Field(
        default=60.0, gt=0, description="Seconds an alias move being made is hidden from others."
    )
    move_initial_backoff: float = Field(
        default=5.0, gt=0, description="Seconds before a failed alias move is tried again."
    )
    move_max_backoff: float = Field(
        default=600.0, gt=0, description="Upper bound, in seconds, between two alias-move tries."
    )


class LogSettings(BaseSettings):
    """Structured logging."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_LOG_", extra="ignore")

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Minimum level written."
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a TTY, JSON lines otherwise."
    )


class Settings(BaseSettings):
    """All settings, grouped. Build one with ``Settings()`` at the edge and pass it down."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_", extra="ignore")

    databricks: DatabricksSettings = Field(default_factory=DatabricksSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    aliases: AliasSettings = Field(default_factory=AliasSettings)
    log: LogSettings = Field(default_factory=LogSettings)


def lease_problem(settings: Settings) -> str | None:
    """Why the lease and PUT timings cannot keep replicas apart, or ``None`` when they can.

    A PUT sent under a lease must end before the lease can pass to another replica: the owner
    renews the lease right before the PUT, so the PUT's whole life has to fit in one TTL.
    """
    put, ttl = settings.serving.put_deadline, settings.engine.lease_ttl
    if put >= ttl:
        return (
            f"ROLLOUT_SERVING_PUT_DEADLINE ({put:g} s) must be shorter than "
            f"ROLLOUT_ENGINE_LEASE_TTL ({ttl:g} s): a config PUT must end while the lease "
            "that allowed it still holds"
        )
    return None


_GROUPS: dict[str, type[BaseSettings]] = {
    cls.__name__: cls
    for cls in (
        DatabricksSettings,
        ServingSettings,
        EngineSettings,
        StoreSettings,
        ApiSettings,
        AlertSettings,
        PrometheusSettings,
        AliasSettings,
        LogSettings,
    )
}


def variable_of(model: str, loc: tuple[int | str, ...]) -> str:
    """The environment variable behind an invalid setting, from a ``ValidationError``'s
    ``title`` (the group's class, or ``Settings``) and an error's ``loc``:
    ``variable_of("EngineSettings", ("look_interval",))`` is ``ROLLOUT_ENGINE_LOOK_INTERVAL``."""
    parts = [str(part) for part in loc]
    group = _GROUPS.get(model)
    if group is None and len(parts) > 1:
        field = Settings.model_fields.get(parts[0])
        factory = getattr(field, "default_factory", None) if field is not None else None
        if isinstance(factory, type) and issubclass(factory, BaseSettings):
            group, parts = factory, parts[1:]
    if group is None or not parts:
        return "ROLLOUT_" + "_".join(parts).upper()
    prefix = str(group.model_config.get("env_prefix") or "")
    return (prefix + parts[0]).upper()
