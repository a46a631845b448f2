"""The web observer's HTTP side: a WSGI application on gevent's WSGI server (``gevent.pywsgi``)
serving the page in ``static/`` and the network view as JSON (docs/observer.md).

Every request needs the access token (query ``token=`` or header ``Authorization: Bearer``),
compared in constant time; without it the answer is 403. The network view is gathered with
``introspect.snapshot`` here and ``introspect.info`` on every other node the observer hears of,
in parallel greenlets with a timeout; concurrent requests share one gathering, and a gathering
is reused for ``observer_refresh`` seconds.
"""

import hmac
import json
import logging
import secrets
import time
from importlib import resources
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs

import gevent
from gevent.event import AsyncResult
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from .. import introspect
from .._ratelog import RateLog, esc

logger = logging.getLogger(__name__)
_rl = RateLog(logger)  # bad requests: one line per client address and reason

#: the busiest ports shown per node
TOP_PORTS = 8

#: files of ``static/`` served, with their content types
_STATIC = {
    "/observer.js": "application/javascript; charset=utf-8",
    "/observer.css": "text/css; charset=utf-8",
}

#: sent with every answer: nothing cached, nothing loaded from elsewhere, no referrer (the token
#: is in the page's URL)
_HEADERS = [
    ("Cache-Control", "no-store"),
    # a connection per request: an idle keep-alive connection would hold a slot of the pool
    ("Connection", "close"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; frame-ancestors 'none'",
    ),
]

StartResponse = Callable[..., Any]


def _read_static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


class Observer:
    """The observer of this node: its token, its gathering of the network view, its WSGI app.

    Example::

        obs = Observer(timeout=2, max_nodes=64, refresh=1)
        WSGIServer(("127.0.0.1", 0), obs.app).start()
        print(obs.token)
    """

    def __init__(
        self,
        timeout: float = 2.0,
        max_nodes: int = 64,
        refresh: float = 1.0,
        token: Optional[str] = None,
    ) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.timeout = float(timeout)
        self.max_nodes = int(max_nodes)
        self.refresh = float(refresh)
        self._last: Optional[dict[str, Any]] = None
        self._last_at = 0.0
        self._inflight: Optional[AsyncResult] = None

    # -- the network view ----------------------------------------------------------------
    def _ask(self, nodeids: list[str]) -> dict[str, dict[str, Any]]:
        """``{nodeid: node entry}`` for ``nodeids``, asked in parallel within the timeout."""

        def ask(nodeid: str) -> tuple[Any, Optional[Exception]]:
            # the failure is returned, not raised: gevent would print a raised one's traceback
            try:
                return introspect.info(nodeid, "snapshot", self.timeout, ports=TOP_PORTS), None
            except Exception as exc:
                return None, exc

        jobs = {n: gevent.spawn(ask, n) for n in nodeids}
        gevent.joinall(list(jobs.values()), timeout=self.timeout + 0.5)
        out = {}
        for n, g in jobs.items():
            value, exc = g.value if g.successful() else (None, None)
            if isinstance(value, dict):
                out[n] = _entry(n, "ok", snapshot=value)
            elif not g.ready():
                g.kill(block=False)
                out[n] = _entry(n, "no answer", error="no answer within %s s" % self.timeout)
            else:
                why = "%s: %s" % (type(exc).__name__, exc) if exc is not None else "bad answer"
                if isinstance(exc, introspect.IntrospectionRefused):
                    status = "refused"  # a secure node without allow_introspection
                else:
                    status = "no answer" if _is_timeout(exc) else "error"
                out[n] = _entry(n, status, error=why)
        return out

    def gather(self) -> dict[str, Any]:
        """Gather the network view now: this node, every node it is linked to and the global
        nodes, then the nodes those are linked to (at most ``max_nodes`` in all).

        Returns ``{"observer": nodeid, "time": epoch, "nodes": [entry...], "links": [[a, b]...]}``
        where an entry is ``{"id", "status", "error", "node", "ports", "links"}`` (the last three from ``introspect.snapshot``);
        the status is "ok", "no answer" (timeout, unreachable), "refused" (a ``secure`` node),
        "error" or "not asked" (beyond ``max_nodes``, or only heard of from others).

        Example::

            view = Observer().gather()
            print([n["id"] for n in view["nodes"]])
        """
        local = introspect.snapshot(ports=TOP_PORTS)
        me = local["node"]["node"]
        nodes = {me: _entry(me, "ok", snapshot=local)}
        todo = _neighbours(local) - set(nodes)
        for _round in range(2):  # our neighbours, then theirs
            room = self.max_nodes - len(nodes)
            batch = sorted(todo)[: max(room, 0)]
            if not batch:
                break
            nodes.update(self._ask(batch))
            todo = set()
            for n in batch:
                snap = nodes[n].get("snapshot")
                if snap:
                    todo |= _neighbours(snap)
            todo -= set(nodes)
        links = set()
        for n, e in list(nodes.items()):
            snap = e.pop("snapshot", None)
            if not snap:
                continue
            e["node"], e["ports"], e["links"] = (
                snap.get("node"),
                snap.get("ports"),
                snap.get("links"),
            )
            for peer in _peers(snap):
                if peer != n:
                    links.add((min(n, peer), max(n, peer)))
                    if peer not in nodes:  # beyond max_nodes or learnt in the last round
                        nodes[peer] = _entry(peer, "not asked")
        return {
            "observer": me,
            "time": time.time(),
            "nodes": [nodes[me]] + [nodes[n] for n in sorted(nodes) if n != me],
            "links": sorted([a, b] for a, b in links),
        }

    def view(self) -> dict[str, Any]:
        """The network view, gathered at most once per ``refresh`` seconds; callers arriving
        while a gathering runs wait for that one.

        Example::

            obs.view()["nodes"][0]["id"] == NODE()
        """
        if self._last is not None and time.monotonic() - self._last_at < self.refresh:
            return self._last
        if self._inflight is None:
            self._inflight = res = AsyncResult()
            try:
                v = self.gather()
            except Exception as exc:
                res.set_exception(exc)
                raise
            else:
                self._last, self._last_at = v, time.monotonic()
                res.set(v)
                return v
            finally:
                self._inflight = None
        shared: dict[str, Any] = self._inflight.get()
        return shared

    # -- HTTP ----------------------------------------------------------------------------
    def authorised(self, environ: dict[str, Any]) -> bool:
        """True if the request carries the token (query ``token`` or ``Authorization: Bearer``),
        compared in constant time.

        Example::

            obs.authorised({"QUERY_STRING": "token=" + obs.token})   # True
        """
        given = ""
        auth = environ.get("HTTP_AUTHORIZATION") or ""
        if auth.startswith("Bearer "):
            given = auth[7:].strip()
        else:
            given = (parse_qs(environ.get("QUERY_STRING") or "").get("token") or [""])[0]
        return hmac.compare_digest(
            given.encode("utf-8", "replace"), self.token.encode("utf-8", "replace")
        )

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application: ``/`` the page, ``/observer.js`` and ``/observer.css`` its
        code, ``/api/network`` the network view as JSON; each needs the token.

        Example::

            WSGIServer(("127.0.0.1", 8000), Observer().app).serve_forever()
        """
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD") or "GET"
        if not self.authorised(environ):
            _rl.warning(
                (environ.get("REMOTE_ADDR"), "token"),
                "observer: request without the right token from %s refused (403)",
                str(environ.get("REMOTE_ADDR")),
            )
            return _answer(start_response, "403 Forbidden", b"forbidden: token required\n")
        if method not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"GET only\n")
        if path in ("/", "/index.html"):
            page = _read_static("index.html").replace(b"__TOKEN__", self.token.encode())
            return _answer(start_response, "200 OK", page, "text/html; charset=utf-8")
        if path in _STATIC:
            return _answer(start_response, "200 OK", _read_static(path[1:]), _STATIC[path])
        if path == "/api/network":
            try:
                body = json.dumps(self.view(), default=str).encode()
            except Exception as exc:
                logger.warning("observer: gathering the network view failed: %r", exc)
                return _answer(
                    start_response,
                    "500 Internal Server Error",
                    json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}).encode(),
                    "application/json",
                )
            return _answer(start_response, "200 OK", body, "application/json")
        return _answer(start_response, "404 Not Found", b"not found\n")


def _answer(
    start_response: StartResponse, status: str, body: bytes, ctype: str = "text/plain"
) -> list[bytes]:
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))] + _HEADERS)
    return [body]


def _entry(nodeid: str, status: str, error: Optional[str] = None, **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "id": nodeid,
        "status": status,
        "error": error,
        "node": None,
        "ports": None,
        "links": None,
    }
    e.update(kw)
    return e


def _is_timeout(exc: Optional[BaseException]) -> bool:
    return exc is not None and (
        "Timeout" in type(exc).__name__ or "Unreachable" in type(exc).__name__
    )


def _peers(snap: dict[str, Any]) -> set[str]:
    """The nodes a snapshot's node has a link to."""
    info = snap.get("node") or {}
    peers = set(info.get("up_nodes") or ())
    peers |= {link.get("peer") for link in snap.get("links") or () if link.get("peer")}
    return {p for p in peers if isinstance(p, str)}


