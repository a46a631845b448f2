"""A scripted child node for multi-process tests: ``python -m child '<configure kwargs json>'`` (with tests/ on PYTHONPATH).

It configures itself, prints ``["ready", nodeid, binds]`` and then executes the Python snippets
it reads from stdin (one JSON object ``{"exec": code}`` per line), each in its own greenlet, with
the whole ``aemp_green`` API, ``emit(*values)``, ``wait_for(pred, timeout)`` (a bounded poll),
``gevent``, ``time`` and ``node`` (``aemp_green.node``) in scope. ``emit`` prints one JSON line to
stdout; the test side (``tests/netutil.py``) waits for those lines with a deadline.
"""

import faulthandler
import json
import logging
import os
import signal
import sys
import time
import traceback

import gevent
from gevent.fileobject import FileObjectPosix

import aemp_green
from aemp_green import connect as _connect, node as _node, trace as _trace


def emit(*values):
    sys.stdout.write(json.dumps(list(values), default=repr) + "\n")
    sys.stdout.flush()


def wait_for(pred, timeout=10, what=None):
    """Poll ``pred()`` on the gevent loop until it is truthy (return it) or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %s s waiting for %s" % (timeout, what or pred))
        gevent.sleep(0.005)


def _run(code, ns):
    try:
        exec(code, ns)
    except Exception:
        emit("error", traceback.format_exc())


def main():
    level = os.environ.get("AEMP_TEST_LOG")
    logging.basicConfig(
        level=getattr(logging, level) if level else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s " + "%(process)d %(levelname)s %(name)s: %(message)s",
    )
    # SIGUSR1 dumps the Python stack into the log (netutil does it when a wait times out)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    kwargs = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    profile = kwargs.pop("profile", None)
    kwargs.setdefault("check_local_messages", True)  # as in the pytest process (conftest)
    aemp_green.configure(profile, **kwargs)
    ns = {name: getattr(aemp_green, name) for name in aemp_green.__all__}
    ns.update(
        emit=emit,
        gevent=gevent,
        aemp_green=aemp_green,
        node=_node,
        connect=_connect,
        trace=_trace,
        wait_for=wait_for,
        time=time,
    )
    emit("ready", aemp_green.NODE(), aemp_green.listener_addresses())
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb")
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        if "exec" in cmd:
            gevent.spawn(_run, cmd["exec"], ns)
    # stdin closed: the test is done with us
    aemp_green.shutdown()


if __name__ == "__main__":
    main()
