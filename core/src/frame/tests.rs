//! Specification tests of the frame layer: round trips in every chunking, resynchronisation
//! after garbage, rejection of every single-bit error, and the bounds.

extern crate std;

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

/// Storage for a decoder that accepts payloads up to `max_payload` bytes.
fn decoder(max_payload: usize) -> Decoder<Vec<u8>> {
    Decoder::new(vec![0u8; raw_len(max_payload)])
}

fn encoded(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; max_encoded_len(payload.len())];
    let n = encode(header, payload, &mut out).expect("encodes");
    out.truncate(n);
    out
}

/// Owned copy of a decoder's output, good frames and errors in arrival order.
type Outcome = Result<(Header, Vec<u8>), FrameError>;

/// Feeds `wire` to `dec` in chunks of the given sizes (cycling), collecting everything.
fn feed_chunked<B: AsRef<[u8]> + AsMut<[u8]>>(
    dec: &mut Decoder<B>,
    wire: &[u8],
    chunks: &[usize],
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut rest = wire;
    let mut i = 0;
    while !rest.is_empty() {
        let size = chunks[i % chunks.len()].clamp(1, rest.len());
        i += 1;
        let mut piece = &rest[..size];
        rest = &rest[size..];
        while let Some(r) = dec.decode(&mut piece) {
            out.push(r.map(|f| (f.header, f.payload.to_vec())));
        }
        assert!(piece.is_empty(), "decode stops only when input is used up");
    }
    out
}

fn arb_header() -> impl Strategy<Value = Header> {
    (
        prop::sample::select(Kind::ALL.to_vec()),
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
    )
        .prop_map(|(kind, ack, seq, ack_no, credit)| Header {
            kind,
            flags: if ack { Flags::ACK } else { Flags::NONE },
            seq,
            ack: ack_no,
            credit,
        })
}

/// Payloads biased towards zeros and 254-byte block boundaries, where COBS has its edges.
fn arb_payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=max),
        prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..=max),
        (0..=max.min(3 * 254 + 4)).prop_map(|n| (0..n).map(|i| (i % 255 + 1) as u8).collect()),
    ]
}

const MAX: usize = 1100;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trips_in_any_chunking(
        header in arb_header(),
        payload in arb_payload(MAX),
        chunks in prop::collection::vec(1usize..300, 1..8),
    ) {
        let wire = encoded(&header, &payload);
        prop_assert!(wire.len() <= max_encoded_len(payload.len()));
        prop_assert_eq!(wire.iter().position(|&b| b == 0), Some(wire.len() - 1));
        let mut dec = decoder(MAX);
        let got = feed_chunked(&mut dec, &wire, &chunks);
        prop_assert_eq!(got, vec![Ok((header, payload))]);
        prop_assert_eq!(dec.stats().bytes, wire.len() as u64);
        prop_assert!(!dec.in_frame());
    }

    #[test]
    fn round_trips_one_byte_at_a_time(header in arb_header(), payload in arb_payload(600)) {
        let wire = encoded(&header, &payload);
        let mut dec = decoder(600);
        let got = feed_chunked(&mut dec, &wire, &[1]);
        prop_assert_eq!(got, vec![Ok((header, payload))]);
    }

    #[test]
    fn many_frames_in_one_slice_all_decode_in_order(
        frames in prop::collection::vec((arb_header(), arb_payload(300)), 1..20),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|(h, p)| encoded(h, p)).collect();
        let mut dec = decoder(300);
        let got = feed_chunked(&mut dec, &wire, &[wire.len()]);
        let want: Vec<Outcome> = frames.into_iter().map(Ok).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn garbage_before_between_and_after_frames_is_skipped(
        frames in prop::collection::vec((arb_header(), arb_payload(200)), 1..6),
        garbage in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 7),
        chunks in prop::collection::vec(1usize..64, 1..4),
    ) {
        // Garbage is terminated by a delimiter so that it cannot swallow the next frame.
        let mut wire = Vec::new();
        for (i, (h, p)) in frames.iter().enumerate() {
            wire.extend_from_slice(&garbage[i]);
            wire.push(DELIMITER);
            wire.extend(encoded(h, p));
        }
        wire.extend_from_slice(&garbage[6]);
        let mut dec = decoder(200);
        let got = feed_chunked(&mut dec, &wire, &chunks);
        let good: Vec<(Header, Vec<u8>)> = got.iter().filter_map(|r| r.clone().ok()).collect();
        // Random garbage passes CRC-32C with probability 2^-32 per candidate frame.
        prop_assert_eq!(&good, &frames);
        let errors = got.len() - good.len();
        prop_assert_eq!(dec.stats().dropped() as usize, errors);
        prop_assert_eq!(dec.stats().frames as usize, frames.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_memory_stays_bounded(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        chunks in prop::collection::vec(1usize..512, 1..4),
    ) {
        let mut dec = Decoder::new([0u8; raw_len(64)]);
        let got = feed_chunked(&mut dec, &bytes, &chunks);
        for r in got.iter().flatten() {
            prop_assert!(r.1.len() <= 64);
        }
        prop_assert_eq!(dec.stats().bytes, bytes.len() as u64);
    }

    #[test]
    fn write_frame_emits_the_same_bytes_as_encode(header in arb_header(), payload in arb_payload(MAX)) {
        let mut sink: Vec<u8> = Vec::new();
        let n = write_frame(&mut SliceSink(&mut sink), &header, &payload).expect("writes");
        prop_assert_eq!(n, sink.len());
        prop_assert_eq!(sink, encoded(&header, &payload));
    }
}

/// A tiny `embedded_io::Write` over a `Vec`, accepting at most 100 bytes per call so that
/// partial writes are exercised.
struct SliceSink<'a>(&'a mut Vec<u8>);

