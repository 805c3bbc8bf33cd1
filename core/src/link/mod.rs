//! The link layer: a sans-IO state machine that turns frames into a reliable, bounded,
//! acknowledged stream of records in both directions (`PROTOCOL.md`, "Link layer").
//!
//! A [`Link`] never touches IO or a clock. Bytes and the time go in
//! ([`Link::handle_input`], [`Link::handle_timeout`]); frames, deadlines and events come out
//! ([`Link::poll_transmit`], [`Link::poll_timeout`], [`Link::poll_event`]). The
//! application sends with [`Link::send`] (which says [`SendError::WouldBlock`] when the
//! buffer is full), reads with [`Link::recv`] and acknowledges with [`Link::release`]: a
//! record is acknowledged to the sender only once it was released, so "acked" means "the
//! application has it". The same object serves a blocking UART loop, an `nb` poll loop, an
//! async task or a deterministic simulator (see [`crate::io`]).
//!
//! ```
//! use tether_core::link::{Config, Event, Instant, Link, LinkStorage, Role};
//!
//! let mut device = Link::new(Config::new(Role::Client, 1), LinkStorage::<4, 4, 128>::new()).unwrap();
//! let mut host = Link::new(Config::new(Role::Server, 2), LinkStorage::<4, 4, 128>::new()).unwrap();
//! let now = Instant::from_millis(0);
//! device.connect(now);
//! host.connect(now);
//! device.send(b"21.5").unwrap();
//!
//! // Shuttle bytes until both sides are quiet (a real program uses a UART or a socket).
//! let mut buf = [0u8; 256];
//! for _ in 0..10 {
//!     while let Some(n) = device.poll_transmit(now, &mut buf) { host.handle_input(now, &buf[..n]); }
//!     while let Some(n) = host.poll_transmit(now, &mut buf) { device.handle_input(now, &buf[..n]); }
//!     if let Some(record) = host.recv() {
//!         assert_eq!(record.payload, b"21.5");
//!         host.release(1); // written: now it may be acknowledged
//!     }
//! }
//! assert_eq!(device.unacked(), 0);
//! assert!(matches!(device.poll_event(), Some(Event::Connected { resumed: false })));
//! ```

#[cfg(feature = "auth")]
pub mod auth;
mod handshake;
mod seq;
mod storage;
#[cfg(feature = "v2")]
mod v2;

#[cfg(feature = "auth")]
pub use self::auth::Key;

pub use self::handshake::{Reject, RejectCode, PROTOCOL_VERSION, REJECT_TEXT_MAX};
use self::seq::ring_add;
pub use self::seq::{seq_diff, seq_lt, seq_lte, seq_lte_from};
pub use self::storage::{LinkStorage, Parts, Storage};

/// The highest protocol version this build of the core speaks: 2 with the `v2` feature
/// (`PROTOCOL.md` section 11), 1 without. [`Config::max_version`] chooses what a link offers.
#[cfg(feature = "v2")]
pub const MAX_PROTOCOL_VERSION: u8 = v2::MAX_VERSION;
/// The highest protocol version this build of the core speaks: 2 with the `v2` feature
/// (`PROTOCOL.md` section 11), 1 without.
#[cfg(not(feature = "v2"))]
pub const MAX_PROTOCOL_VERSION: u8 = 1;

use self::handshake::{Hello, Text, HELLO_LEN};
use crate::frame::{
    self, DecodeState, DecoderStats, Flags, FrameError, Header, Kind, MAX_PAYLOAD, OVERHEAD,
};

/// The smallest frame buffer a link accepts: every side must be able to receive a
/// REJECT with its longest reason (2 + 64 bytes of payload), so that a refusal can always
/// be read.
pub const MIN_FRAME: usize = OVERHEAD + 2 + REJECT_TEXT_MAX;

/// The session identity a HELLO payload announces, if it is a well-formed HELLO of this
/// protocol version. A server that keeps one [`Link`] per device session reads it from a new
/// connection's first frame to pick the link that resumes.
pub fn hello_session(payload: &[u8]) -> Option<u32> {
    Hello::parse(payload)
        .filter(|h| h.version == PROTOCOL_VERSION)
        .map(|h| h.session)
}

/// The key id an authenticated HELLO names (PROTOCOL.md 9.14), if the payload is a
/// well-formed HELLO of this protocol version with an authentication extension. A server
/// with a key per device reads it from a new connection's first frame to pick the key.
#[cfg(feature = "auth")]
pub fn hello_key_id(payload: &[u8]) -> Option<u32> {
    Hello::parse(payload)
        .filter(|h| h.version == PROTOCOL_VERSION)
        .and_then(|h| h.auth)
        .map(|a| a.key_id)
}

/// What a HELLO payload says (PROTOCOL.md 9.5.1), for a server that picks the session a new
/// connection belongs to before it hands the connection to a [`Link`] (9.4.2): decoded once,
/// with the core's own checks (this protocol version, the length, the reserved byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloView {
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
    /// The credit the sender grants.
    pub window: u16,
    /// The key id of an authenticated HELLO (9.14), if it has the extension.
    pub key_id: Option<u32>,
}

impl HelloView {
    /// `payload` as a HELLO of this protocol version, or `None` if it is not a well-formed
    /// one (another version, a wrong length, a session of 0).
    pub fn parse(payload: &[u8]) -> Option<HelloView> {
        let h =
            Hello::parse(payload).filter(|h| h.version == PROTOCOL_VERSION && h.session != 0)?;
        #[cfg(feature = "auth")]
        let key_id = h.auth.map(|a| a.key_id);
        #[cfg(not(feature = "auth"))]
        let key_id = None;
        Some(HelloView {
            session: h.session,
            peer_session: h.peer_session,
            tx_base: h.tx_base,
            rx_next: h.rx_next,
            rx_released: h.rx_released,
            max_payload: h.max_payload,
            max_send: h.max_send,
            window: h.window,
            key_id,
        })
    }
}

/// Encodes a REJECT frame with `code` and the reason `text` (cut to
/// [`REJECT_TEXT_MAX`] bytes at a character boundary) into `out`, which must hold
/// `frame::max_encoded_len(2 + REJECT_TEXT_MAX)` bytes: for a server that refuses a
/// connection before it gives it a link (a listener at its connection limit, or a device
/// without a key). Returns the frame's length.
pub fn reject_frame(code: RejectCode, text: &str, out: &mut [u8]) -> Option<usize> {
    let r = Reject::new(code, &[Text::Str(text)]);
    let h = Header {
        kind: Kind::Reject,
        ..Header::default()
    };
    emit(out, &h, r.emit())
}

/// A point in time, in milliseconds from an epoch the caller chooses (boot, say).
/// The link only compares instants and adds durations to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant(u64);

impl Instant {
    /// The instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn millis(self) -> u64 {
        self.0
    }

    /// `ms` milliseconds later (saturating).
    #[must_use]
    #[inline(never)]
    pub const fn plus(self, ms: u32) -> Self {
        Instant(self.0.saturating_add(ms as u64))
    }
}

/// Which side opens the session: the client sends HELLO, the server answers WELCOME. After
/// the handshake both sides are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Role {
    /// The side that connects (usually the device).
    Client,
    /// The side that accepts (usually the host).
    Server,
}

/// How a link behaves. Durations are in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// Client or server.
    pub role: Role,
    /// This side's session identity, never 0. A new value says "I restarted": the peer
    /// then starts afresh instead of resuming. Firmware takes it from a hardware random
    /// number generator or a boot counter kept in flash.
    pub session: u32,
    /// Records in flight before an acknowledgement, 1 (the tutorial's stop-and-wait) up to
    /// the transmit slots. 0 means "all the slots".
    pub window: u16,
    /// The largest record this side will send, announced in the handshake; 0 means the
    /// slot size. A host with large receive slots lowers it to what its devices accept.
    pub max_send: u16,
    /// The sequence number of this side's first record. Any value works (numbers wrap);
    /// tests start near `u32::MAX` to cross the wrap.
    pub first_seq: u32,
    /// First HELLO retry interval; doubles up to `rto_max_ms`.
    pub handshake_retry_ms: u32,
    /// First retransmission timeout; doubles on each expiry up to `rto_max_ms`.
    pub rto_initial_ms: u32,
    /// The largest retransmission timeout.
    pub rto_max_ms: u32,
    /// Send a PING when nothing was sent for this long.
    pub keepalive_ms: u32,
    /// Declare the peer dead when nothing was received for this long (also bounds the
    /// handshake). Must exceed `keepalive_ms` with margin for the peer's answer.
    pub dead_after_ms: u32,
    /// The peer session a new client names in its HELLO before its first handshake; 0 (the
    /// default) names none. Naming one says "my numbering continues": the peer's receive
    /// side resumes if it knew this session value and has every record from `first_seq`
    /// on (PROTOCOL.md 9.5.5), even if the session named is not its own. Only a side that
    /// kept its numbering may set it: a relay taking a device's records over after losing
    /// its own link state (`tether bridge` after a crash), never a device that restarted.
    pub continues_from: u32,
    /// The highest protocol version this side offers (a client, in its HELLO) or accepts (a
    /// server): 1, the default, or 2 (`PROTOCOL.md` 11.2). A side offering 2 talks version 1
    /// to a peer that does not, in either role. An authenticated link speaks version 1
    /// whatever this says.
    #[cfg(feature = "v2")]
    pub max_version: u8,
    /// Version 2's packing bound (`PROTOCOL.md` 11.8): while records are in flight, a DATA
    /// frame that is not full waits at most this long for more records; a lone record never
    /// waits. 0 sends at once.
    #[cfg(feature = "v2")]
    pub pack_delay_ms: u16,
}

