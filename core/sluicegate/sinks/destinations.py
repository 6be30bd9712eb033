"""Where sinks may send: the destination policy for callbacks written through the admin API.

Callbacks from config.yaml are written by the gateway's operator and go anywhere (:data:`TRUSTED`). Callbacks
written through the admin API (a key's ``metadata.logging``, ``/team/{id}/callback``) are held to
``sluicegate_settings.sink_destinations`` and ``file_sink_root`` (:meth:`DestinationPolicy.from_settings`):

- a network destination is checked as text when the callback is written (:meth:`DestinationPolicy.url_problem`)
  and its resolved address again at every connection (:meth:`DestinationPolicy.address_problem`, called by
  :class:`sluicegate.net.http.HttpClient` and :class:`CheckingResolver`), so a name that resolves elsewhere
  later (DNS rebinding) is refused before a socket opens;
- a file path must resolve under the file sink root (:meth:`DestinationPolicy.file_problem` and
  :meth:`DestinationPolicy.open_append`, which opens it without following any symlink below the root).

Rules, in order: a name matching a ``deny`` glob, or an address in a ``deny`` network (the built-in denials
included), is refused unless ``allow`` matches it too; with a non-empty ``allow`` list nothing outside it is
reached (the name matches an ``allow`` glob or the address is in an ``allow`` network).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from sluicegate.config import Settings

__all__ = ("BUILTIN_DENIED_HOSTS", "BUILTIN_DENIED_NETWORKS", "TRUSTED", "CheckingResolver", "DestinationPolicy",
           "DestinationRefused", "aiohttp_connector_factory", "entry_problem", "literal_address")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BUILTIN_DENIED_NETWORKS: tuple[str, ...] = (
    "169.254.0.0/16",  # IPv4 link-local: the metadata service of AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS instance metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "192.0.0.192/32",  # Oracle Cloud (classic) metadata
)
"""Refused for API-written callbacks unless ``sink_destinations.allow`` lists them."""

BUILTIN_DENIED_HOSTS: tuple[str, ...] = (
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
)
"""Metadata service names (they resolve to the networks above; refusing the name reports it at write time)."""

_HOST_GLOB = re.compile(r"^[a-z0-9*_-]+(\.[a-z0-9*_-]+)*$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SPECIAL_FILES = ("/proc", "/dev", "/sys")


class DestinationRefused(OSError):
    """A destination the policy refuses; the message says why and names ``sluicegate_settings``."""


def entry_problem(entry: Any) -> str | None:
    """Why ``entry`` is not a ``sink_destinations`` entry (a host name glob or an IP network), or ``None``."""
    if not isinstance(entry, str) or not entry.strip():
        return "expected a host name (globs like *.example.com) or an IP network (10.0.0.0/8)"
    text = entry.strip()
    if "://" in text:
        return f"{entry!r}: write the host alone, without scheme, port or path (or an IP network, 10.0.0.0/8)"
    if "/" in text or ":" in text or _literal(text) is not None:
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            return f"{entry!r} is not an IP network ({exc}); write a network as 10.0.0.0/8 or an address as 10.0.0.1"
        return None
    if not _HOST_GLOB.match(text.lower().rstrip(".")):
        return (f"{entry!r} is neither a host name (letters, digits, '-', '.', and '*' as a wildcard) nor an IP "
                "network; write a host without scheme, port or path")
    return None


def _literal(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one, in any form a resolver accepts (``[::1]``, ``fe80::1%eth0``,
    and the legacy IPv4 forms ``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``169.254.43518``)."""
    text = host.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text) and text[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def literal_address(host: str) -> str | None:
    """``host`` as the text of an IP address when it is one (see :func:`_literal`), else ``None``."""
    address = _literal(host)
    return None if address is None else str(address)


def _embedded(address: IPAddress) -> list[IPAddress]:
    """``address`` and the IPv4 address it carries, for IPv6 forms that reach an IPv4 host."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None):
            if inner is not None:
                found.append(inner)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


class DestinationPolicy:
    """What one class of callbacks may reach. Immutable; shared by every sink instance it applies to."""

    __slots__ = ("allow_hosts", "allow_networks", "deny_hosts", "deny_networks", "file_root", "trusted")

    def __init__(self, *, trusted: bool = False, allow: Iterable[str] = (), deny: Iterable[str] = (),
                 file_root: str | os.PathLike[str] | None = None, builtin_denials: bool = True) -> None:
        self.trusted = trusted
        allow_hosts, allow_networks = _split(allow)
        deny_hosts, deny_networks = _split([*deny, *(BUILTIN_DENIED_NETWORKS + BUILTIN_DENIED_HOSTS
                                                       if builtin_denials else ())])
        self.allow_hosts, self.allow_networks = allow_hosts, allow_networks
        self.deny_hosts, self.deny_networks = deny_hosts, deny_networks
        self.file_root = os.path.abspath(file_root if file_root is not None else "logs")

    @classmethod
    def from_settings(cls, settings: Settings) -> DestinationPolicy:
        """The policy for API-written callbacks: ``sink_destinations`` and ``file_sink_root`` (default ``logs/``
        next to config.yaml, or in the working directory without one; a relative root is taken from there too)."""
        gateway = settings.sluicegate_settings
        base = os.path.dirname(os.path.abspath(settings.source)) if settings.source else os.getcwd()
        root = os.path.join(base, os.path.expanduser(gateway.file_sink_root or "logs"))
        return cls(allow=gateway.sink_destinations.allow, deny=gateway.sink_destinations.deny, file_root=root)

    def __repr__(self) -> str:
        if self.trusted:
            return "DestinationPolicy(trusted)"
        return (f"DestinationPolicy(allow={[*self.allow_hosts, *map(str, self.allow_networks)]}, "
                f"deny={[*self.deny_hosts, *map(str, self.deny_networks)]}, file_root={self.file_root!r})")

    # network ---------------------------------------------------------------------------------------------
    def _name_verdict(self, host: str) -> bool | None:
        """True: an ``allow`` glob matches; False: a ``deny`` glob does (and no allow); None: neither."""
        name = host.lower().rstrip(".")
        if any(fnmatch.fnmatchcase(name, glob) for glob in self.allow_hosts):
            return True
        if any(fnmatch.fnmatchcase(name, glob) for glob in self.deny_hosts):
            return False
        return None

    def _address_verdict(self, address: IPAddress) -> bool | None:
        candidates = _embedded(address)
        if any(a in net for a in candidates for net in self.allow_networks if a.version == net.version):
            return True
        if any(a in net for a in candidates for net in self.deny_networks if a.version == net.version):
            return False
        return None

    def host_problem(self, host: str) -> str | None:
        """Why a connection to ``host`` (a name or an address, as written) is refused; ``None`` when it may be
        tried. A name that no rule decides on is left to :meth:`address_problem` at connect time."""
        if self.trusted:
            return None
        address = _literal(host)
        if address is not None:
            return self.address_problem(str(address))
        verdict = self._name_verdict(host)
        if verdict is False:
            return f"{host} is refused by sluicegate_settings.sink_destinations"
        if verdict is None and (self.allow_hosts or self.allow_networks) and not self.allow_networks:
            return f"{host} is not in sluicegate_settings.sink_destinations.allow"
        return None

    def url_problem(self, url: str) -> str | None:
        """:meth:`host_problem` for the host of ``url`` (``scheme://host[:port]/...`` or ``host:port``)."""
        if self.trusted:
            return None
        text = url.strip()
        if "://" not in text:
            text = "//" + text  # host:port (gRPC targets, agent hosts)
        try:
            host = urlsplit(text).hostname
        except ValueError:
            return None  # not a URL: the sink's own validation reports it
        return self.host_problem(host) if host else None

    def address_problem(self, ip: str, host: str | None = None) -> str | None:
        """Why connecting to ``ip`` (resolved from ``host``) is refused; ``None`` when allowed."""
        if self.trusted:
            return None
        address = _literal(ip)
        if address is None:
            return f"{ip} is not an IP address"
        shown = f"{host} ({address})" if host and host != ip else str(address)
        by_name = self._name_verdict(host) if host and _literal(host) is None else None
        by_address = self._address_verdict(address)
        if by_address is False:
            return f"{shown} is refused by sluicegate_settings.sink_destinations"
        if by_name is False and by_address is not True:
            return f"{shown} is refused by sluicegate_settings.sink_destinations"
        if (self.allow_hosts or self.allow_networks) and not (by_name or by_address):
            return f"{shown} is not in sluicegate_settings.sink_destinations.allow"
        return None

    def check_address(self, ip: str, host: str | None = None) -> None:
        """Raise :class:`DestinationRefused` when :meth:`address_problem` finds one."""
        problem = self.address_problem(ip, host)
        if problem is not None:
            raise DestinationRefused(problem)

    # files -----------------------------------------------------------------------------------------------
    def file_problem(self, path: str) -> str | None:
        """Why an API-written file sink ``path`` is refused (checked at write time): empty, ``..``, outside the
        root, in /proc, /dev or /sys, or through a symlink below the root. ``{team_id}`` may appear anywhere."""
        if self.trusted:
            return None
        try:
            self.relative_parts(path.replace("{team_id}", "t"))
        except DestinationRefused as exc:
            return str(exc)
        return None

    def relative_parts(self, path: str) -> list[str]:
        """The components of ``path`` below the file root (relative paths join it; absolute ones must already be
        inside it). Raises :class:`DestinationRefused`. Symlinks already on disk below the root are refused."""
        if not path or not path.strip() or "\0" in path:
            raise DestinationRefused("must be a file path (relative paths are taken from "
                                     "sluicegate_settings.file_sink_root)")
        parts = path.replace("\\", "/").split("/")
        if ".." in parts:
            raise DestinationRefused("'..' is not allowed in a file path written through the admin API")
        root = self.file_root
        real_root = os.path.realpath(root)
        if os.path.isabs(path):
            full = os.path.normpath(path)
            for base in (root, real_root):
                if full == base or full.startswith(base.rstrip("/") + "/"):
                    relative = full[len(base):].lstrip("/")
                    break
            else:
                raise DestinationRefused(f"must be inside sluicegate_settings.file_sink_root ({root}); a relative "
                                         "path is taken from there")
        else:
            relative = os.path.normpath(path)
        pieces = [p for p in relative.split("/") if p not in ("", ".")]
        if not pieces:
            raise DestinationRefused("must name a file inside sluicegate_settings.file_sink_root, not the root")
        if any(real_root == s or real_root.startswith(s + "/") for s in _SPECIAL_FILES):
            raise DestinationRefused(f"the file sink root {real_root} is inside /proc, /dev or /sys")
        current = real_root
        for piece in pieces:
            current = os.path.join(current, piece)
            if os.path.islink(current):
                raise DestinationRefused(f"{piece!r} is a symlink: files written through the admin API never "
                                         "follow symlinks below sluicegate_settings.file_sink_root")
        if any(current == s or current.startswith(s + "/") for s in _SPECIAL_FILES):
            raise DestinationRefused(f"{current} is inside /proc, /dev or /sys")
        if os.path.exists(current) and not os.path.isfile(current):
            raise DestinationRefused(f"{current} exists and is not a regular file")
        return pieces

    def open_append(self, path: str) -> int:
        """A file descriptor appending to ``path`` (created 0600, directories 0700).

        Trusted: ``path`` as written, relative to the working directory (``/dev/stdout`` included). Otherwise:
        under the root, every component opened relative to its directory with ``O_NOFOLLOW`` (a symlink swapped in
        after the check is refused by the kernel, not raced), and it must be a regular file (not a device or a
        FIFO: opened non-blocking, so a FIFO cannot hang the writer thread).
        """
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        if self.trusted:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            return os.open(path, flags, 0o600)
        flags |= os.O_NONBLOCK
        pieces = self.relative_parts(path)
        os.makedirs(self.file_root, mode=0o700, exist_ok=True)
        directory = os.open(self.file_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for piece in pieces[:-1]:
                try:
                    os.mkdir(piece, 0o700, dir_fd=directory)
                except FileExistsError:
                    pass
                inner = os.open(piece, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
                os.close(directory)
                directory = inner
            return _regular(os.open(pieces[-1], flags | os.O_NOFOLLOW, 0o600, dir_fd=directory), path)
        finally:
            os.close(directory)


def _regular(fd: int, path: str) -> int:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DestinationRefused(f"{path} is not a regular file")
    return fd


def _split(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[IPNetwork, ...]]:
    hosts: list[str] = []
    networks: list[IPNetwork] = []
    for entry in entries:
        text = entry.strip()
        if "/" in text or ":" in text or _literal(text) is not None:
            address = _literal(text)
            networks.append(ipaddress.ip_network(str(address) if address is not None else text, strict=False))
        else:
            hosts.append(text.lower().rstrip("."))
    return tuple(hosts), tuple(networks)


TRUSTED = DestinationPolicy(trusted=True, builtin_denials=False)
"""The policy of config.yaml's callbacks: every destination, file paths as written."""


class CheckingResolver:
    """An aiohttp resolver that drops the addresses ``policy`` refuses (for sinks on aiohttp or httpx-aiohttp).

    ``aiohttp.TCPConnector(resolver=CheckingResolver(policy))``: every connection aiohttp opens resolves through
    it, so the check applies to the address actually connected to. All addresses refused: ``OSError``, which
    aiohttp reports as a connection error.
    """

    def __init__(self, policy: DestinationPolicy, inner: Any = None) -> None:
        from aiohttp.resolver import DefaultResolver

        self.policy = policy
        self.inner = inner if inner is not None else DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> Sequence[Any]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.address_problem(r["host"], host) is None]
        if not allowed:
            problem = self.policy.address_problem(results[0]["host"], host) if results else "no address"
            raise DestinationRefused(problem)
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def aiohttp_connector_factory(policy: DestinationPolicy, **connector: Any) -> Any:
    """A ``ClientSession`` factory for ``httpx_aiohttp.AiohttpTransport(client=...)`` whose connector resolves
    through :class:`CheckingResolver` (``policy`` trusted: no resolver of ours)."""
    import aiohttp

    def make() -> Any:
        resolver = {} if policy.trusted else {"resolver": CheckingResolver(policy)}
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(**connector, **resolver))

    return make

