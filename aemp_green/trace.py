"""trace: watching every frame this node sends and receives.

``add_tracer(fn)`` calls ``fn(direction, nodeid, frame)`` for each frame ("SND" or "RCV");
``node`` calls ``trace`` on its send and receive paths only while ``tracers`` is not empty (one
truth test otherwise). ``PERL_ANYEVENT_MP_TRACE=1`` installs ``print_tracer`` (``configure``
does), and the node request ``aemp_green_trace`` streams the frames to a port on another node
(``aemp trace NODE``), refused by a ``secure`` node unless ``allow_trace``.

Example::

    guard = add_tracer(lambda d, node, frame: print(d, node, frame))
"""

import logging
from typing import Any, Callable

from greenlet import getcurrent, greenlet

from . import config as _config
from . import kernel as _k
from ._guard import Guard
from ._ratelog import RateLog, esc, exc_text

__all__ = ["add_tracer", "trace", "tracers", "print_tracer"]

logger = logging.getLogger(__name__)
_rl = RateLog(logger)
_cfg = _config.active  # this node's settings (configure fills the dict in place)


tracers: list[
    Callable[[str, str, Any], Any]
] = []  # callables (direction, nodeid, frame); empty = no cost but one truth test


def add_tracer(fn: Callable[[str, str, Any], Any]) -> Guard:
    """Call ``fn(direction, nodeid, frame)`` for every frame sent ("SND") or received ("RCV").

    Returns a guard that removes it. ``PERL_ANYEVENT_MP_TRACE=1`` installs one that prints
    each frame as JSON, like AEMP; ``aemp trace NODE`` streams them from another node.

    Example::

        add_tracer(lambda d, node, frame: print(d, node, frame))
    """
    tracers.append(fn)

    def undo() -> None:
        if fn in tracers:
            tracers.remove(fn)

    return Guard.for_caller(undo)


_tracing: set[greenlet] = set()  # greenlets running the tracers: what tracers send is not traced


def trace(direction: str, nodeid: str, frame: Any) -> None:
    # Not re-entrant: a frame that a tracer sends (a trace stream to a subscriber) is not
    # traced again, so two subscriptions cannot feed each other. A tracer that fails is
    # removed (once, however the failures nest) and logged in one line.
    cur = getcurrent()
    if cur in _tracing:
        return
    _tracing.add(cur)
    try:
        for fn in list(tracers):
            try:
                fn(direction, nodeid, frame)
            except Exception as exc:
                if fn in tracers:
                    tracers.remove(fn)
                    _rl.error(
                        ("tracer", "failed"),
                        "tracer %s failed and was removed: %s",
                        esc(fn),
                        exc_text(exc),
                    )
    finally:
        _tracing.discard(cur)


def print_tracer(direction: str, nodeid: str, frame: Any) -> None:
    import json
    import sys

    arrow = "<-" if direction == "SND" else "->"
    shown = [None if i == 0 and x == "" else x for i, x in enumerate(frame)]
    sys.stderr.write(
        "%s %s %s %s\n"
        % (direction, nodeid, arrow, json.dumps(shown, ensure_ascii=False, default=repr))
    )


_trace_subscribers: dict[
    str, Callable[[], None]
] = {}  # port -> cancel function (stops the stream and its monitor)


def _req_trace(from_node: str, port: Any, on: Any = 1, *_: Any) -> None:
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

    def forward(direction: str, nodeid: str, frame: Any) -> None:
        if frame and frame[0] == port.partition("#")[2] and nodeid == _node_of_port(port):
            return  # never trace the trace stream itself
        _k.snd(port, "trace", direction, nodeid, list(frame))

    def cancel() -> None:
        if forward in tracers:
            tracers.remove(forward)
        undo_monitor()

    tracers.append(forward)
    _trace_subscribers[port] = cancel
    undo_monitor = _k.add_monitor(port, lambda *r: _req_trace(from_node, port, 0))


def _node_of_port(port: str) -> str:
    return port.partition("#")[0]


# a secure node refuses it unless the setting allow_trace is true (kernel.node_request)
_k.register_node_request("aemp_green_trace", _req_trace, trace=True)
