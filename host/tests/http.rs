//! The dashboard's HTTP side through the real `tether` binary: `/metrics` read by a
//! Prometheus text-format parser with its counters moving as records arrive, the JSON API
//! and a command through it, the event stream, the bridge's dashboard, `tether top` over
//! it, and the safety rules (a token off loopback, refused without it; loopback answers
//! loopback names only).

mod common;
mod dashboard;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use dashboard::{eventually, get, request, Scratch, Tether};

/// `/metrics`, parsed: each sample's value by its metric name and labels.
fn scrape(addr: SocketAddr, auth: &[&str]) -> (prometheus_parse::Scrape, HashMap<String, f64>) {
    let r = get(addr, "/metrics", auth);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.contains("text/plain; version=0.0.4"),
        "{}",
        r.headers
    );
    let lines = r.body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let mut values = HashMap::new();
    for s in &scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        values.insert(key, v);
    }
    (scrape, values)
}

fn sim(to: SocketAddr, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["sim", &format!("tcp://{to}")])
        .args(extra)
        .output()
        .expect("tether sim runs")
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_arrived() {
    let dir = Scratch::new("http-metrics");
    let csv = dir.path("m.csv");
    let mut listen = Tether::start(&[
        "listen",
        "tcp://127.0.0.1:0",
        "--csv",
        &csv,
        "--http",
        "127.0.0.1:0",
    ]);
    let http = listen.dashboard();
    let devices = listen.tcp("listening on tcp://");
    let (_, before) = scrape(http, &[]);
    assert_eq!(before["tether_records_total"], 0.0);
    assert_eq!(before["tether_records_written_total"], 0.0);
    assert_eq!(before["tether_sink_commit_seconds_count"], 0.0);

    // Two devices, 400 readings each, through corrupting faults.
    let out = sim(
        devices,
        &[
            "--devices",
            "2",
            "--records",
            "400",
            "--faults",
            "corrupt=0.002",
            "--seed",
            "3",
            "--verify",
            &csv,
        ],
    );
    assert!(
        out.status.success(),
        "sim: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (scrape_after, after) = scrape(http, &[]);
    assert_eq!(after["tether_records_total"], 800.0, "{after:?}");
    assert_eq!(after["tether_records_written_total"], 800.0);
    assert_eq!(after["tether_sessions"], 2.0);
    assert!(after["tether_connections_total"] >= 2.0);
    assert!(after["tether_handshakes_total"] >= 2.0);
    let corrupt: f64 = ["crc", "cobs", "header"]
        .iter()
        .map(|k| after[&format!("tether_errors_total{{kind={k}}}")])
        .sum();
    assert!(corrupt > 0.0, "corrupted bytes were counted: {after:?}");
    assert!(after["tether_bytes_total{direction=in}"] > 800.0 * 16.0);
    // Every batch committed was timed; the histogram's buckets are cumulative up to +Inf.
    let commits = after["tether_sink_commit_seconds_count"];
    assert!(commits > 0.0);
    let hist = scrape_after
        .samples
        .iter()
        .find(|s| s.metric == "tether_sink_commit_seconds")
        .expect("the commit latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
        panic!(
            "tether_sink_commit_seconds is not a histogram: {:?}",
            hist.value
        )
    };
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    assert_eq!(buckets.last().map(|b| b.count), Some(commits));
    // Per device: each one's 400 records, its connection, its errors by kind.
    let per_device: Vec<(&String, &f64)> = after
        .iter()
        .filter(|(k, _)| k.starts_with("tether_device_records_total{"))
        .collect();
    assert_eq!(per_device.len(), 2, "{per_device:?}");
    assert!(
        per_device.iter().all(|(_, v)| **v == 400.0),
        "{per_device:?}"
    );
    assert!(after
        .keys()
        .any(|k| k.starts_with("tether_device_errors_total{device=") && k.contains("kind=crc")));
    drop(listen);
}

#[test]
fn the_api_lists_devices_streams_readings_and_a_command_reaches_the_device() {
    let dir = Scratch::new("http-api");
    let out = dir.path("demo");
    // The demo's own commands come 10 s in; this test is done before. Its devices declare
    // their kinds: the readings' fields have names.
    let mut demo = Tether::start(&[
        "demo",
        "--devices",
        "2",
        "--seconds",
        "60",
        "--csv-dir",
        &out,
        "--http",
        "127.0.0.1:0",
    ]);
    let http = demo.dashboard();
    let list = eventually(Duration::from_secs(20), "two devices streaming", || {
        let v = get(http, "/api/devices", &[]).json();
        let devices = v["devices"].as_array()?.clone();
        (devices.len() == 2 && devices.iter().all(|d| d["records"].as_u64() > Some(0))).then_some(v)
    });
    assert_eq!(list["totals"]["server"], "listener");
    let d = &list["devices"][0];
    assert_eq!(d["id"], "00d00001");
    assert_eq!(d["connected"], true);
    assert_eq!(d["transport"], "tcp");
    assert!(d["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(d["phase"], "established");
    assert_eq!(
        get(http, "/api/devices/00d00001", &[]).json()["id"],
        "00d00001"
    );
    assert_eq!(get(http, "/api/devices/12345678", &[]).status, 404);
    assert_eq!(get(http, "/api/devices/nothex", &[]).status, 400);

    // Readings of the watched device as Server-Sent Events, decimated: samples of many
    // records, their sequence numbers rising.
    let events = sse(
        http,
        "/api/events?watch=00d00001",
        Duration::from_millis(1500),
    );
    let samples: Vec<serde_json::Value> = events
        .iter()
        .filter(|(e, _)| e == "sample")
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(samples.len() >= 5, "{events:?}");
    assert!(samples.iter().all(|s| s["device"] == "00d00001"));
    assert!(samples
        .windows(2)
        .all(|w| w[1]["seq"].as_u64() > w[0]["seq"].as_u64()));
    assert_eq!(samples[0]["v"].as_array().unwrap().len(), 5, "five fields");
    // Named by the device's declaration of its readings' kind (PROTOCOL.md 10.5).
    assert!(samples.iter().all(|s| s["kind"] == "env"), "{samples:?}");
    assert_eq!(
        samples[0]["names"],
        serde_json::json!([
            "counter",
            "time (ms)",
            "temperature (°C)",
            "pressure (hPa)",
            "output"
        ])
    );
    // At 1 kHz a sample stands for several records: the stream is decimated.
    let records: u64 = samples.iter().map(|s| s["n"].as_u64().unwrap()).sum();
    assert!(
        records > samples.len() as u64,
        "{records} records in {} samples",
        samples.len()
    );
    assert!(events
        .iter()
        .any(|(e, d)| e == "log" && d.contains("connected")));

    // A command: refused when it is not JSON (a page of another origin cannot send one),
    // queued when it is, acknowledged by the device, and obeyed.
    let plain = request(
        http,
        "POST",
        "/api/devices/00d00001/commands",
        &["Content-Type: text/plain", "Content-Length: 6"],
        None,
    );
    assert!(plain.status >= 400, "{plain:?}");
    let empty = request(
        http,
        "POST",
        "/api/devices/00d00001/commands",
        &[],
        Some(r#"{"command":" "}"#),
    );
    assert_eq!(empty.status, 400);
    let r = request(
        http,
        "POST",
        "/api/devices/00d00001/commands",
        &[],
        Some(r#"{"command":"rate 7"}"#),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    demo.wait_for(
        "device 00d00001 acknowledged commands up to #",
        Duration::from_secs(10),
    );
    eventually(Duration::from_secs(5), "no command pending", || {
        (get(http, "/api/devices/00d00001", &[]).json()["commands_pending"] == 0).then_some(())
    });
    // `tether top` over the same API: the table and the first device's fields.
    let top = top(http, &["--once"]);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let frame = String::from_utf8_lossy(&top.stdout);
    for id in ["00d00001", "00d00002"] {
        let row = frame
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{frame}"));
        assert!(
            row.contains("● established") && row.contains("tcp 127.0.0.1:"),
            "{row}"
        );
    }
    assert!(frame.contains("00d00001's readings"), "{frame}");
    assert!(
        frame.lines().any(|l| l.starts_with("temperature (°C) ")),
        "{frame}"
    );
    let (code, out) = demo.interrupt(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}");
    // The demo's own commands had not come yet: the one obeyed is the one sent here.
    assert!(
        out.contains("commands acted on by the devices: 1\n"),
        "{out}"
    );
}

/// `tether top http://ADDR ARGS`.
fn top(addr: SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["top", &format!("http://{addr}")])
        .args(args)
        .env("COLUMNS", "150")
        .output()
        .expect("tether top runs")
}

/// Reads `path` as an event stream for `for_how_long`: (event, data) pairs.
fn sse(addr: SocketAddr, path: &str, for_how_long: Duration) -> Vec<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // HTTP/1.0: no chunked encoding to take apart.
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while t0.elapsed() < for_how_long {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_owned());
                }
            }
            Some((event?, data?))
        })
        .collect()
}

