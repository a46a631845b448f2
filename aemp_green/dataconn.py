"""dataconn: direct byte-stream connections between two nodes, for bulk data (AEMP's DataConn).

A data connection is a TCP connection of its own, made to the same listener the nodes already
use and authenticated exactly like a node link (same secret, same TLS), so two nodes that can
exchange messages can open data connections too, with no extra port. Bulk data on it never
queues behind (or in front of) the messages on the node link.

Greenlet style::

    sock = connect_to(node, "myapp.files.receive", "backup.tar", timeout=10)
    sock.sendall(data)          # a plain gevent socket
    sock.close()

and on ``node``, in a new greenlet port (``SELF()`` is that port)::

    def receive(filename, sock):          # myapp/files.py
        with open(filename, "wb") as f:
            while chunk := sock.recv(1 << 20):
                f.write(chunk)

The socket given to ``init`` belongs to its port: it is closed when the port dies (when
``init`` returns, or later if ``init`` set ``rcv`` handlers and returned, AEMP style). The
socket returned to the caller belongs to the caller.

Wire protocol (Python to Python; AnyEvent::MP 2.x's DataConn uses the same protocol name and
greeting key, but its exact exchange after the handshake is unknown, so no interoperability with
Perl DataConn is claimed)::

    connector                                       acceptor (the target node's listener)
    greeting line 1: aemp-dataconn;1;<node>;...;dataconn_id=<id>
                     (the normal AEMP handshake: nonce, auth line; a wrong secret or a
                      failed TLS check refuses the connection exactly like a node link)
    header:  ["<init function>", [initdata...]] LF   ->
                                                 <-  "ok" LF     init(*initdata, sock) starts
                                                 <-  "error <why>" LF, then close
    raw bytes both ways from here on, until either side closes

The header is one line of compact JSON (at most ``MAX_HEADER`` bytes); the connector sends
nothing after it until the ``ok`` line arrived, and both sides read the header and answer
line without reading past their LF, so no byte of the data phase is ever consumed by the
library. The acceptor refuses (``error ...``) when it is a ``secure`` node, when the function
cannot be resolved, or when the header is malformed. ``init`` is resolved like ``spawn``'s
function names (``pkg.mod.func``, ``Pkg::Mod::func``).

A target node answers ``aemp-dataconn`` connections once this module is imported there. When
the target closes a fresh connection without answering (the module is not loaded there), the
connector asks the target over the node link to run ``aemp_green.dataconn._probe`` (a node
request resolved by name, which imports the module) and tries once more; ``secure`` nodes
refuse that, as they refuse the init function anyway.

Failures: the blocking form raises ``DataConnError`` (``reason`` is ``("dataconn", why)``);
the callback form (``cb=``) called in a port kills that port with ``("dataconn", why)``, as
AEMP does, or calls ``cb()`` without arguments outside port context.

Local target (``node`` is this node): a socket pair, ``init`` runs in a new local port with
one end (a callable is accepted there too), no network involved.
"""

import json
import logging
import secrets
import socket as _stdsocket
import ssl as _stdssl
from typing import Any, Callable, Optional, Sequence, TypeAlias, Union, overload

import gevent
from gevent import socket as _gsocket
from gevent import ssl as _gssl
from gevent.event import AsyncResult, Event

from . import config as _config
from . import connect as _connect
from . import kernel as _k
from . import node as _node
from .globaldb import db_family
from . import ports as _ports
from . import transport as _transport
from ._guard import Guard
from .exceptions import AempError, DataConnError, RemoteProtocolError
from .wire.handshake import Established

__all__ = ["connect_to", "DataConnError", "DataSocket", "PROTOCOL", "MAX_HEADER", "FAIR_BYTES"]

logger = logging.getLogger(__name__)

