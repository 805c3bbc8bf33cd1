//! What `tether` shows on and reads from its terminal: the log, a live status line, and
//! command lines typed at a listener.
//!
//! Three rules, each from a way the terminal went wrong before:
//! - the log has colours only when standard error is a terminal (log files get plain text);
//! - the status line is erased before a log line is written, so the two never run into one
//!   another (it is drawn again at its next tick);
//! - standard input is read by a plain thread that is never waited for, so an open pipe or
//!   a terminal never keeps the process alive after Ctrl-C or SIGTERM; and a terminal is
//!   read only while `tether` is in its foreground process group, so `tether listen … &`
//!   in an interactive shell is not stopped by the terminal (`Stopped (tty input)`).

use std::io::{self, BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Whether a status line is on the screen (and must be erased before a log line).
static STATUS_SHOWN: AtomicBool = AtomicBool::new(false);
/// Serialises the status line and log lines on standard error.
static STDERR: Mutex<()> = Mutex::new(());

/// Erases the current terminal line: carriage return, then "erase in line".
const ERASE_LINE: &[u8] = b"\r\x1b[2K";

/// Sets up the log on standard error: `RUST_LOG` filters (default `info`), colours only on a
/// terminal, and status-line aware. Call once, before anything logs.
/// The dashboard's copy of the log (`crate::http::log`) rides beside it, off until a
/// dashboard starts.
pub fn init_log() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let ansi = io::stderr().is_terminal();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(|| LogWriter)
        .with_ansi(ansi);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(terminal)
        .with(crate::http::log::Layer)
        .try_init();
}

/// Standard error for one log event: erases the status line first if one is shown.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let _guard = STDERR.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = io::stderr().lock();
        if STATUS_SHOWN.swap(false, Ordering::Relaxed) {
            err.write_all(ERASE_LINE)?;
        }
        err.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Draws `text` as the status line on standard error (a terminal), replacing the one before.
pub fn show_status(text: &str) {
    let _guard = STDERR.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = io::stderr().lock();
    let _ = err
        .write_all(ERASE_LINE)
        .and_then(|()| err.write_all(text.as_bytes()))
        .and_then(|()| err.flush());
    STATUS_SHOWN.store(true, Ordering::Relaxed);
}

/// Erases the status line, if one is shown (before the program's last words).
pub fn clear_status() {
    let _guard = STDERR.lock().unwrap_or_else(|e| e.into_inner());
    if STATUS_SHOWN.swap(false, Ordering::Relaxed) {
        let _ = io::stderr().write_all(ERASE_LINE);
    }
}

/// How standard input is read for commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A terminal: read while `tether` is in its foreground process group.
    Terminal,
    /// A pipe, a file or a socket: read to its end.
    Stream,
}

impl Input {
    /// What standard input is.
    pub fn detect() -> Input {
        if io::stdin().is_terminal() {
            Input::Terminal
        } else {
            Input::Stream
        }
    }
}

/// Reads standard input line by line on a thread of its own and hands each line to `line`,
/// until the input ends. The thread is detached: the process exits without waiting for it.
pub fn read_lines(mut line: impl FnMut(&str) + Send + 'static) {
    let input = Input::detect();
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut text = String::new();
            loop {
                if input == Input::Terminal && !ready_in_foreground(&stdin) {
                    continue;
                }
                text.clear();
                match stdin.lock().read_line(&mut text) {
                    Ok(0) => return,
                    Ok(_) => line(text.trim_end_matches(['\n', '\r'])),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A terminal read from the background (EIO) after a race with the
                    // foreground check: try again later.
                    Err(_) if input == Input::Terminal => {
                        std::thread::sleep(Duration::from_millis(250))
                    }
                    Err(e) => {
                        tracing::warn!("commands on standard input end: {e}");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("commands on standard input are off: cannot start a thread: {e}");
    }
}

/// Waits up to a quarter of a second for a line typed at the terminal while `tether` is in
/// the terminal's foreground process group. A process in the background that read its
/// terminal would be stopped by it (SIGTTIN); a job moved to the background later stops
/// reading at the next check.
fn ready_in_foreground(stdin: &io::Stdin) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let fd = stdin.as_fd();
    // A terminal that is not this process's controlling terminal has no foreground group
    // for it (ENOTTY), and reading it never stops the process.
    let foreground = || nix::unistd::tcgetpgrp(fd).map_or(true, |g| g == nix::unistd::getpgrp());
    if !foreground() {
        std::thread::sleep(Duration::from_millis(250));
        return false;
    }
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(250u8)) {
        Ok(n) if n > 0 => foreground(),
        Ok(_) => false,
        Err(_) => {
            std::thread::sleep(Duration::from_millis(250));
            false
        }
    }
}
