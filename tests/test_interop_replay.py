"""Replay the Perl AnyEvent::MP 2.02 recordings in ``tests/interop`` through our sans-IO code.

For every recorded connection:

* both recorded HMAC tokens recompute from the two greetings and the secret;
* a ``Handshake`` built to reproduce one side's recorded greeting byte for byte, fed the other
  side's recorded bytes in the recorded TCP segment boundaries, produces that side's recorded
  auth line byte for byte and reaches ``Established`` (or refuses exactly where Perl refused:
  the self-connection, the wrong secret);
* the data phase, fed in the recorded segment boundaries to the decoder the handshake chose,
  yields every frame of ``frames.json``; every frame re-encodes (ours) and decodes back equal,
  and our json encoding is byte-identical to what Perl sent.
"""

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest

from aemp_green.wire import framing
from aemp_green.wire.handshake import (
    Established,
    GreetingReceived,
    Handshake,
    hmac_token,
    parse_greeting_line1,
)
from aemp_green.exceptions import RemoteProtocolError

INTEROP = Path(os.environ.get("AEMP_INTEROP_DIR") or Path(__file__).resolve().parent / "interop")
CONNS = sorted(p.parent for p in INTEROP.glob("*/conn*/frames.json")) if INTEROP.is_dir() else []

pytestmark = pytest.mark.skipif(not CONNS, reason="interop recordings not found at %s" % INTEROP)

CONN_IDS = ["%s/%s" % (p.parent.name, p.name) for p in CONNS]
AUTH_CONNS = [p for p in CONNS if json.loads((p / "frames.json").read_text()).get("a_auth_line")]
AUTH_IDS = ["%s/%s" % (p.parent.name, p.name) for p in AUTH_CONNS]
OTHER = {"a": "b", "b": "a"}


class Conn:
    """One recorded connection: greetings, auth lines, streams, segments, secrets."""

    def __init__(self, path):
        self.path = path
        self.fr = json.loads((path / "frames.json").read_text())
        self.meta = json.loads((path.parent / "meta.json").read_text())
        self.stream = {
            "a": (path / "a_to_b.bin").read_bytes(),
            "b": (path / "b_to_a.bin").read_bytes(),
        }
        secret = self.meta["secret"]
        self.secret = secret if isinstance(secret, dict) else {"a": secret, "b": secret}
        segs = {"a": [], "b": []}
        for s in self.fr["tcp_segments"]:
            if "off" in s:
                segs["a" if s["from"] == "c" else "b"].append((s["off"], s["len"]))
        self.segments = {}
        for side, lst in segs.items():
            pos = 0
            for off, ln in lst:
                assert off == pos, "segments of %s are not contiguous" % side
                pos += ln
            assert pos == len(self.stream[side])
            self.segments[side] = [self.stream[side][o : o + n] for o, n in lst]

    def greeting(self, side):
        return self.fr[side + "_greeting"]

    def greeting_bytes(self, side):
        l1, l2 = self.greeting(side)
        return ("%s\n%s\n" % (l1, l2)).encode()

    def auth_line(self, side):
        return self.fr[side + "_auth_line"]

    def data_start(self, side):
        return len(self.greeting_bytes(side)) + len(self.auth_line(side)) + 1

    def handshake_for(self, side, secret=None, nodeid=None, **kw):
        """A Handshake whose greeting is byte-identical to ``side``'s recorded one."""
        l1, l2 = self.greeting(side)
        protocol, version, rec_nodeid, auths, framings, kv = parse_greeting_line1(l1)
        assert set(kv) == {"provider", "peeraddr", "mproto", "gproto"}
        assert kv["mproto"] == kv["gproto"] == "1"
        return Handshake(
            nodeid=nodeid or rec_nodeid,
            secret=self.secret[side] if secret is None else secret,
            auth_accept=auths,
            framings=framings,
            peeraddr=kv["peeraddr"],
            provider=kv["provider"],
            protocol=protocol,
            nonce=base64.b64decode(l2, validate=True),
            _kv_order=list(kv),
            **kw,
        )

    def connector(self):
        """The side that dialled (``a``: its TCP segments come from the client)."""
        first = next(s for s in self.fr["tcp_segments"] if "off" in s)
        return "a" if first["from"] == "c" else "b"


