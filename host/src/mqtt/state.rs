//! The MQTT sink's durable state: per device, the last record the broker acknowledged
//! (its numbering, `session`, and its `seq`), written before that record is released to its
//! device. It is what a restarted listener knows that the broker cannot tell it, so that
//! what the broker already has is not published again.
//!
//! The file: a 16-byte header (`TETHMQS1`, the listener's random id, a CRC-32C of the
//! first 12 bytes), then one 16-byte slot a device, in the order devices were first seen:
//! device, session, seq (little-endian u32 each) and a CRC-32C of those 12 bytes. A slot
//! is rewritten in place (one `pwrite` a round of acknowledgements, over the slots that
//! changed), so after a crash each slot holds its old or its new value, never a mixture
//! that passes its CRC: a slot never straddles a disk sector. A slot whose CRC fails is
//! logged and skipped (its device's records are published again: duplicates, never loss).
//! The file is locked (`flock`): one listener a state file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use tether_core::frame::crc32c;
use tracing::warn;

use crate::recover::Recovered;
use crate::sink::Holder;

const MAGIC: &[u8; 8] = b"TETHMQS1";
const HEADER: u64 = 16;
const SLOT: usize = 16;

/// Why the state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It could not be opened, read or written.
    #[error("MQTT state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// It is not a Tether MQTT state file.
    #[error(
        "MQTT state file {path} is not a Tether MQTT state file (it does not begin with \
         TETHMQS1), so it was left as it is: name a new file (state=FILE)"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// Another listener holds it.
    #[error(
        "MQTT state file {path} is used by {holder}: two listeners on one state file would \
         forget each other's records; give each its own (state=FILE)"
    )]
    InUse {
        /// The file.
        path: PathBuf,
        /// Who holds its lock.
        holder: Holder,
    },
}

/// One device's mark: the last record the broker acknowledged, in its numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The device's numbering (`session` in the payload).
    pub session: u32,
    /// Its last record acknowledged by the broker.
    pub seq: u32,
}

/// The open, locked state file and its image in memory.
#[derive(Debug)]
pub struct StateFile {
    file: Flock<File>,
    path: PathBuf,
    fsync: bool,
    id: u32,
    image: Vec<u8>,
    slots: HashMap<u32, usize>,
    /// The slots changed since the last [`StateFile::flush`].
    dirty: Option<(usize, usize)>,
    /// Time spent writing (and syncing), for the summary.
    pub spent: std::time::Duration,
    /// Writes made.
    pub writes: u64,
}

