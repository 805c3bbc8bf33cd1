//! `tether listen`: accepts many devices at once, each its own session, and logs their
//! records to one CSV file. A record is acknowledged only after it was written (and, with
//! `fsync`, is on disk).
//!
//! Each device session keeps one [`Link`] for the life of the listener, so a device that
//! reconnects resumes where it was. The sessions are served by [`crate::session`]; the
//! listener is its [`Logger`] server: what a device's link received is written to the CSV as
//! one batch, and released (acknowledged) once the batch is committed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tether_core::link::{self, Config, ConfigError, Key, Link, Role, MIN_FRAME};
use tracing::{debug, info, warn};

use crate::endpoint::Endpoint;
use crate::keys::Refusal;
use crate::session::tap::Histogram;
use crate::session::{lock, Engine, Hello, Observed, Server, Session};
use crate::sink::{Batch, Destination, Sink, SinkError};
use crate::storage::HeapStorage;
use crate::transport::{Acceptor, TransportError};

/// How the listener behaves. [`ListenOptions::new`] has the documented defaults.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Where to listen.
    pub endpoints: Vec<Endpoint>,
    /// The CSV file records are appended to.
    pub csv: PathBuf,
    /// Where records go instead of `csv`, if set (`--sink`: an MQTT broker).
    pub sink: Option<Destination>,
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
    /// The highest protocol version accepted from a device (`PROTOCOL.md` 11.2): 2 by
    /// default; a device that offers 1 is spoken to in version 1.
    pub max_version: u8,
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
        let d = crate::options::Serving::DEFAULT;
        ListenOptions {
            endpoints,
            csv,
            sink: None,
            fsync: false,
            max_connections: d.max_connections,
            max_devices: d.max_devices,
            handshake_timeout: d.handshake_timeout,
            idle_timeout: d.idle_timeout,
            window: d.window,
            max_version: d.max_version,
            max_record: d.max_record,
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
    /// Device sessions kept at the end (at most `--max-devices`).
    pub sessions: usize,
    /// Retransmissions the listener's links made (by the sessions still kept).
    pub retransmissions: u64,
    /// Connections dropped for garbage, protocol violations or time-outs.
    pub dropped_connections: u64,
    /// The listener stopped because its output went away (`jsonl:-` into a pipe whose
    /// reader exited): what it had not written stays with the devices.
    pub output_gone: bool,
}

/// A way to send commands to connected devices while the listener runs.
#[derive(Debug, Clone)]
pub struct Commands {
    engine: Arc<Engine<Logger>>,
}

impl Commands {
    /// Queues `command` for the device whose session is `device` (or every known device when
    /// `None`). Returns how many devices it was queued for. Commands are delivered in order,
    /// across reconnects, and their acknowledgement is logged.
    pub fn send(&self, device: Option<u32>, command: &[u8]) -> usize {
        let sessions = match device {
            Some(d) => self.engine.session(d).into_iter().collect(),
            None => self.engine.sessions(),
        };
        for s in &sessions {
            s.lock().commands.push_back(command.to_vec());
            s.wake();
        }
        sessions.len()
    }

    /// Commands sent to `device` and not yet acknowledged by it (queued ones included), or
    /// `None` for an unknown device.
    pub fn unacknowledged(&self, device: u32) -> Option<u32> {
        let session = self.engine.session(device)?;
        let s = session.lock();
        Some(s.link.unacked() + s.commands.len() as u32)
    }

    /// The device sessions known so far.
    pub fn devices(&self) -> Vec<u32> {
        self.engine.devices()
    }
}

/// What a running listener is doing, for a status line.
#[derive(Debug, Clone)]
pub struct Status {
    engine: Arc<Engine<Logger>>,
}

impl Status {
    /// Records written and acknowledged, device sessions known, connections open.
    pub fn snapshot(&self) -> (u64, usize, u64) {
        (
            self.engine.server().records.load(Ordering::Relaxed),
            self.engine.kept(),
            self.engine.active(),
        )
    }
}

/// A bound listener, ready to [`Listener::run`].
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<Acceptor>,
    addrs: Vec<SocketAddr>,
    engine: Arc<Engine<Logger>>,
}

/// One device session at the listener: its link survives connections.
#[derive(Debug)]
pub struct Device {
    link: Link<HeapStorage>,
    commands: VecDeque<Vec<u8>>,
    /// Where its records are in the CSV, so that what it sends again after a listener
    /// restart is written once.
    resume: crate::recover::Resume,
    /// Where its records stand with a sink that acknowledges later (MQTT).
    handover: crate::deferred::Handover,
}

