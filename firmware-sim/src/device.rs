//! A simulated device, written the way firmware is written: `tether-core`, `embedded-io`,
//! no std, no allocation, no clock (the time is passed in), no panics on anything the host
//! sends.
//!
//! A [`Device`] owns a [`Link`] in [`Role::Client`]. It samples a simulated sensor
//! ([`Sensor`]) every `period_ms` and streams each reading as a typed record
//! ([`RecordWriter`]), up to an optional limit. It obeys the host's text commands
//! ([`Command`]): `rate <ms>`, `output on|off` and `status`; anything else gets a typed
//! error reply. A command is released, and so acknowledged to the host, only once it was
//! acted on (its reply, if any, queued).
//!
//! # Records it sends
//!
//! | record | fields |
//! |---|---|
//! | reading | `u32` counter (0, 1, …), `u32` device time in ms (wraps), `f32` temperature in °C, `u16` pressure in hPa, `bool` output |
//! | status reply | `str` `"status"`, `u32` period in ms, `bool` output, `u32` readings queued so far, `u32` link retransmissions |
//! | error reply | `str` `"error"`, `str` the command (trimmed, at most [`ERROR_TEXT_MAX`] bytes), `str` the reason ([`CommandError::reason`]) |
//!
//! A record whose first field is a string is a reply; its first field names it. Every
//! record fits the smallest payload any link accepts, so a peer can never refuse one as
//! too long.
//!
//! # Records of declared kinds
//!
//! With [`DeviceConfig::declare_kinds`], the device describes its records instead
//! (`PROTOCOL.md` 10.5 to 10.7): its first three records declare the kinds [`ENV`],
//! [`STATUS`] and [`ERROR`] (their declarations built at compile time, in flash), and each
//! reading or reply is then a record of its kind: the same values in the same order,
//! without the reply's leading name (the kind says what it is) and without tags. A host
//! writes them under named columns (`counter`, `time` in ms, `temperature` in °C, …).
//!
//! # Driving it
//!
//! Sans-IO, like the [`Link`] it wraps: bytes and the time go in, bytes and a deadline
//! come out, the caller does the IO.
//!
//! - [`Device::transport_up`] when a (new) byte stream to the host is in place;
//!   [`Device::transport_down`] when it broke. [`Device::needs_transport`] says the device
//!   wants one (at start, and after the peer went silent): firmware reopens its socket,
//!   then calls `transport_up`, and the session resumes where it broke.
//! - [`Device::handle_input`] with the bytes read; [`Device::poll`] when
//!   [`Device::poll_timeout`]'s instant has passed (more often is harmless);
//!   [`Device::poll_transmit`] until `None`, writing each frame.
//! - Or [`Device::drive`] does one round of that over a blocking `embedded-io` transport
//!   (a socket: any error is a broken connection), and [`Device::drive_nb`] over a
//!   non-blocking one (a UART, through `tether_core::io::nb`); `firmware-sim/qemu` runs the
//!   latter on a Cortex-M3 under QEMU.
//!
//! ```
//! use tether_core::link::{Config, Instant, Link, LinkStorage, Role};
//! use tether_firmware_sim::device::{Device, DeviceConfig};
//!
//! let mut device = Device::new(
//!     DeviceConfig { period_ms: 100, ..DeviceConfig::new(0xD1, 7) },
//!     LinkStorage::<4, 4, 128>::new(),
//! )?;
//! let mut host = Link::new(Config::new(Role::Server, 0x57), LinkStorage::<4, 4, 128>::new()).unwrap();
//! let now = Instant::from_millis(0);
//! device.transport_up(now)?;
//! host.connect(now);
//! host.send(b"status").unwrap();
//!
//! let mut buf = [0u8; 256];
//! for _ in 0..4 {
//!     device.poll(now);
//!     while let Some(n) = device.poll_transmit(now, &mut buf) { host.handle_input(now, &buf[..n]); }
//!     while let Some(n) = host.poll_transmit(now, &mut buf) { device.handle_input(now, &buf[..n]); }
//!     let n = host.received().count();
//!     host.release(n);
//! }
//! assert_eq!(device.stats().readings, 1); // the first reading goes at once
//! assert_eq!(device.stats().commands_applied, 1);
//! assert_eq!(host.unacked(), 0); // the command was acted on, so acknowledged
//! # Ok::<(), tether_firmware_sim::device::DeviceError>(())
//! ```

