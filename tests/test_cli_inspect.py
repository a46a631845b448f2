"""``aemp ps``, ``aemp links`` and ``aemp top`` (aemp_green.cli.inspect) against real node
processes: plain text and ``--json``, ``top --once``, and ``top`` on a terminal (a pty) quitting
on ``q`` and on Ctrl-C with the terminal restored."""

import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from aemp_green import config
from netutil import REPO, SECRET, ChildNode, free_port, stop_children

AEMP = [sys.executable, "-m", "aemp_green.cli"]


def _env(rc_file):
    env = dict(os.environ)
    env["PERL_ANYEVENT_MP_RC"] = str(rc_file)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for var in ("PERL_ANYEVENT_MP_TRACE", "PERL_ANYEVENT_VERBOSE", "AE_VERBOSE"):
        env.pop(var, None)
    return env


def aemp(net, *args, timeout=30):
    return subprocess.run(
        AEMP + [str(a) for a in args],
        env=_env(net["rc"]),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
    )


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A seed, a node ``busy`` whose port BUSY gets ~100 messages/s, and a secure node ``vault``;
    an rc file whose default profile reaches them."""
    tmp = tmp_path_factory.mktemp("inspectnet")
    seed_addr = "127.0.0.1:%d" % free_port()
    rcf = tmp / "aemprc"
    config.save_rc(
        {"version": 1, "secret": SECRET, "binds": ["127.0.0.1:*"], "seeds": [seed_addr]}, str(rcf)
    )
    children = []
    try:
        seed = ChildNode(tmp, "seed", nodeid="seed", binds=[seed_addr], seeds=[seed_addr])
        children.append(seed)
        busy = ChildNode(tmp, "busy", nodeid="busy", seeds=[seed_addr])
        children.append(busy)
        vault = ChildNode(tmp, "vault", nodeid="vault", seeds=[seed_addr], secure=True)
        children.append(vault)
        busy.run("""
            BUSY = port(lambda *m: None)
            IDLE = port(lambda *m: None)
            def pump():
                while True:
                    snd(BUSY, "tick")
                    gevent.sleep(0.01)
            gevent.spawn(pump)
            wait_for(lambda: node_is_up("seed"))
        """)
        vault.run("wait_for(lambda: node_is_up('seed'))")
        seed.run(
            "wait_for(lambda: {'busy', 'vault'} <= set(db_family(\"'l\", timeout=5)), 15)",
            timeout=20,
        )
        yield {"rc": rcf, "busy": busy, "port": busy.ask("BUSY"), "seed": seed, "tmp": tmp}
    finally:
        stop_children(children)


def test_ps_text_and_json(net):
    r = aemp(net, "ps", "busy")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("node busy (pid %d, aemp_green " % net["busy"].proc.pid)
    assert lines[1].startswith("messages/s: in ")
    assert lines[3].split() == [
        "PORT",
        "KIND",
        "MAILBOX",
        "HANDLED",
        "AGE",
        "MONITORS",
        "MONITORED_BY",
    ]
    row = lines[4].split()
    assert row[0] == net["port"] and row[1] == "callback" and int(row[3]) > 0  # busiest first
    r = aemp(net, "ps", "--json", "--limit=2", "--sort=handled", "busy")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["node"]["node"] == "busy" and len(doc["ports"]) == 2
    assert doc["ports"][0]["id"] == net["port"] and doc["ports"][0]["handled"] > 0
    # the option with its value as the next argument works too
    r = aemp(net, "ps", "--json", "--limit", "1", "busy")
    assert r.returncode == 0 and len(json.loads(r.stdout)["ports"]) == 1, r.stderr


def test_links_text_and_json(net):
    r = aemp(net, "links", "--json", "busy")
    assert r.returncode == 0, r.stderr
    links = json.loads(r.stdout)
    (to_seed,) = [x for x in links if x["peer"] == "seed"]
    assert to_seed["auth"] == "hmac_sha3_512" and to_seed["msgs_in"] > 0
    assert to_seed["addr"].startswith("127.0.0.1:")
    r = aemp(net, "links", "busy")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["PEER", "ADDR", "DIR", "FRAMING", "AUTH"]
    assert any(line.split()[0] == "seed" and "hmac_sha3_512" in line for line in lines[1:])


def test_top_once(net):
    r = aemp(net, "top", "--once", "--interval=0.5", "busy")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout  # not a terminal: no escape sequences
    lines = r.stdout.splitlines()
    assert lines[0].startswith("aemp top - ") and lines[1].startswith("node busy ")
    head = lines.index(next(x for x in lines if x.startswith("PORT")))
    assert lines[head].split() == ["PORT", "KIND", "MSGS/S", "HANDLED", "MAILBOX", "AGE"]
    top = lines[head + 1].split()
    assert top[0] == net["port"] and 20 < float(top[2]) < 400  # ~100/s
    assert any(x.startswith("PEER") and x.rstrip().endswith("IN/S  OUT/S") for x in lines)
    r = aemp(net, "top", "--once", "--json", "--interval=0.5", "busy")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    doc = json.loads(line)
    assert doc["node"]["node"] == "busy" and 20 < doc["port_rates"][net["port"]] < 400
    assert any(x["peer"] == "seed" for x in doc["link_rates"])


def test_refusals_and_usage_errors(net):
    r = aemp(net, "ps", "vault")
    assert r.returncode == 1
    assert "vault is secure" in r.stderr and "allow_introspection" in r.stderr
    r = aemp(net, "ps", "--sort=size", "busy")
    assert r.returncode == 2 and "--sort must be one of" in r.stderr
    r = aemp(net, "top", "--interval=0", "busy")
    assert r.returncode == 2 and "--interval" in r.stderr
    t0 = time.monotonic()
    r = aemp(net, "--timeout", "2", "links", "ghost")
    assert r.returncode == 1 and "ghost" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 15


def _read_until(fd, pred, timeout=15):
    data = b""
    deadline = time.monotonic() + timeout
    while not pred(data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no expected output within %s s: %r" % (timeout, data[-2000:]))
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the slave side closed (Linux: EIO)
                chunk = b""
            if not chunk:
                break
            data += chunk
    return data


def _controlling_terminal():
    """In the child: a session of its own whose controlling terminal is the pty on its stdin
    (so the terminal turns Ctrl-C into SIGINT for it, as a shell's would)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.parametrize("how", ["q", "ctrl-c"])
def test_top_on_a_terminal_quits_and_restores_it(net, how):
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        AEMP + ["top", "--interval=0.2", "busy"],
        env=_env(net["rc"]),
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=str(REPO),
        preexec_fn=_controlling_terminal,
    )
    try:
        data = _read_until(master, lambda d: d.count(b"aemp top - ") >= 2)
        assert b"\x1b[?1049h" in data  # the alternate screen
        assert net["port"].encode() in data
        during = termios.tcgetattr(slave)
        assert not during[3] & termios.ICANON and not during[3] & termios.ECHO
        if how == "q":
            os.write(master, b"q")
        else:
            os.write(master, b"\x03")  # the terminal turns it into SIGINT
        rc = proc.wait(timeout=10)
        rest = _read_until(master, lambda d: b"\x1b[?1049l" in d, timeout=5)
        assert rc == 0, proc.stderr.read()
        assert b"\x1b[?25h\x1b[?1049l" in rest  # cursor back, alternate screen left
        after = termios.tcgetattr(slave)
        assert after[3] == before[3]  # echo and line mode as before
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)
        proc.stderr.close()
        os.close(master)
        os.close(slave)
