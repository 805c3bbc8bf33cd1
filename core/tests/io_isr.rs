//! `io::isr`: interrupt-driven receive. A thread stands in for the UART's receive interrupt:
//! it pushes every byte of the peer's stream into the `heapless::spsc` queue, at its own
//! pace, while the main loop (this thread) drains it into the link through `io::nb::Driver`
//! and `Duplex`. Every record arrives once, no frame is damaged, no byte is dropped; a queue
//! too small for the burst counts its overruns; line errors are counted; the cell that
//! hands the producer to the interrupt is empty until main fills it.
#![cfg(feature = "isr")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant as Clock};

use embedded_io::{ErrorKind, ErrorType, Read, ReadReady, Write, WriteReady};
use tether_core::io::isr::{Duplex, IsrCell, RxProducer, RxQueue};
use tether_core::io::{self, nb};
use tether_core::link::{Config, Instant, Link, LinkStorage, Phase, Role};

type L = Link<LinkStorage<4, 4, 128>>;
const TX: usize = io::tx_buffer_len(128, 2);

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// The UART's transmit side: every byte written goes to the "wire" (a channel to the peer).
struct TxSide(mpsc::Sender<Vec<u8>>);

impl ErrorType for TxSide {
    type Error = ErrorKind;
}

impl Write for TxSide {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| ErrorKind::BrokenPipe)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

impl WriteReady for TxSide {
    fn write_ready(&mut self) -> Result<bool, ErrorKind> {
        Ok(true)
    }
}

/// The device (client) receives through an interrupt-fed queue; the host (server) is a plain
/// link on this thread. The "interrupt" thread pushes the host's bytes one at a time, as a
/// UART interrupt does, yielding now and then so the two contexts interleave.
fn stream_through_the_queue<const N: usize>(records: usize) -> (L, u32, u32) {
    let queue: &'static mut RxQueue<N> = Box::leak(Box::new(RxQueue::new()));
    let (mut producer, consumer) = queue.split();
    let (to_device, wire_in) = mpsc::channel::<Vec<u8>>();
    let (to_host, from_device) = mpsc::channel::<Vec<u8>>();
    let stop = AtomicBool::new(false);

    let mut device = Link::new(Config::new(Role::Client, 0xD1), LinkStorage::new()).unwrap();
    let mut host: L = Link::new(Config::new(Role::Server, 0x57), LinkStorage::new()).unwrap();
    let (mut got, mut sent) = (0usize, 0usize);
    let started = Clock::now();
    std::thread::scope(|s| {
        // The receive interrupt: pushes each byte as it "arrives".
        let stop = &stop;
        s.spawn(move || {
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let Ok(bytes) = wire_in.recv_timeout(Duration::from_millis(5)) else {
                    continue;
                };
                for byte in bytes {
                    // Wait for room (a UART would overrun here; this test wants none).
                    while !producer.ready() {
                        std::thread::yield_now();
                    }
                    producer.push(byte);
                    k = k.wrapping_add(1);
                    if k % 7 == 0 {
                        std::thread::yield_now();
                    }
                }
            }
        });

        let mut port = Duplex {
            rx: consumer,
            tx: TxSide(to_host),
        };
        let mut driver = nb::Driver::new([0u8; TX]);
        let mut host_tx = [0u8; TX];
        device.connect(at(0));
        host.connect(at(0));
        for ms in 0..100_000u64 {
            let now = at(ms);
            while sent < records && device.can_send() {
                device.send(format!("reading {sent}").as_bytes()).unwrap();
                sent += 1;
            }
            // Device: the main loop's pass over the queue and the UART's transmit side.
            driver.poll(&mut device, &mut port, now).unwrap();
            while device.recv().is_some() {
                device.release(1);
            }
            // Host: reads what the device wrote, answers onto the device's wire.
            while let Ok(bytes) = from_device.try_recv() {
                host.handle_input(now, &bytes);
            }
            host.handle_timeout(now);
            while let Some(record) = host.recv() {
                assert_eq!(record.payload, format!("reading {got}").as_bytes());
                got += 1;
                host.release(1);
            }
            while let Some(n) = host.poll_transmit(now, &mut host_tx) {
                to_device.send(host_tx[..n].to_vec()).unwrap();
            }
            if got == records && device.unacked() == 0 {
                break;
            }
            if ms % 16 == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
            assert!(started.elapsed() < Duration::from_secs(60), "too slow");
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(got, records, "every record arrived once");
        (device, port.rx.overruns(), port.rx.line_errors())
    })
}

