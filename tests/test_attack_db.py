"""Attacks on the replicated database by a member (a peer holding the secret), real processes.

docs/security.md: a holder of the secret is a full member and may write the database, but it
must not be able to exhaust a node, freeze it, or poison the database for everybody. Each test
starts a seed (``target``, a global node) and a legitimate node (``legit``, its slave), attacks
with ``netutil.RawPeer`` (a raw AEMP client that holds the secret and sends hostile ``g_*``
frames), and then checks that the target still answers ``legit`` (a database round trip with a
deadline), that the bad input was logged, and what was kept.
"""

import math
import socket
import time

from aemp_green.wire import framing
from aemp_green.wire.handshake import Handshake
from netutil import SECRET, RawPeer, black_hole
import pytest

# slow (docs/testing.md): real processes, ~15 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

HELPERS = """
import aemp_green.globaldb.sync as G
PROBE = [0]
def probe(timeout=10):
    # a database round trip through the master: our write, then the master's answer has it
    PROBE[0] += 1
    n = PROBE[0]
    db_set('probe', 'k', n)
    wait_for(lambda: db_family('probe', timeout=timeout) == {'k': n}, timeout, 'probe %d' % n)
"""


class Target:
    """The attacked seed ``t`` and the legitimate node ``l`` (its slave)."""

    def __init__(self, cluster, tcfg=None, lcfg=None):
        self.cluster = cluster
        self.t = cluster.seed("target", **(tcfg or {}))
        self.l = cluster.node("legit", seeds=[self.t.addr], **(lcfg or {}))
        self.t.run(HELPERS)
        self.l.run(HELPERS + "\nwait_for(lambda: G.master() == 'target', 15)", timeout=20)
        self.responsive()

    def responsive(self, timeout=10):
        """``legit`` gets an answer from the target through the database within ``timeout``."""
        self.l.run("probe(%s)" % timeout, timeout=timeout + 5)

    def attacker(self, nodeid="attacker", framings=("cbor",)):
        peer = RawPeer(self.t.addr, nodeid=nodeid, framings=framings)
        start(peer)
        return peer


def start(peer):
    est = peer.handshake()
    peer.decoder = framing.codec(est.recv_framing)[1]()
    return peer


def read_frames(peer, until, timeout=10):
    """Frames from the node until one satisfies ``until(frame)``; returns them all."""
    got = []
    deadline = time.monotonic() + timeout
    data, peer.rbuf = peer.rbuf, b""
    while True:
        for f in peer.decoder.feed(data) if data else ():
            got.append(f)
            if until(f):
                return got
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no expected frame within %s s; got %r" % (timeout, got[-5:]))
        peer.sock.settimeout(left)
        try:
            data = peer.sock.recv(1 << 20)
        except socket.timeout:
            data = b""
            continue
        if not data:
            raise AssertionError("connection closed; got %r" % (got[-5:],))


def sync(peer, rid="sync"):
    """Everything the node sent before the answer to a request sent now (the link is ordered)."""
    peer.send_frame(["", "g_db_keys", "nosuchfamily", rid])
    return read_frames(peer, lambda f: f[:3] == ["", "g_reply", rid])


def wait_gone(c, nodeid):
    c.run("wait_for(lambda: not node_is_up(%r), 15)" % nodeid, timeout=20)


# --------------------------------------------------------------------------- finding 1


def test_watched_families_are_bounded_and_forgotten_when_the_watcher_goes(cluster):
    """g_mon1 for any number of families kept a set per family for ever, and every node-down
    went through all of them. Now a node watches at most ``db_max_watches`` families (more
    are refused with a log line, no g_chg1), and they are forgotten when it goes."""
    tg = Target(cluster, tcfg=dict(db_max_watches=100))
    peer = tg.attacker()
    for i in range(300):
        peer.send_frame(["", "g_mon1", "fam%d" % i])
    frames = sync(peer)
    assert len([f for f in frames if f[1] == "g_chg1"]) == 100
    tg.t.wait_log("db_max_watches")
    assert tg.t.ask("len(G._remote_mons)") == 100
    peer.close()
    wait_gone(tg.t, "attacker")
    assert tg.t.ask("len(G._remote_mons)") == 0  # not 300 empty sets
    tg.responsive()


