"""The ``aemp`` subcommands that look inside a running node: ``ps``, ``links`` and ``top``.

They ask the node with ``aemp_green.introspect.info`` (the node-port request
``aemp_green/info``) from a temporary node, as the other talking subcommands do, and print
plain text tables, or JSON with ``--json``. ``top`` refreshes a terminal view until ``q`` or
Ctrl-C, restoring the terminal on the way out (docs/introspection.md).

Example::

    from aemp_green.cli import main
    main(["ps", "--limit=5", "seed"])
    main(["top", "--once", "--interval=0.5", "seed"])
"""

import os
import sys
import time
from typing import Any, Callable

import gevent
from gevent.event import AsyncResult

import aemp_green
from aemp_green.exceptions import AempError, NodeUnreachable, PortDied, Timeout
from aemp_green.introspect import IntrospectionRefused

from .base import Fail, Parsed, UsageError, command, dumps, out
from .talk import TALK_OPTIONS, Talk, node_arg, secs, stop_event, talking, unreachable

__all__ = ["fetch", "format_ps", "format_links", "format_top", "human_bytes", "human_age"]

_SORTS = ("handled", "mailbox", "age")


# =============================================================================================
# formatting


def human_bytes(n: Any) -> str:
    """``n`` bytes in a short form: ``512``, ``1.5K``, ``12M``, ``3.1G``.

    Example::

        >>> human_bytes(1536), human_bytes(999), human_bytes(12 * 1024 * 1024)
        ('1.5K', '999', '12M')
    """
    n = float(n or 0)
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            if unit == "":
                return "%d" % n
            return ("%.1f%s" if abs(n) < 10 else "%.0f%s") % (n, unit)
        n /= 1024
    return "%d" % n  # pragma: no cover


