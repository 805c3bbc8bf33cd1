//! The JSON objects of records, declarations and markers, shared by the MQTT sink (its PUBLISH
//! payloads: the keys and their order in [`crate::mqtt`]) and the JSON lines sink ([`super::jsonl`]).

use std::time::SystemTime;

use tether_core::record::{Field, Fields};

use crate::sink::kinds::Schema;

/// Appends the payload of record `seq` of `device` (numbering `session`) to `out`.
pub(crate) fn record(
    out: &mut Vec<u8>,
    time: SystemTime,
    device: u32,
    session: u32,
    seq: u32,
    payload: &[u8],
) {
    head(out, time, device, session, seq);
    let mut texts = Vec::new();
    crate::sink::render_fields(payload, &mut texts);
    // Which of the CSV's fields are typed numbers or booleans: those are JSON values.
    let mut native = Vec::with_capacity(texts.len());
    if let Some(fields) = Fields::new(payload) {
        for f in fields {
            native.push(matches!(
                f,
                Ok(Field::Bool(_)
                    | Field::U8(_)
                    | Field::U16(_)
                    | Field::U32(_)
                    | Field::U64(_)
                    | Field::I8(_)
                    | Field::I16(_)
                    | Field::I32(_)
                    | Field::I64(_)
                    | Field::F32(_)
                    | Field::F64(_))
            ));
        }
    }
    for (i, text) in texts.iter().enumerate() {
        out.extend_from_slice(b",\"field_");
        out.extend_from_slice(itoa::Buffer::new().format(i + 1).as_bytes());
        out.extend_from_slice(b"\":");
        let number = native.get(i).copied().unwrap_or(false)
            && !matches!(text.as_str(), "NaN" | "inf" | "-inf");
        if number {
            out.extend_from_slice(text.as_bytes());
        } else {
            string(out, text);
        }
    }
    out.push(b'}');
}

