//! `tether`: the command line of Tether on Linux.
//!
//! `tether listen` logs devices to CSV; `tether send` streams lines to a listener;
//! `tether encode` and `tether decode` write and dissect single frames.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tether_core::frame::{self, Decoder, DecoderStats, Flags, Header, Kind};
use tether_host::endpoint::Endpoint;
use tether_host::listen::{ListenOptions, Listener};
use tether_host::send::{Progress, SendOptions};

/// Stream data between microcontrollers and Linux hosts, reliably.
#[derive(Debug, Parser)]
#[command(name = "tether", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept devices and log their records to a CSV file.
    ///
    /// Every device is its own session: a device that reconnects resumes without loss or
    /// duplicates. A record is acknowledged only after it is written to the CSV (with
    /// --fsync: on disk). Columns: host_time (RFC 3339, UTC), device (its session id), seq,
    /// then the record's fields.
    ///
    /// Commands to devices: type lines on standard input, `DEVICE COMMAND` (DEVICE as in the
    /// CSV's device column) or `* COMMAND` for every device; their acknowledgements are
    /// logged. Ctrl-C or SIGTERM: stop accepting, write and acknowledge what arrived, exit 0.
    ///
    /// Example: tether listen tcp://127.0.0.1:5003 --csv readings.csv
    Listen(ListenArgs),
    /// Stream lines (from a file or standard input) to a listener, one record each.
    ///
    /// Each line is sent as soon as it is read. Reconnects and resumes on a broken
    /// connection (with --state-file also after tether itself was stopped or killed).
    /// Commands the listener sends (`* status` typed at it) are printed on standard output,
    /// one line each: the command's text, with backslash, newline, carriage return, tab,
    /// other control characters and bytes that are not UTF-8 written as \\, \n, \r, \t and
    /// \xNN.
    ///
    /// Exit codes: 0 every line acknowledged; 1 ran but did not deliver everything (gave up,
    /// refused by the listener, stopped at a line it cannot send, input unreadable midway),
    /// the message saying how many lines were acknowledged; 2 usage error or cannot start (a
    /// bad option, an endpoint one cannot connect to, a listener of the wrong kind, no
    /// Bluetooth, an unreadable input file or a state file that does not match it).
    ///
    /// Example: printf '21.5,ok\n22.0,ok\n' | tether send tcp://127.0.0.1:5003
    Send(SendArgs),
    /// Run a listener on loopback and simulated devices streaming to it, then check the CSV.
    ///
    /// The devices run the firmware-sim device model (the code a microcontroller runs):
    /// typed readings (counter, time, temperature, pressure, output) at a fixed period; a
    /// third of the way in, every device is sent `status` and `output on`. At the end the
    /// listener stops cleanly, the CSV is checked (every device's sequence numbers run
    /// 0, 1, 2… with no gap or repeat) and a summary is printed.
    ///
    /// Example: tether demo --devices 8 --seconds 10 --csv demo.csv
    Demo(DemoArgs),
    /// Run simulated devices against a listener through a fault injector, then check the CSV.
    ///
    /// Each device sends --records typed readings (counter, time, temperature, pressure,
    /// output) through seeded faults: corrupted bytes, lost frames, random splits and
    /// connection cuts (spread over the devices). With --verify, the listener's CSV is checked
    /// afterwards: every reading of these devices exactly once, in order, with the values the
    /// device's sensor produced. Exits 0 only if all readings were acknowledged and (with
    /// --verify) the CSV is exact.
    ///
    /// Example: tether sim tcp://127.0.0.1:5003 --devices 4 --records 10000
    ///          --faults corrupt=0.01,loss=0.01,cuts=20 --seed 7 --verify readings.csv
    Sim(SimArgs),
    /// Forward devices' sessions to a listener: the Raspberry Pi's job.
    ///
    /// Devices connect to FROM (rfcomm://hci0/1, or tcp://…); each device's session is
    /// forwarded to the `tether listen` at TO (tcp://HOST:PORT) in the device's own name, and
    /// a device's record is acknowledged only once the listener has acknowledged it (written
    /// it). While the listener is unreachable, devices get no credit (they wait, nothing is
    /// dropped) and the bridge reconnects with backoff. TO may also be csv:FILE: the bridge
    /// then writes the CSV itself, as `tether listen` does.
    ///
    /// Example: tether bridge rfcomm://hci0/1 tcp://192.0.2.10:5003
    Bridge(BridgeArgs),
    /// Write one Tether frame (COBS-encoded, delimiter included) to standard output.
    ///
    /// The payload is read from standard input, or taken from --payload.
    ///
    /// Example: printf 'hello' | tether encode --kind data --seq 7 > frame.bin
    Encode(EncodeArgs),
    /// Dissect a stream of Tether frames: one line per frame or dropped frame, then the
    /// decoder's statistics on standard error.
    ///
    /// Exits 0 if every frame was good and the stream ended on a frame boundary, 1 otherwise.
    ///
    /// Example: tether decode capture.bin
    Decode(DecodeArgs),
}

