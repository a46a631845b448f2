"""STAND-IN for the introspect helper's module (docs: INTROSPECT_API contract); replaced by
the real one when branch ``introspect`` is merged. Only enough for the observer to run."""

import os
import time
from typing import Any, Optional

import gevent
from gevent.event import AsyncResult

from . import global_, kernel as _k, node as _node, ports as _ports
from .exceptions import Timeout

_started = time.time()


def node_info() -> dict[str, Any]:
    """This node (stand-in). Example:: node_info()["node"]"""
    return {
        "node": _k.this_node,
        "pid": os.getpid(),
        "version": "stand-in",
        "uptime": time.time() - _started,
        "started": _started,
        "up_nodes": _node.up_nodes(),
        "known_nodes": _node.known_nodes(),
        "global_nodes": [],
        "is_global": global_.is_global(),
        "ports": 3,
        "greenlet_ports": 1,
        "db": {"'l": 1},
        "msgs_in": 0,
        "msgs_out": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "msgs_local": 0,
        "rates": {"msgs_in": 0.0, "msgs_out": 0.0, "msgs_local": 0.0},
    }


def ports_info(limit: Optional[int] = None, sort: str = "handled") -> list[dict[str, Any]]:
    """Ports (stand-in). Example:: ports_info(5)"""
    return [
        {
            "id": _k.this_node + "#x",
            "kind": "greenlet",
            "mailbox": 0,
            "handled": 1,
            "age": 1.0,
            "monitors": [],
            "monitored_by": 0,
        }
    ][:limit]


def links_info() -> list[dict[str, Any]]:
    """Links (stand-in). Example:: links_info()"""
    return [{"peer": n, "msgs_in": 0, "msgs_out": 0} for n in _node.up_nodes()]


def snapshot(ports: int = 10) -> dict[str, Any]:
    """All of the above (stand-in). Example:: snapshot()"""
    return {"node": node_info(), "ports": ports_info(limit=ports), "links": links_info()}


def _req(from_node: str, what: str, kw: dict[str, Any], *reply: Any) -> None:
    _k.snd(*reply, snapshot(**kw))


_k.register_node_request("aemp_green/info", _req)


def info(nodeid: str, what: str = "snapshot", timeout: float = 5.0, **kw: Any) -> Any:
    """Another node's snapshot (stand-in). Example:: info("seed")"""
    res: AsyncResult = AsyncResult()
    p = _ports.port(lambda *msg: res.set(msg[0]))
    try:
        _k.snd(nodeid + "#", "aemp_green/info", what, kw, p)
        with gevent.Timeout(timeout, Timeout("no answer from %s" % nodeid)):
            return res.get()
    finally:
        _k.kil(p)
