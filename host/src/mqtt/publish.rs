//! The publisher: rumqttc's event loop on a thread of its own, every record one PUBLISH at
//! QoS 1, many in flight, each released once its PUBACK came and the state file says so.
//!
//! # The rules
//!
//! - A record is published once, in order per device, and released (acknowledged to its
//!   device) only after the broker's PUBACK for it and for every earlier record of its
//!   device, and after the state file holds it ([`super::state`]; on disk with `--fsync`).
//! - The connection is a clean session (MQTT 3.1.1, `clean_session`): the broker keeps
//!   nothing of it, and this side keeps every record not yet acknowledged. When the
//!   connection is lost, every PUBLISH not acknowledged is published again on the next
//!   one, in order. Those are the only duplicates Tether makes, and they happen only when
//!   a PUBACK is lost: the broker had the record, the acknowledgement did not arrive (the
//!   connection or the broker failed in between, or the listener was killed before its
//!   state was written).
//! - Records are never released while the broker is unreachable or refuses the
//!   connection: devices keep them (their windows fill, then they wait), and the publisher
//!   reconnects with backoff (100 ms doubling to 5 s), logging the reason once an episode.
//!
//! Which record a PUBACK is for: rumqttc numbers a PUBLISH (its packet id) when it takes
//! it from its request channel, in the order requests were sent, and reports it
//! (`Outgoing::Publish(pkid)`); so the publisher keeps what it sent in that order and
//! names each packet id as it is reported. Only the publisher sends on that channel, and
//! only while connected: what was in it when the connection went is taken back whole.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS, StateError,
};
use tracing::{debug, info, warn};

use super::state::{KindsFile, Mark, StateFile};
use super::{Credentials, MqttError, MqttUrl};
use crate::deferred::{Deferred, LinkState};
use crate::session::lock;
use crate::sink::json;
use crate::sink::kinds::{Classified, Kinds, Other, Schema};
use crate::sink::SinkError;

/// A device's link state as published on `PREFIX/D/status`.
pub type DeviceStatus = LinkState;

/// How often a device's status is published when nothing changed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// The longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Publishes records to the broker; see the module documentation.
pub struct Publisher {
    url: MqttUrl,
    shared: Arc<Shared>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Publisher({})", self.url)
    }
}

struct Shared {
    inner: Mutex<Inner>,
    client: AsyncClient,
    prefix: String,
    client_id: String,
}

/// A PUBLISH kept until its PUBACK.
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    /// A record's device and its number among the device's submissions.
    record: Option<(u32, u64)>,
}

struct Pending {
    serial: u64,
    mark: Mark,
    acked: bool,
}

type Wake = Arc<dyn Fn() + Send + Sync>;

struct Dev {
    session: u32,
    /// The last seq submitted (or, after a restart, acknowledged): a record at or before it
    /// starts a new numbering.
    last_seq: Option<u32>,
    next_serial: u64,
    /// Submitted and not yet durable, oldest first.
    pending: VecDeque<Pending>,
    /// Acknowledged (a contiguous prefix of `pending` popped), not yet in the state file.
    acked: usize,
    acked_mark: Option<Mark>,
    /// Durable, not yet taken by the listener.
    durable: usize,
    wake: Option<Wake>,
    // For the status message.
    records: u64,
    last_record: Option<SystemTime>,
    online: Option<bool>,
    status_at: Option<Instant>,
    status_records: u64,
}

struct Inner {
    connected: bool,
    closing: bool,
    /// Not handed to rumqttc yet (disconnected, its channel full, or behind those).
    backlog: VecDeque<Msg>,
    /// Handed to rumqttc, its packet id not reported yet.
    unsent: VecDeque<Msg>,
    /// By packet id: sent, awaiting the PUBACK.
    inflight: Vec<Option<Msg>>,
    in_flight: usize,
    devices: HashMap<u32, Dev>,
    /// Devices with records acknowledged since the state was last written.
    dirty: Vec<u32>,
    state: StateFile,
    marks: HashMap<u32, Mark>,
    state_failing: bool,
    /// What each device declared, to name its records' fields, and where it is kept.
    kinds: Kinds,
    kinds_file: KindsFile,
    // Counters for the summary.
    acked_records: u64,
    republished: u64,
}

