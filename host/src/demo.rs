//! `tether demo`: a listener on loopback and simulated devices (the firmware-sim device
//! model, the same code firmware runs) streaming readings to it over TCP and answering
//! commands; at the end the CSV is checked and a summary printed. With a dashboard
//! ([`DemoOptions::http`]) it streams until stopped, for a person to watch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_core::link::LinkStorage;
use tether_firmware_sim::device::{Device, DeviceConfig, DeviceStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::clock::Clock;
use crate::endpoint::Endpoint;
use crate::listen::{ListenError, ListenOptions, ListenSummary, Listener};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated devices.
    pub devices: usize,
    /// How long they stream (infinite: until [`run_until`]'s stop).
    pub seconds: f64,
    /// Where the records go (replaced if it exists: it is a demo).
    pub output: DemoOutput,
    /// Milliseconds between a device's readings.
    pub period_ms: u32,
    /// Serve the dashboard (`crate::http`) of the demo's listener.
    pub http: Option<crate::http::HttpOptions>,
}

/// Where the demo writes.
#[derive(Debug, Clone)]
pub enum DemoOutput {
    /// A directory of CSV files, one per record kind, columns named (`--csv-dir`): the
    /// devices declare their kinds (`PROTOCOL.md` 10.5).
    Dir(PathBuf),
    /// One CSV file (`--csv`): the devices declare nothing, columns `field_1`, ….
    File(PathBuf),
}

impl DemoOutput {
    /// The file or directory.
    pub fn path(&self) -> &std::path::Path {
        match self {
            DemoOutput::Dir(p) | DemoOutput::File(p) => p,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The listener's account.
    pub listener: ListenSummary,
    /// Seconds the devices streamed.
    pub seconds: f64,
    /// Rows in the CSV, per device, each device's sequence numbers checked to run 0, 1, 2…
    /// without a gap or a repeat, and their number checked to equal the readings the device
    /// had acknowledged.
    pub rows_per_device: Vec<(String, u64)>,
    /// Retransmissions by the devices.
    pub device_retransmissions: u64,
    /// Commands the devices acted on (`status` and `output on` to each).
    pub commands_applied: u64,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The listener failed.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The CSV does not hold what was acknowledged.
    #[error("CSV check failed: {0}")]
    Check(String),
    /// The dashboard could not start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// A file could not be handled.
    #[error("{0}")]
    Io(String),
}

type DemoDevice = Device<LinkStorage<16, 16, 128>>;

/// Runs one simulated device against `addr` until `stop`; returns its statistics and its
/// link's retransmissions.
async fn run_device(
    index: usize,
    addr: std::net::SocketAddr,
    period_ms: u32,
    declare_kinds: bool,
    stop: Arc<AtomicBool>,
) -> Result<DeviceRun, String> {
    let session = demo_session(index);
    let mut cfg = DeviceConfig::new(session, index as u64 + 1);
    cfg.period_ms = period_ms;
    cfg.declare_kinds = declare_kinds;
    cfg.link.max_version = tether_core::link::MAX_PROTOCOL_VERSION;
    let mut device = DemoDevice::new(cfg, LinkStorage::new())
        .map_err(|e| format!("device {session:08x} cannot start: {e}"))?;
    let clock = Clock::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut frame = vec![0u8; device.link().transmit_len()];
    let mut out = Vec::with_capacity(16 * 1024);
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        if device.transport_up(clock.now()).is_err() {
            break;
        }
        while !stop.load(Ordering::Relaxed) {
            let now = clock.now();
            device.poll(now);
            while let Some(n) = device.poll_transmit(now, &mut frame) {
                out.extend_from_slice(&frame[..n]);
            }
            if !out.is_empty() {
                if stream.write_all(&out).await.is_err() {
                    break;
                }
                out.clear();
            }
            let deadline = device.poll_timeout().map(|d| clock.instant(d));
            tokio::select! {
                r = stream.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => device.handle_input(clock.now(), &buf[..n]),
                },
                _ = async { match deadline { Some(t) => tokio::time::sleep_until(t).await, None => tokio::time::sleep(Duration::from_millis(100)).await } } => {}
            }
            if device.needs_transport() {
                break;
            }
        }
        if stop.load(Ordering::Relaxed) {
            // The listener has stopped: what it acknowledged last may still be in this
            // socket, unread. Take it (up to the listener's close, 2 s at most), so that the
            // records the device counts as acknowledged are all the listener acknowledged.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                device.handle_input(clock.now(), &buf[..n]);
            }
        }
        device.transport_down();
        debug!("device {session:08x} lost its connection");
    }
    let stats = device.stats();
    // Declarations, readings and replies are records of one numbering from 0.
    let sent = stats.records();
    Ok(DeviceRun {
        session,
        acknowledged: u64::from(sent.wrapping_sub(device.link().unacked())),
        stats,
        retransmissions: device.link().stats().retransmissions,
    })
}

