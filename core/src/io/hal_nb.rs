//! The driver over `embedded-hal-nb` serial ports (feature `embedded-hal-nb`): the
//! [`embedded_hal_nb::serial::Read`] and `Write` traits most
//! HALs implement for their UARTs, one byte at a time, `nb::Result` and `WouldBlock`.
//!
//! It is the [`nb` driver](super::nb) for that interface: [`Driver::poll`] reads until the
//! port says `WouldBlock` (at most [`MAX_READ`] bytes), runs the link's timers when due, and
//! writes until the port says `WouldBlock`; a frame the port took only part of waits in the
//! driver for the next call. It never blocks. [`Driver::flush`] is the one call that may be
//! wrapped in `nb::block!`: it is `Ok` once everything due is written and the port's own
//! `flush` is done.
//!
//! **Line errors are not failures.** A read that fails with an overrun, framing, parity or
//! noise error (their [`ErrorKind`]) lost or damaged a byte: the driver counts it in
//! [`Progress::line_errors`] and reads on; the frame it belonged to fails its CRC and the
//! link has it sent again. Only [`ErrorKind::Other`] (and kinds this crate does not know)
//! ends the call with [`Error::Read`].
//!
//! ```
//! use tether_core::io::hal_nb::{Driver, Error};
//! use tether_core::link::{Config, Instant, Link, LinkStorage, Role};
//! use embedded_hal_nb::serial::{Read, Write};
//!
//! /// The main loop over a HAL's UART (anything with `serial::Read<u8> + serial::Write<u8>`).
//! fn run<U: Read<u8> + Write<u8>>(uart: &mut U, clock: impl Fn() -> Instant) -> Result<(), Error<U::Error>> {
//!     let mut link = Link::new(Config::new(Role::Client, 0xD1), LinkStorage::<4, 4, 128>::new()).unwrap();
//!     let mut driver = Driver::new([0u8; 160]);
//!     link.connect(clock());
//!     loop {
//!         let progress = driver.poll(&mut link, uart, clock())?;
//!         while let Some(record) = link.recv() {
//!             let _ = record.payload; // act on it, then:
//!             link.release(1);
//!         }
//!         if link.unacked() == 0 && progress.is_idle() {
//!             // Before sleeping deeply: everything written and out of the UART.
//!             nb::block!(driver.flush(&mut link, uart, clock()))?;
//!             # return Ok(());
//!         }
//!     }
//! }
//! # struct Loopback(std::collections::VecDeque<u8>);
//! # impl embedded_hal_nb::serial::ErrorType for Loopback { type Error = core::convert::Infallible; }
//! # impl Read<u8> for Loopback {
//! #     fn read(&mut self) -> nb::Result<u8, Self::Error> { self.0.pop_front().ok_or(nb::Error::WouldBlock) }
//! # }
//! # impl Write<u8> for Loopback {
//! #     fn write(&mut self, _: u8) -> nb::Result<(), Self::Error> { Ok(()) }
//! #     fn flush(&mut self) -> nb::Result<(), Self::Error> { Ok(()) }
//! # }
//! # run(&mut Loopback(Default::default()), || Instant::from_millis(0)).unwrap();
//! ```
//!
//! A HAL that splits its UART into a receive and a transmit half, or a receive interrupt
//! that queues bytes ([`super::isr`]), gives two objects: [`Halves`] joins them.

use core::fmt;

use embedded_hal_nb::serial::{self, Error as _, ErrorKind, Read, Write};

use super::Outbox;
use crate::link::{Instant, Link, Storage};

/// Bytes one [`Driver::poll`] reads at most, so that a peer that never stops talking cannot
/// keep `poll` from writing or returning.
pub const MAX_READ: usize = 1024;

/// Bytes handed to the link at a time, gathered in a buffer on the stack.
const CHUNK: usize = 64;

/// What one [`Driver::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Progress {
    /// Bytes read and handed to the link.
    pub read: usize,
    /// Bytes the port accepted.
    pub written: usize,
    /// Bytes taken from the link still waiting for the port (the rest of a frame it was not
    /// ready for).
    pub pending: usize,
    /// Reads that failed with a line error (overrun, framing, parity, noise): a byte lost
    /// or damaged, which the link's CRC and retransmission take care of.
    pub line_errors: u32,
}

