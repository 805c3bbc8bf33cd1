//! Drivers that move bytes between a [`Link`] and an [`embedded-io`] transport (a UART, a
//! socket, an RFCOMM channel).
//!
//! A [`Link`] does no IO; these drivers are the few dozen lines of glue every program would
//! otherwise write, written once and tested against transports that split, stall and fail.
//! Pick the one that matches how the firmware waits:
//!
//! | driver | transport traits | waits |
//! |---|---|---|
//! | [`blocking::Driver`] | [`Read`] + [`Write`] | in every read, up to the transport's read timeout |
//! | [`nb::Driver`] | [`Read`] + [`Write`] + [`ReadReady`] + [`WriteReady`] | never |
//! | `asynch::Driver` (feature `async`) | `embedded_io_async::{Read, Write}` | at `.await` |
//! | `hal_nb::Driver` (feature `embedded-hal-nb`) | `embedded_hal_nb::serial::{Read, Write}` (most HALs' UARTs) | never |
//!
//! Real firmware receives in an interrupt: `isr` (feature `isr`) is the pattern and its
//! helpers, a lock-free queue (`heapless::spsc`) the receive interrupt fills and the drivers
//! read, with no `unsafe` in the firmware's code.
//!
//! What they share:
//!
//! - **The transmit buffer is the driver's**, any `B: AsMut<[u8]>` (an array, a `&mut [u8]`)
//!   of at least [`Link::transmit_len`] bytes; a longer one gathers several frames into one
//!   write ([`tx_buffer_len`] sizes it). A frame taken from the link stays there until the
//!   transport has accepted all of it: a short write, a timeout, a "not ready" or a dropped
//!   future leaves the rest for the next call, so no byte is lost or sent twice.
//! - **A new connection needs `reset`.** Before [`Link::connect`] over a replacement
//!   transport, call the driver's `reset`: the rest of a half-sent frame belongs to the old
//!   connection (the link sends again whatever the peer still needs).
//! - **Transport misbehaviour is an error, never a panic.** A write that accepts 0 bytes of a
//!   non-empty buffer is `WriteZero` (these drivers never call [`Write::write_all`], which
//!   panics on it); a read of 0 bytes is the end of the stream and is reported as such.
//! - **A timeout is not an error.** A transport error of kind [`ErrorKind::TimedOut`] or
//!   [`ErrorKind::Interrupted`] means "nothing happened this time": the call returns normally
//!   and the next one carries on.
//!
//! The link's timers (retransmission, keepalive, dead peer) only run when the program calls
//! [`Link::handle_timeout`], so no driver may wait longer than [`Link::poll_timeout`] allows;
//! [`until_timeout`] says how long that is.
//!
//! [`embedded-io`]: embedded_io
//! [`Read`]: embedded_io::Read
//! [`Write`]: embedded_io::Write
//! [`Write::write_all`]: embedded_io::Write::write_all
//! [`ReadReady`]: embedded_io::ReadReady
//! [`WriteReady`]: embedded_io::WriteReady
//! [`ErrorKind::TimedOut`]: embedded_io::ErrorKind::TimedOut
//! [`ErrorKind::Interrupted`]: embedded_io::ErrorKind::Interrupted

use core::fmt;

use embedded_io::ErrorKind;

#[cfg(feature = "embedded-hal-nb")]
#[cfg_attr(docsrs, doc(cfg(feature = "embedded-hal-nb")))]
pub mod hal_nb;
#[cfg(feature = "isr")]
#[cfg_attr(docsrs, doc(cfg(feature = "isr")))]
pub mod isr;

use crate::frame::{self, OVERHEAD};
use crate::link::{Instant, Link, Storage};

