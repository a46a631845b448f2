"""Helpers for multi-process tests: child nodes (``tests/child.py``), free ports, raw AEMP peers.

The pytest process never calls ``aemp_green.configure()``: every node is a child process.

* ``ChildNode(log_dir, name, **configure_kwargs)`` starts ``python -m child '<kwargs json>'`` and
  waits until it printed ``ready``. ``exec(code)`` runs a snippet in it (each in its own
  greenlet, all sharing one namespace), ``expect(tag, timeout, pred)`` waits for an
  ``emit(tag, ...)`` line and returns the values after the tag, ``ask(expr)`` evaluates one
  expression there and returns its (JSON) value. Every wait has a deadline; a failed wait raises
  ``AssertionError`` carrying the child's log tail.
* ``Cluster`` (the ``cluster`` fixture of ``conftest.py``) owns the children of one test: ``cluster.seed()``,
  ``cluster.node(name, ...)``, ``cluster.start(...)`` (several in parallel). At teardown it stops
  them all (even when the test failed) and prints their log tails, which pytest shows for
  failed tests only.
* ``free_port()`` asks the OS for a free TCP port on 127.0.0.1.
* ``RawPeer`` is a blocking-socket AEMP client driven by ``aemp_green.wire.handshake.Handshake``,
  for the bad-input tests.
* ``RawConn`` is a bare TCP connection with a line buffer and no protocol at all, for attackers
  that relay or replay other nodes' handshake lines (``tests/test_attack_handshake.py``).
"""

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECRET = "test-secret-0123456789"

__all__ = [
    "REPO",
    "SECRET",
    "ChildNode",
    "Cluster",
    "EXAMPLES",
    "Script",
    "Examples",
    "run_python",
    "free_port",
    "wait_file",
    "stop_children",
    "black_hole",
    "RawPeer",
    "RawConn",
    "read_until_closed",
]


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


@contextlib.contextmanager
def black_hole(backlog=16):
    """A listener on 127.0.0.1 that accepts connections (the kernel's backlog) and never
    answers: a handshake with it hangs. Yields its ``"host:port"``.

    Example::

        with black_hole() as addr:
            node.run("snd(%r, 'x')" % (addr + "#p"))
    """
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(backlog)
        yield "127.0.0.1:%d" % s.getsockname()[1]
    finally:
        s.close()


def wait_file(path, pred, timeout=10, what=None):
    """Poll the text of ``path`` until ``pred(text)`` is truthy; return the text or fail."""
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            text = ""
        if pred(text):
            return text
        if time.monotonic() >= deadline:
            raise AssertionError(
                "%s: no %s within %s s; file tail:\n%s"
                % (path, what or pred, timeout, "\n".join(text.splitlines()[-40:]))
            )
        time.sleep(0.02)


