"""Every exception aemp_green raises, in one place.

``Timeout`` and ``PortDied`` are what blocking calls raise; ``ProtocolError`` and its two halves
(``LocalProtocolError``: we were asked to do something the protocol cannot carry;
``RemoteProtocolError``: the peer misbehaved) come from the transport layer, which turns a
``RemoteProtocolError`` into a logged, dropped connection.
"""

__all__ = [
    "AempError",
    "Timeout",
    "PortDied",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "ConfigError",
    "DataConnError",
]


class AempError(Exception):
    """Base class of every aemp_green error.

    Example::

        try:
            call(server, "job", timeout=5)
        except AempError as e:       # Timeout, PortDied, ...
            print("call failed:", e)
    """


class Timeout(AempError):
    """A blocking ``receive``, ``receive_match`` or ``call`` ran out of time.

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

    def __init__(self, reason=()):
        self.reason = tuple(reason)
        super().__init__(*self.reason)

    def __str__(self):
        return "port died: %r" % (self.reason,)


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

    def __init__(self, why):
        self.why = str(why)
        self.reason = ("dataconn", self.why)
        super().__init__(self.why)
