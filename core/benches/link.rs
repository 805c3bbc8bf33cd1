//! A `Link` pair moving records over an in-memory channel: the protocol's own cost, without
//! sockets. `cargo bench -p tether-core --features hw-crc --bench link`.
//!
//! Each iteration moves 1,000 records device → host: the device fills its window, its
//! frames are gathered into one buffer (one "write"), the host takes them in one call (one
//! "read"), releases them all and answers with its acknowledgement. Groups: 16-byte records
//! in records/s for windows 1, 4, 16, 32 and 1,024 (the window `tether-bench` uses for small
//! records; the protocol allows up to 32,768), and 1 KiB records in bytes/s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tether_core::link::{Config, Instant, Link, LinkStorage, Parts, Role, Storage};

const RECORDS: u32 = 1_000;
type Store = LinkStorage<32, 32, 96>;
type BigStore = LinkStorage<1024, 1024, 96>;
type KiBStore = LinkStorage<32, 32, 1042>;

/// 1,024 slots of 96 bytes both ways (197 KB) live on the heap.
struct Boxed(Box<BigStore>);

impl Storage for Boxed {
    fn parts(&mut self) -> Parts<'_> {
        self.0.parts()
    }
}

fn transfer<S: Storage>(window: u16, store: fn() -> S, payload: usize) -> u32 {
    let mut cd = Config::new(Role::Client, 1);
    cd.window = window;
    let mut device = Link::new(cd, store()).unwrap();
    let mut host = Link::new(Config::new(Role::Server, 2), store()).unwrap();
    let now = Instant::from_millis(0);
    device.connect(now);
    host.connect(now);
    let mut wire = vec![0u8; 64 * 1024];
    let record = vec![0x5Au8; payload];
    let (mut sent, mut got) = (0u32, 0u32);
    for _ in 0..100_000 {
        while sent < RECORDS && device.send(&record).is_ok() {
            sent += 1;
        }
        let mut n = 0;
        while wire.len() - n >= device.transmit_len() {
            match device.poll_transmit(now, &mut wire[n..]) {
                Some(k) => n += k,
                None => break,
            }
        }
        host.handle_input(now, &wire[..n]);
        got += host.release(usize::MAX) as u32;
        let mut m = 0;
        while let Some(k) = host.poll_transmit(now, &mut wire[m..]) {
            m += k;
        }
        device.handle_input(now, &wire[..m]);
        if got == RECORDS && device.unacked() == 0 {
            return got;
        }
    }
    panic!("transfer did not finish");
}

fn bench_link(c: &mut Criterion) {
    let mut g = c.benchmark_group("link_pair_16B");
    g.throughput(Throughput::Elements(u64::from(RECORDS)));
    for window in [1u16, 4, 16, 32] {
        g.bench_with_input(BenchmarkId::new("window", window), &window, |b, &w| {
            b.iter(|| black_box(transfer(w, Store::new, 16)))
        });
    }
    g.bench_with_input(BenchmarkId::new("window", 1024), &1024u16, |b, &w| {
        b.iter(|| black_box(transfer(w, || Boxed(Box::new(BigStore::new())), 16)))
    });
    g.finish();
    let mut g = c.benchmark_group("link_pair_1KiB");
    g.throughput(Throughput::Bytes(u64::from(RECORDS) * 1024));
    g.bench_function("window/32", |b| {
        b.iter(|| black_box(transfer(32, KiBStore::new, 1024)))
    });
    g.finish();
}

criterion_group!(benches, bench_link);
criterion_main!(benches);
