"""Monitors at scale: k monitors on one port cost O(k) to make and cancel, not O(k²).

A port's monitors were a list, and cancelling one (a guard, or every ``call()`` returning: it
monitors the port it called) was a ``list.remove``: k calls waiting on one server port took
5.6 s to finish at k = 32,000 (0.39 s now), k guards on one port 4.1 s to cancel (0.014 s).
These tests count the work instead of timing it: the monitor records are replaced by a
subclass whose ``__eq__`` counts its calls; a list scan calls it for every element it passes,
a dict lookup (identity hashes) never.
"""

import gevent
import pytest

from aemp_green import call, kernel, kil, mon, port, snd
from conftest import wait_until

K = 3000


class _Counted(kernel._MonitorAction):
    eq_calls = 0
    __slots__ = ()

    def __eq__(self, other):
        _Counted.eq_calls += 1
        return self is other

    __hash__ = kernel._MonitorAction.__hash__


@pytest.fixture
def counted(monkeypatch):
    monkeypatch.setattr(kernel, "_MonitorAction", _Counted)
    _Counted.eq_calls = 0
    return _Counted


def test_cancelling_many_guards_on_one_port_is_linear(counted):
    fired = []
    p = port()
    guards = [mon(p, lambda *r, i=i: fired.append(i)) for i in range(K)]
    for g in reversed(guards[1::2]):  # newest first: the worst case for a list
        g.cancel()
    # before: K/2 removals scanning up to K entries each, about 1.7M comparisons
    assert counted.eq_calls < 10 * K, counted.eq_calls
    kil(p, "bye")
    wait_until(lambda: len(fired) == K // 2, timeout=10)
    assert fired == list(range(0, K, 2))  # the kept half, in the order they were made


def test_many_pending_calls_to_one_port_finish_in_linear_work(counted):
    pending = []
    server = port(lambda tag, i, reply: pending.append(reply))
    results = []

    def client(i):
        results.append(call(server, "q", i, timeout=30)[0])

    greenlets = [gevent.spawn(client, i) for i in range(K)]
    wait_until(lambda: len(pending) == K, timeout=20)
    for r in reversed(pending):
        snd(r, "ok")
    wait_until(lambda: len(results) == K, timeout=20)
    assert counted.eq_calls < 10 * K, counted.eq_calls
    assert results == ["ok"] * K
    gevent.joinall(greenlets, timeout=10)


REMOTE = """
from aemp_green import kernel
class _Counted(kernel._MonitorAction):
    eq_calls = 0
    __slots__ = ()
    def __eq__(self, other):
        _Counted.eq_calls += 1
        return self is other
    __hash__ = kernel._MonitorAction.__hash__
kernel._MonitorAction = _Counted
FIRED = []
def _many(target, k):
    guards = [mon(target, lambda *r, i=i: FIRED.append(i)) for i in range(k)]
    for g in reversed(guards[1::2]):
        g.cancel()
    emit("cancelled", _Counted.eq_calls)
"""


def test_cancelling_many_monitors_of_one_remote_port_is_linear(cluster):
    seed = cluster.seed()
    (a,) = cluster.start(("a", dict(seeds=seed.binds)))
    target = seed.ask("port()")
    a.run(REMOTE)
    a.exec("_many(%r, %d)" % (target, K))
    (eq_calls,) = a.expect("cancelled", timeout=20)
    assert eq_calls < 10 * K, eq_calls
    # the kept half still fires when the port dies there
    seed.run("kil(%r, 'bye')" % target)
    assert a.ask("wait_for(lambda: len(FIRED) == %d, 10) and FIRED" % (K // 2), timeout=15) == list(
        range(0, K, 2)
    )
