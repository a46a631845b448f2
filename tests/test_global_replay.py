"""The global/database protocol (``g_*``) driven in-process against the Perl recordings.

No ``configure()``, no sockets: the kernel's network (``kernel.network``) is replaced by a
recorder (``FakeNet``) that keeps every frame our node sends (after a round trip through both
real codecs, so everything sent is wire-able), ``aemp_green.connect.listener_addresses``,
``aemp_green.node``'s ``up_nodes``, ``node_is_up`` and ``get_node`` are faked, and the state of
``globaldb.sync`` is reset
for every test. Frames from other nodes go in through ``kernel.deliver_remote(from_node,
frame)`` (which hands port-``""`` frames to ``kernel.node_request``), exactly as the network
would hand them over.

* **Seed role:** every ``g_*`` frame a Perl node sent to the Perl seed in
  ``tests/interop/{json,cbor}-session/conn0[12]*`` (decoded by our own decoders from the
  recorded bytes) is fed to our node playing the seed (node id ``seed``, the recorded seed
  binds); our answers must equal the recorded seed answers, frame for frame and in order
  (``g_global``, ``g_found``, ``g_chg1``, ``g_reply``), with probes in between (``g_upd``
  visible through ``g_db_family``, ``g_chg1`` null for an empty family, ``g_mon0`` stops
  ``g_chg2``).
* **Slave role:** our node (``peer_b``) with the seed as master sends the frames the Perl
  ``peer_b`` sent, and the recorded seed answers make ``db_mon``, ``RemoteNode.found`` and
  ``db_family``/``db_keys``/``db_values`` behave (docs/protocol.md#node-port-requests,
  #seeds-and-global-nodes, #database-events).
* Validation of family names and keys (docs/api.md#the-shared-database).
"""

import json
import logging
import os
import time
from pathlib import Path

import gevent

import pytest

import aemp_green
from aemp_green import kernel
from aemp_green.globaldb import sync
from aemp_green.globaldb.store import Limits, Store
from aemp_green.wire import framing
from aemp_green import config, connect
from aemp_green import node as _node
from conftest import flush
from test_interop_replay import plain  # frames.json value -> what our decoder returns

INTEROP = Path(os.environ.get("AEMP_INTEROP_DIR") or Path(__file__).resolve().parent / "interop")
SESSIONS = [
    s
    for s in ("json-session", "cbor-session")
    if (INTEROP / s / "conn02_peer_b-to-seed" / "frames.json").is_file()
]

pytestmark = pytest.mark.skipif(not SESSIONS, reason="interop recordings not found at %s" % INTEROP)

SEED_ADDR = "127.0.0.1:4050"  # the recorded seed's bind (meta.json)


# --------------------------------------------------------------------------- recordings


class Rec:
    """One recorded node -> seed connection: the frames each side sent, decoded by our codecs."""

    def __init__(self, session, conn):
        path = INTEROP / session / conn
        fr = json.loads((path / "frames.json").read_text())
        meta = json.loads((INTEROP / session / "meta.json").read_text())
        self.fmt = meta["framing_format_config"][0]
        self.peer, self.seed = fr["a"], fr["b"]
        self.to_seed = self._decode(path, fr, "a")
        self.from_seed = self._decode(path, fr, "b")

    def _decode(self, path, fr, side):
        stream = (path / ("a_to_b.bin" if side == "a" else "b_to_a.bin")).read_bytes()
        l1, l2 = fr[side + "_greeting"]
        start = len(("%s\n%s\n" % (l1, l2)).encode()) + len(fr[side + "_auth_line"]) + 1
        frames = framing.codec(self.fmt)[1]().feed(stream[start:])
        # what our decoder returns is what frames.json shows, byte strings as str
        assert frames == [
            plain(f["value"]) for f in fr[side + "_to_b_frames" if side == "a" else "b_to_a_frames"]
        ]
        return frames

    def sent(self, tag):
        return [f for f in self.to_seed if f[1] == tag]

    def answers(self, tag):
        return [f for f in self.from_seed if f[1] == tag]


@pytest.fixture(params=SESSIONS)
def session(request):
    return request.param


# --------------------------------------------------------------------------- fake network


class FakeRemote:
    """Stands in for ``node.RemoteNode``: records ``found`` calls."""

    def __init__(self, nodeid):
        self.id = nodeid
        self.addrs = None
        self.found_calls = []

    def found(self, addrs):
        self.found_calls.append(None if addrs is None else list(addrs))
        if addrs:
            self.addrs = list(addrs)


class FakeLink:
    def __init__(self, nodeid):
        self.nodeid = nodeid


