//! Feeds arbitrary payloads to the typed-record readers (`PROTOCOL.md` 10): none may panic;
//! each stops at its first error; and whatever reads completely must encode again to the
//! same bytes.
//!
//! - The input as a record: fields (10.1), a declaration (10.5) or a record of a kind (10.6,
//!   read here with no declaration: only classified).
//! - The input split in two, its first byte saying where: a declaration body (after
//!   `1E 0E`) and, if it declares a kind, a record of that kind (after `1E 80+id`) read with
//!   it, so that the fuzzer explores schemas and the records they read together.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::record::kind::{Declaration, FieldDef, Kind, KindWriter};
use tether_core::record::{Field, Fields, Record, RecordWriter};

fn fields_round_trip(data: &[u8]) {
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
}

/// A declaration that reads must be its own encoding.
fn declaration_round_trip(record: &[u8]) -> Option<Declaration<'_>> {
    let d = Declaration::parse(record).ok()?;
    let defs: Vec<FieldDef<'_>> = d.fields().collect();
    assert_eq!(defs.len(), d.len());
    let kind = Kind {
        id: d.id(),
        name: d.name(),
        fields: &defs,
    };
    let mut buf = vec![0u8; kind.declaration_len()];
    assert_eq!(kind.encode(&mut buf), Ok(record.len()));
    assert_eq!(buf, record);
    Some(d)
}

/// A record of the declared kind: at most one error, last; read whole, it encodes again to
/// itself.
fn values_round_trip(d: &Declaration<'_>, record: &[u8]) {
    let results: Vec<_> = d.values(record).collect();
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert!(errors <= 1 && (errors == 0 || results.last().is_some_and(|r| r.is_err())));
    assert!(results.len() <= d.len() + 1);
    if errors == 0 {
        assert_eq!(results.len(), d.len());
        let defs: Vec<FieldDef<'_>> = d.fields().collect();
        let kind = Kind {
            id: d.id(),
            name: d.name(),
            fields: &defs,
        };
        let mut buf = vec![0u8; record.len()];
        let mut w = KindWriter::new(&kind, &mut buf);
        for v in results.into_iter().flatten() {
            w.field(v).expect("the declared type, and it fits");
        }
        assert_eq!(w.finish().expect("every field written"), record);
    }
}

fuzz_target!(|data: &[u8]| {
    fields_round_trip(data);
    match Record::parse(data) {
        Record::Declaration(Ok(_)) => {
            declaration_round_trip(data).expect("parsed once, parses again");
        }
        Record::Kind { id, record } => assert_eq!(record[1], 0x80 | id),
        _ => {}
    }
    let Some((&split, rest)) = data.split_first() else { return };
    let at = usize::from(split).min(rest.len());
    let mut declaration = vec![0x1E, 0x0E];
    declaration.extend_from_slice(&rest[..at]);
    if let Some(d) = declaration_round_trip(&declaration) {
        let mut record = vec![0x1E, 0x80 | d.id()];
        record.extend_from_slice(&rest[at..]);
        values_round_trip(&d, &record);
    }
});
