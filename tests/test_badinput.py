"""Bad input against a live node: raw sockets from this process attack a child node's listener.

docs/protocol.md#refused-handshakes: "A refused or failed handshake closes the socket, is logged
with the reason, and never disturbs other connections." Each test starts a target node and a
legitimate node connected to it, sends 50 numbered messages over that link, attacks, and then checks
that the attack connection was closed (or the bad message ignored), the reason was logged, and the
legitimate link is the very same connection, still carrying messages both ways with nothing lost.

The test side speaks AEMP with ``aemp_green.wire.handshake.Handshake`` (sans-IO) over plain blocking
sockets (``netutil.RawPeer``); this process never configures a node.
"""

import socket
import time

import cbor2
import pytest

from aemp_green.wire.handshake import hmac_token, tls_token
from netutil import SECRET, RawPeer, read_until_closed

# slow (docs/testing.md): real processes, ~35 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

MAX_FRAME = 65536


class Target:
    """The attacked node ``target`` and the legitimate node ``legit`` linked to it."""

    def __init__(self, cluster, **tcfg):
        self.t = cluster.seed("target", max_frame=MAX_FRAME, **tcfg)
        self.l = cluster.node("legit", seeds=[self.t.addr])
        self.addr = self.t.addr
        self.l.run("wait_for(lambda: node_is_up('target'))", timeout=15)
        self.t.run("""
            wait_for(lambda: node_is_up('legit'))
            TSEQ = []
            PT = port(lambda tag, i: TSEQ.append(i))
            PR = port(lambda *m: emit("R_got", repr(list(m))))
            L0 = node._nodes['legit'].link
        """)
        self.l.run("""
            LL0 = node._nodes['target'].link
            PL = port(lambda *m: emit("L_got", repr(list(m))))
        """)
        self.pt = self.t.ask("PT")
        self.pr = self.t.ask("PR")
        self.pr_name = self.pr.partition("#")[2]
        self.pl = self.l.ask("PL")
        self.send_seq(0, 50)

    def send_seq(self, lo, hi):
        self.l.run("for i in range(%d, %d): snd(%r, 'seq', i)" % (lo, hi, self.pt))
        self.t.run("wait_for(lambda: len(TSEQ) >= %d)" % hi)

    def check_intact(self):
        """The target runs, the legit link is the same connection, and nothing was lost."""
        assert self.t.alive, self.t.log_tail()
        self.send_seq(50, 100)
        assert self.t.ask("TSEQ") == list(range(100))
        assert self.t.ask("node._nodes['legit'].link is L0 and not L0.closed") is True
        assert self.l.ask("node._nodes['target'].link is LL0 and not LL0.closed") is True
        self.t.run("snd(%r, 'pong', 'ü')" % self.pl)
        assert self.l.expect("L_got") == [repr(["pong", "ü"])]
        assert self.t.ask("sorted(up_nodes())") == ["legit"]

    def expect_closed(self, sock, reason, timeout=10):
        closed, data = read_until_closed(sock, timeout)
        assert closed, "the target did not close the attack connection within %s s" % timeout
        self.t.wait_log(reason)
        return data


@pytest.fixture
def target(cluster):
    return Target(cluster)


def raw_connect(addr):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def greeting_line(
    nodeid="attacker", version="1", auth="hmac_sha3_512", framing="json", protocol="aemp"
):
    return (
        "%s;%s;%s;%s;%s;mproto=1;gproto=1\n%s\n"
        % (protocol, version, nodeid, auth, framing, "n" * 88)
    ).encode()


# --------------------------------------------------------------------------- greeting


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"GET / HTTP/1.0\r\n\r\n", "unparsable greeting"),
        (greeting_line(protocol="smtp"), "unparsable greeting, expected 'aemp', got 'smtp'"),
        (greeting_line(version="2"), "version mismatch (we: 1, they: 2)"),
        (greeting_line(version="0"), "version mismatch (we: 1, they: 0)"),
        (b"\xff\xfe;1;x;hmac_sha3_512;json\nnonce\n", "not UTF-8"),
        (greeting_line(nodeid=""), "empty node id"),
        (b"aemp;1;" + b"x" * 5000, "greeting line too long"),
        (b"aemp;1;attacker;hmac_sha3_512;json\n" + b"n" * 5000, "greeting line too long"),
    ],
    ids=[
        "not_aemp",
        "wrong_protocol",
        "version_2",
        "version_0",
        "not_utf8",
        "empty_nodeid",
        "oversized_line1",
        "oversized_nonce",
    ],
)
def test_bad_greeting_closes_only_that_connection(target, data, reason):
    sock = raw_connect(target.addr)
    try:
        sock.sendall(data)
        got = target.expect_closed(sock, reason)
        assert got.startswith(b"aemp;1;target;"), got[:100]  # its greeting, nothing more
        assert got.count(b"\n") == 2, got
    finally:
        sock.close()
    target.check_intact()