def plain(v):
    """frames.json value -> what our decoder must return (ASCII byte strings become str)."""
    if isinstance(v, dict):
        if set(v) == {"$cbor_bytes"}:
            s = v["$cbor_bytes"]
            return s if s.isascii() else s.encode("latin-1")
        out = {}
        for k, x in v.items():
            if k.startswith('{"$cbor_bytes"'):
                k = plain(json.loads(k))
            out[k] = plain(x)
        return out
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def run_side(conn, side, *, secret=None):
    """Drive our handshake as ``side`` against the peer's recorded segments.

    Returns (hs, output bytes, events, error, data chunks after Established).
    """
    hs = conn.handshake_for(side, secret=secret)
    out = hs.data_to_send()
    events, error, data_chunks = [], None, []
    for seg in conn.segments[OTHER[side]]:
        if hs.state == "ESTABLISHED":
            data_chunks.append(seg)
            continue
        try:
            events += hs.receive_data(seg)
        except RemoteProtocolError as exc:
            error = exc
            out += hs.data_to_send()
            break
        out += hs.data_to_send()
        if hs.state == "ESTABLISHED" and hs.trailing_data:
            data_chunks.append(hs.trailing_data)
    return hs, out, events, error, data_chunks


# --------------------------------------------------------------------------- greetings, tokens


@pytest.mark.parametrize("path", CONNS, ids=CONN_IDS)
def test_greetings_parse_and_reproduce(path):
    conn = Conn(path)
    for side in "ab":
        l1, l2 = conn.greeting(side)
        assert conn.stream[side].startswith(conn.greeting_bytes(side))
        protocol, version, nodeid, auths, framings, kv = parse_greeting_line1(l1)
        assert (protocol, version) == ("aemp", "1")
        assert nodeid == conn.fr[side]
        assert auths == ["tls_sha3_512", "hmac_sha3_512", "tls_anon", "cleartext"]
        assert framings == conn.meta["framing_format_config"]
        assert kv["provider"] == "AE-2.02"
        assert len(l2) == 88 and len(base64.b64decode(l2)) == 66
        hs = conn.handshake_for(side)
        assert hs.data_to_send() == conn.greeting_bytes(side)


@pytest.mark.parametrize("path", AUTH_CONNS, ids=AUTH_IDS)
def test_recorded_tokens_recompute(path):
    conn = Conn(path)
    for side in "ab":
        method, token, fmt = conn.auth_line(side).split(";")
        assert method == "hmac_sha3_512"
        assert fmt in conn.meta["framing_format_config"]
        mine, peer = conn.greeting(side), conn.greeting(OTHER[side])
        assert hmac_token(conn.secret[side], *mine, *peer) == token
        # the recipe spelled out, independently of our helper
        msg = ("%s\n%s\n%s\n%s\n" % (*mine, *peer)).encode()
        assert hmac.new(conn.secret[side].encode(), msg, hashlib.sha3_512).hexdigest() == token
        # the peer checks it with peer-first order from ITS point of view: same text
        assert conn.stream[side][len(conn.greeting_bytes(side)) :].startswith(
            (conn.auth_line(side) + "\n").encode()
        )


# --------------------------------------------------------------------------- handshake replay


@pytest.mark.parametrize("path", AUTH_CONNS, ids=AUTH_IDS)
@pytest.mark.parametrize("side", ["a", "b"])
def test_handshake_replay_byte_exact(path, side):
    conn = Conn(path)
    bad = conn.secret["a"] != conn.secret["b"]
    hs, out, events, error, data_chunks = run_side(conn, side)
    expected_out = conn.greeting_bytes(side) + (conn.auth_line(side) + "\n").encode()
    assert out == expected_out, "our handshake output differs from Perl's"
    assert isinstance(events[0], GreetingReceived)
    g = events[0]
    assert g.nodeid == conn.fr[OTHER[side]]
    assert g.nonce == conn.greeting(OTHER[side])[1]
    if bad:
        # each side used its own secret: we, holding this side's secret, must refuse the peer
        assert error is not None
        assert "authentication failure/shared secret mismatch" in str(error)
        assert hs.state == "ERROR"
        with pytest.raises(RemoteProtocolError):
            hs.receive_data(b"x")
        return
    assert error is None
    est = events[-1]
    assert isinstance(est, Established)
    framing_name = conn.meta["framing_format_config"][0]
    assert (est.send_framing, est.recv_framing) == (framing_name, framing_name)
    assert est.peer_nodeid == conn.fr[OTHER[side]]
    assert est.auth_method == "hmac_sha3_512"
    assert est.tls is False
    peer = OTHER[side]
    assert b"".join(data_chunks) == conn.stream[peer][conn.data_start(peer) :]


@pytest.mark.parametrize("path", AUTH_CONNS, ids=AUTH_IDS)
@pytest.mark.parametrize("side", ["a", "b"])
def test_handshake_replay_wrong_secret_refused(path, side):
    conn = Conn(path)
    hs, out, events, error, _ = run_side(conn, side, secret="not-the-secret")
    assert isinstance(error, RemoteProtocolError)
    assert "authentication failure/shared secret mismatch" in str(error)


