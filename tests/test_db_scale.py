"""The replicated database at scale, with real processes on 127.0.0.1 (reliability).

* A node joining or leaving costs a global node work in proportion to what that node held,
  never to the size of the database or the number of watched families. The work is counted,
  not timed: the number of Python lines a global node runs (``sys.settrace`` in the seed's process) for a node that held one
  key going down, and for a node's ``g_slave`` with its database, with 100 keys and with
  20,000 keys in the database. (Timings are in ``bench/scale.py``.)
* A family larger than a reader's ``max_frame`` reaches it: ``db_family`` returns, the first
  ``db_mon`` call has every key, a new global node gets it in ``g_set``, a new master in
  ``g_slave``; and the reader's link to its master is the one it started with (the old code
  sent the family as one frame: the reader dropped the link, redialled and asked again, for
  ever).
"""

from netutil import free_port
import pytest

# slow (docs/testing.md): real processes, ~10 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

KEYS = 20000
SMALL_FRAME = 256 * 1024  # the family below is about 0.9 MB of JSON

COUNTER = """
import sys, types
import aemp_green.globaldb.sync as G

def lines_run(fn, *args):
    # how many Python lines fn(*args) runs (a work counter that does not depend on the clock)
    n = [0]
    def tracer(frame, event, arg):
        if event == "line":
            n[0] += 1
        return tracer
    sys.settrace(tracer)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return n[0]

def leave_work(name):
    # a node that held one key leaves: the work its node-down costs
    G._req_g_slave(name, {"'l": {name: ["127.0.0.1:1"]}, "leave": {name: 1}})
    return lines_run(G.node_down, types.SimpleNamespace(id=name))

def join_work(name):
    # a node joins with a database of three keys: the work its g_slave costs
    work = lines_run(G._req_g_slave, name, {"'l": {name: ["127.0.0.1:1"]},
                                             "join": {name: 1, name + "x": 2}})
    G.node_down(types.SimpleNamespace(id=name))
    return work
"""

FILL = """
def fill(family, n, start=0):
    for i in range(start, start + n):
        db_set(family, "w#p%07d" % i, {"n": i, "info": "worker"})
        if i % 1000 == 999:
            gevent.sleep(0)
    db_keys("sync", timeout=30)  # after the updates on the same link: all applied
"""


def test_join_and_leave_cost_does_not_grow_with_the_database(cluster):
    seed = cluster.seed()
    w = cluster.node("w", seeds=[seed.addr])
    w.run("import aemp_green.globaldb.sync as G\nwait_for(lambda: G.master() == 'seed', 15)")
    seed.run(COUNTER)
    w.run(FILL)
    w.run("fill('big', 100)")
    small = seed.ask("[leave_work('a1'), leave_work('a2'), join_work('b1'), join_work('b2')]")
    w.run("fill('big', %d, 100)" % (KEYS - 100), timeout=60)
    assert seed.ask("len(db_keys('big', timeout=5))") == KEYS
    # and other nodes watch many families (the old node-down went through all of them)
    w.run(
        "WS = [db_mon('f%d' % i, lambda *a: None) for i in range(5000)]\n"
        "db_keys('sync', timeout=10)"
    )
    assert seed.ask("len(G._remote_mons)") == 5000
    big = seed.ask("[leave_work('a3'), leave_work('a4'), join_work('b3'), join_work('b4')]")
    print("lines run with 100 keys: %s; with %d keys: %s" % (small, KEYS, big))
    leave_small, leave_big = min(small[:2]), min(big[:2])
    join_small, join_big = min(small[2:]), min(big[2:])
    # the same work whatever the size (the old code scanned every key: 200 times as much)
    assert leave_big <= leave_small * 1.5 + 20, (small, big)
    assert join_big <= join_small * 1.5 + 20, (small, big)
    # and the database is intact
    assert seed.ask("len(db_keys('big', timeout=5))") == KEYS


def _frame_errors(c):
    return [line for line in c.log_text().splitlines() if "frame" in line and "larger" in line]


