"""``response_cost``: our per-request arithmetic against the genai-prices library's own calculation.

The library is the reference: ``genai_prices.calc_price`` (Decimal arithmetic, ~130 µs a call) must give the
number our :class:`~sluicegate.cost.Price` gives with a few float multiplications, for every model in its table
and for deployments built from a real config. Overrides (LiteLLM's keys) are checked against hand-computed sums.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot

from sluicegate.config import ConfigError, parse_settings
from sluicegate.cost import Price, resolve_price
from sluicegate.plugins import get_plugin_manager
from sluicegate.providers.models import build_deployments
from sluicegate.providers.registry import ProviderRegistry

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

PLAIN = {"prompt_tokens": 1_000, "completion_tokens": 200, "total_tokens": 1_200}
CACHED_AND_REASONING = {  # OpenAI's shape: cached and reasoning tokens are parts of the prompt and completion
    "prompt_tokens": 300_000, "completion_tokens": 5_000, "total_tokens": 305_000,
    "prompt_tokens_details": {"cached_tokens": 100_000}, "cache_creation_input_tokens": 20_000,
    "completion_tokens_details": {"reasoning_tokens": 3_000}}
SHORT = {"prompt_tokens": 50, "completion_tokens": 0, "total_tokens": 50}


def library_usage(usage: dict[str, Any]) -> Usage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"],
                 cache_read_tokens=prompt_details.get("cached_tokens"),
                 cache_write_tokens=usage.get("cache_creation_input_tokens"),
                 output_reasoning_tokens=completion_details.get("reasoning_tokens"))


def deployments(*models: dict[str, Any]) -> dict[str, Any]:
    settings = parse_settings({"model_list": [{"model_name": f"m{i}", **m} for i, m in enumerate(models)]})
    registry = ProviderRegistry.from_plugin_manager(get_plugin_manager({}))
    return {d.model_name: d for d in build_deployments(settings, registry, environ={})}


@pytest.mark.filterwarnings("ignore:Unsupported price key")  # the table's non-token units are unused here
def test_every_model_in_the_table_costs_what_genai_prices_computes() -> None:
    compared = cache_priced = reasoning_priced = tiered = 0
    for provider in get_snapshot().providers:
        for model in provider.models:
            price = Price(model, {}, "table", AT.timestamp())
            for usage in (PLAIN, CACHED_AND_REASONING, SHORT):
                expected = model.calc_price(library_usage(usage), provider, genai_request_timestamp=AT)
                assert price.cost(usage, AT.timestamp()) == pytest.approx(float(expected.total_price), rel=1e-9,
                                                                           abs=1e-15), (provider.id, model.id, usage)
                compared += 1
            rates = price.rates()
            cache_priced += rates.cache_read != rates.input
            reasoning_priced += rates.reasoning != rates.output
            tiered += price.rates(300_000).input != rates.input
    # the sweep went through every branch of the arithmetic, not only the plain one
    assert compared > 6_000 and cache_priced > 500 and reasoning_priced >= 2 and tiered > 20


def test_the_sweep_would_notice_a_wrong_price() -> None:
    """Negative control: a price that differs from the table's by one override is caught by the same check."""
    provider = next(p for p in get_snapshot().providers if p.id == "anthropic")
    model = provider.find_model("claude-sonnet-4-5")
    assert model is not None
    expected = float(model.calc_price(library_usage(CACHED_AND_REASONING), provider,
                                      genai_request_timestamp=AT).total_price)
    right = Price(model, {}, "table", AT.timestamp())
    wrong = Price(model, {"cache_read_input_token_cost": 0.31e-6}, "table", AT.timestamp())
    assert right.cost(CACHED_AND_REASONING, AT.timestamp()) == pytest.approx(expected, rel=1e-9)
    assert wrong.cost(CACHED_AND_REASONING, AT.timestamp()) != pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("litellm_params", "provider_id", "model_ref"), [
    ({"model": "openai/gpt-4o"}, "openai", "gpt-4o"),
    ({"model": "anthropic/claude-sonnet-4-5", "api_key": "k"}, "anthropic", "claude-sonnet-4-5"),
    ({"model": "azure/gpt4o-prod", "api_base": "https://r.openai.azure.com", "api_key": "k",
      "api_version": "2024-10-21", "base_model": "gpt-4o-mini"}, "azure", "gpt-4o-mini"),
    ({"model": "groq/llama-3.3-70b-versatile"}, "groq", "llama-3.3-70b-versatile"),
    ({"model": "xai/grok-3"}, "x-ai", "grok-3"),
    ({"model": "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"}, "together",
     "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ({"model": "fireworks_ai/accounts/fireworks/models/deepseek-v3p2"}, "fireworks",
     "accounts/fireworks/models/deepseek-v3p2"),
    ({"model": "perplexity/sonar-pro"}, "perplexity", "sonar-pro"),
    ({"model": "deepseek/deepseek-chat"}, "deepseek", "deepseek-chat"),
    ({"model": "openrouter/anthropic/claude-3.5-sonnet"}, "openrouter", "anthropic/claude-3.5-sonnet"),
])
def test_configured_models_cost_what_calc_price_says(litellm_params: dict[str, Any], provider_id: str,
                                                     model_ref: str) -> None:
    deployment = deployments({"litellm_params": litellm_params})["m0"]
    assert deployment.price is not None, deployment
    at = time.time()
    now = datetime.fromtimestamp(at, UTC)
    for usage in (PLAIN, CACHED_AND_REASONING):
        expected = calc_price(library_usage(usage), model_ref, provider_id=provider_id, genai_request_timestamp=now)
        assert deployment.cost(usage, at) == pytest.approx(float(expected.total_price), rel=1e-9)
    assert deployment.cost(PLAIN, at) > 0


