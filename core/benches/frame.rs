//! Frame encode and decode throughput: `cargo bench -p tether-core --features fast-crc`.
//!
//! Payloads of 16 bytes (a small sensor record) and 65,535 bytes (the largest frame, "64
//! KiB"), the latter with random content so that COBS sees realistic zero density. Decode
//! includes COBS unstuffing, the CRC-32C check and header validation: everything a receiver
//! does before it hands a frame to the link layer.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tether_core::frame::{self, crc32c, Decoder, Flags, Header, Kind, MAX_PAYLOAD};

fn payload(len: usize) -> Vec<u8> {
    // A fixed xorshift stream: reproducible, and about 1 byte in 256 is zero.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const HEADER: Header = Header {
    kind: Kind::Data,
    flags: Flags::ACK,
    seq: 0x0102_0304,
    ack: 0x0506_0708,
    credit: 16,
};

fn sizes() -> [(&'static str, usize); 2] {
    [("16B", 16), ("64KiB", MAX_PAYLOAD)]
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (name, len) in sizes() {
        let p = payload(len);
        let mut out = vec![0u8; frame::max_encoded_len(len)];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &p, |b, p| {
            b.iter(|| frame::encode(black_box(&HEADER), black_box(p), &mut out).unwrap())
        });
    }
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, len) in sizes() {
        let p = payload(len);
        let mut wire = vec![0u8; frame::max_encoded_len(len)];
        let n = frame::encode(&HEADER, &p, &mut wire).unwrap();
        wire.truncate(n);
        // Many small frames per iteration, as a receiver sees them in one socket read.
        let copies = if len < 1024 { 1024 } else { 1 };
        let stream: Vec<u8> = wire.iter().copied().cycle().take(n * copies).collect();
        let mut dec = Decoder::new(vec![0u8; frame::raw_len(len)]);
        g.throughput(Throughput::Bytes((len * copies) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &stream, |b, s| {
            b.iter(|| {
                let mut input = &s[..];
                let mut bytes = 0;
                while let Some(f) = dec.decode(&mut input) {
                    bytes += f.unwrap().payload.len();
                }
                assert_eq!(bytes, len * copies);
            })
        });
    }
    g.finish();
}

fn bench_crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    let p = payload(MAX_PAYLOAD);
    g.throughput(Throughput::Bytes(p.len() as u64));
    g.bench_function("64KiB", |b| b.iter(|| crc32c(black_box(&p))));
    g.finish();
}

criterion_group!(benches, bench_encode, bench_decode, bench_crc);
criterion_main!(benches);