@pytest.mark.parametrize("path", AUTH_CONNS, ids=AUTH_IDS)
def test_handshake_replay_byte_by_byte(path):
    conn = Conn(path)
    bad = conn.secret["a"] != conn.secret["b"]
    for side in "ab":
        hs = conn.handshake_for(side)
        out = hs.data_to_send()
        peer_stream = conn.stream[OTHER[side]]
        peer_auth_end = conn.data_start(OTHER[side])
        events = []
        for i in range(len(peer_stream)):
            if bad and i == peer_auth_end - 1:
                # the last byte of the wrong-secret auth line: refused right there
                with pytest.raises(RemoteProtocolError, match="shared secret mismatch"):
                    hs.receive_data(peer_stream[i : i + 1])
                break
            events += hs.receive_data(peer_stream[i : i + 1])
            out += hs.data_to_send()
        assert out == conn.greeting_bytes(side) + (conn.auth_line(side) + "\n").encode()
        if bad:
            assert hs.state == "ERROR"
            continue
        assert isinstance(events[-1], Established)
        assert hs.trailing_data == peer_stream[peer_auth_end:]


@pytest.mark.parametrize(
    "path",
    [p for p in CONNS if p.name.startswith("conn00")],
    ids=[i for p, i in zip(CONNS, CONN_IDS) if p.name.startswith("conn00")],
)
def test_self_connection_refused(path):
    conn = Conn(path)
    assert conn.fr["a"] == conn.fr["b"]
    assert conn.fr["a_auth_line"] is None and conn.fr["b_auth_line"] is None
    for side in "ab":
        # Perl sent nothing but the greeting, and so do we
        assert conn.stream[side] == conn.greeting_bytes(side)
        hs, out, events, error, _ = run_side(conn, side)
        assert out == conn.greeting_bytes(side)
        assert events == []
        assert isinstance(error, RemoteProtocolError)
        assert str(error) == "I refuse to talk to myself"


@pytest.mark.parametrize(
    "path",
    [p for p in AUTH_CONNS if p.parent.name == "badauth-session"],
    ids=[i for p, i in zip(AUTH_CONNS, AUTH_IDS) if p.parent.name == "badauth-session"],
)
def test_badauth_right_secret_side_would_accept_a_correct_peer(path):
    """Sanity check of the badauth recording: with b's secret on both sides it would work."""
    conn = Conn(path)
    a_token = conn.auth_line("a").split(";")[1]
    assert hmac_token(conn.secret["a"], *conn.greeting("a"), *conn.greeting("b")) == a_token
    assert hmac_token(conn.secret["b"], *conn.greeting("a"), *conn.greeting("b")) != a_token
    hs = conn.handshake_for("b")
    hs.data_to_send()
    events = hs.receive_data(conn.greeting_bytes("a"))
    assert isinstance(events[0], GreetingReceived)
    good = hmac_token(conn.secret["b"], *conn.greeting("a"), *conn.greeting("b"))
    events = hs.receive_data(("hmac_sha3_512;%s;json\n" % good).encode())
    assert isinstance(events[0], Established)


# --------------------------------------------------------------------------- data phase


def _data_conns():
    out = []
    for p in AUTH_CONNS:
        fr = json.loads((p / "frames.json").read_text())
        if fr.get("a_to_b_frames") or fr.get("b_to_a_frames"):
            out.append(p)
    return out


DATA_CONNS = _data_conns()
DATA_IDS = ["%s/%s" % (p.parent.name, p.name) for p in DATA_CONNS]


@pytest.mark.parametrize("path", DATA_CONNS, ids=DATA_IDS)
@pytest.mark.parametrize("side", ["a", "b"])
def test_data_phase_frames(path, side):
    """Decode the peer's data phase exactly as it arrived and compare with frames.json."""
    conn = Conn(path)
    peer = OTHER[side]
    hs, out, events, error, data_chunks = run_side(conn, side)
    assert error is None
    est = events[-1]
    enc, dec_cls = framing.codec(est.recv_framing)
    dec = dec_cls()
    frames = []
    for chunk in data_chunks:
        frames += dec.feed(chunk)
    assert dec.pending == 0
    recorded = conn.fr["%s_to_%s_frames" % (peer, side)]
    assert len(frames) == len(recorded)
    data = conn.stream[peer][conn.data_start(peer) :]
    for got, rec in zip(frames, recorded):
        assert got == plain(rec["value"])
        raw = data[rec["offset"] : rec["offset"] + rec["length"]]
        if "hex" in rec:
            assert raw.hex() == rec["hex"]
        # the frame alone decodes the same
        assert dec_cls().feed(raw) == [got]
        # our encoding decodes back equal (both framings)
        for name in framing.FRAMINGS:
            e, d = framing.codec(name)
            assert d().feed(e(got)) == [got]
        if est.recv_framing == "json":
            # Perl's JSON::XS output and ours are the same bytes (dict order is kept)
            assert enc(got) == raw + b"\n"