class FakeNet:
    """Replaces ``kernel.network``: every frame sent is checked to encode in both framings and
    recorded as the peer would decode it."""

    def __init__(self, monkeypatch):
        self.mp = monkeypatch
        self.sent = []  # (to_node, frame as decoded by the peer)
        self.up = set()
        self.nodes = {}
        self.binds = []

    # kernel.network interface
    def send(self, nodeid, frame):
        enc_j, dec_j = framing.codec("json")
        enc_c, dec_c = framing.codec("cbor")
        as_json = dec_j().feed(enc_j(frame))
        as_cbor = dec_c().feed(enc_c(frame))
        assert as_json == as_cbor and len(as_json) == 1, frame
        self.sent.append((nodeid, as_json[0]))

    def monitor(self, nodeid, portname, action):
        pass

    def unmonitor(self, nodeid, portname, action):
        pass

    def kill(self, nodeid, portname, reason):
        pass

    def port_died(self, nodeid, portname, reason):
        pass

    # aemp_green.node stand-ins
    def get_node(self, nodeid):
        n = self.nodes.get(nodeid)
        if n is None:
            n = self.nodes[nodeid] = FakeRemote(nodeid)
        return n

    def node_is_up(self, nodeid):
        if nodeid == kernel.this_node:
            return True
        return nodeid in self.up

    def up_nodes(self):
        return sorted(self.up)

    # test helpers
    def become(self, nodeid, binds, seeds=()):
        """Be node ``nodeid`` listening on ``binds`` with ``seeds`` configured."""
        self.mp.setattr(kernel, "this_node", nodeid)
        self.binds = list(binds)
        self.mp.setitem(config.active, "seeds", list(seeds))

    def take(self, to=None):
        """Remove and return the frames sent (to ``to`` only, when given)."""
        mine = [f for n, f in self.sent if to is None or n == to]
        self.sent = [(n, f) for n, f in self.sent if not (to is None or n == to)]
        return mine

    def connect(self, nodeid):
        """``nodeid``'s link comes up (the network then calls ``sync.node_up``)."""
        self.up.add(nodeid)
        sync.node_up(self.get_node(nodeid))

    def disconnect(self, nodeid):
        self.up.discard(nodeid)
        sync.node_down(self.get_node(nodeid))


def feed(from_node, frame):
    """A frame arrives from ``from_node`` (as the network hands it to the kernel)."""
    kernel.deliver_remote(from_node, list(frame))


# every piece of mutable module state of globaldb.sync and its fresh value
_FRESH_STATE = {
    "_global": lambda: False,
    "_master": lambda: None,
    "_seeds": dict,
    "_local_db": dict,
    "_pending": dict,
    "_req_id": lambda: 0,
    "_mon_db": dict,
    "_mon_cbs": dict,
    "_parts": dict,
    "_store": lambda: Store(warn=sync._warn),
    "_remote_mons": dict,
    "_mons_of": dict,
    "_limits": lambda: Limits(sync._MAX_VALUE_DEPTH),
    "_warned": dict,
}
_CONSTANTS = {"_DB_QUERIES", "_MAX_VALUE_DEPTH"}


@pytest.fixture
def net(monkeypatch, caplog):
    """A fresh ``globaldb.sync`` on a fake network; fails the test if a handler logged an error."""
    fake = FakeNet(monkeypatch)
    monkeypatch.setattr(kernel, "network", fake)
    for name, fresh in _FRESH_STATE.items():
        monkeypatch.setattr(sync, name, fresh())
    monkeypatch.setattr(connect, "listener_addresses", lambda: list(fake.binds))
    monkeypatch.setattr(_node, "up_nodes", fake.up_nodes)
    monkeypatch.setattr(_node, "node_is_up", fake.node_is_up)
    monkeypatch.setattr(_node, "get_node", fake.get_node)
    caplog.set_level(logging.WARNING, logger="aemp_green")
    yield fake
    flush()
    errors = [
        r.getMessage()
        for r in caplog.get_records("call") + caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("aemp_green")
    ]
    assert not errors, "errors logged while handling frames: %r" % errors


def test_fixture_resets_every_piece_of_global_state():
    """Guard for this file: the ``net`` fixture knows all mutable state of ``globaldb.sync``."""
    state = {
        name
        for name, v in vars(sync).items()
        if name.startswith("_")
        and not name.startswith("__")
        and isinstance(v, (dict, set, list, bool, int, type(None), Store, Limits))
        and name not in _CONSTANTS
    }
    assert state <= set(_FRESH_STATE), "new state in sync: %s" % (state - set(_FRESH_STATE))


class Watch:
    """A ``db_mon`` callback that records (dict copy, added, changed, deleted)."""

    def __init__(self):
        self.calls = []

    def __call__(self, db, added, changed=None, deleted=None):
        self.calls.append((dict(db), sorted(added), sorted(changed or []), sorted(deleted or [])))


def db_family_now(family):
    """``db_family`` blocking form in a greenlet (as application code calls it)."""
    return gevent.spawn(sync.db_family, family, timeout=5).get(timeout=5)


# --------------------------------------------------------------------------- seed role


def become_perl_seed(net, session):
    rec_a = Rec(session, "conn01_peer_a-to-seed")
    rec_b = Rec(session, "conn02_peer_b-to-seed")
    seed_binds = rec_a.answers("g_found")[0][3]
    assert rec_a.answers("g_found")[0][2] == "seed" and seed_binds == [SEED_ADDR]
    net.become("seed", seed_binds)
    return rec_a, rec_b


def test_seed_answers_peer_a_like_the_perl_seed(net, session):
    """docs/protocol.md#node-port-requests, #seeds-and-global-nodes: a node's first ``g_slave``
    makes us global (``g_global`` to it), its ``g_slave`` + db registers its ``'l`` and families,
    ``g_find seed`` is answered with our binds: the answers are exactly the recorded ones."""
    rec_a, _ = become_perl_seed(net, session)
    net.connect("peer_a")  # not global yet: node_up says nothing
    assert net.take() == []
    for frame in rec_a.to_seed:
        feed("peer_a", frame)
    assert sync.is_global() and sync.master() == "seed"
    assert net.take("peer_a") == rec_a.from_seed
    assert net.take() == []
    # the slave's db is in the merged view, 'l included
    db = slave_db(rec_a)
    assert db_family_now("eg_receivers") == db["eg_receivers"]
    assert db_family_now("'l") == {"seed": [SEED_ADDR], "peer_a": db["'l"]["peer_a"]}


