//! The board support of the micro:bit image (QEMU's `microbit`: an nRF51822, Cortex-M0,
//! `thumbv6m-none-eabi`), with the same interface as `board.rs` (the lm3s6965evb's), so that
//! the firmware and the baseline build for either board unchanged.
//!
//! The nRF51 has no SysTick: TIMER0 runs free at 1 MHz over 32 bits and is the link's clock
//! (read through a capture task, to the microsecond; its 71-minute turns are counted as the
//! clock is read); TIMER1 wakes the core every millisecond. The core sleeps with `wfi`, so
//! QEMU does not spin a host core. Panics and `HardFault` exit QEMU with status 1 through
//! semihosting. A Cortex-M0 has no compare-and-swap: nothing here needs one (a critical
//! section guards the clock's state; the receive queue needs only loads and stores).

use core::cell::Cell;

use cortex_m::interrupt::{InterruptNumber, Mutex};
use cortex_m::peripheral::NVIC;
use cortex_m_rt::exception;
use tether_core::link::Instant;

/// TIMER0 (the clock) and TIMER1 (the wake-up tick).
const TIMER0: usize = 0x4000_8000;
const TIMER1: usize = 0x4000_9000;
const TASKS_START: usize = 0x000;
const TASKS_CLEAR: usize = 0x00C;
const TASKS_CAPTURE0: usize = 0x040;
const EVENTS_COMPARE0: usize = 0x140;
const SHORTS: usize = 0x200;
const INTENSET: usize = 0x304;
const MODE: usize = 0x504;
const BITMODE: usize = 0x508;
const PRESCALER: usize = 0x510;
const CC0: usize = 0x540;
/// 16 MHz >> 4: a microsecond a tick.
const PRESCALE_1MHZ: u32 = 4;
const BITMODE_32: u32 = 3;
/// COMPARE0 clears the counter: a periodic tick.
const SHORTS_COMPARE0_CLEAR: u32 = 1;
const INTEN_COMPARE0: u32 = 1 << 16;
/// TIMER1's line in the NVIC (peripheral id = (base - 0x4000_0000) >> 12).
const TIMER1_IRQ: u16 = 9;

/// The last capture of TIMER0 and the microseconds counted up to it.
static CLOCK: Mutex<Cell<(u32, u64)>> = Mutex::new(Cell::new((0, 0)));

/// Logs a line: through defmt with the `defmt` feature, as plain semihosting text otherwise.
/// Only `{}` placeholders, with values that are both `Display` and `defmt::Format`.
#[cfg(feature = "defmt")]
macro_rules! info {
    ($($t:tt)*) => { defmt::info!($($t)*) };
}
#[cfg(not(feature = "defmt"))]
macro_rules! info {
    ($($t:tt)*) => { cortex_m_semihosting::hprintln!($($t)*) };
}

#[cfg(feature = "defmt")]
defmt::timestamp!("{=u64:ms}", millis());

