//! Record kinds: a schema declared once per session, and records that refer to it
//! (`PROTOCOL.md` 10.5 to 10.7).
//!
//! A **kind** has an id (0 to 127) in the sender's session, a name and named, typed fields,
//! each with an optional unit. The sender declares it once per session with a
//! **declaration** record (`1E 0E …`), and then sends **records of the kind** (`1E 80+id
//! …`): the values alone, in the declared order, without tags, since the declaration gives
//! their types. A receiver keeps the declarations of each session and reads the records
//! with them; one that restarts keeps them where it keeps the records (10.7).
//!
//! For firmware the schema is a `const` [`Kind`], and its declaration is built at compile
//! time ([`Kind::declaration`]): the bytes sit in flash, checked, and sending them costs no
//! code beyond the link's `send`. [`KindWriter`] writes a record of the kind into a caller's
//! buffer, checking each value's type against the schema; nothing allocates.
//!
//! ```
//! use tether_core::record::kind::{FieldDef, Kind, KindWriter, Type};
//! use tether_core::record::{Field, Record};
//!
//! const ENV: Kind = Kind {
//!     id: 0,
//!     name: "env",
//!     fields: &[
//!         FieldDef::new("temperature", Type::F32).unit("°C"),
//!         FieldDef::new("pressure", Type::U16).unit("hPa"),
//!     ],
//! };
//! // Checked and encoded by the compiler: an invalid schema does not build.
//! const ENV_DECLARATION: [u8; ENV.declaration_len()] = ENV.declaration();
//!
//! let mut buf = [0u8; 16];
//! let mut w = KindWriter::new(&ENV, &mut buf);
//! w.f32(21.5)?.u16(1013)?;
//! let record = w.finish()?;
//! assert_eq!(record, [0x1E, 0x80, 0x00, 0x00, 0xAC, 0x41, 0xF5, 0x03]);
//!
//! // The receiver, from the bytes alone:
//! let Record::Declaration(Ok(env)) = Record::parse(&ENV_DECLARATION) else { panic!() };
//! assert_eq!(env.name(), "env");
//! let Record::Kind { id: 0, .. } = Record::parse(record) else { panic!() };
//! let values: Vec<Field> = env.values(record).collect::<Result<_, _>>().unwrap();
//! assert_eq!(values, [Field::F32(21.5), Field::U16(1013)]);
//! # Ok::<(), tether_core::record::kind::WriteError>(())
//! ```

use super::{Field, FieldError, TYPED};

/// The second byte of a declaration (`1E 0E …`).
pub const DECLARATION: u8 = 0x0E;
/// The second byte of a record of kind `id` is `KIND | id` (`1E 80 …` to `1E FF …`).
pub const KIND: u8 = 0x80;
/// The largest kind id.
pub const MAX_KIND: u8 = 0x7F;
/// The longest kind or field name, bytes.
pub const MAX_NAME: usize = 63;
/// The longest unit, bytes.
pub const MAX_UNIT: usize = 255;
/// In a declaration's type byte: a unit follows the field's name.
const HAS_UNIT: u8 = 0x80;

/// A field's type: the tags of `PROTOCOL.md` 10.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Type {
    /// `0x01`.
    Bool = 0x01,
    /// `0x02`.
    U8 = 0x02,
    /// `0x03`.
    U16 = 0x03,
    /// `0x04`.
    U32 = 0x04,
    /// `0x05`.
    U64 = 0x05,
    /// `0x06`.
    I8 = 0x06,
    /// `0x07`.
    I16 = 0x07,
    /// `0x08`.
    I32 = 0x08,
    /// `0x09`.
    I64 = 0x09,
    /// `0x0A`.
    F32 = 0x0A,
    /// `0x0B`.
    F64 = 0x0B,
    /// `0x0C`: a length byte and that many bytes of UTF-8.
    Str = 0x0C,
    /// `0x0D`: a length byte and that many bytes.
    Bytes = 0x0D,
}

/// Why a value could not be read (the reasons of 10.2, without the offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Malformed {
    /// The bytes end inside the value (or its length byte).
    Truncated,
    /// A `bool` other than 0 or 1, or a `str` that is not UTF-8.
    Invalid,
}

