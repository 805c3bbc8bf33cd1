//! Endpoints as URLs: `tcp://127.0.0.1:5003`, `tcp://[::1]:5003`, and (with the Bluetooth
//! work) `rfcomm://…`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Where to listen or connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP at a literal socket address.
    Tcp(SocketAddr),
}

/// Why an endpoint URL was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No `scheme://`.
    #[error(
        "`{0}` is not an endpoint URL: write it as tcp://ADDRESS:PORT, e.g. tcp://127.0.0.1:5003"
    )]
    NoScheme(String),
    /// A scheme this build does not know.
    #[error("unknown scheme `{0}://`: use tcp://ADDRESS:PORT")]
    UnknownScheme(String),
    /// `rfcomm://` is recognised but not available yet.
    #[error("rfcomm:// endpoints are not supported by this build yet; use tcp://ADDRESS:PORT")]
    RfcommUnsupported,
    /// The address part is not `IP:PORT`.
    #[error("`{0}` is not IP:PORT (IPv6 in brackets: [::1]:5003); host names are not resolved")]
    BadAddress(String),
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
            "rfcomm" => Err(EndpointError::RfcommUnsupported),
            other => Err(EndpointError::UnknownScheme(other.to_owned())),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
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
        assert_eq!(
            "rfcomm://AA:BB:CC:DD:EE:FF/1".parse::<Endpoint>(),
            Err(EndpointError::RfcommUnsupported)
        );
        let e: Endpoint = "tcp://[::1]:9".parse().unwrap();
        assert_eq!(e.to_string(), "tcp://[::1]:9");
    }
}
