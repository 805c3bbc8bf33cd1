//! What a running server lets others see of its sessions without slowing them: the dashboard
//! (`crate::http`) reads through here.
//!
//! Two ways out, neither of which a link ever waits on:
//! - counters, read on request: each session's link counts what it does (`LinkStats`), and the
//!   reader takes them under the session's lock for a moment; the [`Tap`] keeps the rest
//!   (connections dropped by reason, the counters of sessions forgotten at `--max-devices`, so
//!   that totals never go back);
//! - updates, pushed: readings of the devices someone watches ([`Tap::watch`]) and the replies
//!   they send, published on a bounded broadcast channel with `send`, which never waits: a
//!   subscriber that falls more than [`BUS_CAPACITY`] updates behind loses the oldest ones
//!   (counted, [`Tap::note_lost`]) and the dashboard drops it.
//!
//! Readings are decimated where they are taken, by the connection's task ([`Sampler`]): at
//! most one [`Sample`] a device every [`SAMPLE_MS`] milliseconds, each field's last, lowest
//! and highest value over the records since the one before, so a 1 kHz device costs a
//! browser 50 updates a second and no spike is lost. A device nobody watches costs its task
//! one relaxed atomic load a turn.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tether_core::link::{Link, LinkStats};
use tether_core::record::{Field, Fields, Record};
use tokio::sync::broadcast;

use super::lock;
use crate::clock::Clock;
use crate::sink::kinds::Schema;
use crate::storage::HeapStorage;

/// Updates a subscriber may fall behind before it loses the oldest: at 50 samples a second
/// for a watched device, 20 s of them.
pub const BUS_CAPACITY: usize = 1024;
/// The shortest time between two samples of a device, milliseconds (50 a second at most).
pub const SAMPLE_MS: u64 = 20;
/// Fields of a record sampled, at most (the rest are not plotted).
pub const MAX_FIELDS: usize = 16;

/// Why a connection was dropped by the server (each counted, [`Tap::dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// No HELLO: silence past the handshake time-out, garbage, or closed before it.
    Handshake,
    /// Refused: a HELLO this version cannot accept, authentication, no room (`--max-devices`),
    /// a link that cannot be made.
    Refused,
    /// `--max-connections` reached.
    Limit,
    /// The peer read nothing for the idle time-out (its connection backed up).
    Stalled,
    /// The link heard nothing for the idle time-out.
    Silent,
}

impl Dropped {
    /// Every reason, in the order [`Tap::dropped`] reports them.
    pub const ALL: [Dropped; 5] = [
        Dropped::Handshake,
        Dropped::Refused,
        Dropped::Limit,
        Dropped::Stalled,
        Dropped::Silent,
    ];

    /// Its name in metrics (`reason="…"`).
    pub fn name(self) -> &'static str {
        match self {
            Dropped::Handshake => "handshake",
            Dropped::Refused => "refused",
            Dropped::Limit => "limit",
            Dropped::Stalled => "stalled",
            Dropped::Silent => "silent",
        }
    }
}

/// One field over the records of a sample: the last value and the lowest and highest (NaN
/// for a field that is not a number: a string, bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldStat {
    /// The value in the sample's last record.
    pub last: f64,
    /// The lowest value since the sample before.
    pub min: f64,
    /// The highest value since the sample before.
    pub max: f64,
}

/// A device's readings since its sample before, decimated ([`Sampler`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The device.
    pub device: u32,
    /// When it was taken, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The sequence number of its last record.
    pub seq: u32,
    /// Records it stands for.
    pub records: u32,
    /// Field by field (field 1 first).
    pub fields: Vec<FieldStat>,
    /// The declared kind its records are of (`PROTOCOL.md` 10.5), which names the fields;
    /// `None`: records without a declaration (`field_1`, `field_2`, …).
    pub kind: Option<Arc<Schema>>,
}

impl Sample {
    /// The name of field `i` (from 0): the declared field's column header (`temperature
    /// (°C)`), or `field_N`.
    pub fn field_name(&self, i: usize) -> String {
        field_name(self.kind.as_deref(), i)
    }
}

