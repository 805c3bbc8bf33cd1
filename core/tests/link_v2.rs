//! Protocol version 2 in the link layer (`PROTOCOL.md` section 11): the negotiation in both
//! roles and with version 1 peers, the handshake bytes of the spec's vectors, and the session
//! frames a version 2 session puts on the wire.
#![cfg(feature = "v2")]

use tether_core::frame::{self, v2, AnyFrame, Decoder, Kind};
use tether_core::link::{
    Config, Event, Instant, Link, LinkStorage, Phase, RejectCode, Role, Storage,
};

type Store = LinkStorage<8, 8, 96>;

const SPEC: &str = include_str!("../../PROTOCOL.md");

fn config(role: Role, session: u32, max_version: u8) -> Config {
    let mut c = Config::new(role, session);
    c.max_version = max_version;
    c
}

fn link(role: Role, session: u32, max_version: u8) -> Link<Store> {
    Link::new(config(role, session, max_version), Store::new()).expect("config")
}

/// Every frame `from` sends now, each as one `Vec`.
fn frames_of<S: Storage>(from: &mut Link<S>, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; from.transmit_len()];
    let mut out = Vec::new();
    while let Some(n) = from.poll_transmit(now, &mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// Shuttles frames both ways until both sides are quiet; the frames the client and the
/// server sent, in order. The server's application releases what it receives.
fn exchange(
    client: &mut Link<Store>,
    server: &mut Link<Store>,
    now: Instant,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let a = frames_of(client, now);
        for f in &a {
            server.handle_input(now, f);
        }
        let n = server.received().count();
        server.release(n);
        let b = frames_of(server, now);
        for f in &b {
            client.handle_input(now, f);
        }
        let n = client.received().count();
        client.release(n);
        if a.is_empty() && b.is_empty() {
            break;
        }
        up.extend(a);
        down.extend(b);
    }
    (up, down)
}

/// Whether an encoded frame is a version 2 frame: its first raw byte has bit 7 set.
fn is_v2_frame(wire: &[u8]) -> bool {
    let mut dec = Decoder::new(vec![0u8; 200]);
    let mut input = wire;
    matches!(dec.decode_any(&mut input), Some(Ok(AnyFrame::V2(_))))
}

fn kind_v1(wire: &[u8]) -> Option<Kind> {
    let mut dec = Decoder::new(vec![0u8; 200]);
    let mut input = wire;
    match dec.decode_any(&mut input) {
        Some(Ok(AnyFrame::V1(f))) => Some(f.header.kind),
        _ => None,
    }
}

/// The `wire` of the section 7-format vector `name`.
fn spec_wire(name: &str) -> Vec<u8> {
    let mut lines = SPEC
        .lines()
        .skip_while(|l| l.trim() != format!("name:    {name}"));
    let mut wire = String::new();
    let mut in_wire = false;
    for line in lines.by_ref() {
        if line.trim() == "```" {
            break;
        }
        if let Some(rest) = line.strip_prefix("wire:") {
            in_wire = true;
            wire.push_str(rest);
        } else if in_wire && line.starts_with(' ') {
            wire.push(' ');
            wire.push_str(line.trim());
        } else {
            in_wire = false;
        }
    }
    assert!(!wire.is_empty(), "vector {name} in the spec");
    wire.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect()
}

fn send_records(link: &mut Link<Store>, n: u32) {
    for i in 0..n {
        link.send(format!("record {i}").as_bytes()).expect("queued");
    }
}

#[test]
fn two_sides_that_offer_version_2_use_it_and_its_frames() {
    let now = Instant::from_millis(0);
    let mut c = link(Role::Client, 0xD1, 2);
    let mut s = link(Role::Server, 0x51, 2);
    c.connect(now);
    s.connect(now);
    send_records(&mut c, 5);
    s.send(b"a command").unwrap();
    let (up, down) = exchange(&mut c, &mut s, now);
    assert_eq!((c.protocol_version(), s.protocol_version()), (2, 2));
    assert_eq!((c.unacked(), s.unacked()), (0, 0));
    assert_eq!(kind_v1(&up[0]), Some(Kind::Hello));
    assert_eq!(kind_v1(&down[0]), Some(Kind::Welcome));
    // After the handshake every session frame is a version 2 frame, both ways.
    assert!(
        up[1..].iter().all(|f| is_v2_frame(f)),
        "client frames after its HELLO"
    );
    assert!(
        down[1..].iter().all(|f| is_v2_frame(f)),
        "server frames after its WELCOME"
    );
    assert!(s.stats().records_in == 5 && c.stats().records_in == 1);
}

