//! `tether sim --replay PATH` through the real binary: a device recorded by `tether listen
//! --csv-dir` replayed as two devices into a second listener, which writes exactly the
//! recorded readings for each, through faults too; the recorded pace, and faster. A
//! recording by `--sink jsonl:FILE` the same (the same named values), and the text records
//! of a `--csv-dir` (lines of `tether send`), each once, in order.
//!
//! [`library_replay_into_an_in_process_listener`] is the example to copy: the same from a
//! user's own `cargo test`, without the binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::logged::{Logged, TETHER};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-replay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A CSV file's rows (without the header).
fn rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    r.records()
        .map(|row| row.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

/// `tether ARGS`, which must exit 0 within `limit`; how long it took.
fn tether(args: &[&str], limit: Duration) -> Duration {
    let log = std::env::temp_dir().join(format!(
        "tether-replay-{}-{:?}.log",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let mut child = common::Process(
        Command::new(TETHER)
            .args(args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("tether starts"),
    );
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            let took = started.elapsed();
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            assert!(status.success(), "tether {args:?}: {status}\n{out}");
            return took;
        }
        assert!(
            started.elapsed() < limit,
            "tether {args:?} still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A listener writing `--csv-dir dir` (or `--csv FILE` with `csv`), until stopped.
fn listen(out: &Path, csv: bool) -> Logged {
    let flag = if csv { "--csv" } else { "--csv-dir" };
    Logged::start(
        &["listen", "tcp://127.0.0.1:0", flag, out.to_str().unwrap()],
        Stdio::null(),
    )
}

/// `tether sim --replay FROM ARGS…` into a fresh listener writing `out` (`--csv` if `csv`,
/// else `--csv-dir`); checks that both exit 0. How long the replay took.
fn replay_into(from: &Path, out: &Path, csv: bool, args: &[&str]) -> Duration {
    let mut l = listen(out, csv);
    let addr = format!("tcp://{}", l.addr());
    let mut all = vec!["sim", &addr, "--replay", from.to_str().unwrap()];
    all.extend_from_slice(args);
    let took = tether(&all, Duration::from_secs(150));
    let (code, log) = l.stop();
    assert_eq!(code, Some(0), "{log}");
    took
}

/// Records one `tether sim --kinds` device, 200 readings 5 ms apart (about 1 s), into a
/// `--csv-dir`; the directory and the recorded device's readings (the value columns of its
/// rows of env.csv, in seq order).
fn record(name: &str) -> (PathBuf, String, Vec<Vec<String>>) {
    let a = dir(name);
    let mut l = listen(&a, false);
    let addr = format!("tcp://{}", l.addr());
    tether(
        &[
            "sim",
            &addr,
            "--kinds",
            "--devices",
            "1",
            "--records",
            "200",
            "--period-ms",
            "5",
            "--seed",
            "41",
        ],
        Duration::from_secs(60),
    );
    let (code, log) = l.stop();
    assert_eq!(code, Some(0), "{log}");
    let env = rows(&a.join("env.csv"));
    assert_eq!(env.len(), 200);
    let device = env[0][1].clone();
    let readings = readings(&env, &device);
    (a, device, readings)
}

/// The value columns of `device`'s rows, in seq order.
fn readings(env: &[Vec<String>], device: &str) -> Vec<Vec<String>> {
    let mut mine: Vec<&Vec<String>> = env.iter().filter(|r| r[1] == device).collect();
    mine.sort_by_key(|r| r[3].parse::<u64>().unwrap());
    mine.iter().map(|r| r[4..].to_vec()).collect()
}

/// Replays `a` into a fresh `--csv-dir` with `extra` options, 2 devices; checks that each
/// device's env.csv rows are the recorded readings exactly.
fn replay_twice_and_check(a: &Path, recorded: &[Vec<String>], name: &str, extra: &[&str]) {
    let b = dir(name);
    let mut args = vec!["--devices", "2", "--seed", "3", "--timeout", "120"];
    args.extend_from_slice(extra);
    replay_into(a, &b, false, &args);
    let env = rows(&b.join("env.csv"));
    for i in 0..2 {
        let id = format!("{:08x}", tether_host::sim::device_identity(3, i).0);
        let got = readings(&env, &id);
        assert_eq!(got.len(), recorded.len(), "device {id}: {} rows", got.len());
        assert!(got == recorded, "device {id}: other readings than recorded");
    }
    assert_eq!(env.len(), 2 * recorded.len(), "rows of other devices");
    // The declarations went first: every env row is of a declared kind.
    let kinds = rows(&b.join("tether-kinds.csv"));
    assert_eq!(kinds.len(), 2 * 3, "3 declarations each: {kinds:?}");
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn a_recorded_device_replayed_as_two_writes_exactly_its_readings_for_each() {
    let (a, _, recorded) = record("exact");
    replay_twice_and_check(&a, &recorded, "exact-b", &["--speed", "max"]);
    let _ = std::fs::remove_dir_all(&a);
}

#[test]
fn a_replay_through_faults_is_still_exact() {
    let (a, _, recorded) = record("faults");
    replay_twice_and_check(
        &a,
        &recorded,
        "faults-b",
        &[
            "--speed",
            "max",
            "--faults",
            "corrupt=0.01,loss=0.01,cuts=3",
        ],
    );
    let _ = std::fs::remove_dir_all(&a);
}

#[test]
fn a_replay_keeps_the_recorded_pace_unless_faster() {
    let (a, device, _) = record("pace");
    let env = rows(&a.join("env.csv"));
    let t = |r: &Vec<String>| humantime::parse_rfc3339(&r[0]).unwrap();
    let span = t(env.last().unwrap())
        .duration_since(t(&env[0]))
        .unwrap_or_default();
    assert!(span >= Duration::from_millis(800), "recorded over {span:?}");
    let replay = |speed: &str| {
        let b = dir(&format!("pace-{speed}"));
        let took = replay_into(
            &a,
            &b,
            false,
            &["--device", &device, "--devices", "1", "--speed", speed],
        );
        let _ = std::fs::remove_dir_all(&b);
        took
    };
    let paced = replay("1");
    let fast = replay("max");
    assert!(
        paced >= span / 2,
        "recorded over {span:?}, replayed at 1x in {paced:?}"
    );
    assert!(fast < paced / 2, "at max {fast:?}, at 1x {paced:?}");
    let _ = std::fs::remove_dir_all(&a);
}

#[test]
fn a_single_csv_is_replayed_as_text_lines_of_the_chosen_device() {
    let d = dir("single");
    std::fs::create_dir_all(&d).unwrap();
    let input = d.join("in.csv");
    std::fs::write(
        &input,
        "host_time,device,seq,field_1,field_2,field_3\n\
         2026-01-01T00:00:00.000000Z,0000000a,0,21.5,ok,1\n\
         2026-01-01T00:00:00.010000Z,0000000b,0,other,device,9\n\
         2026-01-01T00:00:00.020000Z,0000000a,,<marker row>\n\
         2026-01-01T00:00:00.030000Z,0000000a,1,22.0,<<odd,2\n",
    )
    .unwrap();
    let out = d.join("out.csv");
    replay_into(
        &input,
        &out,
        true,
        &[
            "--device",
            "0000000A",
            "--devices",
            "2",
            "--speed",
            "max",
            "--seed",
            "5",
        ],
    );
    let got = rows(&out);
    for i in 0..2 {
        let id = format!("{:08x}", tether_host::sim::device_identity(5, i).0);
        let fields: Vec<Vec<String>> = got
            .iter()
            .filter(|r| r[1] == id && !r[2].is_empty())
            .map(|r| r[3..].to_vec())
            .collect();
        assert_eq!(
            fields,
            [["21.5", "ok", "1"], ["22.0", "<<odd", "2"]],
            "device {id}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A listener writing `--sink jsonl:FILE`, until stopped.
fn listen_jsonl(file: &Path) -> Logged {
    let sink = format!("jsonl:{}", file.display());
    Logged::start(
        &["listen", "tcp://127.0.0.1:0", "--sink", &sink],
        Stdio::null(),
    )
}

/// A CSV cell is what the JSON lines sink wrote as `v`: a JSON string the cell's text (the
/// CSV doubling a leading `<`), anything else the same JSON value as the cell.
fn same_value(cell: &str, v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) if s.starts_with('<') => cell == format!("<{s}"),
        serde_json::Value::String(s) => cell == s,
        v => {
            serde_json::from_str::<serde_json::Value>(cell)
                .ok()
                .as_ref()
                == Some(v)
        }
    }
}

#[test]
fn a_json_lines_recording_is_replayed_with_the_same_named_values() {
    let d = dir("jsonl");
    std::fs::create_dir_all(&d).unwrap();
    let recorded = d.join("recorded.jsonl");
    let mut l = listen_jsonl(&recorded);
    let addr = format!("tcp://{}", l.addr());
    tether(
        &[
            "sim",
            &addr,
            "--kinds",
            "--devices",
            "1",
            "--records",
            "150",
            "--period-ms",
            "2",
            "--seed",
            "43",
        ],
        Duration::from_secs(60),
    );
    let (code, log) = l.stop();
    assert_eq!(code, Some(0), "{log}");
    // Per kind: its fields' keys (from its declaration) and its records' values, in seq order.
    let text = std::fs::read_to_string(&recorded).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut fields: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut values: std::collections::BTreeMap<String, Vec<(u64, Vec<serde_json::Value>)>> =
        Default::default();
    for l in lines.iter().filter(|l| l["seq"].is_u64()) {
        if l["kind"].is_u64() {
            let names = l["fields"].as_array().unwrap();
            let names = names.iter().map(|f| f["name"].as_str().unwrap().to_owned());
            fields.insert(l["name"].as_str().unwrap().to_owned(), names.collect());
        }
    }
    for l in lines.iter().filter(|l| l["kind"].is_string()) {
        let kind = l["kind"].as_str().unwrap().to_owned();
        let vals = fields[&kind].iter().map(|f| l[f].clone()).collect();
        values
            .entry(kind)
            .or_default()
            .push((l["seq"].as_u64().unwrap(), vals));
    }
    for v in values.values_mut() {
        v.sort_by_key(|(seq, _)| *seq);
    }
    assert_eq!(
        values["env"].len(),
        150,
        "kinds recorded: {:?}",
        fields.keys()
    );

    let b = dir("jsonl-b");
    replay_into(
        &recorded,
        &b,
        false,
        &[
            "--devices",
            "2",
            "--seed",
            "9",
            "--speed",
            "max",
            "--faults",
            "corrupt=0.01,cuts=2",
            "--timeout",
            "120",
        ],
    );
    for (kind, want) in &values {
        let got = rows(&b.join(format!("{kind}.csv")));
        assert_eq!(
            got.len(),
            2 * want.len(),
            "{kind}.csv: rows of other devices"
        );
        for i in 0..2 {
            let id = format!("{:08x}", tether_host::sim::device_identity(9, i).0);
            let mine: Vec<&Vec<String>> = got.iter().filter(|r| r[1] == id).collect();
            assert_eq!(mine.len(), want.len(), "device {id}, {kind}.csv");
            for (row, (seq, vals)) in mine.iter().zip(want) {
                let cells = &row[4..];
                let same = cells.len() == vals.len()
                    && cells.iter().zip(vals).all(|(c, v)| same_value(c, v));
                assert!(
                    same,
                    "device {id}: recorded seq {seq}: {vals:?}, replayed {row:?}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn the_text_records_of_a_csv_dir_are_replayed_once_in_order() {
    let a = dir("texts");
    std::fs::create_dir_all(&a).unwrap();
    let input = a.join("lines.txt");
    let mut lines: Vec<String> = (0..40).map(|i| format!("{i},reading {i},ok")).collect();
    lines[10] = "\"quoted, with a comma\",x".into();
    lines[20] = "<angle,1".into();
    lines[30] = "one field".into();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let recorded = a.join("recorded");
    let mut l = listen(&recorded, false);
    let addr = format!("tcp://{}", l.addr());
    tether(
        &["send", &addr, input.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let (code, log) = l.stop();
    assert_eq!(code, Some(0), "{log}");
    // The lines' fields, as the CSV writes them.
    let want: Vec<Vec<String>> = lines
        .iter()
        .map(|line| {
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(line.as_bytes());
            let row = r.records().next().unwrap().unwrap();
            row.iter()
                .map(|f| {
                    if f.starts_with('<') {
                        format!("<{f}")
                    } else {
                        f.to_owned()
                    }
                })
                .collect()
        })
        .collect();
    let texts = |path: &Path, device: Option<&str>| -> Vec<Vec<String>> {
        rows(&path.join("tether-records.csv"))
            .into_iter()
            .filter(|r| !r[3].is_empty() && device.is_none_or(|d| r[1] == d))
            .map(|r| r[4..].to_vec())
            .collect()
    };
    assert_eq!(texts(&recorded, None), want, "the recording");

    let b = dir("texts-b");
    replay_into(
        &recorded,
        &b,
        false,
        &[
            "--devices",
            "2",
            "--seed",
            "11",
            "--speed",
            "max",
            "--faults",
            "loss=0.01,cuts=3",
            "--timeout",
            "120",
        ],
    );
    for i in 0..2 {
        let id = format!("{:08x}", tether_host::sim::device_identity(11, i).0);
        assert_eq!(texts(&b, Some(&id)), want, "device {id}");
    }
    assert_eq!(
        texts(&b, None).len(),
        2 * want.len(),
        "rows of other devices"
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// The library way, to copy into your own `cargo test`: replay a recorded stream (here a
/// small `--csv` file written on the spot; a `--csv-dir` directory the same way) as two
/// devices into a listener in the test's own process, then check what it wrote.
#[tokio::test]
async fn library_replay_into_an_in_process_listener() {
    use tether_host::listen::{ListenOptions, Listener};
    use tether_host::sim::replay::{self, ReplayOptions, Speed, Stream};
    use tether_host::sim::Faults;

    let d = dir("library");
    std::fs::create_dir_all(&d).unwrap();
    let recorded = d.join("recorded.csv");
    let mut text = String::from("host_time,device,seq,field_1,field_2\n");
    for i in 0..50 {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000 * 1_000 + i * 2);
        text += &format!(
            "{},00000001,{i},{i},{}\n",
            humantime::format_rfc3339_micros(at),
            i * 3
        );
    }
    std::fs::write(&recorded, text).unwrap();
    let stream = Stream::load(&recorded, None).expect("a recorded stream");
    assert_eq!(stream.records.len(), 50);

    // A listener in this process, on a free loopback port, writing a CSV.
    let csv = d.join("received.csv");
    let opts = ListenOptions::new(vec!["tcp://127.0.0.1:0".parse().unwrap()], csv.clone());
    let listener = Listener::bind(opts).await.expect("binds");
    let addr = listener.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(listener.run(async {
        let _ = stopped.await;
    }));

    let opts = ReplayOptions {
        endpoint: format!("tcp://{addr}").parse().unwrap(),
        devices: 2,
        faults: "corrupt=0.01,cuts=2".parse::<Faults>().unwrap(),
        seed: 7,
        speed: Speed::Times(10.0),
        timeout: Duration::from_secs(60),
        max_version: tether_core::link::MAX_PROTOCOL_VERSION,
    };
    let summary = replay::run(&opts, Arc::new(stream))
        .await
        .expect("replayed");
    assert_eq!(summary.acknowledged, 2 * 50);
    // Acknowledged means written: stop the listener and read its CSV.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the listener stops in time")
        .expect("listener task")
        .expect("listener ran");
    let got = rows(&csv);
    for i in 0..2 {
        let id = format!("{:08x}", tether_host::sim::device_identity(7, i).0);
        let fields: Vec<(u64, u64)> = got
            .iter()
            .filter(|r| r[1] == id && !r[2].is_empty())
            .map(|r| (r[3].parse().unwrap(), r[4].parse().unwrap()))
            .collect();
        let want: Vec<(u64, u64)> = (0..50).map(|i| (i, i * 3)).collect();
        assert_eq!(fields, want, "device {id}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
