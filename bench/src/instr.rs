//! Instructions a record: the figure that carries over to another machine (a Raspberry Pi
//! runs the same code; its time per instruction differs, the count barely does).
//!
//! [`probe`] moves records from a device's `Link` (client) to a listener's `Link` (server,
//! configured as `tether listen` configures its links) and through the listener's CSV
//! sink, in memory: no socket, no thread, no clock (time is a counter advanced one
//! millisecond a turn), so the work is the same from one run to the next. `tether-bench
//! --instr-probe N` runs it; [`count`] runs that under `valgrind --tool=callgrind` at two
//! record counts and divides the difference of their instruction counts by the difference
//! of the records, which takes start-up and the handshake out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use tether_core::link::{Config, Instant, Link, Phase, Role, MIN_FRAME};
use tether_host::sink::{Batch, CsvSink, Sink};
use tether_host::storage::HeapStorage;

use crate::BenchError;

/// The function whose instructions are the listener's share of a turn (callgrind's
/// `--toggle-collect` pattern names it).
pub const LISTENER_TURN: &str = "*instr::listener_turn*";

/// Bytes a turn moves at most each way: the listener's read buffer.
const READ: usize = 64 * 1024;

/// Pushes `records` 16-byte records from a device link to a listener link speaking at most
/// protocol `version`, writing each into a CSV file in `dir` (removed afterwards) as the
/// listener does: one batch a turn, committed, then released. Checks that every record
/// arrived once; returns the records written.
pub fn probe(records: u64, version: u8, dir: &Path) -> Result<u64, BenchError> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: tether_core::link::ConfigError| BenchError::Failed(format!("{what}: {e:?}"))
    };
    let window = tether_host::options::Serving::DEFAULT.window;
    let max_record = tether_host::options::Serving::DEFAULT.max_record;
    // The device: a `tether send`-like client with the listener's default window, slots
    // of the smallest frame (records up to 66 bytes).
    let mut cfg = Config::new(Role::Client, 1);
    cfg.window = window as u16;
    cfg.max_version = version;
    let mut device = Link::new(cfg, HeapStorage::new(window, 4, MIN_FRAME))
        .map_err(failed("the device's link"))?;
    // The listener's link for that device, as `tether listen` makes it (listen.rs,
    // `Logger::new_link`): receive slots the device's record size long, 8 command slots.
    let record = (MIN_FRAME - tether_core::frame::OVERHEAD).min(max_record);
    let mut cfg = Config::new(Role::Server, 2);
    cfg.max_send = record as u16;
    cfg.max_version = version;
    let mut listener = Link::new(
        cfg,
        HeapStorage::new(window.min(8), window, record + tether_core::frame::OVERHEAD),
    )
    .map_err(failed("the listener's link"))?;
    std::fs::create_dir_all(dir).map_err(crate::io(format!("creating {}", dir.display())))?;
    let csv = dir.join(format!(
        "instr-{}-{records}-v{version}.csv",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&csv);
    let mut sink =
        CsvSink::open(&csv, false).map_err(|e| BenchError::Failed(format!("the CSV: {e}")))?;

    let mut t = Instant::from_millis(0);
    device.connect(t);
    listener.connect(t);
    let mut up = vec![0u8; READ + device.transmit_len()];
    let mut down = vec![0u8; READ + listener.transmit_len()];
    let (mut queued, mut written) = (0u64, 0u64);
    let turns = records * 4 + 100_000;
    let mut turn = 0u64;
    while queued < records || device.unacked() > 0 || device.phase() != Phase::Established {
        turn += 1;
        if turn > turns {
            return Err(BenchError::Failed(format!(
                "instruction probe (v{version}): stuck after {turn} turns, {written} of {records} written, link {:?}",
                device.phase()
            )));
        }
        t = t.plus(1);
        if device.phase() == Phase::Established {
            while queued < records && device.can_send() {
                // 16 bytes, as the other measurements send them.
                let r = format!("{:08},{:07}", queued % 100_000_000, queued % 10_000_000);
                device
                    .send(r.as_bytes())
                    .map_err(|e| BenchError::Failed(format!("send: {e:?}")))?;
                queued += 1;
            }
        }
        if device.poll_timeout().is_some_and(|w| w <= t) {
            device.handle_timeout(t);
        }
        let n = fill(&mut device, t, &mut up);
        let (w, m) = listener_turn(&mut listener, &mut sink, t, &up[..n], &mut down)?;
        written += w;
        if m > 0 {
            device.handle_input(t, &down[..m]);
        }
        while device.poll_event().is_some() {}
    }
    drop(sink);
    let rows = std::fs::read(&csv)
        .map_err(crate::io("reading the probe's CSV"))?
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64;
    let _ = std::fs::remove_file(&csv);
    // The header and one row a record.
    if written != records || rows != records + 1 {
        return Err(BenchError::Failed(format!(
            "instruction probe (v{version}): {written} of {records} records written, {rows} CSV lines"
        )));
    }
    Ok(written)
}

