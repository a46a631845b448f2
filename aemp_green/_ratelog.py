"""_ratelog: rate-limited, escaped log lines for bad input from the network.

A peer that sends garbage must not be able to fill this node's log: every layer that reports
remote input logs it through a ``RateLog``, one line per *key* (typically ``(peer, reason)``)
at most ``lines`` times per ``interval`` seconds; further lines of that key are counted, and
the next line of the key after the interval says how many were suppressed. The table of keys
is bounded too (``MAX_KEYS``; the least recently used key is forgotten, with its count).

Values from the wire are shown with ``esc``: a ``repr`` (control characters escaped), cut to a
bounded length, and cheap for any input size.

This module imports nothing from aemp_green, so every layer may use it. The limits are the
settings ``log_rate_lines`` and ``log_rate_interval`` (``configure`` calls ``set_limits``).

Example::

    >>> import logging
    >>> rl = RateLog(logging.getLogger("demo"), lines=2, interval=60)
    >>> [rl.warning(("peer", "bad"), "bad frame from %s", esc("p\\x1b[2J")) for _ in range(3)]
    [True, True, False]
    >>> esc("p\\x1b[2J")
    "'p\\\\x1b[2J'"
"""

import logging
import reprlib
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional

__all__ = ["RateLog", "esc", "exc_text", "set_limits", "LINES", "INTERVAL", "MAX_KEYS"]

#: default: lines of one key per interval (setting ``log_rate_lines``)
LINES = 5
#: default: seconds of one interval (setting ``log_rate_interval``)
INTERVAL = 60.0
#: keys remembered at once (least recently used forgotten first)
MAX_KEYS = 1024

_limits: list[float] = [LINES, INTERVAL]


def set_limits(lines: Optional[int] = None, interval: Optional[float] = None) -> None:
    """Set the limits of every ``RateLog`` that was made without its own (``configure`` does).

    Example::

        set_limits(lines=10, interval=30)
    """
    if lines is not None:
        _limits[0] = int(lines)
    if interval is not None:
        _limits[1] = float(interval)


_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxtuple = _repr.maxlist = _repr.maxdict = _repr.maxset = _repr.maxfrozenset = 6
_repr.maxdeque = _repr.maxarray = 6
_repr.maxstring = 80
_repr.maxlong = 40
_repr.maxother = 80


def esc(value: Any, limit: int = 200) -> str:
    """A bounded, escaped text for ``value`` (from the wire) to put in a log line.

    ``repr`` style: control characters and quotes are escaped, long strings and containers are
    cut (``reprlib``), the result is at most ``limit`` characters. Never raises.

    Example::

        >>> esc("a\\nb")
        "'a\\\\nb'"
        >>> len(esc("x" * 10000)) <= 200
        True
    """
    try:
        text = _repr.repr(value)
    except Exception:  # a hostile __repr__, a huge int, ...: say what it is, nothing more
        text = "<%s>" % type(value).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def exc_text(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception, bounded and escaped, for a log line.

    Example::

        >>> exc_text(ValueError("bad\\x1b[2J"))
        'ValueError: bad\\\\x1b[2J'
    """
    try:
        text = str(exc)
    except Exception:
        text = ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    text = "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__
    return _clean(text)


def _clean(text: str) -> str:
    """Escape control characters in an already formatted text (e.g. an exception message)."""
    if text.isprintable():
        return text
    return repr(text)[1:-1]


class RateLog:
    """Log lines of one key at most ``lines`` times per ``interval`` seconds (see module doc).

    ``lines``/``interval`` None: the module's limits (``set_limits``). Arguments are formatted
    with ``%`` as logging does; every ``str`` argument has its control characters escaped
    (pass wire values through ``esc`` to bound their length too).

    Example::

        rl = RateLog(logger)
        rl.warning((from_node, "bad tag"), "node request with a bad tag from %s dropped",
                   from_node)
    """

    def __init__(
        self,
        logger: logging.Logger,
        lines: Optional[int] = None,
        interval: Optional[float] = None,
        max_keys: int = MAX_KEYS,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self.logger = logger
        self.lines = lines
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock or time.monotonic
        self._keys: OrderedDict[Hashable, list[float]] = (
            OrderedDict()
        )  # key -> [window start, lines in window, suppressed]

    def log(self, level: int, key: Hashable, fmt: str, *args: Any, exc_info: Any = None) -> bool:
        """Log ``fmt % args`` at ``level`` unless ``key`` used up its lines; True if logged.

        Example::

            rl.log(logging.WARNING, ("peer", "x"), "bad %s", esc(value))
        """
        if not self.logger.isEnabledFor(level):
            return False
        lines = self.lines if self.lines is not None else _limits[0]
        interval = self.interval if self.interval is not None else _limits[1]
        now = self.clock()
        keys = self._keys
        st = keys.get(key)
        if st is None:
            st = keys[key] = [now, 0, 0]
            if len(keys) > self.max_keys:
                keys.popitem(last=False)
        else:
            keys.move_to_end(key)
        suppressed: float = 0
        if now - st[0] >= interval:
            suppressed = st[2]
            st[0], st[1], st[2] = now, 0, 0
        if st[1] >= lines:
            st[2] += 1
            return False
        st[1] += 1
        try:
            msg = fmt % tuple(_clean(a) if type(a) is str else a for a in args)
        except Exception:  # pragma: no cover - a bad format string is our bug, not the peer's
            msg = "%s %% %s" % (fmt, esc(args))
        if suppressed:
            msg += " (%d more like this suppressed in the last %.0f s)" % (suppressed, interval)
        elif st[1] == lines:
            msg += " (further lines like this suppressed for %.0f s)" % interval
        self.logger.log(level, "%s", msg, exc_info=exc_info)
        return True

    def warning(self, key: Hashable, fmt: str, *args: Any, **kw: Any) -> bool:
        """``log(logging.WARNING, ...)``.

        Example::

            rl.warning((peer, "frame"), "bad frame from %s: %s", peer, esc(frame))
        """
        return self.log(logging.WARNING, key, fmt, *args, **kw)

    def error(self, key: Hashable, fmt: str, *args: Any, **kw: Any) -> bool:
        """``log(logging.ERROR, ...)``.

        Example::

            rl.error((peer, "request"), "node request from %s failed: %s", peer, why)
        """
        return self.log(logging.ERROR, key, fmt, *args, **kw)

    def info(self, key: Hashable, fmt: str, *args: Any, **kw: Any) -> bool:
        """``log(logging.INFO, ...)``.

        Example::

            rl.info((peer, "refused"), "refused %s from %s", esc(tag), peer)
        """
        return self.log(logging.INFO, key, fmt, *args, **kw)
