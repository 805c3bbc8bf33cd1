#!/usr/bin/env python3
"""Tether protocol version 2 session frames (PROTOCOL.md section 11): a second, independent
implementation of the frame layer, standard library only, written from the spec's text.

It encodes a frame from its fields and decodes wire bytes back to fields or to the reason a
receiver drops them (11.3 to 11.5), and checks every ```tether-v2-vector block of the spec.
Usage:
  frame_v2_ref.py [PATH/TO/PROTOCOL.md]   check the vectors and run the self-checks
  frame_v2_ref.py vectors                 print the vector blocks this file generates (how the
                                          spec's were made; the Rust suite checks them too)
"""
import random
import sys
from pathlib import Path

KINDS = {"data": 0, "ack": 1, "ping": 2, "close": 3}
SHAPES = {"single": 0, "uniform": 1, "listed": 2}
CRC16_MAX_COVERED = 8          # 11.4: at most 8 covered bytes -> CRC-16/DNP, else CRC-32C
SACK_MAX = 16                  # bitmap bytes


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def crc16_dnp(data: bytes) -> int:
    """CRC-16/DNP: poly 0x3D65 (reflected 0xA6BC), init 0, reflected, xorout 0xFFFF."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0xA6BC if crc & 1 else 0)
    return crc ^ 0xFFFF


def cobs_encode(raw: bytes) -> bytes:
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


def cobs_decode(enc: bytes):
    """Bytes between two delimiters -> raw frame, or None (cut-short block)."""
    out = bytearray(); i = 0
    while i < len(enc):
        code = enc[i]; i += 1
        if code == 0 or i + code - 1 > len(enc):
            return None
        out += enc[i:i + code - 1]; i += code - 1
        if code != 0xFF and i < len(enc):
            out.append(0)
    return bytes(out)


def varint(n: int) -> bytes:
    assert 0 <= n <= 0xFFFF
    out = bytearray()
    while True:
        b = n & 0x7F; n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(b: bytes, i: int):
    """(value, next index) or None: at most 3 bytes, minimal, value <= 65535."""
    v = 0
    for k in range(3):
        if i + k >= len(b):
            return None
        byte = b[i + k]
        v |= (byte & 0x7F) << (7 * k)
        if byte & 0x80 == 0:
            if k > 0 and byte == 0:
                return None            # not minimal
            return (v, i + k + 1) if v <= 0xFFFF else None
    return None


def ack_fields(f) -> bytes:
    w = f.get("ack-width", 1)
    out = f["released"].to_bytes(w, "little")
    if f.get("received"):
        out += f["received"].to_bytes(w, "little")
    if "credit" in f:
        out += f["credit"].to_bytes(2, "little")
    if f.get("sack"):
        out += bytes([len(f["sack"])]) + f["sack"]
    return out


def ack_flags(f) -> int:
    return ((f.get("ack-width", 1) == 2) | (bool(f.get("received")) << 1)
            | (("credit" in f) << 2) | (bool(f.get("sack")) << 3))


def section(f) -> bytes:
    recs = f["records"]
    shape = f["shape"]
    if shape == "single":
        assert len(recs) == 1
        return recs[0]
    if shape == "uniform":
        return varint(len(recs[0])) + b"".join(recs)
    return b"".join(varint(len(r)) + r for r in recs)


def covered(f) -> bytes:
    """Control byte and body (everything the CRC covers)."""
    kind = KINDS[f["kind"]]
    c = 0x80 | (kind << 5)
    if kind == 0:
        has_ack = "released" in f
        c |= (has_ack << 4) | ((f.get("seq-width", 1) == 2) << 3) | (SHAPES[f["shape"]] << 1)
        c |= 1 if f.get("immediate") else 0
        body = bytes([ack_flags(f)]) + ack_fields(f) if has_ack else b""
        body += f["seq"].to_bytes(f.get("seq-width", 1), "little") + section(f)
        return bytes([c]) + body
    if kind == 1:
        return bytes([c | ack_flags(f)]) + ack_fields(f)
    return bytes([c])


def raw_frame(f) -> bytes:
    cov = covered(f)
    if len(cov) <= CRC16_MAX_COVERED:
        return cov + crc16_dnp(cov).to_bytes(2, "little")
    return cov + crc32c(cov).to_bytes(4, "little")


def parse_ack(flags: int, b: bytes, i: int, f: dict):
    w = 2 if flags & 1 else 1
    if i + w > len(b):
        return None
    f["released"] = int.from_bytes(b[i:i + w], "little"); i += w
    if w == 2:
        f["ack-width"] = 2
    if flags & 2:
        if i + w > len(b):
            return None
        f["received"] = int.from_bytes(b[i:i + w], "little"); i += w
        if f["received"] == 0:
            return None
    if flags & 4:
        if i + 2 > len(b):
            return None
        f["credit"] = int.from_bytes(b[i:i + 2], "little"); i += 2
    if flags & 8:
        if i >= len(b):
            return None
        n = b[i]; i += 1
        if not 1 <= n <= SACK_MAX or i + n > len(b) or b[i + n - 1] == 0:
            return None
        f["sack"] = b[i:i + n]; i += n
    return i


def parse(cov: bytes):
    """Fields of a covered part (control byte and body), or None if malformed (11.3)."""
    c = cov[0]
    kind = (c >> 5) & 3
    name = [k for k, v in KINDS.items() if v == kind][0]
    f = {"kind": name}
    if kind in (2, 3):
        return f if c & 0x1F == 0 and len(cov) == 1 else None
    if kind == 1:
        if c & 0x10:
            return None
        i = parse_ack(c & 0x0F, cov, 1, f)
        return f if i == len(cov) else None
    i = 1
    if c & 0x10:
        if i >= len(cov) or cov[i] & 0xF0:
            return None
        i = parse_ack(cov[i] & 0x0F, cov, i + 1, f)
        if i is None:
            return None
    w = 2 if c & 0x08 else 1
    if i + w > len(cov):
        return None
    f["seq"] = int.from_bytes(cov[i:i + w], "little"); i += w
    if w == 2:
        f["seq-width"] = 2
    f["immediate"] = bool(c & 1)
    shape = (c >> 1) & 3
    rest = cov[i:]
    recs = []
    if shape == 0:
        f["shape"] = "single"; recs = [rest]
    elif shape == 1:
        f["shape"] = "uniform"
        r = read_varint(rest, 0)
        if r is None or r[0] == 0:
            return None
        n, j = r
        body = rest[j:]
        if not body or len(body) % n:
            return None
        recs = [body[k:k + n] for k in range(0, len(body), n)]
    elif shape == 2:
        f["shape"] = "listed"
        j = 0
        while j < len(rest):
            r = read_varint(rest, j)
            if r is None or r[1] + r[0] > len(rest):
                return None
            recs.append(rest[r[1]:r[1] + r[0]]); j = r[1] + r[0]
        if not recs:
            return None
    else:
        return None                    # shape 3: reserved
    f["records"] = recs
    return f


def decode_raw(raw: bytes):
    """(fields, None) for a frame delivered, (None, reason) for one dropped (11.5)."""
    if len(raw) < 3:
        return None, "too-short"
    if len(raw) in (11, 12):
        return None, "malformed"
    if len(raw) <= 10:
        cov, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
        ok = crc16_dnp(cov) == crc
    else:
        cov, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
        ok = crc32c(cov) == crc
    if not ok:
        return None, "crc"
    if cov[0] & 0x80 == 0:
        return None, "not-v2"
    f = parse(cov)
    return (f, None) if f is not None else (None, "malformed")


def decode_wire(wire: bytes, max_raw: int = 65553):
    """Events for a stream of v2 frames: ("frame", fields) or ("drop", reason)."""
    events = []
    for enc in wire.split(b"\x00")[:-1]:
        if not enc:
            continue
        raw = cobs_decode(enc)
        if raw is None:
            events.append(("drop", "cobs")); continue
        if len(raw) > max_raw:
            events.append(("drop", "too-long")); continue
        f, why = decode_raw(raw)
        events.append(("frame", f) if f is not None else ("drop", why))
    return events


# ---- vectors ------------------------------------------------------------------------------

def hexs(b: bytes) -> str:
    if not b:
        return "(empty)"
    words = [f"{x:02x}" for x in b]
    lines = [" ".join(words[k:k + 32]) for k in range(0, len(words), 32)]
    return ("\n" + " " * 10).join(lines)


def block(name, f, error=None, wire=None, note=None) -> str:
    out = ["```tether-v2-vector", f"name:     {name}"]
    if error:
        out.append(f"error:    {error}")
        out.append(f"wire:     {hexs(wire)}")
        out.append("```")
        return "\n".join(out)
    out.append(f"kind:     {f['kind']}")
    for key in ("released", "received"):
        if key in f:
            out.append(f"{key + ':':<9} 0x{f[key]:0{2 * f.get('ack-width', 1)}x}")
    if "released" in f:
        out.append(f"ack-width: {f.get('ack-width', 1)}")
    if "credit" in f:
        out.append(f"credit:   0x{f['credit']:04x}")
    if f.get("sack"):
        out.append(f"sack:     {hexs(f['sack'])}")
    if f["kind"] == "data":
        out.append(f"seq:      0x{f['seq']:0{2 * f.get('seq-width', 1)}x}")
        out.append(f"seq-width: {f.get('seq-width', 1)}")
        out.append(f"immediate: {'yes' if f.get('immediate') else 'no'}")
        out.append(f"shape:    {f['shape']}")
        for r in f["records"]:
            out.append(f"record:   {hexs(r)}")
    raw = raw_frame(f)
    w = 2 if len(raw) - (2 if len(covered(f)) <= CRC16_MAX_COVERED else 4) <= CRC16_MAX_COVERED else 4
    crc = int.from_bytes(raw[-w:], "little")
    out.append(f"crc:      0x{crc:0{2 * w}x}")
    out.append(f"raw:      {hexs(raw)}")
    out.append(f"wire:     {hexs(cobs_encode(raw))}")
    out.append("```")
    return "\n".join(out)


def reseal(cov: bytes) -> bytes:
    """COBS of a covered part with the CRC its length calls for (to build malformed frames)."""
    if len(cov) <= CRC16_MAX_COVERED:
        return cobs_encode(cov + crc16_dnp(cov).to_bytes(2, "little"))
    return cobs_encode(cov + crc32c(cov).to_bytes(4, "little"))


def vector_set():
    rec16 = b"tether record 01"
    valid = [
        ("v2-ping", {"kind": "ping"}),
        ("v2-close", {"kind": "close"}),
        ("v2-ack", {"kind": "ack", "released": 0x05}),
        ("v2-ack-sack", {"kind": "ack", "released": 0x10, "received": 0x03, "credit": 0x0000,
                         "sack": bytes([0x05])}),
        ("v2-ack-wide", {"kind": "ack", "released": 0x1234, "ack-width": 2, "received": 0x0102,
                         "sack": bytes([0x00, 0x80])}),
        ("v2-data-empty", {"kind": "data", "seq": 0x07, "shape": "single", "records": [b""],
                           "immediate": True}),
        ("v2-data-16", {"kind": "data", "seq": 0x01, "shape": "single", "records": [rec16]}),
        ("v2-data-uniform", {"kind": "data", "seq": 0xfe, "shape": "uniform", "immediate": True,
                             "records": [bytes([0, 0x11, 0, 0]), bytes([0x22, 0, 0x33, 0]),
                                         bytes([0, 0, 0, 0x44])]}),
        ("v2-data-listed", {"kind": "data", "seq": 0x0100, "seq-width": 2, "shape": "listed",
                            "records": [b"", b"abc", bytes(range(1, 131))]}),
        ("v2-data-with-ack", {"kind": "data", "seq": 0x2a, "shape": "single", "records": [b"ok"],
                              "released": 0x07, "received": 0x01, "credit": 0x0004}),
        ("v2-data-7x16", {"kind": "data", "seq": 0x40, "shape": "uniform", "immediate": True,
                          "records": [("record %02d reads" % k).encode()[:16] for k in range(7)]}),
    ]
    lines = []
    for name, f in valid:
        lines.append(block(name, f))
    good16 = reseal(covered({"kind": "data", "seq": 0x01, "shape": "single", "records": [rec16]}))
    bad = bytearray(good16); bad[5] ^= 0x01
    ping = bytearray(reseal(covered({"kind": "ping"})))
    ping[-2] ^= 0x40
    invalid = [
        ("v2-bad-crc32", "crc", bytes(bad)),
        ("v2-bad-crc16", "crc", bytes(ping)),
        ("v2-too-short", "too-short", cobs_encode(bytes([0xc0, 0x12]))),
        ("v2-crc-width", "malformed", cobs_encode(bytes([0xa0, 1, 2, 3, 4, 5, 6]) +
                                                 crc32c(bytes([0xa0, 1, 2, 3, 4, 5, 6])).to_bytes(4, "little"))),
        ("v2-reserved-control", "malformed", reseal(bytes([0xc1]))),
        ("v2-reserved-ack-flag", "malformed", reseal(bytes([0xb0, 0x05]))),
        ("v2-ack-trailing", "malformed", reseal(bytes([0xa0, 0x05, 0x00]))),
        ("v2-received-zero", "malformed", reseal(bytes([0xa2, 0x05, 0x00]))),
        ("v2-sack-empty", "malformed", reseal(bytes([0xa8, 0x05, 0x00]))),
        ("v2-sack-trailing-zero", "malformed", reseal(bytes([0xa8, 0x05, 0x02, 0x01, 0x00]))),
        ("v2-uniform-zero-length", "malformed", reseal(bytes([0x82, 0x01, 0x00]))),
        ("v2-uniform-remainder", "malformed", reseal(bytes([0x82, 0x01, 0x02, 0x61, 0x62, 0x63]))),
        ("v2-listed-truncated", "malformed", reseal(bytes([0x84, 0x01, 0x03, 0x61, 0x62]))),
        ("v2-varint-not-minimal", "malformed", reseal(bytes([0x84, 0x01, 0x81, 0x00, 0x61]))),
        ("v2-reserved-shape", "malformed", reseal(bytes([0x86, 0x01, 0x61]))),
        ("v2-data-ack-reserved", "malformed", reseal(bytes([0x90, 0x10, 0x05, 0x01, 0x61]))),
    ]
    for name, err, wire in invalid:
        got = decode_wire(wire)
        assert got == [("drop", err)], (name, got)
        lines.append(block(name, None, error=err, wire=wire))
    return "\n\n".join(lines)


# ---- checking the spec ----------------------------------------------------------------------

def parse_vectors(text: str):
    out = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.strip() != "```tether-v2-vector":
            continue
        pairs = []
        for line in lines:
            if line.strip() == "```":
                break
            if line.startswith(" "):
                k, v = pairs[-1]
                pairs[-1] = (k, v + " " + line.strip())
            else:
                k, v = line.split(":", 1)
                pairs.append((k.strip(), v.strip()))
        out.append(pairs)
    return out


def unhex(s: str) -> bytes:
    return b"" if s == "(empty)" else bytes(int(x, 16) for x in s.split())


def fields_of(pairs):
    f = {}
    recs = []
    for k, v in pairs:
        if k in ("released", "received", "seq", "credit"):
            f[k] = int(v, 16)
        elif k in ("ack-width", "seq-width"):
            f[k] = int(v)
        elif k == "immediate":
            f[k] = v == "yes"
        elif k == "record":
            recs.append(unhex(v))
        elif k == "sack":
            f[k] = unhex(v)
        elif k in ("kind", "shape"):
            f[k] = v
    if recs:
        f["records"] = recs
    return f


def normal(f):
    """Fields with defaults made explicit, for comparison."""
    g = dict(f)
    if g.get("ack-width") == 1:
        del g["ack-width"]
    if g.get("seq-width") == 1:
        del g["seq-width"]
    if g.get("kind") == "data":
        g["immediate"] = bool(g.get("immediate"))
    return g


def check_spec(path: Path) -> int:
    vectors = parse_vectors(path.read_text())
    failures = 0
    for pairs in vectors:
        d = dict(pairs)
        name = d["name"]
        wire = unhex(d["wire"])
        if "error" in d:
            got = decode_wire(wire)
            if got != [("drop", d["error"])]:
                print(f"{name}: {got}"); failures += 1
            continue
        f = fields_of(pairs)
        if cobs_encode(raw_frame(f)) != wire or raw_frame(f) != unhex(d["raw"]):
            print(f"{name}: encoding differs"); failures += 1
        got = decode_wire(wire)
        if len(got) != 1 or got[0][0] != "frame" or normal(got[0][1]) != normal(f):
            print(f"{name}: decodes to {got}"); failures += 1
    rng = random.Random(16)
    for _ in range(2000):                      # round trip of random frames
        f = random_frame(rng)
        got = decode_wire(cobs_encode(raw_frame(f)))
        if got != [("frame", got[0][1])] or normal(got[0][1]) != normal(f):
            print("round trip", f, got); failures += 1; break
    print(f"{len(vectors)} v2 vectors, 2000 random frames: {'ok' if not failures else 'FAILED'}")
    return 1 if failures or len(vectors) < 20 else 0


def random_frame(rng):
    kind = rng.choice(list(KINDS))
    f = {"kind": kind}
    if kind in ("data", "ack") and (kind == "ack" or rng.random() < 0.5):
        w = rng.choice([1, 2])
        f["released"] = rng.randrange(256 ** w)
        if w == 2:
            f["ack-width"] = 2
        if rng.random() < 0.5:
            f["received"] = rng.randrange(1, 256 ** w)
        if rng.random() < 0.3:
            f["credit"] = rng.randrange(65536)
        if rng.random() < 0.4:
            n = rng.randrange(1, SACK_MAX + 1)
            s = bytes(rng.randrange(256) for _ in range(n - 1)) + bytes([rng.randrange(1, 256)])
            f["sack"] = s
    if kind == "data":
        w = rng.choice([1, 2])
        f["seq"] = rng.randrange(256 ** w)
        if w == 2:
            f["seq-width"] = 2
        f["immediate"] = rng.random() < 0.5
        shape = rng.choice(list(SHAPES))
        f["shape"] = shape
        if shape == "single":
            f["records"] = [bytes(rng.randrange(256) for _ in range(rng.randrange(40)))]
        elif shape == "uniform":
            n = rng.randrange(1, 20)
            f["records"] = [bytes(rng.randrange(256) for _ in range(n)) for _ in range(rng.randrange(1, 6))]
        else:
            f["records"] = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 127, 128, 300])))
                            for _ in range(rng.randrange(1, 5))]
    return f


def main() -> int:
    assert crc16_dnp(b"123456789") == 0xEA82, "CRC-16/DNP check value"
    assert crc32c(b"123456789") == 0xE3069283
    if len(sys.argv) > 1 and sys.argv[1] == "vectors":
        print(vector_set())
        return 0
    spec = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "PROTOCOL.md"
    return check_spec(spec)


if __name__ == "__main__":
    sys.exit(main())