def test_wrong_secret_is_refused(target):
    peer = RawPeer(target.addr, secret="not-the-secret")
    try:
        peer.greeting()
        peer.send_raw(peer.hs.data_to_send())  # our auth line, made with the wrong secret
        target.expect_closed(peer.sock, "authentication failure/shared secret mismatch")
    finally:
        peer.close()
    assert target.t.ask("node_is_up('attacker')") in (None, False)
    target.check_intact()


def test_wrong_secret_gets_no_auth_line_from_the_accepting_node(target):
    """The accepting node proves the secret only to a connector that proved it first
    (docs/security.md, "Relayed handshakes"): a peer whose auth line is wrong gets the node's
    greeting and then the close, never the node's own auth line (a token it could relay)."""
    peer = RawPeer(target.addr, secret="not-the-secret")
    try:
        ours = peer.hs.data_to_send()
        l1, l2 = peer.node_greeting()
        peer.hs.receive_data(l1 + b"\n" + l2 + b"\n")
        peer.send_raw(ours + peer.hs.data_to_send())  # greeting + wrong auth line in one write
        closed, data = read_until_closed(peer.sock)
        assert closed and data == b"" and peer.rbuf == b"", (closed, data, peer.rbuf)  # no token
        target.t.wait_log(
            lambda t: "authentication failure/shared secret mismatch" in t,
            what="the refusal logged",
        )
    finally:
        peer.close()
    target.check_intact()


def _auth_line_variants():
    """(id, make(peer) -> auth line bytes, log reason) for auth lines the target must refuse."""

    def with_framing(framing):
        def make(peer):
            method, token, _ = peer.hs.data_to_send().decode().rstrip("\n").split(";")
            return ("%s;%s;%s\n" % (method, token, framing)).encode()

        return make

    def tls_sha(peer):
        l1, l2 = peer.hs.local_greeting
        p1, p2 = peer.hs.peer_greeting
        return ("tls_sha3_512;%s;json\n" % tls_token(l1, l2, p1, p2)).encode()

    def hmac_swapped(peer):  # the token the target would send, replayed back to it
        l1, l2 = peer.hs.local_greeting
        p1, p2 = peer.hs.peer_greeting
        return ("hmac_sha3_512;%s;json\n" % hmac_token(SECRET, p1, p2, l1, l2)).encode()

    return [
        (
            "unknown_method",
            lambda peer: b"foo_auth;abcdef;json\n",
            "fatal, selected unsupported rcv auth method",
        ),
        (
            "cleartext_without_tls",
            lambda peer: b"cleartext;%s;json\n" % SECRET.encode().hex().encode(),
            "cleartext: auth method",
        ),
        ("tls_anon_without_tls", lambda peer: b"tls_anon;;json\n", "tls_anon: auth method"),
        ("tls_sha3_512_without_tls", tls_sha, "tls_sha3_512: auth method"),
        ("reflected_token", hmac_swapped, "authentication failure/shared secret mismatch"),
        ("unparsable", lambda peer: b"garbage\n", "unparsable auth line"),
        ("unusable_framing", with_framing("storable"), "storable: unusable remote framing"),
        ("oversized", lambda peer: b"hmac_sha3_512;" + b"a" * 5000, "auth line too long"),
    ]


@pytest.mark.parametrize(
    "make,reason", [v[1:] for v in _auth_line_variants()], ids=[v[0] for v in _auth_line_variants()]
)
def test_bad_auth_line_is_refused(target, make, reason):
    peer = RawPeer(target.addr)
    try:
        peer.greeting()
        line = make(peer)
        peer.hs.data_to_send()  # drop our real auth line
        peer.send_raw(line)
        target.expect_closed(peer.sock, reason)
    finally:
        peer.close()
    assert target.t.ask("node_is_up('attacker')") in (None, False)
    target.check_intact()