#: greeting field 1 of a data connection
PROTOCOL = "aemp-dataconn"
#: longest header (init function + initdata as one JSON line), and longest answer line
MAX_HEADER = 1 << 20
_MAX_ANSWER = 4096
_PROBE = "aemp_green.dataconn._probe"
#: data sockets yield to the event loop after moving this many bytes without having to wait
FAIR_BYTES = 1 << 20


# --------------------------------------------------------------------------- fair sockets

#: the local end of a data connection: a ``DataSocket`` (``_DataSSLSocket`` over TLS); gevent's
#: sockets carry no type information
Sock: TypeAlias = Any
#: a dataconn init function: its name (``"pkg.mod.func"``), or a callable for this node
Init: TypeAlias = Union[str, Callable[..., Any]]

_budget = [FAIR_BYTES]  # bytes data sockets may still move before the next forced yield


def _spend(n: int) -> None:
    b = _budget[0] - n
    if b > 0:
        _budget[0] = b
        return
    _budget[0] = FAIR_BYTES
    # not sleep(0): gevent runs up to 50 callbacks before it looks at timers and sockets
    # again, and 50 slices of a bulk loop are 50+ ms; idle() waits for one full loop turn
    gevent.idle()


class _Fair:
    """Mixin: ``send``/``recv``/``recv_into`` (so ``sendall`` and ``makefile`` too) yield to the
    event loop after every ``FAIR_BYTES`` moved by data sockets without waiting, which is what
    happens with a fast peer: the kernel never says "would block", and a bulk loop would
    starve every other greenlet. A socket that had to wait has let the loop run: that resets
    the count, so a transfer limited by the network pays nothing."""

    __slots__ = ()

    def _wait(self, *args: Any, **kwargs: Any) -> Any:
        _budget[0] = FAIR_BYTES
        return super()._wait(*args, **kwargs)  # type: ignore[misc]

    def send(self, data: Any, *args: Any, **kwargs: Any) -> int:
        if len(data) > FAIR_BYTES:
            data = memoryview(data)[:FAIR_BYTES]
        n: int = super().send(data, *args, **kwargs)  # type: ignore[misc]
        _spend(n)
        return n

    def recv(self, *args: Any) -> bytes:
        data: bytes = super().recv(*args)  # type: ignore[misc]
        _spend(len(data))
        return data

    def recv_into(self, *args: Any) -> int:
        n: int = super().recv_into(*args)  # type: ignore[misc]
        _spend(n)
        return n


class DataSocket(_Fair, _gsocket.socket):  # type: ignore[misc]  # (gevent: no types)
    """The socket of a data connection: a gevent socket that also yields to the event loop
    after every ``FAIR_BYTES`` it moved, so bulk transfers never starve the node's messages.

    Example::

        sock = connect_to("worker/1", "myapp.sink")
        assert isinstance(sock, gevent.socket.socket)
        sock.sendall(b"x" * (100 << 20))   # the node keeps answering messages meanwhile
    """

    __slots__ = ()


class _DataSSLSocket(_Fair, _gssl.SSLSocket):  # type: ignore[misc]
    """``DataSocket`` for TLS connections."""

    __slots__ = ()


def _make_fair(sock: Any) -> Sock:
    """Turn a gevent (TLS) socket into a ``DataSocket`` in place (same object, same fd)."""
    if isinstance(sock, _gssl.SSLSocket):
        sock.__class__ = _DataSSLSocket
    elif type(sock) is _gsocket.socket:
        sock.__class__ = DataSocket
    return sock


# --------------------------------------------------------------------------- line reading


