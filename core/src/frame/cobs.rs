//! Consistent Overhead Byte Stuffing (Cheshire and Baker, 1999), streaming in both
//! directions and over caller-owned memory.
//!
//! Written here rather than taken from a crate because it is the product: the decoder has to
//! fuse unstuffing with the frame-size bound, resynchronisation at the delimiter, error
//! counting and chunk-at-a-time input, and the encoder has to stuff a frame that is not
//! contiguous in memory (header, payload and CRC) without staging it whole.

/// The largest code byte: a block of 254 data bytes with no implicit zero after it.
const MAX_CODE: u8 = 0xFF;

/// Where [`encode_blocks`] puts its output.
pub(crate) trait BlockSink {
    type Error;
    /// Appends data bytes (never `0x00`) to the current block.
    fn data(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Ends the current block with this code byte and starts the next one.
    fn end_block(&mut self, code: u8) -> Result<(), Self::Error>;
}

/// The position of the first `0x00` in `bytes`.
///
/// Runs between the zeros of a frame are often short (a header has several zeros), where
/// `memchr`'s set-up costs more than the search. Measured with `cargo bench --bench frame`
/// (16-byte payloads): a plain loop below 32 bytes cut encode from 137 to 111 ns a frame; an
/// eight-bytes-at-a-time SWAR test was slower than the plain loop (135 ns). On targets
/// without vector units (microcontrollers) `memchr` has nothing to offer over the loop and
/// costs 376 bytes of flash (`scripts/size-report.sh`), so it is used only where it has SIMD.
#[inline]
pub(crate) fn find_zero(bytes: &[u8]) -> Option<usize> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if bytes.len() >= 32 {
        return memchr::memchr(0, bytes);
    }
    bytes.iter().position(|&b| b == 0)
}

/// Encodes the concatenation of `pieces` (without delimiter) into `sink`.
///
/// The output is canonical: a frame whose last block is a full 254-byte block ends with a
/// `0x01` code byte (the encoding of the implicit final zero that is then dropped).
pub(crate) fn encode_blocks<S: BlockSink>(pieces: &[&[u8]], sink: &mut S) -> Result<(), S::Error> {
    // The code byte of the current block: one more than its data bytes so far.
    let mut code: u8 = 1;
    for piece in pieces {
        let mut rest: &[u8] = piece;
        while !rest.is_empty() {
            let room = usize::from(MAX_CODE - code);
            let window = &rest[..room.min(rest.len())];
            let (run, ends_in_zero) = match find_zero(window) {
                Some(i) => (i, true),
                None => (window.len(), false),
            };
            sink.data(&window[..run])?;
            // run <= room <= 254, so the sum stays within u8.
            code += run as u8;
            rest = &rest[run + usize::from(ends_in_zero)..];
            if ends_in_zero || code == MAX_CODE {
                sink.end_block(code)?;
                code = 1;
            }
        }
    }
    sink.end_block(code)
}

/// [`encode_blocks`] into a slice that holds the whole encoding (see `max_encoded_len`), a
/// byte at a time, returning the encoded length (without delimiter). Same output.
///
/// For short frames, where the header's zeros make blocks of a few bytes, this takes fewer
/// instructions than the block-wise loop (callgrind, with the unstuffing fast path below:
/// 200,000 16-byte frames encoded and decoded, 471.7 M → 335.8 M instructions); long runs
/// are faster block-wise, with `memchr`.
pub(crate) fn encode_short(pieces: &[&[u8]], out: &mut [u8]) -> usize {
    let mut code_at = 0;
    let mut len = 1;
    let mut code: u8 = 1;
    for piece in pieces {
        for &b in *piece {
            if b == 0 {
                out[code_at] = code;
                code_at = len;
                code = 1;
            } else {
                out[len] = b;
                code += 1;
                if code == MAX_CODE {
                    out[code_at] = code;
                    len += 1;
                    code_at = len;
                    code = 1;
                }
            }
            len += 1;
        }
    }
    out[code_at] = code;
    len
}

/// COBS-encodes, in place, the `len` bytes at `buf[start..]` into `buf[..]` (without
/// delimiter), returning the encoded length: the same output as [`encode_short`]. The
/// version 2 frame builder writes a raw frame at an offset in the transmit buffer and stuffs
/// it there, so that a frame of many records needs no list of pieces and no second buffer.
///
/// The caller guarantees `start >= 1 + len / 254` (the most bytes COBS adds before it reaches
/// any input byte, so no write overtakes the reading) and `buf.len() >= start + len`.
#[cfg(feature = "v2")]
pub(crate) fn encode_in_place(buf: &mut [u8], start: usize, len: usize) -> usize {
    let mut code_at = 0;
    let mut w = 1;
    let mut code: u8 = 1;
    for r in start..start + len {
        let b = buf[r];
        if b == 0 {
            buf[code_at] = code;
            code_at = w;
            code = 1;
        } else {
            buf[w] = b;
            code += 1;
            if code == MAX_CODE {
                buf[code_at] = code;
                w += 1;
                code_at = w;
                code = 1;
            }
        }
        w += 1;
    }
    buf[code_at] = code;
    w
}

