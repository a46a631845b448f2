"""The ``aemp`` command: configure profiles, run nodes, talk to the network.

(Being built: see issue 5. For now ``aemp --version`` works.)
"""

import sys

from ._version import __version__

__all__ = ["main"]


def main(argv=None):
    """Run the ``aemp`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Example::

        main(["--version"])
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        print("aemp_green", __version__)
        return 0
    print("aemp: subcommands are not implemented yet", file=sys.stderr)
    return 2
