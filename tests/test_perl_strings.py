"""Strings from Perl nodes (docs/running.md, "Strings from Perl nodes"): a Perl string has no
bytes/text distinction, and CBOR::XS sends one without the UTF-8 flag ("caf\\xe9") as a CBOR
byte string. From a peer whose greeting names a Perl provider (``provider=AE-...``) such byte
strings, keys and values alike, arrive as ``str`` (read as Latin-1), as they do with json;
between Python nodes a ``bytes`` stays ``bytes``."""

import cbor2
import pytest

from aemp_green.wire.framing import CborDecoder
from netutil import RawPeer

LATIN1_FRAME = ["p", b"caf\xe9", {b"cl\xe9": b"valeur \xe0 moi", "k": [b"\xff\xfe", 1]}]


def test_decoder_reads_byte_strings_as_latin1_text_when_asked():
    data = cbor2.dumps(LATIN1_FRAME)
    assert CborDecoder(text_bytes=True).feed(data) == [
        ["p", "café", {"clé": "valeur à moi", "k": ["\xff\xfe", 1]}]
    ]
    assert CborDecoder().feed(data) == [LATIN1_FRAME]
    # cut anywhere, the same (the item-by-item path)
    for cut in (1, 5, len(data) - 1):
        d = CborDecoder(text_bytes=True)
        assert d.feed(data[:cut]) + d.feed(data[cut:]) == [
            ["p", "café", {"clé": "valeur à moi", "k": ["\xff\xfe", 1]}]
        ]


@pytest.mark.parametrize(
    "provider,expected",
    [
        ("AE-2.02", ["café", {"clé": "valeur à moi", "k": ["\xff\xfe", 1]}]),
        ("aemp_green-0.2.0", [b"caf\xe9", {b"cl\xe9": b"valeur \xe0 moi", "k": [b"\xff\xfe", 1]}]),
    ],
    ids=["perl-peer", "python-peer"],
)
def test_byte_strings_from_a_perl_peer_arrive_as_text(cluster, provider, expected):
    n = cluster.node("n", framing_format=["cbor"])
    n.run("""
        P = port(lambda *m: emit("got", repr(list(m))))
        emit("port", P)
    """)
    name = n.expect("port")[0].partition("#")[2]
    peer = RawPeer(n.addr, nodeid="perlish", framings=("cbor",), provider=provider)
    try:
        peer.handshake()
        frame = list(LATIN1_FRAME)
        frame[0] = name
        peer.send_frame(frame)
        assert n.expect("got")[0] == repr(expected)
    finally:
        peer.close()
