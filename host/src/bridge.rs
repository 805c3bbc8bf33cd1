//! `tether bridge FROM TO`: the Raspberry Pi's job. Devices connect to the bridge over
//! RFCOMM (or TCP); the bridge forwards each device's session to a `tether listen` over TCP
//! (or RFCOMM), one upstream session per device, and acknowledges a device's record only once
//! the listener has acknowledged it: "acked means written" holds across the hop.
//!
//! The device sessions are served by [`crate::session`], as the listener's are; the bridge is
//! its [`Relay`] server. Per device it keeps two links: the device side (a server link, as
//! `tether listen` has) and the upstream side (a client link whose session is the device's
//! own and whose numbering starts at the device's, so the listener's CSV shows the device and
//! its sequence numbers as if it had connected directly). A record received from the device
//! is queued on the upstream link; when the upstream link reports it acknowledged the
//! device's record is released, which acknowledges it to the device. Commands from the
//! listener travel the other way under the same rule.
//!
//! While the upstream connection is down the bridge grants its devices no credit: they
//! stop sending and keep their records (nothing is dropped), and the bridge reconnects with
//! exponential backoff. A device that vanishes keeps its session at the bridge and resumes
//! when it comes back; at `--max-devices` sessions, the one idle longest with nothing pending
//! is forgotten (its upstream session closed) to make room for a new device, and resumes
//! when it returns: its new upstream link says that its numbering continues. Nothing a
//! device does stops the bridge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_core::link::{Config, ConfigError, Event, Link, Phase, Role, SendError};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::clock::Timer;
use crate::endpoint::{Endpoint, EndpointError};
use crate::keys::Refusal;
use crate::session::{Engine, Hello, Observed, Server, Session};
use crate::storage::HeapStorage;
use crate::transport::{write_or_stall, Acceptor, Stream, TransportError, Written};

/// Where the bridge sends what its devices send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A `tether listen` at this endpoint.
    Upstream(Endpoint),
    /// A CSV file written by the bridge itself (it is then a listener).
    Csv(PathBuf),
    /// Another sink the bridge writes to itself (it is then a listener): an MQTT broker,
    /// JSON lines, a PostgreSQL database, a directory of CSV files (see
    /// [`crate::sink::Destination`]).
    Sink(crate::sink::Destination),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let sink = [
            "mqtt://",
            "mqtts://",
            "jsonl:",
            "postgres://",
            "postgresql://",
            "csv-dir:",
        ];
        if sink.iter().any(|p| s.starts_with(p)) {
            return s.parse().map(Target::Sink);
        }
        match s.strip_prefix("csv:") {
            Some(path) if !path.is_empty() => Ok(Target::Csv(PathBuf::from(path))),
            _ => s
                .parse()
                .map(Target::Upstream)
                .map_err(|e: EndpointError| e.to_string()),
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
    /// Device sessions kept (each holds two links, about 140 KB at the defaults). At the
    /// limit, a new device takes the place of the one idle longest with nothing pending; it
    /// resumes when it comes back. Default 256.
    pub max_devices: usize,
    /// A new device connection must say HELLO within this. Default 5 s.
    pub handshake_timeout: Duration,
    /// A silent device or listener is dropped after this. Default 10 s.
    pub idle_timeout: Duration,
    /// The longest wait between upstream connection attempts. Default 5 s.
    pub max_backoff: Duration,
    /// The highest protocol version spoken, to devices and upstream (`PROTOCOL.md` 11.2).
    pub max_version: u8,
}

impl BridgeOptions {
    /// Defaults, from `from` to `to`.
    pub fn new(from: Vec<Endpoint>, to: Endpoint) -> Self {
        let d = crate::options::Serving::DEFAULT;
        BridgeOptions {
            from,
            to,
            window: d.window,
            max_record: d.max_record,
            max_command: 64,
            max_connections: d.max_connections,
            max_devices: d.max_devices,
            handshake_timeout: d.handshake_timeout,
            idle_timeout: d.idle_timeout,
            max_backoff: Duration::from_secs(5),
            max_version: d.max_version,
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
    /// Device sessions seen (forgotten ones included).
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
    engine: Arc<Engine<Relay>>,
}

impl BridgeStatus {
    /// Device records acknowledged upstream so far.
    pub fn forwarded(&self) -> u64 {
        self.engine.server().forwarded.load(Ordering::Relaxed)
    }

    /// Upstream connections made so far.
    pub fn upstream_connections(&self) -> u64 {
        self.engine
            .server()
            .upstream_connections
            .load(Ordering::Relaxed)
    }

    /// Devices whose upstream session is established now.
    pub fn upstream_up(&self) -> usize {
        let sessions = self.engine.sessions();
        sessions.iter().filter(|s| s.lock().upstream_up).count()
    }

    /// Device sessions kept now (at most `--max-devices`).
    pub fn devices(&self) -> usize {
        self.engine.kept()
    }
}

/// A bound bridge, ready to [`Bridge::run`].
#[derive(Debug)]
pub struct Bridge {
    sockets: Vec<Acceptor>,
    engine: Arc<Engine<Relay>>,
}

/// The bridge as a [`Server`] of device sessions: records go upstream, and are released
/// when the listener acknowledged them.
#[derive(Debug)]
pub struct Relay {
    opts: BridgeOptions,
    forwarded: AtomicU64,
    upstream_connections: AtomicU64,
}

/// One device at the bridge: both links, and what has been moved between them.
pub struct Device {
    /// The device side (we are its server).
    down: Link<HeapStorage>,
    /// The upstream side (we are the listener's client, in the device's name).
    up: Link<HeapStorage>,
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
    /// Forgotten at `--max-devices`: the upstream task closes its session and ends.
    forgotten: bool,
    /// Wakes the upstream task.
    wake_upstream: Arc<Notify>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Device(up: {:?}, down: {:?})",
            self.up.phase(),
            self.down.phase()
        )
    }
}

