"""Tests for the AEMP data-phase framings (``aemp_green.wire.framing``): encoders, incremental
decoders, the CBOR byte-string rule and every error path."""

import math
import time
from collections import OrderedDict

import cbor2
import pytest

from aemp_green.wire import framing
from aemp_green.exceptions import RemoteProtocolError
from aemp_green.wire.framing import (
    FRAMINGS,
    CborDecoder,
    JsonDecoder,
    codec,
    encode_cbor,
    encode_json,
)

UNICODE = "Grüße, 世界 ✓ 😀 ☠ \u00a0/\\\"'\t"

SAMPLES = [
    ["KQPFl3bClb", "test", 1, "abc"],
    ["", "g_slave"],
    ["p", UNICODE, {"text": UNICODE, UNICODE: [UNICODE]}],
    ["p", 2**40, -17, 0, -0, 2**63 - 1, -(2**63), 2**64 - 1],
    ["p", 3.25, 0.1, -1.5e-300, 1e300, 1700000000.123456, -0.0],
    ["p", None, True, False, {}, [], [[]], {"a": {}}],
    ["p", {"list": [1, "two", [3, {"four": 4}]], "neg": -17, "null": None, "t": True}],
    ["p", "[{]}\"\\", "\n\r\t\x00\x1f", "a\\", "\\\"", "]", '"]'],
    ["a/b#c", "AnyEvent::MP::_spawn", "htwwPJOxs5c", "main::spawned", "peer_b#KSQsEF8z1b"],
    ["deep", [[[[[[[[[[["x", {"y": [[[["z"]]]]}]]]]]]]]]]]],
    [],
]


def ids(xs):
    return [str(i) for i in range(len(xs))]


def feed_all(dec, chunks):
    out = []
    for c in chunks:
        out += dec.feed(c)
    return out


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", FRAMINGS)
@pytest.mark.parametrize("msg", SAMPLES, ids=ids(SAMPLES))
def test_round_trip(name, msg):
    enc, dec_cls = codec(name)
    data = enc(msg)
    assert isinstance(data, bytes)
    out = dec_cls().feed(data)
    assert out == [msg]
    # exact types survive (floats stay floats, ints ints, -0.0 keeps its sign)
    for a, b in zip(_leaves(out[0]), _leaves(msg)):
        assert type(a) is type(b)
        if isinstance(a, float):
            assert math.copysign(1, a) == math.copysign(1, b)


