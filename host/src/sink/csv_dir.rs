//! `--csv-dir DIR`: one CSV file per record kind, its columns named by the kind's
//! declaration (`PROTOCOL.md` 10.5), so that a file is a table a person can open.
//!
//! # The files
//!
//! | file | holds |
//! |---|---|
//! | `NAME.csv` | the records of every device's kind `NAME`: `host_time,device,session,seq`, then one column per field, headed by its name and unit (`temperature (°C)`) |
//! | `NAME.XXXXXXXX.csv` | the same kind name declared with other fields (another device, another firmware): never under the first one's header. `XXXXXXXX` is the CRC-32C of its header line, so it is the same file again after a restart |
//! | `tether-kinds.csv` | the declarations: `host_time,device,session,seq,kind,name,file,fields,declaration` (the id, the name, the file its records go to, the fields for people, the declaration's bytes in hex, which a restarted listener reads back) |
//! | `tether-records.csv` | everything else, as a single `--csv` file writes it (`field_1`, …): text records, fields without a declaration, records that cannot be read (a malformed declaration, an undeclared kind, a record that does not match its declaration), and the marker rows (an empty `seq`) |
//!
//! `session` is the device's numbering: 0 for the first this directory has of the device,
//! one more each time the device numbers its records afresh under the same identity (it
//! lost its state and kept its id: a record at or before its last one). With `device` and
//! `seq` it names the record.
//!
//! A kind name cannot contain `-` or `.`, so no kind's file is one of Tether's own. A file
//! in the directory that does not begin with a Tether header is left alone: a kind whose
//! file it would be goes to `NAME.XXXXXXXX.csv`.
//!
//! # Batches, across files
//!
//! A batch's rows go to the files they belong to, and the batch commits once: every file's
//! rows are written (and with `--fsync` synced), and only then are its records
//! acknowledged. A batch that fails is cut off every file it reached. A crash in the middle
//! of a commit can leave one file with its rows of the batch and another without; since
//! each file is written in order, each holds a prefix of what the batch had for it, so at
//! start the sink knows, file by file, each device's last record, and a record sent again
//! is skipped only if its own file has it ([`Sink::holds`]).
//!
//! While open, the sink holds the lock (`flock`) of every file it writes, and always that
//! of `tether-kinds.csv`: a second listener on the directory is refused.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use tether_core::record::Field;
use tracing::{debug, info, warn};

use super::kinds::{Classified, Kinds, Schema, FIXED};
use super::{Failing, Sink, SinkError};
use crate::recover::{RecoverError, Recovered};

/// The declarations' file.
pub const KINDS_FILE: &str = "tether-kinds.csv";
/// The file of everything that is not a record of a declared kind.
pub const RECORDS_FILE: &str = "tether-records.csv";
/// The header of [`KINDS_FILE`].
const KINDS_HEADER: &str = "host_time,device,session,seq,kind,name,file,fields,declaration\n";
/// Bytes buffered per file before they are handed to it.
const ROW_BUFFER: usize = 64 * 1024;

/// Where a device's records stand in the directory.
#[derive(Debug, Clone, Default)]
struct Device {
    /// Its numbering.
    session: u32,
    /// Per file: its last record's seq there, in this numbering.
    last: HashMap<String, u32>,
    /// Its last record written by this process: a record at or before it starts a new
    /// numbering.
    written: Option<u32>,
}

/// One file of the directory, appended in batches that are written whole or cut off.
#[derive(Debug)]
struct CsvFile {
    path: PathBuf,
    file: Flock<File>,
    /// Its length after the last commit.
    committed: u64,
    /// It may be longer than `committed` (the open batch wrote to it, or a cut failed).
    past_committed: bool,
    buf: Vec<u8>,
    batch_bytes: u64,
    /// The header line for an empty file: fixed, or `field_N` from the first row (`None`).
    header: Option<Vec<u8>>,
    /// The open batch must write the header before its first row.
    header_pending: bool,
}

