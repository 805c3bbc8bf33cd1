//! A device and a host, each offering protocol version 2 or 1 (`PROTOCOL.md` section 11), over
//! a channel the input script makes lossy: it drops, duplicates, garbles and splits the frames
//! the two send each other, injects junk, delays, and cuts the connection.
//!
//! Invariants, beyond "no panic, no hang": every record the host receives is the one the
//! device queued under that sequence number, and every command the device receives the one
//! the host queued; records arrive in order, each once, in both directions (neither side
//! restarts, so numbering never starts over); queues and held records stay within their
//! slots; `poll_transmit` runs dry; every frame either side emits decodes, in the format of
//! the session's version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::frame::Decoder;
use tether_core::link::{Config, Instant, Link, LinkStorage, Role};

type Store = LinkStorage<8, 8, 128>;
const SLOTS: u32 = 8;

/// Record `seq` of the device: 1 to 60 bytes, so frames pack uniform and listed runs.
fn record(seq: u32) -> Vec<u8> {
    let len = 1 + (seq as usize * 7) % 60;
    (0..len).map(|k| (seq as usize + k * 31) as u8).collect()
}

fn command(seq: u32) -> Vec<u8> {
    format!("c{seq}").into_bytes()
}

/// Takes up to `max` of what `l` received, checks it is what its peer queued, in order,
/// and releases it.
fn drain(l: &mut Link<Store>, genuine: fn(u32) -> Vec<u8>, next: &mut u32, max: usize) {
    let got: Vec<(u32, Vec<u8>)> = l
        .received()
        .take(max)
        .map(|r| (r.seq, r.payload.to_vec()))
        .collect();
    for (seq, payload) in &got {
        assert_eq!(*seq, *next, "in order, each once");
        assert_eq!(*payload, genuine(*seq), "only what the peer queued");
        *next = next.wrapping_add(1);
    }
    assert_eq!(l.release(got.len()), got.len());
}

fn config(role: Role, session: u32, version: u8, pack_delay: u16, window: u16) -> Config {
    let mut c = Config::new(role, session);
    c.max_version = version;
    c.pack_delay_ms = pack_delay;
    c.window = window;
    c
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut script)) = data.split_first() else {
        return;
    };
    let (dv, hv) = (1 + (setup & 1), 1 + (setup >> 1 & 1));
    let pack = u16::from(setup >> 2 & 3);
    let window = u16::from(setup >> 4) % 9;
    let Ok(mut dev) = Link::new(config(Role::Client, 0xd1, dv, pack, window), Store::new()) else {
        return;
    };
    let Ok(mut host) = Link::new(config(Role::Server, 0x51, hv, pack, 0), Store::new()) else {
        return;
    };
    let mut now = 0u64;
    dev.connect(Instant::from_millis(now));
    host.connect(Instant::from_millis(now));
    let mut out = vec![0u8; dev.transmit_len().max(host.transmit_len())];
    let (mut host_next, mut dev_next) = (0u32, 0u32);
    let mut steps = 0;
    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        steps += 1;
        if steps > 3_000 {
            break;
        }
        let t = Instant::from_millis(now);
        let arg = script.first().copied().unwrap_or(0);
        script = script.get(1..).unwrap_or(&[]);
        match op % 8 {
            0 => {
                for _ in 0..arg % 8 {
                    if dev.can_send() {
                        let seq = dev.next_seq();
                        dev.send(&record(seq)).unwrap();
                    }
                }
            }
            1 => {
                for _ in 0..arg % 4 {
                    if host.can_send() {
                        let seq = host.next_seq();
                        host.send(&command(seq)).unwrap();
                    }
                }
            }
            2 | 3 => {
                // One side's frames to the other. Per frame, two bits of the next script
                // byte: 00 delivered, 01 lost, 10 delivered twice, 11 garbled (one byte
                // flipped, at a place and by a value from `arg`) and split in two.
                let (from, to) = if op % 8 == 2 {
                    (&mut dev, &mut host)
                } else {
                    (&mut host, &mut dev)
                };
                let fate = script.first().copied().unwrap_or(0);
                script = script.get(1..).unwrap_or(&[]);
                let mut k = 0;
                while let Some(n) = from.poll_transmit(t, &mut out) {
                    assert!(k < 64, "poll_transmit runs dry");
                    let mut check = Decoder::new(vec![0u8; 256]);
                    let mut input = &out[..n];
                    assert!(
                        matches!(check.decode_any(&mut input), Some(Ok(_))) && input.is_empty(),
                        "emitted an invalid frame"
                    );
                    match fate >> (2 * (k % 4)) & 3 {
                        0 => to.handle_input(t, &out[..n]),
                        1 => {}
                        2 => {
                            to.handle_input(t, &out[..n]);
                            to.handle_input(t, &out[..n]);
                        }
                        _ => {
                            let mut w = out[..n].to_vec();
                            let i = usize::from(arg) % w.len();
                            w[i] ^= arg | 1;
                            let cut = i.min(w.len());
                            to.handle_input(t, &w[..cut]);
                            to.handle_input(t, &w[cut..]);
                        }
                    }
                    k += 1;
                }
            }
            4 => {
                // Junk into one side, then a delimiter.
                let n = usize::from(arg % 32);
                let bytes = script.get(..n).unwrap_or(&[]);
                let to = if arg & 0x40 == 0 { &mut host } else { &mut dev };
                to.handle_input(t, bytes);
                to.handle_input(t, &[0]);
                script = script.get(n..).unwrap_or(&[]);
            }
            5 => drain(&mut host, record, &mut host_next, usize::from(arg % 9)),
            6 => drain(&mut dev, command, &mut dev_next, usize::MAX),
            _ => {
                now += u64::from(arg % 64) * 7;
                let t = Instant::from_millis(now);
                dev.handle_timeout(t);
                host.handle_timeout(t);
                if let Some(d) = dev.poll_timeout() {
                    assert!(
                        d > t,
                        "a device deadline not after the timeout just handled"
                    );
                }
                if arg & 0x80 != 0 || dev.phase() == tether_core::link::Phase::Dead {
                    // A cut, or a side that gave up: both connect again; the session resumes.
                    dev.connect(t);
                    host.connect(t);
                }
            }
        }
        for l in [&mut dev, &mut host] {
            assert!(l.unacked() <= SLOTS);
            assert!(l.received().count() <= SLOTS as usize);
            let s = l.stats();
            assert!(u32::from(s.tx_high_water) <= SLOTS && u32::from(s.rx_high_water) <= SLOTS);
        }
        if dev.protocol_version() == 2 {
            assert_eq!((dv, hv), (2, 2), "version 2 only if both offered it");
        }
    }
    drain(&mut host, record, &mut host_next, usize::MAX);
    drain(&mut dev, command, &mut dev_next, usize::MAX);
});
