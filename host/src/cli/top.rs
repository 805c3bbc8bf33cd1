//! `tether top URL`: a running dashboard in the terminal (see `tether_host::top`).

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_host::top::{render, Dashboard, Rates, Readings};

use super::{shutdown_signal, CliError};

#[derive(Debug, clap::Args)]
pub(super) struct TopArgs {
    /// The dashboard of a running `tether listen|bridge|demo --http`, e.g.
    /// http://127.0.0.1:8080 (over SSH: run it on the Pi, or tunnel the port).
    url: String,
    /// The file holding the dashboard's token, if it requires one (--http-token-file).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The device whose readings are drawn (hex, as in the CSV); default: the first.
    #[arg(long)]
    device: Option<String>,
    /// Milliseconds between two frames.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Print one frame and exit (what it does when standard output is not a terminal).
    #[arg(long)]
    once: bool,
}

pub(super) async fn top(args: TopArgs) -> Result<ExitCode, CliError> {
    let dashboard = Dashboard::new(&args.url, args.token_file.as_deref())?;
    // The first answer decides whether it can start (exit 2 if not).
    let first = {
        let d = dashboard.clone();
        tokio::task::spawn_blocking(move || d.devices())
            .await
            .map_err(|e| CliError::Task(e.to_string()))??
    };
    let device = args
        .device
        .clone()
        .or_else(|| first["devices"][0]["id"].as_str().map(str::to_owned));
    let readings = Arc::new(Mutex::new(Readings::default()));
    if let Some(id) = &device {
        dashboard.follow(id.clone(), readings.clone());
    }
    let live = io::stdout().is_terminal() && !args.once;
    let stop = Arc::new(AtomicBool::new(false));
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let drawing = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            draw(
                &dashboard,
                device.as_deref(),
                &readings,
                live,
                interval,
                &stop,
            )
        })
    };
    let shutdown = shutdown_signal();
    tokio::pin!(drawing);
    let result = tokio::select! {
        r = &mut drawing => r,
        _ = shutdown => {
            stop.store(true, Ordering::Relaxed);
            drawing.await
        }
    };
    result
        .map_err(|e| CliError::Task(e.to_string()))?
        .map(|()| ExitCode::SUCCESS)
}

/// Draws frames until `stop` (one frame unless `live`).
fn draw(
    dashboard: &Dashboard,
    device: Option<&str>,
    readings: &Mutex<Readings>,
    live: bool,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<(), CliError> {
    let mut rates = Rates::default();
    let mut out = io::stdout();
    let write_err = CliError::Write;
    if !live {
        // Readings take a moment to arrive: give them one interval.
        std::thread::sleep(interval.min(Duration::from_secs(2)));
        let api = dashboard.devices()?;
        rates.add(&api);
        let guard = readings.lock().unwrap_or_else(|e| e.into_inner());
        let frame = render(&api, &rates, device.map(|d| (d, &*guard)), width());
        return out.write_all(frame.as_bytes()).map_err(write_err);
    }
    // The alternate screen, cursor hidden, given back at the end (Ctrl-C included).
    out.write_all(b"\x1b[?1049h\x1b[?25l").map_err(write_err)?;
    let result = (|| {
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let w = width();
            let frame = match dashboard.devices() {
                Ok(api) => {
                    rates.add(&api);
                    let guard = readings.lock().unwrap_or_else(|e| e.into_inner());
                    render(&api, &rates, device.map(|d| (d, &*guard)), w)
                }
                Err(e) => format!("{e}\n(trying again)\n"),
            };
            let mut screen = String::from("\x1b[H\x1b[2J");
            for line in frame.lines() {
                screen.extend(line.chars().take(w));
                screen.push_str("\r\n");
            }
            out.write_all(screen.as_bytes()).map_err(write_err)?;
            out.flush().map_err(write_err)?;
            while started.elapsed() < interval && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    })();
    let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
    let _ = out.flush();
    result
}

/// The terminal's width: $COLUMNS, else what `stty size` says of the terminal, else 120.
fn width() -> usize {
    if let Some(c) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return c;
    }
    let asked = std::fs::File::open("/dev/tty").ok().and_then(|tty| {
        let out = std::process::Command::new("stty")
            .arg("size")
            .stdin(tty)
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    });
    asked.unwrap_or(120)
}
