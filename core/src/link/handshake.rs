//! The payloads of HELLO, WELCOME and REJECT (`PROTOCOL.md`, "Link layer").

/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes in a HELLO or WELCOME payload.
pub(crate) const HELLO_LEN: usize = 28;

/// The longest reason text a REJECT carries; longer texts are cut at a character boundary.
pub const REJECT_TEXT_MAX: usize = 64;

/// What a HELLO or WELCOME says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub version: u8,
    /// The sender's session identity (never 0).
    pub session: u32,
    /// The receiver's session as the sender last knew it; 0 if none.
    pub peer_session: u32,
    /// The first sequence number the sender will (re)send.
    pub tx_base: u32,
    /// The next sequence number the sender expects (valid when `peer_session` matches).
    pub rx_next: u32,
    /// Every sequence number below this the sender's application released (same).
    pub rx_released: u32,
    /// The largest payload the sender accepts.
    pub max_payload: u16,
    /// The largest payload the sender may send.
    pub max_send: u16,
    /// The credit the sender grants: records beyond `rx_released` it accepts now.
    pub window: u16,
    /// The authentication extension (PROTOCOL.md 9.14), if the payload has one.
    #[cfg(feature = "auth")]
    pub auth: Option<super::auth::Ext>,
}

impl Hello {
    pub(crate) fn emit(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0] = self.version;
        b[1] = 0; // reserved
        b[2..6].copy_from_slice(&self.session.to_le_bytes());
        b[6..10].copy_from_slice(&self.peer_session.to_le_bytes());
        b[10..14].copy_from_slice(&self.tx_base.to_le_bytes());
        b[14..18].copy_from_slice(&self.rx_next.to_le_bytes());
        b[18..22].copy_from_slice(&self.rx_released.to_le_bytes());
        b[22..24].copy_from_slice(&self.max_payload.to_le_bytes());
        b[24..26].copy_from_slice(&self.max_send.to_le_bytes());
        b[26..28].copy_from_slice(&self.window.to_le_bytes());
        b
    }

    /// Parses a HELLO or WELCOME payload. A payload of another version is returned with
    /// only `version` meaningful, so that the caller can refuse it by name; anything else
    /// malformed is `None`.
    pub(crate) fn parse(p: &[u8]) -> Option<Hello> {
        let version = *p.first()?;
        if version != PROTOCOL_VERSION {
            return Some(Hello {
                version,
                session: 0,
                peer_session: 0,
                tx_base: 0,
                rx_next: 0,
                rx_released: 0,
                max_payload: 0,
                max_send: 0,
                window: 0,
                #[cfg(feature = "auth")]
                auth: None,
            });
        }
        #[cfg(feature = "auth")]
        let auth = super::auth::Ext::parse(p);
        #[cfg(feature = "auth")]
        let len_ok = p.len() == HELLO_LEN || auth.is_some();
        #[cfg(not(feature = "auth"))]
        let len_ok = p.len() == HELLO_LEN;
        if !len_ok || p[1] != 0 {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
        let hello = Hello {
            version,
            session: u32_at(2),
            peer_session: u32_at(6),
            tx_base: u32_at(10),
            rx_next: u32_at(14),
            rx_released: u32_at(18),
            max_payload: u16_at(22),
            max_send: u16_at(24),
            window: u16_at(26),
            #[cfg(feature = "auth")]
            auth,
        };
        // A window of 0 is a valid credit (a bridge whose upstream is down). Every side
        // accepts at least a REJECT's payload (MIN_FRAME), so less is malformed.
        let min_payload = (2 + REJECT_TEXT_MAX) as u16;
        (hello.session != 0 && hello.max_payload >= min_payload).then_some(hello)
    }
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RejectCode {
    /// The peers speak different protocol versions.
    Version,
    /// One side may send records larger than the other accepts.
    Capacity,
    /// The HELLO or WELCOME was malformed.
    Malformed,
    /// The peer is not taking connections now (e.g. a listener at its connection limit).
    Busy,
    /// Authentication failed: the peer holds another key, or none for this device.
    Auth,
    /// This side requires authentication and the peer did not offer it.
    AuthRequired,
    /// The peer offered authentication and this side does not take it.
    AuthUnsupported,
    /// A code this version does not know.
    Other(u8),
}

impl RejectCode {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            RejectCode::Version => 1,
            RejectCode::Capacity => 2,
            RejectCode::Malformed => 3,
            RejectCode::Busy => 4,
            RejectCode::Auth => 5,
            RejectCode::AuthRequired => 6,
            RejectCode::AuthUnsupported => 7,
            RejectCode::Other(c) => c,
        }
    }

    pub(crate) fn from_u8(c: u8) -> RejectCode {
        match c {
            1 => RejectCode::Version,
            2 => RejectCode::Capacity,
            3 => RejectCode::Malformed,
            4 => RejectCode::Busy,
            5 => RejectCode::Auth,
            6 => RejectCode::AuthRequired,
            7 => RejectCode::AuthUnsupported,
            other => RejectCode::Other(other),
        }
    }
}

/// A piece of a REJECT's reason.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Text<'a> {
    Str(&'a str),
    Num(u32),
    /// Eight lowercase hex digits (a device's key id, as the host prints it).
    #[cfg(feature = "auth")]
    Hex(u32),
}

