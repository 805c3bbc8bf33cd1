//! `io::hal_nb`: the driver over `embedded_hal_nb::serial::{Read, Write}`, one byte per call,
//! `WouldBlock` when the port is busy. Two links stream both ways through in-memory ports
//! that block often and lose or damage bytes (reported as line errors); a partly written
//! frame survives across polls; `flush` is `WouldBlock` until everything is out; and
//! `io::nb::Driver::flush` speaks `nb::Result` too.
#![cfg(feature = "embedded-hal-nb")]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use embedded_hal_nb::serial::{self, ErrorKind, ErrorType, Read, Write};
use tether_core::frame::{Decoder, Kind};
use tether_core::io::hal_nb::{Driver, Error, HalfError, Halves, Progress, MAX_READ};
use tether_core::io::{self, nb as io_nb};
use tether_core::link::{Config, Instant, Link, LinkStorage, Phase, Role};

type L = Link<LinkStorage<4, 4, 128>>;
const TX: usize = io::tx_buffer_len(128, 2);

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn client() -> L {
    Link::new(Config::new(Role::Client, 0xC1), LinkStorage::new()).unwrap()
}

fn server() -> L {
    Link::new(Config::new(Role::Server, 0x51), LinkStorage::new()).unwrap()
}

fn hello_pending() -> L {
    let mut c = client();
    c.connect(at(0));
    c
}

fn payload(side: usize, i: usize) -> Vec<u8> {
    let mut p = format!("{side}:{i}:").into_bytes();
    p.extend((0..(i * 37) % 90).map(|j| (i * 7 + j * 13) as u8));
    p
}

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// A HAL's error type: a kind, as HALs map theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HalError(ErrorKind);

impl serial::Error for HalError {
    fn kind(&self) -> ErrorKind {
        self.0
    }
}

/// One end of an in-memory serial line: a bounded FIFO each way (a UART's hardware FIFO),
/// `WouldBlock` `busy`‰ of the time; and `lossy`‰ of the received bytes lost in an overrun
/// or damaged by a framing error, as a real line does.
struct Port {
    rx: Rc<RefCell<VecDeque<u8>>>,
    tx: Rc<RefCell<VecDeque<u8>>>,
    fifo: usize,
    busy: u64,
    lossy: u64,
    rng: Rng,
    written: u64,
    line_errors: u32,
}

fn line(fifo: usize, busy: u64, lossy: u64, seed: u64) -> [Port; 2] {
    let (a, b) = (Rc::default(), Rc::default());
    let port = |rx, tx, seed| Port {
        rx,
        tx,
        fifo,
        busy,
        lossy,
        rng: Rng(seed),
        written: 0,
        line_errors: 0,
    };
    [
        port(Rc::clone(&a), Rc::clone(&b), seed | 1),
        port(b, a, (seed << 1) | 1),
    ]
}

impl ErrorType for Port {
    type Error = HalError;
}

impl Read<u8> for Port {
    fn read(&mut self) -> nb::Result<u8, HalError> {
        if self.rng.chance(self.busy) {
            return Err(nb::Error::WouldBlock);
        }
        let byte = self
            .rx
            .borrow_mut()
            .pop_front()
            .ok_or(nb::Error::WouldBlock)?;
        if self.rng.chance(self.lossy) {
            self.line_errors += 1;
            let kind = if byte % 2 == 0 {
                ErrorKind::Overrun
            } else {
                ErrorKind::FrameFormat
            };
            return Err(nb::Error::Other(HalError(kind)));
        }
        Ok(byte)
    }
}

impl Write<u8> for Port {
    fn write(&mut self, byte: u8) -> nb::Result<(), HalError> {
        let mut tx = self.tx.borrow_mut();
        if tx.len() >= self.fifo || self.rng.chance(self.busy) {
            return Err(nb::Error::WouldBlock);
        }
        tx.push_back(byte);
        self.written += 1;
        Ok(())
    }

    fn flush(&mut self) -> nb::Result<(), HalError> {
        Ok(())
    }
}

