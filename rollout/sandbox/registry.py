"""Unity Catalog registered models in the sandbox: versions and aliases.

The sandbox is the fake Databricks workspace behind the serving client. A rollout may name its
candidate by an alias (``main.ml.ads_model@challenger``), which the controller resolves
through the registered-models API at submission, and a promoted rollout may move another alias
(``@champion``) to the candidate's version; ``rollout watch-alias`` polls an alias and starts a
rollout whenever it moves. This module keeps what those calls read and write, shaped as the
databricks-sdk's catalog dataclasses read it (``ModelVersionInfo``, ``RegisteredModelInfo``,
``RegisteredModelAlias``: ``alias_name`` and ``version_num``). ``rollout.sandbox.workspace``
owns one ``ModelRegistry``; ``rollout.sandbox.app`` routes the calls (and the admin calls
tests use to register a version and move an alias). Pure: no I/O; times are given.

Only what the controller uses is simulated: a model exists once a version of it is registered
(through the admin API), versions are numbered 1, 2, 3 ..., an alias names one version of its
model and moving it is a replace. Errors (``ApiError``)::

    ApiError
    ├── 404 RESOURCE_DOES_NOT_EXIST   no such model, version, or alias of the model
    └── 400 INVALID_PARAMETER_VALUE   a version that is not a positive integer, a bad alias name
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from rollout.sandbox.models import ApiError, invalid

# As Unity Catalog: letters, digits and '_', not starting with a digit.
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def _model_missing(full_name: str) -> ApiError:
    return ApiError(
        404, "RESOURCE_DOES_NOT_EXIST", f"Routine or Model '{full_name}' does not exist."
    )


@dataclass
class _Model:
    full_name: str
    created_at: int
    versions: dict[int, int] = field(default_factory=dict)
    """Version number -> creation time in epoch ms."""
    aliases: dict[str, int] = field(default_factory=dict)

    def parts(self) -> dict[str, str]:
        catalog, schema, name = [*self.full_name.split(".", 2), "", ""][:3]
        return {"catalog_name": catalog, "schema_name": schema, "name": name}

    def alias_list(self) -> list[dict[str, Any]]:
        return [
            {"alias_name": alias, "version_num": version}
            for alias, version in sorted(self.aliases.items())
        ]


class ModelRegistry:
    """The workspace's registered models, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}

    def _model(self, full_name: str) -> _Model:
        model = self._models.get(full_name)
        if model is None:
            raise _model_missing(full_name)
        return model

    @staticmethod
    def _version_number(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise invalid(f"Invalid version {value!r}: a positive integer is required.")
        try:
            number = int(value)
        except ValueError:
            raise invalid(f"Invalid version {value!r}: a positive integer is required.") from None
        if number < 1:
            raise invalid(f"Invalid version {value!r}: a positive integer is required.")
        return number

    @staticmethod
    def _alias_name(alias: str) -> str:
        if not _ALIAS.match(alias):
            raise invalid(f"Invalid alias name '{alias}'.")
        return alias

    def _version_info(self, model: _Model, version: int) -> dict[str, Any]:
        parts = model.parts()
        return {
            "model_name": parts["name"],
            "catalog_name": parts["catalog_name"],
            "schema_name": parts["schema_name"],
            "version": version,
            "status": "READY",
            "created_at": model.versions[version],
            "aliases": [a for a in model.alias_list() if a["version_num"] == version],
        }

    # ---- the registered-models API -------------------------------------------------------

    def get_model(self, full_name: str, *, include_aliases: bool) -> dict[str, Any]:
        with self._lock:
            model = self._model(full_name)
            info: dict[str, Any] = {
                "full_name": model.full_name,
                **model.parts(),
                "created_at": model.created_at,
            }
            if include_aliases:
                info["aliases"] = model.alias_list()
            return info

    def get_by_alias(self, full_name: str, alias: str) -> dict[str, Any]:
        with self._lock:
            model = self._model(full_name)
            version = model.aliases.get(alias)
            if version is None:
                raise ApiError(
                    404,
                    "RESOURCE_DOES_NOT_EXIST",
                    f"Model version with alias '{alias}' of model '{full_name}' does not exist.",
                )
            return self._version_info(model, version)

    def set_alias(self, full_name: str, alias: str, version: object) -> dict[str, Any]:
        number = self._version_number(version)
        with self._lock:
            model = self._model(full_name)
            if number not in model.versions:
                raise ApiError(
                    404,
                    "RESOURCE_DOES_NOT_EXIST",
                    f"Model version {number} of model '{full_name}' does not exist.",
                )
            model.aliases[self._alias_name(alias)] = number
            return {"alias_name": alias, "version_num": number, **model.parts()}

    def delete_alias(self, full_name: str, alias: str) -> None:
        with self._lock:
            model = self._model(full_name)
            if model.aliases.pop(alias, None) is None:
                raise ApiError(
                    404,
                    "RESOURCE_DOES_NOT_EXIST",
                    f"Alias '{alias}' of model '{full_name}' does not exist.",
                )

    # ---- admin ----------------------------------------------------------------------------

    def create_version(self, full_name: str, now_ms: int, aliases: list[str]) -> dict[str, Any]:
        """Register the model's next version (the model too, on its first), pointing
        ``aliases`` at it."""
        if full_name.count(".") != 2 or any(not p for p in full_name.split(".")):
            raise invalid(f"'{full_name}' is not a three-level name (catalog.schema.model).")
        names = [self._alias_name(a) for a in aliases]
        with self._lock:
            model = self._models.setdefault(full_name, _Model(full_name, now_ms))
            number = max(model.versions, default=0) + 1
            model.versions[number] = now_ms
            for alias in names:
                model.aliases[alias] = number
            return self._version_info(model, number)

    def view(self, full_name: str) -> dict[str, Any]:
        """The model as tests inspect it: its versions and where each alias points."""
        with self._lock:
            model = self._model(full_name)
            return {
                "full_name": model.full_name,
                "versions": sorted(model.versions),
                "aliases": dict(sorted(model.aliases.items())),
            }
