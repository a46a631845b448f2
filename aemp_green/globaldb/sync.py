"""globaldb.sync: the messages that keep this node's database in sync with the others.

Roles (docs/protocol.md#node-port-requests, #seeds-and-global-nodes, #database-events):

* Every node keeps its **local database** ``{family: {key: value}}``: what it set itself, plus
  ``'l`` (its own listener addresses) and, on global nodes, ``'g`` (itself).
* A node connects to all of its seeds and tells each ``g_slave`` (which makes every seed a
  **global node**). A non-global node takes the first seed that is up as its **master**, sends
  it ``g_slave`` with its whole local database, and then sends its changes as ``g_upd``. Every
  request that needs an answer (``g_find``, ``g_mon1``, ``g_db_*``) is re-sent when the master
  changes.
* A **global node** merges the databases of its slaves and of the other global nodes it meshes
  with (``g_global``, then ``g_set``; changes as ``g_upd``) in a ``store.Store``: values are
  kept per source node, so when a node goes down its entries disappear and a value another node
  set for the same key comes back; when several nodes set one key, the newest value is in
  effect (the stamps and the merge rule are described in ``store``). Global nodes answer
  ``g_find`` from ``'l``, ``g_db_*``, and push ``g_chg1`` / ``g_chg2`` to nodes that watch a
  family.

What other nodes send is checked on the way in (values every link can carry, stamps not far
ahead of our clock, ``g_found`` only as the answer to our ``g_find``) and bounded by settings
(``db_*`` in ``config.SETTINGS``); refused input is dropped with a rate-limited log line.
Large families, replies and updates travel in frames of about ``db_chunk`` bytes (see "frames
of bounded size").

This module owns the state of the node's database role (master, seeds, pending requests,
watchers) and is the only writer of the store. The public API: ``db_set``, ``db_del``,
``db_reg``, ``db_family``, ``db_keys``, ``db_values``, ``db_mon``. ``runtime`` installs this
module as ``node``'s directory (``node.set_directory``: ``find_node``, ``node_up``,
``node_down``) and calls ``configured``, ``become_global`` and ``seed_up``.
"""

import logging
import time
from typing import Any, Callable, Optional, cast

import gevent
from gevent.event import AsyncResult

from .. import config as _config
from .. import connect
from .. import _hub
from .. import kernel as _k
from .. import node as _node
from .._guard import Guard
from .._report import report_crash
from ..exceptions import NoDatabaseError, Timeout
from ..wire import framing as _framing
from . import store
from .store import Changes, Limits, Store, admit, enc, family_ok, show

__all__ = [
    "db_set",
    "db_del",
    "db_reg",
    "db_family",
    "db_keys",
    "db_values",
    "db_mon",
    "is_global",
    "master",
    "global_nodes",
    "family_sizes",
    "configured",
    "become_global",
    "seed_up",
    "node_up",
    "node_down",
    "find_node",
]

logger = logging.getLogger(__name__)

#: a value sits at most this many levels deep inside a database frame (g_set: db, family, key)
_MAX_VALUE_DEPTH = _framing.MAX_DEPTH - 8
_WARN_EVERY = 10.0  # seconds between two warnings of one kind

# ---------------------------------------------------------------- state (one owner: this module)
_global = False
_master: Optional[str] = None  # nodeid of our master (non-global nodes)
_seeds: dict[str, str] = {}  # seed address -> nodeid, for seeds that answered
_local_db: dict[str, dict[str, Any]] = {}  # what this node itself set: family -> {key: value}

# non-global nodes: pending requests and monitors
_pending: dict[Any, tuple[tuple[Any, ...], Optional[Callable[[Any], Any]]]] = {}
_req_id = 0  # request id -> (frame, callback or None); g_find requests by ("g_find", nodeid)
_mon_db: dict[str, Optional[dict[str, Any]]] = {}  # family -> our copy (None until g_chg1)
_mon_cbs: dict[str, list[Callable[..., Any]]] = {}  # family -> [callbacks]
# answers arriving in parts: request id or ("chg1", family) -> what came so far
_parts: dict[Any, Any] = {}

