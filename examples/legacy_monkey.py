"""A legacy blocking program (threads, time.sleep, a blocking socket client) joined to AEMP with monkey.

Run:  python examples/legacy_monkey.py             (needs a seed, see examples/seed.py)

Everything below the first line is ordinary thread-and-blocking-I/O code: a thread runs a
blocking TCP server that upper-cases lines, a worker thread takes jobs from a ``queue.Queue``,
pretends to work with ``time.sleep`` and asks the TCP server with a blocking socket client, a
ticker thread sleeps and sends ``tick`` messages, and the main thread sleeps in a loop. The
first statement, ``monkey.patch_all()``, makes all of it cooperative, so the node keeps
answering while every one of those threads "blocks" (``requests``, ``urllib``, ``subprocess``
behave the same way).

Its node registers one port in the family ``legacy_service``; other nodes can send it::

    ["upper", text, reply_port]   -> the worker thread replies ["upper", TEXT] (via TCP!)
    ["subscribe", port]           -> the ticker sends ["tick", n, unix_time] every 0.2 s

Try it with the ``aemp`` command (docs/cli.md), which appends the reply port itself::

    aemp db legacy_service                        # find the port
    aemp cal 'legacy/Xy12AbCdEf#AbC1' upper 'hello world'     # -> ["upper","HELLO WORLD"]

With ``AEMP_DEMO_SEED``/``AEMP_DEMO_SECRET`` set it uses that seed and secret.
"""

from aemp_green import monkey

monkey.patch_all()  # noqa: E702 - must come first

import os  # noqa: E402
import queue  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from aemp_green import NODE, configure, db_set, port, rcv, snd  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _demo_env import demo_config  # noqa: E402


# --------------------------------------------------------------- plain blocking code


def serve_upper(listener):
    """A blocking accept loop; one thread per connection."""
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=upper_connection, args=(conn,), daemon=True).start()


def upper_connection(conn):
    with conn, conn.makefile("rwb") as f:
        for line in f:
            f.write(line.upper())
            f.flush()


def ask_upper(addr, text):
    """A blocking socket client: one line out, one line back."""
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(text.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().rstrip("\n")


jobs = queue.Queue()
subscribers = []


def job_worker(addr):
    while True:
        text, reply = jobs.get()
        time.sleep(0.05)  # "work"
        snd(reply, "upper", ask_upper(addr, text))


def ticker():
    n = 0
    while True:
        time.sleep(0.2)
        n += 1
        for sub in list(subscribers):
            snd(sub, "tick", n, time.time())


# --------------------------------------------------------------- the node


def main():
    configure(**demo_config(nodeid="legacy/%u"))

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    addr = listener.getsockname()
    threads = [
        threading.Thread(target=serve_upper, args=(listener,), daemon=True),
        threading.Thread(target=job_worker, args=(addr,), daemon=True),
        threading.Thread(target=job_worker, args=(addr,), daemon=True),
        threading.Thread(target=ticker, daemon=True),
    ]
    for t in threads:
        t.start()

    service = port()
    rcv(
        service,
        "upper",
        lambda text, reply: jobs.put((text, reply)),
        "subscribe",
        lambda sub: subscribers.append(sub),
    )
    db_set("legacy_service", service)
    print(
        "legacy: node %s, port %s in legacy_service, tcp upper server on %s:%d, "
        "%d threads" % (NODE(), service, addr[0], addr[1], len(threads)),
        flush=True,
    )

    last = None
    while True:  # the main thread "blocks" too
        time.sleep(0.5)
        state = (jobs.qsize(), len(subscribers))
        if state != last:
            print("legacy: %d jobs queued, %d subscribers" % state, flush=True)
            last = state


if __name__ == "__main__":
    main()
