"""globaldb.store on plain data: merge rule, stamps, skew clamp, sources leaving, peers, limits
and frames of bounded size. No sockets, no greenlets, no clock (``now`` is an argument).

The messaging around the store is covered by tests/test_global_replay.py (recorded Perl
traffic) and the multi-node tests (tests/test_database.py, tests/test_attack_db.py).
"""

import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from aemp_green.globaldb.store import (
    CHUNK_MIN,
    Limits,
    Store,
    admit,
    change_frames,
    check_family,
    check_key,
    check_value,
    clean_addrs,
    db_frames,
    enc,
    family_parts,
    merge_part,
    reply_parts,
    same,
    size,
    value_problem,
    watch_reload,
    watch_update,
)

LIM = Limits(max_depth=504)
SKEW = 300.0


class Warnings:
    """A ``warn`` callable that records ``(kind, message)``."""

    def __init__(self):
        self.lines = []

    def __call__(self, kind, fmt, *args):
        self.lines.append((kind, fmt % args))

    def kinds(self):
        return [k for k, _ in self.lines]


def new_store():
    w = Warnings()
    return Store(warn=w), w


def C(changes):
    """A ``Changes`` tuple with names: ``.set``, ``.dels``, ``.up_set``, ``.up_del``,
    ``.up_stamps``."""
    return SimpleNamespace(**dict(zip(("set", "dels", "up_set", "up_del", "up_stamps"), changes)))


def put(s, src, family, kv, now, stamps=None, **kw):
    return C(s.apply(src, family, kv, None, stamps, now=now, skew=SKEW, **kw))


def check_indexes(s):
    """The three indexes agree: holders names exactly the sources of by_source, counts are
    their sizes, nothing empty is kept."""
    from_sources = {}
    for src, fams in s.by_source.items():
        assert fams, src
        n = 0
        for family, held in fams.items():
            assert held, (src, family)
            n += len(held)
            for key in held:
                from_sources.setdefault((family, key), set()).add(src)
        assert s.counts[src] == n
    assert set(s.counts) == set(s.by_source)
    from_holders = {}
    for family, keys in s.holders.items():
        assert keys, family
        for key, ent in keys.items():
            srcs = {ent} if isinstance(ent, str) else set(ent)
            assert isinstance(ent, str) or len(ent) >= 2
            from_holders[(family, key)] = srcs
    assert from_holders == from_sources


# --------------------------------------------------------------------------- merge rule


def test_one_source_sets_and_deletes():
    s, w = new_store()
    ch = put(s, "a", "fam", {"k": 1, "j": 2}, now=10.0)
    assert ch.set == {"k": 1, "j": 2} and ch.dels == []
    assert s.family_view("fam") == {"k": 1, "j": 2} and sorted(s.keys("fam")) == ["j", "k"]
    ch = C(s.apply("a", "fam", {"k": 1}, ["j", "nothere", 7], now=11.0, skew=SKEW))
    assert ch.set == {} and ch.dels == ["j"]  # an unchanged value is no change
    assert s.family_view("fam") == {"k": 1}
    check_indexes(s)
    assert w.lines == []


def test_a_later_write_wins_and_the_earlier_comes_back_when_it_goes():
    s, _ = new_store()
    put(s, "a", "fam", {"k": "from a"}, now=10.0)
    ch = put(s, "b", "fam", {"k": "from b"}, now=20.0)
    assert ch.set == {"k": "from b"} and s.effective("fam", "k") == "from b"
    assert s.holders["fam"]["k"] == ("a", "b")
    ch = C(s.apply("b", "fam", None, ["k"]))
    assert ch.set == {"k": "from a"} and ch.dels == []
    ch = C(s.apply("a", "fam", None, ["k"]))
    assert ch.set == {} and ch.dels == ["k"] and s.family_view("fam") == {}
    assert s.by_source == {} and s.holders == {} and s.counts == {}


def test_a_new_write_beats_a_stamp_from_a_clock_that_runs_ahead():
    """A peer stamped its value 100 s ahead of our clock (within the skew): a slave's write we
    take now is still the newer one."""
    s, w = new_store()
    put(s, "peer", "fam", {"k": "peer's"}, now=10.0, stamps={"k": 110.0})
    assert s.win("fam", "k") == ("peer", 110.0, "peer's")
    put(s, "slave", "fam", {"k": "slave's"}, now=11.0)
    src, stamp, value = s.win("fam", "k")
    assert (src, value) == ("slave", "slave's") and stamp > 110.0
    assert w.lines == []


