//! `tether send` as a user meets it, through the real binary: a line from a pipe written at
//! once, a command typed at the listener printed and the sender still exiting, a line it
//! cannot send in the middle of the input, `kill -9` and a rerun with the state file, a
//! listener that accepts and never acknowledges, endpoints one cannot connect to, the
//! tutorial's server, and a refusal said in words.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Process;
use tether_core::link::{Config, Link, Role};
use tether_host::storage::HeapStorage;

/// The binary under test; `TETHER_UNDER_TEST` runs these tests against another build (an
/// older one, to see them fail).
fn tether() -> String {
    std::env::var("TETHER_UNDER_TEST").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tether").into())
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-send-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `tether listen` on a port the system picks, logging to `dir/listener.log`; `stdin`
/// piped (for commands) or null.
struct Listener {
    process: Process,
    addr: SocketAddr,
    log: PathBuf,
}

impl Listener {
    fn start(dir: &Path, csv: &Path, piped: bool, extra: &[&str]) -> Listener {
        let log = dir.join("listener.log");
        let process = Process(
            Command::new(tether())
                .args(["listen", "tcp://127.0.0.1:0", "--csv"])
                .arg(csv)
                .args(extra)
                .stdin(if piped { Stdio::piped() } else { Stdio::null() })
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let start = Instant::now();
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("listening on tcp://").nth(1) {
                let addr = rest.split(',').next().unwrap();
                break addr.parse().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the listener never listened:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Listener { process, addr, log }
    }

    fn endpoint(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.process.stdin.as_mut().unwrap()
    }

    /// Stops it with SIGINT (it writes and acknowledges what arrived) and waits.
    fn stop(mut self) -> String {
        let ok = Command::new("kill")
            .args(["-INT", &self.process.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let start = Instant::now();
        while self.process.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the listener did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// The CSV's record rows (marker rows, with an empty seq, left out): device, seq, fields.
fn rows(csv: &Path) -> Vec<(String, u32, Vec<String>)> {
    let Ok(mut r) = csv::ReaderBuilder::new().flexible(true).from_path(csv) else {
        return Vec::new();
    };
    r.records()
        .filter_map(Result::ok)
        .filter(|r| !r[2].is_empty())
        .map(|r| {
            (
                r[1].to_owned(),
                r[2].parse().unwrap(),
                r.iter().skip(3).map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// Waits (bounded) for `child` to exit; kills it and fails after `limit`.
fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `tether send ARGS` with `stdin` to its end, bounded in time.
fn send(args: &[&str], stdin: &[u8], limit: Duration) -> Output {
    let mut child = Command::new(tether())
        .arg("send")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = std::thread::spawn(move || {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let t = std::thread::spawn(move || {
            let _ = err.read_to_end(&mut e);
            e
        });
        let _ = out.read_to_end(&mut o);
        (o, t.join().unwrap())
    });
    let status = wait_exit(&mut child, limit, &format!("tether send {args:?}"));
    writer.join().unwrap();
    let (stdout, stderr) = readers.join().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_line_from_a_pipe_is_written_while_the_writer_still_holds_the_pipe_open() {
    let d = temp_dir("pipe");
    let csv = d.join("r.csv");
    let l = Listener::start(&d, &csv, false, &[]);
    let mut sender = Process(
        Command::new(tether())
            .args(["send", &l.endpoint()])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut pipe = sender.stdin.take().unwrap();
    // Connected first, so the time measured is the line's, not the connection's.
    std::thread::sleep(Duration::from_millis(500));
    pipe.write_all(b"21.5,first\n").unwrap();
    pipe.flush().unwrap();
    let written = Instant::now();
    while rows(&csv).is_empty() {
        assert!(
            written.elapsed() < Duration::from_secs(3),
            "the first line is not in the CSV 3 s after it was written, the pipe still open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = written.elapsed();
    pipe.write_all(b"22.0,second\n").unwrap();
    drop(pipe);
    let status = wait_exit(&mut sender, Duration::from_secs(20), "tether send");
    assert!(status.success());
    l.stop();
    let r = rows(&csv);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].2, ["21.5", "first"]);
    assert_eq!(r[1].2, ["22.0", "second"]);
    eprintln!("first line in the CSV {took:?} after it was written");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_command_typed_at_the_listener_is_printed_and_the_sender_still_exits_0() {
    let d = temp_dir("command");
    let csv = d.join("r.csv");
    let mut l = Listener::start(&d, &csv, true, &[]);
    let mut sender = Process(
        Command::new(tether())
            .args(["send", &l.endpoint()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut pipe = sender.stdin.take().unwrap();
    // More than 64 KiB, so that even a sender that batches lines sends some.
    pipe.write_all(numbered(0..8000).as_bytes()).unwrap();
    let start = Instant::now();
    while rows(&csv).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    l.stdin().write_all(b"* status\n").unwrap();
    l.stdin().flush().unwrap();
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(&l.log).unwrap();
        if log.contains("acknowledged commands up to #0") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sender never acknowledged the command:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pipe.write_all(b"8000,done\n").unwrap();
    drop(pipe);
    // Before: the sender never released the command, so its close never completed and it
    // never exited.
    let status = wait_exit(&mut sender, Duration::from_secs(10), "tether send");
    let mut out = String::new();
    sender
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(out, "status\n", "the command, one line on standard output");
    l.stop();
    assert_eq!(rows(&csv).len(), 8001);
    let _ = std::fs::remove_dir_all(&d);
}

fn numbered(lines: std::ops::Range<u32>) -> String {
    lines.map(|i| format!("{i},ok\n")).collect()
}

#[test]
fn a_line_it_cannot_send_stops_it_after_everything_before_is_acknowledged_or_is_skipped() {
    let d = temp_dir("bad-line");
    let csv = d.join("r.csv");
    let l = Listener::start(&d, &csv, false, &[]);
    let long = "x".repeat(2000) + "\n";
    let input = format!(
        "{}{long}{}\x1Etyped-looking\n{}",
        numbered(0..100),
        numbered(100..110),
        numbered(110..115)
    );
    let out = send(&[&l.endpoint()], input.as_bytes(), Duration::from_secs(30));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for part in [
        "stopped at line 101",
        "2000 bytes long",
        "at most 1024 bytes",
        "the 100 lines before it were acknowledged",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    let first = rows(&csv);
    assert_eq!(first.len(), 100, "every line before it, in the CSV");
    assert!(first
        .iter()
        .enumerate()
        .all(|(i, r)| r.2[0] == i.to_string()));

    // A line starting with 0x1E (a typed record's marker) stops it the same way.
    let out = send(
        &[&l.endpoint()],
        numbered(100..110)
            .as_bytes()
            .iter()
            .copied()
            .chain(*b"\x1Etyped\n")
            .collect::<Vec<_>>()
            .as_slice(),
        Duration::from_secs(30),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stopped at line 11: it starts with the byte 0x1E"),
        "{err}"
    );
    assert!(
        err.contains("the 10 lines before it were acknowledged"),
        "{err}"
    );

    let out = send(
        &[&l.endpoint(), "--skip-bad-lines"],
        input.as_bytes(),
        Duration::from_secs(30),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("skipped line 101: it is 2000 bytes long"),
        "{err}"
    );
    assert!(
        err.contains("skipped line 112: it starts with the byte 0x1E"),
        "{err}"
    );
    assert!(err.contains("115 lines acknowledged"), "{err}");
    assert!(err.contains("2 lines skipped"), "{err}");
    l.stop();
    let all = rows(&csv);
    assert_eq!(all.len(), 100 + 10 + 115);
    assert!(
        !all.iter().any(|r| r.2.iter().any(|f| f.contains("typed"))),
        "no line starting with 0x1E reached the CSV"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn kill_9_and_a_rerun_with_the_state_file_deliver_every_line_exactly_once() {
    let d = temp_dir("state");
    let csv = d.join("r.csv");
    let input = d.join("in.txt");
    let n = 300_000u32;
    let body: String = (1..=n).map(|i| format!("{i},payload-abcdefgh\n")).collect();
    std::fs::write(&input, &body).unwrap();
    let state = d.join("send.state");
    let l = Listener::start(&d, &csv, false, &[]);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "send".to_owned(),
            l.endpoint(),
            input.display().to_string(),
            "--state-file".into(),
            state.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for round in 0..2 {
        // A small window keeps these senders slow enough to be caught mid-stream (with the
        // default one, version 2 sent all 300,000 lines before the second sender started).
        let mut sender = Process(
            Command::new(tether())
                .args(args(&["--window", "4"]))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Killed mid-stream: some rows in, many to go.
        let want = 40_000 * (round + 1);
        let start = Instant::now();
        while rows(&csv).len() < want {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "only {} rows arrived",
                rows(&csv).len()
            );
            assert!(
                sender.try_wait().unwrap().is_none(),
                "the sender ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if round == 0 {
            // One sender per state file.
            let second = Command::new(tether()).args(args(&[])).output().unwrap();
            assert_eq!(second.status.code(), Some(2));
            assert!(
                text(&second.stderr).contains("is in use by another tether send"),
                "{}",
                text(&second.stderr)
            );
        }
        sender.kill().unwrap();
        sender.wait().unwrap();
        assert!(rows(&csv).len() < n as usize, "killed before the end");
    }
    let out = Command::new(tether()).args(args(&[])).output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming session"), "{err}");
    let summary = l.stop();
    let r = rows(&csv);
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for row in &r {
        *seen.entry(row.2[0].as_str()).or_default() += 1;
    }
    let dup = seen.values().filter(|&&c| c > 1).count();
    assert_eq!(dup, 0, "lines written twice (the issue saw 85,696)");
    assert_eq!(r.len(), n as usize, "every line once");
    assert!(
        r.iter().all(|row| row.0 == r[0].0),
        "one device: the session resumed, not a new device"
    );
    assert!(r.windows(2).all(|w| w[1].1 == w[0].1 + 1), "seq 0, 1, 2…");
    assert!(!summary.contains("restarted"), "{summary}");

    // The same state for another input is refused, and so is a pipe.
    let other = d.join("other.txt");
    std::fs::write(&other, "1,other\n").unwrap();
    let out = Command::new(tether())
        .args([
            "send",
            &l_endpoint_unused(),
            other.to_str().unwrap(),
            "--state-file",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("belongs to another input"),
        "{}",
        text(&out.stderr)
    );
    let out = send(
        &[
            "tcp://127.0.0.1:9",
            "--state-file",
            d.join("s2").to_str().unwrap(),
        ],
        b"1,x\n",
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--state-file needs an input that can be read again"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// An endpoint nothing is expected to answer on (the state check fails first).
fn l_endpoint_unused() -> String {
    "tcp://127.0.0.1:9".into()
}

/// A fake listener: accepts connections, answers the handshake as a Tether server, never
/// acknowledges a record (it never releases one), and hangs up after `hold` so the sender
/// reconnects. Runs until the test ends.
fn never_acknowledging_listener(hold: Duration) -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut link = Link::new(
                    Config::new(Role::Server, 0x5eed),
                    HeapStorage::new(8, 64, 1042),
                )
                .unwrap();
                let t0 = Instant::now();
                let now =
                    || tether_core::link::Instant::from_millis(t0.elapsed().as_millis() as u64);
                link.connect(now());
                conn.set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                let mut buf = [0u8; 4096];
                let mut out = vec![0u8; link.transmit_len()];
                while t0.elapsed() < hold {
                    match conn.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => link.handle_input(now(), &buf[..n]),
                        Err(_) => link.handle_timeout(now()),
                    }
                    while let Some(n) = link.poll_transmit(now(), &mut out) {
                        if conn.write_all(&out[..n]).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn give_up_after_counts_across_reconnects_to_a_listener_that_never_acknowledges() {
    let addr = never_acknowledging_listener(Duration::from_millis(800));
    let start = Instant::now();
    let out = send(
        &[&format!("tcp://{addr}"), "--give-up-after", "3"],
        numbered(0..1000).as_bytes(),
        Duration::from_secs(30),
    );
    let took = start.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("gave up after 3s without progress (0 lines acknowledged"),
        "{err}"
    );
    assert!(err.contains("connection lost"), "it did reconnect: {err}");
    assert!(
        took < Duration::from_secs(8),
        "gave up {took:?} after starting, with --give-up-after 3"
    );
}

#[test]
fn endpoints_one_cannot_connect_to_fail_at_once_with_exit_2() {
    for (endpoint, says) in [
        ("rfcomm://hci0/1", "it is a listening endpoint"),
        ("tcp://127.0.0.1:0", "port 0 is for listening"),
    ] {
        let start = Instant::now();
        let out = send(&[endpoint], b"1,x\n", Duration::from_secs(20));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{endpoint}: {err}");
        assert!(err.contains(says), "{endpoint}: {err}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{endpoint}: not retried"
        );
    }
}

#[test]
fn the_tutorials_server_gets_a_hint_to_use_raw() {
    // What tests/tutorial/tcp_server_csv.py does: greet, then answer every read.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.write_all(b"Connection established");
                let mut buf = [0u8; 32];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(b"data processed").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let start = Instant::now();
    let out = send(
        &[&format!("tcp://{addr}")],
        b"21.5,ok\n",
        Duration::from_secs(40),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a Tether listener"), "{err}");
    assert!(err.contains("Connection established"), "{err}");
    assert!(err.contains("tether send --raw"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "not retried");
}

#[test]
fn a_refusal_says_what_was_refused_and_why_in_words() {
    let d = temp_dir("refused");
    let csv = d.join("r.csv");
    let keys = d.join("keys");
    std::fs::write(&keys, format!("000000a1 {}\n", "11".repeat(32))).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let l = Listener::start(&d, &csv, false, &["--keys", keys.to_str().unwrap()]);
    let out = send(&[&l.endpoint()], b"1,x\n", Duration::from_secs(30));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the listener refused this sender's session (authentication required)"),
        "{err}"
    );
    assert!(err.contains("0 lines acknowledged"), "{err}");
    assert!(
        !err.contains("AuthRequired") && !err.contains("Some("),
        "no Debug output: {err}"
    );
    l.stop();
    let _ = std::fs::remove_dir_all(&d);
}
