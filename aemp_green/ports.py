"""Ports: callback ports (``port``/``rcv``), greenlet ports (``spawn``/``receive``), port context.

Two kinds of port share one port table (``kernel.port_table``) and are addressed, monitored and
killed the same way:

* A **callback port** is a small slotted object: a catch-all handler and/or a dict of tag
  handlers. It has no greenlet; handlers run in the sender's greenlet through the kernel's
  trampoline, never nested. A million of them is a normal program (~200 bytes each).
* A **greenlet port** is a greenlet plus a mailbox. Its code calls ``receive(tag)``, which
  blocks only that greenlet and takes the first queued message with that tag (selective
  receive: the others stay queued, in order). ``rcv`` works on greenlet ports too: a message
  with a matching handler runs the handler instead of going to the mailbox, and a function
  that set handlers and returned leaves its port alive as a callback port (this is how
  AEMP-style spawned functions work).

The port context (``SELF()``) is an attribute of the running greenlet: a greenlet port's own
greenlet has it for life; handler calls, ``psub`` wrappers and ``peval`` set it for their
duration and restore it afterwards, also when they run in some other greenlet.
"""

import logging
from collections import deque
from time import monotonic as _monotonic
from typing import Any, Callable, Optional, Sequence, TypeAlias, Union

from gevent.event import Event
from greenlet import GreenletExit, getcurrent, greenlet

from . import _hub
from . import kernel as _k
from ._report import report_crash
from .exceptions import BlockingInHandlerError, PortDied, Timeout
from .kernel import Reason

__all__ = [
    "SELF",
    "port",
    "rcv",
    "spawn",
    "receive",
    "receive_match",
    "psub",
    "peval",
    "cal",
    "call",
    "mailbox_info",
]

logger = logging.getLogger(__name__)

_dispatch = _k.dispatch
_counters = _k.counters
_kill_local = _k.kill_local
_DEAD = _k.DEAD
_Greenlet: TypeAlias = greenlet  # (a port's attribute is called greenlet)
#: a message handler: user code, called with the message (minus the tag for a tag handler)
_Handler: TypeAlias = Callable[..., Any]


class _PortGreenlet(greenlet):  # type: ignore[misc]
    """The greenlet of a greenlet port: a slot for its port context instead of a ``__dict__``."""

    __slots__ = ("aemp_self",)


class _Killed(BaseException):
    """Thrown into a greenlet port's greenlet when the port is killed from outside."""


_ANY = object()  # receive(): any message
_PRED = object()  # receive_match(): wake on every message, the receiver checks
_TIMEOUT = object()


def _unhandled(p: "_AnyPort", msg: Sequence[Any]) -> None:
    tag = msg[0] if msg else None
    _kill_local(p, ("unhandled_message", "no callback found for message '%s'" % (tag,)))


def _find_handler(
    p: "_AnyPort", msg: Sequence[Any]
) -> tuple[Optional[_Handler], Optional[Sequence[Any]]]:
    handlers = p.handlers
    if handlers is not None and msg:
        try:
            h = handlers.get(msg[0])
        except TypeError:  # unhashable tag
            h = None
        if h is not None:
            return h, msg[1:]
    if p.default is not None:
        return p.default, msg
    return None, None


def _run_handler(p: "_AnyPort", msg: Sequence[Any], cur: greenlet) -> None:
    """Run the handler for ``msg`` in port context ``p`` (called by the kernel trampoline)."""
    if p.monitors is _DEAD:
        return
    handlers = p.handlers
    if handlers is not None and msg:
        try:
            h = handlers.get(msg[0])
        except TypeError:  # unhashable tag
            h = None
        if h is not None:
            p.handled += 1
            cur.aemp_self = p
            try:
                h(*msg[1:])
            except Exception as exc:
                _handler_died(p, exc, msg)
            return
    h = p.default
    if h is None:
        if not p._keeps(msg):
            _unhandled(p, msg)
        return
    p.handled += 1
    cur.aemp_self = p
    try:
        h(*msg)
    except Exception as exc:
        _handler_died(p, exc, msg)


def _handler_died(p: "_AnyPort", exc: BaseException, msg: Optional[Sequence[Any]] = None) -> None:
    report_crash("callback port", p.id, exc, tag=msg[0] if msg else None)
    _kill_local(p, _k.die_reason(exc))


