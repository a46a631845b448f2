"""node: remote nodes, their links, connections made on demand, remote monitors.

One ``RemoteNode`` per other node this process has heard of. Sending to a node that is not
connected queues the frame and connects: to the addresses the node is known by (seeds, the
global database's ``'l`` family, ``g_found`` answers) or, for a node ID of the form
``host:port``, to that address. If no link is up within ``connect_interval`` every monitor on
that node fires with ``("transport_error", node, "connect timeout")`` and the queue is dropped.
A link that breaks fires them with the reason it broke; frames still queued on it are dropped,
never delivered after the monitors fired (the no-holes guarantee); a later send reconnects.

The kernel reaches this module only through the object registered with
``kernel.set_network``; incoming frames go back up through ``kernel.deliver_remote``. Dialling
and accepting are ``connect``'s (this module installs its link hooks there); where a node
listens, this module asks the object ``runtime`` installs with ``set_directory`` (the global
database); settings are read from ``config.active``.
"""

import logging
import random
import re
from types import ModuleType
from typing import Any, Callable, Optional, Protocol, Sequence, Union, cast

import gevent
from gevent.event import Event

from . import config as _config
from . import connect, trace, transport
from . import _hub
from . import kernel as _k
from ._guard import Guard
from ._protocol import Msg
from ._ratelog import RateLog, esc
from ._report import report_crash
from .exceptions import RemoteProtocolError
from .kernel import Action, Reason
from .wire import framing
from .wire.handshake import Established, GreetingReceived, is_perl_peer

__all__ = [
    "node_is_up",
    "up_nodes",
    "known_nodes",
    "mon_nodes",
    "snd_to_func",
    "snd_on",
    "eval_on",
    "RemoteNode",
    "get_node",
    "all_links",
    "dial_subprotocol",
    "set_directory",
    "remote_monitors",
    "Directory",
]

logger = logging.getLogger(__name__)
_rl = RateLog(logger)  # bad input from peers (see _ratelog)

_nodes: dict[str, "RemoteNode"] = {}  # nodeid -> RemoteNode
# nodeid -> RemoteNode kept after it went down (oldest first; see _maybe_forget)
_idle: dict[str, "RemoteNode"] = {}
_cfg = _config.active  # this node's settings (configure fills the dict in place)
_node_watchers: list[Callable[..., Any]] = []  # mon_nodes callbacks
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d+)$")


class Directory(Protocol):
    """What ``set_directory`` installs (the global database): ``find_node(nodeid)`` starts
    looking up where ``nodeid`` listens (the answer comes as ``RemoteNode.found``; false: nobody
    to ask), ``node_up``/``node_down`` hear of nodes coming and going.

    Example::

        node.set_directory(globaldb)   # in runtime: the global database module
    """

    def find_node(self, nodeid: str) -> Any: ...
    def node_up(self, node: "RemoteNode") -> Any: ...
    def node_down(self, node: "RemoteNode") -> Any: ...


class _NoDirectory:
    """Stands in for the layer that knows where nodes live (the global database, ``globaldb``)
    until it installs itself with ``set_directory``: this module never imports it."""

    def find_node(self, nodeid: str) -> bool:
        return False

    def node_up(self, node: "RemoteNode") -> None:
        pass

    def node_down(self, node: "RemoteNode") -> None:
        pass


_directory: Directory = _NoDirectory()


def set_directory(directory: Union[Directory, ModuleType]) -> None:
    """Install the object node asks where nodes live and tells about nodes coming and going
    (``find_node``, ``node_up``, ``node_down``): ``runtime`` installs the global database.

    Example::

        node.set_directory(globaldb)   # in runtime
    """
    global _directory
    # a module matches the protocol only with these names in its __all__
    _directory = cast(Directory, directory)


def _hooks() -> Directory:
    return _directory


# --------------------------------------------------------------------------- remote nodes


