//! The PostgreSQL sink (`--sink postgres://USER@HOST:PORT/DB`): one table per record kind,
//! with typed columns from the kind's declaration (`PROTOCOL.md` 10.5), created if missing;
//! a batch is one transaction, and its records are acknowledged only once it committed.
//!
//! ```text
//!  device tasks (listener) ── submit: rows encoded for COPY BINARY into the next
//!        │ transaction, in the caller's thread (never waits)
//!        ▼                                   ▲ committed: each device's count, and a wake
//!  the database thread: takes everything handed over since the last transaction; BEGIN;
//!  CREATE TABLE IF NOT EXISTS (new kinds); COPY … FROM STDIN BINARY (a table at a time);
//!  INSERT the declarations, marker rows and each device's position (tether_devices);
//!  COMMIT — on its own connection, reconnecting with backoff
//! ```
//!
//! The sink is a [`Deferred`] one: a device's records are released (acknowledged) once the
//! transaction that holds them committed, while the listener goes on handing over the next
//! ones. Rows of many devices share a transaction, and the server works on one while the
//! listener encodes the next: one device's batch a transaction, each waited for under the
//! sink's lock, left the server idle about a quarter of the time (`scripts/pg-bench.sh`:
//! 193,000 to 215,000 records/s before, 223,000 to 262,000 after, on the same machine).
//!
//! # Tables
//!
//! | table | rows |
//! |---|---|
//! | `NAME` (a kind's name; `NAME_XXXXXXXX` when `NAME` has other columns) | its records: `host_time timestamptz, device text, session integer, seq bigint`, then one column per field (`bool` boolean; `u8`, `i8`, `i16` smallint; `u16`, `i32` integer; `u32`, `i64` bigint; `u64` numeric(20); `f32` real; `f64` double precision; `str` text; `bytes` bytea), a unit in the column's comment; primary key (`device`, `session`, `seq`) |
//! | `tether_records` | the records of no declared kind (text, fields, what cannot be read): `fields text[]`, the CSV's texts |
//! | `tether_kinds` | the declarations: `kind`, `name`, `table_name`, `fields` (for people), `declaration bytea` |
//! | `tether_notes` | the marker rows: `note text` |
//! | `tether_devices` | each device's numbering (`session`) and last record committed (`last_seq`), in the same transaction as its records: what a listener that starts recovers |
//!
//! `session` is the device's numbering (0, then one more each time it numbers its records
//! afresh under the same identity), as in `--csv-dir` and MQTT.
//!
//! # Exactly once
//!
//! A record is acknowledged only after its transaction committed; a transaction that fails
//! leaves nothing, and is tried again (a listener that dies first never acknowledged its
//! records: their devices send them again). At start the sink reads `tether_devices`, so a
//! device resuming after a listener crash skips what is committed. If the connection breaks
//! while a COMMIT is on its way, its outcome is unknown: the next transaction first reads
//! the devices' committed positions again and leaves out what is already there, so a record
//! is never inserted twice (the primary key would refuse it, and the batch with it).
//!
//! # The database down, slow or refusing
//!
//! A transaction that fails (no connection, a statement refused, a time-out after 30 s) is
//! tried again, whole, with what was handed over since (0.1 s doubling to 5 s): nothing of
//! it is acknowledged meanwhile, and the devices stop when their window is full. The sink
//! reconnects with backoff (0.1 s doubling to 5 s), logs the first failure of an episode
//! and its recovery. Only one listener writes a database at a time (an
//! advisory lock).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::SinkExt;
use tether_core::record::kind::Type;
use tether_core::record::Field;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info, warn};

use super::kinds::{Classified, Kinds, Schema};
use super::{Failing, Sink, SinkError};
use crate::deferred::{Deferred, LinkState};
use crate::recover::{RecoverError, Recovered};

/// How long a statement may take before the connection is given up.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How a time-out's message says it: the connection is given up then.
const STUCK: &str = "no answer within";
/// Reconnection backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stopping listener waits for the last transaction (its marker rows).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a listener waits for the lock before saying another one holds it.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// The advisory lock a listener holds on its database (`'tether'` as a number).
const LOCK_KEY: i64 = 0x7465_7468_6572;

/// Where the records go: a libpq URL, without its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The URL as given (it holds no password).
    pub url: String,
    /// `passfile=FILE` of the URL (libpq's), if any.
    pub passfile: Option<PathBuf>,
    /// A file holding the password alone (`--password-file`), if any.
    pub password_file: Option<PathBuf>,
}

/// Why the PostgreSQL sink cannot work.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL is not one this sink takes.
    #[error("{0}")]
    Url(String),
    /// The password file could not be read, or is readable by others.
    #[error("password file {path}: {why}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The database refused or failed: its message.
    #[error("{0}")]
    Database(String),
    /// Another listener holds the database's lock.
    #[error(
        "another tether listener is writing this database (it has held its advisory lock for \
         10 s): a second one would mix its records into the first one's. Stop that one, or \
         use another database"
    )]
    InUse,
}

impl std::str::FromStr for PgUrl {
    type Err = PgError;

