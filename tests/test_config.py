"""Tests for aemp_green.config: rc file, relaxed JSON, profiles, validation, ids, addresses.

docs/api.md lines proven here: "Identity" (node id charset, %n/%u/trailing-slash expansion, default
``<profile>/``) and "Network" (configure keys and defaults, precedence, force/norc, the shared
AEMP rc file at ``$PERL_ANYEVENT_MP_RC`` or ``~/.perl-anyevent-mp``).
"""

import doctest
import json
import os
import stat
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aemp_green import config
from aemp_green.config import (
    DEFAULTS,
    SETTINGS,
    default_nodeid,
    dumps_rc,
    expand_binds,
    expand_nodeid,
    find_profile,
    gen_runiq,
    gen_secret,
    is_randomised,
    load_rc,
    parse_address,
    parse_relaxed_json,
    profile_section,
    rc_path,
    save_rc,
    validate,
)
from aemp_green.exceptions import ConfigError

INTEROP = Path(os.environ.get("AEMP_INTEROP_DIR") or Path(__file__).resolve().parent / "interop")
SAMPLES = sorted(INTEROP.glob("*/aemprc*")) if INTEROP.is_dir() else []


# ------------------------------------------------------------------ module surface


def test_all_names_exist():
    for name in config.__all__:
        assert hasattr(config, name), name


def test_docstring_examples_run():
    attempted = 0
    for mod in (config.settings, config.rcfile, config.addresses):
        result = doctest.testmod(mod)
        assert result.failed == 0, mod
        attempted += result.attempted
    assert attempted >= 20


def test_defaults_are_aemp_202_adapted():
    assert DEFAULTS["monitor_timeout"] == 30
    assert DEFAULTS["connect_interval"] == 2
    assert DEFAULTS["framing_format"] == ["cbor", "json"]
    assert DEFAULTS["auth_offer"] == ["tls_sha3_512", "hmac_sha3_512"]
    assert DEFAULTS["auth_accept"] == ["tls_sha3_512", "hmac_sha3_512"]
    assert DEFAULTS["binds"] == ["*"]
    assert DEFAULTS["seeds"] == []
    assert DEFAULTS["autocork"] is False
    assert DEFAULTS["nodelay"] is True
    assert DEFAULTS["secure"] is False
    assert DEFAULTS["max_frame"] == 64 * 1024 * 1024
    # keys without a default are not in DEFAULTS
    for key in ("secret", "cert", "nodeid", "parent", "services", "version"):
        assert key not in DEFAULTS


def test_settings_table_is_complete_and_defaults_validate():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for s in SETTINGS:
        assert s.doc.strip(), s.name
    # every default passes its own validator unchanged
    assert validate(DEFAULTS) == DEFAULTS


# ------------------------------------------------------------------ relaxed JSON


def test_relaxed_comments_and_trailing_commas():
    text = """
    # leading comment
    {
       "a" : [1, 2, 3,],   # trailing comma in a list
       "b" : {"x": 1, "y": [],},  # and in an object
       "c" : "keep # this, and ,] this",
       "d" : "quote \\" # still a string",
       "e" : "tab\tinside",
    }
    # trailing comment without newline"""
    assert parse_relaxed_json(text) == {
        "a": [1, 2, 3],
        "b": {"x": 1, "y": []},
        "c": "keep # this, and ,] this",
        "d": 'quote " # still a string',
        "e": "tab\tinside",
    }


def test_relaxed_comment_right_after_value_and_nested_trailing():
    assert parse_relaxed_json('[1# c\n,2,# c2\n]') == [1, 2]
    assert parse_relaxed_json('{"a":[[1,],{"b":2,},],}') == {"a": [[1], {"b": 2}]}
    assert parse_relaxed_json(b'{"\xc3\xa4": "\\u00e4#"}') == {"ä": "ä#"}


@pytest.mark.parametrize(
    "bad", ["[,]", "[1,,]", '{"a":,}', "{,}", '{"a" 1}', "[1 2]", "", "# only a comment", "[1]]"]
)
def test_relaxed_rejects_what_json_xs_rejects(bad):
    with pytest.raises(ConfigError):
        parse_relaxed_json(bad)


