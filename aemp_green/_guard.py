"""Guards: objects that undo something when cancelled or, if the caller kept them, when dropped.

AEMP returns a guard from ``mon``, ``db_set`` and friends *only in non-void context*: a Perl
statement ``mon $port, $cb;`` keeps monitoring forever, while ``my $g = mon ...`` stops when
``$g`` goes away. Python has no void context, but the caller's bytecode says whether the result
of the call is thrown away (the instruction after the call is ``POP_TOP``). ``Guard.kept_by_caller``
reads that once per call site (cached), so::

    mon(port, cb)            # statement: monitors until the port dies
    g = mon(port, cb)        # kept: monitoring stops when g is dropped or g.cancel() is called
    with mon(port, cb): ...  # stops at the end of the block

A guard that is *returned* (``return mon(...)``, or a lambda such as ``lambda: mon(...)`` used
as a handler) counts as not kept: handlers' results are thrown away by the caller, just as AEMP
calls them in void context; ``cancel()`` still works on it. Whenever the call site cannot be
inspected the guard is treated as thrown away, the safe side: nothing is cancelled behind the
user's back.
"""

import dis
import logging
import sys
import threading
from bisect import bisect_right

__all__ = ["Guard"]

logger = logging.getLogger(__name__)

_site_cache = {}
# the result is thrown away, or handed back to a caller we cannot see (a lambda handler's
# ``return mon(...)``: AEMP calls handlers in void context, so that must keep monitoring)
_NOT_KEPT = frozenset(("POP_TOP", "RETURN_VALUE", "YIELD_VALUE"))


def _result_kept(frame):
    """True when the call that is running in ``frame`` keeps its result."""
    code = frame.f_code
    key = (code, frame.f_lasti)
    kept = _site_cache.get(key)
    if kept is None:
        table = _site_cache.get(code)
        if table is None:
            instrs = list(dis.get_instructions(code))
            table = ([i.offset for i in instrs], [i.opname for i in instrs])
            _site_cache[code] = table
        offsets, names = table
        idx = bisect_right(offsets, frame.f_lasti)
        kept = idx < len(names) and names[idx] not in _NOT_KEPT
        _site_cache[key] = kept
    return kept


class Guard:
    """Undo an action once: on ``cancel()``, at the end of a ``with`` block, or when dropped if kept.

    Example::

        g = mon(port, lambda *reason: print("died", reason))
        g.cancel()        # the callback will not run
    """

    __slots__ = ("_undo", "_kept", "__weakref__")

    def __init__(self, undo, kept=True):
        self._undo = undo
        self._kept = kept

    @classmethod
    def for_caller(cls, undo, depth=2):
        """A guard for the caller ``depth`` frames up: dropped-means-cancel only if it keeps it.

        Example::

            def mon(...):
                ...
                return Guard.for_caller(lambda: remove(cb))
        """
        try:
            kept = _result_kept(sys._getframe(depth))
        except Exception:  # pragma: no cover - exotic interpreters
            kept = False
        return cls(undo, kept)

    @property
    def active(self):
        """True until the guard has been cancelled."""
        return self._undo is not None

    def cancel(self):
        """Undo the action now (idempotent).

        Example::

            g = after(10, port, "tick")
            g.cancel()
        """
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    def detach(self):
        """Forget the undo action: dropping or cancelling the guard no longer does anything.

        Example::

            g = mon(port, cb)
            g.detach()        # monitoring goes on after g is dropped
        """
        self._undo = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()
        return False

    def __del__(self):
        if self._kept and self._undo is not None:
            undo, self._undo = self._undo, None
            try:
                from . import kernel

                hub = kernel._hub
                if hub is not None and threading.get_ident() != kernel._hub_thread:
                    # collected by a GC pass in another thread: undo in the node's own thread
                    hub.loop.run_callback_threadsafe(undo)
                else:
                    undo()
            except Exception:  # pragma: no cover - interpreter shutdown
                logger.debug("guard undo failed during collection", exc_info=True)

    def __repr__(self):
        return "<Guard %s>" % ("active" if self._undo is not None else "cancelled")
