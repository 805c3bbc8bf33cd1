//! Sessions, resume and limits of `tether listen`, over the in-memory transport: no sockets,
//! so these run fast and the same on any machine. Simulated devices (the firmware-sim device
//! model through the seeded fault injector) stream to a `Listener`; the CSV must hold every
//! reading of every device exactly once, in order, intact (`sim::verify`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_host::endpoint::Endpoint;
use tether_host::listen::{ListenOptions, ListenSummary, Listener};
use tether_host::sim::{run, verify, Faults, SimOptions};

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
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        listener
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("the listener runs and stops cleanly")
    });
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
