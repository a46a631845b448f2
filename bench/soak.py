"""Soak test: numbered floods between node processes while workers are SIGKILLed and restarted.

Run ``python bench/soak.py --minutes 10`` (long mode) or ``python bench/soak.py --seconds 20``
(short mode, what ``tests/test_soak.py`` runs). Every line on stdout is one JSON object with an
``event`` key; the last one is ``{"event": "summary", "pass": true|false, ...}`` and the exit
status is 0 only when it passed.

Processes
    This process is only the conductor: it never configures a node. It starts a seed (node ID
    ``soak-seed``, a fixed free port, seeds = itself, so it is the global node keeping the
    database) and ``--workers`` N (3) workers with fixed node IDs ``w1`` .. ``wN`` (seeds =
    the seed), each ``bench/_soak_node.py`` with a JSON config; they print JSON lines on
    stdout and take commands on stdin (see that file). A restarted worker keeps its node ID
    (so its peers' ``RemoteNode`` for it is reused) but has a new listener port, a new pid and
    a new receiver port.

Traffic
    Every worker registers one receiver port in the family ``soak`` (``db_reg``) and watches
    the family (``db_mon``). For every other worker's receiver it runs a stream: a greenlet
    sending ``("seq", inc, n)`` with n = 1, 2, 3, ... where ``inc`` (the stream's incarnation)
    is the ID of a fresh ack port of the sender. Flow control is a window: at most
    ``--window`` (4096) numbers unacknowledged, the receiver acknowledges every
    ``--ack-every`` (256)-th, so queues stay bounded whatever the CPU does. The sender keeps
    ``mon(receiver)``; when it fires the stream stops at once (records the last n sent,
    event ``fired``) and, ``restart_delay`` later, a NEW stream (new ``inc``, numbering from 1)
    starts to that receiver if the database still lists it. A restarted receiver registers a
    new port, which every peer's ``db_mon`` reports, and new streams start to it.

Kills
    The seed and the first ``--exempt`` (1) workers are never killed: the seed is the only
    global node (killing it tests master fail-over, which needs a second seed and is not what
    this soak is about), and the never-killed processes are the ones whose memory and greenlets
    are watched. After the whole mesh is up, every ``--kill-every`` (3 s, jittered +-25%)
    seconds a random killable worker whose current process has fully (re)joined the mesh (it
    received a stream from every other worker and every other worker received one from it)
    gets SIGKILL and is restarted at once with the same node ID. Kills stop ``settle``
    (max(3 s, kill interval, sample window + 1 s)) before the end. A kill is *survived* when
    the restarted process fully rejoins the mesh; every kill must be survived.

Checks (all at the receivers, joined with the senders' events by the conductor)
    * no duplicates, no reordering: within a stream every n must be greater than the last one
      (otherwise event ``backwards``: a violation);
    * no holes: a stream that resumes after a gap (n > last + 1, also a stream whose first
      message is not 1) is a violation ("there are never holes in the sequence",
      docs/api.md#monitoring): a loss may only be a suffix, covered by a monitor (next point). Holes
      are reported as ``hole_without_monitor``, or ``hole_after_monitor_fired`` when the sender's
      monitor for that stream did fire after the first missing number was sent
      (``fire_n >= last + 1``; the sender sends nothing in a stream after its monitor fired, so the
      delivered numbers were sent before that). The soak found the latter (frames sent after a link
      broke but before the monitor callbacks ran went out on the next link), fixed in
      ``node.RemoteNode``; ``tests/test_soak.py`` holds its deterministic regression test;
    * every lost suffix is covered by a monitor: at the end every running stream sends
      ``fin`` and gets ``finack`` with the receiver's last number, which must equal the last
      number sent, unless its monitor fired (loss explained by the monitor) or its sender was
      killed (stream ended by the sender's death). A stream to a killed receiver whose monitor
      never fires would end without a ``finack``: a violation. Received numbers may never
      exceed the number the sender had sent when its monitor fired;
    * the mesh is complete at the end (every worker's current process streams to every other
      one's current receiver);
    * stability of the never-killed processes (seed and exempt workers): VmRSS and the number
      of live greenlets of the node's thread (counted after a ``gc.collect()``: a closed link
      and its greenlets are cyclic garbage until the cyclic GC runs; gevent's threadpool
      threads, bounded and started on demand, are counted apart). Only *steady* samples are
      compared: those taken while the process was linked to every other node and (a worker)
      streaming to every other worker, because while a peer restarts its link and stream
      greenlets are legitimately missing. The median of the steady samples in a window after
      the warm-up (``--warmup``, default 30% of the run, at most 60 s; window 10% of the run,
      2..30 s; if it holds fewer than 3, the first 3 after the warm-up, if there are none
      the last 3 before it) against the median of those in the last window of the calm
      phase (from the moment the last restarted worker rejoined to the stop, which waits for
      at least 3 of them): growth < 10%.

Output (one JSON line each)
    ``start`` (the parameters), ``mesh`` (initial mesh up), ``kill`` / ``rejoined`` per kill,
    ``progress`` every ``--progress`` seconds, then ``messages`` (messages moved: the
    receivers' counts; for killed processes up to their last stats line, so a lower bound),
    ``losses`` (gaps and streams ended by monitors, with reasons, the messages lost that the
    final receiver tables prove and the messages unacknowledged when monitors fired: an upper
    bound of what was lost to killed receivers), ``violations``, ``stability`` (per
    never-killed process: baseline and end medians, growth %, a thinned series of samples
    ``[t, rss_kb, greenlets, steady]``, a greenlet census diff), ``summary``. ``--events
    FILE`` also writes every line of every process there.

Safety
    Children are closed in a ``finally`` (stdin closed, then SIGKILL) and exit by themselves
    when their stdin closes; each also arms ``alarm()``. The whole run has a hard deadline
    (``--deadline``, default the duration + 120 s, through ``SIGALRM``). Logs of every
    process go to ``--log-dir`` (a temporary directory, deleted after a passing run unless
    ``--keep-logs``).
"""

