"""What a user's ``except`` sees when a call fails (docs/running.md, "Errors"): each kind of
failure has its own exception type, and its text says what happened."""

import pytest

import aemp_green
from aemp_green import (
    NODE,
    AuthenticationFailed,
    NodeUnreachable,
    NoSuchPort,
    PortDied,
    Timeout,
    call,
    port,
)
from conftest import run_in_port
from netutil import free_port


def test_timeout_is_a_builtin_timeouterror():
    def body():
        silent = port(lambda *m: None)
        with pytest.raises(TimeoutError) as ei:
            call(silent, "ping", timeout=0.05)
        return ei.value

    err = run_in_port(body)
    assert isinstance(err, Timeout) and isinstance(err, aemp_green.AempError)
    assert "timed out after 0.05 s" in str(err)


def test_call_to_a_port_that_does_not_exist_raises_nosuchport():
    gone = NODE() + "#nosuchport"

    def body():
        with pytest.raises(NoSuchPort) as ei:
            call(gone, "ping", timeout=5)
        return ei.value

    err = run_in_port(body)
    assert isinstance(err, PortDied)
    assert err.reason[0] == "no_such_port"
    assert str(err) == "no such port %s: cannot monitor nonexistent port" % gone


def test_reasons_map_to_types():
    assert type(PortDied.from_reason(())) is PortDied
    assert str(PortDied.from_reason(())) == "port died (normal exit)"
    assert type(PortDied.from_reason(("die", "x"))) is PortDied
    e = PortDied.from_reason(("transport_error", "w/1", "connect timeout"))
    assert type(e) is NodeUnreachable and (e.node, e.why) == ("w/1", "connect timeout")
    assert str(e) == "node w/1 unreachable: connect timeout"
    a = PortDied.from_reason(
        ("transport_error", "w/1", "authentication failure/shared secret mismatch")
    )
    assert type(a) is AuthenticationFailed and isinstance(a, NodeUnreachable)


def test_call_to_a_node_nobody_listens_on_raises_nodeunreachable(cluster):
    """A real node calling a port on a node ID of the form host:port where nothing listens."""
    n = cluster.node("caller", connect_interval=0.5)
    target = "127.0.0.1:%d#srv" % free_port()
    n.run(
        """
        try:
            call(%r, "ping", timeout=10)
        except Exception as e:
            emit("err", type(e).__name__, str(e), isinstance(e, PortDied))
    """
        % target
    )
    name, text, is_portdied = n.expect("err", timeout=15)
    assert (name, is_portdied) == ("NodeUnreachable", True)
    assert text.startswith("node 127.0.0.1:") and "unreachable" in text


def test_remote_spawn_of_a_function_that_cannot_be_imported_reports_the_cause(cluster, tmp_path):
    """The spawning node's monitor gets the remote's exception type and text, not only
    no_such_port: for a missing module, and for a module whose own imports fail."""
    (tmp_path / "brokenmod.py").write_text(
        "import no_such_dependency_xyz\n\ndef run():\n    pass\n"
    )
    b = cluster.seed("b")
    b.run("import sys; sys.path.insert(0, %r)" % str(tmp_path))
    a = cluster.node("a", seeds=[b.addr])
    a.run("""
        wait_for(lambda: node_is_up("b"))
        for fn in ("nosuchmod_xyz.run", "brokenmod.run"):
            p = spawn("b", fn)
            mon(p, lambda *r, fn=fn: emit("died", fn, list(r)))
    """)
    got = dict(a.expect("died") for _ in range(2))
    assert got["nosuchmod_xyz.run"][0] == "die", got
    assert "ModuleNotFoundError: No module named 'nosuchmod_xyz'" in got["nosuchmod_xyz.run"][1], (
        got
    )
    assert got["brokenmod.run"][0] == "die", got
    assert (
        "importing brokenmod failed: ModuleNotFoundError: No module named "
        "'no_such_dependency_xyz'" in got["brokenmod.run"][1]
    ), got


def test_connect_failures_say_why(cluster):
    """Refused within a second with "connection refused", a wrong secret as
    AuthenticationFailed, instead of "connect timeout" after connect_interval for both."""
    addr = "127.0.0.1:%d" % free_port()
    good = cluster.node("good", nodeid=addr, binds=[addr])  # a host:port ID: dialled directly
    bad = cluster.node("bad", secret="not-the-secret", connect_interval=5)
    closed = "127.0.0.1:%d" % free_port()
    bad.run(
        """
        def report(target):
            t0 = time.monotonic()
            try:
                call(target, "ping", timeout=20)
            except PortDied as e:
                emit("why", target, type(e).__name__, e.why, time.monotonic() - t0)
        gevent.spawn(report, %r)
        gevent.spawn(report, %r)
    """
        % (closed + "#p", good.addr + "#p")
    )
    got = {}
    for _ in range(2):
        target, name, why, elapsed = bad.expect("why", timeout=15)
        got[target] = (name, why, elapsed)
    name, why, elapsed = got[closed + "#p"]
    assert name == "NodeUnreachable" and why.startswith("connection refused by " + closed), got
    assert elapsed < 2, got
    name, why, elapsed = got[good.addr + "#p"]
    assert name == "AuthenticationFailed", got
    assert "refused our authentication" in why or "secret mismatch" in why, got
    assert elapsed < 4, got


def test_database_query_without_seeds_fails_at_once_saying_why(cluster):
    """A node with no seeds that is no global node has no database: queries and db_mon raise
    NoDatabaseError at once instead of a Timeout after waiting."""
    n = cluster.node("lonely")
    n.run("""
        for what in ("db_family", "db_mon"):
            t0 = time.monotonic()
            try:
                if what == "db_family":
                    db_family("fam", timeout=10)
                else:
                    db_mon("fam", lambda *a: None)
            except aemp_green.NoDatabaseError as e:
                emit("nodb", what, str(e), time.monotonic() - t0)
    """)
    for what in ("db_family", "db_mon"):
        got, text, elapsed = n.expect("nodb", pred=lambda v, w=what: v[0] == w)
        assert text.startswith(
            "%s('fam'): this node has no seeds and is not a global node" % what
        ), text
        assert "Configure seeds" in text and elapsed < 1, (text, elapsed)


def test_check_local_messages_catches_what_could_not_cross_the_wire():
    """The check_local_messages setting (on in this test suite, tests/conftest.py): a local
    snd of a value no framing carries raises TypeError as a remote one would, instead of
    working until the port moves to another node."""
    from aemp_green import kernel, snd

    got = []
    p = port(lambda *m: got.append(m))
    with pytest.raises(TypeError, match="check_local_messages: this message could not reach"):
        snd(p, "job", object())
    snd(p, "job", {"fine": [1, 2.5, "x", None]}, b"bytes travel with cbor")
    with kernel.local_only():
        snd(p, "local", len)  # a message that is local by design
    kernel.check_local_messages(False)
    try:
        snd(p, "unchecked", object())
    finally:
        kernel.check_local_messages(True)
    assert [m[0] for m in got] == ["job", "local", "unchecked"]
