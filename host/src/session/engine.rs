//! The async driver of the session table: accepts connections within the limits, reads
//! each up to its HELLO, binds it to a session and pumps it, for any [`Server`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tether_core::link::{Event, Link, Phase};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::table::{Refused, Session, Table};
use super::tap::{Dropped, Tap};
use super::{hello, lock, reject_text, Hello, Server};
use crate::clock::{Clock, Timer};
use crate::storage::HeapStorage;
use crate::transport::{write_or_stall, Acceptor, Stream, Written};

/// The limits every server of device sessions enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Sessions kept (`--max-devices`); see [`Table::admit`].
    pub max_sessions: usize,
    /// A new connection must say HELLO within this.
    pub handshake_timeout: Duration,
    /// A device's link is dead after this much silence, and a device that reads nothing is
    /// dropped after its writes were blocked this long.
    pub idle_timeout: Duration,
}

/// A task a server asks to run beside its connections, stopped with them.
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long connections get to finish after the stop.
const DRAIN: Duration = Duration::from_secs(5);

/// A server's sessions and connections: the table, the counters, and the stop signal.
pub struct Engine<S: Server> {
    server: S,
    limits: Limits,
    clock: Clock,
    table: Mutex<Table<S::State>>,
    connections: AtomicU64,
    dropped: AtomicU64,
    active: AtomicU64,
    stop: watch::Sender<bool>,
    spawn: mpsc::UnboundedSender<Task>,
    spawned: Mutex<Option<mpsc::UnboundedReceiver<Task>>>,
    tap: Arc<Tap>,
}

impl<S: Server> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({}, {:?})", S::NAME, lock(&self.table))
    }
}

impl<S: Server> Engine<S> {
    /// An engine for `server` with no session yet.
    pub fn new(server: S, limits: Limits) -> Arc<Self> {
        let (spawn, spawned) = mpsc::unbounded_channel();
        Arc::new(Engine {
            server,
            limits,
            clock: Clock::new(),
            table: Mutex::new(Table::new(limits.max_sessions)),
            connections: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            active: AtomicU64::new(0),
            stop: watch::channel(false).0,
            spawn,
            spawned: Mutex::new(Some(spawned)),
            tap: Arc::new(Tap::new()),
        })
    }

    /// The server.
    pub fn server(&self) -> &S {
        &self.server
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The links' clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The session of `device`, if kept.
    pub fn session(&self, device: u32) -> Option<Arc<Session<S::State>>> {
        lock(&self.table).get(device).cloned()
    }

    /// Every session kept.
    pub fn sessions(&self) -> Vec<Arc<Session<S::State>>> {
        lock(&self.table).sessions().cloned().collect()
    }

    /// The devices whose sessions are kept, in order.
    pub fn devices(&self) -> Vec<u32> {
        let mut v: Vec<u32> = lock(&self.table).sessions().map(|s| s.device()).collect();
        v.sort_unstable();
        v
    }

    /// Sessions kept now.
    pub fn kept(&self) -> usize {
        lock(&self.table).len()
    }

    /// Device identities that had a session, forgotten ones included.
    pub fn seen(&self) -> usize {
        lock(&self.table).seen()
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections dropped (garbage, time-outs, refusals, limits).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Connections served now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// What onlookers see of the sessions: updates, watched devices, drop reasons.
    pub fn tap(&self) -> &Arc<Tap> {
        &self.tap
    }

    /// Whether the server is stopping, and a way to wait until it is.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Runs `task` beside the connections until the server stops (its end is awaited, as
    /// theirs, for up to 5 s).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // The receiver lives as long as `run`; after it, nothing is to run.
        let _ = self.spawn.send(Box::pin(task));
    }

    fn drop_one(&self, why: Dropped) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.tap.count_dropped(why);
    }

