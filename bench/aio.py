"""Awaited calls per second through ``aemp_green.aio``, against the threaded bridge in the same run.

Run ``python bench/aio.py [--quick]``. Each workload prints one JSON line::

    {"workload": ..., "value": ..., "unit": ..., "n": ...,
     "baseline": ..., "baseline_value": ..., "ratio": ...}     # where a baseline applies

Every timed workload is warmed up once (a tenth of its size) and then run three times; the
best run counts. A workload and its baseline run in the same process with the same ``n``,
their runs interleaved (workload, baseline, workload, ...) so that the noise of a shared
machine falls on both. ``--quick`` divides every count by 10.

One process runs one node in a threaded bridge (``threaded.start``); an asyncio event loop in
the main thread uses it through ``aio.attach`` (the same node, so aio and the threaded bridge
are measured side by side), and plain threads use the bridge directly. The echo ports are
callback ports in the hub thread (``port(lambda tag, x, reply: snd(reply, x))``); the remote
one is on a child process (this file with ``--child``), a node that is its own seed.

Workloads:

* ``aio_call``: one task awaits ``node.call(echo, "e", i)`` N times, one after the other;
  calls/s. Baseline ``threaded_call``: one plain thread calls ``bridge.call(echo, ...)`` N times.
* ``aio_call_100_tasks``: 100 tasks, each awaiting N/100 calls one after the other (100 calls
  in flight). Baseline ``threaded_call_8_threads``: 8 threads, N/8 calls each.
* ``asyncio_queue_call`` (reference, no aemp_green): the same round trip inside one event loop,
  an ``asyncio.Queue`` served by a task answering through a future: what a call costs when
  nothing crosses threads.
* ``aio_receive``: a greenlet in the hub thread ``snd``s N messages to an ``aio`` port, one
  task ``await port.receive()``s them all; msgs/s. Baseline ``threaded_inbox``: the same into
  a ``threaded`` inbox, ``inbox.receive()`` in a plain thread.
* ``aio_call_remote`` / ``threaded_call_remote``: ``aio_call`` and ``threaded_call`` to an echo
  port on the child node over TCP.
"""

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SECRET = "bench-aio-secret"


def emit(**kv):
    print(json.dumps(kv), flush=True)


def best_of(run, n, runs=3):
    """Warm up with ``n // 10``, then return the shortest of ``runs`` timed runs of ``run(n)``."""
    return best_pair(run, None, n, runs)[0]