def test_relaxed_error_has_line_and_column():
    with pytest.raises(ConfigError) as ei:
        parse_relaxed_json('{\n  "a": 1,  # fine\n  "b": @\n}')
    assert ei.value.lineno == 3 and ei.value.colno == 8
    assert "line 3 column 8" in str(ei.value)


@pytest.mark.parametrize(
    "bad,what",
    [
        ('["abc', "unterminated"),
        ('["a\nb"]', "control character"),
        ("[NaN]", "NaN"),
        ("[Infinity]", "Infinity"),
        (b'["\xff"]', "UTF-8"),
    ],
)
def test_relaxed_specific_errors(bad, what):
    with pytest.raises(ConfigError, match=what):
        parse_relaxed_json(bad)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab#,]}[{"\\\t\n /é✓')),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet="ab#,]\"", max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json_values)
def test_relaxed_accepts_any_strict_json(value):
    assert parse_relaxed_json(json.dumps(value)) == value
    assert parse_relaxed_json(json.dumps(value, indent=2, ensure_ascii=False)) == value


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), _json_values, max_size=5))
def test_dumps_rc_roundtrips(value):
    assert parse_relaxed_json(dumps_rc(value)) == value


# ------------------------------------------------------------------ rc files


def test_dumps_rc_is_json_xs_pretty_canonical():
    cfg = {
        "version": 1,
        "seeds": ["127.0.0.1:4040"],
        "binds": [],
        "profile": {"seed": {"nodeid": "seed", "binds": ["127.0.0.1:4040", "*:*"]}},
        "secret": "s€",
        "nodelay": True,
        "empty": {},
    }
    assert dumps_rc(cfg) == (
        '{\n'
        '   "binds" : [],\n'
        '   "empty" : {},\n'
        '   "nodelay" : true,\n'
        '   "profile" : {\n'
        '      "seed" : {\n'
        '         "binds" : [\n'
        '            "127.0.0.1:4040",\n'
        '            "*:*"\n'
        '         ],\n'
        '         "nodeid" : "seed"\n'
        '      }\n'
        '   },\n'
        '   "secret" : "s€",\n'
        '   "seeds" : [\n'
        '      "127.0.0.1:4040"\n'
        '   ],\n'
        '   "version" : 1\n'
        '}\n'
    )


def test_dumps_rc_refuses_non_json():
    with pytest.raises(ConfigError):
        dumps_rc({"x": float("nan")})
    with pytest.raises(ConfigError):
        dumps_rc({"x": object()})


@pytest.mark.skipif(not SAMPLES, reason="no interop samples")
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: "%s/%s" % (p.parent.name, p.name))
def test_sample_rc_loads_and_roundtrips(sample, tmp_path):
    rc = load_rc(str(sample))
    assert rc["version"] == 1
    assert isinstance(rc["secret"], str) and rc["secret"]
    assert rc["framing_format"] in (["json"], ["cbor"])
    target = tmp_path / "rc"
    save_rc(rc, str(target))
    again = load_rc(str(target))
    assert again == rc
    # and the merged profile validates
    cfg = validate(find_profile(rc, "seed"))
    assert cfg["seeds"] == rc["seeds"]
    if "profile" in rc:
        assert cfg["nodeid"] == "seed"
        assert cfg["binds"] == rc["profile"]["seed"]["binds"]


def test_load_rc_missing_and_unreadable(tmp_path):
    assert load_rc(str(tmp_path / "nope")) == {"version": 1}
    assert load_rc(str(tmp_path)) == {"version": 1}  # a directory cannot be read as a file


def test_load_rc_default_path_uses_env(tmp_path, monkeypatch):
    f = tmp_path / "rc"
    f.write_text('{"version": 1, "secret": "x", # c\n}')
    monkeypatch.setenv("PERL_ANYEVENT_MP_RC", str(f))
    assert load_rc() == {"version": 1, "secret": "x"}


def test_load_rc_malformed_names_file_and_position(tmp_path):
    f = tmp_path / "badrc"
    f.write_text('{\n  "version": 1,\n  "seeds": [1 2]\n}\n')
    with pytest.raises(ConfigError) as ei:
        load_rc(str(f))
    msg = str(ei.value)
    assert str(f) in msg and "line 3" in msg
    assert isinstance(ei.value, ValueError)


