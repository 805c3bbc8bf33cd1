//! The same firmware without Tether, for the footprint report: the same board support (clock,
//! sleep, exit, panic handler), UART driver, interrupt-driven receive queue
//! (`tether_core::io::isr`, the one part of tether-core it links) and simulated sensor, the
//! same main loop shape —
//! a reading every period written raw to the UART, a received byte acting as a command —
//! but no protocol: no framing, no CRC, no acknowledgements, no session. The firmware's size
//! minus this one's is what Tether costs (the core and the device's record and command
//! handling).
#![no_std]
#![no_main]

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
use embedded_io::{Write, WriteReady};
use tether_core::io::isr::{IsrCell, RxProducer, RxQueue};
use tether_firmware_sim::device::Sensor;

const READINGS: u32 = 3_000;
const PERIOD_MS: u32 = 1;
const SENSOR_SEED: u64 = 0x7E7E_0001;
const RX_QUEUE: usize = 1024;

static UART_RX: IsrCell<RxProducer<'static>> = IsrCell::new();

/// The same interrupt-driven receive as the firmware's (a queue the interrupt fills).
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
    let mut uart = uart::Uart::uart0();
    let mut clock = board::Clock::default();
    let Some(queue) = cortex_m::singleton!(: RxQueue<RX_QUEUE> = RxQueue::new()) else {
        board::exit(false)
    };
    let (producer, mut rx_queue) = queue.split();
    UART_RX.put(producer);
    board::enable_uart_rx_interrupt();
    let mut sensor = Sensor::new(SENSOR_SEED ^ u64::from(board::boot_jitter()));
    info!("baseline firmware");

    let mut readings = 0u32;
    let mut output = false;
    let mut next = 0u64;
    let mut rx = [0u8; 16];
    loop {
        let now = clock.now().millis();
        loop {
            let n = rx_queue.pop_into(&mut rx);
            if n == 0 {
                break;
            }
            for &b in &rx[..n] {
                output = b & 1 == 1;
            }
        }
        if rx_queue.resume() {
            board::enable_uart_rx_interrupt();
        }
        if readings < READINGS && now >= next {
            let s = sensor.sample();
            let mut raw = [0u8; 11];
            raw[..4].copy_from_slice(&readings.to_le_bytes());
            raw[4..8].copy_from_slice(&s.temperature.to_le_bytes());
            raw[8..10].copy_from_slice(&s.pressure.to_le_bytes());
            raw[10] = u8::from(output);
            let mut rest = &raw[..];
            while !rest.is_empty() {
                if uart.write_ready().unwrap_or(false) {
                    let k = uart.write(rest).unwrap_or(0);
                    rest = &rest[k.min(rest.len())..];
                }
            }
            readings += 1;
            next = now + u64::from(PERIOD_MS);
        }
        if readings == READINGS {
            let (stack_peak, stack_size) = stack::peak();
            info!(
                "done at {} ms: readings {}, line errors {}, overruns {}, stack peak {} of {} bytes",
                now,
                readings,
                rx_queue.line_errors(),
                rx_queue.overruns(),
                stack_peak,
                stack_size
            );
            board::exit(true);
        }
        board::sleep_unless(|| rx_queue.ready());
    }
}
