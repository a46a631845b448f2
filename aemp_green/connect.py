"""connect: dialling out and accepting connections, up to an authenticated socket.

What lies between the socket layer (``transport``) and the remote nodes (``node``):

* the listeners (``start_listener``, ``listener_addresses``) and what an accepted connection
  goes through: the slowloris defence (pending handshakes capped per source and in all), the
  acceptor's handshake with its ``peeraddr`` check, then either a node link or a registered
  sub-protocol (``register_subprotocol``: ``dataconn``);
* dialling (``dial``): connect, the connector's handshake, then a node link; and the limits on
  dialling that addresses from the network could otherwise abuse (``dials``: ``max_dials``,
  ``fd_reserve``, back-off per address);
* the TLS contexts of our certificate, built once by ``configure`` (``set_tls``).

It never imports ``node``: ``node`` installs, with ``set_link_hooks``, the two things only it
knows: whether a peer is already connected (a duplicate is refused at its greeting) and how an
authenticated socket becomes a link of a ``RemoteNode``. Settings are read from
``config.active``.

Example::

    set_link_hooks(start_link=my_start_link, refuse_duplicates=lambda ev: None)
    start_listener("127.0.0.1", 0)
    link = dial("127.0.0.1", 4040, expect="seed")
"""

import logging
from typing import Any, Callable, Iterable, Literal, Optional, Protocol, Sequence, cast

import gevent

from . import config as _config
from . import kernel as _k
from . import transport
from ._ratelog import RateLog
from .exceptions import ConfigError, RemoteProtocolError
from .wire.handshake import Established, GreetingReceived, Handshake

__all__ = [
    "DialLimiter",
    "DialingNode",
    "dials",
    "dial",
    "accept",
    "set_link_hooks",
    "set_tls",
    "tls",
    "start_listener",
    "stop_listeners",
    "listener_addresses",
    "register_subprotocol",
    "subprotocol_handshake",
    "split_hostport",
]

logger = logging.getLogger(__name__)
_rl = RateLog(logger)  # bad input from peers (see _ratelog)
_cfg = _config.active  # this node's settings (configure fills the dict in place)

tls: Optional[transport.TLSContexts] = None  # our certificate's contexts (set_tls), or None
_listeners: list[transport.Listener] = []
_binds: list[str] = []  # our listener addresses as "host:port" strings (what others learn)


def set_tls(contexts: Optional[transport.TLSContexts]) -> None:
    """Use ``contexts`` (``transport.tls_contexts(cert)``, or None) for every connection.

    Example::

        set_tls(transport.tls_contexts(cfg["cert"]))
    """
    global tls
    tls = contexts


def _no_duplicates(ev: GreetingReceived) -> None:
    pass


def _no_links(
    sock: transport.Sock, est: Established, trailing: bytes, outgoing: bool
) -> transport.Link:
    sock.close()
    raise transport.HandshakeRefused("this process has no node layer to take the link")


_start_link: Callable[..., transport.Link] = _no_links
_refuse_duplicates: Callable[[GreetingReceived], None] = _no_duplicates


def set_link_hooks(
    start_link: Callable[..., transport.Link], refuse_duplicates: Callable[[GreetingReceived], None]
) -> None:
    """Install what ``node`` knows: ``start_link(sock, est, trailing, outgoing)`` turns an
    authenticated socket into a link (returned, not yet running), and ``refuse_duplicates(ev)``
    raises ``transport.HandshakeRefused`` at a greeting from a node already connected.

    Example::

        connect.set_link_hooks(start_link, refuse_duplicates)   # once, in node
    """
    global _start_link, _refuse_duplicates
    _start_link, _refuse_duplicates = start_link, refuse_duplicates


def split_hostport(addr: str) -> tuple[str, int]:
    """``"host:port"`` as ``(host, port)``; ``ConfigError`` without a port.

    Example::

        split_hostport("127.0.0.1:4040")    # ("127.0.0.1", 4040)
    """
    host, port = _config.parse_address(addr)
    if port is None:
        raise ConfigError("address without a port: %r" % (addr,))
    return host, port


