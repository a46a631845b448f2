"""globaldb.store: the replicated database as plain data (no I/O, no clock, no greenlets).

What a global node keeps (docs/protocol.md#seeds-and-global-nodes, #database-events) and the
rules it keeps it by:

* **Entries per source.** ``Store.by_source[source][family][key] = (stamp, value)`` holds what
  each source contributed; ``Store.holders[family][key]`` names the source(s) holding the key:
  one source (a ``str``, the usual case) or a tuple of them. A source is the node a value came
  from: the global node itself, one of its slaves, or another global node (a **peer**, which
  relays its own slaves' values). A source that goes down takes exactly its own entries away
  (``Store.drop``), and a key several sources set needs no scan to find the others: work in
  proportion to what that source held, never to the size of the database.
* **Which write wins.** The effective value of a key is the one with the newest stamp (ties:
  the larger JSON encoding), so every global node picks the same value from the same entries,
  whatever order they arrived in. A stamp is the wall-clock time at which a global node first
  took the value from one of its slaves (or from itself), made later than every stamp it
  already holds for the key (the clocks of global nodes may differ); peers pass stamps on to
  each other. A value from a peer that sends no stamp is stamped when it arrives, and so is one
  whose stamp is more than ``db_stamp_skew`` ahead of our clock (it would win over every later
  write). The same value again from the same source keeps its stamp: it is no new write.
* **"Mine"**: the store seen without the entries of peers (ourselves and our slaves); it is
  what a global node tells its peers (``Store.mine_db`` for ``g_set``, the ``up_*`` of
  ``Changes`` for ``g_upd``).
* **Change sets**: ``Store.apply`` returns what changed in the effective view (for watchers)
  and in "mine" (for peers); ``watch_update``/``watch_reload`` turn a change into the
  ``added``/``changed``/``deleted`` lists a ``db_mon`` callback gets.
* **Validation** of what comes from the network or the API against ``Limits`` (the ``db_*``
  settings), and **frames of bounded size** (``change_frames``, ``db_frames``,
  ``reply_parts``...): large databases, families and answers cut into parts of about
  ``db_chunk`` bytes.

``globaldb.sync`` drives a ``Store`` with the ``g_*`` messages; this module only computes.
Bad input is reported through the ``warn(kind, fmt, *args)`` callable a ``Store`` is given
(a rate-limited log line in ``sync``).

Example::

    >>> s = Store()
    >>> chg_set, chg_del, up_set, up_del, up_stamps = s.apply("n1", "fam", {"k": 1}, now=100.0)
    >>> chg_set, s.family_view("fam")
    ({'k': 1}, {'k': 1})
    >>> changes = s.apply("n2", "fam", {"k": 2}, now=101.0)   # a later write wins
    >>> s.effective("fam", "k"), [f for f, _ in s.drop("n2")], s.effective("fam", "k")
    (2, ['fam'], 1)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import ujson

from .. import config as _config

__all__ = [
    "Store",
    "Changes",
    "Limits",
    "Warn",
    "CHUNK_MIN",
    "OWN_KEY_FAMILIES",
    "value_problem",
    "addr_ok",
    "clean_addrs",
    "key_ok",
    "family_ok",
    "admit",
    "check_family",
    "check_key",
    "check_value",
    "enc",
    "same",
    "show",
    "size",
    "split_dict",
    "split_list",
    "change_frames",
    "db_frames",
    "family_parts",
    "reply_parts",
    "merge_part",
    "watch_update",
    "watch_reload",
]

#: ``warn(kind, fmt, *args)``: report bad input (``kind`` groups lines for rate limiting)
Warn = Callable[..., None]

#: one entry: ``(stamp, value)``
Entry = tuple[float, Any]
#: who holds a key: one source, or a tuple of several
Holders = Union[str, tuple[str, ...]]
#: a database: ``{family: {key: value}}``
Db = dict[str, dict[str, Any]]

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what every framing (ujson, Perl) carries
#: families where a node that is not a global node may only set its own entry (its node ID)
OWN_KEY_FAMILIES = ("'l", "'g")
#: a family name a user may write or watch (names starting with ``'`` are internal)
_FAMILY = re.compile(r"^[A-Za-z][A-Za-z0-9_:]*$")
#: a requester cannot ask for parts smaller than this many bytes
CHUNK_MIN = 4096
_MISSING = object()


def _no_warn(kind: str, fmt: str, *args: Any) -> None:
    pass


# ---------------------------------------------------------------- limits


@dataclasses.dataclass(frozen=True)
class Limits:
    """The settings the database is bounded by (``db_*`` and friends in ``config.SETTINGS``),
    and ``max_depth``: how deep a value may nest (the framing's depth limit less the levels of
    the frame around it).

    Example::

        lim = Limits.from_settings({"db_chunk": 4096}, max_depth=504)
        lim.db_chunk, lim.db_max_key      # (4096, 1024)
    """

    max_depth: int
    db_stamp_skew: float = _config.DEFAULTS["db_stamp_skew"]
    db_max_value: int = _config.DEFAULTS["db_max_value"]
    db_max_key: int = _config.DEFAULTS["db_max_key"]
    db_max_keys: int = _config.DEFAULTS["db_max_keys"]
    db_max_watches: int = _config.DEFAULTS["db_max_watches"]
    db_chunk: int = _config.DEFAULTS["db_chunk"]
    max_node_addrs: int = _config.DEFAULTS["max_node_addrs"]
    max_addr_len: int = _config.DEFAULTS["max_addr_len"]
    max_frame: int = _config.DEFAULTS["max_frame"]

    @classmethod
    def from_settings(cls, cfg: Mapping[str, Any], max_depth: int) -> Limits:
        """The limits of the settings ``cfg`` (a missing or None setting: its default).

        Example::

            Limits.from_settings(node.config(), max_depth=framing.MAX_DEPTH - 8)
        """
        return cls(max_depth).updated(cfg)

    def updated(self, cfg: Mapping[str, Any]) -> Limits:
        """These limits with the settings of ``cfg`` that are set (not None) replaced.

        Example::

            lim = lim.updated({"db_max_keys": 10})
        """
        kv = {
            f.name: cfg[f.name]
            for f in dataclasses.fields(self)
            if f.name != "max_depth" and cfg.get(f.name) is not None
        }
        return dataclasses.replace(self, **kv) if kv else self

    def request_chunk(self) -> int:
        """The part size our requests ask for: ``db_chunk``, and a quarter of ``max_frame``.

        Example::

            Limits(max_depth=504).request_chunk()    # 65536
        """
        return max(CHUNK_MIN, min(self.db_chunk, self.max_frame // 4))


# ---------------------------------------------------------------- values and their encoding


def enc(value: Any) -> str:
    """A value's canonical JSON text (sorted keys): how AEMP compares database values.

    Example::

        enc({"b": 1, "a": [2]})     # '{"a": [2], "b": 1}'
    """
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def same(a: Any, b: Any) -> bool:
    """The same database value (as AEMP compares them: by their JSON encoding).

    Example::

        same(1, 1.0), same(1, True)       # (False, False)
    """
    return a is b or (a == b and enc(a) == enc(b))


def show(x: Any, n: int = 80) -> str:
    """``repr`` (control characters escaped), cut to about ``n`` characters, for a log line.

    Example::

        show("a\\nb")       # "'a\\\\nb'"
    """
    try:
        r = repr(x)
    except Exception:  # an int too large to print, say
        r = "<%s>" % type(x).__name__
    return r if len(r) <= n else r[:n] + "..."


def size(value: Any) -> int:
    """About the bytes ``value`` takes in a frame (JSON with \\u escapes: at least the UTF-8).

    Example::

        size({"n": 1})      # 7
    """
    try:
        return len(ujson.dumps(value))
    except Exception:
        return len(enc(value))


# ---------------------------------------------------------------- validation


def value_problem(value: Any, limit: int, max_depth: int) -> Optional[tuple[type[Exception], str]]:
    """None when ``value`` is database data that every link carries, else ``(exception class,
    reason)``: JSON types only (``None``, ``bool``, 64-bit ``int``, finite ``float``, ``str``
    without lone surrogates, ``list``/``tuple``, ``dict`` with ``str`` keys), nested at most
    ``max_depth`` deep, about ``limit`` bytes of JSON at most.

    Example::

        value_problem({"n": float("nan")}, 1 << 20, 504)   # (ValueError, 'NaN or infinity ...')
    """
    stack = [(value, 0)]
    pop = stack.pop
    push = stack.append
    nbytes = 0
    while stack:
        v, depth = pop()
        t = v.__class__
        if t is str or (t is not bool and isinstance(v, str)):
            nbytes += len(v) + 3
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return ValueError, "a string with a lone surrogate"
        elif v is None or t is bool:
            nbytes += 5
        elif t is int or isinstance(v, int):
            if not _INT_MIN <= v <= _INT_MAX:
                return ValueError, "an integer outside [-2**63, 2**64) (json cannot carry it)"
            nbytes += 21
        elif t is float or isinstance(v, float):
            if not math.isfinite(v):
                return ValueError, "NaN or infinity (json cannot carry it)"
            nbytes += 25
        elif isinstance(v, (list, tuple, dict)):
            if depth >= max_depth:
                return ValueError, "containers nested more than %d deep" % max_depth
            nbytes += 2 + len(v)
            if isinstance(v, dict):
                for k in v:
                    if k.__class__ is not str and not isinstance(k, str):
                        return TypeError, "a dict key that is not a str (%s)" % show(k, 40)
                    nbytes += len(k) + 3
                v = v.values()
            for x in v:
                push((x, depth + 1))
        else:
            return (
                TypeError,
                "a value of type %s (only JSON data: None, bool, int, float, "
                "str, list, dict)" % t.__name__,
            )
        if nbytes > limit:
            return ValueError, "larger than db_max_value (%d bytes)" % limit
    return None


def addr_ok(a: Any, max_len: int) -> bool:
    """True for a ``host:port`` address a node would dial (at most ``max_len`` characters, a
    real port, a real host).

    Example::

        addr_ok("10.0.0.5:4040", 256), addr_ok("*:4040", 256)     # (True, False)
    """
    if a.__class__ is not str or not a or len(a) > max_len or ":" not in a:
        return False
    try:
        host, port = _config.parse_address(a, default_host="*")
    except Exception:
        return False
    return port is not None and host != "*"


def clean_addrs(addrs: Any, what: str, limits: Limits, warn: Warn) -> Optional[list[str]]:
    """The valid addresses of the list ``addrs``, at most ``max_node_addrs`` (``warn`` says so
    if any were left out; ``what`` names them there); None when ``addrs`` is not a list.

    Example::

        clean_addrs(["10.0.0.5:4040", "junk"], "g_found", lim, warn)    # ['10.0.0.5:4040']
    """
    if not isinstance(addrs, list):
        return None
    max_len = limits.max_addr_len
    good = [a for a in addrs if addr_ok(a, max_len)]
    cap = limits.max_node_addrs
    if len(good) != len(addrs) or len(good) > cap:
        warn(
            "addrs",
            "%s: %d of %d addresses left out (invalid host:port, longer than "
            "max_addr_len or more than max_node_addrs)",
            what,
            len(addrs) - min(len(good), cap),
            len(addrs),
        )
        good = good[:cap]
    return good


def key_ok(key: Any, max_key: int) -> bool:
    """True for a database key from the network: a ``str`` of at most ``max_key`` characters.

    Example::

        key_ok("n#p", 1024), key_ok(7, 1024)      # (True, False)
    """
    return key.__class__ is str and len(key) <= max_key


def family_ok(family: Any, src: str, max_key: int, warn: Warn) -> bool:
    """True for a family name from the network (a non-empty ``str`` of at most ``max_key``
    characters); else ``warn`` about ``src``'s request and False.

    Example::

        if not family_ok(family, from_node, lim.db_max_key, warn): return
    """
    if family.__class__ is str and 0 < len(family) <= max_key:
        return True
    warn(
        "db_family",
        "database request from %s with a bad family name %s dropped",
        src,
        show(family),
    )
    return False


def admit(
    src: str, family: str, set_: dict[Any, Any], limits: Limits, peer: bool, warn: Warn
) -> dict[str, Any]:
    """The entries of ``set_`` (from ``src``, over the network) that may enter the store.

    Keys must be strings of at most ``db_max_key`` characters, values pass ``value_problem``;
    in ``'l`` and ``'g`` a node that is not a global node (``peer`` False) may only set its own
    entry, and ``'l`` holds host:port addresses (``clean_addrs``). The others are left out, and
    ``warn`` names each.

    Example::

        admit("n1", "'l", {"n1": ["10.0.0.5:4040"], "n2": []}, lim, False, warn)
        # {'n1': ['10.0.0.5:4040']} (n1 may not say where n2 is)
    """
    maxval = limits.db_max_value
    max_key = limits.db_max_key
    depth = limits.max_depth
    own_only = family in OWN_KEY_FAMILIES and not peer
    bad: Optional[set[Any]] = None
    fixed: Optional[dict[str, list[str]]] = None
    for k, v in set_.items():
        why: Optional[str]
        if not key_ok(k, max_key):
            why = "a key that is not a str of at most db_max_key characters"
        elif own_only and k != src:
            why = "only a global node may set another node's entry"
        else:
            problem = value_problem(v, maxval, depth)
            why = problem[1] if problem else None
            if why is None and family == "'l":
                addrs = clean_addrs(v, "'l entry %s from %s" % (show(k), src), limits, warn)
                if addrs is None:
                    why = "an 'l entry that is not a list of addresses"
                elif len(addrs) != len(v):
                    fixed = fixed or {}
                    fixed[k] = addrs
        if why is not None:
            if bad is None:
                bad = set()
            bad.add(k)
            warn(
                "db_value",
                "database write from %s to %s/%s dropped: %s",
                src,
                show(family),
                show(k),
                why,
            )
    if bad or fixed:
        set_ = {
            k: (fixed[k] if fixed and k in fixed else v)
            for k, v in set_.items()
            if not bad or k not in bad
        }
    return set_


def check_family(family: Any, max_key: int, writing: bool = False) -> None:
    """Raise ``ValueError`` for a family name the API does not take: not a ``str``, not
    ``[A-Za-z][A-Za-z0-9_:]*``, longer than ``max_key``; internal names (starting with ``'``)
    may be read and watched, not written.

    Example::

        check_family("eg_receivers", 1024, writing=True)     # fine
        check_family("'l", 1024, writing=True)               # ValueError: internal
    """
    if not isinstance(family, str):
        raise ValueError("family name must be a string, not %r" % (family,))
    if family.startswith("'"):
        if writing:
            raise ValueError("family %r is internal (names starting with ' are reserved)" % family)
        return
    if not _FAMILY.fullmatch(family):
        raise ValueError("bad family name %r: must match [A-Za-z][A-Za-z0-9_:]*" % (family,))
    if len(family) > max_key:
        raise ValueError("family name longer than db_max_key (%d characters)" % max_key)


def check_key(key: Any, max_key: int) -> None:
    """Raise ``ValueError`` for a key the API does not take (not a ``str``, too long).

    Example::

        check_key("n#p1", 1024)       # fine
    """
    if not isinstance(key, str):
        raise ValueError("database keys must be strings, not %r" % (key,))
    if len(key) > max_key:
        raise ValueError("database key longer than db_max_key (%d characters)" % max_key)


def check_value(value: Any, max_value: int, max_depth: int) -> None:
    """Raise ``TypeError`` for a value a link cannot carry (not JSON data: bytes, sets,
    objects, non-str dict keys), ``ValueError`` for one out of range (NaN, infinity, an int
    beyond 64 bits, nested too deep, larger than ``max_value`` bytes).

    Example::

        check_value(b"raw", 1 << 20, 504)     # TypeError
    """
    problem = value_problem(value, max_value, max_depth)
    if problem is not None:
        raise problem[0]("database value not accepted: %s" % problem[1])


# ---------------------------------------------------------------- the store


#: What one ``Store.apply`` changed, as a plain tuple (one is made per update: a
#: ``NamedTuple`` costs ~8% of a single-key ``g_upd``): ``(set, dels, up_set, up_del,
#: up_stamps)``; ``set`` (key -> new value) and ``dels`` (keys gone) in the effective view, for
#: the watchers; ``up_set``, ``up_del`` and the stamps of ``up_set`` in "mine", what the peers
#: must hear (``g_upd``).
Changes = tuple[dict[str, Any], list[str], dict[str, Any], list[str], dict[str, float]]


def _stamp_ok(stamp: Any) -> bool:
    return stamp.__class__ in (int, float) and math.isfinite(stamp)  # not bool, NaN or inf


class Store:
    """The entries of a global node, per source, and the effective view of them (see the
    module's docstring for the rules).

    Example::

        s = Store(warn=print)
        s.apply("slave1", "workers", {"slave1#p": {"info": 1}}, now=time.time(), skew=300)
        s.family_view("workers")        # {'slave1#p': {'info': 1}}
    """

    def __init__(self, warn: Warn = _no_warn) -> None:
        #: source -> family -> key -> (stamp, value): everything a source holds
        self.by_source: dict[str, dict[str, dict[str, Entry]]] = {}
        #: family -> key -> the source holding it (a str), or a tuple of sources
        self.holders: dict[str, dict[str, Holders]] = {}
        #: source -> number of keys it holds
        self.counts: dict[str, int] = {}
        #: the other global nodes (their entries are not "mine")
        self.peers: set[str] = set()
        self.warn = warn

    # ------------------------------------------------------------ reading

    def win(
        self, family: str, key: str, ent: Optional[Holders] = None, mine: bool = False
    ) -> Optional[tuple[str, float, Any]]:
        """The entry in effect for ``family``/``key`` as ``(source, stamp, value)``, or None;
        ``ent``: ``holders[family][key]`` when the caller has it; ``mine``: among ourselves and
        our slaves only.

        Example::

            src, stamp, value = store.win("fam", "k")
        """
        if ent is None:
            fam = self.holders.get(family)
            ent = fam.get(key) if fam else None
            if ent is None:
                return None
        by_source = self.by_source
        if ent.__class__ is str:
            if mine and ent in self.peers:
                return None
            stamp, value = by_source[ent][family][key]
            return ent, stamp, value
        best: Optional[tuple[str, float, Any]] = None
        peers = self.peers
        for src in ent:
            if mine and src in peers:
                continue
            stamp, value = by_source[src][family][key]
            if best is None or stamp > best[1] or (stamp == best[1] and enc(value) > enc(best[2])):
                best = (src, stamp, value)
        return best

    def effective(self, family: str, key: str) -> Any:
        """The value in effect for ``family``/``key`` (None when nobody holds it).

        Example::

            addrs = store.effective("'l", nodeid)
        """
        w = self.win(family, key)
        return None if w is None else w[2]

    def family_view(self, family: str) -> dict[str, Any]:
        """The effective ``{key: value}`` of ``family`` (a new dict).

        Example::

            store.family_view("eg_receivers")
        """
        fam = self.holders.get(family)
        if not fam:
            return {}
        view = {}
        by_source = self.by_source
        for key, ent in fam.items():
            if ent.__class__ is str:
                view[key] = by_source[ent][family][key][1]
            else:
                view[key] = self.win(family, key, ent)[2]  # type: ignore[index]
        return view

    def keys(self, family: str) -> list[str]:
        """The keys of ``family`` in effect.

        Example::

            store.keys("eg_receivers")
        """
        return list(self.holders.get(family) or ())

    def mine_db(self) -> tuple[Db, dict[str, dict[str, float]]]:
        """Our slaves' view (and ours) with its stamps: ``({family: {key: value}}, {family:
        {key: stamp}})``, what ``g_set`` tells another global node. Work in proportion to what
        we and our slaves hold.

        Example::

            db, stamps = store.mine_db()
        """
        db: Db = {}
        stamps: dict[str, dict[str, float]] = {}
        peers = self.peers
        for src, fams in list(self.by_source.items()):
            if src in peers:
                continue
            for family, held in fams.items():
                fdb = db.get(family)
                if fdb is None:
                    fdb = db[family] = {}
                    stamps[family] = {}
                fst = stamps[family]
                for key in held:
                    if key not in fdb:
                        w = self.win(family, key, mine=True)
                        fdb[key] = w[2]  # type: ignore[index]
                        fst[key] = w[1]  # type: ignore[index]
        return db, stamps

    # ------------------------------------------------------------ the two primitive edits

    def _put(self, src: str, family: str, key: str, entry: Entry) -> None:
        fams = self.by_source.get(src)
        if fams is None:
            fams = self.by_source[src] = {}
        held = fams.get(family)
        if held is None:
            held = fams[family] = {}
        if key not in held:
            self.counts[src] = self.counts.get(src, 0) + 1
            fam = self.holders.get(family)
            if fam is None:
                fam = self.holders[family] = {}
            ent = fam.get(key)
            if ent is None:
                fam[key] = src
            elif ent.__class__ is str:
                fam[key] = (ent, src)
            else:
                fam[key] = ent + (src,)  # type: ignore[operator]
        held[key] = entry

    def _take(self, src: str, family: str, key: str) -> None:
        """Remove ``src``'s entry (which exists)."""
        fams = self.by_source[src]
        held = fams[family]
        del held[key]
        if not held:
            del fams[family]
            if not fams:
                del self.by_source[src]
        n = self.counts[src] - 1
        if n:
            self.counts[src] = n
        else:
            del self.counts[src]
        fam = self.holders[family]
        ent = fam[key]
        if ent.__class__ is str:
            del fam[key]
            if not fam:
                del self.holders[family]
        else:
            rest = tuple(s for s in ent if s != src)
            fam[key] = rest[0] if len(rest) == 1 else rest

    # ------------------------------------------------------------ updates

    def apply(
        self,
        src: str,
        family: str,
        set_: Optional[Mapping[str, Any]] = None,
        dels: Optional[list[Any]] = None,
        stamps: Optional[Mapping[str, Any]] = None,
        now: float = 0.0,
        skew: float = 0.0,
        max_keys: Optional[int] = None,
    ) -> Changes:
        """Apply a change of ``family`` from ``src``: set the keys of ``set_``, delete ``src``'s
        entries for the keys of ``dels``; return what changed (``Changes``: ``(set, dels,
        up_set, up_del, up_stamps)``).

        ``stamps`` (``{key: stamp}``, from a peer) dates the values; the others, and stamps
        more than ``skew`` seconds ahead of ``now`` (``warn``-ed), are stamped ``now``.
        ``max_keys``: how many keys ``src`` may hold (new keys beyond it are left out and
        ``warn``-ed); None: no bound (our own writes).

        Example::

            chg_set, chg_del, up_set, up_del, up_stamps = store.apply(
                "n1", "fam", {"k": 1}, ["old"], now=time.time(), skew=300
            )
        """
        chg_set: dict[str, Any] = {}
        chg_del: list[str] = []
        fwd = bool(self.peers) and src not in self.peers  # "mine" changes: peers hear of it
        up_set: dict[str, Any] = {}
        up_del: list[str] = []
        up_stamps: dict[str, float] = {}
        holders = self.holders
        win = self.win
        if set_:
            too_late = now + skew
            counts = self.counts
            for key, value in set_.items():
                fam = holders.get(family)
                ent = fam.get(key) if fam else None
                before = win(family, key, ent) if ent is not None else None
                had = (
                    self.by_source[src][family][key]
                    if ent is not None and (ent == src if ent.__class__ is str else src in ent)
                    else None
                )
                stamp = stamps.get(key) if stamps else None
                if stamp is not None and not _stamp_ok(stamp):
                    stamp = None
                if stamp is not None and stamp > too_late:
                    self.warn(
                        "db_stamp",
                        "database write stamp %r from %s for %s/%s is %.0f s ahead of "
                        "our clock (more than db_stamp_skew): the value is stamped now",
                        stamp,
                        src,
                        show(family),
                        show(key),
                        stamp - now,
                    )
                    stamp = None
                if stamp is None:
                    # taken from a slave (or a peer that sends no stamps) now; but the same
                    # value again from the same source (a slave re-sending its whole database
                    # to a new master, say) is not a new write: it keeps its date
                    if had is not None and same(had[1], value):
                        stamp = had[0]
                    elif before is not None:
                        # a new write is newer than anything we hold for the key, even when
                        # another global node's clock runs ahead of ours
                        stamp = max(now, before[1] + 1e-6)
                    else:
                        stamp = now
                if had is None and max_keys is not None and counts.get(src, 0) >= max_keys:
                    self.warn(
                        "db_full",
                        "database write from %s to %s/%s dropped: it holds "
                        "db_max_keys (%d) keys already",
                        src,
                        show(family),
                        show(key),
                        max_keys,
                    )
                    continue
                mine_before = win(family, key, ent, mine=True) if fwd and ent is not None else None
                self._put(src, family, key, (stamp, value))
                ent = holders[family][key]
                after = win(family, key, ent)
                assert after is not None
                if before is None or not same(before[2], after[2]):
                    chg_set[key] = after[2]
                if fwd:
                    m = win(family, key, ent, mine=True)
                    if m is not None and (mine_before is None or not same(mine_before[2], m[2])):
                        up_set[key] = m[2]
                        up_stamps[key] = m[1]
        for key in dels or ():
            fam = holders.get(family)
            ent = fam.get(key) if fam and key.__class__ is str else None
            if ent is None or not (ent == src if ent.__class__ is str else src in ent):
                continue
            before = win(family, key, ent)
            assert before is not None
            mine_before = win(family, key, ent, mine=True) if fwd else None
            self._take(src, family, key)
            fam = holders.get(family)
            ent = fam.get(key) if fam else None
            after = win(family, key, ent) if ent is not None else None
            if after is None:
                chg_set.pop(key, None)
                chg_del.append(key)
            elif not same(before[2], after[2]):
                chg_set[key] = after[2]
            if mine_before is not None:
                m = win(family, key, ent, mine=True) if ent is not None else None
                if m is None:
                    up_set.pop(key, None)
                    up_stamps.pop(key, None)
                    up_del.append(key)
                elif not same(mine_before[2], m[2]):
                    up_set[key] = m[2]
                    up_stamps[key] = m[1]
        return chg_set, chg_del, up_set, up_del, up_stamps

    def replace(
        self,
        src: str,
        db: Mapping[Any, Any],
        stamps: Any = None,
        *,
        limits: Limits,
        now: float,
        max_keys: Optional[int] = None,
        check: bool = True,
    ) -> list[tuple[str, Changes]]:
        """Replace everything ``src`` holds with ``db`` (``g_slave`` with a database, ``g_set``;
        ``stamps``: ``{family: {key: stamp}}`` from a ``g_set``); ``check``: ``db`` came from
        the network and goes through ``family_ok`` and ``admit`` first. Returns the changes,
        family by family, in the order they were made. Work in proportion to what ``src`` held
        and sent.

        Example::

            for family, ch in store.replace("slave1", db, limits=lim, now=time.time()): ...
        """
        out = []
        held = self.by_source.get(src)
        if held:
            for family in list(held):
                kv = db.get(family)
                gone = [k for k in held[family] if not (isinstance(kv, dict) and k in kv)]
                if gone:
                    out.append((family, self.apply(src, family, None, gone)))
        skew = limits.db_stamp_skew
        for family, kv in db.items():
            if isinstance(kv, dict) and kv:
                if check:
                    if not family_ok(family, src, limits.db_max_key, self.warn):
                        continue
                    kv = admit(src, family, kv, limits, src in self.peers, self.warn)
                fstamps = stamps.get(family) if isinstance(stamps, dict) else None
                ch = self.apply(
                    src,
                    family,
                    kv,
                    None,
                    fstamps if isinstance(fstamps, dict) else None,
                    now=now,
                    skew=skew,
                    max_keys=max_keys,
                )
                out.append((family, ch))
        return out

    def drop(self, src: str) -> list[tuple[str, Changes]]:
        """``src`` went down: remove every entry it holds, and it is a peer no more. Returns the
        changes family by family (none for a source that held nothing). Work in proportion to
        what ``src`` held.

        Example::

            for family, ch in store.drop("slave1"): ...
        """
        out = []
        held = self.by_source.get(src)
        if held:
            # while it is still a peer: a peer's entries were never "mine"
            for family in list(held):
                keys = held.get(family)
                if keys:
                    out.append((family, self.apply(src, family, None, list(keys))))
        self.peers.discard(src)
        return out

    def add_peer(
        self, nodeid: str
    ) -> list[tuple[str, dict[str, Any], list[str], dict[str, float]]]:
        """``nodeid`` is another global node: its entries are "mine" no more. Returns what
        "mine" lost or changed by that, what the other peers must hear about: ``(family,
        up_set, up_del, up_stamps)`` for each family. Nothing when it is a peer already or
        there were no other peers.

        Example::

            for family, up_set, up_del, up_stamps in store.add_peer("seed2"): ...
        """
        if nodeid in self.peers:
            return []
        held = self.by_source.get(nodeid)
        # what it set as our slave was "mine" (we told the other globals); now it tells them
        before = (
            {(f, k): self.win(f, k, mine=True) for f, kv in held.items() for k in kv}
            if held and self.peers
            else None
        )
        self.peers.add(nodeid)
        if not before:
            return []
        changes: dict[str, tuple[dict[str, Any], list[str], dict[str, float]]] = {}
        for (family, key), old in before.items():
            new = self.win(family, key, mine=True)
            if new is None:
                changes.setdefault(family, ({}, [], {}))[1].append(key)
            elif not same(old[2], new[2]):  # type: ignore[index]
                up_set, _, up_stamps = changes.setdefault(family, ({}, [], {}))
                up_set[key], up_stamps[key] = new[2], new[1]
        return [(family, s, d, st) for family, (s, d, st) in changes.items()]