def _leaves(v):
    if isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from _leaves(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _leaves(x)
    else:
        yield v


@pytest.mark.parametrize("name", FRAMINGS)
def test_tuples_and_subclasses_encode(name):
    enc, dec_cls = codec(name)
    assert dec_cls().feed(enc(("p", (1, 2), OrderedDict(a=1)))) == [["p", [1, 2], {"a": 1}]]


@pytest.mark.parametrize("name", FRAMINGS)
def test_big_ints(name):
    enc, dec_cls = codec(name)
    msg = ["p", 2**64, -(2**64) - 5, 2**100]
    assert dec_cls().feed(enc(msg)) == [msg]


def test_json_encoding_is_compact_raw_utf8():
    assert encode_json(["a/b", "ü€😀", 3.25, 2**40, -17, True, False, None, {"k": []}]) == (
        '["a/b","ü€😀",3.25,1099511627776,-17,true,false,null,{"k":[]}]\n'.encode()
    )
    assert b"\\u" not in encode_json([UNICODE])
    assert encode_json(("t",)) == b'["t"]\n'


def test_json_matches_perl_bytes():
    """What JSON::XS sent in the recording (json-session conn03) is what we send."""
    perl = '["KSQsEF8z1b","ok","danke schön ✓",42,-7,3.25,[1,[2,{"t":true,"x":null}]]]'.encode()
    assert (
        encode_json(
            ["KSQsEF8z1b", "ok", "danke schön ✓", 42, -7, 3.25, [1, [2, {"t": True, "x": None}]]]
        )
        == perl + b"\n"
    )


def test_cbor_encoding_has_no_tag_and_text_strings():
    data = encode_cbor(["", "g_find", b"\x01", 1])
    assert data == bytes.fromhex("84") + bytes.fromhex("60") + b"\x66g_find" + b"\x41\x01" + b"\x01"
    assert cbor2.loads(encode_cbor(["p", 3.25])) == ["p", 3.25]


def test_codec_lookup():
    assert codec("json") == (encode_json, JsonDecoder)
    assert codec("cbor") == (encode_cbor, CborDecoder)
    assert FRAMINGS == ("cbor", "json")
    for bad in ("storable", "", None, "JSON"):
        with pytest.raises(ValueError):
            codec(bad)


# --------------------------------------------------------------------------- streams


def _stream(name, msgs):
    enc = codec(name)[0]
    return b"".join(enc(m) for m in msgs)


@pytest.mark.parametrize("name", FRAMINGS)
def test_many_frames_one_feed(name):
    msgs = [["p", i, "x" * (i % 7), {"i": [i]}] for i in range(1000)]
    assert codec(name)[1]().feed(_stream(name, msgs)) == msgs


@pytest.mark.parametrize("name", FRAMINGS)
def test_split_at_every_offset(name):
    msgs = SAMPLES[:4] + [["tail", UNICODE]]
    data = _stream(name, msgs)
    for i in range(len(data) + 1):
        d = codec(name)[1]()
        assert d.feed(data[:i]) + d.feed(data[i:]) == msgs, i
    d = codec(name)[1]()
    assert feed_all(d, [data[i : i + 1] for i in range(len(data))]) == msgs
    assert d.pending == 0


@pytest.mark.parametrize("name", FRAMINGS)
def test_split_at_every_pair_of_offsets(name):
    msgs = [["", "g_find", "sëed"], ["p", {"k": ["[\\\"]"]}]]
    data = _stream(name, msgs)
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            d = codec(name)[1]()
            assert feed_all(d, [data[:i], data[i:j], data[j:]]) == msgs, (i, j)


PERL_JSON = (
    b'["","g_slave"]["","g_slave",{"\'l":{"peer_b":["127.0.0.1:36249"]}}]'
    b'["","g_find","seed"]["x","\\"]\\\\",{"a":[1,[2,[3,[4,[5,[6,[7]]]]]]]}]["z"]'
)
PERL_FRAMES = [
    ["", "g_slave"],
    ["", "g_slave", {"'l": {"peer_b": ["127.0.0.1:36249"]}}],
    ["", "g_find", "seed"],
    ["x", '"]\\', {"a": [1, [2, [3, [4, [5, [6, [7]]]]]]]}],
    ["z"],
]


def test_json_perl_stream_without_delimiters():
    assert JsonDecoder().feed(PERL_JSON) == PERL_FRAMES
    for i in range(len(PERL_JSON) + 1):
        d = JsonDecoder()
        assert d.feed(PERL_JSON[:i]) + d.feed(PERL_JSON[i:]) == PERL_FRAMES


def test_json_whitespace_between_and_inside_frames():
    data = b' \r\n\t["a" ,\n 1]\n\n\r\n  ["b"]["c"]\n[\n"d"\n]\n'
    assert JsonDecoder().feed(data) == [["a", 1], ["b"], ["c"], ["d"]]
    for i in range(len(data) + 1):
        d = JsonDecoder()
        assert d.feed(data[:i]) + d.feed(data[i:]) == [["a", 1], ["b"], ["c"], ["d"]]


def test_json_mixed_newline_and_concatenated():
    data = b'["a"]\n["b"]["c"]\n["d"]\n["e"'
    d = JsonDecoder()
    assert d.feed(data) == [["a"], ["b"], ["c"], ["d"]]
    assert d.feed(b"]") == [["e"]]


def test_json_multibyte_char_split():
    data = encode_json(["😀ü"])[:-1]  # without the newline: the frame ends at its "]"
    for i in range(1, len(data)):
        d = JsonDecoder()
        assert d.feed(data[:i]) == []
        assert d.feed(data[i:]) == [["😀ü"]]


def test_json_backslash_at_split():
    data = b'["a\\\\","b\\"c"]'
    for i in range(len(data) + 1):
        d = JsonDecoder()
        assert d.feed(data[:i]) + d.feed(data[i:]) == [["a\\", 'b"c']]


def test_json_deep_nesting_beyond_the_fast_regex():
    msg = ["d"]
    cur = msg
    for _ in range(200):
        cur.append([])
        cur = cur[-1]
    data = encode_json(msg)
    assert JsonDecoder().feed(data) == [msg]
    assert JsonDecoder().feed(data[:-1].replace(b"\n", b"")) == [msg]
    d = JsonDecoder()
    assert d.feed(data[:100]) == [] and d.feed(data[100:]) == [msg]


def test_json_empty_array_is_returned():
    assert JsonDecoder().feed(b"[][]\n[]") == [[], [], []]


@pytest.mark.parametrize("name", FRAMINGS)
def test_large_frame_in_small_chunks_is_linear(name):
    """An 8 MB frame fed 4 KB at a time (2000 feeds) must not be re-parsed on every feed."""
    msg = ["big", ["x" * 100 + str(i) for i in range(60000)], "y" * 2000000]
    data = codec(name)[0](msg)
    assert len(data) > 8_000_000
    d = codec(name)[1]()
    t0 = time.perf_counter()
    out = feed_all(d, [data[i : i + 4096] for i in range(0, len(data), 4096)])
    elapsed = time.perf_counter() - t0
    assert out == [msg]
    assert elapsed < 10, elapsed


@pytest.mark.parametrize("name", FRAMINGS)
def test_feed_accepts_bytearray_and_memoryview(name):
    data = _stream(name, SAMPLES[:3])
    assert codec(name)[1]().feed(bytearray(data)) == SAMPLES[:3]
    assert codec(name)[1]().feed(memoryview(data)) == SAMPLES[:3]
    d = codec(name)[1]()
    assert d.feed(b"") == []


# --------------------------------------------------------------------------- cbor byte strings


def test_cbor_ascii_byte_strings_become_str_everywhere():
    raw = cbor2.dumps(
        [b"", b"g_slave", {b"key": b"val", "txt": [b"a", {b"n": [b"deep"]}]}, b"\xff\x00"]
    )
    assert CborDecoder().feed(raw) == [
        ["", "g_slave", {"key": "val", "txt": ["a", {"n": ["deep"]}]}, b"\xff\x00"]
    ]


def test_cbor_non_ascii_bytes_stay_bytes_both_ways():
    enc = encode_cbor(["p", b"\x80binary", {b"\xfe": 1}, "text"])
    assert CborDecoder().feed(enc) == [["p", b"\x80binary", {b"\xfe": 1}, "text"]]


def test_cbor_python_ascii_bytes_arrive_as_str():
    """The documented lossy case."""
    raw = encode_cbor(["p", b"abc", {b"k": b"v"}])
    assert CborDecoder().feed(raw) == [["p", "abc", {"k": "v"}]]


def test_cbor_perl_utf8_text_and_bytes_mixed():
    # a Perl message: port and tag as byte strings, text with the UTF-8 flag as a text string
    raw = (
        bytes.fromhex("8340")
        + b"\x44kil0"
        + bytes([0x60 + len("reason text ☠".encode())])
        + "reason text ☠".encode()
    )
    assert CborDecoder().feed(raw) == [["", "kil0", "reason text ☠"]]


def test_cbor_key_collision_after_conversion_last_wins():
    raw = cbor2.dumps([{b"a": 1, "a": 2}])
    assert CborDecoder().feed(raw) == [[{"a": 2}]]


def test_cbor_float_widths_from_perl():
    # 3.25 as float32 (fa), a time as float64 (fb), a half float (f9)
    raw = bytes.fromhex("8440fa40500000fb41d954fc40000000f93e00")
    assert CborDecoder().feed(raw) == [["", 3.25, 1700000000.0, 1.5]]


def test_cbor_indefinite_lengths_and_self_describe_tag():
    raw = bytes.fromhex("9f40") + bytes.fromhex("5f4161416bff") + bytes.fromhex("ff")
    assert CborDecoder().feed(raw) == [["", "ak"]]
    raw = bytes.fromhex("d9d9f7824041") + b"x"
    assert CborDecoder().feed(raw) == [["", "x"]]


def test_cbor_bignum_and_other_native_tags():
    raw = cbor2.dumps(["p", 2**100, -(2**100)])
    assert CborDecoder().feed(raw) == [["p", 2**100, -(2**100)]]
    tagged = CborDecoder().feed(bytes.fromhex("82") + b"\x40" + bytes.fromhex("d9ffff01"))
    assert tagged[0][1] == cbor2.CBORTag(65535, 1)


# --------------------------------------------------------------------------- encode errors


class Thing:
    pass


@pytest.mark.parametrize(
    "value, typename",
    [
        (b"bytes", "bytes"),
        (bytearray(b"x"), "bytearray"),
        ({1, 2}, "set"),
        (Thing(), "Thing"),
        (1 + 2j, "complex"),
        (object(), "object"),
    ],
)
def test_json_type_errors(value, typename):
    with pytest.raises(TypeError, match=typename):
        encode_json(["p", value])
    with pytest.raises(TypeError, match=typename):
        encode_json(["p", [{"k": value}]])


@pytest.mark.parametrize("key", [1, None, True, 1.5, (1, 2), b"k"])
def test_json_non_str_keys(key):
    with pytest.raises(TypeError, match="dict key"):
        encode_json(["p", {key: 1}])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_json_nan_inf(value):
    with pytest.raises(TypeError, match="NaN/Infinity"):
        encode_json(["p", value])
    with pytest.raises(TypeError, match="NaN/Infinity"):
        encode_json(["p", {"x": [value]}])


def test_json_lone_surrogate():
    with pytest.raises(TypeError, match="surrogate"):
        encode_json(["p", "\ud800"])


@pytest.mark.parametrize(
    "value, typename",
    [
        ({1, 2}, "set"),
        (Thing(), "Thing"),
        (1 + 2j, "complex"),
        (frozenset(), "frozenset"),
    ],
)
def test_cbor_type_errors(value, typename):
    with pytest.raises(TypeError, match=typename):
        encode_cbor(["p", value])
    with pytest.raises(TypeError, match=typename):
        encode_cbor(["p", {"k": [value]}])


@pytest.mark.parametrize("key", [1, None, 1.5, (1, 2)])
def test_cbor_non_string_keys(key):
    with pytest.raises(TypeError, match="dict key"):
        encode_cbor(["p", {key: 1}])


def test_cbor_carries_nan_and_bytes_keys():
    out = CborDecoder().feed(encode_cbor(["p", float("nan"), float("inf"), {b"\x80": 1}]))
    assert math.isnan(out[0][1]) and out[0][2] == float("inf") and out[0][3] == {b"\x80": 1}


@pytest.mark.parametrize("enc", [encode_json, encode_cbor])
def test_frame_must_be_list(enc):
    for bad in ("str", {"a": 1}, 1, None, b"x"):
        with pytest.raises(TypeError, match="list or tuple"):
            enc(bad)


@pytest.mark.parametrize("enc", [encode_json, encode_cbor])
def test_cyclic_and_too_deep(enc):
    cyc = ["p"]
    cyc.append(cyc)
    with pytest.raises(TypeError, match="nested"):
        enc(cyc)
    deep = []
    for _ in range(framing.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(TypeError, match="nested"):
        enc(["p", deep])


# --------------------------------------------------------------------------- decode errors


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1}',
        b"1",
        b'"x"',
        b"true",
        b"null",
        b"x",
        b"\x00",
        b"[1,]",
        b"[1}",
        b"[1 2]",
        b'["\xff"]',
        b'["\xed\xa0\x80"]',
        b'["\xc0\xaf"]',
        b"[NaN]",
        b"[Infinity]",
        b"[-Infinity]",
        b'["a"]x',
        b'["a"]\n{}',
        b"\xef\xbb\xbf[1]",
        b"]",
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_json_garbage(data):
    d = JsonDecoder()
    with pytest.raises(RemoteProtocolError):
        d.feed(data)
        d.feed(b"\n")
    with pytest.raises(RemoteProtocolError):  # the decoder stays dead
        d.feed(b'["ok"]\n')


def test_json_strings_named_like_constants_are_fine():
    assert JsonDecoder().feed(b'["NaN","Infinity",1]\n') == [["NaN", "Infinity", 1]]
    assert JsonDecoder().feed(b'["NaN"]["Infinity"]') == [["NaN"], ["Infinity"]]


@pytest.mark.parametrize(
    "data",
    [
        cbor2.dumps({"a": 1}),
        cbor2.dumps(1),
        cbor2.dumps("x"),
        cbor2.dumps(b"x"),
        b"\xff",
        b"\x1c",
        b"\x81\x1c",
        bytes.fromhex("a1810102"),
        bytes.fromhex("81a1810102"),
        bytes.fromhex("81a10102"),
        bytes.fromhex("8161ff"),
        bytes.fromhex("d81c81d81d00"),
        bytes.fromhex("81d81d00"),
        b"\x81" * 1000 + b"\x80",
    ],
)
def test_cbor_garbage(data):
    d = CborDecoder()
    with pytest.raises(RemoteProtocolError):
        d.feed(data)
    with pytest.raises(RemoteProtocolError):
        d.feed(encode_cbor(["ok"]))


def test_cbor_non_array_detected_while_incomplete():
    with pytest.raises(RemoteProtocolError, match="not an array"):
        CborDecoder().feed(bytes.fromhex("5a00100000") + b"abc")


def test_cbor_truncated_waits():
    data = encode_cbor(["p", "x" * 300, {"k": [1, 2.5]}])
    d = CborDecoder()
    for i in range(len(data) - 1):
        assert d.feed(data[i : i + 1]) == []
    assert d.feed(data[-1:]) == [["p", "x" * 300, {"k": [1, 2.5]}]]


@pytest.mark.parametrize("name", FRAMINGS)
def test_max_frame_complete_and_pending(name):
    enc, dec_cls = codec(name)
    big = enc(["p", "x" * 2000])
    with pytest.raises(RemoteProtocolError, match="larger than"):
        dec_cls(max_frame=1000).feed(big)
    d = dec_cls(max_frame=1000)
    with pytest.raises(RemoteProtocolError, match="larger than"):
        for i in range(0, len(big) - 1, 100):
            d.feed(big[i : i + 100][: len(big) - 1 - i])
    # frames just under the limit are fine, many of them in one feed
    small = enc(["p", "x" * 900])
    assert dec_cls(max_frame=1000).feed(small * 50) == [["p", "x" * 900]] * 50


def test_cbor_declared_huge_string_refused_early():
    d = CborDecoder(max_frame=1 << 20)
    with pytest.raises(RemoteProtocolError, match="larger than"):
        d.feed(bytes.fromhex("82405b0000000100000000") + b"abc")
    d = CborDecoder(max_frame=1 << 20)
    with pytest.raises(RemoteProtocolError, match="larger than"):
        d.feed(bytes.fromhex("9b0000000100000000") + b"\x01")


def test_json_pending_whitespace_does_not_count():
    d = JsonDecoder(max_frame=10)
    assert d.feed(b" " * 100 + b"\n" * 100) == []
    assert d.feed(b'["a"]') == [["a"]]


def test_cbor_skip_agrees_with_cbor2():
    items = [["p", "x", b"y", {"k": [1, 2.5, None]}], [2**70, -1, True], [[[]]], ["ü" * 300]]
    for it in items:
        raw = cbor2.dumps(it) + b"\xff\xff"
        assert framing._cbor_skip(raw, 0, [], 1 << 30) == (len(raw) - 2, True)
        for cut in range(len(raw) - 2):
            pos, done = framing._cbor_skip(raw[:cut], 0, [], 1 << 30)
            assert not done and pos <= cut


# --------------------------------------------------------------------------- cbor split reads
# A large read that ends inside a frame: CborDecoder guesses where the last frame starts
# (_last_frame_start), decodes the reads's complete frames before it in one call
# (_feed_wrapped, which proves the guess) and only the rest item by item.


class _NoSplit(CborDecoder):
    """The decoder without the split-read path (reads that end inside a frame go item by
    item, as before that path existed): the reference for frames and errors."""

    __slots__ = ()
    _SPLIT_MIN = 1 << 62


class _AlwaysSplit(CborDecoder):
    """The split-read path for reads of any size, looking for the last frame anywhere."""

    __slots__ = ()
    _SPLIT_MIN = 1
    _REACH_SHIFT = 0


def _perl_bytes(v):
    if isinstance(v, str):
        return v.encode() if v.isascii() else v
    if isinstance(v, list):
        return [_perl_bytes(x) for x in v]
    if isinstance(v, dict):
        return {_perl_bytes(k): _perl_bytes(x) for k, x in v.items()}
    return v


SPLIT_FRAMES = [
    ["portname", "tag", 1, "some text", [1, 2, 3]],
    ["p", ["x", 1], ["y", [2]], {"k": ["z"]}],  # inner arrays that look like frames
    [],
    ["p", UNICODE, b"\xff\x85\x68", 2**70, 1.5],
    ["portname", "tag", 2, "some text", [1, 2, 3]],
]


def _split_stream():
    parts = [encode_cbor(f) for f in SPLIT_FRAMES]
    parts.append(cbor2.dumps(_perl_bytes(SPLIT_FRAMES[0])))  # Perl's byte strings
    parts.append(b"\xd9\xd9\xf7" + encode_cbor(["tagged", [1]]))  # self-describe tag
    parts.append(cbor2.dumps(_perl_bytes(SPLIT_FRAMES[4])))
    expect = SPLIT_FRAMES + [SPLIT_FRAMES[0], ["tagged", [1]], SPLIT_FRAMES[4]]
    return b"".join(parts), expect


def _outcome(cls, chunks, max_frame=framing.DEFAULT_MAX_FRAME):
    """Per feed: the frames (repr) and pending bytes, or the error; errors must be sticky."""
    d = cls(max_frame=max_frame)
    out = []
    for c in chunks:
        try:
            got = d.feed(c)
        except RemoteProtocolError as exc:
            out.append(("error", str(exc)))
            with pytest.raises(RemoteProtocolError):
                d.feed(encode_cbor(["ok"]))
            break
        out.append((repr(got), d.pending))
    return out


def _count_wrapped(monkeypatch):
    """Record the length of every successful one-call decode."""
    calls = []
    orig = CborDecoder._feed_wrapped

    def wrapped(self, data):
        got = orig(self, data)
        if got is not None:
            calls.append(len(data))
        return got

    monkeypatch.setattr(CborDecoder, "_feed_wrapped", wrapped)
    return calls


def test_cbor_split_reads_at_every_cut_match_the_whole_read(monkeypatch):
    data, expect = _split_stream()
    assert CborDecoder().feed(data) == expect
    calls = _count_wrapped(monkeypatch)
    split_used = 0
    for cut in range(1, len(data)):
        chunks = [data[:cut], data[cut:]]
        for cls in (_AlwaysSplit, CborDecoder):
            d = cls()
            del calls[:]
            assert feed_all(d, chunks) == expect, (cls, cut)
            assert d.pending == 0
            split_used += cls is _AlwaysSplit and any(n < cut for n in calls[:1])
        assert _outcome(_AlwaysSplit, chunks) == _outcome(_NoSplit, chunks), cut
    # the first read went the one-call way for most cuts (not the ones inside the first frame)
    assert split_used > len(data) // 2
    # three reads, cut at every pair of offsets (every 3rd, to stay quick)
    for a in range(1, len(data), 3):
        for b in range(a + 1, len(data), 3):
            chunks = [data[:a], data[a:b], data[b:]]
            assert feed_all(_AlwaysSplit(), chunks) == expect, (a, b)


def test_cbor_split_read_takes_the_one_call_path(monkeypatch):
    frames = [["portname", "tag", i, "some text", [1, 2, 3]] for i in range(6000)]
    data = b"".join(encode_cbor(f) for f in frames)
    item_lengths = []
    orig = CborDecoder._decode_items

    def decode_items(self, data, out):
        item_lengths.append(len(data))
        return orig(self, data, out)

    monkeypatch.setattr(CborDecoder, "_decode_items", decode_items)
    calls = _count_wrapped(monkeypatch)
    d = CborDecoder()
    reads = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    got = []
    for r in reads[:-1]:
        got += d.feed(r)
        assert d.pending > 0  # every read ends inside a frame
    got += d.feed(reads[-1])
    assert got == frames and d.pending == 0
    # item by item: only the frame completed by a read and the unfinished last one (each
    # under 40 bytes), never a read's bulk; that went in one call per read
    assert item_lengths and max(item_lengths) < 40, item_lengths
    assert len(calls) == len(reads) and sum(calls) > len(data) - 40 * len(reads)


def test_cbor_split_read_with_large_frames(monkeypatch):
    # frames of a few KiB, some full of bytes that look like frame heads, in 64 KiB reads
    import random

    rnd = random.Random(5)
    frames = []
    for i in range(400):
        if i % 7 == 3:
            frames.append(["p", b"\x85\x68portname" * rnd.randint(10, 900)])
        elif i % 7 == 5:
            frames.append(["p", [rnd.random() for _ in range(rnd.randint(10, 900))]])
        else:
            frames.append(["portname", "tag", i, "some text", [1, 2, 3]])
    data = b"".join(encode_cbor(f) for f in frames)
    for size in (4096, 5000, 65536):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert feed_all(CborDecoder(), chunks) == frames
        assert _outcome(CborDecoder, chunks) == _outcome(_NoSplit, chunks)


_GOOD = b"".join(encode_cbor(["portname", "tag", i, "some text", [1, 2, 3]]) for i in range(400))


@pytest.mark.parametrize(
    "tail",
    [
        bytes.fromhex("855b0000"),  # truncated string header
        bytes.fromhex("82405b0000000100000000") + b"abc",  # 4 GiB string declared
        bytes.fromhex("9b0000000100000000") + b"\x01",  # 4 Gi items declared
        b"\x81" * 1000 + b"\x80",  # nested beyond MAX_DEPTH
        b"\x81" * (framing.MAX_DEPTH + 1) + b"\x80",  # depth at the limits
        b"\x81" * (framing.MAX_DEPTH + 2) + b"\x80",
        b"\x81" * (framing.MAX_DEPTH + 3) + b"\x80",
        b"\x81" * 3000,  # deep, unfinished
        cbor2.dumps({"a": 1}) + encode_cbor(["x"]),  # not an array
        b"\xff" + encode_cbor(["x"]),  # stray break
        b"\x1c",  # reserved additional info
        bytes.fromhex("8261ff") + encode_cbor(["x"]),  # invalid UTF-8
        bytes.fromhex("8362") + b"\xff\xfe" + b"\x5a\x00\x00\x10",  # invalid UTF-8, unfinished
        bytes.fromhex("81d81d00"),  # shared reference
        bytes.fromhex("8361706174") + b"\x85\x68port",  # fine, unfinished
    ],
)
@pytest.mark.parametrize("max_frame", [framing.DEFAULT_MAX_FRAME, 1 << 16, 2000])
def test_cbor_split_read_hostile_tail_same_outcome(tail, max_frame):
    data = _GOOD + tail + _GOOD[:100]
    cuts = [len(_GOOD) + k for k in (0, 1, 2, 3, 5, len(tail) // 2, len(tail) - 1, len(tail))]
    cuts += [4096, 8192, len(_GOOD) - 7]
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))):
        for chunks in (
            [data[:cut], data[cut:]],
            [data[:cut], data[cut : cut + 5000], data[cut + 5000 :]],
        ):
            for cls in (CborDecoder, _AlwaysSplit):
                got = _outcome(cls, [c for c in chunks if c], max_frame)
                assert got == _outcome(_NoSplit, [c for c in chunks if c], max_frame), (cls, cut)
    # the whole thing in one read
    assert _outcome(CborDecoder, [data], max_frame) == _outcome(_NoSplit, [data], max_frame)


