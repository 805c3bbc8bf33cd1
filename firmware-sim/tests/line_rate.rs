//! Records per second, version 1 and version 2 side by side, on a virtual clock: the
//! figures of issue 16, measured deterministically (`PROTOCOL.md` 11.10).
//!
//! - **A 115,200-baud 8N1 line** (11,520 bytes a second each way, the fault pipe's byte
//!   rate): a client streams 16-byte records to a server that releases them at once; the
//!   client writes its next frame when fewer than 32 of its bytes are still on the line, as
//!   a UART driver with a small transmit buffer does. Records/s, bytes on the wire a record
//!   forward and back, measured after a one-second warm-up.
//! - **A lossy link**: the `tether sim` fault mix (1 % of bytes garbled each way, 1 % of
//!   frames lost, 5 cuts), a simulated device taking a reading every millisecond (1,000/s
//!   offered) over the pipe without a byte rate (a socket), against the same run without
//!   faults; readings/s and records sent again per reading delivered. Every reading is
//!   checked: each counter once, in order, its sensor values the sensor's.
//!
//! Run with `cargo test -p tether-firmware-sim --features v2 --test line_rate -- --nocapture`
//! to see the tables. Deterministic: the same figures on every run.
#![cfg(feature = "v2")]

use tether_core::link::{Config, Instant, Link, LinkStorage, Phase, Role, Storage};
use tether_core::record::{Field, Fields};
use tether_firmware_sim::device::{Device, DeviceConfig, Sensor};
use tether_firmware_sim::fault::{Cut, FaultConfig, FaultPipe, Side};

const PIPE: usize = 1 << 16;
/// The client writes a frame when fewer bytes than this are still on the line.
const LOW: usize = 32;
const BAUD: u32 = 115_200;

fn link<S: Storage>(role: Role, session: u32, version: u8, storage: S) -> Link<S> {
    let mut c = Config::new(role, session);
    c.max_version = version;
    Link::new(c, storage).expect("configuration")
}

/// What a stream over the line measured, after the warm-up.
#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    records: u64,
    seconds: f64,
    up: u64,
    down: u64,
    retransmissions: u32,
}

impl Stream {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
    fn up_per_record(&self) -> f64 {
        self.up as f64 / self.records as f64
    }
    fn down_share(&self) -> f64 {
        self.down as f64 / self.up as f64
    }
}

/// Streams 16-byte records from `client` to `server` over a line of `rate` bytes a second
/// (faults as `faults`) for `ms` virtual milliseconds; checks every record arrives once, in
/// order.
fn stream<S: Storage>(
    mut client: Link<S>,
    mut server: Link<S>,
    faults: FaultConfig,
    ms: u64,
) -> Stream {
    let mut pipe = FaultPipe::<PIPE>::new(faults);
    let mut buf = vec![0u8; client.transmit_len().max(server.transmit_len())];
    let mut rx = vec![0u8; 4096];
    let t0 = Instant::from_millis(0);
    client.connect(t0);
    server.connect(t0);
    let (mut queued, mut got) = (0u64, 0u64);
    let warm = 1_000;
    let mut at_warm = Stream::default();
    for now_ms in 0..ms {
        let now = Instant::from_millis(now_ms);
        pipe.advance_to(now_ms * 1_000);
        if now_ms == warm {
            at_warm = Stream {
                records: got,
                up: client.stats().bytes_out,
                down: server.stats().bytes_out,
                ..Stream::default()
            };
        }
        while let Ok(n @ 1..) = pipe.pull(Side::B, &mut rx) {
            server.handle_input(now, &rx[..n]);
        }
        while let Ok(n @ 1..) = pipe.pull(Side::A, &mut rx) {
            client.handle_input(now, &rx[..n]);
        }
        client.handle_timeout(now);
        server.handle_timeout(now);
        if client.phase() == Phase::Dead || server.phase() == Phase::Dead {
            // A side heard nothing for dead_after_ms: both connect again, as firmware and a
            // listener do; nothing queued is lost.
            pipe.reconnect();
            client.connect(now);
            server.connect(now);
        }
        while client.can_send() {
            let mut r = *b"reading 00000000";
            r[8..].copy_from_slice(format!("{:08}", queued % 100_000_000).as_bytes());
            client.send(&r).expect("a free slot");
            queued += 1;
        }
        for r in server.received() {
            let want = format!("reading {:08}", got % 100_000_000);
            assert_eq!(r.payload, want.as_bytes(), "record {got}");
            got += 1;
        }
        let n = server.received().count();
        server.release(n);
        for (link, side) in [(&mut client, Side::A), (&mut server, Side::B)] {
            while pipe.on_line(side) < LOW {
                let Some(n) = link.poll_transmit(now, &mut buf) else {
                    break;
                };
                let _ = pipe.push(side, &buf[..n]);
            }
        }
    }
    Stream {
        records: got - at_warm.records,
        seconds: (ms - warm) as f64 / 1_000.0,
        up: client.stats().bytes_out - at_warm.up,
        down: server.stats().bytes_out - at_warm.down,
        retransmissions: client.stats().retransmissions,
    }
}

