"""Shared by the example scripts: configure() arguments from the environment the demo sets.

``examples/demo.py`` starts every node with ``AEMP_DEMO_SEED`` (the seed's address) and
``AEMP_DEMO_SECRET``; without them the examples use your rc file (``aemp`` profiles), as AEMP's
examples do.
"""

import os


def demo_config(**kv):
    """configure() keyword arguments: ``kv`` plus the demo's seed and secret when set."""
    seed = os.environ.get("AEMP_DEMO_SEED")
    secret = os.environ.get("AEMP_DEMO_SECRET")
    if seed:
        kv.setdefault("seeds", [seed])
        kv.setdefault("binds", ["127.0.0.1:*"])
    if secret:
        kv["secret"] = secret
        kv["norc"] = True
    return kv
