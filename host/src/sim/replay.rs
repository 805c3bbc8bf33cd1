//! `tether sim --replay PATH`: a recorded stream sent again, as one or many devices, through
//! the same fault injector as `tether sim`, at its recorded pace or faster.
//!
//! # What is replayed
//!
//! [`Stream::load`] reads a directory as `--csv-dir`'s, a file whose first byte that is not
//! white space is `{` as JSON lines, and any other file as a single Tether CSV (which begins
//! with its header, `host_time,…`): the content decides, not the file's name.
//!
//! * A directory written by `tether listen --csv-dir DIR` ([`Stream::from_csv_dir`]): one
//!   device's declarations (`tether-kinds.csv`, the `declaration` column's bytes) first, in
//!   their seq order, then its other records merged in seq order: its records of those kinds
//!   (the kinds' files, `NAME.csv`), each encoded again as a record of its declared kind
//!   with the values read by their declared types, and its rows of `tether-records.csv`,
//!   each as a text record (see below); the listener on the other side writes the same
//!   values under the same columns. Marker rows are skipped. The device is the first in
//!   `tether-kinds.csv` (if it has none, in `tether-records.csv`) unless named; of a device
//!   with several numberings (its `session` column), the lowest.
//! * A JSON lines file written by `tether listen --sink jsonl:FILE` ([`Stream::from_jsonl`]):
//!   one device's records (the first line's device unless named; of several numberings, the
//!   lowest `session`), declarations first (their `declaration` key's bytes) in seq order,
//!   then the others in seq order: a record of a declared kind (`"kind":NAME`) encoded again
//!   as a record of the kind the device last declared under that name, its values (the
//!   declared fields' keys) by their declared types; any other record (`field_1`, …) as a
//!   text record of those fields. Markers (no `seq`) and a torn last line are skipped.
//! * A single Tether CSV file (`tether listen --csv FILE`, [`Stream::from_csv`]): one device's
//!   rows (the first row's device unless named; marker rows skipped), each a text record of
//!   its fields. A single CSV has no types: a typed field comes back as text.
//!
//! A text record is made of a row's `field_1`, … as `tether send` sends a line: the fields
//! joined by commas, a field quoted (RFC 4180) if it holds a comma, a quote or a line end,
//! the CSV's extra `<` in front of a text beginning with `<` taken off; so the listener
//! writes the same fields. Fields without a declaration (typed, undeclared) come back as
//! text. A record the CSV shows by its bytes in hex (`<binary …>`, `<record of undeclared
//! kind …: …>`, `<malformed declaration …: …>`) is sent as those bytes; a row with another
//! `<…>` field (a malformed field, a record not matching its declaration) is skipped, with a
//! warning. A device with nothing but declarations to replay is an error.
//!
//! # Timing
//!
//! A record is sent at its recorded `host_time` after the first record's, divided by the
//! speed ([`Speed`]); never before the record before it. The listener's clock is what
//! recorded the times, so batching on the recording link shows in them.
//!
//! # Devices
//!
//! Replayed device `i` has the identity [`super::device_identity`]`(seed, i)`, as `tether
//! sim`'s do, and its own seeded fault injectors; the connection cuts are spread over the
//! devices and over each device's records. Each drives a [`tether_core::link::Link`] client
//! directly over TCP (not the firmware-sim device model, whose records come from its
//! simulated sensor). Commands the listener sends them are released unanswered: a recording
//! holds no replies to replay.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_core::link::{Config, Event, Link, LinkStorage, Role, SendError};
use tether_core::record::kind::{FieldDef, Kind, KindWriter, Type};
use tether_core::record::Field;
use tether_firmware_sim::fault::{FaultConfig, FaultInjector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::{device_identity, Faults, SimSummary};
use crate::clock::Clock;
use crate::endpoint::Endpoint;
use crate::sink::csv_dir::{KINDS_FILE, RECORDS_FILE};
use crate::sink::kinds::Schema;

/// A replayed device's link: 16 records in flight, records up to about 1 KiB (the
/// listener's default `--max-record` is 1024 bytes).
type ReplayLink = Link<LinkStorage<16, 16, 1100>>;

/// Why a recorded stream cannot be read or replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayError(pub String);

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReplayError {}

fn err(msg: impl Into<String>) -> ReplayError {
    ReplayError(msg.into())
}

/// How fast to replay: `1` the recorded pace, `10` ten times faster, `max` as fast as the
/// link allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// The recorded spacing divided by this (greater than 0).
    Times(f64),
    /// No waiting.
    Max,
}

impl std::str::FromStr for Speed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "max" {
            return Ok(Speed::Max);
        }
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(Speed::Times(x)),
            _ => Err(format!(
                "`{s}` is not a speed: a number above 0 (10 = ten times faster) or `max`"
            )),
        }
    }
}

