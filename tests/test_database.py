"""The shared database across real processes: 2 seeds + 3 nodes on 127.0.0.1.

Every node is a child process (``tests/child.py``); this pytest process never calls
``configure()``. The seeds have fixed node IDs (``seedA``, ``seedB``) and fixed binds (free
ports), and each lists both seed addresses as its seeds, so both become global nodes and mesh;
the nodes list both seeds too and take the first one that answers as their master
(docs/protocol.md#seeds-and-global-nodes). Every wait is on a line a child emitted (or a bounded
``wait_for`` inside a child), with a deadline; nothing sleeps to synchronise.

In the children, ``watch(tag, family)`` starts a ``db_mon`` that emits
``[tag, added, changed, deleted, family_dict, time.time()]`` for every call and keeps the live
dict in ``VIEW[tag]``.
"""

from netutil import free_port
import pytest

# slow (docs/testing.md): real processes, ~40 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

HELPERS = """
import aemp_green.globaldb as G

VIEW = {}

def watch(tag, family):
    def cb(db, added, changed=None, deleted=None):
        VIEW[tag] = db
        emit(tag, sorted(added), sorted(changed or []), sorted(deleted or []), dict(db),
             time.time())
    return db_mon(family, cb)

def wait_family(family, expected, timeout=10):
    # db_family (a request to the master) until it returns `expected`
    wait_for(lambda: db_family(family, timeout=5) == expected, timeout,
             "db_family(%r) == %r" % (family, expected))
"""


