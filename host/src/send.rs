//! `tether send`: streams lines as records to a listener, resuming across broken
//! connections, and succeeds only when every record was acknowledged (written).
//!
//! - Each line is sent as soon as it is read: lines are gathered into one batch only as far
//!   as one read of the input returned them (a file or a busy pipe: up to 64 KiB at a time;
//!   a pipe that a sensor writes a line at a time: each line on its own).
//! - A line that cannot be a text record (longer than `max_record`, or starting with the
//!   byte `0x1E` that marks a typed record, `PROTOCOL.md` 10) stops the sender after
//!   everything before it is acknowledged, or is skipped with a warning
//!   ([`SendOptions::skip_bad_lines`]).
//! - Commands the listener sends are handed to the [`Observer`] and released, so the link can
//!   close (`PROTOCOL.md` 9.11); the close is bounded in time whatever the peer does.
//! - It gives up after [`SendOptions::give_up_after`] without progress (no record
//!   acknowledged while one is waiting, or no handshake), however often the listener
//!   accepts a connection.
//! - With a state file ([`state`]), a sender that was killed resumes its session where its
//!   acknowledgements left off, every line delivered once.

pub mod state;

use std::collections::VecDeque;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use tether_core::frame::{Decoder, Kind};
use tether_core::link::{
    seq_lt, Config, Event, Link, Phase, RejectCode, Role, SendError as LinkSendError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::state::{Position, StateFile};
use crate::clock::{Clock, Timer};
use crate::endpoint::Endpoint;
use crate::storage::HeapStorage;
use crate::transport::{Stream, TransportError};

/// The byte that starts a typed record (`PROTOCOL.md` 10): a text line starting with it
/// would be read as one.
pub const TYPED_MARKER: u8 = 0x1E;

/// How the sender behaves. [`SendOptions::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The listener.
    pub endpoint: Endpoint,
    /// Records in flight, 1 to 32,768. Default 64.
    pub window: u16,
    /// The longest line, bytes. Default 1024.
    pub max_record: usize,
    /// Give up when no record was acknowledged for this long while one was waiting (or no
    /// handshake completed); reconnecting does not restart it. Default 30 s.
    pub give_up_after: Duration,
    /// How long the graceful close may take once every record is acknowledged; then the
    /// sender ends anyway (every record is acknowledged). Default 5 s.
    pub close_timeout: Duration,
    /// This sender's session identity; random by default. A state file's overrides it.
    pub session: u32,
    /// Authenticate with this pre-shared key (`PROTOCOL.md` 9.14). Default none.
    pub key: Option<tether_core::link::Key>,
    /// Skip lines that cannot be sent (with a warning each) instead of stopping at the first.
    pub skip_bad_lines: bool,
    /// Record progress in this state file and resume from it (see [`state`]). The input
    /// given to [`send`] must then start at the file's position.
    pub state: Option<Arc<state::Opened>>,
    /// The highest protocol version offered (`PROTOCOL.md` 11.2); default 2. With a key the
    /// link speaks version 1 whatever this says.
    pub max_version: u8,
}

impl SendOptions {
    /// Records in flight by default (the listener's default window).
    pub const DEFAULT_WINDOW: u16 = crate::options::Serving::DEFAULT.window as u16;
    /// The longest line by default (the listener's default record size).
    pub const DEFAULT_MAX_RECORD: usize = crate::options::Serving::DEFAULT.max_record;
    /// How long without progress before giving up, by default.
    pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(30);

    /// Defaults for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        SendOptions {
            endpoint,
            window: SendOptions::DEFAULT_WINDOW,
            max_record: SendOptions::DEFAULT_MAX_RECORD,
            give_up_after: SendOptions::DEFAULT_GIVE_UP_AFTER,
            close_timeout: Duration::from_secs(5),
            session: crate::random_session(),
            key: None,
            skip_bad_lines: false,
            state: None,
            max_version: tether_core::link::MAX_PROTOCOL_VERSION,
        }
    }
}

/// Why a line cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsendable {
    /// It is longer than a record may be.
    TooLong {
        /// The limit, bytes.
        max: usize,
    },
    /// It starts with [`TYPED_MARKER`].
    TypedMarker,
}

/// A line that cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLine {
    /// Its line number in the input, from 1.
    pub line: u64,
    /// Its length in bytes (without the end of line).
    pub len: u64,
    /// Why.
    pub why: Unsendable,
}

impl BadLine {
    /// Why it cannot be sent, in words.
    pub fn reason(&self) -> String {
        match self.why {
            Unsendable::TooLong { max } => format!(
                "it is {} bytes long; records are at most {max} bytes (--max-record)",
                self.len
            ),
            Unsendable::TypedMarker => "it starts with the byte 0x1E, which marks a typed \
                                        record: a listener would not read it as text"
                .into(),
        }
    }
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason())
    }
}

