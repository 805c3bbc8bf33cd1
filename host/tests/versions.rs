//! Protocol versions end to end through the real binary (`PROTOCOL.md` 11.2): `tether send`
//! and `tether listen` speak version 2 by default and say so; `--max-version 1` on either
//! side makes the session version 1; every line arrives once either way.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::logged::{Logged, TETHER};

/// Sends `lines` lines with `tether send ARGS` to a listener started with `listen_args`;
/// returns the version the listener's log gives the session, and the CSV's rows.
fn session(
    listen_args: &[&str],
    send_args: &[&str],
    lines: usize,
    name: &str,
) -> (String, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("tether-versions-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("out.csv");
    let csv_s = csv.display().to_string();
    let mut args = vec!["listen", "tcp://127.0.0.1:0", "--csv", &csv_s];
    args.extend_from_slice(listen_args);
    let mut l = Logged::start(&args, Stdio::null());
    let endpoint = format!("tcp://{}", l.addr());
    let mut send = Command::new(TETHER)
        .arg("send")
        .arg(&endpoint)
        .args(send_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether send starts");
    let mut input = send.stdin.take().expect("stdin");
    let text: String = (0..lines).map(|i| format!("{i},21.5,ok\n")).collect();
    input.write_all(text.as_bytes()).expect("lines written");
    drop(input);
    let out = send.wait_with_output().expect("tether send ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = l.wait_for("session established", Duration::from_secs(10));
    let version = line
        .rsplit("protocol version ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let (code, log) = l.stop();
    assert_eq!(code, Some(0), "{log}");
    let rows: Vec<String> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|r| r.splitn(4, ',').nth(3).unwrap_or_default().to_owned())
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    (version, rows)
}

fn assert_exact(rows: &[String], lines: usize) {
    assert_eq!(rows.len(), lines, "every line once");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r, &format!("{i},21.5,ok"), "row {i}");
    }
}

#[test]
fn by_default_both_sides_speak_version_2() {
    let (version, rows) = session(&[], &[], 20_000, "v2");
    assert_eq!(version, "2");
    assert_exact(&rows, 20_000);
}

#[test]
fn a_sender_that_offers_only_version_1_is_spoken_to_in_version_1() {
    let (version, rows) = session(&[], &["--max-version", "1"], 5_000, "send-v1");
    assert_eq!(version, "1");
    assert_exact(&rows, 5_000);
}

#[test]
fn a_listener_kept_to_version_1_speaks_it_to_a_sender_that_offers_2() {
    let (version, rows) = session(&["--max-version", "1"], &[], 5_000, "listen-v1");
    assert_eq!(version, "1");
    assert_exact(&rows, 5_000);
}

#[test]
fn a_version_the_listener_does_not_have_is_refused_at_start() {
    let out = Command::new(TETHER)
        .args([
            "listen",
            "tcp://127.0.0.1:0",
            "--csv",
            "/dev/null",
            "--max-version",
            "3",
        ])
        .output()
        .expect("tether runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-version must be 1 or 2 (got 3)"),
        "{err}"
    );
}