impl Publisher {
    /// Starts the publisher's thread for `url`; it connects in the background.
    pub(super) fn start(
        url: MqttUrl,
        creds: Option<Credentials>,
        state: StateFile,
        (kinds_file, declared): (KindsFile, Vec<(u32, Schema)>),
    ) -> Result<Publisher, MqttError> {
        let mut kinds = Kinds::default();
        for (device, schema) in declared {
            kinds.restore(device, schema);
        }
        let client_id = url
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tether-{:08x}", state.id()));
        let mut o = MqttOptions::new(client_id.clone(), url.host.clone(), url.port);
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_session(true);
        o.set_inflight(url.inflight);
        o.set_request_channel_capacity(usize::from(url.inflight) * 2);
        o.set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some(c) = creds {
            o.set_credentials(c.username, c.password);
        }
        if let Some(tls) = &url.tls {
            let config = super::tls_config(tls)?;
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
            ));
        }
        let listener_topic = format!("{}/listener/{client_id}", url.prefix);
        o.set_last_will(LastWill::new(
            listener_topic,
            listener_json(&client_id, false, "connection lost"),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(o, usize::from(url.inflight) * 2);
        let mut net = eventloop.network_options();
        net.set_connection_timeout(5);
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let marks = state.marks();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                connected: false,
                closing: false,
                backlog: VecDeque::new(),
                unsent: VecDeque::new(),
                inflight: (0..=url.inflight).map(|_| None).collect(),
                in_flight: 0,
                devices: HashMap::new(),
                dirty: Vec::new(),
                state,
                marks,
                state_failing: false,
                kinds,
                kinds_file,
                acked_records: 0,
                republished: 0,
            }),
            client,
            prefix: url.prefix.clone(),
            client_id,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        let target = url.to_string();
        std::thread::Builder::new()
            .name("tether-mqtt".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(drive(s, eventloop, target)),
                    Err(e) => warn!("MQTT sink: cannot start its runtime: {e}"),
                }
                let _ = tx.send(());
            })
            .map_err(MqttError::Thread)?;
        Ok(Publisher {
            url,
            shared,
            done: Mutex::new(Some(rx)),
        })
    }

    /// The broker and prefix, for people.
    pub fn url(&self) -> &MqttUrl {
        &self.url
    }

    /// The client id used at the broker.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// Publishes a marker (a discontinuity in `device`'s records) on `PREFIX/D/marker`.
    pub fn marker(&self, time: SystemTime, device: u32, text: &str) {
        let mut inner = lock(&self.shared.inner);
        let session = inner.dev(device).session;
        let mut p = Vec::with_capacity(64 + text.len());
        json::marker(&mut p, time, device, session, text);
        let topic = format!("{}/{device:08x}/marker", self.shared.prefix);
        inner.enqueue(
            &self.shared.client,
            Msg {
                topic,
                payload: p,
                retain: false,
                record: None,
            },
        );
    }

    fn status_msg(&self, inner: &mut Inner, device: u32, online: bool, now: Instant) -> Msg {
        let client_id = &self.shared.client_id;
        let d = inner.dev(device);
        let rate = match d.status_at {
            Some(at) if now > at => {
                (d.records - d.status_records) as f64 / now.duration_since(at).as_secs_f64()
            }
            _ => 0.0,
        };
        d.status_at = Some(now);
        d.status_records = d.records;
        d.online = Some(online);
        let mut p = Vec::with_capacity(200);
        p.extend_from_slice(
            format!("{{\"device\":\"{device:08x}\",\"online\":{online},\"listener\":").as_bytes(),
        );
        json::string(&mut p, client_id);
        json::time_key(&mut p, "host_time", SystemTime::now());
        match d.last_record {
            Some(t) => json::time_key(&mut p, "last_record", t),
            None => p.extend_from_slice(b",\"last_record\":null"),
        }
        p.extend_from_slice(
            format!(",\"records\":{},\"records_per_s\":{:.1}", d.records, rate).as_bytes(),
        );
        Msg {
            topic: format!("{}/{device:08x}/status", self.shared.prefix),
            payload: p,
            retain: true,
            record: None,
        }
    }
}

fn listener_json(client_id: &str, online: bool, why: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(100);
    p.extend_from_slice(b"{\"listener\":");
    json::string(&mut p, client_id);
    p.extend_from_slice(format!(",\"online\":{online},\"why\":").as_bytes());
    json::string(&mut p, why);
    json::time_key(&mut p, "host_time", SystemTime::now());
    p.push(b'}');
    p
}

/// `a` is at or before `b` in serial-number order (`PROTOCOL.md` 9.2).
fn at_or_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

impl Inner {
    fn dev(&mut self, device: u32) -> &mut Dev {
        let marks = &self.marks;
        self.devices.entry(device).or_insert_with(|| {
            let mark = marks.get(&device).copied();
            Dev {
                session: mark.map_or(0, |m| m.session),
                last_seq: mark.map(|m| m.seq),
                next_serial: 0,
                pending: VecDeque::new(),
                acked: 0,
                acked_mark: None,
                durable: 0,
                wake: None,
                records: 0,
                last_record: None,
                online: None,
                status_at: None,
                status_records: 0,
            }
        })
    }