/// What `link` has to send at `t`, into `out` (up to [`READ`] bytes); its length.
fn fill(link: &mut Link<HeapStorage>, t: Instant, out: &mut [u8]) -> usize {
    let mut used = 0;
    while used < READ {
        match link.poll_transmit(t, &mut out[used..]) {
            Some(k) => used += k,
            None => break,
        }
    }
    used
}

/// The listener's share of a turn, what `tether listen` does for a read: the bytes in, the
/// records received written as one batch, committed and released, the answer out (into
/// `out`). Records written, and the bytes of the answer.
#[inline(never)]
fn listener_turn(
    link: &mut Link<HeapStorage>,
    sink: &mut CsvSink,
    t: Instant,
    input: &[u8],
    out: &mut [u8],
) -> Result<(u64, usize), BenchError> {
    if !input.is_empty() {
        link.handle_input(t, input);
    }
    if link.poll_timeout().is_some_and(|w| w <= t) {
        link.handle_timeout(t);
    }
    let mut n = 0;
    {
        let mut batch = Batch::new(&mut *sink as &mut dyn Sink);
        let time = SystemTime::UNIX_EPOCH;
        for r in link.received() {
            batch
                .write(time, 1, r.seq, r.payload)
                .map_err(|e| BenchError::Failed(format!("the CSV: {e}")))?;
            n += 1;
        }
        if n > 0 {
            batch
                .commit()
                .map_err(|e| BenchError::Failed(format!("the CSV: {e}")))?;
        }
    }
    link.release(n);
    while link.poll_event().is_some() {}
    Ok((n as u64, fill(link, t, out)))
}

/// Instructions a record, measured by callgrind: the whole turn (device and listener) and
/// the listener's share, for protocol `version`, from runs of `small` and `large` records.
#[derive(Debug, Clone, Copy)]
pub struct Count {
    /// Instructions a record, device and listener together.
    pub total: f64,
    /// The listener's share ([`listener_turn`]: its link, the CSV sink).
    pub listener: f64,
}

/// Where valgrind is, if it is installed.
pub fn valgrind() -> Option<PathBuf> {
    let out = Command::new("valgrind").arg("--version").output().ok()?;
    out.status.success().then(|| PathBuf::from("valgrind"))
}

/// Runs `probe_exe --instr-probe N` under callgrind at `small` and `large` records, whole
/// and for the listener's share; instructions a record from the differences.
pub fn count(
    valgrind: &Path,
    probe_exe: &Path,
    dir: &Path,
    version: u8,
    (small, large): (u64, u64),
) -> Result<Count, BenchError> {
    let run = |records: u64, listener_only: bool| -> Result<u64, BenchError> {
        let mut cmd = Command::new(valgrind);
        cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"]);
        if listener_only {
            cmd.arg("--collect-atstart=no")
                .arg(format!("--toggle-collect={LISTENER_TURN}"));
        }
        let out = cmd
            .arg(probe_exe)
            .arg("--instr-probe")
            .arg(records.to_string())
            .arg("--instr-version")
            .arg(version.to_string())
            .arg("--dir")
            .arg(dir)
            .output()
            .map_err(crate::io("running valgrind"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(BenchError::Failed(format!(
                "the instruction probe under callgrind failed ({}): {}",
                out.status,
                stderr.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
            )));
        }
        let n = collected(&stderr).ok_or_else(|| {
            BenchError::Failed(format!(
                "no `Collected :` line in callgrind's summary: {}",
                stderr.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
            ))
        })?;
        if n == 0 {
            // The function was renamed or inlined: `--toggle-collect` matched nothing.
            return Err(BenchError::Failed(format!(
                "callgrind counted nothing in {LISTENER_TURN}"
            )));
        }
        Ok(n)
    };
    let per = |listener_only: bool| -> Result<f64, BenchError> {
        let a = run(small, listener_only)?;
        let b = run(large, listener_only)?;
        Ok((b as f64 - a as f64) / (large - small) as f64)
    };
    Ok(Count {
        total: per(false)?,
        listener: per(true)?,
    })
}

/// The instructions callgrind counted, from its summary on standard error
/// (`==123== Collected : 4567890`).
pub fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let rest = l.split("Collected :").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_summary() {
        let s = "==7== Events    : Ir\n==7== Collected : 123456789\n==7== \n==7== I   refs:      123,456,789\n";
        assert_eq!(collected(s), Some(123_456_789));
        assert_eq!(collected("==7== I   refs: 12\n"), None);
    }

    #[test]
    fn probe_delivers_every_record_both_versions() {
        let dir = std::env::temp_dir().join(format!("tether-instr-{}", std::process::id()));
        for v in [1, 2] {
            assert_eq!(probe(3_000, v, &dir).expect("probe"), 3_000);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
