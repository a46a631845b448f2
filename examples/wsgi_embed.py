"""A node embedded in an existing gevent server: a gevent.pywsgi app and a plain StreamServer.

Run:  python examples/wsgi_embed.py [HTTP_PORT [TCP_PORT]]     (needs a seed; 0 = any port)
then  curl 'http://127.0.0.1:8000/upper?text=hello'
      curl 'http://127.0.0.1:8000/stats'
      printf 'hello\\n' | nc 127.0.0.1 8001

The process is an ordinary gevent server program: the main greenlet runs
``WSGIServer.serve_forever()`` and a ``StreamServer`` (a line protocol) runs beside it.
The node is configured first and then just lives on the same hub: ``configure()`` returns at
once, its listeners, links and timers are watchers of the server's own gevent loop, and it
never takes the main greenlet. Request handlers are greenlets, so they use the blocking API
(``call``) directly and each request blocks only itself.

* ``GET /upper?text=...`` calls a worker from the family ``wsgi_upper`` (round robin) with
  ``call(worker, "upper", text)`` and returns ``{"result": ..., "node": ...}``. The app starts
  one worker itself; any node can add more (a port that answers ``["upper", text, reply]``
  with ``[TEXT, its node]``).
* ``GET /stats`` returns this node's ID, the workers it knows and how many ``note`` messages
  arrived at the port it registered in ``wsgi_notes`` (other nodes may send there freely).
* The TCP server answers each line ``text`` with ``TEXT node`` through the same workers.

With ``AEMP_DEMO_SEED``/``AEMP_DEMO_SECRET`` set it uses that seed and secret.
"""

import json
import os
import sys
from itertools import count
from urllib.parse import parse_qs

from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from aemp_green import (
    NODE,
    Timeout,
    PortDied,
    call,
    configure,
    db_mon,
    db_reg,
    db_set,
    port,
    rcv,
    receive,
    snd,
    spawn,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _demo_env import demo_config  # noqa: E402

UPPER = "wsgi_upper"
NOTES = "wsgi_notes"

workers = []  # the family's ports, in the order we learned them
stats = {"notes": 0}
_turn = count()


def upper_worker():
    """The app's own worker (a greenlet port): registered in the family while it lives."""
    db_reg(UPPER)
    while True:
        text, reply = receive("upper")
        snd(reply, text.upper(), NODE())


def watch_workers(db, added, changed, deleted):
    workers.extend(w for w in added if w not in workers)
    for w in deleted:
        if w in workers:
            workers.remove(w)


def upper(text):
    """Ask the next worker; returns ``(result, node)``. Blocks only the calling greenlet."""
    if not workers:
        raise LookupError("no worker in %s yet" % UPPER)
    worker = workers[next(_turn) % len(workers)]
    result, by = call(worker, "upper", text, timeout=5)
    return result, by


def app(environ, start_response):
    """The WSGI application."""
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    status, body = "200 OK", None
    if path == "/upper":
        try:
            result, by = upper(query.get("text", [""])[0])
            body = {"result": result, "node": by}
        except (LookupError, Timeout, PortDied) as exc:
            status, body = "503 Service Unavailable", {"error": str(exc)}
    elif path == "/stats":
        body = {"node": NODE(), "notes": stats["notes"], "workers": list(workers)}
    else:
        status, body = "404 Not Found", {"error": "no such path: %s" % path}
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def line_server(sock, address):
    """The StreamServer application: ``text`` -> ``TEXT node``, one line at a time."""
    with sock, sock.makefile("rwb") as f:
        for line in f:
            try:
                result, by = upper(line.decode("utf-8", "replace").strip())
                f.write(("%s %s\n" % (result, by)).encode())
            except (LookupError, Timeout, PortDied) as exc:
                f.write(("error %s\n" % exc).encode())
            f.flush()


def count_note(*_):
    stats["notes"] += 1


def main(argv):
    http_port = int(argv[1]) if len(argv) > 1 else 8000
    tcp_port = int(argv[2]) if len(argv) > 2 else (http_port + 1 if http_port else 0)

    configure(**demo_config(nodeid="wsgi/%u"))  # returns at once; the node lives on the hub
    spawn(upper_worker)
    db_mon(UPPER, watch_workers)
    notes = port()
    rcv(notes, "note", count_note)
    db_set(NOTES, notes)

    tcp = StreamServer(("127.0.0.1", tcp_port), line_server)
    tcp.start()  # in the background, on the same hub
    http = WSGIServer(("127.0.0.1", http_port), app, log=None)
    http.init_socket()
    print(
        "wsgi_embed: node %s: http://127.0.0.1:%d/ tcp 127.0.0.1:%d notes port %s"
        % (NODE(), http.server_port, tcp.server_port, notes),
        flush=True,
    )
    http.serve_forever()  # the application keeps the main greenlet


if __name__ == "__main__":
    main(sys.argv)
