"""aio: an asyncio program joins the network: awaitable ``receive``, ``call`` and database.

The node runs in a gevent hub thread of its own (the threaded bridge, ``aemp_green.threaded``);
the asyncio program keeps its event loop, its thread and its libraries, and nothing on the
asyncio side is monkey-patched. ``start()`` starts the hub thread and returns a ``Node`` bound
to the running event loop::

    import asyncio
    from aemp_green import aio

    async def main():
        async with aio.start(nodeid="web/%u", seeds=["127.0.0.1:4040"]) as node:
            worker = (await node.db_keys("upper", timeout=5))[0]
            print(await node.call(worker, "upper", "hello", timeout=5))   # ['HELLO']
            inbox = await node.port()
            node.snd(worker, "subscribe", inbox.id)
            async for tag, *args in inbox:         # until the port is closed
                print(tag, args)

    asyncio.run(main())

What waits and what does not: ``snd``, ``kil`` and ``mon`` return at once; ``call``,
``Port.receive``, ``port()``, ``db_set``/``db_del``/``db_reg``/``db_mon`` (which return once
the hub applied them, raising its errors here) and ``db_family``/``db_keys``/``db_values`` are
awaited and suspend only the awaiting task. Nothing ever blocks the event loop, except a
program that queues more than the bridge's high-water mark of operations at once (see
``threaded``): then ``snd`` holds the loop back until the hub catches up.

How it works: an operation is handed to the hub thread by the threaded bridge (``post``: a
queue and an ``async`` watcher); what comes back (replies, messages for a ``Port``, monitor and
``db_mon`` events, query results) is appended to one queue per ``Node`` and the event loop is
woken with ``loop.call_soon_threadsafe`` (once for many items: wake-ups coalesce). No thread
polls. Callbacks given to ``mon`` and ``db_mon`` therefore run **in the event loop's thread**,
as ordinary asyncio callbacks; one that returns a coroutine has it run as a task.

Errors are aemp_green's: ``Timeout`` (also a builtin ``TimeoutError``) after ``timeout``
seconds, ``PortDied`` and its subclasses (``NoSuchPort``, ``NodeUnreachable``) when the called
port dies or its node becomes unreachable, ``RuntimeError`` once the node is shut down.
Cancelling a task that awaits ``call`` or ``receive`` leaves nothing behind: the call's reply
port and monitor go away in the hub, and a message that was already on its way to the cancelled
``receive`` stays in the port for the next one.

The threaded bridge's rules apply: one node per process, started before anything else uses
aemp_green, and the plain ``aemp_green`` functions belong to the hub thread (from the event
loop, use this ``Node``). A program with both threads and an event loop can ``attach()`` an
asyncio ``Node`` to a bridge it started with ``threaded.start()``. docs/aio.md is the guide.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from bisect import insort
from collections.abc import Callable, Generator
from typing import Any, Optional, cast

from . import globaldb, kernel, ports, threaded
from ._guard import Guard
from .exceptions import PortDied, Timeout

__all__ = ["start", "attach", "Starting", "Node", "Port"]


_TOKEN = object()


def _stopped_error() -> RuntimeError:
    return RuntimeError("the aemp_green node is shut down (aio)")


def _not_a_port_id(what: str, port: object) -> TypeError:
    hint = " (use port.id)" if isinstance(port, Port) else ""
    return TypeError("%s: a port ID (str) is needed, not %r%s" % (what, port, hint))


def _expire(fut: asyncio.Future[Any], text: str) -> None:
    """A ``call_later`` timer: fail ``fut`` with ``Timeout(text)`` unless it is done."""
    if not fut.done():
        fut.set_exception(Timeout(text))


def _arrival(item: tuple[int, list[Any]]) -> int:
    return item[0]


def _matches(tag: Any, msg: list[Any]) -> bool:
    return tag is None or (bool(msg) and msg[0] == tag)


# --------------------------------------------------------------------------- starting


def start(
    profile: Optional[str] = None,
    *,
    thread_name: str = "aemp-hub",
    start_timeout: float = 30,
    **configure_args: Any,
) -> Starting:
    """Start the node in a hub thread of its own; await the result for its ``Node``, or use
    it as an async context manager (the node is shut down at the end of the block).

    ``profile`` and ``configure_args`` are ``aemp_green.configure``'s; a configuration error
    is raised here. The node's ``Node`` is bound to the event loop that awaits this. Once per
    process, before anything else uses aemp_green (``threaded.start``'s rules: ``RuntimeError``
    otherwise); the event loop is not blocked while the node starts.

    Example::

        async def main():
            node = await aio.start(nodeid="api/%u", seeds=["127.0.0.1:4040"])
            try:
                print(await node.call(some_port, "ping", timeout=5))
            finally:
                await node.shutdown()

        async def main2():
            async with aio.start(nodeid="api/%u", seeds=["127.0.0.1:4040"]) as node:
                node.snd(some_port, "hello")
    """
    return Starting(
        functools.partial(
            threaded.start,
            profile,
            thread_name=thread_name,
            start_timeout=start_timeout,
            **configure_args,
        )
    )


def attach(
    bridge: Optional[threaded.Node] = None, loop: Optional[asyncio.AbstractEventLoop] = None
) -> Node:
    """An asyncio ``Node`` for a node already running in a threaded bridge (default:
    ``threaded.current()``), bound to ``loop`` (default: the running loop).

    For programs that have both ordinary threads and an event loop: the threads use the
    ``threaded.Node``, the loop uses the ``aio.Node``; both reach the same node. Several
    event loops may each attach their own. ``shutdown()`` of any of them stops the node.

    Example::

        bridge = threaded.start(nodeid="app/%u")          # at program start, any thread

        async def handler():                              # later, in the event loop
            node = aio.attach(bridge)
            return await node.call(worker, "job", 1, timeout=5)
    """
    if bridge is None:
        bridge = threaded.current()
        if bridge is None:
            raise RuntimeError("no threaded bridge runs in this process: use aio.start()")
    if loop is None:
        loop = asyncio.get_running_loop()
    return Node(bridge, loop, _token=_TOKEN)


class Starting:
    """What ``start()`` returns: awaitable (gives the ``Node``) and an async context manager
    (gives the ``Node``, shuts it down at the end of the block).

    Example::

        node = await aio.start(nodeid="x/%u")
        async with aio.start(nodeid="x/%u") as node: ...
    """

    def __init__(self, start_bridge: Callable[[], threaded.Node]) -> None:
        self._start_bridge = start_bridge
        self._node: Optional[Node] = None

    async def _start(self) -> Node:
        loop = asyncio.get_running_loop()
        # threaded.start() waits for the hub thread: wait in a worker thread, not in the loop
        bridge = await loop.run_in_executor(None, self._start_bridge)
        return Node(bridge, loop, _token=_TOKEN)

    def __await__(self) -> Generator[Any, None, Node]:
        return self._start().__await__()

    async def __aenter__(self) -> Node:
        self._node = await self._start()
        return self._node

    async def __aexit__(self, *exc: object) -> None:
        if self._node is not None:
            await self._node.shutdown()


# --------------------------------------------------------------------------- the node


class _Call:
    """One ``call`` in flight. ``done``, ``reply``, ``guard``: hub thread only;
    ``answered``: loop thread only."""

    __slots__ = ("fut", "done", "reply", "guard", "answered")

    def __init__(self, fut: asyncio.Future[list[Any]]) -> None:
        self.fut = fut
        self.done = False
        self.reply: Optional[str] = None
        self.guard: Optional[Guard] = None
        self.answered = False


class _Watch:
    """One ``mon`` or ``db_mon``: ``active`` on the loop side, the hub's guard on the other."""

    __slots__ = ("cb", "active", "hub_guard", "mirror")

    def __init__(self, cb: Callable[..., Any]) -> None:
        self.cb = cb
        self.active = True
        self.hub_guard: Optional[Guard] = None
        self.mirror: dict[str, Any] = {}


