//! The streaming frame decoder.

use super::cobs::{Event, Unstuffer};
use super::header::{FrameView, Header, HeaderError};
use super::{crc32c, CRC_LEN, HEADER_LEN, OVERHEAD};

/// One whole, checked frame, borrowed from the [`Decoder`]'s storage until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Frame<'a> {
    /// The parsed header.
    pub header: Header,
    /// The payload.
    pub payload: &'a [u8],
}

/// Why the decoder dropped a frame. Each is counted in [`DecoderStats`]; decoding goes on
/// at the next delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// The frame would not fit the decoder's storage. Reported as soon as that is known;
    /// the rest of the frame, up to its delimiter, is skipped.
    TooLong,
    /// The COBS encoding is broken: a delimiter arrived in the middle of a block.
    Cobs,
    /// The CRC-32C does not match header and payload.
    Crc {
        /// The CRC field of the frame.
        received: u32,
        /// The CRC computed over the frame's header and payload.
        computed: u32,
    },
    /// The CRC matched (or the frame was too short to carry one) but the header is not valid.
    Header(HeaderError),
    /// A version 2 frame whose check is right but whose content is not, or of a length no
    /// version 2 frame has (`PROTOCOL.md` 11.3.4, 11.5).
    #[cfg(feature = "v2")]
    Malformed,
}

/// A frame of either format, as [`Decoder::decode_any`] delivers it: version 1 (section 2
/// of `PROTOCOL.md`) or a version 2 session frame (section 11), told apart by the first byte.
#[cfg(feature = "v2")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AnyFrame<'a> {
    /// A version 1 frame.
    V1(Frame<'a>),
    /// A version 2 session frame.
    V2(super::v2::Frame<'a>),
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::TooLong => f.write_str("frame longer than the decoder's buffer"),
            FrameError::Cobs => f.write_str("broken COBS encoding (frame cut short)"),
            FrameError::Crc { received, computed } => write!(
                f,
                "CRC mismatch: frame says {received:#010x}, content gives {computed:#010x}"
            ),
            FrameError::Header(e) => write!(f, "bad header: {e}"),
            #[cfg(feature = "v2")]
            FrameError::Malformed => f.write_str("malformed version 2 frame"),
        }
    }
}

impl core::error::Error for FrameError {}

/// What a [`Decoder`] has seen. Frame counters wrap at `u32::MAX` like SNMP's
/// `Counter32`: take differences with `wrapping_sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DecoderStats {
    /// Bytes fed to the decoder.
    pub bytes: u64,
    /// Frames delivered.
    pub frames: u32,
    /// Frames dropped for not fitting the storage.
    pub too_long: u32,
    /// Frames dropped for broken COBS.
    pub cobs_errors: u32,
    /// Frames dropped for a CRC mismatch.
    pub crc_errors: u32,
    /// Frames dropped for being too short or having a bad header.
    pub header_errors: u32,
}

impl DecoderStats {
    /// Every frame dropped, whatever the reason.
    pub fn dropped(&self) -> u32 {
        self.too_long
            .wrapping_add(self.cobs_errors)
            .wrapping_add(self.crc_errors)
            .wrapping_add(self.header_errors)
    }

    fn count(&mut self, error: &FrameError) {
        let counter = match error {
            FrameError::TooLong => &mut self.too_long,
            FrameError::Cobs => &mut self.cobs_errors,
            FrameError::Crc { .. } => &mut self.crc_errors,
            FrameError::Header(_) => &mut self.header_errors,
            #[cfg(feature = "v2")]
            FrameError::Malformed => &mut self.header_errors,
        };
        *counter = counter.wrapping_add(1);
    }
}

/// A streaming frame decoder over caller-supplied storage.
///
/// Feed it bytes in any chunking with [`Decoder::decode`]: one byte at a time, or many
/// frames in one slice. Memory is the storage `B` and a few words; the largest raw frame it
/// accepts is the storage's length (see [`super::raw_len`]). No input makes it panic, loop
/// or allocate.
///
/// ```
/// use tether_core::frame::{self, Decoder, FrameError, Header, Kind};
///
/// let mut wire = [0u8; 2 * frame::max_encoded_len(3) + 4];
/// let mut n = frame::encode(&Header::default(), b"one", &mut wire)?;
/// wire[n..n + 4].copy_from_slice(&[0x42, 0x13, 0x37, 0x00]); // line noise, then a delimiter
/// n += 4;
/// n += frame::encode(&Header { seq: 1, ..Header::default() }, b"two", &mut wire[n..])?;
///
/// let mut decoder = Decoder::new([0u8; frame::raw_len(16)]);
/// let mut input = &wire[..n];
/// let mut payloads = [[0u8; 3]; 2];
/// let mut got = 0;
/// while let Some(result) = decoder.decode(&mut input) {
///     match result {
///         Ok(f) => { payloads[got].copy_from_slice(f.payload); got += 1 }
///         Err(FrameError::Cobs) => {} // the noise: dropped and counted
///         Err(e) => panic!("unexpected {e}"),
///     }
/// }
/// assert_eq!(&payloads, &[*b"one", *b"two"]);
/// assert_eq!(decoder.stats().cobs_errors, 1);
/// # Ok::<(), frame::EncodeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Decoder<B> {
    storage: B,
    state: DecodeState,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Decoder<B> {
    /// A decoder that accepts raw frames up to `storage.len()` bytes.
    pub const fn new(storage: B) -> Self {
        Decoder {
            storage,
            state: DecodeState::new(),
        }
    }

    /// Decodes from the front of `input`, advancing it past what was consumed.
    ///
    /// Returns `Some(Ok(frame))` for a good frame, `Some(Err(why))` for a dropped one, and
    /// `None` once `input` is used up without completing a frame (the partial frame is kept
    /// for the next call). Call it in a `while let` loop until `None`.
    pub fn decode<'d>(&'d mut self, input: &mut &[u8]) -> Option<Result<Frame<'d>, FrameError>> {
        self.state.decode(self.storage.as_mut(), input)
    }

    /// [`Decoder::decode`] for a stream that may carry version 2 session frames too
    /// (`PROTOCOL.md` 11.5): a frame whose first byte has bit 7 set is checked and parsed as
    /// version 2, every other one as version 1. [`Decoder::decode`] takes every frame as
    /// version 1, as a version 1 receiver does.
    #[cfg(feature = "v2")]
    pub fn decode_any<'d>(
        &'d mut self,
        input: &mut &[u8],
    ) -> Option<Result<AnyFrame<'d>, FrameError>> {
        self.state.decode_any(self.storage.as_mut(), input)
    }

    /// What the decoder has seen so far.
    pub fn stats(&self) -> DecoderStats {
        self.state.stats
    }

    /// The largest payload this decoder accepts.
    pub fn payload_capacity(&self) -> usize {
        super::payload_capacity(self.storage.as_ref().len())
    }

    /// Whether a frame has started arriving and has not ended yet.
    pub fn in_frame(&self) -> bool {
        self.state.in_frame()
    }

    /// Forgets any partial frame, e.g. after the underlying connection was replaced.
    pub fn reset(&mut self) {
        self.state.reset();
    }

    /// Gives the storage back.
    pub fn into_inner(self) -> B {
        self.storage
    }
}