def test_seed_answers_peer_b_like_the_perl_seed(net, session):
    """docs/protocol.md#node-port-requests, #seeds-and-global-nodes, #database-events, the whole
    recorded ``peer_b`` conversation: ``g_global`` once, ``g_found`` with the binds learned from
    peer_a's ``'l``, ``g_chg1`` with the family, ``g_reply`` with the request id and a dict / key
    list / value list; between the recorded frames: ``g_upd`` applied and visible through
    ``g_db_family`` (also after the ``del``), a change pushed as ``g_chg2`` while watched, none
    after ``g_mon0``."""
    rec_a, rec_b = become_perl_seed(net, session)
    net.connect("peer_a")
    for frame in rec_a.to_seed:
        feed("peer_a", frame)
    net.take()

    net.connect("peer_b")  # we are global now: node_up sends g_global at once
    answers = net.take("peer_b")
    upd_set, upd_del = rec_b.sent("g_upd")
    for frame in rec_b.to_seed:
        if frame[1] == "g_mon0":
            # still watched: a change by peer_a reaches peer_b as g_chg2
            feed("peer_a", ["", "g_upd", "eg_receivers", {"extra#1": [1, 2]}])
            assert net.take("peer_b") == [["", "g_chg2", "eg_receivers", {"extra#1": [1, 2]}, None]]
        feed("peer_b", frame)
        answers += net.take("peer_b")
        if frame == upd_set:
            feed("peer_b", ["", "g_db_family", "b_family", "probe1"])
            assert net.take("peer_b") == [["", "g_reply", "probe1", upd_set[3]]]
            assert db_family_now("b_family") == upd_set[3]
        elif frame == upd_del:
            feed("peer_b", ["", "g_db_family", "b_family", "probe2"])
            feed("peer_b", ["", "g_db_keys", "b_family", "probe3"])
            feed("peer_b", ["", "g_db_values", "b_family", "probe4"])
            assert net.take("peer_b") == [
                ["", "g_reply", "probe2", {}],
                ["", "g_reply", "probe3", []],
                ["", "g_reply", "probe4", []],
            ]
    assert answers == rec_b.from_seed
    # the shapes, spelled out
    family = slave_db(rec_a)["eg_receivers"]
    by_id = {f[2]: f[3] for f in rec_b.answers("g_reply")}
    ids = {f[1]: f[3] for f in rec_b.to_seed if f[1].startswith("g_db_")}
    assert by_id[ids["g_db_family"]] == family
    assert by_id[ids["g_db_keys"]] == list(family)
    assert by_id[ids["g_db_values"]] == list(family.values())

    # after g_mon0 no more g_chg2
    feed("peer_a", ["", "g_upd", "eg_receivers", None, ["extra#1"]])
    feed("peer_a", ["", "g_upd", "eg_receivers", {"extra#2": 2}])
    assert net.take("peer_b") == []
    assert net.take() == []


def test_seed_g_chg1_is_null_for_an_empty_family_and_g_found_null_for_unknown(net, session):
    """docs/protocol.md#node-port-requests: the ``g_chg1`` hash is null when the family is empty;
    ``g_found`` binds are null for a node whose ``'l`` is unknown (also after that node went
    down)."""
    rec_a, _ = become_perl_seed(net, session)
    net.connect("peer_a")
    for frame in rec_a.to_seed:
        feed("peer_a", frame)
    net.connect("peer_b")
    net.take()
    feed("peer_b", ["", "g_mon1", "nobody_here"])
    feed("peer_b", ["", "g_find", "no_such_node"])
    feed("peer_b", ["", "g_db_family", "nobody_here", "x1"])
    assert net.take("peer_b") == [
        ["", "g_chg1", "nobody_here", None],
        ["", "g_found", "no_such_node", None],
        ["", "g_reply", "x1", {}],
    ]
    # the family appears: a g_chg2 to the watcher
    feed("peer_a", ["", "g_upd", "nobody_here", {"k": None}])
    assert net.take("peer_b") == [["", "g_chg2", "nobody_here", {"k": None}, None]]

    # peer_a goes down: its entries (and 'l) go, watchers hear the delete
    watched_key = next(iter(slave_db(rec_a)["eg_receivers"]))
    feed("peer_b", ["", "g_mon1", "eg_receivers"])
    assert net.take("peer_b")[0][:3] == ["", "g_chg1", "eg_receivers"]
    net.disconnect("peer_a")
    got = net.take("peer_b")
    assert ["", "g_chg2", "eg_receivers", None, [watched_key]] in got
    assert ["", "g_chg2", "nobody_here", None, ["k"]] in got
    feed("peer_b", ["", "g_find", "peer_a"])
    assert net.take("peer_b") == [["", "g_found", "peer_a", None]]
    assert db_family_now("'l") == {"seed": [SEED_ADDR]}


