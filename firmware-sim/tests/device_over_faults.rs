//! One simulated device streaming to a host-side `Link` through the fault pipe, with a
//! virtual clock: every reading must arrive exactly once, in order and intact, and every
//! command must take effect, be answered when it asks for an answer, and be acknowledged.

use tether_core::link::{Config, Event, Instant, Link, LinkStorage, Role};
use tether_core::record::{Field, Fields};
use tether_firmware_sim::device::{Device, DeviceConfig, Sensor};
use tether_firmware_sim::fault::{Cut, FaultConfig, FaultPipe, FaultStats, Side};
use tether_firmware_sim::rng::XorShift;

/// What a firmware might afford: 4 + 4 slots of 128-byte frames.
type DeviceStore = LinkStorage<4, 4, 128>;
/// The host has more slots, of the device's frame size: a host whose records could be
/// longer than the device accepts is refused at the handshake.
type HostStore = LinkStorage<16, 16, 128>;

const FIRST_PERIOD_MS: u32 = 10;
/// The host's commands, each sent once it holds this many readings.
const COMMANDS: [(usize, &str); 4] = [
    (100, "rate 50"),
    (150, "output on"),
    (200, "status"),
    (250, "frobnicate 7"),
];

#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    counter: u32,
    millis: u32,
    temperature: f32,
    pressure: u16,
    output: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status {
    period_ms: u32,
    output: bool,
    readings: u32,
    retransmissions: u32,
    /// Readings the host had received when the status arrived.
    at: usize,
}

#[derive(Debug, Default)]
struct Outcome {
    readings: Vec<Reading>,
    statuses: Vec<Status>,
    errors: Vec<(String, String)>,
    virtual_ms: u64,
    transport_cuts: u32,
    faults: FaultStats,
}

/// The host application: decodes one record.
fn decode(payload: &[u8], out: &mut Outcome) -> Result<(), String> {
    let fields: Vec<Field<'_>> = Fields::new(payload)
        .ok_or_else(|| format!("not a typed record: {payload:02x?}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad record {payload:02x?}: {e}"))?;
    match fields.as_slice() {
        [Field::U32(counter), Field::U32(millis), Field::F32(temperature), Field::U16(pressure), Field::Bool(output)] => {
            out.readings.push(Reading {
                counter: *counter,
                millis: *millis,
                temperature: *temperature,
                pressure: *pressure,
                output: *output,
            })
        }
        [Field::Str("status"), Field::U32(period_ms), Field::Bool(output), Field::U32(readings), Field::U32(retransmissions)] => {
            out.statuses.push(Status {
                period_ms: *period_ms,
                output: *output,
                readings: *readings,
                retransmissions: *retransmissions,
                at: out.readings.len(),
            })
        }
        [Field::Str("error"), Field::Str(text), Field::Str(reason)] => {
            out.errors.push((text.to_string(), reason.to_string()))
        }
        other => return Err(format!("unexpected record {other:?}")),
    }
    Ok(())
}

struct Setup {
    seed: u64,
    readings: u32,
    faults: FaultConfig,
}

