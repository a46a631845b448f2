"""The AEMP configuration: the rc file, profiles, defaults and validation.

aemp_green reads and writes the same rc file as Perl's AnyEvent::MP 2.02 (``aemp`` and
``AnyEvent::MP::Config``), so Python and Perl nodes on one host share their secret, seeds and
profiles:

* :func:`rc_path` finds the file (``$PERL_ANYEVENT_MP_RC``, ``~/.perl-anyevent-mp``,
  ``%APPDATA%/perl-anyevent-mp``);
* :func:`load_rc` / :func:`save_rc` read it (JSON::XS ``relaxed``: ``#`` comments and trailing
  commas) and write it back atomically, pretty-printed the way JSON::XS ``pretty canonical``
  does, mode 0600, keeping the previous file as ``<file>~``;
* :func:`find_profile` merges built-in defaults, ``configure()`` arguments, the rc top level and
  the profile chain with AEMP's precedence; :func:`validate` type-checks and normalises it;
* :func:`expand_nodeid`, :func:`parse_address`, :func:`expand_binds` turn the values into node
  ids and socket addresses.

Every known key is declared once in :data:`SETTINGS` (name, default, validator, doc), in the
manner of gevent's ``_config.py``. Nothing is read at import time: the environment, the host
name, the network interfaces and the file are all looked at only when a function is called.

Example::

    rc = load_rc()                              # {"version": 1} if there is no file
    cfg = validate(find_profile(rc, "seed", binds=["127.0.0.1:4040"]))
    node = expand_nodeid(default_nodeid(cfg))   # e.g. "seed/Xa3kP0qLmZ"
"""

import copy
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import string
import struct
import tempfile
from typing import (
    Any,
    Callable,
    Hashable,
    Iterable,
    Mapping,
    NamedTuple,
    NoReturn,
    Optional,
    TypeVar,
    Union,
    cast,
)

from . import _protocol
from .exceptions import ConfigError

__all__ = [
    "Setting",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "NO_DEFAULT",
    "DEFAULTS",
    "active",
    "set_active",
    "is_configured",
    "setting",
    "FRAMING_FORMATS",
    "AUTH_METHODS",
    "rc_path",
    "parse_relaxed_json",
    "dumps_rc",
    "load_rc",
    "save_rc",
    "find_profile",
    "validate",
    "profile_section",
    "hostname",
    "gen_runiq",
    "gen_secret",
    "is_randomised",
    "expand_nodeid",
    "default_nodeid",
    "parse_address",
    "expand_binds",
]

logger = logging.getLogger(__name__)

#: Framings aemp_green can speak, in default preference order (Perl's "storable" is Perl-only).
FRAMING_FORMATS = _protocol.FRAMINGS

#: Auth methods AEMP 2.02 knows. Only the first two are ever accepted by us without TLS
#: (the transport enforces that; the config merely lists what is allowed to appear).
AUTH_METHODS = _protocol.AUTH_METHODS

_ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase
_MiB = 1024 * 1024
_H = TypeVar("_H", bound=Hashable)


