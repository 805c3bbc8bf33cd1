//! Tether over real BlueZ: kernel RFCOMM, bluetoothd, two virtual controllers (hci0, hci1)
//! that page each other. These tests need that stack, so they are `#[ignore]`d in a normal
//! `cargo test`; `scripts/bluez-vm.sh` (run by `scripts/test.sh`) builds this file on the
//! host, boots a Linux guest in QEMU with BlueZ, and runs them there with `--ignored`. There,
//! a missing adapter or daemon fails the tests: nothing is skipped.
//!
//! They run one at a time in name order (`--test-threads=1`); the one that kills bluetoothd
//! and makes a connection fail runs last (a failed RFCOMM connect can wedge the 6.1 kernel's
//! krfcommd for later connects).
#![cfg(feature = "bluetooth")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether_core::link::{Config, Instant as LinkInstant, Link, LinkStorage, Role};
use tether_host::bridge::{Bridge, BridgeOptions};
use tether_host::endpoint::Endpoint;
use tether_host::listen::{ListenOptions, ListenSummary, Listener};
use tether_host::send::{send, SendOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const IGNORED: &str = "needs BlueZ: run by scripts/bluez-vm.sh in a QEMU guest";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-bt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Where the harness collects figures (the shared results directory), if set.
fn report(line: &str) {
    eprintln!("{line}");
    if let Ok(dir) = std::env::var("TETHER_VM_RESULTS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join("figures.txt"))
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Set once BlueZ was found missing, so that the other tests fail at once.
static NO_BLUEZ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// hci0's and hci1's addresses, once both are powered (bluetoothd powers them at start).
async fn adapters() -> (String, String) {
    assert!(
        !NO_BLUEZ.load(std::sync::atomic::Ordering::Relaxed),
        "BlueZ with two powered adapters hci0 and hci1 is required (see the first failure)"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let s = bluer::Session::new().await?;
            let a0 = s.adapter("hci0")?;
            let a1 = s.adapter("hci1")?;
            if a0.is_powered().await? && a1.is_powered().await? {
                Ok::<_, bluer::Error>(Some((
                    a0.address().await?.to_string(),
                    a1.address().await?.to_string(),
                )))
            } else {
                Ok(None)
            }
        };
        match attempt.await {
            Ok(Some(a)) => return a,
            other => {
                if Instant::now() > deadline {
                    NO_BLUEZ.store(true, std::sync::atomic::Ordering::Relaxed);
                    panic!("BlueZ with two powered adapters hci0 and hci1 is required: {other:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<ListenSummary>,
    commands: tether_host::listen::Commands,
}

async fn listen(endpoint: &str, csv: &Path) -> Running {
    let opts = ListenOptions::new(vec![endpoint.parse().unwrap()], csv.to_owned());
    let l = Listener::bind(opts)
        .await
        .unwrap_or_else(|e| panic!("listen on {endpoint}: {e}"));
    let commands = l.commands();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        l.run(async {
            let _ = stopped.await;
        })
        .await
        .expect("listener runs")
    });
    Running {
        stop,
        done,
        commands,
    }
}

impl Running {
    async fn stop(self) -> ListenSummary {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.done)
            .await
            .expect("the listener stops in time")
            .expect("listener task")
    }
}

fn lines(device: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("dev{device},{i},{}\n", i * 7))
        .collect()
}

async fn send_lines(to: &str, text: String, session: u32) -> u64 {
    let mut opts = SendOptions::new(to.parse().unwrap());
    opts.session = session;
    opts.give_up_after = Duration::from_secs(60);
    send(
        &opts,
        tokio::io::BufReader::new(std::io::Cursor::new(text.into_bytes())),
        |_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("send to {to}: {e}"))
    .records
}

/// Every session's rows are its lines once each, in order, with its own sequence numbers.
fn assert_exact(csv: &Path, sessions: &[u32], n: usize) {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv)
        .expect("CSV exists");
    let mut by: HashMap<String, Vec<(u32, Vec<String>)>> = HashMap::new();
    for row in r.records() {
        let row = row.expect("well-formed CSV");
        by.entry(row[1].to_owned()).or_default().push((
            row[2].parse().expect("seq"),
            row.iter().skip(3).map(str::to_owned).collect(),
        ));
    }
    assert_eq!(by.len(), sessions.len(), "devices: {:?}", by.keys());
    for (d, s) in sessions.iter().enumerate() {
        let rows = &by[&format!("{s:08x}")];
        assert_eq!(rows.len(), n, "rows of device {d}");
        for (i, (seq, fields)) in rows.iter().enumerate() {
            assert_eq!(*seq, i as u32);
            assert_eq!(
                fields,
                &[format!("dev{d}"), i.to_string(), (i * 7).to_string()]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BlueZ: run by scripts/bluez-vm.sh in a QEMU guest"]
async fn a_records_stream_from_a_device_over_rfcomm_into_the_csv_exactly() {
    let _ = IGNORED;
    let (hci0, _) = adapters().await;
    let dir = temp_dir("stream");
    let csv = dir.join("out.csv");
    let l = listen("rfcomm://hci0/1", &csv).await;
    let to = format!("rfcomm://{hci0}/1");
    let n = 3000;
    let started = Instant::now();
    assert_eq!(send_lines(&to, lines(0, n), 0xB7_0001).await, n as u64);
    let secs = started.elapsed().as_secs_f64();
    report(&format!(
        "RFCOMM in the VM: {n} records (16-20 bytes) device -> tether listen -> CSV, acknowledged, in {secs:.2} s: {:.0} records/s (connect included; emulated, a sanity figure)",
        n as f64 / secs
    ));
    let s = l.stop().await;
    assert_eq!(s.records, n as u64);
    assert_exact(&csv, &[0xB7_0001], n);
}

/// A device (a plain `Link` over an RFCOMM stream) that sends one record and collects
/// commands until it has `want` of them acknowledged.
async fn device(to: &str, want: usize) -> Vec<Vec<u8>> {
    let endpoint: Endpoint = to.parse().unwrap();
    let mut s = tether_host::transport::connect(&endpoint, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("device connects to {to}: {e}"));
    let mut link = Link::new(
        Config::new(Role::Client, 0xDE71CE),
        LinkStorage::<4, 4, 128>::new(),
    )
    .unwrap();
    let start = Instant::now();
    let now = || LinkInstant::from_millis(start.elapsed().as_millis() as u64);
    link.connect(now());
    link.send(b"hello over rfcomm").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let mut out = vec![0u8; link.transmit_len()];
    while start.elapsed() < Duration::from_secs(30) {
        while let Some(n) = link.poll_transmit(now(), &mut out) {
            s.write_all(&out[..n]).await.unwrap();
        }
        if got.len() >= want && link.unacked() == 0 {
            break;
        }
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            match r {
                Ok(0) | Err(_) => break,
                Ok(n) => link.handle_input(now(), &buf[..n]),
            }
        }
        link.handle_timeout(now());
        let cmds: Vec<Vec<u8>> = link.received().map(|r| r.payload.to_vec()).collect();
        link.release(cmds.len());
        got.extend(cmds);
    }
    // Let the last acknowledgement go out before the connection closes.
    while let Some(n) = link.poll_transmit(now(), &mut out) {
        let _ = s.write_all(&out[..n]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BlueZ: run by scripts/bluez-vm.sh in a QEMU guest"]
async fn b_commands_reach_a_device_over_rfcomm_and_are_acknowledged() {
    let (hci0, _) = adapters().await;
    let dir = temp_dir("commands");
    let csv = dir.join("out.csv");
    let l = listen("rfcomm://hci0/2", &csv).await;
    let to = format!("rfcomm://{hci0}/2");
    let dev = tokio::spawn(async move { device(&to, 2).await });
    let t0 = Instant::now();
    while l.commands.devices().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the device never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(l.commands.send(Some(0xDE71CE), b"rate 50"), 1);
    assert_eq!(l.commands.send(None, b"output on"), 1);
    let got = dev.await.unwrap();
    assert_eq!(got, [b"rate 50".to_vec(), b"output on".to_vec()]);
    let t0 = Instant::now();
    while l.commands.unacknowledged(0xDE71CE) != Some(0) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "commands acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = l.stop().await;
    assert_eq!(s.records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BlueZ: run by scripts/bluez-vm.sh in a QEMU guest"]
async fn c_the_rfcomm_link_cut_mid_stream_resumes_with_nothing_lost_or_duplicated() {
    let (hci0, _) = adapters().await;
    let dir = temp_dir("cuts");
    let csv = dir.join("out.csv");
    let l = listen("rfcomm://hci0/3", &csv).await;
    let opts = tether_host::sim::SimOptions {
        endpoint: format!("rfcomm://{hci0}/3").parse().unwrap(),
        devices: 2,
        records: 400,
        faults: "cuts=6".parse().unwrap(),
        seed: 7,
        period_ms: 1,
        timeout: Duration::from_secs(120),
        kinds: false,
        max_version: tether_core::link::MAX_PROTOCOL_VERSION,
    };
    let s = tether_host::sim::run(&opts)
        .await
        .expect("the devices finish");
    assert_eq!(s.acknowledged, 800);
    assert_eq!(s.cuts, 6, "the RFCOMM connections were cut mid-stream");
    l.stop().await;
    let v = tether_host::sim::verify(&csv, opts.seed, opts.devices, opts.records).unwrap();
    report(&format!(
        "RFCOMM cut 6 times mid-stream: {} of {} readings exactly once; {} lost, {} duplicated, {} reordered, {} corrupted",
        v.good, v.expected, v.lost, v.duplicated, v.reordered, v.corrupted
    ));
    assert!(v.clean(), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BlueZ: run by scripts/bluez-vm.sh in a QEMU guest"]
async fn d_the_bridge_forwards_rfcomm_devices_to_a_tcp_listener_end_to_end() {
    let (hci0, _) = adapters().await;
    let dir = temp_dir("bridge");
    let csv = dir.join("out.csv");
    let opts = ListenOptions::new(vec!["tcp://127.0.0.1:0".parse().unwrap()], csv.clone());
    let listener = Listener::bind(opts)
        .await
        .expect("TCP listener in the guest");
    let upstream = listener.local_addrs()[0];
    let (stop_l, stopped_l) = oneshot::channel::<()>();
    let l = tokio::spawn(async move {
        listener
            .run(async {
                let _ = stopped_l.await;
            })
            .await
            .unwrap()
    });
    let bridge = Bridge::bind(BridgeOptions::new(
        vec!["rfcomm://hci0/4".parse().unwrap()],
        Endpoint::Tcp(upstream),
    ))
    .await
    .expect("bridge on rfcomm://hci0/4");
    let (stop_b, stopped_b) = oneshot::channel::<()>();
    let b = tokio::spawn(async move {
        bridge
            .run(async {
                let _ = stopped_b.await;
            })
            .await
            .unwrap()
    });
    let to = format!("rfcomm://{hci0}/4");
    let sessions = [0xB7_0101u32, 0xB7_0102];
    let n = 1000;
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(d, &s)| {
            let to = to.clone();
            tokio::spawn(async move { send_lines(&to, lines(d, n), s).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), n as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    report(&format!(
        "bridge in the VM: 2 devices x {n} records over RFCOMM -> tether bridge -> TCP -> tether listen -> CSV in {secs:.2} s: {:.0} records/s",
        (2 * n) as f64 / secs
    ));
    let _ = stop_b.send(());
    let bs = b.await.unwrap();
    assert_eq!(bs.forwarded, (2 * n) as u64);
    let _ = stop_l.send(());
    let ls = l.await.unwrap();
    assert_eq!(ls.records, (2 * n) as u64);
    assert_exact(&csv, &sessions, n);
}

/// The `tether` binary: the harness's private copy (`TETHER_BIN`), or cargo's.
fn tether() -> Command {
    Command::new(
        std::env::var_os("TETHER_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tether").into()),
    )
}

/// Runs `tether ARGS` to completion with a time limit; its exit code and standard error.
fn run_tether(args: &[&str], stdin: &[u8], limit: Duration) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = tether()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether starts");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tether {args:?} did not finish within {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BlueZ: run by scripts/bluez-vm.sh in a QEMU guest"]
async fn e_the_tether_command_listens_and_sends_over_rfcomm_and_explains_errors() {
    let (hci0, _) = adapters().await;
    let dir = temp_dir("cli");
    let csv = dir.join("out.csv");
    let mut listener = tether()
        .args(["listen", "rfcomm://hci0/5", "--csv"])
        .arg(&csv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether listen starts");
    // It says where devices connect once it listens.
    let mut err = listener.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let mut b = [0u8; 256];
        while let Ok(n) = err.read(&mut b) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&b[..n]);
            let _ = tx.send(String::from_utf8_lossy(&all).into_owned());
        }
    });
    let t0 = Instant::now();
    let mut said = String::new();
    while !said.contains("devices connect to rfcomm://") {
        assert!(t0.elapsed() < Duration::from_secs(30), "listener: {said}");
        if let Ok(s) = rx.recv_timeout(Duration::from_millis(100)) {
            said = s;
        }
    }
    assert!(said.contains(&format!("rfcomm://{hci0}/5")), "{said}");
    let text = lines(0, 200);
    let to = format!("rfcomm://{hci0}/5");
    let (code, err) = run_tether(&["send", &to], text.as_bytes(), Duration::from_secs(60));
    assert_eq!(code, Some(0), "tether send: {err}");
    // Nobody listens on channel 29 of that (connectable) adapter: refused, retried, then
    // explained. (With no listener making the adapter connectable, a connect would instead
    // time out paging it, which wedges this kernel's RFCOMM: not done here.)
    let nobody = format!("rfcomm://{hci0}/29");
    let (code, err) = run_tether(
        &["send", &nobody, "--give-up-after", "3"],
        b"1,2\n",
        Duration::from_secs(60),
    );
    // Gave up: it ran and delivered nothing, exit 1 (2 is for usage errors).
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refused the connection"), "{err}");
    let pid = listener.id().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = listener.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "listener stops");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let rows = std::fs::read_to_string(&csv).unwrap().lines().count();
    assert_eq!(rows, 201, "header and 200 records");

    // No such adapter.
    let (code, err) = run_tether(
        &["listen", "rfcomm://hci7/1", "--csv", "/dev/null"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("no Bluetooth adapter named hci7"), "{err}");
    // A powered-off adapter.
    let session = bluer::Session::new().await.unwrap();
    let hci1 = session.adapter("hci1").unwrap();
    hci1.set_powered(false).await.unwrap();
    let (code, err) = run_tether(
        &["listen", "rfcomm://hci1/6", "--csv", "/dev/null"],
        b"",
        Duration::from_secs(30),
    );
    hci1.set_powered(true).await.unwrap();
    assert_eq!(code, Some(2));
    assert!(err.contains("hci1 is powered off"), "{err}");
    assert!(err.contains("bluetoothctl power on"), "{err}");
    report("error messages checked in the VM: connection refused, no adapter, adapter off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BlueZ: run by scripts/bluez-vm.sh in a QEMU guest"]
async fn z_last_a_stopped_bluetoothd_is_explained() {
    adapters().await;
    // bluetoothd stopped.
    let pid = std::fs::read_to_string("/run/bluetoothd.pid")
        .expect("the VM's init wrote bluetoothd's pid");
    Command::new("kill").arg(pid.trim()).status().expect("kill");
    std::thread::sleep(Duration::from_millis(500));
    let (code, err) = run_tether(
        &["listen", "rfcomm://hci0/7", "--csv", "/dev/null"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("bluetoothd is not running"), "{err}");
    let (code, err) = run_tether(
        &["send", "rfcomm://AA:BB:CC:DD:EE:FF/1"],
        b"1\n",
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("bluetoothd is not running"), "{err}");
    report("error messages checked in the VM: bluetoothd not running");
}