#[test]
fn off_loopback_the_dashboard_needs_a_token_and_the_api_refuses_without_it() {
    let dir = Scratch::new("http-token");
    let csv = dir.path("t.csv");
    // 0.0.0.0 is not loopback: no token, no start.
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "listen",
            "tcp://127.0.0.1:0",
            "--csv",
            &csv,
            "--http",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a loopback address") && err.contains("--http-token-file"),
        "{err}"
    );
    // A token others can read, or one too short, is refused too.
    use std::os::unix::fs::PermissionsExt;
    let token_file = dir.path("token");
    let token = "s3cret-token-of-the-test";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = [
        "listen",
        "tcp://127.0.0.1:0",
        "--csv",
        &csv,
        "--http",
        "0.0.0.0:0",
        "--http-token-file",
        &token_file,
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut listen = Tether::start(&args);
    let port = listen.dashboard().port();
    let http = SocketAddr::from(([127, 0, 0, 1], port));
    let devices = listen.tcp("listening on tcp://");
    let out = sim(devices, &["--devices", "1", "--records", "50"]);
    assert!(out.status.success());
    let good = format!("Authorization: Bearer {token}");
    let wrong = "Authorization: Bearer s3cret-token-of-the-tesT";
    for path in ["/api/devices", "/metrics", "/api/events"] {
        assert_eq!(get(http, path, &[]).status, 401, "{path} without a token");
        assert_eq!(
            get(http, path, &[wrong]).status,
            401,
            "{path} with a wrong token"
        );
    }
    let devices = get(http, "/api/devices", &[&good]);
    assert_eq!(devices.status, 200);
    let id = devices.json()["devices"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let command = format!("/api/devices/{id}/commands");
    let body = Some(r#"{"command":"status"}"#);
    assert_eq!(request(http, "POST", &command, &[], body).status, 401);
    assert_eq!(request(http, "POST", &command, &[&good], body).status, 202);
    let (_, metrics) = scrape(http, &[&good]);
    assert_eq!(metrics["tether_records_total"], 50.0);
    // `tether top` without the token is told why (exit 2), and with it shows the device.
    let refused = top(http, &["--once"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    let shown = top(http, &["--once", "--token-file", &token_file]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&id));
    // Where a header cannot be set (EventSource), the token goes in the query.
    let q = sse(
        http,
        &format!("/api/events?token={token}"),
        Duration::from_millis(300),
    );
    assert!(q.iter().any(|(e, _)| e == "log"), "{q:?}");
    // The page itself holds no data and is served to anyone; it asks for the token.
    let page = get(http, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("--http-token-file"));
}

#[test]
fn on_loopback_only_loopback_names_are_answered() {
    let dir = Scratch::new("http-host");
    let csv = dir.path("h.csv");
    let mut listen = Tether::start(&[
        "listen",
        "tcp://127.0.0.1:0",
        "--csv",
        &csv,
        "--http",
        "127.0.0.1:0",
    ]);
    let http = listen.dashboard();
    assert_eq!(get(http, "/api/devices", &[]).status, 200);
    // A page of another site whose name was made to point at 127.0.0.1 (DNS rebinding)
    // sends its own name as Host.
    for host in ["Host: evil.example", "Host: 192.0.2.7:8080"] {
        let mut s = std::net::TcpStream::connect(http).unwrap();
        use std::io::{Read, Write};
        write!(
            s,
            "GET /api/devices HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 403"), "{host}: {r}");
    }
    let page = get(http, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.headers.contains("text/html"));
    for asset in ["/app.js", "/style.css"] {
        assert_eq!(get(http, asset, &[]).status, 200, "{asset}");
    }
}

#[test]
fn a_bridge_serves_its_dashboard_too() {
    let dir = Scratch::new("http-bridge");
    let csv = dir.path("b.csv");
    let mut listen = Tether::start(&["listen", "tcp://127.0.0.1:0", "--csv", &csv]);
    let upstream = listen.tcp("listening on tcp://");
    let mut bridge = Tether::start(&[
        "bridge",
        "tcp://127.0.0.1:0",
        &format!("tcp://{upstream}"),
        "--http",
        "127.0.0.1:0",
    ]);
    let http = bridge.dashboard();
    let from = bridge.tcp("bridging devices on tcp://");
    let out = sim(
        from,
        &["--devices", "1", "--records", "100", "--verify", &csv],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = get(http, "/api/devices", &[]).json();
    assert_eq!(v["totals"]["server"], "bridge");
    assert_eq!(v["totals"]["finished_means"], "forwarded");
    assert_eq!(v["totals"]["finished"], 100);
    let id = v["devices"][0]["id"].as_str().unwrap().to_owned();
    // A bridge's commands come from its listener: the box says so.
    let r = request(
        http,
        "POST",
        &format!("/api/devices/{id}/commands"),
        &[],
        Some(r#"{"command":"status"}"#),
    );
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("listener"));
    let (_, m) = scrape(http, &[]);
    assert_eq!(m["tether_records_forwarded_total"], 100.0);
    drop(bridge);
    drop(listen);
}
