//! Protocol version 2's session frames (`PROTOCOL.md` section 11): a control byte, only the
//! fields the receiver cannot infer, many records a frame, and a check chosen by length.
//!
//! ```text
//!  raw frame   control ‖ body ‖ check
//!  control     1 k k . . . . .     kind: 00 DATA, 01 ACK, 10 PING, 11 CLOSE
//!  DATA        1 0 0 A W s s I     [ack flags byte ‖ ack fields] ‖ seq (1 or 2) ‖ records
//!  ACK         1 0 1 0 S C R W     ack fields: released ‖ [received] ‖ [credit] ‖ [sack]
//!  PING, CLOSE 0xc0, 0xe0          no body
//!  check       CRC-16/DNP when control ‖ body is at most 8 bytes, CRC-32C otherwise
//! ```
//!
//! [`Frame`] is the parsed form. [`decode_raw`] checks and parses one raw frame (the
//! [`super::Decoder`] does it for every frame whose first byte has bit 7 set, with
//! [`super::Decoder::decode_any`]); [`encode`] writes one frame, delimiter included.
//! Sequence numbers and boundaries travel as their low 8 or 16 bits ([`Short`]);
//! [`expand_seq`] and [`expand_released`] restore them from the receiver's state (11.6).

use super::cobs::encode_in_place;
use super::crc::crc16_dnp;
use super::{crc32c, EncodeError, FrameError, HeaderError, DELIMITER};

/// Bit 7 of the first byte: set in every version 2 frame, clear in every version 1 frame.
pub const MARK: u8 = 0x80;
/// Covered parts (control byte and body) up to this many bytes get CRC-16/DNP, longer ones
/// CRC-32C (11.4).
pub const CRC16_MAX_COVERED: usize = 8;
/// The most bytes of a selective-acknowledgement bitmap: 128 records.
pub const SACK_MAX: usize = 16;
/// The fewest bytes of a raw version 2 frame: a control byte and a CRC-16.
pub const MIN_RAW: usize = 3;

const KIND_DATA: u8 = 0x00;
const KIND_ACK: u8 = 0x20;
const KIND_PING: u8 = 0x40;
const KIND_CLOSE: u8 = 0x60;
const KIND_MASK: u8 = 0x60;
const DATA_A: u8 = 0x10;
const DATA_W: u8 = 0x08;
const DATA_I: u8 = 0x01;
const ACK_W: u8 = 0x01;
const ACK_R: u8 = 0x02;
const ACK_C: u8 = 0x04;
const ACK_S: u8 = 0x08;

/// The low 8 (or, `wide`, 16) bits of a sequence number or boundary, as a frame carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Short {
    /// The bits carried (below 256 unless `wide`).
    pub value: u16,
    /// Two bytes rather than one.
    pub wide: bool,
}

impl Short {
    /// The low bits of `n`: 16 if `wide`, else 8.
    pub const fn of(n: u32, wide: bool) -> Short {
        Short {
            value: if wide { n as u16 } else { n as u8 as u16 },
            wide,
        }
    }

    const fn len(self) -> usize {
        1 + self.wide as usize
    }

    const fn bits(self) -> u32 {
        if self.wide {
            16
        } else {
            8
        }
    }

    fn write(self, out: &mut [u8]) -> usize {
        let b = self.value.to_le_bytes();
        out[0] = b[0];
        if self.wide {
            out[1] = b[1];
        }
        self.len()
    }
}

/// A DATA frame's first sequence number from its low bits: the number with those bits
/// nearest to the receiver's `rx_next` (`PROTOCOL.md` 11.6).
///
/// ```
/// use tether_core::frame::v2::{expand_seq, Short};
/// assert_eq!(expand_seq(0xFFFF_FFF0, Short::of(2, false)), 2); // across the wrap
/// assert_eq!(expand_seq(0x100, Short::of(0xF0, false)), 0xF0); // a duplicate, below
/// ```
pub const fn expand_seq(rx_next: u32, s: Short) -> u32 {
    let k = s.bits();
    let d = (s.value as u32).wrapping_sub(rx_next) & ((1 << k) - 1);
    let d = if d >= 1 << (k - 1) {
        d.wrapping_sub(1 << k)
    } else {
        d
    };
    rx_next.wrapping_add(d)
}

