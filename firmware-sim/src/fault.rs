//! A fault-injecting link for tests: the idea of smoltcp's `FaultInjector`, for byte streams.
//!
//! Reliable protocols are only as good as the bad links they were tested on. This module
//! takes a byte stream and, from a seed, **loses**, **corrupts** and **duplicates** bytes,
//! **loses whole writes** (a frame, when the caller writes one frame per write), **splits**
//! reads and writes at random sizes, and **cuts** the connection at chosen points. The
//! same seed and the same calls give the same faults, so a failing run replays exactly.
//!
//! - [`FaultInjector`] is the engine: bytes in, faulty bytes out, no buffer and no IO. Use
//!   it to build your own faulty transport.
//! - [`FaultPipe`] is an in-memory duplex pipe between two [`Side`]s, with the faults
//!   applied in between: sans-IO (`push` on one side, `pull` on the other), `no_std`, no
//!   allocation, for deterministic tests with a virtual clock. With
//!   [`FaultConfig::bytes_per_sec`] each direction is a line of that rate, as a UART at a
//!   given baud: bytes arrive as the line carries them on the pipe's virtual clock
//!   ([`FaultPipe::advance_to`]), so a test measures records per second deterministically.
//! - `FaultStream` (feature `std`) wraps any `std::io::Read + Write`, a `TcpStream` say.
//!
//! A cut is reported as [`Cut`] (an `std::io::ErrorKind::ConnectionReset` error from
//! `FaultStream`) on every later operation until [`FaultPipe::reconnect`]: the caller
//! then does what it does when a real connection breaks, and connects again.
//!
//! ```
//! use tether_firmware_sim::fault::{FaultConfig, FaultPipe, Side};
//!
//! let mut pipe = FaultPipe::<256>::new(FaultConfig {
//!     corrupt_byte: 0.01,
//!     split: true,
//!     ..FaultConfig::clean(42)
//! });
//! assert_eq!(pipe.push(Side::A, b"hello, host")?, 11);
//! let mut got = [0u8; 32];
//! let mut n = 0;
//! while let k @ 1.. = pipe.pull(Side::B, &mut got[n..])? {
//!     n += k; // pieces of random sizes
//! }
//! assert_eq!(n, 11);
//! assert_eq!(pipe.stats().bytes_out, 11);
//! # Ok::<(), tether_firmware_sim::fault::Cut>(())
//! ```

use heapless::Deque;

use crate::rng::{Chance, XorShift};

/// What the faults are. Probabilities are in `0.0..=1.0`; the default is no fault at all.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Each byte is lost with this probability.
    pub lose_byte: f32,
    /// Each byte is corrupted (XORed with a random non-zero value) with this probability.
    pub corrupt_byte: f32,
    /// Each byte is delivered twice with this probability.
    pub duplicate_byte: f32,
    /// Each write is lost whole with this probability: a lost frame, when the caller
    /// writes one frame per write.
    pub lose_write: f32,
    /// Reads (and [`FaultPipe::pull`]s) return, and writes to a `FaultStream` accept, a
    /// random number of the bytes they could (at least one): what TCP does to message
    /// boundaries.
    pub split: bool,
    /// Cut the connection once it has carried this many bytes, both directions together,
    /// since it came up (so again on every connection).
    pub cut_after_bytes: Option<u64>,
    /// Cut the connection at a write with this probability.
    pub cut_per_write: f32,
    /// [`FaultPipe`] only: each direction carries at most this many bytes a second on the
    /// pipe's virtual clock ([`FaultPipe::advance_to`]), one after the other, as a serial
    /// line does ([`FaultConfig::uart_8n1`] gives a UART's); 0, the default: bytes arrive
    /// at once. The faults apply as bytes enter the line.
    pub bytes_per_sec: u32,
}

impl FaultConfig {
    /// No fault: the injector is transparent. Set the fields wanted on top of it.
    pub const fn clean(seed: u64) -> Self {
        FaultConfig {
            seed,
            lose_byte: 0.0,
            corrupt_byte: 0.0,
            duplicate_byte: 0.0,
            lose_write: 0.0,
            split: false,
            cut_after_bytes: None,
            cut_per_write: 0.0,
            bytes_per_sec: 0,
        }
    }

    /// The bytes a second of a UART at `baud` with 8N1 framing: 10 bits a byte (a start
    /// bit, 8 data bits, a stop bit). 115,200 baud carries 11,520 bytes a second.
    pub const fn uart_8n1(baud: u32) -> u32 {
        baud / 10
    }
}

