//! Endpoints as URLs: `tcp://127.0.0.1:5003`, `tcp://[::1]:5003`, and Bluetooth RFCOMM:
//!
//! - `rfcomm://hci0/1`: listen on adapter `hci0`, channel 1;
//! - `rfcomm:///1`: listen on the default adapter (`hci0` if present), channel 1;
//! - `rfcomm://AA:BB:CC:DD:EE:FF/1`: connect to that device, channel 1 (from any adapter);
//! - `rfcomm://hci1/AA:BB:CC:DD:EE:FF/1`: the same from adapter `hci1`.
//!
//! Channels are 1 to 30. Parsing never needs Bluetooth; using an `rfcomm://` endpoint needs a
//! build with the `bluetooth` feature (the default).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Where to listen or connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP at a literal socket address.
    Tcp(SocketAddr),
    /// Bluetooth RFCOMM through BlueZ.
    Rfcomm {
        /// The local adapter (`hci0`); `None` for the default one.
        adapter: Option<String>,
        /// The remote device to connect to; `None` to listen.
        addr: Option<BdAddr>,
        /// The RFCOMM channel, 1 to 30.
        channel: u8,
    },
}

/// A Bluetooth device address, `AA:BB:CC:DD:EE:FF` (most significant byte first, as printed
/// by `bluetoothctl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BdAddr(pub [u8; 6]);

impl FromStr for BdAddr {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or(())?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(BdAddr(out))
    }
}

impl fmt::Display for BdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Why an endpoint URL was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No `scheme://`.
    #[error(
        "`{0}` is not an endpoint URL: write it as tcp://ADDRESS:PORT, e.g. tcp://127.0.0.1:5003, \
         or rfcomm://[ADAPTER]/CHANNEL to listen, rfcomm://AA:BB:CC:DD:EE:FF/CHANNEL to connect"
    )]
    NoScheme(String),
    /// A scheme this build does not know.
    #[error("unknown scheme `{0}://`: use tcp://ADDRESS:PORT or rfcomm://…")]
    UnknownScheme(String),
    /// The address part is not `IP:PORT`.
    #[error("`{0}` is not IP:PORT (IPv6 in brackets: [::1]:5003); host names are not resolved")]
    BadAddress(String),
    /// The part after `rfcomm://` is not understood.
    #[error(
        "`{0}` is not an RFCOMM endpoint: write rfcomm://hci0/1 or rfcomm:///1 (default adapter) \
         to listen, rfcomm://AA:BB:CC:DD:EE:FF/1 (optionally rfcomm://hci1/AA:BB:CC:DD:EE:FF/1) \
         to connect"
    )]
    BadRfcomm(String),
    /// The RFCOMM channel is not 1 to 30.
    #[error("RFCOMM channel `{0}` is out of range: channels are 1 to 30")]
    BadChannel(String),
}