impl CsvFile {
    /// Opens (creating) and locks `path`; `header` is what it must begin with, if known.
    fn open(path: &Path, header: Option<Vec<u8>>) -> Result<CsvFile, SinkError> {
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
                    holder: file
                        .metadata()
                        .map_or_else(|_| Default::default(), |m| super::lock_holder_of(&m)),
                })
            }
            Err((_, e)) => return Err(err(io::Error::from(e))),
        };
        let committed = file.metadata().map_err(err)?.len();
        Ok(CsvFile {
            path: path.to_owned(),
            file,
            committed,
            past_committed: false,
            buf: Vec::with_capacity(4096),
            batch_bytes: 0,
            header,
            header_pending: false,
        })
    }

    /// Starts its part of a batch.
    fn begin(&mut self) -> io::Result<()> {
        if self.past_committed {
            self.file.set_len(self.committed)?;
            self.past_committed = false;
        }
        self.header_pending = self.committed == 0;
        Ok(())
    }

    /// Writes the header first if the file is empty (`fields`: the first row's count, for a
    /// `field_N` header).
    fn header(&mut self, fields: usize) {
        if !std::mem::take(&mut self.header_pending) {
            return;
        }
        match &self.header {
            Some(h) => self.buf.extend_from_slice(h),
            None => {
                self.buf.extend_from_slice(FIXED.join(",").as_bytes());
                for i in 1..=fields {
                    self.buf.extend_from_slice(b",field_");
                    self.buf
                        .extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
                }
                self.buf.push(b'\n');
            }
        }
    }

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

    /// Its part of the batch is durable.
    fn committed(&mut self) {
        self.committed += self.batch_bytes;
        self.batch_bytes = 0;
        self.past_committed = false;
    }

    /// Its part of the batch is cut off.
    fn cut_off(&mut self) {
        self.buf.clear();
        self.batch_bytes = 0;
        if self.past_committed {
            match self.file.set_len(self.committed) {
                Ok(()) => self.past_committed = false,
                Err(e) => debug!("{}: cutting a failed batch off: {e}", self.path.display()),
            }
        }
    }
}

/// The `--csv-dir` sink. See the [module documentation](self).
#[derive(Debug)]
pub struct CsvDirSink {
    dir: PathBuf,
    fsync: bool,
    files: HashMap<String, CsvFile>,
    kinds: Kinds,
    /// A kind's header line → the file its records go to.
    routes: HashMap<Vec<u8>, String>,
    devices: HashMap<u32, Device>,
    /// The devices as they were before the open batch first touched them.
    undo: Vec<(u32, Option<Device>)>,
    /// Files the open batch wrote to.
    touched: Vec<String>,
    open: bool,
    /// Marker rows not committed yet (for [`RECORDS_FILE`]): written first in every batch.
    notes: Vec<(SystemTime, u32, String)>,
    rows: u64,
    /// Record rows in the open batch.
    batch_rows: u64,
    failing: Option<Failing>,
    /// The last time formatted, and its text: a batch of records shares one time.
    time: Option<(SystemTime, String)>,
    /// Devices told about once that their records go to `NAME.XXXXXXXX.csv`.
    told: std::collections::HashSet<String>,
}

fn at_or_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

