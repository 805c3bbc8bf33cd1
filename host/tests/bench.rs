//! `tether bench` keeps working: every measurement runs at a small volume through the real
//! binary and checks its own results (every record in the CSV exactly once, every device's
//! records, all bytes delivered). Figures are printed, never asserted: speed is measured by
//! `scripts/bench.sh`, not by tests.

use tether_host::bench::{self, BenchOptions};

#[test]
fn every_measurement_runs_and_checks_its_results() {
    let dir = std::env::temp_dir().join(format!("tether-bench-test-{}", std::process::id()));
    let mut opts = BenchOptions::new(env!("CARGO_BIN_EXE_tether").into(), dir.clone());
    opts.bulk_bytes = 8 << 20;
    opts.small_records = 20_000;
    opts.stop_and_wait_records = 300;
    opts.round_trips = 200;
    opts.devices = 50;
    opts.tutorial = false;
    let rows = bench::run(&opts).expect("every measurement completes and checks out");
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    for want in [
        "bulk",
        "16-byte records into CSV",
        "stop-and-wait",
        "round trip",
        "memory",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no `{want}` row in {names:?}"
        );
    }
    for r in &rows {
        assert!(r.value.is_finite() && r.value >= 0.0, "{r:?}");
    }
    println!("{}", bench::table(&rows));
    let json: serde_json::Value =
        serde_json::from_str(&bench::json(&rows, &bench::machine())).expect("valid JSON");
    assert_eq!(json["results"].as_array().map(Vec::len), Some(rows.len()));
}
