"""threaded: run the node in its own OS thread and talk to it safely from any other thread.

For programs that cannot be monkey-patched and do not run on gevent: a Django or Flask app
under a threaded server, a GUI main loop, CPU-bound worker threads. ``start()`` starts one OS
thread that owns a gevent hub, configures the node there and runs it; the returned ``Node``
handle is what every other thread uses::

    from aemp_green import threaded

    node = threaded.start(nodeid="web/%u", seeds=["127.0.0.1:4040"])   # once per process

    def view(request):                          # any thread of the web server
        worker = node.db_keys("workers", timeout=5)[0]
        return node.call(worker, "render", request.path, timeout=10)[0]

How it works: each method packs the operation into the hub thread's queue and wakes the hub
(an ``async`` watcher: the same mechanism as ``loop.run_callback_threadsafe``, but it also
keeps the loop alive and coalesces wake-ups); one "pump" greenlet in the hub thread runs the
operations in the order they were queued, so messages from one thread arrive in the order that
thread sent them. Results come back through ``concurrent.futures.Future``: ``call``,
``db_family`` & co. block only the calling thread (the ``*_async`` forms and ``submit`` return
the future). ``snd`` and ``kil`` never wait, as in AEMP.

**Callbacks run in the hub thread.** The ``cb`` of ``port(cb)``, ``mon``, ``db_mon``, and the
functions given to ``submit``/``run``, run inside the hub thread, in a greenlet, like any
aemp_green code: there they may use the plain ``aemp_green`` API (``snd``, ``call``, ...) and
should not block the thread with unpatched blocking calls or long computations (that would
stall the node). To get messages *into* an ordinary thread, use an ``inbox()``: a port whose
messages land in a thread-safe queue.

**The hub binding.** aemp_green's kernel is bound to the gevent hub of the first thread that
uses it (``_hub.bound_hub()``); the bridge must be that first user, so ``start()`` must come
before any ``configure()``, ``call``, ``after`` ... in the process, and it refuses (with
``RuntimeError``) when the kernel is already bound to another hub, when ``configure()`` already
ran, or when the process is monkey-patched (then threads are greenlets: use ``aemp_green``
directly, see ``aemp_green.monkey``). After ``start()`` only the hub thread may call the plain
``aemp_green`` functions; every other thread goes through the ``Node``. The kernel enforces
this: ``aemp_green.snd``, ``call``, ``port``, ``kil``, ``mon``, ``rcv``, ``spawn``, ``receive``,
``after``, ``cal``, ``configure`` ... called from another thread raise ``RuntimeError`` (naming
the function and both threads) instead of corrupting the hub; docs/running.md ("One thread
owns the node") lists what is and is not checked.

When to use which (docs/running.md has the long version): native greenlets when you write
the program for gevent; ``aemp_green.monkey`` when blocking code should simply cooperate and
the whole program can be patched at start; this bridge when the program's threads must stay
real threads.
"""

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any, Callable, Literal, Optional, cast

import gevent
from gevent import monkey as _gmonkey
from gevent.event import Event

from . import _hub, globaldb, kernel, ports, runtime
from . import config as _config
from ._guard import Guard
from .exceptions import PortDied, Timeout

__all__ = ["start", "current", "Node", "Inbox"]

logger = logging.getLogger(__name__)

#: the futures the bridge hands out (results of hub-side operations)
Future = concurrent.futures.Future[Any]

_HIGH_WATER = 100_000  # queued operations before a flooding thread is held back
_LOW_WATER = 10_000
_BATCH = 256  # operations the pump runs before letting the hub do I/O
_GRACE = 2.0  # seconds a calling thread waits beyond a hub-side timeout

_start_lock = threading.Lock()
_current: Optional["Node"] = None


def current() -> Optional["Node"]:
    """The ``Node`` started by ``start()`` in this process, or None.

    Example::

        node = threaded.current() or threaded.start(nodeid="web/%u")
    """
    return _current


