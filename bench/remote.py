"""Two-process benchmarks of aemp_green over TCP on 127.0.0.1, against raw-socket baselines.

Run ``python bench/remote.py [--quick]``. Each workload prints one JSON line::

    {"workload": ..., "value": ..., "unit": ..., "n": ..., <extras>, "pin": [0] | null}

(``pin``: the CPUs every process ran on, from ``--pin``; ``null`` if not pinned), and a last
line ``{"workload": "summary", ...}`` says which targets pass. ``--quick`` divides every count
by 10. Every timed workload is warmed up once (a tenth of its size; the warm-up also
brings the link up, so connection setup is never timed) and then run ``--runs`` times (3); the
best run is ``value``, every run is in ``runs``.

Processes
    This process is only the conductor: it never configures a node. For each framing it starts
    two child processes (this same file with ``--child rx|tx``): the receiver node
    ``bench-rx-<fmt>`` and the sender node ``bench-tx-<fmt>``, both configured with
    ``framing_format=[fmt]``, ``binds=["127.0.0.1:*"]`` and ``norc=True``. The conductor talks
    to them with JSON lines on their stdin/stdout.

    **Bench shortcut:** no seed is used. The receiver prints its listener address and the
    conductor hands it to the sender, which sets
    ``aemp_green.node.get_node(rx_nodeid).addrs = ["127.0.0.1:PORT"]``; the first ``snd`` to a
    port on that node then dials that address directly.

Timing
    Timestamps that are compared across the two processes come from ``CLOCK_MONOTONIC``
    (system-wide on Linux). Flood rates are end to end: from the sender's first ``snd`` to the
    moment the receiver counted the last message (``value``); the receiver's own first-to-last
    rate and the sender's time in its ``snd`` loop are extras.

Workloads
    * ``remote_flood_json`` / ``remote_flood_cbor``: a sender greenlet ``snd``s N (500k)
      messages ``["m", i, "payload"]`` in a tight loop to a callback port on the receiver node,
      which counts them, checks they came in order, and reports when the last one arrived.
      The bench fails unless all N arrived, in order.
    * ``remote_flood_yielding_json`` / ``_cbor`` (no target): the same, but the sender calls
      ``gevent.sleep(0)`` after every 1,000th ``snd``. The link's writer greenlet only runs
      when the sender yields, so in the plain flood nothing reaches the socket before the
      whole loop has encoded all N frames (sender and receiver work one after the other);
      here the writer flushes as the sender goes and both processes work at the same time.
    * ``remote_pingpong_json`` / ``remote_pingpong_cbor``: a greenlet port on the sender node
      sends ``("ping", reply_port, i)`` to a greenlet port on the receiver node, which answers
      ``("pong", i)``; N (20k) round trips, one after the other; round trips/s and the latency
      of each round trip (p50/p99/max in µs).
    * ``raw_socket_flood_ujson``: the same N messages over a plain gevent TCP connection
      between the same two processes, ``sendall(ujson.dumps(msg).encode() + b"\\n")`` once per
      message; the receiver splits lines and ``ujson.loads`` each one.
    * ``raw_socket_pingpong``: plain gevent sockets, one JSON line each way per round trip.
    * ``raw_blocking_socket_pingpong`` (reference): the same with plain blocking sockets and no
      gevent (the conductor against an echo child): what this machine allows at all.

Targets (``summary``)
    remote flood >= 250,000 msgs/s (json), >= 150,000 msgs/s (cbor); remote ping-pong
    >= 10,000 round trips/s (both framings).

Reading the numbers
    A ping-pong round trip between two processes is mostly the OS waking the other side. On
    the 2-vCPU development VM, when the two processes sit on different vCPUs and the other
    vCPU is idle, that vCPU has halted, and waking it means an interrupt to another vCPU plus
    a VM exit and re-entry: tens of µs per hop, more than the library spends on a message.
    How often that happens depends on where the scheduler puts the processes and on what
    else keeps the vCPUs busy (a busy vCPU does not halt, so the wake-up gets *cheaper* under
    load), so unpinned ping-pong figures swing by 2-3x between runs and machines.

    ``--pin 0`` puts the conductor and every child on one CPU: each hop is then a plain
    context switch on that CPU, and what remains is mostly the per-message cost of the code
    under test. For comparing aemp with the baselines, or one version of aemp with another,
    prefer pinned ping-pong numbers. Measured on that VM (json framing, 20k round trips; the
    pinned column with ``taskset -c 0``, which has the same effect as ``--pin 0``):

    ================================  ==================  ===================
    round trips/s                     ``--pin 0``         unpinned, idle VM
    ================================  ==================  ===================
    ``remote_pingpong_json``          9.6k (p50 90 µs)    4.4k
    ``raw_socket_pingpong``           14.2k               7.2k
    ``raw_blocking_socket_pingpong``  39k                 8.8k
    ================================  ==================  ===================

    Pinning to one CPU also serialises sender and receiver, so flood rates with ``--pin 0``
    measure total CPU cost, not the overlap two CPUs allow. And pinning only removes the
    wake-up noise: on a loaded machine the pinned processes share their CPU with whatever
    else runs there, and the numbers scatter again (check the load average). Either way,
    compare each aemp figure with the raw baselines of the same run, not with another run's.

Safety
    Children are killed in a ``finally`` (SIGTERM, then SIGKILL), die on their own when their
    stdin closes (conductor gone) and arm ``alarm()`` as a last resort; every wait in the
    conductor has a deadline, and the whole run has one (``--deadline``).

Other options: ``--runs K``, ``--only flood,pingpong,raw``, ``--framings json,cbor``,
``--pin CPUS`` (``0``, ``0,1`` or ``0-1``: every process calls ``os.sched_setaffinity`` on
that set when it starts; see above), ``--profile DIR`` (children run under cProfile and write
``DIR/<role>_<fmt>.prof`` when they exit; rates then mean little).
"""

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

