//! A driver for UART0 of the LM3S6965 (an ARM PL011), implementing the `embedded-io` traits
//! `tether-core`'s drivers use: [`Read`] and [`Write`] (blocking: they wait for the first
//! byte), [`ReadReady`] and [`WriteReady`] (the non-blocking path: `nb::Driver` reads and
//! writes only when these say so, and then never waits); and [`receive`], the receive
//! interrupt's work, which moves what the FIFO holds into the receive queue.
//!
//! The FIFOs are on (16 bytes each way). A byte received with a line error (framing, parity,
//! break, overrun) is counted and passed on all the same: the frame it belongs to fails its
//! CRC and the link has it sent again, so for the link a line error is a corrupted byte, not
//! a broken transport. Hence the error type is [`Infallible`].
//!
//! On a real LM3S6965 the UART's clock gate (RCGC1) and the pins' GPIO alternate function
//! must be enabled and the baud rate set first; QEMU needs none of that.

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

use embedded_io::{ErrorType, Read, ReadReady, Write, WriteReady};
use tether_core::io::isr::RxProducer;

const BASE: usize = 0x4000_C000;
const DR: usize = BASE;
const FR: usize = BASE + 0x18;
const LCRH: usize = BASE + 0x2C;
const CTL: usize = BASE + 0x30;
const IMSC: usize = BASE + 0x38;

const FR_BUSY: u32 = 1 << 3;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
/// Framing, parity, break and overrun error flags, above the data byte in DR.
const DR_ERRORS: u32 = 0xF00;
/// 8 data bits, FIFOs enabled.
const LCRH_8N1_FIFO: u32 = (0b11 << 5) | (1 << 4);
/// UART, transmitter and receiver enabled.
const CTL_ENABLE: u32 = 1 | (1 << 8) | (1 << 9);
/// Receive and receive-timeout interrupts.
const IMSC_RX: u32 = (1 << 4) | (1 << 6);

/// The interrupt line of UART0 in the NVIC.
pub const IRQ: u16 = 5;

fn reg(addr: usize) -> u32 {
    // SAFETY: `addr` is one of the UART0 registers above: a fixed, aligned MMIO address.
    unsafe { read_volatile(addr as *const u32) }
}

fn set(addr: usize, value: u32) {
    // SAFETY: as in `reg`.
    unsafe { write_volatile(addr as *mut u32, value) }
}

/// UART0.
#[derive(Debug)]
pub struct Uart {
    line_errors: u32,
}

impl Uart {
    /// Configures UART0: 8 data bits, FIFOs on, the receive interrupts enabled in the UART
    /// (the NVIC line stays masked until `board::enable_uart_rx_interrupt`).
    /// Call it once.
    pub fn uart0() -> Self {
        set(CTL, 0);
        set(LCRH, LCRH_8N1_FIFO);
        set(IMSC, IMSC_RX);
        set(CTL, CTL_ENABLE);
        Uart { line_errors: 0 }
    }

    /// Whether a received byte is waiting.
    pub fn rx_ready(&self) -> bool {
        reg(FR) & FR_RXFE == 0
    }

    /// Bytes received with a line error so far (wraps).
    pub fn line_errors(&self) -> u32 {
        self.line_errors
    }
}

/// The receive interrupt's work: every byte the FIFO holds goes into the queue; a byte with
/// a line error is counted and queued all the same. `false` if the queue filled up with
/// bytes still waiting: they stay in the FIFO, the queue is held (`RxProducer::hold`), and
/// the caller masks the interrupt until the main loop has made room.
pub fn receive(rx: &mut RxProducer<'_>) -> bool {
    while reg(FR) & FR_RXFE == 0 {
        if !rx.ready() {
            rx.hold();
            return false;
        }
        let word = reg(DR);
        if word & DR_ERRORS != 0 {
            rx.line_error();
        }
        rx.push(word as u8);
    }
    true
}

impl ErrorType for Uart {
    type Error = Infallible;
}

impl Read for Uart {
    /// Waits for the first byte (busy: call it after `read_ready`), then takes what the
    /// receive FIFO holds, up to `buf.len()`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.rx_ready() {
            core::hint::spin_loop();
        }
        let mut n = 0;
        while n < buf.len() && self.rx_ready() {
            let word = reg(DR);
            if word & DR_ERRORS != 0 {
                self.line_errors = self.line_errors.wrapping_add(1);
            }
            buf[n] = word as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl ReadReady for Uart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.rx_ready())
    }
}

impl Write for Uart {
    /// Waits until the transmit FIFO has room for one byte (busy: call it after
    /// `write_ready`), then fills it with as much of `buf` as fits.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while reg(FR) & FR_TXFF != 0 {
            core::hint::spin_loop();
        }
        let mut n = 0;
        while n < buf.len() && reg(FR) & FR_TXFF == 0 {
            set(DR, u32::from(buf[n]));
            n += 1;
        }
        Ok(n)
    }

    /// Waits until the last byte has left the shift register.
    fn flush(&mut self) -> Result<(), Infallible> {
        while reg(FR) & FR_BUSY != 0 {
            core::hint::spin_loop();
        }
        Ok(())
    }
}

impl WriteReady for Uart {
    fn write_ready(&mut self) -> Result<bool, Infallible> {
        Ok(reg(FR) & FR_TXFF == 0)
    }
}
