//! The JSON of a record's PUBLISH (the keys and their order: [`super`]).

use std::time::SystemTime;

use tether_core::record::{Field, Fields};

/// Appends the payload of record `seq` of `device` (numbering `session`) to `out`.
pub(super) fn record(
    out: &mut Vec<u8>,
    time: SystemTime,
    device: u32,
    session: u32,
    seq: u32,
    payload: &[u8],
) {
    out.extend_from_slice(b"{\"device\":\"");
    out.extend_from_slice(format!("{device:08x}").as_bytes());
    out.extend_from_slice(b"\",\"session\":");
    out.extend_from_slice(itoa::Buffer::new().format(session).as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    time_key(out, "host_time", time);
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

/// `,"KEY":"TIME"` (RFC 3339, UTC, microseconds).
pub(super) fn time_key(out: &mut Vec<u8>, key: &str, time: SystemTime) {
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
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
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
