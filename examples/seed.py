"""A seed node: the meeting point of the network (it becomes a global node and keeps the database).

Run:  python examples/seed.py 127.0.0.1:4040
(with a secret in your rc file, e.g. ``aemp gensecret``; examples/demo.py passes one itself)
"""

import sys

from aemp_green import NODE, configure, mon_nodes, run_forever

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _demo_env import demo_config  # noqa: E402

addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4040"
configure(**demo_config(nodeid="seed", binds=[addr], seeds=[addr]))
print("seed: %s listening on %s" % (NODE(), addr), flush=True)
mon_nodes(
    lambda node, up, *why: print(
        "seed: node %s %s %s" % (node, "up" if up else "down", " ".join(map(str, why))), flush=True
    )
)
run_forever()  # until Ctrl-C or SIGTERM, then a clean shutdown