def test_cached_reasoning_and_per_request_prices() -> None:
    at = AT.timestamp()
    claude = resolve_price("anthropic", "claude-sonnet-4-5", {}, at)
    assert claude is not None
    # Anthropic's answer as the anthropic provider translates it: reads and writes inside prompt_tokens
    translated = {"prompt_tokens": 1_000 + 4_000 + 500, "completion_tokens": 100,
                  "prompt_tokens_details": {"cached_tokens": 4_000, "cache_creation_tokens": 500},
                  "cache_read_input_tokens": 4_000, "cache_creation_input_tokens": 500}
    assert claude.cost(translated, at) == pytest.approx(1_000 * 3e-6 + 4_000 * 0.3e-6 + 500 * 3.75e-6 + 100 * 15e-6)
    # negative control: the same tokens all uncached cost more
    assert claude.cost({"prompt_tokens": 5_500, "completion_tokens": 100}, at) == pytest.approx(
        5_500 * 3e-6 + 100 * 15e-6)
    # DeepSeek reports cache hits as prompt_cache_hit_tokens
    deepseek = resolve_price("deepseek", "deepseek-chat", {}, at)
    assert deepseek is not None
    hit = deepseek.rates(0)
    assert deepseek.cost({"prompt_tokens": 100, "completion_tokens": 0, "prompt_cache_hit_tokens": 60}, at) == \
        pytest.approx(40 * hit.input + 60 * hit.cache_read)
    assert hit.cache_read < hit.input
    # reasoning tokens at their own price, and a price per request
    research = resolve_price("perplexity", "sonar-deep-research", {}, at)
    assert research is not None
    usage = {"prompt_tokens": 10, "completion_tokens": 1_000, "completion_tokens_details": {"reasoning_tokens": 800}}
    assert research.cost(usage, at) == pytest.approx(10 * 2e-6 + 200 * 8e-6 + 800 * 3e-6)
    sonar = resolve_price("perplexity", "sonar", {}, at)
    assert sonar is not None
    assert sonar.cost({"prompt_tokens": 0, "completion_tokens": 0}, at) == pytest.approx(12 / 1000)


def test_long_prompts_pay_the_tier_price() -> None:
    at = AT.timestamp()
    price = resolve_price("anthropic", "claude-sonnet-4-5", {}, at)
    assert price is not None
    short, long = price.rates(200_000), price.rates(200_001)
    assert (short.input, long.input) == (pytest.approx(3e-6), pytest.approx(6e-6))
    for prompt in (200_000, 200_001):
        usage = {"prompt_tokens": prompt, "completion_tokens": 10}
        expected = calc_price(library_usage(usage), "claude-sonnet-4-5", provider_id="anthropic",
                              genai_request_timestamp=AT)
        assert price.cost(usage, at) == pytest.approx(float(expected.total_price), rel=1e-9)


def test_a_price_that_changes_with_the_time_of_day_is_resolved_again() -> None:
    start = AT.replace(hour=0, minute=0)
    price = resolve_price("deepseek", "deepseek-chat", {}, start.timestamp())
    assert price is not None
    assert start.timestamp() < price.until < (start + timedelta(days=1)).timestamp()
    after = datetime.fromtimestamp(price.until, UTC) + timedelta(minutes=1)
    before_cost = price.cost(PLAIN, start.timestamp())
    after_cost = price.cost(PLAIN, after.timestamp())
    assert after_cost != pytest.approx(before_cost)  # the table's off-peak and peak prices differ
    for moment, cost in ((start, before_cost), (after, after_cost)):
        expected = calc_price(library_usage(PLAIN), "deepseek-chat", provider_id="deepseek",
                              genai_request_timestamp=moment)
        assert cost == pytest.approx(float(expected.total_price), rel=1e-9)
    assert price.until > after.timestamp()