/// The name of field `i` (from 0) of a record of `kind`: its column header (`temperature
/// (°C)`), or `field_N` without a declaration.
pub fn field_name(kind: Option<&Schema>, i: usize) -> String {
    match kind.and_then(|k| k.columns.get(i).map(|c| (c, k))) {
        Some((c, _)) => match &c.unit {
            Some(u) => format!("{} ({u})", c.name),
            None => c.name.clone(),
        },
        None => format!("field_{}", i + 1),
    }
}

/// What the tap publishes.
#[derive(Debug, Clone)]
pub enum Update {
    /// Readings of a watched device.
    Sample(Arc<Sample>),
    /// A record of a watched device that is a reply rather than a reading (a typed record
    /// whose first field is a string, as the simulated devices' `status` reply), as text.
    Reply {
        /// The device.
        device: u32,
        /// Its fields, comma-separated.
        text: Arc<str>,
    },
}

/// Link counters summed over sessions (what [`LinkStats`] counts, widened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTotals {
    /// Records received and accepted.
    pub records: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Valid frames received.
    pub frames_in: u64,
    /// DATA frames sent again.
    pub retransmissions: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes that resumed a session.
    pub resumes: u64,
    /// Peer restarts detected.
    pub peer_restarts: u64,
    /// Frames dropped for a CRC mismatch.
    pub crc: u64,
    /// Frames dropped for broken COBS.
    pub cobs: u64,
    /// Frames dropped for a bad header or for being too short.
    pub header: u64,
    /// Frames dropped for not fitting the receive buffer.
    pub too_long: u64,
    /// Records received again (already had them).
    pub duplicates: u64,
    /// Records received after a gap.
    pub out_of_order: u64,
    /// Records beyond the credit granted.
    pub overruns: u64,
    /// Acknowledgements of records never sent.
    pub spurious_acks: u64,
    /// Valid frames that made no sense in their phase.
    pub unexpected: u64,
    /// Frames of an authenticated session with a MAC that does not match.
    pub auth_failures: u64,
    /// Replayed frames of an authenticated session.
    pub replays: u64,
}

impl LinkTotals {
    /// Adds one link's counters.
    pub fn add(&mut self, s: &LinkStats) {
        let d = &s.decoder;
        self.records += u64::from(s.records_in);
        self.bytes_in += d.bytes;
        self.bytes_out += s.bytes_out;
        self.frames_in += u64::from(d.frames);
        self.retransmissions += u64::from(s.retransmissions);
        self.handshakes += u64::from(s.handshakes);
        self.resumes += u64::from(s.resumes);
        self.peer_restarts += u64::from(s.peer_restarts);
        self.crc += u64::from(d.crc_errors);
        self.cobs += u64::from(d.cobs_errors);
        self.header += u64::from(d.header_errors);
        self.too_long += u64::from(d.too_long);
        self.duplicates += u64::from(s.duplicates);
        self.out_of_order += u64::from(s.out_of_order);
        self.overruns += u64::from(s.overruns);
        self.spurious_acks += u64::from(s.spurious_acks);
        self.unexpected += u64::from(s.unexpected);
        self.auth_failures += u64::from(s.auth_failures);
        self.replays += u64::from(s.replays);
    }

    /// The same counters summed.
    pub fn plus(mut self, other: &LinkTotals) -> LinkTotals {
        for (a, b) in self.errors_mut().into_iter().zip(other.errors()) {
            *a += b.1;
        }
        self.records += other.records;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.frames_in += other.frames_in;
        self.retransmissions += other.retransmissions;
        self.handshakes += other.handshakes;
        self.resumes += other.resumes;
        self.peer_restarts += other.peer_restarts;
        self
    }

    /// Frames damaged on the way (CRC, COBS, header).
    pub fn corrupt(&self) -> u64 {
        self.crc + self.cobs + self.header
    }

    /// Frames that arrived whole but were not taken: too long, duplicates, out of order,
    /// beyond credit, failed authentication, replayed.
    pub fn dropped(&self) -> u64 {
        self.too_long
            + self.duplicates
            + self.out_of_order
            + self.overruns
            + self.auth_failures
            + self.replays
    }

