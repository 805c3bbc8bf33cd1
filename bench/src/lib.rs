//! `tether-bench`: the whole-program benchmark, a crate of its own (the `tether` binary ships
//! without it). In one run, on loopback, with the same
//! buffer sizes (64 KiB reads and writes) on both sides of each comparison, it measures:
//!
//! - raw TCP throughput (the physical reference) and Tether's bulk throughput (a `Link` pair
//!   moving large records over a loopback TCP connection) → ratio;
//! - small records (16-byte payloads) end to end: `tether send` → `tether listen` → CSV, two
//!   processes, every record checked in the CSV → records/s;
//! - the tutorial's stop-and-wait: `tether send --window 1` and, where python3 is there, the
//!   tutorial's own server with a client in its style → ratio;
//! - one record's round trip (send → acknowledged, i.e. written) against a raw TCP
//!   ping-pong of the same 16 bytes → ratio;
//! - the resident memory of a `tether listen` serving 100, 1,000 and 10,000 concurrent
//!   devices, idle after streaming, per connection, and that none of their records was lost;
//! - the instructions a 16-byte record costs, counted by callgrind ([`instr`]).
//!
//! The programs measured are the real ones: the listener and sender run as child processes
//! of the `tether` binary given in [`BenchOptions::exe`].

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use tether_core::frame::OVERHEAD;
use tether_core::link::{Config, Link, Phase, Role};

use tether_host::storage::HeapStorage;

pub mod guard;
pub mod instr;
pub mod plot;

/// What to measure and how much. [`BenchOptions::new`] has the defaults; `quick` divides
/// the volumes by ten (a smoke run, not figures to quote).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `tether` binary run as listener and sender.
    pub exe: PathBuf,
    /// A scratch directory (CSV files, input files); created if missing.
    pub dir: PathBuf,
    /// Bytes moved by the raw TCP and the Tether bulk measurements.
    pub bulk_bytes: u64,
    /// Payload of a bulk record.
    pub bulk_payload: usize,
    /// Records of 16 bytes sent into the CSV.
    pub small_records: u64,
    /// Records sent stop-and-wait (Tether window 1, and the tutorial).
    pub stop_and_wait_records: u64,
    /// Round trips timed.
    pub round_trips: u32,
    /// Concurrent devices for the memory measurement (0 skips it).
    pub devices: usize,
    /// Run the tutorial's Python server and client if python3 is available.
    pub tutorial: bool,
    /// Records of the full-rate sweep at each device count, shared among the devices.
    pub sweep_records: u64,
    /// Readings each of the dashboard measurement's 200 devices sends (0 skips it).
    pub dashboard_readings: u32,
    /// Only these measurements (names in [`SECTIONS`]); all when empty.
    pub only: Vec<String>,
    /// The `tether-bench` binary whose `--instr-probe` mode callgrind counts (see
    /// [`instr`]); `None` skips the instruction count.
    pub probe: Option<PathBuf>,
    /// The two record counts of the instruction count: its figure is the difference of
    /// their instructions over the difference of the records.
    pub instr_records: (u64, u64),
}

/// The measurements, by name, for [`BenchOptions::only`].
pub const SECTIONS: [&str; 9] = [
    "bulk",
    "small",
    "defaults",
    "devices",
    "stop-and-wait",
    "round-trip",
    "memory",
    "dashboard",
    "instructions",
];

impl BenchOptions {
    /// Full-size defaults.
    pub fn new(exe: PathBuf, dir: PathBuf) -> Self {
        BenchOptions {
            exe,
            dir,
            bulk_bytes: 2 << 30,
            bulk_payload: 16 * 1024,
            small_records: 2_000_000,
            stop_and_wait_records: 20_000,
            round_trips: 5_000,
            devices: 10_000,
            sweep_records: 1_000_000,
            tutorial: true,
            dashboard_readings: 4_000,
            only: Vec::new(),
            probe: None,
            instr_records: (20_000, 120_000),
        }
    }

    /// A tenth of everything (the devices stay at 10,000: that is the target).
    pub fn quick(mut self) -> Self {
        self.sweep_records /= 10;
        self.bulk_bytes /= 10;
        self.small_records /= 10;
        self.stop_and_wait_records /= 10;
        self.round_trips /= 10;
        self.dashboard_readings /= 10;
        self.instr_records = (self.instr_records.0 / 4, self.instr_records.1 / 4);
        self
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Tether's figure.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The reference measured in the same run, if any: what, and its figure.
    pub baseline: Option<(String, f64)>,
    /// Tether / baseline, when that is the comparison.
    pub ratio: Option<f64>,
    /// The target this project sets for the figure (README, Performance), in words, and
    /// whether it is met.
    pub target: Option<(String, bool)>,
    /// Anything worth knowing about the figure.
    pub note: String,
}

/// Why the benchmark could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A measurement's result was wrong (records lost, a child failed…).
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// Buffers on both sides of every comparison.
const BUF: usize = 64 * 1024;

/// Records in flight for the small-record run: at 16 bytes a record the listener's receive
/// slots for 4,096 records take 344 KB. Fewer, larger batches of acknowledgements halve the
/// system time against a window of 256 (0.72 → 0.57 s for 1,000,000 records), and with
/// 1,024 the sender waited for an acknowledgement every 1,024 records, a third of the time
/// on a machine slow to wake (1.70–1.77 M against 2.46–2.68 M records/s with 4,096).
const SMALL_WINDOW: u16 = 4096;
/// Turns of raw TCP and Tether bulk, alternating.
const BULK_TURNS: u64 = 4;

/// The machine, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1_048_576.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}, Linux {kernel}")
}

