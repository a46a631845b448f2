"""Ports and messages: snd, port, rcv, spawn, kil, psub, peval, after
(docs/api.md#ports-and-messages)."""

import gevent
import pytest
from greenlet import getcurrent

from aemp_green import NODE, SELF, after, kil, mon, peval, port, psub, rcv, receive, snd, spawn
from aemp_green import kernel, set_crash_handler
from conftest import Collector, flush, run_in_port, wait_until

ZERO_DIV = ("die", "ZeroDivisionError: division by zero")


def watch(p):
    """A collector that gets the kill reason of ``p`` (kept in ``col.guard``)."""
    col = Collector()
    col.guard = mon(p, col)
    return col


# --------------------------------------------------------------------------- snd


def test_snd_never_raises_for_unknown_or_dead_ports():
    """docs/api.md#ports-and-messages: "`snd(port, tag, *args)`: asynchronous, never raises for
    unknown or dead ports." -- unknown local name, dead local port, unknown node, node without
    name."""
    p = port(lambda *m: None)
    kil(p)
    snd(p, "to", "dead")
    snd(NODE() + "#nosuchport", "x")
    snd("no-such-node/abc#def", "x", 1)
    snd("no-such-node/abc", "x", 1)
    g = spawn(lambda: None)
    wait_until(lambda: kernel.lookup_port(g) is None)
    snd(g, "to", "dead greenlet port")


def test_snd_does_not_block():
    """docs/api.md#ports-and-messages: "`snd` ... asynchronous ... It returns at once" -- to a
    greenlet port that is not receiving, 1,000 sends return at once (before the port even
    starts)."""
    col = Collector()

    def body():
        col(len([receive() for _ in range(1000)]))

    g = spawn(body)
    for i in range(1000):
        snd(g, "m", i)
    assert len(col) == 0  # the port has not run yet: the sends did not switch to it
    assert col.wait_one() == (1000,)


@pytest.mark.parametrize("kind", ["callback", "greenlet"])
def test_order_from_one_sender_kept(kind):
    """docs/api.md#ports-and-messages: "Messages to one port from one sender arrive in order." --
    10,000 numbered messages, both kinds of port."""
    n = 10_000
    col = Collector()
    if kind == "callback":
        got = []
        p = port(lambda tag, i: got.append(i) if len(got) + 1 < n else col(got + [i]))
    else:

        def body():
            col([receive("n")[0] for _ in range(n)])

        p = spawn(body)
    for i in range(n):
        snd(p, "n", i)
    (got,) = col.wait_one()
    assert got == list(range(n))
    kil(p)


def test_local_sends_are_not_copied():
    """docs/api.md#ports-and-messages: "Local sends are not copied." and "A message is a list; the
    first element is conventionally a string tag. Values are what JSON/CBOR carry"."""
    col = Collector()
    p = col.port()
    payload = {"k": [1, 2.5, True, None, "s"]}
    snd(p, "data", payload, b"bytes")
    tag, got, raw = col.wait_one()
    assert tag == "data" and got is payload and raw == b"bytes"
    kil(p)


# --------------------------------------------------------------------------- port(), rcv()


def test_port_without_handler_dies_on_first_message():
    """docs/api.md#ports-and-messages: "A message that no handler matches kills the port with reason
    `("unhandled_message", "no callback found for message '<tag>'")`"."""
    p = port()
    assert kernel.lookup_port(p) is not None
    w = watch(p)
    snd(p, "hello", 1)
    assert w.wait_one() == ("unhandled_message", "no callback found for message 'hello'")
    assert kernel.lookup_port(p) is None


def test_port_catch_all_gets_whole_message():
    """docs/api.md#ports-and-messages: "`port(cb)` -> port whose catch-all handler is `cb(*msg)`"
    (tag included)."""
    col = Collector()
    p = port(col)
    snd(p, "tag", 1, [2, 3])
    snd(p, "other")
    assert col.wait(2) == [("tag", 1, [2, 3]), ("other",)]
    kil(p)


