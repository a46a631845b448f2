"""Identity: node IDs, port IDs, ``node_of``/``port_is_local``, ``SELF()``
(docs/api.md#identity)."""

import re

import pytest
from greenlet import getcurrent

from aemp_green import (
    NODE,
    SELF,
    after,
    kil,
    node_id,
    node_of,
    peval,
    port,
    port_is_local,
    psub,
    rcv,
    receive,
    snd,
    spawn,
    Timeout,
)
from aemp_green import kernel
from conftest import Collector, run_in_greenlet, run_in_port, wait_until

NODE_CHARS = re.compile(r"[A-Za-z0-9_\-.:/]+")


# --------------------------------------------------------------------------- node IDs


def test_anonymous_node_id_before_configure():
    """docs/api.md#identity: "The default node ID is `<profile>/`; `anon/` nodes are allowed."
    and "`NODE()` / `node_id()`: this node's ID." -- before configure() it is anon/<10 alnum>."""
    nid = NODE()
    assert re.fullmatch(r"anon/[A-Za-z0-9]{10}", nid), nid
    # AEMP's runiq: the last character is upper-cased (a digit stays a digit)
    assert not nid[-1].islower()
    assert node_id() == nid
    assert node_id is NODE or node_id() == NODE()


def test_node_id_charset():
    """docs/api.md#identity: "A node ID is a string of `[A-Za-z0-9_\\-.:/]`"."""
    assert NODE_CHARS.fullmatch(NODE())
    with pytest.raises(ValueError):
        kernel.set_node_id("bad#id")
    assert NODE_CHARS.fullmatch(NODE())


def test_node_id_templates():
    """docs/api.md#identity: "`%n` expands to the host name, `%u` (or a trailing `/`) to a random
    unique string. The default node ID is `<profile>/`"."""
    config = pytest.importorskip("aemp_green.config")
    if not hasattr(config, "expand_nodeid") or not hasattr(config, "default_nodeid"):
        pytest.skip("aemp_green.config has no expand_nodeid/default_nodeid yet")
    assert config.expand_nodeid("%n/%u", hostname="box", runiq="Abcdefghi1") == "box/Abcdefghi1"
    assert config.expand_nodeid("anon/", runiq="Abcdefghi1") == "anon/Abcdefghi1"
    assert config.expand_nodeid("seed") == "seed"
    r = config.expand_nodeid("x/%u")
    assert re.fullmatch(r"x/[A-Za-z0-9]{10}", r)
    assert config.expand_nodeid("x/%u") != r  # random each time
    assert config.default_nodeid({"profile": "seed"}) == "seed/"


# --------------------------------------------------------------------------- port IDs


def test_port_id_format_callback_and_greenlet_ports():
    """docs/api.md#identity: "A port ID is `"<nodeid>#<portname>"`." -- for both kinds of port."""
    p = port()
    g = spawn(receive)
    try:
        for pid in (p, g):
            node, sep, name = pid.partition("#")
            assert node == NODE() and sep == "#" and name
            assert "#" not in name
            assert re.fullmatch(r"[A-Za-z0-9]+", name)
    finally:
        kil(p)
        kil(g)


def test_node_port_addressed_by_bare_node_id_and_empty_name():
    """docs/api.md#identity: "The node's own port has the empty name (`"node#"` and the bare node ID
    both address it)." -- a "snd" request to either form is forwarded by the node port."""
    col = Collector()
    p = col.port()
    snd(NODE(), "snd", p, "via", "bare")
    snd(NODE() + "#", "snd", p, "via", "hash")
    assert sorted(col.wait(2)) == [("via", "bare"), ("via", "hash")]
    kil(p)
    assert port_is_local(NODE()) and port_is_local(NODE() + "#")
    assert node_of(NODE() + "#") == NODE()


def test_port_names_never_reused():
    """docs/api.md#identity: "Port names are never reused within a process lifetime." -- 10,000
    created and killed ports (both kinds) all get distinct IDs."""
    seen = set()
    for i in range(10_000):
        p = port() if i % 10 else spawn(receive)
        assert p not in seen
        seen.add(p)
        kil(p)
    assert len(seen) == 10_000
    assert all(kernel.lookup_port(p) is None for p in seen)


def test_node_of():
    """docs/api.md#identity: "`node_of(port)`" -- the part before the first '#'."""
    assert node_of("seed#abc") == "seed"
    assert node_of("seed") == "seed"
    assert node_of("a/b:c#x#y") == "a/b:c"
    p = port()
    assert node_of(p) == NODE()
    kil(p)


def test_port_is_local():
    """docs/api.md#identity: "`port_is_local(port)`"."""
    p = port()
    assert port_is_local(p)
    assert port_is_local(NODE() + "#whatever")
    assert not port_is_local("other/node#abc")
    assert not port_is_local(NODE() + "x#abc")  # a node whose ID merely starts like ours
    kil(p)