    /// Accepts on `sockets` until `shutdown` completes, each connection served by `serve`
    /// (normally [`Engine::serve_connection`]) within `--max-connections`; then signals the
    /// stop, lets the server withhold what it must ([`Server::stopping`]), and waits up to
    /// 5 s for the connections and the server's tasks to finish.
    pub async fn run<F, Fut>(
        self: &Arc<Self>,
        sockets: Vec<Acceptor>,
        shutdown: impl Future<Output = ()>,
        serve: F,
    ) where
        F: Fn(Arc<Self>, Stream, String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = JoinSet::new();
        let stop = self.stop.subscribe();
        let mut accepted = crate::transport::accept_all(sockets, &mut tasks, &stop);
        let mut spawned = lock(&self.spawned)
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        tokio::pin!(shutdown);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some((stream, peer)) = accepted.recv() => {
                    self.connections.fetch_add(1, Ordering::Relaxed);
                    if self.active() >= self.limits.max_connections as u64 {
                        warn!(%peer, "connection refused: limit of {} connections reached", self.limits.max_connections);
                        self.drop_one(Dropped::Limit);
                        continue;
                    }
                    self.active.fetch_add(1, Ordering::Relaxed);
                    let engine = self.clone();
                    let served = serve(self.clone(), stream, peer);
                    // `map`, not an async block around it: an async block would hold the
                    // future twice (as its captured value and as the future it awaits), and
                    // every idle connection pays its task's size (600 bytes then).
                    tasks.spawn(served.map(move |()| {
                        engine.active.fetch_sub(1, Ordering::Relaxed);
                    }));
                }
                Some(task) = spawned.recv() => { tasks.spawn(task); }
                _ = trim.tick() => {
                    let parked = crate::storage::trim();
                    if parked > 0 {
                        debug!("{parked} idle links gave their buffers back");
                    }
                }
                Some(_) = tasks.join_next() => {}
                _ = &mut shutdown => break,
            }
        }
        info!("{}", S::STOPPING);
        let _ = self.stop.send(true);
        self.server.stopping(self);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN, drain).await.is_err() {
            warn!("{}", S::UNFINISHED);
        }
    }

    /// Serves one connection until it ends, is superseded by a newer connection of its
    /// device, or the server stops: reads it up to its HELLO, binds it to its session
    /// (admission, `--max-devices`), and pumps bytes between it and the session's link.
    pub async fn serve_connection(self: Arc<Self>, mut stream: Stream, peer: String) {
        let peer = peer.as_str();
        let mut stop = self.stop.subscribe();
        let mut stopping = *stop.borrow_and_update();
        // Boxed: the handshake's futures (a read buffer among them) would otherwise stay
        // in this task's memory, sized for the largest of its states, while it idles.
        let Some((session, generation, device)) = Box::pin(self.open(&mut stream, peer)).await
        else {
            return;
        };
        info!(%peer, "device {device:08x} connected");
        // What is to be written; frames are encoded in the worker thread's scratch buffer
        // and only their bytes kept here, so an idle connection holds a few bytes.
        let mut out = Vec::new();
        // Records received by the end of the last turn, and when they last changed: a turn
        // PARK_AFTER_MS after the last record, with the link's storage idle, gives the
        // storage back (see `HeapStorage::park`).
        let (mut records_seen, mut records_at) = (u32::MAX, self.clock.now());
        let mut timer = Timer::new();
        loop {
            let (deadline, finished) = {
                let mut entry = session.lock();
                if !entry.is_current(generation) {
                    debug!(%peer, "superseded by a newer connection of device {device:08x}");
                    return;
                }
                // Before the server takes the records: onlookers' samples (one atomic load
                // when nobody watches the device).
                entry.sample(&self.tap, device, &self.clock, S::link);
                let drained = self.server.step(device, &mut entry, stopping);
                while let Some(e) = S::link(&mut entry).poll_event() {
                    self.event(device, &mut entry, e);
                }
                let link = S::link(&mut entry);
                let now = self.clock.now();
                with_scratch(link.transmit_len(), |frame| {
                    while let Some(n) = link.poll_transmit(now, frame) {
                        out.extend_from_slice(&frame[..n]);
                    }
                });
                let records = link.stats().records_in;
                if records != records_seen {
                    (records_seen, records_at) = (records, now);
                } else if link.storage_idle()
                    && now.millis().saturating_sub(records_at.millis()) >= PARK_AFTER_MS
                {
                    link.storage_mut().park();
                }
                let ended = matches!(link.phase(), Phase::Closed | Phase::Rejected | Phase::Dead);
                (link.poll_timeout(), ended || drained)
            };
            if !out.is_empty() {
                match write_or_stall(&mut stream, &out, self.limits.idle_timeout).await {
                    Written::All => {}
                    Written::Failed(e) => {
                        debug!(%peer, "write failed: {e}");
                        break;
                    }
                    Written::Stalled => {
                        warn!(%peer, "device {device:08x} dropped: it read nothing for {:?} (its connection backed up)", self.limits.idle_timeout);
                        self.drop_one(Dropped::Stalled);
                        break;
                    }
                }
                out.clear();
                if out.capacity() > OUT_KEPT {
                    out = Vec::new();
                }
            }
            if finished {
                break;
            }
            timer.set(deadline.map(|d| self.clock.instant(d)));
            tokio::select! {
                r = read_into(&mut stream, S::READ_BUFFER, |bytes| {
                    let mut entry = session.lock();
                    if entry.is_current(generation) {
                        let now = self.clock.now();
                        S::link(&mut entry).handle_input(now, bytes);
                        entry.heard(now);
                    }
                }) => match r {
                    Ok(0) => { info!(%peer, "device {device:08x} disconnected"); break }
                    Ok(_) => {}
                    Err(e) => { info!(%peer, "device {device:08x} connection lost: {e}"); break }
                },
                _ = timer.fired() => {
                    S::link(&mut session.lock()).handle_timeout(self.clock.now());
                }
                _ = session.woken() => {}
                _ = stop.changed(), if !stopping => { stopping = true; }
            }
        }
        let closed = {
            let mut entry = session.lock();
            entry.detach(generation, std::time::Instant::now());
            let link = S::link(&mut entry);
            self.ended(device, link, peer);
            link.phase() == Phase::Closed
        };
        if closed {
            Box::pin(linger(&mut stream)).await;
        }
    }

    /// Reads a new connection up to its HELLO and binds it to its session: the session, the
    /// connection's generation and the device; `None` (logged, counted, the refusal sent)
    /// if it was dropped or refused.
    async fn open(
        self: &Arc<Self>,
        stream: &mut Stream,
        peer: &str,
    ) -> Option<(Arc<Session<S::State>>, u64, u32)> {
        let timeout = self.limits.handshake_timeout;
        let Some((hello, seen)) = hello::read_hello(stream, peer, timeout, S::RAW_HINT).await
        else {
            self.drop_one(Dropped::Handshake);
            return None;
        };
        let Some(hello) = hello else {
            match self.server.refusal_link() {
                Ok(link) => refuse_hello(link, self.clock.now(), &seen, stream, peer).await,
                Err(e) => {
                    warn!(%peer, "refused: a malformed HELLO (and no link to answer it: {e})")
                }
            }
            self.drop_one(Dropped::Refused);
            return None;
        };
        let Some((session, generation)) = self.bind(&hello, &seen, stream, peer).await else {
            self.drop_one(Dropped::Refused);
            return None;
        };
        Some((session, generation, hello.session))
    }

    /// Binds a connection whose HELLO is `hello` to its session: checked by the server,
    /// admitted by the table (a new session made, another forgotten at the limit), taken
    /// over (its generation), and the link given every byte read so far. `None` (logged,
    /// the refusal sent) if the connection is refused.
    async fn bind(
        self: &Arc<Self>,
        hello: &Hello,
        seen: &[u8],
        stream: &mut Stream,
        peer: &str,
    ) -> Option<(Arc<Session<S::State>>, u64)> {
        let device = hello.session;
        // Authentication (9.14) is decided before any state is kept for the device.
        let ticket = match self.server.check(hello) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                warn!(%peer, "device {device:08x} refused: {refusal}; nothing of it is written");
                let _ = stream.write_all(&refusal.frame()).await;
                return None;
            }
        };
        let admitted = {
            let mut table = lock(&self.table);
            let limit = table.limit();
            let now = std::time::Instant::now();
            let admitted = table.admit(device, now, S::idle, || self.server.open(hello));
            if let Ok(a) = &admitted {
                if let Some(old) = &a.forgotten {
                    self.tap.forget(&S::link(&mut old.lock()).stats());
                    self.server.forgotten(old);
                    info!("device {:08x} forgotten to make room for {device:08x} ({limit} sessions, --max-devices); it resumes if it returns", old.device());
                }
                if a.new {
                    info!("new device {device:08x}");
                }
            }
            admitted
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(Refused::Busy) => {
                warn!(%peer, "device {device:08x} refused: {} device sessions are in use, none idle (--max-devices)", self.limits.max_sessions);
                return None;
            }
            Err(Refused::Open(e)) => {
                warn!(%peer, "device {device:08x} refused: its link cannot be made: {e}");
                return None;
            }
        };
        if admitted.new {
            self.server.opened(self, &admitted.session);
        }
        let generation = {
            let mut entry = admitted.session.lock();
            match self.server.attach(device, &mut entry, ticket, hello) {
                Ok(()) => {
                    let generation = entry.attach();
                    entry.set_peer(peer);
                    let now = self.clock.now();
                    entry.heard(now);
                    let link = S::link(&mut entry);
                    link.connect(now);
                    link.handle_input(now, seen);
                    Ok(generation)
                }
                Err(refusal) => Err(refusal),
            }
        };
        match generation {
            Ok(g) => Some((admitted.session, g)),
            Err(refusal) => {
                warn!(%peer, "device {device:08x} refused: {refusal}");
                let _ = stream.write_all(&refusal.frame()).await;
                None
            }
        }
    }

    /// Logs an event of a device's link; a restart is the server's to report.
    fn event(&self, device: u32, state: &mut S::State, e: Event) {
        match e {
            Event::Connected { resumed } => info!(
                "device {device:08x}: session established (resumed: {resumed}), protocol version {}",
                S::link(state).protocol_version()
            ),
            Event::PeerRestarted { in_doubt } => self.server.restarted(device, state, in_doubt),
            Event::Delivered { up_to } => info!(
                "device {device:08x} acknowledged commands up to #{}",
                up_to.wrapping_sub(1)
            ),
            Event::Rejected { by_us } => warn!(
                "device {device:08x}: handshake refused (by the {}): {}",
                if by_us { S::NAME } else { "device" },
                reject_text(S::link(state))
            ),
            Event::PeerDead => warn!("device {device:08x}: no sign of life"),
            Event::Closed => info!("device {device:08x}: session closed"),
        }
    }

    /// Logs why a connection of `device` ended, if it is news.
    fn ended(&self, device: u32, link: &Link<HeapStorage>, peer: &str) {
        match link.phase() {
            Phase::Dead => {
                let d = link.stats().decoder;
                self.drop_one(Dropped::Silent);
                warn!(%peer, "device {device:08x} silent for {:?}: connection dropped (frames from it this session: {} valid, {} too long, {} corrupt)",
                    self.limits.idle_timeout, d.frames, d.too_long, d.crc_errors + d.cobs_errors)
            }
            Phase::Rejected => warn!(%peer, "device {device:08x} refused: {}", reject_text(link)),
            _ => {}
        }
        let st = link.stats();
        if st.auth_failures != 0 || st.replays != 0 {
            warn!(%peer, "device {device:08x}: {} frames failed authentication (altered or forged) and {} were replays, all dropped (this session so far)",
                st.auth_failures, st.replays);
        }
    }
}

