"""Embedding: a node inside an existing gevent server (gevent.pywsgi, a plain StreamServer).

The first two tests run the servers in the pytest process itself, on its main hub, with local
ports only (this process never configures a network node); the HTTP and TCP clients are plain
blocking code in real OS threads (gevent's threadpool), as outside clients would be. The last
test runs examples/wsgi_embed.py as a networked node and talks to it with urllib.
"""

import json
import re
import socket
import urllib.error
import urllib.request

import gevent
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer
from greenlet import getcurrent

from aemp_green import _hub, call, kil, port, rcv, receive, snd, spawn
from conftest import wait_until


def _upper_worker():
    while True:
        text, reply = receive("upper")
        snd(reply, text.upper())


def _http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def _in_thread(fn, *args):
    """Run blocking ``fn(*args)`` in a real OS thread; the hub (and the server) keep running."""
    return gevent.get_hub().threadpool.spawn(fn, *args)


def test_pywsgi_app_uses_ports_without_taking_over_the_hub():
    """An HTTP endpoint that sends to a port and returns the call reply, served by
    gevent.pywsgi on the main hub, while other messages flow; the node's kernel uses the
    server's hub and the main greenlet stays the test's."""
    main = getcurrent()
    worker = spawn(_upper_worker)
    seen = []
    notes = port()
    rcv(notes, "seen", seen.append)
    flow = {"n": 0}

    def flood():  # messages flowing all the time the server works
        while True:
            snd(notes, "seen", "tick")
            flow["n"] += 1
            gevent.sleep(0.001)

    def app(environ, start_response):
        text = environ["QUERY_STRING"]
        snd(notes, "seen", text)
        result = call(worker, "upper", text, timeout=5)[0]
        body = json.dumps({"result": result}).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    flooder = gevent.spawn(flood)
    try:
        url = "http://127.0.0.1:%d/?" % server.server_port
        jobs = [_in_thread(_http_get, url + "text%d" % i) for i in range(10)]
        answers = [j.get(timeout=20) for j in jobs]
    finally:
        flooder.kill()
        server.stop()
        kil(worker)
    assert answers == [(200, {"result": "TEXT%d" % i}) for i in range(10)]
    assert {"text%d" % i for i in range(10)} <= set(seen)
    assert flow["n"] > 0 and seen.count("tick") == flow["n"]
    assert _hub.bound_hub() is gevent.get_hub()
    assert getcurrent() is main


def test_streamserver_app_shares_the_process_with_ports():
    """A plain StreamServer line protocol whose handler greenlets call a port; blocking socket
    clients in OS threads get their answers."""
    worker = spawn(_upper_worker)

    def handle(sock, addr):
        with sock, sock.makefile("rwb") as f:
            for line in f:
                f.write(call(worker, "upper", line.decode().strip(), timeout=5)[0].encode() + b"\n")
                f.flush()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()

    def client(i):
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as s:
            f = s.makefile("rwb")
            out = []
            for j in range(3):
                f.write(b"line %d.%d\n" % (i, j))
                f.flush()
                out.append(f.readline().decode().strip())
            return out

    try:
        answers = [j.get(timeout=20) for j in [_in_thread(client, i) for i in range(5)]]
    finally:
        server.stop()
        kil(worker)
    assert answers == [["LINE %d.%d" % (i, j) for j in range(3)] for i in range(5)]


def test_wsgi_embed_example_serves_http_and_tcp_while_messages_flow(examples, cluster):
    """examples/wsgi_embed.py: pywsgi in the main greenlet, a StreamServer beside it, the node
    on the same hub. urllib requests get replies computed by workers on both nodes (round
    robin over the family), the TCP line server answers too, and notes flooded by another node
    keep arriving between requests."""
    examples.seed()
    web = examples.start("web", "wsgi_embed.py", "0")
    m = web.expect(r"node (\S+): http://127\.0\.0\.1:(\d+)/ tcp 127\.0\.0\.1:(\d+)", 20)
    web_node, http_port, tcp_port = m.group(1), int(m.group(2)), int(m.group(3))
    base = "http://127.0.0.1:%d" % http_port

    probe = cluster.node("probe", **examples.probe_config())
    probe.exec("""
        notes = wait_for(lambda: db_keys("wsgi_notes", timeout=5), 20, "wsgi_notes")[0]
        w = port(lambda tag, text, reply: snd(reply, text.upper(), NODE()))
        db_set("wsgi_upper", w)
        def flood():
            i = 0
            while True:
                snd(notes, "note", i)
                i += 1
                gevent.sleep(0.002)
        gevent.spawn(flood)
        emit("flooding")
    """)
    probe.expect("flooding", 30)

    status, stats = wait_until(
        lambda: _pick(_http_get(base + "/stats"), lambda r: len(r[1]["workers"]) == 2),
        20,
        "the probe's worker to show up in /stats",
    )
    assert status == 200 and stats["node"] == web_node, stats

    answers = [_http_get(base + "/upper?text=hello%20" + str(i)) for i in range(4)]
    assert [a[1]["result"] for a in answers] == ["HELLO %d" % i for i in range(4)]
    assert {a[1]["node"] for a in answers} == {web_node, "probe"}

    first = stats["notes"]
    wait_until(
        lambda: _http_get(base + "/stats")[1]["notes"] > first + 20,
        10,
        "notes to keep flowing between HTTP requests",
    )

    with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as s:
        f = s.makefile("rwb")
        replies = []
        for i in range(2):
            f.write(b"over tcp %d\n" % i)
            f.flush()
            replies.append(f.readline().decode().strip())
    assert [re.sub(r" \S+$", "", r) for r in replies] == ["OVER TCP 0", "OVER TCP 1"]
    assert {r.rsplit(" ", 1)[1] for r in replies} <= {web_node, "probe"}

    status, missing = _http_get_error(base + "/nope")
    assert status == 404 and "no such path" in missing["error"]


def _pick(value, pred):
    return value if pred(value) else None


def _http_get_error(url):
    try:
        return _http_get(url)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
