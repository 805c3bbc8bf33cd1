//! What every image on the lm3s6965evb needs besides its application, shared by the firmware
//! and the baseline so that their difference in size is Tether's: the link's clock (SysTick,
//! free-running), a millisecond wake-up tick (general-purpose timer 0), sleeping until the
//! UART or the tick has something (`wfi`), logging, the exit to the host (semihosting, so
//! that QEMU ends with the firmware's verdict) and a panic handler that exits with failure.
//!
//! Why two timers: counting 1 ms SysTick interrupts loses time under QEMU whenever the
//! emulator is busy (measured: the device's clock fell 28 % behind the host's while it
//! streamed a thousand records a second), because ticks that come due while one is pending
//! merge into one. So SysTick runs free over its full 24 bits (1.3 s a turn at 12.5 MHz), an
//! interrupt counts the turns, and the time is read from its counter, to the tick. Timer 0
//! only wakes the core every millisecond, so that readings and the link's timers are served
//! on time; a lost wake-up costs nothing.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::interrupt::InterruptNumber;
use cortex_m::peripheral::{syst::SystClkSource, NVIC, SCB, SYST};
use cortex_m_rt::exception;
use tether_core::link::Instant;

/// The core clock QEMU 7.2 gives the LM3S6965 out of reset, measured against the host's
/// clock (with 12 MHz, the device's clock ran 4.2 % fast: 9,963 ms in 9.56 s). The QEMU
/// end-to-end test checks the two keep pace. (A real LM3S6965 starts on its 12 MHz ±30 %
/// internal oscillator: firmware sets up the crystal and PLL first.)
pub const CORE_HZ: u32 = 12_500_000;
const TICKS_PER_MS: u64 = CORE_HZ as u64 / 1_000;
/// SysTick counts down from here to 0, then reloads: 2^24 ticks a turn.
const RELOAD: u32 = 0x00FF_FFFF;

/// General-purpose timer 0 (the wake-up tick).
const GPTM0: usize = 0x4003_0000;
const GPTM_CFG: usize = GPTM0;
const GPTM_TAMR: usize = GPTM0 + 0x04;
const GPTM_CTL: usize = GPTM0 + 0x0C;
const GPTM_IMR: usize = GPTM0 + 0x18;
const GPTM_ICR: usize = GPTM0 + 0x24;
const GPTM_TAILR: usize = GPTM0 + 0x28;
/// Timer 0A's line in the NVIC.
const GPTM0A_IRQ: u16 = 19;

/// SysTick turns completed.
static TURNS: AtomicU32 = AtomicU32::new(0);

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
    // SAFETY: `addr` is one of timer 0's registers above: a fixed, aligned MMIO address.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// Starts the clock and the wake-up tick.
pub fn init(cp: &mut cortex_m::Peripherals) {
    let (syst, nvic) = (&mut cp.SYST, &mut cp.NVIC);
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_counter();
    // The counter reads 0 until its first reload; wait for it (bounded), so that the
    // clock starts at 0 and never steps back.
    for _ in 0..1_000_000 {
        if SYST::get_current() != 0 {
            break;
        }
    }
    SCB::clear_pendst();
    syst.enable_interrupt();

    set(GPTM_CTL, 0);
    set(GPTM_CFG, 0); // one 32-bit timer
    set(GPTM_TAMR, 0x2); // periodic
    set(GPTM_TAILR, CORE_HZ / 1_000 - 1);
    set(GPTM_IMR, 1); // time-out interrupt
    set(GPTM_CTL, 1); // enabled
                      // SAFETY: its handler (DefaultHandler below) only acknowledges the time-out.
    unsafe {
        nvic.set_priority(Irq(GPTM0A_IRQ), 0);
        NVIC::unmask(Irq(GPTM0A_IRQ));
    }
}

#[exception]
fn SysTick() {
    TURNS.fetch_add(1, Ordering::Relaxed);
}

/// Core clock ticks since `init`.
pub fn ticks() -> u64 {
    cortex_m::interrupt::free(|_| {
        let mut turns = u64::from(TURNS.load(Ordering::Relaxed));
        let mut count = SYST::get_current();
        if SCB::is_pendst_pending() {
            // A turn ended and its interrupt has not run (we hold it off): count it, and
            // read the counter again, surely after the reload.
            turns += 1;
            count = SYST::get_current();
        }
        (turns << 24) + u64::from(RELOAD - count.min(RELOAD))
    })
}

/// Milliseconds since `init`.
pub fn millis() -> u64 {
    ticks() / TICKS_PER_MS
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

/// Some bits the host's timing decides (the SysTick counter read at a moment that depends
/// on how long QEMU took to get here), for a session identity that differs between boots.
/// Not entropy: a real part takes its unique ID, a TRNG or a boot counter kept in flash.
pub fn boot_jitter() -> u32 {
    SYST::get_current().wrapping_mul(0x9E37_79B9) ^ (ticks() as u32).rotate_left(16)
}

/// An interrupt line of the LM3S6965's NVIC.
#[derive(Clone, Copy)]
struct Irq(u16);

// SAFETY: only built with the line numbers above, which exist on the LM3S6965.
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

/// Lets the UART's receive interrupt run (`crate::uart_rx_interrupt`). Call it once the
/// queue's producer is in place: the line stays asserted while the receive FIFO holds data,
/// so a handler that could not drain it would run for ever.
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
/// while masked (its handler runs once they are enabled again). Timer 0 wakes it every
/// millisecond at the latest.
pub fn sleep_unless(ready: impl FnOnce() -> bool) {
    cortex_m::interrupt::disable();
    if !ready() {
        cortex_m::asm::wfi();
    }
    // SAFETY: not inside a critical section (main's loop, interrupts were enabled).
    unsafe { cortex_m::interrupt::enable() };
}

/// Interrupts other than SysTick. Timer 0's only wakes the core: acknowledge it. UART0's is
/// the application's receive handler. Any other interrupt is a bug. (With a PAC, these would
/// be `#[interrupt] fn TIMER0A()` and `#[interrupt] fn UART0()`.)
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == GPTM0A_IRQ as i16 {
        set(GPTM_ICR, 1);
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
