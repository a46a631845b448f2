"""node: remote nodes, connections made on demand, remote monitors, seeds, ``configure``.

One ``RemoteNode`` per other node this process has heard of. Sending to a node that is not
connected queues the frame and connects: to the addresses the node is known by (seeds, the
global database's ``'l`` family, ``g_found`` answers) or, for a node ID of the form
``host:port``, to that address. If no link is up within ``connect_interval`` every monitor on
that node fires with ``("transport_error", node, "connect timeout")`` and the queue is dropped.
A link that breaks fires them with the reason it broke; frames still queued on it are dropped,
never delivered after the monitors fired (the no-holes guarantee); a later send reconnects.

The kernel reaches this module only through the object registered with
``kernel.set_network``; incoming frames go back up through ``kernel.deliver_remote``.
"""

import logging
import random
import re
import socket as _stdsocket
from typing import Any, Callable, Iterable, Optional

import gevent
from gevent.event import Event
from greenlet import getcurrent

from . import config as _config
from . import transport
from .wire import framing
from . import kernel as _k
from ._guard import Guard
from .wire.handshake import is_perl_peer
from ._ratelog import RateLog, esc, exc_text
from ._ratelog import set_limits as _set_log_limits
from ._report import report_crash
from .exceptions import ConfigError, RemoteProtocolError

__all__ = [
    "configure",
    "node_is_up",
    "up_nodes",
    "known_nodes",
    "mon_nodes",
    "snd_to_func",
    "snd_on",
    "eval_on",
    "RemoteNode",
    "add_tracer",
    "register_subprotocol",
    "dial_subprotocol",
    "listener_addresses",
    "config",
    "links",
    "remote_monitors",
]

logger = logging.getLogger(__name__)
_rl = RateLog(logger)  # bad input from peers (see _ratelog)

_nodes: dict[Any, Any] = {}  # nodeid -> RemoteNode
_idle: dict[
    Any, Any
] = {}  # nodeid -> RemoteNode kept after it went down (oldest first; see _maybe_forget)
_cfg = dict(_config.DEFAULTS)
_tls = None  # transport.TLSContexts of our cert, built once by configure
_listeners: list[Any] = []
_binds: list[Any] = []  # our listener addresses as "host:port" strings (what others learn)
_configured = False
_node_watchers: list[Any] = []  # mon_nodes callbacks
_seed_greenlets: list[Any] = []
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d+)$")


class _NoDirectory:
    """Stands in for the layer that knows where nodes live (the global database, ``global_``)
    until it installs itself with ``set_directory``: this module never imports it."""

    def find_node(self, nodeid):
        return False

    def node_up(self, node):
        pass

    def node_down(self, node):
        pass

    def become_global(self):
        pass

    def seed_up(self, addr, link):
        pass

    def configured(self, cfg):
        pass


_directory = _NoDirectory()


def set_directory(directory):
    """Install the object node asks where nodes live and tells about nodes coming and going
    (``find_node``, ``node_up``, ``node_down``, ``become_global``, ``seed_up``,
    ``configured``): the global database does, when it is imported.

    Example::

        node.set_directory(sys.modules[__name__])   # at the end of global_
    """
    global _directory
    _directory = directory


def _hooks():
    return _directory


# --------------------------------------------------------------------------- remote nodes