@pytest.mark.parametrize(
    "hs_kwargs,reason",
    [
        (
            dict(auth_accept=("foo_method", "bar_method")),
            "foo_method,bar_method: no common auth type supported",
        ),
        (
            dict(auth_accept=("tls_anon", "cleartext")),
            "tls_anon,cleartext: no common auth type supported",
        ),
        (dict(framings=("storable",)), "no common framing method supported"),
    ],
    ids=["unknown_auth_methods", "tls_only_methods_without_tls", "no_common_framing"],
)
def test_hopeless_greeting_is_refused(target, hs_kwargs, reason):
    peer = RawPeer(target.addr, **hs_kwargs)
    try:
        peer.send_raw(peer.hs.data_to_send())
        data = target.expect_closed(peer.sock, reason)
        assert data.count(b"\n") == 2, data  # the target's greeting, and no auth line
    finally:
        peer.close()
    target.check_intact()


def test_echo_attack(target):
    """Sending the node's own two greeting lines back (docs/protocol.md#greeting-checks)."""
    sock = raw_connect(target.addr)
    try:
        buf = b""
        while buf.count(b"\n") < 2:
            chunk = sock.recv(4096)
            assert chunk, buf
            buf += chunk
        assert buf.count(b"\n") == 2
        sock.sendall(buf)
        target.expect_closed(sock, "authentication error, echo attack?")
    finally:
        sock.close()
    target.check_intact()


def test_self_connection_is_refused(target):
    peer = RawPeer(target.addr, nodeid="target")
    try:
        peer.send_raw(peer.hs.data_to_send())
        data = target.expect_closed(peer.sock, "I refuse to talk to myself")
        assert data.count(b"\n") == 2, data
    finally:
        peer.close()
    target.check_intact()


def test_second_connection_of_a_connected_node_is_refused(target):
    """A connection claiming to be ``legit`` (which is connected) is closed at its greeting even
    with the right secret; the real ``legit`` link stays (docs/protocol.md#greeting-checks, item
    5)."""
    peer = RawPeer(target.addr, nodeid="legit")
    try:
        peer.send_raw(peer.hs.data_to_send())
        target.expect_closed(peer.sock, "legit already connected, not connecting again.")
    finally:
        peer.close()
    target.check_intact()


def test_silent_and_slow_clients_time_out(cluster):
    """The handshake deadline is ``monitor_timeout``: a client that sends nothing, or dribbles
    a greeting, is closed after it; meanwhile the legit link is untouched."""
    tgt = Target(cluster, monitor_timeout=1.5)
    silent = raw_connect(tgt.addr)
    slow = raw_connect(tgt.addr)
    try:
        t0 = time.monotonic()
        data = b"aemp;1;slowpoke;hmac_sha3_512;json\n"
        closed = False
        for i in range(len(data)):  # one byte every 0.1 s: always "active", never done
            try:
                slow.sendall(data[i : i + 1])
            except OSError:
                closed = True
                break
            closed, _ = read_until_closed(slow, 0.1)
            if closed:
                break
        assert closed, "a dribbling client was not cut off"
        assert read_until_closed(silent, 5)[0]
        elapsed = time.monotonic() - t0
        assert elapsed < 1.5 + 2, elapsed
        tgt.t.wait_log(lambda text: text.count("handshake timeout") >= 2, what="2 timeouts")
    finally:
        silent.close()
        slow.close()
    tgt.check_intact()


BUG_LINE_MAX = (
    "BUG: the line_max setting (config.settings) is validated but never used: transport.make_handshake() "
    "does not pass it to Handshake(max_line=...) and connect.accept/dial call run_handshake() "
    "with its default max_line=4096"
)


def test_line_max_setting_limits_greeting_lines(cluster):
    """``line_max`` (aemp_green's name for Perl's ``rbuf_max``) bounds a handshake line."""
    tgt = Target(cluster, line_max=300)
    peer = RawPeer(tgt.addr, nodeid="n" * 400)  # a valid but 400+ byte greeting line
    try:
        peer.send_raw(peer.hs.data_to_send())
        tgt.expect_closed(peer.sock, "greeting line too long", timeout=3)
    finally:
        peer.close()
    tgt.check_intact()


