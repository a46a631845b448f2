"""_hub: which OS thread owns the node (docs/running.md, "One thread owns the node").

gevent loops are not thread-safe. The first use of the node binds it to the gevent hub of the
calling OS thread (``bound_hub``); from then on only that thread may use the plain API. Entry
points that touch the loop or shared state check before they change anything
(``check_thread``); the hot path (``kernel.dispatch``) compares the running greenlet with the
last one that passed (``glet``): greenlets never change threads, so that is one identity test.
``ident`` is the *OS* thread ident (gevent's original ``get_ident``): under monkey-patching
``threading.get_ident()`` is per greenlet, and all those greenlets rightly pass.

The state is plain module attributes (``hub``, ``ident``, ``glet``) so that the kernel's hot
paths test them inline; only this module changes them.

Example::

    hub = bound_hub()          # bind to this thread's hub (or check we are on it)
    check_thread()             # raises RuntimeError from any other OS thread
"""

import sys
import threading
from types import FrameType
from typing import Any, Callable, Optional

from gevent import get_hub
from gevent.monkey import get_original as _gevent_original
from greenlet import greenlet

__all__ = [
    "hub",
    "ident",
    "glet",
    "os_ident",
    "bound_hub",
    "current_hub",
    "unbind_hub",
    "check_thread",
    "check_greenlet",
    "foreign_thread_error",
    "wrong_thread_error",
]

#: The OS thread ident of the running thread (not the per-greenlet one of monkey-patching).
os_ident: Callable[[], int] = _gevent_original("_thread", "get_ident")

hub: Any = None  # the gevent hub the node is bound to, None until bound
ident: Optional[int] = None  # OS thread ident of the hub thread, None until bound
glet: Optional[greenlet] = None  # the last greenlet that passed the check (in the hub thread)
_thread_name_bound: Optional[str] = None  # (for the error message)


def bound_hub() -> Any:
    """The hub the node is bound to, binding it to this thread's hub on first use; raises
    ``RuntimeError`` from another OS thread.

    Example::

        bound_hub().loop.run_callback(fn)
    """
    global hub, ident, glet, _thread_name_bound
    if hub is None:
        ident = os_ident()
        _thread_name_bound = _thread_name(ident)
        glet = None
        hub = get_hub()
    elif os_ident() != ident:
        raise foreign_thread_error()
    return hub


def current_hub() -> Any:
    """The gevent hub the node is bound to, or None before anything bound it.

    Example::

        if current_hub() is None: ...   # nothing has used the node yet
    """
    return hub


def unbind_hub() -> None:
    """Forget the hub binding (``threaded.start`` when it failed before the node did anything).

    Example::

        unbind_hub()
    """
    global hub, ident, glet, _thread_name_bound
    hub = ident = glet = _thread_name_bound = None


def check_thread() -> None:
    """Raise ``RuntimeError`` when the node is bound to the hub of another OS thread.

    Example::

        check_thread()   # first thing in an API function that changes state
    """
    if hub is not None and os_ident() != ident:
        raise foreign_thread_error()


def check_greenlet(cur: greenlet) -> None:
    """``kernel.dispatch``'s check for a greenlet other than the last one seen (node bound).

    Example::

        if cur is not _hub.glet and _hub.hub is not None: _hub.check_greenlet(cur)
    """
    global glet
    if os_ident() != ident:
        raise foreign_thread_error()
    glet = cur


def _thread_name(ident: Optional[int]) -> Optional[str]:
    """The name of the Python thread with OS thread ident ``ident``, or None."""
    for t in threading.enumerate():
        if t.ident == ident:
            return t.name
    return None


def foreign_thread_error(delivered: bool = False) -> RuntimeError:
    """The ``RuntimeError`` for a call from an OS thread that is not the hub thread.

    Example::

        raise foreign_thread_error()
    """
    return wrong_thread_error(os_ident(), ident, _thread_name_bound, delivered)


def wrong_thread_error(
    ident: int, hub_ident: Optional[int], hub_name: Optional[str], delivered: bool = False
) -> RuntimeError:
    """The ``RuntimeError`` for OS thread ``ident`` calling the plain API while the node is
    bound to the hub of thread ``hub_ident`` (see ``check_thread``).

    Example::

        raise wrong_thread_error(os_ident(), other_ident, "MainThread")
    """

    def label(ident: Optional[int], name: Optional[str] = None) -> str:
        name = name or _thread_name(ident)
        return "ident %s" % (ident,) if name is None else "%r (ident %s)" % (name, ident)

    return RuntimeError(
        "%s called from thread %s, but aemp_green is bound to the gevent hub of thread %s: "
        "gevent hubs are not thread-safe, so only that thread may use the plain aemp_green "
        "API.%s Other threads must use the Node handle returned by "
        "aemp_green.threaded.start() (node.snd, node.call, node.port, node.submit(fn), ...), "
        "or hand the work to the hub thread with hub.loop.run_callback_threadsafe(fn, *args) "
        "(see docs/running.md)."
        % (
            _api_name(sys._getframe(1)),
            label(ident),
            label(hub_ident, hub_name),
            " (This message was still handed over to the hub thread safely.)" if delivered else "",
        )
    )


def _api_name(frame: Optional[FrameType]) -> str:
    """``aemp_green.<name>()`` for the aemp_green function the application called (the
    outermost aemp_green frame of the stack)."""
    found = None
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if mod != "aemp_green" and not mod.startswith("aemp_green."):
            break
        code = frame.f_code
        found = (mod, getattr(code, "co_qualname", code.co_name))
        frame = frame.f_back
    if found is None:
        return "aemp_green"
    mod, qual = found
    pkg = sys.modules.get("aemp_green")  # loaded by now; no import (the package is above us)
    if pkg is not None and qual in getattr(pkg, "__all__", ()):
        return "aemp_green.%s()" % qual
    return "%s.%s()" % (mod, qual)
