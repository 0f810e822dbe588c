"""The ``rollout`` command line: the edge where flags become ``Settings`` and servers start.

Each command maps its flags onto settings objects and calls into the package; no command holds
logic of its own. Errors print one clear line and exit non-zero, never a traceback.

Users submit plans and steer rollouts through the controller's HTTP API; the engine acts on
what is stored. ``submit``, ``get``, ``wait``, ``list``, ``events``, ``pause``, ``resume``,
``promote`` and ``abort`` are that API's client: their requests and rendering live in
``rollout.client_cli``, and each takes ``--server`` (``ROLLOUT_SERVER``), ``--token``
(``ROLLOUT_TOKEN``) and ``--output table|json``; ``wait`` waits for a phase, for scripts.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rollout.errors import ConfigurationProblem

if TYPE_CHECKING:
    from rollout import client_cli
    from rollout.analysis.spec import Policy
    from rollout.plan import AnyPlan
    from rollout.settings import Settings

app = typer.Typer(
    name="rollout",
    help="Progressive delivery for Databricks Model Serving endpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Progressive delivery for Databricks Model Serving endpoints."""


@app.command()
def sandbox(
    *,
    port: int = typer.Option(8765, min=0, max=65535, help="TCP port (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; keep it on loopback."),
    seed: int = typer.Option(0, help="Seed of the simulated traffic."),
    window_seconds: float | None = typer.Option(
        None,
        min=0.001,
        help="Length of an export-metrics window, in seconds: 60 as on Databricks, 10 with "
        "--demo.",
        show_default=False,
    ),
    update_seconds: float = typer.Option(
        10.0, min=0.0, help="How long a config update stays IN_PROGRESS, in seconds."
    ),
    token: str = typer.Option(
        "dapi-sandbox-token", help="The CAN_MANAGE personal access token to accept."
    ),
    demo: bool = typer.Option(
        False, "--demo", help="Create demo-endpoint with one model under simulated load."
    ),
    demo_qps: float = typer.Option(
        1000.0, min=0.0, help="Simulated requests per second on demo-endpoint (with --demo)."
    ),
) -> None:
    """Run a local Databricks serving workspace (REST API, simulated traffic, admin API)."""
    # Imported here: the web stack is only needed by the commands that serve.
    from rollout.sandbox.server import run  # noqa: PLC0415 -- keeps other commands light

    try:
        run(
            host=host,
            port=port,
            seed=seed,
            # The demo plans (deploy/demo/) decide within minutes at 1000 requests/s in 10 s
            # windows, as docker-compose.yml runs the sandbox.
            window_seconds=window_seconds or (10.0 if demo else 60.0),
            update_seconds=update_seconds,
            token=token,
            demo=demo,
            demo_qps=demo_qps,
            echo=typer.echo,
        )
    except OSError as exc:
        typer.echo(f"error: cannot serve on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def validate(
    plan_file: Annotated[Path, typer.Argument(help="The plan, YAML or JSON; - reads stdin.")],
    policy_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--policy-dir",
            help="A directory of <name>.yaml policies besides the built-in ones and "
            "ROLLOUT_ENGINE_POLICY_DIRS (repeatable).",
        ),
    ] = None,
) -> None:
    """Check a plan offline: every problem is listed with the field it concerns."""
    from rollout.plan import (  # noqa: PLC0415
        CanaryPlan,
        PlanDocumentError,
        PlanError,
        describe_steps,
        load_plan,
        plan_notes,
    )
    from rollout.policies import PolicyLibrary  # noqa: PLC0415

    try:
        library = PolicyLibrary.from_path_list(_settings().engine.policy_dirs, *(policy_dir or []))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    stdin = str(plan_file) == "-"
    source = "<stdin>" if stdin else str(plan_file)
    try:
        text = sys.stdin.read() if stdin else plan_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        typer.echo(f"error: cannot read {source}: {exc}", err=True)
        raise typer.Exit(2) from exc
    content_type = "application/json" if plan_file.suffix == ".json" else None
    plan_file = Path(source)
    try:
        plan, policy = load_plan(text, content_type=content_type, library=library, source=source)
    except PlanDocumentError as exc:
        # Not a plan at all (unreadable, too large, a list where a word belongs): one line.
        issue = exc.issues[0]
        typer.echo(f"error: {plan_file}: {issue.field}: {issue.message}", err=True)
        raise typer.Exit(2) from exc
    except PlanError as exc:
        typer.echo(f"{plan_file}: {exc}", err=True)
        raise typer.Exit(1) from exc
    own = _own_metrics_issues(plan, policy) if policy.query_checks else []
    if own:
        typer.echo(
            f"{plan_file}: invalid plan:\n" + "\n".join(f"  {f}: {m}" for f, m in own), err=True
        )
        raise typer.Exit(1)
    steps = describe_steps(plan) if isinstance(plan, CanaryPlan) else plan.strategy
    # An alias is resolved at submission: until then the candidate is its alias.
    candidate = plan.candidate.describe() if plan.candidate.alias else plan.candidate.served_name
    typer.echo(
        f"{plan_file}: valid {plan.strategy} plan for endpoint {plan.endpoint}: "
        f"{candidate} ({steps}); policy {policy.describe()}"
    )
    for note in plan_notes(plan, policy, metrics_window=_settings().serving.metrics_window):
        typer.echo(f"note: {note}")


