"""Amplification by a member: a peer that holds the secret attacks a child node.

A member is trusted to send messages, not to make another node use orders of magnitude more
memory, CPU or log than the bytes it sent. Each test starts a real target node (a child
process) and attacks it from this process with ``netutil.RawPeer`` (which holds the secret),
then measures the effect on the target: its peak memory (``VmHWM`` in ``/proc/<pid>/status``),
its CPU time, its log, its state (asked over its stdin), and whether it still answers.
"""

import logging
import os
import time

import cbor2
import pytest

from aemp_green.wire import framing
from netutil import RawPeer

# slow (docs/testing.md): real processes, ~25 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

MiB = 1 << 20


# --------------------------------------------------------------------------- helpers


def proc_status(pid, field):
    """A ``kB`` field of /proc/<pid>/status, in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def peak_rss(node):
    return proc_status(node.proc.pid, "VmHWM")


def cpu_seconds(node):
    with open("/proc/%d/stat" % node.proc.pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_size(node):
    return node.log_path.stat().st_size


def new_log(node, since):
    """The bytes the node logged after offset ``since``."""
    with open(node.log_path, "rb") as f:
        f.seek(since)
        return f.read()


class Peer(RawPeer):
    """A RawPeer that also reads and decodes the target's frames."""

    def __init__(self, addr, nodeid="attacker", framings=("json",), **kw):
        super().__init__(addr, nodeid=nodeid, framings=framings, **kw)
        self.est = self.handshake()
        self.dec = framing.codec(self.est.recv_framing)[1]()
        self.frames = list(self.dec.feed(self.rbuf)) if self.rbuf else []
        self.rbuf = b""

    def read_frames(self, pred, timeout=10):
        """Read frames until one satisfies ``pred``; return every frame read so far."""
        deadline = time.monotonic() + timeout
        while not any(pred(f) for f in self.frames):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "no such frame within %s s; got %r" % (timeout, self.frames[-10:])
                )
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError as exc:
                raise AssertionError("connection failed: %r" % (exc,)) from None
            if not chunk:
                raise AssertionError(
                    "the target closed the connection; got %r" % (self.frames[-10:],)
                )
            self.frames += self.dec.feed(chunk)
        return self.frames

    def ping(self, tag="pong", timeout=10):
        """Ask the target for its time on this connection; wait for the answer."""
        self.send_frame(["", "time", self.hs.nodeid + "#r", tag])
        self.read_frames(lambda f: f[:2] == ["r", tag], timeout)


def answers(target, nodeid="checker"):
    """True when the target still completes a handshake and answers a request."""
    p = Peer(target.addr, nodeid=nodeid)
    try:
        p.ping()
        return True
    finally:
        p.close()


# --------------------------------------------------------------------------- 1. CBOR string refs


def _stringref_frame(nrefs, length):
    """["", "devnull", 256([<length ASCII bytes>, 25(0), 25(0), ...])]: each 3-byte reference
    stands for the whole string."""
    s = b"x" * length
    items = b"\x59" + len(s).to_bytes(2, "big") + s + b"\xd8\x19\x00" * nrefs
    arr = b"\x9a" + (nrefs + 1).to_bytes(4, "big") + items
    return b"\x83\x40\x47devnull" + b"\xd9\x01\x00" + arr


def test_cbor_string_references_are_refused(cluster):
    """A 49 KB frame of string references stood for 60 MB of strings; the target decoded them
    all. Now the frame is malformed: the link drops with one log line, memory stays flat."""
    target = cluster.node("target")
    peer = Peer(target.addr, framings=("cbor",))
    assert peer.est.send_framing == "cbor"
    frame = _stringref_frame(15000, 4000)
    assert len(frame) < 50000
    before = peak_rss(target)
    peer.send_raw(frame)
    try:
        peer.ping()  # answered only if the frame was accepted (then the target is done with it)
        closed = False
    except AssertionError:
        closed = peer.closed_by_node(timeout=5)
    grown = peak_rss(target) - before
    peer.close()
    assert grown < 15 * MiB, "peak RSS grew by %.0f MB for a %d byte frame" % (
        grown / MiB,
        len(frame),
    )
    assert closed, "the target kept a link that sent string references"
    log = target.wait_log("string reference")
    warnings = [ln for ln in log.splitlines() if "WARNING" in ln and "string reference" in ln]
    assert len(warnings) == 1, log[-2000:]
    assert answers(target)


