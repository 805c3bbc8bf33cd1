//! Where a [`super::Link`] keeps its records: caller-owned, fixed at compile time or at
//! construction, never grown.

/// The buffers a link works in, lent to it on every call.
///
/// With `slot` = `frame.len()`, the largest raw frame (payload + 18 bytes): `tx` is
/// `tx_len.len() * slot` bytes and `rx` is `rx_len.len() * slot` bytes. Storage of another
/// shape is refused by [`super::Link::new`].
#[derive(Debug)]
pub struct Parts<'a> {
    /// Transmit slots, `slot` bytes each: records waiting for the peer's acknowledgement.
    pub tx: &'a mut [u8],
    /// The payload length of each transmit slot.
    pub tx_len: &'a mut [u16],
    /// Receive slots, `slot` bytes each: records delivered and not yet released.
    pub rx: &'a mut [u8],
    /// The payload length of each receive slot.
    pub rx_len: &'a mut [u16],
    /// The frame decoder's buffer: the largest raw frame accepted.
    pub frame: &'a mut [u8],
}

/// Storage for a link: anything that can lend its [`Parts`].
///
/// [`LinkStorage`] is the ready-made one for firmware (a `static` or a local). A host that
/// keeps many links on the heap implements it over boxed slices.
pub trait Storage {
    /// The buffers.
    fn parts(&mut self) -> Parts<'_>;
}

/// Fixed-size storage: `TX` transmit slots and `RX` receive slots of `FRAME`-byte raw
/// frames (so payloads up to `FRAME - 18` bytes).
///
/// Memory is `(TX + RX + 1) * FRAME + 2 * (TX + RX)` bytes. Example: 4 + 4 slots of
/// 128-byte frames take 1,168 bytes.
#[derive(Debug, Clone)]
pub struct LinkStorage<const TX: usize, const RX: usize, const FRAME: usize> {
    tx: [[u8; FRAME]; TX],
    tx_len: [u16; TX],
    rx: [[u8; FRAME]; RX],
    rx_len: [u16; RX],
    frame: [u8; FRAME],
}

impl<const TX: usize, const RX: usize, const FRAME: usize> LinkStorage<TX, RX, FRAME> {
    /// Zeroed storage; `const`, so it can initialise a `static`.
    pub const fn new() -> Self {
        LinkStorage {
            tx: [[0; FRAME]; TX],
            tx_len: [0; TX],
            rx: [[0; FRAME]; RX],
            rx_len: [0; RX],
            frame: [0; FRAME],
        }
    }
}

impl<const TX: usize, const RX: usize, const FRAME: usize> Default for LinkStorage<TX, RX, FRAME> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const TX: usize, const RX: usize, const FRAME: usize> Storage for LinkStorage<TX, RX, FRAME> {
    fn parts(&mut self) -> Parts<'_> {
        Parts {
            tx: self.tx.as_flattened_mut(),
            tx_len: &mut self.tx_len,
            rx: self.rx.as_flattened_mut(),
            rx_len: &mut self.rx_len,
            frame: &mut self.frame,
        }
    }
}

impl<T: Storage + ?Sized> Storage for &mut T {
    fn parts(&mut self) -> Parts<'_> {
        (**self).parts()
    }
}