def _own_metrics_issues(plan: AnyPlan, policy: Policy) -> list[tuple[str, str]]:
    """The plan's checks on its own metrics, asked of their sources as a submission would:
    (field, message) per problem. Without the endpoint's live config the baseline is the
    plan's ``baseline`` (unnamed: the queries are only checked to run, the series check
    waits for the submission). Exit 2 when a source cannot be reached."""
    from rollout.analysis.queries import promql_duration  # noqa: PLC0415
    from rollout.metrics.prometheus import OwnMetrics, SourceUnreachable  # noqa: PLC0415

    settings = _settings()

    async def ask() -> list[tuple[str, str]]:
        own = OwnMetrics(settings.prometheus)
        try:
            issues = await own.validate(
                policy,
                endpoint=plan.endpoint,
                candidate=plan.candidate.served_name,
                baseline=plan.baseline,
                window=promql_duration(settings.engine.look_interval),
            )
        finally:
            await own.aclose()
        return [(issue.field, issue.message) for issue in issues]

    try:
        return asyncio.run(ask())
    except SourceUnreachable as exc:
        typer.echo(f"error: cannot check the plan's own-metric checks: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def engine(
    *,
    until_idle: bool = typer.Option(
        False, "--until-idle", help="Exit once no rollout is active (batch runs, tests)."
    ),
) -> None:
    """Run the reconcile loop alone: drive every active rollout in the store to its end.

    Configured by the environment: ROLLOUT_STORE_URL, DATABRICKS_HOST and credentials,
    ROLLOUT_ENGINE_* timings. SIGTERM or Ctrl-C stops it after the updates in flight.
    """
    # Imported here: keeps the other commands light.
    from rollout.alerts.dispatcher import parse_channels  # noqa: PLC0415
    from rollout.engine.service import run_engine  # noqa: PLC0415

    settings = _settings()
    try:
        channels = parse_channels(settings.alerts.channels)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        asyncio.run(run_engine(settings, until_idle=until_idle, default_channels=channels))
    except ConfigurationProblem as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("watch-alias")
