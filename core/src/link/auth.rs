//! Authenticated links (`PROTOCOL.md` 9.14), behind the `auth` feature.
//!
//! Each device holds a 32-byte pre-shared [`Key`] with a 32-bit identifier that the host
//! looks it up by. The handshake proves that both sides hold the key (HMAC-SHA256
//! challenge–response over fresh nonces from both sides) and derives a key for this
//! connection alone; every later frame carries a 48-bit frame counter and a 64-bit
//! truncated HMAC-SHA256 of the whole frame, so that nobody on the path can inject, alter or
//! replay a frame, even into a later connection.
//!
//! The core invents no randomness: [`crate::link::Link::set_auth`] takes a 16-byte nonce
//! seed from the caller, whose last 12 bytes must never repeat for a key (a TRNG, or a boot
//! counter kept in flash and the chip's unique id); the link counts in the first 4 bytes for
//! each nonce it needs.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 keyed with `key` (any length: this never fails). Not inlined, like
/// [`mac_of`]: one copy of the hashing code serves every use, which keeps flash down.
#[inline(never)]
fn keyed(key: &[u8]) -> Option<HmacSha256> {
    HmacSha256::new_from_slice(key).ok()
}

/// The HMAC of the concatenation of `parts` under a keyed state.
#[inline(never)]
fn mac_of(keyed: &HmacSha256, parts: &[&[u8]]) -> [u8; 32] {
    let mut m = keyed.clone();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Whether `tag` is the first `tag.len()` bytes of `full`, compared in constant time.
fn tag_eq(full: &[u8; 32], tag: &[u8]) -> bool {
    tag.len() <= full.len() && bool::from(full[..tag.len()].ct_eq(tag))
}

fn head16(full: &[u8; 32]) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&full[..TAG_LEN]);
    t
}

/// Bytes in a pre-shared key.
pub const KEY_LEN: usize = 32;
/// Bytes in a handshake nonce (and in the nonce seed given to the link).
pub const NONCE_LEN: usize = 16;
/// Bytes of the handshake tags (HMAC-SHA256 truncated).
pub const TAG_LEN: usize = 16;
/// Bytes of the frame counter in a frame's trailer.
pub const COUNTER_LEN: usize = 6;
/// Bytes of the truncated MAC in a frame's trailer.
pub const MAC_LEN: usize = 8;
/// Bytes an authenticated session adds to the payload of every DATA, ACK, PING and CLOSE.
pub const TRAILER_LEN: usize = COUNTER_LEN + MAC_LEN;
/// Bytes the authentication extension adds to a HELLO or WELCOME: key id, nonce, tag.
pub const EXT_LEN: usize = 4 + NONCE_LEN + TAG_LEN;
/// The largest frame counter; a side that reaches it sends nothing more on the connection.
pub const COUNTER_MAX: u64 = (1 << 48) - 1;

const LABEL_HELLO: &[u8] = b"tether-v1 hello";
const LABEL_KEY: &[u8] = b"tether-v1 key";
const LABEL_WELCOME: &[u8] = b"tether-v1 welcome";
/// The first byte of a frame MAC's input: which side sent the frame.
pub(crate) const DIR_CLIENT: u8 = 0x01;
pub(crate) const DIR_SERVER: u8 = 0x02;

/// A device's pre-shared key and the identifier its HELLO names it by.
///
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    id: u32,
    secret: [u8; KEY_LEN],
}

impl Key {
    /// The key `secret`, named `id` in HELLO frames.
    pub const fn new(id: u32, secret: [u8; KEY_LEN]) -> Key {
        Key { id, secret }
    }

    /// The identifier HELLO frames name this key by (the device's identity, which unlike
    /// its `session` survives reboots).
    pub const fn id(&self) -> u32 {
        self.id
    }

    /// `tag_c` in full: HMAC(PSK, "tether-v1 hello" ‖ HELLO payload bytes 0 to 47).
    fn hello_mac(&self, signed: &[u8]) -> Option<[u8; 32]> {
        Some(mac_of(&keyed(&self.secret)?, &[LABEL_HELLO, signed]))
    }

    /// `tag_c`: the first 16 bytes of [`Key::hello_mac`].
    pub(crate) fn hello_tag(&self, signed: &[u8]) -> Option<[u8; TAG_LEN]> {
        self.hello_mac(signed).map(|m| head16(&m))
    }

