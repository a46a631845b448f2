"""AEMP's resilient chat client (eg/chat_client), in Python.

Run:  python examples/chat_client.py NICK          (needs a seed and examples/chat_server.py)

Type lines to say them; end with Ctrl-D. The client finds the server by watching the database
family ``eg_chat_server`` with ``db_mon``, joins it and monitors it: when the server dies the
monitor fires ("* disconnected from server: ..."), and the client joins the next server that
shows up in the family (start chat_server.py again). The server monitors the client in turn,
so quitting, Ctrl-C or ``kill -9`` are all announced to the others as "NICK (quits, ...)".

Lines from the server are printed as they are; the client's own status lines start with "* ".
With ``AEMP_DEMO_SEED``/``AEMP_DEMO_SECRET`` set it uses that seed and secret.
"""

import os
import sys

import gevent
from gevent.fileobject import FileObjectPosix

from aemp_green import configure, db_mon, kil, mon, port, rcv, snd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _demo_env import demo_config  # noqa: E402

nick = sys.argv[1] if len(sys.argv) > 1 else "anon%d" % os.getpid()
configure(**demo_config(nodeid="chat_client/%u"))


def say(text):
    print(text, flush=True)


client = port()
rcv(client, "line", say)

servers = []  # server ports in the family, in the order we learned them
dead = set()  # servers whose monitor fired (the database may list them a moment longer)
state = {"server": None}


def connect():
    """Join the first live server we know of, unless we are joined already."""
    if state["server"] is not None:
        return
    live = [s for s in servers if s not in dead]
    if not live:
        say("* waiting for a chat server")
        return
    server = state["server"] = live[0]
    say("* connecting to server %s" % server)
    mon(server, lambda *reason: disconnected(server, reason))
    snd(server, "join", client, nick)


def disconnected(server, reason):
    dead.add(server)
    if state["server"] == server:
        state["server"] = None
        say("* disconnected from server: %s" % " ".join(map(str, reason)))
        connect()


def family_changed(db, added, changed, deleted):
    for server in added:
        if server not in servers:
            servers.append(server)
    for server in deleted:
        if server in servers:
            servers.remove(server)
    connect()


db_mon("eg_chat_server", family_changed)

# the main greenlet reads stdin cooperatively; the node runs while it waits
for raw in FileObjectPosix(sys.stdin.fileno(), "rb"):
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    if not text:
        continue
    if state["server"] is None:
        say("* not connected, not sent: %s" % text)
    else:
        snd(state["server"], "privmsg", nick, text)

say("* bye")
kil(client)  # the server's monitor on our port announces the quit
gevent.sleep(0.2)  # give the link a moment to carry the kill before the process ends