# --------------------------------------------------------------------------- SELF()


def test_self_raises_outside_port_context():
    """docs/api.md#identity: "`SELF()` ... raises outside port context." (in a fresh plain
    greenlet)."""

    def body():
        with pytest.raises(RuntimeError):
            SELF()
        return True

    assert run_in_greenlet(body)


def test_self_in_rcv_handler():
    """docs/api.md#identity: "`SELF()`: the port whose code is running now (in an `rcv` callback
    ...)"."""
    col = Collector()
    p = port()
    rcv(p, "who", lambda: col(SELF()))
    p2 = port(lambda *msg: col(SELF()))
    snd(p, "who")
    snd(p2, "anything")
    assert col.wait(2) == [(p,), (p2,)]
    kil(p)
    kil(p2)


def test_self_in_greenlet_port():
    """docs/api.md#identity: "`SELF()` ... (... or a greenlet port)"."""
    col = Collector()
    g = spawn(lambda: col(SELF()))
    assert col.wait_one() == (g,)


def test_self_in_psub_called_later_from_after_timer():
    """docs/api.md#identity: "`SELF()` ... (... a `psub` ...)" -- the wrapper runs later, from an
    `after` timer (callable form), in the port's context."""
    col = Collector()

    def body():
        after(0.01, psub(lambda: col("psub", SELF())))
        receive("never", timeout=5)

    g = spawn(body)
    try:
        assert col.wait_one() == ("psub", g)
    finally:
        kil(g)

    # and from a callback port's handler
    def arm():
        after(0.01, psub(lambda: col("cb-psub", SELF())))

    p = port()
    rcv(p, "arm", arm)
    snd(p, "arm")
    assert col.wait(2)[1] == ("cb-psub", p)
    kil(p)


def test_self_in_peval():
    """docs/api.md#identity: "`SELF()` ... (... a `peval` ...)"."""
    p = port()
    assert peval(p, SELF) == p
    kil(p)


def test_self_in_callback_that_spawns():
    """docs/api.md#identity "`SELF()`": a callback that spawns keeps its own SELF; the spawned
    greenlet port has its own."""
    col = Collector()

    def child():
        col("child", SELF())

    def handler():
        before = SELF()
        c = spawn(child)
        col("spawned", c)
        col("handler", before, SELF())

    p = port()
    rcv(p, "go", handler)
    snd(p, "go")
    items = col.wait(3)
    spawned = [i for i in items if i[0] == "spawned"][0][1]
    assert ("handler", p, p) in items
    assert ("child", spawned) in items
    assert spawned != p
    kil(p)


def test_self_kept_across_blocking_receive():
    """docs/api.md#identity "`SELF()`": a greenlet blocked in receive and resumed (also by a direct
    hand-off from another greenlet port) is still its own port."""
    col = Collector()
    rounds = 200

    def player(peer_box):
        me = SELF()
        for i in range(rounds):
            (peer,) = receive("peer") if i == 0 else (peer_box[0],)
            peer_box[0] = peer
            snd(peer, "ball", i)
            receive("ball")
            if SELF() != me:
                col("wrong", me, SELF())
                return
        col("done", me)

    a = spawn(player, [None])
    b = spawn(player, [None])
    snd(a, "peer", b)
    snd(b, "peer", a)
    items = col.wait(2)
    assert sorted(items) == sorted([("done", a), ("done", b)])


def test_self_works_in_main_greenlet_after_receive():
    """docs/api.md#ports-and-messages: "The main greenlet of a script can receive too: it gets a
    port of its own on first use." -- after one receive(), SELF() works in the test (main)
    greenlet."""
    assert getcurrent().parent is None  # pytest runs tests in the main greenlet
    with pytest.raises(Timeout):
        receive("nothing", timeout=0)
    me = SELF()
    assert port_is_local(me)
    snd(me, "hello", 1)
    assert receive("hello", timeout=5) == [1]
    assert SELF() == me


def test_self_in_fresh_greenlet_after_receive():
    """docs/api.md#ports-and-messages: "... gets a port of its own on first use." -- a plain
    greenlet has no SELF until its first receive; its port ends with the greenlet."""

    def body():
        with pytest.raises(RuntimeError):
            SELF()
        with pytest.raises(Timeout):
            receive(timeout=0)
        me = SELF()
        snd(me, "x", 42)
        return me, receive("x", timeout=5)

    me, got = run_in_greenlet(body)
    assert got == [42]
    assert port_is_local(me)
    wait_until(lambda: kernel.lookup_port(me) is None, what="adopted port to end with its greenlet")


def test_self_in_run_in_port_helper_is_isolated():
    """docs/api.md#identity "`SELF()`": each greenlet port has its own SELF, distinct from
    another's."""
    a = run_in_port(SELF)
    b = run_in_port(SELF)
    assert a != b and port_is_local(a) and port_is_local(b)
