"""``aemp run``: configure a node and run it until SIGINT or SIGTERM.

Also :func:`restart`, the function ``aemp restart NODE`` asks such a node to call: it stops the
node and re-executes ``aemp run`` with the same command line.

Example::

    from aemp_green.cli import main
    main(["run", "profile", "seed"])    # returns 0 after SIGINT/SIGTERM
"""

import json
import os
import signal
import sys
from typing import Any

import gevent
from gevent.event import Event

import aemp_green
from aemp_green import config
from aemp_green.exceptions import ConfigError

from .base import Fail, Parsed, Session, UsageError, command, kv_pairs, logger, warn

__all__ = ["restart", "RESTART_FUNC"]

#: the function name ``aemp restart`` sends to an aemp_green node (the node-port request
#: ``snd_to_func``): ``aemp_green.cli`` keeps :func:`restart` under this name, as before the cli
#: became a package, so that ``aemp`` of either version can restart nodes of the other
RESTART_FUNC = "aemp_green.cli._restart"

#: the running ``aemp run``: {"stop": Event, "restart": bool, "argv": [...]}
_runner: dict[str, Any] | None = None


def restart() -> None:
    """Node request target of ``aemp restart``: shut down and re-execute this ``aemp run``.

    Example::

        aemp_green.snd_to_func("seed", RESTART_FUNC)    # what `aemp restart seed` sends
    """
    if _runner is None:
        logger.warning("restart requested, but this node was not started by `aemp run`: ignored")
        return
    logger.warning("restart requested: shutting down and starting again")
    _runner["restart"] = True
    _runner["stop"].set()


@command(
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
def _cmd_run(sess: Session, a: Parsed) -> int:
    global _runner
    kv = kv_pairs(a["<key>"], a["<value>"])
    profile = kv.pop("profile", None)
    if profile is not None and (not isinstance(profile, str) or not profile):
        raise UsageError("run: profile must be a profile name, not %r" % (profile,))
    for flag in ("norc", "force"):
        if flag in kv:
            try:  # parsed like the boolean settings ("1", "true", "yes", ...)
                kv[flag] = config.SETTINGS_BY_NAME["secure"].validator(flag, kv[flag])
            except ConfigError as e:
                raise UsageError("run: %s" % e) from None
    unknown = [k for k in kv if k not in config.SETTINGS_BY_NAME and k not in ("norc", "force")]
    if unknown:
        raise UsageError(
            "run: unknown configure key%s %s (known: %s)"
            % (
                "s" if len(unknown) > 1 else "",
                ", ".join(map(repr, unknown)),
                ", ".join(s.name for s in config.SETTINGS if s.name != "version"),
            )
        )
    try:
        config.validate({k: v for k, v in kv.items() if k not in ("norc", "force")})
    except ConfigError as e:
        raise UsageError("run: %s" % e) from None
    if not kv.get("force") and not kv.get("norc"):
        try:
            eff = config.find_profile(sess.rc, profile, **kv)
        except ConfigError as e:
            raise Fail("run: %s" % e) from None
        for key, value in kv.items():
            if key not in ("force", "norc") and eff.get(key) != value:
                warn(
                    "run: the rc file overrides %s %s (configure() arguments are only "
                    "defaults, as in AEMP); add `force 1` to make them win"
                    % (key, json.dumps(value))
                )
    try:
        cfg = aemp_green.configure(profile, **kv)
    except (ConfigError, OSError) as e:
        raise Fail("run: cannot start the node: %s" % e) from None
    if not cfg.get("secret") and not cfg.get("cert"):
        warn(
            "run: no secret and no cert are configured (profile %r): this node can neither "
            "authenticate to other nodes nor accept them. Set one with `aemp gensecret` (the "
            "same secret on every node) or `aemp setsecret SECRET`."
            % (profile or config.hostname())
        )
    stop = Event()
    _runner = {"stop": stop, "restart": False, "argv": sess.gopts["argv"]}
    watchers = [
        gevent.signal_handler(signal.SIGTERM, stop.set),
        gevent.signal_handler(signal.SIGINT, stop.set),
    ]
    logger.info(
        "node %s running, listening on %s",
        aemp_green.NODE(),
        " ".join(aemp_green.listener_addresses()),
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
