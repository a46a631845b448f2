"""Tests for the sans-IO AEMP handshake (``aemp_green.wire.handshake``): two Handshake objects
talking to each other, and hand-made peers that break every rule once."""

import base64
import hashlib

import pytest

from aemp_green.wire.handshake import (
    Established,
    GreetingReceived,
    Handshake,
    NeedTLS,
    _perl_int,
    hmac_token,
    make_nonce,
    parse_greeting_line1,
    tls_token,
)
from aemp_green.exceptions import LocalProtocolError, RemoteProtocolError

SECRET = "sekrit"


def pump(a, b, *, chunk=None, tls=True):
    """Exchange bytes between two handshakes until neither has anything to say.

    Returns (events_a, events_b). ``chunk`` feeds that many bytes at a time. NeedTLS is
    answered with start_tls_done() (the "TLS" is just the same byte pipe, so bytes that followed
    the greeting, ``pre_tls_data``, are fed again once "TLS" is up).
    """
    ev = {id(a): [], id(b): []}
    for _ in range(10):
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if not data:
                continue
            moved = True
            step = chunk or len(data)
            pieces = [data[i : i + step] for i in range(0, len(data), step)]
            for p in pieces:
                new = dst.receive_data(p)
                ev[id(dst)] += new
                if tls and any(isinstance(e, NeedTLS) for e in new):
                    # our fake TLS layer is the same byte pipe: what followed the greeting
                    # is "decrypted" as is
                    early = dst.pre_tls_data
                    dst.start_tls_done()
                    if early:
                        ev[id(dst)] += dst.receive_data(early)
        if not moved:
            break
    return ev[id(a)], ev[id(b)]


def hs(nodeid, **kw):
    kw.setdefault("secret", SECRET)
    return Handshake(nodeid=nodeid, **kw)


def established(events):
    est = [e for e in events if isinstance(e, Established)]
    assert len(est) == 1, events
    return est[0]


def greeting_of(h):
    return h.data_to_send()


def peer_lines(
    nodeid="peer",
    auths="tls_sha3_512,hmac_sha3_512",
    framings="cbor,json",
    kv="provider=test;mproto=1;gproto=1",
    nonce="NONCE",
    protocol="aemp",
    version="1",
):
    l1 = ";".join(x for x in (protocol, version, nodeid, auths, framings, kv) if x is not None)
    return l1, nonce


def feed_greeting(h, l1, l2, eol="\n"):
    return h.receive_data(("%s%s%s%s" % (l1, eol, l2, eol)).encode())


def auth_line_for(h, l1, l2, secret=SECRET, method="hmac_sha3_512", framing="json"):
    """The auth line a correct peer with greeting (l1, l2) would send to ``h``."""
    mine = h.local_greeting
    if method == "hmac_sha3_512":
        token = hmac_token(secret, l1, l2, *mine)
    elif method == "tls_sha3_512":
        token = tls_token(l1, l2, *mine)
    elif method == "cleartext":
        token = secret.encode().hex()
    else:
        token = ""
    return ("%s;%s;%s\n" % (method, token, framing)).encode()


# --------------------------------------------------------------------------- greeting format


def test_greeting_line1_format():
    h = hs("node/x", peeraddr="10.0.0.1:4040", nonce=bytes(66), provider="aemp_green-9")
    l1, l2, rest = h.data_to_send().split(b"\n")
    assert l1 == (
        b"aemp;1;node/x;tls_sha3_512,hmac_sha3_512;cbor,json;provider=aemp_green-9;"
        b"peeraddr=10.0.0.1:4040;mproto=1;gproto=1"
    )
    assert l2 == base64.b64encode(bytes(66)) and len(l2) == 88 and b"=" not in l2
    assert rest == b""
    assert h.data_to_send() == b""


