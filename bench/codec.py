"""Micro-benchmark of the AEMP framings (``aemp_green.wire.framing``); one JSON line per case.

Run: ``python bench/codec.py [--quick] [--large] [--baseline REV]`` (``--large``: only the
``large`` case)

Cases:

* ``roundtrip``: encode one message, then decode it with a fresh ``feed`` on a long-lived
  decoder (µs per message, best of several runs), for a small message and for the Perl test
  message of the interop recordings.
* ``stream``: a data phase of 10,000 small frames fed in 64 KiB reads to one decoder
  (messages per second): our own json (newline after each frame), Perl's json (no delimiter),
  our cbor (text strings) and Perl's cbor (byte strings, which the decoder turns into ``str``).
* ``split``: cbor streams fed in reads of 64 KiB and 256 KiB that end inside a frame (as during
  a flood; ``mid_frame_reads`` says how many do): ``small`` frames (the small message above),
  ``typical`` frames ``["portname", "tag", i, "some text", [1, 2, 3]]`` with text strings, the
  same with Perl's byte strings, and ``mix`` (typical frames, every 16th one a larger frame of
  1-16 KiB: a long string, a list of numbers or a map). Messages per second.
* ``large``: one message of about 1 MB fed in 64 KiB reads (so it spans 16 reads), decoded
  many times by fresh decoders, for json (ours, newline-terminated), json as Perl sends it (no
  delimiter) and cbor, in alternation: MB/s of each (median over the runs) and the median of
  the per-run ratios json/cbor. Messages: ``strings`` (1,000 strings of 1 KB), ``text`` (one
  1 MB string of mixed-script text), ``records`` (7,000 small maps like the Perl test hash),
  ``numbers`` (50,000 floats).

``--baseline REV`` (e.g. ``--baseline HEAD``) also loads ``aemp_green/framing.py`` as it is in
git revision ``REV`` and runs the ``split`` cases for both decoders in alternation (the
machine may be shared and noisy; this measures CPU time of this process, which other load
disturbs less than wall time), one line per case with each side's best and the median of the
paired ratios (``speedup``: baseline time / current time); then small json messages with
both revisions' ``JsonDecoder`` (``json_small_vs_baseline``); then the ``large`` messages,
json decoded by both revisions and cbor by the current one (``large_vs_baseline``: MB/s of
each, medians of the per-run ratios).

Example output line::

    {"case": "roundtrip", "framing": "cbor", "msg": "small", "encode_us": 0.6, ...}
"""

import gc
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time

import cbor2

from aemp_green.wire.framing import CborDecoder, codec

SMALL = ["KQPFl3bClb", "test", 1, "abc"]
PERL_MSG = [
    "KQPFl3bClb",
    "test",
    {
        "float": 3.25,
        "f": False,
        "list": [1, "two", [3, {"four": 4}]],
        "neg": -17,
        "null": None,
        "text": "Grüße, 世界 ✓ 😀",
        "big": 1099511627776,
        "int": 42,
        "t": True,
        "empty": {},
    },
    "peer_b#KSQsEF8z1b",
]


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
    return {
        "case": "roundtrip",
        "framing": name,
        "msg": label,
        "bytes": len(data),
        "encode_us": round(e * 1e6, 3),
        "decode_us": round(d * 1e6, 3),
        "roundtrip_us": round(b * 1e6, 3),
    }


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
    chunks = [data[i : i + read_size] for i in range(0, len(data), read_size)]

    def run(_n):
        d = dec_cls()
        got = 0
        for c in chunks:
            got += len(d.feed(c))
        assert got == nframes

    t = _best(run, 1, repeat)
    return {
        "case": "stream",
        "framing": name,
        "stream": label,
        "frames": nframes,
        "bytes": len(data),
        "read_size": read_size,
        "seconds": round(t, 5),
        "msgs_per_s": int(nframes / t),
        "us_per_msg": round(t / nframes * 1e6, 3),
    }