/// Runs every measurement, printing progress on standard error, and returns the rows.
pub fn run(opts: &BenchOptions) -> Result<Vec<Row>, BenchError> {
    std::fs::create_dir_all(&opts.dir).map_err(io(format!("creating {}", opts.dir.display())))?;
    let mut rows = Vec::new();
    let want = |name: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == name);

    if want("bulk") {
        eprintln!(
            "bench: raw TCP and Tether bulk, {} MiB each",
            opts.bulk_bytes >> 20
        );
        // Four turns each, alternating, so that both see the same machine (raw TCP alone
        // moved between 1.3 and 3.9 GiB/s from one run to the next on this VM); each
        // figure is the bytes of its four turns over their time. Not pinned: with the
        // sender and the receiver each on its own CPU, both were slower and Tether more so
        // (0.46-0.66 x), the loopback's receive work landing on the sender's CPU.
        let turn = (opts.bulk_bytes / BULK_TURNS).max(1);
        let (mut raw_moved, mut raw_secs, mut moved, mut secs) = (0, 0.0, 0, 0.0);
        for _ in 0..BULK_TURNS {
            let (b, t) = raw_tcp_throughput(turn)?;
            (raw_moved, raw_secs) = (raw_moved + b, raw_secs + t);
            let (b, t) = tether_bulk_throughput(turn, opts.bulk_payload)?;
            (moved, secs) = (moved + b, secs + t);
        }
        let raw = raw_moved as f64 / raw_secs;
        let bulk = moved as f64 / secs;
        let gib = (1u64 << 30) as f64;
        rows.push(Row {
            name: format!("bulk, {} KiB records", opts.bulk_payload / 1024),
            value: bulk / gib,
            unit: "GiB/s",
            baseline: Some(("raw TCP".into(), raw / gib)),
            ratio: Some(bulk / raw),
            target: Some(("≥ 0.9 × raw TCP".into(), bulk / raw >= 0.9)),
            note: "Link pair over loopback TCP, window 64, CRC and acks".into(),
        });
    }

    let mut small = None;
    if want("small") {
        eprintln!(
            "bench: {} small records into CSV (tether send → tether listen)",
            opts.small_records
        );
        let rate = small_records_into_csv(opts, opts.small_records, Some(SMALL_WINDOW), "small")?;
        small = Some(rate);
        rows.push(Row {
            name: "16-byte records into CSV".into(),
            value: rate,
            unit: "records/s",
            baseline: None,
            ratio: None,
            target: Some(("≥ 5,000,000 records/s".into(), rate >= 5_000_000.0)),
            note: format!(
                "{} records, window {SMALL_WINDOW}, every record checked in the CSV",
                opts.small_records
            ),
        });
    }

    if want("defaults") {
        eprintln!(
            "bench: {} small records at the defaults (tether send FILE → tether listen, no options)",
            opts.small_records
        );
        let rate = small_records_into_csv(opts, opts.small_records, None, "defaults")?;
        rows.push(Row {
            name: "16-byte records into CSV at the defaults".into(),
            value: rate,
            unit: "records/s",
            baseline: small.map(|s| (format!("window {SMALL_WINDOW}"), s)),
            ratio: small.map(|s| rate / s),
            target: Some(("≥ 2,000,000 records/s".into(), rate >= 2_000_000.0)),
            note: format!(
                "{} records, `tether send FILE` into `tether listen` with no option (window {}), every record checked in the CSV",
                opts.small_records,
                tether_host::options::Serving::DEFAULT.window
            ),
        });
    }

    if want("stop-and-wait") {
        eprintln!(
            "bench: stop-and-wait, {} records (tether send --window 1; the tutorial)",
            opts.stop_and_wait_records
        );
        let saw = small_records_into_csv(opts, opts.stop_and_wait_records, Some(1), "window1")?;
        let tutorial = if opts.tutorial {
            tutorial_rate(opts)?
        } else {
            None
        };
        rows.push(Row {
            name: "stop-and-wait into CSV (window 1)".into(),
            value: saw,
            unit: "records/s",
            baseline: tutorial.map(|t| ("the tutorial (Python)".into(), t)),
            ratio: tutorial.map(|t| saw / t),
            target: None,
            note: if tutorial.is_some() {
                "the tutorial: its own server, a client in its style, 32-byte packets".into()
            } else {
                "python3 not found: the tutorial was not run".into()
            },
        });
        if let Some(small) = small {
            rows.push(Row {
                name: "16-byte records into CSV vs the tutorial".into(),
                value: small,
                unit: "records/s",
                baseline: tutorial.map(|t| ("the tutorial (Python)".into(), t)),
                ratio: tutorial.map(|t| small / t),
                target: Some((
                    "≥ 100 × the tutorial".into(),
                    tutorial.is_some_and(|t| small >= 100.0 * t),
                )),
                note: format!("window {SMALL_WINDOW}"),
            });
        }
    }

    if want("round-trip") {
        eprintln!("bench: round trips, {} each", opts.round_trips);
        let [(rtt, p99), (raw_rtt, raw_p99)] = round_trips(opts, opts.round_trips)?;
        rows.push(Row {
            name: "one record's round trip (median)".into(),
            value: rtt * 1e6,
            unit: "µs",
            baseline: Some(("raw TCP ping-pong".into(), raw_rtt * 1e6)),
            ratio: Some(rtt / raw_rtt),
            target: Some(("≤ 1.25 × raw".into(), rtt / raw_rtt <= 1.25)),
            note: format!(
            "send → acknowledged (written to CSV by tether listen); p99 {:.1} µs vs raw {:.1} µs",
            p99 * 1e6,
            raw_p99 * 1e6
        ),
        });
    }

    if want("devices") {
        let mut curve = Vec::new();
        for &n in &SWEEP {
            let each = (opts.sweep_records / n as u64).max(1) as u32;
            eprintln!("bench: {n} devices at full rate, {each} records each");
            let (rate, cpu) = devices_at_full_rate(opts, n, each)?;
            curve.push((n, rate, cpu));
            let thousand = n == 1000;
            rows.push(Row {
                name: format!("{n} devices at full rate into CSV"),
                value: rate,
                unit: "records/s",
                baseline: None,
                ratio: None,
                target: thousand.then(|| ("≥ 2,000,000 records/s".into(), rate >= 2_000_000.0)),
                note: format!(
                    "{each} records of 16 bytes each, every one checked in the CSV; the listener's CPU: {:.0} ns a record",
                    cpu * 1e9
                ),
            });
            rows.push(Row {
                name: format!("listener CPU a record, {n} devices at full rate"),
                value: cpu * 1e9,
                unit: "ns/record",
                baseline: None,
                ratio: None,
                target: None,
                note: "user + system time of tether listen over the records it wrote".into(),
            });
        }
    }

    if opts.devices > 0 && want("memory") {
        for n in memory_stages(opts.devices) {
            eprintln!("bench: {n} concurrent devices against one listener");
            let (per_conn, total, records) = idle_devices_memory(opts, n)?;
            let last = n == opts.devices;
            rows.push(Row {
                name: format!("listener memory, {n} idle devices"),
                value: per_conn / 1024.0,
                unit: "KiB/connection",
                baseline: None,
                ratio: None,
                target: last.then(|| ("≤ 2 KiB per idle device".into(), per_conn <= 2048.0)),
                note: format!(
                    "RSS grew {:.1} MiB; {records} records, none lost or duplicated",
                    total / 1_048_576.0
                ),
            });
        }
    }
    if opts.dashboard_readings > 0 && want("dashboard") {
        eprintln!("bench: {DASHBOARD_DEVICES} devices at 1 kHz, the dashboard's page open or not");
        let [(shut, shut_cpu), (open, open_cpu)] = dashboard_cost(opts)?;
        rows.push(Row {
            name: format!("{DASHBOARD_DEVICES} devices at 1 kHz, the dashboard's page open"),
            value: open,
            unit: "records/s",
            baseline: Some(("the page closed".into(), shut)),
            ratio: Some(open / shut),
            target: Some(("≥ 95 % of the page closed".into(), open >= 0.95 * shut)),
            note: format!(
                "the listener's CPU: {:.2} µs a record with the page, {:.2} without; the page: \
                 the event stream watching one device, /api/devices every second",
                open_cpu * 1e6,
                shut_cpu * 1e6
            ),
        });
    }
    if want("instructions") {
        instructions(opts, &mut rows)?;
    }
    Ok(rows)
}

