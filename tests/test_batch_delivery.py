"""The frames of one read are delivered in one pass of the dispatcher (``kernel.deliver_frames``).

A raw AEMP client (``netutil.RawPeer``) writes many frames in one ``sendall``, so that the child
node reads them together; every test checks that the batch path behaves exactly as frame-by-frame
delivery did: per-sender order, node requests in their place among the messages, what handlers
send handled before the next frame, frames to a port that a handler killed dropped (also to a
greenlet port), a crashing handler kills only its port, and tracers see every frame.
"""

import pytest

from netutil import RawPeer


@pytest.fixture(params=["json", "cbor"])
def target(cluster, request):
    t = cluster.node("target", binds=["127.0.0.1:*"])
    t.run("""
        GOT = []
        def rec(name):
            return lambda *m: GOT.append([name] + list(m))
        CB2 = port(rec("cb2"))
        def cb1(*m):
            GOT.append(["cb1"] + list(m))
            if m[0] == "relay":
                snd(CB2, "from_cb1", m[1])   # queued: runs before the next frame
            elif m[0] == "kill_g":
                kil(G)
            elif m[0] == "crash":
                raise ValueError("crash on purpose")
        CB1 = port(cb1)
        def g_main():
            while True:
                GOT.append(["g"] + receive())
        G = spawn(g_main)
        def g2_main():
            rcv(SELF(), "die", lambda: kil(SELF()))   # a handler that kills its own port
            while True:
                GOT.append(["g2"] + receive())
        G2 = spawn(g2_main)
    """)
    peer = RawPeer(t.addr, nodeid="rawpeer", framings=(request.param,))
    peer.handshake()
    yield t, peer
    peer.close()


def _names(t, *var):
    return [t.ask(v).partition("#")[2] for v in var]


def _batch(peer, frames):
    from aemp_green.wire import framing

    enc = framing.codec(peer.framing)[0]
    peer.send_raw(b"".join(enc(f) for f in frames))  # one write: read as one batch


def test_order_node_requests_and_handler_sends(target):
    t, peer = target
    cb1, cb2, g = _names(t, "CB1", "CB2", "G")
    cb2_id = t.ask("CB2")
    frames = [
        [cb1, "a", 1],
        ["", "snd", cb2_id, "via_node_port", 2],  # a node request between messages
        [cb1, "relay", 3],
        [cb2, "direct", 4],
        [g, "x", 5],
        [cb1, "b", 6],
        [g, "y", 7],
        [cb2, "last", 8],
    ]
    _batch(peer, frames)
    t.run("wait_for(lambda: any(m[:2] == ['cb2', 'last'] for m in GOT))")
    t.run("wait_for(lambda: ['g', 'y', 7] in GOT)")
    got = t.ask("GOT")
    callbacks = [m for m in got if m[0] != "g"]
    assert callbacks == [
        ["cb1", "a", 1],
        ["cb2", "via_node_port", 2],
        ["cb1", "relay", 3],
        ["cb2", "from_cb1", 3],  # what the handler sent comes before the next frame
        ["cb2", "direct", 4],
        ["cb1", "b", 6],
        ["cb2", "last", 8],
    ]
    assert [m for m in got if m[0] == "g"] == [["g", "x", 5], ["g", "y", 7]]


def test_frames_to_ports_killed_within_the_batch_are_dropped(target):
    t, peer = target
    cb1, cb2, g, g2 = _names(t, "CB1", "CB2", "G", "G2")
    t.run("wait_for(lambda: mailbox_info(G)['queued'] == 0)")
    t.run("""
        import aemp_green.kernel as K
        G_PORT = K.lookup_port(G)
        G2_PORT = K.lookup_port(G2)
        CB1_PORT = K.lookup_port(CB1)
    """)
    frames = [
        [cb1, "kill_g"],  # the handler kills the greenlet port G
        [g, "lost", 1],
        [g, "lost", 2],
        [g2, "die"],  # G2's own handler kills G2: the next frames go to a dead port
        [g2, "lost", 3],
        [g2, "lost", 4],
        [cb1, "crash"],  # the handler raises: CB1 dies
        [cb1, "lost", 5],
        [cb2, "done"],
    ]
    _batch(peer, frames)
    t.run("wait_for(lambda: ['cb2', 'done'] in GOT)")
    got = t.ask("GOT")
    assert got == [["cb1", "kill_g"], ["cb1", "crash"], ["cb2", "done"]]
    # the dead greenlet port did not grow a mailbox again, CB1 is gone, CB2 lives
    assert t.ask("G_PORT.mailbox is None and G_PORT.monitors is False") is True
    assert t.ask("G2_PORT.mailbox is None and G2_PORT.monitors is False") is True
    assert t.ask("K.lookup_port(CB1) is None and CB1_PORT.monitors is False") is True
    assert t.ask("K.lookup_port(CB2) is not None") is True
    t.wait_log(lambda text: "crash on purpose" in text, what="the crash report of CB1")


def test_a_tracer_sees_every_frame_of_a_batch(target):
    t, peer = target
    cb2 = _names(t, "CB2")[0]
    t.run("""
        TRACED = []
        from aemp_green import trace as _trace
        _trace.add_tracer(lambda d, n, f: d == "RCV" and n == "rawpeer" and TRACED.append(list(f)))
    """)
    frames = [[cb2, "t", i] for i in range(50)]
    _batch(peer, frames)
    t.run("wait_for(lambda: ['cb2', 't', 49] in GOT)")
    assert t.ask("[f for f in TRACED if f and f[0] != '']") == frames
    assert t.ask("[m for m in GOT if m[1] == 't']") == [["cb2", "t", i] for i in range(50)]
