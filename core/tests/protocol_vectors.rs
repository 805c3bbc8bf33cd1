//! The test vectors of `PROTOCOL.md`, read from the spec itself so that the two cannot drift.

use std::collections::BTreeMap;

use tether_core::frame::{self, Decoder, Flags, FrameError, FrameView, Header, HeaderError, Kind};
use tether_core::record::{Field, FieldError, Fields, Record, RecordWriter};

const SPEC: &str = include_str!("../../PROTOCOL.md");

/// Every `tether-vector` block (section 7) as key → value, hex continuation lines joined.
fn vectors() -> Vec<BTreeMap<String, String>> {
    blocks(SPEC, "tether-vector")
        .into_iter()
        .map(|pairs| pairs.into_iter().collect())
        .collect()
}

/// Every code block tagged `tag` in `spec`, as its `key: value` pairs in order (a key may
/// repeat), continuation lines joined to the previous value.
fn blocks(spec: &str, tag: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut lines = spec.lines();
    let fence = format!("```{tag}");
    while let Some(line) = lines.next() {
        if line.trim() != fence {
            continue;
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            if line.starts_with(' ') {
                let (_, v) = pairs.last_mut().expect("continuation after a key");
                v.push(' ');
                v.push_str(line.trim());
            } else {
                let (k, v) = line.split_once(':').expect("key: value");
                pairs.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        out.push(pairs);
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    if s == "(empty)" {
        return Vec::new();
    }
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn num(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex number")
}

/// Everything a decoder makes of a stream, good frames and errors in arrival order.
type Outcomes = Vec<Result<(Header, Vec<u8>), FrameError>>;

/// The receiver limit M of a vector: its `max`, or the largest raw frame.
fn max_of(v: &BTreeMap<String, String>) -> usize {
    v.get("max")
        .map_or(frame::raw_len(frame::MAX_PAYLOAD), |m| {
            m.parse().expect("decimal max")
        })
}

/// Decodes `wire` fed in `chunk`-byte pieces with a receiver limit of `max` raw bytes.
fn decode_all(wire: &[u8], max: usize, chunk: usize) -> (Outcomes, frame::DecoderStats) {
    let mut dec = Decoder::new(vec![0u8; max]);
    let mut got = Vec::new();
    for piece in wire.chunks(chunk) {
        let mut input = piece;
        while let Some(r) = dec.decode(&mut input) {
            got.push(r.map(|f| (f.header, f.payload.to_vec())));
        }
    }
    assert!(!dec.in_frame(), "every vector ends with its delimiter");
    (got, dec.stats())
}

/// Decoding whole and one byte at a time must agree; returns the outcome of both.
fn decode_both_ways(v: &BTreeMap<String, String>, wire: &[u8]) -> (Outcomes, frame::DecoderStats) {
    let whole = decode_all(wire, max_of(v), wire.len());
    let bytewise = decode_all(wire, max_of(v), 1);
    assert_eq!(
        whole, bytewise,
        "{}: whole vs one byte at a time",
        v["name"]
    );
    whole
}

#[test]
fn spec_has_the_vectors_it_promises() {
    let v = vectors();
    let valid = v.iter().filter(|m| !m.contains_key("error")).count();
    let invalid = v.len() - valid;
    let reasons: std::collections::BTreeSet<&str> = v
        .iter()
        .filter_map(|m| m.get("error").map(String::as_str))
        .collect();
    assert_eq!(
        reasons.into_iter().collect::<Vec<_>>(),
        [
            "cobs",
            "crc",
            "length-mismatch",
            "reserved-flags",
            "too-long",
            "too-short",
            "unknown-kind"
        ],
        "every drop reason of section 5 has a vector"
    );
    assert!(valid >= 5, "valid vectors: {valid}");
    assert!(invalid >= 7, "at least one invalid vector per error reason");
}

#[test]
fn valid_vectors_encode_and_decode_byte_for_byte() {
    for v in vectors().into_iter().filter(|m| !m.contains_key("error")) {
        let name = &v["name"];
        let header = Header {
            kind: Kind::from_u8(num(&v["kind"]) as u8).expect("known kind"),
            flags: Flags::from_bits(num(&v["flags"]) as u8).expect("defined flags"),
            seq: num(&v["seq"]) as u32,
            ack: num(&v["ack"]) as u32,
            credit: num(&v["credit"]) as u16,
        };
        let payload = hex(&v["payload"]);
        let raw = hex(&v["raw"]);
        let wire = hex(&v["wire"]);

        let mut out = vec![0u8; frame::max_encoded_len(payload.len())];
        let n = frame::encode(&header, &payload, &mut out).expect("encodes");
        if v.get("decode-only").map(String::as_str) == Some("yes") {
            assert_ne!(
                &out[..n],
                &wire[..],
                "{name}: a decode-only wire is non-canonical"
            );
        } else {
            assert_eq!(&out[..n], &wire[..], "{name}: encoding");
        }

        let view = FrameView::new_checked(&raw[..]).expect("raw frame well-formed");
        assert!(view.verify_crc(), "{name}: raw CRC");
        assert_eq!(u64::from(view.crc()), num(&v["crc"]), "{name}: crc field");
        assert_eq!(Header::parse(&view), Ok(header), "{name}: raw header");
        assert_eq!(view.payload(), &payload[..], "{name}: raw payload");

        let (got, stats) = decode_both_ways(&v, &wire);
        assert_eq!(got, vec![Ok((header, payload))], "{name}: decoding");
        assert_eq!(stats.bytes, wire.len() as u64);
    }
}

#[test]
fn invalid_vectors_are_dropped_for_the_stated_reason() {
    for v in vectors().into_iter().filter(|m| m.contains_key("error")) {
        let name = &v["name"];
        let (got, stats) = decode_both_ways(&v, &hex(&v["wire"]));
        assert_eq!(got.len(), 1, "{name}: one outcome");
        let err = got[0].clone().expect_err(name);
        let reason = match err {
            FrameError::Crc { .. } => "crc",
            FrameError::Cobs => "cobs",
            FrameError::TooLong => "too-long",
            FrameError::Header(HeaderError::TooShort { .. }) => "too-short",
            FrameError::Header(HeaderError::UnknownKind(_)) => "unknown-kind",
            FrameError::Header(HeaderError::ReservedFlags(_)) => "reserved-flags",
            FrameError::Header(HeaderError::LengthMismatch { .. }) => "length-mismatch",
            _ => "unexpected",
        };
        assert_eq!(reason, v["error"], "{name}");
        assert_eq!(
            (stats.frames, stats.dropped()),
            (0, 1),
            "{name}: counted once"
        );
    }
}

// ---- records (section 10) ------------------------------------------------------------

/// A `tether-record-vector` block: its name, record, classification, fields and error.
struct RecordVector {
    name: String,
    record: Vec<u8>,
    typed: bool,
    fields: Vec<String>,
    error: Option<String>,
}

fn record_vectors() -> Vec<RecordVector> {
    blocks(SPEC, "tether-record-vector")
        .into_iter()
        .map(|pairs| {
            let one = |key: &str| {
                let mut it = pairs
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.clone());
                let v = it.next();
                assert!(it.next().is_none(), "one {key} per vector");
                v
            };
            let name = one("name").expect("name");
            let typed = match one("typed").as_deref() {
                Some("yes") => true,
                Some("no") => false,
                other => panic!("{name}: typed: {other:?}"),
            };
            RecordVector {
                record: hex(&one("record").expect("record")),
                typed,
                fields: pairs
                    .iter()
                    .filter(|(k, _)| k == "field")
                    .map(|(_, v)| v.clone())
                    .collect(),
                error: one("error"),
                name,
            }
        })
        .collect()
}

/// A vector's float: the decimal number it equals exactly, or its bit pattern `0x…`.
fn f64_of(name: &str, v: &str) -> f64 {
    if let Some(bits) = v.strip_prefix("0x") {
        return f64::from_bits(u64::from_str_radix(bits, 16).expect("f64 bits"));
    }
    v.parse().unwrap_or_else(|_| panic!("{name}: f64 {v}"))
}

fn f32_of(name: &str, v: &str) -> f32 {
    if let Some(bits) = v.strip_prefix("0x") {
        return f32::from_bits(u32::from_str_radix(bits, 16).expect("f32 bits"));
    }
    let x: f32 = v.parse().unwrap_or_else(|_| panic!("{name}: f32 {v}"));
    let exact: f64 = v.parse().expect("decimal");
    assert_eq!(f64::from(x), exact, "{name}: {v} is not exactly an f32");
    x
}

/// A `field:` line as the field it names; `bytes` and `str` borrow from `keep`.
fn field_of<'a>(name: &str, line: &'a str, keep: &'a mut Vec<u8>) -> Field<'a> {
    let (ty, v) = line.split_once(' ').unwrap_or((line, ""));
    let int = |v: &str| -> i128 { v.parse().unwrap_or_else(|_| panic!("{name}: {line}")) };
    match ty {
        "bool" => Field::Bool(match v {
            "true" => true,
            "false" => false,
            _ => panic!("{name}: {line}"),
        }),
        "u8" => Field::U8(int(v) as u8),
        "u16" => Field::U16(int(v) as u16),
        "u32" => Field::U32(int(v) as u32),
        "u64" => Field::U64(int(v) as u64),
        "i8" => Field::I8(int(v) as i8),
        "i16" => Field::I16(int(v) as i16),
        "i32" => Field::I32(int(v) as i32),
        "i64" => Field::I64(int(v) as i64),
        "f32" => Field::F32(f32_of(name, v)),
        "f64" => Field::F64(f64_of(name, v)),
        "str" => Field::Str(
            v.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{name}: {line}")),
        ),
        "bytes" => {
            *keep = hex(v);
            Field::Bytes(keep)
        }
        _ => panic!("{name}: unknown field type in {line}"),
    }
}

/// Fields compared bit for bit (a NaN equals itself, −0 differs from +0).
fn same(a: &Field<'_>, b: &Field<'_>) -> bool {
    match (a, b) {
        (Field::F32(x), Field::F32(y)) => x.to_bits() == y.to_bits(),
        (Field::F64(x), Field::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn error_of(e: FieldError) -> String {
    match e {
        FieldError::UnknownTag { at, .. } => format!("unknown-tag at {at}"),
        FieldError::Truncated { at } => format!("truncated at {at}"),
        FieldError::Invalid { at } => format!("invalid at {at}"),
    }
}

fn encode(w: &mut RecordWriter<'_>, f: &Field<'_>) {
    match *f {
        Field::Bool(v) => w.bool(v),
        Field::U8(v) => w.u8(v),
        Field::U16(v) => w.u16(v),
        Field::U32(v) => w.u32(v),
        Field::U64(v) => w.u64(v),
        Field::I8(v) => w.i8(v),
        Field::I16(v) => w.i16(v),
        Field::I32(v) => w.i32(v),
        Field::I64(v) => w.i64(v),
        Field::F32(v) => w.f32(v),
        Field::F64(v) => w.f64(v),
        Field::Str(v) => w.str(v),
        Field::Bytes(v) => w.bytes(v),
    }
    .expect("the buffer holds the record");
}

#[test]
fn spec_has_the_record_vectors_it_promises() {
    let v = record_vectors();
    let reasons: std::collections::BTreeSet<&str> = v
        .iter()
        .filter_map(|r| r.error.as_deref()?.split(' ').next())
        .collect();
    assert_eq!(
        reasons.into_iter().collect::<Vec<_>>(),
        ["invalid", "truncated", "unknown-tag"],
        "every reason of 10.2 has a vector"
    );
    let mut tags: Vec<u8> = v
        .iter()
        .filter(|r| r.typed && r.error.is_none())
        .flat_map(|r| r.fields.iter())
        .map(|f| match f.split(' ').next() {
            Some("bool") => 1,
            Some("u8") => 2,
            Some("u16") => 3,
            Some("u32") => 4,
            Some("u64") => 5,
            Some("i8") => 6,
            Some("i16") => 7,
            Some("i32") => 8,
            Some("i64") => 9,
            Some("f32") => 10,
            Some("f64") => 11,
            Some("str") => 12,
            Some("bytes") => 13,
            _ => 0,
        })
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(
        tags,
        (1..=13).collect::<Vec<u8>>(),
        "every tag of 10.1 is encoded"
    );
    assert!(v.iter().any(|r| !r.typed), "text records too");
}

#[test]
fn record_vectors_decode_and_encode_byte_for_byte() {
    for v in record_vectors() {
        let name = &v.name;
        let Some(fields) = Fields::new(&v.record) else {
            assert!(!v.typed, "{name}: read as text, the vector says typed");
            assert!(v.fields.is_empty() && v.error.is_none(), "{name}");
            continue;
        };
        assert!(v.typed, "{name}: read as typed, the vector says text");
        let got: Vec<Result<Field<'_>, FieldError>> = fields.collect();
        let ok: Vec<Field<'_>> = got.iter().filter_map(|r| r.ok()).collect();
        let err: Vec<FieldError> = got.iter().filter_map(|r| r.err()).collect();
        assert_eq!(err.first().copied().map(error_of), v.error, "{name}: error");
        if !err.is_empty() {
            assert!(
                got.last().is_some_and(|r| r.is_err()),
                "{name}: no field after the error"
            );
        }
        assert_eq!(ok.len(), v.fields.len(), "{name}: field count: {got:?}");
        for (i, (have, line)) in ok.iter().zip(&v.fields).enumerate() {
            let mut keep = Vec::new();
            let want = field_of(name, line, &mut keep);
            assert!(
                same(have, &want),
                "{name}: field {i}: {have:?}, want {line}"
            );
        }
        if v.error.is_none() {
            let mut buf = vec![0u8; v.record.len()];
            let mut w = RecordWriter::new(&mut buf);
            let mut keeps = vec![Vec::new(); v.fields.len()];
            for (line, keep) in v.fields.iter().zip(keeps.iter_mut()) {
                encode(&mut w, &field_of(name, line, keep));
            }
            assert_eq!(w.finish(), &v.record[..], "{name}: encoding");
        }
    }
}

// ---- record kinds (10.5 to 10.9) -------------------------------------------------------

mod kinds {
    use super::*;
    use tether_core::record::kind::{Declaration, FieldDef, Kind, KindWriter, Type, ValueError};

    fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        let mut it = pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str());
        let v = it.next();
        assert!(it.next().is_none(), "one {key} per vector");
        v
    }

    fn all<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
        pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn declarations() -> Vec<Vec<(String, String)>> {
        blocks(SPEC, "tether-declaration-vector")
    }

    fn kind_vectors() -> Vec<Vec<(String, String)>> {
        blocks(SPEC, "tether-kind-vector")
    }

    /// A `field:` line of a declaration vector: name, type, and the unit if any.
    fn def_of(line: &str) -> FieldDef<'_> {
        let mut parts = line.splitn(3, ' ');
        let name = parts.next().expect("name");
        let ty = Type::from_name(parts.next().expect("type")).expect("a type of 10.1");
        FieldDef {
            name,
            ty,
            unit: parts.next(),
        }
    }

    fn declaration_error(e: FieldError) -> String {
        error_of(e)
    }

    fn value_error(e: ValueError) -> String {
        match e {
            ValueError::Truncated { at } => format!("truncated at {at}"),
            ValueError::Invalid { at } => format!("invalid at {at}"),
            ValueError::Trailing { at } => format!("trailing at {at}"),
        }
    }

    #[test]
    fn spec_has_the_kind_vectors_it_promises() {
        let reasons = |v: &[Vec<(String, String)>]| -> Vec<String> {
            let mut r: Vec<String> = v
                .iter()
                .filter_map(|p| Some(one(p, "error")?.split(' ').next()?.to_string()))
                .collect();
            r.sort();
            r.dedup();
            r
        };
        assert_eq!(
            reasons(&declarations()),
            ["invalid", "truncated", "unknown-tag"],
            "every reason of 10.5 has a vector"
        );
        assert_eq!(
            reasons(&kind_vectors()),
            ["invalid", "trailing", "truncated"],
            "every reason of 10.6 has a vector"
        );
        let mut types: Vec<&str> = declarations()
            .iter()
            .filter(|p| one(p, "error").is_none())
            .flat_map(|p| {
                all(p, "field")
                    .into_iter()
                    .map(|f| f.split(' ').nth(1).unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .map(|t| Type::from_name(&t).unwrap().name())
            .collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), 13, "every type in a valid declaration");
        assert!(kind_vectors()
            .iter()
            .any(|p| one(p, "error").is_none() && all(p, "value").len() == 13));
    }

    #[test]
    fn declaration_vectors_decode_and_encode_byte_for_byte() {
        for pairs in declarations() {
            let name = one(&pairs, "name").expect("name");
            let record = hex(one(&pairs, "record").expect("record"));
            let got = Declaration::parse(&record);
            if let Some(error) = one(&pairs, "error") {
                assert_eq!(
                    got.map(|_| ()).map_err(declaration_error),
                    Err(error.to_string()),
                    "{name}"
                );
                continue;
            }
            let d = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            let (id, kname) = one(&pairs, "kind").expect("kind").split_once(' ').unwrap();
            let defs: Vec<FieldDef<'_>> = all(&pairs, "field").into_iter().map(def_of).collect();
            assert_eq!((d.id(), d.name()), (id.parse().unwrap(), kname), "{name}");
            assert_eq!(d.fields().collect::<Vec<_>>(), defs, "{name}");
            let kind = Kind {
                id: d.id(),
                name: kname,
                fields: &defs,
            };
            let mut buf = vec![0u8; kind.declaration_len()];
            assert_eq!(kind.encode(&mut buf), Ok(record.len()), "{name}");
            assert_eq!(buf, record, "{name}: encoding");
        }
    }

    #[test]
    fn kind_vectors_decode_and_encode_byte_for_byte() {
        let decls: BTreeMap<String, Vec<u8>> = declarations()
            .iter()
            .map(|p| {
                (
                    one(p, "name").unwrap().to_owned(),
                    hex(one(p, "record").unwrap()),
                )
            })
            .collect();
        for pairs in kind_vectors() {
            let name = one(&pairs, "name").expect("name");
            let decl = &decls[one(&pairs, "declaration").expect("declaration")];
            let d = Declaration::parse(decl).expect("a valid declaration");
            let record = hex(one(&pairs, "record").expect("record"));
            let Record::Kind { id, .. } = Record::parse(&record) else {
                panic!("{name}: not read as a record of a kind");
            };
            assert_eq!(id, d.id(), "{name}: the record's kind");
            let got: Vec<_> = d.values(&record).collect();
            let ok: Vec<Field<'_>> = got.iter().filter_map(|r| r.ok()).collect();
            let err: Vec<String> = got
                .iter()
                .filter_map(|r| r.err())
                .map(value_error)
                .collect();
            assert_eq!(
                err.first().map(String::as_str),
                one(&pairs, "error"),
                "{name}: error"
            );
            let want = all(&pairs, "value");
            assert_eq!(ok.len(), want.len(), "{name}: values {got:?}");
            let mut keeps = vec![Vec::new(); want.len()];
            let want: Vec<Field<'_>> = want
                .iter()
                .zip(keeps.iter_mut())
                .map(|(line, keep)| field_of(name, line, keep))
                .collect();
            for (i, (have, w)) in ok.iter().zip(&want).enumerate() {
                assert!(same(have, w), "{name}: value {i}: {have:?}, want {w:?}");
            }
            if err.is_empty() {
                let defs: Vec<FieldDef<'_>> = d.fields().collect();
                let kind = Kind {
                    id: d.id(),
                    name: d.name(),
                    fields: &defs,
                };
                let mut buf = vec![0u8; record.len()];
                let mut w = KindWriter::new(&kind, &mut buf);
                for v in &want {
                    w.field(*v).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                assert_eq!(w.finish().unwrap(), &record[..], "{name}: encoding");
            }
        }
    }
}

// ---- protocol version 2 (section 11) ----------------------------------------------------

#[cfg(feature = "v2")]
mod v2 {
    use super::*;
    use tether_core::frame::v2::{self, Ack, Data, Frame, Shape, Short};
    use tether_core::frame::AnyFrame;

    /// The fields of a `tether-v2-vector`, owned.
    #[derive(Debug, Clone, PartialEq)]
    struct Fields {
        kind: String,
        ack: Option<(Short, u16, Option<u16>, Vec<u8>)>,
        data: Option<(Short, bool, Shape, Vec<Vec<u8>>)>,
    }

    fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn fields_of(pairs: &[(String, String)]) -> Fields {
        let width = |key: &str| one(pairs, key).is_some_and(|w| w == "2");
        let ack = one(pairs, "released").map(|r| {
            let wide = width("ack-width");
            (
                Short::of(num(r) as u32, wide),
                one(pairs, "received").map_or(0, |v| num(v) as u16),
                one(pairs, "credit").map(|v| num(v) as u16),
                one(pairs, "sack").map_or(Vec::new(), hex),
            )
        });
        let kind = one(pairs, "kind").expect("kind").to_string();
        let data = (kind == "data").then(|| {
            let shape = match one(pairs, "shape") {
                Some("single") => Shape::Single,
                Some("uniform") => Shape::Uniform,
                Some("listed") => Shape::Listed,
                other => panic!("shape {other:?}"),
            };
            let records = pairs
                .iter()
                .filter(|(k, _)| k == "record")
                .map(|(_, v)| hex(v))
                .collect();
            (
                Short::of(
                    num(one(pairs, "seq").expect("seq")) as u32,
                    width("seq-width"),
                ),
                one(pairs, "immediate") == Some("yes"),
                shape,
                records,
            )
        });
        Fields { kind, ack, data }
    }

    /// The records section of a shape (11.3.3), written from the spec's layout table.
    fn section(shape: Shape, records: &[Vec<u8>]) -> Vec<u8> {
        let varint = |mut n: usize, out: &mut Vec<u8>| loop {
            let b = (n & 0x7F) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        };
        let mut s = Vec::new();
        match shape {
            Shape::Single => s.extend_from_slice(&records[0]),
            Shape::Uniform => {
                varint(records[0].len(), &mut s);
                records.iter().for_each(|r| s.extend_from_slice(r));
            }
            Shape::Listed => records.iter().for_each(|r| {
                varint(r.len(), &mut s);
                s.extend_from_slice(r);
            }),
        }
        s
    }

    fn fields_of_frame(f: &Frame<'_>) -> Fields {
        let ack_of = |a: &Ack<'_>| (a.released, a.received, a.credit, a.sack.to_vec());
        match f {
            Frame::Ping => Fields {
                kind: "ping".into(),
                ack: None,
                data: None,
            },
            Frame::Close => Fields {
                kind: "close".into(),
                ack: None,
                data: None,
            },
            Frame::Ack(a) => Fields {
                kind: "ack".into(),
                ack: Some(ack_of(a)),
                data: None,
            },
            Frame::Data { ack, data } => Fields {
                kind: "data".into(),
                ack: ack.as_ref().map(ack_of),
                data: Some((
                    data.seq,
                    data.immediate,
                    data.shape,
                    data.records().map(<[u8]>::to_vec).collect(),
                )),
            },
        }
    }

    /// What a decoder makes of `wire` fed in `chunk`-byte pieces: frames as fields, or drop
    /// reasons, and the statistics.
    fn decode(wire: &[u8], chunk: usize) -> (Vec<Result<Fields, String>>, frame::DecoderStats) {
        let mut dec = Decoder::new(vec![0u8; frame::raw_len(frame::MAX_PAYLOAD)]);
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            let mut input = piece;
            while let Some(r) = dec.decode_any(&mut input) {
                got.push(match r {
                    Ok(AnyFrame::V2(f)) => Ok(fields_of_frame(&f)),
                    Ok(AnyFrame::V1(f)) => Err(format!("a version 1 frame {:?}", f.header)),
                    Err(FrameError::Crc { .. }) => Err("crc".into()),
                    Err(FrameError::Malformed) => Err("malformed".into()),
                    Err(FrameError::Header(HeaderError::TooShort { .. })) => {
                        Err("too-short".into())
                    }
                    Err(FrameError::Cobs) => Err("cobs".into()),
                    Err(FrameError::TooLong) => Err("too-long".into()),
                    Err(e) => Err(format!("{e}")),
                });
            }
        }
        (got, dec.stats())
    }

    fn v2_vectors() -> Vec<Vec<(String, String)>> {
        blocks(SPEC, "tether-v2-vector")
    }

    #[test]
    fn spec_has_the_v2_vectors_it_promises() {
        let v = v2_vectors();
        let kinds: std::collections::BTreeSet<&str> =
            v.iter().filter_map(|p| one(p, "kind")).collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["ack", "close", "data", "ping"]
        );
        let shapes: std::collections::BTreeSet<&str> =
            v.iter().filter_map(|p| one(p, "shape")).collect();
        assert_eq!(shapes.len(), 3, "every shape: {shapes:?}");
        let reasons: std::collections::BTreeSet<&str> =
            v.iter().filter_map(|p| one(p, "error")).collect();
        assert_eq!(
            reasons.into_iter().collect::<Vec<_>>(),
            ["crc", "malformed", "too-short"]
        );
        let crc16 = v
            .iter()
            .filter(|p| one(p, "crc").is_some_and(|c| c.len() == 6))
            .count();
        assert!(
            crc16 >= 3 && crc16 < v.len(),
            "both checks: {crc16} of {}",
            v.len()
        );
        assert!(v.len() >= 25, "{} v2 vectors", v.len());
    }

    #[test]
    fn v2_valid_vectors_encode_and_decode_byte_for_byte() {
        for pairs in v2_vectors().iter().filter(|p| one(p, "error").is_none()) {
            let name = one(pairs, "name").expect("name");
            let want = fields_of(pairs);
            let sec;
            let ack = want
                .ack
                .as_ref()
                .map(|(released, received, credit, sack)| Ack {
                    released: *released,
                    received: *received,
                    credit: *credit,
                    sack,
                });
            let frame = match want.kind.as_str() {
                "ping" => Frame::Ping,
                "close" => Frame::Close,
                "ack" => Frame::Ack(ack.expect("an ACK has fields")),
                _ => {
                    let (seq, immediate, shape, records) = want.data.clone().expect("data");
                    sec = section(shape, &records);
                    Frame::Data {
                        ack,
                        data: Data {
                            seq,
                            immediate,
                            shape,
                            section: &sec,
                        },
                    }
                }
            };
            let mut out = vec![0u8; v2::max_encoded_len(v2::covered_len(&frame))];
            let n = v2::encode(&frame, &mut out).expect("encodes");
            let wire = hex(one(pairs, "wire").expect("wire"));
            assert_eq!(&out[..n], &wire[..], "{name}: encoding");
            let raw = hex(one(pairs, "raw").expect("raw"));
            let crc = one(pairs, "crc").expect("crc");
            let crc_len = (crc.len() - 2) / 2;
            assert_eq!(
                crc_len,
                v2::check_len(raw.len() - crc_len),
                "{name}: check width"
            );
            let field = raw[raw.len() - crc_len..]
                .iter()
                .rev()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
            assert_eq!(field, num(crc), "{name}: crc field");
            assert_eq!(v2::decode_raw(&raw), Ok(frame), "{name}: raw frame");
            for chunk in [wire.len(), 1] {
                let (got, stats) = decode(&wire, chunk);
                assert_eq!(got, vec![Ok(want.clone())], "{name}: decoding in {chunk}s");
                assert_eq!((stats.frames, stats.bytes), (1, wire.len() as u64));
            }
        }
    }

    #[test]
    fn v2_invalid_vectors_are_dropped_for_the_stated_reason() {
        for pairs in v2_vectors().iter().filter(|p| one(p, "error").is_some()) {
            let name = one(pairs, "name").expect("name");
            let wire = hex(one(pairs, "wire").expect("wire"));
            for chunk in [wire.len(), 1] {
                let (got, stats) = decode(&wire, chunk);
                assert_eq!(
                    got,
                    vec![Err(one(pairs, "error").unwrap().to_string())],
                    "{name}"
                );
                assert_eq!(
                    (stats.frames, stats.dropped()),
                    (0, 1),
                    "{name}: counted once"
                );
            }
        }
    }

    #[test]
    fn v2_numbers_expand_as_specified() {
        let v = blocks(SPEC, "tether-v2-number");
        assert!(v.len() >= 8, "{} number vectors", v.len());
        for pairs in &v {
            let name = one(pairs, "name").expect("name");
            let reference = num(one(pairs, "reference").expect("reference")) as u32;
            let value = num(one(pairs, "value").expect("value")) as u32;
            let short = Short::of(value, one(pairs, "width") == Some("2"));
            let got = match one(pairs, "rule") {
                Some("seq") => v2::expand_seq(reference, short),
                Some("released") => v2::expand_released(reference, short),
                other => panic!("{name}: rule {other:?}"),
            };
            assert_eq!(
                u64::from(got),
                num(one(pairs, "result").expect("result")),
                "{name}"
            );
        }
    }

    /// A version 1 receiver (`Decoder::decode`) never takes a version 2 frame: it drops
    /// every valid v2 vector (11.5).
    #[test]
    fn a_version_1_decoder_drops_version_2_frames() {
        for pairs in v2_vectors().iter().filter(|p| one(p, "error").is_none()) {
            let wire = hex(one(pairs, "wire").expect("wire"));
            let mut dec = Decoder::new(vec![0u8; frame::raw_len(frame::MAX_PAYLOAD)]);
            let mut input = &wire[..];
            while let Some(r) = dec.decode(&mut input) {
                assert!(
                    r.is_err(),
                    "{}: taken as version 1",
                    one(pairs, "name").unwrap()
                );
            }
            assert_eq!(dec.stats().frames, 0);
        }
    }
}
