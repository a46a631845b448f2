"""The web observer (aemp_green.observer, docs/observer.md) against a real 3-node network.

One network per module: a seed and nodes ``obs`` (with the setting ``observer``) and ``peer``,
real processes. Plain HTTP checks the token (403 without it, constant-time compare, every
path) and the JSON view; headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it,
``AEMP_CHROMIUM`` names another binary) loads the page and the test reads the DOM the page's
own JavaScript rendered: the three node names, a link, a port count. The screenshot is kept
under ``$AEMP_TEST_ARTIFACTS`` (default ``tests/artifacts/``, git-ignored).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from netutil import REPO, Cluster, RawPeer, read_until_closed

pytestmark = pytest.mark.timeout(60)

URL_RE = re.compile(r"observer: (http://[0-9.]+:(\d+)/\?token=([A-Za-z0-9_-]+))")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """``(cluster, {name: child}, url, base, token)`` for a seed, ``obs`` and ``peer``."""
    c = Cluster(tmp_path_factory.mktemp("observer"))
    try:
        seed = c.seed()
        obs_cfg = {
            "seeds": [seed.addr],
            "observer": "127.0.0.1:0",
            "observer_timeout": 1.5,
            "observer_idle_timeout": 1.5,
        }
        obs, peer = c.start(("obs", obs_cfg), ("peer", {"seeds": [seed.addr]}))
        obs.wait_log(URL_RE.search, timeout=10, what="the observer's URL line")
        m = URL_RE.search(obs.log_text())
        assert m is not None
        url, port, token = m.group(1), int(m.group(2)), m.group(3)
        # the same URL from the API, and the network formed (obs and peer both reach the seed)
        assert obs.ask("aemp_green.observer.url()") == url
        for child in (obs, peer):
            child.run("wait_for(lambda: 'seed' in up_nodes(), 10, 'the seed')", timeout=15)
        yield c, {"seed": seed, "obs": obs, "peer": peer}, url, "http://127.0.0.1:%d" % port, token
    finally:
        c.stop_all()
        print(c.report())


def _get(url, headers=None, timeout=10):
    """``(status, headers, body)`` of a GET, errors included."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _view(base, token, pred=None, timeout=15):
    """The JSON network view, polled (bounded) until ``pred(view)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = _get(base + "/api/network?token=" + token)
        assert status == 200, body[:500]
        view = json.loads(body)
        if pred is None or pred(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError("view never satisfied the condition: %r" % (view,))
        time.sleep(0.2)


# ------------------------------------------------------------------------------ plain HTTP


def test_every_path_needs_the_token(net):
    _, _, _, base, token = net
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    for path in ("/", "/index.html", "/observer.js", "/observer.css", "/api/network", "/nope"):
        for q in ("", "?token=", "?token=" + wrong, "?token=" + token[:-1], "?tok=" + token):
            status, _, body = _get(base + path + q)
            assert status == 403, (path, q, status, body[:200])
            assert token.encode() not in body
    # with it: the page (which passes the token on to its script and style), the API
    status, headers, body = _get(base + "/?token=" + token)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"observer.js?token=" + token.encode() in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"
    for path in ("/observer.js", "/observer.css"):
        assert _get(base + path + "?token=" + token)[0] == 200
    assert _get(base + "/nope?token=" + token)[0] == 404
    # a header works as well as the query
    status, _, _ = _get(base + "/api/network", {"Authorization": "Bearer " + token})
    assert status == 200
    assert _get(base + "/api/network", {"Authorization": "Bearer " + wrong})[0] == 403


def test_json_view_holds_the_three_nodes_and_their_links(net):
    _, nodes, _, base, token = net
    names = {"seed", "obs", "peer"}
    view = _view(
        base,
        token,
        lambda v: names <= {n["id"] for n in v["nodes"] if n["status"] == "ok"},
    )
    assert view["observer"] == "obs"
    assert view["nodes"][0]["id"] == "obs"  # the observing node first
    by_id = {n["id"]: n for n in view["nodes"]}
    for name in names:
        info = by_id[name]["node"]
        assert info["node"] == name
        assert isinstance(info["ports"], int) and info["ports"] >= 0
        assert isinstance(by_id[name]["ports"], list)
        assert set(info["rates"]) >= {"msgs_in", "msgs_out", "msgs_local"}
    assert by_id["seed"]["node"]["is_global"] is True
    links = {tuple(link) for link in view["links"]}
    assert ("obs", "seed") in links and ("peer", "seed") in links
    # a port that handles messages shows among the node's busiest ports
    nodes["peer"].run(
        """
        busy = port(lambda *m: None)
        for i in range(50):
            snd(busy, "x", i)
        wait_for(lambda: True)
        """
    )
    view = _view(
        base,
        token,
        lambda v: any(
            p["handled"] >= 50 for n in v["nodes"] if n["id"] == "peer" for p in n["ports"] or ()
        ),
    )


def test_a_node_that_does_not_answer_is_shown_as_such(net):
    """A raw AEMP peer links to the observing node but never answers requests: the view
    marks it ``no answer`` within the timeout, and the others still show."""
    _, nodes, _, base, token = net
    peer = RawPeer(nodes["obs"].addr, nodeid="silent")
    try:
        peer.handshake()
        t0 = time.monotonic()
        view = _view(
            base,
            token,
            lambda v: any(n["id"] == "silent" and n["status"] == "no answer" for n in v["nodes"]),
        )
        assert time.monotonic() - t0 < 12
        by_id = {n["id"]: n for n in view["nodes"]}
        assert by_id["silent"]["error"] and by_id["silent"]["node"] is None
        assert by_id["seed"]["status"] == "ok"
        assert ["obs", "silent"] in view["links"]
        assert nodes["obs"].alive
    finally:
        peer.close()


def test_stalled_and_malformed_clients_are_dropped_with_one_line(net):
    """A client that sends half a request and stalls is dropped after observer_idle_timeout
    (it would hold a slot of observer_max_clients for ever); a malformed request (too many
    headers) gets 400 and one log line, no traceback; the page keeps being served."""
    _, nodes, _, base, token = net
    port = int(base.rsplit(":", 1)[1])
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.sendall(b"GET /api/network?token=" + token.encode() + b" HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as bad:
        bad.sendall(b"GET / HTTP/1.1\r\n" + b"X-Junk: \x01\x02\r\n" * 200 + b"\r\n")
        closed, data = read_until_closed(bad)
        assert closed and data.startswith(b"HTTP/1.1 400 "), data[:200]
    assert read_until_closed(stalled, timeout=10) == (True, b"")  # closed, nothing answered
    assert time.monotonic() - t0 < 8
    stalled.close()
    assert _get(base + "/api/network?token=" + token)[0] == 200
    log = nodes["obs"].wait_log("observer: bad request from 127.0.0.1", timeout=5)
    assert "Traceback" not in log and "\x01" not in log.split("observer: bad request")[1][:300]


def test_observer_that_cannot_listen_leaves_the_node_running(cluster):
    """The observer's address is taken: one line says so, the node runs on."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        addr = "127.0.0.1:%d" % taken.getsockname()[1]
        node = cluster.node("lonely", observer=addr)
        node.wait_log("observer: cannot listen on %s" % addr, timeout=5)
        assert node.ask("aemp_green.observer.url()") is None
        assert node.ask("NODE()") == "lonely"
    finally:
        taken.close()


