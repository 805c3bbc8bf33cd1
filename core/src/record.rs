//! Records with typed fields, so that a host writes real CSV columns, not `str(bytes)`.
//!
//! A record's payload is one of two forms, told apart by its first byte alone
//! (`PROTOCOL.md`, section 10, which this module implements):
//! - **typed**: the byte `0x1E` (ASCII "record separator"), then, by its second byte, one of
//!   - **fields** (10.1): each a tag byte and a little-endian value, what firmware sends
//!     with no float formatting on the device ([`Fields`], [`RecordWriter`]);
//!   - a **declaration** (`0x0E`, 10.5): a record kind's id, name and named, typed fields,
//!     declared once per session ([`kind::Kind`], [`kind::Declaration`]);
//!   - a **record of a declared kind** (`0x80` to `0xFF`, 10.6): its values alone, in the
//!     declared order ([`kind::KindWriter`], [`kind::Values`]);
//! - **text**: every other payload, the empty one included: one line of text, by
//!   convention comma-separated fields, what a person or a script sends (`tether send`).
//!   A sender of text records must never send one that starts with `0x1E`: it would be
//!   read as typed.
//!
//! [`Record::parse`] tells the forms apart. [`Fields`] reads fields and stops at the first
//! malformed one ([`FieldError`]: the spec's `unknown-tag`, `truncated` and `invalid`, at
//! the offset of the field's tag); the fields before it stand. [`RecordWriter`] writes one.
//!
//! ```
//! use tether_core::record::{Field, Fields, RecordWriter};
//!
//! let mut buf = [0u8; 32];
//! let mut w = RecordWriter::new(&mut buf);
//! w.f32(21.5)?.u16(1013)?.str("ok")?;
//! let payload = w.finish();
//!
//! let fields: Vec<Field> = Fields::new(payload).unwrap().collect::<Result<_, _>>().unwrap();
//! assert_eq!(fields, [Field::F32(21.5), Field::U16(1013), Field::Str("ok")]);
//! # Ok::<(), tether_core::record::Full>(())
//! ```

pub mod kind;

use kind::{Malformed, Type};

/// The first byte of a typed record.
pub const TYPED: u8 = 0x1E;

/// What a record is, from its first two bytes (`PROTOCOL.md` 10).
#[derive(Debug, Clone)]
pub enum Record<'a> {
    /// A text record (10.3): every record whose first byte is not `0x1E`.
    Text(&'a [u8]),
    /// A typed record of fields (10.1).
    Fields(Fields<'a>),
    /// A declaration (10.5), checked: a malformed one declares nothing.
    Declaration(Result<kind::Declaration<'a>, FieldError>),
    /// A record of the kind `id` (10.6): read its values with the kind's declaration
    /// ([`kind::Declaration::values`], [`kind::Values`]).
    Kind {
        /// The kind.
        id: u8,
        /// The whole record.
        record: &'a [u8],
    },
}

impl<'a> Record<'a> {
    /// Classifies `payload` by its first two bytes.
    pub fn parse(payload: &'a [u8]) -> Record<'a> {
        match payload {
            [TYPED, kind::DECLARATION, ..] => {
                Record::Declaration(kind::Declaration::parse(payload))
            }
            [TYPED, k, ..] if *k >= kind::KIND => Record::Kind {
                id: k & kind::MAX_KIND,
                record: payload,
            },
            [TYPED, ..] => Record::Fields(Fields {
                rest: &payload[1..],
                at: 1,
                failed: false,
            }),
            _ => Record::Text(payload),
        }
    }
}

/// Field tags (`PROTOCOL.md` 10.1); every other value is reserved.
#[allow(dead_code)] // the writer's; the reader goes through `kind::Type`
mod tag {
    pub const BOOL: u8 = 0x01;
    pub const U8: u8 = 0x02;
    pub const U16: u8 = 0x03;
    pub const U32: u8 = 0x04;
    pub const U64: u8 = 0x05;
    pub const I8: u8 = 0x06;
    pub const I16: u8 = 0x07;
    pub const I32: u8 = 0x08;
    pub const I64: u8 = 0x09;
    pub const F32: u8 = 0x0A;
    pub const F64: u8 = 0x0B;
    pub const STR: u8 = 0x0C;
    pub const BYTES: u8 = 0x0D;
}

/// One field of a typed record.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Field<'a> {
    /// `0x01`, one byte, 0 or 1.
    Bool(bool),
    /// `0x02`.
    U8(u8),
    /// `0x03`.
    U16(u16),
    /// `0x04`.
    U32(u32),
    /// `0x05`.
    U64(u64),
    /// `0x06`.
    I8(i8),
    /// `0x07`.
    I16(i16),
    /// `0x08`.
    I32(i32),
    /// `0x09`.
    I64(i64),
    /// `0x0A`, IEEE 754 binary32.
    F32(f32),
    /// `0x0B`, IEEE 754 binary64.
    F64(f64),
    /// `0x0C`, a length byte and that many bytes of UTF-8 (bytes that are not UTF-8 are
    /// [`FieldError::Invalid`]).
    Str(&'a str),
    /// `0x0D`, a length byte and that many bytes (written to CSV as hexadecimal).
    Bytes(&'a [u8]),
}

/// Why a typed record could not be read (`PROTOCOL.md` 10.2). Reading stops at the first
/// error; every offset is that of the malformed field's tag byte, the marker being byte 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FieldError {
    /// `unknown-tag`: a tag this version does not define (a reserved one), at this offset.
    UnknownTag {
        /// The tag.
        tag: u8,
        /// Where it is in the payload.
        at: usize,
    },
    /// `truncated`: the payload ends inside the field (its length byte or its value) that
    /// starts at this offset.
    Truncated {
        /// Where the field starts.
        at: usize,
    },
    /// `invalid`: a `bool` that is neither 0 nor 1, or a `str` that is not UTF-8, at this
    /// offset.
    Invalid {
        /// Where the field starts.
        at: usize,
    },
}

impl core::fmt::Display for FieldError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            FieldError::UnknownTag { tag, at } => {
                write!(f, "unknown field tag {tag:#04x} at byte {at}")
            }
            FieldError::Truncated { at } => write!(f, "record ends inside the field at byte {at}"),
            FieldError::Invalid { at } => write!(f, "invalid value in the field at byte {at}"),
        }
    }
}

