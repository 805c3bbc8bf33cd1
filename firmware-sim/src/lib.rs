//! Simulated Tether devices and a fault-injecting link, for tests and demos.
//!
//! Nothing is here yet: the device model, its std harness and the fault-injecting link
//! arrive with the firmware-sim issue, once the core's link layer exists. The crate is in
//! the workspace now so that the layout users and contributors see is the final one.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
