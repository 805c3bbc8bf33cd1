//! The link layer's rules, one scenario each, over a direct in-memory connection.

use tether_core::frame::{self, Decoder, Header, Kind};
use tether_core::link::{
    Config, ConfigError, Event, Instant, Link, LinkStorage, Phase, RejectCode, Role, SendError,
    Storage,
};

type Store = LinkStorage<8, 8, 96>;
type L = Link<Store>;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn device_with(f: impl FnOnce(&mut Config)) -> L {
    let mut c = Config::new(Role::Client, 0xD1);
    f(&mut c);
    Link::new(c, Store::new()).unwrap()
}

fn host() -> L {
    Link::new(Config::new(Role::Server, 0x51), Store::new()).unwrap()
}

/// All frames `from` wants to send now, each as its own byte vector.
fn drain<S: Storage>(from: &mut Link<S>, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; from.transmit_len()];
    let mut out = Vec::new();
    while let Some(n) = from.poll_transmit(now, &mut buf) {
        out.push(buf[..n].to_vec());
        assert!(out.len() < 1000, "poll_transmit must run dry");
    }
    out
}

fn kinds(frames: &[Vec<u8>]) -> Vec<Kind> {
    frames
        .iter()
        .map(|f| {
            let mut d = Decoder::new(vec![0u8; 100]);
            let mut i = &f[..];
            d.decode(&mut i).unwrap().unwrap().header.kind
        })
        .collect()
}

/// Moves frames both ways until neither side has anything to say (bounded).
fn shuttle(a: &mut L, b: &mut L, now: Instant) {
    for _ in 0..100 {
        let (ab, ba) = (drain(a, now), drain(b, now));
        if ab.is_empty() && ba.is_empty() {
            return;
        }
        ab.iter().for_each(|f| b.handle_input(now, f));
        ba.iter().for_each(|f| a.handle_input(now, f));
    }
    panic!("the links never went quiet");
}

fn connected_pair(device: &mut L, host: &mut L) {
    device.connect(at(0));
    host.connect(at(0));
    shuttle(device, host, at(0));
    assert_eq!(
        (device.phase(), host.phase()),
        (Phase::Established, Phase::Established)
    );
}

fn events(l: &mut L) -> Vec<Event> {
    std::iter::from_fn(|| l.poll_event()).collect()
}

fn take_all<S: Storage>(l: &mut Link<S>) -> Vec<(u32, Vec<u8>)> {
    let got: Vec<_> = l.received().map(|r| (r.seq, r.payload.to_vec())).collect();
    l.release(got.len());
    got
}

/// Connects `d` and `h` again at 2 ms and lets them talk until 10 ms; what `h` received.
fn reconnect_and_take(d: &mut L, h: &mut L) -> Vec<(u32, Vec<u8>)> {
    d.connect(at(2));
    h.connect(at(2));
    let mut got = Vec::new();
    for now in 2..10 {
        shuttle(d, h, at(now));
        got.extend(take_all(h));
    }
    got
}

#[test]
fn handshake_says_connection_established_on_both_sides() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    assert_eq!(events(&mut d), [Event::Connected { resumed: false }]);
    assert_eq!(events(&mut h), [Event::Connected { resumed: false }]);
    assert_eq!(
        (d.peer_session(), h.peer_session()),
        (Some(0x51), Some(0xD1))
    );
}

#[test]
fn window_1_is_stop_and_wait() {
    let (mut d, mut h) = (device_with(|c| c.window = 1), host());
    connected_pair(&mut d, &mut h);
    for i in 0..3u8 {
        d.send(&[i]).unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        let out = drain(&mut d, at(1));
        assert_eq!(kinds(&out), [Kind::Data], "exactly one record in flight");
        out.iter().for_each(|f| h.handle_input(at(1), f));
        assert!(
            drain(&mut d, at(1)).is_empty(),
            "nothing more before the acknowledgement"
        );
        order.extend(take_all(&mut h));
        drain(&mut h, at(1))
            .iter()
            .for_each(|f| d.handle_input(at(1), f));
    }
    assert_eq!(order, [(0, vec![0]), (1, vec![1]), (2, vec![2])]);
    assert_eq!(d.unacked(), 0);
}

#[test]
fn window_n_keeps_n_frames_in_flight() {
    let (mut d, mut h) = (device_with(|c| c.window = 4), host());
    connected_pair(&mut d, &mut h);
    for i in 0..8u8 {
        d.send(&[i]).unwrap();
    }
    assert_eq!(kinds(&drain(&mut d, at(1))), [Kind::Data; 4]);
    assert!(drain(&mut d, at(1)).is_empty());
}