/// An acknowledgement's released boundary from its low bits: the first number at or after
/// the record sender's `tx_base` with those bits (`PROTOCOL.md` 11.6).
///
/// ```
/// use tether_core::frame::v2::{expand_released, Short};
/// assert_eq!(expand_released(0xFFFF_FFFE, Short::of(3, false)), 3);
/// ```
pub const fn expand_released(tx_base: u32, s: Short) -> u32 {
    let m = (1u32 << s.bits()) - 1;
    tx_base.wrapping_add((s.value as u32).wrapping_sub(tx_base) & m)
}

/// An acknowledgement (11.3.2): the released boundary, and what else differs from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ack<'a> {
    /// The low bits of the released boundary; `wide` also sets the width of `received`.
    pub released: Short,
    /// Records received and not released (`rx_next − rx_released`); 0 leaves the field out.
    pub received: u16,
    /// The credit granted, if not the sender's standing credit.
    pub credit: Option<u16>,
    /// The bitmap of records held out of order (bit j of byte i: record `rx_next + 1 + 8i +
    /// j`), without trailing zero bytes; empty if none.
    pub sack: &'a [u8],
}

impl Ack<'_> {
    pub(crate) fn flags(&self) -> u8 {
        let mut f = 0;
        if self.released.wide {
            f |= ACK_W;
        }
        if self.received != 0 {
            f |= ACK_R;
        }
        if self.credit.is_some() {
            f |= ACK_C;
        }
        if !self.sack.is_empty() {
            f |= ACK_S;
        }
        f
    }

    pub(crate) fn len(&self) -> usize {
        let w = self.released.len();
        let mut n = w;
        if self.received != 0 {
            n += w;
        }
        if self.credit.is_some() {
            n += 2;
        }
        if !self.sack.is_empty() {
            n += 1 + self.sack.len();
        }
        n
    }

    /// Writes the fields (not the flags); `out` holds [`Ack::len`] bytes.
    pub(crate) fn write(&self, out: &mut [u8]) -> usize {
        let mut n = self.released.write(out);
        if self.received != 0 {
            n += Short::of(u32::from(self.received), self.released.wide).write(&mut out[n..]);
        }
        if let Some(c) = self.credit {
            out[n..n + 2].copy_from_slice(&c.to_le_bytes());
            n += 2;
        }
        if !self.sack.is_empty() {
            // At most SACK_MAX, checked by `encode`.
            out[n] = self.sack.len() as u8;
            out[n + 1..n + 1 + self.sack.len()].copy_from_slice(self.sack);
            n += 1 + self.sack.len();
        }
        n
    }
}

/// How a DATA frame lays out its records (11.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Shape {
    /// One record: the rest of the body.
    #[default]
    Single,
    /// A varint length `L`, then records of `L` bytes each.
    Uniform,
    /// Each record as a varint length and its bytes.
    Listed,
}

impl Shape {
    const fn bits(self) -> u8 {
        match self {
            Shape::Single => 0,
            Shape::Uniform => 2,
            Shape::Listed => 4,
        }
    }
}

/// The records part of a DATA frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Data<'a> {
    /// The low bits of the first record's number.
    pub seq: Short,
    /// `I`: the sender asks for an acknowledgement at once (11.7.3).
    pub immediate: bool,
    /// The layout of `section`.
    pub shape: Shape,
    /// The bytes after `seq`: the records, laid out as `shape` says (for uniform, the
    /// varint length first). [`parse`] checks it; [`encode`] takes it as it is.
    pub section: &'a [u8],
}

impl<'a> Data<'a> {
    /// The records, in order.
    pub fn records(&self) -> Records<'a> {
        let mut rest = self.section;
        let uniform = match self.shape {
            Shape::Uniform => match read_varint(rest) {
                Some((l, used)) if l > 0 => {
                    rest = &rest[used..];
                    l
                }
                _ => {
                    rest = &[];
                    0
                }
            },
            _ => 0,
        };
        Records {
            shape: self.shape,
            rest,
            uniform,
            done: false,
        }
    }
}

