//! Where records go: the [`Sink`] seam, and the CSV sink, its first implementation.
//!
//! # The seam
//!
//! A server writes what a device's link received as one batch ([`Batch`]: records, marker
//! rows), and releases those records to the link (which acknowledges them) only once
//! [`Sink::commit`] says the batch is durable; a batch that fails, or is dropped
//! uncommitted, leaves the sink as it was before it, so nothing is written twice when the
//! device sends it again. At start, [`Sink::recover`] says what each device last had
//! written, so that a device resuming after a restart is written once. A new sink (a
//! database: a transaction per batch; a broker: its acknowledgements) is a module
//! implementing [`Sink`] plus its arm in [`Destination`] and [`open`].
//!
//! # The CSV sink
//!
//! One row per record, real columns, and "acked means written".
//!
//! # The file
//!
//! The first line is the header: the fixed columns `host_time,device,seq`, then `field_1`,
//! `field_2`, … as many as the first row written has fields. That line, exactly (ending in
//! LF), is what makes a file a Tether CSV: [`CsvSink::open`] refuses any other non-empty
//! file, and leaves it as it is (the one exception: a file holding nothing but the
//! beginning of such a header, without its line end, is what a listener stopped while
//! creating the file leaves, and is taken as empty).
//!
//! Every row: `host_time` (RFC 3339, UTC, microseconds), `device` (the device's session
//! identity in hex, stable across reconnects), `seq` (the record's sequence number), then
//! the record's fields:
//! - a **typed** record (`tether_core::record`, first byte `0x1E`): one column per field,
//!   numbers in decimal, floats in their shortest exact form, booleans as `true`/`false`,
//!   bytes in lowercase hex, strings as they are; a malformed rest becomes one last field
//!   `<reason>`;
//! - a **text** record (`PROTOCOL.md` 10.3) that is UTF-8: one line end at its end (LF or
//!   CRLF) ends the line and is not written; the rest is read as one CSV record (RFC 4180:
//!   fields separated by commas, a field in double quotes may hold commas, line breaks and
//!   doubled quotes) and written one column per field. Text that is not exactly one such record (a quote left
//!   open, a quote inside an unquoted field, text after a closing quote, a line break
//!   outside quotes) is written whole, as one field, so that nothing of it is lost. An empty
//!   line has no fields;
//! - any other record (**binary**: not UTF-8): one field, `<binary ` then the payload in
//!   lowercase hex then `>`.
//!
//! A chunk of the tutorial's raw protocol (`--raw`) is one field, as it is if UTF-8 (not
//! parsed: chunks are cut at 32 bytes), `<binary …>` otherwise; its `device` is the peer's
//! address.
//!
//! A field that begins with `<` is Tether's own: the marker rows (their `seq` is empty, see
//! [`crate::recover`]), a binary payload, a malformed typed record's rest. A text field that
//! itself begins with `<` gets one more `<` in front (`<5` is written `<<5`), so a reader
//! tells them apart: a field beginning with `<<` is text without its first `<`, one
//! beginning with a single `<` is Tether's.
//!
//! Rows have as many columns as their record has fields, so a later record with more
//! fields than the first has columns the header does not name, and one with fewer has
//! fewer. Quoting is RFC 4180's: a field holding `,`, `"`, CR or LF is put in double quotes,
//! its quotes doubled.
//!
//! # Batches
//!
//! Rows are written in batches ([`CsvSink::batch`]): a batch's rows are in the file, to the
//! degree promised (`--fsync`: on disk), once [`Batch::commit`] returns, and only then may
//! their records be acknowledged. A batch that fails (a write, the commit, a full disk) is
//! rolled back whole: the file is cut back to its length after the last commit, so a record
//! whose batch failed is not in the file, is not acknowledged, and is written once when its
//! device sends it again. A batch dropped without a commit is rolled back the same way.
//! Marker rows whose batch failed are kept and written first in the next batch.
//!
//! While a sink is open it holds an exclusive lock (`flock`) on its file: a second sink on
//! the same file, in this process or another, is refused.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use tether_core::record::{Field, Fields};
use tracing::{debug, info, warn};

/// The columns every row starts with; the header's first line begins with them.
pub const FIXED_COLUMNS: &str = "host_time,device,seq";

pub mod csv_dir;
pub(crate) mod json;
pub mod jsonl;
pub mod kinds;
pub mod postgres;

pub use csv_dir::CsvDirSink;
pub use jsonl::{JsonlOut, JsonlSink};
pub use postgres::{PgSink, PgUrl};

/// What a sink does: batches of records and marker rows, durable at commit, all or nothing.
pub trait Sink: Send + std::fmt::Debug {
    /// Writes record `seq` of `device`, received at `time`, in the open batch (opened by
    /// the first write).
    fn write(
        &mut self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError>;

    /// Writes a marker for `device` (a discontinuity in its records; `text` begins with
    /// `<`, see [`crate::recover`]). If its batch fails, the marker is kept and written
    /// first in the next batch that commits.
    fn write_note(&mut self, time: SystemTime, device: u32, text: &str) -> Result<(), SinkError>;

    /// Writes chunk `seq` of the tutorial's raw protocol from `peer` (see [`crate::raw`]).
    fn write_raw(
        &mut self,
        time: SystemTime,
        peer: &str,
        seq: u32,
        chunk: &[u8],
    ) -> Result<(), SinkError>;

    /// Makes the open batch durable (with `--fsync`: on disk); only then may its records be
    /// released. On an error the batch was rolled back: none of it is kept. An empty
    /// commit writes the marker rows still pending.
    fn commit(&mut self) -> Result<(), SinkError>;

    /// Drops the open batch, if any: none of it is kept (marker rows stay pending).
    fn rollback(&mut self);

    /// Each device's last record written, read once before the first batch, and what a
    /// crash left half-written repaired.
    fn recover(&mut self) -> Result<crate::recover::Recovered, crate::recover::RecoverError>;

    /// For people: what it writes to ("CSV file readings.csv").
    fn describe(&self) -> String;

    /// Whether record `seq` of `device`, one that recovery says may have been written
    /// before a restart (at or before its last record found), is held already: then it is
    /// released unwritten. One position a device answers that with its last record alone
    /// (the default); a sink of several files answers for the file the record belongs to
    /// (see [`CsvDirSink`]).
    fn holds(&self, device: u32, seq: u32, payload: &[u8]) -> bool {
        let _ = (device, seq, payload);
        true
    }

    /// A sink whose records become durable after they were handed over (a broker's
    /// acknowledgements: see [`crate::deferred`]); then the listener submits records to it
    /// and releases them as it reports them durable, instead of batches and commits.
    fn deferred(&self) -> Option<std::sync::Arc<dyn crate::deferred::Deferred>> {
        None
    }
}

/// Where a server's records go. A new sink adds its variant here and its arm in [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A CSV file (`--csv FILE`, `tether bridge … csv:FILE`).
    Csv(PathBuf),
    /// A directory of CSV files, one per record kind (`--csv-dir DIR`, `csv-dir:DIR`; see
    /// [`CsvDirSink`]).
    CsvDir(PathBuf),
    /// An MQTT broker (`--sink mqtt://HOST:PORT/PREFIX`, see [`crate::mqtt`]).
    Mqtt(crate::mqtt::MqttUrl),
    /// A PostgreSQL database (`--sink postgres://USER@HOST:PORT/DB`, see [`postgres`]).
    Postgres(PgUrl),
    /// JSON lines on standard output (`--sink jsonl:-`) or appended to a file
    /// (`jsonl:FILE`, see [`jsonl`]).
    Jsonl(JsonlOut),
}