#[test]
fn a_record_is_acknowledged_only_after_it_is_released() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    events(&mut d);
    let seq = d.send(b"reading").unwrap();
    shuttle(&mut d, &mut h, at(1));
    assert_eq!(
        h.recv().map(|r| r.payload.to_vec()),
        Some(b"reading".to_vec())
    );
    assert_eq!(
        d.unacked(),
        1,
        "received but not released: not acknowledged"
    );
    assert!(events(&mut d).is_empty());
    // The sender knows it arrived, so its retransmission timer does not fire meanwhile.
    d.handle_timeout(at(900));
    assert!(!kinds(&drain(&mut d, at(900))).contains(&Kind::Data));
    assert_eq!(d.stats().retransmissions, 0);
    h.release(1);
    shuttle(&mut d, &mut h, at(2));
    assert_eq!(d.unacked(), 0);
    assert_eq!(events(&mut d), [Event::Delivered { up_to: seq + 1 }]);
}

#[test]
fn a_full_buffer_is_would_block_and_an_oversized_record_is_refused() {
    let mut d = device_with(|_| {});
    for i in 0..8u8 {
        d.send(&[i]).unwrap();
    }
    assert!(!d.can_send());
    assert_eq!(d.send(b"x"), Err(SendError::WouldBlock));
    let mut e = device_with(|_| {});
    assert_eq!(e.send(&[0u8; 79]), Err(SendError::TooLong { max: 78 }));
}

#[test]
fn resumes_after_a_cut_at_every_point_without_loss_or_duplicates() {
    // Count the frames of an uncut transfer, then cut after each of them in turn.
    let records: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 1 + usize::from(i)]).collect();
    let commands: Vec<Vec<u8>> = (0..3u8).map(|i| vec![0xC0 + i]).collect();
    for cut_after in 0..60 {
        let (mut d, mut h) = (device_with(|c| c.window = 3), host());
        d.connect(at(0));
        h.connect(at(0));
        let (mut got, mut cmds) = (Vec::new(), Vec::new());
        let (mut next_rec, mut next_cmd) = (0, 0);
        let mut moved = 0;
        let mut reconnected = false;
        let mut now = 0;
        for _round in 0..400 {
            now += 10;
            let t = at(now);
            while next_rec < records.len() && d.can_send() {
                d.send(&records[next_rec]).unwrap();
                next_rec += 1;
            }
            while next_cmd < commands.len() && h.can_send() {
                h.send(&commands[next_cmd]).unwrap();
                next_cmd += 1;
            }
            d.handle_timeout(t);
            h.handle_timeout(t);
            let (ab, ba) = (drain(&mut d, t), drain(&mut h, t));
            for (f, to_host) in ab
                .iter()
                .map(|f| (f, true))
                .chain(ba.iter().map(|f| (f, false)))
            {
                if !reconnected && moved == cut_after {
                    // The connection breaks: this frame and the rest of the round are
                    // lost. Both ends reconnect.
                    reconnected = true;
                    now += 100;
                    d.connect(at(now));
                    h.connect(at(now));
                    break;
                }
                moved += 1;
                if to_host {
                    h.handle_input(t, f);
                } else {
                    d.handle_input(t, f);
                }
            }
            got.extend(take_all(&mut h));
            cmds.extend(take_all(&mut d));
            if got.len() == records.len()
                && cmds.len() == commands.len()
                && d.unacked() == 0
                && h.unacked() == 0
            {
                break;
            }
        }
        let want: Vec<(u32, Vec<u8>)> = records
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| (i as u32, r))
            .collect();
        assert_eq!(got, want, "records, cut after frame {cut_after}");
        let want: Vec<(u32, Vec<u8>)> = commands
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| (i as u32, r))
            .collect();
        assert_eq!(cmds, want, "commands, cut after frame {cut_after}");
        assert_eq!(
            (d.unacked(), h.unacked()),
            (0, 0),
            "cut after frame {cut_after}"
        );
    }
}

