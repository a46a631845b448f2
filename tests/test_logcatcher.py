"""LogCatcher (docs/api.md#side-services): every node streams its log records to interested nodes;
``catch(level)`` on one node collects them all, new nodes included, and re-logs them there.

The sending side (``ForwardingHandler``, the ``_req_catch`` request) is tested in this process
(which never calls ``configure()``); collection across a network uses child nodes.
"""

import logging
import threading
import time

import pytest

import aemp_green
from aemp_green import logcatcher
from conftest import Collector, flush, wait_until

app = logging.getLogger("lc_test.app")


@pytest.fixture
def subscribed():
    """A local collector port subscribed at INFO; unsubscribed (and checked) afterwards."""
    app.setLevel(logging.DEBUG)
    col = Collector()
    p = col.port()
    logcatcher._req_catch(p, logging.INFO)
    try:
        yield p, col
    finally:
        logcatcher._req_catch(p, None)
        aemp_green.kil(p)
        wait_until(lambda: logcatcher.subscribers() == {})  # other ports: when their kill lands
        assert not [
            h for h in logging.getLogger().handlers if isinstance(h, logcatcher.ForwardingHandler)
        ]


def records(col):
    """Every record ``[created, levelno, name, text]`` the collector got, in order."""
    return [r for item in col.items if item[0] == "logs" for r in item[3]]


def test_records_are_forwarded_with_level_filter(subscribed):
    """Records at the subscribed level or above go to the port as ``["logs", node, dropped,
    [[created, levelno, name, text], ...]]``; lower ones do not; exceptions are included."""
    p, col = subscribed
    app.debug("too low")
    app.info("hello %s", "world")
    try:
        1 / 0
    except ZeroDivisionError:
        app.exception("it broke")
    wait_until(lambda: len(records(col)) >= 2)
    flush()
    recs = records(col)
    assert [(r[1], r[2], r[3].splitlines()[0]) for r in recs] == [
        (logging.INFO, "lc_test.app", "hello world"),
        (logging.ERROR, "lc_test.app", "it broke"),
    ]
    assert "ZeroDivisionError" in recs[1][3]
    assert all(abs(r[0] - time.time()) < 60 for r in recs)
    assert col.items[0][1] == aemp_green.NODE() and col.items[0][2] == 0


def test_buffer_is_bounded_drops_oldest_and_counts(subscribed):
    """Logging never blocks: 3000 records logged without yielding keep only the newest
    ``BUFFER`` (1000); the next batch reports how many were dropped."""
    p, col = subscribed
    for i in range(3000):
        app.info("r%d", i)
    wait_until(lambda: records(col) and records(col)[-1][3] == "r2999")
    recs = records(col)
    assert len(recs) == logcatcher.BUFFER
    assert recs[0][3] == "r2000"
    assert sum(item[2] for item in col.items) == 2000
    assert all(len(item[3]) <= logcatcher.BATCH for item in col.items)


def test_no_feedback_loops(subscribed):
    """Records produced while a batch is shipped (here: by the receiving handler, which runs
    in the shipping greenlet), caught records and this module's own records are not sent."""
    p, col = subscribed
    inner = Collector()

    def noisy(*msg):
        inner(*msg)
        app.warning("handler saw %d records", len(msg[3]))

    q = aemp_green.port(noisy)
    logcatcher._req_catch(q, logging.INFO)
    try:
        app.info("one")
        rec = app.makeRecord(app.name, logging.INFO, __file__, 1, "already caught", None, None)
        rec.aemp_caught = True
        app.handle(rec)
        logging.getLogger("aemp_green.logcatcher").warning("own logger")
        wait_until(lambda: inner.items)
        flush(20)
        assert [r[3] for item in inner.items for r in item[3]] == ["one"]
        assert [r[3] for r in records(col)] == ["one"]
    finally:
        aemp_green.kil(q)


def test_subscription_ends_with_its_port(subscribed):
    """When a subscribed port dies (also: its node became unreachable) it is unsubscribed; the
    handler leaves the root logger with the last subscriber."""
    p, col = subscribed
    q = aemp_green.port(lambda *m: None)
    logcatcher._req_catch(q, logging.WARNING)
    assert logcatcher.subscribers() == {p: logging.INFO, q: logging.WARNING}
    aemp_green.kil(q, "gone")
    wait_until(lambda: q not in logcatcher.subscribers())
    assert logcatcher.subscribers() == {p: logging.INFO}


def test_records_from_other_threads(subscribed):
    """``emit`` is safe from a non-gevent OS thread: the record arrives through the loop's
    async watcher."""
    p, col = subscribed
    t = threading.Thread(target=lambda: app.info("from a thread"))
    t.start()
    t.join()
    wait_until(lambda: records(col))
    assert [r[3] for r in records(col)] == ["from a thread"]


