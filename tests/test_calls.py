"""Calls: ``cal`` (callback form) and ``call`` (blocking form) (docs/api.md#calls)."""

import time

import gevent
import pytest

import aemp_green
from aemp_green import (
    NODE,
    PortDied,
    Timeout,
    cal,
    call,
    kil,
    mon,
    port,
    port_is_local,
    rcv,
    receive,
    snd,
    spawn,
)
from aemp_green import kernel
from conftest import Collector, flush, run_in_greenlet, run_in_port, wait_until


def adder():
    """A callback server: ("add", a, b, reply) -> reply gets ("sum", a + b)."""
    p = port()
    rcv(p, "add", lambda a, b, reply: snd(reply, "sum", a + b))
    return p


def greenlet_server():
    """A greenlet server: ("echo", x, reply) -> ("echoed", x, SELF()); ("die", *r) -> kil."""

    def body():
        while True:
            msg = receive()
            if msg[0] == "echo":
                snd(msg[-1], "echoed", msg[1], aemp_green.SELF())
            elif msg[0] == "die":
                kil(aemp_green.SELF(), *msg[1:-1])
            elif msg[0] == "return":
                return

    return spawn(body)


# --------------------------------------------------------------------------- cal


def test_cal_sends_msg_plus_reply_port_and_calls_back():
    """docs/api.md#calls: "`cal(port, *msg, cb=..., timeout=...)`: sends `msg + [reply_port]` and
    calls `cb(*reply)`"."""
    col = Collector()
    srv = adder()
    r1 = cal(srv, "add", 1, 2, cb=col, timeout=5)
    r2 = cal(srv, "add", 3, 4, cb=col)
    assert port_is_local(r1) and port_is_local(r2) and r1 != r2
    assert col.wait(2) == [("sum", 3), ("sum", 7)]

    # the message really is msg + [reply_port]
    seen = Collector()
    raw = seen.port()
    reply = cal(raw, "q", 1, cb=col, timeout=5)
    assert seen.wait_one() == ("q", 1, reply)
    snd(reply, "answer", 42)
    assert col.wait(3)[2] == ("answer", 42)
    kil(srv)
    kil(raw)


def test_cal_timeout_calls_cb_without_args():
    """docs/api.md#calls: "`cal(...)` ... on timeout calls `cb()` with no arguments"."""
    col = Collector()
    silent = port(lambda *m: None)
    t0 = time.monotonic()
    reply = cal(silent, "q", cb=col, timeout=0.05)
    assert col.wait_one() == ()
    assert time.monotonic() - t0 >= 0.04
    assert kernel.lookup_port(reply) is None  # the reply port is gone
    snd(reply, "late", "answer")  # a late reply does nothing
    flush()
    assert col.items == [()]
    kil(silent)


def test_cal_reply_before_timeout_cancels_timeout():
    """docs/api.md#calls: "`cal(...)` ... calls `cb(*reply)`; on timeout calls `cb()`" -- only one
    of them."""
    col = Collector()
    sentinel = Collector()
    srv = adder()
    cal(srv, "add", 2, 2, cb=col, timeout=0.05)
    assert col.wait_one() == ("sum", 4)
    aemp_green.after(0.1, sentinel)
    sentinel.wait_one()
    assert col.items == [("sum", 4)]
    kil(srv)


def test_cal_without_timeout_monitors_callee():
    """docs/api.md#calls: "`cal(...)` ... with no timeout it monitors `port` instead." -- the callee
    dies: cb is never called and the reply port goes away (no leak in the port table)."""
    col = Collector()
    base = len(kernel.port_table)
    callee = port(lambda *m: None)
    reply = cal(callee, "q", cb=col)
    assert kernel.lookup_port(reply) is not None
    kil(callee, "gone")
    wait_until(lambda: kernel.lookup_port(reply) is None, what="reply port to die with the callee")
    flush()
    assert col.items == []
    assert len(kernel.port_table) == base


