"""Rollouts from Unity Catalog aliases: resolving them, watching them, moving them after success.

Where this sits in the path of a rollout, at three places:

- Submission. A plan's candidate may name ``alias: challenger`` instead of a version.
  ``resolve_aliases`` asks the workspace's registered-models API which version the alias names
  (``GET /api/2.1/unity-catalog/models/{model}/aliases/{alias}``) and returns the plan as it is
  stored: the version filled in beside the alias it came from, and for ``on_success.set_alias``
  the version that alias names now (for the rollback alert: "@champion stays at version 6").
  The API calls it before storing a plan; the watcher calls it with the version it saw.
- Watching (``AliasWatcher``, a root task of the daemon and ``rollout watch-alias``). Every
  ``poll_interval`` it reads each watched alias; when the alias names a version that the
  endpoint does not serve and that the watch has not recorded, it starts a rollout of that
  version from the watch's plan template. The rollout and the watch's record of the version
  are one transaction keyed by (watch, version) (``Store.create(trigger=...)``): two watchers,
  or one restarted, start exactly one rollout per alias move, and a move that was rolled back
  is not tried again.
- After a promotion (``AliasMover``, a root task of the daemon). A plan with
  ``on_success.set_alias`` is stored with its alias move (``Store.create(alias_move=...)``);
  once the rollout is ``succeeded`` the move is due, and the mover claims it, moves the alias
  (``PUT .../aliases/{alias}``, idempotent) and marks it done, retrying with backoff until the
  workspace takes it: at least once, never lost to a crash. A rollout that ends otherwise
  never makes its move due.

Errors of resolution, as the API answers them::

    AliasResolutionError         field, message
    ├── UnknownAlias             no such registered model, or no such alias of it (422)
    └── RegistryUnavailable      the workspace did not answer as it should (503 when worth
                                 retrying, else 502)
"""

from __future__ import annotations

import asyncio
import copy
import functools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from rollout.clock import Clock
from rollout.engine.model import RolloutState
from rollout.engine.runner import alias_move_of, new_rollout, summary_of
from rollout.errors import ConfigurationProblem
from rollout.plan import (
    AnyPlan,
    PlanError,
    check_plan,
    parse_document,
    validate_plan,
)
from rollout.policies import PolicyLibrary
from rollout.serving.client import ServingClient
from rollout.serving.errors import NotFound, ServingError
from rollout.serving.models import Endpoint, traffic_split
from rollout.settings import AliasSettings, AliasWatchSetting
from rollout.store.base import Store
from rollout.store.errors import ActiveRolloutExists, AliasMoveTaken, StoreError
from rollout.store.model import AliasMove, AliasTrigger, RolloutRecord

log = structlog.get_logger("rollout.aliases")


