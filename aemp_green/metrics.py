"""metrics: this node's introspection counters in Prometheus text format.

With the setting ``metrics`` (``"host:port"``; a bare port listens on 127.0.0.1) a configured
node serves ``GET /metrics`` there, from gevent's WSGI server in the node's own hub (no thread).
It needs the optional extra ``aemp_green[metrics]`` (the ``prometheus_client`` library); without
it the node logs one error and runs on without metrics. ``serve(address)`` starts the same
server by hand; ``Collector`` is the custom collector, for a registry of your own.

Metrics (every one labelled with ``node``; docs/introspection.md lists them):

* node: ``aemp_messages_in_total``, ``aemp_messages_out_total``, ``aemp_bytes_in_total``,
  ``aemp_bytes_out_total``, ``aemp_messages_local_total``, ``aemp_ports``,
  ``aemp_greenlet_ports``, ``aemp_up_nodes``, ``aemp_known_nodes``, ``aemp_start_time_seconds``,
  ``aemp_db_keys{family}``;
* per link (``peer``, ``direction``): ``aemp_link_messages_in_total``,
  ``aemp_link_messages_out_total``, ``aemp_link_bytes_in_total``, ``aemp_link_bytes_out_total``,
  ``aemp_link_write_buffer_bytes``, ``aemp_link_rtt_seconds``;
* the ``metrics_ports`` busiest ports (``port``, ``kind``): ``aemp_port_messages_handled_total``,
  ``aemp_port_mailbox``.

Example::

    configure(nodeid="worker/", metrics="127.0.0.1:9464")
    # curl http://127.0.0.1:9464/metrics
"""

import logging
from typing import Any, Iterator

from . import introspect as _introspect
from . import kernel as _k
from .config import parse_address

__all__ = ["Collector", "serve", "server_address", "configured"]

logger = logging.getLogger(__name__)

_server: Any = None


class Collector:
    """A ``prometheus_client`` custom collector reading ``aemp_green.introspect`` at each
    scrape (register it with a ``CollectorRegistry``).

    Example::

        from prometheus_client import CollectorRegistry, generate_latest
        reg = CollectorRegistry()
        reg.register(Collector())
        print(generate_latest(reg).decode())
    """

    def __init__(self, ports: int = 10) -> None:
        self.ports = ports

    def collect(self) -> Iterator[Any]:
        """The metric families, read now (called by ``prometheus_client`` per scrape).

        Example::

            names = [m.name for m in Collector().collect()]
        """
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        me = _k.this_node
        n = _introspect.node_info()

        def family(cls: Any, name: str, doc: str, value: Any = None, labels: Any = ()) -> Any:
            m = cls(name, doc, labels=["node", *labels])
            if value is not None:
                m.add_metric([me], value)
            return m

        counters = (
            ("aemp_messages_in", "Messages received from other nodes.", "msgs_in"),
            ("aemp_messages_out", "Messages sent to other nodes.", "msgs_out"),
            ("aemp_bytes_in", "Bytes received from other nodes.", "bytes_in"),
            ("aemp_bytes_out", "Bytes written to other nodes.", "bytes_out"),
            ("aemp_messages_local", "Messages sent to ports of this node.", "msgs_local"),
        )
        for name, doc, key in counters:
            yield family(CounterMetricFamily, name, doc, n[key])
        gauges = (
            ("aemp_ports", "Ports of this node.", n["ports"]),
            ("aemp_greenlet_ports", "Greenlet ports of this node.", n["greenlet_ports"]),
            ("aemp_up_nodes", "Nodes this node has a link to.", len(n["up_nodes"])),
            ("aemp_known_nodes", "Nodes this node knows of.", len(n["known_nodes"])),
            ("aemp_start_time_seconds", "When this node started (epoch).", n["started"]),
        )
        for name, doc, value in gauges:
            yield family(GaugeMetricFamily, name, doc, value)
        db = family(
            GaugeMetricFamily, "aemp_db_keys", "Keys per database family.", None, ["family"]
        )
        for fam, keys in n["db"].items():
            db.add_metric([me, fam], keys)
        yield db

        links = _introspect.links_info()
        lab = ["peer", "direction"]
        per_link = (
            (
                CounterMetricFamily,
                "aemp_link_messages_in",
                "Messages received on a link.",
                "msgs_in",
            ),
            (CounterMetricFamily, "aemp_link_messages_out", "Messages sent on a link.", "msgs_out"),
            (CounterMetricFamily, "aemp_link_bytes_in", "Bytes received on a link.", "bytes_in"),
            (CounterMetricFamily, "aemp_link_bytes_out", "Bytes written on a link.", "bytes_out"),
            (GaugeMetricFamily, "aemp_link_write_buffer_bytes", "Bytes queued.", "write_buffer"),
            (GaugeMetricFamily, "aemp_link_rtt_seconds", "Keepalive round trip.", "rtt"),
        )
        for cls, name, doc, key in per_link:
            m = family(cls, name, doc, None, lab)
            for link in links:
                if link[key] is not None:
                    m.add_metric([me, link["peer"], link["direction"]], link[key])
            yield m

        ports = _introspect.ports_info(limit=self.ports)
        handled = family(
            CounterMetricFamily,
            "aemp_port_messages_handled",
            "Messages handled by one of the busiest ports.",
            None,
            ["port", "kind"],
        )
        mailbox = family(
            GaugeMetricFamily,
            "aemp_port_mailbox",
            "Messages waiting in one of the busiest ports' mailbox.",
            None,
            ["port", "kind"],
        )
        for p in ports:
            handled.add_metric([me, p["id"], p["kind"]], p["handled"])
            mailbox.add_metric([me, p["id"], p["kind"]], p["mailbox"])
        yield handled
        yield mailbox


