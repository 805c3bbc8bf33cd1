//! A throwaway PostgreSQL cluster for tests (Debian's `postgresql` package, installed by
//! scripts/setup.sh): `initdb` in a temporary directory, the server on a free port of
//! 127.0.0.1 only (its unix socket in that directory), password authentication
//! (scram-sha-256) for TCP, run as an unprivileged user when the test runs as root
//! (`postgres`, else `nobody`), and always stopped when dropped. And a `tether` process whose
//! environment the test chooses (the database's password in PGPASSWORD), its standard error
//! read line by line.
// Each test file is its own crate and uses a part of this.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The database's role and password (the tests' own cluster, nothing else uses it).
pub const USER: &str = "tether";
pub const PASSWORD: &str = "pw-6f1c2a9e-never-in-logs";
/// The database the sink writes.
pub const DB: &str = "t";

/// Where Debian puts the server's programs (the highest version installed).
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

/// Whether PostgreSQL is here; if not, the test is skipped (a failure under CI).
pub fn have_postgres() -> bool {
    crate::common::required(bin_dir().is_some(), "PostgreSQL (Debian's postgresql)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The uid and gid the server runs as: ours unless we are root, then `postgres` or
/// `nobody`.
fn server_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id(&["-u"])? != 0 {
        return None;
    }
    for user in ["postgres", "nobody"] {
        if let (Some(u), Some(g)) = (id(&["-u", user]), id(&["-g", user])) {
            return Some((u, g));
        }
    }
    panic!("running as root, and neither a postgres nor a nobody user to run the server as");
}

/// A cluster and its server, stopped and removed when dropped.
pub struct Pg {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

impl Pg {
    /// A new cluster in a temporary directory named after `name`, started, with the
    /// database [`DB`] created.
    pub fn start(name: &str) -> Pg {
        let bin = bin_dir().expect("PostgreSQL's programs");
        let dir = std::env::temp_dir().join(format!("tether-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let user = server_user();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        if let Some((u, g)) = user {
            std::os::unix::fs::chown(&dir, Some(u), Some(g)).unwrap();
            std::os::unix::fs::chown(&pwfile, Some(u), Some(g)).unwrap();
        }
        let mut pg = Pg {
            dir,
            port: free_port(),
            bin,
            user,
            server: None,
        };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&pwfile);
        // Loopback only, the socket in the directory; the pg_hba.conf initdb wrote asks TCP
        // clients for their password (scram-sha-256).
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 20\nshared_buffers = 32MB\nlog_min_messages = warning\n",
            pg.port,
            pg.dir.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        pg.start_server();
        let out = pg.psql("postgres", &format!("CREATE DATABASE {DB}"));
        assert!(out.is_ok(), "CREATE DATABASE: {out:?}");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `BIN` of the server's programs, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = match self.user {
            Some((u, g)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={u}"))
                    .arg(format!("--regid={g}"))
                    .arg("--clear-groups")
                    .arg(path);
                c
            }
            None => Command::new(path),
        };
        c.env("LC_ALL", "C").current_dir(&self.dir);
        c
    }

    /// Starts the server (its log appended to `DIR/server.log`) and waits until it
    /// accepts connections.
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(s) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited ({s}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `pg_ctl stop -m fast`: active connections are cut, the server shuts down cleanly;
    /// returns once it is gone.
    pub fn stop_fast(&mut self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "fast", "-w", "-t", "30"])
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(mut c) = self.server.take() {
            let _ = c.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The sink's URL (no password in it).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DB}", self.port)
    }

    /// Runs `sql` with psql in database `db` over the unix socket (trusted: no password);
    /// its output, unaligned, `|` between columns.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .command("psql")
            .args(["-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db])
            .args(["-X", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The rows `sql` returns in [`DB`], each a list of texts; panics on an error.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let out = self.psql(DB, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        out.lines()
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect()
    }

    /// The one value `sql` returns.
    pub fn value(&self, sql: &str) -> String {
        let rows = self.rows(sql);
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        rows[0][0].clone()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            // SIGQUIT: an immediate shutdown (its backends with it); SIGKILL if it lingers.
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("TETHER_KEEP_PG").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes `text` to `path` with mode 600 (a password file).
pub fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
