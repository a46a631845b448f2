"""Local (single-process) benchmarks of aemp_green ports against plain gevent baselines.

Run ``python bench/local.py [--quick]``. Each workload prints one JSON line::

    {"workload": ..., "value": ..., "unit": ..., "n": ...,
     "baseline": ..., "baseline_value": ..., "ratio": ...,   # where a baseline applies
     "target": ...}                                          # where a target applies

and a last line ``{"workload": "summary", ...}`` says which targets and which goals of issue #17
pass. Every timed workload and its baseline are warmed up once (at a tenth of their size) and
then run in ``--runs`` rounds (5), the workload and its baseline one right after the other in
each round, so that both run under the same load (this machine is shared and noisy): ``value``
and ``baseline_value`` are medians over the rounds, ``ratio`` is the median of the per-round
ratios and ``ratio_range`` their lowest and highest. ``--quick`` divides every count by 10.
The RSS figures are measured in fresh child processes (``--rss KIND N``), so memory freed by
earlier workloads does not hide growth; each kind is measured ``--runs`` times, alternating.

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
  with 100,000 alive (greenlet ports all started and blocked in ``receive``). Baseline of the
  greenlet port ``rss_per_idle_bare_greenlet``: a bare gevent greenlet
  (``gevent.spawn(event.wait)``) blocked the same way; for reference also
  ``rss_per_idle_raw_greenlet``, a plain ``greenlet`` whose Python function switched to the hub
  (the least any suspended Python code costs: its frame stack page and C stack slice).

Goals of issue #17 (``summary``: ``goals``): ``flood_callback_port`` >= 1.0x ``queue_flood``;
``rss_per_idle_greenlet_port`` <= 1.1x ``rss_per_idle_bare_greenlet``.
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
    "pingpong_greenlet_ports": ("ratio", 1.0),
    "rss_per_idle_callback_port": ("value_max", 1024),
}

#: issue #17: (kind, limit, text)
GOALS = {
    "flood_callback_port": ("ratio_min", 1.0, "flood into a callback port >= 1.0x Queue put/get"),
    "rss_per_idle_greenlet_port": (
        "ratio_max",
        1.1,
        "idle greenlet port RSS <= 1.1x a bare gevent greenlet",
    ),
}


def emit(**kv):
    print(json.dumps(kv), flush=True)


def median(values):
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def paired(run, base, n, runs):
    """Warm both up with ``n // 10``, then ``runs`` rounds of ``run(n)`` and ``base(n)`` one
    right after the other; returns the two lists of times."""
    run(max(n // 10, 1))
    if base is not None:
        base(max(n // 10, 1))
    ts, bs = [], []
    for _ in range(runs):
        gc.collect()
        ts.append(run(n))
        if base is not None:
            gc.collect()
            bs.append(base(n))
    return ts, bs


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
    elif kind == "bare":  # a bare gevent greenlet, blocked until an event is set
        ev = Event()
        ports = [gevent.spawn(ev.wait) for _ in range(n)]
        gevent.sleep(0)
    elif kind == "raw":  # a plain greenlet whose Python function switched to the hub
        from greenlet import greenlet

        hub = gevent.get_hub()
        keep = hub.loop.timer(3600)  # (something for the loop to wait for)
        keep.start(lambda: None)

        def park():
            hub.switch()

        ports = []
        for _ in range(n):
            g = greenlet(park, parent=hub)
            hub.loop.run_callback(g.switch)
            ports.append(g)
        gevent.sleep(0)
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
    ap.add_argument("--runs", type=int, default=5, help="rounds per workload (5)")
    ap.add_argument("--rss", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss:
        rss_child(args.rss[0], int(args.rss[1]))
        return 0
    div = 10 if args.quick else 1
    runs = max(args.runs, 1)
    results = {}

    def report(workload, n, unit, per, times, baseline=None, base_times=(), **extra):
        rates = [per / t for t in times]
        line = {
            "workload": workload,
            "value": round(median(rates), 1),
            "unit": unit,
            "n": n,
            "range": [round(min(rates), 1), round(max(rates), 1)],
        }
        if baseline is not None:
            ratios = [b / t for t, b in zip(times, base_times)]
            line.update(
                baseline=baseline,
                baseline_value=round(median(per / b for b in base_times), 1),
                ratio=round(median(ratios), 3),
                ratio_range=[round(min(ratios), 3), round(max(ratios), 3)],
            )
        line.update(extra)
        results[workload] = line
        emit(**line)

    n = 200_000 // div
    ts, bs = paired(pingpong_ports, pingpong_queues, n, runs)
    report("pingpong_greenlet_ports", n, "round_trips/s", n, ts, "queue_pingpong", bs)

    n = 2_000_000 // div
    ts, bs = paired(flood_callback, flood_queue, n, runs)
    report("flood_callback_port", n, "msgs/s", n, ts, "queue_flood", bs)

    n = 1_000_000 // div
    ts, bs = paired(flood_greenlet, flood_queue, n, runs)
    report("flood_greenlet_port", n, "msgs/s", n, ts, "queue_flood", bs)

    n = 100_000 // div
    ts, _ = paired(spawn_kill_greenlet, None, n, runs)
    report("spawn_kill_greenlet_ports", n, "ports/s", n, ts)

    n = 1_000_000 // div
    ts, _ = paired(create_kill_callback, None, n, runs)
    report("create_kill_callback_ports", n, "ports/s", n, ts)

    n = 100_000 // div
    kinds = (
        ("callback", "rss_per_idle_callback_port"),
        ("greenlet", "rss_per_idle_greenlet_port"),
        ("bare", "rss_per_idle_bare_greenlet"),
        ("raw", "rss_per_idle_raw_greenlet"),
    )
    per = {workload: [] for _, workload in kinds}
    for _ in range(runs):  # the kinds alternate: each round measures all of them
        for kind, workload in kinds:
            per[workload].append(rss_per_port(kind, n))
    refs = {
        "rss_per_idle_greenlet_port": "rss_per_idle_bare_greenlet",
        "rss_per_idle_bare_greenlet": "rss_per_idle_raw_greenlet",
    }
    for _, workload in kinds:
        vals = per[workload]
        line = {
            "workload": workload,
            "value": round(median(vals), 1),
            "unit": "bytes/port",
            "n": n,
            "range": [round(min(vals), 1), round(max(vals), 1)],
        }
        ref = refs.get(workload)
        if ref is not None:
            ratios = [v / r for v, r in zip(vals, per[ref])]
            line.update(
                baseline=ref,
                baseline_value=round(median(per[ref]), 1),
                ratio=round(median(ratios), 3),
                ratio_range=[round(min(ratios), 3), round(max(ratios), 3)],
            )
        if workload in TARGETS:
            line["target"] = TARGETS[workload][1]
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
    goals = {}
    for workload, (kind, limit, text) in GOALS.items():
        line = results[workload]
        ok = line["ratio"] >= limit if kind == "ratio_min" else line["ratio"] <= limit
        goals[workload] = {
            "ratio": line["ratio"],
            "ratio_range": line["ratio_range"],
            "value": line["value"],
            "reference": line["baseline"],
            "reference_value": line["baseline_value"],
            ("min" if kind == "ratio_min" else "max"): limit,
            "goal": text,
            "pass": ok,
        }
    emit(
        workload="summary",
        quick=bool(args.quick),
        passed=all(c["pass"] for c in checks.values()),
        checks=checks,
        goals=goals,
        goals_passed=all(g["pass"] for g in goals.values()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
