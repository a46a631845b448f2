"""The kernel: this node's identity, the local port table, routing, kill/monitor, node-port requests.

Everything that crosses a port boundary goes through here. The kernel never imports the port
classes (``ports``) nor the network (``node``): ports are duck-typed objects with ``name``,
``monitors``, ``_deliver(msg)``, ``_run(msg, cur)``, ``_terminate(reason)`` and ``_direct``
(true when ``_deliver`` is plain ``dispatch``, so that the dispatcher may call ``_run`` itself); the network registers itself with
``set_network`` and gets messages for other nodes, and hands incoming node-port requests back
through ``node_request``.

Delivery to callback ports is a trampoline (``dispatch``): the first send in a greenlet runs
the handler directly; sends made *by* handlers are queued and run by the outermost loop in FIFO
order. Handlers therefore never nest, the stack never grows with message chains (a million
messages bounced between two ports is a loop, not a recursion), and messages from one sender
reach one port in the order they were sent. Greenlet ports get a mailbox append and, when their
greenlet waits for exactly this message, a wake-up that is handed over directly from the next
blocking receiver (``block``) without a hub round trip, at most ``_HANDOFF_LIMIT`` times in a
row before the hub gets its turn.
"""

import logging
import secrets
import string
import sys
import time
from bisect import bisect_left
from collections import deque
from typing import Any, Callable, Literal, Optional, Protocol, Sequence, TypeAlias, Union

from gevent import get_hub
from greenlet import getcurrent, greenlet

from . import _hub
from ._guard import Guard
from ._ratelog import RateLog, esc, exc_text
from ._report import report_crash
from .wire.framing import encode_cbor

__all__ = [
    "NODE",
    "node_id",
    "node_of",
    "port_is_local",
    "snd",
    "kil",
    "mon",
    "mon_guard",
    "after",
    "node_request",
    "deliver_remote",
    "deliver_frames",
    "register_node_request",
    "request_origin",
    "may_block",
]

logger = logging.getLogger(__name__)
_rl = RateLog(logger)  # bad input from peers: one line per peer and reason (see _ratelog)

_ALNUM = string.digits + string.ascii_letters

#: a local port object (``ports``' callback and greenlet ports, the node port): duck-typed, with
#: ``name``, ``id``, ``monitors`` and ``_deliver``/``_terminate``/``_run`` (module docstring)
PortObj: TypeAlias = Any
#: a kill reason: empty for a normal exit, else ``(kind, details...)``
Reason: TypeAlias = tuple[Any, ...]
#: what a monitor calls with the reason (``Callable[..., Any]``: user code)
Action: TypeAlias = Callable[..., Any]


def _runiq(n: int = 10) -> str:
    """AEMP's random unique string: ``n`` alphanumerics, the last one upper-cased."""
    s = "".join(secrets.choice(_ALNUM) for _ in range(n))
    return s[:-1] + s[-1].upper()


# --------------------------------------------------------------------------- identity

this_node = "anon/" + _runiq()
#: prefix of local port names: random per process, so names never repeat across restarts of a
#: node with a fixed ID (a stale port ID from the previous incarnation never reaches a new port).
_UNIQ = _runiq(6)
_RUNIQ = _runiq(10)  # prefix of names this node invents for ports spawned on other nodes
_next_id = 0
#: when this node started (epoch seconds; the kernel is loaded with the package)
started = time.time()


def NODE() -> str:
    """This node's ID (``node_id`` is the same function).

    Before ``configure()`` the node has an anonymous ID ``anon/<random>``.

    Example::

        >>> NODE().startswith("anon/")
        True
    """
    return this_node


node_id = NODE


def set_node_id(nodeid: str) -> None:
    """Change this node's ID (``configure``); every local port's ID changes with it, as in AEMP."""
    global this_node
    _hub.check_thread()  # configure(): before it changes anything
    if "#" in nodeid:
        raise ValueError("node ID must not contain '#': %r" % (nodeid,))
    this_node = nodeid
    ports = [p for p in port_table.values() if p is not _node_port]
    port_table.clear()
    for p in ports:
        p.id = nodeid + "#" + p.name
        port_table[p.id] = p
    port_table[nodeid] = port_table[nodeid + "#"] = _node_port


def new_port_id() -> str:
    """A fresh local port ID (``<node>#<name>``)."""
    global _next_id
    if _bound is not None and _os_ident() != _bound_ident:  # port, spawn, call, receive
        raise _hub.foreign_thread_error()
    _next_id += 1
    return this_node + "#" + _UNIQ + base62(_next_id)


def new_spawn_name() -> str:
    global _next_id
    _hub.check_thread()
    _next_id += 1
    return _RUNIQ + base62(_next_id)


