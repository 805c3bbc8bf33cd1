//! The CSV sink: one row per record, real columns, and "acked means written".
//!
//! Columns: `host_time` (RFC 3339, UTC, microseconds), `device` (the device's session
//! identity in hex, stable across reconnects), `seq` (the record's sequence number), then
//! the record's fields:
//! - a typed record (`tether_core::record`): one column per field, numbers in decimal,
//!   floats in their shortest exact form, booleans as `true`/`false`, bytes in hex;
//! - a text record: parsed as one CSV line, one column per field;
//! - anything else: one column, the payload in hex.
//!
//! Rows may have different numbers of fields; the header names the fixed columns and as
//! many `field_N` as the first record has.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tether_core::record::{Field, Fields};

/// Why the sink failed. The records concerned were not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The file could not be opened or written.
    #[error("CSV file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// Appends records to a CSV file.
#[derive(Debug)]
pub struct CsvSink {
    writer: RowWriter,
    path: PathBuf,
    fsync: bool,
    needs_header: bool,
    rows: u64,
    fields: Vec<String>,
    /// The last time formatted, and its text: a batch of records shares one time.
    time: Option<(SystemTime, String)>,
    /// The last device written, and its column text: a batch comes from one device.
    device: Option<(u32, [u8; 8])>,
}

/// Rows into a buffer, the buffer into the file when it fills or on [`RowWriter::flush`].
///
/// Fields are quoted as RFC 4180 and the `csv` crate's default writer do it ("necessary"
/// style: a field containing `,`, `"`, CR or LF is enclosed in quotes, its quotes
/// doubled). Written here rather than through `csv::Writer` because the listener's profile
/// (perf, 16-byte records) showed the crate's per-field writer and the per-record `String`s
/// it needed taking a third of the listener's time; the output is tested to be identical.
#[derive(Debug)]
struct RowWriter {
    file: File,
    buf: Vec<u8>,
}

/// Bytes buffered before they are handed to the file.
const ROW_BUFFER: usize = 64 * 1024;

impl RowWriter {
    fn new(file: File) -> Self {
        RowWriter {
            file,
            buf: Vec::with_capacity(ROW_BUFFER),
        }
    }