impl Progress {
    /// Nothing moved: no byte read or written, no line error.
    pub fn is_idle(&self) -> bool {
        self.read == 0 && self.written == 0 && self.line_errors == 0
    }
}

/// Why a call failed. The port's error `E` is kept as is; pending bytes are kept too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error<E> {
    /// The port failed to read, with an error other than a line error.
    Read(E),
    /// The port failed to write or flush.
    Write(E),
    /// The driver's transmit buffer is shorter than [`Link::transmit_len`].
    BufferTooSmall {
        /// The bytes needed.
        need: usize,
        /// The bytes given.
        have: usize,
    },
}

impl<E: serial::Error> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read(e) => write!(f, "serial read failed: {}", kind_text(e.kind())),
            Error::Write(e) => write!(f, "serial write failed: {}", kind_text(e.kind())),
            Error::BufferTooSmall { need, have } => {
                write!(f, "transmit buffer too small: {have} bytes, {need} needed")
            }
        }
    }
}

impl<E: serial::Error> core::error::Error for Error<E> {}

/// `ErrorKind`'s own Display is a sentence with a capital; ours are lower case.
fn kind_text(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Overrun => "receive buffer overrun",
        ErrorKind::FrameFormat => "framing error",
        ErrorKind::Parity => "parity error",
        ErrorKind::Noise => "noise on the line",
        _ => "port error",
    }
}

/// A lost or damaged byte, which the link recovers from; not a failure of the port.
fn is_line_error(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Overrun | ErrorKind::FrameFormat | ErrorKind::Parity | ErrorKind::Noise
    )
}

/// Moves bytes between a [`Link`] and an `embedded-hal-nb` serial port; see the
/// [module docs](self).
#[derive(Debug)]
pub struct Driver<B> {
    tx: Outbox<B>,
}

impl<B: AsMut<[u8]>> Driver<B> {
    /// A driver transmitting through `buf` (at least [`Link::transmit_len`] bytes; see
    /// [`super::tx_buffer_len`]).
    pub const fn new(buf: B) -> Self {
        Driver {
            tx: Outbox::new(buf),
        }
    }

    /// Bytes taken from the link that the port has not accepted yet.
    pub fn pending(&self) -> usize {
        self.tx.pending()
    }

    /// Forgets the pending bytes: call it when the port is replaced (or the peer at its
    /// other end is), before [`Link::connect`].
    pub fn reset(&mut self) {
        self.tx.reset();
    }

    /// The transmit buffer back.
    pub fn into_inner(self) -> B {
        self.tx.buf
    }

    /// One non-blocking step: reads until the port would block (at most [`MAX_READ`]
    /// bytes) into the link, runs the link's timers if one is due, then writes until the
    /// port would block or the link has nothing more, the rest of a partly written frame
    /// first.
    pub fn poll<S, T>(
        &mut self,
        link: &mut Link<S>,
        port: &mut T,
        now: Instant,
    ) -> Result<Progress, Error<T::Error>>
    where
        S: Storage,
        T: Read<u8> + Write<u8>,
    {
        if let Some((need, have)) = self.tx.too_small(link) {
            return Err(Error::BufferTooSmall { need, have });
        }
        let mut progress = Progress::default();
        read(link, port, now, &mut progress)?;
        if link.poll_timeout().is_some_and(|at| at <= now) {
            link.handle_timeout(now);
        }
        progress.written = self.write(link, port, now)?;
        progress.pending = self.tx.pending();
        Ok(progress)
    }

    /// Writes everything the link has to send now, then flushes the port: `Ok` once all of
    /// it is out, `WouldBlock` while the port still has to take some of it (call again, or
    /// `nb::block!` it). Reads nothing and runs no timer.
    pub fn flush<S, T>(
        &mut self,
        link: &mut Link<S>,
        port: &mut T,
        now: Instant,
    ) -> ::nb::Result<(), Error<T::Error>>
    where
        S: Storage,
        T: Write<u8>,
    {
        if let Some((need, have)) = self.tx.too_small(link) {
            return Err(::nb::Error::Other(Error::BufferTooSmall { need, have }));
        }
        self.write(link, port, now)?;
        if self.tx.pending() > 0 {
            return Err(::nb::Error::WouldBlock);
        }
        port.flush().map_err(|e| e.map(Error::Write))
    }