/// The records of a DATA frame, oldest first (see [`Data::records`]).
#[derive(Debug, Clone)]
pub struct Records<'a> {
    shape: Shape,
    rest: &'a [u8],
    uniform: usize,
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let (record, rest) = match self.shape {
            Shape::Single => {
                self.done = true;
                (self.rest, &[][..])
            }
            Shape::Uniform => {
                if self.rest.len() < self.uniform || self.uniform == 0 {
                    self.done = true;
                    return None;
                }
                self.rest.split_at(self.uniform)
            }
            Shape::Listed => {
                let Some((len, used)) = read_varint(self.rest) else {
                    self.done = true;
                    return None;
                };
                let Some(record) = self.rest.get(used..used + len) else {
                    self.done = true;
                    return None;
                };
                (record, &self.rest[used + len..])
            }
        };
        self.rest = rest;
        if rest.is_empty() {
            self.done = true;
        }
        Some(record)
    }
}

/// A parsed version 2 session frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Frame<'a> {
    /// Records, and perhaps an acknowledgement.
    Data {
        /// The acknowledgement it carries (`A`), if any.
        ack: Option<Ack<'a>>,
        /// Its records.
        data: Data<'a>,
    },
    /// An acknowledgement alone.
    Ack(Ack<'a>),
    /// Asks for a sign of life.
    Ping,
    /// Ends the session gracefully.
    Close,
}

/// A version 2 frame whose check is right but whose content is not (11.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Malformed;

impl core::fmt::Display for Malformed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("malformed version 2 frame")
    }
}

impl core::error::Error for Malformed {}

/// A varint (11.1): at most 3 bytes, shortest form, at most 65,535; its value and length.
pub(crate) fn read_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v: usize = 0;
    for k in 0..3 {
        let byte = *b.get(k)?;
        v |= usize::from(byte & 0x7F) << (7 * k);
        if byte & 0x80 == 0 {
            if k > 0 && byte == 0 {
                return None;
            }
            return (v <= 0xFFFF).then_some((v, k + 1));
        }
    }
    None
}

/// Writes `n` (at most 65,535) as a varint; its length.
pub(crate) fn write_varint(mut n: usize, out: &mut [u8]) -> usize {
    let mut i = 0;
    loop {
        let b = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out[i] = b;
            return i + 1;
        }
        out[i] = b | 0x80;
        i += 1;
    }
}

