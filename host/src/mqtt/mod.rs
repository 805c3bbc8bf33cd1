//! The MQTT sink (`--sink mqtt://HOST:PORT/PREFIX`): every record one PUBLISH at QoS 1,
//! released to its device only once the broker's PUBACK came and the listener's small
//! durable state says so.
//!
//! ```text
//!  device tasks ── deferred::pass ──► Publisher::submit (no waiting: many PUBLISHes in flight)
//!        ▲                                   │ rumqttc's request channel
//!        │ wake, take_durable                ▼
//!        └──────────── the publisher's thread: rumqttc's event loop
//!                         Outgoing::Publish(pkid) ─ which record has which packet id
//!                         PUBACK(pkid) ─ acknowledged; per device, the contiguous prefix
//!                         burst over ─ state file written (fsync with --fsync), then durable
//! ```
//!
//! # Topics and payloads
//!
//! A record of device `D` (8 hex digits, the CSV's `device`) is published at QoS 1 on
//! `PREFIX/D/record/KIND` if it is of a kind `KIND` the device declared (`PROTOCOL.md`
//! 10.5), on `PREFIX/D/record` otherwise, and a declaration, retained, on
//! `PREFIX/D/kind/NAME`. Its payload is a JSON object whose keys come in this order:
//! `device` (the same 8 hex digits), `session` (the device's numbering: 0, one more each
//! time the device started its numbering afresh under the same id), `seq` (its sequence
//! number), `host_time` (RFC 3339, UTC, microseconds, when the listener received it), then:
//! a record of a declared kind, `kind` (its name) and each field under its declared name,
//! numbers and booleans as JSON values, strings as they are, bytes in hex; a declaration,
//! `kind` (its id), `name` and `fields` (`[{"name", "type", "unit"}]`); any other record,
//! its fields `field_1`, `field_2`, … as the CSV's columns have them (typed numbers and
//! booleans as JSON numbers and booleans, everything else as the CSV's text). A NaN or
//! infinite float is the string `"NaN"`, `"inf"`, `"-inf"`. (`device`, `session`, `seq`)
//! is the record's key: a consumer that keeps the keys it saw drops every duplicate. The
//! declarations are kept in the kinds file beside the state file ([`state::KindsFile`]).
//!
//! Tether's own messages: `PREFIX/D/status` (retained: the device's link state),
//! `PREFIX/D/marker` (a discontinuity, the CSV's marker row), and
//! `PREFIX/listener/CLIENT_ID` (retained: the listener's own state, its last will).
//!
//! # What the broker holds
//!
//! See [`publish`] for the rules, and the README ("Many sites into one broker").

pub mod publish;
pub mod state;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::deferred::Deferred;
use crate::recover::{RecoverError, Recovered};
use crate::sink::{Sink, SinkError};

pub use publish::{DeviceStatus, Publisher};

/// The default port of `mqtt://`.
pub const DEFAULT_PORT: u16 = 1883;
/// The default port of `mqtts://`.
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// How `mqtts://` checks the broker and shows itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// The certificates (PEM) the broker's must chain to; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate chain and its private key (PEM), if the broker wants one.
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
}

/// Where and how records are published: `mqtt://HOST[:PORT]/PREFIX[?OPTION=VALUE&…]`.
///
/// Options: `state=FILE` (the durable state; default `tether-mqtt.state` in the working
/// directory), `client_id=ID` (default `tether-` and the state file's random id),
/// `inflight=N` (PUBLISHes awaiting their PUBACK at once, 1 to 65,535; default 1,000),
/// `credentials=FILE` (a file of mode 600 with `username=…` and `password=…` lines; or
/// the environment's `TETHER_MQTT_USERNAME` and `TETHER_MQTT_PASSWORD`). `mqtts://` is
/// MQTT over TLS (port 8883 by default): the broker's certificate is checked against
/// `ca=FILE` (PEM) or else the system's roots, for the URL's host name; `cert=FILE` and
/// `key=FILE` (PEM) give a client certificate where the broker asks for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// The broker's host (an address or a name).
    pub host: String,
    /// TLS (`mqtts://`), and how.
    pub tls: Option<Tls>,
    /// Its port.
    pub port: u16,
    /// The topic prefix (one or more levels, no wildcard).
    pub prefix: String,
    /// The state file.
    pub state: PathBuf,
    /// The client id, if given.
    pub client_id: Option<String>,
    /// PUBLISHes in flight at most.
    pub inflight: u16,
    /// The credentials file, if given.
    pub credentials: Option<PathBuf>,
}

