#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of the parsers that read peer bytes.

Targets: ``Handshake.receive_data`` (greeting and auth lines), ``parse_greeting_line1``,
``JsonDecoder.feed``, ``CborDecoder.feed``, and decode -> encode -> decode round trips.
Whatever the peer sends, the parsers may only raise ``RemoteProtocolError`` (the encoders,
``TypeError``); any other exception escaping ``check`` is a finding. See fuzz/README.md.

Usage::

    python fuzz/fuzz_parsers.py -runs=1000000 fuzz/corpus   # libFuzzer flags and corpus dirs
    python fuzz/fuzz_parsers.py --make-corpus [DIR]           # (re)write the seed corpus
    python fuzz/fuzz_parsers.py crash-0123abcd...             # replay one input (libFuzzer)

Input layout (every byte string is a valid input; short ones are padded with zero bytes)::

    byte 0     target = byte % 6 (see TARGETS)
    byte 1     variant: handshake config (byte % len(CONFIGS)); decoder max_frame
               (byte % 4 -> MAX_FRAMES); round trip framing (byte & 1: 0 json, 1 cbor)
    byte 2     number of chunks the payload is fed in: byte % 4 + 1
    bytes 3-5  cut points: cut k at (byte * (len(payload) + 1)) >> 8, sorted
    bytes 6-   payload