fn uart(seed: u64) -> FaultConfig {
    FaultConfig {
        bytes_per_sec: FaultConfig::uart_8n1(BAUD),
        ..FaultConfig::clean(seed)
    }
}

#[test]
fn the_pipe_carries_exactly_its_byte_rate() {
    let mut pipe = FaultPipe::<PIPE>::new(uart(1));
    let mut got = vec![0u8; PIPE];
    let block = [0x42u8; 1000];
    for _ in 0..30 {
        pipe.push(Side::A, &block).unwrap();
    }
    let mut total = 0;
    for ms in 1..=1_000u64 {
        pipe.advance_to(ms * 1_000);
        total += pipe.pull(Side::B, &mut got).unwrap();
    }
    assert_eq!(total, 11_520, "one second at 115,200 baud 8N1");
    assert_eq!(pipe.on_line(Side::A), 30_000 - 11_520);
    // An idle line banks nothing: after a second of silence, a byte still takes its time.
    let mut idle = FaultPipe::<PIPE>::new(uart(2));
    idle.advance_to(1_000_000);
    idle.push(Side::B, &[1; 12]).unwrap();
    idle.advance_to(1_000_999);
    assert_eq!(
        idle.pull(Side::A, &mut got).unwrap(),
        11,
        "999 µs carry 11.5 bytes"
    );
    assert_eq!(idle.next_arrival_us(Side::A), Some(1_001_042));
    // A cut drops what is on the line.
    idle.cut();
    assert_eq!(idle.pull(Side::A, &mut got), Err(Cut));
    idle.reconnect();
    assert_eq!((idle.on_line(Side::B), idle.pending(Side::A)), (0, 0));
}

/// 16-byte records at 115,200 baud 8N1: version 2 carries at least 90 % payload (648 records
/// a second, 17.8 bytes a record) where version 1 carries 44 % (320), and its reverse
/// direction is at most 5 % of the forward bytes.
#[test]
fn sixteen_byte_records_on_a_115200_baud_line_v1_and_v2() {
    type Small = LinkStorage<16, 16, 128>;
    let ms = 21_000;
    let mut rows = Vec::new();
    for v in [1u8, 2] {
        let s = stream(
            link(Role::Client, 0xD1, v, Small::new()),
            link(Role::Server, 0x51, v, Small::new()),
            uart(v.into()),
            ms,
        );
        rows.push(("16 x 128-byte slots", v, s));
    }
    for v in [1u8, 2] {
        let mut a = Box::new(LinkStorage::<64, 64, 1024>::new());
        let mut b = Box::new(LinkStorage::<64, 64, 1024>::new());
        let s = stream(
            link(Role::Client, 0xD1, v, &mut *a),
            link(Role::Server, 0x51, v, &mut *b),
            uart(v.into()),
            ms,
        );
        rows.push(("64 x 1 KiB slots", v, s));
    }
    println!("\n16-byte records, 115,200 baud 8N1 (11,520 B/s), 20 s after a 1 s warm-up:");
    println!(
        "{:<22} {:>3} {:>10} {:>10} {:>9} {:>10} {:>8}",
        "storage", "v", "records/s", "B/record", "payload", "back/fwd", "resent"
    );
    for (name, v, s) in &rows {
        println!(
            "{name:<22} {v:>3} {:>10.1} {:>10.2} {:>8.1}% {:>9.2}% {:>8}",
            s.rate(),
            s.up_per_record(),
            100.0 * 16.0 / s.up_per_record(),
            100.0 * s.down_share(),
            s.retransmissions
        );
    }
    let (v1, v2) = (rows[0].2, rows[1].2);
    println!(
        "v2 / v1 records/s, 128-byte slots: {:.2}",
        v2.rate() / v1.rate()
    );
    assert!(
        v1.rate() > 300.0 && v1.rate() <= 320.1,
        "v1: {:.1} records/s",
        v1.rate()
    );
    for (name, v, s) in &rows {
        if *v == 2 {
            assert!(s.rate() >= 648.0, "{name}: {:.1} records/s", s.rate());
            assert!(
                s.up_per_record() <= 17.8,
                "{name}: {:.2} B/record",
                s.up_per_record()
            );
            assert!(s.down_share() <= 0.05, "{name}: back {:.3}", s.down_share());
        }
        assert_eq!(s.retransmissions, 0, "{name} v{v}: a clean line");
    }
}