class DB:
    """The nodes of one test: ``seeds`` (seedA, seedB), ``nodes`` (n1, n2, n3)."""

    def __init__(self, cluster, n_nodes=3):
        self.cluster = cluster
        self.addrs = ["127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()]
        self.seeds = cluster.start(
            ("seedA", dict(binds=[self.addrs[0]], seeds=self.addrs)),
            ("seedB", dict(binds=[self.addrs[1]], seeds=self.addrs)),
        )
        self.nodes = cluster.start(
            *[("n%d" % i, dict(seeds=self.addrs)) for i in range(1, n_nodes + 1)]
        )
        for c in self.seeds + self.nodes:
            c.run(HELPERS)
        self.settle()

    @property
    def alive(self):
        return [c for c in self.seeds + self.nodes if c.alive]

    def add_node(self, name):
        (c,) = self.cluster.start((name, dict(seeds=self.addrs)))
        c.run(HELPERS)
        self.nodes.append(c)
        return c

    def settle(self, timeout=15):
        """Every live node has a master; every live seed knows every live node's ``'l``."""
        live = self.alive
        want = {c.nodeid: c.binds for c in live}
        for c in live:
            c.run(
                "wait_for(lambda: G.master() is not None, %s, 'a master')" % timeout,
                timeout=timeout + 5,
            )
        for s in self.seeds:
            if s.alive:
                s.run(
                    "wait_for(lambda: G.is_global() and db_family(\"'l\", timeout=5) == %r, %s)"
                    % (want, timeout),
                    timeout=timeout + 5,
                )

    def by_id(self, nodeid):
        (c,) = [c for c in self.seeds + self.nodes if c.nodeid == nodeid]
        return c


def first_call(child, tag, timeout=10):
    """The first ``db_mon`` call of watcher ``tag``: (added, changed, deleted, db, t)."""
    return child.expect(tag, timeout)


def wait_event(child, tag, timeout=10, added=(), changed=(), deleted=()):
    """Wait for a watcher call of ``tag`` whose lists contain the given keys."""

    def pred(v):
        return set(added) <= set(v[0]) and set(changed) <= set(v[1]) and set(deleted) <= set(v[2])

    return child.expect(tag, timeout, pred)


def test_db_reg_seen_elsewhere_within_a_second_and_port_death_deletes(cluster):
    """docs/api.md#the-shared-database: ``db_reg(family, port, value)`` sets and deletes when the
    port dies; ``db_mon`` on other nodes (behind either seed) sees the key in ``added`` within 1 s,
    then in ``deleted`` when the port is killed (docs/protocol.md#database-events)."""
    db = DB(cluster)
    n1, n2, n3 = db.nodes
    for n in (n2, n3):
        n.run("W = watch('w', 'svc')")
        assert first_call(n, "w")[:4] == [[], [], [], {}]
    n1.run("""
        P = port(lambda *m: None)
        T0 = time.time()
        db_reg("svc", P, {"info": "worker"})
    """)
    p, t0 = n1.ask("[P, T0]")
    latencies = []
    for n in (n2, n3):
        added, changed, deleted, fam, t = wait_event(n, "w", added=[p])
        assert (added, changed, deleted, fam) == ([p], [], [], {p: {"info": "worker"}})
        latencies.append(t - t0)
    print("db_reg -> db_mon latency: %s" % ["%.1f ms" % (x * 1000) for x in latencies])
    assert max(latencies) < 1.0, latencies

    n1.run("kil(P)")
    for n in (n2, n3):
        added, changed, deleted, fam, _ = wait_event(n, "w", deleted=[p])
        assert (added, changed, deleted, fam) == ([], [], [p], {})
    for c in db.alive:
        c.run("wait_family('svc', {})")


def test_kill9_of_registering_node_removes_its_entries_everywhere(cluster):
    """docs/protocol.md#seeds-and-global-nodes: when a node goes down (kill -9) the global nodes
    drop every entry it contributed (``db_reg``, ``db_set``, its ``'l``); watchers see them
    deleted."""
    db = DB(cluster)
    n1, n2, n3 = db.nodes
    for n in (n2, n3):
        n.run("W = watch('w', 'svc')")
        first_call(n, "w")
    n2.run("db_set('svc', 'n2key', 2)")
    n1.run("""
        P1 = port(lambda *m: None)
        P2 = port(lambda *m: None)
        db_reg("svc", P1, 1)
        db_reg("svc", P2)
        db_set("svc", "n1key", {"x": [1]})
        db_set("other", "n1other", 1)
    """)
    p1, p2 = n1.ask("[P1, P2]")
    for n in (n2, n3):
        n.run("wait_for(lambda: set(VIEW['w']) == {%r, %r, 'n1key', 'n2key'})" % (p1, p2))
    for s in db.seeds:
        s.run("wait_family('other', {'n1other': 1})")

    n1.kill()
    for n in (n2, n3):
        n.run("wait_for(lambda: set(VIEW['w']) == {'n2key'})")
    for c in db.alive:
        c.run("wait_family('svc', {'n2key': 2}); wait_family('other', {})")
    for s in db.seeds:
        s.run("wait_for(lambda: %r not in db_family(\"'l\", timeout=5))" % n1.nodeid)


def test_master_seed_kill9_fails_over_without_stale_entries(cluster):
    """docs/protocol.md#seeds-and-global-nodes: kill -9 of a node's master seed: the node takes the
    other seed as master (sending it its whole db and its ``g_mon1``), ``db_mon`` keeps working (a
    registration made after the failover is seen everywhere), and once settled every node's
    ``db_family`` and ``db_mon`` view equal the expected set: the dead seed's own entries are gone,
    nobody else's."""
    db = DB(cluster)
    n1, n2, n3 = db.nodes
    master = n1.ask("G.master()")
    dead = db.by_id(master)
    (survivor,) = [s for s in db.seeds if s is not dead]
    masters_before = {n.name: n.ask("G.master()") for n in db.nodes}
    dead.run("db_set('fo', 'seedkey', 'from the seed')")
    for n in db.nodes:
        n.run("db_set('fo', %r, %r); W = watch('w', 'fo')" % (n.name, n.name))
    before = {"seedkey": "from the seed", "n1": "n1", "n2": "n2", "n3": "n3"}
    for n in db.nodes + [survivor]:
        n.run("wait_family('fo', %r)" % (before,))
    for n in db.nodes:
        n.run("wait_for(lambda: VIEW.get('w') == %r)" % (before,))

    dead.kill()
    for n in db.nodes:
        n.run("wait_for(lambda: G.master() == %r, 10)" % survivor.nodeid, timeout=15)
    moved = [n for n in db.nodes if masters_before[n.name] == dead.nodeid]
    assert n1 in moved
    n1.run("db_set('fo', 'after', [1, 2])")
    for n in db.nodes:
        wait_event(n, "w", added=["after"])
    expected = {"n1": "n1", "n2": "n2", "n3": "n3", "after": [1, 2]}
    for n in db.nodes + [survivor]:
        n.run("wait_family('fo', %r)" % (expected,))
    for n in db.nodes:
        n.run("wait_for(lambda: VIEW['w'] == %r)" % (expected,))
    want_l = {c.nodeid: c.binds for c in db.nodes + [survivor]}
    for n in db.nodes + [survivor]:
        n.run("wait_family(\"'l\", %r)" % (want_l,))
    # and the database keeps working after the failover
    n2.run("kil(port(lambda *m: None)); db_del('fo', 'n2')")
    expected.pop("n2")
    for n in db.nodes + [survivor]:
        n.run("wait_family('fo', %r)" % (expected,))


def test_late_joiner_and_second_db_mon_get_the_whole_family_first(cluster):
    """docs/protocol.md#database-events: the first ``db_mon`` call carries the whole family (every
    key added, nothing changed/deleted), for a node that joins late, and also for a second
    ``db_mon`` on the same family in the same node."""
    db = DB(cluster)
    n1, n2, n3 = db.nodes
    n1.run("db_set('late', 'a', 1); db_set('late', 'b', {'x': None})")
    n2.run("db_set('late', 'c', [True])")
    expected = {"a": 1, "b": {"x": None}, "c": [True]}
    n3.run("wait_family('late', %r)" % (expected,))

    n4 = db.add_node("n4")
    n4.run("W1 = watch('w1', 'late')")
    added, changed, deleted, fam, _ = first_call(n4, "w1")
    assert (added, changed, deleted, fam) == (sorted(expected), [], [], expected)
    n4.run("W2 = watch('w2', 'late')")
    added, changed, deleted, fam, _ = first_call(n4, "w2")
    assert (added, changed, deleted, fam) == (sorted(expected), [], [], expected)
    # both keep getting changes; dropping one keeps the other
    n1.run("db_set('late', 'a', 2)")
    for tag in ("w1", "w2"):
        assert wait_event(n4, tag, changed=["a"])[:3] == [[], ["a"], []]
    n4.run("W1.cancel()")
    n1.run("db_set('late', 'd', 4)")
    assert wait_event(n4, "w2", added=["d"])[:3] == [["d"], [], []]
    # the same on a seed (a global node answers locally)
    seed = db.seeds[0]
    expected.update(a=2, d=4)
    # the other global node may still be passing 'd' on to this one: wait for it first
    seed.run("wait_family('late', %r)" % (expected,))
    seed.run("S1 = watch('s1', 'late')")
    first_call(seed, "s1")
    seed.run("S2 = watch('s2', 'late')")
    assert first_call(seed, "s2")[:4] == [sorted(expected), [], [], expected]


def test_unchanged_value_is_not_resent(cluster):
    """docs/protocol.md#database-events: ``db_set`` does not resend a value that has not changed
    (compared by its JSON encoding); counted with a tracer on the sending node."""
    db = DB(cluster)
    n1, n2, _ = db.nodes
    n2.run("W = watch('w', 'same')")
    first_call(n2, "w")
    n1.run("""
        UPD = []
        TR = trace.add_tracer(lambda d, n, f: d == "SND" and len(f) > 1 and f[1] == "g_upd"
                             and UPD.append(f))
        for _ in range(3):
            db_set("same", "k", {"b": 1, "a": [1, 2]})
        db_set("same", "k", {"a": [1, 2], "b": 1})   # same JSON (sorted keys)
    """)
    assert wait_event(n2, "w", added=["k"])[:4] == [["k"], [], [], {"k": {"a": [1, 2], "b": 1}}]
    n1.run("db_set('same', 'k', {'a': [1, 2], 'b': 2})")
    assert wait_event(n2, "w", changed=["k"])[:3] == [[], ["k"], []]
    assert n1.ask("len(UPD)") == 2
    assert n1.ask("UPD") == [
        ["", "g_upd", "same", {"k": {"a": [1, 2], "b": 1}}, None],
        ["", "g_upd", "same", {"k": {"a": [1, 2], "b": 2}}, None],
    ]


def test_value_of_another_node_comes_back_when_the_overriding_node_dies(cluster):
    """docs/protocol.md#seeds-and-global-nodes: values are kept per source: X and Y both ``db_set``
    the same key, Y's (later) value is seen; after kill -9 of Y, X's value is back everywhere."""
    db = DB(cluster)
    x, y, w = db.nodes
    w.run("W = watch('w', 'ovr')")
    first_call(w, "w")
    x.run("db_set('ovr', 'k', 'from X')")
    assert wait_event(w, "w", added=["k"])[3] == {"k": "from X"}
    y.run("db_set('ovr', 'k', 'from Y')")
    assert wait_event(w, "w", changed=["k"])[3] == {"k": "from Y"}
    for c in [x, w] + db.seeds:
        c.run("wait_family('ovr', {'k': 'from Y'})")
    y.kill()
    assert wait_event(w, "w", changed=["k"])[3] == {"k": "from X"}
    for c in db.alive:
        c.run("wait_family('ovr', {'k': 'from X'})")


def test_blocking_db_values_and_db_keys(cluster):
    """docs/api.md#the-shared-database: without a ``cb`` ``db_family``/``db_keys``/``db_values``
    block and return the dict / list (on a node through its master, on a seed locally); with a
    ``cb`` they call back."""
    db = DB(cluster)
    n1, n2, n3 = db.nodes
    n1.run("db_set('bq', 'a', 1); db_set('bq', 'b', [2])")
    n2.run("db_set('bq', 'c', {'three': 3})")
    expected = {"a": 1, "b": [2], "c": {"three": 3}}
    n3.run("wait_family('bq', %r)" % (expected,))
    for c in [n3, n1] + db.seeds:
        keys, values, fam = c.ask(
            "[db_keys('bq', timeout=5), db_values('bq', timeout=5), db_family('bq', timeout=5)]"
        )
        assert sorted(keys) == sorted(expected)
        assert sorted(values, key=repr) == sorted(expected.values(), key=repr)
        assert fam == expected
        assert dict(zip(keys, values)) == expected
        assert c.ask("db_keys('nothing_here', timeout=5)") == []
        assert c.ask("db_values('nothing_here', timeout=5)") == []
        assert c.ask("db_family('nothing_here', timeout=5)") == {}
    n3.exec("db_values('bq', cb=lambda r: emit('vals', sorted(r, key=repr)))")
    assert n3.expect("vals")[0] == sorted(expected.values(), key=repr)


def test_db_set_guard_deletes_when_cancelled(cluster):
    """docs/api.md#the-shared-database: ``g = db_set(...)`` returns a guard; ``g.cancel()`` deletes
    the key; dropping the guard (aemp_green/_guard.py) or a bare ``db_set`` statement keeps it."""
    db = DB(cluster)
    n1, n2, _ = db.nodes
    n2.run("W = watch('w', 'gd')")
    first_call(n2, "w")
    n1.run("G1 = db_set('gd', 'guarded', 1)\ndb_set('gd', 'kept', 2)")
    wait_event(n2, "w", added=["guarded"])
    wait_event(n2, "w", added=["kept"])
    n1.run("G0 = db_set('gd', 'dropped', 0)\ndel G0\nimport gc; gc.collect()\nG1.cancel()")
    wait_event(n2, "w", added=["dropped"])
    added, changed, deleted, fam, _ = wait_event(n2, "w", deleted=["guarded"])
    assert fam == {"kept": 2, "dropped": 0}
    n1.run("G2 = db_set('gd', 'cancelled', 3)")
    wait_event(n2, "w", added=["cancelled"])
    n1.run("G2.cancel()")
    assert wait_event(n2, "w", deleted=["cancelled"])[3] == {"kept": 2, "dropped": 0}
    n2.run("wait_family('gd', {'kept': 2, 'dropped': 0})")


def test_blocking_query_inside_a_query_callback(cluster):
    """A callback of ``db_family`` may itself use the blocking forms (it is a callback like
    ``db_mon``'s, which run in their own greenlet)."""
    db = DB(cluster)
    n1 = db.nodes[0]
    n1.run("db_set('cbq', 'k', 1); wait_family('cbq', {'k': 1})")
    n1.exec("db_family('cbq', cb=lambda r: emit('inner', r, db_keys('cbq', timeout=2)))")
    assert n1.expect("inner", timeout=5) == [{"k": 1}, ["k"]]


def test_restarted_seed_resyncs_and_takes_over(cluster):
    """docs/protocol.md#seeds-and-global-nodes: a killed seed that comes back (same node ID and
    binds) meshes again and gets the whole database from the other global node; when the other one
    is then killed, every node fails over to it and the database is still complete, with nothing
    stale."""
    db = DB(cluster)
    sa, sb = db.seeds
    for n in db.nodes:
        n.run("db_set('rs', %r, 1); W = watch('w', 'rs')" % n.name)
    expected = {n.name: 1 for n in db.nodes}
    sb.run("db_set('rs', 'from_seedB', 0)")
    sa.run("wait_family('rs', %r)" % (dict(expected, from_seedB=0),))

    sa.kill()
    sa.start()
    sa.run(HELPERS)
    for n in db.nodes:
        n.run("wait_for(lambda: node.node_is_up(%r))" % sa.nodeid)
    sa.run("wait_family('rs', %r)" % (dict(expected, from_seedB=0),))
    sa.run("wait_family(\"'l\", %r)" % ({c.nodeid: c.binds for c in db.alive},))

    sb.kill()
    for n in db.nodes:
        n.run("wait_for(lambda: G.master() == %r, 10)" % sa.nodeid, timeout=15)
    for c in db.alive:
        c.run("wait_family('rs', %r)" % (expected,))
    for n in db.nodes:
        n.run("wait_for(lambda: VIEW['w'] == %r)" % (expected,))
    db.nodes[2].run("db_set('rs', 'late', 2)")
    for n in db.nodes:
        wait_event(n, "w", added=["late"])