/// The decoder's state without its storage, for owners (the link) that keep the frame
/// buffer elsewhere and lend it on each call.
#[derive(Debug, Clone)]
pub(crate) struct DecodeState {
    unstuffer: Unstuffer,
    pub(crate) stats: DecoderStats,
}

impl DecodeState {
    pub(crate) const fn new() -> Self {
        DecodeState {
            unstuffer: Unstuffer::new(),
            stats: DecoderStats {
                bytes: 0,
                frames: 0,
                too_long: 0,
                cobs_errors: 0,
                crc_errors: 0,
                header_errors: 0,
            },
        }
    }

    /// [`Decoder::decode`] over a lent buffer, which must be the same from call to call
    /// while a frame is in progress.
    pub(crate) fn decode<'d>(
        &mut self,
        buf: &'d mut [u8],
        input: &mut &[u8],
    ) -> Option<Result<Frame<'d>, FrameError>> {
        let (event, used) = self.unstuffer.feed(buf, input);
        self.stats.bytes = self.stats.bytes.wrapping_add(used as u64);
        *input = &input[used..];
        let result = match event {
            Event::NeedMore => return None,
            Event::TooLong => Err(FrameError::TooLong),
            Event::Truncated => Err(FrameError::Cobs),
            Event::Frame(len) => {
                let raw: &'d [u8] = &buf[..len];
                check(raw).map(|header| Frame {
                    header,
                    payload: &raw[HEADER_LEN..len - CRC_LEN],
                })
            }
        };
        match &result {
            Ok(_) => self.stats.frames = self.stats.frames.wrapping_add(1),
            Err(e) => self.stats.count(e),
        }
        Some(result)
    }

    /// [`Decoder::decode_any`] over a lent buffer.
    #[cfg(feature = "v2")]
    pub(crate) fn decode_any<'d>(
        &mut self,
        buf: &'d mut [u8],
        input: &mut &[u8],
    ) -> Option<Result<AnyFrame<'d>, FrameError>> {
        let (event, used) = self.unstuffer.feed(buf, input);
        self.stats.bytes = self.stats.bytes.wrapping_add(used as u64);
        *input = &input[used..];
        let result = match event {
            Event::NeedMore => return None,
            Event::TooLong => Err(FrameError::TooLong),
            Event::Truncated => Err(FrameError::Cobs),
            Event::Frame(len) => {
                let raw: &'d [u8] = &buf[..len];
                if raw.first().is_some_and(|b| b & super::v2::MARK != 0) {
                    super::v2::decode_raw(raw).map(AnyFrame::V2)
                } else {
                    check(raw).map(|header| {
                        AnyFrame::V1(Frame {
                            header,
                            payload: &raw[HEADER_LEN..len - CRC_LEN],
                        })
                    })
                }
            }
        };
        match &result {
            Ok(_) => self.stats.frames = self.stats.frames.wrapping_add(1),
            Err(e) => self.stats.count(e),
        }
        Some(result)
    }

    pub(crate) fn in_frame(&self) -> bool {
        self.unstuffer.in_frame()
    }

    pub(crate) fn reset(&mut self) {
        self.unstuffer = Unstuffer::new();
    }
}

/// Validates one unstuffed raw frame: the CRC first, so that line noise counts as a CRC
/// error rather than as a bad header; then the header.
fn check(raw: &[u8]) -> Result<Header, FrameError> {
    if raw.len() < OVERHEAD {
        return Err(FrameError::Header(HeaderError::TooShort { len: raw.len() }));
    }
    let (body, trailer) = raw.split_at(raw.len() - CRC_LEN);
    let mut crc = [0u8; CRC_LEN];
    crc.copy_from_slice(trailer);
    let received = u32::from_le_bytes(crc);
    let computed = crc32c(body);
    if received != computed {
        return Err(FrameError::Crc { received, computed });
    }
    let view = FrameView::new_checked(raw).map_err(FrameError::Header)?;
    Header::parse(&view).map_err(FrameError::Header)
}