def test_cal_without_timeout_reply_port_dies_with_callee_reason():
    """docs/api.md#calls: "with no timeout it monitors `port` instead" -- the reply port dies with
    the callee's reason."""
    col = Collector()
    callee = port(lambda *m: None)
    reply = cal(callee, "q", cb=lambda *r: col("cb", r))
    mon(reply, col)
    kil(callee, "crashed", 1)
    assert col.wait_one() == ("crashed", 1)


def test_cal_without_timeout_leaves_no_monitor_on_callee():
    """docs/api.md#calls: "with no timeout it monitors `port` instead" -- only until the reply came:
    the callee's monitor list must not grow with every call."""
    col = Collector()
    srv = adder()
    for i in range(100):
        cal(srv, "add", i, 0, cb=col)
    col.wait(100)
    flush()
    assert not kernel.lookup_port(srv).monitors
    kil(srv)


# --------------------------------------------------------------------------- call


def test_call_returns_reply_list():
    """docs/api.md#calls: "Blocking form (greenlet style): `call(port, *msg, timeout=...)` returns
    the reply list"."""
    srv = adder()
    g = greenlet_server()

    def body():
        return call(srv, "add", 20, 22, timeout=5), call(g, "echo", "hi", timeout=5)

    r1, r2 = run_in_port(body)
    assert r1 == ["sum", 42] and type(r1) is list
    assert r2 == ["echoed", "hi", g]
    # also without timeout, and from the main greenlet (the test itself)
    assert call(srv, "add", 1, 1) == ["sum", 2]
    kil(srv)
    kil(g)


def test_call_timeout_raises_timeout():
    """docs/api.md#calls: "`call(...)` ... raises `aemp_green.Timeout`"."""
    silent = port(lambda *m: None)
    t0 = time.monotonic()
    with pytest.raises(Timeout):
        call(silent, "q", timeout=0.05)
    assert 0.04 <= time.monotonic() - t0 < 2
    kil(silent)


def test_call_raises_port_died_with_reason():
    """docs/api.md#calls: "`call(...)` ... raises `aemp_green.PortDied(reason)` if the callee dies
    first."."""
    g = greenlet_server()

    def body():
        with pytest.raises(PortDied) as ei:
            call(g, "die", "boom", 3, timeout=5)
        return ei.value.reason

    assert run_in_port(body) == ("boom", 3)
    assert issubclass(PortDied, aemp_green.AempError)


def test_call_raises_port_died_on_normal_exit():
    """docs/api.md#calls: "`call(...)` ... raises `aemp_green.PortDied(reason)` if the callee dies
    first." -- a normal exit gives reason ()."""
    g = greenlet_server()
    with pytest.raises(PortDied) as ei:
        call(g, "return", timeout=5)
    assert ei.value.reason == ()

    cb_port = port(lambda *m: kil(aemp_green.SELF()))
    with pytest.raises(PortDied) as ei:
        call(cb_port, "anything", timeout=5)
    assert ei.value.reason == ()


def test_call_to_nonexistent_port_raises_port_died():
    """docs/api.md#calls: "raises `aemp_green.PortDied(reason)` if the callee dies first" -- a port
    that does not exist is already dead: ("no_such_port", ...)."""
    ghost = NODE() + "#nosuchcallee"
    with pytest.raises(PortDied) as ei:
        call(ghost, "q", timeout=5)
    assert ei.value.reason == ("no_such_port", "cannot monitor nonexistent port", ghost)


def test_call_from_plain_greenlet():
    """docs/api.md#calls: "Blocking form (greenlet style): `call(port, *msg, timeout=...)`" -- from
    a plain gevent greenlet that is not a port."""
    srv = adder()

    def body():
        with pytest.raises(RuntimeError):
            aemp_green.SELF()
        r = call(srv, "add", 5, 6, timeout=5)
        with pytest.raises(RuntimeError):
            aemp_green.SELF()  # call() does not adopt the greenlet as a port
        return r

    assert run_in_greenlet(body) == ["sum", 11]
    kil(srv)


