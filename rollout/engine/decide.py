"""``decide``: the rollout state machine as one pure function.

Where this sits: at every tick the runner calls ``decide(plan, state, observation, now)`` and
gets back a ``Decision``: the next state, the events, alerts and notification hooks to persist
with it, the one effect to carry out afterwards (a config PUT, blue/green preflight checks, or
a call of one of the plan's gate hooks), and when to look again. Nothing here does I/O or
reads a clock; the same inputs always give the same decision, which is what makes replay
after a crash safe and the table-driven tests possible.

The life of a canary::

    pending [pre_rollout says yes] --deploy candidate at 0 %--> preparing --step 1 split-->
      progressing(step k): judge each new window; fail -> rolling_back; bake done and judge
      allows -> next step, after the last step (only on a pass) [confirm_promotion says yes,
      the judge still looking] -> promoting (candidate alone at 100 %) -> succeeded; an
      operator's promote skips steps, recorded as skipped
    every end: post_rollout; a rollback applied: on_rollback (see "gates" below)
    rolling_back: restore baseline at 100 % -> remove candidate -> rolled_back (or aborted)
    could not restore -> failed (a human must act)

Every config change goes through a ``Target``: decided and persisted first, PUT by the runner,
and confirmed only when the endpoint shows it. A target the endpoint shows neither as live, as
pending, nor as the config it replaced means someone changed the endpoint by hand (drift): the
rollout pauses and says so, and never fights the human. A config the endpoint refused (the
runner's ``failed`` outcome, or, at any later look, UPDATE_FAILED while the endpoint still
serves a version older than the one the target's PUT announced) is never sent again: the
rollout rolls back, the build logs' last lines in its event and alerts, and a refused
rollback ends ``failed``. Metrics whose series name no served
entity while several serve (``Observation.unattributable``) would judge the endpoint against
itself: the rollout pauses too, naming the labels the export carried.

The entities a rollout starts from are copied whole from the first GET (fields the controller
does not know included), plus the plan's ``entity_settings`` for fields a GET never shows; every
later PUT of the rollout, the restore included, sends them as copied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rollout.analysis.ab import ab_report
from rollout.analysis.control import against_control
from rollout.analysis.judge import Look as JudgeInput
from rollout.analysis.spec import Policy
from rollout.analysis.verdict import Outcome, VerdictRecord, Warmup
from rollout.analysis.warmth import looks_warm
from rollout.analysis.wording import verdict_sentence
from rollout.engine.judging import Look, judge_look
from rollout.engine.model import (
    AlertOut,
    Arm,
    CallGate,
    Command,
    Decision,
    Effect,
    EndpointSnapshot,
    EventOut,
    Folded,
    GateOutcome,
    GateState,
    HookOut,
    Observation,
    Phase,
    PutConfig,
    RollbackCause,
    RolloutState,
    RunPreflight,
    Target,
    TargetPurpose,
    allowed_commands,
)
from rollout.metrics.model import ArmTotals, EntityWindow
from rollout.metrics.windows import sum_windows, window_length_ms
from rollout.plan import (
    ABPlan,
    AnyPlan,
    BlueGreenPlan,
    CanaryPlan,
    GateHook,
    GateName,
    Severity,
    judged_weights,
)
from rollout.units import format_duration


@dataclass(frozen=True)
class Timing:
    """How often to look and how long to wait; passed in, never read from the environment."""

    look_interval: float = 60.0  # seconds between judging looks (one metrics window)
    update_poll: float = 5.0  # seconds between looks while a config update is in flight
    update_deadline: float = 45 * 60.0  # a config update not settled by then has failed
    max_put_attempts: int = 3  # PUTs of one target before giving up on it
    step_deadline_factor: float = 3.0  # a step with no conclusive verdict after bake x this
    metrics_window: float = 60.0  # seconds per export-metrics window (a policy's warm-up unit)
    # A verdict that changed is logged at most this often (a first verdict of a split and a
    # fail always are): a judge hovering at a boundary must not fill the log.
    verdict_log_interval: float = 900.0


DEFAULT_TIMING = Timing()


def config_key(entities: list[str], split: dict[str, int]) -> str:
    """A comparable fingerprint of a config: entity names and the non-zero routes."""
    routes = ",".join(f"{name}={pct}" for name, pct in sorted(split.items()) if pct)
    return f"{'|'.join(sorted(entities))}#{routes}"


def entity_identity(name: str, entity: Mapping[str, Any]) -> str:
    """A served entity as the fingerprints name it: its name, and what it serves when known
    (the same name redeployed with another model version is another config)."""
    model, version = entity.get("entity_name"), entity.get("entity_version")
    return f"{name}={model}@{version}" if model and version is not None else name


def snapshot_key(snapshot: EndpointSnapshot) -> str:
    identities = [entity_identity(name, e) for name, e in snapshot.entities.items()]
    return config_key(identities, snapshot.split)


def pending_key(snapshot: EndpointSnapshot) -> str | None:
    if snapshot.pending_entities is None or snapshot.pending_split is None:
        return None
    return config_key(snapshot.pending_entities, snapshot.pending_split)


def target_key(target: Target) -> str:
    identities = [entity_identity(str(e["name"]), e) for e in target.entities]
    return config_key(identities, target.split)


# The excerpt of a failed build's logs kept in the state, the events and the alerts.
BUILD_LOG_LINES = 40
BUILD_LOG_CHARS = 4096


def logs_excerpt(text: str, *, lines: int = BUILD_LOG_LINES, chars: int = BUILD_LOG_CHARS) -> str:
    """The end of a build log, where the error is: at most ``lines`` lines and ``chars``
    characters (the last line cut from the left if it alone is longer)."""
    tail = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return tail[-chars:]


def update_failure(target: Target, snapshot: EndpointSnapshot) -> str | None:
    """Why ``snapshot`` shows that the update ``target``'s PUT started failed; None if it
    does not.

    UPDATE_FAILED (or UPDATE_CANCELED) stays on the endpoint until the next update, so it
    alone cannot tell whose update failed: it is this target's only once its PUT announced a
    config version and the live config is still older than that version (a failed update
    leaves the previous config serving). A target whose PUT was never seen through (a crash
    before sending, a 409) has no announced version and is never taken for failed here.
    """
    announced = target.announced_version
    if announced is None or not snapshot.failed:
        return None
    live = snapshot.config_version
    if live is not None and live >= announced:
        return None  # ours was applied; a later update (someone else's) failed
    serving = "an older config" if live is None else f"config version {live}"
    return (
        f"the update to config version {announced} ended {snapshot.config_update}; "
        f"the endpoint still serves {serving}"
    )


@dataclass(frozen=True)
class _Unit:
    """What the judge sees after one more window of the split: the sums up to that window."""

    candidate: ArmTotals
    baseline: ArmTotals
    served: ArmTotals
    # The warm-up's paired sums (canary and A/B): judged only for gross regressions.
    warm_candidate: ArmTotals | None = None
    warm_baseline: ArmTotals | None = None


@dataclass
class _Turn:
    """Collects the parts of one decision while the phase handlers run."""

    plan: AnyPlan
    policy: Policy
    obs: Observation
    now: float
    timing: Timing
    state: RolloutState
    events: list[EventOut] = field(default_factory=list)
    alerts: list[AlertOut] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)
    hooks: list[HookOut] = field(default_factory=list)
    effect: Effect | None = None
    next_check_in: float | None = None
    # Set by ``_accumulate``: whether this observation changed what the arms sum to, and the
    # instant from which the current split's windows are scored (after its warm-up).
    arrived: bool = False
    scored_from: float | None = None
    # The warm-up ended before its length: a window's latency showed a warm candidate.
    warm_early: bool = False
    unpaired: int = 0
    units: list[_Unit] = field(default_factory=list)

    def set(self, **changes: Any) -> None:
        self.state = self.state.model_copy(update=changes)

    def move(self, to: Phase, reason: str, kind: str, data: dict[str, Any] | None = None) -> None:
        before = self.state.phase
        self.events.append(EventOut(kind, reason, before, to, data or {}))
        self.set(phase=to)
        if to.terminal and not before.terminal:
            self._ended(before, to, reason)

    def _ended(self, before: Phase, to: Phase, reason: str) -> None:
        """The notification hooks of an end: ``post_rollout`` at every end, with the
        outcome; ``on_rollback`` when a rollback was applied (rolled back or aborted after
        the baseline was restored and the candidate removed)."""
        hooks, state, plan = self.plan.hooks, self.state, self.plan
        details: dict[str, Any] = {
            "outcome": to.value,
            "reason": reason,
            "cause": state.ending_cause,
            "verdict": _verdict_data(state),
            "skipped_steps": list(state.skipped_steps),
        }
        if hooks.on_rollback is not None and before is Phase.ROLLING_BACK and to in (
            Phase.ROLLED_BACK,
            Phase.ABORTED,
        ):
            self.hooks.append(HookOut(
                "on_rollback",
                f"{plan.endpoint}: rollback of {plan.candidate.served_name} applied: "
                f"{state.ending_reason or reason}",
                details,
            ))
        if hooks.post_rollout is not None:
            self.hooks.append(HookOut(
                "post_rollout",
                f"{plan.endpoint}: rollout of {plan.candidate.served_name} ended {to.value}",
                details,
            ))

    def note(self, kind: str, reason: str, data: dict[str, Any] | None = None) -> None:
        phase = self.state.phase
        self.events.append(EventOut(kind, reason, phase, phase, data or {}))

    def alert(
        self, event: str, severity: Severity, summary: str, details: dict[str, Any] | None = None
    ) -> None:
        # Deterministic keys: replaying the same decision after a crash yields the same key, and
        # the outbox ignores it the second time; the count makes every alert's key its own.
        number = self.state.alerts_raised + 1
        self.set(alerts_raised=number)
        self.alerts.append(AlertOut(f"{event}:{number}", event, severity, summary, details or {}))

    def put(self, target: Target) -> None:
        self.set(target=target)
        self.effect = PutConfig(target)
        self.next_check_in = self.timing.update_poll

    def again_in(self, seconds: float) -> None:
        self.next_check_in = (
            seconds if self.next_check_in is None else min(self.next_check_in, seconds)
        )

    def decision(self) -> Decision:
        if self.state.phase.terminal:
            self.next_check_in = None
        elif self.next_check_in is None:
            self.next_check_in = self.timing.look_interval
        return Decision(
            state=self.state,
            events=tuple(self.events),
            alerts=tuple(self.alerts),
            effect=self.effect,
            next_check_in=self.next_check_in,
            consumed_commands=tuple(self.consumed),
            hooks=tuple(self.hooks),
        )


def decide(
    plan: AnyPlan,
    state: RolloutState,
    observation: Observation,
    now: float,
    *,
    policy: Policy,
    timing: Timing = DEFAULT_TIMING,
) -> Decision:
    """The next step of one rollout. Pure: same inputs, same decision."""
    turn = _Turn(plan, policy, observation, now, timing, state)
    if state.phase.terminal:
        for command in observation.commands:
            turn.consumed.append(command.id)
            turn.note("command_ignored", f"{command.kind}: the rollout has already ended")
        return turn.decision()

    if observation.endpoint_missing and state.phase is not Phase.PENDING:
        _fail(turn, f"endpoint {plan.endpoint!r} no longer exists")
        return turn.decision()

    _take_abort(turn)
    if turn.effect is None and turn.state.target is not None:
        _follow_target(turn)
    if turn.effect is None and not turn.state.phase.terminal and not _held_by_someone_else(turn):
        _check_deadline(turn)
        if turn.effect is None and not turn.state.phase.terminal and turn.state.target is None:
            _PHASES[turn.state.phase](turn)
    _leftover_commands(turn)
    return turn.decision()


# ---- commands -----------------------------------------------------------------------------


def _take_abort(turn: _Turn) -> None:
    for command in turn.obs.commands:
        if command.kind != "abort":
            continue
        turn.consumed.append(command.id)
        if "abort" not in allowed_commands(turn.state.phase):
            turn.note("command_ignored", "abort: already rolling back")
            continue
        reason = str(command.payload.get("reason") or "aborted by an operator")
        _start_rollback(
            turn, reason, "aborted", ending=Phase.ABORTED, kind="aborted", severity="warn"
        )
        return


def _leftover_commands(turn: _Turn) -> None:
    """Commands no handler took: consume those that cannot apply now, keep the rest queued.

    Commands wait while a config update is in flight (a pause between a PUT and its
    confirmation would leave the rollout not knowing which split is live). Before the first
    step is live (pending, preparing) the commands the phase takes wait for it too: a pause
    or promote sent just after a submission applies to the first step.
    """
    if turn.state.target is not None and not turn.state.phase.terminal:
        return
    before_first_step = turn.state.phase in (Phase.PENDING, Phase.PREPARING)
    for command in turn.obs.commands:
        if command.id in turn.consumed:
            continue
        if before_first_step and command.kind in allowed_commands(turn.state.phase):
            continue
        turn.consumed.append(command.id)
        turn.note(
            "command_ignored",
            f"{command.kind}: not applicable while {turn.state.phase.value}",
        )


def _take(turn: _Turn, *kinds: str) -> Command | None:
    """The first queued command of ``kinds`` the current phase takes (``COMMANDS_BY_PHASE``,
    the table the API refuses commands by)."""
    if turn.state.target is not None:
        return None
    allowed = allowed_commands(turn.state.phase)
    for command in turn.obs.commands:
        if command.kind in kinds and command.kind in allowed and command.id not in turn.consumed:
            turn.consumed.append(command.id)
            return command
    return None


# ---- targets: one config change from decision to confirmation -------------------------------


def _entities(turn: _Turn, *, candidate: bool, baseline: bool) -> list[dict[str, Any]]:
    state = turn.state
    entities = [dict(e) for e in state.other_entities]
    if baseline and state.baseline_entity is not None:
        entities.append(dict(state.baseline_entity))
    if candidate:
        entities.append(turn.plan.candidate.as_served_entity())
    return entities


def _new_target(
    turn: _Turn,
    purpose: TargetPurpose,
    candidate_weight: int,
    *,
    with_candidate: bool = True,
    with_baseline: bool = True,
) -> Target:
    state = turn.state
    baseline = state.baseline or ""
    candidate = turn.plan.candidate.served_name
    split = {str(e["name"]): 0 for e in state.other_entities}
    if with_baseline:
        split[baseline] = 100 - candidate_weight
    if with_candidate:
        split[candidate] = candidate_weight
    known: list[str] = []
    if turn.obs.endpoint is not None:
        known.append(snapshot_key(turn.obs.endpoint))
    if state.target is not None:
        # A target still in flight may land before this one is sent: it is ours too.
        known += [target_key(state.target), *state.target.known]
    return Target(
        purpose=purpose,
        entities=_entities(turn, candidate=with_candidate, baseline=with_baseline),
        split=split,
        known=list(dict.fromkeys(known)),
        requested_at=turn.now,
        auto_capture_config=state.auto_capture_config,
    )


def _follow_target(turn: _Turn) -> None:
    target = turn.state.target
    if target is None:
        return
    outcome = turn.obs.update
    snapshot = turn.obs.endpoint
    wanted = target_key(target)
    rollback = target.purpose in ("restore", "remove_candidate")
    target = _announced(turn, target)

    if _refused(turn, target):
        return
    if snapshot is None:
        if outcome is not None and outcome.kind == "applied":
            _confirmed(turn, target)
            return
        _target_waiting(turn, target, turn.obs.endpoint_error or "endpoint not readable")
        return
    live = snapshot_key(snapshot)
    if snapshot.updating:
        if pending_key(snapshot) == wanted:
            _target_waiting(turn, target, "update in progress")
        else:
            # Someone else's update is in flight (or our previous one): wait for it to settle;
            # what it leaves behind decides between resending and drift.
            _target_waiting(turn, target, "another update is in progress")
        return
    if live == wanted:
        _confirmed(turn, target)
        return
    if _not_applied_yet(turn, target, snapshot):
        return
    if live in target.known:
        # Not applied and no failure of this PUT's version seen: the PUT was never sent (a
        # crash), was refused with a conflict, or its fate is unknown (a restart before its
        # version was recorded): send again, a bounded number of times.
        _resend(turn, target, "the endpoint does not show the update yet")
        return
    candidate = turn.plan.candidate.served_name
    if rollback and snapshot.split.get(candidate, 0) == 0:
        # Someone already took the candidate's traffic away, which is what we wanted, and
        # the rollback may go on only if the rest is what it would leave behind: removing
        # the candidate must not undo a human's other changes.
        rest = config_key(
            [entity_identity(n, e) for n, e in snapshot.entities.items() if n != candidate],
            snapshot.split,
        )
        leaves = _new_target(turn, "remove_candidate", 0, with_candidate=False)
        if rest == target_key(leaves):
            _confirmed(turn, target)
            return
    _drift(turn, snapshot)


def _refused(turn: _Turn, target: Target) -> bool:
    """The endpoint refused the target's config: roll back (or fail a rollback), and never
    send that config again. True when the turn is decided."""
    outcome, snapshot = turn.obs.update, turn.obs.endpoint
    if outcome is not None and outcome.kind in ("failed", "rejected"):
        _target_failed(turn, target, outcome.message, outcome.build_logs)
        return True
    failure = None if snapshot is None else update_failure(target, snapshot)
    if failure is None:
        return False
    # Seen on a later look with no outcome from the runner (which attaches the build logs
    # when it sees the same): still a refusal, never a reason to send again.
    _target_failed(turn, target, failure, None)
    return True


def _not_applied_yet(turn: _Turn, target: Target, snapshot: EndpointSnapshot) -> bool:
    """Settled on a version older than the one our PUT announced, and not failed: this read
    has not caught up with the PUT yet, and sending again would start a second update. Wait
    (until the update deadline). True when the turn is decided."""
    announced, version = target.announced_version, snapshot.config_version
    if snapshot.updating or snapshot.failed or announced is None or version is None:
        return False
    if version >= announced:
        return False
    _target_waiting(turn, target, f"the endpoint does not show config version {announced} yet")
    return True


def _announced(turn: _Turn, target: Target) -> Target:
    """The target with the config version its PUT announced, once this tick shows it: in
    the runner's outcome of the PUT, or as the pending config when that is the target's
    (after a restart between the PUT and its outcome). Kept in the state for later looks."""
    version = None if turn.obs.update is None else turn.obs.update.config_version
    snapshot = turn.obs.endpoint
    if (
        version is None
        and snapshot is not None
        and snapshot.updating
        # The pending config is known by entity names only (no model versions).
        and pending_key(snapshot) == config_key(target.entity_names, target.split)
    ):
        version = snapshot.pending_version
    if version is None or version == target.announced_version:
        return target
    target = target.model_copy(update={"announced_version": version})
    turn.set(target=target)
    return target


def _target_waiting(turn: _Turn, target: Target, why: str) -> None:
    waited = turn.now - target.requested_at
    if waited >= turn.timing.update_deadline:
        _target_failed(
            turn,
            target,
            f"config update not settled after {format_duration(waited)} ({why})",
            None,
        )
        return
    turn.again_in(turn.timing.update_poll)


def _resend(turn: _Turn, target: Target, why: str) -> None:
    if target.attempts >= turn.timing.max_put_attempts:
        _target_failed(turn, target, f"gave up after {target.attempts} attempts: {why}", None)
        return
    again = target.model_copy(
        update={"attempts": target.attempts + 1, "announced_version": None}
    )
    turn.note("update_resent", why, {"purpose": target.purpose, "attempt": again.attempts})
    turn.put(again)


def _target_failed(turn: _Turn, target: Target, message: str, build_logs: str | None) -> None:
    turn.set(target=None)
    if build_logs:
        turn.set(build_logs=logs_excerpt(build_logs))
    if target.purpose in ("restore", "remove_candidate"):
        _fail(turn, f"could not restore the baseline: {message}")
        return
    _start_rollback(turn, f"config update failed ({target.purpose}): {message}", "update_failed")


def _confirmed(turn: _Turn, target: Target) -> None:
    state = turn.state
    snapshot = turn.obs.endpoint
    live_key = (
        snapshot_key(snapshot)
        if snapshot is not None and not snapshot.updating
        else target_key(target)
    )
    turn.set(target=None, put_failures=0, live_key=live_key)
    split_desc = _split_text(target.split)
    if target.purpose == "deploy":
        turn.note("candidate_deployed", f"candidate deployed at 0 %: {split_desc}")
        if isinstance(turn.plan, BlueGreenPlan):
            turn.set(preflight_pending=True, split_applied_at=turn.now, control=Arm())
            turn.effect = _preflight(turn.plan, state)
            turn.again_in(turn.timing.update_poll)
            return
        turn.move(Phase.PROGRESSING, "candidate deployed; first step", "progressing")
        turn.put(_new_target(turn, "step", judged_weights(turn.plan)[0]))
        return
    if target.purpose in ("step", "switch"):
        weight = target.split.get(turn.plan.candidate.served_name, 0)
        turn.set(
            candidate_weight=weight,
            split_applied_at=turn.now,
            step_started_at=turn.now,
            candidate=Arm(),
            served=Arm(),
            judged_windows=0,
            folded=None,
            verdict_logged=None,
            control=state.control if target.purpose == "switch" else Arm(),
            last_verdict=None,
        )
        if state.phase is not Phase.PROGRESSING:
            turn.move(Phase.PROGRESSING, f"split applied: {split_desc}", "progressing")
        turn.note(
            "step_applied",
            f"{_step_of(turn.plan, state.step)}: candidate at {weight} % ({split_desc})",
            {"step": state.step, "weight": weight, "split": target.split},
        )
        turn.alert(
            "step_advanced",
            "info",
            f"{turn.plan.endpoint}: {_step_of(turn.plan, state.step)}, candidate at {weight} %",
            # Alerts are read by people: the step counted from 1, as in the summary.
            {"step": state.step + 1, "steps": len(judged_weights(turn.plan)), "weight": weight},
        )
        turn.again_in(turn.timing.look_interval)
        return
    if target.purpose == "promote":
        skipped = list(state.skipped_steps)
        unjudged = f" ({_skipped_text(turn.plan, skipped)} by an operator)" if skipped else ""
        turn.set(candidate_weight=100)
        turn.move(
            Phase.SUCCEEDED,
            f"candidate serves 100 %: {split_desc}{unjudged}",
            "succeeded",
            {"skipped_steps": skipped},
        )
        aliases = alias_note(turn.plan, promoted=True)
        turn.alert(
            "succeeded",
            "info",
            f"{turn.plan.endpoint}: {turn.plan.candidate.served_name} promoted to 100 %{unjudged}"
            + (f"; {aliases}" if aliases else ""),
            {"verdict": _verdict_data(state), "report": state.report, "skipped_steps": skipped}
            | ({"aliases": aliases} if aliases else {}),
        )
        return
    if target.purpose == "restore":
        turn.set(candidate_weight=0)
        turn.note("baseline_restored", f"baseline back at 100 %: {split_desc}")
        turn.put(_new_target(turn, "remove_candidate", 0, with_candidate=False))
        return
    # remove_candidate: the rollback is complete.
    ending = state.ending or Phase.ROLLED_BACK
    reason = state.ending_reason or "rolled back"
    turn.set(candidate_weight=0)
    turn.move(ending, f"{reason}; candidate removed ({split_desc})", ending.value)
    if ending is Phase.ROLLED_BACK:
        aliases = alias_note(turn.plan, promoted=False)
        turn.alert(
            "rolled_back",
            "error",
            f"{turn.plan.endpoint}: {turn.plan.candidate.served_name} rolled back: {reason}"
            + (f"; {aliases}" if aliases else ""),
            {
                "reason": reason,
                "verdict": _verdict_data(state),
                "build_logs_tail": state.build_logs,
                "report": state.report,
            }
            | ({"aliases": aliases} if aliases else {}),
        )
    else:
        turn.alert("aborted", "warn", f"{turn.plan.endpoint}: rollout aborted: {reason}")


def alias_note(plan: AnyPlan, *, promoted: bool) -> str | None:
    """What a finished rollout does to its plan's ``on_success.set_alias``: after a promotion
    the alias moves to the candidate's version (done after the commit, retried until the
    workspace takes it); otherwise it is left alone, and the alert says where it stays."""
    target = plan.on_success.set_alias if plan.on_success is not None else None
    if target is None:
        return None
    model = plan.candidate.entity_name
    if promoted:
        return f"{model}@{target} moves to version {plan.candidate.entity_version}"
    previous = plan.on_success.previous_version if plan.on_success is not None else None
    stays = f"stays at version {previous}" if previous is not None else "stays unset"
    return f"aliases left unchanged: @{target} {stays}"


def _held_by_someone_else(turn: _Turn) -> bool:
    """Between the rollout's own changes, the endpoint must show what the last one left.

    A config that differs is drift (pause, never fight it); an update someone else started
    is waited out first, and what it leaves decides. True when the phase must not act now.
    """
    state, snapshot = turn.state, turn.obs.endpoint
    if state.target is not None or snapshot is None or state.live_key is None:
        return False  # a change of ours in flight is followed by _follow_target
    if state.phase not in (Phase.PREPARING, Phase.PROGRESSING):
        return False
    if snapshot.updating:
        turn.again_in(turn.timing.update_poll)
        return True
    if snapshot_key(snapshot) == state.live_key:
        return False
    _drift(turn, snapshot)
    return True


def _drift(turn: _Turn, snapshot: EndpointSnapshot) -> None:
    state = turn.state
    live = _split_text(snapshot.split)
    if state.phase is Phase.ROLLING_BACK:
        _fail(turn, "the endpoint was changed by hand during the rollback")
        return
    # A gate being waited at is asked afresh once the step has run again after a resume.
    turn.set(target=None, paused_from=state.phase, pause_reason=f"drift: endpoint now {live}",
             gate=None)
    turn.move(
        Phase.PAUSED,
        f"the endpoint was changed outside the rollout (now {live}); paused, not fighting it",
        "drift",
        {"live_split": snapshot.split, "entities": snapshot.entity_names},
    )
    turn.alert(
        "paused",
        "warn",
        f"{turn.plan.endpoint}: changed by hand mid-rollout (now {live}); rollout paused, "
        "resume or abort it",
        {"live_split": snapshot.split},
    )


# ---- rollback and failure -----------------------------------------------------------------


def _start_rollback(
    turn: _Turn,
    reason: str,
    cause: RollbackCause,
    *,
    ending: Phase = Phase.ROLLED_BACK,
    kind: str = "rolling_back",
    severity: Severity = "error",
) -> None:
    state = turn.state
    if state.baseline is None:
        # Nothing was changed yet (the baseline was never resolved): end here.
        turn.set(target=None, gate=None, ending_reason=reason, ending_cause=cause)
        turn.move(ending, reason, kind)
        return
    candidate = turn.plan.candidate.served_name
    snapshot = turn.obs.endpoint
    live_candidate = (
        snapshot is not None and candidate in snapshot.entities
    ) or state.candidate_weight > 0
    in_flight = state.target is not None and candidate in state.target.entity_names
    turn.set(
        ending=ending,
        ending_reason=reason,
        ending_cause=cause,
        paused_from=None,
        pause_reason=None,
        gate=None,
    )
    data: dict[str, Any] = {"verdict": _verdict_data(state)}
    details: dict[str, Any] = {"reason": reason}
    if cause == "update_failed":
        # What the build said is the first thing a person wants to see.
        data["build_logs"] = details["build_logs_tail"] = state.build_logs
    turn.move(Phase.ROLLING_BACK, reason, kind, data)
    if severity != "info" and ending is Phase.ROLLED_BACK:
        turn.alert(
            "rolling_back", severity, f"{turn.plan.endpoint}: rolling back: {reason}", details
        )
    if live_candidate or in_flight:
        turn.put(_new_target(turn, "restore", 0))
    else:
        turn.put(_new_target(turn, "remove_candidate", 0, with_candidate=False))


def _fail(turn: _Turn, reason: str) -> None:
    """To ``failed``: a person must act, so the reason says what failed and what the endpoint
    serves now. A rollback under way (an operator's abort, a failed analysis) did not fail
    itself: it stays as the context, after what did."""
    state, snapshot = turn.state, turn.obs.endpoint
    where = _endpoint_now(turn)
    during = state.ending_reason if state.phase is Phase.ROLLING_BACK else None
    failed = reason if where is None else f"{reason}; {where}"
    if during:
        failed += f"; while rolling back: {during}"
    turn.set(target=None, ending=Phase.FAILED, ending_reason=failed, gate=None)
    details = {
        "reason": failed,
        "failure": reason,
        "endpoint_state": where,
        "while_rolling_back": during,
        "live_split": None if snapshot is None else snapshot.split,
        "config_update": None if snapshot is None else snapshot.config_update,
        "pending_split": None if snapshot is None else snapshot.pending_split,
    }
    turn.move(Phase.FAILED, failed, "failed", details)
    turn.alert(
        "failed",
        "error",
        f"{turn.plan.endpoint}: HUMAN NEEDED: {failed}",
        {**details, "build_logs_tail": state.build_logs},
    )


def _endpoint_now(turn: _Turn) -> str | None:
    """What the endpoint serves as this tick saw it, in words (None: there is no endpoint)."""
    snapshot = turn.obs.endpoint
    if snapshot is None:
        if turn.obs.endpoint_missing:
            return None
        error = turn.obs.endpoint_error
        return "the endpoint could not be read" + (f" ({error})" if error else "")
    update = f"config_update {snapshot.config_update}"
    if snapshot.updating and snapshot.pending_split is not None:
        update += f" towards {_split_text(snapshot.pending_split)}"
    return f"the endpoint serves {_split_text(snapshot.split)} ({update})"


# ---- deadlines ----------------------------------------------------------------------------


def _check_deadline(turn: _Turn) -> None:
    deadline = turn.policy.deadline
    state = turn.state
    if deadline is None or state.phase in (Phase.ROLLING_BACK, Phase.PAUSED):
        return
    counted_from = state.deadline_from if state.deadline_from is not None else state.started_at
    if turn.now - counted_from < deadline:
        return
    reason = f"rollout deadline of {format_duration(deadline)} passed"
    if state.deadline_from is not None:
        reason += " since the last resume"
    turn.alert("deadline_passed", "warn", f"{turn.plan.endpoint}: {reason}")
    if turn.policy.on_deadline == "rollback":
        _start_rollback(turn, reason, "deadline")
    else:
        _pause(turn, reason, kind="deadline_passed")


def _pause(turn: _Turn, reason: str, *, kind: str = "paused") -> None:
    state = turn.state
    if state.gate is not None and not state.gate.held:
        # Paused for another reason while waiting at a gate: it is asked afresh later.
        turn.set(gate=None)
    turn.set(paused_from=state.phase, pause_reason=reason)
    turn.move(Phase.PAUSED, reason, kind)
    turn.alert("paused", "warn", f"{turn.plan.endpoint}: paused: {reason}")


# ---- gates --------------------------------------------------------------------------------
#
# A gate is one of the plan's hooks the rollout waits for: ``pre_rollout`` before anything on
# the endpoint changes, ``confirm_promotion`` once the judge would promote. Each call is an
# effect (``CallGate``) whose answer comes back in the next observation:
#
#     call ──► proceed ........ passed: in gates_passed for good, the rollout goes on
#          ├─► wait ........... asked again after the gate's interval, until its limit
#          ├─► refused ........ paused, the gate's answer as the reason
#          └─► timeout, unreachable
#                               paused, saying so (the runner already retried)
#     limit reached (waiting) . on_limit: pause, or roll back
#
# While paused on a gate's answer, a resume asks it again (its limit counting afresh) and a
# promote goes past it on the operator's word.


def _gate(turn: _Turn, name: GateName, *, baseline: str | None = None,
          promote_reason: str | None = None) -> bool:
    """Whether the rollout may go past gate ``name`` now (no such hook, or it said yes).
    False: the turn is decided (a call is due or in flight, the gate said wait, or no)."""
    spec = turn.plan.hooks.gate(name)
    state = turn.state
    if spec is None or name in state.gates_passed:
        return True
    gate = state.gate
    if gate is None or gate.name != name:
        gate = GateState(name=name, started_at=turn.now, promote_reason=promote_reason)
        turn.set(gate=gate)
        turn.note("gate_waiting", f"waiting for the {name} hook to say yes", {"gate": name})
    outcome = turn.obs.gate
    if outcome is not None and outcome.gate == name and outcome.call == gate.calls:
        return _gate_answered(turn, spec, gate, outcome)
    if gate.calls and turn.now - gate.started_at >= spec.limit:
        _gate_limit(turn, spec, gate)
        return False
    if gate.next_call_at is not None and turn.now < gate.next_call_at:
        turn.again_in(gate.next_call_at - turn.now)
        return False
    call = gate.calls + 1
    turn.set(gate=gate.model_copy(update={"calls": call, "next_call_at": None}))
    turn.effect = _call_gate(turn, name, call, baseline, gate)
    turn.again_in(turn.timing.update_poll)
    return False


def _call_gate(
    turn: _Turn, name: GateName, call: int, baseline: str | None, gate: GateState
) -> CallGate:
    state, plan = turn.state, turn.plan
    weights = judged_weights(plan)
    if name == "pre_rollout":
        summary = (
            f"{plan.endpoint}: may the {plan.strategy} of {plan.candidate.served_name} start?"
        )
    else:
        summary = (
            f"{plan.endpoint}: may {plan.candidate.served_name} go to 100 %? "
            f"{gate.promote_reason or ''}".rstrip()
        )
    details: dict[str, Any] = {
        "gate": name,
        "call": call,
        "waiting_since": gate.started_at,
        "strategy": plan.strategy,
        "baseline": state.baseline or baseline,
        "step": min(state.step, len(weights) - 1) + 1,
        "steps": len(weights),
        "candidate_weight": state.candidate_weight,
    }
    if name == "confirm_promotion":
        details["reason"] = gate.promote_reason
        details["verdict"] = _verdict_data(state)
        details["report"] = state.report
    return CallGate(name, call, summary, details)


def _gate_answered(turn: _Turn, spec: GateHook, gate: GateState, outcome: GateOutcome) -> bool:
    name = gate.name
    gate = gate.model_copy(update={
        "last_answer": outcome.answer,
        "last_reason": outcome.reason,
        "last_status": outcome.status,
        "last_at": turn.now,
    })
    turn.note(
        "gate_answered",
        f"{name} call {outcome.call}: {outcome.answer}: {outcome.reason}",
        {
            "gate": name,
            "call": outcome.call,
            "answer": outcome.answer,
            "reason": outcome.reason,
            "status": outcome.status,
            "attempts": outcome.attempts,
        },
    )
    if outcome.answer == "proceed":
        turn.set(gate=None, gates_passed=[*turn.state.gates_passed, name])
        return True
    if outcome.answer == "wait":
        turn.set(gate=gate.model_copy(update={"next_call_at": turn.now + spec.interval}))
        if turn.now - gate.started_at >= spec.limit:
            _gate_limit(turn, spec, gate)
            return False
        turn.again_in(spec.interval)
        return False
    turn.set(gate=gate.model_copy(update={"held": True}))
    kind = "gate_refused" if outcome.answer == "refused" else "gate_unanswered"
    _pause(turn, f"{name} hook: {outcome.reason}", kind=kind)
    return False


def _gate_limit(turn: _Turn, spec: GateHook, gate: GateState) -> None:
    waited = format_duration(turn.now - gate.started_at)
    last = f"; last answer: {gate.last_reason}" if gate.last_reason else ""
    reason = (
        f"{gate.name} hook gave no yes within its limit of {format_duration(spec.limit)} "
        f"(waited {waited}, {gate.calls} call(s){last})"
    )
    if spec.on_limit == "rollback":
        _start_rollback(turn, reason, "gate")
        return
    turn.set(gate=gate.model_copy(update={"held": True}))
    _pause(turn, reason, kind="gate_limit")


def _promote_gated(turn: _Turn, reason: str) -> None:
    """The judge's promotion, once ``confirm_promotion`` (if the plan has it) says yes."""
    if _gate(turn, "confirm_promotion", promote_reason=reason):
        _promote(turn, reason, by="judge")


def _resume_at_gate(turn: _Turn, gate: GateState, resume_to: Phase, kind: str) -> None:
    """A command for a rollout paused on a gate's answer: a resume asks the gate again, a
    promote goes past it (recorded as the operator's word, never as the gate's yes)."""
    if kind == "resume":
        turn.set(gate=GateState(
            name=gate.name, started_at=turn.now, promote_reason=gate.promote_reason
        ))
        turn.move(resume_to, f"resumed by an operator; asking the {gate.name} hook again",
                  "resumed")
        turn.again_in(turn.timing.update_poll)
        return
    turn.set(gate=None)
    turn.note("gate_overridden", f"{gate.name} hook passed over by an operator ({kind})",
              {"gate": gate.name, "command": kind})
    if gate.name == "pre_rollout":
        turn.set(gates_passed=[*turn.state.gates_passed, gate.name])
        turn.move(resume_to, "started on an operator's word", "resumed")
        return
    turn.move(Phase.PROGRESSING, "promoted to 100 % by an operator", "resumed")
    _operator_promotes(turn, full=kind == "promote_full")


# ---- phases -------------------------------------------------------------------------------


def _pending(turn: _Turn) -> None:
    plan, obs = turn.plan, turn.obs
    if obs.endpoint_missing:
        turn.set(ending=Phase.FAILED, ending_reason=f"endpoint {plan.endpoint!r} does not exist")
        turn.move(Phase.FAILED, f"endpoint {plan.endpoint!r} does not exist", "failed")
        turn.alert("failed", "error", f"{plan.endpoint}: endpoint does not exist")
        return
    snapshot = obs.endpoint
    if snapshot is None or snapshot.updating:
        turn.again_in(turn.timing.update_poll)
        return
    candidate = plan.candidate.served_name
    baseline = plan.baseline or next(
        (name for name, pct in snapshot.split.items() if pct == 100), None
    )
    problem = None
    if baseline is None:
        problem = (
            f"no served entity takes 100 % of traffic ({_split_text(snapshot.split)}); "
            "name the baseline in the plan"
        )
    elif baseline not in snapshot.entities:
        problem = f"baseline {baseline!r} is not served by the endpoint"
    elif snapshot.split.get(baseline, 0) != 100:
        problem = f"baseline {baseline!r} takes {snapshot.split.get(baseline, 0)} %, not 100 %"
    elif candidate in snapshot.entities:
        problem = f"the endpoint already serves an entity named {candidate!r}"
    if problem is not None or baseline is None:
        turn.set(ending=Phase.FAILED, ending_reason=f"cannot start: {problem}")
        turn.move(Phase.FAILED, f"cannot start: {problem}", "failed")
        turn.alert("failed", "error", f"{plan.endpoint}: cannot start rollout: {problem}")
        return
    if not _gate(turn, "pre_rollout", baseline=baseline):
        return  # nothing on the endpoint changes before pre_rollout says yes
    # Every field the GET showed is carried through; the plan adds those a GET never shows
    # (burst_scaling_enabled), which every PUT would otherwise reset to the default.
    entities = {
        name: {**entity, **_settings(plan, name)} for name, entity in snapshot.entities.items()
    }
    others = [e for name, e in entities.items() if name != baseline]
    turn.set(
        baseline=baseline,
        baseline_entity=entities[baseline],
        other_entities=others,
        auto_capture_config=snapshot.auto_capture_config,
    )
    turn.move(
        Phase.PREPARING,
        f"{plan.strategy} of {candidate} against {baseline}; deploying the candidate at 0 %",
        "started",
        {"baseline": baseline, "candidate": candidate, "policy": turn.policy.name},
    )
    turn.alert("started", "info", f"{plan.endpoint}: rollout of {candidate} started")
    turn.put(_new_target(turn, "deploy", 0))


def _settings(plan: AnyPlan, name: str) -> dict[str, Any]:
    settings = plan.entity_settings.get(name)
    return {} if settings is None else settings.fields()


def _preflight(plan: BlueGreenPlan, state: RolloutState) -> RunPreflight:
    return RunPreflight(
        candidate=plan.candidate.served_name,
        baseline=state.baseline or "",
        smoke_requests=plan.smoke.requests,
        smoke_body=dict(plan.smoke.body),
        schema_check=plan.schema_check,
    )


def _preparing(turn: _Turn) -> None:
    """Blue/green only: the candidate is deployed at 0 %; run and read the preflight checks."""
    state, plan = turn.state, turn.plan
    if _unattributable(turn):
        return
    _accumulate(turn)
    if not isinstance(plan, BlueGreenPlan):
        turn.again_in(turn.timing.update_poll)
        return
    if state.preflight_passed:
        command = _take(turn, "pause")
        if command is not None:
            # Held at 0 %: a resume deploys the candidate again and repeats the checks.
            _pause(turn, str(command.payload.get("reason") or "paused by an operator"))
            return
        warmed = turn.now - (state.split_applied_at or turn.now)
        if warmed >= plan.warmup:
            turn.put(_new_target(turn, "switch", 100))
        else:
            turn.again_in(min(turn.timing.look_interval, plan.warmup - warmed))
        return
    result = turn.obs.preflight
    if result is None:
        if state.preflight_pending:
            turn.effect = _preflight(plan, state)
        turn.again_in(turn.timing.update_poll)
        return
    turn.set(preflight_pending=False)
    data = {
        "smoke_sent": result.smoke_sent,
        "smoke_failed": result.smoke_failed,
        "schema_compatible": result.schema_compatible,
    }
    problems = []
    if result.smoke_failed > plan.smoke.max_failures:
        problems.append(
            f"{result.smoke_failed}/{result.smoke_sent} smoke invocations failed "
            f"(at most {plan.smoke.max_failures} allowed)"
        )
    if plan.schema_check and result.schema_compatible is False:
        problems.append(f"input schema incompatible with the baseline's: {result.message}")
    if problems:
        turn.note("preflight_failed", "; ".join(problems), data)
        _start_rollback(turn, "preflight failed: " + "; ".join(problems), "preflight")
        return
    turn.set(preflight_passed=True)
    turn.note(
        "preflight_passed",
        f"smoke invocations and schema check passed; warming up for "
        f"{format_duration(plan.warmup)} before the switch",
        data,
    )
    turn.again_in(min(turn.timing.look_interval, plan.warmup))


def _unattributable(turn: _Turn) -> bool:
    """Pause when the scrape's numbers are endpoint totals while several entities serve.

    Summed over every arm they would judge the endpoint against itself; a person must make
    the export name served entities (or decide by hand) before the rollout goes on.
    """
    scrape = turn.obs.unattributable
    if scrape is None:
        return False
    snapshot = turn.obs.endpoint
    if snapshot is not None and len(snapshot.entities) < 2:
        return False
    _pause(turn, scrape.describe(), kind="unattributable_metrics")
    return True


def _progressing(turn: _Turn) -> None:
    state, plan, policy = turn.state, turn.plan, turn.policy
    if _unattributable(turn):
        return
    _accumulate(turn)
    state = turn.state
    weights = judged_weights(plan)
    # An advance from the last judged split promotes the candidate, so it needs a pass: the
    # last canary step, and a blue/green bake too. After the switch the baseline still sits
    # at 0 %, ready to take the traffic back at once; removing it is what cannot be undone
    # quickly. The bake's control is the warm-up sample, which cannot grow, so a pass may
    # not come; then the step deadline applies as to any step without a conclusive verdict
    # (a person decides, or on_no_data: rollback switches back).
    last_step = state.step >= len(weights) - 1
    look = _look(turn, final=last_step)
    if look is not None and look.outcome == "fail":
        # The sentence first; the judge's reason (without its own "fail:") for the record.
        verdict = turn.state.last_verdict
        summary = (verdict.summary if verdict is not None else None) or ""
        why = look.reason.removeprefix("fail: ")
        lead = f"{summary.rsplit(' -> ', 1)[0]}; judge: " if summary else ""
        _start_rollback(turn, f"analysis failed: {lead}{why}", "analysis")
        return

    command = _take(turn, "pause", "promote", "promote_full")
    if command is not None:
        if command.kind == "pause":
            _pause(turn, str(command.payload.get("reason") or "paused by an operator"))
            return
        _operator_promotes(turn, full=command.kind == "promote_full")
        return

    gate = turn.state.gate
    if gate is not None and gate.name == "confirm_promotion":
        # The judge let the candidate go; the checks above still run at every look.
        _promote_gated(turn, gate.promote_reason or "confirmed; candidate to 100 %")
        return

    started = state.step_started_at if state.step_started_at is not None else turn.now
    elapsed = turn.now - started
    bake = _bake(plan, state.step)
    verdict = turn.state.last_verdict
    if elapsed < bake:
        turn.again_in(min(turn.timing.look_interval, bake - elapsed))
        return
    if isinstance(plan, ABPlan):
        _ab_report(turn)
        return
    passed = verdict is not None and verdict.outcome == Outcome.PASS
    may_advance = (verdict is not None and verdict.may_advance) if not last_step else passed
    if may_advance:
        if not passed:
            # Moved on at the end of its bake with no check leaning towards a regression
            # (advance: lean): not a pass, and never shown as one.
            turn.set(leaned_steps=sorted({*turn.state.leaned_steps, state.step}))
        _advance(turn)
        return
    step_deadline = bake * turn.timing.step_deadline_factor
    if elapsed >= step_deadline:
        reason = (
            f"{_step_name(plan, state.step)} has no conclusive verdict after "
            f"{format_duration(elapsed)} ({verdict.reason if verdict is not None else 'no data'})"
        )
        if policy.on_no_data == "rollback":
            _start_rollback(turn, reason, "no_data")
        else:
            _pause(turn, reason, kind="awaiting_decision")
        return
    turn.again_in(turn.timing.look_interval)


def _paused(turn: _Turn) -> None:
    state = turn.state
    command = _take(turn, "resume", "promote", "promote_full")
    if command is None:
        turn.again_in(turn.timing.look_interval)
        return
    resume_to = state.paused_from or Phase.PROGRESSING
    # An operator who resumes takes over the deadline: it counts again from now, or a rollout
    # paused by its deadline (on_deadline: hold) would pause again at once.
    turn.set(paused_from=None, pause_reason=None, deadline_from=turn.now)
    if state.gate is not None and state.gate.held:
        _resume_at_gate(turn, state.gate, resume_to, command.kind)
        return
    if command.kind == "promote_full":
        turn.move(Phase.PROGRESSING, "promoted to 100 % by an operator", "resumed")
        _operator_promotes(turn, full=True)
        return
    if command.kind == "promote":
        turn.move(Phase.PROGRESSING, "next step forced by an operator", "resumed")
        _operator_promotes(turn, full=False)
        return
    turn.move(resume_to, "resumed by an operator", "resumed")
    if resume_to is Phase.PREPARING and state.baseline is not None:
        # Paused before the first step (drift while the candidate sat at 0 %): deploy it at
        # 0 % again; a blue/green plan then runs its preflight checks again.
        turn.set(preflight_passed=False, preflight_pending=False)
        turn.put(_new_target(turn, "deploy", 0))
        return
    if resume_to is Phase.PROGRESSING and state.baseline is not None:
        # Re-assert the current step's split: a no-op if it is live, a fix if it drifted.
        # Windows are judged afresh from the moment it is confirmed.
        purpose: TargetPurpose = "switch" if isinstance(turn.plan, BlueGreenPlan) else "step"
        turn.put(_new_target(turn, purpose, judged_weights(turn.plan)[state.step]))


def _promoting(turn: _Turn) -> None:
    # Reached only if the promotion target was lost (e.g. a resumed drift): issue it again.
    turn.put(_new_target(turn, "promote", 100, with_baseline=False))


def _ending(turn: _Turn) -> None:
    # Rolling back with no target left means the previous one failed without ending the
    # rollout; the rollback target is issued again.
    _start_rollback(
        turn,
        turn.state.ending_reason or "rollback resumed",
        turn.state.ending_cause or "analysis",
        ending=(turn.state.ending or Phase.ROLLED_BACK),
    )


def _nothing(_turn: _Turn) -> None:
    return


_PHASES = {
    Phase.PENDING: _pending,
    Phase.PREPARING: _preparing,
    Phase.PROGRESSING: _progressing,
    Phase.PAUSED: _paused,
    Phase.PROMOTING: _promoting,
    Phase.ROLLING_BACK: _ending,
    Phase.SUCCEEDED: _nothing,
    Phase.ROLLED_BACK: _nothing,
    Phase.ABORTED: _nothing,
    Phase.FAILED: _nothing,
}


# ---- progressing helpers --------------------------------------------------------------------


def _step_name(plan: AnyPlan, step: int) -> str:
    """A judged step as people call it: a canary's step k, the A/B split, the bake."""
    if isinstance(plan, ABPlan):
        return "the A/B split"
    if isinstance(plan, BlueGreenPlan):
        return "the blue/green bake"
    return f"step {step + 1}"


def _step_of(plan: AnyPlan, step: int) -> str:
    """A step (0-based) as people number it: "step 2 of 3, then 100 %" (the A/B split and
    the blue/green bake by name)."""
    if not isinstance(plan, CanaryPlan):
        return _step_name(plan, step)
    weights = judged_weights(plan)
    after = f"{weights[step + 1]} %" if step + 1 < len(weights) else "100 %"
    return f"step {step + 1} of {len(weights)}, then {after}"


def _bake(plan: AnyPlan, step: int) -> float:
    if isinstance(plan, CanaryPlan):
        steps = plan.canary_steps()
        return steps[min(step, len(steps) - 1)].bake if steps else 0.0
    if isinstance(plan, ABPlan):
        return plan.duration
    return plan.bake


def step_bake(plan: AnyPlan, step: int) -> float:
    """Seconds the step (0-based) bakes before it may move on (A/B: the duration)."""
    return _bake(plan, step)


def step_warmup(plan: AnyPlan, step: int) -> float | None:
    """The plan's own warm-up for a step (0-based), if it sets one."""
    return _step_warmup(plan, step)


def _step_warmup(plan: AnyPlan, step: int) -> float | None:
    """The plan's own warm-up for a step, if it sets one."""
    if isinstance(plan, CanaryPlan):
        steps = plan.canary_steps()
        return steps[min(step, len(steps) - 1)].warmup if steps else None
    if isinstance(plan, ABPlan):
        return plan.warmup
    return None


def _warmup(turn: _Turn, windows: list[EntityWindow]) -> float:
    """Seconds after a split change whose windows are served but not scored.

    The policy counts it in metric windows; the window length is what the windows show
    (the configured one until two windows of an entity are in).
    """
    own = _step_warmup(turn.plan, turn.state.step)
    if own is not None:
        return own
    shown = window_length_ms(windows)
    window = turn.timing.metrics_window if shown is None else shown / 1000.0
    return turn.policy.warmup_windows * window


def _accumulate(turn: _Turn) -> None:
    """Sum the arms afresh from the current split's windows (revisions in their final form).

    The runner passes every window it keeps since the split took effect; summing them again
    at every look (never adding up what arrived) is what lets a revised window count in its
    final version. Windows past the runner's dedup horizon (``obs.fold_before_ms``) can no
    longer change: they are folded into ``state.folded`` once and the sums start from there,
    so the work per look stays bounded however long the split runs. Canary and A/B arms are
    summed over the minutes both arms reported, after the split's warm-up; ``served`` keeps
    everything the candidate served in the split, warm-up included, for the absolute
    ceiling. Each candidate window not judged yet becomes one unit for the judge (the sums up
    to it), so evidence is counted window by window whether the windows arrive one per look
    or several at once (a backlog after a restart).
    """
    state = turn.state
    if state.split_applied_at is None:
        return
    since_ms = int(state.split_applied_at * 1000.0)
    windows = sorted(
        (w for w in turn.obs.windows if w.start_ms is not None and w.start_ms >= since_ms),
        key=lambda w: w.start_ms or 0,
    )
    if not windows:
        return
    candidate = turn.plan.candidate.served_name
    if isinstance(turn.plan, BlueGreenPlan) and state.phase is not Phase.PROGRESSING:
        # Blue/green before the switch: the baseline's windows are the warm-up control.
        control = sum_windows((w for w in windows if w.entity == state.baseline), since_ms)
        arm = Arm.of(control.get(state.baseline, ArmTotals()))
        turn.arrived = arm != state.control
        turn.set(control=arm)
        return
    warmup = _warmup(turn, windows)
    # After a blue/green switch the baseline serves nothing: its control is fixed.
    paired = not isinstance(turn.plan, BlueGreenPlan)
    folded = current_fold(state)
    if folded is not None:
        windows = [w for w in windows if (w.start_ms or 0) >= folded.before_ms]
    mine = [w for w in windows if w.entity == candidate]
    theirs = {w.start_ms: w for w in windows if w.entity == state.baseline}
    scored_ms = _scored_from(turn, state.split_applied_at + warmup, mine,
                             theirs if paired else {})
    sums = _Sums.of(folded)
    first = 0 if folded is None else folded.candidate_windows
    fold_ms = turn.obs.fold_before_ms
    if fold_ms is not None and fold_ms <= (since_ms if folded is None else folded.before_ms):
        fold_ms = None  # nothing new to fold
    new_fold: Folded | None = None
    units: list[_Unit] = []
    for index, window in enumerate(mine, start=first):
        start = window.start_ms or 0
        if fold_ms is not None and new_fold is None and start >= fold_ms:
            new_fold = sums.fold(state.split_applied_at, fold_ms, index)
        sums.add(window, theirs.get(start), scored=start >= scored_ms, paired=paired)
        # A window judged before that got its late partner (or was revised) is a unit of
        # its own, so it is not merged into the next window's (one window's cap and
        # dispersion for two windows' evidence).
        if index >= state.judged_windows or (
            index == state.judged_windows - 1 and sums.moved(state, paired=paired)
        ):
            units.append(sums.unit())
    if fold_ms is not None and new_fold is None:
        new_fold = sums.fold(state.split_applied_at, fold_ms, first + len(mine))
    turn.unpaired = _unpaired(mine, theirs, scored_ms) if paired else 0
    changes: dict[str, Any] = {"candidate": Arm.of(sums.arm_c), "served": Arm.of(sums.served)}
    if paired:
        changes["control"] = Arm.of(sums.arm_b)
    changed = any(getattr(state, name) != value for name, value in changes.items())
    if not units and changed:
        # A revised window, or a late partner of one judged before: one more unit.
        units.append(_Unit(sums.arm_c, sums.arm_b if paired else state.control.totals(),
                           sums.served, sums.warm_c, sums.warm_b))
    turn.units = units
    turn.arrived = bool(units)
    if new_fold is not None:
        changes["folded"] = new_fold
    turn.set(judged_windows=first + len(mine), **changes)


def _scored_from(
    turn: _Turn, full: float, mine: list[EntityWindow], theirs: dict[int | None, EntityWindow]
) -> int:
    """When the split's scoring starts (epoch ms), set on ``turn`` for the verdict: after the
    whole warm-up (``full``), or at the first window showing a warm candidate when the
    warm-up is the policy's; a plan step's own warm-up is what its author measured, and runs
    its length."""
    scored_ms = math.ceil(full * 1000.0)
    turn.scored_from = full
    if theirs and _step_warmup(turn.plan, turn.state.step) is None:
        warm_ms = _warm_from(mine, theirs, scored_ms)
        if warm_ms is not None:
            scored_ms, turn.scored_from, turn.warm_early = warm_ms, warm_ms / 1000.0, True
    return scored_ms


def _warm_from(
    mine: list[EntityWindow], theirs: dict[int | None, EntityWindow], scored_ms: int
) -> int | None:
    """The start of the first warm-up window whose latency shows a warm candidate
    (``rollout.analysis.warmth``), in time order; a window still waiting for the baseline's
    stops the search, so a later window never ends the warm-up before an earlier one could."""
    for window in mine:
        start = window.start_ms or 0
        if start >= scored_ms:
            return None
        partner = theirs.get(window.start_ms)
        if partner is None:
            return None
        if looks_warm(window.latency, partner.latency):
            return start
    return None


def current_fold(state: RolloutState) -> Folded | None:
    """The state's folded sums if they are the current split's (None otherwise)."""
    folded = state.folded
    if folded is None or folded.split_applied_at != state.split_applied_at:
        return None
    return folded


def _unpaired(
    mine: list[EntityWindow], theirs: dict[int | None, EntityWindow], scored_ms: int
) -> int:
    mine_starts = {w.start_ms for w in mine}
    return sum(
        1 for w in mine if (w.start_ms or 0) >= scored_ms and w.start_ms not in theirs
    ) + sum(1 for start in theirs if (start or 0) >= scored_ms and start not in mine_starts)


@dataclass
class _Sums:
    """The split's running sums while ``_accumulate`` walks its candidate windows."""

    arm_c: ArmTotals
    arm_b: ArmTotals
    served: ArmTotals
    warm_c: ArmTotals
    warm_b: ArmTotals

    @classmethod
    def of(cls, folded: Folded | None) -> _Sums:
        if folded is None:
            return cls(ArmTotals(), ArmTotals(), ArmTotals(), ArmTotals(), ArmTotals())
        return cls(
            folded.candidate.totals(),
            folded.control.totals(),
            folded.served.totals(),
            folded.warm_candidate.totals(),
            folded.warm_control.totals(),
        )

    def add(
        self, window: EntityWindow, partner: EntityWindow | None, *, scored: bool, paired: bool
    ) -> None:
        self.served.add(window)
        if scored:
            if not paired:
                self.arm_c.add(window)
            elif partner is not None:
                self.arm_c.add(window)
                self.arm_b.add(partner)
        elif paired and partner is not None:
            self.warm_c.add(window)
            self.warm_b.add(partner)

    def moved(self, state: RolloutState, *, paired: bool) -> bool:
        """Whether the sums differ from what the last look judged."""
        return (Arm.of(self.arm_c) != state.candidate or Arm.of(self.served) != state.served
                or (paired and Arm.of(self.arm_b) != state.control))

    def unit(self) -> _Unit:
        return _Unit(self.arm_c.copy(), self.arm_b.copy(), self.served.copy(),
                     self.warm_c.copy(), self.warm_b.copy())

    def fold(self, split_applied_at: float, before_ms: int, candidate_windows: int) -> Folded:
        return Folded(
            split_applied_at=split_applied_at,
            before_ms=before_ms,
            candidate_windows=candidate_windows,
            candidate=Arm.of(self.arm_c),
            control=Arm.of(self.arm_b),
            served=Arm.of(self.served),
            # The warm-up is judged on counts and latency only: its gauges are not kept.
            warm_candidate=_without_gauges(Arm.of(self.warm_c)),
            warm_control=_without_gauges(Arm.of(self.warm_b)),
        )


def _without_gauges(arm: Arm) -> Arm:
    return arm.model_copy(update={"cpu_percent": [], "mem_percent": [], "gauges_dropped": {}})


def _warmup_text(turn: _Turn) -> str:
    applied = turn.state.split_applied_at or 0.0
    scored = turn.scored_from or applied
    span = format_duration(scored - applied) if scored > applied else "none"
    if turn.now < scored:
        return (
            f"warm-up {span} after the split change: windows served, scored from "
            f"{format_duration(scored - turn.now)} from now (the 5xx ceiling applies)"
        )
    if turn.warm_early:
        return (
            f"warm-up ended after {span}: the candidate's latency matched the baseline's"
            if scored > applied
            else "no warm-up: the candidate's latency matched the baseline's from the first window"
        )
    return f"warm-up {span} after the split change, not scored"


def _look(turn: _Turn, *, final: bool) -> Look | None:
    """Judge each new window's unit (or the current sums at the first look of a split)."""
    state = turn.state
    _query_outage(turn)
    units = list(turn.units)
    if not units:
        if (state.last_verdict is not None and not turn.obs.metrics_error
                and not turn.obs.readings):
            return None
        units = [_Unit(state.candidate.totals(), state.control.totals(),
                       state.served.totals())]
    policy, control = turn.policy, state.control.totals()
    bake_against_control = isinstance(turn.plan, BlueGreenPlan) and state.phase is Phase.PROGRESSING
    if bake_against_control:
        # The warm-up control stays the baseline arm: checks it could fix to a level ignore
        # it, and one it has no data for stays relative and visibly inconclusive.
        policy = against_control(policy, control)
    notes = [_warmup_text(turn)] if turn.scored_from is not None else []
    if turn.unpaired:
        notes.append(f"{turn.unpaired} window(s) waiting for the other arm's")
    if turn.obs.metrics_error:
        notes.append(turn.obs.metrics_error)
    split = f"{state.step}@{state.split_applied_at}"
    inputs = [
        JudgeInput(
            candidate=unit.candidate,
            baseline=control if bake_against_control else unit.baseline,
            split=split,
            final=final,
            served=unit.served,
            warmup=None if unit.warm_candidate is None or unit.warm_baseline is None
            else (unit.warm_candidate, unit.warm_baseline),
        )
        for unit in units
    ]
    look = judge_look(
        policy,
        inputs,
        state.judge_state,
        note="; ".join(notes) or None,
        readings=turn.obs.readings,
        query_state=state.query_state,
    )
    added: dict[str, Any] = {"may_advance": look.may_advance, "at": turn.now}
    if turn.scored_from is not None and state.split_applied_at is not None:
        added["warmup"] = Warmup(
            seconds=turn.scored_from - state.split_applied_at,
            scored_from=turn.scored_from,
            in_warmup=turn.now < turn.scored_from,
            ended_early=turn.warm_early,
        )
    added["unpaired_windows"] = turn.unpaired
    # The sentence a person reads first; the judge's reason (which names the outcome
    # itself) follows in the event.
    summary = added["summary"] = verdict_sentence(look.verdict)
    verdict = look.verdict.model_copy(update=added)
    turn.set(judge_state=look.state, query_state=look.query_state, last_verdict=verdict)
    news = (turn.arrived or bool(turn.obs.readings)) and _verdict_news(turn, verdict)
    if turn.obs.metrics_error or news:
        turn.note(
            "verdict",
            f"{summary}; judge: {look.reason}",
            {"verdict": verdict.data(), "step": state.step},
        )
        turn.set(verdict_logged=_verdict_key(verdict), verdict_logged_at=turn.now)
    if turn.obs.metrics_error:
        turn.alert("analysis_error", "warn", f"{turn.plan.endpoint}: {turn.obs.metrics_error}")
    return look


QUERY_SOURCE_UNREACHABLE = "metrics_source_unreachable"
QUERY_SOURCE_REACHABLE = "metrics_source_reachable"


def _query_outage(turn: _Turn) -> None:
    """One alert when a query check's source (Prometheus, a web endpoint) cannot be asked,
    one more when it answers again: never a rollback (the looks stay inconclusive)."""
    readings = turn.obs.readings
    if not readings:
        return
    outage = next((r.outage for r in readings if r.outage is not None), None)
    known = turn.state.query_outage
    endpoint = turn.plan.endpoint
    if outage is not None and known is None:
        turn.set(query_outage=outage)
        summary = (
            f"{endpoint}: {outage}; the checks on your own metrics stay inconclusive "
            "(never a rollback) until it answers"
        )
        turn.note(QUERY_SOURCE_UNREACHABLE, summary, {"outage": outage})
        turn.alert(QUERY_SOURCE_UNREACHABLE, "warn", summary, {"reason": outage})
    elif outage is None and known is not None:
        turn.set(query_outage=None)
        summary = f"{endpoint}: the source of the checks on your own metrics answers again"
        turn.note(QUERY_SOURCE_REACHABLE, summary, {"was": known})
        turn.alert(
            QUERY_SOURCE_REACHABLE,
            "info",
            summary,
            {"reason": "answers again", "resolves": QUERY_SOURCE_UNREACHABLE, "was": known},
        )


def _verdict_key(verdict: VerdictRecord) -> str:
    return f"{verdict.outcome}/{verdict.may_advance}"


def _verdict_data(state: RolloutState) -> dict[str, Any] | None:
    """The last verdict as events, alerts and hooks carry it (its stored JSON)."""
    return None if state.last_verdict is None else state.last_verdict.data()


def _verdict_news(turn: _Turn, verdict: VerdictRecord) -> bool:
    """Whether a verdict goes into the event log: the first of a split, a fail, one that lets
    the step advance, and any other change of outcome since the last one logged, at most once
    per ``verdict_log_interval``. Otherwise it only updates ``last_verdict`` (and, at the
    step's end, its step summary): a verdict per window in the log would grow it by a few KB
    a minute for as long as the step runs, and a judge hovering between pass and
    inconclusive would do nearly as much."""
    state = turn.state
    if state.verdict_logged is None or verdict.outcome == Outcome.FAIL:
        return True
    if _verdict_key(verdict) == state.verdict_logged:
        return False
    if verdict.may_advance:
        return True  # the verdict that moves the rollout on is always in the log
    logged_at = state.verdict_logged_at
    return logged_at is None or turn.now - logged_at >= turn.timing.verdict_log_interval


def _advance(turn: _Turn) -> None:
    """The judge let the current step go: the next step, or after the last one promotion."""
    state, plan = turn.state, turn.plan
    weights = judged_weights(plan)
    if state.step < len(weights) - 1:
        _next_step(turn)
        return
    if isinstance(plan, BlueGreenPlan):
        reason = "the blue/green bake passed; candidate stays at 100 %, baseline removed"
    elif state.skipped_steps:
        reason = (
            f"the judged steps passed ({_skipped_text(plan, state.skipped_steps)} by an "
            "operator); candidate to 100 %"
        )
    elif state.leaned_steps:
        leaned = ", ".join(str(step + 1) for step in state.leaned_steps)
        reason = (
            f"the last step passed; step(s) {leaned} of {len(weights)} moved on at the end of "
            "their bake with no check leaning towards a regression; candidate to 100 %"
        )
    else:
        reason = "all steps passed; candidate to 100 %"
    _promote_gated(turn, reason)


def _operator_promotes(turn: _Turn, *, full: bool) -> None:
    """An operator's promote: the current step (``full``: every step left) ends unjudged.

    The skipped steps go into the state and the events, so that nothing shows them as
    passed, and the promotion says whose it was.
    """
    state, plan = turn.state, turn.plan
    weights = judged_weights(plan)
    last = len(weights) - 1
    step = min(state.step, last)
    skipped = list(range(step, last + 1)) if full else [step]
    turn.set(skipped_steps=sorted({*state.skipped_steps, *skipped}))
    data = {"step": step, "skipped_steps": skipped}
    if step < last and not full:
        turn.note(
            "manual_promotion",
            f"{_skipped_text(plan, skipped)} by an operator; next step",
            data,
        )
        _next_step(turn)
        return
    reason = f"promoted to 100 % by an operator ({_skipped_text(plan, turn.state.skipped_steps)})"
    turn.note("manual_promotion", reason, data)
    _promote(turn, reason, by="operator")


def _next_step(turn: _Turn) -> None:
    step = turn.state.step + 1
    turn.set(step=step)
    turn.put(_new_target(turn, "step", judged_weights(turn.plan)[step]))


def _promote(turn: _Turn, reason: str, *, by: Literal["judge", "operator"]) -> None:
    """To ``promoting``, saying why and on whose word (``judge`` or ``operator``)."""
    turn.set(gate=None)
    if turn.state.phase is not Phase.PROMOTING:
        data = {"promoted_by": by, "skipped_steps": list(turn.state.skipped_steps)}
        turn.move(Phase.PROMOTING, reason, "promoting", data)
    turn.put(_new_target(turn, "promote", 100, with_baseline=False))


def _skipped_text(plan: AnyPlan, steps: list[int]) -> str:
    """Skipped steps in words, numbered from 1: "steps 2-3 of 3 skipped"."""
    if not isinstance(plan, CanaryPlan):
        return f"{_step_name(plan, 0)} skipped"
    runs: list[list[int]] = []
    for step in sorted(set(steps)):
        if runs and step == runs[-1][-1] + 1:
            runs[-1].append(step)
        else:
            runs.append([step])
    numbers = ", ".join(
        f"{run[0] + 1}" if len(run) == 1 else f"{run[0] + 1}-{run[-1] + 1}" for run in runs
    )
    word = "step" if len(steps) == 1 else "steps"
    return f"{word} {numbers} of {len(judged_weights(plan))} skipped"


def _ab_report(turn: _Turn) -> None:
    plan = turn.plan
    if not isinstance(plan, ABPlan):  # pragma: no cover - caller checks
        return
    report = ab_report(
        plan.objective,
        plan.objective_direction,
        turn.state.candidate.totals(),
        turn.state.control.totals(),
        turn.state.last_verdict,
    )
    turn.set(report=report)
    turn.note("ab_report", str(report["summary"]), {"report": report})
    if report["winner"] == "candidate":
        won = f"A/B: the candidate won ({report['summary']}); candidate to 100 %"
        _promote_gated(turn, won)
    else:
        _start_rollback(
            turn, f"A/B: baseline kept ({report['summary']})", "ab_lost", kind="ab_baseline_kept"
        )


def _split_text(split: dict[str, int]) -> str:
    parts = [f"{name} {pct}%" for name, pct in sorted(split.items(), key=lambda kv: -kv[1])]
    return ", ".join(parts) if parts else "no routes"