    /// Every error counter by its name in metrics (`kind="…"`).
    pub fn errors(&self) -> [(&'static str, u64); 11] {
        [
            ("crc", self.crc),
            ("cobs", self.cobs),
            ("header", self.header),
            ("too_long", self.too_long),
            ("duplicate", self.duplicates),
            ("out_of_order", self.out_of_order),
            ("overrun", self.overruns),
            ("spurious_ack", self.spurious_acks),
            ("unexpected", self.unexpected),
            ("auth_failure", self.auth_failures),
            ("replay", self.replays),
        ]
    }

    fn errors_mut(&mut self) -> [&mut u64; 11] {
        [
            &mut self.crc,
            &mut self.cobs,
            &mut self.header,
            &mut self.too_long,
            &mut self.duplicates,
            &mut self.out_of_order,
            &mut self.overruns,
            &mut self.spurious_acks,
            &mut self.unexpected,
            &mut self.auth_failures,
            &mut self.replays,
        ]
    }
}

/// A server's window for onlookers: the update channel, who watches which device, and the
/// counters the links do not keep themselves.
#[derive(Debug)]
pub struct Tap {
    bus: broadcast::Sender<Update>,
    /// Devices watched, each by how many.
    watched: Mutex<HashMap<u32, usize>>,
    /// Bumped whenever `watched` changes, so that a connection's task looks at `watched`
    /// only then.
    version: AtomicU64,
    published: AtomicU64,
    lost: AtomicU64,
    dropped: [AtomicU64; Dropped::ALL.len()],
    /// Counters of sessions forgotten at `--max-devices`.
    forgotten: Mutex<LinkTotals>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap::new()
    }
}

impl Tap {
    /// A tap with nobody watching.
    pub fn new() -> Self {
        Tap {
            bus: broadcast::channel(BUS_CAPACITY).0,
            watched: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
            published: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            dropped: Default::default(),
            forgotten: Mutex::new(LinkTotals::default()),
        }
    }

    /// Every update from now on. A receiver more than [`BUS_CAPACITY`] behind gets
    /// `RecvError::Lagged` with how many it lost: report them with [`Tap::note_lost`].
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.bus.subscribe()
    }

    /// Samples `device`'s readings (and passes on its replies) until the guard is dropped.
    pub fn watch(self: &Arc<Self>, device: u32) -> Watch {
        *lock(&self.watched).entry(device).or_default() += 1;
        self.version.fetch_add(1, Ordering::Relaxed);
        Watch {
            tap: self.clone(),
            device,
        }
    }

    fn is_watched(&self, device: u32) -> bool {
        lock(&self.watched).contains_key(&device)
    }

    /// Publishes `update` to whoever subscribes; never waits.
    pub fn publish(&self, update: Update) {
        // An error means nobody subscribes: nothing to do.
        if self.bus.send(update).is_ok() {
            self.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Updates published to at least one subscriber.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// A subscriber fell behind and lost `n` updates.
    pub fn note_lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Updates lost by subscribers that fell behind.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Counts a connection dropped for `why`.
    pub fn count_dropped(&self, why: Dropped) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections dropped, by reason.
    pub fn dropped(&self) -> [(Dropped, u64); Dropped::ALL.len()] {
        Dropped::ALL.map(|d| (d, self.dropped[d as usize].load(Ordering::Relaxed)))
    }

    /// Keeps the counters of a session being forgotten, so that totals never go back.
    pub fn forget(&self, stats: &LinkStats) {
        lock(&self.forgotten).add(stats);
    }

    /// The counters of every session forgotten so far.
    pub fn forgotten(&self) -> LinkTotals {
        *lock(&self.forgotten)
    }
}

/// A device watched ([`Tap::watch`]) while this lives.
#[derive(Debug)]
pub struct Watch {
    tap: Arc<Tap>,
    device: u32,
}

impl Watch {
    /// The device watched.
    pub fn device(&self) -> u32 {
        self.device
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = lock(&self.tap.watched);
        if let Some(n) = watched.get_mut(&self.device) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.device);
            }
        }
        drop(watched);
        self.tap.version.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection's sampler of its device's readings: kept by the connection's task, given
