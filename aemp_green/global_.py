"""global_: seeds, global nodes and the shared database (``db_set``, ``db_mon``, ...).

Roles (PROTOCOL.md sections 4, 7, 8):

* Every node keeps its **local database** ``{family: {key: value}}``: what it set itself, plus
  ``'l`` (its own listener addresses) and, on global nodes, ``'g`` (itself).
* A node connects to all of its seeds and tells each ``g_slave`` (which makes every seed a
  **global node**). A non-global node takes the first seed that is up as its **master**, sends
  it ``g_slave`` with its whole local database, and then sends its changes as ``g_upd``. Every
  request that needs an answer (``g_find``, ``g_mon1``, ``g_db_*``) is re-sent when the master
  changes.
* A **global node** merges the databases of its slaves and of the other global nodes it meshes
  with (``g_global``, then ``g_set``; changes as ``g_upd``). Values are kept per source node,
  so when a node goes down its entries disappear and a value another node set for the same key
  comes back. When several nodes set one key, the newest value is in effect: global nodes stamp
  a value when they take it from a slave and pass the stamp on (see "per-source value store").
  Global nodes answer ``g_find`` from ``'l``, ``g_db_*`` and push ``g_chg1`` /
  ``g_chg2`` to nodes that watch a family.

Only this module writes the database. The public API: ``db_set``, ``db_del``, ``db_reg``,
``db_family``, ``db_keys``, ``db_values``, ``db_mon``.
"""

import json
import logging
import math
import re
import time

import gevent
from gevent.event import AsyncResult

from . import kernel as _k
from ._guard import Guard
from .exceptions import Timeout

__all__ = ["db_set", "db_del", "db_reg", "db_family", "db_keys", "db_values", "db_mon",
           "is_global", "master"]

logger = logging.getLogger(__name__)

_FAMILY = re.compile(r"^[A-Za-z][A-Za-z0-9_:]*$")

# ---------------------------------------------------------------- state (one owner: this module)
_global = False
_master = None  # nodeid of our master (non-global nodes)
_seeds = {}  # seed address -> nodeid, for seeds that answered
_local_db = {}  # what this node itself set: family -> {key: value}

# non-global nodes: pending requests and monitors
_pending = {}  # request id -> (frame, callback or None)
_req_id = 0
_mon_db = {}  # family -> dict (our copy, None until the first g_chg1)
_mon_cbs = {}  # family -> [callbacks]

# global nodes: values per source
_all = {}  # family -> key -> {source_node: value} (last inserted wins)
_mine = {}  # the same, restricted to ourselves and our slaves (what we tell other globals)
_slaves = set()
_peers = set()  # other global nodes we mesh with
_remote_mons = {}  # family -> set of nodes watching it


def is_global():
    """True when this node is a global node (a seed others use).

    Example::

        if is_global(): print("I keep the database")
    """
    return _global


def master():
    """The node ID of our master global node (ourselves when global, None when none is up).

    Example::

        print(master())
    """
    return _k._NODE if _global else _master


def _net():
    from . import node

    return node


def _send(nodeid, *frame):
    if nodeid == _k._NODE:
        return
    _k._net.send(nodeid, ("",) + frame)


# ---------------------------------------------------------------- hooks called by node

def configured(cfg):
    _local_db.setdefault("'l", {})[_k._NODE] = _net().listener_addresses()
    if _global:
        _src_replace(_k._NODE, _local_db, mine=True)


def become_global():
    global _global, _master
    if _global:
        return
    _global = True
    _master = None
    logger.info("%s is now a global node", _k._NODE)
    _local_db.setdefault("'g", {})[_k._NODE] = None
    _local_db.setdefault("'l", {})[_k._NODE] = _net().listener_addresses()
    _src_replace(_k._NODE, _local_db, mine=True)
    for nodeid in _net().up_nodes():
        _send(nodeid, "g_global")
    # our own pending requests are answered locally from now on
    pending = list(_pending.values())
    _pending.clear()
    for frame, cb in pending:
        _answer_locally(frame, cb)
    for family in list(_mon_cbs):
        _local_chg1(family)