class RemoteNode:
    """Another node: its link (when up), frames waiting for a link, and monitors on its ports.

    Example::

        n = get_node("other/1")            # one per node ID, made on first use
        n.send(("portname", "hello"))      # queued, and connecting, while n.is_up is False
    """

    def __init__(self, nodeid):
        self.id = nodeid
        self.link = None  # the link we send on
        self.extra_links = []  # links from a simultaneous connect: read from, never sent on
        # every link to this node, judged alive together: after a simultaneous connect the peer
        # answers our keepalive probes on the connection it sends on, not on ours
        self.liveness = transport.LinkGroup()
        self.queue = []
        self.queue_bytes = 0  # encoded size of the queue (bounded like a link's buffer)
        self._queue_room = None  # Event: the queue went out or was dropped (waiting senders)
        self.monitors = {}  # portname -> [actions]
        self.connecting = False
        self.addrs = None  # list of "host:port" when known
        self._last_error = None  # why the last dial failed (for the reason monitors get)
        self._timer = None
        self._attempts = {}
        self.up_event = Event()
        # ports whose monitors were told of a lost link but have not run yet: sends to them are
        # dropped until then, so no message sent into the gap arrives before the monitor fires
        self.broken = set()

    @property
    def is_up(self):
        return self.link is not None

    # -- sending -------------------------------------------------------------------------
    def send(self, frame):
        """Send ``frame`` (``(portname, *msg)``) on the link, or queue it and connect.

        A value no framing can carry raises ``TypeError`` here, in the caller.

        Example::

            get_node("other/1").send(("portname", "hello"))   # _Net.send, for snd()
        """
        if self.broken and frame and frame[0] in self.broken:
            return
        link = self.link
        if link is not None:
            link.send(frame)
            return
        # the framing is not known yet: check with cbor (it carries everything json does, and
        # bytes) so that a value no framing can carry raises TypeError here, in the caller
        size = len(framing.encode_cbor(frame))
        self.queue.append(frame)
        self.queue_bytes += size
        if not self.connecting:
            self.connect()
        if self.queue_bytes > int(_cfg["link_high_water"]) and self.queue:
            self._queue_full()

    def _queue_full(self):
        """The queue for a node being connected is over ``link_high_water``: a sender that may
        block waits until the link is up (or the connection failed); past ``link_hard_limit``
        the connection attempt fails (docs/running.md, "Backpressure")."""
        hard = int(_cfg["link_hard_limit"])
        if self.queue_bytes > hard:
            self.transport_error(
                "send queue over link_hard_limit (%d bytes queued, limit %d) "
                "while connecting" % (self.queue_bytes, hard)
            )
            return
        if not _k.may_block():
            return
        while self.link is None and self.queue:
            ev = self._queue_room
            if ev is None or ev.is_set():
                ev = self._queue_room = Event()
            ev.wait()

    def _queue_gone(self):
        self.queue_bytes = 0
        if self._queue_room is not None:
            self._queue_room.set()

    # -- connecting ----------------------------------------------------------------------
    def connect(self):
        """Start connecting (idempotent): to the known addresses, a ``host:port`` node ID, or
        the addresses the global nodes tell ``found``; ``connect_interval`` bounds it.

        Example::

            get_node("10.0.0.5:4040").connect()   # as send() does when no link is up
        """
        if self.link is not None or self.connecting:
            return
        self.connecting = True
        loop = gevent.get_hub().loop
        self._timer = loop.timer(float(_cfg["connect_interval"]))
        self._timer.start(self._connect_timeout)
        addrs = self.addrs or explicit_address(self.id)
        if addrs:
            self.connect_to(addrs)
        elif not _hooks().find_node(self.id):
            self.transport_error("no known address")

    def found(self, addrs):
        """``g_found`` (or the database) told us where this node listens.

        Example::

            get_node(nodeid).found(["10.0.0.5:4040"])   # the g_found answer, in global_
        """
        if addrs:
            self.addrs = list(addrs)
            if self.connecting and not self._attempts:
                self.connect_to(self.addrs)
        elif self.connecting and not self._attempts:
            self.transport_error("no known address")
        _maybe_forget(self)  # an answer nobody waits for: kept only as an idle node

    def connect_to(self, addrs):
        """Dial the non-empty list ``addrs`` (``"host:port"``), staggered, skipping addresses
        already being tried; the first handshake that succeeds attaches its link.

        Example::

            self.connect_to(self.addrs)   # connect() and found(), while connecting
        """
        if self.link is not None:
            return
        monitor = float(_cfg["monitor_timeout"])
        interval = float(_cfg["connect_interval"])
        if (monitor - interval) / len(addrs) < interval:
            interval = (monitor - interval) / len(addrs)
        interval = max(interval, 0.4)
        for i, addr in enumerate(addrs):
            if addr in self._attempts:
                continue
            delay = i * interval * (0.9 + 0.1 * random.random())
            # an address whose dials failed is tried again only after its back-off
            delay = max(delay, _dials.backoff_left(addr))
            self._attempts[addr] = gevent.spawn_later(delay, self._attempt, addr)

    def _attempt(self, addr):
        why = None
        try:
            if self.link is not None:
                return
            with _dials.turn(addr, self) as ok:
                if not ok or self.link is not None:
                    return
                if not self.connecting and _dials.waiting:
                    return  # the node gave up meanwhile and others wait for a turn
                host, port = _split_hostport(addr)
                logger.debug("connecting to %s at %s", self.id, addr)
                try:
                    _dial(host, port, expect=self.id)
                except BaseException:
                    _dials.failed(addr)
                    raise
                _dials.succeeded(addr)
        except Exception as exc:
            if not isinstance(exc, transport.HandshakeRefused):
                why = self._last_error = transport.describe_connect_error(addr, exc)
            logger.debug("connect to %s at %s failed: %s", self.id, addr, exc)
        finally:
            self._attempts.pop(addr, None)
            if why is not None and not self._attempts and self.link is None and self.connecting:
                # every known address was tried and failed: say why now (a refused connection
                # within milliseconds) instead of "connect timeout" after connect_interval
                self.transport_error(why, connecting=True)
                _dials.shed(self)

    def _connect_timeout(self):
        if self.link is None and self.connecting:
            last = self._last_error
            self.transport_error(
                "connect timeout" if last is None else "connect timeout (last attempt: %s)" % last,
                connecting=True,
            )
            # its dials still running are speculative now: they make way if others wait
            _dials.shed(self)

    # -- link up/down --------------------------------------------------------------------
    def attach(self, link):
        """Make ``link`` (handshake done) the one we send on: flush the queue, report the node
        up. A second link (simultaneous connect) is only read from.

        Example::

            get_node(est.peer_nodeid).attach(link)   # _start_link, after the handshake
        """
        if self.link is not None:
            self.extra_links.append(link)
            link.probe = None  # probes go out on the link we send on (they test that direction)
            return
        self.link = link
        self.connecting = False
        self._last_error = None
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        queue, self.queue = self.queue, []
        self._queue_gone()
        lost = set()
        for frame in queue:
            if lost and frame[0] in lost:
                # no holes: after a lost message, nothing more to that port from this queue
                logger.error(
                    "message to %s#%s dropped after an earlier one was lost", self.id, frame[0]
                )
                continue
            try:
                link.send_nowait(frame)  # counted against the limits while queued
            except TypeError as exc:
                # e.g. bytes for a json link: the message is lost, so its port's monitors fire
                logger.error("message to %s#%s dropped: %s", self.id, frame[0], exc)
                if frame and frame[0]:
                    lost.add(frame[0])
                    self._message_lost(
                        frame[0],
                        ("transport_error", self.id, "message could not be encoded: %s" % exc),
                    )
        logger.info("%s is up", self.id)
        self.up_event.set()
        _notify_watchers(self.id, True, ())
        _hooks().node_up(self)

    def detach(self, link, why):
        """``link`` closed because of ``why``: if we sent on it, close the node's other links
        and fire its monitors (``transport_error``).

        Example::

            n = _nodes.get(link.nodeid)   # _on_close, every link's on_close callback
            if n is not None:
                n.detach(link, why)
        """
        if link in self.extra_links:
            self.extra_links.remove(link)
            return
        if link is not self.link:
            return
        self.link = None
        self.up_event.clear()
        # the peer may have sent monitors over the other links: drop them all, so that both
        # sides see the connection loss and fire their monitors (never a silent switch-over)
        extra, self.extra_links = self.extra_links, []
        for other in extra:
            other.close(why)
        self.transport_error(why)

    def transport_error(self, why, connecting=False):
        """Fire every monitor on this node once with ``("transport_error", id, why)``.

        ``connecting``: the node never came up (a failed connect), so ``mon_nodes`` watchers are
        not told it went down.

        Example::

            get_node("other/1").transport_error("connect timeout")   # the connect timer
        """
        was_up = self.link is not None
        if self.link is not None:
            link, self.link = self.link, None
            link.close(why)
        self.connecting = False
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self.queue = []
        self._queue_gone()
        self.addrs = None  # ask again next time: the node may come back elsewhere
        mons, self.monitors = self.monitors, {}
        reason = ("transport_error", self.id, why)
        actions = [a for lst in mons.values() for a in lst]
        if actions:
            broken = set(mons) - self.broken
            self.broken |= broken

            def fire_then_heal():
                # heal first (no switch in between): sends made by the monitors themselves,
                # and anything after them, go out again
                self.broken -= broken
                _k.fire_monitors(actions, reason)

            _k.spawn_raw(fire_then_heal)
        had_link = was_up or not (connecting or why in ("connect timeout", "no known address"))
        if had_link:
            logger.info("%s is down: %s", self.id, why)
        else:  # a node that never came up (maybe invented by a peer): rate-limited
            _rl.info(("never up", why), "%s is down: %s", self.id, why)
        _k.forget_node_monitors(self.id)
        if had_link:
            _notify_watchers(self.id, False, reason)
        _hooks().node_down(self)
        # free it when it holds nothing; a node that had a link (reported down above) stays
        # known; if its monitors still have to run (spawned above), after them
        if self.broken:
            _k.spawn_raw(_maybe_forget, self, had_link)
        else:
            _maybe_forget(self, had_link)

    # -- monitors ------------------------------------------------------------------------
    def monitor(self, portname, action):
        """Call ``action(*reason)`` once when port ``portname`` there dies or the link is lost.

        The first monitor on a port sends ``mon1``; ``portname`` ``""`` watches the connection.

        Example::

            get_node("other/1").monitor("worker", action)   # _Net.monitor, for mon()
        """
        lst = self.monitors.get(portname)
        if lst is None:
            self.monitors[portname] = [action]
            if portname:
                self.send(("", "mon1", portname))
            elif self.link is None:
                # monitoring a node port means monitoring the connection: make one
                self.send(("", ""))
        else:
            lst.append(action)

    def unmonitor(self, portname, action):
        """Forget ``action``; after the last one on ``portname``, send ``mon0`` if the link is up.

        Example::

            n = _nodes.get("other/1")   # _Net.unmonitor, when a mon() guard is cancelled
            if n is not None:
                n.unmonitor("worker", action)
        """
        lst = self.monitors.get(portname)
        if not lst:
            return
        try:
            lst.remove(action)
        except ValueError:
            return
        if not lst:
            del self.monitors[portname]
            if self.link is not None and portname:
                self.link.send(("", "mon0", portname))

    def _message_lost(self, portname, reason):
        """A message to ``portname`` could not be sent: fire its monitors, and drop later
        sends to it until they ran (so nothing sent after the lost one arrives first)."""
        actions = self.monitors.pop(portname, None)
        if not actions:
            return
        self.broken.add(portname)

        def fire_then_heal():
            self.broken.discard(portname)  # as in transport_error: heal, then fire (no switch)
            _k.fire_monitors(actions, tuple(reason))

        _k.spawn_raw(fire_then_heal)

    def port_died(self, portname, reason):
        """Port ``portname`` there died with ``reason`` (its ``kil0``): fire its monitors once.

        Example::

            n = _nodes.get(from_node)   # _Net.port_died, for a kil0 from that node
            if n is not None:
                n.port_died("worker", ("die", "bad job"))
        """
        actions = self.monitors.pop(portname, None)
        if actions:
            _k.spawn_raw(_k.fire_monitors, actions, tuple(reason))

    def __repr__(self):
        return "<RemoteNode %s %s>" % (self.id, "up" if self.link else "down")


