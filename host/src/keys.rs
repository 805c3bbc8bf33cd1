//! Pre-shared keys for authenticated links (`PROTOCOL.md` 9.14): read from files, never from
//! the command line (where any user could read them in the process list and the shell keeps
//! them in its history).
//!
//! A key file holds one key a line, `DEVICE_ID HEX_KEY`:
//!
//! ```text
//! # device id (hex, the key id its HELLO names)   key (32 bytes, 64 hex digits)
//! 0000abcd  5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a
//! ```
//!
//! The **device id** is the device's identity for authentication: a 32-bit number (written in
//! hex, up to 8 digits) that the device's HELLO names next to its nonce, fixed for the
//! device (it is not the `session`, the CSV's `device` column, which is new each time the
//! device restarts). `tether listen --keys FILE` takes a file of many lines, one a device;
//! `tether send --key-file FILE` a file of one line, its own. Blank lines and lines starting
//! with `#` are skipped. A file that other users may read or write is refused, as ssh refuses
//! such a private key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tether_core::frame;
use tether_core::link::{self, auth, Key, Link, RejectCode, REJECT_TEXT_MAX};

use crate::session::Hello;
use crate::storage::HeapStorage;

/// The keys of the devices a listener accepts, by device id.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    keys: HashMap<u32, Key>,
}

impl KeyTable {
    /// The key of device `id`.
    pub fn get(&self, id: u32) -> Option<&Key> {
        self.keys.get(&id)
    }

    /// How many devices have a key.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no device has a key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a key file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// It could not be read.
    #[error("cannot read the key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A line is not `DEVICE_ID HEX_KEY`.
    #[error("{path}:{line}: {why} (lines are `DEVICE_ID HEX_KEY`: up to 8 hex digits, then 64)")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// Other users may read or write it.
    #[error("the key file {path} is accessible to other users (mode {mode:03o}); run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It holds no key, or more than one where one is expected.
    #[error("the key file {path} holds {found} keys; {wanted}")]
    Count {
        /// The file.
        path: PathBuf,
        /// Keys found.
        found: usize,
        /// What was expected.
        wanted: &'static str,
    },
}

fn read_checked(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    std::fs::read_to_string(path).map_err(io)
}

fn parse(path: &Path, text: &str) -> Result<Vec<Key>, KeyError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |why: String| KeyError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            why,
        };
        let mut words = line.split_whitespace();
        let (Some(id), Some(hex), None) = (words.next(), words.next(), words.next()) else {
            return Err(syntax("not two words".into()));
        };
        let digits = id.trim_start_matches("0x");
        if digits.is_empty() || digits.len() > 8 {
            return Err(syntax(format!("device id `{id}` is not 1 to 8 hex digits")));
        }
        let id = u32::from_str_radix(digits, 16)
            .map_err(|_| syntax(format!("device id `{id}` is not hex")))?;
        if hex.len() != 2 * auth::KEY_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The key itself is never echoed.
            return Err(syntax(format!(
                "the key of device {id:08x} is not {} hex digits",
                2 * auth::KEY_LEN
            )));
        }
        let mut secret = [0u8; auth::KEY_LEN];
        for (k, b) in secret.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * k..2 * k + 2], 16)
                .map_err(|_| syntax(format!("the key of device {id:08x} is not hex")))?;
        }
        keys.push(Key::new(id, secret));
    }
    Ok(keys)
}

/// Reads a listener's key file: one line a device.
pub fn load_table(path: &Path) -> Result<KeyTable, KeyError> {
    let keys = parse(path, &read_checked(path)?)?;
    if keys.is_empty() {
        return Err(KeyError::Count {
            path: path.to_owned(),
            found: 0,
            wanted: "a listener needs at least one",
        });
    }
    let mut table = KeyTable::default();
    for k in keys {
        if table.keys.insert(k.id(), k.clone()).is_some() {
            return Err(KeyError::Syntax {
                path: path.to_owned(),
                line: 0,
                why: format!("device {:08x} has two keys", k.id()),
            });
        }
    }
    Ok(table)
}

/// Reads a sender's key file: exactly one line, its own device id and key.
pub fn load_one(path: &Path) -> Result<Key, KeyError> {
    let mut keys = parse(path, &read_checked(path)?)?;
    match keys.len() {
        1 => Ok(keys.remove(0)),
        found => Err(KeyError::Count {
            path: path.to_owned(),
            found,
            wanted: "a sender takes exactly one",
        }),
    }
}