impl Config {
    /// Defaults suited to a UART or a TCP/RFCOMM connection: HELLO every 250 ms, RTO from
    /// 200 ms to 4 s, PING after 1 s of silence, the peer dead after 5 s.
    pub const fn new(role: Role, session: u32) -> Config {
        Config {
            role,
            session,
            window: 0,
            max_send: 0,
            first_seq: 0,
            handshake_retry_ms: 250,
            rto_initial_ms: 200,
            rto_max_ms: 4_000,
            keepalive_ms: 1_000,
            dead_after_ms: 5_000,
            continues_from: 0,
            #[cfg(feature = "v2")]
            max_version: 1,
            #[cfg(feature = "v2")]
            pack_delay_ms: 2,
        }
    }
}

/// Why [`Link::new`] refused a configuration or storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// The session identity is 0.
    ZeroSession,
    /// The frame buffer is shorter than [`MIN_FRAME`] or longer than the largest frame.
    FrameSize(usize),
    /// The slot buffers do not match the slot counts times the frame size, or a count is
    /// 0 or above 32,768.
    Slots,
    /// The window exceeds the transmit slots.
    Window(u16),
    /// A timer is 0, or `dead_after_ms` does not exceed `keepalive_ms`.
    Timers,
}

/// Why [`Link::send`] refused a record. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SendError {
    /// Every transmit slot holds a record the peer has not acknowledged yet: try again
    /// after [`Event::Delivered`].
    WouldBlock,
    /// The record is longer than this side may send (`max`): its slots, or what the peer
    /// said it accepts.
    TooLong {
        /// The longest record accepted.
        max: usize,
    },
    /// The link is closing or closed.
    Closed,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::ZeroSession => f.write_str("the session identity is 0"),
            ConfigError::FrameSize(n) => write!(
                f,
                "a frame slot of {n} bytes is outside {MIN_FRAME} to {} bytes",
                frame::raw_len(MAX_PAYLOAD)
            ),
            ConfigError::Slots => f.write_str(
                "the slot buffers do not match the slot counts (1 to 32768) times the frame size",
            ),
            ConfigError::Window(w) => {
                write!(f, "a window of {w} records exceeds the transmit slots")
            }
            ConfigError::Timers => f.write_str(
                "a timer is 0, or the dead-peer time does not exceed the keepalive interval",
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SendError::WouldBlock => f.write_str("every transmit slot is in use"),
            SendError::TooLong { max } => {
                write!(
                    f,
                    "the record is longer than the {max} bytes this link may send"
                )
            }
            SendError::Closed => f.write_str("the link is closing or closed"),
        }
    }
}

impl core::error::Error for SendError {}

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phase {
    /// No connection: [`Link::connect`] starts one.
    Idle,
    /// HELLO sent (client) or awaited (server).
    Handshaking,
    /// Records flow.
    Established,
    /// [`Link::close`] was called: flushing, then CLOSE.
    Closing,
    /// Closed gracefully.
    Closed,
    /// The handshake was refused (by either side): see [`Link::reject`].
    Rejected,
    /// Nothing was heard from the peer for `dead_after_ms`: replace the connection and
    /// call [`Link::connect`]; the session resumes.
    Dead,
}

/// Something the application should know. Events are coalesced, never dropped: two
/// deliveries before a poll are reported as one [`Event::Delivered`] up to the later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event {
    /// The handshake completed ("Connection established"). `resumed` says the peer knew
    /// this session and nothing was replayed that it already had.
    Connected {
        /// Whether an existing session resumed.
        resumed: bool,
    },
    /// The peer has a new session identity: it restarted. Its records now start afresh.
    /// `in_doubt` of ours had been sent to the old peer without acknowledgement; they are
    /// sent again to the new one, so the old one may have seen them too.
    PeerRestarted {
        /// Records sent to the previous peer instance but not acknowledged.
        in_doubt: u32,
    },
    /// The peer released every record we sent with a sequence number below `up_to`.
    Delivered {
        /// The first sequence number not yet acknowledged.
        up_to: u32,
    },
    /// The handshake was refused, by the peer or by us; [`Link::reject`] has the reason.
    Rejected {
        /// `true` if we refused the peer, `false` if it refused us.
        by_us: bool,
    },
    /// Nothing was heard from the peer for `dead_after_ms`.
    PeerDead,
    /// The session was closed gracefully (by us or by the peer).
    Closed,
}

/// A received record, borrowed from the link until it is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Record<'a> {
    /// Its sequence number in the peer's numbering.
    pub seq: u32,
    /// Its bytes.
    pub payload: &'a [u8],
}

/// What a link has done. Counters wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkStats {
    /// Frames sent, all kinds.
    pub frames_out: u32,
    /// Bytes sent, encoded.
    pub bytes_out: u64,
    /// DATA frames sent, first transmissions and retransmissions.
    pub data_out: u32,
    /// DATA frames sent again.
    pub retransmissions: u32,
    /// Retransmission timer expiries.
    pub timeouts: u32,
    /// NACKs acted on (fast retransmissions).
    pub fast_retransmits: u32,
    /// Records received and accepted, once each.
    pub records_in: u32,
    /// Records received again (already had them): dropped.
    pub duplicates: u32,
    /// Records received after a gap: dropped (the sender goes back).
    pub out_of_order: u32,
    /// Records received beyond the credit granted: dropped.
    pub overruns: u32,
    /// Acknowledgements for records never sent: ignored.
    pub spurious_acks: u32,
    /// Valid frames that make no sense in the current phase: ignored.
    pub unexpected: u32,
    /// Handshakes completed.
    pub handshakes: u32,
    /// Handshakes that resumed a session.
    pub resumes: u32,
    /// Peer restarts detected.
    pub peer_restarts: u32,
    /// The most transmit slots ever in use.
    pub tx_high_water: u16,
    /// The most receive slots ever in use.
    pub rx_high_water: u16,
    /// Frames of an authenticated session dropped for a MAC that does not match (altered,
    /// forged, or from another connection).
    #[cfg(feature = "auth")]
    pub auth_failures: u32,
    /// Frames of an authenticated session with a good MAC dropped because their counter was
    /// not above the last one accepted (replayed), and HELLOs replayed into a handshake
    /// already confirmed.
    #[cfg(feature = "auth")]
    pub replays: u32,
    /// The frame decoder's counters: bytes and frames in, CRC and framing errors.
    pub decoder: DecoderStats,
}

/// One end of a Tether link over storage `S`. See the [module docs](self).
#[derive(Debug)]
pub struct Link<S> {
    storage: S,
    st: State,
}

impl<S: Storage> Link<S> {
    /// A link in [`Phase::Idle`], or why the configuration or storage cannot work.
    pub fn new(config: Config, mut storage: S) -> Result<Self, ConfigError> {
        let p = storage.parts();
        let slot = p.frame.len();
        if !(MIN_FRAME..=frame::raw_len(MAX_PAYLOAD)).contains(&slot) {
            return Err(ConfigError::FrameSize(slot));
        }
        let (ntx, nrx) = (p.tx_len.len(), p.rx_len.len());
        let counts_ok = (1..=32_768).contains(&ntx) && (1..=32_768).contains(&nrx);
        if !counts_ok || p.tx.len() != ntx * slot || p.rx.len() != nrx * slot {
            return Err(ConfigError::Slots);
        }
        if config.session == 0 {
            return Err(ConfigError::ZeroSession);
        }
        if usize::from(config.window) > ntx {
            return Err(ConfigError::Window(config.window));
        }
        let c = &config;
        if c.handshake_retry_ms == 0
            || c.rto_initial_ms == 0
            || c.rto_max_ms < c.rto_initial_ms
            || c.keepalive_ms == 0
            || c.dead_after_ms <= c.keepalive_ms
        {
            return Err(ConfigError::Timers);
        }
        let st = State::new(config, slot, ntx, nrx);
        Ok(Link { storage, st })
    }