/// Bytes for a transmit buffer that gathers up to `frames` of the largest frames of a link
/// whose storage holds `frame`-byte raw frames (the `FRAME` of
/// [`LinkStorage`](crate::link::LinkStorage)). `frames = 1` gives [`Link::transmit_len`].
///
/// ```
/// use tether_core::io::{blocking::Driver, tx_buffer_len};
/// use tether_core::link::{Config, Link, LinkStorage, Role};
///
/// let link = Link::new(Config::new(Role::Client, 1), LinkStorage::<4, 4, 128>::new()).unwrap();
/// assert_eq!(tx_buffer_len(128, 1), link.transmit_len());
/// let driver = Driver::new([0u8; tx_buffer_len(128, 2)]);
/// ```
pub const fn tx_buffer_len(frame: usize, frames: usize) -> usize {
    frame::max_encoded_len(frame.saturating_sub(OVERHEAD)).saturating_mul(frames)
}

/// Milliseconds from `now` until the link's next deadline (0 if it has passed), or `None`
/// if no timer runs. A blocking transport's read timeout should not exceed it, or
/// retransmissions and keepalives run late.
pub fn until_timeout<S: Storage>(link: &Link<S>, now: Instant) -> Option<u64> {
    link.poll_timeout()
        .map(|at| at.millis().saturating_sub(now.millis()))
}