/// Why an `mqtt://` URL was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {why}")]
pub struct UrlError {
    url: String,
    why: String,
}

impl FromStr for MqttUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| UrlError {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let (rest, mut tls) = if let Some(r) = url.strip_prefix("mqtt://") {
            (r, None)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (r, Some(Tls::default()))
        } else {
            return Err(err(
                "an MQTT sink is mqtt://HOST:PORT/PREFIX (or mqtts:// for TLS)",
            ));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, prefix) = rest
            .split_once('/')
            .ok_or_else(|| err("a topic prefix is needed: mqtt://HOST:PORT/PREFIX"))?;
        if authority.contains('@') {
            return Err(err(
                "a username or password in the URL would be visible to every user (ps, the \
                 shell's history): put them in a file of mode 600 (credentials=FILE, lines \
                 username=… and password=…) or in TETHER_MQTT_USERNAME and \
                 TETHER_MQTT_PASSWORD",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| err("the port must be a number from 1 to 65535"))?;
                (h, port)
            }
            _ if tls.is_some() => (authority, DEFAULT_TLS_PORT),
            _ => (authority, DEFAULT_PORT),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("the broker's host is missing"));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() || prefix.starts_with('/') || prefix.split('/').any(str::is_empty) {
            return Err(err(
                "the topic prefix must be one or more non-empty levels (site-a, farm/north)",
            ));
        }
        if prefix.contains(['+', '#', '\0']) || prefix.starts_with('$') {
            return Err(err(
                "the topic prefix may not hold the wildcards + and #, NUL, or begin with $",
            ));
        }
        let mut out = MqttUrl {
            host: host.to_owned(),
            tls: None,
            port,
            prefix: prefix.to_owned(),
            state: PathBuf::from("tether-mqtt.state"),
            client_id: None,
            inflight: 1_000,
            credentials: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if v.is_empty() {
                return Err(err(&format!("option {k} needs a value ({k}=…)")));
            }
            match k {
                "ca" | "cert" | "key" => {
                    let Some(t) = tls.as_mut() else {
                        return Err(err(&format!(
                            "{k}=FILE is for TLS: mqtts://HOST:PORT/PREFIX?{k}=…"
                        )));
                    };
                    let f = Some(PathBuf::from(v));
                    match k {
                        "ca" => t.ca = f,
                        "cert" => t.cert = f,
                        _ => t.key = f,
                    }
                }
                "state" => out.state = PathBuf::from(v),
                "client_id" => out.client_id = Some(v.to_owned()),
                "credentials" => out.credentials = Some(PathBuf::from(v)),
                "inflight" => {
                    out.inflight = v
                        .parse::<u16>()
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| err("inflight must be a number from 1 to 65535"))?
                }
                "username" | "password" => {
                    return Err(err(
                        "credentials are never taken from the command line: credentials=FILE \
                         (mode 600) or TETHER_MQTT_USERNAME and TETHER_MQTT_PASSWORD",
                    ))
                }
                _ => {
                    return Err(err(&format!(
                        "unknown option {k} (state, client_id, inflight, credentials; with \
                         mqtts:// ca, cert, key)"
                    )))
                }
            }
        }
        if let Some(t) = &tls {
            if t.cert.is_some() != t.key.is_some() {
                return Err(err(
                    "cert=FILE and key=FILE go together (a client certificate)",
                ));
            }
        }
        out.tls = tls;
        Ok(out)
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(
                f,
                "{scheme}://[{}]:{}/{}",
                self.host, self.port, self.prefix
            )
        } else {
            write!(f, "{scheme}://{}:{}/{}", self.host, self.port, self.prefix)
        }
    }
}

