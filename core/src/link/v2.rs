//! The link layer's part of protocol version 2 (`PROTOCOL.md` section 11): the negotiation
//! in the handshake's header fields, and the session frames of a version 2 session.
//!
//! The state machine of `super` stays the one state machine: the handshake, phases, timers,
//! credit and release are shared, and what differs by version is how frames are read and
//! built, in this module.

use super::{ring_add, seq_lt, seq_lte, seq_lte_from, Instant, Phase, State};
use crate::frame::v2::{self as wire, Ack, Data, Frame, Short};
use crate::frame::{Header, Kind};

/// The highest protocol version this build speaks.
pub const MAX_VERSION: u8 = 2;

/// The longest a receiver delays an acknowledgement that is due later (11.7.3).
pub const ACK_DELAY_MS: u32 = 25;

/// What a link knows of version 2 beyond version 1's state.
#[derive(Debug, Clone, Copy)]
pub(super) struct V2 {
    /// The version of the session: that of the last handshake completed (1 before any).
    pub(super) version: u8,
    /// The peer's standing credit (11.2), from the HELLO or WELCOME adopted.
    pub(super) peer_standing: u16,
    // Receiving (11.7.3). An acknowledgement due later: since when, and after how many DATA
    // frames with new records; `eager`: the peer sent `I` and waits for releases.
    lazy_since: Option<Instant>,
    lazy_frames: u8,
    eager: bool,
    /// Records held out of order: bit i is record `rx_next + 1 + i` (11.7.1).
    pub(super) ooo: Bits,
    // Sending (11.8): since when a frame that is not full waits for more records, and
    // whether that wait is over (the timer fired: the next frame goes as it is).
    pack_since: Option<Instant>,
    pack_expired: bool,
    /// Records the peer holds out of order: bit i is record `rcv_known + 1 + i` (11.7.4).
    sacked: Bits,
    /// Records below it, missing (neither known received nor sacked), are sent again.
    rxt_end: u32,
    /// `snd_max` when the last retransmission was sent, if one was since the round began.
    rxt_mark: Option<u32>,
    /// The record timed for a round-trip sample, and when its frame was sent (11.7.5).
    timed: Option<(u32, Instant)>,
    /// RFC 6298's smoothed round trip and its variation, in eighths of a millisecond; 0
    /// `srtt8` before the first sample.
    srtt8: u32,
    rttvar8: u32,
    /// The damage rule (11.8): the share of DATA frames that were retransmissions (65,536 =
    /// all, weighted 1/16) and their mean length on the wire (weighted 1/8).
    damage: u32,
    mean_len: u32,
}

impl V2 {
    pub(super) const fn new() -> V2 {
        V2 {
            version: 1,
            peer_standing: 0,
            lazy_since: None,
            lazy_frames: 0,
            eager: false,
            ooo: 0,
            pack_since: None,
            pack_expired: false,
            sacked: 0,
            rxt_end: 0,
            rxt_mark: None,
            timed: None,
            srtt8: 0,
            rttvar8: 0,
            damage: 0,
            mean_len: 0,
        }
    }

    /// Forgets what is due and waiting, at a connect (9.4) or a handshake (9.5.5).
    pub(super) fn reset_pending(&mut self) {
        self.lazy_since = None;
        self.lazy_frames = 0;
        self.eager = false;
        self.pack_since = None;
        self.pack_expired = false;
    }
}

/// A bitmap of records out of order (11.7.1): the 128 after a boundary on hosts, 64 on
/// 32-bit targets, where 128-bit shifts cost a microcontroller's flash (11.7.1 lets a
/// receiver hold fewer; a firmware link has fewer slots than that anyway).
/// (`--cfg tether_sack64` gives a host the 64-bit one, to test it.)
#[cfg(all(target_pointer_width = "64", not(tether_sack64)))]
type Bits = u128;
#[cfg(any(not(target_pointer_width = "64"), tether_sack64))]
type Bits = u64;
/// The records a [`Bits`] covers.
const BITS: u32 = Bits::BITS;

