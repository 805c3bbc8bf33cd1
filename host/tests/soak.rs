//! The hostile-link soak, scaled down to seconds: simulated devices stream through 1 %
//! corrupted bytes, 1 % lost frames, random splits and connection cuts to a real listener on
//! 127.0.0.1, for several seeds; the CSV must hold every reading exactly once, in order,
//! intact. The full soak is a documented command (README, "Soak").

use std::time::Duration;

use tether_host::endpoint::Endpoint;
use tether_host::listen::{ListenOptions, Listener};
use tether_host::sim::{run, verify, Faults, SimOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_link_soak_loses_duplicates_reorders_and_corrupts_nothing() {
    let seeds: u64 = std::env::var("TETHER_SOAK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    for seed in 1..=seeds {
        let dir = std::env::temp_dir().join(format!("tether-soak-{}-{seed}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("soak.csv");
        let _ = std::fs::remove_file(&csv);
        let listener = Listener::bind(ListenOptions::new(
            vec!["tcp://127.0.0.1:0".parse().unwrap()],
            csv.clone(),
        ))
        .await
        .unwrap();
        let addr = listener.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(listener.run(async {
            let _ = stopped.await;
        }));
        let opts = SimOptions {
            endpoint: Endpoint::Tcp(addr),
            devices: 3,
            records: 200,
            faults: Faults {
                corrupt: 0.01,
                loss: 0.01,
                cuts: 4,
                split: true,
            },
            seed,
            period_ms: 1,
            timeout: Duration::from_secs(120),
            kinds: false,
            max_version: tether_core::link::MAX_PROTOCOL_VERSION,
        };
        let s = run(&opts)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(s.acknowledged, 600, "seed {seed}");
        assert_eq!(s.cuts, 4, "seed {seed}: the cuts happened");
        assert!(
            s.corrupted_bytes > 0 && s.lost > 0,
            "seed {seed}: the faults happened: {s:?}"
        );
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        let v = verify(&csv, seed, 3, 200).unwrap();
        assert!(
            v.clean(),
            "seed {seed}: {v:?} (replay: tether sim --seed {seed})"
        );
        assert_eq!(v.good, 600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