def test_config_prices_replace_the_table_key_by_key() -> None:
    models = deployments(
        {"litellm_params": {"model": "openai/gpt-4o", "input_cost_per_token": 1e-6}},
        {"litellm_params": {"model": "openai/gpt-4o", "input_cost_per_token": 1e-6},
         "model_info": {"input_cost_per_token": 9e-6, "output_cost_per_token": "2e-6",  # strings, as LiteLLM's
                        "cache_read_input_token_cost": 0.5e-6}},
        {"litellm_params": {"model": "hosted_vllm/my-finetune", "api_base": "http://127.0.0.1:9/v1",
                            "input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6,
                            "output_cost_per_reasoning_token": 8e-6}},
        {"litellm_params": {"model": "openai/gpt-4o"}},
    )
    usage = {"prompt_tokens": 1_000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 400},
             "completion_tokens_details": {"reasoning_tokens": 30}}
    at = time.time()
    table = models["m3"].price.rates()  # type: ignore[union-attr]
    # litellm_params' input wins; the table's output and cache-read prices stay
    assert models["m0"].cost(usage, at) == pytest.approx(600 * 1e-6 + 400 * table.cache_read + 100 * table.output)
    # litellm_params over model_info over the table
    assert models["m1"].cost(usage, at) == pytest.approx(600 * 1e-6 + 400 * 0.5e-6 + 100 * 2e-6)
    # a model the table does not know, priced by the config alone: cache reads at the input price
    assert models["m2"].price.source == "config " + ", ".join(sorted(  # type: ignore[union-attr]
        ["input_cost_per_token", "output_cost_per_token", "output_cost_per_reasoning_token"]))
    assert models["m2"].cost(usage, at) == pytest.approx(1_000 * 1e-6 + 70 * 4e-6 + 30 * 8e-6)
    # negative control: the table alone
    assert models["m3"].cost(usage, at) == pytest.approx(600 * table.input + 400 * table.cache_read
                                                         + 100 * table.output)
    assert table.input == pytest.approx(2.5e-6)


def test_an_unknown_model_has_no_price_and_costs_nothing() -> None:
    models = deployments({"litellm_params": {"model": "openai/not-a-model-anyone-sells"}},
                         {"litellm_params": {"model": "azure/my-deployment", "api_base": "https://r.openai.azure.com",
                                             "api_key": "k", "api_version": "2024-10-21"}},
                         {"litellm_params": {"model": "azure/my-deployment", "api_base": "https://r.openai.azure.com",
                                             "api_key": "k", "api_version": "2024-10-21"},
                          "model_info": {"base_model": "gpt-4o"}})
    assert models["m0"].price is None and models["m0"].cost(PLAIN, time.time()) == 0.0
    assert models["m1"].price is None  # an Azure deployment name says nothing of the model...
    assert models["m2"].price is not None and models["m2"].price_model == "gpt-4o"  # ...until base_model does
    # LiteLLM's fireworks_ai prefix is not a name genai-prices matches: the provider's price_provider maps it
    assert resolve_price("fireworks_ai", "accounts/fireworks/models/deepseek-v3p2", {}, time.time()) is None
    assert resolve_price("fireworks", "accounts/fireworks/models/deepseek-v3p2", {}, time.time()) is not None


@pytest.mark.parametrize(("where", "value", "path"), [
    ("model_info", "three dollars", "model_list[0].model_info.input_cost_per_token"),
    ("model_info", -1, "model_list[0].model_info.input_cost_per_token"),
    ("litellm_params", -1e-6, "model_list[0].litellm_params.input_cost_per_token"),
])
def test_a_price_that_is_not_a_non_negative_number_stops_start_up(where: str, value: Any, path: str) -> None:
    entry: dict[str, Any] = {"litellm_params": {"model": "openai/gpt-4o"}}
    entry.setdefault(where, {})["input_cost_per_token"] = value
    with pytest.raises(ConfigError) as caught:
        deployments(entry)
    assert [p.split(":")[0] for p in caught.value.problems] == [path]


def test_cost_cpu_per_request_is_a_microsecond_or_so() -> None:
    """Measured, not asserted tightly (printed with -s): what pricing adds to a request, against the library."""
    at = time.time()
    price = resolve_price("openai", "gpt-4o", {}, at)
    assert price is not None
    usage = {"prompt_tokens": 19, "completion_tokens": 7, "total_tokens": 26,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
    rounds = 20_000
    started = time.process_time()
    for _ in range(rounds):
        price.cost(usage, at)
    ours = (time.process_time() - started) / rounds * 1e6
    started = time.process_time()
    for _ in range(200):
        calc_price(library_usage(usage), "gpt-4o", provider_id="openai")
    library = (time.process_time() - started) / 200 * 1e6
    print(f"response_cost: {ours:.2f} us CPU per request (genai_prices.calc_price: {library:.0f} us)")
    assert ours < 50  # a sanity bound for a shared CI core; the measured figure is far below
