"""Monitoring: mon forms, one-shot firing, guards, mon_guard, spawn by name
(docs/api.md#monitoring)."""

import gc
import re
import weakref

import pytest
from greenlet import getcurrent

from aemp_green import NODE, SELF, kil, mon, mon_guard, node_of, port, rcv, receive, snd, spawn
from aemp_green import kernel
from conftest import Collector, flush, run_in_greenlet, spawned_log, wait_until

ZERO_DIV = ("die", "ZeroDivisionError: division by zero")


# --------------------------------------------------------------------------- the four forms


def test_mon_callable_gets_reason():
    """docs/api.md#monitoring: "`mon(port, cb)` calls `cb(*reason)` once when `port` dies"."""
    col = Collector()
    p = port()
    mon(p, col)
    kil(p, "why", 1, [2])
    assert col.wait_one() == ("why", 1, [2])

    q = spawn(receive)
    mon(q, col)
    kil(q)
    assert col.wait(2)[1] == ()


def test_mon_rcvport_killed_with_same_reason():
    """docs/api.md#monitoring: "`mon(port, rcvport)` kills `rcvport` with the same reason when the
    reason is non-empty"."""
    col = Collector()
    p = port()
    r = port()
    mon(p, r)
    mon(r, col)
    kil(p, "crash", 2)
    assert col.wait_one() == ("crash", 2)
    assert kernel.lookup_port(r) is None


def test_mon_rcvport_not_killed_on_normal_exit():
    """docs/api.md#monitoring: "`mon(port, rcvport)` kills `rcvport` ... when the reason is
    non-empty" -- a normal exit leaves rcvport alive."""
    sentinel = Collector()
    p = port()
    r = port(lambda *m: None)
    mon(p, r)
    mon(p, sentinel)  # registered after: fires after the rcvport action
    kil(p)
    assert sentinel.wait_one() == ()
    flush()
    assert kernel.lookup_port(r) is not None
    kil(r)


def test_mon_one_argument_uses_self():
    """docs/api.md#monitoring: "`mon(port)` is that with `rcvport = SELF()`"."""
    col = Collector()
    target = port()

    def body():
        mon(target)
        col("monitoring")
        receive("never")

    g = spawn(body)
    mon(g, col)
    col.wait_one()
    kil(target, "linked", "crash")
    assert col.wait(2)[1] == ("linked", "crash")


def test_mon_one_argument_in_callback_port():
    """docs/api.md#monitoring: "`mon(port)` is that with `rcvport = SELF()`" -- in an rcv
    handler."""
    col = Collector()
    target = port()
    watcher = port()

    def link(t):
        mon(t)

    rcv(watcher, "link", link)
    mon(watcher, col)
    snd(watcher, "link", target)
    flush()
    kil(target, "err")
    assert col.wait_one() == ("err",)


def test_mon_one_argument_outside_port_context_raises():
    """docs/api.md#monitoring: "`mon(port)` is that with `rcvport = SELF()`" -- no SELF, no
    one-argument mon."""
    p = port()

    def body():
        with pytest.raises(RuntimeError):
            mon(p)
        return True

    assert run_in_greenlet(body)
    kil(p)


def test_mon_rcvport_with_message():
    """docs/api.md#monitoring: "`mon(port, rcvport, *msg)` sends `msg + reason` to `rcvport`."."""
    col = Collector()
    inbox = col.port()
    p = port()
    q = port()
    mon(p, inbox, "down", p)
    mon(q, inbox, "down", q)
    kil(p, "crash", 1)
    kil(q)
    items = col.wait(2)
    assert ("down", p, "crash", 1) in items
    assert ("down", q) in items
    kil(inbox)


def test_mon_bad_arguments():
    """docs/api.md#monitoring: "`mon(port, cb)`" -- the second argument is a callable or a port
    ID."""
    p = port()
    with pytest.raises(TypeError):
        mon(p, 42)
    with pytest.raises(TypeError):
        mon(p, lambda *r: None, "message args only with a port")
    kil(p)


# --------------------------------------------------------------------------- one-shot, context