#[derive(Debug, clap::Args)]
struct ListenArgs {
    /// Where to listen, e.g. tcp://127.0.0.1:5003, tcp://[::1]:5003, Bluetooth RFCOMM:
    /// rfcomm://hci0/1 (adapter hci0, channel 1), rfcomm:///1 (the default adapter), or a
    /// serial port: serial:///dev/ttyACM0?baud=115200 (8N1 unless data=, parity=, stop=,
    /// flow=rtscts say otherwise). Several allowed.
    #[arg(required = true)]
    endpoints: Vec<Endpoint>,
    /// The CSV file to append records to (created if missing).
    #[arg(long)]
    csv: PathBuf,
    /// Acknowledge records only once they are on disk (fsync per batch).
    #[arg(long)]
    fsync: bool,
    /// Connections served at once; more are refused.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Device sessions kept (about 76 KiB each at the default window and record size); at
    /// the limit a new device replaces the one idle longest with nothing pending.
    #[arg(long, default_value_t = 256)]
    max_devices: usize,
    /// Milliseconds a new connection has to say HELLO.
    #[arg(long, default_value_t = 5_000)]
    handshake_timeout_ms: u64,
    /// Milliseconds of silence after which a device is dropped (idle devices send a PING
    /// every second, so this also detects half-open connections); also how long a device
    /// may leave the listener's writes to it blocked (it reads nothing).
    #[arg(long, default_value_t = 10_000)]
    idle_timeout_ms: u64,
    /// Records each device may have in flight.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// The largest record accepted, in bytes.
    #[arg(long, default_value_t = 1024)]
    max_record: usize,
    /// Speak the tutorial's raw protocol (greeting, "data received" after each chunk, one
    /// CSV row per chunk) so its scripts work unchanged. No framing, integrity or resume.
    #[arg(long)]
    raw: bool,
    /// Authenticate devices: a file of `DEVICE_ID HEX_KEY` lines (mode 600), one a device.
    /// Devices without a key, with another key or without authentication are refused.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// The listener, e.g. tcp://127.0.0.1:5003, or a Bluetooth device and channel:
    /// rfcomm://AA:BB:CC:DD:EE:FF/1 (rfcomm://hci1/AA:BB:CC:DD:EE:FF/1 from adapter hci1).
    endpoint: Endpoint,
    /// The lines to send; standard input if absent or "-".
    input: Option<PathBuf>,
    /// Records in flight (1 to 32768).
    #[arg(long, default_value_t = 64)]
    window: u16,
    /// The longest line, in bytes. A longer line, or one starting with the byte 0x1E (it
    /// marks a typed record), cannot be sent: the lines before it are delivered, then tether
    /// stops with exit 1 naming it (see --skip-bad-lines).
    #[arg(long, default_value_t = 1024)]
    max_record: usize,
    /// Skip lines that cannot be sent, with a warning each (counted in the summary), instead
    /// of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Give up (exit 1) after this many seconds without progress: no line acknowledged
    /// while one is waiting, or no handshake completed. Reconnecting does not restart the
    /// count; a connection with nothing to send waits as long as the input does.
    #[arg(long, default_value_t = 30, value_parser = seconds_at_least_1)]
    give_up_after: u64,
    /// Remember the session and the position of the first unacknowledged line in FILE
    /// (made if missing, updated as lines are acknowledged). Run again with the same FILE
    /// and input after tether was stopped or killed, it resumes there: every line is
    /// delivered once. The input must be a file (a path, or standard input redirected from
    /// one); lines may be appended to it between runs, nothing else changed.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// Speak the tutorial's raw protocol to a tutorial-style server: each line in chunks of
    /// 32 bytes, waiting for the server's answer after each.
    #[arg(long, conflicts_with_all = ["state_file", "skip_bad_lines", "key_file"])]
    raw: bool,
    /// Authenticate with this device's key: a file with one `DEVICE_ID HEX_KEY` line (mode
    /// 600). Keys are never taken from the command line.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BridgeArgs {
    /// Where devices connect, e.g. rfcomm://hci0/1 or rfcomm:///1 (default adapter), or
    /// tcp://ADDRESS:PORT.
    from: Endpoint,
    /// The listener to forward to (tcp://HOST:PORT), or csv:FILE to write a CSV here.
    to: tether_host::bridge::Target,
    /// Records each device may have in flight.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// The largest record, in bytes (at most the listener's --max-record).
    #[arg(long, default_value_t = 1024)]
    max_record: usize,
    /// Device connections served at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Device sessions kept (about 140 KB each at the default window and record size); at
    /// the limit a new device replaces the one idle longest with nothing pending.
    #[arg(long, default_value_t = 256)]
    max_devices: usize,
    /// Milliseconds of silence after which a device or the listener is dropped.
    #[arg(long, default_value_t = 10_000)]
    idle_timeout_ms: u64,
    /// The longest wait, in milliseconds, between attempts to reach the listener.
    #[arg(long, default_value_t = 5_000)]
    max_backoff_ms: u64,
    /// Milliseconds a new device connection has to say HELLO.
    #[arg(long, default_value_t = 5_000)]
    handshake_timeout_ms: u64,
    /// With csv:FILE: acknowledge records only once they are on disk (fsync per batch), as
    /// tether listen --fsync. Forwarding to a listener, give that listener --fsync.
    #[arg(long)]
    fsync: bool,
    /// With csv:FILE: authenticate devices, as tether listen --keys (a file of
    /// `DEVICE_ID HEX_KEY` lines, mode 600). Not yet when forwarding to a listener.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// The listener, e.g. tcp://127.0.0.1:5003.
    endpoint: Endpoint,
    /// Simulated devices.
    #[arg(long, default_value_t = 4)]
    devices: usize,
    /// Readings each device sends.
    #[arg(long, default_value_t = 1000)]
    records: u32,
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
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 4)]
    devices: usize,
    /// Seconds the devices stream.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The CSV file to write (replaced if it exists).
    #[arg(long, default_value = "tether-demo.csv")]
    csv: PathBuf,
    /// Milliseconds between a device's readings.
    #[arg(long, default_value_t = 1)]
    period_ms: u32,
}

