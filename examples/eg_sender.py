"""The AEMP introduction's sender: watches ``eg_receivers`` and sends each receiver ``test``.

Run:  python examples/eg_sender.py [count]  (needs a seed and a receiver)

It also monitors every receiver it finds, so it tells when one goes away.
"""

import sys
import time

import gevent

from aemp_green import configure, db_mon, mon, snd

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _demo_env import demo_config  # noqa: E402

count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
configure(**demo_config(nodeid="eg_sender/%u"))
watched = set()


def receivers_changed(family, added, changed, deleted):
    for receiver in added:
        if receiver not in watched:
            watched.add(receiver)
            mon(
                receiver,
                lambda *reason, r=receiver: print(
                    "sender: receiver %s is gone: %s" % (r, list(reason)), flush=True
                ),
            )
    for receiver in deleted:
        print("sender: receiver %s left eg_receivers" % receiver, flush=True)


db_mon("eg_receivers", receivers_changed)

for i in range(count):
    gevent.sleep(1)
    for receiver in list(watched):
        print("sender: sending test %d to %s" % (i, receiver), flush=True)
        snd(receiver, "test", "message %d at %.3f" % (i, time.time()))
gevent.wait()