    /// Hands `msg` to rumqttc if it can take it now, in order; keeps it otherwise.
    fn enqueue(&mut self, client: &AsyncClient, msg: Msg) {
        if self.connected && self.backlog.is_empty() {
            match client.try_publish(
                msg.topic.clone(),
                QoS::AtLeastOnce,
                msg.retain,
                msg.payload.clone(),
            ) {
                Ok(()) => self.unsent.push_back(msg),
                Err(_) => self.backlog.push_back(msg),
            }
        } else {
            self.backlog.push_back(msg);
        }
    }

    /// Hands rumqttc what its channel takes of the backlog.
    fn drain(&mut self, client: &AsyncClient) {
        while self.connected {
            let Some(m) = self.backlog.front() else { break };
            if client
                .try_publish(
                    m.topic.clone(),
                    QoS::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                )
                .is_err()
            {
                break;
            }
            if let Some(m) = self.backlog.pop_front() {
                self.unsent.push_back(m);
            }
        }
    }

    /// The connection is gone: everything handed to rumqttc comes back to the backlog, in
    /// the order it was sent, ahead of what was never sent.
    fn take_back(&mut self, eventloop: &mut EventLoop) {
        self.connected = false;
        // What reached rumqttc's channel after it cleaned up itself; then nothing of it is
        // sent by rumqttc (a clean session: this side publishes again).
        eventloop.clean();
        eventloop.pending.clear();
        let mut back: Vec<(u64, Msg)> = Vec::new();
        // In-flight messages were sent before unsent ones; among them, the order of their
        // records' serials per device is the order they were sent.
        let mut flight: Vec<Msg> = self.inflight.iter_mut().filter_map(Option::take).collect();
        flight.sort_by_key(|m| m.record.map_or(0, |(_, s)| s));
        self.in_flight = 0;
        self.republished += flight.iter().filter(|m| m.record.is_some()).count() as u64;
        for (i, m) in flight.into_iter().chain(self.unsent.drain(..)).enumerate() {
            back.push((i as u64, m));
        }
        for (_, m) in back.into_iter().rev() {
            self.backlog.push_front(m);
        }
    }

    /// `device`'s record `serial` was acknowledged.
    fn acked(&mut self, device: u32, serial: u64) {
        let Some(d) = self.devices.get_mut(&device) else {
            return;
        };
        let Some(front) = d.pending.front().map(|p| p.serial) else {
            return;
        };
        if let Some(p) = d.pending.get_mut(serial.wrapping_sub(front) as usize) {
            p.acked = true;
        }
        let mut any = false;
        while d.pending.front().is_some_and(|p| p.acked) {
            if let Some(p) = d.pending.pop_front() {
                d.acked += 1;
                d.acked_mark = Some(p.mark);
                any = true;
            }
        }
        if any && !self.dirty.contains(&device) {
            self.dirty.push(device);
        }
    }

    /// Writes the state of the devices acknowledged since the last time, then makes their
    /// records durable. Returns whom to wake.
    fn persist(&mut self) -> Vec<Wake> {
        if self.dirty.is_empty() {
            return Vec::new();
        }
        for &device in &self.dirty {
            if let Some(m) = self.devices.get(&device).and_then(|d| d.acked_mark) {
                self.state.set(device, m);
            }
        }
        if let Err(e) = self.state.flush() {
            if !std::mem::replace(&mut self.state_failing, true) {
                warn!("{e}: records the broker acknowledged are not released until it is written (their devices keep them)");
            }
            return Vec::new();
        }
        if std::mem::take(&mut self.state_failing) {
            info!(
                "MQTT state file {}: writing works again",
                self.state.path().display()
            );
        }
        let mut wakes = Vec::new();
        for device in std::mem::take(&mut self.dirty) {
            if let Some(d) = self.devices.get_mut(&device) {
                d.durable += std::mem::take(&mut d.acked);
                if let Some(w) = &d.wake {
                    wakes.push(w.clone());
                }
            }
        }
        wakes
    }
}