# global nodes: the merged database, and who watches which family
_store = Store()  # (warn: _warn, set below)
_remote_mons: dict[str, set[str]] = {}  # family -> nodes watching it (no empty sets)
_mons_of: dict[str, set[str]] = {}  # node -> families it watches (no empty sets)

# settings read by configured(); the defaults of config.SETTINGS until then
_limits = Limits(_MAX_VALUE_DEPTH)
# rate-limited warnings: kind -> [monotonic time of the last line, lines skipped]
_warned: dict[str, list[Any]] = {}


def is_global() -> bool:
    """True when this node is a global node (a seed others use).

    Example::

        if is_global(): print("I keep the database")
    """
    return _global


def master() -> Optional[str]:
    """The node ID of our master global node (ourselves when global, None when none is up).

    Example::

        print(master())
    """
    return _k.this_node if _global else _master


def global_nodes() -> list[str]:
    """The global nodes this node knows of: a global node, every one in the database (itself
    included); any other node, its master and the seeds that answered.

    Example::

        print(global_nodes())    # ['seed']
    """
    if _global:
        return sorted(_store.keys("'g"))
    return sorted({n for n in list(_seeds.values()) + [_master] if n is not None})


def family_sizes() -> dict[str, int]:
    """``{family: number of keys}`` of the database families this node knows: a global node,
    all of them; any other node, the ones it set values in or watches (``db_mon``).

    Example::

        print(family_sizes())    # {"'g": 1, "'l": 3, 'workers': 2}
    """
    if _global:
        return {family: len(keys) for family, keys in list(_store.holders.items()) if keys}
    sizes = {family: len(keys) for family, keys in list(_local_db.items()) if keys}
    for family, db in list(_mon_db.items()):
        if db is not None:
            sizes[family] = len(db)
    return sizes


def _send(nodeid: str, *frame: Any) -> None:
    if nodeid == _k.this_node:
        return
    _k.network.send(nodeid, ("",) + frame)


# ---------------------------------------------------------------- bad input


def _warn(kind: str, fmt: str, *args: Any) -> None:
    """Log bad input from the network: one WARNING per ``kind`` every 10 s, the rest counted."""
    now = time.monotonic()
    last = _warned.get(kind)
    if last is not None and now - last[0] < _WARN_EVERY:
        last[1] += 1
        return
    _warned[kind] = [now, 0]
    if last is not None and last[1]:
        fmt += " (and %d more like it not logged)" % last[1]
    logger.warning(fmt, *args)


_store.warn = _warn


def _family_ok(family: Any, src: str) -> bool:
    return store.family_ok(family, src, _limits.db_max_key, _warn)


def _max_keys(src: str) -> Optional[int]:
    """How many keys ``src`` may hold here (our own writes are not bounded)."""
    return _limits.db_max_keys if src != _k.this_node else None


# ---------------------------------------------------------------- hooks called by node


def configured(cfg: dict[str, Any]) -> None:
    """``configure`` has run with the settings ``cfg``: take the limits, publish our addresses.

    Example::

        node.set_directory(sync); ...; sync.configured(node.config())
    """
    global _limits
    _limits = _limits.updated(cfg)
    _local_db.setdefault("'l", {})[_k.this_node] = connect.listener_addresses()
    if _global:
        _replace(_k.this_node, _local_db, check=False)


def become_global() -> None:
    """Become a global node (a node told us ``g_slave``, or we are our own seed): keep the
    merged database from now on and answer our own requests locally.

    Example::

        become_global()    # in _req_g_slave
    """
    global _global, _master
    if _global:
        return
    _global = True
    _master = None
    _parts.clear()
    logger.info("%s is now a global node", _k.this_node)
    _local_db.setdefault("'g", {})[_k.this_node] = None
    _local_db.setdefault("'l", {})[_k.this_node] = connect.listener_addresses()
    _replace(_k.this_node, _local_db, check=False)
    for nodeid in _node.up_nodes():
        _send(nodeid, "g_global")
    # our own pending requests are answered locally from now on
    pending = list(_pending.values())
    _pending.clear()
    for frame, cb in pending:
        _answer_locally(frame, cb)
    for family in list(_mon_cbs):
        _local_chg1(family)


