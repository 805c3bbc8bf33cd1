//! Endpoints as URLs: `tcp://127.0.0.1:5003`, `tcp://[::1]:5003`, and Bluetooth RFCOMM:
//!
//! - `rfcomm://hci0/1`: listen on adapter `hci0`, channel 1;
//! - `rfcomm:///1`: listen on the default adapter (`hci0` if present), channel 1;
//! - `rfcomm://AA:BB:CC:DD:EE:FF/1`: connect to that device, channel 1 (from any adapter);
//! - `rfcomm://hci1/AA:BB:CC:DD:EE:FF/1`: the same from adapter `hci1`.
//!
//! Serial lines: `serial:///dev/ttyACM0` (115200 8N1 unless told otherwise:
//! `serial:///dev/ttyUSB0?baud=921600&parity=even&stop=2&data=7&flow=rtscts`). A serial port is
//! both ends' endpoint: a listener opens it and serves the one link on it, a sender opens it
//! and talks.
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
    /// A serial line (UART, USB CDC): `serial:///dev/ttyACM0?baud=115200`.
    Serial(Serial),
    /// In-process pipes under a name (`memory://NAME`), for tests: made by code, never parsed
    /// from a URL.
    Memory(String),
}

/// A serial port and its line settings. Defaults: 115200 baud, 8 data bits, no parity, 1 stop
/// bit, no flow control (8N1), the settings of most boards' USB and UART consoles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serial {
    /// The device: `/dev/ttyACM0`, `/dev/ttyUSB0`, `/dev/serial0`, `/dev/serial/by-id/…`.
    pub path: String,
    /// Bits per second.
    pub baud: u32,
    /// Data bits, 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow: Flow,
}

/// A serial line's parity bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit (`parity=none`).
    None,
    /// Even (`parity=even`).
    Even,
    /// Odd (`parity=odd`).
    Odd,
}

/// A serial line's flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// None (`flow=none`).
    None,
    /// Hardware, RTS/CTS (`flow=rtscts`).
    RtsCts,
}

impl Serial {
    /// `path` at the defaults (115200 8N1, no flow control).
    pub fn new(path: impl Into<String>) -> Serial {
        Serial {
            path: path.into(),
            baud: 115_200,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow: Flow::None,
        }
    }
}

/// `serial://PATH?OPTION=VALUE&…` after the scheme: an absolute device path, then `baud`,
/// `data` (5-8), `parity` (none, even, odd), `stop` (1, 2), `flow` (none, rtscts).
fn parse_serial(rest: &str) -> Result<Endpoint, EndpointError> {
    let bad = |why: String| EndpointError::BadSerial(why);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '&', '#']) {
        return Err(bad(format!(
            "`{path}` is not a device path: write serial:///dev/ttyACM0 (three slashes: the \
             path is absolute)"
        )));
    }
    let mut s = Serial::new(path);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("`{pair}` is not OPTION=VALUE")))?;
        match key {
            "baud" => {
                s.baud = value
                    .parse()
                    .ok()
                    .filter(|b| (50..=4_000_000).contains(b))
                    .ok_or_else(|| {
                        bad(format!(
                            "baud `{value}` is not a rate in bits per second from 50 to 4000000 \
                             (e.g. baud=115200)"
                        ))
                    })?
            }
            "data" => {
                s.data_bits = value
                    .parse()
                    .ok()
                    .filter(|b| (5..=8).contains(b))
                    .ok_or_else(|| bad(format!("data bits `{value}`: 5, 6, 7 or 8")))?
            }
            "parity" => {
                s.parity = match value {
                    "none" => Parity::None,
                    "even" => Parity::Even,
                    "odd" => Parity::Odd,
                    _ => return Err(bad(format!("parity `{value}`: none, even or odd"))),
                }
            }
            "stop" => {
                s.stop_bits = match value {
                    "1" => 1,
                    "2" => 2,
                    _ => return Err(bad(format!("stop bits `{value}`: 1 or 2"))),
                }
            }
            "flow" => {
                s.flow = match value {
                    "none" => Flow::None,
                    "rtscts" => Flow::RtsCts,
                    _ => return Err(bad(format!("flow control `{value}`: none or rtscts"))),
                }
            }
            _ => {
                return Err(bad(format!(
                    "unknown option `{key}`: baud, data, parity, stop or flow"
                )))
            }
        }
    }
    Ok(Endpoint::Serial(s))
}

impl fmt::Display for Serial {
    /// The path, then the options that differ from the defaults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = Serial::new("");
        write!(f, "serial://{}", self.path)?;
        let mut sep = '?';
        let mut opt = |f: &mut fmt::Formatter<'_>, text: String| {
            let r = write!(f, "{sep}{text}");
            sep = '&';
            r
        };
        if self.baud != d.baud {
            opt(f, format!("baud={}", self.baud))?;
        }
        if self.data_bits != d.data_bits {
            opt(f, format!("data={}", self.data_bits))?;
        }
        if self.parity != d.parity {
            opt(
                f,
                format!(
                    "parity={}",
                    if self.parity == Parity::Even {
                        "even"
                    } else {
                        "odd"
                    }
                ),
            )?;
        }
        if self.stop_bits != d.stop_bits {
            opt(f, format!("stop={}", self.stop_bits))?;
        }
        if self.flow != d.flow {
            opt(f, "flow=rtscts".to_owned())?;
        }
        Ok(())
    }
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
    #[error("unknown scheme `{0}://`: use tcp://ADDRESS:PORT, rfcomm://… or serial:///dev/…")]
    UnknownScheme(String),
    /// A `serial://` endpoint that is not understood.
    #[error("{0}")]
    BadSerial(String),
    /// The address part is not `IP:PORT`.
    #[error("`{0}` is not IP:PORT (IPv6 in brackets: [::1]:5003)")]
    BadAddress(String),
    /// The port is not a number from 0 to 65535.
    #[error("port `{0}` is out of range: ports are 0 to 65535")]
    BadPort(String),
    /// A host name other than `localhost`.
    #[error(
        "host names are not resolved (`{0}`): give an IP address, e.g. tcp://192.0.2.10:5003 \
         (localhost is understood as 127.0.0.1)"
    )]
    HostName(String),
    /// An endpoint to listen on where one to connect to is needed.
    #[error("cannot connect to {endpoint}: {why}")]
    NotDialable {
        /// The endpoint given.
        endpoint: String,
        /// What is wrong with it, and what to write instead.
        why: String,
    },
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

/// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT` (127.0.0.1: resolved here, so that the
/// same text means the same address everywhere and parsing never waits on a name server).
fn parse_tcp(addr: &str) -> Result<SocketAddr, EndpointError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = || EndpointError::BadAddress(addr.to_owned());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let port: Result<u16, _> = port.parse();
    let is_ip = host.parse::<std::net::Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| {
                h.split('%')
                    .next()
                    .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
            });
    let name = host.eq_ignore_ascii_case("localhost");
    match port {
        Err(_) if is_ip || name => Err(EndpointError::BadPort(
            addr.rsplit(':').next().unwrap_or_default().to_owned(),
        )),
        Ok(port) if name => Ok(SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port)),
        _ if !is_ip
            && host.bytes().any(|c| c.is_ascii_alphabetic())
            && host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.') =>
        {
            Err(EndpointError::HostName(host.to_owned()))
        }
        _ => Err(bad()),
    }
}

impl Endpoint {
    /// Whether a connection can be made to this endpoint (`tether send`, `tether sim`, the
    /// bridge's listener): not a listening form (`rfcomm://hci0/1`), not port 0, not an
    /// unspecified address (`0.0.0.0`, `[::]`). A usage error, not worth retrying.
    pub fn check_dialable(&self) -> Result<(), EndpointError> {
        let why = match self {
            Endpoint::Tcp(a) if a.port() == 0 => "port 0 is for listening (the system picks a port); give the listener's port".to_owned(),
            Endpoint::Tcp(a) if a.ip().is_unspecified() => format!(
                "{} means every local address, for listening; give the listener's address, e.g. tcp://127.0.0.1:{}",
                a.ip(),
                a.port()
            ),
            Endpoint::Rfcomm {
                addr: None,
                channel,
                ..
            } => format!(
                "it is a listening endpoint; name the device to connect to: rfcomm://AA:BB:CC:DD:EE:FF/{channel}"
            ),
            _ => return Ok(()),
        };
        Err(EndpointError::NotDialable {
            endpoint: self.to_string(),
            why,
        })
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| EndpointError::NoScheme(s.to_owned()))?;
        match scheme.to_ascii_lowercase().as_str() {
            "tcp" => parse_tcp(rest.trim_end_matches('/')).map(Endpoint::Tcp),
            "rfcomm" => parse_rfcomm(rest),
            "serial" => parse_serial(rest),
            other => Err(EndpointError::UnknownScheme(other.to_owned())),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Memory(name) => write!(f, "memory://{name}"),
            Endpoint::Serial(s) => s.fmt(f),
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
            "tcp://localhost:5003".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:5003".parse().unwrap()))
        );
        assert_eq!(
            "tcp://example.org:5003".parse::<Endpoint>(),
            Err(EndpointError::HostName("example.org".into()))
        );
        for port in ["65536", "99999999999"] {
            for host in ["127.0.0.1", "[::1]", "localhost"] {
                let e = format!("tcp://{host}:{port}").parse::<Endpoint>();
                assert_eq!(e, Err(EndpointError::BadPort(port.into())), "{host}:{port}");
                let msg = e.unwrap_err().to_string();
                assert!(msg.contains("out of range: ports are 0 to 65535"), "{msg}");
            }
        }
        for garbage in ["1.2.3:80", "127.0.0.1", "[::1:80", "127.0.0.1:x", ":80"] {
            assert_eq!(
                format!("tcp://{garbage}").parse::<Endpoint>(),
                Err(EndpointError::BadAddress(garbage.into()))
            );
        }
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

    #[test]
    fn listening_forms_are_refused_where_a_connection_is_made() {
        for (text, says) in [
            ("tcp://127.0.0.1:0", "port 0 is for listening"),
            ("tcp://0.0.0.0:5003", "every local address"),
            ("tcp://[::]:5003", "every local address"),
            ("rfcomm://hci0/1", "it is a listening endpoint"),
            ("rfcomm:///1", "it is a listening endpoint"),
        ] {
            let e: Endpoint = text.parse().unwrap();
            let msg = e.check_dialable().unwrap_err().to_string();
            assert!(msg.contains(says), "{text}: {msg}");
        }
        for text in [
            "tcp://127.0.0.1:5003",
            "tcp://[::1]:1",
            "rfcomm://AA:BB:CC:DD:EE:FF/1",
        ] {
            let e: Endpoint = text.parse().unwrap();
            assert_eq!(e.check_dialable(), Ok(()), "{text}");
        }
    }
}
