//! CRC-32C (Castagnoli), the frame trailer's checksum.
//!
//! Parameters (the `CRC-32/ISCSI` entry of the CRC catalogue): width 32, polynomial
//! `0x1EDC6F41` (reflected `0x82F63B78`), initial value `0xFFFFFFFF`, input and output
//! reflected, final XOR `0xFFFFFFFF`; check value (the CRC of ASCII `"123456789"`)
//! `0xE3069283`.
//!
//! Why CRC-32C rather than the Ethernet CRC-32 (Koopman, "32-Bit Cyclic Redundancy Codes
//! for Internet Applications", DSN 2002): it detects every error of up to 5 bits in frames
//! up to 5,243 bits (payloads up to 641 bytes), where the Ethernet CRC manages that only up
//! to 268 bits, and every error of up to 3 bits at every frame size Tether allows, where the
//! Ethernet CRC stops at 91,607 bits. iSCSI, SCTP and ext4 chose it for the same reason.
//!
//! Back ends, chosen by feature (the first of these that is on):
//! - `hw-crc` (std only, the host's choice): the `crc32c` crate, which uses the CPU's CRC-32C
//!   instructions when it has them and a software table otherwise;
//! - `fast-crc`: the `crc` crate's 16 KiB slicing-by-16 table;
//! - `table-crc`: the `crc` crate's 1 KiB byte table;
//! - none of them (the default, for firmware): a 64-byte nibble table written here.

// The `crc` crate's back ends.
#[cfg(all(feature = "fast-crc", not(feature = "hw-crc")))]
type Lanes = crc::Table<16>;
#[cfg(all(
    feature = "table-crc",
    not(any(feature = "hw-crc", feature = "fast-crc"))
))]
type Lanes = crc::Table<1>;

#[cfg(all(
    any(feature = "fast-crc", feature = "table-crc"),
    not(feature = "hw-crc")
))]
static CASTAGNOLI: crc::Crc<u32, Lanes> = crc::Crc::<u32, Lanes>::new(&crc::CRC_32_ISCSI);

/// The default: four bits at a time with a 16-entry table (64 bytes of flash, against the 1
/// KiB byte table of `table-crc`: measured by `scripts/size-report.sh`). Written here because
/// the `crc` crate offers only 0, 1 or 16 full byte tables; checked against it in the tests,
/// whatever the features.
#[cfg_attr(
    any(feature = "hw-crc", feature = "fast-crc", feature = "table-crc"),
    allow(dead_code)
)]
mod nibble {
    const POLY: u32 = 0x82F6_3B78; // CRC-32C, reflected

    // A static, not a const, so that the table is a named symbol of the core in size reports
    // (as a const it became an anonymous constant: scripts/firmware-size.py counted it apart).
    static TABLE: [u32; 16] = {
        let mut t = [0u32; 16];
        let mut i = 0;
        while i < 16 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 4 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };

    /// Advances the (non-inverted) CRC register over `bytes`.
    pub(super) fn update(mut reg: u32, bytes: &[u8]) -> u32 {
        for &b in bytes {
            reg ^= u32::from(b);
            reg = (reg >> 4) ^ TABLE[(reg & 0xF) as usize];
            reg = (reg >> 4) ^ TABLE[(reg & 0xF) as usize];
        }
        reg
    }
}

/// `hw-crc`: short pieces (a frame's header, a small record) by slicing-by-8 tables (8 KiB,
/// built at compile time), because the `crc32c` crate's entry costs more than the work on a
/// few bytes: callgrind counted ~230 instructions a 16-byte frame's CRC through the crate, and
/// perf put the crate at 19 % of `tether send`'s time with 16-byte records.
#[cfg(feature = "hw-crc")]
mod sliced {
    const POLY: u32 = 0x82F6_3B78; // CRC-32C, reflected

    const TABLES: [[u32; 256]; 8] = {
        let mut t = [[0u32; 256]; 8];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
                k += 1;
            }
            t[0][i] = c;
            i += 1;
        }
        let mut j = 1;
        while j < 8 {
            let mut i = 0;
            while i < 256 {
                let prev = t[j - 1][i];
                t[j][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
                i += 1;
            }
            j += 1;
        }
        t
    };

    /// Below this many bytes, the tables; from it on, the CPU's instructions.
    pub(super) const SHORT: usize = 128;

    /// Advances the (non-inverted) CRC register over `bytes`.
    pub(super) fn update(mut reg: u32, bytes: &[u8]) -> u32 {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let lo = reg ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            reg = TABLES[7][(lo & 0xFF) as usize]
                ^ TABLES[6][((lo >> 8) & 0xFF) as usize]
                ^ TABLES[5][((lo >> 16) & 0xFF) as usize]
                ^ TABLES[4][(lo >> 24) as usize]
                ^ TABLES[3][(hi & 0xFF) as usize]
                ^ TABLES[2][((hi >> 8) & 0xFF) as usize]
                ^ TABLES[1][((hi >> 16) & 0xFF) as usize]
                ^ TABLES[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            reg = (reg >> 8) ^ TABLES[0][((reg ^ u32::from(b)) & 0xFF) as usize];
        }
        reg
    }
}

