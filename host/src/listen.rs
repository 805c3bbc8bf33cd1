//! `tether listen`: accepts many devices at once, each its own session, and logs their
//! records to one CSV file. A record is acknowledged only after it was written (and, with
//! `fsync`, is on disk).
//!
//! Each device session keeps one [`Link`] for the life of the listener, so a device that
//! reconnects resumes where it was: the listener reads the HELLO of a new connection, finds
//! the session it names, and hands the connection to that link.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tether_core::frame::{Decoder, Kind};
use tether_core::link::{self, Config, ConfigError, Event, Link, Phase, Role, MIN_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::clock::{Clock, Timer};
use crate::endpoint::Endpoint;
use crate::sink::{CsvSink, SinkError};
use crate::storage::HeapStorage;
use crate::transport::{write_or_stall, Acceptor, Stream, TransportError, Written};

/// How the listener behaves. [`ListenOptions::new`] has the documented defaults.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Where to listen.
    pub endpoints: Vec<Endpoint>,
    /// The CSV file records are appended to.
    pub csv: PathBuf,
    /// Acknowledge records only once they are on disk (fsync after each batch).
    pub fsync: bool,
    /// Connections served at once; more are refused. Default 256.
    pub max_connections: usize,
    /// Device sessions kept (each holds its link's buffers, about 76 KiB at the default
    /// window and record size). At the limit, a new device takes the place of the one idle
    /// longest with nothing pending; it resumes exactly once when it comes back. Default 256.
    pub max_devices: usize,
    /// A new connection must say HELLO within this. Default 5 s.
    pub handshake_timeout: Duration,
    /// A device silent for this long is dropped (it sends PINGs every second when idle,
    /// so this also catches half-open connections). Default 10 s.
    pub idle_timeout: Duration,
    /// Records each device may have in flight: its receive window. Default 64.
    pub window: usize,
    /// The largest record accepted, bytes. Default 1024.
    pub max_record: usize,
    /// The largest command sent to devices, bytes. Default 64.
    pub max_command: usize,
    /// Speak the tutorial's raw protocol instead of Tether (see [`crate::raw`]).
    pub raw: bool,
    /// Authenticate devices with these pre-shared keys (`PROTOCOL.md` 9.14); a device
    /// without a key, with the wrong key or without authentication is refused. Default
    /// none: devices are not authenticated, and one that asks for it is refused.
    pub keys: Option<Arc<crate::keys::KeyTable>>,
}

impl ListenOptions {
    /// Defaults for `endpoints`, writing to `csv`.
    pub fn new(endpoints: Vec<Endpoint>, csv: PathBuf) -> Self {
        ListenOptions {
            endpoints,
            csv,
            fsync: false,
            max_connections: 256,
            max_devices: 256,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            window: 64,
            max_record: 1024,
            max_command: 64,
            raw: false,
            keys: None,
        }
    }
}