def test_greeting_tls_and_extra():
    h = hs(
        "n",
        tls_offered=True,
        protocol="aemp-dataconn",
        extra={"dataconn_id": "xyz", "flag": None},
        auth_accept=("hmac_sha3_512",),
        framings=("json",),
    )
    l1 = h.data_to_send().split(b"\n")[0].decode()
    protocol, version, nodeid, auths, framings, kv = parse_greeting_line1(l1)
    assert (protocol, version, nodeid, auths, framings) == (
        "aemp-dataconn",
        "1",
        "n",
        ["hmac_sha3_512"],
        ["json"],
    )
    assert kv["tls"] == "1.0" and kv["dataconn_id"] == "xyz" and kv["flag"] is None
    assert kv["mproto"] == "1" and kv["gproto"] == "1"
    assert l1.endswith(";flag")


def test_default_nonce_is_random_base64():
    n1, n2 = make_nonce(), make_nonce()
    assert n1 != n2 and len(n1) == 88 and len(base64.b64decode(n1)) == 66
    a, b = hs("a"), hs("a")
    assert a.local_greeting[1] != b.local_greeting[1]
    assert len(a.local_greeting[1]) == 88


def test_str_nonce_sent_verbatim():
    h = hs("a", nonce="")
    assert h.data_to_send().endswith(b"\n\n")


@pytest.mark.parametrize(
    "kw",
    [
        {"nodeid": "a;b"},
        {"nodeid": "a\nb"},
        {"nodeid": ""},
        {"protocol": "http"},
        {"framings": ("cb,or",)},
        {"framings": ()},
        {"auth_accept": ("a;b",)},
        {"peeraddr": "x;y"},
        {"extra": {"k=v": "1"}},
        {"nonce": "a\nb"},
        {"_kv_order": ["provider"]},
    ],
)
def test_constructor_refuses_what_a_greeting_cannot_carry(kw):
    kw = dict({"nodeid": "n"}, **kw)
    with pytest.raises(LocalProtocolError):
        Handshake(**kw)


def test_parse_greeting_line1_kv_rules():
    p = parse_greeting_line1("aemp;1;n;a,b;json;k=v=w;bare;e=")
    assert p == ("aemp", "1", "n", ["a", "b"], ["json"], {"k": "v=w", "bare": None, "e": ""})
    with pytest.raises(RemoteProtocolError):
        parse_greeting_line1("aemp;1;n;a")


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize(
    "fa, fb, a_sends, b_sends",
    [
        (("cbor", "json"), ("cbor", "json"), "cbor", "cbor"),
        (("json",), ("json",), "json", "json"),
        (("json",), ("cbor", "json"), "json", "json"),
        (("cbor",), ("cbor", "json"), "cbor", "cbor"),
        (("cbor", "json"), ("json", "cbor"), "json", "cbor"),
    ],
)
def test_two_handshakes_agree(fa, fb, a_sends, b_sends):
    a, b = hs("a", framings=fa, peeraddr="b:1"), hs("b", framings=fb, peeraddr="a:2")
    ev_a, ev_b = pump(a, b)
    ga = [e for e in ev_a if isinstance(e, GreetingReceived)][0]
    assert ga.nodeid == "b" and ga.framings == list(fb) and ga.kv["peeraddr"] == "a:2"
    assert ga.protocol == "aemp" and ga.version == 1 and ga.nonce == b.local_greeting[1]
    ea, eb = established(ev_a), established(ev_b)
    assert (ea.send_framing, ea.recv_framing) == (a_sends, b_sends)
    assert (eb.send_framing, eb.recv_framing) == (b_sends, a_sends)
    assert ea.peer_nodeid == "b" and eb.peer_nodeid == "a"
    assert ea.auth_method == eb.auth_method == "hmac_sha3_512"
    assert ea.tls is False and ea.protocol == "aemp"
    assert a.state == b.state == "ESTABLISHED"
    assert a.trailing_data == b.trailing_data == b""
    assert a.peer_greeting == b.local_greeting


def test_byte_by_byte():
    a, b = hs("a"), hs("b")
    ev_a, ev_b = pump(a, b, chunk=1)
    assert established(ev_a).peer_nodeid == "b"
    assert established(ev_b).peer_nodeid == "a"