def test_equal_stamps_are_broken_by_the_larger_json_encoding_in_any_order():
    for order in (("a", "b"), ("b", "a")):
        s, _ = new_store()
        for src in order:
            put(s, src, "fam", {"k": {"from": src}}, now=1.0, stamps={"k": 5.0})
        assert s.effective("fam", "k") == {"from": "b"}, order


def test_the_same_value_again_from_the_same_source_keeps_its_stamp():
    """A slave re-sending its database to a new master is no new write: a value another source
    wrote in between stays in effect."""
    s, _ = new_store()
    put(s, "a", "fam", {"k": 1}, now=10.0)
    put(s, "b", "fam", {"k": 2}, now=20.0)
    ch = put(s, "a", "fam", {"k": 1}, now=30.0)
    assert ch.set == {} and s.effective("fam", "k") == 2
    assert s.by_source["a"]["fam"]["k"] == (10.0, 1)
    ch = put(s, "a", "fam", {"k": 3}, now=40.0)  # a new value is a new write
    assert ch.set == {"k": 3} and s.by_source["a"]["fam"]["k"][0] == 40.0


def test_values_are_compared_by_their_json_encoding():
    s, _ = new_store()
    put(s, "a", "fam", {"k": 1}, now=1.0)
    assert put(s, "a", "fam", {"k": 1.0}, now=2.0).set == {"k": 1.0}  # 1 and 1.0 differ
    assert put(s, "a", "fam", {"k": True}, now=3.0).set == {"k": True}
    assert same({"a": 1, "b": 2}, {"b": 2, "a": 1}) and not same(1, True)
    assert enc({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'


_op = st.tuples(
    st.sampled_from(["p1", "p2", "p3"]),
    st.sampled_from(["k1", "k2"]),
    st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=2)),
    st.sampled_from([1.0, 2.0, 3.0]),  # few stamps: many ties
    st.booleans(),  # True: a deletion of the source's entry
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, max_size=25))
def test_global_nodes_agree_whatever_order_the_sources_arrive_in(ops):
    """Two global nodes get the same stamped writes; each source's writes in order (a link is
    FIFO), the sources interleaved differently: both end with the same effective view."""

    def run(sequence):
        s, _ = new_store()
        for src, key, value, stamp, delete in sequence:
            if delete:
                s.apply(src, "fam", None, [key])
            else:
                put(s, src, "fam", {key: value}, now=2.0, stamps={key: stamp})
            check_indexes(s)
        return s.family_view("fam")

    by_source = sorted(ops, key=lambda op: op[0])  # stable: each source's order kept
    by_source_rev = sorted(ops, key=lambda op: op[0], reverse=True)
    want = run(ops)
    assert enc(run(by_source)) == enc(want)
    assert enc(run(by_source_rev)) == enc(want)


# --------------------------------------------------------------------------- stamps


def test_a_stamp_too_far_ahead_is_replaced_by_ours_and_warned():
    s, w = new_store()
    put(s, "peer", "fam", {"near": 1, "far": 2}, now=1000.0, stamps={"near": 1299.0, "far": 1301})
    assert s.by_source["peer"]["fam"]["near"] == (1299.0, 1)
    assert s.by_source["peer"]["fam"]["far"] == (1000.0, 2)
    assert w.kinds() == ["db_stamp"] and "ahead of our clock" in w.lines[0][1]


@pytest.mark.parametrize("bad", [True, float("nan"), math.inf, "5", None, [5]])
def test_a_stamp_that_is_no_finite_number_is_ignored(bad):
    s, w = new_store()
    put(s, "peer", "fam", {"k": 1}, now=50.0, stamps={"k": bad})
    assert s.by_source["peer"]["fam"]["k"] == (50.0, 1)
    assert w.lines == []


# --------------------------------------------------------------------------- sources


def test_a_source_leaving_takes_exactly_its_own_entries():
    s, _ = new_store()
    put(s, "a", "fam", {"shared": "a", "only_a": 1}, now=1.0)
    put(s, "a", "other", {"x": 1}, now=1.0)
    put(s, "b", "fam", {"shared": "b", "only_b": 2}, now=2.0)
    changes = {f: C(ch) for f, ch in s.drop("b")}
    assert list(changes) == ["fam"]
    assert changes["fam"].set == {"shared": "a"} and changes["fam"].dels == ["only_b"]
    assert s.family_view("fam") == {"shared": "a", "only_a": 1}
    assert "b" not in s.by_source and "b" not in s.counts
    check_indexes(s)
    assert s.drop("b") == [] and s.drop("never") == []
    changes = dict(s.drop("a"))
    assert sorted(changes) == ["fam", "other"]
    assert s.by_source == {} and s.holders == {} and s.counts == {}


