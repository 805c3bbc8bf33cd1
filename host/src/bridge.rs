//! `tether bridge FROM TO`: the Raspberry Pi's job. Devices connect to the bridge over
//! RFCOMM (or TCP); the bridge forwards each device's session to a `tether listen` over TCP
//! (or RFCOMM), one upstream session per device, and acknowledges a device's record only once
//! the listener has acknowledged it: "acked means written" holds across the hop.
//!
//! Per device the bridge keeps two links for its whole life: the device side (a server link,
//! as `tether listen` has) and the upstream side (a client link whose session is the
//! device's own and whose numbering starts at the device's, so the listener's CSV shows the
//! device and its sequence numbers as if it had connected directly). A record received from
//! the device is queued on the upstream link; when the upstream link reports it acknowledged
//! the device's record is released, which acknowledges it to the device. Commands from the
//! listener travel the other way under the same rule.
//!
//! While the upstream connection is down the bridge grants its devices no credit: they
//! stop sending and keep their records (nothing is dropped), and the bridge reconnects with
//! exponential backoff. A device that vanishes keeps its session at the bridge and resumes
//! when it comes back; nothing a device does stops the bridge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tether_core::frame::{Decoder, Kind};
use tether_core::link::{
    self, Config, ConfigError, Event, Link, Phase, Role, SendError, MIN_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::clock::{Clock, Timer};
use crate::endpoint::{Endpoint, EndpointError};
use crate::storage::HeapStorage;
use crate::transport::{write_or_stall, Acceptor, Stream, TransportError, Written};

/// Where the bridge sends what its devices send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A `tether listen` at this endpoint.
    Upstream(Endpoint),
    /// A CSV file written by the bridge itself (it is then a listener).
    Csv(PathBuf),
}

impl FromStr for Target {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("csv:") {
            Some(path) if !path.is_empty() => Ok(Target::Csv(PathBuf::from(path))),
            _ => s.parse().map(Target::Upstream),
        }
    }
}

/// How the bridge behaves. [`BridgeOptions::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// Where devices connect.
    pub from: Vec<Endpoint>,
    /// The listener to forward to.
    pub to: Endpoint,
    /// Records each device may have in flight (and the upstream window). Default 64.
    pub window: usize,
    /// The largest record, bytes. Default 1024 (as `tether listen`'s).
    pub max_record: usize,
    /// The largest command, bytes. Default 64.
    pub max_command: usize,
    /// Device connections at once. Default 256.
    pub max_connections: usize,
    /// A new device connection must say HELLO within this. Default 5 s.
    pub handshake_timeout: Duration,
    /// A silent device or listener is dropped after this. Default 10 s.
    pub idle_timeout: Duration,
    /// The longest wait between upstream connection attempts. Default 5 s.
    pub max_backoff: Duration,
}