def test_load_rc_top_level_must_be_object(tmp_path):
    f = tmp_path / "rc"
    f.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="object"):
        load_rc(str(f))


def test_save_rc_atomic_backup_and_mode(tmp_path):
    f = tmp_path / "rc"
    f.write_text('{"version": 1, "secret": "old"}')
    os.chmod(f, 0o644)
    rc = load_rc(str(f))
    rc["secret"] = "new"
    rc["x_future_key"] = {"nested": [1, "two", None]}
    save_rc(rc, str(f))
    assert (tmp_path / "rc~").read_text() == '{"version": 1, "secret": "old"}'
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "rc~").st_mode) == 0o600
    assert load_rc(str(f)) == {
        "version": 1,
        "secret": "new",
        "x_future_key": {"nested": [1, "two", None]},
    }
    assert f.read_text().endswith("}\n")
    # second save: backup is now the first saved version; no temp files left behind
    first = f.read_text()
    rc["secret"] = "newer"
    save_rc(rc, str(f))
    assert (tmp_path / "rc~").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rc", "rc~"]


def test_save_rc_new_file_has_no_backup(tmp_path):
    f = tmp_path / "fresh"
    assert save_rc({"version": 1}, str(f)) == str(f)
    assert load_rc(str(f)) == {"version": 1}
    assert not (tmp_path / "fresh~").exists()
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


def test_save_rc_follows_symlink(tmp_path):
    real = tmp_path / "real"
    real.write_text('{"version": 1}')
    link = tmp_path / "link"
    link.symlink_to(real)
    save_rc({"version": 1, "secret": "s"}, str(link))
    assert link.is_symlink()
    assert load_rc(str(real))["secret"] == "s"


def test_save_rc_failure_leaves_old_file(tmp_path):
    f = tmp_path / "rc"
    f.write_text('{"version": 1}')
    with pytest.raises(ConfigError):
        save_rc({"bad": float("inf")}, str(f))
    assert f.read_text() == '{"version": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rc"]


def test_save_rc_default_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PERL_ANYEVENT_MP_RC", str(tmp_path / "envrc"))
    save_rc({"version": 1, "seeds": ["a:1"]})
    assert load_rc(str(tmp_path / "envrc"))["seeds"] == ["a:1"]


# ------------------------------------------------------------------ rc_path


def test_rc_path_precedence(monkeypatch):
    env = {"PERL_ANYEVENT_MP_RC": "/x/rc", "HOME": "/home/u", "APPDATA": "/app"}
    assert rc_path(env) == "/x/rc"
    del env["PERL_ANYEVENT_MP_RC"]
    assert rc_path(env) == "/home/u/.perl-anyevent-mp"
    del env["HOME"]
    assert rc_path(env) == os.path.join("/app", "perl-anyevent-mp")
    # os.environ is the default
    monkeypatch.setenv("PERL_ANYEVENT_MP_RC", "/from/env")
    assert rc_path() == "/from/env"
    monkeypatch.delenv("PERL_ANYEVENT_MP_RC")
    monkeypatch.setenv("HOME", "/h2")
    assert rc_path() == "/h2/.perl-anyevent-mp"


def test_rc_path_empty_vars_count_as_unset():
    assert rc_path({"PERL_ANYEVENT_MP_RC": "", "HOME": "/h"}) == "/h/.perl-anyevent-mp"


# ------------------------------------------------------------------ profiles


RC = {
    "version": 1,
    "secret": "top-secret",
    "monitor_timeout": 11,
    "connect_interval": 3,
    "seeds": ["top:1"],
    "unknown_top": "kept",
    "profile": {
        "base": {"connect_interval": 4, "seeds": ["base:1"], "binds": ["base:2"]},
        "seed": {"parent": "base", "seeds": ["seed:1"], "nodeid": "seed", "x_unknown": 5},
        "grand": {"parent": "seed", "binds": ["grand:1"]},
    },
}


