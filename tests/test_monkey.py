"""aemp_green.monkey: opt-in patching, its safety checks, and a legacy blocking program on a node.

Every test runs in a fresh subprocess: patching is per process and irreversible, and the pytest
process itself must stay unpatched.
"""

import json

from netutil import run_python


def _json_lines(out):
    assert out.returncode == 0, "rc=%s\nstdout:\n%s\nstderr:\n%s" % (
        out.returncode,
        out.stdout,
        out.stderr,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith(("[", "{"))]


def test_importing_aemp_green_patches_nothing():
    """Importing aemp_green (and its monkey and threaded modules) patches nothing and starts
    no hub; only patch_all() patches."""
    out = run_python("""
        import json, sys
        import aemp_green, aemp_green.monkey, aemp_green.threaded
        from aemp_green import _hub, kernel
        import gevent.monkey
        before = [gevent.monkey.is_module_patched(m) for m in ("socket", "time", "threading")]
        print(json.dumps([before, gevent.monkey.is_anything_patched(), _hub.hub is None,
                          aemp_green.monkey.is_patched(), aemp_green.monkey.problems()]))
        aemp_green.monkey.patch_all()
        print(json.dumps([gevent.monkey.is_module_patched("socket"),
                          aemp_green.monkey.is_patched()]))
    """)
    (before, anything, no_hub, patched, problems), after = _json_lines(out)
    assert before == [False, False, False] and not anything and no_hub and not patched
    assert problems == []
    assert after == [True, True]


def test_patch_all_binds_the_node_to_the_main_hub_and_blocking_code_cooperates():
    """After patch_all(): the kernel runs on the main thread's hub; queue.Queue.get,
    time.sleep and threading.Thread block only their greenlet while ports, timers and calls
    proceed."""
    out = run_python("""
        from aemp_green import monkey; hub = monkey.patch_all()
        import json, queue, threading, time
        import gevent
        from aemp_green import _hub, after, call, kernel, port, rcv, receive, snd, spawn
        assert monkey.patch_all() is hub            # idempotent
        q = queue.Queue()
        after(0.01, lambda: q.put("timer fired"))   # runs on the hub while we block in get()
        first = q.get(timeout=10)

        def echo():
            while True:
                x, reply = receive("echo")
                time.sleep(0.01)                     # cooperative inside a port too
                snd(reply, "echoed", x)

        e = spawn(echo)
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(call(e, "echo", i,
                                                                           timeout=10)))
                   for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        print(json.dumps([first, _hub.bound_hub() is hub, hub is gevent.get_hub(),
                          sorted(r[1] for r in results),
                          isinstance(threading.current_thread(), threading._MainThread)]))
    """)
    ((first, kernel_hub, main_hub, echoed, main_thread),) = _json_lines(out)
    assert first == "timer fired"
    assert kernel_hub and main_hub and main_thread
    assert echoed == [0, 1, 2, 3, 4]


def test_patch_all_refuses_when_blocking_users_came_first():
    """patch_all() raises RuntimeError naming what was imported/started too early: a running
    thread, a direct `from time import sleep`/`from socket import create_connection` in
    __main__, a socket subclass, requests/urllib3 already imported; nothing is patched then.
    force=True patches anyway."""
    out = run_python("""
        import json, sys, threading, types
        from time import sleep
        from socket import create_connection
        import socket
        class MySocket(socket.socket):
            pass
        sys.modules["urllib3"] = types.ModuleType("urllib3")   # stands in for the real one
        stop = threading.Event()
        t = threading.Thread(target=stop.wait, name="early-bird", daemon=True)
        t.start()
        from aemp_green import monkey
        import gevent.monkey
        try:
            monkey.patch_all()
        except RuntimeError as exc:
            msg = str(exc)
        else:
            msg = None
        print(json.dumps([msg, gevent.monkey.is_anything_patched()]))
        stop.set(); t.join()
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monkey.patch_all(force=True)
        print(json.dumps([gevent.monkey.is_module_patched("socket"), monkey.problems()]))
    """)
    (msg, patched_after_refusal), (forced, problems_after) = _json_lines(out)
    assert msg is not None and not patched_after_refusal
    assert "first statement" in msg and "force=True" in msg
    assert "'early-bird'" in msg
    assert "'__main__' holds the unpatched time.sleep as 'sleep'" in msg
    assert "socket.create_connection as 'create_connection'" in msg
    assert "'MySocket', a subclass of the unpatched socket.socket" in msg
    assert "urllib3 imported before patching" in msg
    assert forced and problems_after == []


def test_patch_all_refuses_outside_the_main_thread_and_next_to_the_threaded_bridge():
    """patch_all() from another thread is refused, and so is patching a process whose node
    already runs in a threaded bridge (kernel bound to another thread's hub)."""
    out = run_python("""
        import json, threading
        from aemp_green import monkey
        errors = []
        def other():
            try:
                monkey.patch_all()
            except RuntimeError as exc:
                errors.append(str(exc))
        t = threading.Thread(target=other, name="not-main")
        t.start(); t.join()
        from aemp_green import threaded
        node = threaded.start(nodeid="bridge/%u", binds=["127.0.0.1:*"], norc=True,
                              secret="x")
        try:
            monkey.patch_all()
        except RuntimeError as exc:
            errors.append(str(exc))
        node.stop()
        print(json.dumps(errors))
    """)
    (errors,) = _json_lines(out)
    assert len(errors) == 2, errors
    assert "must run in the main thread, not in 'not-main'" in errors[0]
    assert "already bound to the gevent hub of another thread" in errors[1]


def test_legacy_monkey_example_receives_and_sends_under_monkey(examples, cluster):
    """examples/legacy_monkey.py: a program made of threads, time.sleep, queue.Queue, a
    blocking TCP server and a blocking socket client, joined with monkey.patch_all(). Another
    node calls it (each reply goes through a worker thread and a blocking socket round trip)
    and subscribes to its ticker thread's messages."""
    examples.seed()
    legacy = examples.start("legacy", "legacy_monkey.py")
    legacy.expect(r"legacy: node \S+, port \S+ in legacy_service, .* 4 threads", 20)
    probe = cluster.node("probe", **examples.probe_config())
    probe.exec("""
        svc = wait_for(lambda: db_keys("legacy_service", timeout=5), 20, "legacy_service")[0]
        emit("svc", svc)
        replies = [gevent.spawn(call, svc, "upper", "hello legacy %d" % i, timeout=10)
                   for i in range(6)]
        gevent.joinall(replies, raise_error=True)
        emit("upper", [g.value for g in replies])
        ticks = port(lambda *msg: emit("tick", *msg))
        snd(svc, "subscribe", ticks)
    """)
    (svc,) = probe.expect("svc", 30)
    assert svc.startswith("legacy/")
    (upper,) = probe.expect("upper", 30)
    assert upper == [["upper", "HELLO LEGACY %d" % i] for i in range(6)]
    seen = [probe.expect("tick", 10) for _ in range(3)]
    ns = [t[1] for t in seen]  # emit("tick", "tick", n, time)
    assert ns == sorted(ns) and len(set(ns)) == 3
    legacy.expect(r"legacy: 0 jobs queued, 1 subscribers", 10)


def test_public_api_documents_itself_with_examples():
    """Every name in aemp_green.monkey.__all__ has a docstring with an example."""
    import inspect

    from aemp_green import monkey

    assert [
        n for n in monkey.__all__ if "Example" not in (inspect.getdoc(getattr(monkey, n)) or "")
    ] == []