def test_replace_makes_a_source_hold_exactly_the_new_database():
    s, w = new_store()
    put(s, "a", "fam", {"stays": 1, "goes": 2}, now=1.0)
    put(s, "a", "gone", {"x": 1}, now=1.0)
    db = {"fam": {"stays": 1, "new": 3}, "'l": {"a": ["10.0.0.1:4040"]}, "empty": {}, "x": 5}
    out = [(f, C(ch)) for f, ch in s.replace("a", db, limits=LIM, now=2.0)]
    assert [f for f, _ in out] == ["fam", "gone", "fam", "'l"]
    assert out[0][1].dels == ["goes"] and out[1][1].dels == ["x"] and out[2][1].set == {"new": 3}
    assert s.by_source["a"] == {
        "fam": {"stays": (1.0, 1), "new": (2.0, 3)},
        "'l": {"a": (2.0, ["10.0.0.1:4040"])},
    }
    check_indexes(s)
    assert w.lines == []


def test_replace_checks_what_came_from_the_network():
    s, w = new_store()
    db = {
        "": {"k": 1},  # a bad family name
        "fam": {"ok": 1, 7: "a key that is no str", "nan": float("nan")},
        "'l": {"a": ["10.0.0.1:4040", "junk"], "b": ["10.0.0.2:4040"]},  # b: not a's entry
    }
    s.replace("a", db, limits=LIM, now=1.0)
    assert s.family_view("fam") == {"ok": 1}
    assert s.family_view("'l") == {"a": ["10.0.0.1:4040"]}
    assert sorted(set(w.kinds())) == ["addrs", "db_family", "db_value"]
    s2, w2 = new_store()
    s2.replace("me", {"'l": {"other": []}}, limits=LIM, now=1.0, check=False)
    assert s2.family_view("'l") == {"other": []} and w2.lines == []


def test_a_source_holds_at_most_max_keys():
    s, w = new_store()
    ch = put(s, "a", "fam", {"k1": 1, "k2": 2, "k3": 3}, now=1.0, max_keys=2)
    assert ch.set == {"k1": 1, "k2": 2} and w.kinds() == ["db_full"]
    ch = put(s, "a", "fam", {"k1": 10}, now=2.0, max_keys=2)  # its keys may still change
    assert ch.set == {"k1": 10}
    s.apply("a", "fam", None, ["k2"])
    assert put(s, "a", "other", {"k3": 3}, now=3.0, max_keys=2).set == {"k3": 3}
    assert s.counts["a"] == 2
    assert put(s, "me", "fam", {str(i): i for i in range(5)}, now=4.0).set  # None: no bound
    assert s.counts["me"] == 5


# --------------------------------------------------------------------------- peers ("mine")


def test_changes_of_mine_are_for_the_peers_with_their_stamps():
    s, _ = new_store()
    s.peers.add("peer")
    ch = put(s, "slave", "fam", {"k": 1}, now=5.0)
    assert ch.up_set == {"k": 1} and ch.up_stamps == {"k": 5.0} and ch.up_del == []
    ch = put(s, "peer", "fam", {"k": 2, "j": 3}, now=6.0, stamps={"k": 6.0, "j": 6.0})
    assert ch.set == {"k": 2, "j": 3} and ch.up_set == {} and ch.up_del == []
    ch = C(s.apply("slave", "fam", None, ["k"]))
    assert ch.set == {} and ch.up_del == ["k"]  # the peer's value was in effect already
    assert s.mine_db() == ({}, {})


def test_without_peers_nothing_is_forwarded():
    s, _ = new_store()
    ch = put(s, "slave", "fam", {"k": 1}, now=5.0)
    assert ch.up_set == {} and ch.up_stamps == {}


def test_mine_db_is_the_view_without_the_peers():
    s, _ = new_store()
    s.peers.add("peer")
    put(s, "me", "fam", {"k": "mine"}, now=1.0)
    put(s, "slave", "fam", {"k": "slave's", "j": 1}, now=2.0)
    put(s, "peer", "fam", {"k": "peer's", "p": 1}, now=3.0, stamps={"k": 9.0, "p": 9.0})
    assert s.effective("fam", "k") == "peer's"
    db, stamps = s.mine_db()
    assert db == {"fam": {"k": "slave's", "j": 1}} and stamps == {"fam": {"k": 2.0, "j": 2.0}}