# --------------------------------------------------------------------------- dial limiter


class DialingNode(Protocol):
    """What the dial limiter looks at of the node a dial is for (``node.RemoteNode``): whether
    it gave up (no link, not connecting).

    Example::

        with dials.turn(addr, get_node(nodeid)) as ok:   # a RemoteNode is a DialingNode
            ...
    """

    @property
    def link(self) -> Optional[transport.Link]: ...
    @property
    def connecting(self) -> bool: ...


class DialLimiter:
    """Bounds what dialling out may take, so that addresses from the network (the global
    database, ``host:port`` node IDs) cannot exhaust this process (docs/security.md):

    * at most ``max_dials`` dials (connect and handshake) at once; a dial waits at most
      ``connect_interval`` for its turn and is then dropped;
    * no dial while fewer than ``fd_reserve`` file descriptors are left below RLIMIT_NOFILE
      (they are kept for accepting connections);
    * an address whose dial failed waits ``connect_interval / 4``, doubling per further
      failure up to ``dial_backoff_max`` seconds, before it is dialled again;
    * a dial whose node has given up (its ``connect_interval`` passed) makes way: when every
      turn is taken, a new dial stops the oldest such one (a black hole holds its dial for
      the whole handshake timeout, and must not keep our real connections out).

    Example::

        with dials.turn("10.0.0.5:4040") as ok:
            if ok:
                dial("10.0.0.5", 4040)
    """

    MAX_BACKOFF_ENTRIES = 4096  # addresses remembered; the oldest entry makes room

    _sem: Any  # gevent.lock.BoundedSemaphore of max_dials turns (made on first use)
    _size: Optional[int]
    _backoff: dict[str, tuple[float, float]]
    _holders: dict[gevent.Greenlet, Optional[DialingNode]]

    def __init__(self) -> None:
        self._sem = None
        self._size = None
        self._backoff = {}  # addr -> (loop time it may be dialled again, current pause)
        self._refused = 0  # dials refused since the last log line
        self._logged = -1e9  # loop time of that log line
        self._holders = {}  # greenlet holding a turn -> its RemoteNode (oldest first)
        self.waiting = 0  # dials waiting for a turn

    def _semaphore(self) -> Any:
        size = int(_cfg.get("max_dials") or 64)
        if self._sem is None or size != self._size:
            from gevent.lock import BoundedSemaphore

            self._sem, self._size = BoundedSemaphore(size), size
        return self._sem

    def backoff_left(self, addr: str) -> float:
        """Seconds before ``addr`` may be dialled again (0 when it may be dialled now)."""
        entry = self._backoff.get(addr)
        if entry is None:
            return 0.0
        return max(0.0, entry[0] - cast(float, gevent.get_hub().loop.now()))

    def failed(self, addr: str) -> None:
        """A dial of ``addr`` failed: back it off (double the pause, up to the maximum)."""
        base = float(_cfg["connect_interval"]) / 4.0
        cap = float(_cfg.get("dial_backoff_max") or 10)
        entry = self._backoff.pop(addr, None)
        pause = min(cap, max(base, entry[1] * 2 if entry else base))
        if len(self._backoff) >= self.MAX_BACKOFF_ENTRIES:
            del self._backoff[next(iter(self._backoff))]
        self._backoff[addr] = (gevent.get_hub().loop.now() + pause, pause)

    def succeeded(self, addr: str) -> None:
        """A dial of ``addr`` succeeded: forget its back-off."""
        self._backoff.pop(addr, None)

    def turn(self, addr: str, node: Optional[DialingNode] = None) -> "_DialTurn":
        """A context manager yielding True when this dial (for ``node``) may go ahead."""
        return _DialTurn(self, addr, node)

    def shed(self, node: Optional[DialingNode] = None) -> int:
        """Stop dials whose node gave up (no link, not connecting), if others wait for a turn:
        only ``node``'s when given, else the oldest one. Returns how many were stopped."""
        if not self.waiting:
            return 0
        stopped = 0
        for g, n in list(self._holders.items()):
            if n is None or (node is not None and n is not node):
                continue
            if n.link is None and not n.connecting:
                del self._holders[g]
                g.kill(block=False)
                stopped += 1
                if node is None:
                    break
        if stopped:
            logger.debug("stopped %d dial(s) whose node gave up, to make way", stopped)
        return stopped

    def _refuse(self, addr: str, why: str) -> None:
        self._refused += 1
        now = gevent.get_hub().loop.now()
        if now - self._logged >= 10.0:  # one line per 10 s, however many are refused
            logger.warning(
                "not dialling %s: %s (%d dial(s) refused in the last %.0f s)",
                repr(addr)[:120],
                why,
                self._refused,
                min(now - self._logged, 10.0),
            )
            self._logged, self._refused = now, 0


