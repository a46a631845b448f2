"""logcatcher: collect the log records of every node onto one node (AEMP's LogCatcher).

On the node that wants to see everything::

    from aemp_green import logcatcher
    logcatcher.catch(logging.INFO)     # from now on, every node's INFO+ records show up here
    ...
    logcatcher.catch(None)             # stop

Every record another node produces at ``level`` or above is re-logged here through the
logger of the same name, its message prefixed with ``[<node>±<dt>]``: ``dt`` is how many
seconds before its arrival here it was created there (transit delay plus clock offset).
Re-logged records carry the attributes ``aemp_node`` (origin), ``aemp_created`` (creation
time there) and ``aemp_caught`` (True).

How it works
    * The catching node watches the ``'l`` family (``db_mon``): every node in the network, and
      every node that joins later, gets the node request ``aemp_green.logcatcher._req_catch``
      with the catcher's port and level (``level`` None unsubscribes). The request is a
      function name, so a node that never imported this module loads it on demand. A
      ``secure`` node refuses it (log records tell a lot about a node), unless its setting
      ``allow_trace`` is true, as it refuses ``aemp trace``.
    * A subscribed node installs one ``logging.Handler`` on its root logger (removed again
      when the last subscription ends). It only filters by level and appends to a bounded
      buffer (``BUFFER`` records; when full the oldest is dropped and counted) and wakes a
      sender greenlet: logging never blocks and never waits for the network. The sender
      greenlet ships the buffer as ``["logs", node, dropped, [[created, levelno, name,
      text], ...]]`` batches to every subscribed port.
    * A subscription ends when its port dies, and so also when the catcher's node becomes
      unreachable (the monitor fires): records about that node going away are not shipped
      to it.
    * No feedback loops: records produced while the sender ships a batch (in its greenlet,
      e.g. a connect attempt or a dropped message), records of this module's own logger and
      records that were themselves caught (``aemp_caught``) are never forwarded; the
      catcher skips its own node, whose records are already logged locally.

Note that ``level`` filters; it does not make a node produce records its loggers' levels
suppress.
"""

import logging
import threading
import time
from collections import deque
from typing import Any, Iterable, Optional, Union

import gevent
from greenlet import getcurrent

from . import globaldb, ports
from . import kernel as _k
from ._ratelog import RateLog, esc
from .exceptions import NoDatabaseError

__all__ = ["catch", "ForwardingHandler", "subscribers", "BUFFER", "BATCH"]

logger = logging.getLogger(__name__)

#: records a node keeps for its catchers before it drops the oldest
BUFFER = 1000
#: most records in one "logs" message
BATCH = 200
_TAG = "aemp_green.logcatcher._req_catch"


# =========================================================================== sending side


