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

What a global node keeps is indexed by the node that wrote it, so a node joining or leaving
costs work in proportion to what that node holds, never to the size of the database. What
other nodes send is checked on the way in (values every link can carry, stamps not far ahead
of our clock, ``g_found`` only as the answer to our ``g_find``) and bounded by settings
(``db_*`` in ``config.SETTINGS``); refused input is dropped with a rate-limited log line.
Large families, replies and updates travel in frames of about ``db_chunk`` bytes (see
"frames of bounded size").

Only this module writes the database. The public API: ``db_set``, ``db_del``, ``db_reg``,
``db_family``, ``db_keys``, ``db_values``, ``db_mon``.
"""

import json
import logging
import math
import re
import time
from typing import Any, Callable, Optional

import gevent
import ujson
from gevent.event import AsyncResult

from . import config as _config
from . import connect
from .wire import framing as _framing
from . import kernel as _k
from . import node as _node
from ._guard import Guard
from ._report import report_crash
from .exceptions import NoDatabaseError, Timeout

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
]

logger = logging.getLogger(__name__)

_FAMILY = re.compile(r"^[A-Za-z][A-Za-z0-9_:]*$")

# ---------------------------------------------------------------- state (one owner: this module)
_global = False
_master = None  # nodeid of our master (non-global nodes)
_seeds: dict[Any, Any] = {}  # seed address -> nodeid, for seeds that answered
_local_db: dict[Any, Any] = {}  # what this node itself set: family -> {key: value}

# non-global nodes: pending requests and monitors
_pending: dict[Any, Any] = {}  # request id -> (frame, callback or None)
_req_id = 0
_mon_db: dict[Any, Any] = {}  # family -> dict (our copy, None until the first g_chg1)
_mon_cbs: dict[Any, Any] = {}  # family -> [callbacks]
_parts: dict[
    Any, Any
] = {}  # answers arriving in parts: request id or ("chg1", family) -> what came so far

# global nodes: values per source (see "per-source value store")
_by_src: dict[
    Any, Any
] = {}  # source node -> family -> key -> (stamp, value): everything a source holds
_all: dict[Any, Any] = {}  # family -> key -> the source holding it (a str), or a tuple of sources
_src_n: dict[Any, Any] = {}  # source node -> number of keys it holds
_slaves: set[Any] = set()
_peers: set[Any] = set()  # other global nodes we mesh with
_remote_mons: dict[Any, Any] = {}  # family -> set of nodes watching it (no empty sets)
_mons_of: dict[Any, Any] = {}  # node -> set of families it watches (no empty sets)

_limits: dict[
    Any, Any
] = {}  # settings read by configure(); the defaults of config.SETTINGS until then
_warned: dict[
    Any, Any
] = {}  # rate-limited warnings: kind -> [monotonic time of the last line, lines skipped]


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
    return _k.this_node if _global else _master


def global_nodes():
    """The global nodes this node knows of: a global node, every one in the database (itself
    included); any other node, its master and the seeds that answered.

    Example::

        print(global_nodes())    # ['seed']
    """
    if _global:
        return sorted(_all.get("'g") or ())
    return sorted({n for n in list(_seeds.values()) + [_master] if n is not None})


def family_sizes():
    """``{family: number of keys}`` of the database families this node knows: a global node,
    all of them; any other node, the ones it set values in or watches (``db_mon``).

    Example::

        print(family_sizes())    # {"'g": 1, "'l": 3, 'workers': 2}
    """
    if _global:
        return {family: len(keys) for family, keys in list(_all.items()) if keys}
    sizes = {family: len(keys) for family, keys in list(_local_db.items()) if keys}
    for family, db in list(_mon_db.items()):
        if db is not None:
            sizes[family] = len(db)
    return sizes


def _net():
    return _node


def _send(nodeid, *frame):
    if nodeid == _k.this_node:
        return
    _k.network.send(nodeid, ("",) + frame)


# ---------------------------------------------------------------- settings and bad input

_LIMIT_NAMES = (
    "db_stamp_skew",
    "db_max_value",
    "db_max_key",
    "db_max_keys",
    "db_max_watches",
    "db_chunk",
    "max_node_addrs",
    "max_addr_len",
    "max_frame",
)
_WARN_EVERY = 10.0  # seconds between two warnings of one kind
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what every framing (ujson, Perl) carries
# a value sits at most this many levels deep inside a database frame (g_set: db, family, key)
_MAX_VALUE_DEPTH = _framing.MAX_DEPTH - 8
_OWN_KEY_FAMILIES = ("'l", "'g")  # a slave may only set its own entry in these


def _lim(name):
    v = _limits.get(name)
    return v if v is not None else _config.DEFAULTS[name]


def _warn(kind, fmt, *args):
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


def _show(x, n=80):
    """``repr`` (control characters escaped), cut to about ``n`` characters, for a log line."""
    try:
        r = repr(x)
    except Exception:  # an int too large to print, say
        r = "<%s>" % type(x).__name__
    return r if len(r) <= n else r[:n] + "..."


def _value_problem(value, limit):
    """None when ``value`` is database data that every link carries, else ``(exception class,
    reason)``: JSON types only (``None``, ``bool``, 64-bit ``int``, finite ``float``, ``str``
    without lone surrogates, ``list``/``tuple``, ``dict`` with ``str`` keys), nested at most
    ``_MAX_VALUE_DEPTH`` deep, about ``limit`` bytes of JSON at most.

    Example::

        _value_problem({"n": float("nan")}, 1 << 20)   # (ValueError, 'NaN or infinity ...')
    """
    stack = [(value, 0)]
    pop = stack.pop
    push = stack.append
    size = 0
    while stack:
        v, depth = pop()
        t = v.__class__
        if t is str or (t is not bool and isinstance(v, str)):
            size += len(v) + 3
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return ValueError, "a string with a lone surrogate"
        elif v is None or t is bool:
            size += 5
        elif t is int or isinstance(v, int):
            if not _INT_MIN <= v <= _INT_MAX:
                return ValueError, "an integer outside [-2**63, 2**64) (json cannot carry it)"
            size += 21
        elif t is float or isinstance(v, float):
            if not math.isfinite(v):
                return ValueError, "NaN or infinity (json cannot carry it)"
            size += 25
        elif isinstance(v, (list, tuple, dict)):
            if depth >= _MAX_VALUE_DEPTH:
                return ValueError, "containers nested more than %d deep" % _MAX_VALUE_DEPTH
            size += 2 + len(v)
            if isinstance(v, dict):
                for k in v:
                    if k.__class__ is not str and not isinstance(k, str):
                        return TypeError, "a dict key that is not a str (%s)" % _show(k, 40)
                    size += len(k) + 3
                v = v.values()
            for x in v:
                push((x, depth + 1))
        else:
            return (
                TypeError,
                "a value of type %s (only JSON data: None, bool, int, float, "
                "str, list, dict)" % t.__name__,
            )
        if size > limit:
            return ValueError, "larger than db_max_value (%d bytes)" % limit
    return None


def _addr_ok(a):
    """True for a ``host:port`` address we would dial (bounded length, a real port)."""
    if a.__class__ is not str or not a or len(a) > _lim("max_addr_len") or ":" not in a:
        return False
    try:
        host, port = _config.parse_address(a, default_host="*")
    except Exception:
        return False
    return port is not None and host != "*"


def _clean_addrs(addrs, what):
    """The valid addresses of the list ``addrs``, at most ``max_node_addrs`` (logged if any
    were left out); None when ``addrs`` is not a list."""
    if not isinstance(addrs, list):
        return None
    good = [a for a in addrs if _addr_ok(a)]
    cap = _lim("max_node_addrs")
    if len(good) != len(addrs) or len(good) > cap:
        _warn(
            "addrs",
            "%s: %d of %d addresses left out (invalid host:port, longer than "
            "max_addr_len or more than max_node_addrs)",
            what,
            len(addrs) - min(len(good), cap),
            len(addrs),
        )
        good = good[:cap]
    return good


def _key_ok(key):
    return key.__class__ is str and len(key) <= _lim("db_max_key")


def _admit(src, family, set_):
    """The entries of ``set_`` (from ``src``, over the network) that may enter the store.

    Keys must be strings of at most ``db_max_key`` characters, values pass ``_value_problem``;
    in ``'l`` and ``'g`` a node that is not a global node may only set its own entry, and
    ``'l`` holds host:port addresses. The others are dropped with a rate-limited log line."""
    maxval = _lim("db_max_value")
    own_only = family in _OWN_KEY_FAMILIES and src not in _peers
    bad = None
    fixed = None
    for k, v in set_.items():
        if not _key_ok(k):
            why = "a key that is not a str of at most db_max_key characters"
        elif own_only and k != src:
            why = "only a global node may set another node's entry"
        else:
            problem = _value_problem(v, maxval)
            why = problem[1] if problem else None
            if why is None and family == "'l":
                addrs = _clean_addrs(v, "'l entry %s from %s" % (_show(k), src))
                if addrs is None:
                    why = "an 'l entry that is not a list of addresses"
                elif len(addrs) != len(v):
                    fixed = fixed or {}
                    fixed[k] = addrs
        if why is not None:
            if bad is None:
                bad = set()
            bad.add(k)
            _warn(
                "db_value",
                "database write from %s to %s/%s dropped: %s",
                src,
                _show(family),
                _show(k),
                why,
            )
    if bad or fixed:
        set_ = {
            k: (fixed[k] if fixed and k in fixed else v)
            for k, v in set_.items()
            if not bad or k not in bad
        }
    return set_


