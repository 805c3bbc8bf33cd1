//! `tether demo`: a listener and simulated devices on loopback, checked.

use std::path::PathBuf;
use std::process::ExitCode;

use super::http::HttpArgs;
use super::{shutdown_signal, CliError};

#[derive(Debug, clap::Args)]
pub(super) struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 4)]
    devices: usize,
    /// Seconds the devices stream (default 5; with --http, until Ctrl-C).
    #[arg(long)]
    seconds: Option<f64>,
    /// The directory to write (replaced if it exists): one CSV file per record kind the
    /// devices declare, its columns named (env.csv: host_time,device,session,seq,counter,
    /// time (ms),temperature (°C),pressure (Pa),status), as `tether listen --csv-dir`.
    #[arg(long, value_name = "DIR", default_value = "tether-demo")]
    csv_dir: PathBuf,
    /// One CSV file instead (replaced if it exists), as `tether listen --csv`: the devices
    /// declare no kinds, the columns are field_1, field_2, ….
    #[arg(long, value_name = "FILE", conflicts_with = "csv_dir")]
    csv: Option<PathBuf>,
    /// Milliseconds between a device's readings.
    #[arg(long, default_value_t = 1)]
    period_ms: u32,
    #[command(flatten)]
    http: HttpArgs,
}

pub(super) async fn demo(args: DemoArgs) -> Result<ExitCode, CliError> {
    let http = args.http.options();
    // With a dashboard, a person watches: stream until Ctrl-C unless told how long.
    let default_seconds = if http.is_some() { f64::INFINITY } else { 5.0 };
    let opts = tether_host::demo::DemoOptions {
        devices: args.devices,
        seconds: args.seconds.unwrap_or(default_seconds),
        output: match args.csv {
            Some(file) => tether_host::demo::DemoOutput::File(file),
            None => tether_host::demo::DemoOutput::Dir(args.csv_dir),
        },
        period_ms: args.period_ms.max(1),
        http,
    };
    let s = tether_host::demo::run_until(&opts, shutdown_signal()).await?;
    let rows: u64 = s.rows_per_device.iter().map(|(_, n)| n).sum();
    println!(
        "tether demo: {} devices streamed for {:.1} s over TCP on 127.0.0.1",
        s.rows_per_device.len(),
        s.seconds
    );
    println!(
        "  records written and acknowledged: {rows} ({:.0} records/s)",
        rows as f64 / s.seconds.max(1e-3)
    );
    println!(
        "  checked: each device's rows are exactly the records it had acknowledged, once each, in order (no gap, no repeat, nothing else)"
    );
    for (device, n) in &s.rows_per_device {
        println!("    device {device}: {n} rows");
    }
    println!("  commands acted on by the devices: {}", s.commands_applied);
    println!(
        "  retransmissions: {} by the devices, {} by the listener",
        s.device_retransmissions, s.listener.retransmissions
    );
    match &opts.output {
        tether_host::demo::DemoOutput::File(file) => println!("  CSV: {}", file.display()),
        tether_host::demo::DemoOutput::Dir(dir) => {
            println!("  CSV files, one per record kind: {}/", dir.display())
        }
    }
    Ok(ExitCode::SUCCESS)
}
