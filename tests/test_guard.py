"""Guards: cancel, ``with``, drop-cancels-only-when-kept (API.md "Monitoring": "Returns a guard;
dropping or cancelling it stops monitoring.", and the `after` timer guard)."""

import gc

import pytest

from aemp_green import Guard, after, kil, mon, peval, port, rcv, snd
from aemp_green import kernel
from conftest import Collector, flush


def make_guard(kept):
    calls = []
    return Guard(lambda: calls.append(1), kept), calls


# --------------------------------------------------------------------------- the Guard object

def test_cancel_runs_undo_once():
    """API.md: "Returns a guard; ... cancelling it stops monitoring." -- cancel is idempotent."""
    g, calls = make_guard(kept=True)
    assert g.active
    g.cancel()
    g.cancel()
    assert calls == [1]
    assert not g.active
    assert "cancelled" in repr(g)


def test_with_block_cancels_at_exit_also_on_error():
    """API.md: "Returns a guard; ... cancelling it stops monitoring." (as a context manager)."""
    g, calls = make_guard(kept=False)
    with g as same:
        assert same is g and calls == []
    assert calls == [1]
    g2, calls2 = make_guard(kept=False)
    with pytest.raises(KeyError):
        with g2:
            raise KeyError("x")
    assert calls2 == [1]


def test_kept_guard_dropped_cancels_unkept_does_not():
    """API.md: "dropping ... it stops monitoring" -- only guards the caller kept."""
    g, calls = make_guard(kept=True)
    del g
    gc.collect()
    assert calls == [1]
    g, calls = make_guard(kept=False)
    del g
    gc.collect()
    assert calls == []


def test_detach_forgets_undo():
    """API.md "Returns a guard" -- a detached guard no longer undoes anything."""
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


def test_statement_is_not_kept_assignment_is():
    """API.md: "Returns a guard; dropping ... it stops monitoring." -- the AEMP void-context rule:
    a bare statement keeps monitoring; a kept (assigned) guard that is dropped stops it."""
    def statement(p, cb):
        mon(p, cb)

    def assigned_and_dropped(p, cb):
        g = mon(p, cb)  # noqa: F841 - dropped at return

    def assigned_and_returned(p, cb):
        g = mon(p, cb)
        return g

    held = []

    def stored(p, cb):
        held.append(mon(p, cb))

    assert _fires(statement)
    assert not _fires(assigned_and_dropped)
    assert not _fires(assigned_and_returned)  # _fires drops what make() returns
    assert _fires(stored)
    held.clear()


def test_returned_guard_counts_as_not_kept_but_cancels():
    """API.md "Returns a guard; dropping or cancelling it stops monitoring." -- as _guard
    documents it: a guard handed back with `return mon(...)` counts as not kept (handlers'
    results are thrown away, AEMP calls them in void context); cancel() still works on it."""
    def helper(p, cb):
        return mon(p, cb)

    def returned_and_dropped(p, cb):
        g = helper(p, cb)
        del g

    def returned_and_cancelled(p, cb):
        helper(p, cb).cancel()

    assert _fires(returned_and_dropped)
    assert not _fires(returned_and_cancelled)


def test_kept_detection_stable_at_specialised_call_sites():
    """API.md "Returns a guard" -- the statement/kept decision does not change when the call site
    runs many times (the interpreter specialises hot calls)."""
    col = Collector()
    sentinel = Collector()
    ports = [port() for _ in range(200)]
    for p in ports:
        mon(p, col)
    dropped = [port() for _ in range(200)]
    for p in dropped:
        g = mon(p, lambda *r: col("dropped", r))
        del g
    for p in ports + dropped:
        kil(p, "x")
    last = port()
    mon(last, sentinel)
    kil(last)
    sentinel.wait_one()
    flush()
    assert col.items == [("x",)] * 200


def test_after_guard_forms():
    """API.md: "`after(seconds, port_or_callable, *msg)`: one-shot timer" -- its guard: bare
    statement fires, kept+cancelled/dropped/with-block does not."""
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
    assert col.wait(2) == [("bare",), ("sentinel",)]
    flush()
    assert len(col) == 2
    kil(p)


def test_peval_docstring_example_links_ports():
    """API.md: "`mon(port)` is that with `rcvport = SELF()`" + "`peval(port, fn, *args)`: run now
    in `port`'s context." -- the peval docstring example `peval(p, lambda: mon(other))` makes p
    die when other crashes."""
    col = Collector()
    p = port(lambda *m: None)
    other = port()
    mon(p, col)
    peval(p, lambda: mon(other))
    gc.collect()
    kil(other, "boom")
    assert col.wait_one(timeout=0.5) == ("boom",)


def test_monitor_set_up_in_lambda_handler_keeps_monitoring():
    """API.md: "`mon(port, cb)` calls `cb(*reason)` once when `port` dies" -- also when the mon
    call is the body of a lambda rcv handler whose result nobody keeps."""
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
    """API.md: "`mon(port, cb)` calls `cb(*reason)` once when `port` dies" -- a bare `mon(...)`
    statement inside an rcv handler keeps monitoring after the handler returned."""
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
    assert kernel._lookup(watcher) is None