impl CsvDirSink {
    /// Opens `dir` (creating it), locks [`KINDS_FILE`] and every Tether file in it. A
    /// [`KINDS_FILE`] or [`RECORDS_FILE`] that is not a Tether file is refused
    /// ([`SinkError::NotTether`], left as it is).
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir).map_err(|source| SinkError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut sink = CsvDirSink {
            dir: dir.to_owned(),
            fsync,
            files: HashMap::new(),
            kinds: Kinds::default(),
            routes: HashMap::new(),
            devices: HashMap::new(),
            undo: Vec::new(),
            touched: Vec::new(),
            open: false,
            notes: Vec::new(),
            rows: 0,
            batch_rows: 0,
            failing: None,
            time: None,
            told: Default::default(),
        };
        for (name, header) in [
            (KINDS_FILE, Some(KINDS_HEADER.as_bytes().to_vec())),
            (RECORDS_FILE, None),
        ] {
            let path = dir.join(name);
            if let Some(found) = foreign_file(&path)? {
                return Err(SinkError::NotTether { path, found });
            }
            let f = CsvFile::open(&path, header)?;
            sink.files.insert(name.to_owned(), f);
        }
        Ok(sink)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record rows committed since opening.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The file records of `schema` go to: `NAME.csv` unless that is another schema's (or
    /// not Tether's), then `NAME.XXXXXXXX.csv`. Opens it.
    fn route(&mut self, schema: &Schema) -> Result<String, SinkError> {
        let header = kind_header(schema);
        if let Some(name) = self.routes.get(&header) {
            return Ok(name.clone());
        }
        let plain = format!("{}.csv", schema.name);
        let marked = format!(
            "{}.{:08x}.csv",
            schema.name,
            tether_core::frame::crc32c(&header)
        );
        let mut chosen = None;
        for name in [plain, marked] {
            let taken_by_other = match self.files.get(&name) {
                Some(f) => f.header.as_deref() != Some(&header[..]),
                None => !fits(&self.dir.join(&name), &header)?,
            };
            if !taken_by_other {
                chosen = Some(name);
                break;
            }
        }
        // Two headers with the same CRC-32C and name: their records are not lost, they go
        // where records without a usable kind go.
        let name = chosen.unwrap_or_else(|| RECORDS_FILE.to_owned());
        if !self.files.contains_key(&name) {
            let f = CsvFile::open(&self.dir.join(&name), Some(header.clone()))?;
            self.files.insert(name.clone(), f);
        }
        if name != format!("{}.csv", schema.name) && self.told.insert(name.clone()) {
            warn!(
                "{}: kind {} declared with other fields than {}.csv has; its records go to {name}",
                self.dir.display(),
                schema.describe(),
                schema.name
            );
        }
        self.routes.insert(header, name.clone());
        Ok(name)
    }

    /// The file `payload` of `device` goes to, and what it is (without opening a file
    /// for a kind not routed yet: `None` then).
    fn file_of(&self, device: u32, payload: &[u8]) -> Option<String> {
        match self.kinds.classify(device, payload) {
            Classified::Declaration(_) => Some(KINDS_FILE.to_owned()),
            Classified::Kind(schema, _) => self.routes.get(&kind_header(&schema)).cloned(),
            Classified::Other(_) => Some(RECORDS_FILE.to_owned()),
        }
    }

    /// Opens the batch on its first use: pending marker rows first.
    fn ready(&mut self) -> Result<(), SinkError> {
        if self.open {
            return Ok(());
        }
        self.open = true;
        let notes = self.notes.clone();
        for (time, device, text) in notes {
            let session = self.devices.get(&device).map_or(0, |d| d.session);
            let row = note_row(time, device, session, &text);
            self.put(RECORDS_FILE, 1, &row)?;
        }
        Ok(())
    }

    /// Appends `row` to `name` in the open batch (`fields`: its field count, for a
    /// `field_N` header).
    fn put(&mut self, name: &str, fields: usize, row: &[u8]) -> Result<(), SinkError> {
        let first = !self.touched.iter().any(|t| t == name);
        let f = self.files.get_mut(name).expect("opened before use");
        let r = (|| {
            if first {
                f.begin()?;
            }
            f.header(fields);
            f.buf.extend_from_slice(row);
            f.spill()
        })();
        if first {
            self.touched.push(name.to_owned());
        }
        r.map_err(|e| self.fail(e))
    }

    /// The device's state, saved for a rollback the first time the batch touches it.
    fn device(&mut self, device: u32) -> &mut Device {
        if !self.undo.iter().any(|(d, _)| *d == device) {
            self.undo.push((device, self.devices.get(&device).cloned()));
        }
        self.devices.entry(device).or_default()
    }

    /// Cuts the open batch off every file, forgets what it declared and moved.
    fn cut_off(&mut self) {
        for name in self.touched.drain(..) {
            if let Some(f) = self.files.get_mut(&name) {
                f.cut_off();
            }
        }
        self.kinds.rollback();
        self.batch_rows = 0;
        while let Some((d, old)) = self.undo.pop() {
            match old {
                Some(s) => self.devices.insert(d, s),
                None => self.devices.remove(&d),
            };
        }
        self.open = false;
    }

    /// A batch failed with `e`: cut off, logged once an episode.
    fn fail(&mut self, e: io::Error) -> SinkError {
        self.cut_off();
        let what = format!("CSV directory {}", self.dir.display());
        Failing::record(&mut self.failing, &what, &e, "", false);
        SinkError::Io {
            path: self.dir.clone(),
            source: e,
        }
    }

    /// Writes every touched file's part, syncs them with `--fsync`, then marks them
    /// committed.
    fn finish(&mut self) -> io::Result<u64> {
        let mut wrote = 0;
        for name in &self.touched {
            let f = self.files.get_mut(name).expect("touched files are open");
            f.hand_over()?;
            wrote += f.batch_bytes;
        }
        if self.fsync {
            for name in &self.touched {
                let f = &self.files[name];
                if f.batch_bytes > 0 {
                    f.file.sync_data()?;
                }
            }
        }
        for name in self.touched.drain(..) {
            if let Some(f) = self.files.get_mut(&name) {
                f.committed();
            }
        }
        Ok(wrote)
    }
}