/// The fixed keys of every record's payload: `{"device":…,"session":…,"seq":…,"host_time":…`.
fn head(out: &mut Vec<u8>, time: SystemTime, device: u32, session: u32, seq: u32) {
    out.extend_from_slice(b"{\"device\":\"");
    out.extend_from_slice(format!("{device:08x}").as_bytes());
    out.extend_from_slice(b"\",\"session\":");
    out.extend_from_slice(itoa::Buffer::new().format(session).as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    time_key(out, "host_time", time);
}

/// A record of a declared kind: the fixed keys, `"kind":NAME`, then each field under its
/// declared name (`_` appended to one that is a fixed key's or an earlier field's): numbers
/// and booleans as JSON values (a NaN or infinite float as `"NaN"`, `"inf"`, `"-inf"`),
/// strings as they are, bytes in lowercase hex.
pub(crate) fn kind_record(
    out: &mut Vec<u8>,
    time: SystemTime,
    (device, session, seq): (u32, u32, u32),
    schema: &Schema,
    values: &[Field<'_>],
) {
    head(out, time, device, session, seq);
    out.extend_from_slice(b",\"kind\":");
    string(out, &schema.name);
    for (c, v) in schema.columns.iter().zip(values) {
        out.push(b',');
        string(out, &c.column);
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

/// A declaration (published retained on `PREFIX/D/kind/NAME`): the fixed keys, then
/// `"kind":ID,"name":NAME,"fields":[{"name":…,"type":…,"unit":…}, …]` (`unit` only if
/// declared).
pub(crate) fn declaration(
    out: &mut Vec<u8>,
    time: SystemTime,
    key: (u32, u32, u32),
    schema: &Schema,
) {
    declaration_keys(out, time, key, schema);
    out.push(b'}');
}

/// A declaration as a JSON line: [`declaration`]'s keys, then `"declaration":HEX` (the
/// declaration record's bytes in lowercase hex, which a restarted listener reads back).
pub(crate) fn declaration_line(
    out: &mut Vec<u8>,
    time: SystemTime,
    key: (u32, u32, u32),
    schema: &Schema,
) {
    declaration_keys(out, time, key, schema);
    out.extend_from_slice(b",\"declaration\":");
    string(out, &crate::sink::kinds::hex(&schema.declaration));
    out.push(b'}');
}

/// A marker (a discontinuity in `device`'s records, `text` beginning with `<`):
/// `{"device":…,"session":…,"host_time":…,"marker":TEXT}`.
pub(crate) fn marker(out: &mut Vec<u8>, time: SystemTime, device: u32, session: u32, text: &str) {
    out.extend_from_slice(b"{\"device\":\"");
    out.extend_from_slice(format!("{device:08x}").as_bytes());
    out.extend_from_slice(b"\",\"session\":");
    out.extend_from_slice(itoa::Buffer::new().format(session).as_bytes());
    time_key(out, "host_time", time);
    out.extend_from_slice(b",\"marker\":");
    string(out, text);
    out.push(b'}');
}

/// [`declaration`]'s keys, without the closing brace.
fn declaration_keys(
    out: &mut Vec<u8>,
    time: SystemTime,
    (device, session, seq): (u32, u32, u32),
    schema: &Schema,
) {
    head(out, time, device, session, seq);
    out.extend_from_slice(b",\"kind\":");
    out.extend_from_slice(itoa::Buffer::new().format(schema.id).as_bytes());
    out.extend_from_slice(b",\"name\":");
    string(out, &schema.name);
    out.extend_from_slice(b",\"fields\":[");
    for (i, c) in schema.columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        string(out, &c.column);
        out.extend_from_slice(b",\"type\":");
        string(out, &c.ty.to_string());
        if let Some(u) = &c.unit {
            out.extend_from_slice(b",\"unit\":");
            string(out, u);
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// A record that cannot be read by a declaration (an undeclared kind, a mismatch, a
/// malformed declaration): the fixed keys, then its texts as `field_1`, … strings, as the
/// CSV writes them.
pub(crate) fn texts(
    out: &mut Vec<u8>,
    time: SystemTime,
    (device, session, seq): (u32, u32, u32),
    texts: &[String],
) {
    head(out, time, device, session, seq);
    for (i, t) in texts.iter().enumerate() {
        out.extend_from_slice(b",\"field_");
        out.extend_from_slice(itoa::Buffer::new().format(i + 1).as_bytes());
        out.extend_from_slice(b"\":");
        string(out, t);
    }
    out.push(b'}');
}

/// One typed value as JSON.
fn value(out: &mut Vec<u8>, v: &Field<'_>) {
    let float = |out: &mut Vec<u8>, x: f64, text: String| {
        if x.is_finite() {
            out.extend_from_slice(text.as_bytes());
        } else {
            string(out, &text);
        }
    };
    match *v {
        Field::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Field::U8(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        Field::U16(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        Field::U32(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        Field::U64(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        Field::I8(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        Field::I16(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        Field::I32(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        Field::I64(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        Field::F32(x) => float(out, f64::from(x), crate::sink::kinds::text(v)),
        Field::F64(x) => float(out, x, crate::sink::kinds::text(v)),
        Field::Str(s) => string(out, s),
        Field::Bytes(b) => string(out, &crate::sink::kinds::hex(b)),
    }
}

/// `,"KEY":"TIME"` (RFC 3339, UTC, microseconds).
pub(crate) fn time_key(out: &mut Vec<u8>, key: &str, time: SystemTime) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(
        humantime::format_rfc3339_micros(time)
            .to_string()
            .as_bytes(),
    );
    out.push(b'"');
}

/// `s` as a JSON string (RFC 8259: `"` and `\` escaped, control characters as `\u00XX`).
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for b in s.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1F => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::record::RecordWriter;

    fn render(payload: &[u8]) -> String {
        let mut out = Vec::new();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        record(&mut out, t, 0xA, 2, 7, payload);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn typed_fields_are_json_values_and_the_rest_strings() {
        let mut buf = [0u8; 64];
        let mut w = RecordWriter::new(&mut buf);
        w.f32(21.5).unwrap().u16(1013).unwrap().bool(true).unwrap();
        w.str("a\"b\n").unwrap().f64(f64::NAN).unwrap();
        assert_eq!(
            render(w.finish()),
            "{\"device\":\"0000000a\",\"session\":2,\"seq\":7,\
             \"host_time\":\"2023-11-14T22:13:20.123456Z\",\"field_1\":21.5,\"field_2\":1013,\"field_3\":true,\
             \"field_4\":\"a\\\"b\\n\",\"field_5\":\"NaN\"}"
        );
        assert!(render(b"21.5,ok\n").ends_with(",\"field_1\":\"21.5\",\"field_2\":\"ok\"}"));
        assert!(render(&[0xFF, 1]).ends_with(",\"field_1\":\"<binary ff01>\"}"));
        assert!(render(b"\x01").ends_with(",\"field_1\":\"\\u0001\"}"));
    }
}