def _family_ok(family, src):
    if family.__class__ is str and 0 < len(family) <= _lim("db_max_key"):
        return True
    _warn(
        "db_family",
        "database request from %s with a bad family name %s dropped",
        src,
        _show(family),
    )
    return False


# ---------------------------------------------------------------- hooks called by node


def configured(cfg):
    for name in _LIMIT_NAMES:
        if cfg.get(name) is not None:
            _limits[name] = cfg[name]
    _local_db.setdefault("'l", {})[_k.this_node] = connect.listener_addresses()
    if _global:
        _src_replace(_k.this_node, _local_db, admit=False)


def become_global():
    global _global, _master
    if _global:
        return
    _global = True
    _master = None
    _parts.clear()
    logger.info("%s is now a global node", _k.this_node)
    _local_db.setdefault("'g", {})[_k.this_node] = None
    _local_db.setdefault("'l", {})[_k.this_node] = connect.listener_addresses()
    _src_replace(_k.this_node, _local_db, admit=False)
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
    """``node`` went down (or could not be reached): forget what it held and watched.

    Costs work in proportion to what that node held and watched, not to the database size.

    Example::

        _hooks().node_down(self)   # RemoteNode.transport_error, in node
    """
    global _master
    nodeid = node.id
    if _global:
        # before it leaves _peers: a peer's entries were never ours to tell other globals about
        _src_drop(nodeid)
        _slaves.discard(nodeid)
        _peers.discard(nodeid)
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
            if sid != nodeid and _net().node_is_up(sid):
                _set_master(sid)
                break