impl Sink for CsvDirSink {
    fn write(
        &mut self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        self.ready()?;
        let classified = self.kinds.classify(device, payload);
        let (name, schema, row_fields) = match classified {
            Classified::Declaration(schema) => {
                let schema = self.kinds.see(device, schema);
                let name = self.route(&schema)?;
                (KINDS_FILE.to_owned(), Some((schema, name)), None)
            }
            Classified::Kind(schema, values) => {
                let name = self.route(&schema)?;
                (name, None, Some(Ok(values)))
            }
            Classified::Other(o) => (RECORDS_FILE.to_owned(), None, Some(Err(o))),
        };
        // A record at or before the device's last one, in its file or of this process, is
        // a new numbering.
        let d = self.device(device);
        let again = d.last.get(&name).is_some_and(|&l| at_or_before(seq, l))
            || d.written.is_some_and(|w| at_or_before(seq, w));
        if again {
            d.session = d.session.wrapping_add(1);
            d.last.clear();
            info!(
                "device {device:08x} numbers its records afresh (record {seq}): its rows are \
                 session {} from now on",
                d.session
            );
        }
        d.last.insert(name.clone(), seq);
        d.written = Some(seq);
        let session = d.session;
        let mut row = Vec::with_capacity(64 + 2 * payload.len());
        let time_text = match &self.time {
            Some((t, text)) if *t == time => text,
            _ => {
                &self
                    .time
                    .insert((time, humantime::format_rfc3339_micros(time).to_string()))
                    .1
            }
        };
        row.extend_from_slice(time_text.as_bytes());
        let mut hexed = [0u8; 8];
        for (i, b) in device.to_be_bytes().into_iter().enumerate() {
            hexed[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
            hexed[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
        }
        row.push(b',');
        row.extend_from_slice(&hexed);
        row.push(b',');
        row.extend_from_slice(itoa::Buffer::new().format(session).as_bytes());
        row.push(b',');
        row.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        self.batch_rows += 1;
        let mut count = 0;
        match (schema, row_fields) {
            (Some((schema, file)), _) => {
                for f in [
                    schema.id.to_string(),
                    schema.name.clone(),
                    file,
                    schema.describe(),
                    super::kinds::hex(&schema.declaration),
                ] {
                    row.push(b',');
                    field(&mut row, f.as_bytes());
                }
            }
            (None, Some(Ok(values))) => {
                for v in &values {
                    row.push(b',');
                    value(&mut row, v);
                }
            }
            (None, Some(Err(other))) => {
                let texts = other.texts(payload);
                count = texts.len();
                for t in texts {
                    row.push(b',');
                    field(&mut row, t.as_bytes());
                }
            }
            (None, None) => {}
        }
        row.push(b'\n');
        self.put(&name, count, &row)
    }

    fn write_note(&mut self, time: SystemTime, device: u32, text: &str) -> Result<(), SinkError> {
        self.notes.push((time, device, text.to_owned()));
        if self.open {
            let session = self.devices.get(&device).map_or(0, |d| d.session);
            let row = note_row(time, device, session, text);
            self.put(RECORDS_FILE, 1, &row)?;
        }
        Ok(())
    }

    fn write_raw(
        &mut self,
        time: SystemTime,
        peer: &str,
        seq: u32,
        chunk: &[u8],
    ) -> Result<(), SinkError> {
        self.ready()?;
        let mut row = Vec::new();
        fixed(&mut row, time, peer, 0, Some(seq));
        row.push(b',');
        let mut texts = Vec::new();
        match std::str::from_utf8(chunk) {
            Ok(t) => texts.push(if t.starts_with('<') {
                format!("<{t}")
            } else {
                t.to_owned()
            }),
            Err(_) => texts.push(format!("<binary {}>", super::kinds::hex(chunk))),
        }
        field(&mut row, texts[0].as_bytes());
        row.push(b'\n');
        self.put(RECORDS_FILE, 1, &row)
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        self.ready()?;
        let rows = std::mem::take(&mut self.batch_rows);
        match self.finish() {
            Ok(wrote) => {
                self.open = false;
                self.notes.clear();
                self.kinds.commit();
                self.undo.clear();
                self.rows += rows;
                if wrote > 0 && self.failing.is_some() {
                    let what = format!("CSV directory {}", self.dir.display());
                    Failing::over(&mut self.failing, &what, "batches");
                }
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn rollback(&mut self) {
        if self.open {
            self.cut_off();
        }
    }

    fn recover(&mut self) -> Result<Recovered, RecoverError> {
        recover(self)
    }

    fn describe(&self) -> String {
        format!("CSV directory {}", self.dir.display())
    }

    fn holds(&self, device: u32, seq: u32, payload: &[u8]) -> bool {
        let Some(d) = self.devices.get(&device) else {
            return false;
        };
        self.file_of(device, payload)
            .and_then(|f| d.last.get(&f))
            .is_some_and(|&last| at_or_before(seq, last))
    }
}

/// The header line of a kind's file.
fn kind_header(schema: &Schema) -> Vec<u8> {
    let mut h = FIXED.join(",").into_bytes();
    for name in schema.headers() {
        h.push(b',');
        field(&mut h, name.as_bytes());
    }
    h.push(b'\n');
    h
}

/// Whether `path` is missing, empty, or begins with `header` (a file of the same kind).
fn fits(path: &Path, header: &[u8]) -> Result<bool, SinkError> {
    let mut head = vec![0u8; header.len()];
    match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(SinkError::Io {
            path: path.to_owned(),
            source,
        }),
        Ok(mut f) => {
            let mut got = 0;
            while got < head.len() {
                match f.read(&mut head[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(SinkError::Io {
                            path: path.to_owned(),
                            source,
                        })
                    }
                }
            }
            // A header cut short (a listener stopped while creating the file) is empty.
            Ok(got == 0
                || head[..got] == header[..got]
                    && (got == header.len() || f_len(path) == got as u64))
        }
    }
}

fn f_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What a non-empty file that should be Tether's begins with, if it is not (`None`: it is
/// missing, empty, or a Tether file).
fn foreign_file(path: &Path) -> Result<Option<String>, SinkError> {
    let mut first = Vec::new();
    match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SinkError::Io {
                path: path.to_owned(),
                source,
            })
        }
        Ok(f) => {
            let _ = f.take(4096).read_to_end(&mut first);
        }
    }
    let line = first.split(|&b| b == b'\n').next().unwrap_or_default();
    let fixed = FIXED.join(",");
    let ours = line.starts_with(fixed.as_bytes())
        || (first.len() < fixed.len() && fixed.as_bytes().starts_with(&first));
    if ours || first.is_empty() {
        return Ok(None);
    }
    Ok(Some(match std::str::from_utf8(line) {
        Ok(t) if !t.chars().any(char::is_control) => {
            format!(
                "its first line is \"{}\", where Tether's files begin with {fixed}",
                t.chars().take(80).collect::<String>()
            )
        }
        _ => format!("it does not begin with a line of text (Tether's begin with {fixed})"),
    }))
}

/// `host_time,device,session,seq` (an empty `seq` for `None`).
fn fixed(row: &mut Vec<u8>, time: SystemTime, device: &str, session: u32, seq: Option<u32>) {
    row.extend_from_slice(
        humantime::format_rfc3339_micros(time)
            .to_string()
            .as_bytes(),
    );
    row.push(b',');
    field(row, device.as_bytes());
    row.push(b',');
    row.extend_from_slice(itoa::Buffer::new().format(session).as_bytes());
    row.push(b',');
    if let Some(seq) = seq {
        row.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    }
}

fn note_row(time: SystemTime, device: u32, session: u32, text: &str) -> Vec<u8> {
    let mut row = Vec::new();
    fixed(&mut row, time, &format!("{device:08x}"), session, None);
    row.push(b',');
    field(&mut row, text.as_bytes());
    row.push(b'\n');
    row
}

/// One CSV field, quoted if it must be (RFC 4180).
fn field(out: &mut Vec<u8>, f: &[u8]) {
    if !f.iter().any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.extend_from_slice(f);
        return;
    }
    out.push(b'"');
    for &b in f {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// One value as the CSV writes it (see [`super::kinds::text`]), without a `String` for
/// numbers.
fn value(out: &mut Vec<u8>, v: &Field<'_>) {
    let _ = match *v {
        Field::Bool(v) => write!(out, "{v}"),
        Field::U8(v) => write!(out, "{v}"),
        Field::U16(v) => write!(out, "{v}"),
        Field::U32(v) => write!(out, "{v}"),
        Field::U64(v) => write!(out, "{v}"),
        Field::I8(v) => write!(out, "{v}"),
        Field::I16(v) => write!(out, "{v}"),
        Field::I32(v) => write!(out, "{v}"),
        Field::I64(v) => write!(out, "{v}"),
        Field::F32(v) => write!(out, "{v}"),
        Field::F64(v) => write!(out, "{v}"),
        Field::Str(_) | Field::Bytes(_) => {
            field(out, super::kinds::text(v).as_bytes());
            Ok(())
        }
    };
}

/// Reads every Tether file of the directory once: cuts a torn last row, learns each
/// device's numbering and its last record per file, and the declarations of each device's
/// current numbering (see the module documentation).
fn recover(sink: &mut CsvDirSink) -> Result<Recovered, RecoverError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| RecoverError::Io { path, source }
    };
    let entries = std::fs::read_dir(&sink.dir).map_err(err(&sink.dir))?;
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        let e = e.map_err(err(&sink.dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".csv") && e.file_type().is_ok_and(|t| t.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    let mut found = Recovered::default();
    // Per device: the highest numbering seen, and per (numbering, file) the last seq.
    let mut last: HashMap<u32, (u32, HashMap<String, u32>)> = HashMap::new();
    let mut declarations: Vec<(u32, u32, Vec<u8>, String)> = Vec::new();
    for name in names {
        let path = sink.dir.join(&name);
        if foreign_file(&path)
            .map_err(|e| RecoverError::Io {
                path: path.clone(),
                source: io::Error::other(e.to_string()),
            })?
            .is_some()
        {
            continue;
        }
        let header = first_line(&path).map_err(err(&path))?;
        let partial = header.is_empty() && name != KINDS_FILE && name != RECORDS_FILE;
        if !sink.files.contains_key(&name) {
            let f = CsvFile::open(&path, Some(header.clone())).map_err(|e| RecoverError::Io {
                path: path.clone(),
                source: io::Error::other(e.to_string()),
            })?;
            sink.files.insert(name.clone(), f);
        }
        if name != KINDS_FILE && name != RECORDS_FILE && !header.is_empty() {
            sink.routes.insert(header.clone(), name.clone());
        }
        let (rows, cut, torn) = read_file(&path, |row| {
            let device = row
                .get(1)
                .and_then(|d| std::str::from_utf8(d).ok())
                .filter(|d| d.len() == 8)
                .and_then(|d| u32::from_str_radix(d, 16).ok());
            let session = row
                .get(2)
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u32>().ok());
            let (Some(device), Some(session)) = (device, session) else {
                return;
            };
            let entry = last.entry(device).or_insert((session, HashMap::new()));
            if session > entry.0 {
                *entry = (session, HashMap::new());
            }
            let seq = row
                .get(3)
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u32>().ok());
            if session == entry.0 {
                if let Some(seq) = seq {
                    entry.1.insert(name.clone(), seq);
                }
            }
            if name == KINDS_FILE {
                let decl = row
                    .get(8)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(unhex);
                let file = row.get(6).and_then(|f| std::str::from_utf8(f).ok());
                if let (Some(d), Some(f)) = (decl, file) {
                    declarations.push((device, session, d, f.to_owned()));
                }
            }
        })
        .map_err(err(&path))?;
        if cut > 0 {
            if let Some(f) = sink.files.get_mut(&name) {
                let len = f.committed - cut;
                f.file
                    .set_len(len)
                    .and_then(|()| f.file.sync_all())
                    .map_err(err(&path))?;
                f.committed = len;
            }
            found.truncated += cut;
            found.torn = found.torn.or(torn.map(|t| format!("{name}: {t}")));
        }
        if partial {
            // Its header was cut short, so it is empty now: the kind that is its own opens
            // it again with the header.
            sink.files.remove(&name);
        }
        found.rows += rows;
    }
    for (device, (session, files)) in last {
        let d = sink.devices.entry(device).or_default();
        d.session = session;
        d.last = files;
        // The device's latest record in its numbering, of any file.
        if let Some(&max) = d
            .last
            .values()
            .max_by(|a, b| (a.wrapping_sub(**b) as i32).cmp(&0))
        {
            found.last_seq.insert(device, max);
        }
    }
    for (device, session, decl, file) in declarations {
        if sink
            .devices
            .get(&device)
            .is_some_and(|d| d.session == session)
        {
            if let Ok(schema) = Schema::parse(&decl) {
                sink.routes.entry(kind_header(&schema)).or_insert(file);
                sink.kinds.restore(device, schema);
            }
        }
    }
    if !sink.kinds.is_empty() {
        info!(
            "CSV directory {}: {} declared kinds read back",
            sink.dir.display(),
            sink.kinds.len()
        );
    }
    Ok(found)
}