/// Streams `goal` records each way through the driver; returns the links and the steps.
fn stream(ports: &mut [Port; 2], goal: [usize; 2]) -> ([L; 2], u64) {
    let mut links = [client(), server()];
    links.iter_mut().for_each(|l| l.connect(at(0)));
    let mut drivers = [Driver::new([0u8; TX]), Driver::new([0u8; TX])];
    let (mut sent, mut got) = ([0usize; 2], [0usize; 2]);
    for ms in 0..200_000 {
        let now = at(ms);
        for side in 0..2 {
            let link = &mut links[side];
            while sent[side] < goal[side] && link.can_send() {
                link.send(&payload(side, sent[side])).unwrap();
                sent[side] += 1;
            }
            let p = drivers[side].poll(link, &mut ports[side], now).unwrap();
            assert_eq!(p.pending, drivers[side].pending());
            let peer = 1 - side;
            while let Some(record) = link.recv() {
                assert_eq!(record.payload, payload(peer, got[side]), "side {side}");
                got[side] += 1;
                link.release(1);
            }
        }
        if got == [goal[1], goal[0]] && links.iter().all(|l| l.unacked() == 0) {
            return (links, ms);
        }
    }
    panic!("not delivered: {got:?}");
}

#[test]
fn hal_nb_driver_streams_both_ways_through_busy_ports() {
    for seed in 1..=4 {
        let mut ports = line(16, 300, 0, seed);
        let (links, _) = stream(&mut ports, [150, 15]);
        for (port, link) in ports.iter().zip(&links) {
            assert_eq!(port.written, link.stats().bytes_out, "every byte once");
            assert_eq!(link.stats().decoder.dropped(), 0);
            assert_eq!(link.phase(), Phase::Established);
        }
    }
}

#[test]
fn hal_nb_line_errors_are_counted_and_the_link_recovers() {
    let mut ports = line(16, 200, 4, 7);
    let (links, _) = stream(&mut ports, [150, 15]);
    let errors: u32 = ports.iter().map(|p| p.line_errors).sum();
    assert!(errors > 0, "the line lost bytes");
    let resent: u32 = links.iter().map(|l| l.stats().retransmissions).sum();
    assert!(resent > 0, "the lost frames were sent again");
}

#[test]
fn hal_nb_progress_counts_line_errors_and_keeps_what_was_read_before_an_error() {
    /// Gives its bytes, then each error in turn, then blocks.
    struct Script(VecDeque<nb::Result<u8, HalError>>);
    impl ErrorType for Script {
        type Error = HalError;
    }
    impl Read<u8> for Script {
        fn read(&mut self) -> nb::Result<u8, HalError> {
            self.0.pop_front().unwrap_or(Err(nb::Error::WouldBlock))
        }
    }
    impl Write<u8> for Script {
        fn write(&mut self, _: u8) -> nb::Result<(), HalError> {
            Err(nb::Error::WouldBlock)
        }
        fn flush(&mut self) -> nb::Result<(), HalError> {
            Ok(())
        }
    }

    // A HELLO from a client, as the server's port receives it.
    let mut c = hello_pending();
    let mut wire = [0u8; TX];
    let n = c.poll_transmit(at(0), &mut wire).unwrap();
    let mut script: VecDeque<_> = wire[..n].iter().map(|&b| Ok(b)).collect();
    script.insert(3, Err(nb::Error::Other(HalError(ErrorKind::Noise))));
    script.push_back(Err(nb::Error::Other(HalError(ErrorKind::Parity))));
    script.push_back(Err(nb::Error::Other(HalError(ErrorKind::Other))));
    script.push_back(Ok(0x42)); // never read: the error ends the call
    let mut port = Script(script);

    let mut s = server();
    s.connect(at(0));
    let mut driver = Driver::new([0u8; TX]);
    let err = driver.poll(&mut s, &mut port, at(0)).unwrap_err();
    assert_eq!(err, Error::Read(HalError(ErrorKind::Other)));
    assert_eq!(err.to_string(), "serial read failed: port error");
    // The HELLO read before the error reached the link (the noise was a lost byte, not a
    // damaged one: the frame still decoded).
    assert_eq!(s.stats().decoder.frames, 1);
    assert_eq!(port.0.len(), 1, "nothing read after the error");

    let p = driver.poll(&mut s, &mut port, at(1)).unwrap();
    assert_eq!((p.read, p.line_errors), (1, 0));
}

