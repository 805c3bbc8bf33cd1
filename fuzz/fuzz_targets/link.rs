//! Drives a `Link` with arbitrary bytes and timer events, as a hostile or broken peer
//! would, in either role.
//!
//! The input is a script: each step is an opcode byte followed by its argument. Invariants
//! checked after every step, beyond "no panic, no hang":
//! - buffers stay within their slots (unacked, held records);
//! - `poll_transmit` runs dry in a bounded number of calls, and every frame it emits is a
//!   valid frame;
//! - received records come out in sequence order with no gaps or repeats (one break is
//!   allowed where a restarted peer's numbering begins);
//! - a deadline, when there is one, is never in the past after `handle_timeout`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::frame::{self, Decoder};
use tether_core::link::{Config, Instant, Link, LinkStorage, Role};

const SLOTS: u32 = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut script)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let mut cfg = Config::new(role, 0x5EED);
    cfg.window = u16::from(flags >> 1) % 5;
    cfg.first_seq = u32::from(flags).wrapping_mul(0x0101_0101);
    let Ok(mut link) = Link::new(cfg, LinkStorage::<4, 4, 128>::new()) else {
        return;
    };
    let mut now = 0u64;
    let mut out = vec![0u8; link.transmit_len()];
    let mut check = Decoder::new(vec![0u8; 128]);
    link.connect(Instant::from_millis(0));
    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        let t = Instant::from_millis(now);
        match op % 6 {
            0 => {
                // Peer bytes: a length byte, then that many bytes.
                let Some((&len, rest)) = script.split_first() else {
                    break;
                };
                let n = usize::from(len).min(rest.len());
                link.handle_input(t, &rest[..n]);
                script = &rest[n..];
            }
            1 => {
                let Some((&ms, rest)) = script.split_first() else {
                    break;
                };
                script = rest;
                now += u64::from(ms) * 37;
                let t = Instant::from_millis(now);
                link.handle_timeout(t);
                if let Some(d) = link.poll_timeout() {
                    assert!(
                        d > t,
                        "a deadline {d:?} not after the timeout just handled {t:?}"
                    );
                }
            }
            2 => {
                let Some((&len, rest)) = script.split_first() else {
                    break;
                };
                let n = usize::from(len).min(rest.len());
                let _ = link.send(&rest[..n]);
                script = &rest[n..];
            }
            3 => {
                let Some((&n, rest)) = script.split_first() else {
                    break;
                };
                script = rest;
                link.release(usize::from(n % 8));
            }
            4 => link.connect(t),
            _ => {}
        }
        // Drain the link's output; every frame must decode.
        let t = Instant::from_millis(now);
        let mut frames = 0;
        while let Some(n) = link.poll_transmit(t, &mut out) {
            frames += 1;
            assert!(frames < 64, "poll_transmit does not run dry");
            let mut input = &out[..n];
            let decoded = check.decode(&mut input);
            assert!(matches!(decoded, Some(Ok(_))), "emitted an invalid frame");
            assert!(input.is_empty());
        }
        while link.poll_event().is_some() {}
        assert!(link.unacked() <= SLOTS);
        let seqs: Vec<u32> = link.received().map(|r| r.seq).collect();
        assert!(seqs.len() <= SLOTS as usize);
        let breaks = seqs
            .windows(2)
            .filter(|w| w[1] != w[0].wrapping_add(1))
            .count();
        assert!(breaks <= 1, "received records out of sequence: {seqs:?}");
    }
});
