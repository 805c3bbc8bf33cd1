//! Hostile peers against the real `tether listen` process on 127.0.0.1, each alongside a
//! well-behaved device streaming a known sequence: random garbage, oversized frames, a
//! wrong protocol version, a peer sending a byte at a time (slowloris), a flood of
//! handshakes, 2,000 connections opened and dropped, running out of file descriptors, and a
//! peer that never reads. Each test checks that the good device's rows are exact, that the
//! bad peer is disconnected with a clear reason in the listener's log, and that the
//! listener's peak resident memory (`VmHWM`) stays under [`RSS_BOUND_KB`].
//!
//! The crash tests (kill -9 of the listener mid-stream, a device restart) are here too.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_core::frame::{self, Header, Kind};
use tether_host::endpoint::Endpoint;
use tether_host::send::{send, SendOptions, SendSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The listener's peak resident memory must stay under this, in KiB. The worst case the
/// defaults allow: about 13 MiB at rest (debug build, measured), 256 device sessions of
/// 76 KiB of link buffers (19 MiB), and 256 connections each with 128 KiB of read and write
/// buffers (32 MiB): 64 MiB, plus some allocator slack. Measured in these tests: 13 MiB to
/// 18 MiB under most hostile peers, 52 MiB after a flood of 2,000 handshakes (256 sessions
/// kept), and 62 MiB with 250 devices connected at once each sending a 60 KB burst on top
/// of that. Buffering without bound (a session per HELLO, output queued for a peer that
/// never reads) goes past it within seconds: before the session limit, 1,000 handshakes
/// took 75 MiB.
const RSS_BOUND_KB: u64 = 72 * 1024;

/// The good device's session: its rows are `600d0001` in the CSV.
const GOOD: u32 = 0x600D_0001;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `tether listen` process on 127.0.0.1, its log collected.
struct Tether {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// A listener left running by a failing test is killed, not orphaned.
impl Drop for Tether {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes terminal colour codes.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Tether {
    /// Starts `tether listen` on `endpoint` (port 0: any) writing `csv`, with `args`; the
    /// shell's `ulimit -n` set to `fds` if given.
    fn start(endpoint: &str, csv: &Path, args: &[&str], fds: Option<u32>) -> Tether {
        let bin = env!("CARGO_BIN_EXE_tether");
        let mut cmd = match fds {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["listen", endpoint, "--csv"])
            .arg(csv)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            // Not a pipe: a listener blocked reading commands from it would not exit.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = plain(&line);
                if let Some(at) = line.find("listening on tcp://") {
                    let rest = &line[at + "listening on tcp://".len()..];
                    let addr = rest.split([',', ' ']).next().unwrap_or_default();
                    if let Ok(a) = addr.parse::<SocketAddr>() {
                        let _ = tx.send(a);
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the listener never listened: {:?}", log.lock().unwrap()));
        Tether { child, addr, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmRSS` and `VmHWM` (peak) of the listener, KiB.
    fn rss_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the listener is running");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Open file descriptors of the listener.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains every one of `needles`; returns that line.
    fn wait_log(&self, needles: &[&str], within: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.clone();
            }
            assert!(
                start.elapsed() < within,
                "no log line with {needles:?} within {within:?}; the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the listener died:\n{}",
            self.log_text()
        );
    }

    /// SIGINT, as Ctrl-C; waits for a clean exit and returns the log.
    fn stop(mut self) -> String {
        let killed = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no stop on SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(50)); // the last log lines
        let log = self.log_text();
        assert!(status.success(), "exit {status:?}:\n{log}");
        log
    }

    /// kill -9.
    fn kill9(mut self) -> String {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.log_text()
    }
}

/// A well-behaved device streaming `good,i,7i` lines, a few hundred a second, until
/// `stop` is set; then it finishes and returns how many lines it sent.
struct GoodDevice {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Result<SendSummary, tether_host::send::SendError>)>,
}

impl GoodDevice {
    fn start(addr: SocketAddr, session: u32) -> GoodDevice {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let flag = stop.clone();
        let lines = tokio::spawn(async move {
            let mut i = 0u64;
            // Bounded: at most 60 s of lines.
            for _ in 0..3_000 {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let mut chunk = String::new();
                for _ in 0..10 {
                    chunk += &format!("good,{i},{}\n", i * 7);
                    i += 1;
                }
                if writer.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            i
        });
        let task = tokio::spawn(async move {
            let mut opts = SendOptions::new(Endpoint::Tcp(addr));
            opts.session = session;
            opts.give_up_after = Duration::from_secs(20);
            let r = send(&opts, tokio::io::BufReader::new(reader), |_| {}).await;
            (lines.await.unwrap_or(0), r)
        });
        GoodDevice { stop, task }
    }

    /// Stops the input and waits until every line was acknowledged; returns the count.
    async fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (n, r) = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the good device finishes")
            .unwrap();
        let s = r.expect("the good device's lines are all acknowledged");
        assert_eq!(s.records, n);
        n
    }
}

/// The rows of `device` in the CSV: (seq, fields), marker rows (empty seq) left out.
fn rows_of(csv: &Path, device: u32) -> Vec<(u32, Vec<String>)> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv)
        .expect("CSV exists");
    let id = format!("{device:08x}");
    r.records()
        .map(|row| row.expect("well-formed CSV"))
        .filter(|row| row.get(1) == Some(id.as_str()) && row.get(2) != Some(""))
        .map(|row| {
            (
                row[2].parse().expect("seq"),
                row.iter().skip(3).map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// The good device's rows are exactly its `n` lines, once each, in order.
fn assert_good_exact(csv: &Path, device: u32, n: u64) {
    let rows = rows_of(csv, device);
    assert_eq!(rows.len() as u64, n, "rows of the good device");
    for (i, (seq, fields)) in rows.iter().enumerate() {
        assert_eq!(*seq, i as u32, "seq of row {i}");
        assert_eq!(
            fields,
            &["good".to_owned(), i.to_string(), (i * 7).to_string()],
            "fields of row {i}"
        );
    }
}

fn assert_rss(t: &Tether) -> (u64, u64) {
    let (rss, peak) = t.rss_kb();
    assert!(
        peak < RSS_BOUND_KB,
        "the listener's peak RSS {peak} KiB is over {RSS_BOUND_KB} KiB"
    );
    eprintln!("listener RSS {rss} KiB, peak {peak} KiB");
    (rss, peak)
}

/// A frame on the wire.
fn wire(kind: Kind, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; frame::max_encoded_len(payload.len())];
    let n = frame::encode(
        &Header {
            kind,
            seq,
            ..Header::default()
        },
        payload,
        &mut out,
    )
    .unwrap();
    out.truncate(n);
    out
}

/// A HELLO payload (`PROTOCOL.md` 9.5.1) of `version` from `session`, naming no listener.
fn hello(version: u8, session: u32) -> Vec<u8> {
    let mut p = vec![version, 0];
    p.extend_from_slice(&session.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes()); // peer_session
    p.extend_from_slice(&0u32.to_le_bytes()); // tx_base
    p.extend_from_slice(&0u32.to_le_bytes()); // rx_next
    p.extend_from_slice(&0u32.to_le_bytes()); // rx_released
    p.extend_from_slice(&1024u16.to_le_bytes()); // max_payload
    p.extend_from_slice(&64u16.to_le_bytes()); // max_send
    p.extend_from_slice(&4u16.to_le_bytes()); // credit
    p
}

/// Reads until the listener closes the connection (or `within` passes: a failure).
async fn closed_by_listener(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the listener did not close the connection");
    got
}

const FAST: &[&str] = &[
    "--handshake-timeout-ms",
    "1000",
    "--idle-timeout-ms",
    "1500",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_frames_and_a_wrong_version_are_dropped_with_reasons() {
    let dir = temp_dir("garbage");
    let csv = dir.join("out.csv");
    let mut t = Tether::start("tcp://127.0.0.1:0", &csv, FAST, None);
    let good = GoodDevice::start(t.addr, GOOD);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Random garbage, zeros and all.
    let mut g = TcpStream::connect(t.addr).await.unwrap();
    let g_port = g.local_addr().unwrap().port();
    let mut x = 0x1234_5678u32;
    let noise: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let _ = g.write_all(&noise).await; // the listener may close mid-way
    closed_by_listener(&mut g, Duration::from_secs(5)).await;
    t.wait_log(
        &[&format!(":{g_port}"), "no valid HELLO in the first 4 KiB"],
        Duration::from_secs(5),
    );

    // An oversized frame (60 KB, valid CRC) instead of a HELLO.
    let mut o = TcpStream::connect(t.addr).await.unwrap();
    let o_port = o.local_addr().unwrap().port();
    let _ = o.write_all(&wire(Kind::Data, 0, &vec![7u8; 60_000])).await;
    closed_by_listener(&mut o, Duration::from_secs(5)).await;
    t.wait_log(
        &[&format!(":{o_port}"), "no valid HELLO"],
        Duration::from_secs(5),
    );

    // A proper HELLO, then only oversized frames: never a valid frame again.
    let mut o2 = TcpStream::connect(t.addr).await.unwrap();
    let o2_port = o2.local_addr().unwrap().port();
    o2.write_all(&wire(Kind::Hello, 0, &hello(1, 0xB16_0001)))
        .await
        .unwrap();
    let big = wire(Kind::Data, 0, &vec![9u8; 5_000]);
    for _ in 0..5 {
        if o2.write_all(&big).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closed_by_listener(&mut o2, Duration::from_secs(5)).await;
    t.wait_log(
        &[&format!(":{o2_port}"), "0b160001 silent", "5 too long"],
        Duration::from_secs(5),
    );

    // A HELLO of protocol version 2: a REJECT that names the version, and a log line.
    let mut v = TcpStream::connect(t.addr).await.unwrap();
    let v_port = v.local_addr().unwrap().port();
    v.write_all(&wire(Kind::Hello, 0, &hello(2, 0xB16_0002)))
        .await
        .unwrap();
    let answer = closed_by_listener(&mut v, Duration::from_secs(5)).await;
    let mut dec = frame::Decoder::new(vec![0u8; 256]);
    let mut input = &answer[..];
    let reject = dec.decode(&mut input).expect("a frame").expect("valid");
    assert_eq!(reject.header.kind, Kind::Reject);
    let line = t.wait_log(&[&format!(":{v_port}"), "refused"], Duration::from_secs(5));
    assert!(line.contains("ersion"), "{line}");

    t.assert_alive();
    let n = good.finish().await;
    assert!(n > 0);
    assert_rss(&t);
    t.stop();
    assert_good_exact(&csv, GOOD, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_peer_is_dropped_before_and_after_its_handshake() {
    let dir = temp_dir("slowloris");
    let csv = dir.join("out.csv");
    let t = Tether::start("tcp://127.0.0.1:0", &csv, FAST, None);
    let good = GoodDevice::start(t.addr, GOOD);
    // A valid HELLO, one byte every 200 ms: 40-odd bytes would take 8 s.
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let started = Instant::now();
    let hello_wire = wire(Kind::Hello, 0, &hello(1, 0x5105_0001));
    for b in &hello_wire {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    closed_by_listener(&mut s, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "dropped after {took:?}");
    t.wait_log(
        &[&format!(":{port}"), "no HELLO within 1s"],
        Duration::from_secs(2),
    );
    // After a prompt HELLO, a record one byte every 200 ms: no whole frame within the idle
    // time-out, so it is dropped as silent.
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(&wire(Kind::Hello, 0, &hello(1, 0x5105_0002)))
        .await
        .unwrap();
    let started = Instant::now();
    for b in wire(Kind::Data, 0, b"slow,0") {
        if s.write_all(&[b]).await.is_err() || started.elapsed() > Duration::from_secs(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    closed_by_listener(&mut s, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    t.wait_log(
        &[&format!(":{port}"), "51050002 silent for 1.5s"],
        Duration::from_secs(2),
    );
    let n = good.finish().await;
    assert_rss(&t);
    t.stop();
    assert_good_exact(&csv, GOOD, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_handshakes_keeps_memory_bounded() {
    let dir = temp_dir("flood");
    let csv = dir.join("out.csv");
    let t = Tether::start("tcp://127.0.0.1:0", &csv, FAST, None);
    let good = GoodDevice::start(t.addr, GOOD);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (before, _) = t.rss_kb();
    // 2,000 HELLOs from as many sessions, 50 at a time, each read until its WELCOME: far
    // more than the 256 device sessions kept by default, so idle ones make room.
    let addr = t.addr;
    for batch in 0..40u32 {
        let conns: Vec<_> = (0..50u32)
            .map(|i| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let session = 0xF100_0000 + batch * 50 + i;
                    s.write_all(&wire(Kind::Hello, 0, &hello(1, session)))
                        .await
                        .unwrap();
                    let mut buf = [0u8; 256];
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
                })
            })
            .collect();
        for c in conns {
            c.await.unwrap();
        }
    }
    t.wait_log(&["device f10007cf connected"], Duration::from_secs(5));
    t.wait_log(
        &["forgotten to make room", "--max-devices"],
        Duration::from_secs(1),
    );
    let (after, peak) = assert_rss(&t);
    eprintln!("handshake flood: RSS {before} KiB before, {after} KiB after, peak {peak} KiB");
    // Near the worst case the defaults allow: 250 devices connected at once, each with its
    // session and its connection's buffers in use, 60 records (60 KB) in one burst.
    let mut held = Vec::new();
    for i in 0..250u32 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&wire(Kind::Hello, 0, &hello(1, 0xF200_0000 + i)))
            .await
            .unwrap();
        // 60 KB in one write, so that the listener's read buffer is used whole.
        let burst: Vec<u8> = (0..60)
            .flat_map(|seq| wire(Kind::Data, seq, &[b'x'; 1000]))
            .collect();
        s.write_all(&burst).await.unwrap();
        held.push(s);
    }
    t.wait_log(&["device f20000f9 connected"], Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, peak) = assert_rss(&t);
    eprintln!("250 devices connected at once: peak RSS {peak} KiB");
    drop(held);
    let n = good.finish().await;
    t.stop();
    assert_good_exact(&csv, GOOD, n);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_opened_and_dropped() {
    let dir = temp_dir("conns");
    let csv = dir.join("out.csv");
    let mut t = Tether::start("tcp://127.0.0.1:0", &csv, FAST, None);
    let good = GoodDevice::start(t.addr, GOOD);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_before = t.fds();
    // 2,000 connections held open at once, then all dropped.
    let mut held = Vec::new();
    for _ in 0..2_000 {
        match TcpStream::connect(t.addr).await {
            Ok(s) => held.push(s),
            Err(e) => panic!("connect failed after {}: {e}", held.len()),
        }
    }
    t.wait_log(
        &["connection refused: limit of 256 connections reached"],
        Duration::from_secs(5),
    );
    drop(held);
    // Then 2,000 more, each dropped at once.
    for _ in 0..2_000 {
        drop(TcpStream::connect(t.addr).await.unwrap());
    }
    // Every one of them is closed on the listener's side again.
    let start = Instant::now();
    while t.fds() > fds_before + 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} descriptors open, {fds_before} before",
            t.fds()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.assert_alive();
    let n = good.finish().await;
    assert_rss(&t);
    t.stop();
    assert_good_exact(&csv, GOOD, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_survived() {
    let dir = temp_dir("emfile");
    let csv = dir.join("out.csv");
    // 64 descriptors, and a connection limit above that: accept fails with EMFILE.
    let mut args = FAST.to_vec();
    args.extend(["--max-connections", "1000"]);
    let mut t = Tether::start("tcp://127.0.0.1:0", &csv, &args, Some(64));
    let good = GoodDevice::start(t.addr, GOOD);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(t.addr).await {
            held.push(s);
        }
    }
    t.wait_log(
        &["accept failed", "Too many open files"],
        Duration::from_secs(5),
    );
    // The held connections time out at the handshake; the rest are accepted then.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(held);
    t.assert_alive();
    // A new device is served once descriptors are free again.
    let late = GoodDevice::start(t.addr, GOOD + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = good.finish().await;
    let m = late.finish().await;
    assert_rss(&t);
    t.stop();
    assert_good_exact(&csv, GOOD, n);
    assert_good_exact(&csv, GOOD + 1, m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_dropped() {
    let dir = temp_dir("noread");
    let csv = dir.join("out.csv");
    let t = Tether::start("tcp://127.0.0.1:0", &csv, FAST, None);
    let good = GoodDevice::start(t.addr, GOOD);
    // A small receive buffer, so that the listener's writes back up soon.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(t.addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(&wire(Kind::Hello, 0, &hello(1, 0x0DEA_F001)))
        .await
        .unwrap();
    // Ten records, then the first one over and over, one frame per write: each copy is
    // acknowledged again (a duplicate makes an acknowledgement due), and it never reads
    // those acknowledgements.
    let started = Instant::now();
    let mut sent = 0u32;
    let mut stuck = false;
    while started.elapsed() < Duration::from_secs(8) {
        let seq = sent.min(10);
        let f = wire(Kind::Data, seq, format!("deaf,{seq}").as_bytes());
        match tokio::time::timeout(Duration::from_millis(500), s.write_all(&f)).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break, // dropped by the listener
            Err(_) => stuck = true,
        }
        tokio::time::sleep(Duration::from_micros(50)).await;
        if t.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("0deaf001 dropped"))
        {
            break;
        }
    }
    let line = t.wait_log(
        &[&format!(":{port}"), "0deaf001 dropped", "read nothing"],
        Duration::from_secs(5),
    );
    eprintln!("{sent} records sent, stuck writing: {stuck}; {line}");
    drop(s);
    let n = good.finish().await;
    assert_rss(&t);
    t.stop();
    assert_good_exact(&csv, GOOD, n);
}

// ---- crash safety -------------------------------------------------------------------

/// A test device: a `Link` over a blocking socket, whose input can be ignored (so that the
/// acknowledgements of what it sent never reach it, as when the listener dies first).
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

    /// Runs the link for `time`: transmits, and (if `listen`) takes input in; stops early
    /// once `until` holds.
    fn run(&mut self, time: Duration, listen: bool, until: impl Fn(&Self) -> bool) {
        use std::io::{Read, Write};
        let end = Instant::now() + time;
        let mut buf = [0u8; 4096];
        while Instant::now() < end && !until(self) {
            let now = self.now();
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            while let Some(n) = self.link.poll_transmit(now, &mut self.out) {
                if sock.write_all(&self.out[..n]).is_err() {
                    break;
                }
            }
            match sock.read(&mut buf) {
                Ok(0) => {
                    self.sock = None;
                    return;
                }
                Ok(n) if listen => self.link.handle_input(now, &buf[..n]),
                _ => {}
            }
            self.link.handle_timeout(self.now());
            while self.link.poll_event().is_some() {}
        }
    }

    fn send(&mut self, i: u32) {
        self.link
            .send(format!("rec,{i}").as_bytes())
            .expect("a free slot");
    }
}

/// Rows of `device` with a seq, in file order; and its marker rows' texts.
fn rows_and_markers(csv: &Path, device: u32) -> (Vec<(u32, String)>, Vec<String>) {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv)
        .expect("CSV exists");
    let id = format!("{device:08x}");
    let (mut rows, mut markers) = (Vec::new(), Vec::new());
    for row in r.records() {
        let row = row.expect("well-formed CSV");
        if row.get(1) != Some(id.as_str()) {
            continue;
        }
        match row.get(2) {
            Some("") => markers.push(row[3].to_owned()),
            Some(seq) => rows.push((
                seq.parse().unwrap(),
                row.iter().skip(3).collect::<Vec<_>>().join(","),
            )),
            None => panic!("short row"),
        }
    }
    (rows, markers)
}

#[test]
fn a_listener_killed_after_writing_unacknowledged_records_writes_them_once() {
    let dir = temp_dir("kill-dedupe");
    let csv = dir.join("out.csv");
    let t = Tether::start("tcp://127.0.0.1:0", &csv, &[], None);
    let addr = t.addr;
    let mut d = TestDevice::new(0xC0A5_0001);
    d.connect(addr);
    d.run(Duration::from_secs(10), true, |d| {
        d.link.phase() == tether_core::link::Phase::Established
    });
    // 16 records, taken in by the listener and written, their acknowledgements never read.
    for i in 0..16 {
        d.send(i);
    }
    let written = |csv: &Path| rows_of(csv, 0xC0A5_0001).len();
    d.run(Duration::from_secs(10), false, |_| written(&csv) >= 16);
    assert_eq!(written(&csv), 16);
    // kill -9, and a torn row as a crash in the middle of a write leaves one.
    let log = t.kill9();
    assert!(!log.contains("panicked"), "{log}");
    let mut f = std::fs::OpenOptions::new().append(true).open(&csv).unwrap();
    std::io::Write::write_all(&mut f, b"2026-01-01T00:00:00.000000Z,c0a50001,16,rec").unwrap();
    drop(f);
    let endpoint = format!("tcp://{addr}");
    let t = Tether::start(&endpoint, &csv, &[], None);
    t.wait_log(
        &["the last row was torn", "cut 43 bytes"],
        Duration::from_secs(5),
    );
    // The device resumes: it sends all 16 again (none was acknowledged), then 16 more.
    d.connect(addr);
    d.run(Duration::from_secs(10), true, |d| d.link.unacked() == 0);
    for i in 16..32 {
        d.send(i);
    }
    d.run(Duration::from_secs(10), true, |d| d.link.unacked() == 0);
    assert_eq!(d.link.unacked(), 0, "everything acknowledged");
    t.wait_log(
        &[
            "c0a50001 resumes after a listener restart",
            "0 to 15",
            "skipped",
        ],
        Duration::from_secs(5),
    );
    t.stop();
    let (rows, markers) = rows_and_markers(&csv, 0xC0A5_0001);
    let want: Vec<(u32, String)> = (0..32).map(|i| (i, format!("rec,{i}"))).collect();
    assert_eq!(rows, want, "every record once, in order");
    assert!(markers.is_empty(), "{markers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_listener_mid_stream_loses_and_duplicates_nothing() {
    kill_9_mid_stream("kill9", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_authenticating_listener_mid_stream_loses_and_duplicates_nothing() {
    kill_9_mid_stream("kill9-auth", true).await;
}

/// Writes a key file: `DEVICE_ID HEX_KEY`, mode 600.
fn key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("device.key");
    std::fs::write(&p, format!("0000abcd {}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

async fn kill_9_mid_stream(name: &str, auth: bool) {
    let dir = temp_dir(name);
    let csv = dir.join("out.csv");
    let keys = key_file(&dir);
    let keys_arg = keys.to_str().unwrap().to_owned();
    let args: Vec<&str> = if auth {
        vec!["--keys", &keys_arg]
    } else {
        vec![]
    };
    let t = Tether::start("tcp://127.0.0.1:0", &csv, &args, None);
    let addr = t.addr;
    let endpoint = format!("tcp://{addr}");
    // A sender streaming as fast as it can, through two kills of the listener.
    let n = 60_000usize;
    let text: String = (0..n).map(|i| format!("good,{i},{}\n", i * 7)).collect();
    let mut opts = SendOptions::new(Endpoint::Tcp(addr));
    opts.session = GOOD;
    opts.give_up_after = Duration::from_secs(30);
    if auth {
        opts.key = Some(tether_host::keys::load_one(&keys).expect("key file"));
    }
    // The input arrives 4 KiB a millisecond (about 0.3 s in all), so that both kills land
    // mid-stream however fast sending and writing are.
    let (mut input, reader) = tokio::io::duplex(16 * 1024);
    tokio::spawn(async move {
        for chunk in text.as_bytes().chunks(4096) {
            if tokio::io::AsyncWriteExt::write_all(&mut input, chunk)
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let sender =
        tokio::spawn(async move { send(&opts, tokio::io::BufReader::new(reader), |_| {}).await });
    let mut t = t;
    for (kill, at) in [(1, n / 5), (2, n / 2)] {
        let start = Instant::now();
        while rows_of_fast(&csv) < at {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "kill {kill}: too slow"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let log = t.kill9();
        assert!(!log.contains("panicked"), "{log}");
        t = Tether::start(&endpoint, &csv, &args, None);
    }
    let s = tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .expect("the sender finishes")
        .unwrap()
        .expect("every line acknowledged");
    assert_eq!(s.records, n as u64);
    assert!(s.reconnects >= 2, "{s:?}");
    let log = t.stop();
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.contains("600d0001") || l.contains("rows from before"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_good_exact(&csv, GOOD, n as u64);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Lines in the CSV (a cheap count while it grows).
fn rows_of_fast(csv: &Path) -> usize {
    std::fs::read(csv)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count().saturating_sub(1))
        .unwrap_or(0)
}

#[test]
fn a_device_that_restarts_is_reported_in_the_log_and_the_csv() {
    let dir = temp_dir("restart");
    let csv = dir.join("out.csv");
    let t = Tether::start("tcp://127.0.0.1:0", &csv, &[], None);
    let addr = t.addr;
    let id = 0xDE71_CE01;
    // Instance 1: 20 records acknowledged, then 10 more written but never acknowledged to
    // it, and it dies.
    let mut d = TestDevice::new(id);
    d.connect(addr);
    for i in 0..16 {
        d.send(i);
    }
    d.run(Duration::from_secs(10), true, |d| d.link.unacked() == 0);
    for i in 16..26 {
        d.send(i);
    }
    d.run(Duration::from_secs(10), false, |_| {
        rows_of(&csv, id).len() >= 26
    });
    drop(d);
    // Instance 2, the same identity (firmware without a persistent boot counter): a new
    // numbering from 0.
    let mut d = TestDevice::new(id);
    d.connect(addr);
    for i in 0..5 {
        d.send(100 + i);
    }
    d.run(Duration::from_secs(10), true, |d| d.link.unacked() == 0);
    t.wait_log(&["de71ce01 restarted"], Duration::from_secs(5));
    // The listener dies; instance 3 (restarted again) meets a new listener process, which
    // knows the device only from the CSV.
    let log = t.kill9();
    assert!(!log.contains("panicked"), "{log}");
    drop(d);
    let t = Tether::start(&format!("tcp://{addr}"), &csv, &[], None);
    let mut d = TestDevice::new(id);
    d.connect(addr);
    for i in 0..3 {
        d.send(200 + i);
    }
    d.run(Duration::from_secs(10), true, |d| d.link.unacked() == 0);
    t.wait_log(
        &["de71ce01 restarted", "up to record 4"],
        Duration::from_secs(5),
    );
    t.stop();
    let (rows, markers) = rows_and_markers(&csv, id);
    let want: Vec<(u32, String)> = (0..26)
        .map(|i| (i, format!("rec,{i}")))
        .chain((0..5).map(|i| (i, format!("rec,{}", 100 + i))))
        .chain((0..3).map(|i| (i, format!("rec,{}", 200 + i))))
        .collect();
    assert_eq!(rows, want, "each instance's records once, in order");
    assert_eq!(markers.len(), 2, "{markers:?}");
    assert!(markers[0].contains("up to record 25"), "{markers:?}");
    assert!(markers[1].contains("up to record 4"), "{markers:?}");
}

/// Frames before the HELLO (a previous session's leftovers, as a serial line delivers
/// first) are ignored, as PROTOCOL.md 9.4.1 says of a server that is Handshaking: the
/// device's handshake that follows completes on the same connection, nothing of the
/// leftovers is written, and the device's records are.
#[test]
fn frames_before_the_hello_are_ignored_and_the_handshake_that_follows_is_served() {
    use std::io::Write;
    let dir = temp_dir("before-hello");
    let csv = dir.join("out.csv");
    let t = Tether::start("tcp://127.0.0.1:0", &csv, &[], None);
    let id = 0xB4F0_0001;
    let mut d = TestDevice::new(id);
    d.connect(t.addr);
    let mut leftovers = wire(Kind::Data, 0, b"stale,0");
    leftovers.extend(wire(Kind::Ping, 0, b""));
    leftovers.extend(wire(Kind::Close, 7, b""));
    d.sock.as_mut().unwrap().write_all(&leftovers).unwrap();
    for i in 0..3 {
        d.send(i);
    }
    d.run(Duration::from_secs(10), true, |d| d.link.unacked() == 0);
    assert_eq!(
        d.link.phase(),
        tether_core::link::Phase::Established,
        "the handshake after the leftovers completed on the same connection"
    );
    assert_eq!(d.link.unacked(), 0, "every record acknowledged");
    t.stop();
    let (rows, markers) = rows_and_markers(&csv, id);
    let want: Vec<(u32, String)> = (0..3).map(|i| (i, format!("rec,{i}"))).collect();
    assert_eq!(rows, want, "the records once, the leftovers not at all");
    assert!(markers.is_empty(), "{markers:?}");
}
