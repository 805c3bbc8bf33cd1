//! The PostgreSQL sink (`tether listen --sink postgres://…`) through the real `tether`
//! binary and a real server (Debian's `postgresql`, installed by scripts/setup.sh): a cluster
//! made here in a temporary directory, on a free port of 127.0.0.1, as an unprivileged user,
//! with password authentication, stopped by a guard (common/pg.rs). Simulated devices that
//! declare their record kinds (tests/devices) stream to the listener; psql reads the tables.
//!
//! Without PostgreSQL the tests say so and pass, except under CI, where they fail.

mod common;
mod devices;
#[path = "common/pg.rs"]
mod pg;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::logged::Logged as Tether;
use devices::{Done, Fleet};
use pg::{Pg, PASSWORD};

fn listen(pg: &Pg, addr: &str, env: &[(&str, &str)], extra: &[&str], stdin: Stdio) -> Tether {
    let url = pg.url();
    let mut args = vec!["listen", addr, "--sink", &url];
    args.extend_from_slice(extra);
    Tether::start_env(&args, env, stdin)
}

/// Variables of a `tether` process's environment.
type Env<'a> = &'a [(&'a str, &'a str)];

const WITH_PASSWORD: Env = &[("PGPASSWORD", PASSWORD)];

/// Every record of each device once: the union of the seqs of every table that holds
/// records (the kinds' tables, the declarations, the rest) is 0..records, none twice, the
/// readings in `env` in order with the values the device's sensor produced, and
/// `tether_devices` says the last one.
fn check_exactly_once(pg: &Pg, done: &[Done]) {
    let mut tables: Vec<String> = pg
        .rows("SELECT DISTINCT table_name FROM tether_kinds ORDER BY 1")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    tables.extend(["tether_kinds".into(), "tether_records".into()]);
    let union: Vec<String> = tables
        .iter()
        .map(|t| format!("SELECT device, session, seq FROM \"{t}\""))
        .collect();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for r in pg.rows(&union.join(" UNION ALL ")) {
        assert_eq!(r[1], "0", "one numbering: {r:?}");
        seqs.entry(r[0].clone())
            .or_default()
            .push(r[2].parse().unwrap());
    }
    for (i, d) in done.iter().enumerate() {
        let id = format!("{:08x}", devices::session(i));
        let mut s = seqs
            .remove(&id)
            .unwrap_or_else(|| panic!("device {id} has no rows"));
        let n = s.len();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), n, "device {id}: a record written twice");
        assert_eq!(n, d.records as usize, "device {id}: records it sent");
        assert_eq!(s, (0..n as u64).collect::<Vec<_>>(), "device {id}: a gap");
        let last = pg.value(&format!(
            "SELECT session || ',' || last_seq FROM tether_devices WHERE device = '{id}'"
        ));
        assert_eq!(last, format!("0,{}", n - 1), "device {id}: tether_devices");
        // The readings, in order, with the sensor's values.
        let rows = pg.rows(&format!(
            "SELECT counter, temperature::text, pressure::text FROM env \
             WHERE device = '{id}' ORDER BY seq"
        ));
        assert_eq!(rows.len(), d.readings as usize, "device {id}: readings");
        let truth = devices::truth(i, d.readings);
        for (k, r) in rows.iter().enumerate() {
            assert_eq!(r[0], k.to_string(), "device {id}: reading {k} out of order");
            assert_eq!(
                (&r[1], &r[2]),
                (&truth[k].0, &truth[k].1),
                "device {id}: {k}"
            );
        }
    }
    assert!(seqs.is_empty(), "rows of other devices: {:?}", seqs.keys());
}