/// Device `index`'s session: values in a recognisable range, as the CSV's device column.
fn demo_session(index: usize) -> u32 {
    0xD0_0000 + index as u32 + 1
}

/// What one simulated device did.
struct DeviceRun {
    session: u32,
    /// Its records (readings and replies) the listener acknowledged.
    acknowledged: u64,
    stats: DeviceStats,
    retransmissions: u32,
}

/// Runs the demo for `opts.seconds`.
pub async fn run(opts: &DemoOptions) -> Result<DemoSummary, DemoError> {
    run_until(opts, std::future::pending()).await
}

/// Runs the demo for `opts.seconds` or until `stop` completes, whichever comes first.
pub async fn run_until(
    opts: &DemoOptions,
    stop_early: impl std::future::Future<Output = ()>,
) -> Result<DemoSummary, DemoError> {
    let path = opts.output.path();
    let gone = match &opts.output {
        DemoOutput::File(p) => std::fs::remove_file(p),
        DemoOutput::Dir(p) => std::fs::remove_dir_all(p),
    };
    match gone {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(DemoError::Io(format!(
                "cannot replace {}: {e}",
                path.display()
            )))
        }
    }
    let endpoint = Endpoint::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut listen = ListenOptions::new(vec![endpoint], path.to_owned());
    if let DemoOutput::Dir(dir) = &opts.output {
        listen.sink = Some(crate::sink::Destination::CsvDir(dir.clone()));
    }
    let listener = Listener::bind(listen).await?;
    let addr = listener.local_addrs()[0];
    info!("listener on tcp://{addr}, writing {}", path.display());
    let dashboard = match &opts.http {
        Some(http) => {
            let title = format!("tether demo: {} simulated devices", opts.devices);
            let d = crate::http::start(http, listener.observer(), title).await?;
            info!("dashboard on {}", d.url());
            Some(d)
        }
        None => None,
    };
    let commands = listener.commands();
    let (stop_listener, stopped) = tokio::sync::oneshot::channel::<()>();
    let listening = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let devices: Vec<_> = (0..opts.devices)
        .map(|i| {
            let declare = matches!(opts.output, DemoOutput::Dir(_));
            tokio::spawn(run_device(i, addr, opts.period_ms, declare, stop.clone()))
        })
        .collect();
    info!(
        "{} simulated devices streaming a reading every {} ms",
        opts.devices, opts.period_ms
    );
    // A third of the way in (at most 10 s), command every device: ask for its status,
    // switch its output.
    let started = std::time::Instant::now();
    let total = (opts.seconds.is_finite()).then(|| Duration::from_secs_f64(opts.seconds.max(0.1)));
    let commanding = total.map_or(Duration::from_secs(10), |t| {
        (t / 3).min(Duration::from_secs(10))
    });
    tokio::pin!(stop_early);
    let stopped_early = tokio::select! {
        _ = tokio::time::sleep(commanding) => false,
        _ = &mut stop_early => true,
    };
    if !stopped_early {
        for cmd in [&b"status"[..], b"output on"] {
            let n = commands.send(None, cmd);
            info!(
                "command `{}` sent to {n} devices",
                String::from_utf8_lossy(cmd)
            );
        }
        let rest = async {
            match total {
                Some(t) => tokio::time::sleep(t.saturating_sub(started.elapsed())).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = rest => {}
            _ = &mut stop_early => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(d) = dashboard {
        d.stop().await;
    }
    // Stop the listener first: it writes and acknowledges what arrived; then the devices.
    let _ = stop_listener.send(());
    let listener = match listening.await {
        Ok(r) => r?,
        Err(e) => return Err(DemoError::Io(format!("listener task: {e}"))),
    };
    stop.store(true, Ordering::Relaxed);
    let mut device_retransmissions = 0;
    let mut commands_applied = 0;
    let mut acknowledged = HashMap::new();
    for d in devices {
        let run = d
            .await
            .map_err(|e| DemoError::Check(format!("a device task failed: {e}")))?
            .map_err(DemoError::Check)?;
        commands_applied += u64::from(run.stats.commands_applied);
        device_retransmissions += u64::from(run.retransmissions);
        acknowledged.insert(format!("{:08x}", run.session), run.acknowledged);
    }
    let rows_per_device = match &opts.output {
        DemoOutput::File(p) => check_rows(std::slice::from_ref(p))?,
        DemoOutput::Dir(dir) => check_rows(&csv_files(dir)?)?,
    };
    // Every device's acknowledged records are exactly its rows: none missing, none extra,
    // and no device without rows.
    for (device, acked) in &acknowledged {
        let rows = rows_per_device
            .iter()
            .find(|(d, _)| d == device)
            .map_or(0, |(_, n)| *n);
        if rows != *acked {
            return Err(DemoError::Check(format!(
                "device {device}: {acked} records acknowledged but {rows} rows in the CSV"
            )));
        }
    }
    if let Some((stranger, _)) = rows_per_device
        .iter()
        .find(|(d, _)| !acknowledged.contains_key(d))
    {
        return Err(DemoError::Check(format!(
            "the CSV has rows of device {stranger}, which is not one of the demo's"
        )));
    }
    Ok(DemoSummary {
        listener,
        seconds,
        rows_per_device,
        device_retransmissions,
        commands_applied,
    })
}

/// The CSV files of a `--csv-dir` directory.
fn csv_files(dir: &std::path::Path) -> Result<Vec<PathBuf>, DemoError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| DemoError::Check(format!("cannot read {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| DemoError::Check(format!("cannot read {}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "csv") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Checks that every device's rows, across `files`, have the sequence numbers 0, 1, 2…
/// each once, with no gap (a device's records of different kinds are in different files);
/// returns the rows per device. A file's `device` and `seq` columns are found by its
/// header; marker rows (an empty `seq`) are not records.
fn check_rows(files: &[PathBuf]) -> Result<Vec<(String, u64)>, DemoError> {
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for path in files {
        let at = |row: usize| format!("{} row {row}", path.display());
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(path)
            .map_err(|e| DemoError::Check(format!("cannot read {}: {e}", path.display())))?;
        let headers = reader
            .headers()
            .map_err(|e| DemoError::Check(format!("{}: {e}", at(1))))?
            .clone();
        if headers.is_empty() {
            continue; // a kind no record of which came
        }
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| DemoError::Check(format!("{} has no column {name}", path.display())))
        };
        let (device_at, seq_at) = (column("device")?, column("seq")?);
        for (i, row) in reader.records().enumerate() {
            let row = row.map_err(|e| DemoError::Check(format!("{}: {e}", at(i + 2))))?;
            let (Some(device), Some(seq)) = (row.get(device_at), row.get(seq_at)) else {
                return Err(DemoError::Check(format!("{} is short", at(i + 2))));
            };
            if seq.is_empty() {
                continue; // a marker row
            }
            let seq: u64 = seq
                .parse()
                .map_err(|_| DemoError::Check(format!("{}: bad seq {seq}", at(i + 2))))?;
            seqs.entry(device.to_owned()).or_default().push(seq);
        }
    }
    let mut rows = Vec::with_capacity(seqs.len());
    for (device, mut seqs) in seqs {
        seqs.sort_unstable();
        if let Some((i, &seq)) = seqs.iter().enumerate().find(|&(i, &s)| s != i as u64) {
            let what = if i > 0 && seqs[i - 1] == seq {
                "twice"
            } else {
                "after a gap"
            };
            return Err(DemoError::Check(format!(
                "device {device}: record {seq} is in the CSV {what} (record {i} was due)"
            )));
        }
        rows.push((device, seqs.len() as u64));
    }
    rows.sort();
    Ok(rows)
}
