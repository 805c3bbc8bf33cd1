//! `core::io`: the blocking, non-blocking and async drivers, each moving two links' records
//! through in-memory pipes that take a few bytes per call, fill up, time out and say "not
//! ready"; and each meeting a transport that misbehaves (a write of 0 bytes, the end of the
//! stream, errors) without a panic.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use embedded_io::{ErrorKind, ErrorType, Read, ReadReady, Write, WriteReady};
use tether_core::frame::Decoder;
use tether_core::io::{self, blocking, nb};
use tether_core::link::{Config, Instant, Link, LinkStorage, Phase, Role};

type L = Link<LinkStorage<4, 4, 128>>;
const TX: usize = io::tx_buffer_len(128, 2);

/// Records the client streams to the server, and the server back.
const GOAL: [usize; 2] = [200, 20];
/// Steps (virtual milliseconds) any scenario may take.
const STEP_LIMIT: u64 = 200_000;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn client() -> L {
    Link::new(Config::new(Role::Client, 0xC1), LinkStorage::new()).unwrap()
}

fn server() -> L {
    Link::new(Config::new(Role::Server, 0x51), LinkStorage::new()).unwrap()
}

/// The `i`-th record from `side` (0 = client): 1 to 100 bytes, zeros included (COBS).
fn payload(side: usize, i: usize) -> Vec<u8> {
    let mut p = format!("{side}:{i}:").into_bytes();
    p.extend((0..(i * 37) % 90).map(|j| (i * 7 + j * 13) as u8));
    p
}

/// A tiny xorshift, so every "random" stall is reproducible.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn upto(&mut self, max: usize) -> usize {
        1 + (self.next() % max as u64) as usize
    }
}

#[derive(Debug, Default)]
struct Pipe {
    bytes: VecDeque<u8>,
    closed: bool,
}

/// One end of a duplex in-memory byte stream of bounded capacity, taking or giving at most
/// `max_chunk` bytes per call and stalling (timing out, or not ready) `stall`% of the time.
///
/// Blocking reads and writes that would wait report `TimedOut`, as a transport with a
/// timeout does. In `strict` mode (the non-blocking driver's transport) a read or write not
/// preceded by a `*_ready` that said yes is counted as a violation: it could have blocked.
struct End {
    rx: Rc<RefCell<Pipe>>,
    tx: Rc<RefCell<Pipe>>,
    capacity: usize,
    max_chunk: usize,
    stall: u64,
    rng: Rng,
    strict: bool,
    read_armed: bool,
    write_armed: bool,
    violations: u32,
    /// Every byte this end wrote, in order.
    written: Vec<u8>,
}

fn duplex(capacity: usize, max_chunk: usize, stall: u64, seed: u64, strict: bool) -> [End; 2] {
    let (a, b) = (
        Rc::<RefCell<Pipe>>::default(),
        Rc::<RefCell<Pipe>>::default(),
    );
    let end = |rx, tx, seed| End {
        rx,
        tx,
        capacity,
        max_chunk,
        stall,
        rng: Rng(seed),
        strict,
        read_armed: false,
        write_armed: false,
        violations: 0,
        written: Vec::new(),
    };
    [
        end(Rc::clone(&a), Rc::clone(&b), seed | 1),
        end(b, a, (seed << 1) | 1),
    ]
}

impl ErrorType for End {
    type Error = ErrorKind;
}