/// Faults injected so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultStats {
    /// Writes passed through (cut ones included).
    pub writes: u64,
    /// Bytes given to the injector.
    pub bytes_in: u64,
    /// Bytes that came out (duplicates included).
    pub bytes_out: u64,
    /// Bytes lost, alone or with their write.
    pub lost_bytes: u64,
    /// Bytes corrupted.
    pub corrupted_bytes: u64,
    /// Bytes delivered twice.
    pub duplicated_bytes: u64,
    /// Writes lost whole.
    pub lost_writes: u64,
    /// Reads or writes cut short by a random split.
    pub splits: u64,
    /// Connection cuts, injected or asked for with `cut()`.
    pub cuts: u32,
}

/// The connection was cut (by the injector or by `cut()`); it stays cut until it is
/// reconnected. Bytes in flight were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut;

impl core::fmt::Display for Cut {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("connection cut by the fault injector")
    }
}

impl core::error::Error for Cut {}

impl embedded_io::Error for Cut {
    fn kind(&self) -> embedded_io::ErrorKind {
        embedded_io::ErrorKind::ConnectionReset
    }
}

/// The fault engine: turns the bytes of each write into the bytes that arrive, and decides
/// splits and cuts. It holds no bytes and does no IO; [`FaultPipe`] and `FaultStream`
/// are built on it, and so can a transport of your own.
///
/// ```
/// use tether_firmware_sim::fault::{FaultConfig, FaultInjector};
///
/// let mut faults = FaultInjector::new(FaultConfig { duplicate_byte: 1.0, ..FaultConfig::clean(1) });
/// let mut out = [0u8; 4];
/// let mut n = 0;
/// faults.write(b"ab", |b| { out[n] = b; n += 1; })?;
/// assert_eq!(&out[..n], b"aabb");
/// # Ok::<(), tether_firmware_sim::fault::Cut>(())
/// ```
#[derive(Debug, Clone)]
pub struct FaultInjector {
    config: FaultConfig,
    rng: XorShift,
    lose_byte: Chance,
    corrupt_byte: Chance,
    duplicate_byte: Chance,
    lose_write: Chance,
    cut_per_write: Chance,
    /// Bytes carried since the connection came up.
    carried: u64,
    cut: bool,
    stats: FaultStats,
}

impl FaultInjector {
    /// An injector with these faults, its connection up.
    pub fn new(config: FaultConfig) -> Self {
        FaultInjector {
            config,
            rng: XorShift::new(config.seed),
            lose_byte: Chance::new(config.lose_byte),
            corrupt_byte: Chance::new(config.corrupt_byte),
            duplicate_byte: Chance::new(config.duplicate_byte),
            lose_write: Chance::new(config.lose_write),
            cut_per_write: Chance::new(config.cut_per_write),
            carried: 0,
            cut: false,
            stats: FaultStats::default(),
        }
    }

    /// The faults.
    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// What was injected so far.
    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// Whether the connection is cut.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Cuts the connection now (a test's chosen point). Counted like an injected cut;
    /// cutting a cut connection does nothing.
    pub fn cut(&mut self) {
        if !self.cut {
            self.cut = true;
            self.stats.cuts = self.stats.cuts.saturating_add(1);
        }
    }

    /// A new connection is up: writes pass again and the byte count towards
    /// [`FaultConfig::cut_after_bytes`] starts from zero.
    pub fn reconnect(&mut self) {
        self.cut = false;
        self.carried = 0;
    }

    /// Passes one write through the faults: `emit` gets each byte that arrives, in order.
    ///
    /// Returns [`Cut`] if the connection was cut, or is cut by this write (a random cut, or
    /// [`FaultConfig::cut_after_bytes`] reached: the bytes up to that point were emitted).
    pub fn write(&mut self, bytes: &[u8], mut emit: impl FnMut(u8)) -> Result<(), Cut> {
        if self.cut {
            return Err(Cut);
        }
        self.stats.writes += 1;
        self.stats.bytes_in += bytes.len() as u64;
        if self.rng.hit(self.cut_per_write) {
            self.stats.lost_bytes += bytes.len() as u64;
            self.cut();
            return Err(Cut);
        }
        let budget = self
            .config
            .cut_after_bytes
            .map(|limit| limit.saturating_sub(self.carried));
        let (take, cut_here) = match budget {
            Some(b) if b <= bytes.len() as u64 => (b as usize, true),
            _ => (bytes.len(), false),
        };
        let (pass, dropped) = bytes.split_at(take);
        self.stats.lost_bytes += dropped.len() as u64;
        self.carried += take as u64;
        if self.rng.hit(self.lose_write) {
            self.stats.lost_writes += 1;
            self.stats.lost_bytes += pass.len() as u64;
        } else {
            for &byte in pass {
                if self.rng.hit(self.lose_byte) {
                    self.stats.lost_bytes += 1;
                    continue;
                }
                let mut byte = byte;
                if self.rng.hit(self.corrupt_byte) {
                    byte ^= 1 + self.rng.below(255) as u8;
                    self.stats.corrupted_bytes += 1;
                }
                emit(byte);
                self.stats.bytes_out += 1;
                if self.rng.hit(self.duplicate_byte) {
                    emit(byte);
                    self.stats.bytes_out += 1;
                    self.stats.duplicated_bytes += 1;
                }
            }
        }
        if cut_here {
            self.cut();
            return Err(Cut);
        }
        Ok(())
    }

