"""framing: the two AEMP data-phase framings, ``json`` and ``cbor``, sans-IO.

After the handshake every AEMP message is one array ``[portname, *payload]``, written back to
back with no delimiter and no length prefix (docs/protocol.md#framings). This module turns such
arrays into bytes (``encode_json``, ``encode_cbor``) and byte streams into arrays
(``JsonDecoder``, ``CborDecoder``). It never touches a socket: the transport feeds whatever it
read, at any byte boundary, and sends whatever it was given.

Value model
    Both framings carry ``str``, ``int``, ``float``, ``bool``, ``None``, ``list``/``tuple``
    (sent as arrays, received as ``list``) and ``dict`` with ``str`` keys. ``cbor`` also
    carries ``bytes`` (and ``bytes`` dict keys), and floats NaN/Infinity. Anything else makes
    the encoder raise ``TypeError`` naming the offending type, in the caller, before a single
    byte is queued. Containers nested deeper than ``MAX_DEPTH`` (or cyclic) are refused too.

json
    We send compact UTF-8 (raw non-ASCII, ``/`` not escaped, no spaces) and end every frame
    with ``b"\\n"``; a newline between frames is legal for Perl's incremental parser and lets a
    receiver split cheaply. ``JsonDecoder`` takes both that and Perl's undelimited stream
    (``["","g_slave"]["","g_find","seed"]``), with any whitespace between frames. It rejects
    invalid UTF-8 (including UTF-8-encoded surrogates) and the non-JSON literals
    ``NaN``/``Infinity``. (A ``\\ud800`` *escape* is syntactically valid JSON and is passed
    through as a lone surrogate, as Python's ``json`` does.)

cbor
    One CBOR item per message, no self-describe tag, no delimiter. Python ``str`` goes out as a
    CBOR text string, ``bytes`` as a byte string. The Perl peer sends almost every string (tags,
    port ids, hash keys) as a CBOR *byte* string, so ``CborDecoder`` turns every byte string
    that is pure ASCII into ``str``, everywhere: values, nested containers and map keys.
    **Decision:** a byte string that is not pure ASCII stays ``bytes`` (it may be binary data;
    Perl gives no way to tell). The one lossy case follows from this: a Python ``bytes`` value
    that happens to be pure ASCII (``b"abc"``) arrives at a Python peer as ``str`` (``"abc"``),
    exactly as a Perl peer would see no difference either. Map keys must be text or byte
    strings (all Perl ever sends; anything else, e.g. an array used as key, is a
    ``RemoteProtocolError``). If turning byte keys into ``str`` makes two keys equal
    (``{b"a": 1, "a": 2}``) the later one wins. Tags: a decoded frame never costs much more
    memory or time than its bytes. String references (tags 25/256, which repeat a string for
    3 bytes) and shared references (tag 29) are refused: the frame is malformed. Tags whose
    decoding is super-linear or runs a parser (4, 5, 30: decimal, bigfloat, rational; 35
    regex; 36 MIME) come out uninterpreted as ``cbor2.CBORTag``; unknown tags too. The other
    tags ``cbor2`` decodes natively (bignums, datetimes, ...) come out as ``cbor2`` gives them.

Decoders
    ``feed(data)`` returns the list of every frame completed so far (each a Python ``list``;
    an empty array comes out as ``[]`` and is the kernel's to drop) and keeps the incomplete
    tail. A frame that is not an array, malformed input, or a frame (complete or pending) larger
    than ``max_frame`` raises ``RemoteProtocolError``; nothing else ever escapes ``feed``.
    After an error the decoder is dead: every later ``feed`` raises the same error. A frame
    split over many reads is resumed where scanning stopped, so a large frame costs linear,
    not quadratic, time.

Speed (see ``bench/codec.py``)
    ``JsonDecoder`` first splits a read on newlines and hands each line to ``ujson``; a line
    that is not exactly one array (Perl's undelimited frames) goes to a regex that matches a
    whole frame nested up to 5 deep in one call, and deeper frames to a resumable scanner. A
    frame spanning reads is not scanned on every read: a newline is tried as its end (one
    ``ujson`` call), and the scanner runs only over reads that hold a ``]`` or ``}``, in
    strides of C calls (a regex over scalars, short strings and small nested values,
    ``bytes.find`` over long strings). A 1 MB message in 64 KiB reads decodes at 0.6-1x the
    speed of ``cbor`` for strings and text, 4-15x for maps and numbers (``bench/codec.py``,
    case ``large``). ``CborDecoder`` first decodes a whole read in a single
    ``cbor2.loads`` call (the read wrapped in an array and closed by a random sentinel, which
    proves that the read held complete items only). A large read that ends inside a frame (as
    during a flood) is split where a bounded search from its end guesses the last frame starts,
    and the part before is decoded in that single call (which proves the guess); what is left,
    or a read without a good guess, is decoded item by item, and a frame that stays incomplete
    is tracked by a small structural scanner until its last byte arrives. The byte-string
    fix-up costs one C-level type check per frame when there is nothing to fix. The encoders
    check the value model with one C-level type test for flat messages and a short loop
    otherwise; the value check must come first for ``cbor2``, which crashes (C stack overflow)
    on a few thousand levels of nesting.

Example::

    >>> enc, Dec = codec("json")
    >>> d = Dec()
    >>> data = enc(["port", "hello", 1]) + b'["","g_find","seed"]["x"'
    >>> d.feed(data[:5]), d.feed(data[5:]), d.feed(b"]")
    ([], [['port', 'hello', 1], ['', 'g_find', 'seed']], [['x']])
"""

import io
import json as _stdjson
import logging
import math
import os
import re
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import cbor2
import ujson