class RemoteNode:
    """Another node: its link (when up), frames waiting for a link, and monitors on its ports.

    Example::

        n = get_node("other/1")            # one per node ID, made on first use
        n.send(("portname", "hello"))      # queued, and connecting, while n.is_up is False
    """

    id: str
    link: Optional[transport.Link]
    extra_links: list[transport.Link]
    liveness: transport.LinkGroup
    queue: list[Sequence[Any]]  # frames waiting for a link
    queue_bytes: int
    _queue_room: Optional[Event]
    monitors: dict[str, list[Action]]
    connecting: bool
    addrs: Optional[list[str]]
    _last_error: Optional[str]
    _timer: Any  # the loop's timer watcher while connecting (connect_interval)
    _attempts: dict[str, gevent.Greenlet]  # address -> the greenlet dialling it
    up_event: Event
    broken: set[str]
    _was_up: bool  # set (by _maybe_forget) once the node had a link

    def __init__(self, nodeid: str) -> None:
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
    def is_up(self) -> bool:
        return self.link is not None

    # -- sending -------------------------------------------------------------------------
    def send(self, frame: Sequence[Any]) -> None:
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

    def _queue_full(self) -> None:
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

    def _queue_gone(self) -> None:
        self.queue_bytes = 0
        if self._queue_room is not None:
            self._queue_room.set()

    # -- connecting ----------------------------------------------------------------------
    def connect(self) -> None:
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
        self._timer.start(self._connect_timeout, update=True)  # from now, not the cached loop time
        addrs = self.addrs or explicit_address(self.id)
        if addrs:
            self.connect_to(addrs)
        elif not _hooks().find_node(self.id):
            self.transport_error("no known address")

    def found(self, addrs: Optional[Sequence[str]]) -> None:
        """``g_found`` (or the database) told us where this node listens.

        Example::

            get_node(nodeid).found(["10.0.0.5:4040"])   # the g_found answer, in globaldb.sync
        """
        if addrs:
            self.addrs = list(addrs)
            if self.connecting and not self._attempts:
                self.connect_to(self.addrs)
        elif self.connecting and not self._attempts:
            self.transport_error("no known address")
        _maybe_forget(self)  # an answer nobody waits for: kept only as an idle node

    def connect_to(self, addrs: Sequence[str]) -> None:
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
            delay = max(delay, connect.dials.backoff_left(addr))
            self._attempts[addr] = gevent.spawn_later(delay, self._attempt, addr)

    def _attempt(self, addr: str) -> None:
        why = None
        try:
            if self.link is not None:
                return
            with connect.dials.turn(addr, self) as ok:
                if not ok or self.link is not None:
                    return
                if not self.connecting and connect.dials.waiting:
                    return  # the node gave up meanwhile and others wait for a turn
                host, port = connect.split_hostport(addr)
                logger.debug("connecting to %s at %s", self.id, addr)
                try:
                    connect.dial(host, port, expect=self.id)
                except BaseException:
                    connect.dials.failed(addr)
                    raise
                connect.dials.succeeded(addr)
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
                connect.dials.shed(self)

    def _connect_timeout(self) -> None:
        if self.link is None and self.connecting:
            last = self._last_error
            self.transport_error(
                "connect timeout" if last is None else "connect timeout (last attempt: %s)" % last,
                connecting=True,
            )
            # its dials still running are speculative now: they make way if others wait
            connect.dials.shed(self)

    # -- link up/down --------------------------------------------------------------------
    def attach(self, link: transport.Link) -> None:
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
        lost: set[str] = set()
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

    def detach(self, link: transport.Link, why: str) -> None:
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

    def transport_error(self, why: str, connecting: bool = False) -> None:
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

            def fire_then_heal() -> None:
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
    def monitor(self, portname: str, action: Action) -> None:
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
            self.monitors[portname] = _k.monitors_add(lst, action)

    def unmonitor(self, portname: str, action: Action) -> None:
        """Forget ``action``; after the last one on ``portname``, send ``mon0`` if the link is up.

        Example::

            n = _nodes.get("other/1")   # _Net.unmonitor, when a mon() guard is cancelled
            if n is not None:
                n.unmonitor("worker", action)
        """
        lst = self.monitors.get(portname)
        if not lst or not _k.monitors_discard(lst, action):
            return
        if not lst:
            del self.monitors[portname]
            if self.link is not None and portname:
                self.link.send(("", "mon0", portname))

    def _message_lost(self, portname: str, reason: Sequence[Any]) -> None:
        """A message to ``portname`` could not be sent: fire its monitors, and drop later
        sends to it until they ran (so nothing sent after the lost one arrives first)."""
        actions = self.monitors.pop(portname, None)
        if not actions:
            return
        self.broken.add(portname)

        def fire_then_heal() -> None:
            self.broken.discard(portname)  # as in transport_error: heal, then fire (no switch)
            _k.fire_monitors(actions, tuple(reason))

        _k.spawn_raw(fire_then_heal)

    def port_died(self, portname: str, reason: Sequence[Any]) -> None:
        """Port ``portname`` there died with ``reason`` (its ``kil0``): fire its monitors once.

        Example::

            n = _nodes.get(from_node)   # _Net.port_died, for a kil0 from that node
            if n is not None:
                n.port_died("worker", ("die", "bad job"))
        """
        actions = self.monitors.pop(portname, None)
        if actions:
            _k.spawn_raw(_k.fire_monitors, actions, tuple(reason))

    def __repr__(self) -> str:
        return "<RemoteNode %s %s>" % (self.id, "up" if self.link else "down")


def get_node(nodeid: str) -> RemoteNode:
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


def _max_nodes() -> int:
    return int(_cfg.get("max_nodes") or 10000)


def _is_idle(n: RemoteNode) -> bool:
    return (
        n.link is None
        and not n.extra_links
        and not n.connecting
        and not n.queue
        and not n.monitors
        and not n._attempts
        and not n.broken
    )


def _maybe_forget(n: RemoteNode, had_link: bool = False) -> None:
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