#[test]
fn a_version_2_client_talks_version_1_to_a_version_1_server() {
    let now = Instant::from_millis(0);
    let mut c = link(Role::Client, 0xD1, 2);
    let mut s = link(Role::Server, 0x51, 1);
    c.connect(now);
    s.connect(now);
    send_records(&mut c, 5);
    s.send(b"a command").unwrap();
    let (up, down) = exchange(&mut c, &mut s, now);
    assert_eq!((c.protocol_version(), s.protocol_version()), (1, 1));
    assert_eq!((c.unacked(), s.unacked()), (0, 0));
    assert!(
        up.iter().chain(&down).all(|f| !is_v2_frame(f)),
        "only version 1 frames"
    );
    assert_eq!((s.stats().records_in, c.stats().records_in), (5, 1));
}

#[test]
fn a_version_1_client_is_answered_in_version_1_by_a_version_2_server() {
    let now = Instant::from_millis(0);
    let mut c = link(Role::Client, 0xD1, 1);
    let mut s = link(Role::Server, 0x51, 2);
    c.connect(now);
    s.connect(now);
    send_records(&mut c, 5);
    s.send(b"a command").unwrap();
    let (up, down) = exchange(&mut c, &mut s, now);
    assert_eq!((c.protocol_version(), s.protocol_version()), (1, 1));
    assert!(
        up.iter().chain(&down).all(|f| !is_v2_frame(f)),
        "only version 1 frames"
    );
    assert_eq!((s.stats().records_in, c.stats().records_in), (5, 1));
    // Its WELCOME is a version 1 WELCOME: every header field 0 (9.5.1).
    let mut dec = Decoder::new(vec![0u8; 200]);
    let mut input = &down[0][..];
    let f = dec.decode(&mut input).expect("a frame").expect("valid");
    assert_eq!(
        (f.header.kind, f.header.seq, f.header.ack, f.header.credit),
        (Kind::Welcome, 0, 0, 0)
    );
}

/// A side that offers only version 1 sends exactly what a version 1 build sends: its HELLO's
/// header fields are all 0, as section 9.5.1 says.
#[test]
fn a_side_offering_version_1_sends_version_1_hellos() {
    let now = Instant::from_millis(0);
    let mut c = link(Role::Client, 0xD1, 1);
    c.connect(now);
    let hello = frames_of(&mut c, now).remove(0);
    let mut dec = Decoder::new(vec![0u8; 200]);
    let mut input = &hello[..];
    let f = dec.decode(&mut input).expect("a frame").expect("valid");
    assert_eq!(
        (f.header.kind, f.header.seq, f.header.ack, f.header.credit),
        (Kind::Hello, 0, 0, 0)
    );
}

/// The reference sends the handshake of 11.12 byte for byte: a device (session 0xd1, M =
/// 96, 8 receive slots) offering version 2, and a host (0x51) choosing it.
#[test]
fn the_handshake_is_the_specs_vectors_byte_for_byte() {
    let now = Instant::from_millis(0);
    let mut c = link(Role::Client, 0xD1, 2);
    let mut s = link(Role::Server, 0x51, 2);
    c.connect(now);
    s.connect(now);
    let hello = frames_of(&mut c, now).remove(0);
    assert_eq!(hello, spec_wire("hello-offering-v2"));
    s.handle_input(now, &hello);
    let welcome = frames_of(&mut s, now).remove(0);
    assert_eq!(welcome, spec_wire("welcome-choosing-v2"));
}

/// A WELCOME that chooses a version the client did not offer is refused with code 1.
#[test]
fn a_welcome_choosing_a_version_not_offered_is_refused() {
    let now = Instant::from_millis(0);
    let mut c = link(Role::Client, 0xD1, 2);
    c.connect(now);
    let _ = frames_of(&mut c, now);
    // The spec's WELCOME with its header `credit` (the version chosen) made 3.
    let welcome = spec_wire("welcome-choosing-v2");
    let mut dec = Decoder::new(vec![0u8; 200]);
    let mut input = &welcome[..];
    let f = dec.decode(&mut input).expect("a frame").expect("valid");
    let mut h = f.header;
    h.credit = 3;
    let payload = f.payload.to_vec();
    let mut forged = vec![0u8; frame::max_encoded_len(payload.len())];
    let n = frame::encode(&h, &payload, &mut forged).unwrap();
    c.handle_input(now, &forged[..n]);
    assert_eq!(c.phase(), Phase::Rejected);
    let r = c.reject().expect("a reason");
    assert_eq!(r.code(), RejectCode::Version);
    assert_eq!(
        r.text(),
        "the server chose protocol version 3; this side offers up to 2"
    );
    assert!(matches!(
        c.poll_event(),
        Some(Event::Rejected { by_us: true })
    ));
    // A client that offered only version 1 takes the same WELCOME as version 1.
    let mut c1 = link(Role::Client, 0xD1, 1);
    c1.connect(now);
    let _ = frames_of(&mut c1, now);
    c1.handle_input(now, &forged[..n]);
    assert_eq!((c1.phase(), c1.protocol_version()), (Phase::Established, 1));
}

