"""The ``aemp`` command: edit the AEMP rc file, run a node, talk to a network of nodes.

``aemp`` (the console script and ``bin/aemp``) is a thin layer over the public API of
``aemp_green`` and ``aemp_green.config``, with the conventions of Perl AnyEvent::MP's ``aemp``:

* **Settings** subcommands (``setsecret``, ``addseed``, ``profile NAME``, ``monitor_timeout``,
  ...) edit the rc file (``$PERL_ANYEVENT_MP_RC`` or ``~/.perl-anyevent-mp``), the same file Perl
  nodes read. Every ``setX`` also works as plain ``X``. Several settings chain in one call, left to
  right; ``profile NAME`` sends the settings after it to that profile. The file is written once at
  the end, atomically, and only if something changed (the previous version stays as
  ``<file>~``); keys ``aemp`` does not know are kept.
* **Talking** subcommands (``snd``, ``cal``, ``mon``, ``eval``, ``trace``, ``shell``, ``nodes``,
  ``db``, ``dbmon``, ``restart``) start a temporary node ``aemp/%n/%u`` with the profile ``aemp``
  (``--profile``), do their job within ``--timeout`` seconds (5) and exit with status 1 and a
  message when the network or the port cannot be reached. ``run`` runs a node until SIGINT or
  SIGTERM. These come last in a chain.
* Arguments that start with ``[``, ``{`` or ``"`` are JSON; if the very first argument starts with
  ``[`` it is a JSON array that replaces all the arguments.
* Usage errors (unknown subcommand, wrong arguments, bad values) exit with status 2.

The per-subcommand help texts are docopt usage documents (``aemp help SUBCOMMAND``); docopt parses
each subcommand's arguments, a small left-to-right loop does the chaining.

Example::

    from aemp_green.cli import main
    main(["gensecret", "profile", "seed", "binds", "127.0.0.1:4040", "nodeid", "seed"])
"""

import code
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import namedtuple
from typing import Any

import docopt

from . import _report
from . import config as _config
from ._version import __version__
from .exceptions import ConfigError

__all__ = ["main"]

logger = logging.getLogger(__name__)

_DEFAULT_TIMEOUT = 5.0
_TEMP_PROFILE = "aemp"
_TEMP_NODEID = "aemp/%n/%u"
_FAMILY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_:]*\Z")


# =============================================================================================
# errors and small helpers


class _UsageError(Exception):
    """Bad command line: printed as ``aemp: <message>``, exit status 2."""


class _Fail(Exception):
    """The subcommand could not do its job: printed as ``aemp: <message>``, exit status 1."""


class _HelpRequest(Exception):
    """``--help`` somewhere in the chain: print ``text`` and exit 0 without doing anything."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text


_UNSET = object()


class _Arg:
    """One command-line argument: ``raw`` as typed, ``value`` with the JSON rule applied."""

    __slots__ = ("raw", "_value")

    def __init__(self, raw, value=_UNSET):
        self.raw = raw
        self._value = value

    @property
    def value(self):
        if self._value is _UNSET:
            self._value = _json_arg(self.raw)
        return self._value

    def __repr__(self):
        return "_Arg(%r)" % (self.raw,)


def _json_arg(raw):
    """AEMP's rule: an argument starting with ``[``, ``{`` or ``"`` is JSON."""
    if raw[:1] in ('[', '{', '"'):
        try:
            return json.loads(raw)
        except ValueError as e:
            raise _UsageError("argument %r is not valid JSON: %s" % (raw, e)) from None
    return raw


def _tokens(argv):
    """Turn ``argv`` into ``_Arg`` objects (the first-argument JSON array rule included)."""
    if argv and isinstance(argv[0], str) and argv[0].startswith("["):
        try:
            values = json.loads(argv[0])
        except ValueError as e:
            raise _UsageError(
                "the first argument %r is not a valid JSON array: %s" % (argv[0], e)
            ) from None
        if not isinstance(values, list):
            raise _UsageError("the first argument must be a JSON array")
        return [_Arg(v if isinstance(v, str) else json.dumps(v), v) for v in values] + [
            _Arg(a) for a in argv[1:]
        ]
    return [_Arg(a) for a in argv]


def _json_default(obj):
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    return repr(obj)


def _dumps(value, pretty=False):
    if pretty:
        return json.dumps(
            value,
            indent=3,
            separators=(",", " : "),
            sort_keys=True,
            ensure_ascii=False,
            default=_json_default,
        )
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _warn(text):
    sys.stderr.write("aemp: warning: %s\n" % text)
    sys.stderr.flush()


def _str_arg(arg, what):
    value = arg.value
    if not isinstance(value, str) or not value:
        raise _UsageError("%s must be a non-empty string, not %r" % (what, arg.raw))
    return value


# =============================================================================================
# logging from the AEMP environment variables


def _log_level(environ):
    """Python log level for ``PERL_ANYEVENT_VERBOSE`` (or ``AE_VERBOSE``), AnyEvent's 0-9 scale."""
    return _report.log_level(environ)


def _setup_logging():
    root = logging.getLogger()
    if root.handlers:  # embedded (tests, an application calling main): leave logging alone
        return
    _report.drop_verbose_handler()  # ours replaces the one importing the package set up
    logging.basicConfig(
        level=_log_level(os.environ),
        stream=sys.stderr,
        format="%(asctime)s aemp[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


# =============================================================================================
# the rc file session (what the settings subcommands edit)


class _Session:
    """The rc file loaded once, the section settings go to, the global options."""

    def __init__(self, gopts):
        self.gopts = gopts
        self.path = _config.rc_path()
        self.section = None  # None: the rc top level; else a profile name
        self._rc = None
        self._orig = None

    @property
    def rc(self):
        if self._rc is None:
            try:
                self._rc = _config.load_rc(self.path)
            except ConfigError as e:
                raise _Fail("cannot read the rc file: %s" % e) from None
            self._orig = _config.dumps_rc(self._rc)
        return self._rc

    def sect(self, create=True):
        """The dict the settings edit (None when ``create`` is false and it does not exist)."""
        rc = self.rc
        if self.section is None:
            return rc
        table = rc.get("profile")
        if not create and (not isinstance(table, dict) or self.section not in table):
            return None
        try:
            sect = _config.profile_section(rc, self.section)
        except ConfigError as e:
            raise _Fail(str(e)) from None
        if not isinstance(sect, dict):
            raise _Fail("profile %r in the rc file is not an object" % self.section)
        return sect

    def where(self):
        return "the top level" if self.section is None else "profile %r" % self.section

    def save_if_changed(self):
        if self._rc is None:
            return
        text = _config.dumps_rc(self._rc)
        if text != self._orig:
            try:
                _config.save_rc(self._rc, self.path)
            except OSError as e:
                raise _Fail("cannot write the rc file %s: %s" % (self.path, e)) from None
            self._orig = text
            logger.debug("rc file %s written", self.path)


# =============================================================================================
# the subcommand table

_Cmd = namedtuple("_Cmd", "name nargs final options fn doc")

#: subcommand name -> _Cmd.  ``nargs``: the number of arguments of a chainable subcommand;
#: ``final`` subcommands take the rest of the command line (docopt checks the count).
_COMMANDS: dict[Any, Any] = {}

_TALK_OPTIONS = """
Options:
  --timeout=<seconds>  Give up after this many seconds (default: the global
                       option, else 5).
  --profile=<name>     Profile the temporary node is configured with (default:
                       the global option, else "aemp").
  -h, --help           Show this help.
"""

_SECTION_NOTE = (
    "It applies to the rc top level, or to the profile named by an earlier "
    "`profile NAME` in the same call."
)


def _command(name, nargs=0, final=False, options=False, doc=""):
    def deco(fn):
        _COMMANDS[name] = _Cmd(name, nargs, final, options, fn, doc.strip("\n") + "\n")
        return fn

    return deco


def _lookup(name):
    """The canonical subcommand for ``name`` (``X`` is ``setX``), or None."""
    if not isinstance(name, str):
        return None
    if name in _COMMANDS:
        return _COMMANDS[name]
    return _COMMANDS.get("set" + name) if not name.startswith(("set", "del", "_")) else None


# ---------------------------------------------------------------------------- secret and cert


@_command(
    "gensecret",
    doc="""
Generate a new random shared secret and store it.

Usage:
  aemp gensecret

The secret (64 random letters and digits from Python's `secrets`) authenticates nodes to each
other (hmac_sha3_512); every node of a network needs the same one. {note}

Example:
  aemp gensecret
  aemp profile lab gensecret
""".format(note=_SECTION_NOTE),
)
def _cmd_gensecret(sess, a):
    sess.sect()["secret"] = _config.gen_secret()


@_command(
    "setsecret",
    1,
    doc="""
Set the shared secret (also: aemp secret SECRET).

Usage:
  aemp setsecret <secret>

Nodes authenticate each other with it (hmac_sha3_512); all nodes of a network need the same
secret. {note}

Example:
  aemp setsecret 'correct horse battery staple'
""".format(note=_SECTION_NOTE),
)
def _cmd_setsecret(sess, a):
    sess.sect()["secret"] = _str_arg(a["<secret>"], "the secret")


@_command(
    "delsecret",
    doc="""
Remove the shared secret.

Usage:
  aemp delsecret

{note}

Example:
  aemp delsecret
""".format(note=_SECTION_NOTE),
)
def _cmd_delsecret(sess, a):
    _delete_key(sess, "secret")


def _gencert():
    with tempfile.TemporaryDirectory(prefix="aemp-gencert-") as tmp:
        key, crt = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
        cmd = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-subj",
            "/CN=aemp_green",
            "-keyout",
            key,
            "-out",
            crt,
        ]
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=120,
                check=False,
            )
        except FileNotFoundError:
            raise _Fail(
                "gencert needs the openssl command, which is not installed (not found "
                "on PATH); install OpenSSL, or make a PEM file with a key and a "
                "certificate elsewhere and store it with `aemp setcert FILE`"
            ) from None
        except (OSError, subprocess.TimeoutExpired) as e:
            raise _Fail("gencert: running openssl failed: %s" % e) from None
        if proc.returncode != 0:
            raise _Fail(
                "gencert: openssl failed (exit status %d): %s"
                % (proc.returncode, proc.stderr.decode("utf-8", "replace").strip())
            )
        with open(key, encoding="ascii") as f:
            pem = f.read()
        with open(crt, encoding="ascii") as f:
            pem += f.read()
    return pem


