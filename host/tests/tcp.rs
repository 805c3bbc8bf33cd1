//! `tether listen` and `tether send` through real sockets on 127.0.0.1.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_core::frame::{self, Header, Kind};
use tether_core::link::{Config, Instant, Link, LinkStorage, Role};
use tether_host::endpoint::Endpoint;
use tether_host::listen::{ListenOptions, ListenSummary, Listener};
use tether_host::send::{send, SendOptions, SendSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<ListenSummary>,
    commands: tether_host::listen::Commands,
}

async fn start(csv: &Path, tweak: impl FnOnce(&mut ListenOptions)) -> Running {
    let mut opts = ListenOptions::new(vec!["tcp://127.0.0.1:0".parse().unwrap()], csv.to_owned());
    tweak(&mut opts);
    let listener = Listener::bind(opts).await.expect("binds");
    let addr = listener.local_addrs()[0];
    let commands = listener.commands();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        listener
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("listener runs")
    });
    Running {
        addr,
        stop,
        done,
        commands,
    }
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
    tweak: impl FnOnce(&mut SendOptions),
) -> Result<SendSummary, tether_host::send::SendError> {
    let mut opts = SendOptions::new(Endpoint::Tcp(addr));
    tweak(&mut opts);
    send(
        &opts,
        tokio::io::BufReader::new(std::io::Cursor::new(text.into_bytes())),
        |_| {},
    )
    .await
}

/// The CSV as device → [(seq, fields)] in file order.
fn read_csv(path: &Path) -> HashMap<String, Vec<(u32, Vec<String>)>> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .expect("CSV exists");
    let mut by: HashMap<String, Vec<(u32, Vec<String>)>> = HashMap::new();
    for row in r.records() {
        let row = row.expect("well-formed CSV");
        let device = row[1].to_owned();
        let seq: u32 = row[2].parse().expect("seq");
        by.entry(device)
            .or_default()
            .push((seq, row.iter().skip(3).map(str::to_owned).collect()));
    }
    by
}

