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
    if extra_path is not None:
        environment["PYTHONPATH"] = str(extra_path)
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
                                  "register_health_checks"}
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
