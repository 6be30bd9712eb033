"""The built-in redactors (e-mail, phone, payment card, IBAN, IP address, secrets, named regular expressions),
registered through ``register_redactors`` like any third-party detector.

Each detector is a regular expression that finds candidates cheaply, then a check that confirms them where the
format has one (Luhn for cards, mod-97 and the country's length for IBANs, :mod:`ipaddress` for IP addresses,
entropy for unprefixed secrets). What each catches and misses: docs/redaction.md.
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
from collections import Counter
from typing import Any

import msgspec

from sluicegate.hookspecs import hookimpl
from sluicegate.redaction.base import Redactor, RedactorOptions

__all__ = ("BUILTIN_REDACTORS", "IBAN_LENGTHS", "CardRedactor", "EmailRedactor", "IbanRedactor", "IpRedactor",
           "PhoneRedactor", "RegexRedactor", "SecretRedactor", "digit_count", "entropy", "iban_valid", "long_tokens",
           "luhn_valid", "numeric_runs")


class _Scan:
    """One text as the digit-led detectors (card, IBAN, IP, phone) see it, made once per text.

    ``mapped`` holds one class byte per character (``encode("ascii", "replace")`` gives one byte per character,
    ``?`` for any other, so offsets are the text's); ``digits`` is how many ASCII digits the text has. The detectors
    find their candidates over ``mapped`` with patterns that start with a literal (the engine finds those with a
    fast search; a pattern of their own over the text would be tried at every position), then run their own
    pattern and check only there.
    """

    __slots__ = ("_derive", "_long_runs", "digits", "mapped", "text")

    def __init__(self, text: str, mapped: bytes, digits: int, long_runs: list[tuple[int, int]] | None,
                 derive: tuple[_Scan, list[tuple[int, int]], int] | None = None) -> None:
        self.text = text
        self.mapped = mapped
        self.digits = digits
        self._long_runs = long_runs
        self._derive = derive

    def long_runs(self) -> list[tuple[int, int]]:
        """The numeric runs (see :func:`numeric_runs`) of at least 7 characters: where a card, a phone number or
        an IPv4 address can be. Found once per text, then carried over to the text a detector returns when a
        detector asks for them there (the IBAN and secret detectors do not)."""
        runs = self._long_runs
        if runs is None:
            derive, self._derive = self._derive, None
            if derive is not None and derive[0]._long_runs is not None:
                runs = _carried_runs(derive[0]._long_runs, self.mapped, *derive[1:])
            else:
                runs = [m.span() for m in _LONG_RUNS.finditer(self.mapped)]
            self._long_runs = runs
        return runs


_CLASSES = bytes(ord("d") if 48 <= b <= 57 else ord("s") if b in b" ()./+-" else
                 ord("l") if chr(b) in string.ascii_letters else ord("x") for b in range(256))
"""A text's ASCII bytes → their class: ``d`` digit, ``s`` a separator numbers are written with, ``l`` letter,
``x`` anything else."""
_RUNS = re.compile(rb"d[ds]*")
_LONG_RUNS = re.compile(rb"d[ds]{6,}")
_last_scan = _Scan("", b"", 0, [])
"""The scan of the last text asked about. The detectors of a policy are called one after the other with the same
text, or with the text the previous one returned (whose scan :func:`_spans_replaced` derives from the old one):
each event's text is mapped once whatever the number of detectors."""


_pending: tuple[_Scan, str, list[tuple[int, int]], str] | None = None
"""The last replacement made in a scanned text (its scan, the result, the spans, the placeholder), whose scan is
derived only when a detector asks for the result's: the last detector of a policy, or one followed by detectors
that do not look at the scan, does not pay for it."""


def _scan(text: str) -> _Scan:
    """The scan of ``text``: the last one made, derived from it (see ``_pending``), or made now."""
    global _last_scan, _pending
    last = _last_scan
    if last.text is text:
        return last
    pending = _pending
    if pending is not None and pending[1] is text:
        _pending = None
        return _carry_over(*pending)
    mapped = text.encode("ascii", "replace").translate(_CLASSES)
    scan = _last_scan = _Scan(text, mapped, mapped.count(b"d"), None)
    _pending = None
    return scan


def digit_count(text: str) -> int:
    """How many ASCII digits ``text`` holds: the gate of the digit-led detectors, which skip a text with too few
    for their shortest find."""
    return _scan(text).digits


def numeric_runs(text: str) -> list[tuple[int, int]]:
    """Where ``text`` has runs of digits and the separators numbers are written with (``[0-9][0-9 ()./+-]*``), as
    (``start``, ``end``)."""
    return [m.span() for m in _RUNS.finditer(_scan(text).mapped)]


def _spans_replaced(text: str, spans: list[tuple[int, int]], placeholder: str) -> tuple[str, int]:
    """``text`` with each of the ordered, non-overlapping ``spans`` replaced by ``placeholder``; if ``text`` is the
    scanned one, the scan of the result is derived from its (the next detector needs it) rather than made again."""
    if not spans:
        return text, 0
    if len(spans) == 1:
        start, end = spans[0]
        result = "".join((text[:start], placeholder, text[end:]))
    else:
        pieces: list[str] = []
        last = 0
        for start, end in spans:
            pieces += (text[last:start], placeholder)
            last = end
        pieces.append(text[last:])
        result = "".join(pieces)
    global _pending
    last, pending = _last_scan, _pending
    if last.text is text:  # the scanned text, or the one a scan is pending for: the result's can be derived
        _pending = (last, result, spans, placeholder)
    elif pending is not None and pending[1] is text:
        _pending = (_carry_over(*pending), result, spans, placeholder)
    return result, len(spans)


def _placeholder_classes(placeholder: str) -> tuple[bytes, int, bool]:
    """A placeholder's class bytes, its digit count, and whether it has neither digit nor separator (then the
    long runs of a text it replaced spans in can be carried over)."""
    known = _PLACEHOLDER_CLASSES.get(placeholder)
    if known is None:
        classes = placeholder.encode("ascii", "replace").translate(_CLASSES)
        known = (classes, classes.count(b"d"), b"d" not in classes and b"s" not in classes)
        if len(_PLACEHOLDER_CLASSES) < 64:  # the built-in placeholders and a few of regex's: bounded all the same
            _PLACEHOLDER_CLASSES[placeholder] = known
    return known


_PLACEHOLDER_CLASSES: dict[str, tuple[bytes, int, bool]] = {}


def _carry_over(scan: _Scan, result: str, spans: list[tuple[int, int]], placeholder: str) -> _Scan:
    """Make ``result``'s scan from ``scan`` (its text with ``spans`` replaced by ``placeholder``): the class bytes
    are spliced like the text; the long runs untouched by a span move by the replacements before them, and a
    touched one is looked at again over the stretch it covered (a placeholder has no digit and ends any run, so a
    run of the result lies within one of the text)."""
    global _last_scan
    mapped = scan.mapped
    replacement, added, plain = _PLACEHOLDER_CLASSES.get(placeholder) or _placeholder_classes(placeholder)
    if len(spans) == 1:
        start, end = spans[0]
        new_mapped = b"".join((mapped[:start], replacement, mapped[end:]))
        digits = scan.digits - mapped.count(b"d", start, end) + added
    else:
        pieces: list[bytes] = []
        last = removed = 0
        for start, end in spans:
            pieces += (mapped[last:start], replacement)
            removed += mapped.count(b"d", start, end)
            last = end
        pieces.append(mapped[last:])
        new_mapped = b"".join(pieces)
        digits = scan.digits - removed + added * len(spans)
    new_scan = _last_scan = _Scan(result, new_mapped, digits, None,
                                  (scan, spans, len(replacement)) if plain else None)
    return new_scan


def _carried_runs(old_runs: list[tuple[int, int]], new_mapped: bytes, spans: list[tuple[int, int]],
                  width: int) -> list[tuple[int, int]]:
    """The long runs of a text whose ``spans`` were replaced by a placeholder of ``width`` characters with no digit
    or separator, from the long runs of the text before (``new_mapped`` is the result's class bytes)."""
    runs: list[tuple[int, int]] = []
    count = len(spans)
    index = shift = 0
    for start, end in old_runs:
        while index < count and spans[index][1] <= start:  # spans wholly before this run
            shift += width - (spans[index][1] - spans[index][0])
            index += 1
        if index == count or spans[index][0] >= end:  # untouched
            runs.append((start + shift, end + shift))
            continue
        first = spans[index]
        new_start = start + shift if start < first[0] else first[0] + shift + width
        later, end_shift = index, shift
        while later < count and spans[later][1] <= end:
            end_shift += width - (spans[later][1] - spans[later][0])
            later += 1
        if later < count and spans[later][0] < end:  # the run ends inside a span: just after its placeholder
            new_end = spans[later][0] + end_shift + width
        else:
            new_end = end + end_shift
        if new_mapped.find(b"d", new_start, new_end) >= 0:  # most often the span took all the run's digits
            runs += [m.span() for m in _LONG_RUNS.finditer(new_mapped, new_start, new_end)]
    return runs


# -- e-mail ------------------------------------------------------------------------------------------------
class EmailRedactor(Redactor):
    """Addresses ``local@domain.tld`` (dot-atom local part, internationalised letters included)."""

    name = "email"
    placeholder = "<EMAIL>"
    order = 10

    _domain = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])")
    _local_reversed = re.compile(r"[\w.%+'-]*")
    """The local part's characters (letters and digits of any script, ``._%+'-``), matched on the text before the
    ``@`` reversed: the local part is found backwards in one call rather than a loop over its characters."""

    def redact(self, text: str) -> tuple[str, int]:
        # Found from each '@' (a pattern starting at the local part would be tried at every word of the text):
        # the domain is matched forwards, the local part backwards.
        at = text.find("@")
        if at < 0:
            return text, 0
        spans: list[tuple[int, int]] = []
        last = 0
        local_reversed = self._local_reversed
        while at >= 0:
            domain = self._domain.match(text, at + 1)
            if domain is not None and at and text[at - 1] != ".":  # else no address here: no local part to find
                start = at - local_reversed.match(text[max(last, at - 64):at][::-1]).end()
                while start < at and text[start] == ".":
                    start += 1
                if start < at and (start == 0 or text[start - 1] != "@"):
                    last = domain.end()
                    spans.append((start, last))
            at = text.find("@", max(at + 1, last))
        return _spans_replaced(text, spans, self.placeholder)


