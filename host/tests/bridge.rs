//! `tether bridge` over TCP on 127.0.0.1: senders → bridge → listener → CSV, exactly once;
//! the listener restarted mid-stream (the bridge withholds credit, reconnects, and nothing is
//! lost or duplicated); the bridge itself stopped, or crashed, and started again mid-stream
//! (exact); devices that vanish do not stop it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_host::bridge::{Bridge, BridgeOptions, BridgeStatus, BridgeSummary};
use tether_host::endpoint::Endpoint;
use tether_host::listen::{ListenOptions, ListenSummary, Listener};
use tether_host::send::{send, SendOptions, SendSummary};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-bridge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Running<T> {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<T>,
}

impl<T> Running<T> {
    async fn stop(self) -> T {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.done)
            .await
            .expect("stops in time")
            .expect("task")
    }
}

async fn listener(csv: &Path, at: &str) -> Running<ListenSummary> {
    let opts = ListenOptions::new(vec![at.parse().unwrap()], csv.to_owned());
    let l = Listener::bind(opts).await.expect("listener binds");
    let addr = l.local_addrs()[0];
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        l.run(async {
            let _ = stopped.await;
        })
        .await
        .expect("listener runs")
    });
    Running { addr, stop, done }
}

async fn bridge(to: SocketAddr) -> (Running<BridgeSummary>, BridgeStatus) {
    bridge_at(to, "tcp://127.0.0.1:0").await
}

async fn bridge_at(to: SocketAddr, at: &str) -> (Running<BridgeSummary>, BridgeStatus) {
    let mut opts = BridgeOptions::new(vec![at.parse().unwrap()], Endpoint::Tcp(to));
    opts.max_backoff = Duration::from_millis(400);
    let b = Bridge::bind(opts).await.expect("bridge binds");
    let addr = b.local_addrs()[0];
    let status = b.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        b.run(async {
            let _ = stopped.await;
        })
        .await
        .expect("bridge runs")
    });
    (Running { addr, stop, done }, status)
}

fn lines(device: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("dev{device},{i},{}\n", i * 7))
        .collect()
}

async fn send_lines(
    to: SocketAddr,
    text: String,
    session: u32,
    acked: Arc<AtomicU64>,
) -> Result<SendSummary, tether_host::send::SendError> {
    let mut opts = SendOptions::new(Endpoint::Tcp(to));
    opts.session = session;
    opts.give_up_after = Duration::from_secs(30);
    send(
        &opts,
        tokio::io::BufReader::new(std::io::Cursor::new(text.into_bytes())),
        move |p| acked.store(p.acked, Ordering::Relaxed),
    )
    .await
}

type Sender = tokio::task::JoinHandle<Result<SendSummary, tether_host::send::SendError>>;

/// One sender per session to `at`, `n` lines each, and each one's acknowledged count.
fn start_senders(at: SocketAddr, sessions: &[u32], n: usize) -> (Vec<Sender>, Vec<Arc<AtomicU64>>) {
    let acked: Vec<Arc<AtomicU64>> = sessions.iter().map(|_| Arc::default()).collect();
    let tasks = sessions
        .iter()
        .enumerate()
        .map(|(d, &s)| tokio::spawn(send_lines(at, lines(d, n), s, acked[d].clone())))
        .collect();
    (tasks, acked)
}

/// Lines acknowledged so far, all senders together.
fn total(acked: &[Arc<AtomicU64>]) -> u64 {
    acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
}

