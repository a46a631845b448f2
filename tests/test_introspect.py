"""Introspection (docs/introspection.md): the local API in this process, ``info`` between real
node processes, the refusal of a secure node, and a peer that does not know the request."""

import json
import time

import pytest

import aemp_green
from aemp_green import (
    info,
    kil,
    links_info,
    mon,
    node_info,
    port,
    ports_info,
    receive,
    snapshot,
    snd,
    spawn,
)
from conftest import flush, wait_until
from netutil import RawPeer

# ----------------------------------------------------------------------------- local API


def test_port_counters_and_order():
    got = []
    busy = port(lambda *m: got.append(m))
    quiet = port(lambda *m: None)

    def worker():
        while True:
            receive("job")

    w = spawn(worker)
    try:
        for i in range(7):
            snd(busy, "m", i)
        for i in range(3):
            snd(w, "job", i)
        snd(quiet, "m")
        wait_until(lambda: len(got) == 7)
        wait_until(lambda: {p["id"]: p for p in ports_info()}[w]["handled"] == 3)
        by_id = {p["id"]: p for p in ports_info()}
        assert by_id[busy]["handled"] == 7 and by_id[busy]["kind"] == "callback"
        assert by_id[w]["kind"] == "greenlet" and by_id[w]["mailbox"] == 0
        assert by_id[quiet]["handled"] == 1
        top = ports_info(limit=2)  # the busiest two of the process (earlier tests' ports too)
        assert len(top) == 2 and top[0]["handled"] >= max(7, top[1]["handled"]), top
        mine = [p["id"] for p in ports_info() if p["id"] in (busy, quiet, w)]
        assert mine == [busy, w, quiet]  # ours, busiest first
        handled = [p["handled"] for p in ports_info()]
        assert handled == sorted(handled, reverse=True)
        ages = [p["age"] for p in ports_info(sort="age")]
        assert ages == sorted(ages, reverse=True) and all(a >= 0 for a in ages)
        json.dumps(snapshot())  # JSON-able throughout
    finally:
        for p in (busy, quiet, w):
            kil(p)


def test_mailbox_and_monitors():
    def sleeper():
        receive("never")

    s = spawn(sleeper)
    watcher = port(lambda *m: None)
    try:
        flush()
        for i in range(4):
            snd(s, "other", i)
        mon(s, watcher)  # watcher is the port that monitors s
        by_id = {p["id"]: p for p in ports_info(sort="mailbox")}
        assert by_id[s]["mailbox"] == 4 and by_id[s]["monitored_by"] == 1
        assert by_id[watcher]["monitors"] == [s]
        assert ports_info(sort="mailbox", limit=1)[0]["id"] == s
    finally:
        kil(s)
        kil(watcher)


def test_call_monitor_belongs_to_the_calling_port():
    def server():
        receive("never")  # keeps the call waiting

    srv = spawn(server)
    caller = spawn(lambda: aemp_green.call(srv, "hold", timeout=5))
    try:
        by_id = wait_until(
            lambda: (d := {p["id"]: p for p in ports_info()}) and d[caller]["monitors"] and d
        )
        assert by_id[caller]["monitors"] == [srv] and by_id[srv]["monitored_by"] == 1
    finally:
        kil(caller)
        kil(srv)


def test_local_sends_counted_and_bad_arguments():
    before = node_info()["msgs_local"]
    p = port(lambda *m: None)
    for _ in range(5):
        snd(p, "x")
    kil(p)
    n = node_info()
    assert n["msgs_local"] - before == 5
    assert n["node"] == aemp_green.NODE() and n["ports"] >= 1
    assert set(n["rates"]) == {"msgs_in", "msgs_out", "msgs_local"}
    assert links_info() == []
    with pytest.raises(ValueError, match="sort"):
        ports_info(sort="size")
    with pytest.raises(ValueError, match="limit"):
        ports_info(limit=-1)
    with pytest.raises(ValueError, match="what"):
        info(aemp_green.NODE(), "everything")
    assert info(aemp_green.NODE(), "node")["node"] == aemp_green.NODE()


# ----------------------------------------------------------------------------- between nodes

# the keepalive probe goes out after a third of monitor_timeout of quiet: a short one gives an
# RTT within a second
FAST = {"monitor_timeout": 1.5}


def registered(seed, *nodes):
    """Wait until the seed knows where ``nodes`` listen (before that, a lookup through it
    finds no address)."""
    want = {n.nodeid: n.binds for n in nodes}
    seed.run(
        "wait_for(lambda: all(db_family(\"'l\", timeout=5).get(k) == v for k, v in %r.items()))"
        % (want,),
        timeout=15,
    )


