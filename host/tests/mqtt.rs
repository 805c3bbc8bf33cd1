//! The MQTT sink through the real `tether` binary and a real broker (Debian's mosquitto,
//! installed by scripts/setup.sh), started here on a free loopback port and stopped by a
//! guard; a subscriber (rumqttc) reads what reached the broker, as a consumer would.
//!
//! Without mosquitto on PATH the tests say so and pass, except under CI, where they fail.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::logged::{Logged, TETHER};
use common::Process;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-mqtt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    // mosquitto, started as root, runs as its own user and writes its persistence here.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether mosquitto is here; if not, the test is skipped (a failure under CI).
fn have_mosquitto() -> bool {
    common::required(common::runs("mosquitto", "-h"), "mosquitto")
}

/// A mosquitto on 127.0.0.1:`port`, with persistence in `dir`, killed when dropped.
struct Mosquitto {
    child: Option<Process>,
    port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16) -> Mosquitto {
        Self::start_with(dir, port, "")
    }

    /// With `extra` in its configuration (another listener, say).
    fn start_with(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        // A password file there (see `with_password`) makes it refuse anonymous clients.
        let passwd = dir.join("passwd");
        let auth = if passwd.exists() {
            format!(
                "allow_anonymous false\npassword_file {}\n",
                passwd.display()
            )
        } else {
            "allow_anonymous true\n".into()
        };
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\n{auth}persistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\nlog_dest stderr\n\
                 listener {port} 127.0.0.1\n{extra}",
                dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.log"))
            .unwrap();
        let child = Process(
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("mosquitto starts"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child: Some(child),
            port,
            dir: dir.to_owned(),
        }
    }

    /// Stops it as its service does (SIGTERM: it saves its persistence), and waits.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn restart(&mut self) {
        self.stop();
        *self = Mosquitto::start(&self.dir.clone(), self.port);
    }
}

/// What the subscriber saw: each record's payload by key, and Tether's own messages.
#[derive(Default)]
struct Seen {
    /// (device, session, seq) → times seen.
    keys: HashMap<(String, u64, u64), u32>,
    records: Vec<serde_json::Value>,
    /// The first records' payloads as sent (for the order of their keys).
    raw: Vec<String>,
    /// topic → the last payload (status and listener messages).
    other: HashMap<String, serde_json::Value>,
}

impl Seen {
    fn duplicates(&self) -> u32 {
        self.keys.values().map(|n| n - 1).sum()
    }
}

/// A subscriber to `prefix/#` (QoS 1, a persistent session, so that what reaches the
/// broker while it is away is kept for it), reading on a thread of its own.
struct Subscriber {
    seen: Arc<Mutex<Seen>>,
    _client: Client,
}

impl Subscriber {
    fn start(port: u16, prefix: &str) -> Subscriber {
        Self::start_as(port, prefix, None)
    }

