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

/// What a link knows of version 2 beyond version 1's state.
#[derive(Debug, Clone, Copy)]
pub(super) struct V2 {
    /// The version of the session: that of the last handshake completed (1 before any).
    pub(super) version: u8,
    /// The peer's standing credit (11.2), from the HELLO or WELCOME adopted.
    pub(super) peer_standing: u16,
}

impl V2 {
    pub(super) const fn new() -> V2 {
        V2 {
            version: 1,
            peer_standing: 0,
        }
    }
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
                self.on_data_v2(data, rx, rx_len);
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

    fn on_data_v2(&mut self, data: &Data<'_>, rx: &mut [u8], rx_len: &mut [u16]) {
        let mut seq = wire::expand_seq(self.rx_next, data.seq);
        for record in data.records() {
            self.on_data(seq, record, rx, rx_len);
            seq = seq.wrapping_add(1);
        }
        // No NACK in version 2: a record after a gap makes an acknowledgement due.
        if core::mem::take(&mut self.nack_pending) {
            self.ack_pending = true;
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
        let data_ready = self.data_ready();
        if self.ack_pending && !data_ready {
            self.ack_pending = false;
            return emit(out, &Frame::Ack(self.ack_fields()));
        }
        if !data_ready {
            return None;
        }
        let seq = self.snd_next;
        let k = seq.wrapping_sub(self.tx_base) as usize;
        let slot = (self.tx_head + k) % self.ntx;
        let start = slot * self.slot;
        let record = &tx[start..start + usize::from(tx_len[slot])];
        let ack = core::mem::take(&mut self.ack_pending).then(|| self.ack_fields());
        let after = if seq_lt(seq, self.snd_max) {
            self.snd_max
        } else {
            seq.wrapping_add(1)
        };
        let wide = after.wrapping_sub(self.tx_base) > 128;
        let frame = Frame::Data {
            ack,
            data: Data {
                seq: Short::of(seq, wide),
                immediate: false,
                shape: wire::Shape::Single,
                section: record,
            },
        };
        let n = emit(out, &frame)?;
        self.sent_data(now, seq, 1);
        Some(n)
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