from .. import _protocol
from .._protocol import Msg
from ..exceptions import RemoteProtocolError

__all__ = [
    "FRAMINGS",
    "MAX_DEPTH",
    "DEFAULT_MAX_FRAME",
    "encode_json",
    "encode_cbor",
    "JsonDecoder",
    "CborDecoder",
    "codec",
]

logger = logging.getLogger(__name__)

#: The framings aemp_green speaks, in our order of preference.
FRAMINGS = _protocol.FRAMINGS

#: Deepest container nesting the encoders accept (Perl's JSON::XS/CBOR::XS default is 512).
MAX_DEPTH = 512

#: Default limit for one frame, in bytes.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

_NoneType = type(None)
_JSON_SCALARS = frozenset((str, int, float, bool, _NoneType))
_CBOR_SCALARS = frozenset((str, int, float, bool, _NoneType, bytes))
_CONTAINERS = frozenset((list, tuple, dict))


# --------------------------------------------------------------------------- value checks


def _type_name(v: object) -> str:
    t = type(v)
    return t.__name__ if t.__module__ == "builtins" else "%s.%s" % (t.__module__, t.__qualname__)


_STR_KEYS = frozenset((str,))
_STR_BYTES_KEYS = frozenset((str, bytes))


def _too_deep(fname: str) -> TypeError:
    return TypeError(
        "cannot encode as %s: containers nested more than %d deep "
        "(or a cyclic structure)" % (fname, MAX_DEPTH)
    )


def _check_keys(c: dict[Any, Any], key_types: tuple[type, ...], fname: str) -> None:
    for k in c:
        if not isinstance(k, key_types):
            raise TypeError(
                "cannot encode as %s: dict key %r has type %s, only %s keys can be "
                "sent" % (fname, k, _type_name(k), " or ".join(t.__name__ for t in key_types))
            )


def _check_value(msg: Sequence[Any], cbor: bool) -> None:
    """Walk ``msg`` and raise ``TypeError`` for anything the framing cannot carry.

    Depth-first, one tight loop (no recursion): nesting deeper than ``MAX_DEPTH``, which is
    also how a cyclic structure shows up, is refused before any encoder sees it (``cbor2``
    would overflow the C stack on very deep input).
    """
    if cbor:
        fname, scalars, key_set, key_types = "cbor", _CBOR_SCALARS, _STR_BYTES_KEYS, (str, bytes)
        bases = (str, int, float, bytes, bytearray)
    else:
        fname, scalars, key_set, key_types = "json", _JSON_SCALARS, _STR_KEYS, (str,)  # type: ignore[assignment]
        bases = (str, int, float)  # type: ignore[assignment]
    stack = [(msg, 1)]
    pop = stack.pop
    push = stack.append
    while stack:
        c, depth = pop()
        if isinstance(c, dict):
            if not key_set.issuperset(map(type, c)):
                _check_keys(c, key_types, fname)
            values = c.values()
        else:
            values = c  # type: ignore[assignment]
        for v in values:
            t = type(v)
            if t in scalars:
                continue
            if t is list or t is dict or t is tuple or isinstance(v, (list, tuple, dict)):
                if depth >= MAX_DEPTH:
                    raise _too_deep(fname)
                push((v, depth + 1))
            elif not isinstance(v, bases):
                raise TypeError(
                    "cannot encode a value of type %s as %s (%r)" % (_type_name(v), fname, v)
                )


def _check_frame_type(msg: object, fname: str) -> None:
    if not isinstance(msg, (list, tuple)):
        raise TypeError(
            "an AEMP %s frame must be a list or tuple, not %s" % (fname, _type_name(msg))
        )


# --------------------------------------------------------------------------- json

_ujson_dumps = ujson.dumps
_ujson_loads = ujson.loads


def encode_json(msg: Sequence[Any]) -> bytes:
    """Encode one message as a compact UTF-8 JSON array followed by ``b"\\n"``.

    Raises ``TypeError`` (naming the type) for values JSON cannot carry: ``bytes``, sets,
    arbitrary objects, non-``str`` dict keys, NaN/Infinity, strings with lone surrogates.

    Example::

        >>> encode_json(["a/b", "tag", {"k": [1, 2.5, None, True]}, "ü"])
        b'["a/b","tag",{"k":[1,2.5,null,true]},"\\xc3\\xbc"]\\n'
    """
    if type(msg) is not tuple and type(msg) is not list:  # snd() passes tuples
        _check_frame_type(msg, "json")
    if not _JSON_SCALARS.issuperset(map(type, msg)):
        _check_value(msg, False)
    try:
        # positional: ensure_ascii, encode_html_chars, escape_forward_slashes, sort_keys,
        # indent, allow_nan (keyword parsing costs more than the encoding itself)
        text = _ujson_dumps(msg, False, False, False, False, 0, False)
        return text.encode() + b"\n"
    except OverflowError as exc:
        if any(isinstance(v, float) and not math.isfinite(v) for v in _iter_scalars(msg)):
            raise TypeError("cannot encode a float NaN/Infinity as json") from None
        raise TypeError("cannot encode as json: %s" % (exc,)) from None
    except UnicodeEncodeError:
        raise TypeError("cannot encode as json: a str contains a lone surrogate") from None
    except (TypeError, ValueError) as exc:
        raise TypeError("cannot encode as json: %s" % (exc,)) from None


def _iter_scalars(msg: Any) -> Iterator[Any]:
    stack = [msg]
    while stack:
        c = stack.pop()
        for v in c.values() if isinstance(c, dict) else c:
            if isinstance(v, (list, tuple, dict)):
                if len(stack) < MAX_DEPTH:
                    stack.append(v)
            else:
                yield v