class ChildNode:
    """A child node process. ``exec(code)`` runs a snippet in it; ``expect(tag)`` waits for an
    ``emit(tag, ...)`` line and returns its values (after the tag). ``_env`` (a dict) adds or
    overrides environment variables of the process, e.g. ``_env={"TMPDIR": "/x"}``."""

    def __init__(self, log_dir, name, _wait=True, _prefix=(), _env=None, **cfg):
        self.prefix = list(_prefix)  # e.g. ["ip", "netns", "exec", "ns1"]
        self.env_extra = dict(_env or {})
        cfg.setdefault("secret", SECRET)
        cfg.setdefault("binds", ["127.0.0.1:*"])
        cfg.setdefault("norc", True)
        self.name = name
        self.cfg = cfg
        self.log_path = Path(log_dir) / ("%s.log" % name.replace("/", "_"))
        self._lines = queue.Queue()
        self.backlog = []
        self.proc = None
        self._log = None
        self._seq = 0
        self.nodeid = self.binds = None
        self.start(wait=_wait)

    def start(self, wait=True):
        """(Re)start the process with the same configuration; wait for ``ready`` if ``wait``."""
        if self._log is not None and not self._log.closed:
            self._log.close()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")]
        )
        env.setdefault("AEMP_TEST_LOG", "INFO")
        env.pop("PERL_ANYEVENT_MP_TRACE", None)
        env.update(self.env_extra)
        self._log = open(self.log_path, "ab")
        self._log.write(b"======== start %s\n" % self.name.encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.prefix + [sys.executable, "-m", "child", json.dumps(self.cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=str(REPO),
            env=env,
        )
        self._lines = queue.Queue()
        self.backlog = []
        t = threading.Thread(target=self._reader, args=(self.proc, self._lines), daemon=True)
        t.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        _, self.nodeid, self.binds = self.expect_raw("ready", timeout=timeout)
        return self

    @staticmethod
    def _reader(proc, lines):
        for raw in proc.stdout:
            try:
                lines.put(json.loads(raw))
            except ValueError:
                lines.put(["garbage", raw.decode("utf-8", "replace")])
        lines.put(None)

    def exec(self, code):
        """Run the snippet ``code`` (dedented) in its own greenlet in the child."""
        self.proc.stdin.write((json.dumps({"exec": textwrap.dedent(code)}) + "\n").encode())
        self.proc.stdin.flush()

    def ask(self, expr, timeout=10):
        """Evaluate the expression ``expr`` in the child and return its value (through JSON)."""
        self._seq += 1
        tag = "_ask%d" % self._seq
        self.exec("emit(%r, %s)" % (tag, expr))
        return self.expect(tag, timeout)[0]

    def run(self, code, timeout=10):
        """Run ``code`` in the child and wait until it finished (re-raising its failure)."""
        self._seq += 1
        tag = "_run%d" % self._seq
        self.exec(textwrap.dedent(code) + "\nemit(%r)\n" % tag)
        self.expect(tag, timeout)

    def expect_raw(self, tag, timeout=10, pred=None):
        deadline = time.monotonic() + timeout
        for i, item in enumerate(self.backlog):
            if item[0] == tag and (pred is None or pred(item[1:])):
                return self.backlog.pop(i)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.dump_stack()
                raise AssertionError(
                    "%s: no %r line within %s s; seen %r; log:\n%s"
                    % (self.name, tag, timeout, self.backlog[-10:], self.log_tail())
                )
            try:
                item = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                self._lines.put(None)
                raise AssertionError(
                    "%s exited (rc=%s) before %r; seen %r; log:\n%s"
                    % (self.name, self.proc.poll(), tag, self.backlog[-10:], self.log_tail())
                )
            if item[0] == "error":
                raise AssertionError(
                    "%s: snippet failed:\n%s\nlog:\n%s" % (self.name, item[1], self.log_tail())
                )
            if item[0] == tag and (pred is None or pred(item[1:])):
                return item
            self.backlog.append(item)

    def expect(self, tag, timeout=10, pred=None):
        return self.expect_raw(tag, timeout, pred)[1:]

    def collect_until_exit(self, timeout=10):
        """Every line the process printed until its stdout closed (after ``kill``/exit)."""
        deadline = time.monotonic() + timeout
        items = list(self.backlog)
        self.backlog = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%s: stdout still open after %s s" % (self.name, timeout))
            try:
                item = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                self._lines.put(None)
                return items
            items.append(item)

    def dump_stack(self):
        """Diagnostics: make a live child write its Python stack into its log (SIGUSR1)."""
        if not self.alive:
            return
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self.proc.send_signal(signal.SIGUSR1)
        except OSError:  # pragma: no cover
            return
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # a diagnostic, not a synchronisation
            if self.log_path.exists() and self.log_path.stat().st_size > size:
                time.sleep(0.05)  # let the whole dump land
                return
            time.sleep(0.01)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, pred, timeout=10, what=None):
        """Wait until the log file satisfies ``pred(text)`` (or contains ``pred`` if a str)."""
        if isinstance(pred, str):
            needle = pred
            what = what or repr(needle)
            pred = lambda text: needle in text  # noqa: E731
        return wait_file(self.log_path, pred, timeout, what)

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        if self._log is not None:
            self._log.close()

    @property
    def addr(self):
        return self.binds[0]

    def __repr__(self):
        return "<ChildNode %s %s>" % (self.name, self.nodeid)


def stop_children(children, timeout=3):
    """Close every child's stdin (it shuts down and exits), wait up to ``timeout`` s in all,
    SIGKILL the stragglers (the tests' clusters and the benchmarks share this)."""
    for c in children:
        if c.alive:
            try:
                c.proc.stdin.close()
            except OSError:  # pragma: no cover
                pass
    deadline = time.monotonic() + timeout
    for c in children:
        if c.proc is not None and c.proc.poll() is None:
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print("%s did not exit within %s s: killed" % (c.name, timeout))
                c.kill()
        try:
            c.stop()
        except Exception as exc:  # pragma: no cover - teardown must go on
            print("stopping %s failed: %r" % (c.name, exc))


class Cluster:
    """The child nodes of one test (see the ``cluster`` fixture)."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.children = []

    def node(self, name, **cfg):
        """Start one child node named ``name`` (node ID ``name`` unless ``nodeid`` is given)."""
        return self.start((name, cfg))[0]

    def start(self, *specs):
        """Start several children in parallel: ``start(("a", {...}), ("b", {...}))``."""
        started = []
        for name, cfg in specs:
            cfg = dict(cfg)
            cfg.setdefault("nodeid", name)
            c = ChildNode(self.log_dir, name, _wait=False, **cfg)
            self.children.append(c)
            started.append(c)
        for c in started:
            c.wait_ready()
        return started

    def seed_spec(self, name="seed", **cfg):
        """A spec for a seed node: fixed free port, seeds = [its own address]."""
        addr = "127.0.0.1:%d" % free_port()
        cfg.setdefault("binds", [addr])
        cfg.setdefault("seeds", [addr])
        return name, cfg

    def seed(self, name="seed", **cfg):
        return self.start(self.seed_spec(name, **cfg))[0]

    def stop_all(self, timeout=3):
        """Close every child's stdin (it shuts down and exits), wait, SIGKILL the stragglers."""
        stop_children(self.children, timeout)

    def report(self, n=60):
        out = []
        for c in self.children:
            out.append("----- %s (%s) log tail:\n%s" % (c.name, c.nodeid, c.log_tail(n)))
        return "\n".join(out)


# --------------------------------------------------------------------------- raw AEMP peers


def read_until_closed(sock, timeout=10):
    """Read from ``sock`` until the peer closes it; return (closed, data).

    ``closed`` is True on EOF or a connection reset, False if the deadline passed first.
    """
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, data
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return False, data
        except (ConnectionResetError, BrokenPipeError):
            return True, data
        if not chunk:
            return True, data
        data += chunk


def _pop_lines(conn, n):
    """Take ``n`` LF-terminated lines (without their LF) from ``conn.rbuf``."""
    lines = []
    for _ in range(n):
        line, _, conn.rbuf = conn.rbuf.partition(b"\n")
        lines.append(line)
    return lines


class RawPeer:
    """A plain blocking-socket AEMP client for bad-input tests.

    ``greeting()`` sends our two greeting lines (from a ``Handshake``) and reads the node's;
    ``handshake()`` completes the exchange and returns the ``Established`` event;
    ``send_frame(frame)`` / ``send_raw(bytes)`` write in the data phase.
    """

    def __init__(self, addr, nodeid="attacker", secret=SECRET, framings=("json",), **hs):
        from aemp_green.wire.handshake import Handshake

        host, port = addr.rsplit(":", 1)
        self.addr = addr
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.hs = Handshake(nodeid=nodeid, secret=secret, framings=framings, peeraddr=addr, **hs)
        self.rbuf = b""
        self.framing = None

    def send_raw(self, data):
        self.sock.sendall(data)

    def read_lines(self, n, timeout=10):
        """Read ``n`` LF-terminated lines (without their LF) from the node."""
        deadline = time.monotonic() + timeout
        while self.rbuf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "no %d lines from %s within %s s: %r" % (n, self.addr, timeout, self.rbuf)
                )
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(
                    "%s closed before sending %d lines: %r" % (self.addr, n, self.rbuf)
                )
            self.rbuf += chunk
        return _pop_lines(self, n)

    def node_greeting(self, timeout=10):
        """Read (only) the node's two greeting lines."""
        return self.read_lines(2, timeout)

    def greeting(self, timeout=10):
        """Send our greeting, read the node's and feed it to our handshake; return its events."""
        self.send_raw(self.hs.data_to_send())
        l1, l2 = self.node_greeting(timeout)
        return self.hs.receive_data(l1 + b"\n" + l2 + b"\n")

    def handshake(self, timeout=10):
        """The whole exchange as a well-behaved node; return the ``Established`` event."""
        from aemp_green.wire.handshake import Established

        self.greeting(timeout)
        self.send_raw(self.hs.data_to_send())  # our auth line
        (line,) = self.read_lines(1, timeout)
        events = self.hs.receive_data(line + b"\n")
        est = [e for e in events if isinstance(e, Established)]
        assert est, events
        self.framing = est[0].send_framing
        return est[0]

    def send_frame(self, frame):
        from aemp_green.wire import framing

        self.send_raw(framing.codec(self.framing)[0](frame))

    def closed_by_node(self, timeout=10):
        """True once the node closed the connection (EOF or reset) within ``timeout``."""
        return read_until_closed(self.sock, timeout)[0]

    def close(self):
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


