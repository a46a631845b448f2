"""Tests for the ``aemp`` command (aemp_green.cli).

docs/api.md sections proven here: "The `aemp` command" (every subcommand; setX also as X; chaining;
JSON arguments), plus "Network" (the AEMP rc file shared with Perl: unknown keys kept, ``<file>~``
backup) as far as ``aemp`` writes it.

Settings subcommands run in-process through ``main()`` (they never configure a node); everything
that talks to the network runs ``python -m aemp_green.cli`` or ``bin/aemp`` in subprocesses, with
``PERL_ANYEVENT_MP_RC`` pointing at a temporary rc file. The pytest process never calls
``aemp_green.configure()``.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aemp_green import cli, config
from netutil import REPO, SECRET, ChildNode, black_hole, wait_file

# slow (docs/testing.md): real processes, ~45 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

AEMP = [sys.executable, "-m", "aemp_green.cli"]
BIN_AEMP = [sys.executable, str(REPO / "bin" / "aemp")]
INTEROP = Path(os.environ.get("AEMP_INTEROP_DIR") or Path(__file__).resolve().parent / "interop")


# ------------------------------------------------------------------------------------ helpers


def _env(rc_file, **extra):
    env = dict(os.environ)
    env["PERL_ANYEVENT_MP_RC"] = str(rc_file)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for var in ("PERL_ANYEVENT_MP_TRACE", "PERL_ANYEVENT_VERBOSE", "AE_VERBOSE"):
        env.pop(var, None)
    env.update(extra)
    return env


def aemp(rc_file, *args, timeout=20, input=None, cmd=AEMP, **env):
    """Run the aemp command in a subprocess; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        cmd + [str(a) for a in args],
        env=_env(rc_file, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        cwd=str(REPO),
    )


def aemp_bg(rc_file, *args, log=None, **env):
    """Start the aemp command in the background (stdout piped, stderr to ``log``)."""
    return subprocess.Popen(
        AEMP + [str(a) for a in args],
        env=_env(rc_file, **env),
        stdout=subprocess.PIPE,
        stderr=log or subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=str(REPO),
    )


