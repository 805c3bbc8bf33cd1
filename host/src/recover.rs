//! Crash safety for `tether listen`: what a listener recovers from its own CSV when it
//! starts, and how a device that resumes after a listener crash gets every record into the
//! CSV exactly once.
//!
//! The CSV is the listener's only durable state. A record is acknowledged only after its row
//! was handed to the operating system (with `--fsync`, after it is on disk), so after a
//! crash (kill -9, a panic; with `--fsync` also a power cut) every acknowledged record has
//! its row. What a crash leaves behind, and how it is dealt with:
//!
//! - **A torn last row**: rows are appended through a buffer, so a crash can cut the last
//!   one short. [`recover`] finds it (no end of line, or a quote left open) and truncates
//!   the file before it. Its record was not acknowledged (its batch
//!   was not committed), so the device still has it and sends it again.
//! - **Rows written but not acknowledged**: a batch reached the file and the listener died
//!   before its acknowledgement went out. The device sends those records again, and the
//!   new listener process, which cannot take over the old one's link state (its session
//!   identity is new, as `PROTOCOL.md` 9.1 requires), would write them twice. [`recover`]
//!   therefore reads each device's last written sequence number from the CSV, and
//!   [`Resume`] skips re-sent records up to it when the device resumes its session (its
//!   HELLO names an earlier listener session).
//! - **A device that restarted** (its HELLO names no listener, so it lost its own state)
//!   while keeping its identity: its numbering starts afresh. That is reported in the log
//!   and by a marker row in the CSV, and nothing is skipped.
//! - **A device that kept its session but moved on** (its HELLO names a session, and its
//!   oldest unacknowledged record is beyond what this listener received: another receiver
//!   acknowledged the records between): the listener takes up its numbering there, and a
//!   marker row says that the records before that the listener had not received are not in
//!   the CSV.
//!
//! Recovery cuts only a file that is a Tether CSV: [`CsvSink::open`] refuses any other (and
//! locks the file, so that a second listener cannot write it at the same time). A failed
//! write (a full disk) is no crash: the sink cuts its batch off and the records stay
//! unacknowledged (see [`crate::sink`]).
//!
//! Startup reads the whole CSV once, streaming (measured: 0.75 s for a million rows, 62 MB,
//! on a 2-core VM, release build), keeping a few dozen bytes per device.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::SystemTime;

use tracing::{info, warn};

use crate::sink::{Batch, CsvSink, Sink};

/// Why the CSV could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The file could not be read or repaired.
    #[error("recovering CSV file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The database could not be read.
    #[error("recovering from {sink}: {error}")]
    Database {
        /// The sink ([`Sink::describe`]).
        sink: String,
        /// What the database said.
        error: String,
    },
}

/// What [`recover`] found in an existing CSV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Each device's last row: the sequence number of its record written last.
    pub last_seq: HashMap<u32, u32>,
    /// Rows read (records and marker rows, not the header).
    pub rows: u64,
    /// Bytes cut from the end: a torn last row (0 if none).
    pub truncated: u64,
    /// The text that was cut, shortened, for the log.
    pub torn: Option<String>,
    /// The record kinds declared (`PROTOCOL.md` 10.5), in the order they were written: each
    /// device's declaration records.
    pub declarations: Vec<(u32, Vec<u8>)>,
}

