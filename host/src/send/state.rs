//! `tether send --state-file FILE`: where a sender resumes after it was stopped or killed.
//!
//! The file holds the sender's session identity, the listener session it last talked to,
//! and the **position**: the byte offset, line number and sequence number of the first line
//! not acknowledged. A sender started again with the same file and input resumes the same
//! session from that position: it names the listener it knew (so the listener's receive side
//! resumes, `PROTOCOL.md` 9.5.5, or a restarted listener skips what its CSV has,
//! `host/src/recover.rs`), and sends the lines from the position on under the same sequence
//! numbers, so whatever the listener wrote but had not acknowledged is discarded as a
//! duplicate rather than written twice.
//!
//! The position is written only once the lines before it are acknowledged, and a position
//! that lags behind (the file is written at most every [`INTERVAL`]) only makes the sender
//! send again what the listener then discards, so a `kill -9` at any moment neither loses
//! nor duplicates a line. Each write goes to a temporary file that is synced and renamed
//! over the old one: the file is always a whole state, old or new.
//!
//! The input is recognised by a CRC-32C of its first bytes (up to [`HEAD`], fixed when the
//! file is made) and of the bytes just before the position: another input, or one changed
//! before the position, is refused, while an input that grew (lines appended) is taken.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tether_core::frame::crc32c;

/// The longest stretch of the input hashed at its start and before the position.
pub const HEAD: u64 = 64 * 1024;

/// The least time between two writes of the file while acknowledgements arrive.
pub const INTERVAL: Duration = Duration::from_millis(100);

const MAGIC: &str = "# tether send state: where `tether send --state-file` resumes; do not edit";
const VERSION: u32 = 1;

/// Where a sender is in its input: the first line not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its byte offset in the input.
    pub offset: u64,
    /// Its line number, from 1.
    pub line: u64,
    /// The sequence number it is (or will be) sent under.
    pub seq: u32,
}

impl Position {
    /// The start of an input, for a session numbered from `seq`.
    pub fn start(seq: u32) -> Position {
        Position {
            offset: 0,
            line: 1,
            seq,
        }
    }
}

/// What a state file says, besides the input's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// The sender's session identity.
    pub session: u32,
    /// The listener session it last completed a handshake with; 0 if none.
    pub listener: u32,
    /// The first line not acknowledged.
    pub position: Position,
}

/// Why a state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It could not be read or written.
    #[error("state file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// It is not a state file of this version.
    #[error(
        "{} is not a `tether send` state file ({why}); remove it to start afresh (lines it \
         recorded as delivered would then be sent again)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// It was made for another input (or the input changed before the position).
    #[error(
        "{} belongs to another input ({recorded}): {why}; give this input a state file of \
         its own",
        path.display()
    )]
    OtherInput {
        /// The file.
        path: PathBuf,
        /// The input it names.
        recorded: String,
        /// What differs.
        why: String,
    },
    /// Another `tether send` uses the file.
    #[error(
        "{} is in use by another tether send (it holds {}.lock); one sender per state file",
        path.display(),
        path.display()
    )]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The input cannot be read again from a position.
    #[error(
        "--state-file needs an input that can be read again from a position: a file, named or \
         redirected to standard input (`< FILE`); standard input is a pipe or a terminal here"
    )]
    NotAFile,
}

/// The input's fingerprint: how long its head is and its CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stretch {
    len: u64,
    crc: u32,
}

impl Stretch {
    /// The CRC-32C of `len` bytes of `file` at `at`.
    fn of(file: &File, at: u64, len: u64) -> io::Result<Stretch> {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at)?;
        Ok(Stretch {
            len,
            crc: crc32c(&buf),
        })
    }
}

/// A state file in use by one sender: the latest position, and the writes.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    tmp: PathBuf,
    /// `FILE.lock`, locked (`flock`) while the sender runs: two senders of one session
    /// would interleave their numbering.
    _lock: nix::fcntl::Flock<File>,
    input: File,
    input_name: String,
    head: Stretch,
    value: Mutex<Saved>,
    /// Serialises writes; whether the directory was synced since the file was made.
    io: Mutex<bool>,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
}

