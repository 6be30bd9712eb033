"""Message redaction: global switch, per-entry override (the seed's datadog example), streams, tool calls."""

from __future__ import annotations

import json

import pytest

from sluicegate.events import REDACTED
from sluicegate.sinks.redaction import redact
from sluicegate.testing import make_event

pytestmark = pytest.mark.usefixtures("acme", "clean_env")


async def test_seed_example_global_datadog_redacted_one_key_logs_prompts(receiver, make_config, start, monkeypatch):
    """Global ``callbacks: ["datadog"]`` + ``turn_off_message_logging: True``; the key whose entry says
    ``{"turn_off_message_logging": false}`` logs prompts again. Uses the real datadog plugin, sending to a loopback
    receiver through its agent settings (``LITELLM_DD_AGENT_HOST``/``PORT``)."""
    port = receiver.url.rsplit(":", 1)[1]
    monkeypatch.setenv("DD_API_KEY", "dd-key-1234567890")
    monkeypatch.setenv("LITELLM_DD_AGENT_HOST", "127.0.0.1")
    monkeypatch.setenv("LITELLM_DD_AGENT_PORT", port)
    cfg = make_config(litellm={"callbacks": ["datadog"], "turn_off_message_logging": True})
    async with start(cfg) as gw:
        response = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [
            {"callback_name": "datadog", "callback_vars": {"turn_off_message_logging": False}}]}})
        assert response.status_code == 200, response.text
        assert response.json()["metadata"] == {"logging": [{"callback_name": "datadog",
                                                             "callback_type": "success_and_failure",
                                                             "callback_vars": {"turn_off_message_logging": False}}]}
        open_key = response.json()["key"]
        redacted_key = await gw.new_key()
        assert (await gw.chat(open_key, "prompt visible")).status_code == 200
        assert (await gw.chat(redacted_key, "prompt hidden")).status_code == 200

        def messages():
            return [json.loads(entry["message"]) for entry in receiver.events("/api/v2/logs")]

        assert await receiver.wait_for_async(lambda: len(messages()) == 2)
        assert all(r.headers["dd-api-key"] == "dd-key-1234567890" for r in receiver.received("/api/v2/logs"))
        by_key = {m["metadata"]["user_api_key_hash"]: m for m in messages()}
        from sluicegate.auth import hash_key

        visible, hidden = by_key[hash_key(open_key)], by_key[hash_key(redacted_key)]
        assert visible["messages"][0]["content"] == "prompt visible"
        assert visible["response"]["choices"][0]["message"]["content"] == "The answer is 42."
        assert hidden["messages"][0]["content"] == REDACTED
        assert hidden["response"]["choices"][0]["message"]["content"] == REDACTED
        assert "prompt hidden" not in json.dumps(messages())
        assert hidden["total_tokens"] > 0 and hidden["metadata"]["request_id"]  # metadata is kept


async def test_streamed_responses_are_redacted_too(receiver, make_config, start, vars_for):
    async with start(make_config(litellm={"turn_off_message_logging": True})) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("s")}]})
        response = await gw.chat(key, "stream secret", stream=True)
        assert response.status_code == 200 and "[DONE]" in response.text and "answer" in response.text
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/s")) == 1)
        event = receiver.events_at("/dest/s")[0]
        assert event["stream"] is True
        assert event["messages"][0]["content"] == REDACTED
        assert event["response"]["choices"][0]["message"]["content"] == REDACTED
        assert "stream secret" not in receiver.received("/dest/s")[0].body.decode()
        assert "answer" not in receiver.received("/dest/s")[0].body.decode()


async def test_team_config_switch_and_string_false_override(receiver, make_config, start, vars_for):
    cfg = make_config(litellm={"default_team_settings": [
        {"team_id": "private", "success_callback": ["acme"], "turn_off_message_logging": True, **vars_for("p")},
        {"team_id": "open", "success_callback": ["acme"], **vars_for("o")}]})
    async with start(cfg) as gw:
        private, open_ = await gw.new_key(team_id="private"), await gw.new_key(team_id="open")
        override = await gw.new_key(team_id="private", metadata={"logging": [{"callback_name": "acme",
                                    "callback_vars": {**vars_for("x"), "turn_off_message_logging": "False"}}]})
        for key in (private, open_, override):
            assert (await gw.chat(key, "words")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/")) == 3)
        assert receiver.events_at("/dest/p")[0]["messages"][0]["content"] == REDACTED
        assert receiver.events_at("/dest/o")[0]["messages"][0]["content"] == "words"
        assert receiver.events_at("/dest/x")[0]["messages"][0]["content"] == "words"


def test_redact_covers_tool_calls_function_calls_and_reasoning():
    event = make_event(messages=[
        {"role": "user", "content": [{"type": "text", "text": "secret"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"ssn": "987-65-4321"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "result secret"},
    ], response={"choices": [{"index": 0, "message": {
        "role": "assistant", "content": "answer secret", "reasoning_content": "thinking secret",
        "function_call": {"name": "f", "arguments": '{"x": "secret"}'},
        "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "g", "arguments": "secret"}}]}}],
        "usage": {"total_tokens": 3}})
    redacted = redact(event)
    text = json.dumps(__import__("msgspec").to_builtins(redacted))
    assert "secret" not in text and "987-65-4321" not in text
    assert redacted.response["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "g"
    assert redacted.messages[1]["tool_calls"][0]["function"]["name"] == "lookup"
    assert redacted.response["usage"] == {"total_tokens": 3}
    assert event.messages[2]["content"] == "result secret"  # the original is untouched (other sinks may log it)