import argparse
import json
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NODE_SCRIPT = os.path.join(HERE, "_soak_node.py")
SEED_ID = "soak-seed"
GROWTH_LIMIT = 10.0  # percent


def out(event, **kv):
    print(json.dumps(dict(event=event, **kv), default=repr), flush=True)


def mono():
    return time.monotonic()  # CLOCK_MONOTONIC, the clock the nodes stamp their lines with


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_of(port):
    return port.partition("#")[0]


class Deadline(Exception):
    pass


LOSS_KEYS = (
    "gaps_observed",
    "gaps_covered_by_monitors",
    "streams_ended_by_monitor",
    "monitor_reasons",
    "monitors_fired_receiver_alive_at_end",
    "messages_lost_proven_and_explained",
    "messages_unacked_when_monitors_fired",
    "streams_ended_by_sender_death",
    "losses_explained",
)


def judge(streams, fired, gaps, backwards, port_owner):
    """The verdict on every stream: counts and a list of violations (a pure function).

    ``streams``: inc -> ``{"sender": proc, "to": receiver port, "end": stream_end event or
    None}``; ``fired``: inc -> ``fired`` event (``n``: last number sent before the monitor
    fired, ``acked``, ``reason``); ``gaps``/``backwards``: ``(receiver proc, event)`` lists;
    ``port_owner``: receiver port -> proc. A proc has ``name``, ``killed_at`` (None if never
    killed) and ``report`` (its final ``report`` event, None if it has none).
    """
    viol = []
    for rx, o in backwards:
        viol.append(
            dict(
                kind="duplicate_or_reordered",
                receiver=rx.name,
                inc=o["inc"],
                last=o["last"],
                got=o["got"],
            )
        )
    gaps_covered = 0
    for rx, o in gaps:
        # a hole: numbers missing and a later one of the same stream delivered. Never allowed
        # ("there are never holes in the sequence"); told apart by whether the sender's monitor
        # fired after the first missing number was sent (and before the delivered one: the
        # sender sends nothing more in a stream once its monitor fired)
        f = fired.get(o["inc"])
        covered = f is not None and o["last"] + 1 <= f["n"] and o["got"] <= f["n"]
        gaps_covered += covered
        viol.append(
            dict(
                kind="hole_after_monitor_fired" if covered else "hole_without_monitor",
                receiver=rx.name,
                inc=o["inc"],
                last=o["last"],
                got=o["got"],
                fire_n=None if f is None else f["n"],
                fire_reason=None if f is None else f["reason"],
            )
        )
    completed = by_monitor = by_sender_death = 0
    reasons = {}
    lost_proven = 0
    unacked_at_fire = 0  # at most this many messages were lost in streams ended by monitors
    fired_receiver_alive = 0
    for inc, s in streams.items():
        sender, end, f = s["sender"], s["end"], fired.get(inc)
        rx = port_owner.get(s["to"])
        rec = None
        if rx is not None and rx.report is not None:
            rec = rx.report["streams"].get(inc)
        last = rec[0] if rec else 0
        if f is not None:
            by_monitor += 1
            unacked_at_fire += f["n"] - f["acked"]
            why = f["reason"][0] if f["reason"] else "normal"
            reasons[why] = reasons.get(why, 0) + 1
            if rx is not None and rx.killed_at is None and rx.report is not None:
                fired_receiver_alive += 1
                lost_proven += max(0, f["n"] - last)
            if last > f["n"]:
                viol.append(dict(kind="received_beyond_fire", inc=inc, fire_n=f["n"], last=last))
        elif end is not None:
            if end["finacked"] is None or end["finacked"] != end["sent"]:
                viol.append(
                    dict(
                        kind="loss_without_monitor",
                        inc=inc,
                        to=s["to"],
                        sender=sender.name,
                        receiver=None if rx is None else rx.name,
                        receiver_killed=None if rx is None else rx.killed_at is not None,
                        sent=end["sent"],
                        finacked=end["finacked"],
                    )
                )
            elif rec is not None and last != end["sent"]:
                viol.append(dict(kind="report_mismatch", inc=inc, sent=end["sent"], last=last))
            else:
                completed += 1
        elif sender.killed_at is not None:
            by_sender_death += 1
        else:
            viol.append(dict(kind="stream_never_ended", inc=inc, sender=sender.name))
    return dict(
        violations=viol,
        completed_streams=completed,
        gaps_observed=len(gaps),
        gaps_covered_by_monitors=gaps_covered,
        streams_ended_by_monitor=by_monitor,
        monitor_reasons=reasons,
        monitors_fired_receiver_alive_at_end=fired_receiver_alive,
        messages_lost_proven_and_explained=lost_proven,
        messages_unacked_when_monitors_fired=unacked_at_fire,
        streams_ended_by_sender_death=by_sender_death,
        losses_explained=by_monitor,
    )


