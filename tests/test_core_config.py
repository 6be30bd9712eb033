"""Loading config.yaml: every error names its YAML path; unknown keys warn once; typos name the intended key.

Checked through ``parse_settings`` / ``load_settings`` and through the real CLI
(``sluicegate serve --config bad.yaml`` exits 2 with the message on stderr).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluicegate.config import ConfigError, load_settings, parse_settings

MISSING_ENV = "SLUICEGATE_TEST_SURELY_UNSET_VARIABLE"

# A LiteLLM user's config for these features, with the usual extras LiteLLM accepts and we do not use.
LITELLM_CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: https://api.openai.com/v1
      api_key: os.environ/SLUICEGATE_TEST_OPENAI_KEY
      timeout: 30
      input_cost_per_token: 0.0000025
      output_cost_per_token: 0.00001
general_settings:
  master_key: sk-1234
  database_url: sqlite+aiosqlite:///./x.db
litellm_settings:
  callbacks: ["langfuse"]
  success_callback: ["langfuse"]
  failure_callback: ["langfuse"]
  turn_off_message_logging: false
  default_team_settings:
    - team_id: team-1
      success_callback: ["langfuse"]
      failure_callback: ["langfuse"]
      langfuse_public_key: os.environ/SLUICEGATE_TEST_LANGFUSE_PK
      langfuse_secret: os.environ/SLUICEGATE_TEST_LANGFUSE_SK
      langfuse_host: https://cloud.langfuse.com
    - team_id: team-2
      success_callback: ["langfuse"]
      callback_vars:
        langfuse_public_key: pk-lf-2
        langfuse_secret_key: sk-lf-2
"""


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw)
    assert caught.value.problems, "ConfigError without problems"
    assert str(caught.value).startswith("invalid configuration:")
    return caught.value.problems