def test_precedence_defaults_kv_top_parent_profile():
    cfg = find_profile(
        RC,
        "seed",
        monitor_timeout=99,
        nodelay=False,
        autocork=True,
        seeds=["kv:1"],
        binds=["kv:2"],
        secure=True,
        connect_interval=1,
    )
    assert cfg["framing_format"] == ["cbor", "json"]  # default only
    assert cfg["nodelay"] is False  # kv over default
    assert cfg["monitor_timeout"] == 11  # top over kv
    assert cfg["connect_interval"] == 4  # parent over top
    assert cfg["binds"] == ["base:2"]  # parent over kv
    assert cfg["seeds"] == ["seed:1"]  # profile over parent/top/kv
    assert cfg["nodeid"] == "seed"
    assert cfg["profile"] == "seed"
    assert cfg["unknown_top"] == "kept" and cfg["x_unknown"] == 5
    assert "norc" not in cfg and "force" not in cfg


def test_grandparent_chain():
    cfg = find_profile(RC, "grand")
    assert cfg["binds"] == ["grand:1"]
    assert cfg["seeds"] == ["seed:1"]
    assert cfg["connect_interval"] == 4
    assert cfg["parent"] == "seed"


def test_force_makes_kv_win():
    cfg = find_profile(RC, "seed", force=True, seeds=["kv:1"], monitor_timeout=99)
    assert cfg["seeds"] == ["kv:1"]
    assert cfg["monitor_timeout"] == 99
    assert cfg["connect_interval"] == 4  # not given in kv: rc still applies
    assert cfg["secret"] == "top-secret"
    assert "force" not in cfg


def test_norc_ignores_rc():
    cfg = find_profile(RC, "seed", norc=True, seeds=["kv:1"])
    assert cfg["seeds"] == ["kv:1"]
    assert "secret" not in cfg and "nodeid" not in cfg
    assert cfg["monitor_timeout"] == 30
    assert cfg["profile"] == "seed"


def test_missing_profile_is_just_top_level():
    cfg = find_profile(RC, "nosuch")
    assert cfg["seeds"] == ["top:1"] and cfg["connect_interval"] == 3
    assert cfg["profile"] == "nosuch"
    assert find_profile({}, "x")["binds"] == ["*"]
    assert find_profile(None, "x")["binds"] == ["*"]


def test_profile_defaults_to_hostname(monkeypatch):
    monkeypatch.setattr(config.addresses, "_hostname", lambda: "myhost")
    rc = {"profile": {"myhost": {"nodeid": "from-host-profile"}}}
    cfg = find_profile(rc)
    assert cfg["profile"] == "myhost" and cfg["nodeid"] == "from-host-profile"
    assert default_nodeid(find_profile({})) == "myhost/"


def test_parent_loop_is_an_error():
    rc = {"profile": {"a": {"parent": "b"}, "b": {"parent": "c"}, "c": {"parent": "a"}}}
    with pytest.raises(ConfigError, match="profile parent loop"):
        find_profile(rc, "a")
    with pytest.raises(ConfigError, match="profile parent loop"):
        find_profile({"profile": {"me": {"parent": "me"}}}, "me")
    # norc never looks at the loop
    assert find_profile(rc, "a", norc=True)["profile"] == "a"


def test_bad_profile_table_shapes():
    with pytest.raises(ConfigError):
        find_profile({"profile": []}, "a")
    with pytest.raises(ConfigError):
        find_profile({"profile": {"a": "not an object"}}, "a")
    with pytest.raises(ConfigError):
        find_profile({"profile": {"a": {"parent": 5}}}, "a")


def test_find_profile_does_not_alias_inputs():
    rc = json.loads(json.dumps(RC))
    cfg = find_profile(rc, "seed")
    cfg["seeds"].append("mutated")
    cfg["framing_format"].append("mutated")
    assert rc == RC
    assert DEFAULTS["framing_format"] == ["cbor", "json"]


def test_none_kv_counts_as_not_given():
    cfg = find_profile({}, "p", nodeid=None, secret=None, force=True)
    assert "nodeid" not in cfg and "secret" not in cfg


def test_profile_section():
    rc = {"version": 1}
    assert profile_section(rc) is rc
    sec = profile_section(rc, "seed")
    sec["nodeid"] = "seed"
    assert rc == {"version": 1, "profile": {"seed": {"nodeid": "seed"}}}
    assert profile_section(rc, "seed") is sec
    with pytest.raises(ConfigError):
        profile_section({"profile": "junk"}, "x")


