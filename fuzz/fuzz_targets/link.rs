//! Drives a `Link` with arbitrary bytes, well-formed frames with arbitrary fields, and timer
//! events, as a hostile or broken peer would, in either role.
//!
//! The input is a script: each step is an opcode byte followed by its arguments. Opcode 5
//! builds a frame with a valid CRC from fuzzer-chosen header fields and payload, so the
//! fuzzer reaches the link's logic without having to forge CRCs. Invariants checked after
//! every step, beyond "no panic, no hang":
//! - bounded buffers: unacknowledged and held records stay within their slots, the high
//!   water marks too, and `poll_transmit` runs dry in a bounded number of calls;
//! - every frame the link emits is a valid frame;
//! - nothing is delivered that the peer did not send: every record the link holds or
//!   releases is, seq and payload, a CRC-valid DATA frame the peer sent on the current
//!   connection or an earlier one (a harness decoder sees the same bytes, reset on connect as
//!   the link's is);
//! - in-order delivery: the records released to the application, over the whole run, have
//!   consecutive sequence numbers, except where a handshake took the peer's numbering
//!   afresh (`Connected { resumed: false }` or `PeerRestarted`) with those records held;
//! - a deadline, when there is one, is never in the past after `handle_timeout`.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use tether_core::frame::{self, Decoder, Flags, Header, Kind};
use tether_core::link::{Config, Event, Instant, Link, LinkStorage, Role};

const SLOTS: u32 = 4;
const FRAME: usize = 128;

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
    let Ok(mut link) = Link::new(cfg, LinkStorage::<4, 4, FRAME>::new()) else {
        return;
    };
    let mut now = 0u64;
    let mut out = vec![0u8; link.transmit_len()];
    let mut check = Decoder::new(vec![0u8; FRAME]);
    // The peer's side as the link's decoder sees it: same buffer size, reset on connect.
    let mut peer = Decoder::new(vec![0u8; FRAME]);
    let mut sent_by_peer: HashSet<(u32, Vec<u8>)> = HashSet::new();
    // Records released so far, the last one's number, and where a renumbering may show.
    let mut delivered = 0usize;
    let mut last: Option<u32> = None;
    let mut breaks_allowed: Vec<(usize, usize)> = Vec::new();
    link.connect(Instant::from_millis(0));
    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        let t = Instant::from_millis(now);
        match op % 7 {
            0 => {
                // Peer bytes: a length byte, then that many bytes.
                let Some((&len, rest)) = script.split_first() else {
                    break;
                };
                let n = usize::from(len).min(rest.len());
                feed(&mut link, &mut peer, &mut sent_by_peer, t, &rest[..n]);
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
                let want = usize::from(n % 8);
                let held: Vec<(u32, Vec<u8>)> = link
                    .received()
                    .take(want)
                    .map(|r| (r.seq, r.payload.to_vec()))
                    .collect();
                let released = link.release(want);
                assert_eq!(released, held.len(), "release count");
                for (seq, _) in &held {
                    if let Some(prev) = last {
                        if *seq != prev.wrapping_add(1) {
                            assert!(
                                breaks_allowed
                                    .iter()
                                    .any(|&(a, b)| (a..=b).contains(&delivered)),
                                "record {seq} released after {prev} with no renumbering \
                                 (released so far: {delivered}, allowed: {breaks_allowed:?})"
                            );
                        }
                    }
                    last = Some(*seq);
                    delivered += 1;
                }
            }
            4 => {
                link.connect(t);
                peer.reset();
            }
            5 => {
                // A well-formed frame: kind, flags, seq offset, ack offset, credit, payload.
                let [kind, fl, ds, da, credit, len, rest @ ..] = script else {
                    break;
                };
                let kind = Kind::ALL[usize::from(*kind) % Kind::ALL.len()];
                let base = last.map_or(cfg.first_seq, |l| l.wrapping_add(1));
                let header = Header {
                    kind,
                    flags: Flags::from_bits(*fl & 3).unwrap_or(Flags::NONE),
                    seq: base.wrapping_add(u32::from(*ds)).wrapping_sub(8),
                    ack: link
                        .next_seq()
                        .wrapping_add(u32::from(*da))
                        .wrapping_sub(128),
                    credit: u16::from(*credit % 16),
                };
                let n = usize::from(*len)
                    .min(rest.len())
                    .min(FRAME - frame::OVERHEAD);
                let mut wire = [0u8; frame::max_encoded_len(FRAME)];
                if let Ok(k) = frame::encode(&header, &rest[..n], &mut wire) {
                    feed(&mut link, &mut peer, &mut sent_by_peer, t, &wire[..k]);
                }
                script = &rest[n..];
            }
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
        let held = link.received().count();
        while let Some(e) = link.poll_event() {
            if matches!(
                e,
                Event::Connected { resumed: false } | Event::PeerRestarted { .. }
            ) {
                breaks_allowed.push((delivered, delivered + held));
            }
        }
        assert!(link.unacked() <= SLOTS);
        let stats = link.stats();
        assert!(u32::from(stats.tx_high_water) <= SLOTS);
        assert!(u32::from(stats.rx_high_water) <= SLOTS);
        let records: Vec<(u32, Vec<u8>)> = link
            .received()
            .map(|r| (r.seq, r.payload.to_vec()))
            .collect();
        assert!(records.len() <= SLOTS as usize);
        for r in &records {
            assert!(
                sent_by_peer.contains(r),
                "holds record {} ({} bytes) that the peer never sent in a valid DATA frame",
                r.0,
                r.1.len()
            );
        }
    }
});

type FuzzLink = Link<LinkStorage<4, 4, FRAME>>;

/// Gives the link peer bytes, noting every valid DATA frame among them as the link's
/// decoder would see it.
fn feed(
    link: &mut FuzzLink,
    peer: &mut Decoder<Vec<u8>>,
    sent: &mut HashSet<(u32, Vec<u8>)>,
    t: Instant,
    bytes: &[u8],
) {
    let mut input = bytes;
    while let Some(r) = peer.decode(&mut input) {
        if let Ok(f) = r {
            if f.header.kind == Kind::Data {
                sent.insert((f.header.seq, f.payload.to_vec()));
            }
        }
    }
    link.handle_input(t, bytes);
}
