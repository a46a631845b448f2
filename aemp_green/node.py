"""node: remote nodes, connections made on demand, remote monitors, seeds, ``configure``.

One ``RemoteNode`` per other node this process has heard of. Sending to a node that is not
connected queues the frame and connects: to the addresses the node is known by (seeds, the
global database's ``'l`` family, ``g_found`` answers) or, for a node ID of the form
``host:port``, to that address. If no link is up within ``connect_interval`` every monitor on
that node fires with ``("transport_error", node, "connect timeout")`` and the queue is dropped.
A link that breaks fires them with the reason it broke; frames still queued on it are dropped,
never delivered after the monitors fired (the no-holes guarantee); a later send reconnects.

The kernel reaches this module only through the object registered with
``kernel._set_network``; incoming frames go back up through ``kernel.deliver_remote``.
"""

import logging
import random
import re
import socket as _stdsocket

import gevent
from gevent.event import Event

from . import config as _config
from . import framing
from . import kernel as _k
from . import transport
from ._guard import Guard
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
]

logger = logging.getLogger(__name__)

_nodes = {}  # nodeid -> RemoteNode
_cfg = dict(_config.DEFAULTS)
_listeners = []
_binds = []  # our listener addresses as "host:port" strings (what others learn)
_configured = False
_node_watchers = []  # mon_nodes callbacks
_seed_greenlets = []
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d+)$")


