//! The test vectors of `PROTOCOL.md`, read from the spec itself so that the two cannot drift.

use std::collections::BTreeMap;

use tether_core::frame::{self, Decoder, Flags, FrameError, FrameView, Header, HeaderError, Kind};

const SPEC: &str = include_str!("../../PROTOCOL.md");

/// Every `tether-vector` block as key → value, hex continuation lines joined.
fn vectors() -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut lines = SPEC.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```tether-vector" {
            continue;
        }
        let mut map = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            if line.starts_with(' ') {
                let key = last.as_ref().expect("continuation after a key");
                let v: &mut String = map.get_mut(key).expect("key present");
                v.push(' ');
                v.push_str(line.trim());
            } else {
                let (k, v) = line.split_once(':').expect("key: value");
                map.insert(k.trim().to_string(), v.trim().to_string());
                last = Some(k.trim().to_string());
            }
        }
        out.push(map);
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