impl BridgeOptions {
    /// Defaults, from `from` to `to`.
    pub fn new(from: Vec<Endpoint>, to: Endpoint) -> Self {
        BridgeOptions {
            from,
            to,
            window: 64,
            max_record: 1024,
            max_command: 64,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A device-side endpoint could not be bound.
    #[error(transparent)]
    Bind(#[from] TransportError),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Options(String),
}

/// What a bridge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeSummary {
    /// Device records acknowledged by the listener (and so to the device).
    pub forwarded: u64,
    /// Device sessions seen.
    pub devices: usize,
    /// Device connections accepted.
    pub connections: u64,
    /// Device connections dropped (garbage, time-outs, refusals, limits).
    pub dropped_connections: u64,
    /// Upstream connections made (one per device, more after each reconnect).
    pub upstream_connections: u64,
}

/// A live view of a running bridge.
#[derive(Debug, Clone)]
pub struct BridgeStatus {
    shared: Arc<Shared>,
}

impl BridgeStatus {
    /// Device records acknowledged upstream so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Upstream connections made so far.
    pub fn upstream_connections(&self) -> u64 {
        self.shared.upstream_connections.load(Ordering::Relaxed)
    }

    /// Devices whose upstream session is established now.
    pub fn upstream_up(&self) -> usize {
        let devices: Vec<Arc<Device>> = lock(&self.shared.devices).values().cloned().collect();
        devices
            .iter()
            .filter(|d| lock(&d.state).upstream_up)
            .count()
    }
}

/// A bound bridge, ready to [`Bridge::run`].
#[derive(Debug)]
pub struct Bridge {
    sockets: Vec<Acceptor>,
    shared: Arc<Shared>,
    new_devices: tokio::sync::mpsc::UnboundedReceiver<Arc<Device>>,
}

#[derive(Debug)]
struct Shared {
    opts: BridgeOptions,
    clock: Clock,
    session_id: u32,
    devices: Mutex<HashMap<u32, Arc<Device>>>,
    forwarded: AtomicU64,
    connections: AtomicU64,
    dropped: AtomicU64,
    active: AtomicU64,
    upstream_connections: AtomicU64,
    /// New device sessions, whose upstream tasks the run loop starts.
    new_device: tokio::sync::mpsc::UnboundedSender<Arc<Device>>,
}

/// One device: both links, and a wake-up for each side's task.
struct Device {
    id: u32,
    state: Mutex<State>,
    wake_device: Notify,
    wake_upstream: Notify,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({:08x})", self.id)
    }
}

struct State {
    /// The device side (we are its server).
    down: Link<HeapStorage>,
    /// The upstream side (we are the listener's client, in the device's name).
    up: Link<HeapStorage>,
    /// Device connections so far; an older connection task seeing a newer one leaves.
    generation: u64,
    /// Records held by `down` that were queued on `up` (the oldest ones).
    fwd_up: usize,
    /// `up`'s first unacknowledged sequence number when last looked at.
    up_base: u32,
    /// Commands held by `up` that were queued on `down`.
    fwd_down: usize,
    /// `down`'s first unacknowledged sequence number when last looked at.
    down_base: u32,
    /// The upstream task has a connection (the link alone cannot tell a broken one).
    connected: bool,
    /// The upstream session is established over a live connection.
    upstream_up: bool,
    /// The device is granted no credit (upstream down, or stopping).
    credit_stopped: bool,
    stopping: bool,
}

/// What a round of forwarding changed, for whom.
#[derive(Debug, Default, Clone, Copy)]
struct Changed {
    device: bool,
    upstream: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn acked_base(l: &Link<HeapStorage>) -> u32 {
    l.next_seq().wrapping_sub(l.unacked())
}

impl State {
    /// Moves records across, releases what the far side acknowledged, and grants or
    /// withholds the device's credit.
    fn pump(&mut self, forwarded: &AtomicU64) -> Changed {
        let mut c = Changed::default();
        // Device records the listener acknowledged: release them (the device gets its ACK).
        let base = acked_base(&self.up);
        let n = base.wrapping_sub(self.up_base) as usize;
        if n > 0 {
            let n = n.min(self.fwd_up);
            self.down.release(n);
            self.fwd_up -= n;
            self.up_base = base;
            forwarded.fetch_add(n as u64, Ordering::Relaxed);
            c.device = true;
        }
        // New device records: queue them upstream, oldest first, as far as the window goes.
        while self.up.can_send() {
            let Some(r) = self.down.received().nth(self.fwd_up) else {
                break;
            };
            match self.up.send(r.payload) {
                Ok(_) => {
                    self.fwd_up += 1;
                    c.upstream = true;
                }
                Err(SendError::WouldBlock) => break,
                Err(e) => {
                    // Both links have the same limits, so this is not expected; the record
                    // stays unacknowledged at the device rather than being dropped.
                    warn!("cannot forward a record upstream: {e:?}");
                    break;
                }
            }
        }
        // Commands the device acknowledged: release them upstream.
        let base = acked_base(&self.down);
        let n = base.wrapping_sub(self.down_base) as usize;
        if n > 0 {
            let n = n.min(self.fwd_down);
            self.up.release(n);
            self.fwd_down -= n;
            self.down_base = base;
            c.upstream = true;
        }
        while self.down.can_send() {
            let Some(r) = self.up.received().nth(self.fwd_down) else {
                break;
            };
            match self.down.send(r.payload) {
                Ok(_) => {
                    self.fwd_down += 1;
                    c.device = true;
                }
                Err(SendError::WouldBlock) => break,
                Err(e) => {
                    warn!("cannot forward a command to the device: {e:?}");
                    break;
                }
            }
        }
        // No credit for the device while the listener cannot take its records.
        self.upstream_up = self.connected && self.up.phase() == Phase::Established;
        let stop = !self.upstream_up || self.stopping;
        if stop != self.credit_stopped {
            self.down.set_credit_limit(stop.then_some(0));
            self.credit_stopped = stop;
            c.device = true;
        }
        c
    }

