"""Plugin discovery through really installed metadata, and what happens when plugins misbehave.

Each broken-plugin case installs a real distribution (``*.dist-info`` with ``entry_points.txt``, the files pip
writes) into a temporary folder on ``sys.path``; the gateway finds it through ``importlib.metadata`` like any other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sluicegate.config import ConfigError, parse_settings
from sluicegate.gateway import Gateway
from sluicegate.plugins import get_plugin_manager
from sluicegate.providers.registry import DuplicateProvider, ProviderRegistry
from sluicegate.sinks.registry import DuplicateCallbackName, SinkRegistry

pytestmark = pytest.mark.usefixtures("clean_env")

SINK_MODULE = """
from sluicegate import CallbackVars, Sink, hookimpl

class V(CallbackVars, frozen=True):
    where: str = "x"

class S(Sink):
    callback_name = {name!r}
    Vars = V
    async def send(self, batch):
        pass

@hookimpl
def {hook}(register):
    register(S)
"""


def install(root: Path, dist: str, module: str, source: str, entry_point: str | None = None) -> None:
    """Write a distribution the way an installer does: the module and its ``.dist-info``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.9\n")
    (info / "entry_points.txt").write_text(f"[sluicegate]\n{entry_point or module} = {module}\n")
    (info / "RECORD").write_text("")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def run_python(code: str, extra_path: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    if extra_path is not None:  # in front of any path already set (a checkout run without installing it)
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), os.environ.get("PYTHONPATH")) if p)
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          timeout=60, check=False)


LIST_SINKS = ("from sluicegate.plugins import get_plugin_manager\n"
              "from sluicegate.sinks.registry import SinkRegistry\n"
              "print(SinkRegistry.from_plugin_manager(get_plugin_manager()).names())")


def test_pip_installed_third_party_sink_is_discovered_in_a_fresh_process(acme_path: Path) -> None:
    found = run_python(LIST_SINKS, acme_path)
    assert found.returncode == 0, found.stderr
    assert "'acme'" in found.stdout
    control = run_python(LIST_SINKS)  # same interpreter, without the installed folder
    assert control.returncode == 0, control.stderr
    assert "'acme'" not in control.stdout and "'file'" in control.stdout


def test_cli_plugins_json_describes_the_installed_plugin(acme_path: Path) -> None:
    result = run_python("from sluicegate.cli import main; main(['plugins', '--json'])", acme_path)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    acme = plugins["acme_sink"]
    assert acme["distribution"] == "sluicegate-acme-sink" and acme["version"] == "1.2.3"
    assert acme["callback_names"] == ["acme"]
    assert acme["entry_point"] == "acme_sink = sluicegate_acme_sink.plugin"
    assert set(acme["hooks"]) == {"register_sinks", "validate_callback_vars", "resolve_callback_var",
                                  "register_health_checks", "register_providers", "register_redactors"}
    assert acme["redactors"] == ["acme_ticket"]
    assert acme["providers"] == ["acme"]
    assert plugins["sluicegate.default_plugins.file_sink"]["callback_names"] == ["file"]


def test_allow_and_deny_lists(acme: Path) -> None:
    assert "acme" in SinkRegistry.from_plugin_manager(get_plugin_manager({})).names()
    none = SinkRegistry.from_plugin_manager(get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": ""}))
    assert none.names() == ["file"]  # built-ins always load
    only = SinkRegistry.from_plugin_manager(get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": "sluicegate-acme-sink"}))
    assert only.names() == ["acme", "file"]
    denied = SinkRegistry.from_plugin_manager(get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "acme_sink"}))
    assert "acme" not in denied.names()


