"""Fuzzing the three parsers that read bytes from the network: ``Handshake.receive_data``,
``JsonDecoder.feed`` and ``CborDecoder.feed``.

Whatever arrives, they may only raise ``RemoteProtocolError`` (never another exception, never
hang). Beyond that, each input is also fed twice, whole and cut into random pieces, and both
runs must agree (same frames / events / output bytes, and an error in one iff in the other).

Inputs: the recorded Perl greetings, auth lines and data phases of ``tests/interop`` (when
present) and synthetic ones made by our own encoders and handshakes, mutated by bit flips,
byte changes, truncations, deletions, duplications, splices and insertions of bytes that matter
to the parsers (newlines, ``;``, brackets, quotes, backslashes, CBOR heads and breaks); plus
plain random bytes. The batched tests draw a 32-bit seed from hypothesis and run ``BATCH``
inputs from it, so the file throws well over 100,000 inputs at the parsers in well under a
minute; the structured hypothesis tests at the end give shrinkable counterexamples and check
encode/decode round trips of arbitrary values.
"""

import base64
import json
import math
import os
import random
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aemp_green.wire.framing import CborDecoder, JsonDecoder, encode_cbor, encode_json
from aemp_green.wire.handshake import Handshake, NeedTLS, parse_greeting_line1
from aemp_green.exceptions import RemoteProtocolError

# slow (docs/testing.md): hypothesis and fuzz rounds, ~70 s for the module on a busy 2-core machine
pytestmark = pytest.mark.slow

INTEROP = Path(os.environ.get("AEMP_INTEROP_DIR") or Path(__file__).resolve().parent / "interop")

BATCH = 100  # inputs per hypothesis example in the batched tests
BATCH_EXAMPLES = 360  # examples per batched test: 3 tests x 360 x 100 = 108,000 inputs
COUNTS = {"handshake": 0, "json": 0, "cbor": 0}

SETTINGS = dict(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- seed corpus

SECRET = "fuzz-secret"
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
            "big": 2**40,
            "t": True,
            "empty": {},
        },
        "peer_b#KSQsEF8z1b",
    ],
    ["", "kil0", "htwwPJOxs5c", "killed_by_b", "reason text ☠", 123],
    ["p", "[{\"\\]}", "a\\", 0.1, -0.0, 2**70, []],
    [],
]


def _synthetic_pair(tls=False, framings=("cbor", "json")):
    """(factory for our side, the peer's full byte stream that our side accepts)."""
    nonce_a, nonce_b = bytes(range(66)), bytes(range(100, 166))
    kw = dict(secret=None if tls else SECRET, tls_offered=tls)

    def ours():
        return Handshake(nodeid="us", nonce=nonce_a, framings=framings, peeraddr="1.2.3.4:5", **kw)

    peer = Handshake(nodeid="them", nonce=nonce_b, peeraddr="5.6.7.8:9", **kw)
    out = peer.data_to_send()
    for ev in peer.receive_data(ours().data_to_send()):
        if isinstance(ev, NeedTLS):
            peer.start_tls_done()
    out += peer.data_to_send()
    send = "cbor" if "cbor" in framings else "json"
    enc = encode_cbor if send == "cbor" else encode_json
    return ours, out + b"".join(enc(m) for m in SAMPLE_MSGS)


def _recorded():
    """(factory, peer stream) per side of every recorded connection, and data-phase streams."""
    scenarios, json_streams, cbor_streams = [], [], []
    if not INTEROP.is_dir():
        return scenarios, json_streams, cbor_streams
    for fr_path in sorted(INTEROP.glob("*/conn*/frames.json")):
        d = fr_path.parent
        fr = json.loads(fr_path.read_text())
        meta = json.loads((d.parent / "meta.json").read_text())
        secret = meta["secret"]
        if not isinstance(secret, dict):
            secret = {"a": secret, "b": secret}
        stream = {"a": (d / "a_to_b.bin").read_bytes(), "b": (d / "b_to_a.bin").read_bytes()}
        for side, other in (("a", "b"), ("b", "a")):
            l1, l2 = fr[side + "_greeting"]
            protocol, _, nodeid, auths, framings, kv = parse_greeting_line1(l1)

            def factory(
                nodeid=nodeid, auths=auths, framings=framings, kv=kv, l2=l2, s=secret[side]
            ):
                return Handshake(
                    nodeid=nodeid,
                    secret=s,
                    auth_accept=auths,
                    framings=framings,
                    peeraddr=kv["peeraddr"],
                    provider=kv["provider"],
                    nonce=base64.b64decode(l2),
                    _kv_order=list(kv),
                )

            scenarios.append((factory, stream[other]))
            if fr.get(other + "_auth_line"):
                g = fr[other + "_greeting"]
                start = len(g[0]) + len(g[1]) + 2 + len(fr[other + "_auth_line"]) + 1
                data = stream[other][start:]
                if data:
                    is_json = fr[other + "_auth_line"].endswith(";json")
                    (json_streams if is_json else cbor_streams).append(data)
    return scenarios, json_streams, cbor_streams