// ---- the lossy link ----------------------------------------------------------------------

/// What a device's run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Lossy {
    readings: u32,
    seconds: f64,
    retransmissions: u32,
    cuts: u32,
    finished: bool,
    /// Virtual ms the device's link was not Established (cuts, handshakes).
    down_ms: u64,
    /// Virtual ms a reading was due and the device had no free slot.
    blocked_ms: u64,
}

impl Lossy {
    fn rate(&self) -> f64 {
        f64::from(self.readings) / self.seconds
    }
    fn resent_per_reading(&self) -> f64 {
        f64::from(self.retransmissions) / f64::from(self.readings)
    }
}

/// A device taking a reading every millisecond, up to `readings`, to a host over `faults`
/// (no byte rate: a socket), with `cuts` cuts spread over the run; at most `cap_ms` virtual
/// ms. Checks every reading the host got: counters 0, 1, … once each, values the sensor's.
fn device_run(version: u8, faults: FaultConfig, cuts: u32, readings: u32, cap_ms: u64) -> Lossy {
    let seed = 7;
    let mut cfg = DeviceConfig::new(0xD1, seed);
    cfg.link.max_version = version;
    cfg.period_ms = 1;
    cfg.record_limit = Some(readings);
    let mut device = Device::new(cfg, LinkStorage::<16, 16, 128>::new()).expect("device");
    let mut host = link(
        Role::Server,
        0x51,
        version,
        LinkStorage::<64, 64, 128>::new(),
    );
    let mut pipe = FaultPipe::<PIPE>::new(faults);
    let mut sensor = Sensor::new(seed);
    let mut buf = vec![0u8; 256];
    let mut rx = vec![0u8; PIPE];
    let t0 = Instant::from_millis(0);
    device.transport_up(t0).unwrap();
    host.connect(t0);
    let mut next = 0u32;
    let mut reconnect_at: Option<u64> = None;
    let mut out = Lossy::default();
    // Cuts at even shares of the fault-free duration (a reading a millisecond).
    let cut_at: Vec<u64> = (1..=u64::from(cuts))
        .map(|k| k * u64::from(readings) / (u64::from(cuts) + 1))
        .collect();
    for now_ms in 0..cap_ms {
        let now = Instant::from_millis(now_ms);
        let mut broken =
            cut_at.contains(&now_ms) || (device.needs_transport() && reconnect_at.is_none());
        for (side, to_host) in [(Side::B, true), (Side::A, false)] {
            loop {
                match pipe.pull(side, &mut rx) {
                    Ok(0) => break,
                    Ok(n) if to_host => host.handle_input(now, &rx[..n]),
                    Ok(n) => device.handle_input(now, &rx[..n]),
                    Err(Cut) => {
                        broken = true;
                        break;
                    }
                }
            }
        }
        if broken && reconnect_at.is_none() {
            pipe.cut();
            device.transport_down();
            out.cuts += 1;
            reconnect_at = Some(now_ms + 5);
        }
        if reconnect_at.is_some_and(|t| t <= now_ms) {
            reconnect_at = None;
            pipe.reconnect();
            device.transport_up(now).unwrap();
            host.connect(now);
        }
        device.poll(now);
        host.handle_timeout(now);
        if device.link().phase() != Phase::Established {
            out.down_ms += 1;
        } else if !device.link().can_send() {
            out.blocked_ms += 1;
        }
        for r in host.received() {
            let mut f = Fields::new(r.payload).expect("a typed reading");
            assert_eq!(
                f.next(),
                Some(Ok(Field::U32(next))),
                "reading {next}: each once, in order"
            );
            let _time = f.next();
            let s = sensor.sample();
            assert_eq!(
                f.next(),
                Some(Ok(Field::F32(s.temperature))),
                "reading {next}"
            );
            assert_eq!(f.next(), Some(Ok(Field::U16(s.pressure))), "reading {next}");
            next += 1;
        }
        let n = host.received().count();
        host.release(n);
        if next == readings {
            out.finished = true;
            out.seconds = now_ms as f64 / 1_000.0;
            break;
        }
        if reconnect_at.is_none() {
            while let Some(n) = device.poll_transmit(now, &mut buf) {
                if pipe.push(Side::A, &buf[..n]).is_err() {
                    break;
                }
            }
            while let Some(n) = host.poll_transmit(now, &mut buf) {
                if pipe.push(Side::B, &buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    if !out.finished {
        out.seconds = cap_ms as f64 / 1_000.0;
    }
    out.readings = next;
    out.retransmissions = device.link().stats().retransmissions;
    out
}

/// The `tether sim --faults corrupt=0.01,loss=0.01,cuts=5` mix: 1 % of bytes garbled each
/// way, 1 % of writes (frames) lost.
fn sim_faults(seed: u64) -> FaultConfig {
    FaultConfig {
        corrupt_byte: 0.01,
        lose_write: 0.01,
        ..FaultConfig::clean(seed)
    }
}

/// A device offering 1,000 readings a second: version 2 keeps at least 80 % of its
/// fault-free rate under the fault mix, and sends again far fewer records a reading than
/// version 1 (issue 16's target is 0.3; see the printed figure).
#[test]
fn a_device_over_a_lossy_link_v1_and_v2() {
    // As `tether sim --records 50000`: 50 s of readings without faults.
    let readings = 50_000;
    let cap = 300_000;
    let mut rows = Vec::new();
    for v in [1u8, 2] {
        let clean = device_run(v, FaultConfig::clean(3), 0, readings, cap);
        let lossy = device_run(v, sim_faults(3), 5, readings, cap);
        rows.push((v, clean, lossy));
    }
    println!("\nA device reading every 1 ms, {readings} readings, 1 % garbled bytes, 1 % lost frames, 5 cuts:");
    println!(
        "{:>3} {:>16} {:>16} {:>9} {:>20} {:>6} {:>8} {:>9}",
        "v",
        "clean readings/s",
        "lossy readings/s",
        "ratio",
        "resent per reading",
        "cuts",
        "down ms",
        "full ms"
    );
    for (v, clean, lossy) in &rows {
        println!(
            "{v:>3} {:>16.1} {:>16.1} {:>8.1}% {:>20.3} {:>6} {:>8} {:>9}{}",
            clean.rate(),
            lossy.rate(),
            100.0 * lossy.rate() / clean.rate(),
            lossy.resent_per_reading(),
            lossy.cuts,
            lossy.down_ms,
            lossy.blocked_ms,
            if lossy.finished {
                ""
            } else {
                "  (not finished: rate over the cap)"
            }
        );
    }
    let (_, c2, l2) = rows[1];
    let (_, _, l1) = rows[0];
    assert!(
        c2.finished && l2.finished,
        "version 2 delivers every reading"
    );
    assert!(
        l2.rate() >= 0.8 * c2.rate(),
        "v2 keeps 80 %: {:.1} of {:.1}",
        l2.rate(),
        c2.rate()
    );
    assert!(
        l2.resent_per_reading() < l1.resent_per_reading() / 4.0,
        "v2 {:.3} against v1 {:.3}",
        l2.resent_per_reading(),
        l1.resent_per_reading()
    );
    assert_eq!(l2.cuts, 5);
}

/// The same stream of 16-byte records over the 115,200-baud line with 1 % garbled bytes and 1
/// % lost frames each way: what each version delivers of the clean line's rate.
#[test]
fn sixteen_byte_records_on_a_lossy_115200_baud_line_v1_and_v2() {
    type Small = LinkStorage<16, 16, 128>;
    let ms = 31_000;
    println!(
        "\n16-byte records, 115,200 baud 8N1, 1 % garbled bytes and 1 % lost frames each way:"
    );
    println!(
        "{:>3} {:>10} {:>12} {:>10}",
        "v", "records/s", "of clean", "resent/rec"
    );
    let mut rates = Vec::new();
    for v in [1u8, 2] {
        let clean = stream(
            link(Role::Client, 0xD1, v, Small::new()),
            link(Role::Server, 0x51, v, Small::new()),
            uart(9),
            ms,
        );
        let faults = FaultConfig {
            corrupt_byte: 0.01,
            lose_write: 0.01,
            ..uart(9)
        };
        let lossy = stream(
            link(Role::Client, 0xD1, v, Small::new()),
            link(Role::Server, 0x51, v, Small::new()),
            faults,
            ms,
        );
        println!(
            "{v:>3} {:>10.1} {:>11.1}% {:>10.3}",
            lossy.rate(),
            100.0 * lossy.rate() / clean.rate(),
            f64::from(lossy.retransmissions) / lossy.records as f64
        );
        rates.push(lossy.rate());
    }
    assert!(
        rates[1] > 2.0 * rates[0],
        "v2 {:.1} against v1 {:.1} records/s",
        rates[1],
        rates[0]
    );
}
