"""globaldb: the shared database of AEMP (global nodes, ``db_set`` ... ``db_mon``).

Two layers, one way:

* ``store``: the replicated database of a global node as plain data: entries per source node,
  write stamps and the merge rule (which write wins), what a node joining or leaving changes,
  the change sets watchers get, validation against the ``db_*`` limits, and the cutting of
  large databases and answers into frames of bounded size. No I/O: tests drive it with dicts.
* ``sync``: the messages that drive the store (the ``g_*`` node requests between a node, its
  master and the other global nodes), this node's role (master, seeds, pending requests,
  watchers) and the public ``db_*`` functions.

``runtime`` wires it to the layers below: it installs ``sync`` as the node layer's directory
(``node.set_directory(globaldb.sync)``: the node layer asks it where nodes live and tells it
about nodes coming and going) and calls ``configured``, ``become_global`` and ``seed_up``.

Example::

    from aemp_green.globaldb import db_set, db_family
    db_set("workers", SELF(), {"load": 0})
    db_family("workers", timeout=5)
"""

from . import sync as sync  # the directory runtime installs in node
from .sync import (
    become_global,
    configured,
    db_del,
    db_family,
    db_keys,
    db_mon,
    db_reg,
    db_set,
    db_values,
    family_sizes,
    global_nodes,
    is_global,
    master,
    seed_up,
)

__all__ = [
    "db_set",
    "db_del",
    "db_reg",
    "db_family",
    "db_keys",
    "db_values",
    "db_mon",
    "is_global",
    "master",
    "global_nodes",
    "family_sizes",
    # for runtime
    "configured",
    "become_global",
    "seed_up",
]
