//! `tether listen --csv-dir DIR` through the real binary: devices that declare their record
//! kinds (`PROTOCOL.md` 10.5) get a file per kind with named columns, every reading once;
//! a listener killed with `kill -9` mid-stream and started again on the same directory
//! reads the kinds back and writes every record exactly once.

mod common;
mod devices;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::logged::Logged;
use devices::Fleet;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-csvdir-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn listen(addr: &str, dir: &Path, stdin: Stdio) -> Logged {
    Logged::start(&["listen", addr, "--csv-dir", dir.to_str().unwrap()], stdin)
}

/// A CSV file's header and rows.
fn read(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = r
        .records()
        .map(|row| row.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

/// Each device's seqs in the files of `dir`, which must not repeat, and (per device) its
/// readings' counters in order with their values checked against the sensor.
fn check_exactly_once(dir: &Path, devices: usize, readings: u32) {
    let (header, rows) = read(&dir.join("env.csv"));
    assert_eq!(
        header,
        [
            "host_time",
            "device",
            "session",
            "seq",
            "counter",
            "time (ms)",
            "temperature (°C)",
            "pressure (hPa)",
            "output"
        ]
    );
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    let mut counters: HashMap<String, Vec<(u32, String, String)>> = HashMap::new();
    for r in &rows {
        seqs.entry(r[1].clone())
            .or_default()
            .push(r[3].parse().unwrap());
        counters.entry(r[1].clone()).or_default().push((
            r[4].parse().unwrap(),
            r[6].clone(),
            r[7].clone(),
        ));
        assert_eq!(r[2], "0", "one numbering: {r:?}");
    }
    // Every other file's records (declarations, replies, the rest; not marker rows).
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.file_name().unwrap() == "env.csv" {
            continue;
        }
        let (header, rows) = read(&path);
        if header.is_empty() {
            continue; // created, never written
        }
        assert_eq!(header[..4], ["host_time", "device", "session", "seq"]);
        for r in rows.iter().filter(|r| !r[3].is_empty()) {
            seqs.entry(r[1].clone())
                .or_default()
                .push(r[3].parse().unwrap());
        }
    }
    for i in 0..devices {
        let d = format!("{:08x}", devices::session(i));
        let mut s = seqs
            .remove(&d)
            .unwrap_or_else(|| panic!("device {d} has no rows"));
        let n = s.len();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), n, "device {d}: a record written twice");
        assert_eq!(s, (0..n as u64).collect::<Vec<_>>(), "device {d}: a gap");
        let truth = devices::truth(i, readings);
        let got = &counters[&d];
        assert_eq!(got.len(), readings as usize, "device {d}: readings");
        for (k, (c, t, p)) in got.iter().enumerate() {
            assert_eq!(*c as usize, k, "device {d}: reading {k} out of order");
            assert_eq!(
                (t, p),
                (&truth[k].0, &truth[k].1),
                "device {d}: reading {k}"
            );
        }
    }
    assert!(seqs.is_empty(), "rows of other devices: {:?}", seqs.keys());
}

#[test]
fn each_kind_has_its_file_with_named_columns_and_every_reading_once() {
    let d = dir("named");
    let mut listener = listen("tcp://127.0.0.1:0", &d, Stdio::piped());
    let addr = listener.addr();
    let fleet = Fleet::start(addr, 3, 400, 1);
    for i in 0..3 {
        let d = format!("new device {:08x}", devices::session(i));
        listener.wait_for(&d, Duration::from_secs(10));
    }
    // A command each: a status reply and an error reply, each a kind of its own.
    let stdin = listener.child.stdin.as_mut().unwrap();
    stdin.write_all(b"* status\n* reboot\n").unwrap();
    stdin.flush().unwrap();
    let done = fleet.finish(Duration::from_secs(60));
    assert!(done.iter().all(|d| d.readings == 400));
    check_exactly_once(&d, 3, 400);
    let (header, kinds) = read(&d.join("tether-kinds.csv"));
    assert_eq!(
        header,
        [
            "host_time",
            "device",
            "session",
            "seq",
            "kind",
            "name",
            "file",
            "fields",
            "declaration"
        ]
    );
    let files: BTreeMap<String, String> =
        kinds.iter().map(|r| (r[5].clone(), r[6].clone())).collect();
    assert_eq!(
        files,
        BTreeMap::from([
            ("env".into(), "env.csv".into()),
            ("error".into(), "error.csv".into()),
            ("status".into(), "status.csv".into()),
        ])
    );
    assert_eq!(
        kinds.len(),
        9,
        "three kinds declared by each of three devices"
    );
    // The replies: status.csv and error.csv, once a device once they came.
    for _ in 0..200 {
        let (_, e) = read(&d.join("error.csv"));
        let (_, s) = read(&d.join("status.csv"));
        if e.len() == 3 && s.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (header, errors) = read(&d.join("error.csv"));
    assert_eq!(header[4..], ["command", "reason"]);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|r| r[4..] == ["reboot", "unknown command"]),
        "{errors:?}"
    );
    let (header, status) = read(&d.join("status.csv"));
    assert_eq!(
        header[4..],
        ["period (ms)", "output", "readings", "retransmissions"]
    );
    assert_eq!(status.len(), 3);
    drop(listener);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_listener_killed_mid_stream_and_restarted_writes_every_record_once() {
    let d = dir("kill9");
    let mut listener = listen("tcp://127.0.0.1:0", &d, Stdio::null());
    let addr = listener.addr();
    let fleet = Fleet::start(addr, 3, 2_500, 1);
    for round in 0..2 {
        // Well into the stream, with records in flight: kill -9, and start it again.
        let start = fleet.acked.load(Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while fleet.acked.load(Relaxed) < start + 1_000 {
            assert!(std::time::Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The second time, the devices stop reading first: what the listener writes then is
        // never acknowledged to them, and they send it again to the new listener.
        if round == 1 {
            fleet.deaf.store(true, Relaxed);
            std::thread::sleep(Duration::from_millis(300));
        }
        listener.child.kill().unwrap();
        listener.child.wait().unwrap();
        fleet.deaf.store(false, Relaxed);
        listener = listen(&format!("tcp://{addr}"), &d, Stdio::null());
        listener.wait_for("declared kinds read back", Duration::from_secs(10));
    }
    // Records written and not acknowledged were sent again, and skipped.
    listener.wait_for(
        "are already in the CSV and are skipped",
        Duration::from_secs(20),
    );
    let done = fleet.finish(Duration::from_secs(90));
    assert!(done
        .iter()
        .all(|d| d.readings == 2_500 && d.connections >= 3));
    check_exactly_once(&d, 3, 2_500);
    drop(listener);
    std::fs::remove_dir_all(&d).unwrap();
}