/// What a round of forwarding changed, for whom.
#[derive(Debug, Default, Clone, Copy)]
struct Changed {
    device: bool,
    upstream: bool,
}

fn acked_base(l: &Link<HeapStorage>) -> u32 {
    l.next_seq().wrapping_sub(l.unacked())
}

impl Device {
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
                    warn!("cannot forward a record upstream: {e}");
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
                    warn!("cannot forward a command to the device: {e}");
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

impl Relay {
    /// A link of the bridge's (`continues_from`: see `Config::continues_from`).
    fn link(
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
        cfg.max_version = self.opts.max_version;
        let slots = self.opts.window;
        let storage = HeapStorage::new(
            slots,
            slots,
            self.opts.max_record.max(self.opts.max_command) + tether_core::frame::OVERHEAD,
        );
        // Options were checked in `bind`; what is left (a session of 0) the caller refuses.
        // Link::new took the buffers to check their shape; they are taken again when the
        // device's first bytes arrive.
        Link::new(cfg, storage).map(|mut link| {
            link.storage_mut().park();
            link
        })
    }

    /// The device side's link: each its own identity, so that a device whose session was
    /// forgotten sees a new one and does not resume against state that is gone (9.5.5).
    fn device_link(&self) -> Result<Link<HeapStorage>, ConfigError> {
        let max_command = self.opts.max_command;
        self.link(Role::Server, crate::random_session(), 0, max_command, 0)
    }
}

impl Server for Relay {
    type State = Device;
    type Ticket = ();

    const NAME: &'static str = "bridge";
    const READ_BUFFER: usize = 16 * 1024;
    const RAW_HINT: bool = false;
    const STOPPING: &'static str =
        "bridge stopping: no more credit to devices; waiting for the listener's acknowledgements";
    const UNFINISHED: &'static str =
        "some connections did not finish within 5 s; their devices send those records again";

    fn link(state: &mut Device) -> &mut Link<HeapStorage> {
        &mut state.down
    }

    /// Nothing held on either side, in either direction.
    fn idle(s: &mut Device) -> bool {
        s.down.received().next().is_none()
            && s.down.unacked() == 0
            && s.up.received().next().is_none()
            && s.up.unacked() == 0
    }

    fn refusal_link(&self) -> Result<Link<HeapStorage>, ConfigError> {
        self.device_link()
    }

    fn check(&self, _: &Hello) -> Result<(), Refusal> {
        Ok(())
    }

    /// A device that names a bridge session kept its numbering (PROTOCOL.md 9.5.5): if this
    /// bridge has no session for it (it crashed and started again, or forgot the session
    /// to make room), the upstream link says the numbering continues, so the listener
    /// resumes instead of taking the records it already wrote for a restarted device's new
    /// ones.
    fn open(&self, hello: &Hello) -> Result<Device, ConfigError> {
        let up = self.link(
            Role::Client,
            hello.session,
            hello.tx_base,
            self.opts.max_record,
            hello.peer_session,
        )?;
        let down = self.device_link()?;
        Ok(Device {
            up_base: acked_base(&up),
            down_base: acked_base(&down),
            down,
            up,
            fwd_up: 0,
            fwd_down: 0,
            connected: false,
            upstream_up: false,
            credit_stopped: false,
            stopping: false,
            forgotten: false,
            wake_upstream: Arc::new(Notify::new()),
        })
    }

    fn opened(&self, engine: &Arc<Engine<Self>>, session: &Arc<Session<Device>>) {
        engine.spawn(upstream(engine.clone(), session.clone()));
    }

