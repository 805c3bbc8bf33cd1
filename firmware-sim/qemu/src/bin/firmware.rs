//! Tether in real firmware: the simulated device's logic (`tether_firmware_sim::device::Device`,
//! a `tether_core::link::Link` inside) on a Cortex-M3 (lm3s6965evb) or a Cortex-M0 (micro:bit,
//! nRF51), over UART0, driven by `tether_core::io::nb`. The UART's receive interrupt fills a
//! lock-free queue (`tether_core::io::isr`, over `heapless::spsc`) that the main loop drains.
//!
//! It boots, says HELLO over the UART, streams [`READINGS`] typed readings (one every
//! [`PERIOD_MS`]), obeys the host's commands (`rate <ms>`, `output on|off`, `status`),
//! acknowledging each once acted on, and, when every reading is acknowledged, closes the
//! session and exits through semihosting: QEMU ends with status 0. It exits with 1 on a
//! panic, a refused handshake, or if it is not done after [`RUN_LIMIT_MS`].
//!
//! The UART is the only transport, and it never breaks; but the host's end of it may (a
//! serial-to-TCP bridge that reconnects). When the host goes silent for the link's
//! `dead_after_ms`, the device connects again over the same wires (PROTOCOL.md 9.1): a new
//! HELLO, and the session resumes with nothing lost or repeated.
#![no_std]
#![no_main]

// The board: the lm3s6965evb (Cortex-M3) for thumbv7m, the micro:bit (nRF51, Cortex-M0) for
// thumbv6m (build.rs sets `board_microbit`). Both offer the same functions.
#[macro_use]
#[cfg_attr(not(board_microbit), path = "../board.rs")]
#[cfg_attr(board_microbit, path = "../nrf51_board.rs")]
mod board;
#[path = "../stack.rs"]
mod stack;
#[cfg_attr(not(board_microbit), path = "../uart.rs")]
#[cfg_attr(board_microbit, path = "../nrf51_uart.rs")]
#[allow(dead_code)] // its polling reader: the interrupt and the queue receive instead
mod uart;

#[cfg(feature = "defmt")]
use defmt_semihosting as _;

use cortex_m_rt::entry;
use tether_core::io::isr::{Duplex, IsrCell, RxProducer, RxQueue};
use tether_core::io::{nb, tx_buffer_len};
use tether_core::link::{LinkStorage, Phase};
use tether_firmware_sim::device::{Device, DeviceConfig};

/// Window 4 (transmit slots), 4 receive slots, 128-byte raw frames: the footprint target's
/// configuration.
type Storage = LinkStorage<4, 4, 128>;
type Firmware = Device<&'static mut Storage>;
/// The nb driver's transmit buffer: one largest frame.
const TX_BUF: usize = tx_buffer_len(128, 1);

/// Readings streamed before the device closes the session and exits.
pub const READINGS: u32 = 3_000;
/// Milliseconds between readings (the device's minimum: the host may slow it with `rate`).
pub const PERIOD_MS: u32 = 1;
/// Seeds the simulated sensor; the end-to-end test replays it to check every value.
pub const SENSOR_SEED: u64 = 0x7E7E_0001;
/// Silence from the host after which the device connects again (the listener PINGs idle
/// links every second).
pub const DEAD_AFTER_MS: u32 = 2_500;
/// The device gives up (exit 1) if not done by then.
pub const RUN_LIMIT_MS: u64 = 120_000;
/// Driver rounds at most per wake-up, so the loop always reaches its checks and its sleep.
const ROUNDS: usize = 8;
/// The receive queue's array: 1,023 bytes, 11 ms at 921,600 baud. QEMU's UARTs take the
/// guest's transmitted bytes one system call at a time (about 10 us each, as a real line at
/// that speed), so the loop can be away writing a window of frames for several milliseconds;
/// and a host that falls behind delivers its backlog at once. A full queue holds the
/// interrupt off (flow control) rather than drop bytes.
const RX_QUEUE: usize = 1024;

/// The receive interrupt's end of the queue, handed over by `main` (no `unsafe`).
static UART_RX: IsrCell<RxProducer<'static>> = IsrCell::new();

