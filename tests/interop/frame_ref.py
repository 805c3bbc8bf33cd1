#!/usr/bin/env python3
"""Tether frame layer 1 and records: a second, independent implementation (standard library only).

Written from PROTOCOL.md alone, without reading the Rust implementation, as an
interoperability check: CRC-32C, COBS and the receiver rules of section 5, checked against
every ```tether-vector block of section 7 plus self-checks derived from the spec text; and
the typed records of section 10, checked against every ```tether-record-vector block, and
its record kinds (declarations and records of a kind, 10.5 to 10.7) against every
```tether-declaration-vector and ```tether-kind-vector block.
Usage:
  frame_ref.py [PATH/TO/PROTOCOL.md]     check the vectors and run the self-checks
  frame_ref.py decode M < WIRE           one line per event: "frame KIND FLAGS SEQ ACK CREDIT
                                         PAYLOAD_HEX" (decimal numbers) or "drop REASON"
  frame_ref.py encode < LINES > WIRE     the reverse: "KIND FLAGS SEQ ACK CREDIT PAYLOAD_HEX"
                                         lines in, concatenated frames out
  frame_ref.py records < HEX_LINES       one record a line in; out "text", or "typed" and a
                                         " TYPE:VALUE" per field (floats as bit patterns, str
                                         and bytes in hex), then " ! REASON OFFSET" if malformed
The last three let the Rust test suite exchange byte streams with this implementation.
"""
import contextlib
import random
import struct
import sys
from collections import namedtuple
from pathlib import Path

HEADER, TRAILER, MIN_RAW, MAX_RAW = 14, 4, 18, 65553
HEADER_FMT = "<BBIIHH"              # kind flags seq ack credit len, little-endian (2)
KINDS = range(0x01, 0x08)           # HELLO .. CLOSE (2.1)
RESERVED_FLAGS = 0xFC               # every flag bit but ACK (0x01) and NACK (0x02), 2.2
COUNTER = {"too-long": "too_long", "cobs": "cobs_errors", "too-short": "header_errors",
           "crc": "crc_errors", "unknown-kind": "header_errors",
           "reserved-flags": "header_errors", "length-mismatch": "header_errors"}
COUNTERS = ("too_long", "cobs_errors", "header_errors", "crc_errors", "frames")