# ------------------------------------------------------------------ validate


def test_validate_normalises():
    cfg = validate(
        {
            "monitor_timeout": "60",
            "connect_interval": "0.5",
            "binds": "127.0.0.1:*",
            "seeds": ("a:1", "b:2"),
            "framing_format": ["storable", "json", "json"],
            "auth_accept": "hmac_sha3_512",
            "nodelay": 0,
            "autocork": "1",
            "secure": None,
            "services": "Mod::",
            "version": "1",
            "unknown": {"x": [1]},
            "profile": "seed",
        }
    )
    assert cfg == {
        "monitor_timeout": 60,
        "connect_interval": 0.5,
        "binds": ["127.0.0.1:*"],
        "seeds": ["a:1", "b:2"],
        "framing_format": ["json"],
        "auth_accept": ["hmac_sha3_512"],
        "nodelay": False,
        "autocork": True,
        "secure": False,
        "services": ["Mod::"],
        "version": 1,
        "unknown": {"x": [1]},
        "profile": "seed",
    }


@pytest.mark.parametrize(
    "cfg,msg",
    [
        ({"monitor_timeout": 0}, "monitor_timeout must be a positive number"),
        ({"monitor_timeout": -1}, "monitor_timeout must be a positive number"),
        ({"monitor_timeout": "soon"}, "monitor_timeout must be a positive number"),
        ({"monitor_timeout": True}, "monitor_timeout must be a positive number"),
        ({"connect_interval": [2]}, "connect_interval must be a positive number"),
        ({"binds": [4040]}, "binds must be a list of strings"),
        ({"binds": {"a": 1}}, "binds must be a list of strings"),
        ({"seeds": ["host:port"]}, "seeds: .*port must be a number"),
        ({"framing_format": ["storable"]}, "no framing aemp_green supports"),
        ({"framing_format": []}, "no framing aemp_green supports"),
        ({"auth_offer": ["md5"]}, "unknown auth method 'md5'"),
        ({"auth_accept": [None]}, "auth_accept must be a list of strings"),
        ({"secret": 1234}, "secret must be a string"),
        ({"cert": ["x"]}, "cert must be a string"),
        ({"nodeid": "a#b"}, "must not contain '#'"),
        ({"nodeid": "a b"}, "may only contain"),
        ({"nodeid": "a/%x"}, "only %n"),
        ({"nodeid": ""}, "must not be empty"),
        ({"nodeid": 5}, "nodeid must be a string"),
        ({"secure": "maybe"}, "secure must be a boolean"),
        ({"nodelay": 2}, "nodelay must be a boolean"),
        ({"services": [5]}, "services entries"),
        ({"max_frame": 0}, "max_frame must be a positive integer"),
        ({"version": "one"}, "version must be an integer"),
    ],
)
def test_validate_errors(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        validate(cfg)


def test_validate_accepts_perl_written_values():
    cfg = validate(
        {
            "nodeid": "%n/%u",
            "secure": 1,
            "autocork": 0,
            "nodelay": "0",
            "auth_accept": ["tls_sha3_512", "hmac_sha3_512", "tls_anon", "cleartext"],
            "services": ["Mod::", ["Pkg::func", 1, "a"]],
            "binds": ["*", "*:*", "[::1]:4040", "4040"],
            "secret": None,
        }
    )
    assert cfg["secure"] is True and cfg["autocork"] is False and cfg["nodelay"] is False
    assert cfg["nodeid"] == "%n/%u"
    assert cfg["secret"] is None


def test_validate_does_not_mutate_input():
    src = {"binds": "a:1", "framing_format": ["storable", "cbor"]}
    validate(src)
    assert src == {"binds": "a:1", "framing_format": ["storable", "cbor"]}


def test_validate_rejects_non_dict():
    with pytest.raises(ConfigError):
        validate(["x"])


# ------------------------------------------------------------------ node ids


def test_gen_runiq_shape():
    alnum = set(string.digits + string.ascii_letters)
    seen_digit_last = False
    values = set()
    for _ in range(300):
        r = gen_runiq()
        values.add(r)
        assert len(r) == 10
        assert set(r) <= alnum
        assert not r[-1].islower()  # upper-cased ...
        seen_digit_last |= r[-1].isdigit()  # ... but a digit stays a digit
    assert seen_digit_last
    assert len(values) == 300
    assert any(c.islower() for v in values for c in v[:-1])


def test_gen_secret():
    a, b = gen_secret(), gen_secret()
    assert a != b
    assert len(a) >= 40 and a.isalnum() and a.isascii()


def test_expand_nodeid():
    assert expand_nodeid("anon/", runiq="Abcdefghi1") == "anon/Abcdefghi1"
    assert expand_nodeid("%n/%u", hostname="box", runiq="Xyz012345Q") == "box/Xyz012345Q"
    assert expand_nodeid("aemp/%n/%u", hostname="h", runiq="R") == "aemp/h/R"
    assert expand_nodeid("%n", hostname="box") == "box"
    assert expand_nodeid("seed") == "seed"
    assert expand_nodeid("peer_a") == "peer_a"
    assert expand_nodeid("a/b:c.d") == "a/b:c.d"
    # same runiq for %u and the trailing slash
    assert expand_nodeid("%u/", runiq="Q") == "Q/Q"
    # runiq generated when not given
    node = expand_nodeid("eg_receiver/")
    assert node.startswith("eg_receiver/") and len(node) == len("eg_receiver/") + 10


def test_expand_nodeid_default_hostname(monkeypatch):
    monkeypatch.setattr(config.addresses, "_hostname", lambda: "thehost")
    assert expand_nodeid("%n/x") == "thehost/x"
    with pytest.raises(ConfigError):
        expand_nodeid("")


def test_is_randomised_and_default_nodeid():
    assert is_randomised("anon/") and is_randomised("%n/%u") and is_randomised("a%ub")
    assert not is_randomised("seed") and not is_randomised("%n")
    assert default_nodeid({"profile": "seed"}) == "seed/"
    assert default_nodeid({"profile": "seed", "nodeid": "fixed"}) == "fixed"
    assert default_nodeid(find_profile({}, "aemp", nodeid="aemp/%n/%u")) == "aemp/%n/%u"


# ------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:4040", ("127.0.0.1", 4040)),
        ("localhost:1", ("localhost", 1)),
        ("host.example-1:65535", ("host.example-1", 65535)),
        ("127.0.0.1:*", ("127.0.0.1", None)),
        ("127.0.0.1", ("127.0.0.1", None)),
        ("127.0.0.1:0", ("127.0.0.1", None)),
        ("*", ("*", None)),
        ("*:*", ("*", None)),
        ("*:4040", ("*", 4040)),
        ("[::1]:4040", ("::1", 4040)),
        ("[::1]:*", ("::1", None)),
        ("[fe80::1]", ("fe80::1", None)),
        ("::1", ("::1", None)),
        ("4040", ("box", 4040)),
        ("  a:1 ", ("a", 1)),
    ],
)
def test_parse_address(text, expected):
    assert parse_address(text, default_host="box") == expected


