"""Supervisor: Erlang-style restarts built on ``mon`` (strategies, restart types, restart
intensity, registration, placement on candidate nodes).

Local children run in this process (ports, spawn and mon need no ``configure()``); the
placement test uses child nodes, one of which is killed.
"""

import pytest

import aemp_green
from aemp_green import SELF, kil, mon, receive
from aemp_green import supervisor as sv
from conftest import Collector, flush, wait_until


class Starts(Collector):
    """Records ``(name, port)`` for every child start; ``current()`` maps name -> port."""

    def current(self):
        cur = {}
        for name, port in self.items:
            cur[name] = port
        return cur


def worker(log, name):
    """A child: logs its start, then waits until killed."""
    log(name, SELF())
    receive("never")


def returns_first_time(log, name):
    """A child whose first incarnation ends normally at once; later ones wait."""
    first = name not in [n for n, _ in log.items]
    log(name, SELF())
    if not first:
        receive("never")


def specs(log, names, **kw):
    return [sv.child_spec(n, worker, log, n, **kw) for n in names]


@pytest.fixture
def sups():
    """Supervisors started by a test; stopped (and their children gone) afterwards."""
    started = []
    yield started
    for s in started:
        sv.stop(s)
    flush()


def run_sup(sups, children, **kw):
    s = sv.start(children, **kw)
    sups.append(s)
    return s


def died_with(port):
    col = Collector()
    mon(port, col)
    return col


@pytest.mark.parametrize(
    "strategy,restarted",
    [
        ("one_for_one", ["b"]),
        ("one_for_all", ["a", "b", "c"]),
        ("rest_for_one", ["b", "c"]),
    ],
)
def test_strategy_restarts_the_right_children(sups, strategy, restarted):
    """Killing child b of [a, b, c] restarts b only (one_for_one), all three in start order
    (one_for_all) or b and the ones started after it (rest_for_one); siblings the supervisor
    stops die with ``("shutdown",)`` first; untouched children keep their port."""
    log = Starts()
    sup = run_sup(sups, specs(log, "abc"), strategy=strategy)
    log.wait(3)
    before = log.current()
    assert [c[:2] for c in sv.which_children(sup)] == [[n, before[n]] for n in "abc"]
    watch = {n: died_with(before[n]) for n in "abc"}
    kil(before["b"], "boom")
    log.wait(3 + len(restarted))
    flush()
    assert [name for name, _ in log.items[3:]] == restarted
    after = log.current()
    for n in "abc":
        if n in restarted:
            assert after[n] != before[n]
            assert watch[n].wait_one() == (("boom",) if n == "b" else ("shutdown",))
        else:
            assert after[n] == before[n] and watch[n].items == []
    assert [c[1] for c in sv.which_children(sup)] == [after[n] for n in "abc"]
    assert len(log.items) == 3 + len(restarted)  # nothing else restarted


def test_restart_limit_kills_the_supervisor_with_reason(sups):
    """More than ``max_restarts`` restarts within ``period`` and the supervisor stops its
    children and dies with ``("shutdown", "max_restarts", child_id, [reason...])``."""
    log = Starts()
    sup = run_sup(sups, specs(log, "ab"), max_restarts=2, period=60)
    sup_died = died_with(sup)
    log.wait(2)
    for i in range(3):
        a = log.current()["a"]
        kil(a, "crash", i)
        if i < 2:
            log.wait(3 + i)
    reason = sup_died.wait_one()
    assert reason == ("shutdown", "max_restarts", "a", ["crash", 2])
    assert len(log.items) == 4  # two restarts, not a third
    b_died = died_with(log.current()["b"])
    assert b_died.wait_one() in (
        ("shutdown",),
        ("no_such_port", "cannot monitor nonexistent port", log.current()["b"]),
    )
    assert not aemp_green.kernel.lookup_port(log.current()["b"])


def test_restarts_outside_the_period_do_not_add_up(sups, monkeypatch):
    """Only restarts within the last ``period`` seconds count (the clock is faked)."""
    now = [1000.0]
    monkeypatch.setattr(sv, "_clock", lambda: now[0])
    log = Starts()
    sup = run_sup(sups, specs(log, "a"), max_restarts=1, period=5)
    log.wait(1)
    for i in range(4):
        kil(log.current()["a"], "crash")
        log.wait(2 + i)
        now[0] += 6  # each restart is older than the period when the next one comes
    assert aemp_green.kernel.lookup_port(sup) is not None  # still alive


