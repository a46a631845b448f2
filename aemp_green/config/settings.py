"""config.settings: every setting, once, with its default, validator and doc; this node's
effective settings.

:data:`SETTINGS` declares each known key (name, default, validator, one-line doc), in the
manner of gevent's ``_config.py``; :func:`validate` type-checks and normalises a merged
configuration; :data:`active` holds this node's effective settings (filled in place by
``configure`` through :func:`set_active`; every layer reads it, or :func:`setting`).

Example::

    SETTINGS_BY_NAME["monitor_timeout"].default     # 30
    validate({"nodelay": 0})                        # {'nodelay': False}
"""

import copy
import logging
import re
import string
from typing import (
    Any,
    Callable,
    Mapping,
    NamedTuple,
    Optional,
    Union,
    cast,
)

from .. import _protocol
from ..exceptions import ConfigError
from .addresses import dedup as _dedup
from .addresses import parse_address

logger = logging.getLogger(__name__)

#: Framings aemp_green can speak, in default preference order (Perl's "storable" is Perl-only).
FRAMING_FORMATS = _protocol.FRAMINGS

#: Auth methods AEMP 2.02 knows. Only the first two are ever accepted by us without TLS
#: (the transport enforces that; the config merely lists what is allowed to appear).
AUTH_METHODS = _protocol.AUTH_METHODS

_ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase
_MiB = 1024 * 1024


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