def seed_up(addr: str, link: Any) -> None:
    """The seed at ``addr`` answered on ``link``: tell it ``g_slave``; our master if we have
    none.

    Example::

        seed_up("10.0.0.1:4040", link)     # node's seed loop, once connected
    """
    nodeid = link.nodeid
    _seeds[addr] = nodeid
    node = _node.get_node(nodeid)
    if not node.addrs:
        node.addrs = [addr]
    _send(nodeid, "g_slave")
    if not _global and _master is None:
        _set_master(nodeid)


def node_up(node: Any) -> None:
    """A link to ``node`` came up: a global node tells it so (``g_global``).

    Example::

        node_up(get_node("n1"))
    """
    if _global:
        _send(node.id, "g_global")


def node_down(node: Any) -> None:
    """``node`` went down (or could not be reached): forget what it held and watched.

    Costs work in proportion to what that node held and watched, not to the database size.

    Example::

        _hooks().node_down(self)   # RemoteNode.transport_error, in node
    """
    global _master
    nodeid = node.id
    if _global:
        for family, ch in _store.drop(nodeid):
            _publish(family, ch)
        for family in _mons_of.pop(nodeid, ()):
            nodes = _remote_mons.get(family)
            if nodes is not None:
                nodes.discard(nodeid)
                if not nodes:
                    del _remote_mons[family]
    elif nodeid == _master:
        _master = None
        _parts.clear()
        logger.info("master %s is down, looking for another", nodeid)
        for sid in _seeds.values():
            if sid != nodeid and _node.node_is_up(sid):
                _set_master(sid)
                break


def find_node(nodeid: str) -> bool:
    """Look up ``nodeid``'s addresses; answers arrive through ``RemoteNode.found``. False when
    there is nobody to ask (no master and no seeds).

    Example::

        if not find_node("n1"): ...      # node: give up on n1
    """
    if _global:
        _node.get_node(nodeid).found(_store.effective("'l", nodeid))
        return True
    if _master is None and not _seeds_configured():
        return False
    key = ("g_find", nodeid)
    if key not in _pending:  # asked already: the master answers that one
        _request(("g_find", nodeid), None, key=key)
    return True


def _seeds_configured() -> bool:
    return bool(_config.setting("seeds"))


def _set_master(nodeid: str) -> None:
    global _master
    _master = nodeid
    _parts.clear()
    logger.info("new master node: %s", nodeid)
    _send_db(nodeid, "g_slave", _local_db)
    for frame, _cb in list(_pending.values()):
        _send(nodeid, *frame)
    for family in _mon_cbs:
        _send(nodeid, "g_mon1", family)


# ---------------------------------------------------------------- requests to the master


def _request(
    frame: tuple[Any, ...],
    cb: Optional[Callable[[Any], Any]],
    key: Any = None,
    extra: tuple[Any, ...] = (),
) -> None:
    """Send ``frame`` to the master now and again whenever the master changes (``extra``
    follows the request id)."""
    global _req_id
    if key is None:
        _req_id += 1
        key = "r" + _k.base62(_req_id)
        frame = frame + (key,) + extra
    if _global:
        _answer_locally(frame, cb)
        return
    _pending[key] = (frame, cb)
    if _master is not None:
        _send(_master, *frame)


def _answer_locally(frame: tuple[Any, ...], cb: Optional[Callable[[Any], Any]]) -> None:
    tag = frame[0]
    if tag == "g_find":
        _node.get_node(frame[1]).found(_store.effective("'l", frame[1]))
        return
    if tag in _DB_QUERIES and cb is not None:
        result = _DB_QUERIES[tag](frame[1])
        _k.spawn_raw(cb, result)


# ---------------------------------------------------------------- changing the store