/// The version is decided at every handshake: a server in a version 2 session that adopts a
/// HELLO offering only version 1 (a device whose firmware went back) speaks version 1 from
/// its WELCOME on, and the other way round.
#[test]
fn each_handshake_decides_the_version_anew() {
    let now = Instant::from_millis(0);
    let mut s = link(Role::Server, 0x51, 2);
    s.connect(now);
    let mut c2 = link(Role::Client, 0xD1, 2);
    c2.connect(now);
    send_records(&mut c2, 3);
    exchange(&mut c2, &mut s, now);
    assert_eq!((s.protocol_version(), s.stats().records_in), (2, 3));
    let mut c1 = link(Role::Client, 0xD2, 1);
    c1.connect(now);
    send_records(&mut c1, 3);
    let (_, down) = exchange(&mut c1, &mut s, now);
    assert_eq!((s.protocol_version(), c1.protocol_version()), (1, 1));
    assert!(down.iter().all(|f| !is_v2_frame(f)));
    assert_eq!(c1.unacked(), 0);
    let mut c3 = link(Role::Client, 0xD3, 2);
    c3.connect(now);
    send_records(&mut c3, 3);
    let (_, down) = exchange(&mut c3, &mut s, now);
    assert_eq!((s.protocol_version(), c3.unacked()), (2, 0));
    assert!(down[1..].iter().all(|f| is_v2_frame(f)));
}

/// In a version 2 session, version 1 session frames are ignored and counted, and in a
/// version 1 session version 2 frames are: each side reads only its session's version.
#[test]
fn session_frames_of_the_other_version_are_ignored() {
    let now = Instant::from_millis(0);
    let mut c = link(Role::Client, 0xD1, 2);
    let mut s = link(Role::Server, 0x51, 2);
    c.connect(now);
    s.connect(now);
    exchange(&mut c, &mut s, now);
    // A version 1 DATA frame carrying a record numbered 0.
    let h = frame::Header {
        kind: Kind::Data,
        ..frame::Header::default()
    };
    let mut w = vec![0u8; frame::max_encoded_len(3)];
    let n = frame::encode(&h, b"one", &mut w).unwrap();
    let before = s.stats().unexpected;
    s.handle_input(now, &w[..n]);
    assert_eq!(
        (s.stats().unexpected, s.stats().records_in),
        (before + 1, 0)
    );
    // And a version 2 PING into a version 1 session.
    let mut c1 = link(Role::Client, 0xD1, 1);
    let mut s1 = link(Role::Server, 0x51, 2);
    c1.connect(now);
    s1.connect(now);
    exchange(&mut c1, &mut s1, now);
    let mut ping = vec![0u8; 8];
    let n = v2::encode(&v2::Frame::Ping, &mut ping).unwrap();
    let before = s1.stats().unexpected;
    s1.handle_input(now, &ping[..n]);
    assert_eq!(s1.stats().unexpected, before + 1);
    assert!(
        frames_of(&mut s1, now).is_empty(),
        "no answer to a PING it cannot read"
    );
}

#[cfg(feature = "auth")]
#[test]
fn an_authenticated_link_speaks_version_1() {
    use tether_core::link::Key;
    let now = Instant::from_millis(0);
    type AuthStore = LinkStorage<8, 8, { 96 + tether_core::link::auth::TRAILER_LEN }>;
    let key = Key::new(7, [3; 32]);
    let mut c = Link::new(config(Role::Client, 0xD1, 2), AuthStore::new()).unwrap();
    let mut s = Link::new(config(Role::Server, 0x51, 2), AuthStore::new()).unwrap();
    c.set_auth(Some(key.clone()), [1; 16]).unwrap();
    s.set_auth(Some(key), [2; 16]).unwrap();
    c.connect(now);
    s.connect(now);
    c.send(b"21.5").unwrap();
    let mut buf = vec![0u8; c.transmit_len()];
    for _ in 0..10 {
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            assert!(!is_v2_frame(&buf[..n]));
            s.handle_input(now, &buf[..n]);
        }
        let k = s.received().count();
        s.release(k);
        while let Some(n) = s.poll_transmit(now, &mut buf) {
            assert!(!is_v2_frame(&buf[..n]));
            c.handle_input(now, &buf[..n]);
        }
    }
    assert_eq!(
        (c.protocol_version(), s.protocol_version(), c.unacked()),
        (1, 1, 0)
    );
}

// ---- packing (11.8) and delayed acknowledgements (11.7.3) -----------------------------

type Device = LinkStorage<16, 16, 128>;