impl std::str::FromStr for Destination {
    type Err = String;

    /// `csv:FILE`, `csv-dir:DIR`, `jsonl:-`, `jsonl:FILE`,
    /// `mqtt://HOST:PORT/PREFIX[?OPTIONS]` or `postgres://USER@HOST:PORT/DB[?OPTIONS]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("csv:") {
            if path.is_empty() {
                return Err("csv:FILE names a file".into());
            }
            return Ok(Destination::Csv(PathBuf::from(path)));
        }
        if let Some(path) = s.strip_prefix("csv-dir:") {
            if path.is_empty() {
                return Err("csv-dir:DIR names a directory".into());
            }
            return Ok(Destination::CsvDir(PathBuf::from(path)));
        }
        if let Some(path) = s.strip_prefix("jsonl:") {
            return match path {
                "" => Err("jsonl:FILE names a file (jsonl:- is standard output)".into()),
                "-" => Ok(Destination::Jsonl(JsonlOut::Stdout)),
                _ => Ok(Destination::Jsonl(JsonlOut::File(PathBuf::from(path)))),
            };
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return s
                .parse()
                .map(Destination::Postgres)
                .map_err(|e: postgres::PgError| e.to_string());
        }
        if s.starts_with("mqtt://") || s.starts_with("mqtts://") {
            return s
                .parse()
                .map(Destination::Mqtt)
                .map_err(|e: crate::mqtt::UrlError| e.to_string());
        }
        Err(format!(
            "{s}: a sink is csv:FILE, csv-dir:DIR, jsonl:- (standard output), jsonl:FILE, \
             mqtt://HOST:PORT/PREFIX or postgres://USER@HOST:PORT/DB"
        ))
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Csv(path) => write!(f, "{}", path.display()),
            Destination::CsvDir(path) => write!(f, "{}/", path.display()),
            Destination::Mqtt(url) => write!(f, "{url}"),
            Destination::Postgres(url) => write!(f, "{url}"),
            Destination::Jsonl(JsonlOut::Stdout) => f.write_str("standard output (JSON lines)"),
            Destination::Jsonl(JsonlOut::File(path)) => write!(f, "{}", path.display()),
        }
    }
}

/// Opens the sink of `destination`; with `fsync`, a commit waits until its batch is on
/// disk.
pub fn open(destination: &Destination, fsync: bool) -> Result<Box<dyn Sink>, SinkError> {
    match destination {
        Destination::Csv(path) => Ok(Box::new(CsvSink::open(path, fsync)?)),
        Destination::CsvDir(dir) => Ok(Box::new(CsvDirSink::open(dir, fsync)?)),
        Destination::Mqtt(url) => Ok(Box::new(crate::mqtt::MqttSink::open(url, fsync)?)),
        // A commit is a transaction: durable once it returns, whatever `fsync` says.
        Destination::Postgres(url) => Ok(Box::new(PgSink::open(url)?)),
        Destination::Jsonl(out) => Ok(Box::new(JsonlSink::open(out, fsync)?)),
    }
}

/// An open batch of a sink: written whole at [`Batch::commit`], rolled back if dropped
/// uncommitted or after any failure.
#[derive(Debug)]
pub struct Batch<'a, S: Sink + ?Sized = dyn Sink> {
    sink: &'a mut S,
    failed: bool,
    done: bool,
}

impl<'a, S: Sink + ?Sized> Batch<'a, S> {
    /// Starts a batch on `sink` (a batch that was leaked rather than committed or dropped
    /// is rolled back first).
    pub fn new(sink: &'a mut S) -> Self {
        sink.rollback();
        Batch {
            sink,
            failed: false,
            done: false,
        }
    }

    /// Refuses use after a failure, and marks the batch failed on an error.
    fn run<T>(&mut self, f: impl FnOnce(&mut S) -> Result<T, SinkError>) -> Result<T, SinkError> {
        if self.failed {
            return Err(SinkError::RolledBack {
                sink: self.sink.describe(),
            });
        }
        let r = f(self.sink);
        self.failed = r.is_err();
        r
    }

    /// Writes one record.
    pub fn write(
        &mut self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        self.run(|s| s.write(time, device, seq, payload))
    }

    /// Whether the sink holds record `seq` of `device` already (see [`Sink::holds`]).
    pub fn holds(&self, device: u32, seq: u32, payload: &[u8]) -> bool {
        self.sink.holds(device, seq, payload)
    }

    /// Writes one raw chunk (the tutorial's protocol): time, peer, chunk number, and the
    /// chunk.
    pub fn write_text(
        &mut self,
        time: SystemTime,
        peer: &str,
        seq: u32,
        chunk: &[u8],
    ) -> Result<(), SinkError> {
        self.run(|s| s.write_raw(time, peer, seq, chunk))
    }

    /// Writes a marker row for `device` (see [`Sink::write_note`]).
    pub fn write_note(
        &mut self,
        time: SystemTime,
        device: u32,
        text: &str,
    ) -> Result<(), SinkError> {
        self.run(|s| s.write_note(time, device, text))
    }

    /// Makes the batch durable to the promised degree. Only then may its records be
    /// acknowledged. On an error the batch is rolled back: none of it is kept.
    pub fn commit(mut self) -> Result<(), SinkError> {
        let r = self.run(|s| s.commit());
        self.done = r.is_ok();
        r
    }
}

impl<S: Sink + ?Sized> Drop for Batch<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            self.sink.rollback();
        }
    }
}

/// Why the sink failed. Records whose batch failed were not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The file could not be opened, read or written.
    #[error("CSV file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file exists and does not begin with Tether's header.
    #[error(
        "CSV file {path} is not a Tether CSV, so it was left as it is: {found}, where a \
         Tether CSV begins with its header line, {FIXED_COLUMNS} then ,field_1 ,field_2 and \
         so on (one per field of its first record). Write to a new file, or to one a Tether \
         listener wrote"
    )]
    NotTether {
        /// The file.
        path: PathBuf,
        /// What it begins with, for people.
        found: String,
    },
    /// Another open sink (another listener) holds the file's lock.
    #[error(
        "CSV file {path} is being written by {holder}, which holds its lock: a second \
         listener on it would mix its rows into the first one's. Stop that one, or write to \
         another file"
    )]
    InUse {
        /// The file.
        path: PathBuf,
        /// Who holds the lock, as far as the system says.
        holder: Holder,
    },
    /// The JSON lines sink could not start (a file not Tether's, locked) or write.
    #[error(transparent)]
    Jsonl(#[from] jsonl::JsonlError),
    /// The MQTT sink could not start (its credentials, its state file).
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    /// The PostgreSQL sink could not connect, or its database refused or failed.
    #[error("PostgreSQL {url}: {source}")]
    Postgres {
        /// The database (its URL: it holds no password).
        url: String,
        /// What went wrong.
        source: postgres::PgError,
    },
    /// A write to a batch that had already failed (and was rolled back).
    #[error("{sink}: this batch failed and was rolled back; nothing more is written to it")]
    RolledBack {
        /// The sink ([`Sink::describe`]).
        sink: String,
    },
}