    /// How many of `available` bytes the next read or write moves: all of them, or with
    /// [`FaultConfig::split`] a random number from 1 to `available`.
    pub fn piece(&mut self, available: usize) -> usize {
        if !self.config.split || available <= 1 {
            return available;
        }
        let n = 1 + self.rng.below(available as u64) as usize;
        if n < available {
            self.stats.splits += 1;
        }
        n
    }

    /// The most bytes one input byte can become (2 when bytes may be duplicated).
    fn expansion(&self) -> usize {
        if self.duplicate_byte.is_never() {
            1
        } else {
            2
        }
    }
}

/// One end of a [`FaultPipe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// One end (the device, say).
    A,
    /// The other end (the host, say).
    B,
}

impl Side {
    /// The other end.
    pub const fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// The lane of bytes travelling *to* this side.
    const fn inbound(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// An in-memory duplex pipe between [`Side::A`] and [`Side::B`] with faults applied in
/// between: sans-IO, `no_std`, no allocation. Each direction buffers up to `N` bytes.
///
/// [`push`](Self::push) is a non-blocking write: it takes what fits and says how much.
/// [`pull`](Self::pull) is a non-blocking read: `Ok(0)` means nothing is waiting (not the
/// end of the stream; a cut is [`Cut`]). Bytes arrive at once; a test that wants latency
/// delays its pulls.
///
/// On a cut both directions lose what they buffer, and every push and pull on either side
/// fails with [`Cut`] until [`reconnect`](Self::reconnect): both ends learn of it, as they
/// would of a broken TCP connection, and each connects again.
///
/// With [`FaultConfig::bytes_per_sec`] set, bytes arrive at that rate instead of at once:
/// the test moves the pipe's clock with [`advance_to`](Self::advance_to), a byte arrives
/// once the line has carried every byte before it, and [`on_line`](Self::on_line) says
/// how many bytes a side wrote that are still on their way (a UART driver's transmit
/// buffer: firmware writes its next frame when it runs low).
///
/// ```
/// use tether_firmware_sim::fault::{FaultConfig, FaultPipe, Side};
///
/// let rate = FaultConfig::uart_8n1(115_200); // 11,520 bytes a second
/// let mut pipe = FaultPipe::<1024>::new(FaultConfig { bytes_per_sec: rate, ..FaultConfig::clean(1) });
/// pipe.push(Side::A, &[0x55; 120])?;
/// let mut got = [0u8; 120];
/// assert_eq!(pipe.pull(Side::B, &mut got)?, 0); // nothing has crossed yet
/// pipe.advance_to(5_000); // 5 ms: 57.6 bytes' worth
/// assert_eq!(pipe.pull(Side::B, &mut got)?, 57);
/// assert_eq!(pipe.on_line(Side::A), 63);
/// # Ok::<(), tether_firmware_sim::fault::Cut>(())
/// ```
#[derive(Debug, Clone)]
pub struct FaultPipe<const N: usize> {
    injector: FaultInjector,
    /// Bytes travelling to A (index 0) and to B (index 1).
    /// Bytes in flight each way (heapless's ring buffer).
    lanes: [Deque<u8, N>; 2],
    /// Per lane, how many bytes at its front have arrived; the rest are on the line.
    ready: [usize; 2],
    /// The virtual clock, in microseconds.
    now_us: u64,
    /// Per lane, what the line has carried of the byte it is carrying, in byte-microseconds
    /// (a byte takes 1,000,000 / `bytes_per_sec` microseconds).
    carried: [u64; 2],
}

impl<const N: usize> FaultPipe<N> {
    /// A connected pipe with these faults.
    pub fn new(config: FaultConfig) -> Self {
        FaultPipe {
            injector: FaultInjector::new(config),
            lanes: [Deque::new(), Deque::new()],
            ready: [0; 2],
            now_us: 0,
            carried: [0; 2],
        }
    }

    /// Moves the pipe's virtual clock to `now_us` microseconds (it never goes back): with a
    /// byte rate, the lines carry what they can in the time passed. Without one it changes
    /// nothing.
    pub fn advance_to(&mut self, now_us: u64) {
        let elapsed = now_us.saturating_sub(self.now_us);
        self.now_us = self.now_us.max(now_us);
        let rate = u64::from(self.injector.config().bytes_per_sec);
        if rate == 0 {
            return;
        }
        for i in 0..2 {
            let waiting = self.lanes[i].len() - self.ready[i];
            if waiting == 0 {
                // An idle line banks nothing: the next byte starts when it is written.
                self.carried[i] = 0;
                continue;
            }
            self.carried[i] += elapsed.saturating_mul(rate);
            let n = (self.carried[i] / 1_000_000).min(waiting as u64);
            self.carried[i] -= n * 1_000_000;
            self.ready[i] += n as usize;
            if self.ready[i] == self.lanes[i].len() {
                self.carried[i] = 0;
            }
        }
    }

    /// The pipe's virtual clock, in microseconds.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// Bytes `from` wrote that are still on the line to the other side (0 without a byte
    /// rate: they arrive at once).
    pub fn on_line(&self, from: Side) -> usize {
        let i = from.other().inbound();
        self.lanes[i].len() - self.ready[i]
    }

    /// When the next byte on the line to `to` arrives, in microseconds on the pipe's
    /// clock; `None` if none is on its way.
    pub fn next_arrival_us(&self, to: Side) -> Option<u64> {
        let i = to.inbound();
        let rate = u64::from(self.injector.config().bytes_per_sec);
        if self.lanes[i].len() == self.ready[i] || rate == 0 {
            return None;
        }
        let left = 1_000_000 - self.carried[i].min(999_999);
        Some(self.now_us + left.div_ceil(rate))
    }

    /// Writes `bytes` from side `from` towards the other side, through the faults.
    ///
    /// Returns how many of `bytes` were taken: all of them unless the direction's buffer
    /// is nearly full (then the caller pushes the rest later; 0 means "full"). Every write
    /// is one unit for [`FaultConfig::lose_write`] and [`FaultConfig::cut_per_write`].
    pub fn push(&mut self, from: Side, bytes: &[u8]) -> Result<usize, Cut> {
        if self.injector.is_cut() {
            return Err(Cut);
        }
        let lane = &mut self.lanes[from.other().inbound()];
        let take = bytes
            .len()
            .min((N - lane.len()) / self.injector.expansion());
        if take == 0 {
            return Ok(0);
        }
        // The room was checked: a byte that does not fit (never) is dropped.
        let result = self.injector.write(&bytes[..take], |b| {
            let _ = lane.push_back(b);
        });
        if self.injector.config().bytes_per_sec == 0 {
            // No line: bytes arrive as they are written.
            let i = from.other().inbound();
            self.ready[i] = self.lanes[i].len();
        }
        match result {
            Ok(()) => Ok(take),
            Err(Cut) => {
                self.drop_in_flight();
                Err(Cut)
            }
        }
    }

    /// Reads into `buf` what has arrived at side `to`: `Ok(0)` if nothing has, a random
    /// part of it with [`FaultConfig::split`].
    pub fn pull(&mut self, to: Side, buf: &mut [u8]) -> Result<usize, Cut> {
        if self.injector.is_cut() {
            return Err(Cut);
        }
        let i = to.inbound();
        let n = self.injector.piece(buf.len().min(self.ready[i]));
        let mut got = 0;
        for slot in &mut buf[..n] {
            match self.lanes[i].pop_front() {
                Some(b) => *slot = b,
                None => break,
            }
            got += 1;
        }
        self.ready[i] -= got;
        Ok(got)
    }

    /// Bytes waiting to be pulled by side `to`: those that have arrived.
    pub fn pending(&self, to: Side) -> usize {
        self.ready[to.inbound()]
    }

    /// Cuts the connection now: what is in flight is lost and both sides get [`Cut`]
    /// until [`reconnect`](Self::reconnect).
    pub fn cut(&mut self) {
        self.injector.cut();
        self.drop_in_flight();
    }

    /// Whether the connection is cut.
    pub fn is_cut(&self) -> bool {
        self.injector.is_cut()
    }

    /// A new connection between the two sides, empty in both directions.
    pub fn reconnect(&mut self) {
        self.drop_in_flight();
        self.injector.reconnect();
    }

    /// What was injected so far.
    pub fn stats(&self) -> FaultStats {
        self.injector.stats()
    }

    /// The fault engine.
    pub fn injector(&self) -> &FaultInjector {
        &self.injector
    }

    fn drop_in_flight(&mut self) {
        for lane in &mut self.lanes {
            lane.clear();
        }
        self.ready = [0; 2];
        self.carried = [0; 2];
    }
}

#[cfg(feature = "std")]
pub use self::stream::FaultStream;

#[cfg(feature = "std")]
mod stream {
    use super::{Cut, FaultConfig, FaultInjector, FaultStats};
    use std::io::{self, Read, Write};
    use std::vec::Vec;

    /// A fault injector over any byte stream (`std` feature): a `TcpStream`, a serial
    /// port, a pipe. Faults apply in both directions, to what is written and to what is
    /// read.
    ///
    /// After a cut every read and write fails with [`io::ErrorKind::ConnectionReset`]
    /// (its inner error is [`Cut`]). `Read + Write` has no shutdown, so the wrapper cannot
    /// tell the peer: drop the inner stream (a `TcpStream` closes when dropped) or put a
    /// new one in with [`reconnect`](Self::reconnect).
    ///
    /// ```
    /// use std::io::{Cursor, Read, Write};
    /// use tether_firmware_sim::fault::{FaultConfig, FaultStream};
    ///
    /// let mut s = FaultStream::new(Cursor::new(Vec::new()), FaultConfig::clean(3));
    /// s.write_all(b"hello")?;
    /// assert_eq!(s.get_ref().get_ref(), b"hello");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[derive(Debug)]
    pub struct FaultStream<T> {
        inner: T,
        injector: FaultInjector,
        /// Faulty bytes read but not yet returned (duplicates can outgrow a read).
        pending: Vec<u8>,
        scratch: Vec<u8>,
    }

    fn cut_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, Cut)
    }

