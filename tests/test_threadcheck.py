"""The hub-thread check: the plain aemp_green API refuses calls from a foreign OS thread.

aemp_green's kernel is bound to the gevent hub of the first thread that uses it; gevent hubs
are not thread-safe. Once bound, a call from another OS thread raises ``RuntimeError`` (naming
the function, the calling thread and the hub thread, and pointing to ``threaded.start()``'s
``Node`` and ``run_callback_threadsafe``) before it changes anything. Greenlets of the hub
thread, monkey-patched "threads" (greenlets too) and calls before the kernel is bound are not
affected.

The first tests run in the pytest process, whose kernel is bound to the main thread's hub; the
others run in child processes (``configure()``, the threaded bridge, monkey-patching).
"""

import threading

import pytest

import aemp_green
from aemp_green import (
    _hub,
    NODE,
    after,
    cal,
    call,
    kernel,
    kil,
    mon,
    mon_guard,
    peval,
    port,
    rcv,
    receive,
    snd,
    spawn,
)
from conftest import flush, run_in_port
from netutil import run_python
from test_threaded import _results

_ADVICE = ("threaded.start()", "run_callback_threadsafe")


def _in_thread(fn, name="intruder"):
    """Run ``fn()`` in a plain OS thread; return its result or the exception it raised."""
    out = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the test
            out["exc"] = exc

    t = threading.Thread(target=body, name=name)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the thread did not finish"
    return out.get("exc", out.get("value"))


@pytest.mark.timeout(30)
def test_plain_thread_gets_a_clear_error_and_nothing_changes(collector):
    """With the kernel bound to the main thread's hub, a plain threading.Thread calling snd,
    port, call, ... gets RuntimeError naming the function and both threads and saying what to
    do instead; the port table, the ID counter and the scheduler queues are untouched, and the
    main thread's ports keep working."""
    _hub.bound_hub()  # the pytest process's kernel lives on the main thread's hub
    assert _hub.hub.thread_ident == threading.main_thread().ident
    target = collector.port()
    echo = port(lambda tag, reply: snd(reply, "echoed", tag))
    snd(target, "before")  # from the hub thread: fine
    collector.wait(1)
    ports_before = dict(kernel.port_table)
    next_id = kernel._next_id

    attempts = {
        "snd": lambda: snd(target, "from the thread"),
        "port": lambda: port(),
        "call": lambda: call(echo, "x", timeout=5),
        "cal": lambda: cal(echo, "x", cb=print, timeout=5),
        "kil": lambda: kil(target),
        "rcv": lambda: rcv(target, "tag", print),
        "mon": lambda: mon(target, print),
        "mon_guard": lambda: mon_guard(target, object()),
        "spawn": lambda: spawn(print),
        "receive": lambda: receive(timeout=1),
        "after": lambda: after(0, target, "late"),
        "peval": lambda: peval(target, print),
    }
    remote = {  # other routes of snd: to another node, to this node's node port
        "snd": [lambda: snd("elsewhere#abc", "x"), lambda: snd(NODE(), "devnull")],
    }
    results = {}

    def intruder():
        for name, fn in attempts.items():
            results[name] = _catch(fn)
        results["snd_routes"] = [_catch(fn) for fn in remote["snd"]]
        results["NODE"] = NODE()  # pure reads stay allowed

    assert _in_thread(intruder) is None
    assert results.pop("NODE") == NODE()
    for exc in results.pop("snd_routes"):
        assert isinstance(exc, RuntimeError) and "aemp_green.snd()" in str(exc), exc
    for name, exc in results.items():
        assert isinstance(exc, RuntimeError), (name, exc)
        msg = str(exc)
        assert msg.startswith("aemp_green.%s() called from thread 'intruder'" % name), msg
        assert "bound to the gevent hub of thread 'MainThread'" in msg, msg
        assert all(a in msg for a in _ADVICE), msg

    # nothing was changed by the refused calls
    assert kernel.port_table == ports_before and kernel._next_id == next_id
    assert not kernel.dispatch_queue and not kernel._ready and not kernel._draining
    assert (
        kernel.lookup_port(target).handlers is None and kernel.lookup_port(target).monitors is None
    )
    # ... and the main thread's ports still work
    snd(target, "after")
    assert collector.wait(2) == [("before",), ("after",)]
    assert run_in_port(call, echo, "y", timeout=5) == ["echoed", "y"]
    kil(echo)
    kil(target)