def test_rcv_tag_handlers_get_args_after_tag():
    """docs/api.md#ports-and-messages: "`rcv(port, tag, cb, [tag2, cb2, ...])` sets tag handlers
    (exact match on element 0; the handler gets the rest)"."""
    col = Collector()
    p = port()
    assert rcv(p, "a", lambda *a: col("a", a), "b", lambda *a: col("b", a)) == p
    snd(p, "a", 1, 2)
    snd(p, "b")
    assert col.wait(2) == [("a", (1, 2)), ("b", ())]
    # exact match: "ab" is not "a", 1 is not "1"
    rcv(p, lambda *m: col("default", m))
    snd(p, "ab", 3)
    snd(p, 1, 4)
    rcv(p, 1, lambda *a: col("int", a))
    snd(p, 1, 5)
    assert col.wait(5)[2:] == [("default", ("ab", 3)), ("default", (1, 4)), ("int", (5,))]
    kil(p)


def test_rcv_catch_all_set_later_and_tag_priority():
    """docs/api.md#ports-and-messages: "`rcv(port, cb)` sets the catch-all" -- tag handlers win, the
    rest goes to it."""
    col = Collector()
    p = port()
    rcv(p, lambda *m: col("all", m))
    rcv(p, "t", lambda *a: col("t", a))
    snd(p, "t", 1)
    snd(p, "u", 2)
    assert col.wait(2) == [("t", (1,)), ("all", ("u", 2))]
    kil(p)


def test_rcv_tag_none_removes_handler():
    """docs/api.md#ports-and-messages: "`cb=None` removes the handler." (tag handler)."""
    col = Collector()
    p = port()
    rcv(p, "a", col, "b", col)
    rcv(p, "a", None)
    w = watch(p)
    snd(p, "b", 1)
    snd(p, "a", 2)
    assert w.wait_one() == ("unhandled_message", "no callback found for message 'a'")
    assert col.items == [(1,)]


def test_rcv_none_removes_catch_all():
    """docs/api.md#ports-and-messages: "`cb=None` removes the handler." (catch-all: `rcv(p,
    None)`)."""
    col = Collector()
    p = port(col)
    rcv(p, None)
    w = watch(p)
    snd(p, "x")
    assert w.wait_one() == ("unhandled_message", "no callback found for message 'x'")
    assert col.items == []


def test_rcv_on_remote_or_dead_port_raises():
    """docs/api.md#ports-and-messages: "Local ports only." -- rcv on a remote port ID raises
    ValueError."""
    with pytest.raises(ValueError):
        rcv("other/node#abc", lambda *m: None)
    with pytest.raises(ValueError):
        rcv("other/node#abc", "tag", lambda *m: None)
    p = port()
    kil(p)
    with pytest.raises(ValueError):
        rcv(p, lambda *m: None)


def test_handler_exception_kills_port_and_reports_the_crash():
    """docs/api.md#ports-and-messages: "An exception in a handler kills the port with `("die",
    "<message>")`." -- and the crash is reported once, with the port, the message tag and the
    traceback (aemp_green._report; stderr by default)."""
    reports = []
    old = set_crash_handler(reports.append)
    try:
        after_col = Collector()
        p = port()
        rcv(p, "boom", lambda: 1 / 0, "after", after_col)
        w = watch(p)
        snd(p, "boom")
        snd(p, "after")
        assert w.wait_one() == ZERO_DIV
        flush()
    finally:
        set_crash_handler(old)
    assert after_col.items == []  # a dead port gets nothing more
    assert len(reports) == 1, reports
    r = reports[0]
    assert (r.what, r.port, r.tag, type(r.exc)) == ("callback port", p, "boom", ZeroDivisionError)
    assert r.text.startswith(
        "aemp_green: port %s died (callback port, handling a message tagged 'boom')\nTraceback" % p
    )
    assert r.text.rstrip().endswith("ZeroDivisionError: division by zero")


# --------------------------------------------------------------------------- kil


