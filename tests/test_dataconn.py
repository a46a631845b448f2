"""DataConn (docs/api.md#side-services): direct, authenticated byte streams between two nodes over
the nodes' own listener (protocol ``aemp-dataconn``), for bulk data that must not block the
message link.

Remote tests use real child nodes (``tests/child.py``; functions run by name live in
``tests/dcfuncs.py``); the local-target tests run in this process, which never calls
``configure()``.
"""

import json

import gevent
import gevent.socket
import pytest

import aemp_green
from aemp_green.dataconn import DataConnError, connect_to
from conftest import Collector, flush, run_in_greenlet
from netutil import RawPeer, free_port, read_until_closed

# slow (docs/testing.md): real processes, ~20 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow


def start_nodes(cluster, *names, load=True, **cfgs):
    """A seed plus nodes ``names`` using it, each registered with the seed (so they find each
    other); ``load`` imports ``dcfuncs`` (and so ``aemp_green.dataconn``) in each."""
    seed = cluster.seed("seed")
    nodes = cluster.start(*[(n, dict(cfgs.get(n, {}), seeds=[seed.addr])) for n in names])
    want = {n.nodeid: n.binds for n in nodes}
    seed.run(
        "wait_for(lambda: all(db_family(\"'l\", timeout=5).get(k) == v for k, v in %r.items()))"
        % (want,),
        timeout=15,
    )
    for n in nodes if load else ():
        n.run("import aemp_green.dataconn as dataconn; import dcfuncs")
    return [seed] + nodes


# --------------------------------------------------------------------------- between processes


def test_bulk_100mb_checksum_while_messages_keep_flowing(cluster):
    """100 MB go A -> B over a data connection and arrive with the same SHA-256, while a
    ping-pong between the same two nodes on their message link keeps going during the whole
    transfer (the data socket yields to the event loop on both ends)."""
    seed, a, b = start_nodes(cluster, "A", "B")
    b.run('PONG = port(lambda tag, reply, i: snd(reply, "pong", i))')
    pong = b.ask("PONG")
    a.exec(
        """
        import hashlib
        state = {"done": False, "pongs": 0, "worst": 0.0}

        def _sink_report(*m):
            state["done"] = True
            emit("report", *m, state["pongs"], state["worst"])

        REPORT = port(_sink_report)

        def pinger():
            i = 0
            while not state["done"]:
                t0 = time.monotonic()
                snd(%r, "ping", SELF(), i)
                receive("pong", timeout=20)
                state["worst"] = max(state["worst"], time.monotonic() - t0)
                state["pongs"] += 1
                i += 1

        sock = dataconn.connect_to("B", "dcfuncs.sink", REPORT, timeout=10)
        spawn(pinger)
        block = bytes(range(256)) * 4096
        h = hashlib.sha256()
        t0 = time.monotonic()
        for i in range(100):
            chunk = dcfuncs.pattern_chunk(i, block)
            h.update(chunk)
            sock.sendall(chunk)
        sock.close()
        emit("sent", 100 * len(block), h.hexdigest(), time.monotonic() - t0)
    """
        % pong
    )
    nbytes, digest, dt = a.expect("sent", timeout=60)
    assert nbytes == 100 << 20
    tag, n, sink_digest, pongs, worst = a.expect("report", timeout=60)
    assert (tag, n, sink_digest) == ("sink_done", nbytes, digest)
    # the message link was served during the transfer: round trips kept completing
    assert pongs >= 10, (pongs, dt)
    assert worst < 1.0, (worst, dt)
    print("100 MB in %.2f s, %d round trips meanwhile, worst %.1f ms" % (dt, pongs, worst * 1e3))


