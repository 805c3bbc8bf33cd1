//! In-memory connections within one process, for tests of sessions, resume and limits that
//! need no sockets: `Endpoint::Memory("name")` listens under a name, and a connection to
//! that name is a pair of `tokio::io::duplex` pipes. A cut is dropping one end.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, Mutex as AsyncMutex};

use super::Stream;

/// Bytes buffered in each direction of a connection, as a socket's buffers would.
const PIPE: usize = 64 * 1024;

type Incoming = mpsc::UnboundedSender<(Stream, String)>;

/// The names listened on in this process.
static NAMES: Mutex<Option<HashMap<String, Incoming>>> = Mutex::new(None);
/// Numbers the connections, for their peer names.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fn names() -> std::sync::MutexGuard<'static, Option<HashMap<String, Incoming>>> {
    NAMES.lock().unwrap_or_else(|e| e.into_inner())
}

/// A name listened on; dropping it frees the name.
pub(super) struct Listener {
    name: String,
    incoming: AsyncMutex<mpsc::UnboundedReceiver<(Stream, String)>>,
}

impl Listener {
    pub(super) fn bind(name: &str) -> io::Result<Listener> {
        let mut names = names();
        let map = names.get_or_insert_with(HashMap::new);
        if map.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("memory://{name} is already listened on"),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        map.insert(name.to_owned(), tx);
        Ok(Listener {
            name: name.to_owned(),
            incoming: AsyncMutex::new(rx),
        })
    }

    pub(super) async fn accept(&self) -> io::Result<(Stream, String)> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "listener closed"))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(map) = names().as_mut() {
            map.remove(&self.name);
        }
    }
}

pub(super) fn connect(name: &str) -> io::Result<Stream> {
    let refused = || {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("nothing listens on memory://{name}"),
        )
    };
    let names = names();
    let tx = names
        .as_ref()
        .and_then(|m| m.get(name))
        .ok_or_else(refused)?;
    let (client, server) = tokio::io::duplex(PIPE);
    let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
    tx.send((Box::new(server), format!("memory-client-{n}")))
        .map_err(|_| refused())?;
    Ok(Box::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_name_accepts_connections_until_dropped_and_is_taken_once() {
        let l = Listener::bind("unit-a").unwrap();
        assert_eq!(
            Listener::bind("unit-a").err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
        let mut c = connect("unit-a").unwrap();
        let (mut s, peer) = l.accept().await.unwrap();
        assert!(peer.starts_with("memory-client-"));
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        drop(c);
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            0,
            "a dropped end is a closed connection"
        );
        drop(l);
        assert_eq!(
            connect("unit-a").err().map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );
    }
}
