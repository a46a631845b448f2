"""Blocking receive in greenlet ports and plain greenlets (docs/api.md#ports-and-messages)."""

import time

import gevent
import pytest
from greenlet import getcurrent

import aemp_green
from aemp_green import SELF, Timeout, kil, port_is_local, receive, receive_match, snd, spawn
from aemp_green import kernel
from conftest import Collector, run_in_port, wait_until


def test_receive_tag_returns_args_without_tag():
    """docs/api.md#ports-and-messages: "`receive(tag=None, timeout=None)` ... returning the first
    queued message whose tag matches, as a list without its tag"."""

    def body():
        snd(SELF(), "t", 1, [2], {"x": 3})
        snd(SELF(), "empty")
        return receive("t"), receive("empty")

    assert run_in_port(body) == ([1, [2], {"x": 3}], [])


def test_receive_without_tag_returns_whole_message():
    """docs/api.md#ports-and-messages: "`receive()` with no tag returns the whole message as a list,
    tag included."."""

    def body():
        snd(SELF(), "t", 1, 2)
        r = receive()
        return r, type(r)

    assert run_in_port(body) == (["t", 1, 2], list)


def test_selective_receive_keeps_unmatched_in_order():
    """docs/api.md#ports-and-messages: "selective receive: unmatched messages stay queued, in
    order." -- send a,b,c,d; receive("c") then receive() x3 gives a, b, d."""

    def body():
        for t in "abcd":
            snd(SELF(), t)
        return [receive("c")] + [receive() for _ in range(3)]

    assert run_in_port(body) == [[], ["a"], ["b"], ["d"]]


def test_selective_receive_while_blocked():
    """docs/api.md#ports-and-messages: "`receive(tag=None, timeout=None)` blocks that greenlet only
    ... unmatched messages stay queued" -- messages that arrive while the port waits for another tag
    are kept, in order."""
    col = Collector()

    def body():
        col("waiting")
        got = receive("wanted")
        col("got", got, [receive(timeout=1) for _ in range(3)])

    g = spawn(body)
    col.wait_one()
    snd(g, "x", 1)
    snd(g, "y", 2)
    snd(g, "wanted", 0)
    snd(g, "x", 3)
    assert col.wait(2)[1] == ("got", [0], [["x", 1], ["y", 2], ["x", 3]])


def test_receive_timeout_raises_timeout():
    """docs/api.md#ports-and-messages: "On timeout it raises `aemp_green.Timeout`." -- and unmatched
    messages stay."""

    def body():
        snd(SELF(), "other", 1)
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            receive("nothing", timeout=0.05)
        elapsed = time.monotonic() - t0
        with pytest.raises(Timeout):
            receive("nothing", timeout=0)
        return elapsed, receive()

    elapsed, rest = run_in_port(body)
    assert 0.04 <= elapsed < 2
    assert rest == ["other", 1]
    assert issubclass(Timeout, aemp_green.AempError)


def test_receive_blocks_only_its_greenlet():
    """docs/api.md#ports-and-messages: "`receive(...)` blocks that greenlet only" -- others keep
    running meanwhile."""
    col = Collector()
    g = spawn(lambda: col("woke", receive("wake")))
    spawn(lambda: col("other ran"))
    assert col.wait_one() == ("other ran",)
    snd(g, "wake", 1)
    assert col.wait(2)[1] == ("woke", [1])


def test_receive_match_returns_whole_message_keeps_others():
    """docs/api.md#ports-and-messages: "`receive_match(pred, timeout)` takes a predicate." --
    returns the whole message; unmatched ones stay queued, in order."""

    def body():
        for i in range(5):
            snd(SELF(), "n", i)
        m = receive_match(lambda msg: msg[0] == "n" and msg[1] == 3, timeout=1)
        return m, [receive() for _ in range(4)]

    m, rest = run_in_port(body)
    assert m == ["n", 3]
    assert rest == [["n", 0], ["n", 1], ["n", 2], ["n", 4]]


def test_receive_match_waits_for_later_message():
    """docs/api.md#ports-and-messages: "`receive_match(pred, timeout)`" -- blocks until a matching
    message arrives."""
    col = Collector()

    def body():
        col("waiting")
        col(receive_match(lambda m: m[-1] == "yes", timeout=5), receive())

    g = spawn(body)
    col.wait_one()
    snd(g, "a", "no")
    snd(g, "b", "yes")
    assert col.wait(2)[1] == (["b", "yes"], ["a", "no"])