# ---------------------------------------------------------------- watchers' change sets


def watch_update(
    db: dict[str, Any], set_: Any, dels: Any
) -> tuple[list[str], list[str], list[str]]:
    """Apply a change (``set_`` a dict, ``dels`` a list; anything else counts as empty) to a
    watcher's copy ``db`` of a family; return the keys ``(added, changed, deleted)``.

    Example::

        watch_update(db, {"k": 2}, ["gone"])      # (['k'], [], ['gone'])
    """
    added: list[str] = []
    changed: list[str] = []
    for k, v in (set_ if isinstance(set_, dict) else {}).items():
        (changed if k in db else added).append(k)
        db[k] = v
    deleted = [
        k
        for k in (dels if isinstance(dels, list) else ())
        if k.__class__ is str and db.pop(k, _MISSING) is not _MISSING
    ]
    return added, changed, deleted


def watch_reload(
    db: dict[str, Any], new: Optional[Mapping[str, Any]]
) -> tuple[list[str], list[str], list[str]]:
    """Make a watcher's copy ``db`` equal to the whole family ``new``; return the keys
    ``(added, changed, deleted)`` (a value is changed when its JSON encoding is).

    Example::

        watch_reload(db, {"k": 1})
    """
    added: list[str] = []
    changed: list[str] = []
    deleted: list[str] = []
    new = new or {}
    for k, v in new.items():
        if k in db:
            if enc(db[k]) != enc(v):
                changed.append(k)
        else:
            added.append(k)
        db[k] = v
    for k in [k for k in db if k not in new]:
        del db[k]
        deleted.append(k)
    return added, changed, deleted