/// The first line of `path`, its line end included (empty if none is complete).
fn first_line(path: &Path) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    File::open(path)?.take(1 << 20).read_to_end(&mut head)?;
    Ok(match head.iter().position(|&b| b == b'\n') {
        Some(end) => head[..=end].to_vec(),
        None => Vec::new(),
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads `path` row by row (after its header), calling `row` on each whole one; returns the
/// rows read, the bytes of a torn last row (to be cut), and its beginning, for the log.
fn read_file(
    path: &Path,
    mut row: impl FnMut(&csv::ByteRecord),
) -> io::Result<(u64, u64, Option<String>)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((0, 0, None));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(256 * 1024, file));
    let mut rec = csv::ByteRecord::new();
    let mut pending: Option<(u64, csv::ByteRecord)> = None;
    let mut rows = 0u64;
    let mut first = true;
    loop {
        let start = reader.position().byte();
        match reader.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
        if let Some((_, r)) = pending.take() {
            row(&r);
            rows += 1;
        }
        if first {
            first = false;
            continue;
        }
        pending = Some((start, rec.clone()));
    }
    let Some((start, last)) = pending else {
        // Only a header: whole if it ends its line; a header cut short is cut.
        let mut f = reader.into_inner().into_inner();
        let mut all = Vec::new();
        f.seek(SeekFrom::Start(0))?;
        f.read_to_end(&mut all)?;
        return Ok(if all.last() == Some(&b'\n') {
            (0, 0, None)
        } else {
            (0, len, Some(String::from_utf8_lossy(&all).into_owned()))
        });
    };
    let mut f = reader.into_inner().into_inner();
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(start))?;
    f.take(len - start).read_to_end(&mut tail)?;
    let quotes = tail.iter().filter(|&&b| b == b'"').count();
    if tail.last() == Some(&b'\n') && quotes % 2 == 0 {
        row(&last);
        return Ok((rows + 1, 0, None));
    }
    let shown = String::from_utf8_lossy(&tail[..tail.len().min(80)]).into_owned();
    Ok((rows, len - start, Some(shown)))
}

