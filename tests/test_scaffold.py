"""``sluicegate new-sink``: the generated package installs, its own tests pass, the gateway finds and uses it.

The package is generated into a temporary folder and installed the two ways an author would: into a fresh
virtual environment with ``uv pip install -e '.[test]'`` next to this checkout's ``sluicegate`` (the README's
"pip install -e . && pytest"), and with ``uv pip install --target`` for a gateway subprocess run with
``PYTHONPATH`` (the issue's "temp target"). Negative controls: the plugin is absent without the install, bad
names are refused, and a package whose sink swallows failures fails its own generated tests.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluicegate.scaffold import ScaffoldError, package_names, render_sink_package, write_sink_package
from sluicegate.testing import HttpReceiver

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")
NAME = "webhook"


def _run(args: list[Any], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")}
    env.update(extra)
    return env


def _plugin_names(python: Path | str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    done = _run([python, "-m", "sluicegate", "plugins", "--json"], env=env or _env())
    assert done.returncode == 0, done.stderr
    return {p["name"]: p for p in json.loads(done.stdout)}


# ------------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(("name", "reason"), [
    ("Webhook", "lower-case identifier"), ("web-hook", "lower-case identifier"), ("1hook", "lower-case identifier"),
    ("", "required"), ("webhook_sink", "should not end in 'sink'"), ("class", "reserved word"),
    ("x" * 41, "at most 40"), ("../evil", "lower-case identifier"),
])
def test_bad_names_are_refused_with_the_reason(name: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match="NAME: ") as info:
        write_sink_package(name, tmp_path)
    assert reason in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_package_written_into_the_workspace_takes_sluicegate_from_it(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "sluicegate"\n\n[tool.uv.workspace]\n'
                                             'members = ["plugins/*"]\n')
    (tmp_path / "plugins").mkdir()
    inside = write_sink_package("webhook", tmp_path / "plugins") / "pyproject.toml"
    assert "[tool.uv.sources]\nsluicegate = { workspace = true }" in inside.read_text()
    (tmp_path / "elsewhere").mkdir()
    outside = write_sink_package("webhook", tmp_path / "elsewhere") / "pyproject.toml"  # control
    assert "[tool.uv.sources]" not in outside.read_text()


def test_good_names_follow_the_one_naming_rule() -> None:
    assert package_names("click_house") == {
        "name": "click_house", "folder": "click_house_sink", "dist": "sluicegate-click-house-sink",
        "package": "sluicegate_click_house_sink", "entry_point": "click_house_sink", "cls": "ClickHouse",
        "upper": "CLICK_HOUSE"}
    files = render_sink_package("click_house")
    assert sorted(files) == ["README.md", "pyproject.toml", "src/sluicegate_click_house_sink/__init__.py",
                             "src/sluicegate_click_house_sink/plugin.py", "src/sluicegate_click_house_sink/sink.py",
                             "tests/conftest.py", "tests/test_plugin.py", "tests/test_standard.py",
                             "tests/test_wire.py"]
    assert 'click_house_sink = "sluicegate_click_house_sink.plugin"' in files["pyproject.toml"]
    assert "class ClickHouseVars(CallbackVars, frozen=True):" in files["src/sluicegate_click_house_sink/sink.py"]
    assert "SinkStandardTests" in files["tests/test_standard.py"]
    assert "| `api_key` | yes | yes |" in files["README.md"]
    assert not [path for path, text in files.items() if "$" in text and path.endswith(".py")]  # all filled in


def test_cli_refuses_a_bad_name_and_an_existing_folder(tmp_path: Path) -> None:
    bad = _run([sys.executable, "-m", "sluicegate", "new-sink", "Web-Hook", "--directory", tmp_path])
    assert bad.returncode == 2 and "NAME: 'Web-Hook' is not a lower-case identifier" in bad.stderr
    assert list(tmp_path.iterdir()) == []
    good = _run([sys.executable, "-m", "sluicegate", "new-sink", NAME], cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "webhook_sink" / "src" / "sluicegate_webhook_sink" / "sink.py").is_file()
    (tmp_path / "webhook_sink" / "README.md").write_text("mine")
    again = _run([sys.executable, "-m", "sluicegate", "new-sink", NAME], cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (tmp_path / "webhook_sink" / "README.md").read_text() == "mine"  # nothing overwritten


# -------------------------------------------------------------------------------------- installed for real
@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sink_package(NAME, tmp_path_factory.mktemp("authoring"))


@pytest.fixture(scope="module")
def author_venv(generated: Path) -> Path:
    """A fresh venv with the generated package installed editable (with its test extra) next to sluicegate."""
    venv = generated.parent / "venv"
    made = _run([UV, "venv", "--quiet", "--python", sys.executable, venv])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run([UV, "pip", "install", "--quiet", "--python", python, "-e", f"{generated}[test]", "-e", ROOT],
                     timeout=300)
    assert installed.returncode == 0, installed.stderr
    return python


@pytest.fixture(scope="module")
def target(generated: Path) -> Path:
    """The generated package pip-installed (uv) into a plain folder, for ``PYTHONPATH``."""
    folder = generated.parent / "target"
    done = _run([UV, "pip", "install", "--quiet", "--no-deps", "--target", folder, generated], timeout=300)
    assert done.returncode == 0, done.stderr
    return folder


def test_generated_tests_pass_after_pip_install_e(generated: Path, author_venv: Path) -> None:
    # The generated suite must stay quick for a plugin author: its CPU time (the two pytest runs' own, not the
    # wall clock, which a loaded CI machine stretches) stays under 30 s.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = _run([author_venv, "-m", "pytest", "-q"], cwd=generated, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    collected = _run([author_venv, "-m", "pytest", "--collect-only", "-q"], cwd=generated, env=_env()).stdout
    for test in ("test_plugin_is_installed", "test_secrets_are_masked", "test_a_wrong_key_is_a_permanent_failure",
                 "test_a_temporary_outage_is_retried", "test_redacted_routes_send_no_message_content"):
        assert test in collected, test
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 30


def test_sluicegate_plugins_lists_it_only_where_installed(author_venv: Path) -> None:
    plugins = _plugin_names(author_venv)
    assert plugins["webhook_sink"]["distribution"] == "sluicegate-webhook-sink"
    assert plugins["webhook_sink"]["callback_names"] == [NAME]
    assert plugins["webhook_sink"]["hooks"] == ["register_sinks", "validate_callback_vars"]
    assert plugins["webhook_sink"]["error"] is None
    # negative control: this checkout's own environment never installed it
    assert "webhook_sink" not in _plugin_names(sys.executable)


def test_generated_tests_catch_a_sink_that_swallows_failures(tmp_path: Path) -> None:
    package = write_sink_package("swallow", tmp_path)
    sink_py = package / "src" / "sluicegate_swallow_sink" / "sink.py"
    sink_py.write_text(sink_py.read_text().replace("response_is_success = 200 <= response.status < 300",
                                                   "response_is_success = True  # broken on purpose"))
    folder = tmp_path / "target"
    assert _run([UV, "pip", "install", "--quiet", "--no-deps", "--target", folder, package]).returncode == 0
    done = _run([sys.executable, "-m", "pytest", "-q"], cwd=package,
                env=_env(PYTHONPATH=str(folder)))
    assert done.returncode == 1, done.stdout
    failed = {line.split(" ")[1] for line in done.stdout.splitlines() if line.startswith("FAILED ")}
    # only the behaviour that broke fails (a refused batch counts as sent, an outage is never retried);
    # the conformance suite and the plugin tests still pass
    assert failed == {"tests/test_wire.py::test_a_wrong_key_is_a_permanent_failure",
                      "tests/test_wire.py::test_a_temporary_outage_is_retried"}, done.stdout


def _gateway_config(make_config: Callable[..., dict[str, Any]], receiver: HttpReceiver) -> dict[str, Any]:
    return make_config(
        litellm_settings={"default_team_settings": [{
            "team_id": "team-w", "success_callback": [NAME],
            "callback_vars": {"endpoint": f"{receiver.url}/team-w", "api_key": "team-w-key-0123456789"}}]},
        sluicegate_settings={"delivery": {"batch_interval": 0.01}})


def test_gateway_finds_it_on_pythonpath_and_delivers_through_it(
        target: Path, gateway_process: Callable[..., Any], write_config: Callable[..., Path],
        make_config: Callable[..., dict[str, Any]], master_key: str) -> None:
    with HttpReceiver() as receiver:
        receiver.behave("/team-w", require_header=("authorization", "Bearer team-w-key-0123456789"))
        config = write_config(_gateway_config(make_config, receiver))
        # negative control first: without the install the config names a sink nobody registered
        refused = _run([sys.executable, "-m", "sluicegate", "serve", "--config", config, "--port", "9"],
                       env=_env(), timeout=60)
        assert refused.returncode == 2 and "webhook" in refused.stderr, refused.stderr
        assert "webhook_sink" in _plugin_names(sys.executable, _env(PYTHONPATH=str(target)))

        gateway = gateway_process(config, env={"PYTHONPATH": str(target)})
        assert "webhook (sluicegate-webhook-sink" in gateway.stdout
        admin = {"Authorization": f"Bearer {master_key}"}
        key = httpx.post(f"{gateway.url}/key/generate", headers=admin, json={"team_id": "team-w"}, timeout=10)
        assert key.status_code == 200, key.text
        chat = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=10,
                          headers={"Authorization": f"Bearer {key.json()['key']}"},
                          json={"model": "gpt-mock", "messages": [{"role": "user", "content": "hello webhook"}]})
        assert chat.status_code == 200, chat.text
        assert receiver.wait_for(lambda: len(receiver.events("/team-w")) >= 1, timeout=15), receiver.requests
        (event,) = receiver.events("/team-w")
        assert event["metadata"]["user_api_key_team_id"] == "team-w"
        assert event["messages"][0]["content"] == "hello webhook"
        # write-time validation from the generated plugin's hook, through the admin API
        bad = httpx.post(f"{gateway.url}/team/team-w/callback", headers=admin, timeout=10, json={
            "callback_name": NAME, "callback_vars": {"endpoint": "ftp://x", "api_key": "k"}})
        assert bad.status_code == 422 and "endpoint" in bad.text, bad.text