def test_restart_types(sups):
    """permanent: restarted also after a normal exit; transient: restarted only after a
    crash; temporary: never restarted and forgotten."""
    log = Starts()
    sup = run_sup(
        sups,
        [
            sv.child_spec("perm", returns_first_time, log, "perm"),
            sv.child_spec("trans", worker, log, "trans", restart="transient"),
            sv.child_spec("temp", worker, log, "temp", restart="temporary"),
        ],
    )
    wait_until(lambda: [n for n, _ in log.items].count("perm") == 2)  # returned, came back
    cur = log.current()
    kil(cur["trans"], "crash")
    wait_until(lambda: [n for n, _ in log.items].count("trans") == 2)
    kil(log.current()["trans"])  # a normal exit: not restarted
    kil(cur["temp"], "crash")
    wait_until(lambda: [c[0] for c in sv.which_children(sup)] == ["perm", "trans"])
    assert dict((c[0], c[1]) for c in sv.which_children(sup))["trans"] is None
    assert [n for n, _ in log.items].count("temp") == 1


def test_child_management_requests(sups):
    """which_children / terminate_child / restart_child / delete_child / start_child."""
    log = Starts()
    sup = run_sup(sups, specs(log, "a"))
    log.wait(1)
    a = log.current()["a"]
    a_died = died_with(a)
    sv.terminate_child(sup, "a")
    assert a_died.wait_one() == ("shutdown",)
    assert sv.which_children(sup) == [["a", None, aemp_green.NODE()]]
    with pytest.raises(KeyError):
        sv.terminate_child(sup, "nope")
    new = sv.restart_child(sup, "a")
    assert log.wait(2)[1] == ("a", new)
    with pytest.raises(ValueError):
        sv.restart_child(sup, "a")
    with pytest.raises(ValueError):
        sv.delete_child(sup, "a")
    p = sv.start_child(sup, sv.child_spec("b", worker, log, "b"))
    assert log.wait(3)[2] == ("b", p)
    with pytest.raises(ValueError):
        sv.start_child(sup, sv.child_spec("b", worker, log, "b"))
    sv.terminate_child(sup, "b")
    sv.delete_child(sup, "b")
    assert [c[0] for c in sv.which_children(sup)] == ["a"]


def test_stopping_or_killing_the_supervisor_stops_children(sups):
    """``stop`` (a normal kill) or any kill of the supervisor stops its children first."""
    for how in ("stop", "kill"):
        log = Starts()
        sup = sv.start(specs(log, "ab"))
        log.wait(2)
        watch = [died_with(p) for p in log.current().values()]
        if how == "stop":
            sv.stop(sup)
        else:
            kil(sup, "killed")
        assert [w.wait_one() for w in watch] == [("shutdown",), ("shutdown",)]


def test_bad_specs_are_refused():
    """Bad strategies and specs raise ``ValueError``/``TypeError`` in the caller."""
    with pytest.raises(ValueError):
        sv.start([], strategy="one_for_some")
    with pytest.raises(ValueError):
        sv.start([sv.child_spec("a", worker), sv.child_spec("a", worker)])
    with pytest.raises(ValueError):
        sv.start([sv.child_spec("a", worker, nodes=["x"])])
    with pytest.raises(ValueError):
        sv.start([sv.child_spec("a", worker, restart="sometimes")])
    with pytest.raises(TypeError):
        sv.start([("a", worker)])


def test_supervise_in_a_spawned_port_and_nesting(sups):
    """``supervise`` turns SELF into a supervisor (AEMP style); a supervisor can supervise
    another one: the inner one giving up is a crash of a child of the outer one."""
    log = Starts()

    def inner_app():
        sv.supervise(specs(log, ["x"]), max_restarts=0, period=60)

    outer = run_sup(sups, [sv.child_spec("inner", inner_app)], max_restarts=5, period=60)
    log.wait(1)
    inner = sv.which_children(outer)[0][1]
    assert sv.which_children(inner)[0][:2] == ["x", log.current()["x"]]
    inner_died = died_with(inner)
    kil(log.current()["x"], "crash")  # the inner supervisor gives up at once ...
    assert inner_died.wait_one() == ("shutdown", "max_restarts", "x", ["crash"])
    log.wait(2)  # ... and the outer one restarts it, with a fresh x
    assert sv.which_children(outer)[0][1] != inner


# --------------------------------------------------------------------------- across nodes


