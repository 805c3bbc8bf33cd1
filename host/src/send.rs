//! `tether send`: streams lines as records to a listener, resuming across broken
//! connections, and succeeds only when every record was acknowledged (written).

use std::time::Duration;

use tether_core::link::{Config, Event, Link, Phase, Role, SendError as LinkSendError};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::clock::{Clock, Timer};
use crate::endpoint::Endpoint;
use crate::storage::HeapStorage;
use crate::transport::{Stream, TransportError};

/// How the sender behaves. [`SendOptions::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The listener.
    pub endpoint: Endpoint,
    /// Records in flight. Default 64.
    pub window: u16,
    /// The longest line, bytes. Default 1024.
    pub max_record: usize,
    /// Give up when no record was acknowledged (and no connection made) for this long.
    /// Default 30 s.
    pub give_up_after: Duration,
    /// This sender's session identity; random by default.
    pub session: u32,
    /// Authenticate with this pre-shared key (`PROTOCOL.md` 9.14). Default none.
    pub key: Option<tether_core::link::Key>,
}

impl SendOptions {
    /// Defaults for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        SendOptions {
            endpoint,
            window: 64,
            max_record: 1024,
            give_up_after: Duration::from_secs(30),
            session: crate::random_session(),
            key: None,
        }
    }
}

/// Why sending failed. Records acknowledged before the failure are written; the others
/// are not (and the count says how many).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The input could not be read.
    #[error("cannot read the input: {0}")]
    Input(#[source] std::io::Error),
    /// A line is longer than a record may be.
    #[error("line {line} is {len} bytes long; records are at most {max} bytes (see --max-record)")]
    TooLong {
        /// 1-based line number.
        line: u64,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The transport cannot be used at all (no Bluetooth adapter, bluetoothd not running,
    /// permission denied…): retrying would not help.
    #[error(transparent)]
    Transport(TransportError),
    /// The listener refused the session.
    #[error("the listener refused the session: {0}")]
    Refused(String),
    /// No progress for too long.
    #[error("gave up after {after:?} without progress ({acked} records acknowledged, {unacked} not): {last}")]
    GaveUp {
        /// The limit.
        after: Duration,
        /// Records acknowledged.
        acked: u64,
        /// Records sent or queued and not acknowledged.
        unacked: u32,
        /// The last problem seen.
        last: String,
    },
    /// The options are out of range.
    #[error("invalid option: {0}")]
    Options(String),
}

/// What a sender did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Records acknowledged (every one read).
    pub records: u64,
    /// Connections made beyond the first.
    pub reconnects: u32,
    /// Frames sent again.
    pub retransmissions: u32,
}

/// Progress, for a status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Records acknowledged so far.
    pub acked: u64,
    /// Records read so far.
    pub read: u64,
    /// Whether a connection is up.
    pub connected: bool,
}

enum Outcome {
    Done,
    Reconnect(String),
}

