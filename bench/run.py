"""``make bench``: direct-to-mock vs the bare floor vs the gateway, with wrk, on loopback, as ratios.

Layout on a 2-core machine: the mock upstream, the telemetry receivers and wrk share core 0; the server under
test (one worker) has core 1 to itself (``taskset``). Every server is started fresh, warmed up, measured at each
concurrency for a fixed duration, then stopped. Results: a table printed to stdout, ``bench/results/latest.md``
and ``bench/results/latest.json``.

Settings (environment, or the matching ``--flag``): ``BENCH_DURATION`` seconds per run (4),
``BENCH_REPEAT`` runs per point, best kept (2), ``BENCH_CONCURRENCY`` ("1,16,64"), ``BENCH_TEAMS`` (1000), ``BENCH_ROWS`` (comma list of row ids, default all),
``BENCH_LOAD_CPU`` / ``BENCH_SERVER_CPU`` (0 / 1), ``BENCH_STREAM`` (1: also measure SSE streams at c=1),
``BENCH_DELIVERY`` (``key=value,...`` added to the gateway rows' ``sluicegate_settings.delivery``, for what-if runs),
``BENCH_CONNECTION_CLOSE`` (1: every request sends ``Connection: close``, i.e. clients that open a connection per
request).

The ``litellm`` row runs LiteLLM's proxy from ``bench/.litellm-venv`` (made by ``bench/litellm_setup.sh``, never a
project dependency) when that venv exists, and otherwise says how to install it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ("main",)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
MASTER_KEY = "sk-bench-master-key"
MODEL = "mock-gpt"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
EMBEDDINGS_BODY = {"model": MODEL, "input": "Say hello in one short sentence."}
"""The ``gw-embeddings`` row's body: one input, answered by the mock with one 1,536-float vector (base64, as the
OpenAI SDKs ask by default)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
LITELLM_VENV = HERE / ".litellm-venv"
LITELLM_SETUP = "bench/litellm_setup.sh"


# --- rows ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    id: str
    label: str
    kind: str  # direct | bare | gateway | litellm
    client: str = "aiohttp"
    sinks: str = "none"  # none | telemetry
    stream: bool = False
    workers: int = 1  # `sluicegate serve --workers N` / `uvicorn --workers N` (all on the server CPU)
    provider: str = "openai"  # the gateway rows' upstream wire format: a key of PROVIDER_MODELS
    deployments: int = 1  # deployments of the model group, each its own api_base path on the mock
    routing_strategy: str | None = None  # router_settings.routing_strategy (None: the default, simple-shuffle)
    delivery: str = "process"  # `sluicegate serve --delivery`: the delivery process (default) or inline
    budgets: str | None = None  # None | "local" | "redis": max_budget + soft_budget + budget_duration on every key and
    # team, and litellm_settings.max_budget (never reached); "redis" shares the counters through 127.0.0.1:6379
    limits: str | None = None  # rate limits on every key and team, counted "local"ly or in "redis" (None: no limits)
    endpoint: str = "chat/completions"  # the OpenAI endpoint wrk POSTs to (and its body)


ROWS = [
    Row("direct", "direct to the mock upstream (the limit)", "direct", stream=True),
    Row("floor", "floor: bare Litestar + aiohttp client, uvicorn", "bare", "aiohttp"),
    # the floor with `--workers 2` on the one core: what a second process costs any uvicorn app
    Row("floor-w2", "floor with 2 uvicorn workers on one core", "bare", "aiohttp", workers=2),
    Row("floor-httpx", "bare Litestar + plain httpx client, uvicorn", "bare", "httpx"),
    Row("gw", "gateway, no sinks, builtin client (the default)", "gateway", "builtin", stream=True),
    # translating providers, each against the mock speaking its wire format: compared with `gw` (OpenAI passthrough)
    Row("gw-anthropic", "gateway, no sinks, anthropic provider (Messages API, translated)", "gateway", "builtin",
        stream=True, provider="anthropic"),
    Row("gw-azure", "gateway, no sinks, azure provider (deployment URL, api-key)", "gateway", "builtin",
        stream=True, provider="azure"),
    Row("gw-gemini", "gateway, no sinks, gemini provider (generateContent, translated)", "gateway", "builtin",
        stream=True, provider="gemini"),
    Row("gw-bedrock", "gateway, no sinks, bedrock provider (Converse, SigV4-signed, event stream)", "gateway",
        "builtin", stream=True, provider="bedrock"),
    # the router: 8 deployments of the one model group (distinct api_base paths on the mock), compared with `gw`
    Row("gw-router8", "gateway, no sinks, 8 deployments per group (simple-shuffle)", "gateway", "builtin",
        deployments=8),
    Row("gw-router-latency", "gateway, no sinks, 8 deployments per group (latency-based-routing)", "gateway",
        "builtin", deployments=8, routing_strategy="latency-based-routing"),
    # rate limits (issue 25) on every key (rpm, tpm, parallel) and its team (rpm), never reached: what counting costs
    Row("gw-limits", "gateway, no sinks, rate limits on every key and team (in process)", "gateway", "builtin",
        stream=True, limits="local"),
    Row("gw-limits-redis", "gateway, no sinks, rate limits on every key and team (Redis 127.0.0.1:6379)",
        "gateway", "builtin", stream=True, limits="redis"),
    # another endpoint through the shared call pipeline: /v1/embeddings (text-embedding-3-small's 1,536 floats)
    Row("gw-embeddings", "gateway, no sinks, /v1/embeddings (1,536-float vectors, base64)", "gateway", "builtin",
        provider="openai-embeddings", endpoint="embeddings"),
    Row("gw-aiohttp", "gateway, no sinks, aiohttp client", "gateway", "aiohttp"),
    Row("gw-httpx-aiohttp", "gateway, no sinks, httpx over the httpx-aiohttp transport", "gateway",
        "httpx-aiohttp"),
    Row("gw-httpx", "gateway, no sinks, plain httpx", "gateway", "httpx"),
    Row("gw-sinks", "gateway, {teams} teams x (langfuse + otel), builtin client", "gateway", "builtin",
        "telemetry", stream=True),
    # today's single-process path (`--delivery inline`): every sink instance, batch and POST on the serving core
    Row("gw-sinks-inline", "gateway, {teams} teams x (langfuse + otel), --delivery inline", "gateway", "builtin",
        "telemetry", delivery="inline"),
    # `--workers 2` on the same one core: the CPU per request must not grow with the number of workers
    Row("gw-sinks-w2", "gateway, 2 workers on one core, {teams} teams x (langfuse + otel)", "gateway", "builtin",
        "telemetry", workers=2),
    # the same without sinks: what a second process on the one core costs by itself
    Row("gw-w2", "gateway, 2 workers on one core, no sinks, builtin client", "gateway", "builtin", workers=2),
    # every measured request is a cache hit: the warm-up sent each key's request once (one team per key)
    Row("gw-cache", "gateway, response cache hits (local)", "gateway", "builtin", "cache-local"),
    Row("gw-cache-redis", "gateway, response cache hits (Redis 127.0.0.1:6379)", "gateway",
        "builtin", "cache-redis"),
    # budgets on every key, team and the proxy (never reached): the check before and the record after each request,
    # compared with `gw` (which records spend too, with no budget to check)
    Row("gw-budgets", "gateway, no sinks, budgets on keys, teams and proxy (in process)", "gateway", "builtin",
        budgets="local"),
    Row("gw-budgets-redis", "gateway, no sinks, budgets on keys, teams and proxy (Redis 127.0.0.1:6379)",
        "gateway", "builtin", budgets="redis"),
    # LiteLLM's proxy, one worker, global `langfuse` success callback on the loopback receiver; master-key auth
    Row("litellm", "LiteLLM proxy, langfuse callback (master key auth)", "litellm", "litellm", "langfuse"),
]