@_command(
    "gencert",
    doc="""
Generate a self-signed certificate (with its key) and store it as the cert.

Usage:
  aemp gencert

Runs the openssl command (RSA 2048, valid 10 years) and stores key and certificate as one PEM
text under "cert", which turns on TLS (tls_sha3_512 authentication). Nodes verify each other
against this certificate, so give every node of the network the same cert. {note}

Example:
  aemp gencert
""".format(note=_SECTION_NOTE),
)
def _cmd_gencert(sess, a):
    sess.sect()["cert"] = _gencert()


@_command(
    "setcert",
    1,
    doc="""
Store the PEM file FILE (private key, certificate, CA certificates) as the cert.

Usage:
  aemp setcert <file>

The file must hold a private key and a certificate in PEM form; its text goes into the rc file.
A cert turns on TLS (tls_sha3_512). {note}

Example:
  aemp setcert /etc/aemp/node.pem
""".format(note=_SECTION_NOTE),
)
def _cmd_setcert(sess, a):
    path = _str_arg(a["<file>"], "the cert file name")
    try:
        with open(path, encoding="utf-8") as f:
            pem = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise _UsageError("setcert: cannot read %s: %s" % (path, e)) from None
    if "-----BEGIN" not in pem or "CERTIFICATE-----" not in pem or "PRIVATE KEY-----" not in pem:
        raise _UsageError(
            "setcert: %s must hold a private key and a certificate in PEM form" % path
        )
    sess.sect()["cert"] = pem


@_command(
    "delcert",
    doc="""
Remove the cert (TLS is then off).

Usage:
  aemp delcert

{note}

Example:
  aemp delcert
""".format(note=_SECTION_NOTE),
)
def _cmd_delcert(sess, a):
    _delete_key(sess, "cert")


# ---------------------------------------------------------------------------- generic settings


def _fill(text):
    return textwrap.fill(text, width=95, break_on_hyphens=False, break_long_words=False)


def _validate(key, value):
    try:
        return _config.SETTINGS_BY_NAME[key].validator(key, value)
    except ConfigError as e:
        raise _UsageError(str(e)) from None


def _delete_key(sess, key):
    sect = sess.sect(create=False)
    if sect is None or key not in sect:
        _warn("%s: no %s is set there" % (sess.where(), key))
        return
    del sect[key]


def _list_arg(key, arg):
    """A list value: a JSON array, or a comma-separated string."""
    value = arg.value
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, list):
        raise _UsageError(
            "%s: expected a JSON array or a comma-separated list, not %r" % (key, arg.raw)
        )
    _validate(key, value)
    return value


def _items_arg(key, arg):
    """The entries named by an add/del argument (a string, comma-separated, or JSON)."""
    value = arg.value
    if key == "services" and isinstance(value, list):
        items = [value]  # one ["Pkg::func", args...] entry
    elif isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise _UsageError("%s: expected a string or a JSON array, not %r" % (key, arg.raw))
    if not items:
        raise _UsageError("%s: nothing given" % key)
    _validate(key, items)
    return items


_LIST_KEYS = {
    "binds": (
        "bind",
        "<bind>",
        "the addresses this node listens on",
        "host:port; '*' as host is every local address, '*' or no port a free port",
        "127.0.0.1:4040",
        '\'["127.0.0.1:4040","[::1]:4040"]\'',
        "0.0.0.0:4041",
    ),
    "seeds": (
        "seed",
        "<seed>",
        "the seed nodes this node keeps connected to",
        "host:port of a seed node (seeds become global nodes and keep the database)",
        "10.0.0.1:4040,10.0.0.2:4040",
        '\'["10.0.0.1:4040"]\'',
        "10.0.0.3:4040",
    ),
    "services": (
        "service",
        "<service>",
        "the services started by configure",
        "a function name \"pkg.mod.func\" (or AEMP's \"Pkg::func\"), a module "
        "\"pkg.mod.\" / \"Pkg::\", or a JSON array [\"pkg.func\", args...]",
        "myapp.jobs.start,myapp.web.",
        '\'["myapp.start", ["myapp.worker", 4]]\'',
        '\'["myapp.worker", 4]\'',
    ),
}


def _make_list_commands(key, item, meta, what, entry, ex_set, ex_json, ex_add):
    several = "adds" if key == "services" else "(or a JSON array) adds"

    def setter(sess, a):
        sess.sect()[key] = _list_arg(key, a["<%s>" % key])

    def deleter(sess, a):
        _delete_key(sess, key)

    def adder(sess, a):
        items = _items_arg(key, a[meta])
        sect = sess.sect()
        current = sect.get(key)
        current = (
            [] if current is None else list(current if isinstance(current, list) else [current])
        )
        for it in items:
            if it not in current:
                current.append(it)
        sect[key] = current

    def remover(sess, a):
        items = _items_arg(key, a[meta])
        sect = sess.sect(create=False)
        current = sect.get(key) if sect is not None else None
        current = (
            [] if current is None else list(current if isinstance(current, list) else [current])
        )
        for it in items:
            if it in current:
                current.remove(it)
            else:
                _warn("%s: %s is not in %s" % (sess.where(), json.dumps(it), key))
        if sect is not None and key in sect:
            sect[key] = current

    _command(
        "set" + key,
        1,
        doc="""
Set {what} (also: aemp {key} LIST).

Usage:
  aemp set{key} <{key}>

{text}

Example:
  aemp set{key} {ex_set}
  aemp set{key} {ex_json}
""".format(
            what=what,
            key=key,
            ex_set=ex_set,
            ex_json=ex_json,
            text=_fill(
                "LIST is a JSON array or a comma-separated list; each entry is %s. An entry starting "
                "with [ (IPv6) must be given in a JSON array. %s" % (entry, _SECTION_NOTE)
            ),
        ),
    )(setter)
    _command(
        "del" + key,
        doc="""
Remove {what} (the default applies again).

Usage:
  aemp del{key}

{note}

Example:
  aemp del{key}
""".format(what=what, key=key, note=_SECTION_NOTE),
    )(deleter)
    _command(
        "add" + item,
        1,
        doc="""
Add an entry to {what}.

Usage:
  aemp add{item} {meta}

{text}

Example:
  aemp add{item} {ex_add}
""".format(
            what=what,
            item=item,
            meta=meta,
            ex_add=ex_add,
            text=_fill(
                "The entry is %s; a comma-separated list %s several. An entry already there is not "
                "added twice. %s" % (entry, several, _SECTION_NOTE)
            ),
        ),
    )(adder)
    _command(
        "del" + item,
        1,
        doc="""
Remove an entry from {what}.

Usage:
  aemp del{item} {meta}

{text}

Example:
  aemp del{item} {ex_add}
""".format(
            what=what,
            item=item,
            meta=meta,
            ex_add=ex_add,
            text=_fill(
                "A comma-separated list %s several; entries that are not there are reported. %s"
                % (several.replace("adds", "removes"), _SECTION_NOTE)
            ),
        ),
    )(remover)