/// The columns of `table` and their SQL types, in order.
fn columns(pg: &Pg, table: &str) -> Vec<(String, String)> {
    pg.rows(&format!(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect()
}

fn cols(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const FIXED: [(&str, &str); 4] = [
    ("host_time", "timestamp with time zone"),
    ("device", "text"),
    ("session", "integer"),
    ("seq", "bigint"),
];

/// Waits until `acked` has grown by `more` since `from`, within 30 s.
fn wait_acked(fleet: &Fleet, more: u64) -> u64 {
    let start = fleet.acked.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.acked.load(Relaxed) < start + more {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    fleet.acked.load(Relaxed)
}

#[test]
fn each_kind_has_its_table_with_typed_columns_and_every_record_once() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start("named");
    let mut listener = listen(&pg, "tcp://127.0.0.1:0", WITH_PASSWORD, &[], Stdio::piped());
    let addr = listener.addr();
    let fleet = Fleet::start(addr, 4, 1_000, 1);
    for i in 0..4 {
        let d = format!("new device {:08x}", devices::session(i));
        listener.wait_for(&d, Duration::from_secs(10));
    }
    // A command each: a status reply and an error reply, each a kind of its own.
    let stdin = listener.child.stdin.as_mut().unwrap();
    stdin.write_all(b"* status\n* reboot\n").unwrap();
    stdin.flush().unwrap();
    let done = fleet.finish(Duration::from_secs(60));
    assert!(done.iter().all(|d| d.readings == 1_000));
    check_exactly_once(&pg, &done);
    let mut env = cols(&FIXED);
    env.extend(cols(&[
        ("counter", "bigint"),
        ("time", "bigint"),
        ("temperature", "real"),
        ("pressure", "integer"),
        ("output", "boolean"),
    ]));
    assert_eq!(columns(&pg, "env"), env);
    let mut status = cols(&FIXED);
    status.extend(cols(&[
        ("period", "bigint"),
        ("output", "boolean"),
        ("readings", "bigint"),
        ("retransmissions", "bigint"),
    ]));
    assert_eq!(columns(&pg, "status"), status);
    let mut error = cols(&FIXED);
    error.extend(cols(&[("command", "text"), ("reason", "text")]));
    assert_eq!(columns(&pg, "error"), error);
    // The units, in the columns' comments; the key.
    assert_eq!(
        pg.value("SELECT col_description('env'::regclass, 5 + 1) || ';' || col_description('env'::regclass, 5 + 2)"),
        "unit: ms;unit: °C"
    );
    assert_eq!(
        pg.value(
            "SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = 'env'::regclass AND i.indisprimary"
        ),
        "device,session,seq"
    );
    // The declarations: three kinds by each of four devices, each in its table.
    let kinds: BTreeMap<String, String> = pg
        .rows("SELECT name, table_name FROM tether_kinds")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("env".into(), "env".into()),
            ("error".into(), "error".into()),
            ("status".into(), "status".into()),
        ])
    );
    assert_eq!(pg.value("SELECT count(*) FROM tether_kinds"), "12");
    // The replies: once a device.
    assert_eq!(
        pg.rows("SELECT command, reason, count(*) FROM error GROUP BY 1, 2"),
        [["reboot", "unknown command", "4"]]
    );
    assert_eq!(
        pg.value("SELECT count(DISTINCT device) FROM status WHERE period = 1"),
        "4"
    );
    let (code, log) = listener.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("table env created for kind env: counter u32"),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "the password in the log:\n{log}");
}

