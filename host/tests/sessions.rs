//! Sessions, resume and limits of `tether listen` and `tether bridge`, over the in-memory
//! transport: no sockets, so these run fast and the same on any machine. Simulated devices
//! (the firmware-sim device model through the seeded fault injector) stream to a `Listener`,
//! directly or through a `Bridge`; the CSV must hold every reading of every device exactly
//! once, in order, intact (`sim::verify`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_core::link::{Config, Instant, Link, LinkStorage, Phase, Role};
use tether_host::bridge::{Bridge, BridgeOptions, BridgeStatus, BridgeSummary};
use tether_host::endpoint::Endpoint;
use tether_host::listen::{ListenOptions, ListenSummary, Listener};
use tether_host::sim::{run, verify, Faults, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp_csv(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-sessions-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("r.csv")
}

/// A listener on `memory://NAME` writing `csv`, serving until the returned sender fires.
async fn serve(
    name: &str,
    csv: &Path,
    tweak: impl FnOnce(&mut ListenOptions),
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<ListenSummary>,
) {
    let mut opts = ListenOptions::new(vec![Endpoint::Memory(name.into())], csv.to_owned());
    tweak(&mut opts);
    let listener = Listener::bind(opts).await.expect("the listener binds");
    until_stopped(|stopped| async move {
        let run = listener.run(stopped).await;
        run.expect("the listener runs and stops cleanly")
    })
}

/// The shutdown a server's `run` is given.
type Stopped = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs `serve` in a task, its shutdown the moment the returned sender fires.
fn until_stopped<T, F>(
    serve: impl FnOnce(Stopped) -> F,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<T>)
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(Box::pin(async {
        let _ = stopped.await;
    })));
    (stop, task)
}

fn devices(name: &str, devices: usize, records: u32, seed: u64, faults: Faults) -> SimOptions {
    SimOptions {
        endpoint: Endpoint::Memory(name.into()),
        devices,
        records,
        faults,
        seed,
        period_ms: 1,
        timeout: Duration::from_secs(120),
        kinds: false,
        max_version: tether_core::link::MAX_PROTOCOL_VERSION,
    }
}