# ---------------------------------------------------------------- frames of bounded size
#
# A whole family, the answer to ``g_db_*``, a slave's database or a change of many keys would
# make one frame as large as the data, more than a reader's ``max_frame`` allows (it drops the
# link, redials, and the same frame comes again). They travel in frames of about ``db_chunk``
# bytes of JSON instead (at least one key each; a frame stays one frame when it fits); how
# ``sync`` sends the parts is described there.


def split_dict(
    d: dict[str, Any], limit: int, per_key: int = 0, always: bool = False
) -> tuple[list[tuple[dict[str, Any], int]], int]:
    """``(parts, size)``: ``d`` cut into ``(dict, bytes)`` parts of about ``limit`` bytes each
    (at least one key each; ``per_key`` bytes more for each key) and the estimated size of all
    of ``d``. A dict of one key is not measured (size 0) unless ``always``.

    Example::

        parts, total = split_dict(family, 65536)
    """
    if len(d) <= 1 and not always:
        return [(d, 0)], 0
    parts: list[tuple[dict[str, Any], int]] = []
    part: dict[str, Any] = {}
    nbytes, total = 0, 0
    for k, v in d.items():
        s = len(k) + size(v) + 4 + per_key
        if part and nbytes + s > limit:
            parts.append((part, nbytes))
            part, nbytes = {}, 0
        part[k] = v
        nbytes += s
        total += s
    parts.append((part, nbytes))
    return parts, total