/// A REJECT's content: code and human-readable reason, held without allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct Reject {
    code: RejectCode,
    /// The version the refusing side speaks.
    version: u8,
    text: [u8; REJECT_TEXT_MAX],
    len: usize,
}

impl Reject {
    /// A reason built from text and numbers. Not `core::fmt`: on a Cortex-M that would
    /// cost about 1.6 KiB of flash for two sentences (measured by `scripts/size-report.sh`).
    pub(crate) fn new(code: RejectCode, parts: &[Text<'_>]) -> Reject {
        let mut r = Reject {
            code,
            version: PROTOCOL_VERSION,
            text: [0; REJECT_TEXT_MAX],
            len: 0,
        };
        for part in parts {
            match *part {
                Text::Str(s) => r.push(s),
                Text::Num(n) => {
                    // u32::MAX has 10 digits.
                    let mut digits = [0u8; 10];
                    let mut i = digits.len();
                    let mut v = n;
                    loop {
                        i -= 1;
                        digits[i] = b'0' + (v % 10) as u8;
                        v /= 10;
                        if v == 0 {
                            break;
                        }
                    }
                    // ASCII digits are UTF-8.
                    r.push(core::str::from_utf8(&digits[i..]).unwrap_or(""));
                }
                #[cfg(feature = "auth")]
                Text::Hex(n) => {
                    let mut digits = [0u8; 8];
                    for (k, d) in digits.iter_mut().enumerate() {
                        let v = (n >> (28 - 4 * k)) & 0xF;
                        *d = b"0123456789abcdef"[v as usize];
                    }
                    r.push(core::str::from_utf8(&digits).unwrap_or(""));
                }
            }
        }
        r
    }

    /// Appends as much of `s` as fits, cut at a character boundary: the text is for people,
    /// and the code carries the meaning.
    fn push(&mut self, s: &str) {
        let room = REJECT_TEXT_MAX - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.text[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
    }

    /// The payload of a REJECT frame: version, code, UTF-8 text.
    pub(crate) fn emit<'b>(&self, buf: &'b mut [u8; 2 + REJECT_TEXT_MAX]) -> &'b [u8] {
        buf[0] = self.version;
        buf[1] = self.code.to_u8();
        buf[2..2 + self.len].copy_from_slice(&self.text[..self.len]);
        &buf[..2 + self.len]
    }

    /// Parses a REJECT payload; a text that is not UTF-8 is kept up to its last valid
    /// character.
    pub(crate) fn parse(p: &[u8]) -> Option<Reject> {
        let (&version, rest) = p.split_first()?;
        let (&code, text) = rest.split_first()?;
        let mut r = Reject {
            code: RejectCode::from_u8(code),
            version,
            text: [0; REJECT_TEXT_MAX],
            len: 0,
        };
        let text = &text[..text.len().min(REJECT_TEXT_MAX)];
        let valid = match core::str::from_utf8(text) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        r.text[..valid].copy_from_slice(&text[..valid]);
        r.len = valid;
        Some(r)
    }

    /// Why.
    pub fn code(&self) -> RejectCode {
        self.code
    }

    /// The protocol version of the side that refused.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The reason, for people.
    pub fn text(&self) -> &str {
        // Only whole UTF-8 characters are ever stored.
        core::str::from_utf8(&self.text[..self.len]).unwrap_or("")
    }
}

impl core::fmt::Debug for Reject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reject")
            .field("code", &self.code)
            .field("version", &self.version)
            .field("text", &self.text())
            .finish()
    }
}

impl core::fmt::Display for Reject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.text())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Reject {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}: {=str}", self.code, self.text())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn hello_round_trips() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            session: 0xA1B2_C3D4,
            peer_session: 7,
            tx_base: u32::MAX - 1,
            rx_next: 3,
            rx_released: 2,
            max_payload: 110,
            max_send: 64,
            window: 4,
            #[cfg(feature = "auth")]
            auth: None,
        };
        assert_eq!(Hello::parse(&h.emit()), Some(h));
        let mut bad = h.emit();
        bad[1] = 1;
        assert_eq!(Hello::parse(&bad), None, "reserved byte");
        assert_eq!(Hello::parse(&h.emit()[..27]), None, "short");
        assert_eq!(Hello::parse(&[]), None);
        assert_eq!(
            Hello::parse(&[9]).map(|h| h.version),
            Some(9),
            "other version"
        );
    }

    #[test]
    fn reject_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let r = Reject::new(RejectCode::Capacity, &[Text::Str(&long)]);
        assert_eq!(r.text().len(), 64);
        let mut buf = [0u8; 2 + REJECT_TEXT_MAX];
        let p = r.emit(&mut buf);
        assert_eq!(Reject::parse(p), Some(r));
        let n = Reject::new(
            RejectCode::Version,
            &[Text::Num(0), Text::Str(" "), Text::Num(u32::MAX)],
        );
        assert_eq!(n.text(), "0 4294967295");
        let garbled = Reject::parse(&[1, 2, b'o', b'k', 0xFF, b'x']).unwrap();
        assert_eq!(
            (garbled.code(), garbled.text()),
            (RejectCode::Capacity, "ok")
        );
    }
}