@dataclass
class Point:
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_ms_per_req: float | None = None
    """The serving processes' CPU (the delivery process's is apart, below)."""
    delivery_cpu_ms_per_req: float | None = None
    """The delivery process's CPU per request (``--delivery process``; it runs on the load core)."""


@dataclass
class Result:
    id: str
    label: str
    points: list[Point] = field(default_factory=list)
    stream: Point | None = None
    threads: int | None = None
    rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    skipped: bool = False  # not run on purpose (LiteLLM not installed): not a failure
    delivery_rss_mb: float | None = None  # the delivery process's, apart from the serving processes' rss_mb
    posts: int | None = None  # receiver POSTs during the measured runs (sink rows)
    requests: int = 0  # requests during the measured runs


# --- processes -------------------------------------------------------------------------------------------
class Procs:
    """Every child we start, stopped by pid (its own session) on exit — never by name."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], *, cpu: int | None, env: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        log.close()
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.children:
            self.children.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.children):
            self.stop(proc)

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.logdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def receiver_counts(receivers: dict[str, str]) -> dict[str, int]:
    """Requests each ``bench.mock_upstream --mode receiver`` has answered so far (its ``GET /stats``), by name."""
    import urllib.request

    counts = {}
    for name, url in receivers.items():
        with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
            counts[name] = int(json.loads(resp.read())["requests"])
    return counts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_cpu_options(parser: argparse.ArgumentParser) -> None:
    """``--load-cpu`` (receivers and other children) and ``--server-cpu`` (this process), as ``bench.run`` pins."""
    parser.add_argument("--load-cpu", type=int, default=0, help="CPU of the receivers (default 0)")
    parser.add_argument("--server-cpu", type=int, default=1, help="CPU of this process (default 1)")


def pin_to_server_cpu(args: argparse.Namespace) -> bool:
    """Pin this process to ``args.server_cpu``; True on a machine with several CPUs (children then go to
    ``args.load_cpu``), False on one CPU (nothing pinned)."""
    multi = (os.cpu_count() or 1) > 1
    if multi:
        os.sched_setaffinity(0, {args.server_cpu})
    return multi


def start_receiver(procs: Procs, name: str, cpu: int | None) -> str:
    """A ``bench.mock_upstream --mode receiver`` child, answering: its base URL."""
    port = free_port()
    proc = procs.start(name, [sys.executable, "-m", "bench.mock_upstream", "--port", str(port), "--mode", "receiver"],
                       cpu=cpu)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/stats", proc, timeout=20)
    return url


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url}: no answer within {timeout:.0f}s")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a gateway with ``--workers N`` is a supervisor and N worker processes)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
    return found


def delivery_pids(pid: int) -> list[int]:
    """The delivery process(es) under ``pid``: ``python -m sluicegate.delivery``, or (``serve --workers 1`` forks
    the first one, which keeps serve's command line) the process holding the spool's ``delivery.lock`` open."""
    found = []
    for member in _tree(pid):
        try:
            argv = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sluicegate.delivery" in argv and b"-m" in argv and argv[argv.index(b"-m") + 1] == b"sluicegate.delivery":
            found.append(member)
        elif _holds(member, "/delivery.lock"):
            found.append(member)
    return found


def _holds(pid: int, suffix: str) -> bool:
    """Whether process ``pid`` has a file open whose path ends with ``suffix``."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd).endswith(suffix):
                return True
    return False


def cpu_seconds(pid: int, *, skip: tuple[int, ...] = (), only: tuple[int, ...] = ()) -> float:
    """utime + stime of every thread of ``pid`` and of its descendants (but ``skip``; or of ``only``)."""
    total = 0.0
    for member in only or _tree(pid):
        if member in skip:
            continue
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def threads_and_rss(pid: int, *, skip: tuple[int, ...] = (), only: tuple[int, ...] = ()) -> tuple[int, float]:
    """Threads and resident MB of ``pid`` and its descendants, summed (but ``skip``; or of ``only``)."""
    threads, rss = 0, 0.0
    for member in only or _tree(pid):
        if member in skip:
            continue
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("Threads:"):
                threads += int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss += int(line.split()[1]) / 1024
    return threads, rss


# --- wrk -------------------------------------------------------------------------------------------------
def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if not shutil.which("apt-get"):
        raise SystemExit("bench: wrk is missing and apt-get is not available; install wrk (Debian package 'wrk')")
    print("bench: installing wrk (apt-get install -y wrk)...", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        subprocess.run([*sudo, *argv], check=True, timeout=300, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: apt-get install wrk did not provide a wrk binary")
    return found


class Wrk:
    def __init__(self, binary: str, workdir: Path, load_cpu: int | None) -> None:
        self.binary = binary
        self.load_cpu = load_cpu
        self.body = workdir / "body.json"
        self.stream_body = workdir / "stream_body.json"
        self.embeddings_body = workdir / "embeddings_body.json"
        self.body.write_bytes(json.dumps(BODY).encode())
        self.stream_body.write_bytes(json.dumps(STREAM_BODY).encode())
        self.embeddings_body.write_bytes(json.dumps(EMBEDDINGS_BODY).encode())

    def run(self, url: str, keys: Path, concurrency: int, duration: float, *, stream: bool = False,
            endpoint: str = "chat/completions") -> dict[str, Any]:
        body = self.embeddings_body if endpoint == "embeddings" else self.stream_body if stream else self.body
        argv = [self.binary, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
                "-s", str(HERE / "chat.lua"), url, "--", f"/v1/{endpoint}", str(keys), str(body)]
        if os.environ.get("BENCH_CONNECTION_CLOSE") == "1":  # clients that open a connection per request
            argv.append("close")
        if self.load_cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(self.load_cpu), *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        for line in done.stdout.splitlines():
            if line.startswith("WRK_RESULT "):
                return json.loads(line[len("WRK_RESULT "):])
        raise RuntimeError(f"wrk gave no result (rc={done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")


def to_point(concurrency: int, raw: dict[str, Any], cpu: float | None) -> Point:
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    good = max(raw["requests"] - raw["status_errors"], 0)
    return Point(concurrency=concurrency, rps=good / seconds if seconds else 0.0, p50_ms=raw["p50_us"] / 1000,
                 p99_ms=raw["p99_us"] / 1000, requests=raw["requests"], errors=errors,
                 cpu_ms_per_req=(cpu * 1000 / raw["requests"]) if cpu is not None and raw["requests"] else None)


# --- gateway set-up ---------------------------------------------------------------------------------------
def telemetry_available() -> tuple[bool, str]:
    """Whether the installed gateway registers the ``langfuse`` and ``otel`` sinks."""
    done = subprocess.run([str(VENV_BIN / "sluicegate"), "plugins", "--json"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    try:
        names = {n for p in json.loads(done.stdout) for n in p.get("callback_names") or ()}
    except (json.JSONDecodeError, AttributeError):
        return False, f"`sluicegate plugins --json` failed: {done.stderr.strip()[-300:]}"
    missing = {"langfuse", "otel"} - names
    return (not missing), (f"missing sinks: {', '.join(sorted(missing))}" if missing else "")


def team_ids(count: int) -> list[str]:
    return [f"bench-team-{i:05d}" for i in range(count)]


PROVIDER_MODELS: dict[str, list[str]] = {
    # provider -> its `litellm_params` lines ({upstream} is the mock's base URL); each is priced from the table
    "openai": [f"model: openai/{MODEL}", "api_base: {upstream}/v1", "base_model: gpt-4o-mini"],
    "openai-embeddings": [f"model: openai/{MODEL}", "api_base: {upstream}/v1", "base_model: text-embedding-3-small"],
    "anthropic": ["model: anthropic/claude-sonnet-4-5", "api_base: {upstream}"],
    "azure": [f"model: azure/{MODEL}", "api_base: {upstream}", "api_version: '2024-10-21'",
              "base_model: gpt-4o-mini"],
    "gemini": ["model: gemini/gemini-2.5-flash", "api_base: {upstream}"],
    # static keys, no api_key: every request is signed with SigV4 by botocore (the mock does not check it)
    "bedrock": ["model: 'bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0'", "api_base: {upstream}",
                "aws_access_key_id: AKIABENCHMOCK0000000", "aws_secret_access_key: bench-mock-secret-key",
                "aws_region_name: us-east-1"],
}
"""The model every gateway row serves as ``mock-gpt``, by upstream wire format (bench.mock_upstream's WIRES)."""


def _model_and_key(upstream: str, master_key: str, provider: str = "openai", deployments: int = 1) -> list[str]:
    """config.yaml lines every server row shares: the mock upstream as the one model (with ``deployments`` > 1,
    that many deployments of it, each at its own path on the mock: ``{upstream}/d<i>``), and the master key."""
    lines = ["model_list:"]
    for index in range(deployments):
        base = upstream if deployments == 1 else f"{upstream}/d{index}"
        lines += [
            f"  - model_name: {MODEL}",
            *([f"    model_info: {{id: bench-d{index}}}"] if deployments > 1 else []),
            "    litellm_params:",
            *(f"      {line.format(upstream=base)}" for line in PROVIDER_MODELS[provider]),
            # bedrock takes an api_key as a Bedrock API key (Bearer, no SigV4): its row signs with AWS keys
            *([] if provider == "bedrock" else ["      api_key: sk-upstream-bench"]),
            "      timeout: 30",
        ]
    return [*lines, "general_settings:", f"  master_key: {master_key}"]


def gateway_config(workdir: Path, upstream: str, sinks: str, teams: list[str], receivers: dict[str, str],
                   sink_mode: str, provider: str = "openai", deployments: int = 1,
                   routing_strategy: str | None = None, budgets: str | None = None,
                   limits: str | None = None) -> Path:
    router = [f"  routing_strategy: {routing_strategy}"] if routing_strategy else []
    if budgets == "redis" or limits == "redis":
        router += ["  redis_host: 127.0.0.1", "  redis_port: 6379"]
    lines = [
        *_model_and_key(upstream, MASTER_KEY, provider, deployments),
        f"  database_url: sqlite+aiosqlite:///{workdir}/gateway.db",
        *(["router_settings:", *router] if router else []),
        "litellm_settings:",
        "  callbacks: []",
        *(["  max_budget: 1000000000", "  budget_duration: 30d"] if budgets else []),
    ]
    if sinks.startswith("cache-"):  # response cache rows (sluicegate.cache)
        lines += ["  cache: true", "  cache_params:", f"    type: {sinks.removeprefix('cache-')}", "    ttl: 300",
                  f"    namespace: sgbench{os.getpid()}"]
    if sinks == "telemetry":
        lines.append("  default_team_settings:")
        for team in teams:
            lines.append(f"    - team_id: {team}")
            if sink_mode == "telemetry":
                lines += [
                    "      success_callback: [langfuse, otel]",
                    "      failure_callback: [langfuse, otel]",
                    "      callback_vars:",
                    f"        langfuse_public_key: pk-lf-{team}",
                    f"        langfuse_secret_key: sk-lf-{team}",
                    f"        langfuse_host: {receivers['langfuse']}",
                    f"        otel_endpoint: {receivers['otel']}/v1/traces",
                    f"        otel_headers: x-bench-team={team}",
                    f"        otel_service_name: sluicegate-{team}",
                ]
            elif sink_mode != "off":  # (off: the same teams logging nowhere, bench.memory's comparison)
                # fallback: the built-in file sink, one file per team
                lines += [
                    "      success_callback: [file]",
                    "      failure_callback: [file]",
                    "      callback_vars:",
                    f"        path: {workdir}/sinks/{team}.jsonl",
                ]
    delivery = [item.split("=", 1) for item in os.environ.get("BENCH_DELIVERY", "").split(",") if "=" in item]
    if delivery:  # what-if runs: BENCH_DELIVERY="spool=false,max_batch_interval=10"
        lines += ["sluicegate_settings:", "  delivery:"] + [f"    {k.strip()}: {v.strip()}" for k, v in delivery]
    path = workdir / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


LIMITS = {"rpm_limit": 10**9, "tpm_limit": 10**12, "max_parallel_requests": 10**6}
"""The rate limits of the ``gw-limits`` rows: on every key, and ``rpm_limit`` on its team; never reached."""


async def make_keys(base: str, teams: list[str], keys_file: Path, budgets: bool = False,
                    limits: bool = False) -> None:
    """One virtual key per team through ``/key/generate`` (deterministic keys, so every row uses the same); with
    ``budgets``, every team (``/team/new``) and key gets a budget that is never reached; with ``limits``, each key
    has :data:`LIMITS` and its team an ``rpm_limit``."""
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    limit = asyncio.Semaphore(8)
    keys = [f"sk-bench-{team}-k0" for team in teams]
    budget = {"max_budget": 1e9, "soft_budget": 1e9, "budget_duration": "30d"} if budgets else {}

    async def one(session: aiohttp.ClientSession, team: str, key: str) -> None:
        if budgets:
            async with limit, session.post(f"{base}/team/new", headers=headers,
                                           json={"team_id": team, **budget}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"/team/new for {team}: HTTP {resp.status}: {(await resp.text())[:300]}")
        body = {"team_id": team, "key_alias": f"{team}-bench", "key": key, **budget, **(LIMITS if limits else {})}
        async with limit, session.post(f"{base}/key/generate", headers=headers, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/key/generate for {team}: HTTP {resp.status}: {(await resp.text())[:300]}")
        if limits:
            async with limit, session.post(f"{base}/team/update", headers=headers,
                                           json={"team_id": team, "rpm_limit": LIMITS["rpm_limit"]}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"/team/update for {team}: HTTP {resp.status}: {(await resp.text())[:300]}")

    timeout = aiohttp.ClientTimeout(total=max(60, len(teams) * 0.2))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, t, k) for t, k in zip(teams, keys, strict=True)))
    keys_file.write_text("\n".join(keys) + "\n")


async def warm_keys(base: str, keys: list[str]) -> int:
    """One chat request per key (loads every key into the cache, creates every sink instance); returns failures."""
    limit = asyncio.Semaphore(16)
    failures = 0

    async def one(session: aiohttp.ClientSession, key: str) -> None:
        nonlocal failures
        async with limit, session.post(f"{base}/v1/chat/completions", json=BODY,
                                       headers={"Authorization": f"Bearer {key}"}) as resp:
            await resp.read()
            failures += resp.status != 200

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=max(60, len(keys) * 0.1))) as session:
        await asyncio.gather(*(one(session, k) for k in keys))
    return failures


# --- LiteLLM set-up (bench/.litellm-venv) ------------------------------------------------------------------
def litellm_installed() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


def litellm_version() -> str:
    done = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                           "from importlib.metadata import version as v; print(v('litellm'), v('langfuse'))"],
                          capture_output=True, text=True, timeout=60)
    parts = done.stdout.split()
    return f"litellm {parts[0]}, langfuse SDK {parts[1]}" if len(parts) == 2 else "litellm (version unknown)"


