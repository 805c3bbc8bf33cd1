//! Authenticated links (`PROTOCOL.md` 9.14): the right key is accepted; a wrong or missing
//! key is refused, both ways, with a reason; no altered, forged or replayed frame is ever
//! taken; and retransmission and resume work as without authentication.
#![cfg(feature = "auth")]

mod sim;

use proptest::prelude::*;
use tether_core::frame::{self, crc32c, Decoder};
use tether_core::link::{
    auth, Config, Event, Instant, Key, Link, LinkStorage, Phase, RejectCode, Role,
};

type Store = LinkStorage<4, 4, 128>;
const ID: u32 = 0x0000_abcd;

fn key(b: u8) -> Key {
    Key::new(ID, [b; 32])
}

fn seed(tag: u8) -> [u8; 16] {
    let mut s = [0u8; 16];
    for (i, b) in s.iter_mut().enumerate().skip(4) {
        *b = tag.wrapping_add(i as u8);
    }
    s
}

fn link(role: Role, session: u32, k: Option<Key>, tag: u8) -> Link<Store> {
    let mut l = Link::new(Config::new(role, session), Store::new()).unwrap();
    l.set_auth(k, seed(tag)).unwrap();
    l
}

fn pair(dev: Option<Key>, host: Option<Key>) -> (Link<Store>, Link<Store>) {
    (
        link(Role::Client, 0xd1, dev, 0x10),
        link(Role::Server, 0x51, host, 0x20),
    )
}

/// Every frame each side sent, in order: (from the device, encoded frame).
type Wire = Vec<(bool, Vec<u8>)>;

/// Moves frames both ways until both are quiet (bounded), recording them.
fn shuttle(d: &mut Link<Store>, h: &mut Link<Store>, now: Instant, wire: &mut Wire) {
    let mut buf = vec![0u8; d.transmit_len().max(h.transmit_len())];
    for _ in 0..50 {
        let mut moved = false;
        while let Some(n) = d.poll_transmit(now, &mut buf) {
            wire.push((true, buf[..n].to_vec()));
            h.handle_input(now, &buf[..n]);
            moved = true;
        }
        while let Some(n) = h.poll_transmit(now, &mut buf) {
            wire.push((false, buf[..n].to_vec()));
            d.handle_input(now, &buf[..n]);
            moved = true;
        }
        let got: Vec<Vec<u8>> = h.received().map(|r| r.payload.to_vec()).collect();
        h.release(got.len());
        let got_d: Vec<Vec<u8>> = d.received().map(|r| r.payload.to_vec()).collect();
        d.release(got_d.len());
        if !moved {
            break;
        }
    }
}

fn connect(d: &mut Link<Store>, h: &mut Link<Store>, now: Instant) {
    d.connect(now);
    h.connect(now);
}