def start(
    profile: Optional[str] = None,
    *,
    thread_name: str = "aemp-hub",
    start_timeout: float = 30,
    **configure_args: Any,
) -> "Node":
    """Start the node's hub in a new OS thread, ``configure()`` it there, return its ``Node``.

    ``profile`` and ``configure_args`` are ``aemp_green.configure``'s. The call waits until the
    node is configured (re-raising a configuration error here) or ``start_timeout`` seconds.
    Once per process, before anything else uses aemp_green; raises ``RuntimeError`` when the
    kernel is already bound to another thread's hub, ``configure()`` already ran, a bridge was
    already started, or the process is monkey-patched. The hub thread is a daemon thread: call
    ``stop()`` for an orderly shutdown (links closed, peers see it at once).

    Example::

        node = threaded.start(nodeid="gui/%u", seeds=["127.0.0.1:4040"], secret="s3cret")
        node.snd(some_port, "hello")
        node.stop()
    """
    global _current
    with _start_lock:
        _check_can_start()
        node = Node(_token=_TOKEN)
        started: concurrent.futures.Future[Any] = concurrent.futures.Future()
        t = threading.Thread(
            target=node._thread_main,
            args=(profile, configure_args, started),
            name=thread_name,
            daemon=True,
        )
        node.thread = t
        t.start()
        try:
            started.result(start_timeout)
        except concurrent.futures.TimeoutError:
            raise RuntimeError(
                "the aemp_green hub thread did not start within %s s" % start_timeout
            ) from None
        _current = node
    return node


def _check_can_start() -> None:
    if _current is not None:
        raise RuntimeError(
            "aemp_green.threaded.start() was already called in this process "
            "(use threaded.current())"
        )
    if _gmonkey.is_module_patched("threading"):
        raise RuntimeError(
            "the process is monkey-patched (threads are greenlets): use the "
            "aemp_green API directly instead of the threaded bridge"
        )
    hub = _hub.current_hub()
    if hub is not None:
        raise RuntimeError(
            "aemp_green is already bound to the gevent hub of thread %s: the threaded bridge "
            "must be the first user of aemp_green in the process (start it before any "
            "configure(), call(), after(), ...)" % getattr(hub, "thread_ident", "?")
        )
    if _config.is_configured():
        raise RuntimeError(
            "configure() already ran in this process: the threaded bridge "
            "configures the node itself (pass the arguments to start())"
        )


_TOKEN = object()


def _stopped_error() -> RuntimeError:
    return RuntimeError("the aemp_green threaded bridge is stopped")


def _node_configured() -> bool:
    return bool(_config.is_configured())


def _new_future() -> Future:
    fut: Future = concurrent.futures.Future()
    fut.set_running_or_notify_cancel()
    return fut