#[derive(Debug, clap::Args)]
struct EncodeArgs {
    /// Frame kind.
    #[arg(long, value_enum, default_value_t = KindArg::Data)]
    kind: KindArg,
    /// Sequence number.
    #[arg(long, default_value_t = 0)]
    seq: u32,
    /// Acknowledgement number; setting it (or --credit) sets the ACK flag.
    #[arg(long)]
    ack: Option<u32>,
    /// Credit granted to the peer; setting it (or --ack) sets the ACK flag.
    #[arg(long)]
    credit: Option<u16>,
    /// The payload as text, instead of reading it from standard input.
    #[arg(long)]
    payload: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DecodeArgs {
    /// The captured stream; standard input if absent or "-".
    input: Option<PathBuf>,
    /// The largest payload to accept; longer frames are dropped as too long.
    #[arg(long, default_value_t = u16::MAX)]
    max_payload: u16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Hello,
    Welcome,
    Reject,
    Data,
    Ack,
    Ping,
    Close,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::Hello => Kind::Hello,
            KindArg::Welcome => Kind::Welcome,
            KindArg::Reject => Kind::Reject,
            KindArg::Data => Kind::Data,
            KindArg::Ack => Kind::Ack,
            KindArg::Ping => Kind::Ping,
            KindArg::Close => Kind::Close,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: io::Error },
    #[error("cannot write to standard output: {0}")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Encode(#[from] frame::EncodeError),
    #[error(transparent)]
    Listen(#[from] tether_host::listen::ListenError),
    #[error(transparent)]
    Send(#[from] tether_host::send::SendError),
    #[error(transparent)]
    Keys(#[from] tether_host::keys::KeyError),
    #[error(transparent)]
    RawSend(#[from] tether_host::raw::RawSendError),
    #[error(transparent)]
    Demo(#[from] tether_host::demo::DemoError),
    #[error("{0}")]
    Sim(String),
    #[error(transparent)]
    Bridge(#[from] tether_host::bridge::BridgeError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("internal error: {0}")]
    Task(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Encode(args) => encode(args).map(|()| ExitCode::SUCCESS),
        Command::Decode(args) => decode(args),
        Command::Listen(args) => runtime().and_then(|rt| rt.block_on(listen(args))),
        // On a worker thread, not in `block_on`'s: there every read and write readiness
        // crossed threads (an eventfd write and two futex calls a record, measured with
        // strace), which halved `tether send --window 1`.
        Command::Send(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                tokio::spawn(send(args))
                    .await
                    .map_err(|e| CliError::Task(e.to_string()))?
            })
        }),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo(args))),
        Command::Sim(args) => runtime().and_then(|rt| rt.block_on(sim(args))),
        Command::Bridge(args) => runtime().and_then(|rt| rt.block_on(bridge(args))),
    };
    result.unwrap_or_else(|e| {
        eprintln!("tether: {e}");
        ExitCode::from(2)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tether_host::console::init_log();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled, so a signal that arrives while the command starts up
/// (binding, reading the CSV) stops it cleanly instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            }
            // Without signal handlers (never seen on Linux) the default actions apply.
            _ => std::future::pending().await,
        }
    }
}

async fn listen(args: ListenArgs) -> Result<ExitCode, CliError> {
    let shutdown = shutdown_signal();
    let mut opts = ListenOptions::new(args.endpoints, args.csv);
    opts.fsync = args.fsync;
    opts.max_connections = args.max_connections;
    opts.max_devices = args.max_devices;
    opts.handshake_timeout = Duration::from_millis(args.handshake_timeout_ms);
    opts.idle_timeout = Duration::from_millis(args.idle_timeout_ms);
    opts.window = args.window;
    opts.max_record = args.max_record;
    opts.raw = args.raw;
    if let Some(path) = &args.keys {
        let keys = tether_host::keys::load_table(path)?;
        tracing::info!(
            "authenticating devices: {} keys from {}",
            keys.len(),
            path.display()
        );
        opts.keys = Some(std::sync::Arc::new(keys));
    }
    let listener = Listener::bind(opts.clone()).await?;
    for a in listener.describe_endpoints() {
        tracing::info!("listening on {a}, writing {}", opts.csv.display());
    }
    // Commands from standard input: `DEVICE COMMAND` or `* COMMAND` (see `console`: a
    // terminal is read only in the foreground, and the reader never holds the process).
    let commands = listener.commands();
    tether_host::console::read_lines(move |line| command_line(&commands, line));
    // A live status line on a terminal (silent otherwise): records/s, devices, records.
    if io::stderr().is_terminal() {
        let status = listener.status();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let (records, devices, connected) = status.snapshot();
                tether_host::console::show_status(&format!(
                    "{records} records, {}/s, {} ({connected} connected)",
                    records - last,
                    plural(devices as u64, "device")
                ));
                last = records;
            }
        });
    }
    let summary = listener.run(shutdown).await?;
    tether_host::console::clear_status();
    tracing::info!(
        "done: {} from {} over {} ({} dropped), {}",
        plural(summary.records, "record"),
        plural(summary.devices as u64, "device"),
        plural(summary.connections, "connection"),
        summary.dropped_connections,
        plural(summary.retransmissions, "retransmission")
    );
    Ok(ExitCode::SUCCESS)
}