use heapless::String;
use tether_core::io::nb;
use tether_core::link::{ConfigError, Event, Instant, Link, Phase, Role, SendError, Storage};
use tether_core::record::kind::{FieldDef, Kind, KindWriter, Type};
use tether_core::record::{Full, RecordWriter, TYPED};

use crate::rng::XorShift;

/// The shortest reading period a device accepts, in milliseconds.
pub const MIN_PERIOD_MS: u32 = 1;
/// The longest reading period a device accepts, in milliseconds (one hour).
pub const MAX_PERIOD_MS: u32 = 3_600_000;
/// The most bytes of a refused command that its error reply repeats.
pub const ERROR_TEXT_MAX: usize = 32;

/// The largest record a device sends (an error reply): it fits the smallest payload any
/// link accepts (a REJECT's, 66 bytes), so no peer can refuse it as too long.
const RECORD_MAX: usize = 64;
/// The kind of a reading, with [`DeviceConfig::declare_kinds`]: `counter`, `time` (ms,
/// the device's clock, wrapping), `temperature` (°C), `pressure` (hPa), `output`.
pub const ENV: Kind<'static> = Kind {
    id: 0,
    name: "env",
    fields: &[
        FieldDef::new("counter", Type::U32),
        FieldDef::new("time", Type::U32).unit("ms"),
        FieldDef::new("temperature", Type::F32).unit("°C"),
        FieldDef::new("pressure", Type::U16).unit("hPa"),
        FieldDef::new("output", Type::Bool),
    ],
};
/// The kind of a status reply: `period` (ms), `output`, `readings` queued so far, the link's
/// `retransmissions`.
pub const STATUS: Kind<'static> = Kind {
    id: 1,
    name: "status",
    fields: &[
        FieldDef::new("period", Type::U32).unit("ms"),
        FieldDef::new("output", Type::Bool),
        FieldDef::new("readings", Type::U32),
        FieldDef::new("retransmissions", Type::U32),
    ],
};
/// The kind of an error reply: the `command` refused (trimmed, at most [`ERROR_TEXT_MAX`]
/// bytes) and the `reason` ([`CommandError::reason`]).
pub const ERROR: Kind<'static> = Kind {
    id: 2,
    name: "error",
    fields: &[
        FieldDef::new("command", Type::Str),
        FieldDef::new("reason", Type::Str),
    ],
};
// Encoded and checked by the compiler; each fits the device's largest record.
const ENV_DECLARATION: [u8; ENV.declaration_len()] = ENV.declaration();
const STATUS_DECLARATION: [u8; STATUS.declaration_len()] = STATUS.declaration();
const ERROR_DECLARATION: [u8; ERROR.declaration_len()] = ERROR.declaration();
/// What the device declares first, in order.
const DECLARATIONS: [&[u8]; 3] = [&ENV_DECLARATION, &STATUS_DECLARATION, &ERROR_DECLARATION];
const _: () = assert!(
    ENV_DECLARATION.len() <= RECORD_MAX
        && STATUS_DECLARATION.len() <= RECORD_MAX
        && ERROR_DECLARATION.len() <= RECORD_MAX
);

/// How many reads [`Device::drive`] does at most per call, so that a flooding peer cannot
/// keep the loop from sending.
const DRIVE_READS: usize = 16;

/// How a device behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The link's configuration; its role must be [`Role::Client`].
    pub link: tether_core::link::Config,
    /// Milliseconds between readings, [`MIN_PERIOD_MS`] to [`MAX_PERIOD_MS`]; the host
    /// changes it with `rate <ms>`.
    pub period_ms: u32,
    /// Stop streaming after this many readings (commands are still obeyed); `None`
    /// streams for ever.
    pub record_limit: Option<u32>,
    /// Seeds the simulated sensor: two devices with the same seed read the same values.
    pub sensor_seed: u64,
    /// Declare the record kinds [`ENV`], [`STATUS`] and [`ERROR`] as the session's first
    /// records and send readings and replies as records of them (`PROTOCOL.md` 10.5), rather
    /// than as self-describing fields (10.1). Off by default.
    pub declare_kinds: bool,
}