def test_plugin_that_fails_to_import_is_recorded_not_fatal(site: Path, tmp_path: Path) -> None:
    install(site, "sluicegate-broken-sink", "broken_sink_mod", "raise ImportError('needs libfoo 2.0')")
    pm = get_plugin_manager({})
    assert "needs libfoo 2.0" in (pm.load_errors["broken_sink_mod"].error or "")
    registry = SinkRegistry.from_plugin_manager(pm)
    assert "file" in registry.names()
    info = {p.name: p for p in pm.describe(registry.by_plugin())}["broken_sink_mod"]
    assert info.distribution == "sluicegate-broken-sink" and info.error
    # ...but configuration that names a sink nobody registered fails loudly, naming the broken plugin.
    settings = parse_settings({"general_settings": {"database_url": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
                               "litellm_settings": {"success_callback": ["broken"]}})
    with pytest.raises(ConfigError) as info_:
        Gateway(settings, environ={})
    message = str(info_.value)
    assert "unknown callback_name 'broken'" in message and "needs libfoo 2.0" in message


def test_duplicate_callback_name_names_both_distributions(site: Path) -> None:
    install(site, "sluicegate-one-sink", "one_sink_mod", SINK_MODULE.format(name="twin", hook="register_sinks"))
    install(site, "sluicegate-two-sink", "two_sink_mod", SINK_MODULE.format(name="twin", hook="register_sinks"))
    with pytest.raises(DuplicateCallbackName) as info:
        SinkRegistry.from_plugin_manager(get_plugin_manager({}))
    assert "sluicegate-one-sink" in str(info.value) and "sluicegate-two-sink" in str(info.value)
    # negative control: disabling one of them resolves it
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "two_sink_mod"}))
    assert "twin" in registry.names()


def test_misspelt_hook_is_reported_and_the_plugin_left_out(site: Path) -> None:
    install(site, "sluicegate-typo-sink", "typo_sink_mod", SINK_MODULE.format(name="typo", hook="register_sink"))
    install(site, "sluicegate-good-sink", "good_sink_mod", SINK_MODULE.format(name="good", hook="register_sinks"))
    pm = get_plugin_manager({})
    error = pm.load_errors["typo_sink_mod"].error or ""
    assert "register_sink" in error and "register_sinks" in error  # names the typo and the known hooks
    names = SinkRegistry.from_plugin_manager(pm).names()
    assert "good" in names and "typo" not in names


def test_every_plugin_manager_is_fresh() -> None:
    first, second = get_plugin_manager({}), get_plugin_manager({})
    assert first is not second
    assert first.list_name_plugin() and {n for n, _ in first.list_name_plugin()} == {
        n for n, _ in second.list_name_plugin()}


@pytest.mark.usefixtures("acme")
async def test_register_health_checks_feeds_readiness(make_config, start) -> None:
    async with start(make_config()) as gw:
        response = await gw.client.get("/health/readiness")
        assert response.status_code == 200
        checks = response.json()["checks"]
        assert checks["acme"] == {"healthy": True, "details": "acme plugin loaded"}
        assert checks["database"]["healthy"] is True


async def test_readiness_without_plugins_lists_only_the_database(make_config, start) -> None:
    async with start(make_config()) as gw:
        checks = (await gw.client.get("/health/readiness")).json()["checks"]
        assert set(checks) == {"database"}


@pytest.mark.usefixtures("acme")
async def test_plugins_endpoint_is_admin_only_and_shows_the_installed_plugin(make_config, start) -> None:
    async with start(make_config()) as gw:
        response = await gw.admin("GET", "/-/plugins")
        assert response.status_code == 200
        acme = next(p for p in response.json() if p["name"] == "acme_sink")
        assert acme["distribution"] == "sluicegate-acme-sink" and acme["callback_names"] == ["acme"]
        key = await gw.new_key()
        denied = await gw.client.get("/-/plugins", headers={"Authorization": f"Bearer {key}"})
        assert denied.status_code == 403


# ------------------------------------------------------------------------------------------------ providers
ACME_MODEL = {"model_name": "echo", "litellm_params": {"model": "acme/echo-1", "prefix": "acme says: ",
                                                       "input_cost_per_token": 0.5, "output_cost_per_token": 1.0}}