def find_node(nodeid):
    """Look up ``nodeid``'s addresses; answers arrive through ``RemoteNode.found``."""
    if _global:
        _net().get_node(nodeid).found(_effective("'l", nodeid))
        return True
    if _master is None and not _seeds_configured():
        return False
    key = ("g_find", nodeid)
    if key not in _pending:  # asked already: the master answers that one
        _request(("g_find", nodeid), None, key=key)
    return True


def _seeds_configured():
    return bool(_config.setting("seeds"))


def _set_master(nodeid):
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


def _request(frame, cb, key=None, extra=()):
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


def _answer_locally(frame, cb):
    tag = frame[0]
    if tag == "g_find":
        _net().get_node(frame[1]).found(_effective("'l", frame[1]))
        return
    if tag in _DB_QUERIES and cb is not None:
        result = _DB_QUERIES[tag](frame[1])
        _k.spawn_raw(cb, result)


# ---------------------------------------------------------------- per-source value store
#
# _by_src[source][family][key] = (stamp, value) holds what each source contributed;
# _all[family][key] names the source(s) holding the key: one source (a str, the usual case) or
# a tuple of them. A node that goes down takes exactly its own entries away (_by_src.pop), and
# a key several nodes set needs no scan to find the others. A "source" is the node the value
# came from: ourselves, a slave, or another global node (which relays its slaves' values).
#
# The effective value of a key is the one with the newest stamp (ties: the larger JSON
# encoding), so every global node picks the same value from the same entries, whatever order
# they arrived in. A stamp is the wall-clock time at which a global node first took the value
# from one of its slaves (or from itself), made later than every stamp it already holds for the
# key (clocks of global nodes may differ); global nodes pass it on to each other as an extra
# argument of ``g_set``/``g_upd`` (AEMP ignores extra arguments; values from peers that send
# none are stamped when they arrive, and so are values whose stamp is more than
# ``db_stamp_skew`` ahead of our clock: such a stamp would win over every later write). Without
# stamps, "last arrived wins" let two global nodes keep different values for a key that two
# nodes set at about the same time, for good.
#
# "Mine" (what we tell the other global nodes) is the same store seen without the entries of
# other global nodes (_peers): ourselves and our slaves.


def _stamp_ok(stamp):
    return stamp.__class__ in (int, float) and math.isfinite(stamp)  # not bool, NaN or inf


def _enc(value):
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def _same(a, b):
    """The same database value (as AEMP compares them: by their JSON encoding)."""
    return a is b or (a == b and _enc(a) == _enc(b))


def _holds(ent, src):
    return ent == src if ent.__class__ is str else src in ent


def _win(family, key, ent=None, mine=False):
    """The entry in effect for ``family``/``key`` as ``(source, stamp, value)``, or None;
    ``ent``: ``_all[family][key]`` when the caller has it; ``mine``: among ourselves and our
    slaves only."""
    if ent is None:
        fam = _all.get(family)
        ent = fam.get(key) if fam else None
        if ent is None:
            return None
    if ent.__class__ is str:
        if mine and ent in _peers:
            return None
        stamp, value = _by_src[ent][family][key]
        return ent, stamp, value
    best = None
    for src in ent:
        if mine and src in _peers:
            continue
        stamp, value = _by_src[src][family][key]
        if best is None or stamp > best[1] or (stamp == best[1] and _enc(value) > _enc(best[2])):
            best = (src, stamp, value)
    return best


def _effective(family, key):
    w = _win(family, key)
    return None if w is None else w[2]


def _family_view(family):
    fam = _all.get(family)
    if not fam:
        return {}
    view = {}
    for key, ent in fam.items():
        if ent.__class__ is str:
            view[key] = _by_src[ent][family][key][1]
        else:
            view[key] = _win(family, key, ent)[2]
    return view