#[test]
fn isr_queue_carries_the_stream_with_no_byte_lost() {
    let (device, overruns, line_errors) = stream_through_the_queue::<256>(300);
    assert_eq!(device.phase(), Phase::Established);
    assert_eq!((overruns, line_errors), (0, 0));
    let d = device.stats().decoder;
    assert_eq!(d.dropped(), 0, "no frame damaged: {d:?}");
    assert_eq!(
        device.stats().retransmissions,
        0,
        "nothing had to be resent"
    );
}

#[test]
fn isr_queue_counts_overruns_when_full() {
    let mut queue = RxQueue::<8>::new();
    assert_eq!(queue.capacity(), 7);
    let (mut producer, mut consumer) = queue.split();
    let pushed = (0..20u8).filter(|&b| producer.push(b)).count();
    assert_eq!(pushed, 7);
    assert_eq!((producer.overruns(), consumer.overruns()), (13, 13));
    let mut buf = [0u8; 32];
    assert_eq!(consumer.read_ready(), Ok(true));
    let n = consumer.read(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        &[0, 1, 2, 3, 4, 5, 6],
        "the first bytes, in order"
    );
    assert_eq!(consumer.read_ready(), Ok(false));
    assert!(consumer.is_empty());
    // Room again: the queue takes bytes anew.
    assert!(producer.push(99));
    assert_eq!(consumer.pop_into(&mut buf), 1);
    assert_eq!(buf[0], 99);
}

#[test]
fn isr_line_errors_are_counted() {
    let mut queue = RxQueue::<4>::new();
    let (mut producer, consumer) = queue.split();
    producer.line_error();
    producer.line_error();
    assert_eq!((consumer.line_errors(), consumer.overruns()), (2, 0));
}

#[test]
fn isr_feed_hands_queued_bytes_to_the_link_up_to_max() {
    let mut client: L = Link::new(Config::new(Role::Client, 0xC1), LinkStorage::new()).unwrap();
    client.connect(at(0));
    let mut hello = [0u8; TX];
    let n = client.poll_transmit(at(0), &mut hello).unwrap();

    let mut server: L = Link::new(Config::new(Role::Server, 0x51), LinkStorage::new()).unwrap();
    server.connect(at(0));
    let mut queue = RxQueue::<256>::new();
    let (mut producer, mut consumer) = queue.split();
    for &b in &hello[..n] {
        assert!(producer.push(b));
    }
    assert_eq!(consumer.feed(&mut server, at(0), 3), 3, "at most max");
    assert_eq!(consumer.len(), n - 3);
    assert_eq!(consumer.feed(&mut server, at(0), usize::MAX), n - 3);
    assert_eq!(server.stats().decoder.frames, 1, "the HELLO, whole");
}

#[test]
fn isr_cell_hands_the_producer_over_once() {
    static CELL: IsrCell<RxProducer<'static>> = IsrCell::new();
    let queue: &'static mut RxQueue<16> = Box::leak(Box::new(RxQueue::new()));
    let (producer, mut consumer) = queue.split();
    assert_eq!(
        CELL.with(|p| p.push(1)),
        None,
        "an early interrupt finds nothing"
    );
    CELL.put(producer);
    assert_eq!(CELL.with(|p| p.push(2)), Some(true));
    let mut taken = CELL.take().expect("the producer is there");
    assert!(CELL.with(|p| p.push(3)).is_none(), "taken out");
    taken.push(4);
    let mut buf = [0u8; 4];
    assert_eq!(consumer.pop_into(&mut buf), 2);
    assert_eq!(&buf[..2], &[2, 4]);
}

#[test]
fn isr_hold_ends_once_the_main_loop_made_room() {
    let mut queue = RxQueue::<8>::new();
    let (mut producer, mut consumer) = queue.split();
    assert!(!consumer.resume(), "not held");
    while producer.ready() {
        producer.push(7);
    }
    producer.hold(); // the interrupt masks its line
    assert_eq!((consumer.holds(), consumer.overruns()), (1, 0));
    assert!(!consumer.resume(), "still full: the hold goes on");
    let mut buf = [0u8; 4];
    assert_eq!(consumer.pop_into(&mut buf), 4);
    assert!(consumer.resume(), "half empty: unmask the interrupt");
    assert!(!consumer.resume(), "once");
}