for _key, _spec in _LIST_KEYS.items():
    _make_list_commands(_key, *_spec)


_TUNING = {
    "monitor_timeout": ("<seconds>", "60"),
    "connect_interval": ("<seconds>", "5"),
    "framing_format": ("<framings>", "cbor,json"),
    "auth_offer": ("<methods>", "hmac_sha3_512"),
    "auth_accept": ("<methods>", "tls_sha3_512,hmac_sha3_512"),
    "autocork": ("<bool>", "1"),
    "nodelay": ("<bool>", "0"),
    "secure": ("<bool>", "1"),
}
_LIST_TUNING = {"framing_format", "auth_offer", "auth_accept"}


def _make_tuning_commands(key, meta, example):
    setting = _config.SETTINGS_BY_NAME[key]
    default = json.dumps(setting.default)
    kind = (
        "a JSON array or a comma-separated list"
        if key in _LIST_TUNING
        else "true/false, 1/0, yes/no or on/off"
        if meta == "<bool>"
        else "a positive number"
    )

    def setter(sess, a):
        arg = a[meta]
        if key in _LIST_TUNING:
            value = _list_arg(key, arg)  # stored as given (Perl nodes may want "storable")
        else:
            value = _validate(key, arg.value)
        sess.sect()[key] = value

    def deleter(sess, a):
        _delete_key(sess, key)

    _command(
        "set" + key,
        1,
        doc="""
Set {key} (also: aemp {key} VALUE).

Usage:
  aemp set{key} {meta}

{text}

Example:
  aemp set{key} {example}
""".format(
            key=key,
            meta=meta,
            example=example,
            text=_fill(
                "%s The value is %s; the default is %s. %s"
                % (setting.doc, kind, default, _SECTION_NOTE)
            ),
        ),
    )(setter)
    _command(
        "del" + key,
        doc="""
Remove {key} (the default {default} applies again).

Usage:
  aemp del{key}

{note}

Example:
  aemp del{key}
""".format(key=key, default=default, note=_SECTION_NOTE),
    )(deleter)


for _key, (_meta, _example) in _TUNING.items():
    _make_tuning_commands(_key, _meta, _example)
del _key, _spec, _meta, _example


@_command(
    "setnodeid",
    1,
    doc="""
Set the node ID (also: aemp nodeid NODEID).

Usage:
  aemp setnodeid <nodeid>

%n in it becomes the host name; %u, or a trailing /, a random unique string. Without a node ID a
node is called "<profile>/". {note}

Example:
  aemp profile seed setnodeid seed
  aemp setnodeid 'worker/%n/%u'
""".format(note=_SECTION_NOTE),
)
def _cmd_setnodeid(sess, a):
    sess.sect()["nodeid"] = _validate("nodeid", _str_arg(a["<nodeid>"], "the node ID"))


@_command(
    "delnodeid",
    doc="""
Remove the node ID (the node is then called "<profile>/").

Usage:
  aemp delnodeid

{note}

Example:
  aemp profile seed delnodeid
""".format(note=_SECTION_NOTE),
)
def _cmd_delnodeid(sess, a):
    _delete_key(sess, "nodeid")


# ---------------------------------------------------------------------------- profiles


@_command(
    "profile",
    1,
    doc="""
Send the settings that follow in this call to profile NAME.

Usage:
  aemp profile <name>

Without it settings go to the rc top level, which every profile inherits. A node started with
`aemp run profile NAME` (or configure("NAME")) uses the top level, then the parent chain, then
the profile itself; later ones win.

Example:
  aemp profile seed setbinds 127.0.0.1:4040 setnodeid seed
""",
)
def _cmd_profile(sess, a):
    sess.section = _str_arg(a["<name>"], "the profile name")


@_command(
    "delprofile",
    1,
    doc="""
Delete profile NAME and all its settings.

Usage:
  aemp delprofile <name>

Example:
  aemp delprofile oldlab
""",
)
def _cmd_delprofile(sess, a):
    name = _str_arg(a["<name>"], "the profile name")
    table = sess.rc.get("profile")
    if not isinstance(table, dict) or name not in table:
        _warn("there is no profile %r" % name)
        return
    del table[name]
    if not table:
        del sess.rc["profile"]
    if sess.section == name:
        sess.section = None


@_command(
    "setparent",
    1,
    doc="""
Make the current profile inherit from profile PARENT (also: aemp parent PARENT).

Usage:
  aemp setparent <parent>

A profile gets the settings of its parent (recursively) and overrides them. Use it after
`profile NAME`.

Example:
  aemp profile seed2 setparent seed setbinds 127.0.0.1:4041
""",
)
def _cmd_setparent(sess, a):
    parent = _str_arg(a["<parent>"], "the parent profile name")
    if sess.section is None:
        _warn(
            "a parent only has an effect inside a profile (use `profile NAME setparent %s`)"
            % parent
        )
    sess.sect()["parent"] = parent
    if sess.section is not None:
        try:
            _config.find_profile(sess.rc, sess.section)
        except ConfigError as e:
            raise _UsageError("setparent: %s" % e) from None


@_command(
    "delparent",
    doc="""
Remove the parent of the current profile.

Usage:
  aemp delparent

Example:
  aemp profile seed2 delparent
""",
)
def _cmd_delparent(sess, a):
    _delete_key(sess, "parent")


# ---------------------------------------------------------------------------- showing


@_command(
    "showprofile",
    1,
    doc="""
Print profile NAME as stored in the rc file, as JSON (as Perl's aemp does).

Usage:
  aemp showprofile <name>

Only the keys set in that profile itself; `showconfig NAME` prints what a node configured with
it would use.

Example:
  aemp showprofile seed
""",
)
def _cmd_showprofile(sess, a):
    name = _str_arg(a["<name>"], "the profile name")
    table = sess.rc.get("profile")
    if not isinstance(table, dict) or name not in table:
        _warn("there is no profile %r" % name)
        _out("{}")
        return
    _out(_dumps(table[name], pretty=True))


@_command(
    "showconfig",
    final=True,
    doc="""
Print the effective configuration of a profile as JSON (as Perl's aemp does).

Usage:
  aemp showconfig [<name> [(<key> <value>)...]]

What a node started with `aemp run profile NAME KEY VALUE...` would use: the built-in defaults,
the rc top level, the parent chain and the profile itself merged, with the key/value pairs as
configure() arguments (which the rc file overrides, as in AEMP). NAME defaults to the host name,
the profile a node uses when none is given. `showprofile NAME` prints the profile as stored.

Example:
  aemp showconfig
  aemp showconfig seed
  aemp showconfig seed monitor_timeout 10
""",
)
def _cmd_showconfig(sess, a):
    name_arg = a["<name>"]
    name = _config.hostname() if name_arg is None else _str_arg(name_arg, "the profile name")
    kv = _kv_pairs(a["<key>"], a["<value>"])
    try:
        cfg = _config.find_profile(sess.rc, name, **kv)
    except ConfigError as e:
        raise _Fail("showconfig: %s" % e) from None
    _out(_dumps(cfg, pretty=True))