    /// Everything the device sent was acknowledged upstream and released.
    fn drained(&mut self) -> bool {
        self.down.received().next().is_none()
    }
}

/// Reads a new device connection up to its HELLO: the device's session, the first sequence
/// number it will send (its `tx_base`) and the bridge session it names (its
/// `peer_session`, 0 if none; PROTOCOL.md 9.5.1), and every byte read.
async fn read_hello(
    opts: &BridgeOptions,
    stream: &mut Stream,
    peer: &str,
) -> Option<(Option<(u32, u32, u32)>, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + opts.handshake_timeout;
    let mut decoder = Decoder::new(vec![0u8; MIN_FRAME.max(128)]);
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                warn!(%peer, "dropped: no HELLO within {:?}", opts.handshake_timeout);
                return None;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => n,
        };
        seen.extend_from_slice(&buf[..n]);
        let mut input = &buf[..n];
        while let Some(r) = decoder.decode(&mut input) {
            match r {
                Ok(f) if f.header.kind == Kind::Hello => {
                    let u32_at = |i: usize| {
                        f.payload
                            .get(i..i + 4)
                            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    };
                    let named = link::hello_session(f.payload)
                        .zip(u32_at(10))
                        .zip(u32_at(6))
                        .map(|((id, tx_base), named)| (id, tx_base, named));
                    return Some((named, seen));
                }
                // Ignored, as by a Handshaking server (PROTOCOL.md 9.4.1, 9.4.2): on a serial
                // line a previous session's frames arrive first. The 4 KiB and the time-out
                // bound it.
                Ok(f) => {
                    debug!(%peer, "frame of kind {} before HELLO ignored", f.header.kind as u8)
                }
                Err(e) => debug!(%peer, "garbage before HELLO: {e}"),
            }
        }
        if seen.len() > 4096 {
            warn!(%peer, "dropped: no valid HELLO in the first 4 KiB (not a Tether device?)");
            return None;
        }
    }
}

impl Shared {
    fn link(
        &self,
        role: Role,
        session: u32,
        first_seq: u32,
        max_send: usize,
    ) -> Result<Link<HeapStorage>, ConfigError> {
        self.link_continuing(role, session, first_seq, max_send, 0)
    }

    /// [`Shared::link`] naming `continues_from` in its first HELLO (`Config::continues_from`).
    fn link_continuing(
        &self,
        role: Role,
        session: u32,
        first_seq: u32,
        max_send: usize,
        continues_from: u32,
    ) -> Result<Link<HeapStorage>, ConfigError> {
        let mut cfg = Config::new(role, session);
        cfg.max_send = max_send as u16;
        cfg.first_seq = first_seq;
        cfg.continues_from = continues_from;
        cfg.window = self.opts.window.min(usize::from(u16::MAX)) as u16;
        cfg.dead_after_ms = crate::options::dead_after_ms(self.opts.idle_timeout);
        let slots = self.opts.window;
        let storage = HeapStorage::new(
            slots,
            slots,
            self.opts.max_record.max(self.opts.max_command) + tether_core::frame::OVERHEAD,
        );
        // Options were checked in `bind`; a session id of 0 from a device's HELLO is the
        // one case left, refused by the caller.
        Link::new(cfg, storage)
    }
}

/// Whether connecting to `to` would reach the bridge's own listening socket `own`: the same
/// port, and the same address or `own` listening on every address (a loopback or unspecified
/// `to` reaches it too).
fn is_own_address(own: SocketAddr, to: &Endpoint) -> bool {
    let Endpoint::Tcp(to) = to else {
        return false;
    };
    to.port() == own.port()
        && (to.ip() == own.ip()
            || (own.ip().is_unspecified() && (to.ip().is_loopback() || to.ip().is_unspecified())))
}

