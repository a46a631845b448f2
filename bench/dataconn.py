"""Bulk throughput of a DataConn between two processes, next to a raw gevent socket.

Run ``python bench/dataconn.py [--mb 200] [--runs 5] [--quick]``. Prints one JSON line per
run and a last ``{"workload": "summary", ...}`` line with the best and median MB/s of both,
their ratios, and the median of the per-pair ratios (each DataConn run against the raw run
just before it), which decides ``pass`` (target: DataConn >= 0.8 x raw). On a shared 2-core
machine single runs vary by 2x; the paired median is the figure to trust.

Processes
    This process is the receiving node ``bench-dc-rx/...`` (it calls ``configure``; it is a
    bench, not a test). It starts one child, this same file with ``--child``: the sending node
    ``bench-dc-tx/...``, configured with the same secret. **Bench shortcut:** no seed; the
    child is told the receiver's listener address and sets
    ``aemp_green.node.get_node(rx).addrs`` so it can dial it directly.

Workloads (alternated, ``--runs`` times each, sizes in MiB of 2**20 bytes)
    * ``raw``: the child opens a plain gevent TCP connection to a ``StreamServer`` of this
      process and ``sendall``s N MiB in 1 MiB chunks; this process ``recv_into``s a 1 MiB
      buffer until EOF.
    * ``dataconn``: the child calls ``dataconn.connect_to(rx, "__main__.bench_sink", token)``
      (the handshake and header exchange included in the end-to-end time) and sends the same
      chunks over the returned socket; ``bench_sink`` runs here in a new port with the same
      receive loop.

    ``MB/s`` is N / (last byte received - first byte received); ``e2e_MBps`` also counts
    the connection setup (from the child's ``connect`` call, CLOCK_MONOTONIC is system-wide).
    While each transfer runs, a greenlet port here does one message round trip with the child
    over the node link every 2 ms; the round trips (count, p50, max) show whether the bulk
    stream starves the node (a raw socket loop that never has to wait does; data sockets
    yield every ``dataconn.FAIR_BYTES`` moved without waiting).

Safety: the child dies when its stdin closes and arms ``alarm()``; every wait has a deadline.
"""

import argparse
import json
import os
import subprocess
import sys
import time

SECRET = "bench-dataconn-secret-0123456789"
CHUNK = 1 << 20
TARGET_RATIO = 0.8


