//! `tether listen`: devices' records into a CSV (or another sink), commands typed on
//! standard input, a status line on a terminal.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tether_host::endpoint::Endpoint;
use tether_host::listen::{ListenOptions, Listener};

use super::http::HttpArgs;
use super::{plural, shutdown_signal, CliError, ServeArgs};

#[derive(Debug, clap::Args)]
pub(super) struct ListenArgs {
    /// Where to listen, e.g. tcp://127.0.0.1:5003, tcp://[::1]:5003, Bluetooth RFCOMM:
    /// rfcomm://hci0/1 (adapter hci0, channel 1), rfcomm:///1 (the default adapter), or a
    /// serial port: serial:///dev/ttyACM0?baud=115200 (8N1 unless data=, parity=, stop=,
    /// flow=rtscts say otherwise). Several allowed.
    #[arg(required = true)]
    pub(super) endpoints: Vec<Endpoint>,
    /// The CSV file to append records to (created if missing).
    #[arg(long, required_unless_present_any = ["sink", "csv_dir"])]
    pub(super) csv: Option<PathBuf>,
    /// A directory of CSV files instead (created if missing): one file per record kind a
    /// device declares, its columns named (env.csv: host_time,device,session,seq,
    /// temperature (°C),…), tether-kinds.csv the declarations, tether-records.csv the
    /// rest and the marker rows.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["csv", "sink"])]
    pub(super) csv_dir: Option<PathBuf>,
    /// Where records go instead: csv:FILE (as --csv), JSON lines (one object a record,
    /// named fields) on standard output, jsonl:- (acknowledged once written and flushed),
    /// or appended to a file, jsonl:FILE (read back at a restart), or an MQTT broker,
    /// mqtt://HOST:PORT/PREFIX (each record one PUBLISH at QoS 1 on PREFIX/DEVICE/record,
    /// acknowledged once the broker acknowledged it; options after ?: state=FILE,
    /// client_id=ID, inflight=N, credentials=FILE; README: "Many sites into one broker"),
    /// or a PostgreSQL database, postgres://USER@HOST:PORT/DB (a table per record kind,
    /// acknowledged once committed; the password from PGPASSWORD, --password-file, or
    /// PGPASSFILE / ~/.pgpass, never in the URL).
    #[arg(long, value_name = "URL", conflicts_with = "csv", value_parser = SinkUrl)]
    pub(super) sink: Option<tether_host::sink::Destination>,
    /// The database's password, in a file of mode 600 (its first line), for --sink
    /// postgres://…
    #[arg(long, value_name = "FILE", requires = "sink")]
    pub(super) password_file: Option<PathBuf>,
    /// Acknowledge records only once they are on disk (fsync per batch).
    #[arg(long)]
    pub(super) fsync: bool,
    #[command(flatten)]
    pub(super) serve: ServeArgs,
    /// Speak the tutorial's raw protocol (greeting, "data received" after each chunk, one
    /// CSV row per chunk) so its scripts work unchanged. No framing, integrity or resume.
    #[arg(long)]
    pub(super) raw: bool,
    /// Authenticate devices: a file of `DEVICE_ID HEX_KEY` lines (mode 600), one a device.
    /// Devices without a key, with another key or without authentication are refused.
    #[arg(long, value_name = "FILE")]
    pub(super) keys: Option<PathBuf>,
    #[command(flatten)]
    pub(super) http: HttpArgs,
}

/// `--sink`'s parser: its error says what is wrong without repeating the value, which may
/// hold a password (clap's own would print it, into a terminal or a journal).
#[derive(Debug, Clone, Copy)]
struct SinkUrl;

impl clap::builder::TypedValueParser for SinkUrl {
    type Value = tether_host::sink::Destination;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        use clap::error::ErrorKind;
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(ErrorKind::InvalidUtf8, "--sink: the URL is not UTF-8\n").with_cmd(cmd)
        })?;
        text.parse().map_err(|e: String| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("--sink: {e}\n")).with_cmd(cmd)
        })
    }
}

pub(super) async fn listen(args: ListenArgs) -> Result<ExitCode, CliError> {
    let shutdown = shutdown_signal();
    use tether_host::sink::Destination;
    let (csv, mut sink) = match (args.csv, args.sink, args.csv_dir) {
        (_, _, Some(dir)) => (PathBuf::new(), Some(Destination::CsvDir(dir))),
        (_, Some(Destination::Csv(path)), _) => (path, None),
        (csv, sink, _) => (csv.unwrap_or_default(), sink),
    };
    match (&mut sink, args.password_file) {
        (Some(Destination::Postgres(url)), Some(file)) => url.password_file = Some(file),
        (_, Some(_)) => {
            return Err(CliError::Listen(tether_host::listen::ListenError::Options(
                "--password-file is the password of --sink postgres://…".into(),
            )))
        }
        _ => {}
    }
    let target = sink
        .as_ref()
        .map_or_else(|| csv.display().to_string(), ToString::to_string);
    let mut opts = ListenOptions::new(args.endpoints, csv);
    opts.sink = sink;
    opts.fsync = args.fsync;
    tether_host::set_serving!(opts, args.serve.serving());
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
    let endpoints = listener.describe_endpoints();
    for a in &endpoints {
        tracing::info!("listening on {a}, writing {target}");
    }
    let title = format!("tether listen {}", endpoints.join(" "));
    let dashboard = args.http.start(listener.observer(), title).await?;
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
    if let Some(d) = dashboard {
        d.stop().await;
    }
    tether_host::console::clear_status();
    tracing::info!(
        "done: {} from {} over {} ({} dropped), {}",
        plural(summary.records, "record"),
        plural(summary.devices as u64, "device"),
        plural(summary.connections, "connection"),
        summary.dropped_connections,
        plural(summary.retransmissions, "retransmission")
    );
    if summary.output_gone {
        // As a shell reports a program that SIGPIPE ended (128 + 13): the pipe's reader left.
        return Ok(ExitCode::from(OUTPUT_GONE));
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit status when standard output's reader went away (`--sink jsonl:- | head`).
const OUTPUT_GONE: u8 = 141;

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
