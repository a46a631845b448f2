"""How aemp_green behaves as things grow: one function per series, real processes.

Run ``python bench/scale.py [--series nodes,ports,...] [--quick] [--out FILE]`` (every series by
default; about 4 minutes on the 2-vCPU development machine, ``--quick`` about 1). Each series
prints one JSON line per measured size and writes all of them to
``bench/results/scale-<series>.json`` (``-quick`` added for ``--quick``; or ``--out``);
``python bench/plot.py`` turns those into ``docs/img/scale-<series>.png``. Times a node measures
itself are CPU seconds where the work is CPU-bound in one process (the machine is shared), wall
time on the shared ``CLOCK_MONOTONIC`` where several processes take part.

This process is only the conductor: it never configures a node. It starts child nodes with the
test harness (``tests/child.py`` through ``tests/netutil.Cluster``, with
``check_local_messages`` off as in the library's defaults) and drives them with snippets.

Series ``nodes`` (2 -> 32 processes; ``--quick``: 2 -> 8)
    One seed, every other node seeded with it. ``mesh_s``: from telling every node the others'
    port IDs (each sends one message to each) until every node has a link to every other.
    ``rss_per_peer_bytes``: a member's RSS growth over the mesh divided by its new peers;
    ``tcp_conns_per_node``: its TCP connections (two for a pair that dialled each other at the
    same moment). ``msgs_per_s``: every node floods every other (20 messages per peer per loop
    turn), the sum of the receive rates each node measures itself over a window;
    ``msgs_per_cpu_s``: the same per CPU second the nodes used in that window.

Series ``ports`` (callback ports 10k -> 1M, greenlet ports 10k -> 100k on one node)
    ``bytes_per_port``: RSS growth / ports (the benchmark's list of IDs adds 8 bytes);
    ``spawn_per_s``: ports made per CPU second (greenlet ports: until each ran to its
    ``receive``); ``snd_local_ns``: CPU per local ``snd`` to a random one of them (a no-op
    handler); ``remote_rtt_p50_us``: ``call`` round trip from a second node to a random port.

Series ``msgsize`` (10 B -> 1 MB)
    A string payload of that size, flooded over one link, MB/s from the first ``snd`` to the
    last message handled (medians of 3), and the same bytes as ujson lines through a bare gevent
    socket between the same two processes (written 64 KiB at a time, decoded line by line).

Series ``monitors`` (1k -> 100k)
    A watcher monitors n ports on a target node (``mon_per_s``, ``watcher_bytes_per_monitor``);
    the target is SIGKILLed: ``first_fired_ms`` / ``all_fired_ms`` after the kill. Then n guards
    on one local port are made and cancelled newest first (``one_port_*_ms``, CPU).

Series ``wan`` (8 and 16 nodes; ``--quick``: 8)
    One network namespace per node, 10.213.0.x, 0 and then 20 ms one way between any two: with
    ``tc netem`` on veth pairs to a bridge (in a namespace of its own) where the kernel has
    ``sch_netem``, else a TUN device per namespace and a delay line in this process. Made and
    removed by the benchmark (``finally`` and ``atexit``); skipped with a message where
    namespaces cannot be made (not root, no ``ip``). n - 1 nodes each hold a key in the family
    ``wan`` and watch it; one more node joins: ``join_sees_all_ms`` (its ``db_mon`` holds every
    key) and ``all_see_join_ms`` (every other node saw its key), from its ``ready``;
    ``converge_ms`` is the later of the two. After a full mesh, one node is SIGKILLed:
    ``down_everywhere_ms`` (every node's ``mon_nodes`` saw it go) and
    ``db_delete_everywhere_ms`` (every node's ``db_mon`` saw its key deleted).

Series ``db`` (the replicated database)
    A seed (the global node) and a writer node ``w``. The writer fills the family ``scale``
    with keys ``w#p0000001``... (values ``{"n": i}``) up to each size in turn (10, 100, 1k,
    10k, 100k; ``--quick``: 10, 100, 1k, 5k). At each size:

    * ``seed_bytes_per_key``: the growth of the seed's RSS since the start (after
      ``gc.collect()``) divided by the number of keys: what one key costs the node that keeps
      the database (key and value objects included; null below 1,000 keys, where RSS moves by
      whole pages and arenas).
    * ``join_s``: a fresh node's ``db_mon("scale", ...)``, from the call to the callback that
      holds every key (``g_mon1`` -> ``g_chg1``); ``family_s``: its ``db_family("scale")``.
    * ``leave_s``: three nodes each hold one key in the family ``leave``; each is SIGKILLed in
      turn and the writer's ``db_mon("leave")`` notes the deletion: the median time from the
      kill to that callback. ``leave_node_down_ms``: the median time the seed spent in
      ``globaldb.sync.node_down`` for those nodes. Both should not depend on the database size.

Safety: children are stopped in a ``finally``; every wait has a deadline, and the whole run
has one (``--deadline``, through ``SIGALRM``).
"""

import argparse
import atexit
import fcntl
import heapq
import json
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from netutil import Cluster, free_port  # noqa: E402


class _Deadline(Exception):
    pass


