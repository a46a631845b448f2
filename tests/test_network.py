"""Multi-process network tests: real child nodes (``tests/child.py``) talking AEMP over 127.0.0.1.

Every node is a child process; this pytest process never calls ``configure()``. Each test gets
its own nodes (the ``cluster`` fixture) and waits only on lines the children emit, with deadlines.
docs/api.md lines proven are quoted in the docstrings.
"""

import time

import pytest

from netutil import free_port

# slow (docs/testing.md): real processes, ~30 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

# A payload with every kind of value both framings carry. The same source text is evaluated in
# the children and here, and compared through repr() (which tells 3 from 3.0 and 1 from True).
PAYLOAD_SRC = (
    '["Grüße, 世界 ✓ 😀", 2**40, -17, -2**40, 3.25, -0.5, 0, "", [],'
    ' [1, [2, [3, []]], {"k": [None]}], {"nested": {"a": [True, False, None], "ü": "✓"}},'
    ' None, True, False, {}, "a\\"quote\\\\ and\\nnewline"]'
)
PAYLOAD = eval(PAYLOAD_SRC)  # noqa: S307 - our own constant


def wait_registered(seed, *nodes):
    """Wait until the seed (a global node) knows the listener addresses of ``nodes``.

    A node looks another one up through its master (``g_find``); asking before that node
    registered gives "no known address", in AEMP as here, so tests that hand port IDs around
    wait for this first.
    """
    want = {n.nodeid: n.binds for n in nodes}
    seed.run(
        "wait_for(lambda: all(db_family(\"'l\", timeout=5).get(k) == v for k, v in %r.items()))"
        % (want,),
        timeout=15,
    )


def start_trio(cluster, a_cfg=None, b_cfg=None, seed_cfg=None, a="A", b="B"):
    """A seed node and two nodes using it, registered with it; returns (seed, a, b)."""
    seed = cluster.seed("seed", **(seed_cfg or {}))
    a_cfg = dict(a_cfg or {}, seeds=[seed.addr])
    b_cfg = dict(b_cfg or {}, seeds=[seed.addr])
    na, nb = cluster.start((a, a_cfg), (b, b_cfg))
    wait_registered(seed, na, nb)
    return seed, na, nb


def make_port(child, var, tag):
    """In ``child``: a callback port ``var`` that emits ``(tag, repr(msg))`` for every message."""
    child.run("%s = port(lambda *m: emit(%r, repr(list(m))))" % (var, tag))
    return child.ask(var)


# --------------------------------------------------------------------------- values, framings


@pytest.mark.parametrize(
    "fa,fb,expect_a",
    [
        (["json"], ["json"], ("json", "json")),
        (["cbor"], ["cbor"], ("cbor", "cbor")),
        # each side sends the first entry of the *peer's* list that it accepts itself
        (["json", "cbor"], ["cbor", "json"], ("cbor", "json")),
    ],
    ids=["json", "cbor", "mixed"],
)
def test_db_lookup_and_values_round_trip_exactly(cluster, fa, fb, expect_a):
    """docs/api.md#network and #the-shared-database: A registers a port with ``db_set``, B finds it
    with ``db_mon`` and sends; every value kind (Unicode, big ints, floats, nested containers,
    None/True/False, empty dict) arrives exactly, B->A and A->B, in json, cbor and mixed framing
    (docs/protocol.md#choosing-auth-and-framing: each direction chooses its own framing)."""
    seed, a, b = start_trio(cluster, {"framing_format": fa}, {"framing_format": fb})
    a.run(
        """
        PAYLOAD = %s
        def _a_handler(*msg):
            emit("A_got", repr(list(msg)))
            if msg[0] == "hello":
                snd(msg[-1], "back", *PAYLOAD)
        PA = port(_a_handler)
        db_set("rt_family", PA, {"where": "A", "ü": 1})
    """
        % PAYLOAD_SRC
    )
    pa = a.ask("PA")
    b.run(
        """
        PAYLOAD = %s
        PB = port(lambda *m: emit("B_got", repr(list(m))))
        _sent = set()
        def _seen(db, added, changed, deleted):
            for k in added:
                if k not in _sent:
                    _sent.add(k)
                    emit("B_found", k, db[k])
                    snd(k, "hello", *PAYLOAD, PB)
        _g = db_mon("rt_family", _seen)
    """
        % PAYLOAD_SRC
    )
    pb = b.ask("PB")
    assert b.expect("B_found", timeout=15) == [pa, {"where": "A", "ü": 1}]
    assert a.expect("A_got")[0] == repr(["hello"] + PAYLOAD + [pb])
    assert b.expect("B_got")[0] == repr(["back"] + PAYLOAD)

    fr_a = a.ask("[node._nodes['B'].link.send_framing, node._nodes['B'].link.recv_framing]")
    fr_b = b.ask("[node._nodes['A'].link.send_framing, node._nodes['A'].link.recv_framing]")
    assert tuple(fr_a) == expect_a
    assert tuple(fr_b) == expect_a[::-1]