/// The TLS client configuration of `tls`, with ring as its crypto.
pub fn tls_config(tls: &Tls) -> Result<rustls::ClientConfig, MqttError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, why: String| MqttError::Tls {
        what: path.display().to_string(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad(ca, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(ca, e.to_string()))?;
            if certs.is_empty() {
                return Err(bad(
                    ca,
                    "no certificate in it (PEM: BEGIN CERTIFICATE)".into(),
                ));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(ca, e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(MqttError::Tls {
                    what: "the system's certificates".into(),
                    why: "none found (install ca-certificates, or name the broker's CA: \
                          ca=FILE)"
                        .into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls {
            what: "TLS".into(),
            why: e.to_string(),
        })?
        .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, e.to_string()))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad(cert, e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A username and password for the broker.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// Why the MQTT sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The credentials file could not be read, or is not right.
    #[error("MQTT credentials {path}: {why}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Only one of the two variables is set.
    #[error(
        "MQTT credentials: TETHER_MQTT_USERNAME and TETHER_MQTT_PASSWORD go together (one \
         of them is set)"
    )]
    HalfCredentials,
    /// The state file could not be opened, read or written.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The publisher's thread could not start.
    /// TLS could not be set up (a CA, certificate or key file).
    #[error("MQTT TLS: {what}: {why}")]
    Tls {
        /// The file, or what.
        what: String,
        /// What is wrong.
        why: String,
    },
    #[error("MQTT sink: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// Reads the credentials: `path` (mode 600, `username=` and `password=` lines), else the
/// environment, else none.
pub fn credentials(path: Option<&Path>) -> Result<Option<Credentials>, MqttError> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(path) = path {
        let bad = |why: String| MqttError::Credentials {
            path: path.to_owned(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "the file is accessible to other users (mode {mode:03o}); run `chmod 600 {}`",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let (mut username, mut password) = (None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some(("username", v)) => username = Some(v.to_owned()),
                Some(("password", v)) => password = Some(v.to_owned()),
                _ => {
                    return Err(bad(
                        "every line is username=… or password=… (or # a comment)".into(),
                    ))
                }
            }
        }
        return match (username, password) {
            (Some(username), Some(password)) => Ok(Some(Credentials { username, password })),
            _ => Err(bad("it needs both a username= and a password= line".into())),
        };
    }
    match (
        std::env::var("TETHER_MQTT_USERNAME"),
        std::env::var("TETHER_MQTT_PASSWORD"),
    ) {
        (Ok(username), Ok(password)) => Ok(Some(Credentials { username, password })),
        (Err(_), Err(_)) => Ok(None),
        _ => Err(MqttError::HalfCredentials),
    }
}

/// The MQTT sink: its records go to the [`Publisher`], which releases them later (see
/// [`Deferred`]); marker rows are published on `PREFIX/D/marker`.
#[derive(Debug)]
pub struct MqttSink {
    publisher: Arc<Publisher>,
    recovered: Option<Recovered>,
}

impl MqttSink {
    /// Opens the state file (locked: one listener a state file), reads what it holds, and
    /// starts publishing to `url` (connecting in the background, with backoff). With
    /// `fsync`, the state is on disk before a record is released.
    pub fn open(url: &MqttUrl, fsync: bool) -> Result<MqttSink, MqttError> {
        let creds = credentials(url.credentials.as_deref())?;
        let (state, recovered) = state::StateFile::open(&url.state, fsync)?;
        let kinds = state::KindsFile::open(&url.state, fsync)?;
        let publisher = Publisher::start(url.clone(), creds, state, kinds)?;
        Ok(MqttSink {
            publisher: Arc::new(publisher),
            recovered: Some(recovered),
        })
    }
}

impl Sink for MqttSink {
    fn write(
        &mut self,
        time: SystemTime,
        device: u32,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), SinkError> {
        self.publisher.submit(time, device, seq, payload)
    }

    fn write_note(&mut self, time: SystemTime, device: u32, text: &str) -> Result<(), SinkError> {
        self.publisher.marker(time, device, text);
        Ok(())
    }

    fn write_raw(&mut self, _: SystemTime, _: &str, _: u32, _: &[u8]) -> Result<(), SinkError> {
        Err(SinkError::RolledBack {
            sink: format!("{} (the raw protocol writes CSV only)", self.describe()),
        })
    }

    /// Nothing to do: the records' durability comes with their PUBACKs ([`Deferred`]).
    fn commit(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn rollback(&mut self) {}

    fn recover(&mut self) -> Result<Recovered, RecoverError> {
        Ok(self.recovered.take().unwrap_or_default())
    }

    fn describe(&self) -> String {
        format!("MQTT broker {}", self.publisher.url())
    }

    fn deferred(&self) -> Option<Arc<dyn Deferred>> {
        Some(self.publisher.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_broker_a_prefix_and_options() {
        let u: MqttUrl = "mqtt://127.0.0.1:1884/site-a/north?inflight=64&state=/tmp/s"
            .parse()
            .unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 1884, "site-a/north")
        );
        assert_eq!((u.inflight, u.state.as_path()), (64, Path::new("/tmp/s")));
        assert_eq!(u.to_string(), "mqtt://127.0.0.1:1884/site-a/north");
        let u: MqttUrl = "mqtt://broker/p/".parse().unwrap();
        assert_eq!((u.port, u.prefix.as_str()), (1883, "p"));
        let u: MqttUrl = "mqtt://[::1]:1883/p".parse().unwrap();
        assert_eq!(u.host, "::1");
        for (bad, says) in [
            ("mqtt://u:pw@h:1883/p", "visible to every user"),
            (
                "mqtt://h:1883/p?password=x",
                "never taken from the command line",
            ),
            ("mqtt://h:1883", "prefix is needed"),
            ("mqtt://h:1883/", "non-empty levels"),
            ("mqtt://h:1883/a//b", "non-empty levels"),
            ("mqtt://h:1883/a/+", "wildcards"),
            ("mqtt://h:0/p", "port"),
            ("mqtt://h:1883/p?inflight=0", "inflight"),
            ("mqtt://h:1883/p?colour=red", "unknown option colour"),
            ("mqtt://h:1883/p?ca=x.pem", "ca=FILE is for TLS"),
            ("mqtts://h/p?cert=c.pem", "go together"),
            ("http://h/p", "mqtts://"),
        ] {
            let e = bad.parse::<MqttUrl>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let u: MqttUrl = "mqtts://broker.example/site?ca=/etc/ca.pem"
            .parse()
            .unwrap();
        assert_eq!(u.port, DEFAULT_TLS_PORT);
        assert_eq!(
            u.tls.as_ref().and_then(|t| t.ca.as_deref()),
            Some(Path::new("/etc/ca.pem"))
        );
        assert_eq!(u.to_string(), "mqtts://broker.example:8883/site");
    }

    #[test]
    fn credentials_come_from_a_private_file_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = std::env::temp_dir().join(format!("tether-mqtt-cred-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("cred");
        std::fs::write(&p, "# broker\nusername=site-a\npassword=s3cret=x\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = credentials(Some(&p)).unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("site-a", "s3cret=x")
        );
        assert!(!format!("{c:?}").contains("s3cret"), "never in a log line");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = credentials(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::write(&p, "username=a\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = credentials(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("both"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