def _split_streams(n):
    typical = [["portname", "tag", i, "some text", [1, 2, 3]] for i in range(n)]
    rng = random.Random(1)
    mix = []
    for i, f in enumerate(typical):
        if i % 16 == 15:
            size = rng.randint(1024, 16384)
            kind = i % 3
            if kind == 0:
                big = "x" * size
            elif kind == 1:
                big = [rng.random() for _ in range(size // 9)]
            else:
                big = {"k%d" % j: [j, "v%d" % j] for j in range(size // 16)}
            f = ["portname", "big", i, big]
        mix.append(f)
    small = [["KQPFl3bClb", "test", i, "abc"] for i in range(n)]
    enc = codec("cbor")[0]
    return [
        ("small", small, b"".join(enc(f) for f in small)),
        ("typical", typical, b"".join(enc(f) for f in typical)),
        ("typical_perl_bytes", typical, b"".join(cbor2.dumps(_perl_cbor(f)) for f in typical)),
        ("mix", mix, b"".join(enc(f) for f in mix)),
    ]


def _chunks(data, read_size):
    return [data[i : i + read_size] for i in range(0, len(data), read_size)]


def _mid_frame_reads(chunks):
    d = CborDecoder()
    mid = 0
    for c in chunks:
        d.feed(c)
        mid += d.pending > 0
    return mid


def _run_split(dec_cls, chunks, nframes, clock=time.perf_counter):
    gc.collect()
    t0 = clock()
    d = dec_cls()
    got = 0
    for c in chunks:
        got += len(d.feed(c))
    t = clock() - t0
    assert got == nframes
    return t


def _split_cases(n):
    """Yield ``(label, frames, data, read_size, chunks)`` for every split-read stream and read size."""
    streams = _split_streams(n)
    gc.collect()
    gc.freeze()  # the test data must not make every full collection slower
    for label, frames, data in streams:
        for read_size in (65536, 262144):
            yield label, frames, data, read_size, _chunks(data, read_size)


def split(n, repeat):
    out = []
    for label, frames, data, read_size, chunks in _split_cases(n):
        t = min(_run_split(CborDecoder, chunks, n) for _ in range(repeat))
        out.append(
            {
                "case": "split",
                "framing": "cbor",
                "stream": label,
                "frames": n,
                "bytes": len(data),
                "read_size": read_size,
                "reads": len(chunks),
                "mid_frame_reads": _mid_frame_reads(chunks),
                "seconds": round(t, 5),
                "msgs_per_s": int(n / t),
            }
        )
    return out


_RECORD = {
    "float": 3.25,
    "f": False,
    "list": [1, "two", [3, {"four": 4}]],
    "neg": -17,
    "null": None,
    "text": "Grüße, 世界 ✓ 😀",
    "big": 1099511627776,
    "int": 42,
    "t": True,
}


def _large_messages():
    rng = random.Random(2)
    return [
        ("strings", ["port", "big", ["s%04d" % i + "y" * 995 for i in range(1000)]]),
        ("text", ["port", "big", "Grüße, 世界 ✓ Now and then \\ \"quoted\" text. " * 24000]),
        ("records", ["port", "big", [dict(_RECORD, i=i) for i in range(7000)]]),
        ("numbers", ["port", "big", [rng.random() for _ in range(50000)]]),
    ]


def _large_variants(msg):
    """``(label, decoder name, data)``: json as we send it, json as Perl sends it, cbor."""
    j = codec("json")[0](msg)
    return [
        ("json", "json", j),
        ("json_perl", "json", j[:-1]),
        ("cbor", "cbor", codec("cbor")[0](msg)),
    ]


def _run_large(dec_cls, chunks, msg, clock=time.perf_counter):
    gc.collect()  # (the previous run's garbage must not be collected on this one's time)
    t0 = clock()
    d = dec_cls()
    got = []
    for c in chunks:
        got += d.feed(c)
    t = clock() - t0
    assert len(got) == 1 and len(got[0]) == len(msg)
    return t


def large(runs, read_size=65536, classes=None):
    """The ``large`` case: 1 MB messages in 64 KiB reads, every decoder in alternation.

    ``classes`` maps a label to ``(decoder class, variant)``; default: the current decoders.
    """
    if classes is None:
        classes = {
            "json": (codec("json")[1], "json"),
            "json_perl": (codec("json")[1], "json_perl"),
            "cbor": (codec("cbor")[1], "cbor"),
        }
    out = []
    for label, msg in _large_messages():
        data = {v: d for v, _name, d in _large_variants(msg)}
        chunks = {v: _chunks(d, read_size) for v, d in data.items()}
        times = {k: [] for k in classes}
        gc.collect()
        order = list(classes.items())
        for r in range(runs + 1):  # the first round is a warm-up; the order alternates
            for k, (cls, variant) in order if r % 2 else order[::-1]:
                times[k].append(_run_large(cls, chunks[variant], msg, time.process_time))
        rec = {
            "case": "large",
            "msg": label,
            "read_size": read_size,
            "runs": runs,
            "bytes": {v: len(d) for v, d in data.items()},
        }
        for k, (cls, variant) in classes.items():
            rec[k + "_MBps"] = round(len(data[variant]) / statistics.median(times[k][1:]) / 1e6, 1)
        for k, (cls, variant) in classes.items():
            if k != "cbor":
                rec[k + "_per_cbor"] = round(
                    statistics.median(
                        (len(data[variant]) / t) / (len(data["cbor"]) / c)
                        for t, c in zip(times[k][1:], times["cbor"][1:])
                    ),
                    3,
                )
        out.append(rec)
    return out


def load_baseline(rev):
    """``aemp_green/framing.py`` of git revision ``rev``, as module aemp_green._baseline_framing
    (for paired comparisons only)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(
        ["git", "-C", root, "show", "%s:aemp_green/framing.py" % rev],
        check=True,
        capture_output=True,
    ).stdout
    spec = importlib.util.spec_from_loader("aemp_green._baseline_framing", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "aemp_green"
    exec(compile(src, "%s:aemp_green/framing.py" % rev, "exec"), mod.__dict__)
    return mod


def split_compare(rev, n, pairs):
    base_cls = load_baseline(rev).CborDecoder
    out = []
    for label, frames, data, read_size, chunks in _split_cases(n):
        for cls in (base_cls, CborDecoder):  # same frames from both, and warm-up
            d = cls()
            got = []
            for c in chunks:
                got += d.feed(c)
            assert got == frames
        tb, tn = [], []
        for i in range(pairs):
            order = ((base_cls, tb), (CborDecoder, tn))
            for cls, ts in order if i % 2 == 0 else order[::-1]:
                ts.append(_run_split(cls, chunks, n, time.process_time))
        out.append(
            {
                "case": "split_vs_baseline",
                "baseline": rev,
                "stream": label,
                "frames": n,
                "read_size": read_size,
                "reads": len(chunks),
                "mid_frame_reads": _mid_frame_reads(chunks),
                "pairs": pairs,
                "baseline_msgs_per_s": int(n / min(tb)),
                "current_msgs_per_s": int(n / min(tn)),
                "speedup": round(statistics.median(b / c for b, c in zip(tb, tn)), 2),
                "speedup_min_max": [
                    round(min(b / c for b, c in zip(tb, tn)), 2),
                    round(max(b / c for b, c in zip(tb, tn)), 2),
                ],
            }
        )
    return out


def json_small_compare(rev, pairs, number):
    """Small json messages, the decoder of ``rev`` against the current one, in alternation:
    one frame per ``feed`` (µs per message: the small message and the Perl test hash) and the
    10,000-frame streams in 64 KiB reads (ours with newlines, Perl's without)."""
    base_cls, cur_cls = load_baseline(rev).JsonDecoder, codec("json")[1]
    enc = codec("json")[0]
    frames = [["KQPFl3bClb", "test", i, "abc"] for i in range(10000)]
    cases = [
        ("feed_small", [enc(SMALL)] * number),
        ("feed_perl_test_hash", [enc(PERL_MSG)] * (number // 5)),
        ("stream_ours_newline", _chunks(b"".join(enc(f) for f in frames), 65536)),
        ("stream_perl_no_delimiter", _chunks(b"".join(enc(f)[:-1] for f in frames), 65536)),
    ]
    out = []
    for label, chunks in cases:

        def run(cls):
            d = cls()
            feed = d.feed
            t0 = time.process_time()
            for c in chunks:
                feed(c)
            return time.process_time() - t0

        tb, tn = [], []
        for i in range(pairs + 1):
            order = ((base_cls, tb), (cur_cls, tn))
            for cls, ts in order if i % 2 == 0 else order[::-1]:
                ts.append(run(cls))
        tb, tn = tb[1:], tn[1:]  # the first pair is a warm-up
        nmsg = len(chunks) if label.startswith("feed") else len(frames)
        out.append(
            {
                "case": "json_small_vs_baseline",
                "baseline": rev,
                "workload": label,
                "pairs": pairs,
                "baseline_us_per_msg": round(statistics.median(tb) / nmsg * 1e6, 3),
                "current_us_per_msg": round(statistics.median(tn) / nmsg * 1e6, 3),
                "speedup": round(statistics.median(b / c for b, c in zip(tb, tn)), 3),
                "speedup_min_max": [
                    round(min(b / c for b, c in zip(tb, tn)), 3),
                    round(max(b / c for b, c in zip(tb, tn)), 3),
                ],
            }
        )
    return out


def main(argv):
    quick = "--quick" in argv
    number, repeat = (5000, 3) if quick else (50000, 5)
    nsplit = 20000 if quick else 100000
    if "--large" in argv:  # the large case alone (with --baseline: json against REV too)
        if "--baseline" not in argv:
            for rec in large(5 if quick else 15):
                print(json.dumps(rec, ensure_ascii=False))
            return 0
    if "--baseline" in argv:
        rev = argv[argv.index("--baseline") + 1]
        if "--large" not in argv:
            for rec in split_compare(rev, nsplit, 6 if quick else 12):
                print(json.dumps(rec, ensure_ascii=False))
        for rec in json_small_compare(rev, 6 if quick else 15, number):
            print(json.dumps(rec, ensure_ascii=False))
        base_json = load_baseline(rev).JsonDecoder
        cur_json, cur_cbor = codec("json")[1], codec("cbor")[1]
        for rec in large(
            5 if quick else 15,
            classes={
                "base_json": (base_json, "json"),
                "json": (cur_json, "json"),
                "base_json_perl": (base_json, "json_perl"),
                "json_perl": (cur_json, "json_perl"),
                "cbor": (cur_cbor, "cbor"),
            },
        ):
            rec["case"] = "large_vs_baseline"
            rec["baseline"] = rev
            print(json.dumps(rec, ensure_ascii=False))
        return 0
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
    out += split(nsplit, repeat)
    out += large(5 if quick else 15)
    for rec in out:
        print(json.dumps(rec, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