@pytest.mark.timeout(30)
def test_database_and_node_calls_from_a_plain_thread_are_refused_before_any_change(collector):
    """db_set, db_del, db_reg, db_family/keys/values (both forms), db_mon, mon_nodes and shutdown
    check the thread first, like the port API: RuntimeError naming the call, and the local
    database, the pending requests, the watchers and the node's links stay as they were."""
    from aemp_green import connect, node
    from aemp_green.globaldb import sync

    _hub.bound_hub()
    target = collector.port()
    local_db = {f: dict(d) for f, d in sync._local_db.items()}
    state = (
        dict(sync._pending),
        sync._req_id,
        dict(sync._mon_cbs),
        list(node._node_watchers),
        connect.listener_addresses(),
        dict(node._nodes),
    )
    attempts = {
        "db_set": lambda: aemp_green.db_set("tc_fam", "k", 1),
        "db_del": lambda: aemp_green.db_del("tc_fam", "k"),
        "db_reg": lambda: aemp_green.db_reg("tc_fam", target),
        "db_family": lambda: aemp_green.db_family("tc_fam", timeout=1),
        "db_keys": lambda: aemp_green.db_keys("tc_fam", cb=print),
        "db_values": lambda: aemp_green.db_values("tc_fam", timeout=1),
        "db_mon": lambda: aemp_green.db_mon("tc_fam", print),
        "mon_nodes": lambda: aemp_green.mon_nodes(print),
        "shutdown": lambda: aemp_green.shutdown(),
    }
    results = {}

    def intruder():
        for name, fn in attempts.items():
            results[name] = _catch(fn)

    assert _in_thread(intruder) is None
    for name, exc in results.items():
        assert isinstance(exc, RuntimeError), (name, exc)
        assert str(exc).startswith("aemp_green.%s() called from thread 'intruder'" % name), exc
    assert {f: dict(d) for f, d in sync._local_db.items()} == local_db
    assert (
        dict(sync._pending),
        sync._req_id,
        dict(sync._mon_cbs),
        list(node._node_watchers),
        connect.listener_addresses(),
        dict(node._nodes),
    ) == state
    assert kernel.lookup_port(target).monitors is None  # db_reg added no monitor
    kil(target)


