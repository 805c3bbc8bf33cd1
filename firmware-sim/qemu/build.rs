//! Writes the board's memory map as `memory.x` where cortex-m-rt's `link.x` finds it (the
//! lm3s6965evb's, `memory-lm3s6965.x`, for thumbv7m; the micro:bit's, `memory-nrf51.x`, for
//! thumbv6m; no `memory.x` in this directory, where the linker would look first), sets the
//! `board_microbit` cfg for thumbv6m, and adds defmt's linker script when the `defmt`
//! feature is on.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = env::var("TARGET").unwrap_or_default();
    println!("cargo::rustc-check-cfg=cfg(board_microbit)");
    let memory: &[u8] = if target.starts_with("thumbv6m") {
        println!("cargo:rustc-cfg=board_microbit");
        include_bytes!("memory-nrf51.x")
    } else {
        include_bytes!("memory-lm3s6965.x")
    };
    fs::write(out.join("memory.x"), memory).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-search={}", out.display());
    if env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }
    println!("cargo:rerun-if-changed=memory-lm3s6965.x");
    println!("cargo:rerun-if-changed=memory-nrf51.x");
    println!("cargo:rerun-if-changed=build.rs");
}
