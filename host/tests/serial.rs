//! `serial://` through the real binary over pseudo-terminal pairs (socat, installed by
//! scripts/setup.sh): a line from `tether send serial://A` to `tether listen serial://B`, what
//! a serial line brings that a socket does not (bytes before the HELLO, a port that vanishes
//! and comes back), the bridge from a serial port to a TCP listener, and every error by its
//! message.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::logged::{Logged, TETHER};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-serial-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two linked pseudo-terminals with stable paths `DIR/A` and `DIR/B`, as a cable between two
/// serial ports; killing and starting it again is an unplug and a replug.
struct Cable {
    dir: PathBuf,
    socat: Option<Child>,
}

impl Cable {
    fn new(dir: &Path) -> Cable {
        let mut c = Cable {
            dir: dir.to_owned(),
            socat: None,
        };
        c.plug();
        c
    }

    fn a(&self) -> String {
        self.dir.join("A").display().to_string()
    }

    fn b(&self) -> String {
        self.dir.join("B").display().to_string()
    }

    fn plug(&mut self) {
        let link = |n: &str| format!("pty,raw,echo=0,link={}", self.dir.join(n).display());
        let child = Command::new("socat")
            .args([link("A"), link("B")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs (scripts/setup.sh installs it)");
        self.socat = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(Path::new(&self.a()).exists() && Path::new(&self.b()).exists()) {
            assert!(Instant::now() < deadline, "socat made no pty pair");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn unplug(&mut self) {
        if let Some(mut c) = self.socat.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&self.a()).exists() || Path::new(&self.b()).exists() {
            assert!(Instant::now() < deadline, "socat left its links");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        if let Some(mut c) = self.socat.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tether ARGS` without standard input.
fn tether(args: &[&str]) -> Logged {
    Logged::start(args, Stdio::null())
}

/// `tether listen serial://B --csv CSV`, once it listens.
fn serial_listener(cable: &Cable, csv: &Path) -> Logged {
    let mut listener = tether(&[
        "listen",
        &format!("serial://{}", cable.b()),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    listener.wait_for("listening on serial://", Duration::from_secs(20));
    listener
}

/// `tether send ENDPOINT FILE`, waited for (bounded).
fn send(endpoint: &str, input: &Path, limit: Duration) -> (Option<i32>, String) {
    let t = tether(&["send", endpoint, input.to_str().unwrap()]);
    t.exit_within(limit)
}

fn lines_file(dir: &Path, name: &str, tag: &str, n: usize) -> PathBuf {
    let p = dir.join(name);
    let text: String = (0..n).map(|i| format!("{tag},{i}\n")).collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// The CSV's data rows: (device, seq, first field, second field), marker rows left out.
fn rows(csv: &Path) -> Vec<(String, u32, String, String)> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv)
        .expect("the CSV exists");
    r.records()
        .map(|row| row.expect("well-formed CSV"))
        .filter(|row| !row[2].is_empty())
        .map(|row| {
            (
                row[1].to_owned(),
                row[2].parse().unwrap(),
                row.get(3).unwrap_or_default().to_owned(),
                row.get(4).unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Every line `tag,0` … `tag,n-1` exactly once, in order, from one device each tag.
fn assert_exact(csv: &Path, tags: &[(&str, usize)]) {
    let rows = rows(csv);
    let mut by: HashMap<String, Vec<usize>> = HashMap::new();
    for (_, _, tag, i) in &rows {
        by.entry(tag.clone()).or_default().push(i.parse().unwrap());
    }
    for (tag, n) in tags {
        let got = by.remove(*tag).unwrap_or_default();
        assert_eq!(got.len(), *n, "{tag}: {} rows of {n}", got.len());
        assert!(
            got.iter().enumerate().all(|(k, &i)| k == i),
            "{tag}: rows out of order or repeated"
        );
    }
    assert!(by.is_empty(), "rows of no test's: {:?}", by.keys());
}

#[test]
fn fifty_thousand_lines_over_a_serial_line_are_written_once_each() {
    let d = temp_dir("exact");
    let cable = Cable::new(&d);
    let csv = d.join("r.csv");
    let listener = serial_listener(&cable, &csv);
    let input = lines_file(&d, "in", "line", 50_000);
    let (code, log) = send(
        &format!("serial://{}?baud=921600", cable.a()),
        &input,
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{log}");
    let (code, log) = listener.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exact(&csv, &[("line", 50_000)]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_boot_banner_and_garbage_before_and_between_hellos_are_skipped() {
    let d = temp_dir("garbage");
    let cable = Cable::new(&d);
    let csv = d.join("r.csv");
    let mut listener = serial_listener(&cable, &csv);
    let noise = |what: &[u8]| {
        let mut port = std::fs::OpenOptions::new()
            .write(true)
            .open(cable.a())
            .unwrap();
        port.write_all(what).unwrap();
        port.flush().unwrap();
    };
    noise(b"\r\nU-Boot 2024.01 (Jan 01 2024)\r\nDRAM: 512 MiB\r\nbooting...\r\n\x13\x37\xfe\x00half a fr");
    let first = lines_file(&d, "in1", "first", 2_000);
    let (code, log) = send(
        &format!("serial://{}", cable.a()),
        &first,
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{log}");
    // Between two devices' sessions (a reboot, say): more noise, then a new HELLO.
    noise(b"\x00\x00garbage between sessions\x01\x02\x03\x00");
    let second = lines_file(&d, "in2", "second", 2_000);
    let (code, log) = send(
        &format!("serial://{}", cable.a()),
        &second,
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(listener.alive());
    let (code, log) = listener.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exact(&csv, &[("first", 2_000), ("second", 2_000)]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_port_unplugged_and_plugged_in_again_three_times_mid_stream_loses_and_repeats_nothing() {
    let d = temp_dir("replug");
    let mut cable = Cable::new(&d);
    let csv = d.join("r.csv");
    let mut listener = serial_listener(&cable, &csv);
    let input = lines_file(&d, "in", "line", 300_000);
    let sender = tether(&[
        "send",
        &format!("serial://{}", cable.a()),
        input.to_str().unwrap(),
    ]);
    for _ in 0..3 {
        // Wait until the stream is under way since the last replug, then pull the cable.
        let before = std::fs::metadata(&csv).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&csv).map(|m| m.len()).unwrap_or(0) < before + 100_000 {
            assert!(Instant::now() < deadline, "the stream did not resume");
            std::thread::sleep(Duration::from_millis(20));
        }
        cable.unplug();
        std::thread::sleep(Duration::from_millis(300));
        cable.plug();
    }
    let (code, log) = sender.exit_within(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        listener.alive(),
        "the listener carries on when its port vanishes"
    );
    listener.wait_for(
        "is gone; waiting for it to come back",
        Duration::from_secs(1),
    );
    listener.wait_for("is back: reopened", Duration::from_secs(1));
    let (code, log) = listener.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exact(&csv, &[("line", 300_000)]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_bridge_forwards_a_serial_device_to_a_tcp_listener_acknowledged_end_to_end() {
    let d = temp_dir("bridge");
    let cable = Cable::new(&d);
    let csv = d.join("r.csv");
    let mut listener = tether(&[
        "listen",
        "tcp://127.0.0.1:0",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    let line = listener.wait_for("listening on tcp://", Duration::from_secs(20));
    let addr = line
        .split("listening on tcp://")
        .nth(1)
        .unwrap()
        .split([',', ' '])
        .next()
        .unwrap()
        .to_owned();
    let mut bridge = tether(&[
        "bridge",
        &format!("serial://{}", cable.b()),
        &format!("tcp://{addr}"),
    ]);
    bridge.wait_for("bridging devices on serial://", Duration::from_secs(20));
    let input = lines_file(&d, "in", "line", 20_000);
    let (code, log) = send(
        &format!("serial://{}", cable.a()),
        &input,
        Duration::from_secs(120),
    );
    assert_eq!(
        code,
        Some(0),
        "every line acknowledged through the bridge: {log}"
    );
    let (code, log) = bridge.stop();
    assert_eq!(code, Some(0), "{log}");
    let (code, log) = listener.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exact(&csv, &[("line", 20_000)]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn every_serial_error_says_what_is_wrong_and_what_to_do() {
    let d = temp_dir("errors");
    let cable = Cable::new(&d);
    let csv = d.join("r.csv");
    let csv = csv.to_str().unwrap();
    let regular = d.join("not-a-port");
    std::fs::write(&regular, b"x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "listen".into(),
                format!("serial://{}/nothing", d.display()),
                "--csv".into(),
                csv.into(),
            ],
            "no serial port",
        ),
        (
            vec![
                "listen".into(),
                format!("serial://{}", regular.display()),
                "--csv".into(),
                csv.into(),
            ],
            "is not a serial port",
        ),
        (
            vec![
                "listen".into(),
                "serial:///dev/null".into(),
                "--csv".into(),
                csv.into(),
            ],
            "is not a serial port",
        ),
        (
            vec![
                "listen".into(),
                format!("serial://{}?baud=fast", cable.b()),
                "--csv".into(),
                csv.into(),
            ],
            "baud `fast` is not a rate",
        ),
        (
            vec![
                "listen".into(),
                "serial://dev/ttyUSB0".into(),
                "--csv".into(),
                csv.into(),
            ],
            "three slashes",
        ),
        (
            vec![
                "listen".into(),
                format!("serial://{}?speed=9600", cable.b()),
                "--csv".into(),
                csv.into(),
            ],
            "unknown option `speed`",
        ),
    ];
    for (args, says) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, log) = tether(&args).exit_within(Duration::from_secs(15));
        assert_eq!(code, Some(2), "tether {args:?}: {log}");
        assert!(
            log.contains(says),
            "tether {args:?} should say `{says}`:\n{log}"
        );
    }
    // A port another program holds.
    let mut first = tether(&["listen", &format!("serial://{}", cable.b()), "--csv", csv]);
    first.wait_for("listening on serial://", Duration::from_secs(20));
    let second_csv = d.join("second.csv");
    let (code, log) = tether(&[
        "listen",
        &format!("serial://{}", cable.b()),
        "--csv",
        second_csv.to_str().unwrap(),
    ])
    .exit_within(Duration::from_secs(15));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("is in use by process"), "{log}");
    assert!(log.contains("(tether)"), "names the holder: {log}");
    let _ = first.stop();
    // Permission: as a user without access to the port (only where this test runs as root,
    // which can become one).
    if nix_is_root() {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                TETHER,
                "listen",
            ])
            .arg(format!("serial://{}", cable.b()))
            .args(["--csv", "/tmp/tether-serial-nobody.csv"])
            .stdin(Stdio::null())
            .output()
            .expect("setpriv runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("permission denied opening serial port") && err.contains("dialout"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