def best_pair(run, baseline, n, runs=3):
    """``best_of`` for a workload and its baseline, their runs interleaved (A B A B A B) so
    that the noise of a shared machine falls on both alike; returns both shortest times."""
    pair = [run] if baseline is None else [run, baseline]
    for r in pair:
        r(max(n // 10, 1))
    best = [None] * len(pair)
    for _ in range(runs):
        for i, r in enumerate(pair):
            gc.collect()
            t = r(n)
            best[i] = t if best[i] is None else min(best[i], t)
    return best


# --------------------------------------------------------------------------- the child node


def child():
    """A node that is its own seed, with an echo port registered as ``bench_aio_echo``."""
    from aemp_green import configure, db_set, port, run_forever, snd

    addr = sys.stdin.readline().strip()
    configure(nodeid="bench-aio-remote", binds=[addr], seeds=[addr], secret=SECRET, norc=True)
    db_set("bench_aio_echo", port(lambda tag, x, reply: snd(reply, x)))
    print("ready", flush=True)
    run_forever()


def free_addr():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


# --------------------------------------------------------------------------- workloads


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="divide every count by 10")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child()
        return 0
    div = 10 if args.quick else 1

    import aemp_green
    from aemp_green import threaded

    remote_addr = free_addr()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    proc.stdin.write(remote_addr + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ready"
    bridge = threaded.start(
        nodeid="bench-aio/%u", binds=["127.0.0.1:*"], seeds=[remote_addr], secret=SECRET, norc=True
    )
    try:
        echo = bridge.port(lambda tag, x, reply: aemp_green.snd(reply, x))
        (remote_echo,) = bridge.db_keys("bench_aio_echo", timeout=10)
        bridge.call(remote_echo, "e", 0, timeout=10)  # the link is up before anything is timed
        loop = asyncio.new_event_loop()
        node = loop.run_until_complete(_attach(bridge))

        def report(workload, n, runs, unit, baseline=None, baseline_run=None):
            if baseline_run is None:
                seconds, baseline_seconds = best_of(runs, n), None
            else:
                seconds, baseline_seconds = best_pair(runs, baseline_run, n)
            line = {"workload": workload, "value": round(n / seconds, 1), "unit": unit, "n": n}
            if baseline is not None:
                line.update(
                    baseline=baseline,
                    baseline_value=round(n / baseline_seconds, 1),
                    ratio=round(baseline_seconds / seconds, 3),
                )
            emit(**line)

        def aio_calls(target, tasks=1):
            def run(n):
                async def one(k):
                    for i in range(k):
                        await node.call(target, "e", i, timeout=30)

                async def all_():
                    t = time.perf_counter()
                    await asyncio.gather(*(one(n // tasks) for _ in range(tasks)))
                    return time.perf_counter() - t

                return loop.run_until_complete(all_())

            return run

        def threaded_calls(target, threads=1):
            def run(n):
                def one(k):
                    for i in range(k):
                        bridge.call(target, "e", i, timeout=30)

                ts = [threading.Thread(target=one, args=(n // threads,)) for _ in range(threads)]
                t = time.perf_counter()
                for th in ts:
                    th.start()
                for th in ts:
                    th.join()
                return time.perf_counter() - t

            return run

        def asyncio_queue_calls(n):
            async def go():
                q = asyncio.Queue()

                async def server():
                    while True:
                        x, fut = await q.get()
                        fut.set_result([x])

                srv = asyncio.ensure_future(server())
                lp = asyncio.get_running_loop()
                t = time.perf_counter()
                for i in range(n):
                    fut = lp.create_future()
                    q.put_nowait((i, fut))
                    await fut
                took = time.perf_counter() - t
                srv.cancel()
                return took

            return loop.run_until_complete(go())

        def aio_receive(n):
            async def go():
                p = await node.port()

                def flood(to):
                    for i in range(n):
                        aemp_green.snd(to, "m", i)

                t = time.perf_counter()
                bridge.submit(flood, p.id)
                for _ in range(n):
                    await p.receive()
                took = time.perf_counter() - t
                p.close()
                return took

            return loop.run_until_complete(go())

        def threaded_inbox(n):
            inbox = bridge.inbox()

            def flood(to):
                for i in range(n):
                    aemp_green.snd(to, "m", i)

            t = time.perf_counter()
            bridge.submit(flood, inbox.id)
            for _ in range(n):
                inbox.receive()
            took = time.perf_counter() - t
            inbox.close()
            return took

        n = 20_000 // div
        report(
            "aio_call",
            n,
            aio_calls(echo),
            "calls/s",
            "threaded_call",
            threaded_calls(echo),
        )
        n = 50_000 // div
        report(
            "aio_call_100_tasks",
            n,
            aio_calls(echo, 100),
            "calls/s",
            "threaded_call_8_threads",
            threaded_calls(echo, 8),
        )
        n = 100_000 // div
        report("asyncio_queue_call", n, asyncio_queue_calls, "calls/s")
        n = 200_000 // div
        report(
            "aio_receive",
            n,
            aio_receive,
            "msgs/s",
            "threaded_inbox",
            threaded_inbox,
        )
        n = 10_000 // div
        report(
            "aio_call_remote",
            n,
            aio_calls(remote_echo),
            "calls/s",
            "threaded_call_remote",
            threaded_calls(remote_echo),
        )
        loop.close()
    finally:
        bridge.stop()
        proc.terminate()
        proc.wait(10)
    return 0


async def _attach(bridge):
    from aemp_green import aio

    return aio.attach(bridge)


if __name__ == "__main__":
    sys.exit(main())
