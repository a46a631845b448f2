"""config: the AEMP configuration: settings, the rc file and its profiles, addresses.

aemp_green reads and writes the same rc file as Perl's AnyEvent::MP 2.02 (``aemp`` and
``AnyEvent::MP::Config``), so Python and Perl nodes on one host share their secret, seeds and
profiles:

* :func:`rc_path` finds the file (``$PERL_ANYEVENT_MP_RC``, ``~/.perl-anyevent-mp``,
  ``%APPDATA%/perl-anyevent-mp``);
* :func:`load_rc` / :func:`save_rc` read it (JSON::XS ``relaxed``: ``#`` comments and trailing
  commas) and write it back atomically, pretty-printed the way JSON::XS ``pretty canonical``
  does, mode 0600, keeping the previous file as ``<file>~``;
* :func:`find_profile` merges built-in defaults, ``configure()`` arguments, the rc top level and
  the profile chain with AEMP's precedence; :func:`validate` type-checks and normalises it;
* :func:`expand_nodeid`, :func:`parse_address`, :func:`expand_binds` turn the values into node
  ids and socket addresses.

Three modules: ``settings`` (every known key declared once in :data:`SETTINGS`: name,
default, validator, doc, in the manner of gevent's ``_config.py``; :func:`validate`; this
node's effective settings, :data:`active`), ``rcfile`` (the file and its profiles) and
``addresses`` (node IDs and socket addresses). This package re-exports their public names. Nothing is read at import time: the environment, the host
name, the network interfaces and the file are all looked at only when a function is called.

Example::

    rc = load_rc()                              # {"version": 1} if there is no file
    cfg = validate(find_profile(rc, "seed", binds=["127.0.0.1:4040"]))
    node = expand_nodeid(default_nodeid(cfg))   # e.g. "seed/Xa3kP0qLmZ"
"""

from .addresses import (
    default_nodeid,
    expand_binds,
    expand_nodeid,
    gen_runiq,
    gen_secret,
    hostname,
    is_randomised,
    parse_address,
)
from .rcfile import (
    dumps_rc,
    find_profile,
    load_rc,
    parse_relaxed_json,
    profile_section,
    rc_path,
    save_rc,
)
from .settings import (
    AUTH_METHODS,
    DEFAULTS,
    FRAMING_FORMATS,
    NO_DEFAULT,
    SETTINGS,
    SETTINGS_BY_NAME,
    Setting,
    active,
    is_configured,
    set_active,
    setting,
    validate,
)

__all__ = [
    "Setting",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "NO_DEFAULT",
    "DEFAULTS",
    "active",
    "set_active",
    "is_configured",
    "setting",
    "FRAMING_FORMATS",
    "AUTH_METHODS",
    "rc_path",
    "parse_relaxed_json",
    "dumps_rc",
    "load_rc",
    "save_rc",
    "find_profile",
    "validate",
    "profile_section",
    "hostname",
    "gen_runiq",
    "gen_secret",
    "is_randomised",
    "expand_nodeid",
    "default_nodeid",
    "parse_address",
    "expand_binds",
]