class RawConn:
    """A bare blocking TCP connection with a line buffer: no AEMP logic, for relaying and replaying.

    ``RawConn(addr)`` dials ``host:port`` (from ``source`` if given, e.g. ``"127.0.0.2"``);
    ``RawConn(sock=s)`` wraps an accepted socket. ``read_lines(n, timeout)`` returns ``n`` lines
    (without their LF) or ``None`` if the peer closed first or the deadline passed; ``send``
    returns False instead of raising when the peer is gone.

    Example::

        a = RawConn(node_a.addr)
        greeting = a.read_lines(2)            # [line1, line2] the node sent on accept
        a.send(b"\\n".join(greeting) + b"\\n")
    """

    def __init__(self, addr=None, *, sock=None, source=None, timeout=10):
        if sock is None:
            host, port = addr.rsplit(":", 1)
            sock = socket.create_connection(
                (host, int(port)), timeout=timeout, source_address=(source, 0) if source else None
            )
        self.sock = sock
        self.rbuf = b""
        self.eof = False

    def read_lines(self, n, timeout=10):
        """``n`` LF-terminated lines without their LF, or None (EOF/reset/deadline first)."""
        deadline = time.monotonic() + timeout
        while self.rbuf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                return None
            self.sock.settimeout(max(left, 0.001))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                self.eof = True
                return None
            if not chunk:
                self.eof = True
                return None
            self.rbuf += chunk
        return _pop_lines(self, n)

    def send(self, data):
        """Write ``data``; False if the connection is already gone."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


# --------------------------------------------------------------------------- example scripts

EXAMPLES = REPO / "examples"


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
