//! The README's main job, `tether demo`, as a library call: simulated devices (the
//! firmware-sim model) stream to a listener on 127.0.0.1 and obey commands; the CSV holds
//! every acknowledged record of each device once, in order.

use tether_host::demo::{run, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_streams_commands_and_leaves_an_exact_csv() {
    let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("demo.csv");
    let opts = DemoOptions {
        devices: 3,
        seconds: 1.5,
        csv: csv.clone(),
        period_ms: 2,
        http: None,
    };
    let s = run(&opts)
        .await
        .expect("the demo runs and its CSV checks out");
    assert_eq!(s.rows_per_device.len(), 3);
    for (device, rows) in &s.rows_per_device {
        assert!(*rows > 50, "device {device} wrote only {rows} rows");
    }
    assert_eq!(
        s.commands_applied, 6,
        "status and output on, to each device"
    );
    let total: u64 = s.rows_per_device.iter().map(|(_, n)| n).sum();
    assert_eq!(total, s.listener.records);
    // The status replies are real columns.
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.lines().filter(|l| l.contains(",status,")).count() == 3,
        "one status reply per device"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