def test_child_moves_to_another_node_when_its_node_dies(cluster):
    """A child spec with candidate nodes [X, Y] starts on X; when X dies the child comes back
    on Y, and the ``register`` family always names the current incarnation, so a client on
    another node finds it; a crash on Y restarts it on Y (it stays where it ran)."""
    seed = cluster.seed("seed")
    x, y, c = cluster.start(
        ("X", {"seeds": [seed.addr]}), ("Y", {"seeds": [seed.addr]}), ("C", {"seeds": [seed.addr]})
    )
    want = {n.nodeid: n.binds for n in (x, y, c)}
    seed.run(
        "wait_for(lambda: all(db_family(\"'l\", timeout=5).get(k) == v for k, v in %r.items()))"
        % (want,),
        timeout=15,
    )
    c.run("""
        def _seen(db, added, changed=(), deleted=()):
            for k in added:
                emit("registered", k, db[k])
        G = db_mon("sup_workers", _seen)
    """)
    seed.run("""
        from aemp_green import supervisor as sv
        REPORT = port(lambda *m: emit(*m))
        SUP = sv.start([sv.child_spec("w", "dcfuncs.worker", REPORT, "w", nodes=["X", "Y"],
                                      register="sup_workers")], max_restarts=5, period=60)
        mon(SUP, lambda *r: emit("sup_died", *r))
    """)
    name, w1, where = seed.expect("started", timeout=15)
    assert (name, where) == ("w", "X") and w1.startswith("X#")
    assert c.expect("registered", timeout=15, pred=lambda v: v[0] == w1) == [w1, "w"]

    x.kill()
    name, w2, where = seed.expect("started", timeout=15)
    assert (name, where) == ("w", "Y") and w2.startswith("Y#")
    assert c.expect("registered", timeout=15, pred=lambda v: v[0] == w2) == [w2, "w"]
    assert c.ask("sorted(G and db_keys('sup_workers', timeout=5))") == [w2]
    assert c.ask("call(%r, 'ping', timeout=5)" % w2) == ["pong", "w", "Y"]

    y.run("kil(%r, 'crash')" % w2)
    name, w3, where = seed.expect("started", timeout=15)
    assert (name, where) == ("w", "Y") and w3 != w2
    assert seed.ask("[c[1:] for c in sv.which_children(SUP)]") == [[w3, "Y"]]
    assert "sup_died" not in [i[0] for i in seed.backlog]


def test_resilient_chat_server_example(cluster):
    """docs/supervisor.md: the chat server supervised on candidate nodes [chat1, chat2] and
    registered in ``eg_chat_server``; a client on another node joins it, talks, and when
    chat1 dies rejoins the new incarnation on chat2, where talking works again."""
    seed = cluster.seed("seed")
    c1, c2, cl = cluster.start(
        ("chat1", {"seeds": [seed.addr]}),
        ("chat2", {"seeds": [seed.addr]}),
        ("client", {"seeds": [seed.addr]}),
    )
    want = {n.nodeid: n.binds for n in (c1, c2, cl)}
    seed.run(
        "wait_for(lambda: all(db_family(\"'l\", timeout=5).get(k) == v for k, v in %r.items()))"
        % (want,),
        timeout=15,
    )
    seed.run("""
        from aemp_green import supervisor
        SUP = supervisor.start([supervisor.child_spec(
            "chat", "dcfuncs.chat_server", nodes=["chat1", "chat2"], register="eg_chat_server")],
            max_restarts=5, period=30)
    """)
    cl.run("""
        ME = port(lambda tag, line: emit("line", line))
        STATE = {"server": None}

        def _join(server):
            STATE["server"] = server
            snd(server, "join", ME, "alice")
            mon(server, lambda *reason: emit("server_gone", *reason))

        def _servers(db, added, changed=(), deleted=()):
            for server in added:
                if server != STATE["server"]:
                    _join(server)

        G = db_mon("eg_chat_server", _servers)
    """)
    assert cl.expect("line", timeout=15) == ["alice (joins on chat1)"]
    cl.run('snd(STATE["server"], "privmsg", "alice", "hi")')
    assert cl.expect("line") == ["alice: hi"]
    c1.kill()
    reason = cl.expect("server_gone", timeout=15)
    assert reason[:2] == ["transport_error", "chat1"]
    assert cl.expect("line", timeout=15) == ["alice (joins on chat2)"]
    cl.run('snd(STATE["server"], "privmsg", "alice", "still here")')
    assert cl.expect("line") == ["alice: still here"]
