//! Authenticated links end to end on 127.0.0.1 (`PROTOCOL.md` 9.14): the right key streams
//! to the CSV exactly; a wrong, unknown or missing key is refused with a reason and nothing of
//! the device is written; a frame altered or replayed on the path is dropped and the link
//! recovers by retransmission, the CSV still exact.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_core::frame::{self, Decoder, Kind};
use tether_host::endpoint::Endpoint;
use tether_host::keys;
use tether_host::listen::{ListenOptions, ListenSummary, Listener};
use tether_host::send::{send, SendError, SendOptions, SendSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn key_hex(b: u8) -> String {
    format!("{b:02x}").repeat(32)
}

/// Writes a key file of `(device id, key byte)` lines, mode 600.
fn key_file(dir: &Path, name: &str, keys: &[(u32, u8)]) -> PathBuf {
    let p = dir.join(name);
    let text: String = keys
        .iter()
        .map(|(id, b)| format!("{id:08x} {}\n", key_hex(*b)))
        .collect();
    std::fs::write(&p, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    p
}

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<ListenSummary>,
}

async fn start(csv: &Path, keys: Option<&Path>) -> Running {
    let mut opts = ListenOptions::new(vec!["tcp://127.0.0.1:0".parse().unwrap()], csv.to_owned());
    opts.keys = keys.map(|p| Arc::new(keys::load_table(p).expect("key file")));
    let listener = Listener::bind(opts).await.expect("binds");
    let addr = listener.local_addrs()[0];
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        listener
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("listener runs")
    });
    Running { addr, stop, done }
}