#[test]
fn a_resumed_session_replays_only_what_the_peer_lacks() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    events(&mut d);
    for i in 0..4u8 {
        d.send(&[i]).unwrap();
    }
    // Two records reach the host, which releases them; the acknowledgement is lost, and so
    // are the other two records.
    let out = drain(&mut d, at(1));
    out[..2].iter().for_each(|f| h.handle_input(at(1), f));
    assert_eq!(take_all(&mut h).len(), 2);
    drain(&mut h, at(1)); // lost
    d.connect(at(2));
    h.connect(at(2));
    // HELLO, WELCOME: the device learns the host has 0 and 1, and sends only 2 and 3.
    let hello = drain(&mut d, at(2));
    hello.iter().for_each(|f| h.handle_input(at(2), f));
    let welcome = drain(&mut h, at(2));
    welcome.iter().for_each(|f| d.handle_input(at(2), f));
    assert_eq!(
        events(&mut d),
        [
            Event::Connected { resumed: true },
            Event::Delivered { up_to: 2 }
        ]
    );
    let resent = drain(&mut d, at(2));
    assert_eq!(
        kinds(&resent),
        [Kind::Data, Kind::Data],
        "the acknowledgement rides along"
    );
    resent.iter().for_each(|f| h.handle_input(at(2), f));
    assert_eq!(take_all(&mut h), [(2, vec![2]), (3, vec![3])]);
    assert_eq!(h.stats().duplicates, 0);
}

#[test]
fn a_restarted_peer_is_reported_and_never_answered_with_a_stale_ack() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    h.send(b"cmd").unwrap();
    for i in 0..5u8 {
        d.send(&[i]).unwrap();
    }
    shuttle(&mut d, &mut h, at(1));
    // The host released three and still holds two when the device reboots.
    let first: Vec<_> = h.received().take(3).map(|r| r.seq).collect();
    h.release(3);
    assert_eq!(first, [0, 1, 2]);
    events(&mut h);
    // A new device instance: new session, numbering from scratch, same host link.
    let mut d2 = device_with(|c| c.session = 0xD2);
    for i in 10..14u8 {
        d2.send(&[i]).unwrap();
    }
    d2.connect(at(5));
    h.connect(at(5));
    let mut host_got = Vec::new();
    for now in 5..40 {
        shuttle(&mut d2, &mut h, at(now));
        if now == 20 {
            // Credit stays closed until the old session's records are released, so the
            // two numberings never mix.
            let held: Vec<_> = h.received().map(|r| (r.seq, r.payload.to_vec())).collect();
            assert_eq!(held, [(3, vec![3]), (4, vec![4])]);
        }
        if now >= 20 {
            host_got.extend(take_all(&mut h));
            take_all(&mut d2);
        }
    }
    // The old session's two held records first, then the new session's, each once.
    let want: Vec<(u32, Vec<u8>)> = vec![
        (3, vec![3]),
        (4, vec![4]),
        (0, vec![10]),
        (1, vec![11]),
        (2, vec![12]),
        (3, vec![13]),
    ];
    assert_eq!(host_got, want);
    let ev = events(&mut h);
    // The command was sent to the old instance and never acknowledged: in doubt, and sent
    // again to the new instance.
    assert!(ev.contains(&Event::PeerRestarted { in_doubt: 1 }), "{ev:?}");
    assert_eq!(
        d2.stats().spurious_acks,
        0,
        "no ack from the old numbering reached the new device"
    );
    assert_eq!((d2.unacked(), h.unacked()), (0, 0));
    assert_eq!(d2.stats().records_in, 1, "the command, once");
}

#[test]
fn a_version_mismatch_is_refused_with_a_reason_the_user_can_read() {
    let mut h = host();
    h.connect(at(0));
    // A HELLO from a future version 2 peer.
    let mut wire = vec![0u8; 64];
    let n = frame::encode(
        &Header {
            kind: Kind::Hello,
            ..Header::default()
        },
        &[2, 0, 1, 2, 3],
        &mut wire,
    )
    .unwrap();
    h.handle_input(at(0), &wire[..n]);
    assert_eq!(h.phase(), Phase::Rejected);
    assert!(events(&mut h).contains(&Event::Rejected { by_us: true }));
    let reply = drain(&mut h, at(0));
    assert_eq!(kinds(&reply), [Kind::Reject]);
    // What that peer's user would read.
    let mut d = device_with(|_| {});
    d.connect(at(0));
    drain(&mut d, at(0));
    reply.iter().for_each(|f| d.handle_input(at(0), f));
    let r = d.reject().expect("a reason");
    assert_eq!(r.code(), RejectCode::Version);
    assert_eq!(
        r.text(),
        "protocol version 2 is not supported; this side speaks 1"
    );
}

