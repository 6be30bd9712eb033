"""``SinkStandardTests``: the conformance suite every sink package subclasses.

Subclass it in ``tests/test_standard.py``, set ``sink_class`` and provide a ``callback_vars`` fixture with
valid raw variables (pointing at a loopback server where the sink talks to one)::

    class TestMySink(SinkStandardTests):
        sink_class = MySink

        @pytest.fixture
        def callback_vars(self, receiver):
            return {"endpoint": receiver.url, "api_key": "secret-value"}
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import pytest

from sluicegate.sinks.base import CallbackVars, HealthResult, Sink
from sluicegate.sinks.vars import VarsError, decode_vars, encode_vars, secret_fields

__all__ = ("SinkStandardTests",)


class SinkStandardTests:
    sink_class: ClassVar[type[Sink]]

    @pytest.fixture
    def callback_vars(self) -> dict[str, Any]:
        raise NotImplementedError("provide a `callback_vars` fixture with valid raw variables")

    @pytest.fixture
    async def sink(self, callback_vars: dict[str, Any]):
        sink = self.sink_class(decode_vars(self.sink_class.Vars, callback_vars))
        yield sink
        await sink.aclose()

    def test_callback_name_is_a_plain_identifier(self) -> None:
        name = self.sink_class.callback_name
        assert isinstance(name, str) and name.isidentifier() and name == name.lower()

    def test_vars_is_a_frozen_callback_vars_struct(self) -> None:
        assert issubclass(self.sink_class.Vars, CallbackVars)
        assert self.sink_class.Vars.__struct_config__.frozen
        assert self.sink_class.Vars.__struct_config__.forbid_unknown_fields

    def test_vars_decode(self, callback_vars: dict[str, Any]) -> None:
        decoded = decode_vars(self.sink_class.Vars, callback_vars)
        assert isinstance(decoded, self.sink_class.Vars)

    def test_vars_reject_unknown_keys(self, callback_vars: dict[str, Any]) -> None:
        with pytest.raises(VarsError) as info:
            decode_vars(self.sink_class.Vars, {**callback_vars, "surely_not_a_var": "x"})
        assert [e.field for e in info.value.errors] == ["surely_not_a_var"]

    def test_aliases_point_at_fields(self) -> None:
        fields = set(self.sink_class.Vars.__struct_fields__)
        assert set(self.sink_class.Vars.aliases.values()) <= fields

    def test_secrets_are_masked(self, callback_vars: dict[str, Any]) -> None:
        decoded = decode_vars(self.sink_class.Vars, callback_vars)
        secrets = [callback_vars[k] for k in callback_vars
                   if self.sink_class.Vars.aliases.get(k, k) in secret_fields(self.sink_class.Vars)]
        shown = repr(decoded) + str(encode_vars(decoded)) + msgspec.json.encode(encode_vars(decoded)).decode()
        for secret in secrets:
            if isinstance(secret, str) and secret:
                assert secret not in shown

    def test_env_defaults_returns_a_mapping(self) -> None:
        assert isinstance(self.sink_class.env_defaults({}), dict)

    async def test_send_empty_batch_is_harmless(self, sink: Sink) -> None:
        await sink.send([])

    async def test_health_check_returns_health_result(self, sink: Sink) -> None:
        result = await sink.health_check()
        assert isinstance(result, HealthResult)

    async def test_aclose_is_idempotent(self, sink: Sink) -> None:
        await sink.aclose()
        await sink.aclose()