/// One record of a recorded stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// When the recording listener wrote it; `None` for a declaration (sent first, at once).
    pub at: Option<SystemTime>,
    /// The record, as the device sends it.
    pub payload: Vec<u8>,
}

/// A recorded device's stream, ready to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    /// The recorded device (its id as the CSV writes it: 8 hex digits).
    pub device: String,
    /// Its declarations then its records, in order.
    pub records: Vec<Recorded>,
}

impl Stream {
    /// A directory written by `--csv-dir`, a JSON lines file (`--sink jsonl:FILE`) or a
    /// single `--csv` file, whichever `path` is: a directory is read as `--csv-dir`'s, a
    /// file whose first byte that is not white space is `{` as JSON lines, any other file as
    /// a Tether CSV (which begins with its header, `host_time,…`).
    pub fn load(path: &Path, device: Option<&str>) -> Result<Stream, ReplayError> {
        if path.is_dir() {
            Stream::from_csv_dir(path, device)
        } else if is_json_lines(path)? {
            Stream::from_jsonl(path, device)
        } else {
            Stream::from_csv(path, device)
        }
    }

    /// Declarations, records of kinds and text records of `device` (or the first device) in
    /// a `--csv-dir` directory: see the [module documentation](self).
    pub fn from_csv_dir(dir: &Path, device: Option<&str>) -> Result<Stream, ReplayError> {
        let kinds_path = dir.join(KINDS_FILE);
        let records_path = dir.join(RECORDS_FILE);
        if !kinds_path.exists() && !records_path.exists() {
            return Err(err(format!(
                "{}: not a --csv-dir directory: it has neither {KINDS_FILE} nor {RECORDS_FILE}",
                dir.display()
            )));
        }
        let optional = |path: &Path| {
            if path.exists() {
                read_rows(path)
            } else {
                Ok(Vec::new())
            }
        };
        let rows = optional(&kinds_path)?;
        // Rows of tether-records.csv with a device and a seq (not a marker row, not a raw
        // peer's chunk).
        let texts: Vec<Vec<String>> = optional(&records_path)?
            .into_iter()
            .filter(|r| r.len() >= 4 && !r[3].is_empty() && is_device(&r[1]))
            .collect();
        let pick = |row: &[String]| device.is_none_or(|d| row[1].eq_ignore_ascii_case(d));
        let chosen = rows
            .iter()
            .filter(|r| r.len() >= 9)
            .chain(texts.iter())
            .find(|r| pick(r))
            .map(|r| r[1].clone())
            .ok_or_else(|| match device {
                Some(d) => err(format!("{}: no records of device {d}", dir.display())),
                None => err(format!("{}: no records", dir.display())),
            })?;
        let session = rows
            .iter()
            .filter(|r| r.len() >= 9)
            .chain(texts.iter())
            .filter(|r| r[1] == chosen)
            .filter_map(|r| r[2].parse::<u32>().ok())
            .min()
            .unwrap_or(0)
            .to_string();
        // seq, the record; the kinds' files and their schemas.
        let mut records: Vec<(u64, Recorded)> = Vec::new();
        let mut files: HashMap<String, Schema> = HashMap::new();
        for r in rows.iter().filter(|r| r.len() >= 9) {
            if r[1] != chosen || r[2] != session {
                continue;
            }
            let seq = parse_seq(&r[3], &kinds_path)?;
            let bytes = unhex(&r[8]).ok_or_else(|| {
                err(format!(
                    "{}: seq {seq}: declaration not in hex",
                    kinds_path.display()
                ))
            })?;
            let schema = Schema::parse(&bytes).map_err(|e| {
                err(format!(
                    "{}: seq {seq}: malformed declaration: {e}",
                    kinds_path.display()
                ))
            })?;
            files.insert(r[6].clone(), schema);
            records.push((
                seq,
                Recorded {
                    at: None,
                    payload: bytes,
                },
            ));
        }
        let declarations = records.len();
        let mut names: Vec<&String> = files.keys().collect();
        names.sort();
        for name in names {
            let schema = &files[name];
            let path = dir.join(name);
            let rows = match read_rows(&path) {
                Ok(rows) => rows,
                // A kind declared and never used has no file.
                Err(_) if !path.exists() => continue,
                Err(e) => return Err(e),
            };
            for r in rows.iter().filter(|r| r.len() >= 4) {
                if r[1] != chosen || r[2] != session {
                    continue;
                }
                let seq = parse_seq(&r[3], &path)?;
                let payload = encode(schema, &r[4..])
                    .map_err(|e| err(format!("{}: seq {seq}: {e}", path.display())))?;
                records.push((
                    seq,
                    Recorded {
                        at: Some(parse_time(&r[0], &path, seq)?),
                        payload,
                    },
                ));
            }
        }
        let mut skipped = 0usize;
        for r in &texts {
            if r[1] != chosen || r[2] != session {
                continue;
            }
            let seq = parse_seq(&r[3], &records_path)?;
            let Some(payload) = text_record(&r[4..]) else {
                skipped += 1;
                continue;
            };
            records.push((
                seq,
                Recorded {
                    at: Some(parse_time(&r[0], &records_path, seq)?),
                    payload,
                },
            ));
        }
        if skipped > 0 {
            warn!(
                "{}: {skipped} rows of device {chosen} not replayed: records that could not be \
                 read whole (a malformed field, a record not matching its declaration)",
                records_path.display()
            );
        }
        if records.len() == declarations {
            return Err(err(format!(
                "{}: device {chosen} has no records to replay",
                dir.display()
            )));
        }
        // Declarations first (a record may only follow its kind's), each part in seq order.
        records[..declarations].sort_by_key(|(seq, _)| *seq);
        records[declarations..].sort_by_key(|(seq, _)| *seq);
        Ok(Stream {
            device: chosen,
            records: records.into_iter().map(|(_, r)| r).collect(),
        })
    }