def watch_alias(
    alias: Annotated[
        str,
        typer.Argument(help="The alias to watch: catalog.schema.model@alias.", show_default=False),
    ],
    *,
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="The serving endpoint to roll out on.")
    ],
    plan_template: Annotated[
        Path,
        typer.Option(
            "--plan-template",
            help="A plan file (YAML or JSON); the watch sets its candidate's alias and version.",
        ),
    ],
    interval: float | None = typer.Option(
        None, min=0.01, help="Seconds between two looks (ROLLOUT_ALIASES_POLL_INTERVAL; 60)."
    ),
    once: bool = typer.Option(False, "--once", help="Look once, print what it came to, exit."),
) -> None:
    """Start a rollout whenever a Unity Catalog alias moves to a new version.

    Polls the alias; when it names a version the endpoint neither serves nor has in flight,
    stores a rollout of that version from the plan template (one per alias move, however
    many watchers share the store). A controller on the same store drives it. Configured by
    the environment as `rollout engine` (ROLLOUT_STORE_URL, DATABRICKS_*). The same watch
    inside `rollout serve`: ROLLOUT_ALIASES_WATCHES.
    """
    from rollout.engine.service import run_alias_watch  # noqa: PLC0415
    from rollout.settings import AliasWatchSetting  # noqa: PLC0415

    settings = _settings()
    if interval is not None:
        settings.aliases.poll_interval = interval
    watch = AliasWatchSetting(alias=alias, endpoint=endpoint, plan_template=plan_template)
    last: list[str] = []

    def on_pass(outcome: str) -> None:
        # A line when what the looks find changes, not one a minute.
        if last[-1:] != [outcome]:
            typer.echo(f"{alias}: {outcome}")
            last[:] = [outcome]

    try:
        outcome = asyncio.run(run_alias_watch(settings, watch, once=once, on_pass=on_pass))
    except ConfigurationProblem as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if outcome is not None:
        typer.echo(f"{alias}: {outcome}")
    raise typer.Exit(1 if outcome in ("unavailable", "invalid") else 0)


@app.command()
def serve(
    *,
    host: str | None = typer.Option(
        None, help="Address to listen on (ROLLOUT_API_HOST; default 127.0.0.1)."
    ),
    port: int | None = typer.Option(
        None, min=0, max=65535, help="TCP port (ROLLOUT_API_PORT; default 8080; 0 = any free)."
    ),
) -> None:
    """Run the controller: HTTP API, reconcile loop and alert dispatcher.

    Configured by the environment (DATABRICKS_* for the workspace, ROLLOUT_* for the rest:
    see rollout/settings.py). Prints the URL it listens on. SIGTERM or Ctrl-C shuts down in
    stages: no new work, updates in flight finish, pending alerts are flushed, exit 0.
    """
    from rollout.daemon import serve as run_daemon  # noqa: PLC0415 -- keeps other commands light

    settings = _settings()
    if host is not None:
        settings.api.host = host
    if port is not None:
        settings.api.port = port
    try:
        code = asyncio.run(
            run_daemon(settings, on_listening=lambda url: typer.echo(f"listening on {url}"))
        )
    except ConfigurationProblem as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@app.command()
def demo(
    *,
    keep: bool = typer.Option(
        False,
        "--keep",
        help="Keep the sandbox and the controller running afterwards (status page, a plan "
        "to try) until Ctrl-C.",
    ),
) -> None:
    """Show the whole thing in under two minutes, on this machine, with no Databricks account.

    Starts a sandbox workspace and a controller on free loopback ports, runs a healthy canary
    (promoted) and a regressed one (rolled back, its alert shown). Exit 0 only if both happen.
    Then everything stops, unless --keep: the status page's URL and commands to try follow.
    """
    from rollout.demo import main as run_demo  # noqa: PLC0415 -- keeps other commands light

    raise typer.Exit(run_demo(keep=keep))


def _settings() -> Settings:
    """Settings from the environment; a bad variable is one clear line, not a traceback."""
    from pydantic import ValidationError  # noqa: PLC0415

    from rollout.settings import Settings, variable_of  # noqa: PLC0415

    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            # Named as it is set: by its environment variable, with the value it has.
            variable = variable_of(exc.title, tuple(error["loc"]))
            value = str(error.get("input"))
            if any(word in variable for word in ("TOKEN", "SECRET")) or len(value) > 80:
                value = "…"  # a secret is never echoed; a long value says nothing more
            typer.echo(f"error: {variable}={value}: {error['msg']}", err=True)
        raise typer.Exit(2) from None