def test_info_from_another_node(cluster):
    seed = cluster.seed(**FAST)
    a, b = cluster.start(
        ("a", dict(seeds=[seed.addr], **FAST)), ("b", dict(seeds=[seed.addr], **FAST))
    )
    registered(seed, a, b)
    b.run("""
        GOT = []
        SINK = port(lambda *m: GOT.append(m))
        db_set("workers", "b", 1)
    """)
    sink = b.ask("SINK")
    a.run("for i in range(25): snd(%r, 'job', i, 'x' * 100)" % sink)
    b.run("wait_for(lambda: len(GOT) == 25)")
    a.run(
        """
        def ask():
            return info('b', 'snapshot', timeout=5, ports=5)
        # the probe goes out on a quiet link: ask, then leave it quiet for a while
        deadline = time.monotonic() + 10
        SNAP = ask()
        while not [l for l in SNAP['links'] if l['peer'] == 'a' and l['rtt']]:
            assert time.monotonic() < deadline, SNAP['links']
            gevent.sleep(1.0)
            SNAP = ask()
    """,
        timeout=20,
    )
    snap = a.ask("SNAP")
    nodei = snap["node"]
    assert nodei["node"] == "b" and nodei["pid"] == b.proc.pid
    assert "a" in nodei["up_nodes"] and "seed" in nodei["global_nodes"]
    assert nodei["is_global"] is False
    assert nodei["msgs_in"] >= 25 and nodei["bytes_in"] > 25 * 100
    top = snap["ports"][0]
    assert top["id"] == sink and top["handled"] == 25 and top["kind"] == "callback"
    assert len(snap["ports"]) <= 5
    (link,) = [x for x in snap["links"] if x["peer"] == "a"]
    assert link["msgs_in"] >= 25 and link["bytes_in"] > 25 * 100 and link["msgs_out"] >= 1
    assert link["framing"] in ("json", "cbor") and link["auth"] == "hmac_sha3_512"
    assert link["tls"] is False and link["direction"] in ("in", "out")
    assert 0 < link["rtt"] < 1.0 and link["since"] <= time.time()
    assert link["addr"].startswith("127.0.0.1:")
    # the other whats, and arguments
    assert a.ask("info('b', 'node')['node']") == "b"
    assert a.ask("[p['id'] for p in info('b', 'ports', limit=1)]") == [sink]
    assert a.ask("sorted(l['peer'] for l in info('b', 'links'))") == sorted(
        x["peer"] for x in snap["links"]
    )
    # the seed is global: it knows the database families of the network
    assert a.ask("info('seed', 'node')['db'].get('workers')") == 1
    # arguments that make no sense come back as an error, the node keeps answering
    a.run("""
        try:
            info('b', 'ports', sort='size')
        except aemp_green.AempError as e:
            emit('bad', type(e).__name__, str(e))
    """)
    kind, text = a.expect("bad")
    assert kind == "AempError" and "sort" in text
    assert a.ask("info('b', 'node')['node']") == "b"


def test_secure_node_refuses_unless_allowed(cluster):
    seed = cluster.seed()
    a, vault, open_ = cluster.start(
        ("a", dict(seeds=[seed.addr])),
        ("vault", dict(seeds=[seed.addr], secure=True)),
        ("open", dict(seeds=[seed.addr], secure=True, allow_introspection=True)),
    )
    registered(seed, a, vault, open_)
    a.run(
        """
        t0 = time.monotonic()
        try:
            info('vault', 'node', timeout=5)
        except Exception as e:
            emit('refused', type(e).__name__, str(e), time.monotonic() - t0)
    """,
        timeout=15,
    )
    kind, text, took = a.expect("refused", 10)
    assert kind == "IntrospectionRefused", text
    assert "vault" in text and "secure" in text and "allow_introspection" in text
    assert took < 4  # an answer, not a timeout
    vault.wait_log("refused introspection request from a")
    assert a.ask("info('open', 'node')['node']") == "open"


def test_node_that_does_not_know_the_request(cluster):
    """A Perl node (or an older aemp_green) ignores the request: ``info`` says so after its
    timeout. The peer here is a raw AEMP client that completes the handshake and answers
    nothing."""
    a = cluster.node("a")
    peer = RawPeer(a.addr, nodeid="mute/1")
    try:
        peer.handshake()
        a.run("wait_for(lambda: node_is_up('mute/1'))")
        a.exec("""
            t0 = time.monotonic()
            try:
                info('mute/1', 'node', timeout=1.5)
            except Exception as e:
                emit('silent', type(e).__name__, str(e), time.monotonic() - t0)
        """)
        data = b""
        deadline = time.monotonic() + 10
        while b"aemp_green/info" not in data and time.monotonic() < deadline:
            peer.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data += peer.sock.recv(65536)
        assert b"aemp_green/info" in data  # the request did reach the peer
        kind, text, took = a.expect("silent", 10)
        assert kind == "Timeout", text
        assert "mute/1" in text and "did not answer" in text and "Perl" in text
        assert 1.4 <= took < 4
    finally:
        peer.close()


def test_a_callback_port_stays_small_with_its_counter():
    """The per-port counter must not grow a callback port past 64 bytes (the next allocation
    size costs ~10% on creating and killing ports, bench/local.py): handlers and the catch-all
    share one slot, with and without tag handlers."""
    import sys

    from aemp_green import kernel, rcv

    p = port(lambda *m: None)
    q = port()
    rcv(q, "a", lambda: None, "b", lambda: None)
    try:
        assert sys.getsizeof(kernel.port_table[p]) <= 64
        assert sys.getsizeof(kernel.port_table[q]) <= 64
    finally:
        kil(p)
        kil(q)
