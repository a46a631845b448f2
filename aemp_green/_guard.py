"""Guards: objects that undo something when cancelled or at the end of a ``with`` block.

``mon``, ``db_set``, ``db_reg``, ``db_mon``, ``after``, ``mon_nodes`` and ``connect_to`` return a
guard. What they set up **lasts until it ends by itself or the guard is cancelled**::

    mon(port, cb)            # monitors until the port dies
    g = mon(port, cb)        # the same; g.cancel() stops it early
    with mon(port, cb): ...  # monitors for the block only: scope is asked for explicitly

A guard that is dropped (garbage collected) undoes **nothing**. AEMP (Perl) cancels a guard
that was kept and then destroyed ("non-void context"), and aemp_green 0.1.0 imitated that by
reading the caller's bytecode; but in Python that made the most natural code,
``g = mon(p, cb)`` at the end of a function, silently stop monitoring when the function
returned. Scope is therefore explicit: ``with`` or ``cancel()``.
"""

from typing import Any, Callable, Literal, Optional

__all__ = ["Guard"]


class Guard:
    """Undo an action once: on ``cancel()`` or at the end of a ``with`` block (never when dropped).

    Example::

        g = mon(port, lambda *reason: print("died", reason))
        g.cancel()        # the callback will not run
    """

    __slots__ = ("_undo", "__weakref__")

    def __init__(self, undo: Optional[Callable[[], Any]]) -> None:
        self._undo = undo

    @classmethod
    def for_caller(cls, undo: Optional[Callable[[], Any]], depth: Optional[int] = None) -> "Guard":
        """The guard an API call returns: ``Guard(undo)`` (``depth`` is ignored; 0.1.0 read the
        caller's frame there).

        Example::

            def mon(...):
                ...
                return Guard.for_caller(lambda: remove(cb))
        """
        return cls(undo)

    @property
    def active(self) -> bool:
        """True until the guard has been cancelled."""
        return self._undo is not None

    def cancel(self) -> None:
        """Undo the action now (idempotent).

        Example::

            g = after(10, port, "tick")
            g.cancel()
        """
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    def detach(self) -> None:
        """Forget the undo action: cancelling the guard (or leaving its ``with`` block) no
        longer does anything.

        Example::

            with mon(port, cb) as g:
                g.detach()    # monitoring goes on after the block
        """
        self._undo = None

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.cancel()
        return False

    def __repr__(self) -> str:
        return "<Guard %s>" % ("active" if self._undo is not None else "cancelled")