/// The instruction count ([`instr`]) of protocol versions 1 and 2: two rows each (the
/// listener's share, the whole turn), or one row saying why it was not measured.
fn instructions(opts: &BenchOptions, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let (small, large) = opts.instr_records;
    let skipped = |why: String| Row {
        name: "listener instructions a 16-byte record into CSV, protocol v1".into(),
        value: f64::NAN,
        unit: "instructions/record",
        baseline: None,
        ratio: None,
        target: None,
        note: format!("not measured: {why}"),
    };
    let Some(probe) = &opts.probe else {
        rows.push(skipped("no tether-bench binary to probe was given".into()));
        return Ok(());
    };
    let Some(valgrind) = instr::valgrind() else {
        eprintln!("bench: valgrind not found: the instruction count is skipped (apt-get install valgrind)");
        rows.push(skipped(
            "valgrind not found (apt-get install valgrind; scripts/setup.sh installs it)".into(),
        ));
        return Ok(());
    };
    if large <= small {
        return Err(BenchError::Failed(format!(
            "instruction count: {large} records must exceed {small}"
        )));
    }
    for version in [1u8, 2] {
        eprintln!(
            "bench: instructions a record under callgrind, protocol v{version}, {small} and {large} records"
        );
        let c = instr::count(&valgrind, probe, &opts.dir, version, (small, large))?;
        rows.push(Row {
            name: format!("listener instructions a 16-byte record into CSV, protocol v{version}"),
            value: c.listener,
            unit: "instructions/record",
            baseline: None,
            ratio: None,
            target: None,
            note: format!(
                "callgrind's count, (I({large}) − I({small})) / {} records: the listener's link \
                 (decoding, acknowledging, releasing) and its CSV sink, in memory (no socket, \
                 no system call counted), as `tether listen` configures them at the defaults; \
                 the figure that carries over to a Raspberry Pi (an instruction count, not a \
                 time: the same code runs there)",
                large - small
            ),
        });
        rows.push(Row {
            name: format!("device and listener instructions a 16-byte record, protocol v{version}"),
            value: c.total,
            unit: "instructions/record",
            baseline: None,
            ratio: None,
            target: None,
            note: format!(
                "the same runs counted whole: the device's link (queueing, framing, CRC) as well; \
                 the listener's share is {:.0} %",
                100.0 * c.listener / c.total
            ),
        });
    }
    Ok(())
}

/// Device counts of the full-rate sweep: the listener's cost curve.
pub const SWEEP: [usize; 4] = [1, 10, 100, 1000];

/// `devices` in-process devices (a `Link` each, window [`DEVICE_WINDOW`]) stream `each`
/// 16-byte records at once into one `tether listen` at its defaults (limits raised for the
/// devices); every record is checked in the CSV. Returns the records/s (from the first
/// connection until the last record acknowledged, i.e. written) and the listener's CPU
/// seconds a record.
fn devices_at_full_rate(
    opts: &BenchOptions,
    devices: usize,
    each: u32,
) -> Result<(f64, f64), BenchError> {
    let csv = opts.dir.join(format!("sweep{devices}.csv"));
    let (listener, addr, rt) = listener_for_devices(opts, &csv, devices, &[])?;
    let pid = listener.0.id();
    let cpu_before = cpu_seconds(pid)?;
    let start = StdInstant::now();
    let (done, failures) = stream_devices(&rt, addr, devices, each, DEVICE_WINDOW, Duration::ZERO)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    if done < devices || !failures.is_empty() {
        return Err(BenchError::Failed(format!(
            "{done} of {devices} devices streamed; {} failed, first: {}",
            failures.len(),
            failures.first().cloned().unwrap_or_default()
        )));
    }
    drop(listener);
    let total = check_device_rows(&csv, devices, each)?;
    let _ = std::fs::remove_file(&csv);
    Ok((total as f64 / secs, cpu / total as f64))
}

/// A `tether listen` into `csv` with its limits raised for `devices` (and `extra` options),
/// settled (its baseline can be taken), and a runtime for the in-process devices.
fn listener_for_devices(
    opts: &BenchOptions,
    csv: &Path,
    devices: usize,
    extra: &[&str],
) -> Result<(Kid, SocketAddr, tokio::runtime::Runtime), BenchError> {
    let max = (devices * 2).max(16).to_string();
    let mut args = vec!["--max-connections", &max, "--max-devices", &max];
    args.extend_from_slice(extra);
    let (listener, addr) = start_listener(opts, csv, &args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("starting a runtime"))?;
    std::thread::sleep(Duration::from_millis(300));
    Ok((listener, addr, rt))
}

/// The transmit window of the benchmark's in-process devices at full rate: the listener's
/// default window, so that neither side is the one waiting.
const DEVICE_WINDOW: usize = 512;

/// Runs `devices` devices ([`idle_device`]) on `rt`, each streaming `each` records with a
/// window of `window`; once all are acknowledged (or 120 s passed), waits `settle`, then
/// lets them close. Returns how many went idle and the
/// failures.
fn stream_devices(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    devices: usize,
    each: u32,
    window: usize,
    settle: Duration,
) -> Result<(usize, Vec<String>), BenchError> {
    stream_devices_staged(rt, addr, &[devices], each, window, settle, |_| Ok(()))
        .map(|(n, f, _)| (n, f))
}