def _kv_pairs(keys, values):
    kv = {}
    for k, v in zip(keys or [], values or []):
        key = k.value
        if not isinstance(key, str) or not key:
            raise _UsageError("configuration keys must be names, not %r" % k.raw)
        kv[key] = v.value
    return kv


@_command(
    "_resolve",
    final=True,
    doc="""
Print the socket addresses the given bind or seed addresses stand for (a debugging aid).

Usage:
  aemp _resolve <address>...

"*" as host becomes every local non-loopback address; a missing or "*" port shows as "*".

Example:
  aemp _resolve '*:4040' 127.0.0.1
""",
)
def _cmd_resolve(sess, a):
    addrs = [_str_arg(x, "an address") for x in a["<address>"]]
    try:
        resolved = _config.expand_binds(addrs)
    except ConfigError as e:
        raise _UsageError("_resolve: %s" % e) from None
    _out(
        _dumps(
            [
                ("[%s]" % h if ":" in h else h) + ":" + ("*" if p is None else str(p))
                for h, p in resolved
            ]
        )
    )


@_command(
    "help",
    final=True,
    doc="""
Show the help of aemp or of one subcommand.

Usage:
  aemp help [<subcommand>]

Example:
  aemp help
  aemp help snd
""",
)
def _cmd_help(sess, a):
    arg = a["<subcommand>"]
    if arg is None:
        _out(_top_doc().strip("\n"))
        return
    cmd = _lookup(arg.raw)
    if cmd is None:
        raise _UsageError("help: unknown subcommand %r (see `aemp --help`)" % arg.raw)
    _out(cmd.doc.strip("\n"))


# =============================================================================================
# running a node

_runner = None  # the running `aemp run`: {"stop": Event, "restart": bool, "argv": [...]}


def _restart():
    """Node request target of ``aemp restart``: shut down and re-execute this ``aemp run``."""
    if _runner is None:
        logger.warning("restart requested, but this node was not started by `aemp run`: ignored")
        return
    logger.warning("restart requested: shutting down and starting again")
    _runner["restart"] = True
    _runner["stop"].set()


@_command(
    "run",
    final=True,
    doc="""
Configure a node and run it until SIGINT or SIGTERM.

Usage:
  aemp run [(<key> <value>)...]

The key/value pairs are configure() arguments: "profile NAME" picks the profile (default: the
host name); the others (nodeid, binds, seeds, secret, services, monitor_timeout, ..., norc,
force) are defaults that the rc file and the profile override, as in AEMP, unless "force 1" is
given (aemp warns when that happens). JSON values are parsed (binds '["127.0.0.1:4040"]'); a
string stands for a one-element list where a list is expected. On SIGINT/SIGTERM the node shuts
down cleanly (listeners closed, peers see the connections end) and aemp exits with status 0.
`aemp restart NODE` makes it start again with the same arguments.

Example:
  aemp run profile seed
  aemp run nodeid foo binds '["127.0.0.1:4040"]' force 1
""",
)
def _cmd_run(sess, a):
    import gevent
    from gevent.event import Event

    import aemp_green

    global _runner
    kv = _kv_pairs(a["<key>"], a["<value>"])
    profile = kv.pop("profile", None)
    if profile is not None and (not isinstance(profile, str) or not profile):
        raise _UsageError("run: profile must be a profile name, not %r" % (profile,))
    for flag in ("norc", "force"):
        if flag in kv:
            try:  # parsed like the boolean settings ("1", "true", "yes", ...)
                kv[flag] = _config.SETTINGS_BY_NAME["secure"].validator(flag, kv[flag])
            except ConfigError as e:
                raise _UsageError("run: %s" % e) from None
    unknown = [k for k in kv if k not in _config.SETTINGS_BY_NAME and k not in ("norc", "force")]
    if unknown:
        raise _UsageError(
            "run: unknown configure key%s %s (known: %s)"
            % (
                "s" if len(unknown) > 1 else "",
                ", ".join(map(repr, unknown)),
                ", ".join(s.name for s in _config.SETTINGS if s.name != "version"),
            )
        )
    try:
        _config.validate({k: v for k, v in kv.items() if k not in ("norc", "force")})
    except ConfigError as e:
        raise _UsageError("run: %s" % e) from None
    if not kv.get("force") and not kv.get("norc"):
        try:
            eff = _config.find_profile(sess.rc, profile, **kv)
        except ConfigError as e:
            raise _Fail("run: %s" % e) from None
        for key, value in kv.items():
            if key not in ("force", "norc") and eff.get(key) != value:
                _warn(
                    "run: the rc file overrides %s %s (configure() arguments are only "
                    "defaults, as in AEMP); add `force 1` to make them win"
                    % (key, json.dumps(value))
                )
    try:
        cfg = aemp_green.configure(profile, **kv)
    except (ConfigError, OSError) as e:
        raise _Fail("run: cannot start the node: %s" % e) from None
    if not cfg.get("secret") and not cfg.get("cert"):
        _warn(
            "run: no secret and no cert are configured (profile %r): this node can neither "
            "authenticate to other nodes nor accept them. Set one with `aemp gensecret` (the "
            "same secret on every node) or `aemp setsecret SECRET`."
            % (profile or _config.hostname())
        )
    from .node import listener_addresses

    stop = Event()
    _runner = {"stop": stop, "restart": False, "argv": sess.gopts["argv"]}
    watchers = [
        gevent.signal_handler(signal.SIGTERM, stop.set),
        gevent.signal_handler(signal.SIGINT, stop.set),
    ]
    logger.info(
        "node %s running, listening on %s", aemp_green.NODE(), " ".join(listener_addresses())
    )
    try:
        stop.wait()
    finally:
        for w in watchers:
            w.cancel()
        logger.info("node %s shutting down", aemp_green.NODE())
        aemp_green.shutdown()
        gevent.sleep(0)
    if _runner["restart"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "aemp_green.cli"] + _runner["argv"])
    return 0


# =============================================================================================
# talking to the network through a temporary node


def _dynamic_binds(binds):
    """The hosts of ``binds`` with a free port each (a temporary node must not take a seed's)."""
    out = []
    for b in binds if isinstance(binds, list) else [binds]:
        host, _port = _config.parse_address(b)
        out.append(("[%s]" % host if ":" in host else host) + ":*")
    return out


class _Talk:
    """A temporary node ``aemp/%n/%u``, the deadline, and the request helpers."""

    def __init__(self, sess, a):
        opts = dict(sess.gopts)
        if a.get("--timeout") is not None:
            opts["timeout"] = _parse_timeout(a["--timeout"])
        if a.get("--profile") is not None:
            opts["profile"] = a["--profile"]
        self.explicit = opts["timeout"] is not None
        self.timeout = opts["timeout"] if self.explicit else _DEFAULT_TIMEOUT
        self.profile = opts["profile"] or _TEMP_PROFILE
        self.sess = sess
        self.deadline = None
        self.cfg = None

    def start(self):
        import aemp_green

        try:
            eff = _config.find_profile(self.sess.rc, self.profile)
            binds = _dynamic_binds(eff.get("binds") or ["*"])
            extra = {}
            if self.explicit:
                # --timeout N: keep trying to reach a node for N s, not for the profile's
                # connect_interval (2 s by default), after which every monitor would fire
                extra["connect_interval"] = max(
                    self.timeout, float(eff.get("connect_interval") or 0)
                )
            self.cfg = aemp_green.configure(
                self.profile, nodeid=_TEMP_NODEID, binds=binds, force=True, **extra
            )
        except (ConfigError, OSError) as e:
            raise _Fail(
                "cannot start the temporary node (profile %r): %s" % (self.profile, e)
            ) from None
        self.deadline = time.monotonic() + self.timeout
        logger.debug("temporary node %s (profile %s)", aemp_green.NODE(), self.profile)

    def left(self):
        return max(0.0, self.deadline - time.monotonic())

    def stop(self):
        import aemp_green

        aemp_green.shutdown()

    def need_seeds(self):
        if not self.cfg.get("seeds"):
            raise _Fail(
                "no seeds are configured (profile %r): the node database lives on the "
                "seed nodes (set them with `aemp setseeds HOST:PORT`)" % self.profile
            )

    def ask(self, target, msg, timeout=None):
        """Send ``msg + [reply port]`` to ``target``; return ("reply", values),
        ("died", reason) or ("timeout", None).

        A node port (``node`` or ``node#``) only counts transport errors as death.
        """
        import gevent
        from gevent.event import AsyncResult

        import aemp_green

        res = AsyncResult()
        node_port = _is_node_port(target)

        def on_reply(*values):
            if not res.ready():
                res.set(("reply", values))

        def on_died(*reason):
            if res.ready():
                return
            if node_port and (not reason or reason[0] != "transport_error"):
                return  # a node port cannot be monitored: "no_such_port" means "reached"
            res.set(("died", reason))

        reply = aemp_green.port(on_reply)
        guard = aemp_green.mon(target, on_died)
        try:
            aemp_green.snd(target, *msg, reply)
            try:
                return res.get(timeout=self.left() if timeout is None else timeout)
            except gevent.Timeout:
                return ("timeout", None)
        finally:
            guard.cancel()
            aemp_green.kil(reply)

    def reach(self, node):
        """Round trip to ``node`` (the ``time`` request); raises _Fail when it is unreachable."""
        kind, value = self.ask(node, ["time"])
        if kind == "reply":
            return
        if kind == "died":
            raise _Fail(_unreachable(node, value))
        raise _Fail("cannot reach node %s: no answer within %s s" % (node, _secs(self.timeout)))


