//! `tether top URL`: a running listener's or bridge's dashboard in a terminal (a Pi over
//! SSH): the device table, each device's records/s as a sparkline, and a sparkline a field of
//! one device's readings, read from the dashboard's JSON API and event stream.
//!
//! A small renderer of its own rather than ratatui: the screen is a table redrawn once a
//! second and a few lines of block characters, with no input but Ctrl-C, which plain ANSI
//! sequences draw; ratatui and its terminal backend would add two dozen crates to `tether`
//! for it.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Values kept per sparkline (the widest drawn).
const HISTORY: usize = 240;
/// The block characters of a sparkline, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Why `tether top` cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The address is not one it can reach.
    #[error(
        "{0} is not a dashboard address: give http://IP:PORT (as `tether listen --http` logs it)"
    )]
    Url(String),
    /// The dashboard cannot be reached.
    #[error("cannot reach the dashboard at {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// It answered with an error.
    #[error("the dashboard at {addr} answered {status}: {text}")]
    Status {
        /// Where.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// What it said.
        text: String,
    },
    /// It answered with something that is not its API.
    #[error("the dashboard at {0} answered something that is not its JSON API")]
    Garbled(SocketAddr),
    /// The token file cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A dashboard to read: its address and the token it may require.
#[derive(Debug, Clone)]
pub struct Dashboard {
    addr: SocketAddr,
    token: Option<String>,
}

impl Dashboard {
    /// The dashboard at `url` (`http://IP:PORT/` or `IP:PORT`), with the token in
    /// `token_file` if given.
    pub fn new(url: &str, token_file: Option<&std::path::Path>) -> Result<Self, TopError> {
        let bare = url.strip_prefix("http://").unwrap_or(url);
        let bare = bare.split('/').next().unwrap_or("");
        let bare = bare.replace("localhost:", "127.0.0.1:");
        let addr = bare.parse().map_err(|_| TopError::Url(url.to_owned()))?;
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| TopError::Token {
                        path: path.to_owned(),
                        source,
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Dashboard { addr, token })
    }

    /// `GET /api/devices`.
    pub fn devices(&self) -> Result<Value, TopError> {
        let garbled = || TopError::Garbled(self.addr);
        let (status, body) = self.get("/api/devices", false)?;
        let text = body_text(&body);
        if status != 200 {
            let said = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(TopError::Status {
                addr: self.addr,
                status,
                text: said,
            });
        }
        serde_json::from_str(&text).map_err(|_| garbled())
    }

    /// One request; the status and the body (to its end: `Connection: close`).
    fn get(&self, path: &str, http10: bool) -> Result<(u16, Vec<u8>), TopError> {
        let connect = |source| TopError::Connect {
            addr: self.addr,
            source,
        };
        let mut s =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(connect)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(connect)?;
        let mut req = format!(
            "GET {path} HTTP/1.{}\r\nHost: {}\r\nConnection: close\r\n",
            if http10 { 0 } else { 1 },
            self.addr
        );
        if let Some(t) = &self.token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).map_err(connect)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(connect)?;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(TopError::Garbled(self.addr))?;
        let head = String::from_utf8_lossy(&raw[..end]);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or(TopError::Garbled(self.addr))?;
        let mut body = raw[end + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Ok((status, body))
    }

    /// Follows the readings of `device` (its samples' last values) into `into`, on a thread
    /// of its own, connecting again whenever the stream ends.
    pub fn follow(&self, device: String, into: Arc<Mutex<Readings>>) {
        let d = self.clone();
        let spawned = std::thread::Builder::new()
            .name("top-events".into())
            .spawn(move || loop {
                let _ = d.stream(&device, &into);
                std::thread::sleep(Duration::from_secs(1));
            });
        if let Err(e) = spawned {
            tracing::warn!("no readings: cannot start a thread: {e}");
        }
    }