/// An error kind that means "nothing now, try again", not a failure.
fn is_transient(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// The bytes taken from a link and not yet accepted by the transport: `buf[start..end]`.
#[derive(Debug)]
struct Outbox<B> {
    buf: B,
    start: usize,
    end: usize,
}

impl<B: AsMut<[u8]>> Outbox<B> {
    const fn new(buf: B) -> Self {
        Outbox {
            buf,
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> usize {
        self.end - self.start
    }

    fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// `(need, have)` if the buffer cannot hold the link's largest frame.
    fn too_small<S: Storage>(&mut self, link: &Link<S>) -> Option<(usize, usize)> {
        let (need, have) = (link.transmit_len(), self.buf.as_mut().len());
        (have < need).then_some((need, have))
    }

    /// If nothing is pending, takes as many frames from the link as fit (at least one
    /// largest frame must fit for each). The bytes now pending.
    fn refill<S: Storage>(&mut self, link: &mut Link<S>, now: Instant) -> usize {
        if self.start < self.end {
            return self.pending();
        }
        self.reset();
        let need = link.transmit_len();
        let buf = self.buf.as_mut();
        while let Some(out) = buf.get_mut(self.end..) {
            if out.len() < need {
                break;
            }
            match link.poll_transmit(now, out) {
                Some(n) if n > 0 => self.end += n.min(out.len()),
                _ => break,
            }
        }
        self.end
    }

    /// The pending bytes.
    fn unsent(&mut self) -> &[u8] {
        let (start, end) = (self.start, self.end);
        self.buf.as_mut().get(start..end).unwrap_or(&[])
    }

    /// The transport accepted `n` pending bytes (clamped: a transport claiming more than it
    /// was given cannot push the window past what exists).
    fn consume(&mut self, n: usize) -> usize {
        let n = n.min(self.pending());
        self.start += n;
        if self.start == self.end {
            self.reset();
        }
        n
    }
}

/// The blocking driver, over [`embedded_io::Read`] and [`embedded_io::Write`].
///
/// [`flush`](blocking::Driver::flush) writes every frame the link has to send;
/// [`read_once`](blocking::Driver::read_once) makes one read (which blocks) and hands what
/// arrived to the link. **The transport needs a read timeout** (a UART's idle timeout, `set_read_timeout` on a socket), reported as an error of
/// kind [`TimedOut`](embedded_io::ErrorKind::TimedOut): a read that waits forever for a
/// silent peer stops the link's timers, so nothing is retransmitted and a dead peer is never
/// noticed. Keep the timeout at or below [`until_timeout`].
///
/// # The firmware loop
///
/// One pass: timers, then everything to send, then one read, then the application's part.
/// Here two such loops (a device and a host) run in turn over an in-memory pipe standing in
/// for the UART; firmware runs only its own, as `loop { let now = clock.now(); ... }`.
///
/// ```
/// use tether_core::io::blocking::{Driver, Error, Input};
/// use tether_core::io::tx_buffer_len;
/// use tether_core::link::{Config, Event, Instant, Link, LinkStorage, Phase, Role};
/// # use std::{cell::RefCell, collections::VecDeque, rc::Rc};
/// # use embedded_io::ErrorKind;
/// # /// One end of an in-memory serial line; reads time out when nothing is there.
/// # struct Uart { rx: Rc<RefCell<VecDeque<u8>>>, tx: Rc<RefCell<VecDeque<u8>>> }
/// # fn serial_line() -> (Uart, Uart) {
/// #     let (a, b) = (Rc::default(), Rc::default());
/// #     (Uart { rx: Rc::clone(&a), tx: Rc::clone(&b) }, Uart { rx: b, tx: a })
/// # }
/// # impl embedded_io::ErrorType for Uart { type Error = ErrorKind; }
/// # impl embedded_io::Read for Uart {
/// #     fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
/// #         let mut rx = self.rx.borrow_mut();
/// #         if rx.is_empty() { return Err(ErrorKind::TimedOut); }
/// #         let n = buf.len().min(rx.len()).min(16);
/// #         for b in &mut buf[..n] { *b = rx.pop_front().unwrap(); }
/// #         Ok(n)
/// #     }
/// # }
/// # impl embedded_io::Write for Uart {
/// #     fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
/// #         self.tx.borrow_mut().extend(buf);
/// #         Ok(buf.len())
/// #     }
/// #     fn flush(&mut self) -> Result<(), ErrorKind> { Ok(()) }
/// # }
///
/// type Store = LinkStorage<4, 4, 128>;
///
/// /// One pass of the main loop; returns the records the application consumed.
/// fn step(
///     link: &mut Link<Store>,
///     driver: &mut Driver<[u8; tx_buffer_len(128, 2)]>,
///     uart: &mut Uart,
///     now: Instant,
/// ) -> Result<usize, Error<ErrorKind>> {
///     link.handle_timeout(now); // retransmissions, keepalives, dead-peer detection
///     driver.flush(link, uart, now)?; // every frame due, gathered into few writes
///     let mut rx = [0u8; 64];
///     match driver.read_once(link, uart, now, &mut rx)? {
///         Input::Data(_) | Input::Idle => {}
///         // The peer hung up: open a new connection, then `driver.reset()` and
///         // `link.connect(now)`; the session resumes where it broke.
///         Input::Eof => {}
///     }
///     let mut consumed = 0;
///     while let Some(record) = link.recv() {
///         let _ = record.payload; // write it to flash, act on it...
///         link.release(1); // ...then release it: now the peer hears it is safe
///         consumed += 1;
///     }
///     while let Some(event) = link.poll_event() {
///         if let Event::PeerDead = event { /* replace the connection */ }
///     }
///     Ok(consumed)
/// }
///
/// let (mut device_uart, mut host_uart) = serial_line();
/// let mut device = Link::new(Config::new(Role::Client, 1), Store::new()).unwrap();
/// let mut host = Link::new(Config::new(Role::Server, 2), Store::new()).unwrap();
/// let mut device_driver = Driver::new([0u8; tx_buffer_len(128, 2)]);
/// let mut host_driver = Driver::new([0u8; tx_buffer_len(128, 2)]);
/// device.connect(Instant::from_millis(0));
/// host.connect(Instant::from_millis(0));
///
/// let (mut sent, mut got) = (0, 0);
/// for ms in 0..1_000 {
///     let now = Instant::from_millis(ms);
///     if sent < 10 && device.send(b"temperature,21.5").is_ok() {
///         sent += 1;
///     }
///     step(&mut device, &mut device_driver, &mut device_uart, now)?;
///     got += step(&mut host, &mut host_driver, &mut host_uart, now)?;
///     if got == 10 && device.unacked() == 0 {
///         break;
///     }
/// }
/// assert_eq!((got, device.unacked()), (10, 0));
/// assert_eq!(host.phase(), Phase::Established);
/// # Ok::<(), Error<ErrorKind>>(())
/// ```
pub mod blocking {
    use super::{fmt, is_transient, Outbox};
    use crate::link::{Instant, Link, Storage};
    use embedded_io::{Error as _, ErrorKind, Read, Write};

    /// What [`Driver::read_once`] did.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub enum Input {
        /// This many bytes arrived and were handed to the link.
        Data(usize),
        /// Nothing arrived before the transport's read timeout (or the read was
        /// interrupted): let the timers run and read again.
        Idle,
        /// The transport reached the end of its stream (a read returned 0 bytes): the peer
        /// closed the connection. The link does not know yet; it resumes the session over a
        /// new connection (see [`Driver::reset`]).
        Eof,
    }

    /// Why a blocking or async driver call failed. The transport error `E` is kept as is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub enum Error<E> {
        /// The transport failed to read.
        Read(E),
        /// The transport failed to write or flush. What it did not accept is kept.
        Write(E),
        /// The transport's write accepted 0 bytes of a non-empty buffer (a closed or broken
        /// transport). What it did not accept is kept.
        WriteZero,
        /// A buffer is too short: the driver's transmit buffer is shorter than
        /// [`Link::transmit_len`], or the receive buffer given to `read_once` is empty.
        BufferTooSmall {
            /// The bytes needed.
            need: usize,
            /// The bytes given.
            have: usize,
        },
    }

    impl<E: fmt::Display> fmt::Display for Error<E> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::Read(e) => write!(f, "transport read failed: {e}"),
                Error::Write(e) => write!(f, "transport write failed: {e}"),
                Error::WriteZero => f.write_str("transport accepted no bytes of a write"),
                Error::BufferTooSmall { need, have } => {
                    write!(f, "buffer too small: {have} bytes, {need} needed")
                }
            }
        }
    }

    impl<E: core::error::Error + 'static> core::error::Error for Error<E> {
        fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
            match self {
                Error::Read(e) | Error::Write(e) => Some(e),
                Error::WriteZero | Error::BufferTooSmall { .. } => None,
            }
        }
    }

    impl<E: embedded_io::Error + 'static> embedded_io::Error for Error<E> {
        fn kind(&self) -> ErrorKind {
            match self {
                Error::Read(e) | Error::Write(e) => e.kind(),
                Error::WriteZero => ErrorKind::WriteZero,
                Error::BufferTooSmall { .. } => ErrorKind::InvalidInput,
            }
        }
    }

    /// Moves bytes between a [`Link`] and a blocking transport; see the
    /// [module docs](self) for the loop that drives it.
    #[derive(Debug)]
    pub struct Driver<B> {
        tx: Outbox<B>,
    }

    impl<B: AsMut<[u8]>> Driver<B> {
        /// A driver transmitting through `buf` (at least [`Link::transmit_len`] bytes;
        /// see [`super::tx_buffer_len`]).
        pub const fn new(buf: B) -> Self {
            Driver {
                tx: Outbox::new(buf),
            }
        }

        /// Bytes taken from the link that the transport has not accepted yet (the rest of a
        /// frame a write timed out or failed in); the next [`Driver::flush`] sends them first.
        pub fn pending(&self) -> usize {
            self.tx.pending()
        }

        /// Forgets the pending bytes: call it when the transport is replaced, before
        /// [`Link::connect`].
        pub fn reset(&mut self) {
            self.tx.reset();
        }

        /// The transmit buffer back.
        pub fn into_inner(self) -> B {
            self.tx.buf
        }

        /// Writes everything the link has to send now, gathering as many frames into each
        /// write as the buffer holds, then flushes the transport. Returns the bytes written.
        ///
        /// A write that times out or is interrupted ends the call early with `Ok`; the rest
        /// stays [pending](Driver::pending) for the next call. A failed write keeps it too.
        pub fn flush<S, W>(
            &mut self,
            link: &mut Link<S>,
            io: &mut W,
            now: Instant,
        ) -> Result<usize, Error<W::Error>>
        where
            S: Storage,
            W: Write,
        {
            if let Some((need, have)) = self.tx.too_small(link) {
                return Err(Error::BufferTooSmall { need, have });
            }
            let mut written = 0;
            while self.tx.refill(link, now) > 0 {
                match io.write(self.tx.unsent()) {
                    Ok(0) => return Err(Error::WriteZero),
                    Ok(n) => written += self.tx.consume(n),
                    Err(e) if is_transient(e.kind()) => return Ok(written),
                    Err(e) => return Err(Error::Write(e)),
                }
            }
            if written > 0 {
                match io.flush() {
                    Ok(()) => {}
                    Err(e) if is_transient(e.kind()) => {}
                    Err(e) => return Err(Error::Write(e)),
                }
            }
            Ok(written)
        }

        /// One read into `rx` (which blocks until something arrives or the transport's read
        /// timeout expires); what arrived goes to the link as received at `now`.
        ///
        /// `now` is the time of the call, so bytes that arrive later in the read are stamped
        /// early by up to the read timeout: the link's timers may then fire that much early,
        /// never late.
        pub fn read_once<S, R>(
            &mut self,
            link: &mut Link<S>,
            io: &mut R,
            now: Instant,
            rx: &mut [u8],
        ) -> Result<Input, Error<R::Error>>
        where
            S: Storage,
            R: Read,
        {
            if rx.is_empty() {
                // A read into nothing returns 0, which would look like the end of the stream.
                return Err(Error::BufferTooSmall { need: 1, have: 0 });
            }
            match io.read(rx) {
                Ok(0) => Ok(Input::Eof),
                Ok(n) => {
                    let got = &rx[..n.min(rx.len())];
                    link.handle_input(now, got);
                    Ok(Input::Data(got.len()))
                }
                Err(e) if is_transient(e.kind()) => Ok(Input::Idle),
                Err(e) => Err(Error::Read(e)),
            }
        }
    }
}