def seed_up(addr, link):
    nodeid = link.nodeid
    _seeds[addr] = nodeid
    node = _net().get_node(nodeid)
    if not node.addrs:
        node.addrs = [addr]
    _send(nodeid, "g_slave")
    if not _global and _master is None:
        _set_master(nodeid)


def node_up(node):
    if _global:
        _send(node.id, "g_global")


def node_down(node):
    global _master
    nodeid = node.id
    if _global:
        _slaves.discard(nodeid)
        _peers.discard(nodeid)
        for nodes in _remote_mons.values():
            nodes.discard(nodeid)
        _src_drop(nodeid)
    elif nodeid == _master:
        _master = None
        logger.info("master %s is down, looking for another", nodeid)
        for sid in _seeds.values():
            if sid != nodeid and _net().node_is_up(sid):
                _set_master(sid)
                break


def find_node(nodeid):
    """Look up ``nodeid``'s addresses; answers arrive through ``RemoteNode.found``."""
    if _global:
        addrs = _effective(_all, "'l", nodeid)
        _net().get_node(nodeid).found(addrs)
        return True
    if _master is None and not _seeds_configured():
        return False
    _request(("g_find", nodeid), None, key=("g_find", nodeid))
    return True


def _seeds_configured():
    return bool(_net()._cfg.get("seeds"))


def _set_master(nodeid):
    global _master
    _master = nodeid
    logger.info("new master node: %s", nodeid)
    _send(nodeid, "g_slave", _local_db)
    for frame, _cb in list(_pending.values()):
        _send(nodeid, *frame)
    for family in _mon_cbs:
        _send(nodeid, "g_mon1", family)


# ---------------------------------------------------------------- requests to the master

def _request(frame, cb, key=None):
    """Send ``frame`` to the master now and again whenever the master changes."""
    global _req_id
    if key is None:
        _req_id += 1
        key = "r" + _k._base62(_req_id)
        frame = frame + (key,)
    if _global:
        _answer_locally(frame, cb)
        return
    _pending[key] = (frame, cb)
    if _master is not None:
        _send(_master, *frame)


def _answer_locally(frame, cb):
    tag = frame[0]
    if tag == "g_find":
        _net().get_node(frame[1]).found(_effective(_all, "'l", frame[1]))
        return
    if tag in _DB_QUERIES and cb is not None:
        result = _DB_QUERIES[tag](frame[1])
        _k._spawn_raw(cb, result)


# ---------------------------------------------------------------- per-source value store
#
# store[family][key] = {source: (stamp, value)}. The effective value of a key is the one with
# the newest stamp (ties: the larger JSON encoding), so every global node picks the same value
# from the same entries, whatever order they arrived in. A stamp is the wall-clock time at which
# a global node first took the value from one of its slaves (or from itself), made later than
# every stamp it already holds for the key (clocks of global nodes may differ); global nodes pass
# it on to each other as an extra argument of ``g_set``/``g_upd`` (AEMP ignores extra
# arguments; values from peers that send none are stamped when they arrive). Without stamps,
# "last arrived wins" let two global nodes keep different values for a key that two nodes set
# at about the same time, for good.

def _stamp_ok(stamp):
    return stamp.__class__ in (int, float) and math.isfinite(stamp)  # not bool, NaN or inf


def _winner(srcs):
    """The ``(stamp, value)`` entry of ``srcs`` that is in effect."""
    if len(srcs) == 1:
        return next(iter(srcs.values()))
    return max(srcs.values(), key=lambda sv: (sv[0], _enc(sv[1])))


def _effective(store, family, key):
    srcs = store.get(family, {}).get(key)
    if not srcs:
        return None
    return _winner(srcs)[1]


def _family_view(store, family):
    fam = store.get(family)
    if not fam:
        return {}
    return {k: _winner(srcs)[1] for k, srcs in fam.items() if srcs}


