"""Provider configuration at start-up: prefixes, LiteLLM's default bases and environment variables, and every
configuration error reported with its YAML path before the gateway serves anything."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.config import ConfigError, parse_settings
from sluicegate.plugins import get_plugin_manager
from sluicegate.providers.models import build_deployments
from sluicegate.providers.registry import ProviderRegistry


@pytest.fixture(scope="module")
def registry() -> ProviderRegistry:
    return ProviderRegistry.from_plugin_manager(get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": ""}))


def build(registry: ProviderRegistry, *params: dict[str, Any], environ: dict[str, str] | None = None,
          **litellm: Any) -> dict[str, Any]:
    models = [{"model_name": f"m{i}", "litellm_params": p} for i, p in enumerate(params)]
    return {d.model_name: d for d in build_deployments(
        parse_settings({"model_list": models, "litellm_settings": litellm}), registry, environ or {})}


def problems(registry: ProviderRegistry, *params: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build(registry, *params, environ=environ)
    return info.value.problems


def test_the_openai_compatible_family_is_registered_with_litellms_prefixes(registry: ProviderRegistry) -> None:
    assert {"openai", "groq", "mistral", "deepseek", "together_ai", "fireworks_ai", "openrouter", "xai",
            "perplexity", "cerebras", "ollama", "ollama_chat", "hosted_vllm", "lm_studio", "azure",
            "anthropic"} <= set(registry.names())


@pytest.mark.parametrize(("prefix", "base", "env_key"), [
    ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    ("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    ("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    ("deepseek", "https://api.deepseek.com/beta", "DEEPSEEK_API_KEY"),
    ("together_ai", "https://api.together.xyz/v1", "TOGETHERAI_API_KEY"),
    ("fireworks_ai", "https://api.fireworks.ai/inference/v1", "FIREWORKS_AI_API_KEY"),
    ("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    ("xai", "https://api.x.ai/v1", "XAI_API_KEY"),
    ("perplexity", "https://api.perplexity.ai", "PERPLEXITYAI_API_KEY"),
    ("cerebras", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    ("ollama_chat", "http://localhost:11434/v1", "OLLAMA_API_KEY"),
    ("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
])
def test_default_base_and_key_from_litellms_environment_variable(registry: ProviderRegistry, prefix: str,
                                                                  base: str, env_key: str) -> None:
    deployment = build(registry, {"model": f"{prefix}/some-model"}, environ={env_key: "sk-from-env"})["m0"]
    assert (deployment.custom_llm_provider, deployment.upstream_model) == (prefix, "some-model")
    assert deployment.api_base == base and deployment.api_key == "sk-from-env"
    assert deployment.provider.custom_llm_provider == prefix
    # the config's own values win over the environment
    own = build(registry, {"model": f"{prefix}/x", "api_base": "http://h:1/v1", "api_key": "sk-own"},
                environ={env_key: "sk-from-env"})["m0"]
    assert (own.api_base, own.api_key) == ("http://h:1/v1", "sk-own")


def test_model_without_prefix_is_openai_unless_custom_llm_provider_says(registry: ProviderRegistry) -> None:
    deployments = build(registry, {"model": "gpt-4o"}, {"model": "llama3", "custom_llm_provider": "groq"})
    assert deployments["m0"].custom_llm_provider == "openai" and deployments["m0"].upstream_model == "gpt-4o"
    assert deployments["m1"].custom_llm_provider == "groq"


def test_ollama_base_written_as_the_server_root_gets_the_openai_route(registry: ProviderRegistry) -> None:
    deployment = build(registry, {"model": "ollama/llama3"}, environ={"OLLAMA_API_BASE": "http://gpu:11434"})["m0"]
    assert deployment.api_base == "http://gpu:11434/v1"


def test_unknown_prefix_names_the_known_providers_and_a_suggestion(registry: ProviderRegistry) -> None:
    (problem,) = problems(registry, {"model": "antropic/claude-x", "api_key": "k"})
    assert problem.startswith("model_list[0].litellm_params.model: unknown provider 'antropic' "
                              "(did you mean 'anthropic'?); known providers: anthropic, azure, ")


def test_missing_required_params_name_the_yaml_path_and_all_are_reported(registry: ProviderRegistry) -> None:
    found = problems(registry, {"model": "openai/a"}, {"model": "anthropic/claude-x"},
                     {"model": "azure/gpt-4o", "api_base": "https://r.openai.azure.com", "api_key": "k"},
                     {"model": "azure/gpt-4o", "api_key": "k", "api_version": "2024-10-21"},
                     {"model": "hosted_vllm/m"})
    assert found == [
        "model_list[1].litellm_params.api_key: required for anthropic (or set ANTHROPIC_API_KEY)",
        "model_list[2].litellm_params.api_version: required for azure (e.g. 2024-10-21, or v1; or set "
        "AZURE_API_VERSION)",
        "model_list[3].litellm_params.api_base: required for azure (or set AZURE_API_BASE)",
        "model_list[4].litellm_params.api_base: required for hosted_vllm (or set HOSTED_VLLM_API_BASE)"]
    # negative control: the same models with the environment LiteLLM reads
    environ = {"ANTHROPIC_API_KEY": "k", "AZURE_API_VERSION": "2024-10-21", "AZURE_API_BASE": "https://r.x",
               "HOSTED_VLLM_API_BASE": "http://vllm:8000/v1"}
    assert len(build(registry, {"model": "openai/a"}, {"model": "anthropic/claude-x"},
                     {"model": "azure/gpt-4o", "api_base": "https://r.openai.azure.com", "api_key": "k"},
                     {"model": "azure/gpt-4o", "api_key": "k", "api_version": "2024-10-21"},
                     {"model": "hosted_vllm/m"}, environ=environ)) == 5


def test_a_model_answering_offline_needs_no_credentials(registry: ProviderRegistry) -> None:
    assert build(registry, {"model": "anthropic/claude-x", "mock_response": "hi"})["m0"].api_key is None


def test_provider_params_refuse_unknown_keys_and_wrong_types(registry: ProviderRegistry) -> None:
    assert problems(registry, {"model": "azure/d", "api_base": "https://r", "api_key": "k", "api_verison": "v1"}) == [
        "model_list[0].litellm_params.api_verison: not a parameter of azure (did you mean 'api_version'?); its "
        "own parameters: api_version, azure_ad_token, tenant_id, client_id, client_secret, azure_scope, "
        "azure_authority_host, extra_headers"]
    assert problems(registry, {"model": "openai/a", "api_bse": "http://h"})[0].startswith(
        "model_list[0].litellm_params.api_bse: not a parameter of openai (did you mean 'api_base'?)")
    (wrong,) = problems(registry, {"model": "anthropic/c", "api_key": "k", "extra_headers": ["x"]})
    assert wrong == "model_list[0].litellm_params.extra_headers: Expected `object | null`, got `array`"
    assert problems(registry, {"model": "openai/a", "api_base": "api.example.com"}) == [
        "model_list[0].litellm_params.api_base: not an http(s) URL: 'api.example.com'"]


def test_litellm_router_keys_are_ignored_with_a_warning_not_refused(registry: ProviderRegistry) -> None:
    settings = parse_settings({"model_list": [{"model_name": "a", "litellm_params": {
        "model": "groq/llama", "api_key": "k", "rpm": 10, "tpm": 1000, "max_retries": 2}}]})
    assert "model_list[0].litellm_params.max_retries" in settings.warnings[0]  # rpm/tpm are the router's now
    assert build_deployments(settings, registry, {})[0].custom_llm_provider == "groq"


def test_os_environ_references_still_resolve_for_provider_params(registry: ProviderRegistry,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_TEST_AZURE_VERSION", "2024-10-21")
    monkeypatch.setenv("SLUICEGATE_TEST_AZURE_KEY", "azure-secret")
    deployment = build(registry, {"model": "azure/gpt4o-prod", "api_base": "https://r.openai.azure.com/",
                                  "api_key": "os.environ/SLUICEGATE_TEST_AZURE_KEY",
                                  "api_version": "os.environ/SLUICEGATE_TEST_AZURE_VERSION"})["m0"]
    assert deployment.provider.url == ("https://r.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
                                       "?api-version=2024-10-21")
    assert deployment.api_key == "azure-secret" and "azure-secret" not in repr(deployment)


def test_drop_params_per_model_wins_over_the_global_setting(registry: ProviderRegistry) -> None:
    deployments = build(registry, {"model": "openai/a"}, {"model": "openai/b", "drop_params": False},
                        drop_params=True)
    assert (deployments["m0"].drop_params, deployments["m1"].drop_params) == (True, False)
