"""transport: the gevent I/O half of an AEMP link (the protocol half is sans-IO in ``wire.handshake``
and ``framing``).

* ``Listener`` wraps one gevent ``StreamServer`` per bind address; every accepted socket runs
  the handshake as the accepting side.
* ``connect(host, port, ...)`` dials out and runs the handshake as the connecting side.
* ``run_handshake`` drives a ``_handshake.Handshake`` over a socket with a deadline
  (``monitor_timeout``) and the 4 KiB line limit, upgrading to TLS when both sides want it.
* ``Link`` is an established connection: a reader loop that decodes frames and hands them to a
  callback, and a writer greenlet that coalesces every frame queued since it last ran into one
  ``sendall`` (this is what turns ~80k msgs/s of one-syscall-per-message into several hundred
  thousand).

Nothing here knows about ports or nodes: the caller (``node``) passes callbacks.
"""

import ipaddress
import logging
import os
import socket as _stdsocket
import ssl as _stdssl
import tempfile
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, TypeAlias, Union

import gevent
from gevent import monkey as _monkey
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer
from greenlet import getcurrent, greenlet

from . import _protocol
from ._protocol import Msg
from .config import parse_address
from .exceptions import ConfigError, RemoteProtocolError
from .wire.handshake import Established, GreetingReceived, Handshake

__all__ = [
    "Link",
    "LinkGroup",
    "Listener",
    "connect",
    "run_handshake",
    "HandshakeRefused",
    "TLSContexts",
    "tls_contexts",
    "peeraddr_check",
    "normalize_address",
    "describe_connect_error",
]

logger = logging.getLogger(__name__)

PROVIDER = _protocol.PROVIDER


class HandshakeRefused(Exception):
    """The local side refused a handshake (duplicate connection, self connection, ...).

    Example::

        def on_greeting(ev):           # passed to run_handshake
            if ev.nodeid in connected:
                raise HandshakeRefused("%s already connected" % ev.nodeid)
    """


class TLSContexts(NamedTuple):
    """The two SSL contexts of a node's ``cert``, built once at ``configure``: ``server`` for the
    side whose nonce is higher, ``client`` for the other (AEMP's rule).

    Example::

        tls = tls_contexts(pem_text)     # raises ssl.SSLError/ValueError for a bad PEM
        run_handshake(sock, hs, timeout=30, tls=tls)
    """

    server: Any
    client: Any


#: a connected socket: gevent's (cooperative), or its TLS wrapper
Sock: TypeAlias = Any
#: a certificate PEM (key, certificate and CA certificates), as text or bytes
Pem: TypeAlias = Union[str, bytes]