def test_ten_thousand_messages_arrive_in_order(cluster):
    """docs/api.md#ports-and-messages: "Messages to one port from one sender arrive in order"
    (across a real link)."""
    seed, a, b = start_trio(cluster)
    b.run("""
        _order = {"next": 0, "bad": []}
        def _count(tag, i, pad):
            if i != _order["next"] and len(_order["bad"]) < 5:
                _order["bad"].append((_order["next"], i))
            _order["next"] = i + 1
            if i == 9999:
                emit("order_done", _order["next"], _order["bad"])
        PB = port(_count)
    """)
    pb = b.ask("PB")
    a.exec(
        """
        for i in range(10000):
            snd(%r, "n", i, "x" * (i %% 50))
        emit("A_sent")
    """
        % pb
    )
    a.expect("A_sent", timeout=20)
    assert b.expect("order_done", timeout=30) == [10000, []]


# --------------------------------------------------------------------------- monitors, kil


def test_remote_monitor_gets_kill_reason(cluster):
    """docs/api.md#monitoring: a remote monitor gets the exact kill reason
    (docs/protocol.md#monitoring-and-kill: ``kil0``)."""
    seed, a, b = start_trio(cluster)
    pa = make_port(a, "PA", "A_got")
    b.run(
        """
        mon(%r, lambda *r: emit("B_mon", repr(r)))
        snd(%r, "ping")
    """
        % (pa, pa)
    )
    # the ping went over the same connection after mon1: A processed the monitor request
    assert a.expect("A_got", timeout=15) == [repr(["ping"])]
    a.run("kil(PA, 'bye', 1, {'x': [1]})")
    assert b.expect("B_mon") == [repr(("bye", 1, {"x": [1]}))]

    # a normal exit (no reason) reaches the remote monitor as an empty reason
    pn = make_port(a, "PN", "A_got")
    b.run(
        """
        mon(%r, lambda *r: emit("B_mon_normal", repr(r)))
        snd(%r, "ping")
    """
        % (pn, pn)
    )
    assert a.expect("A_got") == [repr(["ping"])]
    a.run("kil(PN)")
    assert b.expect("B_mon_normal") == [repr(())]


def test_cancelled_remote_monitor_is_withdrawn(cluster):
    """docs/api.md#monitoring: ``mon`` returns a guard; cancelling it stops monitoring - for a
    remote port the owner is told (``mon0``, docs/protocol.md#monitoring-and-kill) and forgets the
    monitor, while another one stays."""
    seed, a, b = start_trio(cluster)
    pa = make_port(a, "PA", "A_got")
    b.run(
        """
        G1 = mon(%r, lambda *r: emit("B_mon1", repr(r)))
        snd(%r, "ping")
    """
        % (pa, pa)
    )
    assert a.expect("A_got", timeout=10) == [repr(["ping"])]
    assert a.ask("sorted(aemp_green.kernel._remote_monitors)") == ["B"]  # by node
    b.run(
        """
        G1.cancel()
        snd(%r, "after_cancel")
    """
        % pa
    )
    assert a.expect("A_got") == [repr(["after_cancel"])]
    assert a.ask("len(aemp_green.kernel._remote_monitors)") == 0
    b.run(
        """
        mon(%r, lambda *r: emit("B_mon2", repr(r)))
        snd(%r, "ping2")
    """
        % (pa, pa)
    )
    assert a.expect("A_got") == [repr(["ping2"])]
    a.run("kil(PA, 'gone')")
    assert b.expect("B_mon2") == [repr(("gone",))]
    assert b.ask("1") == 1  # a round trip after the kill: B_mon1 would have been emitted by now
    assert [i for i in b.backlog if i[0] == "B_mon1"] == []