/// The bytes a varint of `n` takes.
pub(crate) const fn varint_len(n: usize) -> usize {
    if n < 0x80 {
        1
    } else if n < 0x4000 {
        2
    } else {
        3
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
    if b.len() < n {
        return Err(Malformed);
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_short(b: &mut &[u8], wide: bool) -> Result<Short, Malformed> {
    let bytes = take(b, 1 + usize::from(wide))?;
    let value = if wide {
        u16::from_le_bytes([bytes[0], bytes[1]])
    } else {
        u16::from(bytes[0])
    };
    Ok(Short { value, wide })
}

fn parse_ack<'a>(flags: u8, b: &mut &'a [u8]) -> Result<Ack<'a>, Malformed> {
    let wide = flags & ACK_W != 0;
    let released = take_short(b, wide)?;
    let received = if flags & ACK_R != 0 {
        match take_short(b, wide)?.value {
            0 => return Err(Malformed),
            v => v,
        }
    } else {
        0
    };
    let credit = if flags & ACK_C != 0 {
        let c = take(b, 2)?;
        Some(u16::from_le_bytes([c[0], c[1]]))
    } else {
        None
    };
    let sack: &[u8] = if flags & ACK_S != 0 {
        let n = usize::from(take(b, 1)?[0]);
        if !(1..=SACK_MAX).contains(&n) {
            return Err(Malformed);
        }
        let s = take(b, n)?;
        if s[n - 1] == 0 {
            return Err(Malformed);
        }
        s
    } else {
        &[]
    };
    Ok(Ack {
        released,
        received,
        credit,
        sack,
    })
}

/// Checks a records section against its shape (11.3.3).
fn check_section(shape: Shape, section: &[u8]) -> Result<(), Malformed> {
    match shape {
        Shape::Single => Ok(()),
        Shape::Uniform => {
            let (l, used) = read_varint(section).ok_or(Malformed)?;
            let rest = section.len() - used;
            if l == 0 || rest == 0 || rest % l != 0 {
                return Err(Malformed);
            }
            Ok(())
        }
        Shape::Listed => {
            let mut rest = section;
            if rest.is_empty() {
                return Err(Malformed);
            }
            while !rest.is_empty() {
                let (len, used) = read_varint(rest).ok_or(Malformed)?;
                rest = rest.get(used + len..).ok_or(Malformed)?;
            }
            Ok(())
        }
    }
}

/// Parses the covered part of a version 2 frame (control byte and body, the check removed).
pub fn parse(covered: &[u8]) -> Result<Frame<'_>, Malformed> {
    let (&control, mut body) = covered.split_first().ok_or(Malformed)?;
    if control & MARK == 0 {
        return Err(Malformed);
    }
    match control & KIND_MASK {
        KIND_PING | KIND_CLOSE => {
            if control & 0x1F != 0 || !body.is_empty() {
                return Err(Malformed);
            }
            Ok(if control & KIND_MASK == KIND_PING {
                Frame::Ping
            } else {
                Frame::Close
            })
        }
        KIND_ACK => {
            if control & 0x10 != 0 {
                return Err(Malformed);
            }
            let ack = parse_ack(control & 0x0F, &mut body)?;
            if !body.is_empty() {
                return Err(Malformed);
            }
            Ok(Frame::Ack(ack))
        }
        _ => {
            let ack = if control & DATA_A != 0 {
                let flags = take(&mut body, 1)?[0];
                if flags & 0xF0 != 0 {
                    return Err(Malformed);
                }
                Some(parse_ack(flags, &mut body)?)
            } else {
                None
            };
            let seq = take_short(&mut body, control & DATA_W != 0)?;
            let shape = match (control >> 1) & 3 {
                0 => Shape::Single,
                1 => Shape::Uniform,
                2 => Shape::Listed,
                _ => return Err(Malformed),
            };
            check_section(shape, body)?;
            Ok(Frame::Data {
                ack,
                data: Data {
                    seq,
                    immediate: control & DATA_I != 0,
                    shape,
                    section: body,
                },
            })
        }
    }
}

/// The check's length for a covered part of `covered` bytes.
pub const fn check_len(covered: usize) -> usize {
    if covered <= CRC16_MAX_COVERED {
        2
    } else {
        4
    }
}

/// The raw frame's length for a covered part of `covered` bytes.
pub const fn raw_len(covered: usize) -> usize {
    covered + check_len(covered)
}

/// The most bytes [`encode`] writes, delimiter included, for a covered part of `covered`
/// bytes.
pub const fn max_encoded_len(covered: usize) -> usize {
    let raw = raw_len(covered);
    raw + super::div254(raw) + 2
}

/// Checks a raw version 2 frame's length and check (11.4, 11.5); its covered part.
pub fn check(raw: &[u8]) -> Result<&[u8], FrameError> {
    let len = raw.len();
    if len < MIN_RAW {
        return Err(FrameError::Header(HeaderError::TooShort { len }));
    }
    let crc_len = match len {
        ..=10 => 2,
        11 | 12 => return Err(FrameError::Malformed),
        _ => 4,
    };
    let (covered, trailer) = raw.split_at(len - crc_len);
    let (received, computed) = if crc_len == 2 {
        (
            u32::from(u16::from_le_bytes([trailer[0], trailer[1]])),
            u32::from(crc16_dnp(covered)),
        )
    } else {
        (
            u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]),
            crc32c(covered),
        )
    };
    if received != computed {
        return Err(FrameError::Crc { received, computed });
    }
    Ok(covered)
}

