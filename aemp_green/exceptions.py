"""Every exception aemp_green raises, in one place.

``Timeout`` and ``PortDied`` are what blocking calls raise; ``ProtocolError`` and its two halves
(``LocalProtocolError``: we were asked to do something the protocol cannot carry;
``RemoteProtocolError``: the peer misbehaved) come from the transport layer, which turns a
``RemoteProtocolError`` into a logged, dropped connection.
"""

from typing import Any, Iterable

__all__ = [
    "AempError",
    "Timeout",
    "PortDied",
    "NoSuchPort",
    "NodeUnreachable",
    "AuthenticationFailed",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "ConfigError",
    "DataConnError",
    "BlockingInHandlerError",
    "NoDatabaseError",
]


class AempError(Exception):
    """Base class of every aemp_green error.

    Example::

        try:
            call(server, "job", timeout=5)
        except AempError as e:       # Timeout, PortDied, ...
            print("call failed:", e)
    """


class Timeout(AempError, TimeoutError):
    """A blocking ``receive``, ``receive_match`` or ``call`` ran out of time.

    A subclass of the builtin ``TimeoutError`` too, so code that handles timeouts generically
    catches it.

    Example::

        try:
            receive("reply", timeout=0.5)
        except Timeout:
            print("no reply")
    """


class PortDied(AempError):
    """The port a blocking ``call`` waited on died before it replied.

    ``reason`` is the kill reason as a tuple (empty for a normal exit), e.g.
    ``("die", "ZeroDivisionError: division by zero")``.

    Example::

        try:
            call(worker, "job", 42)
        except PortDied as e:
            print("worker died:", e.reason)
    """

    def __init__(self, reason: Iterable[Any] = ()) -> None:
        self.reason = tuple(reason)
        super().__init__(*self.reason)

    @staticmethod
    def from_reason(reason: Iterable[Any]) -> "PortDied":
        """The ``PortDied`` subclass that fits a kill reason: ``NoSuchPort`` for
        ``("no_such_port", ...)``, ``AuthenticationFailed`` for a ``transport_error`` whose
        text is an authentication failure, ``NodeUnreachable`` for any other
        ``transport_error``, plain ``PortDied`` otherwise.

        Example::

            >>> type(PortDied.from_reason(("no_such_port", "cannot monitor", "n#p"))).__name__
            'NoSuchPort'
            >>> PortDied.from_reason(("die", "boom")).reason
            ('die', 'boom')
        """
        reason = tuple(reason)
        kind = reason[0] if reason else None
        if kind == "no_such_port":
            return NoSuchPort(reason)
        if kind == "transport_error":
            why = str(reason[2]) if len(reason) > 2 else ""
            if any(w in why for w in _AUTH_WORDS):
                return AuthenticationFailed(reason)
            return NodeUnreachable(reason)
        return PortDied(reason)

    def __str__(self) -> str:
        if not self.reason:
            return "port died (normal exit)"
        return "port died: %r" % (self.reason,)


_AUTH_WORDS = ("authentication", "shared secret", "auth type", "auth method", "certificate", "TLS")


class NoSuchPort(PortDied):
    """The port does not exist (any more): the reason is ``("no_such_port", text, port)``.

    Example::

        try:
            call("seed#gone", "ping", timeout=5)
        except NoSuchPort as e:
            print(e)      # no such port seed#gone: cannot monitor nonexistent port
    """

    def __str__(self) -> str:
        text = self.reason[1] if len(self.reason) > 1 else "no such port"
        port = self.reason[2] if len(self.reason) > 2 else "?"
        return "no such port %s: %s" % (port, text)


class NodeUnreachable(PortDied):
    """The port's node could not be reached or the connection to it was lost, so messages may
    have been lost: the reason is ``("transport_error", node, why)``.

    Example::

        try:
            call("worker/1#job", "run", timeout=5)
        except NodeUnreachable as e:
            print(e.node, e.why)
    """

    @property
    def node(self) -> Any:
        """The node ID the reason names."""
        return self.reason[1] if len(self.reason) > 1 else None

    @property
    def why(self) -> str:
        """What happened, as the transport reported it (``connect timeout``, ...)."""
        return str(self.reason[2]) if len(self.reason) > 2 else ""

    def __str__(self) -> str:
        return "node %s unreachable: %s" % (self.node, self.why)


class AuthenticationFailed(NodeUnreachable):
    """The node was reached but the handshake failed its authentication: most likely the two
    nodes do not share the secret, have no auth method in common, or one requires TLS.

    Example::

        try:
            call("seed#ping", "ping", timeout=5)
        except AuthenticationFailed as e:
            print(e)     # node seed unreachable: authentication failure/shared secret mismatch
    """


class ProtocolError(AempError):
    """Base of wire-protocol errors.

    Example::

        try:
            JsonDecoder().feed(b"garbage")
        except ProtocolError as e:
            print("peer sent garbage:", e)
    """


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol or the chosen framing cannot carry.

    Example::

        try:
            Handshake(nodeid="")
        except LocalProtocolError as e:
            print(e)      # nodeid must not be empty
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed; the connection to it is dropped with this reason.

    Example::

        try:
            JsonDecoder().feed(b"garbage")
        except RemoteProtocolError as e:
            print(e)      # json frame is not an array (starts with b'garbage')
    """


class ConfigError(AempError, ValueError):
    """A configuration value, profile or rc file is invalid.

    Example::

        try:
            configure(monitor_timeout=-1)
        except ConfigError as e:
            print(e)      # names the key and what is wrong with it
    """


class DataConnError(AempError):
    """A data connection could not be made; ``reason`` is ``("dataconn", why)``.

    Raised by the blocking ``connect_to``: connect or handshake failure (wrong secret, TLS),
    timeout, or the target refused (``secure`` node, unknown init function).

    Example::

        try:
            sock = connect_to("worker/1", "myapp.sink", timeout=5)
        except DataConnError as e:
            print("no data connection:", e.why)
    """

    def __init__(self, why: object) -> None:
        self.why = str(why)
        self.reason = ("dataconn", self.why)
        super().__init__(self.why)


class BlockingInHandlerError(AempError, RuntimeError):
    """``receive``, ``receive_match`` or ``call`` inside a callback handler (or in the hub).

    Callback handlers run one after another on the node's dispatcher: a handler that waited
    would wait for messages that can only be dispatched once it returns. The text names the
    port and the fix.

    Example::

        rcv(p, "job", lambda: call(other, "x"))   # raises BlockingInHandlerError: use spawn
    """


class NoDatabaseError(AempError):
    """A database query or ``db_mon`` on a node that has no seeds and is no global node: there
    is no database to ask, so it fails at once (instead of a timeout). Configure seeds.

    Example::

        try:
            db_family("workers", timeout=5)
        except NoDatabaseError as e:
            print(e)      # ... has no seeds and is not a global node ... Configure seeds ...
    """