class Node:
    """The handle other threads use to reach the node running in the hub thread (``start()``).

    Every method may be called from any thread. ``snd``/``kil`` return at once; ``call``,
    ``port``, ``db_*`` block the calling thread only; the ``*_async`` variants and ``submit``
    return a ``concurrent.futures.Future``. Callbacks (``port(cb)``, ``mon``, ``db_mon``,
    ``submit``) run in the hub thread. Called from the hub thread itself (inside such a
    callback) the methods run directly.

    Example::

        node = threaded.start(nodeid="app/%u", seeds=["127.0.0.1:4040"])
        inbox = node.inbox()
        node.snd(server, "subscribe", inbox.id)
        print(inbox.receive("news", timeout=10))
    """

    thread: Optional[threading.Thread]
    config: Any
    _ident: Optional[int]
    _hub: Any
    _ops: collections.deque[tuple[Callable[..., Any], tuple[Any, ...], Optional[Future]]]
    _async: Any
    _wakeup: Any
    _stopped: Any
    _pending: set[Future]

    def __init__(self, *, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("use aemp_green.threaded.start() to get a Node")
        self.thread = None
        self.config = None
        self._ident = None
        self._hub = None
        self._ops = collections.deque()
        self._lock = threading.Lock()  # orders "closed" against wake-ups (the watcher's life)
        self._room = threading.Event()
        self._room.set()
        self._closed = False
        self._async = None
        self._wakeup = None
        self._stopped = None
        self._pending = set()  # hub thread only: futures to fail at stop
        self._stop_callbacks: Optional[list[Callable[[], Any]]] = []  # None once they ran

    # ------------------------------------------------------------------ the hub thread
    def _thread_main(
        self, profile: Optional[str], configure_args: dict[str, Any], started: Future
    ) -> None:
        try:
            hub = gevent.get_hub()
            bound = _hub.current_hub()  # (_hub.bound_hub() itself refuses another thread's hub)
            if bound is None:
                bound = _hub.bound_hub()
            if bound is not hub:
                raise RuntimeError(
                    "aemp_green got bound to the hub of thread %s meanwhile"
                    % getattr(bound, "thread_ident", "?")
                )
            self._hub = hub
            self._ident = threading.get_ident()
            self._wakeup = Event()
            self._stopped = Event()
            self._async = hub.loop.async_()  # ref'd: keeps the loop alive while idle
            self._async.start(self._wakeup.set)
            gevent.spawn(self._pump)
            self.config = runtime.configure(profile, **configure_args)
        except BaseException as exc:
            self._close_watcher()
            if _hub.current_hub() is self._hub and not _node_configured():
                _hub.unbind_hub()  # nothing happened yet: a corrected start() may bind again
            started.set_exception(exc)
            return
        started.set_result(self.config)
        self._stopped.wait()
        self._close_watcher()

    def _close_watcher(self) -> None:
        with self._lock:
            self._closed = True
            if self._async is not None:
                self._async.close()
                self._async = None
        self._room.set()

    def _pump(self) -> None:
        ops = self._ops
        wakeup = self._wakeup
        while True:
            wakeup.wait()
            wakeup.clear()
            n = 0
            while ops:
                fn, args, fut = ops.popleft()
                try:
                    fn(*args)
                except BaseException as exc:
                    if fut is None:
                        logger.exception("threaded bridge: %r failed", fn)
                    else:
                        self._resolve(fut, False, exc)
                n += 1
                if n >= _BATCH and ops:
                    if len(ops) < _LOW_WATER:
                        self._room.set()
                    n = 0
                    gevent.sleep(0)  # let the hub do I/O between batches
            self._room.set()

    def _in_hub(self) -> bool:
        return threading.get_ident() == self._ident

    def _post(self, fn: Callable[..., Any], *args: Any, fut: Optional[Future] = None) -> None:
        """Run ``fn(*args)`` in the hub thread's pump greenlet (at once when already there).

        ``fut`` is the future the operation resolves: it fails if the bridge stops first.
        """
        if self._ident is not None and threading.get_ident() == self._ident:
            fn(*args)
            return
        ops = self._ops
        while len(ops) > _HIGH_WATER and not self._closed:  # flow control for flooding threads
            self._room.clear()
            if len(ops) > _HIGH_WATER:
                self._room.wait(0.05)
        with self._lock:
            if self._closed:
                raise _stopped_error()
            ops.append((fn, args, fut))
            self._async.send()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the hub thread soon, after the operations already queued; return
        at once (in the hub thread itself: run it now).

        The building block of the other methods (``snd`` is ``post(aemp_green.snd, ...)``) and
        of bridges built on this one (``aemp_green.aio``). ``fn`` runs in the pump greenlet:
        it may use the plain aemp_green API but must not block (no ``call``, ``receive``,
        blocking ``db_family``: use ``submit`` for those); an exception it raises is logged.
        Raises ``RuntimeError`` once the bridge is stopped.

        Example::

            node.post(aemp_green.snd, worker, "job", 42)   # what node.snd(worker, ...) does
        """
        self._post(fn, *args)

    def on_stop(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` once the node has shut down (in the hub thread, from ``stop()``), or
        at once in the calling thread when it already has.

        Example::

            node.on_stop(lambda: print("the aemp_green node is gone"))
        """
        with self._lock:
            if self._stop_callbacks is not None:
                self._stop_callbacks.append(fn)
                return
        fn()

    def _resolve(self, fut: Future, ok: bool, value: Any) -> None:
        self._pending.discard(fut)
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def _ask(self, fn: Callable[..., Any], *args: Any) -> Future:
        """A future for ``fn(*args)`` run in the pump greenlet (``fn`` must not block)."""
        fut = _new_future()

        def op() -> None:
            try:
                value = fn(*args)
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

        self._post(op, fut=fut)
        return fut

    def _wait(self, fut: Future, timeout: Optional[float] = None, what: str = "operation") -> Any:
        if self._in_hub() and not fut.done():
            raise RuntimeError(
                "a blocking Node method inside the hub thread: use the plain "
                "aemp_green API there (call, db_family, ...)"
            )
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise Timeout("%s timed out after %s s" % (what, timeout)) from None

    # ------------------------------------------------------------------ identity
    @property
    def id(self) -> str:
        """This node's ID (``aemp_green.NODE()``).

        Example::

            print("running as", node.id)
        """
        return kernel.NODE()

    @property
    def running(self) -> bool:
        """True from ``start()`` until ``stop()``.

        Example::

            if node.running: node.snd(p, "ping")
        """
        return not self._closed

    def __repr__(self) -> str:
        return "<threaded.Node %s%s>" % (self.id, "" if self.running else " stopped")

    # ------------------------------------------------------------------ messages
    def snd(self, port: str, *msg: Any) -> None:
        """Send ``msg`` to ``port`` (any node); returns at once, never blocks, as ``aemp_green.snd``.

        Messages one thread sends to one port arrive in the order it sent them.

        Example::

            node.snd(worker, "job", 42, {"size": 3})
        """
        self._post(kernel.snd, port, *msg)

    def kil(self, port: str, *reason: Any) -> None:
        """Kill ``port`` (local or remote) with ``reason``; returns at once.

        Example::

            node.kil(worker)                      # normal exit
            node.kil(worker, "shutdown", "bye")   # a crash reason
        """
        self._post(kernel.kil, port, *reason)

    def call_async(self, port: str, *msg: Any, timeout: Optional[float] = None) -> Future:
        """``call`` that returns a ``concurrent.futures.Future`` of the reply list.

        The future fails with ``aemp_green.Timeout``, ``aemp_green.PortDied`` or, once the
        bridge stopped, ``RuntimeError``.

        Example::

            futs = [node.call_async(w, "job", i, timeout=10) for i, w in enumerate(workers)]
            results = [f.result() for f in futs]
        """
        fut = _new_future()
        if self._in_hub():
            self._call_op(fut, port, msg, timeout)
        else:
            self._post(self._call_op, fut, port, msg, timeout, fut=fut)
        return fut

    def call(self, port: str, *msg: Any, timeout: Optional[float] = None) -> list[Any]:
        """Send ``msg`` plus a reply port to ``port`` and block this thread until the reply.

        Returns the reply as a list; raises ``aemp_green.Timeout`` after ``timeout`` seconds
        and ``aemp_green.PortDied(reason)`` when ``port`` dies (or its node becomes
        unreachable) first. Only the calling thread waits.

        Example::

            total = node.call(adder, "add", 1, 2, timeout=5)[0]
        """
        if self._in_hub():
            return ports.call(port, *msg, timeout=timeout)
        fut = self.call_async(port, *msg, timeout=timeout)
        return cast(
            list[Any],
            self._wait(fut, None if timeout is None else timeout + _GRACE, "call to %s" % (port,)),
        )

    def _call_op(
        self, fut: Future, port: str, msg: tuple[Any, ...], timeout: Optional[float]
    ) -> None:
        """Hub side of ``call``: a reply port, a monitor and a timer; never blocks."""
        state: dict[str, Any] = {"done": False, "guard": None, "timer": None, "reply": None}

        def finish(ok: bool, value: Any) -> None:
            if state["done"]:
                return
            state["done"] = True
            if state["reply"] is not None:
                kernel.kil(state["reply"])
            if state["guard"] is not None:
                state["guard"].cancel()
            if state["timer"] is not None:
                state["timer"].close()
            self._resolve(fut, ok, value)

        self._pending.add(fut)
        try:
            state["reply"] = ports.port(lambda *r: finish(True, list(r)))
            if timeout is not None:
                timer = state["timer"] = self._hub.loop.timer(max(float(timeout), 0.0))
                timer.start(
                    finish,
                    False,
                    Timeout("call to %s timed out after %s s" % (port, timeout)),
                    update=True,  # from now, not the loop's cached time
                )
            guard = kernel.mon(port, lambda *reason: finish(False, PortDied.from_reason(reason)))
            if state["done"]:
                guard.cancel()
                return
            state["guard"] = guard
            kernel.snd(port, *msg, state["reply"])
        except BaseException as exc:
            finish(False, exc)

    # ------------------------------------------------------------------ ports
    def port(self, cb: Optional[Callable[..., Any]] = None) -> str:
        """Create a callback port in the hub thread and return its ID; ``cb(*msg)`` is its
        catch-all handler and **runs in the hub thread** (use ``inbox()`` to get messages in
        your own thread).

        Example::

            p = node.port(lambda *msg: print("got", msg))   # printed by the hub thread
            node.snd(p, "hello")
        """
        if self._in_hub():
            return ports.port(cb)
        return cast(str, self._wait(self._ask(ports.port, cb)))

    def inbox(self) -> "Inbox":
        """A port whose messages queue up for the calling thread(s): see ``Inbox``.

        Example::

            inbox = node.inbox()
            node.snd(server, "subscribe", inbox.id)
            tag, *args = inbox.receive(timeout=5)
        """
        q: queue.Queue[list[Any]] = queue.Queue()
        return Inbox(self, self.port(lambda *msg: q.put(list(msg))), q)

    def mon(self, port: str, cb: Callable[..., Any]) -> Guard:
        """Monitor ``port``: ``cb(*reason)`` runs once **in the hub thread** when it dies.

        Returns a guard with aemp_green's rules: ``cancel()`` (or the end of a ``with`` block)
        stops monitoring; dropping it stops nothing.

        Example::

            node.mon(worker, lambda *reason: print("worker died:", reason))
        """
        return self._bridge_guard(kernel.mon, port, cb)

    # ------------------------------------------------------------------ database
    def db_set(self, family: str, key: str, value: Any = None) -> Guard:
        """``aemp_green.db_set`` from any thread; returns once the hub applied it.

        Returns a guard with aemp_green's rules: ``cancel()`` (or the end of a ``with`` block)
        deletes the entry; otherwise it stays until ``db_del`` or the node goes down.

        Example::

            node.db_set("web_frontends", node.id, {"url": "http://10.0.0.5:8000/"})
        """
        return self._bridge_guard(globaldb.db_set, family, key, value)

    def db_reg(self, family: str, port: str, value: Any = None) -> Guard:
        """``aemp_green.db_reg``: register ``port`` in ``family`` until the port dies.

        Example::

            inbox = node.inbox()
            node.db_reg("listeners", inbox.id)
        """
        return self._bridge_guard(globaldb.db_reg, family, port, value)

    def db_del(self, family: str, *keys: str) -> Any:
        """``aemp_green.db_del`` from any thread (returns once applied).

        Example::

            node.db_del("web_frontends", node.id)
        """
        if self._in_hub():
            return globaldb.db_del(family, *keys)
        return self._wait(self._ask(globaldb.db_del, family, *keys))

    def db_mon(self, family: str, cb: Callable[..., Any]) -> Guard:
        """``aemp_green.db_mon``: ``cb(family_dict, added, changed, deleted)`` **in the hub
        thread** on every change of ``family``; returns a guard.

        Example::

            node.db_mon("workers", lambda db, added, changed, deleted: print(sorted(db)))
        """
        return self._bridge_guard(globaldb.db_mon, family, cb)

    def _db_query(self, name: str, family: str, timeout: Optional[float]) -> Any:
        fn = getattr(globaldb, name)
        if self._in_hub():
            return fn(family, timeout=timeout)
        fut = _new_future()

        def op() -> None:
            self._pending.add(fut)
            try:
                fn(family, cb=lambda result: self._resolve(fut, True, result))
            except BaseException as exc:
                self._resolve(fut, False, exc)

        self._post(op, fut=fut)
        return self._wait(fut, timeout, "%s(%r)" % (name, family))

    def db_family(self, family: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """The whole family as a dict (``aemp_green.db_family``), blocking this thread only.

        Raises ``aemp_green.Timeout`` after ``timeout`` seconds.

        Example::

            frontends = node.db_family("web_frontends", timeout=5)
        """
        return cast(dict[str, Any], self._db_query("db_family", family, timeout))

    def db_keys(self, family: str, timeout: Optional[float] = None) -> list[str]:
        """The keys of ``family`` as a list, blocking this thread only.

        Example::

            workers = node.db_keys("workers", timeout=5)
        """
        return cast(list[str], self._db_query("db_keys", family, timeout))

    def db_values(self, family: str, timeout: Optional[float] = None) -> list[Any]:
        """The values of ``family`` as a list, blocking this thread only.

        Example::

            infos = node.db_values("workers", timeout=5)
        """
        return cast(list[Any], self._db_query("db_values", family, timeout))

    def _bridge_guard(self, fn: Callable[..., Guard], *args: Any) -> Guard:
        """Run ``fn(*args)`` (it returns a guard) in the hub; give the caller's caller a guard
        whose cancel is marshalled back into the hub."""
        if self._in_hub():
            hub_guard = _returned(fn, *args)
        else:
            hub_guard = self._wait(self._ask(_returned, fn, *args))

        def undo() -> None:
            if self._closed:
                return
            try:
                self._post(hub_guard.cancel)
            except RuntimeError:  # stopped meanwhile
                pass

        return Guard.for_caller(undo, depth=3)

    # ------------------------------------------------------------------ anything else
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` in a new greenlet **in the hub thread**; return a
        ``concurrent.futures.Future`` of its result.

        ``fn`` may use the whole aemp_green API, blocking forms included (``call``,
        ``receive``, ``db_family``): it blocks its greenlet, not the hub.

        Example::

            fut = node.submit(aemp_green.spawn, my_greenlet_port_function)
            print("spawned", fut.result(5))
        """
        fut = _new_future()

        def runner() -> None:
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:
                self._resolve(fut, False, exc)
            else:
                self._resolve(fut, True, value)

        def op() -> None:
            self._pending.add(fut)
            gevent.spawn(runner)

        self._post(op, fut=fut)
        return fut

    def run(
        self, fn: Callable[..., Any], *args: Any, timeout: Optional[float] = None, **kwargs: Any
    ) -> Any:
        """``submit(fn, *args, **kwargs)`` and wait for the result (``aemp_green.Timeout``
        after ``timeout`` seconds). Inside the hub thread it just calls ``fn``.

        Example::

            nodes = node.run(aemp_green.up_nodes)
        """
        if self._in_hub():
            return fn(*args, **kwargs)
        return self._wait(self.submit(fn, *args, **kwargs), timeout, "run(%r)" % (fn,))

    # ------------------------------------------------------------------ stopping
    def stop(self, timeout: Optional[float] = 10) -> None:
        """Shut the node down (listeners and links closed) and end the hub thread.

        Operations queued before ``stop()`` run first; futures still waiting fail with
        ``RuntimeError``; later calls raise ``RuntimeError``. Idempotent; not from the hub
        thread. The process cannot start another node afterwards (``configure`` is once per
        process).

        Example::

            node = threaded.start(nodeid="job/%u")
            try:
                ...
            finally:
                node.stop()
        """
        if self._in_hub():
            raise RuntimeError("stop() from the hub thread would wait for itself")
        if self._closed:
            if self.thread is not None:
                self.thread.join(timeout)
            return
        try:
            self._wait(self._ask(self._stop_op), timeout, "stop()")
        except RuntimeError:  # stopped concurrently
            pass
        if self.thread is not None:
            self.thread.join(timeout)

    def _stop_op(self) -> None:
        with self._lock:  # from now on _post refuses
            self._closed = True
        while self._ops:  # queued after stop() began: never run
            _fn, _args, fut = self._ops.popleft()
            if fut is not None:
                self._resolve(fut, False, _stopped_error())
        for _ in range(3):  # let link writers flush what was sent before stop()
            gevent.sleep(0)
        runtime.shutdown()
        for fut in list(self._pending):
            self._resolve(fut, False, _stopped_error())
        with self._lock:
            callbacks, self._stop_callbacks = self._stop_callbacks or [], None
        for fn in callbacks:
            try:
                fn()
            except Exception:
                logger.exception("threaded bridge: on_stop callback %r failed", fn)
        self._stopped.set()

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.stop()
        return False


def _returned(fn: Callable[..., Guard], *args: Any) -> Guard:
    # a guard undoes only on cancel() (the bridge guard's undo calls it), never when dropped
    return fn(*args)


class Inbox:
    """A port whose messages are queued for ordinary threads (``Node.inbox()``).

    ``id`` is the port ID to hand out; ``receive`` blocks the calling thread (selectively by
    tag, like ``aemp_green.receive``); ``close()`` kills the port. Meant for one reading thread
    at a time (concurrent readers are safe but share the queue).

    Example::

        inbox = node.inbox()
        node.snd(server, "ping", inbox.id)
        assert inbox.receive("pong", timeout=5) == []
        inbox.close()
    """

    _stash: list[list[Any]]

    def __init__(self, node: Node, port_id: str, q: "queue.Queue[list[Any]]") -> None:
        self.node = node
        self.id = port_id
        self._q = q
        self._stash = []  # received but not yet matched (selective receive)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "<Inbox %s>" % (self.id,)

    def receive(self, tag: Any = None, timeout: Optional[float] = None) -> list[Any]:
        """The next message (whole, as a list) or, with ``tag``, the first one whose element 0
        is ``tag`` (without it); other messages stay queued in order. Raises
        ``aemp_green.Timeout`` after ``timeout`` seconds.

        Example::

            text, = inbox.receive("say", timeout=10)
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            for i, m in enumerate(self._stash):
                if tag is None or (m and m[0] == tag):
                    del self._stash[i]
                    return m if tag is None else m[1:]
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    m = self._q.get(timeout=left)
                except queue.Empty:
                    raise Timeout(
                        "no %s within %s s"
                        % ("message" if tag is None else "%r message" % (tag,), timeout)
                    ) from None
                if tag is None or (m and m[0] == tag):
                    return m if tag is None else m[1:]
                self._stash.append(m)

    def pending(self) -> int:
        """How many messages are waiting (not yet received).

        Example::

            if inbox.pending(): print(inbox.receive())
        """
        with self._lock:
            return len(self._stash) + self._q.qsize()

    def close(self) -> None:
        """Kill the port (monitors on it fire with a normal exit).

        Example::

            inbox.close()
        """
        if self.node.running:
            self.node.kil(self.id)