/// A connected pair with 16 slots of 128-byte frames on both sides, in a version 2 session
/// with nothing in flight.
fn pair_128(pack_delay_ms: u16) -> (Link<Device>, Link<Device>) {
    let now = Instant::from_millis(0);
    let mut cc = config(Role::Client, 0xD1, 2);
    cc.pack_delay_ms = pack_delay_ms;
    let mut c = Link::new(cc, Device::new()).unwrap();
    let mut s = Link::new(config(Role::Server, 0x51, 2), Device::new()).unwrap();
    c.connect(now);
    s.connect(now);
    let mut buf = vec![0u8; 200];
    for _ in 0..4 {
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            s.handle_input(now, &buf[..n]);
        }
        while let Some(n) = s.poll_transmit(now, &mut buf) {
            c.handle_input(now, &buf[..n]);
        }
    }
    assert_eq!((c.protocol_version(), s.protocol_version()), (2, 2));
    (c, s)
}

/// The records of a version 2 DATA frame on the wire, and its `I` flag.
fn data_records(wire: &[u8]) -> Option<(Vec<Vec<u8>>, bool)> {
    let mut dec = Decoder::new(vec![0u8; 200]);
    let mut input = wire;
    match dec.decode_any(&mut input) {
        Some(Ok(AnyFrame::V2(v2::Frame::Data { data, .. }))) => {
            Some((data.records().map(<[u8]>::to_vec).collect(), data.immediate))
        }
        _ => None,
    }
}

fn record16(i: u32) -> [u8; 16] {
    let mut r = *b"reading 00000000";
    r[8..].copy_from_slice(format!("{i:08}").as_bytes());
    r
}

#[test]
fn sixteen_byte_records_go_seven_to_a_128_byte_frame() {
    let (mut c, _s) = pair_128(2);
    let now = Instant::from_millis(10);
    for i in 0..16 {
        c.send(&record16(i)).unwrap();
    }
    let mut buf = vec![0u8; c.transmit_len()];
    let n = c
        .poll_transmit(now, &mut buf)
        .expect("a full frame goes at once");
    assert_eq!(
        n, 121,
        "7 records of 16 bytes: 1 + 1 + 1 + 112 + 4 raw, COBS and delimiter"
    );
    let (records, immediate) = data_records(&buf[..n]).expect("a DATA frame");
    assert_eq!(
        records,
        (0..7).map(|i| record16(i).to_vec()).collect::<Vec<_>>()
    );
    assert!(!immediate, "7 in flight of a window of 16: no hurry");
    let n = c.poll_transmit(now, &mut buf).expect("full again");
    let (records, immediate) = data_records(&buf[..n]).unwrap();
    assert_eq!(
        (records.len(), immediate),
        (7, true),
        "14 in flight: half the window"
    );
    // Two records left: a frame that is not full, while records are in flight, waits.
    assert_eq!(c.poll_transmit(now, &mut buf), None);
    assert_eq!(
        c.poll_timeout(),
        Some(now.plus(2)),
        "at most the packing bound"
    );
    let late = now.plus(2);
    c.handle_timeout(late);
    let n = c.poll_transmit(late, &mut buf).expect("the bound passed");
    let (records, immediate) = data_records(&buf[..n]).unwrap();
    assert_eq!(
        (records.len(), immediate),
        (2, true),
        "nothing more to send"
    );
}

#[test]
fn a_lone_record_never_waits_and_pack_delay_0_never_holds() {
    for delay in [2, 0] {
        let (mut c, _s) = pair_128(delay);
        let now = Instant::from_millis(10);
        c.send(b"alone").unwrap();
        let mut buf = vec![0u8; c.transmit_len()];
        let n = c
            .poll_transmit(now, &mut buf)
            .expect("nothing in flight: at once");
        assert_eq!(
            data_records(&buf[..n]),
            Some((vec![b"alone".to_vec()], true))
        );
        c.send(b"second").unwrap();
        let held = c.poll_transmit(now, &mut buf);
        assert_eq!(held.is_some(), delay == 0, "pack_delay_ms {delay}");
    }
}

