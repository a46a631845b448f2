"""Local (single-process) benchmarks of aemp_green ports against plain gevent baselines.

Run ``python bench/local.py [--quick]``. Each workload prints one JSON line::

    {"workload": ..., "value": ..., "unit": ..., "n": ...,
     "baseline": ..., "baseline_value": ..., "ratio": ...,   # where a baseline applies
     "target": ...}                                          # where a target applies

and a last line ``{"workload": "summary", ...}`` says which targets pass. Every timed workload is
warmed up once (at a tenth of its size) and then run three times; the best run counts. The
baseline of a workload is measured in the same process, right after it, with the same ``n``.
``--quick`` divides every count by 10. The RSS figures are measured in fresh child processes
(``--rss callback|greenlet N``), so memory freed by earlier workloads does not hide growth.

Workloads:

* ``pingpong_greenlet_ports``: two greenlet ports bounce a message; round trips/s.
  Baseline ``queue_pingpong``: two greenlets and two ``gevent.queue.Queue``.
* ``flood_callback_port``: one sender ``snd``s N messages into a counting callback port; msgs/s.
  Baseline ``queue_flood``: a producer puts N items into an unbounded ``Queue``, a consumer
  greenlet drains it.
* ``flood_greenlet_port``: N messages into a greenlet port that ``receive``s them all; msgs/s
  (baseline ``queue_flood`` with the same N).
* ``spawn_kill_greenlet_ports``: spawn N greenlet ports blocked in ``receive()``, ``kil`` all,
  wait until every one has ended; ports/s for the whole cycle.
* ``create_kill_callback_ports``: ``port()`` N times, then ``kil`` all; ports/s.
* ``rss_per_idle_callback_port`` / ``rss_per_idle_greenlet_port``: RSS growth per idle port
  with 100,000 alive (greenlet ports all started and blocked in ``receive``).
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import gevent
from gevent.event import Event
from gevent.queue import Queue

import aemp_green
from aemp_green import kernel, kil, port, rcv, receive, snd, spawn

TARGETS = {
    "flood_callback_port": ("ratio", 1.0),
    "pingpong_greenlet_ports": ("ratio", 1.0),
    "rss_per_idle_callback_port": ("value_max", 1024),
    "rss_per_idle_greenlet_port": ("value_max", 6144),
}


def emit(**kv):
    print(json.dumps(kv), flush=True)


def best_of(run, n, runs=3):
    """Warm up with ``n // 10``, then return the shortest of ``runs`` timed runs of ``run(n)``."""
    run(max(n // 10, 1))
    best = None
    for _ in range(runs):
        gc.collect()
        t = run(n)
        best = t if best is None else min(best, t)
    return best


# --------------------------------------------------------------------------- ping-pong


def pingpong_ports(n):
    done = Event()

    def ponger():
        while True:
            (reply,) = receive("ping")
            snd(reply, "pong")

    def pinger(other):
        me = aemp_green.SELF()
        for _ in range(n):
            snd(other, "ping", me)
            receive("pong")
        done.set()

    t0 = time.perf_counter()
    b = spawn(ponger)
    spawn(pinger, b)
    done.wait()
    t = time.perf_counter() - t0
    kil(b)
    return t


def pingpong_queues(n):
    q1, q2 = Queue(), Queue()

    def ponger():
        while True:
            q2.put(q1.get())

    def pinger():
        for i in range(n):
            q1.put(i)
            q2.get()

    t0 = time.perf_counter()
    b = gevent.spawn(ponger)
    a = gevent.spawn(pinger)
    a.join()
    t = time.perf_counter() - t0
    b.kill()
    return t


# --------------------------------------------------------------------------- floods


def flood_callback(n):
    count = [0]
    done = Event()

    def handler(i):
        count[0] += 1
        if count[0] == n:
            done.set()

    p = port()
    rcv(p, "m", handler)
    t0 = time.perf_counter()
    for i in range(n):
        snd(p, "m", i)
    done.wait()
    t = time.perf_counter() - t0
    kil(p)
    return t


def flood_greenlet(n):
    done = Event()

    def sink():
        for _ in range(n):
            receive()
        done.set()

    t0 = time.perf_counter()
    g = spawn(sink)
    for i in range(n):
        snd(g, "m", i)
    done.wait()
    return time.perf_counter() - t0


def flood_queue(n):
    q = Queue()

    def producer():
        for i in range(n):
            q.put(i)

    def consumer():
        for _ in range(n):
            q.get()

    t0 = time.perf_counter()
    c = gevent.spawn(consumer)
    gevent.spawn(producer)
    c.join()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- port life cycles


def spawn_kill_greenlet(n):
    state = {"started": 0, "ended": 0}
    all_started, all_ended = Event(), Event()

    def idle():
        state["started"] += 1
        if state["started"] == n:
            all_started.set()
        try:
            receive()
        finally:
            state["ended"] += 1
            if state["ended"] == n:
                all_ended.set()

    t0 = time.perf_counter()
    ports = [spawn(idle) for _ in range(n)]
    all_started.wait()
    for p in ports:
        kil(p)
    all_ended.wait()
    t = time.perf_counter() - t0
    assert not any(kernel.lookup_port(p) for p in ports)
    return t


def create_kill_callback(n):
    t0 = time.perf_counter()
    ports = [port() for _ in range(n)]
    for p in ports:
        kil(p)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- RSS (child process)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_child(kind, n):
    """In a fresh process: RSS growth per idle port of ``kind`` with ``n`` of them alive."""
    # warm up the machinery (hub, one port of each kind) so the delta is per-port cost only
    kil(port())
    w = spawn(receive)
    gevent.sleep(0)
    kil(w)
    gevent.sleep(0)
    gc.collect()
    before = rss_bytes()
    if kind == "callback":
        ports = [port() for _ in range(n)]
    else:
        started = [0]
        ready = Event()

        def idle():
            started[0] += 1
            if started[0] == n:
                ready.set()
            receive()

        ports = [spawn(idle) for _ in range(n)]
        ready.wait()
    gc.collect()
    after = rss_bytes()
    assert len(ports) == n
    print(json.dumps({"delta": after - before, "n": n}), flush=True)


def rss_per_port(kind, n):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--rss", kind, str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["delta"] / n


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="divide every count by 10")
    ap.add_argument("--rss", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss:
        rss_child(args.rss[0], int(args.rss[1]))
        return 0
    div = 10 if args.quick else 1
    results = {}

    def report(workload, n, seconds, unit, per, baseline=None, baseline_seconds=None, **extra):
        value = per / seconds
        line = {"workload": workload, "value": round(value, 1), "unit": unit, "n": n}
        if baseline is not None:
            base_value = per / baseline_seconds
            line.update(
                baseline=baseline,
                baseline_value=round(base_value, 1),
                ratio=round(value / base_value, 3),
            )
        line.update(extra)
        results[workload] = line
        emit(**line)

    n = 200_000 // div
    report(
        "pingpong_greenlet_ports",
        n,
        best_of(pingpong_ports, n),
        "round_trips/s",
        n,
        "queue_pingpong",
        best_of(pingpong_queues, n),
    )

    n = 2_000_000 // div
    report(
        "flood_callback_port",
        n,
        best_of(flood_callback, n),
        "msgs/s",
        n,
        "queue_flood",
        best_of(flood_queue, n),
    )

    n = 1_000_000 // div
    report(
        "flood_greenlet_port",
        n,
        best_of(flood_greenlet, n),
        "msgs/s",
        n,
        "queue_flood",
        best_of(flood_queue, n),
    )

    n = 100_000 // div
    report("spawn_kill_greenlet_ports", n, best_of(spawn_kill_greenlet, n), "ports/s", n)

    n = 1_000_000 // div
    report("create_kill_callback_ports", n, best_of(create_kill_callback, n), "ports/s", n)

    n = 100_000 // div
    for kind, workload in (
        ("callback", "rss_per_idle_callback_port"),
        ("greenlet", "rss_per_idle_greenlet_port"),
    ):
        per = rss_per_port(kind, n)
        line = {
            "workload": workload,
            "value": round(per, 1),
            "unit": "bytes/port",
            "n": n,
            "target": TARGETS[workload][1],
        }
        results[workload] = line
        emit(**line)

    checks = {}
    for workload, (kind, limit) in TARGETS.items():
        line = results[workload]
        if kind == "ratio":
            got, ok = line["ratio"], line["ratio"] >= limit
            checks[workload] = {"ratio": got, "min": limit, "pass": ok}
        else:
            got, ok = line["value"], line["value"] <= limit
            checks[workload] = {"value": got, "max": limit, "pass": ok}
    emit(
        workload="summary",
        quick=bool(args.quick),
        passed=all(c["pass"] for c in checks.values()),
        checks=checks,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