class Node:
    """The asyncio side of a node running in its own hub thread (``start()``, ``attach()``).

    Bound to one event loop: call its methods from that loop's thread (``snd`` and ``kil``
    also from any other thread). ``snd``, ``kil``, ``mon`` return at once; the rest is
    awaited. ``threaded`` is the underlying ``threaded.Node``, ``loop`` the event loop.

    Example::

        async with aio.start(nodeid="app/%u", seeds=["127.0.0.1:4040"]) as node:
            port = await node.port()
            node.snd(server, "subscribe", port.id)
            news = await port.receive("news", timeout=10)
    """

    def __init__(
        self, bridge: threaded.Node, loop: asyncio.AbstractEventLoop, *, _token: object = None
    ) -> None:
        if _token is not _TOKEN:
            raise TypeError("use aemp_green.aio.start() or aio.attach() to get a Node")
        self.threaded = bridge
        self.loop = loop
        self._b = bridge
        # hub -> loop: (fn, args) run in the loop thread by _drain; one wake-up for many
        self._inq: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]]
        self._inq = collections.deque()
        self._scheduled = False
        self._pending: set[asyncio.Future[Any]] = set()  # failed with RuntimeError at stop
        self._tasks: set[asyncio.Task[Any]] = set()  # coroutines returned by callbacks
        self._stopped = False
        self._b.on_stop(self._hub_stopped)

    # ------------------------------------------------------------------ plumbing
    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Any thread (the hub's mostly): run ``fn(*args)`` in the loop thread, in order."""
        self._inq.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the event loop is closed: nobody will listen any more
                self._loop_closed()

    def _loop_closed(self) -> None:
        """The loop is gone: drop what is queued for it and whatever comes later (a deque of
        length 0 discards appends; ``_scheduled`` stays set, so nothing schedules again)."""
        self._inq = collections.deque(maxlen=0)

    def _drain(self) -> None:
        """Loop thread: run what the hub handed over (at most what was there on entry, so a
        flooding hub cannot starve the loop; later items have scheduled another drain)."""
        self._scheduled = False
        q = self._inq
        for _ in range(len(q)):
            fn, args = q.popleft()
            try:
                fn(*args)
            except Exception as exc:  # pragma: no cover - our own functions do not raise
                self.loop.call_exception_handler(
                    {"message": "aemp_green.aio: %r failed" % (fn,), "exception": exc}
                )

    def _here(self) -> asyncio.AbstractEventLoop:
        """The loop, after checking we run in it (asyncio futures belong to one loop)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self.loop:
            raise RuntimeError(
                "aemp_green.aio.Node used outside its event loop (use aio.attach() in the "
                "other loop, or threaded.Node from plain threads)"
            )
        if self._stopped:
            raise _stopped_error()
        return self.loop

    def _call_user(self, cb: Callable[..., Any], *args: Any) -> None:
        """Loop thread: run a user callback; a coroutine it returns runs as a task; errors go
        to the loop's exception handler."""
        try:
            result = cb(*args)
        except Exception as exc:
            self.loop.call_exception_handler(
                {"message": "aemp_green.aio: callback %r failed" % (cb,), "exception": exc}
            )
            return
        if asyncio.iscoroutine(result):
            task = self.loop.create_task(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.loop.call_exception_handler(
                {
                    "message": "aemp_green.aio: callback task %r failed" % (task,),
                    "exception": task.exception(),
                    "task": task,
                }
            )

    def _hub_stopped(self) -> None:
        self._to_loop(self._fail_all)

    def _fail_all(self) -> None:
        """Loop thread: the node is gone; every await fails with ``RuntimeError``."""
        self._stopped = True
        for fut in list(self._pending):
            if not fut.done():
                fut.set_exception(_stopped_error())
        self._pending.clear()

    async def _ask(
        self, fn: Callable[..., Any], *args: Any, undo: Optional[Callable[[Any], Any]] = None
    ) -> Any:
        """Run ``fn(*args)`` (it must not block) in the hub; its result or exception here.
        ``undo(result)`` runs in the hub if the awaiting task was cancelled meanwhile."""
        loop = self._here()
        fut: asyncio.Future[Any] = loop.create_future()
        self._b.post(self._ask_op, fut, fn, args, undo)
        self._pending.add(fut)
        try:
            return await fut
        finally:
            self._pending.discard(fut)

    def _ask_op(
        self,
        fut: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        undo: Optional[Callable[[Any], Any]],
    ) -> None:
        try:
            value = fn(*args)
        except BaseException as exc:
            self._to_loop(self._settle_ask, fut, False, exc, None)
        else:
            self._to_loop(self._settle_ask, fut, True, value, undo)

    def _settle_ask(
        self, fut: asyncio.Future[Any], ok: bool, value: Any, undo: Optional[Callable[[Any], Any]]
    ) -> None:
        if fut.done():  # cancelled (or the node stopped): take back what was done for it
            if ok and undo is not None and not self._stopped:
                self._post_quietly(undo, value)
        elif ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def _post_quietly(self, fn: Callable[..., Any], *args: Any) -> None:
        """``post`` for clean-ups: nothing to clean up once the node is stopped."""
        try:
            self._b.post(fn, *args)
        except RuntimeError:
            pass

    # ------------------------------------------------------------------ identity
    @property
    def id(self) -> str:
        """This node's ID.

        Example::

            print("running as", node.id)
        """
        return self._b.id

    @property
    def running(self) -> bool:
        """True until the node is shut down.

        Example::

            if node.running: node.snd(p, "ping")
        """
        return not self._stopped and self._b.running

    def __repr__(self) -> str:
        return "<aio.Node %s%s>" % (self.id, "" if self.running else " stopped")

    # ------------------------------------------------------------------ messages
    def snd(self, port: str, *msg: Any) -> None:
        """Send ``msg`` to ``port`` (any node); returns at once, as ``aemp_green.snd``.

        Messages sent from the loop to one port arrive in the order sent. Raises
        ``RuntimeError`` once the node is shut down. Local ports get the very objects sent:
        do not change them afterwards.

        Example::

            node.snd(worker, "job", 42, {"size": 3})
        """
        if port.__class__ is not str and not isinstance(port, str):
            raise _not_a_port_id("snd", port)
        self._b.post(kernel.snd, port, *msg)

    def kil(self, port: str, *reason: Any) -> None:
        """Kill ``port`` (local or remote) with ``reason`` (none: a normal exit); returns at once.

        Example::

            node.kil(worker)                       # normal exit
            node.kil(worker, "shutdown", "bye")    # a crash reason
        """
        if not isinstance(port, str):
            raise _not_a_port_id("kil", port)
        self._b.post(kernel.kil, port, *reason)

    async def call(self, port: str, *msg: Any, timeout: Optional[float] = None) -> list[Any]:
        """Send ``msg`` plus a fresh reply port to ``port``; the reply (a list), awaited.

        Raises ``aemp_green.Timeout`` after ``timeout`` seconds, ``PortDied`` (``NoSuchPort``,
        ``NodeUnreachable``) when ``port`` dies or its node becomes unreachable first,
        ``RuntimeError`` when the node shuts down. Only the awaiting task waits; cancelling it
        removes the reply port and the monitor in the hub.

        Example::

            total, = await node.call(adder, "add", 1, 2, timeout=5)
            results = await asyncio.gather(*(node.call(w, "job", i, timeout=10)
                                             for i, w in enumerate(workers)))
        """
        if port.__class__ is not str and not isinstance(port, str):
            raise _not_a_port_id("call", port)
        loop = self._here()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        req = _Call(fut)
        self._b.post(self._call_op, req, port, msg)
        self._pending.add(fut)
        timer = None
        if timeout is not None:
            timer = loop.call_later(
                max(timeout, 0.0),
                _expire,
                fut,
                "call to %s timed out after %s s" % (port, timeout),
            )
        try:
            return await fut
        finally:
            self._pending.discard(fut)
            if timer is not None:
                timer.cancel()
            if not req.answered:  # timed out, cancelled or stopped: clean up in the hub
                self._post_quietly(self._call_abort, req)

    def _call_op(self, req: _Call, port: str, msg: tuple[Any, ...]) -> None:
        """Hub side of ``call``: a reply port and a monitor; never blocks."""
        if req.done:
            return
        try:
            req.reply = ports.port(functools.partial(self._call_reply, req))
            guard = kernel.mon(port, functools.partial(self._call_died, req))
            if req.done:  # fired at once
                guard.cancel()
                return
            req.guard = guard
            kernel.snd(port, *msg, req.reply)
        except BaseException as exc:
            self._call_finish(req, False, exc)

    def _call_reply(self, req: _Call, *reply: Any) -> None:
        self._call_finish(req, True, list(reply))

    def _call_died(self, req: _Call, *reason: Any) -> None:
        self._call_finish(req, False, PortDied.from_reason(reason))

    def _call_abort(self, req: _Call) -> None:
        self._call_finish(req, False, None)

    def _call_finish(self, req: _Call, ok: bool, value: Any) -> None:
        """Hub thread: end a call once (reply, death, error, or abort from the loop side)."""
        if req.done:
            return
        req.done = True
        if req.reply is not None:
            kernel.kil(req.reply)
        if req.guard is not None:
            req.guard.cancel()
        if ok or value is not None:
            self._to_loop(self._call_settle, req, ok, value)

    def _call_settle(self, req: _Call, ok: bool, value: Any) -> None:
        req.answered = True
        fut = req.fut
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    # ------------------------------------------------------------------ ports
    async def port(self) -> Port:
        """A new port on this node whose messages are awaited with ``receive``: see ``Port``.

        Example::

            port = await node.port()
            node.snd(server, "subscribe", port.id)
            tag, *args = await port.receive(timeout=5)
        """
        p = Port(self, _token=_TOKEN)
        p.id = await self._ask(self._port_op, p, undo=kernel.kil)
        return p

    def _port_op(self, p: Port) -> str:
        pid = ports.port(functools.partial(self._port_msg, p))
        kernel.mon(pid, functools.partial(self._port_died, p))
        return pid

    def _port_msg(self, p: Port, *msg: Any) -> None:
        """Hub thread, once per message: hand it to the loop (``_to_loop`` inlined)."""
        self._inq.append((p._deliver, (list(msg),)))
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                self._loop_closed()

    def _port_died(self, p: Port, *reason: Any) -> None:
        self._to_loop(p._died, reason)

    def mon(self, port: str, cb: Callable[..., Any]) -> Guard:
        """Monitor ``port``: ``cb(*reason)`` runs once, **in the event loop's thread**, when it
        dies (``()`` for a normal exit, ``("transport_error", node, why)`` when its node
        became unreachable, ...). ``cb`` may be a coroutine function: it then runs as a task.

        Returns at once, with a guard: ``cancel()`` (or the end of a ``with`` block) stops
        the monitor, and after it ``cb`` is not called; dropping the guard does nothing.

        Example::

            node.mon(worker, lambda *reason: print("worker died:", reason))
            with node.mon(worker, on_death):
                reply = await node.call(worker, "job", timeout=10)
        """
        if not isinstance(port, str):
            raise _not_a_port_id("mon", port)
        if not callable(cb):
            raise TypeError("mon: cb must be callable, not %r" % (cb,))
        w = _Watch(cb)
        self._b.post(self._mon_op, w, port)
        return Guard(functools.partial(self._unwatch, w))

    def _mon_op(self, w: _Watch, port: str) -> None:
        if w.active:
            w.hub_guard = kernel.mon(port, functools.partial(self._mon_fired, w))

    def _mon_fired(self, w: _Watch, *reason: Any) -> None:
        self._to_loop(self._mon_call, w, reason)

    def _mon_call(self, w: _Watch, reason: tuple[Any, ...]) -> None:
        if w.active:
            w.active = False
            self._call_user(w.cb, *reason)

    def _unwatch(self, w: _Watch) -> None:
        w.active = False  # from now on cb is not called (events already queued included)
        self._post_quietly(self._hub_unwatch, w)

    def _hub_unwatch(self, w: _Watch) -> None:
        if w.hub_guard is not None:
            w.hub_guard.cancel()
            w.hub_guard = None

    # ------------------------------------------------------------------ database
    async def db_set(self, family: str, key: str, value: Any = None) -> Guard:
        """``aemp_green.db_set``, applied by the hub before the await returns (its errors,
        ``ValueError``/``TypeError`` for bad names or values, are raised here).

        Returns a guard: ``cancel()`` deletes the entry; dropped, the entry stays until
        ``db_del`` or the node goes down. A cancelled await leaves no entry behind.

        Example::

            await node.db_set("web_frontends", node.id, {"url": "http://10.0.0.5:8000/"})
        """
        hub_guard = await self._ask(globaldb.db_set, family, key, value, undo=Guard.cancel)
        return self._guard(hub_guard)

    async def db_reg(self, family: str, port: str, value: Any = None) -> Guard:
        """``aemp_green.db_reg``: register ``port`` in ``family`` until the port dies.

        Example::

            inbox = await node.port()
            await node.db_reg("listeners", inbox.id)
        """
        hub_guard = await self._ask(globaldb.db_reg, family, port, value, undo=Guard.cancel)
        return self._guard(hub_guard)

    async def db_del(self, family: str, *keys: str) -> None:
        """``aemp_green.db_del``: delete this node's ``keys`` from ``family``.

        Example::

            await node.db_del("web_frontends", node.id)
        """
        await self._ask(globaldb.db_del, family, *keys)

    async def db_mon(self, family: str, cb: Callable[..., Any]) -> Guard:
        """Watch ``family``: ``cb(family_dict, added, changed, deleted)`` **in the event loop's
        thread** on every change (the first call lists every key in ``added``).

        ``family_dict`` is this watch's own copy, kept up to date here (do not change it).
        ``cb`` may be a coroutine function (it runs as a task; a slow one sees the dict as it
        is by then). Returns once the watch is set up, with a guard: ``cancel()`` stops it.

        Example::

            workers = []
            def seen(db, added, changed, deleted):
                workers[:] = sorted(db)
            watch = await node.db_mon("workers", seen)
        """
        if not callable(cb):
            raise TypeError("db_mon: cb must be callable, not %r" % (cb,))
        w = _Watch(cb)
        try:
            w.hub_guard = await self._ask(self._db_mon_op, w, family, undo=Guard.cancel)
        except BaseException:
            w.active = False  # (cancelled: events already on their way are not delivered)
            raise
        return Guard(functools.partial(self._unwatch, w))

    def _db_mon_op(self, w: _Watch, family: str) -> Guard:
        return globaldb.db_mon(family, functools.partial(self._db_changed, w))

    def _db_changed(
        self,
        w: _Watch,
        db: dict[str, Any],
        added: list[str],
        changed: list[str],
        deleted: list[str],
    ) -> None:
        """Hub thread: send what changed (not the hub's live dict) to the loop."""
        values = {k: db[k] for k in added if k in db}
        values.update((k, db[k]) for k in changed if k in db)
        self._to_loop(self._db_apply, w, values, added, changed, deleted)

    def _db_apply(
        self,
        w: _Watch,
        values: dict[str, Any],
        added: list[str],
        changed: list[str],
        deleted: list[str],
    ) -> None:
        w.mirror.update(values)
        for k in deleted:
            w.mirror.pop(k, None)
        if w.active:
            self._call_user(w.cb, w.mirror, added, changed, deleted)

    async def _db_query(self, fn: Callable[..., Any], family: str, timeout: Optional[float]) -> Any:
        loop = self._here()
        fut: asyncio.Future[Any] = loop.create_future()
        self._b.post(self._db_query_op, fut, fn, family)
        self._pending.add(fut)
        timer = None
        if timeout is not None:
            timer = loop.call_later(
                max(timeout, 0.0),
                _expire,
                fut,
                "%s(%r) timed out after %s s" % (fn.__name__, family, timeout),
            )
        try:
            return await fut
        finally:
            self._pending.discard(fut)
            if timer is not None:
                timer.cancel()

    def _db_query_op(self, fut: asyncio.Future[Any], fn: Callable[..., Any], family: str) -> None:
        try:
            fn(family, cb=functools.partial(self._db_answer, fut))
        except BaseException as exc:
            self._to_loop(self._settle_ask, fut, False, exc, None)

    def _db_answer(self, fut: asyncio.Future[Any], result: Any) -> None:
        self._to_loop(self._settle_ask, fut, True, result, None)

    async def db_family(self, family: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """The whole family as a dict (``aemp_green.db_family``), awaited.

        Raises ``aemp_green.Timeout`` after ``timeout`` seconds (no global node answered).

        Example::

            frontends = await node.db_family("web_frontends", timeout=5)
        """
        return cast(dict[str, Any], await self._db_query(globaldb.db_family, family, timeout))

    async def db_keys(self, family: str, timeout: Optional[float] = None) -> list[str]:
        """The keys of ``family`` as a list, awaited.

        Example::

            workers = await node.db_keys("workers", timeout=5)
        """
        return cast(list[str], await self._db_query(globaldb.db_keys, family, timeout))

    async def db_values(self, family: str, timeout: Optional[float] = None) -> list[Any]:
        """The values of ``family`` as a list, awaited.

        Example::

            infos = await node.db_values("workers", timeout=5)
        """
        return cast(list[Any], await self._db_query(globaldb.db_values, family, timeout))

    def _guard(self, hub_guard: Guard) -> Guard:
        """A loop-side guard whose ``cancel()`` cancels ``hub_guard`` in the hub."""
        return Guard(functools.partial(self._post_quietly, Guard.cancel, hub_guard))

    # ------------------------------------------------------------------ anything else
    async def run(
        self, fn: Callable[..., Any], *args: Any, timeout: Optional[float] = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a new greenlet **in the hub thread** and await its
        result (``threaded.Node.submit``): for anything not wrapped here (``spawn``,
        ``up_nodes``, a blocking ``aemp_green.call`` chain, ...). ``Timeout`` after
        ``timeout`` seconds (the greenlet goes on).

        Example::

            nodes = await node.run(aemp_green.up_nodes)
            worker = await node.run(aemp_green.spawn, my_greenlet_function)
        """
        loop = self._here()
        fut = asyncio.wrap_future(self._b.submit(fn, *args, **kwargs), loop=loop)
        self._pending.add(fut)
        try:
            if timeout is None:
                return await fut
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                raise Timeout("run(%r) timed out after %s s" % (fn, timeout)) from None
        finally:
            self._pending.discard(fut)

    # ------------------------------------------------------------------ stopping
    async def shutdown(self, timeout: float = 10) -> None:
        """Shut the node down (listeners and links closed) and end its hub thread.

        Operations already handed over run first; awaits still waiting fail with
        ``RuntimeError``; later calls raise ``RuntimeError``. Idempotent. The process cannot
        start another node afterwards (``configure`` is once per process).

        Example::

            node = await aio.start(nodeid="job/%u")
            try:
                ...
            finally:
                await node.shutdown()
        """
        await self.loop.run_in_executor(None, self._b.stop, timeout)
        self._fail_all()

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()


# --------------------------------------------------------------------------- ports


class Port:
    """A port on the node whose messages the event loop awaits (``Node.port()``).

    ``id`` is the port ID to hand out. ``await receive(tag)`` takes messages selectively
    (like ``aemp_green.receive``); ``async for msg in port`` takes them in order until the
    port is closed. ``close()`` kills the port; a port killed with a reason (``kil`` from
    anywhere) makes waiting and later receives raise ``PortDied``. Any number of tasks may
    wait at once: each message goes to the first waiting task it matches.

    Example::

        port = await node.port()
        node.snd(server, "ping", port.id)
        assert await port.receive("pong", timeout=5) == []
        port.close()
    """

    def __init__(self, node: Node, *, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("use await node.port() to get a Port")
        self.node = node
        self.id = ""
        # (arrival number, message), in arrival order
        self._stash: collections.deque[tuple[int, list[Any]]] = collections.deque()
        self._waiters: list[tuple[Any, asyncio.Future[tuple[int, list[Any]]]]] = []
        self._seq = 0
        self._reason: Optional[tuple[Any, ...]] = None  # set once the port died

    def __repr__(self) -> str:
        return "<aio.Port %s%s>" % (self.id, "" if self._reason is None else " dead")

    # loop thread, from the node's drain
    def _deliver(self, msg: list[Any]) -> None:
        self._seq += 1
        if self._waiters:
            self._give((self._seq, msg))
        else:
            self._stash.append((self._seq, msg))  # the newest: at the end

    def _give(self, item: tuple[int, list[Any]], skip: Any = None) -> None:
        """To the first waiter it matches, or into the stash (in arrival order)."""
        msg = item[1]
        for i, (tag, fut) in enumerate(self._waiters):
            if fut is not skip and not fut.done() and _matches(tag, msg):
                del self._waiters[i]
                fut.set_result(item)
                return
        if not self._stash or self._stash[-1][0] < item[0]:
            self._stash.append(item)
        else:  # a message given back by a cancelled receive: into its place
            insort(self._stash, item, key=_arrival)

    def _died(self, reason: tuple[Any, ...]) -> None:
        self._reason = reason
        waiters, self._waiters = self._waiters, []
        for _tag, fut in waiters:
            if not fut.done():
                fut.set_exception(PortDied.from_reason(reason))

    async def receive(self, tag: Any = None, timeout: Optional[float] = None) -> list[Any]:
        """The next message (whole, as a list) or, with ``tag``, the first whose element 0 is
        ``tag`` (without it); other messages stay queued in order.

        Raises ``aemp_green.Timeout`` after ``timeout`` seconds, ``PortDied(reason)`` once the
        port is dead and holds no matching message (``reason`` is ``()`` after ``close()``),
        ``RuntimeError`` when the node shuts down. A cancelled or timed-out receive takes
        nothing: a message that was already handed to it is queued again.

        Example::

            text, = await port.receive("say", timeout=10)
            tag, *args = await port.receive()
        """
        node = self.node
        stash = self._stash
        if stash:
            if tag is None:
                return stash.popleft()[1]
            for i, (_seq, m) in enumerate(stash):
                if _matches(tag, m):
                    del stash[i]
                    return m[1:]
        if self._reason is not None:
            raise PortDied.from_reason(self._reason)
        loop = node._here()
        fut: asyncio.Future[tuple[int, list[Any]]] = loop.create_future()
        waiter = (tag, fut)
        self._waiters.append(waiter)
        node._pending.add(fut)
        timer = None
        if timeout is not None:
            what = "message" if tag is None else "%r message" % (tag,)
            timer = loop.call_later(
                max(timeout, 0.0), _expire, fut, "no %s within %s s" % (what, timeout)
            )
        try:
            _seq, m = await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._give(fut.result(), skip=fut)  # handed to us, but we are not taking it
            raise
        finally:
            node._pending.discard(fut)
            if timer is not None:
                timer.cancel()
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
        return m if tag is None else m[1:]

    def __aiter__(self) -> Port:
        return self

    async def __anext__(self) -> list[Any]:
        """``async for msg in port``: the messages in order; ends when the port is closed
        (dies without a reason); raises ``PortDied`` when it is killed with one.

        Example::

            async for tag, *args in port:
                print(tag, args)
        """
        try:
            return await self.receive()
        except PortDied as exc:
            if exc.reason:
                raise
            raise StopAsyncIteration from None

    def pending(self) -> int:
        """How many messages are here, not yet received.

        Example::

            while port.pending(): print(await port.receive())
        """
        return len(self._stash)

    def close(self) -> None:
        """Kill the port (a normal exit: its monitors fire with ``()``, waiting receives raise
        ``PortDied(())`` once the messages that arrived before are taken). Idempotent.

        Example::

            port.close()
        """
        if self._reason is None and self.id and self.node.running:
            self.node._post_quietly(kernel.kil, self.id)

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