    /// `postgres://USER@HOST[:PORT]/DB[?OPTIONS]` (or `postgresql://`); a password in it is
    /// refused: it would be in the shell's history and the process list.
    fn from_str(s: &str) -> Result<Self, PgError> {
        let rest = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
            .ok_or_else(|| {
                PgError::Url(format!("{s}: a PostgreSQL URL begins with postgres://"))
            })?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return Err(PgError::Url(
                    "the URL holds a password: it is never taken from the command line (the \
                     shell's history, the process list). Set PGPASSWORD, or put it in a file: \
                     --password-file FILE (mode 600), or libpq's PGPASSFILE / ~/.pgpass"
                        .into(),
                ));
            }
        }
        let mut passfile = None;
        let mut kept = Vec::new();
        let (base, query) = match s.split_once('?') {
            Some((b, q)) => (b, q),
            None => (s, ""),
        };
        for kv in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "password" => {
                    return Err(PgError::Url(
                        "password= in the URL: it is never taken from the command line; set \
                         PGPASSWORD, or use --password-file FILE or PGPASSFILE"
                            .into(),
                    ))
                }
                "passfile" => passfile = Some(PathBuf::from(v)),
                "sslmode" if !matches!(v, "disable" | "prefer" | "allow") => {
                    return Err(PgError::Url(format!(
                        "sslmode={v}: this sink connects without TLS (a database on this host \
                         or its network); use sslmode=disable, or a TLS tunnel"
                    )))
                }
                "sslmode" => {}
                _ => kept.push(kv),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| PgError::Url(format!("{s}: {e}")))?;
        if config.get_dbname().is_none() {
            return Err(PgError::Url(format!(
                "{s}: name the database: postgres://USER@HOST:PORT/DATABASE"
            )));
        }
        Ok(PgUrl {
            url,
            passfile,
            password_file: None,
        })
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl PgUrl {
    /// The connection's configuration, the password found as libpq finds it (an explicit
    /// file first, then PGPASSWORD, then the passfile: `passfile=`, PGPASSFILE, or
    /// ~/.pgpass).
    fn config(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut c: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| PgError::Url(format!("{}: {e}", self.url)))?;
        if c.get_user().is_none() {
            if let Ok(u) = std::env::var("PGUSER").or_else(|_| std::env::var("USER")) {
                c.user(&u);
            }
        }
        if c.get_hosts().is_empty() {
            c.host("localhost");
        }
        c.application_name("tether listen");
        // The server's notices ("relation … already exists, skipping") are not for the log.
        let options = match c.get_options() {
            Some(o) => format!("{o} -c client_min_messages=warning"),
            None => "-c client_min_messages=warning".to_owned(),
        };
        c.options(&options);
        c.connect_timeout(Duration::from_secs(10));
        if let Some(p) = &self.password_file {
            c.password(read_password_file(p)?);
        } else if let Ok(p) = std::env::var("PGPASSWORD") {
            c.password(p);
        } else if let Some(p) = self.passfile_password(&c)? {
            c.password(p);
        }
        Ok(c)
    }

    /// The password of libpq's password file for this connection, if one matches.
    fn passfile_password(&self, c: &tokio_postgres::Config) -> Result<Option<String>, PgError> {
        let path = match (&self.passfile, std::env::var_os("PGPASSFILE")) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => PathBuf::from(p),
            (None, None) => match std::env::var_os("HOME") {
                Some(h) => Path::new(&h).join(".pgpass"),
                None => return Ok(None),
            },
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432).to_string();
        let db = c.get_dbname().unwrap_or_default();
        let user = c.get_user().unwrap_or_default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let parts = split_pgpass(line);
            if parts.len() != 5 {
                continue;
            }
            let ok = |p: &str, v: &str| p == "*" || p == v;
            if ok(&parts[0], &host)
                && ok(&parts[1], &port)
                && ok(&parts[2], db)
                && ok(&parts[3], user)
            {
                return Ok(Some(parts[4].clone()));
            }
        }
        Ok(None)
    }
}

/// A line of a pgpass file: five fields separated by `:`, `\` escaping `:` and `\`.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("one field at least").push(n);
                }
            }
            ':' => out.push(String::new()),
            c => out.last_mut().expect("one field at least").push(c),
        }
    }
    out
}

/// The password in `path` (its first line), which must not be readable by other users.
fn read_password_file(path: &Path) -> Result<String, PgError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |why: String| PgError::PasswordFile {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "it is accessible to other users (mode {mode:03o}); run `chmod 600 {}`",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(err("it is empty; its first line is the password".into()));
    }
    Ok(line.to_owned())
}

// ---- rows, encoded for COPY … FROM STDIN (FORMAT binary) ------------------------------

/// PostgreSQL's epoch, 2000-01-01T00:00:00Z, in Unix microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The SQL type of a field type.
fn sql_type(t: Type) -> &'static str {
    match t {
        Type::Bool => "boolean",
        Type::U8 | Type::I8 | Type::I16 => "smallint",
        Type::U16 | Type::I32 => "integer",
        Type::U32 | Type::I64 => "bigint",
        Type::U64 => "numeric(20)",
        Type::F32 => "real",
        Type::F64 => "double precision",
        Type::Str => "text",
        Type::Bytes => "bytea",
    }
}

/// A `"quoted"` identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A `'quoted'` literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Appends one field of a binary COPY row: its length, then its bytes.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends the four fixed columns: `host_time`, `device`, `session`, `seq`.
fn put_fixed(
    out: &mut Vec<u8>,
    fields: i16,
    time: SystemTime,
    device: u32,
    session: u32,
    seq: u32,
) {
    out.extend_from_slice(&fields.to_be_bytes());
    let micros = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    };
    put(out, &(micros - PG_EPOCH_MICROS).to_be_bytes());
    put(out, format!("{device:08x}").as_bytes());
    put(out, &(session as i32).to_be_bytes());
    put(out, &i64::from(seq).to_be_bytes());
}

/// An unsigned integer as PostgreSQL's binary numeric: base-10000 digits, most significant
/// first.
fn numeric(mut v: u64) -> Vec<u8> {
    let mut digits = Vec::new();
    while v > 0 {
        digits.push((v % 10_000) as i16);
        v /= 10_000;
    }
    digits.reverse();
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&(digits.len() as i16 - 1).max(0).to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes()); // positive
    out.extend_from_slice(&0i16.to_be_bytes()); // no decimals
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