class _Port:
    """What both kinds of port share: the ID (``<node>#<name>``) and its name part."""

    __slots__ = ()
    id: str
    monitors: Any  # None, a list of monitor actions, or kernel.DEAD
    handlers: Optional[dict[Any, _Handler]]
    default: Optional[_Handler]

    @property
    def name(self) -> str:
        return self.id.partition("#")[2]


_CATCH_ALL = object()  # a callback port's catch-all handler, in its dict of tag handlers


def _run_callback(p: "_CallbackPort", msg: Sequence[Any], cur: greenlet) -> None:
    """``_run_handler`` for a callback port with only a catch-all handler (or none)."""
    if p.monitors is _DEAD:
        return
    h = p._h
    if h is None:
        _unhandled(p, msg)
        return
    p.handled += 1
    cur.aemp_self = p
    try:
        h(*msg)
    except Exception as exc:
        _handler_died(p, exc, msg)


def _run_tagged(p: "_CallbackPort", msg: Sequence[Any], cur: greenlet) -> None:
    """``_run_handler`` for a callback port with tag handlers (``_h`` is their dict)."""
    if p.monitors is _DEAD:
        return
    handlers = p._h
    h = None
    args = msg
    if msg:
        try:
            h = handlers.get(msg[0])
        except TypeError:  # unhashable tag
            pass
        if h is not None:
            args = msg[1:]
    if h is None:
        h = handlers.get(_CATCH_ALL)
        if h is None:
            _unhandled(p, msg)
            return
    p.handled += 1
    cur.aemp_self = p
    try:
        h(*args)
    except Exception as exc:
        _handler_died(p, exc, msg)


class _CallbackPort(_Port):
    # handled: the introspection counter (messages its handlers took); its age comes from
    # kernel.port_created. _h holds what handles messages in one slot, so that a port stays a
    # 64-byte object with the counter: None, the catch-all alone (``port(cb)``), or a dict of
    # tag handlers with the catch-all, if any, under _CATCH_ALL. ``handlers`` and ``default``
    # read and write it; a port with tag handlers is a _TaggedCallbackPort (same slots, its
    # own _run), so the hot path never tests which form _h has.
    __slots__ = ("id", "monitors", "_h", "handled")

    def __init__(self, pid: str, default: Optional[_Handler] = None) -> None:
        self.id = pid
        self.monitors = None
        self._h: Any = default
        self.handled = 0

    @property
    def handlers(self) -> Optional[dict[Any, _Handler]]:
        h = self._h
        if h.__class__ is not dict:
            return None
        tags = {k: v for k, v in h.items() if k is not _CATCH_ALL}
        return tags or None

    @handlers.setter
    def handlers(self, tags: Optional[dict[Any, _Handler]]) -> None:
        self._set(self._pack(tags, self.default))

    @property
    def default(self) -> Optional[_Handler]:
        h = self._h
        return h.get(_CATCH_ALL) if h.__class__ is dict else h

    @default.setter
    def default(self, cb: Optional[_Handler]) -> None:
        self._set(self._pack(self.handlers, cb))

    def _set(self, h: Any) -> None:
        self._h = h
        self.__class__ = _TaggedCallbackPort if h.__class__ is dict else _CallbackPort

    @staticmethod
    def _pack(tags: Optional[dict[Any, _Handler]], default: Optional[_Handler]) -> Any:
        if not tags:
            return default
        out: dict[Any, _Handler] = dict(tags)
        if default is not None:
            out[_CATCH_ALL] = default
        return out

    _deliver = _dispatch
    _run = _run_callback
    _direct = True  # _deliver is plain dispatch (kernel.deliver_frames calls _run itself)

    def _keeps(self, msg: Sequence[Any]) -> bool:
        return False

    def _terminate(self, reason: Reason) -> None:
        self._h = None  # (a dead port runs nothing: its class may stay _TaggedCallbackPort)
        if self.handled:
            _counters.dead_handled += self.handled

    def __repr__(self) -> str:
        return "<callback port %s>" % self.id


class _TaggedCallbackPort(_CallbackPort):
    """A callback port with tag handlers (``rcv(port, tag, cb, ...)``): ``_h`` is their dict."""

    __slots__ = ()
    _run = _run_tagged