/// [`stream_devices`] in stages: devices connect until `stages[0]` are connected and idle,
/// `settle` passes and `measure(stages[0])` is called, then more connect (the first ones
/// staying connected and idle) until `stages[1]`, and so on (`stages` ascending; the last is
/// the number of devices). Returns how many went idle, the failures and what each stage
/// measured; a stage whose devices did not all go idle within 120 s ends the run there.
fn stream_devices_staged<T>(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    stages: &[usize],
    each: u32,
    window: usize,
    settle: Duration,
    mut measure: impl FnMut(usize) -> Result<T, BenchError>,
) -> Result<(usize, Vec<String>, Vec<T>), BenchError> {
    let devices = stages.last().copied().unwrap_or(0);
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(false);
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::channel::<()>(devices.max(1));
    let mut tasks = Vec::with_capacity(devices);
    let mut measured = Vec::new();
    let mut all_idle = 0;
    let mut error = None;
    for &stage in stages {
        while tasks.len() < stage {
            let i = tasks.len();
            tasks.push(rt.spawn(idle_device(
                addr,
                i as u32 + 1,
                each,
                window,
                idle_tx.clone(),
                hold_rx.clone(),
            )));
        }
        all_idle = rt.block_on(async {
            let mut n = all_idle;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while n < stage {
                match tokio::time::timeout_at(deadline, idle_rx.recv()).await {
                    Ok(Some(())) => n += 1,
                    _ => break,
                }
            }
            n
        });
        if all_idle < stage {
            break;
        }
        std::thread::sleep(settle);
        match measure(stage) {
            Ok(m) => measured.push(m),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    drop(idle_tx);
    let _ = hold_tx.send(true);
    let mut failures = Vec::new();
    for t in tasks {
        match rt.block_on(t) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok((all_idle, failures, measured)),
    }
}

/// Every record of every device exactly once in the CSV of a device run; their count.
fn check_device_rows(csv: &Path, devices: usize, each: u32) -> Result<u64, BenchError> {
    let f = std::fs::File::open(csv).map_err(io("reading the CSV"))?;
    let mut seen = std::collections::HashSet::new();
    for line in BufReader::with_capacity(1 << 20, f).lines().skip(1) {
        let line = line.map_err(io("reading the CSV"))?;
        // time,device,seq,data: the data is "DDDDDDDD,RRRRRRR" (device, record).
        let key: String = line.split(',').skip(3).collect::<Vec<_>>().join(",");
        if !seen.insert(key) {
            return Err(BenchError::Failed(format!("duplicated row `{line}`")));
        }
    }
    let expected = devices as u64 * u64::from(each);
    if seen.len() as u64 != expected {
        return Err(BenchError::Failed(format!(
            "{} of {expected} records in the CSV",
            seen.len()
        )));
    }
    Ok(expected)
}

/// Devices of the dashboard measurement.
const DASHBOARD_DEVICES: usize = 200;
/// Its turns each way (page open, page closed), alternating: the devices and the listener
/// share the machine's two cores, and one run's rate moved by ±7 % from the next.
const DASHBOARD_TURNS: usize = 3;

/// [`DASHBOARD_DEVICES`] `tether sim` devices, a reading every millisecond each, stream
/// `opts.dashboard_readings` readings each into a `tether listen --http`, once with nobody
/// on the dashboard and once with what its page does open (the event stream watching the
/// first device, `/api/devices` every second), [`DASHBOARD_TURNS`] times each, alternating. Returns, page
/// closed then open: the listener's records/s (all records over the devices' run) and
/// its CPU seconds a record.
fn dashboard_cost(opts: &BenchOptions) -> Result<[(f64, f64); 2], BenchError> {
    let mut sums = [(0u64, 0.0f64, 0.0f64); 2]; // records, seconds, CPU seconds
    for turn in 0..2 * DASHBOARD_TURNS {
        let open = turn % 2 == 1;
        let http = local(&loopback()?)?;
        let csv = opts.dir.join("dashboard.csv");
        let max = (DASHBOARD_DEVICES * 2).to_string();
        let (listener, addr) = start_listener(
            opts,
            &csv,
            &[
                "--http",
                &http.to_string(),
                "--max-devices",
                &max,
                "--max-connections",
                &max,
            ],
        )?;
        let pid = listener.0.id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let page = open.then(|| {
            let stop = stop.clone();
            // The sim's first device (tether_host::sim::device_identity(1, 0)).
            let first = format!("{:08x}", tether_host::sim::device_identity(1, 0).0);
            std::thread::spawn(move || page_open(http, &first, &stop))
        });
        let cpu0 = cpu_seconds(pid)?;
        let t0 = StdInstant::now();
        let status = Command::new(&opts.exe)
            .arg("sim")
            .arg(format!("tcp://{addr}"))
            .args(["--devices", &DASHBOARD_DEVICES.to_string()])
            .args(["--records", &opts.dashboard_readings.to_string()])
            .args(["--period-ms", "1", "--seed", "1", "--timeout", "300"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io("running tether sim"))?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid)? - cpu0;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = match page {
            Some(p) => p
                .join()
                .map_err(|_| BenchError::Failed("the page's thread panicked".into()))??,
            None => 1,
        };
        drop(listener);
        if !status.success() {
            return Err(BenchError::Failed(format!("tether sim: {status}")));
        }
        if seen == 0 {
            return Err(BenchError::Failed(
                "the page saw no sample of the device it watched".into(),
            ));
        }
        let records = DASHBOARD_DEVICES as u64 * u64::from(opts.dashboard_readings);
        let s = &mut sums[usize::from(open)];
        *s = (s.0 + records, s.1 + secs, s.2 + cpu);
    }
    Ok(sums.map(|(n, secs, cpu)| (n as f64 / secs, cpu / n as f64)))
}

/// What the dashboard's page does to the listener at `http`, until `stop`: reads the event
/// stream watching `device` on one connection, and asks for `/api/devices` every second on
/// another. Returns the samples the stream brought.
fn page_open(
    http: SocketAddr,
    device: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64, BenchError> {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::Ordering;
    let connect = || {
        let deadline = StdInstant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect(http) {
                Ok(s) => return Ok(s),
                Err(e) if StdInstant::now() > deadline => {
                    return Err(BenchError::Failed(format!("the dashboard at {http}: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    };
    let mut events = connect()?;
    events
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(io("the event stream"))?;
    write!(
        events,
        "GET /api/events?watch={device} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .map_err(io("the event stream"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut samples, mut polled) = (0u64, StdInstant::now() - Duration::from_secs(1));
    while !stop.load(Ordering::Relaxed) {
        if polled.elapsed() >= Duration::from_secs(1) {
            polled = StdInstant::now();
            let mut api = connect()?;
            write!(api, "GET /api/devices HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .map_err(io("/api/devices"))?;
            let mut body = Vec::new();
            api.read_to_end(&mut body).map_err(io("/api/devices"))?;
            if !body.starts_with(b"HTTP/1.1 200") && !body.starts_with(b"HTTP/1.0 200") {
                return Err(BenchError::Failed(format!(
                    "/api/devices: {}",
                    String::from_utf8_lossy(&body[..body.len().min(80)])
                )));
            }
        }
        match events.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                samples += buf[..n]
                    .windows(13)
                    .filter(|w| w == b"event: sample")
                    .count() as u64
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(BenchError::Failed(format!("the event stream: {e}"))),
        }
    }
    Ok(samples)
}

/// The results as a table for a terminal (and a README).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| measurement | Tether | baseline | ratio | target | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in rows {
        let base = r
            .baseline
            .as_ref()
            .map(|(n, v)| format!("{n}: {}", num(*v)))
            .unwrap_or_else(|| "—".into());
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}×"))
            .unwrap_or_else(|| "—".into());
        let (target, met) = match &r.target {
            Some((t, m)) => (t.clone(), if *m { "yes" } else { "no" }),
            None => ("—".into(), "—"),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {base} | {ratio} | {target} | {met} |",
            r.name,
            if r.value.is_finite() {
                format!("{} {}", num(r.value), r.unit)
            } else {
                num(r.value)
            }
        );
    }
    s
}

/// The results as a Markdown report: what was run, where and when, the table, and each
/// measurement's note. `scripts/bench.sh` writes it to `docs/performance.md`, which the
/// README links: figures live there, generated, never copied by hand.
pub fn report(rows: &[Row], machine: &str, command: &str, when: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Tether performance
"
    );
    let _ = writeln!(
        s,
        "Generated by `{command}` on {when}; do not edit by hand (run it again instead).
"
    );
    let _ = writeln!(
        s,
        "Machine: {machine}
"
    );
    s.push_str(&table(rows));
    let _ = writeln!(
        s,
        "
Notes:
"
    );
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(s, "- {}: {}", r.name, r.note);
    }
    let met = rows
        .iter()
        .filter(|r| r.target.as_ref().is_some_and(|t| t.1))
        .count();
    let targets = rows.iter().filter(|r| r.target.is_some()).count();
    let _ = writeln!(
        s,
        "
Targets met in this run: {met} of {targets}."
    );
    s
}

/// Whether a smaller figure of `unit` is the better one (times, memory, CPU a record).
fn lower_is_better(unit: &str) -> bool {
    matches!(
        unit,
        "µs" | "KiB/connection" | "ns/record" | "instructions/record"
    )
}

/// The cost curves as SVG charts: of the full-rate sweep, records/s against devices and the
/// listener's CPU a record against devices; of the memory measurement, the listener's RSS
/// per idle device against devices connected. A chart is left out when its measurement did
/// not run.
pub fn plots(rows: &[Row]) -> Vec<(&'static str, String)> {
    let point = |prefix: &str, suffix: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| {
                let n = r.name.strip_prefix(prefix)?.strip_suffix(suffix)?;
                Some((n.parse::<f64>().ok()?, r.value))
            })
            .collect()
    };
    let chart = |title: &str, x: &str, y: &str, points: Vec<(f64, f64)>| {
        plot::svg(&plot::Chart {
            title: title.into(),
            x_label: x.into(),
            y_label: y.into(),
            log_x: true,
            series: vec![plot::Series {
                name: "tether listen".into(),
                points,
            }],
        })
    };
    let streaming = "devices streaming at once";
    let curves = [
        (
            "bench-devices-rate.svg",
            "16-byte records into CSV against devices",
            streaming,
            "records/s",
            point("", " devices at full rate into CSV"),
        ),
        (
            "bench-devices-cpu.svg",
            "The listener's CPU a record against devices",
            streaming,
            "ns/record",
            point("listener CPU a record, ", " devices at full rate"),
        ),
        (
            "bench-devices-rss.svg",
            "The listener's RSS per idle device against devices",
            "idle devices connected",
            "KiB/connection",
            point("listener memory, ", " idle devices"),
        ),
    ];
    curves
        .into_iter()
        .filter(|c| !c.4.is_empty())
        .map(|(file, title, x, y, points)| (file, chart(title, x, y, points)))
        .collect()
}

/// The results as JSON.
pub fn json(rows: &[Row], machine: &str) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "value": r.value,
                "unit": r.unit,
                "baseline": r.baseline.as_ref().map(|(n, v)| serde_json::json!({"name": n, "value": v})),
                "ratio": r.ratio,
                "better": if lower_is_better(r.unit) { "lower" } else { "higher" },
                "target": r.target.as_ref().map(|(t, m)| serde_json::json!({"target": t, "met": m})),
                "note": r.note,
            })
        })
        .collect();
    let doc = serde_json::json!({ "machine": machine, "results": rows });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "not measured".into()
    } else if v >= 1000.0 {
        let n = v.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn loopback() -> Result<TcpListener, BenchError> {
    TcpListener::bind("127.0.0.1:0").map_err(io("binding a loopback port"))
}

fn local(l: &TcpListener) -> Result<SocketAddr, BenchError> {
    l.local_addr().map_err(io("reading a local address"))
}

/// A plain TCP stream: one thread writes 64 KiB chunks, one reads them. Bytes and seconds.
fn raw_tcp_throughput(total: u64) -> Result<(u64, f64), BenchError> {
    let l = loopback()?;
    let addr = local(&l)?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; BUF];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
        }
    });
    let start = StdInstant::now();
    let mut s = TcpStream::connect(addr).map_err(io("connecting"))?;
    let chunk = vec![0x5Au8; BUF];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(BUF as u64) as usize;
        s.write_all(&chunk[..n]).map_err(io("writing"))?;
        sent += n as u64;
    }
    drop(s);
    let got = join(reader)?;
    let secs = start.elapsed().as_secs_f64();
    if got != total {
        return Err(BenchError::Failed(format!(
            "raw TCP: {got} of {total} bytes arrived"
        )));
    }
    Ok((total, secs))
}

