//! The image without Tether: the skeleton's UART and tick, an application that echoes what
//! it receives (through a buffer, as firmware does) and reports a sensor reading every 100 ms
//! as raw bytes.
#![no_std]
#![no_main]

#[path = "../skeleton.rs"]
#[allow(dead_code)] // device_id is the link's
mod skeleton;

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    let mut cp = cortex_m::Peripherals::take().unwrap();
    skeleton::init(&mut cp.SYST);
    let mut rx = [0u8; 32];
    // Any real firmware moves buffers around, so memcpy and memset are in both images and
    // the difference is Tether's own code, not the compiler's built-ins.
    let mut report = [0u8; 32];
    let mut last_sample = 0u32;
    loop {
        let n = skeleton::read_available(&mut rx);
        if n > 0 {
            // "Commands" from the peer drive the output, as with_link does with records.
            skeleton::set_output(u32::from(rx[0]));
            report[..n].copy_from_slice(&rx[..n]);
            skeleton::write_all(&report[..n]);
            report[..n].fill(0);
        }
        let now = skeleton::millis();
        if now.wrapping_sub(last_sample) >= 100 {
            last_sample = now;
            skeleton::write_all(&skeleton::sample().to_le_bytes());
        }
    }
}
