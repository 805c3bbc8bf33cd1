//! Record kinds at the host (`PROTOCOL.md` 10.5 to 10.7): what each device declared, kept
//! with the batch that wrote it, and how its records read.
//!
//! A sink learns a device's kinds from its declarations as it writes them ([`Kinds::see`]),
//! and keeps them with its records: a declaration written in a batch that fails is
//! forgotten with the batch ([`Kinds::rollback`]), so that the sink never reads a record with
//! a declaration it does not hold. At start a sink reads them back from what it wrote
//! (10.7: acknowledged declarations are never sent again).

use std::collections::HashMap;
use std::sync::Arc;

use tether_core::record::kind::{Declaration, Type, ValueError, Values};
use tether_core::record::{Field, FieldError, Record};

/// The columns every row starts with, in `--csv-dir` files and database tables.
pub const FIXED: [&str; 4] = ["host_time", "device", "session", "seq"];

/// One declared field, owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// Its name in the declaration.
    pub name: String,
    /// Its type.
    pub ty: Type,
    /// Its unit, if declared.
    pub unit: Option<String>,
    /// The name a table or a file gives it: the declared name, with `_` appended while it
    /// is one of the fixed columns ([`FIXED`]) or an earlier column's, ignoring ASCII case.
    pub column: String,
}

/// A declared kind, owned: what a sink keeps of a declaration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema {
    /// The kind's id in the device's session.
    pub id: u8,
    /// The kind's name.
    pub name: String,
    /// Its fields, in order.
    pub columns: Vec<Column>,
    /// The declaration's bytes, as received.
    pub declaration: Vec<u8>,
}

impl Schema {
    /// The schema a declaration record declares.
    pub fn parse(record: &[u8]) -> Result<Schema, FieldError> {
        Declaration::parse(record).map(|d| Schema::of(&d, record))
    }

    fn of(d: &Declaration<'_>, record: &[u8]) -> Schema {
        let mut columns: Vec<Column> = Vec::with_capacity(d.len());
        for f in d.fields() {
            let mut column = f.name.to_owned();
            while FIXED.iter().any(|c| c.eq_ignore_ascii_case(&column))
                || columns
                    .iter()
                    .any(|c| c.column.eq_ignore_ascii_case(&column))
            {
                column.push('_');
            }
            columns.push(Column {
                name: f.name.to_owned(),
                ty: f.ty,
                unit: f.unit.map(str::to_owned),
                column,
            });
        }
        Schema {
            id: d.id(),
            name: d.name().to_owned(),
            columns,
            declaration: record.to_vec(),
        }
    }

    /// The declaration without its kind id (which only numbers the kind in one session):
    /// two devices, or two sessions, that declare this are the same schema.
    pub fn shape(&self) -> &[u8] {
        self.declaration.get(3..).unwrap_or_default()
    }

    /// A short, stable name for the shape: the CRC-32C of [`Schema::shape`] in hex.
    pub fn fingerprint(&self) -> String {
        format!("{:08x}", tether_core::frame::crc32c(self.shape()))
    }

    /// For people: `env: counter u32, time u32 ms, temperature f32 °C`.
    pub fn describe(&self) -> String {
        let fields: Vec<String> = self
            .columns
            .iter()
            .map(|c| match &c.unit {
                Some(u) => format!("{} {} {u}", c.name, c.ty),
                None => format!("{} {}", c.name, c.ty),
            })
            .collect();
        if fields.is_empty() {
            format!("{}: no fields", self.name)
        } else {
            format!("{}: {}", self.name, fields.join(", "))
        }
    }

    /// The header names of its columns in a CSV file: the column, then the unit in
    /// parentheses (`temperature (°C)`).
    pub fn headers(&self) -> impl Iterator<Item = String> + '_ {
        self.columns.iter().map(|c| match &c.unit {
            Some(u) => format!("{} ({u})", c.column),
            None => c.column.clone(),
        })
    }

    /// The values of `record`, a record of this kind.
    pub fn values<'r>(
        &self,
        record: &'r [u8],
    ) -> Values<'r, impl Iterator<Item = Type> + Clone + '_> {
        Values::new(record, self.columns.iter().map(|c| c.ty))
    }
}

