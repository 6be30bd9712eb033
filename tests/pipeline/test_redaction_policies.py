"""Redaction policies through a real gateway: per team and per destination, applied on the delivery side.

The upstream is a loopback HTTP server answering OpenAI's chat-completions shape and recording what it was sent;
Langfuse is the loopback OTLP receiver of the langfuse sink package (no runnable Langfuse server without Docker;
see ``sluicegate_langfuse_sink.testing``); the other destinations are the acme sink's HTTP receiver.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import msgspec
import pytest
from sluicegate_langfuse_sink.testing import LangfuseReceiver

from sluicegate.cli import main as cli_main
from sluicegate.config import ConfigError, parse_settings
from sluicegate.events import REDACTED
from sluicegate.gateway import Gateway
from sluicegate.plugins import get_plugin_manager
from sluicegate.redaction.base import DuplicateRedactorName, RedactorRegistry
from sluicegate.redaction.policy import PolicyCompiler
from sluicegate.testing import make_event
from sluicegate.testing.receiver import HttpReceiver

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

ADDRESS = "ann.smith@example.com"
PROMPT = f"Please write to {ADDRESS} about order 7"
ANSWER = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-up",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sure, I will mail ann.smith@example.com"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}}


@pytest.fixture
def upstream():
    """A loopback upstream that answers every chat completion with :data:`ANSWER` and records the bodies."""
    with HttpReceiver() as receiver:
        receiver.behave("/v1/chat/completions", body=msgspec.json.encode(ANSWER))
        yield receiver


@pytest.fixture
def langfuse():
    with LangfuseReceiver() as receiver:
        for n in "abc":
            receiver.add_project(f"pk-lf-{n}", f"sk-lf-{n}", project_id=f"project-{n}")
        yield receiver


def upstream_model(upstream: HttpReceiver) -> list[dict]:
    return [{"model_name": "up", "litellm_params": {"model": "openai/gpt-up", "api_base": f"{upstream.url}/v1",
                                                      "api_key": "sk-upstream-key-1234"}},
            {"model_name": "mock", "litellm_params": {"model": "openai/m",
                                                        "mock_response": "Call +44 20 7946 0958 or ann@example.com"}}]


def team(team_id: str, project: str, langfuse: LangfuseReceiver, **extra) -> dict:
    return {"team_id": team_id, "success_callback": ["langfuse"], "langfuse_public_key": f"pk-lf-{project}",
            "langfuse_secret": f"sk-lf-{project}", "langfuse_host": langfuse.url, **extra}


def inputs(langfuse: LangfuseReceiver, project: str) -> list[str]:
    return [s.attributes.get("langfuse.observation.input", "") for s in langfuse.spans(project)]


def outputs(langfuse: LangfuseReceiver, project: str) -> list[str]:
    return [s.attributes.get("langfuse.observation.output", "") for s in langfuse.spans(project)]


@pytest.mark.parametrize("delivery", ["inline", "process"])
async def test_per_team_policies_reach_each_langfuse_project_and_the_upstream_gets_the_original(
        make_config, start, upstream, langfuse, delivery):
    """Team A (policy) gets ``<EMAIL>`` in place of the address; team B (no policy) gets it whole; team C
    (``turn_off_message_logging``) gets nothing of the text; the upstream receives the original every time. Both
    delivery modes: with the delivery process the policy travels in the worker log's route header and runs there."""
    cfg = make_config(models=upstream_model(upstream), litellm={"default_team_settings": [
        team("team-a", "a", langfuse, redaction={"redactors": ["email", "phone"]}),
        team("team-b", "b", langfuse),
        team("team-c", "c", langfuse, turn_off_message_logging=True, redaction={"redactors": ["email"]})]})
    async with start(cfg, delivery=delivery) as gw:
        keys = {t: await gw.new_key(team_id=f"team-{t}") for t in "abc"}
        responses = await asyncio.gather(*(gw.chat(keys[t], PROMPT, model="up") for t in "abc"))
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert responses[0].json()["choices"][0]["message"]["content"] == ANSWER["choices"][0]["message"]["content"]
        assert await asyncio.to_thread(langfuse.wait_for, lambda: all(len(langfuse.spans(f"project-{t}")) == 1
                                                                      for t in "abc"))
        health = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {keys['a']}"})).json()
        health_b = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {keys['b']}"})).json()
        health_c = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {keys['c']}"})).json()
    sent = [json.loads(r.body) for r in upstream.received("/v1/chat/completions")]
    assert len(sent) == 3 and all(body["messages"][0]["content"] == PROMPT for body in sent)

    (a_in,), (a_out,) = inputs(langfuse, "project-a"), outputs(langfuse, "project-a")
    assert ADDRESS not in a_in and "Please write to <EMAIL> about order 7" in a_in
    assert "ann.smith" not in a_out and "Sure, I will mail <EMAIL>" in a_out
    (span_a,) = langfuse.spans("project-a")
    record = json.loads(span_a.attributes["langfuse.observation.metadata.redaction"])
    assert record["redactors"] == {"email": 2, "phone": 0} and ADDRESS not in json.dumps(record)

    (b_in,), (b_out,) = inputs(langfuse, "project-b"), outputs(langfuse, "project-b")
    assert PROMPT in b_in and ADDRESS in b_out  # the negative control: no policy, nothing replaced
    assert "langfuse.observation.metadata.redaction" not in langfuse.spans("project-b")[0].attributes

    (c_in,), (c_out,) = inputs(langfuse, "project-c"), outputs(langfuse, "project-c")
    assert "write to" not in c_in and "<EMAIL>" not in c_in and REDACTED in c_in and "mail" not in c_out

    assert health["logging_callbacks"]["redaction"] == [{
        "callback_name": "langfuse", "mode": "policy", "source": "team_config",
        "redactors": [{"name": "email"}, {"name": "phone"}],
        "fields": {"messages": "scan", "response": "scan", "tool_arguments": "scan"}}]
    assert health_b["logging_callbacks"]["redaction"] == [{"callback_name": "langfuse", "mode": "none"}]
    assert health_c["logging_callbacks"]["redaction"] == [{"callback_name": "langfuse",
                                                           "mode": "turn_off_message_logging"}]