    fn stream(&self, device: &str, into: &Mutex<Readings>) -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        let mut path = format!("/api/events?watch={device}");
        if let Some(t) = &self.token {
            let _ = write!(path, "&token={t}");
        }
        // HTTP/1.0: the body comes as it is, not in chunks.
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)?;
        let mut event = String::new();
        for line in BufReader::new(s).lines() {
            let line = line?;
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event == "sample" {
                    if let Ok(v) = serde_json::from_str::<Value>(data) {
                        crate::session::lock(into).add(&v);
                    }
                }
            }
        }
        Ok(())
    }
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(at) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..at])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        let rest = &body[at + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// Milliseconds of readings a sparkline's character stands for (its last value).
pub const READING_SLOT_MS: u64 = 250;

/// One device's readings: each field's last value every [`READING_SLOT_MS`].
#[derive(Debug, Default)]
pub struct Readings {
    fields: Vec<VecDeque<f64>>,
    /// The fields' names, as the latest sample gave them (`names`: declared, or field_N).
    names: Vec<String>,
    slot: Option<u64>,
}

impl Readings {
    /// Adds a sample event (`{"t": ms, "v": [[last, min, max], …]}`).
    pub fn add(&mut self, sample: &Value) {
        let Some(v) = sample["v"].as_array() else {
            return;
        };
        if let Some(names) = sample["names"].as_array() {
            self.names = names
                .iter()
                .map(|n| n.as_str().unwrap_or_default().to_owned())
                .collect();
        }
        let slot = sample["t"].as_u64().map(|t| t / READING_SLOT_MS);
        let same_slot = slot.is_some() && slot == self.slot;
        self.slot = slot;
        for (i, f) in v.iter().enumerate().take(16) {
            if i == self.fields.len() {
                self.fields.push(VecDeque::with_capacity(HISTORY));
            }
            let x = f[0].as_f64().unwrap_or(f64::NAN);
            let h = &mut self.fields[i];
            match h.back_mut() {
                Some(last) if same_slot => *last = x,
                _ => {
                    if h.len() == HISTORY {
                        h.pop_front();
                    }
                    h.push_back(x);
                }
            }
        }
    }
}

/// What `tether top` keeps between frames: each device's records/s.
#[derive(Debug, Default)]
pub struct Rates {
    per_device: HashMap<String, VecDeque<f64>>,
}

impl Rates {
    /// Adds the records/s of each device in `/api/devices`' answer.
    pub fn add(&mut self, api: &Value) {
        for d in api["devices"].as_array().into_iter().flatten() {
            let (Some(id), Some(r)) = (d["id"].as_str(), d["records_per_s"].as_f64()) else {
                continue;
            };
            let h = self.per_device.entry(id.to_owned()).or_default();
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(r);
        }
    }
}

/// A sparkline of the last `width` values, scaled between their lowest and highest.
pub fn sparkline(values: &VecDeque<f64>, width: usize) -> String {
    let skip = values.len().saturating_sub(width);
    let shown: Vec<f64> = values.iter().skip(skip).copied().collect();
    let finite = shown.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f64::INFINITY, f64::min);
    let hi = finite.fold(f64::NEG_INFINITY, f64::max);
    shown
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                ' '
            } else if hi - lo < 1e-12 {
                BARS[3]
            } else {
                BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
            }
        })
        .collect()
}