#: what the decoders read: ``bytes``, or a ``bytearray`` of a pending frame
_Bytes = Union[bytes, bytearray]

_WS = re.compile(rb"[ \t\r\n]*+")
# Input that ujson would accept although it is not valid UTF-8 JSON: UTF-8-encoded surrogates
# and the NaN/Infinity literals. Rare; a hit sends the frame through the strict decoder.
_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")
# (for long inputs a regex literal search beats ``in`` on this machine, 4 GB/s against 2)
_NAN = re.compile(rb"NaN").search
_INFINITY = re.compile(rb"Infinity").search


def _json_suspect(b: _Bytes) -> bool:
    """True if ``b`` may hold UTF-8-encoded surrogates or NaN/Infinity (fast substring tests
    first: a regex over every read would cost more than the JSON parsing)."""
    return b"NaN" in b or b"Infinity" in b or (b"\xed" in b and _SURROGATE.search(b) is not None)


def _json_suspect_long(b: _Bytes) -> bool:
    """``_json_suspect`` for long input (twice as fast from a few KB on): ``N``, ``I`` and
    ``\\xed`` are looked for alone first (``memchr``), and only the ones found lead to a
    literal search."""
    return (
        (b"N" in b and _NAN(b) is not None)
        or (b"I" in b and _INFINITY(b) is not None)
        or (b"\xed" in b and _SURROGATE.search(b) is not None)
    )


def _too_large(kind: str, size: int, limit: int, at_least: bool = False) -> RemoteProtocolError:
    """The error for a frame beyond ``max_frame``: the frame's size (``at_least``: what has
    been seen of it so far), the limit, and the setting that raises it.

    Example::

        >>> text = str(_too_large("json", 102417, 65536))
        >>> text.startswith("json frame larger than allowed: 102417 bytes, max_frame is 65536")
        True
        >>> text.endswith(" bytes (raise the max_frame setting to accept it)")
        True
    """
    return RemoteProtocolError(
        "%s frame larger than allowed: %s%d bytes, max_frame is %d bytes (raise the max_frame "
        "setting to accept it)" % (kind, "at least " if at_least else "", size, limit)
    )


_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'


def _nest(atom: bytes, levels: int) -> bytes:
    """A regex for one complete array or object nested at most ``levels`` deep, made of
    ``atom`` and such nested values (bracket kinds are not paired: the parser rejects ``[}``)."""
    inner = rb"[\[{]" + atom + rb"*+[\]}]"
    for _ in range(levels - 1):
        inner = rb"[\[{](?:" + atom + rb"|" + inner + rb")*+[\]}]"
    return inner


# A complete top-level array nested at most 5 deep, in one regex call.
_JSON_FRAME = re.compile(
    rb"\[(?:(?:[^\[\]{}\"]++|"
    + _STRING
    + rb")|"
    + _nest(rb"(?:[^\[\]{}\"]++|" + _STRING + rb")", 4)
    + rb")*+[\]}]",
    re.S,
)
# The scanner's stride (see JsonDecoder._scan): inside a frame, everything up to the next
# bracket or string that it cannot take whole: scalars, short strings without escapes and
# complete values nested at most 4 deep made of those. A longer string or one with escapes
# is left to bytes.find (memchr) and _JSON_STR_REST, which are faster on long strings.
_SHORT_ATOM = rb'(?:[^\[\]{}"]++|"[^"\\]{0,128}+")'
_JSON_SKIP = re.compile(rb"(?:" + _SHORT_ATOM + rb"|" + _nest(_SHORT_ATOM, 4) + rb")*+", re.S).match
# The rest of a string from a backslash on: up to its closing quote (excluded), the end of
# the buffer, or a backslash that is the buffer's last byte (its escaped byte not there yet).
_JSON_STR_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.S).match


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not valid JSON" % name)


