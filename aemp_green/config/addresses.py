"""config.addresses: node IDs and socket addresses from configuration values.

``expand_nodeid`` / ``default_nodeid`` turn a node ID template (``%n``, ``%u``, a trailing
``/``) into this node's ID; ``parse_address`` / ``expand_binds`` turn ``host:port`` strings
(``*`` for every local address, ``*`` or ``0`` for any free port) into socket addresses;
``gen_secret`` / ``gen_runiq`` make the random parts. Nothing is read at import time.

Example::

    expand_nodeid("worker/%n/")          # e.g. "worker/myhost/Xa3kP0qLmZ"
    parse_address("127.0.0.1:4040")      # ("127.0.0.1", 4040)
"""

import ipaddress
import logging
import os
import re
import secrets
import socket
import string
import struct
from typing import (
    Any,
    Hashable,
    Iterable,
    Mapping,
    Optional,
    TypeVar,
    Union,
)

from ..exceptions import ConfigError

logger = logging.getLogger(__name__)
_H = TypeVar("_H", bound=Hashable)
_ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase


# --------------------------------------------------------------------------------------------
# the host name


def _hostname() -> str:
    """Return this host's name as ``uname -n`` prints it (AEMP's default profile and ``%n``).

    Example::

        >>> hostname() == os.uname().nodename
        True
    """
    try:
        name = os.uname().nodename
    except AttributeError:  # not POSIX
        name = ""
    return name or socket.gethostname()


def hostname() -> str:
    """This host's name as ``uname -n`` prints it (the default profile and ``%n``).

    Example::

        >>> hostname() == (os.uname().nodename or socket.gethostname())
        True
    """
    return _hostname()


# --------------------------------------------------------------------------------------------
# node ids


def gen_runiq() -> str:
    """Return a new ``$RUNIQ``: 10 random characters of ``[0-9A-Za-z]``, the last upper-cased.

    (Upper-casing leaves a final digit a digit.) This is what ``%u`` and a trailing ``/`` in a
    node id expand to.

    Example::

        >>> r = gen_runiq()
        >>> len(r), r[-1] == r[-1].upper()
        (10, True)
    """
    r = "".join(secrets.choice(_ALNUM) for _ in range(10))
    return r[:-1] + r[-1].upper()


def gen_secret() -> str:
    """Return a new shared secret, as ``aemp gensecret`` stores it.

    AEMP stores a random alphanumeric string; we use 64 characters from ``[0-9A-Za-z]``
    chosen with :mod:`secrets` (about 381 bits), safe to paste on a command line.

    Example::

        >>> s = gen_secret()
        >>> len(s), s.isalnum()
        (64, True)
    """
    return "".join(secrets.choice(_ALNUM) for _ in range(64))


def is_randomised(template: str) -> bool:
    """True if node id ``template`` gets a random part (contains ``%u`` or ends in ``/``).

    Randomised nodes use short port names (no ``$UNIQ`` prefix).

    Example::

        >>> is_randomised("anon/"), is_randomised("%n/%u"), is_randomised("seed")
        (True, True, False)
    """
    return "%u" in template or template.endswith("/")


def expand_nodeid(
    template: str, hostname: Optional[str] = None, runiq: Optional[str] = None
) -> str:
    """Expand a node id template: ``%n`` → host name, ``%u`` and a trailing ``/`` → runiq.

    ``runiq`` defaults to a fresh :func:`gen_runiq` (the same value for every occurrence);
    ``hostname`` defaults to :func:`hostname`. Ids without templates come back unchanged.

    Example::

        >>> expand_nodeid("anon/", runiq="Abcdefghi1")
        'anon/Abcdefghi1'
        >>> expand_nodeid("%n/%u", hostname="box", runiq="Abcdefghi1")
        'box/Abcdefghi1'
    """
    if not isinstance(template, str) or not template:
        raise ConfigError("node id template must be a non-empty string, not %r" % (template,))
    if "%n" in template:
        template = template.replace("%n", hostname if hostname is not None else _hostname())
    if "%u" in template or template.endswith("/"):
        if runiq is None:
            runiq = gen_runiq()
        template = template.replace("%u", runiq)
        if template.endswith("/"):
            template += runiq
    return template


def default_nodeid(cfg: Mapping[str, Any]) -> str:
    """Return the node id template of an effective configuration: ``nodeid`` or ``<profile>/``.

    Example::

        >>> default_nodeid({"profile": "seed"}), default_nodeid({"profile": "x", "nodeid": "a"})
        ('seed/', 'a')
    """
    nodeid: Optional[str] = cfg.get("nodeid")
    if nodeid:
        return nodeid
    profile = cfg.get("profile") or _hostname()
    return "%s/" % profile


# --------------------------------------------------------------------------------------------
# addresses

