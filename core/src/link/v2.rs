//! The link layer's part of protocol version 2 (`PROTOCOL.md` section 11): the negotiation
//! in the handshake's header fields, and the session frames of a version 2 session.
//!
//! The state machine of `super` stays the one state machine: the handshake, phases, timers,
//! credit and release are shared, and what differs by version is how frames are read and
//! built, in this module.

use super::{seq_lt, Instant, Phase, State};
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
    // Sending (11.8): since when a frame that is not full waits for more records.
    pack_since: Option<Instant>,
}

impl V2 {
    pub(super) const fn new() -> V2 {
        V2 {
            version: 1,
            peer_standing: 0,
            lazy_since: None,
            lazy_frames: 0,
            eager: false,
            pack_since: None,
        }
    }

    /// Forgets what is due and waiting, at a connect (9.4) or a handshake (9.5.5).
    pub(super) fn reset_pending(&mut self) {
        self.lazy_since = None;
        self.lazy_frames = 0;
        self.eager = false;
        self.pack_since = None;
    }
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

    /// This side's acknowledgement as it stands (11.7.2).
    fn ack_fields(&self) -> Ack<'static> {
        let standing = self.standing_credit();
        let credit = self.credit();
        Ack {
            released: Short::of(self.rx_released, standing > 255),
            received: self.rx_next.wrapping_sub(self.rx_released) as u16,
            credit: (credit != standing).then_some(credit),
            sack: &[],
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

    fn on_ack_v2(&mut self, now: Instant, a: &Ack<'_>) {
        let rel = wire::expand_released(self.tx_base, a.released);
        let rcv = rel.wrapping_add(u32::from(a.received));
        let credit = a.credit.unwrap_or(self.v2.peer_standing);
        self.on_ack(now, rcv, rel, credit, false);
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

    /// One record of a DATA frame (11.7.1); whether it was the next one, held.
    fn on_record_v2(
        &mut self,
        seq: u32,
        payload: &[u8],
        rx: &mut [u8],
        rx_len: &mut [u16],
    ) -> bool {
        if seq_lt(seq, self.rx_next) {
            self.stats.duplicates = self.stats.duplicates.wrapping_add(1);
            self.ack_pending = true;
            return false;
        }
        if seq != self.rx_next {
            self.stats.out_of_order = self.stats.out_of_order.wrapping_add(1);
            self.ack_pending = true;
            return false;
        }
        let in_credit = seq_lt(seq, self.rx_released.wrapping_add(u32::from(self.credit())));
        if !in_credit || self.held >= self.nrx || payload.len() > self.slot {
            self.stats.overruns = self.stats.overruns.wrapping_add(1);
            self.ack_pending = true;
            return false;
        }
        let slot = (self.rx_head + self.held) % self.nrx;
        let start = slot * self.slot;
        rx[start..start + payload.len()].copy_from_slice(payload);
        rx_len[slot] = payload.len() as u16;
        self.held += 1;
        self.rx_next = self.rx_next.wrapping_add(1);
        self.stats.records_in = self.stats.records_in.wrapping_add(1);
        self.stats.rx_high_water = self.stats.rx_high_water.max(self.held as u16);
        true
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
        let sent = if self.data_ready() {
            self.data_frame_v2(now, out, tx, tx_len, ack_due)
        } else {
            None
        };
        if sent.is_some() {
            return sent;
        }
        if self.ack_pending {
            let n = emit(out, &Frame::Ack(self.ack_fields()))?;
            self.sent_ack_v2();
            return Some(n);
        }
        None
    }

    /// The largest raw frame this side sends: the peer's M, and no more than its own.
    fn frame_cap(&self) -> usize {
        let peer = usize::from(self.peer.max_payload) + crate::frame::OVERHEAD;
        peer.min(self.slot)
    }

    /// The length of own record `seq` (queued).
    fn record_len(&self, seq: u32, tx_len: &[u16]) -> usize {
        let k = seq.wrapping_sub(self.tx_base) as usize;
        usize::from(tx_len[(self.tx_head + k) % self.ntx])
    }

    /// The bytes of own record `seq` (queued).
    fn record<'t>(&self, seq: u32, tx: &'t [u8], tx_len: &[u16]) -> &'t [u8] {
        let k = seq.wrapping_sub(self.tx_base) as usize;
        let slot = (self.tx_head + k) % self.ntx;
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

    /// A DATA frame from `snd_next`, carrying the acknowledgement if `ack_due`; `None` if
    /// the records wait to be packed (11.8), or an acknowledgement must go alone first.
    fn data_frame_v2(
        &mut self,
        now: Instant,
        out: &mut [u8],
        tx: &[u8],
        tx_len: &[u16],
        ack_due: bool,
    ) -> Option<usize> {
        let first = self.snd_next;
        let again = seq_lt(first, self.snd_max);
        // data_ready: `first` is below each limit.
        let window_end = self.tx_base.wrapping_add(self.window);
        let avail = self
            .tx_next
            .wrapping_sub(first)
            .min(self.peer_limit.wrapping_sub(first))
            .min(window_end.wrapping_sub(first));
        let ack = ack_due.then(|| self.ack_fields());
        // After this frame every record sent lies below `snd_max` (at most `first + avail`)
        // and the receiver's `rx_next` at or above `tx_base`: one byte of `seq` tells them
        // apart within 128 (11.6).
        let end_max = first.wrapping_add(avail);
        let reach = if seq_lt(end_max, self.snd_max) {
            self.snd_max
        } else {
            end_max
        };
        let seq = Short::of(first, reach.wrapping_sub(self.tx_base) > 128);
        let head = wire::data_head_len(ack.as_ref(), seq);
        let cap = self.frame_cap();
        let budget = cap.saturating_sub(head + 4);
        let pack = self.plan(first, avail, budget, tx_len);
        if head + pack.section + wire::check_len(head + pack.section) > cap {
            // A record as long as the frame allows, and an acknowledgement with it: the
            // acknowledgement goes alone first.
            return None;
        }
        let in_flight = seq_lt(self.rcv_known, self.snd_max);
        if !again && !pack.full && in_flight && self.cfg.pack_delay_ms > 0 {
            let since = *self.v2.pack_since.get_or_insert(now);
            if now < since.plus(u32::from(self.cfg.pack_delay_ms)) {
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
        self.v2.pack_since = None;
        self.sent_data(now, first, pack.count);
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