def test_crlf_lines_are_accepted_and_hashed_without_cr():
    h = hs("me")
    h.data_to_send()
    l1, l2 = peer_lines()
    ev = feed_greeting(h, l1, l2, eol="\r\n")
    assert isinstance(ev[0], GreetingReceived) and ev[0].nonce == "NONCE"
    assert ev[0].kv == {"provider": "test", "mproto": "1", "gproto": "1"}
    ours = h.data_to_send().decode()
    assert ours.startswith("hmac_sha3_512;" + hmac_token(SECRET, *h.local_greeting, l1, l2))
    line = auth_line_for(h, l1, l2).replace(b"\n", b"\r\n")
    est = h.receive_data(line + b"trailing")[0]
    assert isinstance(est, Established) and est.recv_framing == "json"
    assert h.trailing_data == b"trailing"


def test_trailing_data_after_auth_line():
    a, b = hs("a"), hs("b")
    b.receive_data(a.data_to_send())
    ev = a.receive_data(b.data_to_send() + b'\x82\x40\x47g_slave' + b"garbage\n\x00")
    assert isinstance(ev[-1], Established)
    assert a.trailing_data == b'\x82\x40\x47g_slave' + b"garbage\n\x00"
    assert a.receive_data(b"more") == []
    assert a.trailing_data.endswith(b"\x00more")


def test_greeting_event_comes_before_anything_is_decided_by_the_io_layer():
    """The I/O layer can still refuse after GreetingReceived: our auth line is queued, not sent."""
    a, b = hs("a"), hs("b")
    ev = b.receive_data(a.data_to_send())
    assert [type(e) for e in ev] == [GreetingReceived]
    out = b.data_to_send()
    assert out.count(b"\n") == 3 and b"hmac_sha3_512;" in out


def test_long_secret_and_bytes_secret():
    long = "x" * 200  # longer than the 72-byte SHA3-512 block: hashed first (standard HMAC)
    a, b = hs("a", secret=long), hs("b", secret=long.encode())
    ev_a, ev_b = pump(a, b)
    established(ev_a), established(ev_b)


# --------------------------------------------------------------------------- refusals


def _both_refuse(a, b, match):
    with pytest.raises(RemoteProtocolError, match=match):
        pump(a, b)


def test_wrong_secret():
    a, b = hs("a", secret="one"), hs("b", secret="two")
    b.receive_data(a.data_to_send())
    with pytest.raises(RemoteProtocolError, match="authentication failure/shared secret mismatch"):
        a.receive_data(b.data_to_send())
    with pytest.raises(RemoteProtocolError, match="authentication failure/shared secret mismatch"):
        b.receive_data(a.data_to_send())
    # sticky
    with pytest.raises(RemoteProtocolError, match="shared secret mismatch"):
        a.receive_data(b"")
    assert a.state == "ERROR" and "mismatch" in a.error


def test_tampered_token():
    h = hs("me")
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    line = auth_line_for(h, l1, l2)
    bad = line[:20] + (b"0" if line[20:21] != b"0" else b"1") + line[21:]
    with pytest.raises(RemoteProtocolError, match="shared secret mismatch"):
        h.receive_data(bad)


def test_no_secret_and_no_tls():
    a, b = hs("a", secret=None), hs("b")
    b.receive_data(a.data_to_send())
    with pytest.raises(
        RemoteProtocolError, match="unable to handshake TLS and no shared secret configured"
    ):
        a.receive_data(b.data_to_send())


def test_we_without_secret_refuse_hmac_peer():
    h = hs("me", secret=None, auth_offer=("tls_sha3_512",))
    l1, l2 = peer_lines(auths="hmac_sha3_512")
    with pytest.raises(RemoteProtocolError, match="no common auth type supported"):
        feed_greeting(h, l1, l2)


def test_no_common_auth_type():
    h = hs("me")
    l1, l2 = peer_lines(auths="foo,tls_anon,cleartext")
    with pytest.raises(
        RemoteProtocolError, match="foo,tls_anon,cleartext: no common auth type supported"
    ):
        feed_greeting(h, l1, l2)


def test_tls_methods_skipped_without_tls():
    h = hs("me")
    l1, l2 = peer_lines(auths="tls_sha3_512,tls_anon,hmac_sha3_512")
    feed_greeting(h, l1, l2)
    assert h.data_to_send().split(b"\n")[2].startswith(b"hmac_sha3_512;")


