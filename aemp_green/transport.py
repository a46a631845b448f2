"""transport: the gevent I/O half of an AEMP link (the protocol half is sans-IO in ``_handshake``
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

import logging
import os
import socket as _stdsocket
import ssl as _stdssl
import tempfile

import gevent
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer
from greenlet import getcurrent, greenlet

from ._version import __version__
from .exceptions import RemoteProtocolError

__all__ = ["Link", "Listener", "connect", "run_handshake", "HandshakeRefused"]

logger = logging.getLogger(__name__)

PROVIDER = "aemp_green-" + __version__


class HandshakeRefused(Exception):
    """The local side refused a handshake (duplicate connection, self connection, ...).

    Example::

        def on_greeting(ev):           # passed to run_handshake
            if ev.nodeid in connected:
                raise HandshakeRefused("%s already connected" % ev.nodeid)
    """


def _tls_context(cert_pem, server_side):
    """An SSL context for ``tls_sha3_512``: our PEM (key+cert+CAs), mutual verification."""
    from gevent import ssl as _gssl  # gevent's context: its sockets block only the greenlet

    ctx = _gssl.SSLContext(_stdssl.PROTOCOL_TLS_SERVER if server_side else _stdssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = _stdssl.CERT_REQUIRED
    fd, path = tempfile.mkstemp(prefix="aemp-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(cert_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    ctx.load_verify_locations(cadata=cert_pem)
    return ctx


def _recv_line_exact(sock, limit):
    """Read up to and including one LF without consuming anything after it (for TLS upgrade)."""
    peek = sock.recv(limit, _stdsocket.MSG_PEEK)
    if not peek:
        return b""
    i = peek.find(b"\n")
    n = len(peek) if i < 0 else i + 1
    return sock.recv(n)


def run_handshake(sock, hs, *, timeout, on_greeting=None, cert=None, max_line=4096):
    """Drive the sans-IO handshake ``hs`` over ``sock`` until it is established.

    ``on_greeting(event)`` may raise ``HandshakeRefused`` (duplicate connection...). Returns
    ``(sock, established_event, trailing_bytes)``; ``sock`` is TLS-wrapped when TLS was used.
    Raises ``RemoteProtocolError``/``HandshakeRefused``/``OSError``/``gevent.Timeout``.

    Example::

        sock, est, rest = run_handshake(sock, Handshake(nodeid="a", secret="s"), timeout=30)
    """
    from ._handshake import Established, GreetingReceived, NeedTLS

    with gevent.Timeout(timeout, RemoteProtocolError("handshake timeout")):
        sock.sendall(hs.data_to_send())
        exact = cert is not None  # don't read past the greeting when TLS may follow
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
                    ctx = _tls_context(cert, ev.server_side)
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


class Link:
    """An authenticated connection to one remote node.

    ``send(frame)`` encodes in the caller (a value the framing cannot carry raises
    ``TypeError`` right there) and queues the bytes; the writer greenlet sends everything
    queued in one ``sendall``. ``run()`` reads until the connection ends, calling
    ``on_frame(frame)`` for each decoded frame; ``on_close(link, why)`` runs exactly once.

    Backpressure (docs/running.md, "Backpressure"): when more than ``high_water`` bytes wait
    for the socket, a sender that may wait (``may_wait()`` true, and not the hub, a link's
    reader or the keepalive) waits until they drained to ``low_water``; any other sender
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

    def __init__(self, sock, nodeid, send_framing, recv_framing, trailing, on_frame, on_close,
                 *, max_frame=64 * 1024 * 1024, peer_kv=None, outgoing=False, keepalive=None,
                 probe=("", ""), high_water=None, low_water=None, hard_limit=None,
                 may_wait=None):
        self.sock = sock
        self.nodeid = nodeid
        self.send_framing = send_framing
        self.recv_framing = recv_framing
        self.peer_kv = peer_kv or {}
        self.outgoing = outgoing
        from . import framing

        self._encode = framing.codec(send_framing)[0]
        self._decoder = framing.codec(recv_framing)[1](max_frame=max_frame)
        self._trailing = trailing
        self._on_frame = on_frame
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
        self._turn = False  # a frame already went straight out in this loop turn
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
        self.last_rx = self.last_tx = self._loop.now()
        self._watchdog = None
        self._probe = probe
        if keepalive:
            self._watchdog = gevent.spawn(self._watch, float(keepalive))

    @property
    def closed(self):
        return self._closed

    #: queued bytes above which ``send`` itself pushes them to the socket (non-blocking)
    FLUSH_BYTES = 256 * 1024
    #: the writer hands a bigger buffer to the socket in pieces of this size
    WRITE_CHUNK = 1024 * 1024

    def send(self, frame):
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
        self.last_tx = self._loop.now()
        raw = self._raw
        if raw is not None and not self._writing and not self._wbuf and not self._turn \
                and not self._full:
            self._turn = True
            self._loop.run_callback(self._end_turn)
            sent = self._raw_send(raw, data)
            if sent is None:
                return False
            if sent == len(data):
                return True
            data = data[sent:]
        self._wbuf.append(data)
        self._wbytes += len(data)
        if self._wbytes >= self._check_at:
            return self._queued_a_lot(raw, len(data))
        if self._writer_idle:
            self._writer_idle = False
            self._loop.run_callback(self._writer.switch)
        return True

    def send_nowait(self, frame):
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
    def bytes_pending(self):
        """Bytes queued for the socket and not yet handed to it (the backpressure measure).

        Example::

            print(link.bytes_pending, link.busy_waits)
        """
        return self._wbytes + self._inflight

    @property
    def senders_waiting(self):
        """How many senders wait for this link to drain now (see ``busy_waits`` for a total).

        Example::

            if link.senders_waiting: print(link.nodeid, "is busy")
        """
        return self._nwaiting

    def _queued_a_lot(self, raw, n):
        """``send``'s slow path, from ``_check_at`` queued bytes on: push them to the socket
        (non-blocking) and apply the high-water mark and the hard limit."""
        if self._wbytes >= self.FLUSH_BYTES and raw is not None and not self._writing \
                and not self._full:
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
                self._drained.set()
            return True
        if self._nowait:
            return True
        if pending > self._hard and pending > n:  # (one frame alone always goes out)
            why = ("write buffer over link_hard_limit (%d bytes queued, limit %d): the peer "
                   "does not read fast enough" % (pending, self._hard))
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

    def _can_wait(self):
        """May the running greenlet wait for the link to drain? Never the hub, a link's reader
        (it must keep reading: two nodes waiting for each other would deadlock), this link's
        keepalive, or where the ``may_wait`` hook says no (a callback port's handler)."""
        cur = getcurrent()
        if cur is self._hub or cur is self._watchdog or getattr(cur, "aemp_noblock", False):
            return False
        may_wait = self._may_wait
        return may_wait is None or bool(may_wait())

    def _raw_send(self, raw, data):
        """One non-blocking send; returns the bytes written (None when the link broke)."""
        try:
            return raw.send(data)
        except BlockingIOError:
            self._full = True
            return 0
        except InterruptedError:
            return 0
        except OSError as exc:
            self.close("write error: %s" % (exc,))
            return None

    def _end_turn(self):
        self._turn = False

    def _write_loop(self):
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
                    else:
                        # in pieces, so that waiting senders go on at the low-water mark while
                        # the rest is still being written (sender and peer keep overlapping)
                        view = memoryview(data)
                        off = 0
                        while off < n:
                            left = self._inflight = n - off
                            self._check_at = min(self.FLUSH_BYTES, max(1, self._high - left))
                            sock.sendall(view[off:off + self.WRITE_CHUNK])
                            off += self.WRITE_CHUNK
                            if self._nwaiting and self._wbytes + n - off <= self._low:
                                self._drained.set()
                        del view
                finally:
                    self._writing = False
                    self._full = False
                    self._inflight = 0
                    self._check_at = min(self.FLUSH_BYTES, self._high)
                del data
                if self._nwaiting and self._wbytes <= self._low:
                    self._drained.set()
        except OSError as exc:
            self.close("write error: %s" % (exc,))
        except gevent.GreenletExit:
            pass

    def run(self):
        """Read frames until the connection ends (runs in the calling greenlet).

        Example::

            gevent.spawn(link.run)   # a link we dialled; an accepted one calls link.run()
        """
        dec = self._decoder
        on_frame = self._on_frame
        # backpressure: what the frames make this greenlet send never waits (see _can_wait)
        getcurrent().aemp_noblock = True
        try:
            if self._trailing:
                for frame in dec.feed(self._trailing):
                    on_frame(self, frame)
                self._trailing = b""
            recv = self.sock.recv
            since_yield = 0
            while not self._closed:
                data = recv(262144)
                if not data:
                    self.close("Unexpected end-of-file")
                    break
                self.last_rx = self._loop.now()
                frames = dec.feed(data)
                self.frames_in += len(frames)
                for frame in frames:
                    on_frame(self, frame)
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

    def _watch(self, timeout):
        """Keepalive: when nothing arrived for a third of ``timeout``, send ``probe`` (a request
        the peer answers); no byte for ``timeout`` s = dead.

        AEMP 2.02 relies on TCP timeouts (minutes to hours for a silent peer) and never sends
        keepalives itself, so the probe must make the peer talk: ``node`` passes the node-port
        ``time`` request with our node port as the reply target, which every AEMP peer answers
        and whose answer is a no-op here. This way the peer's own settings don't matter.
        """
        interval = max(timeout / 3.0, 0.05)
        loop = self._loop
        while not self._closed:
            gevent.sleep(interval)
            if self._closed:
                break
            loop.update_now()
            now = loop.now()
            if now - self.last_rx > timeout:
                logger.warning("%s: nothing received for %.1f s, link is dead", self.nodeid, timeout)
                self.close("keepalive timeout (no data for %.1f s)" % timeout)
                break
            if now - self.last_rx >= interval:
                self.send(self._probe)

    def flush(self, timeout=1.0):
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

    def close(self, why="closed"):
        """Close the connection (idempotent); ``on_close(link, why)`` runs once.

        Example::

            link.close("shutdown")
        """
        if self._closed:
            return
        self._closed = True
        self.close_reason = why
        self._wbuf = []
        self._wbytes = 0
        if self._drained is not None:
            self._drained.set()  # senders waiting for the link to drain return False
        if self._watchdog is not None and self._watchdog is not gevent.getcurrent():
            self._watchdog.kill(block=False)
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

    def _wake_writer_to_exit(self):
        if self._writer and not self._writer.dead:
            self._writer.switch()

    def __repr__(self):
        return "<Link %s %s/%s%s>" % (self.nodeid, self.send_framing, self.recv_framing,
                                      " closed" if self._closed else "")