REC_SCENARIOS, REC_JSON, REC_CBOR = _recorded()
SCENARIOS = REC_SCENARIOS + [
    _synthetic_pair(),
    _synthetic_pair(framings=("json",)),
    _synthetic_pair(tls=True),
]
JSON_SEEDS = REC_JSON + [
    b"".join(encode_json(m) for m in SAMPLE_MSGS),
    b"".join(encode_json(m)[:-1] for m in SAMPLE_MSGS),
    b'["","g_slave"]["","g_find","seed"]\r\n ["x",{"a":[[[[[[["deep"]]]]]]]}]',
]
CBOR_SEEDS = REC_CBOR + [
    b"".join(encode_cbor(m) for m in SAMPLE_MSGS),
    cbor2.dumps([b"", b"g_slave", {b"k": [b"v", 1.5, None]}, b"\xff"]),
    bytes.fromhex("9f405f4161416bffa1416b9f01ffff") + bytes.fromhex("d9d9f7824041") + b"x",
]

INTERESTING = [
    b"\n",
    b"\r\n",
    b"\r",
    b";",
    b"=",
    b",",
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b"\\",
    b"\\u",
    b"\xff",
    b"\x00",
    b"\xed\xa0\x80",
    b"NaN",
    b"1e999",
    b"aemp;1;",
    b"hmac_sha3_512;",
    b";json\n",
    b";cbor\n",
    b"\x9f",
    b"\xbf",
    b"\x5f",
    b"\x7f",
    b"\xff",
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x5b\x00\x00\x00\x10\x00\x00\x00\x00",
    b"\x9b\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xd8\x1d\x00",
    b"\xd8\x1c",
    b"\xc2\x41",
    b"\xc1\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00",
    b"\xa1\x80\x01",
    b"\xa1\x01\x01",
    b"\xd9\x01\x00",
    b"\xd8\x19\x00",
    b"\xf8\x10",
    b"\xfa\x7f\xc0\x00\x00",
    b"x" * 5000,
]


def mutate(rng, data, pool):
    data = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        n = len(data)
        op = rng.randrange(9)
        if op == 0 and n:  # bit flip
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # random byte
            data[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            i = rng.randrange(n + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:  # insert an interesting token
            i = rng.randrange(n + 1)
            data[i:i] = rng.choice(INTERESTING)
        elif op == 4 and n:  # truncate
            del data[rng.randrange(n) :]
        elif op == 5 and n:  # delete a range
            i = rng.randrange(n)
            del data[i : i + rng.randint(1, 16)]
        elif op == 6 and n:  # duplicate a range
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 64))
            data[j:j] = data[i:j]
        elif op == 7:  # splice with another seed
            other = rng.choice(pool)
            i = rng.randrange(n + 1)
            j = rng.randrange(len(other) + 1)
            data = data[:i] + other[j:]
        elif op == 8 and n:  # overwrite with a small int
            data[rng.randrange(n)] = rng.choice(
                (0, 1, 0x0A, 0x0D, 0x22, 0x3B, 0x5B, 0x5D, 0x7F, 0x80, 0x9F, 0xBF, 0xFF)
            )
    return bytes(data)


def random_chunks(rng, data):
    if not data:
        return [data]
    mode = rng.randrange(4)
    if mode == 0:
        return [data]
    if mode == 1 and len(data) < 2000:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(1, 12))))
    return [data[i:j] for i, j in zip([0] + cuts, cuts + [len(data)])]


def make_input(rng, seeds):
    r = rng.random()
    if r < 0.06:
        return rng.randbytes(rng.randint(0, 300))
    if r < 0.10:
        return rng.choice(seeds)
    return mutate(rng, rng.choice(seeds), seeds)


