"""introspect: what a running node is doing, asked locally or from another node.

``node_info()``, ``ports_info()``, ``links_info()`` and ``snapshot()`` describe this node: its
ports (kind, mailbox, messages handled, age, monitors), its links (peer, framing, auth, TLS,
messages and bytes each way, write buffer, keepalive round trip) and the node itself (nodes,
database families, message totals and rates). ``info(nodeid, what)`` asks another node the
same through the node-port request ``aemp_green/info`` (docs/introspection.md).

Every value is JSON-able: the answers cross the wire. The counters behind them are plain
integer attributes the hot paths bump once per message or read/write batch (``Link.frames_in``,
``Link.bytes_out``, a port's ``handled``, ``kernel.local_sends``); reading them costs the work
of one pass over the ports or links, done only when asked.

Example::

    from aemp_green import node_info, ports_info, info
    print(node_info()["msgs_local"], ports_info(limit=5))
    print(info("worker/1", "links", timeout=2))     # from a greenlet
"""

import heapq
import logging
import os
import time
from collections import deque
from typing import Any, Optional, Union

from . import config as _config
from . import globaldb as _g
from . import kernel as _k
from . import node as _node
from . import ports as _ports
from . import transport as _transport
from ._ratelog import RateLog, esc
from ._version import __version__
from .exceptions import AempError, Timeout

__all__ = [
    "node_info",
    "ports_info",
    "links_info",
    "snapshot",
    "info",
    "IntrospectionRefused",
    "REQUEST",
]

logger = logging.getLogger(__name__)
_rl = RateLog(logger)

#: the node-port request that asks a node for its introspection (a name no AEMP request has:
#: a Perl node answers it as any unknown request, i.e. not at all)
REQUEST = "aemp_green/info"

_REFUSED = "refused: "
_WHATS = ("snapshot", "node", "ports", "links")
_SORTS = ("handled", "mailbox", "age")


class IntrospectionRefused(AempError):
    """The node refused to answer ``info``: it is ``secure`` and its setting
    ``allow_introspection`` is not true.

    Example::

        try:
            info("vault/1", "ports")
        except IntrospectionRefused as e:
            print(e)    # node vault/1 refused ... (secure node; setting allow_introspection)
    """


# --------------------------------------------------------------------------- counters


def _totals() -> list[int]:
    """``[msgs_in, msgs_out, bytes_in, bytes_out]`` of every link, closed ones included."""
    t = list(_transport.closed_totals)
    for link in _node.all_links():
        t[0] += link.frames_in
        t[1] += link.frames_out
        t[2] += link.bytes_in
        t[3] += link.bytes_out
    return t


#: samples ``(monotonic time, msgs_in, msgs_out, msgs_local)`` taken by node_info, for rates
_samples: deque[tuple[float, int, int, int]] = deque(maxlen=256)
RATE_SPAN = 1.0  # rates are measured over at least this many seconds (the newest such sample)
_SAMPLE_EVERY = 0.25
_SAMPLE_KEEP = 60.0


def _rates(now: float, counts: list[int]) -> dict[str, float]:
    """Messages per second over the recent past: since the newest sample at least
    ``RATE_SPAN`` s old (node_info keeps one every ``_SAMPLE_EVERY`` s it is called), else since
    the node started."""
    while _samples and now - _samples[0][0] > _SAMPLE_KEEP:
        _samples.popleft()
    base = None
    for s in _samples:
        if now - s[0] >= RATE_SPAN:
            base = s
        else:
            break
    if not _samples or now - _samples[-1][0] >= _SAMPLE_EVERY:
        _samples.append((now, counts[0], counts[1], counts[2]))
    if base is None:
        span = max(time.time() - _k.started, 1e-3)
        deltas = counts
    else:
        span = now - base[0]
        deltas = [c - b for c, b in zip(counts, base[1:])]
    return {
        name: round(max(d, 0) / span, 3)
        for name, d in zip(("msgs_in", "msgs_out", "msgs_local"), deltas)
    }


def _live_ports() -> list[Any]:
    """The local ports (the node port left out)."""
    return [p for p in list(_k.port_table.values()) if hasattr(p, "handled")]


def node_info() -> dict[str, Any]:
    """This node at a glance: identity, uptime, nodes, ports, database families, message
    totals over all links (closed ones included) and recent rates per second.

    Keys: ``node pid version uptime started up_nodes known_nodes global_nodes is_global ports
    greenlet_ports db msgs_in msgs_out bytes_in bytes_out msgs_local rates``
    (docs/introspection.md). ``rates`` are measured since the newest earlier call at least a
    second ago, or since the node started.

    Example::

        >>> info = node_info()
        >>> info["node"] == NODE() and info["ports"] >= 0
        True
    """
    ports = _live_ports()
    greenlets = sum(1 for p in ports if getattr(p, "greenlet", None) is not None)
    t = _totals()
    local = _k.local_sends
    now = time.time()
    return {
        "node": _k.this_node,
        "pid": os.getpid(),
        "version": __version__,
        "uptime": round(now - _k.started, 3),
        "started": _k.started,
        "up_nodes": sorted(_node.up_nodes()),
        "known_nodes": sorted(_node.known_nodes()),
        "global_nodes": _g.global_nodes(),
        "is_global": _g.is_global(),
        "ports": len(ports),
        "greenlet_ports": greenlets,
        "db": dict(sorted(_g.family_sizes().items())),
        "msgs_in": t[0],
        "msgs_out": t[1],
        "bytes_in": t[2],
        "bytes_out": t[3],
        "msgs_local": local,
        "rates": _rates(time.monotonic(), [t[0], t[1], local]),
    }