class _MailboxLimit:
    """A greenlet port's ``mailbox_limit`` and what happens when its mailbox is full."""

    __slots__ = ("limit", "on_full", "dropped", "blocked", "room")

    room: Optional[Event]

    def __init__(self, limit: int, on_full: str) -> None:
        self.limit = limit
        self.on_full = on_full
        self.dropped = 0  # messages dropped because the mailbox was full
        self.blocked = 0  # senders waiting for room now
        self.room = None  # Event set when the mailbox has room again (made by a waiter)

    def wake(self) -> None:
        """Let waiting senders try again (the mailbox shrank, the port waits or died)."""
        room = self.room
        if room is not None:
            self.room = None
            room.set()

    def full(self, p: "_GreenletPort", msg: Sequence[Any]) -> None:
        """``msg`` meets a full mailbox of ``p``: block, drop or kill, as configured."""
        if self.on_full == "kill":
            _kill_local(
                p,
                (
                    "mailbox_full",
                    "%s had %d messages queued (mailbox_limit %d)"
                    % (p.id, len(p.mailbox), self.limit),  # type: ignore[arg-type]
                ),
            )
            return
        if self.on_full == "block" and getcurrent() is not p.greenlet and _k.may_block():
            self.blocked += 1
            try:
                while not p._try_deliver(msg):
                    room = self.room
                    if room is None:
                        room = self.room = Event()
                    room.wait()
            finally:
                self.blocked -= 1
            return
        self.dropped += 1
        n = self.dropped
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: a log line, not a log flood
            logger.warning(
                "port %s: mailbox full (mailbox_limit %d), %d message(s) dropped",
                p.id,
                self.limit,
                n,
            )


_ON_FULL = ("block", "drop", "kill")

#: either kind of local port (what the handler functions above work on)
_AnyPort: TypeAlias = Union["_CallbackPort", "_GreenletPort"]


class _GreenletPort(_Port):
    __slots__ = (
        "id",
        "monitors",
        "handlers",
        "default",
        "greenlet",
        "mailbox",
        "waiting",
        "resume",
        "adopted",
        "reason",
        "limit",
        "handled",
        "created",
    )

    greenlet: Optional[_Greenlet]
    mailbox: Optional[deque[Sequence[Any]]]
    waiting: Any  # None, the tag receive waits for, _ANY or _PRED
    resume: Any
    adopted: bool
    reason: Optional[Reason]
    limit: Optional[_MailboxLimit]

    def __init__(self, pid: str) -> None:
        self.id = pid
        self.handled = 0  # messages received or taken by its handlers (introspection)
        self.created = _monotonic()
        self.monitors = None
        self.handlers = None
        self.default = None
        self.greenlet = None
        self.mailbox = None  # a deque once a message has to wait (saves ~0.8 KB per idle port)
        self.waiting = None
        self.resume = None
        self.adopted = False
        self.reason = None
        self.limit = None  # a _MailboxLimit (spawn(..., mailbox_limit=N))

    def _deliver(self, msg: Sequence[Any]) -> None:
        if self.handlers is not None or self.default is not None or self.greenlet is None:
            if self.greenlet is None or _find_handler(self, msg)[0] is not None:
                _dispatch(self, msg)
                return
        w = self.waiting
        if w is not None:
            if w is _ANY or (msg and msg[0] == w):
                self.waiting = None
                _k.wake(self, msg)
                return
            if w is _PRED:
                self._queue_msg(msg)
                self.waiting = None
                _k.wake(self, _PRED)
                return
        self._queue_msg(msg)

    def _queue_msg(self, msg: Sequence[Any]) -> None:
        mb = self.mailbox
        if mb is None:
            mb = self.mailbox = deque()
        elif self.limit is not None and len(mb) >= self.limit.limit:
            self.limit.full(self, msg)
            return
        mb.append(msg)

    def _try_deliver(self, msg: Sequence[Any]) -> bool:
        """``_deliver`` for a sender that waited for room: False (nothing done) while the
        mailbox is still full; a dead port takes (and loses) the message."""
        if self.monitors is _DEAD:
            return True
        if self.handlers is not None or self.default is not None or self.greenlet is None:
            if self.greenlet is None or _find_handler(self, msg)[0] is not None:
                _dispatch(self, msg)
                return True
        w = self.waiting
        if w is not None and (w is _ANY or (msg and msg[0] == w)):
            self.waiting = None
            _k.wake(self, msg)
            return True
        mb = self.mailbox
        if mb is not None and len(mb) >= self.limit.limit and w is not _PRED:  # type: ignore[union-attr]
            return False  # (receive_match waits for a new message: let it in)
        if mb is None:
            mb = self.mailbox = deque()
        mb.append(msg)
        if w is _PRED:
            self.waiting = None
            _k.wake(self, _PRED)
        return True

    _run = _run_handler
    _direct = False  # _deliver decides between mailbox and handler

    def _keeps(self, msg: Sequence[Any]) -> bool:
        """A message no handler takes goes to the mailbox while the greenlet runs."""
        if self.greenlet is None:
            return False
        self._queue_msg(msg)
        return True

    def _terminate(self, reason: Reason) -> None:
        if self.handled:
            _counters.dead_handled += self.handled
        self.reason = reason
        self.mailbox = None
        self.handlers = self.default = None
        if self.limit is not None:
            self.limit.wake()  # blocked senders return (the message is lost with the port)
        was_waiting = self.waiting is not None
        self.waiting = None
        self.resume = None
        g = self.greenlet
        if g is None or g.dead:
            return
        if self.adopted:
            # a greenlet we did not start: never throw into it; wake a blocked receive instead
            if getattr(g, "aemp_self", None) is self:
                g.aemp_self = None
            if was_waiting:
                _k.wake(self, _Dead(reason))
            return
        if g is getcurrent():
            raise _Killed()
        if g:  # started: stop it at the next loop turn
            _hub.bound_hub().loop.run_callback(_throw_killed, g)
        # not started yet: _start_port sees the port is dead and never runs it

    def __repr__(self) -> str:
        return "<greenlet port %s>" % self.id