def split_list(
    lst: list[Any], limit: int, sizer: Callable[[Any], int]
) -> tuple[list[tuple[list[Any], int]], int]:
    """``(parts, size)`` as ``split_dict``, for a list (``sizer(item)``: its bytes).

    Example::

        parts, total = split_list(keys, 65536, lambda k: len(k) + 3)
    """
    if len(lst) <= 1:
        return [(lst, 0)], 0
    parts: list[tuple[list[Any], int]] = []
    part: list[Any] = []
    nbytes, total = 0, 0
    for v in lst:
        s = sizer(v) + 1
        if part and nbytes + s > limit:
            parts.append((part, nbytes))
            part, nbytes = [], 0
        part.append(v)
        nbytes += s
        total += s
    parts.append((part, nbytes))
    return parts, total


def _key_size(k: str) -> int:
    return len(k) + 3


def change_frames(
    set_: dict[str, Any],
    dels: list[str],
    limit: int,
    stamps: Optional[Mapping[str, float]] = None,
) -> list[tuple[Any, ...]]:
    """The arguments after the family of the ``g_upd``/``g_chg2`` frames that carry a change
    (``set_`` and ``dels`` may be empty): ``[(set or None, dels or None[, stamps])...]``, one
    frame when it fits in ``limit`` bytes, else sets and deletions in parts of about ``limit``.

    Example::

        for args in change_frames({"k": 1}, [], 65536): send("g_chg2", family, *args)
    """
    sparts, ssize = split_dict(set_, limit, 24 if stamps is not None else 0) if set_ else ([], 0)
    dparts, dsize = split_list(dels, limit, _key_size) if dels else ([], 0)
    frames: list[tuple[Any, Any]]
    if ssize + dsize <= limit:
        frames = [(set_ or None, dels or None)]
    else:
        frames = [(p, None) for p, _ in sparts] + [(None, p) for p, _ in dparts]
    if stamps is None:
        return frames
    return [(s, d, {k: stamps[k] for k in s} if s else {}) for s, d in frames]