impl Type {
    /// Every type, in tag order.
    pub const ALL: [Type; 13] = [
        Type::Bool,
        Type::U8,
        Type::U16,
        Type::U32,
        Type::U64,
        Type::I8,
        Type::I16,
        Type::I32,
        Type::I64,
        Type::F32,
        Type::F64,
        Type::Str,
        Type::Bytes,
    ];

    /// The type of tag `tag`, if it is one of 10.1's.
    pub const fn from_tag(tag: u8) -> Option<Type> {
        match tag {
            0x01..=0x0D => Some(Type::ALL[tag as usize - 1]),
            _ => None,
        }
    }

    /// Its tag.
    pub const fn tag(self) -> u8 {
        self as u8
    }

    /// Its name in `PROTOCOL.md` (`f32`, `str`).
    pub const fn name(self) -> &'static str {
        match self {
            Type::Bool => "bool",
            Type::U8 => "u8",
            Type::U16 => "u16",
            Type::U32 => "u32",
            Type::U64 => "u64",
            Type::I8 => "i8",
            Type::I16 => "i16",
            Type::I32 => "i32",
            Type::I64 => "i64",
            Type::F32 => "f32",
            Type::F64 => "f64",
            Type::Str => "str",
            Type::Bytes => "bytes",
        }
    }

    /// The type named `name` (`f32`), if any.
    pub fn from_name(name: &str) -> Option<Type> {
        Type::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Reads one value of this type from the start of `bytes`: the value and the bytes it
    /// took (its length byte included).
    pub fn read(self, bytes: &[u8]) -> Result<(Field<'_>, usize), Malformed> {
        fn take<const N: usize>(b: &[u8]) -> Result<[u8; N], Malformed> {
            match b.split_first_chunk::<N>() {
                Some((a, _)) => Ok(*a),
                None => Err(Malformed::Truncated),
            }
        }
        let fixed = |n: usize, f: Field<'static>| Ok((f, n));
        match self {
            Type::Bool => match take::<1>(bytes)? {
                [0] => fixed(1, Field::Bool(false)),
                [1] => fixed(1, Field::Bool(true)),
                _ => Err(Malformed::Invalid),
            },
            Type::U8 => fixed(1, Field::U8(take::<1>(bytes)?[0])),
            Type::U16 => fixed(2, Field::U16(u16::from_le_bytes(take(bytes)?))),
            Type::U32 => fixed(4, Field::U32(u32::from_le_bytes(take(bytes)?))),
            Type::U64 => fixed(8, Field::U64(u64::from_le_bytes(take(bytes)?))),
            Type::I8 => fixed(1, Field::I8(i8::from_le_bytes(take(bytes)?))),
            Type::I16 => fixed(2, Field::I16(i16::from_le_bytes(take(bytes)?))),
            Type::I32 => fixed(4, Field::I32(i32::from_le_bytes(take(bytes)?))),
            Type::I64 => fixed(8, Field::I64(i64::from_le_bytes(take(bytes)?))),
            Type::F32 => fixed(4, Field::F32(f32::from_le_bytes(take(bytes)?))),
            Type::F64 => fixed(8, Field::F64(f64::from_le_bytes(take(bytes)?))),
            Type::Str | Type::Bytes => {
                let (&n, rest) = bytes.split_first().ok_or(Malformed::Truncated)?;
                let v = rest.get(..usize::from(n)).ok_or(Malformed::Truncated)?;
                let f = if self == Type::Str {
                    Field::Str(core::str::from_utf8(v).map_err(|_| Malformed::Invalid)?)
                } else {
                    Field::Bytes(v)
                };
                Ok((f, 1 + v.len()))
            }
        }
    }
}

impl core::fmt::Display for Type {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// One field of a kind: its name, type and optional unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FieldDef<'a> {
    /// `[A-Za-z_][A-Za-z0-9_]*`, 1 to 63 bytes, unique in its kind ignoring ASCII case.
    pub name: &'a str,
    /// Its type.
    pub ty: Type,
    /// Its unit (`°C`, `hPa`): UTF-8, 1 to 255 bytes, no control character.
    pub unit: Option<&'a str>,
}

impl<'a> FieldDef<'a> {
    /// A field without a unit.
    pub const fn new(name: &'a str, ty: Type) -> Self {
        FieldDef {
            name,
            ty,
            unit: None,
        }
    }