/// What a record is to a sink that knows the device's kinds.
#[derive(Debug)]
pub enum Classified<'a> {
    /// A declaration that declares `Schema` (not yet seen: [`Kinds::see`] it).
    Declaration(Schema),
    /// A record of a kind the device declared, its values read whole.
    Kind(Arc<Schema>, Vec<Field<'a>>),
    /// Anything else: fields, text, binary, and the new shapes that cannot be read (a
    /// malformed declaration, an undeclared kind, a record that does not read with its
    /// declaration): see [`Other`].
    Other(Other<'a>),
}

/// A record a sink writes as fields without names (the CSV's `field_N`).
#[derive(Debug)]
pub enum Other<'a> {
    /// Fields (10.1), text or binary: `crate::sink::render_fields`'s rules.
    Plain,
    /// A declaration that declares nothing: `<malformed declaration (REASON): HEX>`.
    MalformedDeclaration(FieldError),
    /// A record of a kind the device did not declare: `<record of undeclared kind K: HEX>`.
    Undeclared(u8),
    /// A record of a declared kind that does not read with its declaration: the values read,
    /// then `<record of kind NAME: REASON>`.
    Mismatch(Arc<Schema>, Vec<Field<'a>>, ValueError),
}

impl Other<'_> {
    /// The texts of the fields of `payload`, which this classifies, as the CSV writes them.
    pub fn texts(&self, payload: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Other::Plain => crate::sink::render_fields(payload, &mut out),
            Other::MalformedDeclaration(e) => {
                out.push(format!("<malformed declaration ({e}): {}>", hex(payload)))
            }
            Other::Undeclared(k) => {
                out.push(format!("<record of undeclared kind {k}: {}>", hex(payload)))
            }
            Other::Mismatch(schema, values, e) => {
                out.extend(values.iter().map(text));
                out.push(format!("<record of kind {}: {e}>", schema.name));
            }
        }
        out
    }
}