def test_cbor_split_read_enforces_max_frame():
    big = encode_cbor(["portname", "x" * 3000])
    data = _GOOD + big + _GOOD
    for max_frame in (2000, 3000, 3010, 5000, 20000):
        for cut in (len(_GOOD) - 5, len(_GOOD) + 10, len(_GOOD) + len(big) + 7, len(data) - 7):
            chunks = [data[:cut], data[cut:]]
            for cls in (CborDecoder, _AlwaysSplit):
                assert _outcome(cls, chunks, max_frame) == _outcome(_NoSplit, chunks, max_frame)
        chunks = [data[: len(data) - 7], data[-7:]]
        if max_frame < len(big):
            with pytest.raises(RemoteProtocolError, match="larger than"):
                feed_all(CborDecoder(max_frame=max_frame), chunks)
        else:
            assert len(feed_all(CborDecoder(max_frame=max_frame), chunks)) == 801


# --------------------------------------------------------------------------- json: large frames


def _prefix_frames(data, cut):
    """The frames of ``data[:cut]`` fed whole, or "error"."""
    try:
        return JsonDecoder().feed(data[:cut])
    except RemoteProtocolError:
        return "error"


def _check_cuts(data, cuts):
    """Fed as ``data`` cut at ``cuts``, every feed returns exactly the frames that the prefix
    read so far completes (fed whole: the fast paths), and errors come at the same read."""
    d = JsonDecoder()
    got = []
    bounds = [0] + sorted(cuts) + [len(data)]
    for lo, hi in zip(bounds, bounds[1:]):
        want = _prefix_frames(data, hi)
        try:
            got += d.feed(data[lo:hi])
        except RemoteProtocolError:
            assert want == "error", (bounds, hi)
            return "error"
        assert want != "error" and got == want, (bounds, hi)
    return got