# ---- the API's client -------------------------------------------------------------------------

# The default is written out (not imported) so that `rollout --help` stays light.
_DEFAULT_SERVER = "http://127.0.0.1:8080"
ServerOption = Annotated[
    str,
    typer.Option(
        "--server", envvar="ROLLOUT_SERVER", help="URL of the rollout API.", show_envvar=True
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="ROLLOUT_TOKEN",
        help="Bearer token: viewer to read, operator to act.",
        show_envvar=True,
        show_default=False,
    ),
]
OutputOption = Annotated[
    str,
    typer.Option(
        "--output", "-o", help="table (for people) or json (for scripts).", metavar="table|json"
    ),
]
IdArgument = Annotated[
    str,
    typer.Argument(
        help="The rollout: its id, a unique prefix of it, or endpoint/name (the plan's name).",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    str | None,
    typer.Option(
        "--timeout",
        help="Give up after this long (30m, 1h30m, 90s), exit 7. Default: no limit.",
        show_default=False,
    ),
]
IntervalOption = Annotated[
    float, typer.Option(min=0.01, help="Seconds between two looks when watching.")
]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Why; kept in the event log and alerts.")
]


def _session(server: str, token: str | None, output: str) -> client_cli.Session:
    from rollout import client_cli  # noqa: PLC0415 -- httpx/rich only for the client commands

    try:
        chosen = client_cli.Output(output.lower())
    except ValueError:
        typer.echo(f"error: --output is table or json, not {output!r}", err=True)
        raise typer.Exit(2) from None
    return client_cli.Session(server, token or None, chosen)


def _done(code: int) -> None:
    if code:
        raise typer.Exit(code)


