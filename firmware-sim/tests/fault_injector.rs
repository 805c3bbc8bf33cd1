//! The fault injector does what it says: the same seed gives the same faults, the
//! probabilities are honoured, no fault means a transparent pipe, and cuts come where they
//! were asked for.

use tether_firmware_sim::fault::{Cut, FaultConfig, FaultInjector, FaultPipe, FaultStats, Side};
use tether_firmware_sim::rng::XorShift;

/// Pushes `writes` random writes (the same for every configuration) from A and pulls
/// everything at B after each; returns what was written, what arrived, and the stats.
/// Stops at the first cut.
fn carry(config: FaultConfig, writes: usize) -> (Vec<u8>, Vec<u8>, FaultStats) {
    let mut pipe = Box::new(FaultPipe::<4096>::new(config));
    let mut data = XorShift::new(1000);
    let (mut sent, mut got) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 512];
    'run: for _ in 0..writes {
        let len = 1 + data.below(200) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| data.next_u32() as u8).collect();
        match pipe.push(Side::A, &bytes) {
            Ok(n) => assert_eq!(n, len, "the pipe has room"),
            Err(Cut) => break,
        }
        sent.extend_from_slice(&bytes);
        for _ in 0..10_000 {
            match pipe.pull(Side::B, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(Cut) => break 'run,
            }
        }
        assert_eq!(pipe.pending(Side::B), 0);
    }
    (sent, got, pipe.stats())
}

fn everything(seed: u64) -> FaultConfig {
    FaultConfig {
        lose_byte: 0.01,
        corrupt_byte: 0.02,
        duplicate_byte: 0.03,
        lose_write: 0.05,
        split: true,
        cut_after_bytes: None,
        cut_per_write: 0.0,
        ..FaultConfig::clean(seed)
    }
}

#[test]
fn the_same_seed_gives_the_same_faults() {
    for seed in 0..20 {
        let a = carry(everything(seed), 300);
        let b = carry(everything(seed), 300);
        assert!(a == b, "seed {seed}: the same seed gave other faults");
        let c = carry(everything(seed + 1000), 300);
        assert!(a.0 == c.0, "the same data is written");
        assert!(a.1 != c.1, "seed {seed}: another seed, other faults");
        assert!(a.0 != a.1, "seed {seed}: faults happened");
    }
}

#[test]
fn no_fault_is_transparent_whatever_the_chunking() {
    for seed in 0..20 {
        for split in [false, true] {
            let (sent, got, stats) = carry(
                FaultConfig {
                    split,
                    ..FaultConfig::clean(seed)
                },
                200,
            );
            assert_eq!(sent, got, "seed {seed}");
            assert_eq!(stats.bytes_in, sent.len() as u64);
            assert_eq!(stats.bytes_out, sent.len() as u64);
            let faults = (
                stats.lost_bytes,
                stats.corrupted_bytes,
                stats.duplicated_bytes,
                stats.lost_writes,
                stats.cuts,
            );
            assert_eq!(faults, (0, 0, 0, 0, 0), "seed {seed}");
            assert_eq!(stats.splits > 0, split, "seed {seed}: {stats:?}");
        }
    }
}

/// Passes `n` bytes in writes of `write` bytes through an injector; returns the stats.
fn stats_over(config: FaultConfig, n: usize, write: usize) -> FaultStats {
    let mut f = FaultInjector::new(config);
    let chunk = vec![0x55u8; write];
    for _ in 0..n / write {
        let _ = f.write(&chunk, |_| {});
    }
    f.stats()
}

fn assert_near(what: &str, count: u64, of: u64, p: f64) {
    let rate = count as f64 / of as f64;
    assert!(
        (rate - p).abs() <= p * 0.1,
        "{what}: {count} of {of} = {rate:.5}, want {p} ± 10 %"
    );
}