def _publish(family: str, ch: Changes) -> None:
    """Tell who must hear of a change ``ch`` of the store: the watchers of the family (ours
    and remote ones) when its effective view changed, the other global nodes when "mine"
    did."""
    chg_set, chg_del, up_set, up_del, up_stamps = ch
    if chg_set or chg_del:
        _notify(family, chg_set, chg_del)
        if family == "'g":
            for nodeid in chg_set:
                # keep the global mesh connected, with the global nodes we can reach
                if (
                    nodeid != _k.this_node
                    and not _node.node_is_up(nodeid)
                    and (
                        _store.win("'l", nodeid) is not None
                        or store.addr_ok(nodeid, _limits.max_addr_len)
                    )
                ):
                    _send(nodeid, "g_global")
    if up_set or up_del:
        frames = store.change_frames(up_set, up_del, _limits.db_chunk, up_stamps)
        for peer in list(_store.peers):
            for frame in frames:
                _send(peer, "g_upd", family, *frame)


def _apply(
    src: str,
    family: str,
    set_: Optional[dict[str, Any]] = None,
    dels: Optional[list[Any]] = None,
    stamps: Optional[dict[str, Any]] = None,
) -> None:
    """Apply a source's change to the store; notify watchers; tell other globals."""
    # positional: one update per db_set of a slave, the hot path of a global node
    lim = _limits
    ch = _store.apply(
        src,
        family,
        set_,
        dels,
        stamps,
        time.time(),
        lim.db_stamp_skew,
        None if src == _k.this_node else lim.db_max_keys,
    )
    _publish(family, ch)


def _replace(src: str, db: Any, stamps: Any = None, check: bool = True) -> None:
    """Replace everything ``src`` holds with ``db`` (``check``: it came from the network)."""
    changes = _store.replace(
        src,
        db,
        stamps,
        limits=_limits,
        now=time.time(),
        max_keys=_max_keys(src),
        check=check,
    )
    for family, ch in changes:
        _publish(family, ch)


# ---------------------------------------------------------------- frames of bounded size
#
# How the parts travel (``store`` cuts them; see "frames of bounded size" there):
#
# * ``g_slave db`` / ``g_set db stamps``: the first frame carries a part of the database (it
#   replaces what the receiver held from us), ``g_upd family set`` frames the rest (AEMP 2.02
#   understands both).
# * ``g_chg2``/``g_upd`` with many keys: several frames, each a valid change on its own.
# * ``g_chg1`` (the first ``db_mon`` answer): ``["", "g_chg1", family, part, 1]``, then
#   ``["", "g_chg2", family, part, null, 1]`` ... and a last ``g_chg2`` without the trailing
#   1. An AEMP 2.02 watcher sees a first call with part of the family and then the rest as
#   added keys; ours waits for the last part and makes one first call with the whole family.
# * ``g_reply``: only when the request said it takes parts (our requests add the part size
#   they want after the request id, ``["", "g_db_family", family, id, 65536]``; AEMP ignores
#   it): ``["", "g_reply", id, part, 1]`` ... and a last ``["", "g_reply", id, part]``.


def _send_db(nodeid: str, tag: str, db: Any, stamps: Any = None) -> None:
    """Send a whole database as ``tag`` (``g_slave`` or, with ``stamps``, ``g_set``): one frame
    when it fits in ``db_chunk`` bytes, else a first ``tag`` frame and ``g_upd`` frames."""
    cut = store.db_frames(db, _limits.db_chunk, stamps)
    if cut is None:
        if stamps is None:
            _send(nodeid, tag, db)
        else:
            _send(nodeid, tag, db, stamps)
        return
    first, first_st, rest = cut
    if stamps is None:
        _send(nodeid, tag, first)
    else:
        _send(nodeid, tag, first, first_st)
    for family, part, part_st in rest:
        if stamps is None:
            _send(nodeid, "g_upd", family, part, None)
        else:
            _send(nodeid, "g_upd", family, part, None, part_st)


def _send_family(nodeid: str, family: str) -> None:
    """``g_chg1`` with the whole family, in parts when it is larger than ``db_chunk``."""
    parts = store.family_parts(_store.family_view(family), _limits.db_chunk)
    if len(parts) == 1:
        _send(nodeid, "g_chg1", family, parts[0] or None)
        return
    _send(nodeid, "g_chg1", family, parts[0], 1)
    for part in parts[1:-1]:
        _send(nodeid, "g_chg2", family, part, None, 1)
    _send(nodeid, "g_chg2", family, parts[-1], None)


