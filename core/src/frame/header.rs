//! The fixed frame header: a checked view over raw bytes ([`FrameView`]) and its parsed
//! representation ([`Header`]), in the manner of smoltcp's `wire` module.

use super::{crc32c, CRC_LEN, HEADER_LEN, MAX_PAYLOAD};

/// Byte offsets of the header fields (`PROTOCOL.md`, "Raw frame layout").
mod field {
    use core::ops::Range;
    pub const KIND: usize = 0;
    pub const FLAGS: usize = 1;
    pub const SEQ: Range<usize> = 2..6;
    pub const ACK: Range<usize> = 6..10;
    pub const CREDIT: Range<usize> = 10..12;
    pub const LEN: Range<usize> = 12..14;
}

/// What a frame is for. The link layer gives each kind its meaning; the frame layer only
/// checks that the value is one it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Kind {
    /// Opens or resumes a session (sent by the side that connects).
    Hello = 0x01,
    /// Accepts a HELLO.
    Welcome = 0x02,
    /// Refuses a HELLO, with a reason for the peer's user.
    Reject = 0x03,
    /// Carries one record.
    #[default]
    Data = 0x04,
    /// Carries only acknowledgement and credit.
    Ack = 0x05,
    /// Asks the peer for a sign of life.
    Ping = 0x06,
    /// Ends the session gracefully.
    Close = 0x07,
}

impl Kind {
    /// Every kind, in wire-value order.
    pub const ALL: [Kind; 7] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::Reject,
        Kind::Data,
        Kind::Ack,
        Kind::Ping,
        Kind::Close,
    ];

    /// The kind with wire value `value`, if there is one.
    pub const fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            0x01 => Kind::Hello,
            0x02 => Kind::Welcome,
            0x03 => Kind::Reject,
            0x04 => Kind::Data,
            0x05 => Kind::Ack,
            0x06 => Kind::Ping,
            0x07 => Kind::Close,
            _ => return None,
        })
    }
}

/// The header's flag bits. Bits not defined here are reserved: a sender sets them to zero
/// and a receiver drops a frame that has any of them set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Flags(u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// The `ack` and `credit` fields carry an acknowledgement and a credit grant. Without it
    /// a receiver ignores both fields (a sender sets them to zero).
    pub const ACK: Flags = Flags(0x01);
    /// In an ACK frame: frames after the acknowledged ones arrived while the next one did
    /// not; the sender should retransmit from the acknowledgement at once (link layer).
    pub const NACK: Flags = Flags(0x02);
    /// Every defined bit.
    pub const DEFINED: Flags = Flags(0x03);

    /// The flags with exactly these bits, if none of them is reserved.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::DEFINED.0 == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` set too.
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// Why a frame with a good CRC was still refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HeaderError {
    /// Fewer bytes than a header and a CRC.
    TooShort {
        /// How many bytes the frame had.
        len: usize,
    },
    /// A kind value that this version does not define.
    UnknownKind(u8),
    /// A reserved flag bit is set.
    ReservedFlags(u8),
    /// The length field disagrees with the number of payload bytes actually present.
    LengthMismatch {
        /// The value of the length field.
        field: u16,
        /// The payload bytes present between header and CRC.
        actual: usize,
    },
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            HeaderError::TooShort { len } => {
                write!(f, "frame of {len} bytes is shorter than header and CRC")
            }
            HeaderError::UnknownKind(k) => write!(f, "unknown frame kind {k:#04x}"),
            HeaderError::ReservedFlags(b) => write!(f, "reserved flag bits set in {b:#04x}"),
            HeaderError::LengthMismatch { field, actual } => write!(
                f,
                "length field says {field} payload bytes but the frame holds {actual}"
            ),
        }
    }
}

impl core::error::Error for HeaderError {}

