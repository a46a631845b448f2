"""The ``aemp`` subcommands that edit or print the configuration (the AEMP rc file).

Every one of them works on the :class:`~aemp_green.cli.base.Session`: settings go to the rc top
level, or to the profile named by an earlier ``profile NAME`` in the same call; ``aemp_green.cli``
writes the file once at the end, and only if something changed. Secret and cert (``gensecret``,
``setsecret``, ``gencert``, ``setcert``, ...), the list settings (``setbinds``, ``addseed``, ...,
made by :func:`_make_list_commands`), the tuning keys (``setmonitor_timeout``, ..., made by
:func:`_make_tuning_commands`), ``setnodeid``, profiles (``profile``, ``delprofile``,
``setparent``) and what prints them (``showprofile``, ``showconfig``, ``_resolve``).

Example::

    from aemp_green.cli import main
    main(["profile", "seed", "setbinds", "127.0.0.1:4040", "showprofile", "seed"])
"""

import json
import os
import subprocess
import tempfile
import textwrap
from typing import Any

from aemp_green import config
from aemp_green.exceptions import ConfigError

from .base import (
    Arg,
    Fail,
    Parsed,
    Session,
    UsageError,
    command,
    dumps,
    kv_pairs,
    out,
    str_arg,
    warn,
)

__all__: list[str] = []  # nothing to import: the subcommands are registered in base.COMMANDS

_SECTION_NOTE = (
    "It applies to the rc top level, or to the profile named by an earlier "
    "`profile NAME` in the same call."
)


# ---------------------------------------------------------------------------- secret and cert


