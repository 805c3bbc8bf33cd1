//! What the dashboard's tests share: a `tether` process whose log is read as it runs (for
//! the addresses it says it listens on), and a small HTTP/1.1 client.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::Process;

/// A running `tether` whose standard error is collected.
pub struct Tether {
    pub process: Process,
    log: Arc<Mutex<String>>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Tether {
    /// Starts `tether ARGS`.
    pub fn start(args: &[&str]) -> Tether {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether starts");
        let log = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let into = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut l = into.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(out).read_to_string(&mut s);
            s
        });
        Tether {
            process: Process(child),
            log,
            stdout: Some(stdout),
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `limit` for a log line containing `marker`; returns the rest of that
    /// line after it.
    pub fn wait_for(&mut self, marker: &str, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(marker)) {
                let at = line.find(marker).unwrap() + marker.len();
                return line[at..].to_owned();
            }
            if let Ok(Some(status)) = self.process.try_wait() {
                panic!("tether exited ({status}) before logging `{marker}`:\n{log}");
            }
            assert!(
                t0.elapsed() < limit,
                "no `{marker}` in the log within {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The dashboard's address, from its "dashboard on http://ADDR/" line.
    pub fn dashboard(&mut self) -> SocketAddr {
        let rest = self.wait_for("dashboard on http://", Duration::from_secs(30));
        rest.trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("dashboard address `{rest}`: {e}"))
    }

    /// The address devices connect to, from a "listening on tcp://ADDR" line.
    pub fn tcp(&mut self, marker: &str) -> SocketAddr {
        let rest = self.wait_for(marker, Duration::from_secs(30));
        let addr = rest.split([',', ' ']).next().unwrap_or("");
        addr.parse()
            .unwrap_or_else(|e| panic!("address `{addr}` after `{marker}`: {e}"))
    }

    /// Stops it as Ctrl-C does and returns its exit code and standard output.
    pub fn interrupt(mut self, limit: Duration) -> (Option<i32>, String) {
        let pid = self.process.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "SIGINT sent");
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.process.try_wait().expect("wait") {
                break s;
            }
            assert!(
                t0.elapsed() < limit,
                "tether did not stop within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.stdout.take().map(|h| h.join().unwrap_or_default());
        // Its standard output, then its log (what a failed check says is there).
        (
            status.code(),
            format!("{}\n--- log ---\n{}", out.unwrap_or_default(), self.log()),
        )
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request, `Connection: close`, answered within 10 s. `extra` is more header lines.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[&str],
    body: Option<&str>,
) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).expect("request sent");
    // To its end, or as far as its Content-Length (Chromium's DevTools server keeps the
    // connection open whatever the request says).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).expect("response read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if length.is_some_and(|len| raw.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers: head.to_owned(),
        body,
    }
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str, extra: &[&str]) -> Response {
    request(addr, "GET", path, extra, None)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `probe` every 50 ms until it gives `Some`, for up to `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("tether-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    pub fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