/// Why sending failed. Records acknowledged before the failure are written; the others
/// are not, and `acked` (in the message too) says how many lines were.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The input could not be read (everything read before was delivered first).
    #[error("cannot read the input after line {line}: {source}; {acked} lines acknowledged")]
    Input {
        /// What the system said.
        #[source]
        source: std::io::Error,
        /// The last line read.
        line: u64,
        /// Lines acknowledged.
        acked: u64,
    },
    /// A line cannot be sent; everything before it was delivered and acknowledged.
    #[error(
        "stopped at {bad}; the {acked} lines before it were acknowledged and none after it \
         was sent (--skip-bad-lines skips such lines)"
    )]
    BadLine {
        /// The line.
        bad: BadLine,
        /// Lines acknowledged.
        acked: u64,
    },
    /// The transport cannot be used at all (no Bluetooth adapter, bluetoothd not running,
    /// permission denied…): retrying would not help.
    #[error("{source}; {acked} lines acknowledged")]
    Transport {
        /// What went wrong.
        source: TransportError,
        /// Lines acknowledged.
        acked: u64,
        /// Whether it happened before any connection was made: the sender could not start.
        at_start: bool,
    },
    /// The handshake was refused, by the listener or by this sender: what and why, in words,
    /// and how many lines were acknowledged before.
    #[error("{0}")]
    Refused(String),
    /// No progress for too long.
    #[error(
        "gave up after {} without progress ({acked} lines acknowledged, {unacked} in flight \
         and not): {last}",
        humantime::format_duration(*after)
    )]
    GaveUp {
        /// The limit.
        after: Duration,
        /// Lines acknowledged.
        acked: u64,
        /// Records sent or queued and not acknowledged.
        unacked: u32,
        /// The last problem seen.
        last: String,
    },
    /// The peer is not a Tether listener: it speaks the tutorial's raw protocol.
    #[error(
        "{endpoint} is not a Tether listener: it greeted with \"{said}\", as the tutorial's \
         raw server does; to send to it, use `tether send --raw`"
    )]
    NotTether {
        /// The endpoint.
        endpoint: String,
        /// What it sent, escaped.
        said: String,
    },
    /// The endpoint cannot be connected to.
    #[error("{0}")]
    Endpoint(String),
    /// The options are out of range.
    #[error("invalid option: {0}")]
    Options(String),
    /// The state file does not match the input or the listener.
    #[error("{0}")]
    State(String),
    /// The state file could not be written: the position could not be recorded.
    #[error(
        "cannot record the position in {path}: {why}; {acked} lines acknowledged (a rerun \
         resumes from the last position recorded)"
    )]
    StateWrite {
        /// The file.
        path: String,
        /// What the system said.
        why: String,
        /// Lines acknowledged.
        acked: u64,
    },
}

impl SendError {
    /// Whether this is the user's mistake or the machine's, found before anything was sent
    /// (an option, an endpoint or a state file that cannot work; a listener of the wrong
    /// kind; no Bluetooth at the first connection): `tether send` exits 2 for these and 1
    /// for the others.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SendError::Endpoint(_)
                | SendError::Options(_)
                | SendError::State(_)
                | SendError::NotTether { .. }
                | SendError::Transport { at_start: true, .. }
        )
    }

    /// Lines acknowledged before the failure, if the sender ran.
    pub fn acked(&self) -> Option<u64> {
        match *self {
            SendError::Input { acked, .. }
            | SendError::BadLine { acked, .. }
            | SendError::Transport { acked, .. }
            | SendError::GaveUp { acked, .. }
            | SendError::StateWrite { acked, .. } => Some(acked),
            _ => None,
        }
    }
}

/// What a sender did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Lines acknowledged (every one read but those skipped).
    pub records: u64,
    /// Lines skipped as unsendable ([`SendOptions::skip_bad_lines`]).
    pub skipped: u64,
    /// Lines the listener already had when a state file resumed (acknowledged, not sent).
    pub already_delivered: u64,
    /// Commands received from the listener.
    pub commands: u64,
    /// Connections made beyond the first.
    pub reconnects: u32,
    /// Frames sent again.
    pub retransmissions: u32,
    /// Whether the listener failed to complete the close within the close time-out (every
    /// record was acknowledged all the same).
    pub close_timed_out: bool,
}

/// Progress, for a status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Lines acknowledged so far.
    pub acked: u64,
    /// Lines read so far.
    pub read: u64,
    /// Whether a connection is up.
    pub connected: bool,
}

/// What a sender reports as it goes. Every method has a default that does nothing but log.
pub trait Observer {
    /// Progress, after each acknowledgement and connection.
    fn progress(&mut self, _progress: Progress) {}

    /// A command the listener sent (record `seq` of its numbering); it is released when this
    /// returns.
    fn command(&mut self, seq: u32, command: &[u8]) {
        info!(
            "command #{seq} from the listener: {}",
            escape_command(command)
        );
    }

    /// A line skipped as unsendable.
    fn skipped(&mut self, bad: &BadLine) {
        warn!("skipped {bad}");
    }
}

/// An [`Observer`] that only passes progress to a closure.
struct ProgressOnly<F>(F);

impl<F: FnMut(Progress)> Observer for ProgressOnly<F> {
    fn progress(&mut self, p: Progress) {
        (self.0)(p)
    }
}

/// A command's bytes as one line of text: UTF-8 as it is, except `\` as `\\`, newline,
/// carriage return and tab as `\n`, `\r`, `\t`, and other control characters and bytes that
/// are not UTF-8 as `\xNN`.
pub fn escape_command(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        out.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The lines to send.
pub enum Input {
    /// Read on a task of the runtime.
    Async(Box<dyn AsyncRead + Unpin + Send>),
    /// Read with blocking reads on a thread of its own (files, standard input): a read that
    /// waits never holds up the runtime, nor its shutdown when the sender is done.
    Blocking(Box<dyn std::io::Read + Send>),
}

/// Streams every line of `input` as a record (the line's text, without its end of line and
/// trailing carriage returns; a listener parses it as CSV fields) and returns once all are
/// acknowledged. Commands from the listener are logged.
pub async fn send<R: AsyncRead + Unpin + Send + 'static>(
    opts: &SendOptions,
    input: R,
    progress: impl FnMut(Progress),
) -> Result<SendSummary, SendError> {
    send_observed(opts, Input::Async(Box::new(input)), ProgressOnly(progress)).await
}

