"""Micro-benchmark of the AEMP framings (``aemp_green.framing``); one JSON line per case.

Run: ``python bench/codec.py [--quick]``

Cases:

* ``roundtrip``: encode one message, then decode it with a fresh ``feed`` on a long-lived
  decoder (µs per message, best of several runs), for a small message and for the Perl test
  message of the interop recordings.
* ``stream``: a data phase of 10,000 small frames fed in 64 KiB reads to one decoder
  (messages per second): our own json (newline after each frame), Perl's json (no delimiter),
  our cbor (text strings) and Perl's cbor (byte strings, which the decoder turns into ``str``).

Example output line::

    {"case": "roundtrip", "framing": "cbor", "msg": "small", "encode_us": 0.6, ...}
"""

import json
import sys
import time

import cbor2

from aemp_green.framing import codec

SMALL = ["KQPFl3bClb", "test", 1, "abc"]
PERL_MSG = ["KQPFl3bClb", "test", {"float": 3.25, "f": False, "list": [1, "two", [3, {"four": 4}]],
                                   "neg": -17, "null": None, "text": "Grüße, 世界 ✓ 😀",
                                   "big": 1099511627776, "int": 42, "t": True, "empty": {}},
            "peer_b#KSQsEF8z1b"]


def _best(fn, number, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(number)
        best = min(best, time.perf_counter() - t0)
    return best / number


def roundtrip(name, label, msg, number, repeat):
    enc, dec_cls = codec(name)
    dec = dec_cls()
    data = enc(msg)
    assert dec.feed(data) == [msg]

    def run_enc(n):
        for _ in range(n):
            enc(msg)

    def run_dec(n):
        feed = dec.feed
        for _ in range(n):
            feed(data)

    def run_both(n):
        feed = dec.feed
        for _ in range(n):
            feed(enc(msg))

    e = _best(run_enc, number, repeat)
    d = _best(run_dec, number, repeat)
    b = _best(run_both, number, repeat)
    return {"case": "roundtrip", "framing": name, "msg": label, "bytes": len(data),
            "encode_us": round(e * 1e6, 3), "decode_us": round(d * 1e6, 3),
            "roundtrip_us": round(b * 1e6, 3)}


def _perl_cbor(v):
    """Encode like CBOR::XS does for Perl strings without the UTF-8 flag: ASCII as bytes."""
    if isinstance(v, str):
        return v.encode() if v.isascii() else v
    if isinstance(v, list):
        return [_perl_cbor(x) for x in v]
    if isinstance(v, dict):
        return {_perl_cbor(k): _perl_cbor(x) for k, x in v.items()}
    return v


def stream(label, name, data, nframes, repeat, read_size=65536):
    dec_cls = codec(name)[1]
    chunks = [data[i:i + read_size] for i in range(0, len(data), read_size)]

    def run(_n):
        d = dec_cls()
        got = 0
        for c in chunks:
            got += len(d.feed(c))
        assert got == nframes

    t = _best(run, 1, repeat)
    return {"case": "stream", "framing": name, "stream": label, "frames": nframes,
            "bytes": len(data), "read_size": read_size, "seconds": round(t, 5),
            "msgs_per_s": int(nframes / t), "us_per_msg": round(t / nframes * 1e6, 3)}


def main(argv):
    quick = "--quick" in argv
    number, repeat = (5000, 3) if quick else (50000, 5)
    out = []
    for name in ("json", "cbor"):
        out.append(roundtrip(name, "small", SMALL, number, repeat))
        out.append(roundtrip(name, "perl_test_hash", PERL_MSG, number // 5, repeat))
    n = 10000
    frames = [["KQPFl3bClb", "test", i, "abc"] for i in range(n)]
    enc_json, enc_cbor = codec("json")[0], codec("cbor")[0]
    streams = [
        ("ours_newline", "json", b"".join(enc_json(f) for f in frames)),
        ("perl_no_delimiter", "json", b"".join(enc_json(f)[:-1] for f in frames)),
        ("ours_text_strings", "cbor", b"".join(enc_cbor(f) for f in frames)),
        ("perl_byte_strings", "cbor", b"".join(cbor2.dumps(_perl_cbor(f)) for f in frames)),
    ]
    for label, name, data in streams:
        out.append(stream(label, name, data, n, repeat))
    for rec in out:
        print(json.dumps(rec, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
