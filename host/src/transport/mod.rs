//! The byte streams under the link, as one stream type, so that `listen`, `send`, `sim` and
//! `bridge` run the same sessions, resume, CSV and statistics over any of them: the transport
//! is the only difference.
//!
//! One module per transport: `tcp`, RFCOMM (feature `bluetooth`, in [`crate::bluetooth`]),
//! [`serial`] (feature `serial`) and `memory` (in-process pipes, for tests). A new transport is a module with a listener
//! (`bind`, `accept`) and a `connect`, registered in [`Acceptor::bind`], [`Acceptor::accept`],
//! [`connect`] and [`connect_timeout`], and a scheme in [`crate::endpoint`].

mod memory;
#[cfg(feature = "serial")]
pub mod serial;
mod tcp;

pub use tcp::ACCEPTED_SEND_BUFFER;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::bluetooth::BluetoothError;
use crate::endpoint::Endpoint;

/// What a connection is to the link: bytes in, bytes out.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> Io for T {}

/// A connection over any transport.
pub type Stream = Box<dyn Io>;

/// Why a transport could not listen or connect.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket could not be bound.
    #[error("cannot listen on {endpoint}: {source}")]
    Bind {
        /// Where.
        endpoint: Endpoint,
        /// What the system said.
        source: io::Error,
    },
    /// A connection could not be made.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: Endpoint,
        /// What the system said.
        source: io::Error,
    },
    /// Connecting took too long.
    #[error("connecting to {0} timed out")]
    Timeout(Endpoint),
    /// Bluetooth is not usable, or the device could not be reached; the message says what to
    /// do.
    #[error(transparent)]
    Bluetooth(#[from] BluetoothError),
    /// A serial port could not be opened; the message says why and what to do.
    #[cfg(feature = "serial")]
    #[error(transparent)]
    Serial(#[from] serial::SerialError),
    /// This build has no support for the endpoint's transport.
    #[error("this tether was built without {0} support (cargo feature `{0}`)")]
    NotBuilt(&'static str),
}

impl TransportError {
    /// Whether trying again cannot help (no adapter, bluetoothd not running, permission
    /// denied…), as opposed to a peer that may come back (refused, host down, time-out).
    pub fn is_permanent(&self) -> bool {
        match self {
            TransportError::Bluetooth(e) => e.is_permanent(),
            // A port that is not there may be plugged in; one refused for a setting, a
            // permission or another program holding it stays refused.
            #[cfg(feature = "serial")]
            TransportError::Serial(e) => !e.is_gone(),
            TransportError::NotBuilt(_) => true,
            _ => false,
        }
    }
}

/// The listening side of each transport: one module each, registered here.
enum Kind {
    Tcp(tcp::Listener),
    #[cfg(feature = "bluetooth")]
    Rfcomm(crate::bluetooth::RfcommAcceptor),
    Memory(memory::Listener),
    #[cfg(feature = "serial")]
    Serial(serial::Listener),
}

/// A bound endpoint that accepts connections.
pub struct Acceptor {
    kind: Kind,
    local: Endpoint,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Acceptor({})", self.local)
    }
}

impl Acceptor {
    /// Binds `endpoint`: a TCP socket, an RFCOMM channel on a powered adapter that is made
    /// connectable, or an in-memory name.
    pub async fn bind(endpoint: &Endpoint) -> Result<Acceptor, TransportError> {
        let bind = |source| TransportError::Bind {
            endpoint: endpoint.clone(),
            source,
        };
        match endpoint {
            Endpoint::Tcp(addr) => {
                let (l, local) = tcp::Listener::bind(*addr).await.map_err(bind)?;
                Ok(Acceptor {
                    kind: Kind::Tcp(l),
                    local: Endpoint::Tcp(local),
                })
            }
            Endpoint::Rfcomm {
                adapter,
                addr: None,
                channel,
            } => {
                #[cfg(feature = "bluetooth")]
                {
                    let a = crate::bluetooth::RfcommAcceptor::bind(adapter.as_deref(), *channel)
                        .await?;
                    let local = Endpoint::Rfcomm {
                        adapter: Some(a.adapter().to_owned()),
                        addr: None,
                        channel: *channel,
                    };
                    Ok(Acceptor {
                        kind: Kind::Rfcomm(a),
                        local,
                    })
                }
                #[cfg(not(feature = "bluetooth"))]
                {
                    let _ = (adapter, channel);
                    Err(BluetoothError::NotBuilt.into())
                }
            }
            Endpoint::Rfcomm { addr: Some(_), .. } => Err(bind(io::Error::new(
                io::ErrorKind::InvalidInput,
                "that is a device to connect to; to listen, name an adapter and a channel \
                 (rfcomm://hci0/1, or rfcomm:///1 for the default adapter)",
            ))),
            Endpoint::Memory(name) => Ok(Acceptor {
                kind: Kind::Memory(memory::Listener::bind(name).map_err(bind)?),
                local: endpoint.clone(),
            }),
            #[cfg(feature = "serial")]
            Endpoint::Serial(port) => Ok(Acceptor {
                kind: Kind::Serial(serial::Listener::bind(port)?),
                local: endpoint.clone(),
            }),
            #[cfg(not(feature = "serial"))]
            Endpoint::Serial(_) => Err(TransportError::NotBuilt("serial")),
        }
    }

    /// Where it listens (TCP: with the port the system chose for port 0; RFCOMM: with the
    /// adapter's name).
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// The TCP address bound, if this is TCP.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self.local {
            Endpoint::Tcp(a) => Some(a),
            _ => None,
        }
    }

    /// For people: where it listens, with the Bluetooth address devices connect to.
    pub fn describe(&self) -> String {
        match &self.kind {
            #[cfg(feature = "bluetooth")]
            Kind::Rfcomm(a) => format!(
                "{} (devices connect to rfcomm://{}/{})",
                self.local,
                a.address(),
                a.channel()
            ),
            _ => self.local.to_string(),
        }
    }

    /// The next connection and its peer's address, for logs. TCP connections get
    /// `TCP_NODELAY`, keepalive and a bounded send buffer.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match &self.kind {
            Kind::Tcp(l) => l.accept().await,
            #[cfg(feature = "bluetooth")]
            Kind::Rfcomm(a) => {
                let (s, peer) = a.accept().await?;
                Ok((Box::new(s), peer))
            }
            Kind::Memory(l) => l.accept().await,
            #[cfg(feature = "serial")]
            Kind::Serial(l) => l.accept().await,
        }
    }
}

