//! The image with Tether: the same skeleton and application, with the sensor readings sent
//! as records over a `Link<LinkStorage<4, 4, 128>>` and the peer's records (commands)
//! received, acted on and released. The link and its storage live in `static`s (through
//! `cortex_m::singleton!`), so their memory shows in `.bss` as static RAM, as does the one
//! frame buffer `poll_transmit` encodes into.
#![no_std]
#![no_main]

#[path = "../skeleton.rs"]
mod skeleton;

use cortex_m_rt::entry;
use tether_core::frame;
use tether_core::link::{Config, Event, Instant, Link, LinkStorage, Role};

/// Window 4 (transmit slots), 4 receive slots, 128-byte raw frames (110-byte payloads).
type Storage = LinkStorage<4, 4, 128>;
/// The link borrows its storage from a `static`: built in place, so `main`'s stack frame
/// does not hold a 1.6 KiB temporary (the pattern the README recommends to firmware).
type ProbeLink = Link<&'static mut Storage>;
/// One encoded frame of the largest size this link sends: `Link::transmit_len()`.
const TX_BUF: usize = frame::max_encoded_len(128 - frame::OVERHEAD);

/// With the `kinds` feature the readings are records of a declared kind (`PROTOCOL.md`
/// 10.5): the declaration is built at compile time into flash, sent as the session's first
/// record, and each reading is written with `KindWriter`.
#[cfg(feature = "kinds")]
mod reading {
    use tether_core::record::kind::{FieldDef, Kind, Type};
    pub const KIND: Kind<'static> = Kind {
        id: 0,
        name: "probe",
        fields: &[FieldDef::new("sample", Type::U32).unit("raw")],
    };
    pub const DECLARATION: [u8; KIND.declaration_len()] = KIND.declaration();
}

/// `size_of::<ProbeLink>()` on the target, for `scripts/size-report.sh` to read from the ELF
/// (the `TETHER_LINK` static is a little larger: `singleton!` adds its "taken" flag). Costs
/// 4 bytes of flash.
#[used]
#[no_mangle]
static TETHER_LINK_SIZE: u32 = core::mem::size_of::<Link<Storage>>() as u32;

#[entry]
fn main() -> ! {
    let mut cp = cortex_m::Peripherals::take().unwrap();
    skeleton::init(&mut cp.SYST);

    // The session identity comes from the hardware (a volatile read), so nothing about the
    // configuration is known to the optimiser; `| 1` keeps it non-zero.
    #[allow(unused_mut)] // set only with the v2 feature
    let mut config = Config::new(Role::Client, skeleton::device_id() | 1);
    #[cfg(feature = "v2")]
    {
        // Offer version 2, so that its code is linked (a v1 peer still gets version 1).
        config.max_version = 2;
    }
    let storage: &'static mut Storage =
        cortex_m::singleton!(TETHER_STORAGE: Storage = LinkStorage::new()).unwrap();
    let link: &'static mut ProbeLink = cortex_m::singleton!(
        TETHER_LINK: ProbeLink = match Link::new(config, storage) {
            Ok(link) => link,
            Err(_) => panic!(),
        }
    )
    .unwrap();
    let tx: &'static mut [u8; TX_BUF] =
        cortex_m::singleton!(TETHER_TX: [u8; TX_BUF] = [0; TX_BUF]).unwrap();

    let mut rx = [0u8; 32];
    let mut last_sample = 0u32;
    link.connect(Instant::from_millis(u64::from(skeleton::millis())));
    #[cfg(feature = "kinds")]
    let mut declared = false;
    loop {
        let ms = skeleton::millis();
        let now = Instant::from_millis(u64::from(ms));

        let n = skeleton::read_available(&mut rx);
        if n > 0 {
            link.handle_input(now, &rx[..n]);
        }
        if link.poll_timeout().is_some_and(|at| at <= now) {
            link.handle_timeout(now);
        }

        #[cfg(feature = "kinds")]
        if !declared {
            declared = link.send(&reading::DECLARATION).is_ok();
        }
        if ms.wrapping_sub(last_sample) >= 100 && link.can_send() {
            last_sample = ms;
            // Full or closed: the reading is dropped, as the baseline's would be.
            #[cfg(not(feature = "kinds"))]
            let _ = link.send(&skeleton::sample().to_le_bytes());
            #[cfg(feature = "kinds")]
            {
                let mut buf = [0u8; 8];
                let mut w = tether_core::record::kind::KindWriter::new(&reading::KIND, &mut buf);
                if let Ok(record) = w.u32(skeleton::sample()).and_then(|w| w.finish()) {
                    let _ = link.send(record);
                }
            }
        }

        while let Some(n) = link.poll_transmit(now, &mut tx[..]) {
            skeleton::write_all(&tx[..n]);
        }

        while let Some(event) = link.poll_event() {
            match event {
                Event::PeerDead | Event::Closed => link.connect(now),
                Event::Delivered { up_to } => skeleton::set_output(up_to),
                _ => {}
            }
        }

        while let Some(record) = link.recv() {
            // A command from the peer drives the output; then it may be acknowledged.
            skeleton::set_output(u32::from(record.payload.first().copied().unwrap_or(0)));
            link.release(1);
        }
    }
}
