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
  ``db``, ``dbmon``, ``restart``, ``ps``, ``links``, ``top``) start a temporary node ``aemp/%n/%u`` with the profile ``aemp``
  (``--profile``), do their job within ``--timeout`` seconds (5) and exit with status 1 and a
  message when the network or the port cannot be reached. ``run`` runs a node until SIGINT or
  SIGTERM. These come last in a chain.
* Arguments that start with ``[``, ``{`` or ``"`` are JSON; if the very first argument starts with
  ``[`` it is a JSON array that replaces all the arguments.
* Usage errors (unknown subcommand, wrong arguments, bad values) exit with status 2.

The per-subcommand help texts are docopt usage documents (``aemp help SUBCOMMAND``); docopt parses
each subcommand's arguments, a small left-to-right loop does the chaining.

The program, by module (each imports only the ones before it, tests/test_lint.py LAYERS):

* ``cli/base.py``: what every subcommand module uses: the registry (the ``@command``
  decorator), ``UsageError`` (status 2) and ``Fail`` (status 1), argument values (``Arg``, the
  JSON rule), output (``out``, ``warn``, ``dumps``) and the rc file ``Session``;
* ``cli/settings.py``: the subcommands that edit or print the configuration;
* ``cli/run.py``: ``aemp run``, and ``restart``, which ``aemp restart`` asks a node to call;
* ``cli/talk.py``: the subcommands that talk to a network from a temporary node, and their
  machinery (``Talk``, the ``@talking`` decorator);
* ``cli/inspect.py``: ``ps``, ``links`` and ``top``, which look inside a node (introspection);
* ``cli/__init__.py`` (this module): ``main``: the global options, the top-level help, parsing
  the chain of subcommands (docopt), running it, exit statuses and error printing;
* ``cli/__main__.py``: ``python -m aemp_green.cli``.

Importing ``aemp_green.cli`` imports the package ``aemp_green`` (and gevent) first, as Python
does for any submodule, so the cli modules import what they use at the top: a function-level
import would not make ``aemp gensecret`` any faster.

To add a module of subcommands (say ``cli/inspect.py``):

1. write the subcommands, each a function ``fn(sess, a)`` decorated with
   ``@command(NAME, ..., doc=USAGE_DOC)`` from ``.base`` (see its docstring); a subcommand that
   talks to the network is ``fn(talk, a)`` under ``@command(..., final=True, options=True)`` and
   ``@talking`` from ``.talk``, with ``TALK_OPTIONS`` at the end of its doc;
2. import the module below, in ``from . import ...``: that registers its subcommands;
3. add its lines to ``_GROUPS`` (the summary ``aemp --help`` prints);
4. add ``"cli.inspect"`` to LAYERS in tests/test_lint.py, after the cli modules it imports
   and before ``"cli"``; document the subcommands in docs/cli.md, test them in tests/.

Example::

    from aemp_green.cli import main
    main(["gensecret", "profile", "seed", "binds", "127.0.0.1:4040", "nodeid", "seed"])
"""

import json
import logging
import os
import re
import sys
from typing import Any

import docopt

from aemp_green import _report
from aemp_green._version import __version__

from . import inspect, run, settings, talk  # noqa: F401 - importing them registers their subcommands
from .base import (
    COMMANDS,
    Arg,
    Command,
    Fail,
    HelpRequest,
    Parsed,
    Session,
    UsageError,
    command,
    lookup,
    out,
    parse_timeout,
)

__all__ = ["main"]

#: the registry under its name from before the split (tests/test_cli.py reads it)
_COMMANDS = COMMANDS

#: ``aemp restart`` asks an aemp_green node to call ``aemp_green.cli._restart`` (run.RESTART_FUNC)
_restart = run.restart


# =============================================================================================
# logging from the AEMP environment variables


def _log_level(environ: Any) -> int:
    """Python log level for ``PERL_ANYEVENT_VERBOSE`` (or ``AE_VERBOSE``), AnyEvent's 0-9 scale."""
    return _report.log_level(environ)


def _setup_logging() -> None:
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
# the command line: JSON arguments, help


def _tokens(argv: list[Any]) -> list[Arg]:
    """Turn ``argv`` into ``Arg`` objects (the first-argument JSON array rule included)."""
    if argv and isinstance(argv[0], str) and argv[0].startswith("["):
        try:
            values = json.loads(argv[0])
        except ValueError as e:
            raise UsageError(
                "the first argument %r is not a valid JSON array: %s" % (argv[0], e)
            ) from None
        if not isinstance(values, list):
            raise UsageError("the first argument must be a JSON array")
        return [Arg(v if isinstance(v, str) else json.dumps(v), v) for v in values] + [
            Arg(a) for a in argv[1:]
        ]
    return [Arg(a) for a in argv]


@command(
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
def _cmd_help(sess: Session, a: Parsed) -> None:
    arg = a["<subcommand>"]
    if arg is None:
        out(_top_doc().strip("\n"))
        return
    cmd = lookup(arg.raw)
    if cmd is None:
        raise UsageError("help: unknown subcommand %r (see `aemp --help`)" % arg.raw)
    out(cmd.doc.strip("\n"))


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
            ("ps NODE", "the ports of a node (messages handled, mailboxes)"),
            ("links NODE", "the links of a node (traffic, write buffer, RTT)"),
            ("top NODE", "live view of a node's busiest ports and links"),
        ),
    ),
)


def _top_doc() -> str:
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


_OPTS_WITH_VALUE = ("--timeout", "--profile", "--limit", "--sort", "--interval", "--rows")


def _split_options(
    toks: list[Arg], with_value: tuple[str, ...] = _OPTS_WITH_VALUE
) -> tuple[list[str], int]:
    """Leading option tokens (raw strings, for docopt) and the index where arguments start."""
    lead: list[str] = []
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
                raise UsageError("option %s needs a value" % raw)
            lead.append(toks[i].raw)
            i += 1
    return lead, i


def _unknown_option(lead: list[str], known: tuple[str, ...]) -> str | None:
    """The first option in ``lead`` that is no (prefix of a) known option, or None."""
    for raw in lead:
        if raw.startswith("-") and raw != "-":
            name = raw.split("=", 1)[0]
            if not any(k == name or (name.startswith("--") and k.startswith(name)) for k in known):
                return name
    return None


_CMD_OPTIONS = ("--timeout", "--profile", "--help", "-h")
_TOP_OPTIONS = _CMD_OPTIONS + ("--version",)


def _mask(n: int, start: int = 0) -> list[str]:
    return ["\x01%d" % k for k in range(start, start + n)]


def _unmask(value: Any, toks: list[Arg]) -> Any:
    if isinstance(value, str) and value.startswith("\x01"):
        return toks[int(value[1:])]
    if isinstance(value, list):
        return [_unmask(v, toks) for v in value]
    return value


def _docopt(doc: str, argv: list[str]) -> Any:
    """docopt-ng without its exits: returns the dict, raises docopt.DocoptExit on bad input."""
    return docopt.docopt(doc, argv, default_help=False, options_first=True)


def _usage_section(doc: str) -> str:
    m = re.search(r"^Usage:\n(?:[ \t].*\n?)*", doc, re.M)
    return m.group(0).rstrip("\n") if m else ""


def _arg_count_problem(cmd: Command, lead: list[str], args: list[Arg]) -> str:
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


def _parse_command(cmd: Command, toks: list[Arg]) -> Parsed:
    """Parse the arguments of one subcommand with its docopt document; returns a dict."""
    if toks and toks[0].raw in ("-h", "--help"):
        raise HelpRequest(cmd.doc)
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
        raise UsageError("%s: %s\n%s" % (cmd.name, detail, _usage_section(cmd.doc))) from None
    if res.get("--help"):
        raise HelpRequest(cmd.doc)
    out = {k: _unmask(v, args) for k, v in res.items()}
    if out.get("--timeout") is not None:
        parse_timeout(out["--timeout"])
    return out


def _parse_chain(toks: list[Arg]) -> list[tuple[Command, Parsed]]:
    """Split the subcommand chain into [(cmd, parsed args)], checking everything first."""
    steps: list[tuple[Command, Parsed]] = []
    i = 0
    while i < len(toks):
        name = toks[i].raw
        cmd = lookup(name)
        if cmd is None:
            after = " (after %s)" % steps[-1][0].name if steps else ""
            raise UsageError("unknown subcommand %r%s; see `aemp --help`" % (name, after))
        rest = toks[i + 1 :]
        if rest and rest[0].raw in ("-h", "--help"):
            raise HelpRequest(cmd.doc)
        if cmd.final:
            mine, i = rest, len(toks)
        else:
            mine = rest[: cmd.nargs]
            i += 1 + cmd.nargs
        steps.append((cmd, _parse_command(cmd, mine)))
    return steps


def _parse_top(toks: list[Arg]) -> tuple[Any, dict[str, Any], list[Arg]]:
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
        raise UsageError("%s\n%s" % (first, _usage_section(doc))) from None
    if res.get("--help"):
        raise HelpRequest(doc)
    gopts: dict[str, Any] = {"timeout": None, "profile": None}
    if res.get("--timeout") is not None:
        gopts["timeout"] = parse_timeout(res["--timeout"])
    if res.get("--profile") is not None:
        if not res["--profile"]:
            raise UsageError("--profile needs a profile name")
        gopts["profile"] = res["--profile"]
    return res, gopts, chain


def main(argv: list[str] | None = None) -> int:
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
            out("aemp_green %s" % __version__)
            return 0
        if not chain:
            raise UsageError(
                "no subcommand given\n%s\n(see `aemp --help`)" % _usage_section(_top_doc())
            )
        gopts["argv"] = list(argv)
        steps = _parse_chain(chain)
        sess = Session(gopts)
        for cmd, parsed in steps:
            if cmd.final:
                sess.save_if_changed()
            status = cmd.fn(sess, parsed)
            if status:
                return status
        sess.save_if_changed()
        return 0
    except HelpRequest as h:
        out(h.text.strip("\n"))
        return 0
    except UsageError as e:
        sys.stderr.write("aemp: %s\n" % e)
        return 2
    except Fail as e:
        sys.stderr.write("aemp: %s\n" % e)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("aemp: interrupted\n")
        return 130