    /// The connection key K = HMAC(PSK, "tether-v1 key" ‖ key id ‖ nonce_c ‖ nonce_s), as a
    /// keyed MAC ready to clone for each frame.
    pub(crate) fn conn(
        &self,
        nonce_c: &[u8; NONCE_LEN],
        nonce_s: &[u8; NONCE_LEN],
    ) -> Option<HmacSha256> {
        let k = mac_of(
            &keyed(&self.secret)?,
            &[LABEL_KEY, &self.id.to_le_bytes(), nonce_c, nonce_s],
        );
        keyed(&k)
    }

    /// Whether a HELLO payload carries this key's id and a tag made with it. A listener
    /// checks this before it keeps any state for the connection.
    pub fn verifies_hello(&self, payload: &[u8]) -> bool {
        let Some(ext) = Ext::parse(payload) else {
            return false;
        };
        let Some(full) = self.hello_mac(&payload[..SIGNED]) else {
            return false;
        };
        ext.key_id == self.id && tag_eq(&full, &ext.tag)
    }
}

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The bytes of an authenticated HELLO or WELCOME that its tag covers: all but the tag.
pub(crate) const SIGNED: usize = super::handshake::HELLO_LEN + 4 + NONCE_LEN;
/// The length of an authenticated HELLO or WELCOME payload.
pub(crate) const AUTH_HELLO_LEN: usize = super::handshake::HELLO_LEN + EXT_LEN;

/// The authentication extension of a HELLO or WELCOME (payload bytes 28 to 63).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ext {
    pub key_id: u32,
    pub nonce: [u8; NONCE_LEN],
    pub tag: [u8; TAG_LEN],
}

impl Ext {
    /// The extension of a whole HELLO or WELCOME payload, if it has one.
    pub(crate) fn parse(p: &[u8]) -> Option<Ext> {
        if p.len() != AUTH_HELLO_LEN {
            return None;
        }
        let e = &p[super::handshake::HELLO_LEN..];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&e[4..4 + NONCE_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&e[4 + NONCE_LEN..]);
        Some(Ext {
            key_id: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            nonce,
            tag,
        })
    }
}

/// `tag_s` in full: HMAC(K, "tether-v1 welcome" ‖ WELCOME payload bytes 0 to 47).
fn welcome_mac(conn: &HmacSha256, signed: &[u8]) -> [u8; 32] {
    mac_of(conn, &[LABEL_WELCOME, signed])
}

/// Why an authenticated frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No connection key, too short for a trailer, or a MAC that does not match.
    Mac,
    /// A good MAC on a counter not above the last one accepted: a replay.
    Replay,
}

/// A link's authentication state.
#[derive(Clone)]
pub(crate) struct Auth {
    pub key: Option<Key>,
    /// The nonce counter: bytes 0..4 count, bytes 4..16 come from the caller's seed.
    seed: [u8; NONCE_LEN],
    /// Client: nonce_c of this connection. Server: nonce_s of the current handshake.
    pub own: [u8; NONCE_LEN],
    /// Server: the nonce_c it adopted last.
    pub peer: [u8; NONCE_LEN],
    /// The connection key, once a handshake derived one.
    pub conn: Option<HmacSha256>,
    /// The counter of the last frame sent.
    pub tx_ctr: u64,
    /// The counter of the last frame accepted.
    pub rx_ctr: u64,
    /// A frame under the current connection key arrived intact: the peer holds the key
    /// and took part in this handshake.
    pub confirmed: bool,
}

impl core::fmt::Debug for Auth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Auth")
            .field("key", &self.key)
            .field("keyed", &self.conn.is_some())
            .field("tx_ctr", &self.tx_ctr)
            .field("rx_ctr", &self.rx_ctr)
            .field("confirmed", &self.confirmed)
            .finish()
    }
}

impl Auth {
    pub(crate) const fn new() -> Auth {
        Auth {
            key: None,
            seed: [0; NONCE_LEN],
            own: [0; NONCE_LEN],
            peer: [0; NONCE_LEN],
            conn: None,
            tx_ctr: 0,
            rx_ctr: 0,
            confirmed: false,
        }
    }

    pub(crate) fn set(&mut self, key: Option<Key>, seed: [u8; NONCE_LEN]) {
        *self = Auth::new();
        self.key = key;
        self.seed = seed;
    }