#[test]
fn a_listener_killed_mid_stream_and_restarted_writes_every_record_once() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start("kill9");
    let file = pg.dir.join("password");
    pg::write_secret(&file, &format!("{PASSWORD}\n"));
    let file = file.to_str().unwrap().to_owned();
    let pwfile = ["--password-file", file.as_str()];
    let mut listener = listen(&pg, "tcp://127.0.0.1:0", &[], &pwfile, Stdio::null());
    let addr = listener.addr();
    let fleet = Fleet::start(addr, 4, 3_000, 1);
    for round in 0..2 {
        // Well into the stream, with records in flight: kill -9, and start it again.
        wait_acked(&fleet, 1_500);
        // The second time, the devices stop reading first: what the listener commits then
        // is never acknowledged to them, and they send it again to the new listener.
        if round == 1 {
            fleet.deaf.store(true, Relaxed);
            std::thread::sleep(Duration::from_millis(300));
        }
        let log = listener.kill9();
        assert!(!log.contains(PASSWORD), "{log}");
        fleet.deaf.store(false, Relaxed);
        listener = listen(&pg, &format!("tcp://{addr}"), &[], &pwfile, Stdio::null());
        let line = listener.wait_for("declared kinds read back", Duration::from_secs(10));
        // Three kinds each (env, status, error), as the devices declared them.
        assert!(
            line.contains("4 devices known, 12 declared kinds read back"),
            "{line}"
        );
    }
    // Records committed and not acknowledged were sent again, and skipped.
    listener.wait_for("are skipped", Duration::from_secs(30));
    let done = fleet.finish(Duration::from_secs(90));
    assert!(done
        .iter()
        .all(|d| d.readings == 3_000 && d.connections >= 3));
    check_exactly_once(&pg, &done);
    let (code, log) = listener.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn the_database_stopped_mid_stream_holds_the_devices_back_and_nothing_is_lost() {
    if !pg::have_postgres() {
        return;
    }
    let mut pg = Pg::start("down");
    let mut listener = listen(&pg, "tcp://127.0.0.1:0", WITH_PASSWORD, &[], Stdio::null());
    let addr = listener.addr();
    let fleet = Fleet::start(addr, 4, 4_000, 1);
    wait_acked(&fleet, 1_500);
    let from = listener.lines();
    pg.stop_fast();
    // What was acknowledged was committed before the server went; nothing after.
    std::thread::sleep(Duration::from_millis(300));
    let held = fleet.acked.load(Relaxed);
    let line = listener.wait_for_after(from, "Writing stopped", Duration::from_secs(10));
    assert!(
        line.contains("records are not acknowledged until it works again"),
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        fleet.acked.load(Relaxed),
        held,
        "acknowledged while the database was down"
    );
    let down = listener.text();
    // Reconnecting with backoff: each attempt said, the waits growing.
    let waits: Vec<f64> = down
        .lines()
        .skip(from)
        .filter_map(|l| l.split("trying again in ").nth(1))
        .filter_map(|w| w.split(" s").next()?.parse().ok())
        .collect();
    assert!(waits.len() >= 3, "reconnection attempts:\n{down}");
    assert!(
        waits.windows(2).all(|w| w[1] >= w[0]) && waits[waits.len() - 1] > waits[0],
        "backoff: {waits:?}\n{down}"
    );
    assert!(
        waits.len() <= 12,
        "no backoff: {} attempts in 4 s",
        waits.len()
    );
    pg.start_server();
    listener.wait_for_after(from, "writing works again", Duration::from_secs(30));
    let done = fleet.finish(Duration::from_secs(90));
    assert!(done.iter().all(|d| d.readings == 4_000));
    check_exactly_once(&pg, &done);
    let (code, log) = listener.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_wrong_password_is_said_and_nothing_is_acknowledged() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start("refused");
    // At start: the listener says why and exits; it never listens.
    let wrong = "not-the-password-41d9";
    let l = listen(
        &pg,
        "tcp://127.0.0.1:0",
        &[("PGPASSWORD", wrong)],
        &[],
        Stdio::null(),
    );
    let (code, log) = l.exit_within(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("password authentication failed for user \"tether\""),
        "{log}"
    );
    assert!(
        !log.contains(wrong) && !log.contains("listening on"),
        "{log}"
    );
    // No password at all.
    let l = listen(&pg, "tcp://127.0.0.1:0", &[], &[], Stdio::null());
    let (code, log) = l.exit_within(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("the server asks for a password and none was given"),
        "{log}"
    );
    // While running: the role's password changed and its connections cut. The listener
    // reconnects, is refused, says so; nothing is acknowledged until it is let in again.
    let mut listener = listen(&pg, "tcp://127.0.0.1:0", WITH_PASSWORD, &[], Stdio::null());
    let addr = listener.addr();
    let fleet = Fleet::start(addr, 2, 4_000, 1);
    wait_acked(&fleet, 1_000);
    let from = listener.lines();
    pg.rows(&format!(
        "ALTER ROLE tether PASSWORD '{wrong}'; SELECT pg_terminate_backend(pid) FROM \
         pg_stat_activity WHERE application_name = 'tether listen'"
    ));
    listener.wait_for_after(
        from,
        "password authentication failed for user \"tether\"",
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_millis(300));
    let held = fleet.acked.load(Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fleet.acked.load(Relaxed),
        held,
        "acknowledged while refused"
    );
    pg.rows(&format!("ALTER ROLE tether PASSWORD '{PASSWORD}'"));
    listener.wait_for_after(from, "writing works again", Duration::from_secs(30));
    let done = fleet.finish(Duration::from_secs(90));
    check_exactly_once(&pg, &done);
    let (code, log) = listener.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(PASSWORD) && !log.contains(wrong), "{log}");
}