def _mailbox(p: Any) -> int:
    return len(getattr(p, "mailbox", None) or ())


def ports_info(limit: Optional[int] = None, sort: str = "handled") -> list[dict[str, Any]]:
    """The local ports, busiest first: ``sort`` is ``"handled"`` (messages handled),
    ``"mailbox"`` (messages waiting) or ``"age"`` (oldest first); ``limit`` keeps that many.

    Each entry: ``{"id", "kind": "callback"|"greenlet", "mailbox", "handled", "age",
    "monitors": [IDs of the ports it monitors], "monitored_by": number of monitors on it}``.
    A port's monitors are the ones made in its context (``mon``, ``call``) or naming it as the
    port to kill or tell (``mon(port, rcvport)``).

    Example::

        p = port(lambda *m: None)
        snd(p, "x")
        print(ports_info(limit=3))   # [{'id': p, 'kind': 'callback', 'handled': 1, ...}, ...]
    """
    if sort not in _SORTS:
        raise ValueError("ports_info: sort must be one of %s, not %r" % (_SORTS, sort))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError("ports_info: limit must be a non-negative integer, not %r" % (limit,))
    ports = _live_ports()
    if sort == "handled":
        key: Any = lambda p: p.handled  # noqa: E731
    elif sort == "mailbox":
        key = _mailbox
    else:
        key = lambda p: -p.created  # noqa: E731 - the oldest first
    if limit is None:
        ports.sort(key=key, reverse=True)
    else:
        ports = heapq.nlargest(limit, ports, key=key)
    if not ports:
        return []
    watching = _monitored_by_owner()
    now = time.monotonic()
    out = []
    for p in ports:
        mons = p.monitors
        out.append(
            {
                "id": p.id,
                "kind": "greenlet" if getattr(p, "greenlet", None) is not None else "callback",
                "mailbox": _mailbox(p),
                "handled": p.handled,
                "age": round(now - p.created, 3),
                "monitors": watching.get(p.id, []),
                "monitored_by": len(mons) if mons else 0,
            }
        )
    return out


def _monitored_by_owner() -> dict[str, list[str]]:
    """``{port ID: [IDs of the ports it monitors]}`` from every monitor on this node."""
    out: dict[str, list[str]] = {}

    def add(owner: Optional[str], target: str) -> None:
        if owner is not None:
            lst = out.setdefault(owner, [])
            if target not in lst:
                lst.append(target)

    for p in _live_ports():
        mons = p.monitors
        if mons:
            for action in mons:
                add(_k.monitor_owner(action), p.id)
    for target, actions in _node.remote_monitors():
        for action in actions:
            add(_k.monitor_owner(action), target)
    return out


def _peer_addr(link: Any) -> str:
    try:
        host, port = link.sock.getpeername()[:2]
    except (OSError, ValueError, AttributeError):
        return "?"
    return _transport.bind_string(host, port)


def links_info() -> list[dict[str, Any]]:
    """This node's open links to other nodes.

    Each entry: ``{"peer", "addr": "host:port", "direction": "in"|"out", "framing",
    "recv_framing", "auth", "tls", "msgs_in", "msgs_out", "bytes_in", "bytes_out",
    "write_buffer": bytes queued, "rtt": seconds or None, "since": epoch}``. ``framing`` is
    what this node sends, ``recv_framing`` what the peer sends; ``rtt`` is the round trip of
    the last keepalive probe, which goes out when a link was quiet for a third of
    ``monitor_timeout`` (None until one was answered).

    Example::

        for link in links_info():
            print(link["peer"], link["msgs_in"], link["rtt"])
    """
    out = []
    for link in _node.all_links():
        out.append(
            {
                "peer": link.nodeid,
                "addr": _peer_addr(link),
                "direction": "out" if link.outgoing else "in",
                "framing": link.send_framing,
                "recv_framing": link.recv_framing,
                "auth": link.auth or "",
                "tls": bool(link.tls),
                "msgs_in": link.frames_in,
                "msgs_out": link.frames_out,
                "bytes_in": link.bytes_in,
                "bytes_out": link.bytes_out,
                "write_buffer": link.bytes_pending,
                "rtt": None if link.rtt is None else round(link.rtt, 6),
                "since": link.since,
            }
        )
    out.sort(key=lambda d: (d["peer"], d["since"]))
    return out


def snapshot(ports: int = 10) -> dict[str, Any]:
    """``{"node": node_info(), "ports": ports_info(limit=ports), "links": links_info()}``.

    Example::

        s = snapshot(ports=5)
        print(s["node"]["rates"], [p["id"] for p in s["ports"]])
    """
    return {"node": node_info(), "ports": ports_info(limit=ports), "links": links_info()}