/// [`send`], reporting to `observer`.
pub async fn send_observed(
    opts: &SendOptions,
    input: Input,
    mut observer: impl Observer,
) -> Result<SendSummary, SendError> {
    check(opts)?;
    let (session, start, listener, resumed) = match &opts.state {
        Some(o) => {
            let s = o.state.saved();
            (s.session, s.position, s.listener, o.resumed)
        }
        None => (opts.session.max(1), Position::start(0), 0, false),
    };
    let link = new_link(opts, session, start.seq, listener)?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Batch>>(16);
    let splitter = Splitter::new(opts.max_record, start.offset);
    match input {
        Input::Async(r) => {
            tokio::spawn(read_async(r, splitter, tx));
        }
        Input::Blocking(r) => {
            // Detached: at exit the process does not wait for a read that may never end.
            let spawned = std::thread::Builder::new()
                .name("tether-send-input".into())
                .spawn(move || read_blocking(r, splitter, tx));
            if let Err(e) = spawned {
                return Err(SendError::Options(format!(
                    "cannot start the input reader: {e}"
                )));
            }
        }
    }
    let state = opts.state.as_ref().map(|o| Arc::new(StateTask::start(o)));
    let mut run = Run {
        opts,
        clock: Clock::new(),
        session,
        link,
        lines: Lines {
            rx,
            batch: Batch::default(),
            next: 0,
            cursor: start,
            eof: false,
        },
        inflight: VecDeque::new(),
        first: start.seq,
        read: 0,
        already: 0,
        need_sync: resumed && listener != 0,
        stop: None,
        summary: SendSummary::default(),
        last_progress: tokio::time::Instant::now(),
        close_deadline: None,
        state: state.clone(),
        listener,
        connections: 0,
        connected_once: false,
    };
    if resumed {
        info!(
            "resuming session {session:08x} from line {} (byte {}, record {})",
            start.line, start.offset, start.seq
        );
    }
    let result = run.run(&mut observer).await;
    if let Some(st) = state {
        if let Err(e) = st.finish(run.position()) {
            let path = st.file().path().display().to_string();
            if result.is_ok() {
                return Err(SendError::StateWrite {
                    path,
                    why: e.to_string(),
                    acked: run.acked(),
                });
            }
            warn!("cannot record the last position in {path}: {e}");
        }
    }
    result
}

fn check(opts: &SendOptions) -> Result<(), SendError> {
    let min = tether_core::link::MIN_FRAME - tether_core::frame::OVERHEAD;
    let max = tether_core::frame::MAX_PAYLOAD
        - opts
            .key
            .as_ref()
            .map_or(0, |_| tether_core::link::auth::TRAILER_LEN);
    if !(min..=max).contains(&opts.max_record) {
        return Err(SendError::Options(format!(
            "--max-record must be {min} to {max} bytes (got {})",
            opts.max_record
        )));
    }
    if !(1..=32_768).contains(&opts.window) {
        return Err(SendError::Options(format!(
            "--window must be 1 to 32768 records (got {})",
            opts.window
        )));
    }
    if opts.give_up_after.is_zero() {
        return Err(SendError::Options(
            "--give-up-after must be at least 1 second".into(),
        ));
    }
    check_endpoint(&opts.endpoint)
}

/// Refuses an endpoint that names no peer to connect to (a listening form, port 0, an
/// unspecified address): a usage error, not retried.
pub fn check_endpoint(endpoint: &Endpoint) -> Result<(), SendError> {
    endpoint
        .check_dialable()
        .map_err(|e| SendError::Endpoint(e.to_string()))
}

/// A link for `session` whose first record is `first_seq`, naming `listener` (0: none) as
/// the peer whose numbering it continues.
fn new_link(
    opts: &SendOptions,
    session: u32,
    first_seq: u32,
    listener: u32,
) -> Result<Link<HeapStorage>, SendError> {
    // An authenticated frame carries a MAC trailer besides the record.
    let frame_len = opts.max_record
        + tether_core::frame::OVERHEAD
        + opts
            .key
            .as_ref()
            .map_or(0, |_| tether_core::link::auth::TRAILER_LEN);
    let mut cfg = Config::new(Role::Client, session.max(1));
    cfg.window = opts.window;
    cfg.first_seq = first_seq;
    cfg.continues_from = listener;
    cfg.max_version = opts.max_version;
    let storage = HeapStorage::new(usize::from(opts.window.max(1)), 8, frame_len);
    let options = |e: tether_core::link::ConfigError| SendError::Options(config_words(e));
    let mut link = Link::new(cfg, storage).map_err(options)?;
    if let Some(key) = &opts.key {
        link.set_auth(Some(key.clone()), crate::keys::nonce_seed())
            .map_err(options)?;
    }
    Ok(link)
}

fn config_words(e: tether_core::link::ConfigError) -> String {
    use tether_core::link::ConfigError as C;
    match e {
        C::FrameSize(n) => format!("a frame of {n} bytes does not fit the link's limits"),
        C::Window(w) => format!("a window of {w} records exceeds the slots"),
        C::Slots => "the window is out of range".into(),
        C::ZeroSession => "the session identity is 0".into(),
        C::Timers => "the link's timers are out of range".into(),
    }
}

/// The words for a refusal's code.
fn reject_words(code: RejectCode) -> String {
    match code {
        RejectCode::Version => "protocol version".into(),
        RejectCode::Capacity => "record size".into(),
        RejectCode::Malformed => "malformed handshake".into(),
        RejectCode::Busy => "busy".into(),
        RejectCode::Auth => "authentication failed".into(),
        RejectCode::AuthRequired => "authentication required".into(),
        RejectCode::AuthUnsupported => "authentication not supported".into(),
        RejectCode::Other(n) => format!("reason code {n}"),
        _ => "another reason".into(),
    }
}