impl Running {
    async fn stop(self) -> ListenSummary {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.done)
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

async fn send_lines(
    addr: SocketAddr,
    text: String,
    key: Option<&Path>,
) -> Result<SendSummary, SendError> {
    let mut opts = SendOptions::new(Endpoint::Tcp(addr));
    opts.key = key.map(|p| keys::load_one(p).expect("key file"));
    opts.give_up_after = Duration::from_secs(10);
    send(
        &opts,
        tokio::io::BufReader::new(std::io::Cursor::new(text.into_bytes())),
        |_| {},
    )
    .await
}

/// The CSV's data rows as device → [(seq, fields)], in file order.
fn read_csv(path: &Path) -> HashMap<String, Vec<(u32, Vec<String>)>> {
    let mut by: HashMap<String, Vec<(u32, Vec<String>)>> = HashMap::new();
    let Ok(mut r) = csv::ReaderBuilder::new().flexible(true).from_path(path) else {
        return by;
    };
    for row in r.records() {
        let row = row.expect("well-formed CSV");
        let Ok(seq) = row[2].parse::<u32>() else {
            continue; // a notice row, not a record
        };
        by.entry(row[1].to_owned())
            .or_default()
            .push((seq, row.iter().skip(3).map(str::to_owned).collect()));
    }
    by
}

/// Every device's rows are exactly its lines, once each, in order.
fn assert_exact(by: &HashMap<String, Vec<(u32, Vec<String>)>>, devices: usize, n: usize) {
    assert_eq!(by.len(), devices, "devices in the CSV");
    for rows in by.values() {
        assert_eq!(rows.len(), n, "rows of one device");
        let d: usize = rows[0].1[0].trim_start_matches("dev").parse().unwrap();
        for (i, (seq, fields)) in rows.iter().enumerate() {
            assert_eq!(*seq, i as u32);
            assert_eq!(
                fields,
                &[format!("dev{d}"), i.to_string(), (i * 7).to_string()]
            );
        }
    }
}

fn refused(r: Result<SendSummary, SendError>) -> String {
    match r {
        Err(SendError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_with_the_right_key_stream_to_the_csv_exactly() {
    let dir = temp_dir("right");
    let csv = dir.join("out.csv");
    let table = key_file(&dir, "keys", &[(0xa1, 1), (0xa2, 2)]);
    let k1 = key_file(&dir, "k1", &[(0xa1, 1)]);
    let k2 = key_file(&dir, "k2", &[(0xa2, 2)]);
    let l = start(&csv, Some(&table)).await;
    let (a, b) = tokio::join!(
        send_lines(l.addr, lines(0, 400), Some(&k1)),
        send_lines(l.addr, lines(1, 400), Some(&k2)),
    );
    assert_eq!(a.expect("device 0").records, 400);
    assert_eq!(b.expect("device 1").records, 400);
    let summary = l.stop().await;
    assert_eq!(summary.records, 800);
    assert_exact(&read_csv(&csv), 2, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_unknown_and_missing_keys_are_refused_and_nothing_is_written() {
    let dir = temp_dir("refused");
    let csv = dir.join("out.csv");
    let table = key_file(&dir, "keys", &[(0xa1, 1)]);
    let wrong = key_file(&dir, "wrong", &[(0xa1, 9)]);
    let unknown = key_file(&dir, "unknown", &[(0xbeef, 1)]);
    let l = start(&csv, Some(&table)).await;
    let why = refused(send_lines(l.addr, lines(0, 20), Some(&wrong)).await);
    assert!(
        why.contains("authentication failed for device 000000a1: wrong key"),
        "{why}"
    );
    let why = refused(send_lines(l.addr, lines(1, 20), Some(&unknown)).await);
    assert!(why.contains("no key for device 0000beef"), "{why}");
    let why = refused(send_lines(l.addr, lines(2, 20), None).await);
    assert!(why.contains("authentication required"), "{why}");
    let summary = l.stop().await;
    assert_eq!((summary.records, summary.devices), (0, 0));
    assert!(summary.dropped_connections >= 3, "{summary:?}");
    assert!(
        read_csv(&csv).is_empty(),
        "nothing of a refused device is written"
    );

    // A keyed device at a listener without keys is refused too, by name.
    let csv2 = dir.join("plain.csv");
    let l = start(&csv2, None).await;
    let k = key_file(&dir, "k", &[(0xa1, 1)]);
    let why = refused(send_lines(l.addr, lines(0, 20), Some(&k)).await);
    assert!(why.contains("this listener has no keys"), "{why}");
    assert_eq!(l.stop().await.records, 0);
    assert!(read_csv(&csv2).is_empty());
}

/// What a man in the middle does to the device's frames.
#[derive(Clone, Copy)]
enum Attack {
    /// Flips one byte of the record in every `n`-th DATA frame, CRC made right again.
    Tamper(usize),
    /// Sends every `n`-th DATA frame twice.
    Replay(usize),
}

/// A proxy that decodes the device's frames and re-encodes them (byte for byte the same),
/// attacking some; the listener's frames pass untouched. Counts the frames attacked.
async fn attacking_proxy(to: SocketAddr, attack: Attack) -> (SocketAddr, Arc<AtomicUsize>) {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let attacked = Arc::new(AtomicUsize::new(0));
    let count = attacked.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = front.accept().await else {
                return;
            };
            let Ok(mut server) = TcpStream::connect(to).await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut dec = Decoder::new(vec![0u8; frame::raw_len(2048)]);
                    let mut buf = [0u8; 4096];
                    let mut data = 0usize;
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let mut out = Vec::new();
                        let mut input = &buf[..n];
                        while let Some(r) = dec.decode(&mut input) {
                            let Ok(f) = r else { continue };
                            let mut payload = f.payload.to_vec();
                            let mut wire = vec![0u8; frame::max_encoded_len(payload.len())];
                            let k = frame::encode(&f.header, &payload, &mut wire).unwrap();
                            let genuine = wire[..k].to_vec();
                            if f.header.kind == Kind::Data {
                                data += 1;
                            }
                            match attack {
                                Attack::Tamper(every)
                                    if f.header.kind == Kind::Data && data % every == 0 =>
                                {
                                    payload[0] ^= 0x01; // the record's first byte
                                    let k = frame::encode(&f.header, &payload, &mut wire).unwrap();
                                    out.extend_from_slice(&wire[..k]);
                                    count.fetch_add(1, Ordering::Relaxed);
                                }
                                Attack::Replay(every)
                                    if f.header.kind == Kind::Data && data % every == 0 =>
                                {
                                    out.extend_from_slice(&genuine);
                                    out.extend_from_slice(&genuine);
                                    count.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => out.extend_from_slice(&genuine),
                            }
                        }
                        if sw.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    (addr, attacked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_data_frame_is_dropped_and_retransmitted_and_the_csv_is_exact() {
    let dir = temp_dir("tamper");
    let csv = dir.join("out.csv");
    let table = key_file(&dir, "keys", &[(0xa1, 1)]);
    let k = key_file(&dir, "k", &[(0xa1, 1)]);
    let l = start(&csv, Some(&table)).await;
    let (proxy, attacked) = attacking_proxy(l.addr, Attack::Tamper(50)).await;
    let s = send_lines(proxy, lines(0, 600), Some(&k))
        .await
        .expect("sender succeeds");
    assert_eq!(s.records, 600);
    let tampered = attacked.load(Ordering::Relaxed);
    assert!(tampered >= 5, "{tampered} frames tampered");
    assert!(
        s.retransmissions as usize >= tampered,
        "each tampered frame was sent again: {s:?}"
    );
    assert_eq!(l.stop().await.records, 600);
    assert_exact(&read_csv(&csv), 1, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frames_are_dropped_in_the_connection_and_in_a_later_one() {
    let dir = temp_dir("replay");
    let csv = dir.join("out.csv");
    let table = key_file(&dir, "keys", &[(0xa1, 1)]);
    let k = key_file(&dir, "k", &[(0xa1, 1)]);
    let l = start(&csv, Some(&table)).await;

    // A recording proxy: the device's whole first connection, byte for byte.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = front.local_addr().unwrap();
    let to = l.addr;
    let recorded = tokio::spawn(async move {
        let (mut client, _) = front.accept().await.unwrap();
        let mut server = TcpStream::connect(to).await.unwrap();
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let mut log = Vec::new();
        let up = async {
            let mut buf = [0u8; 4096];
            loop {
                match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        log.extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let down = async {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        };
        tokio::select! { _ = up => {}, _ = down => {} }
        log
    });
    let s = send_lines(proxy, lines(0, 300), Some(&k))
        .await
        .expect("sender");
    assert_eq!(s.records, 300);
    let log = recorded.await.unwrap();
    assert!(log.len() > 1000);

    // Replayed within a connection: every 20th DATA frame twice.
    let (proxy, attacked) = attacking_proxy(l.addr, Attack::Replay(20)).await;
    let k2 = key_file(&dir, "k2", &[(0xa1, 1)]);
    let s = send_lines(proxy, lines(1, 300), Some(&k2))
        .await
        .expect("sender");
    assert_eq!(s.records, 300);
    assert!(attacked.load(Ordering::Relaxed) >= 10);

    // The first connection replayed whole into a new one: its HELLO is genuine, so the
    // listener answers, but every frame after it was made under the old connection's key.
    let mut c = TcpStream::connect(l.addr).await.unwrap();
    c.write_all(&log).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), c.read(&mut answer)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let summary = l.stop().await;
    assert_eq!(summary.records, 600, "nothing replayed was written");
    let by = read_csv(&csv);
    // Both senders were the same device id, each its own session: exact each.
    assert_exact(&by, 2, 300);
}

#[test]
fn key_files_are_refused_when_others_can_read_them() {
    let dir = temp_dir("cli");
    let p = key_file(&dir, "keys", &[(0xa1, 1)]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["listen", "tcp://127.0.0.1:0", "--csv"])
        .arg(dir.join("x.csv"))
        .arg("--keys")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(&key_hex(1)), "the key is never shown");
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["send", "tcp://127.0.0.1:9", "--key-file"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

/// A TCP endpoint on 127.0.0.1 with a port that was free a moment ago, and the port.
fn free_endpoint() -> (String, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (format!("tcp://127.0.0.1:{port}"), port)
}

/// `tether ARGS` serving on 127.0.0.1:`port`, its log in `log`, once it listens (at most
/// 10 s).
fn serving(args: &[&std::ffi::OsStr], port: u16, log: &Path) -> common::Process {
    let process = common::Process(
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed().as_secs() < 10,
            "tether {args:?} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    process
}

/// Stops `process` as Ctrl-C does, and waits (at most 10 s) until it exits.
fn interrupt(process: &mut common::Process) {
    let killed = Command::new("kill")
        .args(["-INT", &process.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = std::time::Instant::now();
    while process.try_wait().unwrap().is_none() {
        assert!(start.elapsed().as_secs() < 10, "it did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tether` with `input` on standard input.
fn tether(args: &[&str], extra: &[&Path], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_cli_streams_with_the_right_key_and_both_sides_say_why_a_wrong_one_is_refused() {
    let dir = temp_dir("cli-e2e");
    let csv = dir.join("out.csv");
    let table = key_file(&dir, "keys", &[(0xa1, 1)]);
    let right = key_file(&dir, "right", &[(0xa1, 1)]);
    let wrong = key_file(&dir, "wrong", &[(0xa1, 2)]);
    let (endpoint, port) = free_endpoint();
    let mut listener = serving(
        &[
            "listen".as_ref(),
            endpoint.as_ref(),
            "--csv".as_ref(),
            csv.as_ref(),
            "--keys".as_ref(),
            table.as_ref(),
        ],
        port,
        &dir.join("listener.log"),
    );
    let wrong_out = tether(
        &["send", &endpoint, "--key-file"],
        &[&wrong],
        "1,intruder\n",
    );
    let right_out = tether(&["send", &endpoint, "--key-file"], &[&right], &lines(0, 50));
    let plain_out = tether(&["send", &endpoint], &[], "2,plain\n");
    interrupt(&mut listener);
    let log = std::fs::read_to_string(dir.join("listener.log")).unwrap();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(right_out.status.success(), "{}", err(&right_out));
    assert!(!wrong_out.status.success());
    assert!(
        err(&wrong_out).contains("authentication failed for device 000000a1: wrong key"),
        "{}",
        err(&wrong_out)
    );
    assert!(!plain_out.status.success());
    assert!(
        err(&plain_out).contains("authentication required"),
        "{}",
        err(&plain_out)
    );
    assert!(
        log.contains("refused: Auth: authentication failed for device 000000a1: wrong key"),
        "{log}"
    );
    assert!(log.contains("refused: AuthRequired"), "{log}");
    assert!(log.contains("authenticating devices: 1 keys"), "{log}");
    assert!(
        !log.contains(&key_hex(1)) && !log.contains(&key_hex(2)),
        "keys never logged"
    );
    assert_exact(&read_csv(&csv), 1, 50);
}

/// `tether bridge FROM csv:FILE` is a listener, and takes the listener's options: `--keys`
/// (a device without its key is refused), `--max-devices` (a second device takes the idle
/// first one's place) and `--fsync` (accepted). They were dropped without a word: a bridge
/// given `--keys` took any device.
#[test]
fn a_bridge_writing_the_csv_itself_takes_the_listeners_keys_device_limit_and_fsync() {
    let dir = temp_dir("bridge-csv");
    let csv = dir.join("out.csv");
    let table = key_file(&dir, "keys", &[(0xa1, 1)]);
    let right = key_file(&dir, "right", &[(0xa1, 1)]);
    let (endpoint, port) = free_endpoint();
    let target = format!("csv:{}", csv.display());
    let mut bridge = serving(
        &[
            "bridge".as_ref(),
            endpoint.as_ref(),
            target.as_ref(),
            "--keys".as_ref(),
            table.as_ref(),
            "--max-devices".as_ref(),
            "1".as_ref(),
            "--fsync".as_ref(),
        ],
        port,
        &dir.join("bridge.log"),
    );
    // Two runs of the device: each run is a new session, the second in the first's place.
    let first = tether(&["send", &endpoint, "--key-file"], &[&right], &lines(0, 20));
    let second = tether(&["send", &endpoint, "--key-file"], &[&right], &lines(1, 20));
    let plain = tether(&["send", &endpoint], &[], "2,plain\n");
    interrupt(&mut bridge);
    let log = std::fs::read_to_string(dir.join("bridge.log")).unwrap();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(first.status.success(), "{}", err(&first));
    assert!(second.status.success(), "{}", err(&second));
    assert!(!plain.status.success());
    assert!(
        err(&plain).contains("authentication required"),
        "{}",
        err(&plain)
    );
    assert!(log.contains("authenticating devices: 1 keys"), "{log}");
    assert!(log.contains("forgotten to make room"), "{log}");
    assert_exact(&read_csv(&csv), 2, 20);
}