impl SinkError {
    /// Whether the sink can never be written again in this process: standard output whose
    /// reader went away (a closed pipe, as `tether listen --sink jsonl:- | head` leaves).
    /// Every other failure (a full disk, a database down) may pass, and the listener holds
    /// the records back until it does.
    pub fn output_gone(&self) -> bool {
        matches!(self, SinkError::Jsonl(jsonl::JsonlError::Stdout(e))
            if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// The process holding a CSV file's lock, from `/proc/locks`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, if the system shows it.
    pub pid: Option<u32>,
    /// Its command name (`/proc/PID/comm`), if readable.
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.command) {
            (Some(pid), Some(c)) => write!(f, "process {pid} ({c})"),
            (Some(pid), None) => write!(f, "process {pid}"),
            (None, _) => write!(f, "another process"),
        }
    }
}

/// Appends records to a CSV file, in batches that are written whole or not at all.
#[derive(Debug)]
pub struct CsvSink {
    file: Flock<File>,
    /// Rows of the open batch not yet handed to the file.
    buf: Vec<u8>,
    path: PathBuf,
    fsync: bool,
    /// The file's length after the last commit: where a failed batch is cut back to.
    committed: u64,
    /// The file may be longer than `committed`: the open batch handed it bytes, or cutting
    /// a failed batch off failed (then it is tried again before the next batch).
    past_committed: bool,
    /// Bytes of the open batch already handed to the file.
    batch_bytes: u64,
    /// Record rows in the open batch.
    batch_rows: u64,
    /// Whether a batch is open (begun and neither committed nor rolled back).
    open: bool,
    /// The open batch must write the header before its first row (the file is empty).
    header_pending: bool,
    /// Marker rows not committed yet, rendered: they start every batch until one commits.
    notes: Vec<u8>,
    rows: u64,
    /// Since when writing fails, for one log line an episode rather than one a retry.
    failing: Option<Failing>,
    fields: Vec<String>,
    /// The kinds each device declared (`PROTOCOL.md` 10.5), to read its records of them.
    kinds: kinds::Kinds,
    /// Whether the log said once that declared kinds are named in `--csv-dir`, not here.
    told_kinds: bool,
    /// The last time formatted, and its text: a batch of records shares one time.
    time: Option<(SystemTime, String)>,
    /// The last device written, and its column text: a batch comes from one device.
    device: Option<(u32, [u8; 8])>,
}

/// Since when a sink's writing fails: every sink logs an episode of failures in the same
/// words, once when it starts (a warning), again when its reason changes, and once when
/// writing works again.
#[derive(Debug)]
pub(crate) struct Failing {
    since: Instant,
    batches: u64,
    error: String,
}

impl Failing {
    /// A batch of `what` (a sink's [`Sink::describe`]) failed with `e`. `then` ends the
    /// first warning's sentence (what the sink does meanwhile); `quiet`, the start of an
    /// episode is not logged (another part says it).
    pub(crate) fn record(
        state: &mut Option<Failing>,
        what: &str,
        e: &dyn std::fmt::Display,
        then: &str,
        quiet: bool,
    ) {
        let text = e.to_string();
        match state {
            None => {
                if !quiet {
                    warn!(
                        "{what}: {text}. Writing stopped: records are not acknowledged until \
                         it works again, and their devices keep them and send them again{then} \
                         (logged once, and again when writing works)"
                    );
                }
                *state = Some(Failing {
                    since: Instant::now(),
                    batches: 1,
                    error: text,
                });
            }
            Some(f) => {
                f.batches += 1;
                if f.error == text {
                    debug!("{what}: {text} (still)");
                } else {
                    warn!("{what}: now {text}");
                    f.error = text;
                }
            }
        }
    }

    /// Writing works again: the episode ends, and the log says after how many failed
    /// `batches` (the sink's word for them) in how long.
    pub(crate) fn over(state: &mut Option<Failing>, what: &str, batches: &str) {
        if let Some(f) = state.take() {
            info!(
                "{what}: writing works again, after {} failed {batches} in {:.1} s; the \
                 records their devices kept are written now",
                f.batches,
                f.since.elapsed().as_secs_f64()
            );
        }
    }
}

/// Bytes buffered before they are handed to the file (a batch larger than this reaches the
/// file in pieces; a failure cuts them all off).
const ROW_BUFFER: usize = 64 * 1024;

/// The longest header line read when checking a file: a record has at most 65,535 fields
/// (`,field_65535` is 12 bytes).
const MAX_HEADER: u64 = 1 << 20;

