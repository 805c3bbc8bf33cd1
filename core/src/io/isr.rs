//! Interrupt-driven receive (feature `isr`): a UART's receive interrupt pushes each byte into
//! a lock-free single-producer, single-consumer queue ([`heapless::spsc`]), and the main loop
//! drains it into the link. No `unsafe` in the firmware's code, no lock on the byte path.
//!
//! ```text
//!   UART RX interrupt                                main loop
//!   ─────────────────                                ─────────
//!   while the FIFO has a byte:                       driver.poll(&mut link, &mut port, now)
//!     rx.push(byte)  ──►  RxQueue<N> (heapless  ──►    reads RxConsumer (embedded-io Read,
//!     (full: counted        spsc, N - 1 bytes)          or embedded-hal-nb Read), writes
//!      as an overrun,                                   the UART's transmit side
//!      or rx.hold() and                              if port.rx.resume() {
//!      mask the line)                                    unmask the UART interrupt }
//! ```
//!
//! Why a queue: a receive FIFO holds a few bytes (16 on a PL011, 6 on an nRF51), a few
//! tens of microseconds at 921,600 baud; a main loop that is busy longer than that (encoding
//! a frame, writing flash) loses bytes if it polls the UART itself. The interrupt empties
//! the FIFO at once, and the queue holds the bytes until the loop comes round. Size it for
//! the longest the loop may be away: at 921,600 baud, 92 bytes a millisecond.
//!
//! Why it needs no lock: [`RxProducer`] and [`RxConsumer`] each own one end of the queue
//! (one writes the tail, the other the head), so the only shared state is two indices read
//! and written atomically. That takes atomic loads and stores, not compare-and-swap: it
//! works on a Cortex-M0 (`thumbv6m`), which has no CAS; heapless enables `spsc` there
//! natively. On a target without even atomic loads and stores, enable heapless's
//! `portable-atomic-critical-section` feature in the firmware's own `Cargo.toml`.
//!
//! # Handing the producer to the interrupt, safely
//!
//! The queue must outlive both contexts: build it in a `static` with
//! `cortex_m::singleton!` (safe: it hands out the `&'static mut` once), split it, keep the
//! consumer in the main loop and put the producer into an [`IsrCell`], a `static` the
//! interrupt handler reaches through a critical section:
//!
//! ```
//! use tether_core::io::isr::{IsrCell, RxProducer, RxQueue};
//!
//! /// The interrupt's half, handed over once by main.
//! static UART_RX: IsrCell<RxProducer<'static>> = IsrCell::new();
//!
//! /// The UART's receive interrupt (`#[interrupt] fn UART0()` with a PAC): every byte
//! /// the FIFO holds goes into the queue; a byte with a line error is counted and kept
//! /// (the link's CRC drops its frame).
//! fn uart0_interrupt(fifo: &mut impl Iterator<Item = (u8, bool)>) {
//!     UART_RX.with(|rx| {
//!         for (byte, line_error) in fifo {
//!             if line_error {
//!                 rx.line_error();
//!             }
//!             rx.push(byte);
//!         }
//!     });
//! }
//!
//! # fn singleton() -> &'static mut RxQueue<256> { Box::leak(Box::new(RxQueue::new())) }
//! // In main: `cortex_m::singleton!(: RxQueue<256> = RxQueue::new()).unwrap()`.
//! let queue: &'static mut RxQueue<256> = singleton();
//! let (producer, mut consumer) = queue.split();
//! UART_RX.put(producer);
//!
//! uart0_interrupt(&mut [(b'h', false), (b'i', false)].into_iter()); // the UART interrupts
//!
//! let mut got = [0u8; 8];
//! let n = consumer.pop_into(&mut got);
//! assert_eq!(&got[..n], b"hi");
//! assert_eq!((consumer.overruns(), consumer.line_errors()), (0, 0));
//! ```
//!
//! Then the main loop reads the consumer as it would read the UART:
//! [`RxConsumer`] implements `embedded_io::{Read, ReadReady}` (and, with the
//! `embedded-hal-nb` feature, `embedded_hal_nb::serial::Read`), and [`Duplex`] joins it to the
//! UART's transmit side for [`super::nb::Driver`] (`super::hal_nb::Halves` for the
//! `embedded-hal-nb` driver). Sleep with interrupts masked after checking
//! [`RxConsumer::ready`], so a byte queued in between still wakes the core.
//!
//! [`IsrCell::with`] takes a critical section each time, for the few cycles the handler
//! needs. Under RTIC, hand the producer to the task as a local resource instead; a
//! cortex-m-rt handler can take it once into a handler-local `static mut` (which
//! cortex-m-rt makes a safe `&mut`) with [`IsrCell::take`].

use core::cell::RefCell;
use core::convert::Infallible;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use critical_section::Mutex;
use embedded_io::{ErrorType, Read, ReadReady, Write, WriteReady};
use heapless::spsc::{Consumer, Producer, Queue};

use crate::link::{Instant, Link, Storage};