def _json_frame(b: _Bytes, suspect: Callable[[_Bytes], bool] = _json_suspect) -> Msg:
    """Decode one complete frame (bytes or bytearray) into a list or raise
    RemoteProtocolError (``suspect(b)`` true: with the strict decoder)."""
    if suspect(b):
        try:
            obj = _stdjson.loads(b.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError("json frame is not valid UTF-8: %s" % (exc,)) from None
        except (ValueError, RecursionError) as exc:
            raise RemoteProtocolError("invalid json frame: %s" % (exc,)) from None
    else:
        try:
            obj = _ujson_loads(b)
        except (ValueError, OverflowError) as exc:
            raise RemoteProtocolError("invalid json frame: %s" % (exc,)) from None
    if type(obj) is not list:
        raise RemoteProtocolError("json frame is not an array (%s)" % (type(obj).__name__,))
    return obj


def _json_whole(buf: _Bytes) -> Optional[Msg]:
    """``buf`` (starting with ``[``) decoded as exactly one frame, or None if it is not one
    (incomplete, followed by more, or invalid: the scanner then finds out which)."""
    try:
        return _json_frame(buf, _json_suspect_long)
    except RemoteProtocolError:
        return None


class _Decoder:
    """What both decoders share: ``pending`` and ``feed``, which makes every failure sticky and
    turns any unexpected exception into ``RemoteProtocolError`` (subclasses implement ``_feed``).
    """

    _kind = "?"
    _pbuf: Optional[bytearray]
    _error: Optional[str]

    def _feed(self, data: _Bytes) -> list[Msg]:  # pragma: no cover - the subclasses have one
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Number of buffered bytes of an incomplete frame."""
        return len(self._pbuf) if self._pbuf is not None else 0

    def feed(self, data: _Bytes) -> list[Msg]:
        """Add ``data`` (bytes) and return the list of frames it completed."""
        if self._error is not None:
            raise RemoteProtocolError(self._error)
        try:
            return self._feed(data)
        except RemoteProtocolError as exc:
            self._error = str(exc)
            raise
        except Exception as exc:  # pragma: no cover - safety net, must never happen
            self._error = "%s decoder failure: %r" % (self._kind, exc)
            logger.exception("unexpected error in the %s decoder", self._kind)
            raise RemoteProtocolError(self._error) from exc


class JsonDecoder(_Decoder):
    """Incremental decoder for a stream of JSON arrays (the AEMP ``json`` framing).

    Accepts frames back to back with no delimiter (Perl), separated by newlines (aemp_green)
    or any JSON whitespace, split at any byte. ``feed`` returns the frames completed so far.

    A frame spanning several reads is kept in a buffer, and each read is looked at once: a
    newline in it (our peers end every frame with one) is tried as the frame's end by parsing
    the buffer up to it; otherwise a frame can only have ended in the read if the read holds
    a ``]`` or ``}``, and only then does the structural scanner run, resuming where it stopped
    (position, nesting depth, inside a string or not). A read that ends with ``]`` while most
    of the buffer is still unscanned (Perl's frames of long strings) is tried as the frame's
    end too. A failed try costs one parse of the buffer; the newline try is made once per
    frame and the ``]`` try only after the unscanned part has doubled, so the total stays
    linear in the frame's size.

    Example::

        >>> d = JsonDecoder()
        >>> d.feed(b'["","g_slave"]["","g_find","se')
        [['', 'g_slave']]
        >>> d.feed(b'ed"]\\n["p",1]\\n')
        [['', 'g_find', 'seed'], ['p', 1]]
    """

    _kind = "json"

    __slots__ = ("max_frame", "_pbuf", "_scan_pos", "_depth", "_in_str", "_error", "_nl_try")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._pbuf = None  # bytearray holding an incomplete frame (starts at its '[')
        self._scan_pos = 0  # where scanning of _pbuf resumes (see _feed_pending)
        self._depth = 0
        self._in_str = False
        self._nl_try = True  # a newline may still be tried as the pending frame's end
        self._error = None

    def _feed(self, data: _Bytes) -> list[Msg]:
        frames: list[Msg] = []
        if self._pbuf is not None:
            data = self._feed_pending(data, frames)  # type: ignore[assignment]
            if data is None:
                return frames
        elif type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        if not n:
            return frames
        pos = 0
        max_frame = self.max_frame
        # fast path: newline-separated frames (our own peers), one ujson call per frame
        pieces = data.split(b"\n")
        if len(pieces) > 1 and not (_json_suspect(data) if n < 4096 else _json_suspect_long(data)):
            tail = pieces.pop()
            append = frames.append
            for piece in pieces:
                if len(piece) > max_frame:
                    break
                try:
                    obj = _ujson_loads(piece)
                except (ValueError, OverflowError):
                    obj = None
                if type(obj) is list:
                    append(obj)
                    pos += len(piece) + 1
                    continue
                if obj is None and not piece.strip(b" \t\r"):
                    pos += len(piece) + 1
                    continue
                break  # several frames on one line, a frame spanning lines, or an error
            else:
                if not tail:
                    return frames
        # general path: scan for the end of each top-level array
        ws = _WS.match
        frame_match = _JSON_FRAME.match
        # no frame can end after the last ']' or '}' of the read: a frame that starts there
        # (the start of a long one, or the tail of a read of small ones) waits for more data
        last = data.rfind(b"]")
        if last < n - 1:
            last = max(last, data.rfind(b"}", last + 1))
        stop = last + 1
        while True:
            pos = ws(data, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return frames
            if data[pos] != 0x5B:  # '['
                raise RemoteProtocolError(
                    "json frame is not an array (starts with %r)" % data[pos : pos + 10]
                )
            m = frame_match(data, pos, stop)  # (fails at once for a frame after the last ']')
            if m is not None:
                end = m.end()
            else:
                self._depth = 0
                self._in_str = False
                if pos > last:
                    end = -1  # (its scanning is left for later)
                    self._scan_pos = pos
                else:
                    end = self._scan(data, pos)
            if end < 0:
                if n - pos > max_frame:
                    raise _too_large("json", n - pos, max_frame, True)
                self._pbuf = bytearray(data[pos:])
                self._scan_pos -= pos
                self._nl_try = True
                return frames
            if end - pos > max_frame:
                raise _too_large("json", end - pos, max_frame)
            frames.append(_json_frame(data[pos:end]))
            pos = end

    def _feed_pending(self, data: _Bytes, frames: list[Msg]) -> Optional[bytes]:
        """Add ``data`` to the pending frame; if that completes it, append it to ``frames``
        and return the bytes after it (for ``_feed`` to go on with), else return None."""
        pbuf = self._pbuf
        old = len(pbuf)  # type: ignore[arg-type]
        pbuf += data  # type: ignore[operator]
        n = len(pbuf)
        max_frame = self.max_frame
        if self._nl_try:
            k = pbuf.find(b"\n", old)
            if k >= 0:
                self._nl_try = False
                j = k
                while pbuf[j - 1] in b" \t\r":  # (pbuf[0] is '[')
                    j -= 1
                if j <= max_frame:
                    obj = _json_whole(pbuf if k == n - 1 else pbuf[:k])
                    if obj is not None:
                        frames.append(obj)
                        self._pbuf = None
                        return bytes(pbuf[k + 1 :])
        if pbuf.find(b"]", old) < 0 and pbuf.find(b"}", old) < 0:
            end = -1  # no ']' or '}' in the new data: the frame cannot have ended in it
        else:
            scan_pos = self._scan_pos
            if pbuf[-1] == 0x5D and n - scan_pos > scan_pos and n <= max_frame:
                # Perl's frames have no newline; a read that ends with ']' most likely ends
                # the frame. Tried while more of the buffer is unscanned than scanned, which
                # bounds the failed tries (the scan below catches up after each).
                obj = _json_whole(pbuf)
                if obj is not None:
                    frames.append(obj)
                    self._pbuf = None
                    return b""
            end = self._scan(pbuf, scan_pos)
        if end < 0:
            if n > max_frame:
                raise _too_large("json", n, max_frame, True)
            return None
        if end > max_frame:
            raise _too_large("json", end, max_frame)
        frames.append(_json_frame(pbuf if end == n else pbuf[:end], _json_suspect_long))
        self._pbuf = None
        return bytes(pbuf[end:])

    def _scan(self, buf: _Bytes, i: int) -> int:
        """Scan ``buf`` from ``i`` for the end of the current frame.

        Returns the end offset (exclusive), or -1 when the frame is incomplete; then the state
        is saved so that the next call resumes at ``self._scan_pos``. Each call scans every
        byte from ``i`` to the end once (a bounded number of times inside nested values the
        stride regex gives up on), mostly in C: ``_JSON_SKIP`` over scalars, short strings and
        small nested values, ``bytes.find`` and ``_JSON_STR_REST`` over long strings; Python
        code runs once per bracket or string that the stride stops at.
        """
        depth = self._depth
        in_str = self._in_str
        n = len(buf)
        skip = _JSON_SKIP
        str_rest = _JSON_STR_REST
        find = buf.find
        while True:
            if in_str:  # i is inside a string, not inside an escape
                q = find(b'"', i)
                e = find(b"\\", i, n if q < 0 else q)
                if e < 0:
                    if q < 0:
                        i = n
                        break
                    i = q + 1
                else:
                    i = str_rest(buf, e).end()  # type: ignore[union-attr]
                    if i >= n:
                        break
                    if buf[i] == 0x5C:  # the buffer's last byte: resume at the backslash
                        break
                    i += 1
                in_str = False
                continue
            if depth:
                i = skip(buf, i).end()  # type: ignore[union-attr]
            if i >= n:
                break
            c = buf[i]
            i += 1
            if c == 0x22:
                in_str = True
            elif c == 0x5B or c == 0x7B:
                depth += 1
            else:
                depth -= 1
                if depth <= 0:
                    self._depth = 0
                    self._in_str = False
                    return i
        self._depth = depth
        self._in_str = in_str
        self._scan_pos = i
        return -1


# --------------------------------------------------------------------------- cbor

_CBORDecoder = cbor2.CBORDecoder
_cbor_loads = cbor2.loads
_EMPTY = io.BytesIO(b"")
_CBORDecodeEOF = cbor2.CBORDecodeEOF
_BytesIO = io.BytesIO
_frozendict = cbor2.frozendict
# types that make a decoded frame need the fix-up walk: byte strings, containers to walk, and
# the immutable containers cbor2 returns inside a self-describe tag (55799)
_NEEDS_FIX = frozenset((bytes, list, dict, tuple, _frozendict))
_encoder_pool: list[Any] = []


def _refused_tag(tag: int, what: str) -> Callable[[Any, bool], Any]:
    def refuse(value: Any, immutable: bool) -> Any:
        raise ValueError("CBOR tag %d (%s) refused" % (tag, what))

    return refuse


def _opaque_tag(tag: int) -> Callable[[Any, bool], Any]:
    def opaque(value: Any, immutable: bool) -> Any:
        return _CBORTag(tag, value)

    return opaque


def _cbor_why(exc: BaseException) -> str:
    """cbor2's error text, with the cause it wraps (e.g. why a tag was refused)."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in str(exc):
        return "%s: %s" % (exc, cause)
    return str(exc)