/// the link under the session's lock before the server takes the records.
#[derive(Debug)]
pub struct Sampler {
    /// The tap's watch version last looked at.
    version: u64,
    watched: bool,
    /// The sequence number after the last record sampled (records a server holds across
    /// turns, as the bridge does until upstream acknowledged them, are sampled once).
    next: Option<u32>,
    fields: Vec<FieldStat>,
    records: u32,
    last_seq: u32,
    /// When the last sample went out (the link's clock), milliseconds.
    sent_at: Option<u64>,
    /// The kinds the device declared in this session, by id: kept watched or not, since a
    /// declaration comes once a session (10.7), long before anyone may watch.
    kinds: Vec<Arc<Schema>>,
    /// The kind plotted (the one most records were of since the watch began), and per kind
    /// id the records seen of it: records of another kind are replies.
    plotted: Option<u8>,
    counts: Vec<(u8, u64)>,
    /// The link's peer restarts when last looked: a restarted device numbers its records
    /// afresh and declares its kinds again.
    restarts: u32,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    /// A sampler that will look at the tap at its first turn.
    pub fn new() -> Self {
        Sampler {
            version: u64::MAX,
            watched: false,
            next: None,
            fields: Vec::new(),
            records: 0,
            last_seq: 0,
            sent_at: None,
            kinds: Vec::new(),
            plotted: None,
            counts: Vec::new(),
            restarts: 0,
        }
    }

    /// Samples what `link` received since the last turn if `device` is watched.
    #[inline]
    pub fn take(&mut self, tap: &Tap, device: u32, link: &mut Link<HeapStorage>, clock: &Clock) {
        let version = tap.version.load(Ordering::Relaxed);
        if version != self.version {
            self.version = version;
            self.watched = tap.is_watched(device);
            // Records still held are looked at again (a declaration seen twice changes
            // nothing).
            self.next = None;
            self.fields.clear();
            self.records = 0;
            self.plotted = None;
            self.counts.clear();
        }
        self.sample(tap, device, link, clock);
    }

    /// Looks at the records received since the last turn: declarations always, the rest
    /// only while `device` is watched.
    fn sample(&mut self, tap: &Tap, device: u32, link: &mut Link<HeapStorage>, clock: &Clock) {
        let restarts = link.stats().peer_restarts;
        if restarts != self.restarts {
            self.restarts = restarts;
            self.next = None;
            self.kinds.clear();
            self.plotted = None;
            self.counts.clear();
            self.fields.clear();
            self.records = 0;
        }
        for r in link.received() {
            if let Some(next) = self.next {
                // Already seen (serial number arithmetic: the numbering wraps).
                if (r.seq.wrapping_sub(next) as i32) < 0 {
                    continue;
                }
            }
            self.next = Some(r.seq.wrapping_add(1));
            if let [tether_core::record::TYPED, tether_core::record::kind::DECLARATION, ..] =
                r.payload
            {
                if let Ok(schema) = Schema::parse(r.payload) {
                    self.kinds.retain(|k| k.id != schema.id);
                    self.kinds.push(Arc::new(schema));
                }
                continue;
            }
            if !self.watched {
                continue;
            }
            if let Record::Kind { id, record } = Record::parse(r.payload) {
                self.add_kind(tap, device, r.seq, id, record);
                continue;
            }
            if let Some(text) = reply_text(r.payload) {
                tap.publish(Update::Reply {
                    device,
                    text: text.into(),
                });
                continue;
            }
            self.add(r.seq, r.payload);
        }
        if !self.watched {
            return;
        }
        let now = clock.now().millis();
        let due = self
            .sent_at
            .is_none_or(|t| now.saturating_sub(t) >= SAMPLE_MS);
        if self.records > 0 && due {
            self.sent_at = Some(now);
            let sample = Sample {
                device,
                time_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_millis() as u64,
                seq: self.last_seq,
                records: self.records,
                fields: std::mem::take(&mut self.fields),
                kind: self
                    .plotted
                    .and_then(|id| self.kinds.iter().find(|k| k.id == id).cloned()),
            };
            self.records = 0;
            tap.publish(Update::Sample(Arc::new(sample)));
        }
    }