@pytest.fixture
def litellm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_TEST_OPENAI_KEY", "sk-openai-from-env")
    monkeypatch.setenv("SLUICEGATE_TEST_LANGFUSE_PK", "pk-lf-from-env")
    monkeypatch.setenv("SLUICEGATE_TEST_LANGFUSE_SK", "sk-lf-from-env")
    monkeypatch.delenv(MISSING_ENV, raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


# ----------------------------------------------------------------------------------------------- valid
def test_litellm_config_loads_unchanged_with_env_resolved(litellm_env: None) -> None:
    settings = parse_settings(yaml.safe_load(LITELLM_CONFIG))
    assert settings.warnings == []
    params = settings.model_list[0].litellm_params
    assert params.api_key == "sk-openai-from-env" and params.timeout == 30
    team_1, team_2 = settings.litellm_settings.default_team_settings
    assert team_1.team_id == "team-1"
    assert team_1.flat == {"langfuse_public_key": "pk-lf-from-env", "langfuse_secret": "sk-lf-from-env",
                           "langfuse_host": "https://cloud.langfuse.com"}
    assert team_2.callback_vars == {"langfuse_public_key": "pk-lf-2", "langfuse_secret_key": "sk-lf-2"}
    assert settings.general_settings.master_key == "sk-1234"


def test_empty_config_is_valid() -> None:
    assert parse_settings(None).model_list == []
    assert parse_settings({}).warnings == []


def test_database_url_env_overrides_config(litellm_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse_settings(yaml.safe_load(LITELLM_CONFIG))
    assert settings.database_url == "sqlite+aiosqlite:///./x.db"
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@h/db")
    assert settings.database_url == "postgresql+asyncpg://u@h/db"


# ----------------------------------------------------------------------------------------------- env refs
def test_missing_env_var_names_path_and_variable(litellm_env: None) -> None:
    raw = yaml.safe_load(LITELLM_CONFIG)
    raw["general_settings"]["master_key"] = f"os.environ/{MISSING_ENV}"
    raw["litellm_settings"]["default_team_settings"][1]["callback_vars"]["langfuse_secret_key"] = \
        f"os.environ/{MISSING_ENV}_2"
    problems = problems_of(raw)
    assert len(problems) == 2, problems
    assert problems[0].startswith("general_settings.master_key:") and MISSING_ENV in problems[0]
    assert problems[1].startswith(
        "litellm_settings.default_team_settings[1].callback_vars.langfuse_secret_key:")
    assert f"{MISSING_ENV}_2" in problems[1]


def test_env_var_in_a_list_item_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MISSING_ENV, raising=False)
    problems = problems_of({"litellm_settings": {"callbacks": ["file", f"os.environ/{MISSING_ENV}"]}})
    assert problems == [f"litellm_settings.callbacks[1]: environment variable {MISSING_ENV} is not set "
                        f"(referenced as 'os.environ/{MISSING_ENV}')"]


# ----------------------------------------------------------------------------------------------- structure
def test_team_entry_without_team_id_is_required_error(litellm_env: None) -> None:
    raw = yaml.safe_load(LITELLM_CONFIG)
    del raw["litellm_settings"]["default_team_settings"][1]["team_id"]
    assert problems_of(raw) == ["litellm_settings.default_team_settings[1].team_id: required"]


def test_team_entry_with_empty_or_duplicate_team_id(litellm_env: None) -> None:
    raw = yaml.safe_load(LITELLM_CONFIG)
    raw["litellm_settings"]["default_team_settings"][1]["team_id"] = "team-1"
    assert problems_of(raw) == [
        "litellm_settings.default_team_settings[1].team_id: 'team-1' already configured at index 0"]
    raw["litellm_settings"]["default_team_settings"][1]["team_id"] = ""
    assert problems_of(raw) == ["litellm_settings.default_team_settings[1].team_id: must not be empty"]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "x", "timeout": "soon"}}]},
     "model_list[0].litellm_params.timeout: Expected `float | null`, got `str`"),
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "x", "timeout": -1}}]},
     "model_list[0].litellm_params.timeout: must be positive"),
    ({"model_list": [{"model_name": "a", "litellm_params": {"model": "x"}, "model_info": {"id": "d1"}},
                     {"model_name": "a", "litellm_params": {"model": "y"}, "model_info": {"id": "d1"}}]},
     "model_list[1].model_info.id: 'd1' already used by model_list[0]"),
    ({"model_list": [{"model_name": "a"}]}, "model_list[0].litellm_params: required"),
    ({"model_list": [{"litellm_params": {"model": "x"}}]}, "model_list[0].model_name: required"),
    ({"litellm_settings": {"turn_off_message_logging": "maybe"}},
     "litellm_settings.turn_off_message_logging: Expected `bool`, got `str`"),
    ({"litellm_settings": {"success_callback": "langfuse"}},
     "litellm_settings.success_callback: Expected `array | null`, got `str`"),
    ({"litellm_settings": {"default_team_settings": "team-1"}},
     "litellm_settings.default_team_settings: Expected `array`, got `str`"),
    ({"litellm_settings": {"default_team_settings": [{"team_id": "t", "success_callback": "file"}]}},
     "litellm_settings.default_team_settings[0].success_callback: Expected `array | null`, got `str`"),
    ({"general_settings": ["sk-1234"]}, "general_settings: Expected `object`, got `array`"),
    ({"general_settings": {"master_key": "1234"}}, "general_settings.master_key: must start with 'sk-'"),
    ({"sluicegate_settings": {"delivery": {"queue_size": "big"}}},
     "sluicegate_settings.delivery.queue_size: Expected `int`, got `str`"),
    ({"sluicegate_settings": {"delivery": {"memory_events": -1}}},
     "sluicegate_settings.delivery.memory_events: must be 0 (no limit) or more"),
    ({"sluicegate_settings": {"delivery": {"watchdog_interval": -1}}},
     "sluicegate_settings.delivery.watchdog_interval: must be between 0 (off) and 3600 seconds"),
    ({"sluicegate_settings": {"delivery": {"watchdog_timeout": 0}}},
     "sluicegate_settings.delivery.watchdog_timeout: must be more than 0 and at most 600 seconds"),
    ({"sluicegate_settings": {"delivery": {"watchdog_misses": 0}}},
     "sluicegate_settings.delivery.watchdog_misses: must be at least 1"),
    ([1, 2], "(top level): expected a mapping, got list"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_wrong_types_and_values_name_the_yaml_path(raw: Any, expected: str) -> None:
    assert problems_of(raw) == [expected]


def test_model_list_as_mapping_names_model_list(litellm_env: None) -> None:
    # A mapping where a list belongs must be reported at ``model_list`` itself.
    problems = problems_of({"model_list": {"gpt-4o": {"litellm_params": {"model": "openai/gpt-4o"}}}})
    assert len(problems) == 1 and problems[0].startswith("model_list: "), problems


# ----------------------------------------------------------------------------------------------- unknown keys
def test_unknown_keys_produce_one_warning_line(litellm_env: None) -> None:
    raw = yaml.safe_load(LITELLM_CONFIG)
    raw["router_settings"] = {"routing_strategy": "simple-shuffle", "enable_pre_call_checks": True}
    raw["environment_variables"] = {"A": "b"}
    raw["litellm_settings"]["drop_params"] = True  # supported: no warning
    raw["litellm_settings"]["set_verbose"] = False
    raw["general_settings"]["alerting"] = ["slack"]
    raw["model_list"][0]["litellm_params"]["rpm"] = 100  # supported (routing): no warning
    raw["model_list"][0]["litellm_params"]["max_parallel_requests"] = 100
    raw["model_list"][0]["model_info"] = {"id": "m1"}  # supported: no warning
    settings = parse_settings(raw)
    assert len(settings.warnings) == 1, settings.warnings
    line = settings.warnings[0]
    assert "\n" not in line
    for key in ("router_settings.enable_pre_call_checks", "environment_variables", "litellm_settings.set_verbose",
                "general_settings.alerting", "model_list[0].litellm_params.max_parallel_requests"):
        assert key in line
    assert "model_info" not in line and "drop_params" not in line and "routing_strategy" not in line
    assert "litellm_params.rpm" not in line
    assert settings.model_list[0].litellm_params.api_key == "sk-openai-from-env"  # the rest still loads


def test_misspelt_success_callbacks_is_an_error_naming_the_intended_key(litellm_env: None) -> None:
    raw = yaml.safe_load(LITELLM_CONFIG)
    raw["litellm_settings"]["success_callbacks"] = raw["litellm_settings"].pop("success_callback")
    assert problems_of(raw) == [
        "litellm_settings.success_callbacks: unknown key; did you mean 'success_callback'?"]


def test_allow_unknown_keys_turns_misspellings_into_one_warning(litellm_env: None) -> None:
    raw = yaml.safe_load(LITELLM_CONFIG)
    raw["litellm_settings"]["success_callbacks"] = raw["litellm_settings"].pop("success_callback")
    raw["general_settings"]["master_kye"] = "sk-1"
    settings = parse_settings(raw, allow_unknown_keys=True)
    assert settings.warnings == [
        "keys that look misspelt (ignored): general_settings.master_kye: unknown key; did you mean 'master_key'?; "
        "litellm_settings.success_callbacks: unknown key; did you mean 'success_callback'?"]
    assert settings.litellm_settings.success_callback is None  # ignored, as the warning says


def test_every_misspelt_key_is_reported_in_one_pass(litellm_env: None) -> None:
    raw = yaml.safe_load(LITELLM_CONFIG)
    raw["general_settings"]["master_kye"] = raw["general_settings"].pop("master_key")
    raw["litellm_settings"]["sucess_callback"] = raw["litellm_settings"].pop("success_callback")
    raw["model_list"][0]["litellm_param"] = raw["model_list"][0].pop("litellm_params")
    raw["router_settings"] = {"num_retrie": 1}
    raw["sluicegate_settings"] = {"delivery": {"batch_intervals": 1}, "no_such_setting": 1}
    raw["general_settings"]["alerting"] = ["slack"]  # a LiteLLM key we do not implement: a warning, not an error
    problems = problems_of(raw)
    for expected in ("general_settings.master_kye: unknown key; did you mean 'master_key'?",
                     "litellm_settings.sucess_callback: unknown key; did you mean 'success_callback'?",
                     "model_list[0].litellm_param: unknown key; did you mean 'litellm_params'?",
                     "router_settings.num_retrie: not a router setting; did you mean 'num_retries'?",
                     "sluicegate_settings.delivery.batch_intervals: unknown key; did you mean 'batch_interval'?"):
        assert expected in problems, problems
    assert any(p.startswith("sluicegate_settings.no_such_setting: unknown key; known: ") for p in problems), problems
    assert not any("alerting" in p for p in problems)
    assert len(problems) == 6, problems


def test_misspelt_success_callbacks_in_team_entry_is_an_error(litellm_env: None) -> None:
    raw = yaml.safe_load(LITELLM_CONFIG)
    raw["litellm_settings"]["default_team_settings"][0]["success_callbacks"] = \
        raw["litellm_settings"]["default_team_settings"][0].pop("success_callback")
    assert problems_of(raw) == ["litellm_settings.default_team_settings[0].success_callbacks: unknown key; "
                                "did you mean 'success_callback'?"]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"model_lists": []}, "model_lists: unknown key; did you mean 'model_list'?"),
    ({"general_settings": {"master_kye": "sk-1"}},
     "general_settings.master_kye: unknown key; did you mean 'master_key'?"),
    ({"litellm_settings": {"failure_callbacks": []}},
     "litellm_settings.failure_callbacks: unknown key; did you mean 'failure_callback'?"),
])
def test_other_misspellings_name_the_intended_key(raw: Any, expected: str) -> None:
    assert problems_of(raw) == [expected]
    assert parse_settings(raw, allow_unknown_keys=True).warnings == [f"keys that look misspelt (ignored): {expected}"]