def _read_line(sock: Any, buf: Optional[bytes], limit: int) -> tuple[bytes, bytes]:
    """Read one LF-terminated line without consuming anything after it.

    ``buf`` holds bytes already read (handshake leftovers). Returns ``(line, rest)`` where
    ``rest`` is what ``buf`` held beyond the line. Raises ``RemoteProtocolError`` on EOF or an
    over-long line.
    """
    data = bytes(buf or b"")
    while True:
        i = data.find(b"\n")
        if i >= 0:
            return data[:i].rstrip(b"\r"), data[i + 1 :]
        if len(data) > limit:
            raise RemoteProtocolError("line too long")
        if isinstance(sock, (_stdssl.SSLSocket, _gssl.SSLSocket)):
            chunk = sock.recv(1)  # TLS cannot peek; these lines are short and rare
        else:
            peek = sock.recv(min(65536, limit + 2), _stdsocket.MSG_PEEK)
            if not peek:
                chunk = b""
            else:
                j = peek.find(b"\n")
                chunk = sock.recv(len(peek) if j < 0 else j + 1)
        if not chunk:
            raise RemoteProtocolError("connection closed")
        data += chunk


# --------------------------------------------------------------------------- acceptor side


def _on_accept(est: Established, sock: Any, trailing: bytes) -> None:
    """``aemp-dataconn`` handler (``node.register_subprotocol``): runs in the connection's
    greenlet after authentication; returns (and the socket closes) when the init port died."""
    peer = est.peer_nodeid
    dcid = (est.kv or {}).get("dataconn_id")
    try:
        with gevent.Timeout(
            float(_config.setting("monitor_timeout") or 30), RemoteProtocolError("header timeout")
        ):
            line, rest = _read_line(sock, trailing, MAX_HEADER)
        if rest:
            raise RemoteProtocolError("data before the header was answered")
        try:
            header = json.loads(line.decode("utf-8"))
        except ValueError:
            raise RemoteProtocolError("unparsable header") from None
        if (
            not isinstance(header, list)
            or len(header) != 2
            or not isinstance(header[0], str)
            or not isinstance(header[1], list)
        ):
            raise RemoteProtocolError("header must be [init_function, [initdata...]]")
    except (RemoteProtocolError, OSError) as exc:
        logger.info("dataconn %s from %s refused: %s", dcid, peer, exc)
        _answer(sock, "error %s" % (exc,))
        return
    funcname, initdata = header
    if _k.secure_mode:
        logger.warning("secure node: refused dataconn %s init %r from %s", dcid, funcname, peer)
        _answer(sock, "error secure node refuses init functions")
        return
    try:
        fn = _k.resolve_function(funcname)
    except (LookupError, AttributeError, ImportError) as exc:
        logger.warning("dataconn %s from %s: cannot resolve %r: %s", dcid, peer, funcname, exc)
        _answer(sock, "error cannot resolve %r: %s" % (funcname, exc))
        return
    if not _answer(sock, "ok"):
        return
    logger.debug("dataconn %s from %s: %s%r", dcid, peer, funcname, tuple(initdata))
    _run_owned(fn, initdata, sock).wait()