impl embedded_io::ErrorType for SliceSink<'_> {
    type Error = core::convert::Infallible;
}

impl embedded_io::Write for SliceSink<'_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(100);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[test]
fn every_single_bit_flip_is_rejected_never_delivered() {
    // Frames across block boundaries and with zeros in header, payload and CRC positions.
    let payloads: [Vec<u8>; 5] = [
        vec![],
        vec![0u8; 16],
        (0..=255u8).collect(),
        (0..600).map(|i| (i % 255 + 1) as u8).collect(),
        (0..300).map(|i| (i * 37 % 256) as u8).collect(),
    ];
    let header = Header {
        kind: Kind::Data,
        flags: Flags::ACK,
        seq: 0x0102_0304,
        ack: 0xFFFF_FFFE,
        credit: 8,
    };
    let follower = encoded(&Header { seq: 99, ..header }, b"next");
    let mut flips = 0;
    for payload in &payloads {
        let wire = encoded(&header, payload);
        for bit in 0..wire.len() * 8 {
            let mut bad = wire.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            // The flipped frame, a delimiter (in case the flip hit the frame's own), then a
            // good frame that must still come through.
            bad.push(DELIMITER);
            bad.extend_from_slice(&follower);
            let mut dec = decoder(600);
            let got = feed_chunked(&mut dec, &bad, &[bad.len()]);
            let good: Vec<_> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(
                good,
                vec![&(Header { seq: 99, ..header }, b"next".to_vec())],
                "bit {bit} of a frame with a {}-byte payload",
                payload.len()
            );
            assert!(dec.stats().dropped() >= 1, "the flipped frame was counted");
            flips += 1;
        }
    }
    assert!(flips > 10_000);
}

#[test]
fn too_long_frame_is_dropped_counted_and_the_next_frame_decodes() {
    let mut dec = decoder(16);
    let mut wire = encoded(&Header::default(), &[7u8; 17]);
    wire.extend(encoded(&Header::default(), &[7u8; 16]));
    let got = feed_chunked(&mut dec, &wire, &[5]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], Err(FrameError::TooLong));
    assert_eq!(got[1], Ok((Header::default(), vec![7u8; 16])));
    assert_eq!(dec.stats().too_long, 1);
    assert_eq!(dec.payload_capacity(), 16);
}

