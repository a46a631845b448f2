"""Handshake attacks against live child nodes: relays, reflection, replay, lockouts, TLS-only.

An AEMP handshake is symmetric (docs/security.md): each side sends its two greeting lines, then
its auth line ``hmac_sha3_512;HMAC(secret, own1\\nown2\\npeer1\\npeer2\\n);<framing>``. If both
sides send that line before checking the peer's, an attacker who holds no secret can open one
connection to node A and one to node B, hand each node the other's greeting, and pass A's auth
line on to B: B then takes the attacker for A and runs whatever it sends as A (a node-port
``eval`` on a node that is not ``secure``). The defence these tests expect:

* the accepting side holds its auth line back until the connecting side's has checked out, so
  two accepting nodes never hand an attacker a token;
* the connecting side's greeting names the address it dialled (``peeraddr``, covered by its
  HMAC) and an accepting node refuses a connector that dialled some other address, so a node
  tricked into dialling the attacker produces a proof no third node takes;
* the connecting side checks that the accepting side's ``peeraddr`` is its own local address;
* "already connected" only ever means an authenticated link;
* ``auth_accept`` without non-TLS methods refuses every peer that does not do TLS; the TLS
  context is built once at configure (no private key in a temp file per handshake);
* pending incoming handshakes at their cap are evicted from the busiest source address.

The attackers are raw sockets in this process (``netutil.RawConn``); the targets are child
nodes (``netutil.ChildNode``). A target is "hit" when an injected frame was dispatched: the
injected ``eval`` created a marker file, the injected ``snd`` reached a port of the target, or
the target reported the claimed node as up (``Victim.dispatched``). The check is made only
after the target closed the attack connection, which it does at the latest once it read the
attacker's end-of-file after the injected frames, so every byte the attacker sent was either
dispatched or thrown away by then; ``test_control_*`` show that the same check sees the frames
when they come over a properly authenticated connection.

Eight of these attacks worked against aemp_green 0.1.0 (the relays (a), (b), (c) and (f), the
two TLS key-file tests (i) and the pending-handshake churn (j)): each failed there and passes
since the handshake change (docs/security.md, "Relayed handshakes").
"""

import concurrent.futures
import ctypes
import json
import os
import shutil
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest

from aemp_green.wire import framing
from aemp_green.wire.handshake import Established, Handshake, NeedTLS, hmac_token
from netutil import SECRET, RawConn, RawPeer, free_port, read_until_closed

# slow (docs/testing.md): real processes, ~30 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

INTEROP = Path(os.environ.get("AEMP_INTEROP_DIR") or Path(__file__).resolve().parent / "interop")
INTEROP_SECRET = "interop-test-secret-0123456789"

#: short timeouts so that every stalled handshake ends within the test
FAST = dict(monitor_timeout=4, handshake_timeout=4, connect_interval=1)
#: how long an attacker waits for an auth line that a fixed node never sends
AUTH_WAIT = 2.0
#: how long a target may take to close an attack connection after the attacker's EOF
CLOSE_WAIT = 8

# --------------------------------------------------------------------------- victims


class Victim:
    """A target node prepared to notice injected frames (see ``frames`` and ``dispatched``)."""

    def __init__(self, node, tmp_path):
        self.node = node
        self.markers = Path(tmp_path) / ("markers-" + node.name)
        self.markers.mkdir()
        node.run("""
            GOT = []
            PGOT = port(lambda *m: GOT.append(list(m)))
            UPS = []
            _up_guard = mon_nodes(lambda n, up, *r: UPS.append([n, up]))
        """)
        self.port = node.ask("PGOT")

    def frames(self, tag):
        """What an attacker wants run: an eval creating marker file ``tag`` and a snd to a port."""
        expr = "__import__('pathlib').Path(%r).joinpath(%r).write_text('pwned')" % (
            str(self.markers),
            tag,
        )
        return [["", "eval", expr], [self.port.partition("#")[2], "injected", tag]]

    def dispatched(self):
        """Everything the injected frames could have caused, as seen now (after a round trip
        through the node's event loop): marker files, port messages, nodes reported up."""
        got, ups = self.node.ask("[GOT, UPS]")
        return {"markers": sorted(p.name for p in self.markers.iterdir()), "port": got, "up": ups}

    def assert_untouched(self):
        assert self.node.alive, self.node.log_tail()
        assert self.dispatched() == {"markers": [], "port": [], "up": []}, (
            "%s dispatched frames from an unauthenticated attacker; log:\n%s"
            % (self.node.name, self.node.log_tail())
        )


