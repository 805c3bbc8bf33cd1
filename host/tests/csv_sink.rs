//! The CSV sink through the real `tether` binary, where a user meets it: a disk that fills up
//! and is freed (on a tmpfs), a `--csv` file that is not a Tether CSV, two listeners on one
//! CSV, the CSV's rules for text and binary records, and the marker row of a device that
//! kept its session.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Process;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-csv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `tether listen` on 127.0.0.1 (any port) writing `csv`, its log collected.
struct Listener {
    process: Process,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    fn start(csv: &Path) -> Listener {
        let (process, log) = spawn_listener(csv);
        let start = Instant::now();
        let addr = loop {
            let found = log.lock().unwrap().iter().find_map(|l| {
                let rest = &l[l.find("listening on tcp://")? + "listening on tcp://".len()..];
                rest.split([',', ' ']).next()?.parse::<SocketAddr>().ok()
            });
            if let Some(a) = found {
                break a;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the listener did not start: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Listener { process, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (at most `within`) for a log line containing every one of `parts`.
    fn wait_log(&self, parts: &[&str], within: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            assert!(
                start.elapsed() < within,
                "no log line with {parts:?} within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }
}

/// `tether listen tcp://127.0.0.1:0 --csv CSV`, stderr collected line by line.
fn spawn_listener(csv: &Path) -> (Process, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["listen", "tcp://127.0.0.1:0", "--csv"])
        .arg(csv)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether starts");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    });
    (Process(child), log)
}

/// The log once a line of it contains `needle` (bounded: the reader thread may still be
/// draining standard error when the process has exited); all of it if none does in time.
fn log_with(log: &Arc<Mutex<Vec<String>>>, needle: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = log.lock().unwrap().join("\n");
        if text.contains(needle) || start.elapsed() > within {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits at most `within` for `p` to exit; its exit code.
fn exit_code(p: &mut Process, within: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(status) = p.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A record's row: device, seq, fields.
type Row = (String, u32, Vec<String>);

/// Every row of the CSV with a seq, in file order; and the header.
fn rows(csv: &Path) -> (Vec<String>, Vec<Row>) {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv)
        .expect("the CSV exists");
    let header = r.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = r
        .records()
        .map(|row| row.expect("well-formed CSV"))
        .filter(|row| !row[2].is_empty())
        .map(|row| {
            (
                row[1].to_owned(),
                row[2].parse().unwrap_or_else(|_| {
                    panic!(
                        "a row whose seq is {:?}: a torn row inside the CSV",
                        &row[2]
                    )
                }),
                row.iter().skip(3).map(str::to_owned).collect(),
            )
        })
        .collect();
    (header, rows)
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` (after saying so) where that is not
    /// permitted, except under CI, which runs as root: there it must work.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: mounting a tmpfs must work"
            );
            eprintln!("skipped: cannot mount a tmpfs here (not root?)");
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A disk that fills up mid-stream and is freed again: every record ends up in the CSV
/// exactly once, in order, the listener logs the full disk once (not once a retry) and when
/// writing works again, and `tether send` exits 0 only once every record is written.
#[test]
fn a_full_disk_then_freed_writes_every_record_once_and_the_sender_waits_for_it() {
    let dir = temp_dir("full");
    let Some(disk) = Tmpfs::mount(&dir.join("full"), "1m") else {
        return;
    };
    let csv = disk.0.join("f.csv");
    // About 65 bytes a row: 40,000 rows are 2.6 MB, the disk 1 MiB.
    let n = 40_000u32;
    let input = dir.join("in");
    let text: String = (1..=n).map(|i| format!("{i},payload-abcdefgh\n")).collect();
    std::fs::write(&input, text).unwrap();
    let l = Listener::start(&csv);
    let mut sender = Process(
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["send", &format!("tcp://{}", l.addr)])
            .arg(&input)
            .args(["--give-up-after", "120"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    l.wait_log(&["f.csv", "No space left"], Duration::from_secs(60));
    // Full for a while: the devices' records are offered again and again meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        exit_code(&mut sender, Duration::ZERO),
        None,
        "still sending"
    );
    disk.resize("20m");
    let code = exit_code(&mut sender, Duration::from_secs(120));
    // Acknowledged means written: the CSV is complete the moment the sender is done.
    let (header, rows) = rows(&csv);
    assert_eq!(
        code,
        Some(0),
        "tether send exits 0 once all is acknowledged"
    );
    l.wait_log(&["f.csv", "writing works again"], Duration::from_secs(5));
    let log = l.log();
    let reports = log.matches("No space left").count();
    assert_eq!(reports, 1, "the full disk logged once:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(header, ["host_time", "device", "seq", "field_1", "field_2"]);
    let device = &rows[0].0;
    assert!(rows.iter().all(|r| &r.0 == device), "one device");
    let got: Vec<(u32, Vec<String>)> = rows.into_iter().map(|(_, s, f)| (s, f)).collect();
    let want: Vec<(u32, Vec<String>)> = (1..=n)
        .map(|i| (i - 1, vec![i.to_string(), "payload-abcdefgh".to_owned()]))
        .collect();
    if got != want {
        let mut seen = std::collections::HashSet::new();
        let dups = got.iter().filter(|r| !seen.insert(r.0)).count();
        panic!(
            "{} rows for {n} records, {dups} of them duplicates",
            got.len()
        );
    }
    drop(sender);
    drop(l);
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The issue's two files: a user's CSV and a binary file. The listener refuses each at
/// start (exit 2) with a message naming the file and the header it should have, and
/// leaves it exactly as it was.
#[test]
fn a_file_that_is_not_a_tether_csv_is_refused_and_left_as_it_is() {
    let dir = temp_dir("foreign");
    let binary: Vec<u8> = (0..73u32).map(|i| (i * 37 % 256) as u8).collect();
    for (name, content) in [
        ("u.csv", b"name,age\nbob,42\nalice,3".to_vec()),
        ("blob.bin", binary),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &content).unwrap();
        let (mut p, log) = spawn_listener(&path);
        let code = exit_code(&mut p, Duration::from_secs(20));
        let text = log_with(&log, "host_time,device,seq then", Duration::from_secs(5));
        assert_eq!(code, Some(2), "{name}: {text}");
        assert!(
            text.contains(&format!("CSV file {} is not a Tether CSV", path.display())),
            "{text}"
        );
        assert!(
            text.contains("host_time,device,seq then ,field_1"),
            "{text}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            content,
            "{name} left as it was"
        );
    }
    assert!(log_of_first(&dir.join("u.csv")).contains("its first line is \"name,age\""));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The refusal a listener on `csv` prints.
fn log_of_first(csv: &Path) -> String {
    let (mut p, log) = spawn_listener(csv);
    exit_code(&mut p, Duration::from_secs(20));
    log_with(&log, "its first line is", Duration::from_secs(5))
}

/// A second listener on a CSV another one writes exits 2, naming the file and the first
/// one's process; the first carries on alone (one header, its rows once).
#[test]
fn a_second_listener_on_the_same_csv_is_refused_naming_the_first() {
    let dir = temp_dir("lock");
    let csv = dir.join("out.csv");
    let first = Listener::start(&csv);
    let (mut second, log) = spawn_listener(&csv);
    let code = exit_code(&mut second, Duration::from_secs(20));
    let text = log_with(&log, "is being written by", Duration::from_secs(5));
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "CSV file {} is being written by process {} (tether)",
            csv.display(),
            first.pid()
        )),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["send", &format!("tcp://{}", first.addr), "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"1,a\n2,b\n")?;
            c.wait()
        })
        .unwrap();
    assert!(out.success());
    let (header, rows) = rows(&csv);
    assert_eq!(header, ["host_time", "device", "seq", "field_1", "field_2"]);
    let fields: Vec<Vec<String>> = rows.into_iter().map(|r| r.2).collect();
    assert_eq!(fields, [["1", "a"], ["2", "b"]]);
    assert_eq!(
        std::fs::read_to_string(&csv)
            .unwrap()
            .matches("host_time")
            .count(),
        1
    );
    drop(first);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- a device written with the core's link, over a blocking socket -------------------

struct TestDevice {
    link: tether_core::link::Link<tether_core::link::LinkStorage<16, 4, 128>>,
    start: Instant,
    sock: Option<std::net::TcpStream>,
    out: Vec<u8>,
}

impl TestDevice {
    fn new(session: u32) -> TestDevice {
        use tether_core::link::{Config, Link, LinkStorage, Role};
        let link = Link::new(Config::new(Role::Client, session), LinkStorage::new()).unwrap();
        let out = vec![0u8; link.transmit_len()];
        TestDevice {
            link,
            start: Instant::now(),
            sock: None,
            out,
        }
    }

    fn now(&self) -> tether_core::link::Instant {
        tether_core::link::Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    fn connect(&mut self, addr: SocketAddr) {
        let s = std::net::TcpStream::connect(addr).expect("connects");
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        self.sock = Some(s);
        let now = self.now();
        self.link.connect(now);
    }

    fn disconnect(&mut self) {
        self.sock = None;
    }

    /// Runs the link until everything sent is acknowledged (at most 10 s).
    fn run_until_acknowledged(&mut self) {
        use std::io::{Read, Write};
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while Instant::now() < end
            && !(self.link.phase() == tether_core::link::Phase::Established
                && self.link.unacked() == 0)
        {
            let now = self.now();
            let Some(sock) = self.sock.as_mut() else {
                break;
            };
            while let Some(n) = self.link.poll_transmit(now, &mut self.out) {
                if sock.write_all(&self.out[..n]).is_err() {
                    break;
                }
            }
            match sock.read(&mut buf) {
                Ok(0) => self.sock = None,
                Ok(n) => self.link.handle_input(now, &buf[..n]),
                Err(_) => {}
            }
            self.link.handle_timeout(self.now());
            while self.link.poll_event().is_some() {}
        }
        assert_eq!(self.link.unacked(), 0, "everything acknowledged");
    }

    fn send(&mut self, payload: &[u8]) {
        self.link.send(payload).expect("a free slot");
    }
}

/// The CSV's rules (README, "The CSV"), through the listener: a binary record is never
/// read as text, a text field that begins with `<` is marked as text, one line end ends the
/// line, and text that is not one CSV record is written whole.
#[test]
fn text_and_binary_records_follow_the_csv_rules() {
    let dir = temp_dir("rules");
    let csv = dir.join("out.csv");
    let l = Listener::start(&csv);
    let mut d = TestDevice::new(0xC5F0_0001);
    d.connect(l.addr);
    let cases: [(&[u8], &[&str]); 9] = [
        (b"21.5,ok", &["21.5", "ok"]),
        (b"ff00", &["ff00"]),
        (&[0xFF, 0x00], &["<binary ff00>"]),
        (b"<binary ff00>", &["<<binary ff00>"]),
        (b"22.0,ok\n", &["22.0", "ok"]),
        (b"x\n\n", &["x\n"]),
        (b"a,\"b", &["a,\"b"]),
        (
            b"\"q, r\",\"say \"\"hi\"\"\",<3",
            &["q, r", "say \"hi\"", "<<3"],
        ),
        (b"1,2,3,4", &["1", "2", "3", "4"]),
    ];
    for (payload, _) in &cases {
        d.send(payload);
    }
    d.run_until_acknowledged();
    let (header, rows) = rows(&csv);
    assert_eq!(header, ["host_time", "device", "seq", "field_1", "field_2"]);
    let got: Vec<Vec<String>> = rows.into_iter().map(|r| r.2).collect();
    let want: Vec<Vec<String>> = cases
        .iter()
        .map(|(_, f)| f.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(got, want);
    drop(l);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A device that keeps its session and numbering but moves on (its records acknowledged by
/// another listener in between) and comes back: the listener's marker row says so, and not
/// that it lost its session.
#[test]
fn a_device_that_kept_its_session_is_not_marked_as_having_lost_it() {
    let dir = temp_dir("kept");
    let a = Listener::start(&dir.join("a.csv"));
    let b = Listener::start(&dir.join("b.csv"));
    let id = 0xC5F0_0002;
    let mut d = TestDevice::new(id);
    d.connect(a.addr);
    for i in 0..5 {
        d.send(format!("rec,{i}").as_bytes());
    }
    d.run_until_acknowledged();
    d.disconnect();
    // Records 5 to 9 go to the other listener, which acknowledges them.
    d.connect(b.addr);
    for i in 5..10 {
        d.send(format!("rec,{i}").as_bytes());
    }
    d.run_until_acknowledged();
    d.disconnect();
    // Back to the first: its HELLO names the other listener's session, and its oldest
    // unacknowledged record is 10.
    d.connect(a.addr);
    d.send(b"rec,10");
    d.run_until_acknowledged();
    let line = a.wait_log(
        &["c5f00002 continued its session at record 10"],
        Duration::from_secs(5),
    );
    assert!(!line.contains("lost its session"), "{line}");
    let text = std::fs::read_to_string(dir.join("a.csv")).unwrap();
    let markers: Vec<&str> = text.lines().filter(|l| l.contains(",c5f00002,,")).collect();
    assert_eq!(markers.len(), 1, "{text}");
    assert!(!markers[0].contains("lost its session"), "{}", markers[0]);
    assert!(
        markers[0].contains("continued its session at record 10")
            && markers[0].contains("last record written until then: 4")
            && markers[0].contains("kept its numbering"),
        "{}",
        markers[0]
    );
    let (_, rows) = rows(&dir.join("a.csv"));
    let seqs: Vec<u32> = rows.iter().map(|r| r.1).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 10]);
    drop((a, b));
    std::fs::remove_dir_all(&dir).unwrap();
}
