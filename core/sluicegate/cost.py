"""``response_cost``: what a request cost, from the `genai-prices` table and the config's own prices.

Looking a model up in the table and running its price calculation costs ~130 µs, so it is done once per
deployment when the gateway starts: :func:`resolve_price` turns the table's entry (and any price written in
``litellm_params`` / ``model_info``, which wins key by key) into a :class:`Price` of plain per-token floats, and
:meth:`Price.cost` prices each request's usage with a few multiplications. The arithmetic is the table's own:

- prompt tokens not read from or written to the cache at the input price; cache reads and writes at their own
  prices where the table (or config) has them, else at the input price;
- completion tokens at the output price, reasoning tokens at their own price where there is one;
- a price per request where the table has one;
- audio by the hour (``whisper-1``: the usage's ``audio_seconds``) and speech by the character (``tts-1``: the
  usage's ``characters``) where the table has those prices; images (the usage's ``images``) only at a price the
  config sets (``output_cost_per_image``: the table prices no image by the image);
- tiered prices (Anthropic's and Gemini's long-context rates) by the prompt's size: crossing a tier prices every
  token at that tier's rate.

A price that changes with time (a new price from a date on, DeepSeek's off-peak hours) keeps the moment its
current rate stops applying, and is resolved again from the same entry when a request comes after it.
``tests/test_core_cost.py`` holds these numbers equal to what ``genai_prices.calc_price`` computes for every
model in the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice

__all__ = ("PRICE_KEYS", "Price", "Rates", "lookup_model", "resolve_price")

PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
              "cache_creation_input_token_cost", "output_cost_per_reasoning_token", "input_cost_per_second",
              "input_cost_per_character", "output_cost_per_image")
"""LiteLLM's names for the prices a config may set (USD per token, per second of audio, per character spoken, per
image), in ``litellm_params`` or ``model_info``."""

# LiteLLM's key -> the table's price key (USD per million tokens)
_TABLE_KEYS = {"input_cost_per_token": "input_mtok", "output_cost_per_token": "output_mtok",
               "cache_read_input_token_cost": "cache_read_mtok",
               "cache_creation_input_token_cost": "cache_write_mtok",
               "output_cost_per_reasoning_token": "output_reasoning_mtok"}
_PER_REQUEST_KEY = "requests_kcount"  # USD per thousand requests


class Rates:
    """USD per token of each kind, and per request, for one band of prompt sizes. Unpriced kinds already hold
    the rate they fall back to (cache reads and writes: input; reasoning: output), so pricing never branches."""

    __slots__ = ("audio_second", "cache_read", "cache_write", "character", "image", "input", "output", "per_request",
                 "reasoning")

    def __init__(self, *, input: float, output: float, cache_read: float, cache_write: float,  # noqa: A002
                 reasoning: float, per_request: float, audio_second: float = 0.0, character: float = 0.0,
                 image: float = 0.0) -> None:
        self.input = input
        self.output = output
        self.cache_read = cache_read
        self.cache_write = cache_write
        self.reasoning = reasoning
        self.per_request = per_request
        self.audio_second = audio_second
        self.character = character
        self.image = image

    def __repr__(self) -> str:
        return (f"Rates(input={self.input!r}, output={self.output!r}, cache_read={self.cache_read!r}, "
                f"cache_write={self.cache_write!r}, reasoning={self.reasoning!r}, per_request={self.per_request!r})")


class Price:
    """One deployment's prices, resolved once; :meth:`cost` is the per-request part.

    ``source`` says where the prices came from (``"genai-prices: anthropic/claude-sonnet-4-5"``, ``"config"``,
    or both), for the start-up summary and for tests.
    """

    __slots__ = ("_bands", "_model", "_overrides", "source", "until")

    def __init__(self, model: ModelInfo | None, overrides: Mapping[str, float], source: str, at: float) -> None:
        self._model = model
        self._overrides = dict(overrides)
        self.source = source
        self._bands: tuple[tuple[int, Rates], ...] = ()
        self.until = math.inf
        self._resolve(at)

    def _resolve(self, at: float) -> None:
        overrides = self._overrides
        if self._model is None:
            self._bands = ((-1, _rates(None, 0, overrides)),)
            self.until = math.inf
            return
        moment = datetime.fromtimestamp(at, UTC)
        table_price = self._model.get_prices(moment)
        starts = sorted({tier.start for value in vars(table_price).values() if hasattr(value, "tiers")
                         for tier in value.tiers})
        # a band holds the prompts with more than `start` tokens (and no more than the next start)
        self._bands = tuple((start, _rates(table_price, start + 1, overrides)) for start in reversed(starts)) + (
            (-1, _rates(table_price, 0, overrides)),)
        self.until = _next_change(self._model, moment)

    def rates(self, prompt_tokens: int = 0) -> Rates:
        """The rates a prompt of ``prompt_tokens`` tokens pays."""
        for start, rates in self._bands:
            if prompt_tokens > start:
                return rates
        return self._bands[-1][1]

    def cost(self, usage: Mapping[str, Any], at: float) -> float:
        """USD for one answer's OpenAI ``usage`` (``prompt_tokens_details.cached_tokens``, Anthropic's
        ``cache_creation_input_tokens``, ``completion_tokens_details.reasoning_tokens`` included), at ``at``
        (seconds since the epoch)."""
        if at >= self.until:
            self._resolve(at)
        prompt = usage.get("prompt_tokens") or 0
        completion = usage.get("completion_tokens") or 0
        details = usage.get("prompt_tokens_details")
        if details.__class__ is dict:
            cached = details.get("cached_tokens") or 0
            written = usage.get("cache_creation_input_tokens") or details.get("cache_creation_tokens") or 0
        else:
            cached = usage.get("cache_read_input_tokens") or usage.get("prompt_cache_hit_tokens") or 0
            written = usage.get("cache_creation_input_tokens") or 0
        details = usage.get("completion_tokens_details")
        reasoning = (details.get("reasoning_tokens") or 0) if details.__class__ is dict else 0
        bands = self._bands
        rates = bands[0][1] if len(bands) == 1 else self.rates(prompt)
        fresh = prompt - cached - written
        cost = (rates.per_request + (fresh if fresh > 0 else 0) * rates.input + cached * rates.cache_read
                + written * rates.cache_write + (completion - reasoning) * rates.output
                + reasoning * rates.reasoning)
        if rates.audio_second or rates.character or rates.image:  # seconds transcribed, characters spoken, images
            cost += ((usage.get("audio_seconds") or 0) * rates.audio_second
                     + (usage.get("characters") or 0) * rates.character + (usage.get("images") or 0) * rates.image)
        return cost

    def __repr__(self) -> str:
        return f"Price({self.source}: {self.rates()!r})"


def _table_rate(table_price: ModelPrice | None, key: str, prompt_tokens: int) -> float | None:
    value = getattr(table_price, key, None) if table_price is not None else None
    if value is None:
        return None
    tiers = getattr(value, "tiers", None)
    if tiers is not None:  # TieredPrices: the highest tier the prompt is past (genai_prices.types.calc_unit_price)
        applicable = value.base
        for tier in reversed(tiers):
            if prompt_tokens > tier.start:
                applicable = tier.price
                break
        value = applicable
    return float(value) / 1_000_000


def _rates(table_price: ModelPrice | None, prompt_tokens: int, overrides: Mapping[str, float]) -> Rates:
    found = {}
    for ours, theirs in _TABLE_KEYS.items():
        given = overrides.get(ours)
        found[ours] = float(given) if given is not None else _table_rate(table_price, theirs, prompt_tokens)
    per_request = getattr(table_price, _PER_REQUEST_KEY, None) if table_price is not None else None
    input_rate = found["input_cost_per_token"] or 0.0
    output_rate = found["output_cost_per_token"] or 0.0

    def either(value: float | None, fallback: float) -> float:
        return fallback if value is None else value

    audio_hour = next((getattr(table_price, key, None) for key in ("input_audio_hours", "audio_hours")
                       if table_price is not None and getattr(table_price, key, None) is not None), None)
    mchars = getattr(table_price, "input_mchars", None) if table_price is not None else None
    second, character = overrides.get("input_cost_per_second"), overrides.get("input_cost_per_character")
    return Rates(input=input_rate, output=output_rate,
                 audio_second=float(second) if second is not None else
                 float(audio_hour) / 3600 if audio_hour is not None else 0.0,
                 character=float(character) if character is not None else
                 float(mchars) / 1_000_000 if mchars is not None else 0.0,
                 image=float(overrides.get("output_cost_per_image") or 0.0),
                 cache_read=either(found["cache_read_input_token_cost"], input_rate),
                 cache_write=either(found["cache_creation_input_token_cost"], input_rate),
                 reasoning=either(found["output_cost_per_reasoning_token"], output_rate),
                 per_request=float(per_request) / 1000 if per_request is not None else 0.0)


def _next_change(model: ModelInfo, moment: datetime) -> float:
    """When the table's prices for ``model`` may next change after ``moment`` (seconds since the epoch), or inf."""
    prices = model.prices
    if not isinstance(prices, list):
        return math.inf
    changes = []
    for conditional in prices:
        constraint = conditional.constraint
        start_date = getattr(constraint, "start_date", None)
        if start_date is not None:
            changes.append(datetime.combine(start_date, time(0), UTC))
        for name in ("start_time", "end_time"):
            value: time | None = getattr(constraint, name, None)
            if value is None:
                continue
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            today = datetime.combine(moment.date(), value).astimezone(UTC)
            changes += [today - timedelta(days=1), today, today + timedelta(days=1)]
    later = [change.timestamp() for change in changes if change > moment]
    return min(later, default=math.inf)


def lookup_model(provider_id: str, model_ref: str) -> ModelInfo | None:
    """The table's entry for ``model_ref`` at ``provider_id`` (a LiteLLM prefix or a genai-prices provider id;
    genai-prices matches both), or None when the table has no such provider or model."""
    from genai_prices import data_snapshot  # ~0.6 s and ~15 MB, once per process: only when a model needs it

    try:
        _, model = data_snapshot.get_snapshot().find_provider_model(model_ref, None, provider_id, None)
    except LookupError:
        return None
    return model


def resolve_price(provider_id: str, model_ref: str, overrides: Mapping[str, float | None],
                  at: float) -> Price | None:
    """The :class:`Price` of ``model_ref`` served by ``provider_id``: the table's entry with ``overrides``
    (LiteLLM's :data:`PRICE_KEYS`, USD per token) replacing its prices key by key; None when neither knows it."""
    given = {key: float(value) for key, value in overrides.items() if value is not None and key in PRICE_KEYS}
    model = lookup_model(provider_id, model_ref)
    if model is None and not given:
        return None
    sources = []
    if model is not None:
        sources.append(f"genai-prices {model.id}")
    if given:
        sources.append("config " + ", ".join(sorted(given)))
    return Price(model, given, " + ".join(sources), at)