def test_remote_kil_with_reason(cluster):
    """docs/api.md#ports-and-messages: ``kil(port, *reason)`` works on remote ports; the owner's
    monitors and the killer's remote monitor both get the reason
    (docs/protocol.md#node-port-requests ``kil1``, #monitoring-and-kill)."""
    seed, a, b = start_trio(cluster)
    a.run("""
        PA2 = port(lambda *m: emit("A_got", repr(list(m))))
        mon(PA2, lambda *r: emit("A_mon", repr(r)))
    """)
    pa = a.ask("PA2")
    b.run(
        """
        mon(%r, lambda *r: emit("B_mon", repr(r)))
        snd(%r, "ping")
    """
        % (pa, pa)
    )
    assert a.expect("A_got", timeout=15) == [repr(["ping"])]
    b.run("kil(%r, 'killed_by_b', 'reason text ☠', 123)" % pa)
    want = repr(("killed_by_b", "reason text ☠", 123))
    assert a.expect("A_mon") == [want]
    assert b.expect("B_mon") == [want]
    assert a.ask("port_is_local(PA2) and PA2 in aemp_green.kernel.port_table") is False


def test_remote_monitor_of_nonexistent_port(cluster):
    """docs/api.md#monitoring: monitoring a nonexistent port fires with ``no_such_port`` (remote
    form from the owner node: docs/protocol.md#node-port-requests ``mon1``)."""
    seed, a, b = start_trio(cluster)
    b.run("mon('A#nonexistent', lambda *r: emit('B_mon', *r))")
    assert b.expect("B_mon", timeout=15) == [
        "no_such_port",
        "cannot monitor nonexistent port",
        "A#nonexistent",
    ]


BUG_STALE_ADDRS = (
    "BUG: node.RemoteNode keeps the addresses it learned (g_found) forever: connect() dials "
    "self.addrs and never asks the master again, so a peer restarted on a new port is "
    "unreachable for good (every send ends in 'connect timeout')"
)


@pytest.mark.parametrize(
    "fixed_port",
    [
        True,
        False,
    ],
    ids=["same_port", "new_port"],
)
def test_kill_9_fires_transport_error_then_reconnect(cluster, fixed_port):
    """docs/api.md#monitoring: losing the connection fires monitors with ``("transport_error",
    nodeid, why)``; connections are made on demand: after the peer restarts, a later send reconnects
    and is delivered (on the same listening port, or on a new one it announced to the seed)."""
    seed = cluster.seed()
    binds = ["127.0.0.1:%d" % free_port()] if fixed_port else ["127.0.0.1:*"]
    peer, b = cluster.start(
        ("peer1", dict(seeds=[seed.addr], binds=binds)), ("B", dict(seeds=[seed.addr]))
    )
    wait_registered(seed, peer, b)
    pa = make_port(peer, "PA", "A_got")
    b.run(
        """
        mon(%r, lambda *r: emit("B_mon", *r))
        snd(%r, "ping")
    """
        % (pa, pa)
    )
    assert peer.expect("A_got", timeout=15) == [repr(["ping"])]
    old_addr = peer.addr
    peer.kill()
    reason = b.expect("B_mon")
    assert reason[:2] == ["transport_error", "peer1"], reason
    assert isinstance(reason[2], str) and reason[2], reason
    assert b.ask("node_is_up('peer1')") is False

    peer.start()
    assert (peer.addr == old_addr) == fixed_port
    pa2 = make_port(peer, "PA", "A_got")
    # the restarted node must be registered with the seed before B can look it up
    wait_registered(seed, peer)
    b.run(
        """
        mon(%r, lambda *r: emit("B_mon2", *r))
        snd(%r, "again", 1)
    """
        % (pa2, pa2)
    )
    assert peer.expect("A_got", timeout=6) == [repr(["again", 1])]
    assert b.ask("node_is_up('peer1')") is True