fn join<T>(h: std::thread::JoinHandle<std::io::Result<T>>) -> Result<T, BenchError> {
    h.join()
        .map_err(|_| BenchError::Failed("a benchmark thread panicked".into()))?
        .map_err(io("a benchmark thread"))
}

fn now(start: StdInstant) -> tether_core::link::Instant {
    tether_core::link::Instant::from_millis(start.elapsed().as_millis() as u64)
}

/// Records moved by a client `Link` to a server `Link` over loopback TCP, each
/// side reading 64 KiB at a time, the server releasing each record as it arrives. Bytes
/// delivered and seconds.
fn tether_bulk_throughput(total: u64, payload: usize) -> Result<(u64, f64), BenchError> {
    const WINDOW: u16 = 64;
    let frame = payload + OVERHEAD;
    let records = total.div_ceil(payload as u64);
    let l = loopback()?;
    let addr = local(&l)?;
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let _ = s.set_nodelay(true);
        let clock = StdInstant::now();
        let mut link = Link::new(
            Config::new(Role::Server, 2),
            HeapStorage::new(4, usize::from(WINDOW), frame),
        )
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        link.connect(now(clock));
        let mut buf = vec![0u8; BUF];
        let mut out = Vec::with_capacity(BUF);
        let mut tx = vec![0u8; link.transmit_len()];
        let mut bytes = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(bytes);
            }
            let t = now(clock);
            link.handle_input(t, &buf[..n]);
            let mut k = 0;
            for r in link.received() {
                bytes += r.payload.len() as u64;
                k += 1;
            }
            link.release(k);
            while let Some(m) = link.poll_transmit(t, &mut tx) {
                out.extend_from_slice(&tx[..m]);
            }
            if !out.is_empty() {
                s.write_all(&out)?;
                out.clear();
            }
        }
    });
    let start = StdInstant::now();
    let mut s = TcpStream::connect(addr).map_err(io("connecting"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io("setting a timeout"))?;
    let mut cfg = Config::new(Role::Client, 1);
    cfg.window = WINDOW;
    let mut link = Link::new(cfg, HeapStorage::new(usize::from(WINDOW), 4, frame))
        .map_err(|e| BenchError::Failed(format!("bulk link: {e:?}")))?;
    let record = vec![0xA5u8; payload];
    let mut queued = 0u64;
    // One thread, as a sender's event loop: frames are encoded straight into the write
    // buffer (no staging copy); acknowledgements are read without waiting while there is
    // something to send, and waited for when the window is full.
    let tx_len = frame * 2 + 8;
    let mut out = vec![0u8; BUF + tx_len];
    let mut acks = vec![0u8; BUF];
    link.connect(now(start));
    loop {
        if link.phase() == Phase::Established {
            while queued < records && link.send(&record).is_ok() {
                queued += 1;
            }
        }
        let t = now(start);
        let mut used = 0;
        while used < BUF {
            match link.poll_transmit(t, &mut out[used..]) {
                Some(k) => used += k,
                None => break,
            }
        }
        if used > 0 {
            s.write_all(&out[..used]).map_err(io("writing"))?;
        } else if queued == records && link.unacked() == 0 {
            break;
        }
        // Nothing more to send (window full, or all sent): wait for acknowledgements;
        // otherwise take what has arrived and go on (MSG_DONTWAIT: the socket stays
        // blocking for the writes).
        let n = if used == 0 {
            s.read(&mut acks)
                .map_err(|e| BenchError::Failed(format!("bulk: reading: {e}")))?
        } else {
            use nix::sys::socket::{recv, MsgFlags};
            use std::os::fd::AsRawFd;
            match recv(s.as_raw_fd(), &mut acks, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => usize::MAX,
                Err(e) => return Err(BenchError::Failed(format!("bulk: reading: {e}"))),
            }
        };
        match n {
            0 => return Err(BenchError::Failed("bulk: the receiver closed".into())),
            usize::MAX => {}
            n => link.handle_input(now(start), &acks[..n]),
        }
        link.handle_timeout(now(start));
    }
    let secs = start.elapsed().as_secs_f64();
    s.shutdown(std::net::Shutdown::Both)
        .map_err(io("closing"))?;
    let got = join(server)?;
    if got != records * payload as u64 {
        return Err(BenchError::Failed(format!(
            "bulk: {got} of {} bytes delivered",
            records * payload as u64
        )));
    }
    Ok((got, secs))
}

