//! `tether send`: lines from a file or standard input, one record each, to a listener.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tether_host::endpoint::Endpoint;
use tether_host::send::{Progress, SendOptions};

use super::{plural, CliError};

#[derive(Debug, clap::Args)]
pub(super) struct SendArgs {
    /// The listener, e.g. tcp://127.0.0.1:5003, or a Bluetooth device and channel:
    /// rfcomm://AA:BB:CC:DD:EE:FF/1 (rfcomm://hci1/AA:BB:CC:DD:EE:FF/1 from adapter hci1).
    endpoint: Endpoint,
    /// The lines to send; standard input if absent or "-".
    input: Option<PathBuf>,
    /// Records in flight (1 to 32768).
    #[arg(long, default_value_t = SendOptions::DEFAULT_WINDOW)]
    window: u16,
    /// The highest protocol version offered (PROTOCOL.md 11.2): 2, compact frames and
    /// selective acknowledgements, if the listener takes it (else 1); 1 for version 1 only.
    #[arg(long, default_value_t = tether_core::link::MAX_PROTOCOL_VERSION,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(tether_core::link::MAX_PROTOCOL_VERSION)))]
    max_version: u8,
    /// The longest line, in bytes. A longer line, or one starting with the byte 0x1E (it
    /// marks a typed record), cannot be sent: the lines before it are delivered, then tether
    /// stops with exit 1 naming it (see --skip-bad-lines).
    #[arg(long, default_value_t = SendOptions::DEFAULT_MAX_RECORD)]
    max_record: usize,
    /// Skip lines that cannot be sent, with a warning each (counted in the summary), instead
    /// of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Give up (exit 1) after this many seconds without progress: no line acknowledged
    /// while one is waiting, or no handshake completed. Reconnecting does not restart the
    /// count; a connection with nothing to send waits as long as the input does.
    #[arg(long, default_value_t = SendOptions::DEFAULT_GIVE_UP_AFTER.as_secs(), value_parser = seconds_at_least_1)]
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

pub(super) async fn send(args: SendArgs) -> Result<ExitCode, CliError> {
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
    opts.max_version = args.max_version;
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