/// Runs the device and the host to completion (everything delivered and acknowledged)
/// or to a bound.
fn run(s: &Setup) -> Result<(Outcome, Device<DeviceStore>), String> {
    let mut rng = XorShift::new(s.seed ^ 0xC0FFEE);
    let mut device = Device::new(
        DeviceConfig {
            period_ms: FIRST_PERIOD_MS,
            record_limit: Some(s.readings),
            ..DeviceConfig::new(0xD0_0000 | s.seed as u32 & 0xFFFF | 1, s.seed)
        },
        DeviceStore::new(),
    )
    .map_err(|e| e.to_string())?;
    let mut host = Link::new(Config::new(Role::Server, 0x57), HostStore::new())
        .map_err(|e| format!("{e:?}"))?;
    let mut pipe = Box::new(FaultPipe::<65_536>::new(s.faults));
    let mut out = Outcome::default();
    let mut buf = vec![0u8; 1024];
    let mut now: u64 = 0;
    let t0 = Instant::from_millis(0);
    device.transport_up(t0).map_err(|e| e.to_string())?;
    host.connect(t0);
    let mut reconnect_at: Option<u64> = None;
    let mut commands_sent = 0;

    for _step in 0..1_000_000u32 {
        let t = Instant::from_millis(now);
        if reconnect_at.is_some_and(|r| r <= now) {
            reconnect_at = None;
            pipe.reconnect();
            device.transport_up(t).map_err(|e| e.to_string())?;
            host.connect(t);
        }
        let linked = reconnect_at.is_none();
        let mut cut = false;

        // Deliver what arrived, in the pieces the pipe chooses.
        if linked {
            for side in [Side::B, Side::A] {
                loop {
                    match pipe.pull(side, &mut buf) {
                        Ok(0) => break,
                        Ok(n) if side == Side::B => host.handle_input(t, &buf[..n]),
                        Ok(n) => device.handle_input(t, &buf[..n]),
                        Err(Cut) => {
                            cut = true;
                            break;
                        }
                    }
                }
            }
        }
        device.poll(t);
        host.handle_timeout(t);

        // The host application: decode, then release (so acknowledge) what it holds.
        let held: Vec<Vec<u8>> = host.received().map(|r| r.payload.to_vec()).collect();
        for payload in &held {
            decode(payload, &mut out)?;
        }
        host.release(held.len());
        while let Some(&(after, text)) = COMMANDS.get(commands_sent) {
            if out.readings.len() < after || !host.can_send() {
                break;
            }
            host.send(text.as_bytes())
                .map_err(|e| format!("host send: {e:?}"))?;
            commands_sent += 1;
        }
        while let Some(e) = host.poll_event() {
            match e {
                Event::PeerDead => cut = true, // the listener drops the connection
                Event::Rejected { .. } => return Err(format!("rejected: {:?}", host.reject())),
                Event::Closed => return Err("host link closed".into()),
                _ => {}
            }
        }
        if linked && device.needs_transport() {
            cut = true; // the device gave up on the connection (peer dead)
        }

        // Transmit, one frame per write.
        if linked && !cut {
            'tx: for side in [Side::A, Side::B] {
                loop {
                    let frame = if side == Side::A {
                        device.poll_transmit(t, &mut buf)
                    } else {
                        host.poll_transmit(t, &mut buf)
                    };
                    let Some(n) = frame else { break };
                    match pipe.push(side, &buf[..n]) {
                        Ok(k) if k == n => {}
                        Ok(k) => return Err(format!("pipe full: took {k} of {n}")),
                        Err(Cut) => {
                            cut = true;
                            break 'tx;
                        }
                    }
                }
            }
        }
        if cut {
            // Both ends see the connection drop and connect again a little later.
            pipe.cut();
            device.transport_down();
            out.transport_cuts += 1;
            reconnect_at = Some(now + 1 + rng.below(50));
        }

        let done = out.readings.len() == s.readings as usize
            && commands_sent == COMMANDS.len()
            && !out.statuses.is_empty()
            && !out.errors.is_empty()
            && host.unacked() == 0
            && device.link().unacked() == 0
            && host.received().count() == 0;
        if done {
            out.virtual_ms = now;
            out.faults = pipe.stats();
            return Ok((out, device));
        }
        if now > 30 * 60 * 1000 {
            break;
        }

        // Advance the virtual clock to the next thing that can happen; bytes in the pipe
        // take a millisecond.
        let mut next = now + 100;
        let in_flight = pipe.pending(Side::A) + pipe.pending(Side::B) > 0;
        for at in [
            device.poll_timeout().map(Instant::millis),
            host.poll_timeout().map(Instant::millis),
            reconnect_at,
            in_flight.then_some(now + 1),
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(at);
        }
        now = next.max(now + 1);
    }
    Err(format!(
        "no completion by {now} ms: readings {}/{}, commands sent {commands_sent}, statuses {}, errors {}, host unacked {}, device unacked {}\n device {:?}\n link {:?}\n host {:?}\n faults {:?}",
        out.readings.len(),
        s.readings,
        out.statuses.len(),
        out.errors.len(),
        host.unacked(),
        device.link().unacked(),
        device.stats(),
        device.link().stats(),
        host.stats(),
        pipe.stats()
    ))
}