#[test]
fn a_capacity_mismatch_is_refused() {
    let mut big = Link::new(
        Config::new(Role::Client, 7),
        LinkStorage::<2, 2, 300>::new(),
    )
    .unwrap();
    let mut h = host();
    big.connect(at(0));
    h.connect(at(0));
    let mut buf = vec![0u8; big.transmit_len()];
    for _ in 0..10 {
        while let Some(n) = big.poll_transmit(at(0), &mut buf) {
            h.handle_input(at(0), &buf[..n]);
        }
        for f in drain(&mut h, at(0)) {
            big.handle_input(at(0), &f);
        }
    }
    assert_eq!(big.phase(), Phase::Rejected);
    let r = big.reject().unwrap();
    assert_eq!(
        (r.code(), r.text()),
        (
            RejectCode::Capacity,
            "records up to 282 bytes; accepted: 78"
        )
    );
    // Lowering what the big side sends makes it acceptable.
    let mut cfg = Config::new(Role::Client, 7);
    cfg.max_send = 40;
    let mut fits = Link::new(cfg, LinkStorage::<2, 2, 300>::new()).unwrap();
    let mut h = host();
    fits.connect(at(0));
    h.connect(at(0));
    for _ in 0..10 {
        while let Some(n) = fits.poll_transmit(at(0), &mut buf) {
            h.handle_input(at(0), &buf[..n]);
        }
        for f in drain(&mut h, at(0)) {
            fits.handle_input(at(0), &f);
        }
    }
    assert_eq!(fits.phase(), Phase::Established);
}

#[test]
fn handshake_retries_with_backoff_until_answered() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    d.connect(at(0));
    h.connect(at(0));
    let mut hellos = 0;
    let mut now = 0;
    while d.phase() != Phase::Established && now < 4_000 {
        let out = drain(&mut d, at(now));
        hellos += out.len();
        if hellos >= 3 {
            out.iter().for_each(|f| h.handle_input(at(now), f));
            shuttle(&mut d, &mut h, at(now));
        }
        now = d.poll_timeout().unwrap().millis();
        d.handle_timeout(at(now));
    }
    assert_eq!(d.phase(), Phase::Established);
    assert!(hellos >= 3);
    // 250 + 500 + 1000 ms of backoff before the third HELLO.
    assert!(now >= 1_750, "{now}");
}

#[test]
fn a_silent_peer_is_declared_dead_within_the_bound() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    d.send(b"x").unwrap();
    let bound = d.config().dead_after_ms as u64;
    let mut now = 0;
    while d.phase() != Phase::Dead {
        drain(&mut d, at(now)); // into the void
        now = d.poll_timeout().expect("a deadline while alive").millis();
        d.handle_timeout(at(now));
        assert!(now <= bound, "dead at {now} > {bound}");
    }
    assert!(events(&mut d).contains(&Event::PeerDead));
    assert_eq!(d.unacked(), 1, "the record is kept for the next connection");
}

#[test]
fn an_idle_link_stays_alive_on_pings() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    for now in (0..60_000).step_by(100) {
        d.handle_timeout(at(now));
        h.handle_timeout(at(now));
        shuttle(&mut d, &mut h, at(now));
    }
    assert_eq!(
        (d.phase(), h.phase()),
        (Phase::Established, Phase::Established)
    );
    assert!(
        d.stats().frames_out >= 50,
        "pings were sent: {}",
        d.stats().frames_out
    );
}

#[test]
fn a_graceful_close_flushes_what_is_in_flight() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    for i in 0..5u8 {
        d.send(&[i]).unwrap();
    }
    d.close();
    assert_eq!(d.send(b"late"), Err(SendError::Closed));
    let mut got = Vec::new();
    for now in 0..20 {
        shuttle(&mut d, &mut h, at(now));
        got.extend(take_all(&mut h));
    }
    assert_eq!(got.len(), 5);
    assert_eq!((d.phase(), h.phase()), (Phase::Closed, Phase::Closed));
    assert!(events(&mut d).contains(&Event::Closed));
    assert!(events(&mut h).contains(&Event::Closed));
}

#[test]
fn a_credit_limit_of_zero_stops_the_peer_without_dropping() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    h.set_credit_limit(Some(0));
    shuttle(&mut d, &mut h, at(1));
    for i in 0..3u8 {
        d.send(&[i]).unwrap();
    }
    for now in (1..3_000).step_by(50) {
        d.handle_timeout(at(now));
        h.handle_timeout(at(now));
        shuttle(&mut d, &mut h, at(now));
    }
    assert_eq!(h.received().count(), 0, "nothing sent against zero credit");
    assert_eq!(h.stats().overruns, 0);
    h.set_credit_limit(None);
    shuttle(&mut d, &mut h, at(3_000));
    assert_eq!(take_all(&mut h).len(), 3);
}