/// COBS-encodes `raw` as it is, valid frame or not, into `out`; returns the length
/// without delimiter (`out[n]` is left for it).
fn cobs_only(raw: &[u8], out: &mut [u8]) -> usize {
    let mut sink = cobs::SliceSink::new(out);
    let Ok(()) = cobs::encode_blocks(&[raw], &mut sink);
    sink.finish()
}

#[test]
fn short_frame_with_any_content_is_a_header_error() {
    // Raw frames of 0..OVERHEAD bytes, correctly COBS-encoded.
    for len in 0..OVERHEAD {
        let raw = vec![0x55u8; len];
        let mut wire = vec![0u8; max_encoded_len(len)];
        let n = cobs_only(&raw, &mut wire);
        wire[n] = 0;
        let mut dec = decoder(8);
        let got = feed_chunked(&mut dec, &wire[..=n], &[1]);
        assert_eq!(
            got,
            vec![Err(FrameError::Header(HeaderError::TooShort { len }))]
        );
    }
}

#[test]
fn header_errors_with_a_valid_crc_are_reported_as_such() {
    let mut raw = [0u8; OVERHEAD + 2];
    let mut view = FrameView::new_unchecked(&mut raw[..]);
    Header::default().emit(&mut view).unwrap();
    view.fill_crc();
    let good = raw;
    let cases: [(usize, u8, HeaderError); 4] = [
        (0, 0x00, HeaderError::UnknownKind(0x00)),
        (0, 0x08, HeaderError::UnknownKind(0x08)),
        (1, 0x04, HeaderError::ReservedFlags(0x04)),
        (
            12,
            0x03,
            HeaderError::LengthMismatch {
                field: 3,
                actual: 2,
            },
        ),
    ];
    for (at, value, want) in cases {
        let mut raw = good;
        raw[at] = value;
        let mut view = FrameView::new_unchecked(&mut raw[..]);
        view.fill_crc();
        let mut wire = [0u8; 64];
        let n = cobs_only(&raw, &mut wire);
        let mut dec = decoder(8);
        let got = feed_chunked(&mut dec, &wire[..=n], &[3]);
        assert_eq!(got, vec![Err(FrameError::Header(want))]);
        assert_eq!(dec.stats().header_errors, 1);
    }
}

#[test]
fn encode_refuses_oversized_payloads_and_small_buffers() {
    let big = vec![0u8; MAX_PAYLOAD + 1];
    let mut out = vec![0u8; max_encoded_len(big.len())];
    assert_eq!(
        encode(&Header::default(), &big, &mut out),
        Err(EncodeError::PayloadTooLong {
            len: MAX_PAYLOAD + 1
        })
    );
    let mut small = [0u8; 10];
    assert_eq!(
        encode(&Header::default(), b"x", &mut small),
        Err(EncodeError::BufferTooSmall {
            needed: max_encoded_len(1),
            available: 10
        })
    );
}

#[test]
fn largest_payload_round_trips() {
    let payload: Vec<u8> = (0..MAX_PAYLOAD).map(|i| (i % 251) as u8).collect();
    let wire = encoded(&Header::default(), &payload);
    let mut dec = decoder(MAX_PAYLOAD);
    let got = feed_chunked(&mut dec, &wire, &[4096, 1, 65536]);
    assert_eq!(got, vec![Ok((Header::default(), payload))]);
}

#[test]
fn crc_check_value_is_the_catalogue_one() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let mut c = Crc32c::new();
    c.update(b"1234");
    c.update(b"56789");
    assert_eq!(c.finalize(), 0xE306_9283);
}

#[test]
fn a_writer_that_accepts_nothing_is_an_error_not_a_panic() {
    struct Full;
    impl embedded_io::ErrorType for Full {
        type Error = core::convert::Infallible;
    }
    impl embedded_io::Write for Full {
        fn write(&mut self, _: &[u8]) -> Result<usize, Self::Error> {
            Ok(0)
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    assert_eq!(
        write_frame(&mut Full, &Header::default(), b"x"),
        Err(WriteFrameError::WriteZero)
    );
}