#[test]
fn the_password_comes_from_pgpassword_or_a_file_never_the_command_line() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start("password");
    let file = pg.dir.join("password");
    let path = file.to_str().unwrap().to_owned();
    // A file others can read is refused, before connecting.
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let l = listen(
        &pg,
        "tcp://127.0.0.1:0",
        &[],
        &["--password-file", &path],
        Stdio::null(),
    );
    let (code, log) = l.exit_within(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("chmod 600"), "{log}");
    pg::write_secret(&file, &format!("{PASSWORD}\n"));
    // A password in the URL is refused.
    let url = pg.url().replace("tether@", &format!("tether:{PASSWORD}@"));
    let l = Tether::start_env(
        &["listen", "tcp://127.0.0.1:0", "--sink", &url],
        &[],
        Stdio::null(),
    );
    let (code, log) = l.exit_within(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("never taken from the command line"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    // Each source works; the password is neither in the command line nor in the log.
    let sources: [(Env, &[&str]); 2] = [
        (WITH_PASSWORD, &[]),
        (&[], &["--password-file", path.as_str()]),
    ];
    let mut written = 0;
    for (round, (env, extra)) in sources.into_iter().enumerate() {
        let mut listener = listen(&pg, "tcp://127.0.0.1:0", env, extra, Stdio::null());
        let addr = listener.addr();
        assert!(!listener.cmdline().contains(PASSWORD));
        assert!(
            listener.cmdline().contains(&pg.url()),
            "{}",
            listener.cmdline()
        );
        let fleet = Fleet::start(addr, 1, 200, 1);
        let done = fleet.finish(Duration::from_secs(60));
        written += done[0].records;
        let (code, log) = listener.stop();
        assert_eq!(code, Some(0), "round {round}: {log}");
        assert!(!log.contains(PASSWORD), "round {round}: {log}");
        assert_eq!(
            pg.value("SELECT count(*) FROM env"),
            (200 * (round + 1)).to_string()
        );
    }
    // The second round's device was the same one numbering afresh: session 1.
    assert_eq!(
        pg.value("SELECT count(*) FROM env WHERE session = 1"),
        "200"
    );
    assert!(written > 400);
    assert!(!pg.log().contains(PASSWORD), "the server's log");
}

#[test]
fn a_bridge_writes_into_the_database_itself() {
    if !pg::have_postgres() {
        return;
    }
    let pg = Pg::start("bridge");
    let url = pg.url();
    let dir = std::env::temp_dir().join(format!("tether-pg-bridge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("password");
    pg::write_secret(&password, &format!("{PASSWORD}\n"));
    let password = password.display().to_string();
    // `tether bridge FROM postgres://…`: the bridge is then a listener writing the database,
    // its password from --password-file.
    let mut bridge = Tether::start_env(
        &[
            "bridge",
            "tcp://127.0.0.1:0",
            &url,
            "--password-file",
            &password,
        ],
        &[],
        Stdio::null(),
    );
    let addr = bridge.addr();
    let done = Fleet::start(addr, 2, 500, 1).finish(Duration::from_secs(60));
    check_exactly_once(&pg, &done);
    let (code, log) = bridge.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    // Forwarding to a listener, a password file is refused, not ignored.
    let out = std::process::Command::new(common::logged::TETHER)
        .args([
            "bridge",
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:9",
            "--password-file",
            &password,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--password-file is the password of a postgres"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
