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

/// A link's timer for a `select!` loop: one tokio `Sleep` for the connection's life, moved
/// only when the link's next deadline comes earlier than the one it is set for.
///
/// A later deadline (the idle time-out moving on with each frame that arrives) leaves it
/// where it is: it fires early, the link's `handle_timeout` finds nothing due (calling it
/// more often is harmless), and the loop sets it again. A new `sleep_until` each round
/// inserted into and removed from tokio's timer wheel on every record (perf showed the timer
/// entry's registration and drop on the listener's round-trip path; the round trip itself
/// moved less than this VM's noise).
#[derive(Debug)]
pub struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Option<tokio::time::Instant>,
}

impl Timer {
    /// A timer that is not set.
    pub fn new() -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
            at: None,
        }
    }

    /// Makes the timer fire no later than `at` (`None`: the link needs no call; a timer
    /// already set for a later instant is left to fire then, harmlessly).
    pub fn set(&mut self, at: Option<tokio::time::Instant>) {
        match (self.at, at) {
            (_, None) => self.at = None,
            (Some(now_set), Some(at)) if now_set <= at => {}
            (_, Some(at)) => {
                self.sleep.as_mut().reset(at);
                self.at = Some(at);
            }
        }
    }

    /// Completes when the timer fires; never if it is not set. Cancel-safe.
    pub async fn fired(&mut self) {
        if self.at.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.at = None;
    }
}

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_timer_fires_at_the_earliest_deadline_it_was_given() {
        let ms = Duration::from_millis;
        let t0 = tokio::time::Instant::now();
        let mut timer = Timer::new();
        timer.set(Some(t0 + ms(5_000)));
        timer.set(Some(t0 + ms(50)));
        // A later deadline does not move it back.
        timer.set(Some(t0 + ms(10_000)));
        timer.fired().await;
        let fired = t0.elapsed();
        assert!(
            fired >= ms(50) && fired < ms(5_000),
            "fired after {fired:?}"
        );
        // Fired, it is unset: the next deadline takes, even a later one.
        let t1 = tokio::time::Instant::now();
        timer.set(Some(t1 + ms(60)));
        timer.fired().await;
        let fired = t1.elapsed();
        assert!(
            fired >= ms(60) && fired < ms(5_000),
            "fired after {fired:?}"
        );
    }

    #[tokio::test]
    async fn an_unset_timer_never_fires() {
        let mut timer = Timer::new();
        timer.set(Some(
            tokio::time::Instant::now() + Duration::from_millis(10),
        ));
        timer.set(None);
        let r = tokio::time::timeout(Duration::from_millis(200), timer.fired()).await;
        assert!(r.is_err(), "an unset timer fired");
    }
}