    /// Turns authentication on with `key`, or off with `None` (PROTOCOL.md 9.14); it applies
    /// from the next [`Link::connect`]. Call it before connecting.
    ///
    /// `nonce_seed` gives the link its randomness: the link numbers its handshake nonces in
    /// the first 4 bytes, so the last 12 bytes must never repeat for the same key: take them
    /// from a hardware random number generator, or from a boot counter kept in flash and the
    /// chip's unique id. A client takes one nonce per connect, a server one per handshake.
    ///
    /// An authenticated session adds [`auth::TRAILER_LEN`] bytes to every frame, so the
    /// records this side accepts and sends are that much shorter than with the same storage
    /// unauthenticated; the frame size must leave at least 66 bytes for a record
    /// ([`ConfigError::FrameSize`] otherwise).
    #[cfg(feature = "auth")]
    pub fn set_auth(
        &mut self,
        key: Option<Key>,
        nonce_seed: [u8; auth::NONCE_LEN],
    ) -> Result<(), ConfigError> {
        if key.is_some() && self.st.slot < MIN_FRAME + auth::TRAILER_LEN {
            return Err(ConfigError::FrameSize(self.st.slot));
        }
        self.st.auth.set(key, nonce_seed);
        Ok(())
    }

    /// The id of the key this link authenticates with, if authentication is on.
    #[cfg(feature = "auth")]
    pub fn auth_key_id(&self) -> Option<u32> {
        self.st.auth.key.as_ref().map(Key::id)
    }

    // ---- getters -------------------------------------------------------------------

    /// Where the link is.
    pub fn phase(&self) -> Phase {
        self.st.phase
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.st.cfg
    }

    /// What the link has done.
    pub fn stats(&self) -> LinkStats {
        let mut s = self.st.stats;
        s.decoder = self.st.dec.stats;
        s
    }

    /// The protocol version of the session: that of the last handshake completed, 1 before
    /// any (`PROTOCOL.md` 11.2).
    pub fn protocol_version(&self) -> u8 {
        self.st.protocol_version()
    }

    /// The smoothed round trip of a version 2 session in milliseconds, once a sample was
    /// taken on this connection (`PROTOCOL.md` 11.7.5); `None` before, and in version 1.
    #[cfg(feature = "v2")]
    pub fn round_trip_ms(&self) -> Option<u32> {
        self.st.srtt_ms()
    }

    /// The current retransmission timeout in milliseconds: measured from round trips in a
    /// version 2 session, `rto_initial_ms` doubled on each expiry in version 1.
    pub fn rto_ms(&self) -> u32 {
        self.st.rto
    }

    /// The peer's session identity, once a handshake has told it.
    pub fn peer_session(&self) -> Option<u32> {
        (self.st.peer.session != 0).then_some(self.st.peer.session)
    }

    /// Whether the storage holds nothing the link still needs: no record queued or
    /// unacknowledged, none received and not released (nor, in version 2, held out of
    /// order), no frame half-decoded. A host that keeps many mostly idle links may then give
    /// the buffers back and lend zeroed ones of the same shape at the next call (see
    /// [`Link::storage_mut`]); what the link needs is all in its state.
    pub fn storage_idle(&self) -> bool {
        #[cfg(feature = "v2")]
        let ooo = self.st.v2.ooo != 0;
        #[cfg(not(feature = "v2"))]
        let ooo = false;
        self.unacked() == 0 && self.st.held == 0 && !ooo && !self.st.dec.in_frame()
    }

    /// The storage, for its owner (to give idle buffers back, say: see
    /// [`Link::storage_idle`]). Its shape must not change.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The reason of the last refused handshake.
    pub fn reject(&self) -> Option<&Reject> {
        self.st.reject.as_ref()
    }

    /// Records sent or queued and not yet acknowledged by the peer.
    pub fn unacked(&self) -> u32 {
        self.st.tx_next.wrapping_sub(self.st.tx_base)
    }

    /// Whether [`Link::send`] would accept a record now (a slot is free).
    pub fn can_send(&self) -> bool {
        (self.unacked() as usize) < self.st.ntx && self.st.accepting()
    }

    /// The largest record [`Link::send`] accepts: this side's slot size, or less if the
    /// peer said it accepts less.
    pub fn max_send(&self) -> usize {
        self.st.max_send()
    }

    /// The sequence number the next [`Link::send`] gets.
    pub fn next_seq(&self) -> u32 {
        self.st.tx_next
    }

    /// How long the buffer given to [`Link::poll_transmit`] must be: one encoded frame of
    /// the largest size this link sends.
    pub fn transmit_len(&self) -> usize {
        frame::max_encoded_len(self.st.slot - OVERHEAD)
    }

    /// The oldest received record that was not released yet.
    pub fn recv(&mut self) -> Option<Record<'_>> {
        self.received().next()
    }

    /// Every received record not released yet, oldest first.
    pub fn received(&mut self) -> impl Iterator<Item = Record<'_>> + '_ {
        let st = &self.st;
        let p = self.storage.parts();
        let (rx, rx_len) = (&*p.rx, &*p.rx_len);
        (0..st.held).map(move |k| {
            let slot = ring_add(st.rx_head, k, st.nrx);
            let len = usize::from(rx_len[slot]);
            Record {
                seq: st.held_seq(k),
                payload: &rx[slot * st.slot..slot * st.slot + len],
            }
        })
    }

    // ---- inputs --------------------------------------------------------------------

    /// A new byte stream to the peer is in place (the first, or one replacing a broken
    /// one, or a new one after a graceful close): start or resume the session over it. A client sends HELLO; a server awaits
    /// one. Records queued or unacknowledged are kept and resent as the peer needs them.
    pub fn connect(&mut self, now: Instant) {
        self.st.connect(now);
    }

    /// Bytes from the peer, in any chunking.
    pub fn handle_input(&mut self, now: Instant, mut bytes: &[u8]) {
        let Parts {
            rx,
            rx_len,
            tx_len,
            frame,
            ..
        } = self.storage.parts();
        #[cfg(feature = "v2")]
        while let Some(result) = self.st.dec.decode_any(frame, &mut bytes) {
            match result {
                Ok(frame::AnyFrame::V1(f)) => self
                    .st
                    .on_frame(now, &f.header, f.payload, rx, rx_len, tx_len),
                Ok(frame::AnyFrame::V2(f)) => self.st.on_frame_v2(now, &f, rx, rx_len),
                Err(FrameError::TooLong) if self.st.phase == Phase::Established => {
                    // As below: counted by the decoder; the sender times out on it.
                }
                Err(_) => {}
            }
        }
        #[cfg(not(feature = "v2"))]
        while let Some(result) = self.st.dec.decode(frame, &mut bytes) {
            match result {
                Ok(f) => self
                    .st
                    .on_frame(now, &f.header, f.payload, rx, rx_len, tx_len),
                Err(FrameError::TooLong) if self.st.phase == Phase::Established => {
                    // A record larger than we accept: the peer ignored our HELLO. Counted
                    // by the decoder; the sender will time out on it and show in its stats.
                }
                Err(_) => {}
            }
        }
    }

    /// Lets timers fire: call it when [`Link::poll_timeout`]'s instant has passed (calling
    /// it more often is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.st.on_timeout(now);
    }

    // ---- mutators ------------------------------------------------------------------

    /// Queues a record; returns its sequence number.
    pub fn send(&mut self, payload: &[u8]) -> Result<u32, SendError> {
        let Parts { tx, tx_len, .. } = self.storage.parts();
        self.st.send(payload, tx, tx_len)
    }

    /// Releases the `count` oldest received records: the application has them (written,
    /// acted on), so they may be acknowledged. Returns how many were released.
    pub fn release(&mut self, count: usize) -> usize {
        self.st.release(count)
    }

    /// Limits the credit granted to the peer (`Some(0)` stops it; `None` lifts the limit):
    /// a bridge whose upstream is down stops its devices this way, without dropping.
    pub fn set_credit_limit(&mut self, limit: Option<u16>) {
        self.st.credit_limit = limit;
        self.st.ack_pending = true;
    }

    /// Flushes what was sent, then closes the session with CLOSE. [`Link::send`] refuses
    /// new records from now on.
    pub fn close(&mut self) {
        self.st.close();
    }

    // ---- outputs -------------------------------------------------------------------

    /// The next frame to send, encoded into `out` (at least [`Link::transmit_len`] bytes);
    /// its length. Call until `None`; frames may be gathered into one write.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        if out.len() < self.transmit_len() {
            return None;
        }
        let Parts { tx, tx_len, .. } = self.storage.parts();
        self.st.poll_transmit(now, out, tx, tx_len)
    }

    /// When [`Link::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.st.poll_timeout()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.st.poll_event()
    }
}