@pytest.mark.parametrize("delivery", ["inline", "process"])
async def test_layers_entry_beats_key_beats_team_beats_global_and_streams_are_redacted_assembled(
        receiver, make_config, start, vars_for, upstream, monkeypatch, delivery):
    """Global policy: email. Team ``t`` (API metadata): phone. A key of ``t`` with its own policy (ip), and a key
    whose logging entry carries ``redaction: {}`` (switches the inherited one off). Streamed: the mock answer's
    phone number arrives word by word and is still caught on the assembled text."""
    cfg = make_config(models=upstream_model(upstream), litellm={
        "callbacks": ["acme"], "redaction": {"redactors": ["email"]}})
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")  # the global acme entry reads its env defaults
    monkeypatch.setenv("ACME_TOKEN", "tok-global-12345")
    async with start(cfg, delivery=delivery) as gw:
        response = await gw.admin("POST", "/team/new", json={"team_id": "t", "metadata": {
            "redaction": {"redactors": ["phone"]}}})
        assert response.status_code == 200, response.text
        plain = await gw.new_key()  # global policy
        team_key = await gw.new_key(team_id="t")  # the team's policy
        key_policy = await gw.new_key(team_id="t", metadata={"redaction": {"redactors": ["ip"]}})
        entry_off = await gw.new_key(team_id="t", metadata={
            "redaction": {"redactors": ["ip"]},
            "logging": [{"callback_name": "acme", "callback_vars": {**vars_for("entry"), "redaction": {}}}]})
        text = "ann@example.com +44 20 7946 0958 10.1.2.3"
        for key in (plain, team_key, key_policy, entry_off):
            assert (await gw.chat(key, text)).status_code == 200
        assert (await gw.chat(team_key, "stream", stream=True)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/")) == 5)
        bad = await gw.admin("POST", "/key/generate", json={"metadata": {"redaction": {"redactors": ["emial"]}}})
        bad_team = await gw.admin("POST", "/team/update", json={"team_id": "t", "metadata": {
            "redaction": {"redactors": ["email"], "fields": ["messages", "bogus"]}}})
        bad_entry = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [
            {"callback_name": "acme", "callback_vars": {**vars_for("x"), "redaction": {"redactors": [7]}}}]}})
    from sluicegate.auth import hash_key

    by_key: dict[str, list[dict]] = {}
    for event in receiver.events("/dest/"):
        by_key.setdefault(event["metadata"]["user_api_key_hash"], []).append(event)
    content = {k: [e["messages"][0]["content"] for e in v] for k, v in by_key.items()}
    assert content[hash_key(plain)] == ["<EMAIL> +44 20 7946 0958 10.1.2.3"]
    assert sorted(content[hash_key(team_key)]) == ["ann@example.com <PHONE> 10.1.2.3", "stream"]
    assert content[hash_key(key_policy)] == ["ann@example.com +44 20 7946 0958 <IP>"]
    assert by_key[hash_key(key_policy)][0]["metadata"]["user_api_key_metadata"] is None  # the policy stays private
    assert content[hash_key(entry_off)] == [text]  # the entry's empty policy beats the key's
    streamed = next(e for e in by_key[hash_key(team_key)] if e["stream"])
    assert streamed["response"]["choices"][0]["message"]["content"] == "Call <PHONE> or ann@example.com"
    assert streamed["metadata"]["redaction"]["redactors"] == {"phone": 1}
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "metadata.redaction.redactors[0]"
    assert "did you mean 'email'" in bad.json()["error"]["message"]
    assert bad_team.status_code == 422 and "fields.bogus" in bad_team.json()["error"]["message"]
    assert bad_entry.status_code == 422 and "callback_vars.redaction" in bad_entry.json()["error"]["param"]