def test_only_tls_methods_without_tls():
    h = hs("me")
    l1, l2 = peer_lines(auths="tls_sha3_512")
    with pytest.raises(RemoteProtocolError, match="no common auth type supported"):
        feed_greeting(h, l1, l2)


def test_unknown_rcv_auth_method():
    h = hs("me")
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    with pytest.raises(RemoteProtocolError, match="fatal, selected unsupported rcv auth method"):
        h.receive_data(b"md5;abc;json\n")


def test_peer_auth_method_not_in_our_auth_accept():
    h = hs("me", auth_accept=("tls_sha3_512",))
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    with pytest.raises(RemoteProtocolError, match="hmac_sha3_512: auth method not accepted"):
        h.receive_data(auth_line_for(h, l1, l2))


@pytest.mark.parametrize("method", ["cleartext", "tls_anon", "tls_sha3_512"])
def test_tls_only_methods_refused_without_tls(method):
    """Stricter than Perl: even when listed in auth_accept, never without TLS."""
    h = hs("me", auth_accept=("tls_sha3_512", "hmac_sha3_512", "tls_anon", "cleartext"))
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    with pytest.raises(RemoteProtocolError, match="%s: auth method needs TLS" % method):
        h.receive_data(auth_line_for(h, l1, l2, method=method))


def test_cleartext_refused_when_not_accepted():
    h = hs("me")
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    with pytest.raises(RemoteProtocolError, match="cleartext: auth method not accepted"):
        h.receive_data(auth_line_for(h, l1, l2, method="cleartext"))


def test_no_common_framing():
    a, b = hs("a", framings=("json",)), hs("b", framings=("cbor",))
    with pytest.raises(RemoteProtocolError, match="no common framing method supported"):
        b.receive_data(a.data_to_send())


def test_storable_only_peer():
    h = hs("me")
    l1, l2 = peer_lines(framings="storable")
    with pytest.raises(RemoteProtocolError, match="no common framing method supported"):
        feed_greeting(h, l1, l2)


@pytest.mark.parametrize("framing", ["storable", "", "JSON"])
def test_unusable_remote_framing(framing):
    h = hs("me")
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    with pytest.raises(RemoteProtocolError, match="%s: unusable remote framing" % framing):
        h.receive_data(auth_line_for(h, l1, l2, framing=framing))


def test_remote_framing_not_offered_by_us_is_still_taken():
    """Like Perl, the framing in the auth line is taken as given if we can read it."""
    h = hs("me", framings=("json",))
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    est = h.receive_data(auth_line_for(h, l1, l2, framing="cbor"))[0]
    assert (est.send_framing, est.recv_framing) == ("json", "cbor")


@pytest.mark.parametrize(
    "line",
    [b"hmac_sha3_512;abc\n", b"hmac_sha3_512;a;json;x\n", b"\n", b"hmac_sha3_512;\xff;json\n"],
)
def test_unparsable_auth_line(line):
    h = hs("me")
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    with pytest.raises(RemoteProtocolError, match="unparsable auth line"):
        h.receive_data(line)


def test_echo_attack():
    h = hs("me")
    with pytest.raises(RemoteProtocolError, match=r"authentication error, echo attack\?"):
        h.receive_data(h.data_to_send())


def test_self_connection():
    a, b = hs("same"), hs("same")
    with pytest.raises(RemoteProtocolError, match="I refuse to talk to myself"):
        b.receive_data(a.data_to_send())
    assert b.data_to_send().count(b"\n") == 2  # greeting only, no auth line


@pytest.mark.parametrize(
    "l1, match",
    [
        ("http;1;p;hmac_sha3_512;json", "unparsable greeting, expected 'aemp', got 'http'"),
        ("aemp;2;p;hmac_sha3_512;json", r"version mismatch \(we: 1, they: 2\)"),
        ("aemp;0;p;hmac_sha3_512;json", r"version mismatch \(we: 1, they: 0\)"),
        ("aemp;1;p;hmac_sha3_512", "unparsable greeting"),
        ("GET / HTTP/1.1", "unparsable greeting"),
        ("aemp;1;;hmac_sha3_512;json", "empty node id"),
        ("aemp-;1;p;hmac_sha3_512;json", "expected 'aemp', got 'aemp-'"),
    ],
)
def test_bad_line1(l1, match):
    h = hs("me")
    with pytest.raises(RemoteProtocolError, match=match):
        h.receive_data(l1.encode() + b"\n")