impl Read for End {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        if self.strict && !std::mem::take(&mut self.read_armed) {
            self.violations += 1;
        }
        if !self.strict && self.rng.chance(self.stall) {
            return Err(ErrorKind::TimedOut);
        }
        let mut rx = self.rx.borrow_mut();
        if rx.bytes.is_empty() {
            return if rx.closed {
                Ok(0)
            } else {
                Err(ErrorKind::TimedOut)
            };
        }
        let n = buf
            .len()
            .min(rx.bytes.len())
            .min(self.rng.upto(self.max_chunk));
        for (slot, byte) in buf.iter_mut().zip(rx.bytes.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for End {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        if self.strict && !std::mem::take(&mut self.write_armed) {
            self.violations += 1;
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.strict && self.rng.chance(self.stall) {
            return Err(ErrorKind::TimedOut);
        }
        let mut tx = self.tx.borrow_mut();
        let space = self.capacity - tx.bytes.len();
        if space == 0 {
            return Err(ErrorKind::TimedOut);
        }
        let n = buf.len().min(space).min(self.rng.upto(self.max_chunk));
        tx.bytes.extend(&buf[..n]);
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

impl ReadReady for End {
    fn read_ready(&mut self) -> Result<bool, ErrorKind> {
        let rx = self.rx.borrow();
        let ready = !self.rng.chance(self.stall) && (!rx.bytes.is_empty() || rx.closed);
        self.read_armed = ready;
        Ok(ready)
    }
}

impl WriteReady for End {
    fn write_ready(&mut self) -> Result<bool, ErrorKind> {
        let full = self.tx.borrow().bytes.len() >= self.capacity;
        let ready = !self.rng.chance(self.stall) && !full;
        self.write_armed = ready;
        Ok(ready)
    }
}

/// What a streaming scenario saw.
#[derive(Debug)]
struct Outcome {
    steps: u64,
    links: [L; 2],
}

/// Streams `GOAL` records each way between a client and a server, `step` moving one side's
/// bytes once per virtual millisecond; checks every record arrives exactly once, in order,
/// through frames that all decoded cleanly, and that nothing arrives after.
fn stream(ends: &mut [End; 2], mut step: impl FnMut(usize, &mut L, &mut End, Instant)) -> Outcome {
    let mut links = [client(), server()];
    links.iter_mut().for_each(|l| l.connect(at(0)));
    let mut sent = [0usize; 2];
    let mut got = [0usize; 2];
    let mut done_at = None;
    for ms in 0..STEP_LIMIT {
        let now = at(ms);
        for side in 0..2 {
            let link = &mut links[side];
            while sent[side] < GOAL[side] && link.can_send() {
                link.send(&payload(side, sent[side])).unwrap();
                sent[side] += 1;
            }
            step(side, link, &mut ends[side], now);
            let peer = 1 - side;
            while let Some(record) = link.recv() {
                assert!(
                    got[side] < GOAL[peer],
                    "side {side}: a record beyond the last"
                );
                assert_eq!(
                    record.payload,
                    payload(peer, got[side]),
                    "side {side}: record {} out of order or corrupt",
                    got[side]
                );
                got[side] += 1;
                link.release(1);
            }
        }
        let delivered = got == [GOAL[1], GOAL[0]] && links.iter().all(|l| l.unacked() == 0);
        match done_at {
            None if delivered => done_at = Some(ms),
            // Keep going a while: nothing more may arrive.
            Some(t) if ms >= t + 500 => break,
            _ => {}
        }
    }
    let steps = done_at.unwrap_or_else(|| panic!("not delivered in {STEP_LIMIT} steps: {got:?}"));
    assert_eq!(got, [GOAL[1], GOAL[0]]);
    for link in &links {
        assert_eq!(link.phase(), Phase::Established);
        let d = link.stats().decoder;
        assert_eq!(d.dropped(), 0, "a frame arrived damaged: {d:?}");
    }
    Outcome { steps, links }
}

// ---- blocking ----------------------------------------------------------------------------

fn blocking_step(
    drivers: &mut [blocking::Driver<[u8; TX]>; 2],
) -> impl FnMut(usize, &mut L, &mut End, Instant) + '_ {
    move |side, link, io, now| {
        let driver = &mut drivers[side];
        link.handle_timeout(now);
        driver.flush(link, io, now).unwrap();
        let mut rx = [0u8; 32];
        let input = driver.read_once(link, io, now, &mut rx).unwrap();
        assert_ne!(input, blocking::Input::Eof);
    }
}

#[test]
fn blocking_driver_streams_both_ways_through_a_choppy_pipe() {
    for seed in 1..=4 {
        let mut ends = duplex(48, 5, 10, seed, false);
        let mut drivers = [
            blocking::Driver::new([0; TX]),
            blocking::Driver::new([0; TX]),
        ];
        let o = stream(&mut ends, blocking_step(&mut drivers));
        assert!(o.steps > 0);
    }
}

#[test]
fn blocking_driver_streams_with_one_byte_reads_and_writes() {
    let mut ends = duplex(16, 1, 30, 99, false);
    let mut drivers = [
        blocking::Driver::new([0; TX]),
        blocking::Driver::new([0; TX]),
    ];
    stream(&mut ends, blocking_step(&mut drivers));
}

#[test]
fn blocking_flush_gathers_frames_into_one_write() {
    // Write calls recorded one by one; everything accepted.
    #[derive(Default)]
    struct Recorder(Vec<Vec<u8>>);
    impl ErrorType for Recorder {
        type Error = ErrorKind;
    }
    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }
    let frames_in = |bytes: &[u8]| bytes.iter().filter(|&&b| b == 0).count();

    for (buffer_frames, expect_writes) in [(4, 1), (1, 4)] {
        let (mut c, mut s) = (client(), server());
        c.connect(at(0));
        s.connect(at(0));
        let mut tx = vec![0u8; io::tx_buffer_len(128, buffer_frames)];
        for _ in 0..10 {
            while let Some(n) = c.poll_transmit(at(0), &mut tx) {
                s.handle_input(at(0), &tx[..n]);
            }
            while let Some(n) = s.poll_transmit(at(0), &mut tx) {
                c.handle_input(at(0), &tx[..n]);
            }
        }
        assert_eq!(c.phase(), Phase::Established);
        for i in 0..4 {
            c.send(&payload(0, i)).unwrap();
        }
        let mut driver = blocking::Driver::new(&mut tx[..]);
        let mut out = Recorder::default();
        let n = driver.flush(&mut c, &mut out, at(0)).unwrap();
        assert_eq!(
            out.0.len(),
            expect_writes,
            "buffer of {buffer_frames} frames"
        );
        assert_eq!(frames_in(&out.0.concat()), 4);
        assert_eq!(n as u64, out.0.iter().map(|w| w.len() as u64).sum::<u64>());
        assert_eq!(driver.pending(), 0);
        // Everything written decodes at the server.
        for w in &out.0 {
            s.handle_input(at(0), w);
        }
        assert_eq!(s.received().count(), 4);
    }
}

/// A transport that says the same thing to every call.
struct Stuck {
    read: Result<usize, ErrorKind>,
    write: Result<usize, ErrorKind>,
    ready: Result<bool, ErrorKind>,
    calls: u32,
}

impl Stuck {
    fn new(read: Result<usize, ErrorKind>, write: Result<usize, ErrorKind>) -> Self {
        Stuck {
            read,
            write,
            ready: Ok(true),
            calls: 0,
        }
    }
}

impl ErrorType for Stuck {
    type Error = ErrorKind;
}

impl Read for Stuck {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        self.calls += 1;
        let n = self.read?;
        buf[..n].fill(0);
        Ok(n)
    }
}

impl Write for Stuck {
    fn write(&mut self, _: &[u8]) -> Result<usize, ErrorKind> {
        self.calls += 1;
        self.write
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

impl ReadReady for Stuck {
    fn read_ready(&mut self) -> Result<bool, ErrorKind> {
        self.ready
    }
}

impl WriteReady for Stuck {
    fn write_ready(&mut self) -> Result<bool, ErrorKind> {
        self.ready
    }
}

/// A client that has its HELLO to send.
fn hello_pending() -> L {
    let mut c = client();
    c.connect(at(0));
    c
}

#[test]
fn blocking_write_of_zero_bytes_is_an_error_and_the_frame_is_kept() {
    let mut link = hello_pending();
    let mut driver = blocking::Driver::new([0; TX]);
    let mut io = Stuck::new(Err(ErrorKind::TimedOut), Ok(0));
    let err = driver.flush(&mut link, &mut io, at(0)).unwrap_err();
    assert_eq!(err, blocking::Error::WriteZero);
    let hello = driver.pending();
    assert!(hello > 0);
    // Called again: the same error, the same bytes, no panic, no loop.
    assert_eq!(
        driver.flush(&mut link, &mut io, at(0)),
        Err(blocking::Error::WriteZero)
    );
    assert_eq!(driver.pending(), hello);
    assert_eq!(io.calls, 2);
    // A new connection: the stale bytes go.
    driver.reset();
    assert_eq!(driver.pending(), 0);
}

#[test]
fn blocking_transport_errors_are_typed_and_timeouts_are_not_errors() {
    let mut link = hello_pending();
    let mut driver = blocking::Driver::new([0; TX]);
    let mut rx = [0u8; 16];

    let mut io = Stuck::new(Err(ErrorKind::ConnectionReset), Err(ErrorKind::BrokenPipe));
    assert_eq!(
        driver.read_once(&mut link, &mut io, at(0), &mut rx),
        Err(blocking::Error::Read(ErrorKind::ConnectionReset))
    );
    assert_eq!(
        driver.flush(&mut link, &mut io, at(0)),
        Err(blocking::Error::Write(ErrorKind::BrokenPipe))
    );

    let mut io = Stuck::new(Err(ErrorKind::TimedOut), Err(ErrorKind::TimedOut));
    assert_eq!(
        driver.read_once(&mut link, &mut io, at(0), &mut rx),
        Ok(blocking::Input::Idle)
    );
    assert_eq!(driver.flush(&mut link, &mut io, at(0)), Ok(0));
    assert!(driver.pending() > 0, "a timed-out write keeps the frame");

    let mut io = Stuck::new(Err(ErrorKind::Interrupted), Ok(3));
    assert_eq!(
        driver.read_once(&mut link, &mut io, at(0), &mut rx),
        Ok(blocking::Input::Idle)
    );
    let pending = driver.pending();
    assert_eq!(driver.flush(&mut link, &mut io, at(0)), Ok(pending));
    assert_eq!(driver.pending(), 0);
}

#[test]
fn blocking_end_of_stream_is_reported() {
    let mut ends = duplex(64, 8, 0, 7, false);
    let mut link = client();
    let mut driver = blocking::Driver::new([0; TX]);
    let mut rx = [0u8; 16];
    ends[1].tx.borrow_mut().bytes.extend([1, 2, 3]);
    ends[1].tx.borrow_mut().closed = true;
    let io = &mut ends[0];
    let mut seen = Vec::new();
    for _ in 0..10 {
        let input = driver.read_once(&mut link, io, at(0), &mut rx).unwrap();
        seen.push(input);
        if input == blocking::Input::Eof {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&blocking::Input::Eof));
    let data: usize = seen
        .iter()
        .map(|i| match i {
            blocking::Input::Data(n) => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(data, 3, "the bytes before the end are still delivered");
    // Eof again, not a panic or an error.
    assert_eq!(
        driver.read_once(&mut link, io, at(0), &mut rx),
        Ok(blocking::Input::Eof)
    );
}

#[test]
fn blocking_buffers_too_small_are_refused() {
    let mut link = hello_pending();
    let mut io = Stuck::new(Ok(1), Ok(1));
    let mut driver = blocking::Driver::new([0u8; 20]);
    assert_eq!(
        driver.flush(&mut link, &mut io, at(0)),
        Err(blocking::Error::BufferTooSmall {
            need: link.transmit_len(),
            have: 20
        })
    );
    assert_eq!(
        driver.read_once(&mut link, &mut io, at(0), &mut []),
        Err(blocking::Error::BufferTooSmall { need: 1, have: 0 })
    );
    assert_eq!(io.calls, 0, "the transport was not touched");
}

#[test]
fn errors_display_and_chain() {
    use std::error::Error as _;
    let e = blocking::Error::Read(ErrorKind::ConnectionReset);
    assert_eq!(e.to_string(), "transport read failed: ConnectionReset");
    assert!(e.source().is_some());
    assert_eq!(embedded_io::Error::kind(&e), ErrorKind::ConnectionReset);
    let e = blocking::Error::<ErrorKind>::WriteZero;
    assert!(e.source().is_none());
    assert_eq!(embedded_io::Error::kind(&e), ErrorKind::WriteZero);
    let e = nb::Error::<ErrorKind>::BufferTooSmall { need: 9, have: 3 };
    assert_eq!(
        e.to_string(),
        "transmit buffer too small: 3 bytes, 9 needed"
    );
    assert_eq!(embedded_io::Error::kind(&e), ErrorKind::InvalidInput);
    let e = nb::Error::WriteReady(ErrorKind::Other);
    assert!(e.source().is_some());
}

#[test]
fn until_timeout_counts_down_to_the_next_deadline() {
    let link = client();
    assert_eq!(
        io::until_timeout(&link, at(0)),
        None,
        "an idle link has no timer"
    );
    let link = hello_pending();
    let first = io::until_timeout(&link, at(0)).unwrap();
    assert!(first > 0 && first <= 250, "{first}");
    assert_eq!(io::until_timeout(&link, at(10)), Some(first - 10));
    assert_eq!(io::until_timeout(&link, at(1_000_000)), Some(0));
}

// ---- non-blocking ------------------------------------------------------------------------

fn nb_step(
    drivers: &mut [nb::Driver<[u8; TX]>; 2],
) -> impl FnMut(usize, &mut L, &mut End, Instant) + '_ {
    move |side, link, io, now| {
        let p = drivers[side].poll(link, io, now).unwrap();
        assert!(!p.eof);
        assert_eq!(p.pending, drivers[side].pending());
    }
}

#[test]
fn nb_driver_streams_both_ways_and_never_calls_an_unready_transport() {
    for seed in 1..=4 {
        let mut ends = duplex(40, 4, 25, seed, true);
        let mut drivers = [nb::Driver::new([0; TX]), nb::Driver::new([0; TX])];
        let o = stream(&mut ends, nb_step(&mut drivers));
        assert_eq!([ends[0].violations, ends[1].violations], [0, 0]);
        // Every byte the links produced reached the wire exactly once.
        for (end, link) in ends.iter().zip(&o.links) {
            assert_eq!(end.written.len() as u64, link.stats().bytes_out);
        }
    }
}

#[test]
fn nb_driver_streams_with_one_byte_writes_and_frequent_stalls() {
    let mut ends = duplex(8, 1, 60, 5, true);
    let mut drivers = [nb::Driver::new([0; TX]), nb::Driver::new([0; TX])];
    stream(&mut ends, nb_step(&mut drivers));
    assert_eq!([ends[0].violations, ends[1].violations], [0, 0]);
}

#[test]
fn nb_partial_frame_survives_across_polls() {
    // A UART that takes 3 bytes, then is busy for a poll, and so on.
    struct Slow {
        ready: bool,
        wire: Vec<u8>,
        unready_calls: u32,
    }
    impl ErrorType for Slow {
        type Error = ErrorKind;
    }
    impl Read for Slow {
        fn read(&mut self, _: &mut [u8]) -> Result<usize, ErrorKind> {
            self.unready_calls += 1;
            Err(ErrorKind::Other)
        }
    }
    impl ReadReady for Slow {
        fn read_ready(&mut self) -> Result<bool, ErrorKind> {
            Ok(false)
        }
    }
    impl WriteReady for Slow {
        fn write_ready(&mut self) -> Result<bool, ErrorKind> {
            Ok(std::mem::replace(&mut self.ready, false))
        }
    }
    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            let n = buf.len().min(3);
            self.wire.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> Result<(), ErrorKind> {
            self.unready_calls += 1; // may block: never called by nb
            Ok(())
        }
    }

    let mut link = hello_pending();
    let mut driver = nb::Driver::new([0; TX]);
    let mut io = Slow {
        ready: false,
        wire: Vec::new(),
        unready_calls: 0,
    };
    // Not ready: nothing is taken from the link.
    let p = driver.poll(&mut link, &mut io, at(0)).unwrap();
    assert!(p.is_idle());
    assert_eq!((p.pending, link.stats().frames_out), (0, 0));

    let mut polls = 0;
    loop {
        io.ready = true;
        let p = driver.poll(&mut link, &mut io, at(0)).unwrap();
        assert_eq!(p.written, 3.min(p.written + p.pending));
        polls += 1;
        if p.pending == 0 {
            break;
        }
        assert!(polls < 100, "never finished");
    }
    assert!(polls > 3, "the HELLO took several polls");
    assert_eq!(io.unready_calls, 0);
    assert_eq!(io.wire.len() as u64, link.stats().bytes_out);
    // The bytes are exactly one intact frame.
    let mut decoder = Decoder::new([0u8; 128]);
    let mut input = &io.wire[..];
    let frame = decoder.decode(&mut input).unwrap().unwrap();
    assert_eq!(frame.header.kind, tether_core::frame::Kind::Hello);
    assert!(input.is_empty());
}

#[test]
fn nb_write_of_zero_bytes_is_an_error() {
    let mut link = hello_pending();
    let mut driver = nb::Driver::new([0; TX]);
    let mut io = Stuck::new(Ok(0), Ok(0));
    io.ready = Ok(false);
    assert!(driver.poll(&mut link, &mut io, at(0)).unwrap().is_idle());
    io.ready = Ok(true);
    io.read = Err(ErrorKind::TimedOut);
    assert_eq!(
        driver.poll(&mut link, &mut io, at(0)),
        Err(nb::Error::WriteZero)
    );
    assert!(driver.pending() > 0);
}

#[test]
fn nb_end_of_stream_and_errors_are_reported() {
    let mut link = client();
    let mut driver = nb::Driver::new([0; TX]);
    let mut io = Stuck::new(Ok(0), Ok(1));
    let p = driver.poll(&mut link, &mut io, at(0)).unwrap();
    assert!(p.eof && !p.is_idle());
    assert_eq!(
        io.calls, 1,
        "one read saw the end; an idle link has nothing to write"
    );

    let mut io = Stuck::new(Err(ErrorKind::ConnectionReset), Ok(1));
    assert_eq!(
        driver.poll(&mut link, &mut io, at(0)),
        Err(nb::Error::Read(ErrorKind::ConnectionReset))
    );
    io.ready = Err(ErrorKind::NotConnected);
    assert_eq!(
        driver.poll(&mut link, &mut io, at(0)),
        Err(nb::Error::ReadReady(ErrorKind::NotConnected))
    );

    let mut small = nb::Driver::new([0u8; 10]);
    assert!(matches!(
        small.poll(&mut link, &mut io, at(0)),
        Err(nb::Error::BufferTooSmall { have: 10, .. })
    ));
}

#[test]
fn nb_poll_runs_the_link_timers() {
    // Nobody answers the HELLO: the driver alone resends it when the timer is due.
    let mut link = hello_pending();
    let mut driver = nb::Driver::new([0; TX]);
    let mut io = Stuck::new(Err(ErrorKind::TimedOut), Ok(1000));
    io.ready = Ok(true);
    driver.poll(&mut link, &mut io, at(0)).unwrap();
    let first = link.stats().frames_out;
    assert_eq!(first, 1);
    let due = link.poll_timeout().unwrap();
    driver.poll(&mut link, &mut io, due).unwrap();
    assert!(link.stats().frames_out > first, "HELLO resent");
}

// ---- async -------------------------------------------------------------------------------

#[cfg(feature = "async")]
mod asynch {
    use super::*;
    use core::future::Future;
    use core::pin::{pin, Pin};
    use core::task::{Context, Poll, Waker};
    use tether_core::io::asynch::{Driver, Error, Input};

    /// Polls `f` to completion with a waker that does nothing: in-memory IO is always ready
    /// by the next poll.
    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..1_000 {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
        panic!("the future never completed");
    }

    /// Polls `f` once; `None` if it was still pending (and is now dropped: cancelled).
    fn poll_once<F: Future>(f: F) -> Option<F::Output> {
        let mut f = pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// Pending once, then ready.
    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    // The async face of the same pipe: sometimes pending first (cancel-safe: nothing moves
    // until the call completes), then as the blocking one.
    impl embedded_io_async::Read for End {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            if self.rng.chance(30) {
                YieldOnce(false).await;
            }
            Read::read(self, buf)
        }
    }

    impl embedded_io_async::Write for End {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            if self.rng.chance(30) {
                YieldOnce(false).await;
            }
            Write::write(self, buf)
        }
        async fn flush(&mut self) -> Result<(), ErrorKind> {
            YieldOnce(false).await;
            Ok(())
        }
    }

    #[test]
    fn async_driver_streams_both_ways_through_a_choppy_pipe() {
        for seed in 1..=3 {
            let mut ends = duplex(48, 5, 10, seed, false);
            let mut drivers = [Driver::new([0u8; TX]), Driver::new([0u8; TX])];
            let o = stream(&mut ends, |side, link, io, now| {
                let driver = &mut drivers[side];
                block_on(async {
                    link.handle_timeout(now);
                    driver.flush(link, io, now).await.unwrap();
                    let mut rx = [0u8; 32];
                    let input = driver.read_once(link, io, now, &mut rx).await.unwrap();
                    assert_ne!(input, Input::Eof);
                });
            });
            for (end, link) in ends.iter().zip(&o.links) {
                assert_eq!(end.written.len() as u64, link.stats().bytes_out);
            }
        }
    }

    #[test]
    fn async_flush_cancelled_midway_loses_and_repeats_nothing() {
        // Every other step the flush is polled once and dropped wherever it stands (as when
        // a select's timer wins); the rest of the frame must go out intact later.
        let mut ends = duplex(48, 5, 10, 11, false);
        let mut drivers = [Driver::new([0u8; TX]), Driver::new([0u8; TX])];
        let mut cancelled = 0;
        let mut n = 0u64;
        let o = stream(&mut ends, |side, link, io, now| {
            let driver = &mut drivers[side];
            link.handle_timeout(now);
            n += 1;
            if n % 2 == 0 {
                if poll_once(driver.flush(link, io, now)).is_none() {
                    cancelled += 1;
                }
            } else {
                block_on(driver.flush(link, io, now)).unwrap();
            }
            let mut rx = [0u8; 32];
            if let Some(r) = poll_once(driver.read_once(link, io, now, &mut rx)) {
                assert_ne!(r.unwrap(), Input::Eof);
            }
        });
        assert!(
            cancelled > 10,
            "the test cancelled only {cancelled} flushes"
        );
        for (end, link) in ends.iter().zip(&o.links) {
            assert_eq!(end.written.len() as u64, link.stats().bytes_out);
        }
    }

    #[test]
    fn async_write_of_zero_bytes_and_end_of_stream() {
        let mut link = hello_pending();
        let mut driver = Driver::new([0u8; TX]);
        let mut io = Stuck::new(Ok(0), Ok(0));
        assert_eq!(
            block_on(driver.flush(&mut link, &mut io, at(0))),
            Err(Error::WriteZero)
        );
        assert!(driver.pending() > 0);
        let mut rx = [0u8; 8];
        assert_eq!(
            block_on(driver.read_once(&mut link, &mut io, at(0), &mut rx)),
            Ok(Input::Eof)
        );
        let mut io = Stuck::new(Err(ErrorKind::ConnectionReset), Err(ErrorKind::TimedOut));
        assert_eq!(
            block_on(driver.read_once(&mut link, &mut io, at(0), &mut rx)),
            Err(Error::Read(ErrorKind::ConnectionReset))
        );
        assert_eq!(block_on(driver.flush(&mut link, &mut io, at(0))), Ok(0));
    }

    impl embedded_io_async::Read for Stuck {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            Read::read(self, buf)
        }
    }

    impl embedded_io_async::Write for Stuck {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            Write::write(self, buf)
        }
        async fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }
}