impl DeviceConfig {
    /// A client link with session identity `session` (never 0) and the core's default
    /// timers, a reading a second, no limit, the sensor seeded with `sensor_seed`.
    pub const fn new(session: u32, sensor_seed: u64) -> Self {
        DeviceConfig {
            link: tether_core::link::Config::new(Role::Client, session),
            period_ms: 1_000,
            record_limit: None,
            sensor_seed,
            declare_kinds: false,
        }
    }
}

/// Why a device cannot be built or connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// The link refused its configuration or storage.
    Link(ConfigError),
    /// The link's role is not [`Role::Client`]: a device connects, it does not accept.
    NotClient,
    /// The period is outside [`MIN_PERIOD_MS`]`..=`[`MAX_PERIOD_MS`].
    Period(u32),
    /// The link may send records of at most this many bytes (`Config::max_send`), fewer
    /// than the device's largest record (64 bytes).
    MaxSend(usize),
    /// The session was closed (by the host or by [`Device::close`]); a closed link cannot
    /// connect again.
    Closed,
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceError::Link(e) => write!(f, "link configuration refused: {e:?}"),
            DeviceError::NotClient => f.write_str("a device's link must have the client role"),
            DeviceError::Period(ms) => write!(
                f,
                "period {ms} ms is outside {MIN_PERIOD_MS}..={MAX_PERIOD_MS} ms"
            ),
            DeviceError::MaxSend(max) => write!(
                f,
                "the link sends records of at most {max} bytes; the device needs {RECORD_MAX}"
            ),
            DeviceError::Closed => f.write_str("the session is closed and cannot connect again"),
        }
    }
}

impl core::error::Error for DeviceError {}

impl From<ConfigError> for DeviceError {
    fn from(e: ConfigError) -> Self {
        DeviceError::Link(e)
    }
}

/// One reading of the simulated sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Degrees Celsius, in steps of 0.01 between 15 and 30.
    pub temperature: f32,
    /// Hectopascals, between 950 and 1050.
    pub pressure: u16,
}

/// A deterministic simulated sensor: a seeded random walk of temperature and pressure. The
/// k-th sample of `Sensor::new(seed)` is the same on every target, so a test can check
/// every reading a device sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sensor {
    rng: XorShift,
    centi_celsius: i32,
    pressure: u16,
}

impl Sensor {
    /// A sensor whose readings are drawn from `seed`.
    pub const fn new(seed: u64) -> Self {
        Sensor {
            rng: XorShift::new(seed),
            centi_celsius: 2_150,
            pressure: 1_013,
        }
    }

    /// The next reading.
    pub fn sample(&mut self) -> Sample {
        let step = self.rng.below(11) as i32 - 5; // ±0.05 °C
        self.centi_celsius = (self.centi_celsius + step).clamp(1_500, 3_000);
        self.pressure = match self.rng.below(3) {
            0 => self.pressure.saturating_sub(1),
            1 => self.pressure,
            _ => self.pressure.saturating_add(1),
        }
        .clamp(950, 1_050);
        Sample {
            // Exact integer to float, one correctly rounded division: the same everywhere.
            temperature: self.centi_celsius as f32 / 100.0,
            pressure: self.pressure,
        }
    }
}

/// A command from the host, parsed from a text record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `rate <ms>`: a reading every `ms` milliseconds from now on.
    Rate(u32),
    /// `output on` or `output off`.
    Output(bool),
    /// `status`: reply with a status record.
    Status,
}

/// Why a record is not a command the device obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// A typed record, not a text line.
    NotText,
    /// Not UTF-8.
    NotUtf8,
    /// Nothing but white space.
    Empty,
    /// No such command.
    Unknown,
    /// The command needs an argument.
    MissingArgument,
    /// The argument is not one the command takes (`rate` outside
    /// [`MIN_PERIOD_MS`]`..=`[`MAX_PERIOD_MS`], `output` neither `on` nor `off`).
    BadArgument,
    /// More arguments than the command takes.
    ExtraArgument,
}