# ----------------------------------------------------------------------------------------------- files
def test_load_settings_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_settings(tmp_path / "absent.yaml")
    assert missing.value.problems == [f"{tmp_path / 'absent.yaml'}: file not found"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_list: [\n  - oops: : :\n")
    with pytest.raises(ConfigError) as invalid:
        load_settings(broken)
    assert "not valid YAML" in invalid.value.problems[0] and str(broken) in invalid.value.problems[0]


def test_load_settings_records_source(tmp_path: Path, litellm_env: None) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(LITELLM_CONFIG)
    assert load_settings(path).source == str(path)


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_serve_with_bad_config_exits_2_with_the_message_on_stderr(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MISSING_ENV, raising=False)
    good = yaml.safe_load(LITELLM_CONFIG)
    cases: dict[str, tuple[Any, list[str]]] = {}
    missing_env = yaml.safe_load(LITELLM_CONFIG)
    missing_env["model_list"][0]["litellm_params"]["api_key"] = f"os.environ/{MISSING_ENV}"
    cases["missing-env"] = (missing_env, ["model_list[0].litellm_params.api_key", MISSING_ENV])
    no_team_id = yaml.safe_load(LITELLM_CONFIG)
    del no_team_id["litellm_settings"]["default_team_settings"][1]["team_id"]
    cases["no-team-id"] = (no_team_id, ["litellm_settings.default_team_settings[1].team_id: required"])
    typo = {**good, "litellm_settings": {"default_team_settings": [{"team_id": "t", "success_callbacks": []}]}}
    cases["typo"] = (typo, ["default_team_settings[0].success_callbacks", "did you mean 'success_callback'?"])
    wrong_type = {"model_list": [{"model_name": "a", "litellm_params": {"model": "x", "timeout": "soon"}}]}
    cases["wrong-type"] = (wrong_type, ["model_list[0].litellm_params.timeout"])
    cases["absent-file"] = (None, ["file not found"])
    # Every variable the valid parts reference is set, so each case fails for its own reason only.
    env = {**os.environ, "SLUICEGATE_TEST_OPENAI_KEY": "x", "SLUICEGATE_TEST_LANGFUSE_PK": "x",
           "SLUICEGATE_TEST_LANGFUSE_SK": "x"}
    env.pop(MISSING_ENV, None)
    script = Path(sys.executable).with_name("sluicegate")  # the installed console script, when there is one
    processes = {}
    for index, (name, (raw, _)) in enumerate(cases.items()):
        command = [str(script)] if script.exists() and index % 2 else [sys.executable, "-m", "sluicegate"]
        path = tmp_path / f"{name}.yaml"
        if raw is not None:
            path.write_text(yaml.safe_dump(raw))
        processes[name] = subprocess.Popen(
            [*command, "serve", "--config", str(path), "--port", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 2, (name, process.returncode, stdout, stderr)
        assert "configuration error" in stderr, (name, stderr)
        for fragment in cases[name][1]:
            assert fragment in stderr, (name, fragment, stderr)
        assert "Traceback" not in stderr and "listening" not in stdout, (name, stderr)


def test_cli_help_explains_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "sluicegate", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for command in ("serve", "plugins"):
        assert command in result.stdout


def test_each_worker_takes_its_share_of_the_send_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers N``: the gateway-wide ``max_sends_per_second`` and ``memory_events`` are split, so N workers send
    and hold no more than one."""
    from sluicegate.cli import CONFIG_ENV, WORKERS_ENV, app_factory
    from sluicegate.config import per_worker

    config = tmp_path / "config.yaml"
    config.write_text("sluicegate_settings:\n  delivery:\n    max_sends_per_second: 600\n    memory_events: 1000\n"
                      f"general_settings:\n  database_url: sqlite+aiosqlite:///{tmp_path}/db.sqlite\n")
    settings = load_settings(config)
    assert per_worker(settings, 3).sluicegate_settings.delivery.max_sends_per_second == 200
    assert per_worker(settings, 3).sluicegate_settings.delivery.memory_events == 334  # rounded up
    assert per_worker(settings, 1) is settings
    assert settings.sluicegate_settings.delivery.max_sends_per_second == 600  # the loaded settings untouched

    monkeypatch.setenv(CONFIG_ENV, str(config))
    for workers, share in (("4", 150), ("1", 600), ("", 600)):
        monkeypatch.setenv(WORKERS_ENV, workers)
        app = app_factory()
        assert app.state.gateway.dispatcher.settings.max_sends_per_second == share


_RSS_AFTER_LOAD = """
import ctypes, gc, sys
from sluicegate.config import load_settings

def rss_kb():
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0])

before = rss_kb()
settings = load_settings(sys.argv[1])
gc.collect()
ctypes.CDLL(None).malloc_trim(0)
print(len(settings.litellm_settings.default_team_settings), (rss_kb() - before) // 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status and glibc's malloc_trim")
def test_a_large_config_leaves_little_resident_after_loading(tmp_path: Path) -> None:
    """4,000 teams with two sinks each: what the settings keep, not the YAML parser's garbage, stays resident.

    Measured in a fresh process. Kept as parsed, the strings the settings hold sat among the parser's freed objects
    and pinned its heap: ~46 MB stayed resident; rebuilt after the parser's objects are freed, ~15 MB.
    """
    teams = [{"team_id": f"team-{i:05d}", "success_callback": ["langfuse", "otel"],
              "callback_vars": {"langfuse_public_key": f"pk-lf-{i:05d}", "langfuse_secret_key": f"sk-lf-{i:05d}",
                                "langfuse_host": "http://127.0.0.1:3000", "otel_endpoint": "http://127.0.0.1:4318",
                                "otel_headers": f"x-team=team-{i:05d}", "otel_service_name": f"svc-{i:05d}"}}
             for i in range(4000)]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"litellm_settings": {"default_team_settings": teams}}))
    done = subprocess.run([sys.executable, "-c", _RSS_AFTER_LOAD, str(config)], capture_output=True, text=True,
                          timeout=120, check=True)
    count, resident_mb = map(int, done.stdout.split())
    assert count == 4000
    assert resident_mb < 30, f"{resident_mb} MB resident after loading 4,000 teams"