SECRET = "bench-remote-secret-0123456789"
PAYLOAD = "payload"

YIELD_EVERY = 1000  # remote_flood_yielding_*: the sender yields once per this many snd

TARGETS = {
    "remote_flood_json": 250_000,
    "remote_flood_cbor": 150_000,
    "remote_pingpong_json": 10_000,
    "remote_pingpong_cbor": 10_000,
}


def mono():
    """System-wide monotonic time (comparable across processes on one machine)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def parse_cpus(text):
    """``--pin`` argument: ``"0"``, ``"0,1"`` or ``"0-3"`` -> sorted list of CPU numbers."""
    cpus = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError("not a CPU list: %r (try 0 or 0,1)" % text) from None
    if not cpus:
        raise argparse.ArgumentTypeError("empty CPU list: %r" % text)
    return sorted(cpus)


def pin_cpus(cpus):
    """Run this process (and the threads and processes it starts later) on ``cpus`` only."""
    os.sched_setaffinity(0, cpus)
    got = sorted(os.sched_getaffinity(0))
    if got != cpus:  # the kernel drops CPUs that are offline or outside our cpuset
        raise OSError("asked for CPUs %s, got %s" % (cpus, got))


# =========================================================================== child processes


def _emit(**kv):
    sys.stdout.write(json.dumps(kv) + "\n")
    sys.stdout.flush()


def _percentiles(lat):
    lat = sorted(lat)
    n = len(lat)

    def pct(q):
        return lat[min(n - 1, int(q * n))] * 1e6

    return {
        "p50_us": round(pct(0.50), 1),
        "p90_us": round(pct(0.90), 1),
        "p99_us": round(pct(0.99), 1),
        "max_us": round(lat[-1] * 1e6, 1),
        "mean_us": round(sum(lat) / n * 1e6, 1),
    }


def _line_pingpong(sock, n, error, what):
    """``n`` round trips over a connected TCP socket (gevent or plain blocking), one
    ``ujson`` line ``["ping", i]`` out and one ``["pong", i]`` back each: the measuring loop of
    both raw ping-pong baselines. Returns ``{"seconds": ..., <percentiles>}``; raises
    ``error`` if the peer closes or answers out of turn (``what`` names the peer)."""
    import ujson

    dumps, loads = ujson.dumps, ujson.loads
    sendall, recv = sock.sendall, sock.recv
    pc = time.perf_counter
    lat = [0.0] * n
    rest = b""
    t0 = pc()
    for i in range(n):
        t = pc()
        sendall(dumps(["ping", i]).encode() + b"\n")
        while b"\n" not in rest:
            data = recv(65536)
            if not data:
                raise error("%s closed" % what)
            rest += data
        line, _, rest = rest.partition(b"\n")
        if loads(line)[1] != i:
            raise error("bad pong from %s" % what)
        lat[i] = pc() - t
    out = {"seconds": pc() - t0}
    out.update(_percentiles(lat))
    return out


def _rx_setup():
    """The receiver node: a counting callback port, a pong greenlet port, a raw TCP server."""
    import ujson
    from gevent import socket as gsocket
    from gevent.server import StreamServer

    import aemp_green
    from aemp_green import port, rcv, receive, snd, spawn

    # --- flood sink: a callback port that counts "m" messages
    st = {"n": -1, "token": None}
    count = 0
    bad = 0
    t_first = 0.0

    def on_start(n, token):
        nonlocal count, bad, t_first
        st["n"], st["token"] = n, token
        count = bad = 0
        t_first = 0.0

    def on_m(i, payload):
        nonlocal count, bad, t_first
        if i != count:
            bad += 1
        if not count:
            t_first = mono()
        count += 1
        if count == st["n"]:
            t_done = mono()
            if payload != PAYLOAD:
                bad += 1
            _emit(
                event="flood_done",
                token=st["token"],
                count=count,
                bad=bad,
                t_first=t_first,
                t_done=t_done,
            )

    sink = port()
    rcv(sink, "start", on_start, "m", on_m)

    # --- ping-pong partner: a greenlet port
    def ponger():
        while True:
            reply, seq = receive("ping")
            snd(reply, "pong", seq)

    pong = spawn(ponger)

    # --- raw socket baseline server
    loads, dumps = ujson.loads, ujson.dumps

    def raw_handle(sock, addr):
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        recv = sock.recv
        buf = b""
        while b"\n" not in buf:
            data = recv(4096)
            if not data:
                return
            buf += data
        head, _, buf = buf.partition(b"\n")
        head = json.loads(head)
        if head["mode"] == "flood":
            n = head["n"]
            cnt = nbad = 0
            tf = 0.0
            rest = b""
            data = buf  # may already hold complete lines
            while True:
                if rest:
                    data = rest + data
                lines = data.split(b"\n")
                rest = lines.pop()
                if not cnt and lines:
                    tf = mono()
                for line in lines:
                    msg = loads(line)
                    if msg[1] != cnt:
                        nbad += 1
                    cnt += 1
                if cnt >= n:
                    break
                data = recv(262144)
                if not data:
                    break
            _emit(
                event="raw_flood_done",
                token=head["token"],
                count=cnt,
                bad=nbad,
                t_first=tf,
                t_done=mono(),
            )
        else:  # pingpong: answer every line
            sendall = sock.sendall
            rest = b""
            data = buf  # may already hold the first ping
            while True:
                if rest:
                    data = rest + data
                lines = data.split(b"\n")
                rest = lines.pop()
                for line in lines:
                    msg = loads(line)
                    sendall(dumps(["pong", msg[1]]).encode() + b"\n")
                data = recv(65536)
                if not data:
                    return

    server = StreamServer(("127.0.0.1", 0), raw_handle)
    server.start()

    _emit(
        event="ready",
        nodeid=aemp_green.NODE(),
        addrs=aemp_green.listener_addresses(),
        sink=sink,
        pong=pong,
        raw_addr="%s:%d" % server.address[:2],
    )
    return {}


def _tx_setup():
    """The sender node: commands that run the sending side of every workload."""
    import gevent
    import ujson
    from gevent import socket as gsocket

    import aemp_green
    from aemp_green import SELF, receive, snd, spawn
    from aemp_green import node as _node

    peer = {}

    def connect(rx_nodeid, addr, sink, pong):
        # Bench shortcut: tell this node where the receiver listens (no seed needed).
        _node.get_node(rx_nodeid).addrs = [addr]
        peer.update(nodeid=rx_nodeid, sink=sink, pong=pong)
        res = pingpong(3)  # brings the link up
        return {"up": _node.node_is_up(rx_nodeid), "rt_us": res["p50_us"]}

    def flood(n, token, yield_every=0):
        sink = peer["sink"]
        t0 = mono()
        snd(sink, "start", n, token)
        if not yield_every:
            for i in range(n):
                snd(sink, "m", i, PAYLOAD)
        else:
            sleep = gevent.sleep
            for i in range(n):
                snd(sink, "m", i, PAYLOAD)
                if not i % yield_every:
                    sleep(0)  # let the link's writer flush what is queued so far
        return {"t0": t0, "t_loop": mono() - t0}

    def pingpong(n):
        pong = peer["pong"]
        out = {}
        done = gevent.event.Event()

        def pinger():
            me = SELF()
            pc = time.perf_counter
            lat = [0.0] * n
            t0 = pc()
            for i in range(n):
                t = pc()
                snd(pong, "ping", me, i)
                (seq,) = receive("pong", timeout=30)
                lat[i] = pc() - t
                if seq != i:
                    raise AssertionError("pong %r for ping %r" % (seq, i))
            out["seconds"] = pc() - t0
            out.update(_percentiles(lat))
            done.set()

        spawn(pinger)
        if not done.wait(60 + n / 1000):
            raise AssertionError("ping-pong did not finish")
        return out

    def raw_connect(addr, head):
        host, port = addr.rsplit(":", 1)
        sock = gsocket.create_connection((host, int(port)), timeout=10)
        sock.settimeout(None)
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        sock.sendall(json.dumps(head).encode() + b"\n")
        return sock

    def raw_flood(addr, n, token):
        sock = raw_connect(addr, {"mode": "flood", "n": n, "token": token})
        dumps = ujson.dumps
        sendall = sock.sendall
        t0 = mono()
        for i in range(n):
            sendall(dumps(["m", i, PAYLOAD]).encode() + b"\n")
        t_loop = mono() - t0
        sock.close()
        return {"t0": t0, "t_loop": t_loop}

    def raw_pingpong(addr, n):
        sock = raw_connect(addr, {"mode": "pingpong"})
        try:
            return _line_pingpong(sock, n, AssertionError, "raw pong server")
        finally:
            sock.close()

    _emit(event="ready", nodeid=aemp_green.NODE())
    return {
        "connect": connect,
        "flood": flood,
        "pingpong": pingpong,
        "raw_flood": raw_flood,
        "raw_pingpong": raw_pingpong,
    }


def blocking_echo_main(lifetime):
    """``--child echo``: a plain blocking-socket JSON-line echo server (no gevent at all)."""
    import socket

    import ujson

    signal.alarm(int(lifetime))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    _emit(event="ready", port=srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loads, dumps, recv, sendall = ujson.loads, ujson.dumps, conn.recv, conn.sendall
    rest = b""
    while True:
        data = recv(65536)
        if not data:
            break
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            sendall(dumps(["pong", loads(line)[1]]).encode() + b"\n")
    os._exit(0)


def blocking_pingpong(n, runs, log_dir, deadline, pin):
    """The conductor pings ``--child echo`` over a blocking socket: the machine's floor."""
    import socket

    echo = Child("echo", "-", log_dir, deadline, pin=pin)
    try:
        port = echo.event("ready", 30)["port"]
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def run(n):
            deadline.left(1)
            return _line_pingpong(sock, n, BenchError, "blocking echo server")

        rs = timed_runs(run, n, runs)
        sock.close()
        return rs
    finally:
        echo.stop()