def test_mon_is_one_shot():
    """docs/api.md#monitoring: "One-shot." -- killing twice fires once."""
    col = Collector()
    sentinel = Collector()
    p = port()
    mon(p, col)
    kil(p, "first")
    kil(p, "second")
    kil(p)
    assert col.wait_one() == ("first",)
    mon(p, sentinel)  # now a nonexistent port: fires after the first monitor ran
    sentinel.wait_one()
    flush()
    assert col.items == [("first",)]


def test_mon_fires_once_per_monitor_in_order():
    """docs/api.md#monitoring: "`mon(port, cb)` calls `cb(*reason)` once" -- every monitor once."""
    col = Collector()
    p = port()
    for i in range(5):
        mon(p, lambda *r, i=i: col(i, r))
    kil(p, "x")
    assert col.wait(5) == [(i, ("x",)) for i in range(5)]
    flush()
    assert len(col) == 5


def test_monitor_fires_in_fresh_greenlet_not_in_dying_code():
    """docs/api.md#monitoring: "`mon(port, cb)` calls `cb(*reason)` once when `port` dies" -- in a
    fresh greenlet, not inside the dying port's code (its SELF is not the dying port)."""
    col = Collector()

    def self_or_none():
        try:
            return SELF()
        except RuntimeError:
            return None

    dying = {}

    def body():
        dying["g"] = getcurrent()
        receive("die")
        raise ZeroDivisionError("division by zero")

    g = spawn(body)
    mon(g, lambda *r: col("greenlet port", r, getcurrent(), self_or_none()))
    wait_until(lambda: "g" in dying)
    snd(g, "die")
    what, reason, cur, self_in_cb = col.wait_one()
    assert reason == ZERO_DIV
    assert cur is not dying["g"] and cur is not getcurrent()
    assert self_in_cb != g

    # a callback port killing itself in its handler (run in this greenlet by snd)
    p = port()
    rcv(p, "die", lambda: kil(SELF(), "suicide"))
    mon(p, lambda *r: col("callback port", r, getcurrent(), self_or_none()))
    snd(p, "die")
    what, reason, cur, self_in_cb = col.wait(2)[1]
    assert reason == ("suicide",)
    assert cur is not getcurrent()
    assert self_in_cb != p


def test_mon_nonexistent_local_port_fires_no_such_port():
    """docs/api.md#monitoring: "Monitoring a nonexistent local port fires at once with
    `("no_such_port", "cannot monitor nonexistent port", port)`."."""
    col = Collector()
    ghost = NODE() + "#nosuchportname"
    mon(ghost, col)
    assert col.wait_one() == ("no_such_port", "cannot monitor nonexistent port", ghost)

    dead = port()
    kil(dead)
    mon(dead, col)
    assert col.wait(2)[1] == ("no_such_port", "cannot monitor nonexistent port", dead)


def test_mon_nonexistent_port_kept_guard_cancelled():
    """docs/api.md#monitoring: "Returns a guard; cancelling it ... stops monitoring." -- also for
    the no_such_port case."""
    col = Collector()
    sentinel = Collector()
    ghost = NODE() + "#nosuchportname2"
    g = mon(ghost, col)
    g.cancel()
    mon(ghost, sentinel)
    sentinel.wait_one()
    flush()
    assert col.items == []


def test_mon_unknown_remote_node_fires_transport_error():
    """docs/api.md#monitoring: "Losing the connection to the port's node fires with
    `("transport_error", nodeid, "<why>")`." -- a node nobody can reach (no network configured)."""
    col = Collector()
    remote = "no-such-node/abcdef#xyz"
    mon(remote, col)
    reason = col.wait_one()
    assert reason[:2] == ("transport_error", node_of(remote))
    assert len(reason) == 3 and isinstance(reason[2], str) and reason[2]


def test_mon_unknown_remote_node_guard_cancel_stops_it():
    """docs/api.md#monitoring: "Returns a guard; cancelling it ... stops monitoring." -- for a port
    on an unknown node too."""
    col = Collector()
    sentinel = Collector()
    remote = "no-such-node/abcdef#cancelled"
    g = mon(remote, col)
    g.cancel()
    mon(remote, sentinel)
    sentinel.wait_one()
    flush()
    assert col.items == []