/// For people: why the connection failed or was lost.
fn reason(e: &ConnectionError, client_id: &str) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => "the broker refused the username or password (credentials=FILE, or TETHER_MQTT_USERNAME and TETHER_MQTT_PASSWORD)".into(),
            ConnectReturnCode::NotAuthorized => "the broker refused: not authorised (this client's credentials or the broker's ACL)".into(),
            ConnectReturnCode::BadClientId => format!("the broker refused the client id {client_id} (client_id=…)"),
            ConnectReturnCode::ServiceUnavailable => "the broker refused: service unavailable".into(),
            ConnectReturnCode::RefusedProtocolVersion => "the broker refused MQTT 3.1.1".into(),
            ConnectReturnCode::Success => "the broker refused the connection".into(),
        },
        ConnectionError::Io(e) => format!("cannot reach the broker: {e}"),
        ConnectionError::Tls(e) => format!(
            "TLS failure: {} (the broker's certificate must chain to ca=FILE, or the \
             system's roots, and name the URL's host)",
            tls_reason(e)
        ),
        ConnectionError::MqttState(StateError::Io(e)) => format!("connection lost: {e}"),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            "the broker closed the connection".into()
        }
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            "the broker stopped answering (no PINGRESP)".into()
        }
        ConnectionError::NetworkTimeout => "no answer from the broker within 5 s".into(),
        ConnectionError::FlushTimeout => "the broker read nothing for 5 s".into(),
        ConnectionError::NotConnAck(_) => "the broker did not answer CONNECT with CONNACK".into(),
        other => format!("connection lost: {other}"),
    }
}

/// The innermost cause of a TLS failure (rustls' own words: `invalid peer certificate:
/// UnknownIssuer`).
fn tls_reason(e: &rumqttc::TlsError) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    source.to_string()
}

