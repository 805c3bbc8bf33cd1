//! An authenticated device and host (`PROTOCOL.md` 9.14) with a man in the middle who injects
//! arbitrary bytes, replays, drops and alters (with the CRC fixed up) the frames the two send
//! each other, and cuts the connection, as the input script says.
//!
//! Invariants, beyond "no panic, no hang": every record the host receives is one the device
//! queued under that sequence number, and every command the device receives one the host
//! queued (nothing injected, altered or replayed is ever delivered); records arrive in order,
//! each once, in both directions (neither side restarts, so numbering never starts over).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::frame::{self, Decoder, Flags};
use tether_core::link::{Config, Instant, Key, Link, LinkStorage, Role};

type Store = LinkStorage<4, 4, 128>;

fn record(seq: u32) -> Vec<u8> {
    format!("r{seq}").into_bytes()
}

fn command(seq: u32) -> Vec<u8> {
    format!("c{seq}").into_bytes()
}

/// Takes everything `l` received, checks it is what its peer queued, in order, and releases.
fn drain(l: &mut Link<Store>, genuine: fn(u32) -> Vec<u8>, next: &mut u32) {
    let got: Vec<(u32, Vec<u8>)> = l.received().map(|r| (r.seq, r.payload.to_vec())).collect();
    for (seq, payload) in &got {
        assert_eq!(*seq, *next, "in order, each once");
        assert_eq!(*payload, genuine(*seq), "only what the peer queued");
        *next = next.wrapping_add(1);
    }
    l.release(got.len());
}

fuzz_target!(|data: &[u8]| {
    let key = Key::new(0xabcd, [0x42; 32]);
    let Ok(mut dev) = Link::new(Config::new(Role::Client, 0xd1), Store::new()) else {
        return;
    };
    let Ok(mut host) = Link::new(Config::new(Role::Server, 0x51), Store::new()) else {
        return;
    };
    if dev.set_auth(Some(key.clone()), [1; 16]).is_err()
        || host.set_auth(Some(key), [2; 16]).is_err()
    {
        return;
    }
    let mut now = 0u64;
    dev.connect(Instant::from_millis(now));
    host.connect(Instant::from_millis(now));
    let mut out = vec![0u8; dev.transmit_len()];
    // Frames each side sent, for the attacker to replay or alter (bounded).
    let mut captured: Vec<Vec<u8>> = Vec::new();
    let (mut host_next, mut dev_next) = (0u32, 0u32);
    let mut script = data;
    let mut steps = 0;
    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        steps += 1;
        if steps > 2_000 {
            break;
        }
        let t = Instant::from_millis(now);
        let arg = script.first().copied().unwrap_or(0);
        match op % 8 {
            0 => {
                if dev.can_send() {
                    let seq = dev.next_seq();
                    dev.send(&record(seq)).unwrap();
                }
            }
            1 => {
                if host.can_send() {
                    let seq = host.next_seq();
                    host.send(&command(seq)).unwrap();
                }
            }
            2 | 3 => {
                // The genuine frames of one side to the other; `arg`'s bits drop some.
                let (from, to) = if op % 8 == 2 {
                    (&mut dev, &mut host)
                } else {
                    (&mut host, &mut dev)
                };
                let mut k = 0;
                while let Some(n) = from.poll_transmit(t, &mut out) {
                    assert!(k < 64, "poll_transmit runs dry");
                    if captured.len() < 64 {
                        captured.push(out[..n].to_vec());
                    }
                    if arg >> (k % 8) & 1 == 0 {
                        to.handle_input(t, &out[..n]);
                    }
                    k += 1;
                }
                script = script.get(1..).unwrap_or(&[]);
            }
            4 => {
                // Arbitrary bytes into one side.
                let n = usize::from(arg % 64);
                let bytes = script.get(1..1 + n).unwrap_or(&[]);
                let to = if arg & 0x40 == 0 { &mut host } else { &mut dev };
                to.handle_input(t, bytes);
                script = script.get(1 + n..).unwrap_or(&[]);
            }
            5 | 6 => {
                // Replay a captured frame, or alter it first (a valid frame again, CRC and
                // all: only the MAC can tell).
                let bit = script.get(1).copied().unwrap_or(0);
                script = script.get(2..).unwrap_or(&[]);
                if captured.is_empty() {
                    continue;
                }
                let wire = captured[usize::from(arg) % captured.len()].clone();
                let to = if bit & 0x80 == 0 { &mut host } else { &mut dev };
                if op % 8 == 5 {
                    to.handle_input(t, &wire);
                    continue;
                }
                let mut dec = Decoder::new(vec![0u8; 256]);
                let mut input = &wire[..];
                let Some(Ok(f)) = dec.decode(&mut input) else {
                    continue;
                };
                let (mut h, mut payload) = (f.header, f.payload.to_vec());
                match bit % 5 {
                    0 if !payload.is_empty() => {
                        let i = usize::from(bit) % payload.len();
                        payload[i] ^= 1 << (bit % 8);
                    }
                    1 => h.seq ^= 1 << (bit % 32),
                    2 => h.ack ^= 1 << (bit % 32),
                    3 => h.credit ^= 1 << (bit % 16),
                    _ => h.flags = Flags::from_bits(h.flags.bits() ^ 1).unwrap_or(h.flags),
                }
                let mut w = vec![0u8; frame::max_encoded_len(payload.len())];
                if let Ok(n) = frame::encode(&h, &payload, &mut w) {
                    to.handle_input(t, &w[..n]);
                }
            }
            _ => {
                now += u64::from(arg) * 20;
                let t = Instant::from_millis(now);
                dev.handle_timeout(t);
                host.handle_timeout(t);
                script = script.get(1..).unwrap_or(&[]);
                if arg & 0x80 != 0 {
                    // A cut: both connect again; the session resumes under a new key.
                    dev.connect(t);
                    host.connect(t);
                }
            }
        }
        drain(&mut host, record, &mut host_next);
        drain(&mut dev, command, &mut dev_next);
    }
});
