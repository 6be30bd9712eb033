"""Finding #5: where callbacks written through the admin API may send (``sluicegate_settings.sink_destinations``).

Default: link-local ranges and the cloud metadata addresses are refused, the rest allowed; ``allow``/``deny``
lists of host globs and CIDRs narrow it; config.yaml callbacks are trusted. The text is checked when a callback is
written (422 naming the field) and the resolved address again at every connection, so a name that resolves to a
refused address (DNS rebinding) never gets a socket. Name resolution is the loop's ``getaddrinfo``; the tests
replace it to stand in for a DNS server answering ``rebind.test`` with 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from sluicegate.config import ConfigError, parse_settings
from sluicegate.net.http import HttpClient, HttpClientError
from sluicegate.sinks.destinations import DestinationPolicy
from sluicegate.testing.waiting import wait_until_async

pytestmark = pytest.mark.usefixtures("clean_env")

REBIND = "rebind.test"


async def eventually(condition, *, timeout: float = 10.0, what: str = "condition"):
    """Poll ``condition`` on the loop until it is truthy, with a deadline (the gateway shares this loop)."""
    return await wait_until_async(condition, timeout=timeout, what=what)


class Listener:
    """A loopback TCP server that counts connections and answers every HTTP request with an empty 200."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Listener:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def listener():
    async with Listener() as running:
        yield running