def child_main(role, fmt, profile_dir, lifetime):
    import logging
    import traceback

    import gevent
    import gevent.event  # noqa: F401  (used by the tx commands)
    from gevent.fileobject import FileObjectPosix

    import aemp_green

    signal.alarm(int(lifetime))  # last resort if the conductor vanished without closing stdin
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    prof = None
    if profile_dir:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    aemp_green.configure(
        nodeid="bench-%s-%s" % (role, fmt),
        binds=["127.0.0.1:*"],
        secret=SECRET,
        norc=True,
        framing_format=[fmt],
    )
    cmds = (_rx_setup if role == "rx" else _tx_setup)()

    def run(cmd):
        try:
            fn = cmds[cmd.pop("cmd")]
            cid = cmd.pop("id")
            res = fn(**cmd)
            _emit(event="reply", id=cid, **res)
        except Exception:
            _emit(event="error", tb=traceback.format_exc())

    stdin = FileObjectPosix(sys.stdin.fileno(), "rb")
    for line in stdin:
        line = line.strip()
        if line:
            gevent.spawn(run, json.loads(line))
    # stdin closed: the conductor is done with us (or gone)
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.path.join(profile_dir, "%s_%s.prof" % (role, fmt)))
    sys.stdout.flush()
    os._exit(0)


