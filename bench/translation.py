"""CPU per request of each provider's translation in process (python -m bench.translation), and Bedrock's SigV4.

A request is what the gateway does for a non-streamed chat between reading the client's JSON and writing its
answer, minus HTTP: the provider's parameter check (``accepted``), the request translated and encoded as the
upstream's JSON (with the upstream head lines where they are built per request), the upstream's answer (the
bench mock's bytes, ``bench/mock_upstream.py``) decoded, translated to OpenAI's shape and encoded for the client.
``azure`` is OpenAI's bytes at Azure's URL: its row is the body re-encoded with the deployment's model name and
the head lines, the answer passing as bytes (what the gateway reads of every answer for usage is the same for all
providers and not counted here). The ``openai`` row is the passthrough for reference. Bedrock's SigV4 signature
of the same request (botocore's ``SigV4Auth``, through ``sluicegate.providers.aws_auth.sign_headers``, as the
gateway signs every Bedrock request) is measured apart.

Each row: N requests timed with ``time.process_time``, 3 runs; median and spread (max - min) printed.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import msgspec

from bench.mock_upstream import (ANTHROPIC_MESSAGE, ANTHROPIC_MODEL, BEDROCK_MODEL, BEDROCK_RESPONSE, GEMINI_MODEL,
                                 GEMINI_RESPONSE)
from sluicegate.providers.anthropic import AnthropicProvider
from sluicegate.providers.aws_auth import sign_headers
from sluicegate.providers.azure import AzureProvider
from sluicegate.providers.bedrock import BedrockProvider
from sluicegate.providers.gemini import GeminiProvider
from sluicegate.providers.models import Deployment
from sluicegate.providers.openai_compatible import OpenAICompatibleProvider, upstream_body

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
RUNS = 3
BODY = {"model": "bench", "messages": [{"role": "system", "content": "You are a helpful assistant. Be brief."},
                                       {"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 256}
RAW = msgspec.json.encode(BODY)
REQUEST_ID = "req_0123456789abcdef"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def deployment(provider: str, model: str, api_key: str | None = "bench-key") -> Deployment:
    return Deployment(model_name="bench", custom_llm_provider=provider, upstream_model=model,
                      api_base="http://127.0.0.1:9", api_key=api_key)


def anthropic() -> Callable[[], object]:
    p = AnthropicProvider(deployment("anthropic", ANTHROPIC_MODEL), AnthropicProvider.Params())

    def one() -> object:
        body = p.accepted(dict(BODY))
        _encode(p.translate_request(body, stream=False)), p._headers(REQUEST_ID)
        return _encode(p.translate_response(_decode(ANTHROPIC_MESSAGE), json_mode=p.json_mode(body)))
    return one


def gemini() -> Callable[[], object]:
    p = GeminiProvider(deployment("gemini", GEMINI_MODEL), GeminiProvider.Params())
    head = p._head

    def one() -> object:
        body = p.accepted(dict(BODY))
        _encode(p.translation.request(body)), head + REQUEST_ID.encode()
        return _encode(p.translation.response(_decode(GEMINI_RESPONSE)))
    return one


def bedrock() -> Callable[[], object]:
    p = BedrockProvider(deployment("bedrock", BEDROCK_MODEL, api_key=None),
                        BedrockProvider.Params(aws_region_name="us-east-1"))

    def one() -> object:
        body = p.accepted(dict(BODY))
        _encode(p.translate_request(body))
        return _encode(p.translate_response(_decode(BEDROCK_RESPONSE), json_mode=p.json_mode(body)))
    return one


def azure() -> Callable[[], object]:
    p = AzureProvider(deployment("azure", "mock-gpt"), AzureProvider.Params(api_version="2024-10-21"))

    def one() -> object:
        body = p.accepted(dict(BODY))
        return upstream_body(body, RAW, "mock-gpt"), p._headers(REQUEST_ID)
    return one


def openai() -> Callable[[], object]:
    p = OpenAICompatibleProvider(deployment("openai", "bench"), OpenAICompatibleProvider.Params())

    def one() -> object:
        body = p.accepted(dict(BODY))
        return upstream_body(body, RAW, "bench")
    return one


def signing() -> Callable[[], object]:
    from botocore.credentials import Credentials

    p = BedrockProvider(deployment("bedrock", BEDROCK_MODEL, api_key=None),
                        BedrockProvider.Params(aws_region_name="us-east-1"))
    p.url = f"https://bedrock-runtime.us-east-1.amazonaws.com{p.url.split('127.0.0.1:9', 1)[1]}"
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                              "FwoGZXIvYXdzEJr//////////wEaDbenchsessiontoken").get_frozen_credentials()
    payload = _encode(p.translate_request(BODY))
    headers = {"Content-Type": "application/json"}
    return lambda: sign_headers(credentials, "bedrock", "us-east-1", p.url, payload, headers)


def measure(one: Callable[[], object], n: int) -> tuple[float, float]:
    for _ in range(min(n, 1000)):  # warm caches and the allocator
        one()
    runs = []
    for _ in range(RUNS):
        started = time.process_time()
        for _ in range(n):
            one()
        runs.append((time.process_time() - started) / n * 1e6)
    return statistics.median(runs), max(runs) - min(runs)


ROWS = (("openai (passthrough, reference)", openai, 1), ("azure", azure, 1), ("anthropic", anthropic, 1),
        ("gemini", gemini, 1), ("bedrock", bedrock, 1),
        ("bedrock SigV4 (botocore's SigV4Auth)", signing, 4))

if __name__ == "__main__":
    print(f"| row | µs CPU per request, median of {RUNS} | spread |")
    print("|---|---:|---:|")
    for label, build, divisor in ROWS:
        median, spread = measure(build(), max(1000, N // divisor))
        print(f"| {label} | {median:.1f} | {spread:.1f} |", flush=True)