def test_mon_guarantee_no_holes():
    """docs/api.md#monitoring: "The guarantee: after `mon` starts, every message sent to the port is
    delivered, in order, or the monitor fires: there are never holes in the sequence."."""
    n = 2000
    got = []
    col = Collector()

    def handler(i):
        if i == 1234:
            raise ZeroDivisionError("division by zero")
        got.append(i)

    p = port()
    rcv(p, "n", handler)
    mon(p, col)
    for i in range(n):
        snd(p, "n", i)
    assert col.wait_one() == ZERO_DIV
    assert got == list(range(1234))  # a prefix: delivered in order up to the death

    q_got = []

    def body():
        while True:
            q_got.append(receive("n")[0])

    q = spawn(body)
    mon(q, col)
    for i in range(n):
        snd(q, "n", i)
    wait_until(lambda: len(q_got) == n)
    assert q_got == list(range(n))
    assert len(col) == 1  # the monitor of q did not fire
    kil(q)


# --------------------------------------------------------------------------- guards


def test_mon_guard_cancel_stops_monitoring():
    """docs/api.md#monitoring: "Returns a guard; cancelling it ... stops monitoring." (cancel)."""
    col = Collector()
    sentinel = Collector()
    p = port()
    g = mon(p, col)
    mon(p, sentinel)
    assert g.active
    g.cancel()
    assert not g.active
    kil(p, "x")
    assert sentinel.wait_one() == ("x",)
    flush()
    assert col.items == []


def test_mon_guard_cancel_after_death_before_firing():
    """docs/api.md#monitoring: "Returns a guard; cancelling it ... stops monitoring." -- also when
    the port already died but the monitor (which fires in a fresh greenlet) has not run yet."""
    col = Collector()
    sentinel = Collector()
    p = port()
    g = mon(p, col)
    mon(p, sentinel)
    kil(p, "x")
    g.cancel()  # the firing is scheduled, not done: nothing may reach col
    assert sentinel.wait_one() == ("x",)
    flush()
    assert col.items == []


def test_mon_kept_guard_dropped_keeps_monitoring():
    """docs/api.md#guards: "Dropping a guard undoes nothing" (a deliberate departure from AEMP
    2.02, aemp_green/_guard.py): only cancel() or a with block stop it."""
    col = Collector()
    sentinel = Collector()
    p = port()
    g = mon(p, col)
    mon(p, sentinel)
    del g
    gc.collect()
    kil(p, "x")
    assert sentinel.wait_one() == ("x",)
    flush()
    assert col.items == [("x",)]


def test_mon_bare_statement_keeps_monitoring():
    """docs/api.md#monitoring "Returns a guard" + the AEMP rule: a bare statement `mon(p, cb)`
    (result not kept) monitors until the port dies."""
    col = Collector()
    p = port()
    mon(p, col)
    gc.collect()
    kil(p, "still", "watched")
    assert col.wait_one() == ("still", "watched")


def test_mon_with_block_cancels_at_exit():
    """docs/api.md#monitoring: "Returns a guard; cancelling it ... stops monitoring." -- `with
    mon(...)` cancels at the end of the block."""
    col = Collector()
    sentinel = Collector()
    p = port()
    q = port()
    with mon(p, col) as g:
        assert g.active
        with mon(q, col):
            kil(q, "inside")
            assert col.wait_one() == ("inside",)
    assert not g.active
    mon(p, sentinel)
    kil(p, "outside")
    sentinel.wait_one()
    flush()
    assert col.items == [("inside",)]


def test_mon_guard_keeps_objects_alive_until_port_dies():
    """docs/api.md#monitoring: "`mon_guard(port, *objs)` keeps objects alive until the port
    dies."."""

    class Obj:
        pass

    sentinel = Collector()
    p = port()
    o1, o2 = Obj(), Obj()
    w1, w2 = weakref.ref(o1), weakref.ref(o2)
    mon_guard(p, o1, o2)
    del o1, o2
    gc.collect()
    alive = w1() is not None and w2() is not None
    assert alive, "mon_guard did not keep its objects alive"
    mon(p, sentinel)
    kil(p)
    sentinel.wait_one()
    flush()
    gc.collect()
    released = w1() is None and w2() is None
    assert released, "mon_guard kept its objects after the port died"


