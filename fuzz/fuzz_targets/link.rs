//! Drives a `Link` with arbitrary bytes, well-formed frames with arbitrary fields, and timer
//! events, as a hostile or broken peer would, in either role.
//!
//! The input is a script: each step is an opcode byte followed by its arguments. Opcode 5
//! builds a frame with a valid CRC from fuzzer-chosen header fields and payload, so the
//! fuzzer reaches the link's logic without having to forge CRCs; opcode 7 builds a version 2
//! session frame (`PROTOCOL.md` section 11) the same way. The first byte's top bit makes the
//! link offer version 2, which opcode 5's HELLO or WELCOME accepts with a header `credit` of
//! 2. Invariants checked after
//! every step, beyond "no panic, no hang":
//! - bounded buffers: unacknowledged and held records stay within their slots, the high
//!   water marks too, and `poll_transmit` runs dry in a bounded number of calls;
//! - every frame the link emits is a valid frame (of either version);
//! - nothing is delivered that the peer did not send: every record the link holds or
//!   releases is, seq and payload, a CRC-valid DATA frame the peer sent on the current
//!   connection or an earlier one (a harness decoder sees the same bytes, reset on connect as
//!   the link's is), or a record of a valid version 2 DATA frame it sent (payload only: the
//!   number depends on the link's state);
//! - in-order delivery: the records released to the application, over the whole run, have
//!   consecutive sequence numbers, except where a handshake took the peer's numbering
//!   afresh (`Connected { resumed: false }` or `PeerRestarted`) with those records held;
//! - a deadline, when there is one, is never in the past after `handle_timeout`.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use tether_core::frame::{self, v2, AnyFrame, Decoder, Flags, Header, Kind};
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
    cfg.max_version = 1 + (flags >> 7);
    let Ok(mut link) = Link::new(cfg, LinkStorage::<4, 4, FRAME>::new()) else {
        return;
    };
    let mut now = 0u64;
    let mut out = vec![0u8; link.transmit_len()];
    let mut check = Decoder::new(vec![0u8; FRAME]);
    // The peer's side as the link's decoder sees it: same buffer size, reset on connect.
    let mut peer = Decoder::new(vec![0u8; FRAME]);
    let mut sent_by_peer: HashSet<(u32, Vec<u8>)> = HashSet::new();
    let mut sent_v2: HashSet<Vec<u8>> = HashSet::new();
    // Records released so far, the last one's number, and where a renumbering may show.
    let mut delivered = 0usize;
    let mut last: Option<u32> = None;
    let mut breaks_allowed: Vec<(usize, usize)> = Vec::new();
    link.connect(Instant::from_millis(0));
    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        let t = Instant::from_millis(now);
        match op % 8 {
            0 => {
                // Peer bytes: a length byte, then that many bytes.
                let Some((&len, rest)) = script.split_first() else {
                    break;
                };
                let n = usize::from(len).min(rest.len());
                feed(
                    &mut link,
                    &mut peer,
                    &mut sent_by_peer,
                    &mut sent_v2,
                    t,
                    &rest[..n],
                );
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
                    feed(
                        &mut link,
                        &mut peer,
                        &mut sent_by_peer,
                        &mut sent_v2,
                        t,
                        &wire[..k],
                    );
                }
                script = &rest[n..];
            }
            7 => {
                // A well-formed version 2 session frame: kind, ack flags, released offset,
                // received, credit, seq offset, shape, records.
                let [k, af, rel, rcv, cr, ds, sh, len, rest @ ..] = script else {
                    break;
                };
                let n = usize::from(*len).min(rest.len()).min(FRAME - 40);
                let bytes = &rest[..n];
                let sack = [*af | 1];
                let ack = v2::Ack {
                    released: v2::Short::of(
                        link.next_seq()
                            .wrapping_add(u32::from(*rel))
                            .wrapping_sub(8),
                        af & 1 != 0,
                    ),
                    received: u16::from(*rcv % 8),
                    credit: (af & 4 != 0).then_some(u16::from(*cr % 16)),
                    sack: if af & 8 != 0 { &sack } else { &[] },
                };
                let base = last.map_or(cfg.first_seq, |l| l.wrapping_add(1));
                let seq = v2::Short::of(
                    base.wrapping_add(u32::from(*ds)).wrapping_sub(8),
                    af & 0x10 != 0,
                );
                let (shape, section) = v2_section(*sh, bytes);
                let data = v2::Data {
                    seq,
                    immediate: sh & 0x80 != 0,
                    shape,
                    section: &section,
                };
                let f = match k % 4 {
                    0 => v2::Frame::Data {
                        ack: (af & 0x20 != 0).then_some(ack),
                        data,
                    },
                    1 => v2::Frame::Ack(ack),
                    2 => v2::Frame::Ping,
                    _ => v2::Frame::Close,
                };
                let mut wire = vec![0u8; v2::max_encoded_len(v2::covered_len(&f))];
                if let Ok(m) = v2::encode(&f, &mut wire) {
                    feed(
                        &mut link,
                        &mut peer,
                        &mut sent_by_peer,
                        &mut sent_v2,
                        t,
                        &wire[..m],
                    );
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
            let decoded = check.decode_any(&mut input);
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
                sent_by_peer.contains(r) || sent_v2.contains(&r.1),
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
    sent_v2: &mut HashSet<Vec<u8>>,
    t: Instant,
    bytes: &[u8],
) {
    let mut input = bytes;
    while let Some(r) = peer.decode_any(&mut input) {
        match r {
            Ok(AnyFrame::V1(f)) if f.header.kind == Kind::Data => {
                sent.insert((f.header.seq, f.payload.to_vec()));
            }
            Ok(AnyFrame::V2(v2::Frame::Data { data, .. })) => {
                sent_v2.extend(data.records().map(<[u8]>::to_vec));
            }
            _ => {}
        }
    }
    link.handle_input(t, bytes);
}

/// A records section of shape `sh % 3` made of `bytes` (11.3.3): single, uniform (records of
/// 1 + bytes[0] % 8 bytes), listed (records of 0 to 6 bytes, lengths from the bytes).
fn v2_section(sh: u8, bytes: &[u8]) -> (v2::Shape, Vec<u8>) {
    match sh % 3 {
        1 if !bytes.is_empty() => {
            let l = 1 + usize::from(bytes[0] % 8);
            let k = bytes.len() / l;
            if k == 0 {
                return (v2::Shape::Single, bytes.to_vec());
            }
            let mut s = vec![l as u8];
            s.extend_from_slice(&bytes[..k * l]);
            (v2::Shape::Uniform, s)
        }
        2 => {
            // Each record: a byte that gives its length (0 to 6), then that many bytes.
            let mut s = Vec::new();
            let mut rest = bytes;
            loop {
                let (l, after) = match rest.split_first() {
                    Some((&b, after)) => (usize::from(b % 7).min(after.len()), after),
                    None => (0, rest),
                };
                s.push(l as u8);
                s.extend_from_slice(&after[..l]);
                rest = &after[l..];
                if rest.is_empty() {
                    break;
                }
            }
            (v2::Shape::Listed, s)
        }
        _ => (v2::Shape::Single, bytes.to_vec()),
    }
}
