"""A job pool: workers register in a family, a dispatcher hands out jobs and survives workers dying.

Run:  python examples/seed.py 127.0.0.1:4040 &           (or any seed from your rc file)
      python examples/jobpool.py worker &                  (start several, on any hosts)
      python examples/jobpool.py worker --delay 2 &
      python examples/jobpool.py dispatcher 20             (hand out 20 jobs, wait for all)

A worker is a greenlet port that registers itself in the family ``jobpool_workers`` with
``db_reg`` (the entry goes away when the port dies) and then loops on ``receive("job")``.
The dispatcher watches the family with ``db_mon``, monitors every worker it finds and gives
each idle worker one job at a time. When a worker dies — killed, crashed, its host gone — the
monitor fires and the job it was working on goes back to the front of the queue for the next
idle worker: kill workers while the dispatcher runs, start new ones, every job still gets
done exactly once. The job here is a stand-in: the sum of the squares below ``n``, after
sleeping ``--delay`` seconds to look busy.

Options: ``worker --delay SECONDS`` (default 0.5); ``dispatcher [JOBS] --min-workers N``
(wait for N workers before starting, default 1). With ``AEMP_DEMO_SEED``/``AEMP_DEMO_SECRET``
set it uses that seed and secret.
"""

import argparse
import os
import sys
from collections import deque

import gevent
from gevent.event import AsyncResult

from aemp_green import SELF, configure, db_mon, db_reg, mon, receive, run_forever, snd, spawn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _demo_env import demo_config  # noqa: E402

FAMILY = "jobpool_workers"


def say(text):
    print(text, flush=True)


def work(n):
    """The job: the sum of the squares below ``n``."""
    return sum(i * i for i in range(n))


def worker(delay):
    """A worker port: registered in the family while it lives, one job at a time."""
    db_reg(FAMILY)
    me = SELF()
    say("worker %s: ready" % me)
    while True:
        job, n, reply = receive("job")
        say("worker %s: working on job %d" % (me, job))
        gevent.sleep(delay)
        snd(reply, "result", me, job, work(n))


def dispatcher(jobs, min_workers):
    """Hand out ``jobs`` (a list of ``(job, n)``) to workers; return ``{job: result}``."""
    me = SELF()
    pending = deque(jobs)
    idle = deque()  # workers waiting for a job
    busy = {}  # worker -> (job, n)
    known = set()
    results = {}
    started = min_workers <= 0
    db_mon(FAMILY, lambda db, added, changed, deleted: snd(me, "workers", list(added)))
    while len(results) < len(jobs):
        msg = receive()
        tag = msg[0]
        if tag == "workers":
            for w in msg[1]:
                if w not in known:
                    known.add(w)
                    mon(w, me, "died", w)  # ["died", w, *reason] when it goes
                    idle.append(w)
                    say("dispatcher: worker %s joined (%d known)" % (w, len(known)))
        elif tag == "died":
            w, reason = msg[1], msg[2:]
            known.discard(w)
            if w in idle:
                idle.remove(w)
            job = busy.pop(w, None)
            say("dispatcher: worker %s died (%s)" % (w, " ".join(map(str, reason)) or "exit"))
            if job is not None and job[0] not in results:
                say("dispatcher: re-queueing job %d" % job[0])
                pending.appendleft(job)
        elif tag == "result":
            w, job, value = msg[1:4]
            if busy.get(w, (None,))[0] == job:
                del busy[w]
                idle.append(w)
            if job not in results:
                results[job] = value
                say("dispatcher: job %d -> %d (worker %s)" % (job, value, w))
        if not started:
            if len(known) < min_workers:
                continue
            started = True
            say("dispatcher: %d workers, starting %d jobs" % (len(known), len(jobs)))
        while pending and idle:
            w = idle.popleft()
            job = pending.popleft()
            busy[w] = job
            snd(w, "job", job[0], job[1], me)
    say("dispatcher: all %d jobs done" % len(jobs))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description="AEMP job pool example")
    sub = ap.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--delay", type=float, default=0.5)
    d = sub.add_parser("dispatcher")
    d.add_argument("jobs", type=int, nargs="?", default=10)
    d.add_argument("--min-workers", type=int, default=1)
    args = ap.parse_args(argv)

    configure(**demo_config(nodeid="jobpool_%s/%%u" % args.role))
    if args.role == "worker":
        spawn(worker, args.delay)
        run_forever()  # until Ctrl-C or SIGTERM, then a clean shutdown
        return 0
    jobs = [(i, 1000 + i) for i in range(args.jobs)]
    finished = AsyncResult()
    d = spawn(dispatcher, jobs, args.min_workers)
    mon(d, lambda *reason: finished.set(reason))
    reason = finished.get()
    if reason:
        say("dispatcher: crashed: %s" % (reason,))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