#[test]
fn probabilities_are_honoured() {
    let n = 1_000_000;
    for seed in [1, 2, 3] {
        let s = stats_over(
            FaultConfig {
                lose_byte: 0.01,
                ..FaultConfig::clean(seed)
            },
            n,
            100,
        );
        assert_near("lost bytes", s.lost_bytes, n as u64, 0.01);
        assert_eq!(s.bytes_out + s.lost_bytes, n as u64);

        let s = stats_over(
            FaultConfig {
                corrupt_byte: 0.05,
                ..FaultConfig::clean(seed)
            },
            n,
            100,
        );
        assert_near("corrupted bytes", s.corrupted_bytes, n as u64, 0.05);
        assert_eq!(s.bytes_out, n as u64);

        let s = stats_over(
            FaultConfig {
                duplicate_byte: 0.02,
                ..FaultConfig::clean(seed)
            },
            n,
            100,
        );
        assert_near("duplicated bytes", s.duplicated_bytes, n as u64, 0.02);
        assert_eq!(s.bytes_out, n as u64 + s.duplicated_bytes);

        let s = stats_over(
            FaultConfig {
                lose_write: 0.1,
                ..FaultConfig::clean(seed)
            },
            n,
            50,
        );
        assert_near("lost writes", s.lost_writes, s.writes, 0.1);
        assert_eq!(s.lost_bytes, s.lost_writes * 50);
    }
}

#[test]
fn corruption_changes_exactly_the_bytes_it_counts() {
    let (sent, got, stats) = carry(
        FaultConfig {
            corrupt_byte: 0.05,
            split: true,
            ..FaultConfig::clean(7)
        },
        500,
    );
    assert_eq!(sent.len(), got.len());
    let differ = sent.iter().zip(&got).filter(|(a, b)| a != b).count() as u64;
    assert_eq!(differ, stats.corrupted_bytes);
    assert!(differ > 0);
}

#[test]
fn duplication_repeats_bytes_in_place() {
    let mut f = FaultInjector::new(FaultConfig {
        duplicate_byte: 0.3,
        ..FaultConfig::clean(5)
    });
    let input: Vec<u8> = (0..=255).collect();
    let mut out = Vec::new();
    f.write(&input, |b| out.push(b)).unwrap();
    let mut dedup = out.clone();
    dedup.dedup();
    assert_eq!(dedup, input);
    assert_eq!(out.len() as u64 - 256, f.stats().duplicated_bytes);
}

#[test]
fn cut_after_bytes_cuts_both_sides_until_reconnected() {
    let mut pipe = FaultPipe::<256>::new(FaultConfig {
        cut_after_bytes: Some(10),
        ..FaultConfig::clean(1)
    });
    assert_eq!(pipe.push(Side::A, b"12345"), Ok(5));
    assert_eq!(pipe.push(Side::B, b"abc"), Ok(3));
    // The write that reaches 10 bytes carried cuts the connection: in flight is lost.
    assert_eq!(pipe.push(Side::A, b"6789"), Err(Cut));
    assert!(pipe.is_cut());
    let mut buf = [0u8; 16];
    assert_eq!(pipe.pull(Side::B, &mut buf), Err(Cut));
    assert_eq!(pipe.pull(Side::A, &mut buf), Err(Cut));
    assert_eq!(pipe.push(Side::B, b"x"), Err(Cut));
    assert_eq!(pipe.stats().cuts, 1);

    // A new connection: empty, and its own 10 bytes.
    pipe.reconnect();
    assert_eq!(pipe.pending(Side::A) + pipe.pending(Side::B), 0);
    assert_eq!(pipe.push(Side::A, b"123456789"), Ok(9));
    assert_eq!(pipe.pull(Side::B, &mut buf), Ok(9));
    assert_eq!(&buf[..9], b"123456789");
    assert_eq!(pipe.push(Side::B, b"ab"), Err(Cut));
    assert_eq!(pipe.stats().cuts, 2);

    // A cut asked for.
    pipe.reconnect();
    assert_eq!(pipe.push(Side::A, b"1"), Ok(1));
    pipe.cut();
    assert_eq!(pipe.pull(Side::B, &mut buf), Err(Cut));
    assert_eq!(pipe.stats().cuts, 3);
}

#[test]
fn random_cuts_come_at_about_their_rate() {
    let mut f = FaultInjector::new(FaultConfig {
        cut_per_write: 0.01,
        ..FaultConfig::clean(3)
    });
    let mut cuts = 0u64;
    for _ in 0..100_000 {
        if f.write(b"frame", |_| {}) == Err(Cut) {
            cuts += 1;
            assert!(f.is_cut());
            assert_eq!(f.write(b"x", |_| {}), Err(Cut), "stays cut");
            f.reconnect();
        }
    }
    assert_near("cuts", cuts, 100_000, 0.01);
    assert_eq!(u64::from(f.stats().cuts), cuts);
}

