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
        // The five u32 fields in one loop: a Thumb-1 core builds each from four byte loads.
        let mut w = [0u32; 5];
        for (k, w) in w.iter_mut().enumerate() {
            let i = 2 + 4 * k;
            *w = u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        }
        let u16_at = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
        let hello = Hello {
            version,
            session: w[0],
            peer_session: w[1],
            tx_base: w[2],
            rx_next: w[3],
            rx_released: w[4],
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

/// 10^9 down to 1: the decimal digits of a `u32`.
const POWERS_OF_TEN: [u32; 10] = [
    1_000_000_000,
    100_000_000,
    10_000_000,
    1_000_000,
    100_000,
    10_000,
    1_000,
    100,
    10,
    1,
];

/// How many bytes from the start of `b` are whole, valid UTF-8 characters: what
/// `core::str::from_utf8(b)` says (`s.len()`, or `valid_up_to()`), in about 170 bytes of
/// Cortex-M0 code instead of its 376 (measured in the size probe; the same rules: no overlong
/// forms, no surrogates, nothing above U+10FFFF; an incomplete character at the end is not
/// counted).
fn utf8_valid_up_to(b: &[u8]) -> usize {
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        // Continuation bytes after the first, and the range of the second (RFC 3629, 4).
        let (more, lo, hi) = match c {
            0x00..=0x7F => {
                i += 1;
                continue;
            }
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return i,
        };
        match b.get(i + 1..i + 1 + more) {
            Some([second, rest @ ..])
                if (lo..=hi).contains(second) && rest.iter().all(|&x| x & 0xC0 == 0x80) => {}
            _ => return i,
        }
        i += 1 + more;
    }
    i
}

/// A REJECT's content: code and human-readable reason, held without allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct Reject {
    /// The payload as sent: the refusing side's version, the code, the UTF-8 text (whole
    /// characters only); held this way so that sending it copies nothing.
    payload: [u8; 2 + REJECT_TEXT_MAX],
    /// The text's length (at most `REJECT_TEXT_MAX`).
    len: u8,
    /// The code again, as given: what `code()` returns, and the niche that keeps an
    /// `Option<Reject>` as small as a `Reject`.
    code: RejectCode,
}

impl Reject {
    /// A reason built from text and numbers. Not `core::fmt`: on a Cortex-M that would
    /// cost about 1.6 KiB of flash for two sentences (measured by `scripts/size-report.sh`).
    pub(crate) fn new(code: RejectCode, parts: &[Text<'_>]) -> Reject {
        let mut r = Reject::empty(PROTOCOL_VERSION, code);
        for part in parts {
            match *part {
                Text::Str(s) => r.push(s),
                Text::Num(n) => {
                    // Decimal by subtracting powers of ten: no division (a Cortex-M0 has
                    // none) and no `core::fmt`.
                    let mut v = n;
                    let mut started = false;
                    for p in POWERS_OF_TEN {
                        let mut d = b'0';
                        while v >= p {
                            v -= p;
                            d += 1;
                        }
                        started |= d != b'0' || p == 1;
                        if started {
                            r.push_bytes(&[d]);
                        }
                    }
                }
                #[cfg(feature = "auth")]
                Text::Hex(n) => {
                    let mut digits = [0u8; 8];
                    for (k, d) in digits.iter_mut().enumerate() {
                        let v = (n >> (28 - 4 * k)) & 0xF;
                        *d = b"0123456789abcdef"[v as usize];
                    }
                    r.push_bytes(&digits);
                }
            }
        }
        r
    }

    fn empty(version: u8, code: RejectCode) -> Reject {
        let mut payload = [0; 2 + REJECT_TEXT_MAX];
        payload[0] = version;
        payload[1] = code.to_u8();
        Reject {
            payload,
            len: 0,
            code,
        }
    }

    /// Appends as much of `s` as fits, cut at a character boundary: the text is for people,
    /// and the code carries the meaning.
    fn push(&mut self, s: &str) {
        let room = REJECT_TEXT_MAX - self.text_len();
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.push_bytes(&s.as_bytes()[..take]);
    }

    /// Appends bytes that are whole UTF-8 characters (ASCII digits, a cut `str`), as many as
    /// fit: every byte of ASCII is a character boundary.
    fn push_bytes(&mut self, b: &[u8]) {
        let at = 2 + self.text_len();
        let take = b.len().min(self.payload.len() - at);
        self.payload[at..at + take].copy_from_slice(&b[..take]);
        self.len += take as u8;
    }

    /// The payload of a REJECT frame: version, code, UTF-8 text.
    pub(crate) fn emit(&self) -> &[u8] {
        &self.payload[..2 + self.text_len()]
    }

    fn text_bytes(&self) -> &[u8] {
        &self.payload[2..2 + self.text_len()]
    }

    fn text_len(&self) -> usize {
        usize::from(self.len)
    }

    /// Parses a REJECT payload; a text that is not UTF-8 is kept up to its last valid
    /// character.
    pub(crate) fn parse(p: &[u8]) -> Option<Reject> {
        let (&version, rest) = p.split_first()?;
        let (&code, text) = rest.split_first()?;
        let mut r = Reject::empty(version, RejectCode::from_u8(code));
        let text = &text[..text.len().min(REJECT_TEXT_MAX)];
        r.push_bytes(&text[..utf8_valid_up_to(text)]);
        Some(r)
    }

    /// Why.
    pub fn code(&self) -> RejectCode {
        self.code
    }

    /// The protocol version of the side that refused.
    pub fn version(&self) -> u8 {
        self.payload[0]
    }

    /// The reason, for people.
    pub fn text(&self) -> &str {
        // Only whole UTF-8 characters are ever stored.
        core::str::from_utf8(self.text_bytes()).unwrap_or("")
    }
}

impl core::fmt::Debug for Reject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reject")
            .field("code", &self.code())
            .field("version", &self.version())
            .field("text", &self.text())
            .finish()
    }
}