    /// The rows of `device` (or the first row's) in a single `--csv` file, each as a text
    /// record of its fields (see the [module documentation](self)).
    pub fn from_csv(path: &Path, device: Option<&str>) -> Result<Stream, ReplayError> {
        let rows = read_rows(path)?;
        let mut chosen: Option<String> = device.map(str::to_owned);
        let mut records = Vec::new();
        for r in rows.iter().filter(|r| r.len() >= 3) {
            if r[2].is_empty() {
                continue; // a marker row
            }
            let d = chosen.get_or_insert_with(|| r[1].clone());
            if !r[1].eq_ignore_ascii_case(d) {
                continue;
            }
            let seq = parse_seq(&r[2], path)?;
            let Some(payload) = text_record(&r[3..]) else {
                debug!(
                    "{}: seq {seq}: not replayed (a record not read whole)",
                    path.display()
                );
                continue;
            };
            records.push(Recorded {
                at: Some(parse_time(&r[0], path, seq)?),
                payload,
            });
        }
        let device = chosen.ok_or_else(|| err(format!("{}: no records", path.display())))?;
        if records.is_empty() {
            return Err(err(format!(
                "{}: no records of device {device}",
                path.display()
            )));
        }
        Ok(Stream { device, records })
    }

    /// The records of `device` (or the first line's device) in a JSON lines file written by
    /// `--sink jsonl:FILE`: see the [module documentation](self).
    pub fn from_jsonl(path: &Path, device: Option<&str>) -> Result<Stream, ReplayError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let at = |n: usize| format!("{}: line {}", path.display(), n + 1);
        // (line number, device, session, seq, host_time, the object) of each record.
        type Line<'a> = (usize, String, u32, u64, SystemTime, Object<'a>);
        let mut lines: Vec<Line<'_>> = Vec::new();
        let pieces: Vec<&str> = text.split('\n').collect();
        for (n, line) in pieces.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let obj: Object<'_> = match serde_json::from_str(line) {
                Ok(o) => o,
                // A torn last line (the listener stopped while writing it): its record was
                // not acknowledged, so it is not part of the recording.
                Err(_) if n + 1 == pieces.len() => {
                    debug!("{}: torn last line, not replayed", at(n));
                    continue;
                }
                Err(e) => {
                    return Err(err(format!(
                        "{}: not a JSON object of a Tether listener: {e}",
                        at(n)
                    )))
                }
            };
            let string = |key: &str| -> Result<Option<String>, ReplayError> {
                obj.get(key)
                    .map(|v| {
                        serde_json::from_str::<String>(v.get())
                            .map_err(|_| err(format!("{}: \"{key}\" is not a string", at(n))))
                    })
                    .transpose()
            };
            let number = |key: &str| -> Result<Option<u64>, ReplayError> {
                obj.get(key)
                    .map(|v| {
                        v.get()
                            .parse::<u64>()
                            .map_err(|_| err(format!("{}: \"{key}\" is not a number", at(n))))
                    })
                    .transpose()
            };
            let Some(seq) = number("seq")? else {
                continue; // a marker
            };
            let dev = string("device")?
                .filter(|d| is_device(d))
                .ok_or_else(|| err(format!("{}: no \"device\" (eight hex digits)", at(n))))?;
            let session = number("session")?
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| err(format!("{}: no \"session\"", at(n))))?;
            let time =
                string("host_time")?.ok_or_else(|| err(format!("{}: no \"host_time\"", at(n))))?;
            let time = humantime::parse_rfc3339(&time).map_err(|e| {
                err(format!(
                    "{}: host_time `{time}` is not an RFC 3339 time: {e}",
                    at(n)
                ))
            })?;
            lines.push((n, dev, session, seq, time, obj));
        }
        let chosen = lines
            .iter()
            .find(|l| device.is_none_or(|d| l.1.eq_ignore_ascii_case(d)))
            .map(|l| l.1.clone())
            .ok_or_else(|| match device {
                Some(d) => err(format!("{}: no records of device {d}", path.display())),
                None => err(format!("{}: no records", path.display())),
            })?;
        let session = lines
            .iter()
            .filter(|l| l.1 == chosen)
            .map(|l| l.2)
            .min()
            .unwrap_or(0);
        let mut declared: Vec<Schema> = Vec::new();
        let mut decls: Vec<(u64, Recorded)> = Vec::new();
        let mut records: Vec<(u64, Recorded)> = Vec::new();
        let mut skipped = 0usize;
        for (n, _, _, seq, time, obj) in lines.iter().filter(|l| l.1 == chosen && l.2 == session) {
            let kind = obj.get("kind").map(|v| v.get());
            if let Some(hex) = obj
                .get("declaration")
                .filter(|_| kind.is_some_and(is_number))
            {
                let bytes = serde_json::from_str::<String>(hex.get())
                    .ok()
                    .and_then(|h| unhex(&h))
                    .ok_or_else(|| err(format!("{}: declaration not in hex", at(*n))))?;
                let schema = Schema::parse(&bytes)
                    .map_err(|e| err(format!("{}: malformed declaration: {e}", at(*n))))?;
                declared.retain(|s| s.id != schema.id);
                declared.push(schema);
                decls.push((
                    *seq,
                    Recorded {
                        at: None,
                        payload: bytes,
                    },
                ));
                continue;
            }
            let payload = if let Some(kind) = kind {
                let name = serde_json::from_str::<String>(kind).map_err(|_| {
                    err(format!("{}: \"kind\" is neither a name nor an id", at(*n)))
                })?;
                // The latest declaration of that name whose fields the object has.
                let schema = declared
                    .iter()
                    .rev()
                    .find(|s| {
                        s.name == name && s.columns.iter().all(|c| obj.contains_key(&c.column))
                    })
                    .ok_or_else(|| {
                        err(format!(
                            "{}: a record of kind {name}, which no earlier line of device \
                             {chosen} declares (with these fields)",
                            at(*n)
                        ))
                    })?;
                let values = schema
                    .columns
                    .iter()
                    .map(|c| json_value(c.ty, obj[&c.column].get()))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| err(format!("{}: a value not of its declared type", at(*n))))?;
                encode(schema, &values).map_err(|e| err(format!("{}: {e}", at(*n))))?
            } else {
                let mut fields: Vec<(usize, String)> = Vec::new();
                for (key, v) in obj {
                    let Some(i) = key.strip_prefix("field_").and_then(|i| i.parse().ok()) else {
                        continue;
                    };
                    let v = v.get();
                    let text = serde_json::from_str::<String>(v).unwrap_or_else(|_| v.to_owned());
                    fields.push((i, text));
                }
                fields.sort();
                let fields: Vec<String> = fields.into_iter().map(|(_, t)| t).collect();
                match text_record(&fields) {
                    Some(p) => p,
                    None => {
                        skipped += 1;
                        continue;
                    }
                }
            };
            records.push((
                *seq,
                Recorded {
                    at: Some(*time),
                    payload,
                },
            ));
        }
        if skipped > 0 {
            warn!(
                "{}: {skipped} records of device {chosen} not replayed: records that could not \
                 be read whole (a malformed field, a record not matching its declaration)",
                path.display()
            );
        }
        if records.is_empty() {
            return Err(err(format!(
                "{}: device {chosen} has no records to replay",
                path.display()
            )));
        }
        decls.sort_by_key(|(seq, _)| *seq);
        records.sort_by_key(|(seq, _)| *seq);
        Ok(Stream {
            device: chosen,
            records: decls.into_iter().chain(records).map(|(_, r)| r).collect(),
        })
    }

    /// When each record is due, from the first: the recorded spacing divided by `speed`,
    /// never before the record before it.
    pub fn schedule(&self, speed: Speed) -> Vec<Duration> {
        let first = self.records.iter().find_map(|r| r.at);
        let mut last = Duration::ZERO;
        self.records
            .iter()
            .map(|r| {
                if let (Speed::Times(x), Some(at), Some(first)) = (speed, r.at, first) {
                    let since = at.duration_since(first).unwrap_or_default();
                    last = last.max(since.div_f64(x));
                }
                last
            })
            .collect()
    }
}