fn set(addr: usize, value: u32) {
    // SAFETY: `addr` is one of the timers' registers above: a fixed, aligned MMIO address.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

fn get(addr: usize) -> u32 {
    // SAFETY: as in `set`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Starts the clock and the wake-up tick.
pub fn init(cp: &mut cortex_m::Peripherals) {
    for (timer, cc) in [(TIMER0, None), (TIMER1, Some(1_000))] {
        set(timer + MODE, 0); // timer, not counter
        set(timer + BITMODE, BITMODE_32);
        set(timer + PRESCALER, PRESCALE_1MHZ);
        set(timer + TASKS_CLEAR, 1);
        if let Some(us) = cc {
            set(timer + CC0, us);
            set(timer + SHORTS, SHORTS_COMPARE0_CLEAR);
            set(timer + INTENSET, INTEN_COMPARE0);
        }
        set(timer + TASKS_START, 1);
    }
    // SAFETY: its handler (DefaultHandler below) only acknowledges the compare event.
    unsafe {
        cp.NVIC.set_priority(Irq(TIMER1_IRQ), 0);
        NVIC::unmask(Irq(TIMER1_IRQ));
    }
}

/// Microseconds since `init`.
pub fn micros() -> u64 {
    cortex_m::interrupt::free(|cs| {
        set(TIMER0 + TASKS_CAPTURE0, 1);
        let raw = get(TIMER0 + CC0);
        let cell = CLOCK.borrow(cs);
        let (last, total) = cell.get();
        let total = total + u64::from(raw.wrapping_sub(last));
        cell.set((raw, total));
        total
    })
}

/// Milliseconds since `init`.
pub fn millis() -> u64 {
    micros() / 1_000
}

/// The link's clock, never stepping back.
#[derive(Debug, Default)]
pub struct Clock {
    last: u64,
}

impl Clock {
    /// Now.
    pub fn now(&mut self) -> Instant {
        self.last = self.last.max(millis());
        Instant::from_millis(self.last)
    }
}

/// Some bits the host's timing decides (the microsecond at which QEMU got here), for a
/// session identity that differs between boots. Not entropy: a real nRF51 has a TRNG and a
/// factory-programmed device ID.
pub fn boot_jitter() -> u32 {
    (micros() as u32).wrapping_mul(0x9E37_79B9).rotate_left(16)
}

/// An interrupt line of the nRF51's NVIC.
#[derive(Clone, Copy)]
struct Irq(u16);

// SAFETY: only built with the line numbers of this file and uart.rs, which exist on the nRF51.
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

/// Lets the UART's receive interrupt run (`crate::uart_rx_interrupt`). Call it once the
/// queue's producer is in place.
pub fn enable_uart_rx_interrupt() {
    // SAFETY: the handler only drains the receive FIFO into the queue, through a critical
    // section of its own; no critical section relies on the line staying masked.
    unsafe { NVIC::unmask(Irq(crate::uart::IRQ)) };
}

/// Masks the UART's receive interrupt: the receive queue is full (flow control; see
/// `uart::receive`). `enable_uart_rx_interrupt` once the main loop has made room.
pub fn disable_uart_rx_interrupt() {
    NVIC::mask(Irq(crate::uart::IRQ));
}

/// Sleeps (`wfi`) until an interrupt, unless `ready()` says there is work already.
/// `ready` runs with interrupts disabled, so nothing that arrives after it looked is missed:
/// a byte received or a tick pends its interrupt, and a pending interrupt ends the `wfi` even
/// while masked (its handler runs once they are enabled again). TIMER1 wakes it every
/// millisecond at the latest.
pub fn sleep_unless(ready: impl FnOnce() -> bool) {
    cortex_m::interrupt::disable();
    if !ready() {
        cortex_m::asm::wfi();
    }
    // SAFETY: not inside a critical section (main's loop, interrupts were enabled).
    unsafe { cortex_m::interrupt::enable() };
}

/// Interrupts: TIMER1's only wakes the core (acknowledge it); the UART's is the
/// application's receive handler. Any other interrupt is a bug. (With a PAC, these would be
/// `#[interrupt] fn TIMER1()` and `#[interrupt] fn UART0()`.)
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == TIMER1_IRQ as i16 {
        set(TIMER1 + EVENTS_COMPARE0, 0);
    } else if irqn == crate::uart::IRQ as i16 {
        crate::uart_rx_interrupt();
    } else {
        panic!("unexpected interrupt {}", irqn);
    }
}

#[exception]
unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
    exit(false)
}

/// Ends the run: QEMU exits with 0 (`ok`) or 1 (semihosting must be enabled on its command
/// line, `-semihosting-config enable=on,target=native`).
pub fn exit(ok: bool) -> ! {
    use cortex_m_semihosting::debug;
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::wfi();
    }
}

#[cfg(not(feature = "defmt"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cortex_m_semihosting::hprintln!("panic: {}", info);
    exit(false)
}

#[cfg(feature = "defmt")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(false)
}