impl Bridge {
    /// Binds the device-side endpoints.
    pub async fn bind(opts: BridgeOptions) -> Result<Bridge, BridgeError> {
        crate::options::Serving {
            window: opts.window,
            max_record: opts.max_record,
            max_connections: opts.max_connections,
            handshake_timeout: opts.handshake_timeout,
            idle_timeout: opts.idle_timeout,
        }
        .check()
        .map_err(BridgeError::Options)?;
        opts.to
            .check_dialable()
            .map_err(|e| BridgeError::Options(format!("TO: {e}")))?;
        if opts.max_command > opts.max_record {
            return Err(BridgeError::Options(
                "max command must not exceed max record".into(),
            ));
        }
        let mut sockets = Vec::new();
        for e in &opts.from {
            sockets.push(Acceptor::bind(e).await?);
        }
        if let Some(own) = sockets
            .iter()
            .filter_map(Acceptor::tcp_addr)
            .find(|a| is_own_address(*a, &opts.to))
        {
            return Err(BridgeError::Options(format!(
                "TO ({}) is the bridge's own address (it listens on {own}): point it at the tether listen to forward to",
                opts.to
            )));
        }
        let (new_device, new_devices) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            new_device,
            opts,
            clock: Clock::new(),
            session_id: crate::random_session(),
            devices: Mutex::new(HashMap::new()),
            forwarded: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            active: AtomicU64::new(0),
            upstream_connections: AtomicU64::new(0),
        });
        Ok(Bridge {
            sockets,
            shared,
            new_devices,
        })
    }

    /// The TCP addresses devices connect to (with the ports chosen for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().filter_map(Acceptor::tcp_addr).collect()
    }

    /// Every endpoint listened on, for people.
    pub fn describe_endpoints(&self) -> Vec<String> {
        self.sockets.iter().map(Acceptor::describe).collect()
    }

    /// A live view.
    pub fn status(&self) -> BridgeStatus {
        BridgeStatus {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` completes; then stops accepting and crediting devices, lets
    /// what was forwarded be acknowledged (up to 5 s), and returns the summary.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<BridgeSummary, BridgeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut accepted = crate::transport::accept_all(self.sockets, &mut tasks, &stop_rx);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some((stream, peer)) = accepted.recv() => {
                    let shared = &self.shared;
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    if shared.active.load(Ordering::Relaxed) >= shared.opts.max_connections as u64 {
                        warn!(%peer, "connection refused: limit of {} connections reached", shared.opts.max_connections);
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    shared.active.fetch_add(1, Ordering::Relaxed);
                    let shared = shared.clone();
                    let stop = stop_rx.clone();
                    tasks.spawn(async move {
                        serve_device(&shared, stream, &peer, stop).await;
                        shared.active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Some(device) = self.new_devices.recv() => {
                    tasks.spawn(upstream(self.shared.clone(), device, stop_rx.clone()));
                }
                Some(_) = tasks.join_next() => {}
                _ = &mut shutdown => break,
            }
        }
        info!("bridge stopping: no more credit to devices; waiting for the listener's acknowledgements");
        let _ = stop_tx.send(true);
        let devices: Vec<Arc<Device>> = lock(&self.shared.devices).values().cloned().collect();
        for d in &devices {
            lock(&d.state).stopping = true;
            d.wake_device.notify_one();
            d.wake_upstream.notify_one();
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            warn!("some connections did not finish within 5 s; their devices send those records again");
        }
        Ok(BridgeSummary {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            devices: devices.len(),
            connections: self.shared.connections.load(Ordering::Relaxed),
            dropped_connections: self.shared.dropped.load(Ordering::Relaxed),
            upstream_connections: self.shared.upstream_connections.load(Ordering::Relaxed),
        })
    }
}

/// The bridge's session for device `id`, made (with its upstream and device links) if new.
fn device_session(
    shared: &Arc<Shared>,
    id: u32,
    tx_base: u32,
    continues_from: u32,
) -> Result<Arc<Device>, ConfigError> {
    let mut map = lock(&shared.devices);
    if let Some(d) = map.get(&id) {
        return Ok(d.clone());
    }
    let up = shared.link_continuing(
        Role::Client,
        id,
        tx_base,
        shared.opts.max_record,
        continues_from,
    )?;
    let down = shared.link(Role::Server, shared.session_id, 0, shared.opts.max_command)?;
    info!("new device {id:08x}");
    let d = Arc::new(Device {
        id,
        state: Mutex::new(State {
            up_base: acked_base(&up),
            down_base: acked_base(&down),
            down,
            up,
            generation: 0,
            fwd_up: 0,
            fwd_down: 0,
            connected: false,
            upstream_up: false,
            credit_stopped: false,
            stopping: false,
        }),
        wake_device: Notify::new(),
        wake_upstream: Notify::new(),
    });
    let _ = shared.new_device.send(d.clone());
    map.insert(id, d.clone());
    Ok(d)
}

/// Serves one device connection until it ends, is superseded, or the bridge stops. A new
/// device session is handed to the run loop, which starts its upstream task.
async fn serve_device(
    shared: &Arc<Shared>,
    mut stream: Stream,
    peer: &str,
    mut stop: watch::Receiver<bool>,
) {
    let Some((named, seen)) = read_hello(&shared.opts, &mut stream, peer).await else {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some((id, tx_base, continues_from)) = named else {
        let now = shared.clock.now();
        match shared.link(Role::Server, shared.session_id, 0, shared.opts.max_command) {
            Ok(l) => crate::listen::refuse_hello(l, now, &seen, &mut stream, peer).await,
            Err(e) => warn!(%peer, "refused: a malformed HELLO (and no link to answer it: {e})"),
        }
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // A device that names a bridge session kept its numbering (PROTOCOL.md 9.5.5): if this
    // bridge has no session for it (it crashed and started again), the upstream link says
    // the numbering continues, so the listener resumes instead of taking the records it
    // already wrote for a restarted device's new ones.
    let device = match device_session(shared, id, tx_base, continues_from) {
        Ok(d) => d,
        Err(e) => {
            warn!(%peer, "device {id:08x} refused: its links cannot be made: {e}");
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let generation = {
        let mut s = lock(&device.state);
        s.generation += 1;
        let now = shared.clock.now();
        s.down.connect(now);
        s.down.handle_input(now, &seen);
        s.generation
    };
    info!(%peer, "device {id:08x} connected");
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(16 * 1024);
    let mut timer = Timer::new();
    let mut frame = Vec::new();
    loop {
        let (deadline, finished, changed) = {
            let mut s = lock(&device.state);
            if s.generation != generation {
                debug!(%peer, "superseded by a newer connection of device {id:08x}");
                return;
            }
            let changed = s.pump(&shared.forwarded);
            while let Some(e) = s.down.poll_event() {
                log_device_event(id, e);
            }
            frame.resize(s.down.transmit_len(), 0);
            let now = shared.clock.now();
            while let Some(n) = s.down.poll_transmit(now, &mut frame) {
                out.extend_from_slice(&frame[..n]);
            }
            let phase = s.down.phase();
            let finished = matches!(phase, Phase::Closed | Phase::Rejected | Phase::Dead)
                || (s.stopping && s.drained());
            (s.down.poll_timeout(), finished, changed)
        };
        if changed.upstream {
            device.wake_upstream.notify_one();
        }
        if !out.is_empty() {
            match write_or_stall(&mut stream, &out, shared.opts.idle_timeout).await {
                Written::All => {}
                Written::Failed(e) => {
                    debug!(%peer, "write failed: {e}");
                    break;
                }
                Written::Stalled => {
                    warn!(%peer, "device {id:08x} dropped: it read nothing for {:?} (its connection backed up)", shared.opts.idle_timeout);
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
                Ok(0) => { info!(%peer, "device {id:08x} disconnected"); break }
                Ok(n) => {
                    let mut s = lock(&device.state);
                    if s.generation == generation {
                        s.down.handle_input(shared.clock.now(), &buf[..n]);
                    }
                }
                Err(e) => { info!(%peer, "device {id:08x} connection lost: {e}"); break }
            },
            _ = timer.fired() => {
                lock(&device.state).down.handle_timeout(shared.clock.now());
            }
            _ = device.wake_device.notified() => {}
            _ = stop.changed() => {}
        }
    }
    if lock(&device.state).down.phase() == Phase::Dead {
        warn!(%peer, "device {id:08x} silent for {:?}: connection dropped", shared.opts.idle_timeout);
    }
}

fn log_device_event(id: u32, e: Event) {
    match e {
        Event::Connected { resumed } => {
            info!("device {id:08x}: session established (resumed: {resumed})")
        }
        Event::PeerRestarted { in_doubt } => {
            warn!("device {id:08x} restarted; {in_doubt} commands in doubt, sent again")
        }
        Event::Delivered { .. } => debug!("device {id:08x} acknowledged commands"),
        Event::Rejected { by_us } => warn!("device {id:08x}: handshake refused (by us: {by_us})"),
        Event::PeerDead => warn!("device {id:08x}: no sign of life"),
        Event::Closed => info!("device {id:08x}: session closed"),
    }
}

/// Keeps one device's upstream session connected for the life of the bridge: connects with
/// exponential backoff, forwards, and on stop waits until what was forwarded is acknowledged.
async fn upstream(shared: Arc<Shared>, device: Arc<Device>, mut stop: watch::Receiver<bool>) {
    let id = device.id;
    let to = shared.opts.to.clone();
    let first_delay = Duration::from_millis(100);
    let mut delay = first_delay;
    let mut failures = 0u32;
    let connect_timeout = crate::transport::connect_timeout(&to);
    loop {
        if *stop.borrow() && lock(&device.state).drained() {
            return;
        }
        let mut stream = match crate::transport::connect(&to, connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    warn!("device {id:08x}: upstream {to}: {e}; its device is held (no credit), retrying in {delay:?}");
                }
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
                delay = (delay * 2).min(shared.opts.max_backoff);
                continue;
            }
        };
        shared.upstream_connections.fetch_add(1, Ordering::Relaxed);
        {
            let mut s = lock(&device.state);
            s.connected = true;
            s.up.connect(shared.clock.now());
        }
        let why = drive_upstream(&shared, &device, &mut stream, &mut stop, &mut delay).await;
        let changed = {
            let mut s = lock(&device.state);
            // The connection is gone: whatever the link thinks, no credit until it is back.
            s.connected = false;
            s.pump(&shared.forwarded)
        };
        if changed.device {
            device.wake_device.notify_one();
        }
        match why {
            Upstream::Stopped => return,
            Upstream::Lost(why) => {
                failures = 0;
                if *stop.borrow() && lock(&device.state).drained() {
                    return;
                }
                warn!("device {id:08x}: upstream connection lost ({why}); its device is held until it is back");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(shared.opts.max_backoff);
            }
        }
    }
}

enum Upstream {
    Stopped,
    Lost(String),
}

async fn drive_upstream(
    shared: &Shared,
    device: &Device,
    stream: &mut Stream,
    stop: &mut watch::Receiver<bool>,
    delay: &mut Duration,
) -> Upstream {
    let id = device.id;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut timer = Timer::new();
    let mut frame = Vec::new();
    let mut closing = false;
    loop {
        let (deadline, changed) = {
            let mut s = lock(&device.state);
            let mut changed = s.pump(&shared.forwarded);
            while let Some(e) = s.up.poll_event() {
                match e {
                    Event::Connected { resumed } => {
                        info!("device {id:08x}: upstream session established (resumed: {resumed})");
                        *delay = Duration::from_millis(100);
                    }
                    Event::PeerRestarted { in_doubt } => warn!(
                        "device {id:08x}: the listener restarted; {in_doubt} records in doubt, sent again"
                    ),
                    Event::Rejected { .. } => {
                        let why = s.up.reject().map(|r| r.to_string()).unwrap_or_default();
                        warn!("device {id:08x}: the listener refused the session: {why}");
                        *delay = shared.opts.max_backoff;
                        return Upstream::Lost(format!("refused: {why}"));
                    }
                    Event::PeerDead => return Upstream::Lost("the listener went silent".into()),
                    Event::Delivered { .. } | Event::Closed => {}
                }
            }
            // Credit may have changed with the phase: pump again so the device hears now.
            let again = s.pump(&shared.forwarded);
            changed.device |= again.device;
            if s.stopping && !closing && s.drained() && s.up.unacked() == 0 {
                closing = true;
                s.up.close();
            }
            if closing && s.up.phase() == Phase::Closed {
                return Upstream::Stopped;
            }
            frame.resize(s.up.transmit_len(), 0);
            let now = shared.clock.now();
            while let Some(n) = s.up.poll_transmit(now, &mut frame) {
                out.extend_from_slice(&frame[..n]);
                if out.len() >= 60 * 1024 {
                    break;
                }
            }
            (s.up.poll_timeout(), changed)
        };
        if changed.device {
            device.wake_device.notify_one();
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                return Upstream::Lost(format!("write failed: {e}"));
            }
            out.clear();
        }
        timer.set(deadline.map(|d| shared.clock.instant(d)));
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => return Upstream::Lost("the listener closed the connection".into()),
                Ok(n) => lock(&device.state).up.handle_input(shared.clock.now(), &buf[..n]),
                Err(e) => return Upstream::Lost(format!("read failed: {e}")),
            },
            _ = timer.fired() => {
                lock(&device.state).up.handle_timeout(shared.clock.now());
            }
            _ = device.wake_upstream.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_a_listener_or_a_csv_file() {
        assert_eq!(
            "tcp://127.0.0.1:5003".parse::<Target>(),
            Ok(Target::Upstream("tcp://127.0.0.1:5003".parse().unwrap()))
        );
        assert_eq!(
            "csv:readings.csv".parse::<Target>(),
            Ok(Target::Csv("readings.csv".into()))
        );
        assert!("csv:".parse::<Target>().is_err());
        assert!("readings.csv".parse::<Target>().is_err());
    }
}
