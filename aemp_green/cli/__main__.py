"""``python -m aemp_green.cli``: the ``aemp`` command (``aemp run``'s restart re-executes it).

Example::

    python -m aemp_green.cli showconfig
"""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
