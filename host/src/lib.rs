//! Tether on Linux: the `tether` command's library.
//!
//! - [`listen`]: a server that logs many devices to CSV, acknowledging each record only once
//!   it is written;
//! - [`send`]: a client that streams lines as records and resumes across broken
//!   connections;
//! - [`demo`]: a listener and simulated devices on loopback, the README's main job;
//! - [`sim`]: simulated devices through a fault injector, and the CSV check;
//! - [`endpoint`], [`sink`], [`storage`], [`clock`]: the pieces they share.
//!
//! Both drive `tether_core::link::Link` over tokio TCP streams: the protocol lives in the
//! core, the host only moves bytes, keeps time and writes files.

pub mod clock;
pub mod demo;
pub mod endpoint;
pub mod listen;
pub mod raw;
pub mod send;
pub mod sim;
pub mod sink;
pub mod storage;

/// A session identity for this process: random enough that a restarted program is told
/// apart from the one before (the standard library's per-process random hash keys, mixed
/// with the time), never 0.
pub fn random_session() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() as u32).max(1)
}