#[test]
fn bad_configurations_are_refused() {
    let c = Config::new(Role::Client, 0);
    assert_eq!(
        Link::new(c, Store::new()).err(),
        Some(ConfigError::ZeroSession)
    );
    let mut c = Config::new(Role::Client, 1);
    c.window = 9;
    assert_eq!(
        Link::new(c, Store::new()).err(),
        Some(ConfigError::Window(9))
    );
    let c = Config::new(Role::Client, 1);
    assert_eq!(
        Link::new(c, LinkStorage::<1, 1, 83>::new()).err(),
        Some(ConfigError::FrameSize(83))
    );
    let mut c = Config::new(Role::Client, 1);
    c.dead_after_ms = c.keepalive_ms;
    assert_eq!(Link::new(c, Store::new()).err(), Some(ConfigError::Timers));
}

#[test]
fn a_lost_close_reply_is_answered_again() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    d.close();
    let close = drain(&mut d, at(1));
    assert_eq!(kinds(&close), [Kind::Close]);
    close.iter().for_each(|f| h.handle_input(at(1), f));
    let reply = drain(&mut h, at(1));
    assert_eq!(kinds(&reply), [Kind::Close]);
    assert_eq!(h.phase(), Phase::Closed);
    // The reply is lost. The device asks again after its timeout; the host answers again.
    let mut now = 1;
    while d.phase() != Phase::Closed && now < 3_000 {
        now = d.poll_timeout().expect("closing has a deadline").millis();
        d.handle_timeout(at(now));
        shuttle(&mut d, &mut h, at(now));
    }
    assert_eq!(d.phase(), Phase::Closed, "closed, not dead, at {now} ms");
    assert!(events(&mut d).contains(&Event::Closed));
}

#[test]
fn a_device_rebooted_with_the_same_session_value_is_treated_as_restarted() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    for i in 0..5u8 {
        d.send(&[i]).unwrap();
    }
    shuttle(&mut d, &mut h, at(1));
    assert_eq!(take_all(&mut h).len(), 5);
    shuttle(&mut d, &mut h, at(1));
    events(&mut h);
    // Rebooted firmware with a fixed session value: it knows nothing of the host and
    // numbers its records from 0 again.
    let mut d2 = device_with(|_| {});
    for i in 10..13u8 {
        d2.send(&[i]).unwrap();
    }
    let got = reconnect_and_take(&mut d2, &mut h);
    assert_eq!(
        got,
        [(0, vec![10]), (1, vec![11]), (2, vec![12])],
        "nothing dropped as a duplicate"
    );
    assert_eq!(d2.unacked(), 0);
    assert_eq!(d2.stats().spurious_acks, 0);
    assert!(events(&mut h).contains(&Event::PeerRestarted { in_doubt: 0 }));
}

#[test]
fn a_relay_that_lost_its_link_but_continues_the_numbering_is_resumed_not_restarted() {
    // A relay (tether bridge) forwards a device's records to the host under the device's
    // session value, numbered as the device numbers them.
    let (mut r, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut r, &mut h);
    for i in 0..5u8 {
        r.send(&[i]).unwrap();
    }
    // The host gets all five and releases them, but every acknowledgement is lost with the
    // relay, which crashes: the device still holds records 3 and 4 and sends them again
    // through a new relay.
    drain(&mut r, at(1))
        .iter()
        .for_each(|f| h.handle_input(at(1), f));
    assert_eq!(take_all(&mut h).len(), 5);
    drain(&mut h, at(1)); // lost
    events(&mut h);
    let mut r2 = device_with(|c| {
        c.first_seq = 3;
        // The device named its old relay: it kept its numbering, so the new relay says so.
        c.continues_from = 0x0B1D_6E01;
    });
    for i in [3u8, 4, 5] {
        r2.send(&[i]).unwrap();
    }
    let got = reconnect_and_take(&mut r2, &mut h);
    assert_eq!(
        got,
        [(5, vec![5])],
        "records 3 and 4 are duplicates, not new records"
    );
    assert_eq!(r2.unacked(), 0);
    let ev = events(&mut h);
    assert!(ev.contains(&Event::Connected { resumed: true }), "{ev:?}");
    assert!(
        !ev.iter().any(|e| matches!(e, Event::PeerRestarted { .. })),
        "{ev:?}"
    );
}

