"""The soak test (``bench/soak.py``): its short mode end to end, and its verdict logic.

``test_soak_short`` runs ``bench/soak.py --seconds 20`` as a subprocess: a seed and three
workers (w1 never killed, w2/w3 SIGKILLed and restarted about every 3 s) flooding
sequence-numbered streams between every pair of workers. It asserts the run's ``summary``:
passed, no violations (no duplicates, no reordering, no holes, every lost suffix covered by
a monitor that fired), at least one kill and every kill survived (the restarted worker
rejoined the mesh), thousands of messages moved, and RSS / greenlet growth of the never-killed
processes under 10%. On failure the assertion message carries the run's output and the log
tails of its processes (the logs stay in the test's tmp dir).

The ``judge_*`` tests feed ``soak.judge`` synthetic events, so the checker is shown to catch
what it claims to catch (a soak that cannot fail proves nothing).

The last test is the regression test of the library bug the 10-minute soak found (a hole in a
stream after a link broke, covered by a monitor that fired too late to stop the sender),
reproduced deterministically; fixed in ``node.RemoteNode`` (sends to ports whose monitors are
pending after a transport error are dropped until those monitors ran).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest


REPO = Path(__file__).resolve().parents[1]
SOAK = REPO / "bench" / "soak.py"


def _load_soak():
    spec = importlib.util.spec_from_file_location("aemp_bench_soak", SOAK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


soak = _load_soak()


def _logs(log_dir, n=25):
    parts = []
    for p in sorted(Path(log_dir).glob("*.log")):
        lines = p.read_text(errors="replace").splitlines()
        parts.append("----- %s\n%s" % (p.name, "\n".join(lines[-n:])))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_soak_short(tmp_path):
    log_dir = tmp_path / "logs"
    cmd = [
        sys.executable,
        str(SOAK),
        "--seconds",
        "20",
        "--workers",
        "3",
        "--exempt",
        "1",
        "--kill-every",
        "3",
        "--deadline",
        "100",
        "--log-dir",
        str(log_dir),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=str(REPO))
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - the soak's own deadline is 100 s
        pytest.fail(
            "bench/soak.py overran 110 s; output so far:\n%s\n%s" % (exc.stdout, _logs(log_dir))
        )
    events = []
    for line in proc.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    context = "rc=%s\nstdout:\n%s\nstderr:\n%s\nlogs:\n%s" % (
        proc.returncode,
        proc.stdout[-6000:],
        proc.stderr[-3000:],
        _logs(log_dir),
    )
    assert events and events[-1]["event"] == "summary", context
    s = events[-1]
    assert "error" not in s, context
    assert s["violations"] == 0, context
    assert s["gaps_observed"] == 0, context
    assert s["kills"] >= 1 and s["kills_survived"] == s["kills"], context
    assert s["messages_moved"] > 20_000, context
    assert not s["mesh_missing"], context
    for name, pct in list(s["rss_growth_pct"].items()) + list(s["greenlets_growth_pct"].items()):
        assert pct is not None and pct < 10.0, (name, context)
    assert s["pass"] is True and proc.returncode == 0, context
    kinds = {e["event"] for e in events}
    assert {"start", "mesh", "kill", "messages", "losses", "violations", "stability"} <= kinds


# --------------------------------------------------------------------------- the verdict logic


def _proc(name, killed=False, report=None):
    return SimpleNamespace(name=name, killed_at=1.0 if killed else None, report=report)


def _stream(sender, to, sent=None, finacked=None):
    end = None if sent is None else {"inc": "x", "to": to, "sent": sent, "finacked": finacked}
    return {"sender": sender, "to": to, "end": end}


def _fired(n, acked=0, reason=("transport_error", "w2", "Unexpected end-of-file")):
    return {"n": n, "acked": acked, "reason": list(reason)}


def test_judge_clean_stream_completes():
    rx = _proc("w2.1", report={"streams": {"w1#a": [500, 500, 0, 0]}})
    v = soak.judge(
        {"w1#a": _stream(_proc("w1.1"), "w2#r", sent=500, finacked=500)}, {}, [], [], {"w2#r": rx}
    )
    assert v["violations"] == [] and v["completed_streams"] == 1


def test_judge_duplicate_or_reordering_is_a_violation():
    rx = _proc("w2.1")
    v = soak.judge({}, {}, [], [(rx, {"inc": "w1#a", "last": 10, "got": 10})], {})
    assert [x["kind"] for x in v["violations"]] == ["duplicate_or_reordered"]


def test_judge_a_hole_is_a_violation_even_when_a_monitor_fired():
    rx = _proc("w2.1")
    gap = (rx, {"inc": "w1#a", "last": 100, "got": 150})  # 101..149 missing, 150 delivered

    def kinds(fired):
        v = soak.judge({}, fired, [gap], [], {})
        return [x["kind"] for x in v["violations"]], v["gaps_covered_by_monitors"]

    assert kinds({}) == (["hole_without_monitor"], 0)
    # the monitor fired before the first missing number (101) was sent: it covers nothing
    assert kinds({"w1#a": _fired(100)}) == (["hole_without_monitor"], 0)
    # 150 was sent after the monitor fired (the sender would have stopped): not covered
    assert kinds({"w1#a": _fired(140)}) == (["hole_without_monitor"], 0)
    # the monitor fired after 101..150 were sent: covered, still a hole (the soak's bug)
    assert kinds({"w1#a": _fired(200)}) == (["hole_after_monitor_fired"], 1)


def test_judge_lost_suffix_needs_a_monitor():
    w1 = _proc("w1.1")
    dead_rx = _proc("w2.1", killed=True)
    live_rx = _proc("w3.1", report={"streams": {"w1#b": [90, 90, 0, 0]}})
    streams = {
        "w1#a": _stream(w1, "w2#r", sent=300, finacked=None),  # receiver died, no monitor
        "w1#b": _stream(w1, "w3#r", sent=100, finacked=90),
    }  # suffix lost, no monitor
    v = soak.judge(streams, {}, [], [], {"w2#r": dead_rx, "w3#r": live_rx})
    assert sorted(x["kind"] for x in v["violations"]) == ["loss_without_monitor"] * 2
    # the same streams ended by their monitors: explained
    streams = {
        "w1#a": _stream(w1, "w2#r", sent=300, finacked=None),
        "w1#b": _stream(w1, "w3#r", sent=100, finacked=None),
    }
    fired = {"w1#a": _fired(300, acked=256), "w1#b": _fired(100, acked=0)}
    v = soak.judge(streams, fired, [], [], {"w2#r": dead_rx, "w3#r": live_rx})
    assert v["violations"] == []
    assert v["streams_ended_by_monitor"] == 2 and v["messages_unacked_when_monitors_fired"] == 144
    assert v["messages_lost_proven_and_explained"] == 10  # w3 got 90 of the 100


def test_judge_receiving_beyond_the_fire_is_a_violation():
    rx = _proc("w2.1", report={"streams": {"w1#a": [120, 120, 0, 0]}})
    v = soak.judge(
        {"w1#a": _stream(_proc("w1.1"), "w2#r")}, {"w1#a": _fired(100)}, [], [], {"w2#r": rx}
    )
    assert [x["kind"] for x in v["violations"]] == ["received_beyond_fire"]


def test_judge_sender_death_and_unfinished_streams():
    streams = {
        "w2#a": _stream(_proc("w2.1", killed=True), "w1#r"),  # ended by its sender's death
        "w3#a": _stream(_proc("w3.1"), "w1#r"),
    }  # alive sender, never ended: a violation
    v = soak.judge(streams, {}, [], [], {})
    assert v["streams_ended_by_sender_death"] == 1
    assert [x["kind"] for x in v["violations"]] == ["stream_never_ended"]


# --------------------------------------------------------------------------- the bug it found


def test_no_hole_when_sends_follow_a_broken_link_before_the_monitor_callback_ran(cluster):
    """Found by the soak: a stream whose link broke must not continue after a hole.

    docs/api.md#monitoring: "after mon starts, every message sent to the port is delivered, in
    order, or the monitor fires: there are never holes in the sequence". A streams 1..100 to a port
    on B, then A's link to B breaks the way ``Link._raw_send`` breaks it when a write fails (the
    soak hit it with EPIPE on a link to a SIGKILLed peer that A had not noticed yet), then A sends
    101..200 in the same loop turn, before its monitor callback could run, then a marker to another
    port on B. Once the marker arrived everything A sent before it has arrived or never will (one
    link, in order). What B got must be a prefix of 1..200 (the monitor fired for the rest), never
    1, 101..200.
    """
    seed = cluster.seed("seed")
    a, b = cluster.start(("A", {"seeds": [seed.addr]}), ("B", {"seeds": [seed.addr]}))
    want = {a.nodeid: a.binds, b.nodeid: b.binds}  # both registered: A can look B up
    seed.run(
        "wait_for(lambda: all(db_family(\"'l\", timeout=5).get(k) == v"
        " for k, v in %r.items()))" % (want,),
        timeout=15,
    )
    b.run("GOT = []\nPB = port()\nrcv(PB, 'seq', GOT.append)\nPM = port(lambda *m: emit('marker'))")
    pb, pm = b.ask("PB"), b.ask("PM")
    a.run(
        """
        FIRED = []
        mon(%r, lambda *r: FIRED.append(list(r)))
        wait_for(lambda: node_is_up("B"), 10)
    """
        % pb,
        timeout=15,
    )
    a.run(
        """
        link = node.get_node("B").link
        for i in range(1, 101):
            snd(%r, "seq", i)
        link.close("write error: [Errno 32] Broken pipe (simulated)")
        for i in range(101, 201):
            snd(%r, "seq", i)
        FIRED_BEFORE_101 = bool(FIRED)
        wait_for(lambda: FIRED, 10)
        snd(%r, "marker")
    """
        % (pb, pb, pm),
        timeout=15,
    )
    assert a.ask("FIRED_BEFORE_101") is False  # the callback had not run when 101..200 went out
    assert a.ask("FIRED[0][:2]") == ["transport_error", "B"]
    b.expect("marker", timeout=15)
    got = b.ask("GOT")
    assert got == list(range(1, len(got) + 1)), "hole: B got %d messages: %s ... %s" % (
        len(got),
        got[:3],
        got[-3:],
    )