def _neighbours(snap: dict[str, Any]) -> set[str]:
    """The nodes worth asking next: linked ones and the global nodes."""
    info = snap.get("node") or {}
    return _peers(snap) | {g for g in info.get("global_nodes") or () if isinstance(g, str)}


_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _Handler(WSGIHandler):
    """gevent's handler, with a deadline on every read and write of a connection (a client that
    sends nothing, or reads nothing, is dropped) and bad requests logged as one rate-limited
    line without a traceback."""

    #: seconds a connection may stall (``serve`` sets it from ``observer_idle_timeout``)
    idle_timeout = 10.0

    def handle(self) -> None:
        self.socket.settimeout(self.idle_timeout)
        super().handle()

    def _handle_client_error(self, ex: BaseException) -> Optional[tuple[str, bytes]]:
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else "?"
        if isinstance(ex, OSError):  # the deadline, or the client went away: just close
            _rl.info((peer, "stall"), "observer: dropped a stalled request from %s", str(peer))
            self.close_connection = True
            return None
        _rl.warning((peer, "bad"), "observer: bad request from %s: %s", str(peer), esc(ex))
        return ("400", _BAD_REQUEST)

    def log_error(self, msg: str, *args: Any) -> None:
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = "%s %r" % (msg, args)
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else "?"
        _rl.warning((peer, "error"), "observer: %s (from %s)", esc(text), str(peer))


def serve(
    host: str, port: int, obs: Observer, max_clients: int = 16, idle_timeout: float = 10.0
) -> WSGIServer:
    """Start serving ``obs`` on ``host:port`` (0: a free port) in the background; returns the
    started server (``server.address`` is where it listens, ``server.stop()`` ends it). At most
    ``max_clients`` connections are served at once, each dropped when a read or write of it
    stalls for ``idle_timeout`` seconds.

    Example::

        srv = serve("127.0.0.1", 0, Observer())
        print(srv.address)
    """
    handler = type("ObserverHandler", (_Handler,), {"idle_timeout": float(idle_timeout)})
    srv = WSGIServer(
        (host, port),
        obs.app,
        spawn=Pool(max_clients),
        log=None,
        error_log=logger,
        handler_class=handler,
    )
    srv.start()
    return srv