#[test]
fn hal_nb_reads_at_most_max_read_bytes_per_poll() {
    struct Flood(usize);
    impl ErrorType for Flood {
        type Error = HalError;
    }
    impl Read<u8> for Flood {
        fn read(&mut self) -> nb::Result<u8, HalError> {
            self.0 += 1;
            Ok(0)
        }
    }
    impl Write<u8> for Flood {
        fn write(&mut self, _: u8) -> nb::Result<(), HalError> {
            Ok(())
        }
        fn flush(&mut self) -> nb::Result<(), HalError> {
            Ok(())
        }
    }
    let mut link = hello_pending();
    let mut driver = Driver::new([0u8; TX]);
    let mut port = Flood(0);
    let p = driver.poll(&mut link, &mut port, at(0)).unwrap();
    assert_eq!((p.read, port.0), (MAX_READ, MAX_READ));
    assert!(p.written > 0, "a flooding peer does not stop the writes");
}

/// Takes `take` bytes, then blocks until `open` again; flush blocks `flush_busy` times.
struct Slow {
    open: bool,
    take: usize,
    since_open: usize,
    wire: Vec<u8>,
    flush_busy: u32,
    fail: Option<HalError>,
}

impl Slow {
    fn new(take: usize) -> Slow {
        Slow {
            open: false,
            take,
            since_open: 0,
            wire: Vec::new(),
            flush_busy: 0,
            fail: None,
        }
    }
}

impl ErrorType for Slow {
    type Error = HalError;
}

impl Read<u8> for Slow {
    fn read(&mut self) -> nb::Result<u8, HalError> {
        Err(nb::Error::WouldBlock)
    }
}

impl Write<u8> for Slow {
    fn write(&mut self, byte: u8) -> nb::Result<(), HalError> {
        if let Some(e) = self.fail {
            return Err(nb::Error::Other(e));
        }
        if !self.open || self.since_open == self.take {
            self.open = false;
            self.since_open = 0;
            return Err(nb::Error::WouldBlock);
        }
        self.since_open += 1;
        self.wire.push(byte);
        Ok(())
    }

    fn flush(&mut self) -> nb::Result<(), HalError> {
        if self.flush_busy > 0 {
            self.flush_busy -= 1;
            return Err(nb::Error::WouldBlock);
        }
        Ok(())
    }
}

#[test]
fn hal_nb_partial_frame_survives_across_polls() {
    let mut link = hello_pending();
    let mut driver = Driver::new([0u8; TX]);
    let mut port = Slow::new(3);
    let p = driver.poll(&mut link, &mut port, at(0)).unwrap();
    assert_eq!(p.written, 0);
    assert!(p.pending > 0, "the HELLO waits in the driver");
    let mut polls = 0;
    while driver.pending() > 0 {
        port.open = true;
        let p: Progress = driver.poll(&mut link, &mut port, at(0)).unwrap();
        assert!(p.written <= 3);
        polls += 1;
        assert!(polls < 100);
    }
    assert!(polls > 3, "the HELLO took several polls");
    assert_eq!(port.wire.len() as u64, link.stats().bytes_out);
    let mut decoder = Decoder::new([0u8; 128]);
    let mut input = &port.wire[..];
    let frame = decoder.decode(&mut input).unwrap().unwrap();
    assert_eq!(frame.header.kind, Kind::Hello);
    assert!(input.is_empty(), "exactly one frame, intact");
}

#[test]
fn hal_nb_flush_would_block_until_everything_is_out() {
    let mut link = hello_pending();
    let mut driver = Driver::new([0u8; TX]);
    let mut port = Slow::new(4);
    port.flush_busy = 2;
    let mut would_block = 0;
    let result = loop {
        port.open = true;
        match driver.flush(&mut link, &mut port, at(0)) {
            Err(nb::Error::WouldBlock) => would_block += 1,
            other => break other,
        }
        assert!(would_block < 100);
    };
    assert_eq!(result, Ok(()));
    assert!(
        would_block > 2,
        "blocked while the frame and the port's flush were not done"
    );
    assert_eq!(port.wire.len() as u64, link.stats().bytes_out);
    assert_eq!(driver.pending(), 0);
    // nb::block! is the blocking form (the port is open now).
    port.take = usize::MAX;
    port.open = true;
    assert_eq!(
        nb::block!(driver.flush(&mut link, &mut port, at(0))),
        Ok(())
    );
}