    impl<T> FaultStream<T> {
        /// Wraps `inner`.
        pub fn new(inner: T, config: FaultConfig) -> Self {
            FaultStream {
                inner,
                injector: FaultInjector::new(config),
                pending: Vec::new(),
                scratch: Vec::new(),
            }
        }

        /// The inner stream.
        pub fn get_ref(&self) -> &T {
            &self.inner
        }

        /// The inner stream, mutably (to set a timeout, say). Bytes written to it directly
        /// bypass the faults.
        pub fn get_mut(&mut self) -> &mut T {
            &mut self.inner
        }

        /// The inner stream.
        pub fn into_inner(self) -> T {
            self.inner
        }

        /// Whether the connection was cut.
        pub fn is_cut(&self) -> bool {
            self.injector.is_cut()
        }

        /// Cuts the connection now.
        pub fn cut(&mut self) {
            self.injector.cut();
            self.pending.clear();
        }

        /// Puts a new connection in place (the faults go on with the same random
        /// sequence); returns the old one.
        pub fn reconnect(&mut self, inner: T) -> T {
            self.pending.clear();
            self.injector.reconnect();
            core::mem::replace(&mut self.inner, inner)
        }

        /// What was injected so far.
        pub fn stats(&self) -> FaultStats {
            self.injector.stats()
        }
    }

