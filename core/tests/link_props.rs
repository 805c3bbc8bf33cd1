//! Property test: random schedules of sends, releases, deliveries (some dropped or
//! corrupted), timeouts and cuts. Throughout, what each application has received is a
//! prefix of what the other sent (in order, once, intact) and buffers stay within their
//! slots; once the channel heals, everything arrives.

use std::collections::VecDeque;

use proptest::prelude::*;
use tether_core::link::{Config, Instant, Link, LinkStorage, Phase, Role};

type L = Link<LinkStorage<4, 4, 100>>;

#[derive(Debug, Clone)]
enum Op {
    SendDevice,
    SendHost,
    /// Moves up to `count` frames in one direction; `fate` per frame: 0 deliver, 1 drop,
    /// 2 flip a bit.
    Deliver {
        to_host: bool,
        count: usize,
        fate: u8,
        bit: u16,
    },
    ReleaseHost(usize),
    ReleaseDevice(usize),
    Advance(u32),
    Cut,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::SendDevice),
        1 => Just(Op::SendHost),
        6 => (any::<bool>(), 1usize..6, prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)], any::<u16>())
            .prop_map(|(to_host, count, fate, bit)| Op::Deliver { to_host, count, fate, bit }),
        2 => (0usize..4).prop_map(Op::ReleaseHost),
        1 => (0usize..4).prop_map(Op::ReleaseDevice),
        2 => prop_oneof![Just(1u32), Just(50), Just(300), Just(2_000)].prop_map(Op::Advance),
        1 => Just(Op::Cut),
    ]
}

struct World {
    device: L,
    host: L,
    up: VecDeque<Vec<u8>>,
    down: VecDeque<Vec<u8>>,
    now: u64,
    sent_up: u32,
    sent_down: u32,
    got_up: Vec<(u32, Vec<u8>)>,
    got_down: Vec<(u32, Vec<u8>)>,
}

fn up_record(i: u32) -> Vec<u8> {
    let len = (i as usize * 13) % 82;
    (0..len).map(|k| (i as usize ^ k) as u8).collect()
}

fn down_record(i: u32) -> Vec<u8> {
    format!("set rate {i}").into_bytes()
}

impl World {
    fn new(window: u16, first_seq: u32) -> World {
        let mut c = Config::new(Role::Client, 11);
        c.window = window;
        c.first_seq = first_seq;
        let mut s = Config::new(Role::Server, 22);
        s.first_seq = first_seq.wrapping_mul(3);
        let mut w = World {
            device: Link::new(c, LinkStorage::new()).unwrap(),
            host: Link::new(s, LinkStorage::new()).unwrap(),
            up: VecDeque::new(),
            down: VecDeque::new(),
            now: 0,
            sent_up: 0,
            sent_down: 0,
            got_up: Vec::new(),
            got_down: Vec::new(),
        };
        w.device.connect(Instant::from_millis(0));
        w.host.connect(Instant::from_millis(0));
        w
    }