#[test]
fn records_of_different_lengths_go_listed_and_equal_ones_uniform() {
    let (mut c, mut s) = pair_128(0);
    let now = Instant::from_millis(10);
    for r in [&b"a"[..], b"bb", b"", b"dddd"] {
        c.send(r).unwrap();
    }
    let mut buf = vec![0u8; c.transmit_len()];
    let n = c.poll_transmit(now, &mut buf).unwrap();
    // C, seq, then (len ‖ bytes) each: 1 + 1 + 2 + 3 + 1 + 5 = 13 covered bytes.
    let (records, _) = data_records(&buf[..n]).unwrap();
    assert_eq!(
        records,
        vec![
            b"a".to_vec(),
            b"bb".to_vec(),
            b"".to_vec(),
            b"dddd".to_vec()
        ]
    );
    s.handle_input(now, &buf[..n]);
    let got: Vec<Vec<u8>> = s.received().map(|r| r.payload.to_vec()).collect();
    assert_eq!(got, records, "delivered in order, each its own record");
    assert_eq!(
        s.received().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
}

/// A receiver acknowledges every second frame of a stream, a frame with `I` at once, and
/// anything else within ACK_DELAY (25 ms).
#[test]
fn acknowledgements_are_delayed_as_11_7_3_says() {
    let (mut c, mut s) = pair_128(0);
    let now = Instant::from_millis(10);
    let mut buf = vec![0u8; 200];
    for i in 0..14 {
        c.send(&record16(i)).unwrap();
    }
    let n = c.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(
        data_records(&buf[..n]).map(|(r, i)| (r.len(), i)),
        Some((7, false))
    );
    s.handle_input(now, &buf[..n]);
    s.release(7);
    assert_eq!(
        s.poll_transmit(now, &mut buf),
        None,
        "one frame without I: later"
    );
    assert_eq!(s.poll_timeout(), Some(now.plus(25)));
    let n = c.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(
        data_records(&buf[..n]).map(|(r, i)| (r.len(), i)),
        Some((7, true))
    );
    s.handle_input(now, &buf[..n]);
    s.release(7);
    let n = s
        .poll_transmit(now, &mut buf)
        .expect("I, and a second frame: now");
    c.handle_input(now, &buf[..n]);
    assert_eq!(c.unacked(), 0, "one acknowledgement for both frames");
    assert_eq!(s.poll_transmit(now, &mut buf), None, "and only one");
    // One frame without I (two more records queued): its acknowledgement waits at most
    // 25 ms.
    for i in 0..9 {
        c.send(&record16(i)).unwrap();
    }
    let t = now.plus(1);
    let n = c.poll_transmit(t, &mut buf).unwrap();
    s.handle_input(t, &buf[..n]);
    s.release(7);
    assert_eq!(s.poll_transmit(t.plus(24), &mut buf), None);
    assert!(
        s.poll_transmit(t.plus(25), &mut buf).is_some(),
        "ACK_DELAY passed"
    );
}

/// While the sender is eager (it sent `I`), a late release is acknowledged at once.
#[test]
fn a_release_after_an_immediate_frame_is_acknowledged_at_once() {
    let (mut c, mut s) = pair_128(0);
    let now = Instant::from_millis(10);
    let mut buf = vec![0u8; 200];
    c.send(b"one").unwrap();
    let n = c.poll_transmit(now, &mut buf).unwrap();
    s.handle_input(now, &buf[..n]);
    let n = s
        .poll_transmit(now, &mut buf)
        .expect("I: at once, reporting it received");
    c.handle_input(now, &buf[..n]);
    assert_eq!(c.unacked(), 1, "received, not released");
    let later = now.plus(3);
    s.release(1);
    let n = s
        .poll_transmit(later, &mut buf)
        .expect("eager: the release at once");
    c.handle_input(later, &buf[..n]);
    assert_eq!(c.unacked(), 0);
}

/// In a steady stream of 16-byte records over 128-byte frames, every frame carries 7 and the
/// wire carries under 17.8 bytes a record forward, under 5 % of that back.
#[test]
fn a_stream_costs_under_17_8_bytes_a_record_and_5_percent_back() {
    let (mut c, mut s) = pair_128(2);
    let (up0, down0) = (c.stats().bytes_out, s.stats().bytes_out);
    let mut buf = vec![0u8; 200];
    let mut sent = 0u32;
    let mut now = Instant::from_millis(10);
    let total = 7 * 300;
    while s.stats().records_in < total {
        while sent < total && c.can_send() {
            c.send(&record16(sent)).unwrap();
            sent += 1;
        }
        c.handle_timeout(now);
        s.handle_timeout(now);
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            s.handle_input(now, &buf[..n]);
        }
        let k = s.received().count();
        s.release(k);
        while let Some(n) = s.poll_transmit(now, &mut buf) {
            c.handle_input(now, &buf[..n]);
        }
        now = now.plus(1);
        assert!(now.millis() < 100_000, "the stream completes");
    }
    let up = (c.stats().bytes_out - up0) as f64 / f64::from(total);
    let down = (s.stats().bytes_out - down0) as f64 / f64::from(total);
    println!(
        "forward {up:.2} B/record, back {down:.2} B/record ({:.1} %)",
        100.0 * down / up
    );
    assert!(up <= 17.8, "forward {up:.2} B/record");
    assert!(down <= 0.05 * up, "back {down:.2} B/record");
}

// ---- selective acknowledgement and the timeout (11.7) -----------------------------------

