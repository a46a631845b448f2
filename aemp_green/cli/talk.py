"""The ``aemp`` subcommands that talk to a running network from a temporary node.

:func:`talking` runs a subcommand ``fn(talk, a)`` with a :class:`Talk`: a temporary node
``aemp/%n/%u`` configured from the profile ``aemp`` (``--profile``) that is shut down when the
subcommand ends, the deadline (``--timeout``, 5 s) and request helpers (:meth:`Talk.ask`,
:meth:`Talk.reach`). The subcommands: ``snd``, ``cal``, ``mon``, ``eval``, ``trace``, ``shell``,
``nodes``, ``db``, ``dbmon``, ``restart``. Another module of talking subcommands imports
:func:`talking`, :class:`Talk`, :data:`TALK_OPTIONS` and the argument helpers from here.

Example::

    from aemp_green.cli import main
    main(["--timeout", "2", "cal", "seed", "time"])    # prints the seed node's clock
"""

import code
import fcntl
import re
import signal
import sys
import time
from typing import Any, Callable, overload

import gevent
from gevent.event import AsyncResult, Event
from gevent.fileobject import FileObjectPosix

import aemp_green
from aemp_green import config
from aemp_green.exceptions import ConfigError

from .base import (
    Arg,
    CommandFn,
    Fail,
    Parsed,
    Session,
    UsageError,
    command,
    dumps,
    logger,
    out,
    parse_timeout,
    str_arg,
)
from .run import RESTART_FUNC

__all__ = [
    "TALK_OPTIONS",
    "Talk",
    "talking",
    "stop_event",
    "secs",
    "unreachable",
    "is_node_port",
    "reason_failure",
    "port_arg",
    "node_arg",
]

DEFAULT_TIMEOUT = 5.0
TEMP_PROFILE = "aemp"
TEMP_NODEID = "aemp/%n/%u"
_FAMILY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_:]*\Z")

#: the options section of every talking subcommand's help (``{options}`` in its doc)
TALK_OPTIONS = """
Options:
  --timeout=<seconds>  Give up after this many seconds (default: the global
                       option, else 5).
  --profile=<name>     Profile the temporary node is configured with (default:
                       the global option, else "aemp").
  -h, --help           Show this help.
"""


def _dynamic_binds(binds: Any) -> list[str]:
    """The hosts of ``binds`` with a free port each (a temporary node must not take a seed's)."""
    addrs = []
    for b in binds if isinstance(binds, list) else [binds]:
        host, _port = config.parse_address(b)
        addrs.append(("[%s]" % host if ":" in host else host) + ":*")
    return addrs


