"""One process of the soak test (``bench/soak.py``): the seed or a worker node.

Run by the conductor as ``python bench/_soak_node.py '<json config>'``, not by hand.
It prints one JSON object per line on stdout (``{"ev": ..., "t": <CLOCK_MONOTONIC>, ...}``),
reads commands (one JSON object per line) on stdin and exits when stdin closes (the conductor
is gone or done). ``signal.alarm(deadline)`` is the last resort. Logging goes to stderr (the
conductor sends it to a log file per process).

Config keys: ``role`` (``seed`` | ``worker``), ``nodeid``, ``seed`` (the seed's address),
``workers`` (how many worker nodes the soak runs), ``secret``, ``window``, ``burst``,
``ack_every``, ``stats_every``, ``fin_timeout``, ``restart_delay``, ``deadline``, ``log``
(logging level name).

Worker
    * **Receiver**: one callback port, registered with ``db_reg("soak", port, pid)``. Every
      message is ``("seq", inc, n)``: ``inc`` names the stream (it is the sender's ack port ID,
      so it is unique across restarts) and ``n`` counts 1, 2, 3, ... in it. Per stream the
      receiver keeps ``[last, count, gaps, backwards]`` and checks each ``n`` inline: ``n ==
      last + 1`` is the normal case; ``n <= last`` is a duplicate or a reordering (event
      ``backwards``, always a violation); ``n > last + 1`` is a hole (event ``gap``; the
      conductor decides whether a fired monitor covers it). The first message of a stream
      emits ``first``. It acknowledges every ``ack_every``-th number (``("ack", n)`` to
      ``inc``) and answers ``("fin", inc, n)`` with ``("finack", last)``.
    * **Senders**: ``db_mon("soak")`` watches the family; for every receiver port of another
      node a stream greenlet sends ``("seq", inc, n)`` with at most ``window`` unacknowledged
      numbers in flight (bursts of ``burst``, then a yield), and keeps ``mon(receiver)``. The
      monitor callback records the last ``n`` sent before it ran (event ``fired``, emitted
      synchronously in the callback) and the stream stops at once: nothing is sent in that
      stream after its monitor fired. ``restart_delay`` seconds later a NEW stream (new ack
      port, numbering from 1) starts to that port if the database still lists it; a receiver
      that came back after a restart has a new port, which ``db_mon`` reports as added.
    * On ``{"cmd": "stop"}`` every stream stops sending, sends ``fin`` and waits (up to
      ``fin_timeout``) for the ``finack`` or its monitor; each stream emits ``stream_end``
      (``sent``, ``finacked``, ``fired``, ``fire_n``), then the worker emits ``stopped``. On
      ``{"cmd": "report"}`` it emits ``report``: its receiver's per-stream table.

Both roles emit ``stats`` every ``stats_every`` seconds: messages received and sent, streams,
the number of greenlet objects (``gc.get_objects()``) of the node's own thread before and
after a ``gc.collect()``, less the three of each link that is up (``greenlets_all`` counts
them too), and those of gevent's threadpool threads,
then VmRSS (``/proc/self/status``), the size of the port table, the links up and ``full``
(linked to every other node and, for a worker, streaming to every other worker: the steady
state between restarts). On ``{"cmd": "census"}``
a process emits ``census``: its greenlets counted by what they run (diagnostics).
"""

import gc
import json
import logging
import os
import signal
import sys
import time

import gevent
from gevent.event import Event
from gevent.fileobject import FileObjectPosix
from gevent.threadpool import _WorkerGreenlet
from greenlet import getcurrent, greenlet

import aemp_green
from aemp_green import NODE, db_mon, db_reg, kil, mon, node_of, port, rcv, snd
from aemp_green import kernel as _kernel
from aemp_green import node as _node

PID = os.getpid()
FAMILY = "soak"
CFG = {}


def emit(ev, **kv):
    kv["ev"] = ev
    kv["t"] = round(time.monotonic(), 4)  # CLOCK_MONOTONIC: comparable across processes
    sys.stdout.write(json.dumps(kv, default=repr) + "\n")
    sys.stdout.flush()


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # pragma: no cover


def _main_greenlet():
    g = getcurrent()
    while g.parent is not None:
        g = g.parent
    return g


MAIN_GREENLET = _main_greenlet()


def _other_thread(o):
    """gevent's threadpool: a worker greenlet, or the main greenlet of another thread."""
    return isinstance(o, _WorkerGreenlet) or (o.parent is None and o is not MAIN_GREENLET)