def test_seed_value_of_another_source_comes_back(net):
    """docs/protocol.md#seeds-and-global-nodes (per-source values): X and Y both set ``fam/k``; Y's
    value wins while Y is up; when Y goes down X's value comes back (``g_chg2`` with the key
    changed)."""
    net.become("seed", [SEED_ADDR])
    for n in ("X", "Y", "W"):
        net.connect(n)
        feed(n, ["", "g_slave"])
        feed(n, ["", "g_slave", {"'l": {n: ["127.0.0.1:1"]}}])
    net.take()
    feed("X", ["", "g_upd", "fam", {"k": "from X", "kx": 1}])
    feed("Y", ["", "g_upd", "fam", {"k": "from Y"}])
    feed("W", ["", "g_mon1", "fam"])
    assert net.take("W") == [["", "g_chg1", "fam", {"k": "from Y", "kx": 1}]]
    feed("Y", ["", "g_upd", "fam", {"k": "from Y"}])  # same value again: nothing changes
    assert net.take("W") == []
    net.disconnect("Y")
    assert net.take("W") == [["", "g_chg2", "fam", {"k": "from X"}, None]]
    assert db_family_now("fam") == {"k": "from X", "kx": 1}
    feed("X", ["", "g_upd", "fam", None, ["k"]])
    assert net.take("W") == [["", "g_chg2", "fam", None, ["k"]]]
    assert db_family_now("fam") == {"kx": 1}


def test_seed_meshes_with_another_global_node(net):
    """docs/protocol.md#seeds-and-global-nodes: ``g_global`` from another global node is answered
    with ``g_set`` (our slaves' view); its ``g_set``/``g_upd`` enter our merged view but are not
    echoed back; our slaves' changes are forwarded to it as ``g_upd``; its entries go when it goes
    down."""
    net.become("seed", [SEED_ADDR])
    net.connect("X")
    feed("X", ["", "g_slave"])
    feed("X", ["", "g_slave", {"'l": {"X": ["127.0.0.1:1"]}, "fam": {"kx": "x"}}])
    assert net.take() == [["", "g_global"]]
    net.connect("other")
    sent = net.take("other")
    assert sent == [["", "g_global"]]
    feed("other", ["", "g_global"])
    (g_set,) = net.take("other")
    assert g_set[:2] == ["", "g_set"]
    assert g_set[2]["fam"] == {"kx": "x"}
    assert g_set[2]["'l"] == {"seed": [SEED_ADDR], "X": ["127.0.0.1:1"]}
    assert g_set[2]["'g"] == {"seed": None}
    # the extra argument: when each value was taken from its slave (see the next test)
    assert set(g_set[3]["fam"]) == {"kx"} and isinstance(g_set[3]["fam"]["kx"], float)
    feed(
        "other",
        [
            "",
            "g_set",
            {
                "'l": {"other": ["127.0.0.1:2"], "Z": ["127.0.0.1:3"]},
                "'g": {"other": None},
                "fam": {"kz": "z"},
            },
        ],
    )
    feed("other", ["", "g_upd", "fam", {"kz2": "z2"}])
    assert net.take("other") == []  # nothing echoed
    assert db_family_now("fam") == {"kx": "x", "kz": "z", "kz2": "z2"}
    feed("X", ["", "g_find", "Z"])
    assert net.take("X") == [["", "g_found", "Z", ["127.0.0.1:3"]]]
    feed("X", ["", "g_upd", "fam", {"kx": "x2"}])
    (upd,) = net.take("other")
    assert upd[:5] == ["", "g_upd", "fam", {"kx": "x2"}, None], upd
    assert set(upd[5]) == {"kx"} and upd[5]["kx"] >= g_set[3]["fam"]["kx"], upd
    net.disconnect("other")
    assert db_family_now("fam") == {"kx": "x2"}
    assert set(db_family_now("'l")) == {"seed", "X"}


def test_global_nodes_agree_on_a_key_set_twice_whatever_the_arrival_order(net):
    """docs/protocol.md#seeds-and-global-nodes, two global nodes: X (our slave) and Y (a slave of
    the other global node) set the same key. The value in effect is the one taken from its slave
    last, by the stamp the other global node sends along, not the one that arrived here last: a
    value of Y's that is older than X's current one but arrives after it does not win. (With "last
    arrived wins" two global nodes could keep different values for good: each had the other's value
    last.)"""
    net.become("seed", [SEED_ADDR])
    net.connect("X")
    feed("X", ["", "g_slave"])  # makes us global
    net.connect("W")
    feed("W", ["", "g_slave"])
    feed("W", ["", "g_mon1", "fam"])
    net.connect("other")
    feed("other", ["", "g_global"])
    net.take()
    feed("X", ["", "g_upd", "fam", {"k": "from X"}])
    ((upd,),) = [net.take("other")]
    t_x = upd[5]["k"]
    # Y's value, stamped by the other global node after X's value was stamped here
    feed("other", ["", "g_upd", "fam", {"k": "from Y"}, None, {"k": t_x + 1e-6}])
    assert db_family_now("fam") == {"k": "from Y"}
    # and in the opposite order (Y's older than a new X value): X's stays
    feed("X", ["", "g_upd", "fam", {"k": "from X again"}])
    assert db_family_now("fam") == {"k": "from X again"}
    feed("other", ["", "g_upd", "fam", {"k": "from Y, late"}, None, {"k": t_x + 5e-7}])
    assert db_family_now("fam") == {"k": "from X again"}
    # a peer without stamps (AEMP 2.02) counts as "now", bad stamps too
    feed("other", ["", "g_upd", "fam", {"k": "unstamped"}])
    assert db_family_now("fam") == {"k": "unstamped"}
    feed("X", ["", "g_upd", "fam", {"k": "x3"}])
    feed("other", ["", "g_upd", "fam", {"k": "nan"}, None, {"k": float("nan")}])
    assert db_family_now("fam") == {"k": "nan"}
    feed("other", ["", "g_upd", "fam", {"k": "str"}, None, "not a dict"])
    assert db_family_now("fam") == {"k": "str"}
    feed("other", ["", "g_upd", "fam", {"k": "inf"}, None, {"k": float("inf")}])
    feed("X", ["", "g_upd", "fam", {"k": "x4"}])  # an infinite stamp counts as "now" too
    assert db_family_now("fam") == {"k": "x4"}
    # the watcher saw every change of the effective value, in order
    changes = [f[3]["k"] for f in net.take("W") if f[1] == "g_chg2" and f[3]]
    assert changes == [
        "from X",
        "from Y",
        "from X again",
        "unstamped",
        "x3",
        "nan",
        "str",
        "inf",
        "x4",
    ]
    # when Y's global node goes, X's latest value is back
    net.disconnect("other")
    assert db_family_now("fam") == {"k": "x4"}