class ForwardingHandler(logging.Handler):
    """The handler a caught node installs on its root logger (one per process).

    ``emit`` only appends ``[created, levelno, name, text]`` to a bounded deque (dropping and
    counting the oldest when full) and wakes the sender greenlet; it is safe from any thread.
    Records produced by the sender greenlet itself, by this module's logger and records that
    were caught elsewhere are ignored.

    Example::

        h = ForwardingHandler(maxlen=100)
        h.add(catcher_port, logging.INFO)
        logging.getLogger().addHandler(h)
    """

    buffer: deque[list[Any]]
    subs: dict[str, int]
    _sender: Optional[gevent.Greenlet]

    def __init__(self, maxlen: Optional[int] = None) -> None:
        super().__init__(logging.NOTSET)
        self.buffer = deque()
        self.maxlen = int(maxlen or BUFFER)
        self.dropped = 0  # dropped since the last batch went out
        self.dropped_total = 0
        self.subs = {}  # port -> levelno
        self._sender = None
        self._hub = gevent.get_hub()
        self._thread = threading.get_ident()
        self._async = self._hub.loop.async_()
        self._async.start(self._wake)
        self._scheduled = False
        self.setLevel(logging.CRITICAL + 1)

    # -- subscriptions ---------------------------------------------------------------------
    def add(self, port: str, level: int) -> None:
        """Send records at ``level`` or above to ``port``.

        Example::

            h.add("logs/x#ab12", logging.WARNING)   # as the node request _req_catch does
        """
        self.subs[port] = int(level)
        self.setLevel(min(self.subs.values()))

    def remove(self, port: str) -> bool:
        """Stop sending to ``port``; returns True when no subscriber is left.

        Example::

            if h.remove("logs/x#ab12"):            # that was the last subscriber
                logging.getLogger().removeHandler(h)
        """
        self.subs.pop(port, None)
        self.setLevel(min(self.subs.values()) if self.subs else logging.CRITICAL + 1)
        return not self.subs

    # -- logging side ----------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        """Queue ``record`` for the subscribers and wake the sender (never blocks; any thread).

        Example::

            logging.getLogger().addHandler(h)
            logging.getLogger("app").warning("disk full")   # logging calls h.emit(record)
        """
        if (
            getattr(record, "aemp_caught", False)
            or record.name.startswith(__name__)
            or (self._sender is not None and getcurrent() is self._sender)
        ):
            return
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            elif record.exc_text:
                text += "\n" + record.exc_text
            if record.stack_info:
                text += "\n" + record.stack_info
        except Exception:  # a bad format string must not break the application
            text = "%s %% %r" % (record.msg, record.args)
        if len(self.buffer) >= self.maxlen:
            self.buffer.popleft()
            self.dropped += 1
            self.dropped_total += 1
        self.buffer.append([record.created, record.levelno, record.name, text])
        if not self._scheduled:
            self._scheduled = True
            if threading.get_ident() == self._thread:
                self._hub.loop.run_callback(self._wake)
            else:
                self._async.send()

    # -- sender greenlet -------------------------------------------------------------------
    def _wake(self) -> None:
        if self._sender is None or self._sender.dead:
            self._sender = gevent.spawn(self._ship)

    def _ship(self) -> None:
        node = _k.NODE()
        while True:
            self._scheduled = False
            if not (self.buffer and self.subs):
                break
            batch: list[list[Any]] = []
            while self.buffer and len(batch) < BATCH:
                batch.append(self.buffer.popleft())
            dropped, self.dropped = self.dropped, 0
            for port, level in list(self.subs.items()):
                mine = [r for r in batch if r[1] >= level]
                if mine or dropped:
                    try:
                        _k.snd(port, "logs", node, dropped, mine)
                    except Exception:  # unencodable text, ...: never let logging break
                        pass
            gevent.sleep(0)
        if not self.subs:
            self.buffer.clear()

    def close(self) -> None:
        """Stop the cross-thread wake-up watcher, then close as every ``logging.Handler`` does.

        Example::

            logging.getLogger().removeHandler(h)
            h.close()          # as _unsubscribe does when the last subscriber left
        """
        self._async.stop()
        super().close()


_handler: Optional[ForwardingHandler] = None
_sub_guards: dict[Any, Any] = {}  # port -> monitor undo
_max_streams = 16  # setting max_trace_streams
_rl = RateLog(logger)


def set_max_streams(n: Optional[int]) -> None:
    """Subscribe at most ``n`` catcher ports at once (the setting ``max_trace_streams``;
    ``configure`` calls this). Each record costs one message per subscriber.

    Example::

        set_max_streams(4)
    """
    global _max_streams
    if n is not None:
        _max_streams = int(n)


def subscribers() -> dict[str, int]:
    """The catcher ports this node sends its records to, with their levels (a dict).

    Example::

        print(subscribers())     # {'logs/x#ab12': 20}
    """
    return dict(_handler.subs) if _handler is not None else {}


def _req_catch(port: object, level: object = logging.INFO, *_: Any, from_node: str = "?") -> None:
    """Node request (also resolvable by name): subscribe ``port`` at ``level``; None stops."""
    global _handler
    if not isinstance(port, str) or "#" not in port:
        return
    if level is None:
        _unsubscribe(port)
        return
    if not isinstance(level, int) or isinstance(level, bool):
        level = logging.getLevelName(str(level).upper())
        if not isinstance(level, int):
            return
    if port not in _sub_guards and len(_sub_guards) >= _max_streams:
        _rl.warning(
            (from_node, "log streams"),
            "log catch request from %s for %s refused: %d streams already (max_trace_streams)",
            from_node,
            esc(port),
            _max_streams,
        )
        return
    if _handler is None:
        _handler = ForwardingHandler()
        logging.getLogger().addHandler(_handler)
        logger.debug("log forwarding on")
    _handler.add(port, level)
    if port not in _sub_guards:
        _sub_guards[port] = _k.add_monitor(port, lambda *reason: _unsubscribe(port))


def _unsubscribe(port: str) -> None:
    global _handler
    undo = _sub_guards.pop(port, None)
    if undo is not None:
        undo()
    if _handler is not None and _handler.remove(port):
        logging.getLogger().removeHandler(_handler)
        _handler.close()
        _handler = None
        logger.debug("log forwarding off")


# trace=True: a secure node refuses it unless the setting allow_trace is true
_k.register_node_request(
    _TAG, lambda from_node, *args: _req_catch(*args, from_node=from_node), trace=True
)


# =========================================================================== catching side


class _Catcher:
    __slots__ = ("port", "level", "into", "guard", "asked")

    port: Optional[str]
    guard: Any
    asked: set[str]

    def __init__(self, level: int, into: Optional[str]) -> None:
        self.level = level
        self.into = into
        self.asked = set()
        self.port = None
        self.guard = None

    def start(self) -> None:
        self.port = ports.port()
        ports.rcv(self.port, "logs", self.on_logs)
        try:
            self.guard = globaldb.db_mon("'l", self.on_nodes)
        except NoDatabaseError:  # no network to catch from: only records sent to our port
            logger.info("catch: no database (no seeds), so no node is asked for its records")

    def on_nodes(
        self,
        db: Any,
        added: Optional[Iterable[str]],
        changed: Optional[Iterable[str]] = (),
        deleted: Optional[Iterable[str]] = (),
    ) -> None:
        me = _k.NODE()
        for nodeid in list(added or ()) + list(changed or ()):
            if nodeid != me:
                self.asked.add(nodeid)
                _k.snd(nodeid, _TAG, self.port, self.level)
        for nodeid in deleted or ():
            self.asked.discard(nodeid)

    def on_logs(self, node: str, dropped: int, records: Iterable[Any]) -> None:
        now = _now()
        if dropped:
            logging.getLogger(self.into or __name__ + ".remote").warning(
                "[%s] %d log records were dropped there (buffer full)",
                node,
                dropped,
                extra={"aemp_caught": True, "aemp_node": node, "aemp_created": now},
            )
        for created, levelno, name, text in records:
            if levelno < self.level:
                continue
            dt = now - created
            lg = logging.getLogger(self.into or name)
            rec = lg.makeRecord(  # (args None: the message is already formatted)
                lg.name,
                levelno,
                "(%s)" % node,
                0,
                "[%s%+.3f] %s" % (node, dt, text),
                None,  # type: ignore[arg-type]
                None,
            )
            rec.aemp_caught = True
            rec.aemp_node = node
            rec.aemp_created = created
            lg.handle(rec)

    def stop(self) -> None:
        for nodeid in self.asked:
            _k.snd(nodeid, _TAG, self.port, None)
        self.asked.clear()
        if self.guard is not None:
            self.guard.cancel()
        assert self.port is not None  # (start() made it)
        _k.kil(self.port)


def _now() -> float:
    return time.time()


_catcher: Optional[_Catcher] = None


def catch(level: Union[int, str, None] = logging.INFO, into: Optional[str] = None) -> Optional[str]:
    """Collect the log records of every other node at ``level`` or above; ``catch(None)`` stops.

    Nodes joining later are included. Each record is re-logged here through the logger of
    the same name (or the logger ``into``) with ``[<node>±<dt>]`` before its message. Calling
    ``catch`` again changes the level. Needs a configured node (the node list comes from
    the global database). Returns the catcher port ID (None when stopped).

    Example::

        import logging
        logging.basicConfig(level=logging.INFO)
        catch(logging.WARNING)   # "WARNING app: [worker/7Hx+0.002] disk almost full"
        catch(None)
    """
    global _catcher
    if _catcher is not None:
        _catcher.stop()
        _catcher = None
    if level is None:
        return None
    if not isinstance(level, int):
        level = logging.getLevelName(str(level).upper())
        if not isinstance(level, int):
            raise ValueError("unknown log level %r" % (level,))
    _catcher = _Catcher(level, into)
    _catcher.start()
    return _catcher.port


def configured(cfg: dict[str, Any]) -> None:
    """Read this node's settings (``runtime.configure`` calls it): ``max_trace_streams``.

    Example::

        configured({"max_trace_streams": 16})
    """
    set_max_streams(cfg.get("max_trace_streams"))