def test_a_family_larger_than_the_readers_max_frame_reaches_it(cluster):
    addr_a, addr_b = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    seeds = [addr_a, addr_b]
    (a,) = cluster.start(("seedA", dict(binds=[addr_a], seeds=seeds)))
    w = cluster.node("w", seeds=seeds)
    w.run("import aemp_green.globaldb.sync as G\nwait_for(lambda: G.master() == 'seedA', 15)")
    w.run(FILL)
    w.run("fill('big', %d)" % KEYS, timeout=60)
    r = cluster.node("r", seeds=[addr_a], max_frame=SMALL_FRAME)
    r.run("""
        import aemp_green.globaldb.sync as G
        wait_for(lambda: G.master() == 'seedA', 15)
        LINK = node.get_node('seedA').link
        FIRST = []
        def first(db, added, changed=None, deleted=None):
            if not FIRST:
                FIRST.append(len(added))
        W = db_mon('big', first)
    """)
    # db_family, db_keys, db_values return (in parts); db_mon's first call has every key
    assert r.ask("len(db_family('big', timeout=20))", timeout=30) == KEYS
    assert (
        r.ask(
            "sorted(db_keys('big', timeout=20)) == ['w#p%%07d' %% i for i in range(%d)]" % KEYS,
            timeout=30,
        )
        is True
    )
    assert (
        r.ask(
            "sorted(v['n'] for v in db_values('big', timeout=20)) == list(range(%d))" % KEYS,
            timeout=30,
        )
        is True
    )
    r.run("wait_for(lambda: FIRST, 20)", timeout=30)
    assert r.ask("FIRST") == [KEYS]
    # the same link all along: no frame was too large for it
    assert r.ask("node.get_node('seedA').link is LINK and not LINK.closed") is True
    assert _frame_errors(r) == []

    # a second global node that takes no frame larger than 256 KiB gets it all in g_set
    (b,) = cluster.start(("seedB", dict(binds=[addr_b], seeds=seeds, max_frame=SMALL_FRAME)))
    b.run("wait_for(lambda: len(db_keys('big', timeout=5)) == %d, 30)" % KEYS, timeout=40)
    w.run("wait_for(lambda: node_is_up('seedB'), 15)")
    assert _frame_errors(b) == []

    # w's master goes: w sends its whole database (larger than 256 KiB) to seedB in g_slave
    w.run("LINK_B = node.get_node('seedB').link")
    a.kill()
    w.run("wait_for(lambda: G.master() == 'seedB', 15)")
    b.run("wait_for(lambda: not node_is_up('seedA'), 15)")
    b.run("wait_for(lambda: len(db_keys('big', timeout=5)) == %d, 30)" % KEYS, timeout=40)
    w.run("db_set('big', 'last', 1)")
    b.run("wait_for(lambda: len(db_keys('big', timeout=5)) == %d, 30)" % (KEYS + 1), timeout=40)
    assert w.ask("node.get_node('seedB').link is LINK_B and not LINK_B.closed") is True
    assert _frame_errors(b) == []


def test_a_large_family_reaches_an_aemp_2_02_style_watcher_and_requester(cluster):
    """What AEMP 2.02 nodes send and understand keeps working with large families: a watcher
    whose ``g_mon1`` says nothing about parts gets ``g_chg1`` with a part of the family and the
    rest as ``g_chg2`` (added keys), and a ``g_db_family`` without the extra argument is
    answered in one ``g_reply``."""
    from aemp_green.wire import framing
    from netutil import RawPeer

    seed = cluster.seed()
    w = cluster.node("w", seeds=[seed.addr])
    w.run("import aemp_green.globaldb.sync as G\nwait_for(lambda: G.master() == 'seed', 15)")
    w.run(FILL)
    w.run("fill('big', %d)" % KEYS, timeout=60)
    peer = RawPeer(seed.addr, nodeid="perl_like", framings=("json",))
    est = peer.handshake()
    dec = framing.codec(est.recv_framing)[1]()
    peer.send_frame(["", "g_mon1", "big"])
    peer.send_frame(["", "g_db_family", "big", "b"])
    frames, data = [], peer.rbuf
    peer.sock.settimeout(20)
    while not any(f[1] == "g_reply" for f in frames):
        frames += dec.feed(data)
        if not any(f[1] == "g_reply" for f in frames):
            data = peer.sock.recv(1 << 20)
            assert data, "closed"
    peer.close()
    chg = [f for f in frames if f[1] in ("g_chg1", "g_chg2")]
    assert chg[0][1] == "g_chg1" and all(f[1] == "g_chg2" for f in chg[1:]) and len(chg) > 1
    seen = {}
    for f in chg:
        assert not set(f[3]) & set(seen)  # every key once: added, never changed
        seen.update(f[3])
    assert seen == {"w#p%07d" % i: {"n": i, "info": "worker"} for i in range(KEYS)}
    (reply,) = [f for f in frames if f[1] == "g_reply"]
    assert reply[:3] == ["", "g_reply", "b"] and len(reply) == 4 and reply[3] == seen