/// The listener as a [`Server`] of device sessions: what it received is written to the CSV
/// as one batch, and released once the batch is committed.
#[derive(Debug)]
pub struct Logger {
    opts: ListenOptions,
    /// Each device's last record in the CSV as found at start (see [`crate::recover`]), or
    /// as its forgotten session left it, taken by its session when it first connects.
    recovered: Mutex<HashMap<u32, u32>>,
    /// Written by each device's task in turn, under this lock. One sink task with group
    /// commit instead (jobs copied to it, each device released on its answer) was measured
    /// and not kept: two task hops a batch took one record's round trip from 1.7 to 2.85
    /// times raw TCP's (tether-bench --only small,round-trip, 2 cores), the small-record
    /// rate no better. It pays where a commit is slow (`--fsync`, a database): then it is
    /// worth its hops, and the `Sink` trait is where it goes.
    sink: Mutex<Box<dyn Sink>>,
    /// The sink, if it acknowledges records after they were handed over (a broker): then
    /// records are submitted as they arrive and released as it reports them durable.
    deferred: Option<Arc<dyn crate::deferred::Deferred>>,
    records: AtomicU64,
    /// How long each batch's commit took (`/metrics`): two clock reads a batch.
    commit_latency: Histogram,
    /// Set when the sink's output can never be written again (standard output whose reader
    /// went away, [`SinkError::output_gone`]); `gone` then wakes [`Listener::run`] to stop.
    output_gone: AtomicBool,
    gone: tokio::sync::Notify,
}

impl Listener {
    /// Binds every endpoint and opens the CSV file.
    pub async fn bind(opts: ListenOptions) -> Result<Listener, ListenError> {
        let limits = crate::options::serving_of!(opts)
            .check()
            .map_err(ListenError::Options)?;
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
        let destination = opts
            .sink
            .clone()
            .unwrap_or_else(|| Destination::Csv(opts.csv.clone()));
        if opts.raw && !matches!(destination, Destination::Csv(_)) {
            return Err(ListenError::Options(
                "--raw writes a CSV file only (--csv), not --sink".into(),
            ));
        }
        let mut sink = crate::sink::open(&destination, opts.fsync)?;
        let deferred = sink.deferred();
        let recovered = sink.recover()?;
        crate::recover::log_recovered(&sink.describe(), &recovered);
        let engine = Engine::new(
            Logger {
                opts,
                recovered: Mutex::new(recovered.last_seq),
                sink: Mutex::new(sink),
                deferred,
                records: AtomicU64::new(0),
                commit_latency: Histogram::default(),
                output_gone: AtomicBool::new(false),
                gone: tokio::sync::Notify::new(),
            },
            limits,
        );
        Ok(Listener {
            sockets,
            addrs,
            engine,
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
            engine: self.engine.clone(),
        }
    }

    /// A handle for a status display.
    pub fn status(&self) -> Status {
        Status {
            engine: self.engine.clone(),
        }
    }

    /// What the dashboard (`crate::http`) reads: the sessions, their counters, commands.
    pub fn observer(&self) -> Arc<dyn crate::http::Observe> {
        self.engine.clone()
    }

    /// Records written and acknowledged so far.
    pub fn records(&self) -> u64 {
        self.engine.server().records.load(Ordering::Relaxed)
    }

    /// Serves until `shutdown` completes; then stops accepting, writes and acknowledges what
    /// arrived, closes the connections and returns the summary.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<ListenSummary, ListenError> {
        let engine = self.engine;
        // A signal, or the sink's output gone for good.
        let shutdown = async {
            tokio::select! {
                () = shutdown => {}
                () = engine.server().gone.notified() => {}
            }
        };
        if let Some(d) = engine.server().deferred.clone() {
            engine.spawn(publish_link_state(engine.clone(), d));
        }
        engine
            .run(self.sockets, shutdown, |engine, stream, peer| async move {
                let logger = engine.server();
                if logger.opts.raw {
                    let idle = logger.opts.idle_timeout;
                    // Boxed, so that its buffer is not part of every connection's task.
                    match Box::pin(crate::raw::serve(stream, &peer, &logger.sink, idle)).await {
                        Ok(n) => {
                            logger.records.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => warn!(%peer, "{e}"),
                    }
                } else {
                    engine.serve_connection(stream, peer).await;
                }
            })
            .await;
        let logger = engine.server();
        let output_gone = logger.output_gone.load(Ordering::Relaxed);
        // Marker rows a failed batch left pending get a last chance (none where the output
        // is gone).
        if !output_gone {
            Batch::new(&mut **lock(&logger.sink)).commit()?;
        }
        if let Some(d) = &logger.deferred {
            d.close();
        }
        let retransmissions = engine
            .sessions()
            .iter()
            .map(|s| u64::from(s.lock().link.stats().retransmissions))
            .sum();
        Ok(ListenSummary {
            records: logger.records.load(Ordering::Relaxed),
            connections: engine.connections(),
            devices: engine.seen(),
            sessions: engine.sessions().len(),
            retransmissions,
            dropped_connections: engine.dropped(),
            output_gone,
        })
    }
}

impl Logger {
    /// A link for a device whose HELLO says it sends records of at most `device_max_send`
    /// bytes: its receive slots are that long (within `--max-record`), not `--max-record`
    /// long, so a device of 128-byte frames costs 64 × 128 bytes of slots rather than
    /// 64 × 1 KiB (the memory an idle connection holds: `tether-bench`).
    fn new_link(&self, device_max_send: Option<u16>) -> Result<Link<HeapStorage>, ConfigError> {
        let min_record = MIN_FRAME - tether_core::frame::OVERHEAD;
        let record = device_max_send
            .map_or(self.opts.max_record, |m| usize::from(m).max(min_record))
            .min(self.opts.max_record);
        // Each link its own identity: a device whose session was forgotten (see
        // `Table::admit`) must see a new one, or it would resume against state that is gone
        // (9.5.5).
        let mut cfg = Config::new(Role::Server, crate::random_session());
        cfg.max_send = self.opts.max_command.min(record) as u16;
        cfg.dead_after_ms = crate::options::dead_after_ms(self.opts.idle_timeout);
        cfg.max_version = self.opts.max_version;
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
        // Link::new took the buffers to check their shape; they are taken again when the
        // device's first bytes arrive.
        Link::new(cfg, storage).map(|mut link| {
            link.storage_mut().park();
            link
        })
    }

