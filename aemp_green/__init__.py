"""aemp_green: Erlang-style message passing on gevent, wire-compatible with AnyEvent::MP 2.x.

Nodes are processes; ports are cheap addressable mailboxes; ``snd`` sends a message (a list of
JSON/CBOR-able values whose first element is a tag) to any port on any node. A port is either a
callback port (``port``/``rcv``) or a greenlet that blocks in ``receive``::

    from aemp_green import spawn, receive, snd, SELF, call

    def echo():
        while True:
            text, reply = receive("echo")
            snd(reply, "echoed", text)

    e = spawn(echo)
    print(call(e, "echo", "hi", timeout=5))   # ['echoed', 'hi']

Importing the package patches nothing and starts nothing; see ``aemp_green.monkey`` for the
opt-in monkey-patched mode.
"""

import logging as _logging

from ._guard import Guard
from ._report import CrashReport, apply_verbose_env as _apply_verbose_env, set_crash_handler
from ._version import __version__
from .exceptions import (
    AempError,
    AuthenticationFailed,
    BlockingInHandlerError,
    ConfigError,
    NoDatabaseError,
    NodeUnreachable,
    NoSuchPort,
    PortDied,
    ProtocolError,
    Timeout,
)
from .kernel import NODE, after, kil, mon, mon_guard, node_id, node_of, port_is_local, snd
from .ports import (
    SELF,
    cal,
    call,
    mailbox_info,
    peval,
    port,
    psub,
    rcv,
    receive,
    receive_match,
    spawn,
)
from .node import eval_on, known_nodes, mon_nodes, node_is_up, snd_on, snd_to_func, up_nodes
from .connect import listener_addresses
from .runtime import configure, run_forever, shutdown
from .globaldb import db_del, db_family, db_keys, db_mon, db_reg, db_set, db_values
from .introspect import IntrospectionRefused, info, links_info, node_info, ports_info, snapshot
from . import dataconn as _dataconn, logcatcher as _logcatcher  # noqa: F401 - the side services

_logging.getLogger(__name__).addHandler(_logging.NullHandler())
_apply_verbose_env()  # AE_VERBOSE / PERL_ANYEVENT_VERBOSE: the library's log on stderr

__all__ = [
    "__version__",
    # identity
    "NODE",
    "node_id",
    "SELF",
    "node_of",
    "port_is_local",
    # ports and messages
    "port",
    "rcv",
    "snd",
    "kil",
    "spawn",
    "receive",
    "receive_match",
    "psub",
    "peval",
    "after",
    "mailbox_info",
    # monitoring
    "mon",
    "mon_guard",
    "Guard",
    # calls
    "cal",
    "call",
    # network
    "configure",
    "shutdown",
    "run_forever",
    "node_is_up",
    "up_nodes",
    "known_nodes",
    "mon_nodes",
    "listener_addresses",
    "snd_to_func",
    "snd_on",
    "eval_on",
    # shared database
    "db_set",
    "db_del",
    "db_reg",
    "db_family",
    "db_keys",
    "db_values",
    "db_mon",
    # introspection
    "node_info",
    "ports_info",
    "links_info",
    "snapshot",
    "info",
    "IntrospectionRefused",
    # errors
    "set_crash_handler",
    "CrashReport",
    "AempError",
    "ConfigError",
    "PortDied",
    "NoSuchPort",
    "NodeUnreachable",
    "AuthenticationFailed",
    "ProtocolError",
    "Timeout",
    "BlockingInHandlerError",
    "NoDatabaseError",
]
