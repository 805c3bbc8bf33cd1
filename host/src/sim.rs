//! `tether sim`: simulated devices (the firmware-sim device model) streaming a fixed number
//! of readings each to a listener over TCP, through a seeded fault injector (corrupted
//! bytes, lost frames, random splits, connection cuts), and the check of the CSV that
//! listener wrote: every reading exactly once, in order, intact. [`replay`]: a recorded
//! stream sent again as one or many devices (`tether sim --replay PATH`).

pub mod replay;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_core::link::LinkStorage;
use tether_firmware_sim::device::{Device, DeviceConfig, Sensor};
use tether_firmware_sim::fault::{FaultConfig, FaultInjector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::clock::Clock;
use crate::endpoint::Endpoint;

/// How long one connection attempt of a simulated device may take (RFCOMM pages the peer).
/// How often a running simulation says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The faults, as `corrupt=0.01,loss=0.01,cuts=20,split=on` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Probability that a byte is corrupted, each direction.
    pub corrupt: f32,
    /// Probability that a frame (device → host) or a read (host → device) is lost.
    pub loss: f32,
    /// Connection cuts over the whole run, spread over the devices.
    pub cuts: u32,
    /// Write in random-sized pieces.
    pub split: bool,
}

impl std::str::FromStr for Faults {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut f = Faults {
            split: true,
            ..Faults::default()
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("`{part}`: write faults as name=value, e.g. corrupt=0.01")
            })?;
            let prob = |v: &str| -> Result<f32, String> {
                match v.parse::<f32>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                    _ => Err(format!("`{v}` is not a probability from 0 to 1")),
                }
            };
            match k {
                "corrupt" => f.corrupt = prob(v)?,
                "loss" => f.loss = prob(v)?,
                "cuts" => {
                    f.cuts = v
                        .parse()
                        .map_err(|_| format!("`{v}` is not a count of cuts"))?
                }
                "split" => f.split = matches!(v, "on" | "true" | "1"),
                other => {
                    return Err(format!(
                        "unknown fault `{other}` (corrupt, loss, cuts, split)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The listener.
    pub endpoint: Endpoint,
    /// Simulated devices.
    pub devices: usize,
    /// Readings each device sends.
    pub records: u32,
    /// The faults.
    pub faults: Faults,
    /// Seeds the devices' identities and sensors and every fault.
    pub seed: u64,
    /// Milliseconds between a device's readings.
    pub period_ms: u32,
    /// Give up if the run takes longer.
    pub timeout: Duration,
    /// The devices declare their record kinds (`env`, `status`, `error`: `PROTOCOL.md`
    /// 10.5) before their readings, which are then records of kind `env`, named fields.
    pub kinds: bool,
    /// The highest protocol version the devices offer (`PROTOCOL.md` 11.2).
    pub max_version: u8,
}

/// What the devices did.
#[derive(Debug, Clone, Default)]
pub struct SimSummary {
    /// Readings acknowledged, all devices.
    pub acknowledged: u64,
    /// Connection cuts made.
    pub cuts: u32,
    /// Retransmissions by the devices.
    pub retransmissions: u64,
    /// Bytes corrupted and frames lost by the injectors.
    pub corrupted_bytes: u64,
    /// Frames or reads lost by the injectors.
    pub lost: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The identity of simulated device `i` of a run seeded `seed`; also how `--verify` finds
/// its rows and replays its sensor.
pub fn device_identity(seed: u64, i: usize) -> (u32, u64) {
    let session =
        0x5100_0000 | ((seed as u32).wrapping_mul(64).wrapping_add(i as u32 + 1) & 0x00FF_FFFF);
    (
        session.max(1),
        seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1),
    )
}

type SimDevice = Device<LinkStorage<16, 16, 128>>;

struct DeviceRun {
    acknowledged: u64,
    cuts: u32,
    retransmissions: u64,
    corrupted: u64,
    lost: u64,
}

async fn run_device(
    opts: &SimOptions,
    i: usize,
    cuts: u32,
    acked: &AtomicU64,
) -> Result<DeviceRun, String> {
    let (session, sensor_seed) = device_identity(opts.seed, i);
    let mut cfg = DeviceConfig::new(session, sensor_seed);
    cfg.period_ms = opts.period_ms;
    cfg.record_limit = Some(opts.records);
    cfg.declare_kinds = opts.kinds;
    cfg.link.max_version = opts.max_version;
    let mut device = SimDevice::new(cfg, LinkStorage::new()).map_err(|e| e.to_string())?;
    let fault = |salt: u64| {
        let mut f =
            FaultConfig::clean(opts.seed.wrapping_mul(31).wrapping_add(i as u64 * 2 + salt));
        f.corrupt_byte = opts.faults.corrupt;
        f.lose_write = opts.faults.loss;
        f.split = opts.faults.split;
        f
    };
    let mut up = FaultInjector::new(fault(0));
    let mut down = FaultInjector::new(fault(1));
    // Cut after these readings have been queued, spread over the run.
    let mut cut_at: Vec<u32> = (0..cuts)
        .map(|k| ((u64::from(k) + 1) * u64::from(opts.records) / (u64::from(cuts) + 1)) as u32)
        .collect();
    cut_at.reverse();
    let clock = Clock::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut frame = vec![0u8; device.link().transmit_len()];
    let mut out = Vec::with_capacity(16 * 1024);
    let mut input = Vec::with_capacity(16 * 1024);
    let mut made_cuts = 0;
    let done = |d: &SimDevice| d.stats().readings == opts.records && d.link().unacked() == 0;
    while !done(&device) {
        let timeout = crate::transport::connect_timeout(&opts.endpoint);
        let mut stream = match crate::transport::connect(&opts.endpoint, timeout).await {
            Ok(s) => s,
            Err(e) if e.is_permanent() => return Err(e.to_string()),
            Err(e) => {
                debug!("device {session:08x}: cannot connect: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        device
            .transport_up(clock.now())
            .map_err(|e| e.to_string())?;
        loop {
            let now = clock.now();
            device.poll(now);
            if cut_at.last().is_some_and(|&c| device.stats().readings >= c) {
                cut_at.pop();
                made_cuts += 1;
                break; // drops the connection: what is in flight is lost
            }
            while let Some(n) = device.poll_transmit(now, &mut frame) {
                // One frame per write into the injector, so a lost write is a lost frame.
                let _ = up.write(&frame[..n], |b| out.push(b));
            }
            let mut rest = &out[..];
            let mut failed = false;
            while !rest.is_empty() {
                let n = up.piece(rest.len());
                if stream.write_all(&rest[..n]).await.is_err() {
                    failed = true;
                    break;
                }
                rest = &rest[n..];
            }
            out.clear();
            // Readings acknowledged, for the progress line: records acknowledged less the
            // declarations and replies (which come first, or are few).
            let st = device.stats();
            let records = st.records().saturating_sub(device.link().unacked());
            acked.store(
                u64::from(records.saturating_sub(st.declarations + st.replies)),
                Ordering::Relaxed,
            );
            if failed || done(&device) {
                break;
            }
            let deadline = device.poll_timeout().map(|d| clock.instant(d));
            tokio::select! {
                r = stream.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        input.clear();
                        let _ = down.write(&buf[..n], |b| input.push(b));
                        device.handle_input(clock.now(), &input);
                    }
                },
                _ = async { match deadline { Some(t) => tokio::time::sleep_until(t).await, None => tokio::time::sleep(Duration::from_millis(100)).await } } => {}
            }
            if device.needs_transport() {
                break;
            }
        }
        device.transport_down();
    }
    let (u, d) = (up.stats(), down.stats());
    Ok(DeviceRun {
        acknowledged: u64::from(device.stats().readings),
        cuts: made_cuts,
        retransmissions: u64::from(device.link().stats().retransmissions),
        corrupted: u.corrupted_bytes + d.corrupted_bytes,
        lost: u.lost_writes + d.lost_writes,
    })
}

/// Runs the devices until each has sent `records` readings and had them all acknowledged.
pub async fn run(opts: &SimOptions) -> Result<SimSummary, String> {
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..opts.devices).map(|_| AtomicU64::new(0)).collect());
    for i in 0..opts.devices {
        let cuts = opts.faults.cuts / opts.devices as u32
            + u32::from((i as u32) < opts.faults.cuts % opts.devices.max(1) as u32);
        let o = opts.clone();
        let acked = acked.clone();
        tasks.spawn(async move { run_device(&o, i, cuts, &acked[i]).await });
    }
    let expected = opts.devices as u64 * u64::from(opts.records);
    let progress = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let n: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
                info!(
                    "{n} of {expected} readings acknowledged ({:.0} %) after {:.0} s",
                    n as f64 * 100.0 / expected.max(1) as f64,
                    started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut s = SimSummary::default();
    let all = async {
        while let Some(r) = tasks.join_next().await {
            let r = r.map_err(|e| format!("device task: {e}"))??;
            s.acknowledged += r.acknowledged;
            s.cuts += r.cuts;
            s.retransmissions += r.retransmissions;
            s.corrupted_bytes += r.corrupted;
            s.lost += r.lost;
        }
        Ok::<(), String>(())
    };
    let finished = tokio::time::timeout(opts.timeout, all).await;
    progress.abort();
    finished.map_err(|_| {
        let n: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        format!(
            "not finished within {}: {n} of {expected} readings acknowledged",
            humantime::format_duration(opts.timeout)
        )
    })??;
    s.seconds = started.elapsed().as_secs_f64();
    info!(
        "{} readings acknowledged in {:.2} s",
        s.acknowledged, s.seconds
    );
    Ok(s)
}

/// What the CSV holds of a run's devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Readings expected (devices × records).
    pub expected: u64,
    /// Readings found, once each, in order, intact.
    pub good: u64,
    /// Readings missing.
    pub lost: u64,
    /// Readings found more than once.
    pub duplicated: u64,
    /// Readings found after a later one.
    pub reordered: u64,
    /// Readings whose values differ from what the device's sensor produced.
    pub corrupted: u64,
}

impl Verdict {
    /// Nothing lost, duplicated, reordered or corrupted.
    pub fn clean(&self) -> bool {
        self.good == self.expected
            && self.lost + self.duplicated + self.reordered + self.corrupted == 0
    }
}

/// Checks the readings of the run seeded `seed` (devices × records) in `csv`.
pub fn verify(csv: &Path, seed: u64, devices: usize, records: u32) -> Result<Verdict, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv)
        .map_err(|e| format!("cannot read {}: {e}", csv.display()))?;
    let ids: HashMap<String, usize> = (0..devices)
        .map(|i| (format!("{:08x}", device_identity(seed, i).0), i))
        .collect();
    // Per device: the counters in file order and the (temperature, pressure) text of each.
    let mut seen: Vec<Vec<(u32, String, String)>> = vec![Vec::new(); devices];
    for row in reader.records() {
        let row = row.map_err(|e| format!("malformed CSV: {e}"))?;
        let Some(&i) = row.get(1).and_then(|d| ids.get(d)) else {
            continue;
        };
        // Readings start with the counter; replies with a word ("status", "error").
        let Some(Ok(counter)) = row.get(3).map(str::parse::<u32>) else {
            continue;
        };
        let t = row.get(5).unwrap_or_default().to_owned();
        let p = row.get(6).unwrap_or_default().to_owned();
        seen[i].push((counter, t, p));
    }
    let mut v = Verdict {
        expected: devices as u64 * u64::from(records),
        ..Verdict::default()
    };
    for (i, rows) in seen.iter().enumerate() {
        let mut sensor = Sensor::new(device_identity(seed, i).1);
        let truth: Vec<(String, String)> = (0..records)
            .map(|_| {
                let s = sensor.sample();
                (s.temperature.to_string(), s.pressure.to_string())
            })
            .collect();
        let mut count = vec![0u32; records as usize];
        let mut max_seen: Option<u32> = None;
        for (counter, t, p) in rows {
            let Some(slot) = count.get_mut(*counter as usize) else {
                v.corrupted += 1;
                continue;
            };
            *slot += 1;
            if max_seen.is_some_and(|m| *counter <= m) {
                if *slot == 1 {
                    v.reordered += 1;
                }
            } else {
                max_seen = Some(*counter);
            }
            let (tt, tp) = &truth[*counter as usize];
            if t != tt || p != tp {
                v.corrupted += 1;
            }
        }
        for c in count {
            match c {
                0 => v.lost += 1,
                1 => v.good += 1,
                n => {
                    v.good += 1;
                    v.duplicated += u64::from(n - 1);
                }
            }
        }
    }
    v.good = v.good.saturating_sub(v.corrupted + v.reordered);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSV as the listener writes it for device 0 of seed 9, readings `order`.
    fn csv_with(order: &[u32], corrupt: Option<u32>) -> std::path::PathBuf {
        let (session, sensor_seed) = device_identity(9, 0);
        let mut sensor = Sensor::new(sensor_seed);
        let truth: Vec<_> = (0..5).map(|_| sensor.sample()).collect();
        let mut text =
            String::from("host_time,device,seq,field_1,field_2,field_3,field_4,field_5\n");
        for (seq, &k) in order.iter().enumerate() {
            let s = &truth[k as usize];
            let t = if corrupt == Some(k) {
                s.temperature + 1.0
            } else {
                s.temperature
            };
            text += &format!("t,{session:08x},{seq},{k},0,{t},{},false\n", s.pressure);
        }
        text += &format!("t,{session:08x},99,status,1,false,5,0\n");
        let path = std::env::temp_dir().join(format!(
            "tether-verify-{}-{order:?}-{corrupt:?}.csv",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn verify_counts_every_kind_of_damage() {
        let check = |order: &[u32], corrupt| {
            let p = csv_with(order, corrupt);
            let v = verify(&p, 9, 1, 5).unwrap();
            std::fs::remove_file(p).unwrap();
            v
        };
        assert!(check(&[0, 1, 2, 3, 4], None).clean());
        let v = check(&[0, 1, 3, 4], None);
        assert_eq!((v.lost, v.clean()), (1, false));
        let v = check(&[0, 1, 2, 2, 3, 4], None);
        assert_eq!((v.duplicated, v.clean()), (1, false));
        let v = check(&[0, 2, 1, 3, 4], None);
        assert_eq!((v.reordered, v.clean()), (1, false));
        let v = check(&[0, 1, 2, 3, 4], Some(3));
        assert_eq!((v.corrupted, v.clean()), (1, false));
    }

    #[test]
    fn faults_parse_and_refuse_nonsense() {
        let f: Faults = "corrupt=0.01,loss=0.02,cuts=20".parse().unwrap();
        assert_eq!(
            f,
            Faults {
                corrupt: 0.01,
                loss: 0.02,
                cuts: 20,
                split: true
            }
        );
        assert!("corrupt=2".parse::<Faults>().is_err());
        assert!("bogus=1".parse::<Faults>().is_err());
        assert!("corrupt".parse::<Faults>().is_err());
        assert_eq!(
            "".parse::<Faults>().unwrap(),
            Faults {
                split: true,
                ..Faults::default()
            }
        );
    }
}