fn read_rows(path: &Path) -> Result<Vec<Vec<String>>, ReplayError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let mut rows = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| err(format!("{}: malformed CSV: {e}", path.display())))?;
        rows.push(row.iter().map(str::to_owned).collect());
    }
    Ok(rows)
}

/// A JSON lines object: each key's value as its own text.
type Object<'a> = HashMap<String, &'a serde_json::value::RawValue>;

fn is_number(v: &str) -> bool {
    v.parse::<u64>().is_ok()
}

/// Eight hex digits: a device's id as the sinks write it.
fn is_device(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `path` holds JSON lines: its first byte that is not white space is `{`.
fn is_json_lines(path: &Path) -> Result<bool, ReplayError> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let mut buf = [0u8; 256];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(b) = buf[..n].iter().find(|b| !b.is_ascii_whitespace()) {
            return Ok(*b == b'{');
        }
    }
}

/// A JSON value of a declared field (its text in the line) as the CSV writes it, for
/// [`encode`]; `None` if it is not of that type.
fn json_value(ty: Type, raw: &str) -> Option<String> {
    let string = || serde_json::from_str::<String>(raw).ok();
    match ty {
        Type::Bool => matches!(raw, "true" | "false").then(|| raw.to_owned()),
        // A NaN or infinite float is a string: "NaN", "inf", "-inf".
        Type::F32 | Type::F64 if raw.starts_with('"') => string(),
        Type::Str => string().map(|s| {
            if s.starts_with('<') {
                format!("<{s}")
            } else {
                s
            }
        }),
        Type::Bytes => string(),
        // A number: its own text, parsed by its declared type in `encode`.
        _ => (!raw.starts_with('"')).then(|| raw.to_owned()),
    }
}

