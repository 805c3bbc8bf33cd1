//! The limits and time-outs that `tether listen` and `tether bridge` share, checked once
//! before anything is bound or opened: a value out of range is a clear message at start
//! (exit 2), never a failure on every device's connection later.

use std::time::Duration;

use tether_core::frame::MAX_PAYLOAD;
use tether_core::link::MIN_FRAME;

use crate::session::Limits;

/// How often an idle link sends a PING (the core's default, which every Tether peer of this
/// project uses): an idle time-out must be longer, or idle devices would be dropped.
pub const KEEPALIVE: Duration = Duration::from_millis(1_000);

/// The smallest record size that still fits the link's smallest frame.
pub const MIN_RECORD: usize = MIN_FRAME - tether_core::frame::OVERHEAD;

/// The most records a window may hold (the core's slot limit).
pub const MAX_WINDOW: usize = 32_768;

/// What serving devices needs in range, whoever serves them.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// `--window`.
    pub window: usize,
    /// `--max-record`.
    pub max_record: usize,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--max-devices`.
    pub max_devices: usize,
    /// `--handshake-timeout-ms`.
    pub handshake_timeout: Duration,
    /// `--idle-timeout-ms`.
    pub idle_timeout: Duration,
    /// `--max-version`: the highest protocol version accepted (`PROTOCOL.md` 11.2).
    pub max_version: u8,
}

/// The [`Serving`] values of a server's options (`ListenOptions`, `BridgeOptions`: both have
/// fields of these names), in one place so that the two commands' checks cannot drift apart.
macro_rules! serving_of {
    ($opts:expr) => {
        $crate::options::Serving {
            window: $opts.window,
            max_record: $opts.max_record,
            max_connections: $opts.max_connections,
            max_devices: $opts.max_devices,
            handshake_timeout: $opts.handshake_timeout,
            idle_timeout: $opts.idle_timeout,
            max_version: $opts.max_version,
        }
    };
}
pub(crate) use serving_of;

/// Sets a server's options (`ListenOptions`, `BridgeOptions`) from [`Serving`] values: the
/// other way of `serving_of!`.
#[macro_export]
macro_rules! set_serving {
    ($opts:expr, $s:expr) => {{
        let s: $crate::options::Serving = $s;
        $opts.window = s.window;
        $opts.max_record = s.max_record;
        $opts.max_connections = s.max_connections;
        $opts.max_devices = s.max_devices;
        $opts.handshake_timeout = s.handshake_timeout;
        $opts.idle_timeout = s.idle_timeout;
        $opts.max_version = s.max_version;
    }};
}

impl Serving {
    /// The defaults, in one place: `ListenOptions::new`, `BridgeOptions::new` and the command
    /// line's options take them from here.
    pub const DEFAULT: Serving = Serving {
        // 512: `tether send FILE` into `tether listen` at the defaults moves 16-byte records
        // at 3.7 M/s (64: 0.84 M/s, the sender waiting for acknowledgements; 1,024: 5.9 M/s;
        // tether-bench's "defaults" figure). The receive slots it costs (512 × the device's
        // record size: 521 KiB for 1 KiB records) are taken only while records are in
        // flight and given back when the device idles.
        window: 512,
        max_record: 1024,
        max_connections: 256,
        max_devices: 256,
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        max_version: tether_core::link::MAX_PROTOCOL_VERSION,
    };
}

impl Serving {
    /// Checks each value, and returns the limits the session engine enforces; the message
    /// names the option and its range.
    pub fn check(&self) -> Result<Limits, String> {
        if !(1..=tether_core::link::MAX_PROTOCOL_VERSION).contains(&self.max_version) {
            return Err(format!(
                "--max-version must be 1 or {} (got {})",
                tether_core::link::MAX_PROTOCOL_VERSION,
                self.max_version
            ));
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(format!(
                "--window must be 1 to {MAX_WINDOW} records (got {})",
                self.window
            ));
        }
        if !(MIN_RECORD..=MAX_PAYLOAD).contains(&self.max_record) {
            return Err(format!(
                "--max-record must be {MIN_RECORD} to {MAX_PAYLOAD} bytes (got {})",
                self.max_record
            ));
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_devices == 0 {
            return Err("--max-devices must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("--handshake-timeout-ms must be at least 1".into());
        }
        if self.idle_timeout <= KEEPALIVE {
            return Err(format!(
                "--idle-timeout-ms must be more than {} (idle links send a PING every {}; a shorter time-out would drop idle devices), got {}",
                KEEPALIVE.as_millis(),
                humantime::format_duration(KEEPALIVE),
                self.idle_timeout.as_millis()
            ));
        }
        Ok(Limits {
            max_connections: self.max_connections,
            max_sessions: self.max_devices,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
        })
    }
}

/// A link's dead-peer time for `idle`, in the core's unit (milliseconds, saturating).
pub fn dead_after_ms(idle: Duration) -> u32 {
    idle.as_millis().min(u128::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Serving {
        Serving {
            window: 64,
            max_record: 1024,
            max_connections: 256,
            max_devices: 256,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_version: 2,
        }
    }

    #[test]
    fn the_defaults_pass_and_each_value_out_of_range_names_its_option() {
        let limits = ok().check().expect("the defaults pass");
        assert_eq!((limits.max_sessions, limits.max_connections), (256, 256));
        let cases: [(Serving, &str); 10] = [
            (Serving { window: 0, ..ok() }, "--window"),
            (
                Serving {
                    max_version: 0,
                    ..ok()
                },
                "--max-version",
            ),
            (
                Serving {
                    max_version: 3,
                    ..ok()
                },
                "--max-version",
            ),
            (
                Serving {
                    window: 40_000,
                    ..ok()
                },
                "--window",
            ),
            (
                Serving {
                    max_record: 2,
                    ..ok()
                },
                "--max-record",
            ),
            (
                Serving {
                    max_connections: 0,
                    ..ok()
                },
                "--max-connections",
            ),
            (
                Serving {
                    max_devices: 0,
                    ..ok()
                },
                "--max-devices",
            ),
            (
                Serving {
                    handshake_timeout: Duration::ZERO,
                    ..ok()
                },
                "--handshake-timeout-ms",
            ),
            (
                Serving {
                    idle_timeout: Duration::from_millis(1000),
                    ..ok()
                },
                "--idle-timeout-ms must be more than 1000",
            ),
            (
                Serving {
                    idle_timeout: Duration::ZERO,
                    ..ok()
                },
                "--idle-timeout-ms",
            ),
        ];
        for (s, want) in cases {
            let e = s.check().unwrap_err();
            assert!(e.contains(want), "{e:?} should name {want}");
        }
        let just = Serving {
            idle_timeout: Duration::from_millis(1001),
            ..ok()
        };
        assert!(just.check().is_ok());
    }
}
