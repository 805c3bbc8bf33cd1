//! What the dashboard reads of a running server: [`Observe`], implemented once for every
//! [`Engine`], and the views it returns (serialised as the JSON API's bodies).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tether_core::link::{Link, Phase};

use crate::session::tap::{Histogram, LinkTotals, Tap};
use crate::session::{lock, Engine, Server, Session};
use crate::storage::HeapStorage;

/// A running server as the dashboard sees it: object-safe, so that listen and bridge serve
/// the same pages.
pub trait Observe: Send + Sync + 'static {
    /// `listener` or `bridge`.
    fn kind(&self) -> &'static str;
    /// Every session kept, read now (each under its lock for a moment), by device.
    fn devices(&self) -> Vec<DeviceView>;
    /// One device's session, if kept.
    fn device(&self, id: u32) -> Option<DeviceView>;
    /// The server's totals, forgotten sessions included.
    fn totals(&self) -> Totals;
    /// The update channel and who watches what.
    fn tap(&self) -> &Arc<Tap>;
    /// Queues a command for a device.
    fn command(&self, id: u32, command: &[u8]) -> Result<(), CommandError>;
    /// The sink's commit latencies, if the server has a sink.
    fn commit_latency(&self) -> Option<&Histogram>;
}

/// Why a command from the dashboard was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No session of that device is kept.
    #[error("no such device: {0:08x}")]
    NoDevice(u32),
    /// The server refused it, with its reason.
    #[error("{0}")]
    Refused(String),
}

/// One device's session, as `/api/devices` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// The device's identity in hex, as in the CSV's `device` column.
    pub id: String,
    #[serde(skip)]
    pub(crate) device: u32,
    /// Whether a connection serves it now.
    pub connected: bool,
    /// `tcp`, `rfcomm`, `serial` or `memory`: the transport of its latest connection.
    pub transport: Option<&'static str>,
    /// Its latest connection's peer (TCP address, Bluetooth address, serial port).
    pub peer: Option<String>,
    /// This side's session identity on the device's link, hex.
    pub session: String,
    /// `idle`, `handshaking`, `established`, `closing`, `closed`, `rejected` or `dead`.
    pub phase: &'static str,
    /// The protocol version of its last handshake.
    pub protocol: u8,
    /// Connections that took the session over.
    pub connections: u64,
    /// Connections after the first.
    pub reconnects: u64,
    /// Records received (accepted once each).
    pub records: u64,
    /// Records a second over the last second.
    pub records_per_s: f64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// DATA frames sent again.
    pub retransmissions: u64,
    /// Frames damaged on the way (CRC, COBS, header).
    pub corrupt_frames: u64,
    /// Frames that arrived whole but were not taken (too long, duplicate, out of order,
    /// beyond credit, authentication, replay).
    pub dropped_frames: u64,
    /// Every error counter by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// The link's measured round trip, if it measures one (protocol version 2 does).
    pub round_trip_ms: Option<u32>,
    /// The link's retransmission time-out now.
    pub rto_ms: u32,
    /// Milliseconds since bytes last came from the device.
    pub last_seen_ms: Option<u64>,
    /// Commands not yet acknowledged by the device (queued ones included).
    pub commands_pending: u32,
    /// The bridge: whether its upstream session is established.
    pub upstream: Option<bool>,
    #[serde(skip)]
    pub(crate) link: LinkTotals,
}

/// A server's totals, as `/api/devices` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// `listener` or `bridge`.
    pub server: &'static str,
    /// Records the server is done with: written (listener) or forwarded (bridge).
    pub finished: u64,
    /// What `finished` counts: `written` or `forwarded`.
    pub finished_means: &'static str,
    /// Records received, forgotten sessions included.
    pub records: u64,
    /// Records a second over the last second, every device.
    pub records_per_s: f64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Corrupt frames.
    pub corrupt_frames: u64,
    /// Frames dropped whole.
    pub dropped_frames: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections served now.
    pub connections_active: u64,
    /// Connections dropped, by reason.
    pub connections_dropped: BTreeMap<&'static str, u64>,
    /// Sessions kept now.
    pub sessions: usize,
    /// Devices that had a session, forgotten ones included.
    pub devices_seen: usize,
    /// Dashboard updates lost by subscribers that fell behind.
    pub updates_lost: u64,
    #[serde(skip)]
    pub(crate) link: LinkTotals,
}

impl<S: Server> Observe for Engine<S> {
    fn kind(&self) -> &'static str {
        S::NAME
    }

    fn devices(&self) -> Vec<DeviceView> {
        let mut v: Vec<DeviceView> = self
            .sessions()
            .iter()
            .map(|s| device_view(self, s))
            .collect();
        v.sort_by_key(|d| d.device);
        v
    }

    fn device(&self, id: u32) -> Option<DeviceView> {
        self.session(id).map(|s| device_view(self, &s))
    }

    fn totals(&self) -> Totals {
        let mut link = self.tap().forgotten();
        for s in self.sessions() {
            link.add(&S::link(&mut s.lock()).stats());
        }
        let (finished, finished_means) = self.server().finished();
        Totals {
            server: S::NAME,
            finished,
            finished_means,
            records: link.records,
            records_per_s: 0.0,
            bytes_in: link.bytes_in,
            bytes_out: link.bytes_out,
            retransmissions: link.retransmissions,
            corrupt_frames: link.corrupt(),
            dropped_frames: link.dropped(),
            connections: self.connections(),
            connections_active: self.active(),
            connections_dropped: self
                .tap()
                .dropped()
                .iter()
                .map(|(d, n)| (d.name(), *n))
                .collect(),
            sessions: self.kept(),
            devices_seen: self.seen(),
            updates_lost: self.tap().lost(),
            link,
        }
    }

    fn tap(&self) -> &Arc<Tap> {
        Engine::tap(self)
    }

    fn command(&self, id: u32, command: &[u8]) -> Result<(), CommandError> {
        let session = self.session(id).ok_or(CommandError::NoDevice(id))?;
        self.server()
            .command(&session, command)
            .map_err(CommandError::Refused)
    }

    fn commit_latency(&self) -> Option<&Histogram> {
        self.server().commit_latency()
    }
}