# --------------------------------------------------------------------------- over the network


def _answer(what: Any, kw: Any, max_ports: Optional[int] = None) -> Any:
    """The introspection ``what`` with the arguments ``kw`` (validated: they may come from the
    network)."""
    if what not in _WHATS:
        raise ValueError("unknown introspection %r (one of %s)" % (what, ", ".join(_WHATS)))
    if not isinstance(kw, dict):
        raise ValueError("introspection arguments must be a mapping, not %r" % (type(kw).__name__,))
    allowed = {"snapshot": ("ports",), "node": (), "ports": ("limit", "sort"), "links": ()}[what]
    bad = sorted(str(k) for k in kw if k not in allowed)
    if bad:
        raise ValueError("introspection %r takes no argument %s" % (what, ", ".join(bad)))

    def count(name: str, default: Optional[int]) -> Optional[int]:
        n = kw.get(name, default)
        if n is None:
            return max_ports  # (None for a local caller: every port)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("%s must be a non-negative integer, not %r" % (name, n))
        return n if max_ports is None else min(n, max_ports)

    if what == "node":
        return node_info()
    if what == "links":
        return links_info()
    if what == "ports":
        return ports_info(limit=count("limit", None), sort=kw.get("sort", "handled"))
    n = count("ports", 10)
    return {"node": node_info(), "ports": ports_info(limit=n), "links": links_info()}


def _req_info(from_node: str, what: Any = None, kw: Any = None, *reply: Any) -> None:
    """Node request ``aemp_green/info``: ``[what, {args}, *reply]``; the reply port gets
    ``(error_text, result)`` (``""`` and the answer, or the reason and None)."""
    if not reply or reply[0].__class__ is not str:
        _rl.warning(
            (from_node, "info"), "introspection request from %s without a reply port", from_node
        )
        return
    if _k.secure_mode and not _config.setting("allow_introspection", False):
        _rl.warning(
            (from_node, "info secure"),
            "secure node: refused introspection request from %s (setting allow_introspection)",
            from_node,
        )
        _k.snd(
            *reply,
            _REFUSED + "node %s is secure and refuses introspection requests "
            "(its setting allow_introspection is false)" % _k.this_node,
            None,
        )
        return
    try:
        cap = int(_config.setting("introspection_max_ports", 1000) or 1000)
        result = _answer(what, kw if kw is not None else {}, max_ports=cap)
    except (ValueError, TypeError) as exc:
        _rl.warning(
            (from_node, "info bad"), "bad introspection request from %s: %s", from_node, esc(exc)
        )
        _k.snd(*reply, "bad request: %s" % (exc,), None)
        return
    _k.snd(*reply, "", result)


_k.register_node_request(REQUEST, _req_info)


def info(
    nodeid: str, what: str = "snapshot", timeout: float = 5.0, **kw: Any
) -> Union[dict[str, Any], list[dict[str, Any]]]:
    """Ask the node ``nodeid`` for its introspection: ``what`` is ``"snapshot"`` (the default,
    with ``ports=N``), ``"node"``, ``"ports"`` (with ``limit=N``, ``sort=...``) or ``"links"``;
    the answer is what ``snapshot``, ``node_info``, ``ports_info`` or ``links_info`` return
    there. This node itself answers directly.

    Blocks the calling greenlet (not a callback handler). Raises ``Timeout`` when no answer came
    within ``timeout`` s (a Perl node, or any node that does not know the request, never
    answers), ``NodeUnreachable`` when the node cannot be reached, ``IntrospectionRefused``
    when it is ``secure`` without ``allow_introspection``, ``AempError`` when it refused the
    arguments.

    Example::

        links = info("worker/1", "links", timeout=2)
        top = info("worker/1", "ports", limit=5, sort="mailbox")
    """
    if what not in _WHATS:
        raise ValueError("info: what must be one of %s, not %r" % (", ".join(_WHATS), what))
    if nodeid == _k.this_node:
        local: Union[dict[str, Any], list[dict[str, Any]]] = _answer(what, kw)
        return local
    try:
        answer = _ports.call(nodeid, REQUEST, what, kw, timeout=timeout)
    except Timeout:
        raise Timeout(
            "node %s did not answer the introspection request within %s s: it does not know "
            "%r (a Perl node or an older aemp_green ignores it) or is overloaded"
            % (nodeid, timeout, REQUEST)
        ) from None
    if len(answer) != 2 or not isinstance(answer[0], str):
        raise AempError("node %s sent a malformed introspection answer" % (nodeid,))
    err, result = answer
    if err:
        if err.startswith(_REFUSED):
            raise IntrospectionRefused(err[len(_REFUSED) :])
        raise AempError("node %s: %s" % (nodeid, err))
    if not isinstance(result, list if what in ("ports", "links") else dict):
        raise AempError("node %s sent a malformed introspection answer" % (nodeid,))
    checked: Union[dict[str, Any], list[dict[str, Any]]] = result
    return checked