class _Dead:
    __slots__ = ("reason",)

    def __init__(self, reason: Reason) -> None:
        self.reason = reason


def _throw_killed(g: greenlet) -> None:
    if g and not g.dead:
        g.throw(_Killed())


def _start_port(p: "_GreenletPort", fn: Callable[..., Any], args: Sequence[Any]) -> None:
    if p.monitors is _DEAD:
        return
    p.greenlet.switch(p, fn, args)  # type: ignore[union-attr]


def _port_main(p: "_GreenletPort", fn: Callable[..., Any], args: Sequence[Any]) -> None:
    cur = getcurrent()
    cur.aemp_self = p
    try:
        fn(*args)
    except _Killed:
        return
    except GreenletExit:
        reason: Reason = ()
    except Exception as exc:
        report_crash("greenlet port", p.id, exc)
        reason = _k.die_reason(exc)
    else:
        reason = ()
        if (p.handlers is not None or p.default is not None) and p.monitors is not _DEAD:
            # AEMP style: the function set up handlers and returned; the port lives on
            p.greenlet = None
            pending, p.mailbox = p.mailbox, None
            if p.limit is not None:
                p.limit.wake()  # a callback port now: no mailbox to wait for
            for msg in pending or ():
                _dispatch(p, msg)
            return
    p.greenlet = None
    _kill_local(p, reason)


def _new_greenlet_port(
    pid: str, fn: Callable[..., Any], args: Sequence[Any], limit: Optional[_MailboxLimit] = None
) -> "_GreenletPort":
    p = _GreenletPort(pid)
    p.limit = limit
    hub = _hub.bound_hub()
    p.greenlet = _PortGreenlet(_port_main, parent=hub)
    _k.register_port(p)
    hub.loop.run_callback(_start_port, p, fn, args)
    return p


# --------------------------------------------------------------------------- public API


def SELF() -> str:
    """The ID of the port whose code is running now.

    Set inside ``rcv`` handlers, ``psub`` wrappers, ``peval`` and greenlet ports (and in a
    plain greenlet after its first ``receive``). Raises ``RuntimeError`` outside port context.

    Example::

        def worker() -> None:
            print("I am", SELF())
        spawn(worker)
    """
    p = getattr(getcurrent(), "aemp_self", None)
    if p is None:
        raise RuntimeError("SELF() called outside port context")
    return p.id  # type: ignore[no-any-return]