/// A state file opened for an input: what the sender resumes from.
#[derive(Debug)]
pub struct Opened {
    /// The file, to record progress in.
    pub state: StateFile,
    /// What it said (or, for a new file, the fresh values written to it).
    pub saved: Saved,
    /// Whether it existed: the session may have sent lines from the position on already.
    pub resumed: bool,
    /// Something to tell the user about the input (it grew after a line without an end of
    /// line, or was renamed).
    pub notice: Option<String>,
}

impl StateFile {
    /// Opens the state at `path` for `input` (named `input_name` in it), or makes it with
    /// `session` if it does not exist (written at once, so that the session is on disk
    /// before anything is sent). The input is not moved: the caller reads it from
    /// `saved.position.offset`.
    pub fn open(
        path: &Path,
        input: &File,
        input_name: &str,
        session: u32,
    ) -> Result<Opened, StateError> {
        let io_err = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = input.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(StateError::NotAFile);
        }
        let input = input.try_clone().map_err(io_err)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        // A lock file of its own: the state file itself is replaced on every write.
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err)?;
        let lock =
            match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(StateError::InUse {
                        path: path.to_owned(),
                    })
                }
                Err((_, e)) => return Err(io_err(io::Error::from(e))),
            };
        let text = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(e)),
        };
        let Some(bytes) = text else {
            let head = Stretch::of(&input, 0, meta.len().min(HEAD)).map_err(io_err)?;
            let saved = Saved {
                session: session.max(1),
                listener: 0,
                position: Position::start(0),
            };
            let state = StateFile::new(path, tmp.into(), lock, input, input_name, head, saved);
            state.write().map_err(io_err)?;
            return Ok(Opened {
                state,
                saved,
                resumed: false,
                notice: None,
            });
        };
        let corrupt = |why: String| StateError::Corrupt {
            path: path.to_owned(),
            why,
        };
        let parsed = parse(&bytes).map_err(corrupt)?;
        let other = |why: String| StateError::OtherInput {
            path: path.to_owned(),
            recorded: parsed.input.clone(),
            why,
        };
        let pos = parsed.saved.position;
        let len = meta.len();
        if len < parsed.head.len || len < pos.offset {
            return Err(other(format!(
                "the input is {len} bytes long, shorter than the {} bytes already delivered",
                pos.offset.max(parsed.head.len)
            )));
        }
        let head = Stretch::of(&input, 0, parsed.head.len).map_err(io_err)?;
        if head != parsed.head {
            return Err(other(format!(
                "its first {} bytes differ from those of the input the state was made for",
                head.len
            )));
        }
        let tail_len = pos.offset.min(HEAD);
        let tail = Stretch::of(&input, pos.offset - tail_len, tail_len).map_err(io_err)?;
        if tail != parsed.tail {
            return Err(other(format!(
                "the {tail_len} bytes before byte {} (line {}), where it resumes, differ",
                pos.offset, pos.line
            )));
        }
        let mut notice = None;
        if pos.offset > 0 {
            let mut last = [0u8];
            input
                .read_exact_at(&mut last, pos.offset - 1)
                .map_err(io_err)?;
            if last[0] != b'\n' && len > pos.offset {
                notice = Some(format!(
                    "the input's last line had no end of line when it was sent; the {} bytes \
                     appended since are sent from byte {} on (what continues that line becomes \
                     a line of its own)",
                    len - pos.offset,
                    pos.offset
                ));
            }
        }
        if notice.is_none() && parsed.input != input_name {
            notice = Some(format!(
                "the state was made for the input {}, now named {input_name}; its content matches",
                parsed.input
            ));
        }
        let state = StateFile::new(
            path,
            tmp.into(),
            lock,
            input,
            input_name,
            head,
            parsed.saved,
        );
        Ok(Opened {
            state,
            saved: parsed.saved,
            resumed: true,
            notice,
        })
    }

    fn new(
        path: &Path,
        tmp: PathBuf,
        lock: nix::fcntl::Flock<File>,
        input: File,
        input_name: &str,
        head: Stretch,
        saved: Saved,
    ) -> StateFile {
        StateFile {
            path: path.to_owned(),
            tmp,
            _lock: lock,
            input,
            input_name: input_name.replace(['\n', '\r'], "?"),
            head,
            value: Mutex::new(saved),
            io: Mutex::new(false),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The latest values (written or to be written).
    pub fn saved(&self) -> Saved {
        *lock(&self.value)
    }

    /// Records a new position (written by the next [`StateFile::write`]).
    pub fn set_position(&self, position: Position) {
        lock(&self.value).position = position;
    }

    /// Records the listener session (written by the next [`StateFile::write`]).
    pub fn set_listener(&self, listener: u32) {
        lock(&self.value).listener = listener;
    }

    /// Writes the latest values: a temporary file, synced, renamed over the file. Writes are
    /// serialised and each takes the values current when it starts, so the file never goes
    /// back to an older state than one written before.
    pub fn write(&self) -> io::Result<()> {
        let mut dir_synced = lock(&self.io);
        let saved = self.saved();
        let offset = saved.position.offset;
        let tail = Stretch::of(&self.input, offset - offset.min(HEAD), offset.min(HEAD))?;
        let text = render(&self.input_name, self.head, tail, &saved);
        let mut f = File::create(&self.tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path)?;
        if !*dir_synced {
            // The rename is durable once the directory is (a new file's name especially).
            let dir = match self.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()?;
            *dir_synced = true;
        }
        Ok(())
    }

    /// Writes as [`StateFile::write`] and remembers a failure for [`StateFile::failure`].
    pub fn write_or_note(&self) {
        if let Err(e) = self.write() {
            self.failed.store(true, Ordering::Relaxed);
            *lock(&self.error) = Some(e.to_string());
        }
    }

    /// Why a write failed, if one did.
    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.error).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`parse`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    saved: Saved,
    input: String,
    head: Stretch,
    tail: Stretch,
}