    /// The same field with a unit.
    pub const fn unit(self, unit: &'a str) -> Self {
        FieldDef {
            unit: Some(unit),
            ..self
        }
    }
}

/// A record kind as firmware defines it, usually a `const` in flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Kind<'a> {
    /// 0 to 127, unique in the sender's session.
    pub id: u8,
    /// `[A-Za-z_][A-Za-z0-9_]*`, 1 to 63 bytes.
    pub name: &'a str,
    /// Its fields, in the order a record of the kind carries their values.
    pub fields: &'a [FieldDef<'a>],
}

impl<'a> Kind<'a> {
    /// The length of its declaration, bytes.
    pub const fn declaration_len(&self) -> usize {
        let mut n = 3 + 1 + self.name.len();
        let mut i = 0;
        while i < self.fields.len() {
            let f = &self.fields[i];
            n += 1 + 1 + f.name.len();
            if let Some(u) = f.unit {
                n += 1 + u.len();
            }
            i += 1;
        }
        n
    }

    /// Its declaration, encoded and checked at compile time when used in a `const` (the
    /// array's length must be [`Kind::declaration_len`]): an invalid kind (a bad name or
    /// unit, a duplicate field name, an id over 127) fails the build:
    ///
    /// ```compile_fail
    /// use tether_core::record::kind::{FieldDef, Kind, Type};
    /// const BAD: Kind = Kind { id: 0, name: "two words", fields: &[] };
    /// const DECLARATION: [u8; BAD.declaration_len()] = BAD.declaration();
    /// ```
    pub const fn declaration<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        match self.encode(&mut out) {
            Ok(n) if n == N => {}
            _ => panic!("the array's length must be Kind::declaration_len()"),
        }
        if Declaration::parse(&out).is_err() {
            panic!("invalid kind: see PROTOCOL.md 10.5 for names, units and ids");
        }
        out
    }

    /// Encodes its declaration into `buf` (not checked: see [`Kind::declaration`], or
    /// [`Declaration::parse`] the result); its length.
    pub const fn encode(&self, buf: &mut [u8]) -> Result<usize, super::Full> {
        if buf.len() < self.declaration_len() {
            return Err(super::Full);
        }
        buf[0] = TYPED;
        buf[1] = DECLARATION;
        buf[2] = self.id;
        let mut at = put_str(buf, 3, self.name);
        let mut i = 0;
        while i < self.fields.len() {
            let f = &self.fields[i];
            buf[at] = f.ty.tag() | if f.unit.is_some() { HAS_UNIT } else { 0 };
            at = put_str(buf, at + 1, f.name);
            if let Some(u) = f.unit {
                at = put_str(buf, at, u);
            }
            i += 1;
        }
        Ok(at)
    }
}

/// Writes a length byte and `s` at `at` (the caller checked the room and `s.len() < 256`);
/// returns the offset after it.
const fn put_str(buf: &mut [u8], at: usize, s: &str) -> usize {
    let b = s.as_bytes();
    buf[at] = b.len() as u8;
    let mut i = 0;
    while i < b.len() {
        buf[at + 1 + i] = b[i];
        i += 1;
    }
    at + 1 + b.len()
}

/// A declaration read from a record and checked whole (`PROTOCOL.md` 10.5): its kind id,
/// name and fields. A malformed declaration declares nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declaration<'a> {
    id: u8,
    name: &'a str,
    /// The field entries, every one checked.
    entries: &'a [u8],
    count: usize,
}

/// A length byte and that many bytes at the start of `b`: (the bytes, the rest).
const fn counted(b: &[u8]) -> Option<(&[u8], &[u8])> {
    match b.split_first() {
        Some((&n, rest)) if rest.len() >= n as usize => Some(rest.split_at(n as usize)),
        _ => None,
    }
}

/// A kind or field name: `[A-Za-z_][A-Za-z0-9_]*`, 1 to 63 bytes.
const fn is_name(b: &[u8]) -> bool {
    if b.is_empty() || b.len() > MAX_NAME || b[0].is_ascii_digit() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

/// A unit: UTF-8, 1 to 255 bytes, no C0 control character nor DEL.
const fn is_unit(b: &[u8]) -> bool {
    if b.is_empty() || core::str::from_utf8(b).is_err() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] < 0x20 || b[i] == 0x7F {
            return false;
        }
        i += 1;
    }
    true
}