/// CRC-16/DNP, the check of short version 2 frames (`PROTOCOL.md` 11.4): polynomial
/// `0x3D65` (reflected `0xA6BC`), initial value 0, reflected, final XOR `0xFFFF`; check value
/// `0xEA82`. Four bits at a time with a 16-entry table (32 bytes of flash): it covers at most
/// 8 bytes a frame, so speed does not matter.
///
/// ```
/// assert_eq!(tether_core::frame::crc16_dnp(b"123456789"), 0xEA82);
/// ```
#[cfg(feature = "v2")]
pub fn crc16_dnp(bytes: &[u8]) -> u16 {
    const POLY: u16 = 0xA6BC;
    static TABLE: [u16; 16] = {
        let mut t = [0u16; 16];
        let mut i = 0;
        while i < 16 {
            let mut c = i as u16;
            let mut k = 0;
            while k < 4 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut reg: u16 = 0;
    for &b in bytes {
        reg ^= u16::from(b);
        reg = (reg >> 4) ^ TABLE[usize::from(reg & 0xF)];
        reg = (reg >> 4) ^ TABLE[usize::from(reg & 0xF)];
    }
    !reg
}

/// The CRC-32C of `bytes`.
///
/// ```
/// assert_eq!(tether_core::frame::crc32c(b"123456789"), 0xE306_9283);
/// ```
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(bytes);
    c.finalize()
}

/// An incremental CRC-32C over several pieces, e.g. a header and a payload that are not
/// contiguous in memory.
#[derive(Clone)]
pub struct Crc32c {
    /// hw-crc: the CRC of everything so far. The nibble table: the register, not yet inverted.
    #[cfg(any(
        feature = "hw-crc",
        not(any(feature = "fast-crc", feature = "table-crc"))
    ))]
    value: u32,
    #[cfg(all(
        any(feature = "fast-crc", feature = "table-crc"),
        not(feature = "hw-crc")
    ))]
    digest: crc::Digest<'static, u32, Lanes>,
}

impl Crc32c {
    /// Starts a new checksum.
    pub fn new() -> Self {
        #[cfg(feature = "hw-crc")]
        return Self { value: 0 };
        #[cfg(not(any(feature = "hw-crc", feature = "fast-crc", feature = "table-crc")))]
        return Self { value: !0 };
        #[cfg(all(
            any(feature = "fast-crc", feature = "table-crc"),
            not(feature = "hw-crc")
        ))]
        return Self {
            digest: CASTAGNOLI.digest(),
        };
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        #[cfg(feature = "hw-crc")]
        {
            self.value = if bytes.len() < sliced::SHORT {
                !sliced::update(!self.value, bytes)
            } else {
                crc32c::crc32c_append(self.value, bytes)
            };
        }
        #[cfg(not(any(feature = "hw-crc", feature = "fast-crc", feature = "table-crc")))]
        {
            self.value = nibble::update(self.value, bytes);
        }
        #[cfg(all(
            any(feature = "fast-crc", feature = "table-crc"),
            not(feature = "hw-crc")
        ))]
        self.digest.update(bytes);
    }

    /// The CRC-32C of everything fed so far.
    pub fn finalize(self) -> u32 {
        #[cfg(feature = "hw-crc")]
        return self.value;
        #[cfg(not(any(feature = "hw-crc", feature = "fast-crc", feature = "table-crc")))]
        return !self.value;
        #[cfg(all(
            any(feature = "fast-crc", feature = "table-crc"),
            not(feature = "hw-crc")
        ))]
        return self.digest.finalize();
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Crc32c")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    /// The hand-written nibble table agrees with the `crc` crate on every length.
    #[test]
    fn nibble_table_matches_the_crc_crate() {
        let reference = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let data: std::vec::Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in [0, 1, 2, 3, 9, 15, 16, 17, 255, 1000] {
            let ours = !super::nibble::update(!0, &data[..len]);
            assert_eq!(ours, reference.checksum(&data[..len]), "length {len}");
        }
        assert_eq!(!super::nibble::update(!0, b"123456789"), 0xE306_9283);
    }

    /// CRC-16/DNP agrees with the `crc` crate's catalogue entry on every length.
    #[cfg(feature = "v2")]
    #[test]
    fn crc16_dnp_matches_the_crc_crate() {
        let reference = crc::Crc::<u16>::new(&crc::CRC_16_DNP);
        let data: std::vec::Vec<u8> = (0..100u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in 0..=100 {
            assert_eq!(
                super::crc16_dnp(&data[..len]),
                reference.checksum(&data[..len]),
                "{len}"
            );
        }
        assert_eq!(super::crc16_dnp(b"123456789"), 0xEA82);
    }

    /// The back end in use (whichever the features chose) agrees with the `crc` crate's
    /// CRC-32/ISCSI on every length up to 300 bytes and past `hw-crc`'s switch to the CPU's
    /// instructions, fed whole or in two pieces split anywhere.
    #[test]
    fn the_back_end_in_use_matches_the_crc_crate() {
        let reference = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let data: std::vec::Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in 0..=300 {
            let want = reference.checksum(&data[..len]);
            assert_eq!(super::crc32c(&data[..len]), want, "length {len}");
            for cut in [0, len / 3, len / 2, len] {
                let mut c = super::Crc32c::new();
                c.update(&data[..cut]);
                c.update(&data[cut..len]);
                assert_eq!(c.finalize(), want, "{len}/{cut}");
            }
        }
    }

    /// The slicing-by-8 tables agree with the `crc` crate on every length around their
    /// 8-byte steps, and pieces of any split give the CRC of the whole.
    #[cfg(feature = "hw-crc")]
    #[test]
    fn sliced_tables_match_the_crc_crate_and_split_anywhere() {
        let reference = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let data: std::vec::Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in 0..300 {
            let ours = !super::sliced::update(!0, &data[..len]);
            assert_eq!(ours, reference.checksum(&data[..len]), "length {len}");
            for cut in [0, len / 2, len.saturating_sub(1), len] {
                let mut c = super::Crc32c::new();
                c.update(&data[..cut]);
                c.update(&data[cut..len]);
                c.update(&data[len..600]);
                assert_eq!(c.finalize(), reference.checksum(&data), "{len}/{cut}");
            }
        }
    }
}
