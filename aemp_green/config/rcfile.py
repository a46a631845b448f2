"""config.rcfile: the rc file shared with Perl's AnyEvent::MP, and its profiles.

:func:`rc_path` finds the file (``$PERL_ANYEVENT_MP_RC``, ``~/.perl-anyevent-mp``,
``%APPDATA%/perl-anyevent-mp``); :func:`load_rc` / :func:`save_rc` read it (JSON::XS
``relaxed``: ``#`` comments and trailing commas) and write it back atomically, pretty-printed
the way JSON::XS ``pretty canonical`` does, mode 0600, keeping the previous file as
``<file>~``; :func:`find_profile` merges built-in defaults, ``configure()`` arguments, the rc
top level and the profile chain with AEMP's precedence.

Example::

    rc = load_rc()                                    # {"version": 1} if there is no file
    cfg = find_profile(rc, "seed", binds=["127.0.0.1:4040"])
"""

import copy
import json
import logging
import os
import shutil
import tempfile
from typing import (
    Any,
    Mapping,
    NoReturn,
    Optional,
    Union,
    cast,
)

from ..exceptions import ConfigError
from .addresses import hostname
from .settings import DEFAULTS

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# locating, reading and writing the rc file


def rc_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """Return the path of the AEMP rc file.

    ``$PERL_ANYEVENT_MP_RC`` if set, else ``$HOME/.perl-anyevent-mp``, else
    ``$APPDATA/perl-anyevent-mp`` (empty variables count as unset). With none of the three the
    home directory from the password database is used.

    Example::

        >>> rc_path({"HOME": "/home/ann"})
        '/home/ann/.perl-anyevent-mp'
    """
    env = os.environ if environ is None else environ
    if env.get("PERL_ANYEVENT_MP_RC"):
        return env["PERL_ANYEVENT_MP_RC"]
    if env.get("HOME"):
        return os.path.join(env["HOME"], ".perl-anyevent-mp")
    if env.get("APPDATA"):
        return os.path.join(env["APPDATA"], "perl-anyevent-mp")
    return os.path.join(os.path.expanduser("~"), ".perl-anyevent-mp")


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _relaxed_error(text: str, pos: int, msg: str) -> ConfigError:
    line, col = _line_col(text, pos)
    err = ConfigError("line %d column %d: %s" % (line, col, msg))
    err.lineno, err.colno, err.pos = line, col, pos  # type: ignore[attr-defined]
    return err


def _strip_relaxed(text: str) -> str:
    """Blank out ``#`` comments and trailing commas so strict JSON remains.

    Positions are kept (comments become spaces, a dropped comma one space), so errors from
    the strict parser still point into the original text.
    """
    out = None  # list of chars, created on the first change
    n = len(text)
    i = 0
    last = None  # last significant character outside strings and comments
    pending_comma = None  # index of a comma that is trailing if ] or } comes next
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while True:
                if j >= n:
                    raise _relaxed_error(text, i, "unterminated string")
                d = text[j]
                if d == "\\":
                    j += 2
                    continue
                if d == '"':
                    break
                if d < " " and d != "\t":  # relaxed allows literal TABs, nothing else
                    raise _relaxed_error(text, j, "invalid control character in string")
                j += 1
            i = j + 1
            last = '"'
            pending_comma = None
            continue
        if c == "#":
            j = text.find("\n", i)
            if j < 0:
                j = n
            if out is None:
                out = list(text)
            out[i:j] = " " * (j - i)
            i = j
            continue
        if c in " \t\r\n":
            i += 1
            continue
        if c in "]}" and pending_comma is not None:
            if out is None:
                out = list(text)
            out[pending_comma] = " "
        if c == "," and last is not None and last not in "[{,:":
            pending_comma = i
        else:
            pending_comma = None
        last = c
        i += 1
    return text if out is None else "".join(out)


def _bad_constant(name: str) -> NoReturn:
    raise ConfigError("%s is not valid JSON" % name)