def test_non_utf8_greeting():
    with pytest.raises(RemoteProtocolError, match="unparsable greeting"):
        hs("me").receive_data(b"aemp;1;\xff;hmac_sha3_512;json\n")
    h = hs("me")
    h.receive_data(b"aemp;1;p;hmac_sha3_512;json\n")
    with pytest.raises(RemoteProtocolError, match="nonce"):
        h.receive_data(b"\xff\xfe\n")


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_line_length_limit(eol):
    h = hs("me", max_line=4096)
    line = b"aemp;1;p;hmac_sha3_512;json;pad=" + b"x" * 4096
    line = line[:4096]
    assert len(line) == 4096
    h.receive_data(line + eol)  # exactly the limit: fine
    assert h.state == "LINE2"
    h2 = hs("me")
    with pytest.raises(RemoteProtocolError, match="greeting line too long"):
        h2.receive_data(line + b"x" + eol)


def test_line_too_long_detected_before_newline():
    h = hs("me")
    h.receive_data(b"a" * 4096)
    with pytest.raises(RemoteProtocolError, match="greeting line too long"):
        h.receive_data(b"a")
    h = hs("me")
    with pytest.raises(RemoteProtocolError, match="greeting line too long"):
        for _ in range(5000):
            h.receive_data(b"z")


def test_auth_line_too_long():
    h = hs("me")
    l1, l2 = peer_lines()
    feed_greeting(h, l1, l2)
    with pytest.raises(RemoteProtocolError, match="auth line too long"):
        h.receive_data(b"hmac_sha3_512;" + b"0" * 5000)


def test_garbage_before_greeting_newline():
    with pytest.raises(RemoteProtocolError):
        hs("me").receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n")


# --------------------------------------------------------------------------- sub-protocols


def test_listener_learns_dataconn_subprotocol():
    client = hs("c", protocol="aemp-dataconn", extra={"dataconn_id": "42"})
    listener = hs("l")
    ev_c, ev_l = pump(client, listener)
    g = [e for e in ev_l if isinstance(e, GreetingReceived)][0]
    assert g.protocol == "aemp-dataconn" and g.kv["dataconn_id"] == "42"
    assert established(ev_l).protocol == "aemp-dataconn"
    gc = [e for e in ev_c if isinstance(e, GreetingReceived)][0]
    assert gc.protocol == "aemp"
    assert established(ev_c).protocol == "aemp-dataconn"


def test_subprotocol_mismatch():
    a, b = hs("a", protocol="aemp-dataconn"), hs("b", protocol="aemp-other")
    with pytest.raises(RemoteProtocolError, match="expected 'aemp-other', got 'aemp-dataconn'"):
        b.receive_data(a.data_to_send())


# --------------------------------------------------------------------------- TLS


def test_tls_both_sides():
    a, b = hs("a", tls_offered=True, secret=None), hs("b", tls_offered=True, secret=None)
    ev_b = b.receive_data(a.data_to_send())
    ev_a = a.receive_data(b.data_to_send())
    assert [type(e) for e in ev_a] == [GreetingReceived, NeedTLS]
    assert [type(e) for e in ev_b] == [GreetingReceived, NeedTLS]
    # roles: the lower nonce text is the TLS client
    assert ev_a[1].server_side == (a.local_greeting[1] > b.local_greeting[1])
    assert ev_b[1].server_side == (not ev_a[1].server_side)
    assert a.data_to_send() == b.data_to_send() == b""  # no auth line before TLS is up
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"x")
    a.start_tls_done()
    assert a.data_to_send().startswith(b"tls_sha3_512;")