def port(cb: Optional[Callable[..., Any]] = None) -> str:
    """Create a callback port and return its ID; ``cb(*msg)`` becomes its catch-all handler.

    A message no handler takes kills the port with
    ``("unhandled_message", "no callback found for message '<tag>'")``.

    Example::

        p = port(lambda tag, *args: print(tag, args))
        snd(p, "hello", 1)
    """
    pid = _k.new_port_id()
    _k.port_table[pid] = _CallbackPort(pid, cb)
    return pid


def rcv(port_: str, *args: Any) -> str:
    """Set handlers on a local port; returns the port ID.

    ``rcv(port, cb)`` sets the catch-all ``cb(*msg)``; ``rcv(port, tag, cb, tag2, cb2, ...)``
    sets tag handlers ``cb(*args_after_tag)`` (exact match on element 0). ``cb=None`` removes
    a handler. An exception in a handler kills the port with ``("die", "<message>")``.

    Example::

        p = port()
        rcv(p, "ping", lambda reply: snd(reply, "pong"),
               "stop", lambda: kil(SELF()))
    """
    p = _k.lookup_port(port_)
    if p is None:
        if _k.port_is_local(port_):
            raise ValueError("rcv: no such local port %r (dead?)" % (port_,))
        raise ValueError("rcv: can only be called on local ports, not %r" % (port_,))
    if len(args) == 1:
        p.default = args[0]
    elif len(args) % 2:
        raise TypeError("rcv(port, tag, cb, ...) needs tag/callback pairs")
    else:
        handlers = p.handlers if p.handlers is not None else {}
        for i in range(0, len(args), 2):
            tag, cb = args[i], args[i + 1]
            if cb is None:
                handlers.pop(tag, None)
            else:
                handlers[tag] = cb
        p.handlers = handlers or None
    if isinstance(p, _GreenletPort) and p.greenlet is not None and p.mailbox:
        # queued messages the new handlers take are handled first, in their original order
        keep: deque[Any] = deque()
        for msg in p.mailbox:
            if _find_handler(p, msg)[0] is not None:
                _k.dispatch_queue.append((p, msg))
            else:
                keep.append(msg)
        p.mailbox = keep
        if p.limit is not None and p.limit.blocked:
            p.limit.wake()
        if _k.dispatch_queue:
            _k.schedule_drain()
    return port_


def spawn(
    target: Union[str, Callable[..., Any]],
    *args: Any,
    mailbox_limit: Optional[int] = None,
    on_full: str = "block",
) -> str:
    """Start a greenlet port and return its ID.

    ``spawn(fn, *args)`` runs ``fn(*args)`` in a new greenlet with the new port as ``SELF``.
    When ``fn`` returns the port is killed normally (unless it set ``rcv`` handlers, then it
    lives on as a callback port); when it raises, with ``("die", "<message>")``.

    ``mailbox_limit=N`` bounds the messages waiting in its mailbox; a message that finds N
    there is handled as ``on_full`` says: ``"block"`` makes a sender that can wait (a greenlet,
    not a callback handler, the hub or a message from another node) wait for room and drops
    the others' messages; ``"drop"`` drops it; ``"kill"`` kills the port with
    ``("mailbox_full", text)``. Dropped messages are counted (``mailbox_info``).

    ``spawn(node, "pkg.mod.func", *args)`` creates the port on ``node`` (possibly this one) and
    runs the named function there; it returns the new port ID at once. ``Pkg::Sub::func``
    names map to ``Pkg.Sub.func``; a Perl node runs its own Perl functions this way.

    Example::

        def echo() -> None:
            while True:
                text, reply = receive("echo")
                snd(reply, "echoed", text)
        e = spawn(echo)
        w = spawn(worker, mailbox_limit=1000, on_full="drop")
    """
    limit = None
    if mailbox_limit is not None:
        if (
            isinstance(mailbox_limit, bool)
            or not isinstance(mailbox_limit, int)
            or mailbox_limit <= 0
        ):
            raise ValueError(
                "spawn: mailbox_limit must be a positive integer, not %r" % (mailbox_limit,)
            )
        if on_full not in _ON_FULL:
            raise ValueError("spawn: on_full must be one of %s, not %r" % (_ON_FULL, on_full))
        limit = _MailboxLimit(mailbox_limit, on_full)
    if callable(target):
        return _new_greenlet_port(_k.new_port_id(), target, args, limit).id
    if not isinstance(target, str) or not args or not isinstance(args[0], str):
        raise TypeError("spawn(fn, *args) or spawn(node, 'pkg.func', *args)")
    if limit is not None:
        raise TypeError("spawn: mailbox_limit only for a function run on this node")
    node = target.partition("#")[0]
    funcname, fargs = args[0], args[1:]
    name = _k.new_spawn_name()
    if node == _k.this_node:
        _spawn_named(node, name, funcname, *fargs)
    else:
        _k.network.send(node, ("", "AnyEvent::MP::_spawn", name, funcname) + tuple(fargs))
    return node + "#" + name