/// The record a row of `field_1`, … texts (as the CSV writes them) was: a text record, its
/// fields as one CSV line (quoted where they must be, the CSV's extra `<` taken off); or the
/// bytes of a record the CSV shows in hex (`<binary …>`, `<record of undeclared kind …: …>`,
/// `<malformed declaration …: …>`). `None`: a row with another `<…>` (a malformed field, a
/// record not matching its declaration), whose record cannot be made again.
fn text_record(fields: &[String]) -> Option<Vec<u8>> {
    let shown = |f: &String| f.starts_with('<') && !f.starts_with("<<");
    if let [only] = fields {
        let hexed = [
            "<binary ",
            "<record of undeclared kind ",
            "<malformed declaration ",
        ];
        if hexed.iter().any(|p| only.starts_with(p)) {
            let inner = only.strip_suffix('>')?;
            let hex = &inner[inner.rfind(' ')? + 1..];
            return unhex(hex);
        }
    }
    if fields.iter().any(shown) {
        return None;
    }
    let mut line = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let f = f.strip_prefix('<').unwrap_or(f);
        if f.contains([',', '"', '\r', '\n']) {
            line.push('"');
            line.push_str(&f.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(f);
        }
    }
    Some(line.into_bytes())
}

fn parse_seq(s: &str, path: &Path) -> Result<u64, ReplayError> {
    s.parse()
        .map_err(|_| err(format!("{}: `{s}` is not a seq", path.display())))
}