# =========================================================================== conductor


class BenchError(Exception):
    pass


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, cap):
        left = self.end - time.monotonic()
        if left <= 0:
            raise BenchError("overall deadline exceeded")
        return min(left, cap)


class Child:
    """One child node process, driven by JSON lines."""

    def __init__(self, role, fmt, log_dir, deadline, profile_dir=None, pin=None):
        self.name = "%s-%s" % (role, fmt)
        self.deadline = deadline
        self.log_path = os.path.join(log_dir, self.name + ".log")
        self._log = open(self.log_path, "wb")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            role,
            "--framing",
            fmt,
            "--lifetime",
            str(int(deadline.end - time.monotonic()) + 60),
        ]
        if profile_dir:
            cmd += ["--profile", profile_dir]
        if pin:  # inherited anyway; passed so that each child sets (and checks) it itself
            cmd += ["--pin", ",".join(map(str, pin))]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        self.lines = queue.Queue()
        self.backlog = []
        self._seq = 0
        threading.Thread(target=self._reader, daemon=True).start()
        self.info = None

    def _reader(self):
        for raw in self.proc.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                self.lines.put({"event": "garbage", "text": raw.decode("utf-8", "replace")})
        self.lines.put(None)

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def expect(self, pred, what, timeout):
        """Wait for a line with ``pred(line)`` true; raise ``BenchError`` at the deadline."""
        for i, item in enumerate(self.backlog):
            if pred(item):
                return self.backlog.pop(i)
        wait = self.deadline.left(timeout)
        end = time.monotonic() + wait
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise BenchError(
                    "%s: no %s within %.1f s%s; log:\n%s"
                    % (
                        self.name,
                        what,
                        wait,
                        " (overall deadline)" if wait < timeout else "",
                        self.log_tail(),
                    )
                )
            try:
                item = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                self.lines.put(None)
                raise BenchError(
                    "%s exited (rc=%s) before %s; log:\n%s"
                    % (self.name, self.proc.poll(), what, self.log_tail())
                )
            if item.get("event") == "error":
                raise BenchError("%s failed:\n%s" % (self.name, item.get("tb")))
            if pred(item):
                return item
            self.backlog.append(item)

    def event(self, name, timeout, **match):
        return self.expect(
            lambda it: it.get("event") == name and all(it.get(k) == v for k, v in match.items()),
            "%s %r" % (name, match),
            timeout,
        )

    def send(self, cmd, **kv):
        self._seq += 1
        kv.update(cmd=cmd, id=self._seq)
        self.proc.stdin.write((json.dumps(kv) + "\n").encode())
        self.proc.stdin.flush()
        return self._seq

    def call(self, cmd, timeout, **kv):
        cid = self.send(cmd, **kv)
        return self.event("reply", timeout, id=cid)

    def stop(self):
        """Close stdin, wait a moment, then TERM and KILL. Never raises."""
        p = self.proc
        try:
            if p.poll() is None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.terminate()
                    try:
                        p.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(timeout=5)
        except Exception as exc:  # pragma: no cover - cleanup must go on
            print("stopping %s failed: %r" % (self.name, exc), file=sys.stderr)
        finally:
            self._log.close()


