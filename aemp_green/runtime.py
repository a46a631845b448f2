"""runtime: configuring and running this node; the one module that wires the layers together.

``configure`` reads the rc file and the arguments, sets the node ID and the kernel's limits,
starts the listeners (``connect``), tells the database (``globaldb``) and the services that
the node is configured, starts the seed connections and the configured services. ``shutdown``
undoes the network part; ``run_forever`` runs the node until SIGINT/SIGTERM.

The wiring happens when this module is imported (by the package): ``node`` learns where nodes
live from the database through ``node.set_directory``. No layer below imports this module.

Example::

    configure(nodeid="worker/", binds=["127.0.0.1:*"], seeds=["127.0.0.1:4040"], norc=True)
    run_forever()
"""

import difflib
import importlib
import logging
import os
import random
import signal
import warnings
from typing import Any, Iterable, Optional

import gevent
from gevent.event import AsyncResult

from . import config as _config
from . import connect, globaldb, logcatcher, metrics, node, observer, trace, transport
from . import _hub
from . import kernel as _k
from ._ratelog import set_limits as _set_log_limits
from ._report import report_crash
from .exceptions import ConfigError, RemoteProtocolError

__all__ = ["configure", "shutdown", "run_forever"]

logger = logging.getLogger(__name__)
_seed_greenlets: list[Any] = []

node.set_directory(globaldb.sync)  # node asks the database where nodes live, tells it of changes


def _seed_loop(addr: str) -> None:
    """Keep a connection to the seed at ``addr`` with back-off; announce ourselves as slave.

    Seeds are configured, not learnt from the network: their dials don't wait for a
    ``max_dials`` turn, and they have their own back-off here.
    """
    backoff = (1 + random.random()) * 0.6
    while True:
        try:
            host, port = connect.split_hostport(addr)
            link = connect.dial(host, port)
        except RemoteProtocolError as exc:
            if "refuse to talk to myself" in str(exc):
                logger.debug("seed %s is ourselves: this node is global", addr)
                globaldb.become_global()
                return
            logger.debug("seed %s: %s", addr, exc)
        except transport.HandshakeRefused as exc:
            logger.debug("seed %s: %s", addr, exc)
        except (OSError, gevent.Timeout, ConfigError) as exc:
            logger.debug("seed %s unreachable: %s", addr, exc)
        else:
            backoff = (1 + random.random()) * 0.6
            globaldb.seed_up(addr, link)
            link.closed_event.wait()
            continue
        gevent.sleep(backoff)
        backoff = min(backoff * 2, float(_config.active["monitor_timeout"]))


_CONFIGURE_ONLY = frozenset(("norc", "force", "profile"))  # configure() arguments, not settings


