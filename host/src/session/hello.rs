//! A new connection up to its HELLO (`PROTOCOL.md` 9.4.2): bytes are decoded until the first
//! intact HELLO frame, which is decoded once into a [`Hello`] that admission, keys and resume
//! all read.

use std::time::Duration;

use tether_core::frame::{Decoder, Kind};
use tether_core::link::{self, MIN_FRAME};
use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

use crate::recover::HelloInfo;
use crate::transport::Stream;

/// Bytes a connection may send before its HELLO: a serial line delivers a previous
/// session's leftovers first, garbage is dropped after this.
pub const BEFORE_HELLO: usize = 4096;

/// What a device's HELLO says (`PROTOCOL.md` 9.5.1), decoded once per connection with the
/// core's checks (version, length, reserved byte, a session that is not 0, a payload limit
/// that holds a REJECT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The device's session identity: which session the connection belongs to.
    pub session: u32,
    /// The server session the device knew, 0 if none.
    pub peer_session: u32,
    /// The first record the device will (re)send.
    pub tx_base: u32,
    /// The largest record the device may send.
    pub max_send: u16,
    /// The key id of an authenticated HELLO (9.14).
    pub key_id: Option<u32>,
    /// The payload, for the checks that need all of it (an authentication tag).
    payload: Vec<u8>,
}

impl Hello {
    /// A HELLO payload, if it is an acceptable HELLO of this protocol version.
    pub fn parse(payload: &[u8]) -> Option<Hello> {
        let h = link::HelloView::parse(payload)?;
        Some(Hello {
            session: h.session,
            peer_session: h.peer_session,
            tx_base: h.tx_base,
            max_send: h.max_send,
            key_id: h.key_id,
            payload: payload.to_vec(),
        })
    }

    /// The whole payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// What resume needs of it (see [`crate::recover::Resume`]).
    pub fn info(&self) -> HelloInfo {
        HelloInfo {
            peer_session: self.peer_session,
            tx_base: self.tx_base,
            max_send: self.max_send,
        }
    }
}

/// A connection's bytes up to its first HELLO frame (sans-IO: fed what was read).
#[derive(Debug)]
pub struct Opening {
    decoder: Decoder<Vec<u8>>,
    seen: Vec<u8>,
}

/// What [`Opening::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Nothing yet: read more.
    More,
    /// The first HELLO frame: acceptable, or `None` (another version, malformed: the link
    /// answers it with a REJECT).
    Hello(Option<Hello>),
    /// More than [`BEFORE_HELLO`] bytes and no HELLO.
    TooLong,
}

impl Default for Opening {
    fn default() -> Self {
        Opening {
            decoder: Decoder::new(vec![0u8; MIN_FRAME.max(128)]),
            seen: Vec::new(),
        }
    }
}

impl Opening {
    /// Every byte read so far: the link is given them all once the session is chosen.
    pub fn seen(&self) -> &[u8] {
        &self.seen
    }

    /// Decodes `bytes`. Frames of another kind and bytes that are no frame are ignored, as
    /// by a Handshaking server (9.4.1).
    pub fn feed(&mut self, bytes: &[u8], peer: &str) -> Opened {
        self.seen.extend_from_slice(bytes);
        let mut input = bytes;
        while let Some(r) = self.decoder.decode(&mut input) {
            match r {
                Ok(f) if f.header.kind == Kind::Hello => {
                    return Opened::Hello(Hello::parse(f.payload))
                }
                Ok(f) => {
                    debug!(%peer, "frame of kind {} before HELLO ignored", f.header.kind as u8)
                }
                Err(e) => debug!(%peer, "garbage before HELLO: {e}"),
            }
        }
        if self.seen.len() > BEFORE_HELLO {
            Opened::TooLong
        } else {
            Opened::More
        }
    }
}

/// Reads `stream` up to its first HELLO within `timeout`. `None` (logged) if the connection
/// is to be dropped; else the HELLO (`None` inside if it is not acceptable) and every byte
/// read. `hint` adds [`raw_hint`] to the drop messages (a listener can serve such peers).
pub async fn read_hello(
    stream: &mut Stream,
    peer: &str,
    timeout: Duration,
    hint: bool,
) -> Option<(Option<Hello>, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut opening = Opening::default();
    let mut buf = [0u8; 1024];
    let hint = |o: &Opening| if hint { raw_hint(o.seen()) } else { "" };
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                warn!(%peer, "dropped: no HELLO within {timeout:?}{}", hint(&opening));
                return None;
            }
            Ok(Ok(0)) => {
                debug!(%peer, "closed before its HELLO");
                return None;
            }
            Ok(Err(e)) => {
                debug!(%peer, "read failed before HELLO: {e}");
                return None;
            }
            Ok(Ok(n)) => n,
        };
        match opening.feed(&buf[..n], peer) {
            Opened::More => {}
            Opened::Hello(hello) => return Some((hello, opening.seen)),
            Opened::TooLong => {
                warn!(%peer, "dropped: no valid HELLO in the first 4 KiB (not a Tether device?){}", hint(&opening));
                return None;
            }
        }
    }
}

