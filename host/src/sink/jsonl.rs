//! `--sink jsonl:-` and `--sink jsonl:FILE`: one JSON object a line per record, to standard
//! output or appended to a file, for `jq`, Telegraf or anything else that reads JSON lines.
//!
//! # The lines
//!
//! The objects are the MQTT sink's payloads (`sink::json`, README "Many sites into one
//! broker", Payload), one a line, each ending in LF:
//! - a record of a declared kind: `{"device":"0000002a","session":0,"seq":7,"host_time":…,
//!   "kind":"env","counter":7,"temperature":21.5,…}`;
//! - a declaration: `{"device":…,"session":…,"seq":…,"host_time":…,"kind":1,"name":"env",
//!   "fields":[{"name":…,"type":…,"unit":…},…],"declaration":"1e0e…"}` (the last key, the
//!   declaration's bytes in hex, is what a restarted listener reads the kinds back from);
//! - any other record: the fixed keys, then `field_1`, `field_2`, … (typed numbers and
//!   booleans as JSON values, the rest as the CSV writes them, as strings);
//! - a marker (a discontinuity in a device's records, see [`crate::recover`]):
//!   `{"device":…,"session":…,"host_time":…,"marker":"<…>"}` (no `seq`).
//!
//! `session` is the device's numbering, as the MQTT sink and `--csv-dir` count it: 0 for the
//! first, one more each time the device's records start afresh under the same identity (a
//! record at or before its last one). With `device` and `seq` it names the record.
//!
//! # Acknowledged means written
//!
//! A batch's lines are written at [`Sink::commit`], and only then are its records
//! acknowledged: on standard output, written and flushed; to a file, written (with `--fsync`,
//! synced). A batch that fails is cut off the file (standard output cannot take back what it
//! wrote; its records are not acknowledged, and come again).
//!
//! # Recovery (a file)
//!
//! While open, the sink holds the file's lock (`flock`): a second listener on it is refused.
//! At start it reads the file: each device's numbering and last record, and the declarations
//! of its current numbering (restored, so that its records after a restart are still named).
//! A torn last line (no LF at its end: the listener stopped while writing it) is cut off; its
//! record was not acknowledged, so its device sends it again. A complete line that is not a
//! Tether object (an object with `device`, eight hex digits, and either `session` and `seq`
//! or `marker`) makes the sink refuse the file, which is left as it is.
//!
//! Standard output has no recovery: after a listener restart, a record that was written but
//! whose acknowledgement never reached its device comes again, with the same `device`,
//! `session` and `seq` (unless the device numbers afresh), so a consumer that needs each
//! record once drops repeats of a key it has seen.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

use super::kinds::{Classified, Kinds, Other, Schema};
use super::{json, Failing, Holder, Sink, SinkError};
use crate::recover::{RecoverError, Recovered};

/// Bytes of a batch buffered before they are handed to the file.
const LINE_BUFFER: usize = 64 * 1024;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonlOut {
    /// Standard output (`jsonl:-`).
    Stdout,
    /// A file, appended (`jsonl:FILE`).
    File(PathBuf),
}

impl std::fmt::Display for JsonlOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonlOut::Stdout => f.write_str("jsonl:-"),
            JsonlOut::File(p) => write!(f, "jsonl:{}", p.display()),
        }
    }
}

/// Why the JSON lines sink could not start or write.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// The file could not be opened, read or written.
    #[error("JSON lines file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Standard output could not be written (a closed pipe: its reader is gone).
    #[error("JSON lines on standard output: {0}")]
    Stdout(#[source] io::Error),
    /// A line of the file is not one a Tether listener writes.
    #[error(
        "JSON lines file {path} is not Tether's, so it was left as it is: line {line} is \
         {found}, where every line of a Tether JSON lines file is an object with \"device\" \
         (eight hex digits) and \"session\" and \"seq\" (or \"marker\"). Write to a new file, \
         or to one a Tether listener wrote"
    )]
    NotTether {
        /// The file.
        path: PathBuf,
        /// The line's number (from 1).
        line: u64,
        /// What it holds, shortened, for people.
        found: String,
    },
    /// Another open sink (another listener) holds the file's lock.
    #[error(
        "JSON lines file {path} is being written by {holder}, which holds its lock: a second \
         listener on it would mix its lines into the first one's. Stop that one, or write to \
         another file"
    )]
    InUse {
        /// The file.
        path: PathBuf,
        /// Who holds the lock, as far as the system says.
        holder: Holder,
    },
}

