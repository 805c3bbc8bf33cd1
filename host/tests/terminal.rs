//! `tether` as a person at a terminal or a script meets it: Ctrl-C at a terminal, a listener
//! in the background of an interactive shell, SIGTERM with standard input an open pipe,
//! options out of range, endpoints that cannot work, and what the log says.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::logged::{Logged, TETHER};
use common::Process;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-terminal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs host/tests/pty_run.py (a pseudo-terminal driver) and returns what it printed.
fn on_a_terminal(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pty_run.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("python3 runs the pty driver");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ctrl_c_at_a_terminal_stops_the_listener_and_typed_commands_are_read() {
    let d = temp_dir("ctrl-c");
    let csv = d.join("r.csv");
    let out = on_a_terminal(&[
        "foreground",
        "listening on",
        "* status\\n",
        "--",
        TETHER,
        "listen",
        "tcp://127.0.0.1:0",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.contains("no device is known yet: command not sent"),
        "the command typed at the terminal was read:\n{out}"
    );
    assert!(out.contains("done: 0 records"), "{out}");
    assert!(
        out.trim_end().ends_with("exit=0"),
        "Ctrl-C stops it with exit 0:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_listener_in_the_background_of_a_terminal_runs_on_and_stops_on_sigterm() {
    let d = temp_dir("background");
    let csv = d.join("r.csv");
    let out = on_a_terminal(&[
        "background",
        "listening on",
        "--",
        TETHER,
        "listen",
        "tcp://127.0.0.1:0",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.trim_end().ends_with("ended"),
        "not stopped by the terminal (`Stopped (tty input)`), and SIGTERM ends it:\n{out}"
    );
    assert!(out.contains("done: 0 records"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sigterm_stops_a_listener_whose_standard_input_is_an_open_pipe_and_its_log_is_plain() {
    let d = temp_dir("pipe");
    let csv = d.join("r.csv");
    let mut t = Logged::start(
        &[
            "listen",
            "tcp://127.0.0.1:0",
            "--csv",
            csv.to_str().unwrap(),
        ],
        Stdio::piped(),
    );
    let _addr = t.addr();
    // The pipe stays open (the test holds its end) while the listener is told to stop.
    let _stdin = t.child.stdin.take();
    t.signal("-TERM");
    let (code, log) = t.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("done: 0 records"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no terminal colour codes in a log that is not a terminal:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

fn run(args: &[&str]) -> Output {
    let mut child = Process(
        Command::new(TETHER)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "tether {args:?} did not exit at once"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let Process(inner) = &mut child;
    let mut out = Output {
        status: inner.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    inner
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out.stdout)
        .unwrap();
    inner
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut out.stderr)
        .unwrap();
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn options_out_of_range_are_refused_at_start_with_exit_2_and_the_option_named() {
    let d = temp_dir("options");
    let csv = d.join("r.csv");
    let csv = csv.to_str().unwrap();
    let target = format!("csv:{csv}");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "listen",
                "tcp://127.0.0.1:0",
                "--csv",
                csv,
                "--idle-timeout-ms",
                "1000",
            ],
            "--idle-timeout-ms must be more than 1000",
        ),
        (
            &[
                "listen",
                "tcp://127.0.0.1:0",
                "--csv",
                csv,
                "--idle-timeout-ms",
                "0",
            ],
            "--idle-timeout-ms must be more than 1000",
        ),
        (
            &[
                "listen",
                "tcp://127.0.0.1:0",
                "--csv",
                csv,
                "--max-connections",
                "0",
            ],
            "--max-connections must be at least 1",
        ),
        (
            &[
                "listen",
                "tcp://127.0.0.1:0",
                "--csv",
                csv,
                "--max-devices",
                "0",
            ],
            "--max-devices must be at least 1",
        ),
        (
            &["listen", "tcp://127.0.0.1:0", "--csv", csv, "--window", "0"],
            "--window must be 1 to 32768",
        ),
        (
            &[
                "bridge",
                "tcp://127.0.0.1:0",
                &target,
                "--idle-timeout-ms",
                "0",
            ],
            "--idle-timeout-ms must be more than 1000",
        ),
        (
            &[
                "bridge",
                "tcp://127.0.0.1:0",
                "tcp://127.0.0.1:5003",
                "--idle-timeout-ms",
                "500",
            ],
            "--idle-timeout-ms must be more than 1000",
        ),
        (
            &["bridge", "tcp://127.0.0.1:0", "rfcomm://hci0/1"],
            "it is a listening endpoint",
        ),
        (
            &["bridge", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"],
            "port 0 is for listening",
        ),
        (
            &["listen", "tcp://127.0.0.1:65536", "--csv", csv],
            "port `65536` is out of range: ports are 0 to 65535",
        ),
        (
            &["listen", "tcp://example.org:5003", "--csv", csv],
            "host names are not resolved",
        ),
    ];
    for (args, says) in cases {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "tether {args:?}: {err}");
        assert!(
            err.contains(says),
            "tether {args:?} should say `{says}`: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let port = free_port();
    let own = format!("tcp://127.0.0.1:{port}");
    let out = run(&["bridge", &own, &own]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is the bridge's own address"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Options that only a CSV written by the bridge itself uses are refused, with the reason,
/// when the bridge forwards to a listener (they were dropped without a word).
#[test]
fn a_bridge_forwarding_to_a_listener_refuses_the_options_of_a_csv_it_does_not_write() {
    let to = format!("tcp://127.0.0.1:{}", free_port());
    for (option, says) in [
        (&["--fsync"][..], "give it --fsync"),
        (&["--keys", "/nonexistent/keys"][..], "not supported yet"),
    ] {
        let args = [&["bridge", "tcp://127.0.0.1:0", to.as_str()][..], option].concat();
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "tether {args:?}: {err}");
        assert!(
            err.contains(&format!("{} applies to csv:FILE only", option[0])) && err.contains(says),
            "tether {args:?}: {err}"
        );
    }
}

#[test]
fn version_names_the_command() {
    let out = run(&["--version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("tether "), "{text}");
}

#[test]
fn localhost_is_understood_and_a_text_client_gets_a_hint_of_raw_and_devices_are_counted() {
    let d = temp_dir("localhost");
    let csv = d.join("r.csv");
    let mut t = Logged::start(
        &[
            "listen",
            "tcp://localhost:0",
            "--csv",
            csv.to_str().unwrap(),
            "--handshake-timeout-ms",
            "300",
            "--max-devices",
            "2",
        ],
        Stdio::null(),
    );
    let addr = t.addr();
    assert!(addr.ip().is_loopback(), "{addr}");
    // The tutorial's client: text, no frames.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"21.5,22.0,hello from the tutorial\n").unwrap();
    let hint = t.wait_for("dropped: no HELLO within", Duration::from_secs(10));
    assert!(hint.contains("tether listen --raw"), "{hint}");
    // Three senders, one after the other, each a device of its own: more than --max-devices.
    for i in 0..3 {
        let mut send = Command::new(TETHER)
            .args(["send", &format!("tcp://{addr}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        send.stdin
            .take()
            .unwrap()
            .write_all(format!("{i},a\n{i},b\n").as_bytes())
            .unwrap();
        assert!(send.wait().unwrap().success());
    }
    t.signal("-INT");
    let (code, log) = t.exit_within(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("done: 6 records from 3 devices over 4 connections"),
        "the summary counts every device, evicted ones too:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
