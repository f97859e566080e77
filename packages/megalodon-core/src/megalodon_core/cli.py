"""The ``megalodon`` command.

The plugin host is built lazily inside the commands that need it, so ``megalodon --version`` stays cheap
and a broken plugin only shows up where plugins matter.  Tracebacks never print locals: the worker holds
credentials.

``megalodon --help`` costs about two bare ``import typer, rich``: this module imports neither asyncio nor
rich's console at import (each command imports what it uses), plugin commands are declared by name and
help and imported only when run (:func:`_add_plugin_commands`), and help and usage errors are click's
plain text (``rich_markup_mode=None``): typer's rich help formatting alone costs more than the import.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from . import __version__

if TYPE_CHECKING:
    from rich.console import Console

    from .contracts import CommandInfo


class _Group(typer.core.TyperGroup):
    """Click's plain help, except that the commands' summaries wrap instead of being cut at ~50 columns."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    cls=_Group,
    name="megalodon",
    help="A Taskcluster worker for generic-worker and docker-worker payloads.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
)


class _LazyConsole:
    """A rich ``Console`` made on first print: importing rich's console costs more than ``--help`` may."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self._console is None:
            from rich.console import Console

            # Messages are never wrapped (they hold paths and keys a user copies); tables fold their cells.
            self._console = Console(stderr=self._stderr, soft_wrap=True)
        self._console.print(*objects, **kwargs)


console = _LazyConsole(stderr=False)
err_console = _LazyConsole(stderr=True)


def _plugins() -> Any:
    from .plugins import PluginHost

    return PluginHost()


def _version_callback(value: bool) -> None:
    if value:
        print(f"megalodon {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging (`run` logs the worker's activity without it).")
    ] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_TextFormatter(LOG_FORMAT))
    # The worker's log formats name no source line, thread or process: the logging documentation's
    # "Optimization" settings skip looking them up for every record (finding the caller walks the stack
    # and costs more than the rest of a line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if verbose:
        # Libraries' debug lines add nothing an operator needs, and the taskcluster client's would print
        # request headers (Hawk's ext carries temporary credentials' certificates).
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.INFO)


#: The worker log's line format (``--log-format json`` replaces it).
LOG_FORMAT = "%(asctime)sZ %(levelname)s %(name)s: %(message)s"


class _TextFormatter(logging.Formatter):
    """The standard formatter with its time text made once per second: a busy worker logs two lines per
    task, and ``strftime`` is most of a line's cost."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime(self.default_time_format, self.converter(record.created)))
        return f"{self._second[1]},{int(record.msecs):03d}"  # default_msec_format, "%s,%03d"


#: Loggers kept at INFO under ``-v``.
QUIET_LIBRARIES = ("asyncio", "aiohttp", "taskcluster", "urllib3", "docker", "websockets", "hpack")


