"""The setting ``metrics``: a node serves its introspection counters in Prometheus text format
(aemp_green.metrics); scraped here over HTTP from a real node process."""

import re
import time
import urllib.request

import pytest

from netutil import free_port

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="the extra aemp_green[metrics] (prometheus_client) is missing"
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(addr, timeout=5):
    with urllib.request.urlopen("http://%s/metrics" % addr, timeout=timeout) as r:
        assert r.status == 200
        return r.read().decode()


def samples(text):
    """``{(name, frozenset(labels.items())): value}`` of a scrape (parsed by the client's own
    parser, so the text is valid exposition format)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_scrape_a_node(cluster):
    maddr = "127.0.0.1:%d" % free_port()
    seed = cluster.seed()
    a = cluster.node("a", seeds=[seed.addr], metrics=maddr)
    b = cluster.node("b", seeds=[seed.addr])
    a.run("""
        GOT = []
        SINK = port(lambda *m: GOT.append(m))
        for i in range(12):
            snd(SINK, "local", i)
    """)
    sink = a.ask("SINK")
    b.run("for i in range(30): snd(%r, 'remote', i)" % sink, timeout=15)
    a.run("wait_for(lambda: len(GOT) == 42)")
    deadline = time.monotonic() + 10
    while True:  # the listener is up once configure() returned; this is a bounded retry anyway
        try:
            text = scrape(maddr)
            break
        except OSError:
            assert time.monotonic() < deadline, a.log_tail()
            time.sleep(0.05)
    s = samples(text)
    node = ("node", "a")
    assert s[("aemp_messages_local_total", frozenset([node]))] >= 12
    assert s[("aemp_messages_in_total", frozenset([node]))] >= 30
    assert s[("aemp_bytes_in_total", frozenset([node]))] > 0
    assert s[("aemp_ports", frozenset([node]))] >= 1
    assert s[("aemp_up_nodes", frozenset([node]))] >= 2
    link_in = [
        v
        for (name, labels), v in s.items()
        if name == "aemp_link_messages_in_total" and ("peer", "b") in labels
    ]
    assert link_in and link_in[0] >= 30
    handled = [
        v
        for (name, labels), v in s.items()
        if name == "aemp_port_messages_handled_total" and ("port", sink) in labels
    ]
    assert handled == [42.0]
    # the counters move between scrapes
    a.run("for i in range(5): snd(SINK, 'more', i)")
    s2 = samples(scrape(maddr))
    assert (
        s2[("aemp_messages_local_total", frozenset([node]))]
        >= s[("aemp_messages_local_total", frozenset([node]))] + 5
    )
    assert re.search(r"^# TYPE aemp_link_rtt_seconds gauge$", text, re.M)
    # and the node is none the worse for it
    assert a.ask("len(GOT)") == 47