/// The publisher's thread: drives rumqttc's event loop until the listener closes.
async fn drive(shared: Arc<Shared>, mut eventloop: EventLoop, target: String) {
    let mut backoff = Duration::from_millis(100);
    let mut failing: Option<(Instant, String, u32)> = None;
    loop {
        let event = eventloop.poll().await;
        let mut wakes = Vec::new();
        let mut retry = false;
        {
            let mut inner = lock(&shared.inner);
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    inner.connected = true;
                    backoff = Duration::from_millis(100);
                    let held = inner.backlog.iter().filter(|m| m.record.is_some()).count();
                    match failing.take() {
                        Some((since, _, _)) => info!(
                            "MQTT broker {target}: connected again after {:.1} s; {held} records held meanwhile are published now",
                            since.elapsed().as_secs_f64()
                        ),
                        None => info!("MQTT broker {target}: connected as {}", shared.client_id),
                    }
                    inner.backlog.push_front(Msg {
                        topic: format!("{}/listener/{}", shared.prefix, shared.client_id),
                        payload: listener_json(&shared.client_id, true, "connected"),
                        retain: true,
                        record: None,
                    });
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(m) = inner.unsent.pop_front() {
                        if let Some(slot) = inner.inflight.get_mut(usize::from(pkid)) {
                            *slot = Some(m);
                            inner.in_flight += 1;
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    let m = inner
                        .inflight
                        .get_mut(usize::from(a.pkid))
                        .and_then(Option::take);
                    match m {
                        Some(m) => {
                            inner.in_flight -= 1;
                            if let Some((device, serial)) = m.record {
                                inner.acked_records += 1;
                                inner.acked(device, serial);
                            }
                        }
                        None => debug!("MQTT: a PUBACK for packet {} not in flight", a.pkid),
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if inner.closing => break,
                Ok(_) => {}
                Err(e) => {
                    inner.take_back(&mut eventloop);
                    if inner.closing {
                        break;
                    }
                    let why = reason(&e, &shared.client_id);
                    let held = inner.backlog.iter().filter(|m| m.record.is_some()).count();
                    match &mut failing {
                        Some((_, last, n)) if *last == why => {
                            *n += 1;
                            if n.is_power_of_two() {
                                warn!("MQTT broker {target}: {why} (still, {n} attempts); {held} records held");
                            }
                        }
                        _ => {
                            warn!("MQTT broker {target}: {why}. Records are not acknowledged until it is back: their devices keep them (held here: {held}); retrying with backoff up to {MAX_BACKOFF:?}");
                            failing = Some((Instant::now(), why, 1));
                        }
                    }
                    retry = true;
                }
            }
            // A burst of events is over: write the state, release, send what waits.
            if !retry && eventloop.state.events.is_empty() {
                wakes = inner.persist();
                inner.drain(&shared.client);
            }
        }
        for w in wakes {
            w();
        }
        if retry {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if lock(&shared.inner).closing {
                break;
            }
        }
    }
    debug!("MQTT publisher stopped");
}

impl Deferred for Publisher {
    fn submit(
        &self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        let mut inner = lock(&self.shared.inner);
        // What the record is: a declaration is kept (on disk first) before it is published,
        // so that the records after it are read by it, after a restart too.
        let class = inner.kinds.classify(device, payload);
        if let Classified::Declaration(schema) = &class {
            inner
                .kinds_file
                .append(device, schema)
                .map_err(|e| SinkError::Mqtt(MqttError::State(e)))?;
        }
        let d = inner.dev(device);
        if d.last_seq.is_some_and(|l| at_or_before(seq, l)) {
            d.session = d.session.wrapping_add(1);
            info!(
                "device {device:08x} numbers its records afresh (record {seq} after {}): its records are published as session {}",
                d.last_seq.unwrap_or_default(),
                d.session
            );
        }
        d.last_seq = Some(seq);
        let serial = d.next_serial;
        d.next_serial += 1;
        let mark = Mark {
            session: d.session,
            seq,
        };
        d.pending.push_back(Pending {
            serial,
            mark,
            acked: false,
        });
        d.records += 1;
        d.last_record = Some(time);
        let mut p = Vec::with_capacity(96 + payload.len() * 2);
        let key = (device, mark.session, seq);
        let prefix = &self.shared.prefix;
        let (topic, retain) = match class {
            Classified::Declaration(schema) => {
                json::declaration(&mut p, time, key, &schema);
                let topic = format!("{prefix}/{device:08x}/kind/{}", schema.name);
                inner.kinds.see(device, schema);
                inner.kinds.commit();
                (topic, true)
            }
            Classified::Kind(schema, values) => {
                json::kind_record(&mut p, time, key, &schema, &values);
                (
                    format!("{prefix}/{device:08x}/record/{}", schema.name),
                    false,
                )
            }
            Classified::Other(Other::Plain) => {
                json::record(&mut p, time, device, mark.session, seq, payload);
                (format!("{prefix}/{device:08x}/record"), false)
            }
            Classified::Other(other) => {
                json::texts(&mut p, time, key, &other.texts(payload));
                (format!("{prefix}/{device:08x}/record"), false)
            }
        };
        inner.enqueue(
            &self.shared.client,
            Msg {
                topic,
                payload: p,
                retain,
                record: Some((device, serial)),
            },
        );
        Ok(())
    }

    fn take_durable(&self, device: u32) -> usize {
        let mut inner = lock(&self.shared.inner);
        inner
            .devices
            .get_mut(&device)
            .map_or(0, |d| std::mem::take(&mut d.durable))
    }

    fn on_durable(&self, device: u32, wake: Box<dyn Fn() + Send + Sync>) {
        lock(&self.shared.inner).dev(device).wake = Some(Arc::from(wake));
    }

    fn link_state(&self, devices: &[LinkState]) {
        let now = Instant::now();
        let mut inner = lock(&self.shared.inner);
        for l in devices {
            let d = inner.dev(l.device);
            let due = d.online != Some(l.online)
                || d.status_at
                    .is_none_or(|at| now.duration_since(at) >= STATUS_EVERY);
            if due {
                let mut m = self.status_msg(&mut inner, l.device, l.online, now);
                m.payload.extend_from_slice(
                    format!(",\"retransmissions\":{}}}", l.retransmissions).as_bytes(),
                );
                inner.enqueue(&self.shared.client, m);
            }
        }
    }

    fn close(&self) {
        let started = Instant::now();
        let connected = {
            let mut inner = lock(&self.shared.inner);
            inner.closing = true;
            let now = Instant::now();
            let devices: Vec<u32> = inner.devices.keys().copied().collect();
            for device in devices {
                let mut m = self.status_msg(&mut inner, device, false, now);
                m.payload.push(b'}');
                inner.enqueue(&self.shared.client, m);
            }
            let m = Msg {
                topic: format!("{}/listener/{}", self.shared.prefix, self.shared.client_id),
                payload: listener_json(&self.shared.client_id, false, "stopped"),
                retain: true,
                record: None,
            };
            inner.enqueue(&self.shared.client, m);
            inner.connected
        };
        // What is in flight gets up to 3 s to be acknowledged (the statuses above with it).
        while connected && started.elapsed() < Duration::from_secs(3) {
            {
                let inner = lock(&self.shared.inner);
                if inner.backlog.is_empty() && inner.unsent.is_empty() && inner.in_flight == 0 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.shared.client.try_disconnect();
        if let Some(rx) = lock(&self.done).take() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        let inner = lock(&self.shared.inner);
        info!(
            "MQTT broker {}: {} records acknowledged by the broker, {} published again after a lost connection; state file {} written {} times ({:.1} ms)",
            self.url,
            inner.acked_records,
            inner.republished,
            inner.state.path().display(),
            inner.state.writes,
            inner.state.spent.as_secs_f64() * 1e3
        );
    }
}
