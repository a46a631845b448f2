"""A scripted child node for multi-process tests: ``python -m child '<configure kwargs json>'`` (with tests/ on PYTHONPATH).

It configures itself, prints ``["ready", nodeid, binds]`` and then executes the Python snippets
it reads from stdin (one JSON object ``{"exec": code}`` per line), each in its own greenlet, with
the whole ``aemp_green`` API and ``emit(*values)`` in scope. ``emit`` prints one JSON line to
stdout; the test side (``tests/netutil.py``) waits for those lines with a deadline.
"""

import json
import logging
import os
import sys
import traceback

import gevent
from gevent.fileobject import FileObjectPosix

import aemp_green
from aemp_green import node as _node


def emit(*values):
    sys.stdout.write(json.dumps(list(values), default=repr) + "\n")
    sys.stdout.flush()


def _run(code, ns):
    try:
        exec(code, ns)
    except Exception:
        emit("error", traceback.format_exc())


def main():
    level = os.environ.get("AEMP_TEST_LOG")
    logging.basicConfig(level=getattr(logging, level) if level else logging.WARNING,
                        stream=sys.stderr,
                        format="%(asctime)s " + "%(process)d %(levelname)s %(name)s: %(message)s")
    kwargs = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    profile = kwargs.pop("profile", None)
    aemp_green.configure(profile, **kwargs)
    ns = {name: getattr(aemp_green, name) for name in aemp_green.__all__}
    ns.update(emit=emit, gevent=gevent, aemp_green=aemp_green, node=_node)
    emit("ready", aemp_green.NODE(), _node.listener_addresses())
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb")
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        if "exec" in cmd:
            gevent.spawn(_run, cmd["exec"], ns)
    # stdin closed: the test is done with us
    _node.shutdown()


if __name__ == "__main__":
    main()
