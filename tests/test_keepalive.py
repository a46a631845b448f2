"""Failure detection without waiting for TCP: a silent peer is declared down within monitor_timeout.

A SIGSTOPped process keeps its TCP connections open (the kernel still ACKs), but sends nothing:
exactly the "silent peer" AEMP 2.02 would only notice after TCP timeouts (minutes to hours).
"""

import os
import signal
import time

import pytest

from netutil import free_port


def _free_addr():
    return "127.0.0.1:%d" % free_port()


@pytest.fixture
def nodes(cluster):
    """``nodes(name, **configure_kwargs)`` starts a child node; the cluster stops them all."""
    return cluster.node


def test_silent_peer_is_declared_down_within_monitor_timeout(nodes):
    """Issue 8: a silent peer must be declared down and its monitors fired within monitor_timeout."""
    seed_addr = _free_addr()
    seed = nodes("seed", nodeid="seed", binds=[seed_addr], seeds=[seed_addr], monitor_timeout=1.5)
    quiet = nodes("quiet", nodeid="quiet", seeds=[seed_addr])
    quiet.exec("p = port(lambda *m: None); db_set('ka', p); emit('port', p)")
    (p,) = quiet.expect("port")
    # make sure the monitor is in place (mon1 went out) before silencing the peer
    # wait until the seed knows the port (so quiet's link is up), then monitor it
    seed.exec(
        "import time\n"
        "def seen(db, *a):\n"
        "    if %r in db and not done: done.append(1); mon(%r, lambda *r: emit('down', list(r), time.time())); emit('ok')\n"
        "done = []\n"
        "db_mon('ka', seen)" % (p, p)
    )
    seed.expect("ok")
    t0 = time.time()
    os.kill(quiet.proc.pid, signal.SIGSTOP)
    try:
        reason, t_down = seed.expect("down", timeout=10)
    finally:
        os.kill(quiet.proc.pid, signal.SIGCONT)
    assert reason[0] == "transport_error" and reason[1] == "quiet", reason
    assert "keepalive" in reason[2], reason
    assert t_down - t0 < 1.5 + 1.0, "declared down after %.2f s" % (t_down - t0)


def test_idle_link_stays_up_with_keepalives(nodes):
    """Idle but healthy links are not torn down, whatever the peer's own settings: the watcher
    probes with the node-port ``time`` request, which every AEMP peer answers."""
    seed_addr = _free_addr()
    seed = nodes("seed", nodeid="seed", binds=[seed_addr], seeds=[seed_addr], monitor_timeout=0.6)
    # the peer keeps the default monitor_timeout (30 s): it would send nothing for 10 s on its
    # own (a Perl 2.02 peer never does); the watcher's probe must make it answer
    other = nodes("other", nodeid="other", seeds=[seed_addr])
    other.exec("p = port(lambda *m: emit('got', list(m))); db_set('ka', p); emit('port', p)")
    (p,) = other.expect("port")
    seed.exec("db_mon('ka', lambda db, *a: %r in db and emit('seen'))" % p)
    seed.expect("seen")
    seed.exec("mon_nodes(lambda n, up, *r: emit('nodes', n, up, list(r)))\nemit('ok')")
    seed.expect("ok")
    # stay idle for several monitor_timeouts, then check the link never dropped
    seed.exec("gevent.sleep(2.0); emit('idle_done', node_is_up('other'))")
    (up,) = seed.expect("idle_done", timeout=10)
    assert up is True
    assert not [b for b in seed.backlog if b[0] == "nodes" and b[2] is False]
    seed.exec("snd(%r, 'still', 'here')" % p)
    assert other.expect("got", timeout=5) == [["still", "here"]]


# the live greenlets of a child node (gevent's and raw ones: a link's writer is a raw greenlet)
_GREENLETS = """
import gc, greenlet
def greenlets():
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)
"""


def test_a_link_holds_two_greenlets_and_no_watchdog(nodes):
    """Issue 17 (memory per link): the keepalive is a timer of the loop, not a greenlet that
    mostly sleeps (a suspended greenlet costs ~6.5 KB): with the keepalive on, a link up adds
    two live greenlets, its reader and its writer, to a node that had no link."""
    a_addr = _free_addr()
    nodes("a", nodeid=a_addr, binds=[a_addr], seeds=[], monitor_timeout=3)
    b = nodes("b", nodeid="b", seeds=[], monitor_timeout=3)
    b.exec(
        _GREENLETS + "gevent.socket.getaddrinfo('127.0.0.1', 1)  # start the resolver's thread\n"
        "n0 = greenlets()\n"
        "emit('none', up_nodes())\n"
        "node.get_node(%r).connect()\n"
        "wait_for(lambda: node_is_up(%r), timeout=10)\n"
        "# the dial and handshake greenlets end soon after the link is up: a bounded poll\n"
        "deadline = time.monotonic() + 3\n"
        "while greenlets() - n0 > 2 and time.monotonic() < deadline:\n"
        "    gevent.sleep(0.01)\n"
        "emit('one', up_nodes(), greenlets() - n0)\n" % (a_addr, a_addr)
    )
    assert b.expect("none") == [[]]
    up, added = b.expect("one", timeout=15)
    assert up == [a_addr]
    assert added == 2, "one link added %d live greenlets (reader, writer, ...)" % added


def test_a_closed_links_keepalive_timer_is_stopped(nodes):
    """The keepalive timer runs every third of monitor_timeout while the link is up and never
    again once the link is closed (closing stops the loop's timer; no callback after it)."""
    a_addr = _free_addr()
    nodes("a", nodeid=a_addr, binds=[a_addr], seeds=[], monitor_timeout=0.3)
    b = nodes("b", nodeid="b", seeds=[], monitor_timeout=0.3)
    b.exec(
        "from aemp_green import transport\n"
        "CALLS = []\n"
        "_watch = transport.Link._watch\n"
        "def counting(link):\n"
        "    CALLS.append(link.closed)\n"
        "    _watch(link)\n"
        "transport.Link._watch = counting\n"
        "node.get_node(%r).connect()\n"
        "wait_for(lambda: node_is_up(%r), timeout=10)\n"
        "link = node.get_node(%r).link\n"
        "wait_for(lambda: len(CALLS) >= 3, timeout=5)  # rounds every 0.1 s while up\n"
        "timer = link._keepalive\n"
        "link.close('test closes it')\n"
        "n = len(CALLS)\n"
        "gevent.sleep(0.5)  # five rounds' worth: the condition under test is the quiet\n"
        "emit('after', n, len(CALLS), True in CALLS, timer.active, link._keepalive is None)\n"
        % (a_addr, a_addr, a_addr)
    )
    n, n_later, called_closed, active, dropped = b.expect("after", timeout=15)
    assert n >= 3
    assert n_later == n and not called_closed, "keepalive ran after close"
    assert not active and dropped