def test_kil_normal_gives_monitors_no_args():
    """docs/api.md#ports-and-messages: "`kil(port, *reason)` ... No reason = normal exit"."""
    p = port()
    w = watch(p)
    kil(p)
    assert w.wait_one() == ()
    assert kernel.lookup_port(p) is None


def test_kil_with_reason():
    """docs/api.md#ports-and-messages: "`kil(port, *reason)` ... any reason = crash." -- monitors
    get the reason."""
    p = port()
    w = watch(p)
    kil(p, "a", 1)
    assert w.wait_one() == ("a", 1)


def test_kil_nonexistent_port_is_fine():
    """docs/api.md#ports-and-messages: "Killing a nonexistent port is fine." (local and remote)."""
    kil(NODE() + "#doesnotexist")
    kil(NODE() + "#doesnotexist", "with", "reason")
    kil("unknown-node/x#abc", "r")
    p = port()
    kil(p)
    kil(p)


def test_kil_node_port_is_an_error():
    """docs/api.md#ports-and-messages: "Killing a node port is an error."."""
    with pytest.raises(ValueError):
        kil(NODE())
    with pytest.raises(ValueError):
        kil(NODE() + "#")
    with pytest.raises(ValueError):
        kil(NODE() + "#", "reason")
    assert kernel.port_table.get(NODE()) is not None  # the node port still answers
    col = Collector()
    p = col.port()
    snd(NODE(), "snd", p, "still", "alive")
    assert col.wait_one() == ("still", "alive")
    kil(p)


# --------------------------------------------------------------------------- greenlet ports


def test_greenlet_port_return_kills_normally():
    """docs/api.md#ports-and-messages: "When `fn` returns, the port is killed normally"."""
    g = spawn(lambda: None)
    w = watch(g)
    assert w.wait_one() == ()
    assert kernel.lookup_port(g) is None


def test_greenlet_port_raise_kills_with_die():
    """docs/api.md#ports-and-messages: "when it raises, the port is killed with `("die", ...)`." --
    reported once."""
    reports = []
    old = set_crash_handler(reports.append)
    try:
        g = spawn(lambda: 1 / 0)
        w = watch(g)
        assert w.wait_one() == ZERO_DIV
    finally:
        set_crash_handler(old)
    assert [(r.what, r.port, type(r.exc)) for r in reports] == [
        ("greenlet port", g, ZeroDivisionError)
    ]


def test_greenlet_port_killed_while_blocked_in_receive():
    """docs/api.md#ports-and-messages: "`receive(...)` blocks that greenlet only" + "`kil(port,
    *reason)`" -- a greenlet port killed from outside stops (its finally: runs) and monitors get the
    reason."""
    col = Collector()

    def body():
        try:
            col("blocked")
            receive("never")
            col("returned from receive")
        finally:
            col("finally")

    g = spawn(body)
    w = watch(g)
    col.wait_one()
    kil(g, "stop", 7)
    assert w.wait_one() == ("stop", 7)
    wait_until(lambda: ("finally",) in col.items)
    assert col.items == [("blocked",), ("finally",)]


def test_greenlet_port_killed_before_start_never_runs():
    """docs/api.md#ports-and-messages: "`kil(port, *reason)`: kill a port" -- also a greenlet port
    that has not run."""
    col = Collector()
    g = spawn(col, "ran")
    w = watch(g)
    kil(g, "early")
    assert w.wait_one() == ("early",)
    flush()
    assert col.items == []


def test_greenlet_port_kills_itself_stops_at_once():
    """docs/api.md#ports-and-messages: "`kil(port, *reason)`" -- kil(SELF(), "x") in a greenlet port
    stops it at once: code after kil does not run."""
    col = Collector()

    def body():
        col("before")
        kil(SELF(), "x")
        col("after kil")

    g = spawn(body)
    w = watch(g)
    assert w.wait_one() == ("x",)
    flush()
    assert col.items == [("before",)]