def test_a_slave_that_becomes_a_peer_leaves_mine():
    s, _ = new_store()
    s.peers.add("old_peer")
    put(s, "me", "fam", {"i": "mine"}, now=0.5)
    put(s, "n", "fam", {"k": 1, "j": 2, "i": "n's"}, now=1.0)
    put(s, "me", "fam", {"j": 3}, now=2.0)
    # k: only n held it; i: n's value was in effect, ours is now; j: ours was in effect already
    assert s.add_peer("n") == [("fam", {"i": "mine"}, ["k"], {"i": 0.5})]
    assert "n" in s.peers
    assert s.add_peer("n") == []  # a peer already
    s2, _ = new_store()
    put(s2, "n", "fam", {"k": 1}, now=1.0)
    assert s2.add_peer("n") == []  # no other peer to tell


def test_a_peer_that_leaves_is_a_peer_no_more():
    s, _ = new_store()
    s.peers.add("p")
    put(s, "p", "fam", {"k": 1}, now=1.0, stamps={"k": 1.0})
    ch = C(dict(s.drop("p"))["fam"])
    assert ch.dels == ["k"] and ch.up_del == []  # its entries were never "mine"
    assert s.peers == set()


# --------------------------------------------------------------------------- watchers


def test_watch_update_and_reload():
    db = {"a": 1, "b": 2}
    assert watch_update(db, {"a": 10, "c": 3}, ["b", "zz", 5]) == (["c"], ["a"], ["b"])
    assert db == {"a": 10, "c": 3}
    assert watch_update(db, None, "junk") == ([], [], [])
    assert watch_reload(db, {"a": 10, "c": 4, "d": 5}) == (["d"], ["c"], [])
    assert watch_reload(db, None) == ([], [], ["a", "c", "d"]) and db == {}


# --------------------------------------------------------------------------- limits


def test_limits_from_settings():
    lim = Limits.from_settings({"db_chunk": 8192, "db_max_key": None, "other": 1}, max_depth=9)
    assert (lim.db_chunk, lim.db_max_key, lim.max_depth) == (8192, 1024, 9)
    assert lim.updated({}) is lim and lim.updated({"db_max_keys": 3}).db_max_keys == 3
    assert Limits(9, db_chunk=1 << 20, max_frame=1 << 16).request_chunk() == 1 << 14
    assert Limits(9, db_chunk=1).request_chunk() == CHUNK_MIN


@pytest.mark.parametrize(
    "value, exc, why",
    [
        (float("nan"), ValueError, "NaN"),
        ([math.inf], ValueError, "NaN or infinity"),
        (1 << 64, ValueError, "integer"),
        (-(1 << 63) - 1, ValueError, "integer"),
        ("\ud800", ValueError, "surrogate"),
        ({1: 2}, TypeError, "not a str"),
        (b"raw", TypeError, "bytes"),
        ({1, 2}, TypeError, "set"),
        ("x" * 200, ValueError, "db_max_value"),
        ([[[[[1]]]]], ValueError, "nested more than 4 deep"),
    ],
)
def test_value_problems(value, exc, why):
    problem = value_problem(value, 100, 4)
    assert problem is not None and problem[0] is exc and why in problem[1], problem
    with pytest.raises(exc, match="database value not accepted"):
        check_value(value, 100, 4)


def test_values_every_link_carries_pass():
    for v in (None, True, (1 << 64) - 1, -(1 << 63), 1.5, "é", [1, (2,)], {"a": {"b": [None]}}):
        assert value_problem(v, 100, 4) is None, v
    assert value_problem([[[1]]], 100, 4) is None
    assert value_problem("x" * 90, 100, 4) is None


def test_family_and_key_checks():
    check_family("eg_receivers:v2", 20, writing=True)
    check_family("'l", 20)  # internal names may be read and watched
    for bad, writing in (("'l", True), ("1abc", False), ("a b", False), (7, False), ("a" * 21, 0)):
        with pytest.raises(ValueError):
            check_family(bad, 20, writing=writing)
    check_key("n#p", 3)
    for bad in ("n#pp", 7, None):
        with pytest.raises(ValueError):
            check_key(bad, 3)