@pytest.mark.parametrize("path", DATA_CONNS, ids=DATA_IDS)
def test_data_phase_every_split(path):
    """The whole recorded data stream of each direction, split at every single offset."""
    conn = Conn(path)
    for side in "ab":
        peer = OTHER[side]
        recorded = conn.fr["%s_to_%s_frames" % (peer, side)]
        expected = [plain(r["value"]) for r in recorded]
        data = conn.stream[peer][conn.data_start(peer) :]
        dec_cls = framing.codec(conn.auth_line(peer).split(";")[2])[1]
        assert dec_cls().feed(data) == expected
        for i in range(len(data) + 1):
            d = dec_cls()
            assert d.feed(data[:i]) + d.feed(data[i:]) == expected
        d = dec_cls()
        assert [f for i in range(len(data)) for f in d.feed(data[i : i + 1])] == expected


def test_cbor_byte_strings_from_perl_become_str():
    """A concrete check on the Perl byte-string encoding (docs/protocol.md#framings)."""
    d = framing.CborDecoder()
    assert d.feed(bytes.fromhex("824047675f736c617665")) == [["", "g_slave"]]
    frame = bytes.fromhex(
        "874a4c77654a696c67774e62426f6b7064616e6b6520736368c3b66e20e29c93"
        "182a26fa4050000082018202a24174f54178f6"
    )
    assert d.feed(frame) == [
        ["LweJilgwNb", "ok", "danke schön ✓", 42, -7, 3.25, [1, [2, {"t": True, "x": None}]]]
    ]


# --------------------------------------------------------------------------- roles (relay defence)


@pytest.mark.parametrize(
    "path",
    [p for p in AUTH_CONNS if p.parent.name != "badauth-session"],
    ids=[i for p, i in zip(AUTH_CONNS, AUTH_IDS) if p.parent.name != "badauth-session"],
)
def test_perl_peers_pass_the_role_and_peeraddr_rules(path):
    """docs/security.md, "Relayed handshakes": as the accepting side we hold our auth line back
    until the connector's checked out, and each side checks the peeraddr the other names. A
    Perl AEMP 2.02 connector (it proves first anyway) and a Perl acceptor (it names the
    connector's address as seen) pass both rules; our bytes stay what Perl sent."""
    conn = Conn(path)
    for side in "ab":
        peer = OTHER[side]
        role = "connect" if side == conn.connector() else "accept"
        # the peeraddr the peer names is, in the recording, our address of that connection
        named = parse_greeting_line1(conn.greeting(peer)[0])[5]["peeraddr"]
        hs = conn.handshake_for(side, role=role, peeraddr_check=lambda a, n=named: a == n)
        out = hs.data_to_send()
        assert out == conn.greeting_bytes(side)
        peer_greeting_len = len(conn.greeting_bytes(peer))
        events = hs.receive_data(conn.stream[peer][:peer_greeting_len])
        assert [type(e) for e in events] == [GreetingReceived]
        after_greeting = hs.data_to_send()
        if role == "accept":
            assert after_greeting == b"", "the acceptor sent its auth line before the peer's"
        else:
            assert after_greeting == (conn.auth_line(side) + "\n").encode()
        events = hs.receive_data(conn.stream[peer][peer_greeting_len : conn.data_start(peer)])
        assert isinstance(events[-1], Established)
        if role == "accept":
            assert hs.data_to_send() == (conn.auth_line(side) + "\n").encode()


@pytest.mark.parametrize(
    "path",
    [p for p in AUTH_CONNS if p.parent.name != "badauth-session"],
    ids=[i for p, i in zip(AUTH_CONNS, AUTH_IDS) if p.parent.name != "badauth-session"],
)
def test_recorded_greeting_relayed_to_another_address_is_refused(path):
    """The recorded Perl connector's greeting names the address it dialled: an acceptor at
    any other address refuses it before sending anything but its greeting."""
    conn = Conn(path)
    side = OTHER[conn.connector()]
    hs = conn.handshake_for(side, role="accept", peeraddr_check=lambda a: a == "10.9.9.9:4040")
    hs.data_to_send()
    with pytest.raises(RemoteProtocolError, match="not an address of this node"):
        hs.receive_data(conn.stream[conn.connector()][: conn.data_start(conn.connector())])
    assert hs.data_to_send() == b""