impl CsvSink {
    /// Opens `path` for appending (creating it) and locks it. An existing non-empty file
    /// must begin with Tether's header ([`SinkError::NotTether`] otherwise, the file
    /// untouched); a file another sink holds is [`SinkError::InUse`]. The header row is
    /// written before the first row if the file is empty. With `fsync`, a commit waits
    /// until its rows are on disk.
    pub fn open(path: &Path, fsync: bool) -> Result<Self, SinkError> {
        let err = |source| SinkError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(SinkError::InUse {
                    path: path.to_owned(),
                    holder: lock_holder(&file),
                })
            }
            Err((_, e)) => return Err(err(io::Error::from(e))),
        };
        let len = file.metadata().map_err(err)?.len();
        if let Some(found) = foreign(&file, len).map_err(err)? {
            return Err(SinkError::NotTether {
                path: path.to_owned(),
                found,
            });
        }
        Ok(CsvSink {
            file,
            buf: Vec::with_capacity(ROW_BUFFER),
            path: path.to_owned(),
            fsync,
            committed: len,
            past_committed: false,
            batch_bytes: 0,
            batch_rows: 0,
            open: false,
            header_pending: false,
            notes: Vec::new(),
            rows: 0,
            failing: None,
            fields: Vec::new(),
            kinds: kinds::Kinds::default(),
            told_kinds: false,
            time: None,
            device: None,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record rows committed since opening.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether writing is failing now (the last batch failed).
    pub fn failing(&self) -> bool {
        self.failing.is_some()
    }

    /// Marker rows waiting for a batch that commits.
    pub fn pending_notes(&self) -> usize {
        self.notes.iter().filter(|&&b| b == b'\n').count()
    }

    /// Starts a batch. Its rows become durable together at [`Batch::commit`]; if anything
    /// fails, or the batch is dropped uncommitted, the file is as it was before it.
    pub fn batch(&mut self) -> Batch<'_, CsvSink> {
        Batch::new(self)
    }

    /// Cuts the file back to `len` bytes and syncs it: recovery's repair of a torn last row
    /// (see [`crate::recover`]). Only between batches.
    pub(crate) fn cut_back(&mut self, len: u64) -> Result<(), SinkError> {
        let r = self.file.set_len(len).and_then(|()| self.file.sync_all());
        r.map_err(|e| self.io(e))?;
        self.committed = len;
        Ok(())
    }

    fn io(&self, source: io::Error) -> SinkError {
        SinkError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens a batch: cuts off what a failed one may have left, and puts the marker rows
    /// still pending first.
    fn begin(&mut self) -> io::Result<()> {
        if self.past_committed {
            self.file.set_len(self.committed)?;
            self.past_committed = false;
        }
        self.open = true;
        self.header_pending = self.committed == 0;
        if !self.notes.is_empty() {
            self.header(1);
            self.buf.extend_from_slice(&self.notes);
        }
        Ok(())
    }

    /// The header, if the open batch starts the file: the fixed columns and `fields` more.
    fn header(&mut self, fields: usize) {
        if !std::mem::take(&mut self.header_pending) {
            return;
        }
        self.buf.extend_from_slice(FIXED_COLUMNS.as_bytes());
        for i in 1..=fields {
            self.buf.extend_from_slice(b",field_");
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
        }
        self.buf.push(b'\n');
    }

    /// Hands the buffer to the file once it is full.
    fn spill(&mut self) -> io::Result<()> {
        if self.buf.len() >= ROW_BUFFER {
            self.hand_over()?;
        }
        Ok(())
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.past_committed = true;
            self.file.write_all(&self.buf)?;
            self.batch_bytes += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Makes the open batch durable to the promised degree.
    fn finish(&mut self) -> io::Result<()> {
        self.hand_over()?;
        let wrote = self.batch_bytes > 0;
        if self.fsync && wrote {
            self.file.sync_data()?;
        }
        self.committed += self.batch_bytes;
        self.past_committed = false;
        self.batch_bytes = 0;
        self.rows += self.batch_rows;
        self.batch_rows = 0;
        self.notes.clear();
        self.kinds.commit();
        self.open = false;
        // An empty batch proves nothing about the disk. (The name is made only then: a
        // commit is on every turn's path.)
        if wrote && self.failing.is_some() {
            let what = format!("CSV file {}", self.path.display());
            Failing::over(&mut self.failing, &what, "batches");
        }
        Ok(())
    }

    /// Drops the open batch: the file back to its length at the last commit, the header due
    /// again if the batch had it, marker rows kept pending.
    fn cut_off(&mut self) {
        self.buf.clear();
        self.batch_bytes = 0;
        self.batch_rows = 0;
        self.kinds.rollback();
        self.open = false;
        if self.past_committed {
            match self.file.set_len(self.committed) {
                Ok(()) => self.past_committed = false,
                // Tried again before the next batch, which fails until it works.
                Err(e) => debug!(
                    "CSV file {}: cutting a failed batch off: {e}",
                    self.path.display()
                ),
            }
        }
    }

    /// A batch failed with `e`: rolls it back, and logs the first failure of an episode
    /// (later ones at debug level, or when the reason changes).
    fn fail(&mut self, e: io::Error) -> SinkError {
        self.cut_off();
        let what = format!("CSV file {}", self.path.display());
        Failing::record(&mut self.failing, &what, &e, "", false);
        self.io(e)
    }

    /// A row of the fixed columns (`seq` as given) and one field already rendered.
    fn one_field_row(&mut self, time: SystemTime, device: &[u8], seq: &[u8]) {
        self.header(1);
        self.buf.extend_from_slice(
            humantime::format_rfc3339_micros(time)
                .to_string()
                .as_bytes(),
        );
        self.buf.push(b',');
        csv_field(&mut self.buf, b"", device);
        self.buf.push(b',');
        self.buf.extend_from_slice(seq);
        self.buf.push(b',');
    }
}

impl CsvSink {
    /// Opens the batch on its first use.
    fn ready(&mut self) -> Result<(), SinkError> {
        if !self.open {
            if let Err(e) = self.begin() {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }
}

impl Sink for CsvSink {
    fn write(
        &mut self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        self.ready()?;
        let s = self;
        // A declaration, or a record of a kind: the kind's texts (one file has no room for
        // several kinds' names: `--csv-dir` has).
        let declared = match payload {
            [tether_core::record::TYPED, b, ..]
                if *b == tether_core::record::kind::DECLARATION
                    || *b >= tether_core::record::kind::KIND =>
            {
                Some(s.kind_texts(device, payload))
            }
            _ => None,
        };
        if s.header_pending {
            s.fields.clear();
            match &declared {
                Some(texts) => s.fields.extend(texts.iter().cloned()),
                None => render_fields(payload, &mut s.fields),
            }
            s.header(s.fields.len());
        }
        let time = match &s.time {
            Some((t, text)) if *t == time => text,
            _ => {
                let text = humantime::format_rfc3339_micros(time).to_string();
                &s.time.insert((time, text)).1
            }
        };
        let device = match s.device {
            Some((d, text)) if d == device => text,
            _ => {
                let mut text = [0u8; 8];
                for (i, b) in device.to_be_bytes().into_iter().enumerate() {
                    text[2 * i] = HEX[usize::from(b >> 4)];
                    text[2 * i + 1] = HEX[usize::from(b & 15)];
                }
                s.device = Some((device, text));
                text
            }
        };
        // Time, hex device and decimal seq never need quoting.
        let buf = &mut s.buf;
        buf.reserve(64 + 2 * payload.len());
        buf.extend_from_slice(time.as_bytes());
        buf.push(b',');
        buf.extend_from_slice(&device);
        buf.push(b',');
        buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        match declared {
            Some(texts) => {
                for t in texts {
                    buf.push(b',');
                    csv_field(buf, b"", t.as_bytes());
                }
            }
            None => write_fields(payload, buf),
        }
        buf.push(b'\n');
        s.batch_rows += 1;
        s.spill().map_err(|e| s.fail(e))
    }

    /// A row: time, peer, chunk number, and the chunk as one field (text as it is, anything
    /// else `<binary HEX>`).
    fn write_raw(
        &mut self,
        time: SystemTime,
        peer: &str,
        seq: u32,
        chunk: &[u8],
    ) -> Result<(), SinkError> {
        self.ready()?;
        self.one_field_row(
            time,
            peer.as_bytes(),
            itoa::Buffer::new().format(seq).as_bytes(),
        );
        match std::str::from_utf8(chunk) {
            Ok(text) => text_field(&mut self.buf, text),
            Err(_) => binary_field(&mut self.buf, chunk),
        }
        self.buf.push(b'\n');
        self.batch_rows += 1;
        self.spill().map_err(|e| self.fail(e))
    }

    /// A marker row: time, device, an empty seq, and `text`.
    fn write_note(&mut self, time: SystemTime, device: u32, text: &str) -> Result<(), SinkError> {
        self.ready()?;
        self.header(1);
        let start = self.buf.len();
        self.one_field_row(time, format!("{device:08x}").as_bytes(), b"");
        csv_field(&mut self.buf, b"", text.as_bytes());
        self.buf.push(b'\n');
        self.notes.extend_from_slice(&self.buf[start..]);
        self.spill().map_err(|e| self.fail(e))
    }

    /// Handed to the operating system, and with `fsync` on disk.
    fn commit(&mut self) -> Result<(), SinkError> {
        self.ready()?;
        self.finish().map_err(|e| self.fail(e))
    }

    fn rollback(&mut self) {
        if self.open {
            self.cut_off();
        }
    }

    fn recover(&mut self) -> Result<crate::recover::Recovered, crate::recover::RecoverError> {
        let found = crate::recover::recover(self)?;
        for (device, declaration) in &found.declarations {
            if let Ok(schema) = kinds::Schema::parse(declaration) {
                self.kinds.restore(*device, schema);
            }
        }
        Ok(found)
    }

    fn describe(&self) -> String {
        format!("CSV file {}", self.path.display())
    }
}

impl CsvSink {
    /// The texts of a declaration or a record of a kind of `device`: a declaration is
    /// `<declared kind ID NAME: FIELDS>` and `<declaration HEX>` (what recovery reads back);
    /// a record of a declared kind its values; what cannot be read says why.
    fn kind_texts(&mut self, device: u32, payload: &[u8]) -> Vec<String> {
        match self.kinds.classify(device, payload) {
            kinds::Classified::Declaration(schema) => {
                if !std::mem::replace(&mut self.told_kinds, true) {
                    info!(
                        "CSV file {}: device {device:08x} declares its record kinds ({}); one \
                         file has their values under field_1, field_2, …: --csv-dir DIR names \
                         the columns, a file per kind",
                        self.path.display(),
                        schema.describe()
                    );
                }
                let texts = vec![
                    format!("<declared kind {} {}>", schema.id, schema.describe()),
                    format!("<declaration {}>", kinds::hex(&schema.declaration)),
                ];
                self.kinds.see(device, schema);
                texts
            }
            kinds::Classified::Kind(_, values) => values.iter().map(kinds::text).collect(),
            kinds::Classified::Other(o) => o.texts(payload),
        }
    }
}

/// What a non-empty file begins with, for the error, if it is not a Tether CSV (`None`:
/// it is one, or a header cut short before its line end).
fn foreign(file: &File, len: u64) -> io::Result<Option<String>> {
    if len == 0 {
        return Ok(None);
    }
    let mut head = vec![0u8; len.min(MAX_HEADER) as usize];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    let tether = match head.iter().position(|&b| b == b'\n') {
        Some(end) => is_header(&head[..end]),
        None => got as u64 == len && is_header_start(&head),
    };
    if tether {
        return Ok(None);
    }
    let line = &head[..head.iter().position(|&b| b == b'\n').unwrap_or(head.len())];
    let (line, crlf) = match line.strip_suffix(b"\r") {
        Some(l) => (l, " (ending in CR LF)"),
        None => (line, ""),
    };
    Ok(Some(match std::str::from_utf8(line) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\t') => {
            let shown: String = text.chars().take(80).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            format!("its first line is \"{shown}{more}\"{crlf}")
        }
        _ => "it does not begin with a line of text".to_owned(),
    }))
}

/// The header Tether writes, with as many fields as there are, never ends: every header is
/// this up to a field boundary.
fn header_chars() -> impl Iterator<Item = u8> {
    FIXED_COLUMNS
        .bytes()
        .chain((1u32..).flat_map(|i| format!(",field_{i}").into_bytes()))
}

/// `line` (without its LF) is a header Tether writes.
fn is_header(line: &[u8]) -> bool {
    let Some(mut rest) = line.strip_prefix(FIXED_COLUMNS.as_bytes()) else {
        return false;
    };
    let mut i = 1u32;
    while !rest.is_empty() {
        let field = format!(",field_{i}");
        match rest.strip_prefix(field.as_bytes()) {
            Some(r) => rest = r,
            None => return false,
        }
        i += 1;
    }
    true
}

/// `bytes` are the beginning of a header (a file created and cut off before its header's
/// line end).
fn is_header_start(bytes: &[u8]) -> bool {
    bytes.iter().copied().eq(header_chars().take(bytes.len()))
}

/// The process holding `file`'s `flock`, from `/proc/locks` (its id as the system shows it
/// in this process's namespace; none if it shows none).
fn lock_holder(file: &File) -> Holder {
    file.metadata()
        .map_or_else(|_| Holder::default(), |meta| lock_holder_of(&meta))
}

/// The process holding an `flock` on the file `meta` describes (a CSV file, a serial port),
/// from `/proc/locks`; none if the system shows none.
pub(crate) fn lock_holder_of(meta: &std::fs::Metadata) -> Holder {
    let (major, minor) = (
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
    );
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Holder::default();
    };
    // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF" (a waiter has "->" after "1:").
    for line in locks.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 6 || w[1] != "FLOCK" {
            continue;
        }
        let mut id = w[5].split(':');
        let (Some(maj), Some(min), Some(ino)) = (id.next(), id.next(), id.next()) else {
            continue;
        };
        let same = u64::from_str_radix(maj, 16) == Ok(major)
            && u64::from_str_radix(min, 16) == Ok(minor)
            && ino.parse::<u64>() == Ok(meta.ino());
        if !same {
            continue;
        }
        let pid = w[4].parse::<u32>().ok().filter(|&p| p > 0);
        let command = pid.and_then(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .ok()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
        });
        return Holder { pid, command };
    }
    Holder::default()
}