def litellm_config(workdir: Path, upstream: str, master_key: str) -> Path:
    """The same model and mock upstream as the gateway rows; the global ``langfuse`` success callback."""
    lines = [
        *_model_and_key(upstream, master_key),
        "litellm_settings:",
        "  success_callback: [langfuse]",
    ]
    path = workdir / "litellm.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def litellm_env(langfuse_url: str, workdir: Path) -> dict[str, str]:
    return {
        # offline: no cost-map download, no telemetry; it refuses the well-known sk-1234, so the key is generated
        "LITELLM_OFFLINE_MODE": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "WARNING",  # uvicorn at warning: no access log, like the gateway's --log-level warning
        "LANGFUSE_PUBLIC_KEY": "pk-lf-bench-litellm",
        "LANGFUSE_SECRET_KEY": "sk-lf-bench-litellm",
        "LANGFUSE_HOST": langfuse_url,
        "HOME": str(workdir),  # anything it caches goes to the row's temp dir
    }


# --- the run ---------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="sluicegate-bench-"))
        self.procs = Procs(self.tmp)
        ncpu = os.cpu_count() or 1
        self.load_cpu = args.load_cpu if ncpu > 1 else None
        self.server_cpu = args.server_cpu if ncpu > 1 else None
        self.wrk = Wrk(ensure_wrk(), self.tmp, self.load_cpu)
        self.teams = team_ids(args.teams)
        self.notes: list[str] = []
        self.results: list[Result] = []
        self.receiver_urls: dict[str, str] = {}
        self.receiver_procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_mock(self, name: str, mode: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        proc = self.procs.start(name, [sys.executable, "-m", "bench.mock_upstream", "--port", str(port),
                                       "--mode", mode], cpu=self.load_cpu)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + ("/stats" if mode == "receiver" else "/v1/models"), proc, timeout=20)
        return url, proc

    def receiver_counts(self) -> dict[str, int]:
        return receiver_counts(self.receiver_urls)

    def best_of(self, url: str, keys: Path, concurrency: int, duration: float, pid: int | None, *,
                stream: bool = False, endpoint: str = "chat/completions") -> Point:
        """The best of ``--repeat`` runs: on a shared machine noise only ever subtracts throughput."""
        best: Point | None = None
        delivery = tuple(delivery_pids(pid)) if pid else ()
        for _ in range(self.args.repeat):
            before = cpu_seconds(pid, skip=delivery) if pid else None
            before_delivery = cpu_seconds(pid, only=delivery) if delivery else 0.0
            raw = self.wrk.run(url, keys, concurrency, duration, stream=stream, endpoint=endpoint)
            cpu = cpu_seconds(pid, skip=delivery) - before if pid and before is not None else None
            point = to_point(concurrency, raw, cpu)
            if delivery and point.requests:
                point.delivery_cpu_ms_per_req = ((cpu_seconds(pid, only=delivery) - before_delivery) * 1000
                                                 / point.requests)
            if best is None or point.rps > best.rps:
                best = point
        assert best is not None
        return best

    def measure(self, row: Row, url: str, keys: Path, pid: int | None) -> Result:
        result = Result(row.id, row.label.format(teams=len(self.teams)))
        duration = self.args.duration
        self.wrk.run(url, keys, 16, self.args.warmup, endpoint=row.endpoint)  # warm-up, discarded
        for concurrency in self.args.concurrency:
            point = self.best_of(url, keys, concurrency, duration, pid, endpoint=row.endpoint)
            result.points.append(point)
            print(f"  {row.id:12} c={concurrency:<3} {point.rps:9,.0f} req/s  p50 {point.p50_ms:7.2f} ms  "
                  f"p99 {point.p99_ms:7.2f} ms  errors {point.errors}"
                  + (f"  cpu {point.cpu_ms_per_req:.3f} ms/req" if point.cpu_ms_per_req is not None else "")
                  + (f" (+ delivery process {point.delivery_cpu_ms_per_req:.3f})"
                     if point.delivery_cpu_ms_per_req is not None else ""), flush=True)
        if row.stream and self.args.stream:
            result.stream = self.best_of(url, keys, 1, max(2.0, duration / 2), pid, stream=True)
            print(f"  {row.id:12} stream c=1 {result.stream.rps:9,.0f} req/s  p50 {result.stream.p50_ms:7.2f} ms  "
                  f"p99 {result.stream.p99_ms:7.2f} ms  errors {result.stream.errors}", flush=True)
        if pid:
            delivery = tuple(delivery_pids(pid))
            result.threads, result.rss_mb = threads_and_rss(pid, skip=delivery)
            if delivery:
                result.delivery_rss_mb = threads_and_rss(pid, only=delivery)[1]
        return result

    def run_row(self, row: Row, upstream: str) -> Result:
        print(f"[{row.id}] {row.label.format(teams=len(self.teams))}", flush=True)
        keys = self.tmp / "keys.txt"
        if row.kind == "direct":
            keys.write_text("\n".join(f"sk-bench-{t}-k0" for t in self.teams) + "\n")
            return self.measure(row, upstream, keys, None)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if row.kind == "bare":
            keys.write_text("\n".join(f"sk-bench-{t}-k0" for t in self.teams) + "\n")
            proc = self.procs.start(row.id, [
                sys.executable, "-m", "uvicorn", "bench.bare_app:create_app", "--factory", "--host", "127.0.0.1",
                "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--log-level", "warning", "--workers", str(row.workers)], cpu=self.server_cpu,
                env={"BENCH_UPSTREAM": upstream, "BENCH_BARE_CLIENT": row.client})
            try:
                wait_http(base + "/", proc)
                return self.measure(row, base, keys, proc.pid)
            finally:
                self.procs.stop(proc)
        if row.kind == "litellm":
            return self.run_litellm(row, upstream, port, base, keys)
        # the gateway
        workdir = self.tmp / row.id
        workdir.mkdir()
        (workdir / "sinks").mkdir()
        config = gateway_config(workdir, upstream, row.sinks, self.teams, self.receiver_urls, self.sink_mode,
                                row.provider, row.deployments, row.routing_strategy, row.budgets, row.limits)
        proc = self.procs.start(row.id, [str(VENV_BIN / "sluicegate"), "serve", "--config", str(config),
                                         "--port", str(port), "--log-level", "warning",
                                         "--workers", str(row.workers), "--delivery", row.delivery],
                                cpu=self.server_cpu, env={"SLUICEGATE_HTTP_CLIENT": row.client})
        try:
            wait_http(base + "/health/liveliness", proc, timeout=120)
            self.pin_delivery(proc.pid)
            started = time.monotonic()
            asyncio.run(make_keys(base, self.teams, keys, budgets=row.budgets is not None,
                                  limits=row.limits is not None))
            # Each worker fills its own key cache and sink instances: with N workers sharing the port, send every
            # key's request 3N times so every worker has seen (nearly) every key before the measurement.
            rounds = 1 if row.workers == 1 else 3 * row.workers
            failures = sum(asyncio.run(warm_keys(base, [f"sk-bench-{t}-k0" for t in self.teams]))
                           for _ in range(rounds))
            print(f"  {len(self.teams)} keys generated and warmed in {time.monotonic() - started:.1f}s"
                  + (f" ({failures} warm-up failures)" if failures else ""), flush=True)
            before = self.receiver_counts() if row.sinks == "telemetry" and self.sink_mode == "telemetry" else {}
            result = self.measure(row, base, keys, proc.pid)
            if failures:
                result.notes.append(f"{failures} of {len(self.teams)} warm-up requests failed")
            if before:
                time.sleep(1.5)  # one batch interval, so the last events reach the receivers
                after = self.receiver_counts()
                posts = {k: after[k] - before[k] for k in after}
                result.posts = sum(posts.values())
                result.requests = sum(p.requests for p in result.points)
                result.notes.append("receiver POSTs during the row: " + ", ".join(f"{k} {v:,}" for k, v in
                                                                                   posts.items()))
            if row.sinks == "telemetry" and self.sink_mode == "file":
                written = sum(1 for p in (workdir / "sinks").iterdir())
                result.notes.append(f"file sink fallback: {written} team files written")
            if proc.poll() is not None:
                result.notes.append(f"gateway exited with {proc.returncode}: {self.procs.tail(row.id)}")
            return result
        finally:
            self.procs.stop(proc, timeout=30)

    def pin_delivery(self, pid: int) -> None:
        """The delivery process on the load core (the issue's set-up: serving workers alone on the server core)."""
        if self.server_cpu is None or self.load_cpu is None:
            return
        for member in delivery_pids(pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(member, {self.load_cpu})

    def run_litellm(self, row: Row, upstream: str, port: int, base: str, keys: Path) -> Result:
        """One LiteLLM proxy worker on the server core, its global langfuse callback on the loopback receiver.

        No PostgreSQL/prisma here, so ``/key/generate`` is unavailable: every request carries the master key,
        LiteLLM's cheapest auth path (the gateway rows use one virtual key per team)."""
        workdir = self.tmp / row.id
        workdir.mkdir()
        master_key = "sk-bench-" + secrets.token_urlsafe(24)
        keys.write_text(master_key + "\n")
        config = litellm_config(workdir, upstream, master_key)
        proc = self.procs.start(row.id, [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config),
                                         "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                                cpu=self.server_cpu, env=litellm_env(self.receiver_urls["langfuse"], workdir))
        try:
            wait_http(base + "/health/liveliness", proc, timeout=180)
            started = time.monotonic()
            failures = asyncio.run(warm_keys(base, [master_key] * 16))
            print(f"  LiteLLM up; 16 warm-up requests in {time.monotonic() - started:.1f}s"
                  + (f" ({failures} failed)" if failures else "") + "; authenticating with the master key",
                  flush=True)
            if failures == 16:
                raise RuntimeError(f"every warm-up request failed: {self.procs.tail(row.id)}")
            before = self.receiver_counts().get("langfuse", 0)
            result = self.measure(row, base, keys, proc.pid)
            result.notes.append(f"{litellm_version()}, one uvicorn worker (uvloop; h11, as its extras install "
                                "no httptools); authenticates with the master key "
                                "(no PostgreSQL/prisma here, so no /key/generate): LiteLLM's cheapest auth path, "
                                "while the gateway rows use one virtual key per team")
            time.sleep(6)  # the langfuse exporter's flush interval, so the row's last spans reach the receiver
            posts = self.receiver_counts().get("langfuse", 0) - before
            result.notes.append(f"langfuse receiver POSTs during the row: {posts:,}")
            if failures:
                result.notes.append(f"{failures} of 16 warm-up requests failed")
            if proc.poll() is not None:
                result.notes.append(f"litellm exited with {proc.returncode}: {self.procs.tail(row.id)}")
            return result
        finally:
            self.procs.stop(proc, timeout=30)

    def run(self) -> list[Result]:
        upstream, _ = self.start_mock("mock-upstream", "upstream")
        rows = [r for r in ROWS if not self.args.rows or r.id in self.args.rows]
        self.sink_mode = "none"
        if any(r.sinks == "telemetry" for r in rows):
            ok, why = telemetry_available()
            self.sink_mode = "telemetry" if ok else "file"
            if ok:
                for name in ("langfuse", "otel"):
                    self.receiver_urls[name], self.receiver_procs[name] = self.start_mock(f"receiver-{name}",
                                                                                          "receiver")
            else:
                self.notes.append(f"langfuse/otel sinks not importable ({why}): the sinks row uses the built-in "
                                  "`file` sink, one file per team, instead")
                for row in rows:
                    if row.sinks == "telemetry":
                        row.label = "gateway, {teams} teams x file sink (FALLBACK), httpx-aiohttp"
        if any(r.kind == "litellm" for r in rows) and litellm_installed() and "langfuse" not in self.receiver_urls:
            self.receiver_urls["langfuse"], self.receiver_procs["langfuse"] = self.start_mock("receiver-langfuse",
                                                                                          "receiver")
        for row in rows:
            if row.kind == "litellm" and not litellm_installed():
                print(f"[{row.id}] not installed: run {LITELLM_SETUP}", flush=True)
                self.results.append(Result(row.id, row.label, notes=[f"not installed: run {LITELLM_SETUP}"],
                                           skipped=True))
                continue
            try:
                self.results.append(self.run_row(row, upstream))
            except Exception as exc:  # one broken row must not lose the others
                print(f"  {row.id}: FAILED: {exc}\n{self.procs.tail(row.id)}", flush=True)
                self.results.append(Result(row.id, row.label.format(teams=len(self.teams)),
                                           notes=[f"failed: {exc}"]))
        return self.results

    def cleanup(self) -> None:
        self.procs.stop_all()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------------------
def _point(result: Result | None, concurrency: int) -> Point | None:
    if result is None:
        return None
    return next((p for p in result.points if p.concurrency == concurrency), None)


def _pct(value: float) -> str:
    return f"{value * 100:.0f} %"


def render(results: list[Result], args: argparse.Namespace, notes: list[str], elapsed: float) -> str:
    by_id = {r.id: r for r in results}
    direct, floor = by_id.get("direct"), by_id.get("floor")
    cs = args.concurrency
    out = [f"# Sluicegate bench — {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
           f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; load (wrk -t1, mock, "
           f"receivers) on CPU {args.load_cpu}, server under test (1 worker) on CPU {args.server_cpu}; "
           f"{args.duration:g} s per run, best of {args.repeat} runs per point; {args.teams} teams/keys, requests spread over all keys; "
           f"run took {elapsed:.0f} s.", ""]
    for note in notes:
        out += [f"**Note:** {note}", ""]
    out += ["## Throughput and latency", "",
            "| row | " + " | ".join(f"c={c} RPS | p50 ms | p99 ms" for c in cs) + " | CPU ms/req (c=" + str(cs[-1])
            + ") | threads | RSS MB |",
            "|---|" + "---:|---:|---:|" * len(cs) + "---:|---:|---:|"]
    for r in results:
        cells = []
        for c in cs:
            p = _point(r, c)
            cells += ([f"{p.rps:,.0f}" + (f" ({p.errors} err)" if p.errors else ""), f"{p.p50_ms:.2f}",
                       f"{p.p99_ms:.2f}"] if p else ["—"] * 3)
        last = _point(r, cs[-1])
        cpu = f"{last.cpu_ms_per_req:.3f}" if last and last.cpu_ms_per_req is not None else "—"
        out.append(f"| {r.label} | " + " | ".join(cells) + f" | {cpu} | {r.threads or '—'} | "
                   + (f"{r.rss_mb:.0f}" if r.rss_mb else "—") + " |")
    if direct and direct.points:
        out += ["", "## As ratios of direct (RPS share; p50/p99 as multiples, added p50 in ms)", "",
                "| row | " + " | ".join(f"c={c} RPS | p50 × | p99 ×" for c in cs) + " | added p50 c="
                + str(cs[0]) + " |", "|---|" + "---:|---:|---:|" * len(cs) + "---:|"]
        for r in results:
            if r is direct or not r.points:
                continue
            cells = []
            for c in cs:
                p, d = _point(r, c), _point(direct, c)
                cells += ([_pct(p.rps / d.rps), f"{p.p50_ms / d.p50_ms:.1f}", f"{p.p99_ms / d.p99_ms:.1f}"]
                          if p and d and d.rps and d.p50_ms and d.p99_ms else ["—"] * 3)
            p, d = _point(r, cs[0]), _point(direct, cs[0])
            added = f"+{p.p50_ms - d.p50_ms:.2f} ms" if p and d else "—"
            out.append(f"| {r.label} | " + " | ".join(cells) + f" | {added} |")
    if floor and floor.points:
        out += ["", "## As ratios of the floor (bare Litestar + aiohttp, same server, same run)", "",
                "| row | " + " | ".join(f"c={c} RPS" for c in cs) + f" | p99 c={cs[-1]} × floor |",
                "|---|" + "---:|" * len(cs) + "---:|"]
        for r in results:
            if r is floor or r.id == "direct" or not r.points:
                continue
            cells = [(_pct(p.rps / f.rps) if (p := _point(r, c)) and (f := _point(floor, c)) and f.rps else "—")
                     for c in cs]
            p, f = _point(r, cs[-1]), _point(floor, cs[-1])
            cells.append(f"{p.p99_ms / f.p99_ms:.2f}" if p and f and f.p99_ms else "—")
            out.append(f"| {r.label} | " + " | ".join(cells) + " |")
    out += litellm_ratios(by_id, cs)
    streams = [r for r in results if r.stream]
    if streams:
        out += ["", "## SSE streaming at c=1 (the mock sends the whole stream at once, so latency ≈ time to "
                "first token)", "", "| row | RPS | p50 ms | p99 ms | added p50 vs direct |", "|---|---:|---:|---:|---:|"]
        base = direct.stream if direct else None
        for r in streams:
            s = r.stream
            added = f"+{s.p50_ms - base.p50_ms:.2f} ms" if base and r is not direct else "—"
            out.append(f"| {r.label} | {s.rps:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {added} |")
    out += providers_vs_passthrough(by_id, cs)
    out += router_vs_one_deployment(by_id, cs)
    out += limits_vs_none(by_id, cs)
    out += ["", "## Issue 8 targets (this run)", ""]
    out += targets(by_id, cs)
    extra = [f"- {r.id}: {n}" for r in results for n in r.notes]
    if extra:
        out += ["", "## Notes", "", *extra]
    return "\n".join(out) + "\n"


def litellm_ratios(by_id: dict[str, Result], cs: list[int]) -> list[str]:
    """Sluicegate vs LiteLLM, same run: the gateway with sinks against LiteLLM with its langfuse callback."""
    lite = by_id.get("litellm")
    if not lite or not lite.points:
        return []
    out = ["", "## Sluicegate vs LiteLLM (same run; LiteLLM authenticates with the master key)", "",
           "| row vs `litellm` | " + " | ".join(f"c={c} RPS × | p50 ÷ | p99 ÷" for c in cs)
           + f" | CPU/req ÷ (c={cs[-1]}) |", "|---|" + "---:|---:|---:|" * len(cs) + "---:|"]
    for rid, what in (("gw-sinks", "gateway with sinks vs LiteLLM with its langfuse callback"),
                      ("gw", "gateway without sinks vs LiteLLM with its langfuse callback")):
        r = by_id.get(rid)
        if not r or not r.points:
            continue
        cells = []
        for c in cs:
            p, q = _point(r, c), _point(lite, c)
            cells += ([f"{p.rps / q.rps:.1f}×", f"{q.p50_ms / p.p50_ms:.1f}×", f"{q.p99_ms / p.p99_ms:.1f}×"]
                      if p and q and q.rps and p.p50_ms and p.p99_ms else ["—"] * 3)
        p, q = _point(r, cs[-1]), _point(lite, cs[-1])
        cells.append(f"{q.cpu_ms_per_req / p.cpu_ms_per_req:.0f}×" if p and q and p.cpu_ms_per_req
                     and q.cpu_ms_per_req else "—")
        out.append(f"| {what} | " + " | ".join(cells) + " |")
    out += ["", "RPS × = the gateway's throughput over LiteLLM's; p50/p99/CPU ÷ = LiteLLM's value over the "
            "gateway's (above 1: the gateway is faster / cheaper)."]
    return out


def providers_vs_passthrough(by_id: dict[str, Result], cs: list[int]) -> list[str]:
    """Issue 22: a translating provider adds at most 30 µs of CPU per request over the OpenAI passthrough (`gw`)."""
    base = by_id.get("gw")
    rows = [r for r in by_id.values() if r.id.startswith("gw-") and r.points
            and next((row.provider for row in ROWS if row.id == r.id), "openai") not in ("openai",
                                                                                        "openai-embeddings")]
    if not (base and base.points and rows):
        return []
    out = ["", "## Providers vs the OpenAI passthrough (`gw`): CPU per request, throughput (issue 22: translation "
           "adds ≤ 30 µs)", "", "| row | " + " | ".join(f"c={c} CPU µs/req (+µs vs gw) | RPS % of gw" for c in cs)
           + " |", "|---|" + "---:|---:|" * len(cs)]
    for r in [base, *rows]:
        cells = []
        for c in cs:
            p, q = _point(r, c), _point(base, c)
            if not (p and q and p.cpu_ms_per_req and q.cpu_ms_per_req and q.rps):
                cells += ["—", "—"]
                continue
            delta = (p.cpu_ms_per_req - q.cpu_ms_per_req) * 1000
            cells += [f"{p.cpu_ms_per_req * 1000:.0f}" + ("" if r is base else f" ({delta:+.0f})"),
                      _pct(p.rps / q.rps)]
        out.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return out


def router_vs_one_deployment(by_id: dict[str, Result], cs: list[int]) -> list[str]:
    """Issue 23: routing over 8 deployments adds at most 5 µs of CPU per request over one deployment (`gw`)."""
    base = by_id.get("gw")
    rows = [r for r in by_id.values() if r.points and next((row.deployments for row in ROWS if row.id == r.id), 1) > 1]
    if not (base and base.points and rows):
        return []
    out = ["", "## Router vs one deployment (`gw`): CPU per request, throughput (issue 23: routing adds ≤ 5 µs; "
           "whole-process CPU, so a difference of a few µs is within the run-to-run noise)", "",
           "| row | " + " | ".join(f"c={c} CPU µs/req (+µs vs gw) | RPS % of gw" for c in cs) + " |",
           "|---|" + "---:|---:|" * len(cs)]
    for r in [base, *rows]:
        cells = []
        for c in cs:
            p, q = _point(r, c), _point(base, c)
            if not (p and q and p.cpu_ms_per_req and q.cpu_ms_per_req and q.rps):
                cells += ["—", "—"]
                continue
            delta = (p.cpu_ms_per_req - q.cpu_ms_per_req) * 1000
            cells += [f"{p.cpu_ms_per_req * 1000:.1f}" + ("" if r is base else f" ({delta:+.1f})"),
                      _pct(p.rps / q.rps)]
        out.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return out


def limits_vs_none(by_id: dict[str, Result], cs: list[int]) -> list[str]:
    """Issue 25: rate limits on every key and team add at most 40 µs of CPU per request over none (`gw`)."""
    base = by_id.get("gw")
    rows = [r for r in by_id.values() if r.points and next((row.limits for row in ROWS if row.id == r.id), None)]
    if not (base and base.points and rows):
        return []
    out = ["", "## Rate limits vs none (`gw`): CPU per request, throughput (issue 25: limits add ≤ 40 µs)", "",
           "| row | " + " | ".join(f"c={c} CPU µs/req (+µs vs gw) | RPS % of gw" for c in cs) + " | SSE CPU µs/req |",
           "|---|" + "---:|---:|" * len(cs) + "---:|"]
    for r in [base, *rows]:
        cells = []
        for c in cs:
            p, q = _point(r, c), _point(base, c)
            if not (p and q and p.cpu_ms_per_req and q.cpu_ms_per_req and q.rps):
                cells += ["—", "—"]
                continue
            delta = (p.cpu_ms_per_req - q.cpu_ms_per_req) * 1000
            cells += [f"{p.cpu_ms_per_req * 1000:.0f}" + ("" if r is base else f" ({delta:+.0f})"),
                      _pct(p.rps / q.rps)]
        sse = r.stream.cpu_ms_per_req if r.stream and r.stream.cpu_ms_per_req else None
        cells.append(f"{sse * 1000:.0f}" if sse else "—")
        out.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return out


def targets(by_id: dict[str, Result], cs: list[int]) -> list[str]:
    lines = []
    direct, floor, on, off = (by_id.get(k) for k in ("direct", "floor", "gw-sinks", "gw"))

    def check(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if on and floor:
        for c in (16, 64):
            p, f = _point(on, c), _point(floor, c)
            if p and f and f.rps:
                lines.append(f"- throughput with sinks at c={c}: {_pct(p.rps / f.rps)} of the floor "
                             f"(target ≥ 75 %): {check(p.rps / f.rps >= 0.75)}")
        p, f = _point(on, 64), _point(floor, 64)
        if p and f and f.p99_ms:
            lines.append(f"- p99 at c=64 with sinks: {p.p99_ms / f.p99_ms:.2f}× the floor's (target ≤ 1.5×): "
                         f"{check(p.p99_ms / f.p99_ms <= 1.5)}")
    if on and direct:
        p, d = _point(on, 1), _point(direct, 1)
        if p and d:
            added = p.p50_ms - d.p50_ms
            lines.append(f"- added p50 at c=1 with sinks: {added:.2f} ms (target ≤ 0.7 ms): {check(added <= 0.7)}")
        if on.stream and direct.stream:
            added = on.stream.p50_ms - direct.stream.p50_ms
            lines.append(f"- stream latency (≈ TTFT) at c=1 with sinks: +{added:.2f} ms over direct "
                         f"(target ≤ +1 ms): {check(added <= 1.0)}")
    if on and off:
        for c in cs:
            p, q = _point(on, c), _point(off, c)
            if p and q and q.rps:
                lines.append(f"- logging on vs off at c={c}: {_pct(p.rps / q.rps)} (target ≥ 90 %): "
                             f"{check(p.rps / q.rps >= 0.9)}")
    # issue 28: delivery off the serving core (`gw-sinks` runs the delivery process; `gw-sinks-inline` today's path)
    inline = by_id.get("gw-sinks-inline")
    if on and off:
        for c in cs:
            p, q = _point(on, c), _point(off, c)
            if p and q and p.cpu_ms_per_req and q.cpu_ms_per_req:
                ratio = p.cpu_ms_per_req / q.cpu_ms_per_req
                lines.append(f"- serving worker CPU per request, logging on vs off at c={c}: {ratio:.2f}× "
                             f"(target ≤ 1.10×): {check(ratio <= 1.10)}")
    if on and inline:
        for c in cs:
            p, q = _point(on, c), _point(inline, c)
            if p and q and p.cpu_ms_per_req and q.cpu_ms_per_req and p.delivery_cpu_ms_per_req is not None:
                total = p.cpu_ms_per_req + p.delivery_cpu_ms_per_req
                lines.append(f"- total CPU per event (workers + delivery process) vs inline at c={c}: "
                             f"{total / q.cpu_ms_per_req:.2f}× (target ≤ 1.00×): "
                             f"{check(total <= q.cpu_ms_per_req)}; throughput {_pct(p.rps / q.rps)} of inline")
    two = by_id.get("gw-sinks-w2")
    if on and two and on.posts and two.posts and on.requests and two.requests:
        one_rate, two_rate = on.posts * 1000 / on.requests, two.posts * 1000 / two.requests
        lines.append(f"- receiver POSTs per 1,000 requests, 2 workers vs 1: {two_rate:.1f} vs {one_rate:.1f} "
                     f"({two_rate / one_rate:.2f}×; target within 10 %): {check(abs(two_rate / one_rate - 1) <= 0.10)}")
    if on and on.rss_mb and on.delivery_rss_mb:
        lines.append(f"- RSS: serving processes {on.rss_mb:.0f} MB, delivery process {on.delivery_rss_mb:.0f} MB")
    if on and two:
        for c in cs:
            p, q = _point(on, c), _point(two, c)
            if p and q and p.cpu_ms_per_req and q.cpu_ms_per_req:
                growth = q.cpu_ms_per_req / p.cpu_ms_per_req
                lines.append(f"- CPU per request with 2 workers vs 1 at c={c}: {q.cpu_ms_per_req:.3f} vs "
                             f"{p.cpu_ms_per_req:.3f} ms ({growth:.2f}×; must not grow with N): "
                             f"{check(growth <= 1.10)}")
    # The controls: the same two processes on the one core without sinks, and the bare floor app under uvicorn.
    for label, one_id, two_id in (("gateway without sinks", "gw", "gw-w2"), ("floor", "floor", "floor-w2")):
        one, two = by_id.get(one_id), by_id.get(two_id)
        if not (one and two):
            continue
        for c in cs:
            p, q = _point(one, c), _point(two, c)
            if p and q and p.cpu_ms_per_req and q.cpu_ms_per_req:
                lines.append(f"  - control, {label}: 2 workers vs 1 at c={c}: {q.cpu_ms_per_req:.3f} vs "
                             f"{p.cpu_ms_per_req:.3f} ms ({q.cpu_ms_per_req / p.cpu_ms_per_req:.2f}×)")
    clients = [(name, by_id.get(rid)) for name, rid in (("builtin", "gw"), ("aiohttp", "gw-aiohttp"),
                                                         ("httpx-aiohttp", "gw-httpx-aiohttp"), ("httpx", "gw-httpx"))]
    clients = [(name, row) for name, row in clients if row and row.points]
    if len(clients) > 1:
        for c in cs:
            points = [(name, _point(row, c)) for name, row in clients]
            shown = [f"{name} {p.rps:,.0f} req/s, {p.cpu_ms_per_req:.3f} ms CPU" for name, p in points if p]
            if len(shown) > 1:
                lines.append(f"- upstream client at c={c} (gateway, no sinks): " + "; ".join(shown))
    return lines or ["- (not enough rows in this run to check them)"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=float(env("BENCH_DURATION", "4")),
                        help="seconds per measured run (BENCH_DURATION, default 4)")
    parser.add_argument("--repeat", type=int, default=int(env("BENCH_REPEAT", "2")),
                        help="runs per point, the best kept (BENCH_REPEAT, default 2)")
    parser.add_argument("--warmup", type=float, default=float(env("BENCH_WARMUP", "1")),
                        help="seconds of discarded load before each row (BENCH_WARMUP, default 1)")
    parser.add_argument("--concurrency", default=env("BENCH_CONCURRENCY", "1,16,64"),
                        help="comma list (BENCH_CONCURRENCY, default 1,16,64)")
    parser.add_argument("--teams", type=int, default=int(env("BENCH_TEAMS", "1000")),
                        help="teams, one key each (BENCH_TEAMS, default 1000)")
    parser.add_argument("--rows", default=env("BENCH_ROWS", ""),
                        help=f"comma list of rows to run (BENCH_ROWS; default all: {','.join(r.id for r in ROWS)})")
    parser.add_argument("--load-cpu", type=int, default=int(env("BENCH_LOAD_CPU", "0")))
    parser.add_argument("--server-cpu", type=int, default=int(env("BENCH_SERVER_CPU", "1")))
    parser.add_argument("--no-stream", dest="stream", action="store_false",
                        default=env("BENCH_STREAM", "1") != "0", help="skip the SSE rows (BENCH_STREAM=0)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) and print it")
    parser.add_argument("--output", default=str(HERE / "results"), help="where latest.md/latest.json go")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.rows = [r.strip() for r in str(args.rows).split(",") if r.strip()]
    unknown = set(args.rows) - {r.id for r in ROWS}
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    if (not 1 <= args.teams <= 20_000 or not 0.5 <= args.duration <= 120 or not args.concurrency
            or not 1 <= args.repeat <= 10):
        parser.error("bounds: 1 ≤ teams ≤ 20000, 0.5 ≤ duration ≤ 120, 1 ≤ repeat ≤ 10, a concurrency")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        bench.cleanup()
        if args.keep:
            print(f"bench: kept {bench.tmp}")
    report = render(results, args, bench.notes, time.monotonic() - started)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(report)
    (out / "latest.json").write_text(json.dumps({
        "when": dt.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "notes": bench.notes, "results": [asdict(r) for r in results]}, indent=2))
    print()
    print(report)
    print(f"bench: wrote {out / 'latest.md'} and {out / 'latest.json'}")
    return 0 if all(r.points or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
