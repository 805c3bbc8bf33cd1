//! What both images share, so that their difference is Tether alone: a polled UART (a PL011
//! as on QEMU's lm3s6965evb, driven through volatile reads and writes of its registers), a
//! millisecond counter kept by SysTick, and a panic handler that halts.

use core::panic::PanicInfo;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::{syst::SystClkSource, SYST};
use cortex_m_rt::exception;

const UART_DR: *mut u32 = 0x4000_C000 as *mut u32;
const UART_FR: *const u32 = 0x4000_C018 as *const u32;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
/// Some input the application samples (an ADC result register, say).
const SENSOR: *const u32 = 0x4003_8048 as *const u32;
/// A word that tells one device from another (a factory-programmed ID, say).
const DEVICE_ID: *const u32 = 0x1000_0060 as *const u32;
/// Something the application drives (a GPIO output register, say).
const OUTPUT: *mut u32 = 0x5000_0504 as *mut u32;

const CORE_HZ: u32 = 64_000_000;

static MILLIS: AtomicU32 = AtomicU32::new(0);

/// Starts the millisecond tick.
pub fn init(syst: &mut SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_HZ / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[exception]
fn SysTick() {
    // The one writer: a load and a store, which a Cortex-M0 (thumbv6m, no CAS) has too.
    MILLIS.store(
        MILLIS.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// Milliseconds since `init`.
pub fn millis() -> u32 {
    MILLIS.load(Ordering::Relaxed)
}

/// Reads what the UART's receive FIFO holds, up to `buf.len()` bytes; how many.
pub fn read_available(buf: &mut [u8]) -> usize {
    let mut n = 0;
    // SAFETY: fixed, aligned MMIO register addresses of the (assumed) UART.
    while n < buf.len() && unsafe { read_volatile(UART_FR) } & FR_RXFE == 0 {
        buf[n] = unsafe { read_volatile(UART_DR) } as u8;
        n += 1;
    }
    n
}

/// Writes `bytes` to the UART, waiting while its transmit FIFO is full.
pub fn write_all(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: as in `read_available`.
        unsafe {
            while read_volatile(UART_FR) & FR_TXFF != 0 {}
            write_volatile(UART_DR, u32::from(b));
        }
    }
}

/// The sensor's latest reading.
pub fn sample() -> u32 {
    // SAFETY: a fixed, aligned MMIO register address.
    unsafe { read_volatile(SENSOR) }
}

/// This device's identity word.
pub fn device_id() -> u32 {
    // SAFETY: a fixed, aligned address.
    unsafe { read_volatile(DEVICE_ID) }
}

/// Drives the output.
pub fn set_output(value: u32) {
    // SAFETY: a fixed, aligned MMIO register address.
    unsafe { write_volatile(OUTPUT, value) }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {
        cortex_m::asm::nop();
    }
}