/// Appends a value in its column's binary form.
fn put_value(out: &mut Vec<u8>, v: &Field<'_>) {
    match *v {
        Field::Bool(b) => put(out, &[u8::from(b)]),
        Field::U8(x) => put(out, &i16::from(x).to_be_bytes()),
        Field::I8(x) => put(out, &i16::from(x).to_be_bytes()),
        Field::I16(x) => put(out, &x.to_be_bytes()),
        Field::U16(x) => put(out, &i32::from(x).to_be_bytes()),
        Field::I32(x) => put(out, &x.to_be_bytes()),
        Field::U32(x) => put(out, &i64::from(x).to_be_bytes()),
        Field::I64(x) => put(out, &x.to_be_bytes()),
        Field::U64(x) => put(out, &numeric(x)),
        Field::F32(x) => put(out, &x.to_bits().to_be_bytes()),
        Field::F64(x) => put(out, &x.to_bits().to_be_bytes()),
        Field::Str(s) => put(out, s.as_bytes()),
        Field::Bytes(b) => put(out, b),
    }
}

/// A `text[]` in binary form.
fn text_array(texts: &[String]) -> Vec<u8> {
    const TEXT_OID: i32 = 25;
    let mut out = Vec::new();
    if texts.is_empty() {
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&TEXT_OID.to_be_bytes());
        return out;
    }
    out.extend_from_slice(&1i32.to_be_bytes()); // dimensions
    out.extend_from_slice(&0i32.to_be_bytes()); // no nulls
    out.extend_from_slice(&TEXT_OID.to_be_bytes());
    out.extend_from_slice(&(texts.len() as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    for t in texts {
        put(&mut out, t.as_bytes());
    }
    out
}

/// Rows of one table in a batch, and which record each is.
#[derive(Debug, Default)]
struct Rows {
    /// Encoded rows, one after the other.
    bytes: Vec<u8>,
    /// (device, session, seq, where its row ends in `bytes`).
    keys: Vec<(u32, u32, u32, usize)>,
}

impl Rows {
    fn mark(&mut self, device: u32, session: u32, seq: u32) {
        self.keys.push((device, session, seq, self.bytes.len()));
    }

    /// Appends `later`'s rows after these.
    fn append(&mut self, later: Rows) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&later.bytes);
        self.keys.extend(
            later
                .keys
                .into_iter()
                .map(|(d, session, seq, end)| (d, session, seq, base + end)),
        );
    }

    /// The rows without those `done` says are committed already.
    fn without(&self, done: &impl Fn(u32, u32, u32) -> bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len());
        let mut start = 0;
        for &(d, session, seq, end) in &self.keys {
            if !done(d, session, seq) {
                out.extend_from_slice(&self.bytes[start..end]);
            }
            start = end;
        }
        out
    }
}

/// What one transaction writes.
#[derive(Debug, Default)]
struct Job {
    /// Rows of kinds' tables, by the kind's shape (the declaration without its id).
    kinds: HashMap<Vec<u8>, (Arc<Schema>, Rows)>,
    /// Rows of `tether_records`.
    records: Rows,
    /// Declarations: (time, device, session, seq, schema).
    declarations: Vec<(SystemTime, u32, u32, u32, Arc<Schema>)>,
    /// Marker rows: (time, device, session, text).
    notes: Vec<(SystemTime, u32, u32, String)>,
    /// Each device's numbering and last record after the batch.
    devices: HashMap<u32, (u32, u32)>,
    /// Records of each device in the job.
    counts: HashMap<u32, usize>,
}

impl Job {
    fn is_empty(&self) -> bool {
        self.kinds.is_empty()
            && self.records.keys.is_empty()
            && self.declarations.is_empty()
            && self.notes.is_empty()
    }

    /// Rows handed over after this job's go into it, after its own: one transaction.
    fn append(&mut self, later: Job) {
        for (shape, (schema, rows)) in later.kinds {
            self.kinds
                .entry(shape)
                .or_insert_with(|| (schema, Rows::default()))
                .1
                .append(rows);
        }
        self.records.append(later.records);
        self.declarations.extend(later.declarations);
        self.notes.extend(later.notes);
        self.devices.extend(later.devices);
        for (d, n) in later.counts {
            *self.counts.entry(d).or_default() += n;
        }
    }

    fn rows(&self) -> usize {
        self.records.keys.len() + self.kinds.values().map(|k| k.1.keys.len()).sum::<usize>()
    }
}

/// Requests to the database thread.
enum Request {
    /// Take what is pending and commit it (with what failed before).
    Take,
    /// Read what the database holds at start.
    Recover(mpsc::SyncSender<Result<RecoveredDb, String>>),
    /// A last try at what is pending (marker rows), then stop.
    Close(mpsc::SyncSender<()>),
}

/// What the database holds at start.
#[derive(Debug, Default)]
struct RecoveredDb {
    /// device → (session, last seq if any).
    devices: HashMap<u32, (u32, Option<u32>)>,
    /// (device, session, declaration, table), oldest first.
    declarations: Vec<(u32, u32, Vec<u8>, String)>,
}

/// A device's numbering and its last record, if any.
type Position = (u32, Option<u32>);

/// Records handed over and not yet taken by the database thread.
#[derive(Debug, Default)]
struct Pending {
    kinds: Kinds,
    /// Each device's numbering and its last record handed over.
    devices: HashMap<u32, Position>,
    job: Job,
    /// A [`Request::Take`] is on its way: the next record needs none.
    queued: bool,
}

/// A callback that wakes a device's task.
type Wake = Arc<dyn Fn() + Send + Sync>;

/// The side of the sink the listener hands records to ([`Deferred`]): rows are encoded as
/// they arrive, into the next transaction, while the database thread commits the one
/// before (one device's batch a transaction, each waited for under the sink's lock, left
/// the server idle a quarter of the time: `scripts/pg-bench.sh`).
pub struct PgCommitter {
    url: PgUrl,
    requests: mpsc::Sender<Request>,
    pending: Mutex<Pending>,
    /// Records of each device committed and not yet taken by [`Deferred::take_durable`].
    durable: Mutex<HashMap<u32, usize>>,
    wakers: Mutex<HashMap<u32, Wake>>,
}