# --------------------------------------------------------------------------- runners


def run_handshake(factory, chunks):
    """Feed ``chunks``; return a comparable summary. Only RemoteProtocolError may escape."""
    h = factory()
    out = h.data_to_send()
    events, error = [], None
    try:
        for c in chunks:
            new = h.receive_data(c)
            events += new
            if any(isinstance(e, NeedTLS) for e in new):
                early = h.pre_tls_data
                h.start_tls_done()
                if early:  # our fake "TLS" is the same byte pipe
                    events += h.receive_data(early)
            out += h.data_to_send()
    except RemoteProtocolError as exc:
        error = str(exc)
        assert h.state == "ERROR"
        with pytest.raises(RemoteProtocolError):
            h.receive_data(b"\n")
    return events, out, error is not None, h.trailing_data if error is None else None, h.state


def run_decoder(cls, chunks, max_frame):
    d = cls(max_frame=max_frame)
    frames = []
    try:
        for c in chunks:
            got = d.feed(c)
            assert isinstance(got, list)
            for f in got:
                assert type(f) is list
            frames += got
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            d.feed(b"[]")
        return frames, True, d.pending
    return frames, False, d.pending


def check_handshake_input(rng, factory, data):
    whole = run_handshake(factory, [data])
    chunked = run_handshake(factory, random_chunks(rng, data))
    assert whole[2] == chunked[2], (data, whole, chunked)
    if not whole[2]:
        assert whole == chunked, data
    else:
        assert chunked[1].startswith(whole[1]) or whole[1].startswith(chunked[1])
    COUNTS["handshake"] += 1


def check_decoder_input(rng, cls, data):
    max_frame = rng.choice((64 * 1024 * 1024, 64 * 1024 * 1024, 4096, 64))
    f1, e1, p1 = run_decoder(cls, [data], max_frame)
    f2, e2, p2 = run_decoder(cls, random_chunks(rng, data), max_frame)
    if e1 == e2:
        if not e1:
            assert repr(f1) == repr(f2) and p1 == p2, data
    else:
        # CBOR only: cbor2 may reject bad content inside an item it then finds truncated; fed
        # in pieces, that item waits (unparsed) for its end. Then the run without an error
        # must still be waiting for that frame, and agree on everything before it.
        assert cls is CborDecoder, (data, max_frame, e1, e2)
        ok_frames, ok_pending = (f2, p2) if e1 else (f1, p1)
        bad_frames = f1 if e1 else f2
        assert ok_pending > 0, (data, max_frame, e1, e2)
        assert repr(ok_frames[: len(bad_frames)]) == repr(bad_frames)
    COUNTS["json" if cls is JsonDecoder else "cbor"] += 1


# --------------------------------------------------------------------------- batched fuzzing


@settings(max_examples=BATCH_EXAMPLES, **SETTINGS)
@given(st.integers(0, 2**32 - 1))
def test_fuzz_handshake(seed):
    rng = random.Random(seed)
    pool = [s for _, s in SCENARIOS]
    for _ in range(BATCH):
        factory, base = rng.choice(SCENARIOS)
        r = rng.random()
        if r < 0.05:
            data = rng.randbytes(rng.randint(0, 400))
        elif r < 0.08:
            data = base
        else:
            data = mutate(rng, base, pool)
        check_handshake_input(rng, factory, data)


@settings(max_examples=BATCH_EXAMPLES, **SETTINGS)
@given(st.integers(0, 2**32 - 1))
def test_fuzz_json_decoder(seed):
    rng = random.Random(seed)
    for _ in range(BATCH):
        check_decoder_input(rng, JsonDecoder, make_input(rng, JSON_SEEDS))


@settings(max_examples=BATCH_EXAMPLES, **SETTINGS)
@given(st.integers(0, 2**32 - 1))
def test_fuzz_cbor_decoder(seed):
    rng = random.Random(seed)
    for _ in range(BATCH):
        check_decoder_input(rng, CborDecoder, make_input(rng, CBOR_SEEDS))