def test_parse_address_bare_number_uses_hostname(monkeypatch):
    monkeypatch.setattr(config.addresses, "_hostname", lambda: "me")
    assert parse_address("4040") == ("me", 4040)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "a:b",
        "a:70000",
        "a:",
        "[::1",
        "[nothex]:1",
        "[::1]x",
        "a::b:c:zz",
        "bad host:1",
        "h/x:1",
        ":4040",
        None,
        4040,
        "a:-1",
        "a:٣",
    ],
)
def test_parse_address_errors(bad):
    with pytest.raises(ConfigError):
        parse_address(bad, default_host="box")


def test_expand_binds(monkeypatch):
    monkeypatch.setattr(
        config.addresses, "_local_ipv4_addresses", lambda: ["10.0.0.1", "192.168.1.2"]
    )
    assert expand_binds(["*"]) == [("10.0.0.1", None), ("192.168.1.2", None)]
    assert expand_binds(["10.0.0.1:*", "*:*", "*:4040", "127.0.0.1:5", "127.0.0.1:5"]) == [
        ("10.0.0.1", None),
        ("192.168.1.2", None),
        ("10.0.0.1", 4040),
        ("192.168.1.2", 4040),
        ("127.0.0.1", 5),
    ]
    assert expand_binds("[::1]:7") == [("::1", 7)]
    assert expand_binds([]) == []


