"""The AEMP example ports run as documented: the resilient chat and the job pool.

Every example is a real process on 127.0.0.1 around a seed started with ``examples/seed.py``
and the demo environment (``AEMP_DEMO_SEED``/``AEMP_DEMO_SECRET``, as examples/demo.py does).
Waits are for output lines, each with a deadline. ``Script``, the ``examples`` fixture and
``run_python`` are shared with tests/test_monkey.py, tests/test_threaded.py and
tests/test_embedding.py (legacy_monkey.py and wsgi_embed.py are tested there).
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from netutil import SECRET, free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

__all__ = ["Script", "Examples", "examples", "run_python"]


def run_python(code, timeout=60, env=None):
    """Run ``code`` in a fresh ``python -c`` (aemp_green importable); return the
    ``CompletedProcess`` (text ``stdout``/``stderr``); fails if it outlives ``timeout``."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    full_env.pop("PERL_ANYEVENT_MP_TRACE", None)
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=str(REPO),
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            "python -c did not finish within %s s; stdout:\n%s\nstderr:\n%s"
            % (timeout, exc.stdout, exc.stderr)
        ) from None


class Script:
    """One example script as a process: its stdout+stderr lines, waited for with deadlines.

    ``expect(pattern)`` returns the ``re.Match`` of the first line at or after ``mark()``
    (or ``since``) that matches; ``mark()`` remembers the current end of the output.
    """

    def __init__(self, role, script, *args, env, stdin=False):
        self.role = role
        self.argv = [sys.executable, "-u", str(EXAMPLES / script), *map(str, args)]
        self.env = env
        self.stdin = stdin
        self.lines = []
        self._new = threading.Condition()
        self._mark = 0
        self.proc = None
        self.start()

    def start(self):
        """(Re)start the process; its output keeps accumulating in ``lines``."""
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=str(REPO),
            text=True,
            stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
        )
        with self._new:
            self.lines.append("======== started %s" % " ".join(self.argv[2:]))
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        return self

    def _pump(self, proc):
        for line in proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self.lines.append("======== exited rc=%s" % proc.wait())
            self._new.notify_all()

    def mark(self):
        """Remember (and return) the current end of the output for the next ``expect``."""
        with self._new:
            self._mark = len(self.lines)
        return self._mark

    def expect(self, pattern, timeout=20, since=None):
        """The match of the first line (from ``since`` or the last ``mark()``) matching
        ``pattern``; fails with the output tail after ``timeout`` seconds."""
        rx = re.compile(pattern)
        i = self._mark if since is None else since
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    i += 1
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "%s: no line matching %r within %s s; output:\n%s"
                        % (self.role, pattern, timeout, self.tail())
                    )
                self._new.wait(left)

    def count(self, pattern, since=0):
        """How many lines (from ``since``) match ``pattern`` now."""
        rx = re.compile(pattern)
        with self._new:
            return sum(1 for line in self.lines[since:] if rx.search(line))

    def tail(self, n=60):
        with self._new:
            return "\n".join(self.lines[-n:])

    def send_line(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close_stdin(self):
        self.proc.stdin.close()

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=10)

    def wait(self, timeout=30):
        """Wait for the process to exit; return its exit code (fails after ``timeout``)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "%s still running after %s s; output:\n%s" % (self.role, timeout, self.tail())
            ) from None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for f in (self.proc.stdin,):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:  # pragma: no cover
                    pass


class Examples:
    """The example processes of one test around one seed (the ``examples`` fixture)."""

    def __init__(self):
        self.addr = "127.0.0.1:%d" % free_port()
        self.env = dict(os.environ, AEMP_DEMO_SEED=self.addr, AEMP_DEMO_SECRET=SECRET)
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), self.env.get("PYTHONPATH", "")])
        self.env.pop("PERL_ANYEVENT_MP_TRACE", None)
        self.scripts = []
        self._seed = None

    def seed(self):
        """Start ``examples/seed.py`` at ``self.addr`` (once) and wait until it listens."""
        if self._seed is None:
            self._seed = self.start("seed", "seed.py", self.addr)
            self._seed.expect("listening", 20)
        return self._seed

    def start(self, role, script, *args, stdin=False):
        s = Script(role, script, *args, env=self.env, stdin=stdin)
        self.scripts.append(s)
        return s

    def probe_config(self):
        """configure() arguments for a ``netutil`` child node joining this network."""
        return {"seeds": [self.addr], "secret": SECRET}

    def stop_all(self):
        for s in reversed(self.scripts):
            s.stop()

    def report(self):
        return "\n".join("----- %s:\n%s" % (s.role, s.tail(40)) for s in self.scripts)


@pytest.fixture
def examples():
    """An ``Examples`` set; stops every process at teardown and prints their output (shown by
    pytest for failed tests)."""
    ex = Examples()
    try:
        yield ex
    finally:
        ex.stop_all()
        print(ex.report())


# --------------------------------------------------------------------------- chat


def test_chat_server_and_clients_survive_kills_and_restarts(examples):
    """examples/chat_server.py + chat_client.py: the server registers in eg_chat_server,
    clients find it with db_mon and monitor it; quits are announced through the server's
    monitors; a killed client and a killed server are restarted and the chat goes on."""
    examples.seed()
    server = examples.start("server", "chat_server.py")
    server.expect(r"server ready: \S+#", 20)
    alice = examples.start("alice", "chat_client.py", "alice", stdin=True)
    bob = examples.start("bob", "chat_client.py", "bob", stdin=True)
    alice.expect(r"^alice \(joins\)", 20)
    bob.expect(r"^bob \(joins\)", 20)

    m = bob.mark()
    alice.send_line("hello bob")
    bob.expect(r"^alice: hello bob$", 10, since=m)
    server.expect(r"relaying: alice: hello bob", 5)

    # a client killed without a word: the server's monitor announces it
    m = alice.mark()
    bob.kill()
    alice.expect(r"^bob \(quits, transport_error", 20, since=m)
    mb = bob.mark()
    bob.start()
    alice.expect(r"^bob \(joins\)", 20, since=m)
    bob.expect(r"^bob \(joins\)", 20, since=mb)

    # the server killed: both clients notice, wait, and join the restarted server
    ma, mb = alice.mark(), bob.mark()
    server.kill()
    alice.expect(r"^\* disconnected from server: transport_error", 20, since=ma)
    bob.expect(r"^\* disconnected from server: transport_error", 20, since=mb)
    ms = server.mark()
    server.start()
    server.expect(r"server ready", 20, since=ms)
    alice.expect(r"^\* connecting to server ", 30, since=ma)
    alice.expect(r"^alice \(joins\)", 20, since=ma)  # each sees its own join relayed
    bob.expect(r"^bob \(joins\)", 20, since=mb)

    m = bob.mark()
    alice.send_line("still here?")
    bob.expect(r"^alice: still here\?$", 10, since=m)

    # a client that ends normally (EOF on stdin) is announced too
    m = bob.mark()
    alice.close_stdin()
    assert alice.wait(20) == 0
    bob.expect(r"^alice \(quits", 20, since=m)


# --------------------------------------------------------------------------- job pool


def _sum_squares(n):
    return sum(i * i for i in range(n))


def test_jobpool_requeues_the_job_of_a_killed_worker(examples):
    """examples/jobpool.py: workers db_reg in jobpool_workers; the dispatcher hands out jobs,
    monitors the workers, and re-queues the job of a worker killed while working on it."""
    examples.seed()
    fast = examples.start("fast", "jobpool.py", "worker", "--delay", "0.05")
    slow = examples.start("slow", "jobpool.py", "worker", "--delay", "60")
    fast.expect(r"worker \S+: ready", 20)
    slow_port = slow.expect(r"worker (\S+): ready", 20).group(1)
    disp = examples.start("dispatcher", "jobpool.py", "dispatcher", "8", "--min-workers", "2")
    job = int(slow.expect(r"working on job (\d+)", 30).group(1))
    slow.kill()
    disp.expect(r"worker %s died \(transport_error" % re.escape(slow_port), 20)
    disp.expect(r"re-queueing job %d$" % job, 5)
    disp.expect(r"all 8 jobs done", 30)
    assert disp.wait(10) == 0
    done = {}
    for line in disp.lines:
        m = re.search(r"dispatcher: job (\d+) -> (\d+) \(worker (\S+)\)", line)
        if m:
            done[int(m.group(1))] = (int(m.group(2)), m.group(3))
    assert sorted(done) == list(range(8)), disp.tail()
    for j, (value, by) in done.items():
        assert value == _sum_squares(1000 + j)
        assert by != slow_port
    assert fast.count(r"working on job %d$" % job) == 1  # the re-queued job, done once


def test_jobpool_dispatcher_picks_up_a_worker_started_later(examples):
    """A dispatcher started before any worker waits; a worker that joins later gets the jobs."""
    examples.seed()
    disp = examples.start("dispatcher", "jobpool.py", "dispatcher", "3")
    worker = examples.start("worker", "jobpool.py", "worker", "--delay", "0")
    worker.expect(r"ready", 20)
    disp.expect(r"all 3 jobs done", 30)
    assert disp.wait(10) == 0


# --------------------------------------------------------------------------- ending cleanly


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_examples_end_cleanly_on_ctrl_c_and_sigterm(examples, sig):
    """``run_forever()`` (the examples end with it): Ctrl-C or SIGTERM shuts the node down and
    the process exits with status 0, without a ``KeyboardInterrupt`` traceback; the receiver's
    peer (the seed) sees the link end at once."""
    seed = examples.seed()
    mark = seed.mark()
    rcv = examples.start("receiver", "eg_receiver.py")
    rcv.expect("registered in eg_receivers")
    seed.expect(r"seed: node eg_receiver\S* up", since=mark)
    mark = seed.mark()
    rcv.kill(sig)
    assert rcv.proc.returncode == 0, rcv.tail()
    assert not any("Traceback" in ln or "KeyboardInterrupt" in ln for ln in rcv.lines), rcv.tail()
    seed.expect(r"seed: node eg_receiver\S* down", since=mark)
