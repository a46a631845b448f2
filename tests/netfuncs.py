"""Functions that child nodes run by name (remote ``spawn``, ``snd_to_func``, ``services``).

Children have ``tests/`` on ``sys.path``, so ``spawn(node, "netfuncs.echo_server")`` or the AEMP
spelling ``spawn(node, "netfuncs::echo_server")`` finds them.
"""

from aemp_green import SELF, rcv, receive, snd

#: every call of ``record`` as (args) - read by snippets on the node that ran it
recorded = []


def echo_server():
    """Greenlet-style server: answers ``[tag, *args, reply]`` with ``snd(reply, tag, *args)``."""
    while True:
        msg = receive()
        tag, args = msg[0], msg[1:]
        if tag == "stop":
            return
        snd(args[-1], tag, *args[:-1])


def perl_style_counter(start=0):
    """AEMP-style spawned function: installs handlers on ``SELF`` and returns at once.

    ``["inc", n, reply]`` adds ``n`` and answers ``["count", total]``; the port keeps serving
    after the function returned (as a Perl ``rcv $SELF, ...`` port does).
    """
    state = {"total": start}

    def inc(n, reply):
        state["total"] += n
        snd(reply, "count", state["total"])

    rcv(SELF(), "inc", inc)


def record(reply, *args):
    """Target of ``snd_to_func``: remember the call and tell ``reply``."""
    recorded.append(args)
    snd(reply, "recorded", *args)


def whoami(reply):
    """Spawned: tells ``reply`` its own port id (SELF) and ends."""
    snd(reply, "iam", SELF())
