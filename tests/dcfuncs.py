"""Functions that child nodes run by name in the dataconn, logcatcher and supervisor tests.

Children have ``tests/`` on ``sys.path``, so ``connect_to(node, "dcfuncs.sink", ...)`` or
``spawn(node, "dcfuncs.worker", ...)`` finds them. Importing this module also loads
``aemp_green.dataconn`` (so the node answers ``aemp-dataconn`` connections) and
``aemp_green.logcatcher``.
"""

import hashlib
import logging

import aemp_green.dataconn  # noqa: F401 - the node answers data connections from now on
import aemp_green.logcatcher  # noqa: F401
from aemp_green import NODE, SELF, receive, snd

logger = logging.getLogger("dcfuncs")

CHUNK = 1 << 20


def pattern_chunk(i, block):
    """Chunk ``i`` of a test stream: ``block`` with its first 8 bytes replaced by ``i``."""
    return i.to_bytes(8, "big") + block[8:]


def sink(report, sock):
    """Data connection init: read until EOF, then ``snd(report, "sink_done", nbytes, sha256)``."""
    h = hashlib.sha256()
    n = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        k = sock.recv_into(buf)
        if not k:
            break
        h.update(view[:k])
        n += k
    snd(report, "sink_done", n, h.hexdigest())


def echo(sock):
    """Data connection init: send back everything received, until EOF."""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


def source(nbytes, sock):
    """Data connection init: send ``nbytes`` of a fixed pattern, then close."""
    block = bytes(range(256)) * (CHUNK // 256)
    sent = i = 0
    while sent < nbytes:
        chunk = pattern_chunk(i, block)[: nbytes - sent]
        sock.sendall(chunk)
        sent += len(chunk)
        i += 1


def hello_init(report, value, sock):
    """Data connection init: report its arguments and SELF, send one line, wait for EOF."""
    snd(report, "init_called", value, SELF(), NODE())
    sock.sendall(b"hello from %s\n" % NODE().encode())
    while sock.recv(4096):
        pass


# --------------------------------------------------------------------------- supervisor


def worker(report, name):
    """Supervised child: tell ``report`` it started (with its port and node), then serve
    ``["ping", reply]`` until killed."""
    snd(report, "started", name, SELF(), NODE())
    while True:
        msg = receive()
        if msg and msg[0] == "ping":
            snd(msg[-1], "pong", name, NODE())


def chat_server():
    """The supervised chat server of docs/supervisor.md (AEMP style: handlers on SELF).

    ``["join", client, nick]`` adds a client (monitored: it "quits" when it dies);
    ``["privmsg", nick, text]`` relays ``"nick: text"`` to every client as ``["line", text]``.
    """
    from aemp_green import mon, rcv

    clients = {}

    def relay(line):
        for client in list(clients):
            snd(client, "line", line)

    def join(client, nick, *_):
        clients[client] = nick

        def quits(*reason):
            clients.pop(client, None)
            relay("%s (quits)" % nick)

        mon(client, quits)
        relay("%s (joins on %s)" % (nick, NODE()))

    def privmsg(nick, text, *_):
        relay("%s: %s" % (nick, text))

    rcv(SELF(), "join", join, "privmsg", privmsg)