fn render(input: &str, head: Stretch, tail: Stretch, s: &Saved) -> String {
    let mut out = String::new();
    let p = s.position;
    // Infallible: writing to a String.
    let _ = write!(
        out,
        "{MAGIC}\nversion {VERSION}\nsession {:08x}\nlistener {:08x}\nseq {}\noffset {}\nline {}\n\
         input {input}\nhead {} {:08x}\ntail {} {:08x}\n",
        s.session, s.listener, p.seq, p.offset, p.line, head.len, head.crc, tail.len, tail.crc
    );
    out
}

fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err("its first line is not the state file's".into());
    }
    let mut get = std::collections::HashMap::new();
    for line in lines {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        get.insert(k, v);
    }
    let field = |k: &str| get.get(k).copied().ok_or_else(|| format!("no `{k}` line"));
    let bad = |k: &str| format!("the `{k}` line is malformed");
    let version: u32 = field("version")?.parse().map_err(|_| bad("version"))?;
    if version != VERSION {
        return Err(format!(
            "version {version}; this tether reads version {VERSION}"
        ));
    }
    let hex =
        |k: &str| -> Result<u32, String> { u32::from_str_radix(field(k)?, 16).map_err(|_| bad(k)) };
    let stretch = |k: &str| -> Result<Stretch, String> {
        let (len, crc) = field(k)?.split_once(' ').ok_or_else(|| bad(k))?;
        Ok(Stretch {
            len: len.parse().map_err(|_| bad(k))?,
            crc: u32::from_str_radix(crc, 16).map_err(|_| bad(k))?,
        })
    };
    let session = hex("session")?;
    if session == 0 {
        return Err(bad("session"));
    }
    let position = Position {
        seq: field("seq")?.parse().map_err(|_| bad("seq"))?,
        offset: field("offset")?.parse().map_err(|_| bad("offset"))?,
        line: field("line")?.parse().map_err(|_| bad("line"))?,
    };
    if position.line == 0 {
        return Err(bad("line"));
    }
    let (head, tail) = (stretch("head")?, stretch("tail")?);
    if head.len > HEAD || tail.len != position.offset.min(HEAD) {
        return Err(bad("head` or `tail"));
    }
    Ok(Parsed {
        saved: Saved {
            session,
            listener: hex("listener")?,
            position,
        },
        input: field("input")?.to_owned(),
        head,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_new_state_is_written_at_once_and_read_back_after_progress() {
        let d = dir("roundtrip");
        let input = d.join("in");
        std::fs::write(&input, "a\nbb\nccc\n").unwrap();
        let f = File::open(&input).unwrap();
        let path = d.join("s");
        let o = StateFile::open(&path, &f, "in", 0xabc).unwrap();
        assert!(!o.resumed);
        assert_eq!(o.saved.session, 0xabc);
        assert!(path.exists(), "written before anything is sent");
        o.state.set_listener(0x1234);
        o.state.set_position(Position {
            offset: 5,
            line: 3,
            seq: 2,
        });
        o.state.write().unwrap();
        let busy = StateFile::open(&path, &f, "in", 0x999).unwrap_err();
        assert!(matches!(busy, StateError::InUse { .. }), "{busy}");
        drop(o);
        let again = StateFile::open(&path, &f, "in", 0x999).unwrap();
        assert!(again.resumed);
        assert_eq!(
            again.saved,
            Saved {
                session: 0xabc,
                listener: 0x1234,
                position: Position {
                    offset: 5,
                    line: 3,
                    seq: 2
                }
            }
        );
        assert!(again.notice.is_none());
        drop(again);
        // Lines appended: the same input, grown.
        std::fs::write(&input, "a\nbb\nccc\ndddd\n").unwrap();
        let grown = File::open(&input).unwrap();
        assert!(StateFile::open(&path, &grown, "in", 1).unwrap().resumed);
    }

    #[test]
    fn another_input_or_one_changed_before_the_position_is_refused() {
        let d = dir("other");
        let input = d.join("in");
        std::fs::write(&input, "a\nbb\nccc\n").unwrap();
        let path = d.join("s");
        let o = StateFile::open(&path, &File::open(&input).unwrap(), "in", 7).unwrap();
        o.state.set_position(Position {
            offset: 5,
            line: 3,
            seq: 2,
        });
        o.state.write().unwrap();
        drop(o);
        for (text, what) in [("x\nbb\nccc\n", "first 9 bytes differ"), ("a\n", "shorter")] {
            std::fs::write(&input, text).unwrap();
            let e = StateFile::open(&path, &File::open(&input).unwrap(), "in", 7).unwrap_err();
            assert!(
                matches!(e, StateError::OtherInput { .. }) && e.to_string().contains(what),
                "{e}"
            );
        }
        std::fs::write(&path, "session 1\n").unwrap();
        let e = StateFile::open(&path, &File::open(&input).unwrap(), "in", 7).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        std::fs::write(&path, "").unwrap();
        let e = StateFile::open(&path, &File::open(&input).unwrap(), "in", 7).unwrap_err();
        assert!(e.to_string().contains("remove it to start afresh"), "{e}");
    }

    #[test]
    fn the_tail_before_the_position_is_checked_beyond_the_head() {
        let d = dir("tail");
        let input = d.join("in");
        let line = "x".repeat(99) + "\n";
        let mut text = line.repeat(2000);
        std::fs::write(&input, &text).unwrap();
        let path = d.join("s");
        let o = StateFile::open(&path, &File::open(&input).unwrap(), "in", 7).unwrap();
        o.state.set_position(Position {
            offset: 150_000,
            line: 1501,
            seq: 1500,
        });
        o.state.write().unwrap();
        drop(o);
        // Changed between the head and the position.
        text.replace_range(120_000..120_001, "y");
        std::fs::write(&input, &text).unwrap();
        let e = StateFile::open(&path, &File::open(&input).unwrap(), "in", 7).unwrap_err();
        assert!(e.to_string().contains("before byte 150000"), "{e}");
    }
}