def _alarm(signum, frame):
    raise _Deadline("overall deadline reached")


def _sockets(pid):
    """How many sockets process ``pid`` has open (Linux ``/proc``)."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def _rss(pid):
    """Resident set size of process ``pid`` in bytes (Linux ``/proc``)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for %d" % pid)


class _Kids(Cluster):
    """``netutil.Cluster`` whose children run with the library's defaults where the test
    harness differs: ``check_local_messages`` off (the child turns it on, as the test suite
    does; it encodes every local message)."""

    def start(self, *specs):
        return super().start(
            *[(name, dict({"check_local_messages": False}, **cfg)) for name, cfg in specs]
        )


SEED_SNIPPET = """
import gc, statistics
import aemp_green.globaldb.sync as G
NODE_DOWN_MS = []
_orig_node_down = G.node_down
def _timed_node_down(node):
    t0 = time.perf_counter()
    try:
        return _orig_node_down(node)
    finally:
        NODE_DOWN_MS.append((node.id, (time.perf_counter() - t0) * 1000))
G.node_down = _timed_node_down
"""

WRITER_SNIPPET = """
LEAVE_SEEN = {}
def _leave_cb(db, added, changed=None, deleted=None):
    for k in deleted or ():
        LEAVE_SEEN[k] = time.monotonic()
        emit("leave_gone", k, LEAVE_SEEN[k])
    for k in added:
        emit("leave_added", k)
LEAVE_W = db_mon("leave", _leave_cb)

def _fill(lo, hi):
    for i in range(lo, hi):
        db_set("scale", "w#p%07d" % i, {"n": i})
        if i % 500 == 499:
            gevent.sleep(0)
    # a request after the updates on the same link: answered once the seed applied them all
    db_keys("scale_sync", timeout=120)
"""

JOINER_SNIPPET = """
import aemp_green.globaldb.sync as G
wait_for(lambda: G.master() is not None, 15)
def _join(n):
    t0 = time.monotonic()
    state = {}
    def cb(db, added, changed=None, deleted=None):
        if "t" not in state and len(db) >= n:
            state["t"] = time.monotonic()
    g = db_mon("scale", cb)
    wait_for(lambda: "t" in state, 120)
    join_s = state["t"] - t0
    del g
    t0 = time.monotonic()
    fam = db_family("scale", timeout=120)
    family_s = time.monotonic() - t0
    assert len(fam) == n, (len(fam), n)
    emit("joined", join_s, family_s)
"""


