"""Shared helpers for the aemp_green tests: bounded waits, loop barriers, message collectors.

Every wait here has a deadline; nothing sleeps for a fixed time to "let things happen".

* ``wait_until(pred, timeout)`` polls ``pred`` on the gevent loop until it is true or the
  deadline passes (then the test fails with an ``AssertionError``).
* ``flush(turns)`` is a deterministic barrier: it lets the event loop run ``turns`` full rounds
  of already-scheduled callbacks (kills, monitor firings and greenlet starts are all
  ``run_callback`` chains of a few links), so "nothing happened" can be checked without sleeping.
* ``Collector`` gathers calls (``col(*args)`` appends ``args``) or messages (``col.port()`` is a
  callback port whose catch-all is the collector) and waits for N of them with a deadline.
* ``run_in_port(fn, *args)`` runs a test body inside a fresh greenlet port (so ``SELF()`` and the
  mailbox are its own, not the shared main greenlet's) and returns its result or re-raises.

pytest runs every test in the main greenlet, and the main greenlet keeps its adopted port (once
it has called ``receive``) for the whole session: tests that need a clean port context run their
body with ``run_in_port`` or ``run_in_greenlet``.

The module also holds a few plain functions that tests start by name with
``spawn(NODE(), "conftest.<name>", ...)`` (pytest puts ``tests/`` on ``sys.path``).
"""

import time

import gevent
import pytest
from gevent.event import Event
from greenlet import getcurrent

import aemp_green
from aemp_green import kernel
from netutil import Cluster, Examples

__all__ = ["wait_until", "flush", "Collector", "run_in_port", "run_in_greenlet", "spawned_log"]

DEFAULT_TIMEOUT = 5.0


def wait_until(pred, timeout=DEFAULT_TIMEOUT, what=None):
    """Wait on the gevent loop until ``pred()`` is truthy; return it, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what or pred))
        gevent.sleep(0.001)


def flush(turns=5):
    """Let the event loop run ``turns`` rounds of the callbacks scheduled so far (no timing)."""
    loop = gevent.get_hub().loop
    for _ in range(turns):
        ev = Event()
        loop.run_callback(ev.set)
        if not ev.wait(DEFAULT_TIMEOUT):  # pragma: no cover - the loop is wedged
            raise AssertionError("event loop did not run a callback within %ss" % DEFAULT_TIMEOUT)


class Collector:
    """Record calls ``col(*args)`` as tuples in ``col.items``; wait for a number of them.

    ``col.port()`` makes a callback port whose catch-all handler is this collector, so every
    message sent there is recorded (tag included). ``col.wait(n)`` returns the items once there
    are at least ``n`` of them and fails after ``timeout`` seconds otherwise.
    """

    def __init__(self):
        self.items = []
        self._want = None
        self._event = Event()

    def __call__(self, *args):
        self.items.append(args)
        if self._want is not None and len(self.items) >= self._want:
            self._event.set()

    def port(self):
        """A new callback port that records each message it gets."""
        return aemp_green.port(self)

    def __len__(self):
        return len(self.items)

    def wait(self, n=1, timeout=DEFAULT_TIMEOUT):
        """Wait until ``n`` items were collected; return the item list."""
        deadline = time.monotonic() + timeout
        while len(self.items) < n:
            self._want = n
            self._event.clear()
            if len(self.items) >= n:
                break
            left = deadline - time.monotonic()
            if left <= 0 or (not self._event.wait(left) and len(self.items) < n):
                raise AssertionError(
                    "collected %d of %d items within %ss: %r"
                    % (len(self.items), n, timeout, self.items[:20])
                )
        self._want = None
        return self.items

    def wait_one(self, timeout=DEFAULT_TIMEOUT):
        """Wait for the first item and return it."""
        return self.wait(1, timeout)[0]


class _Outcome:
    __slots__ = ("value", "exc", "done")

    def __init__(self):
        self.value = self.exc = None
        self.done = False


def run_in_port(fn, *args, timeout=DEFAULT_TIMEOUT):
    """Run ``fn(*args)`` as a fresh greenlet port; return its result or re-raise its exception.

    Fails if the port does not finish within ``timeout`` or is killed before ``fn`` returned.
    """
    out = _Outcome()

    def body():
        try:
            out.value = fn(*args)
        except Exception as exc:  # handed to the test greenlet
            out.exc = exc
        out.done = True

    died = Collector()
    pid = aemp_green.spawn(body)
    g = aemp_green.mon(pid, died)
    try:
        reason = died.wait_one(timeout)
    finally:
        g.cancel()
        aemp_green.kil(pid)
    if out.exc is not None:
        raise out.exc
    assert out.done, "test port %s was killed before its body finished: %r" % (pid, reason)
    return out.value


def run_in_greenlet(fn, *args, timeout=DEFAULT_TIMEOUT):
    """Run ``fn(*args)`` in a fresh plain gevent greenlet (no port context); return its result."""
    return gevent.spawn(fn, *args).get(timeout=timeout)


@pytest.fixture
def collector():
    """A fresh ``Collector``."""
    return Collector()


@pytest.fixture
def port_count():
    """The size of the local port table now (compare after the test to catch leaks)."""
    flush()
    return len(kernel.port_table)


# -------------------------------------------------------------------------- spawn-by-name targets

#: (SELF(), args) of every call of ``spawned_log`` and ``Targets.run``
spawned_log = []


def spawned_target(*args):
    """Started by name: records ``(SELF(), args)`` and returns (so its port ends normally)."""
    spawned_log.append((aemp_green.SELF(), args))


class Targets:
    """A class whose method is started by a dotted name longer than the module name."""

    @staticmethod
    def run(*args):
        spawned_log.append((aemp_green.SELF(), ("Targets.run",) + args))


@pytest.fixture(autouse=True)
def _pytest_process_stays_unconfigured():
    """The pytest process is never a configured node: every network test uses child processes
    (the local-kernel tests rely on the anonymous node ID). Fails the test that breaks it."""
    from aemp_green import config

    was = config.is_configured()
    yield
    if not was:
        assert not config.is_configured(), "this test called configure() in the pytest process"


@pytest.fixture(autouse=True)
def _main_greenlet_leaves_its_port_behind():
    """Every test starts with the main greenlet outside port context: a ``receive()`` there
    gives it a port of its own (docs/api.md#ports-and-messages), which would make later tests'
    "outside port context" code run in that port. After each test, that port is killed (normal
    exit)."""
    yield
    p = getattr(getcurrent(), "aemp_self", None)
    if p is not None and kernel.port_table.get(p.id) is p:
        aemp_green.kil(p.id)
    getcurrent().aemp_self = None


# Messages to local ports are checked as if they crossed the wire (the check_local_messages
# setting; child nodes get it from tests/child.py): code that works locally must not break
# when its port moves to another node.
kernel.check_local_messages(True)


# --------------------------------------------------------------------------- shared fixtures
# (every test file gets them without importing them)


@pytest.fixture
def cluster(tmp_path):
    """A ``Cluster`` logging into the test's tmp dir; stops every child at teardown."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()
        # pytest shows teardown output only for failed tests: the children's logs
        print(c.report())


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