    /// A nonce never returned before by this link: the seed with its first 4 bytes counted
    /// up (little-endian).
    pub(crate) fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        let n = u32::from_le_bytes([self.seed[0], self.seed[1], self.seed[2], self.seed[3]]);
        self.seed[..4].copy_from_slice(&n.wrapping_add(1).to_le_bytes());
        self.seed
    }

    /// A new connection: no key until its handshake. A client takes a fresh nonce.
    pub(crate) fn connect(&mut self, client: bool) {
        self.conn = None;
        self.confirmed = false;
        if client && self.key.is_some() {
            self.own = self.next_nonce();
        }
    }

    /// A new connection key and counters from zero.
    pub(crate) fn rekey(&mut self, conn: Option<HmacSha256>) {
        self.conn = conn;
        self.tx_ctr = 0;
        self.rx_ctr = 0;
        self.confirmed = false;
    }

    /// Writes the extension (key id, own nonce, tag) into bytes 28 to 63 of `p`, whose
    /// first 28 bytes are the HELLO or WELCOME. A WELCOME needs the connection key.
    pub(crate) fn fill_ext(&self, hello: bool, p: &mut [u8; AUTH_HELLO_LEN]) -> Option<()> {
        let key = self.key.as_ref()?;
        let at = super::handshake::HELLO_LEN;
        p[at..at + 4].copy_from_slice(&key.id.to_le_bytes());
        p[at + 4..SIGNED].copy_from_slice(&self.own);
        let tag = if hello {
            key.hello_tag(&p[..SIGNED])?
        } else {
            head16(&welcome_mac(self.conn.as_ref()?, &p[..SIGNED]))
        };
        p[SIGNED..].copy_from_slice(&tag);
        Some(())
    }

    /// The connection key a WELCOME payload proves, if its tag is right: the server holds
    /// the key and answered this connection's nonce.
    pub(crate) fn check_welcome(&self, payload: &[u8]) -> Option<HmacSha256> {
        let key = self.key.as_ref()?;
        let ext = Ext::parse(payload)?;
        if ext.key_id != key.id {
            return None;
        }
        let conn = key.conn(&self.own, &ext.nonce)?;
        tag_eq(&welcome_mac(&conn, &payload[..SIGNED]), &ext.tag).then_some(conn)
    }

    /// The trailer of a frame whose header (length including the trailer) and payload are
    /// given: the next counter and the MAC of `dir ‖ header ‖ payload ‖ counter`.
    pub(crate) fn seal(
        &mut self,
        dir: u8,
        head: &[u8],
        payload: &[u8],
    ) -> Option<[u8; TRAILER_LEN]> {
        let conn = self.conn.as_ref()?;
        if self.tx_ctr >= COUNTER_MAX {
            return None;
        }
        self.tx_ctr += 1;
        let mut t = [0u8; TRAILER_LEN];
        t[..COUNTER_LEN].copy_from_slice(&self.tx_ctr.to_le_bytes()[..COUNTER_LEN]);
        let full = mac_of(conn, &[&[dir], head, payload, &t[..COUNTER_LEN]]);
        t[COUNTER_LEN..].copy_from_slice(&full[..MAC_LEN]);
        Some(t)
    }

    /// Checks the trailer of a received frame (`payload` includes it) and returns the
    /// payload without it. The MAC is compared in constant time; the counter must exceed
    /// every one accepted before under this connection key.
    pub(crate) fn open<'p>(
        &mut self,
        dir: u8,
        head: &[u8],
        payload: &'p [u8],
    ) -> Result<&'p [u8], Refused> {
        let conn = self.conn.as_ref().ok_or(Refused::Mac)?;
        let body_len = payload.len().checked_sub(TRAILER_LEN).ok_or(Refused::Mac)?;
        let (signed, mac) = payload.split_at(body_len + COUNTER_LEN);
        if !tag_eq(&mac_of(conn, &[&[dir], head, signed]), mac) {
            return Err(Refused::Mac);
        }
        let mut c = [0u8; 8];
        c[..COUNTER_LEN].copy_from_slice(&signed[body_len..]);
        let ctr = u64::from_le_bytes(c);
        if ctr <= self.rx_ctr {
            return Err(Refused::Replay);
        }
        self.rx_ctr = ctr;
        self.confirmed = true;
        Ok(&payload[..body_len])
    }
}