class _NoDefault:
    """Marker for settings that have no built-in default (``secret``, ``cert``, ...)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT = _NoDefault()


class Setting(NamedTuple):
    """One known configuration key.

    ``validator(name, value)`` returns the normalised value or raises :class:`ConfigError`.
    ``default`` is :data:`NO_DEFAULT` when the key is simply absent unless configured.

    Example::

        >>> SETTINGS_BY_NAME["monitor_timeout"].default
        30
    """

    name: str
    default: Any
    validator: Callable[[str, Any], Any]
    doc: str


# --------------------------------------------------------------------------------------------
# validators: each takes (name, value) and returns the normalised value or raises ConfigError


def _v_positive_number(name: str, value: Any) -> Union[int, float]:
    if isinstance(value, str):
        # aemp (Perl) stores command-line arguments as strings: "60" is a valid timeout
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise ConfigError("%s must be a positive number, not %r" % (name, value)) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("%s must be a positive number, not %r" % (name, value))
    if not (value > 0) or value != value or value == float("inf"):
        raise ConfigError("%s must be a positive number, not %r" % (name, value))
    return value


def _v_positive_int(name: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError("%s must be a positive integer, not %r" % (name, value))
    return value


def _v_count(name: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError("%s must be a non-negative integer, not %r" % (name, value))
    return value


_TRUE_STRINGS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "": False,
}


def _v_bool(name: str, value: Any) -> bool:
    # Perl writes booleans as 0/1 (numbers or strings); JSON true/false and null also occur.
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS:
        return _TRUE_STRINGS[value.strip().lower()]
    raise ConfigError("%s must be a boolean (true/false or 0/1), not %r" % (name, value))


def _v_str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError("%s must be a list of strings, not %r" % (name, value))
    for item in value:
        if not isinstance(item, str):
            raise ConfigError("%s must be a list of strings, but contains %r" % (name, item))
    return list(value)


def _dedup(items: Iterable[_H]) -> list[_H]:
    seen: set[_H] = set()
    out: list[_H] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _v_addresses(name: str, value: Any) -> list[str]:
    value = _v_str_list(name, value)
    for item in value:
        try:
            parse_address(item, default_host="localhost")
        except ConfigError as e:
            raise ConfigError("%s: %s" % (name, e)) from None
    return cast(list[str], value)  # _v_str_list's result


def _v_listen_address(name: str, value: Any) -> Optional[str]:
    """An optional ``host:port`` to listen on (a bare port means loopback, port 0 any free
    one)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError("%s must be a host:port string, not %r" % (name, value))
    try:
        parse_address(value, default_host="127.0.0.1")
    except ConfigError as e:
        raise ConfigError("%s: %s" % (name, e)) from None
    return value


def _v_framing(name: str, value: Any) -> list[str]:
    value = _v_str_list(name, value)
    known = [f for f in value if f in FRAMING_FORMATS]
    unknown = [f for f in value if f not in FRAMING_FORMATS]
    if not known:
        raise ConfigError(
            "%s %r contains no framing aemp_green supports (%s)"
            % (name, value, ", ".join(FRAMING_FORMATS))
        )
    if unknown:
        logger.debug(
            "%s: ignoring framings aemp_green does not speak: %s", name, ", ".join(unknown)
        )
    return _dedup(known)


def _v_auth(name: str, value: Any) -> list[str]:
    value = _v_str_list(name, value)
    for item in value:
        if item not in AUTH_METHODS:
            raise ConfigError(
                "%s: unknown auth method %r (known: %s)" % (name, item, ", ".join(AUTH_METHODS))
            )
    return _dedup(value)