/// Checks and parses one raw version 2 frame, as a receiver does at a delimiter (11.5).
pub fn decode_raw(raw: &[u8]) -> Result<Frame<'_>, FrameError> {
    parse(check(raw)?).map_err(|Malformed| FrameError::Malformed)
}

/// The covered part's length of `frame`: its control byte and body.
pub fn covered_len(frame: &Frame<'_>) -> usize {
    match frame {
        Frame::Ping | Frame::Close => 1,
        Frame::Ack(a) => 1 + a.len(),
        Frame::Data { ack, data } => {
            1 + ack.map_or(0, |a| 1 + a.len()) + data.seq.len() + data.section.len()
        }
    }
}

/// Writes the covered part of `frame` at the start of `out` (which holds
/// [`covered_len`] bytes); its length.
pub(crate) fn write_covered(frame: &Frame<'_>, out: &mut [u8]) -> usize {
    match frame {
        Frame::Ping => {
            out[0] = MARK | KIND_PING;
            1
        }
        Frame::Close => {
            out[0] = MARK | KIND_CLOSE;
            1
        }
        Frame::Ack(a) => {
            out[0] = MARK | KIND_ACK | a.flags();
            1 + a.write(&mut out[1..])
        }
        Frame::Data { ack, data } => {
            let n = write_data_head(out, ack.as_ref(), data.seq, data.immediate, data.shape);
            out[n..n + data.section.len()].copy_from_slice(data.section);
            n + data.section.len()
        }
    }
}

/// The bytes of a DATA frame before its records: control, acknowledgement, `seq`.
pub(crate) fn data_head_len(ack: Option<&Ack<'_>>, seq: Short) -> usize {
    1 + ack.map_or(0, |a| 1 + a.len()) + seq.len()
}

/// Writes a DATA frame's control byte, acknowledgement and `seq` at the start of `out`
/// ([`data_head_len`] bytes); its length. The records follow.
pub(crate) fn write_data_head(
    out: &mut [u8],
    ack: Option<&Ack<'_>>,
    seq: Short,
    immediate: bool,
    shape: Shape,
) -> usize {
    let mut c = MARK | KIND_DATA | shape.bits();
    if ack.is_some() {
        c |= DATA_A;
    }
    if seq.wide {
        c |= DATA_W;
    }
    if immediate {
        c |= DATA_I;
    }
    out[0] = c;
    let mut n = 1;
    if let Some(a) = ack {
        out[1] = a.flags();
        n = 2 + a.write(&mut out[2..]);
    }
    n + seq.write(&mut out[n..])
}

/// Where to put a covered part of `covered` bytes in a transmit buffer so that
/// [`seal`] can stuff it in place.
pub(crate) const fn covered_offset(covered: usize) -> usize {
    1 + super::div254(raw_len(covered))
}

/// Completes a frame whose covered part (`covered` bytes) was written at
/// `out[covered_offset(covered)..]`: appends the check, stuffs the raw frame in place to the
/// start of `out` and appends the delimiter. Returns the frame's length on the wire.
/// `out` holds at least [`max_encoded_len`]`(covered)` bytes.
pub(crate) fn seal(out: &mut [u8], covered: usize) -> usize {
    let start = covered_offset(covered);
    let end = start + covered;
    if covered <= CRC16_MAX_COVERED {
        let c = crc16_dnp(&out[start..end]);
        out[end..end + 2].copy_from_slice(&c.to_le_bytes());
    } else {
        let c = crc32c(&out[start..end]);
        out[end..end + 4].copy_from_slice(&c.to_le_bytes());
    }
    let n = encode_in_place(out, start, raw_len(covered));
    out[n] = DELIMITER;
    n + 1
}