class Instance:
    """One process: one incarnation of the seed or of a worker."""

    def __init__(self, soak, role, nodeid, gen):
        self.role, self.nodeid, self.gen = role, nodeid, gen
        self.name = "%s.%d" % (nodeid, gen)
        cfg = dict(soak.node_cfg, role=role, nodeid=nodeid)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
        env.pop("PERL_ANYEVENT_MP_TRACE", None)
        self.log_path = os.path.join(soak.log_dir, "%s.log" % self.name)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", NODE_SCRIPT, json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                env=env,
            )
        self.pid = self.proc.pid
        self.started = mono()
        self.ready = False
        self.rx_port = None
        self.stats = []
        self.killed_at = None
        self.exited = False
        self.heard_from = set()  # worker nodes this process received a stream from
        self.heard_by = set()  # worker nodes that received a stream from this process
        self.meshed_at = None
        self.stopped = None
        self.report = None
        self.censuses = []  # greenlet census after the warm-up and at the end (diagnostics)
        threading.Thread(target=self._pump, args=(soak.q,), daemon=True).start()

    def _pump(self, q):
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = {"ev": "garbage", "text": raw.decode("utf-8", "replace")}
            q.put((self, obj))
        q.put((self, None))

    @property
    def alive(self):
        return self.proc.poll() is None

    def send(self, **cmd):
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass

    def kill(self):
        self.killed_at = mono()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self, timeout=3.0):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Soak:
    def __init__(self, args):
        self.args = args
        self.q = queue.Queue()
        self.rng = random.Random(args.random_seed)
        self.log_dir = args.log_dir or tempfile.mkdtemp(prefix="aemp-soak-")
        os.makedirs(self.log_dir, exist_ok=True)
        seed_addr = "127.0.0.1:%d" % free_port()
        self.node_cfg = dict(
            seed=seed_addr,
            secret=secrets.token_hex(16),
            window=args.window,
            burst=args.burst,
            ack_every=args.ack_every,
            stats_every=args.stats_every,
            fin_timeout=args.fin_timeout,
            restart_delay=args.restart_delay,
            workers=args.workers,
            deadline=int(args.deadline) + 60,
            log=args.node_log,
        )
        self.workers = ["w%d" % i for i in range(1, args.workers + 1)]
        self.killable = self.workers[args.exempt :]
        self.instances = []
        self.current = {}  # nodeid -> Instance
        self.gens = {}
        self.streams = {}  # inc -> {"sender": Instance, "to": port, "t": .., "end": obj|None}
        self.fired = {}  # inc -> the "fired" event
        self.port_owner = {}  # receiver port -> Instance
        self.pending_firsts = []  # (receiver Instance, inc) whose stream line was not seen yet
        self.gaps = []  # (receiver Instance, event)
        self.backwards = []
        self.kills = []
        self.errors = []
        self.closing = False
        self.t0 = self.t_end_kills = self.t_calm = self.t_stop = None
        self.max_turn = 0.0  # the conductor's longest loop turn (a stall of this machine?)
        self.events = open(args.events, "w") if args.events else None

    # ------------------------------------------------------------------ processes
    def start(self, role, nodeid):
        gen = self.gens[nodeid] = self.gens.get(nodeid, 0) + 1
        inst = Instance(self, role, nodeid, gen)
        self.instances.append(inst)
        self.current[nodeid] = inst
        return inst

    def close_all(self):
        self.closing = True
        for inst in self.instances:
            if inst.alive:
                try:
                    inst.proc.stdin.close()
                except OSError:
                    pass
        deadline = mono() + 5
        for inst in self.instances:
            try:
                inst.proc.wait(timeout=max(0.1, deadline - mono()))
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                inst.proc.wait(timeout=10)

    # ------------------------------------------------------------------ events
    def pump(self, timeout):
        """Handle every line that arrived, waiting up to ``timeout`` for the first one."""
        end = mono() + timeout
        while True:
            try:
                inst, obj = self.q.get(timeout=max(0.0, end - mono()))
            except queue.Empty:
                break
            self.handle(inst, obj)
            if mono() >= end and self.q.empty():
                break
        self.resolve_firsts()

    def handle(self, inst, obj):
        if self.events is not None:
            self.events.write("%s %s\n" % (inst.name, json.dumps(obj)))
        if obj is None:
            inst.exited = True
            if inst.killed_at is None and not self.closing:
                self.errors.append(
                    "%s (pid %d) exited by itself, rc=%s; log tail:\n%s"
                    % (inst.name, inst.pid, inst.proc.poll(), inst.log_tail())
                )
            return
        ev = obj.get("ev")
        if ev == "stats":
            inst.stats.append(obj)
        elif ev == "first":
            inst.heard_from.add(node_of(obj["inc"]))
            self.pending_firsts.append((inst, obj["inc"]))
        elif ev == "stream":
            self.streams[obj["inc"]] = {"sender": inst, "to": obj["to"], "t": obj["t"], "end": None}
        elif ev == "stream_end":
            s = self.streams.setdefault(
                obj["inc"], {"sender": inst, "to": obj["to"], "t": obj["t"], "end": None}
            )
            s["end"] = obj
        elif ev == "fired":
            self.fired[obj["inc"]] = obj
        elif ev == "gap":
            self.gaps.append((inst, obj))
        elif ev == "backwards":
            self.backwards.append((inst, obj))
        elif ev == "ready":
            inst.ready = True
        elif ev == "reg":
            inst.rx_port = obj["port"]
            self.port_owner[obj["port"]] = inst
        elif ev == "stopped":
            inst.stopped = obj
        elif ev == "report":
            inst.report = obj
        elif ev == "census":
            inst.censuses.append(obj["greenlets"])
        else:
            self.errors.append("%s: unexpected line %r" % (inst.name, obj))

    def resolve_firsts(self):
        left = []
        for rx, inc in self.pending_firsts:
            s = self.streams.get(inc)
            if s is None:
                left.append((rx, inc))
            else:
                s["sender"].heard_by.add(rx.nodeid)
        self.pending_firsts = left
        for nodeid in self.workers:
            inst = self.current.get(nodeid)
            if inst is None or inst.meshed_at is not None:
                continue
            others = set(self.workers) - {nodeid}
            if inst.heard_from >= others and inst.heard_by >= others:
                inst.meshed_at = mono()
                for k in self.kills:
                    if k["new"] is inst:
                        k["rejoined_after"] = round(inst.meshed_at - k["t"], 3)
                        out("rejoined", node=nodeid, pid=inst.pid, after_s=k["rejoined_after"])

    def mesh_complete(self):
        return all(self.current[w].meshed_at is not None for w in self.workers)

    def wait(self, pred, timeout, what):
        deadline = mono() + timeout
        while not pred():
            if self.errors:
                raise RuntimeError("while waiting for %s: %s" % (what, self.errors[0]))
            if mono() >= deadline:
                raise RuntimeError("no %s within %s s" % (what, timeout))
            self.pump(0.1)

    # ------------------------------------------------------------------ the run
    def run(self):
        a = self.args
        out(
            "start",
            duration_s=a.duration,
            workers=self.workers,
            killable=self.killable,
            kill_every_s=a.kill_every,
            window=a.window,
            ack_every=a.ack_every,
            warmup_s=a.warmup,
            random_seed=a.random_seed,
            log_dir=self.log_dir,
            pid=os.getpid(),
        )
        self.start("seed", SEED_ID)
        self.wait(lambda: self.current[SEED_ID].ready, 30, "seed ready")
        for w in self.workers:
            self.start("worker", w)
        self.wait(self.mesh_complete, 60, "the initial mesh")
        self.t0 = t0 = mono()
        out("mesh", after_s=round(t0 - self.instances[0].started, 3))
        end = t0 + a.duration
        settle = max(3.0, a.kill_every, a.window_s + 1.0)  # calm before the end window
        next_kill = t0 + a.kill_every * self.rng.uniform(0.75, 1.25)
        next_progress = t0 + a.progress
        census_due = t0 + a.warmup
        last_turn = mono()
        self.t_end_kills = end - settle
        while mono() < end:
            self.pump(min(0.1, max(0.0, end - mono())))
            self.max_turn = max(self.max_turn, mono() - last_turn)
            last_turn = mono()
            if self.errors:
                raise RuntimeError(self.errors[0])
            now = mono()
            if now >= next_kill and now < self.t_end_kills:
                victims = [
                    self.current[w] for w in self.killable if self.current[w].meshed_at is not None
                ]
                if victims:
                    self.kill_and_restart(self.rng.choice(victims))
                    next_kill = mono() + a.kill_every * self.rng.uniform(0.75, 1.25)
            if census_due is not None and now >= census_due:
                census_due = None
                for inst in self.never_killed():
                    inst.send(cmd="census")
            if now >= next_progress:
                next_progress = now + a.progress
                out(
                    "progress",
                    t=round(now - t0, 1),
                    moved=self.moved(),
                    kills=len(self.kills),
                    survived=self.survived(),
                    gaps=len(self.gaps),
                    backwards=len(self.backwards),
                    monitors_fired=len(self.fired),
                )
        # the last kill must have healed before we stop; then a calm phase that lasts until
        # the end and gives every never-killed process at least 3 steady samples
        self.wait(self.mesh_complete, 30, "the final mesh (every restarted worker rejoined)")
        self.t_calm = mono()
        self.wait(
            lambda: (
                mono() >= end
                and all(len(self.steady(i, self.t_calm)) >= 3 for i in self.never_killed())
            ),
            30,
            "3 steady samples of every never-killed process after the last kill",
        )
        self.t_stop = mono()
        for inst in self.never_killed():
            inst.send(cmd="census")
        self.wait(
            lambda: all(len(i.censuses) >= 2 for i in self.never_killed()),
            10,
            "the greenlet census",
        )
        for w in self.workers:
            self.current[w].send(cmd="stop")
        self.wait(
            lambda: all(self.current[w].stopped for w in self.workers),
            a.fin_timeout + 15,
            "every worker stopped",
        )
        for w in self.workers:
            self.current[w].send(cmd="report")
        self.wait(
            lambda: all(self.current[w].report for w in self.workers), 20, "every worker's report"
        )
        self.pump(0.2)
        return self.analyse()

    def kill_and_restart(self, victim):
        t = mono()
        victim.kill()
        new = self.start("worker", victim.nodeid)
        k = {"node": victim.nodeid, "pid": victim.pid, "t": t, "new": new, "rejoined_after": None}
        self.kills.append(k)
        out(
            "kill",
            n=len(self.kills),
            node=victim.nodeid,
            pid=victim.pid,
            new_pid=new.pid,
            t=round(t - self.t0, 2),
        )

    def moved(self):
        total = 0
        for inst in self.instances:
            if inst.report is not None:
                total += inst.report["total"]
            elif inst.stats and "rx" in inst.stats[-1]:
                total += inst.stats[-1]["rx"]
        return total

    def survived(self):
        return sum(1 for k in self.kills if k["rejoined_after"] is not None)

    # ------------------------------------------------------------------ verdict
    def analyse(self):
        verdict = judge(self.streams, self.fired, self.gaps, self.backwards, self.port_owner)
        viol = verdict["violations"]
        # the final mesh: every worker streams to every other one's current receiver
        mesh_missing = []
        for w in self.workers:
            inst = self.current[w]
            done_to = {
                s["to"]
                for s in self.streams.values()
                if s["sender"] is inst
                and s["end"] is not None
                and self.fired.get(s["end"]["inc"]) is None
                and s["end"]["finacked"] == s["end"]["sent"] > 0
            }
            for other in self.workers:
                if other != w and self.current[other].rx_port not in done_to:
                    mesh_missing.append("%s->%s" % (w, other))
        stability = self.stability()
        stable = all(
            e[k] is not None and e[k] < GROWTH_LIMIT
            for e in stability.values()
            for k in ("rss_growth_pct", "greenlets_growth_pct")
        )
        moved = self.moved()
        sent = sum(
            (i.stopped or {}).get("sent") or (i.stats[-1].get("tx", 0) if i.stats else 0)
            for i in self.instances
            if i.role == "worker"
        )
        survived = self.survived()
        out(
            "messages",
            moved=moved,
            sent=sent,
            streams=len(self.streams),
            completed_streams=verdict["completed_streams"],
            rate_per_s=round(moved / max(1e-9, self.t_stop - self.t0)),
            note="what receivers counted; killed processes up to their last stats line",
        )
        out("losses", **{k: verdict[k] for k in LOSS_KEYS})
        out("violations", count=len(viol), items=viol[:50])
        out("stability", limit_pct=GROWTH_LIMIT, processes=stability)
        ok = (
            not viol
            and len(self.kills) >= 1
            and survived == len(self.kills)
            and not mesh_missing
            and stable
            and not self.errors
        )
        summary = dict(
            passed=ok,
            duration_s=round(self.t_stop - self.t0, 1),
            workers=len(self.workers),
            messages_moved=moved,
            kills=len(self.kills),
            kills_survived=survived,
            rejoin_s_max=max(
                [k["rejoined_after"] for k in self.kills if k["rejoined_after"] is not None] or [0]
            ),
            gaps_observed=verdict["gaps_observed"],
            gaps_covered_by_monitors=verdict["gaps_covered_by_monitors"],
            violation_kinds=sorted({x["kind"] for x in viol}),
            streams_ended_by_monitor=verdict["streams_ended_by_monitor"],
            streams_ended_by_sender_death=verdict["streams_ended_by_sender_death"],
            messages_unacked_when_monitors_fired=verdict["messages_unacked_when_monitors_fired"],
            violations=len(viol),
            mesh_missing=mesh_missing,
            rss_growth_pct={k: e["rss_growth_pct"] for k, e in stability.items()},
            greenlets_growth_pct={k: e["greenlets_growth_pct"] for k, e in stability.items()},
            max_stats_gap_s=max([e["max_stats_gap_s"] for e in stability.values()] or [0]),
            conductor_max_turn_s=round(self.max_turn, 2),
            errors=self.errors[:5],
            log_dir=self.log_dir,
        )
        summary["pass"] = summary.pop("passed")
        out("summary", **summary)
        return ok

    @staticmethod
    def steady(inst, t_from, t_to=float("inf")):
        """The samples of ``inst`` in [t_from, t_to] taken while it was fully connected."""
        return [s for s in inst.stats if s.get("full") and t_from <= s["t"] <= t_to]

    def never_killed(self):
        return [self.current[n] for n in [SEED_ID] + self.workers[: self.args.exempt]]

    def stability(self):
        a = self.args
        win = a.window_s
        b0 = self.t0 + a.warmup
        e1 = self.t_stop
        res = {}
        for inst in self.never_killed():
            assert inst.gen == 1
            # baseline: the steady samples in [warm-up, + window], else the first 3 after the
            # warm-up (still in the kill phase); end: the steady samples in the last window
            # of the calm phase (after the last restarted worker rejoined), else all of it
            steady = self.steady(inst, self.t0, e1)
            base = [s for s in steady if b0 <= s["t"] <= b0 + win]
            if len(base) < 3:
                base = [s for s in steady if b0 <= s["t"] < self.t_end_kills][:3]
            if not base:  # (a heavily loaded machine) the last ones before: a stricter baseline
                base = [s for s in steady if s["t"] < b0][-3:]
            calm = self.steady(inst, self.t_calm, e1)
            fin = [s for s in calm if e1 - win <= s["t"]]
            if len(fin) < 3:
                fin = calm

            def span(samples):  # first and last sample times, relative to the start
                return [round(s["t"] - self.t0, 1) for s in samples[:: max(1, len(samples) - 1)]]

            entry = {
                "pid": inst.pid,
                "baseline_s": span(base),
                "end_s": span(fin),
                "steady_samples": len(steady),
                "samples_total": len(inst.stats),
            }
            for key, growth in (
                ("rss_kb", "rss_growth_pct"),
                ("greenlets", "greenlets_growth_pct"),
                ("greenlets_with_garbage", None),
            ):  # the last: diagnostics
                mb = statistics.median(s[key] for s in base) if base else None
                me = statistics.median(s[key] for s in fin) if fin else None
                entry[key + "_baseline"] = mb
                entry[key + "_end"] = me
                if growth:  # None (no samples in a window) fails the check
                    entry[growth] = round((me - mb) / mb * 100.0, 2) if base and fin else None
            run = [s for s in inst.stats if self.t0 <= s["t"] <= e1]
            step = max(1, len(run) // 30)
            entry["samples"] = [
                [round(s["t"] - self.t0, 1), s["rss_kb"], s["greenlets"], int(bool(s.get("full")))]
                for s in run[::step]
            ]
            gaps = [b["t"] - a_["t"] for a_, b in zip(run, run[1:])]
            entry["max_stats_gap_s"] = round(max(gaps or [0]), 2)  # > stats_every: a stall
            if len(inst.censuses) >= 2:
                c0, c1 = inst.censuses[0], inst.censuses[-1]
                entry["greenlet_census_change"] = {
                    k: [c0.get(k, 0), c1.get(k, 0)]
                    for k in sorted(set(c0) | set(c1))
                    if c0.get(k, 0) != c1.get(k, 0)
                }
            res[inst.name] = entry
        return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, help="run length in minutes (long mode: 10)")
    g.add_argument("--seconds", type=float, help="run length in seconds (short mode: 20)")
    ap.add_argument("--workers", type=int, default=3, help="worker nodes w1..wN (3)")
    ap.add_argument(
        "--exempt",
        type=int,
        default=1,
        help="the first K workers are never killed (1); the seed never is",
    )
    ap.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills (3)")
    ap.add_argument("--window", type=int, default=4096, help="unacknowledged messages per stream")
    ap.add_argument("--burst", type=int, default=256, help="messages sent between yields")
    ap.add_argument("--ack-every", type=int, default=256, help="receiver acks every k-th number")
    ap.add_argument(
        "--restart-delay",
        type=float,
        default=0.3,
        help="seconds between a stream's monitor firing and its replacement",
    )
    ap.add_argument(
        "--fin-timeout",
        type=float,
        default=8.0,
        help="how long a stopping stream waits for its finack",
    )
    ap.add_argument("--warmup", type=float, help="seconds before the stability baseline")
    ap.add_argument("--stats-every", type=float, help="seconds between stats samples")
    ap.add_argument("--progress", type=float, help="seconds between progress lines")
    ap.add_argument("--deadline", type=float, help="hard limit for the whole run (seconds)")
    ap.add_argument("--random-seed", type=int, help="seed for the kill schedule")
    ap.add_argument("--log-dir", help="where the processes' logs go (default: a temp dir)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the logs of a passing run")
    ap.add_argument("--node-log", default="INFO", help="logging level in the nodes (INFO)")
    ap.add_argument("--events", help="write every line of every process to this file")
    a = ap.parse_args(argv)
    a.duration = a.minutes * 60 if a.minutes is not None else (a.seconds or 20.0)
    if a.workers < 2 or a.exempt >= a.workers:
        ap.error("need at least 2 workers and at least one killable worker")
    if a.warmup is None:
        a.warmup = min(60.0, max(5.0, 0.3 * a.duration))
    a.window_s = min(30.0, max(2.0, 0.1 * a.duration))
    if a.stats_every is None:
        a.stats_every = 0.5 if a.duration < 120 else 2.0
    if a.progress is None:
        a.progress = max(5.0, a.duration / 20)
    if a.deadline is None:
        a.deadline = a.duration + 120
    if a.random_seed is None:
        a.random_seed = random.SystemRandom().randrange(1 << 30)
    if a.warmup + 2 * a.window_s > a.duration:
        ap.error("the run is too short for a warm-up and two sample windows")

    def on_alarm(signum, frame):
        raise Deadline("hard deadline of %s s reached" % a.deadline)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(a.deadline))
    soak = Soak(a)
    ok = False
    try:
        ok = soak.run()
    except (Deadline, RuntimeError) as exc:
        out(
            "summary",
            **{
                "pass": False,
                "error": str(exc),
                "kills": len(soak.kills),
                "messages_moved": soak.moved(),
                "log_dir": soak.log_dir,
            },
        )
    finally:
        signal.alarm(0)
        soak.close_all()
        if soak.events is not None:
            soak.events.close()
        if ok and not a.keep_logs and not a.log_dir:
            shutil.rmtree(soak.log_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