def serve(address: str, ports: int = 10) -> tuple[str, int]:
    """Serve the metrics at ``address`` (``"host:port"``; port 0 or none: a free one) from
    gevent's WSGI server; returns the ``(host, port)`` bound. Raises ``ImportError`` without
    ``prometheus_client`` and ``OSError`` when the address cannot be bound.

    Example::

        host, port = serve("127.0.0.1:0")
        # scrape http://host:port/metrics
    """
    global _server
    from gevent.pywsgi import WSGIServer
    from prometheus_client import CollectorRegistry, make_wsgi_app

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(ports))
    host, port = parse_address(address, default_host="127.0.0.1")
    if host == "*":
        host = ""
    server = WSGIServer((host, port or 0), make_wsgi_app(registry), log=None)
    server.start()
    if _server is not None:
        _server.stop(timeout=0)
    _server = server
    bound = (str(server.address[0]), int(server.address[1]))
    logger.info("metrics of %s at http://%s/metrics", _k.this_node, "%s:%d" % bound)
    return bound


def server_address() -> Any:
    """``(host, port)`` the metrics are served at, or None.

    Example::

        print(server_address())    # ('127.0.0.1', 9464)
    """
    return None if _server is None else tuple(_server.address[:2])


def configured(cfg: dict[str, Any]) -> None:
    """Serve the metrics when the setting ``metrics`` names an address (``configure`` calls it
    with the effective configuration); a failure is logged, the node runs on without them.

    Example::

        configured({"metrics": "127.0.0.1:9464"})
    """
    address = cfg.get("metrics")
    if not address:
        return
    limit = int(cfg.get("metrics_ports") or 10)
    try:
        serve(address, limit)
    except ImportError:
        logger.error(
            "setting metrics=%s: prometheus_client is not installed (pip install "
            "'aemp_green[metrics]'): no metrics served",
            address,
        )
    except OSError as exc:
        logger.error("setting metrics: cannot listen on %s: %s", address, exc)