@pytest.fixture
async def fake_dns(monkeypatch):
    """``rebind.test`` resolves to 127.0.0.1 through the running loop's resolver (what DNS would answer)."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host, port, *args, **kwargs):
        if host == REBIND:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", int(port or 0)))]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


def _otel(endpoint: str, protocol: str = "http/protobuf") -> dict:
    return {"callback_name": "otel", "callback_vars": {"otel_endpoint": endpoint, "otel_protocol": protocol}}


async def _team_callback(gw, team_id: str, entry: dict):
    """Create team ``team_id`` and set ``entry`` as its callback (a team takes one entry per sink: a fresh id
    for each)."""
    await gw.admin("POST", "/team/new", json={"team_id": team_id})
    return await gw.admin("POST", f"/team/{team_id}/callback", json=entry)


# -- write time ---------------------------------------------------------------------------------------------------
REFUSED_BY_DEFAULT = [
    (_otel("http://169.254.169.254/latest/meta-data"), "otel_endpoint"),
    (_otel("http://[fe80::1]:4318"), "otel_endpoint"),
    (_otel("http://[fd00:ec2::254]/"), "otel_endpoint"),
    (_otel("http://100.100.100.200/"), "otel_endpoint"),
    (_otel("http://metadata.google.internal/computeMetadata/v1/"), "otel_endpoint"),
    (_otel("http://2852039166/"), "otel_endpoint"),  # 169.254.169.254 as one decimal number
    (_otel("http://0xa9.0xfe.0xa9.0xfe/"), "otel_endpoint"),
    (_otel("http://[::ffff:169.254.169.254]/"), "otel_endpoint"),
    (_otel("169.254.169.254:4317", "grpc"), "otel_endpoint"),
    ({"callback_name": "langfuse", "callback_vars": {"langfuse_public_key": "pk-lf-1", "langfuse_secret_key": "sk-lf-1",
                                                     "langfuse_host": "http://169.254.169.254"}}, "langfuse_host"),
    ({"callback_name": "datadog", "callback_vars": {"dd_agent_host": "169.254.169.254"}}, "dd_agent_host"),
]


@pytest.mark.parametrize(("entry", "field"), REFUSED_BY_DEFAULT)
async def test_link_local_and_metadata_destinations_are_refused_from_the_api(make_config, start, entry, field):
    async with start(make_config()) as gw:
        response = await _team_callback(gw, "t", entry)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == f"callback_vars.{field}"
        assert "sink_destinations" in response.json()["error"]["message"]
        key = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [entry]}})
        assert key.status_code == 422 and key.json()["error"]["param"] == f"metadata.logging[0].callback_vars.{field}"
        # Negative control: the same sink to a loopback or public address is taken.
        assert (await _team_callback(gw, "t2", _otel("http://127.0.0.1:4318"))).status_code == 200
        assert (await _team_callback(gw, "t3", _otel("https://collector.example.com"))).status_code == 200


async def test_config_yaml_may_send_to_the_metadata_address(make_config, start):
    cfg = make_config(litellm={"default_team_settings": [
        {"team_id": "ops", "success_callback": ["otel"], "callback_vars": {
            "otel_endpoint": "http://169.254.169.254:4318", "otel_protocol": "http/protobuf"}}]})
    async with start(cfg) as gw:
        routes = gw.gateway.resolver.team_config["ops"].routes
        assert [r.trusted for r in routes] == [True]
        refused = await _team_callback(gw, "t", _otel("http://169.254.169.254:4318"))
        assert refused.status_code == 422


async def test_deny_list_hosts_and_networks(make_config, start):
    cfg = make_config()
    cfg["sluicegate_settings"]["sink_destinations"] = {"deny": ["127.0.0.0/8", "*.blocked.test"]}
    async with start(cfg) as gw:
        for index, endpoint in enumerate(("http://127.0.0.1:4318", "http://127.9.9.9:1", "http://x.blocked.test",
                                          "http://X.Blocked.Test.")):
            response = await _team_callback(gw, f"t{index}", _otel(endpoint))
            assert response.status_code == 422, endpoint
            assert response.json()["error"]["param"] == "callback_vars.otel_endpoint"
        assert (await _team_callback(gw, "ok1", _otel("http://allowed.test:4318"))).status_code == 200
        assert (await _team_callback(gw, "ok2", _otel("http://10.0.0.1:4318"))).status_code == 200


async def test_allow_list_admits_only_what_it_names_and_overrides_the_built_in_denials(make_config, start):
    cfg = make_config()
    cfg["sluicegate_settings"]["sink_destinations"] = {"allow": ["*.corp.test", "169.254.169.254"]}
    async with start(cfg) as gw:
        for index, endpoint in enumerate(("http://collector.corp.test:4318", "http://169.254.169.254:4318")):
            assert (await _team_callback(gw, f"ok{index}", _otel(endpoint))).status_code == 200, endpoint
        # (A name outside the globs, e.g. example.com, is decided at connect time here: it might resolve into an
        # allowed network. With only host globs it is refused at once: test_policy_address_rules.)
        for index, endpoint in enumerate(("http://10.0.0.1", "http://169.254.169.253", "http://[::1]:4318")):
            response = await _team_callback(gw, f"t{index}", _otel(endpoint))
            assert response.status_code == 422, endpoint
            assert "allow" in response.json()["error"]["message"] or "refused" in response.json()["error"]["message"]


@pytest.mark.parametrize(("entry", "expected"), [
    ({"allow": ["10.0.0.1/8"]}, "sink_destinations.allow[0]"),
    ({"deny": ["ok.test", "http://x.test/"]}, "sink_destinations.deny[1]"),
    ({"deny": [""]}, "sink_destinations.deny[0]"),
    ({"allow": ["bad host"]}, "sink_destinations.allow[0]"),
])
def test_bad_entries_are_start_up_errors_naming_the_path(entry, expected):
    with pytest.raises(ConfigError) as caught:
        parse_settings({"sluicegate_settings": {"sink_destinations": entry}})
    assert any(p.startswith(f"sluicegate_settings.{expected}: ") for p in caught.value.problems), caught.value
    parse_settings({"sluicegate_settings": {"sink_destinations": {"allow": ["*.corp.test", "10.0.0.0/8"],
                                                                  "deny": ["fd00::/8", "host.test"]}}})


# -- connect time ---------------------------------------------------------------------------------------------------
async def test_the_http_client_refuses_a_name_resolving_to_a_denied_address(listener, fake_dns):
    policy = DestinationPolicy(deny=["127.0.0.0/8"])
    client = HttpClient(user_agent="test")
    url = f"http://{REBIND}:{listener.port}/v1/traces"
    try:
        # A trusted request first: its pooled connection must not carry the checked one.
        assert (await client.post(url, b"x", timeout=5)).status == 200
        assert listener.connections == 1
        with pytest.raises(HttpClientError) as caught:
            await client.post(url, b"x", timeout=5, policy=policy)
        assert caught.value.kind == "refused" and "127.0.0.1" in str(caught.value)
        assert listener.connections == 1 and listener.requests == 1
        # Negative control: a policy that does not deny loopback connects, on a connection of its own.
        assert (await client.post(url, b"x", timeout=5, policy=DestinationPolicy())).status == 200
        assert listener.connections == 2
    finally:
        await client.aclose()


@pytest.mark.parametrize("sink", ["otel-http", "otel-grpc", "datadog-agent"])
async def test_dns_rebinding_is_refused_at_connect_time_and_counted(make_config, start, listener, fake_dns, sink):
    """The name passes the write-time check; at send time it resolves to a denied address: no connection is
    opened, and the send is counted as failed. A config.yaml twin to the same name connects (negative control)."""
    endpoint = {"otel-http": _otel(f"http://{REBIND}:{listener.port}"),
                "otel-grpc": _otel(f"{REBIND}:{listener.port}", "grpc"),
                "datadog-agent": {"callback_name": "datadog", "callback_vars": {
                    "dd_agent_host": REBIND, "dd_agent_port": listener.port}}}[sink]
    cfg = make_config(delivery={"shutdown_grace": 0.5})  # the refused sends retry until the end: do not wait
    cfg["sluicegate_settings"]["sink_destinations"] = {"deny": ["127.0.0.0/8"]}
    async with start(cfg) as gw:
        response = await _team_callback(gw, "t", endpoint)
        assert response.status_code == 200, response.text
        assert (await gw.chat(await gw.new_key(team_id="t"))).status_code == 200
        failed = await eventually(lambda: [s for s in gw.gateway.dispatcher.stats() if s["failed_sends"]],
                                  what="a failed send")
        assert failed[0]["instance_id"].startswith("api-") and failed[0]["sent"] == 0
        assert listener.connections == 0
        # Negative control: the same destination with a policy that allows loopback gets a connection (one more
        # variable makes it a new sink instance, which takes the pool's policy when created).
        other = {**endpoint, "callback_vars": {**endpoint["callback_vars"],
                                               **({"dd_tags": "env:control"} if sink == "datadog-agent"
                                                  else {"otel_service_name": "control"})}}
        policy = gw.gateway.dispatcher.pool.api_policy
        gw.gateway.dispatcher.pool.api_policy = DestinationPolicy()
        try:
            assert (await _team_callback(gw, "t2", other)).status_code == 200
            assert (await gw.chat(await gw.new_key(team_id="t2"))).status_code == 200
            await eventually(lambda: listener.connections > 0, what="a connection with loopback allowed")
        finally:
            gw.gateway.dispatcher.pool.api_policy = policy


def test_policy_address_rules():
    default = DestinationPolicy()
    for address in ("169.254.169.254", "fe80::1", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254",
                    "64:ff9b::a9fe:a9fe"):
        assert default.address_problem(address, "name.test") is not None, address
    for address in ("127.0.0.1", "10.0.0.1", "8.8.8.8", "::1"):
        assert default.address_problem(address, "name.test") is None, address
    assert default.address_problem("8.8.8.8", "metadata.google.internal") is not None  # the name is denied
    narrowed = DestinationPolicy(allow=["*.corp.test", "10.0.0.0/8"])
    assert narrowed.address_problem("10.1.1.1", "any.test") is None
    assert narrowed.address_problem("8.8.8.8", "x.corp.test") is None
    assert narrowed.address_problem("8.8.8.8", "other.test") is not None
    assert narrowed.address_problem("169.254.169.254", "x.corp.test") is not None  # a name never admits a denial
    names_only = DestinationPolicy(allow=["*.corp.test"])
    assert names_only.url_problem("https://example.com/x") is not None
    assert names_only.url_problem("https://a.corp.test/x") is None
    assert DestinationPolicy(deny=["*.corp.test"]).url_problem("a.corp.test:4317") is not None