/// A value as the CSV writes it: numbers in decimal, floats in their shortest exact form,
/// `true`/`false`, bytes in lowercase hex, strings with the CSV's `<` rule (one more `<` in
/// front of one that begins with `<`).
pub fn text(f: &Field<'_>) -> String {
    match *f {
        Field::Bool(v) => v.to_string(),
        Field::U8(v) => v.to_string(),
        Field::U16(v) => v.to_string(),
        Field::U32(v) => v.to_string(),
        Field::U64(v) => v.to_string(),
        Field::I8(v) => v.to_string(),
        Field::I16(v) => v.to_string(),
        Field::I32(v) => v.to_string(),
        Field::I64(v) => v.to_string(),
        Field::F32(v) => v.to_string(),
        Field::F64(v) => v.to_string(),
        Field::Str(v) if v.starts_with('<') => format!("<{v}"),
        Field::Str(v) => v.to_owned(),
        Field::Bytes(v) => hex(v),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A device and a kind id.
type Key = (u32, u8);

/// Each device's declared kinds, and the undo of the open batch.
#[derive(Debug, Default)]
pub struct Kinds {
    kinds: HashMap<Key, Arc<Schema>>,
    /// What the open batch replaced, oldest first: undone in reverse at a rollback.
    undo: Vec<(Key, Option<Arc<Schema>>)>,
}

impl Kinds {
    /// What `payload`, a record of `device`, is.
    pub fn classify<'a>(&self, device: u32, payload: &'a [u8]) -> Classified<'a> {
        match Record::parse(payload) {
            Record::Declaration(Ok(d)) => Classified::Declaration(Schema::of(&d, payload)),
            Record::Declaration(Err(e)) => Classified::Other(Other::MalformedDeclaration(e)),
            Record::Kind { id, record } => match self.kinds.get(&(device, id)) {
                None => Classified::Other(Other::Undeclared(id)),
                Some(schema) => {
                    let mut values = Vec::with_capacity(schema.columns.len());
                    for v in schema.values(record) {
                        match v {
                            Ok(v) => values.push(v),
                            Err(e) => {
                                return Classified::Other(Other::Mismatch(
                                    schema.clone(),
                                    values,
                                    e,
                                ))
                            }
                        }
                    }
                    Classified::Kind(schema.clone(), values)
                }
            },
            Record::Fields(_) | Record::Text(_) => Classified::Other(Other::Plain),
        }
    }

    /// The kind `id` of `device`, if declared.
    pub fn get(&self, device: u32, id: u8) -> Option<&Arc<Schema>> {
        self.kinds.get(&(device, id))
    }

    /// `device` declared `schema` in the open batch: it applies to the records after it. The
    /// same declaration again changes nothing. Returns the schema as kept.
    pub fn see(&mut self, device: u32, schema: Schema) -> Arc<Schema> {
        let key = (device, schema.id);
        if let Some(same) = self.kinds.get(&key).filter(|s| ***s == schema) {
            return same.clone();
        }
        let schema = Arc::new(schema);
        let old = self.kinds.insert(key, schema.clone());
        self.undo.push((key, old));
        schema
    }

    /// The open batch is durable: what it declared stays.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// The open batch is gone: what it declared is forgotten.
    pub fn rollback(&mut self) {
        while let Some((key, old)) = self.undo.pop() {
            match old {
                Some(s) => self.kinds.insert(key, s),
                None => self.kinds.remove(&key),
            };
        }
    }

    /// Declarations read back at start (in the order they were written: the later wins).
    pub fn restore(&mut self, device: u32, schema: Schema) {
        self.kinds.insert((device, schema.id), Arc::new(schema));
    }

    /// How many kinds are known, all devices.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::record::kind::{FieldDef, Kind, KindWriter};

    const K: Kind = Kind {
        id: 4,
        name: "env",
        fields: &[
            FieldDef::new("seq", Type::U32),
            FieldDef::new("Seq_", Type::U8),
            FieldDef::new("t", Type::F32).unit("°C"),
        ],
    };
    const D: [u8; K.declaration_len()] = K.declaration();

    fn record(a: u32, b: u8, t: f32) -> Vec<u8> {
        let mut buf = [0u8; 32];
        let mut w = KindWriter::new(&K, &mut buf);
        w.u32(a).unwrap().u8(b).unwrap().f32(t).unwrap();
        w.finish().unwrap().to_vec()
    }

    #[test]
    fn columns_never_clash_with_the_fixed_ones_or_each_other() {
        let s = Schema::parse(&D).unwrap();
        let cols: Vec<&str> = s.columns.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(cols, ["seq_", "Seq__", "t"]);
        assert_eq!(s.headers().collect::<Vec<_>>(), ["seq_", "Seq__", "t (°C)"]);
        assert_eq!(s.describe(), "env: seq u32, Seq_ u8, t f32 °C");
        assert_eq!(s.shape(), &D[3..]);
    }

    #[test]
    fn a_declaration_holds_from_its_batch_on_and_goes_with_it() {
        let mut k = Kinds::default();
        let r = record(1, 2, 20.5);
        assert!(matches!(
            k.classify(7, &r),
            Classified::Other(Other::Undeclared(4))
        ));
        let Classified::Declaration(s) = k.classify(7, &D) else {
            panic!()
        };
        k.see(7, s);
        let Classified::Kind(s, v) = k.classify(7, &r) else {
            panic!()
        };
        assert_eq!(s.name, "env");
        assert_eq!(v, [Field::U32(1), Field::U8(2), Field::F32(20.5)]);
        // Another device did not declare it.
        assert!(matches!(
            k.classify(8, &r),
            Classified::Other(Other::Undeclared(4))
        ));
        k.rollback();
        assert!(k.get(7, 4).is_none(), "rolled back with its batch");
        let Classified::Declaration(s) = k.classify(7, &D) else {
            panic!()
        };
        k.see(7, s);
        k.commit();
        k.rollback();
        assert!(k.get(7, 4).is_some(), "committed: it stays");
        // A record that does not read: the values before, then the reason.
        let cut = &r[..r.len() - 1];
        let Classified::Other(o) = k.classify(7, cut) else {
            panic!()
        };
        assert_eq!(
            o.texts(cut),
            [
                "1",
                "2",
                "<record of kind env: record ends inside the value at byte 7>"
            ]
        );
        let Classified::Other(o) = k.classify(7, &[0x1E, 0x0E, 0]) else {
            panic!()
        };
        assert_eq!(
            o.texts(&[0x1E, 0x0E, 0]),
            ["<malformed declaration (record ends inside the field at byte 3): 1e0e00>"]
        );
    }
}