async def test_a_policy_runs_once_per_event_whatever_the_destinations_sharing_it(
        receiver, make_config, start, vars_for):
    """Three destinations under one policy and one under another: two policy runs per event, not four."""
    cfg = make_config(litellm={"default_team_settings": [
        {"team_id": "t", "callbacks": ["acme"], "redaction": {"redactors": ["email"]}, **vars_for("t")}]})
    async with start(cfg) as gw:
        entries = [{"callback_name": "acme", "callback_vars": vars_for(d)} for d in ("d1", "d2", "d3")]
        entries.append({"callback_name": "acme", "callback_vars": {**vars_for("d4"),
                                                                   "redaction": {"redactors": ["phone"]}}})
        key = await gw.new_key(team_id="t", metadata={"logging": entries})
        for n in range(5):
            assert (await gw.chat(key, f"mail {n}@example.com")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/")) == 20)
        assert gw.gateway.dispatcher.redaction_memo.applied == 10
        assert (await gw.admin("GET", "/-/sinks")).json()["redaction_runs"] == 10
    for dest in ("d1", "d2", "d3"):
        assert [e["messages"][0]["content"] for e in receiver.events_at(f"/dest/{dest}")] == ["mail <EMAIL>"] * 5
    assert sorted(e["messages"][0]["content"] for e in receiver.events_at("/dest/d4")) == [
        f"mail {n}@example.com" for n in range(5)]


def test_a_flat_team_key_no_sink_takes_is_a_start_up_error_with_a_suggestion(make_config, vars_for):
    for extra, expected in (
            ({"bogus_key": 1}, "default_team_settings[0].bogus_key: neither a team setting nor a variable of the "
                               "entry's sinks (acme)"),
            ({"api_tokn": "x"}, "default_team_settings[0].api_tokn: neither a team setting nor a variable of the "
                                "entry's sinks (acme); did you mean 'api_token'?"),
            ({"redaction": {"redactors": ["emial"]}}, "default_team_settings[0].redaction.redactors[0]: unknown "
                                                      "redactor 'emial'; did you mean 'email'?")):
        cfg = make_config(litellm={"default_team_settings": [
            {"team_id": "t", "success_callback": ["acme"], **vars_for("t"), **extra}]})
        settings = parse_settings(cfg, allow_unknown_keys=True)  # team entries stay strict
        with pytest.raises(ConfigError) as caught:
            Gateway(settings, environ={})
        assert any(expected in p for p in caught.value.problems), caught.value.problems
    # the negative control: the same entry without the stray key starts
    Gateway(parse_settings(make_config(litellm={"default_team_settings": [
        {"team_id": "t", "success_callback": ["acme"], **vars_for("t"),
         "redaction": {"redactors": ["email"]}}]})), environ={})


REDACTOR_MODULE = """
import re
import msgspec
from sluicegate import Redactor, RedactorOptions, hookimpl

class NameOptions(RedactorOptions, frozen=True):
    names: list[str] = msgspec.field(default_factory=lambda: ["Alice", "Bob"])

class NameRedactor(Redactor):
    name = {name!r}
    Options = NameOptions
    placeholder = "<PERSON>"

    def redact(self, text):
        pattern = re.compile("|".join(map(re.escape, self.options.names)))
        return pattern.subn(self.placeholder, text)

@hookimpl
def register_redactors(register):
    register(NameRedactor)
"""


def install(root: Path, dist: str, module: str, source: str) -> None:
    """Write a distribution the way an installer does: the module and its ``.dist-info`` with an entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.9\n")
    (info / "entry_points.txt").write_text(f"[sluicegate]\n{module} = {module}\n")
    (info / "RECORD").write_text("")


def test_a_third_party_redactor_is_found_listed_and_used(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    install(site, "sluicegate-acme-ner", "acme_ner", REDACTOR_MODULE.replace("{name!r}", "'person'"))
    pm = get_plugin_manager({})
    assert not pm.load_errors, pm.load_errors
    registry = RedactorRegistry.from_plugin_manager(pm)
    assert "person" in registry.names() and registry.owner("person") == "sluicegate-acme-ner (acme_ner)"
    assert cli_main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["acme_ner"]["redactors"] == ["person"]
    assert listed["sluicegate.default_plugins.redactors"]["redactors"] == [
        "card", "email", "iban", "ip", "phone", "regex", "secret"]
    policy = PolicyCompiler(registry).compile({"redactors": [{"person": {"names": ["Carol"]}}, "email"]})
    out = policy.apply(make_event(messages=[{"role": "user", "content": "Carol <c@example.com> and Alice"}]))
    assert out.messages[0]["content"] == "<PERSON> <<EMAIL>> and Alice"
    assert out.metadata.redaction["redactors"] == {"email": 1, "person": 1}


def test_a_redactor_name_registered_twice_stops_start_up_naming_both(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    install(site, "sluicegate-fake-email", "fake_email", REDACTOR_MODULE.replace("{name!r}", "'email'"))
    with pytest.raises(DuplicateRedactorName, match=r"'email' is registered twice: by sluicegate "
                                                    r"\(sluicegate.default_plugins.redactors\) and by "
                                                    r"sluicegate-fake-email \(fake_email\)"):
        RedactorRegistry.from_plugin_manager(get_plugin_manager({}))


async def test_the_acme_fixture_redactor_is_installed_and_used(receiver, make_config, start, vars_for):
    """The acme fixture distribution (really installed) registers ``acme_ticket`` through its entry point; a
    team's policy names it with options, and the sink receives the placeholder."""
    cfg = make_config(litellm={"default_team_settings": [
        {"team_id": "t", "callbacks": ["acme"], **vars_for("t"),
         "redaction": {"redactors": [{"acme_ticket": {"prefix": "TCK"}}, "email"]}}]})
    async with start(cfg) as gw:
        assert gw.gateway.resolver.redaction.registry.owner("acme_ticket") == "sluicegate-acme-sink (acme_sink)"
        key = await gw.new_key(team_id="t")
        assert (await gw.chat(key, "TCK-991 from a@example.com, not ACME-5")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/t")) == 1)
        plugins = (await gw.admin("GET", "/-/plugins")).json()
    event = receiver.events_at("/dest/t")[0]
    assert event["messages"][0]["content"] == "<ACME_TICKET> from <EMAIL>, not ACME-5"
    assert event["metadata"]["redaction"]["redactors"] == {"acme_ticket": 1, "email": 1}
    assert next(p for p in plugins if p["name"] == "acme_sink")["redactors"] == ["acme_ticket"]


async def test_a_replay_after_shutdown_redacts_as_the_first_process_would_have(receiver, make_config, start,
                                                                               vars_for):
    """Events queued under a policy and left in the spool by a shutdown are replayed redacted: the spool keeps the
    policy with the sink instance."""
    receiver.behave("/dest/later", status=503)
    cfg = make_config(delivery={"shutdown_grace": 0.3})
    async with start(cfg) as gw:
        key = await gw.new_key(metadata={"redaction": {"redactors": ["email"]},
                                         "logging": [{"callback_name": "acme", "callback_vars": vars_for("later")}]})
        for i in range(5):
            assert (await gw.chat(key, f"k{i} from ann{i}@example.com")).status_code == 200
    assert receiver.events_at("/dest/later") == []
    receiver.behave("/dest/later", status=200)
    async with start(cfg):  # no request: the spool is replayed at start
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/later")) >= 5)
    contents = [e["messages"][0]["content"] for e in receiver.events_at("/dest/later")]
    assert contents == [f"k{i} from <EMAIL>" for i in range(5)]
    assert all(e["metadata"]["redaction"]["redactors"] == {"email": 1} for e in receiver.events_at("/dest/later"))
    sent = receiver.received("/dest/later", ok_only=False)  # the refused attempts of the first process included
    assert len(sent) > 1 and "@example.com" not in b"".join(r.body for r in sent).decode()
