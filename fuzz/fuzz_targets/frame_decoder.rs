//! Feeds arbitrary bytes, in arbitrary chunks, to the frame decoder, as a version 1 receiver
//! (`Decoder::decode`) or one that takes version 2 session frames too (`decode_any`,
//! `PROTOCOL.md` 11.5).
//!
//! The first input byte picks the decoder's buffer size and the second the chunk size and
//! the mode (its top bit: `decode_any`), so the fuzzer explores small buffers (too-long
//! frames) and every chunking. Invariants checked on every input, beyond "no panic, no hang":
//! - every delivered frame re-encodes to a frame that decodes to itself (a version 2 frame
//!   byte for byte: its format has one encoding per frame);
//! - no payload exceeds the buffer's capacity;
//! - the statistics account for every byte fed and every outcome returned.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::frame::{self, v2, AnyFrame, Decoder, Frame};

/// A version 1 frame re-encodes to one that decodes to itself.
fn round_trip_v1(f: &Frame<'_>, buf_len: usize) {
    assert!(f.payload.len() <= frame::payload_capacity(buf_len));
    let mut wire = vec![0u8; frame::max_encoded_len(f.payload.len())];
    let n = frame::encode(&f.header, f.payload, &mut wire).expect("re-encodes");
    let mut again = Decoder::new(vec![0u8; buf_len]);
    let mut w = &wire[..n];
    let back = again.decode(&mut w).expect("a frame").expect("valid");
    assert_eq!((back.header, back.payload), (f.header, f.payload));
}

/// A version 2 frame re-encodes to one that decodes to itself, and its records iterate to
/// the end of its section.
fn round_trip_v2(f: &v2::Frame<'_>, buf_len: usize) {
    let covered = v2::covered_len(f);
    assert!(v2::raw_len(covered) <= buf_len);
    let mut wire = vec![0u8; v2::max_encoded_len(covered)];
    let n = v2::encode(f, &mut wire).expect("re-encodes");
    let mut again = Decoder::new(vec![0u8; buf_len]);
    let mut w = &wire[..n];
    let back = again.decode_any(&mut w).expect("a frame").expect("valid");
    assert_eq!(back, AnyFrame::V2(*f));
    if let v2::Frame::Data { data, .. } = f {
        let total: usize = data.records().map(<[u8]>::len).sum();
        assert!(total <= data.section.len());
        assert!(data.records().count() >= 1, "a DATA frame carries a record");
    }
}

fuzz_target!(|data: &[u8]| {
    let [size, chunk, rest @ ..] = data else {
        return;
    };
    let buf_len = frame::raw_len(usize::from(*size) * 4);
    let any = chunk & 0x80 != 0;
    let chunk = usize::from(*chunk & 0x7F).max(1);
    let mut dec = Decoder::new(vec![0u8; buf_len]);
    let (mut good, mut bad) = (0u32, 0u32);
    for piece in rest.chunks(chunk) {
        let mut input = piece;
        if any {
            while let Some(result) = dec.decode_any(&mut input) {
                match result {
                    Ok(AnyFrame::V1(f)) => {
                        good += 1;
                        round_trip_v1(&f, buf_len);
                    }
                    Ok(AnyFrame::V2(f)) => {
                        good += 1;
                        round_trip_v2(&f, buf_len);
                    }
                    Err(_) => bad += 1,
                }
            }
        } else {
            while let Some(result) = dec.decode(&mut input) {
                match result {
                    Ok(f) => {
                        good += 1;
                        round_trip_v1(&f, buf_len);
                    }
                    Err(_) => bad += 1,
                }
            }
        }
        assert!(input.is_empty());
    }
    let stats = dec.stats();
    assert_eq!(stats.bytes, rest.len() as u64);
    assert_eq!((stats.frames, stats.dropped()), (good, bad));
});