def test_a_new_write_wins_over_a_peer_whose_clock_runs_ahead(net):
    """The other global node's clock is 100 s ahead: Y's value carries a stamp in our future.
    X's later write is still the newer one here (its stamp goes past Y's), and the stamp we
    send to the other global node says so too."""
    net.become("seed", [SEED_ADDR])
    net.connect("X")
    feed("X", ["", "g_slave"])
    net.connect("other")
    feed("other", ["", "g_global"])
    net.take()
    ahead = time.time() + 100  # within db_stamp_skew (a stamp beyond it counts as "now")
    feed("other", ["", "g_upd", "fam", {"k": "from Y"}, None, {"k": ahead}])
    assert db_family_now("fam") == {"k": "from Y"}
    feed("X", ["", "g_upd", "fam", {"k": "from X"}])
    assert db_family_now("fam") == {"k": "from X"}
    (upd,) = net.take("other")
    assert upd[3] == {"k": "from X"} and upd[5]["k"] > ahead, upd


def test_a_slave_resending_its_database_does_not_win_keys_it_did_not_write_again(net):
    """X set ``k`` first, Y later (Y's value is in effect). X's link drops and X sends its whole
    database again (``g_slave``, as to a new master): its unchanged ``k`` keeps its old date, so
    Y's value stays; a value X really changes is newer and wins."""
    net.become("seed", [SEED_ADDR])
    for n in ("X", "Y", "W"):
        net.connect(n)
        feed(n, ["", "g_slave"])
    feed("X", ["", "g_slave", {"fam": {"k": "from X"}}])
    feed("Y", ["", "g_slave", {"fam": {"k": "from Y"}}])
    feed("W", ["", "g_mon1", "fam"])
    assert db_family_now("fam") == {"k": "from Y"}
    net.take()
    feed("X", ["", "g_slave", {"fam": {"k": "from X"}}])  # the same again
    assert db_family_now("fam") == {"k": "from Y"}
    assert net.take("W") == []
    feed("X", ["", "g_upd", "fam", {"k": "from X, new"}])
    assert db_family_now("fam") == {"k": "from X, new"}


def test_seed_db_reg_and_local_watchers(net):
    """docs/api.md#the-shared-database: ``db_reg`` on a global node is deleted when the port dies; a
    local ``db_mon`` gets the whole family first (also a second one), then added/changed/deleted."""
    net.become("seed", [SEED_ADDR])
    net.connect("W")
    feed("W", ["", "g_slave"])
    feed("W", ["", "g_mon1", "fam"])
    feed("W", ["", "g_upd", "fam", {"w": 1}])
    net.take()
    w1 = Watch()
    g1 = sync.db_mon("fam", w1)
    flush()
    assert w1.calls == [({"w": 1}, ["w"], [], [])]
    p = aemp_green.port(lambda *m: None)
    try:
        sync.db_reg("fam", p, {"info": "x"})
        flush()
        assert net.take("W") == [["", "g_chg2", "fam", {p: {"info": "x"}}, None]]
        assert w1.calls[-1] == ({"w": 1, p: {"info": "x"}}, [p], [], [])
        w2 = Watch()
        g2 = sync.db_mon("fam", w2)
        flush()
        assert w2.calls == [({"w": 1, p: {"info": "x"}}, sorted(["w", p]), [], [])]
        feed("W", ["", "g_upd", "fam", {"w": 2}])
        flush()
        assert w1.calls[-1][1:] == ([], ["w"], []) and w2.calls[-1][1:] == ([], ["w"], [])
    finally:
        aemp_green.kil(p)
    flush()
    assert net.take("W")[-1] == ["", "g_chg2", "fam", None, [p]]
    assert w1.calls[-1] == ({"w": 2}, [], [], [p])
    assert db_family_now("fam") == {"w": 2}
    g1.cancel()
    g2.cancel()
    n = len(w1.calls)
    feed("W", ["", "g_upd", "fam", {"w": 3}])
    flush()
    assert len(w1.calls) == n


# --------------------------------------------------------------------------- slave role


def slave_db(rec):
    """The db of the recorded ``g_slave`` that carries one."""
    (db,) = [f[2] for f in rec.sent("g_slave") if len(f) > 2]
    return db


