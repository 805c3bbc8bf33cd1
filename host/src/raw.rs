//! The tutorial's raw protocol, for its existing scripts: on connect the server sends
//! "Connection established"; each chunk the client sends (the tutorial reads 32 bytes at a
//! time) is appended to the CSV as one row and answered with "data received", which tells
//! the client to send the next.
//!
//! It has none of Tether's guarantees (no framing, no integrity check, no resume): it is
//! here so that the tutorial's clients and servers work against `tether` unchanged.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::endpoint::Endpoint;
use crate::sink::{Batch, Sink, SinkError};
use crate::transport::{Stream, TransportError};

/// The greeting the tutorial's server sends.
pub const GREETING: &[u8] = b"Connection established";
/// The acknowledgement the tutorial's server sends after each chunk.
pub const ACK: &[u8] = b"data received";
/// The tutorial's chunk size.
pub const CHUNK: usize = 32;

/// Serves one raw connection: greeting, then chunk → CSV row → acknowledgement, until the
/// client closes. The device column is the client's address; `seq` counts its chunks.
pub async fn serve(
    mut stream: Stream,
    peer: &str,
    sink: &std::sync::Mutex<Box<dyn Sink>>,
    idle: Duration,
) -> Result<u64, SinkError> {
    if stream.write_all(GREETING).await.is_err() {
        return Ok(0);
    }
    let mut buf = [0u8; CHUNK];
    let mut seq = 0u32;
    loop {
        let n = match tokio::time::timeout(idle, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                info!(%peer, "raw client silent for {idle:?}: closing");
                break;
            }
            Ok(Ok(n)) => n,
        };
        {
            let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
            let mut batch = Batch::new(&mut **s);
            batch.write_text(SystemTime::now(), peer, seq, &buf[..n])?;
            batch.commit()?;
        }
        seq = seq.wrapping_add(1);
        if stream.write_all(ACK).await.is_err() {
            break;
        }
    }
    debug!(%peer, "raw client done after {seq} chunks");
    Ok(u64::from(seq))
}

/// Why a raw send failed.
#[derive(Debug, thiserror::Error)]
pub enum RawSendError {
    /// No connection could be made.
    #[error(transparent)]
    Connect(#[from] TransportError),
    /// Connecting, reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What the system said.
        source: std::io::Error,
    },
    /// The server closed the connection before acknowledging a chunk.
    #[error("the server closed the connection after {acked} chunks were acknowledged")]
    Closed {
        /// Chunks acknowledged.
        acked: u64,
    },
}

/// Sends each line of `input` to a tutorial-style server in chunks of at most 32 bytes,
/// waiting for the server's answer (any bytes) after each; returns the chunks sent.
pub async fn send<R: AsyncBufRead + Unpin>(
    endpoint: &Endpoint,
    input: R,
) -> Result<u64, RawSendError> {
    let io = |what| move |source| RawSendError::Io { what, source };
    let mut stream = crate::transport::connect(endpoint, Duration::from_secs(10)).await?;
    let mut buf = [0u8; 256];
    // The greeting (the tutorial's servers send it first; some only after the first chunk,
    // so wait briefly and carry on without it).
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
        let n = r.map_err(io("reading the greeting"))?;
        info!("server says: {}", String::from_utf8_lossy(&buf[..n]));
    }
    let mut lines = input.lines();
    let mut acked = 0u64;
    while let Some(line) = lines.next_line().await.map_err(io("reading the input"))? {
        for chunk in line.as_bytes().chunks(CHUNK) {
            stream.write_all(chunk).await.map_err(io("writing"))?;
            let n = stream
                .read(&mut buf)
                .await
                .map_err(io("reading the acknowledgement"))?;
            if n == 0 {
                return Err(RawSendError::Closed { acked });
            }
            acked += 1;
        }
    }
    Ok(acked)
}
