//! The log as the dashboard shows it: every line `tether` logs at `info` and above (the
//! links' events: connected, resumed, restarted, refused and why; commands queued and
//! acknowledged) copied, once the dashboard is on, into a bounded broadcast channel and a
//! ring of the latest lines for a page that opens later.
//!
//! The layer sits beside the terminal's in `console::init_log`; until [`enable`] is called
//! it costs one relaxed load an event. Lines pass `RUST_LOG` as the terminal's do.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use crate::session::lock;

/// Lines kept for a page that opens later.
pub const RECENT: usize = 500;
/// Lines a subscriber may fall behind before it loses the oldest.
const CAPACITY: usize = 1024;

/// One log line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `INFO`, `WARN` or `ERROR`.
    pub level: &'static str,
    /// The device the line is about (the first `device XXXXXXXX` in it), hex.
    pub device: Option<String>,
    /// The line as the terminal shows it, without time and level.
    pub text: String,
}

/// Where the lines go once enabled.
#[derive(Debug)]
pub struct LogBus {
    tx: broadcast::Sender<Arc<LogLine>>,
    recent: Mutex<VecDeque<Arc<LogLine>>>,
}

impl LogBus {
    /// Every line from now on, and the latest [`RECENT`] before it.
    pub fn subscribe(&self) -> (Vec<Arc<LogLine>>, broadcast::Receiver<Arc<LogLine>>) {
        let recent = lock(&self.recent);
        // Subscribed under the ring's lock: no line is both in the ring and received.
        let rx = self.tx.subscribe();
        (recent.iter().cloned().collect(), rx)
    }

    fn push(&self, line: LogLine) {
        let line = Arc::new(line);
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(line.clone());
        // Nobody subscribed is no error here.
        let _ = self.tx.send(line);
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static BUS: OnceLock<LogBus> = OnceLock::new();

/// Starts copying log lines; returns where they go.
pub fn enable() -> &'static LogBus {
    let bus = BUS.get_or_init(|| LogBus {
        tx: broadcast::channel(CAPACITY).0,
        recent: Mutex::new(VecDeque::with_capacity(RECENT)),
    });
    ENABLED.store(true, Ordering::Relaxed);
    bus
}

/// The layer `console::init_log` installs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layer;

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let Some(bus) = BUS.get() else { return };
        let mut text = Text::default();
        event.record(&mut text);
        let mut line = text.fields;
        if !line.is_empty() && !text.message.is_empty() {
            line.push(' ');
        }
        line.push_str(&text.message);
        bus.push(LogLine {
            time_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            level: match level {
                Level::ERROR => "ERROR",
                Level::WARN => "WARN",
                _ => "INFO",
            },
            device: device_in(&line).map(str::to_owned),
            text: line,
        });
    }
}

/// An event's message and its other fields (`peer=…`), as the terminal writes them.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value}", field.name());
        }
    }
}

/// The first device identity a line names (`device 00d00001`).
fn device_in(line: &str) -> Option<&str> {
    line.match_indices("device ").find_map(|(i, m)| {
        let id = line.get(i + m.len()..i + m.len() + 8)?;
        id.bytes().all(|b| b.is_ascii_hexdigit()).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_device() {
        assert_eq!(
            device_in("peer=127.0.0.1:4 device 00d00001 connected"),
            Some("00d00001")
        );
        assert_eq!(
            device_in("new device 0000abcd"),
            Some("0000abcd"),
            "a later mention"
        );
        assert_eq!(device_in("no device here"), None);
        assert_eq!(device_in("device 12"), None);
    }
}
