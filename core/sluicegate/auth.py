"""Master key and virtual keys: hashing, generation, and the in-process cache of who a key is.

Keys are stored as sha256 hex; the plaintext exists only in the ``/key/generate`` response. The cache maps a
key's hash to an :class:`AuthContext` (key record, team record, resolved logging routes); the whole cache is
dropped when ``sg_state.version`` changes, so an update, delete or block applies to the next request here and
within one poll interval in every other process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.db.store import KeyRecord, TeamRecord, UserRecord
    from sluicegate.routing import CallbackSet

__all__ = ("AuthContext", "KeyCache", "generate_key", "hash_key", "key_name")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "sk-" + secrets.token_urlsafe(16)


def key_name(key: str) -> str:
    """The display form LiteLLM uses: ``sk-...abcd``."""
    return f"sk-...{key[-4:]}"


class AuthContext(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: built once per key and cached until something changes.

    ``is_admin`` is the proxy admin's full power: the master key, or a key of a user whose role is
    ``proxy_admin``. ``user`` is the key's owner and ``team_roles`` that user's role in each of their teams
    (``admin`` or ``user``); what they allow is decided in :mod:`sluicegate.permissions`.
    """

    token_id: str
    is_admin: bool
    key: KeyRecord | None = None
    team: TeamRecord | None = None
    callbacks: CallbackSet | None = None
    user: UserRecord | None = None
    team_roles: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def team_id(self) -> str | None:
        return self.key.team_id if self.key else None

    @property
    def user_id(self) -> str | None:
        return self.user.user_id if self.user else None

    @property
    def role(self) -> str | None:
        """The caller's proxy-wide role: ``proxy_admin`` for the master key, the owner's ``user_role`` for a
        user's key, None for a key without a user (it calls models and reads itself, nothing more)."""
        if self.key is None:
            return "proxy_admin" if self.is_admin else None
        return self.user.user_role if self.user else None


def bearer_token(authorization: str | None, api_key_header: str | None = None) -> str:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        if not _ and authorization.startswith("sk-"):
            return authorization.strip()
    if api_key_header:
        return api_key_header.strip()
    raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
                   type="authentication_error", code="401")


def is_master(token: str, master_key: str | None) -> bool:
    return master_key is not None and hmac.compare_digest(token.encode(), master_key.encode())


def check_usable(record: KeyRecord) -> None:
    if record.blocked:
        raise ApiError(401, "this key is blocked", type="authentication_error", code="401")
    if record.expires is not None and record.expires <= datetime.now(UTC):
        raise ApiError(401, "this key has expired", type="authentication_error", code="401")


class KeyCache:
    """A bounded LRU of :class:`AuthContext` by key hash, with a smaller one for unknown hashes."""

    __slots__ = ("_known", "_unknown", "max_size", "version")

    def __init__(self, max_size: int = 100_000) -> None:
        self._known: OrderedDict[str, AuthContext] = OrderedDict()
        self._unknown: OrderedDict[str, None] = OrderedDict()
        self.max_size = max_size
        self.version = -1

    def get(self, token_id: str) -> AuthContext | None:
        ctx = self._known.get(token_id)
        if ctx is not None:
            self._known.move_to_end(token_id)
        return ctx

    def is_unknown(self, token_id: str) -> bool:
        return token_id in self._unknown

    def put(self, ctx: AuthContext) -> None:
        self._known[ctx.token_id] = ctx
        if len(self._known) > self.max_size:
            self._known.popitem(last=False)

    def put_unknown(self, token_id: str) -> None:
        self._unknown[token_id] = None
        if len(self._unknown) > 10_000:
            self._unknown.popitem(last=False)

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()

    def __len__(self) -> int:
        return len(self._known)
