"""The AEMP introduction's receiver: registers a port in the family ``eg_receivers``.

Run:  python examples/eg_receiver.py        (needs a seed, see examples/seed.py)

Every ``test`` message is printed; the sender watches the family with ``db_mon`` and finds us.
"""

import sys

from aemp_green import NODE, configure, db_set, port, rcv, run_forever

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _demo_env import demo_config  # noqa: E402

configure(**demo_config(nodeid="eg_receiver/%u"))

p = port()
db_set("eg_receivers", p)


def on_test(data, *reply):
    print("receiver %s: received data: %s" % (NODE(), data), flush=True)


rcv(p, "test", on_test)
print("receiver: port %s registered in eg_receivers" % p, flush=True)
run_forever()  # until Ctrl-C or SIGTERM, then a clean shutdown