def test_no_holes_when_peer_dies_mid_stream(cluster):
    """docs/api.md#monitoring: "after mon starts, every message sent to the port is delivered, in
    order, or the monitor fires: there are never holes in the sequence". A is kill -9'd while B
    streams to it: what A got is exactly 0..k, and B's monitor fired."""
    seed, a, b = start_trio(cluster)
    a.run("PA = port(lambda tag, i: emit('n', i))")
    pa = a.ask("PA")
    b.exec(
        """
        def _sender():
            state = {"dead": None}
            mon(%r, lambda *r: state.__setitem__("dead", list(r)))
            i = 0
            while state["dead"] is None:
                snd(%r, "n", i)
                i += 1
                if i %% 20 == 0:
                    gevent.sleep(0.002)
            emit("B_sent", i, state["dead"])
        gevent.spawn(_sender)
    """
        % (pa, pa)
    )
    got = []
    while len(got) < 300:
        got.append(a.expect("n", timeout=15)[0])
    a.kill()
    got += [item[1] for item in a.collect_until_exit() if item[0] == "n"]
    assert got == list(range(len(got))), "hole or reordering in what A received"
    sent, reason = b.expect("B_sent", timeout=15)
    assert reason[:2] == ["transport_error", "A"], reason
    assert sent >= len(got)


# --------------------------------------------------------------------------- spawn, node port


def test_remote_spawn_and_call(cluster):
    """docs/api.md#monitoring: ``spawn(node, "pkg.module.func", *args)`` creates a port on another
    node and returns its ID at once; ``call`` to it works; ``Pkg::func`` names map to ``Pkg.func``;
    a function that only sets ``rcv`` handlers on ``SELF`` and returns keeps serving (Perl
    style)."""
    seed, a, b = start_trio(cluster)
    make_port(b, "PB", "B_got")
    b.exec("""
        t0 = time.monotonic()
        SP = spawn("A", "netfuncs.echo_server")
        emit("spawned", SP, time.monotonic() - t0)
        emit("echo", call(SP, "echo", 42, timeout=5), call(SP, "more", "ü", [1], timeout=5))
        CP = spawn("A", "netfuncs::perl_style_counter", 100)
        emit("count", call(CP, "inc", 1, timeout=5), call(CP, "inc", 2, timeout=5))
        WP = spawn("A", "netfuncs.whoami", PB)
        emit("whoami", WP)
    """)
    sp, elapsed = b.expect("spawned", timeout=10)
    assert sp.startswith("A#") and len(sp) > 2
    assert elapsed < 0.5, "spawn blocked for %.3f s" % elapsed
    assert b.expect("echo", timeout=15) == [["echo", 42], ["more", "ü", [1]]]
    assert b.expect("count", timeout=10) == [["count", 101], ["count", 103]]
    (wp,) = b.expect("whoami")
    assert b.expect("B_got") == [repr(["iam", wp])]
    # the echo server (a greenlet port) and the Perl-style port (a callback port) live on A
    assert a.ask(
        "[%r in aemp_green.kernel.port_table, %r in aemp_green.kernel.port_table]"
        % (sp, b.ask("CP"))
    ) == [True, True]


def test_node_port_requests(cluster):
    """docs/api.md#network: ``snd_to_func``, ``snd_on``, ``eval_on`` (Python expression, reply
    ``("", value)`` or ``(error, None)``); docs/protocol.md#node-port-requests: ``can`` and ``time``
    sent to the node port."""
    seed, a, b = start_trio(cluster)
    pa = make_port(a, "PA", "A_got")
    make_port(b, "PB", "B_got")
    b.run("snd_to_func('A', 'netfuncs.record', PB, 'x', 1)")
    assert b.expect("B_got", timeout=15) == [repr(["recorded", "x", 1])]
    assert a.ask("__import__('netfuncs').recorded") == [["x", 1]]

    b.run("snd_on('A', PB, 'relayed', 7)")  # B -> A -> B
    assert b.expect("B_got") == [repr(["relayed", 7])]
    b.run("snd_on('seed', %r, 'via_seed', {'k': 'v'})" % pa)  # B -> seed -> A
    assert a.expect("A_got") == [repr(["via_seed", {"k": "v"}])]

    b.run("eval_on('A', '1+2', PB, 'evalres')")
    assert b.expect("B_got") == [repr(["evalres", "", 3])]
    b.run("eval_on('A', '1/0', PB, 'evalerr')")
    (text,) = b.expect("B_got")
    msg = eval(text)  # noqa: S307 - a repr we produced
    assert msg[0] == "evalerr" and "division" in msg[1] and msg[2] is None, msg

    b.run("snd('A', 'can', 'eval', PB, 'can_eval')")
    assert b.expect("B_got") == [repr(["can_eval", 1])]
    b.run("snd('A', 'can', 'no_such_request', PB, 'can_not')")
    assert b.expect("B_got") == [repr(["can_not", ""])]
    before = time.time()
    b.run("snd('A#', 'time', PB, 'the_time')")
    msg = eval(b.expect("B_got")[0])  # noqa: S307
    assert msg[0] == "the_time" and isinstance(msg[1], float)
    assert before - 5 < msg[1] < time.time() + 5


