"""Hook implementations of the ``langfuse`` sink plugin."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sluicegate import Sink, hookimpl

from sluicegate_langfuse_sink.sink import LangfuseSink, host_problems, key_problems, normalize_host

__all__ = ("register_sinks", "validate_callback_vars")


@hookimpl
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    register(LangfuseSink)


def _text(value: Any) -> str:
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value or "")


@hookimpl
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    """Catch what would make every delivery fail: a bad host, swapped keys, a ``:`` in the public key."""
    if callback_name != LangfuseSink.callback_name:
        return None
    problems = []
    public_key = _text(callback_vars.get("langfuse_public_key"))
    secret_key = _text(callback_vars.get("langfuse_secret_key", callback_vars.get("langfuse_secret")))
    if not public_key.strip():
        problems.append("langfuse_public_key: must not be empty")
    elif ":" in public_key:
        problems.append("langfuse_public_key: must not contain ':' (it is the Basic auth user name)")
    if not secret_key.strip():
        problems.append("langfuse_secret_key: must not be empty")
    problems.extend(key_problems(public_key, secret_key))
    if public_key.startswith("sk-lf-") or secret_key.startswith("pk-lf-"):
        problems.append("langfuse_public_key: looks like a secret key (sk-lf-...); "
                        "are langfuse_public_key and langfuse_secret_key swapped?")
    host = callback_vars.get("langfuse_host")
    if host is not None:
        problems.extend(f"langfuse_host: {reason}" for reason in host_problems(normalize_host(str(host), {})))
    return problems