/// How long a connection attempt to `endpoint` may take: RFCOMM pages the device first,
/// which takes longer than a TCP handshake. The one place these time-outs are set.
pub fn connect_timeout(endpoint: &Endpoint) -> Duration {
    match endpoint {
        Endpoint::Rfcomm { .. } => Duration::from_secs(15),
        Endpoint::Tcp(_) | Endpoint::Memory(_) | Endpoint::Serial(_) => Duration::from_secs(5),
    }
}

/// Connects to `endpoint` within `timeout` ([`connect_timeout`] is each transport's own).
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Stream, TransportError> {
    let failed = |source| TransportError::Connect {
        endpoint: endpoint.clone(),
        source,
    };
    let attempt = async {
        match endpoint {
            Endpoint::Tcp(addr) => tcp::connect(*addr).await.map_err(failed),
            Endpoint::Rfcomm {
                addr: None,
                adapter,
                channel,
            } => Err(failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "name the device to connect to: rfcomm://AA:BB:CC:DD:EE:FF/{channel} \
                     (`{}` is a listening endpoint)",
                    Endpoint::Rfcomm {
                        adapter: adapter.clone(),
                        addr: None,
                        channel: *channel
                    }
                ),
            ))),
            Endpoint::Rfcomm {
                addr: Some(addr),
                adapter,
                channel,
            } => {
                #[cfg(feature = "bluetooth")]
                {
                    let s = crate::bluetooth::connect(adapter.as_deref(), *addr, *channel).await?;
                    Ok(Box::new(s) as Stream)
                }
                #[cfg(not(feature = "bluetooth"))]
                {
                    let _ = (addr, adapter, channel);
                    Err(BluetoothError::NotBuilt.into())
                }
            }
            Endpoint::Memory(name) => memory::connect(name).map_err(failed),
            #[cfg(feature = "serial")]
            Endpoint::Serial(port) => Ok(Box::new(serial::open(port)?) as Stream),
            #[cfg(not(feature = "serial"))]
            Endpoint::Serial(_) => Err(TransportError::NotBuilt("serial")),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| TransportError::Timeout(endpoint.clone()))?
}

/// How [`write_or_stall`] ended.
#[derive(Debug)]
pub enum Written {
    /// All of it.
    All,
    /// The connection failed.
    Failed(io::Error),
    /// The peer read nothing for the whole limit: its connection backed up.
    Stalled,
}

/// Writes all of `out` to a peer, giving one that does not read (so that our writes back
/// up) as long as a silent one gets, `limit`: a peer cannot hold a connection and its buffers
/// forever by never reading.
pub async fn write_or_stall(stream: &mut Stream, out: &[u8], limit: Duration) -> Written {
    use tokio::io::AsyncWriteExt;
    match tokio::time::timeout(limit, stream.write_all(out)).await {
        Ok(Ok(())) => Written::All,
        Ok(Err(e)) => Written::Failed(e),
        Err(_) => Written::Stalled,
    }
}

/// Accepts on every socket, each in a task of `tasks`, until `stop` changes; each new
/// connection and its peer's name come out of the returned channel. An accept error (out of
/// descriptors, say) is logged and waits 100 ms rather than spin.
pub fn accept_all(
    sockets: Vec<Acceptor>,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> tokio::sync::mpsc::Receiver<(Stream, String)> {
    let (accepted_tx, accepted) = tokio::sync::mpsc::channel::<(Stream, String)>(64);
    for socket in sockets {
        let tx = accepted_tx.clone();
        let mut stop = stop.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    r = socket.accept() => match r {
                        Ok(pair) => { if tx.send(pair).await.is_err() { break } }
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
        });
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_accepts_and_connects_as_one_stream_type() {
        let a = Acceptor::bind(&"tcp://127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let at = Endpoint::Tcp(a.tcp_addr().unwrap());
        let (mut c, accepted) = tokio::join!(connect(&at, Duration::from_secs(5)), a.accept());
        let (mut s, peer) = accepted.unwrap();
        assert!(peer.starts_with("127.0.0.1:"));
        c.as_mut().unwrap().write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
    }

    #[tokio::test]
    async fn rfcomm_endpoints_used_the_wrong_way_round_say_so() {
        let device: Endpoint = "rfcomm://AA:BB:CC:DD:EE:FF/1".parse().unwrap();
        let e = Acceptor::bind(&device).await.unwrap_err().to_string();
        assert!(e.contains("rfcomm://hci0/1"), "{e}");
        let listening: Endpoint = "rfcomm://hci0/4".parse().unwrap();
        let e = match connect(&listening, Duration::from_secs(1)).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("connected to a listening endpoint"),
        };
        assert!(e.contains("rfcomm://AA:BB:CC:DD:EE:FF/4"), "{e}");
    }
}
