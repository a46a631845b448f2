"""An asyncio HTTP server that answers each request by calling ports on other nodes.

Run:  python examples/seed.py 127.0.0.1:4040 &          (or any seed from your rc file)
      python examples/aio_http.py worker &              (start one or more, on any hosts)
      python examples/aio_http.py server 8080           (0 = any free port)
then  curl 'http://127.0.0.1:8080/upper?text=hello'
      curl 'http://127.0.0.1:8080/add?a=1&b=2'
      curl 'http://127.0.0.1:8080/upper_all?text=hello'
      curl 'http://127.0.0.1:8080/workers'

``worker`` is an ordinary gevent node: one callback port that answers ``["upper", text,
reply]`` with ``[TEXT, its node]`` and ``["add", a, b, reply]`` with ``[a + b, its node]``,
registered in the family ``aio_http_workers``.

``server`` is an asyncio program: a plain ``asyncio.start_server`` HTTP/1.1 server (no web
framework, nothing monkey-patched), with the node in its own hub thread through
``aemp_green.aio``. It watches the family with ``db_mon`` (the callback runs in the event loop)
and answers

* ``GET /upper?text=...`` and ``GET /add?a=..&b=..`` by ``await node.call(worker, ...)`` on the
  next worker (round robin): ``{"result": ..., "node": ...}``;
* ``GET /upper_all?text=...`` by calling every worker at once (``asyncio.gather``):
  ``{"results": [[TEXT, node], ...]}``;
* ``GET /workers``: this node's ID and the workers it knows.

A worker that is gone (killed, its node down) makes its call fail with ``PortDied`` or
``Timeout``; the server answers 503 and the next request goes to another worker (the family
forgets the dead one by itself). SIGINT or SIGTERM shuts the server and the node down cleanly.
With ``AEMP_DEMO_SEED``/``AEMP_DEMO_SECRET`` set it uses that seed and secret.
"""

import asyncio
import json
import os
import signal
import sys
from itertools import count
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _demo_env import demo_config  # noqa: E402

FAMILY = "aio_http_workers"
CALL_TIMEOUT = 5


# --------------------------------------------------------------------------- the worker node


def worker():
    """A plain gevent node serving "upper" and "add"; runs until Ctrl-C or SIGTERM."""
    from aemp_green import NODE, configure, db_set, port, rcv, run_forever, snd

    configure(**demo_config(nodeid="aio_worker/%u"))
    p = port()
    rcv(
        p,
        "upper",
        lambda text, reply: snd(reply, str(text).upper(), NODE()),
        "add",
        lambda a, b, reply: snd(reply, a + b, NODE()),
    )
    db_set(FAMILY, p)
    print("aio_http worker %s: ready, port %s" % (NODE(), p), flush=True)
    run_forever()


# --------------------------------------------------------------------------- the asyncio server


class App:
    """The HTTP side: the workers we know and the request handlers."""

    def __init__(self, node):
        self.node = node
        self.workers = []  # the family's ports, in the order we learned them
        self._turn = count()

    def workers_changed(self, db, added, changed, deleted):
        """db_mon callback: runs in the event loop's thread, like any asyncio callback."""
        self.workers.extend(w for w in added if w not in self.workers)
        for w in deleted:
            if w in self.workers:
                self.workers.remove(w)

    def next_worker(self):
        if not self.workers:
            raise LookupError("no worker in %s yet" % FAMILY)
        return self.workers[next(self._turn) % len(self.workers)]

    async def handle(self, path, query):
        """(status, body) for one GET request."""
        from aemp_green import PortDied, Timeout

        arg = lambda name, default="": query.get(name, [default])[0]  # noqa: E731
        try:
            if path == "/upper":
                result, by = await self.node.call(
                    self.next_worker(), "upper", arg("text"), timeout=CALL_TIMEOUT
                )
                return 200, {"result": result, "node": by}
            if path == "/add":
                a, b = int(arg("a", "0")), int(arg("b", "0"))
                result, by = await self.node.call(
                    self.next_worker(), "add", a, b, timeout=CALL_TIMEOUT
                )
                return 200, {"result": result, "node": by}
            if path == "/upper_all":
                calls = [
                    self.node.call(w, "upper", arg("text"), timeout=CALL_TIMEOUT)
                    for w in list(self.workers)
                ]
                return 200, {"results": await asyncio.gather(*calls)}
            if path == "/workers":
                return 200, {"node": self.node.id, "workers": list(self.workers)}
        except (LookupError, Timeout, PortDied) as exc:
            return 503, {"error": "%s: %s" % (type(exc).__name__, exc)}
        except ValueError as exc:
            return 400, {"error": str(exc)}
        return 404, {"error": "no such path: %s" % path}

    async def serve_client(self, reader, writer):
        """One HTTP/1.1 request per connection (``Connection: close``)."""
        try:
            request = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed here
            parts = request.decode("latin-1").split()
            if len(parts) != 3 or parts[0] != "GET":
                status, body = 405, {"error": "GET only"}
            else:
                url = urlsplit(parts[1])
                status, body = await self.handle(url.path, parse_qs(url.query))
            data = json.dumps(body).encode()
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (status, reason.encode(), len(data), data)
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def server(http_port):
    from aemp_green import aio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with aio.start(**demo_config(nodeid="aio_http/%u")) as node:
        app = App(node)
        await node.db_mon(FAMILY, app.workers_changed)
        srv = await asyncio.start_server(app.serve_client, "127.0.0.1", http_port)
        port = srv.sockets[0].getsockname()[1]
        print("aio_http: node %s: http://127.0.0.1:%d/" % (node.id, port), flush=True)
        async with srv:
            await stop.wait()
    print("aio_http: shut down", flush=True)


def main(argv):
    if len(argv) > 1 and argv[1] == "worker":
        worker()
    elif len(argv) > 1 and argv[1] == "server":
        asyncio.run(server(int(argv[2]) if len(argv) > 2 else 8080))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