def _spawn_named(from_node: str, name: str, funcname: str, *args: Any) -> None:
    """Node request ``AnyEvent::MP::_spawn``: create port ``name`` running ``funcname``."""
    if not isinstance(name, str) or not name or _k.local_port_by_name(name) is not None:
        logger.warning("spawn request from %s with bad or used port name %r", from_node, name)
        return
    pid = _k.this_node + "#" + name
    try:
        fn = _k.resolve_function(funcname)
    except (LookupError, AttributeError) as exc:
        logger.warning("spawn request from %s: cannot resolve %r: %s", from_node, funcname, exc)
        reason = (
            "die",
            "cannot resolve function %r on %s: %s"
            % (
                funcname,
                _k.this_node,
                exc if isinstance(exc, LookupError) else "%s: %s" % (type(exc).__name__, exc),
            ),
        )
        p = _GreenletPort(pid)
        _k.register_port(p)
        _kill_local(p, reason)
        _k.record_obituary(name, reason)  # the spawner's monitor comes right after this
        return
    _new_greenlet_port(pid, fn, args)


_k.register_node_request("AnyEvent::MP::_spawn", _spawn_named, code=True)


def check_may_block(what: str, own_port: bool = False) -> Optional["_GreenletPort"]:
    """Raise ``BlockingInHandlerError`` when the running code may not block (a callback
    handler, the hub; with ``own_port``, also code running in another port's context, as
    receive needs the running greenlet's own mailbox); ``what`` names the call in the message.

    Example::

        check_may_block("call()")
    """
    cur = getcurrent()
    p = getattr(cur, "aemp_self", None)
    foreign = p is not None and not (isinstance(p, _GreenletPort) and p.greenlet is cur)
    if _k.dispatching() or (own_port and foreign):
        name = p.id if p is not None else "a callback port"
        raise BlockingInHandlerError(
            "%s inside the callback handler of %s: callback handlers run on the node's "
            "dispatcher and must not block (receive, receive_match, call; a gevent.sleep delays "
            "every other handler). Run code that waits in a greenlet port, e.g. "
            "spawn(fn, *args) from the handler, or use cal(port, ..., cb=...) for a reply "
            "callback (docs/tutorial.md, \"Callback ports must not block\")." % (what, name)
        )
    if cur is _hub.bound_hub():
        raise BlockingInHandlerError(
            "%s cannot block in the hub greenlet: call it from a "
            "greenlet port (spawn) or any other greenlet" % what
        )
    return p


def _own_port() -> "_GreenletPort":
    """The greenlet port of the running greenlet, adopting a plain greenlet on first use."""
    cur = getcurrent()
    p = getattr(cur, "aemp_self", None)
    if p is not None and p.__class__ is _GreenletPort and p.greenlet is cur:
        if not _k.dispatching():  # (the common case: a greenlet port's own code)
            return p
    p = check_may_block("receive()", own_port=True)
    if p is not None:
        return p
    p = _GreenletPort(_k.new_port_id())
    p.greenlet = cur
    p.adopted = True
    _k.register_port(p)
    cur.aemp_self = p
    link = getattr(cur, "rawlink", None)
    if link is not None:  # a gevent Greenlet: its port ends with it
        link(lambda g: _kill_local(p, ()))
    return p


def _wait(p: "_GreenletPort", want: Any, timeout: Optional[float]) -> Any:
    p.waiting = want
    if p.limit is not None and p.limit.blocked:
        p.limit.wake()  # a blocked sender may hold the message this receive waits for
    timer = None
    if timeout is not None:
        timer = _hub.bound_hub().loop.timer(max(timeout, 0))
        timer.start(_on_timeout, p, update=True)  # from now, not the loop's cached time
    try:
        r = _k.block()
    finally:
        p.waiting = None
        if timer is not None:
            timer.close()
    if r is _TIMEOUT:
        raise Timeout("receive timed out after %s s" % timeout)
    if type(r) is _Dead:
        raise PortDied.from_reason(r.reason)
    return r