/// Framing bytes of a DATA frame on the wire, for the damage rule (11.8): control, `seq`,
/// CRC-32C, a COBS code byte and the delimiter.
const FRAMING: u32 = 8;

/// The integer square root (the damage rule's frame length).
fn isqrt(mut n: u32) -> u32 {
    let mut x = 0u32;
    let mut bit = 1u32 << 30;
    while bit > n {
        bit >>= 2;
    }
    while bit != 0 {
        if n >= x + bit {
            n -= x + bit;
            x = (x >> 1) + bit;
        } else {
            x >>= 1;
        }
        bit >>= 2;
    }
    x
}

/// The bit of record `seq` in a bitmap whose bit 0 is record `base + 1`, if within it.
fn bit_of(base: u32, seq: u32) -> Option<u32> {
    let i = seq.wrapping_sub(base).wrapping_sub(1);
    (i < BITS).then_some(i)
}

/// How a run of records is laid out in one DATA frame (11.3.3, 11.8).
#[derive(Debug, Clone, Copy)]
struct Pack {
    /// Records in the frame.
    count: u32,
    shape: wire::Shape,
    /// The bytes of the records section.
    section: usize,
    /// More records were available than fit.
    full: bool,
}

impl State {
    /// The highest version this side offers (client) or accepts (server): its configuration,
    /// and 1 in an authenticated link (11.2).
    pub(super) fn offered_version(&self) -> u8 {
        #[cfg(feature = "auth")]
        if self.auth.key.is_some() {
            return 1;
        }
        self.cfg.max_version.clamp(1, MAX_VERSION)
    }

    /// The credit this side grants when nothing lowers it (11.2).
    pub(super) fn standing_credit(&self) -> u16 {
        self.nrx.min(usize::from(u16::MAX)) as u16
    }

    /// A connect (9.4, 11.7): nothing due or waiting, nothing held out of order, no round
    /// trip estimate.
    pub(super) fn v2_connect(&mut self) {
        self.v2.reset_pending();
        self.v2.ooo = 0;
        self.v2.sacked = 0;
        self.v2.rxt_end = self.rcv_known;
        self.v2.rxt_mark = None;
        self.v2.timed = None;
        self.v2.srtt8 = 0;
        self.v2.rttvar8 = 0;
    }

    /// A handshake adopted (9.5.5, 11.7): records held out of order are discarded, the
    /// peer's are forgotten, and everything from `snd_next` (the peer's received boundary)
    /// to `snd_max` is sent again.
    pub(super) fn v2_adopted(&mut self) {
        self.v2.ooo = 0;
        self.v2.sacked = 0;
        self.v2_round(self.snd_max);
    }

    /// A new retransmission round from `snd_next` up to `end`.
    pub(super) fn v2_round(&mut self, end: u32) {
        self.v2.rxt_end = end;
        self.v2.rxt_mark = None;
    }

    /// Whether the session (of the last handshake) is version 2.
    pub(super) fn is_v2(&self) -> bool {
        self.v2.version >= 2
    }

    /// The header fields `seq` and `credit` of a HELLO or WELCOME this side sends (11.2).
    pub(super) fn hello_header(&self, kind: Kind) -> (u32, u16) {
        let v = match kind {
            Kind::Hello => self.offered_version(),
            _ => self.v2.version,
        };
        if v >= 2 {
            (u32::from(self.standing_credit()), u16::from(v))
        } else {
            (0, 0)
        }
    }

    /// A server adopting a HELLO with header `h`: the session's version and the client's
    /// standing credit.
    pub(super) fn take_hello_version(&mut self, h: &Header) {
        let offered = h.credit.min(u16::from(u8::MAX)) as u8;
        let v = offered.min(self.offered_version());
        self.v2.version = v.max(1);
        self.v2.peer_standing = h.seq as u16;
    }