def test_hundred_concurrent_calls_get_their_own_replies():
    """docs/api.md#calls: "`call(...)` returns the reply list" -- 100 greenlets calling one greenlet
    server at once each get their own reply."""
    g = greenlet_server()
    jobs = [gevent.spawn(call, g, "echo", i, timeout=5) for i in range(100)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert [j.value for j in jobs] == [["echoed", i, g] for i in range(100)]
    kil(g)


def test_no_ports_leak_after_calls():
    """docs/api.md#calls: reply ports are temporary -- after replies, timeouts and deaths the port
    table is back to its size before."""
    srv = adder()
    silent = port(lambda *m: None)
    flush()
    base = len(kernel.port_table)
    col = Collector()
    for i in range(50):
        assert call(srv, "add", i, 1, timeout=5) == ["sum", i + 1]
        cal(srv, "add", i, 2, cb=col, timeout=5)
        cal(srv, "add", i, 3, cb=col)
    with pytest.raises(Timeout):
        call(silent, "q", timeout=0.01)
    cal(silent, "q", cb=col, timeout=0.01)
    col.wait(101)
    doomed = [port(lambda *m: None) for _ in range(5)]
    for d in doomed:
        cal(d, "q", cb=col)
    jobs = [gevent.spawn(call, d, "q") for d in doomed]
    flush()
    for d in doomed:
        kil(d, "dead")
    gevent.joinall(jobs, timeout=5)
    assert all(isinstance(j.exception, PortDied) for j in jobs)
    wait_until(
        lambda: len(kernel.port_table) == base,
        what="port table back to %d (is %d)" % (base, len(kernel.port_table)),
    )
    kil(srv)
    kil(silent)


# ---- timeouts count from the call, not from the loop's cached clock ----------------------------
# libev timers start from the loop's cached time, which stops while the hub thread runs code
# without yielding: a call(..., timeout=0.2) made after 0.3 s of such work timed out at once.

STALE = 0.3  # seconds of work without yielding before each timed call
LIMIT = 0.2  # the timeout under test (shorter than STALE)


def _after_busy_work(fn):
    """Let the loop run (its clock is fresh), block the thread for STALE seconds without
    yielding, then return ``(elapsed, result or exception)`` of ``fn()``."""
    gevent.sleep(0.01)  # a loop iteration that polls: the loop's clock is fresh
    time.sleep(STALE)  # plain time.sleep: the hub does not run meanwhile
    t0 = time.monotonic()
    try:
        out = fn()
    except Exception as exc:  # the timeout under test
        out = exc
    return time.monotonic() - t0, out


@pytest.mark.parametrize("where", ["main greenlet", "greenlet port"])
def test_timeouts_count_from_the_call_after_work_that_did_not_yield(where):
    """Regression: call, cal, receive, receive_match and after waited LIMIT from the loop's
    cached time, so after STALE seconds of work they fired at once (call: after 0.2 ms)."""
    silent = port(lambda *m: None)
    run = (lambda fn, *a: fn(*a)) if where == "main greenlet" else run_in_port
    try:
        took, out = run(_after_busy_work, lambda: call(silent, "q", timeout=LIMIT))
        assert isinstance(out, aemp_green.Timeout) and took >= LIMIT * 0.9, ("call", took)

        took, _ = run(_after_busy_work, lambda: receive("never", timeout=LIMIT))
        assert took >= LIMIT * 0.9, ("receive", took)

        took, _ = run(
            _after_busy_work, lambda: aemp_green.receive_match(lambda m: False, timeout=LIMIT)
        )
        assert took >= LIMIT * 0.9, ("receive_match", took)

        col = Collector()

        def cal_and_wait():
            cal(silent, "q", cb=col, timeout=LIMIT)
            return col.wait_one(timeout=5)

        took, out = run(_after_busy_work, cal_and_wait)
        assert out == () and took >= LIMIT * 0.9, ("cal", took)

        fired = Collector()

        def after_and_wait():
            aemp_green.after(LIMIT, lambda: fired())
            return fired.wait_one(timeout=5)

        took, out = run(_after_busy_work, after_and_wait)
        assert took >= LIMIT * 0.9, ("after", took)
    finally:
        kil(silent)