/// The raw frame (header, payload, CRC) of one encoded frame.
fn raw_of(wire: &[u8]) -> Vec<u8> {
    let mut dec = Decoder::new(vec![0u8; 1024]);
    let mut input = wire;
    let f = dec.decode(&mut input).unwrap().unwrap();
    let mut raw = f.header.to_bytes(f.payload.len()).unwrap().to_vec();
    raw.extend_from_slice(f.payload);
    let crc = crc32c(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    raw
}

/// COBS and the delimiter around any raw bytes (the encoder refuses invalid headers).
fn cobs(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let (mut code_at, mut code) = (0, 1u8);
    for &b in raw {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out.push(0);
    out
}

/// `raw` with bit `bit` flipped (anywhere before the CRC) and the CRC made right again, as an
/// attacker on the path would: the frame layer accepts it; only the MAC can refuse it.
fn tampered(raw: &[u8], bit: usize) -> Vec<u8> {
    let mut t = raw[..raw.len() - 4].to_vec();
    t[bit / 8] ^= 1 << (bit % 8);
    let crc = crc32c(&t);
    t.extend_from_slice(&crc.to_le_bytes());
    cobs(&t)
}

fn kind_of(wire: &[u8]) -> u8 {
    raw_of(wire)[0]
}

fn records_in(l: &Link<Store>) -> u32 {
    l.stats().records_in
}

/// Established both ways, with three records and a command delivered.
fn established() -> (Link<Store>, Link<Store>, Wire) {
    let (mut d, mut h) = pair(Some(key(7)), Some(key(7)));
    let now = Instant::from_millis(0);
    connect(&mut d, &mut h, now);
    let mut wire = Wire::new();
    for r in [&b"r0"[..], b"r1", b"r2"] {
        d.send(r).unwrap();
    }
    h.send(b"c0").unwrap();
    shuttle(&mut d, &mut h, now, &mut wire);
    assert_eq!(d.phase(), Phase::Established);
    assert_eq!(h.phase(), Phase::Established);
    assert_eq!((d.unacked(), h.unacked()), (0, 0));
    assert_eq!((records_in(&h), records_in(&d)), (3, 1));
    (d, h, wire)
}

#[test]
fn the_right_key_is_accepted_and_records_flow_both_ways() {
    let (d, h, wire) = established();
    assert_eq!(d.auth_key_id(), Some(ID));
    for l in [&d, &h] {
        let s = l.stats();
        assert_eq!((s.auth_failures, s.replays), (0, 0), "{s:?}");
    }
    // HELLO and WELCOME carry the extension; every other frame its trailer.
    let hello = raw_of(&wire[0].1);
    assert_eq!((hello[0], hello.len()), (0x01, 18 + 64));
    assert!(wire.iter().any(|(_, f)| kind_of(f) == 0x04));
    // The records are announced and accepted at the trailer's expense.
    assert_eq!(d.max_send(), 128 - 18 - auth::TRAILER_LEN);
}

#[test]
fn records_of_the_largest_size_fit_with_the_trailer() {
    let (mut d, mut h) = pair(Some(key(7)), Some(key(7)));
    let now = Instant::from_millis(0);
    connect(&mut d, &mut h, now);
    let big = vec![0xA5u8; d.max_send()];
    d.send(&big).unwrap();
    let mut wire = Wire::new();
    shuttle(&mut d, &mut h, now, &mut wire);
    assert_eq!((d.unacked(), records_in(&h)), (0, 1));
}

fn refused(d: &Link<Store>, h: &Link<Store>, by_host: bool) -> RejectCode {
    let (refuser, refused) = if by_host { (h, d) } else { (d, h) };
    assert_eq!(refuser.phase(), Phase::Rejected);
    assert_eq!(
        refused.phase(),
        Phase::Rejected,
        "the refusal reached the peer"
    );
    let mine = refuser.reject().unwrap();
    let theirs = refused.reject().unwrap();
    assert_eq!(mine.code(), theirs.code());
    assert_eq!(mine.text(), theirs.text());
    mine.code()
}

#[test]
fn a_wrong_key_is_refused_by_the_server_and_nothing_is_delivered() {
    let (mut d, mut h) = pair(Some(key(1)), Some(key(2)));
    let now = Instant::from_millis(0);
    connect(&mut d, &mut h, now);
    d.send(b"intruder").unwrap();
    shuttle(&mut d, &mut h, now, &mut Wire::new());
    assert_eq!(refused(&d, &h, true), RejectCode::Auth);
    assert_eq!(
        h.reject().unwrap().text(),
        "authentication failed for device 0000abcd: wrong key"
    );
    assert_eq!((records_in(&h), h.peer_session()), (0, None));
}

#[test]
fn an_unknown_key_id_is_refused() {
    let (mut d, mut h) = pair(Some(Key::new(0x77, [7; 32])), Some(key(7)));
    let now = Instant::from_millis(0);
    connect(&mut d, &mut h, now);
    shuttle(&mut d, &mut h, now, &mut Wire::new());
    assert_eq!(refused(&d, &h, true), RejectCode::Auth);
    assert_eq!(h.reject().unwrap().text(), "no key for device 00000077");
}

#[test]
fn a_server_with_the_wrong_key_is_refused_by_the_client() {
    // The server's WELCOME answers this nonce but was made with another key: a device
    // with the same nonce seed and the server's key gets it, then our device sees it.
    let now = Instant::from_millis(0);
    let (mut impostor_peer, mut server) = pair(Some(key(2)), Some(key(2)));
    let mut dev = link(Role::Client, 0xd1, Some(key(1)), 0x10);
    connect(&mut impostor_peer, &mut server, now);
    dev.connect(now);
    let mut buf = vec![0u8; 256];
    let n = impostor_peer.poll_transmit(now, &mut buf).unwrap();
    server.handle_input(now, &buf[..n]);
    let n = server.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(kind_of(&buf[..n]), 0x02, "a WELCOME");
    let _ = dev.poll_transmit(now, &mut vec![0u8; 256]); // its HELLO, same nonce
    dev.handle_input(now, &buf[..n]);
    assert_eq!(dev.phase(), Phase::Rejected);
    let r = dev.reject().unwrap();
    assert_eq!(r.code(), RejectCode::Auth);
    assert_eq!(r.text(), "the server failed authentication: wrong key");
    assert!(matches!(
        dev.poll_event(),
        Some(Event::Rejected { by_us: true })
    ));
    // And what it sends the server is a REJECT, nothing else.
    let n = dev.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(kind_of(&buf[..n]), 0x03);
    assert_eq!(dev.poll_transmit(now, &mut buf), None);
}

#[test]
fn a_missing_key_is_refused_both_ways() {
    let now = Instant::from_millis(0);
    // A device without a key at a server that requires one.
    let (mut d, mut h) = pair(None, Some(key(7)));
    connect(&mut d, &mut h, now);
    d.send(b"plain").unwrap();
    shuttle(&mut d, &mut h, now, &mut Wire::new());
    assert_eq!(refused(&d, &h, true), RejectCode::AuthRequired);
    assert_eq!(records_in(&h), 0);
    // A device with a key at a server without one.
    let (mut d, mut h) = pair(Some(key(7)), None);
    connect(&mut d, &mut h, now);
    d.send(b"keyed").unwrap();
    shuttle(&mut d, &mut h, now, &mut Wire::new());
    assert_eq!(refused(&d, &h, true), RejectCode::AuthUnsupported);
    assert_eq!(records_in(&h), 0);
}

#[test]
fn a_client_requiring_auth_refuses_a_plain_welcome() {
    let now = Instant::from_millis(0);
    let (mut plain_dev, mut plain_host) = pair(None, None);
    let mut dev = link(Role::Client, 0xd1, Some(key(7)), 0x10);
    connect(&mut plain_dev, &mut plain_host, now);
    dev.connect(now);
    let mut buf = vec![0u8; 256];
    let n = plain_dev.poll_transmit(now, &mut buf).unwrap();
    plain_host.handle_input(now, &buf[..n]);
    let n = plain_host.poll_transmit(now, &mut buf).unwrap();
    dev.handle_input(now, &buf[..n]);
    assert_eq!(dev.phase(), Phase::Rejected);
    assert_eq!(dev.reject().unwrap().code(), RejectCode::AuthRequired);
}

#[test]
fn every_single_bit_flip_of_every_frame_is_rejected() {
    let (d, h, wire) = established();
    // Replay the whole session into fresh copies of the same handshake, tampering one bit
    // of one frame at a time: the tampered frame is dropped, the genuine one after it
    // still goes through (the counter did not move), and the end state is the same.
    let session: Vec<_> = wire.iter().skip(2).cloned().collect(); // after HELLO, WELCOME
    assert!(session.len() >= 3, "{}", session.len());
    let mut checked = 0;
    for (i, (from_dev, f)) in session.iter().enumerate() {
        let raw = raw_of(f);
        let bits = (raw.len() - 4) * 8;
        for bit in 0..bits {
            let (mut d2, mut h2, _) = established_again(&wire, i);
            let rx = if *from_dev { &mut h2 } else { &mut d2 };
            let s0 = rx.stats();
            let phase = rx.phase();
            rx.handle_input(Instant::from_millis(0), &tampered(&raw, bit));
            let s1 = rx.stats();
            // Dropped by the frame layer (a reserved kind or flag, a wrong length), by the
            // MAC, or (a bit that turns it into a HELLO, WELCOME or REJECT) ignored.
            let dropped_by_frame_layer = s1.decoder.dropped() > s0.decoder.dropped();
            let dropped_by_mac = s1.auth_failures == s0.auth_failures + 1;
            let ignored = s1.unexpected == s0.unexpected + 1;
            assert!(
                dropped_by_frame_layer || dropped_by_mac || ignored,
                "frame {i} bit {bit}: {s0:?} -> {s1:?}"
            );
            assert_eq!(s1.records_in, s0.records_in, "frame {i} bit {bit}");
            assert_eq!(s1.replays, s0.replays);
            assert_eq!(rx.phase(), phase, "frame {i} bit {bit}");
            assert_eq!(rx.reject(), None, "frame {i} bit {bit}");
            // The genuine frame is still accepted.
            rx.handle_input(Instant::from_millis(0), f);
            assert_eq!(
                rx.stats().auth_failures,
                s1.auth_failures,
                "frame {i} bit {bit}"
            );
            checked += 1;
        }
    }
    assert!(checked > 500, "{checked}");
    let _ = (d, h);
}

/// A fresh pair with the same keys, seeds and records, fed the recorded session up to (not
/// including) frame `upto` after the handshake.
fn established_again(wire: &Wire, upto: usize) -> (Link<Store>, Link<Store>, ()) {
    let (mut d, mut h) = pair(Some(key(7)), Some(key(7)));
    let now = Instant::from_millis(0);
    connect(&mut d, &mut h, now);
    for r in [&b"r0"[..], b"r1", b"r2"] {
        d.send(r).unwrap();
    }
    h.send(b"c0").unwrap();
    // The handshake frames are made afresh (same seeds: the same bytes), then the recorded
    // frames are delivered.
    let mut buf = vec![0u8; 512];
    let n = d.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(&buf[..n], &wire[0].1[..], "deterministic HELLO");
    h.handle_input(now, &buf[..n]);
    let n = h.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(&buf[..n], &wire[1].1[..], "deterministic WELCOME");
    d.handle_input(now, &buf[..n]);
    for (from_dev, f) in wire.iter().skip(2).take(upto) {
        if *from_dev {
            h.handle_input(now, f);
        } else {
            d.handle_input(now, f);
        }
    }
    (d, h, ())
}

#[test]
fn a_replayed_frame_is_rejected_in_the_same_connection() {
    let (mut d, mut h, wire) = established();
    let s0 = h.stats();
    // Every frame the device sent, again: all dropped as replays, none delivered.
    let from_dev: Vec<_> = wire.iter().skip(2).filter(|(dev, _)| *dev).collect();
    for (_, f) in &from_dev {
        h.handle_input(Instant::from_millis(1), f);
    }
    let s1 = h.stats();
    assert_eq!(s1.replays, s0.replays + from_dev.len() as u32);
    assert_eq!(
        (s1.records_in, s1.duplicates),
        (s0.records_in, s0.duplicates)
    );
    // And the same for the host's frames at the device.
    let s0 = d.stats();
    let from_host: Vec<_> = wire.iter().skip(2).filter(|(dev, _)| !*dev).collect();
    for (_, f) in &from_host {
        d.handle_input(Instant::from_millis(1), f);
    }
    assert_eq!(d.stats().replays, s0.replays + from_host.len() as u32);
    assert_eq!(d.stats().records_in, s0.records_in);
    // The link still works.
    d.send(b"r3").unwrap();
    shuttle(&mut d, &mut h, Instant::from_millis(2), &mut Wire::new());
    assert_eq!((d.unacked(), records_in(&h)), (0, 4));
}

#[test]
fn a_frame_of_an_old_connection_is_rejected_in_a_new_one() {
    let (mut d, mut h, old) = established();
    let now = Instant::from_millis(10);
    connect(&mut d, &mut h, now);
    d.send(b"r3").unwrap();
    let mut new = Wire::new();
    shuttle(&mut d, &mut h, now, &mut new);
    assert_eq!(records_in(&h), 4);
    let s0 = h.stats();
    let data: Vec<_> = old
        .iter()
        .filter(|(dev, f)| *dev && kind_of(f) == 0x04)
        .collect();
    assert!(!data.is_empty());
    for (_, f) in &data {
        h.handle_input(now, f);
    }
    let s1 = h.stats();
    assert_eq!(s1.auth_failures, s0.auth_failures + data.len() as u32);
    assert_eq!(s1.records_in, s0.records_in);
    // The old HELLO and the old WELCOME do not open a session either: the HELLO starts a
    // handshake whose key the replayer cannot know (its own frames then fail), the
    // WELCOME is ignored (the device is not handshaking).
    let d0 = d.stats();
    d.handle_input(now, &old[1].1);
    assert_eq!(d.stats().unexpected, d0.unexpected + 1);
}

#[test]
fn a_replayed_hello_after_the_handshake_is_ignored() {
    let (mut d, mut h, wire) = established();
    let s0 = h.stats();
    h.handle_input(Instant::from_millis(1), &wire[0].1);
    assert_eq!(h.stats().replays, s0.replays + 1);
    assert_eq!(h.stats().handshakes, s0.handshakes);
    d.send(b"r3").unwrap();
    shuttle(&mut d, &mut h, Instant::from_millis(2), &mut Wire::new());
    assert_eq!((d.unacked(), records_in(&h)), (0, 4));
}

#[test]
fn a_retransmitted_hello_keeps_the_connection_key() {
    // The device repeats its HELLO before the WELCOME arrives: the server answers both,
    // with the same key, and the device adopts the first.
    let (mut d, mut h) = pair(Some(key(7)), Some(key(7)));
    let t0 = Instant::from_millis(0);
    connect(&mut d, &mut h, t0);
    let mut buf = vec![0u8; 512];
    let hello1 = {
        let n = d.poll_transmit(t0, &mut buf).unwrap();
        buf[..n].to_vec()
    };
    let t1 = Instant::from_millis(300);
    d.handle_timeout(t1);
    let hello2 = {
        let n = d.poll_transmit(t1, &mut buf).unwrap();
        buf[..n].to_vec()
    };
    h.handle_input(t1, &hello1);
    let mut from_host = Vec::new();
    while let Some(n) = h.poll_transmit(t1, &mut buf) {
        from_host.push(buf[..n].to_vec());
    }
    h.handle_input(t1, &hello2);
    while let Some(n) = h.poll_transmit(t1, &mut buf) {
        from_host.push(buf[..n].to_vec());
    }
    for f in &from_host {
        d.handle_input(t1, f);
    }
    assert_eq!(d.phase(), Phase::Established);
    d.send(b"r0").unwrap();
    shuttle(&mut d, &mut h, t1, &mut Wire::new());
    assert_eq!((d.unacked(), records_in(&h)), (0, 1));
    assert_eq!(h.stats().auth_failures + d.stats().auth_failures, 0);
}

#[test]
fn resume_after_a_cut_and_a_restarted_device_both_work() {
    let (mut d, mut h, _) = established();
    // A cut: both connect again; the session resumes under a new key.
    let now = Instant::from_millis(100);
    connect(&mut d, &mut h, now);
    d.send(b"r3").unwrap();
    shuttle(&mut d, &mut h, now, &mut Wire::new());
    assert_eq!((d.unacked(), records_in(&h)), (0, 4));
    assert_eq!(h.stats().resumes, 1);
    // The device restarts (new session, same key and device id; a new nonce seed).
    let mut d = link(Role::Client, 0xd2, Some(key(7)), 0x33);
    connect(&mut d, &mut h, now);
    d.send(b"after reboot").unwrap();
    shuttle(&mut d, &mut h, now, &mut Wire::new());
    assert_eq!((d.unacked(), records_in(&h)), (0, 5));
    assert_eq!(h.stats().peer_restarts, 1);
}

#[test]
fn the_simulator_delivers_exactly_once_with_auth_under_every_fault() {
    use sim::{run_and_check_auth, Faults, Scenario};
    let conditions = [
        Faults {
            loss: 0.1,
            ..Faults::CLEAN
        },
        Faults {
            corrupt: 0.1,
            split: true,
            ..Faults::CLEAN
        },
        Faults {
            duplicate: 0.1,
            split: true,
            ..Faults::CLEAN
        },
        Faults {
            cuts: 4,
            split: true,
            ..Faults::CLEAN
        },
        Faults {
            loss: 0.2,
            corrupt: 0.1,
            duplicate: 0.1,
            split: true,
            latency: 2,
            jitter: 20,
            cuts: 6,
        },
    ];
    let mut drops = 0;
    for (c, faults) in conditions.iter().enumerate() {
        for seed in 0..40u64 {
            let s = Scenario {
                seed,
                records: 60,
                commands: 10,
                window: [1, 3, 8][(seed % 3) as usize],
                faults: *faults,
                release_rate: if seed % 5 == 0 { 0.3 } else { 1.0 },
                first_seq: if seed % 7 == 0 { u32::MAX - 30 } else { 0 },
                versions: (1, 1),
            };
            let o = run_and_check_auth(&s).unwrap_or_else(|e| panic!("condition {c}: {e}"));
            drops += o.auth_drops;
        }
    }
    // Duplicated frames were dropped as replays, not delivered twice.
    assert!(drops > 0);
}

#[test]
fn set_auth_refuses_frames_too_small_for_the_trailer() {
    let mut l = Link::new(
        Config::new(Role::Client, 1),
        LinkStorage::<1, 1, { tether_core::link::MIN_FRAME }>::new(),
    )
    .unwrap();
    assert!(l.set_auth(Some(key(1)), [0; 16]).is_err());
    assert!(l.set_auth(None, [0; 16]).is_ok());
}

#[test]
fn hello_helpers_name_the_key_and_verify_the_tag() {
    let mut d = link(Role::Client, 0xd1, Some(key(7)), 0x10);
    d.connect(Instant::from_millis(0));
    let mut buf = vec![0u8; 256];
    let n = d.poll_transmit(Instant::from_millis(0), &mut buf).unwrap();
    let mut dec = Decoder::new(vec![0u8; 256]);
    let mut input = &buf[..n];
    let f = dec.decode(&mut input).unwrap().unwrap();
    assert_eq!(tether_core::link::hello_key_id(f.payload), Some(ID));
    assert_eq!(tether_core::link::hello_session(f.payload), Some(0xd1));
    assert!(key(7).verifies_hello(f.payload));
    assert!(!key(8).verifies_hello(f.payload));
    assert!(!Key::new(ID + 1, [7; 32]).verifies_hello(f.payload));
    let mut out = vec![0u8; frame::max_encoded_len(66)];
    let n = tether_core::link::reject_frame(RejectCode::Auth, "no key", &mut out).unwrap();
    assert_eq!(kind_of(&out[..n]), 0x03);
    assert!(format!("{:?}", key(7)).contains("redacted"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any frame a peer without the key makes up (any kind, header and payload, with a
    /// correct CRC) is dropped without effect on an established authenticated link.
    #[test]
    fn forged_frames_never_deliver(kind in 4u8..=7, flags in 0u8..=3, seq in any::<u32>(),
                                    ack in any::<u32>(), credit in any::<u16>(),
                                    payload in proptest::collection::vec(any::<u8>(), 0..100)) {
        let (mut d, mut h, _) = established();
        let mut raw = vec![kind, flags];
        raw.extend_from_slice(&seq.to_le_bytes());
        raw.extend_from_slice(&ack.to_le_bytes());
        raw.extend_from_slice(&credit.to_le_bytes());
        raw.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        raw.extend_from_slice(&payload);
        let crc = crc32c(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        let s0 = h.stats();
        h.handle_input(Instant::from_millis(1), &cobs(&raw));
        let s1 = h.stats();
        prop_assert_eq!(s1.auth_failures, s0.auth_failures + 1);
        prop_assert_eq!(s1.records_in, s0.records_in);
        prop_assert_eq!(h.phase(), Phase::Established);
        prop_assert_eq!(h.unacked(), 0);
        d.send(b"still fine").unwrap();
        shuttle(&mut d, &mut h, Instant::from_millis(2), &mut Wire::new());
        prop_assert_eq!(records_in(&h), 4);
    }
}

// ---- PROTOCOL.md 9.14.6: the test vector, recomputed from the spec's formulas ----------

const SPEC: &str = include_str!("../../PROTOCOL.md");

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .chunks(32)
        .map(|c| c.join(" "))
        .collect::<Vec<_>>()
        .join("\n         ")
}

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// The `tether-auth-vector` block of the spec as key → value (continuation lines joined).
fn spec_vector() -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    let mut lines = SPEC
        .lines()
        .skip_while(|l| l.trim() != "```tether-auth-vector");
    lines.next();
    let mut last = String::new();
    for line in lines {
        if line.trim() == "```" {
            break;
        }
        if line.starts_with(' ') {
            let v: &mut String = map.get_mut(&last).expect("continuation");
            v.push(' ');
            v.push_str(line.trim());
        } else {
            let (k, v) = line.split_once(':').expect("key: value");
            last = k.trim().to_string();
            map.insert(last.clone(), v.trim().to_string());
        }
    }
    map
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn payload_of(wire: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let raw = raw_of(wire);
    (raw[14..raw.len() - 4].to_vec(), raw)
}

#[test]
fn the_spec_vector_is_what_the_reference_sends_and_what_the_formulas_give() {
    let psk: [u8; 32] = core::array::from_fn(|i| i as u8);
    let key = Key::new(ID, psk);
    let mut c_seed = [0u8; 16];
    let mut s_seed = [0u8; 16];
    for i in 4..16 {
        c_seed[i] = 0xc0 + i as u8;
        s_seed[i] = 0x50 + i as u8;
    }
    let mut d = Link::new(Config::new(Role::Client, 0xd1), Store::new()).unwrap();
    let mut h = Link::new(Config::new(Role::Server, 0x51), Store::new()).unwrap();
    d.set_auth(Some(key.clone()), c_seed).unwrap();
    h.set_auth(Some(key), s_seed).unwrap();
    d.send(b"21.5").unwrap();
    let now = Instant::from_millis(0);
    connect(&mut d, &mut h, now);
    let mut buf = vec![0u8; 512];
    let n = d.poll_transmit(now, &mut buf).unwrap();
    let hello_wire = buf[..n].to_vec();
    h.handle_input(now, &hello_wire);
    let n = h.poll_transmit(now, &mut buf).unwrap();
    let welcome_wire = buf[..n].to_vec();
    d.handle_input(now, &welcome_wire);
    while let Some(n) = h.poll_transmit(now, &mut buf) {
        d.handle_input(now, &buf[..n]); // the server's ACK
    }
    let n = d.poll_transmit(now, &mut buf).unwrap();
    let data_wire = buf[..n].to_vec();
    let s0 = h.stats().records_in;
    h.handle_input(now, &data_wire);
    assert_eq!(h.stats().records_in, s0 + 1);
    assert_eq!(h.recv().unwrap().payload, b"21.5");

    // The formulas of 9.14.
    let (hello, _) = payload_of(&hello_wire);
    let (welcome, _) = payload_of(&welcome_wire);
    let (data, data_raw) = payload_of(&data_wire);
    assert_eq!((hello.len(), welcome.len()), (64, 64));
    let nonce_c = &hello[32..48];
    let nonce_s = &welcome[32..48];
    let tag_c = hmac(&psk, &[b"tether-v1 hello", &hello[..48]]);
    assert_eq!(&hello[48..], &tag_c[..16], "tag_c");
    let k = hmac(
        &psk,
        &[b"tether-v1 key", &ID.to_le_bytes(), nonce_c, nonce_s],
    );
    let tag_s = hmac(&k, &[b"tether-v1 welcome", &welcome[..48]]);
    assert_eq!(&welcome[48..], &tag_s[..16], "tag_s");
    let body = data_raw.len() - 4 - 8;
    let mac = hmac(&k, &[&[0x01], &data_raw[..body]]);
    assert_eq!(&data_raw[body..body + 8], &mac[..8], "frame MAC");
    assert_eq!(
        &data[data.len() - 14..data.len() - 8],
        &[1, 0, 0, 0, 0, 0],
        "counter 1"
    );

    let ours = [
        ("psk", hex(&psk)),
        ("key-id", format!("{ID:08x}")),
        ("nonce-c", hex(nonce_c)),
        ("nonce-s", hex(nonce_s)),
        ("hello", hex(&hello)),
        ("hello-wire", hex(&hello_wire)),
        ("k", hex(&k)),
        ("welcome", hex(&welcome)),
        ("welcome-wire", hex(&welcome_wire)),
        ("data-raw", hex(&data_raw)),
        ("data-wire", hex(&data_wire)),
    ];
    if std::env::var_os("TETHER_PRINT_AUTH_VECTOR").is_some() {
        println!("```tether-auth-vector");
        for (k, v) in &ours {
            println!("{k:<12} {v}", k = format!("{k}:"));
        }
        println!("```");
    }
    let spec = spec_vector();
    for (k, v) in &ours {
        let want = spec
            .get(*k)
            .unwrap_or_else(|| panic!("PROTOCOL.md lacks `{k}`"));
        if *k == "key-id" {
            assert_eq!(want, v, "{k}");
        } else {
            assert_eq!(unhex(want), unhex(v), "{k}");
        }
    }
}

#[test]
fn a_replayed_old_hello_never_makes_the_server_deliver_a_record_twice() {
    // The fuzzer's find: the host has written r0..r3 but its acknowledgements are lost; an
    // attacker replays the device's first HELLO (tx_base 0, naming no server), then the
    // connection is cut. Had the host taken the HELLO's numbering, the device's resent
    // records would be written again.
    let (mut d, mut h) = pair(Some(key(7)), Some(key(7)));
    let t = Instant::from_millis(0);
    connect(&mut d, &mut h, t);
    let mut buf = vec![0u8; 512];
    let n = d.poll_transmit(t, &mut buf).unwrap();
    let first_hello = buf[..n].to_vec();
    h.handle_input(t, &first_hello);
    while let Some(n) = h.poll_transmit(t, &mut buf) {
        d.handle_input(t, &buf[..n]);
    }
    // A second connection, in which the records go.
    let t = Instant::from_millis(500);
    connect(&mut d, &mut h, t);
    while let Some(n) = d.poll_transmit(t, &mut buf) {
        h.handle_input(t, &buf[..n]);
    }
    while let Some(n) = h.poll_transmit(t, &mut buf) {
        d.handle_input(t, &buf[..n]);
    }
    for r in [&b"r0"[..], b"r1", b"r2", b"r3"] {
        d.send(r).unwrap();
    }
    while let Some(n) = d.poll_transmit(t, &mut buf) {
        h.handle_input(t, &buf[..n]);
    }
    let mut written = 0;
    written += h.received().count();
    h.release(4);
    while h.poll_transmit(t, &mut buf).is_some() {} // acknowledgements lost
    assert_eq!((written, d.unacked()), (4, 4));
    h.handle_input(t, &first_hello); // the replay, of the first connection's HELLO
    assert_eq!(
        h.stats().replays,
        0,
        "not this connection's nonce: not caught as a replay"
    );
    let t = Instant::from_millis(1_000);
    connect(&mut d, &mut h, t);
    for _ in 0..20 {
        while let Some(n) = d.poll_transmit(t, &mut buf) {
            h.handle_input(t, &buf[..n]);
        }
        while let Some(n) = h.poll_transmit(t, &mut buf) {
            d.handle_input(t, &buf[..n]);
        }
        written += h.received().count();
        let k = h.received().count();
        h.release(k);
    }
    assert_eq!(written, 4, "every record written once");
    assert_eq!(d.unacked(), 0);
}