impl std::fmt::Debug for PgCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCommitter")
            .field("url", &self.url)
            .finish()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PgCommitter {
    /// Asks the database thread to take what is pending, unless it was asked already.
    fn queue(&self, p: &mut Pending) {
        if !std::mem::replace(&mut p.queued, true) {
            let _ = self.requests.send(Request::Take);
        }
    }

    /// What is pending, for the database thread.
    fn take(&self) -> Job {
        let mut p = locked(&self.pending);
        p.queued = false;
        std::mem::take(&mut p.job)
    }

    /// `job`'s records are committed: counted durable, and their devices woken.
    fn committed(&self, job: &Job) {
        let woken: Vec<Wake> = {
            let mut durable = locked(&self.durable);
            for (&d, &n) in &job.counts {
                *durable.entry(d).or_default() += n;
            }
            let wakers = locked(&self.wakers);
            job.counts
                .keys()
                .filter_map(|d| wakers.get(d).cloned())
                .collect()
        };
        for w in woken {
            w();
        }
    }

    fn note(&self, time: SystemTime, device: u32, text: &str) {
        let mut p = locked(&self.pending);
        let session = p.devices.get(&device).map_or(0, |d| d.0);
        p.job.notes.push((time, device, session, text.to_owned()));
        self.queue(&mut p);
    }
}

impl Deferred for PgCommitter {
    fn submit(
        &self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        let mut guard = locked(&self.pending);
        let p = &mut *guard;
        let classified = p.kinds.classify(device, payload);
        // A record at or before the device's last one starts a new numbering.
        let d = p.devices.entry(device).or_insert((0, None));
        if d.1.is_some_and(|l| (seq.wrapping_sub(l) as i32) <= 0) {
            d.0 = d.0.wrapping_add(1);
            info!(
                "device {device:08x} numbers its records afresh (record {seq}): its rows are \
                 session {} from now on",
                d.0
            );
        }
        d.1 = Some(seq);
        let session = d.0;
        let job = &mut p.job;
        job.devices.insert(device, (session, seq));
        *job.counts.entry(device).or_default() += 1;
        match classified {
            Classified::Declaration(schema) => {
                let schema = p.kinds.see(device, schema);
                job.declarations.push((time, device, session, seq, schema));
            }
            Classified::Kind(schema, values) => {
                let (_, rows) = job
                    .kinds
                    .entry(schema.shape().to_vec())
                    .or_insert_with(|| (schema.clone(), Rows::default()));
                put_fixed(
                    &mut rows.bytes,
                    4 + values.len() as i16,
                    time,
                    device,
                    session,
                    seq,
                );
                for v in &values {
                    put_value(&mut rows.bytes, v);
                }
                rows.mark(device, session, seq);
            }
            Classified::Other(o) => {
                let texts = o.texts(payload);
                let rows = &mut job.records;
                put_fixed(&mut rows.bytes, 5, time, device, session, seq);
                put(&mut rows.bytes, &text_array(&texts));
                rows.mark(device, session, seq);
            }
        }
        // Handed over means kept: a transaction that fails is tried again, whole.
        p.kinds.commit();
        self.queue(p);
        Ok(())
    }

    fn take_durable(&self, device: u32) -> usize {
        locked(&self.durable).remove(&device).unwrap_or(0)
    }

    fn on_durable(&self, device: u32, wake: Box<dyn Fn() + Send + Sync>) {
        locked(&self.wakers).insert(device, Arc::from(wake));
    }

    fn link_state(&self, _: &[LinkState]) {}

    fn close(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.requests.send(Request::Close(tx)).is_ok() {
            let _ = rx.recv_timeout(CLOSE_WAIT);
        }
    }
}

/// The `postgres://` sink. See the [module documentation](self). Its records go to the
/// [`PgCommitter`], which releases them once committed; marker rows go with the next
/// transaction.
#[derive(Debug)]
pub struct PgSink {
    committer: Arc<PgCommitter>,
}

impl PgSink {
    /// Connects (checking the password and taking the database's lock), creates Tether's
    /// own tables if missing. Errors: a connection refused, a wrong password, another
    /// listener on the database.
    pub fn open(url: &PgUrl) -> Result<PgSink, SinkError> {
        let config = url.config().map_err(|e| pg(url, e))?;
        let (tx, rx) = mpsc::channel();
        let committer = Arc::new(PgCommitter {
            url: url.clone(),
            requests: tx,
            pending: Mutex::new(Pending::default()),
            durable: Mutex::new(HashMap::new()),
            wakers: Mutex::new(HashMap::new()),
        });
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let name = url.to_string();
        // The thread holds the committer weakly: dropping the sink drops its sender, and
        // the thread ends.
        let weak = Arc::downgrade(&committer);
        std::thread::Builder::new()
            .name("tether-postgres".into())
            .spawn(move || worker(config, name, rx, ready_tx, weak))
            .map_err(|e| {
                pg(
                    url,
                    PgError::Database(format!("cannot start its thread: {e}")),
                )
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(pg(url, e)),
            Err(_) => return Err(pg(url, PgError::Database("its thread stopped".into()))),
        }
        Ok(PgSink { committer })
    }
}

fn pg(url: &PgUrl, e: PgError) -> SinkError {
    SinkError::Postgres {
        url: url.to_string(),
        source: e,
    }
}

impl Sink for PgSink {
    fn write(
        &mut self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        self.committer.submit(time, device, seq, payload)
    }

    fn write_note(&mut self, time: SystemTime, device: u32, text: &str) -> Result<(), SinkError> {
        self.committer.note(time, device, text);
        Ok(())
    }