def test_expand_binds_falls_back_to_loopback(monkeypatch, caplog):
    monkeypatch.setattr(config.addresses, "_local_ipv4_addresses", lambda: [])
    with caplog.at_level("INFO", logger="aemp_green.config"):
        assert expand_binds(["*:4040"]) == [("127.0.0.1", 4040)]
    assert "127.0.0.1" in caplog.text


def test_local_addresses_real_host():
    addrs = config.addresses._local_ipv4_addresses()
    for a in addrs:
        assert not a.startswith("127.")
        assert len(a.split(".")) == 4
    for host, port in expand_binds(["*"]):
        assert port is None and host.count(".") == 3


def test_expand_binds_rejects_bad_entry():
    with pytest.raises(ConfigError):
        expand_binds(["a:b"])


# --------------------------------------------------------------------------- configure() itself

_BAD_CONFIGURE = """
    import json, logging, socket
    logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
    import aemp_green
    from aemp_green import config, connect, kernel
    from aemp_green.exceptions import ConfigError
    p = aemp_green.port()
    obj = kernel.port_table[p]
    anon = aemp_green.NODE()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_addr = "127.0.0.1:%d" % busy.getsockname()[1]
    out = {}
    for name, kv in (("busy", {"binds": ["127.0.0.1:*", busy_addr]}),
                     ("cert", {"cert": "not a pem", "binds": ["127.0.0.1:*"]})):
        try:
            aemp_green.configure(norc=True, secret="s", **kv)
            out[name] = "accepted"
        except ConfigError as exc:
            out[name] = str(exc)
        # nothing changed: same anonymous ID, the port kept it, no listener left open
        assert aemp_green.NODE() == anon and p in kernel.port_table and p.startswith(anon + "#")
        assert not connect.listener_addresses() and not config.is_configured()
    aemp_green.configure(norc=True, secret="s", nodeid="ok/", binds=["127.0.0.1:*"],
                         nodelay_typo=1)
    out["retry"] = [aemp_green.NODE(), connect.listener_addresses(),  # the port got the new ID
                    kernel.port_table.get(aemp_green.NODE() + "#" + obj.name) is obj]
    out["busy_addr"] = busy_addr
    print("RESULT " + json.dumps(out))
"""


def test_bad_configure_fails_before_anything_starts_and_can_be_retried():
    """A listener that cannot bind (address in use) or a cert that is not a usable PEM raises
    ConfigError naming the key, and leaves the node as it was (anonymous ID, no listener), so
    configure() can be called again; an unknown keyword is kept but logged as a likely typo."""
    from test_threaded import _results
    from netutil import run_python

    out = run_python(_BAD_CONFIGURE, timeout=30)
    res = _results(out)
    assert res["busy"].startswith("binds: cannot listen on %s:" % res["busy_addr"]), res
    assert "in use" in res["busy"], res
    assert res["cert"].startswith("cert: not a usable PEM"), res
    nodeid, addrs, kept = res["retry"]
    assert nodeid.startswith("ok/") and len(addrs) == 1 and kept, res
    assert "unknown setting 'nodelay_typo' (did you mean 'nodelay'?) ignored" in out.stderr, (
        out.stderr
    )


def test_misspelt_setting_is_shown_without_any_logging_setup(tmp_path):
    """``configure(seed=[...])`` for ``seeds``: a program that configured no logging still sees
    the warning on stderr, pointing at its own line and naming the setting it meant."""
    import subprocess
    import sys

    prog = tmp_path / "prog.py"
    prog.write_text(
        "import aemp_green\n"
        "aemp_green.configure(nodeid='typo', binds=['127.0.0.1:*'], norc=True,\n"
        "                     seed=['127.0.0.1:1'])\n"
        "aemp_green.shutdown()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, str(prog)], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert (
        "prog.py:2: UserWarning: configure(): unknown setting 'seed' (did you mean "
        "'seeds'?) ignored" in out.stderr
    ), out.stderr