def configure(profile: Optional[str] = None, **kv: Any) -> dict[str, Any]:
    """Configure this node once per process: node ID, listeners, seeds, secret, ...

    Keys as AEMP (``nodeid``, ``binds``, ``seeds``, ``secret``, ``cert``, ``secure``,
    ``services``, ``monitor_timeout``, ``connect_interval``, ``framing_format``, ``auth_offer``,
    ``auth_accept``, ``autocork``, ``nodelay``, ``parent``, ``force``, ``norc``), merged with the
    rc file and its profiles exactly as AEMP does (see ``config.find_profile``). Returns the
    effective configuration.

    A bad value, a ``cert`` that is not a usable PEM or a listener that cannot bind raises
    ``ConfigError`` naming the key, and leaves the node as it was (it can be called again).
    Keys that are not settings are kept, as in AEMP, but logged as a likely typo.

    Example::

        configure(nodeid="worker/", binds=["127.0.0.1:*"], seeds=["127.0.0.1:4040"],
                  secret="s3cret", norc=True)
    """
    if _config.is_configured():
        raise RuntimeError("configure() can only be called once per process")
    if os.environ.get("PERL_ANYEVENT_MP_TRACE") and trace.print_tracer not in trace.tracers:
        trace.tracers.append(trace.print_tracer)
    unknown = sorted(
        k for k in kv if k not in _config.SETTINGS_BY_NAME and k not in _CONFIGURE_ONLY
    )
    if unknown:  # kept (AEMP keeps unknown keys too), but most likely a typo: say so visibly
        _warn_unknown(unknown)
    norc = kv.get("norc")
    rc = {} if norc else _config.load_rc()
    cfg = _config.validate(_config.find_profile(rc, profile, **kv))
    nodeid = _config.expand_nodeid(_config.default_nodeid(cfg))
    tls = None
    if cfg.get("cert"):  # now, once: never per connection
        try:
            tls = transport.tls_contexts(cfg["cert"])
        except (OSError, ValueError) as exc:
            raise ConfigError(
                "cert: not a usable PEM with key, certificate and CA certificates (%s)" % (exc,)
            ) from None
    before_id, before_secure, before_tls = _k.this_node, _k.secure_mode, connect.tls
    connect.set_tls(tls)
    _k.set_node_id(nodeid)
    _k.set_secure(cfg.get("secure"), cfg.get("allow_trace"))
    if cfg.get("check_local_messages"):
        _k.check_local_messages(True)
    _k.set_limits(max_forward_depth=cfg.get("max_forward_depth"))
    _set_log_limits(cfg.get("log_rate_lines"), cfg.get("log_rate_interval"))
    _config.set_active(cfg)

    # listeners (nothing else has started yet: a failure undoes the above and can be retried)
    bind = None
    try:
        for bind in _config.expand_binds(cfg.get("binds") or ["*"]):
            connect.start_listener(bind[0], bind[1])
    except OSError as exc:
        connect.stop_listeners()
        _k.set_node_id(before_id)
        _k.set_secure(before_secure)
        _config.set_active(None)
        connect.set_tls(before_tls)
        where = "%s:%s" % (bind[0], "*" if bind[1] is None else bind[1]) if bind else "?"
        raise ConfigError("binds: cannot listen on %s: %s" % (where, exc)) from None
    addrs = connect.listener_addresses()
    logger.info("node %s listens on %s", nodeid, addrs)
    globaldb.configured(cfg)

    for seed in cfg.get("seeds") or []:
        _seed_greenlets.append(gevent.spawn(_seed_loop, seed))

    # the side services read their settings
    logcatcher.configured(cfg)
    metrics.configured(cfg)
    observer.configured(cfg)  # the web page, with the setting `observer`

    for service in cfg.get("services") or []:
        _start_service(service)
    return cfg


def _warn_unknown(unknown: list[str]) -> None:
    """A ``UserWarning`` (shown on stderr by default, once per call site) for settings that
    are not settings, with the likely meant one."""
    known = [s.name for s in _config.SETTINGS]
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append("%r (did you mean %r?)" % (key, close[0]) if close else repr(key))
    text = "configure(): unknown setting%s %s ignored (known: %s)" % (
        "s" if len(unknown) > 1 else "",
        ", ".join(parts),
        ", ".join(known),
    )
    logger.warning("%s", text)
    warnings.warn(text, UserWarning, stacklevel=3)


def run_forever(signals: Optional[Iterable[int]] = None) -> int:
    """Run this node until SIGINT (Ctrl-C) or SIGTERM, then shut it down cleanly (listeners
    closed, queued frames flushed, peers see the links end) and return the signal number.

    The way to end a node program: no ``KeyboardInterrupt`` traceback on Ctrl-C, and the
    process exits with status 0. Call it from the main thread (signal handlers live there).

    Example::

        configure(nodeid="worker/", seeds=["127.0.0.1:4040"])
        spawn(serve)
        run_forever()
    """
    _hub.check_thread()
    got = AsyncResult()
    watchers = [
        gevent.signal_handler(s, got.set, s) for s in (signals or (signal.SIGINT, signal.SIGTERM))
    ]
    try:
        signum = got.get()
    finally:
        for w in watchers:
            w.cancel()
    logger.info("node %s stopping on signal %s", _k.this_node, signum)
    shutdown()
    return signum


def _start_service(service: Any) -> None:
    """``"pkg.mod."`` imports a module, ``"pkg.func"`` calls it, ``["pkg.func", args...]`` too."""
    try:
        if isinstance(service, list):
            _k.resolve_function(service[0])(*service[1:])
        elif service.endswith("::") or service.endswith("."):
            importlib.import_module(service.rstrip(":.").replace("::", "."))
        else:
            _k.resolve_function(service)()
    except Exception as exc:
        report_crash("service", None, exc, detail="(%r failed to start)" % (service,))


def shutdown(flush: float = 1.0) -> None:
    """Stop listening, close every link (peers see the connection end) and stop seed loops.

    Frames already queued are sent first, waiting at most ``flush`` seconds in all (``0``:
    drop them).

    Example::

        shutdown()
    """
    _hub.check_thread()  # before anything changes (docs/running.md)
    for g in _seed_greenlets:
        g.kill(block=False)
    connect.stop_listeners()
    links = node.all_links()
    if flush:
        with gevent.Timeout(flush, False):
            for link in links:
                link.flush(flush)
    for link in links:
        link.close("shutdown")