def test_init_port_initdata_and_both_directions(cluster):
    """``init(*initdata, sock)`` runs on the target in a new port (SELF is that port), with
    JSON initdata intact; the caller gets a gevent socket; bytes flow both ways; the
    connection works towards either node; the target's socket closes when its port ends."""
    seed, a, b = start_nodes(cluster, "A", "B")
    value = {"ü": [1, None, 2.5, "✓"], "n": 2**40}
    a.run(
        """
        REPORT = port(lambda *m: emit("report", *m))
        S = dataconn.connect_to("B", "dcfuncs.hello_init", REPORT, %r, timeout=10)
        emit("is_gevent_socket", isinstance(S, gevent.socket.socket))
        buf = b""
        while not buf.endswith(b"\\n"):
            buf += S.recv(100)
        emit("line", buf.decode())
    """
        % (value,)
    )
    assert a.expect("is_gevent_socket") == [True]
    tag, got, init_port, where = a.expect("report")
    assert (tag, got, where) == ("init_called", value, "B")
    assert init_port.startswith("B#")
    assert a.expect("line") == ["hello from B\n"]
    # the init port lives while it reads; closing our end ends it (and its socket)
    b.run("mon(%r, lambda *r: emit('init_port_ended', *r))" % init_port)
    a.run("S.close()")
    assert b.expect("init_port_ended") == []

    # B -> A, echo: 4 MB round trip
    b.run("""
        import os
        S2 = dataconn.connect_to("A", "dcfuncs.echo", timeout=10)
        data = os.urandom(4 << 20)
        def _writer():
            S2.sendall(data)
        gevent.spawn(_writer)
        got = bytearray()
        while len(got) < len(data):
            chunk = S2.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        S2.close()
        emit("echoed", len(got), bytes(got) == data)
    """)
    assert b.expect("echoed", timeout=30) == [4 << 20, True]


def test_target_refuses_secure_and_unknown_init(cluster):
    """A ``secure`` target refuses to run the init function; an init function the target
    cannot resolve is refused too: the blocking form raises ``DataConnError`` with the
    reason ``("dataconn", why)``; the callback form kills the calling port with it."""
    seed, a, s = start_nodes(cluster, "A", "S", S={"secure": True})
    a.run("""
        def _try(node, fn):
            try:
                dataconn.connect_to(node, fn, timeout=10)
            except dataconn.DataConnError as e:
                return list(e.reason)
            return None
        emit("secure", _try("S", "dcfuncs.echo"))
        emit("unknown", _try(NODE(), "dcfuncs.no_such_function"))
    """)
    reason = a.expect("secure")[0]
    assert reason[0] == "dataconn" and "secure" in reason[1], reason
    reason = a.expect("unknown")[0]
    assert reason[0] == "dataconn" and "no_such_function" in reason[1], reason

    # the callback form, called in a port: the port is killed with ("dataconn", why)
    seed.run("import aemp_green.dataconn as dataconn")
    seed.run("""
        def _cb_user():
            dataconn.connect_to("S", "dcfuncs.echo", cb=lambda sock: emit("cb_called"))
            receive("never")
        P = spawn(_cb_user)
        mon(P, lambda *r: emit("cb_port_died", *r))
    """)
    tag, why = seed.expect("cb_port_died", timeout=15)
    assert tag == "dataconn" and "secure" in why, why
    assert "cb_called" not in [i[0] for i in seed.backlog]


def test_target_without_dataconn_loaded_is_probed(cluster):
    """A target that does not answer ``aemp-dataconn`` (configure() loads the module, so we
    unregister it to play an older node) closes the first connection; the connector asks it
    (node request by name) to load the module and succeeds on the retry."""
    seed, a, b = start_nodes(cluster, "A", "B", load=False)
    b.run("""
        connect._subprotocols.pop('aemp-dataconn', None)
        import sys; sys.modules.pop('aemp_green.dataconn', None)
        import aemp_green; aemp_green.__dict__.pop('dataconn', None)
    """)
    assert b.ask("'aemp-dataconn' in connect._subprotocols") is False
    a.run("""
        import aemp_green.dataconn as dataconn
        S = dataconn.connect_to("B", "dcfuncs.echo", timeout=10)
        S.sendall(b"ping")
        emit("echo", S.recv(10).decode())
    """)
    assert a.expect("echo", timeout=15) == ["ping"]
    assert b.ask("'aemp-dataconn' in connect._subprotocols") is True