/// What this side knows of the peer.
#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    session: u32,
    max_payload: u16,
}

/// Pending event flags; see [`State::poll_event`].
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    connected: Option<bool>,
    restarted: Option<u32>,
    rejected: Option<bool>,
    dead: bool,
    closed: bool,
}

/// Everything but the buffers. Non-generic, so one copy serves every storage type.
#[derive(Debug)]
struct State {
    cfg: Config,
    phase: Phase,
    closing: bool,
    dec: DecodeState,
    slot: usize,
    ntx: usize,
    nrx: usize,
    window: u32,
    peer: Peer,
    // Sending: [tx_base, tx_next) is queued; [tx_base, snd_max) was sent at least once;
    // [tx_base, rcv_known) the peer has received; snd_next is the next to (re)send;
    // sequence numbers below peer_limit may be sent (credit).
    tx_base: u32,
    tx_head: usize,
    tx_next: u32,
    snd_next: u32,
    snd_max: u32,
    rcv_known: u32,
    peer_limit: u32,
    rto: u32,
    rto_deadline: Option<Instant>,
    delivered_reported: u32,
    // Receiving: [rx_released, rx_next) are held in the ring after `held_old` records of
    // a previous peer session numbered from `old_base`.
    rx_next: u32,
    rx_released: u32,
    rx_head: usize,
    held: usize,
    held_old: usize,
    old_base: u32,
    credit_limit: Option<u16>,
    ack_pending: bool,
    nack_pending: bool,
    nack_sent_for: Option<u32>,
    /// The out-of-order frame that triggered the last NACK.
    nack_trigger: u32,
    // Control frames.
    hello_pending: bool,
    welcome_pending: bool,
    reject_pending: bool,
    ping_pending: bool,
    close_pending: bool,
    close_reply_pending: bool,
    /// Closed, and the peer repeated its CLOSE (our reply was lost).
    close_echo_pending: bool,
    /// Closed by sending the reply to the peer's CLOSE (so a repeated CLOSE means our
    /// reply was lost).
    closed_by_reply: bool,
    hs_deadline: Option<Instant>,
    hs_interval: u32,
    close_deadline: Option<Instant>,
    last_rx: Instant,
    last_tx: Instant,
    reject: Option<Reject>,
    events: Pending,
    stats: LinkStats,
    #[cfg(feature = "auth")]
    auth: auth::Auth,
    #[cfg(feature = "v2")]
    v2: v2::V2,
}

impl State {
    fn new(cfg: Config, slot: usize, ntx: usize, nrx: usize) -> State {
        let window = if cfg.window == 0 {
            ntx as u32
        } else {
            u32::from(cfg.window)
        };
        State {
            cfg,
            phase: Phase::Idle,
            closing: false,
            dec: DecodeState::new(),
            slot,
            ntx,
            nrx,
            window,
            peer: Peer::default(),
            tx_base: cfg.first_seq,
            tx_head: 0,
            tx_next: cfg.first_seq,
            snd_next: cfg.first_seq,
            snd_max: cfg.first_seq,
            rcv_known: cfg.first_seq,
            peer_limit: cfg.first_seq,
            rto: cfg.rto_initial_ms,
            rto_deadline: None,
            delivered_reported: cfg.first_seq,
            rx_next: 0,
            rx_released: 0,
            rx_head: 0,
            held: 0,
            held_old: 0,
            old_base: 0,
            credit_limit: None,
            ack_pending: false,
            nack_pending: false,
            nack_sent_for: None,
            nack_trigger: 0,
            hello_pending: false,
            welcome_pending: false,
            reject_pending: false,
            ping_pending: false,
            close_pending: false,
            close_reply_pending: false,
            close_echo_pending: false,
            closed_by_reply: false,
            hs_deadline: None,
            hs_interval: cfg.handshake_retry_ms,
            close_deadline: None,
            last_rx: Instant(0),
            last_tx: Instant(0),
            reject: None,
            events: Pending::default(),
            stats: LinkStats::default(),
            #[cfg(feature = "auth")]
            auth: auth::Auth::new(),
            #[cfg(feature = "v2")]
            v2: v2::V2::new(),
        }
    }

    fn protocol_version(&self) -> u8 {
        #[cfg(feature = "v2")]
        return self.v2.version;
        #[cfg(not(feature = "v2"))]
        return 1;
    }

    /// Whether the session is a version 2 one (always false without the feature).
    fn v2_session(&self) -> bool {
        #[cfg(feature = "v2")]
        return self.is_v2();
        #[cfg(not(feature = "v2"))]
        return false;
    }

    /// The longest record this side accepts: the frame less header, CRC and, in an
    /// authenticated session, the trailer.
    fn payload_cap(&self) -> usize {
        self.slot - OVERHEAD - self.trailer_len()
    }

    fn trailer_len(&self) -> usize {
        #[cfg(feature = "auth")]
        if self.auth.key.is_some() {
            return auth::TRAILER_LEN;
        }
        0
    }

    /// The largest record this side sends, as announced.
    #[inline(never)]
    fn own_max_send(&self) -> usize {
        match self.cfg.max_send {
            0 => self.payload_cap(),
            n => usize::from(n).min(self.payload_cap()),
        }
    }

    /// The longest record queued and not yet acknowledged (0 if none).
    fn longest_unacked(&self, tx_len: &[u16]) -> usize {
        let mut longest = 0;
        let mut slot = self.tx_head;
        for _ in 0..self.tx_next.wrapping_sub(self.tx_base) {
            longest = longest.max(tx_len.get(slot).copied().unwrap_or(0));
            slot = if slot + 1 == self.ntx { 0 } else { slot + 1 };
        }
        usize::from(longest)
    }

    fn max_send(&self) -> usize {
        let own = self.own_max_send();
        if self.peer.session != 0 {
            own.min(usize::from(self.peer.max_payload))
        } else {
            own
        }
    }

    fn accepting(&self) -> bool {
        !self.closing && !matches!(self.phase, Phase::Closed | Phase::Rejected)
    }

    fn connected(&self) -> bool {
        matches!(self.phase, Phase::Established | Phase::Closing)
    }

    /// The sequence number of the k-th held record.
    fn held_seq(&self, k: usize) -> u32 {
        if k < self.held_old {
            self.old_base.wrapping_add(k as u32)
        } else {
            self.rx_released.wrapping_add((k - self.held_old) as u32)
        }
    }

    /// Credit granted: how far beyond `rx_released` the peer may send. None while records
    /// of a previous peer session are still held, so the two numberings never mix.
    #[inline(never)]
    fn credit(&self) -> u16 {
        if self.held_old > 0 {
            return 0;
        }
        let room = self.nrx.min(usize::from(u16::MAX)) as u16;
        self.credit_limit.map_or(room, |l| l.min(room))
    }