/// Why the listener could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// An endpoint could not be bound (TCP: the system's reason; RFCOMM: what is missing
    /// and what to do).
    #[error(transparent)]
    Bind(#[from] TransportError),
    /// The CSV file could not be opened or written.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The CSV file could not be checked or repaired after a crash.
    #[error(transparent)]
    Recover(#[from] crate::recover::RecoverError),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Options(String),
}

/// What a listener did, for its summary line.
#[derive(Debug, Clone, Default)]
pub struct ListenSummary {
    /// Records written to the CSV and acknowledged.
    pub records: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Devices (identities) that had a session, evicted ones included.
    pub devices: usize,
    /// Retransmissions the listener's links made (by the sessions still kept).
    pub retransmissions: u64,
    /// Connections dropped for garbage, protocol violations or time-outs.
    pub dropped_connections: u64,
}

/// A way to send commands to connected devices while the listener runs.
#[derive(Debug, Clone)]
pub struct Commands {
    shared: Arc<Shared>,
}

impl Commands {
    /// Queues `command` for the device whose session is `device` (or every known device when
    /// `None`). Returns how many devices it was queued for. Commands are delivered in order,
    /// across reconnects, and their acknowledgement is logged.
    pub fn send(&self, device: Option<u32>, command: &[u8]) -> usize {
        let sessions: Vec<Arc<Mutex<Session>>> = {
            let map = lock(&self.shared.sessions);
            match device {
                Some(d) => map.get(&d).cloned().into_iter().collect(),
                None => map.values().cloned().collect(),
            }
        };
        for s in &sessions {
            let mut s = lock(s);
            s.commands.push_back(command.to_vec());
            s.wake.notify_one();
        }
        sessions.len()
    }

    /// Commands sent to `device` and not yet acknowledged by it (queued ones included), or
    /// `None` for an unknown device.
    pub fn unacknowledged(&self, device: u32) -> Option<u32> {
        let session = lock(&self.shared.sessions).get(&device).cloned()?;
        let s = lock(&session);
        Some(s.link.unacked() + s.commands.len() as u32)
    }

    /// The device sessions known so far.
    pub fn devices(&self) -> Vec<u32> {
        let mut v: Vec<u32> = lock(&self.shared.sessions).keys().copied().collect();
        v.sort_unstable();
        v
    }
}

/// What a running listener is doing, for a status line.
#[derive(Debug, Clone)]
pub struct Status {
    shared: Arc<Shared>,
}

impl Status {
    /// Records written and acknowledged, device sessions known, connections open.
    pub fn snapshot(&self) -> (u64, usize, u64) {
        (
            self.shared.records.load(Ordering::Relaxed),
            lock(&self.shared.sessions).len(),
            self.shared.active.load(Ordering::Relaxed),
        )
    }
}

/// A bound listener, ready to [`Listener::run`].
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<Acceptor>,
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
}

/// One device session: its link survives connections.
struct Session {
    link: Link<HeapStorage>,
    device: u32,
    /// Bumped by each new connection; an older connection task seeing a newer generation
    /// leaves the link alone.
    generation: u64,
    commands: VecDeque<Vec<u8>>,
    wake: Arc<Notify>,
    /// Whether a connection serves it now, and since when it is without one.
    connected: bool,
    idle_since: std::time::Instant,
    /// Where its records are in the CSV, so that what it sends again after a listener
    /// restart is written once.
    resume: crate::recover::Resume,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({:08x})", self.device)
    }
}

#[derive(Debug)]
struct Shared {
    opts: ListenOptions,
    clock: Clock,
    sessions: Mutex<HashMap<u32, Arc<Mutex<Session>>>>,
    /// Each device's last record in the CSV as found at start (see [`crate::recover`]),
    /// taken by its session when it first connects.
    recovered: Mutex<HashMap<u32, u32>>,
    /// Every device identity that had a session, for the summary (sessions are evicted at
    /// `max_devices`, so their count is not the devices seen).
    seen: Mutex<HashSet<u32>>,
    sink: Mutex<CsvSink>,
    records: AtomicU64,
    connections: AtomicU64,
    dropped: AtomicU64,
    active: AtomicU64,
}

