//! The JSON lines sink (`--sink jsonl:-`, `--sink jsonl:FILE`) through the real `tether`
//! binary and `tether sim --kinds` devices: every record once, named fields, standard output
//! holding nothing but JSON lines, a file recovered after `kill -9` (its torn last line cut,
//! its kinds read back), a foreign file or a second listener refused.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::logged::{Logged, TETHER};
use common::Process;
use serde_json::Value;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-jsonl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tether sim --kinds` devices against `endpoint` (3 declarations, then `readings` each).
fn sim(endpoint: &str, devices: usize, readings: u32, seed: u64) -> Process {
    Process(
        Command::new(TETHER)
            .args(["sim", endpoint, "--kinds"])
            .args(["--devices", &devices.to_string()])
            .args(["--records", &readings.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--period-ms", "1"])
            .args(["--timeout", "120"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tether sim starts"),
    )
}

/// Waits for `p` to exit within `limit`; its status.
fn exited(p: &mut Process, what: &str, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sim_devices(seed: u64, devices: usize) -> Vec<String> {
    (0..devices)
        .map(|i| format!("{:08x}", tether_host::sim::device_identity(seed, i).0))
        .collect()
}

fn sigterm(p: &mut Process) {
    let _ = Command::new("kill").arg(p.id().to_string()).status();
    let status = exited(p, "the listener", Duration::from_secs(15));
    assert!(status.success(), "the listener: {status}");
}

/// Checks the lines: every one a JSON object; each record (device, session, seq) once;
/// every device's records 0..records in session 0; declarations at 0..2, readings named.
fn check(lines: &[String], devices: &[String], records: u64) {
    let mut keys: HashMap<(String, u64, u64), usize> = HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line:?}", i + 1));
        assert!(v.is_object(), "{line}");
        if v.get("marker").is_some() {
            continue;
        }
        let device = v["device"].as_str().expect("device").to_owned();
        let session = v["session"].as_u64().expect("session");
        let seq = v["seq"].as_u64().expect("seq");
        assert!(v["host_time"].is_string(), "{line}");
        match seq {
            0..=2 => {
                assert!(v["kind"].is_u64(), "a declaration: {line}");
                assert!(v["declaration"].is_string(), "{line}");
                if seq == 0 {
                    assert_eq!(v["name"], "env", "{line}");
                    assert_eq!(
                        v["fields"][2],
                        serde_json::json!({"name": "temperature", "type": "f32", "unit": "°C"}),
                        "{line}"
                    );
                }
            }
            _ => {
                assert_eq!(v["kind"], "env", "{line}");
                assert!(v["counter"].is_u64(), "{line}");
                assert!(v["temperature"].is_number(), "{line}");
                assert!(v["pressure"].is_u64(), "{line}");
                assert!(v["output"].is_boolean(), "{line}");
                assert!(v.get("field_1").is_none(), "{line}");
            }
        }
        let n = keys.entry((device, session, seq)).or_default();
        *n += 1;
        assert_eq!(*n, 1, "written twice: {line}");
    }
    for d in devices {
        for seq in 0..records {
            assert!(
                keys.contains_key(&(d.clone(), 0, seq)),
                "device {d} record {seq} is missing"
            );
        }
    }
    assert_eq!(
        keys.len(),
        devices.len() * records as usize,
        "records other than those sent"
    );
}

/// `tether listen ENDPOINT --sink jsonl:-`, its standard output piped, once it says it
/// listens: the process, its standard output, and its log lines from then on.
fn listen_on_stdout(
    endpoint: &str,
) -> (
    Process,
    std::process::ChildStdout,
    std::sync::mpsc::Receiver<String>,
) {
    let mut listener = Process(
        Command::new(TETHER)
            .args(["listen", endpoint, "--sink", "jsonl:-"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether listen starts"),
    );
    let stdout = listener.0.stdout.take().expect("stdout");
    let stderr = listener.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the listener says it listens");
        if line.contains("listening on tcp://") {
            assert!(line.contains("standard output (JSON lines)"), "{line}");
            return (listener, stdout, rx);
        }
    }
}

#[test]
fn standard_output_has_every_record_once_as_a_json_line_and_nothing_else() {
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let (mut listener, stdout, rx) = listen_on_stdout(&endpoint);
    let out = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let (devices, readings) = (3, 2_000);
    let mut s = sim(&endpoint, devices, readings, 21);
    let status = exited(&mut s, "tether sim", Duration::from_secs(90));
    assert!(status.success(), "tether sim: {status}");
    sigterm(&mut listener);
    let lines = out.join().expect("stdout read");
    check(&lines, &sim_devices(21, devices), u64::from(readings) + 3);
    let log: Vec<String> = rx.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("done: ")),
        "the log went to standard error: {log:?}"
    );
}

/// `tether listen --sink jsonl:- | head -n 5`: when `head` has its lines and exits, the
/// listener stops at its next write, with the status a shell gives a program SIGPIPE ended
/// (141) and one line that says why; what it had not written stays with the devices, which
/// send it to the next listener (none of it twice: nothing `head` printed comes again).
#[test]
fn a_listener_on_standard_output_stops_when_the_pipe_reader_exits() {
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let (mut listener, stdout, rx) = listen_on_stdout(&endpoint);
    let head = Command::new("head")
        .args(["-n", "5"])
        .stdin(Stdio::from(stdout))
        .stdout(Stdio::piped())
        .spawn()
        .expect("head starts");
    let (devices, readings) = (2, 3_000);
    let mut s = sim(&endpoint, devices, readings, 23);
    let printed = head.wait_with_output().expect("head runs");
    let printed = String::from_utf8(printed.stdout).expect("UTF-8");
    assert_eq!(printed.lines().count(), 5, "{printed}");
    let status = exited(&mut listener, "the listener", Duration::from_secs(10));
    let log: Vec<String> = rx.try_iter().collect();
    assert_eq!(status.code(), Some(141), "{status}: {log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("standard output") && l.contains("reader went away")),
        "it says why: {log:?}"
    );
    // The next listener gets the rest from the devices.
    let dir = temp_dir("pipe");
    let file = dir.join("rest.jsonl");
    let mut next = Process(
        Command::new(TETHER)
            .args(["listen", &endpoint, "--sink"])
            .arg(format!("jsonl:{}", file.display()))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tether listen starts"),
    );
    let status = exited(&mut s, "tether sim", Duration::from_secs(90));
    assert!(status.success(), "tether sim: {status}");
    sigterm(&mut next);
    let key = |line: &str| {
        let v: Value = serde_json::from_str(line).expect("JSON");
        (
            v["device"].to_string(),
            v["session"].to_string(),
            v["seq"].to_string(),
        )
    };
    let rest: Vec<_> = file_lines(&file).iter().map(|l| key(l)).collect();
    // Lines the listener wrote into the pipe that `head` never printed are gone with the
    // pipe, as with any producer; the devices' acknowledged rest is in the file, once.
    let unique: std::collections::HashSet<_> = rest.iter().collect();
    assert_eq!(unique.len(), rest.len(), "a record written twice");
    assert!(
        rest.len() >= devices * readings as usize / 2,
        "{}",
        rest.len()
    );
    for line in printed.lines() {
        assert!(!rest.contains(&key(line)), "written twice: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A listener on standard output stopped with SIGTERM mid-stream and a new one started:
/// between their outputs every record once (the first acknowledges what it wrote before it
/// closes, so the devices send the second only the rest).
#[test]
fn a_listener_on_standard_output_stopped_and_started_again_writes_every_record_once() {
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let collect = |stdout: std::process::ChildStdout| {
        std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        })
    };
    let (mut first, stdout, _log) = listen_on_stdout(&endpoint);
    let first_out = collect(stdout);
    let (devices, readings) = (2, 3_000);
    let mut s = sim(&endpoint, devices, readings, 29);
    std::thread::sleep(Duration::from_millis(1_200));
    sigterm(&mut first);
    let mut lines = first_out.join().expect("stdout read");
    assert!(!lines.is_empty(), "the first listener wrote nothing");
    let (mut second, stdout, _log) = listen_on_stdout(&endpoint);
    let second_out = collect(stdout);
    let status = exited(&mut s, "tether sim", Duration::from_secs(90));
    assert!(status.success(), "tether sim: {status}");
    sigterm(&mut second);
    let more = second_out.join().expect("stdout read");
    assert!(!more.is_empty(), "the second listener wrote nothing");
    lines.extend(more);
    // Keys only: the second listener never saw the devices' declarations (standard output
    // has no recovery), so their later records are of undeclared kinds to it.
    let mut keys = std::collections::HashSet::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).expect("JSON");
        if v.get("marker").is_some() {
            continue;
        }
        let key = (
            v["device"].as_str().expect("device").to_owned(),
            v["session"].as_u64().expect("session"),
            v["seq"].as_u64().expect("seq"),
        );
        assert!(keys.insert(key), "written twice: {line}");
    }
    for d in sim_devices(29, devices) {
        for seq in 0..u64::from(readings) + 3 {
            assert!(
                keys.contains(&(d.clone(), 0, seq)),
                "{d} record {seq} missing"
            );
        }
    }
}

/// Lines of `path` (whole lines only), read now.
fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_file_after_kill_9_has_every_record_once_its_torn_line_cut_and_its_kinds_read_back() {
    let dir = temp_dir("kill9");
    let file = dir.join("out.jsonl");
    let sink = format!("jsonl:{}", file.display());
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let args = [
        "listen",
        endpoint.as_str(),
        "--sink",
        sink.as_str(),
        "--fsync",
    ];
    let mut l = Logged::start(&args, Stdio::null());
    l.wait_for("listening on tcp://", Duration::from_secs(20));
    // A second listener on the same file is refused, naming the first.
    let other = format!("tcp://127.0.0.1:{}", free_port());
    let mut second = Logged::start(&["listen", &other, "--sink", &sink], Stdio::null());
    let status = exited(
        &mut second.child,
        "the second listener",
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(2), "{}", second.text());
    let said = second.text();
    assert!(
        said.contains(&format!("being written by process {}", l.child.id())),
        "{said}"
    );
    let (devices, readings) = (3, 3_000);
    let records = u64::from(readings) + 3;
    let mut s = sim(&endpoint, devices, readings, 22);
    // Killed mid-stream, after the declarations went (a device never sends an acknowledged
    // declaration again: the restarted listener has them from the file only).
    let deadline = Instant::now() + Duration::from_secs(60);
    while file_lines(&file).len() < 1_500 {
        assert!(Instant::now() < deadline, "no 1,500 lines written");
        std::thread::sleep(Duration::from_millis(10));
    }
    let first = l.kill9();
    assert!(s.0.try_wait().unwrap().is_none(), "the sims still run");
    let before = file_lines(&file).len();
    assert!(
        before < devices * records as usize,
        "killed mid-stream: {before} lines"
    );
    // What a crash between a batch's write and its acknowledgement leaves (a window too
    // narrow to hit with a kill): lines of records their devices have not had acknowledged.
    // Each device's next 20 readings are appended as if written; the devices send them
    // again, and the restarted listener must not write them twice.
    let mut appended = Vec::new();
    let mut last: HashMap<String, (u64, Value)> = HashMap::new();
    for line in file_lines(&file) {
        let v: Value = serde_json::from_str(&line).expect("a JSON line");
        let (Some(d), Some(seq)) = (v["device"].as_str(), v["seq"].as_u64()) else {
            continue;
        };
        let e = last.entry(d.to_owned()).or_insert((0, Value::Null));
        if seq >= e.0 {
            *e = (seq, if seq >= 3 { v.clone() } else { e.1.clone() });
        }
    }
    for (seq, template) in last.values() {
        if template.is_null() || seq + 20 >= records {
            continue;
        }
        for next in seq + 1..=seq + 20 {
            let mut v = template.clone();
            v["seq"] = next.into();
            appended.extend_from_slice(v.to_string().as_bytes());
            appended.push(b'\n');
        }
    }
    assert!(!appended.is_empty(), "lines to append");
    // And what a crash in the middle of a line leaves.
    appended.extend_from_slice(b"{\"device\":\"0000002a\",\"session\":0,\"se");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(&appended)
        .unwrap();
    let mut l = Logged::start(&args, Stdio::null());
    let torn = l.wait_for("torn", Duration::from_secs(20));
    assert!(torn.contains("cut 36 bytes"), "{torn}");
    l.wait_for("declared kinds read back", Duration::from_secs(5));
    let status = exited(&mut s, "tether sim", Duration::from_secs(90));
    assert!(status.success(), "tether sim: {status}");
    sigterm(&mut l.child);
    let lines = file_lines(&file);
    assert!(
        std::fs::read(&file).unwrap().ends_with(b"}\n"),
        "the file ends with a whole line"
    );
    check(&lines, &sim_devices(22, devices), records);
    assert!(lines.len() > before, "written after the restart: {first}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_that_is_not_tether_json_lines_is_refused_at_start_and_left_as_it_is() {
    let dir = temp_dir("foreign");
    let file = dir.join("notes.jsonl");
    let content = b"{\"name\":\"bob\",\"age\":42}\n{\"device\":\"0000002a\",\"session\":0,\"se";
    std::fs::write(&file, content).unwrap();
    let sink = format!("jsonl:{}", file.display());
    let mut l = Logged::start(
        &["listen", "tcp://127.0.0.1:0", "--sink", &sink],
        Stdio::null(),
    );
    let status = exited(&mut l.child, "the listener", Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{}", l.text());
    let said = l.text();
    assert!(
        said.contains("is not Tether's") && said.contains("line 1"),
        "{said}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), content, "left as it was");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bridge_writes_json_lines_itself() {
    let dir = temp_dir("bridge");
    let file = dir.join("pi.jsonl");
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let to = format!("jsonl:{}", file.display());
    let mut b = Logged::start(&["bridge", &endpoint, &to], Stdio::null());
    b.wait_for("listening on tcp://", Duration::from_secs(20));
    let (devices, readings) = (2, 300);
    let mut s = sim(&endpoint, devices, readings, 23);
    let status = exited(&mut s, "tether sim", Duration::from_secs(60));
    assert!(status.success(), "tether sim: {status}");
    sigterm(&mut b.child);
    check(
        &file_lines(&file),
        &sim_devices(23, devices),
        u64::from(readings) + 3,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