#[test]
fn naming_a_peer_does_not_resume_beyond_what_the_host_has() {
    // The same relay, but its numbering starts past what the host received: nothing can be
    // resumed (a gap would be acknowledged), so the host takes the new numbering.
    let (mut r, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut r, &mut h);
    r.send(&[0]).unwrap();
    shuttle(&mut r, &mut h, at(1));
    assert_eq!(take_all(&mut h).len(), 1);
    events(&mut h);
    let mut r2 = device_with(|c| {
        c.first_seq = 9;
        c.continues_from = 0x0B1D_6E01;
    });
    r2.send(&[9]).unwrap();
    let got = reconnect_and_take(&mut r2, &mut h);
    assert_eq!(got, [(9, vec![9])]);
    assert!(events(&mut h).contains(&Event::Connected { resumed: false }));
}

#[test]
fn a_lost_release_acknowledgement_is_recovered_by_a_probe_before_the_keepalive() {
    let (mut d, mut h) = (device_with(|c| c.window = 2), host());
    connected_pair(&mut d, &mut h);
    for i in 0..4u8 {
        d.send(&[i]).unwrap();
    }
    // Two records arrive; the host acknowledges their arrival, then releases them, and
    // that release acknowledgement is lost.
    drain(&mut d, at(1))
        .iter()
        .for_each(|f| h.handle_input(at(1), f));
    drain(&mut h, at(1))
        .iter()
        .for_each(|f| d.handle_input(at(1), f));
    assert_eq!(take_all(&mut h).len(), 2);
    drain(&mut h, at(2)); // lost
    while d.unacked() > 2 || h.received().count() < 2 {
        let now = d.poll_timeout().unwrap().millis();
        assert!(now < 1_000, "recovered only at {now} ms");
        d.handle_timeout(at(now));
        shuttle(&mut d, &mut h, at(now));
    }
    assert!(d.stats().timeouts >= 1);
}

#[test]
fn an_ack_frame_without_the_ack_flag_is_ignored() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    d.send(b"x").unwrap();
    drain(&mut d, at(1));
    let mut wire = vec![0u8; 64];
    let bare = Header {
        kind: Kind::Ack,
        seq: 1,
        ack: 1,
        credit: 8,
        ..Header::default()
    };
    let n = frame::encode(&bare, &[], &mut wire).unwrap();
    d.handle_input(at(1), &wire[..n]);
    assert_eq!(d.unacked(), 1);
    assert_eq!(d.stats().unexpected, 1);
}

#[test]
fn two_closed_sides_never_keep_answering_each_other() {
    // The initiator's retry crosses the reply: both end Closed, and the stray CLOSE gets
    // at most one answer, which the initiator does not answer again.
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    d.close();
    let first = drain(&mut d, at(1));
    first.iter().for_each(|f| h.handle_input(at(1), f));
    let reply = drain(&mut h, at(1)); // delayed
    d.handle_timeout(at(400)); // the retry fires
    let retry = drain(&mut d, at(400));
    assert_eq!(kinds(&retry), [Kind::Close]);
    reply.iter().for_each(|f| d.handle_input(at(401), f));
    assert_eq!(d.phase(), Phase::Closed);
    retry.iter().for_each(|f| h.handle_input(at(402), f));
    let mut exchanged = 0;
    for now in 402..420 {
        let (a, b) = (drain(&mut d, at(now)), drain(&mut h, at(now)));
        exchanged += a.len() + b.len();
        a.iter().for_each(|f| h.handle_input(at(now), f));
        b.iter().for_each(|f| d.handle_input(at(now), f));
    }
    assert!(
        exchanged <= 1,
        "{exchanged} frames exchanged after both closed"
    );
    assert_eq!((d.phase(), h.phase()), (Phase::Closed, Phase::Closed));
}

/// The HELLO or WELCOME payload of the first such frame in `frames`.
fn handshake_payload(frames: &[Vec<u8>], kind: Kind) -> Vec<u8> {
    frames
        .iter()
        .find_map(|f| {
            let mut d = Decoder::new(vec![0u8; 2048]);
            let mut i = &f[..];
            let fr = d.decode(&mut i)?.ok()?;
            (fr.header.kind == kind).then(|| fr.payload.to_vec())
        })
        .expect("the frame is there")
}