    /// A record of declared kind `id`: a reading of the kind plotted, or a reply. The kind
    /// plotted is the one most records were of since the watch began (a device's readings,
    /// not its replies to commands); when another overtakes it, the plot starts afresh.
    fn add_kind(&mut self, tap: &Tap, device: u32, seq: u32, id: u8, record: &[u8]) {
        let Some(schema) = self.kinds.iter().find(|k| k.id == id).cloned() else {
            return; // undeclared: nothing to read it by
        };
        let count = match self.counts.iter_mut().find(|(k, _)| *k == id) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.counts.push((id, 1));
                1
            }
        };
        let plotted = self
            .plotted
            .and_then(|p| self.counts.iter().find(|(k, _)| *k == p))
            .map_or(0, |(_, n)| *n);
        if self.plotted != Some(id) && count > plotted {
            self.plotted = Some(id);
            self.fields.clear();
            self.records = 0;
        }
        if self.plotted == Some(id) {
            let numbers: Vec<f64> = schema
                .values(record)
                .map_while(Result::ok)
                .map(|f| number(&f))
                .collect();
            self.put_all(seq, &numbers);
        } else {
            let mut text = String::from(schema.name.as_str());
            for (i, v) in schema.values(record).map_while(Result::ok).enumerate() {
                let sep = if i == 0 { ": " } else { ", " };
                let name = schema.columns.get(i).map_or("", |c| c.name.as_str());
                let _ = write!(text, "{sep}{name} {}", crate::sink::kinds::text(&v));
            }
            tap.publish(Update::Reply {
                device,
                text: text.into(),
            });
        }
    }

    /// Folds one reading's numbers into the sample being made.
    fn put_all(&mut self, seq: u32, numbers: &[f64]) {
        for (i, &v) in numbers.iter().enumerate().take(MAX_FIELDS) {
            self.put(i, v);
        }
        self.records += 1;
        self.last_seq = seq;
    }

    /// Field `i`'s value `v` into the sample being made.
    fn put(&mut self, i: usize, v: f64) {
        match self.fields.get_mut(i) {
            None => self.fields.push(FieldStat {
                last: v,
                min: v,
                max: v,
            }),
            Some(f) => {
                f.last = v;
                // A number replaces a NaN bound (which no comparison favours).
                if !v.is_nan() {
                    if f.min.is_nan() || v < f.min {
                        f.min = v;
                    }
                    if f.max.is_nan() || v > f.max {
                        f.max = v;
                    }
                }
            }
        }
    }

    /// Folds one reading (fields or text, no declared kind) into the sample being made.
    fn add(&mut self, seq: u32, payload: &[u8]) {
        let mut numbers = Vec::new();
        match Fields::new(payload) {
            Some(fields) => numbers.extend(fields.map_while(Result::ok).map(|f| number(&f))),
            None => {
                // A text record: comma-separated, each field that reads as a number plotted.
                let text = String::from_utf8_lossy(payload);
                numbers.extend(
                    text.trim_end_matches(['\r', '\n'])
                        .split(',')
                        .map(|part| part.trim().parse().unwrap_or(f64::NAN)),
                );
            }
        }
        // Fields this record did not have keep their values from the records before.
        self.put_all(seq, &numbers);
    }
}

/// A typed field as a number to plot: NaN for a string or bytes.
fn number(f: &Field<'_>) -> f64 {
    match *f {
        Field::Bool(b) => f64::from(u8::from(b)),
        Field::U8(v) => f64::from(v),
        Field::U16(v) => f64::from(v),
        Field::U32(v) => f64::from(v),
        Field::U64(v) => v as f64,
        Field::I8(v) => f64::from(v),
        Field::I16(v) => f64::from(v),
        Field::I32(v) => f64::from(v),
        Field::I64(v) => v as f64,
        Field::F32(v) => f64::from(v),
        Field::F64(v) => v,
        Field::Str(_) | Field::Bytes(_) => f64::NAN,
    }
}

/// The text of a typed record that starts with a string field (a reply, not a reading).
fn reply_text(payload: &[u8]) -> Option<String> {
    let mut fields = Fields::new(payload)?;
    let Some(Ok(Field::Str(first))) = fields.next() else {
        return None;
    };
    let mut text = first.to_owned();
    for f in fields {
        let Ok(f) = f else { break };
        text.push_str(", ");
        match f {
            Field::Str(s) => text.push_str(s),
            Field::Bytes(b) => b.iter().for_each(|x| {
                let _ = write!(text, "{x:02x}");
            }),
            Field::Bool(b) => text.push_str(if b { "true" } else { "false" }),
            Field::F32(v) => text.push_str(&v.to_string()),
            Field::F64(v) => text.push_str(&v.to_string()),
            other => text.push_str(&number(&other).to_string()),
        }
    }
    Some(text)
}