def _secs(t):
    return "%g" % t


def _unreachable(node, reason):
    why = reason[2] if len(reason) > 2 else " ".join(map(str, reason[1:]))
    return "cannot reach node %s: %s" % (node, why)


def _is_node_port(port):
    return "#" not in port or port.endswith("#")


def _parse_timeout(text):
    try:
        t = float(text)
    except (TypeError, ValueError):
        t = -1
    if not t > 0 or t == float("inf"):
        raise _UsageError("--timeout must be a positive number of seconds, not %r" % (text,))
    return t


def _port_arg(arg):
    port = _str_arg(arg, "the port ID")
    if port.startswith("#"):
        raise _UsageError("%r is not a port ID (NODE#NAME)" % port)
    return port


def _reason_failure(port, reason):
    """The exit message for a monitor reason that means "not reached", or None."""
    if reason and reason[0] == "transport_error":
        return _unreachable(reason[1] if len(reason) > 1 else port.partition("#")[0], reason)
    if reason and reason[0] == "no_such_port":
        return "no such port: %s" % port
    return None


def _talking(fn=None, check=None):
    """Run ``fn(talk, a)`` with a started temporary node; always shut the node down.

    ``check(a)`` validates the arguments first (raising ``_UsageError``), so that a bad
    argument never configures a node.
    """
    if fn is None:
        return lambda f: _talking(f, check)

    def run(sess, a):
        if check is not None:
            check(a)
        talk = _Talk(sess, a)
        talk.start()
        try:
            return fn(talk, a)
        finally:
            talk.stop()

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _stop_event(seconds=None, res=None):
    """An AsyncResult (``res`` or a new one) set to "signal" on SIGINT/SIGTERM, and to
    "timeout" after ``seconds`` (unless it was set before)."""
    import gevent
    from gevent.event import AsyncResult

    if res is None:
        res = AsyncResult()

    def fire(what):
        if not res.ready():
            res.set(what)

    _handles.extend(
        [
            gevent.signal_handler(signal.SIGTERM, fire, "signal"),
            gevent.signal_handler(signal.SIGINT, fire, "signal"),
        ]
    )
    if seconds is not None:
        _handles.append(gevent.spawn_later(seconds, fire, "timeout"))
    return res


_handles: list[Any] = []  # signal watchers and timers of _stop_event (alive until the process ends)


@_command(
    "snd",
    final=True,
    options=True,
    doc="""
Send a message to a port, and wait until it got there.

Usage:
  aemp snd [options] <port> [<arg>...]

The message is the arguments (strings, or JSON where they start with [, {{ or "). Sending is
asynchronous, so aemp waits for the port's node to confirm that it received everything sent
before (the node request "time"), then prints "message sent successfully", as Perl's aemp does.
It exits with status 1 if the node cannot be reached, or the port does not exist, within the
timeout.
{options}
Example:
  aemp snd 'seed#abc' hello '{{"n": 1}}' '[1, 2]'
""".format(options=_TALK_OPTIONS),
)
@_talking
def _cmd_snd(talk, a):
    import gevent

    import aemp_green

    port = _port_arg(a["<port>"])
    msg = [x.value for x in a["<arg>"]]
    node = port.partition("#")[0]
    died = []

    def on_died(*reason):
        if not _is_node_port(port) or (reason and reason[0] == "transport_error"):
            died.append(reason)

    guard = aemp_green.mon(port, on_died)
    aemp_green.snd(port, *msg)
    try:
        kind, value = talk.ask(node, ["time"])
        for _ in range(5):  # let an already-received kil0 run its monitor
            if died:
                break
            gevent.sleep(0)
    finally:
        guard.cancel()
    if died:
        failure = _reason_failure(port, died[0])
        if failure:
            raise _Fail(
                failure + ("" if "cannot reach" in failure else " (the message was dropped)")
            )
    if kind == "died":
        raise _Fail(_unreachable(node, value))
    if kind == "timeout":
        raise _Fail(
            "cannot reach node %s: no confirmation within %s s" % (node, _secs(talk.timeout))
        )
    _out("message sent successfully")  # Perl's aemp prints the same confirmation
    return 0


@_command(
    "cal",
    final=True,
    options=True,
    doc="""
Call a port: send the arguments plus a reply port, print the reply.

Usage:
  aemp cal [options] <port> [<arg>...]

The reply (the values the port sent to the reply port) is printed as Perl's aemp prints it: the
values separated by spaces, strings as they are, other values as JSON (`pong`, `3.5`,
`re ping [1, 2]`). Exits with
status 1 if no reply came within the timeout, the port does not exist or died, or its node
cannot be reached. PORT may be a node ID: `aemp cal seed time` asks the node port.
{options}
Example:
  aemp cal 'seed#abc' add 1 2
  aemp cal seed time
""".format(options=_TALK_OPTIONS),
)
@_talking
def _cmd_cal(talk, a):
    port = _port_arg(a["<port>"])
    msg = [x.value for x in a["<arg>"]]
    kind, value = talk.ask(port, msg)
    if kind == "reply":
        _out(" ".join(v if isinstance(v, str) else _dumps(v) for v in value))
        return 0
    if kind == "died":
        failure = _reason_failure(port, value)
        raise _Fail(failure or "port %s died before replying: %s" % (port, _dumps(list(value))))
    raise _Fail("no reply from %s within %s s" % (port, _secs(talk.timeout)))


@_command(
    "mon",
    final=True,
    options=True,
    doc="""
Monitor a port and print the reason (a JSON array) when it dies.

Usage:
  aemp mon [options] <port>

The port's node must be reached within the timeout; then aemp waits for the port to die for as
long as it takes (or, with an explicit --timeout, until that many seconds passed: status 1).
Status 0 when the port died (normally: [], or with a reason); status 1 when it does not exist
(no_such_port) or the connection to its node was lost (transport_error). Given a node ID, aemp
waits until that node goes down.
{options}
Example:
  aemp mon 'seed#abc'
  aemp --timeout 60 mon worker/x7
""".format(options=_TALK_OPTIONS),
)
@_talking
def _cmd_mon(talk, a):
    from gevent.event import AsyncResult

    import aemp_green

    port = _port_arg(a["<port>"])
    node = port.partition("#")[0]
    outcome = AsyncResult()  # ("died", reason), "signal" or "timeout"

    def died(*reason):
        if not outcome.ready():
            outcome.set(("died", reason))

    if _is_node_port(port):
        guard = aemp_green.mon_nodes(lambda n, up, *why: n == node and not up and died(*why))
    else:
        guard = aemp_green.mon(port, died)
    try:
        if not outcome.ready():
            talk.reach(node)
        _stop_event(talk.left() if talk.explicit else None, outcome)
        what = outcome.get()
    finally:
        guard.cancel()
    if what == "timeout":
        raise _Fail("%s is still alive after %s s" % (port, _secs(talk.timeout)))
    if what == "signal":
        raise _Fail("interrupted; %s is still alive" % port)
    reason = list(what[1])
    _out(_dumps(reason))
    if _is_node_port(port):
        return 0
    failure = _reason_failure(port, reason)
    if failure:
        raise _Fail(failure)
    return 0