def become_perl_peer_b(net, session, seeds=(SEED_ADDR,)):
    rec_b = Rec(session, "conn02_peer_b-to-seed")
    rec_a = Rec(session, "conn01_peer_a-to-seed")
    my_binds = slave_db(rec_b)["'l"]["peer_b"]
    net.become("peer_b", my_binds, seeds=seeds)
    sync.configured(config.active)
    return rec_a, rec_b


def test_slave_sends_what_perl_peer_b_sent(net, session):
    """docs/protocol.md#seeds-and-global-nodes: when the seed comes up the node sends ``g_slave``
    and, taking it as master, ``g_slave`` with its local db (``'l`` included); ``db_mon`` sends
    ``g_mon1``, a lookup ``g_find``, queries ``g_db_*`` with a string id, ``db_set``/``db_del``
    ``g_upd``, dropping the last watcher ``g_mon0``: the same frames as the Perl node (ids
    aside)."""
    _, rec_b = become_perl_peer_b(net, session)
    net.up.add("seed")
    sync.seed_up(SEED_ADDR, FakeLink("seed"))
    assert sync.master() == "seed" and not sync.is_global()
    assert net.get_node("seed").addrs == [SEED_ADDR]
    sent = net.take("seed")
    assert sent == [["", "g_slave"], ["", "g_slave", slave_db(rec_b)]]
    assert rec_b.sent("g_slave")[0] == ["", "g_slave"]

    w = Watch()
    g = sync.db_mon("eg_receivers", w)
    assert sync.find_node("peer_a") is True
    for query in (sync.db_family, sync.db_keys, sync.db_values):
        query("eg_receivers", cb=lambda result: None)
    sent = net.take("seed")
    assert sent[0] == rec_b.sent("g_mon1")[0]
    assert sent[1] == ["", "g_find", "peer_a"] and sent[1] in rec_b.sent("g_find")
    recorded_q = [f for f in rec_b.to_seed if f[1].startswith("g_db_")]
    assert [f[:3] for f in sent[2:]] == [f[:3] for f in recorded_q]
    ids = [f[3] for f in sent[2:]]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == 3

    upd_set, upd_del = rec_b.sent("g_upd")
    key, value = next(iter(upd_set[3].items()))
    sync.db_set(upd_set[2], key, value)
    sync.db_del(upd_del[2], *upd_del[4])
    strip = lambda f: f[:-1] if f[-1] is None else f  # noqa: E731 - Perl omits a trailing undef
    assert [strip(f) for f in net.take("seed")] == [upd_set, upd_del]

    g.cancel()
    assert net.take("seed") == rec_b.sent("g_mon0")


def test_slave_handles_the_recorded_seed_answers(net, session):
    """docs/protocol.md#node-port-requests, #database-events: ``g_global`` is ignored by a
    non-global node; ``g_chg1`` gives the first ``db_mon`` call with the whole family (all keys
    added); ``g_found`` leads to ``RemoteNode.found(binds)``; ``g_reply`` answers ``db_family``
    (blocking form), ``db_keys`` and ``db_values`` (callback forms) with the recorded results."""
    rec_a, rec_b = become_perl_peer_b(net, session)
    net.up.add("seed")
    sync.seed_up(SEED_ADDR, FakeLink("seed"))
    net.take()

    w = Watch()
    g = sync.db_mon("eg_receivers", w)
    sync.find_node("peer_a")
    fam_result = gevent.spawn(sync.db_family, "eg_receivers", timeout=5)
    got = {}
    sync.db_keys("eg_receivers", cb=lambda r: got.setdefault("keys", r))
    sync.db_values("eg_receivers", cb=lambda r: got.setdefault("values", r))
    flush()
    our_ids = {f[1]: f[3] for f in net.take("seed") if f[1].startswith("g_db_")}
    rec_ids = {f[1]: f[3] for f in rec_b.to_seed if f[1].startswith("g_db_")}
    to_ours = {rec_ids[tag]: our_ids[tag] for tag in rec_ids}

    for frame in rec_b.from_seed:
        if frame[1] == "g_reply":
            # the recorded id is not ours: it is ignored; the same answer with our id counts
            feed("seed", frame)
            frame = frame[:2] + [to_ours[frame[2]]] + frame[3:]
        feed("seed", frame)
    flush()
    assert net.take() == []
    assert not sync.is_global()

    family = rec_b.answers("g_chg1")[0][3]
    assert w.calls == [(family, sorted(family), [], [])]
    assert net.get_node("peer_a").found_calls == [rec_b.answers("g_found")[-1][3]]
    assert net.get_node("peer_a").found_calls == [slave_db(rec_a)["'l"]["peer_a"]]
    assert fam_result.get(timeout=5) == family
    assert got == {"keys": list(family), "values": list(family.values())}
    assert sync._pending == {}

    # later changes (g_chg2) from the master: added / changed / deleted
    (k0,) = family
    feed("seed", ["", "g_chg2", "eg_receivers", {"new#1": {"n": 2}}, None])
    feed("seed", ["", "g_chg2", "eg_receivers", {k0: "changed"}, None])
    feed("seed", ["", "g_chg2", "eg_receivers", None, ["new#1"]])
    feed("other_global", ["", "g_chg2", "eg_receivers", {"bogus": 1}, None])  # not the master
    feed("other_global", ["", "g_chg1", "eg_receivers", {}])
    flush()
    assert [c[1:] for c in w.calls[1:]] == [
        (["new#1"], [], []),
        ([], [k0], []),
        ([], [], ["new#1"]),
    ]
    assert w.calls[-1][0] == {k0: "changed"}

    # a second db_mon on the same family: the whole family first
    w2 = Watch()
    g2 = sync.db_mon("eg_receivers", w2)
    flush()
    assert w2.calls == [({k0: "changed"}, [k0], [], [])]
    assert net.take() == []  # no second g_mon1
    g.cancel()
    assert net.take() == []  # one watcher left
    g2.cancel()
    assert net.take("seed") == [["", "g_mon0", "eg_receivers"]]