def test_secure_node_refuses_eval_spawn_and_function_calls(cluster):
    """docs/api.md#network: ``eval_on``/``spawn``/``snd_to_func`` are refused on nodes configured
    ``secure`` (nothing runs; the refusal is logged naming the sender); other requests still
    work."""
    seed = cluster.seed()
    c, b = cluster.start(
        ("C", dict(seeds=[seed.addr], secure=True)), ("B", dict(seeds=[seed.addr]))
    )
    wait_registered(seed, c, b)
    make_port(b, "PB", "B_got")
    b.run("""
        eval_on('C', '__import__("netfuncs").recorded.append("evaluated") or 5', PB, 'sec_eval')
        SP = spawn('C', 'netfuncs.echo_server')
        snd_to_func('C', 'netfuncs.record', PB, 'called')
        # non-code requests on the same connection, after the refused ones
        mon(SP, lambda *r: emit('B_mon', *r))
        snd('C', 'can', 'eval', PB, 'after')
    """)
    sp = b.ask("SP")
    # replies come back in order: the 'after' reply arriving first means no eval reply comes
    assert b.expect("B_got", timeout=15) == [repr(["after", 1])]
    assert b.expect("B_mon") == ["no_such_port", "cannot monitor nonexistent port", sp]
    assert [item for item in b.backlog if item[0] == "B_got"] == []
    assert c.ask("__import__('netfuncs').recorded") == []
    log = c.wait_log(lambda t: t.count("secure node: refused") >= 3, what="3 refusals")
    refusals = [line for line in log.splitlines() if "secure node: refused" in line]
    assert all("from B" in line for line in refusals), refusals
    assert (
        any("eval" in line for line in refusals)
        and any("_spawn" in line for line in refusals)
        and any("netfuncs.record" in line for line in refusals)
    ), refusals


# --------------------------------------------------------------------------- node state


def test_node_is_up_up_nodes_known_nodes_mon_nodes(cluster):
    """docs/api.md#network: ``node_is_up`` (True / False when known but not connected / None when
    unknown), ``up_nodes()``, ``known_nodes()``, ``mon_nodes(cb(node, is_up, *reason))``."""
    seed, a, b = start_trio(cluster)
    b.run("""
        _g = mon_nodes(lambda n, up, *r: emit("B_nodes", n, up, list(r)))
        wait_for(lambda: node_is_up("seed"))
    """)
    assert b.ask("[node_is_up('A'), node_is_up(NODE()), node_is_up('seed')]") == [None, True, True]
    assert "A" not in b.ask("known_nodes()")
    pa = make_port(a, "PA", "A_got")
    b.run("snd(%r, 'hi')" % pa)
    assert b.expect("B_nodes", timeout=15, pred=lambda v: v[0] == "A") == ["A", True, []]
    assert a.expect("A_got") == [repr(["hi"])]
    assert b.ask("[node_is_up('A'), sorted(up_nodes()), 'A' in known_nodes()]") == [
        True,
        ["A", "seed"],
        True,
    ]
    a.kill()
    n, up, reason = b.expect("B_nodes", pred=lambda v: v[0] == "A")
    assert up is False and reason[:2] == ["transport_error", "A"], reason
    assert b.ask("[node_is_up('A'), sorted(up_nodes()), 'A' in known_nodes()]") == [
        False,
        ["seed"],
        True,
    ]