/// Locks, recovering the data of a poisoned mutex (a panicking task must not take every
/// other device down with it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Listener {
    /// Binds every endpoint and opens the CSV file.
    pub async fn bind(opts: ListenOptions) -> Result<Listener, ListenError> {
        crate::options::Serving {
            window: opts.window,
            max_record: opts.max_record,
            max_connections: opts.max_connections,
            handshake_timeout: opts.handshake_timeout,
            idle_timeout: opts.idle_timeout,
        }
        .check()
        .map_err(ListenError::Options)?;
        if opts.max_devices == 0 {
            return Err(ListenError::Options(
                "--max-devices must be at least 1".into(),
            ));
        }
        let trailer = tether_core::link::auth::TRAILER_LEN;
        if opts.keys.is_some() && opts.max_record > tether_core::frame::MAX_PAYLOAD - trailer {
            return Err(ListenError::Options(format!(
                "with --keys, max record must be at most {} bytes (each frame carries a {trailer}-byte MAC trailer)",
                tether_core::frame::MAX_PAYLOAD - trailer
            )));
        }
        let mut sockets = Vec::new();
        let mut addrs = Vec::new();
        for e in &opts.endpoints {
            let s = Acceptor::bind(e).await?;
            addrs.extend(s.tcp_addr());
            sockets.push(s);
        }
        // Opened (locked, and refused if not a Tether CSV) before recovery may cut anything.
        let mut sink = CsvSink::open(&opts.csv, opts.fsync)?;
        let recovered = crate::recover::recover(&mut sink)?;
        crate::recover::log_recovered(&opts.csv, &recovered);
        let shared = Arc::new(Shared {
            opts,
            clock: Clock::new(),
            sessions: Mutex::new(HashMap::new()),
            recovered: Mutex::new(recovered.last_seq),
            seen: Mutex::new(HashSet::new()),
            sink: Mutex::new(sink),
            records: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            active: AtomicU64::new(0),
        });
        Ok(Listener {
            sockets,
            addrs,
            shared,
        })
    }

    /// The TCP addresses bound (with the ports the system chose for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Every endpoint listened on, for people (RFCOMM: with the address devices connect to).
    pub fn describe_endpoints(&self) -> Vec<String> {
        self.sockets.iter().map(Acceptor::describe).collect()
    }

    /// A handle to send commands to devices.
    pub fn commands(&self) -> Commands {
        Commands {
            shared: self.shared.clone(),
        }
    }

    /// A handle for a status display.
    pub fn status(&self) -> Status {
        Status {
            shared: self.shared.clone(),
        }
    }

    /// Records written and acknowledged so far.
    pub fn records(&self) -> u64 {
        self.shared.records.load(Ordering::Relaxed)
    }

    /// Serves until `shutdown` completes; then stops accepting, writes and acknowledges what
    /// arrived, closes the connections and returns the summary.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<ListenSummary, ListenError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut accepted = crate::transport::accept_all(self.sockets, &mut tasks, &stop_rx);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some((stream, peer)) = accepted.recv() => {
                    self.shared.connections.fetch_add(1, Ordering::Relaxed);
                    let active = self.shared.active.load(Ordering::Relaxed);
                    if active >= self.shared.opts.max_connections as u64 {
                        warn!(%peer, "connection refused: limit of {} connections reached", self.shared.opts.max_connections);
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let shared = self.shared.clone();
                    let stop = stop_rx.clone();
                    shared.active.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(async move {
                        if shared.opts.raw {
                            match crate::raw::serve(stream, &peer, &shared.sink, shared.opts.idle_timeout).await {
                                Ok(n) => { shared.records.fetch_add(n, Ordering::Relaxed); }
                                Err(e) => warn!(%peer, "{e}"),
                            }
                        } else {
                            serve(&shared, stream, &peer, stop).await;
                        }
                        shared.active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        info!("shutting down: finishing what arrived");
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            warn!("some connections did not close within 5 s");
        }
        // Marker rows a failed batch left pending get a last chance.
        lock(&self.shared.sink).batch().commit()?;
        let retransmissions = lock(&self.shared.sessions)
            .values()
            .map(|s| u64::from(lock(s).link.stats().retransmissions))
            .sum();
        Ok(ListenSummary {
            records: self.shared.records.load(Ordering::Relaxed),
            connections: self.shared.connections.load(Ordering::Relaxed),
            devices: lock(&self.shared.seen).len(),
            retransmissions,
            dropped_connections: self.shared.dropped.load(Ordering::Relaxed),
        })
    }
}

impl Shared {
    /// A link for a device whose HELLO says it sends records of at most `device_max_send`
    /// bytes: its receive slots are that long (within `--max-record`), not `--max-record`
    /// long, so a device of 128-byte frames costs 64 × 128 bytes of slots rather than
    /// 64 × 1 KiB (the memory an idle connection holds: `tether-bench`).
    fn new_link(&self, device_max_send: Option<u16>) -> Result<Link<HeapStorage>, ConfigError> {
        let min_record = MIN_FRAME - tether_core::frame::OVERHEAD;
        let record = device_max_send
            .map_or(self.opts.max_record, |m| usize::from(m).max(min_record))
            .min(self.opts.max_record);
        // Each link its own identity: a device whose session was forgotten (see `admit`)
        // must see a new one, or it would resume against state that is gone (9.5.5).
        let mut cfg = Config::new(Role::Server, crate::random_session());
        cfg.max_send = self.opts.max_command.min(record) as u16;
        cfg.dead_after_ms = crate::options::dead_after_ms(self.opts.idle_timeout);
        // Commands are few and short: 8 in flight is plenty (each slot is a record long).
        let storage = HeapStorage::new(
            self.opts.window.min(8),
            self.opts.window,
            record
                + tether_core::frame::OVERHEAD
                + self
                    .opts
                    .keys
                    .as_ref()
                    .map_or(0, |_| tether_core::link::auth::TRAILER_LEN),
        );
        // Options were checked in `bind`, so this fails only if that check missed a case:
        // the connection is then refused with the reason, and the listener carries on.
        Link::new(cfg, storage)
    }
}

