"""_handshake: the AEMP greeting/auth exchange as a sans-IO state machine
(docs/protocol.md#handshake).

``Handshake`` never touches a socket. The I/O layer sends ``data_to_send()``, feeds whatever it
reads to ``receive_data(data)`` and reacts to the events that come back; the same object thus
runs over plain sockets, TLS sockets, or recorded bytes in tests.

Exchange (``role="connect"``: we dialled; ``role="accept"``: the peer dialled us)::

    we send  : line 1  aemp;1;<nodeid>;<auth_accept,...>;<framings,...>;key=value;...
               line 2  <nonce: base64 of 66 random bytes, 88 chars>
    we read  : the peer's two lines           -> GreetingReceived (or RemoteProtocolError)
               (both want TLS)                -> NeedTLS; the I/O layer upgrades, then calls
                                                 start_tls_done()
    connector: <auth method>;<token>;<framing we will send>      (as soon as the greeting checks)
    we read  : the peer's auth line, verified -> Established; bytes after it: trailing_data
    acceptor : <auth method>;<token>;<framing we will send>      (only after Established)

Relays. AEMP's tokens cover the four greeting lines, but both sides send theirs before checking
the peer's, so a relay between two nodes could hand one node's token to the other. Two rules
stop that without changing a byte of what a Perl AEMP 2.x peer sees:

* **The connector proves first** (as in Erlang's distribution handshake): an acceptor sends its
  auth line only after the connector's checked out. A Perl connector sends its auth line
  without waiting for ours anyway. An attacker who opens connections to two nodes gets no
  token from either.
* **The greeting names who was dialled**: line 1 carries ``peeraddr`` (the connector: the
  address it dialled; the acceptor: the connector's address as it sees it) and the tokens cover
  it. With ``peeraddr_check`` (a callable ``addr -> bool`` the I/O layer supplies) the acceptor
  refuses a connector whose ``peeraddr`` is not one of its own addresses, so the proof of a node
  that was made to dial an attacker is useless at any other node; and the connector refuses an
  acceptor whose ``peeraddr`` is not its own side of the connection, so two nodes made to dial
  an attacker cannot be cross-relayed. The check runs before we send anything beyond the
  greeting. Missing ``peeraddr`` fails it.

States (``state``)::

    state       input                       -> next state   events / output
    LINE1       peer line 1 (checked)       -> LINE2
    LINE2       peer line 2 (checked)       -> AUTH         GreetingReceived; connector: our
                                                            auth line
                                            -> WAIT_TLS     GreetingReceived, NeedTLS
    WAIT_TLS    start_tls_done()            -> AUTH         connector: our auth line
    AUTH        peer auth line (verified)   -> ESTABLISHED  Established; acceptor: our auth line
    ESTABLISHED more bytes                  -> ESTABLISHED  appended to trailing_data
    any         a failed check              -> ERROR        RemoteProtocolError (raised again
                                                            by every later call)

Checks, in order, and their errors (all ``RemoteProtocolError``; the text is what Perl logs):

* a line longer than ``max_line`` bytes before its LF: "greeting line too long" (auth line:
  "auth line too long"). LF ends a line; a CR before it is dropped.
* line 1: at least 5 ``;`` fields, UTF-8 ("unparsable greeting"); protocol name
  ("unparsable greeting, expected 'aemp', got '...'"); version 1 ("version mismatch (we: 1,
  they: N)"); non-empty node id without control characters.
* after line 2: our own two lines echoed back ("authentication error, echo attack?"), checked
  first so that an echo is reported as such; then our own node id ("I refuse to talk to
  myself"); then, with ``peeraddr_check``, the peer's ``peeraddr`` ("peer dialled ..., which is
  not an address of this node" / "peer sees us at ..., which is not this connection's
  address"). Duplicate connections are the I/O layer's business: it sees GreetingReceived
  before anything of ours beyond the greeting has been sent, and may simply close.
* auth choice: the first entry of the peer's field 4 that is in our ``auth_offer``, skipping
  ``tls_*`` (and, stricter than Perl, ``cleartext``) unless TLS is active ("<list>: no common
  auth type supported"); ``hmac_sha3_512``/``cleartext`` need a secret ("unable to handshake
  TLS and no shared secret configured").
* framing we send: the first entry of the peer's field 5 that is in our ``framings`` ("no
  common framing method supported"). Each direction chooses on its own, so the two directions
  can differ.
* the peer's auth line ``method;token;framing`` (exactly three fields): a method we do not know
  ("fatal, selected unsupported rcv auth method"); stricter than Perl, a method that is not in
  our ``auth_accept`` ("<method>: auth method not accepted") and ``tls_*``/``cleartext``
  without TLS ("<method>: auth method needs TLS"); the token, compared in constant time
  ("authentication failure/shared secret mismatch"); the framing it announces must be ``cbor``
  or ``json`` ("<framing>: unusable remote framing").

Tokens: ``hmac_sha3_512`` is ``hmac.new(secret, msg, sha3_512).hexdigest()`` with
``msg = my1\\nmy2\\npeer1\\npeer2\\n`` for the token we send and peer-first order for the one we
expect; ``tls_sha3_512`` is the plain SHA3-512 hex of the same text; ``tls_anon`` is empty;
``cleartext`` is the lowercase hex of the secret. A ``str`` secret is used as UTF-8 bytes.

Protocol names: the object is created with the name we send (``"aemp"``, or ``"aemp-<word>"``
for a sub-protocol such as ``aemp-dataconn``). We accept the peer's name if it equals ours; if
ours is ``aemp`` we also accept ``aemp-<word>`` (a listener cannot know in advance that a
connection is a data connection), and if ours is ``aemp-<word>`` we also accept plain ``aemp``
(the listener's greeting). The name the peer sent is in ``GreetingReceived.protocol`` and the
sub-protocol in effect in ``Established.protocol``.

TLS: wanted when we have a certificate (``tls_offered``) and the peer's ``tls`` value is 1 as
Perl's ``int()`` reads it (``1.0`` counts). The side whose nonce text is lower is the TLS client.
The auth method and framing are chosen when the greeting arrives (so a hopeless peer is refused
before any TLS work); the auth line is queued by ``start_tls_done()``. Bytes that arrived after
the peer's line 2 in the same ``receive_data`` call are not handshake lines but the start of the
peer's TLS handshake: they are kept in ``pre_tls_data`` for the I/O layer to hand to its TLS
object (the gevent transport avoids this by reading the greeting line by line).

Example::

    >>> a = Handshake(nodeid="a", secret="s3cret", peeraddr="10.0.0.2:4040")   # a dials b
    >>> b = Handshake(nodeid="b", secret="s3cret", framings=("json",), role="accept",
    ...               peeraddr="10.0.0.1:5555", peeraddr_check=lambda x: x == "10.0.0.2:4040")
    >>> [type(e).__name__ for e in b.receive_data(a.data_to_send())]
    ['GreetingReceived']
    >>> [type(e).__name__ for e in a.receive_data(b.data_to_send())]   # b's greeting only
    ['GreetingReceived']
    >>> est_b = b.receive_data(a.data_to_send())[0]    # a's auth line: a proved it first
    >>> (est_b.send_framing, est_b.recv_framing, est_b.peer_nodeid, est_b.auth_method)
    ('json', 'json', 'a', 'hmac_sha3_512')
    >>> [type(e).__name__ for e in a.receive_data(b.data_to_send())]   # now b's auth line
    ['Established']
"""

