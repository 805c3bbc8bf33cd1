//! A deterministic simulator: two links over a seeded, faulty channel with a virtual clock.
//!
//! The device (client) streams `records` to the host (server) and the host sends
//! `commands` back. The channel loses, corrupts, duplicates and splits what it carries,
//! delays it, and cuts the connection; the applications release what they receive at a
//! pace of their own. At the end every record must have arrived exactly once, in order,
//! intact, in both directions, and nothing may be left unacknowledged.

#![allow(dead_code)] // each test file uses a different part

use std::collections::VecDeque;

use tether_core::link::{Config, Event, Instant, Link, LinkStorage, Phase, Role, Storage};

pub const FRAME: usize = 96;
pub type Store = LinkStorage<8, 8, FRAME>;

/// xorshift64*: reproducible without a dependency.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// What the channel does to the bytes it carries. Probabilities are per frame written.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub loss: f64,
    pub corrupt: f64,
    pub duplicate: f64,
    pub split: bool,
    /// One-way latency and added jitter, milliseconds.
    pub latency: u64,
    pub jitter: u64,
    /// Connection cuts spread over the run.
    pub cuts: u32,
}

impl Faults {
    pub const CLEAN: Faults = Faults {
        loss: 0.0,
        corrupt: 0.0,
        duplicate: 0.0,
        split: false,
        latency: 1,
        jitter: 0,
        cuts: 0,
    };
}

/// One scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub seed: u64,
    pub records: u32,
    pub commands: u32,
    pub window: u16,
    pub faults: Faults,
    /// Probability that the host's application releases what it holds at each step (a
    /// slow consumer below 1).
    pub release_rate: f64,
    pub first_seq: u32,
    /// The highest protocol version the device and the host offer (`Config::max_version`,
    /// with the `v2` feature; 1 and 1 without it).
    pub versions: (u8, u8),
}

/// One direction of the channel: chunks in flight, in order.
#[derive(Default)]
struct Pipe {
    queue: VecDeque<(u64, Vec<u8>)>,
    last_at: u64,
}

impl Pipe {
    fn push(&mut self, rng: &mut Rng, now: u64, bytes: &[u8], f: &Faults) {
        if rng.chance(f.loss) {
            return;
        }
        let mut bytes = bytes.to_vec();
        if rng.chance(f.corrupt) {
            let i = rng.below(bytes.len() as u64) as usize;
            bytes[i] ^= 1 << rng.below(8);
        }
        let copies = if rng.chance(f.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            // In order: a chunk never overtakes the one before it.
            let at = (now + f.latency + rng.below(f.jitter + 1)).max(self.last_at);
            self.last_at = at;
            if f.split && bytes.len() > 1 {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = (1 + rng.below(rest.len() as u64)) as usize;
                    self.queue.push_back((at, rest[..n].to_vec()));
                    rest = &rest[n..];
                }
            } else {
                self.queue.push_back((at, bytes.clone()));
            }
        }
    }

    fn due(&mut self, now: u64) -> Option<Vec<u8>> {
        match self.queue.front() {
            Some((at, _)) if *at <= now => self.queue.pop_front().map(|(_, b)| b),
            _ => None,
        }
    }

    fn next_at(&self) -> Option<u64> {
        self.queue.front().map(|(at, _)| *at)
    }

    fn cut(&mut self) {
        self.queue.clear();
    }
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub host_got: Vec<(u32, Vec<u8>)>,
    pub device_got: Vec<(u32, Vec<u8>)>,
    pub device_unacked: u32,
    pub host_unacked: u32,
    pub virtual_ms: u64,
    pub cuts: u32,
    pub retransmissions: u32,
    pub max_held_host: usize,
    pub connected_events: u32,
    pub restarts: u32,
    /// Frames an authenticated link dropped: bad MAC, replayed counter (both sides).
    pub auth_drops: u32,
    /// The protocol version each side ended with (device, host).
    pub versions: (u8, u8),
    /// Bytes each side sent (device, host), and the records the host received.
    pub bytes_out: (u64, u64),
}

pub fn record(i: u32) -> Vec<u8> {
    // Variable length with zeros inside: COBS and the length field both get exercised.
    let len = 1 + (i as usize * 7) % (FRAME - 18);
    (0..len).map(|k| (i as usize + k * 31) as u8).collect()
}

pub fn command(i: u32) -> Vec<u8> {
    format!("cmd {i}").into_bytes()
}

pub fn config(role: Role, session: u32, s: &Scenario) -> Config {
    let mut c = Config::new(role, session);
    c.window = s.window;
    c.first_seq = s.first_seq;
    #[cfg(feature = "v2")]
    {
        c.max_version = match role {
            Role::Client => s.versions.0,
            Role::Server => s.versions.1,
        };
    }
    c
}