def _make_room() -> None:
    """Drop the oldest idle nodes until ``_nodes`` is below ``max_nodes`` (or none is idle)."""
    cap = _max_nodes()
    while len(_nodes) >= cap and _idle:
        nodeid = next(iter(_idle))
        n = _idle.pop(nodeid)
        if _nodes.get(nodeid) is n and _is_idle(n):
            del _nodes[nodeid]


def _node_for_relay(nodeid: str) -> Optional[RemoteNode]:
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


def _relay_chain(frame: Sequence[Any]) -> bool:
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


def explicit_address(nodeid: str) -> Optional[list[str]]:
    """A node ID of the form ``host:port`` is reachable at that address (documented rule)."""
    if _HOSTPORT.match(nodeid):
        return [nodeid]
    return None


class _Net:
    """What the kernel calls for everything that leaves this node."""

    def send(self, nodeid: str, frame: Sequence[Any]) -> None:
        if trace.tracers:
            trace.trace("SND", nodeid, frame)
        if nodeid == _k.this_node:
            _k.deliver_remote(nodeid, frame)
            return
        if frame and frame[0] == "" and len(frame) > _RELAY_SCAN_MIN and _relay_chain(frame):
            return
        n = _nodes.get(nodeid) or _node_for_relay(nodeid)
        if n is not None:
            n.send(frame)

    def monitor(self, nodeid: str, portname: str, action: Action) -> None:
        n = _nodes.get(nodeid) or _node_for_relay(nodeid)
        if n is None:
            _k.spawn_raw(action, "transport_error", nodeid, "too many nodes (max_nodes)")
            return
        n.monitor(portname, action)

    def unmonitor(self, nodeid: str, portname: str, action: Action) -> None:
        n = _nodes.get(nodeid)
        if n is not None:
            n.unmonitor(portname, action)

    def kill(self, nodeid: str, portname: str, reason: Sequence[Any]) -> None:
        self.send(nodeid, ("", "kil1", portname) + tuple(reason))

    def port_died(self, nodeid: str, portname: str, reason: Reason) -> None:
        n = _nodes.get(nodeid)
        if n is not None:
            n.port_died(portname, reason)


_k.set_network(_Net())


# --------------------------------------------------------------------------- links


def _on_frame(link: transport.Link, frame: Msg) -> None:
    if trace.tracers:
        trace.trace("RCV", link.nodeid, frame)
    _k.deliver_remote(link.nodeid, frame)


#: the tag of the answer to our keepalive probes (a node-port request of ours): a name no AEMP
#: request has
PONG = "aemp_green/pong"


def _req_pong(from_node: str, *_: Any) -> None:
    """The answer to a keepalive probe of ours: the round trip of the link we sent it on."""
    n = _nodes.get(from_node)
    if n is not None and n.link is not None:
        n.link.probe_answered()


_k.register_node_request(PONG, _req_pong)


def remote_monitors() -> list[tuple[str, list[Any]]]:
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


def _on_close(link: transport.Link, why: str) -> None:
    logger.debug("%s disconnected: %s", link.nodeid, why)
    n = _nodes.get(link.nodeid)
    if n is not None:
        n.detach(link, why)
    link.closed_event.set()


def _refuse_duplicates(ev: GreetingReceived) -> None:
    if ev.protocol != "aemp":  # a sub-protocol connection (DataConn) from a connected node is fine
        return
    n = _nodes.get(ev.nodeid)
    if n is not None and n.link is not None:
        raise transport.HandshakeRefused("%s already connected, not connecting again." % ev.nodeid)


def _start_link(
    sock: transport.Sock, est: Established, trailing: bytes, outgoing: bool
) -> transport.Link:
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


def dial_subprotocol(
    nodeid: str,
    protocol: str,
    extra: Optional[dict[str, Any]] = None,
    timeout: Optional[float] = None,
) -> tuple[transport.Sock, Established, bytes]:
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
            try:
                return connect.subprotocol_handshake(nodeid, addr, protocol, extra, timeout)
            except (OSError, RemoteProtocolError, transport.HandshakeRefused) as exc:
                last = exc
        raise last or OSError("no known address for %s" % nodeid)


def all_links() -> list[transport.Link]:
    """Every link of every node (``shutdown`` flushes and closes them).

    Example::

        for link in all_links(): link.close("shutdown")
    """
    return [
        link
        for n in list(_nodes.values())
        for link in [n.link] + list(n.extra_links)
        if link is not None
    ]


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
    _hub.check_thread()  # before anything changes (docs/running.md)
    _node_watchers.append(cb)

    def undo() -> None:
        try:
            _node_watchers.remove(cb)
        except ValueError:
            pass

    return Guard.for_caller(undo)


def _notify_watchers(nodeid: str, is_up: bool, reason: Sequence[Any]) -> None:
    for cb in list(_node_watchers):
        _k.spawn_raw(_safe_call, cb, nodeid, is_up, *reason)


def _safe_call(cb: Callable[..., Any], *args: Any) -> None:
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


connect.set_link_hooks(_start_link, _refuse_duplicates)