/// A pair in a version 2 session over 16 slots of 128-byte frames, records numbered from
/// `first_seq`, nothing packed (pack_delay 0).
fn pair_at(first_seq: u32) -> (Link<Device>, Link<Device>) {
    let now = Instant::from_millis(0);
    let mut cc = config(Role::Client, 0xD1, 2);
    cc.pack_delay_ms = 0;
    cc.first_seq = first_seq;
    let mut c = Link::new(cc, Device::new()).unwrap();
    let mut s = Link::new(config(Role::Server, 0x51, 2), Device::new()).unwrap();
    c.connect(now);
    s.connect(now);
    for _ in 0..4 {
        for f in frames_of(&mut c, now) {
            s.handle_input(now, &f);
        }
        for f in frames_of(&mut s, now) {
            c.handle_input(now, &f);
        }
    }
    (c, s)
}

/// A 100-byte record: one to a 128-byte frame.
fn big(i: u32) -> Vec<u8> {
    let mut r = vec![(i % 251) as u8 + 1; 100];
    r[..4].copy_from_slice(&i.to_le_bytes());
    r
}

/// A version 2 frame, for a trace.
fn decode_v2(wire: &[u8]) -> String {
    let mut dec = Decoder::new(vec![0u8; 200]);
    let mut input = wire;
    match dec.decode_any(&mut input) {
        Some(Ok(AnyFrame::V2(v2::Frame::Data { ack, .. }))) => format!("DATA ack {ack:?}"),
        Some(Ok(AnyFrame::V2(f))) => format!("{f:?}"),
        other => format!("{other:?}"),
    }
}