/// Appends one CSV field, `prefix` then `f`, quoted if it must be (`prefix` needs none).
fn csv_field(out: &mut Vec<u8>, prefix: &[u8], f: &[u8]) {
    if !f.iter().any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.extend_from_slice(prefix);
        out.extend_from_slice(f);
        return;
    }
    out.push(b'"');
    out.extend_from_slice(prefix);
    for &b in f {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Appends a text field: one more `<` in front of one that begins with `<` (fields that
/// begin with a single `<` are Tether's own).
fn text_field(out: &mut Vec<u8>, f: &str) {
    let prefix: &[u8] = if f.starts_with('<') { b"<" } else { b"" };
    csv_field(out, prefix, f.as_bytes());
}

/// Appends a binary payload's field: `<binary HEX>`.
fn binary_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(b"<binary ");
    hex_into(out, bytes);
    out.push(b'>');
}

/// A text record without the one line end (LF or CRLF) that may end it.
fn strip_line_end(text: &str) -> &str {
    text.strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text)
}

/// A line whose fields are its comma-separated pieces, none needing quotes or a `<`
/// doubled: written as it is (the common case, and the listener's hot path).
fn is_plain(line: &[u8]) -> bool {
    let mut field_start = true;
    for &b in line {
        if matches!(b, b'"' | b'\r' | b'\n') || (b == b'<' && field_start) {
            return false;
        }
        field_start = b == b',';
    }
    true
}

/// The fields of `line` if it is exactly one CSV record (RFC 4180), `None` otherwise.
fn split_record(line: &str) -> Option<Vec<std::borrow::Cow<'_, str>>> {
    use std::borrow::Cow;
    let b = line.as_bytes();
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            let mut field = String::new();
            i += 1;
            loop {
                let close = i + line[i..].find('"')?;
                field.push_str(&line[i..close]);
                if b.get(close + 1) == Some(&b'"') {
                    field.push('"');
                    i = close + 2;
                } else {
                    i = close + 1;
                    break;
                }
            }
            fields.push(Cow::Owned(field));
        } else {
            let end = line[i..].find(',').map_or(line.len(), |e| i + e);
            let field = &line[i..end];
            if field.bytes().any(|c| matches!(c, b'"' | b'\r' | b'\n')) {
                return None;
            }
            fields.push(Cow::Borrowed(field));
            i = end;
        }
        match b.get(i) {
            None => return Some(fields),
            Some(b',') => i += 1,
            Some(_) => return None,
        }
    }
}

