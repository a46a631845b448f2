"""aemp_green.aio: an asyncio program uses a node that runs in its own hub thread.

Each asyncio program runs in a subprocess (the bridge binds the kernel once per process and the
pytest process never starts one); the other nodes are real child node processes (``cluster``),
and the example runs as real processes (``examples``); both fixtures are in conftest.
"""

import json
import re
import signal
import textwrap
import urllib.error
import urllib.request

from conftest import wait_until
from netutil import SECRET, black_hole, free_port, run_python

_PRELUDE = """
import asyncio, json, os, signal, sys, threading, time
import aemp_green
from aemp_green import aio, kernel, threaded
res = {}

async def until(pred, timeout=10, what="a condition"):
    # a bounded poll (for effects in other processes only)
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)

def report():
    print("RESULT " + json.dumps(res, default=repr), flush=True)
"""


def _program(code, **fmt):
    """A ``python -c`` program: the prelude, then ``code`` (its ``%(name)s`` filled from
    ``fmt``), which defines ``async def main()``; the program runs it and prints ``res``."""
    body = textwrap.dedent(code) % fmt if fmt else textwrap.dedent(code)
    return _PRELUDE + body + "\nasyncio.run(main())\nreport()\n"


def _results(out):
    assert out.returncode == 0, "rc=%s\nstdout:\n%s\nstderr:\n%s" % (
        out.returncode,
        out.stdout,
        out.stderr[-5000:],
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, "no RESULT line\nstdout:\n%s\nstderr:\n%s" % (out.stdout, out.stderr[-5000:])
    return json.loads(lines[-1][7:])


def _self_seeded():
    addr = "127.0.0.1:%d" % free_port()
    return dict(nodeid="aio/%u", binds=[addr], seeds=[addr], norc=True, secret="x")


def test_call_receive_snd_mon_timeouts_and_errors():
    """call (one, many at once), Timeout (a TimeoutError), NoSuchPort, PortDied; ports with
    selective receive, concurrent receivers, async for, close and kill; monitors as loop
    callbacks (plain and coroutine, cancelled guards silent); all in the loop's thread."""
    out = run_python(
        _program(
            """
        async def main():
            node = await aio.start(**%(cfg)r)
            me = threading.get_ident()
            res["hub_thread"] = node.threaded.thread.ident != me

            def adder(tag, a, b, reply):
                aemp_green.snd(reply, a + b)

            add = await node.run(aemp_green.port, adder)
            silent = await node.run(aemp_green.port, lambda *m: None)
            res["call"] = await node.call(add, "add", 1, 2, timeout=5)
            res["gather"] = await asyncio.gather(
                *(node.call(add, "add", i, i, timeout=5) for i in range(200)))
            t0 = time.monotonic()
            try:
                await node.call(silent, "hello", timeout=0.2)
            except aemp_green.Timeout as exc:
                res["timeout"] = [isinstance(exc, TimeoutError), str(exc),
                                  round(time.monotonic() - t0, 1)]
            try:
                await node.call(node.id + "#nosuchport", "x", timeout=5)
            except aemp_green.NoSuchPort as exc:
                res["no_such_port"] = list(exc.reason)

            # monitors: plain and coroutine callbacks in the loop thread, a cancelled one silent
            died, fired = [], asyncio.Event()
            def on_death(*reason):
                died.append(["plain", threading.get_ident() == me, list(reason)])
            async def on_death_async(*reason):
                await asyncio.sleep(0)
                died.append(["coroutine", threading.get_ident() == me, list(reason)])
                fired.set()
            node.mon(silent, on_death)
            node.mon(silent, on_death_async)
            handled = []
            asyncio.get_running_loop().set_exception_handler(
                lambda loop, ctx: handled.append(repr(ctx.get("exception"))))
            def broken(*reason):
                raise ValueError("plain callback broke")
            async def broken_async(*reason):
                raise ValueError("coroutine callback broke")
            node.mon(silent, broken)
            node.mon(silent, broken_async)
            node.mon(silent, lambda *r: died.append(["cancelled one ran"])).cancel()
            pending = asyncio.ensure_future(node.call(silent, "never answered"))
            await asyncio.sleep(0)            # the call is handed over before the kil
            node.kil(silent, "bye", "now")
            try:
                await pending
            except aemp_green.PortDied as exc:
                res["port_died"] = [type(exc).__name__, list(exc.reason)]
            await asyncio.wait_for(fired.wait(), 5)
            res["mon"] = sorted(died)
            await until(lambda: len(handled) == 2, 5, "both callback errors")
            res["handled"] = sorted(handled)

            # ports: selective receive, Timeout, two receivers at once, async for, close
            p = await node.port()
            node.snd(p.id, "a", 1)
            node.snd(p.id, "b", 2)
            res["selective"] = [await p.receive("b", timeout=5), await p.receive(timeout=5)]
            try:
                await p.receive("b", timeout=0.05)
            except aemp_green.Timeout as exc:
                res["receive_timeout"] = str(exc)
            x = asyncio.ensure_future(p.receive("x", timeout=5))
            y = asyncio.ensure_future(p.receive("y", timeout=5))
            await asyncio.sleep(0)
            node.snd(p.id, "y", "for y")
            node.snd(p.id, "x", "for x")
            res["two_receivers"] = [await x, await y]
            for i in range(3):
                node.snd(p.id, "item", i)
            p.close()
            res["async_for"] = [msg async for msg in p]
            try:
                await p.receive(timeout=5)
            except aemp_green.PortDied as exc:
                res["after_close"] = list(exc.reason)

            q = await node.port()
            waiting = asyncio.ensure_future(q.receive())
            await asyncio.sleep(0)
            node.kil(q.id, "boom", 42)
            try:
                await waiting
            except aemp_green.PortDied as exc:
                res["killed"] = list(exc.reason)
            try:
                async for msg in q:
                    pass
            except aemp_green.PortDied as exc:
                res["killed_async_for"] = list(exc.reason)

            # a Node belongs to its loop: another thread's loop must attach its own
            def other_loop():
                async def use(n):
                    try:
                        await node.call(add, "add", 1, 1, timeout=5)
                    except RuntimeError as exc:
                        res["wrong_loop"] = str(exc)
                    res["attached"] = await aio.attach(node.threaded).call(
                        add, "add", 20, 22, timeout=5)
                asyncio.run(use(node))
            t = threading.Thread(target=other_loop)
            t.start()
            await asyncio.get_running_loop().run_in_executor(None, t.join)

            try:
                node.snd(p, "not an ID")
            except TypeError as exc:
                res["snd_port_object"] = str(exc)

            # a loop that ended while the node lives on: what arrives for it is dropped
            other = {}
            async def short_lived():
                other["node"] = n = aio.attach(node.threaded)
                other["port"] = (await n.port()).id
            t = threading.Thread(target=lambda: asyncio.run(short_lived()))
            t.start()
            await asyncio.get_running_loop().run_in_executor(None, t.join)
            for i in range(1000):
                node.snd(other["port"], "for nobody", i)
            await node.run(lambda: None)      # after the 1000 deliveries (FIFO)
            res["closed_loop_queue"] = len(other["node"]._inq)

            # shutdown: waiting awaits fail, later calls are refused
            r = await node.port()
            quiet = await node.run(aemp_green.port, lambda *m: None)
            waiting = [asyncio.ensure_future(r.receive()),
                       asyncio.ensure_future(node.call(quiet, "never answered"))]
            await asyncio.sleep(0)
            await node.shutdown()
            res["after_shutdown"] = []
            for w in waiting:
                try:
                    await w
                except RuntimeError as exc:
                    res["after_shutdown"].append(str(exc))
            try:
                node.snd(add, "x")
            except RuntimeError:
                res["refused_snd"] = True
            try:
                await node.call(add, "x")
            except RuntimeError:
                res["refused_call"] = True
            res["running"] = node.running
            res["thread_alive"] = node.threaded.thread.is_alive()
        """,
            cfg=_self_seeded(),
        )
    )
    r = _results(out)
    assert r["hub_thread"] is True
    assert r["call"] == [3]
    assert r["gather"] == [[2 * i] for i in range(200)]
    is_timeout, text, took = r["timeout"]
    assert is_timeout is True and "timed out after 0.2 s" in text and took < 2
    assert r["no_such_port"][0] == "no_such_port"
    assert r["port_died"] == ["PortDied", ["bye", "now"]]
    assert r["mon"] == [["coroutine", True, ["bye", "now"]], ["plain", True, ["bye", "now"]]]
    assert r["handled"] == [
        "ValueError('coroutine callback broke')",
        "ValueError('plain callback broke')",
    ]
    assert r["selective"] == [[2], ["a", 1]]
    assert "no 'b' message within 0.05 s" in r["receive_timeout"]
    assert r["two_receivers"] == [["for x"], ["for y"]]
    assert r["async_for"] == [["item", 0], ["item", 1], ["item", 2]]
    assert r["after_close"] == []
    assert r["killed"] == ["boom", 42] and r["killed_async_for"] == ["boom", 42]
    assert "outside its event loop" in r["wrong_loop"] and r["attached"] == [42]
    assert "use port.id" in r["snd_port_object"]
    assert r["closed_loop_queue"] == 0
    assert len(r["after_shutdown"]) == 2 and all("shut down" in e for e in r["after_shutdown"])
    assert r["refused_snd"] is True and r["refused_call"] is True
    assert r["running"] is False and r["thread_alive"] is False


def test_database_from_asyncio():
    """db_set (guard and bare), db_reg (gone with its port), db_del, db_mon (callbacks in the
    loop thread, the watch's own dict kept up to date), db_family/keys/values, their errors."""
    out = run_python(
        _program(
            """
        async def main():
            async with aio.start(**%(cfg)r) as node:
                me = threading.get_ident()
                events, changed = [], asyncio.Event()
                def watch(db, added, chg, deleted):
                    events.append([threading.get_ident() == me, dict(db), sorted(added),
                                   sorted(chg), sorted(deleted)])
                    changed.set()
                async def next_event(pred):
                    while not (events and pred(events[-1])):
                        changed.clear()
                        await asyncio.wait_for(changed.wait(), 5)
                    return events[-1]
                w = await node.db_mon("aio_fam", watch)
                kept = await node.db_set("aio_fam", "kept", 1)
                await node.db_set("aio_fam", "bare", {"v": 2})   # its guard dropped: stays
                res["seen"] = await next_event(lambda e: len(e[1]) == 2)
                res["family"] = await node.db_family("aio_fam", timeout=5)
                res["keys"] = sorted(await node.db_keys("aio_fam", timeout=5))
                res["values"] = await node.db_values("aio_fam", timeout=5)
                kept.cancel()
                res["after_cancel"] = await next_event(lambda e: "kept" in e[4])
                await node.db_set("aio_fam", "bare", {"v": 3})
                res["changed"] = await next_event(lambda e: e[3] == ["bare"])
                await node.db_del("aio_fam", "bare")
                res["after_del"] = await next_event(lambda e: "bare" in e[4])
                p = await node.port()
                await node.db_reg("aio_fam", p.id, "registered")
                await next_event(lambda e: p.id in e[2])
                p.close()
                res["reg_gone"] = (await next_event(lambda e: p.id in e[4]))[1]
                w.cancel()
                await node.db_set("aio_fam", "unwatched", 1)
                res["family_end"] = await node.db_family("aio_fam", timeout=5)
                res["events_after_cancel"] = [e for e in events if "unwatched" in e[2]]
                res["in_loop"] = all(e[0] for e in events)
                for bad in [("no spaces allowed", "k"), ("aio_fam", "k", {1, 2})]:
                    try:
                        await node.db_set(*bad)
                    except (ValueError, TypeError) as exc:
                        res.setdefault("errors", []).append(type(exc).__name__)
        """,
            cfg=_self_seeded(),
        )
    )
    r = _results(out)
    assert r["seen"][1] == {"kept": 1, "bare": {"v": 2}}
    assert r["family"] == {"kept": 1, "bare": {"v": 2}}
    assert r["keys"] == ["bare", "kept"]
    assert sorted(r["values"], key=json.dumps) == sorted([1, {"v": 2}], key=json.dumps)
    assert r["after_cancel"][1] == {"bare": {"v": 2}}
    assert r["changed"][1] == {"bare": {"v": 3}}
    assert r["after_del"][1] == {}
    assert r["reg_gone"] == {}
    assert r["family_end"] == {"unwatched": 1} and r["events_after_cancel"] == []
    assert r["in_loop"] is True
    assert r["errors"] == ["ValueError", "TypeError"]


def test_cancelled_awaits_leave_nothing_behind():
    """A task cancelled in receive takes no message (also one already handed to it: it goes to
    the next receiver, in arrival order); cancelled or timed-out calls leave no reply port or
    monitor in the hub; a cancelled port() leaves no port."""
    out = run_python(
        _program(
            """
        async def main():
            async with aio.start(**%(cfg)r) as node:
                silent = await node.run(aemp_green.port, lambda *m: None)
                def hub_state():
                    p = kernel.lookup_port(silent)
                    return [len(kernel.port_table), len(p.monitors or ())]
                base = await node.run(hub_state)
                res["base"] = base

                calls = [asyncio.ensure_future(node.call(silent, "x")) for _ in range(20)]
                await asyncio.sleep(0)    # every task has handed its call over
                res["during"] = await node.run(hub_state)
                for c in calls:
                    c.cancel()
                await asyncio.gather(*calls, return_exceptions=True)
                res["after_cancel"] = await node.run(hub_state)   # FIFO: after the clean-ups
                for _ in range(5):
                    try:
                        await node.call(silent, "x", timeout=0.01)
                    except aemp_green.Timeout:
                        pass
                res["after_timeouts"] = await node.run(hub_state)

                p = await node.port()
                t = asyncio.ensure_future(p.receive("x"))
                await asyncio.sleep(0)
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    res["cancelled"] = True
                node.snd(p.id, "x", 1)
                res["next_receive"] = await p.receive("x", timeout=5)
                res["waiters"] = len(p._waiters)

                # the race: a message handed to a receiver whose task is cancelled before it
                # resumes; another message arrives after it
                t = asyncio.ensure_future(p.receive())
                await asyncio.sleep(0)
                p._deliver(["first"])     # what the node's drain does when a message arrives
                p._deliver(["second"])
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass
                res["order"] = [await p.receive(timeout=1), await p.receive(timeout=1)]
                # two receivers: the cancelled one's message goes to the other
                a = asyncio.ensure_future(p.receive())
                b = asyncio.ensure_future(p.receive())
                await asyncio.sleep(0)
                p._deliver(["only"])
                a.cancel()
                res["handed_on"] = await asyncio.wait_for(b, 5)
                res["stash"] = p.pending()

                mk = asyncio.ensure_future(node.port())
                await asyncio.sleep(0)
                mk.cancel()
                n = await node.run(lambda: len(kernel.port_table))
                deadline = time.monotonic() + 5
                while n != base[0] + 1 and time.monotonic() < deadline:   # +1: p
                    n = await node.run(lambda: len(kernel.port_table))
                res["after_port_cancel"] = n - base[0]
        """,
            cfg=_self_seeded(),
        )
    )
    r = _results(out)
    base = r["base"]
    assert r["during"] == [base[0] + 20, base[1] + 20]
    assert r["after_cancel"] == base
    assert r["after_timeouts"] == base
    assert r["cancelled"] is True and r["next_receive"] == [1] and r["waiters"] == 0
    assert r["order"] == [["first"], ["second"]]
    assert r["handed_on"] == ["only"] and r["stash"] == 0
    assert r["after_port_cancel"] == 1


def test_remote_node_call_database_monitor_and_its_death(cluster):
    """Against a real child node: the asyncio side finds its ports with db_mon, calls them
    (one and hundreds at once), gets replies in its own port, writes the database the other
    node reads; when that node is killed the monitor fires with a transport_error in the loop
    thread, a pending call raises NodeUnreachable and the family forgets its ports."""
    seed = cluster.seed()
    remote = cluster.node("remote", seeds=[seed.addr])
    remote.run("""
        up = port(lambda tag, text, reply: snd(reply, text.upper(), NODE()))
        silent = port(lambda *m: None)
        def looker():
            while True:
                family, reply = receive("look")
                snd(reply, db_family(family, timeout=5))
        db_set("aio_remote", "upper", up)
        db_set("aio_remote", "silent", silent)
        db_set("aio_remote", "looker", spawn(looker))
    """)
    out = run_python(
        _program(
            """
        async def main():
            async with aio.start(nodeid="asyncio/%%u", binds=["127.0.0.1:*"], seeds=[%(seed)r],
                                 secret=%(secret)r, norc=True) as node:
                me = threading.get_ident()
                fam, seen = {}, asyncio.Event()
                def watch(db, added, changed, deleted):
                    fam.clear(); fam.update(db); seen.set()
                await node.db_mon("aio_remote", watch)
                while len(fam) < 3:
                    seen.clear()
                    await asyncio.wait_for(seen.wait(), 15)
                res["keys"] = sorted(await node.db_keys("aio_remote", timeout=5))
                up, silent, looker = fam["upper"], fam["silent"], fam["looker"]
                res["call"] = await node.call(up, "upper", "hello", timeout=5)
                replies = await asyncio.gather(
                    *(node.call(up, "upper", "m%%d" %% i, timeout=10) for i in range(300)))
                res["many"] = all(r == ["M%%d" %% i, "remote"] for i, r in enumerate(replies))
                p = await node.port()
                node.snd(up, "upper", "to my port", p.id)
                res["to_port"] = await p.receive(timeout=5)
                await node.db_set("aio_written", node.id, {"by": "asyncio"})
                res["remote_reads"] = await node.call(looker, "look", "aio_written", timeout=10)

                died = []
                node.mon(silent, lambda *reason: died.append(
                    [threading.get_ident() == me] + list(reason)))
                pending = asyncio.ensure_future(node.call(silent, "never answered"))
                await asyncio.sleep(0.1)
                os.kill(%(pid)d, signal.SIGKILL)
                try:
                    await asyncio.wait_for(pending, 15)
                except aemp_green.NodeUnreachable as exc:
                    res["unreachable"] = [type(exc).__name__, exc.reason[0], exc.reason[1]]
                await until(lambda: died, 10, "the monitor")
                res["mon"] = died[0][:3]
                await until(lambda: not fam, 15, "the family to forget the dead node")
                res["family_after"] = await node.db_family("aio_remote", timeout=5)
        """,
            seed=seed.addr,
            secret=SECRET,
            pid=remote.proc.pid,
        ),
        timeout=60,
    )
    r = _results(out)
    assert r["keys"] == ["looker", "silent", "upper"]
    assert r["call"] == ["HELLO", "remote"]
    assert r["many"] is True
    assert r["to_port"] == ["TO MY PORT", "remote"]
    (written,) = r["remote_reads"]
    assert list(written.values()) == [{"by": "asyncio"}]
    assert r["unreachable"] == ["NodeUnreachable", "transport_error", "remote"]
    assert r["mon"] == [True, "transport_error", "remote"]
    assert r["family_after"] == {}


def test_start_errors():
    """A configuration error is raised by the awaited start() (and start() can be retried);
    a second start() and attach() without a bridge raise RuntimeError."""
    out = run_python(
        _program("""
        async def main():
            try:
                aio.attach()
            except RuntimeError as exc:
                res["attach"] = str(exc)
            try:
                await aio.start(nodeid="x/%u", binds=["127.0.0.1:*"], norc=True,
                                monitor_timeout="not a number")
            except Exception as exc:
                res["bad_config"] = type(exc).__name__
            async with aio.start(nodeid="x/%u", binds=["127.0.0.1:*"], norc=True,
                                 secret="x") as node:
                res["retry"] = node.id.startswith("x/")
                try:   # no seeds and not a seed itself: no database to ask
                    await node.db_keys("anything", timeout=5)
                except aemp_green.NoDatabaseError as exc:
                    res["no_database"] = str(exc)
                try:
                    await aio.start(norc=True)
                except RuntimeError as exc:
                    res["twice"] = str(exc)
            res["stopped"] = node.running
        """)
    )
    r = _results(out)
    assert "no threaded bridge" in r["attach"]
    assert r["bad_config"] in ("ConfigError", "ValueError", "TypeError")
    assert r["retry"] is True and "already called" in r["twice"] and r["stopped"] is False
    assert "no seeds" in r["no_database"]


def test_database_query_times_out_when_no_global_node_answers():
    """With a seed that never answers, db_family/db_keys raise Timeout after their timeout
    and the node goes on (a call to a local port still works)."""
    with black_hole() as addr:
        out = run_python(
            _program(
                """
            async def main():
                async with aio.start(nodeid="lonely/%%u", binds=["127.0.0.1:*"],
                                     seeds=[%(addr)r], secret="x", norc=True) as node:
                    for query in (node.db_family, node.db_keys, node.db_values):
                        t0 = time.monotonic()
                        try:
                            await query("fam", timeout=0.3)
                        except aemp_green.Timeout as exc:
                            res.setdefault("timeouts", []).append(
                                [str(exc), time.monotonic() - t0 < 3])
                    echo = await node.run(aemp_green.port,
                                          lambda tag, reply: aemp_green.snd(reply, "still here"))
                    res["after"] = await node.call(echo, "ping", timeout=5)
            """,
                addr=addr,
            )
        )
    r = _results(out)
    assert [t[1] for t in r["timeouts"]] == [True] * 3
    assert "db_family('fam') timed out after 0.3 s" in r["timeouts"][0][0]
    assert "db_values('fam')" in r["timeouts"][2][0]
    assert r["after"] == ["still here"]


def test_bridge_stopped_from_a_thread_fails_the_waiting_awaits():
    """The threaded bridge stopped directly (not through aio): its on_stop hook fails the
    receive and call still waiting in the event loop with RuntimeError."""
    out = run_python(
        _program(
            """
        async def main():
            node = await aio.start(**%(cfg)r)
            p = await node.port()
            quiet = await node.run(aemp_green.port, lambda *m: None)
            waiting = [asyncio.ensure_future(p.receive()),
                       asyncio.ensure_future(node.call(quiet, "never answered"))]
            await asyncio.sleep(0)
            await asyncio.get_running_loop().run_in_executor(None, node.threaded.stop)
            for w in waiting:
                try:
                    await asyncio.wait_for(w, 5)
                except RuntimeError as exc:
                    res.setdefault("failed", []).append(str(exc))
            res["running"] = node.running
        """,
            cfg=_self_seeded(),
        )
    )
    r = _results(out)
    assert len(r["failed"]) == 2 and all("shut down" in e for e in r["failed"]), r
    assert r["running"] is False


def _get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_aio_http_example_answers_requests_by_calling_worker_nodes(examples):
    """examples/aio_http.py: two worker nodes and the asyncio HTTP server as real processes;
    requests are answered by calls to both workers (round robin, and all at once); when a
    worker is killed the server still answers from the other; SIGTERM shuts it down cleanly."""
    examples.seed()
    w1 = examples.start("worker1", "aio_http.py", "worker")
    w2 = examples.start("worker2", "aio_http.py", "worker")
    node1 = w1.expect(r"aio_http worker (\S+): ready", 20).group(1)
    node2 = w2.expect(r"aio_http worker (\S+): ready", 20).group(1)
    web = examples.start("server", "aio_http.py", "server", "0")
    m = web.expect(r"aio_http: node (\S+): http://127\.0\.0\.1:(\d+)/", 20)
    base = "http://127.0.0.1:%s" % m.group(2)

    status, info = wait_until(
        lambda: (lambda r: r if len(r[1]["workers"]) == 2 else None)(_get(base + "/workers")),
        20,
        "both workers in /workers",
    )
    assert status == 200 and info["node"] == m.group(1)

    answers = [_get(base + "/upper?text=hello%20" + str(i)) for i in range(4)]
    assert [a[1]["result"] for a in answers] == ["HELLO %d" % i for i in range(4)]
    assert {a[1]["node"] for a in answers} == {node1, node2}
    assert _get(base + "/add?a=20&b=22")[1]["result"] == 42
    status, both = _get(base + "/upper_all?text=x")
    assert status == 200 and sorted(both["results"]) == sorted([["X", node1], ["X", node2]])
    assert _get(base + "/add?a=one")[0] == 400
    assert _get(base + "/nope")[0] == 404

    w1.kill()
    wait_until(
        lambda: len(_get(base + "/workers")[1]["workers"]) == 1,
        20,
        "the killed worker to leave /workers",
    )
    answers = [_get(base + "/upper?text=still") for _ in range(3)]
    assert answers == [(200, {"result": "STILL", "node": node2})] * 3

    web.kill(signal.SIGTERM)
    assert web.wait(20) == 0
    assert re.search(r"aio_http: shut down", web.tail())


def test_public_api_documents_itself_with_examples():
    """Every public name of aemp_green.aio, and every public method and property of its
    classes, has a docstring with an example; every function is fully annotated."""
    import inspect

    from aemp_green import aio

    missing, untyped = [], []
    for name in aio.__all__:
        obj = getattr(aio, name)
        members = [(name, obj)]
        if inspect.isclass(obj):
            members += [
                ("%s.%s" % (name, attr), m)
                for attr, m in vars(obj).items()
                if not attr.startswith("_") or attr == "__anext__"
            ]
        for label, member in members:
            if isinstance(member, property):
                member = member.fget
            if not callable(member):
                continue
            if "Example" not in (inspect.getdoc(member) or ""):
                missing.append(label)
            if inspect.isfunction(member):
                sig = inspect.signature(member)
                if sig.return_annotation is inspect.Signature.empty:
                    untyped.append(label)
    assert missing == [] and untyped == []