# -- payment cards -----------------------------------------------------------------------------------------
def luhn_valid(digits: str) -> bool:
    """Whether ``digits`` (digits only) passes the Luhn check."""
    data = digits.encode("ascii", "replace")
    odd, even = data[-1::-2], data[-2::-2]  # from the right: as written, and doubled
    return (sum(odd) - 48 * len(odd) + sum(even.translate(_LUHN_DOUBLED))) % 10 == 0


_LUHN_DOUBLED = bytes((2 * (b - 48) - 9 if b >= 53 else 2 * (b - 48)) if 48 <= b <= 57 else 0 for b in range(256))
"""A digit's byte → the digit doubled, less 9 when over 9 (what Luhn adds for every second digit from the right)."""


_CARD_PREFIX = re.compile(
    r"4|5[1-5]|2(?:2[2-9][1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|3(?:0[0-5]|[689])|6(?:011|5|4[4-9]|2)"
    r"|35(?:2[89]|[3-8]\d)|5[06-9]|6\d")
"""Issuer prefixes: Visa, Mastercard (51-55, 2221-2720), Amex, Diners, Discover, UnionPay, JCB, Maestro."""


class CardOptions(RedactorOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    check_issuer: bool = True
    """Also require a known issuer prefix (Visa 4, Mastercard 51-55/2221-2720, Amex 34/37, ...): fewer
    Luhn-valid order and account numbers replaced."""


class CardRedactor(Redactor):
    """Payment card numbers: 13 to 19 digits, plain or grouped by spaces or dashes, Luhn-checked."""

    name = "card"
    Options = CardOptions
    placeholder = "<CARD>"
    order = 20
    options: CardOptions

    _pattern = re.compile(
        # the first digit, then the boundary before it (a leading look-behind would cost a test at every position)
        r"[0-9](?<![\w.,-][0-9])(?:"
        r"[0-9]{3}([ -]?)[0-9]{4}\1[0-9]{4}\1[0-9]{1,4}(?:\1[0-9]{1,3})?"  # 4-4-4-4 (13-19 digits)
        r"|[0-9]{3}([ -]?)[0-9]{6}\2[0-9]{4,5}"  # Amex 4-6-5, Diners 4-6-4
        r"|[0-9]{12,18}"
        r")(?![\w-]|[.,][0-9])")

    def redact(self, text: str) -> tuple[str, int]:
        scan = _scan(text)
        if scan.digits < 13:
            return text, 0
        check_issuer = self.options.check_issuer
        spans = []
        mapped = scan.mapped
        for start, end in scan.long_runs():
            if end - start < 13 or mapped.count(b"d", start, end) < 13:
                continue
            for match in self._pattern.finditer(text, start, end + 2):
                digits = match.group(0).replace(" ", "").replace("-", "")
                if 13 <= len(digits) <= 19 and luhn_valid(digits) and (
                        not check_issuer or _CARD_PREFIX.match(digits)):
                    spans.append(match.span())
        return _spans_replaced(text, spans, self.placeholder)


# -- IBAN --------------------------------------------------------------------------------------------------
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
"""IBAN length per country (the SWIFT IBAN registry)."""


def iban_valid(compact: str) -> bool:
    """Whether ``compact`` (upper case, no spaces) has its country's length and passes the mod-97 check."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    if not compact.isascii():
        return False
    account = compact[4:]
    if account.isdigit():  # most countries' account numbers: the country code is the only letters to turn
        return int(account + _IBAN_COUNTRY_DIGITS[compact[:2]] + compact[2:4]) % 97 == 1
    if not compact.isalnum():
        return False
    return int((account + compact[:4]).translate(_IBAN_DIGITS)) % 97 == 1


_IBAN_DIGITS = {ord(c): str(int(c, 36)) for c in string.ascii_letters}
"""A letter → its number in the mod-97 check (A=10 ... Z=35, either case); digits stay."""
_IBAN_COUNTRY_DIGITS = {country: country.translate(_IBAN_DIGITS) for country in IBAN_LENGTHS}


_CHECK_DIGITS = re.compile(rb"dd(?<=lldd)")
"""Over a scan's class bytes: two digits after two letters, where an IBAN's check digits can be. (Faster than a
``bytes.find`` of ``lldd``: over class bytes, mostly ``l`` and ``s``, a substring search skips little.)"""


_LETTER_OR_DIGIT = frozenset(b"ld")


class IbanRedactor(Redactor):
    """International bank account numbers, compact or in groups of four, checked against the country's length
    and the mod-97 checksum."""

    name = "iban"
    placeholder = "<IBAN>"
    order = 30

    # found from its check digits (two letters before them): a pattern starting with letters would be tried at
    # every letter of the text
    _pattern = re.compile(r"[0-9](?<=[A-Za-z]{2}[0-9])(?<![\w-][A-Za-z]{2}[0-9])[0-9]"
                          r"(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?(?![\w-])")

    def redact(self, text: str) -> tuple[str, int]:
        scan = _scan(text)
        if scan.digits < 10:
            return text, 0
        mapped = scan.mapped
        spans: list[tuple[int, int]] = []
        for found in _CHECK_DIGITS.finditer(mapped):
            start = found.start()
            # the letters must not follow a letter or digit (``_pattern`` checks the rest)
            if (spans and start < spans[-1][1]) or (start > 2 and mapped[start - 3] in _LETTER_OR_DIGIT):
                continue
            match = self._pattern.match(text, start)
            if match is not None and iban_valid((text[start - 2:start] + match.group(0).replace(" ", "")).upper()):
                spans.append((start - 2, match.end()))
        return _spans_replaced(text, spans, self.placeholder)


# -- secrets -----------------------------------------------------------------------------------------------
_VENDOR = (
    r"sk-ant-[A-Za-z0-9_-]{20,}",  # Anthropic
    r"sk-(?:proj-|svcacct-|admin-|or-v1-)?[A-Za-z0-9_-]{20,}",  # OpenAI, OpenRouter, LiteLLM-style virtual keys
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}",  # AWS access key ids
    r"gh[pousr]_[A-Za-z0-9]{36,255}",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,255}",
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"xapp-\d-[A-Za-z0-9-]{10,}",
    r"glpat-[A-Za-z0-9_-]{20,}",  # GitLab
    r"AIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}",  # Stripe
    r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",  # SendGrid
    r"npm_[A-Za-z0-9]{36}",
    r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT: header and payload both JSON objects
)
_VENDOR_PATTERN = re.compile(r"(?<![\w-])(?:" + "|".join(_VENDOR) + r")(?![\w-])")
_BEARER = re.compile(r"(?:bearer|basic|token)\s+([A-Za-z0-9._~+/-]{16,}=*)(?![\w~+/=-])", re.IGNORECASE)
_BEARER_WORDS = ("bearer", "basic", "token")
_ASSIGN = re.compile(r"[:=][ \t]*[\"']?([^\s\x00\"',;<>]{8,})")
_ASSIGN_LABELS = ("api_key", "api-key", "apikey", "secret", "secret_key", "secret-key", "secretkey", "password",
                  "passwd", "pwd", "access_token", "access-token", "auth_token", "auth-token", "client_secret",
                  "client-secret")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[^\x00]*?-----END [A-Z ]*PRIVATE KEY-----")
_HEX = frozenset("0123456789abcdefABCDEF-")
_TOKEN_BYTES = bytes(ord("a") if chr(b) in string.ascii_letters + string.digits + "+_=.-" else ord(" ")
                     for b in range(256))
_SIXTEEN = b"a" * 16
"""On the text mapped to ``a`` (token characters) and space (the rest), the start of a long token: found with
``bytes.find``, a fast substring search, instead of a pattern tried at every position."""


def long_tokens(text: str) -> list[tuple[int, int]]:
    """Where ``text`` has runs of at least 16 token characters (letters, digits, ``+_=.-``)."""
    # one byte per character (``?`` for a non-ASCII one, not a token character): offsets are the text's
    mapped = text.encode("ascii", "replace").translate(_TOKEN_BYTES)
    spans = []
    start = mapped.find(_SIXTEEN)  # the first 16 of a run: where the run starts
    while start >= 0:
        end = mapped.find(b" ", start + 16)
        if end < 0:
            spans.append((start, len(mapped)))
            break
        spans.append((start, end))
        start = mapped.find(_SIXTEEN, end + 1)
    return spans


def _vendor_keys(token: str, offset: int) -> list[tuple[int, int]]:
    """``_VENDOR_PATTERN``'s finds in ``token`` (moved by ``offset``). A find starts where its look-behind allows:
    at the token's start or after one of ``.+=``; the pattern is tried there only, past the end of the last find,
    which is what ``finditer`` would find."""
    spans: list[tuple[int, int]] = []
    end = 0
    for position in _token_starts(token):
        if position >= end:
            match = _VENDOR_PATTERN.match(token, position)
            if match is not None:
                end = match.end()
                spans.append((offset + position, offset + end))
    return spans


def _token_starts(token: str) -> list[int]:
    starts = [0]
    last = len(token) - 1  # a '.' ending the token starts no find (every vendor key has characters)
    for char in ".+=":
        index = token.find(char, 0, last)
        while index >= 0:
            starts.append(index + 1)
            index = token.find(char, index + 1, last)
    return sorted(starts) if len(starts) > 2 else starts


def entropy(token: str) -> float:
    """Shannon entropy of ``token`` in bits per character."""
    length = len(token)
    return -sum(n / length * math.log2(n / length) for n in Counter(token).values())


class SecretOptions(RedactorOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    vendor_prefixes: bool = True
    """Keys with a known vendor prefix (``sk-``, ``sk-ant-``, ``AKIA``, ``ghp_``, ``xoxb-``, ``glpat-``, ``AIza``,
    Stripe, Hugging Face, SendGrid, npm, PyPI) and JWTs."""
    labelled: bool = True
    """Values after ``Bearer``/``Basic``/``token`` and after ``api_key=``, ``password:``, ``client_secret=``...
    (the label is kept)."""
    private_keys: bool = True
    """PEM ``-----BEGIN ... PRIVATE KEY-----`` blocks."""
    high_entropy: bool = True
    """Unprefixed tokens of at least ``min_length`` characters mixing letters and digits whose entropy is at least
    ``min_entropy`` bits per character. Hex-only tokens (hashes, UUIDs) are left alone."""
    min_length: int = 24
    min_entropy: float = 3.8

    def __post_init__(self) -> None:
        if self.min_length < 16:
            raise ValueError("min_length: must be at least 16")
        if not 0 < self.min_entropy <= 8:
            raise ValueError("min_entropy: must be more than 0 and at most 8 bits per character")


class SecretRedactor(Redactor):
    """API keys, tokens, passwords and private keys."""

    name = "secret"
    Options = SecretOptions
    placeholder = "<SECRET>"
    order = 40
    options: SecretOptions

    def redact(self, text: str) -> tuple[str, int]:
        options = self.options
        placeholder = self.placeholder
        total = 0
        if options.private_keys and "PRIVATE KEY-----" in text:
            text, found = _PRIVATE_KEY.subn(placeholder, text)
            total += found
        tokens = None  # long_tokens(text), when found for the bearer test and the text has not changed since
        if options.labelled:
            lower = None
            maybe_bearer = True
            if text.isascii() and "/" not in text and "~" not in text:
                # Then a bearer value (no '/' or '~') is a long token whose whitespace follows the word: looked for
                # before each long token, not with a case-insensitive search of the whole text for each word.
                tokens = long_tokens(text)
                maybe_bearer = False
                for start, _ in tokens:  # (a loop, not any() over a generator: most texts have one or two)
                    if _after_bearer_word(text, start):
                        maybe_bearer = True
                        break
            if maybe_bearer:
                lower = text.lower()
                if "bearer" in lower or "basic" in lower or "token" in lower:  # _BEARER_WORDS, tested one by one
                    text, found = _bearer(text, lower, placeholder)
                    total += found
                    if found:
                        lower, tokens = text.lower(), None
            if "=" in text or ":" in text:
                if lower is None:
                    lower = text.lower()
                if "key" in lower or "secret" in lower or "pass" in lower or "pwd" in lower or "token" in lower:
                    text, found = _assigned(text, lower, placeholder)  # (every label holds one of these words)
                    total += found
                    if found:
                        tokens = None
        if options.vendor_prefixes or options.high_entropy:
            spans: list[tuple[int, int]] = []
            for start, end in long_tokens(text) if tokens is None else tokens:
                token = text[start:end]
                if options.vendor_prefixes:
                    found_spans = _vendor_keys(token, start)
                    if found_spans:
                        spans += found_spans
                        continue
                if options.high_entropy and self._random(token.strip(".=")):
                    spans.append((start, end))
            text, found = _spans_replaced(text, spans, placeholder)
            total += found
        return text, total

    def _random(self, token: str) -> bool:
        """Whether ``token`` looks like a random key: long enough, letters and digits, not hex, high entropy."""
        if "." in token or len(token) < self.options.min_length:
            return False
        if _HEX.issuperset(token) or token.isalpha() or token.isdigit() or not any(c.isdigit() for c in token):
            return False
        return entropy(token) >= self.options.min_entropy


def _after_bearer_word(text: str, start: int) -> bool:
    """Whether whitespace then ``bearer``, ``basic`` or ``token`` (any case) come just before ``start``, in an
    ASCII ``text``: where a value ``_BEARER`` takes can start."""
    end = start
    while end and text[end - 1].isspace():
        end -= 1
    # the words' last letters first: most long tokens follow some other word
    return 0 < end < start and text[end - 1] in "rRcCnN" and (text[max(0, end - 6):end].lower() == "bearer"
                                                             or text[max(0, end - 5):end].lower() in ("basic", "token"))


def _bearer(text: str, lower: str, placeholder: str) -> tuple[str, int]:
    """``Bearer <token>``, ``Basic <credentials>``, ``token <token>``: the value goes, the word stays. Tried only
    where one of the words is (found with ``str.find``, not a case-insensitive scan of the whole text)."""
    spans: list[tuple[int, int]] = []
    for start in sorted(i for word in _BEARER_WORDS for i in _occurrences(lower, word)):
        if (spans and start < spans[-1][1]) or (start and lower[start - 1].isalnum()):
            continue
        match = _BEARER.match(text, start)
        if match is not None:
            spans.append(match.span(1))
    return _spans_replaced(text, spans, placeholder)


def _assigned(text: str, lower: str, placeholder: str) -> tuple[str, int]:
    """``api_key=...``, ``"password": "..."``, ``client_secret: ...``: the value after a known label goes.

    ``_ASSIGN`` is tried where a ``:`` or ``=`` is (found with ``str.find``), past the end of the last match: what
    ``finditer`` would find, without trying the pattern at every position of the text."""
    spans: list[tuple[int, int]] = []
    end = 0
    for position in sorted(_occurrences(text, ":") + _occurrences(text, "=")):
        if position < end:
            continue
        match = _ASSIGN.match(text, position)
        if match is None:
            continue
        end = match.end()
        before = lower[max(0, position - 24):position].rstrip("\"' \t")
        if before.endswith(_ASSIGN_LABELS) and not (spans and position < spans[-1][1]):
            spans.append(match.span(1))
    return _spans_replaced(text, spans, placeholder)


def _occurrences(text: str, word: str) -> list[int]:
    found = []
    index = text.find(word)
    while index >= 0:
        found.append(index)
        index = text.find(word, index + 1)
    return found


# -- IP addresses ------------------------------------------------------------------------------------------
class IpOptions(RedactorOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ipv4: bool = True
    ipv6: bool = True
    keep_networks: list[str] = msgspec.field(default_factory=list)
    """Networks left as they are (``10.0.0.0/8``, ``127.0.0.0/8``, ``::1/128``): e.g. your own infrastructure."""

    def __post_init__(self) -> None:
        for index, network in enumerate(self.keep_networks):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"keep_networks[{index}]: {exc}") from None


class IpRedactor(Redactor):
    """IPv4 addresses (dotted quad) and IPv6 addresses (any valid form, embedded IPv4 included), each confirmed
    with :mod:`ipaddress`."""

    name = "ip"
    Options = IpOptions
    placeholder = "<IP>"
    order = 50
    options: IpOptions

    __slots__ = ("_keep",)

    _v4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?!\w|\.[0-9])")
    _v6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
                     r"(?:%[A-Za-z0-9]+)?(?![\w:]|\.\d)")

    def __init__(self, options: RedactorOptions) -> None:
        super().__init__(options)
        assert isinstance(options, IpOptions)
        self._keep = tuple(ipaddress.ip_network(n, strict=False) for n in options.keep_networks)

    def _kept(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address.version == n.version and address in n for n in self._keep)

    def redact(self, text: str) -> tuple[str, int]:
        count = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal count
            found = match.group(0)
            try:
                address = ipaddress.ip_address(found.split("%", 1)[0])
            except ValueError:
                return found
            if self._kept(address):
                return found
            count += 1
            return self.placeholder

        options = self.options
        # one count (a substring search for "::" costs more than a count), after a one-character test
        colons = text.count(":") if options.ipv6 and ":" in text else 0
        if colons >= 7 or (colons >= 2 and "::" in text):
            text = self._v6.sub(replace, text)
        if options.ipv4 and "." in text and (scan := _scan(text)).digits >= 4:
            spans = []
            keep = self._keep
            mapped = scan.mapped
            for start, end in scan.long_runs():
                if text.count(".", start, end) < 3 or mapped.count(b"d", start, end) < 4:
                    continue
                for match in self._v4.finditer(text, start, end + 2):
                    found = match.group(0)
                    if _IPV4_VALID.match(found) and not (keep and self._kept(ipaddress.IPv4Address(found))):
                        spans.append(match.span())
            text, found_v4 = _spans_replaced(text, spans, self.placeholder)
            count += found_v4
        return text, count


_OCTET = r"(?:[0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])"
_IPV4_VALID = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")
"""What :class:`ipaddress.IPv4Address` accepts of a dotted quad of 1-3 digit parts (each at most 255, no leading
zero), without building the object: one match, no split and loop over the parts."""


# -- phone numbers -----------------------------------------------------------------------------------------
class PhoneRedactor(Redactor):
    """Phone numbers in international form (``+`` or ``00`` and a country code: 8 to 15 digits, any grouping) and
    national forms with a trunk ``0`` and separators (``020 7946 0958``, ``06-12345678``, ``01 23 45 67 89``) or
    the North American ``(555) 123-4567`` / ``555-123-4567``."""

    name = "phone"
    placeholder = "<PHONE>"
    order = 60

    _pattern = re.compile(
        r"(?<![\w+/.,-])(?:"
        r"(?P<intl>(?:\+|00)[1-9]\d{0,2}[ .-]?(?:\(0\)[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{1,5}[ .-]?)"
        r"\d{1,5}(?:[ .-]?\d{1,5}){0,4})"
        r"|(?P<nanp>\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}|[2-9]\d{2}([.-])[2-9]\d{2}\3\d{4}|[2-9]\d{2} [2-9]\d{2} \d{4})"
        r"|(?P<national>\(0\d{1,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}|0\d{1,4}([ ./-])\d{2,8}(?:\5\d{2,4}){0,3})"
        r")(?![\w-]|[.,]\d)")
    _date = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}\Z")

    def redact(self, text: str) -> tuple[str, int]:
        scan = _scan(text)
        if scan.digits < 8:
            return text, 0
        spans: list[tuple[int, int]] = []
        mapped = scan.mapped
        for start, end in scan.long_runs():
            # A leading '+' or '(' sits just before the run; the window ends where its digits do. A find has at
            # least 8 digits (``\d``, any script), all in the run but for the 2 characters the window takes on
            # each side of it: a run with fewer than 4 ASCII digits holds none.
            if mapped.count(b"d", start, end) < 4:
                continue
            for match in self._pattern.finditer(text, start - 2, end + 2):  # (the engine clamps both)
                span = match.span()
                if spans and span[0] < spans[-1][1]:
                    continue
                # A find is digits (``\d``: ASCII or not) and " ()./+-" (class ``s``): its digits are the rest.
                digits = span[1] - span[0] - mapped.count(b"s", *span)
                if match.group("intl") is not None:
                    confirmed = 8 <= digits <= 15
                elif match.group("nanp") is not None:
                    confirmed = digits == 10
                else:
                    confirmed = 9 <= digits <= 12 and not self._date.match(match.group(0))
                if confirmed:
                    spans.append(span)
        return _spans_replaced(text, spans, self.placeholder)


# -- named regular expressions -----------------------------------------------------------------------------
_PATTERN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}\Z")


class RegexOptions(RedactorOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    patterns: dict[str, str] = msgspec.field(default_factory=dict)
    """Name → regular expression (Python syntax). A match is replaced by ``<NAME>`` (the name upper-cased)."""
    ignore_case: bool = False

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("patterns: give at least one, e.g. {employee_id: 'E\\d{6}'}")
        for name, pattern in self.patterns.items():
            if not _PATTERN_NAME.match(name):
                raise ValueError(f"patterns.{name}: a name is a letter then letters, digits or '_' (at most 40)")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns.{name}: not a valid regular expression: {exc}") from None
            if compiled.groupindex:
                raise ValueError(f"patterns.{name}: named groups are not allowed inside a pattern")
            if compiled.match(""):
                raise ValueError(f"patterns.{name}: matches the empty string")


class RegexRedactor(Redactor):
    """Your own patterns, each replaced by its name: ``{patterns: {employee_id: 'E\\d{6}'}}`` gives ``<EMPLOYEE_ID>``.
    All patterns run in one pass, the first written winning where two match at the same place."""

    name = "regex"
    Options = RegexOptions
    placeholder = "<REGEX>"
    order = 5
    options: RegexOptions

    __slots__ = ("_pattern", "_placeholders")

    def __init__(self, options: RedactorOptions) -> None:
        super().__init__(options)
        assert isinstance(options, RegexOptions)
        names = list(options.patterns)
        self._placeholders = {f"p{i}": f"<{name.upper()}>" for i, name in enumerate(names)}
        flags = re.IGNORECASE if options.ignore_case else 0
        self._pattern = re.compile("|".join(f"(?P<p{i}>{options.patterns[name]})" for i, name in enumerate(names)),
                                   flags)

    def redact(self, text: str) -> tuple[str, int]:
        if self._pattern.search(text) is None:  # the common case: one search, no callback made
            return text, 0
        count = 0
        placeholders = self._placeholders

        def replace(match: re.Match[str]) -> str:
            nonlocal count
            count += 1
            return placeholders[match.lastgroup or ""]

        return self._pattern.sub(replace, text), count

    def placeholders(self) -> list[str]:
        return list(self._placeholders.values())

    def describe(self) -> dict[str, Any]:
        # The patterns themselves may describe what an admin considers sensitive: show their names only.
        return {"name": self.name, "options": {"patterns": sorted(self.options.patterns),
                                               **({"ignore_case": True} if self.options.ignore_case else {})}}


BUILTIN_REDACTORS: tuple[type[Redactor], ...] = (EmailRedactor, PhoneRedactor, CardRedactor, IbanRedactor,
                                                 IpRedactor, SecretRedactor, RegexRedactor)


@hookimpl
def register_redactors(register: Any) -> None:
    for redactor_class in BUILTIN_REDACTORS:
        register(redactor_class)