/// Every device's rows are exactly its lines, once each, in order.
fn assert_exact(by: &HashMap<String, Vec<(u32, Vec<String>)>>, devices: usize, n: usize) {
    assert_eq!(by.len(), devices, "devices in the CSV");
    let mut seen = vec![false; devices];
    for rows in by.values() {
        assert_eq!(rows.len(), n, "rows of one device");
        let d: usize = rows[0].1[0].trim_start_matches("dev").parse().unwrap();
        seen[d] = true;
        for (i, (seq, fields)) in rows.iter().enumerate() {
            assert_eq!(*seq, i as u32);
            assert_eq!(
                fields,
                &[format!("dev{d}"), i.to_string(), (i * 7).to_string()]
            );
        }
    }
    assert!(seen.iter().all(|&s| s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_stream_concurrently_and_every_record_lands_once() {
    let dir = temp_dir("many");
    let csv = dir.join("out.csv");
    let l = start(&csv, |_| {}).await;
    let (devices, n) = (6, 500);
    let tasks: Vec<_> = (0..devices)
        .map(|d| tokio::spawn(send_lines(l.addr, lines(d, n), |_| {})))
        .collect();
    for t in tasks {
        let s = t.await.unwrap().expect("sender succeeds");
        assert_eq!(s.records, n as u64);
    }
    let summary = l.stop().await;
    assert_eq!(summary.records, (devices * n) as u64);
    assert_exact(&read_csv(&csv), devices, n);
}

/// Forwards connections to `to`, cutting each of the first `cuts` connections after
/// `after` bytes from the client.
async fn cutting_proxy(to: SocketAddr, after: usize, cuts: usize) -> SocketAddr {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        for i in 0.. {
            let Ok((mut client, _)) = front.accept().await else {
                return;
            };
            let Ok(mut server) = TcpStream::connect(to).await else {
                return;
            };
            let limit = if i < cuts { Some(after) } else { None };
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    let mut moved = 0;
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let n = match limit {
                            Some(l) if moved + n >= l => {
                                let _ = sw.write_all(&buf[..l - moved]).await;
                                return; // cut
                            }
                            _ => n,
                        };
                        moved += n;
                        if sw.write_all(&buf[..n]).await.is_err() {
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
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_stream_resumes_and_the_csv_is_exact() {
    let dir = temp_dir("cut");
    let csv = dir.join("out.csv");
    let l = start(&csv, |_| {}).await;
    let proxy = cutting_proxy(l.addr, 3_000, 3).await;
    let s = send_lines(proxy, lines(0, 2_000), |_| {})
        .await
        .expect("sender succeeds");
    assert_eq!(s.records, 2_000);
    assert!(s.reconnects >= 3, "{s:?}");
    let summary = l.stop().await;
    assert_eq!(summary.records, 2_000);
    assert_exact(&read_csv(&csv), 1, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_protocol_violations_are_dropped_and_others_carry_on() {
    let dir = temp_dir("garbage");
    let csv = dir.join("out.csv");
    let l = start(&csv, |o| o.handshake_timeout = Duration::from_millis(500)).await;
    // Garbage, zeros and all, then silence.
    let mut g = TcpStream::connect(l.addr).await.unwrap();
    let noise: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    g.write_all(&noise).await.unwrap();
    // A DATA frame before any HELLO.
    let mut v = TcpStream::connect(l.addr).await.unwrap();
    let mut wire = vec![0u8; 64];
    let n = frame::encode(
        &Header {
            kind: Kind::Data,
            ..Header::default()
        },
        b"sneaky",
        &mut wire,
    )
    .unwrap();
    v.write_all(&wire[..n]).await.unwrap();
    // A client that connects and says nothing.
    let _silent = TcpStream::connect(l.addr).await.unwrap();
    // Each is disconnected by the listener.
    for s in [&mut g, &mut v] {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    // A good device is served meanwhile and afterwards.
    let s = send_lines(l.addr, lines(0, 300), |_| {})
        .await
        .expect("sender succeeds");
    assert_eq!(s.records, 300);
    tokio::time::sleep(Duration::from_millis(700)).await; // the silent one times out
    let summary = l.stop().await;
    assert!(summary.dropped_connections >= 3, "{summary:?}");
    assert_exact(&read_csv(&csv), 1, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_mid_stream_keeps_everything_acknowledged_in_the_csv() {
    let dir = temp_dir("stop");
    let csv = dir.join("out.csv");
    let l = start(&csv, |_| {}).await;
    let addr = l.addr;
    // A small window keeps the sender mid-stream when the listener stops 400 ms in (with
    // the default one, protocol version 2 sends 200,000 lines in about a second here).
    let sender = tokio::spawn(send_lines(addr, lines(0, 200_000), |o| {
        o.give_up_after = Duration::from_secs(2);
        o.window = 4;
    }));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let summary = l.stop().await;
    let err = sender
        .await
        .unwrap()
        .expect_err("the listener went away mid-stream");
    let acked = match err {
        tether_host::send::SendError::GaveUp { acked, .. } => acked,
        other => panic!("unexpected {other}"),
    };
    let by = read_csv(&csv);
    let rows = by.values().next().map_or(0, Vec::len);
    assert!(acked > 0, "some records went through before the stop");
    assert!(
        rows as u64 >= acked,
        "every acknowledged record is in the CSV ({rows} rows, {acked} acked)"
    );
    assert_eq!(rows as u64, summary.records);
    // And what is there is exact: a prefix, in order, once each.
    for (i, (seq, fields)) in by.values().next().unwrap().iter().enumerate() {
        assert_eq!(
            (*seq, fields[1].as_str()),
            (i as u32, i.to_string().as_str())
        );
    }
}

/// A minimal device: a `Link` over a blocking socket, releasing every command it gets.
fn device(addr: SocketAddr, want: usize) -> Vec<Vec<u8>> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut link = Link::new(
        Config::new(Role::Client, 0xDE71CE),
        LinkStorage::<4, 4, 128>::new(),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    link.connect(now());
    link.send(b"hello from the device").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let mut out = vec![0u8; link.transmit_len()];
    while start.elapsed() < Duration::from_secs(10) {
        while let Some(n) = link.poll_transmit(now(), &mut out) {
            s.write_all(&out[..n]).unwrap();
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => link.handle_input(now(), &buf[..n]),
            Err(_) => {}
        }
        link.handle_timeout(now());
        let cmds: Vec<Vec<u8>> = link.received().map(|r| r.payload.to_vec()).collect();
        link.release(cmds.len());
        got.extend(cmds);
        if got.len() >= want && link.unacked() == 0 {
            // Flush the acknowledgement of the last command.
            while let Some(n) = link.poll_transmit(now(), &mut out) {
                s.write_all(&out[..n]).unwrap();
            }
            break;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_a_connected_device_and_are_acknowledged() {
    let dir = temp_dir("commands");
    let csv = dir.join("out.csv");
    let l = start(&csv, |_| {}).await;
    let addr = l.addr;
    let dev = tokio::task::spawn_blocking(move || device(addr, 2));
    // Wait until the device is known, then command it.
    let mut tries = 0;
    while l.commands.devices().is_empty() {
        tries += 1;
        assert!(tries < 200, "the device never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(l.commands.send(Some(0xDE71CE), b"rate 50"), 1);
    assert_eq!(l.commands.send(None, b"output on"), 1);
    assert_eq!(l.commands.send(Some(0x1234), b"nobody"), 0);
    let got = dev.await.unwrap();
    assert_eq!(got, [b"rate 50".to_vec(), b"output on".to_vec()]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        l.commands.unacknowledged(0xDE71CE),
        Some(0),
        "both commands acknowledged"
    );
    l.stop().await;
    let by = read_csv(&csv);
    assert_eq!(
        by["00de71ce"],
        [(0, vec!["hello from the device".to_owned()])]
    );
}