/// How long after its last record a link's buffers are given back (at its next turn with
/// its storage idle: a keepalive, within a second more). Sooner, a device sending a record
/// every millisecond had its buffers given back and taken again between records: the
/// dashboard's 200 devices at 1 kHz cost the listener 15.8 µs a record instead of 9.1.
const PARK_AFTER_MS: u64 = 1000;

/// How long a connection whose session closed waits for its device to hang up.
const LINGER: Duration = Duration::from_secs(2);

/// Closes a connection whose session ended with CLOSE gracefully: our side of the stream
/// is shut and what the device still sends is read and dropped until it hangs up (or
/// [`LINGER`]). Closing at once would answer a byte still in flight (a CLOSE the device
/// sent again while our reply was on its way) with a reset, and a reset makes the device's
/// system drop the reply unread: the device then never learns its session closed
/// (`tether-bench` saw this with 10,000 devices closing at once).
async fn linger(stream: &mut Stream) {
    use tokio::io::AsyncReadExt;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How often the memory of buffers given back by idle links is returned to the system.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Bytes of a connection's write buffer kept between turns; a larger one (a burst of
/// commands) is given back once written.
const OUT_KEPT: usize = 4096;

std::thread_local! {
    /// Each worker thread's read buffer, shared by all its connections.
    static READ: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker thread's buffer for encoding frames.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer, at least `len` bytes long.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => {
            if b.len() < len {
                b.resize(len, 0);
            }
            f(&mut b[..len])
        }
        // Not reached (nothing here nests), but a fresh buffer is correct if it were.
        Err(_) => f(&mut vec![0; len]),
    })
}