/// PROTOCOL.md 9.5.1: a server announces in its WELCOME the smaller of its own `max_send`
/// and the client's `max_payload`, so a host with large buffers and default options takes
/// a device with small ones, and sends it only what it accepts.
#[test]
fn a_default_server_with_large_buffers_accepts_a_small_device() {
    let mut big = Link::new(
        Config::new(Role::Server, 0x51),
        LinkStorage::<4, 4, 1024>::new(),
    )
    .unwrap();
    let mut d = device_with(|_| {});
    d.connect(at(0));
    big.connect(at(0));
    let mut welcome = Vec::new();
    for _ in 0..10 {
        let hello = drain(&mut d, at(0));
        hello.iter().for_each(|f| big.handle_input(at(0), f));
        let answer = drain(&mut big, at(0));
        if welcome.is_empty() && kinds(&answer).contains(&Kind::Welcome) {
            welcome = handshake_payload(&answer, Kind::Welcome);
        }
        answer.iter().for_each(|f| d.handle_input(at(0), f));
    }
    assert_eq!(
        (d.phase(), big.phase()),
        (Phase::Established, Phase::Established),
        "refused: {:?} / {:?}",
        d.reject(),
        big.reject()
    );
    assert_eq!(
        u16::from_le_bytes([welcome[24], welcome[25]]),
        78,
        "the WELCOME's max_send is the device's max_payload"
    );
    assert_eq!(big.max_send(), 78);
    assert_eq!(big.send(&[1u8; 79]), Err(SendError::TooLong { max: 78 }));
    big.send(&[2u8; 78]).unwrap();
    let mut got = Vec::new();
    for now in 1..5 {
        for f in drain(&mut big, at(now)) {
            d.handle_input(at(now), &f);
        }
        for f in drain(&mut d, at(now)) {
            big.handle_input(at(now), &f);
        }
        got.extend(take_all(&mut d));
    }
    assert_eq!(got, [(0, vec![2u8; 78])]);
}

/// PROTOCOL.md 9.5.2: what a server cannot adapt to is a record it already queued that is
/// longer than the client accepts; it refuses with a reason naming that record.
#[test]
fn a_server_holding_a_record_too_long_for_the_device_refuses_it() {
    let mut big = Link::new(
        Config::new(Role::Server, 0x51),
        LinkStorage::<4, 4, 1024>::new(),
    )
    .unwrap();
    big.send(&[0u8; 10]).unwrap();
    big.send(&[0u8; 200]).unwrap();
    let mut d = device_with(|_| {});
    d.connect(at(0));
    big.connect(at(0));
    for _ in 0..10 {
        drain(&mut d, at(0))
            .iter()
            .for_each(|f| big.handle_input(at(0), f));
        drain(&mut big, at(0))
            .iter()
            .for_each(|f| d.handle_input(at(0), f));
    }
    assert_eq!((d.phase(), big.phase()), (Phase::Rejected, Phase::Rejected));
    let r = d.reject().expect("a reason");
    assert_eq!(
        (r.code(), r.text()),
        (
            RejectCode::Capacity,
            "this side sends up to 200 bytes; accepted: 78"
        )
    );
}

/// PROTOCOL.md 9.4, 9.12: a REJECT and a WELCOME due are flags, and the last HELLO decides:
/// a malformed HELLO followed by an acceptable one before the server sends anything is
/// answered with a WELCOME alone, so the client is not refused after all.
#[test]
fn an_acceptable_hello_after_a_refused_one_is_answered_with_a_welcome_only() {
    let mut h = host();
    h.connect(at(0));
    let mut wire = vec![0u8; 64];
    let n = frame::encode(
        &Header {
            kind: Kind::Hello,
            ..Header::default()
        },
        &[1, 0, 1, 2, 3],
        &mut wire,
    )
    .unwrap();
    let mut d = device_with(|_| {});
    d.connect(at(0));
    let mut input = wire[..n].to_vec();
    drain(&mut d, at(0)).iter().for_each(|f| input.extend(f));
    h.handle_input(at(0), &input);
    let answer = drain(&mut h, at(0));
    assert_eq!(kinds(&answer), [Kind::Welcome, Kind::Ack]);
    answer.iter().for_each(|f| d.handle_input(at(0), f));
    assert_eq!(
        (d.phase(), h.phase()),
        (Phase::Established, Phase::Established)
    );
}