def crc32c(data: bytes) -> int:
    """Bitwise reflected CRC-32C (CRC-32/ISCSI), section 3."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def raw_frame(kind, flags, seq, ack, credit, payload, length=None) -> bytes:
    """Header + payload + CRC, unvalidated (so tests can build bad frames)."""
    length = len(payload) if length is None else length
    body = struct.pack(HEADER_FMT, kind, flags, seq, ack, credit, length) + bytes(payload)
    return body + struct.pack("<I", crc32c(body))


def cobs_encode(raw: bytes) -> bytes:
    """Canonical COBS of section 4.1, delimiter included."""
    out = bytearray([0]); code_at = 0; code = 1
    for b in raw:
        if b == 0:
            out[code_at] = code; code_at = len(out); out.append(0); code = 1
        else:
            out.append(b); code += 1
            if code == 0xFF:
                out[code_at] = code; code_at = len(out); out.append(0); code = 1
    out[code_at] = code
    out.append(0)
    return bytes(out)


def encode(kind, flags, seq, ack, credit, payload) -> bytes:
    if kind not in KINDS or flags & RESERVED_FLAGS or len(payload) > 0xFFFF:
        raise ValueError("a sender MUST NOT send reserved kinds/flags or len > 65535")
    return cobs_encode(raw_frame(kind, flags, seq, ack, credit, payload))


Frame = namedtuple("Frame", "kind flags seq ack credit payload crc raw")


class Decoder:
    """Streaming receiver (section 5). feed() returns a list of events, each a Frame
    or an error reason string; counters are named as in the section 5 table."""

    def __init__(self, max_raw: int = MAX_RAW):
        if not MIN_RAW <= max_raw <= MAX_RAW:
            raise ValueError("M must be 18..65553")
        self.m = max_raw
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.discarding = False     # after too_long: skip up to and including the next 0x00
        self._reset()

    def _reset(self):
        self.buf = bytearray()
        self.remaining = 0          # data bytes still expected in the current block
        self.pending_zero = False   # last block had c < 0xFF: a 0x00 follows if a block follows
        self.started = False        # any byte since the last delimiter

    def _drop(self, reason, events):
        self.counters[COUNTER[reason]] += 1
        events.append(reason)

    def _push(self, b, events) -> bool:
        if len(self.buf) >= self.m:         # frame would exceed M: known now
            self._drop("too-long", events)
            self._reset(); self.discarding = True
            return False
        self.buf.append(b); return True

    def feed(self, chunk: bytes) -> list:
        events = []
        for b in chunk:
            if self.discarding:
                self.discarding = b != 0
            elif b == 0:
                if self.remaining:
                    self._drop("cobs", events)          # 0x00 inside a block
                elif self.started:
                    self._finish(bytes(self.buf), events)
                self._reset()                           # empty frames: ignored silently
            elif self.remaining:                        # data byte
                if self._push(b, events):
                    self.remaining -= 1
            else:                                       # code byte: a new block follows
                self.started = True
                if self.pending_zero and not self._push(0, events):
                    continue
                self.remaining, self.pending_zero = b - 1, b < 0xFF
        return events

    def _finish(self, raw, events):
        if len(raw) < MIN_RAW:
            return self._drop("too-short", events)
        (crc,) = struct.unpack("<I", raw[-TRAILER:])   # the last 4 bytes, whatever len says
        if crc32c(raw[:-TRAILER]) != crc:
            return self._drop("crc", events)
        kind, flags, seq, ack, credit, length = struct.unpack_from(HEADER_FMT, raw)
        if kind not in KINDS:
            return self._drop("unknown-kind", events)
        if flags & RESERVED_FLAGS:
            return self._drop("reserved-flags", events)
        if length != len(raw) - MIN_RAW:
            return self._drop("length-mismatch", events)
        self.counters["frames"] += 1
        events.append(Frame(kind, flags, seq, ack, credit, raw[HEADER:-TRAILER], crc, raw))


# ---------------------------------------------------------------- vectors ----
def parse_vectors(text: str) -> list:
    vectors, cur, key = [], None, None
    for line in text.splitlines():
        if cur is None:
            if line.strip() == "```tether-vector":
                cur, key = {}, None
        elif line.strip() == "```":
            vectors.append(cur); cur = None
        elif line[:1].isspace() and key:
            cur[key] += " " + line.strip()          # continuation of a byte string
        elif line.strip():
            key, _, value = line.partition(":")
            key = key.strip(); cur[key] = value.strip()
    for v in vectors:
        for k, val in v.items():
            if k in ("kind", "flags", "seq", "ack", "credit", "crc"):
                v[k] = int(val, 16)                 # written 0x..
            elif k == "max":
                v[k] = int(val)                     # decimal M
            elif k in ("payload", "raw", "wire"):
                v[k] = b"" if val == "(empty)" else bytes.fromhex(val)
    return vectors


def decode_all(wire, m=MAX_RAW, chunks=()):
    """Feed wire in the given chunk sizes (the rest in one piece); events, counters."""
    d, events, i = Decoder(m), [], 0
    for n in chunks:
        events += d.feed(wire[i:i + n]); i += n
    return events + d.feed(wire[i:]), d.counters


def check_vector(v) -> str | None:
    wire = v["wire"]
    m = v.get("max", MAX_RAW)
    if "error" not in v:
        enc = encode(v["kind"], v["flags"], v["seq"], v["ack"], v["credit"], v["payload"])
        if v.get("decode-only") == "yes":
            if enc == wire:
                return "a decode-only vector's wire should be non-canonical"
        elif enc != wire:
            return f"encode gives {enc.hex(' ')}"
        if crc32c(v["raw"][:-TRAILER]) != v["crc"]:
            return "crc is not the CRC-32C of raw"
    for how, chunks in (("whole", ()), ("bytewise", [1] * len(wire))):
        events, counters = decode_all(wire, m=m, chunks=chunks)
        if "error" in v:
            if (events != [v["error"]] or sum(counters.values()) != 1
                    or counters[COUNTER[v["error"]]] != 1):
                return f"{how}: got {events!r}, counters {counters}"
            continue
        if len(events) != 1 or not isinstance(events[0], Frame):
            return f"{how}: got {events!r}, want one frame"
        for k in ("kind", "flags", "seq", "ack", "credit", "payload", "crc", "raw"):
            if getattr(events[0], k) != v[k]:
                return f"{how}: {k} = {getattr(events[0], k)!r}, want {v[k]!r}"
    return None


# ---------------------------------------------------------------- records ----
TYPED = 0x1E                        # first byte of a typed record (10)
# tag: (type, struct format of the value, or None for a length byte + n bytes), 10.1
TAGS = {0x01: ("bool", "<B"), 0x02: ("u8", "<B"), 0x03: ("u16", "<H"), 0x04: ("u32", "<I"),
        0x05: ("u64", "<Q"), 0x06: ("i8", "<b"), 0x07: ("i16", "<h"), 0x08: ("i32", "<i"),
        0x09: ("i64", "<q"), 0x0A: ("f32", "<I"), 0x0B: ("f64", "<Q"),   # floats as bit patterns
        0x0C: ("str", None), 0x0D: ("bytes", None)}
TAG_OF = {name: tag for tag, (name, _) in TAGS.items()}


def read_record(rec: bytes):
    """(typed, [(type, value)], error or None) by the rules of 10.2; floats as bit patterns,
    an error as (reason, offset of the field's tag)."""
    if rec[:1] != bytes([TYPED]):
        return False, [], None
    fields, i = [], 1
    while i < len(rec):
        at, tag = i, rec[i]
        if tag not in TAGS:
            return True, fields, ("unknown-tag", at)
        name, fmt = TAGS[tag]
        i += 1
        if fmt is None:
            if i >= len(rec):
                return True, fields, ("truncated", at)
            n = rec[i]; i += 1
            if i + n > len(rec):
                return True, fields, ("truncated", at)
            value = rec[i:i + n]; i += n
            if name == "str":
                try:
                    value = value.decode("utf-8")       # strict: RFC 3629
                except UnicodeDecodeError:
                    return True, fields, ("invalid", at)
        else:
            size = struct.calcsize(fmt)
            if i + size > len(rec):
                return True, fields, ("truncated", at)
            (value,) = struct.unpack_from(fmt, rec, i); i += size
            if name == "bool":
                if value > 1:
                    return True, fields, ("invalid", at)
                value = value == 1
        fields.append((name, value))
    return True, fields, None


def write_record(fields) -> bytes:
    out = bytearray([TYPED])
    for name, value in fields:
        tag = TAG_OF[name]; fmt = TAGS[tag][1]
        out.append(tag)
        if fmt is None:
            raw = value.encode("utf-8") if name == "str" else bytes(value)
            if len(raw) > 255:
                raise ValueError("a str or bytes value is at most 255 bytes")
            out += bytes([len(raw)]) + raw
        else:
            out += struct.pack(fmt, int(value))
    return bytes(out)


def parse_field(line: str):
    """A vector's `field:` line (10.4) as (type, value), floats as bit patterns."""
    name, _, v = line.partition(" ")
    if name == "bool":
        return name, {"true": True, "false": False}[v]
    if name in ("f32", "f64"):
        fmt, bits = ("<f", "<I") if name == "f32" else ("<d", "<Q")
        if v.startswith("0x"):
            return name, int(v, 16)
        (b,) = struct.unpack(bits, struct.pack(fmt, float(v)))
        if struct.unpack(fmt, struct.pack(bits, b))[0] != float(v):
            raise ValueError(f"{v} is not exactly an {name}")
        return name, b
    if name == "str":
        if not (len(v) >= 2 and v[0] == v[-1] == '"'):
            raise ValueError(f"str value not quoted: {line}")
        return name, v[1:-1]
    if name == "bytes":
        return name, b"" if v == "(empty)" else bytes.fromhex(v)
    if name in TAG_OF:
        return name, int(v)
    raise ValueError(f"unknown field type: {line}")


def parse_record_vectors(text: str) -> list:
    vectors, cur, key = [], None, None
    for line in text.splitlines():
        if cur is None:
            if line.strip() == "```tether-record-vector":
                cur, key = {"field": []}, None
        elif line.strip() == "```":
            vectors.append(cur); cur = None
        elif line[:1].isspace() and key:
            cur[key] += " " + line.strip()
        elif line.strip():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "field":
                cur["field"].append(value); key = None   # a field value never continues
            else:
                cur[key] = value
    for v in vectors:
        v["record"] = b"" if v["record"] == "(empty)" else bytes.fromhex(v["record"])
        v["field"] = [parse_field(f) for f in v["field"]]
        if "error" in v:
            reason, at, offset = v["error"].split()
            assert at == "at", v["error"]
            v["error"] = (reason, int(offset))
    return vectors


def check_record_vector(v) -> str | None:
    typed, fields, error = read_record(v["record"])
    if typed != (v["typed"] == "yes"):
        return f"read as {'typed' if typed else 'text'}, the vector says typed: {v['typed']}"
    if fields != v["field"] or error != v.get("error"):
        return f"read {fields!r}, error {error!r}"
    if typed and error is None and write_record(fields) != v["record"]:
        return f"encoding gives {write_record(fields).hex(' ')}"
    return None


# ------------------------------------------------------------ record kinds ----
DECLARATION = 0x0E                  # second byte of a declaration (10.5)
KIND_BASE = 0x80                    # second byte of a record of kind k: 0x80 + k (10.6)
HAS_UNIT = 0x80                     # in an entry's type byte: a unit follows the name
NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def is_name(b: bytes) -> bool:
    return 1 <= len(b) <= 63 and b[:1] not in (b"0", b"1", b"2", b"3", b"4", b"5", b"6",
                                              b"7", b"8", b"9") and set(b) <= NAME_BYTES


def is_unit(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(b) >= 1 and all(c >= 0x20 and c != 0x7F for c in b)


def read_declaration(rec: bytes):
    """((kind, name, [(field name, type, unit or None)]), None) or (None, (reason, offset)),
    by the rules of 10.5, checked in its order."""
    if rec[:2] != bytes([TYPED, DECLARATION]):
        raise ValueError("not a declaration")
    if len(rec) < 3:
        return None, ("truncated", 2)
    kind = rec[2]
    if kind > 127:
        return None, ("invalid", 2)

    def counted(i):
        if i >= len(rec) or i + 1 + rec[i] > len(rec):
            return None
        return rec[i + 1:i + 1 + rec[i]], i + 1 + rec[i]

    got = counted(3)
    if got is None:
        return None, ("truncated", 3)
    name, i = got
    if not is_name(name):
        return None, ("invalid", 3)
    fields, seen = [], set()
    while i < len(rec):
        at, t = i, rec[i]
        if (t & 0x7F) not in TAGS:
            return None, ("unknown-tag", at)
        got = counted(i + 1)
        if got is None:
            return None, ("truncated", at)
        fname, i = got
        unit = None
        if t & HAS_UNIT:
            got = counted(i)
            if got is None:
                return None, ("truncated", at)
            unit, i = got
        if not is_name(fname) or (unit is not None and not is_unit(unit)):
            return None, ("invalid", at)
        if fname.lower() in seen:
            return None, ("invalid", at)
        seen.add(fname.lower())
        fields.append((fname.decode(), TAGS[t & 0x7F][0],
                       None if unit is None else unit.decode("utf-8")))
    return (kind, name.decode(), fields), None


def write_declaration(kind: int, name: str, fields) -> bytes:
    out = bytearray([TYPED, DECLARATION, kind])
    out += bytes([len(name)]) + name.encode()
    for fname, ftype, unit in fields:
        out.append(TAG_OF[ftype] | (HAS_UNIT if unit is not None else 0))
        out += bytes([len(fname)]) + fname.encode()
        if unit is not None:
            u = unit.encode("utf-8")
            out += bytes([len(u)]) + u
    return bytes(out)


def read_value(rec: bytes, i: int, ftype: str):
    """(value, next offset) or (None, reason) for one value of 10.1's encoding, untagged."""
    fmt = TAGS[TAG_OF[ftype]][1]
    if fmt is None:
        if i >= len(rec) or i + 1 + rec[i] > len(rec):
            return None, "truncated"
        value = rec[i + 1:i + 1 + rec[i]]
        end = i + 1 + rec[i]
        if ftype == "str":
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return None, "invalid"
        return value, end
    size = struct.calcsize(fmt)
    if i + size > len(rec):
        return None, "truncated"
    (value,) = struct.unpack_from(fmt, rec, i)
    if ftype == "bool":
        if value > 1:
            return None, "invalid"
        value = value == 1
    return value, i + size


def read_kind_record(rec: bytes, fields):
    """([(type, value)], error or None): the values of a record of a kind (10.6) declared
    with `fields`; floats as bit patterns, as read_record gives them."""
    values, i = [], 2
    for _fname, ftype, _unit in fields:
        value, nxt = read_value(rec, i, ftype)
        if value is None:
            return values, (nxt, i)
        values.append((ftype, value))
        i = nxt
    if i < len(rec):
        return values, ("trailing", i)
    return values, None


def write_kind_record(kind: int, values) -> bytes:
    out = bytearray([TYPED, KIND_BASE + kind])
    for v in values:
        out += write_record([v])[2:]    # 1E, the tag, the value: the value alone
    return bytes(out)


def parse_declaration_field(line: str):
    """A declaration vector's `field:` line: NAME TYPE [UNIT]."""
    parts = line.split(" ", 2)
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def parse_blocks(text: str, tag: str, repeated=("field", "value")) -> list:
    blocks, cur, key = [], None, None
    for line in text.splitlines():
        if cur is None:
            if line.strip() == "```" + tag:
                cur, key = {k: [] for k in repeated}, None
        elif line.strip() == "```":
            blocks.append(cur); cur = None
        elif line[:1].isspace() and key:
            cur[key] += " " + line.strip()
        elif line.strip():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key in repeated:
                cur[key].append(value); key = None
            else:
                cur[key] = value
    for b in blocks:
        if "record" in b:
            b["record"] = b"" if b["record"] == "(empty)" else bytes.fromhex(b["record"])
        if "error" in b:
            reason, at, offset = b["error"].split()
            assert at == "at", b["error"]
            b["error"] = (reason, int(offset))
    return blocks


def check_declaration_vector(v) -> str | None:
    got, error = read_declaration(v["record"])
    if "error" in v:
        return None if (got, error) == (None, v["error"]) else f"read {got!r}, {error!r}"
    if error is not None:
        return f"error {error!r}"
    kind, name = v["kind"].split(" ")
    want = (int(kind), name, [parse_declaration_field(f) for f in v["field"]])
    if got != want:
        return f"read {got!r}, want {want!r}"
    if write_declaration(*want) != v["record"]:
        return f"encoding gives {write_declaration(*want).hex(' ')}"
    return None


def check_kind_vector(v, declarations) -> str | None:
    d = declarations.get(v["declaration"])
    if d is None:
        return f"no declaration vector named {v['declaration']}"
    (kind, _name, fields), _ = read_declaration(d["record"])
    if v["record"][:2] != bytes([TYPED, KIND_BASE + kind]):
        return "the record's second byte is not the declaration's kind"
    values, error = read_kind_record(v["record"], fields)
    want = [parse_field(f) for f in v["value"]]
    if values != want or error != v.get("error"):
        return f"read {values!r}, error {error!r}"
    if error is None and write_kind_record(kind, values) != v["record"]:
        return f"encoding gives {write_kind_record(kind, values).hex(' ')}"
    return None


# ------------------------------------------------------------ self-checks ----
def self_checks():
    """Checks derived from the spec text; returns [(name, function)]."""
    RNG = random.Random(20240601)

    def expect(events, want):
        got = [e if isinstance(e, str) else ("frame", e.payload) for e in events]
        assert got == want, f"got {got!r:.200}, want {want!r:.200}"

    def check_crc_check_value():
        assert crc32c(b"123456789") == 0xE3069283

    def check_round_trip_random_chunks():
        stream, sent = bytearray(), []
        for i in range(300):
            p = bytes(RNG.choice([0, 0, RNG.randrange(256)]) if i % 3 == 0 else RNG.randrange(256)
                      for _ in range(RNG.randint(0, 1000)))
            fields = (RNG.choice(KINDS), RNG.randint(0, 1), RNG.getrandbits(32),
                      RNG.getrandbits(32), RNG.getrandbits(16), p)
            w, r = encode(*fields), HEADER + len(p) + TRAILER
            assert len(w) <= r + r // 254 + 2 and 0 not in w[:-1]
            stream += b"\x00" * RNG.randint(0, 2) + w; sent.append(fields)
        chunks = [RNG.randint(1, 700) for _ in range(len(stream))]
        events, counters = decode_all(bytes(stream), chunks=chunks)
        got = [e if isinstance(e, str) else (e.kind, e.flags, e.seq, e.ack, e.credit, e.payload)
               for e in events]
        assert got == sent and counters["frames"] == len(sent) == sum(counters.values())

    def check_too_long_then_good():
        events, c = decode_all(encode(4, 0, 0, 0, 0, b"x" * 50) + encode(6, 0, 0, 0, 0, b"ok"), 28)
        expect(events, ["too-long", ("frame", b"ok")])
        assert c["too_long"] == 1 and c["frames"] == 1
        # too_long is known before the 0x00 inside the block: one drop, counted as too_long
        events, c = decode_all(b"\xff" + b"a" * 30 + b"\x00" + encode(2, 0, 0, 0, 0, b""), 20)
        expect(events, ["too-long", ("frame", b"")])

    def check_m_boundary():
        for p in (b"", b"\x00" * 9, bytes(range(1, 237)), bytes(range(1, 250)) + b"\x00"):
            w, r = encode(4, 1, 7, 8, 9, p), HEADER + len(p) + TRAILER
            expect(decode_all(w, r)[0], [("frame", p)])        # exactly M bytes is accepted
            if r > MIN_RAW:
                expect(decode_all(w, r - 1)[0], ["too-long"])
        w = encode(5, 1, 1, 2, 3, b"abc")    # + an extra empty block: raw + 00, 22 bytes
        expect(decode_all(w[:-1] + b"\x01\x00" + w, 21)[0], ["too-long", ("frame", b"abc")])
        expect(decode_all(w[:-1] + b"\x01\x00", 22)[0], ["crc"])

    def check_non_canonical_trailing_01():
        p = bytes(range(1, 255)) * 2 + bytes(range(1, 237))      # raw = 3 * 254, no zeros
        w = encode(4, 1, 0x01020304, 0x05060708, 0x090A, p)
        assert w[-2:] == b"\x01\x00" and w[-3] != 0
        expect(decode_all(w[:-2] + b"\x00")[0], [("frame", p)])

    def check_resync_after_cobs_error():
        good = encode(7, 0, 0, 0, 0, b"bye")
        expect(decode_all(b"\x05ab\x00" + good)[0], ["cobs", ("frame", b"bye")])
        expect(decode_all(good[5:] + good)[0][-1:], [("frame", b"bye")])   # joined mid-stream

    def check_empty_and_tiny_frames():
        events, c = decode_all(b"\x00\x00" + encode(6, 0, 0, 0, 0, b"") + b"\x00\x00\x01\x00")
        expect(events, [("frame", b""), "too-short"])
        assert c == {"too_long": 0, "cobs_errors": 0, "header_errors": 1, "crc_errors": 0,
                     "frames": 1}

    def check_order_crc_kind_flags_len():
        bad = bytearray(raw_frame(0x09, 0xFE, 0, 0, 0, b"zz", length=5)); bad[-1] ^= 1
        expect(decode_all(cobs_encode(bytes(bad)))[0], ["crc"])
        expect(decode_all(cobs_encode(raw_frame(0, 0xFE, 0, 0, 0, b"zz", 5)))[0], ["unknown-kind"])
        expect(decode_all(cobs_encode(raw_frame(4, 7, 0, 0, 0, b"zz", 5)))[0], ["reserved-flags"])

    def check_sender_rules():                   # MUST NOT send reserved kinds or flags
        for kind, flags, p in ((0, 0, b""), (8, 0, b""), (4, 4, b""), (4, 0, bytes(65536))):
            with contextlib.suppress(ValueError):
                raise AssertionError(f"encode accepted {encode(kind, flags, 0, 0, 0, p)!r:.40}")

    return [("self-check " + n[6:], f) for n, f in locals().items() if n.startswith("check_")]


def decode_stdin(m: int) -> int:
    d = Decoder(m)
    for ev in d.feed(sys.stdin.buffer.read()):
        if isinstance(ev, Frame):
            print(f"frame {ev.kind} {ev.flags} {ev.seq} {ev.ack} {ev.credit} {ev.payload.hex()}")
        else:
            print(f"drop {ev}")
    return 0


def encode_stdin() -> int:
    out = bytearray()
    for line in sys.stdin.read().splitlines():
        kind, flags, seq, ack, credit, *payload = line.split()
        out += encode(int(kind), int(flags), int(seq), int(ack), int(credit),
                      bytes.fromhex(payload[0] if payload else ""))
    sys.stdout.buffer.write(bytes(out))
    return 0


def records_stdin() -> int:
    for line in sys.stdin.read().splitlines():
        typed, fields, error = read_record(bytes.fromhex(line))
        out = ["typed" if typed else "text"]
        for name, value in fields:
            if name == "str":
                value = value.encode("utf-8").hex()
            elif name == "bytes":
                value = value.hex()
            elif name == "bool":
                value = "true" if value else "false"
            out.append(f"{name}:{value}")
        if error:
            out.append(f"! {error[0]} {error[1]}")
        print(" ".join(out))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["records"]:
        return records_stdin()
    if sys.argv[1:2] == ["decode"]:
        return decode_stdin(int(sys.argv[2]))
    if sys.argv[1:2] == ["encode"]:
        return encode_stdin()
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
                / "PROTOCOL.md")
    text = path.read_text(encoding="utf-8")
    vectors, records = parse_vectors(text), parse_record_vectors(text)
    tests = [(v.get("name", "?"), lambda v=v: check_vector(v)) for v in vectors]
    tests += [("record " + v.get("name", "?"), lambda v=v: check_record_vector(v))
              for v in records]
    declarations = {d["name"]: d for d in parse_blocks(text, "tether-declaration-vector")}
    kinds = parse_blocks(text, "tether-kind-vector")
    tests += [("declaration " + n, lambda d=d: check_declaration_vector(d))
              for n, d in declarations.items()]
    tests += [("kind record " + k.get("name", "?"),
               lambda k=k: check_kind_vector(k, declarations)) for k in kinds]
    tests += self_checks()
    tests += [] if vectors else [("vectors", lambda: f"no tether-vector blocks in {path}")]
    tests += [] if records else [("records", lambda: f"no tether-record-vector blocks in {path}")]
    tests += [] if declarations else [("declarations", lambda: f"no tether-declaration-vector blocks in {path}")]
    tests += [] if kinds else [("kind records", lambda: f"no tether-kind-vector blocks in {path}")]
    failed = 0
    for name, fn in tests:
        try:
            why = fn()
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
        failed += why is not None
        print(f"ok {name}" if why is None else f"FAIL {name}: {why}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