_HOST_RE = re.compile(r"[A-Za-z0-9_.\-]+\Z")


def _parse_port(s: str, port: str) -> Optional[int]:
    if port == "*":
        return None
    if not port.isdigit() or not port.isascii():
        raise ConfigError("%r: port must be a number or '*', not %r" % (s, port))
    n = int(port)
    if n > 65535:
        raise ConfigError("%r: port %d out of range" % (s, n))
    return n or None


def parse_address(s: str, default_host: Optional[str] = None) -> tuple[str, Optional[int]]:
    """Parse a bind or seed address and return ``(host, port)``.

    Forms: ``host:port``, ``[v6addr]:port``, ``[v6addr]``, a bare IPv6 address, ``host``
    alone; ``*`` as host means every local address (see :func:`expand_binds`); ``*``, ``0`` or
    no port gives ``None`` (a dynamic port); a bare number ``N`` is ``(<host name>, N)`` (the
    host is ``default_host`` or :func:`hostname`). Anything else raises :class:`ConfigError`.

    Example::

        >>> parse_address("127.0.0.1:4040"), parse_address("*:*"), parse_address("[::1]:5")
        (('127.0.0.1', 4040), ('*', None), ('::1', 5))
        >>> parse_address("4040", default_host="box")
        ('box', 4040)
    """
    if not isinstance(s, str):
        raise ConfigError("address must be a string, not %r" % (s,))
    t = s.strip()
    if not t:
        raise ConfigError("empty address")
    if t.isdigit() and t.isascii():
        return (default_host if default_host is not None else _hostname(), _parse_port(s, t))
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            raise ConfigError("%r: missing ']'" % s)
        host, rest = t[1:end], t[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("%r: %r is not an IPv6 address" % (s, host)) from None
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise ConfigError("%r: expected ':port' after ']'" % s)
        return host, _parse_port(s, rest[1:])
    if t.count(":") > 1:
        try:
            ipaddress.IPv6Address(t)
        except ValueError:
            raise ConfigError(
                "%r: several ':' but not an IPv6 address (write [addr]:port)" % s
            ) from None
        return t, None
    host, sep, port = t.partition(":")
    if host != "*" and not _HOST_RE.match(host):
        raise ConfigError("%r: bad host %r" % (s, host))
    if not sep:
        return host, None
    return host, _parse_port(s, port)


_SIOCGIFADDR = 0x8915


def _local_ipv4_addresses() -> list[str]:
    """Every local non-loopback IPv4 address (one per interface, Linux ioctl; else DNS)."""
    addrs: list[str] = []
    try:
        import fcntl

        names = socket.if_nameindex()
    except (ImportError, OSError, AttributeError):
        names = []
    if names:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _index, name in names:
                req = struct.pack("256s", name.encode()[:15])
                try:
                    res = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, req)
                except OSError:  # interface has no IPv4 address
                    continue
                addrs.append(socket.inet_ntoa(res[20:24]))
    if not addrs:
        try:
            infos = socket.getaddrinfo(_hostname(), None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            infos = []
        addrs = [str(info[4][0]) for info in infos]  # AF_INET: (host, port)
    return dedup(a for a in addrs if not ipaddress.ip_address(a).is_loopback)


def expand_binds(binds: Union[str, Iterable[str]]) -> list[tuple[str, Optional[int]]]:
    """Turn ``binds`` into a list of ``(host, port_or_None)`` to listen on.

    A ``*`` host becomes every local non-loopback IPv4 address (if none is found,
    ``127.0.0.1``, and that is logged). Duplicates are removed, order is kept. A single
    string is accepted as a one-element list.

    Example::

        >>> expand_binds(["127.0.0.1:4040", "127.0.0.1:4040", "[::1]:*"])
        [('127.0.0.1', 4040), ('::1', None)]
        >>> expand_binds(["*"])    # doctest: +SKIP
        [('192.168.1.5', None), ('10.0.0.7', None)]
    """
    if isinstance(binds, str):
        binds = [binds]
    out: list[tuple[str, Optional[int]]] = []
    local = None
    for b in binds:
        host, port = parse_address(b)
        if host == "*":
            if local is None:
                local = _local_ipv4_addresses()
                if not local:
                    logger.info("no non-loopback IPv4 address found; binding 127.0.0.1 for '*'")
                    local = ["127.0.0.1"]
            out.extend((a, port) for a in local)
        else:
            out.append((host, port))
    return dedup(out)


def dedup(items: Iterable[_H]) -> list[_H]:
    """``items`` without repeats, first occurrence kept, in order.

    Example::

        >>> dedup(["json", "cbor", "json"])
        ['json', 'cbor']
    """
    seen: set[_H] = set()
    out: list[_H] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