/// Reads the CSV of `sink` (opened, so locked and known to be Tether's: see
/// [`CsvSink::open`]), truncates a torn last row, and returns each device's last written
/// sequence number. Nothing is cut from a file that is not a Tether CSV, since
/// [`CsvSink::open`] refuses one.
pub fn recover(sink: &mut CsvSink) -> Result<Recovered, RecoverError> {
    let path = sink.path().to_owned();
    let err = |source| RecoverError::Io {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len == 0 {
        return Ok(Recovered::default());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(256 * 1024, file));
    let mut found = Recovered::default();
    let mut row = csv::ByteRecord::new();
    // Where the last record read starts, and its device and seq.
    let mut last: Option<LastRow> = None;
    let mut first = true;
    loop {
        let start = reader.position().byte();
        match reader.read_byte_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {}
            // Invalid UTF-8 is not an error for byte records; a read error is.
            Err(e) => return Err(err(io::Error::other(e))),
        }
        if let Some((_, Some((device, seq)))) = last {
            found.last_seq.insert(device, seq);
        }
        if let Some(d) = declaration_row(&row) {
            found.declarations.push(d);
        }
        if !first {
            found.rows += 1;
        }
        first = false;
        last = Some((start, parse_row(&row)));
    }
    let Some((start, parsed)) = last else {
        return Ok(found);
    };
    // The last record is whole if it ends with an end of line and closes its quotes: rows
    // are written whole, so only a write cut short leaves one without (a complete line is
    // never cut, whatever it holds).
    let mut file = reader.into_inner().into_inner();
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start)).map_err(err)?;
    file.take(len - start).read_to_end(&mut tail).map_err(err)?;
    let quotes = tail.iter().filter(|&&b| b == b'"').count();
    let whole = tail.last() == Some(&b'\n') && quotes % 2 == 0;
    if whole {
        if let Some((device, seq)) = parsed {
            found.last_seq.insert(device, seq);
        }
        return Ok(found);
    }
    sink.cut_back(start).map_err(|e| match e {
        crate::sink::SinkError::Io { source, .. } => err(source),
        other => err(io::Error::other(other.to_string())),
    })?;
    found.truncated = len - start;
    found.rows = found.rows.saturating_sub(1);
    let shown = String::from_utf8_lossy(&tail[..tail.len().min(80)]).into_owned();
    found.torn = Some(shown);
    Ok(found)
}

/// Where a row starts, and its device and seq.
type LastRow = (u64, Option<(u32, u32)>);

/// The device and declaration of a row that holds a declaration: `<declared kind …>` and
/// `<declaration HEX>` as its fields (a text field never begins with a single `<`, so no text
/// record looks like one).
fn declaration_row(row: &csv::ByteRecord) -> Option<(u32, Vec<u8>)> {
    let (device, _) = parse_row(row)?;
    if !row.get(3)?.starts_with(b"<declared kind ") {
        return None;
    }
    let hex = row
        .get(4)?
        .strip_prefix(b"<declaration ")?
        .strip_suffix(b">")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = hex
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((device, bytes))
}

/// The device and seq of a record row (`None` for the header, marker rows and rows of
/// `--raw`, whose device is a peer address).
fn parse_row(row: &csv::ByteRecord) -> Option<(u32, u32)> {
    let device = std::str::from_utf8(row.get(1)?).ok()?;
    let seq = std::str::from_utf8(row.get(2)?).ok()?;
    if device.len() != 8 {
        return None;
    }
    Some((
        u32::from_str_radix(device, 16).ok()?,
        seq.parse::<u32>().ok()?,
    ))
}

/// What a device's HELLO says about its state (from [`crate::session::Hello::info`]): the
/// listener session it names (0 if none: the device starts afresh) and the first record it
/// will send (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloInfo {
    /// The listener session the device knew, 0 if none.
    pub peer_session: u32,
    /// The device's oldest unacknowledged record.
    pub tx_base: u32,
    /// The largest record the device says it may send.
    pub max_send: u16,
}

/// `a` is at or before `b` in serial-number order (`PROTOCOL.md` 9.2).
fn at_or_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// Something a [`Resume`] wants said, in the log and (for discontinuities) in the CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The device resumed a session of an earlier listener process; records it sends again
    /// through `skip_through` are already in the CSV and will be skipped.
    Resumed {
        /// The device's first record sent again.
        from: u32,
        /// Its last record already in the CSV.
        skip_through: u32,
    },
    /// The device resumed, but records an earlier listener acknowledged are not in the CSV
    /// (it was truncated or edited, or a power cut took rows not yet on disk without
    /// `--fsync`).
    Missing {
        /// The device's last record in the CSV.
        last_written: u32,
        /// The first record the device still has.
        from: u32,
    },
    /// The device starts a new numbering under an identity the CSV already has rows of: it
    /// restarted and lost its state (records it had not got acknowledged are gone with it,
    /// or are sent again under new numbers).
    Restarted {
        /// Its previous instance's last record in the CSV.
        last_written: u32,
        /// The first record of its new numbering.
        from: u32,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Notice::Resumed { from, skip_through } => write!(
                f,
                "resumes after a listener restart: records {from} to {skip_through} sent \
                 again are already in the CSV and are skipped"
            ),
            Notice::Missing { last_written, from } => write!(
                f,
                "resumes at record {from}, but the CSV ends at its record {last_written}: \
                 {} acknowledged records are missing from the CSV (truncated, or a power \
                 cut without --fsync)",
                from.wrapping_sub(last_written).wrapping_sub(1)
            ),
            Notice::Restarted { last_written, from } => write!(
                f,
                "restarted (it lost its session): its records are numbered afresh from \
                 {from}; the rows before are its previous instance's, up to record \
                 {last_written}; records it had not got acknowledged were lost with it or \
                 are sent again under new numbers"
            ),
        }
    }
}