/// Everything the run must show.
fn check(s: &Setup, out: &Outcome, device: &Device<DeviceStore>) -> Result<(), String> {
    // Every reading exactly once, in order, intact: the counters and the sensor's values.
    let mut sensor = Sensor::new(s.seed);
    for (k, r) in out.readings.iter().enumerate() {
        let want = sensor.sample();
        if r.counter != k as u32 || r.temperature != want.temperature || r.pressure != want.pressure
        {
            return Err(format!("reading {k}: got {r:?}, want sample {want:?}"));
        }
    }
    if out.readings.len() != s.readings as usize {
        return Err(format!("{} readings", out.readings.len()));
    }

    // The commands took effect on the device...
    let stats = device.stats();
    let want = (50, true, 3, 1, 2, s.readings);
    let got = (
        device.period_ms(),
        device.output(),
        stats.commands_applied,
        stats.commands_rejected,
        stats.replies,
        stats.readings,
    );
    if got != want {
        return Err(format!(
            "device (period, output, applied, rejected, replies, readings) {got:?}, want {want:?}"
        ));
    }

    // ...the status reply told the truth, in its place in the stream...
    let [status] = out.statuses[..] else {
        return Err(format!("statuses {:?}", out.statuses));
    };
    let link_retransmissions = device.link().stats().retransmissions;
    if status.period_ms != 50
        || !status.output
        || status.readings as usize != status.at
        || status.retransmissions > link_retransmissions
    {
        return Err(format!(
            "status {status:?} (link retransmissions at the end {link_retransmissions})"
        ));
    }

    // ...and the bad command got its error reply.
    if out.errors != [("frobnicate 7".to_string(), "unknown command".to_string())] {
        return Err(format!("errors {:?}", out.errors));
    }

    // The output switched once, after the host sent `output on` (when it held 150
    // readings, so those were taken before) and before the status.
    let first_on = out.readings.iter().position(|r| r.output);
    match first_on {
        Some(k) if k >= 150 && k <= status.at => {}
        other => return Err(format!("output first on at reading {other:?}")),
    }
    if let Some(k) = out.readings.iter().rposition(|r| !r.output) {
        if Some(k + 1) != first_on {
            return Err(format!("output off again at reading {k}"));
        }
    }

    // The rate: readings at least a period apart, 10 ms at first, 50 ms once the status
    // said so; and mostly exactly the period (a reading waits only for a free slot).
    let gaps: Vec<(usize, u32)> = out
        .readings
        .windows(2)
        .map(|w| (w[1].counter as usize, w[1].millis.wrapping_sub(w[0].millis)))
        .collect();
    for &(k, gap) in &gaps {
        let min = if k >= status.at { 50 } else { FIRST_PERIOD_MS };
        if gap < min {
            return Err(format!(
                "reading {k} came {gap} ms after the one before (min {min})"
            ));
        }
    }
    let exact = |range: std::ops::Range<usize>, period: u32| {
        let in_range: Vec<_> = gaps.iter().filter(|(k, _)| range.contains(k)).collect();
        let hits = in_range.iter().filter(|(_, g)| *g == period).count();
        (hits, in_range.len())
    };
    for (range, period) in [
        (1..100, FIRST_PERIOD_MS),
        (status.at..out.readings.len(), 50),
    ] {
        let (hits, of) = exact(range.clone(), period);
        if hits * 2 < of {
            return Err(format!(
                "readings {range:?}: only {hits} of {of} gaps are {period} ms"
            ));
        }
    }
    Ok(())
}

fn hostile(seed: u64) -> FaultConfig {
    FaultConfig {
        corrupt_byte: 0.01,
        lose_byte: 0.001,
        lose_write: 0.01,
        duplicate_byte: 0.001,
        split: true,
        cut_after_bytes: Some(15_000 + (seed % 7) * 1_000),
        cut_per_write: 0.0005,
        ..FaultConfig::clean(seed)
    }
}

#[test]
fn every_reading_arrives_once_in_order_and_every_command_is_obeyed_over_a_hostile_link() {
    let seeds: u64 = std::env::var("TETHER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    for seed in 0..seeds {
        let s = Setup {
            seed,
            readings: 500,
            faults: hostile(seed),
        };
        let (out, device) = run(&s).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        check(&s, &out, &device).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let f = out.faults;
        println!(
            "seed {seed}: {} virtual ms, {} cuts ({} peer dead), faults: {} corrupted, {} lost bytes, {} lost writes, {} duplicated, {} splits; link: {} retransmissions, {} handshakes ({} resumed)",
            out.virtual_ms,
            out.transport_cuts,
            device.stats().peer_dead,
            f.corrupted_bytes,
            f.lost_bytes,
            f.lost_writes,
            f.duplicated_bytes,
            f.splits,
            device.link().stats().retransmissions,
            device.stats().connections,
            device.stats().resumes,
        );
        // The faults really happened.
        assert!(
            f.corrupted_bytes > 0 && f.lost_writes > 0 && f.splits > 0 && f.cuts >= 2,
            "seed {seed}: too few faults {f:?}"
        );
        assert!(
            device.stats().resumes >= 2,
            "seed {seed}: the session should have resumed after cuts: {:?}",
            device.stats()
        );
    }
}

#[test]
fn a_clean_link_needs_no_retransmission_and_stops_at_the_limit() {
    let s = Setup {
        seed: 99,
        readings: 500,
        faults: FaultConfig::clean(99),
    };
    let (out, device) = run(&s).unwrap_or_else(|e| panic!("seed 99: {e}"));
    check(&s, &out, &device).unwrap_or_else(|e| panic!("seed 99: {e}"));
    assert_eq!(device.link().stats().retransmissions, 0);
    assert_eq!(out.transport_cuts, 0);
    assert_eq!(device.stats().connections, 1);
    assert!(!device.streaming());
    assert_eq!(
        device.poll_timeout().map(|t| t.millis() > out.virtual_ms),
        Some(true)
    );
}