const fn same_name(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if !a[i].eq_ignore_ascii_case(&b[i]) {
            return false;
        }
        i += 1;
    }
    true
}

/// One field entry at the start of `b`, which is at offset `at` of the declaration:
/// (its definition, the rest); names and units are checked, duplicates are not.
const fn entry(b: &[u8], at: usize) -> Result<(FieldDef<'_>, &[u8]), FieldError> {
    let Some((&t, rest)) = b.split_first() else {
        return Err(FieldError::Truncated { at });
    };
    let Some(ty) = Type::from_tag(t & !HAS_UNIT) else {
        return Err(FieldError::UnknownTag { tag: t, at });
    };
    let Some((name, rest)) = counted(rest) else {
        return Err(FieldError::Truncated { at });
    };
    let (unit, rest) = if t & HAS_UNIT != 0 {
        match counted(rest) {
            Some((u, rest)) => (Some(u), rest),
            None => return Err(FieldError::Truncated { at }),
        }
    } else {
        (None, rest)
    };
    let name = match core::str::from_utf8(name) {
        Ok(n) if is_name(n.as_bytes()) => n,
        _ => return Err(FieldError::Invalid { at }),
    };
    let unit = match unit {
        None => None,
        Some(u) => match core::str::from_utf8(u) {
            Ok(u) if is_unit(u.as_bytes()) => Some(u),
            _ => return Err(FieldError::Invalid { at }),
        },
    };
    Ok((FieldDef { name, ty, unit }, rest))
}

impl<'a> Declaration<'a> {
    /// Reads the declaration `record` (`1E 0E …`; any other record is `Invalid` at 0),
    /// checking it whole by the rules and in the order of `PROTOCOL.md` 10.5.
    pub const fn parse(record: &'a [u8]) -> Result<Declaration<'a>, FieldError> {
        let body = match record {
            [TYPED, DECLARATION, body @ ..] => body,
            _ => return Err(FieldError::Invalid { at: 0 }),
        };
        let Some((&id, rest)) = body.split_first() else {
            return Err(FieldError::Truncated { at: 2 });
        };
        if id > MAX_KIND {
            return Err(FieldError::Invalid { at: 2 });
        }
        let Some((name, entries)) = counted(rest) else {
            return Err(FieldError::Truncated { at: 3 });
        };
        let name = match core::str::from_utf8(name) {
            Ok(n) if is_name(n.as_bytes()) => n,
            _ => return Err(FieldError::Invalid { at: 3 }),
        };
        // Each entry is checked, then its name against every earlier one (a declaration is
        // short: quadratic is fine, and needs no memory).
        let start = record.len() - entries.len();
        let mut rest = entries;
        let mut count = 0;
        while !rest.is_empty() {
            let at = record.len() - rest.len();
            let (def, after) = match entry(rest, at) {
                Ok(e) => e,
                Err(e) => return Err(e),
            };
            let (_, mut scan) = record.split_at(start);
            let mut k = 0;
            while k < count {
                let (d, next) = match entry(scan, 0) {
                    Ok(e) => e,
                    Err(e) => return Err(e),
                };
                if same_name(d.name.as_bytes(), def.name.as_bytes()) {
                    return Err(FieldError::Invalid { at });
                }
                scan = next;
                k += 1;
            }
            rest = after;
            count += 1;
        }
        Ok(Declaration {
            id,
            name,
            entries,
            count,
        })
    }

    /// The kind's id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The kind's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// How many fields it has.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it has no field.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Its fields, in order.
    pub fn fields(&self) -> impl Iterator<Item = FieldDef<'a>> + Clone + 'a {
        let mut rest = self.entries;
        core::iter::from_fn(move || {
            // Checked by `parse`: an entry that fails here cannot occur.
            let (def, next) = entry(rest, 0).ok()?;
            rest = next;
            Some(def)
        })
    }

    /// The values of `record`, a record of this kind (its first two bytes are not looked at).
    pub fn values<'r>(&self, record: &'r [u8]) -> Values<'r, impl Iterator<Item = Type> + 'a> {
        Values::new(record, self.fields().map(|f| f.ty))
    }
}