def _family_stamps(store, family):
    fam = store.get(family)
    if not fam:
        return {}
    return {k: _winner(srcs)[0] for k, srcs in fam.items() if srcs}


def _store_set(store, family, key, src, value, stamp):
    """Set ``src``'s value; returns True when the effective value changed."""
    fam = store.setdefault(family, {})
    srcs = fam.get(key)
    if not srcs:
        fam[key] = {src: (stamp, value)}
        return True
    old = _winner(srcs)[1]
    srcs[src] = (stamp, value)
    return _enc(old) != _enc(_winner(srcs)[1])


def _store_del(store, family, key, src):
    """Remove ``src``'s value; returns (effective changed, key still exists)."""
    fam = store.get(family)
    if not fam or key not in fam or src not in fam[key]:
        return False, bool(fam and fam.get(key))
    srcs = fam[key]
    old = _winner(srcs)[1]
    del srcs[src]
    if not srcs:
        del fam[key]
        if not fam:
            del store[family]
        return True, False
    return _enc(old) != _enc(_winner(srcs)[1]), True


def _apply(src, family, set_=None, dels=None, mine=False, stamps=None):
    """Apply a source's change to the merged views; notify watchers; tell other globals.

    ``stamps`` (``{key: stamp}``, from a peer global node) dates the values; the others are
    stamped now."""
    chg_set, chg_del = {}, []
    mine_set, mine_del = {}, []
    now = time.time()
    for key, value in (set_ or {}).items():
        stamp = stamps.get(key) if stamps else None
        if not _stamp_ok(stamp):
            # taken from a slave (or a peer that sends no stamps) now; but the same value again
            # from the same source (a slave re-sending its whole database to a new master, say)
            # is not a new write: it keeps its date
            srcs = _all.get(family, {}).get(key)
            had = srcs.get(src) if srcs else None
            if had is not None and had[1] == value and _enc(had[1]) == _enc(value):
                stamp = had[0]
            elif srcs:
                # a new write is newer than anything we hold for the key, even when another
                # global node's clock runs ahead of ours
                stamp = max(now, _winner(srcs)[0] + 1e-6)
            else:
                stamp = now
        if _store_set(_all, family, key, src, value, stamp):
            chg_set[key] = _effective(_all, family, key)
        if mine and _store_set(_mine, family, key, src, value, stamp):
            mine_set[key] = _effective(_mine, family, key)
    for key in dels or ():
        changed, exists = _store_del(_all, family, key, src)
        if changed:
            if exists:
                chg_set[key] = _effective(_all, family, key)
            else:
                chg_del.append(key)
        if mine:
            changed, exists = _store_del(_mine, family, key, src)
            if changed:
                if exists:
                    mine_set[key] = _effective(_mine, family, key)
                else:
                    mine_del.append(key)
    if chg_set or chg_del:
        _notify(family, chg_set, chg_del)
        if family == "'g":
            for nodeid in chg_set:
                if nodeid != _k._NODE and not _net().node_is_up(nodeid):
                    _send(nodeid, "g_global")  # keep the global mesh connected
    if mine_set or mine_del:
        fam = _mine.get(family, {})
        mine_stamps = {k: _winner(fam[k])[0] for k in mine_set}
        for peer in list(_peers):
            _send(peer, "g_upd", family, mine_set or None, mine_del or None, mine_stamps)


def _src_replace(src, db, mine, stamps=None):
    """Replace everything ``src`` contributed with ``db`` (``g_slave`` with a db, ``g_set``;
    ``stamps``: ``{family: {key: stamp}}`` from a ``g_set``)."""
    new = db or {}
    for family in list(_all):
        fam = _all.get(family, {})
        gone = [k for k, srcs in fam.items() if src in srcs and k not in new.get(family, {})]
        if gone:
            _apply(src, family, None, gone, mine=mine)
    for family, kv in new.items():
        if isinstance(kv, dict) and kv:
            fstamps = stamps.get(family) if isinstance(stamps, dict) else None
            _apply(src, family, kv, None, mine=mine,
                   stamps=fstamps if isinstance(fstamps, dict) else None)


