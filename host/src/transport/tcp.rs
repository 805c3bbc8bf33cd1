//! TCP: listening sockets and connections, tuned for small frames (`TCP_NODELAY`), dead peers
//! (keepalive) and devices that never read (a bounded send buffer on accepted connections).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::Stream;

/// The kernel's send buffer of an accepted connection, bytes (Linux doubles it for its own
/// bookkeeping). A listener sends devices only acknowledgements and short commands, so this
/// is ample; it bounds the kernel memory a device that never reads can pin (otherwise up to
/// `tcp_wmem`'s maximum, 4 MiB) and makes such a device's connection back up within seconds,
/// so the listener's write time-out drops it.
pub const ACCEPTED_SEND_BUFFER: usize = 32 * 1024;

/// Connections the kernel completes before the listener accepts them (capped by
/// `net.core.somaxconn`, 4,096 on current kernels). At tokio's default of 1,024, 10,000
/// devices connecting at once overflowed it: the kernel dropped their handshakes' last
/// packets and some waited for its retries longer than a device's 5 s to hear a WELCOME
/// (tether-bench's 10,000-device run).
const ACCEPT_BACKLOG: u32 = 4096;

/// A bound TCP socket.
pub(super) struct Listener(TcpListener);

impl Listener {
    pub(super) async fn bind(addr: SocketAddr) -> io::Result<(Listener, SocketAddr)> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As TcpListener::bind does, but with room for a fleet that connects at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let s = socket.listen(ACCEPT_BACKLOG)?;
        let local = s.local_addr()?;
        Ok((Listener(s), local))
    }

    pub(super) async fn accept(&self) -> io::Result<(Stream, String)> {
        let (s, peer) = self.0.accept().await?;
        tune(&s);
        let _ = socket2::SockRef::from(&s).set_send_buffer_size(ACCEPTED_SEND_BUFFER);
        Ok((Box::new(s), peer.to_string()))
    }
}

pub(super) async fn connect(addr: SocketAddr) -> io::Result<Stream> {
    let s = TcpStream::connect(addr).await?;
    tune(&s);
    Ok(Box::new(s))
}

fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    crate::tcp_keepalive(s);
}