#[test]
fn hal_nb_write_errors_and_a_small_buffer_are_errors() {
    let mut link = hello_pending();
    let mut driver = Driver::new([0u8; TX]);
    let mut port = Slow::new(usize::MAX);
    port.open = true;
    port.fail = Some(HalError(ErrorKind::Other));
    let e = driver.poll(&mut link, &mut port, at(0)).unwrap_err();
    assert_eq!(e, Error::Write(HalError(ErrorKind::Other)));
    assert!(driver.pending() > 0, "the frame is kept");
    assert_eq!(
        driver.flush(&mut link, &mut port, at(0)),
        Err(nb::Error::Other(Error::Write(HalError(ErrorKind::Other))))
    );

    let mut small = Driver::new([0u8; 10]);
    let e = small.poll(&mut link, &mut port, at(0)).unwrap_err();
    assert!(matches!(e, Error::BufferTooSmall { have: 10, .. }));
    assert!(e
        .to_string()
        .starts_with("transmit buffer too small: 10 bytes"));
}

#[test]
fn hal_nb_halves_join_a_split_uart_with_different_error_types() {
    /// A receive half that never fails (`Infallible`), as a queue filled by an interrupt.
    struct Rx(VecDeque<u8>);
    impl ErrorType for Rx {
        type Error = core::convert::Infallible;
    }
    impl Read<u8> for Rx {
        fn read(&mut self) -> nb::Result<u8, Self::Error> {
            self.0.pop_front().ok_or(nb::Error::WouldBlock)
        }
    }
    let mut server_link = server();
    server_link.connect(at(0));
    let mut c = hello_pending();
    let mut wire = [0u8; TX];
    let n = c.poll_transmit(at(0), &mut wire).unwrap();

    let mut tx = Slow::new(usize::MAX);
    tx.open = true;
    let mut port = Halves {
        rx: Rx(wire[..n].iter().copied().collect()),
        tx,
    };
    let mut driver = Driver::new([0u8; TX]);
    let p = driver.poll(&mut server_link, &mut port, at(0)).unwrap();
    assert_eq!(p.read, n);
    assert!(p.written > 0, "the server answered the HELLO");
    assert_eq!(port.tx.wire.len() as u64, server_link.stats().bytes_out);

    // The transmit half fails: the error says which half, with its kind.
    let mut port = Halves {
        rx: Rx(wire[..n].iter().copied().collect()),
        tx: Slow::new(usize::MAX),
    };
    port.tx.open = true;
    port.tx.fail = Some(HalError(ErrorKind::Parity));
    let mut s2 = server();
    s2.connect(at(0));
    let e = Driver::new([0u8; TX])
        .poll(&mut s2, &mut port, at(0))
        .unwrap_err();
    assert_eq!(e, Error::Write(HalfError::Tx(HalError(ErrorKind::Parity))));
    assert_eq!(e.to_string(), "serial write failed: parity error");
    assert_eq!(s2.stats().decoder.frames, 1, "the HELLO was read first");
}

#[test]
fn nb_driver_flush_speaks_nb_result() {
    use embedded_io::{ErrorType as IoErrorType, Write as IoWrite, WriteReady};
    /// Ready every other call, taking 5 bytes at a time.
    struct Fifo {
        ready: bool,
        wire: Vec<u8>,
    }
    impl IoErrorType for Fifo {
        type Error = embedded_io::ErrorKind;
    }
    impl IoWrite for Fifo {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            let n = buf.len().min(5);
            self.wire.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            unreachable!("the nb driver never calls a flush that may block")
        }
    }
    impl WriteReady for Fifo {
        fn write_ready(&mut self) -> Result<bool, Self::Error> {
            self.ready = !self.ready;
            Ok(self.ready)
        }
    }
    let mut link = hello_pending();
    let mut driver = io_nb::Driver::new([0u8; TX]);
    let mut fifo = Fifo {
        ready: true,
        wire: Vec::new(),
    };
    assert_eq!(
        driver.flush(&mut link, &mut fifo, at(0)),
        Err(nb::Error::WouldBlock),
        "not ready: nothing written"
    );
    assert_eq!(
        nb::block!(driver.flush(&mut link, &mut fifo, at(0))),
        Ok(())
    );
    assert_eq!(fifo.wire.len() as u64, link.stats().bytes_out);
    assert!(fifo.wire.len() > 5);
}