/// Why a record of a kind could not be read (`PROTOCOL.md` 10.6). Offsets are the record's
/// (its marker is byte 0, its first value at byte 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ValueError {
    /// `truncated`: the record ends inside the value that starts at this offset.
    Truncated {
        /// Where the value starts.
        at: usize,
    },
    /// `invalid`: a `bool` other than 0 or 1, or a `str` that is not UTF-8, at this offset.
    Invalid {
        /// Where the value starts.
        at: usize,
    },
    /// `trailing`: bytes after the last declared value, from this offset.
    Trailing {
        /// Where they start.
        at: usize,
    },
}

impl core::fmt::Display for ValueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ValueError::Truncated { at } => write!(f, "record ends inside the value at byte {at}"),
            ValueError::Invalid { at } => write!(f, "invalid value at byte {at}"),
            ValueError::Trailing { at } => {
                write!(f, "bytes after the last declared value, from byte {at}")
            }
        }
    }
}

impl core::error::Error for ValueError {}

/// The values of a record of a kind, read with the types its declaration gives: every
/// declared value in order, then an error if bytes are left; reading stops at the first
/// error, and the values before it stand.
#[derive(Debug, Clone)]
pub struct Values<'r, I> {
    rest: &'r [u8],
    at: usize,
    types: I,
    done: bool,
}

impl<'r, I: Iterator<Item = Type>> Values<'r, I> {
    /// The values of `record` (its first two bytes, the marker and the kind, skipped) as
    /// `types` says.
    pub fn new(record: &'r [u8], types: I) -> Self {
        Values {
            rest: record.get(2..).unwrap_or_default(),
            at: 2,
            types,
            done: false,
        }
    }
}

impl<'r, I: Iterator<Item = Type>> Iterator for Values<'r, I> {
    type Item = Result<Field<'r>, ValueError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let at = self.at;
        let Some(ty) = self.types.next() else {
            self.done = true;
            return (!self.rest.is_empty()).then_some(Err(ValueError::Trailing { at }));
        };
        match ty.read(self.rest) {
            Ok((f, n)) => {
                self.rest = &self.rest[n..];
                self.at += n;
                Some(Ok(f))
            }
            Err(e) => {
                self.done = true;
                Some(Err(match e {
                    Malformed::Truncated => ValueError::Truncated { at },
                    Malformed::Invalid => ValueError::Invalid { at },
                }))
            }
        }
    }
}

/// A value could not be added to a record of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WriteError {
    /// The buffer is full: the value was not added.
    Full,
    /// The kind declares another type for field `field`, or has no such field.
    Mismatch {
        /// The field (0 is the first).
        field: usize,
    },
    /// [`KindWriter::finish`]: fields from this one on were not written.
    Incomplete {
        /// The first field missing.
        field: usize,
    },
}

impl core::fmt::Display for WriteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            WriteError::Full => f.write_str("record buffer full"),
            WriteError::Mismatch { field } => {
                write!(f, "field {field} of the kind has another type, or none")
            }
            WriteError::Incomplete { field } => write!(f, "field {field} was not written"),
        }
    }
}

impl core::error::Error for WriteError {}

/// Builds a record of a kind in a caller's buffer: the values in the declared order, each
/// checked against the field's type. Methods chain; a value refused leaves the record as
/// it was.
#[derive(Debug)]
pub struct KindWriter<'b, 'k> {
    buf: &'b mut [u8],
    len: usize,
    kind: &'k Kind<'k>,
    next: usize,
}

impl<'b, 'k> KindWriter<'b, 'k> {
    /// Starts a record of `kind` in `buf` (writes its two-byte header if there is room).
    pub fn new(kind: &'k Kind<'k>, buf: &'b mut [u8]) -> Self {
        let len = match buf {
            [a, b, ..] => {
                *a = TYPED;
                *b = KIND | (kind.id & MAX_KIND);
                2
            }
            _ => 0,
        };
        KindWriter {
            buf,
            len,
            kind,
            next: 0,
        }
    }