/// Streams every line of `input` as a record (the line's text, without its end of line; a
/// listener parses it as CSV fields) and returns once all are acknowledged.
pub async fn send<R: AsyncBufRead + Unpin + Send + 'static>(
    opts: &SendOptions,
    input: R,
    mut progress: impl FnMut(Progress),
) -> Result<SendSummary, SendError> {
    let frame_len = opts.max_record + tether_core::frame::OVERHEAD;
    if frame_len < tether_core::link::MIN_FRAME || opts.max_record > tether_core::frame::MAX_PAYLOAD
    {
        return Err(SendError::Options(format!(
            "max record must be {} to {} bytes",
            tether_core::link::MIN_FRAME - tether_core::frame::OVERHEAD,
            tether_core::frame::MAX_PAYLOAD
        )));
    }
    // An authenticated frame carries a MAC trailer besides the record.
    let frame_len = frame_len
        + opts
            .key
            .as_ref()
            .map_or(0, |_| tether_core::link::auth::TRAILER_LEN);
    let mut cfg = Config::new(Role::Client, opts.session.max(1));
    cfg.window = opts.window;
    let storage = HeapStorage::new(usize::from(opts.window.max(1)), 8, frame_len);
    let mut link = Link::new(cfg, storage).map_err(|e| SendError::Options(format!("{e:?}")))?;
    if let Some(key) = &opts.key {
        link.set_auth(Some(key.clone()), crate::keys::nonce_seed())
            .map_err(|e| SendError::Options(format!("{e:?}")))?;
    }
    let first = link.next_seq();
    let clock = Clock::new();
    // Lines are read ahead by their own task, so that reading never waits on the network
    // nor the network on reading; the channel bounds the read-ahead (16 batches of at most
    // 64 KiB). Batches, not lines: a channel message and a `String` per line cost a quarter
    // of the sender's time when profiled with 16-byte lines.
    let (line_tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Batch>>(16);
    tokio::spawn(read_batches(input, line_tx));
    let mut lines = Lines {
        rx,
        batch: Batch::default(),
        next: 0,
    };
    let mut read: u64 = 0;
    let mut eof = false;
    let mut summary = SendSummary::default();
    let mut last_progress = tokio::time::Instant::now();
    let mut last_problem: String;
    let mut delay = Duration::from_millis(100);
    let mut connections = 0u32;
    // RFCOMM pages the device first, which takes longer than a TCP handshake.
    let connect_timeout = match opts.endpoint {
        Endpoint::Tcp(_) => Duration::from_secs(5),
        Endpoint::Rfcomm { .. } => Duration::from_secs(15),
    };
    loop {
        let give_up = |last: &str, link: &Link<HeapStorage>| SendError::GaveUp {
            after: opts.give_up_after,
            acked: u64::from(link.next_seq().wrapping_sub(first)) - u64::from(link.unacked()),
            unacked: link.unacked(),
            last: last.to_owned(),
        };
        let stream = match crate::transport::connect(&opts.endpoint, connect_timeout).await {
            Ok(s) => s,
            Err(e) if e.is_permanent() => return Err(SendError::Transport(e)),
            Err(e @ TransportError::Timeout(_)) => {
                last_problem = e.to_string();
                if last_progress.elapsed() > opts.give_up_after {
                    return Err(give_up(&last_problem, &link));
                }
                continue;
            }
            Err(e) => {
                last_problem = e.to_string();
                if last_progress.elapsed() > opts.give_up_after {
                    return Err(give_up(&last_problem, &link));
                }
                warn!("{last_problem}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        connections += 1;
        if connections > 1 {
            summary.reconnects += 1;
        }
        delay = Duration::from_millis(100);
        last_progress = tokio::time::Instant::now();
        link.connect(clock.now());
        progress(Progress {
            acked: u64::from(link.next_seq().wrapping_sub(first)) - u64::from(link.unacked()),
            read,
            connected: true,
        });
        let outcome = drive(
            opts,
            &clock,
            &mut link,
            stream,
            &mut lines,
            &mut read,
            &mut eof,
            &mut last_progress,
            first,
            &mut progress,
        )
        .await?;
        summary.retransmissions = link.stats().retransmissions;
        match outcome {
            Outcome::Done => {
                summary.records = read;
                return Ok(summary);
            }
            Outcome::Reconnect(why) => {
                info!("connection lost ({why}); resuming");
                last_problem = why;
                if last_progress.elapsed() > opts.give_up_after {
                    return Err(give_up(&last_problem, &link));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection's worth of sending.
#[allow(clippy::too_many_arguments)] // the sender's state, lent to one connection
async fn drive(
    opts: &SendOptions,
    clock: &Clock,
    link: &mut Link<HeapStorage>,
    mut stream: Stream,
    lines: &mut Lines,
    read: &mut u64,
    eof: &mut bool,
    last_progress: &mut tokio::time::Instant,
    first: u32,
    progress: &mut impl FnMut(Progress),
) -> Result<Outcome, SendError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut timer = Timer::new();
    let mut frame = vec![0u8; link.transmit_len()];
    let mut closing = false;
    loop {
        // Queue what is already read, as far as the link takes it, before transmitting.
        while !*eof && link.can_send() {
            if let Some(line) = lines.batch.line(lines.next) {
                lines.next += 1;
                queue(link, line, read)?;
                continue;
            }
            match lines.rx.try_recv() {
                Ok(batch) => lines.take(batch)?,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => *eof = true,
            }
        }
        let now = clock.now();
        while let Some(n) = link.poll_transmit(now, &mut frame) {
            out.extend_from_slice(&frame[..n]);
            if out.len() >= 60 * 1024 {
                break;
            }
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                return Ok(Outcome::Reconnect(format!("write failed: {e}")));
            }
            out.clear();
        }
        while let Some(e) = link.poll_event() {
            match e {
                Event::Delivered { up_to } => {
                    *last_progress = tokio::time::Instant::now();
                    progress(Progress {
                        acked: u64::from(up_to.wrapping_sub(first)),
                        read: *read,
                        connected: true,
                    });
                }
                Event::Rejected { .. } => {
                    let why = link.reject().map(|r| r.to_string()).unwrap_or_default();
                    return Err(SendError::Refused(why));
                }
                Event::PeerDead => {
                    return Ok(Outcome::Reconnect("the listener went silent".into()))
                }
                Event::Connected { resumed } => debug!("session established (resumed: {resumed})"),
                Event::PeerRestarted { .. } => {
                    warn!("the listener restarted; unacknowledged records are sent again")
                }
                Event::Closed => {}
            }
        }
        if link.phase() == Phase::Closed {
            return Ok(Outcome::Done);
        }
        if *eof && link.unacked() == 0 && !closing {
            closing = true;
            link.close();
            continue;
        }
        if last_progress.elapsed() > opts.give_up_after && link.unacked() > 0 {
            return Ok(Outcome::Reconnect("no acknowledgement".into()));
        }
        timer.set(link.poll_timeout().map(|d| clock.instant(d)));
        let want_line = !*eof && link.can_send();
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => return Ok(Outcome::Reconnect("the listener closed the connection".into())),
                Ok(n) => link.handle_input(clock.now(), &buf[..n]),
                Err(e) => return Ok(Outcome::Reconnect(format!("read failed: {e}"))),
            },
            batch = lines.rx.recv(), if want_line => match batch {
                None => *eof = true,
                Some(batch) => lines.take(batch)?,
            },
            _ = timer.fired() => {
                link.handle_timeout(clock.now());
            }
        }
    }
}

/// Lines read ahead: their bytes end to end, and where each one is.
#[derive(Debug, Default)]
struct Batch {
    data: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

impl Batch {
    /// Bytes of a batch, at most (a longer line makes a batch of its own).
    const BYTES: usize = 64 * 1024;
    /// Lines of a batch, at most.
    const LINES: usize = 4096;

    fn line(&self, i: usize) -> Option<&[u8]> {
        let &(a, b) = self.spans.get(i)?;
        self.data.get(a as usize..b as usize)
    }
}

/// The reading end of the read-ahead: the batch being queued and the next line in it.
struct Lines {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Batch>>,
    batch: Batch,
    next: usize,
}

impl Lines {
    fn take(&mut self, batch: std::io::Result<Batch>) -> Result<(), SendError> {
        self.batch = batch.map_err(SendError::Input)?;
        self.next = 0;
        Ok(())
    }
}

/// Reads `input` into batches of lines (each without its `\n` and trailing `\r`s) until
/// the end or an error, which is passed on as the last item.
async fn read_batches<R: AsyncBufRead + Unpin>(
    mut input: R,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Batch>>,
) {
    loop {
        let mut batch = Batch::default();
        let mut end = false;
        while batch.data.len() < Batch::BYTES && batch.spans.len() < Batch::LINES {
            let start = batch.data.len();
            match input.read_until(b'\n', &mut batch.data).await {
                Ok(0) => {
                    end = true;
                    break;
                }
                Ok(_) => {
                    let mut stop = batch.data.len();
                    if batch.data[stop - 1] == b'\n' {
                        stop -= 1;
                    }
                    while stop > start && batch.data[stop - 1] == b'\r' {
                        stop -= 1;
                    }
                    batch.spans.push((start as u32, stop as u32));
                }
                Err(e) => {
                    if !batch.spans.is_empty() {
                        let _ = tx.send(Ok(batch)).await;
                    }
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        if !batch.spans.is_empty() && tx.send(Ok(batch)).await.is_err() {
            return;
        }
        if end {
            return;
        }
    }
}

/// Queues one line read from the input as a record.
fn queue(link: &mut Link<HeapStorage>, bytes: &[u8], read: &mut u64) -> Result<(), SendError> {
    *read += 1;
    match link.send(bytes) {
        Ok(_) => Ok(()),
        Err(LinkSendError::TooLong { max }) => Err(SendError::TooLong {
            line: *read,
            len: bytes.len(),
            max,
        }),
        Err(e) => Err(SendError::Options(format!(
            "queueing line {}: {e:?}",
            *read
        ))),
    }
}
