"""A frame beyond ``max_frame`` between two real nodes: the receiver logs one line naming the
frame's size (or how much of it had arrived) and the limit, and drops the link.

Node ``small`` runs with ``max_frame=65536``; node ``big`` (default limit) sends it a message of
about 100 KB over a link using one framing (json or cbor, set on both nodes).
"""

import re

import pytest


MAX_FRAME = 65536
_LINE = re.compile(
    r"^.*protocol error, dropping connection: (json|cbor) frame larger than "
    r"allowed: (at least )?(\d+) bytes, max_frame is (\d+) bytes \(raise the "
    r"max_frame setting to accept it\)$",
    re.M,
)


@pytest.mark.parametrize("framing", ["json", "cbor"])
def test_frame_beyond_max_frame_logs_both_sizes_and_drops_the_link(cluster, framing):
    small = cluster.seed("small", max_frame=MAX_FRAME, framing_format=[framing])
    big = cluster.node("big", seeds=[small.addr], framing_format=[framing])
    big.run("wait_for(lambda: node_is_up('small'))", timeout=15)
    small.run("""
        wait_for(lambda: node_is_up('big'))
        L0 = node._nodes['big'].link
        GOT = []
        P = port(lambda *m: GOT.append(m[0]))
    """)
    p = small.ask("P")
    assert small.ask("L0.recv_framing") == framing
    big.run("snd(%r, 'before', 1)" % p)
    small.run("wait_for(lambda: GOT == ['before'])")
    big.run("snd(%r, 'huge', 'x' * 100000)" % p)
    small.run("wait_for(lambda: L0.closed)", timeout=15)
    text = small.wait_log(lambda t: _LINE.search(t), what="the frame size line")
    lines = _LINE.findall(small.log_text())
    assert len(lines) == 1, lines
    kind, at_least, size, limit = lines[0]
    assert kind == framing and int(limit) == MAX_FRAME
    assert int(size) > MAX_FRAME and (at_least or int(size) >= 100000), lines[0]
    assert "Traceback" not in text
    assert small.alive and small.ask("GOT") == ["before"]