def encode(framing_name, frames):
    enc = framing.codec(framing_name if framing_name in framing.FRAMINGS else "json")[0]
    return b"".join(enc(f) for f in frames)


def auth_framing(line):
    """The framing an auth line announces (its third field), or json."""
    if not line:
        return "json"
    fields = line.split(b";")
    return fields[2].decode("ascii", "replace") if len(fields) == 3 else "json"


def inject(conn, framing_name, frames, timeout=CLOSE_WAIT):
    """Send ``frames`` (encoded in ``framing_name``), end our side, wait for the node to close.

    Returns True if the node closed the connection within ``timeout``.
    """
    conn.send(encode(framing_name, frames))
    try:
        conn.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    return read_until_closed(conn.sock, timeout)[0]


def lines(*ls):
    return b"".join(x + b"\n" for x in ls)


def listener():
    """A listening socket of the attacker on 127.0.0.1; returns ``(sock, "127.0.0.1:port")``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s, "127.0.0.1:%d" % s.getsockname()[1]


def accept(lsock, timeout=10):
    lsock.settimeout(timeout)
    sock, _ = lsock.accept()
    return RawConn(sock=sock)


def read_auth_lines(conns, wait=AUTH_WAIT):
    """Wait at most ``wait`` seconds (in all) for one line from each of ``conns``: a list of the
    lines (None where nothing came)."""
    deadline = time.monotonic() + wait
    out = []
    for c in conns:
        got = c.read_lines(1, timeout=max(0.05, deadline - time.monotonic()))
        out.append(got[0] if got else None)
    return out


# --------------------------------------------------------------------------- the relay


def relay_two_acceptors(a_addr, b_addr):
    """Connect to A and to B, give each the other's greeting and then the other's auth line
    (whatever arrived within ``AUTH_WAIT``). Returns ``(conn_to_a, framing_for_a, conn_to_b,
    framing_for_b, tokens)``: frames sent on ``conn_to_b`` in ``framing_for_b`` look like A's to
    B; ``tokens`` lists the auth lines A and B gave away (None: none)."""
    ca, cb = RawConn(a_addr), RawConn(b_addr)
    ga, gb = ca.read_lines(2), cb.read_lines(2)
    assert ga and gb, "no greeting from the targets"
    ca.send(lines(*gb))
    cb.send(lines(*ga))
    auth_a, auth_b = read_auth_lines([ca, cb])  # A's line is made for B, B's for A
    if auth_a:
        cb.send(auth_a + b"\n")
    if auth_b:
        ca.send(auth_b + b"\n")
    return ca, auth_framing(auth_b), cb, auth_framing(auth_a), [auth_a, auth_b]


def test_control_authenticated_frames_are_seen(cluster, tmp_path):
    """Control for the check every attack test makes: the very frames the attackers inject,
    sent over a connection authenticated with the secret and claiming to be node A, are seen by
    ``Victim.dispatched`` (marker file, port message, A reported up)."""
    b = cluster.node("B", **FAST)
    vb = Victim(b, tmp_path)
    peer = RawPeer(b.addr, nodeid="A")
    try:
        peer.handshake()
        conn = RawConn(sock=peer.sock)
        assert inject(conn, peer.framing, vb.frames("control"))
    finally:
        peer.close()
    b.run("wait_for(lambda: GOT and UPS)")
    seen = vb.dispatched()
    assert seen["markers"] == ["control"], seen
    assert seen["port"] == [["injected", "control"]], seen
    assert ["A", True] in seen["up"], seen


@pytest.mark.parametrize("secure", [False, True], ids=["open", "secure"])
def test_relay_between_two_acceptors_dispatches_nothing(cluster, tmp_path, secure):
    """(a) The attacker connects to A and to B (same secret, not linked to each other), relays
    their greetings and any auth line, then sends frames as A to B and as B to A. Neither node
    may run them, both close the attacker's connections, and neither gave the attacker an auth
    line (an accepting node proves itself only to a peer that proved itself first). A
    ``secure`` node refuses the eval anyway, but must not take the rest either."""
    cfg = dict(FAST, secure=secure)
    a, b = cluster.start(("A", cfg), ("B", cfg))
    va, vb = Victim(a, tmp_path), Victim(b, tmp_path)
    ca, fa, cb, fb, tokens = relay_two_acceptors(a.addr, b.addr)
    try:
        closed_b = inject(cb, fb, vb.frames("as_A"))
        closed_a = inject(ca, fa, va.frames("as_B"))
    finally:
        ca.close()
        cb.close()
    assert closed_b and closed_a, "a target kept the attack connection open"
    vb.assert_untouched()
    va.assert_untouched()
    assert tokens == [None, None], "an accepting node sent its auth line to the attacker"


def test_relay_of_a_victim_that_dialled_the_attacker(cluster, tmp_path):
    """(b) Victim V has the attacker's address among its seeds. The attacker relays V's greeting
    to target T and T's to V, passes V's auth line to T and sends frames to T as V. V's proof
    names the address V dialled (the attacker's), so T must not take it."""
    lsock, laddr = listener()
    try:
        t = cluster.node("T", **FAST)
        vt = Victim(t, tmp_path)
        cluster.node("V", seeds=[laddr], **FAST)
        cv = accept(lsock)
        gv = cv.read_lines(2)
        assert gv, "V sent no greeting"
        ct = RawConn(t.addr)
        gt = ct.read_lines(2)
        assert gt, "T sent no greeting"
        ct.send(lines(*gv))
        cv.send(lines(*gt))
        auth_v, auth_t = read_auth_lines([cv, ct])
        if auth_v:
            ct.send(auth_v + b"\n")
        try:
            assert inject(ct, auth_framing(auth_v), vt.frames("as_V")), (
                "T kept the attack connection open"
            )
        finally:
            ct.close()
            cv.close()
        vt.assert_untouched()
        assert auth_t is None, "T sent its auth line before its peer had proved anything"
    finally:
        lsock.close()


def test_double_dial_cross_relay(cluster, tmp_path):
    """(c) V1 and V2 both dial the attacker (one attacker address in each one's seeds). The
    attacker hands each the other's greeting and auth line and then sends frames to each as the
    other. Each connector must see that the greeting it got does not name its own local address
    (and each proof names an attacker address), so neither may run anything."""
    l1, addr1 = listener()
    l2, addr2 = listener()
    try:
        v1, v2 = cluster.start(
            ("V1", dict(seeds=[addr1], **FAST)), ("V2", dict(seeds=[addr2], **FAST))
        )
        w1, w2 = Victim(v1, tmp_path), Victim(v2, tmp_path)
        c1, c2 = accept(l1), accept(l2)
        g1, g2 = c1.read_lines(2), c2.read_lines(2)
        assert g1 and g2, "a victim sent no greeting"
        c1.send(lines(*g2))
        c2.send(lines(*g1))
        auth1, auth2 = read_auth_lines([c1, c2])
        if auth1:
            c2.send(auth1 + b"\n")
        if auth2:
            c1.send(auth2 + b"\n")
        try:
            closed1 = inject(c1, auth_framing(auth2), w1.frames("as_V2"))
            closed2 = inject(c2, auth_framing(auth1), w2.frames("as_V1"))
        finally:
            c1.close()
            c2.close()
        assert closed1 and closed2, "a victim kept the attack connection open"
        w1.assert_untouched()
        w2.assert_untouched()
    finally:
        l1.close()
        l2.close()


def test_reflection_and_echo_are_refused(cluster, tmp_path):
    """(d) Two connections to A: A's greeting from each is fed into the other (reflection), and
    on a third connection A's greeting is echoed back to it. A refuses all three; frames sent
    afterwards are not run."""
    a = cluster.node("A", **FAST)
    va = Victim(a, tmp_path)
    c1, c2, c3 = RawConn(a.addr), RawConn(a.addr), RawConn(a.addr)
    try:
        g1, g2, g3 = c1.read_lines(2), c2.read_lines(2), c3.read_lines(2)
        assert g1 and g2 and g3
        c1.send(lines(*g2))
        c2.send(lines(*g1))
        c3.send(lines(*g3))
        auth1, auth2, auth3 = read_auth_lines([c1, c2, c3])
        assert [auth1, auth2, auth3] == [None, None, None], "A gave a reflected peer its token"
        for conn, auth in ((c1, auth2), (c2, auth1), (c3, auth3)):
            if auth:
                conn.send(auth + b"\n")
        closed = [
            inject(c, auth_framing(x), va.frames("reflect%d" % i))
            for i, (c, x) in enumerate(((c1, auth2), (c2, auth1), (c3, auth3)))
        ]
    finally:
        for c in (c1, c2, c3):
            c.close()
    assert closed == [True, True, True]
    va.assert_untouched()


# --------------------------------------------------------------------------- replay


def _recorded_connections():
    """(session, conn dir, sender, receiver) for every recorded connection with auth lines."""
    out = []
    for session in ("json-session", "cbor-session"):
        meta = INTEROP / session / "meta.json"
        if not meta.is_file():
            continue
        for c in json.loads(meta.read_text())["connections"]:
            d = INTEROP / session / c["dir"]
            if c["a"] == c["b"]:  # the seed's refused self-connection: no auth lines
                continue
            out.append((d / "a_to_b.bin", c["a"], c["b"]))
            out.append((d / "b_to_a.bin", c["b"], c["a"]))
    return out


@pytest.mark.skipif(not _recorded_connections(), reason="no interop recordings")
def test_replayed_perl_handshakes_are_refused(cluster, tmp_path):
    """(e) The greeting and auth lines each Perl node sent in the recorded sessions
    (tests/interop), replayed to a node that has the recorded receiver's node ID and the
    recording's secret, followed by injected frames: the node's fresh nonce makes every
    recorded token worthless, so nothing is run."""
    recs = _recorded_connections()
    names = sorted({r[2] for r in recs})
    nodes = dict(
        zip(names, cluster.start(*[(n, dict(secret=INTEROP_SECRET, **FAST)) for n in names]))
    )
    victims = {n: Victim(node, tmp_path) for n, node in nodes.items()}
    for i, (path, sender, receiver) in enumerate(recs):
        rec = path.read_bytes().split(b"\n")
        l1, l2, auth = rec[:3]
        assert l1.startswith(b"aemp;1;%s;" % sender.encode()), (path, l1)
        conn = RawConn(nodes[receiver].addr)
        try:
            assert conn.read_lines(2), "no greeting from %s" % receiver
            conn.send(lines(l1, l2, auth))
            assert inject(conn, auth_framing(auth), victims[receiver].frames("replay%d" % i)), (
                "%s kept a replayed connection open (%s)" % (receiver, path)
            )
        finally:
            conn.close()
    for v in victims.values():
        v.assert_untouched()


# --------------------------------------------------------------------------- many at once


def test_ten_concurrent_relays_dispatch_nothing(cluster, tmp_path):
    """(f) Ten relays between A and B at the same time, each injecting in both directions."""
    a, b = cluster.start(("A", FAST), ("B", FAST))
    va, vb = Victim(a, tmp_path), Victim(b, tmp_path)

    def one(i):
        ca, fa, cb, fb, tokens = relay_two_acceptors(a.addr, b.addr)
        try:
            return (
                inject(cb, fb, vb.frames("as_A_%d" % i)),
                inject(ca, fa, va.frames("as_B_%d" % i)),
                tokens,
            )
        finally:
            ca.close()
            cb.close()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    assert [r[:2] for r in results] == [(True, True)] * 10, results
    vb.assert_untouched()
    va.assert_untouched()
    assert [r[2] for r in results] == [[None, None]] * 10, "auth lines given to the attacker"


# --------------------------------------------------------------------------- lockout


def test_half_done_handshake_does_not_lock_the_real_node_out(cluster, tmp_path):
    """(g) The attacker opens a connection to B claiming to be node A, and one to A claiming to
    be B, sends only the greeting and stalls for longer than the test's bound. A then dials B:
    the two must link up within the bound regardless."""
    slow = dict(FAST, monitor_timeout=15, handshake_timeout=15)
    baddr = "127.0.0.1:%d" % free_port()
    # B's node ID is its address: A dials it when told to send there, not before
    a, b = cluster.start(("A", slow), ("B", dict(slow, nodeid=baddr, binds=[baddr])))
    stalled = []
    try:
        for claim, node in (("A", b), (baddr, a)):
            c = RawConn(node.addr)
            c.send(Handshake(nodeid=claim, secret=None, peeraddr=node.addr).data_to_send())
            assert c.read_lines(2), "no greeting from %s" % node.name
            stalled.append(c)
            assert node.ask("1 + 1") == 2  # its loop went round after the stalled greeting
        b.run("PB = port(lambda *m: emit('B_got', repr(list(m))))")
        a.run("snd(%r, 'hello', 1)" % b.ask("PB"))
        assert b.expect("B_got", timeout=6) == [repr(["hello", 1])]
        a.run("wait_for(lambda: node_is_up(%r), timeout=6)" % baddr, timeout=8)
        b.run("wait_for(lambda: node_is_up('A'), timeout=6)", timeout=8)
    finally:
        for c in stalled:
            c.close()


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """{"a", "b": PEM text (key + cert + CA), all from one CA} made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    from test_tls import _make_ca, _make_node_cert

    d = tmp_path_factory.mktemp("attack-certs")
    _make_ca(d, "ca1")
    pems = {"a": _make_node_cert(d, "ca1", "node-a"), "b": _make_node_cert(d, "ca1", "node-b")}
    for k, pem in pems.items():
        (d / (k + ".all.pem")).write_text(pem)
    pems["b_path"] = str(d / "b.all.pem")
    return pems


def tls_handshake(addr, certs, nodeid):
    """A TLS ``tls_sha3_512`` handshake with the node at ``addr`` from this process, with the
    certificate ``b``; returns the ``Established`` event (the connection is then closed)."""
    conn = RawConn(addr)
    try:
        theirs = conn.read_lines(2)  # the node's greeting, read before ours: nothing follows it
        if not theirs:
            raise AssertionError("no greeting from %s" % addr)
        hs = Handshake(
            nodeid=nodeid,
            secret=None,
            auth_offer=("tls_sha3_512",),
            auth_accept=("tls_sha3_512",),
            framings=("json",),
            peeraddr=addr,
            tls_offered=True,
        )
        conn.send(hs.data_to_send())
        need = [e for e in hs.receive_data(lines(*theirs)) if isinstance(e, NeedTLS)]
        assert need, "the node did not ask for TLS"
        server_side = need[0].server_side
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(certs["b_path"])
        ctx.load_verify_locations(cadata=certs["b"])
        try:
            tsock = ctx.wrap_socket(conn.sock, server_side=server_side)
            hs.start_tls_done()
            tsock.sendall(hs.data_to_send())
            buf = b""
            deadline = time.monotonic() + 10
            while b"\n" not in buf and time.monotonic() < deadline:
                chunk = tsock.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except (OSError, ssl.SSLError) as exc:
            raise AssertionError("TLS handshake with %s failed: %r" % (addr, exc)) from None
        if b"\n" not in buf:
            raise AssertionError("no auth line from %s over TLS: %r" % (addr, buf))
        est = [e for e in hs.receive_data(buf) if isinstance(e, Established)]
        assert est and est[0].tls, est
        return est[0]
    finally:
        conn.close()


def test_tls_only_node_refuses_peers_without_tls(cluster, tmp_path, certs):
    """(h) A node with a certificate and ``auth_accept: ["tls_sha3_512"]`` (and a secret)
    refuses a node that has the secret but no certificate, and a raw peer that sends a correct
    ``hmac_sha3_512`` auth line anyway; a node with a certificate from the same CA gets in."""
    addr = "127.0.0.1:%d" % free_port()
    t = cluster.node(
        "T", nodeid=addr, binds=[addr], cert=certs["a"], auth_accept=["tls_sha3_512"], **FAST
    )
    vt = Victim(t, tmp_path)
    p = cluster.node("P", **FAST)  # the secret, no certificate
    p.exec("mon(%r, lambda *r: emit('P_mon', *r)); snd(%r, 'from_P')" % (vt.port, vt.port))
    reason = p.expect("P_mon", timeout=10)
    assert reason[:2] == ["transport_error", addr], reason

    raw = RawConn(addr)
    try:
        t1, t2 = raw.read_lines(2)
        hs = Handshake(nodeid="R", secret=SECRET, peeraddr=addr, framings=("json",))
        r1, r2 = hs.data_to_send().split(b"\n")[:2]
        token = hmac_token(SECRET, r1, r2, t1, t2)
        raw.send(lines(r1, r2, b"hmac_sha3_512;%s;json" % token.encode()))
        assert inject(raw, "json", vt.frames("hmac_without_tls")), "T kept the connection open"
    finally:
        raw.close()
    vt.assert_untouched()

    q = cluster.node("Q", cert=certs["b"], **FAST)
    q.exec("snd(%r, 'from_Q')" % vt.port)
    t.run("wait_for(lambda: GOT)")
    assert t.ask("GOT") == [["from_Q"]]


class _Inotify:
    """Names created in one directory, seen with Linux inotify (IN_CREATE)."""

    IN_CREATE = 0x100

    def __init__(self, path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if (
            self.fd < 0
            or self.libc.inotify_add_watch(self.fd, str(path).encode(), self.IN_CREATE) < 0
        ):
            pytest.skip("inotify unavailable")
        self.names = []

    def poll(self):
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return self.names
            i = 0
            while i + 16 <= len(data):
                _wd, _mask, _cookie, n = struct.unpack_from("iIII", data, i)
                self.names.append(data[i + 16 : i + 16 + n].rstrip(b"\0").decode())
                i += 16 + n

    def close(self):
        os.close(self.fd)


def test_tls_handshakes_write_no_key_files(cluster, tmp_path, certs):
    """(i) Twenty TLS handshakes with a node whose TMPDIR we watch create no file there
    (``aemp-cert-*`` today: the private key is written out per handshake). What configure
    itself writes is not counted: the watch starts after it."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    t = cluster.node("T", cert=certs["a"], _env={"TMPDIR": str(tmpdir)}, **FAST)
    assert t.ask("__import__('tempfile').gettempdir()") == str(tmpdir)
    watch = _Inotify(tmpdir)
    try:
        for i in range(20):
            tls_handshake(t.addr, certs, "tls%d" % i)
        files = watch.poll()
    finally:
        watch.close()
    assert files == [], "%d files written during 20 TLS handshakes" % len(files)


def test_tls_handshake_without_a_usable_tmpdir(cluster, tmp_path, certs):
    """(i) A TLS node whose temp directory disappeared after configure still accepts TLS
    handshakes (nothing per handshake depends on the file system). A TMPDIR that is missing
    from the start proves nothing: Python's tempfile then quietly falls back to /tmp."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    t = cluster.node("T", cert=certs["a"], _env={"TMPDIR": str(tmpdir)}, **FAST)
    assert t.ask("__import__('tempfile').gettempdir()") == str(tmpdir)
    shutil.rmtree(tmpdir)
    est = tls_handshake(t.addr, certs, "late")
    assert est.peer_nodeid == "T"


# --------------------------------------------------------------------------- pending handshakes


def test_pending_handshake_churn_from_one_source_spares_other_sources(cluster):
    """(j) The node allows 8 pending handshakes. A legitimate peer on 127.0.0.1 with a slow
    handshake has sent its greeting; meanwhile an attacker opens 24 stalled connections from
    127.0.0.2. The legitimate peer must still complete its handshake and be heard."""
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.2", 0))
    except OSError as exc:  # pragma: no cover - no 127.0.0.2 on this host (e.g. macOS)
        pytest.skip("cannot use 127.0.0.2 as a source address: %s" % exc)
    finally:
        probe.close()
    t = cluster.node("T", max_pending_handshakes=8, monitor_timeout=6, handshake_timeout=6)
    t.run("GOT = []; PGOT = port(lambda *m: GOT.append(list(m)))")
    pgot = t.ask("PGOT")
    legit = RawPeer(t.addr, nodeid="legit")
    attackers = []
    try:
        legit.greeting()  # T accepted us: our handshake is pending there
        for _ in range(24):
            c = RawConn(t.addr, source="127.0.0.2")
            c.read_lines(2, timeout=5)  # T handled this connection (greeting or close)
            attackers.append(c)
        try:
            legit.send_raw(legit.hs.data_to_send())  # our auth line, late
            (got,) = legit.read_lines(1, timeout=5)
            events = legit.hs.receive_data(got + b"\n")
            est = [e for e in events if isinstance(e, Established)]
            assert est, events
            legit.framing = est[0].send_framing
            legit.send_frame([pgot.partition("#")[2], "legit", 1])
        except OSError as exc:
            raise AssertionError("T cut the legitimate peer off: %r" % exc) from None
        t.run("wait_for(lambda: GOT, timeout=5)")
        assert t.ask("GOT") == [["legit", 1]]
    finally:
        legit.close()
        for c in attackers:
            c.close()
