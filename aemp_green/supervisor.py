"""supervisor: Erlang-style supervision trees built on ``mon``.

A supervisor is a port that starts child ports, monitors them and restarts them when they
end, by a strategy::

    from aemp_green import supervisor

    sup = supervisor.start([
        supervisor.child_spec("db", db_server),                  # a local function
        supervisor.child_spec("chat", "chatapp.server.run", "lobby",
                              nodes=["chat1", "chat2"],          # first choice, fallback
                              register="chat_server"),           # db_reg'ed for clients
    ], strategy="rest_for_one", max_restarts=3, period=5)

Children
    A child spec (``child_spec``, or a plain dict with the same keys, so specs travel as
    JSON) names the child (``id``), how to start it (``start``: a callable, started with
    ``spawn(fn, *args)`` on this node; or a function name, started with
    ``spawn(node, name, *args)``), the candidate ``nodes`` for named functions (default:
    this node), the ``restart`` type and an optional ``register`` family. Each start makes a
    new port, an *incarnation*; when ``register`` is set the supervisor ``db_reg``s the
    current incarnation's port in that family (value: the child id), so clients find it with
    ``db_mon``/``db_keys`` and the entry disappears when that incarnation dies.

Restart types (as Erlang)
    ``permanent`` (default): always restarted; ``transient``: restarted only when it ended
    with a reason (a crash), not after a normal exit; ``temporary``: never restarted, its
    spec is forgotten when it ends.

Strategies
    ``one_for_one``: only the child that ended is restarted. ``one_for_all``: every other
    running child is stopped (in reverse start order) and all are started again in order.
    ``rest_for_one``: the children started after it are stopped (in reverse order) and they
    and it are started again in order. Children the supervisor stops get
    ``kil(child, "shutdown")``; their monitors were removed first, so that never counts as a
    failure.

Placement
    A child with candidate ``nodes`` starts on the first of them that is up (or not known to
    be down). A restart stays on the node the child ran on, unless that node is down: a
    child whose reason was ``("transport_error", node, ...)`` (its node died or became
    unreachable) is restarted on another candidate.

Restart intensity
    More than ``max_restarts`` restart events (one per ended child, however many siblings
    the strategy restarts) within ``period`` seconds and the supervisor gives up: it stops
    every child and dies with ``("shutdown", "max_restarts", child_id, [reason...])``, which
    its own monitors (a parent supervisor, say) see.

A supervisor that dies for any other reason (``kil``, or ``stop``) stops its children first.
Supervisors nest: a child may itself be a supervisor (``start=supervisor.supervise`` with the
children as first argument, or ``"aemp_green.supervisor.supervise"`` on another node).

Every request below (``which_children`` ...) is an ordinary message to the supervisor port,
``[tag, *args, reply_port]``, so any node (Perl too) can send it.
"""

import logging
import time
from collections import deque
from typing import Any, Callable, Iterable, Optional, TypeAlias, Union, cast

from . import kernel as _k
from . import ports as _p
from ._guard import Guard
from .globaldb import db_reg
from .node import node_is_up

__all__ = [
    "start",
    "supervise",
    "child_spec",
    "which_children",
    "start_child",
    "terminate_child",
    "restart_child",
    "delete_child",
    "stop",
    "STRATEGIES",
    "RESTART_TYPES",
]

logger = logging.getLogger(__name__)

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_clock = time.monotonic  # restart intensity clock (tests replace it)
RESTART_TYPES = ("permanent", "transient", "temporary")

#: a child spec as ``child_spec`` makes it (a dict with keys id, start, args, nodes, restart,
#: register)
ChildSpec: TypeAlias = dict[str, Any]


def child_spec(
    id: str,
    start: Union[str, Callable[..., Any]],
    *args: Any,
    nodes: Optional[Iterable[str]] = None,
    restart: str = "permanent",
    register: Optional[str] = None,
) -> ChildSpec:
    """A child spec (a dict) for ``start``/``supervise``/``start_child``.

    ``start`` is a callable (runs on the supervisor's node) or a function name
    ``"pkg.mod.func"`` started with ``spawn(node, name, *args)`` on the first usable node of
    ``nodes`` (default: the supervisor's node). ``restart`` is ``"permanent"``,
    ``"transient"`` or ``"temporary"``; ``register`` a database family in which the current
    incarnation's port is registered (``db_reg``, value: ``id``).

    Example::

        child_spec("chat", "chatapp.server.run", "lobby", nodes=["chat1", "chat2"],
                   register="chat_server")
    """
    return {
        "id": id,
        "start": start,
        "args": list(args),
        "nodes": nodes,
        "restart": restart,
        "register": register,
    }


