"""monkey: the opt-in monkey-patched mode (unmodified blocking code cooperates with the node).

A program that was written for threads and blocking I/O — ``time.sleep``, blocking sockets,
``threading.Thread``, ``queue.Queue``, an HTTP client such as ``urllib`` or ``requests`` — can
join an AEMP network without being rewritten: make this the first statement of the program::

    from aemp_green import monkey; monkey.patch_all()

    import threading, time, socket          # now gevent's cooperative versions
    from aemp_green import configure, port, rcv, snd
    configure(nodeid="legacy/%u", seeds=["127.0.0.1:4040"])

``patch_all()`` calls gevent's ``patch_all`` and binds aemp_green's kernel to the hub of the
calling (main) thread. From then on every blocking call switches to the hub, which runs the
node (links, timers, monitors) while the caller waits; ``threading.Thread`` starts greenlets.
Code that never blocks — a CPU-bound loop — still starves the node: call ``time.sleep(0)``
now and then.

Patching too late is the classic gevent trap: a module that did ``from time import sleep``,
``from socket import create_connection`` or ``from ssl import SSLContext`` before patching
keeps the blocking original and silently freezes the whole node when it uses it; a thread
started before patching is a real OS thread that now shares gevent's patched primitives.
(A lock made before patching stays a real lock: harmless while uncontended, and gevent
converts the ``RLock``s it finds, so locks are not reported.) gevent only warns about some of
this; ``patch_all()`` looks for it first (``problems()``) and raises ``RuntimeError`` with the
list, unless ``force=True``. A process that gevent already patched (gunicorn's gevent worker,
a direct ``gevent.monkey.patch_all()``) is left as it is; the node is just bound to its hub.

Importing ``aemp_green`` (or this module) patches nothing: only ``patch_all()`` does. When the
program cannot be patched at all (a threaded web server, a GUI), use ``aemp_green.threaded``.
See docs/running.md for the three ways to run a node.

Importing this module patches nothing either. Its imports (gevent, the kernel) are at the top:
the package, which Python imports before any of its modules, has loaded them already.
"""

import sys
from typing import Any

import gevent
from gevent import monkey as _gmonkey

from . import _hub

__all__ = ["patch_all", "problems", "is_patched"]

#: objects gevent replaces, by module: a reference to the original taken before patching
#: (``from time import sleep``) keeps blocking the whole process after it.
_TARGETS = {
    "socket": (
        "socket",
        "create_connection",
        "socketpair",
        "fromfd",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "getnameinfo",
        "getfqdn",
    ),
    "time": ("sleep",),
    "select": ("select", "poll"),
    "ssl": ("SSLContext", "SSLSocket", "wrap_socket", "get_server_certificate"),
    "_thread": ("start_new_thread",),
    "queue": ("SimpleQueue",),
    "subprocess": ("Popen", "call", "check_call", "check_output", "run"),
}
#: classes whose subclasses, defined before patching, keep the blocking base class
_BASES = (
    ("socket", "socket"),
    ("ssl", "SSLContext"),
    ("ssl", "SSLSocket"),
    ("subprocess", "Popen"),
)
#: third-party modules gevent documents as breaking when imported before patching (ssl)
_EARLY_IMPORTS = ("requests", "urllib3", "httpx", "httpcore", "botocore", "aiohttp", "grpc")
#: packages that are gevent-aware (or ours) and never count as early users
_TRUSTED = frozenset(("gevent", "greenlet", "aemp_green", "zope"))

_state = {"patched": False}


def is_patched() -> bool:
    """True once ``patch_all()`` (ours or gevent's) has patched ``socket``.

    Example::

        >>> from aemp_green import monkey
        >>> monkey.is_patched()
        False
    """
    return bool(_state["patched"] or _gmonkey.is_module_patched("socket"))


def _stdlib_names() -> frozenset[str]:
    return getattr(sys, "stdlib_module_names", frozenset())


def _early_references() -> list[tuple[str, str, str]]:
    """(module, attribute, "mod.name") for non-stdlib modules holding unpatched originals."""
    targets: dict[int, tuple[Any, str]] = {}
    for modname, names in _TARGETS.items():
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        for name in names:
            obj = getattr(mod, name, None)
            if obj is not None:
                targets.setdefault(id(obj), (obj, "%s.%s" % (modname, name)))
    bases = []
    for modname, name in _BASES:
        mod = sys.modules.get(modname)
        cls = getattr(mod, name, None) if mod is not None else None
        if isinstance(cls, type):
            bases.append((cls, "%s.%s" % (modname, name)))
    stdlib = _stdlib_names()
    found = []
    for modname, mod in list(sys.modules.items()):
        if mod is None or modname == __name__:
            continue
        top = modname.partition(".")[0]
        if top in stdlib or top in _TRUSTED:
            continue
        try:
            items = list(vars(mod).items())
        except TypeError:  # pragma: no cover - exotic module objects
            continue
        for attr, value in items:
            hit = targets.get(id(value))
            if hit is not None and hit[0] is value:
                found.append((modname, attr, hit[1]))
                continue
            if isinstance(value, type) and getattr(value, "__module__", None) == modname:
                for cls, what in bases:
                    if value is not cls and issubclass(value, cls):
                        found.append((modname, attr, "subclass:" + what))
                        break
    return found


