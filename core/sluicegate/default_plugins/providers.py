"""The built-in providers, registered through ``register_providers`` like any third-party one."""

from __future__ import annotations

from sluicegate.hookspecs import hookimpl
from sluicegate.providers.anthropic import AnthropicProvider
from sluicegate.providers.azure import AzureProvider
from sluicegate.providers.bedrock import BedrockProvider
from sluicegate.providers.gemini import GeminiProvider
from sluicegate.providers.openai_compatible import openai_compatible_providers
from sluicegate.providers.vertex_ai import VertexAIProvider


@hookimpl
def register_providers(register) -> None:
    for provider_class in openai_compatible_providers():
        register(provider_class)
    register(AzureProvider)
    register(AnthropicProvider)
    register(GeminiProvider)
    register(VertexAIProvider)
    register(BedrockProvider)