def test_peer_with_unknown_listeners_and_no_database_fails_with_dataconn_error(cluster):
    """B connected to A, so B is up on A, but A knows none of B's listeners and has no global
    node to ask (no seeds): the ``'l`` lookup times out and ``connect_to`` fails with
    ``DataConnError`` (it raised NameError from the lookup's error handling before)."""
    a, b = cluster.start(("A", {"binds": ["127.0.0.1:*"]}), ("B", {"binds": ["127.0.0.1:*"]}))
    b.run("node.get_node(%r).addrs = [%r]; snd(%r, 'devnull')" % (a.nodeid, a.addr, a.nodeid))
    a.run(
        """
        import aemp_green.dataconn as dataconn
        wait_for(lambda: node.node_is_up(%r), what="B's link")
        emit("addrs", node.get_node(%r).addrs)
        try:
            dataconn.connect_to(%r, "dcfuncs.echo", timeout=2)
        except Exception as exc:
            emit("err", type(exc).__name__, str(exc))
    """
        % (b.nodeid, b.nodeid, b.nodeid)
    )
    assert not a.expect("addrs", timeout=15)[0]
    name, text = a.expect("err", timeout=15)
    assert name == "DataConnError", (name, text)


def test_auth_is_refused_like_a_node_link(cluster):
    """A data connection authenticates exactly like a node link: with a wrong secret the node
    closes both kinds of connection without answering (and a node with another secret gets
    ``DataConnError``); with the right secret the documented exchange works byte for byte
    (header line, ``ok`` line, raw bytes; ``error ...`` for a bad header)."""
    (b,) = cluster.start(("B", {}))
    b.run("import dcfuncs")
    for proto, extra in (("aemp-dataconn", {"dataconn_id": "t1"}), ("aemp", None)):
        peer = RawPeer(b.addr, secret="wrong-secret", protocol=proto, extra=extra)
        try:
            peer.greeting()
            peer.send_raw(peer.hs.data_to_send())  # our (wrong) auth line
            closed, data = read_until_closed(peer.sock, timeout=10)
            assert closed, proto
            assert b"ok\n" not in peer.rbuf + data
        finally:
            peer.close()
    b.wait_log(lambda t: t.count("authentication failure") >= 2, what="two auth failures")

    # the right secret: header, ok, raw bytes
    peer = RawPeer(b.addr, protocol="aemp-dataconn", extra={"dataconn_id": "t2"})
    try:
        est = peer.handshake()
        assert est.protocol == "aemp-dataconn"
        peer.send_raw(json.dumps(["dcfuncs.echo", []]).encode() + b"\n")
        assert peer.read_lines(1) == [b"ok"]
        peer.send_raw(b"raw \x00\xff bytes")
        got = peer.rbuf
        while len(got) < 12:
            got += peer.sock.recv(100)
        assert got == b"raw \x00\xff bytes"
    finally:
        peer.close()
    for header in (
        b"not json\n",
        json.dumps(["dcfuncs.nope", []]).encode() + b"\n",
        json.dumps({"init": "dcfuncs.echo"}).encode() + b"\n",
    ):
        peer = RawPeer(b.addr, protocol="aemp-dataconn", extra={"dataconn_id": "t3"})
        try:
            peer.handshake()
            peer.send_raw(header)
            (line,) = peer.read_lines(1)
            assert line.startswith(b"error "), (header, line)
            assert peer.closed_by_node()
        finally:
            peer.close()

    # a node with another secret: refused during authentication
    (c,) = cluster.start(("C", {"secret": "another-secret"}))
    c.run(
        """
        import aemp_green.dataconn as dataconn
        node.get_node("B").addrs = [%r]
        try:
            dataconn.connect_to("B", "dcfuncs.echo", timeout=5)
            emit("other_secret", None)
        except dataconn.DataConnError as e:
            emit("other_secret", list(e.reason))
    """
        % b.addr
    )
    reason = c.expect("other_secret", timeout=15)[0]
    # C notices the bad token itself, or B closes first (whichever side checks first)
    assert reason[0] == "dataconn", reason
    assert "authentication" in reason[1] or "end-of-file" in reason[1], reason
    assert b.ask("1 + 1") == 2  # B is fine


# --------------------------------------------------------------------------- local target