def test_many_bad_connections_at_once(target):
    socks = [raw_connect(target.addr) for _ in range(40)]
    try:
        for i, s in enumerate(socks):
            s.sendall(
                [
                    b"junk\n\n",
                    greeting_line(version="9"),
                    b"x" * 5000,
                    greeting_line(nodeid="target"),
                ][i % 4]
            )
        for s in socks:
            assert read_until_closed(s, 10)[0]
    finally:
        for s in socks:
            s.close()
    target.check_intact()


# --------------------------------------------------------------------------- data phase


def _encode(framing, obj):
    if framing == "json":
        import json

        return json.dumps(obj).encode()
    return cbor2.dumps(obj)


def _established_peer(target, framing):
    peer = RawPeer(target.addr, framings=(framing,))
    est = peer.handshake()
    assert est.send_framing == framing
    target.t.run("wait_for(lambda: node_is_up('attacker'))")
    return peer


def _bad_data_variants():
    return [
        (
            "garbage",
            lambda f, pr: b"\x00\xffnot a frame at all" if f == "json" else b"\xff\xff\xff",
            "protocol error, dropping connection",
        ),
        ("not_an_array", lambda f, pr: _encode(f, {"a": 1}), "frame is not an array"),
        ("string_frame", lambda f, pr: _encode(f, "just a string"), "frame is not an array"),
        ("huge_frame", lambda f, pr: _encode(f, [pr, "x" * (MAX_FRAME + 10)]), "frame larger than"),
        # the start of a frame that announces (cbor) or needs (json) more than max_frame
        (
            "huge_incomplete_frame",
            lambda f, pr: _encode(f, [pr, "x" * (MAX_FRAME * 2)])[: MAX_FRAME + 100],
            "frame larger than",
        ),
    ]


@pytest.mark.parametrize("framing", ["json", "cbor"])
@pytest.mark.parametrize(
    "make,reason", [v[1:] for v in _bad_data_variants()], ids=[v[0] for v in _bad_data_variants()]
)
def test_bad_frame_drops_only_that_connection(target, framing, make, reason):
    """Garbage, a non-array frame, or a frame beyond ``max_frame`` after a good handshake: the
    frames before it are delivered, then that connection (only) is closed and logged."""
    peer = _established_peer(target, framing)
    try:
        peer.send_frame([target.pr_name, "pre", 1])
        assert target.t.expect("R_got") == [repr(["pre", 1])]
        peer.send_raw(make(framing, target.pr_name))
        target.expect_closed(peer.sock, reason)
    finally:
        peer.close()
    target.t.run("wait_for(lambda: not node_is_up('attacker'))")
    target.check_intact()
    assert [i for i in target.t.backlog if i[0] == "R_got"] == []