    fn put(&mut self, ty: Type, len: Option<u8>, value: &[u8]) -> Result<&mut Self, WriteError> {
        match self.kind.fields.get(self.next) {
            Some(f) if f.ty == ty => {}
            _ => return Err(WriteError::Mismatch { field: self.next }),
        }
        let need = usize::from(len.is_some()) + value.len();
        if self.len == 0 || self.buf.len() - self.len < need {
            return Err(WriteError::Full);
        }
        if let Some(n) = len {
            self.buf[self.len] = n;
            self.len += 1;
        }
        self.buf[self.len..self.len + value.len()].copy_from_slice(value);
        self.len += value.len();
        self.next += 1;
        Ok(self)
    }

    /// Adds a `bool`.
    pub fn bool(&mut self, v: bool) -> Result<&mut Self, WriteError> {
        self.put(Type::Bool, None, &[u8::from(v)])
    }
    /// Adds a `u8`.
    pub fn u8(&mut self, v: u8) -> Result<&mut Self, WriteError> {
        self.put(Type::U8, None, &[v])
    }
    /// Adds a `u16`.
    pub fn u16(&mut self, v: u16) -> Result<&mut Self, WriteError> {
        self.put(Type::U16, None, &v.to_le_bytes())
    }
    /// Adds a `u32`.
    pub fn u32(&mut self, v: u32) -> Result<&mut Self, WriteError> {
        self.put(Type::U32, None, &v.to_le_bytes())
    }
    /// Adds a `u64`.
    pub fn u64(&mut self, v: u64) -> Result<&mut Self, WriteError> {
        self.put(Type::U64, None, &v.to_le_bytes())
    }
    /// Adds an `i8`.
    pub fn i8(&mut self, v: i8) -> Result<&mut Self, WriteError> {
        self.put(Type::I8, None, &v.to_le_bytes())
    }
    /// Adds an `i16`.
    pub fn i16(&mut self, v: i16) -> Result<&mut Self, WriteError> {
        self.put(Type::I16, None, &v.to_le_bytes())
    }
    /// Adds an `i32`.
    pub fn i32(&mut self, v: i32) -> Result<&mut Self, WriteError> {
        self.put(Type::I32, None, &v.to_le_bytes())
    }
    /// Adds an `i64`.
    pub fn i64(&mut self, v: i64) -> Result<&mut Self, WriteError> {
        self.put(Type::I64, None, &v.to_le_bytes())
    }
    /// Adds an `f32`.
    pub fn f32(&mut self, v: f32) -> Result<&mut Self, WriteError> {
        self.put(Type::F32, None, &v.to_le_bytes())
    }
    /// Adds an `f64`.
    pub fn f64(&mut self, v: f64) -> Result<&mut Self, WriteError> {
        self.put(Type::F64, None, &v.to_le_bytes())
    }
    /// Adds a string of at most 255 bytes (longer is refused with [`WriteError::Full`]).
    pub fn str(&mut self, v: &str) -> Result<&mut Self, WriteError> {
        let n = u8::try_from(v.len()).map_err(|_| WriteError::Full)?;
        self.put(Type::Str, Some(n), v.as_bytes())
    }
    /// Adds up to 255 raw bytes (longer is refused with [`WriteError::Full`]).
    pub fn bytes(&mut self, v: &[u8]) -> Result<&mut Self, WriteError> {
        let n = u8::try_from(v.len()).map_err(|_| WriteError::Full)?;
        self.put(Type::Bytes, Some(n), v)
    }
    /// Adds `v`, whatever its type (for code that writes fields it holds as [`Field`]s).
    pub fn field(&mut self, v: Field<'_>) -> Result<&mut Self, WriteError> {
        match v {
            Field::Bool(v) => self.bool(v),
            Field::U8(v) => self.u8(v),
            Field::U16(v) => self.u16(v),
            Field::U32(v) => self.u32(v),
            Field::U64(v) => self.u64(v),
            Field::I8(v) => self.i8(v),
            Field::I16(v) => self.i16(v),
            Field::I32(v) => self.i32(v),
            Field::I64(v) => self.i64(v),
            Field::F32(v) => self.f32(v),
            Field::F64(v) => self.f64(v),
            Field::Str(v) => self.str(v),
            Field::Bytes(v) => self.bytes(v),
        }
    }

