//! Simulated Tether devices and a fault-injecting link, for tests and demos.
//!
//! - [`device`]: a device model written the way firmware is written (`no_std`, no
//!   allocation, time passed in, sans-IO): it streams sensor readings as typed records
//!   over a [`tether_core::link::Link`] and obeys the host's text commands.
//! - [`fault`]: a seeded fault injector (loss, corruption, duplication, splits, cuts) as
//!   an in-memory duplex pipe for deterministic tests, and with the `std` feature as a
//!   wrapper over any `std::io::Read + Write`.
//! - [`rng`]: the small seeded generator both use.
//!
//! The crate is `#![no_std]`; the `std` feature adds only `fault::FaultStream`.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod device;
pub mod fault;
pub mod rng;
