"""_report: what the user sees when their code crashes inside aemp_green, and ``AE_VERBOSE``.

An exception that escapes a callback handler, a greenlet port, ``psub``/``peval`` code, a
spawned function or a monitor callback kills the port (AEMP semantics) and is **reported
once**; so is one escaping a ``mon_nodes`` or ``db_mon`` callback, a function a peer called by
name (``snd_to_func``) or a service that failed to start: by default the report is printed to stderr with its traceback, as gevent prints a
greenlet that died and ``threading`` a thread. ``set_crash_handler`` routes reports elsewhere::

    set_crash_handler("stderr")    # the default
    set_crash_handler("logging")   # logger "aemp_green.crash", level ERROR, with the traceback
    set_crash_handler(None)        # off (the port still dies, its monitors still fire)
    set_crash_handler(fn)          # fn(report): a CrashReport (what, port, tag, exc, text)

``AE_VERBOSE`` (or ``PERL_ANYEVENT_VERBOSE``), AnyEvent's 0-9 scale, gives library users the
same log output as the ``aemp`` command: when set and the program configured no logging, the
package's records at that level go to stderr (``apply_verbose_env``, run at import).

This module imports nothing of the package: every layer may report through it.
"""

import logging
import os
import sys
import traceback
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union, cast

__all__ = [
    "CrashReport",
    "set_crash_handler",
    "report_crash",
    "log_level",
    "apply_verbose_env",
    "drop_verbose_handler",
]

crash_logger = logging.getLogger("aemp_green.crash")


class CrashReport(NamedTuple):
    """One crash: ``what`` crashed (``"callback port"``, ``"greenlet port"``, ``"psub/peval
    code"``, ``"monitor callback"``, ``"mon_nodes callback"``, ``"db_mon callback"``,
    ``"function called by name"``, ``"service"``), the ``port`` ID (None but for ports), the message
    ``tag`` being handled (None when there is none), the exception and the report's text
    (headline and traceback).

    Example::

        set_crash_handler(lambda r: my_alerts.send(r.port, r.text))
    """

    what: str
    port: Optional[str]
    tag: Any
    exc: BaseException
    text: str


_handler: Union[str, Callable[[CrashReport], Any], None] = "stderr"


def set_crash_handler(
    handler: Union[str, Callable[[CrashReport], Any], None],
) -> Union[str, Callable[[CrashReport], Any], None]:
    """Choose where crash reports go: ``"stderr"`` (default), ``"logging"``, ``None`` (off) or a
    callable taking a ``CrashReport``. Returns the previous handler.

    Example::

        import aemp_green
        aemp_green.set_crash_handler("logging")   # my program's logging config decides
    """
    global _handler
    if not (handler in ("stderr", "logging", None) or callable(handler)):
        raise ValueError(
            "crash handler must be 'stderr', 'logging', None or a callable, not %r" % (handler,)
        )
    old, _handler = _handler, handler
    return old


def _headline(what: str, port: Optional[str], tag: Any, detail: str) -> str:
    where = "port %s" % port if port else what
    text = "aemp_green: %s died" % where if port else "aemp_green: a %s failed" % what
    if port:
        text += " (%s" % what
        if tag is not None:
            text += ", handling a message tagged %s" % _short(tag)
        text += ")"
    if detail:
        text += " " + detail
    return text


def _short(value: Any, limit: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def report_crash(
    what: str, port: Optional[str], exc: BaseException, tag: Any = None, detail: str = ""
) -> None:
    """Report one crash of user code (called by the kernel and ports; never raises).

    Example::

        except Exception as exc:
            report_crash("callback port", p.id, exc, tag=msg[0] if msg else None)
    """
    handler = _handler
    if handler is None:
        return
    try:
        head = _headline(what, port, tag, detail)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if handler == "logging":
            crash_logger.error("%s", head, exc_info=(type(exc), exc, exc.__traceback__))
            return
        report = CrashReport(what, port, tag, exc, head + "\n" + tb)
        if handler == "stderr":
            sys.stderr.write(report.text)
            sys.stderr.flush()
        else:
            cast(Callable[[CrashReport], Any], handler)(report)
    except Exception:  # a broken handler or stderr must not take the node down
        try:
            crash_logger.exception("crash handler %r failed", handler)
        except Exception:  # pragma: no cover
            pass


_LEVEL_NAMES = {
    "fatal": 1,
    "alert": 2,
    "critical": 3,
    "crit": 3,
    "error": 4,
    "warn": 5,
    "warning": 5,
    "note": 6,
    "notice": 6,
    "info": 7,
    "debug": 8,
    "trace": 9,
}


def log_level(environ: Optional[Mapping[str, str]] = None, default: int = logging.WARNING) -> int:
    """The Python log level for ``PERL_ANYEVENT_VERBOSE`` (or ``AE_VERBOSE``), AnyEvent's 0-9
    scale (9/8 debug, 7 info, 6/5 warnings, lower errors only); ``default`` when unset.

    Example::

        >>> log_level({"AE_VERBOSE": "7"}) == logging.INFO
        True
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("PERL_ANYEVENT_VERBOSE") or environ.get("AE_VERBOSE")
    if raw is None or not raw.strip():
        return default
    raw = raw.strip().lower()
    level: Optional[int]
    try:
        level = int(raw)
    except ValueError:
        level = _LEVEL_NAMES.get(raw)
        if level is None:
            return default
    if level >= 8:
        return logging.DEBUG
    if level == 7:
        return logging.INFO
    if level >= 5:
        return logging.WARNING
    return logging.ERROR


_verbose_handler: Optional[logging.Handler] = None


def apply_verbose_env(environ: Optional[Mapping[str, str]] = None) -> Optional[logging.Handler]:
    """With ``AE_VERBOSE``/``PERL_ANYEVENT_VERBOSE`` set and no logging configured by the
    program, send the package's log records at that level to stderr. Returns the handler added
    (or None).

    Example::

        AE_VERBOSE=7 python myapp.py     # aemp_green's INFO records on stderr
    """
    global _verbose_handler
    environ = os.environ if environ is None else environ
    if not (environ.get("PERL_ANYEVENT_VERBOSE") or environ.get("AE_VERBOSE")):
        return None
    if logging.getLogger().handlers or _verbose_handler is not None:
        return None  # the program (or the aemp command) configured logging: leave it alone
    pkg = logging.getLogger("aemp_green")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg.addHandler(h)
    pkg.setLevel(log_level(environ))
    _verbose_handler = h
    return h


def drop_verbose_handler() -> None:
    """Undo ``apply_verbose_env`` (the ``aemp`` command configures logging itself).

    Example::

        drop_verbose_handler(); logging.basicConfig(...)
    """
    global _verbose_handler
    if _verbose_handler is not None:
        pkg = logging.getLogger("aemp_green")
        pkg.removeHandler(_verbose_handler)
        pkg.setLevel(logging.NOTSET)
        _verbose_handler = None
