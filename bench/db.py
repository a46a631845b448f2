"""Benchmarks of the shared database across processes on 127.0.0.1.

Run ``python bench/db.py [--quick]``. Each workload prints one JSON line::

    {"workload": ..., "value": ..., "unit": ..., "n": ..., <extras>}

Processes
    This process is only the conductor: it never configures a node. It starts a seed
    (``bench-seed``, fixed free port, seeds = itself, so it is the global node) and three nodes
    (``bench-n1`` .. ``bench-n3``, seeds = the seed) as child processes with the test harness
    (``tests/child.py`` through ``tests/netutil.ChildNode``), and drives them with snippets.

Workloads
    * ``db_set_to_db_mon_latency``: node 1 ``db_set("lat", "k", [i, t0])`` with ``t0`` its
      ``time.monotonic()`` (CLOCK_MONOTONIC, system-wide on Linux, so comparable across the
      processes) just before the call; node 2's ``db_mon`` callback takes
      ``monotonic() - t0`` and then acknowledges to a port on node 1, which only then does the
      next ``db_set``: one update in flight at a time. The path is node 1 -> ``g_upd`` -> seed
      -> ``g_chg2`` -> node 2. N = 1000 (``--quick``: 100) after 50 warm-up rounds; p50, p90,
      p99, max and mean in ms.
    * ``registrations_per_second``: nodes 1-3 each ``db_set`` N = 5000 (``--quick``: 500)
      distinct keys into the family ``tput``, in a tight loop, all starting at the same
      monotonic instant; a ``db_mon`` watcher on the seed (the fourth vantage point, where the
      merged database lives) notes when it has seen all 3N keys. ``value`` = 3N / (that
      moment - start). Run ``--runs`` times (3), a fresh family each time; the best run is
      ``value``, every run is in ``runs`` (with each node's time in its own ``db_set`` loop).

Safety
    Children are stopped in a ``finally`` (stdin closed, then SIGKILL), every wait has a
    deadline, and the whole run has one (``--deadline``, default 300 s, through ``SIGALRM``).
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from netutil import ChildNode, free_port, stop_children  # noqa: E402

SECRET = "bench-db-secret-0123456789"


def _emit(**kv):
    print(json.dumps(kv), flush=True)


def _percentiles(values):
    s = sorted(values)

    def pct(q):
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]

    return {
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": s[-1],
        "mean": sum(s) / len(s),
    }


class _Deadline(Exception):
    pass


def _alarm(signum, frame):
    raise _Deadline("overall deadline reached")


LATENCY_NODE1 = """
def _lat_driver(n, warm):
    receive("go", timeout=30)
    for i in range(warm + n):
        db_set("lat", "k", [i, time.monotonic()])
        (j,) = receive("ack", timeout=10)
        assert j == i, (j, i)
    emit("lat_sent", n)

LAT_PORT = None
def _lat_start(n, warm):
    global LAT_PORT
    LAT_PORT = spawn(_lat_driver, n, warm)
    return LAT_PORT
"""

LATENCY_NODE2 = """
LAT = []
LAT_STATE = {"ack": None, "warm": 0, "n": 0, "first_call": False}
def _lat_cb(db, added, changed=None, deleted=None):
    LAT_STATE["first_call"] = True
    v = db.get("k")
    if not v or LAT_STATE["ack"] is None:
        return
    i, t0 = v
    dt = time.monotonic() - t0
    if i >= LAT_STATE["warm"]:
        LAT.append(dt)
    snd(LAT_STATE["ack"], "ack", i)
    if i == LAT_STATE["warm"] + LAT_STATE["n"] - 1:
        emit("lat_done", LAT)
"""

TPUT_SEED = """
def _tp_watch(family, want):
    state = {"done": False}
    def cb(db, added, changed=None, deleted=None):
        if not state["done"] and len(db) >= want:
            state["done"] = True
            emit("tp_seen", family, time.monotonic(), len(db))
    return db_mon(family, cb)