def _v_optional_str(name: str, value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise ConfigError("%s must be a string, not %s" % (name, type(value).__name__))
    return value


_NODEID_RE = re.compile(r"[A-Za-z0-9_\-.:/%]*\Z")


def _v_nodeid(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError("%s must be a string, not %s" % (name, type(value).__name__))
    if value == "":
        raise ConfigError("%s must not be empty (leave it unset for the default <profile>/)" % name)
    if "#" in value:
        raise ConfigError("%s %r must not contain '#' (it separates node and port)" % (name, value))
    if not _NODEID_RE.match(value):
        raise ConfigError(
            "%s %r may only contain A-Z a-z 0-9 _ - . : / (and the %%n, %%u "
            "templates)" % (name, value)
        )
    stray = re.sub("%[nu]", "", value)
    if "%" in stray:
        raise ConfigError(
            "%s %r: only %%n (host name) and %%u (random id) may follow '%%'" % (name, value)
        )
    return value


def _v_services(name: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError("%s must be a list, not %r" % (name, value))
    for item in value:
        ok = isinstance(item, str) or (
            isinstance(item, (list, tuple)) and item and isinstance(item[0], str)
        )
        if not ok:
            raise ConfigError(
                "%s entries must be \"Mod::\", \"Pkg::func\" or "
                "[\"Pkg::func\", args...], not %r" % (name, item)
            )
    return [list(i) if isinstance(i, tuple) else i for i in value]


def _v_version(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise ConfigError("%s must be an integer, not %r" % (name, value))
    return value


def _v_any(name: str, value: Any) -> Any:
    return value


# --------------------------------------------------------------------------------------------
# the declarative table

#: Every key aemp_green knows, with its default, validator and meaning. Keys not in this table
#: are kept untouched everywhere (an rc file written by a newer Perl must survive a round-trip).
SETTINGS = (
    Setting("version", NO_DEFAULT, _v_version, "Format version of the rc file; AEMP writes 1."),
    Setting(
        "secret",
        NO_DEFAULT,
        _v_optional_str,
        "Shared secret for hmac_sha3_512 auth; without it only TLS auth is possible.",
    ),
    Setting(
        "cert",
        NO_DEFAULT,
        _v_optional_str,
        "PEM text holding key, certificate and CA certificates; enables TLS.",
    ),
    Setting(
        "nodeid",
        NO_DEFAULT,
        _v_nodeid,
        "Node id template (%n host name, %u or trailing / random id); default '<profile>/'.",
    ),
    Setting(
        "binds",
        ["*"],
        _v_addresses,
        "host:port addresses to listen on; '*' host = every local address, "
        "'*' or no port = dynamic.",
    ),
    Setting("seeds", [], _v_addresses, "host:port addresses of seed nodes to keep connected to."),
    Setting(
        "services",
        NO_DEFAULT,
        _v_services,
        "Things to start: 'Mod::', 'Pkg::func' or ['Pkg::func', args...].",
    ),
    Setting(
        "parent", NO_DEFAULT, _v_optional_str, "Name of the profile this profile inherits from."
    ),
    Setting(
        "monitor_timeout",
        30,
        _v_positive_number,
        "Seconds: handshake read timeout and upper bound of reconnect back-off.",
    ),
    Setting(
        "connect_interval",
        2,
        _v_positive_number,
        "Seconds: connect timeout and the gap between trying a node's addresses.",
    ),
    Setting(
        "framing_format",
        list(_protocol.FRAMINGS),
        _v_framing,
        "Framings we offer and accept, in preference order (cbor, json).",
    ),
    Setting(
        "auth_offer",
        list(_protocol.DEFAULT_AUTH),
        _v_auth,
        "Auth methods we are willing to send, in preference order.",
    ),
    Setting(
        "auth_accept",
        list(_protocol.DEFAULT_AUTH),
        _v_auth,
        "Auth methods we accept from a peer (cleartext/tls_anon never without TLS).",
    ),
    Setting(
        "autocork",
        False,
        _v_bool,
        "AEMP's AnyEvent::Handle autocork; accepted for rc-file compatibility, no effect "
        "here (writes are coalesced per loop turn and a lone message goes out at once).",
    ),
    Setting("nodelay", True, _v_bool, "Set TCP_NODELAY on node connections."),
    Setting("secure", False, _v_bool, "Refuse remote eval, function calls and spawn requests."),
    Setting(
        "eval",
        NO_DEFAULT,
        _v_any,
        "Perl code run at the end of configure (Perl nodes only; ignored by us).",
    ),
    # ---- aemp_green tuning keys (unknown to Perl, which ignores them) ----
    Setting(
        "max_frame",
        64 * _MiB,
        _v_positive_int,
        "aemp_green: largest data frame (bytes) accepted before the peer is dropped.",
    ),
    Setting(
        "line_max",
        _protocol.MAX_LINE,
        _v_positive_int,
        "aemp_green: handshake read-buffer limit in bytes (Perl's rbuf_max).",
    ),
    Setting(
        "keepalive",
        True,
        _v_bool,
        "aemp_green: probe idle links with the node-port time request (every AEMP peer "
        "answers) and drop a link that received nothing for monitor_timeout (AEMP 2.02 "
        "waits for TCP instead).",
    ),
    Setting(
        "handshake_timeout",
        NO_DEFAULT,
        _v_positive_number,
        "aemp_green: seconds an incoming handshake may take (default: monitor_timeout).",
    ),
    Setting(
        "max_pending_handshakes",
        256,
        _v_positive_int,
        "aemp_green: unfinished incoming handshakes kept at once; beyond it the oldest "
        "stalled one of the source address with the most is dropped (slowloris defence).",
    ),
    Setting(
        "max_pending_per_source",
        32,
        _v_positive_int,
        "aemp_green: unfinished incoming handshakes kept at once from one source IP address; "
        "beyond it that source's oldest is dropped.",
    ),
    Setting(
        "check_peeraddr",
        True,
        _v_bool,
        "aemp_green: refuse a handshake whose peer greeting does not name our address of "
        "that connection (stops relayed handshakes; see docs/security.md). Switch off only "
        "if public_addresses cannot describe your NAT.",
    ),
    Setting(
        "public_addresses",
        [],
        _v_addresses,
        "aemp_green: extra host:port addresses peers reach or see this node at (NAT, "
        "proxies, port forwards); port '*' matches any port (an outgoing NAT address).",
    ),
    # the replicated database (globaldb)
    Setting(
        "db_stamp_skew",
        300,
        _v_positive_number,
        "aemp_green: seconds a database write stamp from another global node may be ahead "
        "of our clock; a later stamp is replaced by ours (logged).",
    ),
    Setting(
        "db_max_value",
        _MiB,
        _v_positive_int,
        "aemp_green: largest database value (bytes of JSON); larger ones raise in db_set "
        "and are dropped (logged) when a peer sends them.",
    ),
    Setting(
        "db_max_key",
        1024,
        _v_positive_int,
        "aemp_green: longest database key or family name (characters).",
    ),
    Setting(
        "db_max_keys",
        1000000,
        _v_positive_int,
        "aemp_green: keys one source node may hold on a global node; new keys beyond it "
        "are dropped (logged).",
    ),
    Setting(
        "db_max_watches",
        10000,
        _v_positive_int,
        "aemp_green: families one node may watch (db_mon) on a global node.",
    ),
    Setting(
        "db_chunk",
        64 * 1024,
        _v_positive_int,
        "aemp_green: target bytes of one database frame; larger families, replies and "
        "updates travel in several frames.",
    ),
    Setting(
        "max_node_addrs",
        64,
        _v_positive_int,
        "aemp_green: addresses kept for one node from g_found or the 'l family.",
    ),
    Setting(
        "max_addr_len",
        256,
        _v_positive_int,
        "aemp_green: longest host:port address accepted from g_found or the 'l family.",
    ),
    Setting(
        "max_forward_depth",
        8,
        _v_positive_int,
        "aemp_green: how deep node-port requests may nest (a request to our own node port "
        "made while handling another, e.g. snd relays to ourselves); deeper ones are dropped.",
    ),
    Setting(
        "max_nodes",
        10000,
        _v_positive_int,
        "aemp_green: other nodes kept in memory; beyond it down nodes are forgotten (oldest "
        "first) and relays from peers to yet unknown nodes are dropped.",
    ),
    Setting(
        "allow_trace",
        False,
        _v_bool,
        "aemp_green: let a secure node stream its traffic trace and log records to other "
        "nodes (aemp trace, logcatcher); a node that is not secure always does.",
    ),
    Setting(
        "allow_introspection",
        False,
        _v_bool,
        "aemp_green: let a secure node answer introspection requests (aemp ps/links/top, "
        "introspect.info); a node that is not secure always does.",
    ),
    Setting(
        "introspection_max_ports",
        1000,
        _v_positive_int,
        "aemp_green: most ports one introspection answer to another node lists (the busiest "
        "first).",
    ),
    Setting(
        "metrics",
        NO_DEFAULT,
        _v_listen_address,
        "aemp_green: host:port serving this node's introspection counters in Prometheus text "
        "format (needs the extra aemp_green[metrics]); a bare port listens on loopback.",
    ),
    Setting(
        "metrics_ports",
        10,
        _v_positive_int,
        "aemp_green: the busiest ports whose counters the metrics list (one series each).",
    ),
    Setting(
        "max_trace_streams",
        16,
        _v_positive_int,
        "aemp_green: trace streams (aemp trace) and log-record streams (logcatcher) this "
        "node sends at once, each; further subscriptions are refused.",
    ),
    Setting(
        "log_rate_lines",
        5,
        _v_positive_int,
        "aemp_green: log lines per peer and reason for bad input from the network, per "
        "log_rate_interval; further ones are counted and reported as suppressed.",
    ),
    Setting(
        "log_rate_interval",
        60,
        _v_positive_number,
        "aemp_green: seconds of one log_rate_lines window.",
    ),
    Setting(
        "check_local_messages",
        False,
        _v_bool,
        "aemp_green: snd to a local port also checks the message could cross the wire "
        "(raises TypeError as for a remote port); on in the test suite.",
    ),
    Setting(
        "perl_bytes_as_text",
        True,
        _v_bool,
        "aemp_green: byte strings from a Perl node (cbor framing) arrive as str, read as "
        "Latin-1 (a Perl string has no bytes/text distinction); between Python nodes bytes "
        "stay bytes.",
    ),
    Setting(
        "max_dials",
        64,
        _v_positive_int,
        "aemp_green: outgoing connection attempts (connect and handshake) in progress at "
        "once; more wait up to connect_interval for a turn (taking it from a dial whose "
        "node gave up), then are dropped.",
    ),
    Setting(
        "fd_reserve",
        64,
        _v_count,
        "aemp_green: file descriptors kept free for accepting connections: no dial while "
        "fewer than this many are left below RLIMIT_NOFILE (0: no check).",
    ),
    Setting(
        "dial_backoff_max",
        10,
        _v_positive_number,
        "aemp_green: longest pause (s) before an address whose dials failed is dialled "
        "again (the pause starts at connect_interval / 4 and doubles per failure).",
    ),
    Setting(
        "link_high_water",
        4 * _MiB,
        _v_positive_int,
        "aemp_green: bytes queued on a link above which a greenlet sender waits until they "
        "drained to link_low_water (Erlang's busy distribution port).",
    ),
    Setting(
        "link_low_water",
        NO_DEFAULT,
        _v_positive_int,
        "aemp_green: bytes a busy link must drain to before waiting senders go on "
        "(default: half of link_high_water).",
    ),
    Setting(
        "link_hard_limit",
        64 * _MiB,
        _v_positive_int,
        "aemp_green: bytes queued on a link (or for a node not yet connected) beyond which "
        "a sender that cannot wait (callback handler, hub, link reader) fails the link.",
    ),
    # the web observer (aemp_green.observer, docs/observer.md)
    Setting(
        "observer",
        NO_DEFAULT,
        _v_listen_address,
        "aemp_green: host:port the web observer page listens on (loopback unless a host is "
        "given; port 0 picks a free one); access needs the token printed at start.",
    ),
    Setting(
        "observer_timeout",
        2,
        _v_positive_number,
        "aemp_green: seconds the observer waits for each node's introspection answer.",
    ),
    Setting(
        "observer_max_nodes",
        64,
        _v_positive_int,
        "aemp_green: most nodes the observer asks for their state per refresh.",
    ),
    Setting(
        "observer_refresh",
        1,
        _v_positive_number,
        "aemp_green: least seconds between two gatherings of the network view (browsers "
        "polling faster share the last one).",
    ),
    Setting(
        "observer_max_clients",
        16,
        _v_positive_int,
        "aemp_green: HTTP requests the observer serves at once.",
    ),
    Setting(
        "observer_idle_timeout",
        10,
        _v_positive_number,
        "aemp_green: seconds an observer HTTP connection may stall (reading its request or "
        "its answer) before it is dropped.",
    ),
)

#: Lookup of :data:`SETTINGS` by key name.
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

#: The built-in defaults (AEMP 2.02 adapted to aemp_green). Treat as read-only:
#: :func:`find_profile` deep-copies it.
DEFAULTS = {s.name: s.default for s in SETTINGS if s.default is not NO_DEFAULT}

#: This node's effective settings: the defaults until ``configure`` has run, then what it
#: worked out. Every layer reads its settings here (``setting``); ``set_active`` fills the
#: dict in place, so a module may keep a reference to it.
active: dict[str, Any] = dict(DEFAULTS)
_configured = False


def set_active(cfg: "dict[str, Any] | None") -> None:
    """Make ``cfg`` this node's effective settings (``None``: back to the defaults, not
    configured). ``configure`` calls it; nothing else should.

    Example::

        set_active(validate(find_profile(load_rc(), None, nodeid="n/")))
    """
    global _configured
    active.clear()
    active.update(DEFAULTS if cfg is None else cfg)
    _configured = cfg is not None


def is_configured() -> bool:
    """True once ``configure`` has run in this process.

    Example::

        if not is_configured(): configure(...)
    """
    return _configured


def setting(name: str, default: Any = None) -> Any:
    """One value of this node's effective settings (no copy).

    Example::

        timeout = float(setting("monitor_timeout", 30))
    """
    return active.get(name, default)


# --------------------------------------------------------------------------------------------
# locating, reading and writing the rc file


def rc_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """Return the path of the AEMP rc file.

    ``$PERL_ANYEVENT_MP_RC`` if set, else ``$HOME/.perl-anyevent-mp``, else
    ``$APPDATA/perl-anyevent-mp`` (empty variables count as unset). With none of the three the
    home directory from the password database is used.

    Example::

        >>> rc_path({"HOME": "/home/ann"})
        '/home/ann/.perl-anyevent-mp'
    """
    env = os.environ if environ is None else environ
    if env.get("PERL_ANYEVENT_MP_RC"):
        return env["PERL_ANYEVENT_MP_RC"]
    if env.get("HOME"):
        return os.path.join(env["HOME"], ".perl-anyevent-mp")
    if env.get("APPDATA"):
        return os.path.join(env["APPDATA"], "perl-anyevent-mp")
    return os.path.join(os.path.expanduser("~"), ".perl-anyevent-mp")


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _relaxed_error(text: str, pos: int, msg: str) -> ConfigError:
    line, col = _line_col(text, pos)
    err = ConfigError("line %d column %d: %s" % (line, col, msg))
    err.lineno, err.colno, err.pos = line, col, pos  # type: ignore[attr-defined]
    return err


def _strip_relaxed(text: str) -> str:
    """Blank out ``#`` comments and trailing commas so strict JSON remains.

    Positions are kept (comments become spaces, a dropped comma one space), so errors from
    the strict parser still point into the original text.
    """
    out = None  # list of chars, created on the first change
    n = len(text)
    i = 0
    last = None  # last significant character outside strings and comments
    pending_comma = None  # index of a comma that is trailing if ] or } comes next
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while True:
                if j >= n:
                    raise _relaxed_error(text, i, "unterminated string")
                d = text[j]
                if d == "\\":
                    j += 2
                    continue
                if d == '"':
                    break
                if d < " " and d != "\t":  # relaxed allows literal TABs, nothing else
                    raise _relaxed_error(text, j, "invalid control character in string")
                j += 1
            i = j + 1
            last = '"'
            pending_comma = None
            continue
        if c == "#":
            j = text.find("\n", i)
            if j < 0:
                j = n
            if out is None:
                out = list(text)
            out[i:j] = " " * (j - i)
            i = j
            continue
        if c in " \t\r\n":
            i += 1
            continue
        if c in "]}" and pending_comma is not None:
            if out is None:
                out = list(text)
            out[pending_comma] = " "
        if c == "," and last is not None and last not in "[{,:":
            pending_comma = i
        else:
            pending_comma = None
        last = c
        i += 1
    return text if out is None else "".join(out)


def _bad_constant(name: str) -> NoReturn:
    raise ConfigError("%s is not valid JSON" % name)


def parse_relaxed_json(text: Union[str, bytes, bytearray]) -> Any:
    """Parse JSON the way JSON::XS ``relaxed`` does and return the value.

    Besides strict JSON it allows ``#`` comments to the end of the line (outside strings),
    a trailing comma before ``]`` or ``}`` and literal TAB characters inside strings.
    ``text`` may be ``str`` or UTF-8 ``bytes``.

    Raises :class:`ConfigError` with ``line N column M`` (also as ``lineno``/``colno``
    attributes) on malformed input; ``NaN`` and ``Infinity`` are refused like JSON::XS does.

    Example::

        >>> parse_relaxed_json('{"a": [1, 2,],  # the list\\n "b": "x#y,]"}')
        {'a': [1, 2], 'b': 'x#y,]'}
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError("byte %d: not valid UTF-8" % e.start) from None
    strict = _strip_relaxed(text)
    try:
        return json.loads(strict, strict=False, parse_constant=_bad_constant)
    except json.JSONDecodeError as e:
        raise _relaxed_error(text, e.pos, e.msg) from None


def dumps_rc(cfg: Mapping[str, Any]) -> str:
    """Return ``cfg`` as JSON::XS ``pretty canonical`` text (what :func:`save_rc` writes).

    Three-space indent, ``"key" : value``, keys sorted, raw UTF-8 text, a final newline.

    Example::

        >>> print(dumps_rc({"version": 1, "seeds": ["h:1"]}), end="")
        {
           "seeds" : [
              "h:1"
           ],
           "version" : 1
        }
    """
    try:
        text = json.dumps(
            cfg,
            indent=3,
            separators=(",", " : "),
            sort_keys=True,
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise ConfigError("configuration cannot be written as JSON: %s" % e) from None
    return text + "\n"


def load_rc(path: Optional[str] = None) -> dict[str, Any]:
    """Read the rc file and return its top-level object as a dict.

    A missing or unreadable file gives ``{"version": 1}`` (as AEMP does; logged at debug).
    A file that exists but is not relaxed JSON, or whose top level is not an object, raises
    :class:`ConfigError` naming the file, line and column.

    Example::

        rc = load_rc()                      # $PERL_ANYEVENT_MP_RC or ~/.perl-anyevent-mp
        rc = load_rc("/etc/aemp/rc")
    """
    if path is None:
        path = rc_path()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        logger.debug("rc file %s not read (%s); using {version: 1}", path, e)
        return {"version": 1}
    try:
        rc = parse_relaxed_json(data)
    except ConfigError as e:
        raise ConfigError("%s: %s" % (path, e)) from None
    if not isinstance(rc, dict):
        raise ConfigError(
            "%s: the top level must be a JSON object, not %s" % (path, type(rc).__name__)
        )
    logger.debug("loaded rc file %s", path)
    return rc


def _fsync_dir(dirname: str) -> None:
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_rc(cfg: Mapping[str, Any], path: Optional[str] = None) -> str:
    """Write ``cfg`` to the rc file atomically and return the path written.

    The text is :func:`dumps_rc` output. It goes to a temporary file in the same directory
    (mode 0600, since it holds the secret), is fsync'ed, the current file is kept as
    ``<path>~`` (hard link, or a copy where links are impossible) and the new file is
    moved into place with :func:`os.replace`, so readers see either the old or the new file.
    A symlinked rc file is followed: its target is replaced. Unknown keys are written as
    they are. OS errors propagate as :class:`OSError`.

    Example::

        rc = load_rc()
        profile_section(rc, "seed")["binds"] = ["127.0.0.1:4040"]
        save_rc(rc)
    """
    if path is None:
        path = rc_path()
    text = dumps_rc(cfg).encode("utf-8")
    path = os.path.realpath(path)
    dirname = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=dirname)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if os.path.exists(path):
            _keep_backup(path, dirname)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dirname)
    logger.debug("saved rc file %s", path)
    return path


def _keep_backup(path: str, dirname: str) -> None:
    """Make ``<path>~`` hold the current content of ``path`` without ever removing ``path``."""
    backup = path + "~"
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".bak-", dir=dirname)
    os.close(fd)
    try:
        try:
            os.unlink(tmp)
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o600)  # the old file holds the secret too
        os.replace(tmp, backup)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------------------------
# profiles


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


hostname = _hostname


def _profiles(rc: Mapping[str, Any]) -> dict[str, Any]:
    table = rc.get("profile")
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(
            "rc 'profile' must be an object of profiles, not %s" % type(table).__name__
        )
    return table


def _profile_chain(rc: Mapping[str, Any], name: Optional[str]) -> list[dict[str, Any]]:
    """Profiles to apply, parents first, the named one last (missing ones skipped)."""
    table = _profiles(rc)
    chain: list[dict[str, Any]] = []
    seen: list[str] = []
    while name is not None:
        if name in seen:
            raise ConfigError("profile parent loop: %s" % " -> ".join(seen + [name]))
        seen.append(name)
        prof = table.get(name)
        if prof is None:
            break
        if not isinstance(prof, dict):
            raise ConfigError("profile %r must be an object, not %s" % (name, type(prof).__name__))
        chain.append(prof)
        name = prof.get("parent")
        if name is not None and not isinstance(name, str):
            raise ConfigError(
                "profile %r: parent must be a profile name, not %r" % (seen[-1], name)
            )
    chain.reverse()
    return chain


def find_profile(
    rc: Optional[Mapping[str, Any]], name: Optional[str] = None, **kv: Any
) -> dict[str, Any]:
    """Return the effective configuration for profile ``name`` (a new dict).

    Precedence, later wins (AEMP's ``find_profile``): :data:`DEFAULTS`, then the
    ``configure()`` arguments ``kv``, then the rc top level (without its ``profile`` table),
    then the profile chain - the ``parent`` profiles first (recursively), the named profile
    last. With ``force=True`` the ``kv`` win over the rc file and the profiles (defaults stay
    lowest); with ``norc=True`` the rc file is ignored. ``kv`` entries whose value is ``None``
    count as not given. ``name=None`` means the host name. A profile that does not exist is
    no error. Unknown keys are kept; the result also has ``"profile"``: the name used.
    A parent cycle raises :class:`ConfigError` ("profile parent loop"). Values are not
    validated here: see :func:`validate`.

    Example::

        >>> rc = {"version": 1, "secret": "s",
        ...       "profile": {"seed": {"parent": "base", "nodeid": "seed"},
        ...                   "base": {"binds": ["*:4040"]}}}
        >>> cfg = find_profile(rc, "seed", monitor_timeout=10)
        >>> cfg["nodeid"], cfg["binds"], cfg["monitor_timeout"], cfg["profile"]
        ('seed', ['*:4040'], 10, 'seed')
    """
    norc = bool(kv.pop("norc", False))
    force = bool(kv.pop("force", False))
    kv.pop("profile", None)
    if name is None:
        name = _hostname()
    args = {k: v for k, v in kv.items() if v is not None}

    layers: list[dict[str, Any]] = []
    if not norc:
        rc = rc or {}
        top = {k: v for k, v in rc.items() if k != "profile"}
        layers.append(top)
        layers.extend(_profile_chain(rc, name))

    cfg = copy.deepcopy(DEFAULTS)
    if not force:
        cfg.update(copy.deepcopy(args))
    for layer in layers:
        cfg.update(copy.deepcopy(layer))
    if force:
        cfg.update(copy.deepcopy(args))
    cfg["profile"] = name
    return cfg


def profile_section(rc: dict[str, Any], name: Optional[str] = None) -> dict[str, Any]:
    """Return the dict the ``aemp`` settings commands edit (created on demand).

    ``name=None`` is the rc top level itself; otherwise ``rc["profile"][name]``.

    Example::

        >>> rc = {"version": 1}
        >>> profile_section(rc, "seed")["nodeid"] = "seed"
        >>> rc
        {'version': 1, 'profile': {'seed': {'nodeid': 'seed'}}}
    """
    if name is None:
        return rc
    table = rc.setdefault("profile", {})
    if not isinstance(table, dict):
        raise ConfigError(
            "rc 'profile' must be an object of profiles, not %s" % type(table).__name__
        )
    return cast(dict[str, Any], table.setdefault(name, {}))


def validate(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Type-check and normalise the known keys of ``cfg``; return a new dict.

    Unknown keys are copied unchanged, absent keys stay absent. Normalisation: numeric strings
    become numbers, ``0``/``1`` (as Perl writes them) become booleans, a single string for a
    list key (``binds``, ``seeds``, ``services``, ``framing_format``, ``auth_*``) becomes a
    one-element list, duplicates in the framing/auth lists are dropped, and framings we cannot
    speak (``storable``) are dropped if one we can remains. Raises :class:`ConfigError` with a
    message naming the key otherwise.

    Example::

        >>> validate({"nodelay": 0, "seeds": "h:4040", "framing_format": ["storable", "json"]})
        {'nodelay': False, 'seeds': ['h:4040'], 'framing_format': ['json']}
    """
    if not isinstance(cfg, dict):
        raise ConfigError("configuration must be a dict, not %s" % type(cfg).__name__)
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        setting = SETTINGS_BY_NAME.get(key)
        out[key] = copy.deepcopy(value) if setting is None else setting.validator(key, value)
    return out


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
    return _dedup(a for a in addrs if not ipaddress.ip_address(a).is_loopback)


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
    return _dedup(out)