@pytest.mark.parametrize("framing", ["json", "cbor"])
def test_truncated_frame_then_eof(target, framing):
    peer = _established_peer(target, framing)
    try:
        peer.send_frame([target.pr_name, "pre", 2])
        whole = _encode(framing, [target.pr_name, "truncated", "y" * 100])
        peer.send_raw(whole[: len(whole) // 2])
        assert target.t.expect("R_got") == [repr(["pre", 2])]
        peer.sock.shutdown(socket.SHUT_WR)
        target.expect_closed(peer.sock, "attacker is down: Unexpected end-of-file")
    finally:
        peer.close()
    target.check_intact()
    assert [i for i in target.t.backlog if i[0] == "R_got"] == []


@pytest.mark.parametrize("framing", ["json", "cbor"])
def test_bad_messages_are_ignored_and_the_connection_stays(target, framing):
    """Frames that decode but make no sense (non-string port name, unknown port, empty frame,
    malformed node requests, a spawn that tries to take an existing port's name) are dropped
    one by one; the connection stays up and later frames arrive."""
    peer = _established_peer(target, framing)
    pr = target.pr_name
    bad = [
        [1, "x"],
        [None, "x"],
        [["nested"], "x"],
        [],
        ["nonexistent_port", "x"],
        ["", 5],
        ["", "mon1"],
        ["", "mon1", 5],
        ["", "mon0", ["x"]],
        ["", "kil1", ""],
        ["", "kil1", 5],
        ["", "kil0"],
        ["", "snd", 5],
        ["", "snd"],
        ["", "can"],
        ["", "no_such_module_xyz.func", 1],
        ["", "no_dots_at_all"],
        ["", "AnyEvent::MP::_spawn", pr, "netfuncs.echo_server"],  # hijack PR's name
        ["", "AnyEvent::MP::_spawn", 5, "netfuncs.echo_server"],
        ["", "g_upd", 5, 6, 7],
        ["", "g_find"],
        ["", "g_slave", "not a dict"],
        ["", "g_reply", "no-such-request", {}],
    ]
    if framing == "cbor":
        bad += [[b"\xff\xfe", "x"], ["", b"\xff\xfe", 1]]
    try:
        for frame in bad:
            peer.send_frame(frame)
        peer.send_frame([pr, "post", 3])
        assert target.t.expect("R_got") == [repr(["post", 3])]
        assert target.t.ask("node_is_up('attacker')") is True
        assert target.t.ask("PR in aemp_green.kernel.port_table") is True
        peer.send_frame([pr, "still", 4])
        assert target.t.expect("R_got") == [repr(["still", 4])]
    finally:
        peer.close()
    log = target.t.wait_log("non-string port name")
    assert "bad or used port name" in log
    target.t.run("wait_for(lambda: not node_is_up('attacker'))")
    target.check_intact()


def _read_frames_until(peer, pred, timeout=5):
    """Decode frames from ``peer`` until ``pred(frame)`` (return it) or EOF (return "EOF")."""
    from aemp_green.wire import framing

    dec = framing.codec(peer.recv_framing)[1]()
    deadline = time.monotonic() + timeout
    frames = dec.feed(peer.hs.trailing_data + peer.rbuf)
    while True:
        for f in frames:
            if pred(f):
                return f
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        peer.sock.settimeout(left)
        try:
            data = peer.sock.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            return "EOF"
        if not data:
            return "EOF"
        frames = dec.feed(data)


BUG_TWO_LINKS = (
    "BUG: node.RemoteNode keeps a second link from a simultaneous connect in extra_links; when "
    "the primary link breaks, detach() fires transport_error and kernel.forget_node_monitors() "
    "drops every monitor the peer set up - also those it sent over the surviving link - and "
    "promotes that link, so the peer (whose own primary link is the survivor) is neither told nor "
    "disconnected: its monitor never fires (a silent hole)"
)


def test_two_links_from_one_node_keep_the_monitor_guarantee(target):
    """Two connections from one node whose handshakes overlap (what a simultaneous connect
    makes) are both accepted. The peer uses the second one; when the first one breaks, the
    peer's monitor on a port of the target must still fire when that port dies - either by a
    ``kil0`` on the surviving link or by the target closing it too (then the peer's own
    transport_error fires it)."""
    c1 = RawPeer(target.addr, nodeid="twin")
    c2 = RawPeer(target.addr, nodeid="twin")
    try:
        for p in (c1, c2):
            p.send_raw(p.hs.data_to_send())
        for p in (c1, c2):
            l1, l2 = p.read_lines(2)
            p.hs.receive_data(l1 + b"\n" + l2 + b"\n")
        # the accepting node sends its auth line only after ours checked out: wait until it has
        # checked both greetings (both handshakes wait for our auth line) while no link to
        # "twin" existed
        target.t.run(
            "wait_for(lambda: sum(1 for src, hs in connect._pending_handshakes.values()"
            " if hs.state == 'AUTH' and hs.peer_greeting) == 2)"
        )
        for p in (c1, c2):
            p.send_raw(p.hs.data_to_send())  # auth line
            (line,) = p.read_lines(1)
            (est,) = p.hs.receive_data(line + b"\n")
            p.framing, p.recv_framing = est.send_framing, est.recv_framing
            target.t.run("wait_for(lambda: node_is_up('twin'))")
        assert target.t.ask("len(node._nodes['twin'].extra_links)") == 1
        # the peer monitors PR over c2 (its link), then its other connection c1 breaks
        c2.send_frame(["", "mon1", target.pr])
        c2.send_frame([target.pr_name, "ping"])
        assert target.t.expect("R_got") == [repr(["ping"])]
        c1.close()
        target.t.wait_log("twin is down")
        target.t.run("kil(PR, 'bye')")
        got = _read_frames_until(c2, lambda f: f[:3] == ["", "kil0", target.pr_name])
        assert got is not None, "the monitor set up over the surviving link was dropped silently"
        assert got == "EOF" or got == ["", "kil0", target.pr_name, "bye"], got
    finally:
        c1.close()
        c2.close()
