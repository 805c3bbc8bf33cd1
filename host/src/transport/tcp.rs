//! TCP: listening sockets and connections, tuned for small frames (`TCP_NODELAY`), dead peers
//! (keepalive) and devices that never read (a bounded send buffer on accepted connections).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::Stream;

/// The kernel's send buffer of an accepted connection, bytes (Linux doubles it for its own
/// bookkeeping). A listener sends devices only acknowledgements and short commands, so this
/// is ample; it bounds the kernel memory a device that never reads can pin (otherwise up to
/// `tcp_wmem`'s maximum, 4 MiB) and makes such a device's connection back up within seconds,
/// so the listener's write time-out drops it.
pub const ACCEPTED_SEND_BUFFER: usize = 32 * 1024;

/// A bound TCP socket.
pub(super) struct Listener(TcpListener);

impl Listener {
    pub(super) async fn bind(addr: SocketAddr) -> io::Result<(Listener, SocketAddr)> {
        let s = TcpListener::bind(addr).await?;
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