def _load_chain(ctx: Any, cert_pem: Pem) -> None:
    """Load key and certificate from the PEM text without writing the key to a disk file.

    ``ssl`` only loads a chain from a path: an anonymous memory file (Linux ``memfd_create``)
    gives it one that no other process can open and that vanishes with its descriptor. Where
    there is none, a private temporary file is used (once per ``configure``, never per
    connection) and removed at once.
    """
    data = cert_pem.encode("utf-8") if isinstance(cert_pem, str) else bytes(cert_pem)
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        try:
            fd = memfd("aemp-cert", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:
            fd = None
        if fd is not None:
            try:
                os.write(fd, data)
                ctx.load_cert_chain("/proc/self/fd/%d" % fd)
                return
            except FileNotFoundError:  # no /proc: fall back to a file
                pass
            finally:
                os.close(fd)
    fd, path = tempfile.mkstemp(prefix="aemp-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def _tls_context(cert_pem: Pem, server_side: bool) -> Any:
    from gevent import ssl as _gssl  # gevent's context: its sockets block only the greenlet

    ctx = _gssl.SSLContext(
        _stdssl.PROTOCOL_TLS_SERVER if server_side else _stdssl.PROTOCOL_TLS_CLIENT
    )
    ctx.check_hostname = False
    ctx.verify_mode = _stdssl.CERT_REQUIRED
    _load_chain(ctx, cert_pem)
    ctx.load_verify_locations(cadata=cert_pem if isinstance(cert_pem, str) else cert_pem.decode())
    return ctx


def tls_contexts(cert_pem: Pem) -> TLSContexts:
    """Both SSL contexts for ``tls_sha3_512`` from one PEM (key + certificate + CA certificates),
    mutual verification against the CA; the key never touches the disk where Linux allows.

    Raises ``ssl.SSLError``/``ValueError``/``OSError`` for a PEM that is not usable.

    Example::

        tls = tls_contexts(open("node.pem").read())
    """
    return TLSContexts(_tls_context(cert_pem, True), _tls_context(cert_pem, False))


def normalize_address(host: str, port: Optional[int]) -> tuple[str, Optional[int]]:
    """``(host, port)`` in the one form addresses are compared in: IP addresses in their
    canonical text (an IPv4-mapped IPv6 address as the IPv4 one), names in lower case.

    Example::

        >>> normalize_address("::ffff:127.0.0.1", 4040), normalize_address("Box", None)
        (('127.0.0.1', 4040), ('box', None))
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower(), port
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip), port


def peeraddr_check(own: Sequence[Any], allowed: Iterable[str] = ()) -> Callable[[str], bool]:
    """The ``peeraddr_check`` callable for ``Handshake``: true when the ``peeraddr`` text names
    ``own`` (our end of the connection, a ``getsockname()`` tuple) or an entry of ``allowed``
    (``"host:port"`` strings; a port of ``*`` matches any port).

    Example::

        >>> ok = peeraddr_check(("127.0.0.1", 4040), ["203.0.113.7:4040"])
        >>> ok("127.0.0.1:4040"), ok("203.0.113.7:4040"), ok("127.0.0.1:9")
        (True, True, False)
    """
    ok = {normalize_address(own[0], int(own[1]))}
    for text in allowed:
        try:
            host, port = parse_address(text)
        except ConfigError:
            continue
        ok.add(normalize_address(host, port))

    def check(addr: str) -> bool:
        try:
            host, port = parse_address(addr)
        except ConfigError:
            return False
        if port is None:
            return False
        host, port = normalize_address(host, port)
        return (host, port) in ok or (host, None) in ok

    return check


def _recv_line_exact(sock: Sock, limit: int) -> bytes:
    """Read up to and including one LF without consuming anything after it (for TLS upgrade)."""
    peek = sock.recv(limit, _stdsocket.MSG_PEEK)
    if not peek:
        return b""
    i = peek.find(b"\n")
    n = len(peek) if i < 0 else i + 1
    return sock.recv(n)


def run_handshake(
    sock: Sock,
    hs: Handshake,
    *,
    timeout: Optional[float],
    on_greeting: Optional[Callable[[GreetingReceived], Any]] = None,
    tls: Optional[TLSContexts] = None,
    max_line: int = 4096,
) -> tuple[Sock, Established, bytes]:
    """Drive the sans-IO handshake ``hs`` over ``sock`` until it is established.

    ``on_greeting(event)`` may raise ``HandshakeRefused`` (duplicate connection...). ``tls``
    (``TLSContexts``) is our certificate's contexts, None without one. Returns
    ``(sock, established_event, trailing_bytes)``; ``sock`` is TLS-wrapped when TLS was used.
    Raises ``RemoteProtocolError``/``HandshakeRefused``/``OSError``/``gevent.Timeout``.

    Example::

        sock, est, rest = run_handshake(sock, Handshake(nodeid="a", secret="s"), timeout=30)
    """
    from .wire.handshake import Established, GreetingReceived, NeedTLS

    with gevent.Timeout(timeout, RemoteProtocolError("handshake timeout")):
        sock.sendall(hs.data_to_send())
        exact = tls is not None  # don't read past the greeting when TLS may follow
        while True:
            data = _recv_line_exact(sock, max_line + 2) if exact else sock.recv(8192)
            if not data:
                raise RemoteProtocolError("Unexpected end-of-file during handshake")
            try:
                events = hs.receive_data(data)
            except RemoteProtocolError:
                # the peer failed a check (say its auth line) in the same read that queued our
                # own auth line: send it anyway, so the peer learns why instead of seeing EOF
                out = hs.data_to_send()
                if out:
                    try:
                        sock.sendall(out)
                    except OSError:
                        pass
                raise
            for ev in events:
                if isinstance(ev, GreetingReceived):
                    if on_greeting is not None:
                        on_greeting(ev)
                elif isinstance(ev, NeedTLS):
                    if tls is None:  # pragma: no cover - the handshake asks only if offered
                        raise RemoteProtocolError("TLS requested but no certificate configured")
                    ctx = tls.server if ev.server_side else tls.client
                    sock = ctx.wrap_socket(sock, server_side=ev.server_side)
                    exact = False
                    hs.start_tls_done()
                elif isinstance(ev, Established):
                    out = hs.data_to_send()
                    if out:
                        sock.sendall(out)
                    return sock, ev, hs.trailing_data
            out = hs.data_to_send()
            if out:
                sock.sendall(out)


#: frames in, frames out, bytes in, bytes out of the links closed so far (the node totals of
#: introspection add the open links' counters)
closed_totals = [0, 0, 0, 0]


# the unpatched poll(): has_unread() asks with a zero timeout and must never yield
_poll = _monkey.get_original("select", "poll")
_POLLIN = _monkey.get_original("select", "POLLIN")


class LinkGroup:
    """The links to one peer, whose keepalives judge the peer alive together.

    Two nodes that dial each other at the same moment can end up with two connections, each
    side sending on one and reading the other: a peer answers a probe on the connection *it*
    sends on. So a link is dead only when nothing arrived on any link of its group for the
    timeout (and nothing is waiting unread in any of their sockets).

    Example::

        group = LinkGroup()
        a = Link(sock_a, "peer", "cbor", "cbor", b"", on_frame, on_close, group=group,
                 keepalive=30)
        b = Link(sock_b, "peer", "cbor", "cbor", b"", on_frame, on_close, group=group,
                 keepalive=30, probe=None)      # read-only link: only ``a`` probes
        group.last_rx()                         # the latest arrival on a or b
    """

    __slots__ = ("links",)

    links: set["Link"]

    def __init__(self) -> None:
        self.links = set()

    def last_rx(self) -> float:
        """Loop time of the latest data received on any open link of the group (0 if none).

        Example::

            idle = loop.now() - group.last_rx()
        """
        return max((link.last_rx for link in self.links), default=0.0)

    def has_unread(self) -> bool:
        """True if data is waiting unread in the socket of any open link of the group.

        Example::

            if now - group.last_rx() > timeout and not group.has_unread(): ...
        """
        return any(link.has_unread() for link in list(self.links))


class Link:
    """An authenticated connection to one remote node.

    ``send(frame)`` encodes in the caller (a value the framing cannot carry raises
    ``TypeError`` right there) and queues the bytes; the writer greenlet sends everything
    queued in one ``sendall``. ``run()`` reads until the connection ends, calling
    ``on_frame(link, frame)`` for each decoded frame, or, when given, ``on_frames(link,
    frames)`` once per read with the list of its frames (one call instead of one per frame);
    ``on_close(link, why)`` runs exactly once.

    Backpressure (docs/running.md, "Backpressure"): when more than ``high_water`` bytes wait
    for the socket, a sender that may wait (``may_wait()`` true, and not the hub, a link's
    reader or a timer callback) waits until they drained to ``low_water``; any other sender
    queues, and once more than ``hard_limit`` bytes wait the link is closed with a reason
    naming ``link_hard_limit``.

    Example::

        link = Link(sock, "peer", "json", "json", b"", on_frame, on_close)
        gevent.spawn(link.run)
        link.send(["portname", "hello", 1])
    """

    #: defaults of the ``link_high_water`` / ``link_hard_limit`` settings (bytes)
    HIGH_WATER = 4 * 1024 * 1024
    HARD_LIMIT = 64 * 1024 * 1024

    _wbuf: list[bytes]
    _drained: Optional[Event]
    _raw: Any
    close_reason: Optional[str]
    _keepalive: Any  # the loop's repeating timer of the keepalive (see _watch), or None
    _ka_blind_since: Optional[float]
    _ka_excused: Optional[float]
    auth: Optional[str]
    rtt: Optional[float]
    probe_sent: Optional[float]
    #: set once ``on_close`` ran (made by ``node`` for the links of its nodes)
    closed_event: Event

    def __init__(
        self,
        sock: Sock,
        nodeid: str,
        send_framing: str,
        recv_framing: str,
        trailing: bytes,
        on_frame: Callable[["Link", Msg], Any],
        on_close: Callable[["Link", str], Any],
        *,
        max_frame: int = 64 * 1024 * 1024,
        peer_kv: Optional[dict[str, Any]] = None,
        outgoing: bool = False,
        keepalive: Optional[float] = None,
        probe: Optional[Sequence[Any]] = ("", ""),
        group: Optional[LinkGroup] = None,
        text_bytes: bool = False,
        high_water: Optional[int] = None,
        low_water: Optional[int] = None,
        hard_limit: Optional[int] = None,
        may_wait: Optional[Callable[[], Any]] = None,
        auth: Optional[str] = None,
        tls: bool = False,
        on_frames: Optional[Callable[["Link", list[Msg]], Any]] = None,
    ) -> None:
        self.sock = sock
        self.nodeid = nodeid
        self.send_framing = send_framing
        self.recv_framing = recv_framing
        self.peer_kv = peer_kv or {}
        self.outgoing = outgoing
        from .wire import framing

        self._encode = framing.codec(send_framing)[0]
        decoder = framing.codec(recv_framing)[1]
        self._decoder = (
            decoder(max_frame=max_frame, text_bytes=True)
            if text_bytes and recv_framing == "cbor"
            else decoder(max_frame=max_frame)
        )
        self._trailing = trailing
        self._on_frame = on_frame
        self._on_frames = on_frames
        self._on_close = on_close
        self._wbuf = []
        self._wbytes = 0
        self._inflight = 0  # bytes the writer took from _wbuf and is handing to the socket
        self._high = int(high_water or self.HIGH_WATER)
        self._low = min(int(low_water or self._high // 2), self._high)
        self._hard = max(int(hard_limit or self.HARD_LIMIT), self._high)
        # send() looks at the totals only from this many queued bytes on (the hot path; the
        # writer lowers it while it holds bytes, so that the totals never pass _high unseen)
        self._check_at = min(self.FLUSH_BYTES, self._high)
        self._may_wait = may_wait
        self._nowait = 0  # > 0 inside send_nowait()
        self._drained = None  # Event set when the queue drained to _low (made by a waiter)
        self._nwaiting = 0  # senders waiting for _drained
        self.busy_waits = 0  # how often a sender waited for the link to drain
        self._writing = False  # the writer is inside sendall: nobody else may write
        self._turn = -1.0  # loop time of the turn in which a frame last went straight out
        self._full = False  # a direct send hit a full socket buffer: leave it to the writer
        # direct non-blocking writes go to the raw socket; never for TLS (would bypass it)
        from gevent import ssl as _gssl

        self._raw = None if isinstance(sock, _gssl.SSLSocket) else getattr(sock, "_sock", None)
        self._closed = False
        self.close_reason = None
        hub = gevent.get_hub()
        self._loop = hub.loop
        self._hub = hub
        self._writer = greenlet(self._write_loop, parent=hub)
        self._writer_idle = False
        self._loop.run_callback(self._writer.switch)
        self.frames_in = 0
        self.frames_out = 0
        # introspection: bytes read, bytes handed to the socket, when the link came up, how it
        # was authenticated, the keepalive round trip (see probe_answered)
        self.bytes_in = 0
        self.bytes_out = 0
        self.since = time.time()
        self.auth = auth
        self.tls = bool(tls)
        self.rtt = None
        self.probe_sent = None  # monotonic time of the oldest probe not answered yet
        self.last_rx = self.last_tx = self._loop.now()
        self._keepalive = None
        #: the keepalive probe frame (a request the peer answers); None: this link never probes
        self.probe = probe
        #: the links judged alive together with this one (see LinkGroup)
        self.group = group if group is not None else LinkGroup()
        self.group.links.add(self)
        if keepalive:
            self._start_keepalive(float(keepalive))

    @property
    def closed(self) -> bool:
        return self._closed

    #: queued bytes above which ``send`` itself pushes them to the socket (non-blocking)
    FLUSH_BYTES = 256 * 1024
    #: the writer hands a bigger buffer to the socket in pieces of this size
    WRITE_CHUNK = 1024 * 1024

    def send(self, frame: Sequence[Any]) -> bool:
        """Queue one frame (``[portname, *msg]``); raises ``TypeError`` for unencodable values.

        Never blocks. The first frame of a loop turn is written to the socket at once (no hub
        round trip: this is what keeps request/reply latency low); the frames that follow in the
        same turn are coalesced by the writer greenlet into one ``sendall``. When more than
        ``FLUSH_BYTES`` are queued they are pushed out here too, so that a sender in a tight
        loop overlaps with its peer instead of building one huge buffer.

        Example::

            link.send(["portname", "hello", 1])   # False once the link is closed
        """
        if self._closed:
            return False
        data = self._encode(frame)
        self.frames_out += 1
        wbuf = self._wbuf
        raw = self._raw
        if (
            not wbuf
            and raw is not None
            and not self._writing
            and not self._full
            and self._turn != self._loop.now()  # (the loop's time changes every turn)
        ):
            self.last_tx = self._turn = self._loop.now()
            sent = self._raw_send(raw, data)
            if sent is None:
                return False
            if sent == len(data):
                return True
            data = data[sent:]
        wbuf.append(data)
        n = self._wbytes = self._wbytes + len(data)
        if n >= self._check_at:
            return self._queued_a_lot(raw, len(data))
        if self._writer_idle:
            self._writer_idle = False
            self._loop.run_callback(self._writer.switch)
        return True

    def send_nowait(self, frame: Sequence[Any]) -> bool:
        """``send`` that never waits and never fails the link for its size (for frames that
        were already counted elsewhere, like a node's queue flushed when its link comes up).

        Example::

            for frame in queued:
                link.send_nowait(frame)
        """
        self._nowait += 1
        try:
            return self.send(frame)
        finally:
            self._nowait -= 1

    @property
    def bytes_pending(self) -> int:
        """Bytes queued for the socket and not yet handed to it (the backpressure measure).

        Example::

            print(link.bytes_pending, link.busy_waits)
        """
        return self._wbytes + self._inflight

    @property
    def senders_waiting(self) -> int:
        """How many senders wait for this link to drain now (see ``busy_waits`` for a total).

        Example::

            if link.senders_waiting: print(link.nodeid, "is busy")
        """
        return self._nwaiting

    def _queued_a_lot(self, raw: Any, n: int) -> bool:
        """``send``'s slow path, from ``_check_at`` queued bytes on: push them to the socket
        (non-blocking) and apply the high-water mark and the hard limit."""
        if (
            self._wbytes >= self.FLUSH_BYTES
            and raw is not None
            and not self._writing
            and not self._full
        ):
            buf = b"".join(self._wbuf)
            sent = self._raw_send(raw, buf)
            if sent is None:
                return False
            self._wbuf = [buf[sent:]] if sent < len(buf) else []
            self._wbytes = len(buf) - sent
        if self._wbuf and self._writer_idle:
            self._writer_idle = False
            self._loop.run_callback(self._writer.switch)
        pending = self._wbytes + self._inflight
        if pending <= self._high:
            if self._nwaiting and pending <= self._low:
                self._drained.set()  # type: ignore[union-attr]  # (_nwaiting > 0: a waiter made it)
            if self._full or self._writing:
                # nothing can be pushed before the writer ran (it resets _check_at): the next
                # check that matters is the high-water mark (a flood into a full socket would
                # come here for every frame otherwise)
                self._check_at = self._high - self._inflight + 1
            return True
        if self._nowait:
            return True
        if pending > self._hard and pending > n:  # (one frame alone always goes out)
            why = (
                "write buffer over link_hard_limit (%d bytes queued, limit %d): the peer "
                "does not read fast enough" % (pending, self._hard)
            )
            logger.warning("%s: %s; closing the link", self.nodeid, why)
            self.close(why)
            return False
        if not self._can_wait():
            return True
        self.busy_waits += 1
        while not self._closed and self._wbytes + self._inflight > self._low:
            ev = self._drained
            if ev is None or ev.is_set():
                ev = self._drained = Event()
            self._nwaiting += 1
            try:
                ev.wait()
            finally:
                self._nwaiting -= 1
        return not self._closed

    def _can_wait(self) -> bool:
        """May the running greenlet wait for the link to drain? Never the hub, a link's reader
        (it must keep reading: two nodes waiting for each other would deadlock), this link's
        keepalive (a timer callback: the hub), or where the ``may_wait`` hook says no (a
        callback port's handler)."""
        cur = getcurrent()
        if cur is self._hub or getattr(cur, "aemp_noblock", False):
            return False
        may_wait = self._may_wait
        return may_wait is None or bool(may_wait())

    def _raw_send(self, raw: Any, data: bytes) -> Optional[int]:
        """One non-blocking send; returns the bytes written (None when the link broke)."""
        try:
            n = raw.send(data)
            self.bytes_out += n
            return n
        except BlockingIOError:
            self._full = True
            return 0
        except InterruptedError:
            return 0
        except OSError as exc:
            self.close("write error: %s" % (exc,))
            return None

    def _write_loop(self) -> None:
        sock = self.sock
        try:
            while not self._closed:
                if not self._wbuf:
                    self._writer_idle = True
                    self._hub.switch()
                    continue
                buf, self._wbuf = self._wbuf, []
                data = buf[0] if len(buf) == 1 else b"".join(buf)
                del buf
                n = len(data)
                self._wbytes = 0
                self._writing = True
                try:
                    if n <= self.WRITE_CHUNK:
                        self._inflight = n
                        # send() checks the totals as soon as they could pass the high water
                        self._check_at = min(self.FLUSH_BYTES, max(1, self._high - n))
                        sock.sendall(data)
                        self.bytes_out += n
                    else:
                        # in pieces, so that waiting senders go on at the low-water mark while
                        # the rest is still being written (sender and peer keep overlapping)
                        view = memoryview(data)
                        off = 0
                        while off < n:
                            left = self._inflight = n - off
                            self._check_at = min(self.FLUSH_BYTES, max(1, self._high - left))
                            sock.sendall(view[off : off + self.WRITE_CHUNK])
                            self.bytes_out += min(self.WRITE_CHUNK, n - off)
                            off += self.WRITE_CHUNK
                            if self._nwaiting and self._wbytes + n - off <= self._low:
                                self._drained.set()  # type: ignore[union-attr]  # (_nwaiting > 0: a waiter made it)
                        del view
                finally:
                    self._writing = False
                    self._full = False
                    self._inflight = 0
                    self._check_at = min(self.FLUSH_BYTES, self._high)
                del data
                self.last_tx = self._loop.now()
                if self._nwaiting and self._wbytes <= self._low:
                    self._drained.set()  # type: ignore[union-attr]  # (_nwaiting > 0: a waiter made it)
        except OSError as exc:
            self.close("write error: %s" % (exc,))
        except gevent.GreenletExit:
            pass

    def run(self) -> None:
        """Read frames until the connection ends (runs in the calling greenlet).

        Example::

            gevent.spawn(link.run)   # a link we dialled; an accepted one calls link.run()
        """
        dec = self._decoder
        on_frames = self._on_frames
        if on_frames is None:
            on_frame = self._on_frame

            def on_frames(link: "Link", frames: list[Msg]) -> None:
                for frame in frames:
                    on_frame(link, frame)

        # backpressure: what the frames make this greenlet send never waits (see _can_wait)
        getcurrent().aemp_noblock = True
        try:
            if self._trailing:
                frames = dec.feed(self._trailing)
                self.bytes_in += len(self._trailing)
                self.frames_in += len(frames)
                on_frames(self, frames)
                self._trailing = b""
            recv = self.sock.recv
            since_yield = 0
            while not self._closed:
                data = recv(262144)
                if not data:
                    self.close("Unexpected end-of-file")
                    break
                self.last_rx = self._loop.now()
                self.bytes_in += len(data)
                frames = dec.feed(data)
                if frames:
                    self.frames_in += len(frames)
                    on_frames(self, frames)
                since_yield += len(data)
                if since_yield >= 65536:
                    # fairness: a flooding peer must not starve other links (a recv that finds
                    # data waiting returns without switching greenlets)
                    since_yield = 0
                    gevent.sleep(0)
        except RemoteProtocolError as exc:
            logger.warning("%s: protocol error, dropping connection: %s", self.nodeid, exc)
            self.close(str(exc))
        except OSError as exc:
            self.close(str(exc) or exc.__class__.__name__)
        finally:
            if not self._closed:
                self.close("reader ended")

    def _start_keepalive(self, timeout: float) -> None:
        """Start the keepalive: a repeating timer of the loop calls ``_watch`` every third of
        ``timeout`` (no greenlet per link: it would mostly sleep, and cost its stack)."""
        interval = max(timeout / 3.0, 0.05)
        self._ka_timeout = timeout
        self._ka_interval = interval
        self._ka_slack = max(interval * 0.1, 0.05)  # lateness below this is ordinary scheduling
        self._ka_blind = 0.0  # seconds we could not observe the peer since its last arrival
        self._ka_blind_since = None  # the group's last_rx those seconds are counted from
        self._ka_excused = None  # loop time since which unread data has kept it from being judged
        loop = self._loop
        loop.update_now()
        self._ka_before = loop.now()  # loop time of the previous round
        timer = self._keepalive = loop.timer(interval, interval)
        timer.start(self._watch, update=True)  # from now, not the cached loop time

    def _watch(self) -> None:
        """Keepalive round (the loop's timer calls it in the hub every third of the timeout):
        when nothing arrived for a third of the timeout, send ``probe`` (a request the peer
        answers); no byte on any link of the group for the timeout = dead.

        AEMP 2.02 relies on TCP timeouts (minutes to hours for a silent peer) and never sends
        keepalives itself, so the probe must make the peer talk: ``node`` passes the node-port
        ``time`` request with our node port as the reply target, which every AEMP peer answers
        and whose answer is a no-op here. This way the peer's own settings don't matter. The
        peer answers on the connection it sends on, which after a simultaneous connect is not
        the one the probe went out on: hence the group.

        Read first, then judge: time this process did not run (stopped, or the loop blocked)
        is not counted as the peer's silence, and data waiting unread in a socket of the group
        proves the peer alive (the readers get to it before anything is judged).
        """
        if self._closed:
            self._stop_keepalive()
            return
        try:
            self._judge()
        except Exception:  # pragma: no cover  (a bug: stop this keepalive)
            logger.exception("%s: keepalive failed", self.nodeid)
            self._stop_keepalive()

    def _judge(self) -> None:
        """One keepalive round of ``_watch``, with the state kept in the ``_ka_*`` attributes."""
        timeout = self._ka_timeout
        interval = self._ka_interval
        loop = self._loop
        loop.update_now()
        now = loop.now()
        group = self.group
        last = group.last_rx()
        if last != self._ka_blind_since:
            self._ka_blind, self._ka_blind_since = 0.0, last
        late = now - self._ka_before - interval
        self._ka_before = now
        if late > self._ka_slack:
            self._ka_blind += late  # we were stopped or blocked: the peer could not be heard
            # the next round one interval from now, as after a sleep (a late repeating timer
            # keeps its phase: the next round would come early, or at once)
            self._keepalive.again(self._watch, update=False)
        idle = now - last - self._ka_blind
        if idle > timeout:
            excused = self._ka_excused
            if group.has_unread() and (excused is None or now - excused <= timeout):
                # the reader has data to take first; judge again next round (but a reader
                # that takes nothing for another timeout is not waited for any longer)
                if excused is None:
                    self._ka_excused = now
                return
            logger.warning("%s: nothing received for %.1f s, link is dead", self.nodeid, timeout)
            self.close("keepalive timeout (no data for %.1f s)" % timeout)
            return
        self._ka_excused = None
        if now - last >= interval and self.probe is not None:
            if self.probe_sent is None:
                self.probe_sent = time.monotonic()
            self.send(self.probe)

    def _stop_keepalive(self) -> None:
        timer, self._keepalive = self._keepalive, None
        if timer is not None:
            timer.close()

    def probe_answered(self) -> None:
        """The peer answered a keepalive probe: ``rtt`` is the time since the oldest one that
        was not answered yet (an answer without a probe out changes nothing).

        Example::

            link.probe_answered()   # node, for the answer to the probe frame
            print(link.rtt)         # seconds, or None before the first answer
        """
        sent = self.probe_sent
        if sent is not None:
            self.probe_sent = None
            self.rtt = time.monotonic() - sent

    def has_unread(self) -> bool:
        """True if bytes are waiting in the socket that the reader has not taken yet.

        Example::

            link.has_unread()   # the keepalive asks before declaring a peer dead
        """
        if self._closed:
            return False
        try:
            pending = getattr(self.sock, "pending", None)
            if pending is not None and pending():
                return True  # TLS: decrypted bytes already buffered
            poller = _poll()
            poller.register(self.sock.fileno(), _POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait (at most ``timeout`` s) until everything queued has been handed to the socket.

        Example::

            link.flush(); link.close("bye")
        """
        with gevent.Timeout(timeout, False):
            while not self._closed and (self._wbuf or self._writing):
                if self._wbuf and self._writer_idle:
                    self._writer_idle = False
                    self._loop.run_callback(self._writer.switch)
                gevent.sleep(0.005)
        return not (self._wbuf or self._writing)

    def close(self, why: str = "closed") -> None:
        """Close the connection (idempotent); ``on_close(link, why)`` runs once.

        Example::

            link.close("shutdown")
        """
        if self._closed:
            return
        self._closed = True
        self.close_reason = why
        closed_totals[0] += self.frames_in
        closed_totals[1] += self.frames_out
        closed_totals[2] += self.bytes_in
        closed_totals[3] += self.bytes_out
        self._wbuf = []
        self.group.links.discard(self)
        self._wbytes = 0
        if self._drained is not None:
            self._drained.set()  # senders waiting for the link to drain return False
        if self._keepalive is not None:
            self._stop_keepalive()
        if self._writer_idle:
            self._writer_idle = False
            self._loop.run_callback(self._wake_writer_to_exit)
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass
        try:
            self._on_close(self, why)
        except Exception:  # pragma: no cover
            logger.exception("on_close callback failed")

    def _wake_writer_to_exit(self) -> None:
        if self._writer and not self._writer.dead:
            self._writer.switch()

    def __repr__(self) -> str:
        return "<Link %s %s/%s%s>" % (
            self.nodeid,
            self.send_framing,
            self.recv_framing,
            " closed" if self._closed else "",
        )


def apply_sockopts(sock: Sock, nodelay: bool = True) -> None:
    """TCP_NODELAY (as the ``nodelay`` setting says) and SO_KEEPALIVE on a node connection.

    Example::

        apply_sockopts(sock, nodelay=True)
    """
    try:
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1 if nodelay else 0)
        sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_KEEPALIVE, 1)
    except OSError:  # pragma: no cover - e.g. socketpair in tests
        pass


def describe_connect_error(addr: str, exc: BaseException) -> str:
    """What a failed dial of ``addr`` means, for a user: the reason monitors fire with.

    Example::

        >>> describe_connect_error("10.0.0.5:4040", ConnectionRefusedError(111, "refused"))
        'connection refused by 10.0.0.5:4040: nothing listens there (is the node running?)'
    """
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by %s: nothing listens there (is the node running?)" % addr
    if isinstance(exc, (_stdsocket.timeout, gevent.Timeout)) or "timed out" in str(exc):
        return "no answer from %s in time (unreachable, filtered or overloaded)" % addr
    if isinstance(exc, OSError) and exc.errno is not None:
        return "cannot reach %s: %s" % (addr, os.strerror(exc.errno))
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, RemoteProtocolError):
        if "shared secret mismatch" in text:
            return (
                "authentication failed at %s: shared secret mismatch (both nodes need the "
                "same secret)" % addr
            )
        if "no common auth type" in text or "no shared secret" in text:
            return (
                "authentication failed at %s: %s (configure the same secret, or "
                "certificates from one CA, on both nodes)" % (addr, text)
            )
        if "version mismatch" in text or "unparsable greeting" in text:
            return "protocol mismatch at %s: %s (is it an AEMP node?)" % (addr, text)
        if "end-of-file during handshake" in text:
            return (
                "%s closed the connection during the handshake: it most likely refused our "
                "authentication (a different secret, TLS required, or the address we "
                "dialled is not one it accepts: see public_addresses)" % addr
            )
        return "handshake with %s failed: %s" % (addr, text)
    return "connecting to %s failed: %s" % (addr, text)


def connect(host: str, port: int, *, timeout: Optional[float]) -> Sock:
    """Open a TCP connection (cooperatively) with a connect timeout.

    Example::

        sock = connect("127.0.0.1", 4040, timeout=2)
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    return sock


class Listener:
    """Accept AEMP connections on ``(host, port)``; ``handler(sock, addr)`` runs per connection.

    ``port=None``/``0`` picks an ephemeral port; ``address`` tells the one bound.

    Example::

        lst = Listener("127.0.0.1", 0, handler)
        lst.start()
        print(lst.address)   # ('127.0.0.1', 41234)
    """

    def __init__(
        self,
        host: str,
        port: Optional[int],
        handler: Callable[[Sock, Any], Any],
        *,
        max_pending: int = 256,
    ) -> None:
        self._handler = handler
        self._server = StreamServer((host, port or 0), self._handle, spawn=max_pending * 64)
        self.host = host

    def _handle(self, sock: Sock, addr: Any) -> None:
        try:
            self._handler(sock, addr)
        finally:
            try:
                sock.close()
            except OSError:  # pragma: no cover
                pass

    def start(self) -> None:
        """Bind and start accepting; ``address`` then tells the port bound.

        Example::

            lst = Listener("127.0.0.1", 0, handler)
            lst.start()
        """
        self._server.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.address[:2]
        return host, port

    def stop(self) -> None:
        """Close the listening socket; greenlets still handling accepted sockets are killed.

        Example::

            lst.stop()   # as node.shutdown() does for each listener
        """
        self._server.stop(timeout=0)


def bind_string(host: str, port: int) -> str:
    """``host:port`` as AEMP writes it (IPv6 in brackets)."""
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def make_handshake(
    cfg: dict[str, Any],
    nodeid: str,
    peeraddr: str,
    *,
    protocol: str = "aemp",
    extra: Optional[dict[str, Any]] = None,
    role: str = "connect",
    check: Optional[Callable[[str], bool]] = None,
) -> Handshake:
    """A ``Handshake`` for our configuration ``cfg`` (the dict ``config.find_profile`` made).

    ``role`` is ``"connect"`` or ``"accept"``, ``check`` the ``peeraddr_check`` callable (None:
    no check).

    Example::

        hs = make_handshake(cfg, "me/1", "10.0.0.5:4040", check=peeraddr_check(own))
    """
    from .wire import framing
    from .wire.handshake import Handshake

    return Handshake(
        nodeid=nodeid,
        secret=cfg.get("secret"),
        auth_offer=tuple(cfg.get("auth_offer") or _protocol.DEFAULT_AUTH),
        auth_accept=tuple(cfg.get("auth_accept") or _protocol.DEFAULT_AUTH),
        framings=tuple(cfg.get("framing_format") or framing.FRAMINGS),
        peeraddr=peeraddr,
        tls_offered=bool(cfg.get("cert")),
        protocol=protocol,
        extra=extra,
        provider=PROVIDER,
        max_line=int(cfg.get("line_max") or _protocol.MAX_LINE),
        role=role,
        peeraddr_check=check,
    )