def test_secure_node_refusal_shows_as_refused(cluster):
    """A secure node without allow_introspection refuses the observer: shown as 'refused'."""
    seed = cluster.seed(secure=True)
    obs = cluster.node("obs", seeds=[seed.addr], observer="127.0.0.1:0")
    m = URL_RE.search(obs.wait_log(URL_RE.search, timeout=10, what="the observer's URL line"))
    base, token = "http://127.0.0.1:%s" % m.group(2), m.group(3)
    view = _view(
        base, token, lambda v: any(n["id"] == "seed" and n["status"] != "ok" for n in v["nodes"])
    )
    (seed_entry,) = [n for n in view["nodes"] if n["id"] == "seed"]
    assert seed_entry["status"] == "refused", seed_entry
    assert "allow_introspection" in seed_entry["error"]


def test_bad_observer_setting_is_refused():
    from aemp_green import ConfigError, config

    assert config.validate({"observer": "127.0.0.1:0"})["observer"] == "127.0.0.1:0"
    for bad in ("127.0.0.1:http", "[::1", 5.5, ["x"]):
        with pytest.raises(ConfigError, match="observer"):
            config.validate({"observer": bad})


# ------------------------------------------------------------------------------ the browser


def _chromium():
    exe = os.environ.get("AEMP_CHROMIUM")
    if exe:
        return shutil.which(exe)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _artifacts():
    d = Path(os.environ.get("AEMP_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _headless(exe, url, screenshot, profile, budget_ms):
    args = [
        exe,
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--user-data-dir=%s" % profile,
        "--window-size=1280,900",
        # the page polls: let its first fetch and render run, in virtual time, then dump
        "--virtual-time-budget=%d" % budget_ms,
        "--screenshot=%s" % screenshot,
        "--dump-dom",
        url,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
    return subprocess.run(args, capture_output=True, text=True, timeout=20)


def test_page_renders_the_network_in_headless_chromium(net):
    _, nodes, url, base, token = net
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does it as root)")
    # peer holds a port; the three nodes answered (the page shows what the observer gathers)
    nodes["peer"].run("kept = port(lambda *m: None)")
    _view(
        base,
        token,
        lambda v: (
            {"seed", "obs", "peer"} <= {n["id"] for n in v["nodes"] if n["status"] == "ok"}
            and any(n["id"] == "peer" and n["node"]["ports"] >= 1 for n in v["nodes"])
        ),
    )
    shot = _artifacts() / "observer.png"
    if shot.exists():
        shot.unlink()
    dom = ""
    with tempfile.TemporaryDirectory(prefix="aemp-chromium-") as profile:
        for budget in (5000, 15000):  # a slow machine gets one more, longer, try
            proc = _headless(exe, url, shot, profile, budget)
            if proc.returncode != 0 and not proc.stdout.strip():
                # the browser itself did not start (a page's failure still dumps its DOM)
                pytest.skip("chromium cannot run headless here: %s" % proc.stderr[-300:])
            dom = proc.stdout
            if 'data-rendered="' in dom:
                break
    assert 'data-rendered="' in dom, "the page never rendered a view:\n%s\n%s" % (
        dom[-2000:],
        proc.stderr[-2000:],
    )
    # the three node names, drawn as nodes of the graph that answered
    for name in ("seed", "obs", "peer"):
        assert re.search(r'<g class="node ok[^"]*" data-node="%s"' % name, dom), name
        assert ">%s</text>" % name in dom
    # at least one link, between two of them
    links = re.findall(r'<line class="link"[^>]*data-a="([^"]+)" data-b="([^"]+)"', dom)
    assert links and all(set(pair) <= {"seed", "obs", "peer", "silent"} for pair in links), links
    assert ("obs", "seed") in links
    # a port count for each node; peer's counts the port it holds
    counts = {
        name: int(n)
        for name, n in re.findall(
            r'data-node="([^"]+)"[^>]*>(?:(?!</g>).)*>(\d+) ports?</text></g>', dom, re.S
        )
    }
    assert set(counts) >= {"seed", "obs", "peer"}, counts
    assert counts["peer"] >= 1, counts
    assert "seen from obs" in dom
    # the screenshot is a PNG of some substance, kept as an artifact
    assert shot.exists(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