def test_slave_empty_family_first_call_and_null_chg1(net, session):
    """docs/protocol.md#database-events: the first call comes also when the family is empty
    (``g_chg1`` null)."""
    become_perl_peer_b(net, session)
    net.up.add("seed")
    sync.seed_up(SEED_ADDR, FakeLink("seed"))
    w = Watch()
    g = sync.db_mon("empty", w)
    feed("seed", ["", "g_chg1", "empty", None])
    flush()
    assert w.calls == [({}, [], [], [])]
    g.cancel()


def test_slave_failover_resends_pending_requests(net, session):
    """docs/protocol.md#node-port-requests, #seeds-and-global-nodes: requests waiting for the master
    (``g_find``, ``g_mon1``, ``g_db_*``) are sent again to the new master when the old one goes
    down; the node sends the new master its whole local db; answers from the old master are no
    longer accepted; the new ``g_chg1`` resyncs the watcher (stale keys deleted)."""
    become_perl_peer_b(net, session, seeds=("127.0.0.1:1", "127.0.0.1:2"))
    for n, addr in (("seedA", "127.0.0.1:1"), ("seedB", "127.0.0.1:2")):
        net.up.add(n)
        sync.seed_up(addr, FakeLink(n))
    assert sync.master() == "seedA"
    sync.db_set("fam", "mine", 1)
    w = Watch()
    g = sync.db_mon("fam", w)
    feed("seedA", ["", "g_chg1", "fam", {"mine": 1, "stale": 2}])
    flush()
    assert w.calls == [({"mine": 1, "stale": 2}, ["mine", "stale"], [], [])]
    sync.find_node("someone")
    result = gevent.spawn(sync.db_keys, "fam", timeout=5)
    flush()
    a_frames = net.take("seedA")
    (rid,) = [f[3] for f in a_frames if f[1] == "g_db_keys"]
    assert net.take("seedB") == [["", "g_slave"]]  # not our master (yet): no db

    net.disconnect("seedA")
    assert sync.master() == "seedB"
    b_frames = net.take("seedB")
    assert b_frames[0] == ["", "g_slave", {"'l": {"peer_b": net.binds}, "fam": {"mine": 1}}]
    assert [f[:4] for f in b_frames if f[1] == "g_db_keys"] == [["", "g_db_keys", "fam", rid]]
    assert ["", "g_find", "someone"] in b_frames
    assert ["", "g_mon1", "fam"] in b_frames

    feed("seedA", ["", "g_chg1", "fam", {}])  # not the master any more: ignored
    flush()
    assert len(w.calls) == 1 and not result.ready()
    feed("seedB", ["", "g_reply", rid, ["mine"]])
    assert result.get(timeout=5) == ["mine"]
    feed("seedB", ["", "g_found", "someone", ["127.0.0.1:9"]])
    feed("seedB", ["", "g_chg1", "fam", {"mine": 1}])
    flush()
    assert w.calls[-1] == ({"mine": 1}, [], [], ["stale"])
    assert net.get_node("someone").found_calls == [["127.0.0.1:9"]]
    assert sync._pending == {}
    g.cancel()


def test_slave_without_master_keeps_changes_until_one_is_up(net, session):
    """docs/protocol.md#seeds-and-global-nodes: with no master up, ``db_set`` is kept locally and
    reaches the next master inside its ``g_slave`` db; an unchanged value is not sent again (section
    8)."""
    become_perl_peer_b(net, session)
    sync.db_set("fam", "k", {"v": 1})
    assert net.take() == []
    net.up.add("seed")
    sync.seed_up(SEED_ADDR, FakeLink("seed"))
    assert net.take("seed")[1][2]["fam"] == {"k": {"v": 1}}
    sync.db_set("fam", "k", {"v": 1})
    sync.db_set("fam", "k", {"v": 1})
    assert net.take() == []
    sync.db_set("fam", "k", {"v": 2})
    sync.db_set("fam", "k2")
    assert net.take("seed") == [
        ["", "g_upd", "fam", {"k": {"v": 2}}, None],
        ["", "g_upd", "fam", {"k2": None}, None],
    ]