impl CommandError {
    /// The reason as the error reply states it.
    pub const fn reason(self) -> &'static str {
        match self {
            CommandError::NotText => "not a text command",
            CommandError::NotUtf8 => "not UTF-8",
            CommandError::Empty => "empty command",
            CommandError::Unknown => "unknown command",
            CommandError::MissingArgument => "missing argument",
            CommandError::BadArgument => "bad argument",
            CommandError::ExtraArgument => "extra argument",
        }
    }
}

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.reason())
    }
}

impl core::error::Error for CommandError {}

impl Command {
    /// Parses a command record: one UTF-8 line, surrounding white space ignored, the
    /// words separated by white space, keywords in any case (`RATE 50`).
    ///
    /// ```
    /// use tether_firmware_sim::device::{Command, CommandError};
    ///
    /// assert_eq!(Command::parse(b"rate 50\n"), Ok(Command::Rate(50)));
    /// assert_eq!(Command::parse(b"output on"), Ok(Command::Output(true)));
    /// assert_eq!(Command::parse(b"rate fast"), Err(CommandError::BadArgument));
    /// assert_eq!(Command::parse(b"reboot"), Err(CommandError::Unknown));
    /// ```
    pub fn parse(payload: &[u8]) -> Result<Command, CommandError> {
        if payload.first() == Some(&TYPED) {
            return Err(CommandError::NotText);
        }
        let text = core::str::from_utf8(payload).map_err(|_| CommandError::NotUtf8)?;
        let mut words = text.split_whitespace();
        let verb = words.next().ok_or(CommandError::Empty)?;
        let command = if verb.eq_ignore_ascii_case("rate") {
            let ms: u32 = words
                .next()
                .ok_or(CommandError::MissingArgument)?
                .parse()
                .map_err(|_| CommandError::BadArgument)?;
            if !(MIN_PERIOD_MS..=MAX_PERIOD_MS).contains(&ms) {
                return Err(CommandError::BadArgument);
            }
            Command::Rate(ms)
        } else if verb.eq_ignore_ascii_case("output") {
            let arg = words.next().ok_or(CommandError::MissingArgument)?;
            if arg.eq_ignore_ascii_case("on") {
                Command::Output(true)
            } else if arg.eq_ignore_ascii_case("off") {
                Command::Output(false)
            } else {
                return Err(CommandError::BadArgument);
            }
        } else if verb.eq_ignore_ascii_case("status") {
            Command::Status
        } else {
            return Err(CommandError::Unknown);
        };
        match words.next() {
            Some(_) => Err(CommandError::ExtraArgument),
            None => Ok(command),
        }
    }
}

/// What a device has done. Counters wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStats {
    /// Readings queued on the link: the next reading's counter.
    pub readings: u32,
    /// Replies queued (status and error).
    pub replies: u32,
    /// Replies that could not be queued (never happens with a conforming peer); their
    /// commands were released all the same.
    pub replies_dropped: u32,
    /// Valid commands acted on.
    pub commands_applied: u32,
    /// Commands refused with an error reply.
    pub commands_rejected: u32,
    /// Transports put in place ([`Device::transport_up`]).
    pub transports: u32,
    /// Handshakes completed.
    pub connections: u32,
    /// Handshakes that resumed the session.
    pub resumes: u32,
    /// Times the host went silent for the link's `dead_after_ms`.
    pub peer_dead: u32,
    /// Host restarts seen (a new host session: its commands start afresh).
    pub peer_restarts: u32,
    /// Declarations queued (with [`DeviceConfig::declare_kinds`]: 3, before anything else).
    pub declarations: u32,
    /// Handshakes refused (see [`Link::reject`]).
    pub rejections: u32,
}

impl DeviceStats {
    /// Every record queued: declarations, readings and replies.
    pub fn records(&self) -> u32 {
        self.declarations
            .wrapping_add(self.readings)
            .wrapping_add(self.replies)
    }
}

/// Why [`Device::drive`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveError<E> {
    /// No transport: call [`Device::transport_up`] once one is in place.
    NoTransport,
    /// The buffer is shorter than the link's frames ([`Link::transmit_len`]).
    BufferTooSmall {
        /// The length needed.
        need: usize,
    },
    /// The transport reached its end (a read returned 0, or a write took nothing): the
    /// device is now without transport.
    EndOfStream,
    /// The transport failed: the device is now without transport.
    Io(E),
}

