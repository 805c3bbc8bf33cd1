//! A driver for the nRF51's UART0, with the interface of `uart.rs` (the PL011's): the
//! transmit side implements `embedded-io`'s [`Write`] and [`WriteReady`], and [`receive`] is
//! the receive interrupt's work: it moves every byte the UART holds into the receive queue.
//!
//! The nRF51's UART has a 6-byte receive FIFO and one transmit register: `RXDRDY` says a
//! byte is waiting in `RXD` (reading it brings the next), `TXDRDY` that the last byte written
//! to `TXD` has gone. A line error raises `ERROR` with its cause in `ERRORSRC`; it is counted.
//!
//! On a real nRF51 the pins (`PSELTXD`, `PSELRXD`) and `BAUDRATE` are set first (921,600
//! baud is `0x0EBE_D000`); QEMU needs neither.

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

use embedded_io::{ErrorType, Read, ReadReady, Write, WriteReady};
use tether_core::io::isr::RxProducer;

const BASE: usize = 0x4000_2000;
const STARTRX: usize = BASE;
const STARTTX: usize = BASE + 0x008;
const RXDRDY: usize = BASE + 0x108;
const TXDRDY: usize = BASE + 0x11C;
const ERROR: usize = BASE + 0x124;
const INTENSET: usize = BASE + 0x304;
const ERRORSRC: usize = BASE + 0x480;
const ENABLE: usize = BASE + 0x500;
const RXD: usize = BASE + 0x518;
const TXD: usize = BASE + 0x51C;
const BAUDRATE: usize = BASE + 0x524;

const ENABLE_UART: u32 = 4;
const BAUD_921600: u32 = 0x0EBE_D000;
/// RXDRDY and ERROR interrupts.
const INTEN_RX: u32 = (1 << 2) | (1 << 9);

/// The interrupt line of UART0 in the NVIC.
pub const IRQ: u16 = 2;

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
    /// No byte written yet: the transmitter is free although `TXDRDY` is not set.
    tx_idle: bool,
    line_errors: u32,
}

impl Uart {
    /// Configures UART0 (921,600 baud, 8N1) and starts both directions, with the receive
    /// and error interrupts enabled in the UART (the NVIC line stays masked until
    /// `board::enable_uart_rx_interrupt`). Call it once.
    pub fn uart0() -> Self {
        set(ENABLE, ENABLE_UART);
        set(BAUDRATE, BAUD_921600);
        set(INTENSET, INTEN_RX);
        set(STARTRX, 1);
        set(STARTTX, 1);
        Uart {
            tx_idle: true,
            line_errors: 0,
        }
    }

    /// Whether a received byte is waiting (for a loop that polls instead).
    pub fn rx_ready(&self) -> bool {
        reg(RXDRDY) != 0
    }

    /// Bytes received with a line error by a polling reader (wraps).
    pub fn line_errors(&self) -> u32 {
        self.line_errors
    }

    fn tx_ready(&self) -> bool {
        self.tx_idle || reg(TXDRDY) != 0
    }
}

/// The receive interrupt's work: every byte waiting goes into the queue; a line error is
/// counted. `false` if the queue filled up with bytes still waiting: they stay in the UART,
/// the queue is held (`RxProducer::hold`), and the caller masks the interrupt until the
/// main loop has made room.
pub fn receive(rx: &mut RxProducer<'_>) -> bool {
    if reg(ERROR) != 0 {
        set(ERROR, 0);
        let source = reg(ERRORSRC);
        set(ERRORSRC, source); // write 1 to clear
        rx.line_error();
    }
    while reg(RXDRDY) != 0 {
        if !rx.ready() {
            rx.hold();
            return false;
        }
        // Clear first: reading RXD raises RXDRDY again if another byte is waiting.
        set(RXDRDY, 0);
        rx.push(reg(RXD) as u8);
    }
    true
}

impl ErrorType for Uart {
    type Error = Infallible;
}

impl Read for Uart {
    /// Waits for the first byte (busy), then takes what the FIFO holds, up to `buf.len()`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.rx_ready() {
            core::hint::spin_loop();
        }
        if reg(ERROR) != 0 {
            set(ERROR, 0);
            set(ERRORSRC, reg(ERRORSRC));
            self.line_errors = self.line_errors.wrapping_add(1);
        }
        let mut n = 0;
        while n < buf.len() && self.rx_ready() {
            set(RXDRDY, 0);
            buf[n] = reg(RXD) as u8;
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
    /// Waits until the transmitter is free (busy: call it after `write_ready`), then writes
    /// bytes for as long as each one has gone by the time the next is due.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.tx_ready() {
            core::hint::spin_loop();
        }
        let mut n = 0;
        while n < buf.len() && self.tx_ready() {
            set(TXDRDY, 0);
            set(TXD, u32::from(buf[n]));
            self.tx_idle = false;
            n += 1;
        }
        Ok(n)
    }

    /// Waits until the last byte has gone.
    fn flush(&mut self) -> Result<(), Infallible> {
        while !self.tx_ready() {
            core::hint::spin_loop();
        }
        Ok(())
    }
}

impl WriteReady for Uart {
    fn write_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.tx_ready())
    }
}