def _send_reply(nodeid: str, rid: Any, result: Any, chunk: Any) -> None:
    """``g_reply``, in parts of about ``chunk`` bytes when the requester takes parts."""
    parts = store.reply_parts(result, chunk, _limits.db_chunk)
    for part in parts[:-1]:
        _send(nodeid, "g_reply", rid, part, 1)
    _send(nodeid, "g_reply", rid, parts[-1])


# ---------------------------------------------------------------- watchers


def _notify(family: str, chg_set: dict[str, Any], chg_del: list[str]) -> None:
    """A family changed in the merged view (global node): local and remote watchers."""
    if family in _mon_cbs:
        db = _mon_db.get(family)
        if db is None:
            db = _mon_db[family] = {}
        _call_watchers(family, db, *store.watch_update(db, chg_set, chg_del))
    nodes = _remote_mons.get(family)
    if nodes:
        frames = store.change_frames(chg_set, chg_del, _limits.db_chunk)
        for nodeid in list(nodes):
            for frame in frames:
                _send(nodeid, "g_chg2", family, *frame)


def _call_watchers(
    family: str,
    db: dict[str, Any],
    added: list[str],
    changed: list[str],
    deleted: list[str],
    only: Optional[list[Callable[..., Any]]] = None,
) -> None:
    """Call the watchers now, in update order (as AEMP): each sees the family as of its event."""
    for cb in list(only or _mon_cbs.get(family) or ()):
        _safe_watch(cb, db, list(added), list(changed), list(deleted))


def _safe_watch(
    cb: Callable[..., Any],
    db: dict[str, Any],
    added: list[str],
    changed: list[str],
    deleted: list[str],
) -> None:
    try:
        cb(db, added, changed, deleted)
    except Exception as exc:
        report_crash("db_mon callback", None, exc, detail="(%r, family change)" % (cb,))


def _local_chg1(family: str) -> None:
    """On a global node: (re)load our copy of a watched family from the merged view."""
    _apply_chg1(family, _store.family_view(family))


def _apply_chg1(family: str, new: Optional[dict[str, Any]]) -> None:
    old = _mon_db.get(family)
    db = old if old is not None else {}
    added, changed, deleted = store.watch_reload(db, new)
    _mon_db[family] = db
    if old is None or added or changed or deleted:
        _call_watchers(family, db, added, changed, deleted)


# ---------------------------------------------------------------- node requests


def _req_g_slave(from_node: str, db: Any = None, *_: Any) -> None:
    become_global()
    if isinstance(db, dict):
        _replace(from_node, db)


def _peer_up(nodeid: str) -> None:
    """``nodeid`` is another global node: mesh with it (once) by sending it our slaves' view."""
    if nodeid in _store.peers:
        return
    others = list(_store.peers)
    for family, up_set, up_del, up_stamps in _store.add_peer(nodeid):
        for frame in store.change_frames(up_set, up_del, _limits.db_chunk, up_stamps):
            for peer in others:
                _send(peer, "g_upd", family, *frame)
    db, stamps = _store.mine_db()
    _send_db(nodeid, "g_set", db, stamps)


def _req_g_global(from_node: str, *_: Any) -> None:
    if _global:
        _peer_up(from_node)


def _req_g_set(from_node: str, db: Any = None, stamps: Any = None, *_: Any) -> None:
    if not _global:
        return
    _peer_up(from_node)
    _replace(from_node, db if isinstance(db, dict) else {}, stamps)


def _req_g_upd(
    from_node: str,
    family: Any = None,
    set_: Any = None,
    dels: Any = None,
    stamps: Any = None,
    *_: Any,
) -> None:
    if not _global or not family_ok(family, from_node, _limits.db_max_key, _warn):
        return
    peer = from_node in _store.peers
    _apply(
        from_node,
        family,
        admit(from_node, family, set_, _limits, peer, _warn) if isinstance(set_, dict) else None,
        dels if isinstance(dels, list) else None,
        stamps=stamps if peer and isinstance(stamps, dict) else None,
    )