impl core::fmt::Display for Reject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}: {}", self.code(), self.text())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Reject {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}: {=str}", self.code(), self.text())
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

    /// What `core::str::from_utf8` says is valid of `b`.
    fn std_valid_up_to(b: &[u8]) -> usize {
        match core::str::from_utf8(b) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        }
    }

    #[test]
    fn utf8_check_agrees_with_core() {
        // Bytes at every boundary of the rules (ASCII, continuation ranges, lead bytes).
        const EDGES: [u8; 22] = [
            0x00, 0x41, 0x7F, 0x80, 0x81, 0x8F, 0x90, 0x9F, 0xA0, 0xBE, 0xBF, 0xC0, 0xC1, 0xC2,
            0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF,
        ];
        let check = |b: &[u8]| {
            for n in 0..=b.len() {
                assert_eq!(
                    utf8_valid_up_to(&b[..n]),
                    std_valid_up_to(&b[..n]),
                    "{:x?}",
                    &b[..n]
                );
            }
        };
        // Every pair of bytes, then an edge byte, then a character after them.
        for x in 0..=0xFFFFu16 {
            let [b0, b1] = x.to_le_bytes();
            for e in EDGES {
                check(&[b0, b1, e, b'a']);
                check(&[b'a', b0, b1, e, 0xC3, 0xA9]);
            }
        }
        // Every lead byte with three edge bytes after it.
        for lead in 0..=0xFFu8 {
            for e1 in EDGES {
                for e2 in EDGES {
                    for e3 in EDGES {
                        check(&[lead, e1, e2, e3, b'z']);
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn utf8_check_agrees_with_core_on_any_text(b in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            proptest::prop_assert_eq!(utf8_valid_up_to(&b), std_valid_up_to(&b));
        }

        #[test]
        fn utf8_check_agrees_with_core_on_strings(s in "\\PC{0,40}", cut in 0usize..200) {
            let b = s.as_bytes();
            let b = &b[..cut.min(b.len())];
            proptest::prop_assert_eq!(utf8_valid_up_to(b), std_valid_up_to(b));
        }
    }

    #[test]
    fn reject_numbers_are_decimal() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            999_999_999,
            1_000_000_000,
            u32::MAX - 1,
            u32::MAX,
        ] {
            let r = Reject::new(RejectCode::Capacity, &[Text::Str("n="), Text::Num(n)]);
            assert_eq!(r.text(), std::format!("n={n}"));
        }
        // A number that does not fit is cut, as text is.
        let long = "x".repeat(REJECT_TEXT_MAX - 3);
        let r = Reject::new(
            RejectCode::Capacity,
            &[Text::Str(&long), Text::Num(123_456)],
        );
        assert_eq!(r.text(), std::format!("{long}123"));
    }

    #[test]
    fn reject_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let r = Reject::new(RejectCode::Capacity, &[Text::Str(&long)]);
        assert_eq!(r.text().len(), 64);
        let p = r.emit();
        assert_eq!(&p[..2], &[PROTOCOL_VERSION, 2]);
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