/// A hint for a peer that sent bytes but never a frame: text without a frame delimiter is
/// what a client of the tutorial's raw protocol sends.
pub fn raw_hint(seen: &[u8]) -> &'static str {
    let text = !seen.is_empty()
        && !seen.contains(&0)
        && seen
            .iter()
            .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if text {
        "; it sent text and no Tether frame: if it is a client of the tutorial's raw protocol, run tether listen --raw"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::frame::{self, Header};
    use tether_core::link::{Config, Instant, Key, Link, LinkStorage, Role};

    /// The HELLO a client link sends first, after `noise`.
    fn hello_of(link: &mut Link<LinkStorage<4, 4, 128>>, noise: &[u8]) -> Vec<u8> {
        link.connect(Instant::from_millis(0));
        let mut out = vec![0u8; link.transmit_len()];
        let n = link
            .poll_transmit(Instant::from_millis(0), &mut out)
            .unwrap();
        [noise, &out[..n]].concat()
    }

    fn client(session: u32, first_seq: u32) -> Link<LinkStorage<4, 4, 128>> {
        let mut cfg = Config::new(Role::Client, session);
        cfg.first_seq = first_seq;
        cfg.continues_from = 0x5e55;
        Link::new(cfg, LinkStorage::new()).unwrap()
    }

    #[test]
    fn the_hello_after_leftovers_and_garbage_is_decoded_once_into_one_value() {
        let mut stale = vec![0u8; frame::max_encoded_len(4)];
        let h = Header {
            kind: Kind::Data,
            ..Header::default()
        };
        let n = frame::encode(&h, b"old!", &mut stale).unwrap();
        let noise = [b"garbage\0".as_slice(), &stale[..n]].concat();
        let bytes = hello_of(&mut client(0xD00D, 77), &noise);
        // Fed one byte at a time, as a slow line delivers it.
        let mut o = Opening::default();
        let mut found = None;
        for b in bytes.chunks(1) {
            match o.feed(b, "test") {
                Opened::More => {}
                Opened::Hello(h) => {
                    found = h;
                    break;
                }
                Opened::TooLong => panic!("too long"),
            }
        }
        let h = found.expect("an acceptable HELLO");
        assert_eq!((h.session, h.peer_session, h.tx_base), (0xD00D, 0x5e55, 77));
        assert_eq!(h.key_id, None);
        assert_eq!(o.seen(), bytes.as_slice(), "every byte kept for the link");
    }

    #[test]
    fn an_authenticated_hello_names_its_key() {
        let mut link = client(0xD00D, 0);
        link.set_auth(Some(Key::new(0xABCD, [7; 32])), [1; 16])
            .unwrap();
        let bytes = hello_of(&mut link, b"");
        let Opened::Hello(Some(h)) = Opening::default().feed(&bytes, "test") else {
            panic!("no HELLO")
        };
        assert_eq!((h.session, h.key_id), (0xD00D, Some(0xABCD)));
        assert!(Key::new(0xABCD, [7; 32]).verifies_hello(h.payload()));
    }

    #[test]
    fn a_hello_of_another_version_is_found_but_not_acceptable_and_garbage_is_bounded() {
        let mut payload = vec![9u8; 28];
        payload[1] = 0;
        let mut wire = vec![0u8; frame::max_encoded_len(payload.len())];
        let h = Header {
            kind: Kind::Hello,
            ..Header::default()
        };
        let n = frame::encode(&h, &payload, &mut wire).unwrap();
        assert_eq!(
            Opening::default().feed(&wire[..n], "test"),
            Opened::Hello(None)
        );
        let mut o = Opening::default();
        assert_eq!(o.feed(&[0x55; BEFORE_HELLO], "test"), Opened::More);
        assert_eq!(o.feed(&[0x55], "test"), Opened::TooLong);
    }

    #[test]
    fn text_without_frames_gets_the_raw_hint() {
        assert!(raw_hint(b"hello\n").contains("--raw"));
        assert_eq!(raw_hint(b"he\0llo"), "");
        assert_eq!(raw_hint(b""), "");
    }
}
