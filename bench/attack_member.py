"""Before/after figures for the member-amplification findings (tests/test_attack_member.py at
the scale of the original report). Starts a child target node per case, attacks it from this
process with a RawPeer that holds the secret, prints what the target paid.

Run: cd <repo> && PYTHONPATH=$PWD:$PWD/tests /work/venv/bin/python bench/attack_member.py
"""

import sys
import tempfile
import time

from aemp_green.wire import framing
from netutil import ChildNode
from test_attack_member import (
    Peer,
    _nested_snd,
    _relay_chain,
    _stringref_frame,
    answers,
    cpu_seconds,
    log_size,
    peak_rss,
)

MB = 1 << 20


def target(tmp, **cfg):
    cfg.setdefault("nodeid", "target")
    return ChildNode(tmp, "target%d" % time.monotonic_ns(), **cfg)


def report(name, t, rss0, log0, cpu0, extra=""):
    print(
        "%-34s peak RSS +%6.1f MB  log +%9d B  cpu %5.2f s  answers=%s %s"
        % (
            name,
            (peak_rss(t) - rss0) / MB,
            log_size(t) - log0,
            cpu_seconds(t) - cpu0,
            t.alive and answers(t),
            extra,
        )
    )
    sys.stdout.flush()


def case(tmp, name, send, cfg=None, extra=None):
    t = target(tmp, **(cfg or {}))
    try:
        p = Peer(t.addr, framings=("cbor",) if "cbor" in name else ("json",))
        rss0, log0, cpu0 = peak_rss(t), log_size(t), cpu_seconds(t)
        size = send(p)
        try:
            p.ping(timeout=120)
            kept = True
        except AssertionError:
            kept = False  # the link was dropped
        report(
            "%s (%d KB in)" % (name, size // 1024),
            t,
            rss0,
            log0,
            cpu0,
            "link kept=%s %s" % (kept, extra(t) if extra else ""),
        )
        p.close()
    finally:
        t.stop()


def main():
    tmp = tempfile.mkdtemp(prefix="amp_bench")

    def stringref(p):
        frame = _stringref_frame(33600, 8000)
        p.send_raw(frame)
        return len(frame)

    def nested(p):
        raw = framing.encode_json(_nested_snd("target", 48000, "attacker#r"))
        p.send_raw(raw)
        return len(raw)

    def fakes(p):
        raw = b"".join(framing.encode_json(["", "snd", "fake%d#p" % i, "x"]) for i in range(100000))
        p.send_raw(raw)
        return len(raw)

    def garbage(p):
        raw = framing.encode_json(["", "mon1", 5]) * 11500
        p.send_raw(raw)
        return len(raw)

    def traces(p):
        p.send_frame(["", "aemp_green_trace", "attacker#t1", 1])
        p.send_frame(["", "aemp_green_trace", "attacker#t2", 1])
        p.send_frame(["", "devnull"])
        return 0

    case(tmp, "cbor string references", stringref)
    case(tmp, "nested snd to own node port", nested)
    case(
        tmp,
        "100,000 invented node IDs",
        fakes,
        extra=lambda t: "nodes kept=%s" % t.ask("len(node._nodes)", timeout=60),
    )
    case(tmp, "malformed requests", garbage, cfg={})
    case(tmp, "two trace subscriptions", traces)
    relay_chain(tmp, 3000)


def relay_chain(tmp, depth):
    """["", "snd", "B#", "snd", "A#", ...] sent to A, which is linked to B (its seed)."""
    addr = "127.0.0.1:%d" % __import__("netutil").free_port()
    b = ChildNode(tmp, "B%d" % time.monotonic_ns(), nodeid="B", binds=[addr], seeds=[addr])
    a = ChildNode(tmp, "A%d" % time.monotonic_ns(), nodeid="A", seeds=[addr])
    try:
        a.run("wait_for(lambda: node_is_up('B'))")
        p = Peer(a.addr)
        raw = framing.encode_json(_relay_chain("A", "B", depth, "attacker#r"))
        cpu0 = cpu_seconds(a) + cpu_seconds(b)
        t0 = time.monotonic()
        p.send_raw(raw)
        try:
            p.read_frames(lambda f: f == ["r", "done"], timeout=120)
            done = "relayed to the end after %.1f s" % (time.monotonic() - t0)
        except AssertionError:
            done = "cut"
        print(
            "%-34s cpu A+B %5.2f s  %s"
            % (
                "relay chain A<->B (%d KB in)" % (len(raw) // 1024),
                cpu_seconds(a) + cpu_seconds(b) - cpu0,
                done,
            )
        )
        p.close()
    finally:
        a.stop()
        b.stop()


if __name__ == "__main__":
    main()