/// A child process killed when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tether listen` on a free loopback port, writing `csv`; returns it and its address.
fn start_listener(
    opts: &BenchOptions,
    csv: &Path,
    extra: &[&str],
) -> Result<(Kid, SocketAddr), BenchError> {
    start_listener_with(opts, csv, extra, &[])
}

/// [`start_listener`] with environment variables.
fn start_listener_with(
    opts: &BenchOptions,
    csv: &Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> Result<(Kid, SocketAddr), BenchError> {
    let _ = std::fs::remove_file(csv);
    let mut child = Command::new(&opts.exe)
        .arg("listen")
        .arg("tcp://127.0.0.1:0")
        .arg("--csv")
        .arg(csv)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("starting {} listen", opts.exe.display())))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| BenchError::Failed("no stderr".into()))?;
    let kid = Kid(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            return Err(BenchError::Failed(
                "tether listen ended before saying where it listens".into(),
            ));
        };
        if let Some(rest) = line.split("listening on tcp://").nth(1) {
            let a = rest.split(',').next().unwrap_or_default();
            break a
                .parse::<SocketAddr>()
                .map_err(|_| BenchError::Failed(format!("cannot read the address in `{line}`")))?;
        }
    };
    // Keep draining its log so that it never blocks on a full pipe; its warnings are kept
    // in the scratch directory's listen.log (scripts/bench.sh --dir DIR keeps them).
    let log = opts.dir.join("listen.log");
    std::thread::spawn(move || {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ok();
        for line in lines.map_while(Result::ok) {
            if let (Some(f), true) = (&mut log, line.contains("WARN") || line.contains("ERROR")) {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    Ok((kid, addr))
}

/// Sends `n` 16-byte lines with `tether send --window W` into a `tether listen`; checks
/// every record is in the CSV exactly once; returns records/s (from the sender's start to
/// its exit, i.e. until the last record was acknowledged as written).
fn small_records_into_csv(
    opts: &BenchOptions,
    n: u64,
    window: Option<u16>,
    name: &str,
) -> Result<f64, BenchError> {
    let input = opts.dir.join(format!("{name}.txt"));
    {
        let f = std::fs::File::create(&input).map_err(io("writing the input"))?;
        let mut w = std::io::BufWriter::new(f);
        for i in 0..n {
            // 16 bytes: "00000042,2100042"
            writeln!(w, "{:08},{:07}", i % 100_000_000, (i * 7) % 10_000_000)
                .map_err(io("writing the input"))?;
        }
        w.flush().map_err(io("writing the input"))?;
    }
    let csv = opts.dir.join(format!("{name}.csv"));
    // No window: both programs at their defaults, no option at all.
    let window_arg = window.map(|w| w.to_string());
    let args: Vec<&str> = match &window_arg {
        Some(w) => vec!["--window", w, "--max-record", "66"],
        None => Vec::new(),
    };
    let (_listener, addr) = start_listener(opts, &csv, &args)?;
    let start = StdInstant::now();
    let status = Command::new(&opts.exe)
        .arg("send")
        .arg(format!("tcp://{addr}"))
        .arg(&input)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(io("running tether send"))?;
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err(BenchError::Failed(format!("tether send failed: {status}")));
    }
    check_csv(&csv, n)?;
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&csv);
    Ok(n as f64 / secs)
}

/// Every input line 0..n exactly once in the CSV (acked means written, so it is complete
/// the moment the sender exits).
fn check_csv(csv: &Path, n: u64) -> Result<(), BenchError> {
    let f = std::fs::File::open(csv).map_err(io(format!("reading {}", csv.display())))?;
    let mut seen = vec![false; n as usize];
    let mut rows = 0u64;
    for line in BufReader::with_capacity(1 << 20, f).lines().skip(1) {
        let line = line.map_err(io("reading the CSV"))?;
        let i = line
            .split(',')
            .nth(3)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| BenchError::Failed(format!("unexpected CSV row `{line}`")))?;
        let slot = seen
            .get_mut(i as usize)
            .ok_or_else(|| BenchError::Failed(format!("record {i} out of range")))?;
        if std::mem::replace(slot, true) {
            return Err(BenchError::Failed(format!("record {i} written twice")));
        }
        rows += 1;
    }
    if rows != n {
        return Err(BenchError::Failed(format!(
            "{rows} of {n} records in the CSV"
        )));
    }
    Ok(())
}