impl<E: core::fmt::Debug> core::fmt::Display for DriveError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DriveError::NoTransport => f.write_str("no transport in place"),
            DriveError::BufferTooSmall { need } => {
                write!(f, "transmit buffer too small: {need} bytes needed")
            }
            DriveError::EndOfStream => f.write_str("the transport reached its end"),
            DriveError::Io(e) => write!(f, "transport error: {e:?}"),
        }
    }
}

impl<E: core::fmt::Debug> core::error::Error for DriveError<E> {}

/// What to do with the oldest held command, decided while the record is borrowed.
enum Action {
    Apply(Command),
    Refuse {
        error: CommandError,
        /// What the error reply repeats, copied out of the record before it is released.
        text: String<ERROR_TEXT_MAX>,
    },
}

impl Action {
    fn of(payload: &[u8]) -> Action {
        match Command::parse(payload) {
            Ok(c) => Action::Apply(c),
            Err(error) => {
                // `echo` is at most ERROR_TEXT_MAX bytes, so it always fits.
                let text = String::try_from(echo(payload, error)).unwrap_or_default();
                Action::Refuse { error, text }
            }
        }
    }

    fn needs_reply(&self) -> bool {
        !matches!(self, Action::Apply(Command::Rate(_) | Command::Output(_)))
    }
}

/// The part of a refused command its error reply repeats: its UTF-8 prefix, trimmed, at
/// most [`ERROR_TEXT_MAX`] bytes, cut at a character boundary.
fn echo(payload: &[u8], error: CommandError) -> &str {
    if error == CommandError::NotText {
        return "";
    }
    let text = match core::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => core::str::from_utf8(&payload[..e.valid_up_to()]).unwrap_or_default(),
    }
    .trim();
    let mut end = text.len().min(ERROR_TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A simulated device. See the [module docs](self).
#[derive(Debug)]
pub struct Device<S> {
    link: Link<S>,
    period_ms: u32,
    output: bool,
    record_limit: Option<u32>,
    sensor: Sensor,
    /// When the next reading is due; `None`: at the first poll.
    next_due: Option<Instant>,
    last_sample: Option<Instant>,
    /// A transport is in place (the caller said so and the peer has not gone silent).
    online: bool,
    /// Declarations still to queue before any other record (none without
    /// `declare_kinds`).
    undeclared: &'static [&'static [u8]],
    stats: DeviceStats,
}

impl<S: Storage> Device<S> {
    /// A device over `storage`, without transport yet ([`Device::transport_up`] starts
    /// the session). Readings are queued from the first [`Device::poll`] on, connected or
    /// not, as long as the link has free slots.
    pub fn new(config: DeviceConfig, storage: S) -> Result<Self, DeviceError> {
        if config.link.role != Role::Client {
            return Err(DeviceError::NotClient);
        }
        if !(MIN_PERIOD_MS..=MAX_PERIOD_MS).contains(&config.period_ms) {
            return Err(DeviceError::Period(config.period_ms));
        }
        let link = Link::new(config.link, storage)?;
        if link.max_send() < RECORD_MAX {
            return Err(DeviceError::MaxSend(link.max_send()));
        }
        Ok(Device {
            link,
            period_ms: config.period_ms,
            output: false,
            record_limit: config.record_limit,
            sensor: Sensor::new(config.sensor_seed),
            next_due: None,
            last_sample: None,
            online: false,
            undeclared: if config.declare_kinds {
                &DECLARATIONS
            } else {
                &[]
            },
            stats: DeviceStats::default(),
        })
    }

    // ---- transport -----------------------------------------------------------------

    /// A (new) byte stream to the host is in place: start or resume the session over it.
    /// Records not yet acknowledged are sent again as the host needs them.
    pub fn transport_up(&mut self, now: Instant) -> Result<(), DeviceError> {
        if self.link.phase() == Phase::Closed {
            return Err(DeviceError::Closed);
        }
        self.link.connect(now);
        self.online = true;
        self.stats.transports = self.stats.transports.wrapping_add(1);
        Ok(())
    }

    /// The byte stream broke (a write failed, the socket closed): stop transmitting until
    /// [`Device::transport_up`]. Nothing queued is lost.
    pub fn transport_down(&mut self) {
        self.online = false;
    }