@_command(
    "eval",
    final=True,
    options=True,
    doc="""
Evaluate an expression on a node (node request "eval") and print the result as JSON.

Usage:
  aemp eval [options] <node> <expr>...

The arguments after NODE are joined with spaces (no JSON decoding). aemp_green nodes evaluate a
Python expression, Perl nodes Perl code (several results are printed as a JSON array). An error
on the node is printed and gives status 1, as do an unreachable node and no answer (nodes
configured "secure" refuse eval).
{options}
Example:
  aemp eval seed '__import__("aemp_green").up_nodes()'
  aemp eval seed 6 '*' 7
""".format(options=_TALK_OPTIONS),
)
@_talking
def _cmd_eval(talk, a):
    node = _node_arg(a["<node>"])
    expr = " ".join(x.raw for x in a["<expr>"])
    talk.reach(node)
    return _remote_eval(talk, node, expr, talk.left())


def _node_arg(arg):
    node = _str_arg(arg, "the node ID")
    return node[:-1] if node.endswith("#") else node


def _remote_eval(talk, node, expr, timeout, fatal=True):
    kind, value = talk.ask(node, ["eval", expr], timeout=timeout)
    if kind == "reply":
        err, results = (value[0] if value else ""), list(value[1:])
        if isinstance(err, (bytes, bytearray)):
            err = bytes(err).decode("utf-8", "replace")
        if err:
            msg = "eval on %s failed: %s" % (node, str(err).rstrip("\n"))
            if fatal:
                raise _Fail(msg)
            sys.stderr.write(msg + "\n")
            return 1
        _out(_dumps(results[0] if len(results) == 1 else results))
        return 0
    if kind == "died":
        msg = _unreachable(node, value)
    else:
        msg = (
            "%s did not answer the eval request within %s s (nodes configured secure "
            "refuse eval)" % (node, _secs(timeout))
        )
    if fatal:
        raise _Fail(msg)
    sys.stderr.write("aemp: %s\n" % msg)
    return 1


def _is_yes(value):
    return value in (1, True, "1", b"1")


@_command(
    "trace",
    final=True,
    options=True,
    doc="""
Print every message a node sends and receives, until interrupted.

Usage:
  aemp trace [options] <node>

Uses the aemp_green node request "aemp_green_trace" (AEMP 2.x nodes have no trace request).
Each line is `SND|RCV PEER <-|-> FRAME` with the frame as JSON (the node port shows as null),
like PERL_ANYEVENT_MP_TRACE. Runs until SIGINT/SIGTERM (status 0), an explicit --timeout
(status 0), or the node going away (status 1).
{options}
Example:
  aemp trace seed
  aemp --timeout 10 trace seed > trace.log
""".format(options=_TALK_OPTIONS),
)
@_talking
def _cmd_trace(talk, a):
    import gevent

    import aemp_green

    node = _node_arg(a["<node>"])
    kind, value = talk.ask(node, ["can", "aemp_green_trace"])
    if kind == "died":
        raise _Fail(_unreachable(node, value))
    if kind == "timeout":
        raise _Fail("cannot reach node %s: no answer within %s s" % (node, _secs(talk.timeout)))
    if not (value and _is_yes(value[0])):
        raise _Fail(
            "node %s cannot be traced: it does not know the aemp_green_trace request "
            "(not an aemp_green node?)" % node
        )

    def show(tag=None, direction=None, peer=None, frame=None, *_):
        if tag != "trace" or not isinstance(frame, list):
            return
        arrow = "<-" if direction == "SND" else "->"
        shown = [None if i == 0 and x == "" else x for i, x in enumerate(frame)]
        _out("%s %s %s %s" % (direction, peer, arrow, _dumps(shown)))

    tp = aemp_green.port(show)
    stop = _stop_event(talk.left() if talk.explicit else None)

    def node_watch(n, up, *why):
        if n == node and not up and not stop.ready():
            stop.set(("down", why))

    guard = aemp_green.mon_nodes(node_watch)
    try:
        aemp_green.snd(node, "aemp_green_trace", tp, 1)
        what = stop.get()
    finally:
        guard.cancel()
        aemp_green.snd(node, "aemp_green_trace", tp, 0)
        gevent.sleep(0.05)  # let the unsubscribe go out before the link closes
    if isinstance(what, tuple):
        raise _Fail("lost the connection to %s: %s" % (node, _dumps(list(what[1]))))
    return 0


class _GreenConsole(code.InteractiveConsole):
    """An InteractiveConsole reading its input through a gevent file object (hub not blocked)."""

    def __init__(self, namespace, reader, prompts):
        super().__init__(namespace, filename="<aemp shell>")
        self._reader = reader
        self._prompts = prompts

    def raw_input(self, prompt=""):
        if self._prompts and prompt:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        line = self._reader.readline()
        if not line:
            raise EOFError
        return line.decode("utf-8", "replace").rstrip("\r\n")


def _stdin_reader():
    """A gevent FileObjectPosix on fd 0 and a function restoring fd 0's flags afterwards."""
    import fcntl

    from gevent.fileobject import FileObjectPosix

    fd = sys.stdin.fileno()
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    reader = FileObjectPosix(fd, "rb", close=False)

    def restore():
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        except OSError:
            pass

    return reader, restore


@_command(
    "shell",
    final=True,
    options=True,
    doc="""
An interactive Python shell on a temporary node, or an eval shell on NODE.

Usage:
  aemp shell [options] [<node>]

Without NODE: a Python console with the whole aemp_green API imported, running on a temporary
node of its own; `me` is a port of its own whose messages are appended to the list `inbox`, and
receive()/call() work too. With NODE: every line is sent to NODE's eval request and the result
printed (Python expressions on aemp_green nodes, Perl on Perl nodes). Ends at end of input.
Prompts and banner are shown only when the input is a terminal.
{options}
Example:
  aemp shell
  aemp shell seed
""".format(options=_TALK_OPTIONS),
)
@_talking
def _cmd_shell(talk, a):
    import gevent

    import aemp_green

    node = _node_arg(a["<node>"]) if a["<node>"] is not None else None
    if node is not None:
        talk.reach(node)
    reader, restore = _stdin_reader()
    tty = sys.stdin.isatty()
    try:
        if node is None:
            inbox = []
            me = aemp_green.port(lambda *msg: inbox.append(list(msg)))
            ns = {name: getattr(aemp_green, name) for name in aemp_green.__all__}
            ns.update(
                aemp_green=aemp_green, gevent=gevent, me=me, inbox=inbox, __name__="__aemp_shell__"
            )
            banner = (
                (
                    "aemp shell on node %s (aemp_green %s); the aemp_green API is imported, "
                    "`me` is your port (messages go to `inbox`). Ctrl-D ends."
                    % (aemp_green.NODE(), __version__)
                )
                if tty
                else ""
            )
            _GreenConsole(ns, reader, tty).interact(banner=banner, exitmsg="")
            return 0
        status = 0
        while True:
            if tty:
                sys.stdout.write("%s> " % node)
                sys.stdout.flush()
            line = reader.readline()
            if not line:
                break
            expr = line.decode("utf-8", "replace").strip()
            if not expr:
                continue
            status = _remote_eval(talk, node, expr, talk.timeout, fatal=False)
        if tty:
            sys.stdout.write("\n")
        return status
    finally:
        restore()