def greenlet_count():
    """(greenlets of this node's thread, greenlets of gevent's threadpool threads)."""
    ours = pool = 0
    for o in gc.get_objects():
        if isinstance(o, greenlet):
            if _other_thread(o):
                pool += 1
            else:
                ours += 1
    return ours, pool


def greenlet_census():
    """Diagnostics: what the live greenlets run, counted by description."""
    gc.collect()
    census = {}
    for o in gc.get_objects():
        if isinstance(o, greenlet):
            run = getattr(o, "_run", None) or getattr(o, "run", None)
            what = "%s %s%s" % (
                type(o).__name__,
                getattr(run, "__qualname__", repr(run)),
                " dead" if o.dead else "",
            )
            census[what] = census.get(what, 0) + 1
    return census


# =========================================================================== receiver


class Receiver:
    def __init__(self):
        self.streams = {}  # inc -> [last, count, gaps, backwards]
        self.total = 0
        self.ack_every = int(CFG["ack_every"])
        self.port = port()
        rcv(self.port, "seq", self.on_seq, "fin", self.on_fin)

    def on_seq(self, inc, n):
        self.total += 1
        s = self.streams.get(inc)
        if s is None:
            s = self.streams[inc] = [0, 0, 0, 0]
            emit("first", inc=inc, rx=self.port, n=n)
        last = s[0]
        s[1] += 1
        if n == last + 1:
            s[0] = n
            if n % self.ack_every == 0:
                snd(inc, "ack", n)
            return
        if n <= last:
            s[3] += 1
            emit("backwards", inc=inc, rx=self.port, last=last, got=n)
            return
        s[2] += 1
        emit("gap", inc=inc, rx=self.port, last=last, got=n)
        s[0] = n
        if n // self.ack_every != last // self.ack_every:
            snd(inc, "ack", n)

    def on_fin(self, inc, n):
        s = self.streams.get(inc)
        snd(inc, "finack", s[0] if s else 0)


# =========================================================================== senders


class Stream:
    """One numbered stream to one receiver port; ``inc`` (its ack port ID) names it."""

    def __init__(self, worker, to):
        self.worker = worker
        self.to = to
        self.n = 0
        self.acked = 0
        self.fired = None  # the monitor's reason, once it fired
        self.fire_n = None  # the last n sent before the monitor fired
        self.finacked = None
        self.ev = Event()
        self.inc = port()
        rcv(self.inc, "ack", self.on_ack, "finack", self.on_finack)

    def on_ack(self, n):
        if n > self.acked:
            self.acked = n
            self.ev.set()

    def on_finack(self, last):
        self.finacked = last
        self.ev.set()

    def on_fired(self, *reason):
        if self.fired is None:
            self.fired = list(reason)
            self.fire_n = self.n
            emit("fired", inc=self.inc, to=self.to, n=self.n, acked=self.acked, reason=self.fired)
            self.ev.set()

    def run(self):
        w = self.worker
        window, burst = int(CFG["window"]), int(CFG["burst"])
        to, inc = self.to, self.inc
        emit("stream", inc=inc, to=to)
        g = mon(to, self.on_fired)  # kept: the monitor lasts as long as this stream runs
        try:
            while self.fired is None and not w.stopping:
                room = window - (self.n - self.acked)
                if room <= 0:
                    self.ev.clear()
                    if self.fired is None and not w.stopping and self.n - self.acked >= window:
                        self.ev.wait(1.0)
                    continue
                before = self.n
                for _ in range(min(room, burst)):
                    if self.fired is not None:
                        break
                    self.n += 1
                    snd(to, "seq", inc, self.n)
                w.sent += self.n - before
                gevent.sleep(0)
            if self.fired is None:  # stopping: make sure everything arrived (or the monitor fires)
                snd(to, "fin", inc, self.n)
                deadline = time.monotonic() + float(CFG["fin_timeout"])
                while self.finacked is None and self.fired is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.ev.clear()
                    if self.finacked is None and self.fired is None:
                        self.ev.wait(left)
            emit(
                "stream_end",
                inc=inc,
                to=to,
                sent=self.n,
                acked=self.acked,
                finacked=self.finacked,
                fired=self.fired,
                fire_n=self.fire_n,
            )
        finally:
            g.cancel()
            kil(inc)
            w.stream_done(self)