    /// One row of already-rendered fields.
    fn write_record<I, T>(&mut self, fields: I) -> io::Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        for (i, f) in fields.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            csv_field(&mut self.buf, f.as_ref());
        }
        self.end_row()
    }

    fn end_row(&mut self) -> io::Result<()> {
        self.buf.push(b'\n');
        if self.buf.len() >= ROW_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the buffer to the file. On an error, what the file took is dropped from the
    /// buffer and the rest kept (as `BufWriter` does), so a retry never writes a row twice.
    fn flush(&mut self) -> io::Result<()> {
        let mut done = 0;
        let result = loop {
            if done == self.buf.len() {
                break Ok(());
            }
            match self.file.write(&self.buf[done..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..done);
        result
    }
}

/// Appends one CSV field, quoted if it must be.
fn csv_field(out: &mut Vec<u8>, f: &[u8]) {
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

impl CsvSink {
    /// Opens `path` for appending (creating it); the header row is written before the first
    /// record if the file is empty. With `fsync`, [`CsvSink::commit`] waits until the rows are
    /// on disk.
    pub fn open(path: &Path, fsync: bool) -> Result<Self, SinkError> {
        let err = |source| SinkError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let needs_header = file.metadata().map_err(err)?.len() == 0;
        Ok(CsvSink {
            writer: RowWriter::new(file),
            path: path.to_owned(),
            fsync,
            needs_header,
            rows: 0,
            fields: Vec::new(),
            time: None,
            device: None,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows written since opening.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn io(&self, source: io::Error) -> SinkError {
        SinkError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes one record (buffered: call [`CsvSink::commit`] before acknowledging it).
    pub fn write(
        &mut self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        if self.needs_header {
            self.needs_header = false;
            self.fields.clear();
            render_fields(payload, &mut self.fields);
            let mut header = vec![
                "host_time".to_owned(),
                "device".to_owned(),
                "seq".to_owned(),
            ];
            header.extend((1..=self.fields.len()).map(|i| format!("field_{i}")));
            self.writer.write_record(&header).map_err(|e| self.io(e))?;
        }
        let time = match &self.time {
            Some((t, text)) if *t == time => text,
            _ => {
                let text = humantime::format_rfc3339_micros(time).to_string();
                &self.time.insert((time, text)).1
            }
        };
        let device = match self.device {
            Some((d, text)) if d == device => text,
            _ => {
                let mut text = [0u8; 8];
                for (i, b) in device.to_be_bytes().into_iter().enumerate() {
                    text[2 * i] = HEX[usize::from(b >> 4)];
                    text[2 * i + 1] = HEX[usize::from(b & 15)];
                }
                self.device = Some((device, text));
                text
            }
        };
        // Time, hex device and decimal seq never need quoting.
        let buf = &mut self.writer.buf;
        buf.reserve(64 + 2 * payload.len());
        buf.extend_from_slice(time.as_bytes());
        buf.push(b',');
        buf.extend_from_slice(&device);
        buf.push(b',');
        buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        write_fields(payload, buf);
        self.writer.end_row().map_err(|e| SinkError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        self.rows += 1;
        Ok(())
    }

    /// Writes one raw chunk (the tutorial's protocol) as a row: time, peer, chunk number,
    /// and the chunk as text (invalid UTF-8 replaced).
    pub fn write_text(
        &mut self,
        time: SystemTime,
        device: &str,
        seq: u32,
        chunk: &[u8],
    ) -> Result<(), SinkError> {
        let text = String::from_utf8_lossy(chunk);
        self.one_field_row(time, device, &seq.to_string(), &text)?;
        self.rows += 1;
        Ok(())
    }

    /// Writes a marker row for `device`: time, device, an empty seq, and `text` (which
    /// starts with `<`). The listener marks discontinuities in a device's records this way
    /// (see [`crate::recover`]).
    pub fn write_note(
        &mut self,
        time: SystemTime,
        device: u32,
        text: &str,
    ) -> Result<(), SinkError> {
        self.one_field_row(time, &format!("{device:08x}"), "", text)
    }

    /// A row of the fixed columns and one field (raw chunks and marker rows), after the
    /// header if the file is new.
    fn one_field_row(
        &mut self,
        time: SystemTime,
        device: &str,
        seq: &str,
        field: &str,
    ) -> Result<(), SinkError> {
        if self.needs_header {
            self.needs_header = false;
            self.writer
                .write_record(["host_time", "device", "seq", "field_1"])
                .map_err(|e| self.io(e))?;
        }
        let time = humantime::format_rfc3339_micros(time).to_string();
        self.writer
            .write_record([time.as_str(), device, seq, field])
            .map_err(|e| self.io(e))
    }

    /// Makes everything written so far durable to the promised degree: flushed to the
    /// operating system, and with `fsync` on disk. Only then may the records be
    /// acknowledged.
    pub fn commit(&mut self) -> Result<(), SinkError> {
        self.writer.flush().map_err(|e| self.io(e))?;
        if self.fsync {
            self.writer.file.sync_data().map_err(|e| self.io(e))?;
        }
        Ok(())
    }
}

/// Appends the record's fields to a row, each preceded by a comma, exactly as
/// [`render_fields`] renders them and [`RowWriter::write_record`] would quote them, without
/// building a `String` per field.
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
                    csv_field(buf, v.as_bytes());
                    Ok(())
                }
                Ok(Field::Bytes(v)) => {
                    hex_into(buf, v);
                    Ok(())
                }
                Err(e) => {
                    let text = format!("<{e}>");
                    csv_field(buf, text.as_bytes());
                    Ok(())
                }
            };
        }
        return;
    }
    if let Ok(text) = std::str::from_utf8(payload) {
        let line = text.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return;
        }
        // The common case: no quote and no line break. Then the fields are the line's
        // comma-separated pieces and none needs quoting, so the row gets the line as it is.
        if !line.bytes().any(|b| matches!(b, b'"' | b'\r' | b'\n')) {
            buf.push(b',');
            buf.extend_from_slice(line.as_bytes());
            return;
        }
        if !line.contains('"') {
            for piece in line.split(',') {
                buf.push(b',');
                csv_field(buf, piece.as_bytes());
            }
            return;
        }
        // Quoted fields: rare, so the general path.
        let mut fields = Vec::new();
        render_fields(payload, &mut fields);
        for f in fields {
            buf.push(b',');
            csv_field(buf, f.as_bytes());
        }
        return;
    }
    buf.push(b',');
    hex_into(buf, payload);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(buf: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        buf.push(HEX[usize::from(b >> 4)]);
        buf.push(HEX[usize::from(b & 15)]);
    }
}

/// The record's fields as CSV column texts.
pub fn render_fields(payload: &[u8], out: &mut Vec<String>) {
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
                Ok(Field::Str(v)) => v.to_owned(),
                Ok(Field::Bytes(v)) => hex(v),
                // A malformed tail is kept, visibly, rather than dropped.
                Err(e) => format!("<{e}>"),
            });
        }
        return;
    }
    if let Ok(text) = std::str::from_utf8(payload) {
        let line = text.trim_end_matches(['\r', '\n']);
        // Without quotes a CSV line's fields are exactly its comma-separated pieces; building
        // a csv reader per record costs ~30 µs (89 % of the listener's time when measured
        // with perf), so it is kept for the quoted case.
        if !line.contains('"') {
            if !line.is_empty() {
                out.extend(line.split(',').map(str::to_owned));
            }
            return;
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.trim_end_matches(['\r', '\n']).as_bytes());
        let mut record = csv::StringRecord::new();
        if let Ok(true) = reader.read_record(&mut record) {
            out.extend(record.iter().map(str::to_owned));
            return;
        }
        if text.is_empty() {
            return;
        }
    }
    out.push(hex(payload));
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

    /// The row the `csv` crate writes for `payload`, as the sink once did.
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

    proptest::proptest! {
        /// The hand-written row writer produces exactly the `csv` crate's bytes: for any
        /// payload, text made of CSV's special characters, and typed records.
        #[test]
        fn rows_match_the_csv_crate(
            device: u32,
            seq: u32,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            text in "[a-z0-9,\"\r\n ]{0,24}",
            num: i64,
            real: f64,
            word in "[a-z,\" ]{0,8}",
        ) {
            proptest::prop_assert_eq!(our_row(device, seq, &bytes), csv_crate_row(device, seq, &bytes));
            proptest::prop_assert_eq!(
                our_row(device, seq, text.as_bytes()),
                csv_crate_row(device, seq, text.as_bytes())
            );
            let mut buf = [0u8; 128];
            let mut w = RecordWriter::new(&mut buf);
            w.i64(num).unwrap().f64(real).unwrap().str(&word).unwrap().bytes(&bytes[..bytes.len().min(8)]).unwrap();
            let typed = w.finish();
            proptest::prop_assert_eq!(our_row(device, seq, typed), csv_crate_row(device, seq, typed));
            let cut = &typed[..typed.len() - 1];
            proptest::prop_assert_eq!(our_row(device, seq, cut), csv_crate_row(device, seq, cut));
        }
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
        assert_eq!(fields(&[0xFF, 0x00]), ["ff00"]);
        assert!(fields(b"").is_empty());
    }

    #[test]
    fn rows_of_alternating_devices_and_times_carry_their_own() {
        let dir = std::env::temp_dir().join(format!("tether-sink-alt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.csv");
        let _ = std::fs::remove_file(&path);
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let t2 = t + std::time::Duration::from_micros(1);
        let mut s = CsvSink::open(&path, false).unwrap();
        for (time, device, seq) in [(t, 0xA, 0), (t, 0xB, 0), (t2, 0xB, 1), (t2, 0xA, 1)] {
            s.write(time, device, seq, b"x").unwrap();
        }
        s.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "host_time,device,seq,field_1\n\
             2023-11-14T22:13:20.123456Z,0000000a,0,x\n\
             2023-11-14T22:13:20.123456Z,0000000b,0,x\n\
             2023-11-14T22:13:20.123457Z,0000000b,1,x\n\
             2023-11-14T22:13:20.123457Z,0000000a,1,x\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A disk that is full: the commit fails with the system's reason (so nothing is
    /// acknowledged), and the rows stay buffered for the next attempt.
    #[test]
    fn a_full_disk_fails_the_commit_and_keeps_the_rows() {
        let mut s = CsvSink::open(Path::new("/dev/full"), false).unwrap();
        s.write(SystemTime::UNIX_EPOCH, 1, 0, b"x").unwrap();
        let buffered = s.writer.buf.len();
        let e = s.commit().unwrap_err().to_string();
        assert!(e.contains("/dev/full") && e.contains("space"), "{e}");
        assert_eq!(s.writer.buf.len(), buffered);
    }

    #[test]
    fn writes_a_header_once_and_appends() {
        let dir = std::env::temp_dir().join(format!("tether-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.csv");
        let _ = std::fs::remove_file(&path);
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        for round in 0..2 {
            let mut s = CsvSink::open(&path, round == 1).unwrap();
            s.write(t, 0xD00D, round, b"1,2").unwrap();
            s.commit().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "host_time,device,seq,field_1,field_2\n\
             2023-11-14T22:13:20.123456Z,0000d00d,0,1,2\n\
             2023-11-14T22:13:20.123456Z,0000d00d,1,1,2\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
