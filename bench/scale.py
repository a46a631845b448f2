"""How aemp_green behaves as things grow: one function per series, real processes on 127.0.0.1.

Run ``python bench/scale.py [--series db] [--quick] [--out FILE]``. Each series prints one JSON
line per measured size and writes all of them to ``bench/results/scale-<series>.json`` (or
``--out``). ``--quick`` uses smaller sizes (a smoke run of about half a minute).

This process is only the conductor: it never configures a node. It starts child nodes with the
test harness (``tests/child.py`` through ``tests/netutil.ChildNode``) and drives them with
snippets.

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
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from netutil import Cluster, free_port  # noqa: E402


class _Deadline(Exception):
    pass


def _alarm(signum, frame):
    raise _Deadline("overall deadline reached")


def _rss(pid):
    """Resident set size of process ``pid`` in bytes (Linux ``/proc``)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for %d" % pid)


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
    kids = Cluster(log_dir)
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


SERIES = {"db": series_db}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--series", default="db", help="comma list of series to run (%s)" % ",".join(SERIES)
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