class Worker:
    def __init__(self):
        self.stopping = False
        self.sent = 0
        self.out = {}  # receiver port -> running Stream
        self.greenlets = {}  # receiver port -> its greenlet
        self.family = {}  # the live copy db_mon hands us
        self.rx = Receiver()
        db_reg(FAMILY, self.rx.port, PID)
        emit("reg", port=self.rx.port, node=NODE(), pid=PID)
        self.mon_guard = db_mon(FAMILY, self.on_family)

    def on_family(self, db, added, changed, deleted):
        # a db_mon callback: runs synchronously and must not block, so it only spawns
        self.family = db
        for p in added:
            self.maybe_start(p)

    def maybe_start(self, p):
        if self.stopping or p in self.out or p not in self.family:
            return
        if node_of(p) == NODE():
            return
        s = self.out[p] = Stream(self, p)
        self.greenlets[p] = gevent.spawn(s.run)

    def stream_done(self, s):
        if self.out.get(s.to) is s:
            del self.out[s.to]
            self.greenlets.pop(s.to, None)
        if s.fired is not None and not self.stopping:
            gevent.spawn_later(float(CFG["restart_delay"]), self.maybe_start, s.to)

    def stop(self):
        self.stopping = True
        for s in list(self.out.values()):
            s.ev.set()
        gevent.joinall(list(self.greenlets.values()), timeout=float(CFG["fin_timeout"]) + 5)
        emit("stopped", streams=len(self.out), sent=self.sent)

    def report(self):
        emit(
            "report",
            rx=self.rx.port,
            total=self.rx.total,
            streams=self.rx.streams,
            family=sorted(self.family),
            out=sorted(self.out),
        )


# =========================================================================== main


def stats_loop(worker):
    every = float(CFG["stats_every"])
    while True:
        # greenlet objects, then again after a full collection: closed links are cyclic
        # garbage until the cyclic GC runs, which is not a leak; the growth check uses the
        # count after gc.collect() (live greenlets), the first count is diagnostics. Greenlets
        # of gevent's threadpool threads (started on demand, at most maxsize, never expire by
        # default) are counted apart: they are gevent's, bounded, and not the node's
        with_garbage = greenlet_count()[0]
        gc.collect()
        live, pool = greenlet_count()
        up = sum(1 for n in _node._nodes.values() if n.link is not None)
        extra = sum(len(n.extra_links) for n in _node._nodes.values())
        # every link runs two greenlets (reader, writer); a simultaneous connect
        # legitimately leaves a pair with two links (liveness is judged over both), so the
        # growth check counts the greenlets besides those of the links that are up: a leak
        # grows them, a second link to a peer does not
        per_links = 2 * (up + extra)
        kv = dict(
            rss_kb=rss_kb(),
            greenlets=live - per_links,
            greenlets_all=live,
            greenlets_with_garbage=with_garbage - per_links,
            threadpool_greenlets=pool,
            ports=len(_kernel.port_table),
            links=up,
            extra_links=extra,
        )
        # "full": connected to every other node (and, for a worker, streaming to every other
        # worker): the steady state between restarts, which the stability check compares
        n_workers = int(CFG["workers"])
        if worker is not None:
            kv.update(
                rx=worker.rx.total,
                tx=worker.sent,
                out=len(worker.out),
                in_streams=len(worker.rx.streams),
                full=up >= n_workers and len(worker.out) >= n_workers - 1,
            )
        else:
            kv.update(full=up >= n_workers)
        emit("stats", **kv)
        gevent.sleep(every)


def main():
    global CFG
    CFG = json.loads(sys.argv[1])
    signal.alarm(int(CFG["deadline"]))  # last resort: SIGALRM's default action ends us
    logging.basicConfig(
        level=getattr(logging, CFG.get("log", "WARNING")),
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    role = CFG["role"]
    seed = CFG["seed"]
    kw = dict(nodeid=CFG["nodeid"], seeds=[seed], secret=CFG["secret"], norc=True)
    kw["binds"] = [seed] if role == "seed" else ["127.0.0.1:*"]
    aemp_green.configure(**kw)
    emit("ready", role=role, node=NODE(), pid=PID)
    worker = Worker() if role == "worker" else None
    gevent.spawn(stats_loop, worker)
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb")
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line).get("cmd")
        if cmd == "census":
            emit("census", greenlets=greenlet_census())
        elif worker is None:
            continue
        elif cmd == "stop":
            gevent.spawn(worker.stop)
        elif cmd == "report":
            worker.report()
    # stdin closed: the conductor is done with us
    try:
        aemp_green.shutdown()
    finally:
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