/// An adapter name as BlueZ has them (`hci0`): letters, digits, `_` and `-`.
fn adapter_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn parse_rfcomm(rest: &str) -> Result<Endpoint, EndpointError> {
    let bad = || EndpointError::BadRfcomm(rest.to_owned());
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let (adapter, addr, channel) = match parts.as_slice() {
        [first, channel] => {
            if first.is_empty() {
                (None, None, *channel)
            } else if let Ok(a) = first.parse::<BdAddr>() {
                (None, Some(a), *channel)
            } else if adapter_name(first) {
                (Some(first.to_string()), None, *channel)
            } else {
                return Err(bad());
            }
        }
        [adapter, addr, channel] => {
            if !adapter_name(adapter) {
                return Err(bad());
            }
            let a = addr.parse::<BdAddr>().map_err(|_| bad())?;
            (Some(adapter.to_string()), Some(a), *channel)
        }
        _ => return Err(bad()),
    };
    if channel.is_empty() || !channel.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    match channel.parse::<u8>() {
        Ok(c @ 1..=30) => Ok(Endpoint::Rfcomm {
            adapter,
            addr,
            channel: c,
        }),
        _ => Err(EndpointError::BadChannel(channel.to_owned())),
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| EndpointError::NoScheme(s.to_owned()))?;
        match scheme.to_ascii_lowercase().as_str() {
            "tcp" => {
                let addr = rest.trim_end_matches('/');
                addr.parse::<SocketAddr>()
                    .map(Endpoint::Tcp)
                    .map_err(|_| EndpointError::BadAddress(addr.to_owned()))
            }
            "rfcomm" => parse_rfcomm(rest),
            other => Err(EndpointError::UnknownScheme(other.to_owned())),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Rfcomm {
                adapter,
                addr,
                channel,
            } => {
                write!(f, "rfcomm://")?;
                match (adapter, addr) {
                    (None, None) => write!(f, "/{channel}"),
                    (Some(ad), None) => write!(f, "{ad}/{channel}"),
                    (None, Some(a)) => write!(f, "{a}/{channel}"),
                    (Some(ad), Some(a)) => write!(f, "{ad}/{a}/{channel}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6_and_refuses_the_rest_clearly() {
        assert_eq!(
            "tcp://127.0.0.1:5003".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:5003".parse().unwrap()))
        );
        assert_eq!(
            "TCP://[::1]:5003/".parse(),
            Ok(Endpoint::Tcp("[::1]:5003".parse().unwrap()))
        );
        assert_eq!(
            "127.0.0.1:5003".parse::<Endpoint>(),
            Err(EndpointError::NoScheme("127.0.0.1:5003".into()))
        );
        assert_eq!(
            "udp://127.0.0.1:1".parse::<Endpoint>(),
            Err(EndpointError::UnknownScheme("udp".into()))
        );
        assert_eq!(
            "tcp://localhost:5003".parse::<Endpoint>(),
            Err(EndpointError::BadAddress("localhost:5003".into()))
        );
        let e: Endpoint = "tcp://[::1]:9".parse().unwrap();
        assert_eq!(e.to_string(), "tcp://[::1]:9");
    }

    #[test]
    fn rfcomm_forms_parse_print_back_and_refuse_the_rest_clearly() {
        let dev = BdAddr([0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0x0F]);
        let cases: &[(&str, Endpoint, &str)] = &[
            (
                "rfcomm://hci0/1",
                Endpoint::Rfcomm {
                    adapter: Some("hci0".into()),
                    addr: None,
                    channel: 1,
                },
                "rfcomm://hci0/1",
            ),
            (
                "rfcomm:///30",
                Endpoint::Rfcomm {
                    adapter: None,
                    addr: None,
                    channel: 30,
                },
                "rfcomm:///30",
            ),
            (
                "RFCOMM://aa:bb:cc:dd:ee:0f/3/",
                Endpoint::Rfcomm {
                    adapter: None,
                    addr: Some(dev),
                    channel: 3,
                },
                "rfcomm://AA:BB:CC:DD:EE:0F/3",
            ),
            (
                "rfcomm://hci1/AA:BB:CC:DD:EE:0F/2",
                Endpoint::Rfcomm {
                    adapter: Some("hci1".into()),
                    addr: Some(dev),
                    channel: 2,
                },
                "rfcomm://hci1/AA:BB:CC:DD:EE:0F/2",
            ),
        ];
        for (text, want, shown) in cases {
            let e: Endpoint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(&e, want, "{text}");
            assert_eq!(e.to_string(), *shown);
            assert_eq!(shown.parse::<Endpoint>().as_ref(), Ok(want));
        }
        for bad in [
            "rfcomm://",
            "rfcomm://1",
            "rfcomm://hci0",
            "rfcomm://hci0/x",
            "rfcomm://hci 0/1",
            "rfcomm://AA:BB:CC:DD:EE/1",
            "rfcomm://AA:BB:CC:DD:EE:FF:00/1",
            "rfcomm://hci0/hci1/1",
            "rfcomm://hci0/AA:BB:CC:DD:EE:FF/1/2",
            "rfcomm://hci0/+1",
        ] {
            assert!(
                matches!(bad.parse::<Endpoint>(), Err(EndpointError::BadRfcomm(_))),
                "{bad}: {:?}",
                bad.parse::<Endpoint>()
            );
        }
        for bad in [
            "rfcomm:///0",
            "rfcomm://hci0/31",
            "rfcomm://AA:BB:CC:DD:EE:FF/300",
        ] {
            assert!(
                matches!(bad.parse::<Endpoint>(), Err(EndpointError::BadChannel(_))),
                "{bad}"
            );
        }
        let msg = "rfcomm://hci0".parse::<Endpoint>().unwrap_err().to_string();
        assert!(msg.contains("rfcomm://hci0/1"), "{msg}");
    }
}