def test_connect_interval_bounds_a_connect_to_a_closed_port(cluster):
    """docs/api.md#network: ``connect_interval``: a node that cannot be reached fires its monitors
    with ``("transport_error", node, "connect timeout")`` within about ``connect_interval``
    (docs/protocol.md#timeouts-keepalive-and-retries); a ``host:port`` node ID is dialled
    directly."""
    c = cluster.node("C", connect_interval=0.5)
    target = "127.0.0.1:%d" % free_port()
    c.exec(
        """
        t0 = time.monotonic()
        mon(%r, lambda *r: emit("C_mon", list(r), time.monotonic() - t0))
        snd(%r, "lost")
    """
        % (target + "#p", target + "#p")
    )
    reason, elapsed = c.expect("C_mon", timeout=5)
    assert reason[:2] == ["transport_error", target], reason
    assert reason[2] == "connect timeout" or "refused" in reason[2].lower(), reason
    assert elapsed < 0.5 + 1.0, elapsed
    if reason[2] == "connect timeout":
        assert elapsed > 0.4, elapsed
    assert c.ask("node_is_up(%r)" % target) is False


def test_wrong_secret_cannot_join(cluster):
    """A node with the wrong secret never gets a link to the seed (the seed logs the
    authentication failure and keeps retrying it off); the seed keeps serving a good node."""
    seed = cluster.seed()
    good, bad = cluster.start(
        ("good", dict(seeds=[seed.addr])), ("bad", dict(seeds=[seed.addr], secret="wrong-secret"))
    )
    seed.wait_log(
        lambda t: t.count("authentication failure") >= 2,
        timeout=30,
        what="two authentication failures (the bad node retried)",
    )
    assert not bad.ask("node_is_up('seed')")
    assert bad.ask("up_nodes()") == []
    assert "bad" not in seed.ask("up_nodes()")
    assert "bad is up" not in seed.log_text() and "seed is up" not in bad.log_text()
    make_port(good, "PG", "G_got")
    good.run("wait_for(lambda: node_is_up('seed'))")
    good.run("eval_on('seed', '6*7', PG, 'from_seed')")
    assert good.expect("G_got") == [repr(["from_seed", "", 42])]
    assert "good" in seed.ask("up_nodes()")


# --------------------------------------------------------------------------- size, topology


@pytest.mark.parametrize("framing", ["json", "cbor"])
def test_multi_megabyte_message(cluster, framing):
    """A message of several MB (many reads, one frame) arrives whole, and so do the small
    messages queued around it, in order."""
    seed, a, b = start_trio(cluster, {"framing_format": [framing]})
    b.run("""
        PB = port(lambda tag, *v: emit("B_got", tag, len(v[0]) if tag == "big" else v[0],
                                        v[0][:3] if tag == "big" else None,
                                        v[0][-3:] if tag == "big" else None))
    """)
    pb = b.ask("PB")
    a.run(
        """
        snd(%r, "small", 1)
        snd(%r, "big", "ü" * 3000000 + "end")
        snd(%r, "small", 2)
    """
        % (pb, pb, pb)
    )
    assert b.expect("B_got", timeout=20) == ["small", 1, None, None]
    assert b.expect("B_got", timeout=20) == ["big", 3000003, "üüü", "end"]
    assert b.expect("B_got", timeout=20) == ["small", 2, None, None]