/// The receive queue: room for `N - 1` bytes (heapless's `spsc::Queue<u8, N>`), and the
/// counts of bytes dropped because it was full and of line errors the interrupt saw.
///
/// `N` is the queue's array length; any `N >= 2` works, a power of two is fastest.
#[derive(Debug)]
pub struct RxQueue<const N: usize> {
    queue: Queue<u8, N>,
    counts: Counts,
}

/// Written by the producer only, read by either side: a load and a store, no CAS. (`held`
/// is the one flag both write: the producer sets it and then its interrupt is masked, the
/// consumer clears it before unmasking, so they never write it at the same time.)
#[derive(Debug)]
struct Counts {
    overruns: AtomicU32,
    line_errors: AtomicU32,
    holds: AtomicU32,
    held: AtomicBool,
}

impl Counts {
    fn bump(counter: &AtomicU32) {
        // One writer (the producer), so load + store cannot lose an increment.
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }
}

impl<const N: usize> RxQueue<N> {
    /// An empty queue (usable in a `static` initialiser or `cortex_m::singleton!`).
    pub const fn new() -> Self {
        RxQueue {
            queue: Queue::new(),
            counts: Counts {
                overruns: AtomicU32::new(0),
                line_errors: AtomicU32::new(0),
                holds: AtomicU32::new(0),
                held: AtomicBool::new(false),
            },
        }
    }

    /// How many bytes it holds at most: `N - 1`.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Its two ends: the producer for the interrupt, the consumer for the main loop.
    pub fn split(&mut self) -> (RxProducer<'_>, RxConsumer<'_>) {
        let (producer, consumer) = self.queue.split();
        let counts = &self.counts;
        (
            RxProducer {
                queue: producer,
                counts,
            },
            RxConsumer {
                queue: consumer,
                counts,
            },
        )
    }
}

impl<const N: usize> Default for RxQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The interrupt's end of an [`RxQueue`].
pub struct RxProducer<'a> {
    queue: Producer<'a, u8>,
    counts: &'a Counts,
}

impl RxProducer<'_> {
    /// Queues a byte; `false` if the queue was full: the byte is dropped and counted as an
    /// overrun (the link's CRC drops its frame and the peer sends it again).
    pub fn push(&mut self, byte: u8) -> bool {
        let queued = self.queue.enqueue(byte).is_ok();
        if !queued {
            Counts::bump(&self.counts.overruns);
        }
        queued
    }

    /// Whether the queue has room for a byte.
    pub fn ready(&self) -> bool {
        self.queue.ready()
    }

    /// Flow control: the queue is full, so the interrupt leaves the rest of the bytes in the
    /// UART (whose FIFO then fills and, with hardware flow control, tells the sender to
    /// wait) and masks its own line; call this as it does. [`RxConsumer::resume`] says when
    /// the main loop has made room and may unmask the line again. Without it, a full queue
    /// drops bytes ([`push`](Self::push) counts them as overruns); with it, a UART without
    /// flow control drops them in its FIFO instead, which it reports as an overrun error
    /// (a line error).
    pub fn hold(&mut self) {
        Counts::bump(&self.counts.holds);
        self.counts.held.store(true, Ordering::Release);
    }

    /// Counts a byte the UART received with a line error (framing, parity, break, its own
    /// FIFO overrun). Push the byte all the same, or not: either way the link recovers.
    pub fn line_error(&mut self) {
        Counts::bump(&self.counts.line_errors);
    }

    /// Bytes dropped so far because the queue was full (wraps).
    pub fn overruns(&self) -> u32 {
        self.counts.overruns.load(Ordering::Relaxed)
    }
}

impl core::fmt::Debug for RxProducer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RxProducer")
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

/// The main loop's end of an [`RxQueue`]: a byte source that never fails.
pub struct RxConsumer<'a> {
    queue: Consumer<'a, u8>,
    counts: &'a Counts,
}

impl RxConsumer<'_> {
    /// Whether a byte is waiting.
    pub fn ready(&self) -> bool {
        self.queue.ready()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no byte is waiting.
    pub fn is_empty(&self) -> bool {
        !self.ready()
    }

    /// Moves waiting bytes into `buf`, as many as fit; how many.
    pub fn pop_into(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for slot in buf.iter_mut() {
            match self.queue.dequeue() {
                Some(byte) => *slot = byte,
                None => break,
            }
            n += 1;
        }
        n
    }

    /// Hands every waiting byte to the link, 64 at a time (bytes the interrupt adds
    /// meanwhile too, up to `max` in all); how many. For a loop that does its own
    /// transmitting (`Link::poll_transmit`) rather than use a driver.
    pub fn feed<S: Storage>(&mut self, link: &mut Link<S>, now: Instant, max: usize) -> usize {
        let mut chunk = [0u8; 64];
        let mut total = 0;
        while total < max {
            let want = chunk.len().min(max - total);
            let n = self.pop_into(&mut chunk[..want]);
            if n == 0 {
                break;
            }
            link.handle_input(now, &chunk[..n]);
            total += n;
        }
        total
    }

    /// Bytes dropped so far because the queue was full (wraps). Non-zero means the queue
    /// is too small for the time the main loop is away.
    pub fn overruns(&self) -> u32 {
        self.counts.overruns.load(Ordering::Relaxed)
    }

    /// Line errors the interrupt counted so far (wraps).
    pub fn line_errors(&self) -> u32 {
        self.counts.line_errors.load(Ordering::Relaxed)
    }

    /// Times the interrupt held off because the queue was full ([`RxProducer::hold`]; wraps).
    pub fn holds(&self) -> u32 {
        self.counts.holds.load(Ordering::Relaxed)
    }

    /// Whether the interrupt is held ([`RxProducer::hold`]) and the queue is at most half
    /// full now: then the hold ends, and the caller unmasks the UART's receive interrupt.
    /// Call it from the main loop after draining the queue.
    pub fn resume(&mut self) -> bool {
        let room = self.queue.len() <= self.queue.capacity() / 2;
        if room && self.counts.held.load(Ordering::Acquire) {
            // The interrupt is masked while held: nothing else writes the flag now.
            self.counts.held.store(false, Ordering::Release);
            return true;
        }
        false
    }
}