impl core::error::Error for FieldError {}

/// The fields of a typed record, in order.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// The fields of `payload` read by the rules of 10.1 alone, or `None` if it is not a
    /// typed record. A declaration or a record of a kind reads here as it does to a receiver
    /// that knows no kinds: `unknown-tag` at byte 1 ([`Record::parse`] tells them apart).
    pub fn new(payload: &'a [u8]) -> Option<Fields<'a>> {
        match payload.split_first() {
            Some((&TYPED, rest)) => Some(Fields {
                rest,
                at: 1,
                failed: false,
            }),
            _ => None,
        }
    }

    fn field(&mut self) -> Result<Field<'a>, FieldError> {
        let at = self.at;
        let (&t, rest) = self
            .rest
            .split_first()
            .ok_or(FieldError::Truncated { at })?;
        let ty = Type::from_tag(t).ok_or(FieldError::UnknownTag { tag: t, at })?;
        let (f, n) = ty.read(rest).map_err(|e| match e {
            Malformed::Truncated => FieldError::Truncated { at },
            Malformed::Invalid => FieldError::Invalid { at },
        })?;
        self.rest = &rest[n..];
        self.at += 1 + n;
        Ok(f)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, FieldError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let r = self.field();
        self.failed = r.is_err();
        Some(r)
    }
}

/// The record buffer is full: the field was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Full;

impl core::fmt::Display for Full {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("record buffer full")
    }
}

impl core::error::Error for Full {}

