"""TLS between child nodes (docs/protocol.md#tls): ``tls_sha3_512`` auth with mutual verification.

The certificates are made here with the ``openssl`` command: a CA and node certificates signed
by it, plus a second CA for a node that must be refused. Each node's ``cert`` setting is the PEM
text holding its key, its certificate and the CA certificate (AEMP's convention).
"""

import shutil
import subprocess

import pytest

from netutil import RawPeer, free_port

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None,
    reason="the openssl command is needed to make test certificates",
)


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d, name):
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        name + ".key",
        "-out",
        name + ".pem",
        "-days",
        "30",
        "-subj",
        "/CN=" + name,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )


def _make_node_cert(d, ca, name):
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        name + ".key",
        "-out",
        name + ".csr",
        "-subj",
        "/CN=" + name,
        cwd=d,
    )
    (d / (name + ".ext")).write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        name + ".csr",
        "-CA",
        ca + ".pem",
        "-CAkey",
        ca + ".key",
        "-CAcreateserial",
        "-out",
        name + ".pem",
        "-days",
        "30",
        "-extfile",
        name + ".ext",
        cwd=d,
    )
    return (
        (d / (name + ".key")).read_text()
        + (d / (name + ".pem")).read_text()
        + (d / (ca + ".pem")).read_text()
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """{"a", "b": signed by ca1; "evil": signed by ca2} -> PEM text (key + cert + CA)."""
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca1")
    _make_ca(d, "ca2")
    return {
        "a": _make_node_cert(d, "ca1", "node-a"),
        "b": _make_node_cert(d, "ca1", "node-b"),
        "evil": _make_node_cert(d, "ca2", "node-evil"),
    }


BUG_BLOCKING_TLS = (
    "BUG: transport._tls_context() builds a *stdlib* ssl.SSLContext; its wrap_socket() turns the "
    "gevent socket into a blocking stdlib ssl.SSLSocket, so the TLS handshake and then every "
    "Link.run() recv block the whole process (the event loop freezes as soon as a TLS link is up)"
)

LINK_INFO = (
    "[type(node._nodes[%r].link.sock).__name__, node._nodes[%r].link.sock.version(), "
    "dict(x[0] for x in node._nodes[%r].link.sock.getpeercert()['subject'])['commonName']]"
)


@pytest.mark.parametrize("tls_only", [False, True], ids=["with_secret", "tls_sha3_512_only"])
def test_tls_nodes_authenticate_and_talk(cluster, certs, tls_only):
    """Two nodes whose certificates come from the same CA talk over TLS, each verifying the
    other's certificate. With no secret and ``tls_sha3_512`` as the only auth method the link
    can only have been authenticated by ``tls_sha3_512``."""
    extra = (
        dict(secret=None, auth_offer=["tls_sha3_512"], auth_accept=["tls_sha3_512"])
        if tls_only
        else {}
    )
    a = cluster.seed("A", cert=certs["a"], **extra)
    b = cluster.node("B", cert=certs["b"], seeds=[a.addr], **extra)
    b.run("wait_for(lambda: node_is_up('A'))", timeout=5)
    a.run("PA = port(lambda *m: emit('A_got', repr(list(m))))")
    b.run("PB = port(lambda *m: emit('B_got', repr(list(m))))")
    pa, pb = a.ask("PA"), b.ask("PB")
    b.run("snd(%r, 'over_tls', 'Grüße ✓', 2**40, PB)" % pa)
    assert a.expect("A_got") == [repr(["over_tls", "Grüße ✓", 2**40, pb])]
    a.run("snd(%r, 'back', [1.5, None])" % pb)
    assert b.expect("B_got") == [repr(["back", [1.5, None]])]

    kind, version, peer_cn = b.ask(LINK_INFO % ("A", "A", "A"))
    assert kind == "SSLSocket" and version.startswith("TLS"), (kind, version)
    assert peer_cn == "node-a"
    kind, version, peer_cn = a.ask(LINK_INFO % ("B", "B", "B"))
    assert kind == "SSLSocket" and peer_cn == "node-b", (kind, peer_cn)


def test_tls_node_and_plain_node_fall_back_to_hmac(cluster, certs):
    """TLS is used only when both sides have a certificate (docs/protocol.md#tls): a node without
    one still joins a TLS seed with the shared secret, over a plain connection."""
    a = cluster.seed("A", cert=certs["a"])
    p = cluster.node("plain", seeds=[a.addr])
    p.run("wait_for(lambda: node_is_up('A'))", timeout=15)
    assert p.ask("type(node._nodes['A'].link.sock).__name__") != "SSLSocket"
    a.run("wait_for(lambda: node_is_up('plain'))")
    assert a.ask("type(node._nodes['plain'].link.sock).__name__") != "SSLSocket"


def test_certificate_from_another_ca_is_refused(cluster, certs):
    """A node whose certificate is signed by a different CA gets no link, even with the right
    shared secret (both sides have certificates, so TLS is mandatory), and its messages never
    arrive; its monitor fires instead."""
    addr = "127.0.0.1:%d" % free_port()
    # node ID = address: the evil node dials it directly, not only through its seed loop
    a = cluster.node("A", nodeid=addr, binds=[addr], seeds=[addr], cert=certs["a"])
    evil = cluster.node("evil", cert=certs["evil"], seeds=[addr], connect_interval=1)
    a.run("""
        PA = port(lambda *m: emit('A_got', repr(list(m))))
        EVIL_SEEN = []
        _g = mon_nodes(lambda n, up, *r: EVIL_SEEN.append((n, up)))
    """)
    pa = a.ask("PA")
    evil.exec(
        """
        mon(%r, lambda *r: emit('evil_mon', *r))
        snd(%r, 'sneaky')
    """
        % (pa, pa)
    )
    reason = evil.expect("evil_mon", timeout=10)
    assert reason[:2] == ["transport_error", addr], reason
    log = a.wait_log(
        lambda t: (
            t.count("disconnected - ") >= 2
            and ("CERTIFICATE_VERIFY_FAILED" in t or "unknown ca" in t.lower())
        ),
        timeout=15,
        what="a refused TLS handshake",
    )
    assert "SSL" in log
    assert evil.ask("up_nodes()") == []
    assert a.ask("[up_nodes(), EVIL_SEEN]") == [[], []]
    assert [i for i in a.backlog if i[0] == "A_got"] == []


def test_stalled_tls_handshake_does_not_freeze_the_node(cluster, certs):
    """A peer that asks for TLS in its greeting and then never does the TLS handshake is cut off
    by the ``monitor_timeout`` handshake deadline; meanwhile the node keeps serving."""
    a = cluster.seed("A", cert=certs["a"], monitor_timeout=2)
    b = cluster.node("B", seeds=[a.addr])  # no cert: hmac over a plain link
    b.run("wait_for(lambda: node_is_up('A'))", timeout=10)
    a.run("PA = port(lambda *m: emit('A_got', repr(list(m))))")
    pa = a.ask("PA")
    peer = RawPeer(a.addr, nodeid="staller", tls_offered=True)
    try:
        peer.greeting()  # both sides want TLS now; we never start it
        b.run("snd(%r, 'during_stall', 1)" % pa)
        assert a.expect("A_got", timeout=3) == [repr(["during_stall", 1])]
        assert a.ask("1 + 1", timeout=3) == 2
        assert peer.closed_by_node(timeout=6)
    finally:
        peer.close()
    a.wait_log("handshake timeout")
    b.run("snd(%r, 'after_stall', 2)" % pa)
    assert a.expect("A_got") == [repr(["after_stall", 2])]