_LONG = "x" * 5000


def _big_inputs():
    esc = ("a" * 3000 + '\\"' + "b" * 10 + "\\\\" + "]" + "\\n") * 2
    return [
        # (bytes, expected frames or "error")
        (b'["p","' + esc.encode() + b'"]\n["q"]\n', [["p", json_loads(esc)], ["q"]]),
        (b'["p","' + esc.encode() + b'"]["q"]', [["p", json_loads(esc)], ["q"]]),
        (b'[\n "p",\n "' + _LONG.encode() + b'"\n]\n["q"]\n', [["p", _LONG], ["q"]]),
        (
            b'["p",' + b"[1]," * 1500 + b'"' + _LONG.encode() + b'"]["z"]',
            [["p"] + [[1]] * 1500 + [_LONG], ["z"]],
        ),
        (
            b"[" * 12 + b'"' + _LONG.encode() + b'"' + b"]" * 12 + b"\n",
            [[[[[[[[[[[[[_LONG]]]]]]]]]]]]],
        ),
        (b'["p","' + _LONG.encode() + b'"]\r\n["q"]', [["p", _LONG], ["q"]]),
        (b'["p","' + _LONG.encode() + b'"]["q"]\n["r"]', [["p", _LONG], ["q"], ["r"]]),
        (b'["p","NaN' + _LONG.encode() + b'Infinity"]\n', [["p", "NaN" + _LONG + "Infinity"]]),
        (b'["p","' + "한".encode() * 2000 + b'"]\n', [["p", "한" * 2000]]),
        (b'["p","' + _LONG.encode() + b'"]x', "error"),
        (b'["p","' + _LONG.encode() + b'"]\nx', "error"),
        (b'["p","' + _LONG.encode() + b'",NaN]\n', "error"),
        (b'["p","' + _LONG.encode() + b'",-Infinity]', "error"),
        (b'["p","' + _LONG.encode() + b'\xed\xa0\x80"]\n', "error"),
        (b'["p","' + _LONG.encode() + b'\xff"]\n', "error"),
        (b'["p","' + _LONG.encode() + b'"}\n', "error"),
        (b'{"p":"' + _LONG.encode() + b'"}\n', "error"),
    ]