/// Reads what `stream` has (up to `size` bytes) into this worker thread's read buffer and
/// gives it to `handle` at once, in the same poll; the number of bytes read (0: the peer
/// closed). A connection waiting for bytes so holds no read buffer of its own: with 10,000
/// mostly idle devices a 64 KiB buffer each would be 640 MB. Cancel-safe: nothing is read
/// unless it is handled.
fn read_into<'a>(
    stream: &'a mut Stream,
    size: usize,
    mut handle: impl FnMut(&[u8]) + 'a,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        READ.with(|cell| {
            let mut owned;
            let mut shared = cell.try_borrow_mut().ok();
            let buf: &mut Vec<u8> = match shared.as_deref_mut() {
                Some(b) => b,
                None => {
                    owned = Vec::new();
                    &mut owned
                }
            };
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let mut rb = tokio::io::ReadBuf::new(&mut buf[..size]);
            match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                std::task::Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n > 0 {
                        handle(rb.filled());
                    }
                    std::task::Poll::Ready(Ok(n))
                }
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
    })
}

/// Answers a HELLO this version cannot accept: a throw-away `link` reads it and makes the
/// REJECT whose reason the device's user can read; the reason is logged too.
async fn refuse_hello(
    mut link: Link<HeapStorage>,
    now: tether_core::link::Instant,
    seen: &[u8],
    stream: &mut Stream,
    peer: &str,
) {
    link.connect(now);
    link.handle_input(now, seen);
    let reason = link
        .reject()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "malformed HELLO".into());
    warn!(%peer, "refused: {reason}");
    let mut out = vec![0u8; link.transmit_len()];
    while let Some(n) = link.poll_transmit(now, &mut out) {
        let _ = stream.write_all(&out[..n]).await;
    }
}