# --------------------------------------------------------------------------- dial limiter


class _DialLimiter:
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

        with _dials.turn("10.0.0.5:4040") as ok:
            if ok:
                _dial("10.0.0.5", 4040)
    """

    MAX_BACKOFF_ENTRIES = 4096  # addresses remembered; the oldest entry makes room

    def __init__(self):
        self._sem = None
        self._size = None
        self._backoff = {}  # addr -> (loop time it may be dialled again, current pause)
        self._refused = 0  # dials refused since the last log line
        self._logged = -1e9  # loop time of that log line
        self._holders = {}  # greenlet holding a turn -> its RemoteNode (oldest first)
        self.waiting = 0  # dials waiting for a turn

    def _semaphore(self):
        size = int(_cfg.get("max_dials") or 64)
        if self._sem is None or size != self._size:
            from gevent.lock import BoundedSemaphore

            self._sem, self._size = BoundedSemaphore(size), size
        return self._sem

    def backoff_left(self, addr):
        """Seconds before ``addr`` may be dialled again (0 when it may be dialled now)."""
        entry = self._backoff.get(addr)
        if entry is None:
            return 0.0
        return max(0.0, entry[0] - gevent.get_hub().loop.now())

    def failed(self, addr):
        """A dial of ``addr`` failed: back it off (double the pause, up to the maximum)."""
        base = float(_cfg["connect_interval"]) / 4.0
        cap = float(_cfg.get("dial_backoff_max") or 10)
        entry = self._backoff.pop(addr, None)
        pause = min(cap, max(base, entry[1] * 2 if entry else base))
        if len(self._backoff) >= self.MAX_BACKOFF_ENTRIES:
            del self._backoff[next(iter(self._backoff))]
        self._backoff[addr] = (gevent.get_hub().loop.now() + pause, pause)

    def succeeded(self, addr):
        """A dial of ``addr`` succeeded: forget its back-off."""
        self._backoff.pop(addr, None)

    def turn(self, addr, node=None):
        """A context manager yielding True when this dial (for ``node``) may go ahead."""
        return _DialTurn(self, addr, node)

    def shed(self, node=None):
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

    def _refuse(self, addr, why):
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

    def __init__(self, lim, addr, node):
        self._lim, self._addr, self._node, self._sem = lim, addr, node, None

    def __enter__(self):
        lim = self._lim
        sem = lim._semaphore()
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

    def __exit__(self, *exc):
        if self._sem is not None:
            self._lim._holders.pop(gevent.getcurrent(), None)
            self._sem.release()
            self._sem = None
        return False


def _fds_left():
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


_dials = _DialLimiter()


def get_node(nodeid):
    """The ``RemoteNode`` for ``nodeid``, created on first use.

    Example::

        get_node("other/1").send(("portname", "hello"))
    """
    n = _nodes.get(nodeid)
    if n is None:
        if len(_nodes) >= _max_nodes():
            _make_room()
        n = _nodes[nodeid] = RemoteNode(nodeid)
    return n


# ---- freeing the state of nodes nobody needs (setting max_nodes) ----------------------------
# A node that is down and holds nothing (no link, no queue, no monitors, not connecting) is
# forgotten at once unless it was ever up or its addresses are known (also a ``host:port`` ID):
# a peer that makes us send to invented node IDs leaves nothing behind. The others are kept (known_nodes, node_is_up
# False, cached addresses) in ``_idle``, oldest first, and dropped when ``max_nodes`` is reached.


def _max_nodes():
    return int(_cfg.get("max_nodes") or 10000)


def _is_idle(n):
    return (
        n.link is None
        and not n.extra_links
        and not n.connecting
        and not n.queue
        and not n.monitors
        and not n._attempts
        and not n.broken
    )


def _maybe_forget(n, had_link=False):
    """``n`` went down (or got an unsolicited answer): free it, or keep it in ``_idle``."""
    if had_link:
        n._was_up = True
    if _nodes.get(n.id) is not n or not _is_idle(n):
        return
    _idle.pop(n.id, None)
    if n.addrs or getattr(n, "_was_up", False) or _HOSTPORT.match(n.id):
        _idle[n.id] = n
    else:
        del _nodes[n.id]


def _make_room():
    """Drop the oldest idle nodes until ``_nodes`` is below ``max_nodes`` (or none is idle)."""
    cap = _max_nodes()
    while len(_nodes) >= cap and _idle:
        nodeid = next(iter(_idle))
        n = _idle.pop(nodeid)
        if _nodes.get(nodeid) is n and _is_idle(n):
            del _nodes[nodeid]


def _node_for_relay(nodeid):
    """``get_node(nodeid)``, unless a peer's request would make us remember one node more than
    ``max_nodes`` (then None: the caller drops what the peer asked for, with a log line)."""
    n = _nodes.get(nodeid)
    if n is not None:
        return n
    if len(_nodes) >= _max_nodes():
        _make_room()
        origin = _k.request_origin()
        if len(_nodes) >= _max_nodes() and origin is not None and origin != _k.this_node:
            _rl.warning(
                (origin, "max_nodes"),
                "request from %s for unknown node %s dropped: %d nodes known (max_nodes)",
                origin,
                esc(nodeid),
                len(_nodes),
            )
            return None
    return get_node(nodeid)


_RELAY_SCAN_MIN = 8  # node-port frames this short cannot carry a long relay chain


def _relay_chain(frame):
    """True (and logged) if ``frame``, a request to another node's node port that we send on
    behalf of a peer's request, names more node ports than ``max_forward_depth``.

    A peer can make two nodes relay a request back and forth (``["", "snd", "B#", "snd",
    "A#", "snd", "B#", ...]`` sent to A, or the same with ``time``/``can`` replies): each hop
    is a new request, so the local nesting bound does not see it, and each hop re-sends the
    rest of the frame (quadratic work for both nodes). Every hop of such a chain is one node
    port ID in the frame (``node#``, or the bare ID of a node we know), so counting them
    bounds the chain at its first hop.
    """
    origin = _k.request_origin()
    if origin is None or origin == _k.this_node:
        return False  # our own code sends what it wants
    limit = int(_cfg.get("max_forward_depth") or 8)
    hops = 0
    me = _k.this_node
    for x in frame:  # node ports: "node#", or a bare node ID (of a node we could send to)
        if x.__class__ is str and ((x.endswith("#") and len(x) > 1) or x in _nodes or x == me):
            hops += 1
            if hops > limit:
                _rl.warning(
                    (origin, "relay chain"),
                    "request from %s relaying more than %d "
                    "node-port requests dropped (max_forward_depth): %s",
                    origin,
                    limit,
                    esc(frame[:3]),
                )
                return True
    return False


def explicit_address(nodeid):
    """A node ID of the form ``host:port`` is reachable at that address (documented rule)."""
    if _HOSTPORT.match(nodeid):
        return [nodeid]
    return None


def _split_hostport(addr):
    host, port = _config.parse_address(addr)
    if port is None:
        raise ConfigError("address without a port: %r" % (addr,))
    return host, port


class _Net:
    """What the kernel calls for everything that leaves this node."""

    def send(self, nodeid, frame):
        if _tracers:
            _trace("SND", nodeid, frame)
        if nodeid == _k.this_node:
            _k.deliver_remote(nodeid, frame)
            return
        if frame and frame[0] == "" and len(frame) > _RELAY_SCAN_MIN and _relay_chain(frame):
            return
        n = _nodes.get(nodeid) or _node_for_relay(nodeid)
        if n is not None:
            n.send(frame)

    def monitor(self, nodeid, portname, action):
        n = _nodes.get(nodeid) or _node_for_relay(nodeid)
        if n is None:
            _k.spawn_raw(action, "transport_error", nodeid, "too many nodes (max_nodes)")
            return
        n.monitor(portname, action)

    def unmonitor(self, nodeid, portname, action):
        n = _nodes.get(nodeid)
        if n is not None:
            n.unmonitor(portname, action)

    def kill(self, nodeid, portname, reason):
        self.send(nodeid, ("", "kil1", portname) + tuple(reason))

    def port_died(self, nodeid, portname, reason):
        n = _nodes.get(nodeid)
        if n is not None:
            n.port_died(portname, reason)


_k.set_network(_Net())


# --------------------------------------------------------------------------- links


def _on_frame(link, frame):
    if _tracers:
        _trace("RCV", link.nodeid, frame)
    _k.deliver_remote(link.nodeid, frame)


# --------------------------------------------------------------------------- tracing

_tracers: list[Any] = []  # callables (direction, nodeid, frame); empty = no cost but one truth test


def add_tracer(fn):
    """Call ``fn(direction, nodeid, frame)`` for every frame sent ("SND") or received ("RCV").

    Returns a guard that removes it. ``PERL_ANYEVENT_MP_TRACE=1`` installs one that prints
    each frame as JSON, like AEMP; ``aemp trace NODE`` streams them from another node.

    Example::

        add_tracer(lambda d, node, frame: print(d, node, frame))
    """
    _tracers.append(fn)

    def undo():
        if fn in _tracers:
            _tracers.remove(fn)

    return Guard.for_caller(undo)


_tracing: set[Any] = set()  # greenlets running the tracers: what tracers send is not traced


def _trace(direction, nodeid, frame):
    # Not re-entrant: a frame that a tracer sends (a trace stream to a subscriber) is not
    # traced again, so two subscriptions cannot feed each other. A tracer that fails is
    # removed (once, however the failures nest) and logged in one line.
    cur = getcurrent()
    if cur in _tracing:
        return
    _tracing.add(cur)
    try:
        for fn in list(_tracers):
            try:
                fn(direction, nodeid, frame)
            except Exception as exc:
                if fn in _tracers:
                    _tracers.remove(fn)
                    _rl.error(
                        ("tracer", "failed"),
                        "tracer %s failed and was removed: %s",
                        esc(fn),
                        exc_text(exc),
                    )
    finally:
        _tracing.discard(cur)


def _print_tracer(direction, nodeid, frame):
    import json
    import sys

    arrow = "<-" if direction == "SND" else "->"
    shown = [None if i == 0 and x == "" else x for i, x in enumerate(frame)]
    sys.stderr.write(
        "%s %s %s %s\n"
        % (direction, nodeid, arrow, json.dumps(shown, ensure_ascii=False, default=repr))
    )


_trace_subscribers: dict[
    Any, Any
] = {}  # port -> cancel function (stops the stream and its monitor)


def _req_trace(from_node, port, on=1, *_):
    """Node request ``aemp_green_trace``: stream our frames to ``port`` (``on`` false stops).

    At most ``max_trace_streams`` ports at once (each frame costs one message per stream);
    a secure node refuses it unless ``allow_trace`` (``trace=True`` below).
    """
    if not isinstance(port, str):
        return
    old = _trace_subscribers.pop(port, None)
    if old is not None:
        old()
    if not on:
        return
    cap = int(_cfg.get("max_trace_streams") or 16)
    if len(_trace_subscribers) >= cap:
        _rl.warning(
            (from_node, "trace streams"),
            "trace request from %s for %s refused: %d streams already (max_trace_streams)",
            from_node,
            esc(port),
            cap,
        )
        return

    def forward(direction, nodeid, frame):
        if frame and frame[0] == port.partition("#")[2] and nodeid == node_of_port(port):
            return  # never trace the trace stream itself
        _k.snd(port, "trace", direction, nodeid, list(frame))

    def cancel():
        if forward in _tracers:
            _tracers.remove(forward)
        undo_monitor()

    _tracers.append(forward)
    _trace_subscribers[port] = cancel
    undo_monitor = _k.add_monitor(port, lambda *r: _req_trace(from_node, port, 0))


def node_of_port(port):
    return port.partition("#")[0]


# a secure node refuses it unless the setting allow_trace is true (kernel.node_request)
_k.register_node_request("aemp_green_trace", _req_trace, trace=True)


#: the tag of the answer to our keepalive probes (a node-port request of ours): a name no AEMP
#: request has
PONG = "aemp_green/pong"


def _req_pong(from_node, *_):
    """The answer to a keepalive probe of ours: the round trip of the link we sent it on."""
    n = _nodes.get(from_node)
    if n is not None and n.link is not None:
        n.link.probe_answered()


_k.register_node_request(PONG, _req_pong)


def links():
    """Every open link of this node: the ones sent on, then the read-only ones a simultaneous
    connect left (introspection reads their counters).

    Example::

        for link in links():
            print(link.nodeid, link.frames_in, link.bytes_pending)
    """
    out = [n.link for n in _nodes.values() if n.link is not None]
    out += [link for n in _nodes.values() for link in n.extra_links]
    return out


def remote_monitors():
    """``[(port ID, [monitor actions])]`` for the ports of other nodes this node monitors (a
    node ID alone: its connection is monitored), for introspection.

    Example::

        for port, actions in remote_monitors():
            print(port, len(actions))
    """
    return [
        (nodeid + "#" + name if name else nodeid, list(actions))
        for nodeid, n in list(_nodes.items())
        for name, actions in list(n.monitors.items())
    ]


def _on_close(link, why):
    logger.debug("%s disconnected: %s", link.nodeid, why)
    n = _nodes.get(link.nodeid)
    if n is not None:
        n.detach(link, why)
    link.closed_event.set()


def _refuse_duplicates(ev):
    if ev.protocol != "aemp":  # a sub-protocol connection (DataConn) from a connected node is fine
        return
    n = _nodes.get(ev.nodeid)
    if n is not None and n.link is not None:
        raise transport.HandshakeRefused("%s already connected, not connecting again." % ev.nodeid)


def _start_link(sock, est, trailing, outgoing):
    link = transport.Link(
        sock,
        est.peer_nodeid,
        est.send_framing,
        est.recv_framing,
        trailing,
        _on_frame,
        _on_close,
        max_frame=int(_cfg.get("max_frame") or 64 << 20),
        peer_kv=est.kv,
        outgoing=outgoing,
        keepalive=float(_cfg["monitor_timeout"]) if _cfg.get("keepalive", True) else None,
        # the peer answers ["", "aemp_green/pong", <time>] to our node port (_req_pong)
        probe=("", "time", _k.this_node + "#", PONG),
        group=get_node(est.peer_nodeid).liveness,
        # a Perl string has no bytes/text distinction: its byte strings are text
        text_bytes=bool(_cfg.get("perl_bytes_as_text", True)) and is_perl_peer(est.kv),
        high_water=int(_cfg["link_high_water"]),
        low_water=_cfg.get("link_low_water"),
        hard_limit=int(_cfg["link_hard_limit"]),
        may_wait=_k.may_block,
        auth=est.auth_method,
        tls=est.tls,
    )
    link.closed_event = Event()
    get_node(est.peer_nodeid).attach(link)
    return link


def _dial(host, port, expect=None):
    """Connect to ``host:port``, handshake, attach the link and read it until it closes.

    Returns the link after it closed; raises on connect/handshake failure.
    """
    sock = transport.connect(host, port, timeout=float(_cfg["connect_interval"]))
    transport.apply_sockopts(sock, _cfg.get("nodelay", True))
    hs = _connector_handshake(sock)

    def on_greeting(ev):
        if expect is not None and ev.nodeid != expect:
            raise transport.HandshakeRefused("dialled %s but %s answered" % (expect, ev.nodeid))
        _refuse_duplicates(ev)

    try:
        sock, est, trailing = transport.run_handshake(
            sock, hs, timeout=float(_cfg["monitor_timeout"]), on_greeting=on_greeting, tls=_tls
        )
    except BaseException:
        sock.close()
        raise
    link = _start_link(sock, est, trailing, outgoing=True)
    gevent.spawn(link.run)
    return link


def _connector_handshake(sock, protocol="aemp", extra=None):
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


def _check_for(own, extra):
    """The peeraddr check for a connection whose local address is ``own`` (None: checks off)."""
    if not _cfg.get("check_peeraddr", True):
        return None
    return transport.peeraddr_check(own, list(extra) + list(_cfg.get("public_addresses") or ()))


def _named_binds():
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


_pending_handshakes: dict[Any, Any] = {}  # socket -> (source host, Handshake), oldest first
MAX_PENDING_HANDSHAKES = 256
MAX_PENDING_PER_SOURCE = 32


def _make_handshake_room(source):
    """Slowloris defence: keep unfinished incoming handshakes within the caps, evicting fairly.

    A source (remote IP) over its own cap loses its oldest pending handshake; when the total cap
    is reached the oldest handshake of the source with the most pending ones goes. A real peer
    finishes in a round trip or two, so only stalled connections from the busiest source are
    evicted, and an attacker churning connections from one address cannot lock out a slow
    legitimate peer elsewhere.
    """
    cap = int(_cfg.get("max_pending_handshakes") or MAX_PENDING_HANDSHAKES)
    per_source = int(_cfg.get("max_pending_per_source") or MAX_PENDING_PER_SOURCE)
    counts = {}
    for src, _hs in _pending_handshakes.values():
        counts[src] = counts.get(src, 0) + 1
    while _pending_handshakes:
        if counts.get(source, 0) >= per_source:
            victim_src = source
        elif len(_pending_handshakes) >= cap:
            victim_src = max(counts, key=counts.get)
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


def _log_evicted(source):
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


def _printable(exc):
    """An error's text with control characters escaped (it may quote a peer's bytes; our
    handshake errors already cut those short)."""
    text = str(exc) or exc.__class__.__name__
    return text if text.isprintable() else repr(text)[1:-1]


def _accept(sock, addr):
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
            tls=_tls,
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


_subprotocols: dict[Any, Any] = {}


def register_subprotocol(protocol, handler):
    """Route accepted connections that greet with ``protocol`` (``aemp-<word>``) to ``handler``.

    ``handler(established, sock, trailing_bytes)`` runs in the connection's greenlet after the
    normal authentication; the socket is closed when it returns. Used by ``dataconn``.

    Example::

        register_subprotocol("aemp-dataconn", on_dataconn)
    """
    _subprotocols[protocol] = handler


def dial_subprotocol(nodeid, protocol, extra=None, timeout=None):
    """Open an authenticated ``protocol`` connection to ``nodeid``; returns ``(sock, est, rest)``.

    Uses the node's known addresses (asking the master with ``g_find`` if needed). Raises
    ``OSError``/``RemoteProtocolError``/``gevent.Timeout`` on failure.

    Example::

        sock, est, rest = dial_subprotocol("worker/x", "aemp-dataconn", {"dataconn_id": "1"})
    """
    timeout = float(_cfg["connect_interval"] if timeout is None else timeout)
    n = get_node(nodeid)
    addrs = n.addrs or explicit_address(nodeid)
    with gevent.Timeout(timeout):
        if not addrs:
            if n.is_up:
                # it dialled us, so we never learnt where it listens: ask the global nodes
                _hooks().find_node(nodeid)
            else:
                n.send(("", ""))  # connecting finds the addresses (g_find) if anything can
            while not n.addrs:
                gevent.sleep(0.02)
            addrs = n.addrs
        last = None
        for addr in addrs or ():
            host, port = _split_hostport(addr)
            sock = None
            try:
                sock = transport.connect(host, port, timeout=timeout)
                transport.apply_sockopts(sock, _cfg.get("nodelay", True))
                hs = _connector_handshake(sock, protocol=protocol, extra=extra)
                sock, est, rest = transport.run_handshake(sock, hs, timeout=timeout, tls=_tls)
                if est.peer_nodeid != nodeid:
                    raise transport.HandshakeRefused(
                        "%s answered instead of %s" % (est.peer_nodeid, nodeid)
                    )
                return sock, est, rest
            except (OSError, RemoteProtocolError, transport.HandshakeRefused) as exc:
                last = exc
                if sock is not None:
                    sock.close()
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        raise last or OSError("no known address for %s" % nodeid)


# --------------------------------------------------------------------------- seeds


def _seed_loop(addr):
    """Keep a connection to the seed at ``addr`` with back-off; announce ourselves as slave.

    Seeds are configured, not learnt from the network: their dials don't wait for a
    ``max_dials`` turn, and they have their own back-off here.
    """
    backoff = (1 + random.random()) * 0.6
    while True:
        try:
            host, port = _split_hostport(addr)
            link = _dial(host, port)
        except RemoteProtocolError as exc:
            if "refuse to talk to myself" in str(exc):
                logger.debug("seed %s is ourselves: this node is global", addr)
                _hooks().become_global()
                return
            logger.debug("seed %s: %s", addr, exc)
        except transport.HandshakeRefused as exc:
            logger.debug("seed %s: %s", addr, exc)
        except (OSError, gevent.Timeout, ConfigError) as exc:
            logger.debug("seed %s unreachable: %s", addr, exc)
        else:
            backoff = (1 + random.random()) * 0.6
            _hooks().seed_up(addr, link)
            link.closed_event.wait()
            continue
        gevent.sleep(backoff)
        backoff = min(backoff * 2, float(_cfg["monitor_timeout"]))


# --------------------------------------------------------------------------- configure

_CONFIGURE_ONLY = frozenset(("norc", "force", "profile"))  # configure() arguments, not settings


def configure(profile: Optional[str] = None, **kv: Any) -> dict[str, Any]:
    """Configure this node once per process: node ID, listeners, seeds, secret, ...

    Keys as AEMP (``nodeid``, ``binds``, ``seeds``, ``secret``, ``cert``, ``secure``,
    ``services``, ``monitor_timeout``, ``connect_interval``, ``framing_format``, ``auth_offer``,
    ``auth_accept``, ``autocork``, ``nodelay``, ``parent``, ``force``, ``norc``), merged with the
    rc file and its profiles exactly as AEMP does (see ``config.find_profile``). Returns the
    effective configuration.

    A bad value, a ``cert`` that is not a usable PEM or a listener that cannot bind raises
    ``ConfigError`` naming the key, and leaves the node as it was (it can be called again).
    Keys that are not settings are kept, as in AEMP, but logged as a likely typo.

    Example::

        configure(nodeid="worker/", binds=["127.0.0.1:*"], seeds=["127.0.0.1:4040"],
                  secret="s3cret", norc=True)
    """
    global _cfg, _configured, _tls
    if _configured:
        raise RuntimeError("configure() can only be called once per process")
    import os

    if os.environ.get("PERL_ANYEVENT_MP_TRACE") and _print_tracer not in _tracers:
        _tracers.append(_print_tracer)
    unknown = sorted(
        k for k in kv if k not in _config.SETTINGS_BY_NAME and k not in _CONFIGURE_ONLY
    )
    if unknown:  # kept (AEMP keeps unknown keys too), but most likely a typo: say so visibly
        _warn_unknown(unknown)
    norc = kv.get("norc")
    rc = {} if norc else _config.load_rc()
    cfg = _config.validate(_config.find_profile(rc, profile, **kv))
    nodeid = _config.expand_nodeid(_config.default_nodeid(cfg))
    tls = None
    if cfg.get("cert"):  # now, once: never per connection
        try:
            tls = transport.tls_contexts(cfg["cert"])
        except (OSError, ValueError) as exc:
            raise ConfigError(
                "cert: not a usable PEM with key, certificate and CA certificates (%s)" % (exc,)
            ) from None
    before = (_k.this_node, _k.secure_mode, _cfg, _tls)
    _tls = tls
    _k.set_node_id(nodeid)
    _k.set_secure(cfg.get("secure"), cfg.get("allow_trace"))
    if cfg.get("check_local_messages"):
        _k.check_local_messages(True)
    _k.set_limits(max_forward_depth=cfg.get("max_forward_depth"))
    _set_log_limits(cfg.get("log_rate_lines"), cfg.get("log_rate_interval"))
    _cfg = cfg
    _configured = True

    # listeners (nothing else has started yet: a failure undoes the above and can be retried)
    bind = None
    try:
        for bind in _config.expand_binds(cfg.get("binds") or ["*"]):
            lst = transport.Listener(bind[0], bind[1], _accept)
            lst.start()
            _listeners.append(lst)
            _binds.append(transport.bind_string(*lst.address))
    except OSError as exc:
        for lst in _listeners:
            lst.stop()
        del _listeners[:], _binds[:]
        _k.set_node_id(before[0])
        _k.set_secure(before[1])
        _cfg, _configured, _tls = before[2], False, before[3]
        where = "%s:%s" % (bind[0], "*" if bind[1] is None else bind[1]) if bind else "?"
        raise ConfigError("binds: cannot listen on %s: %s" % (where, exc)) from None
    logger.info("node %s listens on %s", nodeid, _binds)
    _hooks().configured(cfg)

    for seed in cfg.get("seeds") or []:
        _seed_greenlets.append(gevent.spawn(_seed_loop, seed))

    # the side services (dataconn, logcatcher) registered their node requests when the package
    # was imported; they read their settings here
    for fn in list(_configured_hooks):
        fn(cfg)

    for service in cfg.get("services") or []:
        _start_service(service)
    return cfg


def _warn_unknown(unknown):
    """A ``UserWarning`` (shown on stderr by default, once per call site) for settings that
    are not settings, with the likely meant one."""
    import difflib
    import warnings

    known = [s.name for s in _config.SETTINGS]
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append("%r (did you mean %r?)" % (key, close[0]) if close else repr(key))
    text = "configure(): unknown setting%s %s ignored (known: %s)" % (
        "s" if len(unknown) > 1 else "",
        ", ".join(parts),
        ", ".join(known),
    )
    logger.warning("%s", text)
    warnings.warn(text, UserWarning, stacklevel=3)


def run_forever(signals: Optional[Iterable[int]] = None) -> int:
    """Run this node until SIGINT (Ctrl-C) or SIGTERM, then shut it down cleanly (listeners
    closed, queued frames flushed, peers see the links end) and return the signal number.

    The way to end a node program: no ``KeyboardInterrupt`` traceback on Ctrl-C, and the
    process exits with status 0. Call it from the main thread (signal handlers live there).

    Example::

        configure(nodeid="worker/", seeds=["127.0.0.1:4040"])
        spawn(serve)
        run_forever()
    """
    import signal

    from gevent.event import AsyncResult

    _k.check_thread()
    got = AsyncResult()
    watchers = [
        gevent.signal_handler(s, got.set, s) for s in (signals or (signal.SIGINT, signal.SIGTERM))
    ]
    try:
        signum = got.get()
    finally:
        for w in watchers:
            w.cancel()
    logger.info("node %s stopping on signal %s", _k.this_node, signum)
    shutdown()
    return signum


def is_configured():
    """True once ``configure`` has run in this process.

    Example::

        if not is_configured(): configure(...)
    """
    return _configured


def setting(name, default=None):
    """One value of the effective configuration (no copy: for the layers above, which read a
    setting per connection).

    Example::

        timeout = float(setting("monitor_timeout", 30))
    """
    return _cfg.get(name, default)


def config():
    """A copy of this node's effective configuration (after ``configure``; defaults before).

    Example::

        print(config()["monitor_timeout"])
    """
    import copy

    return copy.deepcopy(_cfg)


_configured_hooks: list[Any] = []


def on_configured(fn):
    """Call ``fn(cfg)`` with the effective configuration when ``configure`` has run (the way
    the services above this layer read their settings; node never imports them).

    Example::

        node.on_configured(lambda cfg: set_max_streams(cfg.get("max_trace_streams")))
    """
    _configured_hooks.append(fn)


def _start_service(service):
    """``"pkg.mod."`` imports a module, ``"pkg.func"`` calls it, ``["pkg.func", args...]`` too."""
    import importlib

    try:
        if isinstance(service, list):
            _k.resolve_function(service[0])(*service[1:])
        elif service.endswith("::") or service.endswith("."):
            importlib.import_module(service.rstrip(":.").replace("::", "."))
        else:
            _k.resolve_function(service)()
    except Exception as exc:
        report_crash("service", None, exc, detail="(%r failed to start)" % (service,))


def listener_addresses():
    """This node's listener addresses, ``["host:port", ...]`` (what other nodes learn).

    Example::

        print(listener_addresses())    # ['127.0.0.1:4040']
    """
    return list(_binds)


def shutdown(flush: float = 1.0) -> None:
    """Stop listening, close every link (peers see the connection end) and stop seed loops.

    Frames already queued are sent first, waiting at most ``flush`` seconds in all (``0``:
    drop them).

    Example::

        shutdown()
    """
    _k.check_thread()  # before anything changes (docs/running.md)
    for g in _seed_greenlets:
        g.kill(block=False)
    for lst in _listeners:
        lst.stop()
    links = [
        link
        for n in list(_nodes.values())
        for link in [n.link] + list(n.extra_links)
        if link is not None
    ]
    if flush:
        with gevent.Timeout(flush, False):
            for link in links:
                link.flush(flush)
    for link in links:
        link.close("shutdown")


# --------------------------------------------------------------------------- node watching


def node_is_up(nodeid: str) -> Optional[bool]:
    """True if connected (or ourselves), False if known but not connected, None if unknown.

    Example::

        if node_is_up("seed"): ...
    """
    if nodeid == _k.this_node:
        return True
    n = _nodes.get(nodeid)
    if n is None:
        return None
    return n.link is not None


def up_nodes() -> list[str]:
    """IDs of the nodes we have a link to.

    Example::

        print(up_nodes())
    """
    return [n.id for n in _nodes.values() if n.link is not None]


def known_nodes() -> list[str]:
    """IDs of every node this node has heard of (connected or not) and still keeps: a node that
    never came up is forgotten when it goes down, and at most ``max_nodes`` are kept.

    Example::

        print(known_nodes())
    """
    return list(_nodes)


def mon_nodes(cb: Callable[..., Any]) -> Guard:
    """Call ``cb(node, is_up, *reason)`` whenever a node connects or disconnects; returns a guard.

    Example::

        mon_nodes(lambda node, up, *why: print(node, "up" if up else "down", why))
    """
    _k.check_thread()  # before anything changes (docs/running.md)
    _node_watchers.append(cb)

    def undo():
        try:
            _node_watchers.remove(cb)
        except ValueError:
            pass

    return Guard.for_caller(undo)


def _notify_watchers(nodeid, is_up, reason):
    for cb in list(_node_watchers):
        _k.spawn_raw(_safe_call, cb, nodeid, is_up, *reason)


def _safe_call(cb, *args):
    try:
        cb(*args)
    except Exception as exc:
        report_crash("mon_nodes callback", None, exc, detail="(%r)" % (cb,))


def snd_to_func(nodeid: str, func: str, *args: Any) -> None:
    """Ask ``nodeid`` to call its function ``func(*args)`` (refused by ``secure`` nodes).

    Example::

        snd_to_func("worker/abc", "myapp.jobs.start", 42)
    """
    _k.snd(nodeid, func, *args)


def snd_on(nodeid: str, port: str, *msg: Any) -> None:
    """Ask ``nodeid`` to send ``msg`` to ``port`` (a relay through that node).

    Example::

        snd_on("seed", target_port, "hello")
    """
    _k.snd(nodeid, "snd", port, *msg)


def eval_on(nodeid: str, expr: str, *reply: Any) -> None:
    """Ask ``nodeid`` to evaluate ``expr``; the reply port gets ``(error_text, result)``.

    Python nodes evaluate a Python expression, Perl nodes Perl code; ``secure`` nodes refuse.

    Example::

        cal(NODE(), cb=print)  # see tests; typically: eval_on(node, "1+1", SELF(), "result")
    """
    _k.snd(nodeid, "eval", expr, *reply)


def _hostname():
    return _stdsocket.gethostname()