    /// Writes what the link of `s` received as one batch, and releases it once the batch is
    /// committed; if the batch fails, nothing is released.
    fn write_received(&self, device: u32, s: &mut Device) -> Result<(), SinkError> {
        if let Some(d) = &self.deferred {
            let n =
                crate::deferred::pass(&**d, device, &mut s.link, &mut s.resume, &mut s.handover)?;
            self.records.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        let (mut n, mut skipped, mut last) = (0, 0, 0);
        {
            let mut sink = lock(&self.sink);
            let mut batch = Batch::new(&mut **sink);
            let time = SystemTime::now();
            for r in s.link.received() {
                // Sent again after a listener restart, and already in the CSV: released unwritten.
                if s.resume.already_written(r.seq) && batch.holds(device, r.seq, r.payload) {
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
            let started = std::time::Instant::now();
            batch.commit()?;
            self.commit_latency.observe(started.elapsed());
        }
        s.resume.committed(last, skipped as u64);
        s.link.release(n);
        self.records
            .fetch_add((n - skipped) as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Server for Logger {
    type State = Device;
    type Ticket = Option<Key>;

    const NAME: &'static str = "listener";
    const READ_BUFFER: usize = 64 * 1024;
    const RAW_HINT: bool = true;
    const STOPPING: &'static str = "shutting down: finishing what arrived";
    const UNFINISHED: &'static str = "some connections did not close within 5 s";

    fn link(state: &mut Device) -> &mut Link<HeapStorage> {
        &mut state.link
    }

    /// No command queued or unacknowledged, no record held.
    fn idle(s: &mut Device) -> bool {
        s.commands.is_empty() && s.link.unacked() == 0 && s.link.received().next().is_none()
    }

    fn refusal_link(&self) -> Result<Link<HeapStorage>, ConfigError> {
        self.new_link(None)
    }

    fn check(&self, hello: &Hello) -> Result<Option<Key>, Refusal> {
        crate::keys::admit(self.opts.keys.as_deref(), hello)
    }

    fn open(&self, hello: &Hello) -> Result<Device, ConfigError> {
        Ok(Device {
            link: self.new_link(Some(hello.max_send))?,
            commands: VecDeque::new(),
            resume: crate::recover::Resume::new(lock(&self.recovered).remove(&hello.session)),
            handover: crate::deferred::Handover::default(),
        })
    }

    /// A sink that acknowledges later wakes the session when its records are durable.
    fn opened(&self, _: &Arc<Engine<Self>>, session: &Arc<Session<Device>>) {
        if let Some(d) = &self.deferred {
            let weak = Arc::downgrade(session);
            d.on_durable(
                session.device(),
                Box::new(move || {
                    if let Some(s) = weak.upgrade() {
                        s.wake();
                    }
                }),
            );
        }
    }

    /// Its last written record is kept, so that it resumes exactly once if it returns (its
    /// new link has a new session identity, so the device takes it as a listener restart).
    fn forgotten(&self, session: &Session<Device>) {
        if let Some(last) = session.lock().resume.last_written() {
            lock(&self.recovered).insert(session.device(), last);
        }
    }

    fn attach(
        &self,
        device: u32,
        s: &mut Device,
        key: Option<Key>,
        hello: &Hello,
    ) -> Result<(), Refusal> {
        crate::keys::bind(&mut s.link, key)?;
        if let Some(notice) = s.resume.on_hello(Some(hello.info())) {
            crate::recover::report(&mut **lock(&self.sink), device, &notice);
        }
        Ok(())
    }

    /// Writes what arrived and acknowledges it, and queues commands.
    fn step(&self, device: u32, s: &mut Device, stopping: bool) -> bool {
        // A failed batch (a full disk) leaves nothing in the CSV and nothing released: its
        // records are sent again and written once. The link carries on below either way.
        if let Err(e) = self.write_received(device, s) {
            if e.output_gone() {
                if !self.output_gone.swap(true, Ordering::Relaxed) {
                    warn!(
                        "{e}: its reader went away, so the listener stops; records not \
                         written stay with their devices, which send them to the next listener"
                    );
                    // A permit if `run` is not waiting yet.
                    self.gone.notify_one();
                }
            } else {
                // The sink logs a failing CSV once, not once a round.
                debug!("device {device:08x}: {e}; its records stay unacknowledged");
            }
        }
        while let Some(cmd) = s.commands.front() {
            match s.link.send(cmd) {
                Ok(seq) => {
                    info!(
                        "command #{seq} queued for device {device:08x}: `{}`",
                        String::from_utf8_lossy(cmd).escape_debug()
                    );
                    s.commands.pop_front();
                }
                Err(link::SendError::WouldBlock) => break,
                Err(e) => {
                    warn!("command to device {device:08x} refused: {e}");
                    s.commands.pop_front();
                }
            }
        }
        // Stopping, a session waits for its records to be written; with the output gone
        // they never will be, and stay with the device. It is told so now, in an
        // acknowledgement with no more credit: of the records written, which a delayed one
        // would leave to be sent again to the next listener.
        let gone = self.output_gone.load(Ordering::Relaxed);
        if gone {
            s.link.set_credit_limit(Some(0));
        }
        stopping && (gone || s.link.received().next().is_none())
    }

    fn restarted(&self, device: u32, s: &mut Device, in_doubt: u32) {
        let restart = s.resume.restarted();
        crate::recover::report_restart(&mut **lock(&self.sink), device, restart, in_doubt);
    }

    fn stopping(&self, _: &Engine<Self>) {}

    fn observe(s: &mut Device) -> Observed {
        Observed {
            commands_pending: s.link.unacked() + s.commands.len() as u32,
            upstream: None,
        }
    }

    /// Queued as a command typed on standard input is.
    fn command(&self, session: &Session<Device>, command: &[u8]) -> Result<(), String> {
        let mut s = session.lock();
        let max = s.link.max_send();
        if command.len() > max {
            return Err(format!(
                "the command is {} bytes long; commands to this device are at most {max} bytes",
                command.len()
            ));
        }
        s.commands.push_back(command.to_vec());
        drop(s);
        session.wake();
        Ok(())
    }

    fn finished(&self) -> (u64, &'static str) {
        (self.records.load(Ordering::Relaxed), "written")
    }

    fn commit_latency(&self) -> Option<&Histogram> {
        Some(&self.commit_latency)
    }
}

/// Tells a sink that acknowledges later (MQTT: retained status messages) every second which
/// devices are connected, until the listener stops.
async fn publish_link_state(engine: Arc<Engine<Logger>>, sink: Arc<dyn crate::deferred::Deferred>) {
    let mut stop = engine.stop_signal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let states: Vec<crate::deferred::LinkState> = engine
            .sessions()
            .iter()
            .map(|s| {
                let e = s.lock();
                crate::deferred::LinkState {
                    device: s.device(),
                    online: e.connected(),
                    retransmissions: u64::from(e.link.stats().retransmissions),
                }
            })
            .collect();
        sink.link_state(&states);
    }
}