def test_catch_relogs_with_node_and_delay_prefix(caplog):
    """The catching side re-logs each record through the logger of the same name with a
    ``[node±dt]`` prefix and ``aemp_*`` attributes; ``catch(None)`` stops (its port dies)."""
    caplog.set_level(logging.DEBUG)
    p = logcatcher.catch(logging.INFO)
    try:
        created = time.time() - 1.5
        aemp_green.snd(
            p,
            "logs",
            "far/node",
            3,
            [
                [created, logging.WARNING, "lc_test.remote", "disk full"],
                [created, logging.DEBUG, "lc_test.remote", "below the level"],
            ],
        )
        wait_until(lambda: [r for r in caplog.records if getattr(r, "aemp_caught", False)])
        caught = [r for r in caplog.records if getattr(r, "aemp_caught", False)]
        dropped = [r for r in caught if "dropped" in r.getMessage()]
        assert len(dropped) == 1 and "3 log records" in dropped[0].getMessage()
        (rec,) = [r for r in caught if r.name == "lc_test.remote"]
        assert rec.levelno == logging.WARNING and rec.aemp_node == "far/node"
        assert rec.aemp_created == created
        msg = rec.getMessage()
        assert msg.startswith("[far/node+1.") and msg.endswith("] disk full"), msg
    finally:
        assert logcatcher.catch(None) is None
    died = Collector()
    aemp_green.mon(p, died)
    assert died.wait_one() == ("no_such_port", "cannot monitor nonexistent port", p)


# --------------------------------------------------------------------------- across processes

CAPTURE = """
import logging, sys
class _Cap(logging.Handler):
    def emit(self, r):
        if getattr(r, "aemp_caught", False):
            emit("caught", r.aemp_node, r.name, r.levelname, r.getMessage())
logging.getLogger().addHandler(_Cap())
from aemp_green import logcatcher
"""


def test_catch_collects_from_all_nodes_including_late_ones(cluster):
    """Node A catches at INFO: records of the seed and of B (configure() loads the module on
    every node; the request by name would load it otherwise) arrive with ``[node±dt]``, DEBUG ones do not, A's own records are
    not doubled; C joining later is caught too; ``catch(None)`` unsubscribes everywhere; and
    when the catcher's node dies its subscriptions end."""
    seed = cluster.seed("seed")
    a, b = cluster.start(("A", {"seeds": [seed.addr]}), ("B", {"seeds": [seed.addr]}))
    a.run(CAPTURE)
    for n in (seed, b):
        assert n.ask("'aemp_green.logcatcher' in __import__('sys').modules") is True
    a.run("CATCHER = logcatcher.catch(logging.INFO)")
    for n in (seed, b):
        n.run(
            """
            import logging, sys
            # the catch request itself loads the module here
            wait_for(lambda: "aemp_green.logcatcher" in sys.modules
                     and sys.modules["aemp_green.logcatcher"].subscribers(), timeout=15)
            import aemp_green.logcatcher as logcatcher
            logging.getLogger("app.%s").debug("quiet")
            logging.getLogger("app.%s").info("hello from %s")
        """
            % (n.name, n.name, n.name),
            timeout=20,
        )
    a.run('logging.getLogger("app.A").warning("A itself")')
    got = {}
    for _ in range(2):
        node, name, level, msg = a.expect(
            "caught", timeout=10, pred=lambda v: v[1].startswith("app.")
        )
        got[node] = (name, level, msg)
    for n in ("seed", "B"):
        name, level, msg = got[n]
        assert (name, level) == ("app.%s" % n, "INFO")
        assert msg.startswith("[%s+" % n) or msg.startswith("[%s-" % n), msg
        assert msg.endswith("] hello from %s" % n), msg

    # a node that joins later is caught too
    (c,) = cluster.start(("C", {"seeds": [seed.addr]}))
    c.run(
        """
        import aemp_green.logcatcher as logcatcher, logging
        wait_for(lambda: logcatcher.subscribers(), timeout=15)
        logging.getLogger("app.C").error("late %d", 42)
    """,
        timeout=20,
    )
    node, name, level, msg = a.expect(
        "caught", timeout=10, pred=lambda v: v[0] == "C" and v[1] == "app.C"
    )
    assert level == "ERROR" and msg.endswith("] late 42")
    assert not [i for i in a.backlog if i[0] == "caught" and (i[1] == "A" or "quiet" in i[4])]

    # stop: every node drops the subscription (and its handler)
    a.run("logcatcher.catch(None)")
    for n in (seed, b, c):
        n.run("wait_for(lambda: not logcatcher.subscribers(), timeout=10)", timeout=15)

    # catch again, then the catcher's node dies: the subscriptions end by themselves
    a.run("logcatcher.catch('WARNING')")
    b.run("wait_for(lambda: logcatcher.subscribers(), timeout=15)", timeout=20)
    a.kill()
    for n in (seed, b, c):
        n.run(
            """
            wait_for(lambda: not logcatcher.subscribers(), timeout=15)
            logging.getLogger("app").warning("nobody listens")
        """,
            timeout=20,
        )