class _DialTurn:
    __slots__ = ("_lim", "_addr", "_node", "_sem")

    _lim: DialLimiter
    _addr: str
    _node: Optional[DialingNode]
    _sem: Any

    def __init__(self, lim: DialLimiter, addr: str, node: Optional[DialingNode]) -> None:
        self._lim, self._addr, self._node, self._sem = lim, addr, node, None

    def __enter__(self) -> bool:
        lim = self._lim
        sem = lim._semaphore()
        assert lim._size is not None  # set with the semaphore
        lim.waiting += 1
        try:
            if sem.locked():
                lim.shed()  # every turn is taken: the oldest dial nobody waits for makes way
            got = sem.acquire(timeout=float(_cfg["connect_interval"]))
        finally:
            lim.waiting -= 1
        if not got:
            lim._refuse(self._addr, "%d dials already in progress (max_dials)" % lim._size)
            return False
        self._sem = sem
        lim._holders[gevent.getcurrent()] = self._node
        reserve = int(_cfg.get("fd_reserve", 64) or 0)
        if reserve:
            left = _fds_left()
            # the other dials holding a turn may not have opened their socket yet
            if left is not None:
                left -= lim._size - sem.counter - 1
            if left is not None and left < reserve:
                lim._refuse(
                    self._addr, "only %d file descriptors left (fd_reserve %d)" % (left, reserve)
                )
                return False
        return True

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._sem is not None:
            self._lim._holders.pop(gevent.getcurrent(), None)
            self._sem.release()
            self._sem = None
        return False