/// A read-only or writable view over the bytes of one raw frame (header, payload and CRC,
/// after COBS decoding).
///
/// [`FrameView::new_checked`] verifies once that the buffer is long enough for the header
/// and CRC and that the length field matches; after that no accessor can panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FrameView<T> {
    /// Wraps `buffer` without checking it. Accessors may panic on a short buffer; use
    /// [`FrameView::new_checked`] for bytes from a peer.
    pub const fn new_unchecked(buffer: T) -> Self {
        FrameView { buffer }
    }

    /// Wraps `buffer` after [`FrameView::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, HeaderError> {
        let view = Self::new_unchecked(buffer);
        view.check_len()?;
        Ok(view)
    }

    /// Checks that the buffer holds a header, exactly `len` payload bytes, and a CRC.
    pub fn check_len(&self) -> Result<(), HeaderError> {
        let bytes = self.buffer.as_ref();
        let len = bytes.len();
        if len < HEADER_LEN + CRC_LEN {
            return Err(HeaderError::TooShort { len });
        }
        let field = u16::from_le_bytes([bytes[field::LEN.start], bytes[field::LEN.start + 1]]);
        let actual = len - HEADER_LEN - CRC_LEN;
        if usize::from(field) != actual {
            return Err(HeaderError::LengthMismatch { field, actual });
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The raw kind byte.
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    /// The raw flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The sequence number field.
    pub fn seq(&self) -> u32 {
        self.u32_at(field::SEQ.start)
    }

    /// The acknowledgement number field.
    pub fn ack(&self) -> u32 {
        self.u32_at(field::ACK.start)
    }

    /// The credit field.
    pub fn credit(&self) -> u16 {
        self.u16_at(field::CREDIT.start)
    }

    /// The payload length field.
    pub fn len_field(&self) -> u16 {
        self.u16_at(field::LEN.start)
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        let bytes = self.buffer.as_ref();
        &bytes[HEADER_LEN..bytes.len() - CRC_LEN]
    }

    /// The CRC field at the end of the frame.
    pub fn crc(&self) -> u32 {
        self.u32_at(self.buffer.as_ref().len() - CRC_LEN)
    }

    /// Whether the CRC field matches the CRC-32C of header and payload.
    pub fn verify_crc(&self) -> bool {
        let bytes = self.buffer.as_ref();
        crc32c(&bytes[..bytes.len() - CRC_LEN]) == self.crc()
    }

    fn u16_at(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FrameView<T> {
    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let bytes = self.buffer.as_mut();
        let end = bytes.len() - CRC_LEN;
        &mut bytes[HEADER_LEN..end]
    }

    /// Writes the CRC-32C of header and payload into the CRC field.
    pub fn fill_crc(&mut self) {
        let bytes = self.buffer.as_mut();
        let end = bytes.len() - CRC_LEN;
        let crc = crc32c(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The parsed header of a frame. The payload length is not part of it: it is derived from
/// the payload when a frame is emitted, and checked against the bytes present when parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header {
    /// What the frame is for.
    pub kind: Kind,
    /// Flag bits.
    pub flags: Flags,
    /// Sequence number of this frame (meaningful for DATA; zero otherwise).
    pub seq: u32,
    /// Cumulative acknowledgement, valid when [`Flags::ACK`] is set.
    pub ack: u32,
    /// Credit granted to the peer, valid when [`Flags::ACK`] is set.
    pub credit: u16,
}

impl Header {
    /// Parses and validates the header of a checked frame view.
    ///
    /// The CRC is not checked here: the [`super::Decoder`] checks it before parsing, so that
    /// line noise is reported as a CRC error rather than as a bad header.
    pub fn parse<T: AsRef<[u8]>>(view: &FrameView<T>) -> Result<Header, HeaderError> {
        view.check_len()?;
        let kind = Kind::from_u8(view.kind()).ok_or(HeaderError::UnknownKind(view.kind()))?;
        let flags =
            Flags::from_bits(view.flags()).ok_or(HeaderError::ReservedFlags(view.flags()))?;
        Ok(Header {
            kind,
            flags,
            seq: view.seq(),
            ack: view.ack(),
            credit: view.credit(),
        })
    }

    /// The header's bytes for a payload of `payload_len` bytes, or `None` if the payload is
    /// longer than [`MAX_PAYLOAD`].
    pub fn to_bytes(&self, payload_len: usize) -> Option<[u8; HEADER_LEN]> {
        let len = u16::try_from(payload_len).ok()?;
        debug_assert!(usize::from(len) <= MAX_PAYLOAD);
        let mut b = [0u8; HEADER_LEN];
        b[field::KIND] = self.kind as u8;
        b[field::FLAGS] = self.flags.bits();
        b[field::SEQ].copy_from_slice(&self.seq.to_le_bytes());
        b[field::ACK].copy_from_slice(&self.ack.to_le_bytes());
        b[field::CREDIT].copy_from_slice(&self.credit.to_le_bytes());
        b[field::LEN].copy_from_slice(&len.to_le_bytes());
        Some(b)
    }

    /// Writes the header into a writable view whose length field is then set from the
    /// view's payload. Call [`FrameView::fill_crc`] afterwards.
    ///
    /// Returns `None`, writing nothing, if the view is too short for a header and CRC or
    /// its payload is longer than [`MAX_PAYLOAD`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, view: &mut FrameView<T>) -> Option<()> {
        let total = view.buffer.as_ref().len();
        let payload_len = total.checked_sub(HEADER_LEN + CRC_LEN)?;
        let bytes = self.to_bytes(payload_len)?;
        view.buffer.as_mut()[..HEADER_LEN].copy_from_slice(&bytes);
        Some(())
    }
}
