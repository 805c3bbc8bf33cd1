//! `tether sim`: simulated devices through a fault injector, and the CSV check.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tether_host::endpoint::Endpoint;

use super::CliError;

#[derive(Debug, clap::Args)]
pub(super) struct SimArgs {
    /// The listener, e.g. tcp://127.0.0.1:5003.
    endpoint: Endpoint,
    /// Simulated devices.
    #[arg(long, default_value_t = 4)]
    devices: usize,
    /// Readings each device sends.
    #[arg(long, default_value_t = 1000, conflicts_with = "replay")]
    records: u32,
    /// Replay a recorded device instead of the simulated sensor: a directory written by
    /// `tether listen --csv-dir` (its declarations, then its records of those kinds, typed
    /// as declared, and its text records), a JSON lines file written by --sink jsonl:FILE
    /// (the same; a file whose first character is `{`), or a single --csv file (each row
    /// sent as a text line: no types). Each of --devices sends the whole stream under its
    /// own identity, at the recorded pace (see --speed), through --faults.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["verify", "kinds", "period_ms"])]
    replay: Option<PathBuf>,
    /// With --replay: the recorded device to replay (its id, 8 hex digits); by default the
    /// first in tether-kinds.csv (else in tether-records.csv), or the first line's or row's.
    #[arg(long, value_name = "ID", requires = "replay")]
    device: Option<String>,
    /// With --replay: 1 replays at the recorded pace, 10 ten times faster, max as fast as
    /// the link allows.
    #[arg(long, default_value = "1", requires = "replay")]
    speed: tether_host::sim::replay::Speed,
    /// Faults, e.g. corrupt=0.01,loss=0.01,cuts=20 (split is on unless split=off).
    #[arg(long, default_value = "")]
    faults: tether_host::sim::Faults,
    /// Seeds the devices and the faults: same seed, same faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Milliseconds between a device's readings.
    #[arg(long, default_value_t = 1)]
    period_ms: u32,
    /// The listener's CSV, to check afterwards.
    #[arg(long)]
    verify: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The devices declare their record kinds first (env: counter, time ms, temperature °C,
    /// pressure hPa, output; status; error), so that a sink names their fields
    /// (--csv-dir, MQTT, PostgreSQL); --verify checks a --csv file of devices without.
    #[arg(long, conflicts_with = "verify")]
    kinds: bool,
    /// The highest protocol version the devices offer (PROTOCOL.md 11.2): 2 by default, 1
    /// for version 1 only.
    #[arg(long, default_value_t = tether_core::link::MAX_PROTOCOL_VERSION,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(tether_core::link::MAX_PROTOCOL_VERSION)))]
    max_version: u8,
}

pub(super) async fn sim(args: SimArgs) -> Result<ExitCode, CliError> {
    if let Some(path) = &args.replay {
        return replay(&args, path).await;
    }
    let opts = tether_host::sim::SimOptions {
        endpoint: args.endpoint,
        devices: args.devices.max(1),
        records: args.records,
        faults: args.faults,
        seed: args.seed,
        period_ms: args.period_ms.max(1),
        timeout: Duration::from_secs(args.timeout),
        kinds: args.kinds,
        max_version: args.max_version,
    };
    opts.endpoint
        .check_dialable()
        .map_err(|e| CliError::Sim(e.to_string()))?;
    // Started, the devices either finish or fail: a failure then is exit 1, not a usage error.
    let s = match tether_host::sim::run(&opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tether: sim: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "tether sim: {} devices, {} readings acknowledged in {:.1} s ({:.0}/s)",
        opts.devices,
        s.acknowledged,
        s.seconds,
        s.acknowledged as f64 / s.seconds.max(1e-3)
    );
    println!(
        "  faults: {} corrupted bytes, {} lost frames/reads, {} cuts; {} retransmissions",
        s.corrupted_bytes, s.lost, s.cuts, s.retransmissions
    );
    let Some(csv) = &args.verify else {
        return Ok(ExitCode::SUCCESS);
    };
    // Every reading was acknowledged, and the listener acknowledges only what it has
    // written and flushed: the CSV holds them all now.
    let v = tether_host::sim::verify(csv, opts.seed, opts.devices, opts.records)
        .map_err(CliError::Sim)?;
    println!(
        "  verify {}: {} of {} readings exactly once, in order, intact; {} lost, {} duplicated, {} reordered, {} corrupted",
        csv.display(),
        v.good,
        v.expected,
        v.lost,
        v.duplicated,
        v.reordered,
        v.corrupted
    );
    if v.clean() {
        println!("  verdict: PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("  verdict: FAIL");
        Ok(ExitCode::FAILURE)
    }
}

async fn replay(args: &SimArgs, path: &std::path::Path) -> Result<ExitCode, CliError> {
    use tether_host::sim::replay::{ReplayOptions, Stream};
    let stream =
        Stream::load(path, args.device.as_deref()).map_err(|e| CliError::Sim(e.to_string()))?;
    let opts = ReplayOptions {
        endpoint: args.endpoint.clone(),
        devices: args.devices.max(1),
        faults: args.faults,
        seed: args.seed,
        speed: args.speed,
        timeout: Duration::from_secs(args.timeout),
        max_version: args.max_version,
    };
    opts.endpoint
        .check_dialable()
        .map_err(|e| CliError::Sim(e.to_string()))?;
    let records = stream.records.len();
    let device = stream.device.clone();
    let s = match tether_host::sim::replay::run(&opts, std::sync::Arc::new(stream)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tether: sim: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "tether sim: replayed device {device} ({records} records) as {} devices, {} records acknowledged in {:.1} s ({:.0}/s)",
        opts.devices,
        s.acknowledged,
        s.seconds,
        s.acknowledged as f64 / s.seconds.max(1e-3)
    );
    println!(
        "  faults: {} corrupted bytes, {} lost frames/reads, {} cuts; {} retransmissions",
        s.corrupted_bytes, s.lost, s.cuts, s.retransmissions
    );
    Ok(ExitCode::SUCCESS)
}
