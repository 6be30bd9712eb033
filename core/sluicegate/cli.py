"""The ``sluicegate`` command: ``serve``, ``plugins``, ``rotate-salt-key`` and ``new-sink``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

__all__ = ("app_factory", "main")

CONFIG_ENV = "SLUICEGATE_CONFIG"
WORKERS_ENV = "SLUICEGATE_WORKERS"
ALLOW_UNKNOWN_KEYS_ENV = "SLUICEGATE_ALLOW_UNKNOWN_KEYS"
MIGRATED_ENV = "SLUICEGATE_MIGRATED"
"""The database URL ``sluicegate serve`` has just migrated: its workers do not run the migrations again."""
log = logging.getLogger("sluicegate")


def name_process(name: str) -> None:
    """Show ``name`` for this process in ``ps -e``, ``top`` and ``pgrep`` (Linux's ``comm``, at most 15 bytes), so an
    operator tells the supervisor, the workers and the delivery process apart: the forked ones keep ``serve``'s
    command line."""
    try:
        with open("/proc/self/comm", "w") as handle:
            handle.write(name[:15])
    except OSError:
        pass  # not Linux, or no /proc: the name is a convenience


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # These echo SQL parameters (stored callback_vars) at DEBUG: keep them quiet whatever the level.
    for noisy in ("alembic", "aiosqlite", "sqlalchemy.engine", "httpcore", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def app_factory() -> Any:
    """Build the app from ``$SLUICEGATE_CONFIG`` (used by every server worker)."""
    from sluicegate.app import create_app
    from sluicegate.config import load_settings, per_worker

    from sluicegate.delivery import DELIVERY_ENV

    name_process("sg-worker")
    allow_unknown_keys = bool(os.environ.get(ALLOW_UNKNOWN_KEYS_ENV))
    workers = int(os.environ.get(WORKERS_ENV) or 1)
    delivery = os.environ.get(DELIVERY_ENV) or "inline"
    settings = load_settings(os.environ[CONFIG_ENV], allow_unknown_keys=allow_unknown_keys)
    if delivery == "inline":  # each worker delivers: the gateway-wide budgets are shared among them
        settings = per_worker(settings, workers)
    # With one worker, SIGHUP reaches this process (forwarded by the delivery supervisor) and reloads it in place;
    # with several it reaches uvicorn's supervisor, which replaces the workers one at a time.
    app = create_app(settings, http_client=os.environ.get("SLUICEGATE_HTTP_CLIENT", "builtin"), tune_gc=True,
                     workers=workers, allow_unknown_keys=allow_unknown_keys, reload_on_sighup=workers <= 1,
                     delivery=delivery)
    if os.environ.get(MIGRATED_ENV) == settings.database_url:
        app.state.gateway.migrate_on_start = False  # `sluicegate serve` migrated it just before starting us
    return app


def _serve(args: argparse.Namespace) -> int:
    from sluicegate.config import ConfigError, load_settings
    from sluicegate.db.startup import DatabaseStartError, url_problem, with_retries
    from sluicegate.db.store import SaltKeyError, Store, display_url
    from sluicegate.delivery import DELIVERY_ENV
    from sluicegate.gateway import Gateway
    from sluicegate.serving import ANNOUNCE_ENV
    from sluicegate.serving_http import HEADER_TIMEOUT_ENV, MAX_HEADER_BYTES_ENV
    from sluicegate.sinks.dispatcher import spool_base_for

    try:
        settings = load_settings(args.config, allow_unknown_keys=args.allow_unknown_keys)
        gateway = Gateway(settings)  # validates plugins and every configured callback before binding
    except ConfigError as exc:
        problems = exc.problems + (_problems_past_misspellings(args.config, exc.problems)
                                   if not args.allow_unknown_keys else [])
        print(f"sluicegate: {args.config}: configuration error:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if any(": unknown key" in problem or "not a router setting" in problem for problem in problems):
            print("  (--allow-unknown-keys turns the unknown keys into warnings)", file=sys.stderr)
        return 2
    except Exception as exc:  # duplicate callback_name, broken plugin used by config, unusable database URL...
        print(f"sluicegate: cannot start: {url_problem(settings.database_url, exc) or exc}", file=sys.stderr)
        return 2
    problem = port_problem(args.host, args.port)
    if problem is not None:
        print(f"sluicegate: cannot start: {problem}", file=sys.stderr)
        return 2
    for warning in settings.warnings:
        log.warning("%s: %s", args.config, warning)
    if not settings.general_settings.master_key:
        log.warning("general_settings.master_key is not set: admin routes are closed to everyone")

    async def migrate() -> None:
        store = Store.for_settings(settings)
        try:
            await store.migrate()
        finally:
            await store.aclose()

    def progress(line: str) -> None:
        print(f"sluicegate: {line}", file=sys.stderr, flush=True)

    try:
        asyncio.run(with_retries(settings.database_url, migrate, settings.sluicegate_settings.database_connect_timeout,
                                 progress, passthrough=(SaltKeyError,)))
    except (SaltKeyError, DatabaseStartError) as exc:  # SaltKeyError: stored secrets this key cannot open
        print(f"sluicegate: cannot start: {exc}", file=sys.stderr)
        return 2
    described = gateway.pm.describe(gateway.registry.by_plugin(), gateway.providers.by_plugin())
    sinks = ", ".join(f"{name} ({gateway.registry.owner(name)})" for name in gateway.registry.names())
    broken = [p for p in described if p.error]
    delivery = args.delivery or "process"
    print(f"Sluicegate starting on http://{args.host}:{args.port} ({args.workers} worker(s), delivery: "
          f"{'one delivery process' if delivery == 'process' else 'inline, in each worker'})", flush=True)
    print(f"  database: {display_url(settings.database_url)}", flush=True)
    print(f"  sinks:    {sinks or 'none'}", flush=True)
    for plugin in broken:
        print(f"  plugin {plugin.name} failed to load: {plugin.error}", flush=True)
    print(f"  models:   {', '.join(gateway.models.names()) or 'none'}", flush=True)
    model = (gateway.models.names() or ["MODEL"])[0]
    print(f"  try:      curl http://{args.host}:{args.port}/v1/chat/completions -H 'Authorization: Bearer "
          f"<master key>' -H 'Content-Type: application/json' -d '{{\"model\": \"{model}\", \"messages\": "
          f"[{{\"role\": \"user\", \"content\": \"hello\"}}]}}'", flush=True)
    del gateway
    # A fresh server: the request metrics the workers of an earlier run published start again from 0.
    from pathlib import Path

    from sluicegate.sinks.dispatcher import spool_base_for
    from sluicegate.worker_metrics import clear_stale

    clear_stale(Path(spool_base_for(settings)) / "metrics")

    os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    if args.allow_unknown_keys:
        os.environ[ALLOW_UNKNOWN_KEYS_ENV] = "1"
    # Each worker prints this once its socket accepts connections (sluicegate.serving), not before.
    os.environ[ANNOUNCE_ENV] = f"Sluicegate listening on http://{args.host}:{args.port}"
    os.environ[WORKERS_ENV] = str(args.workers)  # read by each worker's app_factory (spawned, not forked)
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.sluicegate_settings.header_timeout)  # read by the protocol class
    os.environ[MAX_HEADER_BYTES_ENV] = str(settings.sluicegate_settings.max_header_bytes)
    os.environ[DELIVERY_ENV] = delivery  # read by each worker's app_factory
    os.environ["SLUICEGATE_LOG_LEVEL"] = args.log_level
    os.environ[MIGRATED_ENV] = settings.database_url
    grace = int(settings.sluicegate_settings.delivery.shutdown_grace)
    watch = settings.sluicegate_settings.delivery
    supervisor = [sys.executable, "-P", "-m", "sluicegate.delivery.supervisor", "--grace", str(grace),
                  "--spool", os.path.abspath(spool_base_for(settings)),
                  "--watchdog", f"{watch.watchdog_interval},{watch.watchdog_timeout},{watch.watchdog_misses}"]
    del settings
    if args.workers == 1:
        # This process has imported everything and loaded the plugins already: the one worker (and the first
        # delivery process) start from it rather than from new interpreters that would do it all again.
        return _serve_warm(args, delivery, grace, supervisor)
    # Replace this process (it loaded the config, the plugins and a validating gateway: ~100 MB at 10,000 teams
    # that would stay resident) with uvicorn: same pid, same signals. Each worker builds its app from the config
    # path in the environment (app_factory); with --workers N > 1 this process becomes a bare supervisor.
    argv = [sys.executable, "-P", "-m", "uvicorn", "sluicegate.cli:app_factory", "--factory", "--host", args.host,
            "--port", str(args.port), "--workers", str(args.workers), "--no-proxy-headers", "--no-server-header",
            "--no-date-header", "--log-level", args.log_level.lower(), "--no-access-log",
            "--loop", "sluicegate.serving:new_event_loop",  # uvloop, accepting every waiting connection at once
            "--http", "sluicegate.serving_http:GatewayHttpProtocol",  # httptools with a head deadline and size cap
            "--lifespan", "on", "--timeout-graceful-shutdown", str(grace)]
    if delivery == "process":
        # A small parent over the workers and the delivery process (sluicegate.delivery.supervisor); uvicorn's
        # command line follows its own after "--".
        argv = [*supervisor, "--", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached


def _run_uvicorn(args: argparse.Namespace, grace: int) -> int:
    """Serve with one worker in this process: what ``python -m uvicorn sluicegate.cli:app_factory --factory ...``
    does, with the same options."""
    import uvicorn

    from sluicegate.serving_http import GatewayHttpProtocol

    GatewayHttpProtocol.read_limits()  # imported before `_serve` set them in the environment
    try:
        uvicorn.run("sluicegate.cli:app_factory", factory=True, host=args.host, port=args.port, workers=1,
                    proxy_headers=False, server_header=False, date_header=False, log_level=args.log_level.lower(),
                    access_log=False, loop="sluicegate.serving:new_event_loop",
                    http="sluicegate.serving_http:GatewayHttpProtocol", lifespan="on",
                    timeout_graceful_shutdown=grace)
    except SystemExit as exc:  # uvicorn's own exit status (3: the app did not start)
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _fork(run: Any) -> int:
    """Start ``run()`` in a child process forked from this one; the child exits with what it returns (and gets
    SIGTERM when this process dies, as the supervisor's children do)."""
    from sluicegate.delivery.supervisor import _die_with_parent

    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above
            code = 0
        else:
            code = run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve_warm(args: argparse.Namespace, delivery: str, grace: int, supervisor: list[str]) -> int:
    """``--workers 1``: serve from this process (inline), or fork the worker and the first delivery process from it
    and replace it with the supervisor, which adopts both (its later delivery processes are new interpreters)."""
    import gc
    import threading

    gc.collect()  # the validating gateway: not inherited by the children
    if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
        # as the `python -P` a new worker interpreter ran with: nothing in the working directory shadows a module
        # the worker imports from here on
        del sys.path[0]
    if delivery != "process":
        return _run_uvicorn(args, grace)
    # The migrations' database thread has been told to stop and is on its way out: fork once it has, so that no lock
    # it might hold is copied into a child held.
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(2.0)

    def deliver() -> int:
        from sluicegate.delivery.__main__ import main as delivery_main

        return delivery_main()

    delivery_pid = _fork(deliver)
    serving_pid = _fork(lambda: _run_uvicorn(args, grace))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [*supervisor, "--adopt", f"{serving_pid},{delivery_pid}", "--"])
    return 0  # not reached


def _problems_past_misspellings(config: str, found: list[str]) -> list[str]:
    """The problems the gateway's own checks (providers' parameters, callbacks) find once the misspelt keys are set
    aside, so that one run reports everything; nothing when the config has other problems."""
    from sluicegate.config import ConfigError, load_settings
    from sluicegate.gateway import Gateway

    try:
        Gateway(load_settings(config, allow_unknown_keys=True))
    except ConfigError as exc:
        return [problem for problem in exc.problems if problem not in found]
    except Exception:  # reported on the next run, once the configuration errors are fixed
        return []
    return []


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (taken, not an address here), or None: checked before uvicorn starts,
    which would otherwise fail after the start-up banner with a traceback."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot bind {host}:{port}: {exc.strerror or exc}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (f"port {port} is already in use on {host} (choose another with --port, or PORT= for "
                            "make run)")
                return f"cannot bind {host}:{port}: {exc.strerror or exc}"
    return None


def _version(verbose: bool) -> int:
    import sluicegate

    print(f"sluicegate {sluicegate.__version__}")
    if verbose:
        from sluicegate.plugins import get_plugin_manager
        from sluicegate.providers.registry import ProviderRegistry
        from sluicegate.sinks.registry import SinkRegistry

        pm = get_plugin_manager()
        registry = SinkRegistry.from_plugin_manager(pm)
        for plugin in pm.describe(registry.by_plugin(), ProviderRegistry.from_plugin_manager(pm).by_plugin()):
            where = f"{plugin.distribution} {plugin.version}" if plugin.distribution else "built in"
            print(f"  {plugin.name}: {where}" + (f" (FAILED: {plugin.error})" if plugin.error else ""))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    import msgspec

    from sluicegate.plugins import get_plugin_manager
    from sluicegate.providers.registry import ProviderRegistry
    from sluicegate.sinks.registry import SinkRegistry

    from sluicegate.redaction.base import RedactorRegistry

    pm = get_plugin_manager()
    registry = SinkRegistry.from_plugin_manager(pm)
    described = pm.describe(registry.by_plugin(), ProviderRegistry.from_plugin_manager(pm).by_plugin(),
                            RedactorRegistry.from_plugin_manager(pm).by_plugin())
    if args.json:
        print(json.dumps([msgspec.to_builtins(p) for p in described], indent=2))
        return 0
    for plugin in described:
        where = f"{plugin.distribution} {plugin.version}" if plugin.distribution else "?"
        line = f"{plugin.name:40} {where:40} sinks: {', '.join(plugin.callback_names) or '-'}"
        if plugin.providers:
            line += f"  providers: {', '.join(plugin.providers)}"
        if plugin.redactors:
            line += f"  redactors: {', '.join(plugin.redactors)}"
        if plugin.error:
            line += f"  FAILED: {plugin.error}"
        print(line)
    return 0


def _rotate_salt_key(args: argparse.Namespace) -> int:
    """Re-encrypt every stored callback_vars: old key as at start-up, new key from ``SLUICEGATE_NEW_SALT_KEY``."""
    from sluicegate.config import ConfigError, load_settings
    from sluicegate.db.crypto import NEW_SALT_KEY_ENV, SALT_KEY_ENV, SaltKeyError, SecretBox
    from sluicegate.db.store import Store, display_url

    new_key = os.environ.get(NEW_SALT_KEY_ENV)  # never from argv, which every user can read in ps
    if not new_key:
        print(f"sluicegate rotate-salt-key: set {NEW_SALT_KEY_ENV} to the new salt key", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"sluicegate rotate-salt-key: {args.config}: configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2

    async def rotate() -> int:
        store = Store.for_settings(settings)
        try:
            await store.migrate()  # checks the old key (and encrypts rows still in plaintext)
            return await store.rotate_secrets(SecretBox(new_key, source=NEW_SALT_KEY_ENV))
        finally:
            await store.aclose()

    try:
        count = asyncio.run(rotate())
    except SaltKeyError as exc:
        print(f"sluicegate rotate-salt-key: {exc}", file=sys.stderr)
        return 2
    print(f"re-encrypted {count} callback_vars in {display_url(settings.database_url)}; start the gateway with "
          f"{SALT_KEY_ENV} set to the new key")
    return 0


def _new_sink(args: argparse.Namespace) -> int:
    from sluicegate.scaffold import ScaffoldError, write_sink_package

    try:
        path = write_sink_package(args.name, args.directory)
    except ScaffoldError as exc:
        print(f"sluicegate new-sink: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}; next: cd {path} && pip install -e '.[test]' && pytest && sluicegate plugins")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluicegate", description="An OpenAI-compatible LLM gateway with "
                                     "per-team and per-key logging sinks.")
    parser.add_argument("--version", action="store_true", help="print the version and exit (with -v: and every "
                        "installed plugin's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="with --version: list the plugins' versions")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the gateway", description="Run the gateway with a config.yaml.")
    serve.add_argument("--config", required=True, help="path to config.yaml (LiteLLM-compatible)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=4000, help="port to bind (default 4000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the database (default 1)")
    serve.add_argument("--delivery", choices=("process", "inline"), default=None,  # sluicegate.delivery.MODES
                       help="process (default): the workers append events to their logs and one delivery process "
                            "per host delivers them; inline: each worker delivers its own events (tests, the "
                            "smallest deployments)")
    serve.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    serve.add_argument("--allow-unknown-keys", action="store_true",
                       help="start even when config.yaml has keys that look like misspellings of ours (warn instead)")
    serve.set_defaults(func=_serve)
    plugins = sub.add_parser("plugins", help="list installed plugins, their sinks and providers",
                             description="List installed plugins: distribution, version, hooks, sinks, providers, "
                                         "errors.")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=_plugins)
    rotate = sub.add_parser("rotate-salt-key", help="re-encrypt stored callback secrets with a new salt key",
                            description="Re-encrypt every stored callback_vars, in one transaction, from the "
                            "current salt key (SLUICEGATE_SALT_KEY, else LITELLM_SALT_KEY, else the master key) to "
                            "the one in SLUICEGATE_NEW_SALT_KEY. Stop the gateways first; start them again with "
                            "SLUICEGATE_SALT_KEY set to the new key.")
    rotate.add_argument("--config", required=True, help="path to config.yaml (for the database and master key)")
    rotate.set_defaults(func=_rotate_salt_key)
    new_sink = sub.add_parser("new-sink", help="write a new sink package to start from",
                              description="Write a complete, installable sink package in the current folder.")
    new_sink.add_argument("name", help="the sink's callback_name, e.g. 'webhook'")
    new_sink.add_argument("--directory", default=".", help="where to write it (default: here)")
    new_sink.set_defaults(func=_new_sink)
    args = parser.parse_args(argv)
    if args.version:
        return _version(args.verbose)
    if args.command is None:
        parser.error("a command is required (serve, plugins, rotate-salt-key, new-sink)")
    _setup_logging(getattr(args, "log_level", "info"))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