/// Builds a typed record in a caller's buffer. Methods chain; a field that does not fit is
/// refused with [`Full`] and leaves the record as it was.
#[derive(Debug)]
pub struct RecordWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> RecordWriter<'a> {
    /// Starts a typed record in `buf` (writes the `0x1E` marker if there is room).
    pub fn new(buf: &'a mut [u8]) -> Self {
        let len = match buf.first_mut() {
            Some(b) => {
                *b = TYPED;
                1
            }
            None => 0,
        };
        RecordWriter { buf, len }
    }

    fn put(&mut self, t: u8, value: &[u8]) -> Result<&mut Self, Full> {
        self.put_parts(&[&[t], value])
    }

    fn put_parts(&mut self, parts: &[&[u8]]) -> Result<&mut Self, Full> {
        let need: usize = parts.iter().map(|p| p.len()).sum();
        if self.len == 0 || self.buf.len() - self.len < need {
            return Err(Full);
        }
        for p in parts {
            self.buf[self.len..self.len + p.len()].copy_from_slice(p);
            self.len += p.len();
        }
        Ok(self)
    }

    /// Adds a `bool`.
    pub fn bool(&mut self, v: bool) -> Result<&mut Self, Full> {
        self.put(tag::BOOL, &[u8::from(v)])
    }
    /// Adds a `u8`.
    pub fn u8(&mut self, v: u8) -> Result<&mut Self, Full> {
        self.put(tag::U8, &[v])
    }
    /// Adds a `u16`.
    pub fn u16(&mut self, v: u16) -> Result<&mut Self, Full> {
        self.put(tag::U16, &v.to_le_bytes())
    }
    /// Adds a `u32`.
    pub fn u32(&mut self, v: u32) -> Result<&mut Self, Full> {
        self.put(tag::U32, &v.to_le_bytes())
    }
    /// Adds a `u64`.
    pub fn u64(&mut self, v: u64) -> Result<&mut Self, Full> {
        self.put(tag::U64, &v.to_le_bytes())
    }
    /// Adds an `i8`.
    pub fn i8(&mut self, v: i8) -> Result<&mut Self, Full> {
        self.put(tag::I8, &v.to_le_bytes())
    }
    /// Adds an `i16`.
    pub fn i16(&mut self, v: i16) -> Result<&mut Self, Full> {
        self.put(tag::I16, &v.to_le_bytes())
    }
    /// Adds an `i32`.
    pub fn i32(&mut self, v: i32) -> Result<&mut Self, Full> {
        self.put(tag::I32, &v.to_le_bytes())
    }
    /// Adds an `i64`.
    pub fn i64(&mut self, v: i64) -> Result<&mut Self, Full> {
        self.put(tag::I64, &v.to_le_bytes())
    }
    /// Adds an `f32`.
    pub fn f32(&mut self, v: f32) -> Result<&mut Self, Full> {
        self.put(tag::F32, &v.to_le_bytes())
    }
    /// Adds an `f64`.
    pub fn f64(&mut self, v: f64) -> Result<&mut Self, Full> {
        self.put(tag::F64, &v.to_le_bytes())
    }
    /// Adds a string of at most 255 bytes (longer is refused with [`Full`]).
    pub fn str(&mut self, v: &str) -> Result<&mut Self, Full> {
        let n = u8::try_from(v.len()).map_err(|_| Full)?;
        self.put_parts(&[&[tag::STR, n], v.as_bytes()])
    }
    /// Adds up to 255 raw bytes (longer is refused with [`Full`]).
    pub fn bytes(&mut self, v: &[u8]) -> Result<&mut Self, Full> {
        let n = u8::try_from(v.len()).map_err(|_| Full)?;
        self.put_parts(&[&[tag::BYTES, n], v])
    }

    /// The record so far.
    pub fn finish(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    #[derive(Debug, Clone)]
    enum Owned {
        Bool(bool),
        U8(u8),
        U16(u16),
        U32(u32),
        U64(u64),
        I8(i8),
        I16(i16),
        I32(i32),
        I64(i64),
        F32(f32),
        F64(f64),
        Str(String),
        Bytes(Vec<u8>),
    }

    fn owned() -> impl Strategy<Value = Owned> {
        prop_oneof![
            any::<bool>().prop_map(Owned::Bool),
            any::<u8>().prop_map(Owned::U8),
            any::<u16>().prop_map(Owned::U16),
            any::<u32>().prop_map(Owned::U32),
            any::<u64>().prop_map(Owned::U64),
            any::<i8>().prop_map(Owned::I8),
            any::<i16>().prop_map(Owned::I16),
            any::<i32>().prop_map(Owned::I32),
            any::<i64>().prop_map(Owned::I64),
            any::<f32>().prop_map(Owned::F32),
            any::<f64>().prop_map(Owned::F64),
            "\\PC{0,40}"
                .prop_filter("fits", |s| s.len() <= 255)
                .prop_map(Owned::Str),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(Owned::Bytes),
        ]
    }

    fn write(w: &mut RecordWriter<'_>, f: &Owned) -> Result<(), Full> {
        match f {
            Owned::Bool(v) => w.bool(*v),
            Owned::U8(v) => w.u8(*v),
            Owned::U16(v) => w.u16(*v),
            Owned::U32(v) => w.u32(*v),
            Owned::U64(v) => w.u64(*v),
            Owned::I8(v) => w.i8(*v),
            Owned::I16(v) => w.i16(*v),
            Owned::I32(v) => w.i32(*v),
            Owned::I64(v) => w.i64(*v),
            Owned::F32(v) => w.f32(*v),
            Owned::F64(v) => w.f64(*v),
            Owned::Str(v) => w.str(v),
            Owned::Bytes(v) => w.bytes(v),
        }
        .map(|_| ())
    }

    fn same(f: &Owned, g: &Field<'_>) -> bool {
        match (f, g) {
            (Owned::Bool(a), Field::Bool(b)) => a == b,
            (Owned::U8(a), Field::U8(b)) => a == b,
            (Owned::U16(a), Field::U16(b)) => a == b,
            (Owned::U32(a), Field::U32(b)) => a == b,
            (Owned::U64(a), Field::U64(b)) => a == b,
            (Owned::I8(a), Field::I8(b)) => a == b,
            (Owned::I16(a), Field::I16(b)) => a == b,
            (Owned::I32(a), Field::I32(b)) => a == b,
            (Owned::I64(a), Field::I64(b)) => a == b,
            (Owned::F32(a), Field::F32(b)) => a.to_bits() == b.to_bits(),
            (Owned::F64(a), Field::F64(b)) => a.to_bits() == b.to_bits(),
            (Owned::Str(a), Field::Str(b)) => a == b,
            (Owned::Bytes(a), Field::Bytes(b)) => a == b,
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn fields_round_trip(fields in prop::collection::vec(owned(), 0..12)) {
            let mut buf = [0u8; 1024];
            let mut w = RecordWriter::new(&mut buf);
            for f in &fields {
                write(&mut w, f).unwrap();
            }
            let payload = w.finish().to_vec();
            let got: Vec<Field<'_>> = Fields::new(&payload).unwrap().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got.len(), fields.len());
            for (f, g) in fields.iter().zip(&got) {
                prop_assert!(same(f, g), "{:?} vs {:?}", f, g);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stop_at_the_first_error(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut payload = std::vec![TYPED];
            payload.extend(&bytes);
            let results: Vec<_> = Fields::new(&payload).unwrap().collect();
            let errors = results.iter().filter(|r| r.is_err()).count();
            prop_assert!(errors <= 1);
            if errors == 1 {
                prop_assert!(results.last().unwrap().is_err());
            }
        }
    }

    #[test]
    fn a_full_buffer_refuses_the_field_and_keeps_the_record() {
        let mut buf = [0u8; 6];
        let mut w = RecordWriter::new(&mut buf);
        w.u32(7).unwrap();
        assert_eq!(w.u8(1).err(), Some(Full));
        assert_eq!(w.finish(), &[TYPED, 0x04, 7, 0, 0, 0]);
        assert_eq!(RecordWriter::new(&mut []).u8(1).err(), Some(Full));
    }

    #[test]
    fn records_are_told_apart_by_their_first_two_bytes() {
        assert!(matches!(Record::parse(b"21.5"), Record::Text(b"21.5")));
        assert!(matches!(Record::parse(b""), Record::Text(b"")));
        assert!(matches!(Record::parse(&[TYPED]), Record::Fields(_)));
        assert!(matches!(
            Record::parse(&[TYPED, 0x02, 1]),
            Record::Fields(_)
        ));
        assert!(matches!(Record::parse(&[TYPED, 0x7F]), Record::Fields(_)));
        assert!(matches!(
            Record::parse(&[TYPED, 0x0E]),
            Record::Declaration(Err(FieldError::Truncated { at: 2 }))
        ));
        assert!(matches!(
            Record::parse(&[TYPED, 0x80]),
            Record::Kind { id: 0, .. }
        ));
        assert!(matches!(
            Record::parse(&[TYPED, 0xFF, 1]),
            Record::Kind { id: 127, .. }
        ));
        // To a reader of fields alone, the new forms are an unknown tag at byte 1.
        let f: Vec<_> = Fields::new(&[TYPED, 0x81, 1]).unwrap().collect();
        assert_eq!(f, [Err(FieldError::UnknownTag { tag: 0x81, at: 1 })]);
    }

    #[test]
    fn text_and_empty_payloads_are_not_typed() {
        assert!(Fields::new(b"21.5,ok").is_none());
        assert!(Fields::new(b"").is_none());
        let errs: Vec<_> = Fields::new(&[TYPED, 0x04, 1, 2]).unwrap().collect();
        assert_eq!(errs, [Err(FieldError::Truncated { at: 1 })]);
        let errs: Vec<_> = Fields::new(&[TYPED, 0x01, 2]).unwrap().collect();
        assert_eq!(errs, [Err(FieldError::Invalid { at: 1 })]);
        let errs: Vec<_> = Fields::new(&[TYPED, 0x02, 5, 0x7F]).unwrap().collect();
        assert_eq!(
            errs,
            [
                Ok(Field::U8(5)),
                Err(FieldError::UnknownTag { tag: 0x7F, at: 3 })
            ]
        );
    }
}