def test_node_downs_of_nodes_that_held_nothing_cost_nothing(cluster):
    """A node-down went through every watched family and every key of the database, also for
    a node that never wrote anything: a peer that watched 10,000 families and named 2,000
    unreachable global nodes (each dialled, each going down) froze the target. Now each of
    those node-downs costs what that node held: nothing."""
    tg = Target(cluster, tcfg=dict(connect_interval=0.5, db_max_watches=20000))
    tg.l.run(
        """
        for i in range(20000):
            db_set('big', 'k%d' % i, i)
            if i % 1000 == 999:
                gevent.sleep(0)
    """,
        timeout=30,
    )
    tg.t.run("wait_for(lambda: len(db_keys('big', timeout=5)) == 20000, 20)", timeout=25)
    peer = tg.attacker()
    peer.send_frame(["", "g_global"])  # a global node may name other global nodes
    for i in range(10000):
        peer.send_frame(["", "g_mon1", "fam%d" % i])
    sync(peer)
    fakes = ["127.%d.%d.1:9" % (i // 200, i % 200) for i in range(2000)]  # refused at once
    peer.send_frame(["", "g_upd", "'g", {f: None for f in fakes}])
    # the target dials them all; each goes down (connect refused, then the connect timeout)
    tg.t.run(
        """
        FAKES = %r
        wait_for(lambda: all(n in node.known_nodes() and not node.get_node(n).connecting
                             and not node_is_up(n) for n in FAKES), 15)
    """
        % fakes,
        timeout=25,
    )
    tg.responsive(timeout=5)
    peer.close()
    wait_gone(tg.t, "attacker")
    tg.responsive(timeout=5)
    assert tg.t.ask("len(G._remote_mons)") == 0


def test_keys_per_source_are_bounded(cluster):
    """A node holds at most ``db_max_keys`` keys on a global node: the others are dropped with
    one log line, and what it held goes when it goes."""
    tg = Target(cluster, tcfg=dict(db_max_keys=50))
    peer = tg.attacker()
    peer.send_frame(["", "g_upd", "many", {"k%03d" % i: i for i in range(100)}])
    peer.send_frame(["", "g_upd", "more", {"x": 1}])
    sync(peer)
    tg.t.wait_log("db_max_keys")
    assert tg.l.ask("db_family('many', timeout=5)") == {"k%03d" % i: i for i in range(50)}
    assert tg.l.ask("db_family('more', timeout=5)") == {}
    peer.send_frame(["", "g_upd", "many", None, ["k000"]])  # room for one more
    peer.send_frame(["", "g_upd", "more", {"x": 1}])
    sync(peer)
    assert tg.l.ask("db_family('more', timeout=5)") == {"x": 1}
    peer.close()
    wait_gone(tg.t, "attacker")
    assert tg.l.ask("db_family('many', timeout=5)") == {}
    tg.responsive()


# --------------------------------------------------------------------------- finding 2


def test_one_update_naming_20000_fake_global_nodes_does_not_freeze_the_node(cluster):
    """One g_upd of ``'g`` naming 20,000 made-up global nodes: each was dialled, found no
    address and went down, and each node-down scanned the whole database (which held the
    20,000 names): the target froze. Now a global node without a known address is not dialled,
    a node-down costs what that node held, and a node that is not a global node may only name
    itself in ``'g`` (the rest is dropped with a log line)."""
    tg = Target(cluster)
    slave = tg.attacker("attacker_slave")
    slave.send_frame(["", "g_upd", "'g", {"fake/%d" % i: None for i in range(20000)}])
    sync(slave)
    tg.t.wait_log("only a global node may set another node's entry")
    assert tg.l.ask("db_family(\"'g\", timeout=5)") == {"target": None}

    peer = tg.attacker()
    peer.send_frame(["", "g_global"])
    peer.send_frame(["", "g_upd", "'g", {"fake/%d" % i: None for i in range(20000)}])
    sync(peer)
    tg.responsive(timeout=5)
    assert tg.t.ask("len(node.known_nodes())") < 10  # nothing dialled, nothing kept for them
    assert len(tg.l.ask("db_family(\"'g\", timeout=5)")) == 20001
    peer.close()
    wait_gone(tg.t, "attacker")
    tg.responsive(timeout=5)
    assert tg.l.ask("db_family(\"'g\", timeout=5)") == {"target": None}


# --------------------------------------------------------------------------- finding 3


def test_a_write_stamp_far_in_the_future_does_not_pin_a_key(cluster):
    """A peer's stamp of 1e308 (or any stamp where adding 1e-6 changes nothing) made its value
    win for ever. Now a stamp more than ``db_stamp_skew`` ahead of the target's clock is
    replaced by the target's own (one log line): the next write wins as usual."""
    tg = Target(cluster)
    peer = tg.attacker()
    peer.send_frame(["", "g_global"])
    peer.send_frame(
        [
            "",
            "g_upd",
            "fam",
            {"k": "pinned", "k2": "pinned"},
            None,
            {"k": 1e308, "k2": time.time() + 1e6},
        ]
    )
    sync(peer)
    assert tg.l.ask("db_family('fam', timeout=5)") == {"k": "pinned", "k2": "pinned"}
    tg.t.wait_log("more than db_stamp_skew")
    tg.l.run("db_set('fam', 'k', 'mine')\ndb_set('fam', 'k2', 'mine')")
    tg.l.run(
        "wait_for(lambda: db_family('fam', timeout=5) == {'k': 'mine', 'k2': 'mine'}, 10)",
        timeout=15,
    )
    # and the attacker's later write (stamped now) wins again, as any write would
    peer.send_frame(["", "g_upd", "fam", {"k": "again"}, None, {"k": 1e308}])
    tg.l.run("wait_for(lambda: db_family('fam', timeout=5)['k'] == 'again', 10)", timeout=15)


# --------------------------------------------------------------------------- finding 4

BAD_VALUES_LOCAL = """
import math
def deep(n):
    v = 1
    for _ in range(n):
        v = [v]
    return v
def refused(value):
    try:
        db_set('v', 'bad', value)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__
    return None
RESULTS = [refused(v) for v in (10 ** 5000, -(2 ** 64), float('nan'), float('inf'), b'\\xff',
                                {1: 'x'}, {'a': {1, 2}}, deep(600), 'x' * (2 << 20), object())]
"""


def test_values_that_cannot_be_encoded_are_refused_locally_and_from_peers(cluster):
    """An int of more than 4,300 digits (Python's int/str limit) made encoding fail: every
    write to its key and every read of its family failed. NaN, infinity, bytes (on a json link),
    non-str dict keys and deep nesting poison encoding too. Now ``db_set`` raises
    ``TypeError``/``ValueError`` for them, and a global node drops them (log line) when a peer
    sends them; the family stays readable everywhere, also over a json link."""
    tg = Target(cluster, lcfg=dict(framing_format=["json"]))
    tg.l.run(BAD_VALUES_LOCAL)
    assert tg.l.ask("RESULTS") == [
        "ValueError",
        "ValueError",
        "ValueError",
        "ValueError",
        "TypeError",
        "TypeError",
        "TypeError",
        "ValueError",
        "ValueError",
        "TypeError",
    ]
    assert tg.l.ask("G._local_db.get('v')") is None

    deep = 1
    for _ in range(506):
        deep = [deep]
    peer = tg.attacker()
    peer.send_frame(["", "g_slave", {"w": {"big": -(10**30), "ok2": [1, {"a": None}]}}])
    peer.send_frame(
        [
            "",
            "g_upd",
            "v",
            {
                "big": 10**5000,
                "nan": math.nan,
                "inf": math.inf,
                "bytes": b"\xff\x00",
                "deep": deep,
                "ok": 1,
            },
        ]
    )
    sync(peer)
    tg.t.wait_log("database write from attacker")
    # one line for the five bad values (rate-limited), not one each
    assert tg.t.log_text().count("database write from attacker") == 1
    assert tg.l.ask("db_family('v', timeout=5)") == {"ok": 1}
    assert tg.l.ask("db_family('w', timeout=5)") == {"ok2": [1, {"a": None}]}
    tg.l.run(
        """
        SEEN = []
        W = db_mon('v', lambda db, *a: SEEN.append(dict(db)))
        wait_for(lambda: SEEN, 10)
        db_set('v', 'mine', 2)
        wait_for(lambda: db_family('v', timeout=5) == {'ok': 1, 'mine': 2}, 10)
    """,
        timeout=15,
    )
    assert tg.l.ask("SEEN[0]") == {"ok": 1}
    tg.responsive()


# --------------------------------------------------------------------------- finding 5


def test_g_found_is_only_taken_from_the_master_for_our_own_g_find(cluster):
    """Any peer could tell a node where another node listens (g_found), and the node dialled
    every address it was told: a member could make it connect anywhere (here: a listener of
    ours). Now only the master's answer to a pending g_find counts."""
    tg = Target(cluster)
    honeypot = socket.socket()
    honeypot.bind(("127.0.0.1", 0))
    honeypot.listen(16)
    honeypot.settimeout(0)
    trap = "127.0.0.1:%d" % honeypot.getsockname()[1]
    try:
        peer = RawPeer(tg.l.addr, nodeid="attacker", framings=("json",))
        start(peer)
        peer.send_frame(["", "g_found", "ghost", [trap] * 1000])
        peer.send_frame(["", "g_found", "target", [trap]])
        tg.l.wait_log("not the answer to a g_find of ours")
        tg.l.run(
            """
            GONE = []
            mon('ghost#p', lambda *why: GONE.append(list(why)))
            snd('ghost#p', 'hello')
            wait_for(lambda: GONE, 10)
        """,
            timeout=15,
        )
        assert tg.l.ask("GONE") == [["transport_error", "ghost", "no known address"]]
        try:
            conn, _ = honeypot.accept()
            conn.close()
            raise AssertionError("the node dialled the address a peer gave it")
        except BlockingIOError:
            pass
        tg.responsive()
    finally:
        honeypot.close()


def test_g_found_from_the_master_is_bounded(cluster):
    """Even the master's g_found is taken with at most ``max_node_addrs`` addresses, each a
    ``host:port`` of at most ``max_addr_len`` characters (a 2 MB list was kept and every
    address dialled)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    lsock.settimeout(20)
    evil = "127.0.0.1:%d" % lsock.getsockname()[1]
    # the addresses it is told: a listener that answers no handshake, so the dials wait and
    # the addresses stay known
    with black_hole(64) as hole:
        try:
            victim = cluster.node("victim", seeds=[evil], max_node_addrs=8, connect_interval=10)
            conn, _ = lsock.accept()
            peer = RawPeer.__new__(RawPeer)
            peer.addr, peer.sock, peer.rbuf, peer.framing = evil, conn, b"", None
            # an accepting peer names the connector's address as it sees it (docs/security.md)
            peer.hs = Handshake(
                nodeid="evilseed",
                secret=SECRET,
                framings=("json",),
                peeraddr="%s:%d" % conn.getpeername()[:2],
            )
            start(peer)
            victim.run(
                "import aemp_green.globaldb.sync as G\nwait_for(lambda: G.master() == 'evilseed', 15)",
                timeout=20,
            )
            victim.exec("snd('ghost#p', 'hello')")
            read_frames(peer, lambda f: f[:3] == ["", "g_find", "ghost"])
            good = [hole] * 20
            bad = ["nohost", "x" * 300 + ":1", 5, None, "a:b:c:d", "*:1", "127.0.0.1:99999"]
            peer.send_frame(["", "g_found", "ghost", bad + good])
            victim.wait_log("addresses left out")
            assert victim.ask("node.get_node('ghost').addrs") == good[:8]
            peer.close()
        finally:
            lsock.close()
