//! Tether on an STM32F103 (the "Blue Pill"): a device that streams a reading every 100 ms to
//! `tether listen` over USART1 (PA9 TX, PA10 RX, 921,600 baud, through a USB-serial adapter),
//! and obeys two text commands, `led on` and `led off` (PC13).
//!
//! The parts to copy:
//!
//! 1. **Receive in the interrupt.** `USART1` moves every received byte into a lock-free
//!    queue (`tether_core::io::isr::RxQueue`, over `heapless::spsc`) at once, so no byte is
//!    lost while the loop is busy; the queue's two ends are handed out by `split`, the
//!    interrupt's through an `IsrCell`. No `unsafe` and no `static mut` for any of it (the
//!    one `unsafe` is cortex-m's for unmasking an interrupt line).
//! 2. **Drive the link from the loop** with `tether_core::io::hal_nb::Driver`, over the
//!    HAL's `embedded-hal-nb` transmit half and the queue (`Halves`). It never blocks, and it
//!    runs the link's timers.
//! 3. **Keep the link's storage in a static** (`cortex_m::singleton!`): 1.6 KiB that should
//!    not sit on the stack.
//!
//! Build: `cargo build --release` in this directory (thumbv7m-none-eabi). Flash it with a
//! debug probe (`probe-rs run --chip STM32F103C8 …`), connect the adapter, and run
//! `tether listen serial:///dev/ttyUSB0?baud=921600 --csv readings.csv` on the host.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::{syst::SystClkSource, NVIC};
use cortex_m_rt::{entry, exception};
use stm32f1xx_hal::gpio::{Output, PushPull, PC13};
use stm32f1xx_hal::pac::{self, interrupt, USART1};
use stm32f1xx_hal::prelude::*;
use stm32f1xx_hal::rcc;
use stm32f1xx_hal::serial::{Config as SerialConfig, Rx};
use tether_core::io::hal_nb::{Driver, Halves};
use tether_core::io::isr::{IsrCell, RxProducer, RxQueue};
use tether_core::io::tx_buffer_len;
use tether_core::link::{Config, Event, Instant, Link, LinkStorage, Role};
use tether_core::record::RecordWriter;

/// Window 4, 4 receive slots, 128-byte frames: the 8 KiB / 2 KiB footprint configuration.
type Storage = LinkStorage<4, 4, 128>;
/// The receive queue's array: 511 bytes, 5.5 ms at 921,600 baud, longer than the loop is
/// ever away.
const RX_QUEUE: usize = 512;
/// Milliseconds between readings.
const PERIOD_MS: u64 = 100;

/// Milliseconds since boot, counted by SysTick.
static MILLIS: AtomicU32 = AtomicU32::new(0);