/// One device's written position, so that what it sends again after a listener restart is
/// written once.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Its last record in the CSV (committed by this process, or found by [`recover`]).
    last_written: Option<u32>,
    /// Records up to this one are in the CSV already: skip them.
    skip_through: Option<u32>,
    /// Whether a HELLO was seen by this process's link of the device.
    seen_hello: bool,
    /// The HELLO of its latest connection: what its link adopts, and so what a restart it
    /// reports is about.
    latest: Option<HelloInfo>,
    /// Records skipped.
    skipped: u64,
}

/// What the link's report of a restart (`Event::PeerRestarted`) is about, for
/// [`report_restart`]: the device's last record written, and the HELLO its link adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// Its last record in the CSV, if any.
    pub last_written: Option<u32>,
    /// The HELLO of its latest connection, if it was read.
    pub hello: Option<HelloInfo>,
}

impl Resume {
    /// A device whose last record in the CSV is `last_written`.
    pub fn new(last_written: Option<u32>) -> Self {
        Resume {
            last_written,
            ..Resume::default()
        }
    }

    /// A new connection of the device said `hello`. Only the first HELLO a fresh link sees
    /// makes a notice: later ones the link itself resumes (or reports as a restart, see
    /// [`Resume::restarted`]).
    pub fn on_hello(&mut self, hello: Option<HelloInfo>) -> Option<Notice> {
        self.latest = hello;
        if std::mem::replace(&mut self.seen_hello, true) {
            return None;
        }
        let (hello, last) = (hello?, self.last_written?);
        if hello.peer_session == 0 {
            return Some(Notice::Restarted {
                last_written: last,
                from: hello.tx_base,
            });
        }
        if at_or_before(hello.tx_base, last) {
            self.skip_through = Some(last);
            Some(Notice::Resumed {
                from: hello.tx_base,
                skip_through: last,
            })
        } else if hello.tx_base != last.wrapping_add(1) {
            Some(Notice::Missing {
                last_written: last,
                from: hello.tx_base,
            })
        } else {
            None
        }
    }

    /// Whether record `seq`, delivered by the link, is already in the CSV (then it is
    /// released unwritten). Nothing changes until [`Resume::committed`]: a batch that
    /// fails is offered again, and skips the same records.
    pub fn already_written(&self, seq: u32) -> bool {
        self.skip_through
            .is_some_and(|through| at_or_before(seq, through))
    }

    /// A batch of the device's records up to `last` is in the CSV (committed), `skipped` of
    /// them skipped as already there.
    pub fn committed(&mut self, last: u32, skipped: u64) {
        self.skipped += skipped;
        self.last_written = Some(last);
        if self.skip_through.is_some_and(|t| !at_or_before(last, t)) {
            self.skip_through = None;
        }
    }

    /// The link reported that the device restarted (`Event::PeerRestarted`): it takes up
    /// the device's numbering, so nothing more is skipped. Returns what the report is
    /// about.
    pub fn restarted(&mut self) -> Restart {
        self.skip_through = None;
        Restart {
            last_written: self.last_written,
            hello: self.latest,
        }
    }

    /// The device's last record written, if any.
    pub fn last_written(&self) -> Option<u32> {
        self.last_written
    }

