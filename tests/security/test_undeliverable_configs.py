"""Issue 21 #6: a sink configuration that can never deliver is refused when it is written, naming the field.

Before, a CR/LF in an ``otel_headers`` value, a ``dd_site`` with ``@`` or ``#``, a URL without a usable host and
the like were stored, and every batch then failed and was retried for ever, filling the logs. Each case here
goes through a real gateway (uvicorn on loopback, the bundled sink plugins installed) the way an admin writes it:
``POST /team/{id}/callback``, ``/key/generate`` and ``/key/update`` with ``metadata.logging``, and config.yaml at
start-up. Each refusal is checked for its status, the field it names and that it does not echo the secret it
refused; beside them, well-formed configurations of every sink are accepted (the negative controls).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sluicegate.config import ConfigError
from sluicegate.testing.gateway import running_gateway

MASTER = "sk-master-undeliverable-test"
SECRET = "tok-SECRET-5f3a9c"
"""Put into each refused secret value: no answer may contain it."""

# (callback_name, callback_vars, the field the refusal must name)
UNDELIVERABLE: list[tuple[str, dict[str, Any], str]] = [
    # otel: headers (percent-encoded k=v form, JSON object form, mapping form), then endpoints
    ("otel", {"otel_endpoint": "http://collector.example:4318",
              "otel_headers": f"authorization=Bearer%20{SECRET}%0D%0AX-Injected%3A%201"}, "otel_headers"),
    ("otel", {"otel_endpoint": "http://collector.example:4318",
              "otel_headers": {"authorization": f"Bearer {SECRET}\nX-Injected: 1"}}, "otel_headers"),
    ("otel", {"otel_endpoint": "http://collector.example:4318",
              "otel_headers": f'{{"authorization": "Bearer {SECRET}\\u0000"}}'}, "otel_headers"),
    ("otel", {"otel_endpoint": "http://collector.example:4318", "otel_headers": {"x api key": SECRET}},
     "otel_headers"),
    ("otel", {"otel_endpoint": "http://collector.example:4318", "otel_headers": "Host=evil.example"},
     "otel_headers"),
    ("otel", {"otel_endpoint": "http://collector.example:4318", "otel_headers": f"x-key={SECRET}%E2%82%AC"},
     "otel_headers"),
    ("otel", {"otel_endpoint": "collector.example:4317", "otel_protocol": "grpc",
              "otel_headers": f"authorization=Bearer%20{SECRET}%C3%A9"}, "otel_headers"),
    ("otel", {"otel_endpoint": "collector.example:4317", "otel_protocol": "grpc",
              "otel_headers": f"grpc-timeout={SECRET}"}, "otel_headers"),
    ("otel", {"otel_endpoint": "ftp://collector.example/v1/traces"}, "otel_endpoint"),
    ("otel", {"otel_endpoint": "http:///v1/traces"}, "otel_endpoint"),
    ("otel", {"otel_endpoint": f"http://user:{SECRET}@collector.example:4318"}, "otel_endpoint"),
    ("otel", {"otel_endpoint": "http://collector.example:4318/v1/tra\r\nces"}, "otel_endpoint"),
    ("otel", {"otel_endpoint": "http://collector!.example:4318"}, "otel_endpoint"),
    ("otel", {"otel_endpoint": "http://collector.example:0"}, "otel_endpoint"),
    ("otel", {"otel_endpoint": "http://[not-an-address]:4318"}, "otel_endpoint"),
    ("otel", {"otel_endpoint": "collector.example:99999", "otel_protocol": "grpc"}, "otel_endpoint"),
    ("otel", {"otel_endpoint": "coll ector.example:4317", "otel_protocol": "grpc"}, "otel_endpoint"),
    # datadog: sites and agent hosts that are no host name, API keys that cannot be a header value
    ("datadog", {"dd_api_key": "k" * 32, "dd_site": "datadoghq.com@evil.example"}, "dd_site"),
    ("datadog", {"dd_api_key": "k" * 32, "dd_site": "datadoghq.com#frag"}, "dd_site"),
    ("datadog", {"dd_api_key": "k" * 32, "dd_site": "datadoghq.eu:8443"}, "dd_site"),
    ("datadog", {"dd_api_key": "k" * 32, "dd_site": "datadoghq.eu?x=1"}, "dd_site"),
    ("datadog", {"dd_api_key": f"{SECRET}\r\nX-Injected: 1"}, "dd_api_key"),
    ("datadog", {"dd_api_key": f"{SECRET}\u00e9"}, "dd_api_key"),
    ("datadog", {"dd_agent_host": "agent.example:8126"}, "dd_agent_host"),
    ("datadog", {"dd_agent_host": "agent@evil.example"}, "dd_agent_host"),
    ("datadog", {"dd_agent_host": "agent.example", "dd_api_key": f"{SECRET}\x00"}, "dd_api_key"),
    # langfuse: hosts, and keys no Langfuse can accept
    ("langfuse", {"langfuse_public_key": "pk-lf-1", "langfuse_secret_key": "sk-lf-1",
                  "langfuse_host": "https://cloud.langfuse.com\r\nX-Injected: 1"}, "langfuse_host"),
    ("langfuse", {"langfuse_public_key": "pk-lf-1", "langfuse_secret_key": "sk-lf-1",
                  "langfuse_host": "https://langfuse!.example"}, "langfuse_host"),
    ("langfuse", {"langfuse_public_key": "pk-lf-1", "langfuse_secret_key": "sk-lf-1",
                  "langfuse_host": "https://langfuse.example:0"}, "langfuse_host"),
    ("langfuse", {"langfuse_public_key": "pk-lf-1", "langfuse_secret_key": f"sk-lf-{SECRET}\n"},
     "langfuse_secret_key"),
    # gcs_bucket: GCS bucket naming rules and object-name rules for the prefix
    ("gcs_bucket", {"gcs_bucket_name": "192.168.5.4"}, "gcs_bucket_name"),
    ("gcs_bucket", {"gcs_bucket_name": "goog-logs"}, "gcs_bucket_name"),
    ("gcs_bucket", {"gcs_bucket_name": "team-google-logs"}, "gcs_bucket_name"),
    ("gcs_bucket", {"gcs_bucket_name": "logs..example.com"}, "gcs_bucket_name"),
    ("gcs_bucket", {"gcs_bucket_name": "logs." + "a" * 64 + ".example.com"}, "gcs_bucket_name"),
    ("gcs_bucket", {"gcs_bucket_name": "team-logs/prod\r\nx"}, "gcs_bucket_name"),
    ("gcs_bucket", {"gcs_bucket_name": "team-logs/" + "p" * 1000}, "gcs_bucket_name"),
    ("gcs_bucket", {"gcs_bucket_name": "team-logs/.well-known/acme-challenge"}, "gcs_bucket_name"),
]

DELIVERABLE: list[tuple[str, dict[str, Any]]] = [
    ("otel", {"otel_endpoint": "http://collector.example:4318",
              "otel_headers": "authorization=Bearer%20tok-1,x-scope=team%201"}),
    ("otel", {"otel_endpoint": "https://[2001:db8::1]:4318/v1/traces", "otel_headers": {"x-api-key": "k\tv"}}),
    ("otel", {"otel_endpoint": "otel_collector:4317", "otel_protocol": "grpc",
              "otel_headers": "authorization=Bearer%20tok-1"}),
    ("otel", {"otel_endpoint": "  http://b\u00fccher.example/v1/traces\n"}),
    ("datadog", {"dd_api_key": "k" * 32, "dd_site": "https://app.datadoghq.eu/"}),
    ("datadog", {"dd_api_key": "k" * 32, "dd_site": "us5.datadoghq.com"}),
    ("datadog", {"dd_agent_host": "dd_agent", "dd_agent_port": 8126}),
    ("datadog", {"dd_agent_host": "::1"}),
    ("langfuse", {"langfuse_public_key": "pk-lf-1", "langfuse_secret_key": "sk-lf-1",
                  "langfuse_host": "http://langfuse-web:3000"}),
    ("gcs_bucket", {"gcs_bucket_name": "gs://team-logs.example.com/llm/prod"}),
    ("gcs_bucket", {"gcs_bucket_name": "team_logs-1/" + "p" * 900}),
]


def _config(tmp_path: Path, litellm: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/mock-1",
                                                                 "mock_response": "ok"}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": litellm or {},
    }


def _refusal_problems(response: Any, case: tuple[str, dict[str, Any], str], param_prefix: str) -> list[str]:
    """What is wrong with ``response`` as the refusal of ``case`` (empty when it is right)."""
    name, variables, field = case
    where = f"{name} {sorted(variables)}"
    if response.status_code != 422:
        return [f"{where}: HTTP {response.status_code} {response.text[:200]}"]
    error = response.json()["error"]
    found = []
    if error["param"] != f"{param_prefix}callback_vars.{field}":
        found.append(f"{where}: param {error['param']!r}, expected the field {field!r}")
    if f"callback_vars.{field}:" not in error["message"]:
        found.append(f"{where}: message {error['message']!r} does not name {field!r}")
    if SECRET in response.text:
        found.append(f"{where}: the answer echoes the refused secret")
    return found


async def test_team_callback_refuses_undeliverable_configs_naming_the_field(tmp_path: Path) -> None:
    async with running_gateway(_config(tmp_path)) as gw:
        assert (await gw.admin("POST", "/team/new", json={"team_id": "team-1"})).status_code == 200
        problems = []
        for case in UNDELIVERABLE:
            name, variables, _ = case
            response = await gw.admin("POST", "/team/team-1/callback",
                                      json={"callback_name": name, "callback_vars": variables})
            problems += _refusal_problems(response, case, "")
        assert not problems, "\n".join(problems)
        team = (await gw.admin("GET", "/team/team-1/callback")).json()
        assert SECRET not in str(team)
        assert not (await gw.gateway.store.get_team("team-1")).logging  # nothing refused was stored


async def test_team_callback_accepts_deliverable_configs(tmp_path: Path) -> None:
    async with running_gateway(_config(tmp_path)) as gw:
        problems = []
        for index, (name, variables) in enumerate(DELIVERABLE):
            team_id = f"team-{index}"
            assert (await gw.admin("POST", "/team/new", json={"team_id": team_id})).status_code == 200
            response = await gw.admin("POST", f"/team/{team_id}/callback",
                                      json={"callback_name": name, "callback_vars": variables})
            if response.status_code != 200:
                problems.append(f"{name} {variables}: HTTP {response.status_code} {response.text[:300]}")
        assert not problems, "\n".join(problems)


async def test_key_generate_and_update_refuse_undeliverable_logging(tmp_path: Path) -> None:
    async with running_gateway(_config(tmp_path)) as gw:
        good = {"callback_name": "datadog", "callback_vars": {"dd_api_key": "k" * 32}}
        key = (await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [good]}})).json()["key"]
        problems = []
        for case in UNDELIVERABLE:
            name, variables, _ = case
            entry = {"callback_name": name, "callback_vars": variables}
            generated = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [good, entry]}})
            problems += _refusal_problems(generated, case, "metadata.logging[1].")
            updated = await gw.admin("POST", "/key/update", json={"key": key, "metadata": {"logging": [entry]}})
            problems += _refusal_problems(updated, case, "metadata.logging[0].")
        assert not problems, "\n".join(problems)
        info = (await gw.admin("GET", "/key/info", params={"key": key})).json()
        assert SECRET not in str(info)
        # The key keeps the logging it had: no refused entry replaced it.
        assert [e["callback_name"] for e in info["info"]["metadata"]["logging"]] == ["datadog"]


async def test_key_generate_and_update_accept_deliverable_logging(tmp_path: Path) -> None:
    async with running_gateway(_config(tmp_path)) as gw:
        entries = [{"callback_name": name, "callback_vars": variables} for name, variables in DELIVERABLE]
        problems = []
        for entry in entries:
            response = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [entry]}})
            if response.status_code != 200:
                problems.append(f"generate {entry}: HTTP {response.status_code} {response.text[:300]}")
                continue
            key = response.json()["key"]
            response = await gw.admin("POST", "/key/update", json={"key": key, "metadata": {"logging": [entry]}})
            if response.status_code != 200:
                problems.append(f"update {entry}: HTTP {response.status_code} {response.text[:300]}")
        assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("name", "variables", "field"), [
    ("otel", {"otel_endpoint": "http://collector.example:4318", "otel_headers": f"x-key={SECRET}%0D%0Ax: 1"},
     "otel_headers"),
    ("datadog", {"dd_api_key": "k" * 32, "dd_site": "datadoghq.com@evil.example"}, "dd_site"),
    ("gcs_bucket", {"gcs_bucket_name": "goog-logs/prod"}, "gcs_bucket_name"),
], ids=["otel", "datadog", "gcs"])
async def test_config_yaml_team_settings_fail_start_up_naming_the_path(tmp_path: Path, name: str,
                                                                      variables: dict[str, Any],
                                                                      field: str) -> None:
    team = {"team_id": "team-yaml", "callbacks": [name], "callback_vars": variables}
    with pytest.raises(ConfigError) as refused:
        async with running_gateway(_config(tmp_path, {"default_team_settings": [team]})):
            pass
    problem = "\n".join(refused.value.problems)
    assert "litellm_settings.default_team_settings[0]" in problem and f"{field}:" in problem, problem
    assert SECRET not in str(refused.value)


async def test_config_yaml_global_callback_from_environment_fails_start_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DD_API_KEY", "DD_SITE", "LITELLM_DD_AGENT_HOST", "LITELLM_DD_AGENT_PORT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DD_API_KEY", "k" * 32)
    monkeypatch.setenv("DD_SITE", "datadoghq.com#frag")
    with pytest.raises(ConfigError) as refused:
        async with running_gateway(_config(tmp_path, {"callbacks": ["datadog"]})):
            pass
    assert any(p.startswith("litellm_settings callbacks") and "dd_site:" in p for p in refused.value.problems), \
        refused.value.problems


async def test_config_yaml_with_deliverable_team_settings_starts(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_API_KEY", "k" * 32)
    monkeypatch.setenv("DD_SITE", "datadoghq.eu")
    teams = [{"team_id": f"team-{index}", "callbacks": [name], "callback_vars": variables}
             for index, (name, variables) in enumerate(DELIVERABLE)]
    async with running_gateway(_config(tmp_path, {"callbacks": ["datadog"], "default_team_settings": teams})) as gw:
        assert (await gw.client.get("/health/liveliness")).status_code == 200