/// The non-blocking driver: `nb`-style polling over [`embedded_io::ReadReady`] and
/// [`embedded_io::WriteReady`].
///
/// [`poll`](nb::Driver::poll) never blocks: it reads only after `read_ready` said yes, writes only
/// after `write_ready` said yes, one call each time, and never calls the transport's
/// `flush` (which may wait). A UART that takes a few bytes of a frame keeps the rest waiting
/// in the driver until it is ready again. Call `poll` from the main loop or an interrupt-woken
/// task as often as convenient; it also runs the link's timers, so nothing else is needed
/// but the application's part:
///
/// ```
/// use tether_core::io::nb::{Driver, Error};
/// use tether_core::link::{Config, Instant, Link, LinkStorage, Role};
/// use embedded_io::{Read, ReadReady, Write, WriteReady};
///
/// fn main_loop<T>(uart: &mut T, clock: impl Fn() -> Instant) -> Result<(), Error<T::Error>>
/// where
///     T: Read + Write + ReadReady + WriteReady,
/// {
///     let storage = LinkStorage::<4, 4, 128>::new();
///     let mut link = Link::new(Config::new(Role::Client, 0xD1), storage).unwrap();
///     let mut driver = Driver::new([0u8; 160]);
///     link.connect(clock());
///     loop {
///         let progress = driver.poll(&mut link, uart, clock())?;
///         if progress.eof { /* the transport closed */ }
///         while let Some(record) = link.recv() {
///             let _ = record.payload; // act on it, then:
///             link.release(1);
///         }
///         // ... the rest of the firmware's work; sleep until an interrupt if idle ...
///     }
/// }
/// ```
pub mod nb {
    use super::{fmt, is_transient, Outbox};
    use crate::link::{Instant, Link, Storage};
    use embedded_io::{Error as _, ErrorKind, Read, ReadReady, Write, WriteReady};