    /// Whether the device wants a (new) transport: none was put in place yet, it broke,
    /// or the host went silent ([`Event::PeerDead`]). Not after a refused handshake or a
    /// closed session, which a new connection would not mend.
    pub fn needs_transport(&self) -> bool {
        !self.online && !matches!(self.link.phase(), Phase::Closed | Phase::Rejected)
    }

    /// Whether the session is established (records flow).
    pub fn is_connected(&self) -> bool {
        self.online && self.link.phase() == Phase::Established
    }

    // ---- sans-IO driving -------------------------------------------------------------

    /// Bytes from the host, in any chunking; commands in them are acted on at once.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.link.handle_input(now, bytes);
        self.work(now);
    }

    /// Lets the link's timers fire, takes a reading if one is due and acts on what came
    /// in. Call it when [`Device::poll_timeout`]'s instant has passed; more often is
    /// harmless.
    pub fn poll(&mut self, now: Instant) {
        self.link.handle_timeout(now);
        self.work(now);
    }

    /// The next frame to write to the transport, encoded into `buf` (at least
    /// [`Link::transmit_len`] bytes); its length. `None` when there is nothing to send or
    /// no transport.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if !self.online {
            return None;
        }
        self.link.poll_transmit(now, buf)
    }

    /// When [`Device::poll`] should next be called: the link's next timer or the next
    /// reading, whichever is first. A reading waiting for a free slot is not a deadline:
    /// the slot frees when the host's acknowledgement comes in, through
    /// [`Device::handle_input`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reading =
            (self.streaming() && self.link.can_send()).then(|| self.next_due.unwrap_or_default());
        match (self.link.poll_timeout(), reading) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One round of a firmware main loop over an `embedded-io` transport: reads what is
    /// ready (up to 16 reads), polls, writes every frame due, flushes. `buf` is scratch
    /// space of at least [`Link::transmit_len`] bytes. Call it when input is ready or
    /// [`Device::poll_timeout`] has passed.
    ///
    /// On an IO error or the end of the stream the device marks itself without transport
    /// and says why; reopen the transport and call [`Device::transport_up`].
    pub fn drive<T>(
        &mut self,
        now: Instant,
        io: &mut T,
        buf: &mut [u8],
    ) -> Result<(), DriveError<T::Error>>
    where
        T: embedded_io::Read + embedded_io::ReadReady + embedded_io::Write,
    {
        if !self.online {
            self.poll(now);
            return Err(DriveError::NoTransport);
        }
        let need = self.link.transmit_len();
        if buf.len() < need {
            return Err(DriveError::BufferTooSmall { need });
        }
        for _ in 0..DRIVE_READS {
            if !io
                .read_ready()
                .map_err(|e| self.broken(DriveError::Io(e)))?
            {
                break;
            }
            let n = io.read(buf).map_err(|e| self.broken(DriveError::Io(e)))?;
            if n == 0 {
                return Err(self.broken(DriveError::EndOfStream));
            }
            self.handle_input(now, &buf[..n]);
        }
        self.poll(now);
        while let Some(n) = self.poll_transmit(now, buf) {
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                match io.write(rest) {
                    Ok(0) => return Err(self.broken(DriveError::EndOfStream)),
                    Ok(k) => rest = &rest[k.min(rest.len())..],
                    Err(e) => return Err(self.broken(DriveError::Io(e))),
                }
            }
        }
        io.flush().map_err(|e| self.broken(DriveError::Io(e)))
    }

    /// One round of a firmware main loop over a non-blocking transport (a UART's FIFOs),
    /// through `tether-core`'s [`nb::Driver`](tether_core::io::nb::Driver): reads what the
    /// transport has ready, lets the link's timers fire, writes as much as the transport
    /// takes now (a frame it takes only part of stays in `driver` for the next call), then
    /// acts on what came in and takes a reading if one is due. It never waits.
    ///
    /// Frames queued by that last step go out in the next call: call it again at once while
    /// the returned [`Progress`](tether_core::io::nb::Progress) is not idle, and otherwise
    /// when input is ready or [`Device::poll_timeout`] has passed.
    ///
    /// Unlike [`Device::drive`], nothing here takes the transport for broken: a UART has no
    /// end and no failure that a new connection would mend. Only the end of the stream
    /// (`progress.eof`) or an error marks the device without transport; reset `driver`
    /// before the next [`Device::transport_up`] (the rest of a half-sent frame belongs to
    /// the old connection). Without a transport it only polls.
    pub fn drive_nb<T, B>(
        &mut self,
        now: Instant,
        io: &mut T,
        driver: &mut nb::Driver<B>,
    ) -> Result<nb::Progress, nb::Error<T::Error>>
    where
        T: embedded_io::Read
            + embedded_io::ReadReady
            + embedded_io::Write
            + embedded_io::WriteReady,
        B: AsMut<[u8]>,
    {
        if !self.online {
            self.poll(now);
            return Ok(nb::Progress::default());
        }
        let progress = driver.poll(&mut self.link, io, now).inspect_err(|_| {
            self.transport_down();
        })?;
        if progress.eof {
            self.transport_down();
        }
        self.work(now);
        Ok(progress)
    }

    fn broken<E>(&mut self, e: DriveError<E>) -> DriveError<E> {
        self.transport_down();
        e
    }

    /// Closes the session gracefully: what is queued is delivered, then CLOSE. The device
    /// queues nothing more, and the session cannot be resumed.
    pub fn close(&mut self) {
        self.link.close();
    }

    // ---- getters ---------------------------------------------------------------------

    /// The reading period in milliseconds.
    pub fn period_ms(&self) -> u32 {
        self.period_ms
    }

    /// Whether the output is on.
    pub fn output(&self) -> bool {
        self.output
    }

    /// Whether readings are still being taken (the limit, if any, not reached).
    pub fn streaming(&self) -> bool {
        self.record_limit.is_none_or(|l| self.stats.readings < l)
    }

    /// What the device has done.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// The link, for its phase and statistics.
    pub fn link(&self) -> &Link<S> {
        &self.link
    }

    // ---- the application -------------------------------------------------------------

    fn work(&mut self, now: Instant) {
        self.handle_events();
        if self.declare() {
            self.obey();
            self.stream(now);
        }
    }

    /// Queues the declarations not queued yet; whether all are (then, and only then, may
    /// records of their kinds follow).
    fn declare(&mut self) -> bool {
        while let Some((first, rest)) = self.undeclared.split_first() {
            if self.link.send(first).is_err() {
                return false;
            }
            self.undeclared = rest;
            self.stats.declarations = self.stats.declarations.wrapping_add(1);
        }
        true
    }

    /// Whether records are sent as records of declared kinds.
    fn kinds(&self) -> bool {
        self.stats.declarations > 0
    }

    fn handle_events(&mut self) {
        let s = &mut self.stats;
        while let Some(event) = self.link.poll_event() {
            match event {
                Event::Connected { resumed } => {
                    s.connections = s.connections.wrapping_add(1);
                    s.resumes = s.resumes.wrapping_add(u32::from(resumed));
                }
                Event::PeerRestarted { .. } => s.peer_restarts = s.peer_restarts.wrapping_add(1),
                Event::Delivered { .. } => {}
                Event::Rejected { .. } => {
                    s.rejections = s.rejections.wrapping_add(1);
                    self.online = false;
                }
                Event::PeerDead => {
                    // Firmware drops the connection and opens a new one.
                    s.peer_dead = s.peer_dead.wrapping_add(1);
                    self.online = false;
                }
                Event::Closed => self.online = false,
            }
        }
    }

    /// Acts on held commands in order, releasing each once acted on. A command that needs
    /// a reply waits, held, while every transmit slot is taken: the host's credit then
    /// shrinks, and it sends no more commands than the device can answer.
    fn obey(&mut self) {
        loop {
            let action = match self.link.recv() {
                Some(record) => Action::of(record.payload),
                None => return,
            };
            if action.needs_reply() && !self.link.can_send() {
                return;
            }
            match action {
                Action::Apply(Command::Rate(ms)) => {
                    self.period_ms = ms;
                    // The next reading comes `ms` after the last one (at once if that has
                    // passed already).
                    if let Some(last) = self.last_sample {
                        self.next_due = Some(last.plus(ms));
                    }
                    self.applied();
                }
                Action::Apply(Command::Output(on)) => {
                    self.output = on;
                    self.applied();
                }
                Action::Apply(Command::Status) => {
                    let mut buf = [0u8; RECORD_MAX];
                    let reply = self.status_record(&mut buf).map(|r| r.len());
                    self.reply(&buf, reply);
                    self.applied();
                }
                Action::Refuse { error, text } => {
                    let mut buf = [0u8; RECORD_MAX];
                    let reply = error_record(&mut buf, &text, error, self.kinds());
                    self.reply(&buf, reply);
                    self.stats.commands_rejected = self.stats.commands_rejected.wrapping_add(1);
                }
            }
            self.link.release(1);
        }
    }

    fn applied(&mut self) {
        self.stats.commands_applied = self.stats.commands_applied.wrapping_add(1);
    }

    fn reply(&mut self, buf: &[u8], len: Result<usize, Full>) {
        let sent = len.ok().map(|n| self.link.send(&buf[..n]));
        match sent {
            Some(Ok(_)) => self.stats.replies = self.stats.replies.wrapping_add(1),
            Some(Err(SendError::WouldBlock | SendError::TooLong { .. } | SendError::Closed))
            | None => self.stats.replies_dropped = self.stats.replies_dropped.wrapping_add(1),
        }
    }

    fn status_record<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], Full> {
        if self.kinds() {
            let mut w = KindWriter::new(&STATUS, buf);
            let n = w
                .u32(self.period_ms)
                .and_then(|w| w.bool(self.output))
                .and_then(|w| w.u32(self.stats.readings))
                .and_then(|w| w.u32(self.link.stats().retransmissions))
                .and_then(|w| w.finish())
                .map_err(|_| Full)?
                .len();
            return Ok(&buf[..n]);
        }
        let mut w = RecordWriter::new(buf);
        w.str("status")?
            .u32(self.period_ms)?
            .bool(self.output)?
            .u32(self.stats.readings)?
            .u32(self.link.stats().retransmissions)?;
        let n = w.finish().len();
        Ok(&buf[..n])
    }

    /// Takes and queues a reading if one is due and a slot is free.
    fn stream(&mut self, now: Instant) {
        let due = self.next_due.is_none_or(|t| now >= t);
        if !due || !self.streaming() || !self.link.can_send() {
            return;
        }
        // Sample a copy, and keep it only once the reading is queued: the k-th reading
        // is always the sensor's k-th sample.
        let mut sensor = self.sensor.clone();
        let sample = sensor.sample();
        let mut buf = [0u8; RECORD_MAX];
        let record = if self.kinds() {
            let mut w = KindWriter::new(&ENV, &mut buf);
            w.u32(self.stats.readings)
                .and_then(|w| w.u32(now.millis() as u32))
                .and_then(|w| w.f32(sample.temperature))
                .and_then(|w| w.u16(sample.pressure))
                .and_then(|w| w.bool(self.output))
                .and_then(|w| w.finish())
                .map(<[u8]>::len)
                .ok()
        } else {
            let mut w = RecordWriter::new(&mut buf);
            w.u32(self.stats.readings)
                .and_then(|w| w.u32(now.millis() as u32))
                .and_then(|w| w.f32(sample.temperature))
                .and_then(|w| w.u16(sample.pressure))
                .and_then(|w| w.bool(self.output))
                .map(|w| w.finish().len())
                .ok()
        };
        if record.is_some_and(|n| self.link.send(&buf[..n]).is_ok()) {
            self.sensor = sensor;
            self.stats.readings = self.stats.readings.wrapping_add(1);
            self.last_sample = Some(now);
            self.next_due = Some(now.plus(self.period_ms));
        }
    }
}

/// An error reply: `"error"`, the command's text, the reason (with `kinds`, a record of the
/// kind [`ERROR`]: the text and the reason).
fn error_record(
    buf: &mut [u8],
    text: &str,
    error: CommandError,
    kinds: bool,
) -> Result<usize, Full> {
    if kinds {
        let mut w = KindWriter::new(&ERROR, buf);
        return w
            .str(text)
            .and_then(|w| w.str(error.reason()))
            .and_then(|w| w.finish())
            .map(<[u8]>::len)
            .map_err(|_| Full);
    }
    let mut w = RecordWriter::new(buf);
    w.str("error")?.str(text)?.str(error.reason())?;
    Ok(w.finish().len())
}
