"""aemp_green.threaded: the node in its own OS thread, used safely from other threads.

The bridge runs in subprocesses: the pytest process never calls ``configure()`` and its kernel
stays bound to the main thread's hub (checked by the last test).
"""

import json
import textwrap
import threading
import pytest

from netutil import SECRET, free_port
from netutil import run_python


def _results(out):
    assert out.returncode == 0, "rc=%s\nstdout:\n%s\nstderr:\n%s" % (
        out.returncode,
        out.stdout,
        out.stderr[-5000:],
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, "no RESULT line\nstdout:\n%s\nstderr:\n%s" % (out.stdout, out.stderr[-5000:])
    return json.loads(lines[-1][7:])


# a node that is its own seed, so the database answers without other processes
_SELF_SEEDED = """
    import json, threading, time
    import aemp_green
    from aemp_green import threaded
    addr = "127.0.0.1:%d"
    node = threaded.start(nodeid="bridge/%%u", binds=[addr], seeds=[addr], norc=True,
                          secret="x")
"""


def _self_seeded(code):
    return textwrap.dedent(_SELF_SEEDED % free_port()) + textwrap.dedent(code)


@pytest.mark.slow
def test_hammer_8_threads_snd_and_call_for_10_seconds(cluster):
    """8 OS threads call and snd through the bridge for 10 s, half of them to a port in the hub
    thread, half to a port on another node: every reply matches its request, and the messages
    each thread sent arrive in order (checked by counter ports on both nodes)."""
    seed = cluster.seed()
    remote = cluster.node("remote", seeds=[seed.addr])
    remote.run("""
        order = {}
        bad = []
        def count(tid, seq):
            if order.get(tid, -1) != seq - 1:
                bad.append((tid, order.get(tid), seq))
            order[tid] = seq
        counter = port()
        rcv(counter, "n", count)
        echo = port(lambda tag, tid, seq, reply: snd(reply, "echo", tid, seq))
        db_set("hammer_remote", echo, counter)
    """)
    out = run_python(
        """
        import json, threading, time
        import aemp_green
        from aemp_green import threaded
        node = threaded.start(nodeid="hammer/%%u", binds=["127.0.0.1:*"], seeds=[%r],
                              secret=%r, norc=True)
        hub_ident = node.thread.ident
        wrong_thread = []
        order, bad = {}, []

        def echo(tag, tid, seq, reply):
            if threading.get_ident() != hub_ident:
                wrong_thread.append(tid)
            aemp_green.snd(reply, "echo", tid, seq)

        def count(tag, tid, seq):
            if order.get(tid, -1) != seq - 1:
                bad.append((tid, order.get(tid), seq))
            order[tid] = seq

        local_echo, local_counter = node.port(echo), node.port(count)
        found, fam = threading.Event(), {}

        def watch(db, added, changed, deleted):   # runs in the hub thread
            if db:
                fam.update(db)
                found.set()

        watching = node.db_mon("hammer_remote", watch)
        assert found.wait(20), "the other node's echo port never showed up"
        (remote_echo, remote_counter), = fam.items()

        stats = {}
        def hammer(tid):
            echo_p, counter_p = ((local_echo, local_counter) if tid %% 2
                                 else (remote_echo, remote_counter))
            calls = mismatches = errors = 0
            seq = 0
            end = time.monotonic() + 10
            while time.monotonic() < end:
                try:
                    r = node.call(echo_p, "echo", tid, seq, timeout=10)
                    calls += 1
                    if r != ["echo", tid, seq]:
                        mismatches += 1
                except Exception as exc:
                    errors += 1
                node.snd(counter_p, "n", tid, seq)
                seq += 1
            stats[tid] = [calls, mismatches, errors, seq]

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # every snd above was queued before this call's request (FIFO through the bridge)
        node.call(local_echo, "echo", -1, -1, timeout=10)
        final = dict(order)
        print("RESULT " + json.dumps({
            "stats": stats, "bad": bad, "wrong_thread": wrong_thread[:5],
            "local_order": {str(k): v for k, v in final.items()},
            "alive": [t.is_alive() for t in threads]}))
        node.stop()
    """
        % (seed.addr, SECRET),
        timeout=60,
    )
    r = _results(out)
    assert r["alive"] == [False] * 8
    assert r["bad"] == [] and r["wrong_thread"] == []
    total = 0
    for tid in range(8):
        calls, mismatches, errors, seqs = r["stats"][str(tid)]
        assert mismatches == 0 and errors == 0, r["stats"]
        assert calls == seqs and calls > 50, r["stats"]
        total += calls
        if tid % 2:
            assert r["local_order"][str(tid)] == seqs - 1
    # the remote counter saw every thread's sequence in order, complete
    remote_seqs = {tid: r["stats"][str(tid)][3] for tid in range(0, 8, 2)}
    got = remote.ask("[bad[:5], {str(k): v for k, v in order.items()}]", timeout=20)
    assert got[0] == []
    for tid, n in remote_seqs.items():
        if got[1].get(str(tid)) != n - 1:  # the last messages may still be on their way
            remote.run("wait_for(lambda: order.get(%d) == %d, 10)" % (tid, n - 1), timeout=15)
    print("hammer: %d calls in 10 s through the bridge" % total)


def test_bridge_api_from_threads():
    """snd/call/kil/port/inbox/mon/db_set/db_family/submit/run from ordinary threads; callbacks
    run in the hub thread; Timeout and PortDied reach the calling thread; cancelled guards undo when
    dropped; stop() fails waiting calls and refuses later ones."""
    out = run_python(
        _self_seeded("""
        hub = node.thread.ident
        res = {}
        where = []

        def adder(tag, a, b, reply):
            where.append(threading.get_ident() == hub)
            aemp_green.snd(reply, a + b)

        add = node.port(adder)
        res["call"] = node.call(add, "add", 1, 2, timeout=5)
        res["async"] = [f.result(5) for f in [node.call_async(add, "add", i, i, timeout=5)
                                               for i in range(5)]]
        # call from several threads at once
        out = {}
        ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, node.call(
            add, "add", i, 100, timeout=5))) for i in range(6)]
        [t.start() for t in ts]; [t.join() for t in ts]
        res["threads"] = [out[i] for i in range(6)]
        res["in_hub"] = all(where)

        silent = node.port(lambda *m: None)
        try:
            node.call(silent, "hello", timeout=0.2)
        except aemp_green.Timeout:
            res["timeout"] = True
        died = []
        node.mon(silent, lambda *reason: died.append((threading.get_ident() == hub, reason)))
        pending = node.call_async(silent, "hello", timeout=5)  # queued before the kil
        threading.Thread(target=node.kil, args=(silent, "bye", "now")).start()
        try:
            pending.result(10)
        except aemp_green.PortDied as exc:
            res["died"] = list(exc.reason)
        res["mon"] = node.run(lambda: died[0] if died else None)

        inbox = node.inbox()
        node.snd(inbox.id, "a", 1)
        node.snd(inbox.id, "b", 2)
        res["inbox"] = [inbox.receive("b", timeout=5), inbox.receive(timeout=5)]
        try:
            inbox.receive(timeout=0.05)
        except aemp_green.Timeout:
            res["inbox_timeout"] = True
        # a greenlet in the hub replies to the inbox from a call made inside submit()
        fut = node.submit(lambda: aemp_green.snd(inbox.id, "sum",
                                                 aemp_green.call(add, "add", 20, 22, timeout=5)))
        fut.result(5)
        res["submit"] = inbox.receive("sum", timeout=5)

        node.db_set("bridge_fam", "bare", 1)          # a bare statement: stays
        kept = node.db_set("bridge_fam", "kept", 2)    # cancelled: deleted
        first = node.db_family("bridge_fam", timeout=5)
        kept.cancel()  # the guard's undo is queued before the next query (FIFO through the bridge)
        res["db"] = [first, node.db_family("bridge_fam", timeout=5),
                     node.db_keys("bridge_fam", timeout=5)]
        try:
            node.db_set("no spaces allowed", "k")
        except ValueError:
            res["db_error"] = True

        # stop(): a call that is waiting fails, later calls are refused
        waiting = node.call_async(node.port(lambda *m: None), "never answered")
        node.stop()
        try:
            waiting.result(5)
        except RuntimeError as exc:
            res["stopped_pending"] = str(exc)
        try:
            node.snd(add, "x")
        except RuntimeError:
            res["stopped_snd"] = True
        res["thread_alive"] = node.thread.is_alive()
        print("RESULT " + json.dumps(res))
    """)
    )
    r = _results(out)
    assert r["call"] == [3]
    assert r["async"] == [[0], [2], [4], [6], [8]]
    assert r["threads"] == [[100 + i] for i in range(6)]
    assert r["in_hub"] is True
    assert r["timeout"] is True
    assert r["died"] == ["bye", "now"]
    assert r["mon"] == [True, ["bye", "now"]]
    assert r["inbox"] == [[2], ["a", 1]] and r["inbox_timeout"] is True
    assert r["submit"] == [[42]]
    first, after, keys = r["db"]
    assert first == {"bare": 1, "kept": 2}
    assert after == {"bare": 1} and keys == ["bare"]
    assert r["db_error"] is True
    assert "stopped" in r["stopped_pending"]
    assert r["stopped_snd"] is True and r["thread_alive"] is False


def test_post_and_on_stop():
    """post() runs a function in the hub thread, in order with the other operations, and is
    refused once stopped; on_stop() functions run in the hub thread at stop(), and at once in
    the caller when the bridge already stopped."""
    out = run_python(
        _self_seeded("""
        hub = node.thread.ident
        res = {}
        seen = []
        inbox = node.inbox()
        node.snd(inbox.id, "first")
        node.post(lambda: seen.append(["post", threading.get_ident() == hub]))
        node.post(aemp_green.snd, inbox.id, "second")
        res["order"] = [inbox.receive(timeout=5), inbox.receive(timeout=5)]
        res["post"] = node.run(lambda: list(seen))
        stopped = []
        node.on_stop(lambda: stopped.append(threading.get_ident() == hub))
        node.stop()
        res["on_stop"] = list(stopped)
        node.on_stop(lambda: stopped.append("late: " + str(threading.get_ident() == hub)))
        res["late"] = stopped[1:]
        try:
            node.post(print, "never")
        except RuntimeError:
            res["refused"] = True
        print("RESULT " + json.dumps(res))
    """)
    )
    r = _results(out)
    assert r["order"] == [["first"], ["second"]]
    assert r["post"] == [["post", True]]
    assert r["on_stop"] == [True] and r["late"] == ["late: False"]
    assert r["refused"] is True


def test_start_refuses_when_the_kernel_is_bound_or_configured():
    """start() raises a clear RuntimeError when aemp_green already runs on another hub, when
    configure() already ran, when called twice, or in a monkey-patched process; a failed
    configure() inside start() raises in the caller and leaves start() usable."""
    out = run_python("""
        import json, subprocess, sys
        res = {}
        # 1. kernel bound to the main thread's hub (after() uses the hub)
        import aemp_green
        from aemp_green import threaded
        aemp_green.after(60, lambda: None)
        try:
            threaded.start(norc=True)
        except RuntimeError as exc:
            res["bound"] = str(exc)
        print("RESULT " + json.dumps(res))
    """)
    assert "already bound to the gevent hub of thread" in _results(out)["bound"]

    out = run_python("""
        import json
        import aemp_green
        from aemp_green import threaded
        res = {}
        try:
            threaded.start(nodeid="x/%u", binds=["127.0.0.1:*"], norc=True,
                           monitor_timeout="not a number")
        except Exception as exc:
            res["bad_config"] = type(exc).__name__
        node = threaded.start(nodeid="x/%u", binds=["127.0.0.1:*"], norc=True, secret="x")
        res["retry"] = node.id.startswith("x/")
        try:
            threaded.start(norc=True)
        except RuntimeError as exc:
            res["twice"] = str(exc)
        res["current"] = threaded.current() is node
        node.stop()
        print("RESULT " + json.dumps(res))
    """)
    r = _results(out)
    assert r["bad_config"] in ("ConfigError", "ValueError", "TypeError")
    assert r["retry"] is True and r["current"] is True
    assert "already called" in r["twice"]

    out = run_python("""
        import json
        import aemp_green
        from aemp_green import threaded
        aemp_green.configure(nodeid="c/%u", binds=["127.0.0.1:*"], norc=True, secret="x")
        try:
            threaded.start(norc=True)
        except RuntimeError as exc:
            print("RESULT " + json.dumps(str(exc)))
    """)
    assert "already bound" in _results(out) or "configure() already ran" in _results(out)

    out = run_python("""
        from aemp_green import monkey; monkey.patch_all()
        import json
        from aemp_green import threaded
        try:
            threaded.start(norc=True)
        except RuntimeError as exc:
            print("RESULT " + json.dumps(str(exc)))
    """)
    assert "monkey-patched" in _results(out)


def test_pytest_process_kernel_stays_on_the_main_thread():
    """This process never configured a node, and its kernel (if bound) is the main thread's."""
    from aemp_green import _hub, config

    assert not config.is_configured()
    hub = _hub.current_hub()
    assert hub is None or hub.thread_ident == threading.main_thread().ident


def test_public_api_documents_itself_with_examples():
    """Every public name of aemp_green.threaded, and every public method and property of
    Node and Inbox, has a docstring with an example."""
    import inspect

    from aemp_green import threaded

    missing = []
    for name in threaded.__all__:
        obj = getattr(threaded, name)
        if "Example" not in (inspect.getdoc(obj) or ""):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, property):
                    member = member.fget
                if callable(member) and "Example" not in (inspect.getdoc(member) or ""):
                    missing.append("%s.%s" % (name, attr))
    assert missing == []