def _src_drop(src):
    for family in list(_all):
        keys = [k for k, srcs in _all.get(family, {}).items() if src in srcs]
        if keys:
            _apply(src, family, None, keys, mine=True)


def _enc(value):
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


# ---------------------------------------------------------------- watchers

def _notify(family, chg_set, chg_del):
    """A family changed in the merged view (global node): local and remote watchers."""
    if family in _mon_cbs:
        db = _mon_db.get(family)
        if db is None:
            db = _mon_db[family] = {}
        added, changed = [], []
        for k, v in chg_set.items():
            (changed if k in db else added).append(k)
            db[k] = v
        deleted = [k for k in chg_del if db.pop(k, _MISSING) is not _MISSING]
        _call_watchers(family, db, added, changed, deleted)
    for nodeid in list(_remote_mons.get(family, ())):
        _send(nodeid, "g_chg2", family, chg_set or None, chg_del or None)


_MISSING = object()


def _call_watchers(family, db, added, changed, deleted, only=None):
    """Call the watchers now, in update order (as AEMP): each sees the family as of its event."""
    for cb in list(only or _mon_cbs.get(family, ())):
        _safe_watch(cb, db, list(added), list(changed), list(deleted))


def _safe_watch(cb, db, added, changed, deleted):
    try:
        cb(db, added, changed, deleted)
    except Exception:
        logger.exception("db_mon callback %r failed", cb)


def _local_chg1(family):
    """On a global node: (re)load our copy of a watched family from the merged view."""
    _apply_chg1(family, _family_view(_all, family))


def _apply_chg1(family, new):
    old = _mon_db.get(family)
    db = old if old is not None else {}
    added, changed, deleted = [], [], []
    for k, v in (new or {}).items():
        if k in db:
            if _enc(db[k]) != _enc(v):
                changed.append(k)
        else:
            added.append(k)
        db[k] = v
    for k in [k for k in db if k not in (new or {})]:
        del db[k]
        deleted.append(k)
    _mon_db[family] = db
    if old is None or added or changed or deleted:
        _call_watchers(family, db, added, changed, deleted)


# ---------------------------------------------------------------- node requests

def _req_g_slave(from_node, db=None, *_):
    become_global()
    _slaves.add(from_node)
    if isinstance(db, dict):
        _src_replace(from_node, db, mine=True)


def _peer_up(nodeid):
    """``nodeid`` is another global node: mesh with it (once) by sending it our slaves' view."""
    if nodeid not in _peers:
        _peers.add(nodeid)
        _slaves.discard(nodeid)
        _send(nodeid, "g_set", _mine_db(), {f: _family_stamps(_mine, f) for f in list(_mine)})


def _req_g_global(from_node, *_):
    if _global:
        _peer_up(from_node)


def _mine_db():
    return {f: _family_view(_mine, f) for f in list(_mine)}


def _req_g_set(from_node, db=None, stamps=None, *_):
    if not _global:
        return
    _peer_up(from_node)
    _src_replace(from_node, db if isinstance(db, dict) else {}, mine=False, stamps=stamps)


def _req_g_upd(from_node, family, set_=None, dels=None, stamps=None, *_):
    if not _global or not isinstance(family, str):
        return
    peer = from_node in _peers
    _apply(from_node, family, set_ if isinstance(set_, dict) else None,
           dels if isinstance(dels, list) else None, mine=not peer,
           stamps=stamps if peer and isinstance(stamps, dict) else None)


def _req_g_find(from_node, nodeid, *_):
    _send(from_node, "g_found", nodeid, _effective(_all, "'l", nodeid) if _global else None)


def _req_g_found(from_node, nodeid, addrs=None, *_):
    _pending.pop(("g_find", nodeid), None)
    if not isinstance(nodeid, str):
        return
    _net().get_node(nodeid).found(addrs if isinstance(addrs, list) else None)


_DB_QUERIES = {
    "g_db_family": lambda f: _family_view(_all, f),
    "g_db_keys": lambda f: list(_family_view(_all, f)),
    "g_db_values": lambda f: list(_family_view(_all, f).values()),
}