    fn our_hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            session: self.cfg.session,
            peer_session: if self.peer.session != 0 {
                self.peer.session
            } else {
                self.cfg.continues_from
            },
            tx_base: self.tx_base,
            rx_next: self.rx_next,
            rx_released: self.rx_released,
            max_payload: self.payload_cap() as u16,
            // A server's WELCOME follows the HELLO it adopted: the smaller of its own
            // max_send and the client's max_payload (PROTOCOL.md 9.5.1), so that a host
            // with large buffers takes a device with small ones.
            max_send: match self.cfg.role {
                Role::Client => self.own_max_send(),
                Role::Server => self.max_send(),
            } as u16,
            // The credit granted from `rx_released` on, as in every acknowledgement.
            window: self.credit(),
            #[cfg(feature = "auth")]
            auth: None,
        }
    }

    // ---- connection ----------------------------------------------------------------

    fn connect(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            // A closed session opens again (the same device, a new run): records queued
            // since are sent; `close` applies again only if called again.
            self.closing = false;
        }
        self.close_deadline = None;
        self.dec.reset();
        self.phase = Phase::Handshaking;
        self.last_rx = now;
        self.last_tx = now;
        self.rto = self.cfg.rto_initial_ms;
        self.rto_deadline = None;
        self.ack_pending = false;
        self.nack_pending = false;
        self.ping_pending = false;
        self.welcome_pending = false;
        #[cfg(feature = "v2")]
        self.v2_connect();
        self.reject_pending = false;
        // An owed CLOSE reply is kept: it is sent once the session resumes and is flushed.
        self.close_pending = false;
        self.close_echo_pending = false;
        self.hs_interval = self.cfg.handshake_retry_ms;
        #[cfg(feature = "auth")]
        self.auth.connect(self.cfg.role == Role::Client);
        match self.cfg.role {
            Role::Client => {
                self.hello_pending = true;
                self.hs_deadline = Some(now.plus(self.hs_interval));
            }
            Role::Server => {
                self.hello_pending = false;
                self.hs_deadline = None;
            }
        }
    }

    /// Why `peer` cannot be talked to, if it cannot. `payload` is the HELLO or WELCOME;
    /// `tx_len` the lengths of the records queued.
    fn refuse(&self, peer: &Hello, payload: &[u8], tx_len: &[u16]) -> Option<Reject> {
        if peer.version != PROTOCOL_VERSION {
            return Some(Reject::new(
                RejectCode::Version,
                &[
                    Text::Str("protocol version "),
                    Text::Num(u32::from(peer.version)),
                    Text::Str(" is not supported; this side speaks "),
                    Text::Num(u32::from(PROTOCOL_VERSION)),
                ],
            ));
        }
        #[cfg(feature = "auth")]
        if let Some(r) = self.refuse_auth(peer, payload) {
            return Some(r);
        }
        #[cfg(not(feature = "auth"))]
        let _ = payload;
        // A client announced its max_send in its HELLO and holds to it. A server announces
        // no more than the client accepts (`our_hello`), so only a record it already holds
        // can be too long for this client (PROTOCOL.md 9.5.2).
        let sends = match self.cfg.role {
            Role::Client => self.own_max_send(),
            Role::Server => self.longest_unacked(tx_len),
        };
        if sends > usize::from(peer.max_payload) {
            return Some(Reject::new(
                RejectCode::Capacity,
                &[
                    Text::Str("this side sends up to "),
                    Text::Num(sends as u32),
                    Text::Str(" bytes; accepted: "),
                    Text::Num(u32::from(peer.max_payload)),
                ],
            ));
        }
        let ours = self.payload_cap();
        if usize::from(peer.max_send) > ours {
            return Some(Reject::new(
                RejectCode::Capacity,
                &[
                    Text::Str("records up to "),
                    Text::Num(u32::from(peer.max_send)),
                    Text::Str(" bytes; accepted: "),
                    Text::Num(ours as u32),
                ],
            ));
        }
        None
    }

    /// Adopts the peer's view after a HELLO (server) or WELCOME (client) and completes the
    /// handshake.
    fn adopt(&mut self, now: Instant, peer: &Hello) {
        let knows_us = peer.peer_session == self.cfg.session;
        let same_peer = self.peer.session == peer.session;
        // Receive side: resume only if the peer is the one we knew, kept its numbering (it
        // names a session: us, or one it had before, as a relay that took over a device's
        // numbering), and still holds everything from our next expected record on.
        // Otherwise start from the peer's numbering: a restarted peer (new session, or the
        // same session value reused by a rebooted device, which then names none) must never
        // get a stale acknowledgement. In an authenticated link a HELLO may be a replay
        // (9.14.6): for the same peer instance the receive side never goes back, whether or
        // not the HELLO names us.
        let kept_numbering = knows_us || peer.peer_session != 0;
        let resume_rx = same_peer
            && (kept_numbering || self.trailer_len() != 0)
            && seq_lte(peer.tx_base, self.rx_next);
        if !resume_rx {
            // Nothing lost and nothing to renumber: e.g. a HELLO retried before its WELCOME.
            let benign = same_peer && self.rx_next == peer.tx_base && self.held == 0;
            if self.peer.session != 0 && !benign {
                self.stats.peer_restarts = self.stats.peer_restarts.wrapping_add(1);
                warn!(
                    "tether: peer restarted ({=u32:x} -> {=u32:x})",
                    self.peer.session, peer.session
                );
                self.events.restarted = Some(self.snd_max.wrapping_sub(self.tx_base));
                if self.held > 0 {
                    // Keep what the old peer sent and we hold: the application reads it
                    // first. (Only one old range: credit is 0 while it is held.)
                    if self.held_old == 0 {
                        self.old_base = self.rx_released;
                    }
                    self.held_old = self.held;
                }
            }
            self.rx_next = peer.tx_base;
            self.rx_released = peer.tx_base;
        }
        self.nack_sent_for = None;
        // Send side: what the peer has, if it knows this session; otherwise it adopts our
        // tx_base and everything unacknowledged goes again.
        let mut rcv = self.tx_base;
        let mut rel = self.tx_base;
        // tx_base <= rx_released <= rx_next <= snd_max, counted from tx_base.
        if knows_us
            && seq_lte_from(self.tx_base, peer.rx_released, peer.rx_next)
            && seq_lte_from(self.tx_base, peer.rx_next, self.snd_max)
        {
            rel = peer.rx_released;
            rcv = peer.rx_next;
        }
        self.free_tx(rel);
        self.rcv_known = rcv;
        self.snd_next = rcv;
        #[cfg(feature = "v2")]
        self.v2_adopted();
        self.peer_limit = rel.wrapping_add(u32::from(peer.window));
        self.peer = Peer {
            session: peer.session,
            max_payload: peer.max_payload,
        };
        let resumed = resume_rx;
        self.stats.handshakes = self.stats.handshakes.wrapping_add(1);
        if resumed {
            self.stats.resumes = self.stats.resumes.wrapping_add(1);
        }
        self.events.connected = Some(resumed);
        info!(
            "tether: session {=u32:x} with peer {=u32:x} established (resumed: {=bool}, protocol version {=u8})",
            self.cfg.session,
            peer.session,
            resumed,
            self.protocol_version()
        );
        self.phase = if self.closing {
            Phase::Closing
        } else {
            Phase::Established
        };
        self.hello_pending = false;
        self.hs_deadline = None;
        self.last_rx = now;
        self.ack_pending = true;
        #[cfg(feature = "v2")]
        self.v2.reset_pending();
        self.rto_deadline = None;
        self.arm_rto(now, true);
    }

    fn refused(&mut self, reject: Reject, by_us: bool) {
        warn!(
            "tether: handshake refused (by us: {=bool}): {}",
            by_us, reject
        );
        self.reject = Some(reject);
        self.reject_pending = by_us;
        self.phase = Phase::Rejected;
        self.hello_pending = false;
        self.welcome_pending = false;
        self.hs_deadline = None;
        self.rto_deadline = None;
        self.events.rejected = Some(by_us);
    }

    // ---- input ---------------------------------------------------------------------

    fn on_frame(
        &mut self,
        now: Instant,
        h: &Header,
        payload: &[u8],
        rx: &mut [u8],
        rx_len: &mut [u16],
        tx_len: &[u16],
    ) {
        #[cfg(feature = "auth")]
        let Some(payload) = self.open(h, payload) else {
            return;
        };
        if self.phase == Phase::Closed && h.kind == Kind::Close && !self.v2_session() {
            // We closed by replying, and the peer asks again: our reply was lost, answer
            // again. A side that closed on receiving the reply never answers, so two
            // closed sides cannot keep answering each other.
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
        match h.kind {
            Kind::Hello => self.on_hello(now, h, payload, tx_len),
            Kind::Welcome => self.on_welcome(now, h, payload, tx_len),
            // A version 2 session takes only version 2 session frames (PROTOCOL.md 11.2).
            Kind::Data | Kind::Ack | Kind::Ping | Kind::Close if self.v2_session() => {
                self.unexpected()
            }
            #[cfg(feature = "auth")]
            Kind::Reject if self.auth_holds() => {
                // The peer proved the key on this connection, so it refuses nothing now:
                // the REJECT is forged.
                self.stats.auth_failures = self.stats.auth_failures.wrapping_add(1);
            }
            Kind::Reject => {
                // Handshaking: the peer refused our HELLO. Established (server): the client
                // refused our WELCOME.
                if matches!(
                    self.phase,
                    Phase::Handshaking | Phase::Established | Phase::Closing
                ) {
                    let r = Reject::parse(payload).unwrap_or_else(|| {
                        Reject::new(RejectCode::Malformed, &[Text::Str("(no reason given)")])
                    });
                    self.refused(r, false);
                } else {
                    self.unexpected();
                }
            }
            Kind::Data if self.connected() => {
                if h.flags.contains(Flags::ACK) {
                    let rcv = if seq_lt(self.rcv_known, h.ack) {
                        h.ack
                    } else {
                        self.rcv_known
                    };
                    self.on_ack(now, rcv, h.ack, h.credit, false);
                }
                self.on_data(h.seq, payload, rx, rx_len);
            }
            Kind::Ack if self.connected() && h.flags.contains(Flags::ACK) => {
                self.on_ack(now, h.seq, h.ack, h.credit, h.flags.contains(Flags::NACK));
            }
            Kind::Ping if self.connected() => self.ack_pending = true,
            Kind::Close if self.connected() => self.on_close(),
            _ => self.unexpected(),
        }
    }

    /// A CLOSE in Established or Closing (PROTOCOL.md 9.11).
    fn on_close(&mut self) {
        if self.close_deadline.is_some() {
            // The reply to our CLOSE.
            self.finish_close();
        } else {
            // The peer is done: flush ours, then reply. Nothing new is accepted.
            self.closing = true;
            self.phase = Phase::Closing;
            self.close_reply_pending = true;
        }
    }

    /// An authenticated session whose peer proved the connection key (a frame under it
    /// arrived intact): only frames under that key, and a HELLO that passes authentication,
    /// affect it; a REJECT or a refused HELLO is unauthenticated and ignored.
    #[cfg(feature = "auth")]
    fn auth_holds(&self) -> bool {
        self.auth.key.is_some() && self.auth.confirmed && self.connected()
    }

    /// The direction byte of the frames this side sends.
    #[cfg(feature = "auth")]
    fn own_dir(&self) -> u8 {
        match self.cfg.role {
            Role::Client => auth::DIR_CLIENT,
            Role::Server => auth::DIR_SERVER,
        }
    }

    /// In an authenticated link, checks the trailer of a DATA, ACK, PING or CLOSE frame and
    /// returns the payload without it; `None` (counted) drops the frame, which then does
    /// not even prove the peer alive. Other frames, and every frame of a link without a
    /// key, pass unchanged.
    #[cfg(feature = "auth")]
    fn open<'p>(&mut self, h: &Header, payload: &'p [u8]) -> Option<&'p [u8]> {
        if self.auth.key.is_none() || matches!(h.kind, Kind::Hello | Kind::Welcome | Kind::Reject) {
            return Some(payload);
        }
        let peer_dir = match self.cfg.role {
            Role::Client => auth::DIR_SERVER,
            Role::Server => auth::DIR_CLIENT,
        };
        let head = h.to_bytes(payload.len())?;
        match self.auth.open(peer_dir, &head, payload) {
            Ok(p) => Some(p),
            Err(auth::Refused::Mac) => {
                self.stats.auth_failures = self.stats.auth_failures.wrapping_add(1);
                debug!("tether: frame with a bad MAC dropped");
                None
            }
            Err(auth::Refused::Replay) => {
                self.stats.replays = self.stats.replays.wrapping_add(1);
                debug!("tether: replayed frame dropped");
                None
            }
        }
    }

    /// Why an authenticated (or unauthenticated) HELLO or WELCOME is refused, if it is: an
    /// authentication mismatch, another key id, or a tag that the key did not make.
    #[cfg(feature = "auth")]
    fn refuse_auth(&self, peer: &Hello, payload: &[u8]) -> Option<Reject> {
        let server = self.cfg.role == Role::Server;
        let (key, ext) = match (&self.auth.key, &peer.auth) {
            (None, None) => return None,
            (None, Some(_)) => {
                return Some(Reject::new(
                    RejectCode::AuthUnsupported,
                    &[Text::Str("authentication offered; this side has no key")],
                ))
            }
            (Some(_), None) => {
                let text = if server {
                    "authentication required: this side takes keyed devices only"
                } else {
                    "the server did not authenticate; this side requires it"
                };
                return Some(Reject::new(RejectCode::AuthRequired, &[Text::Str(text)]));
            }
            (Some(key), Some(ext)) => (key, ext),
        };
        if ext.key_id != key.id() {
            return Some(Reject::new(
                RejectCode::Auth,
                &[Text::Str("no key for device "), Text::Hex(ext.key_id)],
            ));
        }
        let proved = if server {
            key.verifies_hello(payload)
        } else {
            self.auth.check_welcome(payload).is_some()
        };
        if proved {
            return None;
        }
        let who: &[Text<'_>] = if server {
            &[
                Text::Str("authentication failed for device "),
                Text::Hex(ext.key_id),
                Text::Str(": wrong key"),
            ]
        } else {
            &[Text::Str("the server failed authentication: wrong key")]
        };
        Some(Reject::new(RejectCode::Auth, who))
    }

    /// A server's side of an authenticated handshake, after the HELLO was checked: a new
    /// connection key for a new client nonce, the same one for a retransmitted HELLO.
    /// `false`: the HELLO is a replay into a handshake the client already confirmed (it
    /// has sent a frame under the key since), and is ignored.
    #[cfg(feature = "auth")]
    fn server_keys(&mut self, nonce_c: [u8; auth::NONCE_LEN]) -> bool {
        if self.auth.conn.is_some() && self.auth.peer == nonce_c {
            if self.auth.confirmed {
                self.stats.replays = self.stats.replays.wrapping_add(1);
                return false;
            }
            return true;
        }
        let nonce_s = self.auth.next_nonce();
        let conn = self
            .auth
            .key
            .as_ref()
            .and_then(|k| k.conn(&nonce_c, &nonce_s));
        self.auth.own = nonce_s;
        self.auth.peer = nonce_c;
        self.auth.rekey(conn);
        true
    }

    fn unexpected(&mut self) {
        self.stats.unexpected = self.stats.unexpected.wrapping_add(1);
    }

    fn on_hello(&mut self, now: Instant, h: &Header, payload: &[u8], tx_len: &[u16]) {
        let acceptable = self.cfg.role == Role::Server
            && matches!(
                self.phase,
                Phase::Handshaking | Phase::Established | Phase::Closing | Phase::Rejected
            );
        if !acceptable {
            self.unexpected();
            return;
        }
        if let Some(peer) = self.acceptable_peer(payload, "malformed HELLO", tx_len) {
            #[cfg(feature = "auth")]
            if let Some(ext) = peer.auth {
                if !self.server_keys(ext.nonce) {
                    return;
                }
            }
            #[cfg(feature = "v2")]
            self.take_hello_version(h);
            #[cfg(not(feature = "v2"))]
            let _ = h;
            self.adopt(now, &peer);
            // The last HELLO decides: a REJECT still due answers one this HELLO supersedes
            // (PROTOCOL.md 9.4), and would refuse a client that is acceptable now.
            self.reject_pending = false;
            self.welcome_pending = true;
        }
    }

    fn on_welcome(&mut self, now: Instant, h: &Header, payload: &[u8], tx_len: &[u16]) {
        if self.cfg.role != Role::Client || self.phase != Phase::Handshaking {
            // A late duplicate WELCOME after the handshake is harmless.
            self.unexpected();
            return;
        }
        if let Some(peer) = self.acceptable_peer(payload, "malformed WELCOME", tx_len) {
            #[cfg(feature = "v2")]
            if let Err(chosen) = self.take_welcome_version(h) {
                let r = Reject::new(
                    RejectCode::Version,
                    &[
                        Text::Str("the server chose protocol version "),
                        Text::Num(u32::from(chosen)),
                        Text::Str("; this side offers up to "),
                        Text::Num(u32::from(self.offered_version())),
                    ],
                );
                self.refused(r, true);
                return;
            }
            #[cfg(not(feature = "v2"))]
            let _ = h;
            #[cfg(feature = "auth")]
            if self.auth.key.is_some() {
                // Checked in `acceptable_peer`: the server proved the key for our nonce.
                let conn = self.auth.check_welcome(payload);
                self.auth.rekey(conn);
                self.auth.confirmed = true;
            }
            self.adopt(now, &peer);
        }
    }

    /// Parses a HELLO or WELCOME and checks it; refuses the peer (REJECT) if it is
    /// malformed or cannot be served.
    fn acceptable_peer(
        &mut self,
        payload: &[u8],
        malformed: &'static str,
        tx_len: &[u16],
    ) -> Option<Hello> {
        let reject = match Hello::parse(payload) {
            None => Reject::new(RejectCode::Malformed, &[Text::Str(malformed)]),
            Some(peer) => match self.refuse(&peer, payload, tx_len) {
                None => return Some(peer),
                Some(r) => r,
            },
        };
        #[cfg(feature = "auth")]
        if self.auth_holds() {
            // Unauthenticated bytes do not end an authenticated session.
            self.stats.auth_failures = self.stats.auth_failures.wrapping_add(1);
            return None;
        }
        self.refused(reject, true);
        None
    }

    fn on_data(&mut self, seq: u32, payload: &[u8], rx: &mut [u8], rx_len: &mut [u16]) {
        if seq_lt(seq, self.rx_next) {
            self.stats.duplicates = self.stats.duplicates.wrapping_add(1);
            self.ack_pending = true;
            return;
        }
        if seq != self.rx_next {
            self.stats.out_of_order = self.stats.out_of_order.wrapping_add(1);
            // One NACK per gap and retransmission round: the first frame past the gap, and
            // again when a frame at or before the one that triggered the last NACK comes
            // back (the sender went back, and the record we lack was lost again).
            let first = self.nack_sent_for != Some(self.rx_next);
            if first || seq_lte(seq, self.nack_trigger) {
                self.nack_pending = true;
                self.nack_trigger = seq;
            }
            return;
        }
        let in_credit = seq_lt(seq, self.rx_released.wrapping_add(u32::from(self.credit())));
        if !in_credit || self.held >= self.nrx {
            self.stats.overruns = self.stats.overruns.wrapping_add(1);
            self.ack_pending = true;
            return;
        }
        let slot = ring_add(self.rx_head, self.held, self.nrx);
        // The decoder's buffer is one slot long, so the payload fits a slot.
        let start = slot * self.slot;
        rx[start..start + payload.len()].copy_from_slice(payload);
        rx_len[slot] = payload.len() as u16;
        self.held += 1;
        self.rx_next = self.rx_next.wrapping_add(1);
        self.stats.records_in = self.stats.records_in.wrapping_add(1);
        self.stats.rx_high_water = self.stats.rx_high_water.max(self.held as u16);
        self.ack_pending = true;
    }

    fn on_ack(&mut self, now: Instant, rcv: u32, rel: u32, credit: u16, nack: bool) {
        // Valid: tx_base <= rel <= rcv <= snd_max, allowing a stale rel below tx_base.
        let rel = if seq_lt(rel, self.tx_base) {
            self.tx_base
        } else {
            rel
        };
        if !seq_lte_from(self.tx_base, rel, rcv) || !seq_lte_from(self.tx_base, rcv, self.snd_max) {
            self.stats.spurious_acks = self.stats.spurious_acks.wrapping_add(1);
            return;
        }
        // Progress is judged before freeing, which moves `rcv_known` up to `rel`.
        let progress = seq_lt(self.rcv_known, rcv);
        self.free_tx(rel);
        // Frames arrive in order (TCP, RFCOMM, a UART), so the latest grant is the truth,
        // even when it shrinks.
        self.peer_limit = rel.wrapping_add(u32::from(credit));
        if progress {
            self.rcv_known = rcv;
            self.rto = self.cfg.rto_initial_ms;
        }
        if seq_lt(self.snd_next, self.rcv_known) {
            self.snd_next = self.rcv_known;
        }
        // The receiver sends one NACK per retransmission round, so each one is acted on.
        if nack && seq_lt(rcv, self.snd_next) {
            self.snd_next = rcv;
            self.stats.fast_retransmits = self.stats.fast_retransmits.wrapping_add(1);
        }
        self.arm_rto(now, progress);
    }

    /// Frees transmit slots below `rel`.
    fn free_tx(&mut self, rel: u32) {
        let n = seq_diff(rel, self.tx_base).max(0) as usize;
        if n == 0 {
            return;
        }
        self.tx_head = ring_add(self.tx_head, n, self.ntx);
        self.tx_base = rel;
        for seq in [&mut self.rcv_known, &mut self.snd_next] {
            if seq_lt(*seq, rel) {
                *seq = rel;
            }
        }
    }

    /// (Re)arms the retransmission timer: running while something sent is unreceived, or
    /// while records wait for credit (a PING then asks for a fresh grant).
    /// `progress`: the peer just received something new, so the clock restarts for what
    /// is still out.
    fn arm_rto(&mut self, now: Instant, progress: bool) {
        let unreceived = self.rcv_known != self.snd_max;
        // Records waiting for credit or for the window (all received, none released yet):
        // if the acknowledgement that would free them is lost, only a probe recovers.
        // The next record to send for the first time: version 2 sends new records from
        // snd_max, and snd_next is its retransmission cursor (PROTOCOL.md 11.7.4 step 7).
        let next = if self.v2_session() {
            self.snd_max
        } else {
            self.snd_next
        };
        let blocked =
            !seq_lt(next, self.peer_limit) || !seq_lt(next, self.tx_base.wrapping_add(self.window));
        let starved = next != self.tx_next && blocked;
        if unreceived || starved {
            if self.rto_deadline.is_none() || progress {
                self.rto_deadline = Some(now.plus(self.rto));
            }
        } else {
            self.rto_deadline = None;
        }
    }

    // ---- timers --------------------------------------------------------------------

    fn on_timeout(&mut self, now: Instant) {
        let alive = matches!(
            self.phase,
            Phase::Handshaking | Phase::Established | Phase::Closing
        );
        if !alive {
            return;
        }
        if now >= self.last_rx.plus(self.cfg.dead_after_ms) {
            self.phase = Phase::Dead;
            self.events.dead = true;
            warn!(
                "tether: peer silent for {=u32} ms: dead",
                self.cfg.dead_after_ms
            );
            self.rto_deadline = None;
            self.hs_deadline = None;
            return;
        }
        if let Some(t) = self.hs_deadline {
            if now >= t && self.phase == Phase::Handshaking {
                self.hello_pending = true;
                self.hs_interval = self.hs_interval.saturating_mul(2).min(self.cfg.rto_max_ms);
                self.hs_deadline = Some(now.plus(self.hs_interval));
            }
        }
        if !self.connected() {
            return;
        }
        #[cfg(feature = "v2")]
        self.on_timeout_v2(now);
        if let Some(t) = self.rto_deadline {
            if now >= t {
                self.stats.timeouts = self.stats.timeouts.wrapping_add(1);
                debug!(
                    "tether: retransmission timeout, back to {=u32} (rto {=u32} ms)",
                    self.rcv_known, self.rto
                );
                if self.rcv_known != self.snd_max {
                    self.snd_next = self.rcv_known; // go back N
                    #[cfg(feature = "v2")]
                    self.v2_round(self.snd_max);
                } else {
                    self.ping_pending = true; // probe a closed credit window
                }
                self.rto = self.rto.saturating_mul(2).min(self.cfg.rto_max_ms);
                self.rto_deadline = Some(now.plus(self.rto));
            }
        }
        if let Some(t) = self.close_deadline {
            if now >= t {
                self.close_pending = true;
                self.close_deadline = Some(now.plus(self.rto));
            }
        }
        if now >= self.last_tx.plus(self.cfg.keepalive_ms) {
            self.ping_pending = true;
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let alive = matches!(
            self.phase,
            Phase::Handshaking | Phase::Established | Phase::Closing
        );
        if !alive {
            return None;
        }
        let mut t = self.last_rx.plus(self.cfg.dead_after_ms);
        for d in [self.hs_deadline, self.rto_deadline, self.close_deadline]
            .into_iter()
            .flatten()
        {
            t = t.min(d);
        }
        // Once a PING is pending, the keepalive has fired; its next deadline starts from
        // the next frame sent.
        if self.connected() && !self.ping_pending {
            t = t.min(self.last_tx.plus(self.cfg.keepalive_ms));
        }
        #[cfg(feature = "v2")]
        if let Some(d) = self.deadline_v2() {
            t = t.min(d);
        }
        Some(t)
    }

    // ---- application ---------------------------------------------------------------

    fn send(
        &mut self,
        payload: &[u8],
        tx: &mut [u8],
        tx_len: &mut [u16],
    ) -> Result<u32, SendError> {
        if !self.accepting() {
            return Err(SendError::Closed);
        }
        let max = self.max_send();
        if payload.len() > max {
            return Err(SendError::TooLong { max });
        }
        let queued = self.tx_next.wrapping_sub(self.tx_base) as usize;
        if queued >= self.ntx {
            return Err(SendError::WouldBlock);
        }
        let slot = ring_add(self.tx_head, queued, self.ntx);
        let start = slot * self.slot;
        tx[start..start + payload.len()].copy_from_slice(payload);
        tx_len[slot] = payload.len() as u16;
        let seq = self.tx_next;
        self.tx_next = self.tx_next.wrapping_add(1);
        self.stats.tx_high_water = self.stats.tx_high_water.max((queued + 1) as u16);
        Ok(seq)
    }

    fn release(&mut self, count: usize) -> usize {
        let n = count.min(self.held);
        for _ in 0..n {
            if self.held_old > 0 {
                self.held_old -= 1;
                self.old_base = self.old_base.wrapping_add(1);
            } else {
                self.rx_released = self.rx_released.wrapping_add(1);
            }
            self.rx_head = ring_add(self.rx_head, 1, self.nrx);
            self.held -= 1;
        }
        if n > 0 {
            #[cfg(feature = "v2")]
            if self.is_v2() {
                self.released_v2();
                return n;
            }
            self.ack_pending = true;
        }
        n
    }

    fn close(&mut self) {
        if !self.accepting() {
            return;
        }
        self.closing = true;
        if self.phase == Phase::Established {
            self.phase = Phase::Closing;
        }
    }

    fn finish_close(&mut self) {
        self.closed_by_reply = false;
        self.phase = Phase::Closed;
        self.close_deadline = None;
        self.rto_deadline = None;
        self.events.closed = true;
    }

    // ---- output --------------------------------------------------------------------

    fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut [u8],
        tx: &[u8],
        tx_len: &[u16],
    ) -> Option<usize> {
        let n = self.next_frame(now, out, tx, tx_len)?;
        self.last_tx = now;
        self.stats.frames_out = self.stats.frames_out.wrapping_add(1);
        self.stats.bytes_out = self.stats.bytes_out.wrapping_add(n as u64);
        Some(n)
    }

    fn next_frame(
        &mut self,
        now: Instant,
        out: &mut [u8],
        tx: &[u8],
        tx_len: &[u16],
    ) -> Option<usize> {
        if self.reject_pending {
            self.reject_pending = false;
            let payload = self.reject.as_ref()?.emit();
            return emit(
                out,
                &Header {
                    kind: Kind::Reject,
                    ..Header::default()
                },
                payload,
            );
        }
        if self.phase == Phase::Handshaking && self.hello_pending {
            self.hello_pending = false;
            return self.emit_hello(Kind::Hello, out);
        }
        if self.close_echo_pending {
            self.close_echo_pending = false;
            return self.emit_control(Kind::Close, out);
        }
        if !self.connected() {
            return None;
        }
        if self.welcome_pending {
            self.welcome_pending = false;
            return self.emit_hello(Kind::Welcome, out);
        }
        #[cfg(feature = "v2")]
        if self.is_v2() {
            if let Some(n) = self.next_data_v2(now, out, tx, tx_len) {
                return Some(n);
            }
        } else if let Some(n) = self.next_data_v1(now, out, tx, tx_len) {
            return Some(n);
        }
        #[cfg(not(feature = "v2"))]
        if let Some(n) = self.next_data_v1(now, out, tx, tx_len) {
            return Some(n);
        }
        if self.close_reply_pending && self.tx_base == self.tx_next {
            self.close_reply_pending = false;
            let n = self.emit_control(Kind::Close, out)?;
            self.finish_close();
            self.closed_by_reply = true;
            return Some(n);
        }
        if self.phase == Phase::Closing && !self.close_reply_pending && self.tx_base == self.tx_next
        {
            let due = self.close_pending || self.close_deadline.is_none();
            if due {
                self.close_pending = false;
                self.close_deadline = Some(now.plus(self.rto));
                return self.emit_control(Kind::Close, out);
            }
        }
        if self.ping_pending {
            self.ping_pending = false;
            return self.emit_control(Kind::Ping, out);
        }
        None
    }

    /// Whether a DATA frame may carry record `snd_next` now (PROTOCOL.md 9.9).
    fn data_ready(&self) -> bool {
        seq_lt(self.snd_next, self.tx_next)
            && seq_lt(self.snd_next, self.peer_limit)
            && seq_lt(self.snd_next, self.tx_base.wrapping_add(self.window))
    }

    /// The next acknowledgement or DATA frame of a version 1 session, if one is due.
    fn next_data_v1(
        &mut self,
        now: Instant,
        out: &mut [u8],
        tx: &[u8],
        tx_len: &[u16],
    ) -> Option<usize> {
        let data_ready = self.data_ready();
        // An ACK goes alone when it must carry the received boundary (records held
        // unreleased) or a NACK; otherwise it rides on the next DATA frame.
        let piggyback = data_ready && !self.nack_pending && self.rx_next == self.rx_released;
        if (self.ack_pending || self.nack_pending) && !piggyback {
            let mut flags = Flags::ACK;
            if self.nack_pending {
                flags = flags.with(Flags::NACK);
                self.nack_sent_for = Some(self.rx_next);
            }
            self.ack_pending = false;
            self.nack_pending = false;
            let h = Header {
                kind: Kind::Ack,
                flags,
                seq: self.rx_next,
                ack: self.rx_released,
                credit: self.credit(),
            };
            return self.emit_session(out, &h, &[]);
        }
        if !data_ready {
            return None;
        }
        let seq = self.snd_next;
        let k = seq.wrapping_sub(self.tx_base) as usize;
        let slot = ring_add(self.tx_head, k, self.ntx);
        let start = slot * self.slot;
        let payload = &tx[start..start + usize::from(tx_len[slot])];
        let mut h = Header {
            kind: Kind::Data,
            flags: Flags::NONE,
            seq,
            ack: 0,
            credit: 0,
        };
        if self.ack_pending {
            self.ack_pending = false;
            h.flags = Flags::ACK;
            h.ack = self.rx_released;
            h.credit = self.credit();
        }
        let n = self.emit_session(out, &h, payload)?;
        self.sent_data(now, seq, 1);
        Some(n)
    }

    /// Bookkeeping after a DATA frame carried `count` records from `seq`.
    fn sent_data(&mut self, now: Instant, seq: u32, count: u32) {
        self.snd_next = seq.wrapping_add(count);
        if seq_lt(seq, self.snd_max) {
            // Records below snd_max were sent before; a frame of several may reach past it.
            let again = self.snd_max.wrapping_sub(seq).min(count);
            self.stats.retransmissions = self.stats.retransmissions.wrapping_add(again);
        }
        if seq_lt(self.snd_max, self.snd_next) {
            self.snd_max = self.snd_next;
        }
        self.stats.data_out = self.stats.data_out.wrapping_add(1);
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now.plus(self.rto));
        }
    }

    /// A CLOSE (`seq` = `tx_next`, PROTOCOL.md 9.6) or a PING, in the session's version.
    fn emit_control(&mut self, kind: Kind, out: &mut [u8]) -> Option<usize> {
        #[cfg(feature = "v2")]
        if self.is_v2() {
            return self.emit_control_v2(kind, out);
        }
        let seq = if kind == Kind::Close { self.tx_next } else { 0 };
        let h = Header {
            kind,
            seq,
            ..Header::default()
        };
        self.emit_session(out, &h, &[])
    }

    /// A HELLO or WELCOME (`kind`) carrying this side's view of the session, with the
    /// authentication extension in an authenticated link.
    fn emit_hello(&self, kind: Kind, out: &mut [u8]) -> Option<usize> {
        let payload: [u8; HELLO_LEN] = self.our_hello().emit();
        #[cfg(feature = "v2")]
        let (seq, credit) = self.hello_header(kind);
        #[cfg(not(feature = "v2"))]
        let (seq, credit) = (0, 0);
        let h = Header {
            kind,
            seq,
            credit,
            ..Header::default()
        };
        #[cfg(feature = "auth")]
        if self.auth.key.is_some() {
            let mut p = [0u8; auth::AUTH_HELLO_LEN];
            p[..HELLO_LEN].copy_from_slice(&payload);
            self.auth.fill_ext(kind == Kind::Hello, &mut p)?;
            return emit(out, &h, &p);
        }
        emit(out, &h, &payload)
    }

    /// A DATA, ACK, PING or CLOSE frame; in an authenticated link, with its trailer.
    fn emit_session(&mut self, out: &mut [u8], h: &Header, payload: &[u8]) -> Option<usize> {
        #[cfg(feature = "auth")]
        if self.auth.key.is_some() {
            let head = h.to_bytes(payload.len() + auth::TRAILER_LEN)?;
            let trailer = self.auth.seal(self.own_dir(), &head, payload)?;
            return frame::encode_parts(h, payload, &trailer, out).ok();
        }
        emit(out, h, payload)
    }

    fn poll_event(&mut self) -> Option<Event> {
        let e = &mut self.events;
        if let Some(in_doubt) = e.restarted.take() {
            return Some(Event::PeerRestarted { in_doubt });
        }
        if let Some(resumed) = e.connected.take() {
            return Some(Event::Connected { resumed });
        }
        if self.delivered_reported != self.tx_base {
            self.delivered_reported = self.tx_base;
            return Some(Event::Delivered {
                up_to: self.tx_base,
            });
        }
        if let Some(by_us) = e.rejected.take() {
            return Some(Event::Rejected { by_us });
        }
        if core::mem::take(&mut e.dead) {
            return Some(Event::PeerDead);
        }
        if core::mem::take(&mut e.closed) {
            return Some(Event::Closed);
        }
        None
    }
}

/// Encodes one frame; `out` was checked to hold the largest.
fn emit(out: &mut [u8], h: &Header, payload: &[u8]) -> Option<usize> {
    frame::encode(h, payload, out).ok()
}