def json_loads(s):
    import json

    return json.loads('"%s"' % s)


@pytest.mark.parametrize("i", range(len(_big_inputs())))
def test_json_large_frame_split_anywhere_matches_prefixes(i):
    """Large frames (longer than one stride and than the 4096-byte start check) cut in two and
    three reads anywhere near a special byte, and at random: each read yields exactly what the
    data up to it completes, whatever path (newline try, ']' try, lazy or resumed scan) ran."""
    import random

    data, want = _big_inputs()[i]
    assert _check_cuts(data, []) == want
    special = [j for j, c in enumerate(data) if c in b'"\\[]{}\n\r']
    rng = random.Random(i)
    near = set()
    for j in special[:8] + special[-8:] + rng.sample(special, min(40, len(special))):
        near.update(range(max(1, j - 2), min(len(data), j + 3)))
    near.update((1, 4095, 4096, 4097, len(data) - 1))
    for cut in sorted(near):
        assert _check_cuts(data, [cut]) == want, cut
    for _ in range(60):
        cuts = rng.sample(range(1, len(data)), 2)
        assert _check_cuts(data, cuts) == want, cuts
    assert _check_cuts(data, list(range(1000, len(data), 1000))) == want


def test_json_long_string_backslash_at_every_read_end():
    """A long string full of escapes, fed in reads that end right after each backslash."""
    s = ('\\"' * 700 + "\\\\" * 700 + "\\u00e9" * 300) * 2
    data = b'["p","' + s.encode() + b'"]'
    want = [["p", json_loads(s)]]
    cuts = [j + 1 for j, c in enumerate(data) if c == 0x5C]
    assert _check_cuts(data, cuts) == want
    assert _check_cuts(data + b"\n", cuts) == want