/// The tutorial's server (verbatim, tests/tutorial) with a client in its style: 32-byte
/// packets, each answered before the next. Records/s, or `None` without python3.
fn tutorial_rate(opts: &BenchOptions) -> Result<Option<f64>, BenchError> {
    const SERVER: &str = include_str!("../../tests/tutorial/tcp_server_csv.py");
    const CLIENT: &str = r#"
import socket, sys, time
n = int(sys.argv[1])
for attempt in range(100):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(('127.0.0.1', 5003))
        break
    except ConnectionRefusedError:
        time.sleep(0.05)
s.recv(1024)
packet = b'0' * 32
start = time.perf_counter()
for i in range(n):
    s.send(packet)
    s.recv(1024)
print(time.perf_counter() - start)
s.close()
"#;
    if Command::new("python3").arg("--version").output().is_err() {
        return Ok(None);
    }
    let dir = opts.dir.join("tutorial");
    std::fs::create_dir_all(&dir).map_err(io("creating the tutorial's directory"))?;
    let _server = Kid(Command::new("python3")
        .args(["-c", SERVER])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("starting the tutorial's server"))?);
    let out = Command::new("python3")
        .args(["-c", CLIENT, &opts.stop_and_wait_records.to_string()])
        .output()
        .map_err(io("running the tutorial-style client"))?;
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            BenchError::Failed(format!(
                "the tutorial client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some(opts.stop_and_wait_records as f64 / secs))
}

fn median_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Round trips of both kinds, interleaved in blocks of [`RTT_BLOCK`] so that both see the
/// same machine, all on one CPU (see [`Pinned`]): on this VM a ping-pong's time moves by a
/// factor of 1.3 from one moment to the next, so measured one after the other the ratio
/// said more of the moment than of Tether. Seconds: Tether's (median, p99), then raw TCP's.
fn round_trips(opts: &BenchOptions, rounds: u32) -> Result<[(f64, f64); 2], BenchError> {
    let rounds = rounds.max(1);
    // The listener gets the tokio workers it would have unpinned (tokio counts the CPUs
    // it may use), so that the code measured is the code users run.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let _pinned = Pinned::to_one_cpu();
    let mut raw = PingPong::start()?;
    let csv = opts.dir.join("rtt.csv");
    let mut tether = TetherRoundTrip::start(opts, &csv, workers)?;
    let cpu_before = cpu_seconds(tether.pid)?;
    let (mut raw_times, mut times) = (Vec::new(), Vec::new());
    let mut done = 0;
    while done < rounds {
        let n = RTT_BLOCK.min(rounds - done);
        for _ in 0..n {
            raw_times.push(raw.round()?);
        }
        for _ in 0..n {
            times.push(tether.round()?);
        }
        done += n;
    }
    // The listener also idled through the raw rounds: its CPU time is all Tether's work.
    let cpu = (cpu_seconds(tether.pid)? - cpu_before) / f64::from(rounds);
    eprintln!(
        "bench: the listener used {:.1} µs of CPU a round trip",
        cpu * 1e6
    );
    raw.finish()?;
    drop(tether);
    check_csv(&csv, u64::from(rounds))?;
    let _ = std::fs::remove_file(&csv);
    Ok([median_p99(times), median_p99(raw_times)])
}

/// This thread, and the threads and processes it starts, kept on one CPU while it lives;
/// the CPUs allowed before are restored when it is dropped. Without it, a round trip's time
/// depends on whether the scheduler puts the two ends on one virtual CPU or two: on this VM,
/// 20 µs against 120 µs for the same program (an idle virtual CPU is slow to wake), and
/// the two comparisons drew different lots.
struct Pinned(Option<nix::sched::CpuSet>);

impl Pinned {
    fn to_one_cpu() -> Self {
        use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
        use nix::unistd::Pid;
        let me = Pid::from_raw(0);
        let Ok(before) = sched_getaffinity(me) else {
            return Pinned(None);
        };
        let Some(cpu) = (0..CpuSet::count()).find(|&c| before.is_set(c).unwrap_or(false)) else {
            return Pinned(None);
        };
        let mut one = CpuSet::new();
        if one.set(cpu).is_err() || sched_setaffinity(me, &one).is_err() {
            eprintln!("bench: could not pin the round trips to one CPU; figures will move more");
            return Pinned(None);
        }
        Pinned(Some(before))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), before);
        }
    }
}

/// Rounds of each kind in a row before the other kind's turn.
const RTT_BLOCK: u32 = 50;

/// A raw TCP ping-pong: 16 bytes out, the same 16 back, by an echo thread.
struct PingPong {
    s: TcpStream,
    echo: std::thread::JoinHandle<std::io::Result<()>>,
    b: [u8; 16],
}

impl PingPong {
    fn start() -> Result<Self, BenchError> {
        let l = loopback()?;
        let addr = local(&l)?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = l.accept()?;
            s.set_nodelay(true)?;
            let mut b = [0u8; 16];
            loop {
                match s.read_exact(&mut b) {
                    Ok(()) => s.write_all(&b)?,
                    Err(_) => return Ok(()),
                }
            }
        });
        let s = TcpStream::connect(addr).map_err(io("connecting"))?;
        s.set_nodelay(true).map_err(io("setting TCP_NODELAY"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io("setting a timeout"))?;
        Ok(PingPong {
            s,
            echo,
            b: [7; 16],
        })
    }

    /// One round, seconds.
    fn round(&mut self) -> Result<f64, BenchError> {
        let t = StdInstant::now();
        self.s.write_all(&self.b).map_err(io("ping"))?;
        self.s.read_exact(&mut self.b).map_err(io("pong"))?;
        Ok(t.elapsed().as_secs_f64())
    }

    fn finish(self) -> Result<(), BenchError> {
        drop(self.s);
        join(self.echo)
    }
}

/// One 16-byte record at a time to a `tether listen`, each timed from `send` until its
/// acknowledgement arrived (the listener acknowledges after writing it to the CSV).
struct TetherRoundTrip {
    _listener: Kid,
    pid: u32,
    s: TcpStream,
    start: StdInstant,
    link: Link<HeapStorage>,
    tx: Vec<u8>,
    buf: Vec<u8>,
    out: Vec<u8>,
    sent: u64,
}