/// The state file's writer: positions are recorded by [`Run`] and written by a task at most
/// every [`state::INTERVAL`], on a blocking thread.
struct StateTask {
    opened: Arc<state::Opened>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl StateTask {
    fn start(opened: &Arc<state::Opened>) -> StateTask {
        let wake = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn({
            let (opened, wake) = (opened.clone(), wake.clone());
            async move {
                loop {
                    wake.notified().await;
                    let o = opened.clone();
                    let _ = tokio::task::spawn_blocking(move || o.state.write_or_note()).await;
                    tokio::time::sleep(state::INTERVAL).await;
                }
            }
        });
        StateTask {
            opened: opened.clone(),
            wake,
            task,
        }
    }

    fn file(&self) -> &StateFile {
        &self.opened.state
    }

    /// Records `p`, to be written soon.
    fn record(&self, p: Position) {
        if self.file().saved().position != p {
            self.file().set_position(p);
            self.wake.notify_one();
        }
    }

    /// Writes `p` now and stops the task.
    fn finish(&self, p: Position) -> std::io::Result<()> {
        self.task.abort();
        self.file().set_position(p);
        self.file().write()
    }
}

enum Outcome {
    /// Every record acknowledged, the close done or timed out.
    Done,
    /// The connection is lost or useless: connect again (after `backoff`).
    Reconnect { why: String, backoff: bool },
    /// The link was replaced (a resumed session learnt where the listener is): connect again
    /// at once.
    Resync,
}

/// Why the sender stops reading.
enum Stop {
    Bad(BadLine),
    Input(std::io::Error),
}

/// One sender's state across connections.
struct Run<'a> {
    opts: &'a SendOptions,
    clock: Clock,
    session: u32,
    link: Link<HeapStorage>,
    lines: Lines,
    /// Records queued and not acknowledged: their sequence number, byte offset and line.
    inflight: VecDeque<(u32, u64, u64)>,
    /// The sequence number of this run's first line.
    first: u32,
    /// Lines read (queued, skipped as already delivered) this run.
    read: u64,
    /// Lines still to pass over as already delivered (a resumed session).
    already: u32,
    /// A resumed session that has not heard the listener yet: lines wait until its WELCOME
    /// says what it has.
    need_sync: bool,
    stop: Option<Stop>,
    summary: SendSummary,
    /// The give-up clock: the last acknowledgement, or moment with nothing to deliver.
    last_progress: tokio::time::Instant,
    close_deadline: Option<tokio::time::Instant>,
    state: Option<Arc<StateTask>>,
    /// The listener session recorded in the state file.
    listener: u32,
    connections: u32,
    /// Whether a handshake completed on the current connection.
    connected_once: bool,
}

