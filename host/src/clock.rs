//! The link's clock on the host: milliseconds since the program started.

use tether_core::link::Instant;

/// Converts between tokio's monotonic clock and the link's millisecond instants.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: tokio::time::Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Clock {
            start: tokio::time::Instant::now(),
        }
    }

    /// The link's "now".
    pub fn now(&self) -> Instant {
        Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    /// The tokio instant of a link deadline.
    pub fn instant(&self, at: Instant) -> tokio::time::Instant {
        self.start + std::time::Duration::from_millis(at.millis())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