def test_mon_guard_cancelled_guard_releases():
    """docs/api.md#monitoring: "`mon_guard(port, *objs)` keeps objects alive until the port dies."
    -- or until its guard is cancelled (dropping it releases nothing: aemp_green/_guard.py)."""

    class Obj:
        pass

    p = port()
    o = Obj()
    w = weakref.ref(o)
    g = mon_guard(p, o)
    del o
    gc.collect()
    assert w() is not None
    g2 = mon_guard(p, Obj())
    w2 = weakref.ref(g2)
    del g2
    gc.collect()
    assert w2() is None  # the guard object went, the monitor it made did not
    assert w() is not None
    g.cancel()
    gc.collect()
    assert w() is None
    assert kernel.lookup_port(p) is not None
    kil(p)


# --------------------------------------------------------------------------- spawn by name


def test_spawn_by_name_on_this_node():
    """docs/api.md#monitoring: "`spawn(node, "pkg.module.func", *args)` creates a port on another
    node (or this one) and runs `func(*args)` there with that port as SELF; it returns the new port
    ID at once."."""
    before = len(spawned_log)
    col = Collector()
    pid = spawn(NODE(), "conftest.spawned_target", 1, "two")
    assert node_of(pid) == NODE() and re.fullmatch(r"[A-Za-z0-9]+", pid.partition("#")[2])
    mon(pid, col)
    assert col.wait_one() == ()  # the function returned: a normal exit
    assert spawned_log[before:] == [(pid, (1, "two"))]


def test_spawn_by_name_longest_module_prefix_and_perl_names():
    """docs/api.md#monitoring: "The remote function is resolved by importing the longest importable
    module prefix. AEMP-style names `Pkg::Sub::func` map to `Pkg.Sub.func`."."""
    before = len(spawned_log)
    col = Collector()
    a = spawn(NODE(), "conftest.Targets.run", "x")
    b = spawn(NODE(), "conftest::Targets::run", "y")
    c = spawn(NODE() + "#", "conftest::spawned_target")
    for pid in (a, b, c):
        mon(pid, col)
    assert col.wait(3) == [(), (), ()]
    assert sorted(spawned_log[before:]) == sorted(
        [(a, ("Targets.run", "x")), (b, ("Targets.run", "y")), (c, ())]
    )


def test_spawn_by_name_unknown_function_kills_port():
    """docs/api.md#monitoring: "`spawn(node, "pkg.module.func", *args)`" -- a name that does not
    resolve gives a dead port (its monitor fires)."""
    col = Collector()
    pid = spawn(NODE(), "conftest.no_such_function")
    mon(pid, col)
    reason = col.wait_one()
    assert reason[0] in ("die", "no_such_port"), reason
    assert kernel.lookup_port(pid) is None


@pytest.fixture
def secure_node():
    """Temporarily mark this node `secure` (restored afterwards)."""
    old = kernel.secure_mode
    kernel.set_secure(True)
    try:
        yield
    finally:
        kernel.set_secure(old)


def test_spawn_request_refused_on_secure_node(secure_node, caplog):
    """docs/api.md#monitoring: "Refused on nodes configured `secure`." -- a spawn request from
    another node."""
    before = len(spawned_log)
    name = "securetest" + kernel.base62(12345)
    kernel.node_request("other/node", ["AnyEvent::MP::_spawn", name, "conftest.spawned_target"])
    flush()
    assert kernel.local_port_by_name(name) is None
    assert spawned_log[before:] == []
    assert any("secure" in r.getMessage() for r in caplog.records)


def test_spawn_request_accepted_when_not_secure():
    """docs/api.md#monitoring: "`spawn(node, "pkg.module.func", *args)` creates a port on another
    node" -- the node-port request a remote node sends (the counterpart of the secure test)."""
    before = len(spawned_log)
    name = "reqtest" + kernel.base62(54321)
    kernel.node_request("other/node", ["AnyEvent::MP::_spawn", name, "conftest.spawned_target", 7])
    wait_until(lambda: len(spawned_log) > before)
    assert spawned_log[before:] == [(NODE() + "#" + name, (7,))]