/// Bucket upper bounds of [`Histogram`], seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// A latency histogram that any thread adds to without a lock (the sink's commits).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, the last one above every bound (not cumulative).
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Cumulative counts at each bound of [`LATENCY_BOUNDS`] then +Inf, the count and the
    /// sum in seconds, as Prometheus reports a histogram.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, self.count.load(Ordering::Relaxed), sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::link::{Config, Instant, Role};
    use tether_core::record::RecordWriter;

    fn reading(v: f32, on: bool) -> Vec<u8> {
        let mut buf = [0u8; 32];
        let mut w = RecordWriter::new(&mut buf);
        w.f32(v).unwrap().bool(on).unwrap();
        w.finish().to_vec()
    }

    #[test]
    fn a_sample_keeps_each_fields_last_lowest_and_highest() {
        let mut s = Sampler::new();
        for (seq, v) in [(0, 2.0), (1, -1.0), (2, 5.0), (3, 1.5)] {
            s.add(seq, &reading(v, seq == 3));
        }
        s.add(4, b"7,x,3");
        assert_eq!(s.records, 5);
        assert_eq!(s.last_seq, 4);
        assert_eq!(
            s.fields[0],
            FieldStat {
                last: 7.0,
                min: -1.0,
                max: 7.0
            }
        );
        // The text record's "x" is not a number: the field keeps its range, its last is NaN.
        assert!(s.fields[1].last.is_nan());
        assert_eq!((s.fields[1].min, s.fields[1].max), (0.0, 1.0));
        assert_eq!(s.fields[2].last, 3.0);
    }

    #[test]
    fn replies_are_told_apart_from_readings() {
        let mut buf = [0u8; 64];
        let mut w = RecordWriter::new(&mut buf);
        w.str("status")
            .unwrap()
            .u32(1000)
            .unwrap()
            .bool(true)
            .unwrap();
        assert_eq!(
            reply_text(w.finish()).as_deref(),
            Some("status, 1000, true")
        );
        assert_eq!(reply_text(&reading(1.0, false)), None);
        assert_eq!(reply_text(b"status,1"), None);
    }

    /// A server link holding `n` readings from a client link.
    fn link_with_records(n: u32) -> Link<HeapStorage> {
        let readings: Vec<Vec<u8>> = (0..n).map(|i| reading(i as f32, false)).collect();
        link_with(&readings)
    }

    /// A server link holding `records` from a client link.
    fn link_with(records: &[Vec<u8>]) -> Link<HeapStorage> {
        let mut server = Link::new(Config::new(Role::Server, 1), HeapStorage::new(8, 64, 128))
            .expect("server link");
        let mut client = Link::new(Config::new(Role::Client, 2), HeapStorage::new(64, 8, 128))
            .expect("client link");
        let now = Instant::from_millis(0);
        server.connect(now);
        client.connect(now);
        let mut frame = vec![0u8; 256];
        let mut pump = |a: &mut Link<HeapStorage>, b: &mut Link<HeapStorage>| {
            while let Some(len) = a.poll_transmit(now, &mut frame) {
                b.handle_input(now, &frame[..len]);
            }
        };
        for _ in 0..4 {
            pump(&mut client, &mut server);
            pump(&mut server, &mut client);
        }
        for r in records {
            client.send(r).expect("room to send");
        }
        pump(&mut client, &mut server);
        server
    }

    #[test]
    fn declared_kinds_name_the_fields_and_another_kind_is_a_reply() {
        use tether_core::record::kind::{FieldDef, Kind, KindWriter, Type};
        const ENV: Kind<'static> = Kind {
            id: 0,
            name: "env",
            fields: &[
                FieldDef::new("t", Type::F32).unit("°C"),
                FieldDef::new("n", Type::U32),
            ],
        };
        const STATUS: Kind<'static> = Kind {
            id: 1,
            name: "status",
            fields: &[FieldDef::new("period", Type::U32).unit("ms")],
        };
        let env: [u8; ENV.declaration_len()] = ENV.declaration();
        let status: [u8; STATUS.declaration_len()] = STATUS.declaration();
        let mut records = vec![env.to_vec(), status.to_vec()];
        for i in 0..3u32 {
            let mut buf = [0u8; 32];
            let mut w = KindWriter::new(&ENV, &mut buf);
            records.push(
                w.f32(20.0 + i as f32)
                    .unwrap()
                    .u32(i)
                    .unwrap()
                    .finish()
                    .unwrap()
                    .to_vec(),
            );
        }
        let mut buf = [0u8; 32];
        let mut w = KindWriter::new(&STATUS, &mut buf);
        records.push(w.u32(1000).unwrap().finish().unwrap().to_vec());
        let tap = Arc::new(Tap::new());
        let mut rx = tap.subscribe();
        let clock = Clock::new();
        let mut link = link_with(&records);
        let mut sampler = Sampler::new();
        // Nobody watches while the declarations pass: they are kept all the same.
        sampler.take(&tap, 7, &mut link, &clock);
        assert!(rx.try_recv().is_err());
        let _watch = tap.watch(7);
        sampler.take(&tap, 7, &mut link, &clock);
        let Ok(Update::Reply { text, .. }) = rx.try_recv() else {
            panic!("the status record is a reply")
        };
        assert_eq!(&*text, "status: period 1000");
        let Ok(Update::Sample(s)) = rx.try_recv() else {
            panic!("a sample of the readings")
        };
        assert_eq!(s.kind.as_ref().map(|k| k.name.as_str()), Some("env"));
        assert_eq!((s.records, s.seq), (3, 4));
        assert_eq!(
            (s.field_name(0), s.field_name(1)),
            ("t (°C)".into(), "n".into())
        );
        assert_eq!(s.field_name(2), "field_3");
        assert_eq!((s.fields[0].min, s.fields[0].max), (20.0, 22.0));
    }

    #[test]
    fn only_a_watched_device_is_sampled_and_each_record_once() {
        let tap = Arc::new(Tap::new());
        let mut rx = tap.subscribe();
        let clock = Clock::new();
        let mut link = link_with_records(3);
        let mut sampler = Sampler::new();
        sampler.take(&tap, 7, &mut link, &clock);
        assert!(rx.try_recv().is_err(), "not watched: nothing published");
        let watch = tap.watch(7);
        sampler.take(&tap, 7, &mut link, &clock);
        let Ok(Update::Sample(s)) = rx.try_recv() else {
            panic!("a sample of the watched device")
        };
        assert_eq!((s.device, s.records, s.seq), (7, 3, 2));
        assert_eq!((s.fields[0].min, s.fields[0].max), (0.0, 2.0));
        // The same records, still held by the link: not sampled again.
        sampler.sent_at = None;
        sampler.take(&tap, 7, &mut link, &clock);
        assert!(rx.try_recv().is_err());
        drop(watch);
        assert!(!tap.is_watched(7));
    }

    #[test]
    fn a_subscriber_that_falls_behind_loses_the_oldest_and_publishing_never_waits() {
        let tap = Tap::new();
        let mut slow = tap.subscribe();
        let t0 = std::time::Instant::now();
        for i in 0..(BUS_CAPACITY as u32 * 3) {
            tap.publish(Update::Reply {
                device: i,
                text: "x".into(),
            });
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "publishing waited");
        assert_eq!(tap.published(), BUS_CAPACITY as u64 * 3);
        match slow.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                assert_eq!(n, BUS_CAPACITY as u64 * 2);
                tap.note_lost(n);
            }
            other => panic!("expected the subscriber to have lagged, got {other:?}"),
        }
        assert_eq!(tap.lost(), BUS_CAPACITY as u64 * 2);
    }

    #[test]
    fn the_histogram_is_cumulative_with_count_and_sum() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let (buckets, count, sum) = h.snapshot();
        assert_eq!(buckets.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[LATENCY_BOUNDS.len() - 1], 2, "1 s: two of three");
        assert_eq!(*buckets.last().unwrap(), 3);
        assert_eq!(count, 3);
        assert!((sum - 5.003_01).abs() < 1e-6);
    }
}