class _Child:
    __slots__ = (
        "id",
        "start",
        "args",
        "nodes",
        "restart",
        "register",
        "port",
        "node",
        "inc",
        "undo_mon",
        "reg",
    )

    id: str
    start: Union[str, Callable[..., Any]]
    args: list[Any]
    nodes: Optional[list[str]]
    restart: str
    register: Optional[str]
    port: Optional[str]
    node: Optional[str]
    inc: int
    undo_mon: Optional[Callable[[], None]]
    reg: Optional[Guard]

    def __init__(self, spec: ChildSpec) -> None:
        if not isinstance(spec, dict):
            raise TypeError("child spec must be a dict (see child_spec), not %r" % (spec,))
        unknown = set(spec) - {"id", "start", "args", "nodes", "restart", "register"}
        if unknown:
            raise ValueError("unknown child spec keys %s" % sorted(unknown))
        self.id = spec.get("id")  # type: ignore[assignment]  # (checked below)
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("child spec needs a string id, not %r" % (self.id,))
        self.start = spec.get("start")  # type: ignore[assignment]  # (checked below)
        if not (callable(self.start) or isinstance(self.start, str)):
            raise ValueError("child %r: start must be a callable or a function name" % self.id)
        self.args = list(spec.get("args") or ())
        self.nodes = list(spec.get("nodes") or ()) or None
        if self.nodes and callable(self.start):
            raise ValueError(
                "child %r: a callable runs locally; use a function name to run "
                "it on other nodes" % self.id
            )
        self.restart = spec.get("restart") or "permanent"
        if self.restart not in RESTART_TYPES:
            raise ValueError("child %r: restart must be one of %s" % (self.id, RESTART_TYPES))
        self.register = spec.get("register")
        self.port = self.node = None
        self.inc = 0
        self.undo_mon = None
        self.reg = None

    def info(self) -> list[Any]:
        return [self.id, self.port, self.node]