    fn forgotten(&self, session: &Session<Device>) {
        let mut s = session.lock();
        s.forgotten = true;
        s.wake_upstream.notify_one();
    }

    fn attach(&self, _: u32, _: &mut Device, _: (), _: &Hello) -> Result<(), Refusal> {
        Ok(())
    }

    /// Forwards, and wakes the upstream task if there is something for it.
    fn step(&self, _: u32, s: &mut Device, stopping: bool) -> bool {
        s.stopping |= stopping;
        if s.pump(&self.forwarded).upstream {
            s.wake_upstream.notify_one();
        }
        s.stopping && s.drained()
    }

    fn restarted(&self, device: u32, _: &mut Device, in_doubt: u32) {
        warn!("device {device:08x} restarted; {in_doubt} commands in doubt, sent again");
    }

    /// No more credit to any device; the upstream tasks close their sessions once what was
    /// forwarded is acknowledged.
    fn stopping(&self, engine: &Engine<Self>) {
        for session in engine.sessions() {
            let mut s = session.lock();
            s.stopping = true;
            s.wake_upstream.notify_one();
            drop(s);
            session.wake();
        }
    }

    fn observe(s: &mut Device) -> Observed {
        Observed {
            commands_pending: s.down.unacked(),
            upstream: Some(s.upstream_up),
        }
    }

    fn command(&self, _: &Session<Device>, _: &[u8]) -> Result<(), String> {
        Err(format!(
            "a bridge forwards the commands of its listener ({}): send them there",
            self.opts.to
        ))
    }