def test_cbor_tags_with_costly_decoding_are_not_interpreted(cluster):
    """A rational (tag 30) of two 80 KB numbers cost 0.3 s of gcd (quadratic: 64 MB would be
    hours); such tags now reach the application as cbor2.CBORTag, uninterpreted."""
    target = cluster.node("target")
    target.run(
        "GOT = []; PG = port(lambda v: GOT.append([type(v).__name__, getattr(v, 'tag', 0)]))"
    )
    pg = target.ask("PG").partition("#")[2]
    peer = Peer(target.addr, framings=("cbor",))
    big = (1 << (8 * 120000)) - 1
    frames = b"".join(cbor2.dumps([pg, cbor2.CBORTag(30, [big, big - 2])]) for _ in range(5))
    cpu0 = cpu_seconds(target)
    peer.send_raw(frames)
    peer.ping(timeout=30)
    used = cpu_seconds(target) - cpu0
    assert target.ask("len(GOT)") == 5
    assert target.ask("GOT[0]") == ["CBORTag", 30]
    assert used < 1.0, "decoding 5 rationals of %d KB cost %.1f s CPU" % (len(frames) // 5000, used)
    peer.close()


# --------------------------------------------------------------------------- 2. nested forwarding


def _nested_snd(target_id, depth, reply):
    frame = [""]
    for _ in range(depth):
        frame += ["snd", target_id + "#"]
    return frame + ["snd", reply, "nested"]


def test_nested_forwarding_is_bounded_and_names_the_origin(cluster):
    """["", "snd", "target#", "snd", "target#", ...] nested 20,000 deep: before, the target
    recursed, copied the rest of the frame at each level, hit RecursionError and logged a
    traceback per level, naming itself as the sender. Now it is a loop bounded by
    max_forward_depth (8): one log line naming the peer."""
    target = cluster.node("target")
    peer = Peer(target.addr)
    # a shallow relay to ourselves still works (depth 3 <= 8)
    peer.send_frame(_nested_snd("target", 3, "attacker#r"))
    peer.read_frames(lambda f: f == ["r", "nested"])
    log0 = log_size(target)
    rss0 = peak_rss(target)
    frame = _nested_snd("target", 20000, "attacker#r")
    raw = framing.encode_json(frame)
    peer.send_raw(raw)
    peer.ping(timeout=30)
    grown = peak_rss(target) - rss0
    logged = new_log(target, log0)
    assert grown < 20 * MiB, "peak RSS grew by %.0f MB for a %d KB frame" % (
        grown / MiB,
        len(raw) // 1024,
    )
    assert len(logged) < 2000, "%d bytes of log for one frame:\n%s" % (len(logged), logged[:1500])
    assert b"Traceback" not in logged and b"RecursionError" not in logged
    assert b"from attacker nested more than 8 deep" in logged, logged
    assert b"from target" not in logged
    assert answers(target)
    peer.close()


def test_forward_depth_is_a_setting(cluster):
    target = cluster.node("target", max_forward_depth=2)
    peer = Peer(target.addr)
    peer.send_frame(_nested_snd("target", 2, "attacker#r"))
    peer.read_frames(lambda f: f == ["r", "nested"])
    peer.send_frame(_nested_snd("target", 3, "attacker#r"))
    peer.ping()
    target.wait_log("nested more than 2 deep")
    assert peer.frames.count(["r", "nested"]) == 1
    peer.close()


# --------------------------------------------------------------------------- 3. per-node state


def test_invented_node_ids_leave_no_state(cluster):
    """20,000 relays to ports on invented nodes made 20,000 RemoteNode objects that were never
    freed, and a log line each. Now a node that never came up and holds nothing is forgotten
    when it goes down, and the lines about such nodes are rate-limited."""
    target = cluster.node("target")
    peer = Peer(target.addr)
    rss0 = peak_rss(target)
    log0 = log_size(target)
    peer.send_raw(
        b"".join(framing.encode_json(["", "snd", "fake%d#p" % i, "x"]) for i in range(20000))
    )
    peer.ping(timeout=30)
    grown = peak_rss(target) - rss0
    logged = new_log(target, log0)
    assert target.ask("len(node._nodes)") <= 2, target.ask("list(node._nodes)[:5]")
    assert grown < 40 * MiB, "peak RSS grew by %.0f MB" % (grown / MiB)
    # "fakeN is down: no known address" once per invented node was 1.7 MB of log
    assert len(logged) < 5000, "%d bytes of log" % len(logged)
    # a node that was up and went down stays known (known_nodes, node_is_up False)
    peer.close()
    target.run("wait_for(lambda: node_is_up('attacker') is False)")
    assert "attacker" in target.ask("known_nodes()")


def test_unsolicited_addresses_are_bounded_by_max_nodes(cluster):
    """g_found answers nobody asked for, with addresses, for 3,000 invented nodes: the target
    keeps at most max_nodes nodes."""
    target = cluster.node("target", max_nodes=500)
    peer = Peer(target.addr)
    peer.send_raw(
        b"".join(
            framing.encode_json(["", "g_found", "fake%d" % i, ["127.0.0.1:%d" % (1 + i % 60000)]])
            for i in range(3000)
        )
    )
    peer.ping(timeout=30)
    n = target.ask("len(node._nodes)")
    assert n <= 500, n
    assert target.ask("node_is_up('attacker')") is True
    peer.close()


def test_relays_to_unknown_nodes_stop_at_max_nodes(cluster):
    """While invented nodes are being looked up (a seed is configured, so they wait for
    connect_interval), relays to more unknown nodes than max_nodes are dropped with a log
    line; once the lookups timed out, nothing is left."""
    target = cluster.node("target", max_nodes=300, connect_interval=1, seeds=["127.0.0.1:1"])
    peer = Peer(target.addr)
    peer.send_raw(
        b"".join(framing.encode_json(["", "snd", "fake%d#p" % i, "x"]) for i in range(3000))
    )
    peer.ping(timeout=30)
    assert target.ask("len(node._nodes)") <= 300
    target.wait_log("nodes known (max_nodes)")
    target.run("wait_for(lambda: len(node._nodes) <= 2, timeout=10)")
    peer.close()


def test_node_down_costs_what_that_node_held(cluster):
    """With 40,000 monitors from one peer on the target's ports, every other node going down
    scanned all of them (3,000 node-downs: 1.4 s of CPU, 0.03 s now): monitors are indexed by
    node."""
    target = cluster.node("target")
    target.run("PS = [port(lambda *m: None) for _ in range(40000)]", timeout=30)
    names = target.ask("[p.partition('#')[2] for p in PS]", timeout=30)
    peer = Peer(target.addr)
    peer.send_raw(b"".join(framing.encode_json(["", "mon1", name]) for name in names))
    peer.ping(timeout=30)
    assert (
        target.ask("sum(len(p.monitors or ()) for p in map(aemp_green.kernel.lookup_port, PS))")
        == 40000
    )
    target.run(
        """
        import time as _t
        _t0 = _t.process_time()
        for _i in range(3000):
            node.get_node('gone%d' % _i).transport_error('test')
        DT = _t.process_time() - _t0
    """,
        timeout=60,
    )
    dt = target.ask("DT")
    assert dt < 0.3, "3,000 node-downs took %.2f s CPU" % dt
    # and the peer's own node-down frees its monitors
    peer.close()
    target.run("wait_for(lambda: not aemp_green.kernel._remote_monitors)")
    assert (
        target.ask("sum(len(p.monitors or ()) for p in map(aemp_green.kernel.lookup_port, PS))")
        == 0
    )


# --------------------------------------------------------------------------- 4. trace loops


def test_two_trace_subscriptions_do_not_feed_each_other(cluster):
    """Two aemp_green_trace subscriptions from one peer traced each other's trace messages
    until RecursionError, and the failed cleanup escaped into snd() and the link's reader."""
    target = cluster.node("target")
    peer = Peer(target.addr)
    peer.send_frame(["", "aemp_green_trace", "attacker#t1", 1])
    peer.send_frame(["", "aemp_green_trace", "attacker#t2", 1])
    log0 = log_size(target)
    peer.ping("p1")
    peer.ping("p2")
    time.sleep(0.3)  # not a synchronisation: room for a runaway trace loop to show
    peer.ping("p3")
    logged = new_log(target, log0)
    assert b"RecursionError" not in logged and b"Traceback" not in logged, logged[:3000]
    traces = [f for f in peer.frames if f[0] in ("t1", "t2")]
    # each subscriber sees the pings and answers (4 frames per ping), never the other's stream
    assert 0 < len(traces) <= 30, len(traces)
    assert all(
        f[1] == "trace" and f[3] == "attacker" and f[4][0] not in ("t1", "t2") for f in traces
    ), traces[:5]
    assert answers(target)
    peer.close()


def test_trace_and_log_streams_are_bounded(cluster):
    """Each trace or log stream costs the target one message per frame or record: 40
    subscriptions multiplied its work by 40. Now at most max_trace_streams (4 here) of each;
    re-subscribing one port 500 times no longer leaves 500 monitors behind."""
    target = cluster.node("target", max_trace_streams=4)
    peer = Peer(target.addr)
    for _ in range(500):
        peer.send_frame(["", "aemp_green_trace", "attacker#again", 1])
    peer.send_frame(["", "aemp_green_trace", "attacker#again", 0])
    for i in range(40):
        peer.send_frame(["", "aemp_green_trace", "attacker#t%d" % i, 1])
        peer.send_frame(["", "aemp_green.logcatcher._req_catch", "attacker#L%d" % i, 40])
    peer.ping()
    assert target.ask("len(trace._trace_subscribers)") == 4
    assert target.ask("len(aemp_green.logcatcher.subscribers())") == 4
    assert target.ask("sum(map(len, node._nodes['attacker'].monitors.values()))") == 8
    target.wait_log("streams already (max_trace_streams)")
    peer.close()


# --------------------------------------------------------------------------- 5. secure and trace


def test_secure_node_refuses_trace_and_log_streams(cluster):
    """A secure node streamed its traffic trace and its log records to any member."""
    target = cluster.node("target", secure=True)
    peer = Peer(target.addr)
    peer.send_frame(["", "aemp_green_trace", "attacker#t", 1])
    peer.send_frame(["", "aemp_green.logcatcher._req_catch", "attacker#L", logging.DEBUG])
    peer.ping("p1")
    peer.send_frame(["", "kil1", ""])  # makes the target log a warning
    peer.ping("p2")
    target.wait_log("refused 'aemp_green_trace' request from attacker")
    target.wait_log("refused 'aemp_green.logcatcher._req_catch' request from attacker")
    time.sleep(0.3)  # not a synchronisation: room for a late log batch to arrive
    peer.ping("p3")
    leaked = [f for f in peer.frames if f[0] in ("t", "L")]
    assert not leaked, leaked[:3]
    peer.close()


def test_allow_trace_lets_a_secure_node_stream_its_trace(cluster):
    target = cluster.node("target", secure=True, allow_trace=True)
    peer = Peer(target.addr)
    peer.send_frame(["", "aemp_green_trace", "attacker#t", 1])
    peer.ping("p1")
    peer.read_frames(lambda f: f[0] == "t" and f[1] == "trace")
    peer.send_frame(["", "eval", "1+1", "attacker#e"])  # secure still refuses code
    target.wait_log("refused 'eval' request from attacker")
    peer.close()


# --------------------------------------------------------------------------- 6. log floods


def test_malformed_requests_log_one_line_per_reason(cluster):
    """3,000 malformed requests wrote a traceback each (about 1 KB of log per 6 bytes in).
    Now: at most log_rate_lines lines per peer and reason, no traceback, control characters
    from the wire escaped. (A node ID with control characters is refused at the greeting:
    tests/test_handshake.py.)"""
    target = cluster.node("target", log_rate_lines=3)
    evil = "evil/1"
    peer = Peer(target.addr, nodeid=evil)
    log0 = log_size(target)
    bad = [
        ["", "mon1", 5],
        ["", 7, "x"],
        [["\x1b[2J"], "x"],
        ["", "no.such.module.f"],
        ["", "kil1", ""],
    ]
    data = b"".join(framing.encode_json(f) for f in bad) * 600
    peer.send_raw(data)
    peer.ping(timeout=30)
    logged = new_log(target, log0)
    mine = [
        line for line in logged.splitlines() if b"evil" in line and b"aemp_green.kernel" in line
    ]
    assert b"Traceback" not in logged
    assert len(logged) < 6000, "%d bytes of log for %d bytes in:\n%s" % (
        len(logged),
        len(data),
        logged[:3000],
    )
    assert all(b"\x1b" not in line and b"\x07" not in line for line in mine), mine
    assert sum(b"error processing node message" in line for line in mine) == 3, mine
    assert any(b"further lines like this suppressed" in line for line in mine)
    assert b"\x1b" not in logged and b"\\x1b[2J" in logged  # the port name from the wire
    assert answers(target)
    peer.close()


# --------------------------------------------------------------------------- the helper


def test_ratelog_summarises_what_it_suppressed(caplog):
    from aemp_green._ratelog import RateLog, esc

    now = [0.0]
    rl = RateLog(
        logging.getLogger("ratelog_test"), lines=2, interval=10, max_keys=3, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="ratelog_test"):
        logged = [
            rl.warning(("p", "bad"), "bad %s from %s", esc("x\x1b"), "p\x07") for _ in range(7)
        ]
        assert logged == [True, True, False, False, False, False, False]
        now[0] = 11
        assert rl.warning(("p", "bad"), "bad again")
        for i in range(10):  # the table of keys stays bounded
            rl.info(("q%d" % i, "x"), "key %d", i)
    texts = [r.getMessage() for r in caplog.records]
    assert texts[0] == r"bad 'x\x1b' from p\x07"
    assert texts[1].endswith("(further lines like this suppressed for 10 s)")
    assert texts[2] == "bad again (5 more like this suppressed in the last 10 s)"
    assert len(rl._keys) == 3


def _relay_chain(a, b, depth, reply):
    frame = [""]
    for i in range(depth):
        frame += ["snd", (b if i % 2 == 0 else a) + "#"]
    return frame + ["snd", reply, "done"]


@pytest.mark.parametrize("bare", [False, True], ids=["node_port_ids", "bare_node_ids"])
def test_relay_chain_between_two_nodes_is_cut(cluster, bare):
    """["", "snd", "B#", "snd", "A#", "snd", "B#", ...] sent to A: A and B relayed it back and
    forth, each hop a new request re-sending the rest of the frame: quadratic work (3,000
    hops in 32 KB: 1.3 s of CPU; 128 KB: 13 s). Now the first hop refuses a request naming more
    node ports than max_forward_depth, with one log line naming the peer."""
    b = cluster.seed("B")
    a = cluster.node("A", seeds=[b.addr])
    a.run("wait_for(lambda: node_is_up('B'))")
    peer = Peer(a.addr)
    frame = _relay_chain("A", "B", 3000, "attacker#r")
    if bare:
        frame = [x[:-1] if x in ("A#", "B#") else x for x in frame]
    raw = framing.encode_json(frame)
    cpu0 = cpu_seconds(a) + cpu_seconds(b)
    peer.send_raw(raw)
    peer.ping(timeout=60)
    a.wait_log("relaying more than 8 node-port requests dropped")
    used = cpu_seconds(a) + cpu_seconds(b) - cpu0
    assert used < 0.5, "%.1f s CPU for a %d KB frame" % (used, len(raw) // 1024)
    assert ["r", "done"] not in peer.frames
    # a short chain still works: A -> B -> A -> attacker
    peer.send_frame(
        _relay_chain("A", "B", 2, "attacker#r")
        if not bare
        else [
            x.rstrip("#") if x in ("A#", "B#") else x
            for x in _relay_chain("A", "B", 2, "attacker#r")
        ]
    )
    peer.read_frames(lambda f: f == ["r", "done"])
    peer.close()


@pytest.mark.parametrize("tag", [4, 5, 30, 35, 36])
def test_cbor_costly_tags_come_out_uninterpreted(tag):
    value = {4: [-2, 12345], 5: [-1, 3], 30: [1, 3], 35: "(a+)+$", 36: "Subject: x\n\nbody"}[tag]
    frame = framing.CborDecoder().feed(cbor2.dumps(["p", cbor2.CBORTag(tag, value)]))
    assert frame == [["p", cbor2.CBORTag(tag, value)]]


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("82")
        + b"\x40"
        + bytes.fromhex("d9010082")
        + b"\x43abc"
        + bytes.fromhex("d81900"),
        bytes.fromhex("82") + b"\x40" + bytes.fromhex("d81900"),
        bytes.fromhex("82")
        + b"\x40"
        + bytes.fromhex("d81c82")
        + b"\x41a"
        + bytes.fromhex("d81d00"),
    ],
    ids=["stringref_in_namespace", "stringref_alone", "shared_ref"],
)
def test_cbor_references_are_refused(raw):
    from aemp_green.exceptions import RemoteProtocolError

    with pytest.raises(RemoteProtocolError, match="refused"):
        framing.CborDecoder().feed(raw)


def test_cbor_shareable_alone_is_its_value():
    raw = bytes.fromhex("82") + b"\x40" + bytes.fromhex("d81c82") + b"\x41a" + b"\x41b"
    assert framing.CborDecoder().feed(raw) == [["", ["a", "b"]]]