/// The UART's receive half and the queue's producer: `main` puts them in, the interrupt
/// takes them out, each through a critical section.
static UART_RX: IsrCell<(Rx<USART1>, RxProducer<'static>)> = IsrCell::new();

#[entry]
fn main() -> ! {
    let (Some(dp), Some(mut cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take()) else {
        halt()
    };
    // 72 MHz from the board's 8 MHz crystal: USART1 then divides it to 921,600 baud within
    // 0.2 % (the 8 MHz internal oscillator cannot: the HAL would panic, "impossible baud rate").
    let mut flash = dp.FLASH.constrain();
    let mut rcc = dp.RCC.freeze(
        rcc::Config::hse(8.MHz()).sysclk(72.MHz()).pclk1(36.MHz()),
        &mut flash.acr,
    );
    let mut pwr = dp.PWR;
    let backup = dp.BKP.constrain(&mut pwr, &mut rcc);
    let mut gpioa = dp.GPIOA.split(&mut rcc);
    let mut gpioc = dp.GPIOC.split(&mut rcc);
    let mut led = gpioc.pc13.into_push_pull_output(&mut gpioc.crh);

    // USART1 on PA9 (TX) / PA10 (RX), split into its halves.
    let tx_pin = gpioa.pa9.into_alternate_push_pull(&mut gpioa.crh);
    let serial = dp.USART1.serial(
        (tx_pin, gpioa.pa10),
        SerialConfig::default().baudrate(921_600.bps()),
        &mut rcc,
    );
    let (tx, mut rx) = serial.split();

    // The link's clock: SysTick every millisecond.
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(rcc.clocks.sysclk().raw() / 1_000 - 1);
    cp.SYST.clear_current();
    cp.SYST.enable_counter();
    cp.SYST.enable_interrupt();

    // Interrupt-driven receive: the queue lives in a static, its producer goes to the
    // interrupt, its consumer stays here.
    let Some(queue) = cortex_m::singleton!(: RxQueue<RX_QUEUE> = RxQueue::new()) else {
        halt()
    };
    let (producer, consumer) = queue.split();
    rx.listen();
    UART_RX.put((rx, producer));
    // cortex-m makes unmasking unsafe because a critical section built on masking that one
    // line would break; IsrCell's critical sections mask every interrupt instead.
    #[allow(unsafe_code)]
    // SAFETY: see above; the handler is below.
    unsafe {
        NVIC::unmask(pac::Interrupt::USART1)
    };

    // A new session identity at every boot (a boot counter in the backup registers, which
    // keep their value across resets while the board has power): the host then knows the
    // device restarted.
    let boot = backup.read_data_register_low(0).wrapping_add(1);
    backup.write_data_register_low(0, boot);
    let session = (u32::from(boot) << 16) | 0xB1;

    let Some(storage) = cortex_m::singleton!(: Storage = LinkStorage::new()) else {
        halt()
    };
    let Ok(mut link) = Link::new(Config::new(Role::Client, session), storage) else {
        halt()
    };
    let mut driver = Driver::new([0u8; tx_buffer_len(128, 1)]);
    let mut port = Halves { rx: consumer, tx };

    let mut clock = Clock::default();
    link.connect(clock.now());
    let mut readings = 0u32;
    let mut next = 0u64;
    loop {
        let now = clock.now();
        // Reads what the interrupt queued, runs the timers, writes what the UART takes.
        // (A transmit error: nothing to mend on a UART; the link sends again what is lost.)
        let progress = driver.poll(&mut link, &mut port, now).unwrap_or_default();
        if port.rx.resume() {
            // The queue had filled up and the interrupt held off: it may take bytes again.
            UART_RX.with(|(rx, _)| rx.listen());
        }

        while let Some(record) = link.recv() {
            obey(record.payload, &mut led);
            link.release(1); // acted on: now the host hears it is done
        }
        while let Some(event) = link.poll_event() {
            if let Event::PeerDead = event {
                // The host went silent: say HELLO again over the same wires.
                driver.reset();
                link.connect(now);
            }
        }
        if now.millis() >= next && link.can_send() {
            let mut buf = [0u8; 16];
            let mut w = RecordWriter::new(&mut buf);
            let written = w
                .u32(readings)
                .and_then(|w| w.u32(now.millis() as u32))
                .is_ok();
            if written && link.send(w.finish()).is_ok() {
                readings = readings.wrapping_add(1);
                next = now.millis() + PERIOD_MS;
            }
        }

        if progress.is_idle() && !port.rx.ready() {
            // Sleep until an interrupt: a byte, or the next millisecond.
            cortex_m::asm::wfi();
        }
    }
}

/// The UART's receive interrupt: every byte the UART holds goes into the queue. A line error
/// (framing, parity, noise, the UART's own overrun) is counted: the link's CRC drops the
/// frame it hit and the host sends it again. A full queue holds the interrupt off until the
/// loop has made room, leaving the rest in the UART.
#[interrupt]
fn USART1() {
    UART_RX.with(|(rx, queue)| loop {
        if !queue.ready() {
            queue.hold();
            rx.unlisten();
            break;
        }
        match rx.read() {
            Ok(byte) => {
                queue.push(byte);
            }
            Err(nb::Error::WouldBlock) => break,
            Err(nb::Error::Other(_)) => queue.line_error(),
        }
    });
}

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

/// The link's clock, from SysTick's 32-bit count (which wraps after 49 days) widened to 64
/// bits here, so it never steps back.
#[derive(Default)]
struct Clock {
    last: u32,
    total: u64,
}

impl Clock {
    fn now(&mut self) -> Instant {
        let ms = MILLIS.load(Ordering::Relaxed);
        self.total += u64::from(ms.wrapping_sub(self.last));
        self.last = ms;
        Instant::from_millis(self.total)
    }
}

/// `led on` / `led off` (PC13 is active low); anything else is ignored.
fn obey(command: &[u8], led: &mut PC13<Output<PushPull>>) {
    match command.trim_ascii() {
        b"led on" => led.set_low(),
        b"led off" => led.set_high(),
        _ => {}
    }
}

fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    halt()
}