    fn finished(&self) -> (u64, &'static str) {
        (self.forwarded.load(Ordering::Relaxed), "forwarded")
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
        let limits = crate::options::serving_of!(opts)
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
        let relay = Relay {
            opts,
            forwarded: AtomicU64::new(0),
            upstream_connections: AtomicU64::new(0),
        };
        Ok(Bridge {
            sockets,
            engine: Engine::new(relay, limits),
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

    /// What the dashboard (`crate::http`) reads: the sessions and their counters.
    pub fn observer(&self) -> Arc<dyn crate::http::Observe> {
        self.engine.clone()
    }

    /// A live view.
    pub fn status(&self) -> BridgeStatus {
        BridgeStatus {
            engine: self.engine.clone(),
        }
    }

    /// Serves until `shutdown` completes; then stops accepting and crediting devices, lets
    /// what was forwarded be acknowledged (up to 5 s), and returns the summary.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<BridgeSummary, BridgeError> {
        let Bridge { sockets, engine } = self;
        engine
            .run(sockets, shutdown, Engine::serve_connection)
            .await;
        let relay = engine.server();
        Ok(BridgeSummary {
            forwarded: relay.forwarded.load(Ordering::Relaxed),
            devices: engine.seen(),
            connections: engine.connections(),
            dropped_connections: engine.dropped(),
            upstream_connections: relay.upstream_connections.load(Ordering::Relaxed),
        })
    }
}

/// Keeps one device's upstream session connected while the bridge keeps the device's
/// session: connects with exponential backoff, forwards, and on stop waits until what was
/// forwarded is acknowledged.
async fn upstream(engine: Arc<Engine<Relay>>, session: Arc<Session<Device>>) {
    let relay = engine.server();
    let id = session.device();
    let to = relay.opts.to.clone();
    let mut stop = engine.stop_signal();
    let first_delay = Duration::from_millis(100);
    let mut delay = first_delay;
    let mut failures = 0u32;
    let connect_timeout = crate::transport::connect_timeout(&to);
    let done = |stop: &watch::Receiver<bool>| {
        let mut s = session.lock();
        s.forgotten || (*stop.borrow() && s.drained())
    };
    loop {
        if done(&stop) {
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
                let wake = session.lock().wake_upstream.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                    _ = wake.notified() => {}
                }
                delay = (delay * 2).min(relay.opts.max_backoff);
                continue;
            }
        };
        relay.upstream_connections.fetch_add(1, Ordering::Relaxed);
        {
            let mut s = session.lock();
            s.connected = true;
            s.up.connect(engine.clock().now());
        }
        let why = drive_upstream(&engine, &session, &mut stream, &mut stop, &mut delay).await;
        let changed = {
            let mut s = session.lock();
            // The connection is gone: whatever the link thinks, no credit until it is back.
            s.connected = false;
            s.pump(&relay.forwarded)
        };
        if changed.device {
            session.wake();
        }
        match why {
            Upstream::Stopped => return,
            Upstream::Lost(why) => {
                failures = 0;
                if done(&stop) {
                    return;
                }
                warn!("device {id:08x}: upstream connection lost ({why}); its device is held until it is back");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(relay.opts.max_backoff);
            }
        }
    }
}

enum Upstream {
    Stopped,
    Lost(String),
}

async fn drive_upstream(
    engine: &Engine<Relay>,
    session: &Session<Device>,
    stream: &mut Stream,
    stop: &mut watch::Receiver<bool>,
    delay: &mut Duration,
) -> Upstream {
    let relay = engine.server();
    let clock = engine.clock();
    let idle = relay.opts.idle_timeout;
    let id = session.device();
    let wake = session.lock().wake_upstream.clone();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut timer = Timer::new();
    let mut frame = Vec::new();
    let mut closing = false;
    loop {
        let (deadline, changed) = {
            let mut s = session.lock();
            let mut changed = s.pump(&relay.forwarded);
            while let Some(e) = s.up.poll_event() {
                match e {
                    Event::Connected { resumed } => {
                        info!(
                            "device {id:08x}: upstream session established (resumed: {resumed}), protocol version {}",
                            s.up.protocol_version()
                        );
                        *delay = Duration::from_millis(100);
                    }
                    Event::PeerRestarted { in_doubt } => warn!(
                        "device {id:08x}: the listener restarted; {in_doubt} records in doubt, sent again"
                    ),
                    Event::Rejected { .. } => {
                        let why = s.up.reject().map(|r| r.to_string()).unwrap_or_default();
                        warn!("device {id:08x}: the listener refused the session: {why}");
                        *delay = relay.opts.max_backoff;
                        return Upstream::Lost(format!("refused: {why}"));
                    }
                    Event::PeerDead => return Upstream::Lost("the listener went silent".into()),
                    Event::Delivered { .. } | Event::Closed => {}
                }
            }
            // Credit may have changed with the phase: pump again so the device hears now.
            let again = s.pump(&relay.forwarded);
            changed.device |= again.device;
            let ending = s.stopping || s.forgotten;
            if ending && !closing && s.drained() && s.up.unacked() == 0 {
                if s.forgotten && s.up.phase() != Phase::Established {
                    // Forgotten before its session was up: there is nothing to close.
                    return Upstream::Stopped;
                }
                closing = true;
                s.up.close();
            }
            if closing && s.up.phase() == Phase::Closed {
                return Upstream::Stopped;
            }
            frame.resize(s.up.transmit_len(), 0);
            let now = clock.now();
            while let Some(n) = s.up.poll_transmit(now, &mut frame) {
                out.extend_from_slice(&frame[..n]);
                if out.len() >= 60 * 1024 {
                    break;
                }
            }
            (s.up.poll_timeout(), changed)
        };
        if changed.device {
            session.wake();
        }
        if !out.is_empty() {
            match write_or_stall(stream, &out, idle).await {
                Written::All => {}
                Written::Failed(e) => return Upstream::Lost(format!("write failed: {e}")),
                Written::Stalled => {
                    return Upstream::Lost(format!("the listener read nothing for {idle:?}"))
                }
            }
            out.clear();
        }
        timer.set(deadline.map(|d| clock.instant(d)));
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => return Upstream::Lost("the listener closed the connection".into()),
                Ok(n) => session.lock().up.handle_input(clock.now(), &buf[..n]),
                Err(e) => return Upstream::Lost(format!("read failed: {e}")),
            },
            _ = timer.fired() => {
                session.lock().up.handle_timeout(clock.now());
            }
            _ = wake.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_a_listener_a_csv_file_or_another_sink() {
        assert_eq!(
            "tcp://127.0.0.1:5003".parse::<Target>(),
            Ok(Target::Upstream("tcp://127.0.0.1:5003".parse().unwrap()))
        );
        assert_eq!(
            "csv:readings.csv".parse::<Target>(),
            Ok(Target::Csv("readings.csv".into()))
        );
        assert_eq!(
            "jsonl:out.jsonl".parse::<Target>(),
            Ok(Target::Sink(crate::sink::Destination::Jsonl(
                crate::sink::JsonlOut::File("out.jsonl".into())
            )))
        );
        assert!(matches!(
            "postgres://tether@127.0.0.1:5432/telemetry".parse::<Target>(),
            Ok(Target::Sink(crate::sink::Destination::Postgres(_)))
        ));
        assert!(matches!(
            "csv-dir:readings".parse::<Target>(),
            Ok(Target::Sink(crate::sink::Destination::CsvDir(_)))
        ));
        assert!(matches!(
            "mqtt://127.0.0.1:1883/farm".parse::<Target>(),
            Ok(Target::Sink(crate::sink::Destination::Mqtt(_)))
        ));
        assert!("jsonl:".parse::<Target>().is_err());
        assert!("csv:".parse::<Target>().is_err());
        assert!("readings.csv".parse::<Target>().is_err());
    }
}