/// Unstuffs one whole encoded frame (its bytes up to, without, the delimiter; none is 0)
/// into `buf`: the decoded length, or `None` if it is malformed (a block longer than what
/// is left) or longer than `buf`, which [`Unstuffer::feed`]'s byte-wise path then reports.
fn unstuff_whole(enc: &[u8], buf: &mut [u8]) -> Option<usize> {
    let mut i = 0;
    let mut n = 0;
    while let Some(&code) = enc.get(i) {
        i += 1;
        let run = usize::from(code) - 1;
        let block = enc.get(i..i + run)?;
        buf.get_mut(n..n + run)?.copy_from_slice(block);
        n += run;
        i += run;
        if code != MAX_CODE && i < enc.len() {
            *buf.get_mut(n)? = 0;
            n += 1;
        }
    }
    Some(n)
}

/// A [`BlockSink`] over a slice that is long enough for the whole encoding: data goes
/// straight to its place, and each code byte is written back into the slot kept for it.
pub(crate) struct SliceSink<'a> {
    pub(crate) out: &'a mut [u8],
    /// Where the current block's code byte goes.
    code_at: usize,
    /// Where the next data byte goes.
    pub(crate) len: usize,
}

impl<'a> SliceSink<'a> {
    /// The caller guarantees `out` holds the whole encoding (see `max_encoded_len`).
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        SliceSink {
            out,
            code_at: 0,
            len: 1,
        }
    }
}

impl BlockSink for SliceSink<'_> {
    type Error = core::convert::Infallible;

    #[inline]
    fn data(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.out[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }

    #[inline]
    fn end_block(&mut self, code: u8) -> Result<(), Self::Error> {
        self.out[self.code_at] = code;
        self.code_at = self.len;
        self.len += 1;
        Ok(())
    }
}

impl SliceSink<'_> {
    /// The encoded length: everything but the slot reserved for a next block that never
    /// came.
    pub(crate) fn finish(self) -> usize {
        self.len - 1
    }
}

/// Where the unstuffer is within a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum Mode {
    /// Between frames: nothing of the next frame has arrived yet.
    Idle,
    /// The next byte is a code byte; `zero` says whether the block before it ends in an
    /// implicit zero that must be written if another block follows.
    Code { zero: bool },
    /// Inside a block, `left` data bytes still to come; `zero` as above, for this block.
    Data { left: u8, zero: bool },
    /// Skipping the rest of a rejected frame up to its delimiter.
    Discard,
}

/// What [`Unstuffer::feed`] stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Input exhausted within a frame or between frames.
    NeedMore,
    /// A delimiter ended a frame of this many decoded bytes, now at the start of the buffer.
    Frame(usize),
    /// The frame does not fit the buffer; the rest of it will be skipped.
    TooLong,
    /// A delimiter arrived in the middle of a block: the frame was cut short.
    Truncated,
}

/// The COBS decoding state. It holds no buffer: the caller passes its buffer to each call,
/// so one copy of this code serves decoders of every size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) struct Unstuffer {
    mode: Mode,
    len: usize,
}

impl Unstuffer {
    pub(crate) const fn new() -> Self {
        Unstuffer {
            mode: Mode::Idle,
            len: 0,
        }
    }

    /// Whether a frame has started and not yet ended (or is being discarded).
    pub(crate) fn in_frame(&self) -> bool {
        self.mode != Mode::Idle
    }