def _db_query(tag):
    def handler(from_node, family, rid=None, *_):
        _send(from_node, "g_reply", rid, _DB_QUERIES[tag](family) if _global else None)
    return handler


def _req_g_reply(from_node, rid, result=None, *_):
    entry = _pending.pop(rid, None)
    if entry is not None and entry[1] is not None:
        # in a fresh greenlet: the callback may block (even query the master again) without
        # stalling the link this reply came on
        _k._spawn_raw(entry[1], result)


def _req_g_mon1(from_node, family, *_):
    if not _global:
        return
    _remote_mons.setdefault(family, set()).add(from_node)
    _send(from_node, "g_chg1", family, _family_view(_all, family) or None)


def _req_g_mon0(from_node, family, *_):
    nodes = _remote_mons.get(family)
    if nodes is not None:
        nodes.discard(from_node)


def _req_g_chg1(from_node, family, db=None, *_):
    if from_node != _master or family not in _mon_cbs:
        return
    _apply_chg1(family, db if isinstance(db, dict) else {})


def _req_g_chg2(from_node, family, set_=None, dels=None, *_):
    if from_node != _master or family not in _mon_cbs:
        return
    db = _mon_db.get(family)
    if db is None:
        return
    added, changed = [], []
    for k, v in (set_ or {}).items():
        (changed if k in db else added).append(k)
        db[k] = v
    deleted = [k for k in (dels or ()) if db.pop(k, _MISSING) is not _MISSING]
    _call_watchers(family, db, added, changed, deleted)


for _tag, _fn in (
    ("g_slave", _req_g_slave),
    ("g_global", _req_g_global),
    ("g_set", _req_g_set),
    ("g_upd", _req_g_upd),
    ("g_find", _req_g_find),
    ("g_found", _req_g_found),
    ("g_db_family", _db_query("g_db_family")),
    ("g_db_keys", _db_query("g_db_keys")),
    ("g_db_values", _db_query("g_db_values")),
    ("g_reply", _req_g_reply),
    ("g_mon1", _req_g_mon1),
    ("g_mon0", _req_g_mon0),
    ("g_chg1", _req_g_chg1),
    ("g_chg2", _req_g_chg2),
):
    _k.register_node_request(_tag, _fn)
del _tag, _fn


# ---------------------------------------------------------------- public API

def _check_family(family, writing=False):
    if not isinstance(family, str):
        raise ValueError("family name must be a string, not %r" % (family,))
    if family.startswith("'"):
        if writing:
            raise ValueError("family %r is internal (names starting with ' are reserved)" % family)
        return
    if not _FAMILY.fullmatch(family):
        raise ValueError("bad family name %r: must match [A-Za-z][A-Za-z0-9_:]*" % (family,))


def _check_key(key):
    if not isinstance(key, str):
        raise ValueError("database keys must be strings, not %r" % (key,))


def _local_update(family, set_=None, dels=None):
    if _global:
        _apply(_k._NODE, family, set_, dels, mine=True)
    elif _master is not None:
        _send(_master, "g_upd", family, set_ or None, dels or None)


def db_set(family, key, value=None):
    """Set ``key`` in ``family`` to ``value`` in the shared database (as this node's entry).

    An unchanged value is not sent again. Returns a guard: kept and dropped (or cancelled),
    it deletes the key; as a bare statement the entry stays until ``db_del`` or this node
    goes down.

    Example::

        db_set("eg_receivers", SELF(), {"info": "receiver"})
    """
    _k._check_thread()  # before anything changes (docs/running.md)
    _check_family(family, writing=True)
    _check_key(key)
    fam = _local_db.setdefault(family, {})
    if key not in fam or _enc(fam[key]) != _enc(value):
        fam[key] = value
        _local_update(family, {key: value}, None)
    return Guard.for_caller(lambda: db_del(family, key))