def _put(src, family, key, entry):
    fams = _by_src.get(src)
    if fams is None:
        fams = _by_src[src] = {}
    held = fams.get(family)
    if held is None:
        held = fams[family] = {}
    if key not in held:
        _src_n[src] = _src_n.get(src, 0) + 1
        fam = _all.get(family)
        if fam is None:
            fam = _all[family] = {}
        ent = fam.get(key)
        if ent is None:
            fam[key] = src
        elif ent.__class__ is str:
            fam[key] = (ent, src)
        else:
            fam[key] = ent + (src,)
    held[key] = entry


def _take(src, family, key):
    """Remove ``src``'s entry (which exists)."""
    fams = _by_src[src]
    held = fams[family]
    del held[key]
    if not held:
        del fams[family]
        if not fams:
            del _by_src[src]
    n = _src_n[src] - 1
    if n:
        _src_n[src] = n
    else:
        del _src_n[src]
    fam = _all[family]
    ent = fam[key]
    if ent.__class__ is str:
        del fam[key]
        if not fam:
            del _all[family]
    else:
        rest = tuple(s for s in ent if s != src)
        fam[key] = rest[0] if len(rest) == 1 else rest


def _apply(src, family, set_=None, dels=None, stamps=None):
    """Apply a source's change to the store; notify watchers; tell other globals.

    ``stamps`` (``{key: stamp}``, from a peer global node) dates the values; the others are
    stamped now."""
    chg_set, chg_del = {}, []
    fwd = bool(_peers) and src not in _peers  # a change of "mine": other globals hear of it
    up_set, up_del, up_stamps = {}, [], {}
    now = time.time()
    if set_:
        too_late = now + _lim("db_stamp_skew")
        max_keys = _lim("db_max_keys") if src != _k.this_node else None
        for key, value in set_.items():
            fam = _all.get(family)
            ent = fam.get(key) if fam else None
            before = _win(family, key, ent) if ent is not None else None
            had = _by_src[src][family][key] if ent is not None and _holds(ent, src) else None
            stamp = stamps.get(key) if stamps else None
            if stamp is not None and not _stamp_ok(stamp):
                stamp = None
            if stamp is not None and stamp > too_late:
                _warn(
                    "db_stamp",
                    "database write stamp %r from %s for %s/%s is %.0f s ahead of "
                    "our clock (more than db_stamp_skew): the value is stamped now",
                    stamp,
                    src,
                    _show(family),
                    _show(key),
                    stamp - now,
                )
                stamp = None
            if stamp is None:
                # taken from a slave (or a peer that sends no stamps) now; but the same value
                # again from the same source (a slave re-sending its whole database to a new
                # master, say) is not a new write: it keeps its date
                if had is not None and _same(had[1], value):
                    stamp = had[0]
                elif before is not None:
                    # a new write is newer than anything we hold for the key, even when another
                    # global node's clock runs ahead of ours
                    stamp = max(now, before[1] + 1e-6)
                else:
                    stamp = now
            if had is None and max_keys is not None and _src_n.get(src, 0) >= max_keys:
                _warn(
                    "db_full",
                    "database write from %s to %s/%s dropped: it holds "
                    "db_max_keys (%d) keys already",
                    src,
                    _show(family),
                    _show(key),
                    max_keys,
                )
                continue
            mine_before = _win(family, key, ent, mine=True) if fwd and ent is not None else None
            _put(src, family, key, (stamp, value))
            ent = _all[family][key]
            after = _win(family, key, ent)
            if before is None or not _same(before[2], after[2]):
                chg_set[key] = after[2]
            if fwd:
                m = _win(family, key, ent, mine=True)
                if m is not None and (mine_before is None or not _same(mine_before[2], m[2])):
                    up_set[key] = m[2]
                    up_stamps[key] = m[1]
    for key in dels or ():
        fam = _all.get(family)
        ent = fam.get(key) if fam and key.__class__ is str else None
        if ent is None or not _holds(ent, src):
            continue
        before = _win(family, key, ent)
        mine_before = _win(family, key, ent, mine=True) if fwd else None
        _take(src, family, key)
        fam = _all.get(family)
        ent = fam.get(key) if fam else None
        after = _win(family, key, ent) if ent is not None else None
        if after is None:
            chg_set.pop(key, None)
            chg_del.append(key)
        elif not _same(before[2], after[2]):
            chg_set[key] = after[2]
        if mine_before is not None:
            m = _win(family, key, ent, mine=True) if ent is not None else None
            if m is None:
                up_set.pop(key, None)
                up_stamps.pop(key, None)
                up_del.append(key)
            elif not _same(mine_before[2], m[2]):
                up_set[key] = m[2]
                up_stamps[key] = m[1]
    if chg_set or chg_del:
        _notify(family, chg_set, chg_del)
        if family == "'g":
            for nodeid in chg_set:
                # keep the global mesh connected, with the global nodes we can reach
                if (
                    nodeid != _k.this_node
                    and not _net().node_is_up(nodeid)
                    and (_win("'l", nodeid) is not None or _addr_ok(nodeid))
                ):
                    _send(nodeid, "g_global")
    if up_set or up_del:
        frames = _change_frames(up_set, up_del, stamps=up_stamps)
        for peer in list(_peers):
            for frame in frames:
                _send(peer, "g_upd", family, *frame)