def _on_timeout(p: "_GreenletPort") -> None:
    if p.waiting is not None:
        p.waiting = None
        p.greenlet.switch(_TIMEOUT)  # type: ignore[union-attr]


def receive(tag: Any = None, timeout: Optional[float] = None) -> list[Any]:
    """Block this greenlet until a message arrives; selective by tag.

    ``receive(tag)`` returns the first queued message whose element 0 equals ``tag``, as a
    list without the tag; other messages stay queued, in order. ``receive()`` returns the
    first message whole, tag included. Raises ``aemp_green.Timeout`` after ``timeout``
    seconds. Works in greenlet ports and in any plain greenlet (the main one too), which gets
    a port of its own on first use.

    Example::

        snd(SELF(), "later", 2)
        snd(SELF(), "now", 1)
        assert receive("now") == [1]
        assert receive() == ["later", 2]
    """
    p = _own_port()
    mb = p.mailbox
    if mb:
        if p.limit is not None and p.limit.blocked and len(mb) <= p.limit.limit // 2 + 1:
            p.limit.wake()  # (room again after this message: senders go on in a loop turn)
        if tag is None:
            p.handled += 1
            return list(mb.popleft())
        i = 0
        for m in mb:
            if m and m[0] == tag:
                del mb[i]
                p.handled += 1
                return list(m[1:])
            i += 1
    if timeout is not None and timeout <= 0:
        raise Timeout("no matching message")
    msg = _wait(p, _ANY if tag is None else tag, timeout)
    p.handled += 1
    return list(msg) if tag is None else list(msg[1:])


def receive_match(pred: Callable[[list[Any]], Any], timeout: Optional[float] = None) -> list[Any]:
    """Block until a message for which ``pred(msg_list)`` is true arrives; return it whole.

    Unmatched messages stay queued in order. Raises ``aemp_green.Timeout``.

    Example::

        reply = receive_match(lambda m: m[0] == "result" and m[1] == job_id, timeout=5)
    """
    p = _own_port()
    deadline = None
    if timeout is not None:
        loop = _hub.bound_hub().loop
        loop.update_now()  # from now, not the loop's cached time (see cal)
        deadline = loop.now() + timeout
    start = 0
    while True:
        mb = p.mailbox or deque()
        for i in range(start, len(mb)):
            m = mb[i]
            if pred(list(m)):
                del mb[i]
                p.handled += 1
                if p.limit is not None and p.limit.blocked:
                    p.limit.wake()
                return list(m)
        start = len(mb)
        left = None
        if deadline is not None:
            left = deadline - _hub.bound_hub().loop.now()
            if left <= 0:
                raise Timeout("no matching message")
        _wait(p, _PRED, left)