impl Run<'_> {
    fn acked(&self) -> u64 {
        u64::from(self.link.next_seq().wrapping_sub(self.first))
            .saturating_sub(u64::from(self.link.unacked()))
    }

    /// The first line not acknowledged.
    fn position(&self) -> Position {
        match self.inflight.front() {
            Some(&(seq, offset, line)) => Position { offset, line, seq },
            None => Position {
                offset: self.lines.cursor.offset,
                line: self.lines.cursor.line,
                seq: self.link.next_seq(),
            },
        }
    }

    fn progress(&self, connected: bool) -> Progress {
        Progress {
            acked: self.acked(),
            read: self.read,
            connected,
        }
    }

    fn give_up(&self, last: &str) -> SendError {
        SendError::GaveUp {
            after: self.opts.give_up_after,
            acked: self.acked(),
            unacked: self.link.unacked(),
            last: last.to_owned(),
        }
    }

    fn past_give_up(&self) -> bool {
        self.last_progress.elapsed() >= self.opts.give_up_after
    }

    async fn run(&mut self, obs: &mut impl Observer) -> Result<SendSummary, SendError> {
        let connect_timeout = crate::transport::connect_timeout(&self.opts.endpoint);
        let mut delay = Duration::from_millis(100);
        let mut last_problem = String::from("no connection yet");
        loop {
            if self
                .close_deadline
                .is_some_and(|d| tokio::time::Instant::now() >= d)
            {
                self.summary.close_timed_out = true;
                return self.finished();
            }
            if self.past_give_up() {
                return Err(self.give_up(&last_problem));
            }
            let attempt = tokio::time::timeout(
                connect_timeout.min(self.until_give_up()),
                crate::transport::connect(&self.opts.endpoint, connect_timeout),
            )
            .await;
            let stream = match attempt {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if e.is_permanent() => {
                    return Err(SendError::Transport {
                        source: e,
                        acked: self.acked(),
                        at_start: self.connections == 0,
                    })
                }
                Ok(Err(e)) => {
                    last_problem = e.to_string();
                    if !matches!(e, TransportError::Timeout(_)) {
                        warn!("{last_problem}; retrying in {}", ms(delay));
                        self.pause(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    continue;
                }
                Err(_) => {
                    last_problem = format!("connecting to {} timed out", self.opts.endpoint);
                    continue;
                }
            };
            self.connections += 1;
            if self.connections > 1 {
                self.summary.reconnects += 1;
            }
            self.link.connect(self.clock.now());
            obs.progress(self.progress(true));
            match self.connection(stream, obs).await? {
                Outcome::Done => return self.finished(),
                Outcome::Resync => {
                    // Not a reconnect to count: the resumed session's first connection only
                    // learnt where the listener is.
                    if self.connections > 1 {
                        self.summary.reconnects -= 1;
                    }
                    self.connections -= 1;
                }
                Outcome::Reconnect { why, backoff } => {
                    info!("connection lost ({why}); resuming");
                    last_problem = why;
                    if backoff {
                        self.pause(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    } else {
                        delay = Duration::from_millis(100);
                        self.pause(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// How long until the give-up clock runs out (at least a millisecond).
    fn until_give_up(&self) -> Duration {
        (self.last_progress + self.opts.give_up_after)
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(1))
    }

    /// Sleeps `d`, or less if the give-up clock runs out first.
    async fn pause(&self, d: Duration) {
        tokio::time::sleep(d.min(self.until_give_up())).await;
    }

    fn finished(&mut self) -> Result<SendSummary, SendError> {
        self.summary.retransmissions = self.link.stats().retransmissions;
        self.summary.records = self.acked();
        match self.stop.take() {
            None => Ok(self.summary.clone()),
            Some(Stop::Bad(bad)) => Err(SendError::BadLine {
                bad,
                acked: self.acked(),
            }),
            Some(Stop::Input(source)) => Err(SendError::Input {
                source,
                line: self.lines.cursor.line.saturating_sub(1),
                acked: self.acked(),
            }),
        }
    }

    /// One connection's worth of sending.
    async fn connection(
        &mut self,
        mut stream: Stream,
        obs: &mut impl Observer,
    ) -> Result<Outcome, SendError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(64 * 1024);
        let mut timer = Timer::new();
        let mut frame = vec![0u8; self.link.transmit_len()];
        // The first bytes heard before the handshake completes: a peer that is not Tether
        // is named by what it said.
        let mut heard: Vec<u8> = Vec::new();
        // A resumed session reads the listener's first WELCOME for what it has.
        let mut welcome: Option<Welcome> = None;
        let mut sniffer = self.need_sync.then(|| Decoder::new(vec![0u8; 256]));
        self.connected_once = false;
        loop {
            // Events first, so that a handshake's consequences (the listener's session in the
            // state file) are settled before any record goes out on this connection.
            while let Some(e) = self.link.poll_event() {
                match e {
                    Event::Delivered { up_to } => {
                        self.last_progress = tokio::time::Instant::now();
                        while let Some(&(seq, _, _)) = self.inflight.front() {
                            if !seq_lt(seq, up_to) {
                                break;
                            }
                            self.inflight.pop_front();
                        }
                        if let Some(st) = &self.state {
                            st.record(self.position());
                        }
                        obs.progress(self.progress(true));
                    }
                    Event::Connected { resumed } => {
                        debug!(
                            "session established (resumed: {resumed}), protocol version {}",
                            self.link.protocol_version()
                        );
                        self.connected_once = true;
                        if let Some(outcome) = self.on_connected(welcome.take())? {
                            return Ok(outcome);
                        }
                    }
                    Event::Rejected { by_us } => {
                        let (code, text) = match self.link.reject() {
                            Some(r) => (Some(r.code()), r.text().to_owned()),
                            None => (None, String::from("(no reason given)")),
                        };
                        if !by_us && code == Some(RejectCode::Busy) {
                            return Ok(Outcome::Reconnect {
                                why: format!("the listener is busy: {text}"),
                                backoff: true,
                            });
                        }
                        return Err(self.refused(by_us, code, &text));
                    }
                    Event::PeerDead => {
                        // Dead in the handshake: nothing that answers as Tether is there.
                        let why = if self.connected_once {
                            "the listener went silent".into()
                        } else {
                            not_tether_hint(&heard)
                        };
                        return Ok(Outcome::Reconnect { why, backoff: true });
                    }
                    Event::PeerRestarted { .. } => {
                        warn!("the listener restarted; unacknowledged records are sent again")
                    }
                    Event::Closed => {}
                }
            }
            // Commands from the listener: hand them over, then release them.
            let mut n = 0;
            for r in self.link.received() {
                obs.command(r.seq, r.payload);
                n += 1;
            }
            if n > 0 {
                self.link.release(n);
                self.summary.commands += n as u64;
            }
            if let Some(st) = &self.state {
                if let Some(why) = st.file().failure() {
                    return Err(SendError::StateWrite {
                        path: st.file().path().display().to_string(),
                        why,
                        acked: self.acked(),
                    });
                }
            }
            self.queue(obs)?;
            let now = self.clock.now();
            while let Some(n) = self.link.poll_transmit(now, &mut frame) {
                out.extend_from_slice(&frame[..n]);
                if out.len() >= 60 * 1024 {
                    break;
                }
            }
            if !out.is_empty() {
                if let Err(e) = stream.write_all(&out).await {
                    return Ok(Outcome::Reconnect {
                        why: format!("write failed: {e}"),
                        backoff: false,
                    });
                }
                out.clear();
            }
            if self.link.phase() == Phase::Closed {
                return Ok(Outcome::Done);
            }
            let ending = (self.lines.eof && self.lines.pending() == 0) || self.stop.is_some();
            if ending && self.link.unacked() == 0 && self.close_deadline.is_none() {
                if self.already > 0 {
                    return Err(SendError::State(format!(
                        "the listener has {} more records of this session than the input has \
                         lines after line {}: the state file does not belong to this input",
                        self.already, self.lines.cursor.line
                    )));
                }
                self.link.close();
                self.close_deadline = Some(tokio::time::Instant::now() + self.opts.close_timeout);
                continue;
            }
            if let Some(d) = self.close_deadline {
                if tokio::time::Instant::now() >= d {
                    warn!(
                        "the listener did not complete the close within {}; every line was \
                         acknowledged",
                        humantime::format_duration(self.opts.close_timeout)
                    );
                    self.summary.close_timed_out = true;
                    return Ok(Outcome::Done);
                }
            }
            // Nothing to deliver and connected: no progress is owed.
            let idle = self.link.phase() == Phase::Established
                && self.link.unacked() == 0
                && self.lines.pending() == 0
                && !self.need_sync;
            if idle || self.close_deadline.is_some() {
                self.last_progress = tokio::time::Instant::now();
            } else if self.past_give_up() {
                let why = if self.link.phase() == Phase::Handshaking {
                    format!(
                        "the listener accepted the connection but did not complete a handshake{}",
                        if heard.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", not_tether_hint(&heard))
                        }
                    )
                } else {
                    "the listener accepted the connection and the records but acknowledged \
                     none"
                        .into()
                };
                return Err(self.give_up(&why));
            }
            let give_up_at = self.last_progress + self.opts.give_up_after;
            let deadline = self
                .link
                .poll_timeout()
                .map(|d| self.clock.instant(d))
                .map_or(give_up_at, |d| d.min(give_up_at));
            timer.set(Some(
                self.close_deadline.map_or(deadline, |c| c.min(deadline)),
            ));
            let want_line = !self.lines.eof
                && self.stop.is_none()
                && !self.need_sync
                && self.close_deadline.is_none()
                && self.lines.pending() == 0
                && (self.link.can_send() || self.already > 0);
            tokio::select! {
                r = stream.read(&mut buf) => match r {
                    Ok(0) => {
                        let why = if self.link.phase() == Phase::Handshaking && !heard.is_empty() {
                            format!("the listener closed the connection ({})", not_tether_hint(&heard))
                        } else {
                            "the listener closed the connection".into()
                        };
                        return Ok(Outcome::Reconnect { why, backoff: self.link.phase() == Phase::Handshaking });
                    }
                    Ok(n) => {
                        let bytes = &buf[..n];
                        if self.link.phase() == Phase::Handshaking {
                            if heard.len() < 64 {
                                heard.extend_from_slice(&bytes[..n.min(64 - heard.len())]);
                            }
                            if heard.starts_with(crate::raw::GREETING) {
                                return Err(SendError::NotTether {
                                    endpoint: self.opts.endpoint.to_string(),
                                    said: heard.escape_ascii().to_string(),
                                });
                            }
                            if let (Some(d), None) = (sniffer.as_mut(), welcome) {
                                welcome = first_welcome(d, bytes);
                            }
                        }
                        self.link.handle_input(self.clock.now(), bytes);
                    }
                    Err(e) => return Ok(Outcome::Reconnect { why: format!("read failed: {e}"), backoff: false }),
                },
                batch = self.lines.rx.recv(), if want_line => match batch {
                    None => self.lines.eof = true,
                    Some(Ok(batch)) => {
                        self.lines.batch = batch;
                        self.lines.next = 0;
                    }
                    Some(Err(e)) => self.stop = Some(Stop::Input(e)),
                },
                _ = timer.fired() => {
                    self.link.handle_timeout(self.clock.now());
                }
            }
        }
    }

    /// A handshake completed. Records the listener's session in the state file before any
    /// record goes out; for a resumed session, learns from the WELCOME which records the
    /// listener already has, and if it has records this sender did not know were
    /// acknowledged, replaces the link to continue after them.
    fn on_connected(&mut self, welcome: Option<Welcome>) -> Result<Option<Outcome>, SendError> {
        let peer = self.link.peer_session().unwrap_or(0);
        if let Some(st) = &self.state {
            if peer != self.listener && peer != 0 {
                self.listener = peer;
                st.file().set_listener(peer);
                // Now, not later: from here on records may reach this listener, and a rerun
                // must name it for them to be recognised.
                if let Err(e) = st.file().write() {
                    return Err(SendError::StateWrite {
                        path: st.file().path().display().to_string(),
                        why: e.to_string(),
                        acked: self.acked(),
                    });
                }
            }
        }
        if !std::mem::replace(&mut self.need_sync, false) {
            return Ok(None);
        }
        let tx_base = self.link.next_seq();
        let Some(w) = welcome.filter(|w| w.peer_session == self.session) else {
            return Ok(None);
        };
        if !seq_lt(tx_base, w.rx_released) {
            return Ok(None);
        }
        let ahead = w.rx_released.wrapping_sub(tx_base);
        info!(
            "the listener already has {ahead} records from line {} on (acknowledged after the \
             position was last recorded); continuing after them",
            self.lines.cursor.line
        );
        self.link = new_link(self.opts, self.session, w.rx_released, peer)?;
        self.already = ahead;
        Ok(Some(Outcome::Resync))
    }

    fn refused(&self, by_us: bool, code: Option<RejectCode>, text: &str) -> SendError {
        let words = code.map_or_else(|| "no reason code".into(), reject_words);
        let hint = if code == Some(RejectCode::Capacity) {
            " (--max-record must not exceed the listener's)"
        } else {
            ""
        };
        let what = if by_us {
            "this sender refused the listener's answer to its handshake"
        } else {
            "the listener refused this sender's session"
        };
        SendError::Refused(format!(
            "{what} ({words}): {text}{hint}; {} lines acknowledged",
            self.acked()
        ))
    }

    /// Queues the lines already read, as far as the link takes them.
    fn queue(&mut self, obs: &mut impl Observer) -> Result<(), SendError> {
        if self.need_sync || self.stop.is_some() || self.close_deadline.is_some() {
            return Ok(());
        }
        loop {
            if !self.link.can_send() && self.already == 0 {
                return Ok(());
            }
            match self.lines.ready() {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    self.stop = Some(Stop::Input(e));
                    return Ok(());
                }
            }
            let line = self.lines.cursor.line;
            let offset = self.lines.cursor.offset;
            let entry = self.lines.batch.entries[self.lines.next];
            if let Some(why) = entry.bad {
                let bad = BadLine {
                    line,
                    len: entry.len,
                    why,
                };
                if !self.opts.skip_bad_lines {
                    if self.already > 0 {
                        return Err(SendError::State(format!(
                            "{bad}, but the listener has records of this session beyond it: \
                             the run that made the state file skipped it (--skip-bad-lines) or \
                             read another input"
                        )));
                    }
                    self.stop = Some(Stop::Bad(bad));
                    return Ok(());
                }
                obs.skipped(&bad);
                self.summary.skipped += 1;
                self.lines.advance();
                continue;
            }
            if self.already > 0 {
                self.already -= 1;
                self.summary.already_delivered += 1;
                self.read += 1;
                self.lines.advance();
                if self.already == 0 {
                    if let Some(st) = &self.state {
                        st.record(self.position());
                    }
                }
                continue;
            }
            let bytes = &self.lines.batch.data[entry.start as usize..entry.end as usize];
            match self.link.send(bytes) {
                Ok(seq) => {
                    self.inflight.push_back((seq, offset, line));
                    self.read += 1;
                    self.lines.advance();
                }
                Err(LinkSendError::WouldBlock) => return Ok(()),
                Err(LinkSendError::TooLong { max }) => {
                    let bad = BadLine {
                        line,
                        len: entry.len,
                        why: Unsendable::TooLong { max },
                    };
                    if !self.opts.skip_bad_lines {
                        self.stop = Some(Stop::Bad(bad));
                        return Ok(());
                    }
                    obs.skipped(&bad);
                    self.summary.skipped += 1;
                    self.lines.advance();
                }
                Err(LinkSendError::Closed) => return Ok(()),
            }
        }
    }
}

fn ms(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// What a peer that did not complete a handshake said, and a hint if it is the tutorial's
/// kind of server.
fn not_tether_hint(heard: &[u8]) -> String {
    if heard.is_empty() {
        return "the listener did not answer the handshake".into();
    }
    let text = heard.iter().all(|&b| b.is_ascii_graphic() || b == b' ');
    if text {
        format!(
            "the peer sent text, not Tether frames: \"{}\"; a tutorial-style server needs \
             `tether send --raw`",
            heard.escape_ascii()
        )
    } else {
        format!(
            "the peer sent {} bytes that are not a Tether handshake",
            heard.len()
        )
    }
}

/// The fields of a WELCOME a resumed sender needs (`PROTOCOL.md` 9.5.1).
#[derive(Debug, Clone, Copy)]
struct Welcome {
    peer_session: u32,
    rx_released: u32,
}

/// The first WELCOME among `bytes`, read with `decoder` (which keeps a frame split across
/// reads).
fn first_welcome(decoder: &mut Decoder<Vec<u8>>, mut bytes: &[u8]) -> Option<Welcome> {
    while let Some(r) = decoder.decode(&mut bytes) {
        let Ok(f) = r else { continue };
        let p = f.payload;
        if f.header.kind != Kind::Welcome
            || p.len() < 28
            || p[0] != tether_core::link::PROTOCOL_VERSION
        {
            continue;
        }
        let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        return Some(Welcome {
            peer_session: u32_at(6),
            rx_released: u32_at(18),
        });
    }
    None
}

/// Lines read ahead: their bytes end to end, and where each one is.
#[derive(Debug, Default)]
struct Batch {
    data: Vec<u8>,
    entries: Vec<Entry>,
}

/// One line of a [`Batch`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its record's bytes in the batch (empty for a bad line).
    start: u32,
    end: u32,
    /// Its length, bytes.
    len: u64,
    /// The byte offset in the input after its end of line.
    next_offset: u64,
    /// Why it cannot be sent, if it cannot.
    bad: Option<Unsendable>,
}

impl Batch {
    /// Bytes of a batch, at most (a longer line makes a batch of its own).
    const BYTES: usize = 64 * 1024;
    /// Lines of a batch, at most.
    const LINES: usize = 4096;
}

/// The reading end of the read-ahead: the batch being queued, the next line in it, and
/// where that line is in the input.
struct Lines {
    rx: mpsc::Receiver<std::io::Result<Batch>>,
    batch: Batch,
    next: usize,
    /// The next line's offset and number (its `seq` is unused).
    cursor: Position,
    eof: bool,
}

impl Lines {
    /// Lines of the current batch not taken yet.
    fn pending(&self) -> usize {
        self.batch.entries.len() - self.next
    }

    /// Whether a line is ready, taking the next batch if one is read already.
    fn ready(&mut self) -> std::io::Result<bool> {
        loop {
            if self.pending() > 0 {
                return Ok(true);
            }
            if self.eof {
                return Ok(false);
            }
            match self.rx.try_recv() {
                Ok(Ok(b)) => {
                    self.batch = b;
                    self.next = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::error::TryRecvError::Disconnected) => self.eof = true,
            }
        }
    }

    /// Moves past the current line.
    fn advance(&mut self) {
        let e = self.batch.entries[self.next];
        self.cursor.offset = e.next_offset;
        self.cursor.line += 1;
        self.next += 1;
    }
}

/// Splits the input's bytes into lines, in batches. A line is sent without its `\n` and
/// trailing `\r`s; a line that cannot be sent keeps only its length (so an endless line
/// costs no memory).
struct Splitter {
    max_record: usize,
    batch: Batch,
    /// The input offset of the next byte fed.
    offset: u64,
    /// The line being read: where its bytes start in the batch, its length so far, how many
    /// `\r`s end it, its first byte, and whether it is too long already.
    cur_start: usize,
    cur_len: u64,
    trailing_cr: u64,
    first: Option<u8>,
    overlong: bool,
    ready: Vec<Batch>,
}

impl Splitter {
    fn new(max_record: usize, offset: u64) -> Splitter {
        Splitter {
            max_record,
            batch: Batch::default(),
            offset,
            cur_start: 0,
            cur_len: 0,
            trailing_cr: 0,
            first: None,
            overlong: false,
            ready: Vec::new(),
        }
    }

    /// Takes the bytes of one read. Then the lines complete so far make a batch: only what
    /// is already there is batched.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (part, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            self.append(part);
            let used = part.len() + usize::from(ended);
            self.offset += used as u64;
            bytes = &bytes[used..];
            if ended {
                self.end_line();
                if self.batch.data.len() >= Batch::BYTES || self.batch.entries.len() >= Batch::LINES
                {
                    self.cut();
                }
            }
        }
        self.cut();
    }

    /// The input ended: a last line without an end of line is a line too.
    fn finish(&mut self) {
        if self.cur_len > 0 {
            self.end_line();
        }
        self.cut();
    }

    fn append(&mut self, part: &[u8]) {
        if part.is_empty() {
            return;
        }
        if self.cur_len == 0 {
            self.first = Some(part[0]);
        }
        self.cur_len += part.len() as u64;
        let crs = part.iter().rev().take_while(|&&b| b == b'\r').count() as u64;
        if crs == part.len() as u64 {
            self.trailing_cr += crs;
        } else {
            self.trailing_cr = crs;
        }
        if !self.overlong {
            self.batch.data.extend_from_slice(part);
            // What precedes the trailing `\r`s only grows: past the limit, the line is too
            // long whatever follows.
            if self.cur_len - self.trailing_cr > self.max_record as u64 {
                self.overlong = true;
                self.batch.data.truncate(self.cur_start);
            }
        }
    }

    fn end_line(&mut self) {
        let len = self.cur_len - self.trailing_cr;
        let bad = if self.overlong || len > self.max_record as u64 {
            Some(Unsendable::TooLong {
                max: self.max_record,
            })
        } else if len > 0 && self.first == Some(TYPED_MARKER) {
            Some(Unsendable::TypedMarker)
        } else {
            None
        };
        let end = if bad.is_some() {
            self.cur_start
        } else {
            self.cur_start + len as usize
        };
        self.batch.data.truncate(end);
        self.batch.entries.push(Entry {
            start: self.cur_start as u32,
            end: end as u32,
            len,
            next_offset: self.offset,
            bad,
        });
        self.cur_start = self.batch.data.len();
        self.cur_len = 0;
        self.trailing_cr = 0;
        self.first = None;
        self.overlong = false;
    }

    /// Moves the complete lines into a batch of their own, keeping a partial line's bytes.
    fn cut(&mut self) {
        if self.batch.entries.is_empty() {
            return;
        }
        let mut next = Batch::default();
        next.data
            .extend_from_slice(&self.batch.data[self.cur_start..]);
        self.batch.data.truncate(self.cur_start);
        self.cur_start = 0;
        self.ready.push(std::mem::replace(&mut self.batch, next));
    }
}

/// Reads `input` into batches of lines until the end or an error, which is passed on as
/// the last item.
async fn read_async(
    mut input: Box<dyn AsyncRead + Unpin + Send>,
    mut sp: Splitter,
    tx: mpsc::Sender<std::io::Result<Batch>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let end = match input.read(&mut buf).await {
            Ok(0) => {
                sp.finish();
                true
            }
            Ok(n) => {
                sp.feed(&buf[..n]);
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                for b in sp.ready.drain(..) {
                    let _ = tx.send(Ok(b)).await;
                }
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        for b in sp.ready.drain(..) {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
        if end {
            return;
        }
    }
}

/// [`read_async`] with blocking reads, on a thread of its own.
fn read_blocking(
    mut input: Box<dyn std::io::Read + Send>,
    mut sp: Splitter,
    tx: mpsc::Sender<std::io::Result<Batch>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let end = match input.read(&mut buf) {
            Ok(0) => {
                sp.finish();
                true
            }
            Ok(n) => {
                sp.feed(&buf[..n]);
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                for b in sp.ready.drain(..) {
                    let _ = tx.blocking_send(Ok(b));
                }
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        for b in sp.ready.drain(..) {
            if tx.blocking_send(Ok(b)).is_err() {
                return;
            }
        }
        if end {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, u64, u64, Option<Unsendable>)> {
        let mut sp = Splitter::new(max, 0);
        for c in chunks {
            sp.feed(c);
        }
        sp.finish();
        sp.ready
            .iter()
            .flat_map(|b| {
                b.entries.iter().map(|e| {
                    (
                        b.data[e.start as usize..e.end as usize].to_vec(),
                        e.len,
                        e.next_offset,
                        e.bad,
                    )
                })
            })
            .collect()
    }

    #[test]
    fn lines_split_in_any_chunking_with_offsets_and_bad_lines_marked() {
        let text: &[u8] = b"a,1\r\n\x1Etyped\n\nlong-line-here\nlast";
        let want = vec![
            (b"a,1".to_vec(), 3, 5, None),
            (vec![], 6, 12, Some(Unsendable::TypedMarker)),
            (vec![], 0, 13, None),
            (vec![], 14, 28, Some(Unsendable::TooLong { max: 8 })),
            (b"last".to_vec(), 4, 32, None),
        ];
        assert_eq!(split(8, &[text]), want);
        for size in 1..text.len() {
            let chunks: Vec<&[u8]> = text.chunks(size).collect();
            assert_eq!(split(8, &chunks), want, "chunks of {size}");
        }
    }

    #[test]
    fn each_read_makes_its_own_batch_and_a_partial_line_waits_for_its_end() {
        let mut sp = Splitter::new(64, 0);
        sp.feed(b"first\nsec");
        assert_eq!(sp.ready.len(), 1, "the complete line is not held back");
        assert_eq!(sp.ready[0].entries.len(), 1);
        sp.feed(b"ond\n");
        assert_eq!(sp.ready.len(), 2);
        let b = &sp.ready[1];
        assert_eq!(&b.data[..], b"second");
        assert_eq!(b.entries[0].next_offset, 13);
    }

    #[test]
    fn an_endless_line_costs_no_memory_and_trailing_crs_do_not_count() {
        let mut sp = Splitter::new(4, 0);
        for _ in 0..1000 {
            sp.feed(&[b'x'; 1000]);
            assert!(sp.batch.data.len() <= 5);
        }
        sp.feed(b"\nabcd\r\r\r\n");
        let e: Vec<_> = sp.ready.iter().flat_map(|b| b.entries.clone()).collect();
        assert_eq!(e[0].len, 1_000_000);
        assert!(e[0].bad.is_some());
        assert_eq!((e[1].len, e[1].bad), (4, None));
    }

    #[test]
    fn commands_print_as_one_line_each() {
        assert_eq!(escape_command(b"status"), "status");
        assert_eq!(
            escape_command(b"a\\b\nc\td\x01\xff!"),
            "a\\\\b\\nc\\td\\x01\\xff!"
        );
        assert_eq!(escape_command("temp é".as_bytes()), "temp é");
    }

    #[test]
    fn listening_endpoints_and_port_0_are_refused_with_what_to_write() {
        for (e, what) in [
            ("tcp://127.0.0.1:0", "port 0"),
            ("tcp://0.0.0.0:5003", "every local address"),
            ("rfcomm://hci0/1", "listening endpoint"),
            ("rfcomm:///3", "rfcomm://AA:BB:CC:DD:EE:FF/3"),
        ] {
            let err = check_endpoint(&e.parse().unwrap()).unwrap_err();
            assert!(err.is_usage() && err.to_string().contains(what), "{err}");
        }
        assert!(check_endpoint(&"tcp://127.0.0.1:5003".parse().unwrap()).is_ok());
    }
}
