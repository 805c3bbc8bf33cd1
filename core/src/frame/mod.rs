//! The frame layer: the wire format of one frame (`PROTOCOL.md`, "Frame layer").
//!
//! A frame on the wire is `COBS(header ‖ payload ‖ CRC-32C) ‖ 0x00`:
//!
//! ```text
//!  raw frame (before COBS)                                 little-endian throughout
//!  ┌──────┬───────┬───────┬───────┬────────┬───────┬──────────────┬──────────┐
//!  │ kind │ flags │  seq  │  ack  │ credit │  len  │ payload[len] │ CRC-32C  │
//!  │  u8  │  u8   │  u32  │  u32  │  u16   │  u16  │              │   u32    │
//!  └──────┴───────┴───────┴───────┴────────┴───────┴──────────────┴──────────┘
//!   0      1       2       6       10       12      14             14+len
//! ```
//!
//! - [`Header`] is the parsed representation (the smoltcp `Repr` idea) and [`FrameView`] a
//!   checked view over raw frame bytes: [`FrameView::new_checked`] validates the length once,
//!   after which no accessor can panic.
//! - [`encode`] writes one encoded frame, delimiter included, into the caller's buffer;
//!   [`write_frame`] writes it to any [`embedded_io::Write`].
//! - [`Decoder`] accepts bytes in any chunking and yields whole, CRC-checked frames. A frame
//!   that is too long, has bad COBS, fails its CRC or has a bad header is dropped, counted in
//!   [`DecoderStats`], and decoding resumes at the next `0x00`.
//!
//! # Why the caller supplies the decoder's storage
//! [`Decoder`] is generic over its storage `B: AsMut<[u8]>`: an owned array
//! (`Decoder::new([0u8; N])`), a `&'static mut [u8]` from a `static`, or a `Vec` on the host.
//! The frame-size limit is simply the storage's length, fixed by the caller, and memory is
//! constant whatever arrives. All decoding logic lives in non-generic functions over
//! `&mut [u8]`, so firmware that uses several frame sizes links one copy of the decoder, not
//! one per size: the code-size cost of const generics that smoltcp met (its issue #585)
//! does not arise, while owned arrays stay as convenient as a const generic.

mod cobs;
mod crc;
mod decoder;
mod encoder;
mod header;
#[cfg(feature = "v2")]
pub mod v2;

#[cfg(feature = "v2")]
pub use self::crc::crc16_dnp;
pub use self::crc::{crc32c, Crc32c};
#[cfg(feature = "v2")]
pub use self::decoder::AnyFrame;
pub(crate) use self::decoder::DecodeState;
pub use self::decoder::{Decoder, DecoderStats, Frame, FrameError};
#[cfg(feature = "auth")]
pub(crate) use self::encoder::encode_parts;
pub use self::encoder::{encode, write_frame, EncodeError, WriteFrameError};
pub use self::header::{Flags, FrameView, Header, HeaderError, Kind};

/// Bytes in the fixed frame header.
pub const HEADER_LEN: usize = 14;
/// Bytes in the CRC-32C trailer.
pub const CRC_LEN: usize = 4;
/// Header and CRC: the raw size of a frame with an empty payload, and the least any frame has.
pub const OVERHEAD: usize = HEADER_LEN + CRC_LEN;
/// The largest payload the 16-bit length field can describe.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// The frame delimiter. COBS guarantees it never occurs inside an encoded frame.
pub const DELIMITER: u8 = 0x00;

/// Raw (decoded) size of a frame carrying `payload_len` bytes: header, payload and CRC.
///
/// This is the storage a [`Decoder`] needs to accept payloads up to `payload_len` bytes.
pub const fn raw_len(payload_len: usize) -> usize {
    OVERHEAD + payload_len
}

/// The most bytes [`encode`] can write for a payload of `payload_len` bytes, delimiter
/// included: the raw frame, one COBS code byte per started run of 254 bytes, and the `0x00`.
///
/// Use it to size transmit buffers: `[0u8; max_encoded_len(N)]`.
pub const fn max_encoded_len(payload_len: usize) -> usize {
    let raw = raw_len(payload_len);
    raw + div254(raw) + 1 + 1
}

/// `x / 254` (COBS's full blocks) without a division: a Cortex-M0 has no divide instruction,
/// and the software one costs about 450 bytes of flash. Each step takes `r / 256` blocks
/// (never too many), shrinking the remainder about 128-fold: at most 3 steps below 64 KiB,
/// 5 for a `u32`, 10 for a `u64`.
pub(crate) const fn div254(x: usize) -> usize {
    let (mut q, mut r) = (0, x);
    while r >= 254 {
        let d = if r >= 256 { r >> 8 } else { 1 };
        q += d;
        r -= d * 254;
    }
    q
}

/// The payload capacity of a [`Decoder`] whose storage is `buf_len` bytes long.
pub const fn payload_capacity(buf_len: usize) -> usize {
    let cap = buf_len.saturating_sub(OVERHEAD);
    if cap > MAX_PAYLOAD {
        MAX_PAYLOAD
    } else {
        cap
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod div254_tests {
    #[test]
    fn div254_is_the_quotient() {
        for x in 0..200_000 {
            assert_eq!(super::div254(x), x / 254, "{x}");
        }
        for x in [
            usize::MAX,
            usize::MAX - 1,
            usize::MAX / 254 * 254,
            u32::MAX as usize,
        ] {
            assert_eq!(super::div254(x), x / 254, "{x}");
        }
    }
}