@app.command("list-plugins")
def list_plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show installed plugins: distribution, version, executors and features, load status."""
    from rich.markup import escape
    from rich.table import Table

    host = _plugins()
    records = [r.as_json() for r in host.records]
    if as_json:
        print(json.dumps(records, indent=2))
        return
    table = Table("plugin", "distribution", "version", "executors", "features", "status")
    for column in table.columns:
        column.overflow = "fold"  # names are what a user copies: never cut them
    for r in records:
        status = escape(r["status"]) if not r["error"] else f"[red]{escape(r['status'])}: {escape(r['error'])}[/red]"
        table.add_row(
            escape(r["name"]),
            escape(r["distribution"]),
            escape(r["version"]),
            escape(", ".join(r["executors"])),
            escape(", ".join(r["features"])),
            status,
        )
    console.print(table)


def _executor_info(host: Any, name: str) -> Any:
    info = host.executors.get(name)
    if info is None:
        err_console.print(
            f"No executor named {name!r} is installed (installed: {', '.join(sorted(host.executors)) or 'none'})",
            markup=False,
        )
        raise typer.Exit(2)
    return info


@app.command("show-payload-schema")
def show_payload_schema(
    executor: Annotated[
        str | None,
        typer.Option("--executor", help="Executor whose payload schema to print (default: the config's, else native)."),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="Engine whose schema to print, e.g. native's insecure or multiuser."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Worker config: print the schema of the engine it runs.")
    ] = None,
) -> None:
    """Print the JSON schema of an executor's task payload: the schema its peer publishes, when it has one.

    As ``generic-worker show-payload-schema`` (one binary per engine) for the engine chosen by ``--engine``,
    by ``--config``'s engine key (``nativeEngine``), else the executor's default engine.
    """
    host = _plugins()
    cfg = _load_config_or_exit(config, host)[0] if config is not None else None
    if executor is None:
        configured = cfg.executor if cfg is not None else "auto"
        executor = configured if configured != "auto" else "native"
    info = _executor_info(host, executor)
    published = info.published_schemas
    if published is None:
        if engine is not None:
            err_console.print(f"Executor {info.name!r} has one payload schema: --engine does not apply", markup=False)
            raise typer.Exit(2)
        print(json.dumps(info.payload_schema(), indent=2))
        return
    if engine is None and cfg is not None and published.engine_key is not None:
        engine = cfg.extra(published.engine_key, None)
    if engine is not None and engine not in published.files:
        err_console.print(
            f"Executor {info.name!r} has no engine {engine!r} (engines: {', '.join(published.files)})", markup=False
        )
        raise typer.Exit(2)
    print(published.text(engine))


@app.command("validate-payload")
def validate_payload(
    file: Annotated[Path, typer.Argument(help="A payload or a task definition (JSON or YAML).")],
    executor: Annotated[
        str | None, typer.Option("--executor", help="Executor to validate for (default: by payload shape).")
    ] = None,
) -> None:
    """Check a payload against an executor's schema and print field-level errors."""
    from .taskfile import load_task_file

    host = _plugins()
    try:
        data = load_task_file(file)
    except ValueError as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    payload = data.get("payload", data) if "payload" in data else data
    if not isinstance(payload, dict):
        console.print(f"- payload: must be an object, not {type(payload).__name__}", markup=False)
        raise typer.Exit(1)
    if executor:
        info = _executor_info(host, executor)
    else:
        from .worker.executor_choice import choose_info, no_executor_message

        info = choose_info(host, payload)
        if info is None:
            # The same words as the task log of a worker given this payload.
            err_console.print(no_executor_message(payload, host), markup=False)
            raise typer.Exit(2)
    if info.validate is None:
        err_console.print(f"Executor {info.name!r} offers no payload validation", markup=False)
        raise typer.Exit(2)
    errors = info.validate(payload)
    if not errors:
        console.print(f"valid {info.name} payload", markup=False)
        return
    for field, message in errors:
        console.print(f"- {field}: {message}", markup=False)
    raise typer.Exit(1)


def _config_error_exit(exc: Exception) -> NoReturn:
    """Print a config error (no markup: it quotes the operator's text) and exit with generic-worker's code:
    64 for a file that cannot be decoded, 73 for a missing or invalid key."""
    from .worker import EXIT_CANT_LOAD_CONFIG, EXIT_INVALID_CONFIG

    err_console.print(str(exc), markup=False)
    raise typer.Exit(EXIT_CANT_LOAD_CONFIG if getattr(exc, "unreadable", False) else EXIT_INVALID_CONFIG)


def _load_config_or_exit(config: Path, host: Any) -> tuple[Any, dict[str, Any]]:
    """The validated config and its raw data; exits 64 (unreadable) or 73 (invalid) naming the key."""
    from .config import ConfigError, config_warnings, load_config_and_data

    try:
        cfg, data = load_config_and_data(config, host.config_fields())
    except ConfigError as exc:
        _config_error_exit(exc)
    for warning in config_warnings(data):
        logging.getLogger("megalodon_core.config").warning("%s", warning)
    return cfg, data


