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
        Self::start_env(args, &[], stdin)
    }

    /// [`Logged::start`] with `env` added to its environment (and no PGPASSWORD or
    /// PGPASSFILE from the test's own, unless `env` gives them).
    pub fn start_env(args: &[&str], env: &[(&str, &str)], stdin: Stdio) -> Logged {
        let mut child = Process(
            Command::new(TETHER)
                .args(args)
                .env("RUST_LOG", "info")
                .env_remove("PGPASSWORD")
                .env_remove("PGPASSFILE")
                .envs(env.iter().copied())
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
        self.wait_for_after(0, needle, limit)
    }

    /// Waits for a line containing `needle` among those after the first `from` (a count
    /// from [`Logged::lines`]), within `limit`; the line.
    pub fn wait_for_after(&mut self, from: usize, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen[from.min(self.seen.len())..]
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("no `{needle}` within {limit:?}:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn pump(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// Lines written so far (after reading what is there).
    pub fn lines(&mut self) -> usize {
        self.pump();
        self.seen.len()
    }

    /// Everything written so far.
    pub fn text(&mut self) -> String {
        self.pump();
        self.seen.join("\n")
    }

    /// Its command line as the system shows it to every user (/proc/PID/cmdline).
    pub fn cmdline(&self) -> String {
        std::fs::read(format!("/proc/{}/cmdline", self.child.id()))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    }

    /// `kill -9`, and waits for it; everything it wrote.
    pub fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.text()
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