    /// The record, once every field of the kind has its value.
    pub fn finish(&self) -> Result<&[u8], WriteError> {
        if self.len == 0 {
            return Err(WriteError::Full);
        }
        if self.next < self.kind.fields.len() {
            return Err(WriteError::Incomplete { field: self.next });
        }
        Ok(&self.buf[..self.len])
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec::Vec;

    const ENV: Kind = Kind {
        id: 3,
        name: "env",
        fields: &[
            FieldDef::new("counter", Type::U32),
            FieldDef::new("temperature", Type::F32).unit("°C"),
            FieldDef::new("label", Type::Str),
            FieldDef::new("ok", Type::Bool),
        ],
    };
    const ENV_DECLARATION: [u8; ENV.declaration_len()] = ENV.declaration();

    #[test]
    fn a_const_kind_declares_and_its_records_read_back() {
        let d = Declaration::parse(&ENV_DECLARATION).unwrap();
        assert_eq!((d.id(), d.name(), d.len()), (3, "env", 4));
        assert_eq!(d.fields().collect::<Vec<_>>(), ENV.fields);
        let mut buf = [0u8; 32];
        let mut w = KindWriter::new(&ENV, &mut buf);
        w.u32(7).unwrap().f32(-0.5).unwrap().str("a").unwrap();
        assert_eq!(w.finish(), Err(WriteError::Incomplete { field: 3 }));
        assert_eq!(w.u8(1).err(), Some(WriteError::Mismatch { field: 3 }));
        w.bool(true).unwrap();
        assert_eq!(w.bool(true).err(), Some(WriteError::Mismatch { field: 4 }));
        let r = w.finish().unwrap();
        assert_eq!(r[..2], [0x1E, 0x83]);
        let v: Vec<_> = d.values(r).collect();
        assert_eq!(
            v,
            [
                Ok(Field::U32(7)),
                Ok(Field::F32(-0.5)),
                Ok(Field::Str("a")),
                Ok(Field::Bool(true))
            ]
        );
        // Cut, damaged, and too long.
        let cut: Vec<_> = d.values(&r[..r.len() - 1]).collect();
        assert_eq!(cut.last(), Some(&Err(ValueError::Truncated { at: 12 })));
        let mut bad = r.to_vec();
        *bad.last_mut().unwrap() = 2;
        assert_eq!(
            d.values(&bad).last(),
            Some(Err(ValueError::Invalid { at: 12 }))
        );
        let mut long = r.to_vec();
        long.push(0);
        assert_eq!(
            d.values(&long).last(),
            Some(Err(ValueError::Trailing { at: 13 }))
        );
    }

    #[test]
    fn a_full_buffer_refuses_the_value_and_keeps_the_record() {
        let mut buf = [0u8; 7];
        let mut w = KindWriter::new(&ENV, &mut buf);
        w.u32(1).unwrap();
        assert_eq!(w.f32(1.0).err(), Some(WriteError::Full));
        assert_eq!(w.next, 1);
        let mut tiny = [0u8; 1];
        assert_eq!(
            KindWriter::new(&ENV, &mut tiny).finish(),
            Err(WriteError::Full)
        );
    }

    #[test]
    fn declarations_are_checked_in_the_order_of_the_spec() {
        let bad = |b: &[u8]| Declaration::parse(b).unwrap_err();
        assert_eq!(bad(&[0x1E, 0x0E]), FieldError::Truncated { at: 2 });
        assert_eq!(
            bad(&[0x1E, 0x0E, 0x80, 1, b'a']),
            FieldError::Invalid { at: 2 }
        );
        assert_eq!(
            bad(&[0x1E, 0x0E, 0, 2, b'a']),
            FieldError::Truncated { at: 3 }
        );
        assert_eq!(bad(&[0x1E, 0x0E, 0, 0]), FieldError::Invalid { at: 3 });
        assert_eq!(
            bad(&[0x1E, 0x0E, 0, 1, b'9']),
            FieldError::Invalid { at: 3 }
        );
        let head = [0x1E, 0x0E, 0, 1, b'k'];
        let with = |entries: &[u8]| {
            let mut v = head.to_vec();
            v.extend_from_slice(entries);
            Declaration::parse(&v).map(|d| d.len())
        };
        assert_eq!(with(&[]), Ok(0));
        assert_eq!(
            with(&[0x0E, 1, b'a']),
            Err(FieldError::UnknownTag { tag: 0x0E, at: 5 })
        );
        assert_eq!(
            with(&[0x42, 1, b'a']),
            Err(FieldError::UnknownTag { tag: 0x42, at: 5 })
        );
        assert_eq!(
            with(&[0x80, 1, b'a']),
            Err(FieldError::UnknownTag { tag: 0x80, at: 5 })
        );
        assert_eq!(with(&[0x02]), Err(FieldError::Truncated { at: 5 }));
        assert_eq!(with(&[0x82, 1, b'a']), Err(FieldError::Truncated { at: 5 }));
        assert_eq!(
            with(&[0x82, 1, b'a', 0]),
            Err(FieldError::Invalid { at: 5 })
        );
        assert_eq!(
            with(&[0x82, 1, b'a', 1, 0x7F]),
            Err(FieldError::Invalid { at: 5 })
        );
        assert_eq!(
            with(&[0x82, 1, b'a', 1, 0xFF]),
            Err(FieldError::Invalid { at: 5 })
        );
        assert_eq!(with(&[0x02, 1, b'-']), Err(FieldError::Invalid { at: 5 }));
        assert_eq!(
            with(&[0x02, 1, b'a', 0x03, 1, b'A']),
            Err(FieldError::Invalid { at: 8 })
        );
        assert_eq!(with(&[0x02, 1, b'a', 0x83, 1, b'b', 1, b'%']), Ok(2));
        assert_eq!(bad(&[0x1E, 0x02]), FieldError::Invalid { at: 0 });
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_]{0,20}"
    }

