"""``response_cost`` in the events a sink receives: OpenAI SDK → gateway → a real upstream on loopback → acme sink.

The upstream reports OpenAI's usage with cached and reasoning tokens; the logged cost must be what
``genai_prices.calc_price`` computes for that usage. A model nobody prices logs 0 and is warned about once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from genai_prices import Usage, calc_price

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

USAGE = {"prompt_tokens": 1_200, "completion_tokens": 300, "total_tokens": 1_500,
         "prompt_tokens_details": {"cached_tokens": 1_024, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0}}


def expected_cost(model_ref: str, at: float) -> float:
    usage = Usage(input_tokens=1_200, cache_read_tokens=1_024, output_tokens=300, output_reasoning_tokens=256)
    return float(calc_price(usage, model_ref, provider_id="openai",
                            genai_request_timestamp=datetime.fromtimestamp(at, UTC)).total_price)


def sdk(gw: Any, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gw.client.base_url).rstrip("/") + "/v1", api_key=key, max_retries=0,
                              timeout=20)


def upstream_model(name: str, upstream: Any, model: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": f"openai/{model}", "api_base": upstream.url,
                                                   "api_key": "up-key", "timeout": 10, **params}}


async def test_events_carry_the_table_price_of_cached_and_reasoning_tokens(
        mock_upstream, receiver, vars_for, monkeypatch, make_config, start) -> None:
    mock_upstream.on("o4-mini", usage=USAGE)
    mock_upstream.on("gpt-4o", status=500)
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/cost")
    monkeypatch.setenv("ACME_TOKEN", "cost-token")
    cfg = make_config(models=[upstream_model("mini", mock_upstream, "o4-mini"),
                              upstream_model("broken", mock_upstream, "gpt-4o")],
                      litellm={"callbacks": ["acme"]})
    async with start(cfg) as gw:
        client = sdk(gw, await gw.new_key())
        await client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "hi"}])
        stream = await client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True, stream_options={"include_usage": True})
        async for _ in stream:
            pass
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/cost")) >= 3)
    events = sorted(receiver.events("/dest/cost"), key=lambda e: e["startTime"])
    plain, streamed, failed = events
    for event in (plain, streamed):
        assert event["status"] == "success" and (event["prompt_tokens"], event["completion_tokens"]) == (1_200, 300)
        assert event["response_cost"] == pytest.approx(expected_cost("o4-mini", event["startTime"]), rel=1e-9)
    assert streamed["stream"] is True
    # negative control: the same tokens without the cache and reasoning split would cost more
    uncached = float(calc_price(Usage(input_tokens=1_200, output_tokens=300), "o4-mini", provider_id="openai")
                     .total_price)
    assert plain["response_cost"] < uncached
    assert failed["status"] == "failure" and failed["response_cost"] == 0.0


async def test_an_unpriced_model_costs_0_and_is_warned_about_once(
        mock_upstream, receiver, monkeypatch, make_config, start, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="sluicegate.cost")
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/unpriced")
    monkeypatch.setenv("ACME_TOKEN", "unpriced-token")
    cfg = make_config(models=[upstream_model("house-a", mock_upstream, "house-model"),
                              upstream_model("house-b", mock_upstream, "house-model"),
                              upstream_model("priced-house", mock_upstream, "house-model-2",
                                             input_cost_per_token=1e-3),
                              upstream_model("mini", mock_upstream, "gpt-4o-mini")],
                      litellm={"callbacks": ["acme"]})
    async with start(cfg) as gw:
        client = sdk(gw, await gw.new_key())
        for name in ("house-a", "house-b", "house-a", "priced-house", "mini"):
            await client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/unpriced")) >= 5)
    costs = {(e["model_group"], e["response_cost"]) for e in receiver.events("/dest/unpriced")}
    assert {name for name, cost in costs if cost == 0.0} == {"house-a", "house-b"}
    assert dict(costs)["priced-house"] == pytest.approx(7 * 1e-3)  # the mock upstream reports 7 prompt tokens
    assert dict(costs)["mini"] > 0
    lines = [r.getMessage() for r in caplog.records if r.name == "sluicegate.cost"]
    assert len(lines) == 1 and lines[0].startswith("no price for openai/house-model "), lines