def _answer(sock: Any, text: str) -> bool:
    try:
        sock.sendall(text.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n")
        return True
    except OSError:
        return False


def _run_owned(fn: Callable[..., Any], initdata: Sequence[Any], sock: Any) -> Event:
    """Start ``fn(*initdata, sock)`` as a greenlet port that owns ``sock``; returns an Event
    set (and the socket closed) when that port died."""
    done = Event()

    def died(*reason: Any) -> None:
        if reason:
            logger.info("dataconn init port ended: %r", reason)
        _close(sock)
        done.set()

    pid = _ports.spawn(fn, *initdata, _make_fair(sock))
    _k.add_monitor(pid, died)
    return done


def _close(sock: Any) -> None:
    try:
        sock.close()
    except OSError:  # pragma: no cover
        pass


def _probe(*reply: Any) -> None:
    """Node request target (by name): loading this module enables ``aemp-dataconn`` here."""
    _connect.register_subprotocol(PROTOCOL, _on_accept)
    if reply and isinstance(reply[0], str):
        _k.snd(*reply, "dataconn_ready")


_connect.register_subprotocol(PROTOCOL, _on_accept)


# --------------------------------------------------------------------------- connector side


def _init_name(init: Init, local: bool) -> Init:
    if isinstance(init, str):
        return init
    if callable(init) and local:
        return init
    raise TypeError(
        "dataconn init must be a function name 'pkg.mod.func'%s, not %r"
        % (" or a callable (local target)" if local else "", init)
    )


def _local_pair(init: Init, initdata: Sequence[Any]) -> Sock:
    try:
        fn = _k.resolve_function(init) if isinstance(init, str) else init
    except (LookupError, AttributeError, ImportError) as exc:
        raise DataConnError("cannot resolve %r: %s" % (init, exc)) from None
    a, b = _gsocket.socketpair()
    _run_owned(fn, list(initdata), b)
    return _make_fair(a)


class _ClosedEarly(Exception):
    """The target closed an authenticated data connection without answering the header."""


def _learn_addresses(nodeid: str, timeout: float) -> None:
    """A node that connected to us is up without us knowing its listeners (``dial_subprotocol``
    would then find no address): look them up in the ``'l`` family first."""
    n = _node.get_node(nodeid)
    if n.addrs or not n.is_up or _node.explicit_address(nodeid):
        return
    try:
        addrs = db_family("'l", timeout=timeout).get(nodeid)  # type: ignore[union-attr]
    except AempError:
        return
    if addrs and not n.addrs:
        n.found(list(addrs))


def _dial_once(nodeid: str, header: bytes, deadline: float) -> Sock:
    loop = gevent.get_hub().loop
    dcid = secrets.token_hex(8)
    _learn_addresses(nodeid, max((deadline - loop.now()) / 2, 0.001))
    left = max(deadline - loop.now(), 0.001)
    sock, est, rest = _node.dial_subprotocol(nodeid, PROTOCOL, {"dataconn_id": dcid}, timeout=left)
    # as node links (dial_subprotocol leaves the socket as it is): without TCP_NODELAY the
    # header waits for the ACK of our auth line, a delayed ACK: 40 ms per connection
    _transport.apply_sockopts(sock, _config.setting("nodelay", True))
    try:
        sock.sendall(header)
        line, extra = _read_line(sock, rest, _MAX_ANSWER)
        if extra:
            raise RemoteProtocolError("data before the answer line")
    except (OSError, RemoteProtocolError) as exc:
        _close(sock)
        if isinstance(exc, OSError) or str(exc) == "connection closed":
            raise _ClosedEarly(str(exc) or exc.__class__.__name__) from None
        raise
    except BaseException:
        _close(sock)
        raise
    text = line.decode("utf-8", "replace")
    if text == "ok":
        return _make_fair(sock)
    _close(sock)
    if text.startswith("error "):
        raise DataConnError("refused by %s: %s" % (nodeid, text[6:]))
    raise DataConnError("unexpected answer from %s: %r" % (nodeid, text[:200]))


def _probe_node(nodeid: str, timeout: float) -> bool:
    """Ask ``nodeid`` to load this module (node request by name); True once it answered."""
    res = AsyncResult()
    reply = _ports.port(lambda *m: res.set(True))
    try:
        _k.snd(nodeid, _PROBE, reply)
        return bool(res.get(timeout=max(timeout, 0.001)))
    except gevent.Timeout:
        return False
    finally:
        _k.kil(reply)


def _header(init: Init, initdata: Sequence[Any]) -> bytes:
    try:
        header = (
            json.dumps([init, list(initdata)], ensure_ascii=False, separators=(",", ":")).encode(
                "utf-8"
            )
            + b"\n"
        )
    except (TypeError, ValueError) as exc:
        raise TypeError("dataconn initdata must be JSON values: %s" % (exc,)) from None
    if len(header) > MAX_HEADER:
        raise ValueError("dataconn header is %d bytes, more than %d" % (len(header), MAX_HEADER))
    return header


def _connect_blocking(nodeid: str, header: bytes, timeout: float) -> Sock:
    loop = gevent.get_hub().loop
    loop.update_now()
    deadline = loop.now() + timeout
    probed = False
    while True:
        try:
            return _dial_once(nodeid, header, deadline)
        except DataConnError:
            raise
        except _ClosedEarly as exc:
            # closed right after authenticating: the module may not be loaded there
            if not probed:
                probed = True
                if _probe_node(nodeid, deadline - loop.now()):
                    continue
            raise DataConnError(
                "%s closed the data connection without answering (%s): "
                "dataconn not loaded there?" % (nodeid, exc)
            ) from None
        except RemoteProtocolError as exc:
            raise DataConnError(str(exc) or exc.__class__.__name__) from None
        except gevent.Timeout:
            raise DataConnError("connect timeout") from None
        except (OSError, _transport.HandshakeRefused) as exc:
            raise DataConnError(str(exc) or exc.__class__.__name__) from None


@overload
def connect_to(
    node: str,
    init: Init,
    *initdata: Any,
    timeout: Optional[float] = None,
    cb: None = None,
) -> Sock: ...
@overload
def connect_to(
    node: str,
    init: Init,
    *initdata: Any,
    timeout: Optional[float] = None,
    cb: Callable[..., Any],
) -> Guard: ...
def connect_to(
    node: str,
    init: Init,
    *initdata: Any,
    timeout: Optional[float] = None,
    cb: Optional[Callable[..., Any]] = None,
) -> Union[Sock, Guard]:
    """Open a data connection to ``node`` and run ``init(*initdata, sock)`` there in a new port.

    ``node`` is a node ID (or any port ID on it). ``init`` is a function name resolved on that
    node like ``spawn``'s (``"pkg.mod.func"``); for this node itself a callable works too and
    the connection is a local socket pair. ``initdata`` must be JSON values. ``timeout``
    (default: ``monitor_timeout``, 30 s) bounds connecting, authenticating and the target's
    answer.

    Without ``cb`` this blocks the calling greenlet and returns the local end, a gevent socket
    that the caller owns; failures raise ``DataConnError``. With ``cb`` it returns a guard at
    once (cancelling it aborts a pending attempt) and later calls ``cb(sock)`` in the calling
    port's context; on failure that port is killed with ``("dataconn", why)`` (outside port
    context ``cb()`` is called with no arguments).

    Example::

        sock = connect_to("worker/1", "myapp.files.receive", "backup.tar", timeout=10)
        sock.sendall(open("backup.tar", "rb").read())
        sock.close()

        # callback form, inside a port:
        connect_to("worker/1", "myapp.files.receive", "x.tar", cb=lambda s: s.sendall(b"..."))
    """
    nodeid = _k.node_of(node)
    local = nodeid == _k.this_node
    init = _init_name(init, local)
    header = b"" if local else _header(init, initdata)  # bad initdata raises here
    if timeout is None:
        timeout = float(_config.setting("monitor_timeout") or 30)
    if cb is None:
        if local:
            return _local_pair(init, initdata)
        return _connect_blocking(nodeid, header, timeout)

    owner = _k.get_self()

    def attempt() -> None:
        try:
            if local:
                sock = _local_pair(init, initdata)
            else:
                sock = _connect_blocking(nodeid, header, timeout)
        except Exception as exc:
            why = (
                exc.why if isinstance(exc, DataConnError) else "%s: %s" % (type(exc).__name__, exc)
            )
            logger.info("dataconn to %s failed: %s", nodeid, why)
            if owner is not None:
                _k.kil(owner.id, "dataconn", why)
            else:
                cb()
            return
        if owner is None:
            cb(sock)
        elif owner.monitors is _k.DEAD:
            _close(sock)
        else:
            _ports.peval(owner.id, cb, sock)

    g = gevent.spawn(attempt)
    return Guard.for_caller(lambda: g.kill(block=False))