def test_json_reads_ending_with_bracket_stay_linear():
    """A Perl-style frame (no newline) of 1M small arrays whose every read ends with ']': the
    whole-buffer try at a read that ends with ']' is rationed, not made at every read (which
    would parse the growing buffer 1,000 times)."""
    data = b"[" + b"[0]," * 1_000_000 + b"[1]]"
    cuts, j = [], 4096
    while True:
        j = data.find(b"]", j)
        if j < 0:
            break
        cuts.append(j + 1)
        j += 4096
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)]) if a < b]
    assert len(chunks) > 900
    d = JsonDecoder()
    t0 = time.process_time()
    out = feed_all(d, chunks)
    elapsed = time.process_time() - t0
    assert len(out) == 1 and len(out[0]) == 1_000_001 and out[0][-1] == [1]
    assert elapsed < 5, elapsed


def test_json_newlines_inside_a_large_frame_stay_linear():
    """A 4 MB frame with a newline every 3 bytes, in 2 KB reads: the newline is tried as the
    frame's end once per frame, then the scanner takes over (a try at every read would parse
    the growing buffer 2,000 times)."""
    data = b"[" + b"1,\n" * 1_400_000 + b"2]\n"
    d = JsonDecoder()
    t0 = time.process_time()
    out = feed_all(d, [data[i : i + 2048] for i in range(0, len(data), 2048)])
    elapsed = time.process_time() - t0
    assert len(out) == 1 and len(out[0]) == 1_400_001
    assert elapsed < 5, elapsed