def test_what_yaml_gives_survives_the_rebuild(tmp_path: Path) -> None:
    """Loading rebuilds the parsed file in fresh objects: numbers, booleans and nulls come through as parsed; a YAML
    date where a string belongs reads as its ISO text."""
    config = tmp_path / "config.yaml"
    config.write_text("litellm_settings:\n  turn_off_message_logging: true\n  default_team_settings:\n"
                      "    - team_id: 2024-01-01\n      success_callback: [langfuse]\n"
                      "      callback_vars: {langfuse_public_key: pk-1, langfuse_secret_key: sk-1, flush_at: 7,\n"
                      "                      langfuse_host: ~, ratio: 0.5}\n")
    settings = load_settings(config)
    team = settings.litellm_settings.default_team_settings[0]
    assert team.team_id == "2024-01-01"
    assert team.callback_vars == {"langfuse_public_key": "pk-1", "langfuse_secret_key": "sk-1", "flush_at": 7,
                                  "langfuse_host": None, "ratio": 0.5}
    assert settings.litellm_settings.turn_off_message_logging is True


def test_a_value_msgpack_cannot_hold_is_loaded_as_parsed(tmp_path: Path) -> None:
    """An integer past 64 bits cannot go through the rebuild: the file is used as YAML parsed it, not refused."""
    config = tmp_path / "config.yaml"
    config.write_text("litellm_settings:\n  default_team_settings:\n    - team_id: big\n"
                      "      success_callback: [langfuse]\n"
                      "      callback_vars: {langfuse_public_key: pk-1, langfuse_secret_key: sk-1,"
                      " seed: 1180591620717411303424}\n")
    team = load_settings(config).litellm_settings.default_team_settings[0]
    assert team.callback_vars["seed"] == 2**70