def test_two_seeds_mesh_and_a_seed_restart(cluster):
    """docs/protocol.md#seeds-and-global-nodes: seeds become global nodes and mesh; a node whose
    only seed is seed1 and a node whose only seed is seed2 see each other's database entries and
    talk directly. When seed1 restarts, its slave takes it as master again and its new entries reach
    the other side."""
    a1, a2 = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    s1, s2 = cluster.start(
        ("seed1", dict(binds=[a1], seeds=[a1, a2])), ("seed2", dict(binds=[a2], seeds=[a1, a2]))
    )
    a, b = cluster.start(("A", dict(seeds=[a1])), ("B", dict(seeds=[a2])))
    a.run("PA = port(lambda *m: emit('A_got', repr(list(m)))); _g = db_set('mesh', PA, 1)")
    pa = a.ask("PA")
    b.run("""
        _g = db_mon('mesh', lambda db, added, changed, deleted: emit('B_seen', sorted(db), added,
                                                                     deleted))
    """)
    assert b.expect("B_seen", timeout=15, pred=lambda v: pa in v[0])[1] == [pa]
    b.run("snd(%r, 'across', 1)" % pa)
    assert a.expect("A_got", timeout=10) == [repr(["across", 1])]
    assert sorted(s1.ask("up_nodes()")) == ["A", "seed2"]

    s1.kill()
    # A's only seed is gone: its entries leave the database (they are kept per source node)
    assert b.expect("B_seen", timeout=10, pred=lambda v: pa in v[2])[0] == []
    s1.start()
    a.run("wait_for(lambda: aemp_green.globaldb.master() == 'seed1', 15)", timeout=20)
    a.run("_g2 = db_set('mesh', 'after_restart', 2)")
    seen = b.expect("B_seen", timeout=15, pred=lambda v: "after_restart" in v[1])
    assert sorted(seen[0]) == sorted([pa, "after_restart"]), seen


# --------------------------------------------------------------------------- unencodable values

BUG_QUEUED_ENCODE = (
    "BUG: frames sent while the link is not up yet are queued unencoded (node.RemoteNode.send) "
    "and encoded only in RemoteNode.attach(), which catches the TypeError, logs 'message to X "
    "dropped' and goes on: the caller never gets the TypeError docs/protocol.md#framings asks for"
)


def test_unencodable_value_raises_in_the_caller_before_the_link_is_up(cluster):
    """docs/protocol.md#framings: "Values that the chosen framing cannot carry raise a clear
    TypeError at snd time in the caller, never later" - a set is carried by no framing at all, so
    this holds even while the connection to the node is still being made."""
    seed, a, b = start_trio(cluster)
    pa = make_port(a, "PA", "A_got")
    assert b.ask("node_is_up('A')") is None  # B has no link to A yet
    b.exec(
        """
        try:
            snd(%r, "bad", {1, 2})
            emit("raised", None)
        except TypeError as exc:
            emit("raised", str(exc))
        snd(%r, "good")
    """
        % (pa, pa)
    )
    assert a.expect("A_got", timeout=10) == [repr(["good"])]
    (text,) = b.expect("raised")
    assert text is not None and "set" in text, "snd() of a set did not raise TypeError"


def test_no_hole_when_a_queued_message_cannot_be_encoded(cluster):
    """docs/api.md#monitoring: "after mon starts, every message sent to the port is delivered, in
    order, or the monitor fires". ``bytes`` cannot go over json, and the framing is only known once
    the link is up: the send must either raise ``TypeError`` in the caller, or the message is lost -
    then the monitor fires and nothing sent after the lost message arrives (no holes, as in Erlang);
    once the monitor ran, new sends flow again."""
    seed, a, b = start_trio(cluster, {"framing_format": ["json"]}, {"framing_format": ["json"]})
    pa = make_port(a, "PA", "A_got")
    assert b.ask("node_is_up('A')") is None
    b.exec(
        """
        mon(%r, lambda *r: (emit("B_mon", *r), snd(%r, "after_monitor", 3)))
        snd(%r, "n", 0)
        try:
            snd(%r, "n", b"raw bytes")
            emit("raised", None)
        except TypeError as exc:
            emit("raised", str(exc))
        snd(%r, "n", 2)
    """
        % (pa, pa, pa, pa, pa)
    )
    (raised,) = b.expect("raised")
    assert a.expect("A_got", timeout=10) == [repr(["n", 0])]
    if raised is None:  # accepted, then lost: the monitor fires and "n 2" never overtakes it
        reason = b.expect("B_mon", timeout=10)
        assert reason[0] == "transport_error" and "encoded" in reason[2], reason
        nxt = a.expect("A_got", timeout=10)
        assert nxt == [repr(["after_monitor", 3])], (
            "a message sent after the lost one arrived: %r" % (nxt,)
        )
    else:
        assert "bytes" in raised or "serializ" in raised.lower(), raised
        assert a.expect("A_got", timeout=10) == [repr(["n", 2])]