def _src_replace(src, db, stamps=None, admit=True):
    """Replace everything ``src`` contributed with ``db`` (``g_slave`` with a db, ``g_set``;
    ``stamps``: ``{family: {key: stamp}}`` from a ``g_set``); ``admit``: ``db`` came from the
    network and is checked (``_admit``). Work in proportion to what ``src`` held and sent."""
    held = _by_src.get(src)
    if held:
        for family in list(held):
            kv = db.get(family)
            gone = [k for k in held[family] if not (isinstance(kv, dict) and k in kv)]
            if gone:
                _apply(src, family, None, gone)
    for family, kv in db.items():
        if isinstance(kv, dict) and kv:
            if admit:
                if not _family_ok(family, src):
                    continue
                kv = _admit(src, family, kv)
            fstamps = stamps.get(family) if isinstance(stamps, dict) else None
            _apply(src, family, kv, None, stamps=fstamps if isinstance(fstamps, dict) else None)


def _src_drop(src):
    """Remove every entry ``src`` holds (it went down); nothing to do for one that held none."""
    held = _by_src.get(src)
    if not held:
        return
    for family in list(held):
        keys = held.get(family)
        if keys:
            _apply(src, family, None, list(keys))


def _mine_db():
    """Our slaves' view (and ours) with its stamps: ``({family: {key: value}}, {family: {key:
    stamp}})``, what ``g_set`` tells another global node. Work in proportion to what we and our
    slaves hold."""
    db, stamps = {}, {}
    for src, fams in list(_by_src.items()):
        if src in _peers:
            continue
        for family, held in fams.items():
            fdb = db.get(family)
            if fdb is None:
                fdb = db[family] = {}
                stamps[family] = {}
            fst = stamps[family]
            for key in held:
                if key not in fdb:
                    w = _win(family, key, mine=True)
                    fdb[key] = w[2]
                    fst[key] = w[1]
    return db, stamps


# ---------------------------------------------------------------- frames of bounded size
#
# A whole family, the answer to ``g_db_*``, a slave's database or a change of many keys would
# make one frame as large as the data, more than a reader's ``max_frame`` allows (it drops the
# link, redials, and the same frame comes again). They travel in frames of about ``db_chunk``
# bytes of JSON instead (at least one key each; a frame stays one frame when it fits):
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

_CHUNK_MIN = 4096  # a requester cannot ask for parts smaller than this


def _size(value):
    """About the bytes ``value`` takes in a frame (JSON with \\u escapes: at least the UTF-8)."""
    try:
        return len(ujson.dumps(value))
    except Exception:
        return len(_enc(value))


def _split_dict(d, limit, per_key=0, always=False):
    """``(parts, size)``: ``d`` cut into ``(dict, bytes)`` parts of about ``limit`` bytes each
    (at least one key each) and the estimated size of all of ``d``. A dict of one key is not
    measured (size 0) unless ``always``."""
    if len(d) <= 1 and not always:
        return [(d, 0)], 0
    parts, part, size, total = [], {}, 0, 0
    for k, v in d.items():
        s = len(k) + _size(v) + 4 + per_key
        if part and size + s > limit:
            parts.append((part, size))
            part, size = {}, 0
        part[k] = v
        size += s
        total += s
    parts.append((part, size))
    return parts, total


def _split_list(lst, limit, sizer):
    """``(parts, size)`` as ``_split_dict``, for a list (``sizer(item)``: its bytes)."""
    if len(lst) <= 1:
        return [(lst, 0)], 0
    parts, part, size, total = [], [], 0, 0
    for v in lst:
        s = sizer(v) + 1
        if part and size + s > limit:
            parts.append((part, size))
            part, size = [], 0
        part.append(v)
        size += s
        total += s
    parts.append((part, size))
    return parts, total


def _key_size(k):
    return len(k) + 3


def _change_frames(set_, dels, stamps=None):
    """The arguments after the family of the ``g_upd``/``g_chg2`` frames that carry a change
    (``set_`` and ``dels`` may be empty): ``[(set or None, dels or None[, stamps])...]``, one
    frame when it fits in ``db_chunk`` bytes."""
    limit = _lim("db_chunk")
    sparts, ssize = _split_dict(set_, limit, 24 if stamps is not None else 0) if set_ else ([], 0)
    dparts, dsize = _split_list(dels, limit, _key_size) if dels else ([], 0)
    if ssize + dsize <= limit:
        frames = [(set_ or None, dels or None)]
    else:
        frames = [(p, None) for p, _ in sparts] + [(None, p) for p, _ in dparts]
    if stamps is None:
        return frames
    return [(s, d, {k: stamps[k] for k in s} if s else {}) for s, d in frames]