def problems() -> list[str]:
    """What would make ``patch_all()`` unsafe now, as a list of explanations (empty when fine).

    Checks, as gevent warns about: other threads already running; patching from a thread that is
    not the main thread; modules gevent documents as breaking when imported first
    (``requests``, ``urllib3``, ...); modules (``__main__`` included) holding a direct
    reference to a blocking original (``from time import sleep``, ``from socket import
    create_connection``, ``from ssl import SSLContext``, a subclass of ``socket.socket``);
    aemp_green already bound to the hub of another thread (``aemp_green.threaded``). Nothing
    is reported once the process is patched.

    Example::

        from aemp_green import monkey
        for why in monkey.problems():
            print("cannot patch:", why)
    """
    if is_patched():
        return []
    out: list[str] = []
    threading = sys.modules.get("threading")
    if threading is not None:
        main = threading.main_thread()
        if threading.current_thread() is not main:
            out.append(
                "patch_all() must run in the main thread, not in %r"
                % threading.current_thread().name
            )
        others = [t for t in threading.enumerate() if t is not main and t.is_alive()]
        if others:
            out.append(
                "threads were started before patching (%s): they are real OS threads "
                "and would now share gevent's patched locks; start them after "
                "patch_all()" % ", ".join(repr(t.name) for t in others)
            )
    early = [m for m in _EARLY_IMPORTS if m in sys.modules]
    if early:
        out.append(
            "%s imported before patching: gevent documents that these break "
            "(ssl RecursionError, blocking connections) unless patching comes first"
            % ", ".join(early)
        )
    for modname, attr, what in _early_references():
        if what.startswith("subclass:"):
            out.append(
                "module %r defines %r, a subclass of the unpatched %s, before "
                "patch_all(): its instances would block the whole node" % (modname, attr, what[9:])
            )
        else:
            out.append(
                "module %r holds the unpatched %s as %r (imported before patch_all()):"
                " calling it would block the whole node" % (modname, what, attr)
            )
    hub = _hub.current_hub()
    if hub is not None and threading is not None:
        ident = getattr(hub, "thread_ident", None)
        if ident is not None and ident != threading.get_ident():
            out.append(
                "aemp_green is already bound to the gevent hub of another thread "
                "(ident %s, aemp_green.threaded?): monkey mode and the threaded bridge "
                "do not mix" % ident
            )
    return out


def patch_all(*, force: bool = False, **gevent_kwargs: Any) -> Any:
    """Monkey-patch the standard library with gevent and bind the node to this thread's hub.

    Call it as the first statement of the program. It checks ``problems()`` first and raises
    ``RuntimeError`` listing them (pass ``force=True`` to patch anyway: gevent then only
    warns). ``gevent_kwargs`` go to ``gevent.monkey.patch_all`` (e.g. ``subprocess=False``);
    leaving ``thread`` patched is what makes ``threading.Thread`` safe to use with the node.
    Calling it again is harmless. Returns the gevent hub the node runs on.

    Example::

        from aemp_green import monkey; monkey.patch_all()

        import time, threading
        from aemp_green import configure, port, rcv
        configure(nodeid="legacy/%u")
        threading.Thread(target=lambda: time.sleep(1)).start()   # a greenlet now
    """
    if not _state["patched"]:
        found = problems()
        if found and not force:
            raise RuntimeError(
                "aemp_green.monkey.patch_all(): patching now would leave blocking code behind "
                "(make it the first statement of the program, or pass force=True):\n  - "
                + "\n  - ".join(found)
            )
        if gevent_kwargs or not _gmonkey.is_module_patched("socket"):
            _gmonkey.patch_all(**gevent_kwargs)
        _state["patched"] = True
    hub = gevent.get_hub()
    bound = _hub.bound_hub()
    if bound is not hub and not force:
        raise RuntimeError(
            "aemp_green is bound to the hub of thread %s, not this thread's"
            % getattr(bound, "thread_ident", "?")
        )
    return hub