    fn t(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn pump_out(&mut self) {
        let t = self.t();
        let mut buf = vec![0u8; self.device.transmit_len()];
        while let Some(n) = self.device.poll_transmit(t, &mut buf) {
            self.up.push_back(buf[..n].to_vec());
        }
        while let Some(n) = self.host.poll_transmit(t, &mut buf) {
            self.down.push_back(buf[..n].to_vec());
        }
    }

    fn cut(&mut self) {
        self.up.clear();
        self.down.clear();
        let t = self.t();
        self.device.connect(t);
        self.host.connect(t);
    }

    fn take(link: &mut L, n: usize, into: &mut Vec<(u32, Vec<u8>)>) {
        let got: Vec<_> = link
            .received()
            .take(n)
            .map(|r| (r.seq, r.payload.to_vec()))
            .collect();
        link.release(got.len());
        into.extend(got);
    }

    fn apply(&mut self, op: &Op) {
        let t = self.t();
        match *op {
            Op::SendDevice => {
                if self.device.send(&up_record(self.sent_up)).is_ok() {
                    self.sent_up += 1;
                }
            }
            Op::SendHost => {
                if self.host.send(&down_record(self.sent_down)).is_ok() {
                    self.sent_down += 1;
                }
            }
            Op::Deliver {
                to_host,
                count,
                fate,
                bit,
            } => {
                for _ in 0..count {
                    let q = if to_host {
                        &mut self.up
                    } else {
                        &mut self.down
                    };
                    let Some(mut f) = q.pop_front() else { break };
                    match fate {
                        1 => continue,
                        2 => {
                            let b = usize::from(bit) % (f.len() * 8);
                            f[b / 8] ^= 1 << (b % 8);
                        }
                        _ => {}
                    }
                    if to_host {
                        self.host.handle_input(t, &f);
                    } else {
                        self.device.handle_input(t, &f);
                    }
                }
            }
            Op::ReleaseHost(n) => Self::take(&mut self.host, n, &mut self.got_up),
            Op::ReleaseDevice(n) => Self::take(&mut self.device, n, &mut self.got_down),
            Op::Advance(ms) => {
                self.now += u64::from(ms);
                let t = self.t();
                self.device.handle_timeout(t);
                self.host.handle_timeout(t);
            }
            Op::Cut => self.cut(),
        }
        self.pump_out();
    }

    /// The invariants that hold at every step.
    fn check(&self, first_up: u32, first_down: u32) -> Result<(), TestCaseError> {
        for (i, (seq, p)) in self.got_up.iter().enumerate() {
            prop_assert_eq!(*seq, first_up.wrapping_add(i as u32));
            prop_assert_eq!(p, &up_record(i as u32));
        }
        for (i, (seq, p)) in self.got_down.iter().enumerate() {
            prop_assert_eq!(*seq, first_down.wrapping_add(i as u32));
            prop_assert_eq!(p, &down_record(i as u32));
        }
        prop_assert!(self.got_up.len() as u32 <= self.sent_up);
        prop_assert!(self.got_down.len() as u32 <= self.sent_down);
        prop_assert!(self.device.unacked() <= 4 && self.host.unacked() <= 4);
        let d = self.device.stats();
        let h = self.host.stats();
        prop_assert!(d.rx_high_water <= 4 && h.rx_high_water <= 4);
        prop_assert_eq!(
            d.spurious_acks + h.spurious_acks,
            0,
            "no stale or bogus acks"
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_deliver_exactly_once_in_order(
        ops in prop::collection::vec(op(), 1..200),
        window in 1u16..=4,
        first_seq in prop_oneof![Just(0u32), Just(u32::MAX - 3), any::<u32>()],
    ) {
        let mut w = World::new(window, first_seq);
        let first_down = first_seq.wrapping_mul(3);
        for op in &ops {
            w.apply(op);
            w.check(first_seq, first_down)?;
        }
        // Heal: a clean channel, both applications keen, until everything is through.
        for _ in 0..2_000 {
            if w.device.phase() == Phase::Dead || w.host.phase() == Phase::Dead {
                w.cut();
            }
            w.apply(&Op::Deliver { to_host: true, count: 100, fate: 0, bit: 0 });
            w.apply(&Op::Deliver { to_host: false, count: 100, fate: 0, bit: 0 });
            w.apply(&Op::ReleaseHost(100));
            w.apply(&Op::ReleaseDevice(100));
            w.check(first_seq, first_down)?;
            let done = w.got_up.len() as u32 == w.sent_up
                && w.got_down.len() as u32 == w.sent_down
                && w.device.unacked() == 0
                && w.host.unacked() == 0;
            if done {
                return Ok(());
            }
            w.apply(&Op::Advance(100));
        }
        prop_assert!(false, "not healed: up {}/{} down {}/{} unacked {} {} phases {:?} {:?}",
            w.got_up.len(), w.sent_up, w.got_down.len(), w.sent_down,
            w.device.unacked(), w.host.unacked(), w.device.phase(), w.host.phase());
    }
}