def human_age(s: Any) -> str:
    """Seconds as ``4.2s``, ``3m05s``, ``2h07m``, ``3d04h``.

    Example::

        >>> human_age(4.25), human_age(185), human_age(7620), human_age(273600)
        ('4.2s', '3m05s', '2h07m', '3d04h')
    """
    s = float(s or 0)
    if s < 60:
        return "%.1fs" % s
    m = int(s // 60)
    if m < 60:
        return "%dm%02ds" % (m, int(s) % 60)
    h = m // 60
    if h < 24:
        return "%dh%02dm" % (h, m % 60)
    return "%dd%02dh" % (h // 24, h % 24)


def _rate(x: Any) -> str:
    if x is None:
        return "-"
    x = float(x)
    if x >= 10000:
        return "%.0fk" % (x / 1000)
    if x >= 100:
        return "%.0f" % x
    return "%.1f" % x


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Columns padded to their widest cell: the first ``left`` columns left-aligned."""
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    lines = []
    for r in [head] + rows:
        cells = [
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _node_line(n: dict[str, Any]) -> str:
    r = n.get("rates") or {}
    return "node %s (pid %s, aemp_green %s, up %s%s): %d ports (%d greenlet), %d nodes up" % (
        n["node"],
        n["pid"],
        n["version"],
        human_age(n["uptime"]),
        ", global" if n.get("is_global") else "",
        n["ports"],
        n["greenlet_ports"],
        len(n["up_nodes"]),
    ) + "\nmessages/s: in %s, out %s, local %s" % (
        _rate(r.get("msgs_in")),
        _rate(r.get("msgs_out")),
        _rate(r.get("msgs_local")),
    )


def format_ps(node: dict[str, Any], ports: list[dict[str, Any]]) -> str:
    """The text of ``aemp ps``: the node line and one row per port.

    Example::

        print(format_ps(info(n, "node"), info(n, "ports", limit=20)))
    """
    rows = [
        [
            p["id"],
            p["kind"],
            str(p["mailbox"]),
            str(p["handled"]),
            human_age(p["age"]),
            str(len(p["monitors"])),
            str(p["monitored_by"]),
        ]
        for p in ports
    ]
    head = ["PORT", "KIND", "MAILBOX", "HANDLED", "AGE", "MONITORS", "MONITORED_BY"]
    return "\n".join([_node_line(node), ""] + _table(head, rows, left=2))


def _link_rows(links: list[dict[str, Any]], rates: dict[Any, tuple[float, float]]) -> list[Any]:
    rows = []
    for x in links:
        r = rates.get((x["peer"], x["since"]))
        rows.append(
            [
                x["peer"],
                x["addr"],
                x["direction"],
                x["framing"],
                x["auth"] + ("+tls" if x["tls"] else ""),
                str(x["msgs_in"]),
                str(x["msgs_out"]),
                human_bytes(x["bytes_in"]),
                human_bytes(x["bytes_out"]),
                human_bytes(x["write_buffer"]),
                "-" if x["rtt"] is None else "%.1fms" % (x["rtt"] * 1000),
                human_age(time.time() - x["since"]),
            ]
            + ([] if not rates else ["-", "-"] if r is None else [_rate(r[0]), _rate(r[1])])
        )
    return rows


_LINK_HEAD = [
    "PEER",
    "ADDR",
    "DIR",
    "FRAMING",
    "AUTH",
    "MSGS_IN",
    "MSGS_OUT",
    "BYTES_IN",
    "BYTES_OUT",
    "WBUF",
    "RTT",
    "UP",
]


def format_links(links: list[dict[str, Any]]) -> str:
    """The text of ``aemp links``: one row per link (``(no links)`` when there is none).

    Example::

        print(format_links(info(n, "links")))
    """
    if not links:
        return "(no links)"
    return "\n".join(_table(_LINK_HEAD, _link_rows(links, {}), left=5))


def format_top(
    snap: dict[str, Any],
    port_rates: dict[str, float],
    link_rates: dict[Any, tuple[float, float]],
    rows: int = 10,
    interval: float | None = None,
) -> str:
    """The text of one ``aemp top`` frame: the node, its busiest ports (messages handled per
    second since the last frame) and its links with their rates.

    Example::

        print(format_top(snap, {pid: 12.5}, {("b", since): (3.0, 1.0)}, rows=5))
    """
    ports = sorted(
        snap["ports"], key=lambda p: (port_rates.get(p["id"], 0.0), p["handled"]), reverse=True
    )[:rows]
    prow = [
        [
            p["id"],
            p["kind"],
            _rate(port_rates.get(p["id"])) if port_rates else "-",
            str(p["handled"]),
            str(p["mailbox"]),
            human_age(p["age"]),
        ]
        for p in ports
    ]
    stamp = time.strftime("%H:%M:%S")
    every = "" if interval is None else ", every %ss" % secs(interval)
    lines = ["aemp top - %s%s (q or Ctrl-C quits)" % (stamp, every), _node_line(snap["node"]), ""]
    lines += _table(["PORT", "KIND", "MSGS/S", "HANDLED", "MAILBOX", "AGE"], prow, left=2)
    lines.append("")
    links = sorted(
        snap["links"],
        key=lambda x: sum(link_rates.get((x["peer"], x["since"]), (0.0, 0.0))),
        reverse=True,
    )[:rows]
    if links:
        head = _LINK_HEAD + (["IN/S", "OUT/S"] if link_rates else [])
        lines += _table(head, _link_rows(links, link_rates), left=5)
    else:
        lines.append("(no links)")
    return "\n".join(lines)


# =============================================================================================
# asking the node


def fetch(talk: Talk, node: str, what: str, **kw: Any) -> Any:
    """``introspect.info(node, what, **kw)`` within the talk's timeout; failures as ``Fail``.

    Example::

        ports = fetch(talk, "seed", "ports", limit=10)
    """
    try:
        return aemp_green.info(node, what, timeout=max(talk.left(), 0.5), **kw)
    except IntrospectionRefused as e:
        raise Fail(str(e)) from None
    except Timeout as e:
        raise Fail(str(e)) from None
    except NodeUnreachable as e:
        raise Fail(unreachable(node, e.reason)) from None
    except PortDied as e:
        raise Fail(unreachable(node, e.reason)) from None
    except AempError as e:
        raise Fail(str(e)) from None


def _count_opt(a: Parsed, name: str, default: int, low: int = 1) -> int:
    raw = a.get(name)
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise UsageError("%s must be a whole number, not %r" % (name, raw)) from None
    if n < low:
        raise UsageError("%s must be at least %d, not %d" % (name, low, n))
    return n


def _interval_opt(a: Parsed) -> float:
    raw = a.get("--interval")
    if raw is None:
        return 2.0
    try:
        t = float(raw)
    except ValueError:
        raise UsageError("--interval must be a number of seconds, not %r" % (raw,)) from None
    if not 0.05 <= t <= 3600:
        raise UsageError("--interval must be between 0.05 and 3600 seconds, not %s" % raw)
    return t


def _check_ps(a: Parsed) -> None:
    node_arg(a["<node>"])
    _count_opt(a, "--limit", 20)
    if a.get("--sort") is not None and a["--sort"] not in _SORTS:
        raise UsageError("--sort must be one of %s, not %r" % (", ".join(_SORTS), a["--sort"]))


@command(
    "ps",
    final=True,
    options=True,
    doc="""
List the ports of a node: kind, mailbox, messages handled, age, monitors.

Usage:
  aemp ps [options] <node>

Asks NODE with the aemp_green introspection request (a secure node answers only with its setting
allow_introspection; a Perl node never answers). The busiest ports come first.
{options}  --limit=<n>          How many ports (default 20).
  --sort=<key>         handled (default), mailbox or age.
  --json               Print JSON ({{"node": ..., "ports": [...]}}) instead of a table.

Example:
  aemp ps seed
  aemp ps --sort=mailbox --limit=5 worker/1
  aemp ps --json seed | jq '.ports[0]'
""".format(options=TALK_OPTIONS),
)
@talking(check=_check_ps)
def _cmd_ps(talk: Talk, a: Parsed) -> int:
    node = node_arg(a["<node>"])
    limit = _count_opt(a, "--limit", 20)
    sort = a.get("--sort") or "handled"
    snap = fetch(talk, node, "snapshot", ports=0)
    ports = fetch(talk, node, "ports", limit=limit, sort=sort)
    if a.get("--json"):
        out(dumps({"node": snap["node"], "ports": ports}, pretty=True))
    else:
        out(format_ps(snap["node"], ports))
    return 0


@command(
    "links",
    final=True,
    options=True,
    doc="""
List the links of a node: peer, address, framing, auth, messages and bytes each way, write
buffer, keepalive round trip, time up.

Usage:
  aemp links [options] <node>

RTT is measured by the keepalive probe, sent when a link was quiet for a third of
monitor_timeout ("-" until then).
{options}  --json               Print the links as JSON.

Example:
  aemp links seed
  aemp links --json seed
""".format(options=TALK_OPTIONS),
)
@talking(check=lambda a: node_arg(a["<node>"]))
def _cmd_links(talk: Talk, a: Parsed) -> int:
    node = node_arg(a["<node>"])
    links = fetch(talk, node, "links")
    out(dumps(links, pretty=True) if a.get("--json") else format_links(links))
    return 0


def _check_top(a: Parsed) -> None:
    node_arg(a["<node>"])
    _count_opt(a, "--rows", 10)
    _interval_opt(a)


def _rates(
    prev: dict[str, Any] | None, snap: dict[str, Any], dt: float
) -> tuple[dict[str, float], dict[Any, tuple[float, float]]]:
    """Per-second rates of the ports (messages handled) and links (messages in and out)
    between two snapshots ``dt`` seconds apart."""
    if prev is None or dt <= 0:
        return {}, {}
    before = {p["id"]: p["handled"] for p in prev["ports"]}
    ports = {
        p["id"]: round(max(p["handled"] - before.get(p["id"], 0), 0) / dt, 3)
        for p in snap["ports"]
        if p["id"] in before or p["age"] <= dt * 2
    }
    lb = {(x["peer"], x["since"]): x for x in prev["links"]}
    links = {}
    for x in snap["links"]:
        key = (x["peer"], x["since"])
        b = lb.get(key)
        if b is not None:
            links[key] = (
                round(max(x["msgs_in"] - b["msgs_in"], 0) / dt, 3),
                round(max(x["msgs_out"] - b["msgs_out"], 0) / dt, 3),
            )
    return ports, links


class _Terminal:
    """The terminal of ``aemp top``: cbreak mode without echo (keys arrive one by one, Ctrl-C
    still interrupts), the alternate screen, no cursor; ``restore()`` undoes all of it."""

    def __init__(self, fd_in: int, stream: Any) -> None:
        import termios
        import tty

        self.fd = fd_in
        self.stream = stream
        self.saved = termios.tcgetattr(fd_in)
        tty.setcbreak(fd_in)
        stream.write("\x1b[?1049h\x1b[?25l")
        stream.flush()

    def draw(self, text: str) -> None:
        self.stream.write("\x1b[H\x1b[2J" + text.replace("\n", "\r\n") + "\r\n")
        self.stream.flush()

    def restore(self) -> None:
        import termios

        try:
            self.stream.write("\x1b[?25h\x1b[?1049l")
            self.stream.flush()
        finally:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def _read_keys(fd: int, on_quit: Callable[[], None]) -> None:
    """Read keys from ``fd`` (cooperatively) until ``q``/``Q`` (then ``on_quit()``) or EOF."""
    from gevent.socket import wait_read

    while True:
        try:
            wait_read(fd)
            data = os.read(fd, 64)
        except OSError:
            return
        if not data:
            return
        if b"q" in data or b"Q" in data:
            on_quit()
            return


@command(
    "top",
    final=True,
    options=True,
    doc="""
A live view of a node: its busiest ports and links and their message rates, refreshed until
q or Ctrl-C.

Usage:
  aemp top [options] <node>

On a terminal the view redraws in place (the terminal is restored on the way out); otherwise,
and with --once, each refresh is printed after the previous one. Rates are messages per second
since the previous refresh. --timeout bounds each request (default 5 s), not the view.
{options}  --interval=<s>       Seconds between refreshes (default 2).
  --rows=<n>           Ports and links shown (default 10).
  --once               Print one view (after one interval, for the rates) and exit.
  --json               Print each refresh as one JSON line ({{"node", "ports", "links",
                       "port_rates", "link_rates"}}).

Example:
  aemp top seed
  aemp top --interval=0.5 --rows=20 worker/1
  aemp top --once --json seed
""".format(options=TALK_OPTIONS),
)
@talking(check=_check_top)
def _cmd_top(talk: Talk, a: Parsed) -> int:
    node = node_arg(a["<node>"])
    rows = _count_opt(a, "--rows", 10)
    interval = _interval_opt(a)
    once = bool(a.get("--once"))
    as_json = bool(a.get("--json"))
    want = max(rows * 3, 30)  # more than shown: the busiest now need not be the busiest ever

    def snapshot() -> dict[str, Any]:
        talk.deadline = time.monotonic() + talk.timeout  # per request, not for the whole view
        return fetch(talk, node, "snapshot", ports=want)

    stop = stop_event()
    interactive = not once and not as_json and sys.stdin.isatty() and sys.stdout.isatty()
    term = None
    keys = None
    prev = None
    prev_t = 0.0
    waited = False
    try:
        if interactive:
            term = _Terminal(sys.stdin.fileno(), sys.stdout)
            keys = gevent.spawn(_read_keys, sys.stdin.fileno(), lambda: _quit(stop))
        elif not once and sys.stdin.isatty():
            keys = gevent.spawn(_read_keys, sys.stdin.fileno(), lambda: _quit(stop))
        while True:
            snap = snapshot()
            now = time.monotonic()
            port_rates, link_rates = _rates(prev, snap, now - prev_t)
            prev, prev_t = snap, now
            if once and not waited:  # one interval later the rates can be told
                waited = True
                if _wait(stop, interval):
                    return 0
                continue
            if as_json:
                out(
                    dumps(
                        dict(
                            snap,
                            port_rates=port_rates,
                            link_rates=[
                                {"peer": k[0], "since": k[1], "msgs_in": v[0], "msgs_out": v[1]}
                                for k, v in link_rates.items()
                            ],
                        )
                    )
                )
            else:
                text = format_top(snap, port_rates, link_rates, rows, interval)
                if term is not None:
                    term.draw(text)
                else:
                    out(text)
            if once:
                return 0
            if _wait(stop, interval):
                return 0
    finally:
        if keys is not None:
            keys.kill(block=False)
        if term is not None:
            term.restore()


def _quit(stop: AsyncResult) -> None:
    if not stop.ready():
        stop.set("quit")


def _wait(stop: AsyncResult, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; True when it was (quit, Ctrl-C, SIGTERM)."""
    try:
        stop.get(timeout=seconds)
    except gevent.Timeout:
        return False
    return True
