//! The dashboard in a real browser: Debian's headless Chromium (scripts/setup.sh installs
//! it) opens the page of a `tether demo --http` whose simulated devices stream, driven
//! through the DevTools protocol (a small client over a WebSocket, below). It checks what a
//! person would: the table shows every device, the plot's data advances and is drawn, and a
//! command typed into the box reaches the device (the device's own status reply says it
//! obeyed) and its acknowledgement appears. A screenshot is kept in
//! target/tmp/dashboard.png; with TETHER_SCREENSHOT=PATH it is written there too (the
//! README's docs/dashboard.png comes from this test).

mod common;
mod dashboard;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use common::Process;
use dashboard::{eventually, get, Scratch, Tether};

/// Headless Chromium with its DevTools endpoint on a port of its choosing.
struct Chromium {
    _process: Process,
    port: u16,
    _profile: Scratch,
}

fn chromium() -> Chromium {
    let bin = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("chromium"))
                .find(|c| c.is_file())
        })
        .expect(
            "headless Chromium is needed: scripts/setup.sh installs it (apt-get install chromium)",
        );
    let profile = Scratch::new("chromium-profile");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,980",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or("").to_owned());
            }
        }
    });
    let process = Process(child);
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("chromium says where its DevTools listen")
        .parse()
        .expect("a port");
    Chromium {
        _process: process,
        port,
        _profile: profile,
    }
}

/// A DevTools protocol session with one page.
struct Cdp {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    fn page(browser: &Chromium) -> Cdp {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], browser.port));
        let targets = eventually(Duration::from_secs(20), "a page target", || {
            let r = std::panic::catch_unwind(|| get(addr, "/json/list", &[]));
            r.ok().filter(|r| r.status == 200).map(|r| r.json())
        });
        let url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page to drive")
            .to_owned();
        let (ws, _) = tungstenite::connect(url.as_str()).expect("DevTools WebSocket");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        }
        Cdp { ws, next: 0 }
    }

    /// Calls `method`; its result, within 30 s (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(msg)).expect("sent to DevTools");
        let t0 = Instant::now();
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{method}: no answer"
            );
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t.to_string(),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("DevTools connection: {e}"),
            };
            let v: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise); its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("`{expression}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits up to `limit` for `expression` to be true.
    fn until(&mut self, limit: Duration, what: &str, expression: &str) {
        let t0 = Instant::now();
        while self.eval(expression) != Value::Bool(true) {
            assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into the element focused by `focus`, then Enter.
    fn type_line(&mut self, focus: &str, text: &str) {
        self.eval(&format!("document.querySelector('{focus}').focus()"));
        self.call("Input.insertText", json!({ "text": text }));
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": "Enter", "code": "Enter",
                        "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13, "text": "\r" }),
            );
        }
    }
}

