"""What every ``aemp`` subcommand module uses: the registry, errors, argument values, output,
and the rc file session.

A subcommand is a function ``fn(sess, a)`` registered with :func:`command`: ``sess`` is the
:class:`Session` (the rc file, the section settings go to, the global options), ``a`` the dict
docopt made of the subcommand's arguments (values are :class:`Arg`). It returns None or 0 on
success, another exit status to stop the chain there, or raises :class:`UsageError` (status 2)
or :class:`Fail` (status 1); ``aemp_green.cli.main`` prints those as ``aemp: <message>``.

Example::

    from aemp_green.cli.base import command, out

    @command("hello", final=True, doc='''
    Print a greeting.

    Usage:
      aemp hello [<name>]

    Example:
      aemp hello world
    ''')
    def _cmd_hello(sess, a):
        out("hello %s" % (a["<name>"].value if a["<name>"] else "there"))
"""

import json
import logging
import sys
from typing import Any, Callable, NamedTuple

from aemp_green import config
from aemp_green.exceptions import ConfigError

__all__ = [
    "logger",
    "UsageError",
    "Fail",
    "HelpRequest",
    "Arg",
    "Parsed",
    "json_arg",
    "dumps",
    "out",
    "warn",
    "str_arg",
    "kv_pairs",
    "parse_timeout",
    "Session",
    "Command",
    "CommandFn",
    "COMMANDS",
    "command",
    "lookup",
]

#: the one logger of the ``aemp`` program (its name shows in the log lines of ``aemp run``)
logger = logging.getLogger("aemp_green.cli")


# =============================================================================================
# errors


class UsageError(Exception):
    """Bad command line: printed as ``aemp: <message>``, exit status 2.

    Example::

        raise UsageError("setcert: cannot read node.pem: no such file")
    """


class Fail(Exception):
    """The subcommand could not do its job: printed as ``aemp: <message>``, exit status 1.

    Example::

        raise Fail("cannot reach node seed: connect timeout")
    """