    fn write_raw(
        &mut self,
        time: SystemTime,
        peer: &str,
        _seq: u32,
        chunk: &[u8],
    ) -> Result<(), SinkError> {
        // The tutorial's raw protocol has no device identity to key rows by.
        let _ = (time, chunk);
        Err(pg(
            &self.committer.url,
            PgError::Url(format!(
                "{peer}: --raw writes a CSV file only (--csv), not a database"
            )),
        ))
    }

    /// Nothing to wait for: records are durable when the [`PgCommitter`] says so.
    fn commit(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn rollback(&mut self) {}

    fn recover(&mut self) -> Result<Recovered, RecoverError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let got = self
            .committer
            .requests
            .send(Request::Recover(tx))
            .ok()
            .and_then(|()| rx.recv().ok())
            .unwrap_or_else(|| Err("the database thread stopped".into()));
        let db = got.map_err(|e| RecoverError::Database {
            sink: self.describe(),
            error: e,
        })?;
        let mut found = Recovered::default();
        let mut p = locked(&self.committer.pending);
        for (&device, &(session, last)) in &db.devices {
            p.devices.insert(device, (session, last));
            if let Some(l) = last {
                found.last_seq.insert(device, l);
            }
        }
        let mut kinds = 0;
        for (device, session, decl, _table) in db.declarations {
            if p.devices.get(&device).is_some_and(|d| d.0 == session) {
                if let Ok(s) = Schema::parse(&decl) {
                    p.kinds.restore(device, s);
                    kinds += 1;
                }
            }
        }
        info!(
            "PostgreSQL {}: {} devices known, {kinds} declared kinds read back; a device \
             resuming its session continues after its last committed record",
            self.committer.url,
            db.devices.len()
        );
        Ok(found)
    }

    fn describe(&self) -> String {
        format!("PostgreSQL {}", self.committer.url)
    }

