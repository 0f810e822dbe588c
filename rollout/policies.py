"""Analysis policies by name: the built-in YAML files and any extra directories.

Where this sits: when a plan is validated its ``policy`` (a name or an inline mapping) is
resolved here into a ``rollout.analysis.spec.Policy``; the resolved policy is stored with the
rollout, so editing a policy file later never changes a rollout already running.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rollout.analysis.spec import METRIC_CHECK_TAG, QUERY_CHECK_TAG, Policy

# A policy name becomes a file name: nothing that could leave the policy directories.
_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def builtin_policy_dir() -> Path:
    """``policies/`` of a source checkout, or its copy inside an installed wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_policies", package.parent / "policies"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the built-in policies directory is missing from this installation")


class PolicyNotFoundError(LookupError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown policy {name!r}; known policies: {', '.join(self.known) or 'none'}"
        )


class PolicyLibrary:
    """Named policies read from directories of ``<name>.yaml`` files (later ones win)."""

    def __init__(self, directories: Iterable[Path] | None = None) -> None:
        self._directories = list(directories) if directories is not None else [builtin_policy_dir()]

    def names(self) -> list[str]:
        found = {path.stem for directory in self._directories for path in directory.glob("*.yaml")}
        return sorted(found)

    def get(self, name: str) -> Policy:
        if not _POLICY_NAME.match(name) or ".." in name:
            # Plans arrive over the API: a name like "../x" must not read files elsewhere.
            raise PolicyNotFoundError(name, self.names())
        for directory in reversed(self._directories):
            path = directory / f"{name}.yaml"
            if path.is_file():
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
                if not isinstance(data, Mapping):
                    raise ValueError(f"{path}: a policy file must hold a mapping")
                return Policy.model_validate({"name": name, **dict(data)})
        raise PolicyNotFoundError(name, self.names())

    @classmethod
    def with_directories(cls, extra: Iterable[Path | str]) -> PolicyLibrary:
        """The built-in policies and those of ``extra`` (later directories win, so a team's
        ``default.yaml`` replaces the built-in one); every directory must exist."""
        directories = [Path(item).expanduser() for item in extra if str(item).strip()]
        missing = [str(path) for path in directories if not path.is_dir()]
        if missing:
            raise ValueError(f"policy directory not found: {', '.join(missing)}")
        return cls([builtin_policy_dir(), *directories])

    @classmethod
    def from_path_list(cls, text: str, *more: Path) -> PolicyLibrary:
        """``with_directories`` of a PATH-style list (``dir1:dir2``; ``;`` on Windows), then
        ``more``."""
        return cls.with_directories([*(text.split(os.pathsep) if text.strip() else []), *more])

    def resolve(self, ref: str | Mapping[str, Any]) -> Policy:
        """A name from the library, or an inline mapping validated as a policy."""
        if isinstance(ref, str):
            return self.get(ref)
        return Policy.model_validate(dict(ref))


def policy_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path under ``policy``, message) for each problem of an invalid policy."""
    problems = []
    for error in exc.errors():
        path = "policy"
        for part in error["loc"]:
            if part in (METRIC_CHECK_TAG, QUERY_CHECK_TAG):
                continue  # the checks union's tags are not fields
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append((path, message))
    return problems
