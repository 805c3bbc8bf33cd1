//! The README's main job, `tether demo`, as a library call: simulated devices (the
//! firmware-sim model) stream to a listener on 127.0.0.1 and obey commands; the CSV files
//! hold every acknowledged record of each device once, their columns named by the kinds
//! the devices declare (or, with one `--csv` file, `field_N`).

use std::path::Path;

use tether_host::demo::{run, DemoOptions, DemoOutput, DemoSummary};

async fn demo(output: DemoOutput) -> DemoSummary {
    let opts = DemoOptions {
        devices: 3,
        seconds: 1.5,
        output,
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
    s
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_writes_a_file_per_kind_with_named_columns_and_every_record_once() {
    let dir = scratch("dir");
    let out = dir.join("demo");
    let s = demo(DemoOutput::Dir(out.clone())).await;
    let env = lines(&out.join("env.csv"));
    assert_eq!(
        env[0],
        "host_time,device,session,seq,counter,time (ms),temperature (°C),pressure (hPa),output"
    );
    let status = lines(&out.join("status.csv"));
    assert_eq!(
        status[0],
        "host_time,device,session,seq,period (ms),output,readings,retransmissions"
    );
    assert_eq!(
        status.len(),
        1 + 3,
        "one status reply per device: {status:?}"
    );
    // Every device declared its three kinds once; everything else is a reading.
    let kinds = lines(&out.join("tether-kinds.csv"));
    assert_eq!(kinds.len(), 1 + 3 * 3, "{kinds:?}");
    let readings: u64 = s.rows_per_device.iter().map(|(_, n)| n - 3 - 1).sum();
    assert_eq!(env.len() as u64 - 1, readings);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_csv_file_the_devices_declare_nothing_and_the_columns_are_numbered() {
    let dir = scratch("file");
    let csv = dir.join("demo.csv");
    demo(DemoOutput::File(csv.clone())).await;
    let text = lines(&csv);
    assert_eq!(
        text[0],
        "host_time,device,seq,field_1,field_2,field_3,field_4,field_5"
    );
    // The status replies are real columns.
    assert!(
        text.iter().filter(|l| l.contains(",status,")).count() == 3,
        "one status reply per device"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