    /// A client adopting a WELCOME with header `h`: the version it chose, or `Err` with that
    /// version if this side did not offer it.
    pub(super) fn take_welcome_version(&mut self, h: &Header) -> Result<(), u16> {
        let offered = self.offered_version();
        let chosen = h.credit;
        let v = if offered < 2 || chosen <= 1 {
            1
        } else if chosen <= u16::from(offered) {
            chosen as u8
        } else {
            return Err(chosen);
        };
        self.v2.version = v;
        self.v2.peer_standing = h.seq as u16;
        Ok(())
    }

    /// This side's acknowledgement as it stands (11.7.2); `sack` holds its bitmap.
    fn ack_fields<'b>(&self, sack: &'b mut [u8; 16]) -> Ack<'b> {
        let standing = self.standing_credit();
        let credit = self.credit();
        let bytes = self.v2.ooo.to_le_bytes();
        sack[..bytes.len()].copy_from_slice(&bytes);
        let n = (BITS - self.v2.ooo.leading_zeros()).div_ceil(8) as usize;
        Ack {
            released: Short::of(self.rx_released, standing > 255),
            received: self.rx_next.wrapping_sub(self.rx_released) as u16,
            credit: (credit != standing).then_some(credit),
            sack: &sack[..n],
        }
    }

    // ---- input ---------------------------------------------------------------------

    /// A version 2 session frame, checked and parsed by the frame layer.
    pub(super) fn on_frame_v2(
        &mut self,
        now: Instant,
        f: &Frame<'_>,
        rx: &mut [u8],
        rx_len: &mut [u16],
    ) {
        if self.phase == Phase::Closed && matches!(f, Frame::Close) && self.is_v2() {
            if self.closed_by_reply {
                self.close_echo_pending = true;
            }
            return;
        }
        if matches!(self.phase, Phase::Idle | Phase::Closed | Phase::Dead) {
            self.unexpected();
            return;
        }
        self.last_rx = now;
        if !self.is_v2() || !self.connected() {
            // A session frame of a version the session does not use, or outside a session.
            self.unexpected();
            return;
        }
        match f {
            Frame::Data { ack, data } => {
                if let Some(a) = ack {
                    self.on_ack_v2(now, a);
                }
                self.on_data_v2(now, data, rx, rx_len);
            }
            Frame::Ack(a) => self.on_ack_v2(now, a),
            Frame::Ping => self.ack_pending = true,
            Frame::Close => self.on_close(),
        }
    }

    /// Takes an acknowledgement (11.7.4).
    fn on_ack_v2(&mut self, now: Instant, a: &Ack<'_>) {
        let rel = wire::expand_released(self.tx_base, a.released);
        let rcv = rel.wrapping_add(u32::from(a.received));
        let credit = a.credit.unwrap_or(self.v2.peer_standing);
        // The bitmap as far as this side keeps one; a record beyond it is only not known
        // held, and is sent again if missing when the round reaches it.
        let mut bits = [0u8; (BITS / 8) as usize];
        let n = a.sack.len().min(bits.len());
        bits[..n].copy_from_slice(&a.sack[..n]);
        let sacked = Bits::from_le_bytes(bits);
        // One past the highest bit reported (its last byte is not 0, 11.3.2).
        let reported_top = a
            .sack
            .last()
            .map_or(0, |b| a.sack.len() as u32 * 8 - b.leading_zeros());
        // 1. Valid: rel <= rcv <= snd_max (rel >= tx_base by its expansion), and every record
        // sacked was sent: the highest is rcv + its bit's position.
        let top = rcv.wrapping_add(reported_top);
        if !seq_lte_from(self.tx_base, rcv, self.snd_max)
            || (!a.sack.is_empty() && !seq_lt(top, self.snd_max))
        {
            self.stats.spurious_acks = self.stats.spurious_acks.wrapping_add(1);
            return;
        }
        // 2. Progress: more received, or more held out of order.
        let known = if rcv == self.rcv_known {
            self.v2.sacked
        } else {
            0
        };
        let progress = seq_lt(self.rcv_known, rcv) || sacked & !known != 0;
        // 3. Forget what was released; take the credit.
        self.free_tx(rel);
        self.peer_limit = rel.wrapping_add(u32::from(credit));
        // 4. What the peer holds.
        if seq_lte(self.rcv_known, rcv) {
            self.rcv_known = rcv;
            self.v2.sacked = sacked;
        }
        let known = self.rcv_known;
        for s in [&mut self.snd_next, &mut self.v2.rxt_end] {
            if seq_lt(*s, known) {
                *s = known;
            }
        }
        // 5. Loss: a record missing below one the peer holds was lost (the transport does
        // not reorder); after a retransmission, a record held that was first sent after it
        // shows that the missing ones sent again were lost again: a new round.
        let high = if self.v2.sacked == 0 {
            known
        } else {
            known.wrapping_add(BITS + 1 - self.v2.sacked.leading_zeros())
        };
        match self.v2.rxt_mark {
            Some(mark) if seq_lt(mark, high) => {
                self.snd_next = known;
                self.v2_round(high);
                self.stats.fast_retransmits = self.stats.fast_retransmits.wrapping_add(1);
            }
            _ if seq_lt(self.v2.rxt_end, high) => self.v2.rxt_end = high,
            _ => {}
        }
        // 6. A round-trip sample, if the timed record arrived.
        if let Some((seq, sent)) = self.v2.timed {
            if seq_lt(seq, known) || self.peer_holds(seq) {
                self.v2.timed = None;
                self.rtt_sample(now.millis().saturating_sub(sent.millis()));
            }
        }
        // 7. The timer, restarted with a fresh timeout on progress.
        if progress {
            self.rto = self.rto_v2();
        }
        self.arm_rto(now, progress);
    }

    /// Whether the peer reported own record `seq` held out of order.
    fn peer_holds(&self, seq: u32) -> bool {
        bit_of(self.rcv_known, seq).is_some_and(|i| self.v2.sacked >> i & 1 != 0)
    }

    /// RFC 6298's estimators, with a sample of `ms` milliseconds (11.7.5).
    fn rtt_sample(&mut self, ms: u64) {
        let r8 = (ms.min(u64::from(u32::MAX / 64)) as u32) * 8;
        if self.v2.srtt8 == 0 {
            self.v2.srtt8 = r8.max(1);
            self.v2.rttvar8 = r8 / 2;
        } else {
            let delta = self.v2.srtt8.abs_diff(r8);
            self.v2.rttvar8 = self.v2.rttvar8 - self.v2.rttvar8 / 4 + delta / 4;
            self.v2.srtt8 = (self.v2.srtt8 - self.v2.srtt8 / 8 + r8 / 8).max(1);
        }
        self.rto = self.rto_v2();
    }

    /// The timeout of 11.7.5: `rto_initial_ms` before a sample, else srtt + max(G,
    /// 4 rttvar) + ACK_DELAY, at most `rto_max_ms`.
    fn rto_v2(&self) -> u32 {
        if self.v2.srtt8 == 0 {
            return self.cfg.rto_initial_ms;
        }
        let eighths = self.v2.srtt8 + (4 * self.v2.rttvar8).max(8);
        (eighths.div_ceil(8) + ACK_DELAY_MS).min(self.cfg.rto_max_ms)
    }

    /// The smoothed round trip in milliseconds, once measured.
    pub(super) fn srtt_ms(&self) -> Option<u32> {
        (self.v2.srtt8 != 0).then(|| self.v2.srtt8.div_ceil(8))
    }

    fn on_data_v2(&mut self, now: Instant, data: &Data<'_>, rx: &mut [u8], rx_len: &mut [u16]) {
        let mut seq = wire::expand_seq(self.rx_next, data.seq);
        let mut new = false;
        for record in data.records() {
            new |= self.on_record_v2(seq, record, rx, rx_len);
            seq = seq.wrapping_add(1);
        }
        if data.immediate {
            // The sender waits for this acknowledgement, and for the releases after it.
            self.ack_pending = true;
            self.v2.eager = true;
        } else if new {
            self.v2.lazy_frames = self.v2.lazy_frames.saturating_add(1);
            self.v2.lazy_since.get_or_insert(now);
            if self.v2.lazy_frames >= 2 {
                self.ack_pending = true;
            }
        }
    }

    /// One record of a DATA frame (11.7.1): whether it was the next one, delivered without
    /// filling a gap (a filled gap makes an acknowledgement due at once).
    fn on_record_v2(
        &mut self,
        seq: u32,
        payload: &[u8],
        rx: &mut [u8],
        rx_len: &mut [u16],
    ) -> bool {
        let ooo = bit_of(self.rx_next, seq);
        if seq_lt(seq, self.rx_next) || ooo.is_some_and(|i| self.v2.ooo >> i & 1 != 0) {
            self.stats.duplicates = self.stats.duplicates.wrapping_add(1);
            self.ack_pending = true;
            return false;
        }
        // Its slot: k after the oldest held record (those of a previous peer instance
        // first, then this one's from rx_released).
        let k = self.held + seq.wrapping_sub(self.rx_next) as usize;
        let in_credit = seq_lt(seq, self.rx_released.wrapping_add(u32::from(self.credit())));
        if !in_credit || k >= self.nrx || payload.len() > self.slot {
            self.stats.overruns = self.stats.overruns.wrapping_add(1);
            self.ack_pending = true;
            return false;
        }
        if seq != self.rx_next && ooo.is_none() {
            // Beyond what the bitmap reports: discarded; the sender sends it again.
            self.stats.out_of_order = self.stats.out_of_order.wrapping_add(1);
            self.ack_pending = true;
            return false;
        }
        let slot = ring_add(self.rx_head, k, self.nrx);
        let start = slot * self.slot;
        rx[start..start + payload.len()].copy_from_slice(payload);
        rx_len[slot] = payload.len() as u16;
        self.stats.records_in = self.stats.records_in.wrapping_add(1);
        if let Some(i) = ooo {
            self.v2.ooo |= 1 << i;
            self.stats.out_of_order = self.stats.out_of_order.wrapping_add(1);
            self.ack_pending = true;
            return false;
        }
        // The next record: deliver it and every record held out of order right after it.
        self.held += 1;
        self.rx_next = self.rx_next.wrapping_add(1);
        let filled = self.v2.ooo & 1 != 0;
        while self.v2.ooo & 1 != 0 {
            self.v2.ooo >>= 1;
            self.held += 1;
            self.rx_next = self.rx_next.wrapping_add(1);
        }
        self.v2.ooo >>= 1;
        self.stats.rx_high_water = self.stats.rx_high_water.max(self.held as u16);
        if filled {
            self.ack_pending = true;
        }
        !filled
    }

    /// The application released records: an acknowledgement is due now if the peer is
    /// eager, later otherwise (11.7.3).
    pub(super) fn released_v2(&mut self) {
        if self.v2.eager {
            self.ack_pending = true;
        } else {
            // `release` has no time; the last input or output is no later than now, so the
            // deadline can only come early, which 11.7.3 allows.
            let t = self.last_rx.max(self.last_tx);
            self.v2.lazy_since.get_or_insert(t);
        }
    }

    /// The timers of a version 2 session beyond version 1's, at `handle_timeout`: a delayed
    /// acknowledgement that is now due, a frame that has waited its packing bound. Each
    /// becomes due, so that `poll_timeout` no longer reports a deadline that has passed.
    pub(super) fn on_timeout_v2(&mut self, now: Instant) {
        if self
            .v2
            .lazy_since
            .is_some_and(|t| now >= t.plus(ACK_DELAY_MS))
        {
            self.v2.lazy_since = None;
            self.ack_pending = true;
        }
        let pack = u32::from(self.cfg.pack_delay_ms);
        if self.v2.pack_since.is_some_and(|t| now >= t.plus(pack)) {
            self.v2.pack_since = None;
            self.v2.pack_expired = true;
        }
    }

    /// The deadlines of a version 2 session beyond version 1's: a delayed acknowledgement
    /// and a frame waiting to be packed.
    pub(super) fn deadline_v2(&self) -> Option<Instant> {
        if !self.is_v2() || !self.connected() {
            return None;
        }
        let ack = self.v2.lazy_since.map(|t| t.plus(ACK_DELAY_MS));
        let pack = self
            .v2
            .pack_since
            .map(|t| t.plus(u32::from(self.cfg.pack_delay_ms)));
        match (ack, pack) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        }
    }

    /// An acknowledgement went out: nothing is due any more.
    fn sent_ack_v2(&mut self) {
        self.ack_pending = false;
        self.v2.lazy_since = None;
        self.v2.lazy_frames = 0;
        if self.rx_next == self.rx_released {
            self.v2.eager = false;
        }
    }

    // ---- output --------------------------------------------------------------------

    /// The next acknowledgement or DATA frame of a version 2 session, if one is due.
    pub(super) fn next_data_v2(
        &mut self,
        now: Instant,
        out: &mut [u8],
        tx: &[u8],
        tx_len: &[u16],
    ) -> Option<usize> {
        if self
            .v2
            .lazy_since
            .is_some_and(|t| now >= t.plus(ACK_DELAY_MS))
        {
            self.ack_pending = true;
        }
        let ack_due = self.ack_pending || self.v2.lazy_since.is_some();
        if let Some(n) = self.data_frame_v2(now, out, tx, tx_len, ack_due) {
            return Some(n);
        }
        if self.ack_pending {
            let mut sack = [0u8; 16];
            let n = emit(out, &Frame::Ack(self.ack_fields(&mut sack)))?;
            self.sent_ack_v2();
            return Some(n);
        }
        None
    }

    /// The largest raw frame this side sends: the peer's M, no more than its own, and no
    /// more than the damage rule allows (11.8).
    fn frame_cap(&self) -> usize {
        let peer = usize::from(self.peer.max_payload) + crate::frame::OVERHEAD;
        let cap = peer.min(self.slot);
        match self.damage_cap() {
            Some(wire_len) => cap.min(wire_len.saturating_sub(2)),
            None => cap,
        }
    }

    /// The damage rule's frame length on the wire, `sqrt(h * mean / p)`, once frames were
    /// sent again (11.8).
    fn damage_cap(&self) -> Option<usize> {
        if self.v2.damage == 0 {
            return None;
        }
        // In 32 bits: the damage in 1/4,096ths, the mean length at most 65,535, so
        // 8 * 4,096 * mean stays below 2^32.
        let d = self.v2.damage >> 4;
        if d == 0 {
            return None;
        }
        Some(isqrt(FRAMING * 4_096 * self.v2.mean_len / d) as usize)
    }

    /// The damage estimate after a DATA frame of `len` bytes on the wire, sent `again` or
    /// not (11.8).
    fn count_damage(&mut self, len: usize, again: bool) {
        let sample: i32 = if again { 65_536 } else { 0 };
        let d = self.v2.damage as i32;
        self.v2.damage = (d + (sample - d) / 16).clamp(0, 65_536) as u32;
        let m = self.v2.mean_len as i32;
        let len = len.min(u16::MAX as usize) as i32;
        self.v2.mean_len = if m == 0 { len } else { m + (len - m) / 8 } as u32;
    }

    /// The length of own record `seq` (queued).
    fn record_len(&self, seq: u32, tx_len: &[u16]) -> usize {
        let k = seq.wrapping_sub(self.tx_base) as usize;
        usize::from(tx_len[ring_add(self.tx_head, k, self.ntx)])
    }

    /// The bytes of own record `seq` (queued).
    fn record<'t>(&self, seq: u32, tx: &'t [u8], tx_len: &[u16]) -> &'t [u8] {
        let k = seq.wrapping_sub(self.tx_base) as usize;
        let slot = ring_add(self.tx_head, k, self.ntx);
        let start = slot * self.slot;
        &tx[start..start + usize::from(tx_len[slot])]
    }

    /// How many of the `avail` records from `first` fit a records section of `budget`
    /// bytes, and in which shape (11.8): uniform if they share a length, listed otherwise,
    /// whichever carries more; one alone is single (and goes even if over `budget`).
    fn plan(&self, first: u32, avail: u32, budget: usize, tx_len: &[u16]) -> Pack {
        let len0 = self.record_len(first, tx_len);
        let mut uniform = 0u32;
        if len0 > 0 {
            let mut used = wire::varint_len(len0);
            while uniform < avail
                && self.record_len(first.wrapping_add(uniform), tx_len) == len0
                && used + len0 <= budget
            {
                used += len0;
                uniform += 1;
            }
        }
        let mut listed = 0u32;
        let mut used = 0;
        while listed < avail {
            let len = self.record_len(first.wrapping_add(listed), tx_len);
            if used + wire::varint_len(len) + len > budget {
                break;
            }
            used += wire::varint_len(len) + len;
            listed += 1;
        }
        let (count, shape, section) = if uniform >= 2 && uniform >= listed {
            let n = uniform as usize;
            (
                uniform,
                wire::Shape::Uniform,
                wire::varint_len(len0) + n * len0,
            )
        } else if listed >= 2 {
            (listed, wire::Shape::Listed, used)
        } else {
            (1, wire::Shape::Single, len0)
        };
        Pack {
            count,
            shape,
            section,
            full: count < avail,
        }
    }

    /// The records the next DATA frame carries (11.7.5): a run of missing records to send
    /// again while `snd_next < rxt_end` (records the peer holds are skipped), else new
    /// records from `snd_max`. The first, how many at most, and whether they go again.
    fn next_run(&mut self) -> Option<(u32, u32, bool)> {
        while seq_lt(self.snd_next, self.v2.rxt_end) && self.peer_holds(self.snd_next) {
            self.snd_next = self.snd_next.wrapping_add(1);
        }
        if seq_lt(self.snd_next, self.v2.rxt_end) && seq_lt(self.snd_next, self.peer_limit) {
            let first = self.snd_next;
            let mut n = 0u32;
            let end = self.v2.rxt_end;
            let limit = self.peer_limit.wrapping_sub(first);
            while n < limit && seq_lt(first.wrapping_add(n), end) {
                if n > 0 && self.peer_holds(first.wrapping_add(n)) {
                    break;
                }
                n += 1;
            }
            return Some((first, n, true));
        }
        let first = self.snd_max;
        let window_end = self.tx_base.wrapping_add(self.window);
        let ready = seq_lt(first, self.tx_next)
            && seq_lt(first, self.peer_limit)
            && seq_lt(first, window_end);
        if !ready {
            return None;
        }
        let avail = self
            .tx_next
            .wrapping_sub(first)
            .min(self.peer_limit.wrapping_sub(first))
            .min(window_end.wrapping_sub(first));
        Some((first, avail, false))
    }

    /// A DATA frame, carrying the acknowledgement if `ack_due`; `None` if nothing is to be
    /// sent, the records wait to be packed (11.8), or an acknowledgement must go alone
    /// first.
    fn data_frame_v2(
        &mut self,
        now: Instant,
        out: &mut [u8],
        tx: &[u8],
        tx_len: &[u16],
        ack_due: bool,
    ) -> Option<usize> {
        if !self.connected() {
            return None;
        }
        let (first, avail, again) = self.next_run()?;
        // After this frame every record sent lies below snd_max (at most first + avail) and
        // the receiver's rx_next at or above tx_base: one byte of seq tells them apart
        // within 128 (11.6).
        let end_max = first.wrapping_add(avail);
        let reach = if seq_lt(end_max, self.snd_max) {
            self.snd_max
        } else {
            end_max
        };
        let seq = Short::of(first, reach.wrapping_sub(self.tx_base) > 128);
        let cap = self.frame_cap();
        let peer_m = usize::from(self.peer.max_payload) + crate::frame::OVERHEAD;
        let hard = peer_m.min(self.slot);
        let mut sack = [0u8; 16];
        let mut ack = if ack_due {
            Some(self.ack_fields(&mut sack))
        } else {
            None
        };
        let mut head = wire::data_head_len(ack.as_ref(), seq);
        let mut pack = self.plan(first, avail, cap.saturating_sub(head + 4), tx_len);
        if head + pack.section + wire::check_len(head + pack.section) > hard {
            // A record as long as a frame allows has no room for an acknowledgement: it goes
            // without (an acknowledgement due now then goes alone, after it).
            ack = None;
            head = wire::data_head_len(None, seq);
            pack = self.plan(first, avail, cap.saturating_sub(head + 4), tx_len);
            if head + pack.section + wire::check_len(head + pack.section) > hard {
                return None; // longer than the peer accepts: never queued (9.5.2)
            }
        }
        let in_flight = seq_lt(self.rcv_known, self.snd_max);
        if !again && !pack.full && in_flight && self.cfg.pack_delay_ms > 0 {
            let since = *self.v2.pack_since.get_or_insert(now);
            if !self.v2.pack_expired && now < since.plus(u32::from(self.cfg.pack_delay_ms)) {
                return None;
            }
        }
        let end = first.wrapping_add(pack.count);
        let after = if seq_lt(end, self.snd_max) {
            self.snd_max
        } else {
            end
        };
        let span = self.window.min(self.peer_limit.wrapping_sub(self.tx_base));
        let immediate = again
            || end == first.wrapping_add(avail)
            || after.wrapping_sub(self.tx_base) * 2 >= span;
        let covered = head + pack.section;
        let start = wire::covered_offset(covered);
        let body = &mut out[start..];
        let mut n = wire::write_data_head(body, ack.as_ref(), seq, immediate, pack.shape);
        if pack.shape == wire::Shape::Uniform {
            n += wire::write_varint(self.record_len(first, tx_len), &mut body[n..]);
        }
        for k in 0..pack.count {
            let r = self.record(first.wrapping_add(k), tx, tx_len);
            if pack.shape == wire::Shape::Listed {
                n += wire::write_varint(r.len(), &mut body[n..]);
            }
            body[n..n + r.len()].copy_from_slice(r);
            n += r.len();
        }
        debug_assert_eq!(n, covered);
        let len = wire::seal(out, covered);
        if ack.is_some() {
            self.sent_ack_v2();
        }
        self.count_damage(len, again);
        self.stats.data_out = self.stats.data_out.wrapping_add(1);
        if again {
            self.snd_next = end;
            self.v2.rxt_mark = Some(self.snd_max);
            self.stats.retransmissions = self.stats.retransmissions.wrapping_add(pack.count);
            // Karn: a record sent again gives no sample.
            if self
                .v2
                .timed
                .is_some_and(|(s, _)| seq_lte(first, s) && seq_lt(s, end))
            {
                self.v2.timed = None;
            }
        } else {
            self.v2.pack_since = None;
            self.v2.pack_expired = false;
            self.snd_max = end;
            if self.v2.timed.is_none() {
                self.v2.timed = Some((first, now));
            }
        }
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now.plus(self.rto));
        }
        Some(len)
    }

    /// A CLOSE or PING of a version 2 session.
    pub(super) fn emit_control_v2(&self, kind: Kind, out: &mut [u8]) -> Option<usize> {
        let f = if kind == Kind::Close {
            Frame::Close
        } else {
            Frame::Ping
        };
        emit(out, &f)
    }
}

fn emit(out: &mut [u8], f: &Frame<'_>) -> Option<usize> {
    wire::encode(f, out).ok()
}