#[test]
fn a_full_pipe_takes_what_fits() {
    let mut pipe = FaultPipe::<8>::new(FaultConfig::clean(1));
    assert_eq!(pipe.push(Side::A, b"0123456789"), Ok(8));
    assert_eq!(pipe.push(Side::A, b"x"), Ok(0));
    let mut buf = [0u8; 4];
    assert_eq!(pipe.pull(Side::B, &mut buf), Ok(4));
    assert_eq!(&buf, b"0123");
    assert_eq!(pipe.push(Side::A, b"89"), Ok(2));
    let mut rest = [0u8; 16];
    assert_eq!(pipe.pull(Side::B, &mut rest), Ok(6));
    assert_eq!(&rest[..6], b"456789");
    // Nothing for A: B wrote nothing.
    assert_eq!(pipe.pull(Side::A, &mut rest), Ok(0));

    // With duplication a byte may become two, so room for both is kept.
    let mut pipe = FaultPipe::<8>::new(FaultConfig {
        duplicate_byte: 1.0,
        ..FaultConfig::clean(1)
    });
    assert_eq!(pipe.push(Side::B, b"0123456789"), Ok(4));
    assert_eq!(pipe.pull(Side::A, &mut rest), Ok(8));
    assert_eq!(&rest[..8], b"00112233");
}

#[test]
fn out_of_range_probabilities_are_clamped() {
    let mut f = FaultInjector::new(FaultConfig {
        lose_byte: f32::NAN,
        corrupt_byte: -1.0,
        duplicate_byte: 7.0,
        ..FaultConfig::clean(1)
    });
    let mut out = Vec::new();
    f.write(b"ab", |b| out.push(b)).unwrap();
    assert_eq!(out, b"aabb");
}

#[cfg(feature = "std")]
mod stream {
    use std::io::{Cursor, ErrorKind, Read, Write};
    use tether_firmware_sim::fault::{FaultConfig, FaultStream};

    #[test]
    fn split_writes_are_short_but_write_all_delivers_everything() {
        let mut s = FaultStream::new(
            Cursor::new(Vec::new()),
            FaultConfig {
                split: true,
                ..FaultConfig::clean(9)
            },
        );
        let data: Vec<u8> = (0..5_000u32).map(|i| i as u8).collect();
        let first = s.write(&data).unwrap();
        assert!(first >= 1 && first <= data.len());
        s.write_all(&data[first..]).unwrap();
        s.flush().unwrap();
        assert_eq!(s.get_ref().get_ref(), &data);
        assert!(s.stats().splits > 0);
    }

    #[test]
    fn reads_are_faulty_too() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut s = FaultStream::new(
            Cursor::new(data.clone()),
            FaultConfig {
                corrupt_byte: 0.05,
                split: true,
                ..FaultConfig::clean(4)
            },
        );
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), data.len());
        let differ = got.iter().zip(&data).filter(|(a, b)| a != b).count() as u64;
        assert_eq!(differ, s.stats().corrupted_bytes);
        assert!(differ > 0);
    }

    #[test]
    fn a_cut_is_a_connection_reset_until_reconnected() {
        let mut s = FaultStream::new(
            Cursor::new(Vec::new()),
            FaultConfig {
                cut_after_bytes: Some(4),
                ..FaultConfig::clean(1)
            },
        );
        s.write_all(b"ab").unwrap();
        let e = s.write_all(b"cdef").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
        assert!(s.is_cut());
        assert_eq!(s.flush().unwrap_err().kind(), ErrorKind::ConnectionReset);
        assert_eq!(
            s.read(&mut [0u8; 4]).unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );
        // The bytes before the cut point went out.
        let old = s.reconnect(Cursor::new(Vec::new()));
        assert_eq!(old.get_ref(), b"abcd");
        s.write_all(b"xy").unwrap();
        assert_eq!(s.into_inner().into_inner(), b"xy");
    }
}