class Lines:
    """Collect the stdout lines of a background process in a thread; wait for one."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()

    def wait(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "no matching line within %ss; got %r" % (timeout, self.lines)
                    )
                self._cv.wait(left)


def free_port():
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_listening(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("aemp run exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("nothing listens on port %d after %ss" % (port, timeout))


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def rc(tmp_path, monkeypatch):
    """A fresh rc file path for in-process ``main()`` runs (the file does not exist yet)."""
    path = tmp_path / "aemprc"
    monkeypatch.setenv("PERL_ANYEVENT_MP_RC", str(path))
    return path


def run_main(capsys, *argv):
    """``main(argv)`` in-process: (status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def load(path):
    return config.load_rc(str(path))


# ------------------------------------------------------------------------------------ help


def test_help_top_level_via_bin_and_module(tmp_path):
    r = aemp(tmp_path / "rc", "--help", cmd=BIN_AEMP)
    assert r.returncode == 0, r.stderr
    for name in (
        "gensecret",
        "setseeds",
        "profile NAME",
        "showconfig",
        "run",
        "snd",
        "cal",
        "mon",
        "eval",
        "trace",
        "shell",
        "nodes",
        "dbmon",
        "PERL_ANYEVENT_MP_RC",
    ):
        assert name in r.stdout
    r = aemp(tmp_path / "rc", "--version")
    assert r.returncode == 0 and r.stdout.startswith("aemp_green ")
    assert not (tmp_path / "rc").exists()


def test_help_for_every_subcommand(rc, capsys):
    assert cli._COMMANDS, "no subcommands registered"
    for name, cmd in cli._COMMANDS.items():
        for argv in ([name, "--help"], [name, "-h"], ["help", name]):
            status, out, err = run_main(capsys, *argv)
            assert status == 0, (argv, err)
            assert "Usage:" in out and ("aemp " + name) in out, (argv, out)
    # the X form of setX, help in the middle of a chain (nothing is executed then)
    status, out, _ = run_main(capsys, "secret", "--help")
    assert status == 0 and "aemp setsecret <secret>" in out
    status, out, _ = run_main(capsys, "gensecret", "snd", "--help")
    assert status == 0 and "aemp snd" in out
    status, out, _ = run_main(capsys, "help")
    assert status == 0 and "Talking to the network" in out
    assert not rc.exists()


# ------------------------------------------------------------------------------------ usage errors


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["bogus"], "unknown subcommand 'bogus'"),
        (["gensecret", "frobnicate"], "unknown subcommand 'frobnicate' (after gensecret)"),
        ([], "no subcommand given"),
        (["--bogus", "gensecret"], "unknown option --bogus"),
        (["setsecret"], "setsecret: missing <secret>"),
        (["mon", "a#b", "c"], "mon: unexpected argument 'c'"),
        (["db", "fam", "gensecret"], "db: unexpected argument 'gensecret'"),
        (["snd"], "snd: missing <port>"),
        (["snd", "--bogus", "p#x"], "snd: unknown option --bogus"),
        (["snd", "--timeout"], "option --timeout needs a value"),
        (["--timeout", "-3", "snd", "p#x"], "--timeout must be a positive number"),
        (["setbinds", "[1,"], "argument '[1,' is not valid JSON"),
        (["[1,", "x"], "not a valid JSON array"),
        (["monitor_timeout", "abc"], "monitor_timeout must be a positive number"),
        (["setnodeid", "a#b"], "must not contain '#'"),
        (["setseeds", "host:99999"], "port 99999 out of range"),
        (["auth_accept", "rot13"], "unknown auth method 'rot13'"),
        (["framing_format", "storable"], "no framing aemp_green supports"),
        (["nodelay", "maybe"], "nodelay must be a boolean"),
        (["showconfig", "seed", "binds"], "showconfig: missing <value>"),
        (["run", "profile"], "run: missing <value>"),
        (["help", "nosuch"], "help: unknown subcommand 'nosuch'"),
        (["db", "9bad"], "bad family name '9bad'"),
        (["setcert", "/nonexistent/cert.pem"], "setcert: cannot read /nonexistent/cert.pem"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(rc, capsys, argv, problem):
    status, out, err = run_main(capsys, *argv)
    assert status == 2, (argv, out, err)
    assert problem in err, err
    assert not rc.exists(), "nothing may be written after a usage error"


def test_usage_errors_in_subprocess(tmp_path):
    rcf = tmp_path / "rc"
    r = aemp(rcf, "gensecret", "nosuchcommand", cmd=BIN_AEMP)
    assert r.returncode == 2 and "unknown subcommand 'nosuchcommand'" in r.stderr
    assert not rcf.exists()  # the gensecret before it was not saved either
    r = aemp(rcf, "run", "bogus_key", "1")
    assert r.returncode == 2 and "unknown configure key 'bogus_key'" in r.stderr
    r = aemp(rcf, "run", "monitor_timeout", "soon")
    assert r.returncode == 2 and "monitor_timeout must be a positive number" in r.stderr


# ------------------------------------------------------------------------------------ settings

SETTINGS_CASES = [
    # (set argv, key, stored value, del argv)
    (["setsecret", "s3cret"], "secret", "s3cret", ["delsecret"]),
    (["secret", '"quoted secret"'], "secret", "quoted secret", ["delsecret"]),
    (["setnodeid", "worker/%n/%u"], "nodeid", "worker/%n/%u", ["delnodeid"]),
    (["nodeid", "seed"], "nodeid", "seed", ["delnodeid"]),
    (["setbinds", "127.0.0.1:4040,*:4041"], "binds", ["127.0.0.1:4040", "*:4041"], ["delbinds"]),
    (["binds", '["[::1]:4040"]'], "binds", ["[::1]:4040"], ["delbinds"]),
    (["setseeds", "10.0.0.1:4040"], "seeds", ["10.0.0.1:4040"], ["delseeds"]),
    (["seeds", '["a:1", "b:2"]'], "seeds", ["a:1", "b:2"], ["delseeds"]),
    (["setservices", "myapp.start,Mod::"], "services", ["myapp.start", "Mod::"], ["delservices"]),
    (
        ["services", '["myapp.start", ["myapp.worker", 4]]'],
        "services",
        ["myapp.start", ["myapp.worker", 4]],
        ["delservices"],
    ),
    (["setmonitor_timeout", "60"], "monitor_timeout", 60, ["delmonitor_timeout"]),
    (["monitor_timeout", "2.5"], "monitor_timeout", 2.5, ["delmonitor_timeout"]),
    (["setconnect_interval", "5"], "connect_interval", 5, ["delconnect_interval"]),
    (
        ["framing_format", "cbor,json,storable"],
        "framing_format",
        ["cbor", "json", "storable"],
        ["delframing_format"],
    ),
    (["setauth_offer", '["hmac_sha3_512"]'], "auth_offer", ["hmac_sha3_512"], ["delauth_offer"]),
    (
        ["auth_accept", "tls_sha3_512,hmac_sha3_512"],
        "auth_accept",
        ["tls_sha3_512", "hmac_sha3_512"],
        ["delauth_accept"],
    ),
    (["setautocork", "1"], "autocork", True, ["delautocork"]),
    (["nodelay", "false"], "nodelay", False, ["delnodelay"]),
    (["setsecure", "yes"], "secure", True, ["delsecure"]),
]


@pytest.mark.parametrize(
    "set_argv, key, stored, del_argv", SETTINGS_CASES, ids=[" ".join(c[0]) for c in SETTINGS_CASES]
)
def test_setting_round_trips_through_the_file(rc, capsys, set_argv, key, stored, del_argv):
    status, _, err = run_main(capsys, *set_argv)
    assert status == 0, err
    assert load(rc)[key] == stored
    # the same in a profile, leaving the top level alone
    status, _, err = run_main(capsys, "profile", "p1", *set_argv)
    assert status == 0, err
    assert load(rc)["profile"]["p1"][key] == stored
    status, _, err = run_main(capsys, *del_argv)
    assert status == 0, err
    data = load(rc)
    assert key not in data and data["profile"]["p1"][key] == stored
    status, _, err = run_main(capsys, "profile", "p1", *del_argv)
    assert status == 0 and key not in load(rc)["profile"]["p1"]
    # a second del only warns
    status, _, err = run_main(capsys, *del_argv)
    assert status == 0 and "warning" in err


def test_add_and_del_entries(rc, capsys):
    assert (
        run_main(
            capsys,
            "addbind",
            "127.0.0.1:4040",
            "addbind",
            "127.0.0.1:4040",
            "addbind",
            '["[::1]:*", "*:5"]',
        )[0]
        == 0
    )
    assert load(rc)["binds"] == ["127.0.0.1:4040", "[::1]:*", "*:5"]
    assert run_main(capsys, "delbind", '["[::1]:*"]')[0] == 0
    assert load(rc)["binds"] == ["127.0.0.1:4040", "*:5"]
    # an IPv6 address starts with "[", so it must be given as JSON (AEMP's argument rule)
    status, _, err = run_main(capsys, "addbind", "[::1]:7")
    assert status == 2 and "not valid JSON" in err
    status, _, err = run_main(capsys, "delbind", "9.9.9.9:1,*:5")
    assert load(rc)["binds"] == ["127.0.0.1:4040"]
    assert status == 0 and '"9.9.9.9:1" is not in binds' in err

    assert (
        run_main(
            capsys, "profile", "w", "addseed", "h1:4040", "addseed", "h2:4040", "delseed", "h1:4040"
        )[0]
        == 0
    )
    assert load(rc)["profile"]["w"]["seeds"] == ["h2:4040"]

    assert (
        run_main(
            capsys, "addservice", "myapp.start", "addservice", '["myapp.worker", 4, {"x": 1}]'
        )[0]
        == 0
    )
    assert load(rc)["services"] == ["myapp.start", ["myapp.worker", 4, {"x": 1}]]
    assert run_main(capsys, "delservice", '["myapp.worker", 4, {"x": 1}]')[0] == 0
    assert load(rc)["services"] == ["myapp.start"]


def test_gensecret_profile_scoping_and_delprofile(rc, capsys):
    assert run_main(capsys, "gensecret", "profile", "a", "gensecret")[0] == 0
    data = load(rc)
    top, in_a = data["secret"], data["profile"]["a"]["secret"]
    assert len(top) == 64 and top.isalnum() and top != in_a
    assert (
        run_main(capsys, "profile", "b", "setparent", "a", "profile", "c", "setparent", "b")[0] == 0
    )
    assert load(rc)["profile"]["c"]["parent"] == "b"
    status, _, err = run_main(capsys, "profile", "a", "setparent", "c")
    assert status == 2 and "profile parent loop" in err
    assert run_main(capsys, "profile", "c", "delparent", "delprofile", "b")[0] == 0
    data = load(rc)
    assert "b" not in data["profile"] and "parent" not in data["profile"]["c"]
    status, _, err = run_main(capsys, "delprofile", "b")
    assert status == 0 and "there is no profile 'b'" in err


def test_chaining_and_showconfig_via_bin(tmp_path):
    rcf = tmp_path / "rc"
    r = aemp(
        rcf,
        "gensecret",
        "profile",
        "seed",
        "binds",
        "127.0.0.1:4040",
        "nodeid",
        "seed",
        "showconfig",
        "seed",
        cmd=BIN_AEMP,
    )
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    stored = load(rcf)
    assert len(stored["secret"]) == 64 and stored["version"] == 1
    assert stored["profile"] == {"seed": {"binds": ["127.0.0.1:4040"], "nodeid": "seed"}}
    assert (shown["secret"], shown["binds"], shown["nodeid"]) == (
        stored["secret"],
        ["127.0.0.1:4040"],
        "seed",
    )


def test_json_argument_rules(rc, capsys):
    # the first argument starting with [ replaces all arguments, values stay typed
    assert run_main(capsys, '["profile", "j", "monitor_timeout", 7, "setseeds", ["h:1"]]')[0] == 0
    assert load(rc)["profile"]["j"] == {"monitor_timeout": 7, "seeds": ["h:1"]}
    # a "..." argument is a JSON string, { ... } an object
    assert run_main(capsys, "setsecret", '"a \\"b\\""')[0] == 0
    assert load(rc)["secret"] == 'a "b"'
    assert run_main(capsys, "showconfig", "j", "nodeid", '"x/1"')[0] == 0  # read-only
    status, _, err = run_main(capsys, "setsecret", '{"not": "a string"}')
    assert status == 2 and "the secret must be a non-empty string" in err


def test_showprofile_and_showconfig(rc, capsys, monkeypatch):
    """As Perl's aemp: showprofile NAME is the profile as stored, showconfig [NAME [K V...]] the
    effective configuration (NAME defaults to the host name)."""
    assert (
        run_main(
            capsys,
            "secret",
            "s",
            "monitor_timeout",
            "9",
            "profile",
            "base",
            "binds",
            "127.0.0.1:4040",
            "profile",
            "seed",
            "parent",
            "base",
            "nodeid",
            "seed",
        )[0]
        == 0
    )
    status, out, _ = run_main(capsys, "showconfig", "seed")
    merged = json.loads(out)
    assert status == 0
    assert merged["nodeid"] == "seed" and merged["binds"] == ["127.0.0.1:4040"]
    assert merged["secret"] == "s" and merged["monitor_timeout"] == 9
    assert merged["connect_interval"] == config.DEFAULTS["connect_interval"]
    assert merged["profile"] == "seed"
    status, out, _ = run_main(capsys, "showprofile", "seed")
    assert json.loads(out) == {"parent": "base", "nodeid": "seed"}
    status, out, _ = run_main(
        capsys, "showconfig", "seed", "connect_interval", "7", "monitor_timeout", "1"
    )
    eff = json.loads(out)
    assert eff["connect_interval"] == "7"  # a configure() argument ...
    assert eff["monitor_timeout"] == 9  # ... loses against the rc file (AEMP precedence)
    status, out, err = run_main(capsys, "showprofile", "nosuch")
    assert status == 0 and json.loads(out) == {} and "no profile 'nosuch'" in err
    # without a name: the host's profile, as a node started without one would use
    monkeypatch.setattr(config, "hostname", lambda: "seed")
    status, out, _ = run_main(capsys, "showconfig")
    assert status == 0 and json.loads(out) == merged


def test_aemp_format_file_keeps_unknown_keys_and_backup(rc, capsys):
    sample = sorted(INTEROP.glob("*/aemprc*"))
    assert sample, "interop rc samples missing"
    for src in sample:
        original = src.read_text()
        # relaxed JSON as Perl reads it: a comment and a trailing comma, plus keys we don't know
        text = (
            original.rstrip().rstrip("}").rstrip()
            + ',\n  # added by the test\n  "x_future" : {"a" : [1, 2,]},\n}\n'
        )
        rc.write_text(text)
        before = load(rc)
        status, _, err = run_main(
            capsys, "setnodeid", "foo", "profile", "seed", "setconnect_interval", "3"
        )
        assert status == 0, err
        after = load(rc)
        assert after["nodeid"] == "foo"
        assert after["x_future"] == {"a": [1, 2]}
        for key, value in before.items():
            if key not in ("nodeid", "profile"):
                assert after[key] == value, key
        for name, prof in before.get("profile", {}).items():
            for key, value in prof.items():
                assert after["profile"][name][key] == value
        assert Path(str(rc) + "~").read_text() == text  # the previous version, byte for byte
        assert (os.stat(rc).st_mode & 0o777) == 0o600


def test_no_write_without_change_and_bad_rc_file(rc, capsys):
    assert run_main(capsys, "showconfig")[0] == 0
    assert run_main(capsys, "delsecret", "delseeds")[0] == 0  # only warnings
    assert not rc.exists()
    rc.write_text('{"version": 1, "secret": ')
    status, _, err = run_main(capsys, "setsecret", "x")
    assert status == 1 and "cannot read the rc file" in err and "line 1" in err
    assert rc.read_text() == '{"version": 1, "secret": '


def test_gencert_and_setcert(rc, capsys, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    status, _, err = run_main(capsys, "profile", "tls", "gencert")
    assert status == 0, err
    pem = load(rc)["profile"]["tls"]["cert"]
    assert "PRIVATE KEY-----" in pem and "BEGIN CERTIFICATE-----" in pem
    pem_file = tmp_path / "node.pem"
    pem_file.write_text(pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pem_file))  # key and certificate belong together
    ctx.load_verify_locations(cadata=pem)  # and it is its own CA, as AEMP uses it
    assert run_main(capsys, "setcert", pem_file)[0] == 0
    assert load(rc)["cert"] == pem
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    status, _, err = run_main(capsys, "setcert", bad)
    assert status == 2 and "must hold a private key and a certificate" in err
    assert run_main(capsys, "delcert")[0] == 0 and "cert" not in load(rc)


def test_gencert_without_openssl_is_a_clear_error(tmp_path):
    r = aemp(tmp_path / "rc", "gencert", PATH=str(tmp_path))
    assert r.returncode == 1
    assert "openssl" in r.stderr and "not installed" in r.stderr
    assert not (tmp_path / "rc").exists()


def test_log_level_from_aemp_environment():
    lv = cli._log_level
    assert lv({}) == 30
    assert lv({"AE_VERBOSE": "9"}) == lv({"PERL_ANYEVENT_VERBOSE": "8"}) == 10
    assert lv({"AE_VERBOSE": "7"}) == 20
    assert lv({"AE_VERBOSE": "5"}) == lv({"AE_VERBOSE": "6"}) == 30
    assert lv({"AE_VERBOSE": "2"}) == lv({"AE_VERBOSE": "0"}) == 40
    assert lv({"PERL_ANYEVENT_VERBOSE": "info", "AE_VERBOSE": "9"}) == 20  # PERL_ wins


# ------------------------------------------------------------------------------------ the network


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A seed run by ``aemp run profile seed`` and a child node ``peer`` using it."""
    tmp = tmp_path_factory.mktemp("aempnet")
    rcf = tmp / "aemprc"
    port = free_port()
    seed = "127.0.0.1:%d" % port
    config.save_rc(
        {
            "version": 1,
            "secret": SECRET,
            "binds": ["127.0.0.1:*"],
            "seeds": [seed],
            "profile": {"seed": {"binds": [seed], "nodeid": "seed"}},
        },
        str(rcf),
    )
    log = open(tmp / "seed.log", "w")
    proc = aemp_bg(rcf, "run", "profile", "seed", log=log, AE_VERBOSE="7")
    peer = None
    try:
        wait_listening(port, proc)
        peer = ChildNode(tmp, "peer", nodeid="peer", seeds=[seed])
        peer.exec("""
got = port(lambda *m: emit("got", list(m)))
echo = port(lambda *m: snd(m[-1], "re", *m[:-1]))
seen = mon_nodes(lambda n, up, *why: emit("node", n, up, list(why)))
for _ in range(200):
    if node_is_up("seed"):
        break
    gevent.sleep(0.02)
emit("ports", got, echo, node_is_up("seed"))
""")
        got, echo, up = peer.expect("ports", timeout=15)
        assert up, "peer did not reach the seed"
        yield {
            "rc": rcf,
            "seed": seed,
            "proc": proc,
            "peer": peer,
            "got": got,
            "echo": echo,
            "tmp": tmp,
        }
    finally:
        if peer is not None:
            peer.stop()
        stop(proc)
        log.close()


def test_snd_arrives_with_json_values(net):
    r = aemp(net["rc"], "snd", net["got"], "hello", '{"n": 1}', '[1, "x"]', "42")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "message sent successfully\n"  # Perl's aemp confirms with this text
    assert net["peer"].expect("got") == [["hello", {"n": 1}, [1, "x"], "42"]]


def test_snd_to_missing_port_and_unknown_node(net):
    r = aemp(net["rc"], "snd", "peer#nosuchport", "hi")
    assert r.returncode == 1 and "no such port: peer#nosuchport" in r.stderr
    t0 = time.monotonic()
    r = aemp(net["rc"], "--timeout", "2", "snd", "ghost#x", "hi")
    assert r.returncode == 1 and "cannot reach node ghost" in r.stderr
    assert time.monotonic() - t0 < 4


def test_cal_prints_the_reply(net):
    r = aemp(net["rc"], "cal", net["echo"], "ping", "[1, 2]")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "re ping [1, 2]\n"  # as Perl's aemp prints "@reply"
    r = aemp(net["rc"], "cal", "seed", "time")  # the node port answers too
    assert r.returncode == 0 and isinstance(float(r.stdout), float)
    r = aemp(net["rc"], "--timeout", "1", "cal", net["got"], "no-reply")
    assert r.returncode == 1 and "no reply from %s within 1 s" % net["got"] in r.stderr
    net["peer"].expect("got")


def test_mon_prints_the_reason(net):
    peer = net["peer"]
    peer.exec('victim = port(lambda *m: None)\nemit("victim", victim)')
    victim = peer.expect("victim")[0]
    proc = aemp_bg(net["rc"], "mon", victim)
    try:
        peer.exec("""
from aemp_green import kernel
for _ in range(500):
    p = kernel.lookup_port(victim)
    if p is not None and p.monitors:
        break
    gevent.sleep(0.01)
kil(victim, "bye", 42)
""")
        out, _ = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert json.loads(out) == ["bye", 42]
    r = aemp(net["rc"], "mon", victim)  # now it is gone
    assert r.returncode == 1 and "no such port" in r.stderr
    assert json.loads(r.stdout)[0] == "no_such_port"


def test_eval_on_a_node(net):
    r = aemp(net["rc"], "eval", "seed", "6", "*", "7")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == 42
    r = aemp(net["rc"], "eval", "peer", '__import__("aemp_green").NODE()')
    assert r.returncode == 0 and json.loads(r.stdout) == "peer"
    r = aemp(net["rc"], "eval", "seed", "1/0")
    assert r.returncode == 1 and "ZeroDivisionError" in r.stderr


def test_nodes_and_db_and_dbmon(net):
    r = aemp(net["rc"], "nodes")
    assert r.returncode == 0, r.stderr
    nodes = json.loads(r.stdout)
    assert nodes["seed"] == [net["seed"]]
    assert "peer" in nodes and nodes["peer"][0].startswith("127.0.0.1:")
    assert not any(n.startswith("aemp/") for n in nodes)

    watcher = aemp_bg(net["rc"], "--timeout", "8", "dbmon", "clitest")
    lines = Lines(watcher)
    try:
        assert json.loads(lines.wait(lambda x: True)) == {"added": {}, "changed": {}, "deleted": []}
        net["peer"].exec('dbg = db_set("clitest", "k", {"v": 1})')
        line = lines.wait(lambda x: '"k"' in x)
        assert json.loads(line) == {"added": {"k": {"v": 1}}, "changed": {}, "deleted": []}
        r = aemp(net["rc"], "db", "clitest")
        assert r.returncode == 0 and json.loads(r.stdout) == {"k": {"v": 1}}
        net["peer"].exec("dbg.cancel()")
        lines.wait(lambda x: '"deleted": ["k"]' in x)
    finally:
        stop(watcher, signal.SIGINT)
    assert watcher.returncode == 0


def test_trace_streams_the_frames_of_a_node(net):
    proc = aemp_bg(net["rc"], "--timeout", "6", "trace", "seed")
    lines = Lines(proc)
    try:
        for i in range(40):  # until the subscription is in place
            aemp(net["rc"], "snd", "seed", "devnull", "marker%d" % i)
            try:
                lines.wait(lambda x: "marker" in x, timeout=0.3)
                break
            except AssertionError:
                pass
        line = lines.wait(lambda x: "marker" in x)
        direction, _peer, arrow, frame = line.split(" ", 3)
        assert direction == "RCV" and arrow == "->"
        assert json.loads(frame)[:2] == [None, "devnull"]
    finally:
        stop(proc, signal.SIGINT)
    assert proc.returncode == 0


def test_shell_local_and_remote(net):
    r = aemp(net["rc"], "shell", input="print(6 * 7)\nNODE().startswith('aemp/')\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["42", "True"]
    r = aemp(net["rc"], "shell", "seed", input="2 ** 10\n\n'x' * 3\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1024", '"xxx"']


def _runner(net, nodeid):
    port = free_port()
    log = open(net["tmp"] / ("%s.log" % nodeid), "w")
    # the rc file's top-level binds would win over configure() arguments: force them
    proc = aemp_bg(
        net["rc"],
        "run",
        "nodeid",
        nodeid,
        "binds",
        '["127.0.0.1:%d"]' % port,
        "force",
        "1",
        log=log,
        AE_VERBOSE="7",
    )
    log.close()
    try:
        wait_listening(port, proc)
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise
    peer = net["peer"]
    peer.exec(
        """
for _ in range(100):
    snd(%(n)r, "devnull")
    gevent.sleep(0.05)
    if node_is_up(%(n)r):
        break
emit("linked", %(n)r, node_is_up(%(n)r))
"""
        % {"n": nodeid}
    )
    try:
        assert peer.expect("linked", pred=lambda v: v[0] == nodeid) == [nodeid, True]
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_stops_cleanly_on_signals_and_peers_see_it(net, sig):
    nodeid = "runner-%s" % sig.name
    proc = _runner(net, nodeid)
    try:
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        why = net["peer"].expect("node", pred=lambda v: v[0] == nodeid and v[1] is False)[2]
        assert why[0] == "transport_error" and why[1] == nodeid
    finally:
        stop(proc, signal.SIGKILL)


def test_restart_reexecutes_aemp_run(net):
    nodeid = "runner-restart"
    proc = _runner(net, nodeid)
    try:
        r = aemp(net["rc"], "restart", nodeid)
        assert r.returncode == 0, r.stderr
        net["peer"].expect("node", pred=lambda v: v[0] == nodeid and v[1] is False)
        deadline = time.monotonic() + 15
        while True:  # the same process comes back under the same node ID
            assert proc.poll() is None, "aemp run exited instead of restarting"
            r = aemp(net["rc"], "--timeout", "2", "eval", nodeid, '__import__("os").getpid()')
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, r.stderr
            time.sleep(0.2)
        assert json.loads(r.stdout) == proc.pid
        assert "restart requested" in (net["tmp"] / ("%s.log" % nodeid)).read_text()
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_restart_target_keeps_its_wire_name():
    """`aemp restart` asks an aemp_green node to call ``aemp_green.cli._restart``: the name
    aemp sent before cli became a package, so aemp of either version restarts nodes of the
    other. The node resolves it like any function name."""
    from aemp_green.cli import run
    from aemp_green.kernel import resolve_function

    assert run.RESTART_FUNC == "aemp_green.cli._restart"
    assert resolve_function(run.RESTART_FUNC) is run.restart


def test_unreachable_network_fails_within_the_timeout(tmp_path):
    rcf = tmp_path / "rc"
    closed = free_port()
    config.save_rc(
        {
            "version": 1,
            "secret": SECRET,
            "binds": ["127.0.0.1:*"],
            "seeds": ["127.0.0.1:%d" % closed],
        },
        str(rcf),
    )
    for args in (["snd", "somewhere#port", "hi"], ["db", "fam"]):
        t0 = time.monotonic()
        r = aemp(rcf, "--timeout", "2", *args)
        elapsed = time.monotonic() - t0
        assert r.returncode == 1, (args, r.stderr)
        assert "cannot reach" in r.stderr, r.stderr
        assert elapsed < 2 + 2, elapsed
    config.save_rc({"version": 1, "secret": SECRET, "binds": ["127.0.0.1:*"]}, str(rcf))
    r = aemp(rcf, "nodes")
    assert r.returncode == 1 and "no seeds are configured" in r.stderr


def test_explicit_timeout_is_honoured_when_the_node_cannot_be_reached(tmp_path):
    """``aemp --timeout N`` waits N s for an unreachable node (it gave up after the profile's
    connect_interval, ~2 s, whatever N was), then says so and exits with status 1."""
    rc = tmp_path / "rc"
    assert aemp(rc, "setsecret", SECRET).returncode == 0
    with black_hole() as silent:  # accepts connections and never answers
        t0 = time.monotonic()
        r = aemp(rc, "--timeout", "4", "snd", silent + "#p", "hi", timeout=30)
        elapsed = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "cannot reach node %s" % silent in r.stderr, r.stderr
    assert elapsed >= 3.5, "gave up after %.1f s despite --timeout 4" % elapsed


def test_refused_connection_is_reported_at_once_and_says_so(tmp_path):
    """Nothing listens at the address: aemp says "connection refused" within about a second,
    even with a long --timeout (it waited for the timeout and said "connect timeout")."""
    rc = tmp_path / "rc"
    assert aemp(rc, "setsecret", SECRET).returncode == 0
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = "127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    r = aemp(rc, "--timeout", "20", "snd", closed + "#p", "hi", timeout=30)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "connection refused by %s: nothing listens there" % closed in r.stderr, r.stderr
    assert elapsed < 5, elapsed


def test_run_warns_when_no_secret_is_configured(tmp_path):
    """A node without a secret or cert can neither authenticate nor be authenticated: `aemp
    run` says so on stderr, with the command that fixes it, and still runs."""
    rc = tmp_path / "rc"
    log = tmp_path / "run.log"
    with open(log, "w") as f:
        proc = aemp_bg(
            rc, "run", "profile", "lonely", "nodeid", "lonely", "binds", "127.0.0.1:*", log=f
        )
    try:
        text = wait_file(log, lambda t: "no secret" in t, what="the warning")
        assert "aemp: warning: run: no secret and no cert are configured" in text
        assert "aemp gensecret" in text
        assert proc.poll() is None, "the node should still run"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