    /// Writes until the port would block or the link has nothing to send; the bytes written.
    fn write<S, T>(
        &mut self,
        link: &mut Link<S>,
        port: &mut T,
        now: Instant,
    ) -> Result<usize, Error<T::Error>>
    where
        S: Storage,
        T: Write<u8>,
    {
        let mut written = 0;
        while self.tx.refill(link, now) > 0 {
            let mut taken = 0;
            let mut blocked = false;
            for &byte in self.tx.unsent() {
                match port.write(byte) {
                    Ok(()) => taken += 1,
                    Err(::nb::Error::WouldBlock) => {
                        blocked = true;
                        break;
                    }
                    Err(::nb::Error::Other(e)) => {
                        self.tx.consume(taken);
                        return Err(Error::Write(e));
                    }
                }
            }
            written += self.tx.consume(taken);
            if blocked {
                break;
            }
        }
        Ok(written)
    }
}

/// Reads until the port would block or [`MAX_READ`] bytes came, handing them to the link in
/// chunks; line errors are counted. On another error, what was read before it still goes to
/// the link.
fn read<S, T>(
    link: &mut Link<S>,
    port: &mut T,
    now: Instant,
    progress: &mut Progress,
) -> Result<(), Error<T::Error>>
where
    S: Storage,
    T: Read<u8>,
{
    let mut chunk = [0u8; CHUNK];
    let mut n = 0;
    let mut result = Ok(());
    for _ in 0..MAX_READ {
        match port.read() {
            Ok(byte) => {
                chunk[n] = byte;
                n += 1;
                if n == CHUNK {
                    link.handle_input(now, &chunk);
                    progress.read += n;
                    n = 0;
                }
            }
            Err(::nb::Error::WouldBlock) => break,
            Err(::nb::Error::Other(e)) if is_line_error(e.kind()) => {
                progress.line_errors = progress.line_errors.saturating_add(1);
            }
            Err(::nb::Error::Other(e)) => {
                result = Err(Error::Read(e));
                break;
            }
        }
    }
    if n > 0 {
        link.handle_input(now, &chunk[..n]);
        progress.read += n;
    }
    result
}

/// A receive half and a transmit half as one port: what a HAL that splits its UART gives
/// (`let (tx, rx) = uart.split()`), or a receive queue filled by an interrupt
/// ([`super::isr::RxConsumer`]) and the UART's transmit side.
///
/// Its error type is [`HalfError`]: which half failed, with that half's error.
#[derive(Debug)]
pub struct Halves<R, W> {
    /// Where bytes come from.
    pub rx: R,
    /// Where bytes go.
    pub tx: W,
}

/// The error of one of [`Halves`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HalfError<R, W> {
    /// The receive half's.
    Rx(R),
    /// The transmit half's.
    Tx(W),
}

impl<R: serial::Error, W: serial::Error> serial::Error for HalfError<R, W> {
    fn kind(&self) -> ErrorKind {
        match self {
            HalfError::Rx(e) => e.kind(),
            HalfError::Tx(e) => e.kind(),
        }
    }
}

impl<R: serial::ErrorType, W: serial::ErrorType> serial::ErrorType for Halves<R, W> {
    type Error = HalfError<R::Error, W::Error>;
}

impl<R: Read<u8>, W: serial::ErrorType> Read<u8> for Halves<R, W> {
    fn read(&mut self) -> ::nb::Result<u8, Self::Error> {
        self.rx.read().map_err(|e| e.map(HalfError::Rx))
    }
}

impl<R: serial::ErrorType, W: Write<u8>> Write<u8> for Halves<R, W> {
    fn write(&mut self, byte: u8) -> ::nb::Result<(), Self::Error> {
        self.tx.write(byte).map_err(|e| e.map(HalfError::Tx))
    }

    fn flush(&mut self) -> ::nb::Result<(), Self::Error> {
        self.tx.flush().map_err(|e| e.map(HalfError::Tx))
    }
}
