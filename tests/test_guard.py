"""Guards: cancel and ``with`` undo; dropping undoes nothing (docs/api.md#guards: "Dropping a
guard undoes nothing", a deliberate departure from AEMP 2.02, which undoes a kept guard when it is
destroyed: then ``g = mon(p, cb)`` at the end of a function silently stopped monitoring), and the
`after` timer guard."""

import gc

import pytest

from aemp_green import Guard, after, kil, mon, peval, port, rcv, snd
from aemp_green import kernel
from conftest import Collector, flush


def make_guard(kept=None):
    calls = []
    return Guard(lambda: calls.append(1)), calls


# --------------------------------------------------------------------------- the Guard object


def test_cancel_runs_undo_once():
    """docs/api.md#monitoring: "Returns a guard; cancelling it ... stops monitoring." -- cancel is
    idempotent."""
    g, calls = make_guard(kept=True)
    assert g.active
    g.cancel()
    g.cancel()
    assert calls == [1]
    assert not g.active
    assert "cancelled" in repr(g)


def test_with_block_cancels_at_exit_also_on_error():
    """docs/api.md#monitoring: "Returns a guard; cancelling it ... stops monitoring." (as a context
    manager)."""
    g, calls = make_guard(kept=False)
    with g as same:
        assert same is g and calls == []
    assert calls == [1]
    g2, calls2 = make_guard(kept=False)
    with pytest.raises(KeyError):
        with g2:
            raise KeyError("x")
    assert calls2 == [1]


def test_dropped_guard_undoes_nothing():
    """Dropping a guard, kept or not, never undoes: scope is explicit (with / cancel)."""
    g, calls = make_guard()
    del g
    gc.collect()
    assert calls == []


def test_detach_forgets_undo():
    """docs/api.md#monitoring "Returns a guard" -- a detached guard no longer undoes anything."""
    g, calls = make_guard(kept=True)
    g.detach()
    g.cancel()
    del g
    gc.collect()
    assert calls == []


# --------------------------------------------------------------------------- kept-by-caller


def _fires(make):
    """Monitor a fresh port with ``make(p, cb)``, kill it; did cb run? (sentinel-synchronised)."""
    col = Collector()
    sentinel = Collector()
    p = port()
    make(p, col)
    gc.collect()
    mon(p, sentinel)
    kil(p, "x")
    sentinel.wait_one()
    flush()
    return bool(col.items)


def test_monitor_lasts_until_cancelled_however_the_guard_is_held():
    """The natural code is safe: a guard assigned in a function and dropped at its end, returned
    and dropped, or never looked at, keeps monitoring; only cancel() or a with block ends it."""

    def statement(p, cb):
        mon(p, cb)

    def assigned_and_dropped(p, cb):
        g = mon(p, cb)  # noqa: F841 - dropped at return

    def assigned_and_returned(p, cb):
        g = mon(p, cb)
        return g

    def cancelled(p, cb):
        mon(p, cb).cancel()

    def with_block(p, cb):
        with mon(p, cb):
            pass

    assert _fires(statement)
    assert _fires(assigned_and_dropped)
    assert _fires(assigned_and_returned)  # _fires drops what make() returns
    assert not _fires(cancelled)
    assert not _fires(with_block)


def test_after_guard_forms():
    """docs/api.md#ports-and-messages: "`after(seconds, port_or_callable, *msg)`: one-shot timer" --
    its guard: bare statement and a dropped guard fire, cancelled and with-block do not."""
    col = Collector()
    p = col.port()
    after(0.005, p, "bare")
    g = after(0.005, p, "cancelled")
    g.cancel()
    with after(0.005, p, "with-block"):
        pass
    g2 = after(0.005, p, "dropped")
    del g2
    after(0.03, p, "sentinel")
    assert col.wait(3) == [("bare",), ("dropped",), ("sentinel",)]
    flush()
    assert len(col) == 3
    kil(p)


def test_peval_docstring_example_links_ports():
    """docs/api.md#monitoring: "`mon(port)` is that with `rcvport = SELF()`" + "`peval(port, fn,
    *args)`: run now in `port`'s context." -- the peval docstring example `peval(p, lambda:
    mon(other))` makes p die when other crashes."""
    col = Collector()
    p = port(lambda *m: None)
    other = port()
    mon(p, col)
    peval(p, lambda: mon(other))
    gc.collect()
    kil(other, "boom")
    assert col.wait_one(timeout=0.5) == ("boom",)


def test_monitor_set_up_in_lambda_handler_keeps_monitoring():
    """docs/api.md#monitoring: "`mon(port, cb)` calls `cb(*reason)` once when `port` dies" -- also
    when the mon call is the body of a lambda rcv handler whose result nobody keeps."""
    col = Collector()
    watcher = port()
    rcv(watcher, "watch", lambda t: mon(t, col))
    target = port()
    snd(watcher, "watch", target)
    flush()
    gc.collect()
    kil(target, "down")
    assert col.wait_one(timeout=0.5) == ("down",)
    kil(watcher)


def test_monitor_set_up_in_def_handler_keeps_monitoring():
    """docs/api.md#monitoring: "`mon(port, cb)` calls `cb(*reason)` once when `port` dies" -- a bare
    `mon(...)` statement inside an rcv handler keeps monitoring after the handler returned."""
    col = Collector()

    def watch(t):
        mon(t, col)

    watcher = port()
    rcv(watcher, "watch", watch)
    target = port()
    snd(watcher, "watch", target)
    flush()
    gc.collect()
    kil(target, "down")
    assert col.wait_one() == ("down",)
    kil(watcher)
    assert kernel.lookup_port(watcher) is None
