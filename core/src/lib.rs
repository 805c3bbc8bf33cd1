//! Tether's protocol core: the part that runs on the microcontroller and on the host alike.
//!
//! `tether-core` is `#![no_std]`, allocates nothing and never panics on input. It turns a
//! byte stream (a UART, a TCP socket, an RFCOMM channel) into whole, checked frames and back.
//! The wire format is specified normatively in `PROTOCOL.md` at the root of the repository;
//! this crate is its reference implementation, and its tests check the spec's test vectors.
//!
//! ```text
//!  firmware / host application
//!         │ send(record) / recv() -> record, release
//!  ┌──────▼───────────────────────────────────────────────┐
//!  │ core::link   handshake, acknowledgements, credit,     │  no_std, no alloc,
//!  │              timers, resume (sans-IO)                 │  no clock, no IO
//!  ├──────────────────────────────────────────────────────┤
//!  │ core::frame  header view/Repr, CRC-32C, COBS,         │
//!  │              streaming decoder with resync + stats    │
//!  └──────▲───────────────────────────────────────────────┘
//!         │ bytes in / bytes out (any chunking)
//!  core::io     drivers over embedded-io: blocking, nb polling, async (feature)
//! ```
//!
//! The link layer ([`link`]) builds on [`frame`]; [`io`] moves its bytes through an
//! `embedded-io` transport, or the program does it itself with its own buffers.
//!
//! # Example
//!
//! Encode a frame into a buffer and decode it from a stream that arrives one byte at a time:
//!
//! ```
//! use tether_core::frame::{self, Decoder, Header, Kind};
//!
//! let header = Header { kind: Kind::Data, seq: 7, ..Header::default() };
//! let mut wire = [0u8; frame::max_encoded_len(5)];
//! let n = frame::encode(&header, b"hello", &mut wire)?;
//!
//! // The caller owns the decoder's storage; its length bounds the frame size.
//! let mut decoder = Decoder::new([0u8; frame::raw_len(64)]);
//! let mut got = None;
//! for byte in wire[..n].chunks(1) {
//!     let mut input = byte;
//!     while let Some(result) = decoder.decode(&mut input) {
//!         let f = result.expect("a clean stream decodes");
//!         got = Some((f.header, f.payload.len()));
//!     }
//! }
//! assert_eq!(got, Some((header, 5)));
//! assert_eq!(decoder.stats().frames, 1);
//! # Ok::<(), frame::EncodeError>(())
//! ```
//!
//! # Features
//! - CRC back ends (default: a 64-byte nibble table, sized for microcontrollers' flash):
//!   `table-crc`, a 1 KiB byte table, for firmware with the flash to spare; `fast-crc`, a 16
//!   KiB slicing-by-16 table; `hw-crc` (std), the CPU's CRC-32C instructions, which the host
//!   uses. When several are on, the first of `hw-crc`, `fast-crc`, `table-crc` wins.
//! - `defmt`: `defmt::Format` on every public type, and the core's log messages (handshakes,
//!   restarts, refusals, time-outs) through defmt.
//! - `async`: [`io`]'s async driver, over `embedded-io-async` (no executor is assumed).
//! - `embedded-hal-nb`: `io::hal_nb`, the driver over `embedded_hal_nb::serial::{Read, Write}`
//!   (most HALs' UARTs); `nb`: `io::nb::Driver::flush` as an `nb::Result`.
//! - `isr`: `io::isr`, interrupt-driven receive through a `heapless::spsc` queue (no
//!   compare-and-swap needed: it builds for a Cortex-M0).
//! - `auth`: authenticated links (`link::auth`, `PROTOCOL.md` 9.14): a pre-shared key per
//!   device, HMAC-SHA256 challenge–response in the handshake, and a counter and truncated MAC
//!   on every frame, through the RustCrypto `hmac` and `sha2` crates (no_std). About 6.3 KiB
//!   of flash and 280 B of RAM a link on a Cortex-M4F; nothing without the feature.
//! - `v2`: protocol version 2 (`PROTOCOL.md` section 11), offered or accepted when
//!   `link::Config::max_version` is 2 (the default is 1): compact frames, many records a
//!   frame, selective acknowledgement, timeouts from measured round trips, and version 1
//!   with a peer that does not offer it; `frame::v2` is its frame layer. About 7.5 KiB more
//!   flash and 112 B more RAM a link on a Cortex-M4F (`scripts/size-report.sh`); nothing
//!   without the feature.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod fmt;

pub mod frame;
pub mod io;
pub mod link;
pub mod record;
