//! `tether`: the command line of Tether on Linux.
//!
//! `tether listen` logs devices to CSV; `tether send` streams lines to a listener;
//! `tether encode` and `tether decode` write and dissect single frames.
//!
//! One module per subcommand: its arguments (clap) and what it does with them. What they
//! share is here: the command enum, errors and exit codes, the async runtime, the signals that
//! stop a command, and the options every command that serves devices takes.

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether_host::options::Serving;

mod bridge;
mod demo;
mod frames;
mod http;
mod listen;
mod send;
mod sim;
mod top;

use bridge::BridgeArgs;
use demo::DemoArgs;
use frames::{DecodeArgs, EncodeArgs};
use listen::ListenArgs;
use send::SendArgs;
use sim::SimArgs;
use top::TopArgs;

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
    /// third of the way in (at most 10 s), every device is sent `status` and `output on`. At
    /// the end the listener stops cleanly, the CSV is checked (every device's sequence numbers
    /// run 0, 1, 2… with no gap or repeat) and a summary is printed. With --http it serves the
    /// dashboard and streams until Ctrl-C (or --seconds).
    ///
    /// Example: tether demo --devices 8 --seconds 10 --csv demo.csv
    ///          tether demo --http    (then open http://127.0.0.1:8080/)
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
    /// With --replay PATH the devices send a recorded device's stream instead (a
    /// `tether listen --csv-dir` directory, a --sink jsonl:FILE file, or a --csv file as text
    /// lines), each under its own identity, at the recorded pace divided by --speed (max: no
    /// waiting).
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
    /// Show a running listener's or bridge's dashboard in the terminal.
    ///
    /// The device table (records, records/s, retransmissions, corrupt and dropped frames,
    /// reconnects, last seen, commands pending) with each device's records/s as a sparkline,
    /// and a sparkline a field of one device's readings, redrawn every second from the
    /// dashboard's JSON API and event stream (`tether listen … --http`). Ctrl-C quits.
    /// When standard output is not a terminal (or with --once) it prints one frame.
    ///
    /// Example: tether top http://127.0.0.1:8080
    Top(TopArgs),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CliError {
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: io::Error },
    #[error("cannot write to standard output: {0}")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Encode(#[from] tether_core::frame::EncodeError),
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
    #[error(transparent)]
    Http(#[from] tether_host::http::HttpError),
    #[error(transparent)]
    Top(#[from] tether_host::top::TopError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("internal error: {0}")]
    Task(String),
}

/// Runs the command line; the process's exit code (0 done, 1 not everything delivered, 2 a
/// usage error or cannot start: README, "Exit codes").
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Encode(args) => frames::encode(args).map(|()| ExitCode::SUCCESS),
        Command::Decode(args) => frames::decode(args),
        Command::Listen(args) => runtime().and_then(|rt| rt.block_on(listen::listen(args))),
        // On a worker thread, not in `block_on`'s: there every read and write readiness
        // crossed threads (an eventfd write and two futex calls a record, measured with
        // strace), which halved `tether send --window 1`.
        Command::Send(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                tokio::spawn(send::send(args))
                    .await
                    .map_err(|e| CliError::Task(e.to_string()))?
            })
        }),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::demo(args))),
        Command::Sim(args) => runtime().and_then(|rt| rt.block_on(sim::sim(args))),
        Command::Bridge(args) => runtime().and_then(|rt| rt.block_on(bridge::bridge(args))),
        Command::Top(args) => runtime().and_then(|rt| rt.block_on(top::top(args))),
    };
    result.unwrap_or_else(|e| {
        eprintln!("tether: {e}");
        ExitCode::from(2)
    })
}

/// The limits of every command that serves devices (`listen`, `bridge`), flattened into
/// each; their defaults are `tether_host::options::Serving::DEFAULT`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ServeArgs {
    /// Connections served at once; more are refused.
    #[arg(long, default_value_t = Serving::DEFAULT.max_connections)]
    max_connections: usize,
    /// Device sessions kept (about 76 KiB each at the default window and record size; the
    /// bridge's about 140 KB, two links); at the limit a new device replaces the one idle
    /// longest with nothing pending.
    #[arg(long, default_value_t = Serving::DEFAULT.max_devices)]
    max_devices: usize,
    /// Milliseconds a new connection has to say HELLO.
    #[arg(long, default_value_t = Serving::DEFAULT.handshake_timeout.as_millis() as u64)]
    handshake_timeout_ms: u64,
    /// Milliseconds of silence after which a device (or the bridge's listener) is dropped
    /// (idle links send a PING every second, so this also detects half-open connections);
    /// also how long a peer may leave writes to it blocked (it reads nothing).
    #[arg(long, default_value_t = Serving::DEFAULT.idle_timeout.as_millis() as u64)]
    idle_timeout_ms: u64,
    /// Records each device may have in flight.
    #[arg(long, default_value_t = Serving::DEFAULT.window)]
    window: usize,
    /// The largest record accepted, in bytes (a bridge's: at most its listener's).
    #[arg(long, default_value_t = Serving::DEFAULT.max_record)]
    max_record: usize,
    /// The highest protocol version spoken (PROTOCOL.md 11.2): 2, compact frames and
    /// selective acknowledgements, with a device that offers it; 1 with one that does not,
    /// and with every device when set to 1.
    #[arg(long, default_value_t = Serving::DEFAULT.max_version)]
    max_version: u8,
}

impl ServeArgs {
    /// The values, for `tether_host::set_serving!`.
    pub(super) fn serving(&self) -> Serving {
        Serving {
            window: self.window,
            max_record: self.max_record,
            max_connections: self.max_connections,
            max_devices: self.max_devices,
            handshake_timeout: std::time::Duration::from_millis(self.handshake_timeout_ms),
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
            max_version: self.max_version,
        }
    }
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tether_host::console::init_log();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled, so a signal that arrives while the command starts up
/// (binding, reading the CSV) stops it cleanly instead of killing it.
pub(super) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
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

/// `n` and `noun`, with an `s` unless `n` is 1.
pub(super) fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
