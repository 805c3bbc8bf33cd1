//! `tether-bench` keeps working: every measurement runs at a small volume through the real
//! binary and checks its own results (every record in the CSV exactly once, every device's
//! records, all bytes delivered). Figures are printed, never asserted: speed is measured by
//! `scripts/bench.sh`, not by tests.

use tether_bench::{self as bench, BenchOptions};

#[test]
fn every_measurement_runs_and_checks_its_results() {
    let dir = std::env::temp_dir().join(format!("tether-bench-test-{}", std::process::id()));
    let mut opts = BenchOptions::new(tether_binary(), dir.clone());
    opts.bulk_bytes = 8 << 20;
    opts.small_records = 20_000;
    opts.stop_and_wait_records = 300;
    opts.round_trips = 200;
    opts.devices = 50;
    opts.sweep_records = 20_000;
    opts.dashboard_readings = 100;
    opts.tutorial = false;
    // The probe this package's binary runs under callgrind (a debug build: its count is
    // not the figure, only that it is measured).
    opts.probe = Some(env!("CARGO_BIN_EXE_tether-bench").into());
    opts.instr_records = (500, 2_500);
    let rows = bench::run(&opts).expect("every measurement completes and checks out");
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    for want in [
        "bulk",
        "16-byte records into CSV",
        "at the defaults",
        "1000 devices at full rate",
        "stop-and-wait",
        "round trip",
        "memory",
        "page open",
        "instructions a 16-byte record",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no `{want}` row in {names:?}"
        );
    }
    for r in &rows {
        // Only the instruction count may be missing, when valgrind is not installed.
        let skipped = r.note.starts_with("not measured: valgrind not found");
        assert!((r.value.is_finite() && r.value >= 0.0) || skipped, "{r:?}");
    }
    println!("{}", bench::table(&rows));
    let report = bench::report(&rows, "test", "scripts/bench.sh --quick", "now");
    assert!(report.contains("| measurement |") && report.contains("Targets met in this run"));
    let json: serde_json::Value =
        serde_json::from_str(&bench::json(&rows, &bench::machine())).expect("valid JSON");
    assert_eq!(json["results"].as_array().map(Vec::len), Some(rows.len()));
}

/// The `tether` binary of this build: `TETHER_BIN`, or `tether` in the directory above this
/// test's (`target/debug/deps/..`), which `cargo test --workspace` builds before any test runs.
fn tether_binary() -> std::path::PathBuf {
    let path = std::env::var_os("TETHER_BIN")
        .map(Into::into)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("the test's own path");
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("target/debug")
                .join("tether")
        });
    assert!(
        path.is_file(),
        "no tether binary at {} (cargo build -p tether-host, or set TETHER_BIN)",
        path.display()
    );
    path
}