@pytest.mark.usefixtures("acme")
async def test_pip_installed_third_party_provider_answers_chat(make_config, start, receiver, monkeypatch) -> None:
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    async with start(make_config(models=[ACME_MODEL], litellm={"callbacks": ["acme"]})) as gw:
        key = await gw.new_key()
        answer = await gw.chat(key, "hello there", model="echo")
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "acme says: hello there"
        streamed = await gw.chat(key, "one two", model="echo", stream=True)
        assert streamed.status_code == 200
        assert '"content":" two"' in streamed.text and streamed.text.endswith("data: [DONE]\n\n")
        assert '"usage"' not in streamed.text  # not asked for (include_usage), yet logged below
        refused = await gw.chat(key, "fail", model="echo")
        assert refused.status_code == 503 and refused.json()["error"]["message"] == "acme is down"
        unsupported = await gw.chat(key, "hi", model="echo", top_p=0.5)
        assert unsupported.status_code == 400 and "top_p" in unsupported.json()["error"]["message"]
        assert "acme" in unsupported.json()["error"]["message"]
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/global")) >= 4)
        events = sorted(receiver.events("/dest/global"), key=lambda e: e["startTime"])
        plain, stream = events[0], events[1]
        assert plain["custom_llm_provider"] == "acme" and plain["model"] == "echo-1"
        assert plain["model_group"] == "echo" and plain["status"] == "success"
        assert (plain["prompt_tokens"], plain["completion_tokens"]) == (3, 4)
        assert plain["response_cost"] == 3 * 0.5 + 4 * 1.0
        assert stream["stream"] is True and (stream["prompt_tokens"], stream["completion_tokens"]) == (3, 4)
        assert stream["response"]["choices"][0]["message"]["content"] == "acme says: one two"
        assert [e["status"] for e in events[2:]] == ["failure", "failure"]
        plugins = (await gw.admin("GET", "/-/plugins")).json()
        acme = next(p for p in plugins if p["name"] == "acme_sink")
        assert acme["providers"] == ["acme"] and "register_providers" in acme["hooks"]
        builtin = next(p for p in plugins if p["name"] == "sluicegate.default_plugins.providers")
        assert {"openai", "anthropic", "azure", "groq"} <= set(builtin["providers"])


def test_a_provider_nobody_installed_stops_start_up_naming_the_known_ones(tmp_path: Path) -> None:
    settings = parse_settings({"general_settings": {"database_url": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
                               "model_list": [ACME_MODEL]})
    with pytest.raises(ConfigError) as info:  # negative control of the test above: acme is not installed here
        Gateway(settings, environ={})
    (problem,) = info.value.problems
    assert problem.startswith("model_list[0].litellm_params.model: unknown provider 'acme'")
    assert "anthropic" in problem and "openai" in problem


@pytest.mark.usefixtures("acme")
def test_a_providers_params_refuse_unknown_keys_at_start_up(tmp_path: Path) -> None:
    model = {"model_name": "echo", "litellm_params": {"model": "acme/echo-1", "prefx": "x"}}
    settings = parse_settings({"general_settings": {"database_url": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
                               "model_list": [model]})
    with pytest.raises(ConfigError) as info:
        Gateway(settings, environ={})
    assert info.value.problems == ["model_list[0].litellm_params.prefx: not a parameter of acme (did you mean "
                                   "'prefix'?); its own parameters: prefix"]


def test_duplicate_provider_names_both_distributions(site: Path) -> None:
    module = """
from sluicegate import Provider, hookimpl

class P(Provider):
    custom_llm_provider = "twin"
    async def complete(self, body, *, request_id):
        return {}
    async def stream(self, body, *, request_id):
        yield {}

@hookimpl
def register_providers(register):
    register(P)
"""
    install(site, "sluicegate-one-provider", "one_provider_mod", module)
    install(site, "sluicegate-two-provider", "two_provider_mod", module)
    with pytest.raises(DuplicateProvider) as info:
        ProviderRegistry.from_plugin_manager(get_plugin_manager({}))
    assert "sluicegate-one-provider" in str(info.value) and "sluicegate-two-provider" in str(info.value)
    registry = ProviderRegistry.from_plugin_manager(get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "two_provider_mod"}))
    assert "twin" in registry.names()