/// The session of `device`, made if new. At `max_devices` sessions, the one idle longest
/// with nothing pending (no connection, no record held, no command unacknowledged) makes
/// room; its last written record is kept, so that it resumes exactly once if it returns
/// (its new link has a new session identity, so the device takes it as a listener
/// restart). Otherwise why it was refused: every session is busy.
fn admit(
    shared: &Shared,
    device: u32,
    max_send: Option<u16>,
) -> Result<Arc<Mutex<Session>>, String> {
    let mut map = lock(&shared.sessions);
    if let Some(s) = map.get(&device) {
        return Ok(s.clone());
    }
    let busy = || {
        format!(
            "{} device sessions are in use, none idle (--max-devices)",
            shared.opts.max_devices
        )
    };
    if map.len() >= shared.opts.max_devices.max(1) {
        let (_, victim) = map
            .iter()
            .filter_map(|(&d, s)| {
                let mut s = lock(s);
                let idle = !s.connected
                    && s.commands.is_empty()
                    && s.link.unacked() == 0
                    && s.link.received().next().is_none();
                idle.then_some((s.idle_since, d))
            })
            .min()
            .ok_or_else(busy)?;
        if let Some(old) = map.remove(&victim) {
            let last = lock(&old).resume.last_written();
            if let Some(last) = last {
                lock(&shared.recovered).insert(victim, last);
            }
            info!("device {victim:08x} forgotten to make room for {device:08x} ({} sessions, --max-devices); it resumes if it returns", shared.opts.max_devices);
        }
    }
    let link = shared
        .new_link(max_send)
        .map_err(|e| format!("its link cannot be made: {e}"))?;
    info!("new device {device:08x}");
    lock(&shared.seen).insert(device);
    let session = Arc::new(Mutex::new(Session {
        link,
        device,
        generation: 0,
        commands: VecDeque::new(),
        wake: Arc::new(Notify::new()),
        connected: false,
        idle_since: std::time::Instant::now(),
        resume: crate::recover::Resume::new(lock(&shared.recovered).remove(&device)),
    }));
    map.insert(device, session.clone());
    Ok(session)
}

/// Reads a new connection up to its HELLO. Returns the session it names and every byte read
/// so far, or `None` (after logging why) if the connection is to be dropped.
async fn read_hello(
    shared: &Shared,
    stream: &mut Stream,
    peer: &str,
) -> Option<(Option<u32>, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + shared.opts.handshake_timeout;
    let mut decoder = Decoder::new(vec![0u8; MIN_FRAME.max(128)]);
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                warn!(%peer, "dropped: no HELLO within {:?}{}", shared.opts.handshake_timeout, raw_hint(&seen));
                return None;
            }
            Ok(Ok(0)) => {
                debug!(%peer, "closed before its HELLO");
                return None;
            }
            Ok(Err(e)) => {
                debug!(%peer, "read failed before HELLO: {e}");
                return None;
            }
            Ok(Ok(n)) => n,
        };
        seen.extend_from_slice(&buf[..n]);
        let mut input = &buf[..n];
        while let Some(r) = decoder.decode(&mut input) {
            match r {
                Ok(f) if f.header.kind == Kind::Hello => {
                    return Some((link::hello_session(f.payload), seen));
                }
                // Ignored, as by a Handshaking server (PROTOCOL.md 9.4.1): on a serial line a
                // previous session's frames arrive first. The 4 KiB and the time-out bound it.
                Ok(f) => {
                    debug!(%peer, "frame of kind {} before HELLO ignored", f.header.kind as u8)
                }
                Err(e) => debug!(%peer, "garbage before HELLO: {e}"),
            }
        }
        if seen.len() > 4096 {
            warn!(%peer, "dropped: no valid HELLO in the first 4 KiB (not a Tether device?){}", raw_hint(&seen));
            return None;
        }
    }
}