def _fds_left() -> Optional[int]:
    """File descriptors this process may still open (soft RLIMIT_NOFILE minus open ones), or
    None where that cannot be told."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    import os

    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            return soft - len(os.listdir(d))
        except OSError:
            continue
    return None


dials = DialLimiter()


def dial(host: str, port: int, expect: Optional[str] = None) -> transport.Link:
    """Connect to ``host:port``, handshake (refusing a node other than ``expect``), and start
    the link in a greenlet of its own; returns the link. Raises on connect/handshake failure.

    Example::

        link = dial("127.0.0.1", 4040, expect="seed")
        link.closed_event.wait()
    """
    sock = transport.connect(host, port, timeout=float(_cfg["connect_interval"]))
    transport.apply_sockopts(sock, _cfg.get("nodelay", True))
    hs = connector_handshake(sock)

    def on_greeting(ev: GreetingReceived) -> None:
        if expect is not None and ev.nodeid != expect:
            raise transport.HandshakeRefused("dialled %s but %s answered" % (expect, ev.nodeid))
        _refuse_duplicates(ev)

    try:
        sock, est, trailing = transport.run_handshake(
            sock, hs, timeout=float(_cfg["monitor_timeout"]), on_greeting=on_greeting, tls=tls
        )
    except BaseException:
        sock.close()
        raise
    link = _start_link(sock, est, trailing, outgoing=True)
    gevent.spawn(link.run)
    return link


def connector_handshake(
    sock: transport.Sock, protocol: str = "aemp", extra: Optional[dict[str, Any]] = None
) -> Handshake:
    """The handshake for a connection we dialled: ``peeraddr`` is the numeric address we reached
    (the acceptor checks it names itself) and the acceptor must see us at our own address."""
    peer = sock.getpeername()
    return transport.make_handshake(
        _cfg,
        _k.this_node,
        transport.bind_string(peer[0], peer[1]),
        protocol=protocol,
        extra=extra,
        role="connect",
        check=_check_for(sock.getsockname(), ()),
    )


def _check_for(own: Sequence[Any], extra: Iterable[str]) -> Optional[Callable[[str], bool]]:
    """The peeraddr check for a connection whose local address is ``own`` (None: checks off)."""
    if not _cfg.get("check_peeraddr", True):
        return None
    return transport.peeraddr_check(own, list(extra) + list(_cfg.get("public_addresses") or ()))


def _named_binds() -> list[str]:
    """Configured binds written with a host name and a fixed port (``box.lan:4040``): a connector
    that dialled that name names it. Numeric binds are covered by the socket's own address, and
    a bind with a dynamic port names no particular address."""
    named = []
    for b in _cfg.get("binds") or ():
        try:
            host, port = _config.parse_address(b)
        except ConfigError:
            continue
        if port is not None and host != "*":
            named.append(b)
    return named


# socket -> (source host, Handshake), oldest first
_pending_handshakes: dict[transport.Sock, tuple[str, Handshake]] = {}


MAX_PENDING_HANDSHAKES = 256
MAX_PENDING_PER_SOURCE = 32


def _make_handshake_room(source: str) -> None:
    """Slowloris defence: keep unfinished incoming handshakes within the caps, evicting fairly.

    A source (remote IP) over its own cap loses its oldest pending handshake; when the total cap
    is reached the oldest handshake of the source with the most pending ones goes. A real peer
    finishes in a round trip or two, so only stalled connections from the busiest source are
    evicted, and an attacker churning connections from one address cannot lock out a slow
    legitimate peer elsewhere.
    """
    cap = int(_cfg.get("max_pending_handshakes") or MAX_PENDING_HANDSHAKES)
    per_source = int(_cfg.get("max_pending_per_source") or MAX_PENDING_PER_SOURCE)
    counts: dict[str, int] = {}
    for src, _hs in _pending_handshakes.values():
        counts[src] = counts.get(src, 0) + 1
    while _pending_handshakes:
        if counts.get(source, 0) >= per_source:
            victim_src = source
        elif len(_pending_handshakes) >= cap:
            victim_src = max(counts, key=lambda src: counts[src])
        else:
            return
        for old_sock, (src, _hs) in _pending_handshakes.items():
            if src == victim_src:
                break
        del _pending_handshakes[old_sock]
        counts[victim_src] -= 1
        _log_evicted(victim_src)
        try:
            old_sock.shutdown(2)
        except OSError:
            pass


_evict_log = {"next": 0.0, "count": 0}


def _log_evicted(source: str) -> None:
    """One log line per ``source`` burst at most every 10 s (an attacker controls the rate)."""
    now = gevent.get_hub().loop.now()
    _evict_log["count"] += 1
    if now >= _evict_log["next"]:
        logger.warning(
            "too many pending handshakes: evicted %d stalled one(s), the last from %s "
            "(max_pending_handshakes=%s, max_pending_per_source=%s)",
            _evict_log["count"],
            source,
            _cfg.get("max_pending_handshakes"),
            _cfg.get("max_pending_per_source"),
        )
        _evict_log["count"] = 0
        _evict_log["next"] = now + 10.0


def _printable(exc: BaseException) -> str:
    """An error's text with control characters escaped (it may quote a peer's bytes; our
    handshake errors already cut those short)."""
    text = str(exc) or exc.__class__.__name__
    return text if text.isprintable() else repr(text)[1:-1]


def accept(sock: transport.Sock, addr: Any) -> None:
    transport.apply_sockopts(sock, _cfg.get("nodelay", True))
    peeraddr = transport.bind_string(addr[0], addr[1])
    source = transport.normalize_address(addr[0], None)[0]
    _make_handshake_room(source)
    raw = sock
    # a connector must name the address it dialled: this connection's local address, one of the
    # configured binds (a host name as written there) or a public_addresses entry
    hs = transport.make_handshake(
        _cfg,
        _k.this_node,
        peeraddr,
        role="accept",
        check=_check_for(sock.getsockname(), _named_binds()),
    )
    _pending_handshakes[raw] = (source, hs)
    try:
        sock, est, trailing = transport.run_handshake(
            sock,
            hs,
            timeout=float(_cfg.get("handshake_timeout") or _cfg["monitor_timeout"]),
            on_greeting=_refuse_duplicates,
            tls=tls,
        )
    except (RemoteProtocolError, transport.HandshakeRefused) as exc:
        # the reason may quote the peer's bytes: escaped, and rate-limited per source
        _rl.info((source, "handshake"), "%s disconnected - %s", peeraddr, _printable(exc))
        return
    except (OSError, gevent.Timeout) as exc:
        _rl.info((source, "handshake"), "%s disconnected - %s", peeraddr, _printable(exc))
        return
    finally:
        _pending_handshakes.pop(raw, None)
    if est.protocol != "aemp":
        handler = _subprotocols.get(est.protocol)
        if handler is None:
            logger.info("%s: unsupported sub-protocol %s", est.peer_nodeid, est.protocol)
            return
        handler(est, sock, trailing)
        return
    link = _start_link(sock, est, trailing, outgoing=False)
    link.run()


_subprotocols: dict[str, Callable[[Established, transport.Sock, bytes], Any]] = {}


def register_subprotocol(
    protocol: str, handler: Callable[[Established, transport.Sock, bytes], Any]
) -> None:
    """Route accepted connections that greet with ``protocol`` (``aemp-<word>``) to ``handler``.

    ``handler(established, sock, trailing_bytes)`` runs in the connection's greenlet after the
    normal authentication; the socket is closed when it returns. Used by ``dataconn``.

    Example::

        register_subprotocol("aemp-dataconn", on_dataconn)
    """
    _subprotocols[protocol] = handler


def start_listener(host: str, port: Optional[int]) -> str:
    """Listen on ``host:port`` (port None or 0: any free port); returns the address as
    ``"host:port"`` (what other nodes learn). Raises ``OSError`` when it cannot bind.

    Example::

        start_listener("127.0.0.1", 0)    # '127.0.0.1:39417'
    """
    lst = transport.Listener(host, port, accept)
    lst.start()
    _listeners.append(lst)
    _binds.append(transport.bind_string(*lst.address))
    return _binds[-1]


def stop_listeners() -> None:
    """Stop listening (connections already accepted stay).

    Example::

        stop_listeners()
    """
    for lst in _listeners:
        lst.stop()
    del _listeners[:], _binds[:]


def listener_addresses() -> list[str]:
    """This node's listener addresses, ``["host:port", ...]`` (what other nodes learn).

    Example::

        print(listener_addresses())    # ['127.0.0.1:4040']
    """
    return list(_binds)


def subprotocol_handshake(
    nodeid: str, addr: str, protocol: str, extra: Optional[dict[str, Any]], timeout: float
) -> tuple[transport.Sock, Established, bytes]:
    """Open an authenticated ``protocol`` connection to ``nodeid`` at ``addr``; returns
    ``(sock, est, rest)``. Raises ``OSError``/``RemoteProtocolError``/``HandshakeRefused``.

    Example::

        sock, est, rest = subprotocol_handshake("w/1", "10.0.0.5:4040", "aemp-dataconn", {}, 5)
    """
    host, port = split_hostport(addr)
    sock = None
    try:
        sock = transport.connect(host, port, timeout=timeout)
        transport.apply_sockopts(sock, _cfg.get("nodelay", True))
        hs = connector_handshake(sock, protocol=protocol, extra=extra)
        sock, est, rest = transport.run_handshake(sock, hs, timeout=timeout, tls=tls)
        if est.peer_nodeid != nodeid:
            raise transport.HandshakeRefused(
                "%s answered instead of %s" % (est.peer_nodeid, nodeid)
            )
        return sock, est, rest
    except BaseException:
        if sock is not None:
            sock.close()
        raise