    /// Bytes read per transport read, into a buffer on the stack.
    pub const READ_CHUNK: usize = 64;

    /// At most this many reads per [`Driver::poll`], so that a peer that never stops
    /// talking cannot keep `poll` from writing or returning.
    pub const MAX_READS: usize = 16;

    /// What one [`Driver::poll`] did.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub struct Progress {
        /// Bytes read and handed to the link.
        pub read: usize,
        /// Bytes the transport accepted.
        pub written: usize,
        /// Bytes taken from the link still waiting for the transport (the rest of a frame
        /// it was not ready for).
        pub pending: usize,
        /// The transport reached the end of its stream (a ready read returned 0 bytes).
        pub eof: bool,
    }

    impl Progress {
        /// Nothing moved: no byte read or written, no end of stream.
        pub fn is_idle(&self) -> bool {
            self.read == 0 && self.written == 0 && !self.eof
        }
    }

    /// Why [`Driver::poll`] failed. The transport error `E` is kept as is; pending bytes
    /// are kept too.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub enum Error<E> {
        /// `read_ready` failed.
        ReadReady(E),
        /// `read` failed.
        Read(E),
        /// `write_ready` failed.
        WriteReady(E),
        /// `write` failed.
        Write(E),
        /// The transport's write accepted 0 bytes of a non-empty buffer (a closed or broken
        /// transport).
        WriteZero,
        /// The driver's transmit buffer is shorter than [`Link::transmit_len`].
        BufferTooSmall {
            /// The bytes needed.
            need: usize,
            /// The bytes given.
            have: usize,
        },
    }

    impl<E: fmt::Display> fmt::Display for Error<E> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::ReadReady(e) => write!(f, "transport read_ready failed: {e}"),
                Error::Read(e) => write!(f, "transport read failed: {e}"),
                Error::WriteReady(e) => write!(f, "transport write_ready failed: {e}"),
                Error::Write(e) => write!(f, "transport write failed: {e}"),
                Error::WriteZero => f.write_str("transport accepted no bytes of a write"),
                Error::BufferTooSmall { need, have } => {
                    write!(f, "transmit buffer too small: {have} bytes, {need} needed")
                }
            }
        }
    }

    impl<E: core::error::Error + 'static> core::error::Error for Error<E> {
        fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
            match self {
                Error::ReadReady(e) | Error::Read(e) | Error::WriteReady(e) | Error::Write(e) => {
                    Some(e)
                }
                Error::WriteZero | Error::BufferTooSmall { .. } => None,
            }
        }
    }

    impl<E: embedded_io::Error + 'static> embedded_io::Error for Error<E> {
        fn kind(&self) -> ErrorKind {
            match self {
                Error::ReadReady(e) | Error::Read(e) | Error::WriteReady(e) | Error::Write(e) => {
                    e.kind()
                }
                Error::WriteZero => ErrorKind::WriteZero,
                Error::BufferTooSmall { .. } => ErrorKind::InvalidInput,
            }
        }
    }

    /// Moves bytes between a [`Link`] and a transport without ever blocking; see the
    /// [module docs](self).
    #[derive(Debug)]
    pub struct Driver<B> {
        tx: Outbox<B>,
    }

    impl<B: AsMut<[u8]>> Driver<B> {
        /// A driver transmitting through `buf` (at least [`Link::transmit_len`] bytes;
        /// see [`super::tx_buffer_len`]).
        pub const fn new(buf: B) -> Self {
            Driver {
                tx: Outbox::new(buf),
            }
        }

        /// Bytes taken from the link that the transport has not accepted yet.
        pub fn pending(&self) -> usize {
            self.tx.pending()
        }

        /// Forgets the pending bytes: call it when the transport is replaced, before
        /// [`Link::connect`].
        pub fn reset(&mut self) {
            self.tx.reset();
        }

        /// The transmit buffer back.
        pub fn into_inner(self) -> B {
            self.tx.buf
        }

        /// One non-blocking step: reads what is ready (up to [`MAX_READS`] reads of
        /// [`READ_CHUNK`] bytes) into the link, runs the link's timers if one is due, then
        /// writes while the transport is ready and the link has frames, the rest of a
        /// partly written frame first.
        ///
        /// A read or write that times out or is interrupted ends that half of the step
        /// without an error.
        pub fn poll<S, T>(
            &mut self,
            link: &mut Link<S>,
            io: &mut T,
            now: Instant,
        ) -> Result<Progress, Error<T::Error>>
        where
            S: Storage,
            T: Read + Write + ReadReady + WriteReady,
        {
            if let Some((need, have)) = self.tx.too_small(link) {
                return Err(Error::BufferTooSmall { need, have });
            }
            let mut progress = Progress::default();

            let mut chunk = [0u8; READ_CHUNK];
            for _ in 0..MAX_READS {
                match io.read_ready() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) if is_transient(e.kind()) => break,
                    Err(e) => return Err(Error::ReadReady(e)),
                }
                match io.read(&mut chunk) {
                    Ok(0) => {
                        progress.eof = true;
                        break;
                    }
                    Ok(n) => {
                        let got = &chunk[..n.min(READ_CHUNK)];
                        link.handle_input(now, got);
                        progress.read += got.len();
                    }
                    Err(e) if is_transient(e.kind()) => break,
                    Err(e) => return Err(Error::Read(e)),
                }
            }

            if link.poll_timeout().is_some_and(|at| at <= now) {
                link.handle_timeout(now);
            }

            progress.written = self.write_while_ready(link, io, now)?;
            progress.pending = self.tx.pending();
            Ok(progress)
        }

        /// Everything the link has to send now handed to the transport, as it becomes
        /// ready: `Ok` once the transport accepted all of it, `WouldBlock` while some is still
        /// waiting (call again, or `nb::block!` it). Feature `nb`.
        ///
        /// "Accepted" is what `write` returned: the bytes may still sit in the UART's FIFO
        /// (this driver never calls the transport's `flush`, which may wait). Reads nothing and
        /// runs no timer.
        #[cfg(feature = "nb")]
        #[cfg_attr(docsrs, doc(cfg(feature = "nb")))]
        pub fn flush<S, T>(
            &mut self,
            link: &mut Link<S>,
            io: &mut T,
            now: Instant,
        ) -> ::nb::Result<(), Error<T::Error>>
        where
            S: Storage,
            T: Write + WriteReady,
        {
            if let Some((need, have)) = self.tx.too_small(link) {
                return Err(::nb::Error::Other(Error::BufferTooSmall { need, have }));
            }
            self.write_while_ready(link, io, now)?;
            if self.tx.refill(link, now) > 0 {
                Err(::nb::Error::WouldBlock)
            } else {
                Ok(())
            }
        }

        /// Writes while the transport is ready and the link has frames, the rest of a partly
        /// written frame first; the bytes written.
        fn write_while_ready<S, T>(
            &mut self,
            link: &mut Link<S>,
            io: &mut T,
            now: Instant,
        ) -> Result<usize, Error<T::Error>>
        where
            S: Storage,
            T: Write + WriteReady,
        {
            let mut written = 0;
            // Each write was preceded by a `write_ready` that said yes; frames are taken
            // from the link only when the transport can take some of them now.
            loop {
                match io.write_ready() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) if is_transient(e.kind()) => break,
                    Err(e) => return Err(Error::WriteReady(e)),
                }
                if self.tx.refill(link, now) == 0 {
                    break;
                }
                match io.write(self.tx.unsent()) {
                    Ok(0) => return Err(Error::WriteZero),
                    Ok(n) => written += self.tx.consume(n),
                    Err(e) if is_transient(e.kind()) => break,
                    Err(e) => return Err(Error::Write(e)),
                }
            }
            Ok(written)
        }
    }
}