/// Runs a scenario to completion or to its bound; returns what happened or why it stopped.
pub fn run(s: &Scenario) -> Result<Outcome, String> {
    let device =
        Link::new(config(Role::Client, 0xD00D, s), Store::new()).map_err(|e| format!("{e:?}"))?;
    let host =
        Link::new(config(Role::Server, 0x0057, s), Store::new()).map_err(|e| format!("{e:?}"))?;
    drive(s, device, host)
}

/// Storage for authenticated runs: the same records as [`Store`], plus the frame trailer.
#[cfg(feature = "auth")]
pub type AuthStore = LinkStorage<8, 8, { FRAME + tether_core::link::auth::TRAILER_LEN }>;

/// [`run`] with both sides authenticating with the same key (PROTOCOL.md 9.14).
#[cfg(feature = "auth")]
pub fn run_auth(s: &Scenario) -> Result<Outcome, String> {
    use tether_core::link::Key;
    let key = Key::new(0x0000_ABCD, [0x5A; 32]);
    let mut device = Link::new(config(Role::Client, 0xD00D, s), AuthStore::new())
        .map_err(|e| format!("{e:?}"))?;
    let mut host = Link::new(config(Role::Server, 0x0057, s), AuthStore::new())
        .map_err(|e| format!("{e:?}"))?;
    let seed = s.seed.to_le_bytes();
    let mut d_seed = [0xD0; 16];
    d_seed[8..].copy_from_slice(&seed);
    let mut h_seed = [0x40; 16];
    h_seed[8..].copy_from_slice(&seed);
    device
        .set_auth(Some(key.clone()), d_seed)
        .map_err(|e| format!("{e:?}"))?;
    host.set_auth(Some(key), h_seed)
        .map_err(|e| format!("{e:?}"))?;
    drive(s, device, host)
}

fn drive<S: Storage>(
    s: &Scenario,
    mut device: Link<S>,
    mut host: Link<S>,
) -> Result<Outcome, String> {
    let mut rng = Rng::new(s.seed);
    let mut up = Pipe::default(); // device -> host
    let mut down = Pipe::default(); // host -> device
    let mut out = Outcome::default();
    let mut now: u64 = 0;
    device.connect(Instant::from_millis(now));
    host.connect(Instant::from_millis(now));

    // Cuts after seeded numbers of records delivered, spread over the traffic: so every
    // cut happens before the run completes, however many records a frame carries.
    let expected = u64::from(s.records + s.commands);
    let mut cut_at: Vec<u64> = (0..s.faults.cuts)
        .map(|_| 1 + rng.below(expected.saturating_sub(1).max(1)))
        .collect();
    cut_at.sort_unstable();
    let mut cut_at: VecDeque<u64> = cut_at.into();
    let mut reconnect_at: Option<u64> = None;

    let (mut sent, mut cmds_sent) = (0u32, 0u32);
    let mut buf = vec![0u8; device.transmit_len().max(host.transmit_len())];
    let limit_ms = 30 * 60 * 1000;
    for _step in 0..2_000_000u32 {
        let t = Instant::from_millis(now);
        // A cut: both ends see the connection drop; bytes in flight are gone. They
        // reconnect a little later, as a real client and listener would.
        let dead = device.phase() == Phase::Dead || host.phase() == Phase::Dead;
        let delivered = (out.host_got.len() + out.device_got.len()) as u64;
        if cut_at.front().is_some_and(|&c| c <= delivered) || (dead && reconnect_at.is_none()) {
            cut_at.pop_front();
            up.cut();
            down.cut();
            out.cuts += 1;
            reconnect_at = Some(now + 1 + rng.below(50));
        }
        if reconnect_at.is_some_and(|r| r <= now) {
            reconnect_at = None;
            host.connect(t);
            device.connect(t);
        }
        let linked = reconnect_at.is_none();

        // Deliver what is due.
        while let Some(b) = up.due(now) {
            host.handle_input(t, &b);
        }
        while let Some(b) = down.due(now) {
            device.handle_input(t, &b);
        }
        device.handle_timeout(t);
        host.handle_timeout(t);

        // Applications.
        while sent < s.records && device.can_send() {
            device
                .send(&record(sent))
                .map_err(|e| format!("device send: {e:?}"))?;
            sent += 1;
        }
        while cmds_sent < s.commands && host.can_send() {
            host.send(&command(cmds_sent))
                .map_err(|e| format!("host send: {e:?}"))?;
            cmds_sent += 1;
        }
        out.max_held_host = out.max_held_host.max(host.received().count());
        if rng.chance(s.release_rate) {
            let got: Vec<_> = host
                .received()
                .map(|r| (r.seq, r.payload.to_vec()))
                .collect();
            host.release(got.len());
            out.host_got.extend(got);
        }
        let got: Vec<_> = device
            .received()
            .map(|r| (r.seq, r.payload.to_vec()))
            .collect();
        device.release(got.len());
        out.device_got.extend(got);
        for (link, _) in [(&mut device, 0), (&mut host, 1)] {
            while let Some(e) = link.poll_event() {
                match e {
                    Event::Connected { .. } => out.connected_events += 1,
                    Event::PeerRestarted { .. } => out.restarts += 1,
                    Event::Rejected { .. } => return Err(format!("rejected: {:?}", link.reject())),
                    _ => {}
                }
            }
        }

        // Transmit.
        if linked {
            while let Some(n) = device.poll_transmit(t, &mut buf) {
                trace(now, "device", &buf[..n]);
                up.push(&mut rng, now, &buf[..n], &s.faults);
            }
            while let Some(n) = host.poll_transmit(t, &mut buf) {
                trace(now, "host", &buf[..n]);
                down.push(&mut rng, now, &buf[..n], &s.faults);
            }
        }

        let done = sent == s.records
            && cmds_sent == s.commands
            && device.unacked() == 0
            && host.unacked() == 0
            && host.received().count() == 0
            && out.host_got.len() as u32 == s.records
            && out.device_got.len() as u32 == s.commands;
        if done {
            out.device_unacked = device.unacked();
            out.host_unacked = host.unacked();
            out.virtual_ms = now;
            out.retransmissions = device.stats().retransmissions + host.stats().retransmissions;
            out.versions = (device.protocol_version(), host.protocol_version());
            out.bytes_out = (device.stats().bytes_out, host.stats().bytes_out);
            #[cfg(feature = "auth")]
            for st in [device.stats(), host.stats()] {
                out.auth_drops += st.auth_failures + st.replays;
            }
            return Ok(out);
        }
        if now > limit_ms {
            break;
        }

        // Advance the clock to the next thing that can happen.
        let mut next = now + 50;
        for at in [
            up.next_at(),
            down.next_at(),
            device.poll_timeout().map(Instant::millis),
            host.poll_timeout().map(Instant::millis),
            reconnect_at,
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(at);
        }
        // The slow consumer acts every millisecond or so.
        if s.release_rate < 1.0 && host.received().count() != 0 {
            next = next.min(now + 1);
        }
        now = next.max(now + u64::from(next <= now));
    }
    Err(format!(
        "no completion by {now} ms: device {:?} unacked {} sent {sent}; host {:?} unacked {} got {}/{}; device got {}/{}\n device {:?}\n host {:?}",
        device.phase(),
        device.unacked(),
        host.phase(),
        host.unacked(),
        out.host_got.len(),
        s.records,
        out.device_got.len(),
        s.commands,
        device.stats(),
        host.stats()
    ))
}