def base62(n: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = _ALNUM[r] + out
    return out


def node_of(port: str) -> str:
    """The node ID part of a port ID (everything before the first ``#``).

    Example::

        >>> node_of("seed#abc")
        'seed'
        >>> node_of("seed")
        'seed'
    """
    return port.partition("#")[0]


def port_is_local(port: str) -> bool:
    """True when ``port`` lives on this node.

    Example::

        >>> port_is_local(NODE() + "#x")
        True
    """
    return port.partition("#")[0] == this_node


def port_id(name: str) -> str:
    """The full port ID of a local port name."""
    return this_node + "#" + name


# --------------------------------------------------------------------------- port table

port_table: dict[
    str, Any
] = {}  # full port ID -> port object (the node port under "<node>" and "<node>#")


def register_port(p: PortObj) -> None:
    port_table[p.id] = p


def lookup_port(port: str) -> Optional[PortObj]:
    """The local port object for a port ID, or None (also for remote IDs and the node port)."""
    if _bound is not None and _os_ident() != _bound_ident:  # rcv, peval, mon
        raise _hub.foreign_thread_error()
    p = port_table.get(port)
    return None if p is _node_port else p


def local_port_by_name(name: str) -> Optional[PortObj]:
    """The local port called ``name`` (as remote frames and node requests name it), or None."""
    if not name:
        return None
    return port_table.get(this_node + "#" + name)


# --------------------------------------------------------------------------- SELF context


def get_self() -> Optional[PortObj]:
    return getattr(getcurrent(), "aemp_self", None)


# ---- the hub binding, mirrored from _hub for the hot paths --------------------------------
# (module globals are the cheapest reads: snd and dispatch test them for every message)
_bound: Any = None  # _hub.hub: the hub the node is bound to, None until bound
_bound_ident: Optional[int] = None  # _hub.ident: the OS thread ident of that hub's thread
_glet: Optional[greenlet] = None  # the last greenlet that passed the thread check
_os_ident = _hub.os_ident


def _on_bind(hub: Any) -> None:
    global _bound, _bound_ident, _glet
    _bound, _bound_ident, _glet = hub, _hub.ident, None


def _on_unbind() -> None:
    global _bound, _bound_ident, _glet
    _bound = _bound_ident = _glet = None


def _check_glet(cur: greenlet) -> None:
    """``dispatch``'s thread check for a greenlet other than the last one that passed."""
    global _glet
    _hub.check_greenlet(cur)
    _glet = cur


_hub.bind_hooks.append(_on_bind)
_hub.unbind_hooks.append(_on_unbind)
if _hub.hub is not None:  # (bound before this module was imported)
    _on_bind(_hub.hub)


# --------------------------------------------------------------------------- trampoline

dispatch_queue: deque[Any] = deque()
_draining: set[Any] = set()
_drain_scheduled = False


def dispatch(p: PortObj, msg: Sequence[Any]) -> None:
    """Run ``p._run(msg)`` without ever nesting handler calls (see module docstring)."""
    cur = getcurrent()
    if cur is not _glet and _bound is not None:  # the thread check, before any change
        _check_glet(cur)
    if _draining and cur in _draining:
        # a handler is running in this greenlet: the loop below (in its dispatch) takes it
        dispatch_queue.append((p, msg))
        return
    if dispatch_queue:
        dispatch_queue.append((p, msg))
        p = None  # something older waits (its drainer is blocked): keep FIFO, drain here
    _draining.add(cur)
    prev = getattr(cur, "aemp_self", None)
    try:
        if p is not None:
            p._run(msg, cur)
        while dispatch_queue:
            p, msg = dispatch_queue.popleft()
            p._run(msg, cur)
    finally:
        cur.aemp_self = prev
        _draining.discard(cur)
        if dispatch_queue and not _draining:
            schedule_drain()


def dispatching() -> bool:
    """True while the running greenlet is inside a callback handler (the dispatcher runs
    handlers in whatever greenlet sent the message, and queues what arrives meanwhile behind
    it), where blocking would deadlock: see ``ports.check_may_block``.

    Example::

        if dispatching():
            raise RuntimeError("do not block here")
    """
    return getcurrent() in _draining


def may_block() -> bool:
    """True when the running greenlet may wait (for a busy link or a full mailbox).

    False in the hub, inside a callback port's handler (handlers never block: they run in
    whatever greenlet sent the message), and in a greenlet marked ``aemp_noblock`` (the reader
    of a node link: if it waited, two nodes could wait for each other for ever). Those senders
    get the non-blocking behaviour instead (docs/running.md, "Backpressure").

    Example::

        if may_block():
            wait_for_room()
        else:
            drop_or_fail()
    """
    cur = getcurrent()
    if cur in _draining or getattr(cur, "aemp_noblock", False):
        return False
    return cur is not (_bound if _bound is not None else get_hub())


def schedule_drain() -> None:
    global _drain_scheduled
    if not _drain_scheduled:
        hub = _hub.bound_hub()  # checks the thread before the flag changes
        _drain_scheduled = True
        hub.loop.run_callback(_spawn_drainer)


def _spawn_drainer() -> None:
    global _drain_scheduled
    _drain_scheduled = False
    if dispatch_queue:
        spawn_raw(_drain_only)


class _NoOp:
    """Dispatched by a scheduled drainer: it queues behind the waiting messages, so that
    ``dispatch`` drains them all in order in this greenlet."""

    __slots__ = ()

    def _run(self, msg: Sequence[Any], cur: greenlet) -> None:
        pass


_noop = _NoOp()


def _drain_only() -> None:
    if dispatch_queue and getcurrent() not in _draining:
        dispatch(_noop, ())


# --------------------------------------------------------------------------- greenlet wake-ups

_ready: deque[Any] = (
    deque()
)  # waiters whose .resume is set; their greenlets are switched to in order
_ready_scheduled = False
_handoffs = 0
_HANDOFF_LIMIT = 64


def wake(w: Any, value: Any) -> None:
    """Resume the blocked waiter ``w`` (a greenlet port or call waiter) with ``value``."""
    global _ready_scheduled
    w.resume = value
    _ready.append(w)
    if not _ready_scheduled:
        _ready_scheduled = True
        hub = _bound
        if hub is None:
            hub = _hub.bound_hub()
        elif _os_ident() != _bound_ident:
            # snd() from another OS thread to a waiting greenlet port: the port has already
            # given its message to this wake-up, so finish it safely in the hub thread, then
            # refuse the call. (While a wake-up is scheduled, the append above is all there is
            # to do, and the hub thread's _run_ready/block takes it: nothing to refuse.)
            hub.loop.run_callback_threadsafe(_run_ready)
            raise _hub.foreign_thread_error(delivered=True)
        hub.loop.run_callback(_run_ready)


def _run_ready() -> None:
    global _ready_scheduled, _handoffs
    _ready_scheduled = False
    _handoffs = 0
    while _ready:
        w = _ready.popleft()
        r = w.resume
        if r is not None:
            w.resume = None
            g = w.greenlet
            if g is not None and not g.dead:
                g.switch(r)


def block() -> Any:
    """Block the current greenlet until a ``wake``; hand the CPU straight to a ready waiter."""
    global _handoffs
    while _ready and _handoffs < _HANDOFF_LIMIT:
        w = _ready.popleft()
        r = w.resume
        if r is not None:
            w.resume = None
            _handoffs += 1
            return w.greenlet.switch(r)
    # callers (call, receive) bound the hub and passed the thread check already
    return (_bound if _bound is not None else _hub.bound_hub()).switch()


def spawn_raw(fn: Callable[..., Any], *args: Any) -> greenlet:
    """Run ``fn(*args)`` in a fresh greenlet at the next loop turn."""
    hub = _hub.bound_hub()
    g = greenlet(fn, parent=hub)
    hub.loop.run_callback(g.switch, *args)
    return g


# --------------------------------------------------------------------------- network hook


class Network(Protocol):
    """What ``set_network`` installs (``node``'s network): sends frames to other nodes and
    manages monitors of their ports (see ``_NoNetwork`` for each method's arguments)."""

    def send(self, nodeid: str, frame: Sequence[Any]) -> Any: ...
    def monitor(self, nodeid: str, portname: str, action: Action) -> None: ...
    def unmonitor(self, nodeid: str, portname: str, action: Action) -> None: ...
    def kill(self, nodeid: str, portname: str, reason: Sequence[Any]) -> None: ...
    def port_died(self, nodeid: str, portname: str, reason: Reason) -> None: ...


class _NoNetwork:
    """Stands in until ``aemp_green.node`` registers the real network."""

    def send(self, nodeid: str, frame: Sequence[Any]) -> None:
        logger.debug("no network: dropping message for %s", nodeid)

    def monitor(self, nodeid: str, portname: str, action: Action) -> None:
        spawn_raw(action, "transport_error", nodeid, "no known address")

    def unmonitor(self, nodeid: str, portname: str, action: Action) -> None:
        pass

    def kill(self, nodeid: str, portname: str, reason: Sequence[Any]) -> None:
        self.send(nodeid, ("", "kil1", portname) + tuple(reason))

    def port_died(self, nodeid: str, portname: str, reason: Reason) -> None:
        pass


network: Network = _NoNetwork()


def set_network(net: Network) -> None:
    global network
    network = net


# --------------------------------------------------------------------------- snd / kil


def snd(port: str, *msg: Any) -> None:
    """Send ``msg`` (a tag and arguments) to ``port``; never fails for dead ports.

    Messages from one sender to one port arrive in the order they were sent. Local messages are
    not copied: the receiver gets the very objects passed here. It never blocks a callback
    handler; a greenlet waits here while the link to ``port``'s node is busy or ``port``'s
    mailbox is full with ``on_full="block"`` (docs/running.md, "Backpressure").

    Example::

        p = port(lambda *msg: print("got", msg))
        snd(p, "hello", 1, [2, 3])
    """
    p = port_table.get(port)
    if p is not None:
        if _check_local and not getattr(getcurrent(), "aemp_local_only", False):
            _check_wire(port, msg)
        p._deliver(msg)
        return
    route = _routes.get(port)
    if route is None:
        route = _route(port)
    node, name = route
    if node != this_node:
        if _bound is not None and _os_ident() != _bound_ident:
            raise _hub.foreign_thread_error()
        network.send(node, (name,) + msg)


_routes: dict[str, tuple[str, str]] = {}  # port ID -> (node, name): snd splits an ID once
_ROUTES_MAX = 4096


def _route(port: str) -> tuple[str, str]:
    """``(node, name)`` of a port ID, remembered for the next ``snd`` (bounded)."""
    node, _, name = port.partition("#")
    if len(_routes) >= _ROUTES_MAX:
        _routes.clear()
    route = _routes[port] = (node, name)
    return route


_check_local = False


class _Counters:
    """Introspection counters kept outside the ports: slots of one object (bumping a slot is
    cheaper than rebinding a module variable).

    ``dead_handled``: messages handled by local ports that died since (a port adds its
    ``handled`` when it dies), so that ``msgs_local`` (the live ports' sum plus this) never
    goes down.
    """

    __slots__ = ("dead_handled",)

    def __init__(self) -> None:
        self.dead_handled = 0


#: the kernel's introspection counters (see ``_Counters``)
counters = _Counters()

# ---- when local ports were created, at no cost per port (introspection: a port's age) -------
# Local port names end in a counter (``new_port_id``). Every ``CLOCK_TICK`` seconds a timer of
# the bound hub (one that never keeps its loop alive) notes the counter and the time, if ports
# were made since: a port whose counter lies between two notes was created between their times.
# The notes are thinned as they age (at most ``_STAMPS_MAX``), so old ports' ages get coarser.
CLOCK_TICK = 1.0
_STAMPS_MAX = 4096
_stamp_ids: list[int] = [0]  # counter values noted, ascending
_stamp_times: list[float] = [time.monotonic()]  # their monotonic times
_last_tick = _stamp_times[0]  # the latest tick (the counter was _stamp_ids[-1] then)
_clock_timer: Any = None


def _tick() -> None:
    global _last_tick
    _last_tick = now = time.monotonic()
    if _next_id != _stamp_ids[-1]:
        _stamp_ids.append(_next_id)
        _stamp_times.append(now)
        if len(_stamp_ids) > _STAMPS_MAX:  # every other one of the older half goes
            half = len(_stamp_ids) // 2
            _stamp_ids[1:half] = _stamp_ids[1:half:2]
            _stamp_times[1:half] = _stamp_times[1:half:2]


def port_created(name: str) -> Optional[float]:
    """When the local port called ``name`` was created (``time.monotonic()`` seconds, at most
    ``CLOCK_TICK`` too early for a recent port, coarser for old ones), or None for a name this
    node did not make (a port spawned by name from another node).

    Example::

        age = time.monotonic() - port_created(lookup_port(p).name)
    """
    if not name.startswith(_UNIQ):
        return None
    n = 0
    for ch in name[len(_UNIQ) :]:
        k = _ALNUM.find(ch)
        if k < 0:
            return None
        n = n * 62 + k
    i = bisect_left(_stamp_ids, n)  # the first note at or after its making
    if i == len(_stamp_ids):  # made after the latest tick
        return _last_tick
    return _stamp_times[max(i - 1, 0)]


def _start_clock(hub: Any) -> None:
    """Note the port counter every ``CLOCK_TICK`` s from a timer of ``hub`` that does not keep
    its loop alive."""
    global _clock_timer
    _tick()
    timer = hub.loop.timer(CLOCK_TICK, CLOCK_TICK)
    timer.ref = False
    timer.start(_tick)
    _clock_timer = timer


def _stop_clock() -> None:
    global _clock_timer
    if _clock_timer is not None:
        _clock_timer.close()
        _clock_timer = None


_hub.bind_hooks.append(_start_clock)
_hub.unbind_hooks.append(_stop_clock)


def check_local_messages(flag: object) -> None:
    """With ``flag`` true, ``snd`` to a local port checks that the message could also cross
    the wire (what the cbor framing carries: JSON values and bytes) and raises ``TypeError``
    when it could not, as it does for a remote port; so code that works locally does not break
    when the port moves to another node. Off by default (it costs an encoding per local
    message); the ``check_local_messages`` setting turns it on, and the test suite does.

    Example::

        check_local_messages(True)
        snd(p, "job", object())    # TypeError: ... cannot be sent ...
    """
    global _check_local
    _check_local = bool(flag)


class local_only:
    """Within this block the running greenlet may send values that cannot cross the wire to
    local ports (for messages that are local by design, such as a supervisor's callable child
    spec), even with ``check_local_messages`` on.

    Example::

        with local_only():
            call(local_sup, "start_child", spec_with_a_callable)
    """

    _prev: bool

    def __enter__(self) -> "local_only":
        cur = getcurrent()
        self._prev = getattr(cur, "aemp_local_only", False)
        cur.aemp_local_only = True
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        getcurrent().aemp_local_only = self._prev
        return False


def _check_wire(port: str, msg: Sequence[Any]) -> None:
    try:
        encode_cbor((port.partition("#")[2],) + tuple(msg))
    except TypeError as exc:
        raise TypeError(
            "snd(%s, ...): %s (check_local_messages: this message could not reach "
            "the port if it were on another node)" % (port, exc)
        ) from None


def deliver_remote(from_node: str, frame: Sequence[Any]) -> None:
    """Deliver a frame ``[portname, *msg]`` that arrived from ``from_node`` (called by ``node``).

    Frames whose port name is not a string are logged and dropped; unknown ports drop silently.

    Example::

        deliver_remote(link.nodeid, frame)              # node's on_frame, for every frame read
        deliver_remote("other/1", ["worker", "job", 42])  # our port worker gets ("job", 42)
    """
    if not frame:
        return
    name = frame[0]
    if name.__class__ is not str:
        _rl.warning(
            (from_node, "port name"),
            "frame from %s with non-string port name %s dropped",
            from_node,
            esc(name),
        )
        return
    if name:
        p = port_table.get(this_node + "#" + name)
        if p is not None:
            p._deliver(frame[1:])
    else:
        node_request(from_node, frame[1:])


def deliver_frames(
    from_node: str, frames: Sequence[Sequence[Any]], start: int = 0, watch: Sequence[Any] = ()
) -> int:
    """Deliver ``frames[start:]`` (the frames of one read from ``from_node``) as
    ``deliver_remote`` would, one after the other, in one pass of the dispatcher; return the
    index of the first frame not delivered, ``len(frames)`` when all were.

    It stops at a frame that is not a plain message to a port (a node-port request, a port
    name that is not a string: hand that one to ``deliver_remote``, then call again from the
    next index), before any frame once ``watch`` is true (the network passes its list of
    tracers), and at once when the running greenlet is inside the dispatcher already. What
    handlers send meanwhile is handled before the next frame, as the trampoline would.

    Example::

        i, n = 0, len(frames)
        while i < n:
            i = deliver_frames(link.nodeid, frames, i)
            if i < n:
                deliver_remote(link.nodeid, frames[i])
                i += 1
    """
    n = len(frames)
    i = start
    cur = getcurrent()
    if cur is not _glet and _bound is not None:  # the thread check, before any change
        _check_glet(cur)
    if (_draining and cur in _draining) or dispatch_queue or i >= n:
        return i
    _draining.add(cur)
    prev = getattr(cur, "aemp_self", None)
    get = port_table.get
    prefix = this_node + "#"
    last = None  # the port name looked up last, and its port p (frames of a read mostly
    p: Any = None  # go to one port: one lookup for the run of them)
    try:
        while i < n:
            if watch:
                break
            frame = frames[i]
            if not frame:
                i += 1
                continue
            name = frame[0]
            if name.__class__ is not str or not name:
                break  # a node request or a bad name: deliver_remote's
            if name != last or p.monitors is DEAD:
                p = get(prefix + name)
                if p is None:  # no such port: dropped, as deliver_remote does
                    last = None
                    i += 1
                    continue
                last = name
            i += 1
            if p._direct:
                p._run(frame[1:], cur)
            else:
                p._deliver(frame[1:])
            while dispatch_queue:
                q, msg = dispatch_queue.popleft()
                q._run(msg, cur)
    finally:
        cur.aemp_self = prev
        _draining.discard(cur)
        if dispatch_queue and not _draining:
            schedule_drain()
    return i


def kil(port: str, *reason: Any) -> None:
    """Kill ``port`` (local or remote). No reason is a normal exit, any reason a crash.

    Killing a port that does not exist is fine; killing a node port raises ``ValueError``.

    Example::

        kil(worker)                       # normal exit, monitors get no arguments
        kil(worker, "error", "bad job")   # crash, monitors get ("error", "bad job")
    """
    if _bound is not None and _os_ident() != _bound_ident:
        raise _hub.foreign_thread_error()
    p = port_table.get(port)
    if p is not None and p is not _node_port:
        kill_local(p, reason)
        return
    node, _, name = port.partition("#")
    if not name:
        raise ValueError("cannot kill a node port: %r" % (port,))
    if node != this_node:
        network.kill(node, name, reason)


DEAD = False  # value of port.monitors once the port is dead

#: a port's monitors are a list up to this many, then a dict (insertion-ordered, so they still
#: fire in the order they were made): removing one of k monitors is O(1) instead of O(k), so
#: k calls waiting on one server port, or k guards on one port cancelled, cost O(k), not O(k²)
MONITORS_LIST_MAX = 8


def monitors_add(mons: Any, action: Callable[..., Any]) -> Any:
    """Return the monitor collection ``mons`` (``None``, a list or a dict) with ``action`` added:
    a list while small, a dict once bigger than ``MONITORS_LIST_MAX``.

    Example::

        p.monitors = monitors_add(p.monitors, action)
    """
    if mons is None:
        return [action]
    if type(mons) is list:
        if len(mons) < MONITORS_LIST_MAX:
            mons.append(action)
            return mons
        mons = dict.fromkeys(mons)
    mons[action] = None
    return mons


def monitors_discard(mons: Any, action: Callable[..., Any]) -> bool:
    """Remove ``action`` from the monitor collection ``mons`` (O(1) once it is a dict); returns
    whether it was there.

    Example::

        if monitors_discard(p.monitors, action) and not p.monitors: ...
    """
    if type(mons) is dict:
        return mons.pop(action, _MISSING) is not _MISSING
    if mons:
        try:
            mons.remove(action)
            return True
        except ValueError:
            pass
    return False


def kill_local(p: PortObj, reason: Sequence[Any]) -> None:
    """Remove ``p`` from the table, schedule its monitors, stop its code. Idempotent."""
    mons = p.monitors
    if mons is DEAD:
        return
    p.monitors = DEAD
    if port_table.get(p.id) is p:
        del port_table[p.id]  # type: ignore[union-attr]  # (mypy narrows p by the 'is')
    reason = tuple(reason)
    if mons:
        spawn_raw(fire_monitors, mons, reason)
    p._terminate(reason)


def monitor_owner(action: Any) -> Optional[str]:
    """The ID of the port a monitor action (an entry of a port's ``monitors``) belongs to, or
    None (a monitor no port made, or one made for another node).

    Example::

        owners = [monitor_owner(a) for a in lookup_port(p).monitors or ()]
    """
    return action.owner if action.__class__ is _MonitorAction else None


def fire_monitors(mons: Sequence[Action], reason: Reason) -> None:
    for action in list(mons):
        try:
            action(*reason)
        except Exception as exc:
            report_crash(
                "monitor callback",
                None,
                exc,
                detail="(%s, fired with reason %s)" % (esc(action), esc(reason)),
            )


def die_reason(exc: BaseException) -> tuple[str, str]:
    """AEMP's ``("die", $@)`` for a Python exception."""
    text = str(exc)
    msg = "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__
    return ("die", msg.rstrip("\n"))


# --------------------------------------------------------------------------- monitors

_MISSING = object()


def _monitor_action(cb: Union[Action, str], msg: Sequence[Any]) -> Action:
    """Turn the three non-callable ``mon`` forms into a callable action."""
    if callable(cb):
        if msg:
            raise TypeError("mon(port, callable) takes no message arguments")
        return cb
    if not isinstance(cb, str):
        raise TypeError("mon: second argument must be a callable or a port ID, not %r" % (cb,))
    if msg:
        return lambda *reason: snd(cb, *msg, *reason)
    return lambda *reason: reason and kil(cb, *reason)  # type: ignore[func-returns-value]


class _MonitorAction:
    """A monitor registration: calls ``action(*reason)`` once, unless cancelled before.
    ``owner`` is the ID of the port that monitors (None: no port), for introspection."""

    __slots__ = ("action", "owner")

    action: Optional[Action]
    owner: Optional[str]

    def __init__(self, action: Action, owner: Optional[str]) -> None:
        self.action = action
        self.owner = owner

    def __call__(self, *reason: Any) -> None:
        action, self.action = self.action, None
        if action is not None:
            action(*reason)


def add_monitor(port: str, action: Action, owner: Optional[str] = None) -> Callable[[], None]:
    """Monitor ``port`` with the callable ``action``; returns the undo function.

    The undo works until the action has actually run, also after the port died and the
    firing was scheduled. ``owner`` is the ID of the port the monitor belongs to (default: the
    running port context), as introspection reports it.
    """
    node, _, name = port.partition("#")
    if owner is None:
        owner = getattr(getcurrent(), "aemp_self", None)
        if owner is not None:
            owner = owner.id
    m = _MonitorAction(action, owner)
    if node == this_node:
        if not name:  # our own node port never dies
            return lambda: setattr(m, "action", None)
        p = lookup_port(port)
        if p is None or p.monitors is DEAD:
            spawn_raw(m, "no_such_port", "cannot monitor nonexistent port", port)
            return lambda: setattr(m, "action", None)
        p.monitors = monitors_add(p.monitors, m)

        def undo() -> None:
            m.action = None
            monitors_discard(p.monitors, m)

        return undo
    _hub.check_thread()  # (the local branch checked in lookup_port)
    network.monitor(node, name, m)

    def undo_remote() -> None:
        m.action = None
        network.unmonitor(node, name, m)

    return undo_remote


def mon(port: str, cb: Any = _MISSING, *msg: Any) -> Guard:
    """Monitor ``port``: act once when it dies or messages to it may have been lost.

    Forms (as AEMP): ``mon(port, callable)`` calls ``callable(*reason)``; ``mon(port, rcvport)``
    kills ``rcvport`` with the same reason when the reason is non-empty; ``mon(port)`` is that
    with ``rcvport = SELF()``; ``mon(port, rcvport, *msg)`` sends ``msg + reason`` to
    ``rcvport``. Monitoring a nonexistent local port fires (in the next loop turn) with
    ``("no_such_port", "cannot monitor nonexistent port", port)``; losing the connection to the
    port's node fires with ``("transport_error", node, why)``. Monitors fire once, always in a
    fresh greenlet, never inside the dying port's own code.

    Returns a guard: when the caller keeps it, dropping it or calling ``cancel()`` stops the
    monitor; a bare statement ``mon(port, cb)`` monitors until the port dies (see ``_guard``).

    Example::

        mon(worker, lambda *reason: print("worker ended", reason))
        g = mon(worker, SELF(), "worker_down", worker)   # sends ["worker_down", worker, *reason]
        g.cancel()
    """
    if cb is _MISSING:
        cb = get_self()
        if cb is None:
            raise RuntimeError("mon(port) with one argument needs a port context (SELF)")
        cb = cb.id
    action = _monitor_action(cb, msg)
    return Guard.for_caller(add_monitor(port, action, cb if cb.__class__ is str else None))


def mon_guard(port: str, *objs: Any) -> Guard:
    """Keep ``objs`` alive until ``port`` dies (or the returned guard is cancelled).

    Example::

        mon_guard(p, timer, socket)   # both live as long as p does
    """
    return Guard.for_caller(add_monitor(port, lambda *reason: objs))


# --------------------------------------------------------------------------- timers


def after(seconds: float, target: Union[str, Callable[[], Any]], *msg: Any) -> Guard:
    """After ``seconds``, send ``msg`` to the port ``target`` or call ``target()``.

    Runs in a fresh greenlet, so a callable may block. Returns a guard that stops the timer
    when cancelled (dropping it stops nothing).

    Example::

        after(0.5, SELF(), "tick")
        after(2.0, lambda: print("two seconds later"))
    """
    loop = _hub.bound_hub().loop
    timer = loop.timer(seconds)
    if callable(target):
        if msg:
            raise TypeError("after(seconds, callable) takes no message arguments")
        timer.start(spawn_raw, target, update=True)  # from now, not the cached loop time
    else:
        timer.start(spawn_raw, snd, target, *msg, update=True)
    return Guard.for_caller(timer.close)


# --------------------------------------------------------------------------- node port

_NODE_REQ: dict[Any, Any] = {}
secure_mode = False
_allow_trace = False
_max_forward_depth = 8  # setting max_forward_depth (configure sets it)
_CODE = 1  # request kinds refused by a secure node (the second item of a _NODE_REQ entry)
_TRACE = 2


def register_node_request(
    tag: str, fn: Callable[..., Any], *, code: bool = False, trace: bool = False
) -> None:
    """Register ``fn(from_node, *args)`` as the handler of node-port request ``tag``.

    ``code=True`` marks requests that run arbitrary code (refused when the node is ``secure``);
    ``trace=True`` marks requests that stream this node's traffic or log records to another
    node (refused when the node is ``secure``, unless the setting ``allow_trace`` is true).
    Used by the other modules (spawn, the global database); applications rarely need it.

    Example::

        register_node_request("my_ping", lambda from_node, *reply: snd(*reply, "pong"))
    """
    _NODE_REQ[tag] = (fn, _CODE if code else _TRACE if trace else 0)


def set_secure(flag: object, allow_trace: object = False) -> None:
    global secure_mode, _allow_trace
    secure_mode = bool(flag)
    _allow_trace = bool(allow_trace)


def set_limits(max_forward_depth: Optional[int] = None) -> None:
    """Set the kernel's limits from the configuration (``configure``)."""
    global _max_forward_depth
    if max_forward_depth is not None:
        _max_forward_depth = int(max_forward_depth)


class _NodePort:
    """The node port ``""``: messages to it are requests (docs/protocol.md#node-port-requests)."""

    __slots__ = ()
    name = ""
    _direct = False
    id = property(lambda self: this_node + "#")

    @property
    def monitors(self) -> None:
        return None

    @monitors.setter
    def monitors(self, value: Any) -> None:  # pragma: no cover - never killed
        raise ValueError("the node port cannot die")

    def _deliver(self, msg: Sequence[Any]) -> None:
        _hub.check_thread()  # snd to this node's node port
        node_request(this_node, msg)  # (inside a request: queued as that request's origin)

    def _terminate(self, reason: Reason) -> None:  # pragma: no cover
        raise ValueError("the node port cannot die")


_node_port = _NodePort()
port_table[this_node] = port_table[this_node + "#"] = _node_port


def node_request(from_node: str, msg: Sequence[Any]) -> None:
    """Handle one node-port request ``msg`` (``[tag, *args]``) that came from ``from_node``.

    Called by the network for every frame addressed to port ``""`` and by local sends to the
    node port. Bad requests are logged (rate-limited, see ``_ratelog``) and dropped; they never
    raise.

    A request to our own node port made *while* a request is handled in this greenlet (a
    ``snd`` relay to ourselves, a reply sent to our node port) is not handled inside the
    running one: it is queued and handled when that one returned (a loop, never a recursion),
    as coming from the node that sent the first request (its real origin, as Perl's
    ``$SRCNODE``), at most ``max_forward_depth`` such levels deep.

    Example::

        node_request(from_node, frame[1:])               # deliver_remote, for a frame to port ""
        node_request("other/1", ["snd", port, "hello"])  # other/1 asks us to relay "hello"
    """
    global _req_glet, _req_state
    cur = getcurrent()
    if _req_glet is cur:  # nested: a handler sent to our node port (see above)
        st = _req_state
        if from_node == this_node:
            from_node = st[0]
        depth = st[1] + 1
        if depth > _max_forward_depth:
            _rl.warning(
                (from_node, "depth"),
                "node request from %s nested more than %d deep (max_forward_depth) dropped: %s",
                from_node,
                _max_forward_depth,
                esc(msg[:1]),
            )
            return
        queue = st[2]
        if queue is None:
            queue = st[2] = deque()
        queue.append((from_node, msg, depth))
        return
    # (a handler that blocks lets other greenlets handle requests meanwhile: each one saves
    # and restores the running request's state)
    prev = _req_glet, _req_state
    st = _req_state = [from_node, 0, None]
    _req_glet = cur
    try:
        _node_request1(from_node, msg)
        queue = st[2]
        if queue:
            while queue:
                from_node, msg, st[1] = queue.popleft()
                st[0] = from_node
                _node_request1(from_node, msg)
    finally:
        _req_glet, _req_state = prev


_req_glet: Optional[greenlet] = None  # the greenlet handling a node request (see node_request)
_req_state: Any = None  # its [origin, depth, queue of nested requests or None]


def request_origin() -> Optional[str]:
    """The node whose node-port request the running greenlet is handling, or None.

    Requests that our own handlers make to our node port count as the original sender's.

    Example::

        def my_request(from_node, *args):
            assert request_origin() == from_node
    """
    return _req_state[0] if _req_glet is getcurrent() else None


def _node_request1(from_node: str, msg: Sequence[Any]) -> None:
    if not msg:
        return
    tag = msg[0]
    if tag.__class__ is not str:
        _rl.warning(
            (from_node, "tag"),
            "node request with non-string tag %s from %s dropped",
            esc(tag),
            from_node,
        )
        return
    entry = _NODE_REQ.get(tag)
    try:
        if entry is not None:
            fn, kind = entry
            if kind and secure_mode and (kind == _CODE or not _allow_trace):
                _rl.warning(
                    (from_node, "secure"),
                    "secure node: refused %s request from %s%s",
                    esc(tag),
                    from_node,
                    "" if kind == _CODE else " (setting allow_trace)",
                )
                return
            fn(from_node, *msg[1:])
        elif tag:
            _call_function(from_node, tag, msg[1:])
    except Exception as exc:
        if from_node == this_node:  # our own code asked: a bug here, worth a traceback
            logger.exception("error processing node message %r from %s", tag, from_node)
            return
        # a peer's bad request: one line, no traceback (unless debugging)
        _rl.error(
            (from_node, "failed"),
            "error processing node message %s from %s: %s",
            esc(tag),
            from_node,
            exc_text(exc),
            exc_info=exc if logger.isEnabledFor(logging.DEBUG) else None,
        )


def resolve_function(name: str) -> Any:
    """Resolve ``pkg.mod.func`` (or ``Pkg::Mod::func``) by importing the longest module prefix."""
    import importlib

    dotted = name.replace("::", ".")
    parts = dotted.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise LookupError("not a function name: %r" % (name,))
    missing = None
    for i in range(len(parts) - 1, 0, -1):
        modname = ".".join(parts[:i])
        try:
            obj = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if (
                exc.name is not None
                and modname != exc.name
                and not modname.startswith(exc.name + ".")
            ):
                # the module exists, but one of its own imports failed: that is the cause
                raise LookupError(
                    "importing %s failed: %s: %s" % (modname, type(exc).__name__, exc)
                ) from exc
            missing = exc
            continue
        except Exception as exc:  # the module exists but fails to import (SyntaxError, ...)
            raise LookupError(
                "importing %s failed: %s: %s" % (modname, type(exc).__name__, exc)
            ) from exc
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(
        "no importable module in %r (%s: %s)" % (name, type(missing).__name__, missing)
    )


def _call_function(from_node: str, name: str, args: Sequence[Any]) -> None:
    if secure_mode:
        _rl.warning(
            (from_node, "secure"),
            "secure node: refused function call %s from %s",
            esc(name),
            from_node,
        )
        return
    try:
        fn = resolve_function(name)
    except (LookupError, AttributeError) as exc:
        _rl.warning(
            (from_node, "unknown"),
            "unknown node request %s from %s dropped: %s",
            esc(name),
            from_node,
            exc_text(exc),
        )
        return
    try:
        fn(*args)
    except Exception as exc:  # the function's own code failed: a crash, with its traceback
        report_crash(
            "function called by name",
            None,
            exc,
            detail="(%s, asked by %s)" % (esc(name), from_node),
        )


# requests every node answers -------------------------------------------------------------

_remote_monitors: dict[
    Any, Any
] = {}  # from_node -> {portname: action} (by node: node-down is linear)

#: why recently spawned ports died at birth (name -> reason), for the monitor that the spawning
#: node sends right after its spawn request: it gets the cause, not "no_such_port"
_obituaries: dict[Any, Any] = {}
OBITUARIES_MAX = 1024


def record_obituary(name: str, reason: Sequence[Any]) -> None:
    """Remember why port ``name`` died at birth, for a monitor request that arrives after it
    (bounded: the oldest are forgotten first).

    Example::

        record_obituary(name, ("die", "cannot resolve function 'x.y': ..."))
    """
    _obituaries.pop(name, None)
    _obituaries[name] = tuple(reason)
    while len(_obituaries) > OBITUARIES_MAX:
        del _obituaries[next(iter(_obituaries))]


def _req_mon1(from_node: str, portid: str, *_: Any) -> None:
    name = portid.partition("#")[2] if "#" in portid else portid
    if not name:  # the node port: it lives as long as the connection, which the peer watches
        return
    p = local_port_by_name(name)
    if p is None or p.monitors is DEAD:
        reason = _obituaries.pop(name, None)
        _reply_kil0(
            from_node,
            name,
            reason or ("no_such_port", "cannot monitor nonexistent port", this_node + "#" + name),
        )
        return
    mons = _remote_monitors.get(from_node)
    if mons is None:
        mons = _remote_monitors[from_node] = {}
    elif name in mons:
        return

    def action(*reason: Any) -> None:
        m = _remote_monitors.get(from_node)
        if m is not None and m.get(name) is action:
            del m[name]
            if not m:
                del _remote_monitors[from_node]
        _reply_kil0(from_node, name, reason)

    mons[name] = action
    p.monitors = monitors_add(p.monitors, action)


def _reply_kil0(to_node: str, name: str, reason: Sequence[Any]) -> None:
    if to_node == this_node:
        return
    network.send(to_node, ("", "kil0", name) + tuple(reason))


def _req_mon0(from_node: str, portid: str, *_: Any) -> None:
    name = portid.partition("#")[2] if "#" in portid else portid
    mons = _remote_monitors.get(from_node)
    if not mons:
        return
    action = mons.pop(name, None)
    if not mons:
        del _remote_monitors[from_node]
    if action is not None:
        _unhook_monitor(name, action)


def _unhook_monitor(name: str, action: Action) -> None:
    p = local_port_by_name(name)
    if p is not None:
        monitors_discard(p.monitors, action)


def forget_node_monitors(nodeid: str) -> None:
    """Drop every monitor a (now disconnected) remote node had on our ports (costs what that
    node held, not what every node holds)."""
    mons = _remote_monitors.pop(nodeid, None)
    if mons:
        for name, action in mons.items():
            _unhook_monitor(name, action)


def _req_kil0(from_node: str, portname: str, *reason: Any) -> None:
    network.port_died(from_node, portname, reason)


def _req_kil1(from_node: str, portname: str, *reason: Any) -> None:
    if not portname:
        _rl.warning((from_node, "kil1"), "kil1 of the node port from %s ignored", from_node)
        return
    p = local_port_by_name(portname)
    if p is not None:
        kill_local(p, reason)


def _req_snd(from_node: str, *msg: Any) -> None:
    if msg and isinstance(msg[0], str):
        snd(*msg)


def _req_can(from_node: str, method: str, *reply: Any) -> None:
    if reply:
        snd(*reply, 1 if method in _NODE_REQ else "")


def _req_time(from_node: str, *reply: Any) -> None:
    if reply:
        snd(*reply, time.time())


def _eval_namespace() -> dict[str, Any]:
    # the public API, from the package the application imported (the kernel never imports the
    # layers above it; by the time a peer asks, the package is loaded)
    pkg = sys.modules.get("aemp_green")
    ns = {name: getattr(pkg, name) for name in getattr(pkg, "__all__", ())}
    ns["__name__"] = "aemp_eval"
    ns["aemp_green"] = pkg
    return ns


def _req_eval(from_node: str, expr: str, *reply: Any) -> None:
    logger.info("eval request from %s: %s", from_node, esc(expr))
    try:
        result = eval(expr, _eval_namespace())  # noqa: S307 - refused when secure
        err = ""
    except Exception as exc:
        result, err = None, die_reason(exc)[1]
    if reply:
        try:
            snd(*reply, err, result)
        except TypeError as exc:  # the result cannot travel: say so instead of timing out
            snd(*reply, "result cannot be sent: %s" % exc, None)


def _req_noop(from_node: str, *args: Any) -> None:
    pass


for _tag, _fn, _code in (
    ("mon1", _req_mon1, False),
    ("mon0", _req_mon0, False),
    ("kil0", _req_kil0, False),
    ("kil1", _req_kil1, False),
    ("snd", _req_snd, False),
    ("can", _req_can, False),
    ("time", _req_time, False),
    ("eval", _req_eval, True),
    ("devnull", _req_noop, False),
    ("", _req_noop, False),
):
    register_node_request(_tag, _fn, code=_code)
del _tag, _fn, _code