def db_frames(
    db: Mapping[str, Any], limit: int, stamps: Optional[Mapping[str, Any]] = None
) -> Optional[tuple[Db, dict[str, dict[str, Any]], list[tuple[str, dict[str, Any], Any]]]]:
    """How a whole database travels when it does not fit in ``limit`` bytes: ``(first,
    first_stamps, rest)``, the database (and its ``stamps``) of a first frame, and ``(family,
    part, part_stamps or None)`` for each further frame (a ``g_upd``); None when it fits.
    The internal families come first: the receiver learns our addresses from the first frame.

    Example::

        cut = db_frames(local_db, 65536)
        if cut is None: send("g_slave", local_db)
    """
    per_key = 24 if stamps is not None else 0
    cut = []
    total = 0
    for family in sorted(db, key=lambda f: not f.startswith("'")):
        kv = db[family]
        if isinstance(kv, dict) and kv:
            parts, nbytes = split_dict(kv, limit, per_key, always=True)
            cut.append((family, parts))
            total += nbytes + len(family) + 4
    if total <= limit:
        return None
    first: Db = {}
    first_st: dict[str, dict[str, Any]] = {}
    nbytes = 0
    rest: list[tuple[str, dict[str, Any], Any]] = []
    for family, parts in cut:
        for part, psize in parts:
            if not rest and (not first or nbytes + psize <= limit):
                first.setdefault(family, {}).update(part)
                if stamps is not None:
                    first_st.setdefault(family, {}).update({k: stamps[family][k] for k in part})
                nbytes += psize
            else:
                pst = {k: stamps[family][k] for k in part} if stamps is not None else None
                rest.append((family, part, pst))
    return first, first_st, rest