/// With `TETHER_SIM_TRACE` set, prints every frame sent, decoded: to replay a failure.
fn trace(now: u64, who: &str, wire: &[u8]) {
    if std::env::var_os("TETHER_SIM_TRACE").is_none() {
        return;
    }
    let mut dec = tether_core::frame::Decoder::new(vec![0u8; 70_000]);
    let mut input = wire;
    #[cfg(feature = "v2")]
    if let Some(f) = dec.decode_any(&mut input) {
        eprintln!("{now:>8} {who:>6}: {f:?}");
    }
    #[cfg(not(feature = "v2"))]
    if let Some(f) = dec.decode(&mut input) {
        eprintln!("{now:>8} {who:>6}: {f:?}");
    }
}

/// Checks an outcome for exactly-once, in-order, intact delivery both ways.
pub fn check(s: &Scenario, o: &Outcome) -> Result<(), String> {
    for (i, (seq, payload)) in o.host_got.iter().enumerate() {
        let want_seq = s.first_seq.wrapping_add(i as u32);
        if *seq != want_seq || *payload != record(i as u32) {
            return Err(format!(
                "host record {i}: seq {seq} (want {want_seq}), payload {payload:02x?}"
            ));
        }
    }
    for (i, (seq, payload)) in o.device_got.iter().enumerate() {
        let want_seq = s.first_seq.wrapping_add(i as u32);
        if *seq != want_seq || *payload != command(i as u32) {
            return Err(format!(
                "device command {i}: seq {seq} (want {want_seq}), payload {payload:02x?}"
            ));
        }
    }
    if o.host_got.len() as u32 != s.records || o.device_got.len() as u32 != s.commands {
        return Err("counts differ".into());
    }
    if o.max_held_host > 8 {
        return Err(format!(
            "host held {} records with 8 slots",
            o.max_held_host
        ));
    }
    Ok(())
}

/// Runs and checks, with a message that says how to replay a failure.
pub fn run_and_check(s: &Scenario) -> Result<Outcome, String> {
    let o = run(s).map_err(|e| format!("{e}\n  replay: {s:?}"))?;
    check(s, &o).map_err(|e| format!("{e}\n  replay: {s:?}"))?;
    Ok(o)
}

/// [`run_and_check`] with authentication on both sides.
#[cfg(feature = "auth")]
pub fn run_and_check_auth(s: &Scenario) -> Result<Outcome, String> {
    let o = run_auth(s).map_err(|e| format!("{e}\n  replay (auth): {s:?}"))?;
    check(s, &o).map_err(|e| format!("{e}\n  replay (auth): {s:?}"))?;
    Ok(o)
}
