//! A `tether` process run as a person runs it, whose standard error is read line by line.
// Each test file is its own crate and uses a part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Process;

/// The `tether` binary under test.
pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// A running `tether` and the lines it has written to standard error.
pub struct Logged {
    pub child: Process,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Logged {
    /// Starts `tether ARGS` (`RUST_LOG=info`) with `stdin`, standard output discarded.
    pub fn start(args: &[&str], stdin: Stdio) -> Logged {
        let mut child = Process(
            Command::new(TETHER)
                .args(args)
                .env("RUST_LOG", "info")
                .stdin(stdin)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("tether starts"),
        );
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Logged {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`, within `limit`; the line.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("no `{needle}` within {limit:?}:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The TCP address it logged it listens on.
    pub fn addr(&mut self) -> SocketAddr {
        let line = self.wait_for("listening on tcp://", Duration::from_secs(20));
        let rest = line
            .split("listening on tcp://")
            .nth(1)
            .expect("an address");
        rest.split([',', ' '])
            .next()
            .unwrap_or_default()
            .parse()
            .expect("IP:PORT")
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Sends it a signal by the `kill` command's name for it (`-INT`, `-TERM`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    /// SIGINT (Ctrl-C), then its exit code and everything it wrote.
    pub fn stop(self) -> (Option<i32>, String) {
        self.signal("-INT");
        self.exit_within(Duration::from_secs(15))
    }

    /// Waits up to `limit` for it to exit (fails the test if it does not); its exit code and
    /// everything it wrote.
    pub fn exit_within(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Everything up to the end of its standard error (the reader ends there).
        let drain = Instant::now() + Duration::from_secs(5);
        while let Ok(l) = self
            .lines
            .recv_timeout(drain.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l);
        }
        (status.code(), self.seen.join("\n"))
    }
}