    fn deferred(&self) -> Option<Arc<dyn Deferred>> {
        Some(self.committer.clone())
    }
}

// ---- the database thread -----------------------------------------------------------------

/// The connection, and what the thread knows about the database.
struct Db {
    config: tokio_postgres::Config,
    name: String,
    client: Option<Client>,
    /// When to try connecting again, and the wait after that.
    retry_at: Instant,
    backoff: Duration,
    last_error: String,
    /// A kind's shape → its table.
    tables: HashMap<Vec<u8>, String>,
    /// The outcome of the last COMMIT is unknown (the connection broke with it in flight).
    doubt: bool,
    /// When the last COMMIT was sent (for the log's timings).
    commit_started: Instant,
    /// The open transaction's BEGIN is not sent yet: it goes with the first COPY.
    begin_pending: bool,
}

fn worker(
    config: tokio_postgres::Config,
    name: String,
    requests: mpsc::Receiver<Request>,
    ready: mpsc::SyncSender<Result<(), PgError>>,
    committer: std::sync::Weak<PgCommitter>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(PgError::Database(format!("no runtime: {e}"))));
            return;
        }
    };
    let mut db = Db {
        config,
        name,
        client: None,
        retry_at: Instant::now(),
        backoff: BACKOFF_MIN,
        last_error: String::new(),
        tables: HashMap::new(),
        doubt: false,
        commit_started: Instant::now(),
        begin_pending: false,
    };
    let first = rt.block_on(async {
        db.connect().await?;
        db.load_tables().await
    });
    let failed = first.is_err();
    let _ = ready.send(first);
    if failed {
        return;
    }
    // A transaction that failed is tried again, with what was handed over since, until it
    // commits: its records were handed over once and are not handed over again.
    let mut carried = Job::default();
    let mut retry: Option<Instant> = None;
    let mut wait = BACKOFF_MIN;
    let mut failing: Option<Failing> = None;
    let what = format!("PostgreSQL {}", db.name);
    loop {
        let req = match retry {
            None => match requests.recv() {
                Ok(r) => Some(r),
                Err(_) => break,
            },
            Some(at) => match requests.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let closing = match req {
            Some(Request::Recover(reply)) => {
                let r = rt.block_on(db.recover());
                let _ = reply.send(r);
                continue;
            }
            Some(Request::Close(reply)) => Some(reply),
            Some(Request::Take) | None => None,
        };
        // Waiting to try again: what is handed over meanwhile joins that try.
        if closing.is_none() && retry.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        let Some(committer) = committer.upgrade() else {
            break;
        };
        carried.append(committer.take());
        if !carried.is_empty() {
            match rt.block_on(db.commit(&carried)) {
                Ok(()) => {
                    committer.committed(&std::mem::take(&mut carried));
                    retry = None;
                    wait = BACKOFF_MIN;
                    Failing::over(&mut failing, &what, "transactions");
                }
                Err(e) => {
                    let then = " (and stop once their window is full); trying again with backoff";
                    Failing::record(&mut failing, &what, &e, then, false);
                    retry = Some(Instant::now() + wait);
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
            }
        }
        if let Some(reply) = closing {
            let _ = reply.send(());
            break;
        }
    }
    if let Some(c) = db.client.take() {
        drop(c);
    }
}

/// A database error in words: its message and detail, or the driver's.
fn words(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_owned(),
        },
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", words(&e))),
        Err(_) => Err(format!(
            "{what}: {STUCK} {} s (the database is stuck or overloaded)",
            STATEMENT_TIMEOUT.as_secs()
        )),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tether_devices (
    device text PRIMARY KEY,
    session integer NOT NULL,
    last_seq bigint,
    updated timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS tether_kinds (
    id bigint GENERATED ALWAYS AS IDENTITY,
    host_time timestamptz NOT NULL,
    device text NOT NULL,
    session integer NOT NULL,
    seq bigint NOT NULL,
    kind smallint NOT NULL,
    name text NOT NULL,
    table_name text NOT NULL,
    fields text NOT NULL,
    declaration bytea NOT NULL,
    PRIMARY KEY (device, session, seq));
CREATE TABLE IF NOT EXISTS tether_records (
    host_time timestamptz NOT NULL,
    device text NOT NULL,
    session integer NOT NULL,
    seq bigint NOT NULL,
    fields text[] NOT NULL,
    PRIMARY KEY (device, session, seq));
CREATE TABLE IF NOT EXISTS tether_notes (
    host_time timestamptz NOT NULL,
    device text NOT NULL,
    session integer NOT NULL,
    note text NOT NULL);
";

impl Db {
    /// Connects if the backoff allows, taking the advisory lock and creating Tether's
    /// tables.
    async fn connect(&mut self) -> Result<(), PgError> {
        let (client, connection) = match self.config.connect(NoTls).await {
            Ok(c) => c,
            Err(e) if words(&e).contains("password missing") => {
                return Err(PgError::Database(
                    "the server asks for a password and none was given: set PGPASSWORD, or \
                     use --password-file FILE or PGPASSFILE / ~/.pgpass"
                        .into(),
                ))
            }
            Err(e) => return Err(PgError::Database(words(&e))),
        };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("PostgreSQL connection ended: {e}");
            }
        });
        // A listener killed a moment ago holds the lock until the server notices its
        // connection is gone (at once if it was idle, after its statement if not): wait a
        // little before saying another one is writing.
        let waiting = Instant::now();
        let mut said = false;
        loop {
            let locked = timed(
                "taking the lock",
                client.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY]),
            )
            .await
            .map_err(PgError::Database)?;
            if locked.try_get::<_, bool>(0).unwrap_or(false) {
                break;
            }
            if waiting.elapsed() >= LOCK_WAIT {
                return Err(PgError::InUse);
            }
            if !std::mem::replace(&mut said, true) {
                info!(
                    "PostgreSQL {}: another connection holds the database's lock; waiting up \
                     to {} s for it (a listener that just stopped, or one still running)",
                    self.name,
                    LOCK_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        timed("creating Tether's tables", client.batch_execute(SCHEMA))
            .await
            .map_err(PgError::Database)?;
        self.client = Some(client);
        self.backoff = BACKOFF_MIN;
        Ok(())
    }

    /// The kinds' tables known: from the declarations written.
    async fn load_tables(&mut self) -> Result<(), PgError> {
        let c = self.client.as_ref().expect("connected");
        let rows = timed(
            "reading the kinds",
            c.query(
                "SELECT DISTINCT declaration, table_name FROM tether_kinds",
                &[],
            ),
        )
        .await
        .map_err(PgError::Database)?;
        for r in rows {
            let decl: Vec<u8> = r.get(0);
            let table: String = r.get(1);
            if let Ok(s) = Schema::parse(&decl) {
                self.tables.insert(s.shape().to_vec(), table);
            }
        }
        Ok(())
    }

    /// The client, connecting again if the backoff allows.
    async fn client(&mut self) -> Result<&Client, String> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.doubt = true;
        }
        if self.client.is_none() {
            if Instant::now() < self.retry_at {
                // The same words while waiting, so that the sink logs a failure once.
                return Err(self.last_error.clone());
            }
            if let Err(e) = self.connect().await {
                self.last_error = e.to_string();
                self.retry_at = Instant::now() + self.backoff;
                warn!(
                    "PostgreSQL {}: cannot connect: {e}; trying again in {:.1} s",
                    self.name,
                    self.backoff.as_secs_f64()
                );
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                return Err(self.last_error.clone());
            }
            info!("PostgreSQL {}: connected", self.name);
        }
        Ok(self.client.as_ref().expect("connected"))
    }

    /// A failure: a broken connection is dropped (and retried after the backoff).
    fn failed(&mut self, e: String) -> String {
        // Only a connection that just broke starts a wait: a failure to connect scheduled
        // its own retry, and a batch refused while waiting must not push it further.
        let Some(c) = &self.client else {
            return e;
        };
        // A statement that timed out may still run: the connection is given up, and with it
        // its transaction (unless a COMMIT was on its way: then `doubt` says so).
        if e.contains(STUCK) || c.is_closed() {
            self.client = None;
            self.last_error = e.clone();
            self.retry_at = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
        e
    }

    async fn recover(&mut self) -> Result<RecoveredDb, String> {
        let c = self.client().await?;
        let mut out = RecoveredDb::default();
        let rows = timed(
            "reading the devices",
            c.query("SELECT device, session, last_seq FROM tether_devices", &[]),
        )
        .await?;
        for r in rows {
            let device: String = r.get(0);
            let Ok(device) = u32::from_str_radix(&device, 16) else {
                continue;
            };
            let session: i32 = r.get(1);
            let last: Option<i64> = r.get(2);
            out.devices
                .insert(device, (session as u32, last.map(|l| l as u32)));
        }
        let rows = timed(
            "reading the declarations",
            c.query(
                "SELECT device, session, declaration, table_name FROM tether_kinds ORDER BY id",
                &[],
            ),
        )
        .await?;
        for r in rows {
            let device: String = r.get(0);
            let Ok(device) = u32::from_str_radix(&device, 16) else {
                continue;
            };
            let session: i32 = r.get(1);
            out.declarations
                .push((device, session as u32, r.get(2), r.get(3)));
        }
        Ok(out)
    }

    async fn commit(&mut self, job: &Job) -> Result<(), String> {
        let rows = job.rows();
        let started = Instant::now();
        let r = self.transaction(job).await;
        debug!(
            "PostgreSQL {}: a batch of {rows} rows {} in {:.2} ms (COMMIT {:.2} ms)",
            self.name,
            if r.is_ok() { "committed" } else { "failed" },
            started.elapsed().as_secs_f64() * 1e3,
            self.commit_started.elapsed().as_secs_f64() * 1e3
        );
        r.map_err(|e| self.failed(e))
    }

    /// The table of `schema`: known, or found or created (inside the open transaction).
    async fn table(&mut self, schema: &Schema) -> Result<String, String> {
        if let Some(t) = self.tables.get(schema.shape()) {
            return Ok(t.clone());
        }
        let c = self.client.as_ref().ok_or("not connected")?;
        let columns: Vec<(String, String)> = schema
            .columns
            .iter()
            .map(|col| (col.column.clone(), sql_type(col.ty).to_owned()))
            .collect();
        let candidates = [
            schema.name.to_ascii_lowercase(),
            format!(
                "{}_{}",
                schema.name.to_ascii_lowercase(),
                schema.fingerprint()
            ),
        ];
        for table in candidates {
            let rows = timed(
                "looking the table up",
                c.query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                     FROM pg_attribute a JOIN pg_class t ON a.attrelid = t.oid \
                     WHERE t.relname = $1 AND t.relnamespace = 'public'::regnamespace \
                     AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                    &[&table],
                ),
            )
            .await?;
            let have: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let mut want: Vec<(String, String)> = vec![
                ("host_time".into(), "timestamp with time zone".into()),
                ("device".into(), "text".into()),
                ("session".into(), "integer".into()),
                ("seq".into(), "bigint".into()),
            ];
            want.extend(columns.iter().cloned());
            if have.is_empty() {
                let cols: Vec<String> = columns
                    .iter()
                    .map(|(n, t)| format!("{} {t}", ident(n)))
                    .collect();
                let mut sql = format!(
                    "CREATE TABLE {} (host_time timestamptz NOT NULL, device text NOT NULL, \
                     session integer NOT NULL, seq bigint NOT NULL{}{}, PRIMARY KEY (device, \
                     session, seq));",
                    ident(&table),
                    if cols.is_empty() { "" } else { ", " },
                    cols.join(", ")
                );
                sql += &format!(
                    "COMMENT ON TABLE {} IS {};",
                    ident(&table),
                    literal(&format!("Tether record kind {}", schema.describe()))
                );
                for col in &schema.columns {
                    if let Some(u) = &col.unit {
                        sql += &format!(
                            "COMMENT ON COLUMN {}.{} IS {};",
                            ident(&table),
                            ident(&col.column),
                            literal(&format!("unit: {u}"))
                        );
                    }
                }
                timed("creating the table", c.batch_execute(&sql)).await?;
                info!(
                    "PostgreSQL {}: table {table} created for kind {}",
                    self.name,
                    schema.describe()
                );
                return Ok(table);
            }
            let same = have.len() == want.len()
                && have.iter().zip(&want).all(|(h, w)| {
                    h.0 == w.0 && (h.1 == w.1 || (w.1 == "numeric(20)" && h.1 == "numeric(20,0)"))
                });
            if same {
                return Ok(table);
            }
            debug!("table {table} has other columns: {have:?}");
        }
        Err(format!(
            "no table for kind {}: {} and its fingerprinted twin have other columns",
            schema.describe(),
            schema.name
        ))
    }

    async fn transaction(&mut self, job: &Job) -> Result<(), String> {
        // Round trips are what a batch waits for: BEGIN goes with the first COPY when
        // nothing is to be read or created before it, and the devices' positions with the
        // COMMIT.
        let known = job
            .kinds
            .keys()
            .map(Vec::as_slice)
            .chain(job.declarations.iter().map(|d| d.4.shape()))
            .all(|shape| self.tables.contains_key(shape));
        let pipelined = known && !self.doubt;
        {
            let c = self.client().await?;
            if !pipelined {
                timed("BEGIN", c.batch_execute("BEGIN")).await?;
            }
        }
        self.begin_pending = pipelined;
        let r = self.inside(job).await;
        let c = self.client.as_ref().ok_or("the connection broke")?;
        self.commit_started = Instant::now();
        match r {
            Ok((new_tables, positions)) => {
                match timed("COMMIT", c.batch_execute(&format!("{positions}COMMIT"))).await {
                    Ok(()) => {
                        self.doubt = false;
                        self.tables.extend(new_tables);
                        Ok(())
                    }
                    Err(e) => {
                        // The server may have committed before the connection broke.
                        self.doubt = true;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                if !self.begin_pending {
                    let _ = timed("ROLLBACK", c.batch_execute("ROLLBACK")).await;
                }
                Err(e)
            }
        }
    }

    /// Sends the BEGIN not sent yet, if any (before a statement that is not a COPY).
    async fn begin(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.begin_pending) {
            let c = self.client.as_ref().ok_or("not connected")?;
            timed("BEGIN", c.batch_execute("BEGIN")).await?;
        }
        Ok(())
    }

    /// The statements of a transaction; returns the tables it created or found, and the
    /// statement that writes the devices' positions (sent with the COMMIT).
    async fn inside(&mut self, job: &Job) -> Result<(Vec<(Vec<u8>, String)>, String), String> {
        // After a COMMIT of unknown outcome, what the devices have committed decides what
        // is left out.
        let mut done: HashMap<u32, (u32, u32)> = HashMap::new();
        if self.doubt {
            let c = self.client.as_ref().ok_or("not connected")?;
            let names: Vec<String> = job.devices.keys().map(|d| format!("{d:08x}")).collect();
            let rows = timed(
                "reading the devices",
                c.query(
                    "SELECT device, session, last_seq FROM tether_devices WHERE device = ANY($1) \
                     AND last_seq IS NOT NULL",
                    &[&names],
                ),
            )
            .await?;
            for r in rows {
                let d: String = r.get(0);
                let s: i32 = r.get(1);
                let l: i64 = r.get(2);
                if let Ok(d) = u32::from_str_radix(&d, 16) {
                    done.insert(d, (s as u32, l as u32));
                }
            }
        }
        let is_done = |d: u32, session: u32, seq: u32| {
            done.get(&d).is_some_and(|&(s, l)| {
                session < s || (session == s && (seq.wrapping_sub(l) as i32) <= 0)
            })
        };
        let mut created = Vec::new();
        let mut tables: HashMap<Vec<u8>, String> = HashMap::new();
        for s in job
            .declarations
            .iter()
            .map(|d| d.4.clone())
            .chain(job.kinds.values().map(|(s, _)| s.clone()))
        {
            if tables.contains_key(s.shape()) {
                continue;
            }
            let t = self.table(&s).await?;
            if !self.tables.contains_key(s.shape()) {
                created.push((s.shape().to_vec(), t.clone()));
            }
            tables.insert(s.shape().to_vec(), t);
        }
        let c = self.client.as_ref().ok_or("not connected")?;
        for (shape, (schema, rows)) in &job.kinds {
            let table = &tables[shape];
            let mut cols = vec![
                "host_time".to_owned(),
                "device".into(),
                "session".into(),
                "seq".into(),
            ];
            cols.extend(schema.columns.iter().map(|c| ident(&c.column)));
            let body = if self.doubt {
                Cow::Owned(rows.without(&is_done))
            } else {
                Cow::Borrowed(&rows.bytes[..])
            };
            copy(
                c,
                &format!(
                    "COPY {} ({}) FROM STDIN (FORMAT binary)",
                    ident(table),
                    cols.join(", ")
                ),
                body,
                &mut self.begin_pending,
            )
            .await?;
        }
        if !job.records.keys.is_empty() {
            let body = if self.doubt {
                Cow::Owned(job.records.without(&is_done))
            } else {
                Cow::Borrowed(&job.records.bytes[..])
            };
            copy(
                c,
                "COPY tether_records (host_time, device, session, seq, fields) FROM STDIN (FORMAT binary)",
                body,
                &mut self.begin_pending,
            )
            .await?;
        }
        self.begin().await?;
        let c = self.client.as_ref().ok_or("not connected")?;
        for (time, device, session, seq, s) in &job.declarations {
            if is_done(*device, *session, *seq) {
                continue;
            }
            timed(
                "writing a declaration",
                c.execute(
                    "INSERT INTO tether_kinds (host_time, device, session, seq, kind, name, \
                     table_name, fields, declaration) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        time,
                        &format!("{device:08x}"),
                        &(*session as i32),
                        &i64::from(*seq),
                        &i16::from(s.id),
                        &s.name,
                        &tables[s.shape()],
                        &s.describe(),
                        &s.declaration,
                    ],
                ),
            )
            .await?;
        }
        for (time, device, session, text) in &job.notes {
            timed(
                "writing a marker",
                c.execute(
                    "INSERT INTO tether_notes (host_time, device, session, note) VALUES ($1, $2, $3, $4)",
                    &[time, &format!("{device:08x}"), &(*session as i32), text],
                ),
            )
            .await?;
        }
        // The positions as literals (hex ids and numbers): one statement with the COMMIT.
        let mut positions = String::new();
        for (d, (session, last)) in &job.devices {
            positions += if positions.is_empty() {
                "INSERT INTO tether_devices (device, session, last_seq, updated) VALUES "
            } else {
                ", "
            };
            positions += &format!("('{d:08x}', {}, {}, now())", *session as i32, last);
        }
        if !positions.is_empty() {
            positions += " ON CONFLICT (device) DO UPDATE SET session = EXCLUDED.session, \
                          last_seq = EXCLUDED.last_seq, updated = EXCLUDED.updated; ";
        }
        Ok((created, positions))
    }
}