def _req_g_find(from_node: str, nodeid: Any = None, *_: Any) -> None:
    if nodeid.__class__ is not str:
        return
    _send(from_node, "g_found", nodeid, _store.effective("'l", nodeid) if _global else None)


def _req_g_found(from_node: str, nodeid: Any = None, addrs: Any = None, *_: Any) -> None:
    """Only the answer to a ``g_find`` we sent, from our master, is taken: the addresses of a
    node are dialled, so nobody else may tell us where a node is."""
    if nodeid.__class__ is not str:
        return
    key = ("g_find", nodeid)
    if _global or from_node != _master or key not in _pending:
        _warn(
            "g_found",
            "g_found for %s from %s dropped: not the answer to a g_find of ours",
            show(nodeid),
            from_node,
        )
        return
    del _pending[key]
    addrs = (
        store.clean_addrs(
            addrs, "g_found for %s from %s" % (show(nodeid), from_node), _limits, _warn
        )
        if addrs is not None
        else None
    )
    _node.get_node(nodeid).found(addrs or None)


_DB_QUERIES: dict[str, Callable[[str], Any]] = {
    "g_db_family": lambda f: _store.family_view(f),
    "g_db_keys": lambda f: _store.keys(f),
    "g_db_values": lambda f: list(_store.family_view(f).values()),
}


def _db_query(tag: str) -> Callable[..., None]:
    def handler(
        from_node: str, family: Any = None, rid: Any = None, chunk: Any = None, *_: Any
    ) -> None:
        if not _global or not _family_ok(family, from_node):
            _send(from_node, "g_reply", rid, None)
            return
        _send_reply(from_node, rid, _DB_QUERIES[tag](family), chunk)

    return handler


def _req_g_reply(
    from_node: str, rid: Any = None, result: Any = None, more: Any = None, *_: Any
) -> None:
    if rid.__class__ is not str or from_node != _master:
        return
    entry = _pending.get(rid)
    if entry is None:
        return
    if more:
        acc = _parts[rid] = store.merge_part(_parts.get(rid), result)
        if acc is not None and len(acc) > _limits.db_max_keys:
            _warn(
                "db_parts",
                "answer to %s from %s dropped: more than db_max_keys entries",
                rid,
                from_node,
            )
            del _parts[rid], _pending[rid]
        return
    acc = _parts.pop(rid, None)
    if acc is not None:
        result = store.merge_part(acc, result)
    del _pending[rid]
    if entry[1] is not None:
        # in a fresh greenlet: the callback may block (even query the master again) without
        # stalling the link this reply came on
        _k.spawn_raw(entry[1], result)


def _req_g_mon1(from_node: str, family: Any = None, *_: Any) -> None:
    if not _global or not _family_ok(family, from_node):
        return
    fams = _mons_of.get(from_node)
    if fams is None or family not in fams:
        if fams is not None and len(fams) >= _limits.db_max_watches:
            _warn(
                "db_watches",
                "g_mon1 %s from %s refused: it watches db_max_watches (%d) families already",
                show(family),
                from_node,
                len(fams),
            )
            return
        if fams is None:
            fams = _mons_of[from_node] = set()
        fams.add(family)
        _remote_mons.setdefault(family, set()).add(from_node)
    _send_family(from_node, family)


def _req_g_mon0(from_node: str, family: Any = None, *_: Any) -> None:
    if family.__class__ is not str:
        return
    nodes = _remote_mons.get(family)
    if nodes is not None and from_node in nodes:
        nodes.discard(from_node)
        if not nodes:
            del _remote_mons[family]
        fams = _mons_of[from_node]
        fams.discard(family)
        if not fams:
            del _mons_of[from_node]


