//! `link::HelloView`: a server reads a new connection's HELLO once, with the core's checks,
//! before it picks the link the connection belongs to (PROTOCOL.md 9.4.2, 9.5.1).

use tether_core::frame::{Decoder, Kind};
use tether_core::link::{Config, HelloView, Instant, Link, LinkStorage, Role};

/// The first frame a client link sends: its HELLO's payload.
fn hello_of(cfg: Config) -> Vec<u8> {
    let mut link = Link::new(cfg, LinkStorage::<4, 4, 128>::new()).unwrap();
    link.connect(Instant::from_millis(0));
    let mut out = [0u8; 256];
    let n = link
        .poll_transmit(Instant::from_millis(0), &mut out)
        .expect("a HELLO");
    let mut decoder = Decoder::new([0u8; 256]);
    let mut input = &out[..n];
    let frame = decoder.decode(&mut input).unwrap().unwrap();
    assert_eq!(frame.header.kind, Kind::Hello);
    frame.payload.to_vec()
}

#[test]
fn a_hello_is_read_once_with_every_field_the_server_needs() {
    let mut cfg = Config::new(Role::Client, 0xABCD_0001);
    cfg.first_seq = 4_000_000_000;
    cfg.max_send = 100;
    let payload = hello_of(cfg);
    let h = HelloView::parse(&payload).expect("a well-formed HELLO");
    assert_eq!(h.session, 0xABCD_0001);
    assert_eq!(h.peer_session, 0, "a first HELLO names no server session");
    assert_eq!(h.tx_base, 4_000_000_000);
    assert_eq!(h.max_send, 100);
    assert_eq!(h.key_id, None);
}

#[test]
fn anything_but_a_well_formed_hello_of_this_version_is_none() {
    let payload = hello_of(Config::new(Role::Client, 7));
    let mut other_version = payload.clone();
    other_version[0] = other_version[0].wrapping_add(1);
    let mut reserved = payload.clone();
    reserved[1] = 1;
    let mut zero_session = payload.clone();
    zero_session[2..6].copy_from_slice(&[0; 4]);
    for (what, p) in [
        ("another version", other_version),
        ("the reserved byte set", reserved),
        ("session 0", zero_session),
        ("cut short", payload[..payload.len() - 1].to_vec()),
        ("empty", Vec::new()),
    ] {
        assert_eq!(HelloView::parse(&p), None, "{what}");
    }
}