def _plain_shareable(value: Any, immutable: bool) -> Any:
    return value


_CBORTag = cbor2.CBORTag
# The CBOR tags cbor2 would interpret (see the module docstring, "Tags"). A peer that holds the
# secret must not make us use far more memory or CPU than the bytes it sent:
# * refused (the frame is malformed, the link is dropped): string references (25, 256: a
#   3-byte reference repeats a whole string, 109 KB became 303 MB) and shared references (29:
#   cycles, repetition). Perl's CBOR::XS sends none of them unless told to (pack_strings,
#   allow_sharing); tag 28 alone (a value marked shareable) is harmless and decoded as its value.
# * left uninterpreted (a cbor2.CBORTag): tags whose decoding costs more than linear time in
#   the input (4 decimal fraction, 5 bigfloat, 30 rational: big-number arithmetic, 0.5 s for
#   an 80 KB decimal, four times that for twice the size) or runs a parser on peer data (35
#   regular expression, 36 MIME message).
# Everything else cbor2 decodes in time and memory linear in the input (the largest factor is
# for empty containers: a 1-byte empty map becomes about 80 bytes).
_SEMANTIC = {
    25: _refused_tag(25, "string reference"),
    256: _refused_tag(256, "string reference namespace"),
    28: _plain_shareable,
    29: _refused_tag(29, "shared reference"),
    4: _opaque_tag(4),
    5: _opaque_tag(5),
    30: _opaque_tag(30),
    35: _opaque_tag(35),
    36: _opaque_tag(36),
}