def _family_arg(arg):
    family = _str_arg(arg, "the family name")
    if not (family.startswith("'") or _FAMILY_RE.match(family)):
        raise _UsageError(
            "bad family name %r: must match [A-Za-z][A-Za-z0-9_:]* (or be an "
            "internal family such as \"'l\")" % family
        )
    return family


def _db_family(talk, family):
    import aemp_green

    talk.need_seeds()
    try:
        return aemp_green.db_family(family, timeout=talk.left())
    except aemp_green.Timeout:
        raise _Fail(
            "cannot reach the network: no global node answered within %s s (seeds: %s)"
            % (_secs(talk.timeout), ", ".join(talk.cfg.get("seeds") or []))
        ) from None


@_command(
    "nodes",
    final=True,
    options=True,
    doc="""
Print the nodes of the network and their addresses as a JSON object.

Usage:
  aemp nodes [options]

Asks a global (seed) node for the "'l" family of the shared database: every node that is up and
known to the network, with the addresses it listens on. The temporary node itself is left out.
{options}
Example:
  aemp nodes
""".format(options=_TALK_OPTIONS),
)
@_talking
def _cmd_nodes(talk, a):
    import aemp_green

    nodes = dict(_db_family(talk, "'l") or {})
    nodes.pop(aemp_green.NODE(), None)
    _out(_dumps(nodes, pretty=True))
    return 0


@_command(
    "db",
    final=True,
    options=True,
    doc="""
Print a family of the shared database as a JSON object.

Usage:
  aemp db [options] <family>

Example:
  aemp db eg_receivers
  aemp db "'l"
{options}""".format(options=_TALK_OPTIONS),
)
@_talking(check=lambda a: _family_arg(a["<family>"]))
def _cmd_db(talk, a):
    family = _family_arg(a["<family>"])
    _out(_dumps(_db_family(talk, family) or {}, pretty=True))
    return 0


@_command(
    "dbmon",
    final=True,
    options=True,
    doc="""
Watch a family of the shared database; print each change as a JSON line.

Usage:
  aemp dbmon [options] <family>

Each line is {{"added": {{key: value}}, "changed": {{key: value}}, "deleted": [keys]}}; the first
one has the whole family in "added". Runs until SIGINT/SIGTERM, or an explicit --timeout
(status 0); status 1 if the network is not reached within the timeout.
{options}
Example:
  aemp dbmon eg_receivers
""".format(options=_TALK_OPTIONS),
)
@_talking(check=lambda a: _family_arg(a["<family>"]))
def _cmd_dbmon(talk, a):
    from gevent.event import Event

    import aemp_green

    family = _family_arg(a["<family>"])
    talk.need_seeds()
    first = Event()

    def changed(db, added=None, changed=None, deleted=None):
        db = db or {}
        _out(
            _dumps(
                {
                    "added": {k: db.get(k) for k in added or []},
                    "changed": {k: db.get(k) for k in changed or []},
                    "deleted": list(deleted or []),
                }
            )
        )
        first.set()

    guard = aemp_green.db_mon(family, changed)
    try:
        if not first.wait(talk.left()):
            raise _Fail(
                "cannot reach the network: no global node answered within %s s "
                "(seeds: %s)" % (_secs(talk.timeout), ", ".join(talk.cfg.get("seeds") or []))
            )
        stop = _stop_event(talk.left() if talk.explicit else None)
        stop.get()
    finally:
        guard.cancel()
    return 0


@_command(
    "restart",
    final=True,
    options=True,
    doc="""
Ask a node to restart.

Usage:
  aemp restart [options] <node>

An aemp_green node started with `aemp run` shuts down and starts again with the same command
line; a Perl node is asked to restart through AnyEvent::Watchdog (it must run under it). Nodes
configured "secure" refuse. aemp exits once the node received the request.
{options}
Example:
  aemp restart seed
""".format(options=_TALK_OPTIONS),
)
@_talking
def _cmd_restart(talk, a):
    import aemp_green

    node = _node_arg(a["<node>"])
    kind, value = talk.ask(node, ["can", "aemp_green_trace"])
    if kind == "died":
        raise _Fail(_unreachable(node, value))
    if kind == "timeout":
        raise _Fail("cannot reach node %s: no answer within %s s" % (node, _secs(talk.timeout)))
    func = (
        "aemp_green.cli._restart"
        if value and _is_yes(value[0])
        else "AnyEvent::Watchdog::Util::restart"
    )
    # the node answered just above; the request goes last, because the node shuts its links
    # down as soon as it runs it (a round trip after it would race that); leaving the talking
    # node flushes the request out before closing the link
    aemp_green.snd_to_func(node, func)
    return 0


# =============================================================================================
# the top level: docopt for the global options and for each subcommand, a left-to-right chain


_GROUPS = (
    (
        "Settings (they edit the rc file and can follow each other in one call)",
        (
            ("profile NAME", "later settings go to profile NAME (else the top level)"),
            ("gensecret | setsecret SECRET | delsecret", "the shared secret"),
            ("gencert | setcert FILE | delcert", "the TLS certificate (PEM, with its key)"),
            ("setnodeid ID | delnodeid", "the node ID (%n host name, %u unique)"),
            ("setbinds LIST | delbinds | addbind A | delbind A", "listen addresses"),
            ("setseeds LIST | delseeds | addseed A | delseed A", "seed nodes"),
            ("setservices LIST | delservices | addservice S | delservice S", "services"),
            ("setparent NAME | delparent", "the profile the current one inherits from"),
            ("delprofile NAME", "delete a profile"),
            ("setKEY VALUE | delKEY", "tuning, KEY one of: monitor_timeout connect_interval"),
            ("", "framing_format auth_offer auth_accept autocork nodelay secure"),
            ("showprofile NAME", "the effective configuration of a profile (JSON)"),
            ("showconfig [NAME [KEY VALUE...]]", "the rc file, a profile, or a node's config"),
        ),
    ),
    (
        "Running a node",
        (
            ("run [KEY VALUE...]", "configure a node (e.g. run profile seed) and run it"),
            ("restart NODE", "ask a node to restart"),
        ),
    ),
    (
        "Talking to the network (on a temporary node; these come last)",
        (
            ("snd PORT ARG...", "send a message, wait until it arrived"),
            ("cal PORT ARG...", "call a port, print the reply"),
            ("mon PORT", "print the reason when the port dies"),
            ("eval NODE EXPR...", "evaluate an expression on a node"),
            ("trace NODE", "print the messages a node sends and receives"),
            ("shell [NODE]", "interactive shell (local Python, or eval on NODE)"),
            ("nodes", "the nodes of the network and their addresses"),
            ("db FAMILY", "print a family of the shared database"),
            ("dbmon FAMILY", "watch a family of the shared database"),
        ),
    ),
)


def _top_doc():
    lines = [
        "aemp - configure, run and talk to AnyEvent::MP (AEMP) nodes (aemp_green %s)" % __version__,
        "",
        "Usage:",
        "  aemp [options] <subcommand> [<args>...]",
        "  aemp [options]",
        "",
        "Options:",
        "  --timeout=<seconds>  How long talking subcommands wait (5 s if not given).",
        "  --profile=<name>     Profile of the temporary node of talking subcommands",
        "                       (\"aemp\" if not given).",
        "  --version            Print the version.",
        "  -h, --help           Show this help.",
        "",
    ]
    for title, entries in _GROUPS:
        lines.append(title + ":")
        for what, text in entries:
            if len(what) > 30:
                lines.append("  " + what)
                lines.append("  " + " " * 32 + text)
            else:
                lines.append("  %-31s %s" % (what, text))
        lines.append("")
    lines += [
        "Every setX also works as plain X (aemp secret S, aemp binds LIST). An argument that",
        "starts with [, { or \" is JSON; if the first argument starts with [ it is a JSON array",
        "that replaces all the arguments. `aemp help SUBCOMMAND` (or aemp SUBCOMMAND --help)",
        "shows the details of one subcommand.",
        "",
        "Environment:",
        "  PERL_ANYEVENT_MP_RC    the rc file (else ~/.perl-anyevent-mp)",
        "  PERL_ANYEVENT_VERBOSE  log level 0-9 (also AE_VERBOSE): 9/8 debug, 7 info,",
        "                         6/5 warnings, lower errors only",
        "  PERL_ANYEVENT_MP_TRACE print every message sent and received (set to 1)",
        "",
        "Example:",
        "  aemp gensecret profile seed setbinds 127.0.0.1:4040 setnodeid seed",
        "  aemp setseeds 127.0.0.1:4040",
        "  aemp run profile seed &",
        "  aemp eval seed 'sum(range(10))'",
    ]
    return "\n".join(lines) + "\n"


