//! The same firmware without Tether, for the footprint report: the same board support (clock,
//! sleep, exit, panic handler), UART driver and simulated sensor, the same main loop shape —
//! a reading every period written raw to the UART, a received byte acting as a command —
//! but no protocol: no framing, no CRC, no acknowledgements, no session. The firmware's size
//! minus this one's is what Tether costs (the core and the device's record and command
//! handling).
#![no_std]
#![no_main]

#[macro_use]
#[path = "../board.rs"]
mod board;
#[path = "../uart.rs"]
mod uart;

#[cfg(feature = "defmt")]
use defmt_semihosting as _;

use cortex_m_rt::entry;
use embedded_io::{Read, ReadReady, Write, WriteReady};
use tether_firmware_sim::device::Sensor;

const READINGS: u32 = 3_000;
const PERIOD_MS: u32 = 1;
const SENSOR_SEED: u64 = 0x7E7E_0001;

#[entry]
fn main() -> ! {
    let Some(mut cp) = cortex_m::Peripherals::take() else {
        board::exit(false)
    };
    board::init(&mut cp.SYST, &mut cp.NVIC);
    let mut uart = uart::Uart::uart0();
    let mut clock = board::Clock::default();
    let mut sensor = Sensor::new(SENSOR_SEED ^ u64::from(board::boot_jitter()));
    info!("baseline firmware");

    let mut readings = 0u32;
    let mut output = false;
    let mut next = 0u64;
    let mut rx = [0u8; 16];
    loop {
        let now = clock.now().millis();
        while uart.read_ready().unwrap_or(false) {
            let n = uart.read(&mut rx).unwrap_or(0);
            for &b in &rx[..n] {
                output = b & 1 == 1;
            }
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
            info!(
                "done at {} ms: readings {}, line errors {}",
                now,
                readings,
                uart.line_errors()
            );
            board::exit(true);
        }
        board::sleep_unless(|| uart.rx_ready());
    }
}