def encode_cbor(msg: Sequence[Any]) -> bytes:
    """Encode one message as a single CBOR array item (no tag, no delimiter).

    ``str`` becomes a CBOR text string, ``bytes`` a byte string; ints beyond 64 bits become
    bignum tags. Other types (sets, datetimes, objects, non-string dict keys...) raise
    ``TypeError`` naming the type.

    Example::

        >>> encode_cbor(["", "g_find", b"\\x01"]).hex()
        '836066675f66696e644101'
    """
    if type(msg) is not tuple and type(msg) is not list:
        _check_frame_type(msg, "cbor")
    if not _CBOR_SCALARS.issuperset(map(type, msg)):
        _check_value(msg, True)
    # A reusable encoder is twice as fast as cbor2.dumps. Each call takes one from the pool
    # (list.pop/append are atomic), so re-entrant calls (a finalizer sending a message in the
    # middle of an encode) and threads never share one.
    try:
        enc = _encoder_pool.pop()
    except IndexError:
        enc = cbor2.CBOREncoder(_BytesIO())
    try:
        out = enc.encode_to_bytes(msg)
        _encoder_pool.append(enc)
        return out
    except (cbor2.CBOREncodeError, TypeError, ValueError, OverflowError) as exc:
        raise TypeError("cannot encode as cbor: %s" % (exc,)) from None


def _fix_bytes(frame: Any, text: bool = False) -> Msg:
    """Turn every pure-ASCII byte string in ``frame`` (values and map keys) into ``str`` (with
    ``text``: every byte string, read as Latin-1, which is what a Perl string without the UTF-8
    flag holds), and the tuples / frozendicts cbor2 makes inside a self-describe tag into lists /
    dicts."""
    stack = [frame]
    pop = stack.pop
    push = stack.append
    while stack:
        c = pop()
        if type(c) is list:
            i = 0
            for v in c:
                t = type(v)
                if t is bytes:
                    if text or v.isascii():
                        c[i] = v.decode("latin-1")
                elif t is list or t is dict:
                    push(v)
                elif t is tuple or t is _frozendict:
                    v = c[i] = list(v) if t is tuple else dict(v)
                    push(v)
                i += 1
        else:  # dict
            for k in c:
                if type(k) is bytes:
                    items = [
                        (
                            (k.decode("latin-1") if text or k.isascii() else k)
                            if type(k) is bytes
                            else k,
                            v,
                        )
                        for k, v in c.items()
                    ]
                    c.clear()
                    c.update(items)
                    break
            for k, v in c.items():
                t = type(v)
                if t is bytes:
                    if text or v.isascii():
                        c[k] = v.decode("latin-1")
                elif t is list or t is dict:
                    push(v)
                elif t is tuple or t is _frozendict:
                    v = c[k] = list(v) if t is tuple else dict(v)
                    push(v)
    return frame


def _cbor_skip(buf: _Bytes, pos: int, stack: list[int], limit: int) -> tuple[int, bool]:
    """Advance over CBOR items in ``buf`` from ``pos`` without decoding them.

    ``stack`` holds the open containers (remaining item count, or -1 for indefinite length).
    Returns ``(pos, done)``: ``done`` is True when the top-level item ends at ``pos``; False
    means more data is needed and scanning resumes at ``pos`` with the same ``stack``.
    Raises RemoteProtocolError for malformed heads or declared sizes beyond ``limit``.
    """
    n = len(buf)
    while True:
        if pos >= n:
            return pos, False
        ib = buf[pos]
        mt = ib >> 5
        ai = ib & 31
        if ai < 24:
            arg = ai
            hl = 1
        elif ai < 28:
            hl = 1 + (1 << (ai - 24))
            if pos + hl > n:
                return pos, False
            arg = int.from_bytes(buf[pos + 1 : pos + hl], "big")
        elif ai == 31:
            arg = -1
            hl = 1
        else:
            raise RemoteProtocolError("malformed cbor: reserved additional info %d" % ai)
        if len(stack) > 1024:
            raise RemoteProtocolError("malformed cbor: nested too deeply")
        complete = False
        if arg < 0:  # indefinite length or break
            if mt == 7:
                if not stack or stack[-1] != -1:
                    raise RemoteProtocolError("malformed cbor: unexpected break")
                stack.pop()
                pos += 1
                complete = True
            elif 2 <= mt <= 5:
                stack.append(-1)
                pos += 1
            else:
                raise RemoteProtocolError(
                    "malformed cbor: indefinite length for major type %d" % mt
                )
        elif mt <= 1 or mt == 7:
            pos += hl
            complete = True
        elif mt <= 3:
            end = pos + hl + arg
            if end > limit:
                raise _too_large("cbor", end, limit, True)  # (a string announces its size)
            if end > n:
                return pos, False
            pos = end
            complete = True
        elif mt <= 5:
            if arg > limit:
                raise _too_large("cbor", pos + hl + (arg if mt == 4 else 2 * arg), limit, True)
            pos += hl
            if arg:
                stack.append(arg if mt == 4 else 2 * arg)
            else:
                complete = True
        else:  # tag: its content is the next item
            pos += hl
        if complete:
            while True:
                if not stack:
                    return pos, True
                top = stack[-1]
                if top < 0:
                    break
                if top > 1:
                    stack[-1] = top - 1
                    break
                stack.pop()