def test_admit_leaves_out_what_may_not_enter():
    w = Warnings()
    lim = Limits(504, db_max_key=5, max_node_addrs=2)
    got = admit(
        "n1",
        "'l",
        {
            "n1": ["10.0.0.1:1", "*:2", "10.0.0.3:3", "10.0.0.4:4"],
            "n2": ["10.0.0.2:1"],
            "toolong": [],
        },
        lim,
        False,
        w,
    )
    assert got == {"n1": ["10.0.0.1:1", "10.0.0.3:3"]}
    assert sorted(w.kinds()) == ["addrs", "db_value", "db_value"]
    w2 = Warnings()
    assert admit("p", "'l", {"n2": ["10.0.0.2:1"]}, lim, True, w2) == {"n2": ["10.0.0.2:1"]}
    assert admit("p", "'l", {"n2": "no list"}, lim, True, w2) == {}
    kv = {"a": 1}
    assert admit("p", "fam", kv, lim, False, w2) is kv  # nothing left out: no copy
    assert clean_addrs("no list", "x", lim, w2) is None


# --------------------------------------------------------------------------- frames


def _sizes_ok(parts, limit, sizer):
    # each part is at most about `limit` bytes (one entry may be larger on its own)
    for p in parts:
        if len(p) > 1:
            assert sum(sizer(x) for x in p) <= limit, p


def test_change_frames_fit_in_one_frame_or_are_cut():
    assert change_frames({"k": 1}, [], 100) == [({"k": 1}, None)]
    assert change_frames({}, ["d"], 100, stamps={}) == [(None, ["d"], {})]
    set_ = {"k%03d" % i: "v" * 20 for i in range(100)}
    dels = ["d%03d" % i for i in range(100)]
    frames = change_frames(set_, dels, 500)
    assert len(frames) > 4
    sets = [s for s, d in frames if s]
    assert all((s is None) != (d is None) for s, d in frames)
    assert {k: v for s in sets for k, v in s.items()} == set_
    assert [k for s, d in frames if d for k in d] == dels
    _sizes_ok(sets, 500, lambda k: len(k) + size("v" * 20) + 4)
    stamps = {k: 1.5 for k in set_}
    framed = change_frames(set_, [], 500, stamps=stamps)
    assert all(st == {k: 1.5 for k in s} for s, d, st in framed)


def test_db_frames_cut_a_large_database_with_the_internal_families_first():
    db = {"big": {"k%04d" % i: i for i in range(300)}, "'l": {"me": ["10.0.0.1:1"]}, "e": {}}
    assert db_frames(db, 1 << 20) is None
    first, first_st, rest = db_frames(db, 1000)
    assert list(first)[0] == "'l" and first_st == {}
    merged = {}
    for family, part in first.items():
        merged.setdefault(family, {}).update(part)
    for family, part, pst in rest:
        assert pst is None
        merged.setdefault(family, {}).update(part)
    assert merged == {"big": db["big"], "'l": db["'l"]}
    stamps = {"big": {k: 2.0 for k in db["big"]}, "'l": {"me": 1.0}}
    first, first_st, rest = db_frames(db, 1000, stamps)
    assert first_st["'l"] == {"me": 1.0}
    assert all(pst == {k: 2.0 for k in part} for _, part, pst in rest)


def test_family_and_reply_parts():
    fam = {"k%04d" % i: "x" * 50 for i in range(500)}
    assert family_parts({}, 100) == [{}]
    assert family_parts({"a": 1}, 1) == [{"a": 1}]
    parts = family_parts(fam, 5000)
    assert len(parts) > 3 and {k: v for p in parts for k, v in p.items()} == fam
    assert reply_parts(fam, None, 5000) == [fam]  # the requester takes no parts
    assert reply_parts(["one"], 4096, 5000) == [["one"]]
    assert reply_parts(None, 4096, 5000) == [None]
    parts = reply_parts(fam, 1, 1 << 20)  # asks for tiny parts: CHUNK_MIN
    assert len(parts) == len(family_parts(fam, CHUNK_MIN))
    parts = reply_parts(fam, 1 << 30, 5000)  # asks for huge parts: our db_chunk
    assert len(parts) == len(family_parts(fam, 5000))
    keys = ["k%05d" % i for i in range(1000)]
    lparts = reply_parts(keys, 4096, 1 << 20)
    assert len(lparts) > 1 and [k for p in lparts for k in p] == keys
    acc = None
    for p in lparts:
        acc = merge_part(acc, p)
    assert acc == keys and lparts[0] != acc  # merged into a copy
    assert merge_part(merge_part(None, {"a": 1}), {"b": 2}) == {"a": 1, "b": 2}
    assert merge_part({"a": 1}, ["mismatch"]) == {"a": 1}


def test_the_module_example_runs():
    import doctest

    from aemp_green.globaldb import store

    result = doctest.testmod(store)
    assert result.attempted >= 5 and result.failed == 0