class Talk:
    """A temporary node ``aemp/%n/%u``, the deadline, and the request helpers.

    ``timeout`` is the subcommand's ``--timeout`` (or the global one, else 5 s; ``explicit``
    tells whether one was given), ``profile`` the temporary node's profile. :func:`talking`
    makes one, starts it before the subcommand and stops it after.

    Example::

        talk = Talk(sess, a)
        talk.start()
        try:
            talk.reach("seed")
        finally:
            talk.stop()
    """

    def __init__(self, sess: Session, a: Parsed) -> None:
        opts = dict(sess.gopts)
        if a.get("--timeout") is not None:
            opts["timeout"] = parse_timeout(a["--timeout"])
        if a.get("--profile") is not None:
            opts["profile"] = a["--profile"]
        self.explicit = opts["timeout"] is not None
        self.timeout = opts["timeout"] if self.explicit else DEFAULT_TIMEOUT
        self.profile = opts["profile"] or TEMP_PROFILE
        self.sess = sess
        self.deadline = 0.0  # set by start()
        self.cfg: dict[str, Any] = {}  # the temporary node's configuration, set by start()

    def start(self) -> None:
        """Configure the temporary node (a :class:`Fail` if it cannot start); start the clock."""
        try:
            eff = config.find_profile(self.sess.rc, self.profile)
            binds = _dynamic_binds(eff.get("binds") or ["*"])
            extra = {}
            if self.explicit:
                # --timeout N: keep trying to reach a node for N s, not for the profile's
                # connect_interval (2 s by default), after which every monitor would fire
                extra["connect_interval"] = max(
                    self.timeout, float(eff.get("connect_interval") or 0)
                )
            self.cfg = aemp_green.configure(
                self.profile, nodeid=TEMP_NODEID, binds=binds, force=True, **extra
            )
        except (ConfigError, OSError) as e:
            raise Fail(
                "cannot start the temporary node (profile %r): %s" % (self.profile, e)
            ) from None
        self.deadline = time.monotonic() + self.timeout
        logger.debug("temporary node %s (profile %s)", aemp_green.NODE(), self.profile)

    def left(self) -> float:
        """Seconds left until the deadline (0 when it passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def stop(self) -> None:
        """Shut the temporary node down (its links are flushed and closed)."""
        aemp_green.shutdown()

    def need_seeds(self) -> None:
        """A :class:`Fail` unless seeds are configured (the database lives on them)."""
        if not self.cfg.get("seeds"):
            raise Fail(
                "no seeds are configured (profile %r): the node database lives on the "
                "seed nodes (set them with `aemp setseeds HOST:PORT`)" % self.profile
            )

    def ask(self, target: str, msg: list[Any], timeout: float | None = None) -> tuple[str, Any]:
        """Send ``msg + [reply port]`` to ``target``; return ("reply", values),
        ("died", reason) or ("timeout", None).

        A node port (``node`` or ``node#``) only counts transport errors as death.

        Example::

            kind, value = talk.ask("seed", ["time"])    # ("reply", (1764806400.25,))
        """
        res = AsyncResult()
        node_port = is_node_port(target)

        def on_reply(*values: Any) -> None:
            if not res.ready():
                res.set(("reply", values))

        def on_died(*reason: Any) -> None:
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

    def reach(self, node: str) -> None:
        """Round trip to ``node`` (the ``time`` request); raises Fail when it is unreachable.

        Example::

            talk.reach("seed")    # or: aemp: cannot reach node seed: connect timeout
        """
        kind, value = self.ask(node, ["time"])
        if kind == "reply":
            return
        if kind == "died":
            raise Fail(unreachable(node, value))
        raise Fail("cannot reach node %s: no answer within %s s" % (node, secs(self.timeout)))


def secs(t: float) -> str:
    """Seconds as messages show them.

    Example::

        secs(5.0)    # '5'
    """
    return "%g" % t


def unreachable(node: str, reason: Any) -> str:
    """The message for a node that cannot be reached, from a monitor ``reason``.

    Example::

        unreachable("seed", ["transport_error", "seed", "connect timeout"])
        # 'cannot reach node seed: connect timeout'
    """
    why = reason[2] if len(reason) > 2 else " ".join(map(str, reason[1:]))
    return "cannot reach node %s: %s" % (node, why)


def is_node_port(port: str) -> bool:
    """Whether ``port`` is a node's own port (``NODE`` or ``NODE#``), which cannot be monitored.

    Example::

        is_node_port("seed#")    # True
    """
    return "#" not in port or port.endswith("#")


def port_arg(arg: Arg) -> str:
    """A port ID argument (``NODE#NAME``, or a node ID for the node port).

    Example::

        port = port_arg(a["<port>"])
    """
    port = str_arg(arg, "the port ID")
    if port.startswith("#"):
        raise UsageError("%r is not a port ID (NODE#NAME)" % port)
    return port


def reason_failure(port: str, reason: Any) -> str | None:
    """The exit message for a monitor reason that means "not reached", or None.

    Example::

        reason_failure("seed#p", ["no_such_port"])    # 'no such port: seed#p'
    """
    if reason and reason[0] == "transport_error":
        return unreachable(reason[1] if len(reason) > 1 else port.partition("#")[0], reason)
    if reason and reason[0] == "no_such_port":
        return "no such port: %s" % port
    return None


#: a talking subcommand: ``fn(talk, a)``, returns None/0 or an exit status
TalkFn = Callable[[Talk, Parsed], int | None]
#: an argument check run before the temporary node starts (raises UsageError)
CheckFn = Callable[[Parsed], Any]


@overload
def talking(fn: TalkFn, check: CheckFn | None = None) -> CommandFn: ...


@overload
def talking(fn: None = None, check: CheckFn | None = None) -> Callable[[TalkFn], CommandFn]: ...


def talking(fn: TalkFn | None = None, check: CheckFn | None = None) -> Any:
    """Run ``fn(talk, a)`` with a started temporary node; always shut the node down.

    ``check(a)`` validates the arguments first (raising ``UsageError``), so that a bad
    argument never configures a node. Used bare (``@talking``) or with ``check``, under
    :func:`~aemp_green.cli.base.command`.

    Example::

        @command("ping", final=True, options=True, doc=PING_DOC)
        @talking(check=lambda a: node_arg(a["<node>"]))
        def _cmd_ping(talk, a):
            talk.reach(node_arg(a["<node>"]))
            out("pong")
            return 0
    """
    if fn is None:
        return lambda f: talking(f, check)
    talk_fn = fn

    def run(sess: Session, a: Parsed) -> int | None:
        if check is not None:
            check(a)
        talk = Talk(sess, a)
        talk.start()
        try:
            return talk_fn(talk, a)
        finally:
            talk.stop()

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def stop_event(seconds: float | None = None, res: AsyncResult | None = None) -> AsyncResult:
    """An AsyncResult (``res`` or a new one) set to "signal" on SIGINT/SIGTERM, and to
    "timeout" after ``seconds`` (unless it was set before).

    Example::

        what = stop_event(talk.left() if talk.explicit else None).get()
    """
    if res is None:
        res = AsyncResult()

    def fire(what: Any) -> None:
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


_handles: list[Any] = []  # signal watchers and timers of stop_event (alive until the process ends)


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking
def _cmd_snd(talk: Talk, a: Parsed) -> int:
    port = port_arg(a["<port>"])
    msg = [x.value for x in a["<arg>"]]
    node = port.partition("#")[0]
    died = []

    def on_died(*reason: Any) -> None:
        if not is_node_port(port) or (reason and reason[0] == "transport_error"):
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
        failure = reason_failure(port, died[0])
        if failure:
            raise Fail(
                failure + ("" if "cannot reach" in failure else " (the message was dropped)")
            )
    if kind == "died":
        raise Fail(unreachable(node, value))
    if kind == "timeout":
        raise Fail("cannot reach node %s: no confirmation within %s s" % (node, secs(talk.timeout)))
    out("message sent successfully")  # Perl's aemp prints the same confirmation
    return 0


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking
def _cmd_cal(talk: Talk, a: Parsed) -> int:
    port = port_arg(a["<port>"])
    msg = [x.value for x in a["<arg>"]]
    kind, value = talk.ask(port, msg)
    if kind == "reply":
        out(" ".join(v if isinstance(v, str) else dumps(v) for v in value))
        return 0
    if kind == "died":
        failure = reason_failure(port, value)
        raise Fail(failure or "port %s died before replying: %s" % (port, dumps(list(value))))
    raise Fail("no reply from %s within %s s" % (port, secs(talk.timeout)))


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking
def _cmd_mon(talk: Talk, a: Parsed) -> int:
    port = port_arg(a["<port>"])
    node = port.partition("#")[0]
    outcome = AsyncResult()  # ("died", reason), "signal" or "timeout"

    def died(*reason: Any) -> None:
        if not outcome.ready():
            outcome.set(("died", reason))

    def node_down(n: str, up: Any, *why: Any) -> None:
        if n == node and not up:
            died(*why)

    if is_node_port(port):
        guard = aemp_green.mon_nodes(node_down)
    else:
        guard = aemp_green.mon(port, died)
    try:
        if not outcome.ready():
            talk.reach(node)
        stop_event(talk.left() if talk.explicit else None, outcome)
        what = outcome.get()
    finally:
        guard.cancel()
    if what == "timeout":
        raise Fail("%s is still alive after %s s" % (port, secs(talk.timeout)))
    if what == "signal":
        raise Fail("interrupted; %s is still alive" % port)
    reason = list(what[1])
    out(dumps(reason))
    if is_node_port(port):
        return 0
    failure = reason_failure(port, reason)
    if failure:
        raise Fail(failure)
    return 0


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking
def _cmd_eval(talk: Talk, a: Parsed) -> int:
    node = node_arg(a["<node>"])
    expr = " ".join(x.raw for x in a["<expr>"])
    talk.reach(node)
    return _remote_eval(talk, node, expr, talk.left())


def node_arg(arg: Arg) -> str:
    """A node ID argument (a trailing ``#`` is dropped).

    Example::

        node = node_arg(a["<node>"])
    """
    node = str_arg(arg, "the node ID")
    return node[:-1] if node.endswith("#") else node


def _remote_eval(talk: Talk, node: str, expr: str, timeout: float, fatal: bool = True) -> int:
    kind, value = talk.ask(node, ["eval", expr], timeout=timeout)
    if kind == "reply":
        err, results = (value[0] if value else ""), list(value[1:])
        if isinstance(err, (bytes, bytearray)):
            err = bytes(err).decode("utf-8", "replace")
        if err:
            msg = "eval on %s failed: %s" % (node, str(err).rstrip("\n"))
            if fatal:
                raise Fail(msg)
            sys.stderr.write(msg + "\n")
            return 1
        out(dumps(results[0] if len(results) == 1 else results))
        return 0
    if kind == "died":
        msg = unreachable(node, value)
    else:
        msg = (
            "%s did not answer the eval request within %s s (nodes configured secure "
            "refuse eval)" % (node, secs(timeout))
        )
    if fatal:
        raise Fail(msg)
    sys.stderr.write("aemp: %s\n" % msg)
    return 1


def _is_yes(value: Any) -> bool:
    return value in (1, True, "1", b"1")


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking
def _cmd_trace(talk: Talk, a: Parsed) -> int:
    node = node_arg(a["<node>"])
    kind, value = talk.ask(node, ["can", "aemp_green_trace"])
    if kind == "died":
        raise Fail(unreachable(node, value))
    if kind == "timeout":
        raise Fail("cannot reach node %s: no answer within %s s" % (node, secs(talk.timeout)))
    if not (value and _is_yes(value[0])):
        raise Fail(
            "node %s cannot be traced: it does not know the aemp_green_trace request "
            "(not an aemp_green node?)" % node
        )

    def show(
        tag: Any = None, direction: Any = None, peer: Any = None, frame: Any = None, *_: Any
    ) -> None:
        if tag != "trace" or not isinstance(frame, list):
            return
        arrow = "<-" if direction == "SND" else "->"
        shown = [None if i == 0 and x == "" else x for i, x in enumerate(frame)]
        out("%s %s %s %s" % (direction, peer, arrow, dumps(shown)))

    tp = aemp_green.port(show)
    stop = stop_event(talk.left() if talk.explicit else None)

    def node_watch(n: str, up: Any, *why: Any) -> None:
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
        raise Fail("lost the connection to %s: %s" % (node, dumps(list(what[1]))))
    return 0


class _GreenConsole(code.InteractiveConsole):
    """An InteractiveConsole reading its input through a gevent file object (hub not blocked)."""

    def __init__(self, namespace: dict[str, Any], reader: Any, prompts: bool) -> None:
        super().__init__(namespace, filename="<aemp shell>")
        self._reader = reader
        self._prompts = prompts

    def raw_input(self, prompt: str = "") -> str:
        if self._prompts and prompt:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        line = self._reader.readline()
        if not line:
            raise EOFError
        return line.decode("utf-8", "replace").rstrip("\r\n")


def _stdin_reader() -> tuple[Any, Callable[[], None]]:
    """A gevent FileObjectPosix on fd 0 and a function restoring fd 0's flags afterwards."""
    fd = sys.stdin.fileno()
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    reader = FileObjectPosix(fd, "rb", close=False)

    def restore() -> None:
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        except OSError:
            pass

    return reader, restore


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking
def _cmd_shell(talk: Talk, a: Parsed) -> int:
    node = node_arg(a["<node>"]) if a["<node>"] is not None else None
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
                    % (aemp_green.NODE(), aemp_green.__version__)
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


def _family_arg(arg: Arg) -> str:
    family = str_arg(arg, "the family name")
    if not (family.startswith("'") or _FAMILY_RE.match(family)):
        raise UsageError(
            "bad family name %r: must match [A-Za-z][A-Za-z0-9_:]* (or be an "
            "internal family such as \"'l\")" % family
        )
    return family


def _db_family(talk: Talk, family: str) -> Any:
    talk.need_seeds()
    try:
        return aemp_green.db_family(family, timeout=talk.left())
    except aemp_green.Timeout:
        raise Fail(
            "cannot reach the network: no global node answered within %s s (seeds: %s)"
            % (secs(talk.timeout), ", ".join(talk.cfg.get("seeds") or []))
        ) from None


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking
def _cmd_nodes(talk: Talk, a: Parsed) -> int:
    nodes = dict(_db_family(talk, "'l") or {})
    nodes.pop(aemp_green.NODE(), None)
    out(dumps(nodes, pretty=True))
    return 0


@command(
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
{options}""".format(options=TALK_OPTIONS),
)
@talking(check=lambda a: _family_arg(a["<family>"]))
def _cmd_db(talk: Talk, a: Parsed) -> int:
    family = _family_arg(a["<family>"])
    out(dumps(_db_family(talk, family) or {}, pretty=True))
    return 0


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking(check=lambda a: _family_arg(a["<family>"]))
def _cmd_dbmon(talk: Talk, a: Parsed) -> int:
    family = _family_arg(a["<family>"])
    talk.need_seeds()
    first = Event()

    def changed(db: Any, added: Any = None, changed: Any = None, deleted: Any = None) -> None:
        db = db or {}
        out(
            dumps(
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
            raise Fail(
                "cannot reach the network: no global node answered within %s s "
                "(seeds: %s)" % (secs(talk.timeout), ", ".join(talk.cfg.get("seeds") or []))
            )
        stop = stop_event(talk.left() if talk.explicit else None)
        stop.get()
    finally:
        guard.cancel()
    return 0


@command(
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
""".format(options=TALK_OPTIONS),
)
@talking
def _cmd_restart(talk: Talk, a: Parsed) -> int:
    node = node_arg(a["<node>"])
    kind, value = talk.ask(node, ["can", "aemp_green_trace"])
    if kind == "died":
        raise Fail(unreachable(node, value))
    if kind == "timeout":
        raise Fail("cannot reach node %s: no answer within %s s" % (node, secs(talk.timeout)))
    func = RESTART_FUNC if value and _is_yes(value[0]) else "AnyEvent::Watchdog::Util::restart"
    # the node answered just above; the request goes last, because the node shuts its links
    # down as soon as it runs it (a round trip after it would race that); leaving the talking
    # node flushes the request out before closing the link
    aemp_green.snd_to_func(node, func)
    return 0