"""

TPUT_NODE = """
def _tp_run(name, family, n, start_at):
    gevent.sleep(max(0.0, start_at - time.monotonic()))
    t0 = time.monotonic()
    for i in range(n):
        db_set(family, "%s-%d" % (name, i), i)
        if i % 500 == 499:
            gevent.sleep(0)  # let the link writer run; a real application yields too
    emit("tp_loop", t0, time.monotonic())
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="divide every count by 10")
    ap.add_argument("--deadline", type=float, default=300.0, help="overall limit in seconds")
    ap.add_argument("--only", default="latency,tput", help="comma list: latency,tput")
    ap.add_argument(
        "--runs",
        type=int,
        default=3,
        help="registration runs (a fresh family each); the best counts",
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    n_lat = 100 if args.quick else 1000
    n_tp = 500 if args.quick else 5000

    os.environ["AEMP_TEST_LOG"] = "WARNING"
    log_dir = tempfile.mkdtemp(prefix="bench-db-")
    children = []
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(args.deadline))
    ok = False
    try:
        seed_addr = "127.0.0.1:%d" % free_port()
        seed = ChildNode(
            log_dir,
            "bench-seed",
            _wait=False,
            nodeid="bench-seed",
            binds=[seed_addr],
            seeds=[seed_addr],
            secret=SECRET,
        )
        children.append(seed)
        nodes = []
        for i in (1, 2, 3):
            c = ChildNode(
                log_dir,
                "bench-n%d" % i,
                _wait=False,
                nodeid="bench-n%d" % i,
                seeds=[seed_addr],
                secret=SECRET,
            )
            children.append(c)
            nodes.append(c)
        for c in children:
            c.wait_ready()
        want = {c.nodeid: c.binds for c in children}
        for c in nodes:
            c.run("wait_for(lambda: aemp_green.globaldb.master() is not None, 15)", timeout=20)
        seed.run("wait_for(lambda: db_family(\"'l\", timeout=5) == %r, 15)" % (want,), timeout=20)
        n1, n2, n3 = nodes

        if "latency" in only:
            warm = 50
            n1.run(LATENCY_NODE1)
            n2.run(LATENCY_NODE2)
            lat_port = n1.ask("_lat_start(%d, %d)" % (n_lat, warm))
            # the watcher is installed (its first call came) and knows where to ack: go
            n2.run(
                "LAT_STATE.update(ack=%r, warm=%d, n=%d)\n"
                "LAT_W = db_mon('lat', _lat_cb)\n"
                "wait_for(lambda: LAT_STATE['first_call'], 10)" % (lat_port, warm, n_lat)
            )
            n1.run("snd(LAT_PORT, 'go')")
            lat = n2.expect("lat_done", timeout=max(60, n_lat * 0.05))[0]
            n1.expect("lat_sent", timeout=10)
            assert len(lat) == n_lat, (len(lat), n_lat)
            pc = {k: round(v * 1000, 3) for k, v in _percentiles(lat).items()}
            _emit(
                workload="db_set_to_db_mon_latency",
                value=pc["p50"],
                unit="ms",
                n=n_lat,
                warmup=warm,
                path="node1 -g_upd-> seed -g_chg2-> node2",
                **pc,
            )

        if "tput" in only:
            total = 3 * n_tp
            seed.run(TPUT_SEED)
            for c in nodes:
                c.run(TPUT_NODE)
            runs = []
            for r in range(args.runs):
                family = "tput%d" % r
                seed.run("TP_W%d = _tp_watch(%r, %d)" % (r, family, total))
                start_at = n1.ask("time.monotonic()") + 0.3
                for c in nodes:
                    c.exec("_tp_run(%r, %r, %d, %r)" % (c.nodeid, family, n_tp, start_at))
                _, done, seen = seed.expect(
                    "tp_seen", timeout=max(60, total * 0.01), pred=lambda v, f=family: v[0] == f
                )
                loops = [c.expect("tp_loop", timeout=30) for c in nodes]
                runs.append(
                    {
                        "keys_per_s": round(total / (done - start_at), 1),
                        "seconds": round(done - start_at, 4),
                        "keys_seen": seen,
                        "per_node_loop_s": [round(b - a, 4) for a, b in loops],
                    }
                )
            best = max(runs, key=lambda x: x["keys_per_s"])
            _emit(
                workload="registrations_per_second",
                value=best["keys_per_s"],
                unit="keys/s",
                n=total,
                n_per_node=n_tp,
                nodes=3,
                watcher="seed db_mon",
                seconds=best["seconds"],
                runs=runs,
            )
        ok = True
    finally:
        signal.alarm(0)
        stop_children(children, timeout=5)
        if ok:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print("bench failed; child logs kept in %s" % log_dir, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