def psub(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so that it runs later in the current port's context.

    Exceptions raised by ``fn`` kill that port with ``("die", ...)`` instead of propagating.

    Example::

        def handler(*msg: Any) -> None:
            after(1.0, psub(lambda: snd(SELF(), "tick")))
    """
    p = getattr(getcurrent(), "aemp_self", None)
    if p is None:
        raise RuntimeError("psub() called outside port context")

    def in_port_context(*args: Any, **kwargs: Any) -> Any:
        return _in_context(p, fn, args, kwargs)

    setattr(in_port_context, "__wrapped__", fn)  # what it wraps, for introspection
    return in_port_context


def _in_context(
    p: "_AnyPort", fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    cur = getcurrent()
    prev = getattr(cur, "aemp_self", None)
    cur.aemp_self = p
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        report_crash("psub/peval code", p.id, exc)
        _kill_local(p, _k.die_reason(exc))
        return None
    finally:
        cur.aemp_self = prev


def peval(port_: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` now in the context of the local port ``port_``; return its result.

    An exception kills ``port_`` with ``("die", ...)`` (and ``peval`` returns None).

    Example::

        peval(p, lambda: mon(other))   # p now gets killed when other crashes
    """
    p = _k.lookup_port(port_)
    if p is None:
        raise ValueError("peval: no such local port %r" % (port_,))
    return _in_context(p, fn, args, {})


def cal(port_: str, *msg: Any, cb: Callable[..., Any], timeout: Optional[float] = None) -> str:
    """Send ``msg`` plus a fresh reply port to ``port_``; call ``cb(*reply)`` with the reply.

    With ``timeout`` (seconds) ``cb()`` is called with no arguments if no reply came in time;
    without one the reply port monitors ``port_`` and simply goes away if it dies. Returns the
    reply port ID.

    Example::

        cal(server, "add", 1, 2, cb=lambda result: print("1+2 =", result), timeout=5)
    """
    reply_id = _k.new_port_id()
    reply = _k.port_table[reply_id] = _CallbackPort(reply_id)
    timer = None
    undo_mon = None

    def on_reply(*r: Any) -> None:
        if timer is not None:
            timer.close()
        if undo_mon is not None:
            undo_mon()
        _kill_local(reply, ())
        cb(*r)

    reply.default = on_reply
    if timeout is not None:
        timer = _hub.bound_hub().loop.timer(timeout)

        def on_timeout() -> None:
            if reply.monitors is not _DEAD:
                _kill_local(reply, ())
                cb()

        timer.start(_k.spawn_raw, on_timeout, update=True)  # from now (see cal)
    else:
        undo_mon = _k.add_monitor(port_, lambda *reason: _kill_local(reply, reason))
    _k.snd(port_, *msg, reply_id)
    return reply_id


class _CallWaiter:
    __slots__ = ("greenlet", "resume")
    greenlet: Any
    resume: Any


def call(port_: str, *msg: Any, timeout: Optional[float] = None) -> list[Any]:
    """Send ``msg`` plus a reply port to ``port_`` and block until the reply; return it as a list.

    Raises ``aemp_green.Timeout`` after ``timeout`` seconds and ``aemp_green.PortDied(reason)``
    if ``port_`` dies (or its node becomes unreachable) first. Blocks only this greenlet.

    Example::

        total = call(server, "add", 1, 2, timeout=5)[0]
    """
    cur = getcurrent()
    check_may_block("call()")
    w = _CallWaiter()
    w.greenlet = cur
    w.resume = None
    state = [True]

    def finish(value: tuple[Any, ...]) -> None:
        if state[0]:
            state[0] = False
            _k.wake(w, value)

    reply = _CallbackPort(_k.new_port_id(), lambda *r: finish(("reply", r)))
    _k.register_port(reply)
    undo = _k.add_monitor(port_, lambda *reason: finish(("died", reason)))
    timer = None
    if timeout is not None:
        timer = _hub.bound_hub().loop.timer(max(timeout, 0))
        timer.start(finish, ("timeout",), update=True)  # from now (see cal)
    try:
        _k.snd(port_, *msg, reply.id)
        r = _k.block()
    finally:
        state[0] = False
        w.resume = None
        if timer is not None:
            timer.close()
        undo()
        _kill_local(reply, ())
    kind = r[0]
    if kind == "reply":
        return list(r[1])
    if kind == "died":
        raise PortDied.from_reason(r[1])
    raise Timeout("call to %s timed out after %s s" % (port_, timeout))


def mailbox_info(port_: str) -> dict[str, Any]:
    """What the mailbox of the local port ``port_`` holds now, and its limit's counters.

    Returns ``{"queued": n, "limit": N or None, "on_full": ..., "dropped": k, "blocked": s}``:
    messages waiting in the mailbox, the ``mailbox_limit`` (``spawn``), what happens when it
    is full, how many messages were dropped because it was, and how many senders wait for
    room. A callback port has no mailbox (``queued`` 0). Raises ``ValueError`` for a port that
    is not a live local port.

    Example::

        w = spawn(worker, mailbox_limit=100, on_full="drop")
        print(mailbox_info(w)["dropped"])     # 0
    """
    p = _k.lookup_port(port_)
    if p is None:
        raise ValueError("mailbox_info: no such local port %r" % (port_,))
    lim = getattr(p, "limit", None)
    return {
        "queued": len(getattr(p, "mailbox", None) or ()),
        "limit": lim.limit if lim is not None else None,
        "on_full": lim.on_full if lim is not None else None,
        "dropped": lim.dropped if lim is not None else 0,
        "blocked": lim.blocked if lim is not None else 0,
    }
