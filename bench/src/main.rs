//! `tether-bench`: measures the `tether` binary against raw TCP and the tutorial, on loopback,
//! in one run, and writes the table, JSON and a Markdown report. See the crate docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tether_bench::{self as bench, BenchOptions};

/// Measure Tether against raw TCP and the tutorial, on loopback, in one run.
///
/// Raw TCP vs bulk records; 16-byte records into CSV (tether send → tether listen, every
/// record checked); stop-and-wait (window 1) vs the tutorial's own Python server; one record's
/// round trip vs a raw TCP ping-pong; the listener's memory with 100 to 10,000 idle devices;
/// the instructions a record under callgrind (valgrind). Prints a
/// table; --json and --report write it to files too. Build both binaries with --release
/// first (scripts/bench.sh does).
///
/// Example: tether-bench --json bench.json --report docs/performance.md
#[derive(Debug, Parser)]
#[command(name = "tether-bench", version)]
struct Args {
    /// The `tether` binary to measure (default: the one beside this program).
    #[arg(long)]
    tether: Option<PathBuf>,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the results as a Markdown report to this file too.
    #[arg(long)]
    report: Option<PathBuf>,
    /// A tenth of the volumes: a quick check, not figures to quote.
    #[arg(long)]
    quick: bool,
    /// Concurrent devices for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Skip the tutorial's Python server even if python3 is there.
    #[arg(long)]
    no_tutorial: bool,
    /// Only these measurements: bulk, small, defaults, devices, stop-and-wait, round-trip,
    /// memory, dashboard, instructions (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(bench::SECTIONS))]
    only: Vec<String>,
    /// The last committed results (JSON) to compare with: a figure worse by more than 25 %
    /// is flagged in the report (the regression guard). scripts/bench.sh gives
    /// docs/bench.json.
    #[arg(long)]
    previous: Option<PathBuf>,
    /// Write the cost curves (SVG) into this directory, beside the report.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Payload of a bulk record, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    bulk_payload: usize,
    /// Scratch directory for CSV and input files (default: a new one under the system's
    /// temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Internal: push this many records through the in-memory instruction probe and exit
    /// (the instructions section runs it under callgrind).
    #[arg(long, hide = true)]
    instr_probe: Option<u64>,
    /// Internal: the protocol version of --instr-probe.
    #[arg(long, hide = true, default_value_t = 1)]
    instr_version: u8,
}

/// A figure worse than the previous run's by more than this factor is flagged.
const GUARD_TOLERANCE: f64 = 1.25;

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if let Some(records) = args.instr_probe {
        let dir = args.dir.unwrap_or_else(std::env::temp_dir);
        bench::instr::probe(records, args.instr_version, &dir).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let exe = match args.tether {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's path: {e}"))?
            .with_file_name("tether"),
    };
    if !exe.is_file() {
        return Err(format!(
            "no tether binary at {} (build it: cargo build --release -p tether-host, or give --tether)",
            exe.display()
        ));
    }
    // The options that change what is measured, for the report's first line.
    let mut command = String::from("scripts/bench.sh");
    if args.quick {
        command.push_str(" --quick");
    }
    if !args.only.is_empty() {
        command.push_str(&format!(" --only {}", args.only.join(",")));
    }
    if args.devices != 10_000 {
        command.push_str(&format!(" --devices {}", args.devices));
    }
    if args.no_tutorial {
        command.push_str(" --no-tutorial");
    }
    if args.bulk_payload != 16 * 1024 {
        command.push_str(&format!(" --bulk-payload {}", args.bulk_payload));
    }
    let scratch = args.dir.is_none();
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tether-bench-{}", std::process::id()))
    });
    let mut opts = BenchOptions::new(exe, dir.clone());
    if args.quick {
        opts = opts.quick();
    }
    opts.devices = args.devices;
    opts.tutorial = !args.no_tutorial;
    opts.only = args.only;
    opts.probe = std::env::current_exe().ok();
    opts.bulk_payload = args.bulk_payload.clamp(1, tether_core::frame::MAX_PAYLOAD);
    // Read before this run may overwrite it (--json docs/bench.json).
    let previous = match &args.previous {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the previous results {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let machine = bench::machine();
    eprintln!("bench: {machine}");
    let result = bench::run(&opts);
    if scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let rows = result.map_err(|e| e.to_string())?;
    println!("Machine: {machine}\n");
    print!("{}", bench::table(&rows));
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let now_json = bench::json(&rows, &machine);
    let mut extra = String::new();
    if let Some(dir) = &args.plots {
        for (name, svg) in bench::plots(&rows) {
            write(&dir.join(name), svg)?;
            extra.push_str(&format!("\n![{name}]({name})\n"));
        }
    }
    if let (Some(before), Some(path)) = (&previous, &args.previous) {
        let checks = bench::guard::compare(before, &now_json, GUARD_TOLERANCE)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let section = bench::guard::markdown(&checks, GUARD_TOLERANCE, &path.display().to_string());
        eprint!("\n{section}");
        extra.push('\n');
        extra.push_str(&section);
    }
    if let Some(path) = &args.json {
        write(path, now_json)?;
    }
    if let Some(path) = &args.report {
        let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        write(
            path,
            bench::report(&rows, &machine, &command, &when) + &extra,
        )?;
    }
    Ok(())
}