impl StateFile {
    /// Opens (creating) and locks `path`, and reads its marks: each device's last seq for
    /// [`crate::recover::Resume`], and the marks themselves.
    pub fn open(path: &Path, fsync: bool) -> Result<(StateFile, Recovered), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = file
                    .metadata()
                    .map(|m| crate::sink::lock_holder_of(&m))
                    .unwrap_or_default();
                return Err(StateError::InUse {
                    path: path.to_owned(),
                    holder,
                });
            }
            Err((_, e)) => return Err(io(io::Error::from(e))),
        };
        let mut image = Vec::new();
        {
            use std::io::Read as _;
            (&*file).read_to_end(&mut image).map_err(io)?;
        }
        let mut s = StateFile {
            file,
            path: path.to_owned(),
            fsync,
            id: 0,
            image,
            slots: HashMap::new(),
            dirty: None,
            spent: std::time::Duration::ZERO,
            writes: 0,
        };
        let mut recovered = Recovered::default();
        if s.image.len() < HEADER as usize {
            if !MAGIC.starts_with(&s.image[..s.image.len().min(8)]) {
                return Err(StateError::Foreign {
                    path: path.to_owned(),
                });
            }
            // New (or cut while being made): a new id.
            let mut id = [0u8; 4];
            getrandom::fill(&mut id).map_err(|e| io(io::Error::other(e.to_string())))?;
            s.id = u32::from_le_bytes(id) | 1;
            s.image.clear();
            s.image.extend_from_slice(MAGIC);
            s.image.extend_from_slice(&s.id.to_le_bytes());
            let crc = crc32c(&s.image[..12]);
            s.image.extend_from_slice(&crc.to_le_bytes());
            s.file.write_all_at(&s.image, 0).map_err(io)?;
            s.file.set_len(HEADER).map_err(io)?;
            s.file.sync_all().map_err(io)?;
            return Ok((s, recovered));
        }
        if &s.image[..8] != MAGIC || crc32c(&s.image[..12]).to_le_bytes() != s.image[12..16] {
            return Err(StateError::Foreign {
                path: path.to_owned(),
            });
        }
        s.id = u32::from_le_bytes(s.image[8..12].try_into().unwrap_or_default());
        // A slot cut short by a crash while it was first appended is dropped.
        let whole = HEADER as usize + (s.image.len() - HEADER as usize) / SLOT * SLOT;
        s.image.truncate(whole);
        let mut bad = 0;
        for (i, slot) in s.image[HEADER as usize..].chunks_exact(SLOT).enumerate() {
            let word =
                |k: usize| u32::from_le_bytes([slot[k], slot[k + 1], slot[k + 2], slot[k + 3]]);
            if crc32c(&slot[..12]) != word(12) || word(0) == 0 {
                bad += 1;
                continue;
            }
            let (device, session, seq) = (word(0), word(4), word(8));
            s.slots.insert(device, HEADER as usize + i * SLOT);
            recovered.last_seq.insert(device, seq);
            recovered.rows += 1;
            let _ = session;
        }
        if bad > 0 {
            warn!(
                "MQTT state file {}: {bad} damaged slots skipped (a crash while writing, or \
                 the disk): their devices' unacknowledged records are published again",
                path.display()
            );
        }
        Ok((s, recovered))
    }

    /// The listener's random id, made with the file (its default client id).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The marks read at open.
    pub fn marks(&self) -> HashMap<u32, Mark> {
        self.slots
            .iter()
            .map(|(&d, &at)| {
                let w = |k: usize| {
                    u32::from_le_bytes(
                        self.image[at + k..at + k + 4]
                            .try_into()
                            .unwrap_or_default(),
                    )
                };
                (
                    d,
                    Mark {
                        session: w(4),
                        seq: w(8),
                    },
                )
            })
            .collect()
    }

    /// Sets `device`'s mark (in memory; [`StateFile::flush`] writes it).
    pub fn set(&mut self, device: u32, mark: Mark) {
        let at = *self.slots.entry(device).or_insert_with(|| {
            let at = self.image.len();
            self.image.resize(at + SLOT, 0);
            at
        });
        let slot = &mut self.image[at..at + SLOT];
        slot[0..4].copy_from_slice(&device.to_le_bytes());
        slot[4..8].copy_from_slice(&mark.session.to_le_bytes());
        slot[8..12].copy_from_slice(&mark.seq.to_le_bytes());
        let crc = crc32c(&slot[..12]);
        slot[12..16].copy_from_slice(&crc.to_le_bytes());
        self.dirty = Some(match self.dirty {
            None => (at, at + SLOT),
            Some((a, b)) => (a.min(at), b.max(at + SLOT)),
        });
    }

    /// Writes the marks set since the last flush in one write (synced with `fsync`).
    pub fn flush(&mut self) -> Result<(), StateError> {
        let Some((a, b)) = self.dirty.take() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let r = self
            .file
            .write_all_at(&self.image[a..b], a as u64)
            .and_then(|()| {
                if self.fsync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
        self.spent += started.elapsed();
        self.writes += 1;
        r.map_err(|source| {
            self.dirty = Some((a, b));
            StateError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// The kinds devices declared (`PROTOCOL.md` 10.5), kept beside the state file (its name
/// and `.kinds`), so that a restarted listener still names the fields of records whose
/// declarations came before it stopped (a device never sends an acknowledged declaration
/// again, 10.7). One line a declaration, `DEVICE DECLARATION` in hex, appended before the
/// declaration's PUBLISH (with `--fsync`, synced); at open, a later line for the same device
/// and kind id replaces an earlier one, and a line cut short by a crash is cut off.
#[derive(Debug)]
pub struct KindsFile {
    file: File,
    path: PathBuf,
    fsync: bool,
}

impl KindsFile {
    /// The kinds file of the state file `state`.
    pub fn path_of(state: &Path) -> PathBuf {
        let mut name = state.as_os_str().to_owned();
        name.push(".kinds");
        PathBuf::from(name)
    }

    /// Opens (creating) the kinds file of the state file `state`, and reads what it holds:
    /// each device's declarations, in the order written.
    pub fn open(
        state: &Path,
        fsync: bool,
    ) -> Result<(KindsFile, Vec<(u32, crate::sink::kinds::Schema)>), StateError> {
        use std::io::{Read as _, Seek as _};
        let path = Self::path_of(state);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            warn!(
                "MQTT kinds file {}: its last line was cut short (a crash while writing it): \
                 cut off; the device declares that kind again",
                path.display()
            );
            file.set_len(whole as u64).map_err(io)?;
            file.seek(io::SeekFrom::End(0)).map_err(io)?;
        }
        let mut kinds = Vec::new();
        for (n, line) in text[..whole].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let parsed = std::str::from_utf8(line).ok().and_then(|l| {
                let (device, decl) = l.split_once(' ')?;
                let device = u32::from_str_radix(device, 16).ok()?;
                let decl = unhex(decl)?;
                crate::sink::kinds::Schema::parse(&decl)
                    .ok()
                    .map(|s| (device, s))
            });
            match parsed {
                Some(k) => kinds.push(k),
                None => warn!(
                    "MQTT kinds file {} line {}: not a device and a declaration: skipped",
                    path.display(),
                    n + 1
                ),
            }
        }
        Ok((KindsFile { file, path, fsync }, kinds))
    }

    /// Appends `device`'s declaration `schema` (synced with `--fsync`).
    pub fn append(
        &mut self,
        device: u32,
        schema: &crate::sink::kinds::Schema,
    ) -> Result<(), StateError> {
        use std::io::Write as _;
        let line = format!(
            "{device:08x} {}\n",
            crate::sink::kinds::hex(&schema.declaration)
        );
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line.as_bytes()).map_err(io)?;
        if self.fsync {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

/// Bytes from lowercase or uppercase hex, `None` if it is not hex.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_kinds_survive_a_reopen_and_a_torn_line_is_cut_off() {
        use tether_core::record::kind::{FieldDef, Kind, Type};
        const ENV: Kind<'static> = Kind {
            id: 0,
            name: "env",
            fields: &[FieldDef::new("t", Type::F32).unit("°C")],
        };
        let decl: [u8; ENV.declaration_len()] = ENV.declaration();
        let schema = crate::sink::kinds::Schema::parse(&decl).unwrap();
        let d = std::env::temp_dir().join(format!("tether-mqtt-kinds-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let state = d.join("s");
        let path = KindsFile::path_of(&state);
        let _ = std::fs::remove_file(&path);
        let (mut k, none) = KindsFile::open(&state, true).unwrap();
        assert!(none.is_empty());
        k.append(0xA, &schema).unwrap();
        k.append(0xB, &schema).unwrap();
        drop(k);
        // A crash in the middle of a third line.
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"0000000c 1e0e");
        std::fs::write(&path, &torn).unwrap();
        let (mut k, kinds) = KindsFile::open(&state, true).unwrap();
        assert_eq!(kinds.len(), 2);
        assert_eq!((kinds[0].0, kinds[1].0), (0xA, 0xB));
        assert_eq!(kinds[1].1, schema);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the torn line cut off"
        );
        k.append(0xC, &schema).unwrap();
        drop(k);
        let (_, kinds) = KindsFile::open(&state, false).unwrap();
        assert_eq!(kinds.len(), 3);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn marks_survive_a_reopen_and_a_torn_slot_is_skipped() {
        let d = std::env::temp_dir().join(format!("tether-mqtt-state-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("s");
        let _ = std::fs::remove_file(&p);
        let (mut s, r) = StateFile::open(&p, true).unwrap();
        assert!(r.last_seq.is_empty());
        let id = s.id();
        s.set(0xA, Mark { session: 0, seq: 9 });
        s.set(
            0xB,
            Mark {
                session: 2,
                seq: 100,
            },
        );
        s.flush().unwrap();
        s.set(0xA, Mark { session: 1, seq: 3 });
        s.flush().unwrap();
        let e = StateFile::open(&p, false).unwrap_err().to_string();
        assert!(e.contains("is used by process"), "{e}");
        drop(s);
        let (s, r) = StateFile::open(&p, false).unwrap();
        assert_eq!(s.id(), id);
        assert_eq!(r.last_seq, HashMap::from([(0xA, 3), (0xB, 100)]));
        assert_eq!(
            s.marks()[&0xB],
            Mark {
                session: 2,
                seq: 100
            }
        );
        drop(s);
        // A damaged slot (its CRC fails) and half a slot at the end: both skipped.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEADER as usize + 5] ^= 1;
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&p, &bytes).unwrap();
        let (_, r) = StateFile::open(&p, false).unwrap();
        assert_eq!(r.last_seq, HashMap::from([(0xB, 100)]));
        std::fs::write(&p, b"host_time,device,seq\n").unwrap();
        let e = StateFile::open(&p, false).unwrap_err().to_string();
        assert!(e.contains("not a Tether MQTT state file"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
