"""Every hook has a test and a docs section; every bundled sink has its plugin test and conformance suite."""

from __future__ import annotations

import re
from pathlib import Path

from sluicegate import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "sluicegate_spec"))


def test_hookspecs_are_found():
    assert HOOKS == ["register_health_checks", "register_providers", "register_redactors", "register_sinks",
                     "resolve_callback_var", "validate_callback_vars"]


def test_every_hook_has_a_docs_section():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    headings = set(re.findall(r"^### `([a-z_]+)", docs, flags=re.M))
    assert set(HOOKS) <= headings, f"undocumented hooks: {set(HOOKS) - headings}"


def test_every_hook_is_exercised_by_a_test():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != "test_meta.py")
    fixture = "\n".join(p.read_text() for p in (ROOT / "tests" / "fixtures").rglob("*.py"))
    for hook in HOOKS:
        assert f"def {hook}(" in fixture, f"the acme fixture plugin does not implement {hook}"
    for hook, evidence in {"register_sinks": "test_pip_installed_third_party_sink_is_discovered",
                           "register_health_checks": "test_register_health_checks_feeds_readiness",
                           "register_providers": "test_pip_installed_third_party_provider_answers_chat",
                           "register_redactors": "test_the_acme_fixture_redactor_is_installed_and_used",
                           "resolve_callback_var": "test_plugin_resolver_hook_runs_before_env",
                           "validate_callback_vars": "http(s) URL"}.items():
        assert evidence in sources, f"no test exercises {hook}"


def test_every_bundled_sink_has_its_plugin_and_conformance_tests():
    for plugin in sorted((ROOT / "plugins").glob("*_sink")):
        tests = plugin / "tests"
        assert "def test_plugin_is_installed" in (tests / "test_plugin.py").read_text(), plugin.name
        assert "SinkStandardTests" in (tests / "test_standard.py").read_text(), plugin.name
        assert (plugin / "README.md").exists(), plugin.name
