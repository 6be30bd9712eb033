"""The router's logic, called directly (no HTTP): deployment ids, router_settings validation, the four routing
strategies' distributions, retry classification, cooldowns with an injected clock, aliases and wildcards.

Faults through real upstream servers, streams, logging and two replicas on Redis: tests/pipeline/test_router_faults.py.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from sluicegate.config import ConfigError, parse_settings
from sluicegate.errors import ApiError
from sluicegate.plugins import get_plugin_manager
from sluicegate.providers.models import ModelRouter
from sluicegate.providers.registry import ProviderRegistry
from sluicegate.router import LocalRouterState, Router
from sluicegate.router.errors import error_class


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def mock(name: str, ident: str | None = None, **params: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"model_name": name, "litellm_params": {"model": f"openai/{ident or name}",
                                                                   "mock_response": "hi", **params}}
    if ident:
        entry["model_info"] = {"id": ident}
    return entry


def build(models: list[dict[str, Any]], router: dict[str, Any] | None = None, clock: Clock | None = None,
          seed: int = 7, **sections: Any) -> Router:
    settings = parse_settings({"model_list": models, "router_settings": router or {}, **sections})
    registry = ProviderRegistry.from_plugin_manager(get_plugin_manager({}))
    clock = clock or Clock()
    return Router(ModelRouter.from_settings(settings, registry, {}), settings, state=LocalRouterState(clock),
                  clock=clock, rng=random.Random(seed))


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw)
    return caught.value.problems


# --- deployments ------------------------------------------------------------------------------------------------
def test_a_model_name_may_have_many_deployments_each_with_an_id() -> None:
    router = build([mock("g", "a"), mock("g", "b"), mock("g"), mock("other")])
    group = router.resolve("g")
    assert group is not None and len(group.deployments) == 3
    ids = [d.model_id for d in group.deployments]
    assert ids[:2] == ["a", "b"] and len(ids[2]) == 64  # model_info.id, else a sha256 of name and params
    again = build([mock("g", "a"), mock("g", "b"), mock("g"), mock("other")])
    assert again.resolve("g").deployments[2].model_id == ids[2]  # stable across builds (replicas agree)
    changed = build([mock("g", "a"), mock("g", "b"), mock("g", timeout=3), mock("other")])
    assert changed.resolve("g").deployments[2].model_id != ids[2]
    assert router.listed() == ["g", "other"]  # each group once


def test_masked_params_never_show_a_key() -> None:
    router = build([mock("g", "a", api_key="sk-very-secret-upstream-key-1234")])
    shown = router.resolve("g").deployments[0].public_params
    assert shown["api_key"] == "***1234" and "sk-very-secret" not in repr(shown)
    assert "sk-very-secret" not in repr(router.resolve("g").deployments[0])


# --- router_settings validation ---------------------------------------------------------------------------------
def test_unknown_router_keys_are_start_up_errors_with_suggestions() -> None:
    found = problems({"model_list": [mock("g")], "router_settings": {"num_retry": 3, "cooldowntime": 1,
                                                                      "retry_policy": {"RateLimitErorRetries": 1}}})
    assert "router_settings.num_retry: not a router setting; did you mean 'num_retries'?" in found
    assert "router_settings.cooldowntime: not a router setting; did you mean 'cooldown_time'?" in found
    assert ("router_settings.retry_policy.RateLimitErorRetries: unknown key; did you mean 'RateLimitErrorRetries'?"
            in found)
    # negative control: the spelled-right keys load, and LiteLLM keys we do not use only warn
    settings = parse_settings({"model_list": [mock("g")], "router_settings": {
        "num_retries": 3, "cooldown_time": 1, "retry_policy": {"RateLimitErrorRetries": 1},
        "enable_pre_call_checks": True}})
    assert settings.router_settings.num_retries == 3
    assert any("router_settings.enable_pre_call_checks" in w for w in settings.warnings)


def test_unknown_routing_strategy_is_a_start_up_error() -> None:
    found = problems({"model_list": [mock("g")], "router_settings": {"routing_strategy": "least-bussy"}})
    assert found == ["router_settings.routing_strategy: 'least-bussy' is not supported (did you mean 'least-busy'?); "
                     "choose one of simple-shuffle, least-busy, latency-based-routing, usage-based-routing-v2"]
    found = problems({"model_list": [mock("g")], "router_settings": {"routing_strategy": "usage-based-routing"}})
    assert "(use 'usage-based-routing-v2')" in found[0]


def test_fallbacks_and_aliases_must_name_configured_models() -> None:
    found = problems({"model_list": [mock("gpt-4o"), mock("claude")], "router_settings": {
        "fallbacks": [{"gpt-4o": ["claud"]}], "model_group_alias": {"gpt4": "gpt-4"},
        "default_fallbacks": ["nope"]}, "litellm_settings": {"context_window_fallbacks": [{"gpt-4o": ["big"]}]}})
    assert "router_settings.fallbacks[0].gpt-4o: fallback model 'claud' is not in model_list (did you mean 'claude'?)" \
        in found
    assert any(p.startswith("router_settings.model_group_alias.gpt4: model group 'gpt-4'") for p in found)
    assert "router_settings.default_fallbacks: fallback model 'nope' is not in model_list" in found
    assert any(p.startswith("litellm_settings.context_window_fallbacks[0].gpt-4o: fallback model 'big'") for p in found)
    parse_settings({"model_list": [mock("gpt-4o"), mock("claude")],  # negative control
                    "router_settings": {"fallbacks": [{"gpt-4o": ["claude"]}], "model_group_alias": {"gpt4": "gpt-4o"}}})


def test_bad_router_values_are_errors_naming_the_field() -> None:
    found = problems({"model_list": [mock("g", rpm=-1)], "router_settings": {
        "num_retries": -1, "cooldown_time": -2, "routing_strategy_args": {"ttl": 0}, "timeout": 0}})
    assert set(found) >= {"model_list[0].litellm_params.rpm: must be 0 or more",
                          "router_settings.num_retries: must be 0 or more",
                          "router_settings.cooldown_time: must be 0 or more",
                          "router_settings.routing_strategy_args.ttl: must be positive",
                          "router_settings.timeout: must be positive"}


# --- strategies ---------------------------------------------------------------------------------------------------
def picks(router: Router, name: str, n: int) -> Counter[str]:
    group = router.resolve(name)
    return Counter(router.pick(group).model_id for _ in range(n))


@pytest.mark.parametrize("field", ["weight", "rpm", "tpm"])
def test_simple_shuffle_follows_weights_1_to_3(field: str) -> None:
    router = build([mock("g", "a", **{field: 1}), mock("g", "b", **{field: 3})])
    counts = picks(router, "g", 4000)
    assert abs(counts["b"] / 4000 - 0.75) <= 0.03, counts


def test_simple_shuffle_without_weights_is_even_and_weight_wins_over_rpm() -> None:
    counts = picks(build([mock("g", "a"), mock("g", "b")]), "g", 4000)
    assert abs(counts["a"] / 4000 - 0.5) <= 0.03, counts
    counts = picks(build([mock("g", "a", weight=1, rpm=1000), mock("g", "b", weight=3, rpm=1)]), "g", 4000)
    assert abs(counts["b"] / 4000 - 0.75) <= 0.03, counts


def test_least_busy_picks_the_deployment_with_fewest_in_flight() -> None:
    router = build([mock("g", "a"), mock("g", "b"), mock("g", "c")], {"routing_strategy": "least-busy"})
    group = router.resolve("g")
    by_id = {d.model_id: d for d in group.deployments}
    router.strategy.started(by_id["a"])
    router.strategy.started(by_id["a"])
    router.strategy.started(by_id["b"])
    assert set(picks(router, "g", 50)) == {"c"}
    router.strategy.ended(by_id["a"], 0.1, True)
    router.strategy.ended(by_id["a"], 0.1, True)
    assert set(picks(router, "g", 200)) == {"a", "c"}  # negative control: ties share


def test_latency_based_sends_under_10_percent_to_a_deployment_50ms_slower() -> None:
    clock = Clock()
    router = build([mock("g", "fast"), mock("g", "slow")], {"routing_strategy": "latency-based-routing"}, clock)
    group = router.resolve("g")
    rng = random.Random(3)
    counts: Counter[str] = Counter()
    for i in range(2000):  # each answer's latency: 20 ms ± 5 for fast, +50 ms for slow
        deployment = router.pick(group)
        counts[deployment.model_id] += 1 if i >= 200 else 0
        clock.now += 0.01
        router.strategy.ended(deployment, 0.02 + rng.uniform(-0.005, 0.005)
                              + (0.05 if deployment.model_id == "slow" else 0), True)
    assert counts["slow"] / sum(counts.values()) < 0.10, counts


def test_latency_buffer_and_ttl() -> None:
    clock = Clock()
    router = build([mock("g", "fast"), mock("g", "slow")],
                   {"routing_strategy": "latency-based-routing",
                    "routing_strategy_args": {"lowest_latency_buffer": 5, "ttl": 30}}, clock)
    by_id = {d.model_id: d for d in router.resolve("g").deployments}
    router.strategy.ended(by_id["fast"], 0.02, True)
    router.strategy.ended(by_id["slow"], 0.07, True)
    assert set(picks(router, "g", 200)) == {"fast", "slow"}  # 0.07 <= 0.02 * (1 + 5)
    router.strategy.buffer = 0
    assert set(picks(router, "g", 200)) == {"fast"}
    clock.now += 31  # samples older than ttl no longer count: both unknown again
    assert set(picks(router, "g", 200)) == {"fast", "slow"}


@pytest.mark.parametrize(("buffer", "size", "step"), [(0, 10, 0.1), (0.1, 3, 0.1), (0.5, 10, 7.0), (5, 10, 1.0)])
def test_latency_based_picks_exactly_what_ranking_every_sample_from_scratch_picks(buffer: float, size: int,
                                                                                  step: float) -> None:
    """The kept ranking against the definition, recomputed from every sample at each pick, with the same random
    choices: 4,000 steps of samples (fast, slow, equal, failed), ttl ageing, filtered lists and a clock that once
    goes back."""
    clock = Clock()
    ttl = 30.0
    router = build([mock("g", f"d{i}", timeout=9) for i in range(6)],
                   {"routing_strategy": "latency-based-routing",
                    "routing_strategy_args": {"lowest_latency_buffer": buffer, "ttl": ttl,
                                              "max_latency_list_size": size}}, clock, seed=11)
    group = router.resolve("g")
    oracle_rng = random.Random(11)
    seen: dict[str, list[tuple[float, float]]] = {d.model_id: [] for d in group.deployments}
    steps = random.Random(buffer * 1000 + size)

    def expected(candidates: list[Any]) -> Any:
        means = []
        for d in candidates:
            fresh = [s for at, s in seen[d.model_id][-size:] if clock.now - at < ttl]
            means.append(sum(fresh) / len(fresh) if fresh else 0.0)
        limit = min(means) * (1 + buffer)
        best = [d for d, m in zip(candidates, means, strict=True) if m <= limit]
        return best[0] if len(best) == 1 else oracle_rng.choice(best)

    for i in range(4000):
        # a wall clock stepped back, by less than any sample's distance from ageing out (by more, a sample that had
        # aged out would count again here and not in a kept mean: the definition is moot then)
        clock.now += -0.001 if i == 2000 else steps.uniform(0, step)
        if steps.random() < 0.1:  # a retry avoiding one deployment: a filtered list
            avoid = steps.choice(group.deployments).model_id
            candidates = [d for d in group.deployments if d.model_id != avoid]
            chosen = router.pick(group, avoid=[avoid])
        else:
            candidates = group.deployments
            chosen = router.pick(group)
        assert chosen is expected(candidates), i
        ok = steps.random() > 0.05
        seconds = steps.choice([0.05, 0.05, steps.uniform(0.01, 0.3)])
        seen[chosen.model_id].append((clock.now, seconds if ok else max(seconds, 9.0)))
        router.strategy.ended(chosen, seconds, ok)
        if steps.random() < 0.2:  # a sample for another deployment (a concurrent request ending)
            other = steps.choice(group.deployments)
            seconds = steps.uniform(0.01, 0.3)
            seen[other.model_id].append((clock.now, seconds))
            router.strategy.ended(other, seconds, True)


def test_usage_based_v2_respects_rpm_headroom_then_429_naming_the_group() -> None:
    router = build([mock("g", "a", rpm=2), mock("g", "b", rpm=1)], {"routing_strategy": "usage-based-routing-v2"})
    counts = picks(router, "g", 3)
    assert counts == {"a": 2, "b": 1}
    with pytest.raises(ApiError) as caught:
        router.pick(router.resolve("g"))
    assert caught.value.status == 429 and "'g'" in caught.value.message


def test_usage_based_v2_respects_tpm() -> None:
    router = build([mock("g", "a", tpm=100), mock("g", "b", tpm=1000)], {"routing_strategy": "usage-based-routing-v2"})
    router.state.add_usage("b", tokens=950)
    assert set(Counter(router.pick(router.resolve("g"), tokens=60).model_id for _ in range(1))) == {"a"}
    with pytest.raises(ApiError):
        router.pick(router.resolve("g"), tokens=200)


# --- retries and fallbacks (classification) ------------------------------------------------------------------------
@pytest.mark.parametrize(("error", "kind", "retried"), [
    (ApiError(502, "x", type="upstream_unreachable"), "APIConnectionError", True),
    (ApiError(504, "x", type="timeout"), "Timeout", True),
    (ApiError(408, "x"), "Timeout", True),
    (ApiError(429, "x"), "RateLimitError", True),
    (ApiError(500, "x"), "InternalServerError", True),
    (ApiError(503, "x"), "ServiceUnavailableError", True),
    (ApiError(400, "x"), "BadRequestError", False),
    (ApiError(400, "This model's maximum context length is 8192 tokens", code="context_length_exceeded"),
     "ContextWindowExceededError", False),
    (ApiError(400, "filtered", code="content_filter"), "ContentPolicyViolationError", False),
    (ApiError(401, "x"), "AuthenticationError", False),
    (ApiError(404, "x"), "NotFoundError", False),
])
def test_only_retryable_errors_are_retried(error: ApiError, kind: str, retried: bool) -> None:
    router = build([mock("g")], {"num_retries": 2})
    assert error_class(error) == kind
    assert router.retries_for(kind, 2) == (2 if retried else 0)


def test_retry_policy_overrides_per_class() -> None:
    router = build([mock("g")], {"num_retries": 2, "retry_policy": {"RateLimitErrorRetries": 5,
                                                                    "BadRequestErrorRetries": 1,
                                                                    "InternalServerErrorRetries": 0}})
    assert router.retries_for("RateLimitError", 2) == 5
    assert router.retries_for("BadRequestError", 2) == 1
    assert router.retries_for("InternalServerError", 2) == 0
    assert router.retries_for("Timeout", 2) == 2  # not in the policy: num_retries


def test_fallback_lists_by_error_kind_and_settings_section() -> None:
    router = build([mock("a"), mock("b"), mock("c"), mock("d")],
                   {"fallbacks": [{"a": ["b"]}], "context_window_fallbacks": [{"a": ["c"]}],
                    "default_fallbacks": ["d"]},
                   litellm_settings={"content_policy_fallbacks": [{"a": ["d"]}]})
    assert router.fallbacks_for("a", "InternalServerError", None) == ["b"]
    assert router.fallbacks_for("a", "ContextWindowExceededError", None) == ["c"]
    assert router.fallbacks_for("a", "ContentPolicyViolationError", None) == ["d"]
    assert router.fallbacks_for("b", "RateLimitError", None) == ["d"]  # default_fallbacks
    assert router.fallbacks_for("a", "BadRequestError", None) == []


# --- cooldowns ------------------------------------------------------------------------------------------------------
def test_cooldown_skips_a_failing_deployment_then_all_cooling_is_a_429_then_it_lifts() -> None:
    clock = Clock()
    router = build([mock("g", "a"), mock("g", "b")], {"allowed_fails": 1, "cooldown_time": 30}, clock)
    group = router.resolve("g")
    by_id = {d.model_id: d for d in group.deployments}

    async def fail(model_id: str, times: int, kind: str = "InternalServerError") -> None:
        for _ in range(times):
            await router._failed(group, by_id[model_id], kind)

    asyncio.run(fail("a", 1))
    assert set(picks(router, "g", 100)) == {"a", "b"}  # one failure is allowed
    asyncio.run(fail("a", 1))
    assert set(picks(router, "g", 100)) == {"b"}
    asyncio.run(fail("b", 2))
    with pytest.raises(ApiError) as caught:
        router.pick(group)
    assert caught.value.status == 429
    assert "model group 'g'" in caught.value.message and "reopens in 30.0 s" in caught.value.message
    assert caught.value.headers == {"retry-after": "30"}
    clock.now += 30.5
    assert set(picks(router, "g", 100)) == {"a", "b"}


def test_bad_requests_never_cool_down_and_a_single_deployment_never_does() -> None:
    clock = Clock()
    router = build([mock("g", "a"), mock("g", "b"), mock("solo", "s")], {"allowed_fails": 0}, clock)
    group = router.resolve("g")
    asyncio.run(router._failed(group, group.deployments[0], "BadRequestError"))
    assert set(picks(router, "g", 100)) == {"a", "b"}
    solo = router.resolve("solo")
    asyncio.run(router._failed(solo, solo.deployments[0], "InternalServerError"))
    assert router.pick(solo).model_id == "s"
    asyncio.run(router._failed(group, group.deployments[0], "InternalServerError"))  # control: this one cools
    assert set(picks(router, "g", 100)) == {"b"}


def test_allowed_fails_policy_per_error_class() -> None:
    router = build([mock("g", "a"), mock("g", "b")],
                   {"allowed_fails": 100, "allowed_fails_policy": {"RateLimitErrorAllowedFails": 0}})
    group = router.resolve("g")
    asyncio.run(router._failed(group, group.deployments[0], "InternalServerError"))
    assert set(picks(router, "g", 100)) == {"a", "b"}
    asyncio.run(router._failed(group, group.deployments[0], "RateLimitError"))
    assert set(picks(router, "g", 100)) == {"b"}


def test_a_retry_prefers_another_deployment() -> None:
    router = build([mock("g", "a"), mock("g", "b"), mock("g", "c")])
    group = router.resolve("g")
    assert "a" not in {router.pick(group, ["a"]).model_id for _ in range(100)}
    assert router.pick(group, ["a", "b", "c"]).model_id in {"a", "b", "c"}  # all tried: any


# --- names ----------------------------------------------------------------------------------------------------------
def test_aliases_and_wildcards_resolve_to_groups() -> None:
    router = build([mock("gpt-4o", "real"),
                    {"model_name": "openai/*", "litellm_params": {"model": "openai/*", "api_key": "sk-x" * 3}},
                    {"model_name": "*", "litellm_params": {"model": "openai/*", "api_base": "http://127.0.0.1:9/v1"}}],
                   {"model_group_alias": {"gpt4": "gpt-4o", "secret-name": {"model": "gpt-4o", "hidden": True}}})
    assert router.resolve("gpt4").name == "gpt-4o"
    assert router.resolve("secret-name").name == "gpt-4o"
    assert router.listed() == ["gpt-4o", "openai/*", "*", "gpt4"]  # hidden alias not listed
    specific = router.resolve("openai/gpt-4.1-mini")
    assert specific.deployments[0].upstream_model == "gpt-4.1-mini"
    assert specific.deployments[0].api_key == "sk-x" * 3  # from the openai/* entry, the more specific pattern
    anything = router.resolve("llama-3")
    assert anything.deployments[0].upstream_model == "llama-3"
    assert anything.deployments[0].api_base == "http://127.0.0.1:9/v1"
    no_wildcards = build([mock("gpt-4o")])
    assert no_wildcards.resolve("llama-3") is None