def _send_db(nodeid, tag, db, stamps=None):
    """Send a whole database as ``tag`` (``g_slave`` or, with ``stamps``, ``g_set``): one frame
    when it fits in ``db_chunk`` bytes, else a first ``tag`` frame and ``g_upd`` frames."""
    limit = _lim("db_chunk")
    per_key = 24 if stamps is not None else 0
    cut, total = [], 0
    # the internal families first: the receiver learns our addresses from the first frame
    for family in sorted(db, key=lambda f: not f.startswith("'")):
        kv = db[family]
        if isinstance(kv, dict) and kv:
            parts, size = _split_dict(kv, limit, per_key, always=True)
            cut.append((family, parts))
            total += size + len(family) + 4
    if total <= limit:
        if stamps is None:
            _send(nodeid, tag, db)
        else:
            _send(nodeid, tag, db, stamps)
        return
    first, first_st, size, rest = {}, {}, 0, []
    for family, parts in cut:
        for part, psize in parts:
            if not rest and (not first or size + psize <= limit):
                first.setdefault(family, {}).update(part)
                if stamps is not None:
                    first_st.setdefault(family, {}).update({k: stamps[family][k] for k in part})
                size += psize
            else:
                rest.append((family, part))
    if stamps is None:
        _send(nodeid, tag, first)
    else:
        _send(nodeid, tag, first, first_st)
    for family, part in rest:
        if stamps is None:
            _send(nodeid, "g_upd", family, part, None)
        else:
            _send(nodeid, "g_upd", family, part, None, {k: stamps[family][k] for k in part})


def _send_family(nodeid, family):
    """``g_chg1`` with the whole family, in parts when it is larger than ``db_chunk``."""
    view = _family_view(family)
    parts = _split_dict(view, _lim("db_chunk"))[0] if view else []
    if len(parts) <= 1:
        _send(nodeid, "g_chg1", family, view or None)
        return
    _send(nodeid, "g_chg1", family, parts[0][0], 1)
    for part, _ in parts[1:-1]:
        _send(nodeid, "g_chg2", family, part, None, 1)
    _send(nodeid, "g_chg2", family, parts[-1][0], None)


def _send_reply(nodeid, rid, result, chunk):
    """``g_reply``, in parts of about ``chunk`` bytes when the requester takes parts."""
    if chunk.__class__ is not int or not result or len(result) <= 1:
        _send(nodeid, "g_reply", rid, result)
        return
    chunk = max(_CHUNK_MIN, min(chunk, _lim("db_chunk")))
    if isinstance(result, dict):
        parts = _split_dict(result, chunk)[0]
    else:
        parts = _split_list(result, chunk, _size)[0]
    for part, _ in parts[:-1]:
        _send(nodeid, "g_reply", rid, part, 1)
    _send(nodeid, "g_reply", rid, parts[-1][0])