def test_tls_full_exchange_tls_sha3_512():
    a, b = hs("a", tls_offered=True, secret=None), hs("b", tls_offered=True, secret=None)
    ev_a, ev_b = pump(a, b)
    need_a = [e for e in ev_a if isinstance(e, NeedTLS)][0]
    need_b = [e for e in ev_b if isinstance(e, NeedTLS)][0]
    assert need_a.server_side != need_b.server_side
    ea, eb = established(ev_a), established(ev_b)
    assert ea.auth_method == eb.auth_method == "tls_sha3_512"
    assert ea.tls and eb.tls and a.tls_active


def test_tls_sha3_512_token_is_plain_sha3():
    l1, l2, p1, p2 = "a", "b", "c", "d"
    assert tls_token(l1, l2, p1, p2) == hashlib.sha3_512(b"a\nb\nc\nd\n").hexdigest()


def test_tls_only_one_side_has_cert():
    a, b = hs("a", tls_offered=True), hs("b")
    ev_a, ev_b = pump(a, b)
    assert not any(isinstance(e, NeedTLS) for e in ev_a + ev_b)
    assert established(ev_a).auth_method == "hmac_sha3_512"


@pytest.mark.parametrize(
    "value, want",
    [
        ("1.0", True),
        ("1", True),
        ("1.9", True),
        (" 1", True),
        ("2", False),
        ("0", False),
        ("", False),
        (None, False),
        ("yes", False),
        ("1e0", True),
        ("10e-1", True),
    ],
)
def test_tls_value_read_like_perl_int(value, want):
    h = hs("me", tls_offered=True)
    kv = "provider=x" + ("" if value is None else ";tls" if value == "" else ";tls=" + value)
    if value == "":
        kv = "provider=x;tls="
    l1, l2 = peer_lines(kv=kv)
    ev = feed_greeting(h, l1, l2)
    assert any(isinstance(e, NeedTLS) for e in ev) == want


def test_perl_int():
    values = ("1.0", "abc", "3x", "-2.5", "1e999", ".5", None)
    assert [_perl_int(x) for x in values] == [1, 0, 3, -2, 0, 0, 0]


def test_tls_no_common_auth_with_tls():
    a = hs(
        "a", tls_offered=True, auth_offer=("tls_anon",), auth_accept=("tls_anon", "hmac_sha3_512")
    )
    b = hs(
        "b",
        tls_offered=True,
        auth_offer=("cleartext",),
        auth_accept=("tls_sha3_512", "hmac_sha3_512", "tls_anon", "cleartext"),
    )
    with pytest.raises(RemoteProtocolError, match="tls_anon,hmac_sha3_512: no common auth type"):
        b.receive_data(a.data_to_send())


def test_tls_anon_accepted_with_tls():
    accept = ("tls_sha3_512", "hmac_sha3_512", "tls_anon", "cleartext")
    a = hs("a", tls_offered=True, auth_offer=("tls_anon",), auth_accept=accept)
    b = hs("b", tls_offered=True, auth_offer=("tls_anon",), auth_accept=("tls_anon",))
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    a.start_tls_done()
    b.start_tls_done()
    a_auth, b_auth = a.data_to_send(), b.data_to_send()
    assert a_auth == b_auth == b"tls_anon;;cbor\n"
    assert established(a.receive_data(b_auth)).auth_method == "tls_anon"
    est_b = established(b.receive_data(a_auth))
    assert est_b.auth_method == "tls_anon" and est_b.tls


def test_cleartext_with_tls():
    accept = ("cleartext",)
    a = hs("a", tls_offered=True, auth_offer=("cleartext",), auth_accept=accept)
    b = hs("b", tls_offered=True, auth_offer=("cleartext",), auth_accept=accept)
    ev_a, ev_b = pump(a, b)
    assert established(ev_a).auth_method == "cleartext"
    c = hs("c", tls_offered=True, auth_offer=("cleartext",), auth_accept=accept, secret="other")
    d = hs("d", tls_offered=True, auth_offer=("cleartext",), auth_accept=accept)
    with pytest.raises(RemoteProtocolError, match="shared secret mismatch"):
        pump(c, d)