    /// Unstuffs bytes from the front of `input` into `buf` until an event.
    ///
    /// Returns the event and how many bytes of `input` it consumed. Every call consumes at
    /// least one byte unless `input` is empty, so a caller's loop always terminates.
    pub(crate) fn feed(&mut self, buf: &mut [u8], input: &[u8]) -> (Event, usize) {
        let mut pos = 0;
        while pos < input.len() {
            // Fast path: a whole frame from its first byte to its delimiter is in `input`.
            // Anything unusual (a malformed or too long frame) takes the byte-wise path
            // below from the same state, so events and counts are the same either way.
            // Hosts only, as `find_zero`'s memchr: it costs flash a microcontroller would
            // spend to save time it has to spare (scripts/size-report.sh).
            if cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
                && self.mode == Mode::Idle
                && input[pos] != 0
            {
                if let Some(end) = find_zero(&input[pos..]) {
                    if let Some(n) = unstuff_whole(&input[pos..pos + end], buf) {
                        return (Event::Frame(n), pos + end + 1);
                    }
                }
            }
            match self.mode {
                Mode::Discard => match find_zero(&input[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        self.reset();
                    }
                    None => pos = input.len(),
                },
                Mode::Data { left, zero } => {
                    let avail = &input[pos..];
                    let window = &avail[..usize::from(left).min(avail.len())];
                    let run = find_zero(window).unwrap_or(window.len());
                    if run > 0 {
                        let Some(dst) = buf.get_mut(self.len..self.len + run) else {
                            self.mode = Mode::Discard;
                            return (Event::TooLong, pos);
                        };
                        dst.copy_from_slice(&window[..run]);
                        self.len += run;
                        pos += run;
                        // run <= left, a u8.
                        let left = left - run as u8;
                        self.mode = if left == 0 {
                            Mode::Code { zero }
                        } else {
                            Mode::Data { left, zero }
                        };
                    }
                    if run < window.len() {
                        // A delimiter inside a block: this frame is cut short, and the
                        // delimiter starts the next one.
                        pos += 1;
                        self.reset();
                        return (Event::Truncated, pos);
                    }
                }
                Mode::Idle | Mode::Code { .. } => {
                    let byte = input[pos];
                    pos += 1;
                    if byte == 0 {
                        let was = self.mode;
                        let len = self.len;
                        self.reset();
                        if was == Mode::Idle {
                            // Back-to-back delimiters: an empty frame, ignored.
                            continue;
                        }
                        return (Event::Frame(len), pos);
                    }
                    if let Mode::Code { zero: true } = self.mode {
                        let Some(slot) = buf.get_mut(self.len) else {
                            self.mode = Mode::Discard;
                            return (Event::TooLong, pos);
                        };
                        *slot = 0;
                        self.len += 1;
                    }
                    let zero = byte != MAX_CODE;
                    self.mode = if byte == 1 {
                        Mode::Code { zero }
                    } else {
                        Mode::Data {
                            left: byte - 1,
                            zero,
                        }
                    };
                }
            }
        }
        (Event::NeedMore, pos)
    }

    fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_pieces(pieces: &[&[u8]], out: &mut [u8]) -> usize {
        let mut sink = SliceSink::new(out);
        let Ok(()) = encode_blocks(pieces, &mut sink);
        sink.finish()
    }

    fn encode_vec(data: &[u8], out: &mut [u8]) -> usize {
        encode_pieces(&[data], out)
    }

    fn roundtrip(data: &[u8]) {
        let mut enc = [0u8; 1200];
        let n = encode_vec(data, &mut enc);
        assert!(!enc[..n].contains(&0), "encoded bytes hold no zero");
        assert!(n <= data.len() + data.len() / 254 + 1);
        enc[n] = 0;
        let mut buf = [0u8; 1024];
        let mut u = Unstuffer::new();
        let (ev, used) = u.feed(&mut buf, &enc[..=n]);
        assert_eq!((ev, used), (Event::Frame(data.len()), n + 1));
        assert_eq!(&buf[..data.len()], data);
    }