def test_unmutated_seeds_are_accepted():
    """The corpus itself is valid: every scenario establishes, every seed stream decodes."""
    for factory, data in SCENARIOS:
        h = factory()
        try:
            for ev in h.receive_data(data):
                if isinstance(ev, NeedTLS):
                    early = h.pre_tls_data
                    h.start_tls_done()
                    h.receive_data(early)
        except RemoteProtocolError as exc:
            # only the recorded self-connections and the wrong-secret session may fail
            assert str(exc) in (
                "I refuse to talk to myself",
                "authentication failure/shared secret mismatch",
            )
            continue
        assert h.state == "ESTABLISHED"
    for data in JSON_SEEDS:
        assert JsonDecoder().feed(data)
    for data in CBOR_SEEDS:
        assert CborDecoder().feed(data)


# --------------------------------------------------------------------------- structured


@settings(max_examples=700, **SETTINGS)
@given(st.binary(max_size=600), st.randoms(use_true_random=False))
def test_hypothesis_random_bytes_all_parsers(data, rng):
    factory = SCENARIOS[-3][0]
    check_handshake_input(rng, factory, data)
    check_decoder_input(rng, JsonDecoder, data)
    check_decoder_input(rng, CborDecoder, data)


@st.composite
def mutated(draw, seeds):
    base = draw(st.sampled_from(seeds))
    op = st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.binary(max_size=6))
    ops = draw(st.lists(op, max_size=4))
    data = bytearray(base)
    for op, where, blob in ops:
        n = len(data)
        i = where % (n + 1)
        if op == 0:
            data[i:i] = blob
        elif op == 1:
            del data[i : i + len(blob) + 1]
        elif op == 2 and n:
            data[i % n] ^= 1 << (where % 8)
        else:
            del data[i:]
    return bytes(data)


@settings(max_examples=500, **SETTINGS)
@given(mutated([s for _, s in SCENARIOS]), st.randoms(use_true_random=False))
def test_hypothesis_mutated_handshake(data, rng):
    for factory, _ in SCENARIOS[-3:]:
        check_handshake_input(rng, factory, data)


@settings(max_examples=500, **SETTINGS)
@given(mutated(JSON_SEEDS), mutated(CBOR_SEEDS), st.randoms(use_true_random=False))
def test_hypothesis_mutated_decoders(jdata, cdata, rng):
    check_decoder_input(rng, JsonDecoder, jdata)
    check_decoder_input(rng, CborDecoder, cdata)


# --------------------------------------------------------------------------- value round trips

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=25,
)
cbor_scalars = json_scalars | st.binary(max_size=12)
cbor_keys = st.text(max_size=8) | st.binary(max_size=8)
cbor_values = st.recursive(
    cbor_scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(cbor_keys, kids, max_size=5),
    max_leaves=25,
)


def _expect_cbor(v):
    """What a CborDecoder returns for a value we encoded: ASCII bytes come back as str."""
    if isinstance(v, bytes):
        return v.decode("ascii") if v.isascii() else v
    if isinstance(v, list):
        return [_expect_cbor(x) for x in v]
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            out[_expect_cbor(k)] = _expect_cbor(x)
        return out
    return v


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=300, **SETTINGS)
@given(
    st.lists(st.lists(json_values, max_size=6), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
def test_json_round_trip_arbitrary_values(frames, rng):
    data = b"".join(encode_json(f) for f in frames)
    got, err, pending = run_decoder(JsonDecoder, random_chunks(rng, data), 1 << 26)
    assert not err and not pending and len(got) == len(frames)
    assert all(_same(g, f) for g, f in zip(got, frames))
    # Perl style: no newlines between frames
    data = b"".join(encode_json(f)[:-1] for f in frames)
    got, err, pending = run_decoder(JsonDecoder, random_chunks(rng, data), 1 << 26)
    assert not err and all(_same(g, f) for g, f in zip(got, frames))


@settings(max_examples=300, **SETTINGS)
@given(
    st.lists(st.lists(cbor_values, max_size=6), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
def test_cbor_round_trip_arbitrary_values(frames, rng):
    data = b"".join(encode_cbor(f) for f in frames)
    got, err, pending = run_decoder(CborDecoder, random_chunks(rng, data), 1 << 26)
    assert not err and not pending and len(got) == len(frames)
    for g, f in zip(got, frames):
        assert _same(g, _expect_cbor(f)), (g, f)


def test_zz_enough_inputs():
    """The batched tests above alone threw more than 100,000 inputs at the parsers."""
    if not all(COUNTS.values()):
        pytest.skip("run the whole file to count inputs")  # pragma: no cover
    assert sum(COUNTS.values()) >= 100_000, COUNTS