import base64
import hashlib
import hmac
import logging
import os
import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Union

from .. import _protocol
from ..exceptions import LocalProtocolError, RemoteProtocolError

__all__ = [
    "Handshake",
    "GreetingReceived",
    "NeedTLS",
    "Established",
    "hmac_token",
    "tls_token",
    "make_nonce",
    "parse_greeting_line1",
    "KNOWN_AUTH_METHODS",
    "USABLE_FRAMINGS",
    "PROTOCOL_VERSION",
    "DEFAULT_PROVIDER",
    "ROLES",
    "PERL_PROVIDER_PREFIX",
    "is_perl_peer",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = _protocol.PROTOCOL_VERSION

#: What we send as ``provider=`` unless told otherwise.
DEFAULT_PROVIDER = _protocol.PROVIDER

#: How a Perl AnyEvent::MP node names itself in ``provider=`` (``AE-2.02``).
PERL_PROVIDER_PREFIX = _protocol.PERL_PROVIDER_PREFIX


def is_perl_peer(kv: Optional[Mapping[str, Any]]) -> bool:
    """True when a greeting's key=value pairs (``GreetingReceived.kv``) come from a Perl
    AnyEvent::MP node, whose strings have no bytes/text distinction.

    Example::

        >>> is_perl_peer({"provider": "AE-2.02"}), is_perl_peer({"provider": "aemp_green-0.2.0"})
        (True, False)
    """
    return str((kv or {}).get("provider") or "").startswith(PERL_PROVIDER_PREFIX)


#: The auth methods this module can check on receipt.
KNOWN_AUTH_METHODS = _protocol.AUTH_METHODS

#: Framings a peer may announce in its auth line (what our decoders read).
USABLE_FRAMINGS = _protocol.FRAMINGS

_TLS_ONLY = _protocol.TLS_ONLY_AUTH
_SUBPROTO = re.compile(r"aemp-[A-Za-z0-9_]+\Z")
_PERL_NUM = re.compile(r"\s*([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))")

#: ``Handshake(role=...)``: we dialled the peer, or the peer dialled us.
ROLES = ("connect", "accept")

# states
LINE1 = "LINE1"
LINE2 = "LINE2"
WAIT_TLS = "WAIT_TLS"
AUTH = "AUTH"
ESTABLISHED = "ESTABLISHED"
ERROR = "ERROR"


# --------------------------------------------------------------------------- events


class GreetingReceived(NamedTuple):
    """The peer's two greeting lines arrived and passed the checks.

    ``protocol`` is the name the peer sent (``aemp`` or ``aemp-<word>``), ``version`` the
    protocol version (always 1), ``auth_accept`` and ``framings`` its fields 4 and 5,
    ``kv`` its key=value pairs (a pair without ``=`` has the value ``None``), ``nonce`` its
    line 2. The I/O layer may still refuse the peer here (duplicate connection).

    Example::

        GreetingReceived("aemp", 1, "seed", ["hmac_sha3_512"], ["cbor", "json"],
                         {"provider": "AE-2.02"}, "mEkgbWUD...")
    """

    protocol: str
    version: int
    nodeid: str
    auth_accept: list[str]
    framings: list[str]
    kv: dict[str, Optional[str]]
    nonce: str


class NeedTLS(NamedTuple):
    """Both sides want TLS: wrap the socket (as server if ``server_side``), then call
    ``Handshake.start_tls_done()``.

    Example::

        ctx.wrap_socket(sock, server_side=ev.server_side); hs.start_tls_done()
    """

    server_side: bool


class Established(NamedTuple):
    """The peer's auth line checked out: the data phase starts.

    ``send_framing`` is what we send, ``recv_framing`` what the peer announced it sends,
    ``auth_method`` the method the peer authenticated with (``tls_anon`` means the peer is
    untrusted), ``protocol`` the (sub-)protocol in effect, ``tls`` whether TLS is active.

    Example::

        Established("cbor", "json", "peer_a", {"provider": "AE-2.02"}, "hmac_sha3_512",
                    "aemp", False)
    """

    send_framing: str
    recv_framing: str
    peer_nodeid: str
    kv: dict[str, Optional[str]]
    auth_method: str
    protocol: str = "aemp"
    tls: bool = False


# --------------------------------------------------------------------------- helpers

#: a greeting line, token input or secret: ``str`` (used as UTF-8) or ``bytes``
_Text = Union[str, bytes]


def _b(x: Union[str, bytes, bytearray, memoryview, None]) -> bytes:
    if x is None:
        return b""
    if isinstance(x, str):
        return x.encode("utf-8")
    return bytes(x)


def _auth_msg(l1: _Text, l2: _Text, p1: _Text, p2: _Text) -> bytes:
    return b"%s\n%s\n%s\n%s\n" % (_b(l1), _b(l2), _b(p1), _b(p2))


def hmac_token(secret: _Text, l1: _Text, l2: _Text, p1: _Text, p2: _Text) -> str:
    """The ``hmac_sha3_512`` token (128 lowercase hex chars) over ``l1\\nl2\\np1\\np2\\n``.

    For the token we send, ``l1``/``l2`` are our greeting lines and ``p1``/``p2`` the
    peer's (line ends removed); the token we expect from the peer swaps the pairs.
    Arguments may be ``str`` (used as UTF-8) or ``bytes``.

    Example::

        >>> a1, b1 = "aemp;1;a;hmac_sha3_512;json", "aemp;1;b;hmac_sha3_512;json"
        >>> hmac_token("s", a1, "n1", b1, "n2")[:16]
        '8149aff1cdb8e5ac'
    """
    return hmac.new(_b(secret), _auth_msg(l1, l2, p1, p2), hashlib.sha3_512).hexdigest()


def tls_token(l1: _Text, l2: _Text, p1: _Text, p2: _Text) -> str:
    """The ``tls_sha3_512`` token: lowercase hex SHA3-512 of ``l1\\nl2\\np1\\np2\\n``.

    Example::

        >>> len(tls_token("a", "b", "c", "d"))
        128
    """
    return hashlib.sha3_512(_auth_msg(l1, l2, p1, p2)).hexdigest()


def make_nonce() -> str:
    """A fresh greeting nonce: standard base64 of 66 bytes from ``os.urandom`` (88 chars).

    Example::

        >>> n = make_nonce(); len(n), "=" in n
        (88, False)
    """
    return base64.b64encode(os.urandom(66)).decode("ascii")


def _perl_int(value: Optional[str]) -> int:
    """Perl's ``int($value)`` for the strings a greeting carries (``"1.0"`` -> 1, junk -> 0)."""
    if value is None:
        return 0
    m = _PERL_NUM.match(value)
    if m is None:
        return 0
    try:
        return int(float(m.group(1)))
    except (ValueError, OverflowError):
        return 0


def parse_greeting_line1(
    line: str,
) -> tuple[str, str, str, list[str], list[str], dict[str, Optional[str]]]:
    """Split a greeting line 1 (``str``, no line end) into its parts.

    Returns ``(protocol, version, nodeid, auth_list, framing_list, kv)``; ``kv`` keeps the
    order of the pairs; a pair without ``=`` gets ``None``. Raises ``RemoteProtocolError`` if
    there are fewer than five fields.

    Example::

        >>> parse_greeting_line1("aemp;1;n;hmac_sha3_512;cbor,json;mproto=1;x")
        ('aemp', '1', 'n', ['hmac_sha3_512'], ['cbor', 'json'], {'mproto': '1', 'x': None})
    """
    fields = line.split(";")
    if len(fields) < 5:
        raise RemoteProtocolError("unparsable greeting (%d fields)" % len(fields))
    protocol, version, nodeid, auths, framings = fields[:5]
    kv: dict[str, Optional[str]] = {}
    for pair in fields[5:]:
        k, sep, v = pair.partition("=")
        kv[k] = v if sep else None
    return (
        protocol,
        version,
        nodeid,
        auths.split(",") if auths else [],
        framings.split(",") if framings else [],
        kv,
    )


def _check_field(what: str, value: object, forbidden: str = ";\r\n") -> str:
    if not isinstance(value, str):
        raise LocalProtocolError("%s must be a str, not %s" % (what, type(value).__name__))
    bad = [c for c in forbidden if c in value]
    if bad:
        raise LocalProtocolError(
            "%s %r contains %r, which a greeting cannot carry" % (what, value, bad[0])
        )
    return value


# --------------------------------------------------------------------------- the state machine


class Handshake:
    """One side of an AEMP handshake, sans-IO (see the module docstring).

    Arguments: ``nodeid`` (ours), ``secret`` (``str``/``bytes`` or None), ``auth_offer`` (what
    we are willing to send), ``auth_accept`` (what we accept; sent as field 4), ``framings``
    (what we accept and send, in preference order; field 5), ``peeraddr`` (the peer's address as
    we see it), ``tls_offered`` (we have a certificate; adds ``tls=1.0``), ``protocol`` (field
    1), ``extra`` (more key=value pairs for line 1, e.g. ``{"dataconn_id": "x"}``; a ``None``
    value sends the bare key), ``provider`` (default ``aemp_green-<version>``), ``nonce`` (66
    raw ``bytes`` to base64, or a ``str`` sent verbatim; default: ``os.urandom(66)``),
    ``max_line`` (longest accepted line, without its line end), ``role`` (``"connect"``: we
    dialled, we prove first; ``"accept"``: we send our auth line only after the peer's checked
    out), ``peeraddr_check`` (``None``, or ``addr -> bool``: is the ``peeraddr`` the peer's
    greeting names one of our addresses; see "Relays" in the module docstring).
    ``_kv_order`` (testing) lists the line-1 keys in the order to send them.

    Example::

        >>> hs = Handshake(nodeid="n", secret="s", peeraddr="10.0.0.1:4040", nonce=bytes(66))
        >>> line1 = hs.data_to_send().split(b"\\n")[0].decode()
        >>> line1.split(";")[:5]
        ['aemp', '1', 'n', 'tls_sha3_512,hmac_sha3_512', 'cbor,json']
        >>> line1.split(";")[5:]
        ['provider=aemp_green-0.2.0', 'peeraddr=10.0.0.1:4040', 'mproto=1', 'gproto=1']
    """

    peer_greeting: Optional[tuple[str, str]]
    error: Optional[str]
    _out: list[bytes]
    _p1: Optional[bytes]
    _p2: Optional[bytes]
    _greeting: Optional[GreetingReceived]
    _auth_line: Optional[bytes]
    _send_framing: Optional[str]
    _peeraddr_check: Optional[Callable[[str], bool]]

    def __init__(
        self,
        *,
        nodeid: str,
        secret: Optional[_Text] = None,
        auth_offer: Iterable[str] = _protocol.DEFAULT_AUTH,
        auth_accept: Iterable[str] = _protocol.DEFAULT_AUTH,
        framings: Iterable[str] = _protocol.FRAMINGS,
        peeraddr: str = "",
        tls_offered: bool = False,
        protocol: str = "aemp",
        extra: Optional[Mapping[str, Any]] = None,
        provider: Optional[str] = None,
        nonce: Union[str, bytes, None] = None,
        max_line: int = _protocol.MAX_LINE,
        role: str = "connect",
        peeraddr_check: Optional[Callable[[str], bool]] = None,
        _kv_order: Optional[Iterable[str]] = None,
    ) -> None:
        _check_field("nodeid", nodeid)
        if not nodeid:
            raise LocalProtocolError("nodeid must not be empty")
        _check_field("protocol", protocol)
        if protocol != "aemp" and not _SUBPROTO.match(protocol):
            raise LocalProtocolError("protocol must be 'aemp' or 'aemp-<word>', not %r" % protocol)
        self.nodeid = nodeid
        self.protocol = protocol
        self.secret = _b(secret) if secret else b""
        self.auth_offer = tuple(auth_offer)
        self.auth_accept = tuple(auth_accept)
        self.framings = tuple(framings)
        for what, items in (
            ("auth_offer", self.auth_offer),
            ("auth_accept", self.auth_accept),
            ("framings", self.framings),
        ):
            for item in items:
                _check_field(what + " entry", item, ";,\r\n")
        if not self.framings:
            raise LocalProtocolError("framings must not be empty")
        self.tls_offered = bool(tls_offered)
        self.max_line = int(max_line)
        if role not in ROLES:
            raise LocalProtocolError("role must be one of %s, not %r" % (", ".join(ROLES), role))
        #: ``"connect"`` (we dialled) or ``"accept"`` (the peer dialled us)
        self.role = role
        if peeraddr_check is not None and not callable(peeraddr_check):
            raise LocalProtocolError("peeraddr_check must be callable or None")
        self._peeraddr_check = peeraddr_check

        if provider is None:
            provider = DEFAULT_PROVIDER
        kv = {"provider": provider, "peeraddr": peeraddr, "mproto": "1", "gproto": "1"}
        if self.tls_offered:
            kv["tls"] = "1.0"
        if extra:
            kv.update(extra)
        for k, v in kv.items():
            _check_field("greeting key", k, ";=\r\n")
            if v is not None:
                _check_field("greeting value for %s" % k, str(v))
        keys = list(kv) if _kv_order is None else list(_kv_order)
        if sorted(keys) != sorted(kv):
            raise LocalProtocolError("_kv_order %r does not list the keys %r" % (keys, list(kv)))
        pairs = [k if kv[k] is None else "%s=%s" % (k, kv[k]) for k in keys]
        line1 = ";".join(
            [
                protocol,
                str(PROTOCOL_VERSION),
                nodeid,
                ",".join(self.auth_accept),
                ",".join(self.framings),
            ]
            + pairs
        )
        if nonce is None:
            line2 = make_nonce()
        elif isinstance(nonce, str):
            line2 = _check_field("nonce", nonce)
        else:
            line2 = base64.b64encode(bytes(nonce)).decode("ascii")
        self._l1 = line1.encode("utf-8")
        self._l2 = line2.encode("utf-8")
        if len(self._l1) > self.max_line:
            raise LocalProtocolError("our greeting line 1 is longer than %d bytes" % self.max_line)
        #: our two greeting lines (str, without line ends)
        self.local_greeting = (line1, line2)
        #: the peer's two greeting lines once received (str), else None
        self.peer_greeting = None
        #: bytes the peer sent after its auth line (valid once Established)
        self.trailing_data = b""
        #: bytes that followed the peer's line 2 when TLS was requested (see module docstring)
        self.pre_tls_data = b""
        self.state = LINE1
        self.error = None
        self._out = [self._l1 + b"\n" + self._l2 + b"\n"]
        self._buf = b""
        self._p1 = self._p2 = None
        self._greeting = None
        self._tls = False
        self._auth_line = None
        self._send_framing = None

    # ---------------------------------------------------------------- public interface

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes we must send now: the greeting, later the auth line.

        Example::

            sock.sendall(hs.data_to_send())
        """
        out = b"".join(self._out)
        self._out = []
        return out

    def receive_data(
        self, data: Union[bytes, bytearray, memoryview]
    ) -> list[Union[GreetingReceived, NeedTLS, Established]]:
        """Feed bytes read from the peer; return the list of events they produced.

        Raises ``RemoteProtocolError`` when the peer fails a check (the connection must be
        closed; every later call raises again).

        Example::

            for ev in hs.receive_data(sock.recv(4096)):
                ...
        """
        if self.state is ERROR:
            raise RemoteProtocolError(self.error)
        if self.state is ESTABLISHED:
            self.trailing_data += bytes(data)
            return []
        if self.state is WAIT_TLS:
            raise LocalProtocolError("receive_data() called before start_tls_done()")
        try:
            return self._receive(bytes(data))
        except RemoteProtocolError as exc:
            self._fail(str(exc))
            raise
        except Exception as exc:  # pragma: no cover - safety net: never leak anything else
            logger.exception("unexpected error in handshake")
            self._fail("malformed handshake: %r" % (exc,))
            raise RemoteProtocolError(self.error) from exc

    def start_tls_done(self) -> None:
        """Tell the handshake that TLS is now active (after a ``NeedTLS`` event).

        Queues our auth line; what the peer sends from now on is read through TLS.

        Example::

            sock = ctx.wrap_socket(sock, server_side=ev.server_side)
            hs.start_tls_done()
            sock.sendall(hs.data_to_send())
        """
        if self.state is not WAIT_TLS:
            raise LocalProtocolError(
                "start_tls_done() without a pending NeedTLS (state %s)" % self.state
            )
        self._tls = True
        self.pre_tls_data = b""
        if self.role == "connect":
            assert self._auth_line is not None  # set with the NeedTLS event
            self._out.append(self._auth_line)
        self.state = AUTH

    @property
    def tls_active(self) -> bool:
        """True once TLS was started for this connection."""
        return self._tls

    # ---------------------------------------------------------------- internals

    def _fail(self, reason: str) -> None:
        self.state = ERROR
        self.error = reason
        logger.debug(
            "handshake with %s failed: %s", self._greeting.nodeid if self._greeting else "?", reason
        )

    def _receive(self, data: bytes) -> list[Union[GreetingReceived, NeedTLS, Established]]:
        events: list[Union[GreetingReceived, NeedTLS, Established]] = []
        buf = self._buf + data if self._buf else data
        while True:
            i = buf.find(b"\n")
            if i < 0:
                n = len(buf)
                if n > self.max_line and not (n == self.max_line + 1 and buf[-1] == 0x0D):
                    raise RemoteProtocolError(self._too_long())
                break
            line = buf[: i - 1] if i and buf[i - 1] == 0x0D else buf[:i]
            if len(line) > self.max_line:
                raise RemoteProtocolError(self._too_long())
            buf = buf[i + 1 :]
            state = self.state
            if state is LINE1:
                self._on_line1(line)
            elif state is LINE2:
                self._on_line2(line, events)
                if self.state is WAIT_TLS:
                    self.pre_tls_data = buf
                    buf = b""
                    break
            else:  # AUTH
                events.append(self._on_auth(line))
                self.trailing_data = buf
                buf = b""
                break
        self._buf = buf
        return events

    def _too_long(self) -> str:
        return "auth line too long" if self.state is AUTH else "greeting line too long"

    def _on_line1(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("unparsable greeting (not UTF-8)") from None
        protocol, version, nodeid, auths, framings, kv = parse_greeting_line1(text)
        if not (
            protocol == self.protocol
            or (self.protocol == "aemp" and _SUBPROTO.match(protocol))
            or (protocol == "aemp" and _SUBPROTO.match(self.protocol))
        ):
            raise RemoteProtocolError(
                "unparsable greeting, expected '%s', got '%s'" % (self.protocol, protocol[:64])
            )
        if version != str(PROTOCOL_VERSION):
            raise RemoteProtocolError(
                "version mismatch (we: %d, they: %s)" % (PROTOCOL_VERSION, version[:32])
            )
        if not nodeid:
            raise RemoteProtocolError("unparsable greeting (empty node id)")
        if not nodeid.isprintable():  # it ends up in log lines and monitor reasons
            raise RemoteProtocolError("unparsable greeting (node id with control characters)")
        self._p1 = line
        self._greeting = GreetingReceived(
            protocol, PROTOCOL_VERSION, nodeid, auths, framings, kv, ""
        )
        self.state = LINE2

    def _on_line2(
        self, line: bytes, events: list[Union[GreetingReceived, NeedTLS, Established]]
    ) -> None:
        try:
            nonce = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("unparsable greeting nonce (not UTF-8)") from None
        self._p2 = line
        assert self._greeting is not None and self._p1 is not None  # set by _on_line1
        g = self._greeting._replace(nonce=nonce)
        self._greeting = g
        if self._p1 == self._l1 and line == self._l2:
            raise RemoteProtocolError("authentication error, echo attack?")
        if g.nodeid == self.nodeid:
            raise RemoteProtocolError("I refuse to talk to myself")
        if self._peeraddr_check is not None:
            self._check_peeraddr(g.kv.get("peeraddr"))
        self.peer_greeting = (self._p1.decode("utf-8"), nonce)
        events.append(g)

        want_tls = self.tls_offered and _perl_int(g.kv.get("tls")) == 1
        method = None
        for m in g.auth_accept:
            if m in self.auth_offer and (want_tls or m not in _TLS_ONLY):
                method = m
                break
        if method is None:
            raise RemoteProtocolError(
                "%s: no common auth type supported" % ",".join(g.auth_accept)[:256]
            )
        for f in g.framings:
            if f in self.framings:
                self._send_framing = f
                break
        else:
            raise RemoteProtocolError("no common framing method supported")
        token = self._make_token(method)
        self._auth_line = ("%s;%s;%s\n" % (method, token, self._send_framing)).encode("utf-8")
        if want_tls:
            if self._l2 == line:
                raise RemoteProtocolError("identical nonces, cannot choose TLS roles")
            self.state = WAIT_TLS
            events.append(NeedTLS(server_side=self._l2 > line))
        else:
            if self.role == "connect":
                self._out.append(self._auth_line)
            self.state = AUTH

    def _check_peeraddr(self, addr: Optional[str]) -> None:
        """Refuse a greeting whose ``peeraddr`` does not name us (see "Relays" above)."""
        assert self._peeraddr_check is not None  # called only when there is one
        if addr is not None and self._peeraddr_check(addr):
            return
        shown = repr(addr)[:80] if addr is not None else "no peeraddr"
        if self.role == "accept":
            raise RemoteProtocolError(
                "peer dialled %s, which is not an address of this node (a relayed handshake?); "
                "behind NAT, a proxy or a port forward, list that address in public_addresses"
                % shown
            )
        raise RemoteProtocolError(
            "peer sees us at %s, which is not this connection's address (a relayed "
            "handshake?); behind NAT, list that address in public_addresses" % shown
        )

    def _make_token(self, method: str) -> str:
        assert self._p1 is not None and self._p2 is not None  # after the peer's greeting
        mine = (self._l1, self._l2, self._p1, self._p2)
        if method == "hmac_sha3_512":
            if not self.secret:
                raise RemoteProtocolError("unable to handshake TLS and no shared secret configured")
            return hmac_token(self.secret, *mine)
        if method == "tls_sha3_512":
            return tls_token(*mine)
        if method == "tls_anon":
            return ""
        if method == "cleartext":
            if not self.secret:
                raise RemoteProtocolError("unable to handshake TLS and no shared secret configured")
            return self.secret.hex()
        raise RemoteProtocolError("%s: unsupported auth method in our auth_offer" % method)

    def _on_auth(self, line: bytes) -> Established:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError("unparsable auth line") from None
        fields = text.split(";")
        if len(fields) != 3:
            raise RemoteProtocolError("unparsable auth line (%d fields)" % len(fields))
        method, token, framing = fields
        if method not in KNOWN_AUTH_METHODS:
            raise RemoteProtocolError("fatal, selected unsupported rcv auth method")
        if method not in self.auth_accept:
            raise RemoteProtocolError("%s: auth method not accepted" % method)
        if method in _TLS_ONLY and not self._tls:
            raise RemoteProtocolError("%s: auth method needs TLS" % method)
        assert self._p1 is not None and self._p2 is not None  # AUTH: after the greeting
        assert self._greeting is not None and self._auth_line is not None
        assert self._send_framing is not None
        theirs = (self._p1, self._p2, self._l1, self._l2)
        if method == "hmac_sha3_512":
            expected = hmac_token(self.secret, *theirs) if self.secret else None
        elif method == "tls_sha3_512":
            expected = tls_token(*theirs)
        elif method == "cleartext":
            expected = self.secret.hex() if self.secret else None
        else:  # tls_anon: the token carries nothing
            expected = token
        if expected is None or not hmac.compare_digest(
            token.encode("ascii"), expected.encode("ascii")
        ):
            raise RemoteProtocolError("authentication failure/shared secret mismatch")
        if framing not in USABLE_FRAMINGS:
            raise RemoteProtocolError("%s: unusable remote framing" % framing[:64])
        g = self._greeting
        self.state = ESTABLISHED
        if self.role == "accept":
            # only now that the connector proved the secret do we prove it back: a relay
            # between two acceptors never gets a token to pass on
            self._out.append(self._auth_line)
        protocol = self.protocol if self.protocol != "aemp" else g.protocol
        return Established(self._send_framing, framing, g.nodeid, g.kv, method, protocol, self._tls)

    def __repr__(self) -> str:
        return "<Handshake %s state=%s peer=%s>" % (
            self.nodeid,
            self.state,
            self._greeting.nodeid if self._greeting else None,
        )