    fn defs() -> impl Strategy<Value = Vec<(String, Type, Option<String>)>> {
        prop::collection::vec(
            (
                name(),
                prop::sample::select(Type::ALL.to_vec()),
                prop::option::of("[^\\x00-\\x1f\\x7f]{1,12}"),
            ),
            0..10,
        )
        .prop_map(|mut v| {
            // Unique names, ignoring case.
            let mut seen = std::collections::BTreeSet::new();
            v.retain(|(n, _, _)| seen.insert(n.to_ascii_lowercase()));
            v
        })
    }

    proptest! {
        #[test]
        fn any_valid_kind_declares_and_reads_back(id in 0u8..=127, kname in name(), fields in defs()) {
            let defs: Vec<FieldDef<'_>> = fields.iter().map(|(n, t, u)| FieldDef { name: n, ty: *t, unit: u.as_deref() }).collect();
            let k = Kind { id, name: &kname, fields: &defs };
            let mut buf = std::vec![0u8; k.declaration_len()];
            prop_assert_eq!(k.encode(&mut buf), Ok(buf.len()));
            let d = Declaration::parse(&buf).unwrap();
            prop_assert_eq!((d.id(), d.name()), (id, kname.as_str()));
            prop_assert_eq!(d.fields().collect::<Vec<_>>(), defs.clone());
            let n = buf.len();
            prop_assert!(k.encode(&mut buf[..n - 1]).is_err());
        }

        #[test]
        fn arbitrary_declarations_and_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..80), types in prop::collection::vec(prop::sample::select(Type::ALL.to_vec()), 0..8)) {
            let mut decl = std::vec![0x1E, 0x0E];
            decl.extend(&bytes);
            if let Ok(d) = Declaration::parse(&decl) {
                // What it says, encoded again, is the record.
                let defs: Vec<_> = d.fields().collect();
                let k = Kind { id: d.id(), name: d.name(), fields: &defs };
                let mut again = std::vec![0u8; k.declaration_len()];
                k.encode(&mut again).unwrap();
                prop_assert_eq!(again, decl);
            }
            let mut rec = std::vec![0x1E, 0x80];
            rec.extend(&bytes);
            let got: Vec<_> = Values::new(&rec, types.iter().copied()).collect();
            let errors = got.iter().filter(|r| r.is_err()).count();
            prop_assert!(errors <= 1);
            prop_assert!(errors == 0 || got.last().unwrap().is_err());
            prop_assert!(got.len() <= types.len() + 1);
        }
    }
}