    #[test]
    fn wikipedia_examples_encode_as_published() {
        // The examples of the COBS article, delimiter omitted.
        let cases: &[(&[u8], &[u8])] = &[
            (&[0x00], &[0x01, 0x01]),
            (&[0x00, 0x00], &[0x01, 0x01, 0x01]),
            (&[0x00, 0x11, 0x00], &[0x01, 0x02, 0x11, 0x01]),
            (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
            (&[0x11, 0x22, 0x33, 0x44], &[0x05, 0x11, 0x22, 0x33, 0x44]),
            (&[0x11, 0x00, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01, 0x01]),
        ];
        for (data, want) in cases {
            let mut out = [0u8; 16];
            let n = encode_vec(data, &mut out);
            assert_eq!(&out[..n], *want, "encoding {data:02x?}");
            roundtrip(data);
        }
    }

    #[test]
    fn full_blocks_round_trip_at_every_boundary() {
        let data: [u8; 1000] = core::array::from_fn(|i| (i % 255 + 1) as u8);
        for len in [0, 1, 253, 254, 255, 507, 508, 509, 762, 1000] {
            roundtrip(&data[..len]);
        }
        // 254 non-zero bytes: one full block, then the canonical 0x01.
        let mut out = [0u8; 300];
        let n = encode_vec(&data[..254], &mut out);
        assert_eq!((out[0], out[255], n), (0xFF, 0x01, 256));
    }

    /// The byte-wise encoder writes exactly what the block-wise one writes: every length up
    /// to three blocks, runs of non-zero bytes crossing each block boundary, zeros at the
    /// start, the end and in runs, split into pieces anywhere.
    #[test]
    fn byte_wise_encoding_equals_block_wise() {
        let patterns: [fn(usize) -> u8; 4] = [
            |i| (i % 255 + 1) as u8,
            |i| (i * 7 % 13) as u8,
            |i| if i % 300 == 299 { 0 } else { 0x5A },
            |_| 0,
        ];
        for pattern in patterns {
            let data: [u8; 800] = core::array::from_fn(pattern);
            for len in (0..800)
                .step_by(7)
                .chain([253, 254, 255, 508, 509, 762, 763])
            {
                let mut a = [0u8; 820];
                let n = encode_vec(&data[..len], &mut a);
                for cut in [0, len / 3, len] {
                    let mut b = [0xEEu8; 820];
                    let m = encode_short(&[&data[..cut], &data[cut..len]], &mut b);
                    assert_eq!(&b[..m], &a[..n], "length {len}, cut {cut}");
                }
            }
        }
    }

    /// The in-place encoder writes what the byte-wise one writes, for every length around the
    /// block boundaries and the least offset the caller may give.
    #[cfg(feature = "v2")]
    #[test]
    fn in_place_encoding_equals_byte_wise() {
        let patterns: [fn(usize) -> u8; 3] = [
            |i| (i % 255 + 1) as u8,
            |i| (i * 7 % 13) as u8,
            |i| if i % 300 == 299 { 0 } else { 0x5A },
        ];
        for pattern in patterns {
            let data: [u8; 800] = core::array::from_fn(pattern);
            for len in (0..800)
                .step_by(11)
                .chain([253, 254, 255, 508, 509, 762, 763])
            {
                let mut a = [0u8; 820];
                let n = encode_short(&[&data[..len]], &mut a);
                let start = 1 + len / 254;
                let mut b = [0xEEu8; 820];
                b[start..start + len].copy_from_slice(&data[..len]);
                let m = encode_in_place(&mut b, start, len);
                assert_eq!(&b[..m], &a[..n], "length {len}");
            }
        }
    }

    #[test]
    fn pieces_encode_like_their_concatenation() {
        let data: [u8; 600] = core::array::from_fn(|i| (i * 7 % 13) as u8);
        let mut whole = [0u8; 700];
        let n = encode_vec(&data, &mut whole);
        for cut in [0, 1, 13, 254, 255, 599, 600] {
            let mut parts = [0u8; 700];
            let m = encode_pieces(&[&data[..cut], &data[cut..]], &mut parts);
            assert_eq!(&parts[..m], &whole[..n], "cut at {cut}");
        }
    }

    #[test]
    fn delimiter_inside_a_block_truncates_and_starts_next_frame() {
        let mut buf = [0u8; 16];
        let mut u = Unstuffer::new();
        let (ev, used) = u.feed(&mut buf, &[0x05, 0x11, 0x22, 0x00, 0x02, 0x33, 0x00]);
        assert_eq!((ev, used), (Event::Truncated, 4));
        let (ev, used) = u.feed(&mut buf, &[0x02, 0x33, 0x00]);
        assert_eq!((ev, used), (Event::Frame(1), 3));
        assert_eq!(buf[0], 0x33);
    }

    #[test]
    fn too_long_discards_to_the_delimiter() {
        let mut buf = [0u8; 2];
        let mut u = Unstuffer::new();
        let (ev, used) = u.feed(&mut buf, &[0x05, 1, 2, 3, 4, 0x00, 0x02, 9, 0x00]);
        assert_eq!((ev, used), (Event::TooLong, 1));
        let (ev, used) = u.feed(&mut buf, &[1, 2, 3, 4, 0x00, 0x02, 9, 0x00][..]);
        assert_eq!((ev, used), (Event::Frame(1), 8));
        assert_eq!(buf[0], 9);
    }

    #[test]
    fn find_zero_agrees_with_a_byte_loop_at_every_length_and_position() {
        for len in 0..80 {
            for zero_at in 0..=len {
                let mut bytes = [0x80u8; 80];
                // 0x80 and 0x01 around the zero are the SWAR test's hardest neighbours.
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = if i % 2 == 0 { 0x80 } else { 0x01 };
                }
                if zero_at < len {
                    bytes[zero_at] = 0;
                    if zero_at + 1 < len {
                        bytes[zero_at + 1] = 0;
                    }
                }
                let s = &bytes[..len];
                assert_eq!(
                    find_zero(s),
                    s.iter().position(|&b| b == 0),
                    "{len} {zero_at}"
                );
            }
        }
    }

    #[test]
    fn empty_frames_between_delimiters_are_ignored() {
        let mut buf = [0u8; 4];
        let mut u = Unstuffer::new();
        assert_eq!(u.feed(&mut buf, &[0, 0, 0]), (Event::NeedMore, 3));
        assert!(!u.in_frame());
    }
}