def _catch(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    return None


@pytest.mark.timeout(30)
def test_foreign_snd_to_a_waiting_greenlet_port_is_refused_but_not_lost(collector):
    """A greenlet port blocked in receive hands its message to the wake-up before the kernel
    can check the thread: the kernel finishes that wake-up safely in the hub thread (the port
    gets the message, once) and still raises in the foreign thread."""
    _hub.bound_hub()

    def worker():
        collector("got", *receive("job", timeout=10))

    w = spawn(worker)
    flush()  # the worker is blocked in receive("job"), no wake-up pending
    assert kernel.lookup_port(w).waiting == "job" and not kernel._ready_scheduled
    exc = _in_thread(lambda: snd(w, "job", 1))
    assert isinstance(exc, RuntimeError), exc
    assert "aemp_green.snd() called from thread 'intruder'" in str(exc)
    assert "still handed over to the hub thread" in str(exc)
    assert collector.wait(1) == [("got", 1)]
    flush()
    assert collector.items == [("got", 1)]


@pytest.mark.timeout(30)
def test_hub_thread_greenlets_pass_and_the_dispatch_cache_is_per_thread(collector):
    """Many greenlets of the hub thread send in turn (each one passes, the last one is cached);
    a foreign thread right after the main greenlet's send is still refused."""
    import gevent

    _hub.bound_hub()
    target = collector.port()
    gevent.joinall([gevent.spawn(snd, target, i) for i in range(20)], raise_error=True)
    snd(target, "main")  # the cached greenlet is the main one now
    exc = _in_thread(lambda: snd(target, "foreign"))
    assert isinstance(exc, RuntimeError) and "aemp_green.snd()" in str(exc)
    snd(target, "main again")
    items = collector.wait(22)
    assert sorted(i[0] for i in items[:20]) == list(range(20))
    assert items[20:] == [("main",), ("main again",)]
    kil(target)


@pytest.mark.timeout(30)
def test_before_binding_any_thread_may_bind_then_the_others_are_refused():
    """Nothing changes before the kernel is bound: a worker thread may send to a callback
    port, and its after() binds the kernel to its own hub, as before; from then on the main
    thread is the foreign one."""
    res = _results(
        run_python(
            """
        import json, threading
        import gevent
        from gevent.event import Event
        from aemp_green import _hub, after, kernel, port, snd
        res = {}
        got = []
        p = port(lambda *m: got.append(list(m)))
        snd(p, "main, unbound")
        res["unbound_after_main"] = _hub.hub is None

        def worker():
            snd(p, "worker, unbound")
            fired = Event()
            after(0, fired.set)                     # binds the kernel to this thread's hub
            res["fired"] = fired.wait(10)
            res["bound_here"] = _hub.hub.thread_ident == threading.get_ident()
            snd(p, "worker, bound")

        t = threading.Thread(target=worker, name="binder")
        t.start(); t.join(20)
        try:
            snd(p, "main, bound elsewhere")
        except RuntimeError as exc:
            res["main_refused"] = str(exc)
        res["got"] = got
        print("RESULT " + json.dumps(res))
    """,
            timeout=25,
        )
    )
    assert res["unbound_after_main"] and res["fired"] and res["bound_here"]
    assert res["got"] == [["main, unbound"], ["worker, unbound"], ["worker, bound"]]
    assert res["main_refused"].startswith("aemp_green.snd() called from thread 'MainThread'")
    assert "hub of thread 'binder'" in res["main_refused"]


@pytest.mark.timeout(30)
def test_threaded_bridge_main_thread_plain_api_refused_node_handle_works():
    """With threaded.start(), the main thread calling plain aemp_green.snd/call/port/kil gets
    the error (also for a remote port of the configured node); node.snd works, and inside the
    hub thread (node.run) the plain API works."""
    res = _results(
        run_python(
            """
        import json
        import aemp_green
        from aemp_green import threaded
        node = threaded.start(nodeid="tc/%u", binds=["127.0.0.1:*"], norc=True, secret="x",
                              thread_name="aemp-hub")
        res = {}
        inbox = node.inbox()

        def attempt(name, fn):
            try:
                fn()
                res[name] = "no error"
            except RuntimeError as exc:
                res[name] = str(exc)

        attempt("snd", lambda: aemp_green.snd(inbox.id, "plain"))
        attempt("snd_remote", lambda: aemp_green.snd("elsewhere#x", "plain"))
        attempt("call", lambda: aemp_green.call(inbox.id, "x", timeout=5))
        attempt("port", lambda: aemp_green.port())
        attempt("kil", lambda: aemp_green.kil(inbox.id))
        attempt("after", lambda: aemp_green.after(0, inbox.id, "plain"))
        node.snd(inbox.id, "via node")
        res["first"] = inbox.receive(timeout=10)
        res["in_hub"] = node.run(lambda: aemp_green.snd(inbox.id, "from the hub thread")
                                 or aemp_green.NODE(), timeout=10)
        res["second"] = inbox.receive(timeout=10)
        res["left"] = inbox.pending()
        res["id"] = node.id
        node.stop()
        print("RESULT " + json.dumps(res))
    """,
            timeout=25,
        )
    )
    for name in ("snd", "snd_remote", "call", "port", "kil", "after"):
        fname = "snd" if name == "snd_remote" else name
        assert res[name].startswith("aemp_green.%s() called from thread 'MainThread'" % fname), res[
            name
        ]
        assert "hub of thread 'aemp-hub'" in res[name] and "Node handle" in res[name]
    assert res["first"] == ["via node"] and res["second"] == ["from the hub thread"]
    assert res["in_hub"] == res["id"] and res["left"] == 0


@pytest.mark.timeout(30)
def test_monkey_mode_threads_are_greenlets_and_pass_real_threads_do_not():
    """Under monkey.patch_all(), threading.Thread starts greenlets of the hub thread (their
    threading.get_ident() is per greenlet, the OS thread is the main one): snd, port, call,
    spawn, receive, after and kil all work from them. A real OS thread (gevent's threadpool)
    is still refused."""
    res = _results(
        run_python(
            """
        from aemp_green import monkey; monkey.patch_all()
        import json, threading
        import gevent
        from gevent.event import Event
        from gevent.monkey import get_original
        from aemp_green import _hub, after, call, kernel, kil, port, receive, snd, spawn
        os_ident = get_original("_thread", "get_ident")
        res = {"idents": [], "calls": [], "received": []}
        echo = port(lambda tag, reply: snd(reply, "echo", tag))
        got = []
        done, all_received = Event(), Event()

        def received(v):
            res["received"].append(v)
            if len(res["received"]) == 4:
                all_received.set()

        def sink_cb(*m):
            got.append(list(m))
            if len(got) == 8:
                done.set()

        sink = port(sink_cb)

        def body(i):
            res["idents"].append([threading.get_ident(), os_ident()])
            kil(port())
            snd(sink, "snd", i)
            after(0, sink, "after", i)
            res["calls"].append(call(echo, i, timeout=10))
            w = spawn(lambda: snd(sink_reply, "w", receive("ping")[0]))
            sink_reply = port(lambda tag, v: received(v))
            snd(w, "ping", i)

        threads = [threading.Thread(target=body, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        res["done"] = done.wait(10) and all_received.wait(10)
        res["got"] = sorted(got)
        idents = res.pop("idents")
        res["greenlet_idents_differ"] = (len(idents) == 4 and all(
            t != o and o == os_ident() for t, o in idents))
        res["hub_is_this_os_thread"] = (_hub.hub.thread_ident == os_ident()
                                        and _hub.hub is gevent.get_hub())
        try:
            gevent.get_hub().threadpool.spawn(snd, sink, "from a real thread").get(timeout=10)
            res["pool"] = "no error"
        except RuntimeError as exc:
            res["pool"] = str(exc)
        print("RESULT " + json.dumps(res))
    """,
            timeout=25,
        )
    )
    assert res["greenlet_idents_differ"] and res["hub_is_this_os_thread"] and res["done"]
    assert sorted(res["calls"]) == [["echo", i] for i in range(4)]
    assert res["got"] == sorted([["snd", i] for i in range(4)] + [["after", i] for i in range(4)])
    assert sorted(res["received"]) == [0, 1, 2, 3]
    assert res["pool"].startswith("aemp_green.snd() called from thread "), res["pool"]