def test_pre_tls_data_kept_for_the_io_layer():
    a, b = hs("a", tls_offered=True), hs("b", tls_offered=True)
    ev = b.receive_data(a.data_to_send() + b"\x16\x03\x01TLS-client-hello")
    assert isinstance(ev[-1], NeedTLS)
    assert b.pre_tls_data == b"\x16\x03\x01TLS-client-hello"
    b.start_tls_done()
    assert b.pre_tls_data == b""
    with pytest.raises(LocalProtocolError):
        b.start_tls_done()


def test_start_tls_done_without_need():
    with pytest.raises(LocalProtocolError):
        hs("a").start_tls_done()


# --------------------------------------------------------------------------- relays (roles, peeraddr)
# docs/security.md, "Relayed handshakes": the attacks of the security issue, on bytes.

A_ADDR, B_ADDR, EVIL_ADDR, EVIL2_ADDR = "10.0.0.1:4040", "10.0.0.2:4040", "10.6.6.6:1", "10.6.6.6:2"


def _addr_is(*ok):
    return lambda addr: addr in ok


def _lines(data):
    return data.split(b"\n")[:-1]


def test_relay_between_two_acceptors_gets_no_token():
    """An attacker connects to A and B and relays their greetings: both accept and wait for
    the connector's proof, so neither sends an auth line."""
    a = Handshake(
        nodeid="A",
        secret="s",
        role="accept",
        peeraddr="10.6.6.6:7",
        peeraddr_check=_addr_is(A_ADDR),
    )
    b = Handshake(
        nodeid="B",
        secret="s",
        role="accept",
        peeraddr="10.6.6.6:8",
        peeraddr_check=_addr_is(B_ADDR),
    )
    ga, gb = a.data_to_send(), b.data_to_send()
    # each acceptor's greeting names the attacker's address as the connector: the other refuses
    # it as a connector greeting, or (without the check) still only waits
    for hs, g in ((a, gb), (b, ga)):
        try:
            hs.receive_data(g)
        except RemoteProtocolError:
            pass
        assert hs.data_to_send() == b"", "an acceptor sent its auth line to an unproven peer"


def test_relay_between_two_acceptors_without_peeraddr_check_still_gets_no_token():
    a = Handshake(nodeid="A", secret="s", role="accept")
    b = Handshake(nodeid="B", secret="s", role="accept")
    ga, gb = a.data_to_send(), b.data_to_send()
    assert [type(e) for e in a.receive_data(gb)] == [GreetingReceived]
    assert [type(e) for e in b.receive_data(ga)] == [GreetingReceived]
    assert a.data_to_send() == b.data_to_send() == b""
    assert a.state == b.state == "AUTH"


def test_proof_of_a_node_that_dialled_the_attacker_is_useless_elsewhere():
    """V dials the attacker (its address is in V's seeds); the attacker relays to T. V's greeting
    names the attacker's address, which T refuses before sending anything."""
    v = Handshake(nodeid="V", secret="s", peeraddr=EVIL_ADDR, role="connect")
    t = Handshake(
        nodeid="T",
        secret="s",
        role="accept",
        peeraddr="10.6.6.6:9",
        peeraddr_check=_addr_is(B_ADDR),
    )
    gv, gt = v.data_to_send(), t.data_to_send()
    v.receive_data(gt)  # V (no check of its own here) proves at once
    auth_v = v.data_to_send()
    assert auth_v.startswith(b"hmac_sha3_512;")
    with pytest.raises(RemoteProtocolError, match="not an address of this node"):
        t.receive_data(gv + auth_v)
    assert t.data_to_send() == b""
    assert t.state == "ERROR"


def test_the_same_relay_succeeds_without_the_peeraddr_check():
    """The control for the test above: the check is what stops it (this is the attack)."""
    v = Handshake(nodeid="V", secret="s", peeraddr=EVIL_ADDR, role="connect")
    t = Handshake(nodeid="T", secret="s", role="accept", peeraddr="10.6.6.6:9")
    gv, gt = v.data_to_send(), t.data_to_send()
    v.receive_data(gt)
    events = t.receive_data(gv + v.data_to_send())
    assert isinstance(events[-1], Established) and events[-1].peer_nodeid == "V"