/// Sixteen bytes from the operating system's random source, for a link's nonce seed.
pub fn nonce_seed() -> [u8; auth::NONCE_LEN] {
    let mut seed = [0u8; auth::NONCE_LEN];
    if getrandom::fill(&mut seed).is_err() {
        // No OS randomness (never on Linux): a unique value still keeps nonces apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        seed = (t ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    seed
}

/// A connection refused before it got a link: the code and reason of the REJECT it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why (PROTOCOL.md 9.5.3).
    pub code: RejectCode,
    /// For people, at most 64 bytes.
    pub text: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.text)
    }
}

impl Refusal {
    fn new(code: RejectCode, text: String) -> Refusal {
        Refusal { code, text }
    }

    /// The REJECT frame to send the peer.
    pub fn frame(&self) -> Vec<u8> {
        let mut out = vec![0u8; frame::max_encoded_len(2 + REJECT_TEXT_MAX)];
        let n = link::reject_frame(self.code, &self.text, &mut out).unwrap_or(0);
        out.truncate(n);
        out
    }
}

/// Decides, before any state is kept for a new connection, whether its `hello` may go on:
/// with `keys`, it must name a device that has a key and carry a tag made with that key;
/// without, it must not ask for authentication. The key to bind to the device's link, or
/// the refusal to send.
pub fn admit(keys: Option<&KeyTable>, hello: &Hello) -> Result<Option<Key>, Refusal> {
    match (keys, hello.key_id) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Refusal::new(
            RejectCode::AuthUnsupported,
            "authentication offered; this listener has no keys".into(),
        )),
        (Some(_), None) => Err(Refusal::new(
            RejectCode::AuthRequired,
            "authentication required: this listener takes keyed devices only".into(),
        )),
        (Some(table), Some(id)) => match table.get(id) {
            None => Err(Refusal::new(
                RejectCode::Auth,
                format!("no key for device {id:08x}"),
            )),
            Some(k) if k.verifies_hello(hello.payload()) => Ok(Some(k.clone())),
            Some(_) => Err(Refusal::new(
                RejectCode::Auth,
                format!("authentication failed for device {id:08x}: wrong key"),
            )),
        },
    }
}

/// Gives a device session's link its key on the session's first connection, and refuses a
/// connection whose HELLO names the session of another device (a key holder cannot take
/// over someone else's session).
pub fn bind(link: &mut Link<HeapStorage>, key: Option<Key>) -> Result<(), Refusal> {
    let Some(key) = key else {
        return Ok(());
    };
    match link.auth_key_id() {
        Some(id) if id == key.id() => Ok(()),
        Some(id) => Err(Refusal::new(
            RejectCode::Auth,
            format!("this session belongs to device {id:08x}"),
        )),
        None => link.set_auth(Some(key), nonce_seed()).map_err(|e| {
            Refusal::new(
                RejectCode::Malformed,
                format!("frames too small to authenticate: {e}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-keys-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn key_files_are_read_and_checked() {
        let d = tmpdir("read");
        let p = write(
            &d,
            "keys",
            &format!("# devices\n\nabcd {K}\n0x12345678 {}\n", K.to_uppercase()),
            0o600,
        );
        let t = load_table(&p).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(0xabcd).unwrap().id(), 0xabcd);
        assert!(t.get(0x1234_5678).is_some());
        assert!(load_one(&p).is_err(), "a sender takes one key");
        let one = write(&d, "one", &format!("abcd {K}\n"), 0o600);
        assert_eq!(load_one(&one).unwrap().id(), 0xabcd);
        for bad in [
            "abcd".to_string(),
            format!("abcd {K} extra"),
            format!("123456789 {K}"),
            format!("xyz {K}"),
            format!("abcd {}", &K[1..]),
            format!("abcd {}g", &K[1..]),
        ] {
            let p = write(&d, "bad", &bad, 0o600);
            let e = load_table(&p).unwrap_err();
            assert!(matches!(e, KeyError::Syntax { line: 1, .. }), "{bad}: {e}");
            assert!(!e.to_string().contains(&K[2..]), "the key is never echoed");
        }
        let dup = write(&d, "dup", &format!("abcd {K}\nABCD {K}\n"), 0o600);
        assert!(load_table(&dup).is_err());
        let empty = write(&d, "empty", "# nothing\n", 0o600);
        assert!(matches!(load_table(&empty), Err(KeyError::Count { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn key_files_other_users_can_read_are_refused() {
        let d = tmpdir("perm");
        for mode in [0o644, 0o640, 0o602] {
            let p = write(&d, "keys", &format!("abcd {K}\n"), mode);
            let e = load_table(&p).unwrap_err();
            assert!(matches!(e, KeyError::Permissions { .. }), "{mode:o}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn nonce_seeds_differ() {
        assert_ne!(nonce_seed(), nonce_seed());
    }
}