impl core::fmt::Debug for RxConsumer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RxConsumer")
            .field("queued", &self.queue.len())
            .field("overruns", &self.overruns())
            .finish_non_exhaustive()
    }
}

impl ErrorType for RxConsumer<'_> {
    type Error = Infallible;
}

impl Read for RxConsumer<'_> {
    /// Waits (spinning) for the first byte, as a UART's blocking read does: call it after
    /// [`ReadReady::read_ready`] said yes, as the `nb` driver does. Then takes what is
    /// queued, up to `buf.len()`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.ready() {
            core::hint::spin_loop();
        }
        Ok(self.pop_into(buf))
    }
}

impl ReadReady for RxConsumer<'_> {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.ready())
    }
}

#[cfg(feature = "embedded-hal-nb")]
impl embedded_hal_nb::serial::ErrorType for RxConsumer<'_> {
    type Error = Infallible;
}

#[cfg(feature = "embedded-hal-nb")]
impl embedded_hal_nb::serial::Read<u8> for RxConsumer<'_> {
    fn read(&mut self) -> ::nb::Result<u8, Infallible> {
        self.queue.dequeue().ok_or(::nb::Error::WouldBlock)
    }
}

/// The receive queue's consumer and a UART's transmit side as one `embedded-io` port, for
/// [`super::nb::Driver`] (or any driver over `Read + ReadReady + Write + WriteReady`). Its
/// error is the transmit side's: reading never fails.
#[derive(Debug)]
pub struct Duplex<'a, W> {
    /// The receive side: what the interrupt queued.
    pub rx: RxConsumer<'a>,
    /// The transmit side: the UART (its `Write` and `WriteReady`).
    pub tx: W,
}

impl<W: ErrorType> ErrorType for Duplex<'_, W> {
    type Error = W::Error;
}

impl<W: ErrorType> Read for Duplex<'_, W> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, W::Error> {
        Ok(self.rx.read(buf).unwrap_or_else(|never| match never {}))
    }
}

impl<W: ErrorType> ReadReady for Duplex<'_, W> {
    fn read_ready(&mut self) -> Result<bool, W::Error> {
        Ok(self.rx.ready())
    }
}

impl<W: Write> Write for Duplex<'_, W> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, W::Error> {
        self.tx.write(buf)
    }

    fn flush(&mut self) -> Result<(), W::Error> {
        self.tx.flush()
    }
}

impl<W: WriteReady> WriteReady for Duplex<'_, W> {
    fn write_ready(&mut self) -> Result<bool, W::Error> {
        self.tx.write_ready()
    }
}

/// A value the main loop hands to an interrupt handler once, reached through a critical
/// section (the `critical-section` crate: on a single-core Cortex-M, `cortex-m`'s
/// `critical-section-single-core` feature provides it). A `static`, no `unsafe`.
pub struct IsrCell<T> {
    slot: Mutex<RefCell<Option<T>>>,
}

impl<T> IsrCell<T> {
    /// An empty cell, for a `static`.
    pub const fn new() -> Self {
        IsrCell {
            slot: Mutex::new(RefCell::new(None)),
        }
    }

    /// Puts `value` in (replacing what was there). Call it before enabling the interrupt.
    pub fn put(&self, value: T) {
        critical_section::with(|cs| {
            self.slot.borrow(cs).replace(Some(value));
        });
    }

    /// Runs `f` on the value inside a critical section; `None` if nothing was put in yet
    /// (an interrupt that fired early: it should leave its flag for the next time).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        critical_section::with(|cs| self.slot.borrow(cs).borrow_mut().as_mut().map(f))
    }

    /// Takes the value out (for a handler that keeps it in a handler-local `static mut`
    /// after its first run).
    pub fn take(&self) -> Option<T> {
        critical_section::with(|cs| self.slot.borrow(cs).take())
    }
}

impl<T> Default for IsrCell<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> core::fmt::Debug for IsrCell<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IsrCell").finish_non_exhaustive()
    }
}