fn device_view<S: Server>(engine: &Engine<S>, session: &Session<S::State>) -> DeviceView {
    let now = engine.clock().now();
    let mut entry = session.lock();
    let connected = entry.connected();
    let connections = entry.connections();
    let peer = entry.peer().map(|p| p.to_string());
    let heard = entry.last_heard();
    let observed = S::observe(&mut entry);
    let link = S::link(&mut entry);
    let stats = link.stats();
    let mut totals = LinkTotals::default();
    totals.add(&stats);
    let view = DeviceView {
        id: format!("{:08x}", session.device()),
        device: session.device(),
        connected,
        transport: peer.as_deref().map(transport_of),
        peer,
        session: format!("{:08x}", link.config().session),
        phase: phase_name(link.phase()),
        protocol: link.protocol_version(),
        connections,
        reconnects: connections.saturating_sub(1),
        records: totals.records,
        records_per_s: 0.0,
        bytes_in: totals.bytes_in,
        bytes_out: totals.bytes_out,
        retransmissions: totals.retransmissions,
        corrupt_frames: totals.corrupt(),
        dropped_frames: totals.dropped(),
        errors: totals.errors().into_iter().collect(),
        round_trip_ms: round_trip_ms(link),
        rto_ms: link.rto_ms(),
        last_seen_ms: heard.map(|h| now.millis().saturating_sub(h.millis())),
        commands_pending: observed.commands_pending,
        upstream: observed.upstream,
        link: totals,
    };
    drop(entry);
    view
}

/// The link's measured round trip. The host's links speak protocol version 1, which does
/// not measure it (version 2 does: `Link::round_trip_ms`, behind tether-core's `v2`
/// feature, which the host does not enable yet); so `None` until the host offers version 2.
fn round_trip_ms(_link: &Link<HeapStorage>) -> Option<u32> {
    None
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::Handshaking => "handshaking",
        Phase::Established => "established",
        Phase::Closing => "closing",
        Phase::Closed => "closed",
        Phase::Rejected => "rejected",
        Phase::Dead => "dead",
    }
}

/// The transport of a connection, from its peer's name as the transports give it: a TCP
/// socket address, a serial port's path, `memory-client-N`, else a Bluetooth address.
pub fn transport_of(peer: &str) -> &'static str {
    if peer.starts_with('/') {
        "serial"
    } else if peer.starts_with("memory-") {
        "memory"
    } else if peer.parse::<std::net::SocketAddr>().is_ok() {
        "tcp"
    } else {
        "rfcomm"
    }
}

/// Records a second, per device and in total, over the last second: a task samples the
/// counters once a second ([`Rates::tick`]); a view asks for the rate of the last tick.
#[derive(Debug, Default)]
pub struct Rates {
    inner: Mutex<RatesInner>,
}

#[derive(Debug, Default)]
struct RatesInner {
    at: Option<Instant>,
    records: HashMap<u32, u64>,
    total: u64,
    per_device: HashMap<u32, f64>,
    per_s: f64,
}

impl Rates {
    /// Takes the counters now and computes the rates since the last tick.
    pub fn tick(&self, devices: &[DeviceView], total: u64) {
        let now = Instant::now();
        let mut r = lock(&self.inner);
        let dt = r.at.map(|t| now.duration_since(t).as_secs_f64());
        let mut per_device = HashMap::with_capacity(devices.len());
        for d in devices {
            let before = r.records.get(&d.device).copied();
            if let (Some(dt), Some(before)) = (dt, before) {
                if dt > 0.0 {
                    per_device.insert(d.device, d.records.saturating_sub(before) as f64 / dt);
                }
            }
        }
        if let Some(dt) = dt.filter(|&dt| dt > 0.0) {
            r.per_s = total.saturating_sub(r.total) as f64 / dt;
        }
        r.records = devices.iter().map(|d| (d.device, d.records)).collect();
        r.total = total;
        r.per_device = per_device;
        r.at = Some(now);
    }

    /// Fills in the rates of the last tick.
    pub fn fill(&self, devices: &mut [DeviceView], totals: Option<&mut Totals>) {
        let r = lock(&self.inner);
        for d in devices {
            d.records_per_s = r.per_device.get(&d.device).copied().unwrap_or(0.0);
        }
        if let Some(t) = totals {
            t.records_per_s = r.per_s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_is_told_by_the_peer_name() {
        assert_eq!(transport_of("127.0.0.1:5003"), "tcp");
        assert_eq!(transport_of("[::1]:5003"), "tcp");
        assert_eq!(transport_of("/dev/ttyACM0"), "serial");
        assert_eq!(transport_of("memory-client-3"), "memory");
        assert_eq!(transport_of("AA:BB:CC:DD:EE:FF"), "rfcomm");
    }
}