# --------------------------------------------------------------------------- frame size errors

_SIZE_ERR = (
    r"^%s frame larger than allowed: %s bytes, max_frame is %d bytes "
    r"\(raise the max_frame setting to accept it\)$"
)


def _size_error(dec, chunks):
    with pytest.raises(RemoteProtocolError) as info:
        feed_all(dec, chunks)
    return str(info.value)


@pytest.mark.parametrize("name", FRAMINGS)
def test_frame_size_error_states_size_and_limit_for_a_complete_frame(name):
    import re

    enc, dec_cls = codec(name)
    frame = enc(["p", "x" * 2000])
    size = len(frame) - (name == "json")  # (json: the newline is not part of the frame)
    for data in (frame, enc(["a"]) + frame):
        text = _size_error(dec_cls(max_frame=1000), [data])
        assert re.match(_SIZE_ERR % (name, size, 1000), text), text


@pytest.mark.parametrize("name", FRAMINGS)
def test_frame_size_error_states_at_least_for_a_pending_frame(name):
    import re

    enc, dec_cls = codec(name)
    frame = enc(["p", "y" * 100000])
    text = _size_error(dec_cls(max_frame=65536), [frame[:40000], frame[40000:70000]])
    if name == "json":
        assert re.match(_SIZE_ERR % (name, "at least 70000", 65536), text), text
    else:  # the string's head announces its size at once
        assert re.match(_SIZE_ERR % (name, "at least %d" % (len(frame)), 65536), text), text
    # json: a first read already beyond the limit
    text = _size_error(JsonDecoder(max_frame=65536), [b'["p","' + b"z" * 70000])
    assert re.match(_SIZE_ERR % ("json", "at least 70006", 65536), text), text


def test_cbor_frame_size_error_for_announced_sizes():
    import re

    text = _size_error(CborDecoder(max_frame=1 << 20), [bytes.fromhex("82405b0000000100000000")])
    assert re.match(_SIZE_ERR % ("cbor", "at least %d" % (11 + (1 << 32)), 1 << 20), text), text
    text = _size_error(CborDecoder(max_frame=1000), [bytes.fromhex("9a00100000") + b"\x01"])
    assert re.match(_SIZE_ERR % ("cbor", "at least %d" % (5 + 0x100000), 1000), text), text
