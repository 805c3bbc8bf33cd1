//! Frame encoding: into a caller's buffer, or into any `embedded_io::Write`.

use super::cobs::{encode_blocks, encode_short, BlockSink, SliceSink};
use super::header::Header;
use super::{max_encoded_len, Crc32c, DELIMITER, MAX_PAYLOAD};

/// Payloads shorter than this are stuffed byte-wise ([`encode_short`]).
const SHORT_FRAME: usize = 256;

/// Why a frame could not be encoded into a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncodeError {
    /// The payload is longer than [`MAX_PAYLOAD`].
    PayloadTooLong {
        /// The payload's length.
        len: usize,
    },
    /// The output buffer is shorter than [`max_encoded_len`] of the payload.
    BufferTooSmall {
        /// The length required.
        needed: usize,
        /// The length given.
        available: usize,
    },
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            EncodeError::PayloadTooLong { len } => {
                write!(
                    f,
                    "payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD}"
                )
            }
            EncodeError::BufferTooSmall { needed, available } => write!(
                f,
                "output buffer of {available} bytes is too small; {needed} are needed"
            ),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why [`write_frame`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WriteFrameError<E> {
    /// The payload is longer than [`MAX_PAYLOAD`]; nothing was written.
    PayloadTooLong {
        /// The payload's length.
        len: usize,
    },
    /// The writer accepted zero bytes: it can take no more. Part of the frame may have
    /// been written; the peer drops the partial frame at the next delimiter.
    WriteZero,
    /// The writer failed. Part of the frame may have been written, as above.
    Io(E),
}

impl<E: core::fmt::Debug> core::fmt::Display for WriteFrameError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WriteFrameError::PayloadTooLong { len } => {
                write!(
                    f,
                    "payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD}"
                )
            }
            WriteFrameError::WriteZero => f.write_str("the writer accepted no bytes"),
            WriteFrameError::Io(e) => write!(f, "write failed: {e:?}"),
        }
    }
}

impl<E: core::fmt::Debug> core::error::Error for WriteFrameError<E> {}

/// The header bytes and CRC trailer of a frame, ready to be stuffed around its payload.
fn head_and_tail(header: &Header, payload: &[u8]) -> Option<([u8; super::HEADER_LEN], [u8; 4])> {
    let head = header.to_bytes(payload.len())?;
    let mut crc = Crc32c::new();
    crc.update(&head);
    crc.update(payload);
    Some((head, crc.finalize().to_le_bytes()))
}

/// Encodes one frame, delimiter included, at the start of `out`, and returns its length.
///
/// `out` must hold at least [`max_encoded_len`]`(payload.len())` bytes, the worst case, so
/// that whether a frame fits never depends on its content.
pub fn encode(header: &Header, payload: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_parts(header, payload, &[], out)
}

/// [`encode`] of a payload given in two parts, `payload ‖ trailer` (an authenticated
/// link's frame trailer), without copying them together.
pub(crate) fn encode_parts(
    header: &Header,
    payload: &[u8],
    trailer: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let len = payload.len() + trailer.len();
    let head = header
        .to_bytes(len)
        .ok_or(EncodeError::PayloadTooLong { len })?;
    let mut crc = Crc32c::new();
    crc.update(&head);
    crc.update(payload);
    crc.update(trailer);
    let tail = crc.finalize().to_le_bytes();
    let needed = max_encoded_len(len);
    if out.len() < needed {
        return Err(EncodeError::BufferTooSmall {
            needed,
            available: out.len(),
        });
    }
    let pieces: [&[u8]; 4] = [&head, payload, trailer, &tail];
    // Byte-wise for short frames, block-wise (memchr over long runs) for the rest: the
    // same output (tested), fewer instructions each.
    // Hosts only: on a microcontroller the second routine costs flash and the block-wise
    // one is what `write_frame` uses anyway (scripts/size-report.sh).
    let short = cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) && len < SHORT_FRAME;
    let n = if short {
        encode_short(&pieces, out)
    } else {
        let mut sink = SliceSink::new(out);
        let Ok(()) = encode_blocks(&pieces, &mut sink);
        sink.finish()
    };
    // Within bounds: COBS never writes more than max_encoded_len - 1 bytes.
    out[n] = DELIMITER;
    Ok(n + 1)
}

/// Encodes one frame, delimiter included, into `writer`, and returns the bytes written.
///
/// Uses 256 bytes of stack and writes at most 256 bytes at a time, so a small frame costs
/// one `write` call. On a host with large frames, [`encode`] into a buffer and one
/// `write_all` is faster.
pub fn write_frame<W: embedded_io::Write>(
    writer: &mut W,
    header: &Header,
    payload: &[u8],
) -> Result<usize, WriteFrameError<W::Error>> {
    let (head, tail) = head_and_tail(header, payload)
        .ok_or(WriteFrameError::PayloadTooLong { len: payload.len() })?;
    let mut sink = WriterSink {
        writer,
        block: [0u8; 255],
        block_len: 1,
        staged: Staging {
            buf: [0u8; 256],
            len: 0,
            total: 0,
        },
    };
    encode_blocks(&[&head, payload, &tail], &mut sink)?;
    let WriterSink {
        writer, mut staged, ..
    } = sink;
    staged.push(writer, &[DELIMITER])?;
    staged.flush(writer)?;
    Ok(staged.total)
}

/// A [`BlockSink`] that assembles each block (at most 255 bytes) and stages it for the
/// writer.
struct WriterSink<'w, W> {
    writer: &'w mut W,
    /// The current block; `block[0]` is its code byte, filled in when it ends.
    block: [u8; 255],
    block_len: usize,
    staged: Staging,
}

impl<W: embedded_io::Write> BlockSink for WriterSink<'_, W> {
    type Error = WriteFrameError<W::Error>;

    fn data(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        // encode_blocks never lets a block exceed 254 data bytes.
        self.block[self.block_len..self.block_len + bytes.len()].copy_from_slice(bytes);
        self.block_len += bytes.len();
        Ok(())
    }

    fn end_block(&mut self, code: u8) -> Result<(), Self::Error> {
        self.block[0] = code;
        self.staged
            .push(self.writer, &self.block[..self.block_len])?;
        self.block_len = 1;
        Ok(())
    }
}

/// Gathers COBS blocks (at most 255 bytes each) into writes of up to 256 bytes.
struct Staging {
    buf: [u8; 256],
    len: usize,
    total: usize,
}

impl Staging {
    fn push<W: embedded_io::Write>(
        &mut self,
        writer: &mut W,
        bytes: &[u8],
    ) -> Result<(), WriteFrameError<W::Error>> {
        if self.len + bytes.len() > self.buf.len() {
            self.flush(writer)?;
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }

    fn flush<W: embedded_io::Write>(
        &mut self,
        writer: &mut W,
    ) -> Result<(), WriteFrameError<W::Error>> {
        // Not `write_all`: embedded-io's panics when a writer returns Ok(0).
        let mut rest = &self.buf[..self.len];
        while !rest.is_empty() {
            match writer.write(rest) {
                Ok(0) => return Err(WriteFrameError::WriteZero),
                Ok(n) => {
                    // A writer that claims more than it was given is broken; do not index past.
                    let n = n.min(rest.len());
                    rest = &rest[n..];
                    self.total += n;
                }
                Err(e) => return Err(WriteFrameError::Io(e)),
            }
        }
        self.len = 0;
        Ok(())
    }
}
