"""Encryption at rest of the ``callback_vars`` of stored logging entries (AES-256-GCM).

The key is derived (HKDF-SHA256) from a salt key string: ``SLUICEGATE_SALT_KEY``, else LiteLLM's
``LITELLM_SALT_KEY``, else ``general_settings.master_key`` (LiteLLM's own fallback, so changing the master key then
needs ``sluicegate rotate-salt-key``). A stored value is the token ``sg1:<base64url(nonce || ciphertext+tag)>``; its
associated data names the table, the row and the entry's ``callback_name``, so a value copied to another row or
entry does not decrypt. ``sg_state.secrets_check`` holds a known value under the same key: start-up and every
write compare against it, so a wrong key is refused before anything is read or written with it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ("LITELLM_SALT_KEY_ENV", "NEW_SALT_KEY_ENV", "SALT_KEY_ENV", "SaltKeyError", "SecretBox",
           "box_from_environ", "is_sealed", "open_entries", "seal_entries")

SALT_KEY_ENV = "SLUICEGATE_SALT_KEY"
LITELLM_SALT_KEY_ENV = "LITELLM_SALT_KEY"
NEW_SALT_KEY_ENV = "SLUICEGATE_NEW_SALT_KEY"
MASTER_KEY_SOURCE = "general_settings.master_key"
TOKEN_PREFIX = "sg1:"
SETTING_HINT = (f"set {SALT_KEY_ENV} (or {LITELLM_SALT_KEY_ENV}) to the key they were written with (or, if none "
                f"was set, general_settings.master_key)")

_NONCE_BYTES = 12
_SENTINEL = b"sluicegate secrets_check v1"
_SENTINEL_CONTEXT = b'["sg_state","secrets_check"]'


class SaltKeyError(RuntimeError):
    """Stored secrets cannot be read or written with the configured salt key; the message is one line naming the
    setting to change."""


class SecretBox:
    """AES-256-GCM under a key derived from one salt key string; ``source`` names where that string came from."""

    __slots__ = ("_aead", "source")

    def __init__(self, salt_key: str, *, source: str = SALT_KEY_ENV) -> None:
        if not salt_key:
            raise ValueError(f"{source}: the salt key is empty")
        key = HKDF(algorithm=SHA256(), length=32, salt=b"sluicegate/callback_vars",
                   info=b"sg1 aes-256-gcm").derive(salt_key.encode())
        self._aead = AESGCM(key)
        self.source = source

    def __repr__(self) -> str:
        return f"SecretBox(source={self.source!r})"

    def encrypt(self, plaintext: bytes, context: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, context)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(sealed).decode("ascii")

    def decrypt(self, token: str, context: bytes) -> bytes:
        """The plaintext of ``token``; :class:`InvalidTag` if the key or the context differ (or it was altered)."""
        if not is_sealed(token):
            raise InvalidTag
        try:
            sealed = base64.urlsafe_b64decode(token[len(TOKEN_PREFIX):])
        except (binascii.Error, ValueError):
            raise InvalidTag from None
        if len(sealed) <= _NONCE_BYTES:
            raise InvalidTag
        return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context)

    # the key check kept in sg_state -------------------------------------------------------------------------
    def sentinel(self) -> str:
        return self.encrypt(_SENTINEL, _SENTINEL_CONTEXT)

    def opens(self, sentinel: str) -> bool:
        try:
            return self.decrypt(sentinel, _SENTINEL_CONTEXT) == _SENTINEL
        except InvalidTag:
            return False

    def check(self, sentinel: str | None) -> None:
        """Raise :class:`SaltKeyError` unless this is the key ``sentinel`` was written with (None: nothing stored)."""
        if sentinel is not None and not self.opens(sentinel):
            raise SaltKeyError(wrong_key_message(self))


def wrong_key_message(box: SecretBox | None) -> str:
    if box is None:
        return f"the database holds encrypted callback_vars and no salt key is set: {SETTING_HINT}"
    return (f"the salt key from {box.source} does not decrypt the callback_vars stored in the database: "
            f"{SETTING_HINT}; `sluicegate rotate-salt-key` changes keys")


def box_from_environ(environ: Mapping[str, str] | None = None, *, master_key: str | None = None) -> SecretBox | None:
    """The box for ``SLUICEGATE_SALT_KEY``, else ``LITELLM_SALT_KEY``, else the master key; None if none is set."""
    environ = os.environ if environ is None else environ
    for name in (SALT_KEY_ENV, LITELLM_SALT_KEY_ENV):
        if environ.get(name):
            return SecretBox(environ[name], source=name)
    if master_key:
        return SecretBox(master_key, source=MASTER_KEY_SOURCE)
    return None


# logging entries -------------------------------------------------------------------------------------------
def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(TOKEN_PREFIX)


def _context(table: str, row_id: str, callback_name: Any) -> bytes:
    return msgspec.json.encode([table, row_id, callback_name])


def seal_entries(box: SecretBox | None, entries: Any, *, table: str, row_id: str) -> tuple[Any, int]:
    """``entries`` with each non-empty ``callback_vars`` dict encrypted, and how many were.

    Anything that is not a list of entries (None: no callbacks; ``[]``: logging disabled) is returned as it is,
    and so are values already sealed. Raises :class:`SaltKeyError` if there is something to seal and no key.
    """
    if not isinstance(entries, list):
        return entries, 0
    sealed: list[Any] = []
    count = 0
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("callback_vars"), dict) and entry["callback_vars"]:
            if box is None:
                raise SaltKeyError(f"cannot store callback_vars without a salt key: set {SALT_KEY_ENV} (or "
                                   f"{LITELLM_SALT_KEY_ENV}, or general_settings.master_key)")
            plaintext = msgspec.json.encode(entry["callback_vars"])
            token = box.encrypt(plaintext, _context(table, row_id, entry.get("callback_name")))
            entry = {**entry, "callback_vars": token}
            count += 1
        sealed.append(entry)
    return sealed, count


def open_entries(box: SecretBox | None, entries: Any, *, table: str, row_id: str) -> Any:
    """The inverse of :func:`seal_entries`: every sealed ``callback_vars`` decrypted back into a dict.

    Raises :class:`SaltKeyError` naming the row and entry when one does not decrypt: a wrong key, or a value
    written for another row or entry.
    """
    if not isinstance(entries, list):
        return entries
    opened: list[Any] = []
    for entry in entries:
        if isinstance(entry, dict) and is_sealed(entry.get("callback_vars")):
            name = entry.get("callback_name")
            if box is None:
                raise SaltKeyError(wrong_key_message(None))
            try:
                plaintext = box.decrypt(entry["callback_vars"], _context(table, row_id, name))
            except InvalidTag:
                raise SaltKeyError(f"{table} row {row_id!r}: the callback_vars of its {name!r} entry do not decrypt "
                                   f"with the salt key from {box.source} (written with another key, or for "
                                   f"another row)") from None
            entry = {**entry, "callback_vars": msgspec.json.decode(plaintext)}
        opened.append(entry)
    return opened
