//! Feeds arbitrary payloads to the typed-record reader: it must never panic, must stop at
//! its first error, and every record it reads completely must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::record::{Field, Fields, RecordWriter};

fuzz_target!(|data: &[u8]| {
    let Some(fields) = Fields::new(data) else { return };
    let results: Vec<_> = fields.collect();
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert!(errors <= 1 && (errors == 0 || results.last().is_some_and(|r| r.is_err())));
    if errors == 0 {
        let mut buf = vec![0u8; data.len()];
        let mut w = RecordWriter::new(&mut buf);
        for f in results.into_iter().flatten() {
            match f {
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
            .expect("fits: same size as the input");
        }
        assert_eq!(w.finish(), data);
    }
});
