//! Feeds arbitrary bytes, in arbitrary chunks, to the frame decoder.
//!
//! The first input byte picks the decoder's buffer size and the second the chunk size, so
//! the fuzzer explores small buffers (too-long frames) and every chunking. Invariants
//! checked on every input, beyond "no panic, no hang":
//! - every delivered frame re-encodes to a frame that decodes to itself;
//! - no payload exceeds the buffer's capacity;
//! - the statistics account for every byte fed and every outcome returned.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::frame::{self, Decoder};

fuzz_target!(|data: &[u8]| {
    let [size, chunk, rest @ ..] = data else { return };
    let buf_len = frame::raw_len(usize::from(*size) * 4);
    let chunk = usize::from(*chunk).max(1);
    let mut dec = Decoder::new(vec![0u8; buf_len]);
    let (mut good, mut bad) = (0u32, 0u32);
    for piece in rest.chunks(chunk) {
        let mut input = piece;
        while let Some(result) = dec.decode(&mut input) {
            match result {
                Ok(f) => {
                    good += 1;
                    assert!(f.payload.len() <= frame::payload_capacity(buf_len));
                    let mut wire = vec![0u8; frame::max_encoded_len(f.payload.len())];
                    let n = frame::encode(&f.header, f.payload, &mut wire).expect("re-encodes");
                    let (header, payload) = (f.header, f.payload.to_vec());
                    let mut again = Decoder::new(vec![0u8; buf_len]);
                    let mut w = &wire[..n];
                    let back = again.decode(&mut w).expect("a frame").expect("valid");
                    assert_eq!((back.header, back.payload), (header, &payload[..]));
                }
                Err(_) => bad += 1,
            }
        }
        assert!(input.is_empty());
    }
    let stats = dec.stats();
    assert_eq!(stats.bytes, rest.len() as u64);
    assert_eq!((stats.frames, stats.dropped()), (good, bad));
});