/// One frame: the heading, the totals, the table, and the watched device's fields.
pub fn render(
    api: &Value,
    rates: &Rates,
    watched: Option<(&str, &Readings)>,
    width: usize,
) -> String {
    let mut out = String::new();
    let t = &api["totals"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let _ = writeln!(out, "{}", api["title"].as_str().unwrap_or("tether"));
    let devices = api["devices"].as_array().cloned().unwrap_or_default();
    let connected = devices.iter().filter(|d| d["connected"] == true).count();
    let _ = writeln!(
        out,
        "{} records ({}/s), {} {} · {} devices, {connected} connected · {} retransmitted · {} corrupt, {} dropped frames",
        group(n(&t["records"])),
        group(f(&t["records_per_s"]).round() as u64),
        group(n(&t["finished"])),
        t["finished_means"].as_str().unwrap_or(""),
        n(&t["sessions"]),
        group(n(&t["retransmissions"])),
        group(n(&t["corrupt_frames"])),
        group(n(&t["dropped_frames"])),
    );
    out.push('\n');
    let head = format!(
        "{:<8}  {:<13}  {:<22} {:>10} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9} {:>5}  ",
        "DEVICE",
        "LINK",
        "PEER",
        "RECORDS",
        "REC/S",
        "RETX",
        "CORR",
        "DROP",
        "RECON",
        "SEEN",
        "PEND"
    );
    let spark = width.saturating_sub(head.chars().count()).min(HISTORY);
    let _ = writeln!(out, "{head}{}", if spark >= 6 { "RECORDS/S" } else { "" });
    for d in &devices {
        let id = d["id"].as_str().unwrap_or("?");
        let peer = match (d["transport"].as_str(), d["peer"].as_str()) {
            (Some(t), Some(p)) => format!("{t} {p}"),
            _ => "—".into(),
        };
        let seen = d["last_seen_ms"]
            .as_u64()
            .map_or_else(|| "—".into(), |ms| format!("{:.1} s", ms as f64 / 1e3));
        let line = format!(
            "{:<8}  {:<13}  {:<22} {:>10} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9} {:>5}  ",
            id,
            format!(
                "{}{}",
                if d["connected"] == true {
                    "● "
                } else {
                    "○ "
                },
                d["phase"].as_str().unwrap_or("")
            ),
            clip(&peer, 22),
            group(n(&d["records"])),
            group(f(&d["records_per_s"]).round() as u64),
            n(&d["retransmissions"]),
            n(&d["corrupt_frames"]),
            n(&d["dropped_frames"]),
            n(&d["reconnects"]),
            seen,
            n(&d["commands_pending"]),
        );
        let rate = rates
            .per_device
            .get(id)
            .filter(|_| spark >= 6)
            .map(|h| sparkline(h, spark))
            .unwrap_or_default();
        let _ = writeln!(out, "{line}{rate}");
    }
    if devices.is_empty() {
        out.push_str("(no device yet)\n");
    }
    if let Some((id, readings)) = watched {
        let _ = writeln!(
            out,
            "\n{id}'s readings, each field on its own scale, one character {READING_SLOT_MS} ms:"
        );
        for (i, h) in readings.fields.iter().enumerate() {
            let last = h.back().copied().unwrap_or(f64::NAN);
            let name = match readings.names.get(i) {
                Some(n) if !n.is_empty() => clip(n, 20),
                _ => format!("field_{}", i + 1),
            };
            let label = format!("{name:<20} {:>12}  ", short(last));
            let w = width.saturating_sub(label.chars().count()).max(8);
            let _ = writeln!(out, "{label}{}", sparkline(h, w));
        }
        if readings.fields.is_empty() {
            out.push_str("(waiting for readings)\n");
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

fn short(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// `n` with thousands separated by commas.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_between_the_lowest_and_highest() {
        let v: VecDeque<f64> = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
            .into_iter()
            .collect();
        assert_eq!(sparkline(&v, 8), "▁▂▃▄▅▆▇█");
        assert_eq!(
            sparkline(&v, 3),
            "▁▅█",
            "the latest values, on their own range"
        );
        let flat: VecDeque<f64> = [2.0, 2.0, f64::NAN].into_iter().collect();
        assert_eq!(sparkline(&flat, 8), "▄▄ ");
    }

    #[test]
    fn a_frame_has_the_table_and_the_watched_fields() {
        let api: Value = serde_json::from_str(
            r#"{"title": "tether demo", "totals": {"records": 12345, "records_per_s": 999.6,
                "finished": 12345, "finished_means": "written", "sessions": 1,
                "retransmissions": 0, "corrupt_frames": 0, "dropped_frames": 0},
                "devices": [{"id": "00d00001", "connected": true, "phase": "established",
                "transport": "tcp", "peer": "127.0.0.1:4000", "records": 12345,
                "records_per_s": 999.6, "retransmissions": 2, "corrupt_frames": 0,
                "dropped_frames": 0, "reconnects": 1, "last_seen_ms": 3,
                "commands_pending": 0}]}"#,
        )
        .unwrap();
        let mut rates = Rates::default();
        rates.add(&api);
        let mut readings = Readings::default();
        for i in 0..3 {
            readings.add(&serde_json::json!({"v": [[i as f64, 0, 0], [21.5, 0, 0]]}));
        }
        let frame = render(&api, &rates, Some(("00d00001", &readings)), 120);
        assert!(frame.starts_with("tether demo\n12,345 records (1,000/s), 12,345 written"));
        let row = frame.lines().find(|l| l.starts_with("00d00001")).unwrap();
        assert!(row.contains("● established") && row.contains("tcp 127.0.0.1:4000"));
        assert!(row.contains("12,345") && row.contains("1,000"), "{row}");
        let field = |name: &str, last: &str, line: &str| format!("{name:<20} {last:>12}  {line}\n");
        assert!(frame.contains(&field("field_1", "2", "▁▅█")), "{frame}");
        assert!(
            frame.contains(&field("field_2", "21.500", "▄▄▄")),
            "{frame}"
        );
        // A declared kind's fields by their names and units.
        readings.add(&serde_json::json!({"v": [[3, 0, 0], [21.5, 0, 0]],
            "names": ["counter", "temperature (°C)"]}));
        let frame = render(&api, &rates, Some(("00d00001", &readings)), 120);
        assert!(frame.contains(&field("counter", "3", "▁▃▆█")), "{frame}");
        assert!(
            frame.contains(&field("temperature (°C)", "21.500", "▄▄▄▄")),
            "{frame}"
        );
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(12), "12");
    }
}