_OPTS_WITH_VALUE = ("--timeout", "--profile")


def _split_options(toks, with_value=_OPTS_WITH_VALUE):
    """Leading option tokens (raw strings, for docopt) and the index where arguments start."""
    lead = []
    i = 0
    while i < len(toks):
        raw = toks[i].raw
        if raw == "--":
            return lead, i + 1
        if not raw.startswith("-") or raw == "-":
            break
        lead.append(raw)
        i += 1
        if "=" not in raw and raw.startswith("--") and any(o.startswith(raw) for o in with_value):
            if i >= len(toks):
                raise _UsageError("option %s needs a value" % raw)
            lead.append(toks[i].raw)
            i += 1
    return lead, i


def _unknown_option(lead, known):
    """The first option in ``lead`` that is no (prefix of a) known option, or None."""
    for raw in lead:
        if raw.startswith("-") and raw != "-":
            name = raw.split("=", 1)[0]
            if not any(k == name or (name.startswith("--") and k.startswith(name)) for k in known):
                return name
    return None


_CMD_OPTIONS = ("--timeout", "--profile", "--help", "-h")
_TOP_OPTIONS = _CMD_OPTIONS + ("--version",)


def _mask(n, start=0):
    return ["\x01%d" % k for k in range(start, start + n)]


def _unmask(value, toks):
    if isinstance(value, str) and value.startswith("\x01"):
        return toks[int(value[1:])]
    if isinstance(value, list):
        return [_unmask(v, toks) for v in value]
    return value


def _docopt(doc, argv):
    """docopt-ng without its exits: returns the dict, raises docopt.DocoptExit on bad input."""
    return docopt.docopt(doc, argv, default_help=False, options_first=True)


def _usage_section(doc):
    m = re.search(r"^Usage:\n(?:[ \t].*\n?)*", doc, re.M)
    return m.group(0).rstrip("\n") if m else ""


def _arg_count_problem(cmd, lead, args):
    """Why ``args`` do not fit ``cmd``: missing ones (by name) or the unexpected ones."""
    n = len(args)
    for extra in (1, 2, 3):
        try:
            res = _docopt(cmd.doc, lead + [cmd.name] + _mask(n + extra))
        except docopt.DocoptExit:
            continue
        names = sorted(
            {
                k
                for k, v in res.items()
                if any(
                    isinstance(x, str) and x.startswith("\x01") and int(x[1:]) >= n
                    for x in (v if isinstance(v, list) else [v])
                )
            }
        )
        return "missing %s" % " ".join(names or ["arguments"])
    for fewer in range(1, n + 1):
        try:
            _docopt(cmd.doc, lead + [cmd.name] + _mask(n - fewer))
        except docopt.DocoptExit:
            continue
        return "unexpected argument%s %s" % (
            "s" if fewer > 1 else "",
            " ".join(repr(t.raw) for t in args[n - fewer :]),
        )
    return "wrong arguments"


def _parse_command(cmd, toks):
    """Parse the arguments of one subcommand with its docopt document; returns a dict."""
    if toks and toks[0].raw in ("-h", "--help"):
        raise _HelpRequest(cmd.doc)
    if cmd.options:
        lead, start = _split_options(toks)
    else:
        lead, start = [], 0
    args = toks[start:]
    argv = lead + [cmd.name] + _mask(len(args))
    try:
        res = _docopt(cmd.doc, argv)
    except docopt.DocoptExit as e:
        first = str(e).split("\n", 1)[0].strip()
        unknown = _unknown_option(lead, _CMD_OPTIONS)
        if unknown:
            detail = "unknown option %s" % unknown
        elif first and not first.lower().startswith(("usage:", "warning:")):
            detail = first
        else:
            detail = _arg_count_problem(cmd, lead, args)
        raise _UsageError("%s: %s\n%s" % (cmd.name, detail, _usage_section(cmd.doc))) from None
    if res.get("--help"):
        raise _HelpRequest(cmd.doc)
    out = {k: _unmask(v, args) for k, v in res.items()}
    if out.get("--timeout") is not None:
        _parse_timeout(out["--timeout"])
    return out


def _parse_chain(toks):
    """Split the subcommand chain into [(cmd, parsed args)], checking everything first."""
    steps = []
    i = 0
    while i < len(toks):
        name = toks[i].raw
        cmd = _lookup(name)
        if cmd is None:
            after = " (after %s)" % steps[-1][0].name if steps else ""
            raise _UsageError("unknown subcommand %r%s; see `aemp --help`" % (name, after))
        rest = toks[i + 1 :]
        if rest and rest[0].raw in ("-h", "--help"):
            raise _HelpRequest(cmd.doc)
        if cmd.final:
            mine, i = rest, len(toks)
        else:
            mine = rest[: cmd.nargs]
            i += 1 + cmd.nargs
        steps.append((cmd, _parse_command(cmd, mine)))
    return steps


def _parse_top(toks):
    """The global options (docopt) and the tokens of the subcommand chain."""
    lead, start = _split_options(toks)
    chain = toks[start:]
    argv = lead + _mask(len(chain))
    doc = _top_doc()
    try:
        res = _docopt(doc, argv)
    except docopt.DocoptExit as e:
        first = str(e).split("\n", 1)[0].strip()
        unknown = _unknown_option(lead, _TOP_OPTIONS)
        if unknown:
            first = "unknown option %s" % unknown
        elif not first or first.lower().startswith(("usage:", "warning:")):
            first = "bad arguments"
        raise _UsageError("%s\n%s" % (first, _usage_section(doc))) from None
    if res.get("--help"):
        raise _HelpRequest(doc)
    gopts = {"timeout": None, "profile": None}
    if res.get("--timeout") is not None:
        gopts["timeout"] = _parse_timeout(res["--timeout"])
    if res.get("--profile") is not None:
        if not res["--profile"]:
            raise _UsageError("--profile needs a profile name")
        gopts["profile"] = res["--profile"]
    return res, gopts, chain


def main(argv=None):
    """Run the ``aemp`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0 on success, 1 when a subcommand failed (network or port not reached, openssl missing,
    unreadable rc file), 2 for usage errors (unknown subcommand, wrong arguments, bad values).
    Settings are saved to the rc file once, at the end (before a talking subcommand runs), and
    only when something changed.

    Example::

        main(["gensecret", "profile", "seed", "setbinds", "127.0.0.1:4040", "setnodeid", "seed"])
        main(["showprofile", "seed"])          # prints the merged configuration as JSON
        main(["--timeout", "2", "snd", "seed#abc", "hello"])
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        toks = _tokens(argv)
        res, gopts, chain = _parse_top(toks)
        if res.get("--version"):
            _out("aemp_green %s" % __version__)
            return 0
        if not chain:
            raise _UsageError(
                "no subcommand given\n%s\n(see `aemp --help`)" % _usage_section(_top_doc())
            )
        gopts["argv"] = list(argv)
        steps = _parse_chain(chain)
        sess = _Session(gopts)
        for cmd, parsed in steps:
            if cmd.final:
                sess.save_if_changed()
            status = cmd.fn(sess, parsed)
            if status:
                return status
        sess.save_if_changed()
        return 0
    except _HelpRequest as h:
        _out(h.text.strip("\n"))
        return 0
    except _UsageError as e:
        sys.stderr.write("aemp: %s\n" % e)
        return 2
    except _Fail as e:
        sys.stderr.write("aemp: %s\n" % e)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("aemp: interrupted\n")
        return 130


if __name__ == "__main__":
    # `python -m aemp_green.cli`: let `import aemp_green.cli` (aemp restart) find this module
    sys.modules.setdefault("aemp_green.cli", sys.modules[__name__])
    sys.exit(main())