class HelpRequest(Exception):
    """``--help`` somewhere in the chain: print ``text`` and exit 0 without doing anything.

    Example::

        raise HelpRequest(cmd.doc)
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# =============================================================================================
# argument values and output


def json_arg(raw: str) -> Any:
    """AEMP's rule: an argument starting with ``[``, ``{`` or ``"`` is JSON.

    Example::

        json_arg('[1, 2]')    # [1, 2]
        json_arg("seed")      # 'seed'
    """
    if raw[:1] in ('[', '{', '"'):
        try:
            return json.loads(raw)
        except ValueError as e:
            raise UsageError("argument %r is not valid JSON: %s" % (raw, e)) from None
    return raw


_UNSET = object()


class Arg:
    """One command-line argument: ``raw`` as typed, ``value`` with the JSON rule applied.

    Example::

        Arg('{"n": 1}').value    # {'n': 1}
    """

    __slots__ = ("raw", "_value")

    def __init__(self, raw: str, value: Any = _UNSET) -> None:
        self.raw = raw
        self._value = value

    @property
    def value(self) -> Any:
        if self._value is _UNSET:
            self._value = json_arg(self.raw)
        return self._value

    def __repr__(self) -> str:
        return "Arg(%r)" % (self.raw,)


#: what docopt made of a subcommand's arguments: ``{"<port>": Arg, "<arg>": [Arg...], ...}``
Parsed = dict[str, Any]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    return repr(obj)


def dumps(value: Any, pretty: bool = False) -> str:
    """``value`` as JSON text; ``pretty`` is Perl aemp's layout (indent 3, ``" : "``, sorted).

    Example::

        dumps({"b": 1, "a": b"x"})    # '{"b": 1, "a": "x"}'
    """
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


def out(text: str) -> None:
    """Print one line of a subcommand's result on stdout (flushed at once).

    Example::

        out("message sent successfully")
    """
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def warn(text: str) -> None:
    """Print ``aemp: warning: <text>`` on stderr; the subcommand goes on.

    Example::

        warn("there is no profile 'lab'")
    """
    sys.stderr.write("aemp: warning: %s\n" % text)
    sys.stderr.flush()


def str_arg(arg: Arg, what: str) -> str:
    """The value of ``arg``, which must be a non-empty string (else a usage error naming ``what``).

    Example::

        name = str_arg(a["<name>"], "the profile name")
    """
    value = arg.value
    if not isinstance(value, str) or not value:
        raise UsageError("%s must be a non-empty string, not %r" % (what, arg.raw))
    return value


def kv_pairs(keys: list[Arg] | None, values: list[Arg] | None) -> dict[str, Any]:
    """The ``(<key> <value>)...`` arguments as a dict (the keys must be names).

    Example::

        kv = kv_pairs(a["<key>"], a["<value>"])    # {"profile": "seed", "force": "1"}
    """
    kv = {}
    for k, v in zip(keys or [], values or []):
        key = k.value
        if not isinstance(key, str) or not key:
            raise UsageError("configuration keys must be names, not %r" % k.raw)
        kv[key] = v.value
    return kv


def parse_timeout(text: Any) -> float:
    """The value of a ``--timeout`` option: a positive finite number of seconds.

    Example::

        parse_timeout("2.5")    # 2.5
    """
    try:
        t = float(text)
    except (TypeError, ValueError):
        t = -1
    if not t > 0 or t == float("inf"):
        raise UsageError("--timeout must be a positive number of seconds, not %r" % (text,))
    return t


# =============================================================================================
# the rc file session (what the settings subcommands edit)


class Session:
    """The rc file loaded once, the section settings go to, the global options.

    ``gopts`` holds ``timeout`` and ``profile`` (the global options, None when not given) and
    ``argv`` (the whole command line, for ``aemp run``'s restart).

    Example::

        sess = Session({"timeout": None, "profile": None, "argv": []})
        sess.sect()["secret"] = "s3cret"
        sess.save_if_changed()
    """

    def __init__(self, gopts: dict[str, Any]) -> None:
        self.gopts = gopts
        self.path = config.rc_path()
        self.section: str | None = None  # None: the rc top level; else a profile name
        self._rc: dict[str, Any] | None = None
        self._orig: str | None = None

    @property
    def rc(self) -> dict[str, Any]:
        """The rc file's contents (read on first use; an unreadable file is a :class:`Fail`)."""
        if self._rc is None:
            try:
                self._rc = config.load_rc(self.path)
            except ConfigError as e:
                raise Fail("cannot read the rc file: %s" % e) from None
            self._orig = config.dumps_rc(self._rc)
        return self._rc

    def sect(self, create: bool = True) -> Any:
        """The dict the settings edit (None when ``create`` is false and it does not exist)."""
        rc = self.rc
        if self.section is None:
            return rc
        table = rc.get("profile")
        if not create and (not isinstance(table, dict) or self.section not in table):
            return None
        try:
            sect = config.profile_section(rc, self.section)
        except ConfigError as e:
            raise Fail(str(e)) from None
        if not isinstance(sect, dict):
            raise Fail("profile %r in the rc file is not an object" % self.section)
        return sect

    def where(self) -> str:
        """Where the settings go, for messages: ``the top level`` or ``profile 'NAME'``."""
        return "the top level" if self.section is None else "profile %r" % self.section

    def save_if_changed(self) -> None:
        """Write the rc file (atomically, ``<file>~`` kept) if anything in it changed."""
        if self._rc is None:
            return
        text = config.dumps_rc(self._rc)
        if text != self._orig:
            try:
                config.save_rc(self._rc, self.path)
            except OSError as e:
                raise Fail("cannot write the rc file %s: %s" % (self.path, e)) from None
            self._orig = text
            logger.debug("rc file %s written", self.path)


# =============================================================================================
# the subcommand registry

#: a subcommand: ``fn(sess, a)`` returns None/0 (go on) or an exit status (stop there)
CommandFn = Callable[[Session, Parsed], int | None]


class Command(NamedTuple):
    """One registered subcommand (see :func:`command`)."""

    name: str
    nargs: int
    final: bool
    options: bool
    fn: CommandFn
    doc: str


#: subcommand name -> Command, filled by the :func:`command` decorators of the modules
#: ``aemp_green.cli`` imports
COMMANDS: dict[str, Command] = {}


def command(
    name: str, nargs: int = 0, final: bool = False, options: bool = False, doc: str = ""
) -> Callable[[CommandFn], CommandFn]:
    """Register ``fn(sess, a)`` as the subcommand ``name``.

    ``doc`` is the help text and the docopt usage document (``Usage:`` with ``aemp NAME ...``).
    A chainable subcommand takes exactly ``nargs`` arguments; a ``final`` one takes the rest of
    the command line (docopt checks the count) and ends the chain; ``options`` lets it take
    ``--timeout``/``--profile``/``--help`` before its arguments.

    Example::

        @command("setsecret", 1, doc=SETSECRET_DOC)
        def _cmd_setsecret(sess, a):
            sess.sect()["secret"] = str_arg(a["<secret>"], "the secret")
    """

    def deco(fn: CommandFn) -> CommandFn:
        COMMANDS[name] = Command(name, nargs, final, options, fn, doc.strip("\n") + "\n")
        return fn

    return deco


def lookup(name: Any) -> Command | None:
    """The registered subcommand for ``name`` (``X`` is ``setX``), or None.

    Example::

        lookup("secret").name    # 'setsecret'
    """
    if not isinstance(name, str):
        return None
    if name in COMMANDS:
        return COMMANDS[name]
    return COMMANDS.get("set" + name) if not name.startswith(("set", "del", "_")) else None
