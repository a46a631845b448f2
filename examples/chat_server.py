"""AEMP's resilient chat server (eg/chat_server), in Python.

Run:  python examples/seed.py 127.0.0.1:4040 &        (or any seed from your rc file)
      python examples/chat_server.py
      python examples/chat_client.py alice              (as many clients as you like)

The server is one callback port registered in the database family ``eg_chat_server``. A client
sends ``join, <client port>, <nick>`` and then ``privmsg, <nick>, <text>``; the server relays
every line to every joined client. It monitors each client port, so a client that quits, is
killed or loses its network announces itself ("<nick> (quits, <reason>)") without saying
anything. Kill the server and start it again: the clients notice (their monitor on the server
fires), wait for the new server to appear in the family and join it again.

With ``AEMP_DEMO_SEED``/``AEMP_DEMO_SECRET`` set (as examples/demo.py and the tests do) it uses
that seed and secret instead of your rc file.
"""

import os
import sys

from aemp_green import NODE, configure, db_set, mon, port, rcv, run_forever, snd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _demo_env import demo_config  # noqa: E402

configure(**demo_config(nodeid="chat_server/%u"))

clients = {}  # client port -> nick


def relay(line):
    print("relaying: %s" % line, flush=True)
    for client in list(clients):
        snd(client, "line", line)


def on_join(client, nick, *_):
    if client in clients:
        return
    clients[client] = nick

    def quits(*reason):
        clients.pop(client, None)
        relay("%s (quits, %s)" % (nick, " ".join(map(str, reason)) or "normally"))

    mon(client, quits)
    relay("%s (joins)" % nick)


def on_privmsg(nick, text, *_):
    relay("%s: %s" % (nick, text))


server = port()
rcv(server, "join", on_join, "privmsg", on_privmsg)
db_set("eg_chat_server", server)
print("server ready: %s on node %s" % (server, NODE()), flush=True)
run_forever()  # until Ctrl-C or SIGTERM, then a clean shutdown