class AliasResolutionError(Exception):
    """An alias of a plan could not be resolved; ``field`` is the plan field it concerns."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class UnknownAlias(AliasResolutionError):  # noqa: N818 -- a fact, as NotFound
    """The registered model, or the alias of it, does not exist."""


class RegistryUnavailable(AliasResolutionError):  # noqa: N818 -- a fact, as NotFound
    """The workspace could not be asked; ``retryable`` as the serving error said."""

    def __init__(self, field: str, message: str, *, retryable: bool) -> None:
        super().__init__(field, message)
        self.retryable = retryable


async def _alias_version(
    client: ServingClient, model: str, alias: str, field: str
) -> str:
    """The version ``model@alias`` names, or ``UnknownAlias`` saying what is missing."""
    try:
        return (await client.get_model_version_by_alias(model, alias)).version
    except NotFound:
        pass
    except ServingError as exc:
        raise RegistryUnavailable(
            field, f"cannot read {model}@{alias}: {exc}", retryable=exc.retryable
        ) from exc
    # Which is missing, the model or its alias: the model's own answer tells.
    try:
        info = await client.get_registered_model(model)
    except NotFound as exc:
        raise UnknownAlias(
            "candidate.entity_name", f"registered model {model!r} does not exist"
        ) from exc
    except ServingError as exc:
        raise RegistryUnavailable(
            field, f"cannot read {model}: {exc}", retryable=exc.retryable
        ) from exc
    known = ", ".join(f"@{a.alias_name} = version {a.version_num}" for a in info.aliases)
    which = f"its aliases: {known}" if known else "it has no aliases"
    raise UnknownAlias(field, f"{model} has no alias @{alias} ({which})")


async def resolve_aliases(
    plan: AnyPlan, client: ServingClient, *, candidate_version: str | None = None
) -> AnyPlan:
    """``plan`` as it is stored: a candidate alias resolved to its version (or to
    ``candidate_version``, the version a watch saw), and ``on_success.previous_version`` set
    to the version ``on_success.set_alias`` names now. A plan without aliases is returned as
    it is. ``UnknownAlias`` / ``RegistryUnavailable``; ``PlanError`` when the resolved plan is
    not valid (the derived served name equals the baseline's)."""
    candidate = plan.candidate
    target = plan.on_success.set_alias if plan.on_success is not None else None
    if candidate.alias is None and target is None:
        return plan
    data = plan.model_dump(mode="json", exclude_none=True)
    if candidate.alias is not None and candidate.entity_version is None:
        version = candidate_version or await _alias_version(
            client, candidate.entity_name, candidate.alias, "candidate.alias"
        )
        data["candidate"]["entity_version"] = version
    if target is not None:
        try:
            info = await client.get_registered_model(candidate.entity_name)
        except NotFound as exc:
            raise UnknownAlias(
                "candidate.entity_name",
                f"registered model {candidate.entity_name!r} does not exist",
            ) from exc
        except ServingError as exc:
            raise RegistryUnavailable(
                "on_success.set_alias",
                f"cannot read {candidate.entity_name}: {exc}",
                retryable=exc.retryable,
            ) from exc
        previous = info.alias_version(target)
        if previous is not None:
            data["on_success"]["previous_version"] = previous
    return validate_plan(data, stored=True)


# ---- watching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AliasWatch:
    """One watched alias: ``model@alias`` rolled out on ``endpoint`` from ``template``."""

    model: str
    alias: str
    endpoint: str
    template: Mapping[str, Any]
    source: str = "the plan template"

    @property
    def key(self) -> str:
        """What the store records versions under, one per alias and endpoint."""
        return f"{self.model}@{self.alias} -> {self.endpoint}"

    @classmethod
    def load(
        cls, spec: str, endpoint: str, template: Path, library: PolicyLibrary
    ) -> AliasWatch:
        """A watch from ``catalog.schema.model@alias``, an endpoint and a plan file, checked
        now (``ConfigurationProblem`` saying what to fix)."""
        model, sep, alias = spec.partition("@")
        if not sep or not model or not alias:
            raise ConfigurationProblem(
                f"{spec!r}: name the alias as catalog.schema.model@alias"
            )
        try:
            text = template.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationProblem(
                f"plan template {template}: {exc.strerror or exc}"
            ) from exc
        try:
            data = parse_document(text, source=str(template))
        except PlanError as exc:
            raise ConfigurationProblem(f"plan template {template}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigurationProblem(f"plan template {template}: a plan must be a mapping")
        watch = cls(model, alias, endpoint, data, str(template))
        try:  # plan_data() checks that the template and the watch agree
            check_plan(watch.plan_data(), library)
        except PlanError as exc:
            raise ConfigurationProblem(f"plan template {template}: {exc}") from exc
        return watch

    @classmethod
    def from_setting(cls, setting: AliasWatchSetting, library: PolicyLibrary) -> AliasWatch:
        return cls.load(setting.alias, setting.endpoint, setting.plan_template, library)

    def plan_data(self) -> dict[str, Any]:
        """The template with the watch's endpoint and candidate alias in place."""
        data = copy.deepcopy(dict(self.template))
        endpoint = data.get("endpoint")
        if endpoint is not None and endpoint != self.endpoint:
            raise ConfigurationProblem(
                f"{self.source}: endpoint is {endpoint!r}, the watch's is {self.endpoint!r}"
            )
        data["endpoint"] = self.endpoint
        candidate = data.get("candidate")
        candidate = dict(candidate) if isinstance(candidate, Mapping) else {}
        named = candidate.get("entity_name")
        if named is not None and named != self.model:
            raise ConfigurationProblem(
                f"{self.source}: candidate.entity_name is {named!r}, the watch's model is "
                f"{self.model!r}"
            )
        candidate.pop("entity_version", None)
        candidate.update({"entity_name": self.model, "alias": self.alias})
        data["candidate"] = candidate
        return data


WatchOutcome = Literal[
    "started", "seen", "serving", "in_flight", "busy", "taken", "no_alias", "unavailable",
    "invalid",
]
"""What one look at a watch came to: a rollout ``started``; the version was ``seen`` before;
the endpoint is ``serving`` it already or has it ``in_flight``; another rollout keeps the
endpoint ``busy`` (looked at again next time); another watcher ``taken`` it first; the alias
is not set (``no_alias``); the workspace or store is ``unavailable``; the plan came out
``invalid`` for that version (recorded, not tried again)."""


def serves(endpoint: Endpoint, model: str, version: str) -> bool:
    """Whether the endpoint sends traffic to ``model`` version ``version`` now."""
    if endpoint.config is None:
        return False
    split = traffic_split(endpoint)
    return any(
        entity.entity_name == model
        and entity.entity_version == version
        and split.get(entity.derived_name(), 0) > 0
        for entity in endpoint.config.entities()
    )


def _is_candidate(record: RolloutRecord, model: str, version: str) -> bool:
    candidate = record.plan.get("candidate")
    if not isinstance(candidate, Mapping):
        return False
    return candidate.get("entity_name") == model and str(candidate.get("entity_version")) == (
        version
    )


class AliasWatcher:
    """Polls each watched alias and starts one rollout per move (see the module's text)."""

    def __init__(
        self,
        store: Store,
        client: ServingClient,
        clock: Clock,
        watches: Sequence[AliasWatch],
        *,
        library: PolicyLibrary | None = None,
        poll_interval: float = 60.0,
        wake: Callable[[str], object] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.clock = clock
        self.watches = list(watches)
        self.library = library or PolicyLibrary()
        self.poll_interval = poll_interval
        self.wake = wake

    async def check_all(self) -> dict[str, WatchOutcome]:
        """One look at every watch; what each came to, by watch key."""
        return {watch.key: await self.check(watch) for watch in self.watches}

    async def check(self, watch: AliasWatch) -> WatchOutcome:
        try:
            named = await self.client.get_model_version_by_alias(watch.model, watch.alias)
        except NotFound:
            log.info("aliases.not_set", watch=watch.key)
            return "no_alias"
        except ServingError as exc:
            log.warning("aliases.unavailable", watch=watch.key, error=str(exc))
            return "unavailable"
        try:
            return await self._take_up(watch, named.version)
        except (ServingError, StoreError) as exc:
            log.warning("aliases.unavailable", watch=watch.key, error=str(exc))
            return "unavailable"

    async def _take_up(self, watch: AliasWatch, version: str) -> WatchOutcome:
        if await asyncio.to_thread(self.store.alias_trigger, watch.key, version) is not None:
            return "seen"
        now = self.clock.now()
        endpoint = await self.client.get_endpoint(watch.endpoint)
        if serves(endpoint, watch.model, version):
            await self._record(watch, version, None, "serving")
            return "serving"
        active = await asyncio.to_thread(self.store.active_for_endpoint, watch.endpoint)
        if active is not None:
            if _is_candidate(active, watch.model, version):
                await self._record(watch, version, active.id, "in_flight")
                return "in_flight"
            log.info("aliases.endpoint_busy", watch=watch.key, version=version,
                     active=active.id)
            return "busy"
        try:
            plan, policy = check_plan(watch.plan_data(), self.library)
            plan = await resolve_aliases(plan, self.client, candidate_version=version)
        except (PlanError, UnknownAlias) as exc:
            # Nothing will make this version's plan valid: say so once, do not retry it.
            log.error(  # noqa: TRY400 -- the message is the whole story; no traceback
                "aliases.invalid_plan", watch=watch.key, version=version, error=str(exc)
            )
            await self._record(watch, version, None, "invalid")
            return "invalid"
        except RegistryUnavailable as exc:
            log.warning("aliases.unavailable", watch=watch.key, error=str(exc))
            return "unavailable"
        record, event = new_rollout(
            plan, policy, now, origin=f"started by the alias watch {watch.key}"
        )
        summary = summary_of(plan, RolloutState.model_validate(record.state))
        create = functools.partial(
            self.store.create,
            record,
            event,
            [],
            summary=summary,
            trigger=AliasTrigger(watch.key, version, record.id, now),
            alias_move=alias_move_of(plan),
        )
        try:
            stored = await asyncio.to_thread(create)
        except AliasMoveTaken:
            log.info("aliases.taken", watch=watch.key, version=version)
            return "taken"
        except ActiveRolloutExists as exc:
            # Another watcher's rollout of this very move may be what holds the endpoint.
            if await asyncio.to_thread(self.store.alias_trigger, watch.key, version):
                log.info("aliases.taken", watch=watch.key, version=version)
                return "taken"
            log.info("aliases.endpoint_busy", watch=watch.key, version=version,
                     active=exc.active_id)
            return "busy"
        log.info(
            "aliases.rollout_started",
            watch=watch.key,
            version=version,
            rollout=stored.id,
            candidate=plan.candidate.describe(),
        )
        if self.wake is not None:
            self.wake(stored.id)
        return "started"

    async def _record(
        self, watch: AliasWatch, version: str, rollout_id: str | None, why: str
    ) -> None:
        trigger = AliasTrigger(watch.key, version, rollout_id, self.clock.now())
        if await asyncio.to_thread(self.store.record_alias_seen, trigger):
            log.info("aliases.version_seen", watch=watch.key, version=version, outcome=why,
                     rollout=rollout_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Look at every watch each ``poll_interval`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.check_all()
            except Exception:  # one bad pass must not end the watch
                log.exception("aliases.pass_failed")
            await _sleep_or_stop(self.clock, stop, self.poll_interval)


# ---- moving an alias after a promotion -----------------------------------------------------


class AliasMover:
    """Moves the aliases of promoted rollouts (``on_success.set_alias``), at least once."""

    def __init__(
        self,
        store: Store,
        client: ServingClient,
        clock: Clock,
        settings: AliasSettings | None = None,
        *,
        batch: int = 8,
        poll_interval: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.clock = clock
        self.settings = settings or AliasSettings()
        self.batch = batch
        self.poll_interval = poll_interval
        self.rng = rng or random.Random()

    def _delay(self, attempts: int) -> float:
        ceiling = self.settings.move_max_backoff
        base = min(ceiling, self.settings.move_initial_backoff * 2.0 ** max(attempts - 1, 0))
        return float(base * (0.5 + self.rng.random() / 2))

    async def move_once(self) -> list[str]:
        """Claim the due moves and make them; the rollout ids whose move is now done."""
        now = self.clock.now()
        moves = await asyncio.to_thread(
            self.store.claim_alias_moves, now, self.batch, self.settings.move_lease
        )
        return [move.rollout_id for move in moves if await self._move(move)]

    async def _move(self, move: AliasMove) -> bool:
        where = f"{move.model}@{move.alias}"
        try:
            await self.client.set_alias(move.model, move.alias, move.version)
        except ServingError as exc:
            delay = self._delay(move.attempts)
            if not exc.retryable:
                delay = self.settings.move_max_backoff  # someone must fix it; keep trying
            log.warning("aliases.move_failed", rollout=move.rollout_id, alias=where,
                        version=move.version, attempt=move.attempts, retry_in=round(delay, 1),
                        error=str(exc))
            await asyncio.to_thread(
                self.store.mark_alias_move_failed,
                move.rollout_id,
                str(exc)[:1000],
                self.clock.now() + delay,
            )
            return False
        await asyncio.to_thread(self.store.mark_alias_moved, move.rollout_id, self.clock.now())
        log.info("aliases.moved", rollout=move.rollout_id, alias=where, version=move.version)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Make due moves every ``poll_interval`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.move_once()
            except Exception:  # a store outage must not end the mover
                log.exception("aliases.move_pass_failed")
            await _sleep_or_stop(self.clock, stop, self.poll_interval)


async def _sleep_or_stop(clock: Clock, stop: asyncio.Event, seconds: float) -> None:
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            task.cancel()
