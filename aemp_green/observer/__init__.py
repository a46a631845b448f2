"""The web observer: a small page showing the network as seen from this node (docs/observer.md).

A node configured with the setting ``observer`` (``"host:port"``; loopback unless a host is
given, port 0 picks a free one) serves it through gevent's WSGI server: the nodes and their
links as a graph, each node's busiest ports, database families and message rates, refreshed
live. Access needs a token, printed at start on stderr as one line::

    observer: http://127.0.0.1:PORT/?token=...

The same can be started by hand on a configured node::

    from aemp_green import observer
    print(observer.start("127.0.0.1:0"))
"""

import ipaddress
import logging
import sys
from typing import Any, Optional

from .. import config as _config

logger = logging.getLogger(__name__)

_server: Any = None  # the running gevent.pywsgi.WSGIServer
_url: Optional[str] = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start(
    address: str = "127.0.0.1:0",
    timeout: Optional[float] = None,
    max_nodes: Optional[int] = None,
    refresh: Optional[float] = None,
    max_clients: Optional[int] = None,
    idle_timeout: Optional[float] = None,
) -> str:
    """Start the observer on ``address`` (``host:port``; a bare port means loopback, port 0 a
    free port) and return its URL with the access token. The other arguments default to the
    settings ``observer_timeout``, ``observer_max_nodes``, ``observer_refresh``,
    ``observer_max_clients`` and ``observer_idle_timeout``. Prints the URL as one line on stderr. Raises ``ConfigError`` for
    a bad address, ``OSError`` if it cannot listen, ``RuntimeError`` if one already runs.

    Example::

        configure(nodeid="watcher/", seeds=["127.0.0.1:4040"])
        url = observer.start("127.0.0.1:0")   # 'http://127.0.0.1:40123/?token=...'
    """
    global _server, _url
    from . import server

    if _server is not None:
        raise RuntimeError("the observer already runs at %s" % (_url,))
    host, port = _config.parse_address(address, default_host="127.0.0.1")
    if host == "*":
        host = "0.0.0.0"

    def setting(value: Any, name: str) -> Any:
        return value if value is not None else _config.SETTINGS_BY_NAME[name].default

    obs = server.Observer(
        timeout=setting(timeout, "observer_timeout"),
        max_nodes=setting(max_nodes, "observer_max_nodes"),
        refresh=setting(refresh, "observer_refresh"),
    )
    srv = server.serve(
        host,
        port or 0,
        obs,
        setting(max_clients, "observer_max_clients"),
        setting(idle_timeout, "observer_idle_timeout"),
    )
    bound_host, bound_port = srv.address[:2]
    shown = "127.0.0.1" if bound_host in ("0.0.0.0", "::", "") else bound_host
    if ":" in shown:
        shown = "[%s]" % shown
    _server = srv
    _url = "http://%s:%d/?token=%s" % (shown, bound_port, obs.token)
    if not _is_loopback(bound_host):
        logger.warning(
            "observer listens on %s, not a loopback address: anyone who learns the token "
            "can read this network's state (docs/observer.md)",
            bound_host,
        )
    sys.stderr.write("observer: %s\n" % _url)
    sys.stderr.flush()
    return _url


def url() -> Optional[str]:
    """The running observer's URL with its token, or None.

    Example::

        print(observer.url())
    """
    return _url


def stop() -> None:
    """Stop the observer (its port closes; the token is forgotten).

    Example::

        observer.stop()
    """
    global _server, _url
    if _server is not None:
        _server.stop(timeout=1)
    _server = _url = None


def configured(cfg: dict[str, Any]) -> None:
    """Start the observer if the effective configuration ``cfg`` has the setting ``observer``
    (``configure`` calls this once the listeners run). A failure is logged; the node keeps
    running.

    Example::

        observer.configured({"observer": "127.0.0.1:0"})   # what configure() does
    """
    address = cfg.get("observer")
    if not address or _server is not None:
        return
    try:
        start(
            address,
            timeout=cfg.get("observer_timeout"),
            max_nodes=cfg.get("observer_max_nodes"),
            refresh=cfg.get("observer_refresh"),
            max_clients=cfg.get("observer_max_clients"),
            idle_timeout=cfg.get("observer_idle_timeout"),
        )
    except (OSError, ValueError) as exc:
        logger.error("observer: cannot listen on %s: %s", address, exc)
        sys.stderr.write("observer: cannot listen on %s: %s\n" % (address, exc))
        sys.stderr.flush()