def _hooks():
    from . import global_

    return global_


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
        self.queue = []
        self.queue_bytes = 0  # encoded size of the queue (bounded like a link's buffer)
        self._queue_room = None  # Event: the queue went out or was dropped (waiting senders)
        self.monitors = {}  # portname -> [actions]
        self.connecting = False
        self.addrs = None  # list of "host:port" when known
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
            self.transport_error("send queue over link_hard_limit (%d bytes queued, limit %d) "
                                 "while connecting" % (self.queue_bytes, hard))
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
        addrs = self.addrs or _explicit_address(self.id)
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
            self._attempts[addr] = gevent.spawn_later(delay, self._attempt, addr)

    def _attempt(self, addr):
        try:
            if self.link is not None:
                return
            host, port = _split_hostport(addr)
            logger.debug("connecting to %s at %s", self.id, addr)
            _dial(host, port, expect=self.id)
        except Exception as exc:
            logger.debug("connect to %s at %s failed: %s", self.id, addr, exc)
        finally:
            self._attempts.pop(addr, None)

    def _connect_timeout(self):
        if self.link is None and self.connecting:
            self.transport_error("connect timeout")

    # -- link up/down --------------------------------------------------------------------
    def attach(self, link):
        """Make ``link`` (handshake done) the one we send on: flush the queue, report the node
        up. A second link (simultaneous connect) is only read from.

        Example::

            get_node(est.peer_nodeid).attach(link)   # _start_link, after the handshake
        """
        if self.link is not None:
            self.extra_links.append(link)
            return
        self.link = link
        self.connecting = False
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        queue, self.queue = self.queue, []
        self._queue_gone()
        lost = set()
        for frame in queue:
            if lost and frame[0] in lost:
                # no holes: after a lost message, nothing more to that port from this queue
                logger.error("message to %s#%s dropped after an earlier one was lost",
                             self.id, frame[0])
                continue
            try:
                link.send_nowait(frame)  # counted against the limits while queued
            except TypeError as exc:
                # e.g. bytes for a json link: the message is lost, so its port's monitors fire
                logger.error("message to %s#%s dropped: %s", self.id, frame[0], exc)
                if frame and frame[0]:
                    lost.add(frame[0])
                    self._message_lost(frame[0], ("transport_error", self.id,
                                                  "message could not be encoded: %s" % exc))
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

    def transport_error(self, why):
        """Fire every monitor on this node once with ``("transport_error", id, why)``.

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
                _k._fire_monitors(actions, reason)

            _k._spawn_raw(fire_then_heal)
        logger.info("%s is down: %s", self.id, why)
        _k._forget_node_monitors(self.id)
        if was_up or why not in ("connect timeout", "no known address"):
            _notify_watchers(self.id, False, reason)
        _hooks().node_down(self)

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
            _k._fire_monitors(actions, tuple(reason))

        _k._spawn_raw(fire_then_heal)

    def port_died(self, portname, reason):
        """Port ``portname`` there died with ``reason`` (its ``kil0``): fire its monitors once.

        Example::

            n = _nodes.get(from_node)   # _Net.port_died, for a kil0 from that node
            if n is not None:
                n.port_died("worker", ("die", "bad job"))
        """
        actions = self.monitors.pop(portname, None)
        if actions:
            _k._spawn_raw(_k._fire_monitors, actions, tuple(reason))

    def __repr__(self):
        return "<RemoteNode %s %s>" % (self.id, "up" if self.link else "down")


def get_node(nodeid):
    """The ``RemoteNode`` for ``nodeid``, created on first use."""
    n = _nodes.get(nodeid)
    if n is None:
        n = _nodes[nodeid] = RemoteNode(nodeid)
    return n


def _explicit_address(nodeid):
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
        if nodeid == _k._NODE:
            _k.deliver_remote(nodeid, frame)
            return
        get_node(nodeid).send(frame)

    def monitor(self, nodeid, portname, action):
        get_node(nodeid).monitor(portname, action)

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


_k._set_network(_Net())


# --------------------------------------------------------------------------- links

def _on_frame(link, frame):
    if _tracers:
        _trace("RCV", link.nodeid, frame)
    _k.deliver_remote(link.nodeid, frame)


# --------------------------------------------------------------------------- tracing

_tracers = []  # callables (direction, nodeid, frame); empty = no cost but one truth test


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


def _trace(direction, nodeid, frame):
    for fn in list(_tracers):
        try:
            fn(direction, nodeid, frame)
        except Exception:
            _tracers.remove(fn)
            logger.exception("tracer %r failed and was removed", fn)


def _print_tracer(direction, nodeid, frame):
    import json
    import sys

    arrow = "<-" if direction == "SND" else "->"
    shown = [None if i == 0 and x == "" else x for i, x in enumerate(frame)]
    sys.stderr.write("%s %s %s %s\n" % (direction, nodeid, arrow,
                                         json.dumps(shown, ensure_ascii=False, default=repr)))


_trace_subscribers = {}  # port -> guard


def _req_trace(from_node, port, on=1, *_):
    """Node request ``aemp_green_trace``: stream our frames to ``port`` (``on`` false stops)."""
    if not isinstance(port, str):
        return
    old = _trace_subscribers.pop(port, None)
    if old is not None:
        old.cancel()
    if not on:
        return

    def forward(direction, nodeid, frame):
        if frame and frame[0] == port.partition("#")[2] and nodeid == node_of_port(port):
            return  # never trace the trace stream itself
        _k.snd(port, "trace", direction, nodeid, list(frame))

    g = Guard(lambda: _tracers.remove(forward) if forward in _tracers else None)
    _tracers.append(forward)
    _trace_subscribers[port] = g
    _k._add_monitor(port, lambda *r: _req_trace(from_node, port, 0))


def node_of_port(port):
    return port.partition("#")[0]


_k.register_node_request("aemp_green_trace", _req_trace)


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
    link = transport.Link(sock, est.peer_nodeid, est.send_framing, est.recv_framing, trailing,
                          _on_frame, _on_close, max_frame=int(_cfg.get("max_frame") or 64 << 20),
                          peer_kv=est.kv, outgoing=outgoing,
                          keepalive=float(_cfg["monitor_timeout"]) if _cfg.get("keepalive", True)
                          else None,
                          # the peer answers ["", "", <time>] to our node port: a no-op
                          probe=("", "time", _k._NODE + "#", ""),
                          high_water=int(_cfg["link_high_water"]),
                          low_water=_cfg.get("link_low_water"),
                          hard_limit=int(_cfg["link_hard_limit"]), may_wait=_k.may_block)
    link.closed_event = Event()
    get_node(est.peer_nodeid).attach(link)
    return link


def _dial(host, port, expect=None):
    """Connect to ``host:port``, handshake, attach the link and read it until it closes.

    Returns the link after it closed; raises on connect/handshake failure.
    """
    sock = transport.connect(host, port, timeout=float(_cfg["connect_interval"]))
    transport._apply_sockopts(sock, _cfg.get("nodelay", True), _cfg.get("autocork", False))
    peeraddr = transport.bind_string(host, port)
    hs = transport.make_handshake(_cfg, _k._NODE, peeraddr)

    def on_greeting(ev):
        if expect is not None and ev.nodeid != expect:
            raise transport.HandshakeRefused("dialled %s but %s answered" % (expect, ev.nodeid))
        _refuse_duplicates(ev)

    try:
        sock, est, trailing = transport.run_handshake(
            sock, hs, timeout=float(_cfg["monitor_timeout"]), on_greeting=on_greeting,
            cert=_cfg.get("cert"))
    except BaseException:
        sock.close()
        raise
    link = _start_link(sock, est, trailing, outgoing=True)
    gevent.spawn(link.run)
    return link


_pending_handshakes = {}  # socket -> peeraddr, oldest first
MAX_PENDING_HANDSHAKES = 256


def _accept(sock, addr):
    transport._apply_sockopts(sock, _cfg.get("nodelay", True), _cfg.get("autocork", False))
    peeraddr = transport.bind_string(addr[0], addr[1])
    cap = int(_cfg.get("max_pending_handshakes") or MAX_PENDING_HANDSHAKES)
    while len(_pending_handshakes) >= cap:
        # slowloris defence: the oldest unfinished handshake makes room; a real peer
        # finishes in a round trip or two, so only stalled connections get evicted
        old_sock, old_addr = next(iter(_pending_handshakes.items()))
        del _pending_handshakes[old_sock]
        logger.info("%s disconnected - too many pending handshakes, evicting the oldest", old_addr)
        try:
            old_sock.shutdown(2)
        except OSError:
            pass
    raw = sock
    _pending_handshakes[raw] = peeraddr
    hs = transport.make_handshake(_cfg, _k._NODE, peeraddr)
    try:
        sock, est, trailing = transport.run_handshake(
            sock, hs, timeout=float(_cfg.get("handshake_timeout") or _cfg["monitor_timeout"]),
            on_greeting=_refuse_duplicates, cert=_cfg.get("cert"))
    except (RemoteProtocolError, transport.HandshakeRefused) as exc:
        logger.info("%s disconnected - %s", peeraddr, exc)
        return
    except (OSError, gevent.Timeout) as exc:
        logger.info("%s disconnected - %s", peeraddr, exc or exc.__class__.__name__)
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


_subprotocols = {}


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
    addrs = n.addrs or _explicit_address(nodeid)
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
                transport._apply_sockopts(sock, _cfg.get("nodelay", True),
                                          _cfg.get("autocork", False))
                hs = transport.make_handshake(_cfg, _k._NODE, transport.bind_string(host, port),
                                              protocol=protocol, extra=extra)
                sock, est, rest = transport.run_handshake(sock, hs, timeout=timeout,
                                                          cert=_cfg.get("cert"))
                if est.peer_nodeid != nodeid:
                    raise transport.HandshakeRefused("%s answered instead of %s" % (
                        est.peer_nodeid, nodeid))
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
    """Keep a connection to the seed at ``addr`` with back-off; announce ourselves as slave."""
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


def configure(profile=None, **kv):
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
    global _cfg, _configured
    if _configured:
        raise RuntimeError("configure() can only be called once per process")
    import os

    if os.environ.get("PERL_ANYEVENT_MP_TRACE") and _print_tracer not in _tracers:
        _tracers.append(_print_tracer)
    unknown = sorted(k for k in kv
                     if k not in _config.SETTINGS_BY_NAME and k not in _CONFIGURE_ONLY)
    if unknown:  # kept (AEMP keeps unknown keys too), but most likely a typo
        logger.warning("configure(): unknown setting(s) %s ignored (known: %s)",
                       ", ".join(unknown), ", ".join(s.name for s in _config.SETTINGS))
    norc = kv.get("norc")
    rc = {} if norc else _config.load_rc()
    cfg = _config.validate(_config.find_profile(rc, profile, **kv))
    nodeid = _config.expand_nodeid(_config.default_nodeid(cfg))
    if cfg.get("cert"):  # now, not at the first TLS handshake
        try:
            transport._tls_context(cfg["cert"], True)
        except (OSError, ValueError) as exc:
            raise ConfigError("cert: not a usable PEM with key, certificate and CA certificates "
                              "(%s)" % (exc,)) from None
    before = (_k._NODE, _k._secure, _cfg)
    _k._set_node_id(nodeid)
    _k._set_secure(cfg.get("secure"))
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
        _k._set_node_id(before[0])
        _k._set_secure(before[1])
        _cfg, _configured = before[2], False
        where = "%s:%s" % (bind[0], "*" if bind[1] is None else bind[1]) if bind else "?"
        raise ConfigError("binds: cannot listen on %s: %s" % (where, exc)) from None
    logger.info("node %s listens on %s", nodeid, _binds)
    _hooks().configured(cfg)

    for seed in cfg.get("seeds") or []:
        _seed_greenlets.append(gevent.spawn(_seed_loop, seed))

    # the side services every node answers (they register node requests and sub-protocols)
    from . import dataconn, logcatcher  # noqa: F401

    for service in cfg.get("services") or []:
        _start_service(service)
    return cfg


def config():
    """A copy of this node's effective configuration (after ``configure``; defaults before).

    Example::

        print(config()["monitor_timeout"])
    """
    import copy

    return copy.deepcopy(_cfg)


def _start_service(service):
    """``"pkg.mod."`` imports a module, ``"pkg.func"`` calls it, ``["pkg.func", args...]`` too."""
    import importlib

    try:
        if isinstance(service, list):
            _k._resolve_function(service[0])(*service[1:])
        elif service.endswith("::") or service.endswith("."):
            importlib.import_module(service.rstrip(":.").replace("::", "."))
        else:
            _k._resolve_function(service)()
    except Exception:
        logger.exception("service %r failed to start", service)


def listener_addresses():
    """This node's listener addresses, ``["host:port", ...]`` (what other nodes learn).

    Example::

        print(listener_addresses())    # ['127.0.0.1:4040']
    """
    return list(_binds)


def shutdown(flush=1.0):
    """Stop listening, close every link (peers see the connection end) and stop seed loops.

    Frames already queued are sent first, waiting at most ``flush`` seconds in all (``0``:
    drop them).

    Example::

        shutdown()
    """
    _k._check_thread()  # before anything changes (docs/running.md)
    for g in _seed_greenlets:
        g.kill(block=False)
    for lst in _listeners:
        lst.stop()
    links = [link for n in list(_nodes.values()) for link in [n.link] + list(n.extra_links)
             if link is not None]
    if flush:
        with gevent.Timeout(flush, False):
            for link in links:
                link.flush(flush)
    for link in links:
        link.close("shutdown")


# --------------------------------------------------------------------------- node watching

def node_is_up(nodeid):
    """True if connected (or ourselves), False if known but not connected, None if unknown.

    Example::

        if node_is_up("seed"): ...
    """
    if nodeid == _k._NODE:
        return True
    n = _nodes.get(nodeid)
    if n is None:
        return None
    return n.link is not None


def up_nodes():
    """IDs of the nodes we have a link to.

    Example::

        print(up_nodes())
    """
    return [n.id for n in _nodes.values() if n.link is not None]


def known_nodes():
    """IDs of every node this node has heard of (connected or not).

    Example::

        print(known_nodes())
    """
    return list(_nodes)


def mon_nodes(cb):
    """Call ``cb(node, is_up, *reason)`` whenever a node connects or disconnects; returns a guard.

    Example::

        mon_nodes(lambda node, up, *why: print(node, "up" if up else "down", why))
    """
    _k._check_thread()  # before anything changes (docs/running.md)
    _node_watchers.append(cb)

    def undo():
        try:
            _node_watchers.remove(cb)
        except ValueError:
            pass

    return Guard.for_caller(undo)


def _notify_watchers(nodeid, is_up, reason):
    for cb in list(_node_watchers):
        _k._spawn_raw(_safe_call, cb, nodeid, is_up, *reason)


def _safe_call(cb, *args):
    try:
        cb(*args)
    except Exception:
        logger.exception("mon_nodes callback %r failed", cb)


def snd_to_func(nodeid, func, *args):
    """Ask ``nodeid`` to call its function ``func(*args)`` (refused by ``secure`` nodes).

    Example::

        snd_to_func("worker/abc", "myapp.jobs.start", 42)
    """
    _k.snd(nodeid, func, *args)


def snd_on(nodeid, port, *msg):
    """Ask ``nodeid`` to send ``msg`` to ``port`` (a relay through that node).

    Example::

        snd_on("seed", target_port, "hello")
    """
    _k.snd(nodeid, "snd", port, *msg)


def eval_on(nodeid, expr, *reply):
    """Ask ``nodeid`` to evaluate ``expr``; the reply port gets ``(error_text, result)``.

    Python nodes evaluate a Python expression, Perl nodes Perl code; ``secure`` nodes refuse.

    Example::

        cal(NODE(), cb=print)  # see tests; typically: eval_on(node, "1+1", SELF(), "result")
    """
    _k.snd(nodeid, "eval", expr, *reply)


def _hostname():
    return _stdsocket.gethostname()