def series_db(args, log_dir):
    """The database series: seed memory per key, join time and leave cost per database size."""
    sizes = [10, 100, 1000, 5000] if args.quick else [10, 100, 1000, 10000, 100000]
    kids = _Kids(log_dir)
    rows = []
    try:
        seed_addr = "127.0.0.1:%d" % free_port()
        seed, w = kids.start(
            ("seed", dict(binds=[seed_addr], seeds=[seed_addr])), ("w", dict(seeds=[seed_addr]))
        )
        w.run(
            "import aemp_green.globaldb.sync as G\nwait_for(lambda: G.master() is not None, 15)",
            timeout=20,
        )
        seed.run(SEED_SNIPPET)
        w.run(WRITER_SNIPPET)
        seed.run("gc.collect()")
        rss0 = _rss(seed.proc.pid)
        have = 0
        for i_size, n in enumerate(sizes):
            t0 = time.monotonic()
            w.run("_fill(%d, %d)" % (have, n), timeout=max(60, n / 1000))
            fill_s = time.monotonic() - t0
            have = n
            seed.run("gc.collect()")
            rss = _rss(seed.proc.pid)
            # RSS grows by pages and allocator arenas: below 1,000 keys the ratio means nothing
            per_key = round((rss - rss0) / n, 1) if n >= 1000 else None

            (joiner,) = kids.start(("j%d" % i_size, dict(seeds=[seed_addr])))
            joiner.run(JOINER_SNIPPET)
            joiner.exec("_join(%d)" % n)
            join_s, family_s = joiner.expect("joined", timeout=180)
            joiner.stop()

            leavers = kids.start(
                *[("l%d_%d" % (i_size, j), dict(seeds=[seed_addr])) for j in range(3)]
            )
            leave_s, down_ms = [], []
            for lv in leavers:
                lv.run(
                    "import aemp_green.globaldb.sync as G\n"
                    "wait_for(lambda: G.master() is not None, 15)\n"
                    "db_set('leave', NODE(), 1)",
                    timeout=20,
                )
                w.expect("leave_added", timeout=20, pred=lambda v, k=lv.nodeid: v[0] == k)
            for lv in leavers:
                t_kill = time.monotonic()
                lv.kill()
                _, t_seen = w.expect(
                    "leave_gone", timeout=60, pred=lambda v, k=lv.nodeid: v[0] == k
                )
                leave_s.append(t_seen - t_kill)
                down_ms.append(
                    seed.ask("[ms for nid, ms in NODE_DOWN_MS if nid == %r][-1]" % lv.nodeid)
                )
                lv.stop()
            row = {
                "series": "db",
                "keys": n,
                "fill_s": round(fill_s, 4),
                "seed_rss_growth_bytes": rss - rss0,
                "seed_bytes_per_key": per_key,
                "join_s": round(join_s, 4),
                "family_s": round(family_s, 4),
                "leave_s": round(statistics.median(leave_s), 5),
                "leave_s_all": [round(x, 5) for x in leave_s],
                "leave_node_down_ms": round(statistics.median(down_ms), 4),
                "leave_node_down_ms_all": [round(x, 4) for x in down_ms],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        kids.stop_all(timeout=5)
    return rows


# --------------------------------------------------------------------------- helpers


def _mono():
    """``time.monotonic()``: CLOCK_MONOTONIC, one clock for every process on this host (and in
    every network namespace), so times emitted by children compare with ours."""
    return time.monotonic()


def _ms(x):
    return None if x is None else round(x * 1000, 3)


def _pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


# --------------------------------------------------------------------------- nodes

MESH_SNIPPET = """
import gc
MESH = {"n": 0, "up": {}}
def _mesh_count(*msg):
    MESH["n"] += 1
MESH_PORT = port(_mesh_count)
def _mesh_watch(nid, up, *why):
    if up:
        MESH["up"].setdefault(nid, time.monotonic())
mon_nodes(_mesh_watch)

def _mesh_connect(ports):
    others = [p for p in ports if node_of(p) != NODE()]
    want = {node_of(p) for p in others}
    t0 = time.monotonic()
    for nid in up_nodes():
        MESH["up"].setdefault(nid, t0)
    for p in others:
        snd(p, "hi")
    wait_for(lambda: want <= set(up_nodes()), 120)
    emit("meshed", max([t0] + [MESH["up"].get(nid, t0) for nid in want]))

def _mesh_flood(ports, t_start, warm, dur, batch=20):
    # every node floods every other from t_start on; its counter is read at t_start + warm
    # and dur seconds later (by this node, on the shared monotonic clock), and the flood goes
    # on until that second reading was taken, however late a loaded machine made it
    others = [p for p in ports if node_of(p) != NODE()]
    marks = []
    def _sampler():
        for t in (t_start + warm, t_start + warm + dur):
            gevent.sleep(max(0.0, t - time.monotonic()))
            marks.append((time.monotonic(), MESH["n"], time.process_time()))
    sampler = gevent.spawn(_sampler)
    gevent.sleep(max(0.0, t_start - time.monotonic()))
    sent = 0
    while len(marks) < 2:
        for p in others:
            for _ in range(batch):
                snd(p, "m")
        sent += batch * len(others)
        gevent.sleep(0)
    sampler.join()
    emit("flooded", sent, marks)
"""


def series_nodes(args, log_dir):
    """Full mesh of N node processes (one seed, every node seeded with it): mesh time, memory per
    link, aggregate messages/s with every pair exchanging."""
    sizes = [2, 4, 8] if args.quick else [2, 4, 8, 16, 32]
    flood_s = 1.0 if args.quick else 2.0
    rows = []
    for n in sizes:
        kids = _Kids(log_dir)
        try:
            seed_spec = kids.seed_spec("s%d_0" % n)
            seed_addr = seed_spec[1]["binds"][0]
            nodes = kids.start(
                seed_spec, *[("s%d_%d" % (n, i), dict(seeds=[seed_addr])) for i in range(1, n)]
            )
            for c in nodes:
                c.exec(
                    MESH_SNIPPET
                    + "\nimport aemp_green.globaldb as G\n"
                    + "wait_for(lambda: G.master() is not None, 60)\n"
                    + "gc.collect()\nemit('meshready', MESH_PORT)\n"
                )
            ports = [c.expect("meshready", timeout=60)[0] for c in nodes]
            rss0 = [_rss(c.proc.pid) for c in nodes]
            t0 = _mono()
            for c in nodes:
                c.exec("_mesh_connect(%r)" % (ports,))
            t_meshed = [c.expect("meshed", timeout=120)[0] for c in nodes]
            mesh_s = max(t_meshed) - t0
            for c in nodes:
                c.run("gc.collect()", timeout=30)
            rss1 = [_rss(c.proc.pid) for c in nodes]
            # before the mesh a member had one peer (the seed), after it n - 1
            per_peer = (
                statistics.median([(b - a) / (n - 2) for a, b in zip(rss0[1:], rss1[1:])])
                if n > 2
                else None
            )
            # TCP connections (sockets but the listener): two for a pair that dialled each
            # other at the same moment (the second is kept, read from only)
            conns = statistics.median([_sockets(c.proc.pid) - 1 for c in nodes])
            t_start = _mono() + 0.2 + 0.05 * n  # after every node got the snippet
            for c in nodes:
                c.exec("_mesh_flood(%r, %r, 0.5, %r)" % (ports, t_start, flood_s))
            rate = msgs = cpu = 0.0
            for c in nodes:
                _, ((t1, c1, p1), (t2, c2, p2)) = c.expect("flooded", timeout=60 + flood_s)
                rate += (c2 - c1) / (t2 - t1)
                msgs += c2 - c1
                cpu += p2 - p1
            row = {
                "series": "nodes",
                "nodes": n,
                "links": n * (n - 1) // 2,
                "mesh_s": round(mesh_s, 4),
                "rss_per_peer_bytes": None if per_peer is None else round(per_peer),
                "tcp_conns_per_node": conns,
                "rss_median_bytes": int(statistics.median(rss1)),
                "msgs_per_s": round(rate),
                # the same per CPU second the nodes used in the window: what a loaded, shared
                # machine changes least
                "msgs_per_cpu_s": round(msgs / cpu) if cpu else None,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        finally:
            kids.stop_all(timeout=10)
    return rows


# --------------------------------------------------------------------------- ports

PORTS_SNIPPET = """
import gc, random, statistics
CB_PORTS = []
GL_PORTS = []
GL = {"started": 0}
def _h(*msg):
    if msg and msg[0] == "ping":
        snd(msg[-1], "pong")
def _ctl(tag, *args):
    if tag == "sample":
        snd(args[-1], random.choices(CB_PORTS, k=args[0]))
    elif tag == "list":
        snd(args[-1], CB_PORTS)
CTL = port(_ctl)

def _make_cb(n):
    need = n - len(CB_PORTS)
    app = CB_PORTS.append
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(need):
        app(port(_h))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    emit("made", need, dt, cpu)

def _snd_local(k):
    sample = random.choices(CB_PORTS, k=k)
    c0 = time.process_time()
    for p in sample:
        snd(p, "x")
    emit("snd_local", (time.process_time() - c0) / k)

def _gl_body():
    GL["started"] += 1
    receive("stop")

def _make_gl(n):
    need = n - len(GL_PORTS)
    app = GL_PORTS.append
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(need):
        app(spawn(_gl_body))
    t1 = time.process_time()
    while GL["started"] < n:
        gevent.sleep(0)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    emit("made_gl", need, t1 - c0, cpu, dt)
"""

PINGER_SNIPPET = """
def _rtt(ctl, k):
    sample = call(ctl, "sample", k, timeout=60)[0]
    lat = []
    for p in sample[:50]:
        call(p, "ping", timeout=10)  # warm-up
    for p in sample:
        t0 = time.perf_counter()
        call(p, "ping", timeout=10)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    emit("rtt", lat[len(lat) // 2], lat[int(len(lat) * 0.99)])
"""


def series_ports(args, log_dir):
    """Callback ports 10k -> 1M on one node (memory, spawn rate, local snd cost, remote
    round trip to a random port); greenlet ports 10k -> 100k (memory, spawn rate)."""
    cb_sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 300_000, 1_000_000]
    gl_sizes = [1_000, 10_000] if args.quick else [10_000, 30_000, 100_000]
    kids = _Kids(log_dir)
    rows = []
    try:
        spec = kids.seed_spec("ports")
        p, q, g = kids.start(spec, ("pinger", dict(seeds=spec[1]["seeds"])), ("gports", {}))
        for c in (p, g):
            c.run(PORTS_SNIPPET + "\ngc.collect()", timeout=30)
        q.run(PINGER_SNIPPET)
        ctl = p.ask("CTL")
        rss0 = _rss(p.proc.pid)
        made_s = 0.0
        for n in cb_sizes:
            p.exec("_make_cb(%d)" % n)
            need, wall, dt = p.expect("made", timeout=300)
            made_s += dt
            rss = _rss(p.proc.pid)
            p.exec("_snd_local(50000)")
            (snd_s,) = p.expect("snd_local", timeout=120)
            q.exec("_rtt(%r, %d)" % (ctl, 300 if args.quick else 2000))
            rtt50, rtt99 = q.expect("rtt", timeout=120)
            row = {
                "series": "ports",
                "kind": "callback",
                "ports": n,
                "rss_growth_bytes": rss - rss0,
                # CB_PORTS (the benchmark's own list of IDs) holds 8 bytes per port of this
                "bytes_per_port": round((rss - rss0) / n, 1),
                "spawn_per_s": round(need / dt),
                "spawn_per_wall_s": round(need / wall),
                "create_total_s": round(made_s, 4),
                "snd_local_ns": round(snd_s * 1e9, 1),
                "remote_rtt_p50_us": round(rtt50 * 1e6, 1),
                "remote_rtt_p99_us": round(rtt99 * 1e6, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        rss0 = _rss(g.proc.pid)
        made_s = 0.0
        for n in gl_sizes:
            g.exec("_make_gl(%d)" % n)
            need, spawn_s, dt, wall = g.expect("made_gl", timeout=300)
            made_s += dt
            rss = _rss(g.proc.pid)
            row = {
                "series": "ports",
                "kind": "greenlet",
                "ports": n,
                "rss_growth_bytes": rss - rss0,
                "bytes_per_port": round((rss - rss0) / n, 1),
                "spawn_per_s": round(need / dt),
                "spawn_per_wall_s": round(need / wall),
                "spawn_call_per_s": round(need / spawn_s),
                "create_total_s": round(made_s, 4),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        kids.stop_all(timeout=10)
    return rows


# --------------------------------------------------------------------------- msgsize

RX_SNIPPET = """
import ujson
from gevent.server import StreamServer
RX = {"n": 0, "bytes": 0, "want": -1, "tok": None}
def _rx(tag, tok, payload):
    if tok != RX["tok"]:
        return
    RX["n"] += 1
    RX["bytes"] += len(payload)
    if RX["n"] == RX["want"]:
        emit("rx_done", time.monotonic(), RX["bytes"])
RX_PORT = port(_rx)
def _rx_arm(n, tok):
    RX.update(n=0, bytes=0, want=n, tok=tok)

def _raw_handle(sock, addr):
    n = 0
    nbytes = 0
    want = None
    buf = []
    while True:
        data = sock.recv(262144)
        if not data:
            return
        start = 0
        while True:
            i = data.find(b"\\n", start)
            if i < 0:
                if start < len(data):
                    buf.append(data[start:])
                break
            piece = data[start:i]
            start = i + 1
            if buf:
                buf.append(piece)
                piece = b"".join(buf)
                buf = []
            msg = ujson.loads(piece)
            if want is None:
                want = msg["n"]
                continue
            n += 1
            nbytes += len(msg[1])
            if n == want:
                emit("raw_done", time.monotonic(), nbytes)
                n = 0
                nbytes = 0
                want = None
RAW = StreamServer(("127.0.0.1", 0), _raw_handle)
RAW.start()
RAW_ADDR = "127.0.0.1:%d" % RAW.address[1]
"""

TX_SNIPPET = """
import ujson
from gevent import socket as gsocket
RAWSOCK = []
def _tx_aemp(to, size, n, tok):
    payload = "x" * size
    t0 = time.monotonic()
    for i in range(n):
        snd(to, "m", tok, payload)
        if i % 100 == 99:
            gevent.sleep(0)
    emit("tx_start", t0)

def _tx_raw(addr, size, n):
    if not RAWSOCK:
        host, port_ = addr.rsplit(":", 1)
        s = gsocket.create_connection((host, int(port_)))
        s.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        RAWSOCK.append(s)
    s = RAWSOCK[0]
    payload = "x" * size
    t0 = time.monotonic()
    s.sendall(ujson.dumps({"n": n}).encode() + b"\\n")
    out = []
    pending = 0
    for i in range(n):
        b = ujson.dumps(["m", payload]).encode() + b"\\n"
        out.append(b)
        pending += len(b)
        if pending >= 65536:
            s.sendall(b"".join(out))
            out = []
            pending = 0
    if out:
        s.sendall(b"".join(out))
    emit("tx_start", t0)
"""


def series_msgsize(args, log_dir):
    """MB/s over one link, 10 B -> 1 MB string payloads, next to a bare gevent socket (ujson
    lines, written 64 KiB at a time) between the same two processes in the same run."""
    sizes = (
        [10, 1000, 100_000, 1_000_000]
        if args.quick
        else [10, 100, 1000, 10_000, 100_000, 1_000_000]
    )
    budget = (8 if args.quick else 48) * 1_000_000  # payload bytes per measurement
    reps = 1 if args.quick else 3
    kids = _Kids(log_dir)
    rows = []
    try:
        spec = kids.seed_spec("rx")
        rx, tx = kids.start(spec, ("tx", dict(seeds=spec[1]["seeds"])))
        rx.run(RX_SNIPPET)
        tx.run(TX_SNIPPET)
        to, raw_addr = rx.ask("RX_PORT"), rx.ask("RAW_ADDR")
        tx.run("_tx_aemp(%r, 10, 1000, 0)" % to)  # the link comes up, and a warm-up
        for size in sizes:
            n = max(20, min(200_000, budget // size))
            aemp, raw = [], []
            for rep in range(reps):
                tok = "%d.%d" % (size, rep)
                rx.run("_rx_arm(%d, %r)" % (n, tok))
                tx.exec("_tx_aemp(%r, %d, %d, %r)" % (to, size, n, tok))
                (t0,) = tx.expect("tx_start", timeout=120)
                t1, nb = rx.expect("rx_done", timeout=120)
                assert nb == n * size, (nb, n, size)
                aemp.append(nb / (t1 - t0) / 1e6)
                tx.exec("_tx_raw(%r, %d, %d)" % (raw_addr, size, n))
                (t0,) = tx.expect("tx_start", timeout=120)
                t1, nb = rx.expect("raw_done", timeout=120)
                assert nb == n * size, (nb, n, size)
                raw.append(nb / (t1 - t0) / 1e6)
            a, r = statistics.median(aemp), statistics.median(raw)
            row = {
                "series": "msgsize",
                "bytes": size,
                "messages": n,
                "aemp_mb_s": round(a, 2),
                "raw_mb_s": round(r, 2),
                "ratio": round(a / r, 3),
                "aemp_msgs_s": round(a * 1e6 / size),
                "aemp_mb_s_all": [round(x, 2) for x in aemp],
                "raw_mb_s_all": [round(x, 2) for x in raw],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        kids.stop_all(timeout=10)
    return rows


# --------------------------------------------------------------------------- monitors

WATCHER_SNIPPET = """
MONS = {"n": 0, "want": -1, "first": None}
def _fired(*reason):
    MONS["n"] += 1
    if MONS["first"] is None:
        MONS["first"] = time.monotonic()
    if MONS["n"] == MONS["want"]:
        emit("all_fired", MONS["first"], time.monotonic())

def _mon_all(ctl):
    ports = call(ctl, "list", timeout=120)[0]
    MONS["want"] = len(ports)
    t0 = time.perf_counter()
    for i, p in enumerate(ports):
        mon(p, _fired)
        if i % 1000 == 999:
            gevent.sleep(0)
    # a round trip behind the monitor requests on the same link: they are all installed
    call(ports[0], "ping", timeout=120)
    emit("monitoring", len(ports), time.perf_counter() - t0)

def _one_port(k):
    # k guards on one local port, cancelled newest first (CPU seconds)
    p = port()
    c0 = time.process_time()
    guards = [mon(p, _fired) for _ in range(k)]
    c1 = time.process_time()
    for g in reversed(guards):
        g.cancel()
    emit("one_port", c1 - c0, time.process_time() - c1)
    kil(p)
"""


def series_monitors(args, log_dir):
    """N monitors on N ports of one remote node; that node is SIGKILLed: time until all fire."""
    sizes = [1000, 10_000] if args.quick else [1000, 10_000, 100_000]
    rows = []
    for n in sizes:
        kids = _Kids(log_dir)
        try:
            spec = kids.seed_spec("target%d" % n)
            t, w = kids.start(spec, ("watcher%d" % n, dict(seeds=spec[1]["seeds"])))
            t.run(PORTS_SNIPPET)
            t.exec("_make_cb(%d)" % n)
            t.expect("made", timeout=120)
            ctl = t.ask("CTL")
            w.run(WATCHER_SNIPPET + "\nimport gc\ngc.collect()")
            rss0 = _rss(w.proc.pid)
            w.exec("_mon_all(%r)" % ctl)
            _, mon_s = w.expect("monitoring", timeout=300)
            w.run("gc.collect()", timeout=30)
            rss1 = _rss(w.proc.pid)
            t_kill = _mono()
            t.kill()
            t_first, t_all = w.expect("all_fired", timeout=300)
            w.exec("_one_port(%d)" % n)
            one_mon_s, one_cancel_s = w.expect("one_port", timeout=120)
            row = {
                "series": "monitors",
                "monitors": n,
                "mon_per_s": round(n / mon_s),
                "watcher_bytes_per_monitor": round((rss1 - rss0) / n, 1),
                "first_fired_ms": _ms(t_first - t_kill),
                "all_fired_ms": _ms(t_all - t_kill),
                "one_port_mon_ms": _ms(one_mon_s),
                "one_port_cancel_ms": _ms(one_cancel_s),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        finally:
            kids.stop_all(timeout=10)
    return rows


# --------------------------------------------------------------------------- wan


_NET = "10.213.0.%d"


def _run_cmd(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise OSError("%s: %s" % (" ".join(argv), (r.stderr or r.stdout).strip()))


class _DelayLine(threading.Thread):
    """A userspace stand-in for ``tc netem delay`` (for kernels without ``sch_netem``): one TUN
    device per namespace, all read by this thread, which writes every IPv4 packet into the TUN
    of its destination address ``delay`` seconds later (so ``delay`` one way between any two
    namespaces; a node's traffic with itself stays on its own ``lo``)."""

    TUNSETIFF = 0x400454CA
    IFF_TUN, IFF_NO_PI = 0x0001, 0x1000

    def __init__(self, names):
        super().__init__(daemon=True, name="delay-line")
        self.fds = []
        self.ifnames = []
        self.delay = 0.0
        self.stopping = False
        self.packets = 0
        for name in names:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            self.fds.append(fd)
            fcntl.ioctl(
                fd,
                self.TUNSETIFF,
                struct.pack("16sH", name.encode(), self.IFF_TUN | self.IFF_NO_PI),
            )
            self.ifnames.append(name)

    def run(self):
        ep = select.epoll()
        by_fd = {}
        for i, fd in enumerate(self.fds):
            ep.register(fd, select.EPOLLIN)
            by_fd[fd] = i
        queue_ = []  # (due, seq, destination fd, packet)
        seq = 0
        try:
            while not self.stopping:
                now = time.monotonic()
                while queue_ and queue_[0][0] <= now:
                    _, _, dfd, pkt = heapq.heappop(queue_)
                    try:
                        os.write(dfd, pkt)
                    except OSError:
                        pass
                timeout = min(0.05, queue_[0][0] - now) if queue_ else 0.05
                for fd, _ in ep.poll(max(0.0, timeout)):
                    while True:
                        try:
                            pkt = os.read(fd, 65536)
                        except (BlockingIOError, OSError):
                            break
                        if len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[16:19] != b"\x0a\xd5\x00":
                            continue
                        dst = pkt[19] - 1
                        if 0 <= dst < len(self.fds):
                            seq += 1
                            self.packets += 1
                            heapq.heappush(
                                queue_, (time.monotonic() + self.delay, seq, self.fds[dst], pkt)
                            )
        finally:
            ep.close()

    def close(self):
        self.stopping = True
        if self.is_alive():
            self.join(timeout=2)
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def _has_netem():
    probe = "aemps-netem%d" % os.getpid()
    _run_cmd(["ip", "netns", "add", probe])
    try:
        _run_cmd(["ip", "-n", probe, "link", "set", "lo", "up"])
        r = subprocess.run(
            ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
             "delay", "1ms"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)


class _Netns:
    """``n`` network namespaces, addresses 10.213.0.1..n/24, ``delay`` one way between any two.

    With ``tc netem`` (``sch_netem`` in the kernel): one bridge in a namespace of its own (the
    host's network is never touched), a veth pair per node namespace, ``netem delay`` on the
    node side (its egress). Without it (this VM's kernel has no ``sch_netem``): a TUN device per
    namespace and a ``_DelayLine`` thread in this process that forwards every packet after the
    delay. ``close()`` removes everything; it is registered with ``atexit`` and safe twice."""

    def __init__(self, n, delay_ms):
        self.tag = "aemps%d" % (os.getpid() % 100000)
        self.bridge_ns = self.tag + "-br"
        self.names = ["%s-%d" % (self.tag, i) for i in range(n)]
        self.made = []
        self.line = None
        self.closed = False
        atexit.register(self.close)
        try:
            self.mode = "netem" if _has_netem() else "tun"
            if self.mode == "netem":
                self._make_netem(delay_ms)
            else:
                self.line = _DelayLine(["at%d_%d" % (os.getpid() % 100000, i) for i in range(n)])
                for i, ns in enumerate(self.names):
                    self._ns_add(ns)
                    dev = self.line.ifnames[i]
                    _run_cmd(["ip", "link", "set", dev, "netns", ns])
                    _run_cmd(["ip", "-n", ns, "addr", "add", "%s/24" % self.addr(i), "dev", dev])
                    _run_cmd(["ip", "-n", ns, "link", "set", dev, "up"])
                    _run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
                self.line.delay = delay_ms / 1000.0
                self.line.start()
        except BaseException:
            self.close()
            raise

    def _make_netem(self, delay_ms):
        self._ns_add(self.bridge_ns)
        _run_cmd(["ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge"])
        _run_cmd(["ip", "-n", self.bridge_ns, "link", "set", "br0", "up"])
        for i, ns in enumerate(self.names):
            self._ns_add(ns)
            _run_cmd(
                ["ip", "link", "add", "v%d" % i, "netns", ns, "type", "veth",
                 "peer", "name", "b%d" % i, "netns", self.bridge_ns]
            )  # fmt: skip
            _run_cmd(["ip", "-n", self.bridge_ns, "link", "set", "b%d" % i, "master", "br0"])
            _run_cmd(["ip", "-n", self.bridge_ns, "link", "set", "b%d" % i, "up"])
            _run_cmd(["ip", "-n", ns, "addr", "add", "%s/24" % self.addr(i), "dev", "v%d" % i])
            _run_cmd(["ip", "-n", ns, "link", "set", "v%d" % i, "up"])
            _run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
            self._netem(i, "add", delay_ms)

    def _netem(self, i, verb, delay_ms):
        _run_cmd(
            ["ip", "netns", "exec", self.names[i], "tc", "qdisc", verb, "dev", "v%d" % i,
             "root", "netem", "delay", "%dms" % delay_ms, "limit", "100000"]
        )  # fmt: skip

    @staticmethod
    def addr(i):
        return _NET % (i + 1)

    def prefix(self, i):
        return ["ip", "netns", "exec", self.names[i]]

    def set_delay(self, delay_ms):
        if self.line is not None:
            self.line.delay = delay_ms / 1000.0
        else:
            for i in range(len(self.names)):
                self._netem(i, "change", delay_ms)

    def _ns_add(self, ns):
        _run_cmd(["ip", "netns", "add", ns])
        self.made.append(ns)

    def close(self):
        if self.closed:
            return
        self.closed = True
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made = []
        if self.line is not None:
            self.line.close()


def _netns_problem():
    """Why network namespaces cannot be made here (None if they can)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip",):
        if shutil.which(tool) is None:
            return "no %r command (apt-get install iproute2)" % tool
    probe = "aemps-probe%d" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return "ip netns add failed: %s" % r.stderr.strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


WAN_MEMBER_SNIPPET = """
import aemp_green.globaldb as G
WAN = {"added": {}, "deleted": {}, "down": {}, "port": None}
def _wan_db(db, added, changed=None, deleted=None):
    now = time.monotonic()
    for k in added:
        WAN["added"].setdefault(k, now)
    for k in deleted or ():
        WAN["deleted"].setdefault(k, now)
def _wan_nodes(nid, up, *why):
    if not up:
        WAN["down"].setdefault(nid, time.monotonic())
mon_nodes(_wan_nodes)
WAN["port"] = port(lambda *m: None)
wait_for(lambda: G.master() is not None, 60)
WAN_DBMON = db_mon("wan", _wan_db)
db_set("wan", NODE(), WAN["port"])
def _wan_wait_keys(n):
    wait_for(lambda: len(WAN["added"]) >= n, 60)
    emit("wan_keys", max(WAN["added"].values()))
"""


def _wan_round(net, n, delay_ms, log_dir, tag):
    """One measurement with ``n`` nodes (node 0 the seed, node n-1 joins last)."""
    kids = _Kids(log_dir)
    try:
        net.set_delay(delay_ms)
        seed_addr = "%s:4040" % net.addr(0)

        def spec(i):
            return (
                "%s_%d" % (tag, i),
                dict(_prefix=net.prefix(i), binds=["%s:4040" % net.addr(i)], seeds=[seed_addr]),
            )

        members = kids.start(*[spec(i) for i in range(n - 1)])
        for c in members:
            c.exec(WAN_MEMBER_SNIPPET + "\n_wan_wait_keys(%d)\n" % (n - 1))
        for c in members:
            c.expect("wan_keys", timeout=120)
        # the join: a fresh node starts, configures with the seed, registers a key and watches
        t_spawn = _mono()
        (j,) = kids.start(spec(n - 1))
        t_ready = _mono()
        j.exec(WAN_MEMBER_SNIPPET + "\n_wan_wait_keys(%d)\n" % n)
        (t_j_sees,) = j.expect("wan_keys", timeout=120)
        everyone = members + [j]
        jid = j.nodeid

        def seen_everywhere(field, key, nodes, timeout):
            times = []
            for c in nodes:
                times.append(
                    c.ask(
                        "wait_for(lambda: WAN[%r].get(%r), %d)" % (field, key, timeout),
                        timeout=timeout + 5,
                    )
                )
            return max(times)

        t_all_see_j = seen_everywhere("added", jid, members, 60)
        # a full mesh before the kill: every node talks to every other
        ports = [c.ask("WAN['port']") for c in everyone]
        for c in everyone:
            c.run(
                "for p in %r:\n    snd(p, 'hi')\n"
                "wait_for(lambda: len(up_nodes()) >= %d, 60)" % (ports, n - 1),
                timeout=70,
            )
        victim = members[-1]
        others = [c for c in everyone if c is not victim]
        t_kill = _mono()
        victim.kill()
        t_down = seen_everywhere("down", victim.nodeid, others, 60)
        t_del = seen_everywhere("deleted", victim.nodeid, others, 60)
        return {
            "series": "wan",
            "nodes": n,
            "delay_ms": delay_ms,
            "join_start_s": round(t_ready - t_spawn, 4),
            "join_sees_all_ms": _ms(t_j_sees - t_ready),
            "all_see_join_ms": _ms(t_all_see_j - t_ready),
            "converge_ms": _ms(max(t_j_sees, t_all_see_j) - t_ready),
            "down_everywhere_ms": _ms(t_down - t_kill),
            "db_delete_everywhere_ms": _ms(t_del - t_kill),
        }
    finally:
        kids.stop_all(timeout=10)


def series_wan(args, log_dir):
    """8+ nodes in network namespaces, 0 and 20 ms one way between any two: database convergence
    after a join, node-down seen everywhere after a SIGKILL."""
    problem = _netns_problem()
    if problem:
        print("series wan skipped: network namespaces cannot be made here (%s)" % problem,
              file=sys.stderr)  # fmt: skip
        return []
    sizes = [8] if args.quick else [8, 16]
    rows = []
    net = _Netns(max(sizes), 0)
    try:
        for n in sizes:
            for delay in (0, 20):
                row = _wan_round(net, n, delay, log_dir, "w%d_%d" % (n, delay))
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        net.close()
    return rows


SERIES = {
    "nodes": series_nodes,
    "ports": series_ports,
    "db": series_db,
    "msgsize": series_msgsize,
    "monitors": series_monitors,
    "wan": series_wan,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--series",
        default=",".join(SERIES),
        help="comma list of series to run (%s)" % ",".join(SERIES),
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument(
        "--out", default=None, help="output file (default bench/results/scale-<series>.json)"
    )
    ap.add_argument("--deadline", type=float, default=900.0, help="overall limit in seconds")
    args = ap.parse_args()
    names = [s for s in args.series.split(",") if s]
    unknown = [s for s in names if s not in SERIES]
    if unknown:
        ap.error("unknown series %s (known: %s)" % (", ".join(unknown), ", ".join(SERIES)))

    os.environ["AEMP_TEST_LOG"] = "WARNING"
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(args.deadline))
    try:
        for name in names:
            log_dir = tempfile.mkdtemp(prefix="bench-scale-%s-" % name)
            ok = False
            try:
                rows = SERIES[name](args, log_dir)
                ok = True
            finally:
                if ok:
                    shutil.rmtree(log_dir, ignore_errors=True)
                else:
                    print(
                        "series %s failed; child logs kept in %s" % (name, log_dir), file=sys.stderr
                    )
            out = (
                Path(args.out)
                if args.out and len(names) == 1
                else REPO
                / "bench"
                / "results"
                / ("scale-%s%s.json" % (name, "-quick" if args.quick else ""))
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps(
                    {
                        "series": name,
                        "quick": args.quick,
                        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "rows": rows,
                    },
                    indent=1,
                )
                + "\n"
            )
            print("wrote %s" % out, file=sys.stderr)
    finally:
        signal.alarm(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
