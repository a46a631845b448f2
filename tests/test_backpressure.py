"""Backpressure (docs/running.md, "Backpressure"): bounded link buffers and mailbox limits.

Link tests: a ``RawPeer`` (this process, blocking sockets) completes the handshake with a child
node ``target`` and then stops reading, so everything the target sends it piles up. The target
runs with small limits (``link_high_water`` 256 KiB, ``link_hard_limit`` 4 MiB) to keep the
tests quick. Without backpressure the target's write buffer (and its RSS) grows with every
message; with it a greenlet sender waits, and a sender that must not wait (here the link's
reader relaying ``snd`` node requests back to the stalled peer) fails the link with a reason
naming ``link_hard_limit``.

Mailbox tests: a greenlet port spawned with ``mailbox_limit`` that does not receive until told
to, flooded by a greenlet on its own node or by another node, behaves as ``on_full`` says.
"""

from aemp_green.wire import framing
from netutil import RawPeer, black_hole

KiB = 1024
MiB = 1024 * KiB
HIGH = 256 * KiB
HARD = 4 * MiB
LIMITS = dict(link_high_water=HIGH, link_hard_limit=HARD)


def rss_kib(pid):
    """The resident set size of process ``pid`` in KiB (Linux ``/proc``)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def stalled_peer(t, nodeid):
    """A raw peer connected to ``t`` that completed the handshake and then reads nothing."""
    peer = RawPeer(t.addr, nodeid=nodeid)
    peer.handshake()
    t.run("wait_for(lambda: node_is_up(%r))" % nodeid, timeout=10)
    return peer


def test_greenlet_sender_waits_for_a_stalled_peer(cluster):
    """A greenlet port sending to a peer that stopped reading waits at link_high_water instead
    of growing the buffer (and the process) without bound, and goes on once the peer reads."""
    t = cluster.node("target", **LIMITS)
    peer = stalled_peer(t, "stalled")
    n, size = 48 * KiB, KiB  # 48 MiB if nothing held the sender back
    rss0 = rss_kib(t.proc.pid)
    t.run(
        """
        SENT = [0]
        def flood():
            for i in range(%d):
                snd("stalled#sink", "m", i, "x" * %d)
                SENT[0] += 1
                if i %% 100 == 0:
                    gevent.sleep(0)  # (lets the test look; the old code never waited)
        spawn(flood)
        LINK = node._nodes["stalled"].link
    """
        % (n, size)
    )
    # bounded poll: until the sender waits for the link (or, without backpressure, has sent all)
    t.run(
        "wait_for(lambda: getattr(LINK, 'senders_waiting', 0) or SENT[0] >= %d, 20)" % n, timeout=25
    )
    sent, pending, waits = t.ask(
        "[SENT[0], getattr(LINK, 'bytes_pending', None), getattr(LINK, 'busy_waits', None)]"
    )
    grown = rss_kib(t.proc.pid) - rss0
    assert sent < n // 2, "the sender never waited: %d of %d messages queued" % (sent, n)
    assert waits and waits >= 1
    assert pending <= HIGH + 2 * size, pending
    assert grown < 24 * 1024, "target RSS grew by %d KiB" % grown
    assert t.ask("SENT[0]") == sent, "the sender went on while the link was busy"

    # the peer reads again: the sender resumes and every message arrives, in order
    dec = framing.codec(peer.framing)[1](max_frame=64 * MiB)
    frames = dec.feed(peer.rbuf)
    got = [f[2] for f in frames if f and f[0] == "sink"]
    peer.sock.settimeout(20)
    while len(got) < n:
        data = peer.sock.recv(1 << 20)
        assert data, "the target closed the link after %d messages" % len(got)
        got.extend(f[2] for f in dec.feed(data) if f and f[0] == "sink")
    assert got == list(range(n))
    assert t.ask("SENT[0]") == n
    assert t.ask("LINK.busy_waits") >= 1
    peer.close()


def test_callback_flood_to_a_stalled_peer_fails_the_link(cluster):
    """Replies a stalled peer makes the target send from its link reader (which must never
    wait) stay within link_hard_limit: past it the link is closed and every monitor on that
    peer fires with ("transport_error", peer, "... link_hard_limit ...")."""
    t = cluster.node("target", **LIMITS)
    peer = stalled_peer(t, "stalled")
    t.run("mon('stalled#sink', lambda *r: emit('mon', *r))")
    rss0 = rss_kib(t.proc.pid)
    payload = "y" * (64 * KiB)
    sent = 0
    try:
        peer.sock.settimeout(10)
        for _ in range(640):  # 40 MiB of relays back to the stalled peer if nothing stops it
            peer.send_frame(["", "snd", "stalled#sink", "r", payload])
            sent += 1
    except OSError:  # the target closed the link under our feet: that is the point
        pass
    tag, node, why = t.expect("mon", timeout=15)
    assert (tag, node) == ("transport_error", "stalled")
    assert "link_hard_limit" in why and "%d" % HARD in why, why
    t.wait_log("link_hard_limit")
    grown = rss_kib(t.proc.pid) - rss0
    assert grown < 24 * 1024, "target RSS grew by %d KiB (%d relays sent)" % (grown, sent)
    assert t.ask("node_is_up('stalled')") is False
    assert t.ask("1 + 1") == 2  # the node goes on
    peer.close()


def test_queue_for_a_node_not_yet_connected_is_bounded(cluster):
    """Frames a callback handler sends to a node still being connected are bounded too: past
    link_hard_limit the connection attempt fails with a reason naming the setting."""
    t = cluster.node("target", connect_interval=10, **LIMITS)
    # a listener that accepts and never speaks: the handshake hangs, the queue waits
    with black_hole(5) as ghost:
        t.run(
            """
            mon(%r, lambda *r: emit("mon", *r))
            def handler():
                for i in range(200):   # 12.5 MiB, all from one handler call
                    snd(%r, "m", i, "z" * 65536)
            snd(port(handler))
        """
            % (ghost + "#sink", ghost + "#sink")
        )
        tag, node, why = t.expect("mon", timeout=8)
        assert (tag, node) == ("transport_error", ghost)
        assert "link_hard_limit" in why and "while connecting" in why, why
        assert t.ask("node._nodes[%r].queue_bytes" % ghost) == 0


def test_greenlet_sender_waits_while_a_node_is_being_connected(cluster):
    """A greenlet sending to a node whose handshake hangs waits once link_high_water bytes are
    queued for it, instead of queueing everything; the failed attempt lets it go on."""
    t = cluster.node("target", connect_interval=8, **LIMITS)
    with black_hole(5) as ghost:
        t.run(
            """
            SENT = [0]
            def flood():
                for i in range(1000):   # 62.5 MiB if nothing held the sender back
                    snd(%r, "m", i, "z" * 65536)
                    SENT[0] += 1
                    gevent.sleep(0)
            spawn(flood)
            GHOST = node.get_node(%r)
        """
            % (ghost + "#sink", ghost)
        )
        t.run(
            "wait_for(lambda: SENT[0] >= 1000 or (GHOST.queue_bytes if hasattr(GHOST, "
            "'queue_bytes') else 0) > %d, 10)" % HIGH,
            timeout=15,
        )
        sent, queued = t.ask("[SENT[0], getattr(GHOST, 'queue_bytes', None)]")
        assert sent < 100, "the sender never waited: %d of 1000 messages queued" % sent
        assert queued <= HIGH + 2 * 65536, queued
        assert t.ask("SENT[0]") == sent  # still waiting (connect_interval is 8 s)


# --------------------------------------------------------------------------- mailbox limits

SLOW = """
GOT = []
def slow():
    receive("go")
    while True:
        GOT.append(receive("m")[0])