def test_spawned_function_setting_rcv_lives_on_as_callback_port():
    """docs/api.md#ports-and-messages: "Greenlet ports ... `spawn(fn, *args)`" with AEMP style: fn
    sets rcv handlers and returns; the port lives on and handles later messages."""
    col = Collector()

    def body():
        rcv(SELF(), "ping", lambda x: col("ping", x, SELF()))

    g = spawn(body)
    w = watch(g)
    flush()
    assert kernel.lookup_port(g) is not None
    snd(g, "ping", 1)
    snd(g, "ping", 2)
    assert col.wait(2) == [("ping", 1, g), ("ping", 2, g)]
    assert len(w) == 0
    snd(g, "unknown")
    assert w.wait_one() == ("unhandled_message", "no callback found for message 'unknown'")


def test_spawned_function_rcv_handles_queued_messages_in_order():
    """docs/api.md#ports-and-messages: "Messages to one port from one sender arrive in order." --
    messages queued in a greenlet port's mailbox before it calls rcv(SELF(), cb) and returns are
    handled in order."""
    col = Collector()

    def body():
        receive("go")  # 0..4 are queued in front of "go": receive skips them, they stay
        rcv(SELF(), lambda *m: col(m[0]))

    g = spawn(body)
    for i in range(5):
        snd(g, i)
    snd(g, "go")
    assert [i for (i,) in col.wait(5)] == [0, 1, 2, 3, 4]
    kil(g)


def test_rcv_on_greenlet_port_takes_matching_messages():
    """docs/api.md#ports-and-messages: "`rcv(port, tag, cb ...)` sets tag handlers" -- on a greenlet
    port, a message with a handler runs it; the rest stays for receive()."""
    col = Collector()

    def body():
        rcv(SELF(), "h", lambda x: col("handler", x))
        col("ready")
        col("received", receive("r")[0])
        receive("never")

    g = spawn(body)
    col.wait_one()
    snd(g, "h", 1)
    snd(g, "r", 2)
    snd(g, "h", 3)
    items = col.wait(4)[1:]
    assert sorted(items) == sorted([("handler", 1), ("received", 2), ("handler", 3)])
    assert [i for i in items if i[0] == "handler"] == [("handler", 1), ("handler", 3)]
    kil(g)


# --------------------------------------------------------------------------- psub, peval


def test_psub_exception_kills_the_port():
    """docs/api.md#ports-and-messages: "`psub(fn)`: wrap `fn` so that it later runs in the current
    port's context (exceptions kill that port)"."""

    def body():
        after(0.001, psub(lambda: 1 / 0))
        receive("never")

    g = spawn(body)
    w = watch(g)
    assert w.wait_one() == ZERO_DIV

    p = port()
    cb = peval(p, psub, lambda: {}["missing"])
    w2 = watch(p)
    assert cb() is None
    assert w2.wait_one() == ("die", "KeyError: 'missing'")


def test_psub_passes_args_and_restores_context():
    """docs/api.md#ports-and-messages: "`psub(fn)`: wrap `fn` so that it later runs in the current
    port's context"."""
    p = port()
    wrapped = peval(p, psub, lambda *a, **kw: (SELF(), a, kw))

    def outside():
        r = wrapped(1, k=2)
        with pytest.raises(RuntimeError):
            SELF()  # context restored after the call
        return r

    assert gevent.spawn(outside).get(timeout=5) == (p, (1,), {"k": 2})
    kil(p)


def test_psub_outside_port_context_raises():
    """docs/api.md#ports-and-messages: "`psub(fn)`: ... the current port's context" -- there must be
    one."""

    def body():
        with pytest.raises(RuntimeError):
            psub(lambda: None)
        return True

    assert gevent.spawn(body).get(timeout=5)


def test_peval_runs_now_in_port_context():
    """docs/api.md#ports-and-messages: "`peval(port, fn, *args)`: run now in `port`'s context." --
    returns fn's result."""
    p = port()
    ran = []
    assert peval(p, lambda a, b: (ran.append(1), SELF(), a + b)[1:], 2, 3) == (p, 5)
    assert ran == [1]  # synchronously
    kil(p)
    with pytest.raises(ValueError):
        peval(p, lambda: None)


