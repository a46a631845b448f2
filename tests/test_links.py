"""Link management: simultaneous connects, a stopped-and-continued node, dialling exhaustion.

* Two nodes that dial each other at the same moment end up with two TCP connections (each side
  sends on one and reads the other). The keepalive timer must judge the peer over all of its
  connections, or a healthy idle peer is declared dead after monitor_timeout and every monitor
  on it fires (AEMP promises a monitor fires only when messages may have been lost).
* A node that was SIGSTOPped for longer than monitor_timeout must read what its peers sent
  meanwhile before it judges them: the data waiting in the socket proves they are alive.
* A node made to dial thousands of unreachable addresses must not run out of file descriptors:
  outgoing dials are bounded (``max_dials``), a file descriptor reserve is kept for accepts
  (``fd_reserve``), and an address that failed is backed off; a legitimate node still connects.
"""

import os
import signal
import socket
import time

import pytest

from netutil import RawPeer, free_port

# slow (docs/testing.md): real processes, ~40 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

TIMEOUT = 2.0  # monitor_timeout of the mesh nodes


def _addr():
    return "127.0.0.1:%d" % free_port()


# ----------------------------------------------------------------- 1. simultaneous connects

_MESH_SNIPPET = """
import time as _t
FIRED = []
DOWN = []
mon_nodes(lambda n, up, *r: (not up) and DOWN.append((n, list(r))))
gevent.sleep(max(0.0, %(at)r - _t.time()))
for other in %(others)r:
    if other != NODE():
        mon(other + "#", lambda *r, o=other: FIRED.append((o, list(r))))
emit("dialled")
"""


def test_simultaneous_connects_keep_healthy_links_up(cluster):
    """16 nodes (plus a seed) dial each other at the same moment in a full mesh, each
    monitoring every other node's node port, then idle for more than 2 x monitor_timeout:
    no monitor fires and no node is reported down, although some pairs got two links."""
    seed = cluster.seed(monitor_timeout=TIMEOUT)
    ids = []
    specs = []
    for i in range(16):
        a = _addr()
        ids.append(a)  # a node ID host:port is dialled directly: no lookup jitter
        specs.append(
            ("n%02d" % i, dict(nodeid=a, binds=[a], seeds=[seed.addr], monitor_timeout=TIMEOUT))
        )
    nodes = cluster.start(*specs)
    for n in nodes:
        n.run("wait_for(lambda: node_is_up(%r))" % seed.nodeid, timeout=15)
    at = time.time() + 1.5
    for n in nodes:
        n.exec(_MESH_SNIPPET % dict(at=at, others=ids))
    for n in nodes:
        n.expect("dialled", timeout=10)
    for n in nodes:
        n.run("wait_for(lambda: all(node_is_up(o) for o in %r), timeout=10)" % ids, timeout=15)
    doubles = sum(n.ask("sum(1 for x in node._nodes.values() if x.extra_links)") for n in nodes)
    # idle past 2 x monitor_timeout (the condition under test is the idling itself)
    t_idle = time.time()
    for n in nodes:
        n.exec("gevent.sleep(%r); emit('idle', FIRED, DOWN)" % (2.3 * TIMEOUT))
    fired = []
    down = []
    for n in nodes:
        f, d = n.expect("idle", timeout=2.3 * TIMEOUT + 10)
        fired += [(n.nodeid,) + tuple(x) for x in f]
        down += [(n.nodeid,) + tuple(x) for x in d]
    assert time.time() - t_idle >= 2 * TIMEOUT
    print("pairs with two links (counted on both sides): %d" % doubles)
    assert not fired, "%d monitors fired on healthy peers (%d double links): %r" % (
        len(fired),
        doubles,
        fired[:5],
    )
    assert not down, "%d node-down reports for healthy peers: %r" % (len(down), down[:5])
    for n in nodes:
        assert n.ask("sorted(up_nodes())") == sorted(set(ids + [seed.nodeid]) - {n.nodeid})