/// `n` and `noun`, with an `s` unless `n` is 1.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// One command line typed at a listener: `DEVICE COMMAND` or `* COMMAND`.
fn command_line(commands: &tether_host::listen::Commands, line: &str) {
    let line = line.trim();
    let Some((who, cmd)) = line.split_once(char::is_whitespace) else {
        if !line.is_empty() {
            tracing::warn!("command lines are `DEVICE COMMAND` or `* COMMAND`");
        }
        return;
    };
    let device = if who == "*" {
        None
    } else {
        match u32::from_str_radix(who, 16) {
            Ok(d) => Some(d),
            Err(_) => {
                tracing::warn!("`{who}` is not a device id (hex, as in the CSV)");
                return;
            }
        }
    };
    match commands.send(device, cmd.trim().as_bytes()) {
        0 if device.is_none() => tracing::warn!("no device is known yet: command not sent"),
        0 => {
            let known: Vec<String> = commands
                .devices()
                .iter()
                .map(|d| format!("{d:08x}"))
                .collect();
            tracing::warn!("no such device: {who} (known: {})", known.join(", "))
        }
        n => tracing::info!("command queued for {}", plural(n as u64, "device")),
    }
}

async fn bridge(args: BridgeArgs) -> Result<ExitCode, CliError> {
    let shutdown = shutdown_signal();
    use tether_host::bridge::{Bridge, BridgeOptions, Target};
    let to = match args.to {
        Target::Upstream(to) => to,
        Target::Csv(csv) => {
            // Writing locally, the bridge is a listener, with the listener's options.
            return listen(ListenArgs {
                endpoints: vec![args.from],
                csv,
                fsync: args.fsync,
                max_connections: args.max_connections,
                max_devices: args.max_devices,
                handshake_timeout_ms: args.handshake_timeout_ms,
                idle_timeout_ms: args.idle_timeout_ms,
                window: args.window,
                max_record: args.max_record,
                raw: false,
                keys: args.keys,
            })
            .await;
        }
    };
    // Options of a CSV written here, refused rather than dropped when forwarding.
    let only_csv = |option: &str, instead: &str| {
        CliError::Bridge(tether_host::bridge::BridgeError::Options(format!(
            "{option} applies to csv:FILE only (the bridge writing the CSV itself); {instead}"
        )))
    };
    if args.fsync {
        return Err(only_csv(
            "--fsync",
            "forwarding to a listener, the listener writes: give it --fsync",
        ));
    }
    if args.keys.is_some() {
        return Err(only_csv(
            "--keys",
            "authenticated links through the bridge to a listener are not supported yet",
        ));
    }
    let mut opts = BridgeOptions::new(vec![args.from], to);
    opts.window = args.window;
    opts.max_record = args.max_record;
    opts.max_connections = args.max_connections;
    opts.max_devices = args.max_devices;
    opts.handshake_timeout = Duration::from_millis(args.handshake_timeout_ms);
    opts.idle_timeout = Duration::from_millis(args.idle_timeout_ms);
    opts.max_backoff = Duration::from_millis(args.max_backoff_ms.max(100));
    let bridge = Bridge::bind(opts.clone()).await?;
    for a in bridge.describe_endpoints() {
        tracing::info!("bridging devices on {a} to {}", opts.to);
    }
    let s = bridge.run(shutdown).await?;
    tracing::info!(
        "done: {} records forwarded and acknowledged from {} devices over {} connections ({} dropped); {} upstream connections",
        s.forwarded,
        s.devices,
        s.connections,
        s.dropped_connections,
        s.upstream_connections
    );
    Ok(ExitCode::SUCCESS)
}