def mono():
    """System-wide monotonic time (comparable across processes on one machine)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _emit(**kv):
    sys.stdout.write(json.dumps(kv) + "\n")
    sys.stdout.flush()


# =========================================================================== receiving side

_results = {}  # token -> dict, filled by the receive loops
_waiters = {}


def _receive_all(sock, token):
    buf = bytearray(CHUNK)
    n = 0
    t_first = 0.0
    recv_into = sock.recv_into
    while True:
        k = recv_into(buf)
        if not k:
            break
        if not n:
            t_first = mono()
        n += k
    _results[token] = {"bytes": n, "t_first": t_first, "t_last": mono()}
    ev = _waiters.get(token)
    if ev is not None:
        ev.set()


def bench_sink(token, sock):
    """DataConn init function (runs in this process, started by the child by name)."""
    _receive_all(sock, token)


def _raw_handle(sock, addr):
    line = b""
    while not line.endswith(b"\n"):
        c = sock.recv(1)
        if not c:
            return
        line += c
    _receive_all(sock, line.strip().decode())


PING_INTERVAL = 0.002


def _pinger(pong_port, stop, rtts):
    """One message round trip every PING_INTERVAL s on the node link (a light, steady load)."""
    import gevent

    from aemp_green import SELF, receive, snd

    i = 0
    while not stop.is_set():
        t0 = mono()
        snd(pong_port, "ping", SELF(), i)
        receive("pong", timeout=30)
        rtts.append(mono() - t0)
        i += 1
        gevent.sleep(PING_INTERVAL)


def conductor(args):
    import gevent
    from gevent.event import Event
    from gevent.server import StreamServer

    import aemp_green
    from aemp_green import node, spawn, kil

    aemp_green.configure(nodeid="bench-dc-rx/", binds=["127.0.0.1:*"], secret=SECRET, norc=True)
    import aemp_green.dataconn  # noqa: F401 - this node answers data connections

    if args.fair_bytes:
        aemp_green.dataconn.FAIR_BYTES = args.fair_bytes

    rx = aemp_green.NODE()
    raw_server = StreamServer(("127.0.0.1", 0), _raw_handle)
    raw_server.start()
    child = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            rx,
            aemp_green.listener_addresses()[0],
            str(raw_server.address[1]),
        ]
        + (["--fair-bytes", str(args.fair_bytes)] if args.fair_bytes else []),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    from gevent.fileobject import FileObjectPosix

    child_out = FileObjectPosix(child.stdout.fileno(), "rb", close=False)

    def child_line(timeout=120):
        with gevent.Timeout(timeout):
            line = child_out.readline()
        if not line:
            raise RuntimeError("child exited")
        return json.loads(line)

    def tell(**cmd):
        child.stdin.write((json.dumps(cmd) + "\n").encode())
        child.stdin.flush()

    try:
        hello = child_line()
        pong_port = hello["pong"]
        deadline = time.monotonic() + 30
        while not node.node_is_up(hello["node"]):  # its link to us is up on its side already
            if time.monotonic() > deadline:
                raise RuntimeError("the sender's node link did not come up")
            gevent.sleep(0.01)
        aemp_green.call(pong_port, "ping", timeout=30)
        runs = {"raw": [], "dataconn": []}
        nbytes = args.mb * CHUNK
        seq = 0
        for r in range(args.runs + 1):  # run 0 is a warm-up (a tenth of the size), not timed
            for kind in ("raw", "dataconn"):
                seq += 1
                token = "%s-%d" % (kind, seq)
                size = nbytes // 10 if r == 0 else nbytes
                ev = _waiters[token] = Event()
                stop, rtts = Event(), []
                pinger = spawn(_pinger, pong_port, stop, rtts)
                tell(kind=kind, token=token, bytes=size)
                started = child_line()
                if not ev.wait(120):
                    raise RuntimeError("%s transfer did not finish" % token)
                stop.set()
                kil(pinger)
                res = _results.pop(token)
                if res["bytes"] != size:
                    raise RuntimeError("%s: received %d of %d bytes" % (token, res["bytes"], size))
                if r == 0:
                    continue
                mb = size / CHUNK
                rate = mb / max(res["t_last"] - res["t_first"], 1e-9)
                e2e = mb / max(res["t_last"] - started["t_connect"], 1e-9)
                lat = sorted(rtts) or [float("nan")]
                out = {
                    "workload": kind,
                    "value": round(rate, 1),
                    "unit": "MB/s",
                    "mb": mb,
                    "e2e_MBps": round(e2e, 1),
                    "setup_ms": round((started["t_sending"] - started["t_connect"]) * 1e3, 2),
                    "pings_during": len(rtts),
                    "ping_p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
                    "ping_max_ms": round(lat[-1] * 1e3, 2),
                }
                runs[kind].append(out)
                _emit(**out)
        summary = {"workload": "summary"}
        for kind, lst in runs.items():
            vals = sorted(o["value"] for o in lst)
            summary[kind + "_best_MBps"] = vals[-1]
            summary[kind + "_median_MBps"] = vals[len(vals) // 2]
        summary["ratio_best"] = round(summary["dataconn_best_MBps"] / summary["raw_best_MBps"], 3)
        summary["ratio_median"] = round(
            summary["dataconn_median_MBps"] / summary["raw_median_MBps"], 3
        )
        # each dataconn run against the raw run just before it (same machine load, roughly)
        pairs = sorted(d["value"] / r["value"] for r, d in zip(runs["raw"], runs["dataconn"]))
        summary["ratio_pairs_median"] = round(pairs[len(pairs) // 2], 3)
        summary["target_ratio"] = TARGET_RATIO
        summary["pass"] = summary["ratio_pairs_median"] >= TARGET_RATIO
        _emit(**summary)
        return 0 if summary["pass"] else 1
    finally:
        try:
            child.stdin.close()
        except OSError:
            pass
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
        raw_server.stop()


# =========================================================================== sending side


def child_main(rx, rx_addr, raw_port, fair_bytes=None):
    import signal

    import gevent
    from gevent import socket as gsocket
    from gevent.fileobject import FileObjectPosix

    import aemp_green
    from aemp_green import dataconn, node, port, snd

    signal.alarm(600)
    if fair_bytes:
        dataconn.FAIR_BYTES = fair_bytes
    aemp_green.configure(nodeid="bench-dc-tx/", binds=["127.0.0.1:*"], secret=SECRET, norc=True)
    node.get_node(rx).addrs = [rx_addr]
    snd(rx, "devnull")  # bring the node link up (the receiver cannot dial us: no seed)
    if not node.get_node(rx).up_event.wait(30):
        raise SystemExit("no node link to %s" % rx)
    pong = port(lambda tag, reply, i=None: snd(reply, "pong", i))
    _emit(pong=pong, node=aemp_green.NODE())
    block = os.urandom(CHUNK)
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb")
    for line in stdin:
        cmd = json.loads(line)
        t_connect = mono()
        if cmd["kind"] == "raw":
            sock = gsocket.create_connection(("127.0.0.1", raw_port))
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            sock.sendall(cmd["token"].encode() + b"\n")
        else:
            sock = dataconn.connect_to(rx, "__main__.bench_sink", cmd["token"], timeout=30)
        t_sending = mono()
        _emit(t_connect=t_connect, t_sending=t_sending)
        left = cmd["bytes"]
        while left > 0:
            chunk = block if left >= CHUNK else block[:left]
            sock.sendall(chunk)
            left -= len(chunk)
        sock.close()
        gevent.sleep(0)
    aemp_green.shutdown()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=200, help="MiB per timed transfer (200)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each kind (5)")
    ap.add_argument("--quick", action="store_true", help="50 MiB, 3 runs")
    ap.add_argument(
        "--fair-bytes",
        type=int,
        default=None,
        help="override dataconn.FAIR_BYTES in both processes",
    )
    ap.add_argument(
        "--child", nargs=3, metavar=("RX", "RX_ADDR", "RAW_PORT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child[0], args.child[1], int(args.child[2]), args.fair_bytes)
        return 0
    if args.quick:
        args.mb, args.runs = 50, 3
    return conductor(args)


if __name__ == "__main__":
    sys.exit(main())