/// The async driver, over [`embedded_io_async::Read`] and [`embedded_io_async::Write`]
/// (feature `async`). No executor is assumed; it runs under embassy, RTIC or tokio (through
/// `embedded-io-adapters`) alike.
///
/// It is the [blocking driver](crate::io::blocking) with `.await`:
/// [`flush`](crate::io::asynch::Driver::flush) writes every frame due,
/// [`read_once`](crate::io::asynch::Driver::read_once) awaits one read. Both are cancel-safe as far as the
/// transport is: dropping `flush` between writes keeps the rest pending (the next call sends
/// it), and `read_once` hands bytes to the link only once the read has completed. So the
/// task can race the read against the link's deadline:
///
/// ```
/// use tether_core::io::asynch::{Driver, Error, Input};
/// use tether_core::link::{Instant, Link, Storage};
/// use embedded_io_async::{Read, Write};
///
/// /// One pass of the link task. With embassy, `read_once` would be raced against
/// /// `Timer::at(deadline)` (`select`), the deadline being `link.poll_timeout()`.
/// async fn pass<S: Storage, T: Read + Write, B: AsMut<[u8]>>(
///     link: &mut Link<S>,
///     driver: &mut Driver<B>,
///     io: &mut T,
///     now: Instant,
/// ) -> Result<Input, Error<T::Error>> {
///     link.handle_timeout(now);
///     driver.flush(link, io, now).await?;
///     let mut rx = [0u8; 64];
///     driver.read_once(link, io, now, &mut rx).await
/// }
/// ```
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub mod asynch {
    use super::{is_transient, Outbox};
    use crate::link::{Instant, Link, Storage};
    use embedded_io_async::{Error as _, Read, Write};

    pub use super::blocking::{Error, Input};

    /// Moves bytes between a [`Link`] and an async transport; see the [module docs](self).
    #[derive(Debug)]
    pub struct Driver<B> {
        tx: Outbox<B>,
    }

    impl<B: AsMut<[u8]>> Driver<B> {
        /// A driver transmitting through `buf` (at least [`Link::transmit_len`] bytes;
        /// see [`super::tx_buffer_len`]).
        pub const fn new(buf: B) -> Self {
            Driver {
                tx: Outbox::new(buf),
            }
        }

        /// Bytes taken from the link that the transport has not accepted yet.
        pub fn pending(&self) -> usize {
            self.tx.pending()
        }

        /// Forgets the pending bytes: call it when the transport is replaced, before
        /// [`Link::connect`].
        pub fn reset(&mut self) {
            self.tx.reset();
        }

        /// The transmit buffer back.
        pub fn into_inner(self) -> B {
            self.tx.buf
        }

        /// Writes everything the link has to send now, gathering frames into each write as
        /// the buffer allows, then flushes the transport. Returns the bytes written.
        ///
        /// As [`blocking::Driver::flush`](super::blocking::Driver::flush): a timed-out or
        /// interrupted write ends the call with `Ok` and the rest stays pending.
        pub async fn flush<S, W>(
            &mut self,
            link: &mut Link<S>,
            io: &mut W,
            now: Instant,
        ) -> Result<usize, Error<W::Error>>
        where
            S: Storage,
            W: Write,
        {
            if let Some((need, have)) = self.tx.too_small(link) {
                return Err(Error::BufferTooSmall { need, have });
            }
            let mut written = 0;
            while self.tx.refill(link, now) > 0 {
                match io.write(self.tx.unsent()).await {
                    Ok(0) => return Err(Error::WriteZero),
                    Ok(n) => written += self.tx.consume(n),
                    Err(e) if is_transient(e.kind()) => return Ok(written),
                    Err(e) => return Err(Error::Write(e)),
                }
            }
            if written > 0 {
                match io.flush().await {
                    Ok(()) => {}
                    Err(e) if is_transient(e.kind()) => {}
                    Err(e) => return Err(Error::Write(e)),
                }
            }
            Ok(written)
        }

        /// Awaits one read into `rx`; what arrived goes to the link as received at `now`.
        pub async fn read_once<S, R>(
            &mut self,
            link: &mut Link<S>,
            io: &mut R,
            now: Instant,
            rx: &mut [u8],
        ) -> Result<Input, Error<R::Error>>
        where
            S: Storage,
            R: Read,
        {
            if rx.is_empty() {
                return Err(Error::BufferTooSmall { need: 1, have: 0 });
            }
            match io.read(rx).await {
                Ok(0) => Ok(Input::Eof),
                Ok(n) => {
                    let got = &rx[..n.min(rx.len())];
                    link.handle_input(now, got);
                    Ok(Input::Data(got.len()))
                }
                Err(e) if is_transient(e.kind()) => Ok(Input::Idle),
                Err(e) => Err(Error::Read(e)),
            }
        }
    }
}