    impl<T: Read> Read for FaultStream<T> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if buf.is_empty() {
                return Ok(0);
            }
            loop {
                if self.injector.is_cut() {
                    return Err(cut_error());
                }
                if !self.pending.is_empty() {
                    let n = self.injector.piece(buf.len().min(self.pending.len()));
                    buf[..n].copy_from_slice(&self.pending[..n]);
                    self.pending.drain(..n);
                    return Ok(n);
                }
                self.scratch.resize(buf.len(), 0);
                let n = self.inner.read(&mut self.scratch)?;
                if n == 0 {
                    return Ok(0); // the real end of the stream
                }
                let pending = &mut self.pending;
                if self.injector.write(&self.scratch[..n], |b| pending.push(b)) == Err(Cut) {
                    self.pending.clear();
                }
                // All lost: read again, as a reader waiting for bytes would.
            }
        }
    }

    impl<T: Write> Write for FaultStream<T> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.is_empty() {
                return Ok(0);
            }
            if self.injector.is_cut() {
                return Err(cut_error());
            }
            let n = self.injector.piece(buf.len());
            self.scratch.clear();
            let scratch = &mut self.scratch;
            let result = self.injector.write(&buf[..n], |b| scratch.push(b));
            // Bytes before a cut point still went out.
            self.inner.write_all(&self.scratch)?;
            result.map_err(|Cut| cut_error())?;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            if self.injector.is_cut() {
                return Err(cut_error());
            }
            self.inner.flush()
        }
    }
}
