"""A crash in user code is printed by default, once, with what crashed, the message tag and the
traceback, in a program that configured no logging (docs/running.md, "When user code
crashes"); ``set_crash_handler`` routes or silences it; ``AE_VERBOSE`` shows the library's own
log to library users, not only to the ``aemp`` command."""

import os
import subprocess
import sys
import textwrap

from netutil import REPO

PRELUDE = """
import gevent
from aemp_green import *
"""


def run(code, env=None, timeout=60):
    full = dict(os.environ, PYTHONPATH=str(REPO))
    full.pop("AE_VERBOSE", None)
    full.pop("PERL_ANYEVENT_VERBOSE", None)
    full.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
        cwd=str(REPO),
    )
    assert out.returncode == 0, out.stderr
    return out


def test_callback_handler_crash_is_printed_once_with_port_tag_and_traceback():
    out = run("""
        p = port()
        rcv(p, "job", lambda n: 1 // n)
        mon(p, lambda *r: print("monitor:", r))
        snd(p, "job", 0)
        snd(p, "job", 1)      # the port is dead: no second report
        gevent.wait()
    """)
    err = out.stderr
    assert err.count("aemp_green: port ") == 1, err
    assert "died (callback port, handling a message tagged 'job')" in err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("ZeroDivisionError: integer division or modulo by zero")
    assert "monitor: ('die', 'ZeroDivisionError: integer division or modulo by zero')" in out.stdout


def test_greenlet_port_spawned_function_and_monitor_callback_crashes_are_printed():
    out = run("""
        def worker():
            receive("go")
            raise KeyError("missing")
        w = spawn(worker)
        mon(w, lambda *r: [][0])        # a monitor callback that fails in turn
        snd(w, "go")
        gevent.wait()
    """)
    err = out.stderr
    assert "died (greenlet port)" in err and "KeyError: 'missing'" in err, err
    assert "aemp_green: a monitor callback failed" in err, err
    assert "IndexError: list index out of range" in err, err


def test_crash_handler_off_and_logging():
    quiet = run("""
        set_crash_handler(None)
        p = port(lambda *m: 1 / 0)
        snd(p, "x")
        gevent.wait()
    """)
    assert quiet.stderr == ""
    logged = run("""
        import logging
        logging.basicConfig(format="LOG %(name)s %(levelname)s %(message)s")
        set_crash_handler("logging")
        p = port(lambda *m: 1 / 0)
        snd(p, "x")
        gevent.wait()
    """)
    assert "LOG aemp_green.crash ERROR aemp_green: port " in logged.stderr, logged.stderr
    assert logged.stderr.count("ZeroDivisionError: division by zero") == 1, logged.stderr


def test_ae_verbose_shows_the_library_log_to_library_users():
    code = """
        configure(nodeid="verbose", binds=["127.0.0.1:*"], norc=True, secret="s")
        shutdown()
    """
    assert "listens on" not in run(code).stderr
    out = run(code, env={"AE_VERBOSE": "7"})
    assert "INFO aemp_green.runtime: node verbose listens on ['127.0.0.1:" in out.stderr, out.stderr


def test_node_and_database_watcher_crashes_are_printed(cluster):
    """A crash in a mon_nodes callback or a function a peer called by name is reported too (it
    was logged only, invisible without logging)."""
    a = cluster.seed("a")
    b = cluster.node("b", seeds=[a.addr])
    b.run("wait_for(lambda: node_is_up('a'))")
    a.run("""
        import aemp_green._report as R
        R.set_crash_handler(lambda r: emit("crash", r.what, r.text.splitlines()[0]))
        mon_nodes(lambda node, up, *why: {}["boom"])
    """)
    b.run("""
        import aemp_green._report as R
        R.set_crash_handler(lambda r: emit("crash", r.what, r.text.splitlines()[0]))
        snd_to_func("a", "json.loads", "not json")
    """)
    what, head = a.expect("crash", pred=lambda v: v[0] == "function called by name")
    assert head.startswith(
        "aemp_green: a function called by name failed ('json.loads', asked by b)"
    ), head
    b.kill()
    what, head = a.expect("crash", pred=lambda v: v[0] == "mon_nodes callback")
    assert head.startswith("aemp_green: a mon_nodes callback failed"), head