def _req_g_chg1(
    from_node: str, family: Any = None, db: Any = None, more: Any = None, *_: Any
) -> None:
    if from_node != _master or family.__class__ is not str or family not in _mon_cbs:
        return
    db = db if isinstance(db, dict) else {}
    if more:
        _parts[("chg1", family)] = dict(db)  # the rest follows as g_chg2 parts
        return
    _parts.pop(("chg1", family), None)
    _apply_chg1(family, db)


def _req_g_chg2(
    from_node: str,
    family: Any = None,
    set_: Any = None,
    dels: Any = None,
    more: Any = None,
    *_: Any,
) -> None:
    if from_node != _master or family.__class__ is not str or family not in _mon_cbs:
        return
    acc = _parts.get(("chg1", family))
    if acc is not None:  # a part of a g_chg1
        if isinstance(set_, dict):
            acc.update(set_)
        if len(acc) > _limits.db_max_keys:
            _warn(
                "db_parts",
                "g_chg1 of %s from %s dropped: more than db_max_keys entries",
                show(family),
                from_node,
            )
            del _parts[("chg1", family)]
            return
        if not more:
            del _parts[("chg1", family)]
            _apply_chg1(family, acc)
        return
    db = _mon_db.get(family)
    if db is None:
        return
    _call_watchers(family, db, *store.watch_update(db, set_, dels))


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


def _check_family(family: Any, writing: bool = False) -> None:
    store.check_family(family, _limits.db_max_key, writing)


def _check_key(key: Any) -> None:
    store.check_key(key, _limits.db_max_key)


def _check_value(value: Any) -> None:
    store.check_value(value, _limits.db_max_value, _limits.max_depth)


def _local_update(
    family: str, set_: Optional[dict[str, Any]] = None, dels: Optional[list[str]] = None
) -> None:
    if _global:
        _apply(_k.this_node, family, set_, dels)
    elif _master is not None:
        _send(_master, "g_upd", family, set_ or None, dels or None)


def db_set(family: str, key: str, value: Any = None) -> Guard:
    """Set ``key`` in ``family`` to ``value`` in the shared database (as this node's entry).

    An unchanged value is not sent again. Returns a guard: cancelled (or at the end of a
    ``with`` block) it deletes the key; otherwise (kept, dropped or a bare statement) the entry
    stays until ``db_del`` or this node goes down. ``value`` must be JSON data that every link
    carries (``TypeError`` for bytes, sets, objects or non-str dict keys; ``ValueError`` for
    NaN, infinity, ints beyond 64 bits, nesting too deep, more than ``db_max_value`` bytes);
    keys and family names have at most ``db_max_key`` characters.

    Example::

        db_set("eg_receivers", SELF(), {"info": "receiver"})
    """
    _hub.check_thread()  # before anything changes (docs/running.md)
    _check_family(family, writing=True)
    _check_key(key)
    _check_value(value)
    fam = _local_db.setdefault(family, {})
    if key not in fam or enc(fam[key]) != enc(value):
        fam[key] = value
        _local_update(family, {key: value}, None)
    return Guard.for_caller(lambda: db_del(family, key))


def db_del(family: str, *keys: str) -> None:
    """Delete ``keys`` (this node's entries) from ``family``.

    Example::

        db_del("eg_receivers", SELF())
    """
    _hub.check_thread()  # before anything changes (docs/running.md)
    _check_family(family, writing=True)
    fam = _local_db.get(family)
    gone = [k for k in keys if fam and k in fam]
    if fam is not None:
        for k in gone:
            del fam[k]
        if not fam:
            del _local_db[family]
    if gone:
        _local_update(family, None, gone)


def db_reg(family: str, port: Optional[str] = None, value: Any = None) -> Guard:
    """``db_set(family, port, value)`` that is deleted automatically when ``port`` dies.

    ``port`` defaults to ``SELF()``. Returns a guard like ``db_set``.

    Example::

        db_reg("workers")          # inside a port: register it until it dies
    """
    _hub.check_thread()  # before anything changes (docs/running.md)
    if port is None:
        me = _k.get_self()
        if me is None:
            raise RuntimeError("db_reg without a port needs a port context (SELF)")
        port = me.id
    _check_family(family, writing=True)
    _check_key(port)
    _check_value(value)
    assert port is not None
    fam = _local_db.setdefault(family, {})
    if port not in fam or enc(fam[port]) != enc(value):
        fam[port] = value
        _local_update(family, {port: value}, None)
    undo_mon = _k.add_monitor(port, lambda *reason: db_del(family, port))

    def undo() -> None:
        undo_mon()
        db_del(family, port)

    return Guard.for_caller(undo)