/// `COPY … FROM STDIN (FORMAT binary)` of `rows` (encoded rows, without header or trailer).
/// If `begin`, the transaction's BEGIN is sent first, in the same round trip.
async fn copy(c: &Client, sql: &str, rows: Cow<'_, [u8]>, begin: &mut bool) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut data = Vec::with_capacity(rows.len() + 21);
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    data.extend_from_slice(&0i32.to_be_bytes()); // flags
    data.extend_from_slice(&0i32.to_be_bytes()); // header extension
    data.extend_from_slice(&rows);
    data.extend_from_slice(&(-1i16).to_be_bytes());
    let work = async {
        let sink = c.copy_in::<_, bytes::Bytes>(sql).await?;
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data)).await?;
        sink.finish().await
    };
    if std::mem::take(begin) {
        let (b, r) = tokio::join!(
            timed("BEGIN", c.batch_execute("BEGIN")),
            timed("COPY", work)
        );
        b?;
        return r.map(|_| ());
    }
    timed("COPY", work).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_carry_a_password_and_name_a_database() {
        let u: PgUrl = "postgres://tether@127.0.0.1:5432/t".parse().unwrap();
        assert_eq!(u.url, "postgres://tether@127.0.0.1:5432/t");
        let u: PgUrl = "postgresql://tether@127.0.0.1/t?passfile=/x&connect_timeout=3"
            .parse()
            .unwrap();
        assert_eq!(u.passfile.as_deref(), Some(Path::new("/x")));
        assert_eq!(u.url, "postgresql://tether@127.0.0.1/t?connect_timeout=3");
        for (bad, says) in [
            (
                "postgres://tether:secret@127.0.0.1/t",
                "never taken from the command line",
            ),
            (
                "postgres://tether@127.0.0.1/t?password=x",
                "never taken from the command line",
            ),
            (
                "postgres://tether@127.0.0.1/t?sslmode=require",
                "without TLS",
            ),
            ("postgres://tether@127.0.0.1", "name the database"),
            ("mysql://x/y", "begins with postgres://"),
        ] {
            let e = bad.parse::<PgUrl>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn pgpass_lines_split_on_unescaped_colons() {
        assert_eq!(
            split_pgpass(r"h:5432:db:u:p\:w\\d"),
            ["h", "5432", "db", "u", r"p:w\d"]
        );
    }

    #[test]
    fn numerics_are_base_10000_digits() {
        assert_eq!(numeric(0), [0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            numeric(123_456_789),
            [0, 3, 0, 2, 0, 0, 0, 0, 0, 1, 0x09, 0x29, 0x1A, 0x85]
        );
    }
}
