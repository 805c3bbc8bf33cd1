//! Simulated devices that declare their record kinds (the firmware-sim device model with
//! `declare_kinds`), each on a thread of its own over TCP to a `tether listen`, reconnecting
//! (to wherever `addr` says, so a test can restart the listener) until every reading it
//! was to send is acknowledged.
// Each test file is its own crate and uses a part of this.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tether_core::link::{Instant as LinkInstant, LinkStorage};
use tether_firmware_sim::device::{Device, DeviceConfig, Sensor};

/// The session identity of device `i` of a fleet (the CSV's `device`, in hex).
pub fn session(i: usize) -> u32 {
    0x00E0_0000 + i as u32 + 1
}

/// The sensor seed of device `i`: its k-th reading is the k-th sample of `Sensor::new`.
pub fn seed(i: usize) -> u64 {
    1_000 + i as u64
}

/// What one device did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Done {
    /// Readings it queued (and, when done, had acknowledged).
    pub readings: u32,
    /// Every record it queued: the declarations, readings and replies.
    pub records: u32,
    /// Connections it made.
    pub connections: u32,
}

/// Devices streaming to a listener.
pub struct Fleet {
    pub addr: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    /// While set, the devices read nothing, and once it is cleared they drop their
    /// connection unread: the listener's acknowledgements meanwhile are lost, so the records
    /// it wrote then stay unacknowledged and are sent again.
    pub deaf: Arc<AtomicBool>,
    /// Readings acknowledged so far, all devices.
    pub acked: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<Done, String>>>,
}

impl Fleet {
    /// `n` devices, each sending `readings` readings, one every `period_ms`.
    pub fn start(addr: SocketAddr, n: usize, readings: u32, period_ms: u32) -> Fleet {
        let addr = Arc::new(Mutex::new(addr));
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let deaf = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|i| {
                let (addr, stop, acked, deaf) =
                    (addr.clone(), stop.clone(), acked.clone(), deaf.clone());
                std::thread::spawn(move || run(i, readings, period_ms, &addr, &stop, &acked, &deaf))
            })
            .collect();
        Fleet {
            addr,
            stop,
            deaf,
            acked,
            threads,
        }
    }

    /// Where the devices connect from now on.
    pub fn point_to(&self, addr: SocketAddr) {
        *self.addr.lock().unwrap() = addr;
    }

    /// Waits until every device is done (everything acknowledged), within `limit`.
    pub fn finish(mut self, limit: Duration) -> Vec<Done> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        for t in std::mem::take(&mut self.threads) {
            while !t.is_finished() {
                if Instant::now() > deadline {
                    self.stop.store(true, Ordering::Relaxed);
                    panic!(
                        "devices not done within {limit:?} ({} readings acknowledged)",
                        self.acked.load(Ordering::Relaxed)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            out.push(t.join().expect("device thread").expect("device"));
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Sim = Device<LinkStorage<16, 16, 128>>;

fn run(
    i: usize,
    readings: u32,
    period_ms: u32,
    addr: &Mutex<SocketAddr>,
    stop: &AtomicBool,
    acked: &AtomicU64,
    deaf: &AtomicBool,
) -> Result<Done, String> {
    let mut cfg = DeviceConfig::new(session(i), seed(i));
    cfg.period_ms = period_ms;
    cfg.record_limit = Some(readings);
    cfg.declare_kinds = true;
    let mut device = Sim::new(cfg, LinkStorage::new()).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let now = || LinkInstant::from_millis(start.elapsed().as_millis() as u64);
    let mut frame = vec![0u8; device.link().transmit_len()];
    let mut buf = vec![0u8; 16 * 1024];
    let mut connections = 0;
    let mut reported = 0u64;
    let mut was_deaf = false;
    let done = |d: &Sim| d.stats().readings == readings && d.link().unacked() == 0;
    while !done(&device) {
        if stop.load(Ordering::Relaxed) {
            return Err("stopped".into());
        }
        let target = *addr.lock().unwrap();
        let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            device.poll(now());
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        connections += 1;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(2)));
        device.transport_up(now()).map_err(|e| e.to_string())?;
        'connected: while !done(&device) && !stop.load(Ordering::Relaxed) {
            device.poll(now());
            while let Some(n) = device.poll_transmit(now(), &mut frame) {
                if stream.write_all(&frame[..n]).is_err() {
                    break 'connected;
                }
            }
            if deaf.load(Ordering::Relaxed) {
                was_deaf = true;
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            if std::mem::take(&mut was_deaf) {
                // What came meanwhile is lost with the connection, unread.
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => device.handle_input(now(), &buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            let a = u64::from(
                device
                    .stats()
                    .readings
                    .saturating_sub(device.link().unacked()),
            );
            if a > reported {
                acked.fetch_add(a - reported, Ordering::Relaxed);
                reported = a;
            }
            if device.needs_transport() {
                break;
            }
        }
        device.transport_down();
    }
    Ok(Done {
        readings: device.stats().readings,
        records: device.stats().records(),
        connections,
    })
}

/// The (temperature, pressure) texts of device `i`'s readings 0..n, as the CSV writes them.
pub fn truth(i: usize, n: u32) -> Vec<(String, String)> {
    let mut s = Sensor::new(seed(i));
    (0..n)
        .map(|_| {
            let x = s.sample();
            (x.temperature.to_string(), x.pressure.to_string())
        })
        .collect()
}
