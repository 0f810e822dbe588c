"""The Databricks Model Serving client: async httpx, auth, typed errors, one retry policy.

Where this sits in a rollout: the runner applies each engine decision through
``ServingClient``: it PUTs the next ``ConfigSpec``, waits for the update to settle and verifies
the live split (``wait_until_applied``), and scrapes ``export_metrics`` for the judges; the
API and the alias watcher read and move Unity Catalog model aliases through it. Nothing
outside this package talks to the serving-endpoints API, and nothing raised from it is anything
but a ``ServingError``.
"""

from rollout.serving.auth import (
    Auth,
    Credentials,
    OAuthM2MAuth,
    PatAuth,
    auth_from_credentials,
    resolve_credentials,
)
from rollout.serving.client import ResponseHook, ServingClient
from rollout.serving.errors import (
    AlreadyExists,
    ConfigMismatch,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    MalformedResponse,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServingError,
    ServingTransportError,
    Unauthenticated,
    Unavailable,
    UpdateFailed,
    UpdateInProgress,
    UpdateTimeout,
)
from rollout.serving.models import (
    ConfigSpec,
    ConfigUpdate,
    DeploymentState,
    Endpoint,
    EndpointConfig,
    EndpointState,
    EndpointSummary,
    InvocationResult,
    ModelAlias,
    ModelVersionInfo,
    PendingConfig,
    Ready,
    RegisteredModelInfo,
    Route,
    ServedEntity,
    ServedEntityState,
    ServedModel,
    Tag,
    TrafficConfig,
    traffic_split,
)
from rollout.serving.retry import RetryPolicy
from rollout.serving.sdk_auth import SdkAuth, sdk_available

__all__ = [
    "AlreadyExists",
    "Auth",
    "ConfigMismatch",
    "ConfigSpec",
    "ConfigUpdate",
    "ConfigurationError",
    "Conflict",
    "Credentials",
    "DeploymentState",
    "Endpoint",
    "EndpointConfig",
    "EndpointState",
    "EndpointSummary",
    "InvalidRequest",
    "InvocationResult",
    "MalformedResponse",
    "ModelAlias",
    "ModelVersionInfo",
    "NotFound",
    "OAuthM2MAuth",
    "PatAuth",
    "PendingConfig",
    "PermissionDenied",
    "RateLimited",
    "Ready",
    "RegisteredModelInfo",
    "ResponseHook",
    "RetryPolicy",
    "Route",
    "SdkAuth",
    "ServedEntity",
    "ServedEntityState",
    "ServedModel",
    "ServerError",
    "ServingClient",
    "ServingError",
    "ServingTransportError",
    "Tag",
    "TrafficConfig",
    "Unauthenticated",
    "Unavailable",
    "UpdateFailed",
    "UpdateInProgress",
    "UpdateTimeout",
    "auth_from_credentials",
    "resolve_credentials",
    "sdk_available",
    "traffic_split",
]