The target logic lives in the plain function ``check(data)``, which needs neither atheris nor
the recordings, so that tests/test_fuzz_harness.py can run it on the corpus under pytest.
Beyond "only RemoteProtocolError", ``check`` asserts: a failed parser stays failed; the same
input fed whole and in chunks gives the same result (one documented CBOR exception); decoded
frames are lists, CBOR map keys str/bytes, no pure-ASCII bytes left (in lists and dicts);
in the round trip, every frame inside the documented value model re-encodes and decodes back
equal (floats compared bitwise-ish: NaN == NaN, the sign of zero counts), and a
``RemoteProtocolError`` hiding another exception (the parsers' "never leak" safety nets) is
a finding too.
"""

import base64
import importlib.util
import math
import os
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
INTEROP = Path(
    os.environ.get("AEMP_INTEROP_DIR") or Path(__file__).resolve().parents[1] / "tests" / "interop"
)
CORPUS_DIR = HERE / "corpus"


def _atheris_wanted():
    if __name__ != "__main__" or "--make-corpus" in sys.argv:
        return False
    return importlib.util.find_spec("atheris") is not None


def _uninteresting_aemp_modules():
    """Every aemp_green module except the parsers (atheris' include= works per top-level
    package, so the rest of the package, which the package __init__ imports, is excluded)."""
    spec = importlib.util.find_spec("aemp_green")
    names = {"aemp_green"}
    for mod in pkgutil.iter_modules(spec.submodule_search_locations):
        if mod.name not in ("wire", "exceptions"):
            names.add("aemp_green." + mod.name)
    return sorted(names)


if _atheris_wanted():
    import atheris

    with atheris.instrument_imports(include=["aemp_green"], exclude=_uninteresting_aemp_modules()):
        from aemp_green.wire import framing, handshake as _handshake
else:
    atheris = None
    from aemp_green.wire import framing, handshake as _handshake

from aemp_green.exceptions import RemoteProtocolError  # noqa: E402

Handshake = _handshake.Handshake
NeedTLS = _handshake.NeedTLS
Established = _handshake.Established
GreetingReceived = _handshake.GreetingReceived
parse_greeting_line1 = _handshake.parse_greeting_line1
_perl_int = _handshake._perl_int
JsonDecoder = framing.JsonDecoder
CborDecoder = framing.CborDecoder
encode_json = framing.encode_json
encode_cbor = framing.encode_cbor
MAX_DEPTH = framing.MAX_DEPTH
_cbor_frozendict = getattr(framing.cbor2, "frozendict", None)

TARGETS = ("handshake", "greeting", "json", "cbor", "roundtrip", "authline")
HEADER = 6
MAX_FRAMES = (framing.DEFAULT_MAX_FRAME, 4096, 64, 16)


class Finding(AssertionError):
    """An invariant of the parsers does not hold (not a plain exception escaping them).

    ``kind`` names known classes of findings; ``FUZZ_TOLERATE=kind,...`` in the environment
    lets a fuzzing campaign go on past a known, not yet fixed one (see fuzz/README.md).
    """

    def __init__(self, msg, kind=None):
        super().__init__(msg if kind is None else "[%s] %s" % (kind, msg))
        self.kind = kind


TOLERATE = frozenset(k for k in os.environ.get("FUZZ_TOLERATE", "").split(",") if k)


# --------------------------------------------------------------------------- handshake configs

SECRET = "fuzz-secret-0123"
ALL_AUTH = ("hmac_sha3_512", "tls_sha3_512", "tls_anon", "cleartext")
NONCE_US = bytes(range(66))
NONCE_THEM = bytes(range(100, 166))

# Greeting lines of real Perl nodes (from tests/interop, embedded so that check() does not
# depend on the recordings): (session/connection, our side's lines = the listener b, the peer's
# lines = the connecting side a, secret of b). The recorded a_to_b.bin establishes against these.
RECORDED = (
    (
        "json-session/conn03_peer_b-to-peer_a",
        (
            "aemp;1;peer_a;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;json;gproto=1;"
            "provider=AE-2.02;mproto=1;peeraddr=127.0.0.1:38082",
            "fSwiQi2jI1CReiTO1HfnUp0X05/X0Gb7HjQ9sBOW5CfvIkijM6cCMz5tcr05BpFHFvdkN5MhuHSIH9tb4FfTiAA6",
        ),
        (
            "aemp;1;peer_b;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;json;gproto=1;"
            "provider=AE-2.02;mproto=1;peeraddr=127.0.0.1:41985",
            "mEkgbWUDwAzUYQ+BU/TrDM/5JQT6sglWHlKSdDVQua5RjCl4vCnq8kG6JeO2Ni1ewUq5wd1SUubyQ/qJba5IQlyk",
        ),
        "interop-test-secret-0123456789",
    ),
    (
        "cbor-session/conn03_peer_b-to-peer_a",
        (
            "aemp;1;peer_a;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;cbor;gproto=1;"
            "provider=AE-2.02;peeraddr=127.0.0.1:51072;mproto=1",
            "Dj2tNYsS0vzyf7mAjOWJ8bUFbFXG/DTmzZFSGJSBp99+JiqadtL1WtmV7L8ikAvFTfSsdh7RlsHbNsWBE465InQK",
        ),
        (
            "aemp;1;peer_b;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;cbor;mproto=1;"
            "peeraddr=127.0.0.1:41483;gproto=1;provider=AE-2.02",
            "ZAunFITMRspf7xRC8kVzz9HNQeU5DFnvrIaQAsUSRat5QUCsIX0ZWfJm0gDtklr7UTV/Y8O71XlqaD48Dwq+wdxA",
        ),
        "interop-test-secret-0123456789",
    ),
    (
        "badauth-session/conn01_badnode-to-seed",
        (
            "aemp;1;seed;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;json;mproto=1;"
            "peeraddr=127.0.0.1:42560;provider=AE-2.02;gproto=1",
            "IAOMsvTcOMEL60u8plX1SkWNALS2F1G3huMxZxf6BQztpT1GN7SS5QUSVT7n5BzTyrFotkn0bZ3GjYlB5EhJ3Gge",
        ),
        (
            "aemp;1;badnode;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;json;peeraddr=127.0.0.1:4060;"
            "gproto=1;mproto=1;provider=AE-2.02",
            "4zuv6nMtDNM1Er2dRzOmhH/+z1UADRIfvKcXR3Na6x3prNNkLjGEFIbuFpjYgJAoEgnCmY4auiSPpV6FIwLy7KEE",
        ),
        "right-secret-AAAA",
    ),
)


class Config:
    """One configuration of our side of the handshake.

    ``make()`` builds a fresh ``Handshake``; ``peer_prefix`` is a valid peer greeting for it
    (two lines), fed before the payload by the "authline" target; ``peer_tail`` (synthetic
    configs only) the peer's valid auth line, for the seed corpus.
    """

    def __init__(self, name, kwargs, peer_prefix, peer_tail=b""):
        self.name = name
        self.kwargs = kwargs
        self.peer_prefix = peer_prefix
        self.peer_tail = peer_tail

    def make(self):
        return Handshake(**self.kwargs)


def _synthetic(name, ours, peer):
    """A config from two Handshake keyword sets; the peer's greeting and auth line are what a
    real ``Handshake`` with ``peer`` settings sends to ours."""
    us = Handshake(**ours)
    them = Handshake(**peer)
    greeting = them.data_to_send()
    for ev in them.receive_data(us.data_to_send()):
        if isinstance(ev, NeedTLS):
            them.start_tls_done()
    tail = them.data_to_send()
    if them.role == "accept":
        # an accepting peer proves only after our auth line checked out: run ours through it
        for ev in us.receive_data(greeting):
            if isinstance(ev, NeedTLS):
                us.start_tls_done()
        them.receive_data(us.data_to_send())
        tail = them.data_to_send()
    return Config(name, ours, greeting, tail)


def _recorded(name, ours, peer, secret):
    protocol, _, nodeid, auths, framings, kv = parse_greeting_line1(ours[0])
    kwargs = dict(
        nodeid=nodeid,
        secret=secret,
        auth_accept=auths,
        framings=framings,
        peeraddr=kv["peeraddr"],
        provider=kv["provider"],
        nonce=base64.b64decode(ours[1]),
        _kv_order=list(kv),
    )
    if Handshake(**kwargs).local_greeting != tuple(ours):  # pragma: no cover - harness bug
        raise RuntimeError("cannot reproduce the recorded greeting of %s" % name)
    return Config("rec:" + name, kwargs, ("%s\n%s\n" % peer).encode("utf-8"))


def _is_addr(expected):
    return lambda addr: addr == expected


def _configs():
    # a fixed provider: the seed corpus must not change with the package version
    base = dict(
        nodeid="us",
        secret=SECRET,
        nonce=NONCE_US,
        peeraddr="127.0.0.1:4040",
        provider="aemp_green-fuzz",
    )
    peer = dict(
        nodeid="them",
        secret=SECRET,
        nonce=NONCE_THEM,
        peeraddr="127.0.0.1:4041",
        provider="aemp_green-fuzz",
    )
    tls = dict(tls_offered=True, auth_accept=ALL_AUTH, auth_offer=ALL_AUTH)
    cfgs = [
        _synthetic("hmac", base, dict(peer, framings=("json", "cbor"))),
        _synthetic(
            "all-auth,json,bytes-secret,max_line=200",
            dict(
                base,
                secret=b"\x00\xffbin",
                auth_accept=ALL_AUTH,
                auth_offer=ALL_AUTH,
                framings=("json",),
                max_line=200,
            ),
            dict(peer, secret=b"\x00\xffbin", framings=("json",)),
        ),
        _synthetic("tls,all-auth", dict(base, **tls), dict(peer, **tls)),
        _synthetic(
            "tls,no-secret",
            dict(
                base,
                secret=None,
                tls_offered=True,
                auth_offer=ALL_AUTH,
                auth_accept=("tls_anon", "tls_sha3_512", "hmac_sha3_512", "cleartext"),
            ),
            dict(
                peer,
                secret=None,
                tls_offered=True,
                auth_offer=("tls_anon", "tls_sha3_512"),
                auth_accept=("tls_anon", "tls_sha3_512"),
            ),
        ),
        _synthetic(
            "aemp-dataconn",
            dict(base, protocol="aemp-dataconn", extra={"dataconn_id": "dc1", "bare": None}),
            peer,
        ),
        # the relay defence (docs/security.md): we accept, the connector names our address
        _synthetic(
            "hmac,accept,peeraddr-check",
            dict(
                base,
                role="accept",
                peeraddr="127.0.0.1:50000",
                peeraddr_check=_is_addr("127.0.0.1:4041"),
            ),
            dict(peer, peeraddr="127.0.0.1:4041"),
        ),
        # we dial and check the acceptor names our side of the connection; it proves last
        _synthetic(
            "hmac,connect,peeraddr-check,accepting-peer",
            dict(base, peeraddr="127.0.0.1:4041", peeraddr_check=_is_addr("127.0.0.1:50000")),
            dict(peer, role="accept", peeraddr="127.0.0.1:50000"),
        ),
    ]
    cfgs += [_recorded(*r) for r in RECORDED]
    return cfgs


CONFIGS = _configs()


# --------------------------------------------------------------------------- helpers


def split_input(data):
    """(target index, variant byte, payload chunks) of a fuzz input."""
    head = data[:HEADER].ljust(HEADER, b"\0")
    payload = data[HEADER:]
    n = len(payload)
    cuts = sorted((c * (n + 1)) >> 8 for c in head[3 : 3 + head[2] % 4])
    bounds = [0] + cuts + [n]
    chunks = [payload[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    return head[0] % len(TARGETS), head[1], payload, chunks


def make_input(target, payload, variant=0, cuts=()):
    """The fuzz input that runs ``payload`` through ``target`` (name or index)."""
    if isinstance(target, str):
        target = TARGETS.index(target)
    cuts = list(cuts)[:3]
    head = bytes([target, variant, len(cuts)]) + bytes(cuts).ljust(3, b"\0")
    return head + payload


def _check_rpe(exc, where):
    """A RemoteProtocolError is fine unless a safety net turned another exception into it."""
    cause = exc.__cause__
    if cause is not None and not isinstance(cause, RemoteProtocolError):
        raise Finding(
            "%s: internal %s behind RemoteProtocolError(%r)"
            % (where, type(cause).__name__, str(exc))
        ) from cause


def _walk(frame):
    """Yield every value nested in ``frame`` (iteratively: frames may be deep)."""
    stack = [frame]
    while stack:
        c = stack.pop()
        if type(c) is dict:
            yield from c.keys()
            vals = c.values()
        else:
            vals = c
        for v in vals:
            yield v
            if type(v) is list or type(v) is dict:
                stack.append(v)


def _check_frame(frame, cbor):
    if type(frame) is not list:
        raise Finding("decoder returned a %s, not a list: %r" % (type(frame).__name__, frame))
    stack = [frame]
    while stack:
        c = stack.pop()
        if type(c) is dict:
            for k in c:
                if cbor:
                    if type(k) is bytes and k.isascii():
                        raise Finding("pure-ASCII bytes map key left as bytes: %r" % (k,))
                    if type(k) not in (str, bytes):
                        raise Finding("cbor map key of type %s" % type(k).__name__)
                elif type(k) is not str:
                    raise Finding("json object key of type %s" % type(k).__name__)
            vals = c.values()
        else:
            vals = c
        for v in vals:
            t = type(v)
            if t is list or t is dict:
                stack.append(v)
            elif cbor:
                if t is bytes and v.isascii():
                    raise Finding("pure-ASCII byte string left as bytes: %r" % (v,))
                if (t is tuple or t is _cbor_frozendict) and "cbor-immutable" not in TOLERATE:
                    # cbor2 decodes the content of a self-describe tag (55799) as immutable:
                    # arrays as tuples, maps as cbor2.frozendict (not a dict); the byte-string
                    # fix-up does not look inside them
                    raise Finding(
                        "nested %s in a decoded cbor frame (value model: list, dict; "
                        "pure-ASCII bytes -> str everywhere): %r" % (t.__name__, frame),
                        "cbor-immutable",
                    )
            elif t not in (str, int, float, bool, type(None)):
                raise Finding("json value of type %s" % t.__name__)


def _in_model(frame, cbor):
    """True if every value of ``frame`` is in the documented value model (so the encoder must
    take it): exact str/int/float/bool/None/list/dict with str keys (cbor: plus bytes, bytes
    keys, NaN/Infinity), nested at most MAX_DEPTH deep."""
    scalars = (
        (str, int, float, bool, type(None), bytes) if cbor else (str, int, float, bool, type(None))
    )
    keys = (str, bytes) if cbor else (str,)
    stack = [(frame, 1)]
    while stack:
        c, depth = stack.pop()
        if type(c) is dict:
            for k in c:
                if type(k) not in keys or (type(k) is str and not _utf8_ok(k)):
                    return False
            vals = c.values()
        else:
            vals = c
        for v in vals:
            t = type(v)
            if t is list or t is dict:
                if depth >= MAX_DEPTH:
                    return False
                stack.append((v, depth + 1))
            elif t not in scalars:
                return False
            elif t is str and not _utf8_ok(v):
                return False
            elif t is float and not cbor and not math.isfinite(v):
                return False
    return True


def _utf8_ok(s):
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _same(a, b):
    """Equality for decoded values: exact types (list ~ tuple), dict key order, NaN == NaN,
    -0.0 != 0.0."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        tx, ty = type(x), type(y)
        if tx in (list, tuple) and ty in (list, tuple):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
            continue
        if tx is not ty:
            return False
        if tx is float:
            if math.isnan(x) and math.isnan(y):
                continue
            if x != y or math.copysign(1.0, x) != math.copysign(1.0, y):
                return False
        elif tx is dict:
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif x != y:
            return False
    return True


# --------------------------------------------------------------------------- runners


def run_handshake(cfg, chunks, prefix=b""):
    """Feed ``prefix`` then ``chunks`` to a fresh handshake; return a comparable summary."""
    h = cfg.make()
    out = h.data_to_send()
    events = []
    error = None
    try:
        for c in ([prefix] if prefix else []) + list(chunks):
            new = h.receive_data(c)
            if type(new) is not list:
                raise Finding("receive_data returned %r" % (new,))
            events += new
            if any(isinstance(ev, NeedTLS) for ev in new):
                early = h.pre_tls_data
                h.start_tls_done()
                if early:  # our fake "TLS" is the same byte pipe
                    events += h.receive_data(early)
            out += h.data_to_send()
    except RemoteProtocolError as exc:
        _check_rpe(exc, "Handshake.receive_data")
        error = str(exc)
        if h.state != "ERROR":
            raise Finding("handshake raised %r but is in state %s" % (error, h.state))
        try:
            h.receive_data(b"\n")
        except RemoteProtocolError:
            pass
        else:
            raise Finding("a failed handshake accepted more data")
    for ev in events:
        if not isinstance(ev, (GreetingReceived, NeedTLS, Established)):
            raise Finding("unknown handshake event %r" % (ev,))
        if isinstance(ev, Established):
            if ev.recv_framing not in ("json", "cbor") or h.state != "ESTABLISHED":
                raise Finding("bad Established event %r (state %s)" % (ev, h.state))
    if (
        error is None
        and h.state == "ESTABLISHED"
        and not any(isinstance(ev, Established) for ev in events)
    ):
        raise Finding("ESTABLISHED without an Established event")
    return events, out, error, (h.trailing_data if error is None else None), h.state


def check_handshake(cfg, payload, chunks, prefix=b""):
    whole = run_handshake(cfg, [payload], prefix)
    if len(chunks) > 1:
        parts = run_handshake(cfg, chunks, prefix)
        if whole[2] is not None and parts[2] == whole[2]:
            # the events of the receive_data call that raised are lost, so a chunked run may
            # have seen more of them, and sent more (its auth line), before the same error
            same = parts[1].startswith(whole[1]) or whole[1].startswith(parts[1])
        else:
            same = whole == parts
        if not same:
            raise Finding(
                "handshake differs fed whole / in %d chunks:\n  %r\n  %r"
                % (len(chunks), whole, parts)
            )
    return "%s:%s" % ("authline" if prefix else "handshake", whole[4])


def run_decoder(cls, chunks, max_frame):
    cbor = cls is CborDecoder
    d = cls(max_frame=max_frame)
    frames = []
    try:
        for c in chunks:
            got = d.feed(c)
            if type(got) is not list:
                raise Finding("%s.feed returned %r" % (cls.__name__, got))
            for f in got:
                _check_frame(f, cbor)
            frames += got
    except RemoteProtocolError as exc:
        _check_rpe(exc, cls.__name__ + ".feed")
        try:
            d.feed(b"[]" if not cbor else b"\x80")
        except RemoteProtocolError:
            pass
        else:
            raise Finding("%s accepted data after an error" % cls.__name__)
        return frames, True, d.pending
    return frames, False, d.pending


def check_decoder(cls, payload, chunks, max_frame):
    whole = run_decoder(cls, [payload], max_frame)
    if len(chunks) > 1:
        parts = run_decoder(cls, chunks, max_frame)
        (f1, e1, p1), (f2, e2, p2) = whole, parts
        if e1 == e2:
            if not e1 and (repr(f1) != repr(f2) or p1 != p2):
                raise Finding(
                    "%s differs fed whole / in chunks: %r / %r" % (cls.__name__, whole, parts)
                )
        elif cls is CborDecoder:
            # Documented in tests/test_fuzz_parsers.py: cbor2 may reject bad content inside an
            # item it then finds truncated; fed in pieces, that item waits (unparsed) for its
            # end. The run without an error must then still wait for that frame, and agree on
            # everything before it.
            ok_frames, ok_pending = (f2, p2) if e1 else (f1, p1)
            bad_frames = f1 if e1 else f2
            if not ok_pending or repr(ok_frames[: len(bad_frames)]) != repr(bad_frames):
                raise Finding(
                    "CborDecoder error fed whole=%s, in chunks=%s: %r / %r" % (e1, e2, whole, parts)
                )
        else:
            raise Finding(
                "JsonDecoder error fed whole=%s, in chunks=%s: %r / %r" % (e1, e2, whole, parts)
            )
    return "%s:%s:%d" % (
        "cbor" if cls is CborDecoder else "json",
        "error" if whole[1] else "ok",
        len(whole[0]),
    )


def check_greeting(payload):
    line = payload.decode("utf-8", "surrogateescape")
    fields = line.split(";")
    try:
        parsed = parse_greeting_line1(line)
    except RemoteProtocolError as exc:
        _check_rpe(exc, "parse_greeting_line1")
        if len(fields) >= 5:
            raise Finding("parse_greeting_line1 refused %d fields" % len(fields))
        return "greeting:error"
    if len(fields) < 5:
        raise Finding("parse_greeting_line1 took %d fields" % len(fields))
    protocol, version, nodeid, auths, framings, kv = parsed
    if (
        [protocol, version, nodeid] != fields[:3]
        or ",".join(auths) != fields[3]
        or ",".join(framings) != fields[4]
    ):
        raise Finding("parse_greeting_line1 mangled the fields: %r" % (parsed,))
    for k, v in kv.items():
        if (k + "=" + v if v is not None else k) not in fields[5:]:
            raise Finding("parse_greeting_line1 invented the pair %r=%r" % (k, v))
        if type(_perl_int(v)) is not int:
            raise Finding("_perl_int(%r) is not an int" % (v,))
    return "greeting:ok"


def check_round_trip(payload, chunks, cbor):
    enc, cls = (encode_cbor, CborDecoder) if cbor else (encode_json, JsonDecoder)
    name = "cbor" if cbor else "json"
    try:
        frames = cls().feed(payload)
    except RemoteProtocolError as exc:
        _check_rpe(exc, cls.__name__ + ".feed")
        return "roundtrip:%s:rejected" % name
    encoded = []
    for f in frames:
        model = _in_model(f, cbor)
        try:
            data = enc(f)
        except TypeError:
            if model:
                raise
            continue
        if type(data) is not bytes:
            raise Finding("encode_%s returned %r" % (name, data))
        try:
            back = cls().feed(data)
        except RemoteProtocolError as exc:
            raise Finding("decoder refused encode_%s(%r) = %r" % (name, f, data)) from exc
        if len(back) != 1 or (model and not _same(back[0], f)):
            raise Finding("round trip through %s changed %r into %r (%r)" % (name, f, back, data))
        if model and not cbor and "json-to-cbor" not in TOLERATE:
            # every json value is in the cbor value model: it must survive cbor as well
            data2 = encode_cbor(f)
            try:
                back2 = CborDecoder().feed(data2)
            except RemoteProtocolError as exc:
                raise Finding(
                    "CborDecoder refused encode_cbor(%.120r...) (%d bytes): %s"
                    % (f, len(data2), exc),
                    "json-to-cbor",
                ) from exc
            if len(back2) != 1 or not _same(back2[0], f):
                raise Finding(
                    "json frame %r came back from cbor as %r" % (f, back2), "json-to-cbor"
                )
        encoded.append((f, data, model))
    # all of our encodings back to back, in the input's chunking proportions
    stream = b"".join(d for _, d, _ in encoded)
    n, m = len(payload), len(stream)
    cuts = [len(b"".join(chunks[: i + 1])) * m // max(n, 1) for i in range(len(chunks) - 1)]
    pieces = [stream[i:j] for i, j in zip([0] + cuts, cuts + [m])]
    got, err, pending = run_decoder(cls, pieces, framing.DEFAULT_MAX_FRAME)
    if (
        err
        or pending
        or len(got) != len(encoded)
        or not all(_same(g, f) for g, (f, _, model) in zip(got, encoded) if model)
    ):
        raise Finding("our own %s stream did not decode back: %r -> %r" % (name, stream, got))
    return "roundtrip:%s:%d" % (name, len(encoded))


def check(data: bytes) -> str:
    """Run one fuzz input; return a short outcome label. Raises on a finding."""
    target, variant, payload, chunks = split_input(bytes(data))
    name = TARGETS[target]
    if name == "handshake":
        return check_handshake(CONFIGS[variant % len(CONFIGS)], payload, chunks)
    if name == "authline":
        cfg = CONFIGS[variant % len(CONFIGS)]
        return check_handshake(cfg, payload, chunks, prefix=cfg.peer_prefix)
    if name == "greeting":
        return check_greeting(payload)
    if name == "json":
        return check_decoder(JsonDecoder, payload, chunks, MAX_FRAMES[variant % 4])
    if name == "cbor":
        return check_decoder(CborDecoder, payload, chunks, MAX_FRAMES[variant % 4])
    return check_round_trip(payload, chunks, bool(variant & 1))


def TestOneInput(data):  # noqa: N802 - the libFuzzer name
    check(data)


# --------------------------------------------------------------------------- seed corpus

SAMPLE_MSGS = [
    ["", "g_slave"],
    ["", "g_find", "seed"],
    [
        "KQPFl3bClb",
        "test",
        {
            "float": 3.25,
            "list": [1, "two", [3, {"four": 4}]],
            "neg": -17,
            "null": None,
            "text": "Grüße, 世界 ✓ 😀",
            "big": 2**70,
            "t": True,
            "empty": {},
        },
        "peer_b#KSQsEF8z1b",
    ],
    ["", "kil0", "htwwPJOxs5c", "killed_by_b", "reason text ☠", 123],
    ["p", "[{\"\\]}", "a\\", 0.1, -0.0, 5e-324, 1.7976931348623157e308, []],
    [],
]


def _interop_streams():
    """Yield (label, config index or None, peer stream, data-phase stream, framing, frames)
    for both directions of every recorded connection."""
    import json

    if not INTEROP.is_dir():
        return
    rec_index = {r[0]: i for i, r in enumerate(RECORDED)}
    for fr_path in sorted(INTEROP.glob("*/conn*/frames.json")):
        d = fr_path.parent
        conn = "%s/%s" % (d.parent.name, d.name)
        fr = json.loads(fr_path.read_text())
        for src, dst in (("a", "b"), ("b", "a")):
            stream = (d / ("%s_to_%s.bin" % (src, dst))).read_bytes()
            cfg = (
                len(CONFIGS) - len(RECORDED) + rec_index[conn]
                if conn in rec_index and src == "a"
                else None
            )
            auth = fr.get(src + "_auth_line")
            data, framing_, frames = b"", None, []
            if auth:
                g = fr[src + "_greeting"]
                start = len(g[0]) + len(g[1]) + 2 + len(auth) + 1
                data = stream[start:]
                framing_ = auth.rsplit(";", 1)[1]
                frames = [
                    data[f["offset"] : f["offset"] + f["length"]]
                    for f in fr.get("%s_to_%s_frames" % (src, dst)) or []
                ]
            label = "%s_%s-%s" % (d.parent.name.split("-")[0], d.name.split("_")[0], src)
            yield label, cfg, stream, fr[src + "_greeting"], data, framing_, frames


def seed_inputs():
    """{file name: fuzz input} of the seed corpus (recordings when present, plus synthetic)."""
    seeds = {}

    def add(name, target, payload, variant=0, cuts=()):
        seeds["%s-%s" % (target, name)] = make_input(target, payload, variant, cuts)

    # Synthetic handshakes: each config's valid peer stream, then data frames.
    for i, cfg in enumerate(CONFIGS):
        tail = cfg.peer_tail or b""
        full = cfg.peer_prefix + tail
        if tail:
            add("cfg%d-valid" % i, "handshake", full + encode_json(SAMPLE_MSGS[0]), i)
            add("cfg%d-valid-split" % i, "handshake", full, i, (60, 128, 200))
            add("cfg%d-valid" % i, "authline", tail + encode_cbor(SAMPLE_MSGS[1]), i)
            method, token, fr = tail.rstrip(b"\n").split(b";")
            add("cfg%d-badtoken" % i, "authline", b"%s;%s;%s\n" % (method, token[::-1], fr), i)
        add("cfg%d-greeting-only" % i, "handshake", cfg.peer_prefix, i)
        echo = "\r\n".join(cfg.make().local_greeting).encode() + b"\r\n"
        add("cfg%d-echo" % i, "handshake", echo, i)
    tls_cfg = [c.name for c in CONFIGS].index("tls,all-auth")
    for k, line in enumerate(
        (
            b"cleartext;%s;json\n" % SECRET.encode().hex().encode(),
            b"tls_anon;;cbor\n",
            b"tls_anon;x;xml\n",
            b"hmac_sha3_512;00;json\n",
            b"nonsense;;json\n",
            b";;\n",
            b"tls_anon;;json;\r\n",
        )
    ):
        add("tls%d" % k, "authline", line + b"[]", tls_cfg)
    add("too-long", "handshake", b"aemp;1;x;" + b"y" * 300 + b"\n", 1)
    # TLS corners: tls_sha3_512 and cleartext chosen, identical nonces, no secret
    for name in ("tls,all-auth", "tls,no-secret"):
        i = [c.name for c in CONFIGS].index(name)
        us = CONFIGS[i].make().local_greeting
        p1, p2 = CONFIGS[i].peer_prefix.decode().splitlines()
        token = _handshake.tls_token(p1, p2, *us).encode()
        add("cfg%d-tls_sha3_512" % i, "authline", b"tls_sha3_512;%s;json\n[1]" % token, i)
        for k, field4 in enumerate(("cleartext", "tls_sha3_512,cleartext", "", "hmac_sha3_512")):
            f = p1.split(";")
            f[3] = field4
            add("cfg%d-offer%d" % (i, k), "handshake", ("%s\n%s\n" % (";".join(f), p2)).encode(), i)
        add("cfg%d-same-nonce" % i, "handshake", ("%s\n%s\n" % (p1, us[1])).encode(), i)

    # Recorded traffic.
    for label, cfg, stream, greeting, data, framing_, frames in _interop_streams():
        for i in ([cfg] if cfg is not None else []) + [0, 1]:
            add("%s-cfg%d" % (label, i), "handshake", stream, i)
        if cfg is not None:
            prefix = CONFIGS[cfg].peer_prefix
            if stream.startswith(prefix):
                add(label, "authline", stream[len(prefix) :], cfg)
        add(label + "-l1", "greeting", greeting[0].encode())
        add(label + "-l2", "greeting", greeting[1].encode())
        if data:
            target = "json" if framing_ == "json" else "cbor"
            add(label, target, data)
            add(label + "-chunks", target, data, 0, (40, 120, 220))
            add(label, "roundtrip", data, int(target == "cbor"))
            for k, f in enumerate(frames):
                add("%s-frame%02d" % (label, k), target, f)

    # Synthetic data phases.
    js = b"".join(encode_json(m) for m in SAMPLE_MSGS)
    cb = b"".join(encode_cbor(m) for m in SAMPLE_MSGS)
    perl = b'["","g_slave"]["","g_find","seed"]\r\n ["x",{"a":[[[[[[["deep"]]]]]]]}]'
    escapes = b'["\\u00fc\\ud83d\\ude00\\n\\"\\\\\\/",1e5,-0.0,1E-2]\n'
    for name, payload in (
        ("ours", js),
        ("perl-style", perl),
        ("no-newlines", js.replace(b"\n", b"")),
        ("escapes", escapes),
        ("pending", b'["abc\\"'),
    ):
        add(name, "json", payload)
        add(name + "-maxframe", "json", payload, 2, (30, 90, 150))
        add(name, "roundtrip", payload, 0)
    json_corners = (
        b'["NaN",NaN]["x"]',
        b'[Infinity]',
        b'["\xed\xa0\x80"]["a"]',
        b'["a"]\n["\xed\xb0\x80"]\n',
        b'[1,\n2]\n[-Infinity]\n',
        b'{"a":1}\n',
        b'"x"\n',
        b' 1 ',
        b'[1}',
        b'[1e999, 123456789012345678901234567890]\n',
        b'[' * 1100 + b']' * 1100,
        b'["\\ud800", {"\\udc00": 1}]\n',
        b'[' * 300 + b']' * 300 + b'\n',
        b'[' * 520 + b']' * 520 + b'\n',
    )
    for k, payload in enumerate(json_corners):
        add("corner%d" % k, "json", payload, 0, (128,))
        add("corner%d" % k, "roundtrip", payload, 0)
    for k, payload in enumerate(
        (
            b"\x81" * 1100,
            b"\x81" * 1100 + b"\x01",
            b"\x9f" * 1100,
            bytes.fromhex("82417f5a000000ff"),
            bytes.fromhex("8241"),
            bytes.fromhex("81d90102824161416141"),
        )
    ):
        add("corner%d" % k, "cbor", payload, 0, (60,))
        add("corner%d" % k, "roundtrip", payload, 1, (128,))
    cbor_special = (
        bytes.fromhex("9f405f4161416bffa1416b9f01ffff") + bytes.fromhex("d9d9f7824041"),
        bytes.fromhex("83c249010000000000000000fb7ff8000000000000f97c00"),
        bytes.fromhex("8241ff5f41ff42c3bcff"),
        bytes.fromhex("82d81c8141618201d81d00"),
        bytes.fromhex("81bf616101ff") + bytes.fromhex("9b00000000000000020102"),
    )
    for k, payload in enumerate((cb,) + cbor_special):
        add("special%d" % k, "cbor", payload)
        add("special%d-maxframe" % k, "cbor", payload, 3, (10, 50, 100))
        add("special%d" % k, "roundtrip", payload, 1)
    for k, line in enumerate(
        (
            b"aemp;1;n;hmac_sha3_512;cbor,json;mproto=1;x;tls=1.0",
            b"aemp;1;n;;;tls= +1.5e0;=;==",
            b"a;b;c;d",
            b"\xff;\xfe;;;;",
            b"aemp;1;n;a;b;tls=1e999;tls2=.5;tls3=-1.9e-3x",
        )
    ):
        add("synthetic%d" % k, "greeting", line)
    return seeds


# Inputs that found something (see fuzz/README.md, "Findings"; both bugs are fixed): {file name:
# (kind, input)}. They stay in the corpus as regression inputs that must pass check().
FINDINGS = {
    # self-describe tag around the frame: its nested array comes out as a tuple of bytes
    "crash-cbor-immutable-tuple": (
        "cbor-immutable",
        make_input("cbor", bytes.fromhex("d9d9f782416182416201")),
    ),
    # self-describe tag inside the frame: a cbor2.frozendict (not a dict) with bytes keys
    "crash-cbor-immutable-frozendict": (
        "cbor-immutable",
        make_input("cbor", bytes.fromhex("81d9d9f7a141614162")),
    ),
    # a json frame nested 450 deep (<= MAX_DEPTH 512): encode_cbor takes it, CborDecoder
    # refuses it (cbor2's default max_depth is 400)
    "crash-json-to-cbor-depth450": (
        "json-to-cbor",
        make_input("roundtrip", b"[" * 450 + b"]" * 450 + b"\n", 0),
    ),
}


def make_corpus(directory=CORPUS_DIR):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    seeds = seed_inputs()
    for name, data in sorted(seeds.items()):
        check(data)  # every seed must itself be a valid, passing input
        (directory / name).write_bytes(data)
    for name, (kind, data) in sorted(FINDINGS.items()):
        try:
            check(data)
            print(
                "note: %s (%s) passes (fixed, or tolerated by FUZZ_TOLERATE)" % (name, kind),
                file=sys.stderr,
            )
        except Finding as exc:
            if exc.kind != kind:
                raise
        (directory / name).write_bytes(data)
    if not INTEROP.is_dir():
        print("note: %s not found, synthetic seeds only" % INTEROP, file=sys.stderr)
    print(
        "wrote %d seed inputs and %d finding inputs to %s" % (len(seeds), len(FINDINGS), directory)
    )


def main(argv):
    if "--make-corpus" in argv:
        rest = [a for a in argv[1:] if a != "--make-corpus"]
        make_corpus(rest[0] if rest else CORPUS_DIR)
        return
    import logging

    # the parsers' safety nets log before re-raising; check() reports those itself
    logging.getLogger("aemp_green").setLevel(logging.CRITICAL + 1)
    if atheris is None:
        sys.exit(
            "atheris is not installed (pip install atheris); tests/test_fuzz_harness.py "
            "runs check() without it"
        )
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
