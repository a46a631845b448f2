"""_protocol: every AEMP wire constant and protocol default, in one place.

The other modules (the handshake, the framings, the transport, the settings) take these from
here; the names they export for them (``framing.FRAMINGS``, ``config.FRAMING_FORMATS``,
``_handshake.KNOWN_AUTH_METHODS``...) are the same objects. What the values mean is described in
``wire.handshake`` (greeting and auth line) and ``wire.framing`` (data phase).

Example::

    >>> PROTOCOL_VERSION, FRAMINGS, DEFAULT_AUTH
    (1, ('cbor', 'json'), ('tls_sha3_512', 'hmac_sha3_512'))
"""

from typing import Any, TypeAlias

from ._version import __version__

__all__ = [
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "PROVIDER",
    "PERL_PROVIDER_PREFIX",
    "AUTH_METHODS",
    "TLS_ONLY_AUTH",
    "DEFAULT_AUTH",
    "FRAMINGS",
    "MAX_LINE",
    "Msg",
]

#: greeting field 1 (a sub-protocol is ``aemp-<word>``, e.g. ``aemp-dataconn``)
PROTOCOL_NAME = "aemp"
#: greeting field 2; any other number is "version mismatch"
PROTOCOL_VERSION = 1
#: what we send as ``provider=`` in the greeting
PROVIDER = "aemp_green-" + __version__
#: how a Perl AnyEvent::MP node names itself in ``provider=`` (``AE-2.02``)
PERL_PROVIDER_PREFIX = "AE-"
#: every auth method of the protocol (what an auth line may name)
AUTH_METHODS = ("tls_sha3_512", "hmac_sha3_512", "tls_anon", "cleartext")
#: methods only valid inside TLS (cleartext would send the secret in the clear)
TLS_ONLY_AUTH = frozenset(("tls_sha3_512", "tls_anon", "cleartext"))
#: the default of both ``auth_offer`` and ``auth_accept``
DEFAULT_AUTH = ("tls_sha3_512", "hmac_sha3_512")
#: the framings we speak, in our order of preference (the default ``framing_format``)
FRAMINGS = ("cbor", "json")
#: the longest handshake line (Perl's ``rbuf_max``; setting ``line_max``)
MAX_LINE = 4096

#: A message as the framings decode it and ``receive`` returns it: a list (``[tag, args...]``;
#: a wire frame has the destination port first). Senders may pass any sequence (``snd`` builds
#: a tuple).
Msg: TypeAlias = list[Any]
