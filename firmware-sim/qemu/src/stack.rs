//! The stack's high-water mark, measured by painting: at the start of `main` every unused
//! word of the stack region (from the end of the statics, cortex-m-rt's `_stack_end`, up to
//! just below the current stack pointer) is set to a pattern; at the end, the lowest word
//! that no longer holds it is as deep as the stack ever went. What it counts: `main`'s frame
//! and everything it called, and the interrupt handlers' frames stacked on top (they share
//! the one stack, MSP) — everything but the few words above `main` (the reset handler's).

/// What an untouched word holds.
const PAINT: u32 = 0xA5C3_5A3C;
/// Left unpainted below the stack pointer, for `paint`'s own frame.
const MARGIN: usize = 64;

extern "C" {
    /// The top of the stack (cortex-m-rt's `link.x`: the end of RAM).
    static _stack_start: u32;
    /// The lowest address the stack may reach: the end of `.bss` and `.uninit`.
    static _stack_end: u32;
}

/// (Only the symbols' addresses are taken, never their values: no `unsafe` needed.)
fn top() -> usize {
    core::ptr::addr_of!(_stack_start) as usize
}

fn bottom() -> usize {
    core::ptr::addr_of!(_stack_end) as usize
}

/// Paints the unused stack. Call it first thing in `main`, before interrupts are enabled
/// (an interrupt stacked during the painting would be painted over).
pub fn paint() {
    cortex_m::interrupt::free(|_| {
        let sp = cortex_m::register::msp::read() as usize;
        let mut at = bottom();
        while at + MARGIN < sp {
            // SAFETY: `at` is word-aligned (cortex-m-rt aligns `_stack_end` to 4) and lies
            // between the end of the statics and below the stack pointer: stack not in use,
            // and no interrupt can push a frame there meanwhile (they are masked).
            unsafe { core::ptr::write_volatile(at as *mut u32, PAINT) };
            at += 4;
        }
    });
}

/// The most bytes of stack used since `paint`, and the stack region's size.
pub fn peak() -> (usize, usize) {
    let mut at = bottom();
    // SAFETY: reads of aligned words in the stack region, below the live stack.
    while at < top() && unsafe { core::ptr::read_volatile(at as *const u32) } == PAINT {
        at += 4;
    }
    (top() - at, top() - bottom())
}
