//! Serial lines (feature `serial`): a UART or a USB CDC/UART bridge as one link.
//!
//! A serial port has no connections: it is one line, opened at start. To the listener it is
//! an acceptor that hands out the line, and hands it out again, reopened, once the previous
//! "connection" on it ended (the serving task dropped it: the device went silent, sent
//! garbage, or the port vanished). A USB device that is unplugged makes reads fail (`EIO`)
//! and its path disappear; the acceptor then waits for it to come back, trying again with
//! backoff, and logs both ends of the gap once. Ports are opened exclusively (`TIOCEXCL` and
//! `flock`, as serial tools do), so two programs never read the same line.

use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Mutex as AsyncMutex, OwnedSemaphorePermit, Semaphore};
use tokio_serial::{SerialPortBuilderExt as _, SerialStream};
use tracing::{info, warn};

use super::Stream;
use crate::endpoint::{Flow, Parity, Serial};

/// Why a serial port cannot be opened, for people: what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Nothing at that path.
    #[error("no serial port {0}: is the board plugged in? (ls /dev/serial/by-id/ lists the ports by name)")]
    NoSuchPort(String),
    /// Not allowed to open it.
    #[error("permission denied opening serial port {0}: add your user to the dialout group (sudo usermod -aG dialout $USER, then log in again), or run tether as root")]
    Permission(String),
    /// The path is not a terminal device.
    #[error("{0} is not a serial port (not a terminal device)")]
    NotATty(String),
    /// Another program holds it.
    #[error("serial port {path} is in use by {holder}, which holds it exclusively: stop it first (two programs reading one line would each lose the other's bytes)")]
    Busy {
        /// The port.
        path: String,
        /// Who holds it, as far as the system says.
        holder: crate::sink::Holder,
    },
    /// The line settings were refused.
    #[error("serial port {path}: {why}")]
    Settings {
        /// The port.
        path: String,
        /// What the driver said.
        why: String,
    },
}

impl SerialError {
    /// Whether the port may come back by itself (unplugged), as opposed to a setting or a
    /// permission that waiting does not change.
    pub fn is_gone(&self) -> bool {
        matches!(self, SerialError::NoSuchPort(_))
    }
}

/// Opens `port` exclusively with its line settings.
pub(super) fn open(port: &Serial) -> Result<Line, SerialError> {
    let path = port.path.clone();
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SerialError::NoSuchPort(path)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(SerialError::Permission(path))
        }
        Err(e) => {
            return Err(SerialError::Settings {
                path,
                why: e.to_string(),
            })
        }
        Ok(m) if !m.file_type().is_char_device() => return Err(SerialError::NotATty(path)),
        Ok(_) => {}
    }
    let builder = tokio_serial::new(&path, port.baud)
        .data_bits(match port.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match port.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if port.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match port.flow {
            Flow::None => tokio_serial::FlowControl::None,
            Flow::RtsCts => tokio_serial::FlowControl::Hardware,
        });
    match builder.open_native_async() {
        Ok(stream) => Ok(Line {
            stream,
            _permit: None,
        }),
        Err(e) => Err(classify(port, e)),
    }
}

/// What an open failure means, from the error serialport reports (its kinds are coarse:
/// the system's error number is only in the text).
fn classify(port: &Serial, e: tokio_serial::Error) -> SerialError {
    let path = port.path.clone();
    let text = e.description.to_lowercase();
    if matches!(
        e.kind,
        tokio_serial::ErrorKind::Io(io::ErrorKind::PermissionDenied)
    ) || text.contains("permission denied")
    {
        SerialError::Permission(path)
    } else if matches!(e.kind, tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound))
        || text.contains("no such file")
        || text.contains("no such device")
    {
        SerialError::NoSuchPort(path)
    } else if text.contains("busy") || text.contains("lock") || text.contains("would block") {
        let holder = std::fs::metadata(&path)
            .map(|m| crate::sink::lock_holder_of(&m))
            .unwrap_or_default();
        SerialError::Busy { path, holder }
    } else if text.contains("inappropriate ioctl") || text.contains("not a typewriter") {
        SerialError::NotATty(path)
    } else {
        SerialError::Settings {
            path,
            why: e.description,
        }
    }
}

/// An open serial line: the port, and (on a listener) the permit that lets the next one be
/// opened once this one is dropped.
pub(super) struct Line {
    stream: SerialStream,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for Line {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Line {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The first wait before reopening a port that vanished, and the longest.
const REOPEN_FIRST: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(2);

/// A serial port served as a listener's one link at a time.
pub(super) struct Listener {
    port: Serial,
    /// One line at a time: its permit travels inside the [`Line`].
    permit: Arc<Semaphore>,
    /// The line opened at bind (so that a port that cannot be opened fails the start).
    first: AsyncMutex<Option<Line>>,
}

impl Listener {
    pub(super) fn bind(port: &Serial) -> Result<Listener, SerialError> {
        let permit = Arc::new(Semaphore::new(1));
        let mut line = open(port)?;
        line._permit = permit.clone().try_acquire_owned().ok();
        Ok(Listener {
            port: port.clone(),
            permit,
            first: AsyncMutex::new(Some(line)),
        })
    }

    /// The line, once the previous one was dropped: reopened, after waiting for the port to
    /// come back if it vanished.
    pub(super) async fn accept(&self) -> io::Result<(Stream, String)> {
        if let Some(line) = self.first.lock().await.take() {
            return Ok((Box::new(line), self.port.path.clone()));
        }
        let permit = self
            .permit
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("serial listener closed"))?;
        let mut delay = REOPEN_FIRST;
        let mut waiting = false;
        loop {
            match open(&self.port) {
                Ok(mut line) => {
                    if waiting {
                        info!("serial port {} is back: reopened", self.port.path);
                    }
                    line._permit = Some(permit);
                    return Ok((Box::new(line), self.port.path.clone()));
                }
                Err(e) => {
                    if !waiting {
                        if e.is_gone() {
                            warn!(
                                "serial port {} is gone; waiting for it to come back",
                                self.port.path
                            );
                        } else {
                            warn!("{e}; trying again");
                        }
                        waiting = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(REOPEN_MAX);
                }
            }
        }
    }
}