impl CsvDirSink {
    /// The kinds known (for tests and the log).
    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }
}

/// A schema kept, by reference, for callers that route themselves.
pub type SharedSchema = Arc<Schema>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Batch;
    use tether_core::record::kind::{FieldDef, Kind, KindWriter, Type};
    use tether_core::record::RecordWriter;

    const ENV: Kind = Kind {
        id: 0,
        name: "env",
        fields: &[
            FieldDef::new("t", Type::F32).unit("°C"),
            FieldDef::new("label", Type::Str),
        ],
    };
    const ENV_D: [u8; ENV.declaration_len()] = ENV.declaration();
    /// Another `env`: other fields.
    const ENV2: Kind = Kind {
        id: 0,
        name: "env",
        fields: &[FieldDef::new("p", Type::U16).unit("hPa")],
    };
    const ENV2_D: [u8; ENV2.declaration_len()] = ENV2.declaration();

    fn env(t: f32, label: &str) -> Vec<u8> {
        let mut buf = [0u8; 300];
        let mut w = KindWriter::new(&ENV, &mut buf);
        w.f32(t).unwrap().str(label).unwrap();
        w.finish().unwrap().to_vec()
    }

    fn env2(p: u16) -> Vec<u8> {
        let mut buf = [0u8; 8];
        let mut w = KindWriter::new(&ENV2, &mut buf);
        w.u16(p).unwrap();
        w.finish().unwrap().to_vec()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-csvdir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456)
    }

    fn write(s: &mut CsvDirSink, device: u32, records: &[(u32, &[u8])]) {
        let mut b = Batch::new(s as &mut dyn Sink);
        for (seq, p) in records {
            b.write(t0(), device, *seq, p).unwrap();
        }
        b.commit().unwrap();
    }

    fn read(d: &Path, name: &str) -> String {
        std::fs::read_to_string(d.join(name)).unwrap_or_default()
    }

    #[test]
    fn each_kind_has_its_file_and_named_columns_and_the_rest_has_its_own() {
        let d = dir("files");
        let mut s = CsvDirSink::open(&d, false).unwrap();
        let mut fields = [0u8; 16];
        let mut w = RecordWriter::new(&mut fields);
        w.u8(7).unwrap();
        let plain = w.finish().to_vec();
        write(
            &mut s,
            0xA,
            &[
                (0, &ENV_D),
                (1, &env(21.5, "a,b")),
                (2, b"text,line"),
                (3, &plain),
                (4, &[0x1E, 0x85]),
            ],
        );
        assert_eq!(
            read(&d, "env.csv"),
            "host_time,device,session,seq,t (°C),label\n\
             2023-11-14T22:13:20.123456Z,0000000a,0,1,21.5,\"a,b\"\n"
        );
        assert_eq!(
            read(&d, RECORDS_FILE),
            "host_time,device,session,seq,field_1,field_2\n\
             2023-11-14T22:13:20.123456Z,0000000a,0,2,text,line\n\
             2023-11-14T22:13:20.123456Z,0000000a,0,3,7\n\
             2023-11-14T22:13:20.123456Z,0000000a,0,4,<record of undeclared kind 5: 1e85>\n"
        );
        let kinds = read(&d, KINDS_FILE);
        assert!(kinds.starts_with(KINDS_HEADER), "{kinds}");
        assert!(
            kinds.contains(",0000000a,0,0,0,env,env.csv,\"env: t f32 °C, label str\",1e0e00"),
            "{kinds}"
        );
        // Another device declares env with other fields: its own file, never the header.
        write(&mut s, 0xB, &[(0, &ENV2_D), (1, &env2(1013))]);
        let other: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("env.") && n != "env.csv")
            .collect();
        assert_eq!(other.len(), 1, "{other:?}");
        assert!(read(&d, &other[0]).starts_with("host_time,device,session,seq,p (hPa)\n"));
        assert!(!read(&d, "env.csv").contains("0000000b"));
        assert_eq!(s.rows(), 7);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_restarted_sink_reads_its_kinds_back_and_skips_only_what_each_file_has() {
        let d = dir("recover");
        {
            let mut s = CsvDirSink::open(&d, false).unwrap();
            write(&mut s, 0xA, &[(0, &ENV_D), (1, &env(1.0, "x")), (2, b"t")]);
        }
        // A crash in the middle of a commit: env.csv got record 4, the records file not 3.
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("env.csv"))
            .unwrap()
            .write_all(b"2023-11-14T22:13:20.123456Z,0000000a,0,4,2,y\n")
            .unwrap();
        // And a torn row in the records file.
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.join(RECORDS_FILE))
            .unwrap()
            .write_all(b"2023-11-14T22:13:20.123456Z,0000000a,0,3,\"torn")
            .unwrap();
        let mut s = CsvDirSink::open(&d, false).unwrap();
        let r = s.recover().unwrap();
        assert_eq!(r.last_seq[&0xA], 4);
        assert!(r.truncated > 0 && r.torn.is_some());
        assert!(!read(&d, RECORDS_FILE).contains("torn"));
        assert_eq!(s.kinds().len(), 1, "the declaration read back");
        // Record 3 (text) is not in its file, 4 (env) is: only 4 is held.
        assert!(!s.holds(0xA, 3, b"u"));
        assert!(s.holds(0xA, 4, &env(2.0, "y")));
        assert!(s.holds(0xA, 1, &env(1.0, "x")));
        assert!(!s.holds(0xB, 1, b"u"));
        write(&mut s, 0xA, &[(3, b"u"), (5, &env(3.0, "z"))]);
        assert!(read(&d, "env.csv").ends_with(",0000000a,0,5,3,z\n"));
        assert!(read(&d, RECORDS_FILE).ends_with(",0000000a,0,3,u\n"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_batch_leaves_no_file_touched_and_a_renumbering_is_a_new_session() {
        let d = dir("fail");
        let mut s = CsvDirSink::open(&d, false).unwrap();
        write(&mut s, 0xA, &[(0, &ENV_D), (1, &env(1.0, "x"))]);
        let before: Vec<String> = [KINDS_FILE, RECORDS_FILE, "env.csv"]
            .iter()
            .map(|n| read(&d, n))
            .collect();
        {
            let mut b = Batch::new(&mut s as &mut dyn Sink);
            b.write(t0(), 0xA, 2, &env(2.0, &"y".repeat(200))).unwrap();
            b.write(t0(), 0xA, 3, b"text").unwrap();
            for i in 4..2_000 {
                b.write(t0(), 0xA, i, &env(2.0, &"y".repeat(100))).unwrap();
            }
            // Dropped uncommitted: rolled back in every file (some reached the file).
        }
        let after: Vec<String> = [KINDS_FILE, RECORDS_FILE, "env.csv"]
            .iter()
            .map(|n| read(&d, n))
            .collect();
        assert_eq!(before, after);
        assert!(s.holds(0xA, 1, &env(1.0, "x")) && !s.holds(0xA, 2, &env(1.0, "x")));
        // The device numbers afresh (its records from 0 again): session 1.
        write(&mut s, 0xA, &[(0, &ENV_D), (1, &env(5.0, "n"))]);
        assert!(read(&d, "env.csv").ends_with(",0000000a,1,1,5,n\n"));
        drop(s);
        let mut s = CsvDirSink::open(&d, false).unwrap();
        assert_eq!(s.recover().unwrap().last_seq[&0xA], 1);
        write(&mut s, 0xA, &[(2, &env(6.0, "m"))]);
        assert!(read(&d, "env.csv").ends_with(",0000000a,1,2,6,m\n"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_second_sink_is_refused_and_foreign_files_are_left_alone() {
        let d = dir("lock");
        let s = CsvDirSink::open(&d, false).unwrap();
        let e = CsvDirSink::open(&d, false).unwrap_err();
        assert!(matches!(e, SinkError::InUse { .. }), "{e}");
        drop(s);
        std::fs::write(d.join("env.csv"), "name,age\nbob,3\n").unwrap();
        let mut s = CsvDirSink::open(&d, false).unwrap();
        s.recover().unwrap();
        write(&mut s, 0xA, &[(0, &ENV_D), (1, &env(1.0, "x"))]);
        assert_eq!(read(&d, "env.csv"), "name,age\nbob,3\n", "left alone");
        drop(s);
        std::fs::write(d.join(RECORDS_FILE), "name,age\n").unwrap();
        let e = CsvDirSink::open(&d, false).unwrap_err();
        assert!(matches!(e, SinkError::NotTether { .. }), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