fn parse_time(s: &str, path: &Path, seq: u64) -> Result<SystemTime, ReplayError> {
    humantime::parse_rfc3339(s).map_err(|e| {
        err(format!(
            "{}: seq {seq}: host_time `{s}` is not an RFC 3339 time: {e}",
            path.display()
        ))
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// The record of `schema`'s kind with these values (as the CSV writes them: see
/// `crate::sink::kinds::text`).
pub fn encode(schema: &Schema, values: &[String]) -> Result<Vec<u8>, String> {
    if values.len() != schema.columns.len() {
        return Err(format!(
            "{} values for the {} fields of {}",
            values.len(),
            schema.columns.len(),
            schema.describe()
        ));
    }
    let defs: Vec<FieldDef<'_>> = schema
        .columns
        .iter()
        .map(|c| FieldDef::new(&c.name, c.ty))
        .collect();
    let kind = Kind {
        id: schema.id,
        name: &schema.name,
        fields: &defs,
    };
    let mut buf = vec![0u8; 2 + values.iter().map(|v| v.len() / 2 + 9).sum::<usize>()];
    let mut w = KindWriter::new(&kind, &mut buf);
    for (c, v) in schema.columns.iter().zip(values) {
        let bad = || format!("`{v}` is not a {} (field {})", c.ty, c.name);
        let bytes;
        let field = match c.ty {
            Type::Bool => Field::Bool(v.parse().map_err(|_| bad())?),
            Type::U8 => Field::U8(v.parse().map_err(|_| bad())?),
            Type::U16 => Field::U16(v.parse().map_err(|_| bad())?),
            Type::U32 => Field::U32(v.parse().map_err(|_| bad())?),
            Type::U64 => Field::U64(v.parse().map_err(|_| bad())?),
            Type::I8 => Field::I8(v.parse().map_err(|_| bad())?),
            Type::I16 => Field::I16(v.parse().map_err(|_| bad())?),
            Type::I32 => Field::I32(v.parse().map_err(|_| bad())?),
            Type::I64 => Field::I64(v.parse().map_err(|_| bad())?),
            Type::F32 => Field::F32(v.parse().map_err(|_| bad())?),
            Type::F64 => Field::F64(v.parse().map_err(|_| bad())?),
            // The CSV puts one more `<` in front of a string that begins with one.
            Type::Str => Field::Str(v.strip_prefix('<').unwrap_or(v)),
            Type::Bytes => {
                bytes = unhex(v).ok_or_else(bad)?;
                Field::Bytes(&bytes)
            }
        };
        w.field(field)
            .map_err(|e| format!("field {}: {e}", c.name))?;
    }
    w.finish().map(<[u8]>::to_vec).map_err(|e| format!("{e}"))
}

/// What to replay, and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The listener.
    pub endpoint: Endpoint,
    /// Devices replaying the stream, each under its own identity.
    pub devices: usize,
    /// The faults.
    pub faults: Faults,
    /// Seeds the devices' identities and every fault.
    pub seed: u64,
    /// How fast.
    pub speed: Speed,
    /// Give up if the run takes longer.
    pub timeout: Duration,
    /// The highest protocol version the devices offer (`PROTOCOL.md` 11.2).
    pub max_version: u8,
}

struct DeviceRun {
    cuts: u32,
    retransmissions: u64,
    corrupted: u64,
    lost: u64,
}

async fn run_device(
    opts: &ReplayOptions,
    stream: &Stream,
    due: &[Duration],
    i: usize,
    cuts: u32,
    acked: &AtomicU64,
) -> Result<DeviceRun, String> {
    let (session, _) = device_identity(opts.seed, i);
    let mut cfg = Config::new(Role::Client, session);
    cfg.max_version = opts.max_version;
    // Announce the stream's largest record, not the slots': a listener refuses a device
    // whose records may exceed its --max-record.
    let largest = stream.records.iter().map(|r| r.payload.len()).max();
    cfg.max_send = u16::try_from(largest.unwrap_or(1).max(1)).unwrap_or(u16::MAX);
    let mut link: Box<ReplayLink> =
        Box::new(Link::new(cfg, LinkStorage::new()).map_err(|e| format!("{e:?}"))?);
    let fault = |salt: u64| {
        let mut f =
            FaultConfig::clean(opts.seed.wrapping_mul(31).wrapping_add(i as u64 * 2 + salt));
        f.corrupt_byte = opts.faults.corrupt;
        f.lose_write = opts.faults.loss;
        f.split = opts.faults.split;
        f
    };
    let mut up = FaultInjector::new(fault(0));
    let mut down = FaultInjector::new(fault(1));
    let total = stream.records.len();
    // Cut after these records have been queued, spread over the stream.
    let mut cut_at: Vec<usize> = (0..cuts as usize)
        .map(|k| (k + 1) * total / (cuts as usize + 1))
        .collect();
    cut_at.reverse();
    let clock = Clock::new();
    let started = tokio::time::Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let mut frame = vec![0u8; link.transmit_len()];
    let mut out = Vec::with_capacity(16 * 1024);
    let mut input = Vec::with_capacity(16 * 1024);
    let mut made_cuts = 0;
    let mut next = 0usize;
    while next < total || link.unacked() > 0 {
        let timeout = crate::transport::connect_timeout(&opts.endpoint);
        let mut stream_io = match crate::transport::connect(&opts.endpoint, timeout).await {
            Ok(s) => s,
            Err(e) if e.is_permanent() => return Err(e.to_string()),
            Err(e) => {
                debug!("device {session:08x}: cannot connect: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        link.connect(clock.now());
        loop {
            let now = clock.now();
            link.handle_timeout(now);
            let mut reconnect = false;
            while let Some(event) = link.poll_event() {
                match event {
                    Event::Rejected { .. } => {
                        let why = link.reject().map(|r| r.to_string()).unwrap_or_default();
                        return Err(format!("device {session:08x}: refused: {why}"));
                    }
                    Event::Closed => return Err(format!("device {session:08x}: session closed")),
                    Event::PeerDead => reconnect = true,
                    _ => {}
                }
            }
            // Commands from the listener are not a replay's business.
            while link.recv().is_some() {
                link.release(1);
            }
            // Queue what is due.
            let elapsed = started.elapsed();
            while next < total && due[next] <= elapsed {
                match link.send(&stream.records[next].payload) {
                    Ok(_) => next += 1,
                    Err(SendError::WouldBlock) => break,
                    Err(SendError::TooLong { max }) => {
                        return Err(format!(
                            "record {next} of the stream is {} bytes; the link sends at most {max}",
                            stream.records[next].payload.len()
                        ))
                    }
                    Err(SendError::Closed) => {
                        return Err(format!("device {session:08x}: session closed"))
                    }
                }
            }
            if cut_at.last().is_some_and(|&c| next >= c) {
                cut_at.pop();
                made_cuts += 1;
                break; // drops the connection: what is in flight is lost
            }
            while let Some(n) = link.poll_transmit(now, &mut frame) {
                // One frame per write into the injector, so a lost write is a lost frame.
                let _ = up.write(&frame[..n], |b| out.push(b));
            }
            let mut rest = &out[..];
            let mut failed = false;
            while !rest.is_empty() {
                let n = up.piece(rest.len());
                if stream_io.write_all(&rest[..n]).await.is_err() {
                    failed = true;
                    break;
                }
                rest = &rest[n..];
            }
            out.clear();
            acked.store(
                (next as u64).saturating_sub(u64::from(link.unacked())),
                Ordering::Relaxed,
            );
            if failed || reconnect || (next == total && link.unacked() == 0) {
                break;
            }
            let record_due = (next < total && link.can_send()).then(|| started + due[next]);
            let link_due = link.poll_timeout().map(|d| clock.instant(d));
            let deadline = match (record_due, link_due) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a
                    .or(b)
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_millis(100)),
            };
            tokio::select! {
                r = stream_io.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        input.clear();
                        let _ = down.write(&buf[..n], |b| input.push(b));
                        link.handle_input(clock.now(), &input);
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
    acked.store(total as u64, Ordering::Relaxed);
    let (u, d) = (up.stats(), down.stats());
    Ok(DeviceRun {
        cuts: made_cuts,
        retransmissions: u64::from(link.stats().retransmissions),
        corrupted: u.corrupted_bytes + d.corrupted_bytes,
        lost: u.lost_writes + d.lost_writes,
    })
}

/// Replays `stream` as `opts.devices` devices until each has had every record acknowledged;
/// [`SimSummary::acknowledged`] counts the records (declarations included), all devices.
pub async fn run(opts: &ReplayOptions, stream: Arc<Stream>) -> Result<SimSummary, String> {
    let started = std::time::Instant::now();
    let devices = opts.devices.max(1);
    let due: Arc<Vec<Duration>> = Arc::new(stream.schedule(opts.speed));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..devices).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..devices {
        let cuts = opts.faults.cuts / devices as u32
            + u32::from((i as u32) < opts.faults.cuts % devices as u32);
        let (o, s, d, a) = (opts.clone(), stream.clone(), due.clone(), acked.clone());
        tasks.spawn(async move { run_device(&o, &s, &d, i, cuts, &a[i]).await });
    }
    let expected = devices as u64 * stream.records.len() as u64;
    let mut s = SimSummary::default();
    let all = async {
        while let Some(r) = tasks.join_next().await {
            let r = r.map_err(|e| format!("device task: {e}"))??;
            s.cuts += r.cuts;
            s.retransmissions += r.retransmissions;
            s.corrupted_bytes += r.corrupted;
            s.lost += r.lost;
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(opts.timeout, all)
        .await
        .map_err(|_| {
            let n: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
            format!(
                "not finished within {}: {n} of {expected} records acknowledged",
                humantime::format_duration(opts.timeout)
            )
        })??;
    s.acknowledged = expected;
    s.seconds = started.elapsed().as_secs_f64();
    info!(
        "replayed device {}: {} records acknowledged in {:.2} s",
        stream.device, s.acknowledged, s.seconds
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_parses_and_refuses_nonsense() {
        assert_eq!("max".parse::<Speed>().unwrap(), Speed::Max);
        assert_eq!("2.5".parse::<Speed>().unwrap(), Speed::Times(2.5));
        for bad in ["0", "-1", "fast", "inf", ""] {
            assert!(bad.parse::<Speed>().is_err(), "{bad}");
        }
    }

    #[test]
    fn schedule_keeps_the_spacing_divided_by_the_speed_and_never_goes_back() {
        let t = |ms: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let rec = |at| Recorded {
            at,
            payload: vec![],
        };
        let s = Stream {
            device: "00000001".into(),
            records: vec![
                rec(None),
                rec(t(1000)),
                rec(t(1400)),
                rec(t(1200)),
                rec(t(3000)),
            ],
        };
        let ms = |v: Vec<Duration>| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(ms(s.schedule(Speed::Times(1.0))), [0, 0, 400, 400, 2000]);
        assert_eq!(ms(s.schedule(Speed::Times(10.0))), [0, 0, 40, 40, 200]);
        assert_eq!(ms(s.schedule(Speed::Max)), [0, 0, 0, 0, 0]);
    }

    /// The same records written by a `--csv-dir` sink and a JSON lines sink are loaded back
    /// as the same stream: declarations first, then the records of kinds and the text
    /// records merged in seq order, each record as the device sent it (marker skipped).
    #[test]
    fn csv_dir_and_json_lines_give_back_the_records_in_seq_order() {
        use crate::sink::{Batch, CsvDirSink, JsonlOut, JsonlSink, Sink};
        use tether_core::record::RecordWriter;
        const K: Kind = Kind {
            id: 0,
            name: "env",
            fields: &[
                FieldDef::new("t", Type::F32).unit("°C"),
                FieldDef::new("label", Type::Str),
            ],
        };
        let decl: [u8; K.declaration_len()] = K.declaration();
        let env = |t: f32, label: &str| {
            let mut buf = [0u8; 64];
            let mut w = KindWriter::new(&K, &mut buf);
            w.f32(t).unwrap().str(label).unwrap();
            w.finish().unwrap().to_vec()
        };
        let mut plain = [0u8; 16];
        let mut w = RecordWriter::new(&mut plain);
        w.u8(7).unwrap();
        let plain = w.finish().to_vec();
        let sent: Vec<(u32, Vec<u8>)> = vec![
            (0, decl.to_vec()),
            (1, env(21.5, "a,b")),
            (2, b"text,line".to_vec()),
            (3, b"\"x,y\",<z".to_vec()),
            (4, env(-1.25, "<q")),
            (5, vec![0x1E, 0x85]),
            (6, vec![0xFF, 0xFE]),
            (7, plain),
            (8, b"last".to_vec()),
        ];
        let d = std::env::temp_dir().join(format!("tether-replay-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let jsonl = d.join("r.jsonl");
        std::fs::create_dir_all(&d).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut dir_sink = CsvDirSink::open(&d.join("dir"), false).unwrap();
        let mut json_sink = JsonlSink::open(&JsonlOut::File(jsonl.clone()), false).unwrap();
        for sink in [&mut dir_sink as &mut dyn Sink, &mut json_sink] {
            let mut b = Batch::new(sink);
            for (i, (seq, p)) in sent.iter().enumerate() {
                let at = t0 + Duration::from_millis(10 * i as u64);
                b.write(at, 0xA, *seq, p).unwrap();
                if i == 3 {
                    b.write_note(at, 0xA, "<a marker>").unwrap();
                }
            }
            // Another device's records are not replayed.
            b.write(t0, 0xB, 0, b"other").unwrap();
            b.commit().unwrap();
        }
        drop((dir_sink, json_sink));
        let mut want: Vec<&[u8]> = sent.iter().map(|(_, p)| &p[..]).collect();
        // The typed field without a declaration comes back as text.
        want[7] = b"7";
        for (path, name) in [(d.join("dir"), "csv-dir"), (jsonl, "JSON lines")] {
            let s = Stream::load(&path, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.device, "0000000a", "{name}");
            let got: Vec<&[u8]> = s.records.iter().map(|r| &r.payload[..]).collect();
            assert_eq!(got, want, "{name}");
            assert!(s.records[0].at.is_none() && s.records[1..].iter().all(|r| r.at.is_some()));
            let other = Stream::load(&path, Some("0000000B")).unwrap();
            assert_eq!(other.records.len(), 1, "{name}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn values_are_encoded_as_the_declared_kind_reads_them() {
        const K: Kind = Kind {
            id: 5,
            name: "k",
            fields: &[
                FieldDef::new("a", Type::U32),
                FieldDef::new("b", Type::F32).unit("°C"),
                FieldDef::new("c", Type::Bool),
                FieldDef::new("d", Type::Str),
                FieldDef::new("e", Type::Bytes),
                FieldDef::new("f", Type::I16),
            ],
        };
        let decl: [u8; K.declaration_len()] = K.declaration();
        let schema = Schema::parse(&decl).unwrap();
        let values: Vec<String> = ["7", "21.5", "true", "<<x", "00ff", "-3"]
            .map(String::from)
            .to_vec();
        let rec = encode(&schema, &values).unwrap();
        let back: Vec<String> = schema
            .values(&rec)
            .map(|v| crate::sink::kinds::text(&v.unwrap()))
            .collect();
        assert_eq!(back, values);
        assert!(encode(&schema, &values[..5]).is_err());
        let mut wrong = values.clone();
        wrong[0] = "x".into();
        assert!(encode(&schema, &wrong).unwrap_err().contains("not a u32"));
    }
}