class CborDecoder(_Decoder):
    """Incremental decoder for a stream of concatenated CBOR arrays (the AEMP ``cbor`` framing).

    Pure-ASCII byte strings come out as ``str`` (see the module docstring); the Perl peer sends
    ``["", "g_slave"]`` as ``82 40 47 675f736c617665``. With ``text_bytes`` (the link's peer is
    a Perl node, whose strings have no bytes/text distinction) every byte string comes out as
    ``str``, read as Latin-1: a Perl ``"caf\\xe9"`` is the text ``"café"``.

    Example::

        >>> d = CborDecoder()
        >>> d.feed(bytes.fromhex("824047675f736c61"))
        []
        >>> d.feed(bytes.fromhex("7665") + encode_cbor(["p", b"\\xff", 1]))
        [['', 'g_slave'], ['p', b'\\xff', 1]]
        >>> CborDecoder(text_bytes=True).feed(encode_cbor(["p", b"caf\\xe9", {b"cl\\xe9": 1}]))
        [['p', 'café', {'clé': 1}]]
    """

    _kind = "cbor"
    _skip_stack: list[int]
    _dec: Optional[cbor2.CBORDecoder]

    # Reads shorter than this that end inside a frame are decoded item by item (see _feed),
    # and _last_frame_start looks for the last frame in the last 1/2**_REACH_SHIFT of a read.
    _SPLIT_MIN = 4096
    _REACH_SHIFT = 5
    # For _last_frame_start only (a guess, never trusted): "A" for the head of an array of
    # 1-23 items or of indefinite length, "S" for the head of a string (text or bytes) ...
    _HEAD_CLASSES = bytes(
        ord("A")
        if 0x81 <= b <= 0x97 or b == 0x9F
        else ord("S")
        if 0x40 <= b <= 0x5B or 0x60 <= b <= 0x7B
        else ord(".")
        for b in range(256)
    )
    # ... and what may follow a complete frame: an array (up to 255 items) that starts with a
    # string, after tag 55799 or not, or [].
    _frame_like = re.compile(
        b"\x80|(?:\xd9\xd9\xf7)?(?:[\x81-\x97\x9f]|\x98[\x18-\xff])[\x40-\x5b\x60-\x7b]"
    ).match

    __slots__ = (
        "max_frame",
        "_pbuf",
        "_skip_pos",
        "_skip_stack",
        "_error",
        "_dec",
        "_wrap",
        "_suffix",
        "_sentinel",
        "_text",
    )

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, text_bytes: bool = False) -> None:
        self.max_frame = max_frame
        #: every byte string becomes str (Latin-1): for a Perl peer, which has no bytes type
        self._text = bool(text_bytes)
        self._pbuf = None  # bytearray: an incomplete frame
        self._skip_pos = 0
        self._skip_stack = []
        self._error = None
        self._dec = None  # a reusable cbor2.CBORDecoder for the item-by-item path
        self._wrap = True  # try the one-call path first (see _feed)
        # An unguessable byte string closing the one-call wrapper (see _feed_wrapped).
        self._sentinel = os.urandom(16)
        self._suffix = b"\xff\x50" + self._sentinel

    def _feed(self, data: _Bytes) -> list[Msg]:
        frames: list[Msg] = []
        if self._pbuf is not None:
            pbuf = self._pbuf
            pbuf += data
            end, done = _cbor_skip(pbuf, self._skip_pos, self._skip_stack, self.max_frame)
            if not done:
                if len(pbuf) > self.max_frame:
                    raise _too_large("cbor", len(pbuf), self.max_frame, True)
                self._skip_pos = end
                return frames
            if end > self.max_frame:
                raise _too_large("cbor", end, self.max_frame)
            self._pbuf = None
            frame = bytes(pbuf[:end])
            got = self._decode_items(frame, frames)
            if got != end:
                raise RemoteProtocolError("malformed cbor frame")
            data = bytes(pbuf[end:])
        elif type(data) is not bytes:
            data = bytes(data)
        if not data:
            return frames
        n = len(data)
        tried = False
        if self._wrap and n <= self.max_frame:
            got = self._feed_wrapped(data)  # type: ignore[assignment]
            if got is not None:
                frames += got  # type: ignore[arg-type]
                return frames
            tried = True
        if n >= self._SPLIT_MIN:
            # The read (most likely) ends inside a frame: decode the complete frames before
            # the last one in one call too, if we can find where that last frame starts.
            # (Large reads keep coming this way, even one that happens to end at a frame
            # boundary: trying the whole read first would fail for most of the next ones.)
            t = self._last_frame_start(data)
            if 0 < t <= self.max_frame and not (tried and t == n):
                got = self._feed_wrapped(data if t == n else data[:t])  # type: ignore[assignment]
                if got is not None:  # data[:t] holds complete frames only: t is a boundary
                    frames += got  # type: ignore[arg-type]
                    if t == n:
                        return frames
                    data = data[t:]
        pos = self._decode_items(data, frames)
        if pos < len(data):
            self._wrap = False  # reads end inside frames: the one-call path would fail too
            self._start_pending(data, pos)
        else:
            self._wrap = True
        return frames

    def _feed_wrapped(self, data: bytes) -> Optional[list[Msg]]:
        """Decode all of ``data`` in one ``cbor2.loads`` call, or return None.

        ``data`` is wrapped as ``[[_ frames... ], sentinel]`` (an indefinite-length array of
        the frames, closed by a break, then a 16-byte random byte string). It decodes to that
        shape only if ``data`` is a sequence of complete items and nothing else: a truncated
        last frame or a stray break inside ``data`` cannot produce our random sentinel in the
        right place. Anything else (errors included) returns None and the item-by-item path
        decides.
        """
        try:
            res = _cbor_loads(
                b"\x82\x9f" + data + self._suffix,
                semantic_decoders=_SEMANTIC,
                strict_hashable_types=True,
                max_depth=MAX_DEPTH + 2,
            )
        except Exception:
            return None
        if (
            type(res) is not list
            or len(res) != 2
            or type(res[1]) is not bytes
            or res[1] != self._sentinel
            or type(res[0]) is not list
        ):
            return None  # pragma: no cover - would need the sentinel
        frames = res[0]
        needs_fix = _NEEDS_FIX.isdisjoint
        for i, obj in enumerate(frames):
            t = type(obj)
            if t is not list:
                if t is tuple:  # a self-describe tag (55799) makes cbor2 return a tuple
                    obj = frames[i] = list(obj)
                else:
                    return None  # let the item-by-item path report it
            if not needs_fix(map(type, obj)):
                _fix_bytes(obj, self._text)
        return frames

    def _decode_items(self, data: bytes, frames: list[Msg]) -> int:
        """Decode the complete items of ``data`` one by one into ``frames``; return the offset
        reached (``len(data)`` unless the last item is incomplete)."""
        n = len(data)
        f = _BytesIO(data)
        dec = self._dec
        if dec is None:
            dec = self._dec = _CBORDecoder(
                f, semantic_decoders=_SEMANTIC, strict_hashable_types=True, max_depth=MAX_DEPTH + 2
            )
        else:
            dec.fp = f
        decode = dec.decode
        tell = f.tell
        append = frames.append
        needs_fix = _NEEDS_FIX.isdisjoint
        max_frame = self.max_frame
        pos = 0
        while pos < n:
            try:
                obj = decode()
            except _CBORDecodeEOF:
                self._dec = None  # start the next item with a fresh decoder state
                return pos
            except Exception as exc:
                self._dec = None
                raise RemoteProtocolError("invalid cbor frame: %s" % (_cbor_why(exc),)) from None
            end = tell()
            if end - pos > max_frame:
                raise _too_large("cbor", end - pos, max_frame)
            pos = end
            t = type(obj)
            if t is not list:
                if t is tuple:  # a self-describe tag (55799) makes cbor2 return a tuple
                    obj = list(obj)
                else:
                    raise RemoteProtocolError("cbor frame is not an array (%s)" % (t.__name__,))
            if not needs_fix(map(type, obj)):
                _fix_bytes(obj, self._text)
            append(obj)
        dec.fp = _EMPTY  # do not keep the read buffer alive
        return pos

    def _last_frame_start(self, data: bytes) -> int:
        """Guess where the last frame of ``data`` (a read that starts at a frame boundary)
        begins: the offset of the incomplete last frame, ``len(data)`` if the read seems to
        end at a frame boundary, or -1 if no guess was found.

        Only a guess: it is used only to split ``data`` for ``_feed_wrapped``, which proves
        that ``data[:t]`` holds complete items only (and a sequence of complete CBOR items
        decodes the same wherever the stream goes on, so ``t`` then is a true frame boundary;
        the rest goes to the item-by-item path). A wrong guess costs time, never a wrong frame.

        Every AEMP message is an array that starts with the port name, a string. Going back
        from the end over such array heads ("candidates"), we look for one from which
        ``cbor2`` decodes a complete item, followed by nothing but items that start like a
        frame up to the end; the start of the last, unfinished one (or the end of the read)
        is the guess. The work is bounded (at most 8 candidates, all in the last n/32 bytes,
        decoding at most n/16 bytes in all): a read that ends inside a large frame is left to
        the item-by-item path.
        """
        n = len(data)
        reach = min(n >> self._REACH_SHIFT, 32768)
        work = 2 * reach
        lo = n - reach
        # one letter per byte: "A" array head, "S" string head (see _HEAD_CLASSES)
        classes = data[lo:].translate(self._HEAD_CLASSES)
        find = classes.rfind
        f = _BytesIO(data)
        seek = f.seek
        tell = f.tell
        frame_like = self._frame_like
        dec = None  # our own decoder: decoding at a guessed offset must not touch self._dec
        eof_at = -1
        end = reach
        for _ in range(8):
            j = find(b"AS", 0, end)
            if j < 0:
                return -1
            end = j + 1
            c = lo + j
            work -= n - c  # decoding from c reads at most n - c bytes
            if work < 0:
                return -1
            if dec is None:  # (a fresh one after any exception, as in _decode_items)
                dec = _CBORDecoder(
                    f,
                    semantic_decoders=_SEMANTIC,
                    strict_hashable_types=True,
                    max_depth=MAX_DEPTH + 2,
                )
            seek(c)
            try:
                dec.decode()
                while True:
                    p = tell()
                    if p == n or p == eof_at:  # (decoding from eof_at needs more data)
                        return p
                    if frame_like(data, p) is None:
                        break
                    try:
                        dec.decode()
                    except _CBORDecodeEOF:
                        return p
            except _CBORDecodeEOF:
                dec = None
                eof_at = c  # maybe the start of the last frame: remember it for the chain
            except Exception:
                dec = None
        return -1

    def _start_pending(self, data: bytes, pos: int) -> None:
        if data[pos] >> 5 not in (4, 6):
            raise RemoteProtocolError(
                "cbor frame is not an array (initial byte 0x%02x)" % data[pos]
            )
        pbuf = bytearray(data[pos:])
        stack: list[int] = []
        end, done = _cbor_skip(pbuf, 0, stack, self.max_frame)
        if done:  # cbor2 wanted more data than the item's structure says: malformed
            raise RemoteProtocolError("malformed cbor frame")
        if len(pbuf) > self.max_frame:
            raise _too_large("cbor", len(pbuf), self.max_frame, True)
        self._pbuf = pbuf
        self._skip_pos = end
        self._skip_stack = stack


# --------------------------------------------------------------------------- registry

_CODECS = {
    "json": (encode_json, JsonDecoder),
    "cbor": (encode_cbor, CborDecoder),
}


def codec(name: str) -> tuple[Callable[[Sequence[Any]], bytes], Callable[..., _Decoder]]:
    """Return ``(encode_fn, decoder_class)`` for the framing ``name`` (``"json"``/``"cbor"``).

    Example::

        >>> enc, Dec = codec("cbor")
        >>> Dec().feed(enc(["p", "hi"]))
        [['p', 'hi']]
    """
    try:
        return _CODECS[name]
    except (KeyError, TypeError):
        raise ValueError("unknown framing %r (known: %s)" % (name, ", ".join(FRAMINGS))) from None