def _my_chunk():
    """The part size our requests ask for: ``db_chunk``, and a quarter of our ``max_frame``."""
    return max(_CHUNK_MIN, min(_lim("db_chunk"), _lim("max_frame") // 4))


def _merge_part(acc, part):
    """Add a part of an answer to what came so far (a dict or a list)."""
    if acc is None:
        return (
            dict(part) if isinstance(part, dict) else list(part) if isinstance(part, list) else part
        )
    if isinstance(acc, dict) and isinstance(part, dict):
        acc.update(part)
    elif isinstance(acc, list) and isinstance(part, list):
        acc.extend(part)
    return acc


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
    nodes = _remote_mons.get(family)
    if nodes:
        frames = _change_frames(chg_set, chg_del)
        for nodeid in list(nodes):
            for frame in frames:
                _send(nodeid, "g_chg2", family, *frame)


_MISSING = object()


def _call_watchers(family, db, added, changed, deleted, only=None):
    """Call the watchers now, in update order (as AEMP): each sees the family as of its event."""
    for cb in list(only or _mon_cbs.get(family, ())):
        _safe_watch(cb, db, list(added), list(changed), list(deleted))


def _safe_watch(cb, db, added, changed, deleted):
    try:
        cb(db, added, changed, deleted)
    except Exception as exc:
        report_crash("db_mon callback", None, exc, detail="(%r, family change)" % (cb,))


def _local_chg1(family):
    """On a global node: (re)load our copy of a watched family from the merged view."""
    _apply_chg1(family, _family_view(family))


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
    if from_node not in _peers:
        _slaves.add(from_node)
    if isinstance(db, dict):
        _src_replace(from_node, db)


def _peer_up(nodeid):
    """``nodeid`` is another global node: mesh with it (once) by sending it our slaves' view."""
    if nodeid in _peers:
        return
    held = _by_src.get(nodeid)
    others = list(_peers)
    # what it set as our slave was "mine" (we told the other globals); now it tells them itself
    before = (
        {(f, k): _win(f, k, mine=True) for f, kv in held.items() for k in kv}
        if held and others
        else None
    )
    _peers.add(nodeid)
    _slaves.discard(nodeid)
    if before:
        changes = {}
        for (family, key), old in before.items():
            new = _win(family, key, mine=True)
            if new is None:
                changes.setdefault(family, ({}, [], {}))[1].append(key)
            elif not _same(old[2], new[2]):
                s, _d, st = changes.setdefault(family, ({}, [], {}))
                s[key], st[key] = new[2], new[1]
        for family, (s, d, st) in changes.items():
            for frame in _change_frames(s, d, stamps=st):
                for peer in others:
                    _send(peer, "g_upd", family, *frame)
    db, stamps = _mine_db()
    _send_db(nodeid, "g_set", db, stamps)


def _req_g_global(from_node, *_):
    if _global:
        _peer_up(from_node)


def _req_g_set(from_node, db=None, stamps=None, *_):
    if not _global:
        return
    _peer_up(from_node)
    _src_replace(from_node, db if isinstance(db, dict) else {}, stamps=stamps)


def _req_g_upd(from_node, family=None, set_=None, dels=None, stamps=None, *_):
    if not _global or not _family_ok(family, from_node):
        return
    peer = from_node in _peers
    _apply(
        from_node,
        family,
        _admit(from_node, family, set_) if isinstance(set_, dict) else None,
        dels if isinstance(dels, list) else None,
        stamps=stamps if peer and isinstance(stamps, dict) else None,
    )


def _req_g_find(from_node, nodeid=None, *_):
    if nodeid.__class__ is not str:
        return
    _send(from_node, "g_found", nodeid, _effective("'l", nodeid) if _global else None)


def _req_g_found(from_node, nodeid=None, addrs=None, *_):
    """Only the answer to a ``g_find`` we sent, from our master, is taken: the addresses of a
    node are dialled, so nobody else may tell us where a node is."""
    if nodeid.__class__ is not str:
        return
    key = ("g_find", nodeid)
    if _global or from_node != _master or key not in _pending:
        _warn(
            "g_found",
            "g_found for %s from %s dropped: not the answer to a g_find of ours",
            _show(nodeid),
            from_node,
        )
        return
    del _pending[key]
    addrs = (
        _clean_addrs(addrs, "g_found for %s from %s" % (_show(nodeid), from_node))
        if addrs is not None
        else None
    )
    _net().get_node(nodeid).found(addrs or None)


_DB_QUERIES = {
    "g_db_family": lambda f: _family_view(f),
    "g_db_keys": lambda f: list(_all.get(f) or ()),
    "g_db_values": lambda f: list(_family_view(f).values()),
}


def _db_query(tag):
    def handler(from_node, family=None, rid=None, chunk=None, *_):
        if not _global or not _family_ok(family, from_node):
            _send(from_node, "g_reply", rid, None)
            return
        _send_reply(from_node, rid, _DB_QUERIES[tag](family), chunk)

    return handler


def _req_g_reply(from_node, rid=None, result=None, more=None, *_):
    if rid.__class__ is not str or from_node != _master:
        return
    entry = _pending.get(rid)
    if entry is None:
        return
    if more:
        acc = _parts[rid] = _merge_part(_parts.get(rid), result)
        if acc is not None and len(acc) > _lim("db_max_keys"):
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
        result = _merge_part(acc, result)
    del _pending[rid]
    if entry[1] is not None:
        # in a fresh greenlet: the callback may block (even query the master again) without
        # stalling the link this reply came on
        _k.spawn_raw(entry[1], result)


def _req_g_mon1(from_node, family=None, *_):
    if not _global or not _family_ok(family, from_node):
        return
    fams = _mons_of.get(from_node)
    if fams is None or family not in fams:
        if fams is not None and len(fams) >= _lim("db_max_watches"):
            _warn(
                "db_watches",
                "g_mon1 %s from %s refused: it watches db_max_watches (%d) families already",
                _show(family),
                from_node,
                len(fams),
            )
            return
        if fams is None:
            fams = _mons_of[from_node] = set()
        fams.add(family)
        _remote_mons.setdefault(family, set()).add(from_node)
    _send_family(from_node, family)


def _req_g_mon0(from_node, family=None, *_):
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


def _req_g_chg1(from_node, family=None, db=None, more=None, *_):
    if from_node != _master or family.__class__ is not str or family not in _mon_cbs:
        return
    db = db if isinstance(db, dict) else {}
    if more:
        _parts[("chg1", family)] = dict(db)  # the rest follows as g_chg2 parts
        return
    _parts.pop(("chg1", family), None)
    _apply_chg1(family, db)


def _req_g_chg2(from_node, family=None, set_=None, dels=None, more=None, *_):
    if from_node != _master or family.__class__ is not str or family not in _mon_cbs:
        return
    acc = _parts.get(("chg1", family))
    if acc is not None:  # a part of a g_chg1
        if isinstance(set_, dict):
            acc.update(set_)
        if len(acc) > _lim("db_max_keys"):
            _warn(
                "db_parts",
                "g_chg1 of %s from %s dropped: more than db_max_keys entries",
                _show(family),
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
    added, changed = [], []
    for k, v in (set_ if isinstance(set_, dict) else {}).items():
        (changed if k in db else added).append(k)
        db[k] = v
    deleted = [
        k
        for k in (dels if isinstance(dels, list) else ())
        if k.__class__ is str and db.pop(k, _MISSING) is not _MISSING
    ]
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
    if len(family) > _lim("db_max_key"):
        raise ValueError("family name longer than db_max_key (%d characters)" % _lim("db_max_key"))


def _check_key(key):
    if not isinstance(key, str):
        raise ValueError("database keys must be strings, not %r" % (key,))
    if len(key) > _lim("db_max_key"):
        raise ValueError("database key longer than db_max_key (%d characters)" % _lim("db_max_key"))


def _check_value(value):
    """Raise ``TypeError`` for a value a link cannot carry (not JSON data: bytes, sets,
    objects, non-str dict keys), ``ValueError`` for one out of range (NaN, infinity, an int
    beyond 64 bits, nested too deep, larger than ``db_max_value``)."""
    problem = _value_problem(value, _lim("db_max_value"))
    if problem is not None:
        raise problem[0]("database value not accepted: %s" % problem[1])


def _local_update(family, set_=None, dels=None):
    if _global:
        _apply(_k.this_node, family, set_, dels)
    elif _master is not None:
        _send(_master, "g_upd", family, set_ or None, dels or None)


def db_set(family: str, key: str, value: Any = None) -> Guard:
    """Set ``key`` in ``family`` to ``value`` in the shared database (as this node's entry).

    An unchanged value is not sent again. Returns a guard: kept and dropped (or cancelled),
    it deletes the key; as a bare statement the entry stays until ``db_del`` or this node
    goes down. ``value`` must be JSON data that every link carries (``TypeError`` for bytes,
    sets, objects or non-str dict keys; ``ValueError`` for NaN, infinity, ints beyond 64 bits,
    nesting too deep, more than ``db_max_value`` bytes); keys and family names have at most
    ``db_max_key`` characters.

    Example::

        db_set("eg_receivers", SELF(), {"info": "receiver"})
    """
    _k.check_thread()  # before anything changes (docs/running.md)
    _check_family(family, writing=True)
    _check_key(key)
    _check_value(value)
    fam = _local_db.setdefault(family, {})
    if key not in fam or _enc(fam[key]) != _enc(value):
        fam[key] = value
        _local_update(family, {key: value}, None)
    return Guard.for_caller(lambda: db_del(family, key))


def db_del(family: str, *keys: str) -> None:
    """Delete ``keys`` (this node's entries) from ``family``.

    Example::

        db_del("eg_receivers", SELF())
    """
    _k.check_thread()  # before anything changes (docs/running.md)
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
    _k.check_thread()  # before anything changes (docs/running.md)
    if port is None:
        me = _k.get_self()
        if me is None:
            raise RuntimeError("db_reg without a port needs a port context (SELF)")
        port = me.id
    _check_family(family, writing=True)
    _check_key(port)
    _check_value(value)
    fam = _local_db.setdefault(family, {})
    if port not in fam or _enc(fam[port]) != _enc(value):
        fam[port] = value
        _local_update(family, {port: value}, None)
    undo_mon = _k.add_monitor(port, lambda *reason: db_del(family, port))

    def undo():
        undo_mon()
        db_del(family, port)

    return Guard.for_caller(undo)


def _check_reachable(what, family):
    """A node with no seeds that is no global node has no database to ask: say so at once
    instead of waiting for a timeout."""
    if not _global and _master is None and not _seeds_configured():
        raise NoDatabaseError(
            "%s(%r): this node has no seeds and is not a global node, so there is no database "
            "to ask. Configure seeds (configure(seeds=['host:port']) or `aemp setseeds "
            "host:port`); a seed lists its own address in its seeds to become a global node."
            % (what, family)
        )


def _query(tag, family, cb, timeout):
    _k.check_thread()  # before anything changes (docs/running.md)
    _check_family(family)
    _check_reachable("db_" + tag[5:], family)
    # after the request id: the part size we take the answer in (AEMP ignores it)
    if cb is not None:
        _request((tag, family), cb, extra=(_my_chunk(),))
        return None
    result = AsyncResult()
    _request((tag, family), result.set, extra=(_my_chunk(),))
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
    return _query("g_db_family", family, cb, timeout)


def db_keys(
    family: str, cb: Optional[Callable[[list[str]], Any]] = None, timeout: Optional[float] = None
) -> Optional[list[str]]:
    """The keys of ``family`` as a list (callback or blocking form, as ``db_family``).

    Example::

        ports = db_keys("eg_receivers", timeout=5)
    """
    return _query("g_db_keys", family, cb, timeout)


def db_values(
    family: str, cb: Optional[Callable[[list[Any]], Any]] = None, timeout: Optional[float] = None
) -> Optional[list[Any]]:
    """The values of ``family`` as a list (callback or blocking form, as ``db_family``).

    Example::

        infos = db_values("eg_receivers", timeout=5)
    """
    return _query("g_db_values", family, cb, timeout)


def db_mon(family: str, cb: Callable[..., Any]) -> Guard:
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
    _k.check_thread()  # before anything changes (docs/running.md)
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

    def undo():
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


# the node layer asks us where nodes live, and tells us about nodes coming and going