    fn start_as(port: u16, prefix: &str, login: Option<(&str, &str)>) -> Subscriber {
        let mut o = MqttOptions::new(format!("sub-{prefix}"), "127.0.0.1", port);
        if let Some((user, password)) = login {
            o.set_credentials(user, password);
        }
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(o, 1_000);
        client
            .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
            .unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let topic_prefix = format!("{prefix}/");
        std::thread::spawn(move || {
            for ev in conn.iter() {
                let p = match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => p,
                    Ok(_) => continue,
                    // The broker restarting: the connection comes back by itself.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let mut v: serde_json::Value = serde_json::from_slice(&p.payload)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {:?}", p.topic, p.payload));
                let rest = p.topic.strip_prefix(&topic_prefix).unwrap_or_default();
                let mut s = s.lock().unwrap();
                // A record: DEVICE/record, DEVICE/record/KIND, or a declaration,
                // DEVICE/kind/NAME.
                let levels: Vec<&str> = rest.split('/').collect();
                if matches!(
                    levels[..],
                    [_, "record"] | [_, "record", _] | [_, "kind", _]
                ) {
                    let key = (
                        v["device"].as_str().unwrap_or_default().to_owned(),
                        v["session"].as_u64().unwrap_or(u64::MAX),
                        v["seq"].as_u64().unwrap_or(u64::MAX),
                    );
                    assert_eq!(key.0, levels[0], "the topic names the device");
                    v["_topic"] = rest.into();
                    *s.keys.entry(key).or_default() += 1;
                    s.records.push(v);
                    if s.raw.len() < 100 {
                        s.raw.push(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                } else {
                    s.other.insert(rest.to_owned(), v);
                }
            }
        });
        // Subscribed before anything is published.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = format!("{prefix}/probe");
            let _ = client.try_publish(&probe, QoS::AtLeastOnce, false, "{}");
            if seen.lock().unwrap().other.contains_key("probe") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the subscriber did not subscribe"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Subscriber {
            seen,
            _client: client,
        }
    }

    fn distinct(&self) -> usize {
        self.seen.lock().unwrap().keys.len()
    }

    /// Waits until `n` distinct records were seen, within `limit`.
    fn wait_for(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.distinct() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} records reached the subscriber within {limit:?}",
                self.distinct()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `tether sim` devices against `endpoint`: their identities and the process.
fn sim(endpoint: &str, devices: usize, records: u32, seed: u64, period_ms: u32) -> Process {
    sim_with(endpoint, devices, records, seed, period_ms, &[])
}

/// `tether sim` devices against `endpoint`, with more options.
fn sim_with(
    endpoint: &str,
    devices: usize,
    records: u32,
    seed: u64,
    period_ms: u32,
    extra: &[&str],
) -> Process {
    Process(
        Command::new(TETHER)
            .args(["sim", endpoint])
            .args(extra)
            .args(["--devices", &devices.to_string()])
            .args(["--records", &records.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--period-ms", &period_ms.to_string()])
            .args(["--timeout", "120"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tether sim starts"),
    )
}

/// Waits for `p` to exit 0 within `limit`.
fn finished_ok(p: &mut Process, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            assert!(status.success(), "{what}: {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The device ids of a `tether sim` run (`tether_host::sim::device_identity`).
fn sim_devices(seed: u64, devices: usize) -> Vec<String> {
    (0..devices)
        .map(|i| format!("{:08x}", tether_host::sim::device_identity(seed, i).0))
        .collect()
}

/// Every record of these sim devices (0..records each) seen, numbering 0.
fn assert_all_seen(seen: &Seen, devices: &[String], records: u32) {
    for d in devices {
        for seq in 0..u64::from(records) {
            assert!(
                seen.keys.contains_key(&(d.clone(), 0, seq)),
                "device {d} record {seq} never reached the broker"
            );
        }
    }
}

fn listen(port: u16, prefix: &str, state: &Path, extra: &[&str]) -> Logged {
    let sink = format!("mqtt://127.0.0.1:{port}/{prefix}?state={}", state.display());
    let mut args = vec!["listen", "tcp://127.0.0.1:0", "--sink", &sink];
    args.extend_from_slice(extra);
    Logged::start(&args, Stdio::null())
}

fn sigterm(l: &mut Logged) {
    let _ = Command::new("kill").arg(l.child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while l.child.0.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the listener did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_record_of_many_devices_reaches_a_subscriber_once_with_its_key() {
    if !have_mosquitto() {
        return;
    }
    let dir = temp_dir("basic");
    let port = free_port();
    let _broker = Mosquitto::start(&dir, port);
    let sub = Subscriber::start(port, "site-a");
    let mut l = listen(port, "site-a", &dir.join("state"), &[]);
    let endpoint = format!("tcp://{}", l.addr());
    l.wait_for("connected as tether-", Duration::from_secs(10));
    let (devices, records) = (8, 1_500);
    let mut s = sim(&endpoint, devices, records, 11, 1);
    finished_ok(&mut s, "tether sim", Duration::from_secs(60));
    // Acknowledged to the devices means the broker has them: they are all there already,
    // bar the subscriber's own delivery.
    sub.wait_for(devices * records as usize, Duration::from_secs(10));
    sigterm(&mut l);
    std::thread::sleep(Duration::from_millis(300));
    let seen = sub.seen.lock().unwrap();
    let ids = sim_devices(11, devices);
    assert_all_seen(&seen, &ids, records);
    assert_eq!(seen.keys.len(), devices * records as usize, "nothing else");
    assert_eq!(seen.duplicates(), 0, "no failure, no duplicate");
    // The payload: the key, the host time, the typed fields as JSON values.
    for raw in &seen.raw {
        let at = |k: &str| raw.find(&format!("\"{k}\":")).unwrap_or(usize::MAX);
        let order = [
            at("device"),
            at("session"),
            at("seq"),
            at("host_time"),
            at("field_1"),
        ];
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "the keys in order: {raw}"
        );
    }
    for v in &seen.records {
        assert!(v["host_time"].as_str().unwrap().ends_with('Z'), "{v}");
        assert!(v["field_1"].is_u64(), "the counter is a number: {v}");
        assert!(v["field_3"].is_f64() || v["field_3"].is_u64(), "{v}");
        assert!(v["field_5"].is_boolean(), "the output is a boolean: {v}");
    }
    // Link state, retained: each device offline now (the listener stopped), with its
    // records counted; the listener's own message says it stopped.
    for d in &ids {
        let st = &seen.other[&format!("{d}/status")];
        assert_eq!(st["online"], false, "{st}");
        assert_eq!(st["records"], u64::from(records), "{st}");
        assert!(
            st["listener"].as_str().unwrap().starts_with("tether-"),
            "{st}"
        );
    }
    let listener = seen
        .other
        .iter()
        .find(|(t, _)| t.starts_with("listener/"))
        .map(|(_, v)| v)
        .expect("the listener's message");
    assert_eq!(
        (listener["online"].as_bool(), listener["why"].as_str()),
        (Some(false), Some("stopped"))
    );
    drop(seen);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Waits for the subscriber to have seen `n` records, then returns the seen state.
fn settle(sub: &Subscriber, n: usize) -> std::sync::MutexGuard<'_, Seen> {
    sub.wait_for(n, Duration::from_secs(20));
    // Late duplicates, if any, arrive with the rest.
    std::thread::sleep(Duration::from_millis(300));
    sub.seen.lock().unwrap()
}

#[test]
fn a_broker_stopped_mid_stream_and_started_again_loses_nothing() {
    if !have_mosquitto() {
        return;
    }
    let dir = temp_dir("restart");
    let port = free_port();
    let mut broker = Mosquitto::start(&dir, port);
    let sub = Subscriber::start(port, "site-b");
    let mut l = listen(port, "site-b", &dir.join("state"), &[]);
    let endpoint = format!("tcp://{}", l.addr());
    l.wait_for("connected as tether-", Duration::from_secs(10));
    let (devices, records) = (4, 4_000);
    let mut s = sim(&endpoint, devices, records, 12, 1);
    sub.wait_for(2_000, Duration::from_secs(30));
    broker.stop();
    l.wait_for(
        "Records are not acknowledged until it is back",
        Duration::from_secs(10),
    );
    // Down for a second: the devices hold their records (none is acknowledged, so none is
    // lost when the broker comes back without them).
    std::thread::sleep(Duration::from_secs(1));
    assert!(s.0.try_wait().unwrap().is_none(), "the devices wait");
    broker.restart();
    l.wait_for("connected again after", Duration::from_secs(15));
    finished_ok(&mut s, "tether sim", Duration::from_secs(60));
    let seen = settle(&sub, devices * records as usize);
    assert_all_seen(&seen, &sim_devices(12, devices), records);
    // Duplicates: only PUBLISHes in flight when the connection went (at most inflight).
    let dups = seen.duplicates();
    eprintln!(
        "broker restart: {} records, {dups} duplicates at the broker",
        seen.keys.len()
    );
    assert!(dups <= 1_000, "{dups} duplicates");
    drop(seen);
    sigterm(&mut l);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kill_9_of_the_listener_mid_stream_loses_nothing_and_duplicates_are_bounded() {
    if !have_mosquitto() {
        return;
    }
    let dir = temp_dir("kill9");
    let port = free_port();
    let _broker = Mosquitto::start(&dir, port);
    let sub = Subscriber::start(port, "site-c");
    let state = dir.join("state");
    let mut l = listen(port, "site-c", &state, &[]);
    let addr = l.addr();
    let endpoint = format!("tcp://{addr}");
    let (devices, records) = (4, 4_000);
    let mut s = sim(&endpoint, devices, records, 13, 1);
    for at in [2_000, 8_000] {
        sub.wait_for(at, Duration::from_secs(30));
        let _ = Command::new("kill")
            .args(["-9", &l.child.id().to_string()])
            .status();
        let _ = l.child.0.wait();
        let sink = format!("mqtt://127.0.0.1:{port}/site-c?state={}", state.display());
        l = Logged::start(&["listen", &endpoint, "--sink", &sink], Stdio::null());
        l.wait_for("connected as tether-", Duration::from_secs(10));
    }
    finished_ok(&mut s, "tether sim", Duration::from_secs(60));
    let seen = settle(&sub, devices * records as usize);
    assert_all_seen(&seen, &sim_devices(13, devices), records);
    // The README's bound: a kill duplicates at most what was in flight, at most a window
    // (64) a device.
    let dups = seen.duplicates();
    eprintln!(
        "two kill -9: {} records, {dups} duplicates at the broker",
        seen.keys.len()
    );
    assert!(dups <= 2 * devices as u32 * 64, "{dups} duplicates");
    drop(seen);
    // The restarted listener read its state: what the broker acknowledged is not sent again.
    let log = l.wait_for("rows from before", Duration::from_secs(1));
    assert!(log.contains(&format!("{devices} devices")), "{log}");
    sigterm(&mut l);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn records_of_declared_kinds_have_named_fields_also_after_a_listener_killed_and_restarted() {
    if !have_mosquitto() {
        return;
    }
    let dir = temp_dir("kinds");
    let port = free_port();
    let _broker = Mosquitto::start(&dir, port);
    let sub = Subscriber::start(port, "site-k");
    let state = dir.join("state");
    let mut l = listen(port, "site-k", &state, &[]);
    let endpoint = format!("tcp://{}", l.addr());
    l.wait_for("connected as tether-", Duration::from_secs(10));
    // Three declarations (env, status, error), then the readings, of kind env.
    let (devices, readings) = (3, 3_000);
    let records = readings + 3;
    let mut s = sim_with(&endpoint, devices, readings, 14, 1, &["--kinds"]);
    // Killed after the declarations went: the restarted listener has them from its kinds
    // file only (a device never sends an acknowledged declaration again).
    sub.wait_for(1_500, Duration::from_secs(30));
    let _ = Command::new("kill")
        .args(["-9", &l.child.id().to_string()])
        .status();
    let _ = l.child.0.wait();
    let sink = format!("mqtt://127.0.0.1:{port}/site-k?state={}", state.display());
    l = Logged::start(&["listen", &endpoint, "--sink", &sink], Stdio::null());
    l.wait_for("connected as tether-", Duration::from_secs(10));
    finished_ok(&mut s, "tether sim", Duration::from_secs(60));
    let seen = settle(&sub, devices * records as usize);
    assert_all_seen(&seen, &sim_devices(14, devices), records);
    for v in &seen.records {
        let topic = v["_topic"].as_str().unwrap();
        let device = v["device"].as_str().unwrap();
        match v["seq"].as_u64().unwrap() {
            0 => {
                assert_eq!(topic, format!("{device}/kind/env"), "{v}");
                assert_eq!(v["name"], "env");
                assert_eq!(v["kind"], 0);
                assert_eq!(
                    v["fields"][2],
                    serde_json::json!({"name": "temperature", "type": "f32", "unit": "°C"}),
                    "{v}"
                );
            }
            1 | 2 => assert!(topic.starts_with(&format!("{device}/kind/")), "{v}"),
            _ => {
                assert_eq!(topic, format!("{device}/record/env"), "{v}");
                assert_eq!(v["kind"], "env", "{v}");
                assert!(v["counter"].is_u64(), "{v}");
                assert!(
                    v["temperature"].is_f64() || v["temperature"].is_u64(),
                    "{v}"
                );
                assert!(v["pressure"].is_u64(), "{v}");
                assert!(v["output"].is_boolean(), "{v}");
                assert!(v.get("field_1").is_none(), "{v}");
            }
        }
    }
    // The key first, then the kind, then the fields in their declared order.
    let raw = seen
        .raw
        .iter()
        .find(|r| r.contains("\"kind\":\"env\""))
        .expect("a reading's payload");
    let at = |k: &str| raw.find(&format!("\"{k}\":")).unwrap_or(usize::MAX);
    let order = [
        "device",
        "session",
        "seq",
        "host_time",
        "kind",
        "counter",
        "time",
        "temperature",
        "pressure",
        "output",
    ]
    .map(at);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "the keys in order: {raw}"
    );
    drop(seen);
    // The declarations are retained: a consumer that comes later learns the fields.
    let late = Subscriber::start(port, "site-k");
    let d = &sim_devices(14, 1)[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !late
        .seen
        .lock()
        .unwrap()
        .keys
        .contains_key(&(d.clone(), 0, 0))
    {
        assert!(Instant::now() < deadline, "no retained declaration of {d}");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&mut l);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority `name` in `dir` (`name.pem`, `name.key`).
fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN=tether test {name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

#[test]
fn over_tls_every_record_arrives_and_a_broker_of_another_ca_is_refused_clearly() {
    if !have_mosquitto() {
        return;
    }
    let dir = temp_dir("tls");
    // A CA, a server certificate for localhost signed by it, and a CA that signed nothing.
    make_ca(&dir, "ca");
    make_ca(&dir, "other-ca");
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    // mosquitto, started as root, reads its key as its own user: a test key, readable.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let d = dir.display();
    let _broker = Mosquitto::start_with(&dir, port, &format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
    ));
    let sub = Subscriber::start(port, "site-t");
    let url = |prefix: &str, ca: &str, state: &str| {
        format!("mqtts://localhost:{tls_port}/{prefix}?ca={d}/{ca}&state={d}/{state}")
    };
    let mut l = Logged::start(
        &[
            "listen",
            "tcp://127.0.0.1:0",
            "--sink",
            &url("site-t", "ca.pem", "state"),
        ],
        Stdio::null(),
    );
    let endpoint = format!("tcp://{}", l.addr());
    l.wait_for("connected as tether-", Duration::from_secs(10));
    let (devices, records) = (2, 1_000);
    let mut s = sim(&endpoint, devices, records, 15, 1);
    finished_ok(&mut s, "tether sim", Duration::from_secs(60));
    let seen = settle(&sub, devices * records as usize);
    assert_all_seen(&seen, &sim_devices(15, devices), records);
    assert_eq!(seen.duplicates(), 0);
    drop(seen);
    sigterm(&mut l);
    // A broker whose certificate this listener's CA did not sign: refused, said so, and
    // nothing acknowledged.
    let mut wrong = Logged::start(
        &[
            "listen",
            "tcp://127.0.0.1:0",
            "--sink",
            &url("site-u", "other-ca.pem", "state-u"),
        ],
        Stdio::null(),
    );
    let log = wrong.wait_for("TLS failure", Duration::from_secs(10));
    assert!(
        log.contains("UnknownIssuer") && log.contains("ca=FILE"),
        "{log}"
    );
    let endpoint = format!("tcp://{}", wrong.addr());
    let mut s = sim(&endpoint, 1, 10, 16, 1);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        s.0.try_wait().unwrap().is_none(),
        "the device is held back, not finished"
    );
    assert!(
        !sub.seen
            .lock()
            .unwrap()
            .keys
            .keys()
            .any(|k| sim_devices(16, 1).contains(&k.0)),
        "nothing published"
    );
    drop(s);
    sigterm(&mut wrong);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_listeners_and_a_bridge_feed_one_broker_each_record_once() {
    if !have_mosquitto() {
        return;
    }
    let dir = temp_dir("scale");
    let port = free_port();
    let _broker = Mosquitto::start(&dir, port);
    let sub = Subscriber::start(port, "farm");
    let mut a = listen(port, "farm", &dir.join("a.state"), &[]);
    let mut b = listen(port, "farm", &dir.join("b.state"), &[]);
    let sink = format!(
        "mqtt://127.0.0.1:{port}/farm?state={}",
        dir.join("c.state").display()
    );
    let mut c = Logged::start(&["bridge", "tcp://127.0.0.1:0", &sink], Stdio::null());
    let records = 300;
    let mut sims = Vec::new();
    for (l, devices, seed) in [(&mut a, 17, 21), (&mut b, 17, 22), (&mut c, 16, 23)] {
        let endpoint = format!("tcp://{}", l.addr());
        l.wait_for("connected as tether-", Duration::from_secs(10));
        sims.push((sim(&endpoint, devices, records, seed, 1), devices, seed));
    }
    for (s, _, _) in &mut sims {
        finished_ok(s, "tether sim", Duration::from_secs(60));
    }
    let seen = settle(&sub, 50 * records as usize);
    for (_, devices, seed) in &sims {
        assert_all_seen(&seen, &sim_devices(*seed, *devices), records);
    }
    assert_eq!(seen.keys.len(), 50 * records as usize);
    assert_eq!(seen.duplicates(), 0);
    let listeners = seen
        .other
        .keys()
        .filter(|t| t.starts_with("listener/"))
        .count();
    assert_eq!(listeners, 3, "three client ids, one each");
    drop(seen);
    for l in [&mut a, &mut b, &mut c] {
        sigterm(l);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A credentials file (mode 600) for the listener.
fn credentials(dir: &Path, name: &str, user: &str, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, format!("username={user}\npassword={password}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn a_broker_that_refuses_gets_nothing_acknowledged_until_it_accepts() {
    if !have_mosquitto() {
        return;
    }
    let dir = temp_dir("refused");
    let passwd = dir.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["site", "s3cret"])
        .status()
        .expect("mosquitto_passwd runs");
    assert!(made.success());
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(&dir, port);
    let sub = Subscriber::start_as(port, "site-d", Some(("site", "s3cret")));
    let state = dir.join("state");
    let sink = |cred: &Path| {
        format!(
            "mqtt://127.0.0.1:{port}/site-d?state={}&credentials={}",
            state.display(),
            cred.display()
        )
    };
    let wrong = sink(&credentials(&dir, "wrong", "site", "guess"));
    let mut l = Logged::start(
        &["listen", "tcp://127.0.0.1:0", "--sink", &wrong],
        Stdio::null(),
    );
    let addr = l.addr();
    let line = l.wait_for("Records are not acknowledged", Duration::from_secs(10));
    assert!(
        line.contains("refused the username or password") || line.contains("not authorised"),
        "{line}"
    );
    assert!(!line.contains("guess"), "no password in the log: {line}");
    let endpoint = format!("tcp://{addr}");
    let records = 300;
    let mut s = sim(&endpoint, 1, records, 14, 1);
    // Refused for two seconds: nothing acknowledged, so the device is still at it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(s.0.try_wait().unwrap().is_none(), "the device waits");
    assert_eq!(sub.distinct(), 0);
    sigterm(&mut l);
    let right = sink(&credentials(&dir, "right", "site", "s3cret"));
    let mut l = Logged::start(&["listen", &endpoint, "--sink", &right], Stdio::null());
    l.wait_for("connected as tether-", Duration::from_secs(10));
    finished_ok(&mut s, "tether sim", Duration::from_secs(60));
    let seen = settle(&sub, records as usize);
    assert_all_seen(&seen, &sim_devices(14, 1), records);
    assert_eq!(seen.duplicates(), 0);
    drop(seen);
    sigterm(&mut l);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A device: a `Link` over a blocking socket, whose input can be ignored (so that the
/// acknowledgements of what it sent never reach it, as when the listener dies first).
struct TestDevice {
    link: tether_core::link::Link<tether_core::link::LinkStorage<16, 4, 128>>,
    start: Instant,
    sock: Option<std::net::TcpStream>,
    out: Vec<u8>,
}

impl TestDevice {
    fn new(session: u32) -> TestDevice {
        use tether_core::link::{Config, Link, LinkStorage, Role};
        let link = Link::new(Config::new(Role::Client, session), LinkStorage::new()).unwrap();
        let out = vec![0u8; link.transmit_len()];
        TestDevice {
            link,
            start: Instant::now(),
            sock: None,
            out,
        }
    }

    fn now(&self) -> tether_core::link::Instant {
        tether_core::link::Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    fn connect(&mut self, addr: std::net::SocketAddr) {
        let s = std::net::TcpStream::connect(addr).expect("connects");
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        self.sock = Some(s);
        let now = self.now();
        self.link.connect(now);
    }

    /// Runs the link for up to `time`: transmits, and (if `listen`) takes input in; stops
    /// early once `until` holds.
    fn run(&mut self, time: Duration, listen: bool, until: impl Fn(&Self) -> bool) {
        use std::io::{Read, Write};
        let end = Instant::now() + time;
        let mut buf = [0u8; 4096];
        while Instant::now() < end && !until(self) {
            let now = self.now();
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            while let Some(n) = self.link.poll_transmit(now, &mut self.out) {
                if sock.write_all(&self.out[..n]).is_err() {
                    break;
                }
            }
            match sock.read(&mut buf) {
                Ok(0) => {
                    self.sock = None;
                    return;
                }
                Ok(n) if listen => self.link.handle_input(now, &buf[..n]),
                _ => {}
            }
            self.link.handle_timeout(self.now());
            while self.link.poll_event().is_some() {}
        }
    }
}

/// The state file at work: records the broker acknowledged, whose acknowledgement never
/// reached the device before the listener died, are sent again by the device to the new
/// listener, which skips them instead of publishing them twice.
#[test]
fn what_the_broker_acknowledged_is_not_published_again_after_a_listener_crash() {
    if !have_mosquitto() {
        return;
    }
    let dir = temp_dir("skip");
    let port = free_port();
    let _broker = Mosquitto::start(&dir, port);
    let sub = Subscriber::start(port, "site-e");
    let state = dir.join("state");
    let mut l = listen(port, "site-e", &state, &[]);
    let addr = l.addr();
    l.wait_for("connected as tether-", Duration::from_secs(10));
    let id = 0xD0D0_0001;
    let mut d = TestDevice::new(id);
    d.connect(addr);
    d.run(Duration::from_millis(300), true, |_| false);
    for i in 0..10 {
        d.link
            .send(format!("rec,{i}").as_bytes())
            .expect("a free slot");
    }
    // Published and acknowledged by the broker; the device hears nothing of it.
    d.run(Duration::from_secs(10), false, |_| sub.distinct() == 10);
    assert_eq!(sub.distinct(), 10);
    l.wait_for(
        &format!("device {id:08x} connected"),
        Duration::from_secs(1),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.link.unacked(), 10, "the device still holds them");
    let _ = Command::new("kill")
        .args(["-9", &l.child.id().to_string()])
        .status();
    let _ = l.child.0.wait();
    let endpoint = format!("tcp://{addr}");
    let sink = format!("mqtt://127.0.0.1:{port}/site-e?state={}", state.display());
    let mut l = Logged::start(&["listen", &endpoint, "--sink", &sink], Stdio::null());
    l.wait_for("connected as tether-", Duration::from_secs(10));
    d.connect(addr);
    d.run(Duration::from_secs(10), true, |d| d.link.unacked() == 0);
    assert_eq!(d.link.unacked(), 0, "acknowledged by the new listener");
    let line = l.wait_for("sent again are already", Duration::from_secs(1));
    assert!(line.contains("records 0 to 9"), "{line}");
    std::thread::sleep(Duration::from_millis(300));
    let seen = sub.seen.lock().unwrap();
    assert_eq!(seen.keys.len(), 10);
    assert_eq!(seen.duplicates(), 0, "none published twice");
    drop(seen);
    sigterm(&mut l);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A three-node NATS cluster with JetStream and its MQTT interface (Debian's nats-server),
/// the MQTT streams replicated on all three (`stream_replicas: 3`); each node killed when
/// dropped.
struct Nats {
    nodes: Vec<Option<Process>>,
    confs: Vec<PathBuf>,
    mqtt: Vec<u16>,
    http: Vec<u16>,
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        let ports: Vec<[u16; 4]> = (0..3)
            .map(|_| [free_port(), free_port(), free_port(), free_port()])
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{}", p[1]))
            .collect();
        let mut n = Nats {
            nodes: Vec::new(),
            confs: Vec::new(),
            mqtt: ports.iter().map(|p| p[2]).collect(),
            http: ports.iter().map(|p| p[3]).collect(),
        };
        for (i, p) in ports.iter().enumerate() {
            let conf = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                     cluster {{ name: tether, listen: 127.0.0.1:{}, routes: [{}] }}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     mqtt {{ listen: 127.0.0.1:{}, stream_replicas: 3 }}\n",
                    p[0],
                    p[3],
                    p[1],
                    routes.join(", "),
                    dir.join(format!("n{i}")).display(),
                    p[2]
                ),
            )
            .unwrap();
            n.confs.push(conf);
            n.nodes.push(None);
            n.run(i);
        }
        n
    }

    fn run(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.confs[i].with_extension("log"))
            .unwrap();
        self.nodes[i] = Some(Process(
            Command::new("nats-server")
                .arg("-c")
                .arg(&self.confs[i])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server starts"),
        ));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    /// The monitoring page `path` of node `i`.
    fn get(&self, i: usize, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http[i])) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

fn have_nats() -> bool {
    common::required(common::runs("nats-server", "--version"), "nats-server")
}

/// The leader of the `$MQTT_msgs` stream and its replicas, from node `i`'s monitoring page.
fn msgs_stream(nats: &Nats, i: usize) -> Option<(String, u64)> {
    let page = nats.get(i, "/jsz?accounts=true&streams=true&config=true");
    let body = page.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    for a in v["account_details"].as_array()? {
        for st in a["stream_detail"].as_array().into_iter().flatten() {
            if st["name"] == "$MQTT_msgs" {
                let leader = st["cluster"]["leader"].as_str()?.to_owned();
                return Some((leader, st["config"]["num_replicas"].as_u64()?));
            }
        }
    }
    None
}

/// A clustered broker losing a node mid-stream: the leader of the replicated stream that
/// holds QoS 1 messages is killed while records flow, and started again; the listener
/// publishes to one of the other nodes, the subscriber reads from the third. NATS 2.9
/// acknowledges a QoS 1 PUBLISH only once JetStream has stored it in that stream
/// (`stream_replicas: 3`), so every record acknowledged to a device is there, and reaches
/// the subscriber whose consumer holds it.
#[test]
fn a_nats_cluster_losing_its_stream_leader_mid_stream_keeps_every_acknowledged_record() {
    if !have_nats() || !have_mosquitto() {
        return;
    }
    let dir = temp_dir("nats");
    let mut nats = Nats::start(&dir);
    // The MQTT streams are made at the first MQTT connection, once the cluster has a
    // JetStream leader: connect until it works, then find the stream's leader (two minutes:
    // on a loaded 2-core machine the cluster took over one to elect its leaders).
    let deadline = Instant::now() + Duration::from_secs(120);
    let leader = loop {
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &nats.mqtt[0].to_string()])
            .args(["-q", "1", "-t", "farm/probe", "-m", "{}"])
            .stderr(Stdio::null())
            .status();
        if let Some((leader, replicas)) = msgs_stream(&nats, 0) {
            assert_eq!(replicas, 3, "the stream on all three nodes");
            break leader;
        }
        assert!(Instant::now() < deadline, "no MQTT stream in the cluster");
        std::thread::sleep(Duration::from_millis(200));
    };
    let l_node: usize = leader.trim_start_matches('n').parse().unwrap();
    let sub = Subscriber::start(nats.mqtt[(l_node + 2) % 3], "farm");
    let mut l = listen(nats.mqtt[(l_node + 1) % 3], "farm", &dir.join("state"), &[]);
    let endpoint = format!("tcp://{}", l.addr());
    l.wait_for("connected as tether-", Duration::from_secs(20));
    let (devices, records) = (2, 400);
    let mut s = sim(&endpoint, devices, records, 15, 2);
    sub.wait_for(200, Duration::from_secs(30));
    nats.kill(l_node);
    std::thread::sleep(Duration::from_secs(1));
    nats.run(l_node);
    finished_ok(&mut s, "tether sim", Duration::from_secs(90));
    let seen = settle(&sub, devices * records as usize);
    assert_all_seen(&seen, &sim_devices(15, devices), records);
    eprintln!(
        "NATS, stream leader {leader} killed: {} records, {} duplicates",
        seen.keys.len(),
        seen.duplicates()
    );
    drop(seen);
    sigterm(&mut l);
    std::fs::remove_dir_all(&dir).unwrap();
}