/// Waits (at most 30 s) until the senders had `at_least` lines acknowledged together.
async fn until_acked(acked: &[Arc<AtomicU64>], at_least: u64) {
    let t0 = tokio::time::Instant::now();
    while total(acked) < at_least {
        assert!(t0.elapsed() < Duration::from_secs(30), "records flow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for every sender (at most `secs` each) and checks that each had its `n` lines
/// acknowledged.
async fn all_acknowledged(tasks: Vec<Sender>, n: usize, secs: u64) {
    for t in tasks {
        let s = tokio::time::timeout(Duration::from_secs(secs), t)
            .await
            .expect("in time")
            .unwrap()
            .expect("every line acknowledged");
        assert_eq!(s.records, n as u64);
    }
}

/// The CSV as device → [(seq, fields)] in file order.
fn read_csv(path: &Path) -> HashMap<String, Vec<(u32, Vec<String>)>> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .expect("CSV exists");
    let mut by: HashMap<String, Vec<(u32, Vec<String>)>> = HashMap::new();
    for row in r.records() {
        let row = row.expect("well-formed CSV");
        if &row[0] == "host_time" {
            continue; // a second header, written by a restarted listener
        }
        by.entry(row[1].to_owned()).or_default().push((
            row[2].parse().expect("seq"),
            row.iter().skip(3).map(str::to_owned).collect(),
        ));
    }
    by
}

/// Each device's rows are its lines once each, in order, under its own session id and its
/// own sequence numbers (the bridge is transparent).
fn assert_exact(csv: &Path, sessions: &[u32], n: usize) {
    let by = read_csv(csv);
    assert_eq!(
        by.len(),
        sessions.len(),
        "devices in the CSV: {:?}",
        by.keys()
    );
    for (d, session) in sessions.iter().enumerate() {
        let rows = by
            .get(&format!("{session:08x}"))
            .unwrap_or_else(|| panic!("device {session:08x} in the CSV: {:?}", by.keys()));
        let got: Vec<usize> = rows
            .iter()
            .map(|(_, f)| f[1].parse().expect("line number"))
            .collect();
        let want: Vec<usize> = (0..n).collect();
        if got != want {
            let mut seen = HashMap::new();
            for g in &got {
                *seen.entry(*g).or_insert(0) += 1;
            }
            let dup = seen.values().filter(|&&c| c > 1).count();
            let lost = want.iter().filter(|w| !seen.contains_key(w)).count();
            panic!(
                "device {d}: {} rows, {lost} lost, {dup} duplicated",
                got.len()
            );
        }
        for (i, (seq, fields)) in rows.iter().enumerate() {
            assert_eq!(*seq, i as u32, "the device's own sequence numbers");
            assert_eq!(
                fields,
                &[format!("dev{d}"), i.to_string(), (i * 7).to_string()]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_through_the_bridge_land_in_the_csv_exactly_once() {
    let dir = temp_dir("plain");
    let csv = dir.join("out.csv");
    let l = listener(&csv, "tcp://127.0.0.1:0").await;
    let (b, _) = bridge(l.addr).await;
    let sessions = [0xB0_0001u32, 0xB0_0002, 0xB0_0003];
    let n = 2000;
    let tasks: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(d, &s)| {
            tokio::spawn(send_lines(
                b.addr,
                lines(d, n),
                s,
                Arc::new(AtomicU64::new(0)),
            ))
        })
        .collect();
    all_acknowledged(tasks, n, 60).await;
    let bs = b.stop().await;
    assert_eq!(bs.forwarded, (sessions.len() * n) as u64);
    assert_eq!(bs.devices, sessions.len());
    let ls = l.stop().await;
    assert_eq!(ls.records, (sessions.len() * n) as u64);
    assert_exact(&csv, &sessions, n);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_restarts_mid_stream_and_nothing_is_lost_or_duplicated() {
    let dir = temp_dir("restart");
    let csv = dir.join("out.csv");
    let l = listener(&csv, "tcp://127.0.0.1:0").await;
    let port = l.addr;
    let (b, status) = bridge(port).await;
    let sessions = [0xB1_0001u32, 0xB1_0002];
    let n = 30_000;
    let (tasks, acked) = start_senders(b.addr, &sessions, n);
    // Stop the listener once some records went through, well before the end.
    until_acked(&acked, 2_000).await;
    let first = l.stop().await;
    assert!(
        first.records > 0 && first.records < (2 * n) as u64,
        "{first:?}"
    );
    // While it is down, the bridge grants no credit: nothing more is acknowledged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = total(&acked);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        total(&acked),
        held,
        "nothing acknowledged while the listener is down"
    );
    assert_eq!(status.upstream_up(), 0);
    assert!(
        held <= first.records,
        "acknowledged {held} > written {}",
        first.records
    );
    // The same port again: the bridge reconnects by itself and the senders finish.
    let l = listener(&csv, &format!("tcp://{port}")).await;
    all_acknowledged(tasks, n, 90).await;
    // Each device with records still to send when the listener stopped had its upstream
    // session connect again: at least one (fewer than all records were written), both
    // unless one device had finished before the stop (version 2 can be that fast).
    assert!(
        status.upstream_connections() > sessions.len() as u64,
        "reconnected: {} upstream connections",
        status.upstream_connections()
    );
    b.stop().await;
    l.stop().await;
    assert_exact(&csv, &sessions, n);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bridge stopped (Ctrl-C: it lets the listener acknowledge what it forwarded and closes
/// its upstream sessions) and started again on the same port in the middle of two streams:
/// the devices reconnect and every record is in the CSV once, with no marker row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_restarts_mid_stream_and_nothing_is_lost_or_duplicated() {
    bridge_restart_mid_stream("bridge-restart", 0xB4_0001, false).await;
}

/// A bridge that crashes mid-stream (its task dropped: connections closed, state gone) and a
/// new one on the same port: every record once, no marker row. The records the listener
/// wrote whose acknowledgements died with the old bridge come again; the new bridge's
/// upstream link says the device's numbering continues (`Config::continues_from`), so the
/// listener discards them as duplicates. (Before, it took them for a restarted device's new
/// records: 64 of 20,000 written twice, after a false "device restarted" marker row.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_crashes_mid_stream_and_a_new_one_carries_on_exactly() {
    bridge_restart_mid_stream("bridge-crash", 0xB3_0001, true).await;
}

async fn bridge_restart_mid_stream(name: &str, first_session: u32, crash: bool) {
    let dir = temp_dir(name);
    let csv = dir.join("out.csv");
    let l = listener(&csv, "tcp://127.0.0.1:0").await;
    let (b, _) = bridge(l.addr).await;
    let at = b.addr;
    let sessions = [first_session, first_session + 1];
    let n = 20_000;
    let (tasks, acked) = start_senders(at, &sessions, n);
    until_acked(&acked, 2_000).await;
    if crash {
        // The bridge dies (its task is dropped: every connection closes, its state is
        // gone), as when a Pi loses power.
        b.done.abort();
        let _ = b.done.await;
    } else {
        b.stop().await;
    }
    assert!(total(&acked) < (2 * n) as u64, "stopped mid-stream");
    // Its accept task goes with its task set, a moment later: wait for the port.
    let t0 = tokio::time::Instant::now();
    while std::net::TcpListener::bind(at).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the port is freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (b, _) = bridge_at(l.addr, &format!("tcp://{at}")).await;
    all_acknowledged(tasks, n, 90).await;
    b.stop().await;
    l.stop().await;
    assert_exact(&csv, &sessions, n);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_vanish_or_send_garbage_do_not_stop_the_bridge() {
    let dir = temp_dir("vanish");
    let csv = dir.join("out.csv");
    let l = listener(&csv, "tcp://127.0.0.1:0").await;
    let (b, _) = bridge(l.addr).await;
    // Garbage, then a connection closed at once, then one that vanishes mid-stream.
    let mut g = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    g.write_all(&[0x55; 5000]).await.unwrap();
    drop(g);
    drop(tokio::net::TcpStream::connect(b.addr).await.unwrap());
    let half = tokio::spawn(send_lines(
        b.addr,
        lines(9, 100_000),
        0xB2_0009,
        Arc::new(AtomicU64::new(0)),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    half.abort();
    // A device that does everything right is served all the same.
    let s = send_lines(
        b.addr,
        lines(0, 500),
        0xB2_0001,
        Arc::new(AtomicU64::new(0)),
    )
    .await
    .expect("served");
    assert_eq!(s.records, 500);
    let bs = b.stop().await;
    assert!(bs.dropped_connections >= 1, "{bs:?}");
    l.stop().await;
    let by = read_csv(&csv);
    let rows = &by["00b20001"];
    assert_eq!(rows.len(), 500);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Frames before the HELLO (a previous session's leftovers, as a serial line delivers
/// first) are ignored by the bridge as by a Handshaking server (PROTOCOL.md 9.4.1, 9.4.2):
/// the device's handshake that follows on the same connection is served, and only its
/// records reach the CSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_the_hello_are_ignored_by_the_bridge() {
    use tether_core::frame::{self, Header, Kind};
    use tether_core::link::{Config, Link, LinkStorage, Phase, Role};
    let dir = temp_dir("before-hello");
    let csv = dir.join("out.csv");
    let l = listener(&csv, "tcp://127.0.0.1:0").await;
    let (b, _) = bridge(l.addr).await;
    let at = b.addr;
    let session = 0xB2_00B4;
    let phase = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(at).expect("connects");
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut leftovers = Vec::new();
        for (kind, payload) in [
            (Kind::Data, &b"stale,0"[..]),
            (Kind::Ping, b""),
            (Kind::Close, b""),
        ] {
            let mut out = vec![0u8; frame::max_encoded_len(payload.len())];
            let h = Header {
                kind,
                ..Header::default()
            };
            let n = frame::encode(&h, payload, &mut out).unwrap();
            leftovers.extend_from_slice(&out[..n]);
        }
        sock.write_all(&leftovers).unwrap();
        let start = std::time::Instant::now();
        let now = || tether_core::link::Instant::from_millis(start.elapsed().as_millis() as u64);
        let mut link = Link::new(
            Config::new(Role::Client, session),
            LinkStorage::<8, 4, 128>::new(),
        )
        .unwrap();
        link.connect(now());
        for i in 0..3 {
            link.send(format!("rec,{i}").as_bytes()).unwrap();
        }
        let mut out = vec![0u8; link.transmit_len()];
        let mut buf = [0u8; 4096];
        while start.elapsed() < Duration::from_secs(10) && link.unacked() != 0 {
            while let Some(n) = link.poll_transmit(now(), &mut out) {
                if sock.write_all(&out[..n]).is_err() {
                    return link.phase();
                }
            }
            match sock.read(&mut buf) {
                Ok(0) => return link.phase(),
                Ok(n) => link.handle_input(now(), &buf[..n]),
                Err(_) => {}
            }
            link.handle_timeout(now());
        }
        assert_eq!(link.unacked(), 0, "every record acknowledged");
        link.phase()
    })
    .await
    .expect("device");
    assert_eq!(phase, Phase::Established, "served on the same connection");
    b.stop().await;
    l.stop().await;
    let by = read_csv(&csv);
    let rows: Vec<(u32, String)> = by[&format!("{session:08x}")]
        .iter()
        .map(|(seq, f)| (*seq, f.join(",")))
        .collect();
    let want: Vec<(u32, String)> = (0..3).map(|i| (i, format!("rec,{i}"))).collect();
    assert_eq!(rows, want, "the records once, the leftovers not at all");
    let _ = std::fs::remove_dir_all(&dir);
}