@command(
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
def _cmd_gensecret(sess: Session, a: Parsed) -> None:
    sess.sect()["secret"] = config.gen_secret()


@command(
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
def _cmd_setsecret(sess: Session, a: Parsed) -> None:
    sess.sect()["secret"] = str_arg(a["<secret>"], "the secret")


@command(
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
def _cmd_delsecret(sess: Session, a: Parsed) -> None:
    _delete_key(sess, "secret")


def _gencert() -> str:
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
            raise Fail(
                "gencert needs the openssl command, which is not installed (not found "
                "on PATH); install OpenSSL, or make a PEM file with a key and a "
                "certificate elsewhere and store it with `aemp setcert FILE`"
            ) from None
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Fail("gencert: running openssl failed: %s" % e) from None
        if proc.returncode != 0:
            raise Fail(
                "gencert: openssl failed (exit status %d): %s"
                % (proc.returncode, proc.stderr.decode("utf-8", "replace").strip())
            )
        with open(key, encoding="ascii") as f:
            pem = f.read()
        with open(crt, encoding="ascii") as f:
            pem += f.read()
    return pem


@command(
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
def _cmd_gencert(sess: Session, a: Parsed) -> None:
    sess.sect()["cert"] = _gencert()


@command(
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
def _cmd_setcert(sess: Session, a: Parsed) -> None:
    path = str_arg(a["<file>"], "the cert file name")
    try:
        with open(path, encoding="utf-8") as f:
            pem = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError("setcert: cannot read %s: %s" % (path, e)) from None
    if "-----BEGIN" not in pem or "CERTIFICATE-----" not in pem or "PRIVATE KEY-----" not in pem:
        raise UsageError("setcert: %s must hold a private key and a certificate in PEM form" % path)
    sess.sect()["cert"] = pem


@command(
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
def _cmd_delcert(sess: Session, a: Parsed) -> None:
    _delete_key(sess, "cert")


# ---------------------------------------------------------------------------- generic settings


def _fill(text: str) -> str:
    return textwrap.fill(text, width=95, break_on_hyphens=False, break_long_words=False)


def _validate(key: str, value: Any) -> Any:
    try:
        return config.SETTINGS_BY_NAME[key].validator(key, value)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _delete_key(sess: Session, key: str) -> None:
    sect = sess.sect(create=False)
    if sect is None or key not in sect:
        warn("%s: no %s is set there" % (sess.where(), key))
        return
    del sect[key]


def _list_arg(key: str, arg: Arg) -> list[Any]:
    """A list value: a JSON array, or a comma-separated string."""
    value = arg.value
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, list):
        raise UsageError(
            "%s: expected a JSON array or a comma-separated list, not %r" % (key, arg.raw)
        )
    _validate(key, value)
    return value


def _items_arg(key: str, arg: Arg) -> list[Any]:
    """The entries named by an add/del argument (a string, comma-separated, or JSON)."""
    value = arg.value
    if key == "services" and isinstance(value, list):
        items: list[Any] = [value]  # one ["Pkg::func", args...] entry
    elif isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise UsageError("%s: expected a string or a JSON array, not %r" % (key, arg.raw))
    if not items:
        raise UsageError("%s: nothing given" % key)
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


def _make_list_commands(
    key: str, item: str, meta: str, what: str, entry: str, ex_set: str, ex_json: str, ex_add: str
) -> None:
    several = "adds" if key == "services" else "(or a JSON array) adds"

    def setter(sess: Session, a: Parsed) -> None:
        sess.sect()[key] = _list_arg(key, a["<%s>" % key])

    def deleter(sess: Session, a: Parsed) -> None:
        _delete_key(sess, key)

    def adder(sess: Session, a: Parsed) -> None:
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

    def remover(sess: Session, a: Parsed) -> None:
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
                warn("%s: %s is not in %s" % (sess.where(), json.dumps(it), key))
        if sect is not None and key in sect:
            sect[key] = current

    command(
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
    command(
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
    command(
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
    command(
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


def _make_tuning_commands(key: str, meta: str, example: str) -> None:
    setting = config.SETTINGS_BY_NAME[key]
    default = json.dumps(setting.default)
    kind = (
        "a JSON array or a comma-separated list"
        if key in _LIST_TUNING
        else "true/false, 1/0, yes/no or on/off"
        if meta == "<bool>"
        else "a positive number"
    )

    def setter(sess: Session, a: Parsed) -> None:
        arg = a[meta]
        if key in _LIST_TUNING:
            value = _list_arg(key, arg)  # stored as given (Perl nodes may want "storable")
        else:
            value = _validate(key, arg.value)
        sess.sect()[key] = value

    def deleter(sess: Session, a: Parsed) -> None:
        _delete_key(sess, key)

    command(
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
    command(
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


@command(
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
def _cmd_setnodeid(sess: Session, a: Parsed) -> None:
    sess.sect()["nodeid"] = _validate("nodeid", str_arg(a["<nodeid>"], "the node ID"))


@command(
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
def _cmd_delnodeid(sess: Session, a: Parsed) -> None:
    _delete_key(sess, "nodeid")


# ---------------------------------------------------------------------------- profiles


@command(
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
def _cmd_profile(sess: Session, a: Parsed) -> None:
    sess.section = str_arg(a["<name>"], "the profile name")


@command(
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
def _cmd_delprofile(sess: Session, a: Parsed) -> None:
    name = str_arg(a["<name>"], "the profile name")
    table = sess.rc.get("profile")
    if not isinstance(table, dict) or name not in table:
        warn("there is no profile %r" % name)
        return
    del table[name]
    if not table:
        del sess.rc["profile"]
    if sess.section == name:
        sess.section = None


@command(
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
def _cmd_setparent(sess: Session, a: Parsed) -> None:
    parent = str_arg(a["<parent>"], "the parent profile name")
    if sess.section is None:
        warn(
            "a parent only has an effect inside a profile (use `profile NAME setparent %s`)"
            % parent
        )
    sess.sect()["parent"] = parent
    if sess.section is not None:
        try:
            config.find_profile(sess.rc, sess.section)
        except ConfigError as e:
            raise UsageError("setparent: %s" % e) from None


@command(
    "delparent",
    doc="""
Remove the parent of the current profile.

Usage:
  aemp delparent

Example:
  aemp profile seed2 delparent
""",
)
def _cmd_delparent(sess: Session, a: Parsed) -> None:
    _delete_key(sess, "parent")


# ---------------------------------------------------------------------------- showing


@command(
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
def _cmd_showprofile(sess: Session, a: Parsed) -> None:
    name = str_arg(a["<name>"], "the profile name")
    table = sess.rc.get("profile")
    if not isinstance(table, dict) or name not in table:
        warn("there is no profile %r" % name)
        out("{}")
        return
    out(dumps(table[name], pretty=True))


@command(
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
def _cmd_showconfig(sess: Session, a: Parsed) -> None:
    name_arg = a["<name>"]
    name = config.hostname() if name_arg is None else str_arg(name_arg, "the profile name")
    kv = kv_pairs(a["<key>"], a["<value>"])
    try:
        cfg = config.find_profile(sess.rc, name, **kv)
    except ConfigError as e:
        raise Fail("showconfig: %s" % e) from None
    out(dumps(cfg, pretty=True))


@command(
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
def _cmd_resolve(sess: Session, a: Parsed) -> None:
    addrs = [str_arg(x, "an address") for x in a["<address>"]]
    try:
        resolved = config.expand_binds(addrs)
    except ConfigError as e:
        raise UsageError("_resolve: %s" % e) from None
    out(
        dumps(
            [
                ("[%s]" % h if ":" in h else h) + ":" + ("*" if p is None else str(p))
                for h, p in resolved
            ]
        )
    )