async fn sim(args: SimArgs) -> Result<ExitCode, CliError> {
    let opts = tether_host::sim::SimOptions {
        endpoint: args.endpoint,
        devices: args.devices.max(1),
        records: args.records,
        faults: args.faults,
        seed: args.seed,
        period_ms: args.period_ms.max(1),
        timeout: Duration::from_secs(args.timeout),
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

async fn demo(args: DemoArgs) -> Result<ExitCode, CliError> {
    let opts = tether_host::demo::DemoOptions {
        devices: args.devices,
        seconds: args.seconds,
        csv: args.csv,
        period_ms: args.period_ms.max(1),
    };
    let s = tether_host::demo::run(&opts).await?;
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
    println!("  CSV: {}", opts.csv.display());
    Ok(ExitCode::SUCCESS)
}

/// The lines to send: a file, or standard input for none or "-", and its name for messages.
fn open_input(path: Option<&std::path::Path>) -> Result<(File, String), CliError> {
    match path {
        Some(p) if p.as_os_str() != "-" => {
            let file = File::open(p).map_err(|source| CliError::Read {
                what: p.display().to_string(),
                source,
            })?;
            let name = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
            Ok((file, name.display().to_string()))
        }
        _ => {
            // A file of its own on descriptor 0, read with blocking reads on a thread that the
            // process does not wait for at exit (a terminal or an idle pipe may never end).
            use std::os::fd::AsFd;
            let fd = io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| CliError::Read {
                    what: "standard input".into(),
                    source,
                })?;
            Ok((File::from(fd), "standard input".into()))
        }
    }
}

/// `--give-up-after`: whole seconds, at least 1.
fn seconds_at_least_1(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a whole number of seconds".into()),
    }
}