def _apply_sockopts(sock, nodelay=True, autocork=False):
    try:
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1 if nodelay else 0)
        sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_KEEPALIVE, 1)
        if autocork and hasattr(_stdsocket, "TCP_CORK"):
            pass  # writes are already coalesced per loop iteration; corking adds latency only
    except OSError:  # pragma: no cover - e.g. socketpair in tests
        pass


def connect(host, port, *, timeout):
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

    def __init__(self, host, port, handler, *, max_pending=256):
        self._handler = handler
        self._server = StreamServer((host, port or 0), self._handle, spawn=max_pending * 64)
        self.host = host

    def _handle(self, sock, addr):
        try:
            self._handler(sock, addr)
        finally:
            try:
                sock.close()
            except OSError:  # pragma: no cover
                pass

    def start(self):
        """Bind and start accepting; ``address`` then tells the port bound.

        Example::

            lst = Listener("127.0.0.1", 0, handler)
            lst.start()
        """
        self._server.start()

    @property
    def address(self):
        host, port = self._server.address[:2]
        return host, port

    def stop(self):
        """Close the listening socket; greenlets still handling accepted sockets are killed.

        Example::

            lst.stop()   # as node.shutdown() does for each listener
        """
        self._server.stop(timeout=0)


def bind_string(host, port):
    """``host:port`` as AEMP writes it (IPv6 in brackets)."""
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


def make_handshake(cfg, nodeid, peeraddr, *, protocol="aemp", extra=None):
    """A ``Handshake`` for our configuration ``cfg`` (the dict ``config.find_profile`` made)."""
    from . import framing
    from ._handshake import Handshake

    return Handshake(
        nodeid=nodeid,
        secret=cfg.get("secret"),
        auth_offer=tuple(cfg.get("auth_offer") or ("tls_sha3_512", "hmac_sha3_512")),
        auth_accept=tuple(cfg.get("auth_accept") or ("tls_sha3_512", "hmac_sha3_512")),
        framings=tuple(cfg.get("framing_format") or framing.FRAMINGS),
        peeraddr=peeraddr,
        tls_offered=bool(cfg.get("cert")),
        protocol=protocol,
        extra=extra,
        provider=PROVIDER,
        max_line=int(cfg.get("line_max") or 4096),
    )