class _Supervisor:
    children: list[_Child]
    restarts: deque[float]

    def __init__(
        self,
        pid: str,
        children: Optional[Iterable[ChildSpec]],
        strategy: str,
        max_restarts: int,
        period: float,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError("strategy must be one of %s, not %r" % (STRATEGIES, strategy))
        self.id = pid
        self.strategy = strategy
        self.max_restarts = int(max_restarts)
        self.period = float(period)
        self.children = []
        for spec in children or ():
            self._add(_Child(spec))
        self.restarts = deque()
        self.dead = False

    def _add(self, ch: _Child) -> None:
        if any(c.id == ch.id for c in self.children):
            raise ValueError("duplicate child id %r" % ch.id)
        self.children.append(ch)

    def _get(self, cid: str) -> Optional[_Child]:
        for c in self.children:
            if c.id == cid:
                return c
        return None

    # -- starting and stopping children ----------------------------------------------------
    def _pick_node(self, ch: _Child, avoid: Optional[str]) -> str:
        me = _k.NODE()
        cands = ch.nodes or [me]

        def state(n: str) -> int:  # 0 up, 1 unknown, 2 known down
            if n == me:
                return 0
            up = node_is_up(n)
            return 0 if up else 1 if up is None else 2

        usable = [n for n in cands if n != avoid] or list(cands)
        if ch.node in usable and state(ch.node) == 0:
            return ch.node  # stay where it ran
        return min(usable, key=lambda n: (state(n), usable.index(n)))

    def _start(self, ch: _Child, avoid: Optional[str] = None) -> str:
        ch.inc += 1
        if callable(ch.start):
            pid = _p.spawn(ch.start, *ch.args)
            ch.node = _k.NODE()
        else:
            node = self._pick_node(ch, avoid)
            pid = _p.spawn(node, ch.start, *ch.args)
            ch.node = node
        ch.port = pid
        inc, cid = ch.inc, ch.id
        ch.undo_mon = _k.add_monitor(
            pid, lambda *reason: _k.snd(self.id, "_sup_down", cid, inc, *reason)
        )
        if ch.register:
            ch.reg = db_reg(ch.register, pid, cid)
        logger.debug("supervisor %s: started %s as %s on %s", self.id, cid, pid, ch.node)
        return pid

    def _stop(self, ch: _Child) -> None:
        """Stop a running child on purpose (no restart): unmonitor, unregister, kill."""
        pid = ch.port
        if pid is None:
            return
        ch.port = None
        if ch.undo_mon is not None:
            ch.undo_mon()
            ch.undo_mon = None
        if ch.reg is not None:
            ch.reg.cancel()
            ch.reg = None
        _k.kil(pid, "shutdown")

    def _stop_all(self, children: Optional[list[_Child]] = None) -> None:
        for ch in reversed(children if children is not None else self.children):
            self._stop(ch)

    # -- a child ended ---------------------------------------------------------------------
    def on_down(self, cid: str, inc: int, *reason: Any) -> None:
        ch = self._get(cid)
        if ch is None or inc != ch.inc or ch.port is None or self.dead:
            return  # an incarnation we stopped ourselves, or long gone
        ch.port = None
        ch.undo_mon = None
        ch.reg = None
        if reason:
            logger.warning("supervisor %s: child %s ended: %r", self.id, cid, reason)
        if ch.restart == "temporary" or (ch.restart == "transient" and not reason):
            if ch.restart == "temporary":
                self.children.remove(ch)
            return
        now = _clock()
        self.restarts.append(now)
        while self.restarts and self.restarts[0] < now - self.period:
            self.restarts.popleft()
        if len(self.restarts) > self.max_restarts:
            self.give_up(ch, reason)
            return
        avoid = reason[1] if len(reason) > 1 and reason[0] == "transport_error" else None
        if self.strategy == "one_for_one":
            again = [ch]
        else:
            i = self.children.index(ch)
            others = self.children if self.strategy == "one_for_all" else self.children[i + 1 :]
            others = [c for c in others if c is not ch and c.port is not None]
            self._stop_all(others)
            again = [c for c in self.children if c is ch or c in others]
        for c in again:
            self._start(c, avoid)

    def give_up(self, ch: _Child, reason: _k.Reason) -> None:
        logger.error(
            "supervisor %s: more than %d restarts in %g s (last: %s %r): giving up",
            self.id,
            self.max_restarts,
            self.period,
            ch.id,
            reason,
        )
        self.dead = True
        self._stop_all()
        _k.kil(self.id, "shutdown", "max_restarts", ch.id, list(reason))

    def on_own_death(self, *reason: Any) -> None:
        self.dead = True
        self._stop_all()

    # -- requests --------------------------------------------------------------------------
    def which_children(self, *reply: Any) -> None:
        if reply:
            _k.snd(*reply, [c.info() for c in self.children])

    def start_child(self, spec: ChildSpec, *reply: Any) -> None:
        try:
            ch = _Child(spec)
            self._add(ch)
        except (TypeError, ValueError) as exc:
            if reply:
                _k.snd(*reply, "error", str(exc))
            return
        pid = self._start(ch)
        if reply:
            _k.snd(*reply, "ok", pid)

    def terminate_child(self, cid: str, *reply: Any) -> None:
        ch = self._get(cid)
        if ch is not None:
            self._stop(ch)
        if reply:
            _k.snd(*reply, *(("ok",) if ch is not None else ("error", "no such child")))

    def restart_child(self, cid: str, *reply: Any) -> None:
        ch = self._get(cid)
        if ch is None:
            answer = ("error", "no such child")
        elif ch.port is not None:
            answer = ("error", "running")
        else:
            answer = ("ok", self._start(ch))
        if reply:
            _k.snd(*reply, *answer)

    def delete_child(self, cid: str, *reply: Any) -> None:
        ch = self._get(cid)
        answer: tuple[str, ...]
        if ch is None:
            answer = ("error", "no such child")
        elif ch.port is not None:
            answer = ("error", "running")
        else:
            self.children.remove(ch)
            answer = ("ok",)
        if reply:
            _k.snd(*reply, *answer)

    def unexpected(self, *msg: Any) -> None:
        logger.warning("supervisor %s: unexpected message %r ignored", self.id, msg[:1])


def supervise(
    children: Iterable[ChildSpec],
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    period: float = 5.0,
) -> None:
    """Make the current port (``SELF()``) a supervisor of ``children`` and start them.

    The AEMP style: call it in a port (a spawned function, typically), it installs the
    supervisor's handlers on ``SELF`` and returns; the port lives on as the supervisor. This
    is also what ``spawn(node, "aemp_green.supervisor.supervise", [spec, ...], ...)`` runs on
    another node (the specs then must use function names). Raises ``ValueError`` for a bad
    spec or strategy (the port then dies with that reason).

    Example::

        def my_app() -> None:
            supervise([child_spec("worker", worker_loop)], strategy="one_for_one")
        sup = spawn(my_app)
    """
    pid = _p.SELF()
    sup = _Supervisor(pid, children, strategy, max_restarts, period)
    _p.rcv(pid, sup.unexpected)
    _p.rcv(
        pid,
        "_sup_down",
        sup.on_down,
        "which_children",
        sup.which_children,
        "start_child",
        sup.start_child,
        "terminate_child",
        sup.terminate_child,
        "restart_child",
        sup.restart_child,
        "delete_child",
        sup.delete_child,
    )
    _k.add_monitor(pid, sup.on_own_death)
    for ch in list(sup.children):
        sup._start(ch)


def start(
    children: Iterable[ChildSpec],
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    period: float = 5.0,
) -> str:
    """Start a supervisor port on this node; returns its port ID (see the module docstring).

    ``children`` is a list of ``child_spec`` dicts, started in order. ``strategy`` is
    ``"one_for_one"``, ``"one_for_all"`` or ``"rest_for_one"``; more than ``max_restarts``
    restarts within ``period`` seconds make the supervisor stop its children and die with
    ``("shutdown", "max_restarts", child_id, [reason...])``.

    Example::

        sup = start([child_spec("a", worker_a), child_spec("b", worker_b)],
                    strategy="one_for_all", max_restarts=5, period=10)
        mon(sup, lambda *reason: print("supervisor gave up:", reason))
    """
    _Supervisor("", children, strategy, max_restarts, period)  # validate in the caller
    return _p.spawn(supervise, children, strategy, max_restarts, period)


def _call(sup: str, *msg: Any, timeout: Optional[float]) -> list[Any]:
    return _p.call(sup, *msg, timeout=timeout)


def which_children(sup: str, timeout: Optional[float] = 5) -> list[list[Any]]:
    """The supervisor's children as ``[[id, port_or_None, node_or_None], ...]`` in start order.

    Blocks the calling greenlet (``call``); raises ``Timeout``/``PortDied``.

    Example::

        for cid, port, node in which_children(sup):
            print(cid, "runs as", port, "on", node)
    """
    return cast(list[list[Any]], _call(sup, "which_children", timeout=timeout)[0])


def start_child(sup: str, spec: ChildSpec, timeout: Optional[float] = 5) -> str:
    """Add a child spec to a running supervisor and start it; returns its port ID.

    Raises ``ValueError`` for a bad or duplicate spec. Names only when the supervisor runs on
    another node (a callable cannot travel).

    Example::

        port = start_child(sup, child_spec("extra", "myapp.worker", 3))
    """
    with _k.local_only():  # a callable start is for a supervisor on this node (documented)
        r = _call(sup, "start_child", spec, timeout=timeout)
    if r[0] != "ok":
        raise ValueError(r[1])
    return cast(str, r[1])


def terminate_child(sup: str, cid: str, timeout: Optional[float] = 5) -> None:
    """Stop child ``cid`` (killed with ``"shutdown"``, not restarted); its spec stays.

    Example::

        terminate_child(sup, "worker")
        restart_child(sup, "worker")
    """
    r = _call(sup, "terminate_child", cid, timeout=timeout)
    if r[0] != "ok":
        raise KeyError(cid)


def restart_child(sup: str, cid: str, timeout: Optional[float] = 5) -> str:
    """Start a stopped child (``terminate_child``, or a transient one that ended normally).

    Returns the new port ID; raises ``KeyError`` for an unknown id and ``ValueError`` if it
    is running.

    Example::

        new_port = restart_child(sup, "worker")
    """
    r = _call(sup, "restart_child", cid, timeout=timeout)
    if r[0] == "ok":
        return cast(str, r[1])
    if r[1] == "running":
        raise ValueError("child %r is running" % (cid,))
    raise KeyError(cid)


def delete_child(sup: str, cid: str, timeout: Optional[float] = 5) -> None:
    """Forget the spec of a stopped child.

    Example::

        terminate_child(sup, "worker"); delete_child(sup, "worker")
    """
    r = _call(sup, "delete_child", cid, timeout=timeout)
    if r[0] == "ok":
        return
    if r[1] == "running":
        raise ValueError("child %r is running" % (cid,))
    raise KeyError(cid)


def stop(sup: str) -> None:
    """Stop a supervisor: it stops its children (reverse start order), then its port ends.

    Example::

        stop(sup)
    """
    _k.kil(sup)