def test_db_set_guard_cancel_deletes_drop_keeps(net, session):
    """docs/api.md#the-shared-database: ``db_set`` returns a guard; ``cancel()`` deletes the entry;
    dropping the guard (aemp_green/_guard.py) or a bare statement leaves it."""
    become_perl_peer_b(net, session)
    net.up.add("seed")
    sync.seed_up(SEED_ADDR, FakeLink("seed"))
    net.take()
    sync.db_set("fam", "stays", 1)
    g = sync.db_set("fam", "goes", 2)
    assert net.take("seed") == [
        ["", "g_upd", "fam", {"stays": 1}, None],
        ["", "g_upd", "fam", {"goes": 2}, None],
    ]
    g2 = sync.db_set("fam", "dropped", 3)
    del g2
    assert net.take("seed") == [["", "g_upd", "fam", {"dropped": 3}, None]]
    g.cancel()
    assert net.take("seed") == [["", "g_upd", "fam", None, ["goes"]]]
    assert sync._local_db["fam"] == {"stays": 1, "dropped": 3}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "family",
    [
        "1abc",
        "a b",
        "",
        "_x",
        "a-b",
        "ä",
        "a.b",
        " a",
        1,
        None,
        b"fam",
        "a\n",
    ],
)
def test_bad_family_names_raise(net, family):
    """docs/api.md#the-shared-database: family names are ``[A-Za-z][A-Za-z0-9_:]*``; anything else
    is a ValueError, for every entry point, before anything is stored or sent."""
    net.become("n", ["127.0.0.1:1"])
    monkeypatched_master(net)
    for call in (
        lambda: sync.db_set(family, "k", 1),
        lambda: sync.db_del(family, "k"),
        lambda: sync.db_reg(family, "n#p", 1),
        lambda: sync.db_mon(family, lambda *a: None),
        lambda: sync.db_family(family, cb=lambda r: None),
        lambda: sync.db_keys(family, cb=lambda r: None),
        lambda: sync.db_values(family, cb=lambda r: None),
    ):
        with pytest.raises(ValueError):
            call()
    assert net.take() == []
    assert sync._local_db == {} and sync._mon_cbs == {} and sync._pending == {}


def monkeypatched_master(net):
    net.up.add("seed")
    sync.seed_up(SEED_ADDR, FakeLink("seed"))
    net.take()


@pytest.mark.parametrize("key", [1, None, ("a",), b"k", 1.5])
def test_non_string_keys_raise(net, key):
    net.become("n", ["127.0.0.1:1"])
    monkeypatched_master(net)
    with pytest.raises(ValueError):
        sync.db_set("fam", key, 1)
    if key is not None:  # db_reg(family, None) means SELF()
        with pytest.raises(ValueError):
            sync.db_reg("fam", key, 1)
    assert net.take() == [] and sync._local_db == {}


def test_good_family_names_are_accepted(net):
    net.become("n", ["127.0.0.1:1"])
    monkeypatched_master(net)
    for fam in ("a", "Z9", "a_b:c", "Ab::cd_9"):
        sync.db_set(fam, "k", 1)
    assert [f[2] for f in net.take("seed")] == ["a", "Z9", "a_b:c", "Ab::cd_9"]


@pytest.mark.parametrize("family", ["'l", "'g"])
def test_internal_families_readable_not_writable(net, family):
    """docs/api.md#the-shared-database: names starting with ``'`` are internal: readable
    (``db_family``, ``db_mon``), not writable through ``db_set``/``db_del``/``db_reg``."""
    net.become("seed", [SEED_ADDR])
    net.connect("X")
    feed("X", ["", "g_slave"])
    feed("X", ["", "g_slave", {"'l": {"X": ["127.0.0.1:1"]}}])
    net.take()
    for call in (
        lambda: sync.db_set(family, "k", 1),
        lambda: sync.db_del(family, "seed"),
        lambda: sync.db_reg(family, "seed#p", 1),
    ):
        with pytest.raises(ValueError):
            call()
    expected = {"seed": [SEED_ADDR], "X": ["127.0.0.1:1"]} if family == "'l" else {"seed": None}
    assert db_family_now(family) == expected
    w = Watch()
    g = sync.db_mon(family, w)
    flush()
    assert w.calls == [(expected, sorted(expected), [], [])]
    g.cancel()
    assert net.take() == []


def test_internal_family_read_from_a_slave(net, session):
    """A slave reads ``'l`` through its master (``g_db_family "'l"``)."""
    become_perl_peer_b(net, session)
    monkeypatched_master(net)
    res = gevent.spawn(sync.db_family, "'l", timeout=5)
    flush()
    ((_, tag, fam, rid, _chunk),) = net.take("seed")  # _chunk: the part size we take
    assert (tag, fam) == ("g_db_family", "'l")
    feed("seed", ["", "g_reply", rid, {"seed": [SEED_ADDR]}])
    assert res.get(timeout=5) == {"seed": [SEED_ADDR]}


def test_blocking_query_times_out_without_a_master(net, session):
    """The blocking form has a deadline: ``Timeout`` when no master answers."""
    become_perl_peer_b(net, session)
    with pytest.raises(aemp_green.Timeout):
        gevent.spawn(sync.db_keys, "fam", timeout=0.05).get(timeout=5)


def test_query_callback_may_block_without_stalling_the_network(net, session):
    """docs/api.md#the-shared-database: with a ``cb`` the queries call back; the callback runs like
    every other callback (db_mon's run synchronously, but query replies get a fresh greenlet), so it
    may use the blocking forms."""
    become_perl_peer_b(net, session)
    monkeypatched_master(net)
    got = []
    sync.db_family("fam", cb=lambda r: got.append((r, sync.db_keys("fam", timeout=5))))
    ((_, _, _, outer, _chunk),) = net.take("seed")
    handler = gevent.spawn(feed, "seed", ["", "g_reply", outer, {"k": 1}])
    flush()
    inline = not handler.dead  # still inside the callback, blocked in db_keys
    # answer the inner query in any case, so nothing is left blocked after the test
    (inner,) = [f for f in net.take("seed") if f[1] == "g_db_keys"]
    feed("seed", ["", "g_reply", inner[3], ["k"]])
    handler.join(timeout=5)
    flush()
    assert got == [({"k": 1}, ["k"])]
    assert not inline, "the frame handler blocked inside the user's callback"