def _check_reachable(what: str, family: str) -> None:
    """A node with no seeds that is no global node has no database to ask: say so at once
    instead of waiting for a timeout."""
    if not _global and _master is None and not _seeds_configured():
        raise NoDatabaseError(
            "%s(%r): this node has no seeds and is not a global node, so there is no database "
            "to ask. Configure seeds (configure(seeds=['host:port']) or `aemp setseeds "
            "host:port`); a seed lists its own address in its seeds to become a global node."
            % (what, family)
        )


def _query(
    tag: str, family: str, cb: Optional[Callable[[Any], Any]], timeout: Optional[float]
) -> Any:
    _hub.check_thread()  # before anything changes (docs/running.md)
    _check_family(family)
    _check_reachable("db_" + tag[5:], family)
    # after the request id: the part size we take the answer in (AEMP ignores it)
    if cb is not None:
        _request((tag, family), cb, extra=(_limits.request_chunk(),))
        return None
    result = AsyncResult()
    _request((tag, family), result.set, extra=(_limits.request_chunk(),))
    try:
        return result.get(timeout=timeout)
    except gevent.Timeout:
        raise Timeout("%s(%r) timed out" % (tag[5:], family)) from None


def db_family(
    family: str,
    cb: Optional[Callable[[dict[str, Any]], Any]] = None,
    timeout: Optional[float] = None,
) -> Optional[dict[str, Any]]:
    """The whole family as a dict: ``cb(dict)`` later, or (without ``cb``) block and return it.

    Example::

        receivers = db_family("eg_receivers", timeout=5)
    """
    return cast(Optional[dict[str, Any]], _query("g_db_family", family, cb, timeout))


def db_keys(
    family: str, cb: Optional[Callable[[list[str]], Any]] = None, timeout: Optional[float] = None
) -> Optional[list[str]]:
    """The keys of ``family`` as a list (callback or blocking form, as ``db_family``).

    Example::

        ports = db_keys("eg_receivers", timeout=5)
    """
    return cast(Optional[list[str]], _query("g_db_keys", family, cb, timeout))


def db_values(
    family: str, cb: Optional[Callable[[list[Any]], Any]] = None, timeout: Optional[float] = None
) -> Optional[list[Any]]:
    """The values of ``family`` as a list (callback or blocking form, as ``db_family``).

    Example::

        infos = db_values("eg_receivers", timeout=5)
    """
    return cast(Optional[list[Any]], _query("g_db_values", family, cb, timeout))


def db_mon(family: str, cb: Callable[..., Any]) -> Guard:
    """Watch ``family``: ``cb(family_dict, added, changed, deleted)`` on every change.

    The first call carries the whole family (every key in ``added``), also when it is empty;
    later calls list the keys added, changed and deleted. ``family_dict`` is a live copy owned
    by the library. Callbacks run synchronously, in update order, as in AEMP (on a global node the
    first call may come before ``db_mon`` returns); they must not block: spawn a greenlet port
    for slow work. Returns a guard (cancelled, or at the end of a ``with`` block, it stops watching).

    Example::

        def seen(db, added, changed, deleted):
            for port in added:
                snd(port, "test", "hello")
        db_mon("eg_receivers", seen)
    """
    _hub.check_thread()  # before anything changes (docs/running.md)
    _check_family(family)
    _check_reachable("db_mon", family)
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

    def undo() -> None:
        lst = _mon_cbs.get(family)
        if lst and cb in lst:
            lst.remove(cb)
            if not lst:
                del _mon_cbs[family]
                _mon_db.pop(family, None)
                _parts.pop(("chg1", family), None)
                if not _global and _master is not None:
                    _send(_master, "g_mon0", family)

    return Guard.for_caller(undo)