/// How `tether send` reports: a status line on a terminal, commands on standard output.
struct SendReport {
    terminal: bool,
    started: std::time::Instant,
    last_shown: std::time::Instant,
    stdout_failed: bool,
}

impl tether_host::send::Observer for SendReport {
    fn progress(&mut self, p: Progress) {
        if self.terminal && self.last_shown.elapsed() > Duration::from_millis(200) {
            self.last_shown = std::time::Instant::now();
            let rate = p.acked as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            tether_host::console::show_status(&format!(
                "{} acknowledged of {} read, {rate:.0}/s",
                plural(p.acked, "line"),
                p.read
            ));
        }
    }

    fn command(&mut self, seq: u32, command: &[u8]) {
        let text = tether_host::send::escape_command(command);
        tracing::info!("command #{seq} from the listener: {text}");
        let mut out = io::stdout().lock();
        if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
            if !std::mem::replace(&mut self.stdout_failed, true) {
                tracing::warn!("cannot print commands on standard output: {e}");
            }
        }
    }

    fn skipped(&mut self, bad: &tether_host::send::BadLine) {
        tracing::warn!("skipped {bad}");
    }
}

async fn send(args: SendArgs) -> Result<ExitCode, CliError> {
    use std::io::Seek;
    use tether_host::send::{state::StateFile, Input, SendError};
    let (mut file, name) = open_input(args.input.as_deref())?;
    if args.raw {
        let input = tokio::io::BufReader::new(tokio::fs::File::from_std(file));
        // Started, a raw send that fails did not deliver everything: exit 1.
        return match tether_host::raw::send(&args.endpoint, input).await {
            Ok(chunks) => {
                tracing::info!("{chunks} chunks sent and answered");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("tether: {e}");
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let mut opts = SendOptions::new(args.endpoint);
    opts.window = args.window;
    opts.max_record = args.max_record;
    opts.skip_bad_lines = args.skip_bad_lines;
    if let Some(path) = &args.key_file {
        opts.key = Some(tether_host::keys::load_one(path)?);
    }
    opts.give_up_after = Duration::from_secs(args.give_up_after);
    if let Some(path) = &args.state_file {
        let state = |e: &dyn std::fmt::Display| CliError::Send(SendError::State(e.to_string()));
        let opened = StateFile::open(path, &file, &name, opts.session).map_err(|e| state(&e))?;
        if let Some(notice) = &opened.notice {
            tracing::warn!("{}: {notice}", path.display());
        }
        let offset = opened.saved.position.offset;
        file.seek(io::SeekFrom::Start(offset))
            .map_err(|e| state(&format!("cannot read {name} from byte {offset}: {e}")))?;
        opts.state = Some(std::sync::Arc::new(opened));
    }
    let started = std::time::Instant::now();
    let report = SendReport {
        terminal: io::stderr().is_terminal(),
        started,
        last_shown: started,
        stdout_failed: false,
    };
    let result =
        tether_host::send::send_observed(&opts, Input::Blocking(Box::new(file)), report).await;
    tether_host::console::clear_status();
    let summary = match result {
        Ok(s) => s,
        Err(e) if e.is_usage() => return Err(e.into()),
        Err(e) => {
            eprintln!("tether: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let mut extra = String::new();
    if summary.skipped > 0 {
        extra += &format!(
            ", {} skipped (not sendable)",
            plural(summary.skipped, "line")
        );
    }
    if summary.already_delivered > 0 {
        extra += &format!(
            ", {} of them delivered before the restart",
            summary.already_delivered
        );
    }
    if summary.commands > 0 {
        extra += &format!(", {} received", plural(summary.commands, "command"));
    }
    tracing::info!(
        "{} acknowledged in {secs:.2} s ({:.0}/s){extra}, {}, {}",
        plural(summary.records, "line"),
        summary.records as f64 / secs.max(1e-6),
        plural(u64::from(summary.reconnects), "reconnect"),
        plural(u64::from(summary.retransmissions), "retransmission")
    );
    Ok(ExitCode::SUCCESS)
}

fn encode(args: EncodeArgs) -> Result<(), CliError> {
    let payload = match args.payload {
        Some(text) => text.into_bytes(),
        None => {
            let mut buf = Vec::new();
            io::stdin()
                .read_to_end(&mut buf)
                .map_err(|source| CliError::Read {
                    what: "standard input".into(),
                    source,
                })?;
            buf
        }
    };
    let with_ack = args.ack.is_some() || args.credit.is_some();
    let header = Header {
        kind: args.kind.into(),
        flags: if with_ack { Flags::ACK } else { Flags::NONE },
        seq: args.seq,
        ack: args.ack.unwrap_or(0),
        credit: args.credit.unwrap_or(0),
    };
    let mut out = vec![0u8; frame::max_encoded_len(payload.len())];
    let n = frame::encode(&header, &payload, &mut out)?;
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&out[..n])
        .and_then(|()| stdout.flush())
        .map_err(CliError::Write)
}

fn decode(args: DecodeArgs) -> Result<ExitCode, CliError> {
    let (what, mut reader): (String, Box<dyn Read>) = match &args.input {
        Some(p) if p.as_os_str() != "-" => {
            let file = File::open(p).map_err(|source| CliError::Read {
                what: p.display().to_string(),
                source,
            })?;
            (p.display().to_string(), Box::new(file))
        }
        _ => ("standard input".into(), Box::new(io::stdin().lock())),
    };
    let mut decoder = Decoder::new(vec![0u8; frame::raw_len(usize::from(args.max_payload))]);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(CliError::Read { what, source }),
        };
        let mut input = &chunk[..n];
        while let Some(result) = decoder.decode(&mut input) {
            let line = match result {
                Ok(f) => describe(&f.header, f.payload),
                Err(e) => format!("dropped: {e}"),
            };
            writeln!(out, "{line}").map_err(CliError::Write)?;
        }
    }
    out.flush().map_err(CliError::Write)?;
    let stats = decoder.stats();
    eprintln!("{}", summary(&stats));
    let clean = stats.dropped() == 0 && !decoder.in_frame();
    if decoder.in_frame() {
        eprintln!("tether: the stream ended inside a frame (no closing 0x00)");
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line for a good frame: header fields, then the payload with non-printable bytes
/// escaped.
fn describe(h: &Header, payload: &[u8]) -> String {
    let kind = format!("{:?}", h.kind).to_uppercase();
    let ack = if h.flags.contains(Flags::ACK) {
        format!(" ack={} credit={}", h.ack, h.credit)
    } else {
        String::new()
    };
    format!(
        "{kind} seq={}{ack} len={} payload=\"{}\"",
        h.seq,
        payload.len(),
        payload.escape_ascii()
    )
}

fn summary(s: &DecoderStats) -> String {
    format!(
        "{} bytes, {} frames, {} dropped (too long {}, COBS {}, CRC {}, header {})",
        s.bytes,
        s.frames,
        s.dropped(),
        s.too_long,
        s.cobs_errors,
        s.crc_errors,
        s.header_errors
    )
}
