"""Hostile load: slowloris handshakes and a flooding peer cannot lock legitimate nodes out."""

import socket
import time

import pytest

from netutil import free_port

# slow (docs/testing.md): real processes, ~10 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow


def _free_addr():
    return "127.0.0.1:%d" % free_port()


@pytest.fixture
def nodes(cluster):
    """``nodes(name, **configure_kwargs)`` starts a child node; the cluster stops them all."""
    return cluster.node


def test_slowloris_does_not_stop_a_legitimate_node(nodes):
    """Issue 8: 1,000 half-open, stalled handshakes; a real node still connects and talks."""
    addr = _free_addr()
    seed = nodes("seed", nodeid="seed", binds=[addr], seeds=[addr])
    host, port = addr.rsplit(":", 1)
    stalled = []
    try:
        for _ in range(1000):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"aemp;1;slow")  # a greeting that never ends
            stalled.append(s)
        t0 = time.monotonic()
        good = nodes("good", nodeid="good", seeds=[addr])
        good.exec("p = port(lambda *m: emit('got', list(m))); db_set('fam', p); emit('port', p)")
        (p,) = good.expect("port")
        seed.exec("db_mon('fam', lambda db, *a: %r in db and snd(%r, 'hello'))" % (p, p))
        assert good.expect("got", timeout=15) == [["hello"]]
        assert time.monotonic() - t0 < 15
        assert "too many pending handshakes" in seed.log_tail(2000)
    finally:
        for s in stalled:
            s.close()


def test_flooding_peer_does_not_starve_other_links(nodes):
    """Issue 8: fair reads -- one peer flooding a node, another link's ping-pong keeps going."""
    addr = _free_addr()
    seed = nodes("seed", nodeid="seed", binds=[addr], seeds=[addr])
    seed.exec(
        "cnt=[0]\nsink = port(lambda *m: cnt.__setitem__(0, cnt[0]+1)); db_set('sink', sink)\n"
        "def pong():\n"
        "    while True:\n"
        "        r, = receive('ping'); snd(r, 'pong')\n"
        "db_set('pong', spawn(pong)); emit('ok')"
    )
    seed.expect("ok")
    flooder = nodes("flooder", nodeid="flooder", seeds=[addr])
    pinger = nodes("pinger", nodeid="pinger", seeds=[addr])
    flooder.exec(
        "def go():\n"
        "    sink = list(db_keys('sink', timeout=5))[0]\n"
        "    emit('flooding')\n"
        "    for i in range(2000000):\n"
        "        snd(sink, 'junk', i, 'x' * 100)\n"
        "        if i % 1000 == 0: gevent.sleep(0)\n"
        "    emit('flood_done')\n"
        "go()"
    )
    flooder.expect("flooding", timeout=10)
    pinger.exec(
        "import time\n"
        "p = list(db_keys('pong', timeout=5))[0]\n"
        "lat = []\n"
        "for i in range(200):\n"
        "    t = time.perf_counter(); call(p, 'ping', timeout=5); lat.append(time.perf_counter() - t)\n"
        "lat.sort(); emit('lat', lat[len(lat)//2], lat[-1])"
    )
    p50, worst = pinger.expect("lat", timeout=60)
    assert worst < 2.0, "a ping took %.3f s while another peer flooded" % worst
    seed.exec("emit('count', cnt[0])")
    (count,) = seed.expect("count")
    assert count > 0  # the flood really was arriving while we measured