fn assert_exact(csv: &Path, seed: u64, devices: usize, records: u32) {
    let v = verify(csv, seed, devices, records).expect("the CSV reads");
    assert!(v.clean(), "seed {seed}: {v:?}");
    assert_eq!(v.good, devices as u64 * u64::from(records));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_resume_across_cuts_and_damage_and_every_reading_is_written_once() {
    for seed in 1..=4 {
        let name = format!("resume-{seed}");
        let csv = temp_csv(&name);
        let (stop, task) = serve(&name, &csv, |_| {}).await;
        let faults = Faults {
            corrupt: 0.005,
            loss: 0.005,
            cuts: 6,
            split: true,
        };
        let s = run(&devices(&name, 3, 300, seed, faults))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(s.acknowledged, 900);
        assert_eq!(s.cuts, 6, "the cuts happened");
        let _ = stop.send(());
        let summary = task.await.unwrap();
        assert_eq!(summary.devices, 3);
        assert_exact(&csv, seed, 3, 300);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_device_limit_an_idle_session_makes_room_and_every_device_stays_exact() {
    let name = "evict";
    let csv = temp_csv(name);
    let (stop, task) = serve(name, &csv, |o| o.max_devices = 1).await;
    // One device at a time, each a new identity (its own seed): each takes the place of the
    // one before, which is idle with nothing pending.
    for seed in 11..=13 {
        run(&devices(name, 1, 200, seed, Faults::default()))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    let _ = stop.send(());
    let summary = task.await.unwrap();
    assert_eq!(summary.devices, 3, "every device counted, evicted ones too");
    assert_eq!(summary.sessions, 1, "one session kept: --max-devices 1");
    for seed in 11..=13 {
        assert_exact(&csv, seed, 1, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_stopped_and_started_again_mid_stream_on_the_same_csv_is_exact() {
    let name = "restart";
    let csv = temp_csv(name);
    let (stop, task) = serve(name, &csv, |_| {}).await;
    let mut opts = devices(name, 4, 3_000, 21, Faults::default());
    opts.timeout = Duration::from_secs(120);
    let streaming = tokio::spawn(async move { run(&opts).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = stop.send(());
    let first = task.await.unwrap();
    assert!(
        first.records > 0 && first.records < 12_000,
        "stopped mid-stream: {first:?}"
    );
    // The name is free again once the first listener is gone; the devices reconnect.
    let (stop, task) = serve(name, &csv, |_| {}).await;
    let s = streaming.await.unwrap().expect("the devices finish");
    assert_eq!(s.acknowledged, 12_000);
    let _ = stop.send(());
    task.await.unwrap();
    assert_exact(&csv, 21, 4, 3_000);
}

/// A bridge from `memory://DOWN` to the listener at `memory://UP`, serving until the returned
/// sender fires.
async fn bridge(
    down: &str,
    up: &str,
    tweak: impl FnOnce(&mut BridgeOptions),
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<BridgeSummary>,
    BridgeStatus,
) {
    let mut opts = BridgeOptions::new(
        vec![Endpoint::Memory(down.into())],
        Endpoint::Memory(up.into()),
    );
    opts.max_backoff = Duration::from_millis(400);
    tweak(&mut opts);
    let bridge = Bridge::bind(opts).await.expect("the bridge binds");
    let status = bridge.status();
    let (stop, task) = until_stopped(|stopped| async move {
        let run = bridge.run(stopped).await;
        run.expect("the bridge runs and stops cleanly")
    });
    (stop, task, status)
}

/// A device that keeps its link (its session and numbering) across connections, as
/// firmware does, driven by hand.
struct Device {
    link: Link<LinkStorage<8, 4, 128>>,
    start: std::time::Instant,
}

impl Device {
    fn new(session: u32) -> Self {
        Device {
            link: Link::new(Config::new(Role::Client, session), LinkStorage::new()).unwrap(),
            start: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    /// Connects to `memory://AT`, sends `records`, and hangs up once every one is
    /// acknowledged (within 20 s). A connection the server hangs up on (refused: its only
    /// session slot is not free yet, the device before is still being let go) is made
    /// again, as firmware does, and the link resumes.
    async fn deliver(&mut self, at: &str, records: impl IntoIterator<Item = String>) {
        let to = Endpoint::Memory(at.into());
        let mut queue: VecDeque<String> = records.into_iter().collect();
        let mut out = vec![0u8; self.link.transmit_len()];
        let mut buf = [0u8; 4096];
        let t0 = std::time::Instant::now();
        'connection: loop {
            let mut stream = tether_host::transport::connect(&to, Duration::from_secs(5))
                .await
                .expect("connects");
            self.link.connect(self.now());
            while !queue.is_empty() || self.link.unacked() != 0 {
                while let Some(r) = queue.front() {
                    if self.link.send(r.as_bytes()).is_err() {
                        break;
                    }
                    queue.pop_front();
                }
                while let Some(n) = self.link.poll_transmit(self.now(), &mut out) {
                    if stream.write_all(&out[..n]).await.is_err() {
                        break;
                    }
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "delivered in time: {} waiting, {} unacknowledged, {:?}",
                    queue.len(),
                    self.link.unacked(),
                    self.link.phase()
                );
                match tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'connection;
                    }
                    Ok(Ok(n)) => self.link.handle_input(self.now(), &buf[..n]),
                    Err(_) => {}
                }
                self.link.handle_timeout(self.now());
                while self.link.poll_event().is_some() {}
            }
            break;
        }
        assert_eq!(self.link.phase(), Phase::Established);
    }
}

fn texts(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix},{i}")).collect()
}

/// The rows of `device` in `csv`: (seq, fields joined), marker rows with an empty seq.
fn rows_of(csv: &Path, device: u32) -> Vec<(String, String)> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv)
        .expect("the CSV reads");
    let id = format!("{device:08x}");
    r.records()
        .map(|row| row.expect("well-formed CSV"))
        .filter(|row| row.get(1) == Some(id.as_str()))
        .map(|row| {
            let fields: Vec<&str> = row.iter().skip(3).collect();
            (row[2].to_owned(), fields.join(","))
        })
        .collect()
}

/// At `--max-devices` the bridge forgets the session idle longest (it kept one for every
/// device it had seen, about 140 KB each): sessions kept stay at the limit, every device's
/// records are in the CSV once each, and a device that returns after its session was
/// forgotten resumes exactly. Its new upstream link says that its numbering continues, so
/// the listener, which forgot it too, resumes it after its last row instead of writing a
/// "device restarted" marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_device_limit_the_bridge_forgets_an_idle_session_and_a_device_that_returns_resumes()
{
    let (up, down) = ("bridge-evict-up", "bridge-evict-down");
    let csv = temp_csv("bridge-evict");
    let (stop_listener, listener) = serve(up, &csv, |o| o.max_devices = 1).await;
    let (stop_bridge, bridge, status) = bridge(down, up, |o| o.max_devices = 1).await;
    let mut returning = Device::new(0x00A1_0001);
    returning.deliver(down, texts("a", 0..50)).await;
    // New identities, one at a time: each takes the place of the one before.
    for seed in 31..=32 {
        run(&devices(down, 1, 200, seed, Faults::default()))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(status.devices(), 1, "sessions kept at the limit");
    }
    returning.deliver(down, texts("a", 50..100)).await;
    assert_eq!(status.devices(), 1);
    let _ = stop_bridge.send(());
    let summary = bridge.await.unwrap();
    assert_eq!(
        summary.devices, 3,
        "every device counted, forgotten ones too"
    );
    assert_eq!(summary.forwarded, 100 + 2 * 200);
    let _ = stop_listener.send(());
    listener.await.unwrap();
    for seed in 31..=32 {
        assert_exact(&csv, seed, 1, 200);
    }
    let want: Vec<(String, String)> = (0..100)
        .map(|i| (i.to_string(), format!("a,{i}")))
        .collect();
    assert_eq!(
        rows_of(&csv, 0x00A1_0001),
        want,
        "once each, in order, no marker row"
    );
}

/// A new device when every session at the bridge is busy (connected) is refused, and the
/// busy devices carry on exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_device_limit_with_none_idle_the_bridge_refuses_a_new_device() {
    let (up, down) = ("bridge-busy-up", "bridge-busy-down");
    let csv = temp_csv("bridge-busy");
    let (stop_listener, listener) = serve(up, &csv, |_| {}).await;
    let (stop_bridge, bridge, status) = bridge(down, up, |o| o.max_devices = 1).await;
    // One device holds the only session with an open connection.
    let to = Endpoint::Memory(down.into());
    let mut busy = Device::new(0x00B5_0001);
    busy.deliver(down, texts("b", 0..10)).await;
    let mut held = tether_host::transport::connect(&to, Duration::from_secs(5))
        .await
        .unwrap();
    busy.link.connect(busy.now());
    let mut out = vec![0u8; busy.link.transmit_len()];
    while let Some(n) = busy.link.poll_transmit(busy.now(), &mut out) {
        held.write_all(&out[..n]).await.unwrap();
    }
    // Its connection is bound before the newcomer's HELLO arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut newcomer = tether_host::transport::connect(&to, Duration::from_secs(5))
        .await
        .unwrap();
    let mut other = Device::new(0x00B5_0002);
    other.link.connect(other.now());
    while let Some(n) = other.link.poll_transmit(other.now(), &mut out) {
        newcomer.write_all(&out[..n]).await.unwrap();
    }
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), newcomer.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the newcomer is hung up on: {closed:?}"
    );
    assert_eq!(status.devices(), 1);
    drop(held);
    let _ = stop_bridge.send(());
    let summary = bridge.await.unwrap();
    assert_eq!(summary.devices, 1);
    assert!(summary.dropped_connections >= 1, "{summary:?}");
    let _ = stop_listener.send(());
    listener.await.unwrap();
    assert_eq!(rows_of(&csv, 0x00B5_0001).len(), 10);
    assert!(rows_of(&csv, 0x00B5_0002).is_empty());
}