/// The first records of the version 2 DATA frame `wire`, as record numbers (from `big`).
fn numbers(wire: &[u8]) -> Vec<u32> {
    data_records(wire)
        .map(|(r, _)| {
            r.iter()
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the pair until nothing is unacknowledged (or `limit_ms`), each frame the device
/// sends passing `keep(record numbers)` and each the host sends `keep_ack(n)` (the n-th
/// acknowledgement frame); the host releases everything at once. Returns what the host
/// delivered, in order, and the virtual time taken.
fn run_pair(
    c: &mut Link<Device>,
    s: &mut Link<Device>,
    mut keep: impl FnMut(&[u32]) -> bool,
    mut keep_ack: impl FnMut(usize) -> bool,
    limit_ms: u64,
) -> (Vec<u32>, u64) {
    let mut got = Vec::new();
    let mut acks = 0;
    for ms in 0..limit_ms {
        let now = Instant::from_millis(ms);
        c.handle_timeout(now);
        s.handle_timeout(now);
        for f in frames_of(c, now) {
            if std::env::var_os("TRACE").is_some() {
                eprintln!("{ms} device {:?} {:?}", numbers(&f), decode_v2(&f));
            }
            if keep(&numbers(&f)) {
                s.handle_input(now, &f);
            }
        }
        got.extend(
            s.received()
                .map(|r| u32::from_le_bytes(r.payload[..4].try_into().unwrap())),
        );
        let n = s.received().count();
        s.release(n);
        for f in frames_of(s, now) {
            acks += 1;
            if std::env::var_os("TRACE").is_some() {
                eprintln!("{ms} host #{acks} {:?}", decode_v2(&f));
            }
            if keep_ack(acks) {
                c.handle_input(now, &f);
            }
        }
        if c.unacked() == 0 {
            return (got, ms);
        }
    }
    panic!(
        "not done in {limit_ms} ms: unacked {}, {:?}",
        c.unacked(),
        c.stats()
    );
}

#[test]
fn a_hole_is_filled_by_sending_only_the_missing_record() {
    let (mut c, mut s) = pair_at(0);
    for i in 0..8 {
        c.send(&big(i)).unwrap();
    }
    let mut dropped = false;
    let (got, ms) = run_pair(
        &mut c,
        &mut s,
        |n| {
            let drop = n == [2] && !dropped;
            dropped |= drop;
            !drop
        },
        |_| true,
        10_000,
    );
    assert_eq!(got, (0..8).collect::<Vec<_>>(), "in order, each once");
    let st = c.stats();
    assert_eq!(
        (st.retransmissions, st.timeouts),
        (1, 0),
        "record 2 alone, without a timeout"
    );
    assert_eq!(s.stats().duplicates, 0);
    assert_eq!(s.stats().out_of_order, 5, "3 to 7 held out of order");
    assert!(ms < 5, "recovered at once, not after a timeout: {ms} ms");
}

#[test]
fn holes_at_both_edges_of_the_window_are_each_sent_once() {
    let (mut c, mut s) = pair_at(0);
    for i in 0..16 {
        c.send(&big(i)).unwrap();
    }
    let mut dropped = Vec::new();
    let (got, _) = run_pair(
        &mut c,
        &mut s,
        |n| {
            let drop = (n == [0] || n == [15]) && !dropped.contains(&n[0]);
            if drop {
                dropped.push(n[0]);
            }
            !drop
        },
        |_| true,
        10_000,
    );
    assert_eq!(got, (0..16).collect::<Vec<_>>());
    let st = c.stats();
    // The first by the selective acknowledgement (1 to 14 held), the last, which nothing
    // follows, by the timeout.
    assert_eq!((st.retransmissions, st.timeouts), (2, 1), "{st:?}");
    assert_eq!((s.stats().duplicates, s.stats().out_of_order), (0, 14));
}

#[test]
fn a_lost_acknowledgement_of_a_filled_hole_is_repaired() {
    use std::cell::Cell;
    let (mut c, mut s) = pair_at(0);
    for i in 0..6 {
        c.send(&big(i)).unwrap();
    }
    // Record 2 is lost once; when its retransmission fills the hole, the acknowledgement
    // reporting it is lost too.
    let sends_of_2 = Cell::new(0);
    let lost_after_fill = Cell::new(0u32);
    let (got, _) = run_pair(
        &mut c,
        &mut s,
        |n| {
            if n == [2] {
                sends_of_2.set(sends_of_2.get() + 1);
                if sends_of_2.get() == 2 {
                    lost_after_fill.set(1);
                }
                return sends_of_2.get() > 1;
            }
            true
        },
        |_| {
            let left = lost_after_fill.get();
            lost_after_fill.set(left.saturating_sub(1));
            left == 0
        },
        10_000,
    );
    assert_eq!(got, (0..6).collect::<Vec<_>>(), "delivered once, in order");
    let st = c.stats();
    assert_eq!(
        st.timeouts, 1,
        "the timeout repaired the lost acknowledgement: {st:?}"
    );
    assert_eq!(
        s.stats().duplicates,
        1,
        "record 2 sent a third time, a duplicate"
    );
    assert_eq!(st.retransmissions, 2, "record 2 only");
}

#[test]
fn selective_acknowledgement_works_across_the_sequence_wrap() {
    let first = u32::MAX - 3;
    let (mut c, mut s) = pair_at(first);
    for i in 0..10 {
        c.send(&big(i)).unwrap();
    }
    // Record numbers 2 and 6 are seq u32::MAX - 1 and 2: holes on both sides of the wrap.
    let mut dropped = Vec::new();
    let (got, _) = run_pair(
        &mut c,
        &mut s,
        |n| {
            let drop = (n == [2] || n == [6]) && !dropped.contains(&n[0]);
            if drop {
                dropped.push(n[0]);
            }
            !drop
        },
        |_| true,
        10_000,
    );
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(c.stats().retransmissions, 2);
    assert_eq!(c.next_seq(), first.wrapping_add(10));
}

#[test]
fn a_retransmission_lost_again_is_sent_again_without_waiting_for_the_timeout() {
    let (mut c, mut s) = pair_at(0);
    for i in 0..4 {
        c.send(&big(i)).unwrap();
    }
    let mut sends_of_1 = 0;
    let mut queued = 4;
    let mut c_ref = None::<()>;
    let _ = &mut c_ref;
    // Record 1 is lost twice; records keep coming, so the selective acknowledgements of
    // the later ones show the first retransmission lost.
    let mut keep = |n: &[u32]| {
        if n == [1] {
            sends_of_1 += 1;
            return sends_of_1 > 2;
        }
        true
    };
    let mut got = Vec::new();
    for ms in 0..1_000 {
        let now = Instant::from_millis(ms);
        if queued < 12 && c.can_send() {
            c.send(&big(queued)).unwrap();
            queued += 1;
        }
        c.handle_timeout(now);
        s.handle_timeout(now);
        for f in frames_of(&mut c, now) {
            if keep(&numbers(&f)) {
                s.handle_input(now, &f);
            }
        }
        got.extend(
            s.received()
                .map(|r| u32::from_le_bytes(r.payload[..4].try_into().unwrap())),
        );
        let n = s.received().count();
        s.release(n);
        for f in frames_of(&mut s, now) {
            c.handle_input(now, &f);
        }
        if queued == 12 && c.unacked() == 0 {
            break;
        }
    }
    assert_eq!(got, (0..12).collect::<Vec<_>>());
    let st = c.stats();
    assert_eq!(st.timeouts, 0, "no timeout: {st:?}");
    assert!(
        st.fast_retransmits >= 1,
        "a new round from the acknowledgements: {st:?}"
    );
    assert_eq!(st.retransmissions, 2, "record 1 twice, nothing else");
}

/// The timeout follows the measured round trip: near srtt + 4 rttvar + 25 ms on a link with
/// a 40 ms round trip, and a few tens of ms on one of 2 ms.
#[test]
fn the_timeout_is_measured_from_round_trips() {
    for one_way in [1u64, 20] {
        let (mut c, mut s) = pair_at(0);
        assert_eq!(c.rto_ms(), 200, "rto_initial_ms before a sample");
        // Frames in flight each way, delivered after `one_way` ms.
        let mut up: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut down: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut sent = 0;
        for ms in 0..3_000 {
            let now = Instant::from_millis(ms);
            if ms % 10 == 0 && sent < 100 && c.can_send() {
                c.send(&big(sent)).unwrap();
                sent += 1;
            }
            c.handle_timeout(now);
            s.handle_timeout(now);
            up.extend(
                frames_of(&mut c, now)
                    .into_iter()
                    .map(|f| (ms + one_way, f)),
            );
            while up.first().is_some_and(|(t, _)| *t <= ms) {
                s.handle_input(now, &up.remove(0).1);
            }
            let n = s.received().count();
            s.release(n);
            down.extend(
                frames_of(&mut s, now)
                    .into_iter()
                    .map(|f| (ms + one_way, f)),
            );
            while down.first().is_some_and(|(t, _)| *t <= ms) {
                c.handle_input(now, &down.remove(0).1);
            }
        }
        let rtt = c.round_trip_ms().expect("measured");
        assert!(
            rtt.abs_diff(2 * one_way as u32) <= 1,
            "{one_way}: srtt {rtt}"
        );
        let rto = c.rto_ms();
        assert!(
            rto >= rtt + 25 && rto <= rtt + 25 + 8,
            "{one_way}: rto {rto} for a steady round trip of {rtt}"
        );
        assert_eq!(c.stats().retransmissions, 0);
    }
}

/// The damage rule (11.8): on a line that garbles 1 % of bytes, 128-byte frames are lost
/// 70 % of the time, and the sender shrinks its frames to about one 16-byte record; on a
/// clean line it packs seven.
#[test]
fn frames_shrink_on_a_damaging_line_and_not_on_a_clean_one() {
    for (garble, want) in [(0.0, 7.0), (0.01, 1.5)] {
        let (mut c, mut s) = pair_128(2);
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut sent, total) = (0u32, 3_000u32);
        let mut got = Vec::new();
        let (mut frames, mut carried) = (0u32, 0usize);
        for ms in 0..200_000u64 {
            let now = Instant::from_millis(ms);
            while sent < total && c.can_send() {
                c.send(&record16(sent)).unwrap();
                sent += 1;
            }
            c.handle_timeout(now);
            s.handle_timeout(now);
            for mut f in frames_of(&mut c, now) {
                if let Some((r, _)) = data_records(&f) {
                    if sent > total / 2 {
                        frames += 1;
                        carried += r.len();
                    }
                }
                for b in f.iter_mut() {
                    if next() < garble {
                        *b ^= 0x5A;
                    }
                }
                s.handle_input(now, &f);
            }
            got.extend(s.received().map(|r| r.payload.to_vec()));
            let n = s.received().count();
            s.release(n);
            for f in frames_of(&mut s, now) {
                c.handle_input(now, &f);
            }
            if sent == total && c.unacked() == 0 {
                break;
            }
        }
        assert_eq!(got.len(), total as usize, "garble {garble}: every record");
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, r)| r[..] == record16(i as u32)),
            "in order"
        );
        let mean = carried as f64 / f64::from(frames);
        println!(
            "garble {garble}: {mean:.2} records a frame, {:?}",
            c.stats()
        );
        if garble == 0.0 {
            assert!(mean >= want - 0.5, "clean: {mean:.2} records a frame");
        } else {
            assert!(mean <= want, "damaging: {mean:.2} records a frame");
        }
    }
}

/// After `handle_timeout(t)` no deadline is at or before `t`: a delayed acknowledgement and a
/// frame waiting to be packed become due instead (found by the link_v2 fuzz target: a
/// driver that waits for `poll_timeout` would have spun).
#[test]
fn no_deadline_is_in_the_past_after_handle_timeout() {
    let (mut c, mut s) = pair_128(2);
    let now = Instant::from_millis(10);
    let mut buf = vec![0u8; 200];
    for i in 0..9 {
        c.send(&record16(i)).unwrap();
    }
    // A full frame without I goes; two records wait to be packed; the host owes a delayed
    // acknowledgement.
    let n = c.poll_transmit(now, &mut buf).unwrap();
    s.handle_input(now, &buf[..n]);
    s.release(7);
    assert_eq!(c.poll_transmit(now, &mut buf), None);
    assert_eq!(s.poll_transmit(now, &mut buf), None);
    for (link, late) in [(&mut c, now.plus(2)), (&mut s, now.plus(25))] {
        link.handle_timeout(late);
        let d = link.poll_timeout().expect("a deadline");
        assert!(d > late, "{d:?} after handle_timeout({late:?})");
        assert!(
            link.poll_transmit(late, &mut buf).is_some(),
            "what was due goes now"
        );
    }
}