def parse_relaxed_json(text: Union[str, bytes, bytearray]) -> Any:
    """Parse JSON the way JSON::XS ``relaxed`` does and return the value.

    Besides strict JSON it allows ``#`` comments to the end of the line (outside strings),
    a trailing comma before ``]`` or ``}`` and literal TAB characters inside strings.
    ``text`` may be ``str`` or UTF-8 ``bytes``.

    Raises :class:`ConfigError` with ``line N column M`` (also as ``lineno``/``colno``
    attributes) on malformed input; ``NaN`` and ``Infinity`` are refused like JSON::XS does.

    Example::

        >>> parse_relaxed_json('{"a": [1, 2,],  # the list\\n "b": "x#y,]"}')
        {'a': [1, 2], 'b': 'x#y,]'}
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError("byte %d: not valid UTF-8" % e.start) from None
    strict = _strip_relaxed(text)
    try:
        return json.loads(strict, strict=False, parse_constant=_bad_constant)
    except json.JSONDecodeError as e:
        raise _relaxed_error(text, e.pos, e.msg) from None


def dumps_rc(cfg: Mapping[str, Any]) -> str:
    """Return ``cfg`` as JSON::XS ``pretty canonical`` text (what :func:`save_rc` writes).

    Three-space indent, ``"key" : value``, keys sorted, raw UTF-8 text, a final newline.

    Example::

        >>> print(dumps_rc({"version": 1, "seeds": ["h:1"]}), end="")
        {
           "seeds" : [
              "h:1"
           ],
           "version" : 1
        }
    """
    try:
        text = json.dumps(
            cfg,
            indent=3,
            separators=(",", " : "),
            sort_keys=True,
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise ConfigError("configuration cannot be written as JSON: %s" % e) from None
    return text + "\n"


def load_rc(path: Optional[str] = None) -> dict[str, Any]:
    """Read the rc file and return its top-level object as a dict.

    A missing or unreadable file gives ``{"version": 1}`` (as AEMP does; logged at debug).
    A file that exists but is not relaxed JSON, or whose top level is not an object, raises
    :class:`ConfigError` naming the file, line and column.

    Example::

        rc = load_rc()                      # $PERL_ANYEVENT_MP_RC or ~/.perl-anyevent-mp
        rc = load_rc("/etc/aemp/rc")
    """
    if path is None:
        path = rc_path()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        logger.debug("rc file %s not read (%s); using {version: 1}", path, e)
        return {"version": 1}
    try:
        rc = parse_relaxed_json(data)
    except ConfigError as e:
        raise ConfigError("%s: %s" % (path, e)) from None
    if not isinstance(rc, dict):
        raise ConfigError(
            "%s: the top level must be a JSON object, not %s" % (path, type(rc).__name__)
        )
    logger.debug("loaded rc file %s", path)
    return rc


def _fsync_dir(dirname: str) -> None:
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_rc(cfg: Mapping[str, Any], path: Optional[str] = None) -> str:
    """Write ``cfg`` to the rc file atomically and return the path written.

    The text is :func:`dumps_rc` output. It goes to a temporary file in the same directory
    (mode 0600, since it holds the secret), is fsync'ed, the current file is kept as
    ``<path>~`` (hard link, or a copy where links are impossible) and the new file is
    moved into place with :func:`os.replace`, so readers see either the old or the new file.
    A symlinked rc file is followed: its target is replaced. Unknown keys are written as
    they are. OS errors propagate as :class:`OSError`.

    Example::

        rc = load_rc()
        profile_section(rc, "seed")["binds"] = ["127.0.0.1:4040"]
        save_rc(rc)
    """
    if path is None:
        path = rc_path()
    text = dumps_rc(cfg).encode("utf-8")
    path = os.path.realpath(path)
    dirname = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=dirname)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if os.path.exists(path):
            _keep_backup(path, dirname)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dirname)
    logger.debug("saved rc file %s", path)
    return path


def _keep_backup(path: str, dirname: str) -> None:
    """Make ``<path>~`` hold the current content of ``path`` without ever removing ``path``."""
    backup = path + "~"
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".bak-", dir=dirname)
    os.close(fd)
    try:
        try:
            os.unlink(tmp)
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o600)  # the old file holds the secret too
        os.replace(tmp, backup)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _profiles(rc: Mapping[str, Any]) -> dict[str, Any]:
    table = rc.get("profile")
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(
            "rc 'profile' must be an object of profiles, not %s" % type(table).__name__
        )
    return table


def _profile_chain(rc: Mapping[str, Any], name: Optional[str]) -> list[dict[str, Any]]:
    """Profiles to apply, parents first, the named one last (missing ones skipped)."""
    table = _profiles(rc)
    chain: list[dict[str, Any]] = []
    seen: list[str] = []
    while name is not None:
        if name in seen:
            raise ConfigError("profile parent loop: %s" % " -> ".join(seen + [name]))
        seen.append(name)
        prof = table.get(name)
        if prof is None:
            break
        if not isinstance(prof, dict):
            raise ConfigError("profile %r must be an object, not %s" % (name, type(prof).__name__))
        chain.append(prof)
        name = prof.get("parent")
        if name is not None and not isinstance(name, str):
            raise ConfigError(
                "profile %r: parent must be a profile name, not %r" % (seen[-1], name)
            )
    chain.reverse()
    return chain


def find_profile(
    rc: Optional[Mapping[str, Any]], name: Optional[str] = None, **kv: Any
) -> dict[str, Any]:
    """Return the effective configuration for profile ``name`` (a new dict).

    Precedence, later wins (AEMP's ``find_profile``): :data:`DEFAULTS`, then the
    ``configure()`` arguments ``kv``, then the rc top level (without its ``profile`` table),
    then the profile chain - the ``parent`` profiles first (recursively), the named profile
    last. With ``force=True`` the ``kv`` win over the rc file and the profiles (defaults stay
    lowest); with ``norc=True`` the rc file is ignored. ``kv`` entries whose value is ``None``
    count as not given. ``name=None`` means the host name. A profile that does not exist is
    no error. Unknown keys are kept; the result also has ``"profile"``: the name used.
    A parent cycle raises :class:`ConfigError` ("profile parent loop"). Values are not
    validated here: see :func:`validate`.

    Example::

        >>> rc = {"version": 1, "secret": "s",
        ...       "profile": {"seed": {"parent": "base", "nodeid": "seed"},
        ...                   "base": {"binds": ["*:4040"]}}}
        >>> cfg = find_profile(rc, "seed", monitor_timeout=10)
        >>> cfg["nodeid"], cfg["binds"], cfg["monitor_timeout"], cfg["profile"]
        ('seed', ['*:4040'], 10, 'seed')
    """
    norc = bool(kv.pop("norc", False))
    force = bool(kv.pop("force", False))
    kv.pop("profile", None)
    if name is None:
        name = hostname()
    args = {k: v for k, v in kv.items() if v is not None}

    layers: list[dict[str, Any]] = []
    if not norc:
        rc = rc or {}
        top = {k: v for k, v in rc.items() if k != "profile"}
        layers.append(top)
        layers.extend(_profile_chain(rc, name))

    cfg = copy.deepcopy(DEFAULTS)
    if not force:
        cfg.update(copy.deepcopy(args))
    for layer in layers:
        cfg.update(copy.deepcopy(layer))
    if force:
        cfg.update(copy.deepcopy(args))
    cfg["profile"] = name
    return cfg


def profile_section(rc: dict[str, Any], name: Optional[str] = None) -> dict[str, Any]:
    """Return the dict the ``aemp`` settings commands edit (created on demand).

    ``name=None`` is the rc top level itself; otherwise ``rc["profile"][name]``.

    Example::

        >>> rc = {"version": 1}
        >>> profile_section(rc, "seed")["nodeid"] = "seed"
        >>> rc
        {'version': 1, 'profile': {'seed': {'nodeid': 'seed'}}}
    """
    if name is None:
        return rc
    table = rc.setdefault("profile", {})
    if not isinstance(table, dict):
        raise ConfigError(
            "rc 'profile' must be an object of profiles, not %s" % type(table).__name__
        )
    return cast(dict[str, Any], table.setdefault(name, {}))