/// A hint for a peer that sent bytes but never a frame: text without a frame delimiter is
/// what a client of the tutorial's raw protocol sends.
pub(crate) fn raw_hint(seen: &[u8]) -> &'static str {
    let text = !seen.is_empty()
        && !seen.contains(&0)
        && seen
            .iter()
            .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if text {
        "; it sent text and no Tether frame: if it is a client of the tutorial's raw protocol, run tether listen --raw"
    } else {
        ""
    }
}

/// Answers a HELLO this version cannot accept: a throw-away `link` reads it and makes the
/// REJECT whose reason the device's user can read; the reason is logged too.
pub(crate) async fn refuse_hello(
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

/// Serves one connection until it ends, is superseded, or the listener stops.
async fn serve(shared: &Shared, mut stream: Stream, peer: &str, mut stop: watch::Receiver<bool>) {
    let Some((session, seen)) = read_hello(shared, &mut stream, peer).await else {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(device) = session else {
        let now = shared.clock.now();
        match shared.new_link(None) {
            Ok(link) => refuse_hello(link, now, &seen, &mut stream, peer).await,
            Err(e) => warn!(%peer, "refused: a malformed HELLO (and no link to answer it: {e})"),
        }
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // Authentication (9.14) is decided before any state is kept for the device.
    let key = match crate::keys::admit(shared.opts.keys.as_deref(), &seen) {
        Ok(key) => key,
        Err(refusal) => {
            warn!(%peer, "device {device:08x} refused: {refusal}; nothing of it is written");
            let _ = stream.write_all(&refusal.frame()).await;
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let max_send = crate::recover::hello_in(&seen).map(|h| h.max_send);
    let session = match admit(shared, device, max_send) {
        Ok(session) => session,
        Err(why) => {
            warn!(%peer, "device {device:08x} refused: {why}");
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let bound = crate::keys::bind(&mut lock(&session).link, key);
    if let Err(refusal) = bound {
        warn!(%peer, "device {device:08x} refused: {refusal}");
        let _ = stream.write_all(&refusal.frame()).await;
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (generation, wake) = {
        let mut s = lock(&session);
        s.generation += 1;
        s.connected = true;
        if let Some(notice) = s.resume.on_hello(crate::recover::hello_in(&seen)) {
            crate::recover::report(&shared.sink, device, &notice);
        }
        let now = shared.clock.now();
        s.link.connect(now);
        s.link.handle_input(now, &seen);
        (s.generation, s.wake.clone())
    };
    info!(%peer, "device {device:08x} connected");
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut stopping = false;
    let mut timer = Timer::new();
    loop {
        let (deadline, finished) = {
            let mut s = lock(&session);
            if s.generation != generation {
                debug!(%peer, "superseded by a newer connection of device {device:08x}");
                return;
            }
            if let Err(e) = step(shared, &mut s, &mut out) {
                // The sink logs a failing CSV once, not once a round.
                debug!("device {device:08x}: {e}; its records stay unacknowledged");
            }
            let phase = s.link.phase();
            let finished = matches!(phase, Phase::Closed | Phase::Rejected | Phase::Dead)
                || (stopping && s.link.received().next().is_none());
            (s.link.poll_timeout(), finished)
        };
        if !out.is_empty() {
            match write_or_stall(&mut stream, &out, shared.opts.idle_timeout).await {
                Written::All => {}
                Written::Failed(e) => {
                    debug!(%peer, "write failed: {e}");
                    break;
                }
                Written::Stalled => {
                    warn!(%peer, "device {device:08x} dropped: it read nothing for {:?} (its connection backed up)", shared.opts.idle_timeout);
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            out.clear();
        }
        if finished {
            break;
        }
        timer.set(deadline.map(|d| shared.clock.instant(d)));
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => { info!(%peer, "device {device:08x} disconnected"); break }
                Ok(n) => {
                    let mut s = lock(&session);
                    if s.generation == generation {
                        s.link.handle_input(shared.clock.now(), &buf[..n]);
                    }
                }
                Err(e) => { info!(%peer, "device {device:08x} connection lost: {e}"); break }
            },
            _ = timer.fired() => {
                lock(&session).link.handle_timeout(shared.clock.now());
            }
            _ = wake.notified() => {}
            _ = stop.changed(), if !stopping => { stopping = true; }
        }
    }
    let mut s = lock(&session);
    if s.generation == generation {
        s.connected = false;
        s.idle_since = std::time::Instant::now();
    }
    match s.link.phase() {
        Phase::Dead => {
            let d = s.link.stats().decoder;
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "device {device:08x} silent for {:?}: connection dropped (frames from it this session: {} valid, {} too long, {} corrupt)",
                shared.opts.idle_timeout, d.frames, d.too_long, d.crc_errors + d.cobs_errors)
        }
        Phase::Rejected => warn!(%peer, "device {device:08x} refused: {}", reject_text(&s.link)),
        _ => {}
    }
    let st = s.link.stats();
    if st.auth_failures != 0 || st.replays != 0 {
        warn!(%peer, "device {device:08x}: {} frames failed authentication (altered or forged) and {} were replays, all dropped (this session so far)",
            st.auth_failures, st.replays);
    }
}

/// One round of work for a session under its lock: write what arrived, acknowledge it,
/// queue commands, report events, and gather the frames to send.
fn step(shared: &Shared, s: &mut Session, out: &mut Vec<u8>) -> Result<(), SinkError> {
    let now = shared.clock.now();
    let device = s.device;
    // A failed batch (a full disk) leaves nothing in the CSV and nothing released: its
    // records are sent again and written once. The link carries on below either way.
    let written = write_received(shared, s);
    while let Some(cmd) = s.commands.front() {
        match s.link.send(cmd) {
            Ok(seq) => {
                info!("command #{seq} queued for device {device:08x}");
                s.commands.pop_front();
            }
            Err(link::SendError::WouldBlock) => break,
            Err(e) => {
                warn!("command to device {device:08x} refused: {e}");
                s.commands.pop_front();
            }
        }
    }
    while let Some(e) = s.link.poll_event() {
        match e {
            Event::Connected { resumed } => {
                info!("device {device:08x}: session established (resumed: {resumed})")
            }
            Event::PeerRestarted { in_doubt } => {
                let restart = s.resume.restarted();
                crate::recover::report_restart(&shared.sink, device, restart, in_doubt);
            }
            Event::Delivered { up_to } => info!(
                "device {device:08x} acknowledged commands up to #{}",
                up_to.wrapping_sub(1)
            ),
            Event::Rejected { by_us } => warn!(
                "device {device:08x}: handshake refused ({}): {}",
                if by_us {
                    "by the listener"
                } else {
                    "by the device"
                },
                reject_text(&s.link)
            ),
            Event::PeerDead => warn!("device {device:08x}: no sign of life"),
            Event::Closed => info!("device {device:08x}: session closed"),
        }
    }
    let mut frame = [0u8; 2048];
    let len = s.link.transmit_len();
    let mut big;
    let buf: &mut [u8] = if len <= frame.len() {
        &mut frame
    } else {
        big = vec![0u8; len];
        &mut big
    };
    while let Some(k) = s.link.poll_transmit(now, buf) {
        out.extend_from_slice(&buf[..k]);
    }
    written
}

/// Writes what the link of `s` received as one batch, and releases it once the batch is
/// committed; if the batch fails, nothing is released.
fn write_received(shared: &Shared, s: &mut Session) -> Result<(), SinkError> {
    let device = s.device;
    let (mut n, mut skipped, mut last) = (0, 0, 0);
    {
        let mut sink = lock(&shared.sink);
        let mut batch = sink.batch();
        let time = SystemTime::now();
        for r in s.link.received() {
            // Sent again after a listener restart, and already in the CSV: released unwritten.
            if s.resume.already_written(r.seq) {
                skipped += 1;
            } else {
                batch.write(time, device, r.seq, r.payload)?;
            }
            last = r.seq;
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        batch.commit()?;
    }
    s.resume.committed(last, skipped as u64);
    s.link.release(n);
    shared
        .records
        .fetch_add((n - skipped) as u64, Ordering::Relaxed);
    Ok(())
}

/// Why a link's handshake was refused, for people.
pub(crate) fn reject_text(link: &Link<HeapStorage>) -> String {
    link.reject()
        .map_or_else(|| "no reason given".to_owned(), |r| r.to_string())
}