    /// Records skipped as already written.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// Logs what [`recover`] found in `sink` ([`Sink::describe`]).
pub fn log_recovered(sink: &str, r: &Recovered) {
    if let Some(torn) = &r.torn {
        warn!(
            "{}: the last row was torn (the listener stopped while writing it); cut {} bytes: \
             {torn:?}. Its record was not acknowledged, so its device sends it again",
            sink, r.truncated
        );
    }
    if r.rows > 0 {
        info!(
            "{}: {} row{} from before, {} device{}; a device resuming its session continues \
             after its last row",
            sink,
            r.rows,
            if r.rows == 1 { "" } else { "s" },
            r.last_seq.len(),
            if r.last_seq.len() == 1 { "" } else { "s" }
        );
    }
}

/// Reports a [`Notice`] about `device` in the log and, for a discontinuity in its records
/// (missing records, a restart), as a marker row in the CSV.
pub fn report(sink: &mut dyn Sink, device: u32, notice: &Notice) {
    match notice {
        Notice::Resumed { .. } => info!("device {device:08x} {notice}"),
        Notice::Missing { .. } | Notice::Restarted { .. } => {
            warn!("device {device:08x} {notice}");
            note(sink, device, &format!("<device {notice}>"));
        }
    }
}

/// The marker text for a restart the link of `device` reported (`PROTOCOL.md` 9.5.5: its
/// receive side did not resume, and took up the device's numbering). Two cases:
/// - the HELLO named no session: the device lost its state and numbers its records
///   afresh;
/// - it named one: the device kept its session and numbering, but no longer holds records
///   this listener had not received (its oldest unacknowledged record is beyond them:
///   another receiver acknowledged them, or it dropped them).
pub fn restart_text(restart: &Restart) -> String {
    match restart.hello {
        Some(h) if h.peer_session != 0 => {
            let from = h.tx_base;
            let last = match restart.last_written {
                Some(last) => format!(" (its last record written until then: {last})"),
                None => String::new(),
            };
            format!(
                "<device continued its session at record {from}, beyond what this listener \
                 had received of it{last}: it kept its numbering, and the records before \
                 {from} that had not reached this listener are not in the CSV>"
            )
        }
        _ => match restart.last_written {
            Some(last) => format!(
                "<device restarted (it lost its session): its records are numbered afresh; \
                 the rows before are its previous instance's, up to record {last}; records \
                 it had not got acknowledged were lost with it or are sent again under new \
                 numbers>"
            ),
            None => {
                "<device restarted (it lost its session): its records are numbered afresh>".into()
            }
        },
    }
}

/// Reports a restart of `device` that its link detected (`in_doubt`: commands sent to it
/// and not acknowledged), in the log and by a marker row in the CSV.
pub fn report_restart(sink: &mut dyn Sink, device: u32, restart: Restart, in_doubt: u32) {
    let text = restart_text(&restart);
    let said = text.trim_start_matches("<device ").trim_end_matches('>');
    if restart.hello.is_some_and(|h| h.peer_session != 0) {
        warn!("device {device:08x} {said}");
    } else {
        warn!("device {device:08x} {said}; {in_doubt} commands in doubt, sent again");
    }
    note(sink, device, &text);
}

/// Writes a marker row in a batch of its own. If that fails, the sink keeps the row and
/// writes it first in its next batch that commits.
fn note(sink: &mut dyn Sink, device: u32, text: &str) {
    let mut batch = Batch::new(sink);
    let r = batch
        .write_note(SystemTime::now(), device, text)
        .and_then(|()| batch.commit());
    if let Err(e) = r {
        warn!("device {device:08x}: a marker row is not written yet ({e}); it is written first once writing works");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-recover-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const HEADER: &str = "host_time,device,seq,field_1\n";

    /// [`recover`] through a sink of its own, closed again.
    fn recover_file(p: &Path) -> Recovered {
        recover(&mut CsvSink::open(p, false).unwrap()).unwrap()
    }

    #[test]
    fn a_file_that_is_not_a_tether_csv_is_never_cut() {
        let d = dir("foreign");
        let p = d.join("u.csv");
        std::fs::write(&p, "name,age\nbob,42\nalice,3").unwrap();
        assert!(CsvSink::open(&p, false).is_err());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "name,age\nbob,42\nalice,3"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_each_devices_last_seq_and_keeps_a_whole_file() {
        let d = dir("whole");
        let p = d.join("a.csv");
        let text = format!(
            "{HEADER}t,0000000a,0,x\nt,0000000b,7,\"y,\"\"z\"\"\nw\"\nt,0000000a,1,x\n\
             t,0000000b,,<a marker row>\nt,127.0.0.1:9,3,raw\n"
        );
        std::fs::write(&p, &text).unwrap();
        let r = recover_file(&p);
        assert_eq!(r.last_seq, HashMap::from([(0xa, 1), (0xb, 7)]));
        assert_eq!((r.rows, r.truncated, r.torn), (5, 0, None));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn truncates_a_torn_last_row_of_any_kind() {
        let d = dir("torn");
        let p = d.join("a.csv");
        let good = format!("{HEADER}t,0000000a,0,x\nt,0000000a,1,x\n");
        for torn in [
            "t,0000000a,2,x",               // no end of line
            "t,0000000a,2,\"open\nquote\n", // a quoted field cut after an end of line
            "t,0000",                       // cut in the device column
        ] {
            std::fs::write(&p, format!("{good}{torn}")).unwrap();
            let r = recover_file(&p);
            assert_eq!(r.truncated, torn.len() as u64, "{torn:?}");
            assert_eq!(r.last_seq, HashMap::from([(0xa, 1)]), "{torn:?}");
            assert_eq!(r.rows, 2);
            assert_eq!(std::fs::read_to_string(&p).unwrap(), good);
        }
        // A complete line is kept, whatever it holds.
        std::fs::write(&p, format!("{good}t\n")).unwrap();
        assert_eq!(recover_file(&p).truncated, 0);
        // A header cut short leaves an empty file, which gets a new header.
        std::fs::write(&p, "host_time,dev").unwrap();
        let mut sink = CsvSink::open(&p, false).unwrap();
        assert_eq!(recover(&mut sink).unwrap().truncated, 13);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        let mut batch = sink.batch();
        batch.write(SystemTime::UNIX_EPOCH, 0xa, 0, b"x").unwrap();
        batch.commit().unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().starts_with(HEADER));
        drop(sink);
        assert_eq!(recover_file(&d.join("none.csv")), Recovered::default());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_resuming_device_skips_what_is_written_and_a_restarted_one_is_reported() {
        let hello = |peer_session, tx_base| {
            Some(HelloInfo {
                peer_session,
                tx_base,
                max_send: 64,
            })
        };
        // Resumes with records 5..=9 already written: they are skipped, 10 is written.
        let mut r = Resume::new(Some(9));
        assert_eq!(
            r.on_hello(hello(0x1234, 5)),
            Some(Notice::Resumed {
                from: 5,
                skip_through: 9
            })
        );
        assert_eq!(r.on_hello(hello(0x1234, 5)), None, "only the first HELLO");
        assert!((5..=9).all(|s| r.already_written(s)));
        assert!(!r.already_written(10));
        // A batch that failed changes nothing: offered again, the same records are skipped.
        assert!((5..=9).all(|s| r.already_written(s)));
        r.committed(8, 4);
        assert!(r.already_written(9), "still skipped through 9");
        r.committed(11, 1);
        assert!(!r.already_written(9), "past it: nothing more is skipped");
        assert_eq!((r.skipped(), r.last_written()), (5, Some(11)));
        // Across the wrap of the numbering.
        let mut r = Resume::new(Some(2));
        r.on_hello(hello(1, u32::MAX - 1));
        assert!(r.already_written(u32::MAX) && r.already_written(2));
        assert!(!r.already_written(3));
        // Exactly where it stopped: nothing to say.
        assert_eq!(Resume::new(Some(9)).on_hello(hello(1, 10)), None);
        // Acknowledged records missing from the CSV.
        assert_eq!(
            Resume::new(Some(9)).on_hello(hello(1, 20)),
            Some(Notice::Missing {
                last_written: 9,
                from: 20
            })
        );
        // A device that lost its state: reported, nothing skipped.
        let mut r = Resume::new(Some(9));
        assert_eq!(
            r.on_hello(hello(0, 0)),
            Some(Notice::Restarted {
                last_written: 9,
                from: 0
            })
        );
        assert!(!r.already_written(0));
        // A device the CSV does not know.
        assert_eq!(Resume::new(None).on_hello(hello(1, 0)), None);
    }

    /// A restart the link reports is told for what it is: a device that named no session
    /// lost it; one that named a session kept it (and its numbering), and moved on.
    #[test]
    fn a_restart_marker_says_whether_the_device_kept_its_session() {
        let hello = |peer_session, tx_base| {
            Some(HelloInfo {
                peer_session,
                tx_base,
                max_send: 64,
            })
        };
        let mut r = Resume::new(Some(4));
        r.on_hello(hello(0x1234, 0));
        r.on_hello(hello(0x5678, 10));
        let kept = restart_text(&r.restarted());
        assert!(!kept.contains("lost its session"), "{kept}");
        assert!(
            kept.starts_with("<device continued its session at record 10"),
            "{kept}"
        );
        assert!(kept.contains("last record written until then: 4"), "{kept}");
        assert!(kept.contains("kept its numbering"), "{kept}");
        r.on_hello(hello(0, 0));
        let lost = restart_text(&r.restarted());
        assert!(
            lost.starts_with("<device restarted (it lost its session)"),
            "{lost}"
        );
        assert!(lost.contains("up to record 4"), "{lost}");
        let unknown = restart_text(&Resume::new(None).restarted());
        assert!(unknown.contains("lost its session"), "{unknown}");
    }
}