W = spawn(slow, mailbox_limit=%d, on_full=%r)
"""


def test_mailbox_limit_drop_counts_and_keeps_the_first(cluster):
    """on_full="drop": a remote flood into a port that does not receive leaves exactly
    mailbox_limit messages queued, the rest dropped and counted; the kept ones arrive in order."""
    t, src = cluster.start(("t", {}), ("src", {}))
    t.run(SLOW % (50, "drop"))
    w = t.ask("W")
    src.run(
        """
        node.get_node(%r).addrs = [%r]
        for i in range(500):
            snd(%r, "m", i)
        snd(%r, "sync")
        emit("sent")
    """
        % (t.nodeid, t.addr, w, t.addr + "#")
    )
    t.run("wait_for(lambda: mailbox_info(W)['dropped'] >= 450)", timeout=10)
    info = t.ask("mailbox_info(W)")
    assert info == {"queued": 50, "limit": 50, "on_full": "drop", "dropped": 450, "blocked": 0}, (
        info
    )
    t.run("snd(W, 'go'); wait_for(lambda: len(GOT) >= 50)")
    assert t.ask("GOT") == list(range(50))
    t.wait_log("mailbox full")


def test_mailbox_limit_kill(cluster):
    """on_full="kill": the message that finds the mailbox full kills the port, and its monitors
    (here on another node) get ("mailbox_full", text naming the limit)."""
    t, src = cluster.start(("t", {}), ("src", {}))
    t.run(SLOW % (50, "kill"))
    w = t.ask("W")
    src.run(
        """
        node.get_node(%r).addrs = [%r]
        mon(%r, lambda *r: emit("died", *r))
        for i in range(500):
            snd(%r, "m", i)
    """
        % (t.nodeid, t.addr, w, w)
    )
    tag, text = src.expect("died", timeout=10)
    assert tag == "mailbox_full"
    assert "mailbox_limit 50" in text and w in text, text
    assert t.ask("port_is_local(W) and W in aemp_green.kernel.port_table") is False


def test_mailbox_limit_block_waits_and_loses_nothing(cluster):
    """on_full="block": a greenlet sender waits while the mailbox is full and goes on as the
    port receives; every message arrives in order and the mailbox never exceeds the limit.
    Messages from another node (its link reader cannot wait) are dropped and counted."""
    t, src = cluster.start(("t", {}), ("src", {}))
    t.run(
        SLOW % (50, "block")
        + """
SENT = [0]
PEAK = [0]
def sender():
    for i in range(2000):
        snd(W, "m", i)
        SENT[0] += 1
        PEAK[0] = max(PEAK[0], mailbox_info(W)["queued"])
spawn(sender)
"""
    )
    t.run("wait_for(lambda: mailbox_info(W)['blocked'] == 1)", timeout=10)
    info = t.ask("[SENT[0], mailbox_info(W)]")
    assert info[0] == 50 and info[1]["queued"] == 50 and info[1]["dropped"] == 0, info

    # a remote sender cannot wait: its message is dropped and counted
    src.run(
        """
        node.get_node(%r).addrs = [%r]
        snd(%r, "m", -1)
    """
        % (t.nodeid, t.addr, t.ask("W"))
    )
    t.run("wait_for(lambda: mailbox_info(W)['dropped'] == 1)", timeout=10)

    t.run("snd(W, 'go'); wait_for(lambda: len(GOT) >= 2000)", timeout=15)
    assert t.ask("GOT") == list(range(2000))
    assert t.ask("[SENT[0], PEAK[0], mailbox_info(W)['blocked']]") == [2000, 50, 0]