def test_receive_match_timeout():
    """docs/api.md#ports-and-messages: "`receive_match(pred, timeout)` ... On timeout it raises
    `aemp_green.Timeout`."."""

    def body():
        snd(SELF(), "x")
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            receive_match(lambda m: False, timeout=0.05)
        return time.monotonic() - t0, receive(timeout=1)

    elapsed, rest = run_in_port(body)
    assert 0.04 <= elapsed < 2
    assert rest == ["x"]


def test_main_greenlet_can_receive():
    """docs/api.md#ports-and-messages: "The main greenlet of a script can receive too: it gets a
    port of its own on first use." (pytest runs the test in the main greenlet)."""
    assert getcurrent().parent is None
    with pytest.raises(Timeout):
        receive("nothing-for-main", timeout=0)
    me = SELF()
    assert port_is_local(me) and kernel.lookup_port(me) is not None
    helper = spawn(lambda: snd(me, "from", SELF()))
    assert receive("from", timeout=5) == [helper]
    assert SELF() == me


def test_plain_greenlet_receive_and_port_ends_with_it():
    """docs/api.md#ports-and-messages: "... can receive too: it gets a port of its own on first
    use." (plain greenlet)."""
    col = Collector()

    def body():
        with pytest.raises(RuntimeError):
            SELF()
        with pytest.raises(Timeout):
            receive(timeout=0)
        col(SELF())
        return receive("reply", timeout=5)

    g = gevent.spawn(body)
    (me,) = col.wait_one()
    snd(me, "reply", "ok")
    assert g.get(timeout=5) == ["ok"]
    wait_until(lambda: kernel.lookup_port(me) is None)


def test_receive_in_callback_handler_is_refused():
    """docs/api.md#ports-and-messages: "inside it `receive(...)` blocks that greenlet only" -- only
    greenlet ports and plain greenlets can block; inside a callback handler receive raises (and
    kills the port)."""
    col = Collector()
    p = aemp_green.port()
    aemp_green.rcv(p, "go", lambda: receive("x", timeout=1))
    aemp_green.mon(p, col)
    snd(p, "go")
    reason = col.wait_one()
    assert reason[0] == "die" and reason[1].startswith(
        "BlockingInHandlerError: receive() inside the callback handler of " + p
    )


def test_call_in_callback_handler_raises_at_once_naming_the_fix():
    """A call from a handler to another callback port never returned (the reply is dispatched
    only after the handler returns): it raises at once, saying why and what to do."""
    from aemp_green import BlockingInHandlerError

    server = aemp_green.port()
    aemp_green.rcv(server, "ping", lambda reply: snd(reply, "pong"))
    errors = Collector()

    def handler():
        try:
            aemp_green.call(server, "ping", timeout=5)
        except BlockingInHandlerError as exc:
            errors(str(exc))

    p = aemp_green.port()
    aemp_green.rcv(p, "go", handler)
    snd(p, "go")
    (text,) = errors.wait_one()
    assert text.startswith(
        "call() inside the callback handler of %s: callback handlers run on "
        "the node's dispatcher and must not block" % p
    )
    assert "spawn(fn, *args)" in text and "docs/tutorial.md" in text
    assert isinstance(BlockingInHandlerError("x"), RuntimeError)


def test_receive_result_is_fresh_list():
    """docs/api.md#ports-and-messages: "returning ... as a list" -- always a list, never the
    internal tuple."""

    def body():
        snd(SELF(), "a", 1)
        snd(SELF(), "b", 2)
        snd(SELF(), "c", 3)
        return receive("a"), receive(), receive_match(lambda m: True)

    assert [type(x) for x in run_in_port(body)] == [list, list, list]


def test_many_greenlets_receive_independently():
    """docs/api.md#ports-and-messages: "`receive` ... blocks that greenlet only" -- 200 greenlet
    ports each get their own message."""
    col = Collector()
    ports = [spawn(lambda i=i: col(i, receive("v")[0])) for i in range(200)]
    for i, g in enumerate(ports):
        snd(g, "v", i * 10)
    assert sorted(col.wait(200)) == [(i, i * 10) for i in range(200)]
    wait_until(lambda: all(kernel.lookup_port(g) is None for g in ports))
    for g in ports:
        kil(g)