/// Appends the record's fields to a row, each preceded by a comma, exactly as
/// [`render_fields`] renders them and RFC 4180 quotes them, without building a `String`
/// per field.
fn write_fields(payload: &[u8], buf: &mut Vec<u8>) {
    if let Some(fields) = Fields::new(payload) {
        for f in fields {
            buf.push(b',');
            let _ = match f {
                Ok(Field::Bool(v)) => write!(buf, "{v}"),
                Ok(Field::U8(v)) => write!(buf, "{v}"),
                Ok(Field::U16(v)) => write!(buf, "{v}"),
                Ok(Field::U32(v)) => write!(buf, "{v}"),
                Ok(Field::U64(v)) => write!(buf, "{v}"),
                Ok(Field::I8(v)) => write!(buf, "{v}"),
                Ok(Field::I16(v)) => write!(buf, "{v}"),
                Ok(Field::I32(v)) => write!(buf, "{v}"),
                Ok(Field::I64(v)) => write!(buf, "{v}"),
                Ok(Field::F32(v)) => write!(buf, "{v}"),
                Ok(Field::F64(v)) => write!(buf, "{v}"),
                Ok(Field::Str(v)) => {
                    text_field(buf, v);
                    Ok(())
                }
                Ok(Field::Bytes(v)) => {
                    hex_into(buf, v);
                    Ok(())
                }
                Err(e) => {
                    let text = format!("<{e}>");
                    csv_field(buf, b"", text.as_bytes());
                    Ok(())
                }
            };
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        buf.push(b',');
        binary_field(buf, payload);
        return;
    };
    let line = strip_line_end(text);
    if line.is_empty() {
        return;
    }
    if is_plain(line.as_bytes()) {
        buf.push(b',');
        buf.extend_from_slice(line.as_bytes());
        return;
    }
    match split_record(line) {
        Some(fields) => {
            for f in fields {
                buf.push(b',');
                text_field(buf, &f);
            }
        }
        None => {
            buf.push(b',');
            text_field(buf, line);
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(buf: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        buf.push(HEX[usize::from(b >> 4)]);
        buf.push(HEX[usize::from(b & 15)]);
    }
}

/// The record's fields as the texts a CSV reader reads back from its row (see the module
/// documentation for the rules).
pub fn render_fields(payload: &[u8], out: &mut Vec<String>) {
    let text_field = |f: &str| {
        if f.starts_with('<') {
            format!("<{f}")
        } else {
            f.to_owned()
        }
    };
    if let Some(fields) = Fields::new(payload) {
        for f in fields {
            out.push(match f {
                Ok(Field::Bool(v)) => v.to_string(),
                Ok(Field::U8(v)) => v.to_string(),
                Ok(Field::U16(v)) => v.to_string(),
                Ok(Field::U32(v)) => v.to_string(),
                Ok(Field::U64(v)) => v.to_string(),
                Ok(Field::I8(v)) => v.to_string(),
                Ok(Field::I16(v)) => v.to_string(),
                Ok(Field::I32(v)) => v.to_string(),
                Ok(Field::I64(v)) => v.to_string(),
                Ok(Field::F32(v)) => v.to_string(),
                Ok(Field::F64(v)) => v.to_string(),
                Ok(Field::Str(v)) => text_field(v),
                Ok(Field::Bytes(v)) => hex(v),
                // A malformed tail is kept, visibly, rather than dropped.
                Err(e) => format!("<{e}>"),
            });
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        out.push(format!("<binary {}>", hex(payload)));
        return;
    };
    let line = strip_line_end(text);
    if line.is_empty() {
        return;
    }
    match split_record(line) {
        Some(fields) => out.extend(fields.iter().map(|f| text_field(f))),
        None => out.push(text_field(line)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::record::RecordWriter;

    fn fields(p: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        render_fields(p, &mut v);
        v
    }

    /// The row the `csv` crate writes for the fields [`render_fields`] gives.
    fn csv_crate_row(device: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut w = csv::WriterBuilder::new()
            .flexible(true)
            .from_writer(Vec::new());
        let mut row = vec![
            "2023-11-14T22:13:20.123456Z".to_owned(),
            format!("{device:08x}"),
            seq.to_string(),
        ];
        row.extend(fields(payload));
        w.write_record(&row).unwrap();
        w.into_inner().unwrap()
    }

    fn our_row(device: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut buf = b"2023-11-14T22:13:20.123456Z".to_vec();
        write!(buf, ",{device:08x},{seq}").unwrap();
        write_fields(payload, &mut buf);
        buf.push(b'\n');
        buf
    }

    /// What a CSV reader reads back from a row of ours: the fields after the fixed three.
    fn read_back(row: &[u8]) -> Vec<String> {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(row);
        let rec = r.records().next().unwrap().unwrap();
        rec.iter().skip(3).map(str::to_owned).collect()
    }

    /// A temporary directory of its own for a test.
    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456)
    }

    proptest::proptest! {
        /// The hand-written row writer quotes exactly as the `csv` crate does, and a CSV
        /// reader reads back exactly what [`render_fields`] says: for any payload, text made
        /// of CSV's special characters, and typed records.
        #[test]
        fn rows_match_the_csv_crate(
            device: u32,
            seq: u32,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            text in "[a-z0-9,\"\r\n <]{0,24}",
            num: i64,
            real: f64,
            word in "[a-z,\"< ]{0,8}",
        ) {
            for payload in [bytes.as_slice(), text.as_bytes()] {
                let row = our_row(device, seq, payload);
                proptest::prop_assert_eq!(&row, &csv_crate_row(device, seq, payload));
                if !fields(payload).is_empty() {
                    proptest::prop_assert_eq!(read_back(&row), fields(payload));
                }
            }
            let mut buf = [0u8; 128];
            let mut w = RecordWriter::new(&mut buf);
            w.i64(num).unwrap().f64(real).unwrap().str(&word).unwrap().bytes(&bytes[..bytes.len().min(8)]).unwrap();
            let typed = w.finish();
            proptest::prop_assert_eq!(our_row(device, seq, typed), csv_crate_row(device, seq, typed));
            let cut = &typed[..typed.len() - 1];
            proptest::prop_assert_eq!(our_row(device, seq, cut), csv_crate_row(device, seq, cut));
        }

        /// Nothing of a text record is lost: joined back, its fields give its text (for text
        /// that is one CSV record, re-quoted), and a text field never reads as Tether's own.
        #[test]
        fn a_text_record_is_written_whole(text in "[a-z0-9,\"\r\n <]{1,24}") {
            let f = fields(text.as_bytes());
            let line = strip_line_end(&text);
            for field in &f {
                proptest::prop_assert!(!field.starts_with('<') || field.starts_with("<<"), "{:?}", f);
            }
            let unescaped: Vec<String> = f.iter().map(|s| s.strip_prefix('<').map_or(s.clone(), str::to_owned)).collect();
            match split_record(line) {
                Some(parsed) if !line.is_empty() => {
                    proptest::prop_assert_eq!(unescaped, parsed.iter().map(|c| c.to_string()).collect::<Vec<_>>());
                }
                _ if line.is_empty() => proptest::prop_assert!(f.is_empty()),
                _ => proptest::prop_assert_eq!(unescaped, vec![line.to_owned()]),
            }
        }
    }

    /// A sink that keeps what was committed, and fails the writes it is told to: the
    /// seam's rules, independent of CSV.
    #[derive(Debug, Default)]
    struct Kept {
        open: Vec<u32>,
        committed: Vec<u32>,
        fail_at: Option<u32>,
    }

    impl Sink for Kept {
        fn write(&mut self, _: SystemTime, _: u32, seq: u32, _: &[u8]) -> Result<(), SinkError> {
            if self.fail_at == Some(seq) {
                self.rollback();
                return Err(SinkError::RolledBack {
                    sink: "failing".into(),
                });
            }
            self.open.push(seq);
            Ok(())
        }
        fn write_note(&mut self, _: SystemTime, _: u32, _: &str) -> Result<(), SinkError> {
            Ok(())
        }
        fn write_raw(&mut self, _: SystemTime, _: &str, _: u32, _: &[u8]) -> Result<(), SinkError> {
            Ok(())
        }
        fn commit(&mut self) -> Result<(), SinkError> {
            self.committed.append(&mut self.open);
            Ok(())
        }
        fn rollback(&mut self) {
            self.open.clear();
        }
        fn recover(&mut self) -> Result<crate::recover::Recovered, crate::recover::RecoverError> {
            Ok(Default::default())
        }
        fn describe(&self) -> String {
            "kept".into()
        }
    }

    /// Through `dyn Sink`, as the listener writes: a batch is committed whole, dropped
    /// uncommitted it is rolled back, and after a failure it refuses more writes (naming the
    /// sink) and is rolled back, so nothing of it is kept.
    #[test]
    fn a_batch_is_committed_whole_or_rolled_back_through_any_sink() {
        let mut kept = Kept::default();
        let sink: &mut dyn Sink = &mut kept;
        let mut b = Batch::new(&mut *sink);
        b.write(t0(), 1, 0, b"a").unwrap();
        b.write(t0(), 1, 1, b"b").unwrap();
        b.commit().unwrap();
        let mut b = Batch::new(&mut *sink);
        b.write(t0(), 1, 2, b"c").unwrap();
        drop(b);
        // Nothing is left open for whatever commits next.
        sink.commit().unwrap();
        assert_eq!(kept.committed, [0, 1], "nothing of the dropped batch");
        kept.fail_at = Some(4);
        let sink: &mut dyn Sink = &mut kept;
        let mut b = Batch::new(&mut *sink);
        b.write(t0(), 1, 3, b"d").unwrap();
        assert!(b.write(t0(), 1, 4, b"e").is_err());
        let e = b.write(t0(), 1, 5, b"f").unwrap_err().to_string();
        assert!(e.starts_with("kept: this batch failed"), "{e}");
        assert!(b.commit().is_err());
        sink.commit().unwrap();
        assert_eq!(kept.committed, [0, 1], "nothing of the failed batch");
    }

    #[test]
    fn typed_text_and_binary_records_become_columns() {
        let mut buf = [0u8; 64];
        let mut w = RecordWriter::new(&mut buf);
        w.f32(21.5)
            .unwrap()
            .u16(1013)
            .unwrap()
            .bool(true)
            .unwrap()
            .str("a,b")
            .unwrap();
        assert_eq!(fields(w.finish()), ["21.5", "1013", "true", "a,b"]);
        assert_eq!(fields(b"21.5,\"x, y\",ok\n"), ["21.5", "x, y", "ok"]);
        assert!(fields(b"").is_empty());
    }

    /// The rules of the module documentation, one example each.
    #[test]
    fn text_rules_lose_nothing_and_binary_is_never_text() {
        // Binary payloads are marked; text that looks like hex stays text.
        assert_eq!(fields(&[0xFF, 0x00]), ["<binary ff00>"]);
        assert_eq!(fields(b"ff00"), ["ff00"]);
        // A text field beginning with `<` gets one more: never mistaken for Tether's own.
        assert_eq!(fields(b"<binary ff00>"), ["<<binary ff00>"]);
        assert_eq!(fields(b"a,<5,<<"), ["a", "<<5", "<<<"]);
        assert_eq!(fields(b"a<b,x<"), ["a<b", "x<"]);
        // One line end is the line's end; a second is text.
        assert_eq!(fields(b"1,2\n"), ["1", "2"]);
        assert_eq!(fields(b"1,2\r\n"), ["1", "2"]);
        assert_eq!(fields(b"1,2\n\n"), ["1,2\n"]);
        assert_eq!(fields(b"\n"), Vec::<String>::new());
        // Not one CSV record: written whole, as one field.
        assert_eq!(fields(b"a,\"b"), ["a,\"b"]);
        assert_eq!(fields(b"5\" pipe,ok"), ["5\" pipe,ok"]);
        assert_eq!(fields(b"\"a\"b,c"), ["\"a\"b,c"]);
        assert_eq!(fields(b"a\n\"b\""), ["a\n\"b\""]);
        assert_eq!(fields(b"a,b\nc"), ["a,b\nc"]);
        // One CSV record: its fields, quotes undone.
        assert_eq!(
            fields(b"\"a\nb\",\"say \"\"hi\"\"\","),
            ["a\nb", "say \"hi\"", ""]
        );
        // Typed strings follow the text rule; a malformed tail is Tether's.
        let mut buf = [0u8; 32];
        let mut w = RecordWriter::new(&mut buf);
        w.str("<x").unwrap().bytes(&[1, 2]).unwrap();
        let mut typed = w.finish().to_vec();
        assert_eq!(fields(&typed), ["<<x", "0102"]);
        typed.push(0x68);
        assert_eq!(fields(&typed)[2], "<unknown field tag 0x68 at byte 9>");
    }

    #[test]
    fn rows_of_alternating_devices_and_times_carry_their_own() {
        let d = dir("alt");
        let path = d.join("out.csv");
        let t = t0();
        let t2 = t + std::time::Duration::from_micros(1);
        let mut s = CsvSink::open(&path, false).unwrap();
        let mut b = s.batch();
        for (time, device, seq) in [(t, 0xA, 0), (t, 0xB, 0), (t2, 0xB, 1), (t2, 0xA, 1)] {
            b.write(time, device, seq, b"x").unwrap();
        }
        b.commit().unwrap();
        assert_eq!(s.rows(), 4);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "host_time,device,seq,field_1\n\
             2023-11-14T22:13:20.123456Z,0000000a,0,x\n\
             2023-11-14T22:13:20.123456Z,0000000b,0,x\n\
             2023-11-14T22:13:20.123457Z,0000000b,1,x\n\
             2023-11-14T22:13:20.123457Z,0000000a,1,x\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writes_a_header_once_and_appends() {
        let d = dir("append");
        let path = d.join("out.csv");
        for round in 0..2 {
            let mut s = CsvSink::open(&path, round == 1).unwrap();
            let mut b = s.batch();
            b.write(t0(), 0xD00D, round, b"1,2").unwrap();
            b.commit().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "host_time,device,seq,field_1,field_2\n\
             2023-11-14T22:13:20.123456Z,0000d00d,0,1,2\n\
             2023-11-14T22:13:20.123456Z,0000d00d,1,1,2\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_batch_dropped_uncommitted_leaves_nothing() {
        let d = dir("drop");
        let path = d.join("out.csv");
        let mut s = CsvSink::open(&path, false).unwrap();
        {
            let mut b = s.batch();
            // More than the buffer, so that part of it reached the file.
            for i in 0..5_000 {
                b.write(t0(), 1, i, b"a-row-of-some-length,12345").unwrap();
            }
            assert!(std::fs::metadata(&path).unwrap().len() > 0);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(s.rows(), 0);
        // The header comes with the next batch that commits.
        let mut b = s.batch();
        b.write(t0(), 1, 0, b"x").unwrap();
        b.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "host_time,device,seq,field_1\n2023-11-14T22:13:20.123456Z,00000001,0,x\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A disk that is full: the commit fails with the system's reason (so nothing is
    /// acknowledged), and nothing of the batch stays behind to be written twice.
    #[test]
    fn a_full_disk_fails_the_commit_and_keeps_nothing() {
        let mut s = CsvSink::open(Path::new("/dev/full"), false).unwrap();
        let mut b = s.batch();
        b.write(SystemTime::UNIX_EPOCH, 1, 0, b"x").unwrap();
        let e = b.commit().unwrap_err().to_string();
        assert!(e.contains("/dev/full") && e.contains("space"), "{e}");
        assert!(s.buf.is_empty() && s.failing());
    }

    /// On a small tmpfs: a batch that does not fit fails whole (the file as it was after
    /// the last commit, header and marker rows included), and once there is room the same
    /// records are written once. Skipped, with a note, where tmpfs cannot be mounted.
    #[test]
    fn a_batch_that_does_not_fit_is_cut_off_whole() {
        let d = dir("tmpfs");
        let mnt = d.join("small");
        std::fs::create_dir_all(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: mounting a tmpfs must work"
            );
            eprintln!("skipped: cannot mount a tmpfs here (not root?)");
            return;
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let _unmount = Unmount(mnt.clone());
        let path = mnt.join("f.csv");
        let mut s = CsvSink::open(&path, true).unwrap();
        // A marker row, and a batch that fits.
        let mut b = s.batch();
        b.write_note(t0(), 7, "<a marker>").unwrap();
        b.commit().unwrap();
        let mut b = s.batch();
        for i in 0..100 {
            b.write(t0(), 7, i, b"fits").unwrap();
        }
        b.commit().unwrap();
        let before = std::fs::read(&path).unwrap();
        // A batch of 200 KB into 64 KiB: it fails, and leaves the file as it was.
        let row = "r".repeat(200);
        let mut b = s.batch();
        let mut failed = None;
        for i in 100..1_100 {
            if let Err(e) = b.write(t0(), 7, i, row.as_bytes()) {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => {
                drop(b);
                e
            }
            None => b.commit().unwrap_err(),
        };
        assert!(e.to_string().contains("space"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file as before the batch"
        );
        assert_eq!(s.rows(), 100);
        // An empty batch commits, and says nothing about the disk.
        s.batch().commit().unwrap();
        assert!(s.failing());
        // A marker row during the failure stays pending and comes first in the next batch.
        let mut b = s.batch();
        b.write_note(t0(), 7, &format!("<{}>", "m".repeat(70_000)))
            .unwrap_err();
        drop(b);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(s.pending_notes(), 1);
        let mut b = s.batch();
        let r = b.write_note(t0(), 7, "<small>").and_then(|()| b.commit());
        assert!(r.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(s.pending_notes(), 2);
        // Room again: the marker rows, then the records, once each.
        assert!(std::process::Command::new("mount")
            .args(["-o", "remount,size=2m"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success());
        let mut b = s.batch();
        for i in 100..1_100 {
            b.write(t0(), 7, i, row.as_bytes()).unwrap();
        }
        b.commit().unwrap();
        assert!(!s.failing());
        assert_eq!((s.rows(), s.pending_notes()), (1_100, 0));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "host_time,device,seq,field_1");
        assert_eq!(lines.len(), 1 + 1 + 100 + 2 + 1_000);
        assert!(lines[102].ends_with(&format!("<{}>", "m".repeat(70_000))));
        assert!(lines[103].ends_with("<small>"));
        let seqs: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.split(',').nth(2)?.parse().ok())
            .collect();
        assert_eq!(seqs, (0..1_100).collect::<Vec<u32>>());
        drop(s);
        drop(_unmount);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The header a batch wrote goes with it when it fails: the next batch writes it again.
    #[test]
    fn a_failed_first_batch_takes_its_header_with_it() {
        let d = dir("header");
        let path = d.join("out.csv");
        let mut s = CsvSink::open(&path, false).unwrap();
        let mut b = s.batch();
        b.write(t0(), 1, 0, b"1,2,3").unwrap();
        drop(b);
        let mut b = s.batch();
        b.write(t0(), 1, 0, b"x").unwrap();
        b.commit().unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("host_time,device,seq,field_1\n"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_tether_csv_is_refused_and_left_as_it_is() {
        let d = dir("foreign");
        let path = d.join("u.csv");
        for (content, says) in [
            (
                b"name,age\nbob,42\nalice,3".as_slice(),
                "its first line is \"name,age\"",
            ),
            (b"host_time,device,seq,field_2\n", "field_2"),
            (
                b"host_time,device,seq,field_1\r\n",
                "host_time,device,seq,field_1",
            ),
            (b"host_time,device\n", "\"host_time,device\""),
            (
                b"h\x00\x01\x02\xff\xfe",
                "does not begin with a line of text",
            ),
            (b"hostess", "\"hostess\""),
        ] {
            std::fs::write(&path, content).unwrap();
            let e = CsvSink::open(&path, false).unwrap_err();
            assert!(matches!(e, SinkError::NotTether { .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.contains(&path.display().to_string()) && e.contains(says),
                "{e}"
            );
            assert!(e.contains("host_time,device,seq then ,field_1"), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), content, "left as it was");
        }
        for ok in [
            "",
            "host_time,device,seq\n",
            "host_time,device,seq,field_1,field_2\nt,1,2,a,b\n",
            "host_time,dev",
            "host_time,device,seq,field_1,fi",
        ] {
            std::fs::write(&path, ok).unwrap();
            CsvSink::open(&path, false).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_second_sink_on_the_same_file_is_refused_while_the_first_is_open() {
        let d = dir("lock");
        let path = d.join("out.csv");
        let first = CsvSink::open(&path, false).unwrap();
        let e = CsvSink::open(&path, false).unwrap_err();
        let SinkError::InUse { holder, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(holder.pid, Some(std::process::id()), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(first);
        CsvSink::open(&path, false).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// One file: a declaration is a row (read back at start), records of the kind their
    /// values under `field_N`, records that cannot be read say why.
    #[test]
    fn one_file_writes_a_kinds_values_and_reads_its_declaration_back() {
        use tether_core::record::kind::{FieldDef, Kind, KindWriter, Type};
        const K: Kind = Kind {
            id: 1,
            name: "env",
            fields: &[
                FieldDef::new("t", Type::F32).unit("°C"),
                FieldDef::new("n", Type::U8),
            ],
        };
        const D: [u8; K.declaration_len()] = K.declaration();
        let reading = |t: f32, n: u8| {
            let mut buf = [0u8; 16];
            let mut w = KindWriter::new(&K, &mut buf);
            w.f32(t).unwrap().u8(n).unwrap();
            w.finish().unwrap().to_vec()
        };
        let d = dir("kinds");
        let path = d.join("out.csv");
        {
            let mut s = CsvSink::open(&path, false).unwrap();
            let mut b = s.batch();
            b.write(t0(), 7, 0, &reading(1.0, 1)).unwrap();
            b.write(t0(), 7, 1, &D).unwrap();
            b.write(t0(), 7, 2, &reading(21.5, 2)).unwrap();
            b.commit().unwrap();
        }
        let mut s = CsvSink::open(&path, false).unwrap();
        let r = s.recover().unwrap();
        assert_eq!(r.declarations, [(7, D.to_vec())]);
        let mut b = s.batch();
        b.write(t0(), 7, 3, &reading(-2.0, 3)).unwrap();
        b.write(t0(), 7, 4, &reading(-2.0, 3)[..4]).unwrap();
        b.write(t0(), 8, 0, &reading(0.5, 9)).unwrap();
        b.commit().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "host_time,device,seq,field_1");
        let rows: Vec<&str> = lines[1..].iter().map(|l| &l[28..]).collect();
        assert_eq!(
            rows,
            [
                "00000007,0,<record of undeclared kind 1: 1e810000803f01>",
                "00000007,1,\"<declared kind 1 env: t f32 °C, n u8>\",<declaration 1e0e0103656e768a017403c2b04302016e>",
                "00000007,2,21.5,2",
                "00000007,3,-2,3",
                "00000007,4,<record of kind env: record ends inside the value at byte 2>",
                "00000008,0,<record of undeclared kind 1: 1e810000003f09>",
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn header_lines_are_recognised() {
        assert!(is_header(b"host_time,device,seq"));
        assert!(is_header(b"host_time,device,seq,field_1,field_2,field_3"));
        let long: String = (1..=12).map(|i| format!(",field_{i}")).collect();
        assert!(is_header(format!("{FIXED_COLUMNS}{long}").as_bytes()));
        assert!(!is_header(b"host_time,device,seq,"));
        assert!(!is_header(b"host_time,device,seq,field_1,field_3"));
        assert!(!is_header(b"host_time,device,seq,field_10"));
        assert!(is_header_start(b"host_time,device,seq,field_1,field_"));
        assert!(!is_header_start(b"host_time,device,seq,field_1,field_1"));
        assert!(!is_header_start(b"host_time,device,seq,field_2"));
    }
}