def test_local_target_is_a_socketpair_owned_by_a_new_port():
    """``node`` = this node: a socket pair; ``init`` (a callable or a name) runs in a new local
    port with the other end, which is closed when that port ends."""
    seen = Collector()

    def init(tag, sock):
        seen(tag, aemp_green.SELF())
        sock.sendall(tag.encode())
        while sock.recv(100):
            pass

    sock = connect_to(aemp_green.NODE(), init, "hi")
    assert isinstance(sock, gevent.socket.socket)
    assert sock.recv(10) == b"hi"
    tag, init_port = seen.wait_one()
    assert tag == "hi" and aemp_green.port_is_local(init_port)
    died = Collector()
    aemp_green.mon(init_port, died)
    sock.close()
    assert died.wait_one() == ()

    # by name; killing the init port closes its end
    sock = connect_to(aemp_green.NODE() + "#anyport", "dcfuncs.echo")
    sock.sendall(b"abc")
    assert sock.recv(10) == b"abc"
    sock.close()


def test_local_target_kill_closes_socket():
    """Killing the init port closes the socket it owns: the caller sees EOF."""
    ports = Collector()

    def init(sock):
        ports(aemp_green.SELF())
        aemp_green.receive("never")

    sock = connect_to(aemp_green.NODE(), init)
    (pid,) = ports.wait_one()
    aemp_green.kil(pid, "stop")
    assert sock.recv(10) == b""
    sock.close()


def test_failures_raise_or_kill_the_calling_port():
    """Blocking form: ``DataConnError`` (connection refused, unknown local init); bad
    initdata is a ``TypeError`` in the caller. Callback form in a port: the port dies with
    ``("dataconn", why)``; outside port context ``cb()`` gets no arguments."""
    dead = "127.0.0.1:%d" % free_port()
    with pytest.raises(DataConnError) as ei:
        connect_to(dead, "dcfuncs.echo", timeout=2)
    assert ei.value.reason[0] == "dataconn"
    with pytest.raises(DataConnError):
        connect_to(aemp_green.NODE(), "dcfuncs.no_such_function")
    with pytest.raises(TypeError):
        connect_to(dead, "dcfuncs.echo", object())
    with pytest.raises(TypeError):
        connect_to(dead, lambda sock: None)  # callables only for the local node

    died = Collector()

    def user():
        connect_to(dead, "dcfuncs.echo", cb=lambda sock: died("cb", sock), timeout=2)
        aemp_green.receive("never")

    pid = aemp_green.spawn(user)
    aemp_green.mon(pid, died)
    reason = died.wait_one()
    assert reason[0] == "dataconn" and reason[1], reason

    # outside port context (a fresh greenlet: this main greenlet may have a port of its own
    # from an earlier test's receive(), and then it is the port that dies)
    called = Collector()
    run_in_greenlet(lambda: connect_to(dead, "dcfuncs.echo", cb=called, timeout=2))
    assert called.wait_one() == ()

    # success in the callback form runs cb in the calling port's context
    got = Collector()

    def user_ok():
        connect_to(aemp_green.NODE(), "dcfuncs.echo", cb=lambda sock: got(aemp_green.SELF(), sock))
        aemp_green.receive("never")

    pid = aemp_green.spawn(user_ok)
    ctx, sock = got.wait_one()
    assert ctx == pid
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    sock.close()
    aemp_green.kil(pid)


def test_cancelled_guard_aborts_pending_attempt():
    """The callback form returns a guard; cancelling it before the connection is made means
    ``cb`` never runs."""
    called = Collector()
    g = connect_to(aemp_green.NODE(), "dcfuncs.echo", cb=called)
    g.cancel()
    flush(10)
    assert called.items == []


def test_data_socket_yields_to_other_greenlets():
    """A bulk loop over a data socket that never has to wait (a local socket pair drained by a
    fast reader) still lets other greenlets run: the socket yields every ``FAIR_BYTES``."""
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.001)

    def drain(sock):
        while sock.recv(1 << 20):
            pass

    t = gevent.spawn(ticker)
    try:
        sock = connect_to(aemp_green.NODE(), drain)
        flush()
        before = len(ticks)
        block = b"x" * (1 << 20)
        for _ in range(64):
            sock.sendall(block)
        sock.close()
        assert len(ticks) - before >= 2
    finally:
        t.kill()
