//! `/metrics`: the Prometheus text exposition format (version 0.0.4), per device and in
//! total.

use std::fmt::Write as _;

use crate::session::tap::{Histogram, LATENCY_BOUNDS};

use super::view::{DeviceView, Totals};

/// The content type Prometheus expects of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the metrics of a server from its totals, devices and sink latency.
pub fn render(totals: &Totals, devices: &[DeviceView], commit: Option<&Histogram>) -> String {
    let mut m = Metrics(String::with_capacity(4096 + devices.len() * 2048));
    let t = &totals.link;
    m.head("tether_info", "gauge", "What serves: listener or bridge.");
    m.line("tether_info", &[("server", totals.server)], 1);
    m.head(
        "tether_records_total",
        "counter",
        "Records received from devices and accepted, once each.",
    );
    m.line("tether_records_total", &[], t.records);
    let finished = format!("tether_records_{}_total", totals.finished_means);
    m.head(
        &finished,
        "counter",
        "Records the server is done with (listener: written and acknowledged; bridge: acknowledged by its listener).",
    );
    m.line(&finished, &[], totals.finished);
    m.head(
        "tether_bytes_total",
        "counter",
        "Bytes on the devices' links.",
    );
    m.line("tether_bytes_total", &[("direction", "in")], t.bytes_in);
    m.line("tether_bytes_total", &[("direction", "out")], t.bytes_out);
    m.head(
        "tether_retransmissions_total",
        "counter",
        "DATA frames sent again to devices.",
    );
    m.line("tether_retransmissions_total", &[], t.retransmissions);
    m.head(
        "tether_errors_total",
        "counter",
        "Frames from devices dropped, by kind.",
    );
    for (kind, n) in t.errors() {
        m.line("tether_errors_total", &[("kind", kind)], n);
    }
    m.head(
        "tether_sessions",
        "gauge",
        "Device sessions kept (at most --max-devices).",
    );
    m.line("tether_sessions", &[], totals.sessions as u64);
    m.head(
        "tether_devices_seen",
        "gauge",
        "Devices that had a session, forgotten ones included.",
    );
    m.line("tether_devices_seen", &[], totals.devices_seen as u64);
    m.head(
        "tether_handshakes_total",
        "counter",
        "Handshakes completed with devices.",
    );
    m.line("tether_handshakes_total", &[], t.handshakes);
    m.head(
        "tether_resumes_total",
        "counter",
        "Handshakes that resumed a session.",
    );
    m.line("tether_resumes_total", &[], t.resumes);
    m.head(
        "tether_peer_restarts_total",
        "counter",
        "Device restarts detected.",
    );
    m.line("tether_peer_restarts_total", &[], t.peer_restarts);
    m.head(
        "tether_connections_total",
        "counter",
        "Connections accepted.",
    );
    m.line("tether_connections_total", &[], totals.connections);
    m.head(
        "tether_connections_active",
        "gauge",
        "Connections served now.",
    );
    m.line("tether_connections_active", &[], totals.connections_active);
    m.head(
        "tether_connections_dropped_total",
        "counter",
        "Connections dropped by the server, by reason.",
    );
    for (reason, n) in &totals.connections_dropped {
        m.line(
            "tether_connections_dropped_total",
            &[("reason", reason)],
            *n,
        );
    }
    m.head(
        "tether_dashboard_updates_lost_total",
        "counter",
        "Dashboard updates lost by subscribers that fell behind (each such subscriber is dropped).",
    );
    m.line(
        "tether_dashboard_updates_lost_total",
        &[],
        totals.updates_lost,
    );
    if let Some(h) = commit {
        let name = "tether_sink_commit_seconds";
        m.head(
            name,
            "histogram",
            "Time the sink took to make a batch durable.",
        );
        let (buckets, count, sum) = h.snapshot();
        for (i, n) in buckets.iter().enumerate() {
            let le = LATENCY_BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            m.line(&format!("{name}_bucket"), &[("le", &le)], *n);
        }
        let _ = writeln!(m.0, "{name}_sum {sum}");
        m.line(&format!("{name}_count"), &[], count);
    }
    per_device(&mut m, devices);
    m.0
}

fn per_device(m: &mut Metrics, devices: &[DeviceView]) {
    type Get = fn(&DeviceView) -> u64;
    let counters: [(&str, &str, Get); 5] = [
        (
            "tether_device_records_total",
            "Records received from the device, once each.",
            |d| d.records,
        ),
        (
            "tether_device_retransmissions_total",
            "DATA frames sent again to the device.",
            |d| d.retransmissions,
        ),
        (
            "tether_device_connections_total",
            "Connections of the device that took its session over.",
            |d| d.connections,
        ),
        (
            "tether_device_connected",
            "1 while a connection serves the device.",
            |d| u64::from(d.connected),
        ),
        (
            "tether_device_commands_pending",
            "Commands the device has not acknowledged yet.",
            |d| u64::from(d.commands_pending),
        ),
    ];
    for (name, help, get) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        m.head(name, kind, help);
        for d in devices {
            m.line(name, &[("device", &d.id)], get(d));
        }
    }
    let name = "tether_device_bytes_total";
    m.head(name, "counter", "Bytes on the device's link.");
    for d in devices {
        m.line(name, &[("device", &d.id), ("direction", "in")], d.bytes_in);
        m.line(
            name,
            &[("device", &d.id), ("direction", "out")],
            d.bytes_out,
        );
    }
    let name = "tether_device_errors_total";
    m.head(name, "counter", "Frames from the device dropped, by kind.");
    for d in devices {
        for (kind, n) in d.link.errors() {
            m.line(name, &[("device", &d.id), ("kind", kind)], n);
        }
    }
    let name = "tether_device_last_seen_seconds";
    m.head(
        name,
        "gauge",
        "Seconds since bytes last came from the device.",
    );
    for d in devices {
        if let Some(ms) = d.last_seen_ms {
            let _ = writeln!(m.0, "{name}{{device=\"{}\"}} {}", d.id, ms as f64 / 1e3);
        }
    }
    let name = "tether_device_round_trip_seconds";
    m.head(
        name,
        "gauge",
        "The link's measured round trip, where it measures one.",
    );
    for d in devices {
        if let Some(ms) = d.round_trip_ms {
            let _ = writeln!(m.0, "{name}{{device=\"{}\"}} {}", d.id, f64::from(ms) / 1e3);
        }
    }
}

struct Metrics(String);

impl Metrics {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value escaped as the text format wants: backslash, double quote, line feed.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