def emit(**kv):
    print(json.dumps(kv), flush=True)


def timed_runs(run, n, runs):
    """Warm up with ``n // 10``, then ``runs`` timed runs; returns the list of run results."""
    run(max(n // 10, 1))
    return [run(n) for _ in range(runs)]


def bench_pair(fmt, args, n_flood, n_pp, deadline, log_dir, results, with_raw):
    rx = Child("rx", fmt, log_dir, deadline, args.profile, args.pin)
    tx = Child("tx", fmt, log_dir, deadline, args.profile, args.pin)
    try:
        info = rx.event("ready", 30)
        tx.event("ready", 30)
        rx_addr = info["addrs"][0]
        up = tx.call(
            "connect",
            30,
            rx_nodeid=info["nodeid"],
            addr=rx_addr,
            sink=info["sink"],
            pong=info["pong"],
        )
        if not up["up"]:
            raise BenchError("link %s -> %s did not come up" % (tx.name, rx.name))
        only = args.only

        tok = [0]

        def flood_run(kind, yield_every=0):
            def run(n):
                tok[0] += 1
                token = "%s%d" % (kind, tok[0])
                if kind == "aemp":
                    sent = tx.call(
                        "flood", 120 + n / 2000, n=n, token=token, yield_every=yield_every
                    )
                    done = rx.event("flood_done", 120 + n / 2000, token=token)
                else:
                    sent = tx.call(
                        "raw_flood", 120 + n / 2000, addr=info["raw_addr"], n=n, token=token
                    )
                    done = rx.event("raw_flood_done", 120 + n / 2000, token=token)
                if done["count"] != n or done["bad"]:
                    raise BenchError(
                        "%s flood: received %d of %d messages, %d out of order"
                        % (kind, done["count"], n, done["bad"])
                    )
                return {
                    "total": done["t_done"] - sent["t0"],
                    "recv_span": done["t_done"] - done["t_first"],
                    "send_loop": sent["t_loop"],
                }

            return run

        def report_flood(workload, rs, n, **extra):
            best = min(rs, key=lambda r: r["total"])
            line = {
                "workload": workload,
                "value": round(n / best["total"]),
                "unit": "msgs/s",
                "n": n,
                "framing": extra.pop("framing", None),
                "runs": [round(n / r["total"]) for r in rs],
                "recv_first_to_last_msgs_s": round(n / best["recv_span"]),
                "sender_snd_loop_msgs_s": round(n / best["send_loop"]),
                "seconds": round(best["total"], 4),
            }
            line.update(extra)
            if line["framing"] is None:
                del line["framing"]
            if workload in TARGETS:
                line["target"] = TARGETS[workload]
            line["pin"] = args.pin
            results[workload] = line
            emit(**line)

        def pp_run(kind):
            def run(n):
                if kind == "aemp":
                    return tx.call("pingpong", 60 + n / 500, n=n)
                return tx.call("raw_pingpong", 60 + n / 500, addr=info["raw_addr"], n=n)

            return run

        def report_pp(workload, rs, n, **extra):
            best = min(rs, key=lambda r: r["seconds"])
            line = {
                "workload": workload,
                "value": round(n / best["seconds"]),
                "unit": "round_trips/s",
                "n": n,
            }
            line.update(extra)
            line["runs"] = [round(n / r["seconds"]) for r in rs]
            for k in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us"):
                line[k] = best[k]
            if workload in TARGETS:
                line["target"] = TARGETS[workload]
            line["pin"] = args.pin
            results[workload] = line
            emit(**line)

        if "flood" in only:
            report_flood(
                "remote_flood_" + fmt,
                timed_runs(flood_run("aemp"), n_flood, args.runs),
                n_flood,
                framing=fmt,
            )
            report_flood(
                "remote_flood_yielding_" + fmt,
                timed_runs(flood_run("aemp", YIELD_EVERY), n_flood, args.runs),
                n_flood,
                framing=fmt,
                yield_every=YIELD_EVERY,
            )
        if "pingpong" in only:
            report_pp(
                "remote_pingpong_" + fmt,
                timed_runs(pp_run("aemp"), n_pp, args.runs),
                n_pp,
                framing=fmt,
            )
        if with_raw and "raw" in only:
            report_flood(
                "raw_socket_flood_ujson",
                timed_runs(flood_run("raw"), n_flood, args.runs),
                n_flood,
                note="one sendall per message",
            )
            report_pp("raw_socket_pingpong", timed_runs(pp_run("raw"), n_pp, args.runs), n_pp)
            report_pp(
                "raw_blocking_socket_pingpong",
                blocking_pingpong(n_pp, args.runs, log_dir, deadline, args.pin),
                n_pp,
                note="plain blocking sockets, no gevent: this machine's floor",
            )
    finally:
        tx.stop()
        rx.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="divide every count by 10")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per workload (best counts)")
    ap.add_argument(
        "--only",
        default="flood,pingpong,raw",
        help="comma list of workload groups: flood, pingpong, raw",
    )
    ap.add_argument("--framings", default="json,cbor", help="comma list of framings")
    ap.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="overall time limit in seconds (default 600, quick 180)",
    )
    ap.add_argument("--profile", metavar="DIR", help="run the children under cProfile")
    ap.add_argument(
        "--pin",
        metavar="CPUS",
        type=parse_cpus,
        help="run the conductor and every child on these CPUs only (0 or 0,1)",
    )
    ap.add_argument("--child", choices=("rx", "tx", "echo"), help=argparse.SUPPRESS)
    ap.add_argument("--framing", help=argparse.SUPPRESS)
    ap.add_argument("--lifetime", type=float, default=900, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pin:  # first thing, in the conductor and in every child
        try:
            pin_cpus(args.pin)
        except OSError as exc:
            ap.error("--pin %s: %s" % (",".join(map(str, args.pin)), exc))
    if args.child == "echo":
        blocking_echo_main(args.lifetime)
        return 0
    if args.child:
        child_main(args.child, args.framing, args.profile, args.lifetime)
        return 0
    args.only = set(args.only.split(","))
    if args.profile:
        args.profile = os.path.abspath(args.profile)
        os.makedirs(args.profile, exist_ok=True)
    div = 10 if args.quick else 1
    n_flood = 500_000 // div
    n_pp = 20_000 // div
    deadline = Deadline(args.deadline or (180 if args.quick else 600))
    log_dir = tempfile.mkdtemp(prefix="aemp-bench-remote-")
    results = {}
    ok = False
    try:
        for i, fmt in enumerate(args.framings.split(",")):
            bench_pair(fmt, args, n_flood, n_pp, deadline, log_dir, results, with_raw=(i == 0))
        ok = True
    except BenchError as exc:
        print("bench failed: %s\n(child logs in %s)" % (exc, log_dir), file=sys.stderr)
    checks = {}
    for workload, minimum in TARGETS.items():
        line = results.get(workload)
        if line is None:
            if ok:
                continue  # not selected
            checks[workload] = {"value": None, "min": minimum, "pass": False}
        else:
            checks[workload] = {
                "value": line["value"],
                "min": minimum,
                "pass": line["value"] >= minimum,
            }
    baselines = {
        w: results[w]["value"]
        for w in ("raw_socket_flood_ujson", "raw_socket_pingpong", "raw_blocking_socket_pingpong")
        if w in results
    }
    emit(
        workload="summary",
        quick=bool(args.quick),
        completed=ok,
        passed=ok and all(c["pass"] for c in checks.values()),
        checks=checks,
        baselines=baselines,
        pin=args.pin,
    )
    if ok:
        import shutil

        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
