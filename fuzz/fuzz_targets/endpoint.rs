//! Parses arbitrary text as an endpoint URL, as `tether listen` and `tether send` parse
//! their command lines: it must never panic, and whatever parses must print (`Display`) as
//! a URL that parses back to the same endpoint.
//!
//! The parser is compiled from the host's own source file, which depends on `std` and
//! `thiserror` alone, so this target does not build the host's network and Bluetooth stack.
#![no_main]

#[allow(dead_code)]
#[path = "../../host/src/endpoint.rs"]
mod endpoint;

use endpoint::Endpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(endpoint) = text.parse::<Endpoint>() {
        let shown = endpoint.to_string();
        let again: Endpoint = shown
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} parsed, but its display {shown:?} does not: {e}"));
        assert_eq!(again, endpoint, "{text:?} -> {shown:?}");
    }
});