# ----------------------------------------------------------------- 2. stopped and continued


@pytest.mark.parametrize("peer_probes", [True, False], ids=["peer_probes", "peer_silent"])
def test_stopped_node_reads_before_it_judges(cluster, peer_probes):
    """A node SIGSTOPped for more than its monitor_timeout must not declare its live peer dead
    when it continues: no monitor fires, on either side.

    ``peer_probes``: the peer kept probing the stopped node, the probes wait in its socket
    (read first, then judge). The peer's own timeout (9 s) is longer than the stop (at most
    about 6 s: its first probe goes out 3 to 6 s into the stop), so it stays up.
    ``peer_silent``: the peer has keepalive off and sent nothing: the time the node was
    stopped is not the peer's silence; it probes the peer on waking and hears back."""
    peer = cluster.seed("peer", monitor_timeout=9, keepalive=peer_probes)
    stopped = cluster.node("stopped", seeds=[peer.addr], monitor_timeout=1.5)
    for a, b in ((stopped, peer), (peer, stopped)):
        a.run(
            """
            wait_for(lambda: node_is_up(%(b)r), timeout=10)
            FIRED = []
            DOWN = []
            mon_nodes(lambda n, up, *r: (not up) and DOWN.append((n, list(r))))
            mon(%(b)r + "#", lambda *r: FIRED.append(list(r)))
        """
            % dict(b=b.nodeid)
        )
    # a round trip after the mon1 went out: both monitors are in place
    stopped.run("wait_for(lambda: node._nodes[%r].link.frames_in > 0)" % peer.nodeid)
    before = stopped.ask("node._nodes[%r].link.frames_in" % peer.nodeid)
    os.kill(stopped.proc.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        # the peer probes a link idle for monitor_timeout / 3 = 3 s (it judges at 9 s): wait
        # for a probe to go out to the stopped node, and for the stop to last 2.5 s at least
        # (the stopped node's monitor_timeout is 1.5 s)
        if peer_probes:
            peer.run(
                """
                L = node._nodes[%r].link
                n0 = L.frames_out
                wait_for(lambda: L.frames_out > n0, timeout=8)
            """
                % stopped.nodeid,
                timeout=10,
            )
        while time.monotonic() - t_stop < 2.5:  # the stop itself is the condition under test
            time.sleep(0.05)
    finally:
        os.kill(stopped.proc.pid, signal.SIGCONT)
    print("stopped for %.2f s" % (time.monotonic() - t_stop))
    # two keepalive rounds of the stopped node and more: judge after it had every chance
    stopped.exec(
        "gevent.sleep(2.0); emit('after', FIRED, DOWN, "
        "node_is_up(%r), node._nodes[%r].link.frames_in)" % (peer.nodeid, peer.nodeid)
    )
    fired, down, up, frames_in = stopped.expect("after", timeout=10)
    assert not fired and not down, "the stopped node declared its live peer dead: %r %r" % (
        fired,
        down,
    )
    assert up is True and frames_in > before
    assert peer.ask("[FIRED, DOWN]") == [[], []]


# ----------------------------------------------------------------- 3. dialling exhaustion

_FD_SAMPLER = """
import os as _os
FDMAX = [0]
def _sample():
    limit = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0]
    while True:
        try:
            n = len(_os.listdir("/proc/self/fd"))
        except OSError:  # EMFILE: listing needs a descriptor too
            n = limit
        FDMAX[0] = max(FDMAX[0], n)
        gevent.sleep(0.01)
gevent.spawn(_sample)
emit("sampling")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
def test_dialling_thousands_of_dead_addresses_leaves_room_for_accepts(cluster):
    """A peer holding the secret makes a node (RLIMIT_NOFILE 128) relay messages to 1,200
    ``host:port`` node IDs nobody answers: 1,000 refuse the connection, 200 accept it and never
    say a word (the dial then holds its descriptor for the whole handshake timeout). The node
    must stay below its descriptor limit and a legitimate node must still connect to it
    within a few seconds."""
    holes = []
    try:
        for _ in range(200):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(16)  # the kernel completes connections; nobody ever accepts or answers
            holes.append(s)
        addrs = ["127.0.0.1:%d" % s.getsockname()[1] for s in holes]
        addrs += ["127.0.0.1:%d" % free_port() for _ in range(1000)]
        addrs = list(dict.fromkeys(addrs))  # free_port() may hand out a port twice
        target = cluster.seed("target", _prefix=["sh", "-c", 'ulimit -n 128 && exec "$@"', "sh"])
        assert (
            target.ask("__import__('resource').getrlimit(__import__('resource').RLIMIT_NOFILE)[0]")
            == 128
        )
        target.exec(_FD_SAMPLER)
        target.expect("sampling")
        peer = RawPeer(target.addr, nodeid="attacker")
        try:
            peer.handshake()
            for a in addrs:
                peer.send_frame(["", "snd", a + "#x", "hello"])
            # the target has taken every relay request once it answers a later one
            peer.send_frame(["", "snd", target.nodeid + "#", "devnull"])
            target.run("wait_for(lambda: len(node._nodes) >= %d, timeout=10)" % len(addrs))
            t0 = time.monotonic()
            legit = cluster.node("legit", seeds=[target.addr])
            legit.run("wait_for(lambda: node_is_up(%r), timeout=10)" % target.nodeid, timeout=15)
            t_legit = time.monotonic() - t0
            # while the black holes still hold their dials: every flooded node gives up
            # after connect_interval (2 s), and nothing waits for a turn any more
            target.run(
                "wait_for(lambda: not connect.dials.waiting and not any("
                "n.connecting for n in list(node._nodes.values())), timeout=10)",
                timeout=15,
            )
            fdmax = target.ask("FDMAX[0]")
        finally:
            peer.close()
    finally:
        for s in holes:
            s.close()
    print("legit node up after %.2f s; target's peak fds %d of 128" % (t_legit, fdmax))
    assert target.alive
    assert "Too many open files" not in target.log_text()
    assert fdmax <= 128 - 32, "the target used %d of its 128 file descriptors" % fdmax
    assert t_legit < 6, "the legitimate node needed %.1f s to connect" % t_legit
    # refused dials are logged rate-limited: a line or two, not one per address
    assert target.log_text().count("not dialling") <= 3


def test_dials_to_black_holes_make_way_for_real_ones(cluster):
    """Every dial turn (``max_dials`` 4) held by a dial to an address that accepts and never
    answers (it would hold the turn for the whole handshake timeout), and their nodes gave up
    long ago: a dial to a real node still gets through within its connect_interval."""
    holes = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(4)
            holes.append(s)
        real_addr = _addr()
        real = cluster.node("real", nodeid=real_addr, binds=[real_addr])
        target = cluster.seed("target", max_dials=4)
        peer = RawPeer(target.addr, nodeid="attacker")
        try:
            peer.handshake()
            for s in holes:
                peer.send_frame(["", "snd", "127.0.0.1:%d#x" % s.getsockname()[1], "hello"])
            # all four turns taken, and all four nodes gave up (connect_interval, 2 s)
            target.run(
                "wait_for(lambda: len(connect.dials._holders) == 4 and not any("
                "n.connecting for n in list(node._nodes.values())), timeout=10)",
                timeout=15,
            )
            target.exec(
                """
                FIRED = []
                t = time.monotonic()
                mon(%(r)r + "#", lambda *r: FIRED.append(list(r)))
                wait_for(lambda: node_is_up(%(r)r) or FIRED, timeout=10)
                emit("real", node_is_up(%(r)r), FIRED, time.monotonic() - t)
            """
                % dict(r=real.nodeid)
            )
            up, fired, took = target.expect("real", timeout=15)
        finally:
            peer.close()
    finally:
        for s in holes:
            s.close()
    print("the real node was up after %.2f s" % took)
    assert up is True and not fired, "the target could not dial a real node: %r" % (fired,)