/// The UART's receive interrupt (the board's vector calls it: with a PAC, this is
/// `#[interrupt] fn UART0()`): the bytes the UART holds go into the queue at once, so none is
/// lost while the main loop is busy.
fn uart_rx_interrupt() {
    UART_RX.with(|rx| {
        if !uart::receive(rx) {
            // The queue is full: the rest waits in the UART until the main loop made room.
            board::disable_uart_rx_interrupt();
        }
    });
}

#[entry]
fn main() -> ! {
    stack::paint();
    let Some(mut cp) = cortex_m::Peripherals::take() else {
        board::exit(false)
    };
    board::init(&mut cp);
    let uart = uart::Uart::uart0();
    let mut clock = board::Clock::default();

    // Interrupt-driven receive: the interrupt fills the queue, the main loop's driver reads
    // it (`Duplex`: the queue for reading, the UART for writing).
    let Some(queue) = cortex_m::singleton!(: RxQueue<RX_QUEUE> = RxQueue::new()) else {
        board::exit(false)
    };
    let (producer, consumer) = queue.split();
    UART_RX.put(producer);
    board::enable_uart_rx_interrupt();
    let mut port = Duplex {
        rx: consumer,
        tx: uart,
    };

    let session = board::boot_jitter() | 1; // never 0
    let mut config = DeviceConfig::new(session, SENSOR_SEED);
    config.period_ms = PERIOD_MS;
    config.record_limit = Some(READINGS);
    config.link.dead_after_ms = DEAD_AFTER_MS;

    // The link's storage, the device and the transmit buffer live in statics (built in
    // place by `singleton!`), so they count as static RAM, not stack.
    let Some(storage) = cortex_m::singleton!(: Storage = LinkStorage::new()) else {
        board::exit(false)
    };
    let device = match Device::new(config, storage) {
        Ok(d) => d,
        Err(_) => board::exit(false),
    };
    let Some(device) = cortex_m::singleton!(: Firmware = device) else {
        board::exit(false)
    };
    let Some(tx) = cortex_m::singleton!(: [u8; TX_BUF] = [0; TX_BUF]) else {
        board::exit(false)
    };
    let mut driver = nb::Driver::new(&mut tx[..]);
    info!("tether firmware: session {}", session);

    let mut closing = false;
    loop {
        let now = clock.now();
        if device.needs_transport() {
            // The UART is always there: (re)connect over it at once. What was half-written
            // belongs to the previous connection.
            driver.reset();
            if device.transport_up(now).is_err() {
                board::exit(false);
            }
            info!(
                "connecting (HELLO #{}) at {} ms",
                device.stats().transports,
                now.millis()
            );
        }
        for _ in 0..ROUNDS {
            match device.drive_nb(now, &mut port, &mut driver) {
                Ok(progress) if progress.is_idle() => break,
                Ok(_) => {}
                // Only `WriteZero` is possible with this UART; the device is now without
                // transport and connects again next time round.
                Err(_) => break,
            }
        }

        if port.rx.resume() {
            board::enable_uart_rx_interrupt();
        }

        match device.link().phase() {
            Phase::Closed => {
                let s = device.stats();
                let l = device.link().stats();
                let (stack_peak, stack_size) = stack::peak();
                info!(
                    "done at {} ms: readings {}, replies {}, commands applied {}, rejected {}, connections {}, resumes {}, peer dead {}, retransmissions {}, line errors {}, overruns {}, holds {}, frames dropped {}, bytes in {}, stack peak {} of {} bytes",
                    now.millis(),
                    s.readings,
                    s.replies,
                    s.commands_applied,
                    s.commands_rejected,
                    s.connections,
                    s.resumes,
                    s.peer_dead,
                    l.retransmissions,
                    port.rx.line_errors(),
                    port.rx.overruns(),
                    port.rx.holds(),
                    l.decoder.dropped(),
                    l.decoder.bytes,
                    stack_peak,
                    stack_size
                );
                board::exit(true);
            }
            Phase::Rejected => {
                info!("handshake refused");
                board::exit(false);
            }
            Phase::Established
                if !closing && !device.streaming() && device.link().unacked() == 0 =>
            {
                // Every reading acknowledged: written to the host's CSV.
                closing = true;
                device.close();
                continue;
            }
            _ => {}
        }
        if now.millis() > RUN_LIMIT_MS {
            info!("not done after {} ms", RUN_LIMIT_MS);
            board::exit(false);
        }

        board::sleep_unless(|| {
            port.rx.ready() || device.poll_timeout().is_some_and(|at| at <= clock.now())
        });
    }
}