def test_two_nodes_made_to_dial_the_attacker_cannot_be_cross_relayed():
    """V1 and V2 both dial the attacker, who passes each one's greeting to the other as the
    acceptor's. Each connector sees a peeraddr that is not its own address and stops before
    sending its auth line."""
    v1 = Handshake(
        nodeid="V1",
        secret="s",
        peeraddr=EVIL_ADDR,
        role="connect",
        peeraddr_check=_addr_is("10.0.0.1:50001"),
    )
    v2 = Handshake(
        nodeid="V2",
        secret="s",
        peeraddr=EVIL2_ADDR,
        role="connect",
        peeraddr_check=_addr_is("10.0.0.2:50002"),
    )
    g1, g2 = v1.data_to_send(), v2.data_to_send()
    for hs, g in ((v1, g2), (v2, g1)):
        with pytest.raises(RemoteProtocolError, match="not this connection's address"):
            hs.receive_data(g)
        assert hs.data_to_send() == b""


def test_reflection_and_missing_peeraddr_are_refused():
    a = Handshake(
        nodeid="A",
        secret="s",
        role="accept",
        peeraddr="10.6.6.6:7",
        peeraddr_check=_addr_is(A_ADDR),
    )
    with pytest.raises(RemoteProtocolError, match="echo attack"):
        a.receive_data(a.data_to_send())
    a2 = Handshake(nodeid="A", secret="s", role="accept", peeraddr_check=_addr_is(A_ADDR))
    with pytest.raises(RemoteProtocolError, match="no peeraddr"):
        a2.receive_data(b"aemp;1;X;hmac_sha3_512;json\nnonce\n")
    assert (
        a2.data_to_send()
        == a2.local_greeting[0].encode() + b"\n" + a2.local_greeting[1].encode() + b"\n"
    )


def test_connector_and_acceptor_with_checks_establish_and_acceptor_proves_last():
    c = Handshake(
        nodeid="C",
        secret="s",
        peeraddr=B_ADDR,
        role="connect",
        peeraddr_check=_addr_is("10.0.0.1:50001"),
    )
    acc = Handshake(
        nodeid="B",
        secret="s",
        role="accept",
        peeraddr="10.0.0.1:50001",
        peeraddr_check=_addr_is(B_ADDR),
    )
    gc, ga = c.data_to_send(), acc.data_to_send()
    acc.receive_data(gc)
    assert acc.data_to_send() == b""
    c.receive_data(ga)
    auth_c = c.data_to_send()
    (est_a,) = acc.receive_data(auth_c)
    auth_a = acc.data_to_send()
    assert _lines(auth_a)[0].startswith(b"hmac_sha3_512;")
    (est_c,) = c.receive_data(auth_a)
    assert (est_a.peer_nodeid, est_c.peer_nodeid) == ("C", "B")


def test_acceptor_never_sends_its_token_after_a_wrong_one():
    c = Handshake(nodeid="C", secret="wrong", peeraddr=B_ADDR)
    acc = Handshake(nodeid="B", secret="s", role="accept", peeraddr_check=_addr_is(B_ADDR))
    ga = acc.data_to_send()
    acc.receive_data(c.data_to_send())
    assert acc.data_to_send() == b""
    c.receive_data(ga)
    with pytest.raises(RemoteProtocolError, match="shared secret mismatch"):
        acc.receive_data(c.data_to_send())
    assert acc.data_to_send() == b""


def test_role_is_checked():
    with pytest.raises(LocalProtocolError, match="role"):
        Handshake(nodeid="n", role="server")


def test_node_id_with_control_characters_is_refused():
    """A node ID ends up in log lines and monitor reasons: one with control characters (a
    terminal escape, a newline in disguise) is refused at the greeting."""
    hs = Handshake(nodeid="us", secret="s")
    with pytest.raises(RemoteProtocolError, match="node id with control characters"):
        hs.receive_data(b"aemp;1;evil\x1b[2J;hmac_sha3_512;json\n")
    ok = Handshake(nodeid="us", secret="s")
    assert ok.receive_data(b"aemp;1;n\xc3\xa4me/1;hmac_sha3_512;json\n") == []  # printable