/// PROTOCOL.md 9.7, the NACK rule: an out-of-order record makes a NACK due while none was
/// sent at the present `rx_next`, or when it is at or below `nack_trigger`, and only then
/// moves `nack_trigger`. Records above it after the NACK was sent move nothing, so a
/// later one below them but above the trigger makes no NACK (had every out-of-order record
/// moved the trigger, record 4 after record 5 would make one).
#[test]
fn the_nack_rule_moves_its_trigger_only_when_a_nack_becomes_due() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    drain(&mut h, at(1));
    let data = |seq: u32| {
        let mut out = vec![0u8; 64];
        let n = frame::encode(
            &Header {
                kind: Kind::Data,
                seq,
                ..Header::default()
            },
            &[seq as u8],
            &mut out,
        )
        .unwrap();
        out.truncate(n);
        out
    };
    let nacks = |frames: &[Vec<u8>]| {
        frames
            .iter()
            .filter(|f| {
                let mut dec = Decoder::new(vec![0u8; 100]);
                let mut i = &f[..];
                let fr = dec.decode(&mut i).unwrap().unwrap();
                fr.header.kind == Kind::Ack
                    && fr.header.flags.contains(tether_core::frame::Flags::NACK)
            })
            .count()
    };
    // Record 0 is lost; 1, 2 and 3 arrive before the host transmits: one NACK, trigger 3.
    for s in 1..=3 {
        h.handle_input(at(2), &data(s));
    }
    assert_eq!(nacks(&drain(&mut h, at(2))), 1);
    // The rest of the burst, 5 then 4: above the trigger, no NACK.
    h.handle_input(at(3), &data(5));
    h.handle_input(at(3), &data(4));
    assert_eq!(
        nacks(&drain(&mut h, at(3))),
        0,
        "4 and 5 are above the trigger 3"
    );
    // The sender went back and 0 was lost again: 3 (at the trigger) makes the next NACK.
    h.handle_input(at(4), &data(3));
    assert_eq!(nacks(&drain(&mut h, at(4))), 1);
    // Now the trigger is 3 again and a NACK was sent at rx_next 0: 2 makes one, 4 none.
    h.handle_input(at(5), &data(4));
    assert_eq!(nacks(&drain(&mut h, at(5))), 0);
    h.handle_input(at(5), &data(2));
    assert_eq!(nacks(&drain(&mut h, at(5))), 1);
    assert_eq!(h.received().count(), 0, "nothing beyond the gap is held");
}

/// PROTOCOL.md 9.2 and 9.9: an acknowledgement is ordered counted from `tx_base`. Here
/// `rel ≤ rcv ≤ snd_max` holds pair by pair (each step under 2^31) while `rcv` is 2^31 and
/// more beyond anything sent: it is spurious, and nothing is forgotten. (Taken pair by
/// pair it freed 2^30 of 8 slots: found by the `link` fuzz target.)
#[test]
fn an_acknowledgement_that_goes_round_the_sequence_space_is_spurious() {
    let (mut d, mut h) = (device_with(|c| c.first_seq = 0), host());
    connected_pair(&mut d, &mut h);
    d.send(b"a").unwrap();
    d.send(b"b").unwrap();
    drain(&mut d, at(1));
    let mut wire = vec![0u8; 64];
    let forged = Header {
        kind: Kind::Ack,
        flags: frame::Flags::ACK,
        seq: 0xE000_0000,
        ack: 0x7000_0000,
        credit: 8,
    };
    let n = frame::encode(&forged, &[], &mut wire).unwrap();
    d.handle_input(at(1), &wire[..n]);
    assert_eq!(d.stats().spurious_acks, 1);
    assert_eq!(d.unacked(), 2, "both records are kept");
    // The link still works: the host takes both records.
    d.handle_timeout(at(1000));
    let mut got = Vec::new();
    for now in 1000..1010 {
        shuttle(&mut d, &mut h, at(now));
        got.extend(take_all(&mut h).into_iter().map(|(_, p)| p));
    }
    assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
}

/// The same in a HELLO (9.5): a device naming the host whose `rx_released` and `rx_next`
/// go round the space from the host's `tx_base` is treated as one that starts again from
/// it, not as one that has records the host never sent.
#[test]
fn a_hello_whose_positions_go_round_the_sequence_space_is_not_resumed_from() {
    let (mut d, mut h) = (device_with(|_| {}), host());
    connected_pair(&mut d, &mut h);
    events(&mut h);
    h.send(b"kept").unwrap();
    drain(&mut h, at(1));
    d.connect(at(2));
    let mut hello = handshake_payload(&drain(&mut d, at(2)), Kind::Hello);
    // The host's tx_base is 0 (its first_seq); pair by pair 0 <= 0x7F00_0000 <= 0xFE00_0000
    // <= snd_max = 1.
    hello[6..10].copy_from_slice(&0x51u32.to_le_bytes());
    hello[14..18].copy_from_slice(&0xFE00_0000u32.to_le_bytes());
    hello[18..22].copy_from_slice(&0x7F00_0000u32.to_le_bytes());
    let mut wire = vec![0u8; 128];
    let header = Header {
        kind: Kind::Hello,
        ..Header::default()
    };
    let n = frame::encode(&header, &hello, &mut wire).unwrap();
    h.handle_input(at(2), &wire[..n]);
    assert_eq!(h.phase(), Phase::Established);
    assert_eq!(h.unacked(), 1, "the record the device never had is kept");
}