def db_del(family, *keys):
    """Delete ``keys`` (this node's entries) from ``family``.

    Example::

        db_del("eg_receivers", SELF())
    """
    _k._check_thread()  # before anything changes (docs/running.md)
    _check_family(family, writing=True)
    fam = _local_db.get(family)
    gone = [k for k in keys if fam and k in fam]
    for k in gone:
        del fam[k]
    if fam is not None and not fam:
        del _local_db[family]
    if gone:
        _local_update(family, None, gone)


def db_reg(family, port=None, value=None):
    """``db_set(family, port, value)`` that is deleted automatically when ``port`` dies.

    ``port`` defaults to ``SELF()``. Returns a guard like ``db_set``.

    Example::

        db_reg("workers")          # inside a port: register it until it dies
    """
    _k._check_thread()  # before anything changes (docs/running.md)
    if port is None:
        port = _k._get_self()
        if port is None:
            raise RuntimeError("db_reg without a port needs a port context (SELF)")
        port = port.id
    _check_family(family, writing=True)
    _check_key(port)
    fam = _local_db.setdefault(family, {})
    if port not in fam or _enc(fam[port]) != _enc(value):
        fam[port] = value
        _local_update(family, {port: value}, None)
    undo_mon = _k._add_monitor(port, lambda *reason: db_del(family, port))

    def undo():
        undo_mon()
        db_del(family, port)

    return Guard.for_caller(undo)


def _query(tag, family, cb, timeout):
    _k._check_thread()  # before anything changes (docs/running.md)
    _check_family(family)
    if cb is not None:
        _request((tag, family), cb)
        return None
    result = AsyncResult()
    _request((tag, family), result.set)
    try:
        return result.get(timeout=timeout)
    except gevent.Timeout:
        raise Timeout("%s(%r) timed out" % (tag[5:], family)) from None


def db_family(family, cb=None, timeout=None):
    """The whole family as a dict: ``cb(dict)`` later, or (without ``cb``) block and return it.

    Example::

        receivers = db_family("eg_receivers", timeout=5)
    """
    return _query("g_db_family", family, cb, timeout)


def db_keys(family, cb=None, timeout=None):
    """The keys of ``family`` as a list (callback or blocking form, as ``db_family``).

    Example::

        ports = db_keys("eg_receivers", timeout=5)
    """
    return _query("g_db_keys", family, cb, timeout)


def db_values(family, cb=None, timeout=None):
    """The values of ``family`` as a list (callback or blocking form, as ``db_family``).

    Example::

        infos = db_values("eg_receivers", timeout=5)
    """
    return _query("g_db_values", family, cb, timeout)


def db_mon(family, cb):
    """Watch ``family``: ``cb(family_dict, added, changed, deleted)`` on every change.

    The first call carries the whole family (every key in ``added``), also when it is empty;
    later calls list the keys added, changed and deleted. ``family_dict`` is a live copy owned
    by the library. Callbacks run synchronously, in update order, as in AEMP (on a global node the
    first call may come before ``db_mon`` returns); they must not block: spawn a greenlet port
    for slow work. Returns a guard (kept and dropped, or cancelled, stops watching).

    Example::

        def seen(db, added, changed, deleted):
            for port in added:
                snd(port, "test", "hello")
        db_mon("eg_receivers", seen)
    """
    _k._check_thread()  # before anything changes (docs/running.md)
    _check_family(family)
    cbs = _mon_cbs.get(family)
    if cbs is None:
        _mon_cbs[family] = [cb]
        _mon_db[family] = None
        if _global:
            _local_chg1(family)
        elif _master is not None:
            _send(_master, "g_mon1", family)
    else:
        cbs.append(cb)
        db = _mon_db.get(family)
        if db is not None:
            _call_watchers(family, db, list(db), [], [], only=[cb])

    def undo():
        lst = _mon_cbs.get(family)
        if lst and cb in lst:
            lst.remove(cb)
            if not lst:
                del _mon_cbs[family]
                _mon_db.pop(family, None)
                if not _global and _master is not None:
                    _send(_master, "g_mon0", family)

    return Guard.for_caller(undo)
