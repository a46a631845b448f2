"""A network partition between real network namespaces (issue 8).

The test builds its own hosts: two network namespaces joined by a veth pair (10.77.0.1 and
10.77.0.2, addresses that exist only inside this test's namespaces), runs a seed in one and a
node in the other, and cuts the link with an iptables DROP rule in both directions (no RST, no
FIN: a silent partition). Checked: monitors fire within monitor_timeout, no message is
delivered after its monitor fired, the database view converges after healing, and sends after
healing go through. Needs root, ``ip`` (iproute2) and ``iptables``; skipped with the reason
otherwise (``.ci/run`` installs iptables when it can).
"""

import os
import shutil
import subprocess
import time
import uuid

import pytest

from netutil import ChildNode

MT = 1.5  # monitor_timeout for both nodes


def _run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def _why_not():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return "needs the %r command (iproute2 / iptables)" % tool
    name = "aempchk" + uuid.uuid4().hex[:6]
    r = _run("ip", "netns", "add", name)
    if r.returncode:
        return "ip netns add failed: %s" % r.stderr.strip()
    try:
        r = _run("ip", "netns", "exec", name, "iptables", "-L", "-n")
        if r.returncode:
            return "iptables does not work in a namespace: %s" % r.stderr.strip()
    finally:
        _run("ip", "netns", "del", name)
    return None


@pytest.fixture
def netns():
    why = _why_not()
    if why:
        pytest.skip(why)
    tag = uuid.uuid4().hex[:5]
    ns1, ns2, v1, v2 = "aemp1" + tag, "aemp2" + tag, "va" + tag, "vb" + tag
    steps = [
        ("ip", "netns", "add", ns1),
        ("ip", "netns", "add", ns2),
        ("ip", "link", "add", v1, "type", "veth", "peer", "name", v2),
        ("ip", "link", "set", v1, "netns", ns1),
        ("ip", "link", "set", v2, "netns", ns2),
        ("ip", "-n", ns1, "addr", "add", "10.77.0.1/24", "dev", v1),
        ("ip", "-n", ns2, "addr", "add", "10.77.0.2/24", "dev", v2),
        ("ip", "-n", ns1, "link", "set", v1, "up"),
        ("ip", "-n", ns2, "link", "set", v2, "up"),
        ("ip", "-n", ns1, "link", "set", "lo", "up"),
        ("ip", "-n", ns2, "link", "set", "lo", "up"),
    ]
    try:
        for cmd in steps:
            r = _run(*cmd)
            if r.returncode:
                pytest.skip("cannot build the test network (%s): %s" % (" ".join(cmd), r.stderr))
        yield ns1, ns2
    finally:
        _run("ip", "netns", "del", ns1)
        _run("ip", "netns", "del", ns2)


def _cut(ns, peer_ip, on):
    op = "-A" if on else "-D"
    for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
        r = _run("ip", "netns", "exec", ns, "iptables", op, chain, flag, peer_ip, "-j", "DROP")
        assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_partition_fires_monitors_and_heals(netns, tmp_path):
    ns1, ns2 = netns
    seed_addr = "10.77.0.1:4077"
    nodes = []
    try:
        seed = ChildNode(
            tmp_path,
            "seed",
            _prefix=["ip", "netns", "exec", ns1],
            nodeid="seed",
            binds=[seed_addr],
            seeds=[seed_addr],
            monitor_timeout=MT,
        )
        nodes.append(seed)
        far = ChildNode(
            tmp_path,
            "far",
            _prefix=["ip", "netns", "exec", ns2],
            nodeid="far",
            binds=["10.77.0.2:*"],
            seeds=[seed_addr],
            monitor_timeout=MT,
        )
        nodes.append(far)
        # far: a receiver that reports every message, registered in the database
        far.exec(
            "def on(i): emit('got', i)\n"
            "p = port(); rcv(p, 'n', on); db_set('part', p); emit('port', p)"
        )
        (p,) = far.expect("port")
        seed.exec("seen=[]\ndef w(db, a, c, d):\n    emit('view', sorted(db))\ndb_mon('part', w)")
        seed.expect("view", pred=lambda v: p in v[0], timeout=15)
        seed.exec(
            "import time\n"
            "mon(%r, lambda *r: emit('fired', list(r), time.time(), sent[0]))\n"
            "sent=[0]\n"
            "def pump():\n"
            "    while True:\n"
            "        snd(%r, 'n', sent[0]); sent[0] += 1\n"
            "        gevent.sleep(0.01)\n"
            "pumper = gevent.spawn(pump); emit('pumping')" % (p, p)
        )
        seed.expect("pumping")
        far.expect("got", timeout=10)  # messages flow before the cut
        t_cut = time.time()
        _cut(ns1, "10.77.0.2", True)
        _cut(ns2, "10.77.0.1", True)
        reason, t_fired, sent_at_fire = seed.expect("fired", timeout=MT * 4 + 5)
        assert reason[0] == "transport_error" and reason[1] == "far", reason
        assert t_fired - t_cut <= MT + 1.5, "monitor fired %.2f s after the cut" % (t_fired - t_cut)
        seed.exec("pumper.kill(); emit('stopped', sent[0])")
        seed.expect("stopped")
        # the seed's view loses far's entries
        seed.expect("view", pred=lambda v: p not in v[0], timeout=MT * 4)
        # heal
        _cut(ns1, "10.77.0.2", False)
        _cut(ns2, "10.77.0.1", False)
        # the database view converges again (far reconnects to its seed and re-registers)
        seed.expect("view", pred=lambda v: p in v[0], timeout=MT * 6 + 10)
        seed.exec("snd(%r, 'n', -1)" % p)
        far.expect("got", pred=lambda v: v[0] == -1, timeout=10)
        # no holes: what far received is in order, and nothing sent before the monitor fired
        # arrived after it (messages after the fire are dropped or, once healed, new)
        far.exec("emit('done')")
        far.expect("done")
        received = [item[1] for item in far.backlog if item[0] == "got"]
        before = [i for i in received if i >= 0]
        assert before == sorted(before), "out of order: %r" % before[:50]
        assert len(set(before)) == len(before), "duplicates"
        assert all(i < sent_at_fire for i in before), (
            "a message sent after the monitor fired "
            "(seq >= %d) was delivered in the old session" % sent_at_fire
        )
    finally:
        for n in nodes:
            n.stop()