class _JsonFormatter(logging.Formatter):
    """One JSON object per worker log line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _use_log_format(fmt: str) -> None:
    if fmt == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_JsonFormatter())


@app.command("run")
def run(
    config: Annotated[Path, typer.Option("--config", help="Worker config file (generic-worker's keys).")] = Path(
        "generic-worker.config"
    ),
    with_worker_runner: Annotated[
        bool, typer.Option("--with-worker-runner", help="Speak worker-runner's protocol on stdin/stdout.")
    ] = False,
    protocol_pipe: Annotated[
        str | None,
        typer.Option(
            "--worker-runner-protocol-pipe",
            help="With --with-worker-runner: use the FIFOs PIPE-input / PIPE-output instead of stdin/stdout.",
        ),
    ] = None,
) -> None:
    """Run the worker: claim, run and resolve tasks until a stop condition."""
    import asyncio

    from .config import ConfigError, check_directories, read_config_data
    from .worker import EXIT_INVALID_CONFIG

    root = logging.getLogger()
    if root.level > logging.INFO:
        # The worker says what it does by default (start-up, claims, resolutions, shutdown); -v adds debug.
        root.setLevel(logging.INFO)

    host = _plugins()
    try:
        raw = read_config_data(config)
    except ConfigError as exc:
        _config_error_exit(exc)
    # Before the config is validated, so its warnings come out in the configured format too.
    log_format = raw.get("logFormat", "text") if isinstance(raw, dict) else "text"
    _use_log_format(log_format)
    cfg, _ = _load_config_or_exit(config, host)
    try:
        check_directories(cfg, create=True)
    except ConfigError as exc:
        _config_error_exit(exc)
    try:
        # The config file goes to plugins as WorkerContext.config_file (the multiuser engine checks that
        # task users cannot read it).
        code = asyncio.run(
            _serve_worker(cfg, host, with_worker_runner, protocol_pipe, log_format, config_file=config.resolve())
        )
    except LookupError as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(EXIT_INVALID_CONFIG) from None
    raise typer.Exit(code)


#: generic-worker waits forever for worker-runner's welcome; megalodon carries on without capabilities.
HANDSHAKE_TIMEOUT = 60.0
EXIT_CANT_CONNECT_PROTOCOL_PIPE = 78


async def _serve_worker(
    cfg: Any,
    host: Any,
    with_worker_runner: bool,
    protocol_pipe: str | None,
    log_format: str,
    config_file: Path | None = None,
) -> int:
    """The worker with its worker-runner link, log routing and metrics endpoint around it."""
    from . import __version__
    from .metrics import Metrics, MetricsPlugin, serve
    from .phase_metrics import PhaseMetrics
    from .worker import EXIT_INVALID_CONFIG, Worker
    from .worker.health import health_document
    from .workerrunner import HandshakeTimeout, ProtocolClosed, RunnerLogRouting, WorkerRunnerError, connect

    try:
        proto = await connect(with_worker_runner=with_worker_runner, protocol_pipe=protocol_pipe)
    except WorkerRunnerError as exc:
        err_console.print(f"cannot connect to worker-runner: {exc}", markup=False)
        return EXIT_CANT_CONNECT_PROTOCOL_PIPE
    if with_worker_runner:
        # Core's internal plugin: the worker's own log goes to worker-runner when it can take it, else to
        # stderr as before.
        log_routing = RunnerLogRouting(proto, default_format="%(asctime)sZ %(levelname)s %(name)s: %(message)s")
        host.register(log_routing, name="megalodon-core.worker-runner-log")
    metrics = Metrics(version=__version__, workerPoolId=cfg.task_queue_id, workerId=cfg.workerId)
    host.register(MetricsPlugin(metrics), name="megalodon-core.metrics")
    phases = PhaseMetrics(metrics, task_queue_id=cfg.task_queue_id, capacity=cfg.capacity)
    host.register(phases, name="megalodon-core.phase-metrics")
    worker = Worker(cfg, host, runner=proto if with_worker_runner else None, config_file=config_file)
    proto.on(
        "graceful-termination",
        lambda m: worker.stop(
            finish_tasks=bool(m.get("finish-tasks")),
            cause=f"graceful-termination from worker-runner (finish-tasks: {bool(m.get('finish-tasks'))})",
        ),
    )
    proto.on(
        "new-credentials",
        lambda m: worker.update_credentials(
            {"clientId": m["client-id"], "accessToken": m["access-token"], "certificate": m.get("certificate", "")}
        ),
    )
    proto.start()
    if with_worker_runner:
        try:
            await proto.wait_ready(HANDSHAKE_TIMEOUT)
        except (HandshakeTimeout, ProtocolClosed) as exc:
            logging.getLogger(__name__).warning("no welcome from worker-runner (%s): running without it", exc)
    server = None
    if cfg.metricsPort is not None:

        def health() -> dict[str, Any]:
            return health_document(worker)

        try:
            server = await serve(metrics, cfg.metricsAddress, cfg.metricsPort, health=health)
        except OSError as exc:
            import socket

            key = "metricsAddress" if isinstance(exc, socket.gaierror) else "metricsPort"
            err_console.print(
                f'Config setting "{key}" is invalid: cannot listen on {cfg.metricsAddress}:{cfg.metricsPort} '
                f"({exc.strerror or exc}); choose a free port, or 0 for any free port",
                markup=False,
            )
            await proto.close()
            return EXIT_INVALID_CONFIG
        worker.endpoints["metrics"] = server.url  # metrics.serve logged where it listens
    try:
        return await worker.run(handle_signals=True)
    finally:
        if server is not None:
            await server.stop()
        await proto.close()


@app.command("run-task")
def run_task_cmd(
    file: Annotated[Path, typer.Argument(help="A task definition or a bare payload (JSON or YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Where to write logs and artifacts.")] = Path("megalodon-out"),
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON file of worker config keys to override.")
    ] = None,
) -> None:
    """Run one task locally through the real worker path, on the embedded Taskcluster double.

    Exit code: 0 completed, 1 failed, 2 exception, 3 the queue rejected the task definition, 64 unreadable
    input (task file or --config).
    """
    import asyncio

    from .config import ConfigError, json_kind, read_config_data
    from .runtask import EXIT_TASK_REJECTED, TaskRejected, run_task

    overrides: dict[str, Any] = {}
    if config is not None:
        try:
            data = read_config_data(config)
        except ConfigError as exc:
            err_console.print(f"--config: {exc}", markup=False)
            raise typer.Exit(64) from None
        if not isinstance(data, dict):
            err_console.print(
                f"--config: {config} must hold a JSON object of worker config keys, not a JSON {json_kind(data)}",
                markup=False,
            )
            raise typer.Exit(64)
        overrides = data
    try:
        result = asyncio.run(run_task(file, out_root=out, plugins=_plugins(), config_overrides=overrides))
    except TaskRejected as exc:
        err_console.print(f"the queue rejected the task definition in {file}: {exc}", markup=False)
        raise typer.Exit(EXIT_TASK_REJECTED) from None
    except (ValueError, ConfigError) as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(64) from None
    except OSError as exc:
        # The output directory (or a temporary one) cannot be written: nothing the task did.
        where = f" {exc.filename}" if exc.filename else ""
        err_console.print(f"run-task cannot write{where}: {exc.strerror or exc} (see --out)", markup=False)
        raise typer.Exit(64) from None
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        _print_run_summary(result)
    raise typer.Exit(result.exit_code)


def _print_run_summary(result: Any) -> None:
    """The human summary of ``run-task``: the run the worker ran, its artifacts, and why it did not complete."""
    from rich.markup import escape
    from rich.table import Table

    colour = {"completed": "green", "failed": "red"}.get(result.state, "yellow")
    console.print(
        f"Task [bold]{escape(result.task_id)}[/bold] run {result.run_id}: [{colour}]{escape(result.state)}[/{colour}] "
        f"({escape(result.reason)}) in {result.duration:.2f}s"
    )
    if result.next_run_id is not None:
        console.print(
            f"The queue scheduled run {result.next_run_id} (a retry); shown here is run {result.run_id}, "
            "the run the worker ran.",
            markup=False,
        )
    # Columns fold instead of truncating: a path cut at 80 columns is useless to copy.
    table = Table("artifact", "storage", "content type", "local path / detail")
    for column in table.columns:
        column.overflow = "fold"
    for a in result.artifacts:
        detail = a.path or a.url or (f"{a.reason}: {a.message}" if a.reason else a.message or "")
        table.add_row(escape(a.name), escape(a.storage_type), escape(a.content_type), escape(detail))
    console.print(table)
    if result.log_path:
        console.print(f"Log: {result.log_path}", markup=False)
    if result.public_key:
        signed = any(a.name.endswith("chain-of-trust.json.sig") and a.path for a in result.artifacts)
        console.print(
            (
                "Chain of trust: signed with an ephemeral ed25519 key made for this run"
                if signed
                else "Chain of trust: an ephemeral ed25519 key was made for this run but signed nothing (see the log)"
            )
            + f"; public key {result.public_key} (in {result.public_key_path})",
            markup=False,
        )
    if result.state != "completed":
        console.print(f"Reason: {result.state}/{result.reason}", markup=False)
        if result.log_tail:
            console.print(f"Last {len(result.log_tail)} lines of the task log:", markup=False)
            for line in result.log_tail:
                console.print("  " + line, markup=False, highlight=False, soft_wrap=True)


@app.command("status")
def status(
    state_dir: Annotated[Path, typer.Option("--state-dir", help="The worker's stateDir.")] = Path("."),
) -> None:
    """Print the tasks the worker using STATE_DIR is running now (generic-worker's worker-status.json).

    While a worker runs there, its ``state`` too: ``running``, ``draining`` or ``quarantined`` (with the
    failing self-checks as ``problems``).
    """
    from .worker import running_task_ids
    from .worker.drain import read_worker

    if not state_dir.is_dir():
        problem = "does not exist" if not state_dir.exists() else "is not a directory"
        err_console.print(
            f"--state-dir {state_dir} {problem}: give the stateDir of the worker's config", markup=False, soft_wrap=True
        )
        raise typer.Exit(2)
    doc: dict[str, Any] = {"currentTaskIds": running_task_ids(state_dir)}
    live = read_worker(state_dir)
    if live is not None:
        doc.update(pid=live.pid, state=live.state)
        if live.problems:
            doc["problems"] = live.problems
    print(json.dumps(doc))


@app.command("drain")
def drain(
    state_dir: Annotated[Path, typer.Option("--state-dir", help="The worker's stateDir.")] = Path("."),
) -> None:
    """Drain the worker using STATE_DIR: it claims nothing more, finishes its running tasks, then exits 0.

    Sends SIGUSR1 to the worker process recorded in STATE_DIR (what ``kill -USR1`` does); ``megalodon status``
    then says "draining".  Exits 2 when no worker runs there.
    """
    from .worker import running_task_ids
    from .worker.drain import DrainError, request_drain

    try:
        worker = request_drain(state_dir)
    except DrainError as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    print(json.dumps({"pid": worker.pid, "state": "draining", "currentTaskIds": running_task_ids(state_dir)}))


config_app = typer.Typer(help="Inspect worker config files.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")


@config_app.command("explain")
def config_explain(
    config: Annotated[Path, typer.Option("--config", help="Worker config file.")] = Path("generic-worker.config"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the effective config: every key, its value and where it came from (file, worker-runner, default).

    Values a running worker received from worker-runner (new credentials) are read from its stateDir.
    """
    from rich.markup import escape
    from rich.table import Table

    from .config import explain
    from .worker import RUNTIME_CONFIG_FILE

    host = _plugins()
    cfg, data = _load_config_or_exit(config, host)
    runtime: dict[str, Any] = {}
    runtime_file = Path(cfg.stateDir) / RUNTIME_CONFIG_FILE
    if runtime_file.is_file():
        try:
            runtime = json.loads(runtime_file.read_text())
        except (OSError, ValueError) as exc:
            err_console.print(f"ignoring unreadable {runtime_file}: {exc}", markup=False)
        if not isinstance(runtime, dict):
            runtime = {}
    rows = explain(data, host.config_fields(), runtime)
    if as_json:
        print(json.dumps([{"key": k, "value": v, "source": s} for k, v, s in rows], indent=2, default=str))
        return
    table = Table("key", "value", "source")
    for column in table.columns:
        column.overflow = "fold"
    for key, value, source in rows:
        table.add_row(escape(key), escape(json.dumps(value, default=str)), escape(source))
    console.print(table)


@app.command("tc-double")
def tc_double(
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 0,
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
) -> None:
    """Serve the Taskcluster double (queue, object, index, secrets) until interrupted."""
    import asyncio

    from .double import TaskclusterDouble

    async def serve() -> None:
        async with TaskclusterDouble(host=host, port=port) as double:
            print(json.dumps({"rootUrl": double.root_url, "credentials": double.root_credentials}), flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        err_console.print(f"cannot serve the Taskcluster double on {host}:{port}: {exc.strerror or exc}", markup=False)
        raise typer.Exit(2) from None


def main() -> None:
    if "--version" not in sys.argv[1:]:
        _add_plugin_commands()
    app()


def _add_plugin_commands() -> None:
    """Declare every plugin command by its name and help; its module is imported only when it runs.

    Only ``megalodon_cli_commands`` is called (a commands-only plugin host): building the command line
    imports the plugins' light ``hooks.py`` modules and nothing they register.
    """
    from .plugins import PluginError, PluginHost

    core = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    try:
        commands = PluginHost(commands_only=True).commands()
    except PluginError as exc:
        err_console.print(str(exc), markup=False)
        raise SystemExit(69) from None
    for info in commands:
        if info.name in core:
            err_console.print(f"a plugin's command {info.name!r} clashes with a core command", markup=False)
            raise SystemExit(69)
        app.command(
            info.name,
            help=info.help,
            # Every argument, --help included, goes to the command itself once it is imported.
            add_help_option=False,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )(_deferred(info))


def _deferred(info: CommandInfo) -> Any:
    """The stand-in callback of a plugin command: imports the real one and runs it on the remaining args."""

    def run_plugin_command(ctx: typer.Context) -> None:
        command = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False, rich_markup_mode=None)
        command.command(info.name, help=info.help)(info.load())
        # standalone: the command's own usage errors, --help and typer.Exit codes end the process as they would
        # for a core command.
        typer.main.get_command(command).main(args=ctx.args, prog_name=ctx.command_path, standalone_mode=True)

    return run_plugin_command