impl TetherRoundTrip {
    fn start(opts: &BenchOptions, csv: &Path, workers: usize) -> Result<Self, BenchError> {
        let (listener, addr) = start_listener_with(
            opts,
            csv,
            &[],
            &[("TOKIO_WORKER_THREADS", workers.to_string())],
        )?;
        let pid = listener.0.id();
        let s = TcpStream::connect(addr).map_err(io("connecting"))?;
        s.set_nodelay(true).map_err(io("setting TCP_NODELAY"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io("setting a timeout"))?;
        let mut cfg = Config::new(Role::Client, tether_host::random_session());
        cfg.window = 1;
        let link = Link::new(cfg, HeapStorage::new(1, 4, tether_core::link::MIN_FRAME))
            .map_err(|e| BenchError::Failed(format!("{e:?}")))?;
        let mut me = TetherRoundTrip {
            _listener: listener,
            pid,
            s,
            start: StdInstant::now(),
            tx: vec![0u8; link.transmit_len()],
            link,
            buf: vec![0u8; BUF],
            out: Vec::new(),
            sent: 0,
        };
        me.link.connect(now(me.start));
        me.exchange(|l| l.phase() == Phase::Established)?;
        Ok(me)
    }

    /// Sends what the link has to send and reads until `done`.
    fn exchange(&mut self, done: impl Fn(&Link<HeapStorage>) -> bool) -> Result<(), BenchError> {
        for _ in 0..10_000 {
            let t = now(self.start);
            while let Some(k) = self.link.poll_transmit(t, &mut self.tx) {
                self.out.extend_from_slice(&self.tx[..k]);
            }
            if !self.out.is_empty() {
                self.s.write_all(&self.out).map_err(io("writing"))?;
                self.out.clear();
            }
            if done(&self.link) {
                return Ok(());
            }
            let n = self.s.read(&mut self.buf).map_err(io("reading"))?;
            if n == 0 {
                return Err(BenchError::Failed(
                    "the listener closed the connection".into(),
                ));
            }
            self.link.handle_input(now(self.start), &self.buf[..n]);
        }
        Err(BenchError::Failed("round trip: no acknowledgement".into()))
    }

    /// One record sent and acknowledged, seconds.
    fn round(&mut self) -> Result<f64, BenchError> {
        let record = format!("{:08},{:07}", self.sent, 0);
        self.sent += 1;
        let t = StdInstant::now();
        self.link
            .send(record.as_bytes())
            .map_err(|e| BenchError::Failed(format!("send: {e:?}")))?;
        self.exchange(|l| l.unacked() == 0)?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// CPU time (user + system) a process used so far, seconds.
fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(io("reading the listener's CPU time"))?;
    // Fields after the command name (which is in parentheses): utime and stime are the
    // 12th and 13th, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(io("reading the listener's memory"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Failed("no VmRSS".into()))
}

/// The device counts of the memory curve: 100, 1,000, 10,000… below `devices`, and
/// `devices`.
pub fn memory_stages(devices: usize) -> Vec<usize> {
    let mut stages: Vec<usize> = std::iter::successors(Some(100usize), |n| n.checked_mul(10))
        .take_while(|&n| n < devices)
        .collect();
    if devices > 0 {
        stages.push(devices);
    }
    stages
}

/// `devices` devices connect to a new `tether listen`, send 100 records each (more than
/// the listener's window of 64, so that every receive slot of every session has been
/// used), wait for their acknowledgements and stay connected, idle (answering keepalives).
/// Returns the listener's RSS growth per connection, the growth, and the records checked in
/// the CSV. A listener of its own for each device count: measured on the way to 10,000 in
/// one listener, the 10,000 figure came out 5-10 % higher (53.7-54.4 MiB against
/// 49.1-51.1 MiB), the earlier devices' allocations spreading the later ones.
fn idle_devices_memory(opts: &BenchOptions, devices: usize) -> Result<(f64, f64, u64), BenchError> {
    const RECORDS: u32 = 100;
    let csv = opts.dir.join("devices.csv");
    let (listener, addr, rt) =
        listener_for_devices(opts, &csv, devices, &["--idle-timeout-ms", "60000"])?;
    let pid = listener.0.id();
    let before = rss(pid)?;
    // Settle, then measure while every device is connected and idle: the listener gives an
    // idle link's buffers back at its first idle turn 1 s after its last record (a
    // keepalive, within a second more) and returns freed memory to the system every 2 s.
    let (all_idle, failures, mut during) = stream_devices_staged(
        &rt,
        addr,
        &[devices],
        RECORDS,
        16,
        Duration::from_millis(3500),
        |_| rss(pid),
    )?;
    if all_idle < devices || !failures.is_empty() {
        return Err(BenchError::Failed(format!(
            "{all_idle} of {devices} devices streamed and went idle; {} failed, first: {}",
            failures.len(),
            failures.first().cloned().unwrap_or_default()
        )));
    }
    drop(listener);
    let expected = check_device_rows(&csv, devices, RECORDS)?;
    let _ = std::fs::remove_file(&csv);
    let during = during
        .pop()
        .ok_or_else(|| BenchError::Failed("the memory was not measured".into()))?;
    let grown = during.saturating_sub(before) as f64;
    Ok((grown / devices as f64, grown, expected))
}

/// One device: connect, stream `records`, wait for their acknowledgement, report idle, stay
/// connected (answering keepalives) until `hold` turns true, then close.
async fn idle_device(
    addr: SocketAddr,
    session: u32,
    records: u32,
    window: usize,
    idle: tokio::sync::mpsc::Sender<()>,
    mut hold: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let clock = tether_host::clock::Clock::new();
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("device {session}: connect: {e}"))?;
    let mut config = Config::new(Role::Client, session);
    config.window = window as u16;
    let mut link = Link::new(
        config,
        HeapStorage::new(window, 4, tether_core::link::MIN_FRAME),
    )
    .map_err(|e| format!("{e:?}"))?;
    link.connect(clock.now());
    let mut queued = 0;
    let mut tx = vec![0u8; link.transmit_len()];
    let mut buf = vec![0u8; 4096];
    let mut reported = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        while queued < records && link.can_send() {
            // 16 bytes: "00000042,0000017" (device, record), as the sweep checks them.
            let r = format!("{session:08},{queued:07}");
            link.send(r.as_bytes())
                .map_err(|e| format!("device {session}: {e:?}"))?;
            queued += 1;
        }
        let mut out = Vec::new();
        while let Some(k) = link.poll_transmit(clock.now(), &mut tx) {
            out.extend_from_slice(&tx[..k]);
        }
        if !out.is_empty() {
            s.write_all(&out).await.map_err(|e| {
                format!(
                    "device {session}: write ({:?}, {} records acknowledged of {queued}): {e}",
                    link.phase(),
                    queued - link.unacked()
                )
            })?;
        }
        while link.poll_event().is_some() {}
        match link.phase() {
            Phase::Closed => return Ok(()),
            Phase::Rejected | Phase::Dead => {
                let st = link.stats();
                return Err(format!(
                    "device {session}: link {:?} ({} frames heard, {} handshakes, {} of {queued} records acknowledged)",
                    link.phase(),
                    st.decoder.frames,
                    st.handshakes,
                    queued - link.unacked()
                ));
            }
            _ => {}
        }
        if !reported
            && queued == records
            && link.phase() == Phase::Established
            && link.unacked() == 0
        {
            reported = true;
            let _ = idle.send(()).await;
        }
        let wake = link
            .poll_timeout()
            .map(|t| clock.instant(t))
            .unwrap_or(deadline)
            .min(deadline);
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) => return Err(format!("device {session}: the listener closed the connection")),
                Ok(n) => link.handle_input(clock.now(), &buf[..n]),
                Err(e) => return Err(format!("device {session}: read: {e}")),
            },
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("device {session}: timed out"));
                }
                link.handle_timeout(clock.now());
            }
            r = hold.changed(), if reported && link.phase() == Phase::Established => {
                if r.is_err() || *hold.borrow() { link.close(); }
            }
        }
    }
}
