//! The `tether` binary as a user runs it: `encode` piped into `decode`, the spec's vectors
//! dissected, and clear errors.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tether(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("stdin written");
    child.wait_with_output().expect("tether ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn encoded_frames_decode_back_with_their_fields() {
    let a = tether(&["encode", "--seq", "7"], b"temperature,21.5");
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = tether(
        &["encode", "--kind", "ack", "--ack", "7", "--credit", "4"],
        b"",
    );
    let c = tether(&["encode", "--seq", "8"], b"bytes\x01\x00");
    let stream = [a.stdout, b.stdout, c.stdout].concat();
    assert_eq!(
        stream.iter().filter(|&&x| x == 0).count(),
        3,
        "three delimiters"
    );

    let out = tether(&["decode"], &stream);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "DATA seq=7 len=16 payload=\"temperature,21.5\"\n\
         ACK seq=0 ack=7 credit=4 len=0 payload=\"\"\n\
         DATA seq=8 len=7 payload=\"bytes\\x01\\x00\"\n"
    );
    assert!(text(&out.stderr).contains("3 frames, 0 dropped"));
}

#[test]
fn decode_reports_dropped_frames_and_exits_1() {
    let good = tether(&["encode", "--payload", "ok"], b"").stdout;
    let mut corrupt = good.clone();
    // The 'o' of the payload: wire ends with 'o', 'k', four CRC bytes and the delimiter.
    let at = corrupt.len() - 7;
    assert_eq!(corrupt[at], b'o');
    corrupt[at] ^= 0x40;
    let stream = [b"noise\x00".as_slice(), &corrupt, &good].concat();
    let out = tether(&["decode"], &stream);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("dropped: broken COBS"), "{lines:?}");
    assert!(lines[1].starts_with("dropped: CRC mismatch"), "{lines:?}");
    assert_eq!(lines[2], "DATA seq=0 len=2 payload=\"ok\"");
}

#[test]
fn decode_enforces_max_payload_and_flags_a_trailing_partial_frame() {
    let big = tether(&["encode", "--payload", "0123456789"], b"").stdout;
    let small = tether(&["encode", "--payload", "01"], b"").stdout;
    let stream = [&big[..], &small[..], &small[..3]].concat();
    let out = tether(&["decode", "--max-payload", "4"], &stream);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).starts_with("dropped: frame longer"));
    assert!(text(&out.stderr).contains("ended inside a frame"));
}

#[test]
fn unreadable_input_is_a_clear_error_with_exit_2() {
    let out = tether(&["decode", "/nonexistent/capture.bin"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/capture.bin"));
}

#[test]
fn oversized_payload_is_refused_with_exit_2() {
    let out = tether(&["encode"], &vec![b'x'; 65_536]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("exceeds the maximum of 65535"));
}

#[test]
fn sigint_stops_the_listener_cleanly_with_everything_acknowledged_written() {
    let dir = std::env::temp_dir().join(format!("tether-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("out.csv");
    let _ = std::fs::remove_file(&csv);
    // The test must know the port to connect to, so it picks a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let mut listener = common::Process(
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["listen", &endpoint, "--csv"])
            .arg(&csv)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed().as_secs() < 10,
            "the listener never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lines: String = (0..5_000).map(|i| format!("{i},x\n")).collect();
    let sent = tether(&["send", &endpoint], lines.as_bytes());
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    // SIGINT, as Ctrl-C sends it.
    let killed = Command::new("kill")
        .args(["-INT", &listener.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = listener.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed().as_secs() < 10,
            "the listener did not stop on SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let rows = std::fs::read_to_string(&csv).unwrap().lines().count();
    assert_eq!(rows, 5_001, "header and every acknowledged record");
    std::fs::remove_dir_all(&dir).unwrap();
}