def family_parts(view: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """A whole family (``g_chg1``) in parts of about ``limit`` bytes: one part (``view``
    itself) when it fits.

    Example::

        family_parts({"a": 1, "b": 2}, 65536)     # [{'a': 1, 'b': 2}]
    """
    if not view:
        return [view]
    parts = split_dict(view, limit)[0]
    return [view] if len(parts) <= 1 else [p for p, _ in parts]


def reply_parts(result: Any, chunk: Any, limit: int) -> list[Any]:
    """The answer ``result`` of a ``g_db_*`` request in parts of about ``chunk`` bytes (what
    the requester asked for, kept between ``CHUNK_MIN`` and ``limit``); ``[result]`` when the
    requester takes no parts (``chunk`` not an int) or ``result`` has one entry at most.

    Example::

        reply_parts(["a", "b"], None, 65536)      # [['a', 'b']]
    """
    if chunk.__class__ is not int or not result or len(result) <= 1:
        return [result]
    chunk = max(CHUNK_MIN, min(chunk, limit))
    if isinstance(result, dict):
        return [p for p, _ in split_dict(result, chunk)[0]]
    return [p for p, _ in split_list(result, chunk, size)[0]]


def merge_part(acc: Any, part: Any) -> Any:
    """Add a part of an answer to what came so far (a dict or a list; None at first).

    Example::

        acc = merge_part(None, {"a": 1}); merge_part(acc, {"b": 2})   # {'a': 1, 'b': 2}
    """
    if acc is None:
        return (
            dict(part) if isinstance(part, dict) else list(part) if isinstance(part, list) else part
        )
    if isinstance(acc, dict) and isinstance(part, dict):
        acc.update(part)
    elif isinstance(acc, list) and isinstance(part, list):
        acc.extend(part)
    return acc