@app.command()
def submit(
    *,
    plan_file: Annotated[
        Path, typer.Argument(help="The plan, YAML or JSON (.json); - reads standard input.")
    ],
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """Submit a rollout plan; prints the new rollout's id (json: the rollout).

    Warnings (the endpoint's traffic is too low for the first step to get a verdict in
    time) go to stderr. An invalid plan lists every problem with its field and exits 1;
    an unreadable file exits 2.
    """
    from rollout import client_cli  # noqa: PLC0415

    _done(client_cli.submit(_session(server, token, output), plan_file))


@app.command()
def get(
    *,
    rollout_id: IdArgument,
    watch: Annotated[
        bool,
        typer.Option("--watch", "-w", help="Follow the rollout until it ends or pauses."),
    ] = False,
    interval: IntervalOption = 2.0,
    timeout: TimeoutOption = None,
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """Show a rollout: phase, progress through its steps, last verdict per check.

    --watch follows it until it ends or pauses: a live view on a terminal, one
    line per change otherwise (one JSON document per change with --output json).
    It rides out controller restarts and network blips (retrying with backoff
    until --timeout), so it can gate a CI job.

    Exit codes with --watch: 0 succeeded, 3 rolled_back, 4 failed, 5 aborted,
    6 paused (waits for a person: resume, promote or abort), 7 --timeout passed.
    Always: 1 the request failed (refused, or unreachable without --watch), 2 bad usage.
    """
    from rollout import client_cli  # noqa: PLC0415

    _done(
        client_cli.get(
            _session(server, token, output),
            rollout_id,
            watch=watch,
            interval=interval,
            timeout=_seconds(timeout),
        )
    )


@app.command()
def wait(
    *,
    rollout_id: IdArgument,
    phase: Annotated[
        str,
        typer.Option(
            "--for",
            help="The phase to wait for: pending, preparing, progressing, paused, promoting, "
            "succeeded, rolling_back, rolled_back, aborted or failed.",
        ),
    ] = "succeeded",
    interval: IntervalOption = 2.0,
    timeout: TimeoutOption = None,
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """Wait, silently, until a rollout is in a phase (for scripts); prints its id and phase.

    Rides out controller restarts and network blips like get --watch.

    Exit codes: 0 the phase was reached; otherwise where the rollout stopped:
    3 rolled_back, 4 failed, 5 aborted, 6 paused (waits for a person),
    7 --timeout passed, 8 it succeeded without passing through the phase;
    1 the request failed, 2 bad usage (an unknown phase).
    """
    from rollout import client_cli  # noqa: PLC0415
    from rollout.store.model import PHASES  # noqa: PLC0415

    if phase not in PHASES:
        typer.echo(
            f"error: --for {phase!r} is not a phase; use one of {', '.join(sorted(PHASES))}",
            err=True,
        )
        raise typer.Exit(2)
    _done(
        client_cli.wait(
            _session(server, token, output),
            rollout_id,
            phase,
            interval=interval,
            timeout=_seconds(timeout),
        )
    )


def _seconds(value: str | None) -> float | None:
    """``--timeout`` in seconds; a bad duration is a usage error (exit 2)."""
    if value is None:
        return None
    from rollout.units import parse_duration  # noqa: PLC0415

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        typer.echo(f"error: --timeout: {exc}", err=True)
        raise typer.Exit(2) from None
    if seconds <= 0:
        typer.echo(f"error: --timeout must be longer than 0, not {value!r}", err=True)
        raise typer.Exit(2)
    return seconds


@app.command("list")
def list_rollouts(
    *,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Only this endpoint's rollouts.")
    ] = None,
    phase: Annotated[
        list[str] | None,
        typer.Option("--phase", help="Only rollouts in this phase (repeatable)."),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            min=1, max=100_000, help="At most this many (read from the API page by page)."
        ),
    ] = 50,
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """List rollouts, newest first."""
    from rollout import client_cli  # noqa: PLC0415

    _done(
        client_cli.list_rollouts(
            _session(server, token, output), endpoint=endpoint, phases=phase or [], limit=limit
        )
    )


@app.command()
def events(
    *,
    rollout_id: IdArgument,
    after: Annotated[int, typer.Option(min=0, help="Only events after this seq.")] = 0,
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """Show a rollout's event log: every transition and verdict, with its reason."""
    from rollout import client_cli  # noqa: PLC0415

    _done(client_cli.events(_session(server, token, output), rollout_id, after=after))


@app.command()
def pause(
    *,
    rollout_id: IdArgument,
    reason: ReasonOption = None,
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """Hold a rollout at its current step (needs the operator role)."""
    from rollout import client_cli  # noqa: PLC0415

    body = {"reason": reason} if reason else None
    _done(client_cli.command(_session(server, token, output), rollout_id, "pause", body))


@app.command()
def resume(
    *,
    rollout_id: IdArgument,
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """Resume a paused rollout; its current step is applied again (needs operator)."""
    from rollout import client_cli  # noqa: PLC0415

    _done(client_cli.command(_session(server, token, output), rollout_id, "resume"))


@app.command()
def promote(
    *,
    rollout_id: IdArgument,
    full: Annotated[
        bool, typer.Option("--full", help="Straight to 100 % instead of the next step.")
    ] = False,
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """Move a rollout on without waiting for its verdict (needs the operator role)."""
    from rollout import client_cli  # noqa: PLC0415

    body = {"full": True} if full else None
    _done(client_cli.command(_session(server, token, output), rollout_id, "promote", body))


@app.command()
def abort(
    *,
    rollout_id: IdArgument,
    reason: ReasonOption = None,
    server: ServerOption = _DEFAULT_SERVER,
    token: TokenOption = None,
    output: OutputOption = "table",
) -> None:
    """Roll a rollout back to its baseline and end it as aborted (needs operator)."""
    from rollout import client_cli  # noqa: PLC0415

    body = {"reason": reason} if reason else None
    _done(client_cli.command(_session(server, token, output), rollout_id, "abort", body))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