def test_peval_exception_kills_port():
    """docs/api.md#ports-and-messages: "`peval(port, fn, *args)`" -- an exception kills that
    port."""
    p = port()
    w = watch(p)
    assert peval(p, lambda: 1 / 0) is None
    assert w.wait_one() == ZERO_DIV


# --------------------------------------------------------------------------- after


def test_after_sends_to_port():
    """docs/api.md#ports-and-messages: "`after(seconds, port_or_callable, *msg)`: one-shot timer
    sending `msg`"."""
    col = Collector()
    p = col.port()
    after(0.01, p, "tick", 1)
    assert col.wait_one() == ("tick", 1)
    kil(p)


def test_after_calls_callable_in_a_fresh_greenlet():
    """docs/api.md#ports-and-messages: "`after(seconds, port_or_callable, *msg)`: one-shot timer ...
    calling the callable"."""
    col = Collector()
    after(0.01, lambda: col("called", getcurrent()))
    ((_, g),) = col.wait(1)
    assert g is not getcurrent()
    with pytest.raises(TypeError):
        after(0.01, lambda: None, "no message for callables")


def test_after_guard_cancelled_does_nothing_dropped_still_fires():
    """docs/api.md#ports-and-messages: "`after(...)`: one-shot timer" + guards
    (aemp_green/_guard.py): a cancelled `after` guard stops the timer; a dropped one does not."""
    col = Collector()
    p = col.port()
    g1 = after(0.01, p, "cancelled")
    g2 = after(0.01, lambda: col("cancelled callable"))
    g3 = after(0.01, p, "dropped")
    g1.cancel()
    g2.cancel()
    del g3
    after(0.05, p, "sentinel")
    assert col.wait(2) == [("dropped",), ("sentinel",)]
    flush()
    assert col.items == [("dropped",), ("sentinel",)]
    kil(p)


# --------------------------------------------------------------------------- no recursion


@pytest.mark.slow
def test_million_messages_bounced_between_callback_ports():
    """docs/api.md#ports-and-messages: "`snd(port, tag, *args)`: asynchronous" -- 1,000,000 messages
    bounced between two callback ports run as a loop (no RecursionError), every one counted."""
    n = 1_000_000
    count = [0]
    done = Collector()
    ports = {}

    def bounce(who):
        def h(i):
            count[0] += 1
            if i < n:
                snd(ports[who], "b", i + 1)
            else:
                done(i)

        return h

    a = port()
    b = port()
    ports["a"], ports["b"] = b, a  # a sends to b and b to a
    rcv(a, "b", bounce("a"))
    rcv(b, "b", bounce("b"))
    w = watch(a)
    snd(a, "b", 1)
    assert done.wait_one(timeout=30) == (n,)
    assert count[0] == n
    assert len(w) == 0
    kil(a)
    kil(b)


def test_callback_port_sending_to_itself_in_a_loop():
    """docs/api.md#ports-and-messages: "Messages to one port from one sender arrive in order." --
    200,000 sends to itself from one handler: no RecursionError, all handled in order."""
    n = 200_000
    got = []
    done = Collector()

    def start():
        me = SELF()
        for i in range(n):
            snd(me, "n", i)

    def on_n(i):
        got.append(i)
        if i == n - 1:
            done(len(got))

    p = port()
    rcv(p, "start", start, "n", on_n)
    w = watch(p)
    snd(p, "start")
    assert done.wait_one(timeout=30) == (n,)
    assert got == list(range(n))
    assert len(w) == 0
    kil(p)


def test_greenlet_port_sending_to_itself_then_receiving():
    """docs/api.md#ports-and-messages: "selective receive: unmatched messages stay queued, in order"
    -- 100,000 sends to itself, then 100,000 receives, in order."""
    n = 100_000

    def body():
        me = SELF()
        for i in range(n):
            snd(me, "n", i)
        return [receive("n")[0] for _ in range(n)]

    assert run_in_port(body, timeout=30) == list(range(n))