/// Where a device's records stand.
#[derive(Debug, Clone, Copy, Default)]
struct Device {
    /// Its numbering.
    session: u32,
    /// Its last record written: a record at or before it starts a new numbering.
    written: Option<u32>,
}

/// The file, appended in batches that are written whole or cut off.
#[derive(Debug)]
struct Appended {
    path: PathBuf,
    file: Flock<File>,
    /// Its length after the last commit.
    committed: u64,
    /// Bytes of the open batch handed to it already.
    batch_bytes: u64,
    /// A failed batch could not be cut off: cut it before the next.
    dirty: bool,
}

/// The JSON lines sink. See the [module documentation](self).
#[derive(Debug)]
pub struct JsonlSink {
    /// The file; `None`: standard output.
    file: Option<Appended>,
    fsync: bool,
    buf: Vec<u8>,
    kinds: Kinds,
    devices: HashMap<u32, Device>,
    /// The devices as they were before the open batch first touched them.
    undo: Vec<(u32, Option<Device>)>,
    open: bool,
    /// Markers not committed yet: written first in every batch.
    notes: Vec<(SystemTime, u32, String)>,
    recovered: Option<Recovered>,
    failing: Option<Failing>,
}

fn at_or_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

impl JsonlSink {
    /// Opens the sink of `out`. A file is created if missing, locked, and read (see the
    /// module documentation): refused if a line is not Tether's, its torn last line cut.
    pub fn open(out: &JsonlOut, fsync: bool) -> Result<Self, JsonlError> {
        let mut sink = JsonlSink {
            file: None,
            fsync,
            buf: Vec::with_capacity(LINE_BUFFER),
            kinds: Kinds::default(),
            devices: HashMap::new(),
            undo: Vec::new(),
            open: false,
            notes: Vec::new(),
            recovered: None,
            failing: None,
        };
        if let JsonlOut::File(path) = out {
            let err = |source| JsonlError::Io {
                path: path.clone(),
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
                    return Err(JsonlError::InUse {
                        path: path.clone(),
                        holder: file
                            .metadata()
                            .map_or_else(|_| Holder::default(), |m| super::lock_holder_of(&m)),
                    })
                }
                Err((_, e)) => return Err(err(io::Error::from(e))),
            };
            let (found, whole) = sink.read_back(path, &file)?;
            let len = file.metadata().map_err(err)?.len();
            if whole < len {
                file.set_len(whole)
                    .and_then(|()| file.sync_all())
                    .map_err(err)?;
            }
            sink.recovered = Some(found);
            sink.file = Some(Appended {
                path: path.clone(),
                file,
                committed: whole,
                batch_bytes: 0,
                dirty: false,
            });
        }
        Ok(sink)
    }

    /// Reads the file: each device's numbering and last record, its declarations; returns
    /// them and the length of its whole lines (what is kept).
    fn read_back(&mut self, path: &Path, file: &File) -> Result<(Recovered, u64), JsonlError> {
        #[derive(serde::Deserialize)]
        struct Line {
            device: String,
            session: Option<u32>,
            seq: Option<u32>,
            marker: Option<serde::de::IgnoredAny>,
            kind: Option<serde_json::Value>,
            declaration: Option<String>,
        }
        let err = |source| JsonlError::Io {
            path: path.to_owned(),
            source,
        };
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut found = Recovered::default();
        // Per device: its highest numbering, and its last record in it.
        let mut last: HashMap<u32, (u32, Option<u32>)> = HashMap::new();
        let mut declarations: Vec<(u32, u32, Vec<u8>)> = Vec::new();
        let mut line = Vec::new();
        let mut whole = 0u64;
        let mut number = 0u64;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(err)?;
            if n == 0 {
                break;
            }
            number += 1;
            if line.last() != Some(&b'\n') {
                // A torn last line: the beginning of an object only (anything else is not
                // ours, and stays).
                let start = b"{\"device\":\"";
                let n = line.len().min(start.len());
                if line[..n] != start[..n] {
                    return Err(not_tether(path, number, &line));
                }
                found.truncated = line.len() as u64;
                found.torn = Some(String::from_utf8_lossy(&line[..line.len().min(80)]).into());
                break;
            }
            let parsed: Option<(u32, Line)> =
                serde_json::from_slice::<Line>(&line).ok().and_then(|l| {
                    let ok = l.device.len() == 8
                        && (l.marker.is_some() || (l.session.is_some() && l.seq.is_some()));
                    let device = u32::from_str_radix(&l.device, 16).ok()?;
                    ok.then_some((device, l))
                });
            let Some((device, l)) = parsed else {
                return Err(not_tether(path, number, &line));
            };
            whole += n as u64;
            found.rows += 1;
            let (Some(session), Some(seq)) = (l.session, l.seq) else {
                continue;
            };
            let entry = last.entry(device).or_insert((session, None));
            if session > entry.0 {
                *entry = (session, None);
            }
            if session == entry.0 {
                entry.1 = Some(seq);
            }
            if l.kind.as_ref().is_some_and(serde_json::Value::is_u64) {
                if let Some(bytes) = l.declaration.as_deref().and_then(unhex) {
                    declarations.push((device, session, bytes));
                }
            }
        }
        for (device, (session, seq)) in last {
            self.devices.insert(
                device,
                Device {
                    session,
                    written: seq,
                },
            );
            if let Some(seq) = seq {
                found.last_seq.insert(device, seq);
            }
        }
        for (device, session, bytes) in declarations {
            if self
                .devices
                .get(&device)
                .is_some_and(|d| d.session == session)
            {
                if let Ok(schema) = Schema::parse(&bytes) {
                    self.kinds.restore(device, schema);
                    found.declarations.push((device, bytes));
                }
            }
        }
        if !self.kinds.is_empty() {
            info!(
                "JSON lines file {}: {} declared kinds read back",
                path.display(),
                self.kinds.len()
            );
        }
        Ok((found, whole))
    }

    /// Opens the batch on its first use: pending markers first.
    fn ready(&mut self) -> Result<(), SinkError> {
        if self.open {
            return Ok(());
        }
        self.open = true;
        if let Some(f) = &mut self.file {
            if f.dirty {
                // A failed batch left bytes behind.
                match f.file.set_len(f.committed) {
                    Ok(()) => f.dirty = false,
                    Err(e) => return Err(self.fail(e)),
                }
            }
        }
        for i in 0..self.notes.len() {
            let (time, device, text) = self.notes[i].clone();
            self.note_line(time, device, &text);
        }
        Ok(())
    }

    fn note_line(&mut self, time: SystemTime, device: u32, text: &str) {
        let session = self.devices.get(&device).map_or(0, |d| d.session);
        json::marker(&mut self.buf, time, device, session, text);
        self.buf.push(b'\n');
    }

    /// The device's state, saved for a rollback the first time the batch touches it.
    fn device(&mut self, device: u32) -> &mut Device {
        if !self.undo.iter().any(|(d, _)| *d == device) {
            self.undo.push((device, self.devices.get(&device).copied()));
        }
        self.devices.entry(device).or_default()
    }

    /// Hands the buffered lines to the file (standard output is written at commit only).
    fn spill(&mut self) -> Result<(), SinkError> {
        if self.buf.len() < LINE_BUFFER {
            return Ok(());
        }
        let Some(f) = &mut self.file else {
            return Ok(());
        };
        let r = f.file.write_all(&self.buf);
        f.batch_bytes += self.buf.len() as u64;
        self.buf.clear();
        r.map_err(|e| self.fail(e))
    }

    /// Drops the open batch: cut off the file, what it declared and moved forgotten.
    fn cut_off(&mut self) {
        self.buf.clear();
        if let Some(f) = &mut self.file {
            if f.batch_bytes > 0 {
                f.batch_bytes = 0;
                if let Err(e) = f.file.set_len(f.committed) {
                    f.dirty = true;
                    warn!("{}: cutting a failed batch off: {e}", f.path.display());
                }
            }
        }
        self.kinds.rollback();
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
        // The reader of standard output gone: the listener says so, and stops.
        let pipe_closed = self.file.is_none() && e.kind() == io::ErrorKind::BrokenPipe;
        let what = self.describe();
        Failing::record(&mut self.failing, &what, &e, "", pipe_closed);
        SinkError::Jsonl(match &self.file {
            Some(f) => JsonlError::Io {
                path: f.path.clone(),
                source: e,
            },
            None => JsonlError::Stdout(e),
        })
    }

    /// Writes the batch (and flushes standard output, or syncs the file with `--fsync`).
    fn finish(&mut self) -> io::Result<()> {
        match &mut self.file {
            None => {
                if !self.buf.is_empty() {
                    let mut out = io::stdout().lock();
                    out.write_all(&self.buf)?;
                    out.flush()?;
                }
            }
            Some(f) => {
                if !self.buf.is_empty() {
                    f.file.write_all(&self.buf)?;
                    f.batch_bytes += self.buf.len() as u64;
                }
                if self.fsync && f.batch_bytes > 0 {
                    f.file.sync_data()?;
                }
                f.committed += f.batch_bytes;
                f.batch_bytes = 0;
            }
        }
        self.buf.clear();
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn write(
        &mut self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        self.ready()?;
        let d = self.device(device);
        if d.written.is_some_and(|w| at_or_before(seq, w)) {
            d.session = d.session.wrapping_add(1);
            info!(
                "device {device:08x} numbers its records afresh (record {seq}): its lines are \
                 session {} from now on",
                d.session
            );
        }
        d.written = Some(seq);
        let key = (device, d.session, seq);
        match self.kinds.classify(device, payload) {
            Classified::Declaration(schema) => {
                json::declaration_line(&mut self.buf, time, key, &schema);
                self.kinds.see(device, schema);
            }
            Classified::Kind(schema, values) => {
                json::kind_record(&mut self.buf, time, key, &schema, &values)
            }
            Classified::Other(Other::Plain) => {
                json::record(&mut self.buf, time, device, key.1, seq, payload)
            }
            Classified::Other(other) => {
                json::texts(&mut self.buf, time, key, &other.texts(payload))
            }
        }
        self.buf.push(b'\n');
        self.spill()
    }

    fn write_note(&mut self, time: SystemTime, device: u32, text: &str) -> Result<(), SinkError> {
        self.notes.push((time, device, text.to_owned()));
        if self.open {
            self.note_line(time, device, text);
        }
        Ok(())
    }

    fn write_raw(&mut self, _: SystemTime, _: &str, _: u32, _: &[u8]) -> Result<(), SinkError> {
        Err(SinkError::RolledBack {
            sink: format!("{} (the raw protocol writes CSV only)", self.describe()),
        })
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        self.ready()?;
        match self.finish() {
            Ok(()) => {
                self.open = false;
                self.notes.clear();
                self.kinds.commit();
                self.undo.clear();
                if self.failing.is_some() {
                    let what = self.describe();
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
        Ok(self.recovered.take().unwrap_or_default())
    }

    fn describe(&self) -> String {
        match &self.file {
            Some(f) => format!("JSON lines file {}", f.path.display()),
            None => "JSON lines on standard output".into(),
        }
    }
}

fn not_tether(path: &Path, line: u64, text: &[u8]) -> JsonlError {
    let shown = String::from_utf8_lossy(&text[..text.len().min(60)]);
    JsonlError::NotTether {
        path: path.to_owned(),
        line,
        found: format!("{:?}", shown.trim_end()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
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

    fn reading(t: f32, n: u8) -> Vec<u8> {
        let mut buf = [0u8; 16];
        let mut w = KindWriter::new(&K, &mut buf);
        w.f32(t).unwrap().u8(n).unwrap();
        w.finish().unwrap().to_vec()
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    }

    fn file(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-jsonl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("out.jsonl")
    }

    #[test]
    fn lines_are_named_and_a_restart_reads_the_kinds_back_and_cuts_a_torn_line() {
        let path = file("restart");
        let out = JsonlOut::File(path.clone());
        {
            let mut s = JsonlSink::open(&out, false).unwrap();
            s.write(t0(), 7, 0, &D).unwrap();
            s.write(t0(), 7, 1, &reading(21.5, 2)).unwrap();
            s.write_note(t0(), 7, "<restarted>").unwrap();
            s.commit().unwrap();
            // A failed (dropped) batch leaves nothing.
            s.write(t0(), 7, 2, &reading(1.0, 3)).unwrap();
            s.rollback();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"device\":\"00000007\",\"sess").unwrap();
        let mut s = JsonlSink::open(&out, false).unwrap();
        let r = s.recover().unwrap();
        assert_eq!(r.last_seq[&7], 1);
        assert_eq!(r.declarations, [(7, D.to_vec())]);
        assert_eq!(r.truncated, 26);
        s.write(t0(), 7, 2, &reading(-2.0, 3)).unwrap();
        s.write(t0(), 7, 0, &reading(0.5, 4)).unwrap();
        s.commit().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].ends_with(
            ",\"kind\":1,\"name\":\"env\",\"fields\":[{\"name\":\"t\",\"type\":\"f32\",\
             \"unit\":\"°C\"},{\"name\":\"n\",\"type\":\"u8\"}],\"declaration\":\"1e0e0103656e768a017403c2b04302016e\"}"
        ), "{}", lines[0]);
        assert!(
            lines[1].ends_with(",\"kind\":\"env\",\"t\":21.5,\"n\":2}"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with(",\"marker\":\"<restarted>\"}"),
            "{}",
            lines[2]
        );
        assert!(lines[3].starts_with("{\"device\":\"00000007\",\"session\":0,\"seq\":2,"));
        assert!(
            lines[3].ends_with(",\"kind\":\"env\",\"t\":-2,\"n\":3}"),
            "{}",
            lines[3]
        );
        assert!(lines[4].starts_with("{\"device\":\"00000007\",\"session\":1,\"seq\":0,"));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_foreign_file_is_refused_and_left_as_it_is_and_a_second_sink_too() {
        let path = file("foreign");
        let out = JsonlOut::File(path.clone());
        for content in [
            b"hello\n".as_slice(),
            b"{\"a\":1}\n",
            b"{\"device\":\"7\",\"session\":0,\"seq\":1}\n",
            b"{\"device\":\"00000007\",\"seq\":1}\n",
            b"hello",
            b"{\"device\":\"00000007\",\"session\":0,\"seq\":1}\n[1,2]\n",
        ] {
            std::fs::write(&path, content).unwrap();
            let e = JsonlSink::open(&out, false).unwrap_err();
            assert!(matches!(e, JsonlError::NotTether { .. }), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), content);
        }
        std::fs::write(&path, b"").unwrap();
        let first = JsonlSink::open(&out, false).unwrap();
        let e = JsonlSink::open(&out, false).unwrap_err();
        assert!(matches!(e, JsonlError::InUse { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(first);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
