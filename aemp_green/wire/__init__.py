"""Sans-IO protocol code: the AEMP handshake and the json/cbor framings.

Nothing here touches a socket, a greenlet or a clock: each module turns bytes into values and
values into bytes, so tests drive it with recorded traffic (``tests/test_handshake.py``,
``tests/test_framing.py``, ``tests/test_interop_replay.py``). ``transport`` does the I/O.
"""