/// Encodes `frame`, delimiter included, at the start of `out`; its length.
///
/// `out` must hold [`max_encoded_len`] of its [`covered_len`]. The caller gives a DATA
/// frame's section laid out as its shape says (as [`parse`] returns it); a SACK longer than
/// [`SACK_MAX`] bytes, or a covered part longer than a raw frame can be, is refused.
///
/// ```
/// use tether_core::frame::v2::{self, Data, Frame, Short, Shape};
///
/// let frame = Frame::Data {
///     ack: None,
///     data: Data { seq: Short::of(1, false), immediate: false, shape: Shape::Single, section: b"21.5" },
/// };
/// let mut wire = [0u8; 16];
/// let n = v2::encode(&frame, &mut wire).unwrap();
/// assert_eq!(n, 10); // a 4-byte record: 24 bytes in version 1
/// ```
pub fn encode(frame: &Frame<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    let covered = covered_len(frame);
    let sack_long = match frame {
        Frame::Ack(a) | Frame::Data { ack: Some(a), .. } => a.sack.len() > SACK_MAX,
        _ => false,
    };
    if sack_long || raw_len(covered) > super::raw_len(super::MAX_PAYLOAD) {
        return Err(EncodeError::PayloadTooLong { len: covered });
    }
    let needed = max_encoded_len(covered);
    if out.len() < needed {
        return Err(EncodeError::BufferTooSmall {
            needed,
            available: out.len(),
        });
    }
    let start = covered_offset(covered);
    write_covered(frame, &mut out[start..]);
    Ok(seal(out, covered))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    use proptest::prelude::*;

    fn arb_short() -> impl Strategy<Value = Short> {
        (any::<u16>(), any::<bool>()).prop_map(|(v, wide)| Short::of(u32::from(v), wide))
    }

    fn arb_sack() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            (prop::collection::vec(any::<u8>(), 0..SACK_MAX), 1u8..).prop_map(|(mut v, last)| {
                v.push(last);
                v
            })
        ]
    }

    fn arb_ack() -> impl Strategy<Value = (Short, u16, Option<u16>, Vec<u8>)> {
        (arb_short(), any::<u16>(), any::<Option<u16>>(), arb_sack()).prop_map(
            |(released, received, credit, sack)| {
                let received = if released.wide {
                    received
                } else {
                    received & 0xFF
                };
                (released, received, credit, sack)
            },
        )
    }

    /// A records section of a shape, and the records it holds.
    fn arb_section() -> impl Strategy<Value = (Shape, Vec<u8>, Vec<Vec<u8>>)> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|r| (
                Shape::Single,
                r.clone(),
                vec![r]
            )),
            (1usize..40, 1usize..6, any::<u8>()).prop_map(|(l, k, b)| {
                let records: Vec<Vec<u8>> = (0..k)
                    .map(|i| (0..l).map(|j| b.wrapping_add((i * 7 + j) as u8)).collect())
                    .collect();
                let mut s = vec![0u8; 3];
                let n = write_varint(l, &mut s);
                s.truncate(n);
                s.extend(records.concat());
                (Shape::Uniform, s, records)
            }),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..5).prop_map(
                |records| {
                    let mut s = Vec::new();
                    for r in &records {
                        let mut v = [0u8; 3];
                        let n = write_varint(r.len(), &mut v);
                        s.extend_from_slice(&v[..n]);
                        s.extend_from_slice(r);
                    }
                    (Shape::Listed, s, records)
                }
            ),
        ]
    }

    fn wire(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = vec![0u8; max_encoded_len(covered_len(frame))];
        let n = encode(frame, &mut out).expect("encodes");
        out.truncate(n);
        out
    }

    /// The raw frame of one encoded frame (COBS undone by hand, delimiter dropped).
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let enc = &wire[..wire.len() - 1];
        let mut i = 0;
        while i < enc.len() {
            let code = usize::from(enc[i]);
            out.extend_from_slice(&enc[i + 1..i + code]);
            i += code;
            if code != 0xFF && i < enc.len() {
                out.push(0);
            }
        }
        out
    }

    proptest! {
        /// Every frame encodes to COBS without a zero before its delimiter, to a raw frame
        /// whose check has the width its length calls for, and decodes to itself.
        #[test]
        fn every_frame_round_trips(
            kind in 0u8..4,
            ack in arb_ack(),
            with_ack in any::<bool>(),
            seq in arb_short(),
            immediate in any::<bool>(),
            section in arb_section(),
        ) {
            let (released, received, credit, sack) = ack;
            let a = Ack { released, received, credit, sack: &sack };
            let (shape, bytes, records) = section;
            let frame = match kind {
                0 => Frame::Data {
                    ack: with_ack.then_some(a),
                    data: Data { seq, immediate, shape, section: &bytes },
                },
                1 => Frame::Ack(a),
                2 => Frame::Ping,
                _ => Frame::Close,
            };
            let w = wire(&frame);
            prop_assert!(!w[..w.len() - 1].contains(&0));
            prop_assert_eq!(w[w.len() - 1], 0);
            let raw = unstuff(&w);
            let covered = covered_len(&frame);
            prop_assert_eq!(raw.len(), raw_len(covered));
            prop_assert!(raw.len() <= 10 || raw.len() >= 13);
            let back = decode_raw(&raw).expect("decodes");
            prop_assert_eq!(back, frame);
            if let Frame::Data { data, .. } = back {
                let got: Vec<Vec<u8>> = data.records().map(<[u8]>::to_vec).collect();
                prop_assert_eq!(got, records);
            }
        }

        /// Every single-bit error in a raw frame is detected: the frame is dropped, never
        /// delivered altered (both checks have a Hamming distance of at least 2 here).
        #[test]
        fn every_single_bit_error_is_caught(
            section in arb_section(),
            seq in arb_short(),
            bit in any::<prop::sample::Index>(),
        ) {
            let (shape, bytes, _) = section;
            let frame = Frame::Data { ack: None, data: Data { seq, immediate: false, shape, section: &bytes } };
            let raw = unstuff(&wire(&frame));
            let mut bad = raw.clone();
            let i = bit.index(raw.len() * 8);
            bad[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode_raw(&bad).is_err());
        }

        /// Arbitrary covered bytes never make the parser panic, and whatever parses
        /// encodes back to the same bytes (the format has one encoding per frame).
        #[test]
        fn arbitrary_bytes_parse_or_are_refused(mut bytes in prop::collection::vec(any::<u8>(), 1..80)) {
            bytes[0] |= MARK;
            if let Ok(frame) = parse(&bytes) {
                let mut out = vec![0u8; bytes.len()];
                let n = write_covered(&frame, &mut out);
                prop_assert_eq!(&out[..n], &bytes[..]);
            }
        }

        /// The expansions invert the truncation for every number within their range.
        #[test]
        fn expansion_inverts_truncation(reference in any::<u32>(), d in -128i32..128, w in -32768i32..32768, up in 0u32..256) {
            let s = reference.wrapping_add(d as u32);
            prop_assert_eq!(expand_seq(reference, Short::of(s, false)), s);
            let s = reference.wrapping_add(w as u32);
            prop_assert_eq!(expand_seq(reference, Short::of(s, true)), s);
            let r = reference.wrapping_add(up);
            prop_assert_eq!(expand_released(reference, Short::of(r, false)), r);
        }
    }

    #[test]
    fn varints_are_shortest_and_bounded() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, 65_535] {
            let mut b = [0u8; 3];
            let len = write_varint(n, &mut b);
            assert_eq!(len, varint_len(n));
            assert_eq!(read_varint(&b[..len]), Some((n, len)));
        }
        assert_eq!(read_varint(&[0x80, 0x00]), None, "not minimal");
        assert_eq!(read_varint(&[0xFF, 0xFF, 0x7F]), None, "over 65,535");
        assert_eq!(read_varint(&[0x80, 0x80, 0x80]), None, "four bytes");
        assert_eq!(read_varint(&[0x80]), None, "cut short");
    }

    #[test]
    fn lengths_between_the_two_checks_are_malformed() {
        for len in [11, 12] {
            assert_eq!(decode_raw(&vec![0xA0; len]), Err(FrameError::Malformed));
        }
        assert!(matches!(
            decode_raw(&[0xC0, 0x12]),
            Err(FrameError::Header(HeaderError::TooShort { len: 2 }))
        ));
    }
}
