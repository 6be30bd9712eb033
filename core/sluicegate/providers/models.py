"""The model list: ``model_name`` → deployment (provider, upstream model, base URL, key, costs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from sluicegate.config import ModelEntry

__all__ = ("Deployment", "ModelRouter")

DEFAULT_API_BASES = {
    "openai": "https://api.openai.com/v1",
    "mistral": "https://api.mistral.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together_ai": "https://api.together.xyz/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
}


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    model_name: str
    provider: str
    upstream_model: str
    api_base: str | None
    api_key: str | None = msgspec.field(default=None)
    timeout: float = 600.0
    mock_response: Any = None
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0

    def __repr__(self) -> str:  # never show the upstream key
        return f"Deployment({self.model_name!r} -> {self.provider}/{self.upstream_model} at {self.api_base})"

    @property
    def completions_url(self) -> str:
        return f"{(self.api_base or '').rstrip('/')}/chat/completions"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_cost_per_token + completion_tokens * self.output_cost_per_token


class ModelRouter:
    __slots__ = ("deployments",)

    def __init__(self, entries: list[ModelEntry]) -> None:
        self.deployments: dict[str, Deployment] = {}
        for entry in entries:
            params = entry.litellm_params
            provider, _, upstream = params.model.partition("/")
            if not upstream:
                provider, upstream = "openai", params.model
            self.deployments[entry.model_name] = Deployment(
                model_name=entry.model_name, provider=provider, upstream_model=upstream,
                api_base=params.api_base or DEFAULT_API_BASES.get(provider), api_key=params.api_key,
                timeout=params.timeout, mock_response=params.mock_response,
                input_cost_per_token=params.input_cost_per_token,
                output_cost_per_token=params.output_cost_per_token)

    def get(self, name: str) -> Deployment | None:
        return self.deployments.get(name)

    def names(self) -> list[str]:
        return list(self.deployments)