#[test]
fn the_page_shows_the_devices_plots_their_readings_and_sends_a_typed_command() {
    let dir = Scratch::new("browser");
    let out = dir.path("demo");
    let mut demo = Tether::start(&[
        "demo",
        "--devices",
        "3",
        "--seconds",
        "120",
        "--csv-dir",
        &out,
        "--http",
        "127.0.0.1:0",
    ]);
    let http = demo.dashboard();
    let browser = chromium();
    let mut page = Cdp::page(&browser);
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 980, "deviceScaleFactor": 1, "mobile": false }),
    );
    page.call("Page.navigate", json!({ "url": format!("http://{http}/") }));

    // The table: every device, connected, its records counted.
    page.until(
        Duration::from_secs(30),
        "three device rows with records",
        "document.querySelectorAll('#devices tbody tr[data-device]').length === 3 && \
         [...document.querySelectorAll('#devices tbody tr[data-device]')].every(tr => \
           Number(tr.cells[4].textContent.replace(/,/g, '')) > 0)",
    );
    let rows = page.eval(
        "[...document.querySelectorAll('#devices tbody tr[data-device]')].map(tr => \
           [...tr.cells].map(c => c.textContent))",
    );
    let rows = rows.as_array().expect("rows");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], format!("00d0000{}", i + 1), "{row}");
        assert_eq!(row[1], "established", "{row}");
        assert!(
            row[2].as_str().unwrap().starts_with("tcp 127.0.0.1:"),
            "{row}"
        );
    }

    // The plot: samples keep coming, the right edge moves on, and lines are drawn.
    page.until(
        Duration::from_secs(15),
        "samples of the first device",
        "tether.selected === '00d00001' && tether.samples > 5 && tether.drawn.points > 5",
    );
    let before = page.eval("[tether.samples, tether.drawn.lastT, tether.drawn.frames]");
    std::thread::sleep(Duration::from_millis(1500));
    let after = page.eval("[tether.samples, tether.drawn.lastT, tether.drawn.frames]");
    for i in 0..3 {
        assert!(
            after[i].as_f64() > before[i].as_f64(),
            "the plot did not advance: {before} then {after}"
        );
    }
    let coloured = page.eval(
        "(() => { const c = document.getElementById('plot'); \
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; \
           for (let i = 0; i < d.length; i += 4) \
             if (Math.max(d[i], d[i+1], d[i+2]) - Math.min(d[i], d[i+1], d[i+2]) > 60) n++; \
           return n; })()",
    );
    assert!(
        coloured.as_u64() > Some(500),
        "lines drawn on the canvas: {coloured} coloured pixels"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#legend label').length"),
        5,
        "the demo's readings have five fields"
    );
    assert_eq!(
        page.eval("[...document.querySelectorAll('#legend label')].map(l => l.textContent.split(' ')[0]).join('|')"),
        "counter|time|temperature|pressure|output",
        "named as the devices declared them"
    );
    assert!(
        page.eval("document.getElementById('legend').textContent")
            .as_str()
            .is_some_and(|t| t.contains("temperature (°C)")),
        "with their units"
    );

    // Commands typed into the box, each acknowledged, and obeyed: the device's status reply
    // carries the period `rate 7` set (the demo itself never sends `rate`), and its readings'
    // output field turns on.
    let acknowledged = |text: &str| {
        format!(
            "[...document.querySelectorAll('#command-status li')].some(li => \
               li.textContent.includes('“{text}” (#') && li.textContent.includes('acknowledged'))"
        )
    };
    page.type_line("#command", "rate 7");
    page.until(
        Duration::from_secs(15),
        "rate 7 acknowledged",
        &acknowledged("rate 7"),
    );
    page.type_line("#command", "status");
    page.until(
        Duration::from_secs(15),
        "status acknowledged",
        &acknowledged("status"),
    );
    page.until(
        Duration::from_secs(15),
        "the device's reply in the log",
        "[...document.querySelectorAll('#log .line')].some(l => \
           l.textContent.includes('device 00d00001 replied: status: period 7, output false,'))",
    );
    page.type_line("#command", "output on");
    page.until(
        Duration::from_secs(15),
        "output on acknowledged",
        &acknowledged("output on"),
    );
    page.until(
        Duration::from_secs(15),
        "the output field on",
        "tether.lastSample && tether.lastSample.v[4][0] === 1",
    );
    assert_eq!(
        page.eval("document.getElementById('command').value"),
        "",
        "the box is cleared for the next command"
    );
    page.until(
        Duration::from_secs(5),
        "the log",
        "[...document.querySelectorAll('#log .line')].some(l => l.textContent.includes('session established'))",
    );
    // The last 10 s, as a person would pick them to see the readings up close.
    page.eval(
        "(() => { const w = document.getElementById('window'); w.value = '10'; \
           w.dispatchEvent(new Event('change')); })()",
    );
    std::thread::sleep(Duration::from_millis(1200));

    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64(shot["data"].as_str().expect("screenshot data"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "a PNG"
    );
    let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&kept, &png).expect("screenshot kept");
    if let Some(path) = std::env::var_os("TETHER_SCREENSHOT") {
        std::fs::write(path, &png).expect("screenshot written");
    }
    drop(page);
    drop(browser);

    let (code, out) = demo.interrupt(Duration::from_secs(20));
    assert_eq!(code, Some(0), "the demo's CSV check: {out}");
    assert!(out.contains("checked:"), "{out}");
}

/// Decodes standard base64 (the screenshot).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
